//! A call's inbox: the results of work the call task started elsewhere (TTS, the REFER
//! transaction, integration steps, speech recognition) come back here as one message type,
//! so the task's `select!` has one arm for all of them and each result is routed by an
//! IO-free rule ([`route`]).
//!
//! Executors get an [`InboxSender`]; they must never block on it (it is unbounded and a
//! send to a finished call is simply dropped).

use crate::call::transfer::TransferInput;
use crate::flow::{FlowEvent, SpeechOutcome, StepFailure};
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::sync::mpsc;

/// One asynchronous result for a call.
#[derive(Debug)]
pub enum Inbox {
    /// TTS for `FlowAction::Say { id }`: 8 kHz audio, or why there is none.
    Spoken {
        id: u64,
        result: Result<Arc<[i16]>, String>,
    },
    /// The REFER transaction's final status (0 when it could not be sent).
    ReferAnswered { status: u16 },
    /// An integration step's result: the answer to `FlowAction::Request { id }`.
    RequestDone {
        id: u64,
        result: Result<serde_json::Value, StepFailure>,
    },
    /// The recogniser heard the caller start speaking during `Listen { id }` (barge-in).
    SpeechStarted { id: u64 },
    /// The recogniser's one answer to `FlowAction::Listen { id }`.
    Speech { id: u64, outcome: SpeechOutcome },
    /// The offload webhook answered (or failed): the pending offload's transfer may start.
    OffloadNotified,
}

/// The sending half of a call's inbox, for executors and spawned work.
#[derive(Debug, Clone)]
pub struct InboxSender(mpsc::UnboundedSender<Inbox>);

impl InboxSender {
    /// Posts a result; false when the call is already gone (the result is dropped).
    pub fn post(&self, msg: Inbox) -> bool {
        self.0.send(msg).is_ok()
    }
}

/// A new inbox: the sender for executors, the receiver for the call task.
pub fn inbox() -> (InboxSender, mpsc::UnboundedReceiver<Inbox>) {
    let (tx, rx) = mpsc::unbounded_channel();
    (InboxSender(tx), rx)
}

/// The requests and listens a call still waits an answer for. An answer to anything else
/// (cancelled, answered already, never asked) is late and is dropped, never shown to the flow.
#[derive(Debug, Default)]
pub struct Outstanding {
    requests: BTreeSet<u64>,
    listens: BTreeSet<u64>,
}

impl Outstanding {
    pub fn request_started(&mut self, id: u64) {
        self.requests.insert(id);
    }
    /// The flow gave up on `id`; true when it was still outstanding.
    pub fn request_cancelled(&mut self, id: u64) -> bool {
        self.requests.remove(&id)
    }
    pub fn listen_started(&mut self, id: u64) {
        self.listens.insert(id);
    }
    /// The flow stopped listening; true when `id` was still listening.
    pub fn listen_stopped(&mut self, id: u64) -> bool {
        self.listens.remove(&id)
    }
    /// Everything still outstanding (to cancel when the call ends), emptied.
    pub fn drain(&mut self) -> (Vec<u64>, Vec<u64>) {
        (
            std::mem::take(&mut self.requests).into_iter().collect(),
            std::mem::take(&mut self.listens).into_iter().collect(),
        )
    }
    pub fn is_empty(&self) -> bool {
        self.requests.is_empty() && self.listens.is_empty()
    }
}

/// Where one inbox message goes.
#[derive(Debug, PartialEq)]
pub enum Delivery {
    /// Audio to queue for the caller, followed by the mark `id`.
    Audio { id: u64, samples: Arc<[i16]> },
    /// An event for the flow.
    Flow(FlowEvent),
    /// An input for the forward in progress.
    Transfer(TransferInput),
    /// Nothing: a late or unasked-for answer (the reason is for the log).
    Drop(&'static str),
    /// Start the pending offload's transfer.
    Offload,
}

/// Routes one inbox message (IO-free).
pub fn route(msg: Inbox, outstanding: &mut Outstanding) -> Delivery {
    match msg {
        Inbox::Spoken {
            id,
            result: Ok(samples),
        } => Delivery::Audio { id, samples },
        Inbox::Spoken {
            id,
            result: Err(reason),
        } => Delivery::Flow(FlowEvent::PlaybackFailed { id, reason }),
        Inbox::ReferAnswered { status } => Delivery::Transfer(TransferInput::ReferAnswered(status)),
        Inbox::RequestDone { id, result } => {
            if outstanding.requests.remove(&id) {
                Delivery::Flow(FlowEvent::RequestDone { id, result })
            } else {
                Delivery::Drop("request result after cancel, or for no request")
            }
        }
        Inbox::SpeechStarted { id } => {
            if outstanding.listens.contains(&id) {
                Delivery::Flow(FlowEvent::SpeechStarted { id })
            } else {
                Delivery::Drop("speech start after stop, or for no listen")
            }
        }
        Inbox::OffloadNotified => Delivery::Offload,
        Inbox::Speech { id, outcome } => {
            if outstanding.listens.remove(&id) {
                Delivery::Flow(FlowEvent::Speech { id, outcome })
            } else {
                Delivery::Drop("speech result after stop, or for no listen")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tts_audio_is_queued_and_a_failure_reaches_the_flow() {
        let mut o = Outstanding::default();
        let audio: Arc<[i16]> = Arc::from(vec![1i16, 2, 3]);
        assert_eq!(
            route(
                Inbox::Spoken {
                    id: 4,
                    result: Ok(audio.clone())
                },
                &mut o
            ),
            Delivery::Audio {
                id: 4,
                samples: audio
            }
        );
        assert_eq!(
            route(
                Inbox::Spoken {
                    id: 5,
                    result: Err("no voice".into())
                },
                &mut o
            ),
            Delivery::Flow(FlowEvent::PlaybackFailed {
                id: 5,
                reason: "no voice".into()
            })
        );
    }

    #[test]
    fn refer_status_feeds_the_forward() {
        let mut o = Outstanding::default();
        assert_eq!(
            route(Inbox::ReferAnswered { status: 202 }, &mut o),
            Delivery::Transfer(TransferInput::ReferAnswered(202))
        );
    }

    #[test]
    fn a_request_is_answered_once_and_a_late_result_is_dropped() {
        let mut o = Outstanding::default();
        o.request_started(1);
        o.request_started(2);
        let done = |id| Inbox::RequestDone {
            id,
            result: Ok(json!({"status": 200})),
        };
        assert!(matches!(
            route(done(1), &mut o),
            Delivery::Flow(FlowEvent::RequestDone { id: 1, .. })
        ));
        // A second answer for the same id, and one nobody asked for.
        assert!(matches!(route(done(1), &mut o), Delivery::Drop(_)));
        assert!(matches!(route(done(9), &mut o), Delivery::Drop(_)));
        // Cancelled by the flow: the result that arrives afterwards is dropped.
        assert!(o.request_cancelled(2));
        assert!(!o.request_cancelled(2));
        assert!(matches!(route(done(2), &mut o), Delivery::Drop(_)));
        assert!(o.is_empty());
    }

    #[test]
    fn speech_start_may_repeat_but_the_outcome_comes_once() {
        let mut o = Outstanding::default();
        o.listen_started(7);
        for _ in 0..2 {
            assert_eq!(
                route(Inbox::SpeechStarted { id: 7 }, &mut o),
                Delivery::Flow(FlowEvent::SpeechStarted { id: 7 })
            );
        }
        let heard = || Inbox::Speech {
            id: 7,
            outcome: SpeechOutcome::Timeout,
        };
        assert!(matches!(
            route(heard(), &mut o),
            Delivery::Flow(FlowEvent::Speech { id: 7, .. })
        ));
        assert!(matches!(route(heard(), &mut o), Delivery::Drop(_)));
        assert!(matches!(
            route(Inbox::SpeechStarted { id: 7 }, &mut o),
            Delivery::Drop(_)
        ));
        // Stopped before the outcome: nothing reaches the flow.
        o.listen_started(8);
        assert!(o.listen_stopped(8));
        assert!(matches!(
            route(
                Inbox::Speech {
                    id: 8,
                    outcome: SpeechOutcome::Timeout
                },
                &mut o
            ),
            Delivery::Drop(_)
        ));
    }

    #[test]
    fn drain_returns_what_is_still_outstanding() {
        let mut o = Outstanding::default();
        o.request_started(3);
        o.listen_started(4);
        assert_eq!(o.drain(), (vec![3], vec![4]));
        assert!(o.is_empty());
    }

    #[test]
    fn a_post_to_a_finished_call_is_dropped() {
        let (tx, rx) = inbox();
        assert!(tx.post(Inbox::ReferAnswered { status: 200 }));
        drop(rx);
        assert!(!tx.post(Inbox::ReferAnswered { status: 200 }));
    }
}
