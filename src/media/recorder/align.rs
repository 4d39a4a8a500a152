//! Places the caller's audio on the recording's timeline by RTP timestamp.
//!
//! The recording advances one slot per 20 ms frame voxgate sends. Caller frames arrive on
//! their own schedule, with jitter. Pairing them first-in-first-out would shift the caller's
//! channel by a frame every time the jitter buffer is briefly empty. Instead each frame gets
//! the slot its RTP timestamp says, anchored on the first frame plus a small cushion; a
//! frame too late for its slot, or a timestamp jump (new stream, long pause), re-anchors.

use crate::media::codec::FRAME_SAMPLES;

/// Samples per RTP frame at 8 kHz / 20 ms.
const FRAME_TS: i64 = 160;
/// Frames held at most (320 ms): a fixed ring, so placing a frame never allocates.
const RING: usize = 16;
/// How far ahead of the current slot a frame may be placed before it counts as a jump.
const MAX_AHEAD: u64 = RING as u64 - 4;

#[derive(Debug, Clone)]
struct Held {
    /// The slot this frame belongs to (`u64::MAX`: empty).
    slot: u64,
    samples: [i16; FRAME_SAMPLES],
}

/// IO-free: `push` caller frames as they are released, `pop` one per recording slot.
#[derive(Debug)]
pub struct CallerAligner {
    cushion: u64,
    /// (RTP timestamp, slot) of the anchor frame.
    anchor: Option<(u32, u64)>,
    ring: Box<[Held]>,
}

impl CallerAligner {
    /// `cushion`: slots between a frame's arrival and its place (absorbs jitter).
    pub fn new(cushion: u64) -> Self {
        CallerAligner {
            cushion: cushion.min(MAX_AHEAD),
            anchor: None,
            ring: vec![
                Held {
                    slot: u64::MAX,
                    samples: [0; FRAME_SAMPLES],
                };
                RING
            ]
            .into_boxed_slice(),
        }
    }

    /// Forgets everything (a new recording starts).
    pub fn reset(&mut self) {
        self.anchor = None;
        for h in self.ring.iter_mut() {
            h.slot = u64::MAX;
        }
    }

    /// A caller frame with its RTP timestamp, released while the recording is at `slot`.
    /// Frames longer than 20 ms are cut, shorter ones padded with silence.
    pub fn push(&mut self, rtp_ts: u32, samples: &[i16], slot: u64) {
        self.push_from(rtp_ts, samples, slot, slot);
    }

    /// [`push`](Self::push) for a reader that has not taken slots from `earliest` on yet:
    /// a frame whose timestamp places it anywhere from `earliest` is kept there (it arrived
    /// late, but in time).
    pub fn push_from(&mut self, rtp_ts: u32, samples: &[i16], slot: u64, earliest: u64) {
        let target = match self.anchor {
            Some((ts0, slot0)) => {
                let delta = rtp_ts.wrapping_sub(ts0) as i32 as i64 / FRAME_TS;
                let t = slot0 as i64 + delta;
                if t < earliest.min(slot) as i64 || t > (slot + MAX_AHEAD) as i64 {
                    None
                } else {
                    Some(t as u64)
                }
            }
            None => None,
        };
        let target = target.unwrap_or_else(|| {
            let t = slot + self.cushion;
            self.anchor = Some((rtp_ts, t));
            t
        });
        let held = &mut self.ring[(target % RING as u64) as usize];
        held.slot = target;
        let n = samples.len().min(FRAME_SAMPLES);
        held.samples[..n].copy_from_slice(&samples[..n]);
        held.samples[n..].fill(0);
    }

    /// The caller frame for `slot`, if one arrived. Call with increasing slots.
    pub fn pop(&mut self, slot: u64) -> Option<&[i16; FRAME_SAMPLES]> {
        let held = &mut self.ring[(slot % RING as u64) as usize];
        if held.slot == slot {
            held.slot = u64::MAX;
            Some(&held.samples)
        } else {
            None
        }
    }

    /// The latest slot below `limit` that holds a frame.
    pub fn last_held_before(&self, limit: u64) -> Option<u64> {
        self.ring
            .iter()
            .map(|h| h.slot)
            .filter(|&s| s < limit)
            .max()
    }

    /// Frames waiting for their slot.
    pub fn held(&self) -> usize {
        self.ring.iter().filter(|h| h.slot != u64::MAX).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(v: i16) -> Vec<i16> {
        vec![v; 160]
    }

    #[test]
    fn jittery_arrivals_keep_their_timestamp_order_and_spacing() {
        let mut a = CallerAligner::new(3);
        // Frames 0..20 (ts 1000 + 160k) arrive in bursts: two, none, one, none, two...
        let mut out = Vec::new();
        let mut k = 0i16;
        for slot in 0..40u64 {
            let tick = slot;
            let arrivals = if tick % 3 == 0 {
                2
            } else if tick % 3 == 1 {
                0
            } else {
                1
            };
            for _ in 0..arrivals {
                if k < 20 {
                    a.push(1000 + 160 * k as u32, &frame(k), slot);
                    k += 1;
                }
            }
            out.push(a.pop(slot).map(|f| f[0]));
        }
        let got: Vec<i16> = out.iter().flatten().copied().collect();
        assert_eq!(got, (0..20).collect::<Vec<_>>(), "{out:?}");
        // Consecutive frames sit in consecutive slots: no shift inside the stream.
        let first = out.iter().position(|f| f.is_some()).unwrap();
        for (i, f) in out[first..first + 20].iter().enumerate() {
            assert_eq!(*f, Some(i as i16), "{out:?}");
        }
    }

    #[test]
    fn a_lost_frame_leaves_a_hole_without_shifting_the_rest() {
        let mut a = CallerAligner::new(2);
        a.push(0, &frame(0), 0);
        a.push(320, &frame(2), 0); // frame 1 never comes
        assert_eq!(a.pop(2).map(|f| f[0]), Some(0));
        assert_eq!(a.pop(3), None);
        assert_eq!(a.pop(4).map(|f| f[0]), Some(2));
    }

    #[test]
    fn late_frames_and_timestamp_jumps_reanchor() {
        let mut a = CallerAligner::new(2);
        a.push(0, &frame(1), 0);
        assert_eq!(a.pop(2).map(|f| f[0]), Some(1));
        // The next frame (target slot 3) only arrives at slot 10: too late, re-anchored.
        a.push(160, &frame(2), 10);
        assert_eq!(a.pop(12).map(|f| f[0]), Some(2));
        // A jump of an hour of timestamps (new stream): re-anchored, not held for ever.
        a.push(28_800_000, &frame(3), 13);
        assert_eq!(a.pop(15).map(|f| f[0]), Some(3));
        // Wrap-around of the 32-bit timestamp is a small step, not a jump.
        let mut b = CallerAligner::new(1);
        b.push(u32::MAX - 159, &frame(7), 0);
        b.push(0, &frame(8), 0);
        assert_eq!(b.pop(1).map(|f| f[0]), Some(7));
        assert_eq!(b.pop(2).map(|f| f[0]), Some(8));
    }

    #[test]
    fn holding_is_bounded() {
        let mut a = CallerAligner::new(1);
        for k in 0..50u32 {
            a.push(k * 160, &frame(1), 0);
        }
        a.push(40 * 160, &frame(1), 0);
        assert!(a.held() <= RING);
    }
}
