//! `get_time`: the wall clock broken into fields flows can branch on (opening hours, weekends),
//! as Chatlayer's Get time writes them. Pure functions of a given instant so tests use a fixed
//! clock.
//!
//! A zone is a fixed offset (`+02:00`, `-0530`, `2`, `-5.5` hours, `Z`) or an IANA name
//! (`Europe/Brussels`), whose daylight-saving rules come from the tz database compiled into
//! the binary (chrono-tz), so office hours are right all year and no system tzdata is needed.

use chrono::{DateTime, Datelike, FixedOffset, Offset, SecondsFormat, Timelike, Utc};
use serde_json::{json, Value};

/// Largest offset accepted, in minutes (real zones stay within ±14 h).
pub const MAX_OFFSET_MINUTES: i32 = 18 * 60;

/// Where `offset.*` is computed.
#[derive(Debug, Clone, PartialEq)]
pub enum Zone {
    Fixed(FixedOffset),
    Iana(chrono_tz::Tz),
}

impl Zone {
    /// `+02:00`, `-0530`, `+2`, `2`, `-5.5`, `Z`, `UTC`, or an IANA name.
    pub fn parse(text: &str) -> Result<Zone, String> {
        let t = text.trim();
        if t.contains('/') {
            return t.parse::<chrono_tz::Tz>().map(Zone::Iana).map_err(|_| {
                format!("`{text}` is not an IANA time zone (for example \"Europe/Brussels\")")
            });
        }
        parse_timezone_offset(t).and_then(Zone::minutes)
    }

    /// A fixed offset of so many minutes east of UTC.
    pub fn minutes(minutes: i32) -> Result<Zone, String> {
        check_offset_minutes(minutes)?;
        FixedOffset::east_opt(minutes * 60)
            .map(Zone::Fixed)
            .ok_or_else(|| format!("offset of {minutes} minutes is out of range"))
    }

    /// A fixed offset of so many hours (`2`, `-5.5`).
    pub fn hours(hours: f64) -> Result<Zone, String> {
        let minutes = hours * 60.0;
        if !minutes.is_finite() || minutes.fract() != 0.0 {
            return Err(format!("{hours} hours is not a whole number of minutes"));
        }
        if minutes.abs() > f64::from(MAX_OFFSET_MINUTES) {
            return Err(format!("{hours} hours is out of range (at most ±18)"));
        }
        Zone::minutes(minutes as i32)
    }

    /// The instant in this zone (with the offset in force then).
    pub fn localize(&self, t: DateTime<Utc>) -> DateTime<FixedOffset> {
        match self {
            Zone::Fixed(o) => t.with_timezone(o),
            Zone::Iana(tz) => {
                let local = t.with_timezone(tz);
                local.with_timezone(&local.offset().fix())
            }
        }
    }

    /// The zone's name (`Europe/Brussels`) or its offset (`+02:00`).
    pub fn name(&self) -> String {
        match self {
            Zone::Fixed(o) => o.to_string(),
            Zone::Iana(tz) => tz.name().to_string(),
        }
    }
}

/// Parses `+02:00`, `-0530`, `+2`, `2`, `-5.5`, `Z` or `UTC` into minutes east of UTC.
pub fn parse_timezone_offset(text: &str) -> Result<i32, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("z") || t.eq_ignore_ascii_case("utc") || t.eq_ignore_ascii_case("gmt")
    {
        return Ok(0);
    }
    let bad = || {
        format!(
            "`{text}` is not a UTC offset (expected e.g. \"+02:00\", \"-0530\", 2, -5.5, \"Z\", or \
             an IANA zone in `timezone`)"
        )
    };
    // A plain number of hours: `2`, `-5.5`, `+5.75`.
    if !t.contains(':') && t.contains('.') || t.parse::<i32>().is_ok() && !t.starts_with(['+', '-'])
    {
        let hours: f64 = t.parse().map_err(|_| bad())?;
        let minutes = hours * 60.0;
        if !minutes.is_finite() || minutes.fract() != 0.0 {
            return Err(bad());
        }
        let minutes = minutes as i32;
        check_offset_minutes(minutes)?;
        return Ok(minutes);
    }
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

/// `{utc: {...}, offset: {...}}` as Chatlayer's Get time: year, month (1-12), dayOfMonth,
/// dayOfWeek (JavaScript's: 0 = Sunday .. 6 = Saturday), hours, minutes, seconds, ISO
/// (`2020-10-06T16:17:44.727Z`). `offset` is the time in `zone` (UTC when none is given); its
/// `ISO` is that local time written as Chatlayer writes it (with `Z`), and `ISOOffset` the
/// same instant with its real offset (`2020-10-07T00:17:44.727+08:00`).
pub fn time_fields(wall: DateTime<Utc>, zone: Option<&Zone>) -> Value {
    let local = zone.map_or_else(|| wall.with_timezone(&Utc.fix()), |z| z.localize(wall));
    let mut offset = fields(&local);
    if let Value::Object(m) = &mut offset {
        m.insert(
            "ISOOffset".into(),
            Value::String(local.to_rfc3339_opts(SecondsFormat::Millis, true)),
        );
        m.insert(
            "offsetMinutes".into(),
            Value::from(local.offset().local_minus_utc() / 60),
        );
        if let Some(z) = zone {
            m.insert("timezone".into(), Value::String(z.name()));
        }
    }
    json!({
        "utc": fields(&wall.with_timezone(&Utc.fix())),
        "offset": offset,
    })
}

fn fields(t: &DateTime<FixedOffset>) -> Value {
    // Chatlayer (JavaScript) writes the shifted local time with a `Z`, milliseconds included.
    let iso = t
        .naive_local()
        .and_utc()
        .to_rfc3339_opts(SecondsFormat::Millis, true);
    json!({
        "year": t.year(),
        "month": t.month(),
        "dayOfMonth": t.day(),
        "dayOfWeek": t.weekday().num_days_from_sunday(),
        "hours": t.hour(),
        "minutes": t.minute(),
        "seconds": t.second(),
        "milliseconds": t.timestamp_subsec_millis(),
        "ISO": iso,
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
            ("2", Ok(120)),
            ("-5.5", Ok(-330)),
            ("5.75", Ok(345)),
            ("+14:00", Ok(840)),
            ("Z", Ok(0)),
            ("utc", Ok(0)),
            ("02:00", Err(())),
            ("+2:75", Err(())),
            ("+19:00", Err(())),
            ("19", Err(())),
            ("2.01", Err(())),
            ("2.1", Ok(126)),
            ("+ab", Err(())),
            ("", Err(())),
            ("+", Err(())),
        ] {
            assert_eq!(parse_timezone_offset(text).map_err(|_| ()), want, "{text}");
        }
        assert!(matches!(Zone::parse("Europe/Brussels"), Ok(Zone::Iana(_))));
        assert!(Zone::parse("Europe/Nowhere").unwrap_err().contains("IANA"));
        assert_eq!(Zone::hours(-5.5).unwrap().name(), "-05:30");
        assert!(Zone::hours(0.01).is_err());
    }

    #[test]
    fn chatlayers_example() {
        // Chatlayer's Get time page: 6 October 2020, 16:17:44.727 UTC (a Tuesday).
        let wall = Utc.with_ymd_and_hms(2020, 10, 6, 16, 17, 44).unwrap()
            + chrono::Duration::milliseconds(727);
        let v = time_fields(wall, Some(&Zone::hours(8.0).unwrap()));
        assert_eq!(
            v["utc"],
            json!({"year": 2020, "month": 10, "dayOfMonth": 6, "dayOfWeek": 2, "hours": 16,
                   "minutes": 17, "seconds": 44, "milliseconds": 727,
                   "ISO": "2020-10-06T16:17:44.727Z"})
        );
        assert_eq!(v["offset"]["dayOfMonth"], json!(7));
        assert_eq!(
            v["offset"]["dayOfWeek"],
            json!(3),
            "Wednesday, as JavaScript counts"
        );
        assert_eq!(v["offset"]["hours"], json!(0));
        assert_eq!(v["offset"]["ISO"], json!("2020-10-07T00:17:44.727Z"));
        assert_eq!(
            v["offset"]["ISOOffset"],
            json!("2020-10-07T00:17:44.727+08:00")
        );
        assert_eq!(v["offset"]["offsetMinutes"], json!(480));
    }

    #[test]
    fn sunday_is_zero_and_fractional_offsets_work() {
        // Sunday 2024-03-31 23:30:05 UTC; at -05:30 it is 18:00:05 the same Sunday.
        let wall = Utc.with_ymd_and_hms(2024, 3, 31, 23, 30, 5).unwrap();
        let v = time_fields(wall, Some(&Zone::hours(-5.5).unwrap()));
        assert_eq!(v["utc"]["dayOfWeek"], json!(0));
        assert_eq!(v["offset"]["hours"], json!(18));
        assert_eq!(v["offset"]["ISO"], json!("2024-03-31T18:00:05.000Z"));
        let plain = time_fields(wall, None);
        assert_eq!(plain["utc"]["ISO"], plain["offset"]["ISO"]);
    }

    #[test]
    fn iana_zones_follow_daylight_saving() {
        let brussels = Zone::parse("Europe/Brussels").unwrap();
        // Winter: UTC+1. 08:30 UTC on 15 January is 09:30 in Brussels.
        let winter = Utc.with_ymd_and_hms(2024, 1, 15, 8, 30, 0).unwrap();
        let v = time_fields(winter, Some(&brussels));
        assert_eq!(v["offset"]["hours"], json!(9));
        assert_eq!(v["offset"]["offsetMinutes"], json!(60));
        // Summer: UTC+2. The same 08:30 UTC on 15 July is 10:30.
        let summer = Utc.with_ymd_and_hms(2024, 7, 15, 8, 30, 0).unwrap();
        let v = time_fields(summer, Some(&brussels));
        assert_eq!(v["offset"]["hours"], json!(10));
        assert_eq!(v["offset"]["timezone"], json!("Europe/Brussels"));
        // The switch itself: 31 March 2024, 01:00 UTC is 03:00 CEST (02:xx never happens).
        let switch = Utc.with_ymd_and_hms(2024, 3, 31, 1, 0, 0).unwrap();
        assert_eq!(
            time_fields(switch, Some(&brussels))["offset"]["hours"],
            json!(3)
        );
        let new_york = Zone::parse("America/New_York").unwrap();
        assert_eq!(
            time_fields(summer, Some(&new_york))["offset"]["hours"],
            json!(4)
        );
    }
}
