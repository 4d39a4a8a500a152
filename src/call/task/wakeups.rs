//! Which of the call task's inputs woke it.
//!
//! The call task waits on about ten inputs (SIP, media events, the caller-audio tap, the far
//! leg, the API, async results, recorder events, the bot's socket, its timer). A `select!`
//! polls every one of them on every wake-up, and a call bridged to a WebSocket bot wakes
//! about 100 times a second (a caller frame and a bot frame every 20 ms): polling the idle
//! channels was about 15 % of the gateway's CPU on those calls (perf, bench profile W).
//!
//! So each input is polled with a waker of its own, which marks the input as signalled
//! before it wakes the task, and the task polls only the inputs marked since it last
//! looked (all of them at first). Inputs are taken round-robin, so a busy one cannot starve
//! the others.

use futures::task::AtomicWaker;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Wake, Waker};

/// The inputs, as bit positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(super) enum Source {
    Leg = 0,
    Media,
    Tap,
    Far,
    Control,
    Inbox,
    Recorder,
    Flow,
    Timer,
}

pub(super) const INPUTS: [Source; 9] = [
    Source::Leg,
    Source::Media,
    Source::Tap,
    Source::Far,
    Source::Control,
    Source::Inbox,
    Source::Recorder,
    Source::Flow,
    Source::Timer,
];

const ALL: u32 = (1 << INPUTS.len()) - 1;

#[derive(Default)]
struct Signals {
    marked: AtomicU32,
    task: AtomicWaker,
}

struct InputWaker {
    signals: Arc<Signals>,
    bit: u32,
}

impl Wake for InputWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.signals.marked.fetch_or(self.bit, Ordering::AcqRel);
        self.signals.task.wake();
    }
}

/// The marks, one waker per input, and where the next round starts.
pub(super) struct Wakeups {
    signals: Arc<Signals>,
    wakers: [Waker; INPUTS.len()],
    next: usize,
}

impl Wakeups {
    /// Every input marked: each is polled once before the task first waits.
    pub(super) fn new() -> Self {
        let signals = Arc::new(Signals::default());
        signals.marked.store(ALL, Ordering::Release);
        // Input `i` is bit `i` (`INPUTS[i] as u32 == i`, which `context` relies on too).
        let wakers = std::array::from_fn(|i| {
            Waker::from(Arc::new(InputWaker {
                signals: signals.clone(),
                bit: 1 << i,
            }))
        });
        Wakeups {
            signals,
            wakers,
            next: 0,
        }
    }

    /// Marks `input` to be polled (it was replaced, reset, or may have more waiting).
    pub(super) fn mark(&self, input: Source) {
        self.signals
            .marked
            .fetch_or(1 << input as u32, Ordering::AcqRel);
    }

    /// Starts a poll of the task: registers its waker, then takes the marks (in this order,
    /// so a mark set meanwhile wakes the task again). Returns the inputs to poll, in
    /// round-robin order from where the last poll stopped.
    pub(super) fn begin(&mut self, cx: &Context<'_>) -> Round {
        self.signals.task.register(cx.waker());
        let marked = self.signals.marked.swap(0, Ordering::AcqRel);
        Round {
            marked,
            start: self.next,
            k: 0,
        }
    }

    /// `input` gave the task something: the next round starts after it, and what the round
    /// did not poll yet stays marked (with `input` itself, which may have more).
    pub(super) fn end(&mut self, input: Source, round: Round) {
        self.next = (input as usize + 1) % INPUTS.len();
        let left = round.unpolled() | 1 << input as u32;
        self.signals.marked.fetch_or(left, Ordering::AcqRel);
    }

    /// The context to poll `input` with: its waker marks it.
    pub(super) fn context(&self, input: Source) -> Context<'_> {
        Context::from_waker(&self.wakers[input as usize])
    }
}

/// The marked inputs of one poll, in the order they are polled.
pub(super) struct Round {
    marked: u32,
    start: usize,
    k: usize,
}

impl Round {
    fn unpolled(&self) -> u32 {
        (self.k..INPUTS.len())
            .map(|k| 1 << ((self.start + k) % INPUTS.len()))
            .fold(0, |acc, b| acc | b)
            & self.marked
    }
}

impl Iterator for Round {
    type Item = Source;

    fn next(&mut self) -> Option<Source> {
        while self.k < INPUTS.len() {
            let i = (self.start + self.k) % INPUTS.len();
            self.k += 1;
            if self.marked & (1 << i) != 0 {
                return Some(INPUTS[i]);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct CountingWaker(AtomicUsize);
    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn task() -> (Arc<CountingWaker>, Waker) {
        let c = Arc::new(CountingWaker(AtomicUsize::new(0)));
        (c.clone(), Waker::from(c))
    }

    #[test]
    fn input_i_is_bit_i() {
        for (i, input) in INPUTS.iter().enumerate() {
            assert_eq!(*input as usize, i, "{input:?}");
        }
    }

    #[test]
    fn every_input_is_polled_first_then_only_those_that_signalled() {
        let (count, waker) = task();
        let cx = Context::from_waker(&waker);
        let mut w = Wakeups::new();
        let first: Vec<Source> = w.begin(&cx).collect();
        assert_eq!(first, INPUTS.to_vec());
        // Nothing signalled: nothing to poll.
        assert_eq!(w.begin(&cx).count(), 0);
        // The tap's waker fires (a caller frame): the task is woken, and polls only the tap.
        w.context(Source::Tap).waker().wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert_eq!(w.begin(&cx).collect::<Vec<_>>(), vec![Source::Tap]);
        assert_eq!(w.begin(&cx).count(), 0);
    }

    #[test]
    fn a_ready_input_stays_marked_and_the_rest_of_the_round_is_kept() {
        let (_count, waker) = task();
        let cx = Context::from_waker(&waker);
        let mut w = Wakeups::new();
        let _ = w.begin(&cx).count();
        w.mark(Source::Leg);
        w.mark(Source::Flow);
        w.mark(Source::Timer);
        let mut round = w.begin(&cx);
        assert_eq!(round.next(), Some(Source::Leg));
        // Leg gave an event: the round stops there. Flow and Timer were not polled.
        w.end(Source::Leg, round);
        // Next round starts after Leg, so Flow comes first and Leg (it may have more) last.
        assert_eq!(
            w.begin(&cx).collect::<Vec<_>>(),
            vec![Source::Flow, Source::Timer, Source::Leg]
        );
    }

    #[test]
    fn a_busy_input_cannot_starve_the_others() {
        let (_count, waker) = task();
        let cx = Context::from_waker(&waker);
        let mut w = Wakeups::new();
        let _ = w.begin(&cx).count();
        // Put the round's start just before Flow, the worst place for Leg.
        w.mark(Source::Recorder);
        let mut round = w.begin(&cx);
        assert_eq!(round.next(), Some(Source::Recorder));
        w.end(Source::Recorder, round);
        let _ = w.begin(&cx).count();
        // The bot floods (Flow is ready every time) while a BYE (Leg) is waiting.
        w.mark(Source::Flow);
        w.mark(Source::Leg);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let mut round = w.begin(&cx);
            let first = round.next().unwrap();
            seen.push(first);
            w.end(first, round);
            w.mark(Source::Flow);
        }
        assert_eq!(seen, vec![Source::Flow, Source::Leg]);
    }
}
