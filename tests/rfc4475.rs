//! The 50 RFC 4475 torture messages, byte-exact (tests/data/rfc4475), through the raw-bytes
//! guard and the SIP parser voxgate uses. No sockets: the messages name foreign hosts, so they
//! are checked where they would enter the stack. Nothing may panic; every valid message must
//! reach the stack (or get the 501 an unknown method deserves); invalid ones must never be
//! passed on silently as something else.

use std::path::PathBuf;
use voxgate::sip::guard::{inspect_datagram, Verdict};

struct Case {
    name: String,
    file: String,
    valid: bool,
    expected: String,
}

fn manifest() -> Vec<Case> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/rfc4475");
    let text = std::fs::read_to_string(dir.join("torture.tsv")).expect("manifest");
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let cols: Vec<&str> = l.split('\t').collect();
            Case {
                name: cols[0].to_string(),
                file: dir.join(cols[1]).display().to_string(),
                valid: cols[4].starts_with("valid"),
                expected: cols[5].to_string(),
            }
        })
        .collect()
}

#[test]
fn all_fifty_messages_are_present_byte_exact() {
    let cases = manifest();
    assert_eq!(cases.len(), 50);
    for c in &cases {
        let bytes = std::fs::read(&c.file).unwrap();
        assert!(!bytes.is_empty(), "{}", c.name);
    }
}

/// The status the manifest asks for, when it asks for exactly one refusal.
fn expected_refusal(c: &Case) -> Option<Vec<u16>> {
    let e = c.expected.as_str();
    let mut codes = Vec::new();
    for code in [400u16, 406, 415, 416, 420, 501, 505] {
        if e.contains(&format!("respond {code}"))
            || e.contains(&format!("-> {code}"))
            || e.contains(&format!("answers {code}"))
            || e.contains(&format!("(or {code}"))
            || e.contains(&format!("({code})"))
            || e.contains(&format!("; {code}"))
        {
            codes.push(code);
        }
    }
    (!codes.is_empty()).then_some(codes)
}

#[test]
fn each_message_gets_what_rfc_4475_asks_for() {
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for c in manifest() {
        let bytes = std::fs::read(&c.file).unwrap();
        let verdict = inspect_datagram(&bytes);
        let got = describe(&verdict);
        report.push(format!("{:10} {got}", c.name));
        let liberal = ["liberal", "both acceptable", "or ignore", "may answer"]
            .iter()
            .any(|w| c.expected.contains(w));
        let ok = match (&verdict, expected_refusal(&c)) {
            // Stray responses are never answered.
            (_, _) if bytes.starts_with(b"SIP/2.0") => !matches!(verdict, Verdict::Reply { .. }),
            (Verdict::Reply { response, .. }, Some(codes)) => {
                let line = String::from_utf8_lossy(response);
                codes
                    .iter()
                    .any(|code| line.starts_with(&format!("SIP/2.0 {code}")))
            }
            // Where the RFC allows liberal handling, passing the message on is fine.
            (Verdict::Pass(_), Some(_)) => liberal,
            (Verdict::Drop { .. }, Some(_)) => {
                c.expected.contains("discard") || c.expected.contains("drop")
            }
            // Valid messages with no refusal expected must reach the stack.
            (Verdict::Pass(_), None) => true,
            (_, None) => !c.valid,
        };
        if !ok {
            failures.push(format!("{}: got {got}; expected: {}", c.name, c.expected));
        }
    }
    eprintln!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn invalid_messages_never_panic() {
    for c in manifest().iter().filter(|c| !c.valid) {
        let bytes = std::fs::read(&c.file).unwrap();
        let verdict = std::panic::catch_unwind(|| describe(&inspect_datagram(&bytes)));
        assert!(verdict.is_ok(), "{} made the guard panic", c.name);
    }
}

#[test]
fn truncations_and_byte_flips_never_panic() {
    for c in manifest() {
        let bytes = std::fs::read(&c.file).unwrap();
        for cut in (0..bytes.len()).step_by(7) {
            let _ = inspect_datagram(&bytes[..cut]);
        }
        let mut flipped = bytes.clone();
        for i in (0..flipped.len()).step_by(13) {
            flipped[i] ^= 0x5a;
            let _ = inspect_datagram(&flipped);
        }
    }
}

fn describe(v: &Verdict<'_>) -> String {
    match v {
        Verdict::Pass(_) => "pass".into(),
        Verdict::Reply { response, why } => format!(
            "reply {} ({why})",
            String::from_utf8_lossy(response)
                .lines()
                .next()
                .unwrap_or("")
        ),
        Verdict::Drop { why } => format!("drop ({why})"),
    }
}
