//! `listen`: speech results, the keypad fallback (first input wins), timeouts, barge-in and
//! the recogniser failing, against a fake clock.

use std::time::Duration;

use serde_json::json;

use super::tests::{close, play, say, Harness};
use crate::flow::{FlowAction as A, FlowEvent as E, ListenMode, ListenSpec, SpeechOutcome};

fn flow(listen_extra: &str) -> String {
    format!(
        "  main:\n    - message: {{file: menu.wav, wait: false, barge_in: true}}\n    - listen:\n        \
         grammar: [sales, support, billing]\n        timeout_ms: 5000\n        save_as: heard\n        \
         branches: {{sales: d1, support team: d2, '1': d1, '2': d2}}\n        default: other\n        \
         on_no_match: nomatch\n        on_timeout: silent\n        variable: key\n{listen_extra}  \
         d1:\n    - message: {{text: 'sales {{heard.text}} {{heard.input}} {{heard.confidence}}'}}\n  \
         d2:\n    - message: {{text: support}}\n  other:\n    - message: {{text: 'other {{heard.text}}'}}\n  \
         nomatch:\n    - message: {{text: 'nomatch {{heard.text}}'}}\n  silent:\n    - message: {{text: \
         'silent [{{key}}] {{heard.input}}{{heard.error}}'}}\n  err:\n    - message: {{text: '{{error.message}}'}}\n"
    )
}

fn speech(h: &mut Harness, id: u64, outcome: SpeechOutcome) -> Vec<A> {
    h.ev(E::Speech { id, outcome })
}

fn heard(text: &str, confidence: f32) -> SpeechOutcome {
    SpeechOutcome::Heard {
        text: text.into(),
        confidence,
    }
}

#[test]
fn a_spoken_phrase_picks_its_branch() {
    let mut h = Harness::flow("", &flow(""));
    let out = h.start();
    assert_eq!(
        out,
        vec![
            play(1, "menu.wav"),
            A::Listen {
                id: 2,
                spec: ListenSpec {
                    mode: ListenMode::Grammar(vec![
                        "sales".into(),
                        "support".into(),
                        "billing".into()
                    ]),
                    timeout: Duration::from_secs(5),
                    max_speech: Duration::from_secs(10),
                    barge_in: false,
                }
            }
        ]
    );
    // The answer waits for the menu prompt (nothing stops it: no barge-in for speech here).
    let out = speech(&mut h, 2, heard("Sales", 0.8));
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.finished(1), vec![say(3, "sales Sales speech 0.8")]);
    assert_eq!(
        h.var("heard"),
        json!({"text": "Sales", "confidence": 0.8, "input": "speech"})
    );
    // Phrases match inside longer text, the longest phrase first.
    let mut h = Harness::flow("", &flow(""));
    h.start();
    h.finished(1);
    let out = speech(&mut h, 2, heard("I want the support team please", 0.7));
    assert_eq!(out, vec![say(3, "support")]);
}

#[test]
fn unmatched_speech_goes_to_default_and_no_match_to_on_no_match() {
    let mut h = Harness::flow("", &flow(""));
    h.start();
    h.finished(1);
    assert_eq!(
        speech(&mut h, 2, heard("billing", 0.9)),
        vec![say(3, "other billing")]
    );
    let mut h = Harness::flow("", &flow(""));
    h.start();
    h.finished(1);
    assert_eq!(
        speech(
            &mut h,
            2,
            SpeechOutcome::NoMatch {
                text: "blah".into(),
                confidence: 0.2
            }
        ),
        vec![say(3, "nomatch blah")]
    );
}

#[test]
fn a_key_wins_over_speech() {
    let mut h = Harness::flow("", &flow(""));
    h.start();
    let out = h.dtmf("2");
    assert_eq!(
        out,
        vec![
            A::StopPlayback,
            A::StopListening { id: 2 },
            say(3, "support")
        ]
    );
    assert_eq!(h.var("key"), json!("2"));
    assert_eq!(
        h.var("heard"),
        json!({"text": "2", "confidence": 1.0, "input": "dtmf"})
    );
    assert!(
        speech(&mut h, 2, heard("sales", 0.9)).is_empty(),
        "the late recognition is dropped"
    );
    // Even after the caller started to speak, a key still wins.
    let mut h = Harness::flow("", &flow(""));
    h.start();
    h.ev(E::SpeechStarted { id: 2 });
    let out = h.dtmf("1");
    assert!(out.contains(&A::StopListening { id: 2 }));
    assert_eq!(out.last(), Some(&say(3, "sales 1 dtmf 1")));
}

#[test]
fn keys_typed_ahead_win_before_listening_starts() {
    let text = flow("").replace(
        "  main:\n    - message: {file: menu.wav, wait: false, barge_in: true}\n",
        "  main:\n    - delay: 1000\n",
    );
    let mut h = Harness::flow("", &text);
    assert!(h.start().is_empty());
    assert!(h.dtmf("1").is_empty(), "typed ahead during the delay");
    let out = h.advance(1000);
    assert_eq!(out, vec![say(2, "sales 1 dtmf 1")], "no Listen at all");
}

#[test]
fn several_digits_collect_like_collect() {
    let text = flow("        max_digits: 4\n        terminator: '#'\n");
    let mut h = Harness::flow("", &text);
    h.start();
    assert_eq!(
        h.dtmf("1"),
        vec![A::StopPlayback, A::StopListening { id: 2 }]
    );
    assert!(h.dtmf("2").is_empty());
    assert_eq!(h.dtmf("#"), vec![say(3, "other 12")]);
    assert_eq!(h.var("key"), json!("12"));
    // The inter-digit timeout ends the input as collect does.
    let mut h = Harness::flow("", &text);
    h.start();
    h.dtmf("2");
    assert!(h.advance(2_999).is_empty());
    assert_eq!(h.advance(1), vec![say(3, "support")]);
}

#[test]
fn silence_ends_at_timeout_ms() {
    let mut h = Harness::flow("", &flow(""));
    h.start();
    h.finished(1);
    assert_eq!(
        speech(&mut h, 2, SpeechOutcome::Timeout),
        vec![say(3, "silent [] none")]
    );
    // A recogniser that never answers: the machine's own guard (timeout_ms + 1 s).
    let mut h = Harness::flow("inactivity_s: 0", &flow(""));
    h.start();
    h.finished(1);
    assert!(h.advance(5_999).is_empty());
    assert_eq!(
        h.advance(1),
        vec![A::StopListening { id: 2 }, say(3, "silent [] none")]
    );
}

#[test]
fn speech_that_never_ends_is_a_step_error() {
    let mut h = Harness::flow(
        "inactivity_s: 0",
        &flow("        max_speech_ms: 4000\n        on_error: err\n"),
    );
    h.start();
    h.finished(1);
    h.advance(1_000);
    h.ev(E::SpeechStarted { id: 2 });
    assert!(h.advance(8_999).is_empty(), "max_speech + 5 s of grace");
    assert_eq!(
        h.advance(1),
        vec![
            A::StopListening { id: 2 },
            say(
                3,
                "listen: the recogniser gave no result for the caller's speech"
            )
        ]
    );
}

#[test]
fn speech_barges_in_and_stops_the_hold() {
    let text = flow("        barge_in: true\n        hold: beep.wav\n").replace(
        "menu.wav, wait: false, barge_in: true",
        "menu.wav, wait: false",
    );
    let mut h = Harness::flow("", &text);
    let out = h.start();
    assert_eq!(
        out.len(),
        2,
        "the hold waits behind the menu prompt: {out:?}"
    );
    assert!(matches!(&out[1], A::Listen { spec, .. } if spec.barge_in));
    // Speech stops the menu prompt (a normal one: only speech with barge_in stops it) and
    // drops the waiting hold.
    assert_eq!(h.ev(E::SpeechStarted { id: 2 }), vec![A::StopPlayback]);
    assert_eq!(
        speech(&mut h, 2, heard("support team", 0.95)),
        vec![say(4, "support")]
    );
}

fn failed(code: &str, message: &str) -> SpeechOutcome {
    SpeechOutcome::Error(crate::flow::StepFailure {
        code: code.into(),
        message: message.into(),
    })
}

#[test]
fn a_recogniser_error_falls_back_to_the_keypad_or_the_error_path() {
    let mut h = Harness::flow("inactivity_s: 0", &flow("        on_error: err\n"));
    h.start();
    h.advance(1_000);
    assert!(speech(&mut h, 2, failed("busy", "all recognisers busy")).is_empty());
    assert_eq!(h.dtmf("1").last(), Some(&say(3, "sales 1 dtmf 1")));
    // No key: the keypad wait ends at timeout_ms from the start.
    let mut h = Harness::flow("inactivity_s: 0", &flow("        on_error: err\n"));
    h.start();
    h.finished(1);
    h.advance(1_000);
    speech(&mut h, 2, failed("busy", "busy"));
    assert!(h.advance(3_999).is_empty());
    // `heard.error` tells the flow why it only waited for keys.
    assert_eq!(h.advance(1), vec![say(3, "silent [] nonebusy")]);

    // Without keypad input, the error path.
    let mut h = Harness::flow(
        "",
        "  main:\n    - listen: {free: true, on_error: err}\n  err:\n    - message: {text: \
         '{error.code} {error.detail_code}: {error.message}'}",
    );
    h.start();
    assert_eq!(
        speech(&mut h, 1, failed("unavailable", "no model")),
        vec![say(
            2,
            "speech unavailable: listen: speech recognition failed: no model"
        )]
    );
}

#[test]
fn inactivity_counts_during_listen_once_the_prompt_has_played() {
    let text = flow("").replace("timeout_ms: 5000", "timeout_ms: 600000");
    let mut h = Harness::flow("inactivity_s: 3", &text);
    h.start();
    assert!(
        h.advance(10_000).is_empty(),
        "the menu prompt is still playing"
    );
    h.finished(1);
    assert!(h.advance(2_999).is_empty());
    let out = h.advance(1);
    assert_eq!(out, vec![close()]);
}
