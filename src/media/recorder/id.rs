//! Recording ids. They become file names and URL path segments, so they are generated in a
//! fixed, filesystem-safe shape and every id that comes in from outside is checked against
//! that exact shape before it is ever joined to a path.

use std::fmt;

use chrono::{DateTime, Utc};
use rand::Rng;

const PREFIX: &str = "rec_";
/// `yyyymmddThhmmss`
const STAMP_LEN: usize = 15;
const RANDOM_HEX_LEN: usize = 16;
/// Total length: prefix + stamp + '_' + random hex.
const ID_LEN: usize = PREFIX.len() + STAMP_LEN + 1 + RANDOM_HEX_LEN;

/// A validated recording id such as `rec_20240131T235959_0123456789abcdef`.
///
/// The only ways to get one are [`RecordingId::generate`] and [`RecordingId::parse`], so a
/// value of this type is always safe to use as a file name (no separators, no dots).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordingId(String);

impl RecordingId {
    /// A fresh id: the UTC start time to the second plus 64 random bits, so ids sort roughly
    /// by time and two recordings started in the same second do not collide.
    pub fn generate(at: DateTime<Utc>) -> Self {
        let random: u64 = rand::thread_rng().gen();
        RecordingId(format!(
            "{PREFIX}{}_{random:016x}",
            at.format("%Y%m%dT%H%M%S")
        ))
    }

    /// Accepts exactly the generated shape; anything else (including `..`, `/`, `%`, upper-case
    /// hex, or extra characters) is rejected.
    pub fn parse(s: &str) -> Option<Self> {
        if s.len() != ID_LEN || !s.starts_with(PREFIX) {
            return None;
        }
        let b = &s.as_bytes()[PREFIX.len()..];
        let (stamp, rest) = b.split_at(STAMP_LEN);
        let date_ok = stamp[..8].iter().all(u8::is_ascii_digit)
            && stamp[8] == b'T'
            && stamp[9..].iter().all(u8::is_ascii_digit);
        let random_ok = rest[0] == b'_'
            && rest[1..]
                .iter()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c));
        (date_ok && random_ok).then(|| RecordingId(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The start time (to the second) encoded in the id; used when a sidecar is lost.
    pub fn timestamp(&self) -> Option<DateTime<Utc>> {
        let stamp = self.0.get(PREFIX.len()..PREFIX.len() + STAMP_LEN)?;
        chrono::NaiveDateTime::parse_from_str(stamp, "%Y%m%dT%H%M%S")
            .ok()
            .map(|t| t.and_utc())
    }
}

impl fmt::Display for RecordingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn generated_ids_parse_and_differ() {
        let at = Utc.with_ymd_and_hms(2024, 1, 31, 23, 59, 58).unwrap();
        let a = RecordingId::generate(at);
        let b = RecordingId::generate(at);
        assert_ne!(a, b);
        assert!(a.as_str().starts_with("rec_20240131T235958_"));
        assert_eq!(a.timestamp(), Some(at));
        assert_eq!(RecordingId::parse(a.as_str()), Some(a));
    }

    #[test]
    fn hostile_or_malformed_ids_are_rejected() {
        for bad in [
            "",
            "..",
            "../etc/passwd",
            "rec_20240131T235958_0123456789abcde/",
            "rec_20240131T235958_0123456789ABCDEF",
            "rec_20240131T235958_0123456789abcdef0",
            "rec_20240131T235958_0123456789abcde",
            "rec_20240131X235958_0123456789abcdef",
            "rec_2024013lT235958_0123456789abcdef",
            "rec_20240131T235958-0123456789abcdef",
            "REC_20240131T235958_0123456789abcdef",
            "rec_20240131T235958_%2e%2e456789abcd",
            "rec_20240131T235958_0123456789abcdé",
        ] {
            assert_eq!(RecordingId::parse(bad), None, "{bad:?} accepted");
        }
        assert!(RecordingId::parse("rec_20240131T235958_0123456789abcdef").is_some());
    }
}
