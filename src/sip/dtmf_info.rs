//! DTMF carried in SIP INFO bodies, for trunks that do not send RFC 4733 events.
//!
//! Two de-facto formats exist: `application/dtmf-relay` (Cisco style, `Signal=5` /
//! `Duration=160` lines, duration in milliseconds) and `application/dtmf` (the bare signal).

use thiserror::Error;
use tracing::debug;

/// Why an INFO body did not yield a digit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DtmfInfoError {
    #[error(
        "content type `{0}` is not a DTMF INFO type (application/dtmf-relay or application/dtmf)"
    )]
    UnsupportedContentType(String),
    #[error("DTMF INFO body is not UTF-8 text")]
    NotText,
    #[error("DTMF INFO body is empty")]
    Empty,
    #[error("DTMF INFO body has no Signal= line")]
    MissingSignal,
    #[error("DTMF signal `{0}` is not a digit 0-9, *, #, A-D or event code 0-15")]
    InvalidSignal(String),
}

/// One key press from an INFO request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InfoDtmf {
    /// One of `0-9 * # A B C D`.
    pub digit: char,
    /// Key press length when the sender told us (dtmf-relay `Duration=`, milliseconds).
    pub duration_ms: Option<u32>,
}

#[derive(Clone, Copy)]
enum Kind {
    Relay,
    Plain,
}

/// Parses a DTMF INFO body. The content type is matched case-insensitively, parameters ignored.
pub fn parse_info_dtmf(content_type: &str, body: &[u8]) -> Result<InfoDtmf, DtmfInfoError> {
    let kind = content_kind(content_type)
        .ok_or_else(|| DtmfInfoError::UnsupportedContentType(content_type.trim().to_string()))?;
    let text = std::str::from_utf8(body).map_err(|_| DtmfInfoError::NotText)?;
    if text.trim().is_empty() {
        return Err(DtmfInfoError::Empty);
    }
    // Some senders put `Signal=` lines in application/dtmf too; read those as relay bodies.
    let looks_relay = text.contains('=');
    match (kind, looks_relay) {
        (Kind::Relay, _) | (Kind::Plain, true) => parse_relay(text),
        (Kind::Plain, false) => Ok(InfoDtmf {
            digit: parse_signal(text.trim())?,
            duration_ms: None,
        }),
    }
}

fn content_kind(content_type: &str) -> Option<Kind> {
    let mime = content_type.split(';').next().unwrap_or_default().trim();
    if mime.eq_ignore_ascii_case("application/dtmf-relay") {
        Some(Kind::Relay)
    } else if mime.eq_ignore_ascii_case("application/dtmf") {
        Some(Kind::Plain)
    } else {
        None
    }
}

/// `key=value` lines; unknown keys ignored, a bad Duration is dropped rather than losing the digit.
fn parse_relay(text: &str) -> Result<InfoDtmf, DtmfInfoError> {
    let mut digit = None;
    let mut duration_ms = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        if key.eq_ignore_ascii_case("signal") {
            digit = Some(parse_signal(value)?);
        } else if key.eq_ignore_ascii_case("duration") {
            match value.parse::<u32>() {
                Ok(ms) => duration_ms = Some(ms),
                Err(_) => debug!(value, "ignoring unparseable DTMF INFO duration"),
            }
        }
    }
    let digit = digit.ok_or(DtmfInfoError::MissingSignal)?;
    Ok(InfoDtmf { digit, duration_ms })
}

/// A key name (`5`, `*`, `a`) or an RFC 4733 event code (`10` = `*`, `11` = `#`, `12-15` = A-D).
fn parse_signal(value: &str) -> Result<char, DtmfInfoError> {
    const EVENTS: [char; 16] = [
        '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
    ];
    let invalid = || DtmfInfoError::InvalidSignal(value.chars().take(16).collect());
    let mut chars = value.chars();
    if let (Some(c), None) = (chars.next(), chars.clone().next()) {
        let c = c.to_ascii_uppercase();
        return if EVENTS.contains(&c) {
            Ok(c)
        } else {
            Err(invalid())
        };
    }
    value
        .parse::<usize>()
        .ok()
        .and_then(|code| EVENTS.get(code).copied())
        .ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "application/dtmf-relay";

    #[test]
    fn relay_bodies() {
        let cases: &[(&str, &str, char, Option<u32>)] = &[
            (RELAY, "Signal=5\r\nDuration=160", '5', Some(160)),
            (RELAY, "Signal=5\r\nDuration=160\r\n", '5', Some(160)),
            (RELAY, "signal = 9\nDURATION = 250\n", '9', Some(250)),
            (RELAY, "Signal=*\r\nDuration=100", '*', Some(100)),
            (RELAY, "Signal=#", '#', None),
            (RELAY, "Signal=10\r\nDuration=100", '*', Some(100)),
            (RELAY, "Signal=11", '#', None),
            (RELAY, "Signal=a", 'A', None),
            (RELAY, "Signal=D", 'D', None),
            (RELAY, "Signal=15", 'D', None),
            (RELAY, "Signal=0", '0', None),
            (RELAY, "Signal=1\r\nDuration=abc", '1', None),
            (RELAY, "Foo=bar\r\nSignal=3\r\n", '3', None),
            (
                "Application/DTMF-Relay; charset=utf-8",
                "Signal=7",
                '7',
                None,
            ),
            ("application/dtmf", "5", '5', None),
            ("application/dtmf", "11", '#', None),
            ("application/dtmf", " 10\r\n", '*', None),
            ("APPLICATION/DTMF ; x=y", "#", '#', None),
            ("application/dtmf", "Signal=4\r\nDuration=80", '4', Some(80)),
        ];
        for (ct, body, digit, dur) in cases {
            let d = parse_info_dtmf(ct, body.as_bytes())
                .unwrap_or_else(|e| panic!("{ct} {body:?}: {e}"));
            assert_eq!(d.digit, *digit, "{body:?}");
            assert_eq!(d.duration_ms, *dur, "{body:?}");
        }
    }

    #[test]
    fn rejections() {
        let cases: &[(&str, &[u8], DtmfInfoError)] = &[
            (
                "application/sdp",
                b"Signal=5",
                DtmfInfoError::UnsupportedContentType("application/sdp".into()),
            ),
            (
                "application/dtmf-relayx",
                b"Signal=5",
                DtmfInfoError::UnsupportedContentType("application/dtmf-relayx".into()),
            ),
            (RELAY, b"", DtmfInfoError::Empty),
            (RELAY, b" \r\n", DtmfInfoError::Empty),
            (RELAY, b"Duration=160", DtmfInfoError::MissingSignal),
            (RELAY, &[0xff, 0xfe], DtmfInfoError::NotText),
            (
                RELAY,
                b"Signal=16",
                DtmfInfoError::InvalidSignal("16".into()),
            ),
            (RELAY, b"Signal=E", DtmfInfoError::InvalidSignal("E".into())),
            (RELAY, b"Signal=", DtmfInfoError::InvalidSignal("".into())),
            (
                RELAY,
                b"Signal=55",
                DtmfInfoError::InvalidSignal("55".into()),
            ),
            (
                "application/dtmf",
                b"x",
                DtmfInfoError::InvalidSignal("x".into()),
            ),
            (
                "application/dtmf",
                b"-1",
                DtmfInfoError::InvalidSignal("-1".into()),
            ),
        ];
        for (ct, body, want) in cases {
            assert_eq!(
                parse_info_dtmf(ct, body).unwrap_err(),
                *want,
                "{ct} {body:?}"
            );
        }
    }

    #[test]
    fn error_text_names_the_problem() {
        let e = parse_info_dtmf("text/plain", b"5").unwrap_err();
        assert!(e.to_string().contains("text/plain"));
    }
}
