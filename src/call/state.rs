//! The lifecycle of one call, as an IO-free state machine.
//!
//! The call task feeds it what happened (the flow wants to answer, the ACK came, the caller
//! cancelled, ...) and carries out the [`Command`]s it returns. Keeping this apart from the
//! sockets makes the awkward orderings (CANCEL racing our 200, BYE before ACK, a hang-up
//! requested twice) testable without a network.

use std::time::{Duration, Instant};

/// How long a call waits for the ACK of its 2xx when the SIP stack does not end it first: 64*T1
/// (Timer H / Timer L) at the default T1 of 500 ms, plus T2 of slack so the stack's own timer
/// normally fires first. It catches a 2xx that never left (a send refused by a local firewall,
/// `ENOBUFS`): the stack then never retransmits and never times out.
pub const DEFAULT_ACK_WAIT: Duration = Duration::from_secs(36);

/// Where the call is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// INVITE received, no final response yet.
    Offered,
    /// 200 OK sent, waiting for the ACK.
    Answered,
    /// ACK received: the call is up.
    Confirmed,
    /// Over. No more SIP for this dialog.
    Ended,
}

/// Something that happened to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The flow (or policy) wants to answer.
    Answer,
    /// Refuse the INVITE with this status.
    Reject(u16),
    /// The ACK for our 2xx arrived.
    Acked,
    /// The caller cancelled the INVITE.
    Cancelled,
    /// The caller sent BYE.
    RemoteBye,
    /// We want to end the call (flow close/hangup, RTP timeout, shutdown, transfer done).
    Hangup(EndReason),
    /// The stack gave up on the dialog (no ACK, transport failure).
    DialogFailed(String),
}

/// What the call task must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    SendAnswer,
    SendReject(u16),
    SendBye,
    /// Start sending and receiving media, and the flow (once, at the ACK: nothing is sent to
    /// an address that has not confirmed the dialog, so an INVITE with a forged SDP address
    /// cannot turn the gateway into a reflector).
    StartMedia,
    /// The call is over: stop media, finalize recordings, tell the flow, write the CDR.
    Finish(EndReason),
}

/// Why a call ended; written to the CDR and shown to the flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndReason {
    CallerHangup,
    CallerCancelled,
    Rejected(u16),
    FlowClosed,
    FlowHangup,
    RtpTimeout,
    Transferred,
    /// The far leg of a bridged forward hung up.
    FarEndHangup,
    Shutdown,
    /// An operator ended the call (`POST /v1/calls/{id}/hangup`, the console).
    Operator,
    NoAck,
    Error(String),
}

impl EndReason {
    /// A short stable code for CDRs, logs and events.
    pub fn code(&self) -> String {
        match self {
            EndReason::CallerHangup => "caller_hangup".into(),
            EndReason::CallerCancelled => "caller_cancelled".into(),
            EndReason::Rejected(c) => format!("rejected_{c}"),
            EndReason::FlowClosed => "flow_closed".into(),
            EndReason::FlowHangup => "flow_hangup".into(),
            EndReason::RtpTimeout => "rtp_timeout".into(),
            EndReason::Transferred => "transferred".into(),
            EndReason::FarEndHangup => "far_end_hangup".into(),
            EndReason::Shutdown => "shutdown".into(),
            EndReason::Operator => "operator_hangup".into(),
            EndReason::NoAck => "no_ack".into(),
            EndReason::Error(_) => "error".into(),
        }
    }
}

/// The call lifecycle.
#[derive(Debug)]
pub struct CallState {
    phase: Phase,
    created_at: Instant,
    answered_at: Option<Instant>,
    ended_at: Option<Instant>,
    end_reason: Option<EndReason>,
    /// A hang-up asked for before the ACK: BYE goes out once the ACK arrives (RFC 3261 §15).
    pending_hangup: Option<EndReason>,
    /// How long to wait for the ACK after answering (see [`DEFAULT_ACK_WAIT`]).
    ack_wait: Duration,
}

impl CallState {
    pub fn new(now: Instant) -> Self {
        CallState {
            phase: Phase::Offered,
            created_at: now,
            answered_at: None,
            ended_at: None,
            end_reason: None,
            pending_hangup: None,
            ack_wait: DEFAULT_ACK_WAIT,
        }
    }

    /// Waits `wait` for the ACK of the 2xx instead of [`DEFAULT_ACK_WAIT`].
    pub fn with_ack_wait(mut self, wait: Duration) -> Self {
        self.ack_wait = wait;
        self
    }

    /// When the call gives up on the ACK, while it waits for one.
    pub fn ack_deadline(&self) -> Option<Instant> {
        match (self.phase, self.answered_at) {
            (Phase::Answered, Some(at)) => Some(at + self.ack_wait),
            _ => None,
        }
    }

    /// Runs the call's own timer: no ACK by the deadline ends the call with a BYE
    /// (RFC 3261 §13.3.1.4: the dialog is confirmed, but the session is terminated).
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Command> {
        match self.ack_deadline() {
            Some(at) if now >= at => self.finish(EndReason::NoAck, now, vec![Command::SendBye]),
            _ => Vec::new(),
        }
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }
    pub fn created_at(&self) -> Instant {
        self.created_at
    }
    pub fn answered_at(&self) -> Option<Instant> {
        self.answered_at
    }
    pub fn ended_at(&self) -> Option<Instant> {
        self.ended_at
    }
    pub fn end_reason(&self) -> Option<&EndReason> {
        self.end_reason.as_ref()
    }
    pub fn is_ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Feeds one input; returns the commands to carry out, in order.
    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Command> {
        use Phase::*;
        match (self.phase, input) {
            (Ended, _) => Vec::new(),
            (Offered, Input::Answer) => {
                self.phase = Answered;
                self.answered_at = Some(now);
                vec![Command::SendAnswer]
            }
            (Offered, Input::Reject(code)) => self.finish(
                EndReason::Rejected(code),
                now,
                vec![Command::SendReject(code)],
            ),
            (Offered, Input::Cancelled) => {
                // CANCEL won the race: the stack answers 487; we never send our 200.
                self.finish(EndReason::CallerCancelled, now, Vec::new())
            }
            (Offered, Input::Hangup(reason)) => {
                // Nothing was answered yet: refuse the INVITE instead of a BYE.
                let code = if reason == EndReason::Shutdown {
                    503
                } else {
                    480
                };
                self.finish(reason, now, vec![Command::SendReject(code)])
            }
            (Answered, Input::Acked) => {
                self.phase = Confirmed;
                match self.pending_hangup.take() {
                    Some(reason) => self.finish(reason, now, vec![Command::SendBye]),
                    None => vec![Command::StartMedia],
                }
            }
            (Answered, Input::Cancelled) => {
                // Our 200 won the race (RFC 3261 §9.2: CANCEL has no effect after a final
                // response), but the stack tore the dialog down. The caller may believe the
                // call is up, so make the end explicit with a BYE.
                self.finish(EndReason::CallerCancelled, now, vec![Command::SendBye])
            }
            (Answered, Input::Hangup(reason)) => {
                self.pending_hangup = Some(reason);
                Vec::new()
            }
            (Confirmed, Input::Hangup(reason)) => self.finish(reason, now, vec![Command::SendBye]),
            (Answered | Confirmed, Input::RemoteBye) => {
                self.finish(EndReason::CallerHangup, now, Vec::new())
            }
            (Offered, Input::RemoteBye) => self.finish(EndReason::CallerHangup, now, Vec::new()),
            (Answered, Input::DialogFailed(_)) => self.finish(EndReason::NoAck, now, Vec::new()),
            (_, Input::DialogFailed(why)) => self.finish(EndReason::Error(why), now, Vec::new()),
            // Answer twice, ACK outside Answered, reject after answer: nothing to do.
            (_, Input::Answer | Input::Acked | Input::Reject(_) | Input::Cancelled) => Vec::new(),
        }
    }

    fn finish(&mut self, reason: EndReason, now: Instant, mut cmds: Vec<Command>) -> Vec<Command> {
        self.phase = Phase::Ended;
        self.ended_at = Some(now);
        self.end_reason = Some(reason.clone());
        cmds.push(Command::Finish(reason));
        cmds
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t(ms: u64, base: Instant) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn no_ack_by_the_deadline_ends_the_call_with_a_bye() {
        let b = Instant::now();
        let mut c = CallState::new(b).with_ack_wait(Duration::from_secs(10));
        assert_eq!(c.ack_deadline(), None, "no deadline before the answer");
        c.handle(Input::Answer, t(100, b));
        assert_eq!(c.ack_deadline(), Some(t(10_100, b)));
        assert!(c.handle_timeout(t(10_099, b)).is_empty());
        assert_eq!(
            c.handle_timeout(t(10_100, b)),
            vec![Command::SendBye, Command::Finish(EndReason::NoAck)]
        );
        assert!(c.is_ended());
        assert_eq!(c.ack_deadline(), None);
        assert!(c.handle_timeout(t(20_000, b)).is_empty(), "ends once");
    }

    #[test]
    fn the_ack_clears_the_deadline() {
        let b = Instant::now();
        let mut c = CallState::new(b).with_ack_wait(Duration::from_secs(10));
        c.handle(Input::Answer, t(0, b));
        c.handle(Input::Acked, t(50, b));
        assert_eq!(c.ack_deadline(), None);
        assert!(c.handle_timeout(t(60_000, b)).is_empty());
        assert_eq!(c.phase(), Phase::Confirmed);
    }

    #[test]
    fn normal_call_caller_hangs_up() {
        let b = Instant::now();
        let mut c = CallState::new(b);
        assert_eq!(c.handle(Input::Answer, t(10, b)), vec![Command::SendAnswer]);
        assert_eq!(c.handle(Input::Acked, t(20, b)), vec![Command::StartMedia]);
        assert_eq!(c.phase(), Phase::Confirmed);
        assert_eq!(
            c.handle(Input::RemoteBye, t(3000, b)),
            vec![Command::Finish(EndReason::CallerHangup)]
        );
        assert_eq!(c.answered_at(), Some(t(10, b)));
        assert_eq!(c.ended_at(), Some(t(3000, b)));
    }

    #[test]
    fn cancel_before_answer_wins_and_a_late_answer_is_ignored() {
        let b = Instant::now();
        let mut c = CallState::new(b);
        assert_eq!(
            c.handle(Input::Cancelled, t(5, b)),
            vec![Command::Finish(EndReason::CallerCancelled)]
        );
        assert!(
            c.handle(Input::Answer, t(6, b)).is_empty(),
            "no 200 after CANCEL"
        );
        assert!(c.handle(Input::Acked, t(7, b)).is_empty());
        assert_eq!(c.end_reason(), Some(&EndReason::CallerCancelled));
    }

    #[test]
    fn cancel_after_our_200_ends_with_bye() {
        let b = Instant::now();
        let mut c = CallState::new(b);
        c.handle(Input::Answer, t(5, b));
        assert_eq!(
            c.handle(Input::Cancelled, t(6, b)),
            vec![
                Command::SendBye,
                Command::Finish(EndReason::CallerCancelled)
            ]
        );
        assert!(c.handle(Input::Acked, t(7, b)).is_empty());
    }

    #[test]
    fn hangup_before_ack_waits_for_the_ack() {
        let b = Instant::now();
        let mut c = CallState::new(b);
        c.handle(Input::Answer, t(5, b));
        assert!(c
            .handle(Input::Hangup(EndReason::FlowClosed), t(6, b))
            .is_empty());
        assert_eq!(
            c.handle(Input::Acked, t(50, b)),
            vec![Command::SendBye, Command::Finish(EndReason::FlowClosed)]
        );
    }

    #[test]
    fn hangup_is_idempotent() {
        let b = Instant::now();
        let mut c = CallState::new(b);
        c.handle(Input::Answer, t(5, b));
        c.handle(Input::Acked, t(6, b));
        assert_eq!(
            c.handle(Input::Hangup(EndReason::FlowClosed), t(7, b))
                .len(),
            2
        );
        assert!(c
            .handle(Input::Hangup(EndReason::FlowClosed), t(8, b))
            .is_empty());
        assert!(c.handle(Input::RemoteBye, t(9, b)).is_empty());
    }

    #[test]
    fn shutdown_before_answer_rejects_with_503() {
        let b = Instant::now();
        let mut c = CallState::new(b);
        assert_eq!(
            c.handle(Input::Hangup(EndReason::Shutdown), t(1, b)),
            vec![
                Command::SendReject(503),
                Command::Finish(EndReason::Shutdown)
            ]
        );
    }

    #[test]
    fn operator_hangup_rejects_before_answer_and_byes_after() {
        let b = Instant::now();
        let mut c = CallState::new(b);
        assert_eq!(
            c.handle(Input::Hangup(EndReason::Operator), t(1, b)),
            vec![
                Command::SendReject(480),
                Command::Finish(EndReason::Operator)
            ]
        );
        let mut c = CallState::new(b);
        c.handle(Input::Answer, t(1, b));
        c.handle(Input::Acked, t(2, b));
        assert_eq!(
            c.handle(Input::Hangup(EndReason::Operator), t(3, b)),
            vec![Command::SendBye, Command::Finish(EndReason::Operator)]
        );
        assert_eq!(EndReason::Operator.code(), "operator_hangup");
    }

    #[test]
    fn no_ack_ends_the_call() {
        let b = Instant::now();
        let mut c = CallState::new(b);
        c.handle(Input::Answer, t(1, b));
        assert_eq!(
            c.handle(Input::DialogFailed("timeout".into()), t(32_000, b)),
            vec![Command::Finish(EndReason::NoAck)]
        );
    }
}
