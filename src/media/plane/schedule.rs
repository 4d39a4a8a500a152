//! The media worker's tick schedule, IO-free: when to wake next, and which tick instant a
//! wake-up stands for. Ticks sit on a fixed 20 ms grid. A wake-up is served as the latest
//! grid instant at or before the real time, never an older one: after a stall (the worker
//! not scheduled for a while) the worker does not replay the missed ticks, and what it
//! starts at this tick (a call's send clock, a recording's first slot) is anchored at most
//! one tick before the real time. Anchoring at the overdue tick instead would put a
//! recording's start, and so its length, up to a whole stall before the moment it was asked
//! for: extra slots that never happened.

use std::time::{Duration, Instant};

/// One wake-up of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tick {
    /// The grid instant this wake-up serves: the latest one at or before the real time.
    pub at: Instant,
    /// How late the worker woke for the tick it was sleeping for (pacing).
    pub late: Duration,
    /// Ticks of the grid that passed with no wake-up (a stall).
    pub skipped: u64,
}

/// See the module docs.
#[derive(Debug, Clone)]
pub struct TickSchedule {
    period: Duration,
    next: Instant,
}

impl TickSchedule {
    /// A grid of `period` whose first tick is `start`.
    pub fn new(start: Instant, period: Duration) -> Self {
        TickSchedule {
            period: period.max(Duration::from_micros(1)),
            next: start,
        }
    }

    /// When the worker must wake next.
    pub fn deadline(&self) -> Instant {
        self.next
    }

    /// The worker woke at `now` (at or after [`deadline`](Self::deadline), or early after
    /// a spurious wake-up: then it is served as the deadline's tick all the same).
    pub fn wake(&mut self, now: Instant) -> Tick {
        let due = self.next;
        let late = now.saturating_duration_since(due);
        let behind = u64::try_from(late.as_nanos() / self.period.as_nanos()).unwrap_or(u64::MAX);
        let skip = u32::try_from(behind).unwrap_or(u32::MAX);
        let at = due + self.period * skip;
        self.next = at + self.period;
        Tick {
            at,
            late,
            skipped: behind,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_millis(20);

    #[test]
    fn on_time_wake_ups_serve_their_own_tick() {
        let t0 = Instant::now();
        let mut s = TickSchedule::new(t0, T);
        for k in 0..5u32 {
            let now = t0 + T * k + Duration::from_micros(300);
            let tick = s.wake(now);
            assert_eq!(tick.at, t0 + T * k);
            assert_eq!(tick.late, Duration::from_micros(300));
            assert_eq!(tick.skipped, 0);
            assert_eq!(s.deadline(), t0 + T * (k + 1));
        }
    }

    #[test]
    fn after_a_stall_the_tick_is_the_latest_grid_instant_not_the_overdue_one() {
        let t0 = Instant::now();
        let mut s = TickSchedule::new(t0, T);
        s.wake(t0);
        // Due at 20 ms; the worker is not scheduled until 431 ms.
        let tick = s.wake(t0 + Duration::from_millis(431));
        assert_eq!(tick.at, t0 + Duration::from_millis(420));
        assert_eq!(tick.skipped, 20);
        assert_eq!(tick.late, Duration::from_millis(411));
        // No burst of the missed ticks: the next one is the grid's next.
        assert_eq!(s.deadline(), t0 + Duration::from_millis(440));
        let tick = s.wake(t0 + Duration::from_millis(440));
        assert_eq!(
            (tick.at, tick.skipped),
            (t0 + Duration::from_millis(440), 0)
        );
    }

    #[test]
    fn an_early_wake_up_serves_the_deadline() {
        let t0 = Instant::now();
        let mut s = TickSchedule::new(t0 + T, T);
        let tick = s.wake(t0 + Duration::from_millis(19));
        assert_eq!(tick.at, t0 + T);
        assert_eq!(tick.late, Duration::ZERO);
        assert_eq!(s.deadline(), t0 + T * 2);
    }
}
