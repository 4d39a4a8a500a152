//! How late the media workers wake for their ticks: a fixed histogram (50 µs buckets up to
//! 25 ms) of atomics, so recording a tick costs one relaxed add and reading it never stops
//! the workers. Egress pacing is the tick interval plus this lateness.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const BUCKET_US: u64 = 50;
const BUCKETS: usize = 500;

/// Tick lateness of the workers.
#[derive(Debug)]
pub struct Pacing {
    buckets: Vec<AtomicU64>,
    max_us: AtomicU64,
}

/// Percentiles of tick lateness, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PacingSnapshot {
    pub ticks: u64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing {
            buckets: (0..=BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            max_us: AtomicU64::new(0),
        }
    }
}

impl Pacing {
    pub fn record(&self, late: Duration) {
        let us = u64::try_from(late.as_micros()).unwrap_or(u64::MAX);
        let b = usize::try_from(us / BUCKET_US)
            .unwrap_or(BUCKETS)
            .min(BUCKETS);
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    /// Percentiles so far (each the upper edge of its bucket).
    pub fn snapshot(&self) -> PacingSnapshot {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let ticks: u64 = counts.iter().sum();
        let pct = |p: u64| {
            let want = (ticks * p).div_ceil(100).max(1);
            let mut seen = 0;
            for (i, c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return (i as u64 + 1) * BUCKET_US;
                }
            }
            0
        };
        PacingSnapshot {
            ticks,
            p50_us: if ticks == 0 { 0 } else { pct(50) },
            p99_us: if ticks == 0 { 0 } else { pct(99) },
            max_us: self.max_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_tick_lateness() {
        let p = Pacing::default();
        assert_eq!(p.snapshot(), PacingSnapshot::default());
        for _ in 0..98 {
            p.record(Duration::from_micros(120));
        }
        p.record(Duration::from_micros(900));
        p.record(Duration::from_millis(40));
        let s = p.snapshot();
        assert_eq!(
            (s.ticks, s.p50_us, s.p99_us, s.max_us),
            (100, 150, 950, 40_000)
        );
    }
}
