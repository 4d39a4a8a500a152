//! `message/sipfrag` bodies (RFC 3420) as carried in REFER NOTIFYs (RFC 3515 §2.4.5).
//!
//! Only the status line matters to a transferor: it tells how the transfer target's call is
//! going. Headers after it are ignored.

use thiserror::Error;

/// Why a sipfrag body could not be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SipFragError {
    #[error("sipfrag body is empty")]
    Empty,
    #[error("sipfrag body is not UTF-8 text")]
    NotText,
    #[error("sipfrag does not start with a SIP status line (`SIP/2.0 <code> <reason>`): `{line}`")]
    NotStatusLine { line: String },
    #[error("sipfrag status code `{code}` is not a number between 100 and 699")]
    BadStatus { code: String },
}

/// The status line of a sipfrag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SipFrag {
    pub status: u16,
    /// Reason phrase as sent; may be empty.
    pub reason: String,
}

impl SipFrag {
    /// Parses the first line of a sipfrag body; leading whitespace and trailing headers are fine.
    pub fn parse(body: &str) -> Result<SipFrag, SipFragError> {
        let text = body.trim_start();
        let line = text.lines().next().unwrap_or_default().trim_end();
        if line.is_empty() {
            return Err(SipFragError::Empty);
        }
        let not_status = || SipFragError::NotStatusLine {
            line: line.chars().take(80).collect(),
        };
        let (version, rest) = line
            .split_once(char::is_whitespace)
            .ok_or_else(not_status)?;
        if !version.eq_ignore_ascii_case("SIP/2.0") {
            return Err(not_status());
        }
        let rest = rest.trim_start();
        let (code, reason) = match rest.split_once(char::is_whitespace) {
            Some((c, r)) => (c, r.trim()),
            None => (rest, ""),
        };
        let status = code
            .parse::<u16>()
            .ok()
            .filter(|s| (100..=699).contains(s) && code.len() == 3)
            .ok_or_else(|| SipFragError::BadStatus {
                code: code.to_string(),
            })?;
        Ok(SipFrag {
            status,
            reason: reason.to_string(),
        })
    }

    /// Parses raw body bytes (as received off the wire).
    pub fn parse_bytes(body: &[u8]) -> Result<SipFrag, SipFragError> {
        let text = std::str::from_utf8(body).map_err(|_| SipFragError::NotText)?;
        SipFrag::parse(text)
    }

    /// The class of this status.
    pub fn class(&self) -> FragClass {
        classify(self.status)
    }
}

/// What a REFER progress status means to the transferor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FragClass {
    /// 100: the target's INVITE is under way.
    Trying,
    /// 180/183: the target is alerting (183 usually carries ringback).
    Ringing,
    /// Any other 1xx.
    Provisional,
    /// 2xx: the transfer succeeded; the transferor may hang up.
    Success,
    /// 3xx-6xx, or anything out of range: the transfer failed.
    Failure,
}

impl FragClass {
    /// Final classes end the implicit REFER subscription.
    pub fn is_final(self) -> bool {
        matches!(self, FragClass::Success | FragClass::Failure)
    }
}

/// Classifies a SIP status code. Out-of-range codes count as failure, the safe reading.
pub fn classify(status: u16) -> FragClass {
    match status {
        100 => FragClass::Trying,
        180 | 183 => FragClass::Ringing,
        101..=199 => FragClass::Provisional,
        200..=299 => FragClass::Success,
        _ => FragClass::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let cases: &[(&str, u16, &str)] = &[
            ("SIP/2.0 200 OK", 200, "OK"),
            ("SIP/2.0 200 OK\r\n", 200, "OK"),
            ("SIP/2.0 100 Trying\r\n\r\n", 100, "Trying"),
            ("\r\n  SIP/2.0 180 Ringing", 180, "Ringing"),
            (
                "sip/2.0 486 Busy Here\r\nContent-Length: 0\r\n\r\n",
                486,
                "Busy Here",
            ),
            ("SIP/2.0 603 Decline\nFrom: <sip:a@b>\n", 603, "Decline"),
            (
                "SIP/2.0  503   Service Unavailable  ",
                503,
                "Service Unavailable",
            ),
            ("SIP/2.0 202", 202, ""),
        ];
        for (body, status, reason) in cases {
            let f = SipFrag::parse(body).unwrap_or_else(|e| panic!("{body:?}: {e}"));
            assert_eq!(f.status, *status, "{body:?}");
            assert_eq!(f.reason, *reason, "{body:?}");
        }
    }

    #[test]
    fn rejects_garbage() {
        let cases: &[(&str, SipFragError)] = &[
            ("", SipFragError::Empty),
            ("  \r\n ", SipFragError::Empty),
            (
                "hello",
                SipFragError::NotStatusLine {
                    line: "hello".into(),
                },
            ),
            (
                "INVITE sip:bob@example.com SIP/2.0",
                SipFragError::NotStatusLine {
                    line: "INVITE sip:bob@example.com SIP/2.0".into(),
                },
            ),
            (
                "SIP/3.0 200 OK",
                SipFragError::NotStatusLine {
                    line: "SIP/3.0 200 OK".into(),
                },
            ),
            (
                "SIP/2.0 abc OK",
                SipFragError::BadStatus { code: "abc".into() },
            ),
            (
                "SIP/2.0 99 Weird",
                SipFragError::BadStatus { code: "99".into() },
            ),
            (
                "SIP/2.0 700 Nope",
                SipFragError::BadStatus { code: "700".into() },
            ),
            (
                "SIP/2.0 0200 OK",
                SipFragError::BadStatus {
                    code: "0200".into(),
                },
            ),
        ];
        for (body, want) in cases {
            assert_eq!(SipFrag::parse(body).unwrap_err(), *want, "{body:?}");
        }
    }

    #[test]
    fn bytes_must_be_text() {
        assert_eq!(
            SipFrag::parse_bytes(&[0xff, 0xfe, 0x00]).unwrap_err(),
            SipFragError::NotText
        );
        assert_eq!(SipFrag::parse_bytes(b"SIP/2.0 200 OK").unwrap().status, 200);
    }

    #[test]
    fn classifies() {
        let cases = [
            (100, FragClass::Trying),
            (180, FragClass::Ringing),
            (183, FragClass::Ringing),
            (181, FragClass::Provisional),
            (199, FragClass::Provisional),
            (200, FragClass::Success),
            (202, FragClass::Success),
            (302, FragClass::Failure),
            (404, FragClass::Failure),
            (487, FragClass::Failure),
            (603, FragClass::Failure),
            (0, FragClass::Failure),
            (999, FragClass::Failure),
        ];
        for (status, want) in cases {
            assert_eq!(classify(status), want, "{status}");
        }
        assert!(FragClass::Success.is_final());
        assert!(FragClass::Failure.is_final());
        assert!(!FragClass::Ringing.is_final());
        assert_eq!(
            SipFrag::parse("SIP/2.0 180 Ringing").unwrap().class(),
            FragClass::Ringing
        );
    }
}
