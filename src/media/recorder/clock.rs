//! The IO-free heart of recording: turns the media task's 20 ms ticks into a gap-free run of
//! audio slots so the file's length tracks wall time, whatever the ticks did.
//!
//! Every slot is exactly one 20 ms frame. A tick is placed in the next free slot as long as
//! that slot is within [`TOLERANCE_SLOTS`] of where wall time says it belongs: this absorbs
//! jitter and bursts of late ticks (tokio's `MissedTickBehavior::Burst`) without moving audio.
//! When the recording has fallen further behind (ticks were lost or skipped), the missing slots
//! are filled with silence. A tick that runs further ahead than the tolerance is dropped and
//! counted. `finish` pads the tail up to the stop time, so the duration never drifts from wall
//! time by more than the tolerance.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::media::codec::{FRAME_MS, FRAME_SAMPLES};

/// How far (in 20 ms slots) the written audio may lag or lead wall time before the clock
/// corrects. 3 slots = 60 ms, inside the contract's 100 ms budget.
pub const TOLERANCE_SLOTS: u64 = 3;

const SLOT: Duration = Duration::from_millis(FRAME_MS);

/// How the two sides of the call land in the file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelMode {
    /// Two channels: left = caller, right = bot / far leg (the contract's default).
    #[default]
    Stereo,
    /// One channel: caller and bot summed with saturation.
    Mixed,
}

impl ChannelMode {
    /// Number of WAV channels this mode writes.
    pub fn channels(self) -> u16 {
        match self {
            ChannelMode::Stereo => 2,
            ChannelMode::Mixed => 1,
        }
    }

    /// Samples in one 20 ms slot across all channels.
    pub fn samples_per_slot(self) -> usize {
        FRAME_SAMPLES * usize::from(self.channels())
    }
}

/// What to append for one tick, in order: `silence_slots` slots of silence, then `frame`
/// (one slot of interleaved samples) if there is real audio. A tick whose two sides are both
/// silent comes back as one more silence slot and no frame, so silence costs no allocation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Aligned {
    pub silence_slots: u64,
    pub frame: Option<Vec<i16>>,
}

impl Aligned {
    /// Slots this output occupies in the file.
    pub fn slots(&self) -> u64 {
        self.silence_slots + u64::from(self.frame.is_some())
    }
}

/// The aligner. Feed it every tick with the tick's `now`; it never looks at a real clock.
#[derive(Debug)]
pub struct RecordingClock {
    start: Instant,
    mode: ChannelMode,
    /// Slots already handed out (audio or silence).
    slots: u64,
    dropped_early: u64,
}

impl RecordingClock {
    pub fn new(start: Instant, mode: ChannelMode) -> Self {
        RecordingClock {
            start,
            mode,
            slots: 0,
            dropped_early: 0,
        }
    }

    pub fn mode(&self) -> ChannelMode {
        self.mode
    }

    /// Slots emitted so far (audio plus silence).
    pub fn slots(&self) -> u64 {
        self.slots
    }

    /// Ticks dropped because they ran more than the tolerance ahead of wall time.
    pub fn dropped_early(&self) -> u64 {
        self.dropped_early
    }

    /// Places one tick. `left` is the caller, `right` the bot / far leg; `None` is silence.
    /// Frames shorter than 20 ms are padded with silence, longer ones are cut.
    pub fn tick(&mut self, now: Instant, left: Option<&[i16]>, right: Option<&[i16]>) -> Aligned {
        let due = self.slot_index(now);
        if self.slots > due + TOLERANCE_SLOTS {
            self.dropped_early += 1;
            tracing::debug!(
                slots = self.slots,
                due,
                "recording tick ahead of wall time, dropped"
            );
            return Aligned::default();
        }
        let mut silence_slots = if due > self.slots + TOLERANCE_SLOTS {
            due - self.slots
        } else {
            0
        };
        let frame = match (left, right) {
            (None, None) => {
                silence_slots += 1;
                None
            }
            _ => Some(self.compose(left, right)),
        };
        let out = Aligned {
            silence_slots,
            frame,
        };
        self.slots += out.slots();
        out
    }

    /// Silence slots needed so the recording ends at `now` (rounded to the nearest slot).
    /// Never negative: a recording already ahead is left as it is (at most the tolerance).
    pub fn finish(&mut self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        let target = (elapsed + SLOT / 2).as_nanos() / SLOT.as_nanos();
        let target = u64::try_from(target).unwrap_or(u64::MAX);
        let pad = target.saturating_sub(self.slots);
        self.slots += pad;
        pad
    }

    /// The slot a tick at `now` belongs to: the slot whose 20 ms window contains `now`.
    fn slot_index(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start);
        u64::try_from(elapsed.as_nanos() / SLOT.as_nanos()).unwrap_or(u64::MAX)
    }

    fn compose(&self, left: Option<&[i16]>, right: Option<&[i16]>) -> Vec<i16> {
        let sample = |side: Option<&[i16]>, i: usize| side.and_then(|s| s.get(i)).copied();
        match self.mode {
            ChannelMode::Stereo => {
                let mut out = Vec::with_capacity(FRAME_SAMPLES * 2);
                for i in 0..FRAME_SAMPLES {
                    out.push(sample(left, i).unwrap_or(0));
                    out.push(sample(right, i).unwrap_or(0));
                }
                out
            }
            ChannelMode::Mixed => (0..FRAME_SAMPLES)
                .map(|i| {
                    sample(left, i)
                        .unwrap_or(0)
                        .saturating_add(sample(right, i).unwrap_or(0))
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn frame(v: i16) -> Vec<i16> {
        vec![v; FRAME_SAMPLES]
    }

    /// Runs ticks at the given offsets (ms), then stops at `stop_ms`; returns total slots.
    fn run(offsets: &[u64], stop_ms: u64) -> (RecordingClock, Vec<Aligned>, u64) {
        let t0 = Instant::now();
        let mut clock = RecordingClock::new(t0, ChannelMode::Stereo);
        let f = frame(1);
        let outs: Vec<_> = offsets
            .iter()
            .map(|&o| clock.tick(t0 + ms(o), Some(&f), None))
            .collect();
        let pad = clock.finish(t0 + ms(stop_ms));
        (clock, outs, pad)
    }

    fn assert_duration_close(slots: u64, wall_ms: u64) {
        let dur = slots * FRAME_MS;
        assert!(
            dur.abs_diff(wall_ms) <= 100,
            "duration {dur} ms vs wall {wall_ms} ms"
        );
    }

    #[test]
    fn steady_ticks_fill_one_slot_each() {
        let offsets: Vec<u64> = (0..50).map(|k| k * 20 + 3).collect();
        let (clock, outs, pad) = run(&offsets, 1000);
        assert!(outs
            .iter()
            .all(|o| o.silence_slots == 0 && o.frame.is_some()));
        assert_eq!(pad, 0);
        assert_eq!(clock.slots(), 50);
    }

    #[test]
    fn lost_ticks_become_silence_not_skips() {
        // Ticks 0..10, then nothing for 500 ms, then ticks resume on schedule.
        let mut offsets: Vec<u64> = (0..10).map(|k| k * 20).collect();
        offsets.extend((35..50).map(|k| k * 20 + 1));
        let (clock, outs, pad) = run(&offsets, 1000);
        assert_eq!(outs[10].silence_slots, 25, "gap filled with silence");
        assert_eq!(pad, 0);
        assert_eq!(clock.slots(), 50);
        assert_duration_close(clock.slots(), 1000);
    }

    #[test]
    fn burst_of_late_ticks_keeps_audio_contiguous() {
        // Ticks 5, 6, 7 all fire late at 150 ms (tokio burst catch-up): no silence is inserted
        // between them because the lag stays within the tolerance.
        let offsets = [0, 20, 40, 60, 80, 150, 150, 150, 160, 180];
        let (clock, outs, pad) = run(&offsets, 200);
        assert!(outs.iter().all(|o| o.silence_slots == 0));
        assert_eq!(clock.slots(), 10);
        assert_eq!(pad, 0);
    }

    #[test]
    fn ticks_running_ahead_are_dropped_and_counted() {
        // Ten ticks all at t=0: only 1 + TOLERANCE_SLOTS may be written ahead of wall time.
        let offsets = [0; 10];
        let (clock, outs, _) = run(&offsets, 0);
        let written = outs.iter().filter(|o| o.frame.is_some()).count() as u64;
        assert_eq!(written, 1 + TOLERANCE_SLOTS);
        assert_eq!(clock.dropped_early(), 10 - written);
    }

    #[test]
    fn stop_pads_to_wall_time_even_without_ticks() {
        let (clock, _, pad) = run(&[], 5_010);
        assert_eq!(pad, 251, "5010 ms rounds to 251 slots");
        assert_eq!(clock.slots(), 251);
        // Ticks that stop early are padded out too.
        let (clock, _, pad) = run(&[0, 20, 40], 3_000);
        assert_eq!(pad, 147);
        assert_duration_close(clock.slots(), 3_000);
    }

    #[test]
    fn irregular_schedule_tracks_wall_time() {
        // Jittery ticks with periodic stalls of various sizes.
        let mut offsets = Vec::new();
        let mut t = 0u64;
        for k in 0..2_000u64 {
            offsets.push(t + (k * 7) % 13);
            t += if k % 97 == 0 { 20 * (k % 11) + 20 } else { 20 };
        }
        let stop = t;
        let (clock, _, _) = run(&offsets, stop);
        assert_duration_close(clock.slots(), stop);
    }

    #[test]
    fn silent_ticks_allocate_nothing() {
        let t0 = Instant::now();
        let mut clock = RecordingClock::new(t0, ChannelMode::Stereo);
        let out = clock.tick(t0, None, None);
        assert_eq!(
            out,
            Aligned {
                silence_slots: 1,
                frame: None
            }
        );
    }

    #[test]
    fn stereo_interleaves_caller_left_bot_right_and_pads_short_frames() {
        let t0 = Instant::now();
        let mut clock = RecordingClock::new(t0, ChannelMode::Stereo);
        let left: Vec<i16> = (0..FRAME_SAMPLES as i16).collect();
        let out = clock.tick(t0, Some(&left), Some(&[-7; 10]));
        let f = out.frame.unwrap();
        assert_eq!(f.len(), FRAME_SAMPLES * 2);
        assert_eq!(&f[..6], &[0, -7, 1, -7, 2, -7]);
        assert_eq!(f[2 * 10 + 1], 0, "short right frame padded with silence");
        assert_eq!(f[2 * 159], 159);
    }

    #[test]
    fn mixed_mode_sums_with_saturation() {
        let t0 = Instant::now();
        let mut clock = RecordingClock::new(t0, ChannelMode::Mixed);
        let out = clock.tick(
            t0,
            Some(&[30_000, -30_000, 5]),
            Some(&[10_000, -10_000, -2]),
        );
        let f = out.frame.unwrap();
        assert_eq!(f.len(), FRAME_SAMPLES);
        assert_eq!(&f[..4], &[i16::MAX, i16::MIN, 3, 0]);
        let out = clock.tick(t0 + ms(20), None, Some(&[9; FRAME_SAMPLES]));
        assert_eq!(out.frame.unwrap(), vec![9; FRAME_SAMPLES]);
    }
}
