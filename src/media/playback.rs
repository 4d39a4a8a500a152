//! The outgoing audio queue with playback marks.
//!
//! The flow needs to know when a prompt has *been sent* (not when it was queued) to time
//! its next step, and which prompts a barge-in cut short. Marks sit at sample positions in
//! the queue: a mark is played once every sample queued before it has gone out, and
//! cleared if the queue is flushed first.
//!
//! The queue holds segments, not samples: a prompt is an [`Audio::Shared`] (decoded once,
//! encoded once per codec, shared by every call that plays it), so queueing it copies no
//! audio. Audio streamed by a bot is copied into one owned segment, bounded at
//! [`MAX_OWNED_SAMPLES`]: a bot that sends faster than real time for ever cannot make the
//! call's latency (or its memory) grow without limit.

use std::collections::VecDeque;
use std::sync::Arc;

use super::codec::{Codec, FRAME_SAMPLES};
use super::g711;

/// Most streamed (owned) audio a call queues: 30 s. Beyond it new audio is refused and
/// counted in [`PlaybackQueue::refused_samples`].
pub const MAX_OWNED_SAMPLES: usize = 30 * 8000;

/// Audio decoded once and encoded once per codec, shared by every call that plays it.
#[derive(Debug)]
pub struct SharedAudio {
    pcm: Arc<[i16]>,
    ulaw: Box<[u8]>,
    alaw: Box<[u8]>,
}

impl SharedAudio {
    pub fn new(pcm: Arc<[i16]>) -> Arc<Self> {
        let mut ulaw = vec![0u8; pcm.len()];
        let mut alaw = vec![0u8; pcm.len()];
        g711::encode_into(Codec::Pcmu, &pcm, &mut ulaw);
        g711::encode_into(Codec::Pcma, &pcm, &mut alaw);
        Arc::new(SharedAudio {
            pcm,
            ulaw: ulaw.into(),
            alaw: alaw.into(),
        })
    }

    pub fn pcm(&self) -> &Arc<[i16]> {
        &self.pcm
    }

    /// The audio encoded with `codec`, one byte per sample.
    pub fn encoded(&self, codec: Codec) -> &[u8] {
        match codec {
            Codec::Pcmu => &self.ulaw,
            Codec::Pcma => &self.alaw,
        }
    }

    pub fn len(&self) -> usize {
        self.pcm.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pcm.is_empty()
    }
}

/// Audio to queue.
#[derive(Debug, Clone)]
pub enum Audio {
    /// A prompt: shared and pre-encoded.
    Shared(Arc<SharedAudio>),
    /// Shared linear audio (TTS results): not copied, encoded as it is sent.
    Pcm(Arc<[i16]>),
}

impl Audio {
    fn len(&self) -> usize {
        match self {
            Audio::Shared(a) => a.len(),
            Audio::Pcm(p) => p.len(),
        }
    }
}

/// What happened to a mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkEvent {
    Played(u64),
    Cleared(u64),
}

#[derive(Debug)]
enum Segment {
    Shared { audio: Audio, pos: usize },
    Owned(VecDeque<i16>),
}

impl Segment {
    fn remaining(&self) -> usize {
        match self {
            Segment::Shared { audio, pos } => audio.len() - pos,
            Segment::Owned(s) => s.len(),
        }
    }
}

/// How a frame taken from the queue may be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    /// Nothing queued: the frame is untouched.
    Nothing,
    /// `pcm` holds the frame; encode it.
    Pcm,
    /// `pcm` holds the frame and `encoded` already holds it in the asked codec.
    Encoded,
}

/// Audio waiting to be sent, plus marks between them.
#[derive(Debug, Default)]
pub struct PlaybackQueue {
    segments: VecDeque<Segment>,
    queued: usize,
    owned: usize,
    /// (absolute sample position, mark id), in position order.
    marks: VecDeque<(u64, u64)>,
    /// Samples ever queued / ever taken (or cleared); positions are in this space.
    queued_total: u64,
    taken_total: u64,
    refused: u64,
    events: VecDeque<MarkEvent>,
}

impl PlaybackQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues a copy of `samples` (streamed audio), up to the owned-audio bound.
    pub fn push_audio(&mut self, samples: &[i16]) {
        let room = MAX_OWNED_SAMPLES.saturating_sub(self.owned);
        let take = samples.len().min(room);
        self.refused += (samples.len() - take) as u64;
        if take == 0 {
            return;
        }
        match self.segments.back_mut() {
            Some(Segment::Owned(s)) => s.extend(&samples[..take]),
            _ => self
                .segments
                .push_back(Segment::Owned(samples[..take].iter().copied().collect())),
        }
        self.owned += take;
        self.queued += take;
        self.queued_total += take as u64;
    }

    /// Queues shared audio without copying it.
    pub fn push_shared(&mut self, audio: Audio) {
        let n = audio.len();
        if n == 0 {
            return;
        }
        self.segments.push_back(Segment::Shared { audio, pos: 0 });
        self.queued += n;
        self.queued_total += n as u64;
    }

    /// Marks the current end of the queue. On an empty queue the mark is played at once.
    pub fn push_mark(&mut self, id: u64) {
        self.marks.push_back((self.queued_total, id));
        self.release_marks();
    }

    /// Fills `frame` with the next samples, padding a short tail with silence. Returns
    /// false (leaving `frame` untouched) when there is nothing queued.
    pub fn next_frame(&mut self, frame: &mut [i16]) -> bool {
        let mut unused = [0u8; FRAME_SAMPLES];
        let n = frame.len().min(FRAME_SAMPLES);
        self.take(Codec::Pcmu, &mut frame[..n], &mut unused[..n]) != Taken::Nothing
    }

    /// Takes the next frame into `pcm` (padding a short tail with silence). When the whole
    /// frame comes from one pre-encoded prompt, its bytes for `codec` are copied into
    /// `encoded` too, so the sender need not encode.
    pub fn take(&mut self, codec: Codec, pcm: &mut [i16], encoded: &mut [u8]) -> Taken {
        if self.queued == 0 {
            return Taken::Nothing;
        }
        let want = pcm.len();
        let mut filled = 0;
        let mut whole_from_encoded = false;
        while filled < want {
            let Some(seg) = self.segments.front_mut() else {
                break;
            };
            let n = (want - filled).min(seg.remaining());
            match seg {
                Segment::Shared { audio, pos } => {
                    let range = *pos..*pos + n;
                    match audio {
                        Audio::Shared(a) => {
                            pcm[filled..filled + n].copy_from_slice(&a.pcm()[range.clone()]);
                            if filled == 0 && n == want {
                                encoded[..n].copy_from_slice(&a.encoded(codec)[range]);
                                whole_from_encoded = true;
                            }
                        }
                        Audio::Pcm(p) => pcm[filled..filled + n].copy_from_slice(&p[range]),
                    }
                    *pos += n;
                }
                Segment::Owned(s) => {
                    for (dst, src) in pcm[filled..filled + n].iter_mut().zip(s.drain(..n)) {
                        *dst = src;
                    }
                    self.owned -= n;
                }
            }
            filled += n;
            if seg.remaining() == 0 {
                self.segments.pop_front();
            }
        }
        pcm[filled..].fill(0);
        self.queued -= filled;
        self.taken_total += filled as u64;
        self.release_marks();
        if whole_from_encoded {
            Taken::Encoded
        } else {
            Taken::Pcm
        }
    }

    /// Drops everything queued; pending marks are reported cleared.
    pub fn clear(&mut self) {
        self.segments.clear();
        self.queued = 0;
        self.owned = 0;
        self.taken_total = self.queued_total;
        self.events
            .extend(self.marks.drain(..).map(|(_, id)| MarkEvent::Cleared(id)));
    }

    pub fn queued_samples(&self) -> usize {
        self.queued
    }

    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Streamed samples refused because the owned-audio bound was reached.
    pub fn refused_samples(&self) -> u64 {
        self.refused
    }

    /// Mark outcomes in the order they happened.
    pub fn poll_event(&mut self) -> Option<MarkEvent> {
        self.events.pop_front()
    }

    fn release_marks(&mut self) {
        while let Some(&(pos, id)) = self.marks.front() {
            if pos > self.taken_total {
                break;
            }
            self.marks.pop_front();
            self.events.push_back(MarkEvent::Played(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(q: &mut PlaybackQueue) -> Vec<MarkEvent> {
        std::iter::from_fn(|| q.poll_event()).collect()
    }

    #[test]
    fn marks_play_after_preceding_audio() {
        let mut q = PlaybackQueue::new();
        q.push_audio(&[1; 320]);
        q.push_mark(7);
        q.push_audio(&[2; 100]);
        q.push_mark(8);
        let mut frame = [9i16; 160];
        assert!(q.next_frame(&mut frame));
        assert_eq!(events(&mut q), vec![]);
        assert!(q.next_frame(&mut frame));
        assert_eq!(frame, [1; 160]);
        assert_eq!(events(&mut q), vec![MarkEvent::Played(7)]);
        assert!(q.next_frame(&mut frame));
        assert_eq!(&frame[..100], &[2; 100]);
        assert_eq!(&frame[100..], &[0; 60]);
        assert_eq!(events(&mut q), vec![MarkEvent::Played(8)]);
        assert!(!q.next_frame(&mut frame));
        assert_eq!(q.queued_samples(), 0);
    }

    #[test]
    fn mark_on_empty_queue_plays_at_once() {
        let mut q = PlaybackQueue::new();
        q.push_mark(1);
        assert_eq!(events(&mut q), vec![MarkEvent::Played(1)]);
    }

    #[test]
    fn clear_reports_pending_marks() {
        let mut q = PlaybackQueue::new();
        q.push_audio(&[1; 160]);
        q.push_mark(1);
        q.push_audio(&[1; 160]);
        q.push_mark(2);
        let mut frame = [0i16; 160];
        q.next_frame(&mut frame);
        q.clear();
        assert_eq!(
            events(&mut q),
            vec![MarkEvent::Played(1), MarkEvent::Cleared(2)]
        );
        assert!(q.is_empty());
        // Positions stay consistent after a clear.
        q.push_audio(&[3; 160]);
        q.push_mark(3);
        assert_eq!(events(&mut q), vec![]);
        q.next_frame(&mut frame);
        assert_eq!(events(&mut q), vec![MarkEvent::Played(3)]);
    }

    #[test]
    fn shared_prompts_are_sent_pre_encoded_and_never_copied_into_the_queue() {
        let pcm: Arc<[i16]> = (0..400).map(|i| (i * 50) as i16).collect::<Vec<_>>().into();
        let prompt = SharedAudio::new(pcm.clone());
        let mut q = PlaybackQueue::new();
        q.push_shared(Audio::Shared(prompt.clone()));
        q.push_mark(1);
        q.push_shared(Audio::Shared(prompt.clone()));
        assert_eq!(Arc::strong_count(&prompt), 3, "queued by reference");
        let (mut f, mut e) = ([0i16; 160], [0u8; 160]);
        assert_eq!(q.take(Codec::Pcma, &mut f, &mut e), Taken::Encoded);
        assert_eq!(&f[..], &pcm[..160]);
        assert_eq!(&e[..], &prompt.encoded(Codec::Pcma)[..160]);
        q.take(Codec::Pcma, &mut f, &mut e);
        // Frame 3 straddles the two copies: linear, to be encoded by the sender.
        assert_eq!(q.take(Codec::Pcma, &mut f, &mut e), Taken::Pcm);
        assert_eq!(&f[..80], &pcm[320..]);
        assert_eq!(&f[80..], &pcm[..80]);
        assert_eq!(events(&mut q), vec![MarkEvent::Played(1)]);
        assert_eq!(q.queued_samples(), 400 - 80);
    }

    #[test]
    fn streamed_audio_is_bounded() {
        let mut q = PlaybackQueue::new();
        let second = vec![5i16; 8000];
        for _ in 0..40 {
            q.push_audio(&second);
        }
        assert_eq!(q.queued_samples(), MAX_OWNED_SAMPLES);
        assert_eq!(q.refused_samples(), 10 * 8000);
        // Taking makes room again.
        let mut f = [0i16; 160];
        q.next_frame(&mut f);
        q.push_audio(&second[..200]);
        assert_eq!(q.queued_samples(), MAX_OWNED_SAMPLES);
    }
}
