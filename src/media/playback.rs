//! The outgoing audio queue with playback marks.
//!
//! The flow needs to know when a prompt has *been sent* (not when it was queued) to time
//! its next step, and which prompts a barge-in cut short. Marks sit at sample positions in
//! the queue: a mark is played once every sample queued before it has gone out, and
//! cleared if the queue is flushed first.

use std::collections::VecDeque;

/// What happened to a mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarkEvent {
    Played(u64),
    Cleared(u64),
}

/// Samples waiting to be sent, plus marks between them.
#[derive(Debug, Default)]
pub struct PlaybackQueue {
    samples: VecDeque<i16>,
    /// (absolute sample position, mark id), in position order.
    marks: VecDeque<(u64, u64)>,
    /// Samples ever queued / ever taken (or cleared); positions are in this space.
    queued_total: u64,
    taken_total: u64,
    events: VecDeque<MarkEvent>,
}

impl PlaybackQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push_audio(&mut self, samples: &[i16]) {
        self.samples.extend(samples.iter().copied());
        self.queued_total += samples.len() as u64;
    }

    /// Marks the current end of the queue. On an empty queue the mark is played at once.
    pub fn push_mark(&mut self, id: u64) {
        self.marks.push_back((self.queued_total, id));
        self.release_marks();
    }

    /// Fills `frame` with the next samples, padding a short tail with silence. Returns
    /// false (leaving `frame` untouched) when there is nothing queued.
    pub fn next_frame(&mut self, frame: &mut [i16]) -> bool {
        if self.samples.is_empty() {
            return false;
        }
        let n = frame.len().min(self.samples.len());
        for (dst, src) in frame.iter_mut().zip(self.samples.drain(..n)) {
            *dst = src;
        }
        frame[n..].fill(0);
        self.taken_total += n as u64;
        self.release_marks();
        true
    }

    /// Drops everything queued; pending marks are reported cleared.
    pub fn clear(&mut self) {
        self.samples.clear();
        self.taken_total = self.queued_total;
        self.events
            .extend(self.marks.drain(..).map(|(_, id)| MarkEvent::Cleared(id)));
    }

    pub fn queued_samples(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
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
}
