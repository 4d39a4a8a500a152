//! Step-by-step tests of the machine, driven with fabricated instants and a fixed wall clock.

use std::time::Duration;

use chrono::TimeZone;
use serde_json::json;

use super::*;
use crate::flow::{FlowAction as A, FlowEvent as E, SessionInfo};

/// Drives one machine: fabricated time, actions drained after every input.
pub(super) struct Harness {
    pub m: FlowMachine,
    pub now: Instant,
    t0: Instant,
    wall0: DateTime<Utc>,
}

impl Harness {
    pub fn new(def: Arc<FlowDefinition>) -> Self {
        let t0 = Instant::now();
        // Sunday 31 March 2024, 23:30:05 UTC.
        let wall0 = Utc.with_ymd_and_hms(2024, 3, 31, 23, 30, 5).unwrap();
        Self {
            m: FlowMachine::new(def, t0, wall0),
            now: t0,
            t0,
            wall0,
        }
    }

    /// A flow from YAML text; `dialogs` is the text under `dialogs:` (2-space indented).
    pub fn flow(header: &str, dialogs: &str) -> Self {
        let text = format!("name: test\nstart: main\n{header}\ndialogs:\n{dialogs}\n");
        let def =
            FlowDefinition::from_str(&text, "test.yaml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        Self::new(def)
    }

    fn wall(&self) -> DateTime<Utc> {
        self.wall0 + chrono::TimeDelta::from_std(self.now - self.t0).unwrap()
    }

    pub fn drain(&mut self) -> Vec<A> {
        std::iter::from_fn(|| self.m.poll_action()).collect()
    }

    pub fn ev(&mut self, e: E) -> Vec<A> {
        let wall = self.wall();
        self.m.handle_event(e, self.now, wall);
        self.drain()
    }

    pub fn start(&mut self) -> Vec<A> {
        let mut headers = std::collections::BTreeMap::new();
        headers.insert("x-customer-id".to_string(), "C42".to_string());
        self.ev(E::Started(SessionInfo {
            call_id: "call-1".into(),
            from: "+3211223344".into(),
            to: "+3225550000".into(),
            headers,
            codec: "PCMU".into(),
        }))
    }

    pub fn dtmf(&mut self, digits: &str) -> Vec<A> {
        let mut out = Vec::new();
        for digit in digits.chars() {
            out.extend(self.ev(E::Dtmf {
                digit,
                duration_ms: 100,
            }));
        }
        out
    }

    pub fn finished(&mut self, id: u64) -> Vec<A> {
        self.ev(E::PlaybackFinished {
            id,
            interrupted: false,
        })
    }

    /// Moves time forward by `ms`, firing every timeout that falls due on the way.
    pub fn advance(&mut self, ms: u64) -> Vec<A> {
        let target = self.now + Duration::from_millis(ms);
        let mut out = Vec::new();
        for _ in 0..10_000 {
            match self.m.poll_timeout() {
                Some(t) if t <= target => {
                    self.now = self.now.max(t);
                    self.m.handle_timeout(self.now);
                    out.extend(self.drain());
                }
                _ => {
                    self.now = target;
                    return out;
                }
            }
        }
        panic!("timeouts did not settle");
    }

    /// Answers the request `id` with a result.
    pub fn done(&mut self, id: u64, result: Value) -> Vec<A> {
        self.ev(E::RequestDone {
            id,
            result: Ok(result),
        })
    }

    /// Answers the request `id` with a failure.
    pub fn fail(&mut self, id: u64, code: &str, message: &str) -> Vec<A> {
        self.ev(E::RequestDone {
            id,
            result: Err(crate::flow::StepFailure {
                code: code.into(),
                message: message.into(),
            }),
        })
    }

    pub fn var(&self, path: &str) -> Value {
        crate::flow::expr::VarPath::parse(path)
            .unwrap()
            .lookup(self.m.variables())
            .cloned()
            .unwrap_or(Value::Null)
    }
}

pub(super) fn play(id: u64, file: &str) -> A {
    A::Play {
        id,
        file: file.into(),
    }
}

pub(super) fn close() -> A {
    A::Close {
        cleared_session: true,
    }
}

/// The default error prompt said before an unhandled error closes the conversation.
pub(super) fn sorry(id: u64) -> A {
    say(id, crate::flow::load::DEFAULT_ERROR_TEXT)
}

pub(super) fn say(id: u64, text: &str) -> A {
    A::Say {
        id,
        text: text.into(),
    }
}

const END: &str = "  end:\n    - hangup";

#[test]
fn nothing_happens_before_started() {
    let mut h = Harness::flow("", "  main:\n    - start_recording");
    assert!(h
        .ev(E::Dtmf {
            digit: '1',
            duration_ms: 80
        })
        .is_empty());
    assert!(h.drain().is_empty());
    assert_eq!(h.m.poll_timeout(), None);
    assert_eq!(h.start(), vec![A::StartRecording, close()]);
    assert!(h.start().is_empty(), "second Started ignored");
}

#[test]
fn started_fills_call_context() {
    let mut h = Harness::flow("", "  main:\n    - collect: {}");
    h.start();
    assert_eq!(h.var("call.from"), json!("+3211223344"));
    assert_eq!(h.var("call.call_id"), json!("call-1"));
    assert_eq!(h.var("call.codec"), json!("PCMU"));
    assert_eq!(h.var("call.headers.x_customer_id"), json!("C42"));
}

#[test]
fn message_steps() {
    let mut h = Harness::flow(
        "variables: {name: Ann}",
        &format!(
            "  main:\n    - message: {{file: a.wav}}\n    - message: {{text: 'Hi {{name}}', \
             wait: false}}\n    - message: {{file: '{{name}}.wav'}}\n    - goto: end\n{END}"
        ),
    );
    assert_eq!(h.start(), vec![play(1, "a.wav")]);
    assert!(h.finished(99).is_empty(), "unrelated id ignored");
    assert_eq!(h.finished(1), vec![say(2, "Hi Ann"), play(3, "Ann.wav")]);
    assert!(
        h.finished(2).is_empty(),
        "wait:false playback finishing changes nothing"
    );
    assert_eq!(
        h.ev(E::PlaybackFailed {
            id: 3,
            reason: "no such file".into()
        }),
        vec![A::Close {
            cleared_session: false
        }]
    );
    let log = h.m.step_log();
    assert_eq!(log.len(), 5);
    assert_eq!(
        log[2].outcome,
        StepOutcome::Failed("playback failed: no such file".into())
    );
    assert_eq!(
        (log[4].dialog.as_ref(), log[4].kind),
        ("end", StepKind::Hangup)
    );
}

#[test]
fn barge_in_stops_playback_and_feeds_the_digit_to_collect() {
    let mut h = Harness::flow(
        "",
        &format!(
            "  main:\n    - message: {{file: long.wav, barge_in: true}}\n    - collect: \
             {{variable: c, branches: {{'4': end}}}}\n{END}"
        ),
    );
    assert_eq!(h.start(), vec![play(1, "long.wav")]);
    assert_eq!(
        h.dtmf("4"),
        vec![
            A::StopPlayback,
            A::Close {
                cleared_session: false
            }
        ]
    );
    assert_eq!(h.var("c"), json!("4"));
    // The interrupted report arriving later is harmless.
    assert!(h
        .ev(E::PlaybackFinished {
            id: 1,
            interrupted: true
        })
        .is_empty());
}

#[test]
fn without_barge_in_digits_are_typed_ahead() {
    let mut h = Harness::flow(
        "",
        "  main:\n    - message: {file: a.wav}\n    - message: {file: b.wav, barge_in: true}\n    \
         - collect: {max_digits: 2, variable: c}\n    - close",
    );
    assert_eq!(h.start(), vec![play(1, "a.wav")]);
    assert!(h.dtmf("1").is_empty(), "no StopPlayback, digit buffered");
    assert!(h.dtmf("2").is_empty());
    // b.wav is skipped (typed-ahead input barges in) and collect consumes "12".
    assert_eq!(h.finished(1), vec![close()]);
    assert_eq!(h.m.summary().end, Some(FlowEnd::Closed(CloseReason::Step)));
}

#[test]
fn barge_in_also_stops_a_prompt_playing_during_collect() {
    let mut h = Harness::flow(
        "",
        "  main:\n    - message: {file: menu.wav, barge_in: true, wait: false}\n    \
         - collect: {variable: c}\n    - close: {scope: context}",
    );
    assert_eq!(h.start(), vec![play(1, "menu.wav")]);
    assert_eq!(
        h.dtmf("7"),
        vec![
            A::StopPlayback,
            A::Close {
                cleared_session: false
            }
        ],
        "scope context keeps the variables, and says so"
    );
    assert_eq!(h.var("c"), json!("7"), "scope context keeps variables");
    assert_eq!(h.var("call.from"), Value::Null);
}

#[test]
fn collect_branches_default_and_timeouts() {
    let dialogs =
        "  main:\n    - collect:\n        max_digits: 3\n        timeout_ms: 4000\n        \
                   inter_digit_timeout_ms: 1000\n        variable: in\n        branches: {'12': a, \
                   '3': b}\n        default: d\n        on_timeout: t\n  a:\n    - message: \
                   {text: a}\n  b:\n    - message: {text: b}\n  d:\n    - message: {text: d}\n  \
                   t:\n    - message: {text: t}";
    // (input script of (ms to wait, digits), expected spoken dialog, expected variable)
    type Case<'a> = (&'a [(u64, &'a str)], &'a str, &'a str);
    let cases: &[Case] = &[
        (&[(0, "12#")], "a", "12"),
        (&[(0, "3#")], "b", "3"),
        (&[(0, "999")], "d", "999"),
        (&[(0, "#")], "d", ""),
        (&[(0, "1"), (900, "2"), (1000, "")], "a", "12"),
        (&[(0, "3"), (1000, "")], "b", "3"),
        (&[(3999, ""), (1, "")], "t", ""),
    ];
    for (script, want, var) in cases {
        let mut h = Harness::flow("", dialogs);
        h.start();
        let mut out = Vec::new();
        for (ms, digits) in script.iter() {
            out.extend(h.advance(*ms));
            out.extend(h.dtmf(digits));
        }
        assert_eq!(out, vec![say(1, want)], "{script:?}");
        assert_eq!(h.var("in"), json!(var), "{script:?}");
    }
}

#[test]
fn collect_without_targets_falls_through_and_no_input_uses_default() {
    let mut h = Harness::flow(
        "",
        "  main:\n    - collect: {timeout_ms: 1000, variable: x}\n    - message: {text: next}\n",
    );
    h.start();
    assert_eq!(h.advance(1000), vec![say(1, "next")]);
    assert_eq!(h.var("x"), json!(""));

    let mut h = Harness::flow(
        "",
        "  main:\n    - collect: {timeout_ms: 1000, default: d}\n  d:\n    - message: {text: d}",
    );
    h.start();
    assert_eq!(h.advance(1000), vec![say(1, "d")]);
}

#[test]
fn condition_steps() {
    let dialogs = "  main:\n    - condition: {expr: 'n > 5', then: big, else: small}\n  big:\n    \
                   - message: {text: big}\n  small:\n    - condition: {expr: 'n == 0', then: \
                   zero}\n    - message: {text: small}\n  zero:\n    - message: {text: zero}";
    for (n, want) in [(json!(9), "big"), (json!(3), "small"), (json!(0), "zero")] {
        let mut h = Harness::flow(&format!("variables: {{n: {n}}}"), dialogs);
        assert_eq!(h.start(), vec![say(1, want)], "n={n}");
    }
}

#[test]
fn runtime_errors_go_to_on_error_or_close() {
    let dialogs = "  main:\n    - condition: {expr: 'n / 0 > 1', then: main}\n  oops:\n    \
                   - message: {text: 'sorry'}";
    let mut h = Harness::flow("variables: {n: 1}\non_error: oops", dialogs);
    assert_eq!(h.start(), vec![say(1, "sorry")]);
    let failures = h.m.summary().failures;
    assert_eq!(failures.len(), 1);
    assert_eq!(
        failures[0].outcome,
        StepOutcome::Failed("condition `n / 0 > 1`: division by zero".into())
    );

    let mut h = Harness::flow("variables: {n: 1}", dialogs);
    assert_eq!(
        h.start(),
        vec![sorry(1)],
        "the caller hears something first"
    );
    assert!(!h.m.is_finished());
    assert_eq!(h.finished(1), vec![close()]);
    assert!(h.m.is_finished());
    assert!(matches!(
        h.m.summary().end,
        Some(FlowEnd::Closed(CloseReason::Error(ref m))) if m.contains("division by zero")
    ));
    assert!(h.m.variables().is_empty(), "closing erased the session");
}

#[test]
fn goto_and_goto_variable() {
    let dialogs = "  main:\n    - goto_variable: {variable: next, on_error: bad}\n  target:\n    \
                   - message: {text: target}\n  bad:\n    - message: {text: bad}";
    let cases = [
        ("next: target", "target"),
        ("next: nowhere", "bad"),
        ("next: 5", "bad"),
        ("other: 1", "bad"),
    ];
    for (vars, want) in cases {
        let mut h = Harness::flow(&format!("variables: {{{vars}}}"), dialogs);
        assert_eq!(h.start(), vec![say(1, want)], "{vars}");
    }
    // Without a step-level on_error the flow's on_error is used, then close.
    let plain = "  main:\n    - goto_variable: next\n  fallback:\n    - message: {text: f}";
    let mut h = Harness::flow("variables: {next: ghost}\non_error: fallback", plain);
    assert_eq!(h.start(), vec![say(1, "f")]);
    let mut h = Harness::flow("variables: {next: ghost}", plain);
    assert_eq!(h.start(), vec![sorry(1)]);
    assert_eq!(h.finished(1), vec![close()]);

    let mut h = Harness::flow("", "  main:\n    - goto: b\n  b:\n    - message: {text: b}");
    assert_eq!(h.start(), vec![say(1, "b")]);
}

#[test]
fn set_assigns_in_order_and_nests() {
    let mut h = Harness::flow(
        "variables: {n: 2}",
        "  main:\n    - set:\n        - {name: n, expr: 'n * 10'}\n        - {name: a.b, expr: \
         'n + 1'}\n        - {name: s, expr: \"'+' + str(a.b)\"}\n    - collect: {}",
    );
    h.start();
    assert_eq!(h.var("n"), json!(20));
    assert_eq!(h.var("a"), json!({"b": 21}));
    assert_eq!(h.var("s"), json!("+21"));
}

#[test]
fn set_into_a_non_object_is_a_step_error() {
    let mut h = Harness::flow(
        "variables: {s: x}",
        "  main:\n    - set: [{name: s.y, expr: 1}]\n  e:\n    - message: {text: e}",
    );
    assert_eq!(h.start(), vec![sorry(1)]);
    assert!(matches!(&h.m.step_log()[0].outcome, StepOutcome::Failed(m) if m.contains("`s`")));
}

#[test]
fn clear_session_scopes() {
    for (scope, want_v, want_ctx) in [
        ("variables", json!("init"), Value::Null),
        ("context", json!("changed"), Value::Null),
        ("all", json!("init"), Value::Null),
    ] {
        let mut h = Harness::flow(
            "variables: {v: init}",
            &format!(
                "  main:\n    - set: [{{name: v, expr: \"'changed'\"}}, {{name: extra, expr: \
                 1}}]\n    - clear_session: {{scope: {scope}}}\n    - collect: {{}}"
            ),
        );
        h.start();
        assert_eq!(h.var("v"), want_v, "{scope}");
        let call = h.var("call.from");
        if scope == "variables" {
            assert_eq!(call, json!("+3211223344"));
            assert_eq!(h.var("extra"), Value::Null);
        } else {
            assert_eq!(call, want_ctx, "{scope}");
        }
        if scope == "context" {
            assert_eq!(h.var("extra"), json!(1));
        }
    }
}

#[test]
fn delay_waits_and_buffers_digits() {
    let mut h = Harness::flow(
        "",
        "  main:\n    - delay: 1500\n    - collect: {variable: c}\n    - message: {text: done}",
    );
    assert!(h.start().is_empty());
    let t0 = h.now;
    assert_eq!(h.m.poll_timeout(), Some(t0 + Duration::from_millis(1500)));
    assert!(h.dtmf("8").is_empty());
    assert!(h.advance(1499).is_empty());
    assert_eq!(h.advance(1), vec![say(1, "done")]);
    assert_eq!(h.var("c"), json!("8"));
}

#[test]
fn pause_bot_ignores_input_until_resumed() {
    let mut h = Harness::flow(
        "inactivity_s: 5",
        "  main:\n    - pause_bot\n    - collect: {variable: c}\n    - message: {text: '{c}'}",
    );
    assert!(h.start().is_empty());
    assert!(h.m.is_paused());
    assert_eq!(
        h.m.poll_timeout(),
        Some(h.now + Duration::from_millis(crate::flow::load::DEFAULT_PAUSE_MAX_MS)),
        "no inactivity while paused; only pause_bot's max_ms"
    );
    assert!(h.dtmf("1").is_empty());
    assert!(h.advance(60_000).is_empty());
    assert!(h.ev(E::Resumed).is_empty());
    assert_eq!(h.m.poll_timeout(), Some(h.now + Duration::from_secs(5)));
    assert_eq!(
        h.dtmf("2"),
        vec![say(1, "2")],
        "the digit typed while paused was dropped"
    );
}

#[test]
fn operator_pause_freezes_collect_timers() {
    let mut h = Harness::flow(
        "inactivity_s: 0",
        "  main:\n    - collect: {timeout_ms: 1000, on_timeout: t}\n  t:\n    - message: {text: t}",
    );
    h.start();
    h.advance(500);
    assert!(h.ev(E::Paused).is_empty());
    assert!(h.advance(10_000).is_empty());
    h.ev(E::Resumed);
    assert!(
        h.advance(499).is_empty(),
        "the timer stood still while paused"
    );
    assert_eq!(h.advance(1), vec![say(1, "t")], "and kept the 500 ms left");
}

#[test]
fn get_time_with_fixed_clock_and_offset() {
    let mut h = Harness::flow(
        "inactivity_s: 0",
        "  main:\n    - delay: 60000\n    - get_time: {variable: now, timezone_offset: '+01:00'}\n    \
         - get_time: {variable: plain}\n    - collect: {}",
    );
    h.start();
    h.advance(60_000);
    // Started at 23:30:05Z; the wall clock advanced with the delay.
    assert_eq!(h.var("now.utc.ISO"), json!("2024-03-31T23:31:05.000Z"));
    assert_eq!(
        h.var("now.utc.dayOfWeek"),
        json!(0),
        "Sunday, as Chatlayer counts"
    );
    assert_eq!(h.var("now.offset.ISO"), json!("2024-04-01T00:31:05.000Z"));
    assert_eq!(
        h.var("now.offset.ISOOffset"),
        json!("2024-04-01T00:31:05.000+01:00")
    );
    assert_eq!(h.var("now.offset.dayOfMonth"), json!(1));
    assert_eq!(h.var("now.offset.month"), json!(4));
    assert_eq!(h.var("plain.offset.ISO"), h.var("plain.utc.ISO"));
}

#[test]
fn track_event_and_recording_steps() {
    let mut h = Harness::flow(
        "variables: {n: 2}",
        "  main:\n    - start_recording\n    - track_event: {name: 'step_{n}', properties: {double: \
         'n * 2', from: call.from}}\n    - stop_recording\n    - collect: {}",
    );
    assert_eq!(
        h.start(),
        vec![
            A::StartRecording,
            A::TrackEvent {
                name: "step_2".into(),
                properties: json!({"double": 4, "from": "+3211223344"})
            },
            A::StopRecording
        ]
    );
    h.ev(E::RecordingStarted { id: "r1".into() });
    assert_eq!(h.var("recording"), json!({"id": "r1", "active": true}));
    h.ev(E::RecordingFailed {
        id: Some("r1".into()),
        reason: "disk full".into(),
    });
    assert_eq!(h.var("recording.error"), json!("disk full"));
    assert_eq!(h.var("recording.active"), json!(false));
}

const FORWARD: &str = "  main:\n    - forward: {to: \"'+' + num\", on_failure: failed}\n    \
                       - message: {text: after}\n  failed:\n    - message: {text: \
                       '{transfer.reason}: {transfer.detail}'}";

#[test]
fn forward_success_ends_the_engine() {
    let mut h = Harness::flow("variables: {num: '3212'}\ninactivity_s: 5", FORWARD);
    assert_eq!(h.start(), vec![A::Transfer { to: "+3212".into() }]);
    assert_eq!(h.m.poll_timeout(), None, "inactivity paused during forward");
    assert!(h.dtmf("1").is_empty(), "DTMF ignored during forward");
    assert!(h.ev(E::TransferProgress { status: 180 }).is_empty());
    assert!(h
        .ev(E::TransferCompleted {
            to: "+3212".into(),
            mode: "refer".into()
        })
        .is_empty());
    assert!(h.m.is_finished());
    assert!(h.m.variables().is_empty());
    assert_eq!(
        h.m.summary().end,
        Some(FlowEnd::Transferred { to: "+3212".into() })
    );
    assert!(h
        .ev(E::Ended {
            reason: "bye".into()
        })
        .is_empty());
    assert_eq!(h.m.summary().steps_ok, 1);
}

#[test]
fn forward_failure_sets_reason_and_goes_to_on_failure() {
    let mut h = Harness::flow("variables: {num: 12}\ninactivity_s: 5", FORWARD);
    h.start();
    let out = h.ev(E::TransferFailed {
        reason: "busy".into(),
        detail: "486 Busy Here".into(),
    });
    assert_eq!(out, vec![say(1, "busy: 486 Busy Here")]);
    assert_eq!(
        h.m.poll_timeout(),
        None,
        "no inactivity while the bot talks (the failure dialog's message)"
    );
    assert!(matches!(
        &h.m.summary().failures[0].outcome,
        StepOutcome::Failed(m) if m == "forward failed: busy (486 Busy Here)"
    ));
}

#[test]
fn forward_failure_without_on_failure_continues() {
    let mut h = Harness::flow(
        "",
        "  main:\n    - forward: {to: \"'+32'\"}\n    - message: {text: 'after {transfer.to}'}",
    );
    h.start();
    assert!(h
        .ev(E::TransferFailed {
            reason: "denied".into(),
            detail: "not allowed".into()
        })
        .iter()
        .eq([say(1, "after +32")].iter()));
}

#[test]
fn forward_to_an_empty_target_is_a_step_error() {
    let mut h = Harness::flow("", "  main:\n    - forward: {to: missing}");
    assert_eq!(h.start(), vec![sorry(1)]);
    assert!(matches!(
        &h.m.step_log()[0].outcome,
        StepOutcome::Failed(m) if m.contains("not a phone number")
    ));
}

#[test]
fn stray_transfer_failed_is_ignored() {
    let mut h = Harness::flow("", "  main:\n    - collect: {variable: c}\n    - close");
    h.start();
    assert!(h
        .ev(E::TransferFailed {
            reason: "x".into(),
            detail: "y".into()
        })
        .is_empty());
    assert!(!h.m.is_finished());
}

#[test]
fn close_scope_and_idempotence() {
    let mut h = Harness::flow(
        "variables: {v: 1}",
        "  main:\n    - close: {scope: variables}",
    );
    assert_eq!(h.start(), vec![close()]);
    assert_eq!(h.var("v"), Value::Null);
    assert_eq!(h.var("call.to"), json!("+3225550000"));
    h.m.close();
    assert!(h.drain().is_empty(), "second close emits nothing");
    assert!(h.dtmf("1").is_empty());
    assert!(h.advance(100_000).is_empty());
    assert_eq!(h.m.poll_timeout(), None);
}

#[test]
fn external_close_erases_and_emits_once() {
    let mut h = Harness::flow("variables: {v: 1}", "  main:\n    - collect: {}");
    h.start();
    h.m.close();
    h.m.close();
    assert_eq!(h.drain(), vec![close()]);
    assert!(h.m.variables().is_empty());
    assert_eq!(
        h.m.summary().end,
        Some(FlowEnd::Closed(CloseReason::Requested))
    );
}

#[test]
fn hangup_does_not_clear_the_session() {
    let mut h = Harness::flow("variables: {v: 1}", "  main:\n    - hangup");
    assert_eq!(
        h.start(),
        vec![A::Close {
            cleared_session: false
        }]
    );
    assert_eq!(h.var("v"), json!(1));
    assert_eq!(h.m.summary().end, Some(FlowEnd::HungUp));
}

#[test]
fn ended_drops_pending_actions_and_silences_the_engine() {
    let mut h = Harness::flow("", "  main:\n    - message: {file: a.wav}\n    - close");
    let wall = h.wall();
    h.m.handle_event(E::Started(SessionInfo::default()), h.now, wall);
    h.m.handle_event(
        E::Ended {
            reason: "BYE".into(),
        },
        h.now,
        wall,
    );
    assert_eq!(h.m.poll_action(), None, "queued Play dropped");
    assert!(h.finished(1).is_empty());
    assert!(h.m.is_finished());
    assert_eq!(
        h.m.summary().end,
        Some(FlowEnd::CallEnded {
            reason: "BYE".into()
        })
    );
}

#[test]
fn loops_without_waiting_are_bounded() {
    let mut h = Harness::flow(
        "on_error: main",
        "  main:\n    - set: [{name: n, expr: 'n + 1'}]\n    - goto: main",
    );
    // `null + 1` fails, on_error jumps back: an error loop; and a plain goto loop below.
    assert_eq!(h.start(), vec![sorry(1)]);
    assert_eq!(h.finished(1), vec![close()]);
    assert!(matches!(
        h.m.summary().end,
        Some(FlowEnd::Closed(CloseReason::Error(ref m))) if m.contains("loops")
    ));
    let mut h = Harness::flow("", "  main:\n    - goto: b\n  b:\n    - goto: main");
    assert_eq!(h.start(), vec![sorry(1)]);
    assert_eq!(h.m.summary().steps_ok, MAX_STEPS_WITHOUT_WAIT);
}

#[test]
fn end_of_dialog_closes() {
    let mut h = Harness::flow("", "  main:\n    - start_recording");
    assert_eq!(h.start(), vec![A::StartRecording, close()]);
    assert_eq!(
        h.m.summary().end,
        Some(FlowEnd::Closed(CloseReason::EndOfDialog))
    );
}

#[test]
fn inactivity_restarts_on_input_and_can_be_disabled() {
    let dialogs =
        "  main:\n    - collect: {max_digits: 20, terminator: '', inter_digit_timeout_ms: 3600000}";
    let mut h = Harness::flow("inactivity_s: 10", dialogs);
    h.start();
    assert!(h.advance(9_000).is_empty());
    h.dtmf("1");
    assert!(h.advance(9_999).is_empty());
    assert_eq!(h.advance(1), vec![close()]);
    assert_eq!(
        h.m.summary().end,
        Some(FlowEnd::Closed(CloseReason::Inactivity))
    );

    let mut h = Harness::flow("inactivity_s: 0", dialogs);
    h.start();
    assert_eq!(h.m.poll_timeout(), None);
}

#[test]
fn sessions_are_per_machine() {
    let def = FlowDefinition::from_str(
        "name: t\nstart: main\nvariables: {n: 0}\ndialogs:\n  main:\n    - collect: {variable: \
         d}\n    - set: [{name: n, expr: 'n + 1'}]\n    - collect: {}",
        "t.yaml",
    )
    .unwrap();
    let mut a = Harness::new(Arc::clone(&def));
    let mut b = Harness::new(def);
    a.start();
    b.start();
    a.dtmf("5");
    assert_eq!(a.var("n"), json!(1));
    assert_eq!(a.var("d"), json!("5"));
    assert_eq!(b.var("n"), json!(0));
    assert_eq!(b.var("d"), Value::Null);
}

#[test]
fn play_ids_are_unique_and_increasing() {
    let mut h = Harness::flow(
        "",
        "  main:\n    - message: {text: a, wait: false}\n    - message: {text: b, wait: false}\n    \
         - collect: {}",
    );
    assert_eq!(h.start(), vec![say(1, "a"), say(2, "b")]);
}

#[test]
fn file_placeholders_cannot_escape_the_prompt_dir() {
    let mut h = Harness::flow(
        "variables: {lang: '../../etc'}",
        "  main:\n    - message: {file: '{lang}/greeting.wav'}",
    );
    assert_eq!(h.start(), vec![sorry(1)]);
    assert!(matches!(
        &h.m.step_log()[0].outcome,
        StepOutcome::Failed(m) if m.contains("not allowed in a file name")
    ));
}

// ---------------------------------------------------------------------------------------------
// Issue 11: the nine behaviours, pause_bot's end, clear_session by name.

#[test]
fn inactivity_does_not_count_while_the_bot_talks_or_waits_on_a_delay() {
    let mut h = Harness::flow(
        "inactivity_s: 5",
        "  main:\n    - message: {file: long.wav}\n    - delay: 20000\n    - collect: {}",
    );
    assert_eq!(h.start(), vec![play(1, "long.wav")]);
    assert_eq!(
        h.m.poll_timeout(),
        None,
        "no inactivity timer during the prompt"
    );
    assert!(
        h.advance(60_000).is_empty(),
        "a 60 s prompt plays to the end"
    );
    h.finished(1);
    assert!(h.advance(20_000).is_empty(), "nor during a delay");
    assert!(h.advance(4_999).is_empty());
    assert_eq!(h.advance(1), vec![close()]);
    // A wait:false prompt during a collect: the clock starts when the prompt ends.
    let mut h = Harness::flow(
        "inactivity_s: 5",
        "  main:\n    - message: {file: menu.wav, wait: false}\n    - collect: {}",
    );
    h.start();
    assert!(h.advance(30_000).is_empty());
    h.finished(1);
    assert!(h.advance(4_999).is_empty());
    assert_eq!(h.advance(1), vec![close()]);
}

#[test]
fn a_key_during_a_barge_in_prompt_keeps_the_normal_prompt_queued_behind_it() {
    let mut h = Harness::flow(
        "",
        "  main:\n    - message: {file: intro.wav, barge_in: true, wait: false}\n    - message: \
         {file: legal.wav, wait: false}\n    - collect: {variable: c}\n    - message: {text: \
         '{c}'}",
    );
    assert_eq!(
        h.start(),
        vec![play(1, "intro.wav")],
        "legal.wav waits its turn"
    );
    assert_eq!(
        h.dtmf("4"),
        vec![A::StopPlayback, play(2, "legal.wav"), say(3, "4")],
        "the key stops the intro only; the legal prompt still plays, then the answer"
    );
}

#[test]
fn a_refused_second_start_recording_leaves_the_recording_active() {
    let mut h = Harness::flow("", "  main:\n    - collect: {}");
    h.start();
    h.ev(E::RecordingStarted { id: "r1".into() });
    h.ev(E::RecordingFailed {
        id: None,
        reason: "already recording (r1); start ignored".into(),
    });
    assert_eq!(h.var("recording.active"), json!(true));
    assert_eq!(h.var("recording.id"), json!("r1"));
    h.ev(E::RecordingFailed {
        id: Some("r1".into()),
        reason: "disk full".into(),
    });
    assert_eq!(h.var("recording.active"), json!(false));
}

#[test]
fn close_scope_context_reports_that_the_variables_were_kept() {
    for (scope, cleared) in [("context", false), ("variables", true), ("all", true)] {
        let mut h = Harness::flow(
            "variables: {v: 1}",
            &format!("  main:\n    - close: {{scope: {scope}}}"),
        );
        assert_eq!(
            h.start(),
            vec![A::Close {
                cleared_session: cleared
            }],
            "{scope}"
        );
    }
}

#[test]
fn goto_variable_to_an_unknown_dialog_without_on_error_says_something_then_closes() {
    let mut h = Harness::flow(
        "variables: {next: ghost}",
        "  main:\n    - goto_variable: next",
    );
    assert!(!h.m.def.warnings().is_empty(), "warned at load");
    assert_eq!(h.start(), vec![sorry(1)]);
    assert!(h.dtmf("1").is_empty(), "keys do nothing while closing");
    assert_eq!(h.finished(1), vec![close()]);
    // A prompt that never reports back does not keep the call open.
    let mut h = Harness::flow(
        "variables: {next: ghost}",
        "  main:\n    - goto_variable: next",
    );
    h.start();
    assert!(h.advance(14_999).is_empty());
    assert_eq!(h.advance(1), vec![close()]);
    // `error_prompt: false`: straight to the close.
    let mut h = Harness::flow(
        "variables: {next: ghost}\nerror_prompt: false",
        "  main:\n    - goto_variable: next",
    );
    assert_eq!(h.start(), vec![close()]);
}

#[test]
fn a_pause_freezes_a_delay_like_a_collect() {
    let mut h = Harness::flow(
        "inactivity_s: 0",
        "  main:\n    - delay: 1500\n    - message: {text: done}",
    );
    h.start();
    h.advance(500);
    h.ev(E::Paused);
    assert!(h.advance(10_000).is_empty());
    h.ev(E::Resumed);
    assert!(h.advance(999).is_empty(), "1000 ms were left");
    assert_eq!(h.advance(1), vec![say(1, "done")]);
}

#[test]
fn pause_bot_plays_hold_audio_and_ends_at_max_ms() {
    let mut h = Harness::flow(
        "inactivity_s: 5",
        "  main:\n    - pause_bot: {max_ms: 10000, on_timeout: nobody, hold: hold.wav}\n    - \
         message: {text: resumed}\n  nobody:\n    - message: {text: 'nobody came'}",
    );
    assert_eq!(h.start(), vec![play(1, "hold.wav")]);
    assert!(h.m.is_paused());
    h.advance(2_000);
    assert_eq!(h.finished(1), vec![play(2, "hold.wav")], "looped");
    assert!(h.dtmf("1").is_empty(), "keys ignored while paused");
    assert!(h.advance(7_999).is_empty());
    assert_eq!(
        h.advance(1),
        vec![A::StopPlayback, say(3, "nobody came")],
        "the hold stops and the flow goes to on_timeout"
    );
    assert!(!h.m.is_paused());
    // An operator's resume before max_ms goes on with the next step.
    let mut h = Harness::flow(
        "",
        "  main:\n    - pause_bot: {max_ms: 10000, on_timeout: nobody, hold: hold.wav}\n    - \
         message: {text: resumed}\n  nobody:\n    - message: {text: 'nobody came'}",
    );
    h.start();
    h.advance(3_000);
    assert_eq!(h.ev(E::Resumed), vec![A::StopPlayback, say(2, "resumed")]);
    assert!(h.advance(20_000).is_empty(), "the max_ms timer is gone");
}

#[test]
fn clear_session_by_name() {
    let mut h = Harness::flow(
        "variables: {a: 1, b: {c: 2, d: 3}, keep: 4}",
        "  main:\n    - clear_session: {variables: [a, b.c, nothing]}\n    - collect: {}",
    );
    h.start();
    assert_eq!(h.var("a"), Value::Null);
    assert_eq!(h.var("b"), json!({"d": 3}));
    assert_eq!(h.var("keep"), json!(4));
    assert_eq!(h.var("call.from"), json!("+3211223344"));
}

#[test]
fn summary_and_step_log_as_json_for_the_cdr() {
    let mut h = Harness::flow(
        "variables: {n: 1}\non_error: e",
        "  main:\n    - set: [{name: x, expr: 'n / 0'}]\n  e:\n    - close",
    );
    h.start();
    let v = h.m.summary().to_json();
    assert_eq!(v["flow"], json!("test"));
    assert_eq!(v["steps_ok"], json!(1));
    assert_eq!(v["steps_failed"], json!(1));
    assert_eq!(
        v["failures"][0],
        json!({"dialog": "main", "step": 1, "type": "set", "ok": false,
               "error": "set `x`: `n / 0`: division by zero"})
    );
    assert_eq!(v["end"], json!({"how": "closed", "reason": "close_step"}));
    let log: Vec<Value> = h.m.step_log().iter().map(StepRecord::to_json).collect();
    assert_eq!(
        log[1],
        json!({"dialog": "e", "step": 1, "type": "close", "ok": true})
    );
}

#[test]
fn expressions_can_read_the_clock() {
    let mut h = Harness::flow(
        "",
        "  main:\n    - set: {name: t, expr: \"DATE(NOW(), '%H:%M', 'Europe/Brussels')\"}\n    \
         - collect: {}",
    );
    h.start();
    // The harness clock: Sunday 31 March 2024, 23:30:05 UTC = 01:30 CEST on 1 April.
    assert_eq!(h.var("t"), json!("01:30"));
}
