//! The DTMF collector behind the `collect` step: digits in, a finished input or "no input" out.
//! Its own small state machine so the digit/terminator/timeout rules are tested in isolation.

use std::time::{Duration, Instant};

/// The settings of one `collect` step.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectRules {
    pub max_digits: usize,
    pub terminator: Option<char>,
    /// How long to wait for the first digit; `None` waits until inactivity closes the call.
    pub timeout: Option<Duration>,
    /// How long to wait for each further digit before taking what was typed.
    pub inter_digit_timeout: Duration,
}

/// How a collection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Collected {
    /// Digits (possibly empty if only the terminator was pressed), terminator excluded.
    Input(String),
    /// The first-digit timeout passed with nothing typed.
    NoInput,
}

#[derive(Debug, Clone)]
pub struct Collector {
    rules: CollectRules,
    digits: String,
    deadline: Option<Instant>,
}

impl Collector {
    pub fn new(rules: CollectRules, now: Instant) -> Self {
        let deadline = rules.timeout.map(|t| now + t);
        Self {
            rules,
            digits: String::new(),
            deadline,
        }
    }

    /// Feeds one digit; returns the result once the input is complete.
    pub fn push(&mut self, digit: char, now: Instant) -> Option<Collected> {
        if self.rules.terminator == Some(digit) {
            return Some(Collected::Input(std::mem::take(&mut self.digits)));
        }
        self.digits.push(digit);
        if self.digits.chars().count() >= self.rules.max_digits {
            return Some(Collected::Input(std::mem::take(&mut self.digits)));
        }
        self.deadline = Some(now + self.rules.inter_digit_timeout);
        None
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }

    /// Ends the collection if its deadline has passed.
    pub fn handle_timeout(&mut self, now: Instant) -> Option<Collected> {
        match self.deadline {
            Some(deadline) if deadline <= now => {
                self.deadline = None;
                Some(if self.digits.is_empty() {
                    Collected::NoInput
                } else {
                    Collected::Input(std::mem::take(&mut self.digits))
                })
            }
            _ => None,
        }
    }

    /// After a pause the timers continue with the time that was left (they stood still).
    pub fn shift(&mut self, by: Duration) {
        if let Some(d) = &mut self.deadline {
            *d += by;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(max: usize, term: Option<char>, timeout_ms: Option<u64>) -> CollectRules {
        CollectRules {
            max_digits: max,
            terminator: term,
            timeout: timeout_ms.map(Duration::from_millis),
            inter_digit_timeout: Duration::from_millis(3000),
        }
    }

    /// Feeds `(ms, input)` pairs where input is a digit or `T` for "timeout check".
    fn drive(r: CollectRules, script: &[(u64, char)]) -> Option<Collected> {
        let t0 = Instant::now();
        let mut c = Collector::new(r, t0);
        for &(ms, input) in script {
            let now = t0 + Duration::from_millis(ms);
            let out = if input == 'T' {
                c.handle_timeout(now)
            } else {
                c.push(input, now)
            };
            if out.is_some() {
                return out;
            }
        }
        None
    }

    type Case = (
        &'static str,
        CollectRules,
        Vec<(u64, char)>,
        Option<Collected>,
    );

    #[test]
    fn table() {
        let input = |s: &str| Some(Collected::Input(s.to_string()));
        let cases: Vec<Case> = vec![
            (
                "single digit menu",
                rules(1, Some('#'), None),
                vec![(0, '3')],
                input("3"),
            ),
            (
                "terminator ends early",
                rules(15, Some('#'), None),
                vec![(0, '4'), (100, '4'), (200, '#')],
                input("44"),
            ),
            (
                "terminator alone",
                rules(5, Some('#'), None),
                vec![(0, '#')],
                input(""),
            ),
            (
                "max digits ends",
                rules(3, Some('#'), None),
                vec![(0, '1'), (1, '2'), (2, '3')],
                input("123"),
            ),
            (
                "no terminator: # is a digit",
                rules(2, None, None),
                vec![(0, '#'), (1, '1')],
                input("#1"),
            ),
            (
                "first digit timeout",
                rules(4, Some('#'), Some(5000)),
                vec![(4999, 'T'), (5000, 'T')],
                Some(Collected::NoInput),
            ),
            (
                "inter digit timeout keeps digits",
                rules(10, Some('#'), Some(5000)),
                vec![(1000, '7'), (3999, 'T'), (4000, 'T')],
                input("7"),
            ),
            (
                "each digit restarts the inter digit timer",
                rules(10, Some('#'), None),
                vec![(0, '1'), (2500, '2'), (5000, 'T'), (5500, 'T')],
                input("12"),
            ),
            (
                "no timeout waits forever",
                rules(4, Some('#'), None),
                vec![(1_000_000, 'T')],
                None,
            ),
        ];
        for (name, r, script, want) in cases {
            assert_eq!(drive(r, &script), want, "{name}");
        }
    }

    #[test]
    fn shift_after_pause_keeps_the_time_left() {
        let t0 = Instant::now();
        let mut c = Collector::new(rules(4, Some('#'), Some(1000)), t0);
        c.shift(Duration::from_secs(60));
        assert_eq!(
            c.poll_timeout(),
            Some(t0 + Duration::from_secs(60) + Duration::from_millis(1000))
        );
        assert_eq!(c.handle_timeout(t0 + Duration::from_secs(60)), None);
    }
}
