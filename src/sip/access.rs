//! Who may start a call, and how fast: trusted source networks (CONTRACT §8), a per-source
//! INVITE rate limit, a budget of answered-but-unconfirmed calls, and scanner detection.
//!
//! Everything here is IO-free and clock-injected; the SIP server asks [`AccessControl`] once
//! per new INVITE (retransmissions never reach it) and holds the returned [`Unconfirmed`]
//! token until the call's ACK arrives or the dialog ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// An IPv4 or IPv6 network, `addr/len` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        // An IPv4 peer on a dual-stack socket shows up as ::ffff:a.b.c.d.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.len))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.len == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.len))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an address or CIDR like \"10.0.0.0/8\""))?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Cidr { net, len })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// Limits applied to new INVITEs (see docs/security.md).
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// `None`: every source may call.
    pub trusted: Option<Vec<Cidr>>,
    /// Sustained new INVITEs per second per source (0: unlimited).
    pub rate_per_source: f64,
    pub burst_per_source: u32,
    pub max_unconfirmed_per_source: usize,
    pub max_unconfirmed: usize,
    /// Lower-case User-Agent substrings that mark a scanner.
    pub scanner_user_agents: Vec<String>,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            trusted: None,
            rate_per_source: 5.0,
            burst_per_source: 20,
            max_unconfirmed_per_source: 4,
            max_unconfirmed: 20,
            scanner_user_agents: Vec::new(),
        }
    }
}

/// What to do with a new INVITE.
#[derive(Debug)]
pub enum Decision {
    /// Go on; hold the token until the ACK (or the end of the dialog).
    Admit(Unconfirmed),
    /// Answer with this status (and Retry-After seconds, if any); start nothing.
    Refuse {
        status: u16,
        retry_after: Option<u32>,
        reason: &'static str,
    },
    /// Send nothing at all (scanners, floods).
    Ignore { reason: &'static str },
}

#[derive(Debug, Default)]
struct SourceState {
    tokens: f64,
    last_refill: Option<Instant>,
    /// Refusals since the last admitted INVITE: a source that ignores Retry-After is a flood.
    refused_in_a_row: u32,
    unconfirmed: usize,
    last_seen: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    sources: HashMap<IpAddr, SourceState>,
    unconfirmed: usize,
    last_sweep: Option<Instant>,
}

/// Shared, thread-safe access state.
#[derive(Debug, Clone)]
pub struct AccessControl {
    config: Arc<AccessConfig>,
    state: Arc<Mutex<State>>,
}

/// A reserved slot in the unconfirmed-call budget; released on drop or [`Self::confirm`].
#[derive(Debug)]
pub struct Unconfirmed {
    source: IpAddr,
    state: Option<Arc<Mutex<State>>>,
}

impl Unconfirmed {
    /// The call was confirmed (ACK): it no longer counts against the budget.
    pub fn confirm(mut self) {
        self.release();
    }

    fn release(&mut self) {
        if let Some(state) = self.state.take() {
            let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
            st.unconfirmed = st.unconfirmed.saturating_sub(1);
            if let Some(s) = st.sources.get_mut(&self.source) {
                s.unconfirmed = s.unconfirmed.saturating_sub(1);
            }
        }
    }
}

impl Drop for Unconfirmed {
    fn drop(&mut self) {
        self.release();
    }
}

impl AccessControl {
    pub fn new(config: AccessConfig) -> Self {
        AccessControl {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    pub fn config(&self) -> &AccessConfig {
        &self.config
    }

    /// Is `ip` in `trusted` (always true when `trusted` is unset)?
    pub fn is_trusted(&self, ip: IpAddr) -> bool {
        match &self.config.trusted {
            None => true,
            Some(nets) => nets.iter().any(|n| n.contains(ip)),
        }
    }

    /// A known scanner, by its User-Agent.
    pub fn is_scanner(&self, user_agent: &str) -> bool {
        let ua = user_agent.to_ascii_lowercase();
        !ua.is_empty()
            && self
                .config
                .scanner_user_agents
                .iter()
                .any(|s| !s.is_empty() && ua.contains(&s.to_ascii_lowercase()))
    }

    /// Decides on a new (not retransmitted) INVITE from `source`.
    pub fn check_invite(&self, source: IpAddr, user_agent: &str, now: Instant) -> Decision {
        if self.is_scanner(user_agent) {
            return Decision::Ignore { reason: "scanner" };
        }
        if !self.is_trusted(source) {
            return Decision::Refuse {
                status: 403,
                retry_after: None,
                reason: "untrusted source",
            };
        }
        let cfg = &self.config;
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        st.sweep(now);
        let total_unconfirmed = st.unconfirmed;
        let s = st.sources.entry(source).or_default();
        s.last_seen = Some(now);
        if cfg.rate_per_source > 0.0 {
            let burst = f64::from(cfg.burst_per_source.max(1));
            let elapsed = s
                .last_refill
                .map(|t| now.saturating_duration_since(t).as_secs_f64())
                .unwrap_or(f64::INFINITY);
            s.tokens = (s.tokens + elapsed * cfg.rate_per_source).min(burst);
            s.last_refill = Some(now);
            if s.tokens < 1.0 {
                s.refused_in_a_row = s.refused_in_a_row.saturating_add(1);
                if s.refused_in_a_row > cfg.burst_per_source.max(1) {
                    return Decision::Ignore {
                        reason: "rate limit (flood)",
                    };
                }
                let wait = ((1.0 - s.tokens) / cfg.rate_per_source).ceil().max(1.0);
                return Decision::Refuse {
                    status: 503,
                    retry_after: Some(wait.min(3600.0) as u32),
                    reason: "rate limit",
                };
            }
        }
        if s.unconfirmed >= cfg.max_unconfirmed_per_source
            || total_unconfirmed >= cfg.max_unconfirmed
        {
            s.refused_in_a_row = s.refused_in_a_row.saturating_add(1);
            return Decision::Refuse {
                status: 503,
                retry_after: Some(5),
                reason: "too many unconfirmed calls",
            };
        }
        if cfg.rate_per_source > 0.0 {
            s.tokens -= 1.0;
        }
        s.refused_in_a_row = 0;
        s.unconfirmed += 1;
        st.unconfirmed += 1;
        Decision::Admit(Unconfirmed {
            source,
            state: Some(self.state.clone()),
        })
    }

    /// Calls answered but not yet ACKed (all sources).
    pub fn unconfirmed(&self) -> usize {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unconfirmed
    }
}

impl State {
    /// Forgets idle sources now and then, so a spoofed-source flood cannot grow the map forever.
    fn sweep(&mut self, now: Instant) {
        const EVERY: Duration = Duration::from_secs(60);
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.sources.retain(|_, s| {
            s.unconfirmed > 0
                || s.last_seen
                    .is_some_and(|t| now.saturating_duration_since(t) < EVERY)
        });
    }
}

/// Logs at most once per `every` per key; counts what it swallowed.
#[derive(Debug, Default)]
pub struct LogLimiter {
    last: Mutex<HashMap<IpAddr, (Instant, u64)>>,
}

impl LogLimiter {
    /// Returns `Some(suppressed since the last log)` when a line may be logged now.
    pub fn allow(&self, key: IpAddr, now: Instant, every: Duration) -> Option<u64> {
        let mut map = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() > 10_000 {
            map.retain(|_, (t, _)| now.saturating_duration_since(*t) < every);
        }
        match map.get_mut(&key) {
            Some((t, n)) if now.saturating_duration_since(*t) < every => {
                *n += 1;
                None
            }
            Some((t, n)) => {
                let suppressed = *n;
                *t = now;
                *n = 0;
                Some(suppressed)
            }
            None => {
                map.insert(key, (now, 0));
                Some(0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_parsing_and_matching() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains(ip("10.1.2.3")));
        assert!(!c.contains(ip("11.0.0.1")));
        assert!(c.contains(ip("::ffff:10.9.9.9")));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains(ip("127.0.0.1")) && !one.contains(ip("127.0.0.2")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("203.0.113.9")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8::1")) && !v6.contains(ip("2001:db9::1")));
        assert!(!v6.contains(ip("10.0.0.1")));
        for bad in ["10.0.0.0/33", "nope", "10.0.0.0/x", "::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn untrusted_sources_get_403_and_scanners_silence() {
        let ac = AccessControl::new(AccessConfig {
            trusted: Some(vec!["127.0.0.1/32".parse().unwrap()]),
            scanner_user_agents: vec!["friendly-scanner".into()],
            ..AccessConfig::default()
        });
        let now = Instant::now();
        assert!(matches!(
            ac.check_invite(ip("127.0.0.7"), "x", now),
            Decision::Refuse { status: 403, .. }
        ));
        assert!(matches!(
            ac.check_invite(ip("127.0.0.1"), "Friendly-Scanner 1.0", now),
            Decision::Ignore { .. }
        ));
        assert!(matches!(
            ac.check_invite(ip("127.0.0.1"), "SIPp", now),
            Decision::Admit(_)
        ));
    }

    #[test]
    fn rate_limit_then_silence_then_recovery() {
        let ac = AccessControl::new(AccessConfig {
            rate_per_source: 2.0,
            burst_per_source: 3,
            max_unconfirmed_per_source: 100,
            max_unconfirmed: 100,
            ..AccessConfig::default()
        });
        let t0 = Instant::now();
        let src = ip("192.0.2.1");
        let mut held = Vec::new();
        for _ in 0..3 {
            match ac.check_invite(src, "", t0) {
                Decision::Admit(u) => held.push(u),
                other => panic!("{other:?}"),
            }
        }
        match ac.check_invite(src, "", t0) {
            Decision::Refuse {
                status: 503,
                retry_after: Some(1),
                ..
            } => {}
            other => panic!("{other:?}"),
        }
        for _ in 0..2 {
            assert!(matches!(
                ac.check_invite(src, "", t0),
                Decision::Refuse { status: 503, .. }
            ));
        }
        assert!(matches!(
            ac.check_invite(src, "", t0),
            Decision::Ignore { .. }
        ));
        // Another source is unaffected.
        assert!(matches!(
            ac.check_invite(ip("192.0.2.2"), "", t0),
            Decision::Admit(_)
        ));
        // Half a second refills one token at 2/s.
        assert!(matches!(
            ac.check_invite(src, "", t0 + Duration::from_millis(500)),
            Decision::Admit(_)
        ));
    }

    #[test]
    fn unconfirmed_budget_per_source_and_total() {
        let ac = AccessControl::new(AccessConfig {
            rate_per_source: 0.0,
            max_unconfirmed_per_source: 2,
            max_unconfirmed: 3,
            ..AccessConfig::default()
        });
        let now = Instant::now();
        let a = ip("192.0.2.1");
        let b = ip("192.0.2.2");
        let Decision::Admit(a1) = ac.check_invite(a, "", now) else {
            panic!()
        };
        let Decision::Admit(_a2) = ac.check_invite(a, "", now) else {
            panic!()
        };
        assert!(matches!(
            ac.check_invite(a, "", now),
            Decision::Refuse { status: 503, .. }
        ));
        let Decision::Admit(b1) = ac.check_invite(b, "", now) else {
            panic!()
        };
        // Total budget (3) is used up.
        assert!(matches!(
            ac.check_invite(b, "", now),
            Decision::Refuse { status: 503, .. }
        ));
        assert_eq!(ac.unconfirmed(), 3);
        a1.confirm();
        drop(b1);
        assert_eq!(ac.unconfirmed(), 1);
        assert!(matches!(ac.check_invite(a, "", now), Decision::Admit(_)));
    }

    #[test]
    fn log_limiter_once_per_window() {
        let l = LogLimiter::default();
        let t = Instant::now();
        let k = ip("192.0.2.1");
        let w = Duration::from_secs(60);
        assert_eq!(l.allow(k, t, w), Some(0));
        assert_eq!(l.allow(k, t + Duration::from_secs(1), w), None);
        assert_eq!(l.allow(k, t + Duration::from_secs(2), w), None);
        assert_eq!(l.allow(k, t + Duration::from_secs(61), w), Some(2));
    }
}
