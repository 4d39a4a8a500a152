//! Chatlayer's built-in functions (upper-case names), with the engine's older lower-case
//! helpers as aliases. Names are matched without regard to case. Every function is total: a
//! wrong argument is an [`ExprError::Function`], never a panic.

use chrono::{DateTime, Duration as TimeDelta, NaiveDate, TimeZone, Utc};
use serde_json::Value;

use super::{
    clock_now, display_value, equal, limit_list, limit_text, num_of, num_value, parse_num, truthy,
    type_name, ExprError, Num,
};

macro_rules! funcs {
    ($($variant:ident = $name:literal [$($alias:literal),*] ($min:expr, $max:expr);)*) => {
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Func { $($variant),* }

        impl Func {
            pub fn lookup(name: &str) -> Option<Func> {
                let upper = name.to_ascii_uppercase();
                match upper.as_str() {
                    $($name $(| $alias)* => Some(Func::$variant),)*
                    _ => None,
                }
            }

            pub fn name(self) -> &'static str {
                match self { $(Func::$variant => $name),* }
            }

            pub fn arity(self) -> (usize, usize) {
                match self { $(Func::$variant => ($min, $max)),* }
            }
        }

        /// Every function name, for error messages and docs.
        pub fn names() -> Vec<&'static str> {
            vec![$($name),*]
        }
    };
}

const MANY: usize = usize::MAX;

funcs! {
    // Numbers
    Abs = "ABS" [] (1, 1);
    Ceil = "CEIL" ["CEILING"] (1, 1);
    Floor = "FLOOR" [] (1, 1);
    Round = "ROUND" [] (1, 2);
    Plus = "PLUS" [] (2, 2);
    Minus = "MINUS" [] (2, 2);
    Times = "TIMES" [] (2, 2);
    DividedBy = "DIVIDED_BY" [] (2, 2);
    Modulo = "MODULO" ["MOD"] (2, 2);
    AtLeast = "AT_LEAST" [] (2, 2);
    AtMost = "AT_MOST" [] (2, 2);
    Max = "MAX" [] (1, MANY);
    Min = "MIN" [] (1, MANY);
    Sum = "SUM" [] (1, MANY);
    Average = "AVERAGE" ["AVG"] (1, MANY);
    Number = "NUMBER" ["NUM", "TO_NUMBER"] (1, 1);
    // Text
    Append = "APPEND" [] (2, MANY);
    Prepend = "PREPEND" [] (2, 2);
    Capitalize = "CAPITALIZE" [] (1, 1);
    Downcase = "DOWNCASE" ["LOWER", "LOWERCASE"] (1, 1);
    Upcase = "UPCASE" ["UPPER", "UPPERCASE"] (1, 1);
    Strip = "STRIP" ["TRIM"] (1, 1);
    Lstrip = "LSTRIP" [] (1, 1);
    Rstrip = "RSTRIP" [] (1, 1);
    Replace = "REPLACE" [] (3, 3);
    ReplaceFirst = "REPLACE_FIRST" [] (3, 3);
    Remove = "REMOVE" [] (2, 2);
    RemoveFirst = "REMOVE_FIRST" [] (2, 2);
    Split = "SPLIT" [] (2, 2);
    Slice = "SLICE" [] (2, 3);
    Truncate = "TRUNCATE" [] (2, 3);
    TruncateWords = "TRUNCATEWORDS" ["TRUNCATE_WORDS"] (2, 3);
    StartsWith = "STARTS_WITH" [] (2, 2);
    EndsWith = "ENDS_WITH" [] (2, 2);
    IndexOf = "INDEX_OF" [] (2, 2);
    UrlEncode = "URL_ENCODE" [] (1, 1);
    UrlDecode = "URL_DECODE" [] (1, 1);
    Text = "STRING" ["STR", "TEXT", "TO_STRING"] (1, 1);
    // Lists
    Size = "SIZE" ["LENGTH", "LEN"] (1, 1);
    First = "FIRST" [] (1, 1);
    Last = "LAST" [] (1, 1);
    Join = "JOIN" [] (1, 2);
    Reverse = "REVERSE" [] (1, 1);
    Sort = "SORT" [] (1, 2);
    Uniq = "UNIQ" ["UNIQUE"] (1, 1);
    Compact = "COMPACT" [] (1, 1);
    Concat = "CONCAT" [] (2, MANY);
    Map = "MAP" [] (2, 2);
    Where = "WHERE" [] (2, 3);
    Contains = "CONTAINS" ["INCLUDES"] (2, 2);
    // Values
    If = "IF" [] (3, 3);
    Default = "DEFAULT" ["COALESCE"] (2, 2);
    IsEmpty = "IS_EMPTY" ["ISEMPTY"] (1, 1);
    Type = "TYPE" ["TYPEOF"] (1, 1);
    Json = "JSON" ["TO_JSON"] (1, 1);
    ParseJson = "PARSE_JSON" [] (1, 1);
    // Dates
    Now = "NOW" [] (0, 0);
    Date = "DATE" ["DATE_FORMAT", "FORMAT_DATE"] (2, 3);
    DateAdd = "DATE_ADD" [] (3, 3);
    DateDiff = "DATE_DIFF" [] (3, 3);
}

fn fail(func: Func, message: impl Into<String>) -> ExprError {
    ExprError::Function {
        function: func.name(),
        message: message.into(),
    }
}

/// An argument as a number: numbers, numeric text, `null` as 0.
fn number(func: Func, v: &Value) -> Result<Num, ExprError> {
    match v {
        Value::Number(n) => Ok(num_of(n)),
        Value::Null => Ok(Num::I(0)),
        Value::String(s) => {
            parse_num(s).ok_or_else(|| fail(func, format!("`{s}` is not a number")))
        }
        Value::Bool(b) => Ok(Num::I(i64::from(*b))),
        other => Err(fail(
            func,
            format!("a {} is not a number", type_name(other)),
        )),
    }
}

/// An argument as a whole number (counts, positions).
fn integer(func: Func, v: &Value) -> Result<i64, ExprError> {
    match number(func, v)? {
        Num::I(i) => Ok(i),
        Num::F(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(f as i64),
        Num::F(f) => Err(fail(func, format!("{f} is not a whole number"))),
    }
}

fn text(v: &Value) -> String {
    display_value(v)
}

/// An argument as a list: lists as they are, `null` as empty, anything else as one item.
fn list(v: &Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items.clone(),
        Value::Null => Vec::new(),
        other => vec![other.clone()],
    }
}

/// Arguments spread into numbers: `MAX(1, 2)` and `MAX([1, 2])` alike.
fn numbers(func: Func, args: &[Value]) -> Result<Vec<Num>, ExprError> {
    let mut out = Vec::new();
    for a in args {
        match a {
            Value::Array(items) => {
                for i in items {
                    out.push(number(func, i)?);
                }
            }
            other => out.push(number(func, other)?),
        }
    }
    Ok(out)
}

fn f_value(func: Func, f: f64) -> Result<Value, ExprError> {
    num_value(Num::F(f), func.name())
}

fn sort_key(a: &Value, b: &Value) -> std::cmp::Ordering {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => num_of(x)
            .f()
            .partial_cmp(&num_of(y).f())
            .unwrap_or(std::cmp::Ordering::Equal),
        _ => text(a).cmp(&text(b)),
    }
}

fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b))
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

fn url_decode(func: Func, s: &str) -> Result<String, ExprError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| fail(func, format!("bad escape at byte {i}")))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| fail(func, "the result is not UTF-8"))
}

/// A date argument: ISO 8601 / RFC 3339 text, a date (`2024-03-31`), `now`, or a number of
/// milliseconds since 1970 (as JavaScript's Date).
fn date(func: Func, v: &Value) -> Result<DateTime<Utc>, ExprError> {
    match v {
        Value::Null => Ok(clock_now()),
        Value::String(s) if s.trim().eq_ignore_ascii_case("now") => Ok(clock_now()),
        Value::String(s) => {
            let t = s.trim();
            if let Ok(d) = DateTime::parse_from_rfc3339(t) {
                return Ok(d.with_timezone(&Utc));
            }
            if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f") {
                return Ok(Utc.from_utc_datetime(&d));
            }
            if let Ok(d) = chrono::NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S") {
                return Ok(Utc.from_utc_datetime(&d));
            }
            if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
                return Ok(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0).unwrap_or_default()));
            }
            Err(fail(func, format!("`{s}` is not a date (ISO 8601)")))
        }
        Value::Number(n) => {
            let ms = num_of(n).f();
            DateTime::from_timestamp_millis(ms as i64)
                .ok_or_else(|| fail(func, format!("{ms} is out of range")))
        }
        other => Err(fail(func, format!("a {} is not a date", type_name(other)))),
    }
}

/// Chatlayer's (JavaScript's `toISOString`) form: `2020-10-06T16:17:44.727Z`.
pub fn iso_ms(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn unit_delta(func: Func, amount: i64, unit: &str) -> Result<TimeDelta, ExprError> {
    let d = match unit.trim().to_ascii_lowercase().trim_end_matches('s') {
        "millisecond" | "m" => TimeDelta::try_milliseconds(amount),
        "second" => TimeDelta::try_seconds(amount),
        "minute" => TimeDelta::try_minutes(amount),
        "hour" => TimeDelta::try_hours(amount),
        "day" => TimeDelta::try_days(amount),
        "week" => TimeDelta::try_weeks(amount),
        other => {
            return Err(fail(
                func,
                format!(
                    "unknown unit `{other}` (milliseconds, seconds, minutes, hours, days, weeks)"
                ),
            ))
        }
    };
    d.ok_or_else(|| fail(func, "amount out of range"))
}

impl Func {
    pub fn call(self, args: Vec<Value>) -> Result<Value, ExprError> {
        let f = self;
        let arg = |i: usize| args.get(i).cloned().unwrap_or(Value::Null);
        let a = arg(0);
        Ok(match f {
            // ---------------------------------------------------------------- numbers
            Func::Abs => match number(f, &a)? {
                Num::I(i) => i
                    .checked_abs()
                    .map(Value::from)
                    .ok_or_else(|| fail(f, "out of range"))?,
                Num::F(x) => f_value(f, x.abs())?,
            },
            Func::Ceil => f_value(f, number(f, &a)?.f().ceil())?,
            Func::Floor => f_value(f, number(f, &a)?.f().floor())?,
            Func::Round => {
                let digits = if args.len() > 1 {
                    integer(f, &arg(1))?
                } else {
                    0
                };
                if !(0..=15).contains(&digits) {
                    return Err(fail(f, "digits must be 0 to 15"));
                }
                let scale = 10f64.powi(digits as i32);
                f_value(f, (number(f, &a)?.f() * scale).round() / scale)?
            }
            Func::Plus => f_value(f, number(f, &a)?.f() + number(f, &arg(1))?.f())?,
            Func::Minus => f_value(f, number(f, &a)?.f() - number(f, &arg(1))?.f())?,
            Func::Times => f_value(f, number(f, &a)?.f() * number(f, &arg(1))?.f())?,
            Func::DividedBy => {
                let d = number(f, &arg(1))?.f();
                if d == 0.0 {
                    return Err(ExprError::DivisionByZero);
                }
                f_value(f, number(f, &a)?.f() / d)?
            }
            Func::Modulo => {
                let d = number(f, &arg(1))?.f();
                if d == 0.0 {
                    return Err(ExprError::DivisionByZero);
                }
                f_value(f, number(f, &a)?.f() % d)?
            }
            Func::AtLeast => f_value(f, number(f, &a)?.f().max(number(f, &arg(1))?.f()))?,
            Func::AtMost => f_value(f, number(f, &a)?.f().min(number(f, &arg(1))?.f()))?,
            Func::Max | Func::Min => {
                let ns = numbers(f, &args)?;
                let pick = ns.iter().map(|n| n.f()).reduce(|x, y| {
                    if (f == Func::Max) == (y > x) {
                        y
                    } else {
                        x
                    }
                });
                match pick {
                    Some(x) => f_value(f, x)?,
                    None => Value::Null,
                }
            }
            Func::Sum => f_value(f, numbers(f, &args)?.iter().map(|n| n.f()).sum())?,
            Func::Average => {
                let ns = numbers(f, &args)?;
                if ns.is_empty() {
                    Value::Null
                } else {
                    f_value(f, ns.iter().map(|n| n.f()).sum::<f64>() / ns.len() as f64)?
                }
            }
            Func::Number => match &a {
                Value::Number(_) => a,
                Value::Bool(b) => Value::from(i64::from(*b)),
                Value::Null => Value::from(0),
                Value::String(s) => match parse_num(s) {
                    Some(n) => num_value(n, "NUMBER()")?,
                    None => return Err(fail(f, format!("`{s}` is not a number"))),
                },
                other => {
                    return Err(fail(
                        f,
                        format!("cannot convert a {} to a number", type_name(other)),
                    ))
                }
            },
            // ---------------------------------------------------------------- text
            Func::Append => match &a {
                // Chatlayer: adds one or more items to the end of a list.
                Value::Array(items) => {
                    let mut out = items.clone();
                    out.extend(args[1..].iter().cloned());
                    limit_list(out)?
                }
                Value::Null if args[1..].iter().all(|v| !v.is_string()) => {
                    limit_list(args[1..].to_vec())?
                }
                _ => limit_text(args.iter().map(text).collect())?,
            },
            Func::Prepend => limit_text(format!("{}{}", text(&arg(1)), text(&a)))?,
            Func::Capitalize => {
                let s = text(&a);
                let mut chars = s.chars();
                Value::String(match chars.next() {
                    Some(c) => c
                        .to_uppercase()
                        .chain(chars.as_str().to_lowercase().chars())
                        .collect(),
                    None => String::new(),
                })
            }
            Func::Downcase => Value::String(text(&a).to_lowercase()),
            Func::Upcase => Value::String(text(&a).to_uppercase()),
            Func::Strip => Value::String(text(&a).trim().to_string()),
            Func::Lstrip => Value::String(text(&a).trim_start().to_string()),
            Func::Rstrip => Value::String(text(&a).trim_end().to_string()),
            Func::Replace | Func::ReplaceFirst | Func::Remove | Func::RemoveFirst => {
                let s = text(&a);
                let from = text(&arg(1));
                let to = match f {
                    Func::Replace | Func::ReplaceFirst => text(&arg(2)),
                    _ => String::new(),
                };
                if from.is_empty() {
                    Value::String(s)
                } else if matches!(f, Func::Replace | Func::Remove) {
                    limit_text(s.replace(&from, &to))?
                } else {
                    limit_text(s.replacen(&from, &to, 1))?
                }
            }
            Func::Split => {
                let s = text(&a);
                let sep = text(&arg(1));
                let parts: Vec<Value> = if s.is_empty() {
                    Vec::new()
                } else if sep.is_empty() {
                    s.chars().map(|c| Value::String(c.to_string())).collect()
                } else {
                    s.split(sep.as_str())
                        .map(|p| Value::String(p.to_string()))
                        .collect()
                };
                limit_list(parts)?
            }
            Func::Slice => {
                // SLICE(value, start[, length]); a negative start counts from the end.
                let items: Vec<Value> = match &a {
                    Value::Array(items) => items.clone(),
                    other => text(other)
                        .chars()
                        .map(|c| Value::String(c.to_string()))
                        .collect(),
                };
                let len = items.len() as i64;
                let start = integer(f, &arg(1))?;
                let start = if start < 0 {
                    (len + start).max(0)
                } else {
                    start.min(len)
                };
                let count = if args.len() > 2 {
                    integer(f, &arg(2))?.max(0)
                } else {
                    1
                };
                let end = start.saturating_add(count).min(len);
                let picked = items[start as usize..end.max(start) as usize].to_vec();
                match &a {
                    Value::Array(_) => Value::Array(picked),
                    _ => Value::String(picked.iter().map(text).collect()),
                }
            }
            Func::Truncate => {
                let s = text(&a);
                let n = integer(f, &arg(1))?.max(0) as usize;
                let ellipsis = if args.len() > 2 {
                    text(&arg(2))
                } else {
                    "...".into()
                };
                if s.chars().count() <= n {
                    Value::String(s)
                } else {
                    let keep = n.saturating_sub(ellipsis.chars().count());
                    Value::String(s.chars().take(keep).collect::<String>() + &ellipsis)
                }
            }
            Func::TruncateWords => {
                let s = text(&a);
                let n = integer(f, &arg(1))?.max(1) as usize;
                let ellipsis = if args.len() > 2 {
                    text(&arg(2))
                } else {
                    "...".into()
                };
                let words: Vec<&str> = s.split_whitespace().collect();
                if words.len() <= n {
                    Value::String(s)
                } else {
                    Value::String(words[..n].join(" ") + &ellipsis)
                }
            }
            Func::StartsWith => Value::Bool(text(&a).starts_with(&text(&arg(1)))),
            Func::EndsWith => Value::Bool(text(&a).ends_with(&text(&arg(1)))),
            Func::IndexOf => {
                let needle = arg(1);
                let found = match &a {
                    Value::Array(items) => items.iter().position(|x| equal(x, &needle)),
                    other => {
                        let s = text(other);
                        s.find(&text(&needle)).map(|byte| s[..byte].chars().count())
                    }
                };
                Value::from(found.map_or(-1, |i| i as i64))
            }
            Func::UrlEncode => Value::String(url_encode(&text(&a))),
            Func::UrlDecode => Value::String(url_decode(f, &text(&a))?),
            Func::Text => Value::String(text(&a)),
            // ---------------------------------------------------------------- lists
            Func::Size => match &a {
                Value::Null => Value::from(0),
                Value::String(s) => Value::from(s.chars().count()),
                Value::Array(v) => Value::from(v.len()),
                Value::Object(m) => Value::from(m.len()),
                other => return Err(fail(f, format!("a {} has no length", type_name(other)))),
            },
            Func::First => match &a {
                Value::Array(items) => items.first().cloned().unwrap_or(Value::Null),
                Value::String(s) => s
                    .chars()
                    .next()
                    .map_or(Value::Null, |c| c.to_string().into()),
                _ => Value::Null,
            },
            Func::Last => match &a {
                Value::Array(items) => items.last().cloned().unwrap_or(Value::Null),
                Value::String(s) => s
                    .chars()
                    .last()
                    .map_or(Value::Null, |c| c.to_string().into()),
                _ => Value::Null,
            },
            Func::Join => {
                let sep = if args.len() > 1 {
                    text(&arg(1))
                } else {
                    " ".into()
                };
                limit_text(list(&a).iter().map(text).collect::<Vec<_>>().join(&sep))?
            }
            Func::Reverse => match &a {
                Value::String(s) => Value::String(s.chars().rev().collect()),
                other => Value::Array(list(other).into_iter().rev().collect()),
            },
            Func::Sort => {
                let mut items = list(&a);
                if args.len() > 1 {
                    let key = text(&arg(1));
                    items.sort_by(|x, y| {
                        sort_key(
                            x.get(&key).unwrap_or(&Value::Null),
                            y.get(&key).unwrap_or(&Value::Null),
                        )
                    });
                } else {
                    items.sort_by(sort_key);
                }
                Value::Array(items)
            }
            Func::Uniq => {
                let mut out: Vec<Value> = Vec::new();
                for i in list(&a) {
                    if !out.iter().any(|o| equal(o, &i)) {
                        out.push(i);
                    }
                }
                Value::Array(out)
            }
            Func::Compact => Value::Array(list(&a).into_iter().filter(|v| !v.is_null()).collect()),
            Func::Concat => {
                if args.iter().all(|v| v.is_array() || v.is_null()) {
                    limit_list(args.iter().flat_map(list).collect())?
                } else {
                    limit_text(args.iter().map(text).collect())?
                }
            }
            Func::Map => {
                let key = text(&arg(1));
                Value::Array(
                    list(&a)
                        .iter()
                        .map(|i| i.get(&key).cloned().unwrap_or(Value::Null))
                        .collect(),
                )
            }
            Func::Where => {
                let key = text(&arg(1));
                let want = args.get(2);
                Value::Array(
                    list(&a)
                        .into_iter()
                        .filter(|i| {
                            let v = i.get(&key).unwrap_or(&Value::Null);
                            match want {
                                Some(w) => equal(v, w),
                                None => truthy(v),
                            }
                        })
                        .collect(),
                )
            }
            Func::Contains => {
                let b = arg(1);
                Value::Bool(match &a {
                    Value::Array(items) => items.iter().any(|x| equal(x, &b)),
                    Value::Object(map) => map.contains_key(&text(&b)),
                    Value::Null => false,
                    _ => text(&a).contains(&text(&b)),
                })
            }
            // ---------------------------------------------------------------- values
            // IF is parsed into a lazy conditional; this arm only runs if called directly.
            Func::If => {
                if truthy(&a) {
                    arg(1)
                } else {
                    arg(2)
                }
            }
            Func::Default => {
                let empty = match &a {
                    Value::Null | Value::Bool(false) => true,
                    Value::String(s) => s.is_empty(),
                    Value::Array(v) => v.is_empty(),
                    Value::Object(m) => m.is_empty(),
                    Value::Number(_) | Value::Bool(true) => false,
                };
                if empty {
                    arg(1)
                } else {
                    a
                }
            }
            Func::IsEmpty => Value::Bool(match &a {
                Value::Null => true,
                Value::String(s) => s.trim().is_empty(),
                Value::Array(v) => v.is_empty(),
                Value::Object(m) => m.is_empty(),
                _ => false,
            }),
            Func::Type => Value::String(type_name(&a).to_string()),
            Func::Json => limit_text(a.to_string())?,
            Func::ParseJson => {
                let s = text(&a);
                if s.len() > super::MAX_VALUE_LEN {
                    return Err(fail(f, "text too long"));
                }
                serde_json::from_str(&s).map_err(|e| fail(f, format!("not JSON: {e}")))?
            }
            // ---------------------------------------------------------------- dates
            Func::Now => Value::String(iso_ms(&clock_now())),
            Func::Date => {
                let t = date(f, &a)?;
                let format = text(&arg(1));
                if format.len() > 200 {
                    return Err(fail(f, "format too long"));
                }
                let zone = args.get(2).map(text);
                format_date(f, t, &format, zone.as_deref())?
            }
            Func::DateAdd => {
                let t = date(f, &a)?;
                let delta = unit_delta(f, integer(f, &arg(1))?, &text(&arg(2)))?;
                let out = t
                    .checked_add_signed(delta)
                    .ok_or_else(|| fail(f, "date out of range"))?;
                Value::String(iso_ms(&out))
            }
            Func::DateDiff => {
                let (x, y) = (date(f, &a)?, date(f, &arg(1))?);
                let ms = (x - y).num_milliseconds();
                let unit = unit_delta(f, 1, &text(&arg(2)))?.num_milliseconds().max(1);
                Value::from(ms / unit)
            }
        })
    }
}

/// `DATE(value, format[, timezone])`: strftime-style `%Y-%m-%d %H:%M`, in UTC, a fixed offset
/// (`+02:00`, `2`, `-5.5`) or an IANA zone (`Europe/Brussels`).
fn format_date(
    f: Func,
    t: DateTime<Utc>,
    format: &str,
    zone: Option<&str>,
) -> Result<Value, ExprError> {
    use std::fmt::Write;
    let mut out = String::new();
    let items = chrono::format::StrftimeItems::new(format);
    let rendered = match zone.map(str::trim).filter(|z| !z.is_empty()) {
        None => write!(out, "{}", t.format_with_items(items)),
        Some(z) => match crate::flow::clock::Zone::parse(z) {
            Ok(zone) => {
                let local = zone.localize(t);
                write!(out, "{}", local.format_with_items(items))
            }
            Err(e) => return Err(fail(f, e)),
        },
    };
    rendered.map_err(|_| fail(f, format!("bad format `{format}`")))?;
    Ok(Value::String(out))
}
