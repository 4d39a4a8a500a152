use super::*;
use serde_json::Value;

fn info() -> SessionInfo {
    SessionInfo {
        call_id: "call-1".into(),
        from: "+3212345678".into(),
        to: "bot".into(),
        ..Default::default()
    }
}

fn ms(base: Instant, n: u64) -> Instant {
    base + Duration::from_millis(n)
}

struct Harness {
    core: BridgeCore,
    t0: Instant,
}

impl Harness {
    fn new(cfg: BridgeConfig) -> Self {
        let t0 = Instant::now();
        let mut core = BridgeCore::new(cfg, info(), t0);
        assert_eq!(
            core.poll_request(),
            Some(IoRequest::Connect { generation: 1 })
        );
        Harness { core, t0 }
    }
    fn connected(cfg: BridgeConfig) -> Self {
        let mut h = Self::new(cfg);
        h.core.on_connected(1, h.t0);
        h
    }
    fn texts(&mut self) -> Vec<Value> {
        let mut v = Vec::new();
        while let Some(o) = self.core.poll_outgoing() {
            if let Outgoing::Text(t) = o {
                v.push(serde_json::from_str(&t).unwrap());
            }
        }
        v
    }
    fn types(&mut self) -> Vec<String> {
        self.texts()
            .iter()
            .map(|v| v["type"].as_str().unwrap_or("?").to_string())
            .collect()
    }
    fn actions(&mut self) -> Vec<FlowAction> {
        std::iter::from_fn(|| self.core.poll_action()).collect()
    }
    fn bot(&mut self, text: &str) {
        let g = self.core.generation;
        self.core.on_text(g, text, self.t0);
    }
}

#[test]
fn session_start_first_then_answer_is_acked_and_answered() {
    let mut h = Harness::connected(BridgeConfig::default());
    let first = h.texts();
    assert_eq!(first[0]["type"], "session.start");
    assert_eq!(first[0]["from"], "+3212345678");
    assert_eq!(first[0]["seq"], 1);
    assert_eq!(first[0]["audio"]["sample_rate"], 8000);
    h.bot(r#"{"type":"answer","id":"a1"}"#);
    assert_eq!(h.actions(), vec![FlowAction::Answer]);
    let msgs = h.texts();
    assert_eq!(msgs[0]["type"], "ack");
    assert_eq!(msgs[0]["id"], "a1");
    assert_eq!(msgs[1]["type"], "result");
    assert_eq!(msgs[1]["ok"], true);
    assert_eq!(msgs[1]["seq"], 3);
    // A second answer is refused, not re-sent.
    h.bot(r#"{"type":"answer","id":"a2"}"#);
    assert!(h.actions().is_empty());
    let msgs = h.texts();
    assert_eq!(msgs[1]["ok"], false);
}

#[test]
fn reject_before_answer_ends_the_session() {
    let mut h = Harness::connected(BridgeConfig::default());
    h.texts();
    h.bot(r#"{"type":"reject","sip_code":486}"#);
    assert_eq!(h.actions(), vec![FlowAction::Reject { status: 486 }]);
    assert_eq!(h.types(), vec!["session.end"]);
    assert_eq!(h.core.poll_request(), Some(IoRequest::Finish));
}

#[test]
fn reject_with_a_bad_code_is_refused() {
    let mut h = Harness::connected(BridgeConfig::default());
    h.texts();
    h.bot(r#"{"type":"reject","id":"r","sip_code":200}"#);
    assert!(h.actions().is_empty());
    let m = h.texts();
    assert_eq!(m[1]["ok"], false);
}

#[test]
fn say_result_comes_when_playback_finishes() {
    let mut h = Harness::connected(BridgeConfig::default());
    h.bot(r#"{"type":"answer"}"#);
    h.bot(r#"{"type":"say","id":"s1","text":"hello"}"#);
    let acts = h.actions();
    let FlowAction::Say { id, text } = &acts[1] else {
        panic!("{acts:?}")
    };
    assert_eq!(text, "hello");
    h.texts();
    h.core.handle_event(
        FlowEvent::PlaybackFinished {
            id: *id,
            interrupted: false,
        },
        h.t0,
    );
    let m = h.texts();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0]["type"], "result");
    assert_eq!(m[0]["id"], "s1");
    assert_eq!(m[0]["command"], "say");
    assert_eq!(m[0]["ok"], true);
}

#[test]
fn marks_come_back_played_or_cleared() {
    let mut h = Harness::connected(BridgeConfig::default());
    h.bot(r#"{"type":"answer"}"#);
    h.bot(r#"{"type":"mark","name":"one"}"#);
    h.bot(r#"{"type":"mark","name":"two"}"#);
    h.bot(r#"{"type":"clear"}"#);
    let acts = h.actions();
    let ids: Vec<u64> = acts
        .iter()
        .filter_map(|a| match a {
            FlowAction::QueueMark { id } => Some(*id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 2);
    assert!(acts.contains(&FlowAction::StopPlayback));
    h.texts();
    h.core.handle_event(
        FlowEvent::PlaybackFinished {
            id: ids[0],
            interrupted: false,
        },
        h.t0,
    );
    h.core.handle_event(
        FlowEvent::PlaybackFinished {
            id: ids[1],
            interrupted: true,
        },
        h.t0,
    );
    let m = h.texts();
    assert_eq!(m[0]["name"], "one");
    assert_eq!(m[0]["cleared"], false);
    assert_eq!(m[1]["name"], "two");
    assert_eq!(m[1]["cleared"], true);
}

#[test]
fn binary_audio_both_ways() {
    let mut h = Harness::connected(BridgeConfig::default());
    // No caller audio before answer.
    h.core.caller_audio(&[1i16; 160]);
    h.texts();
    h.bot(r#"{"type":"answer"}"#);
    h.actions();
    h.core.caller_audio(&[1i16; 320]);
    let frames: Vec<Outgoing> = std::iter::from_fn(|| h.core.poll_outgoing()).collect();
    let bins: Vec<&Vec<u8>> = frames
        .iter()
        .filter_map(|o| match o {
            Outgoing::Binary(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(bins.len(), 2);
    assert_eq!(bins[0].len(), 320);
    h.core.on_binary(1, &[0u8; 320]);
    assert_eq!(
        h.actions(),
        vec![FlowAction::PlayAudio {
            samples: vec![0; 160]
        }]
    );
    h.core.on_binary(1, &[0u8; 3]);
    assert!(h.actions().is_empty());
    assert_eq!(h.types(), vec!["error"]);
    // pause stops caller audio, resume restarts it.
    h.bot(r#"{"type":"pause"}"#);
    h.core.caller_audio(&[1i16; 160]);
    assert!(h.core.poll_outgoing().is_none());
    h.bot(r#"{"type":"resume"}"#);
    h.core.caller_audio(&[1i16; 160]);
    assert!(matches!(h.core.poll_outgoing(), Some(Outgoing::Binary(_))));
}

#[test]
fn malformed_frames_become_error_events_with_ack_and_failed_result() {
    let mut h = Harness::connected(BridgeConfig::default());
    h.texts();
    for bad in ["garbage", "{}", r#"{"type":"nope"}"#, r#"{"type":"say"}"#] {
        h.bot(bad);
        assert_eq!(h.types(), vec!["error"], "{bad}");
    }
    h.bot(r#"{"type":"nope","id":"x"}"#);
    assert_eq!(h.types(), vec!["ack", "result", "error"]);
    assert!(h.actions().is_empty());
}

#[test]
fn dtmf_recording_and_transfer_events() {
    let mut h = Harness::connected(BridgeConfig::default());
    h.bot(r#"{"type":"answer"}"#);
    h.bot(r#"{"type":"record.start","id":"r1"}"#);
    h.bot(r#"{"type":"transfer","id":"t1","to":"+3225551212"}"#);
    let acts = h.actions();
    assert!(acts.contains(&FlowAction::StartRecording));
    assert!(acts.contains(&FlowAction::Transfer {
        to: "+3225551212".into()
    }));
    h.texts();
    h.core.handle_event(
        FlowEvent::Dtmf {
            digit: '5',
            duration_ms: 100,
        },
        h.t0,
    );
    h.core
        .handle_event(FlowEvent::RecordingStarted { id: "rec1".into() }, h.t0);
    h.core.handle_event(
        FlowEvent::TransferFailed {
            reason: "busy".into(),
            detail: "486".into(),
        },
        h.t0,
    );
    let m = h.texts();
    let types: Vec<&str> = m.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(
        types,
        vec![
            "dtmf",
            "recording.started",
            "result",
            "transfer.failed",
            "result"
        ]
    );
    assert_eq!(m[0]["digit"], "5");
    assert_eq!(m[2]["id"], "r1");
    assert_eq!(m[4]["id"], "t1");
    assert_eq!(m[4]["ok"], false);
}

#[test]
fn close_sends_result_then_session_end_and_finishes() {
    let mut h = Harness::connected(BridgeConfig::default());
    h.bot(r#"{"type":"answer"}"#);
    h.bot(r#"{"type":"set_variables","variables":{"a":1}}"#);
    h.actions();
    h.texts();
    h.bot(r#"{"type":"close","id":"c","clear_session":true}"#);
    assert_eq!(
        h.actions(),
        vec![FlowAction::Close {
            cleared_session: true
        }]
    );
    let m = h.texts();
    assert_eq!(m[2]["type"], "session.end");
    assert_eq!(m[2]["cdr"]["variables"], serde_json::json!({}));
    assert_eq!(h.core.poll_request(), Some(IoRequest::Finish));
    // Nothing after the end.
    h.core.handle_event(
        FlowEvent::Ended {
            reason: "caller_hangup".into(),
        },
        h.t0,
    );
    assert!(h.texts().is_empty());
}

#[test]
fn connect_timeout_plays_fallback_prompt_then_closes() {
    let cfg = BridgeConfig {
        fallback_prompt: Some("sorry.wav".into()),
        ..Default::default()
    };
    let mut h = Harness::new(cfg);
    assert_eq!(h.core.poll_timeout(), Some(ms(h.t0, 3000)));
    h.core.handle_timeout(ms(h.t0, 2999));
    assert!(h.actions().is_empty());
    h.core.handle_timeout(ms(h.t0, 3000));
    assert_eq!(h.core.poll_request(), Some(IoRequest::Abort));
    let acts = h.actions();
    assert_eq!(acts[0], FlowAction::Answer);
    let FlowAction::Play { id, file } = &acts[1] else {
        panic!("{acts:?}")
    };
    assert_eq!(file, "sorry.wav");
    // A late connection of the abandoned attempt is ignored.
    h.core.on_connected(1, ms(h.t0, 3100));
    assert!(h.texts().is_empty());
    h.core.handle_event(
        FlowEvent::PlaybackFinished {
            id: *id,
            interrupted: false,
        },
        ms(h.t0, 5000),
    );
    assert_eq!(
        h.actions(),
        vec![FlowAction::Close {
            cleared_session: false
        }]
    );
}

#[test]
fn drop_with_forward_policy_transfers_and_falls_back_to_prompt_on_failure() {
    let cfg = BridgeConfig {
        on_drop: FailurePolicy::Forward,
        fallback_number: Some("+3225551212".into()),
        ..Default::default()
    };
    let mut h = Harness::connected(cfg);
    h.bot(r#"{"type":"answer"}"#);
    h.actions();
    h.core.on_closed(1, "reset", ms(h.t0, 100));
    assert_eq!(
        h.actions(),
        vec![FlowAction::Transfer {
            to: "+3225551212".into()
        }]
    );
    h.core.handle_event(
        FlowEvent::TransferFailed {
            reason: "busy".into(),
            detail: String::new(),
        },
        ms(h.t0, 200),
    );
    // No prompt configured: close at once.
    assert_eq!(
        h.actions(),
        vec![FlowAction::Close {
            cleared_session: false
        }]
    );
}

#[test]
fn unanswered_bot_triggers_the_policy_after_answer_timeout() {
    let mut h = Harness::connected(BridgeConfig::default());
    assert_eq!(h.core.poll_timeout(), Some(ms(h.t0, 5000)));
    h.core.handle_timeout(ms(h.t0, 5000));
    assert_eq!(
        h.actions(),
        vec![
            FlowAction::Answer,
            FlowAction::Close {
                cleared_session: false
            }
        ]
    );
}

#[test]
fn reconnect_then_resume_replays_missed_events() {
    let cfg = BridgeConfig {
        on_drop: FailurePolicy::Reconnect,
        ..Default::default()
    };
    let mut h = Harness::connected(cfg);
    h.bot(r#"{"type":"answer"}"#);
    h.actions();
    let seen = h.texts();
    let last_seen = seen.last().unwrap()["seq"].as_u64().unwrap();
    h.core.on_closed(1, "reset", ms(h.t0, 100));
    assert!(h.actions().is_empty(), "no fallback while reconnecting");
    // Events while down are buffered, not sent.
    h.core.handle_event(
        FlowEvent::Dtmf {
            digit: '7',
            duration_ms: 80,
        },
        ms(h.t0, 150),
    );
    assert!(h.texts().is_empty());
    assert_eq!(h.core.poll_timeout(), Some(ms(h.t0, 300)));
    h.core.handle_timeout(ms(h.t0, 300));
    assert_eq!(
        h.core.poll_request(),
        Some(IoRequest::Connect { generation: 3 })
    );
    h.core.on_connected(3, ms(h.t0, 350));
    let start = h.texts();
    assert_eq!(start[0]["type"], "session.start");
    assert_eq!(start[0]["reconnect"], true);
    h.bot(&format!(r#"{{"type":"resume","last_seq":{last_seen}}}"#));
    let m = h.texts();
    let types: Vec<&str> = m.iter().map(|v| v["type"].as_str().unwrap()).collect();
    assert_eq!(types, vec!["dtmf", "session.start"]);
    assert_eq!(m[0]["digit"], "7");
    assert_eq!(m[0]["seq"].as_u64().unwrap(), last_seen + 1);
}

#[test]
fn reconnect_gives_up_after_the_attempts() {
    let cfg = BridgeConfig {
        on_drop: FailurePolicy::Reconnect,
        reconnect_attempts: 1,
        ..Default::default()
    };
    let mut h = Harness::connected(cfg);
    h.bot(r#"{"type":"answer"}"#);
    h.actions();
    h.core.on_closed(1, "reset", ms(h.t0, 100));
    h.core.handle_timeout(ms(h.t0, 300));
    h.core.on_closed(3, "refused", ms(h.t0, 310));
    assert_eq!(
        h.actions(),
        vec![FlowAction::Close {
            cleared_session: false
        }]
    );
}

fn twilio_cfg() -> BridgeConfig {
    BridgeConfig {
        dialect: Dialect::Twilio,
        ..Default::default()
    }
}

fn outgoing(h: &mut Harness) -> Vec<Outgoing> {
    std::iter::from_fn(|| h.core.poll_outgoing()).collect()
}

fn seq(v: &Value) -> u64 {
    v["sequenceNumber"].as_str().unwrap().parse().unwrap()
}

#[test]
fn twilio_dialect_speaks_media_streams() {
    let mut h = Harness::connected(twilio_cfg());
    let m = h.texts();
    // `connected` exactly as Twilio sends it, then `start` numbered "1".
    assert_eq!(
        m[0],
        serde_json::json!({"event":"connected","protocol":"Call","version":"1.0.0"})
    );
    assert_eq!(m[1]["event"], "start");
    assert_eq!(m[1]["sequenceNumber"], "1");
    let sid = m[1]["streamSid"].as_str().unwrap().to_string();
    assert!(twilio::is_sid("MZ", &sid), "{sid}");
    let start = &m[1]["start"];
    assert_eq!(start["streamSid"], sid.as_str());
    assert!(twilio::is_sid("CA", start["callSid"].as_str().unwrap()));
    assert_eq!(start["accountSid"], twilio::DEFAULT_ACCOUNT_SID);
    assert_eq!(start["customParameters"]["from"], "+3212345678");
    assert_eq!(start["customParameters"]["sipCallId"], "call-1");
    assert_eq!(start["tracks"], serde_json::json!(["inbound"]));
    assert_eq!(h.actions(), vec![FlowAction::Answer]);
    h.core.caller_audio(&[0i16; 160]);
    let m = h.texts();
    assert_eq!(m[0]["event"], "media");
    assert_eq!(m[0]["sequenceNumber"], "2");
    assert_eq!(m[0]["media"]["chunk"], "1");
    assert_eq!(m[0]["media"]["timestamp"], "0");
    assert_eq!(m[0]["media"]["track"], "inbound");
    assert_eq!(m[0]["media"]["payload"].as_str().unwrap().len(), 216);
    let payload = super::super::protocol::ulaw_b64_encode(&[0i16; 160]);
    h.bot(&format!(
        r#"{{"event":"media","streamSid":"{sid}","media":{{"payload":"{payload}"}}}}"#
    ));
    h.bot(&format!(
        r#"{{"event":"mark","streamSid":"{sid}","mark":{{"name":"m"}}}}"#
    ));
    h.bot(&format!(r#"{{"event":"clear","streamSid":"{sid}"}}"#));
    let acts = h.actions();
    assert!(matches!(acts[0], FlowAction::PlayAudio { .. }));
    let FlowAction::QueueMark { id } = acts[1] else {
        panic!()
    };
    assert_eq!(acts[2], FlowAction::StopPlayback);
    h.core.handle_event(
        FlowEvent::PlaybackFinished {
            id,
            interrupted: true,
        },
        h.t0,
    );
    h.core.handle_event(
        FlowEvent::Dtmf {
            digit: '1',
            duration_ms: 100,
        },
        h.t0,
    );
    h.core.handle_event(
        FlowEvent::Ended {
            reason: "caller_hangup".into(),
        },
        h.t0,
    );
    let m = h.texts();
    let ev: Vec<&str> = m.iter().map(|v| v["event"].as_str().unwrap()).collect();
    assert_eq!(ev, vec!["mark", "dtmf", "stop"]);
    assert_eq!(m[0]["mark"]["name"], "m");
    assert_eq!(m[1]["dtmf"]["digit"], "1");
    assert_eq!(m[2]["stop"]["callSid"], start["callSid"]);
    let seqs: Vec<u64> = m.iter().map(seq).collect();
    assert_eq!(seqs, vec![3, 4, 5]);
    assert_eq!(h.core.poll_request(), Some(IoRequest::Finish));
}

#[test]
fn twilio_inbound_media_keeps_flowing_through_caller_silence() {
    let mut h = Harness::connected(twilio_cfg());
    h.texts();
    h.actions();
    // 200 ms of speech in 30 ms packets (a trunk at ptime 30), then nothing for 2 s.
    let mut at = 0;
    for _ in 0..7 {
        h.core.handle_timeout(ms(h.t0, at));
        h.core.caller_audio(&[1000i16; 240]);
        at += 30;
    }
    while let Some(t) = h.core.poll_timeout() {
        if t > ms(h.t0, 2100) {
            break;
        }
        h.core.handle_timeout(t);
    }
    let m = h.texts();
    assert!(m.iter().all(|v| v["event"] == "media"));
    // 2 s of stream time, less the fill lag, at 50 per second; all 20 ms / 160 bytes.
    assert_eq!(m.len(), 100, "{}", m.len());
    for (i, v) in m.iter().enumerate() {
        let i = i as u64;
        assert_eq!(v["media"]["chunk"], (i + 1).to_string());
        assert_eq!(v["media"]["timestamp"], (i * 20).to_string());
        assert_eq!(seq(v), i + 2);
        let bytes = base64::Engine::decode(
            &base64::engine::general_purpose::STANDARD,
            v["media"]["payload"].as_str().unwrap(),
        )
        .unwrap();
        assert_eq!(bytes.len(), 160);
        // 7 × 240 samples = 10.5 frames of speech, then μ-law silence (0xFF).
        if i >= 11 {
            assert!(bytes.iter().all(|&b| b == 0xFF), "frame {i}");
        } else if i < 10 {
            assert!(bytes.iter().all(|&b| b != 0xFF), "frame {i}");
        }
    }
}

#[test]
fn twilio_accepts_a_whole_utterance_and_refuses_only_past_the_limit() {
    let cfg = BridgeConfig {
        max_message_bytes: 200_000,
        ..twilio_cfg()
    };
    let mut h = Harness::connected(cfg);
    let sid = h.texts()[1]["streamSid"].as_str().unwrap().to_string();
    h.actions();
    // 7 s of μ-law in one message (~75 KB of base64: over the old 64 KiB limit).
    let seven_s = super::super::protocol::ulaw_b64_encode(&vec![500i16; 56_000]);
    h.bot(&format!(
        r#"{{"event":"media","streamSid":"{sid}","media":{{"payload":"{seven_s}"}}}}"#
    ));
    h.bot(&format!(
        r#"{{"event":"mark","streamSid":"{sid}","mark":{{"name":"end"}}}}"#
    ));
    let acts = h.actions();
    let FlowAction::PlayAudio { samples } = &acts[0] else {
        panic!("{acts:?}")
    };
    assert_eq!(samples.len(), 56_000);
    assert!(matches!(acts[1], FlowAction::QueueMark { .. }));
    assert!(h.texts().is_empty(), "no error for an accepted message");
    // 20 s does not fit in 200 000 bytes: refused with an error, never played.
    let twenty_s = super::super::protocol::ulaw_b64_encode(&vec![500i16; 160_000]);
    h.bot(&format!(
        r#"{{"event":"media","streamSid":"{sid}","media":{{"payload":"{twenty_s}"}}}}"#
    ));
    assert!(h.actions().is_empty());
    let m = h.texts();
    assert_eq!(m[0]["event"], "error");
    assert_eq!(m[0]["error"]["code"], "too_large");
    assert!(m[0]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("200000-byte limit"));
    assert_eq!(m[0]["streamSid"], sid.as_str());
}

#[test]
fn twilio_refuses_other_streams_and_unknown_events_out_loud() {
    let mut h = Harness::connected(twilio_cfg());
    let sid = h.texts()[1]["streamSid"].as_str().unwrap().to_string();
    h.actions();
    for (text, code) in [
        (
            r#"{"event":"clear","streamSid":"MZ00000000000000000000000000000000"}"#.to_string(),
            "wrong_stream",
        ),
        (r#"{"event":"clear"}"#.to_string(), "bad_fields"),
        (
            format!(r#"{{"event":"hangup","streamSid":"{sid}"}}"#),
            "unknown_type",
        ),
        ("not json".to_string(), "bad_json"),
    ] {
        h.bot(&text);
        assert!(h.actions().is_empty(), "{text}");
        let m = h.texts();
        assert_eq!(m.len(), 1, "{text}");
        assert_eq!(m[0]["event"], "error");
        assert_eq!(m[0]["error"]["code"], code, "{text}");
    }
    h.core.on_binary(1, &[0; 160]);
    assert_eq!(h.texts()[0]["error"]["code"], "bad_frame");
}

#[test]
fn twilio_close_frame_from_the_bot_ends_the_call() {
    let mut h = Harness::connected(twilio_cfg());
    h.texts();
    h.actions();
    h.core.on_close_frame(1, Some(1000), "bye", ms(h.t0, 500));
    assert_eq!(
        h.actions(),
        vec![FlowAction::Close {
            cleared_session: false
        }]
    );
    // Nothing more goes to a socket the bot closed; the shell lets it go.
    assert!(h.texts().is_empty());
    assert_eq!(h.core.poll_request(), Some(IoRequest::Finish));
    assert_eq!(h.core.poll_timeout(), None);
}

#[test]
fn oversized_message_is_answered_then_the_socket_closes_with_1009() {
    let mut h = Harness::connected(twilio_cfg());
    h.texts();
    h.actions();
    h.core.on_oversized(1, 99_000_000, ms(h.t0, 500));
    let out = outgoing(&mut h);
    let Outgoing::Text(t) = &out[0] else {
        panic!("{out:?}")
    };
    let v: Value = serde_json::from_str(t).unwrap();
    assert_eq!(v["error"]["code"], "too_large");
    assert!(matches!(out[1], Outgoing::Close { code: 1009, .. }));
    // The drop policy (prompt, no prompt configured) closes the conversation.
    assert_eq!(
        h.actions(),
        vec![FlowAction::Close {
            cleared_session: false
        }]
    );
}

#[test]
fn twilio_custom_parameters_and_account_sid_come_from_the_config() {
    let mut cfg = twilio_cfg();
    cfg.twilio.account_sid = "AC0123456789abcdef0123456789abcdef".into();
    cfg.twilio.parameters.insert("tenant".into(), "acme".into());
    cfg.twilio.parameter_headers = vec!["X-Customer-Id".into(), "X-Absent".into()];
    let mut info = info();
    info.headers.insert("x-customer-id".into(), "c-42".into());
    let t0 = Instant::now();
    let mut core = BridgeCore::new(cfg, info, t0);
    core.on_connected(1, t0);
    let texts: Vec<Value> = std::iter::from_fn(|| core.poll_outgoing())
        .filter_map(|o| match o {
            Outgoing::Text(t) => serde_json::from_str(&t).ok(),
            _ => None,
        })
        .collect();
    let start = &texts[1]["start"];
    assert_eq!(start["accountSid"], "AC0123456789abcdef0123456789abcdef");
    assert_eq!(
        start["customParameters"],
        serde_json::json!({
            "from": "+3212345678", "to": "bot", "sipCallId": "call-1",
            "tenant": "acme", "X-Customer-Id": "c-42"
        })
    );
}

#[test]
fn twilio_reconnect_is_a_new_stream_numbered_from_one() {
    let cfg = BridgeConfig {
        on_drop: FailurePolicy::Reconnect,
        ..twilio_cfg()
    };
    let mut h = Harness::connected(cfg);
    let first = h.texts();
    h.actions();
    h.core.caller_audio(&[0; 160]);
    h.texts();
    h.core.on_closed(1, "reset", ms(h.t0, 100));
    h.core.handle_timeout(ms(h.t0, 300));
    assert_eq!(
        h.core.poll_request(),
        Some(IoRequest::Connect { generation: 3 })
    );
    h.core.on_connected(3, ms(h.t0, 350));
    let second = h.texts();
    assert_eq!(second[0]["event"], "connected");
    assert_eq!(second[1]["sequenceNumber"], "1");
    assert_ne!(second[1]["streamSid"], first[1]["streamSid"]);
    assert_eq!(second[1]["start"]["callSid"], first[1]["start"]["callSid"]);
    h.core.caller_audio(&[0; 160]);
    let m = h.texts();
    assert_eq!(m[0]["media"]["chunk"], "1");
    assert_eq!(m[0]["sequenceNumber"], "2");
}

#[test]
fn native_caller_audio_is_continuous_and_large_messages_are_refused_clearly() {
    let cfg = BridgeConfig {
        max_message_bytes: 100_000,
        ..Default::default()
    };
    let mut h = Harness::connected(cfg);
    h.texts();
    h.bot(r#"{"type":"answer"}"#);
    h.actions();
    h.texts();
    // No RTP at all for one second: 50 - 5 (fill lag) frames of silence.
    while let Some(t) = h.core.poll_timeout() {
        if t > ms(h.t0, 1000) {
            break;
        }
        h.core.handle_timeout(t);
    }
    let bins: Vec<Vec<u8>> = outgoing(&mut h)
        .into_iter()
        .filter_map(|o| match o {
            Outgoing::Binary(b) => Some(b),
            _ => None,
        })
        .collect();
    assert_eq!(bins.len(), 45);
    assert!(bins
        .iter()
        .all(|b| b.len() == 320 && b.iter().all(|&x| x == 0)));
    // 3 s of PCM in one binary message is fine (over the old text limit too).
    h.core.on_binary(1, &vec![0u8; 96_000]);
    assert!(
        matches!(&h.actions()[0], FlowAction::PlayAudio { samples } if samples.len() == 48_000)
    );
    // Over the limit: an error naming sizes, no audio.
    h.core.on_binary(1, &vec![0u8; 100_002]);
    assert!(h.actions().is_empty());
    let m = h.texts();
    assert_eq!(m[0]["type"], "error");
    assert_eq!(m[0]["code"], "too_large");
    let big = format!(
        r#"{{"type":"say","id":"s","text":"{}"}}"#,
        "a".repeat(100_000)
    );
    h.bot(&big);
    assert!(h.actions().is_empty());
    assert_eq!(h.types(), vec!["error"]);
}

#[test]
fn dispatch_goes_to_the_executor_then_comes_back_as_cl_dispatch_event() {
    let mut h = Harness::connected(BridgeConfig::default());
    h.bot(r#"{"type":"answer"}"#);
    h.actions();
    h.texts();
    h.bot(r#"{"type":"dispatch","id":"d1","payload":{"language":"nl","n":2}}"#);
    let acts = h.actions();
    let [FlowAction::Request {
        id,
        request: StepRequest::Dispatch { payload },
        ..
    }] = acts.as_slice()
    else {
        panic!("{acts:?}")
    };
    assert_eq!(payload["language"], "nl");
    // Only the ack until the executor answers.
    assert_eq!(h.types(), vec!["ack"]);
    // An answer to some other request is not this dispatch's.
    h.core.handle_event(
        FlowEvent::RequestDone {
            id: id + 100,
            result: Ok(serde_json::json!({})),
        },
        h.t0,
    );
    assert!(h.texts().is_empty());
    h.core.handle_event(
        FlowEvent::RequestDone {
            id: *id,
            result: Ok(serde_json::json!({"websocket": true, "webhook": "queued"})),
        },
        h.t0,
    );
    let m = h.texts();
    assert_eq!(m[0]["type"], "CL_DISPATCH_EVENT");
    assert_eq!(m[0]["payload"]["n"], 2);
    assert_eq!(m[0]["id"], "d1");
    assert_eq!(m[0]["webhook"], "queued");
    assert_eq!(m[0]["call_id"], "call-1");
    assert_eq!(m[1]["type"], "result");
    assert_eq!(
        (&m[1]["command"], &m[1]["ok"]),
        (&"dispatch".into(), &true.into())
    );
    // A failed dispatch: no event, a failed result with the executor's words.
    h.bot(r#"{"type":"dispatch","id":"d2","payload":{}}"#);
    let acts = h.actions();
    let [FlowAction::Request { id, .. }] = acts.as_slice() else {
        panic!("{acts:?}")
    };
    h.texts();
    h.core.handle_event(
        FlowEvent::RequestDone {
            id: *id,
            result: Err(crate::flow::StepFailure {
                code: "not_configured".into(),
                message: "no executor".into(),
            }),
        },
        h.t0,
    );
    let m = h.texts();
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0]["ok"], false);
    assert!(m[0]["reason"].as_str().unwrap().contains("not_configured"));
    // An oversized payload never reaches the executor.
    let big = "x".repeat(MAX_DISPATCH_BYTES);
    h.bot(&format!(
        r#"{{"type":"dispatch","id":"d3","payload":{{"b":"{big}"}}}}"#
    ));
    assert!(h.actions().is_empty());
    let m = h.texts();
    assert_eq!(m[1]["ok"], false);
}
