//! The recording feed: what a call's media core runs for its recording. IO-free apart from
//! handing whole blocks (200 ms) to the shared writer with a `try_send`.
//!
//! The recording's timeline is the caller leg's send clock: slot `k` of the file is the
//! 20 ms that starts at `slot0_at + k * 20 ms`. The right channel of slot `k` is the audio
//! sent to the caller in that slot (bot, prompt, far leg, silence, or the silence of a DTMF
//! packet); the left channel is the caller's frame that the [`CallerAligner`] places there
//! by RTP timestamp, anchored on the slot the first frame arrived in. A slot is written
//! [`LAG_SLOTS`] after it ends, so a caller packet up to 40 ms late still lands in its own
//! slot, and at stop every slot is written: no caller packet that arrived before the stop
//! is left out. Slots in which nothing was sent (hold) get the caller only. At stop the
//! file gets `round((stop - slot0_at) / 20 ms)` slots, or up to two more when a caller
//! frame received before the stop sits there; `ended_at` is computed from the slot count,
//! so the duration always equals `ended_at - started_at` (and the wall time within 40 ms).

use std::sync::mpsc::{SyncSender, TrySendError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::align::CallerAligner;
use super::id::RecordingId;
use super::metric;
use super::writer::{self, Job};
use crate::media::codec::{FRAME_MS, FRAME_SAMPLES};

/// Slots per block handed to the writer: 200 ms. Also the most audio a kill -9 loses. Each
/// recording holds one block while it fills (6.25 KiB of stereo), the largest part of what a
/// recording adds to a call's memory (1 s blocks held 31 KiB; docs/performance.md).
pub const BLOCK_SLOTS: usize = 10;
/// Slots a slot waits after its end before it is written (absorbs arrival jitter).
pub const LAG_SLOTS: u64 = 2;
/// Slots past the rounded stop instant that a caller frame received before the stop may
/// still extend the file by (the slot in progress and, by its timestamp, the next one).
const STOP_GRACE_SLOTS: u64 = 2;
/// Sent frames held until their slot is written: a slot waits `LAG_SLOTS` after it is sent,
/// and a burst (a worker catching up after a stall) longer than the ring writes its oldest
/// slots early. The worker pushes the caller frames of a tick before its sent frames, so an
/// early write still pairs a slot with its caller frame.
const RIGHT_RING: usize = 8;
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

    /// Writes one slot: `left` = caller, `right` = bot / far leg; `None` is silence.
    pub fn compose(self, left: Option<&[i16]>, right: Option<&[i16]>, out: &mut [i16]) {
        // Both sides as whole frames (a missing or short side is silence), so the loops
        // below run over fixed-size arrays and vectorise: the per-sample bounds-checked
        // version was 5 % of the gateway's CPU on recorded calls (perf, bench profile A).
        let (l, r) = (padded(left), padded(right));
        match self {
            ChannelMode::Stereo => {
                for ((pair, a), b) in out.chunks_exact_mut(2).zip(l).zip(r) {
                    pair[0] = a;
                    pair[1] = b;
                }
            }
            ChannelMode::Mixed => {
                for ((o, a), b) in out.iter_mut().zip(l).zip(r) {
                    *o = a.saturating_add(b);
                }
            }
        }
    }
}

/// One side of a slot as a whole frame: its samples, then silence.
fn padded(side: Option<&[i16]>) -> [i16; FRAME_SAMPLES] {
    let mut frame = [0i16; FRAME_SAMPLES];
    if let Some(s) = side {
        let n = s.len().min(FRAME_SAMPLES);
        frame[..n].copy_from_slice(&s[..n]);
    }
    frame
}

/// Where the feed's blocks go: the writer's queue (bounded).
pub type WriterTx = SyncSender<Job>;

/// What starting a recording needs on the media side.
#[derive(Debug, Clone)]
pub struct FeedSpec {
    pub id: RecordingId,
    pub mode: ChannelMode,
    pub writer: WriterTx,
}

/// The end of a recording, as the media side saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeedSummary {
    pub slots: u64,
    pub started_at: DateTime<Utc>,
    pub ended_at: DateTime<Utc>,
    /// Slots lost to a full writer queue (written as silence).
    pub overflow_frames: u64,
}

/// A writer job that did not fit in its queue yet.
#[derive(Debug)]
pub struct PendingJob {
    writer: WriterTx,
    job: Job,
}

impl PendingJob {
    /// Tries again; `Some` while the queue is still full.
    pub fn retry(self) -> Option<PendingJob> {
        match self.writer.try_send(self.job) {
            Ok(()) => None,
            Err(TrySendError::Full(job)) => Some(PendingJob {
                writer: self.writer,
                job,
            }),
            Err(TrySendError::Disconnected(_)) => {
                tracing::warn!("recording writer is gone; the recording is left to recovery");
                None
            }
        }
    }
}

/// One recording being fed (see the module docs).
#[derive(Debug)]
pub struct RecordingFeed {
    id: RecordingId,
    mode: ChannelMode,
    writer: WriterTx,
    /// Recording slot 0 is this send slot of the caller leg.
    base_slot: u64,
    slot0_at: Instant,
    started_at: DateTime<Utc>,
    aligner: CallerAligner,
    /// Sent frames by slot, waiting to be written: (slot, frame); `u64::MAX` = free.
    rights: Box<[(u64, [i16; FRAME_SAMPLES])]>,
    block: Option<Box<[i16]>>,
    /// Recording slot of the block's first slot, and slots filled in it.
    block_first: u64,
    filled: usize,
    /// The next recording slot to write.
    next_slot: u64,
    overflow_frames: u64,
    writer_gone: bool,
}

impl RecordingFeed {
    /// Starts at send slot `base_slot`, which begins at `slot0_at` (<= `now`, the instant
    /// `wall_now` was read).
    pub fn new(
        spec: FeedSpec,
        base_slot: u64,
        slot0_at: Instant,
        now: Instant,
        wall_now: DateTime<Utc>,
    ) -> Self {
        let back = now.saturating_duration_since(slot0_at);
        let started_at = wall_now - chrono::Duration::from_std(back).unwrap_or_default();
        RecordingFeed {
            id: spec.id,
            mode: spec.mode,
            writer: spec.writer,
            base_slot,
            slot0_at,
            started_at,
            aligner: CallerAligner::new(0),
            rights: vec![(u64::MAX, [0; FRAME_SAMPLES]); RIGHT_RING].into_boxed_slice(),
            block: None,
            block_first: 0,
            filled: 0,
            next_slot: 0,
            overflow_frames: 0,
            writer_gone: false,
        }
    }

    pub fn id(&self) -> &RecordingId {
        &self.id
    }

    pub fn started_at(&self) -> DateTime<Utc> {
        self.started_at
    }

    /// Slots written so far.
    pub fn slots(&self) -> u64 {
        self.next_slot
    }

    pub fn overflow_frames(&self) -> u64 {
        self.overflow_frames
    }

    /// A caller frame released by the jitter buffer at `now`.
    pub fn caller_frame(&mut self, rtp_ts: u32, samples: &[i16], now: Instant) {
        let arrival = self.slot_of(now);
        self.aligner
            .push_from(rtp_ts, samples, arrival, self.next_slot);
    }

    /// The audio sent to the caller in send slot `send_slot`.
    pub fn sent(&mut self, send_slot: u64, right: &[i16]) {
        let Some(k) = send_slot.checked_sub(self.base_slot) else {
            return;
        };
        if k < self.next_slot {
            return;
        }
        // A burst longer than the ring: write the oldest slots now.
        self.fill_to(k.saturating_sub(RIGHT_RING as u64 - 1));
        let held = &mut self.rights[(k % RIGHT_RING as u64) as usize];
        held.0 = k;
        let n = right.len().min(FRAME_SAMPLES);
        held.1[..n].copy_from_slice(&right[..n]);
        held.1[n..].fill(0);
    }

    /// Writes every slot that ended at least [`LAG_SLOTS`] ago.
    pub fn advance(&mut self, now: Instant) {
        let due = self.slot_of(now).saturating_sub(LAG_SLOTS);
        self.fill_to(due);
    }

    /// Ends the recording at `now`: pads or trims to wall time, hands the last block and
    /// the end to the writer. A `Finish` that did not fit in the writer's queue comes back
    /// to be retried on a later tick (the media worker never waits for the writer).
    pub fn stop(mut self, now: Instant) -> (FeedSummary, Option<PendingJob>) {
        let elapsed = now.saturating_duration_since(self.slot0_at);
        let mut total =
            u64::try_from((elapsed + SLOT / 2).as_nanos() / SLOT.as_nanos()).unwrap_or(u64::MAX);
        // A caller frame that arrived before the stop but sits in the slot in progress (or,
        // by its timestamp, the next one) is kept: the file runs to the end of its slot.
        if let Some(last) = self
            .aligner
            .last_held_before(total.saturating_add(STOP_GRACE_SLOTS))
        {
            total = total.max(last + 1);
        }
        self.fill_to(total);
        if self.next_slot > total {
            // At most the slot in progress: trim it from the unsent block, or let the
            // writer truncate it.
            let extra = usize::try_from(self.next_slot - total).unwrap_or(usize::MAX);
            self.filled = self.filled.saturating_sub(extra);
            self.next_slot = total;
        }
        self.flush_block();
        let ended_at = self.started_at
            + chrono::Duration::from_std(SLOT * u32::try_from(total).unwrap_or(u32::MAX))
                .unwrap_or_default();
        let summary = FeedSummary {
            slots: total,
            started_at: self.started_at,
            ended_at,
            overflow_frames: self.overflow_frames,
        };
        let job = Job::Finish {
            id: self.id.clone(),
            started_at: summary.started_at,
            ended_at: summary.ended_at,
            slots: total,
            overflow_frames: self.overflow_frames,
        };
        let pending = if self.writer_gone {
            None
        } else {
            PendingJob {
                writer: self.writer.clone(),
                job,
            }
            .retry()
        };
        (summary, pending)
    }

    /// The slot whose window contains `now`.
    fn slot_of(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.slot0_at);
        u64::try_from(elapsed.as_nanos() / SLOT.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Writes every slot before `slot`.
    fn fill_to(&mut self, slot: u64) {
        while self.next_slot < slot {
            self.write_slot();
        }
    }

    fn write_slot(&mut self) {
        let per_slot = self.mode.samples_per_slot();
        if self.block.is_none() {
            self.block = Some(writer::take_block(self.mode));
            self.block_first = self.next_slot;
            self.filled = 0;
        }
        let k = self.next_slot;
        let held = &mut self.rights[(k % RIGHT_RING as u64) as usize];
        let right = (held.0 == k).then_some(&held.1[..]);
        let left = self.aligner.pop(k).map(|f| &f[..]);
        if let Some(block) = self.block.as_mut() {
            let at = self.filled * per_slot;
            self.mode
                .compose(left, right, &mut block[at..at + per_slot]);
        }
        held.0 = u64::MAX;
        self.filled += 1;
        self.next_slot += 1;
        if self.filled == BLOCK_SLOTS {
            self.flush_block();
        }
    }

    fn flush_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        let slots = std::mem::take(&mut self.filled);
        if self.writer_gone || slots == 0 {
            writer::give_block(block);
            return;
        }
        let job = Job::Block {
            id: self.id.clone(),
            first_slot: self.block_first,
            slots,
            samples: block,
        };
        match self.writer.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(job)) => {
                self.overflow_frames += slots as u64;
                metrics::counter!(metric::OVERFLOW_FRAMES).increment(slots as u64);
                tracing::warn!(
                    recording = %self.id,
                    overflow_frames = self.overflow_frames,
                    "recording writer behind: a block of audio replaced by silence"
                );
                if let Job::Block { samples, .. } = job {
                    writer::give_block(samples);
                }
            }
            Err(TrySendError::Disconnected(_)) => {
                self.writer_gone = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{sync_channel, Receiver};

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn feed(cap: usize, t0: Instant) -> (RecordingFeed, Receiver<Job>) {
        let (tx, rx) = sync_channel(cap);
        let spec = FeedSpec {
            id: RecordingId::generate(Utc::now()),
            mode: ChannelMode::Stereo,
            writer: tx,
        };
        (RecordingFeed::new(spec, 100, t0, t0, Utc::now()), rx)
    }

    fn blocks(rx: &Receiver<Job>) -> Vec<(u64, Vec<i16>)> {
        let mut out = Vec::new();
        while let Ok(j) = rx.try_recv() {
            if let Job::Block {
                first_slot,
                slots,
                samples,
                ..
            } = j
            {
                out.push((first_slot, samples[..slots * 320].to_vec()));
            }
        }
        out
    }

    #[test]
    fn sent_frames_pair_with_caller_frames_in_whole_blocks() {
        let t0 = Instant::now();
        let (mut f, rx) = feed(64, t0);
        for k in 0..120u64 {
            // The caller's frame k arrives in slot k; the bot's frame goes out in slot k.
            f.caller_frame(
                1000 + 160 * k as u32,
                &[k as i16 + 1; 160],
                ms(t0, 20 * k + 5),
            );
            f.sent(100 + k, &[-(k as i16) - 1; 160]);
            f.advance(ms(t0, 20 * k + 5));
        }
        let b = blocks(&rx);
        // Slots 0..117 are due (the last advance is in slot 119, less the lag).
        assert_eq!(b.len(), 117 / BLOCK_SLOTS, "the full blocks so far");
        assert_eq!((b[0].0, b[1].0), (0, BLOCK_SLOTS as u64));
        let s = &b[0].1;
        // Right = the frame sent in the slot; left = the caller's frame that arrived in it.
        assert_eq!((s[0], s[1]), (1, -1));
        assert_eq!((s[3 * 320], s[3 * 320 + 1]), (4, -4));
        let (sum, pending) = f.stop(ms(t0, 2_410));
        assert!(pending.is_none());
        assert_eq!(sum.slots, 121, "2410 ms rounds to 121 slots");
        // The rest of the blocks, contiguous up to slot 121, then the Finish.
        let mut next = b
            .last()
            .map_or(0, |(first, s)| first + (s.len() / 320) as u64);
        loop {
            match rx.try_recv() {
                Ok(Job::Block {
                    first_slot, slots, ..
                }) => {
                    assert_eq!(first_slot, next);
                    assert!(slots <= BLOCK_SLOTS);
                    next += slots as u64;
                }
                Ok(Job::Finish { slots: 121, .. }) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(next, 121);
        assert_eq!(
            (sum.ended_at - sum.started_at).num_milliseconds(),
            2_420,
            "duration = ended - started"
        );
    }

    #[test]
    fn duration_is_wall_time_whatever_the_ticks_did() {
        // A stalled worker: nothing for 400 ms, then a burst; a stop 10 ms into a slot.
        let t0 = Instant::now();
        let (mut f, rx) = feed(64, t0);
        for k in 0..10u64 {
            f.sent(100 + k, &[1; 160]);
        }
        f.advance(ms(t0, 200));
        for k in 30..35u64 {
            f.sent(100 + k, &[2; 160]);
        }
        let (sum, _) = f.stop(ms(t0, 2_009));
        assert_eq!(sum.slots, 100);
        assert_eq!((sum.ended_at - sum.started_at).num_milliseconds(), 2_000);
        let total: usize = blocks(&rx).iter().map(|(_, s)| s.len() / 320).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn a_caller_frame_received_before_the_stop_is_never_trimmed() {
        // The bench found ~1 caller packet in 1,000 missing: the caller's last frame arrived
        // 5 ms into slot 10 and a stop 1 ms into that slot rounded the file down to 10 slots.
        let t0 = Instant::now();
        let (mut f, rx) = feed(8, t0);
        for k in 0..=10u64 {
            f.caller_frame(1000 + 160 * k as u32, &[7; 160], ms(t0, 20 * k + 5));
            f.sent(100 + k, &[1; 160]);
        }
        let (sum, _) = f.stop(ms(t0, 206));
        assert_eq!(
            sum.slots, 11,
            "the slot holding the last caller frame is kept"
        );
        assert_eq!((sum.ended_at - sum.started_at).num_milliseconds(), 220);
        let all: Vec<i16> = blocks(&rx).into_iter().flat_map(|(_, s)| s).collect();
        assert_eq!(all.len(), 11 * 320);
        assert!(
            all.chunks(320).all(|slot| slot[0] == 7),
            "every caller frame is in"
        );
    }

    #[test]
    fn a_caller_frame_far_past_the_stop_does_not_stretch_the_file() {
        let t0 = Instant::now();
        let (mut f, _rx) = feed(8, t0);
        f.caller_frame(1000, &[7; 160], ms(t0, 5));
        // By its timestamp this frame belongs 10 slots ahead (a jump), past the grace.
        f.caller_frame(1000 + 160 * 10, &[7; 160], ms(t0, 25));
        let (sum, _) = f.stop(ms(t0, 41));
        assert_eq!(sum.slots, 2);
    }

    #[test]
    fn a_slot_sent_just_before_stop_is_trimmed_to_wall_time() {
        let t0 = Instant::now();
        let (mut f, rx) = feed(8, t0);
        for k in 0..=10u64 {
            f.sent(100 + k, &[1; 160]);
        }
        // Slot 10 began at 200 ms; stopping at 201 ms rounds to 10 slots.
        let (sum, _) = f.stop(ms(t0, 201));
        assert_eq!(sum.slots, 10);
        assert_eq!(blocks(&rx)[0].1.len(), 10 * 320);
    }

    #[test]
    fn a_full_writer_queue_costs_audio_not_the_timeline() {
        let t0 = Instant::now();
        let (mut f, rx) = feed(1, t0);
        for k in 0..150u64 {
            f.sent(100 + k, &[1; 160]);
        }
        f.advance(ms(t0, 3_040));
        let lost = 150 - BLOCK_SLOTS as u64;
        assert_eq!(
            f.overflow_frames(),
            lost,
            "every block after the first did not fit"
        );
        let (sum, pending) = f.stop(ms(t0, 3_000));
        assert_eq!(sum.overflow_frames, lost);
        assert_eq!(sum.slots, 150);
        // The queue is still full: the Finish waits for room instead of blocking.
        let pending = pending.expect("queue full");
        assert!(matches!(
            rx.try_recv(),
            Ok(Job::Block { first_slot: 0, .. })
        ));
        assert!(pending.retry().is_none());
        assert!(matches!(rx.try_recv(), Ok(Job::Finish { slots: 150, .. })));
    }

    #[test]
    fn stereo_and_mixed_compose() {
        let mut out = [9i16; 320];
        ChannelMode::Stereo.compose(Some(&[1, 2, 3]), Some(&[-7; 160]), &mut out);
        assert_eq!(&out[..6], &[1, -7, 2, -7, 3, -7]);
        assert_eq!(out[2 * 10], 0, "short left frame padded with silence");
        let mut out = [9i16; 160];
        ChannelMode::Mixed.compose(
            Some(&[30_000, -30_000, 5]),
            Some(&[10_000, -10_000, -2]),
            &mut out,
        );
        assert_eq!(&out[..4], &[i16::MAX, i16::MIN, 3, 0]);
    }
}
