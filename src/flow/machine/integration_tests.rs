//! The integration steps (`api`, `code`, `json_builder`, `send_mail`, `mail_report`, `table`,
//! `knowledge_base`, `offload`) against a fake clock: success, timeout, failure, the hold
//! prompt and Chatlayer's reply semantics.

use std::time::Duration;

use serde_json::json;

use super::tests::{close, play, say, sorry, Harness};
use super::*;
use crate::flow::{
    FlowAction as A, FlowEvent as E, HttpRequest, KbQuery, MailRequest, ScriptRequest, StepRequest,
    TableOp, TableRequest,
};

/// The request the machine emitted (and its id and timeout).
fn request(actions: &[A]) -> (u64, StepRequest, Duration) {
    actions
        .iter()
        .find_map(|a| match a {
            A::Request {
                id,
                request,
                timeout,
            } => Some((*id, request.clone(), *timeout)),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no Request in {actions:?}"))
}

fn http(status: u16, body: Value) -> Value {
    json!({"status": status, "headers": {"content-type": "application/json"}, "body": body})
}

const API: &str = r#"  main:
    - api:
        method: POST
        url: "http://127.0.0.1:8099/customer?number={call.from}"
        headers: {Authorization: "Bearer {secrets.CRM_TOKEN}", X-Lang: "{lang}"}
        query: {n: "{len(lang)}", fixed: yes}
        body: {caller: "{call.from}", tags: [a, "{lang}"], n: 3, who: "caller {call.from}"}
        save_as: resp
        timeout_ms: 4000
    - condition: {expr: "resp.body.vip", then: vip, else: normal}
  vip:
    - message: {text: "vip {resp.body.name}"}
  normal:
    - message: {text: normal}
  done:
    - message: {text: "done {total}"}
  oops:
    - message: {text: "oops {error.code}: {error.message}"}"#;

#[test]
fn api_builds_the_request_and_branches_on_the_response() {
    let mut h = Harness::flow("variables: {lang: nl}", API);
    let out = h.start();
    let (id, req, timeout) = request(&out);
    assert_eq!(timeout, Duration::from_secs(4));
    assert_eq!(
        req,
        StepRequest::Http(HttpRequest {
            method: "POST".into(),
            url: "http://127.0.0.1:8099/customer?number=+3211223344".into(),
            headers: vec![
                ("Authorization".into(), "Bearer {secrets.CRM_TOKEN}".into()),
                ("X-Lang".into(), "nl".into()),
            ],
            query: vec![("n".into(), "2".into()), ("fixed".into(), "yes".into())],
            body: Some(json!({
                "caller": "+3211223344", "tags": ["a", "nl"], "n": 3,
                "who": "caller +3211223344"
            })),
            auth: None,
        })
    );
    assert!(
        h.m.variables().get("secrets").is_none(),
        "secrets never become variables"
    );
    let out = h.done(id, http(200, json!({"vip": true, "name": "Ann"})));
    assert_eq!(out, vec![say(id + 1, "vip Ann")]);
    assert_eq!(h.var("resp.status"), json!(200));
    assert_eq!(
        h.var("resp.headers"),
        json!({"content-type": "application/json"})
    );
    assert_eq!(h.m.step_log()[0].outcome, StepOutcome::Ok);
}

#[test]
fn api_chatlayer_reply_merges_session_says_messages_then_jumps() {
    let mut h = Harness::flow("variables: {lang: nl, total: 0}", API);
    let (id, _, _) = request(&h.start());
    let reply = json!({
        "session": {"total": 42, "call": {"from": "spoofed"}, "profile": {"tier": "gold"}},
        "messages": ["Hello", {"type": "text", "config": {"textMessages": [{"text": "Bye"}]}}],
        "nextDialogstate": "done"
    });
    let out = h.done(id, http(200, reply));
    assert_eq!(out, vec![say(2, "Hello"), say(3, "Bye")]);
    assert_eq!(h.var("total"), json!(42));
    assert_eq!(h.var("profile.tier"), json!("gold"));
    assert_eq!(
        h.var("call.from"),
        json!("+3211223344"),
        "reserved roots untouched"
    );
    assert!(h.finished(2).is_empty(), "waits for the last message");
    assert_eq!(h.finished(3), vec![say(4, "done 42")]);
}

#[test]
fn api_reply_to_an_unknown_dialog_takes_the_error_path() {
    let mut h = Harness::flow("variables: {lang: nl}\non_error: oops", API);
    let (id, _, _) = request(&h.start());
    let out = h.done(
        id,
        http(
            200,
            json!({"messages": ["never said"], "nextDialogstate": "ghost"}),
        ),
    );
    assert_eq!(
        out,
        vec![say(
            2,
            "oops next_dialog: api: nextDialogstate `ghost` names no dialog of this flow"
        )]
    );
    assert_eq!(h.var("error.type"), json!("api"));
    assert_eq!(h.var("error.dialog"), json!("main"));
    assert_eq!(h.var("error.step"), json!(1));
}

#[test]
fn api_error_status_saves_the_response_and_fails() {
    let mut h = Harness::flow("variables: {lang: nl}\non_error: oops", API);
    let (id, _, _) = request(&h.start());
    let out = h.done(id, http(404, json!({"error": "no such customer"})));
    assert_eq!(
        out,
        vec![say(
            2,
            "oops http_status: api: the server answered HTTP 404"
        )]
    );
    assert_eq!(h.var("resp.body.error"), json!("no such customer"));
    assert_eq!(h.var("error.detail_code"), json!("404"));
}

#[test]
fn api_timeout_cancels_and_goes_to_on_error() {
    let mut h = Harness::flow("variables: {lang: nl}\non_error: oops", API);
    let (id, _, _) = request(&h.start());
    assert_eq!(h.m.poll_timeout(), Some(h.now + Duration::from_secs(4)));
    assert!(h.advance(3_999).is_empty());
    let out = h.advance(1);
    assert_eq!(
        out,
        vec![
            A::CancelRequest { id },
            say(
                2,
                "oops timeout: api: no result within 4000 ms (timed out; request cancelled)"
            )
        ]
    );
    // The late answer is dropped.
    assert!(h.done(id, http(200, json!({"vip": true}))).is_empty());
    assert_eq!(h.var("resp"), Value::Null);
    let log = h.m.step_log();
    assert!(matches!(&log[0].outcome, StepOutcome::Failed(m) if m.contains("timed out")));
}

#[test]
fn step_failures_go_to_the_step_then_the_flow_error_dialog_then_close() {
    let step = "  main:\n    - code: {source: 'x', on_error: mine}\n  mine:\n    - message: \
                {text: 'mine {error.detail_code}'}\n  flow:\n    - message: {text: flow}";
    let mut h = Harness::flow("on_error: flow", step);
    let (id, _, _) = request(&h.start());
    assert_eq!(h.fail(id, "script", "boom"), vec![say(2, "mine script")]);

    let plain = "  main:\n    - code: {source: 'x'}\n  flow:\n    - message: {text: flow}";
    let mut h = Harness::flow("on_error: flow", plain);
    let (id, _, _) = request(&h.start());
    assert_eq!(h.fail(id, "memory", "too big"), vec![say(2, "flow")]);
    assert!(matches!(&h.m.step_log()[0].outcome,
        StepOutcome::Failed(m) if m == "code: memory: too big"));

    let mut h = Harness::flow("", "  main:\n    - code: {source: 'x'}");
    let (id, _, _) = request(&h.start());
    assert_eq!(h.fail(id, "not_configured", "no executor"), vec![sorry(2)]);
    assert_eq!(h.finished(2), vec![close()]);
    assert!(matches!(
        h.m.summary().end,
        Some(FlowEnd::Closed(CloseReason::Error(ref m))) if m.contains("no executor")
    ));
}

const HOLD: &str = "  main:\n    - message: {file: intro.wav, wait: false}\n    - api: {url: \
                    'http://h/x', hold: music.wav, save_as: r}\n    - message: {text: 'got \
                    {r.status}'}";

#[test]
fn hold_prompt_loops_while_waiting_and_stops_on_the_result() {
    let mut h = Harness::flow("inactivity_s: 0", HOLD);
    let out = h.start();
    // The hold waits behind the intro (other class): only the intro and the request go out.
    assert_eq!(out[0], play(1, "intro.wav"));
    let (id, _, _) = request(&out);
    assert_eq!(id, 2);
    assert_eq!(out.len(), 2);
    h.advance(2_000);
    assert_eq!(h.finished(1), vec![play(3, "music.wav")]);
    h.advance(5_00);
    let looped = h.finished(3);
    assert_eq!(looped, vec![play(4, "music.wav")], "looped");
    // The result stops the hold (StopPlayback only cuts hold prompts), then the flow goes on.
    let out = h.done(id, http(200, json!("ok")));
    assert_eq!(out, vec![A::StopPlayback, say(5, "got 200")]);
    // The interrupted report for the hold is harmless.
    assert!(h
        .ev(E::PlaybackFinished {
            id: 4,
            interrupted: true
        })
        .is_empty());
}

#[test]
fn hold_prompt_not_yet_playing_is_dropped_without_stopping_anything() {
    let mut h = Harness::flow("inactivity_s: 0", HOLD);
    let (id, _, _) = request(&h.start());
    let out = h.done(id, http(200, json!("ok")));
    assert_eq!(
        out,
        vec![say(4, "got 200")],
        "no StopPlayback: the intro plays on"
    );
    assert_eq!(h.finished(1), vec![], "the dropped hold never plays");
}

#[test]
fn a_hold_prompt_that_fails_or_is_too_short_is_not_looped() {
    let mut h = Harness::flow("inactivity_s: 0", HOLD);
    h.start();
    h.advance(1_000);
    assert_eq!(h.finished(1), vec![play(3, "music.wav")]);
    h.advance(50);
    assert!(h.finished(3).is_empty(), "50 ms is too short to loop");
    let mut h = Harness::flow("inactivity_s: 0", HOLD);
    h.start();
    h.finished(1);
    assert!(h
        .ev(E::PlaybackFailed {
            id: 3,
            reason: "missing".into()
        })
        .is_empty());
}

#[test]
fn keys_during_a_request_are_typed_ahead_and_inactivity_does_not_run() {
    let mut h = Harness::flow(
        "inactivity_s: 5",
        "  main:\n    - table: {op: lookup, table: vip, where: {number: call.from}, save_as: \
         vip, timeout_ms: 60000}\n    - collect: {variable: c}\n    - message: {text: \
         '{c} {vip.name} {vip_count}'}",
    );
    let (id, req, _) = request(&h.start());
    assert_eq!(
        req,
        StepRequest::Table(TableRequest {
            op: TableOp::Lookup,
            table: "vip".into(),
            filter: vec![("number".into(), json!("+3211223344"))],
            values: vec![],
        })
    );
    assert_eq!(h.m.poll_timeout(), Some(h.now + Duration::from_secs(60)));
    assert!(
        h.advance(30_000).is_empty(),
        "no inactivity close while waiting on the table"
    );
    assert!(h.dtmf("7").is_empty());
    let out = h.done(id, json!({"row": {"name": "Ann"}, "count": 1}));
    assert_eq!(out, vec![say(2, "7 Ann 1")]);
}

#[test]
fn table_lookup_without_a_row_and_the_other_ops() {
    let mut h = Harness::flow(
        "",
        "  main:\n    - table: {op: lookup, table: vip, where: {number: call.from}, save_as: \
         v}\n    - table: {op: insert, table: callbacks, values: {number: call.from, at: 3}, \
         save_as: ins}\n    - table: {op: update, table: t, where: {id: 1}, values: {done: \
         true}}\n    - table: {op: delete, table: t, where: {id: 1}}\n    - collect: {}",
    );
    let (id, _, _) = request(&h.start());
    let out = h.done(id, json!({"row": null, "count": 0}));
    assert_eq!(h.var("v"), Value::Null);
    assert_eq!(h.var("v_count"), json!(0));
    let (id, req, _) = request(&out);
    assert_eq!(
        req,
        StepRequest::Table(TableRequest {
            op: TableOp::Insert,
            table: "callbacks".into(),
            filter: vec![],
            values: vec![
                ("number".into(), json!("+3211223344")),
                ("at".into(), json!(3))
            ],
        })
    );
    let out = h.done(id, json!({"inserted": 1}));
    assert_eq!(h.var("ins.inserted"), json!(1));
    let (id, req, _) = request(&out);
    assert!(matches!(
        req,
        StepRequest::Table(TableRequest {
            op: TableOp::Update,
            ..
        })
    ));
    let out = h.done(id, json!({"affected": 1}));
    let (id, req, _) = request(&out);
    assert!(matches!(
        req,
        StepRequest::Table(TableRequest {
            op: TableOp::Delete,
            ..
        })
    ));
    assert!(h.done(id, json!({"affected": 0})).is_empty());
    assert_eq!(h.m.summary().steps_ok, 4);
}

#[test]
fn code_gets_the_variables_and_its_reply_acts_like_chatlayer() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("sum.js"),
        "new ChatlayerResponseBuilder().send()",
    )
    .unwrap();
    let flow = dir.path().join("f.yaml");
    std::fs::write(
        &flow,
        "name: t\nstart: main\nvariables: {a: 2, b: 3}\ndialogs:\n  main:\n    - code: {file: \
         sum.js, memory_kb: 2048, timeout_ms: 500}\n    - message: {text: next}\n  done:\n    \
         - message: {text: 'total {total}'}\n",
    )
    .unwrap();
    let mut h = Harness::new(FlowDefinition::load(&flow).unwrap());
    let (id, req, timeout) = request(&h.start());
    assert_eq!(timeout, Duration::from_millis(500));
    let StepRequest::Script(ScriptRequest {
        source,
        args,
        memory_kb,
    }) = req
    else {
        panic!("{req:?}")
    };
    assert_eq!(&*source, "new ChatlayerResponseBuilder().send()");
    assert_eq!(memory_kb, 2048);
    assert_eq!(args["a"], json!(2));
    assert_eq!(args["call"]["from"], json!("+3211223344"));
    let out = h.done(
        id,
        json!({"session": {"total": 5}, "messages": [], "nextDialogstate": "done"}),
    );
    assert_eq!(out, vec![say(2, "total 5")]);
    // A reply with nothing in it goes on with the next step.
    let mut h = Harness::new(FlowDefinition::load(&flow).unwrap());
    let (id, _, _) = request(&h.start());
    assert_eq!(
        h.done(
            id,
            json!({"session": {}, "messages": [], "nextDialogstate": null})
        ),
        vec![say(2, "next")]
    );
}

#[test]
fn json_builder_evaluates_the_payload() {
    let mut h = Harness::flow(
        "variables: {lang: nl, n: 2}",
        "  main:\n    - json_builder:\n        payload: {language: lang, caller: call.from, next: \
         'n + 1', nested: {list: [n, '+3225551212'], text: 'Hi {lang}'}}\n        save_as: \
         sent\n    - collect: {}",
    );
    let (id, req, timeout) = request(&h.start());
    assert_eq!(timeout, Duration::from_secs(3));
    assert_eq!(
        req,
        StepRequest::Dispatch {
            payload: json!({
                "language": "nl", "caller": "+3211223344", "next": 3,
                "nested": {"list": [2, "+3225551212"], "text": "Hi nl"}
            })
        }
    );
    h.done(id, json!({"websocket": false, "webhook": "queued"}));
    assert_eq!(h.var("sent.webhook"), json!("queued"));
}

#[test]
fn mail_steps_render_addresses_and_text() {
    let mut h = Harness::flow(
        "variables: {team: ['a@example.com', 'b@example.com'], bad: 'nobody'}",
        "  main:\n    - send_mail: {to: ['ops@example.com', '{team}'], cc: 'boss@example.com', \
         subject: 'Callback for {call.from}', body: 'Call {call.from} back'}\n    - \
         mail_report: {to: ops@example.com, subject: 'Report {call.call_id}'}\n    - \
         send_mail: {to: '{bad}', subject: x, on_error: bad}\n  bad:\n    - message: {text: \
         '{error.message}'}",
    );
    let (id, req, timeout) = request(&h.start());
    assert_eq!(timeout, Duration::from_secs(5));
    assert_eq!(
        req,
        StepRequest::Mail(MailRequest {
            to: vec![
                "ops@example.com".into(),
                "a@example.com".into(),
                "b@example.com".into()
            ],
            cc: vec!["boss@example.com".into()],
            subject: "Callback for +3211223344".into(),
            body: "Call +3211223344 back".into(),
            report: false,
        })
    );
    let out = h.done(id, json!({"queued": true, "message_id": "m1"}));
    let (id, req, _) = request(&out);
    assert!(
        matches!(req, StepRequest::Mail(MailRequest { report: true, ref subject, .. })
        if subject == "Report call-1")
    );
    assert_eq!(
        h.done(id, json!({"queued": true})),
        vec![say(3, "send_mail: to: `nobody` is not an e-mail address")]
    );
}

#[test]
fn knowledge_base_says_the_answer_or_goes_to_on_no_answer() {
    let flow = "  main:\n    - knowledge_base: {question: heard.text, save_as: kb, min_score: 2, \
                on_no_answer: none}\n    - message: {text: 'from {kb.source}'}\n  none:\n    - \
                message: {text: 'no answer ({kb.score})'}";
    let mut h = Harness::flow("variables: {heard: {text: 'opening hours?'}}", flow);
    let (id, req, _) = request(&h.start());
    assert_eq!(
        req,
        StepRequest::KnowledgeBase(KbQuery {
            question: "opening hours?".into(),
            source: None,
            min_score: 2.0,
        })
    );
    let out = h.done(
        id,
        json!({"answer": "We open at nine.", "source": "hours.md", "score": 3.5}),
    );
    assert_eq!(out, vec![say(2, "We open at nine.")]);
    assert_eq!(h.var("kb.score"), json!(3.5));
    assert_eq!(h.finished(2), vec![say(3, "from hours.md")]);

    let mut h = Harness::flow("variables: {heard: {text: 'x'}}", flow);
    let (id, _, _) = request(&h.start());
    let out = h.done(id, json!({"answer": null, "source": null, "score": 0.4}));
    assert_eq!(out, vec![say(2, "no answer (0.4)")]);

    // Nothing heard: no request at all.
    let mut h = Harness::flow("", flow);
    assert_eq!(h.start(), vec![say(1, "no answer (0)")]);
}

const OFFLOAD: &str = "  main:\n    - offload: {to: 'sip:agents@127.0.0.1:5080', headers: \
                       {X-Customer: vip.name, X-Tier: \"'gold'\"}, context: [vip, call.from], \
                       on_failure: failed, hold: ring.wav, timeout_ms: 20000}\n  failed:\n    \
                       - message: {text: '{transfer.reason}'}";

#[test]
fn offload_sends_headers_and_context_and_ends_the_bot_on_success() {
    let mut h = Harness::flow("variables: {vip: {name: Ann}, other: 1}", OFFLOAD);
    let out = h.start();
    assert_eq!(
        out,
        vec![
            A::Offload {
                to: "sip:agents@127.0.0.1:5080".into(),
                headers: vec![
                    ("X-Customer".into(), "Ann".into()),
                    ("X-Tier".into(), "gold".into())
                ],
                context: json!({"vip": {"name": "Ann"}, "call.from": "+3211223344"}),
            },
            play(1, "ring.wav")
        ]
    );
    assert_eq!(h.var("transfer.to"), json!("sip:agents@127.0.0.1:5080"));
    assert!(h.dtmf("1").is_empty(), "keys ignored while offloading");
    h.ev(E::TransferCompleted {
        to: "sip:agents@127.0.0.1:5080".into(),
        mode: "refer".into(),
    });
    assert!(h.m.is_finished());
    assert!(matches!(
        h.m.summary().end,
        Some(FlowEnd::Transferred { .. })
    ));
}

#[test]
fn offload_failure_and_timeout_go_to_on_failure() {
    let mut h = Harness::flow("variables: {vip: {name: Ann}}", OFFLOAD);
    h.start();
    let out = h.ev(E::TransferFailed {
        reason: "busy".into(),
        detail: "486".into(),
    });
    assert_eq!(out, vec![A::StopPlayback, say(2, "busy")]);
    assert!(matches!(&h.m.step_log()[0].outcome,
        StepOutcome::Failed(m) if m == "offload failed: busy (486)"));

    let mut h = Harness::flow("variables: {vip: {name: Ann}}", OFFLOAD);
    h.start();
    let out = h.advance(20_000);
    assert_eq!(out, vec![A::StopPlayback, say(2, "")]);
    assert_eq!(h.var("error.code"), json!("timeout"));
}

#[test]
fn offload_without_context_sends_the_flow_variables_and_the_call() {
    let mut h = Harness::flow(
        "variables: {a: 1}",
        "  main:\n    - offload: {to: '+3225551212'}",
    );
    let out = h.start();
    let A::Offload { to, context, .. } = &out[0] else {
        panic!("{out:?}")
    };
    assert_eq!(to, "+3225551212");
    assert_eq!(context["a"], json!(1));
    assert_eq!(context["call"]["from"], json!("+3211223344"));
    assert!(context.get("transfer").is_none());
}

#[test]
fn results_that_arrive_while_paused_wait_for_the_resume() {
    let mut h = Harness::flow(
        "inactivity_s: 0",
        "  main:\n    - api: {url: 'http://h/x', save_as: r, timeout_ms: 1000}\n    - \
         message: {text: '{r.status}'}",
    );
    let (id, _, _) = request(&h.start());
    h.advance(400);
    h.ev(E::Paused);
    assert!(
        h.advance(10_000).is_empty(),
        "the request timer stands still"
    );
    assert!(h.done(id, http(201, json!(null))).is_empty(), "stashed");
    assert_eq!(h.ev(E::Resumed), vec![say(2, "201")]);

    // Without an answer, the timer goes on with what was left (600 ms).
    let mut h = Harness::flow(
        "inactivity_s: 0\non_error: e",
        "  main:\n    - api: {url: 'http://h/x', timeout_ms: 1000}\n  e:\n    - message: \
         {text: e}",
    );
    let (id, _, _) = request(&h.start());
    h.advance(400);
    h.ev(E::Paused);
    h.advance(5_000);
    h.ev(E::Resumed);
    assert!(h.advance(599).is_empty());
    assert_eq!(h.advance(1), vec![A::CancelRequest { id }, say(2, "e")]);
}

#[test]
fn a_failing_request_build_is_a_step_error() {
    let mut h = Harness::flow(
        "variables: {base: 'ftp://x'}\non_error: e",
        "  main:\n    - api: {url: '{base}/x', on_error: mine}\n  mine:\n    - message: {text: \
         '{error.message}'}\n  e:\n    - message: {text: e}",
    );
    assert_eq!(
        h.start(),
        vec![say(
            1,
            "api: url `ftp://x/x` does not start with http:// or https://"
        )]
    );
}
