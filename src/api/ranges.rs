//! Pure HTTP helpers for serving audio: `Range` (RFC 9110 §14) and entity-tag matching.
//! Kept apart from the handlers so the edge cases are tested without a server.

/// What to send for a `Range` header against a body of `len` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeOutcome {
    /// No usable range: send everything with 200.
    Full,
    /// Send bytes `start..=end` with 206.
    Partial { start: u64, end: u64 },
    /// 416 with `Content-Range: bytes */len`.
    Unsatisfiable,
}

/// Evaluates a `Range` header. Only single byte ranges are honoured; a multi-range or a
/// syntactically invalid header is ignored (the RFC allows this), which means a 200.
pub fn evaluate(header: Option<&str>, len: u64) -> RangeOutcome {
    let Some(spec) = header.map(str::trim) else {
        return RangeOutcome::Full;
    };
    let Some((unit, set)) = spec.split_once('=') else {
        return RangeOutcome::Full;
    };
    if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') {
        return RangeOutcome::Full;
    }
    let Some((first, last)) = set.trim().split_once('-') else {
        return RangeOutcome::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    let num = |s: &str| {
        (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .then(|| s.parse::<u64>().ok())
            .flatten()
    };
    match (first.is_empty(), num(first), num(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || len == 0 {
                RangeOutcome::Unsatisfiable
            } else {
                RangeOutcome::Partial {
                    start: len.saturating_sub(n),
                    end: len - 1,
                }
            }
        }
        // bytes=A- or bytes=A-B
        (false, Some(start), end) => {
            if !last.is_empty() && end.is_none() {
                return RangeOutcome::Full;
            }
            if end.is_some_and(|e| e < start) {
                return RangeOutcome::Full;
            }
            if start >= len {
                return RangeOutcome::Unsatisfiable;
            }
            RangeOutcome::Partial {
                start,
                end: end.map_or(len - 1, |e| e.min(len - 1)),
            }
        }
        _ => RangeOutcome::Full,
    }
}

/// `If-None-Match` semantics: weak comparison against a list, or `*`.
pub fn none_match(header: &str, etag: &str) -> bool {
    let ours = etag.trim_start_matches("W/");
    header
        .split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == ours)
}

/// `If-Range` semantics: the range is honoured only if the tag matches strongly.
pub fn if_range_matches(header: &str, etag: &str) -> bool {
    let header = header.trim();
    !etag.starts_with("W/") && !header.starts_with("W/") && header == etag
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeOutcome::*;

    #[test]
    fn single_ranges() {
        assert_eq!(evaluate(None, 100), Full);
        assert_eq!(
            evaluate(Some("bytes=0-9"), 100),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            evaluate(Some("bytes=90-"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            evaluate(Some("bytes=90-500"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            evaluate(Some("bytes=-10"), 100),
            Partial { start: 90, end: 99 }
        );
        assert_eq!(
            evaluate(Some("bytes=-500"), 100),
            Partial { start: 0, end: 99 }
        );
        assert_eq!(
            evaluate(Some("Bytes = 5-5"), 100),
            Partial { start: 5, end: 5 }
        );
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(evaluate(Some("bytes=100-"), 100), Unsatisfiable);
        assert_eq!(evaluate(Some("bytes=200-300"), 100), Unsatisfiable);
        assert_eq!(evaluate(Some("bytes=-0"), 100), Unsatisfiable);
        assert_eq!(evaluate(Some("bytes=-5"), 0), Unsatisfiable);
    }

    #[test]
    fn ignored_ranges() {
        for h in [
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=5-2",
            "bytes=a-b",
            "bytes=1-x",
            "bytes=-",
            "bytes=+1-2",
            "bytes",
        ] {
            assert_eq!(evaluate(Some(h), 100), Full, "{h}");
        }
    }

    #[test]
    fn etag_matching() {
        assert!(none_match("\"abc\"", "\"abc\""));
        assert!(none_match("\"x\", W/\"abc\"", "\"abc\""));
        assert!(none_match("*", "\"abc\""));
        assert!(none_match("\"5-7\"", "W/\"5-7\""));
        assert!(!none_match("\"abd\"", "\"abc\""));
        assert!(if_range_matches("\"abc\"", "\"abc\""));
        assert!(!if_range_matches("\"abc\"", "W/\"abc\""));
        assert!(!if_range_matches("\"abd\"", "\"abc\""));
    }
}
