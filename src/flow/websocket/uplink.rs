//! The caller's audio on its way to the bot, as a continuous 20 ms frame stream. IO-free.
//!
//! RTP arrives in packets of any size (20 ms, 30 ms, ...) and may stop altogether while the
//! caller is silent (trunks with silence suppression, a muted phone). A bot expects what Twilio
//! gives it: 160-sample frames, 50 a second, for as long as the call lasts: voice-activity
//! detection waits for the trailing silence, and `timestamp` is used as a clock.
//!
//! So the caller's samples are cut into 160-sample frames and sent as soon as a frame is whole
//! (no added latency while audio flows), and this stream's own clock fills silence for every
//! frame that is [`FILL_LAG`] overdue: frame `n` covers `[n × 20, (n + 1) × 20)` ms of media
//! time since [`CallerStream::start`]; if it has not been filled by `start + (n + 1) × 20 ms +
//! FILL_LAG`, it goes out as silence (with whatever partial frame was pending in front).

use super::protocol::FRAME_SAMPLES;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Length of one frame.
pub const FRAME: Duration = Duration::from_millis(20);

/// How overdue a frame must be before silence stands in for it. Larger than the jitter
/// buffer's default hold (60 ms) so that a late packet is not overtaken by a fill and speech
/// is not split by inserted silence.
pub const FILL_LAG: Duration = Duration::from_millis(100);

/// At most this many frames are filled in one go after the clock jumped (a stalled task,
/// a suspended machine): the rest of the gap is skipped, so a bot never gets a flood.
const MAX_CATCH_UP: u64 = 250;

/// One 20 ms frame for the bot.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    /// Position in media time: the frame covers `[index × 20, (index + 1) × 20)` ms since the
    /// stream started.
    pub index: u64,
    pub samples: Vec<i16>,
    /// Made up (wholly or partly) of silence by the stream's clock.
    pub filled: bool,
}

impl Frame {
    /// Media time of the frame's first sample, in ms since the stream started.
    pub fn timestamp_ms(&self) -> u64 {
        self.index * FRAME.as_millis() as u64
    }
}

/// The pacer for one connection's caller audio.
#[derive(Debug, Default)]
pub struct CallerStream {
    started: Option<Instant>,
    /// The index of the next frame to send.
    next: u64,
    pending: Vec<i16>,
    ready: VecDeque<Frame>,
    /// Frames filled with silence since the start (for logs and tests).
    filled: u64,
}

impl CallerStream {
    pub fn new() -> Self {
        Self::default()
    }

    /// (Re)starts the stream at media time 0. Anything pending is dropped.
    pub fn start(&mut self, now: Instant) {
        self.started = Some(now);
        self.next = 0;
        self.pending.clear();
        self.ready.clear();
        self.filled = 0;
    }

    /// Stops the stream: no frames, no timer, until the next [`start`](Self::start).
    pub fn stop(&mut self) {
        self.started = None;
        self.pending.clear();
        self.ready.clear();
    }

    pub fn is_running(&self) -> bool {
        self.started.is_some()
    }

    /// Frames filled with silence since the stream started.
    pub fn filled_frames(&self) -> u64 {
        self.filled
    }

    /// The caller's samples (any count). Whole frames are ready at once.
    pub fn push(&mut self, samples: &[i16]) {
        if self.started.is_none() {
            return;
        }
        self.pending.extend_from_slice(samples);
        let whole = self.pending.len() / FRAME_SAMPLES * FRAME_SAMPLES;
        if whole == 0 {
            return;
        }
        let rest = self.pending.split_off(whole);
        let full = std::mem::replace(&mut self.pending, rest);
        for chunk in full.chunks_exact(FRAME_SAMPLES) {
            self.emit(chunk.to_vec(), false);
        }
    }

    /// When the next frame becomes overdue (only while running).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let started = self.started?;
        Some(started + frames(self.next + 1) + FILL_LAG)
    }

    /// Fills every frame that is overdue at `now` with silence (after any partial frame).
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(started) = self.started else {
            return;
        };
        let elapsed = now.saturating_duration_since(started);
        let Some(since) = elapsed.checked_sub(FILL_LAG) else {
            return;
        };
        // Frames whose end lies at or before `since` are overdue.
        let due = (since.as_millis() / FRAME.as_millis()) as u64;
        if due <= self.next {
            return;
        }
        if due - self.next > MAX_CATCH_UP {
            self.next = due - MAX_CATCH_UP;
        }
        while self.next < due {
            let mut samples = std::mem::take(&mut self.pending);
            samples.resize(FRAME_SAMPLES, 0);
            self.filled += 1;
            self.emit(samples, true);
        }
    }

    /// The next frame to send, in order.
    pub fn poll_frame(&mut self) -> Option<Frame> {
        self.ready.pop_front()
    }

    fn emit(&mut self, samples: Vec<i16>, filled: bool) {
        self.ready.push_back(Frame {
            index: self.next,
            samples,
            filled,
        });
        self.next += 1;
    }
}

fn frames(n: u64) -> Duration {
    FRAME * u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut CallerStream) -> Vec<Frame> {
        std::iter::from_fn(|| s.poll_frame()).collect()
    }

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    #[test]
    fn nothing_before_start() {
        let mut s = CallerStream::new();
        s.push(&[1; 160]);
        assert!(s.poll_frame().is_none());
        assert!(s.poll_timeout().is_none());
    }

    #[test]
    fn whole_frames_leave_at_once_without_waiting_for_the_clock() {
        let t0 = Instant::now();
        let mut s = CallerStream::new();
        s.start(t0);
        s.push(&[7; 160]);
        let f = drain(&mut s);
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].index, f[0].filled, f[0].timestamp_ms()),
            (0, false, 0)
        );
        assert_eq!(f[0].samples, vec![7; 160]);
    }

    #[test]
    fn thirty_ms_packets_become_twenty_ms_frames() {
        let t0 = Instant::now();
        let mut s = CallerStream::new();
        s.start(t0);
        // Four 30 ms packets = 120 ms = six frames, each sample kept in order.
        let mut all = Vec::new();
        for p in 0..4i16 {
            let pkt: Vec<i16> = (0..240).map(|i| p * 240 + i).collect();
            all.extend_from_slice(&pkt);
            s.push(&pkt);
        }
        let f = drain(&mut s);
        assert_eq!(f.len(), 6);
        assert!(f.iter().all(|f| f.samples.len() == 160 && !f.filled));
        let got: Vec<i16> = f.iter().flat_map(|f| f.samples.clone()).collect();
        assert_eq!(got, all);
        let ts: Vec<u64> = f.iter().map(Frame::timestamp_ms).collect();
        assert_eq!(ts, vec![0, 20, 40, 60, 80, 100]);
    }

    #[test]
    fn silence_fills_fifty_frames_a_second_when_the_caller_sends_nothing() {
        let t0 = Instant::now();
        let mut s = CallerStream::new();
        s.start(t0);
        // The first frame is overdue at 20 ms + lag.
        assert_eq!(s.poll_timeout(), Some(ms(t0, 120)));
        s.handle_timeout(ms(t0, 119));
        assert!(s.poll_frame().is_none());
        // Drive the timer as a shell would, for one second past the lag.
        let mut now = t0;
        let mut frames = Vec::new();
        while now < ms(t0, 1100) {
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            frames.extend(drain(&mut s));
        }
        assert_eq!(frames.len(), 50);
        assert!(frames.iter().all(|f| f.filled && f.samples == vec![0; 160]));
        let idx: Vec<u64> = frames.iter().map(|f| f.index).collect();
        assert_eq!(idx, (0..50).collect::<Vec<_>>());
        assert_eq!(s.filled_frames(), 50);
    }

    #[test]
    fn a_partial_frame_is_completed_with_silence_when_the_caller_stops() {
        let t0 = Instant::now();
        let mut s = CallerStream::new();
        s.start(t0);
        s.push(&[5; 240]);
        assert_eq!(drain(&mut s).len(), 1);
        s.handle_timeout(ms(t0, 140));
        let f = drain(&mut s);
        assert_eq!(f.len(), 1);
        assert!(f[0].filled);
        assert_eq!(f[0].index, 1);
        assert_eq!(&f[0].samples[..80], &[5; 80]);
        assert_eq!(&f[0].samples[80..], &[0; 80]);
    }

    #[test]
    fn audio_that_keeps_up_never_triggers_a_fill() {
        let t0 = Instant::now();
        let mut s = CallerStream::new();
        s.start(t0);
        for n in 0..100u64 {
            // Each packet arrives 50 ms late (jitter), still within the lag.
            let now = ms(t0, n * 20 + 70);
            s.handle_timeout(now);
            s.push(&[1; 160]);
        }
        let f = drain(&mut s);
        assert_eq!(f.len(), 100);
        assert!(f.iter().all(|f| !f.filled));
    }

    #[test]
    fn speech_after_a_silence_continues_the_numbering() {
        let t0 = Instant::now();
        let mut s = CallerStream::new();
        s.start(t0);
        s.handle_timeout(ms(t0, 500));
        let filled = drain(&mut s);
        assert_eq!(filled.len(), 20);
        s.push(&[3; 160]);
        let f = drain(&mut s);
        assert_eq!((f[0].index, f[0].filled), (20, false));
    }

    #[test]
    fn a_clock_jump_is_bounded() {
        let t0 = Instant::now();
        let mut s = CallerStream::new();
        s.start(t0);
        s.handle_timeout(ms(t0, 3_600_000));
        let f = drain(&mut s);
        assert_eq!(f.len() as u64, MAX_CATCH_UP);
        // Media time still follows the clock: the last frame is the one just overdue.
        assert_eq!(f.last().unwrap().index, (3_600_000 - 100) / 20 - 1);
    }

    #[test]
    fn stop_and_restart() {
        let t0 = Instant::now();
        let mut s = CallerStream::new();
        s.start(t0);
        s.push(&[1; 100]);
        s.stop();
        assert!(s.poll_timeout().is_none());
        s.handle_timeout(ms(t0, 1000));
        assert!(s.poll_frame().is_none());
        s.start(ms(t0, 1000));
        s.push(&[2; 160]);
        let f = drain(&mut s);
        assert_eq!((f[0].index, f[0].samples[0]), (0, 2));
    }
}
