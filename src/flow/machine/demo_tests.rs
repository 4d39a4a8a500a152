//! The shipped demo flow (sip-config/flows/demo.yaml) against CONTRACT §3.

use std::path::Path;
use std::time::Duration;

use serde_json::json;

use super::tests::Harness;
use super::*;
use crate::flow::{FlowAction as A, FlowEvent as E};

fn demo() -> Harness {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-config/flows/demo.yaml");
    Harness::new(FlowDefinition::load(&path).unwrap_or_else(|e| panic!("{e}")))
}

/// Answered, greeting played to the end: the caller sits in the menu.
fn in_menu() -> Harness {
    let mut h = demo();
    h.start();
    h.finished(1);
    h
}

fn transfers(actions: &[A]) -> Vec<String> {
    actions
        .iter()
        .filter_map(|a| match a {
            A::Transfer { to } => Some(to.clone()),
            _ => None,
        })
        .collect()
}

fn close() -> A {
    A::Close {
        cleared_session: true,
    }
}

#[test]
fn demo_settings() {
    let h = demo();
    let def = &h.m.def;
    assert_eq!(def.inactivity(), Some(Duration::from_secs(30)));
    assert!(def.prompts_dir().ends_with("flows/../prompts"));
    assert_eq!(def.variables()["forward_number"], json!("+3225551212"));
    assert!(def.warnings().is_empty(), "{:?}", def.warnings());
}

#[test]
fn answer_plays_greeting_and_starts_recording() {
    let mut h = demo();
    let out = h.start();
    assert_eq!(
        out,
        vec![
            A::StartRecording,
            A::Play {
                id: 1,
                file: "greeting.wav".into()
            }
        ]
    );
}

#[test]
fn one_forwards_to_the_configured_number() {
    let mut h = in_menu();
    assert_eq!(transfers(&h.dtmf("1")), vec!["+3225551212"]);
}

#[test]
fn two_stops_and_three_restarts_recording() {
    let mut h = in_menu();
    assert_eq!(h.dtmf("2"), vec![A::StopRecording]);
    assert_eq!(h.dtmf("3"), vec![A::StartRecording]);
    assert_eq!(
        h.dtmf("2"),
        vec![A::StopRecording],
        "back in the menu each time"
    );
}

#[test]
fn five_digits_hash_forwards_to_plus_digits() {
    let mut h = in_menu();
    let mut out = Vec::new();
    for d in [
        "5", "4", "4", "2", "0", "7", "9", "4", "6", "0", "0", "0", "0",
    ] {
        out.extend(h.dtmf(d));
    }
    assert!(transfers(&out).is_empty(), "nothing before #");
    out.extend(h.dtmf("#"));
    assert_eq!(transfers(&out), vec!["+442079460000"]);
    assert_eq!(
        out.last(),
        Some(&A::Transfer {
            to: "+442079460000".into()
        })
    );
}

#[test]
fn forward_failure_plays_error_then_returns_to_menu() {
    let mut h = in_menu();
    h.dtmf("5");
    assert_eq!(transfers(&h.dtmf("123#")), vec!["+123"]);
    let out = h.ev(E::TransferFailed {
        reason: "invalid_number".into(),
        detail: "+123 is not a valid E.164 number".into(),
    });
    let plays: Vec<&A> = out.iter().filter(|a| matches!(a, A::Play { .. })).collect();
    assert_eq!(
        plays,
        vec![&A::Play {
            id: 2,
            file: "error.wav".into()
        }]
    );
    assert!(out.iter().any(|a| matches!(a,
        A::TrackEvent { name, properties } if name == "forward_failed"
            && properties["reason"] == json!("invalid_number"))));
    assert!(h.finished(2).is_empty());
    assert_eq!(h.dtmf("2"), vec![A::StopRecording], "back in the menu");
    assert_eq!(h.var("transfer.reason"), json!("invalid_number"));
}

#[test]
fn nine_closes_and_erases_the_session() {
    let mut h = in_menu();
    assert_eq!(h.dtmf("9"), vec![close()]);
    assert!(h.m.is_finished());
    assert!(h.m.variables().is_empty());
    assert!(h.dtmf("1").is_empty(), "nothing after close");
}

#[test]
fn thirty_idle_seconds_close() {
    let mut h = demo();
    h.start();
    // The greeting does not count: inactivity runs only while the bot waits in the menu.
    assert!(h.advance(40_000).is_empty());
    h.finished(1);
    assert!(h.advance(29_999).is_empty());
    assert_eq!(h.advance(1), vec![close()]);
    assert_eq!(
        h.m.summary().end,
        Some(FlowEnd::Closed(CloseReason::Inactivity))
    );
}

#[test]
fn idle_timer_restarts_on_each_digit() {
    let mut h = in_menu();
    h.advance(20_000);
    h.dtmf("2");
    assert!(h.advance(29_999).is_empty());
    assert_eq!(h.advance(1), vec![close()]);
}

#[test]
fn number_entry_times_out_back_to_menu() {
    let mut h = in_menu();
    h.dtmf("5");
    assert!(
        h.advance(10_000).is_empty(),
        "no input: silently back to menu"
    );
    assert_eq!(h.dtmf("2"), vec![A::StopRecording]);
}

#[test]
fn digit_during_greeting_barges_in_and_selects() {
    let mut h = demo();
    h.start();
    assert_eq!(h.dtmf("2"), vec![A::StopPlayback, A::StopRecording]);
}

#[test]
fn invalid_choice_replays_the_menu_prompt() {
    let mut h = in_menu();
    assert_eq!(
        h.dtmf("7"),
        vec![A::Play {
            id: 2,
            file: "menu.wav".into()
        }]
    );
    assert_eq!(h.var("choice"), json!("7"));
}

#[test]
fn successful_forward_ends_the_bot() {
    let mut h = in_menu();
    h.dtmf("1");
    h.ev(E::TransferCompleted {
        to: "+3225551212".into(),
        mode: "bridge".into(),
    });
    assert!(h.m.is_finished());
    assert_eq!(h.m.poll_timeout(), None);
    let summary = h.m.summary();
    assert_eq!(summary.steps_failed, 0);
    assert_eq!(summary.flow, "demo");
}
