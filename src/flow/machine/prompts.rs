//! The machine's view of what the call is playing.
//!
//! The call side has one audio queue and one way to cut it short (`StopPlayback` clears it
//! all). So that a stop only ever cuts what it means to, the machine keeps every prompt it has
//! *sent* of one class: barge-in prompts (a key stops them), hold prompts (a result stops
//! them) or normal prompts (nothing stops them). A prompt of another class waits here until
//! the prompts before it have played, then goes out. A key during a barge-in prompt therefore
//! never drops the normal prompt queued behind it.

use std::collections::VecDeque;

use crate::flow::FlowAction;

/// Prompts tracked at once (sent plus waiting); a flow that queues more loses the extra ones.
pub const MAX_PROMPTS: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PromptClass {
    /// Plays to the end.
    Normal,
    /// A DTMF key (or speech, for `listen` with `barge_in`) stops it.
    BargeIn,
    /// Looped while a step waits; its result stops it.
    Hold,
}

#[derive(Debug, Default)]
pub struct PromptQueue {
    /// Sent to the call, not yet reported finished; all of one class.
    sent: Vec<(u64, PromptClass)>,
    /// Not yet sent: (id, class, the Play/Say action).
    waiting: VecDeque<(u64, PromptClass, FlowAction)>,
}

impl PromptQueue {
    /// Queues a prompt; sends it now if it may go out. False if the queue is full.
    pub fn push(
        &mut self,
        id: u64,
        class: PromptClass,
        action: FlowAction,
        out: &mut VecDeque<FlowAction>,
    ) -> bool {
        if self.sent.len() + self.waiting.len() >= MAX_PROMPTS {
            return false;
        }
        let may_send = self.waiting.is_empty() && self.sent.last().is_none_or(|&(_, c)| c == class);
        if may_send {
            self.sent.push((id, class));
            out.push_back(action);
        } else {
            self.waiting.push_back((id, class, action));
        }
        true
    }

    /// The call reports `id` done (played, cut or failed). False if `id` is not tracked.
    pub fn finished(&mut self, id: u64, out: &mut VecDeque<FlowAction>) -> bool {
        let before = self.sent.len();
        self.sent.retain(|&(p, _)| p != id);
        let known = self.sent.len() != before;
        if known {
            self.release(out);
        }
        known
    }

    /// Stops the prompts of these classes: the playing run (with `StopPlayback`) if it is of
    /// one of them, and every waiting one. Returns the ids that will never play to the end.
    pub fn stop(&mut self, classes: &[PromptClass], out: &mut VecDeque<FlowAction>) -> Vec<u64> {
        let mut gone = Vec::new();
        if self
            .sent
            .first()
            .is_some_and(|&(_, c)| classes.contains(&c))
        {
            out.push_back(FlowAction::StopPlayback);
            gone.extend(self.sent.drain(..).map(|(id, _)| id));
        }
        self.waiting.retain(|(id, class, _)| {
            let drop = classes.contains(class);
            if drop {
                gone.push(*id);
            }
            !drop
        });
        self.release(out);
        gone
    }

    /// True if `id` has been sent to the call and has not finished.
    pub fn is_sent(&self, id: u64) -> bool {
        self.sent.iter().any(|&(p, _)| p == id)
    }

    /// True if a prompt of a class other than `Hold` is playing or waiting.
    pub fn talking(&self) -> bool {
        self.sent
            .iter()
            .map(|&(_, c)| c)
            .chain(self.waiting.iter().map(|&(_, c, _)| c))
            .any(|c| c != PromptClass::Hold)
    }

    pub fn clear(&mut self) {
        self.sent.clear();
        self.waiting.clear();
    }

    /// Sends the waiting run of one class once nothing else is playing.
    fn release(&mut self, out: &mut VecDeque<FlowAction>) {
        if !self.sent.is_empty() {
            return;
        }
        let Some(&(_, class, _)) = self.waiting.front() else {
            return;
        };
        while self.waiting.front().is_some_and(|(_, c, _)| *c == class) {
            if let Some((id, c, action)) = self.waiting.pop_front() {
                self.sent.push((id, c));
                out.push_back(action);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PromptClass::*;

    fn play(id: u64) -> FlowAction {
        FlowAction::Play {
            id,
            file: format!("{id}.wav"),
        }
    }

    #[test]
    fn one_class_at_a_time() {
        let mut q = PromptQueue::default();
        let mut out = VecDeque::new();
        assert!(q.push(1, BargeIn, play(1), &mut out));
        assert!(q.push(2, BargeIn, play(2), &mut out));
        assert!(q.push(3, Normal, play(3), &mut out));
        assert!(q.push(4, BargeIn, play(4), &mut out));
        assert_eq!(out.drain(..).collect::<Vec<_>>(), vec![play(1), play(2)]);
        // A key: the barge-in run stops, waiting barge-in prompts are dropped, and the normal
        // prompt goes out.
        let gone = q.stop(&[BargeIn], &mut out);
        assert_eq!(gone, vec![1, 2, 4]);
        assert_eq!(
            out.drain(..).collect::<Vec<_>>(),
            vec![FlowAction::StopPlayback, play(3)]
        );
        assert!(q.talking());
        // A second stop finds nothing of that class playing.
        assert!(q.stop(&[BargeIn], &mut out).is_empty());
        assert!(out.is_empty());
        assert!(q.finished(3, &mut out));
        assert!(!q.finished(3, &mut out));
        assert!(!q.talking());
    }

    #[test]
    fn waiting_prompts_go_out_when_the_run_ends() {
        let mut q = PromptQueue::default();
        let mut out = VecDeque::new();
        q.push(1, Normal, play(1), &mut out);
        q.push(2, Hold, play(2), &mut out);
        q.push(3, Hold, play(3), &mut out);
        q.push(4, Normal, play(4), &mut out);
        assert_eq!(out.drain(..).collect::<Vec<_>>(), vec![play(1)]);
        q.finished(1, &mut out);
        assert_eq!(out.drain(..).collect::<Vec<_>>(), vec![play(2), play(3)]);
        assert!(q.talking(), "prompt 4 still waits");
        // Stopping the hold cuts the playing run and lets prompt 4 play.
        assert_eq!(q.stop(&[Hold], &mut out), vec![2, 3]);
        assert_eq!(
            out.drain(..).collect::<Vec<_>>(),
            vec![FlowAction::StopPlayback, play(4)]
        );
    }

    #[test]
    fn bounded() {
        let mut q = PromptQueue::default();
        let mut out = VecDeque::new();
        for id in 0..MAX_PROMPTS as u64 {
            assert!(q.push(id, Normal, play(id), &mut out));
        }
        assert!(!q.push(999, Normal, play(999), &mut out));
        q.clear();
        assert!(!q.talking());
    }
}
