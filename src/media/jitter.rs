//! A small reorder buffer keyed by extended sequence number.
//!
//! Our consumers (recorder, speech recognition, barge-in detection) are not a loudspeaker:
//! they want frames in order as soon as possible, not smoothed playout. So in-order frames
//! leave immediately and only a hole makes the buffer wait, for at most `depth` after the
//! hole was noticed; then the missing frame is released as a gap the consumer fills with
//! silence.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tracing::debug;

use super::codec::{FRAME_MS, FRAME_SAMPLES};

/// Longer holes are not filled frame by frame (a sender that jumps seconds ahead is not
/// "losing" audio we should pad).
const MAX_GAP_FRAMES: u64 = 50;

/// What occupies one sequence number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A decoded audio frame.
    Audio { timestamp: u32, samples: Vec<i16> },
    /// A packet that is part of the stream but carries no audio (telephone-event, comfort
    /// noise); it fills its slot so it is not mistaken for loss.
    Skip,
}

/// What the buffer hands to the consumer, in sequence order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    Audio {
        timestamp: u32,
        samples: Vec<i16>,
    },
    /// A frame that never arrived in time: `samples` of silence at (estimated) `timestamp`.
    Gap {
        timestamp: u32,
        samples: usize,
    },
}

/// Outcome of [`JitterBuffer::insert`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Insert {
    Accepted,
    /// That sequence number is already waiting in the buffer.
    Duplicate,
    /// Its slot was already released (played or declared lost).
    TooLate,
}

/// The reorder buffer for one stream.
#[derive(Debug)]
pub struct JitterBuffer {
    depth: Duration,
    /// Hold at most this many frames beyond a hole before giving up on it early.
    capacity: u64,
    next: Option<u64>,
    pending: BTreeMap<u64, (Instant, Entry)>,
    /// RTP timestamp the next frame should carry, from the last released one.
    expect_ts: Option<u32>,
    frame_len: usize,
}

impl JitterBuffer {
    pub fn new(depth: Duration) -> Self {
        let depth_frames = depth.as_millis() / u128::from(FRAME_MS);
        JitterBuffer {
            depth,
            capacity: u64::try_from(depth_frames).unwrap_or(u64::MAX / 4) * 2 + 2,
            next: None,
            pending: BTreeMap::new(),
            expect_ts: None,
            frame_len: FRAME_SAMPLES,
        }
    }

    /// Queues the packet with extended sequence number `ext`. The first insert after
    /// construction or [`drain`](Self::drain) defines where the stream starts.
    pub fn insert(&mut self, ext: u64, entry: Entry, now: Instant) -> Insert {
        match self.next {
            None => self.next = Some(ext),
            Some(next) if ext < next => return Insert::TooLate,
            Some(_) => {}
        }
        if self.pending.contains_key(&ext) {
            return Insert::Duplicate;
        }
        self.pending.insert(ext, (now, entry));
        Insert::Accepted
    }

    /// The next frame that can leave at `now`, if any. Call until `None`.
    pub fn pop(&mut self, now: Instant) -> Option<Released> {
        loop {
            let next = self.next?;
            let (&first, _) = self.pending.first_key_value()?;
            if first == next {
                let (_, (_, entry)) = self.pending.pop_first()?;
                self.next = Some(next + 1);
                match entry {
                    Entry::Skip => continue,
                    Entry::Audio { timestamp, samples } => {
                        if !samples.is_empty() {
                            self.frame_len = samples.len();
                        }
                        self.expect_ts = Some(timestamp.wrapping_add(self.frame_len as u32));
                        return Some(Released::Audio { timestamp, samples });
                    }
                }
            }
            // A hole at `next`: wait for it until its time has passed or we hold too much.
            let (&last, _) = self.pending.last_key_value()?;
            let overfull = last - next >= self.capacity;
            if !overfull && self.hole_deadline().is_some_and(|d| now < d) {
                return None;
            }
            let mut next = next;
            if first - next > MAX_GAP_FRAMES {
                debug!(
                    missing = first - next,
                    "RTP sequence gap too long to fill; skipping"
                );
                next = first - MAX_GAP_FRAMES;
                self.expect_ts = None;
            }
            let timestamp = self.gap_timestamp(next);
            self.next = Some(next + 1);
            self.expect_ts = Some(timestamp.wrapping_add(self.frame_len as u32));
            return Some(Released::Gap {
                timestamp,
                samples: self.frame_len,
            });
        }
    }

    /// When a waiting hole will be given up on (the next time `pop` can make progress).
    pub fn next_deadline(&self) -> Option<Instant> {
        let (&first, _) = self.pending.first_key_value()?;
        if Some(first) == self.next {
            // Releasable right away; callers pop after every insert, so this is transient.
            return self.pending.values().map(|(t, _)| *t).min();
        }
        self.hole_deadline()
    }

    /// Everything still buffered, in order, ignoring holes; the buffer starts afresh.
    /// Used when the stream is replaced (new SSRC or sequence restart).
    pub fn drain(&mut self) -> Vec<Released> {
        let out = std::mem::take(&mut self.pending)
            .into_values()
            .filter_map(|(_, e)| match e {
                Entry::Audio { timestamp, samples } => Some(Released::Audio { timestamp, samples }),
                Entry::Skip => None,
            })
            .collect();
        self.next = None;
        self.expect_ts = None;
        out
    }

    /// Frames waiting for an earlier hole.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// A hole is noticed when the first packet beyond it arrives; it waits `depth` from then.
    fn hole_deadline(&self) -> Option<Instant> {
        let noticed = self.pending.values().map(|(t, _)| *t).min()?;
        Some(noticed + self.depth)
    }

    /// Best guess of the RTP timestamp for the missing frame `seq`.
    fn gap_timestamp(&self, seq: u64) -> u32 {
        if let Some(ts) = self.expect_ts {
            return ts;
        }
        // Count back from the first buffered audio frame.
        self.pending
            .iter()
            .find_map(|(&k, (_, e))| match e {
                Entry::Audio { timestamp, .. } => {
                    let frames = (k - seq) as u32;
                    Some(timestamp.wrapping_sub(frames.wrapping_mul(self.frame_len as u32)))
                }
                Entry::Skip => None,
            })
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPTH: Duration = Duration::from_millis(60);

    fn audio(ts: u32) -> Entry {
        Entry::Audio {
            timestamp: ts,
            samples: vec![ts as i16; 160],
        }
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn pop_all(jb: &mut JitterBuffer, now: Instant) -> Vec<(char, u32)> {
        std::iter::from_fn(|| jb.pop(now))
            .map(|r| match r {
                Released::Audio { timestamp, .. } => ('a', timestamp),
                Released::Gap { timestamp, samples } => {
                    assert_eq!(samples, 160);
                    ('g', timestamp)
                }
            })
            .collect()
    }

    #[test]
    fn in_order_frames_leave_immediately() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(DEPTH);
        for i in 0..5u64 {
            assert_eq!(
                jb.insert(100 + i, audio(i as u32 * 160), ms(t0, i * 20)),
                Insert::Accepted
            );
            assert_eq!(
                pop_all(&mut jb, ms(t0, i * 20)),
                vec![('a', i as u32 * 160)]
            );
        }
        assert!(jb.is_empty());
        assert_eq!(jb.next_deadline(), None);
    }

    #[test]
    fn reordered_frames_come_out_in_order() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(DEPTH);
        jb.insert(1, audio(0), t0);
        assert_eq!(pop_all(&mut jb, t0), vec![('a', 0)]);
        jb.insert(3, audio(320), ms(t0, 20));
        jb.insert(4, audio(480), ms(t0, 25));
        assert_eq!(pop_all(&mut jb, ms(t0, 25)), vec![]);
        assert_eq!(jb.next_deadline(), Some(ms(t0, 80)));
        jb.insert(2, audio(160), ms(t0, 30));
        assert_eq!(
            pop_all(&mut jb, ms(t0, 30)),
            vec![('a', 160), ('a', 320), ('a', 480)]
        );
        // Slot 2 has been played: a second copy is too late, a pending one a duplicate.
        assert_eq!(jb.insert(2, audio(160), ms(t0, 31)), Insert::TooLate);
        jb.insert(6, audio(800), ms(t0, 40));
        assert_eq!(jb.insert(6, audio(800), ms(t0, 41)), Insert::Duplicate);
    }

    #[test]
    fn loss_becomes_gap_after_depth() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(DEPTH);
        jb.insert(10, audio(1000), t0);
        pop_all(&mut jb, t0);
        // 11 and 12 lost.
        jb.insert(13, audio(1480), ms(t0, 60));
        assert_eq!(pop_all(&mut jb, ms(t0, 119)), vec![]);
        assert_eq!(jb.next_deadline(), Some(ms(t0, 120)));
        assert_eq!(
            pop_all(&mut jb, ms(t0, 120)),
            vec![('g', 1160), ('g', 1320), ('a', 1480)]
        );
        // The lost frame arriving afterwards is too late.
        assert_eq!(jb.insert(11, audio(1160), ms(t0, 130)), Insert::TooLate);
    }

    #[test]
    fn each_hole_waits_from_when_it_was_noticed() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(DEPTH);
        jb.insert(1, audio(0), t0);
        pop_all(&mut jb, t0);
        jb.insert(3, audio(320), ms(t0, 40));
        jb.insert(5, audio(640), ms(t0, 80));
        assert_eq!(pop_all(&mut jb, ms(t0, 100)), vec![('g', 160), ('a', 320)]);
        assert_eq!(jb.next_deadline(), Some(ms(t0, 140)));
        assert_eq!(pop_all(&mut jb, ms(t0, 139)), vec![]);
        assert_eq!(pop_all(&mut jb, ms(t0, 140)), vec![('g', 480), ('a', 640)]);
    }

    #[test]
    fn overfull_buffer_gives_up_early() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(DEPTH); // capacity 8 frames
        jb.insert(0, audio(0), t0);
        pop_all(&mut jb, t0);
        for s in 2..=8u64 {
            jb.insert(s, audio(s as u32 * 160), t0);
        }
        assert_eq!(pop_all(&mut jb, t0), vec![]);
        jb.insert(9, audio(9 * 160), t0);
        let out = pop_all(&mut jb, t0);
        assert_eq!(out.len(), 9);
        assert_eq!(out[0], ('g', 160));
    }

    #[test]
    fn skip_entries_fill_their_slot() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(DEPTH);
        jb.insert(1, audio(0), t0);
        jb.insert(2, Entry::Skip, t0);
        jb.insert(3, audio(480), t0);
        assert_eq!(pop_all(&mut jb, t0), vec![('a', 0), ('a', 480)]);
    }

    #[test]
    fn long_gap_is_clamped() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(DEPTH);
        jb.insert(0, audio(0), t0);
        pop_all(&mut jb, t0);
        jb.insert(1000, audio(160_000), t0);
        let out = pop_all(&mut jb, ms(t0, 60));
        assert_eq!(out.len() as u64, MAX_GAP_FRAMES + 1);
        // Gap timestamps count back from the frame after the hole.
        assert_eq!(out[0], ('g', 160_000 - 50 * 160));
        assert_eq!(out[50], ('a', 160_000));
    }

    #[test]
    fn drain_returns_pending_audio_and_restarts() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(DEPTH);
        jb.insert(1, audio(0), t0);
        pop_all(&mut jb, t0);
        jb.insert(3, audio(320), t0);
        jb.insert(4, Entry::Skip, t0);
        jb.insert(5, audio(640), t0);
        let drained = jb.drain();
        assert_eq!(drained.len(), 2);
        assert!(jb.is_empty());
        // A new stream may start at any number, even a lower one.
        assert_eq!(jb.insert(0, audio(9), t0), Insert::Accepted);
        assert_eq!(pop_all(&mut jb, t0), vec![('a', 9)]);
    }
}
