//! E.164 number validation and the destination policy applied before forwarding a call.
//!
//! Numbers reaching the "Forward call" step come from bots and operators, so validation is
//! strict (international format only) but forgiving about human formatting, and every
//! rejection says in plain words which rule failed so the reason can be handed back to a bot.
//! The policy is an allow/deny prefix list whose defaults are toll-fraud safe.

use std::fmt;
use std::str::FromStr;

use phonenumber::metadata::DATABASE;
use thiserror::Error;
use tracing::{debug, info};

/// Loads the numbering-plan database (a lazy, one-time parse that takes hundreds of ms on a
/// busy machine). Called once at start-up off the tokio workers, so the first forward does not
/// stall its call task (RTP and SIP responses wait meanwhile).
pub fn warm_up() {
    let _ = parse_e164("+3225551212", &ParseOptions::default());
}

/// E.164 allows at most 15 digits (country code included).
const MAX_DIGITS: usize = 15;
/// Fewer digits than this cannot be a country code plus a subscriber number.
const MIN_DIGITS: usize = 4;

/// How lenient [`parse_e164`] is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Accept international numbers written without the leading '+' (e.g. `3225551212`), as
    /// some legacy trunks and CRMs send them. A leading `0`/`00` is still refused: that is a
    /// national trunk prefix or an international dialling prefix, and guessing which country
    /// it means is exactly how calls get misrouted.
    pub legacy_no_plus: bool,
}

/// A validated international number, normalised to `+<digits>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct E164(String);

impl E164 {
    /// The normalised form, e.g. `+3225551212`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The digits without the '+'.
    pub fn digits(&self) -> &str {
        &self.0[1..]
    }
}

impl fmt::Display for E164 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for E164 {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for E164 {
    type Err = PhoneError;

    /// Strict parse (no legacy forms).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_e164(s, &ParseOptions::default())
    }
}

/// Why a phone number was rejected. Display text is a full sentence fit for a bot or a user.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PhoneError {
    #[error("the phone number is empty")]
    Empty,
    #[error("the phone number must be in international format, starting with + and the country code (for example +32 2 555 12 12)")]
    MissingPlus,
    #[error("the phone number must not start with 0 or 00: write it in international format with + and the country code instead")]
    LeadingZero,
    #[error("the phone number contains the character '{ch}' at position {position}, but only digits, a leading +, spaces, dashes, dots and parentheses are allowed")]
    InvalidCharacter {
        ch: char,
        /// 1-based character position in the input as given.
        position: usize,
    },
    #[error("the phone number has {digits} digits, but an international number has at most 15")]
    TooLong { digits: usize },
    #[error("the phone number is too short to be a complete international number")]
    TooShort,
    #[error("the phone number does not start with a known country code")]
    UnknownCountryCode,
    #[error("the phone number is not a possible number in its country")]
    ImpossibleNumber,
}

impl PhoneError {
    /// Machine code for APIs and flow results; the same for every validation failure.
    pub fn code(&self) -> &'static str {
        "invalid_number"
    }

    /// Which rule failed, for logs and metrics.
    pub fn rule(&self) -> &'static str {
        match self {
            PhoneError::Empty => "empty",
            PhoneError::MissingPlus => "missing_plus",
            PhoneError::LeadingZero => "leading_zero",
            PhoneError::InvalidCharacter { .. } => "invalid_character",
            PhoneError::TooLong { .. } => "too_long",
            PhoneError::TooShort => "too_short",
            PhoneError::UnknownCountryCode => "unknown_country_code",
            PhoneError::ImpossibleNumber => "impossible_number",
        }
    }

    /// A readable sentence saying what is wrong (same as Display).
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// Validates and normalises a number to E.164.
///
/// Accepts spaces, `-`, `.` and balanced parentheses as formatting. A parenthesised lone `0`
/// (`+44 (0)20 7946 0958`) is the national trunk prefix convention and is dropped. The '+'
/// may only come first. The result must be a valid number for its country according to
/// libphonenumber's metadata (the input passed to it is already reduced to `+<digits>`).
pub fn parse_e164(input: &str, opts: &ParseOptions) -> Result<E164, PhoneError> {
    let leading_ws = input.chars().take_while(|c| c.is_whitespace()).count();
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(PhoneError::Empty);
    }

    let (has_plus, digits) = scan(trimmed, leading_ws)?;
    if !has_plus {
        if !opts.legacy_no_plus {
            return Err(PhoneError::MissingPlus);
        }
        if digits.starts_with('0') {
            return Err(PhoneError::LeadingZero);
        }
    }
    if digits.starts_with('0') {
        return Err(PhoneError::LeadingZero);
    }
    if digits.len() > MAX_DIGITS {
        return Err(PhoneError::TooLong {
            digits: digits.len(),
        });
    }
    if digits.len() < MIN_DIGITS {
        return Err(PhoneError::TooShort);
    }

    let normalised = format!("+{digits}");
    check_with_metadata(&normalised)?;
    if !has_plus {
        info!(input = trimmed, normalised = %normalised, "accepted legacy number without '+'");
    }
    Ok(E164(normalised))
}

/// Walks the formatting, returning whether a leading '+' was present and the bare digits.
fn scan(trimmed: &str, offset: usize) -> Result<(bool, String), PhoneError> {
    let mut has_plus = false;
    let mut digits = String::with_capacity(trimmed.len());
    // Open parenthesis: its position and where its digits start in `digits`.
    let mut open: Option<(usize, usize)> = None;
    for (i, ch) in trimmed.chars().enumerate() {
        let position = offset + i + 1;
        let invalid = PhoneError::InvalidCharacter { ch, position };
        match ch {
            '0'..='9' => digits.push(ch),
            '+' if i == 0 => has_plus = true,
            ' ' | '\t' | '-' | '.' => {}
            '(' if open.is_none() => open = Some((position, digits.len())),
            ')' => {
                let Some((_, start)) = open.take() else {
                    return Err(invalid);
                };
                if &digits[start..] == "0" {
                    debug!("dropping (0) trunk prefix");
                    digits.truncate(start);
                }
            }
            _ => return Err(invalid),
        }
    }
    if let Some((position, _)) = open {
        return Err(PhoneError::InvalidCharacter { ch: '(', position });
    }
    Ok((has_plus, digits))
}

/// Country code, length and validity checks against libphonenumber metadata.
fn check_with_metadata(normalised: &str) -> Result<(), PhoneError> {
    use phonenumber::ParseError;
    let number = match phonenumber::parse(None, normalised) {
        Ok(n) => n,
        Err(ParseError::InvalidCountryCode) => return Err(PhoneError::UnknownCountryCode),
        Err(ParseError::NoNumber | ParseError::TooShortNsn | ParseError::TooShortAfterIdd) => {
            return Err(PhoneError::TooShort)
        }
        Err(e) => {
            debug!(error = %e, "phonenumber rejected number");
            return Err(PhoneError::ImpossibleNumber);
        }
    };
    let code_len = number.code().value().to_string().len();
    let national_len = normalised.len().saturating_sub(1 + code_len);
    if let Some(meta) = number.metadata(&DATABASE) {
        // The general descriptor's length list is often empty in the metadata, so take the
        // shortest length any real number type allows (short codes and emergency numbers are
        // not dialable E.164 destinations and are left out).
        let d = meta.descriptors();
        let shortest = std::iter::once(Some(d.general()))
            .chain([
                d.fixed_line(),
                d.mobile(),
                d.toll_free(),
                d.premium_rate(),
                d.shared_cost(),
                d.personal_number(),
                d.voip(),
                d.pager(),
                d.uan(),
                d.voicemail(),
            ])
            .flatten()
            .flat_map(|desc| desc.possible_length().iter().copied())
            .min();
        if shortest.is_some_and(|min| national_len < usize::from(min)) {
            return Err(PhoneError::TooShort);
        }
    }
    if !phonenumber::is_valid(&number) {
        return Err(PhoneError::ImpossibleNumber);
    }
    Ok(())
}

/// Premium-rate, shared-cost, personal-number and satellite ranges refused by default
/// (`[transfer] deny_defaults = true`), even when `allow` covers the country: these are the
/// numbers toll fraud dials. Documented in docs/security.md; an operator who really needs one
/// sets `deny_defaults = false` and writes their own `deny` list.
pub const DEFAULT_DENY: &[&str] = &[
    // International networks and satellite (GMSS, Inmarsat, Iridium, Thuraya, ...).
    "+870", "+878", "+881", "+882", "+883", "+888", "+979",
    // UK: 09 premium rate, 087 / 084 shared cost and revenue share, 070 personal numbers,
    // 118 directory enquiries.
    "+449", "+4487", "+4484", "+4470", "+44118",
    // NANP: 900 premium and 976 pay-per-call.
    "+1900", "+1976",
    // Belgium 090x, Netherlands 090x, Germany 0900 / 0137, France 089x / 081x,
    // Ireland 15xx premium.
    "+3290", "+3190", "+49900", "+49137", "+3389", "+3381", "+35315",
];

/// Why a destination may not be called, or why a policy could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("calls to {number} are not allowed: the number matches no allowed destination prefix")]
    NotAllowed { number: String },
    #[error("calls to {number} are blocked: numbers starting with {prefix} are denied")]
    Denied { number: String, prefix: String },
    #[error("invalid {list} prefix `{prefix}`: a prefix must be '+' followed by 1 to 15 digits")]
    InvalidPrefix { list: &'static str, prefix: String },
}

impl PolicyError {
    /// Machine code: `denied` for refused destinations, `invalid_policy` for bad configuration.
    pub fn code(&self) -> &'static str {
        match self {
            PolicyError::NotAllowed { .. } | PolicyError::Denied { .. } => "denied",
            PolicyError::InvalidPrefix { .. } => "invalid_policy",
        }
    }

    /// A readable sentence (same as Display).
    pub fn reason(&self) -> String {
        self.to_string()
    }
}

/// Which destinations a call may be forwarded to.
///
/// A number must start with some `allow` prefix and with no `deny` prefix; deny always wins.
/// An empty allow list refuses everything: forgetting to configure it must not open the
/// gateway to toll fraud. To allow the world, list `+1` through `+9`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DestinationPolicy {
    allow: Vec<String>,
    deny: Vec<String>,
}

impl DestinationPolicy {
    /// Validates prefixes: '+' then 1-15 digits. Spaces, '-' and '.' are ignored so config can
    /// say `+44 90`.
    pub fn new(allow: Vec<String>, deny: Vec<String>) -> Result<Self, PolicyError> {
        let norm = |list: &'static str, v: Vec<String>| -> Result<Vec<String>, PolicyError> {
            v.into_iter().map(|p| normalise_prefix(list, &p)).collect()
        };
        Ok(DestinationPolicy {
            allow: norm("allow", allow)?,
            deny: norm("deny", deny)?,
        })
    }

    /// Normalised allow prefixes.
    pub fn allow(&self) -> &[String] {
        &self.allow
    }

    /// Normalised deny prefixes.
    pub fn deny(&self) -> &[String] {
        &self.deny
    }

    /// Decides whether `number` may be called. Reports the most specific deny prefix hit.
    pub fn check(&self, number: &E164) -> Result<(), PolicyError> {
        let n = number.as_str();
        if let Some(prefix) = self
            .deny
            .iter()
            .filter(|p| n.starts_with(p.as_str()))
            .max_by_key(|p| p.len())
        {
            return Err(PolicyError::Denied {
                number: n.to_string(),
                prefix: prefix.clone(),
            });
        }
        if self.allow.iter().any(|p| n.starts_with(p.as_str())) {
            Ok(())
        } else {
            Err(PolicyError::NotAllowed {
                number: n.to_string(),
            })
        }
    }
}

fn normalise_prefix(list: &'static str, raw: &str) -> Result<String, PolicyError> {
    let p: String = raw
        .chars()
        .filter(|c| !matches!(c, ' ' | '\t' | '-' | '.'))
        .collect();
    let digits = p.strip_prefix('+').unwrap_or_default();
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(PolicyError::InvalidPrefix {
            list,
            prefix: raw.to_string(),
        });
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRICT: ParseOptions = ParseOptions {
        legacy_no_plus: false,
    };
    const LEGACY: ParseOptions = ParseOptions {
        legacy_no_plus: true,
    };

    #[test]
    fn validation_table() {
        use PhoneError::*;
        let cases: Vec<(&str, ParseOptions, Result<&str, PhoneError>)> = vec![
            // Belgium
            ("+3225551212", STRICT, Ok("+3225551212")),
            ("+32 2 555 12 12", STRICT, Ok("+3225551212")),
            ("+32 (2) 555-1212", STRICT, Ok("+3225551212")),
            ("  +32.2.555.12.12  ", STRICT, Ok("+3225551212")),
            ("+32 470 12 34 56", STRICT, Ok("+32470123456")),
            ("+32 (0)2 555 12 12", STRICT, Ok("+3225551212")),
            // Netherlands
            ("+31 20 123 4567", STRICT, Ok("+31201234567")),
            ("+31-6-12345678", STRICT, Ok("+31612345678")),
            ("+31 (0)6 1234 5678", STRICT, Ok("+31612345678")),
            // United Kingdom
            ("+44 20 7946 0958", STRICT, Ok("+442079460958")),
            ("+44 (0)20 7946 0958", STRICT, Ok("+442079460958")),
            ("+44 7400 123456", STRICT, Ok("+447400123456")),
            // United States
            ("+1 (650) 253-0000", STRICT, Ok("+16502530000")),
            ("+1 212 736 5000", STRICT, Ok("+12127365000")),
            ("+1.650.253.0000", STRICT, Ok("+16502530000")),
            // Legacy no-plus
            ("3225551212", LEGACY, Ok("+3225551212")),
            ("44 20 7946 0958", LEGACY, Ok("+442079460958")),
            ("+3225551212", LEGACY, Ok("+3225551212")),
            // Rule failures
            ("", STRICT, Err(Empty)),
            ("   ", STRICT, Err(Empty)),
            ("3225551212", STRICT, Err(MissingPlus)),
            ("0032 2 555 12 12", STRICT, Err(MissingPlus)),
            ("0032 2 555 12 12", LEGACY, Err(LeadingZero)),
            ("02 555 12 12", LEGACY, Err(LeadingZero)),
            ("+032 2 555 12 12", STRICT, Err(LeadingZero)),
            ("+0", STRICT, Err(LeadingZero)),
            (
                "+32 2 555 12 12 ext 5",
                STRICT,
                Err(InvalidCharacter {
                    ch: 'e',
                    position: 17,
                }),
            ),
            (
                " +32/2/5551212",
                STRICT,
                Err(InvalidCharacter {
                    ch: '/',
                    position: 5,
                }),
            ),
            (
                "+32 2 555+1212",
                STRICT,
                Err(InvalidCharacter {
                    ch: '+',
                    position: 10,
                }),
            ),
            (
                "+32 (2 5551212",
                STRICT,
                Err(InvalidCharacter {
                    ch: '(',
                    position: 5,
                }),
            ),
            (
                "+32 2) 5551212",
                STRICT,
                Err(InvalidCharacter {
                    ch: ')',
                    position: 6,
                }),
            ),
            (
                "tel:+3225551212",
                STRICT,
                Err(InvalidCharacter {
                    ch: 't',
                    position: 1,
                }),
            ),
            (
                "+32 2 555 1212 é",
                STRICT,
                Err(InvalidCharacter {
                    ch: 'é',
                    position: 16,
                }),
            ),
            ("+1234567890123456", STRICT, Err(TooLong { digits: 16 })),
            (
                "+44 20 7946 0958 0958 1",
                STRICT,
                Err(TooLong { digits: 17 }),
            ),
            ("+", STRICT, Err(TooShort)),
            ("+32", STRICT, Err(TooShort)),
            ("+32 2 555", STRICT, Err(TooShort)),
            ("+999 123 4567", STRICT, Err(UnknownCountryCode)),
            ("+80 1234 5678", STRICT, Err(UnknownCountryCode)),
            ("+1 555 555 5555", STRICT, Err(ImpossibleNumber)),
            ("+44 20 7946 09581", STRICT, Err(ImpossibleNumber)),
            ("+32 2 555 12 12 12", STRICT, Err(ImpossibleNumber)),
        ];
        assert!(cases.len() >= 30);
        for (input, opts, want) in cases {
            let got = parse_e164(input, &opts);
            match want {
                Ok(norm) => {
                    let n = got.unwrap_or_else(|e| panic!("{input:?}: unexpected {e:?}"));
                    assert_eq!(n.as_str(), norm, "{input:?}");
                }
                Err(e) => assert_eq!(got, Err(e), "{input:?}"),
            }
        }
    }

    #[test]
    fn e164_accessors() {
        let n: E164 = "+32 2 555 12 12".parse().unwrap();
        assert_eq!(n.to_string(), "+3225551212");
        assert_eq!(n.digits(), "3225551212");
        assert_eq!(n.as_ref(), "+3225551212");
    }

    #[test]
    fn error_codes_and_reasons() {
        let errors = [
            PhoneError::Empty,
            PhoneError::MissingPlus,
            PhoneError::LeadingZero,
            PhoneError::InvalidCharacter {
                ch: 'x',
                position: 3,
            },
            PhoneError::TooLong { digits: 16 },
            PhoneError::TooShort,
            PhoneError::UnknownCountryCode,
            PhoneError::ImpossibleNumber,
        ];
        let mut rules = std::collections::HashSet::new();
        for e in &errors {
            assert_eq!(e.code(), "invalid_number");
            assert!(e.reason().starts_with("the phone number"), "{e}");
            assert!(rules.insert(e.rule()), "duplicate rule {}", e.rule());
        }
        assert!(PhoneError::MissingPlus.reason().contains('+'));
        assert!(PhoneError::TooLong { digits: 16 }.reason().contains("16"));
        let e = PhoneError::InvalidCharacter {
            ch: 'x',
            position: 3,
        };
        assert!(e.reason().contains("'x'") && e.reason().contains("position 3"));
    }

    fn e(s: &str) -> E164 {
        s.parse().unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn policy_allow_and_deny() {
        let p = DestinationPolicy::new(strings(&["+44", "+32"]), strings(&["+44 90", "+4487"]))
            .unwrap();
        assert_eq!(p.deny(), ["+4490", "+4487"]);
        assert_eq!(p.check(&e("+44 20 7946 0958")), Ok(()));
        assert_eq!(p.check(&e("+32 2 555 12 12")), Ok(()));
        assert_eq!(
            p.check(&e("+44 909 879 0000")),
            Err(PolicyError::Denied {
                number: "+449098790000".into(),
                prefix: "+4490".into()
            })
        );
        assert_eq!(
            p.check(&e("+31 20 123 4567")),
            Err(PolicyError::NotAllowed {
                number: "+31201234567".into()
            })
        );
    }

    #[test]
    fn policy_uk_only_when_listed() {
        let uk = e("+44 20 7946 0958");
        let without = DestinationPolicy::new(strings(&["+32"]), vec![]).unwrap();
        assert!(matches!(
            without.check(&uk),
            Err(PolicyError::NotAllowed { .. })
        ));
        let with = DestinationPolicy::new(strings(&["+32", "+44"]), vec![]).unwrap();
        assert_eq!(with.check(&uk), Ok(()));
    }

    #[test]
    fn policy_empty_allow_refuses_everything() {
        let p = DestinationPolicy::new(vec![], vec![]).unwrap();
        assert!(matches!(
            p.check(&e("+3225551212")),
            Err(PolicyError::NotAllowed { .. })
        ));
        assert_eq!(DestinationPolicy::default(), p);
    }

    #[test]
    fn policy_reports_longest_deny() {
        let p = DestinationPolicy::new(strings(&["+1"]), strings(&["+1", "+1650"])).unwrap();
        assert_eq!(
            p.check(&e("+1 650 253 0000")),
            Err(PolicyError::Denied {
                number: "+16502530000".into(),
                prefix: "+1650".into()
            })
        );
    }

    #[test]
    fn policy_prefix_validation() {
        for bad in ["44", "+", "+44a", "", "+1234567890123456", "++44", "+(44)"] {
            let err = DestinationPolicy::new(strings(&[bad]), vec![]).unwrap_err();
            assert_eq!(
                err,
                PolicyError::InvalidPrefix {
                    list: "allow",
                    prefix: bad.to_string()
                }
            );
            assert_eq!(err.code(), "invalid_policy");
        }
        let err = DestinationPolicy::new(strings(&["+44"]), strings(&["90"])).unwrap_err();
        assert!(matches!(
            err,
            PolicyError::InvalidPrefix { list: "deny", .. }
        ));
        assert!(err.reason().contains("'+' followed by 1 to 15 digits"));
        assert!(DestinationPolicy::new(strings(&["+123456789012345"]), vec![]).is_ok());
    }

    #[test]
    fn policy_error_codes() {
        let d = PolicyError::Denied {
            number: "+4490".into(),
            prefix: "+4490".into(),
        };
        let n = PolicyError::NotAllowed {
            number: "+31".into(),
        };
        assert_eq!(d.code(), "denied");
        assert_eq!(n.code(), "denied");
        assert!(d.reason().contains("blocked"));
        assert!(n.reason().contains("not allowed"));
    }

    #[test]
    fn default_deny_list_blocks_premium_ranges_in_allowed_countries() {
        let deny: Vec<String> = DEFAULT_DENY.iter().map(|s| s.to_string()).collect();
        let p = DestinationPolicy::new(vec!["+44".into(), "+1".into(), "+32".into()], deny)
            .expect("the default deny list is valid");
        for n in [
            "+449098765432",
            "+448712345678",
            "+19005551234",
            "+88161234567",
        ] {
            let e: E164 = match n.parse() {
                Ok(e) => e,
                Err(_) => E164(n.to_string()),
            };
            assert!(
                matches!(
                    p.check(&e),
                    Err(PolicyError::Denied { .. }) | Err(PolicyError::NotAllowed { .. })
                ),
                "{n} must be refused"
            );
        }
        let ok: E164 = "+442071234567".parse().unwrap();
        assert_eq!(p.check(&ok), Ok(()));
        let ok: E164 = "+3225551212".parse().unwrap();
        assert_eq!(p.check(&ok), Ok(()));
        let premium = E164("+449098765432".into());
        assert!(
            matches!(p.check(&premium), Err(PolicyError::Denied { prefix, .. }) if prefix == "+449")
        );
    }
}
