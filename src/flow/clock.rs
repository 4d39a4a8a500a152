//! `get_time`: the wall clock broken into fields flows can branch on (opening hours, weekends).
//! Pure functions of a given instant so tests use a fixed clock.

use chrono::{DateTime, Datelike, FixedOffset, Offset, SecondsFormat, Timelike, Utc};
use serde_json::{json, Value};

/// Largest offset accepted, in minutes (real zones stay within ±14 h).
pub const MAX_OFFSET_MINUTES: i32 = 18 * 60;

/// Parses `+02:00`, `-0530`, `+2`, `Z` or `UTC` into minutes east of UTC.
pub fn parse_timezone_offset(text: &str) -> Result<i32, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") {
        return Ok(0);
    }
    let bad =
        || format!("`{text}` is not a UTC offset (expected e.g. \"+02:00\", \"-0530\", \"Z\")");
    let (sign, rest) = match t.as_bytes().first() {
        Some(b'+') => (1, &t[1..]),
        Some(b'-') => (-1, &t[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = match rest.split_once(':') {
        Some((h, m)) => (h, m),
        None if rest.len() == 4 => rest.split_at(2),
        None => (rest, "0"),
    };
    let digits = |s: &str| !s.is_empty() && s.len() <= 2 && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(h) || !digits(m) {
        return Err(bad());
    }
    let (h, m) = (
        h.parse::<i32>().map_err(|_| bad())?,
        m.parse::<i32>().map_err(|_| bad())?,
    );
    if m >= 60 {
        return Err(bad());
    }
    let minutes = sign * (h * 60 + m);
    check_offset_minutes(minutes)?;
    Ok(minutes)
}

pub fn check_offset_minutes(minutes: i32) -> Result<(), String> {
    if minutes.abs() > MAX_OFFSET_MINUTES {
        return Err(format!(
            "offset of {minutes} minutes is out of range (at most ±{MAX_OFFSET_MINUTES})"
        ));
    }
    Ok(())
}

/// `{utc: {...}, offset: {...}}`, each with year, month (1-12), dayOfMonth, dayOfWeek (ISO:
/// 1 = Monday .. 7 = Sunday), hours, minutes, seconds and ISO (RFC 3339).
pub fn time_fields(wall: DateTime<Utc>, offset_minutes: i32) -> Value {
    // Out-of-range offsets are rejected at load time; falling back to UTC keeps this total.
    let offset = FixedOffset::east_opt(offset_minutes.saturating_mul(60)).unwrap_or(Utc.fix());
    let local = wall.with_timezone(&offset);
    json!({
        "utc": fields(&wall),
        "offset": fields(&local),
    })
}

fn fields<Tz: chrono::TimeZone>(t: &DateTime<Tz>) -> Value
where
    Tz::Offset: std::fmt::Display,
{
    json!({
        "year": t.year(),
        "month": t.month(),
        "dayOfMonth": t.day(),
        "dayOfWeek": t.weekday().number_from_monday(),
        "hours": t.hour(),
        "minutes": t.minute(),
        "seconds": t.second(),
        "ISO": t.to_rfc3339_opts(SecondsFormat::Secs, true),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn parses_offsets() {
        for (text, want) in [
            ("+02:00", Ok(120)),
            ("-05:30", Ok(-330)),
            ("-0530", Ok(-330)),
            ("+2", Ok(120)),
            ("+14:00", Ok(840)),
            ("Z", Ok(0)),
            ("utc", Ok(0)),
            ("02:00", Err(())),
            ("+2:75", Err(())),
            ("+19:00", Err(())),
            ("+ab", Err(())),
            ("", Err(())),
            ("+", Err(())),
        ] {
            assert_eq!(parse_timezone_offset(text).map_err(|_| ()), want, "{text}");
        }
    }

    #[test]
    fn fields_for_a_fixed_clock_with_an_offset() {
        // Sunday 2024-03-31 23:30:05 UTC; at +01:00 it is already Monday 1 April.
        let wall = Utc.with_ymd_and_hms(2024, 3, 31, 23, 30, 5).unwrap();
        let v = time_fields(wall, 60);
        assert_eq!(
            v["utc"],
            json!({"year": 2024, "month": 3, "dayOfMonth": 31, "dayOfWeek": 7, "hours": 23,
                   "minutes": 30, "seconds": 5, "ISO": "2024-03-31T23:30:05Z"})
        );
        assert_eq!(
            v["offset"],
            json!({"year": 2024, "month": 4, "dayOfMonth": 1, "dayOfWeek": 1, "hours": 0,
                   "minutes": 30, "seconds": 5, "ISO": "2024-04-01T00:30:05+01:00"})
        );
        let west = time_fields(wall, -330);
        assert_eq!(west["offset"]["hours"], json!(18));
        assert_eq!(west["offset"]["ISO"], json!("2024-03-31T18:00:05-05:30"));
    }
}
