//! Close conversation and the end of the call.
//!
//! Close conversation keeps an order bot builders rely on: stop recording, wait (bounded)
//! for the recordings to finalize, write the CDR, then send BYE. The waiting is the IO-free
//! [`Closing`]; "CDR before BYE" is [`bye_last`]. When the call is over, [`Call::finish`]
//! tells the flow, logs the summary, writes the CDR and ends the far leg.

use super::cdr::{self, CallFacts, RtpCounts};
use super::Call;
use crate::call::state::{Command, EndReason, Input};
use crate::flow::FlowEvent;
use crate::store::Record;
use chrono::Utc;
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How long close conversation waits for recordings to finalize (rename + SHA-256) before
/// the BYE goes out anyway.
pub(super) const FINALIZE_WAIT: Duration = Duration::from_millis(700);

/// After the call, how long the task waits for recordings to report `ready`.
pub(super) const AFTER_END_WAIT: Duration = Duration::from_secs(3);
/// How long a bot's `session.end` waits for the media worker to close the caller-audio tap
/// (it does at its next 20 ms tick).
pub(super) const TAP_CLOSE_WAIT: Duration = Duration::from_millis(100);

/// Close conversation, waiting for recordings to finalize before CDR + BYE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Closing {
    deadline: Instant,
    cleared_session: bool,
    had_recording: bool,
}

impl Closing {
    /// The flow closed at `now` (recording already stopped).
    pub fn begin(now: Instant, cleared_session: bool, had_recording: bool) -> Closing {
        Closing {
            deadline: now + FINALIZE_WAIT,
            cleared_session,
            had_recording,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Time for CDR + BYE: every recording has finalized, or the wait is over.
    pub fn due(&self, now: Instant, unfinished_recordings: usize) -> bool {
        unfinished_recordings == 0 || now >= self.deadline
    }

    /// The `conversation.closed` tracked event.
    pub fn report(&self, finalized: bool, cdr_written: bool, bye_sent: bool) -> Value {
        json!({
            "variables_erased": self.cleared_session,
            "recordings_finalized": finalized,
            "cdr_written": cdr_written,
            "bye_sent": bye_sent,
        })
    }
}

/// Orders the lifecycle's commands so that BYE goes out last (after `Finish` wrote the CDR).
pub(super) fn bye_last(cmds: Vec<Command>) -> Vec<Command> {
    let (byes, mut rest): (Vec<Command>, Vec<Command>) =
        cmds.into_iter().partition(|c| *c == Command::SendBye);
    rest.extend(byes);
    rest
}

impl Call {
    /// Close conversation: the flow has erased its variables; finalize recordings, write the
    /// CDR, then BYE (the order bot builders rely on).
    pub(super) fn close_conversation(&mut self, cleared_session: bool, now: Instant) {
        let had_recording = self.recordings.is_recording();
        self.stop_recording(now, false);
        // Give the writer a moment to finalize (rename + sha256) so the file is complete
        // before the caller sees the BYE; never longer than FINALIZE_WAIT.
        self.closing = Some(Closing::begin(now, cleared_session, had_recording));
    }

    /// Second half of close conversation: CDR, then BYE, then the final event.
    pub(super) fn finish_close(&mut self, c: Closing) {
        let finalized = self.recordings.unfinished() == 0;
        if !finalized {
            warn!(
                pending = self.recordings.unfinished(),
                "recordings still finalizing at BYE time"
            );
        }
        self.input(Input::Hangup(EndReason::FlowClosed));
        let bye = matches!(self.state.end_reason(), Some(EndReason::FlowClosed));
        info!(
            variables_erased = c.cleared_session,
            recordings_finalized = finalized,
            had_recording = c.had_recording,
            cdr_written = self.cdr_written,
            bye_sent = bye,
            "conversation closed"
        );
        self.shared.store.submit(Record::Event(json!({
            "ts": Utc::now().to_rfc3339(),
            "call_id": self.info.call_id,
            "name": "conversation.closed",
            "properties": c.report(finalized, self.cdr_written, bye),
        })));
    }

    /// The call is over: stop recording, tell the flow, write the CDR, end the far leg.
    pub(super) fn finish(&mut self, reason: EndReason, now: Instant) {
        self.stop_recording(now, false);
        self.transcribe(|t| t.ended(now, &reason.code()));
        // A bot hears the caller up to the end: its `session.end` waits until the media
        // worker has handed over the last caller audio and closed the tap (`finish_tap`).
        let defer_end = self.flow.is_external() && self.tap.is_some();
        if defer_end && self.flow_started && !self.flow_closed {
            self.deferred_end = Some(reason.code());
        } else if self.flow_started && !self.flow_closed {
            self.flow.handle_event(
                FlowEvent::Ended {
                    reason: reason.code(),
                },
                now,
                Utc::now(),
            );
        }
        self.cancel_outstanding();
        self.abandon_refer();
        let rtp = self
            .media
            .as_ref()
            .filter(|_| self.media_started)
            .map(|m| {
                let s = m.stats();
                RtpCounts {
                    sent: s.packets_sent.load(Ordering::Relaxed),
                    received: s.packets_received.load(Ordering::Relaxed),
                    lost: s.packets_lost.load(Ordering::Relaxed),
                }
            })
            .unwrap_or_default();
        let media_ms = cdr::media_ms(self.state.answered_at(), now);
        info!(
            reason = %reason.code(),
            rtp_tx_packets = rtp.sent,
            rtp_rx_packets = rtp.received,
            rtp_lost = rtp.lost,
            media_ms,
            dtmf = self.dtmf_count,
            "call ended"
        );
        metrics::counter!("voxgate_calls_total", "outcome" => reason.code()).increment(1);
        let record = cdr::record(&CallFacts {
            info: &self.info,
            started: self.started_wall,
            answered: self.answered_wall,
            ended: Utc::now(),
            reason: &reason,
            media_ms,
            codec: self.negotiated.as_ref().map(|n| n.codec.name()),
            transfer: self.forward.outcome(),
            recording_ids: self.recordings.ids(),
            rtp,
            dtmf_digits: self.dtmf_count,
            flow: self.flow_started.then(|| self.flow.cdr_json()).flatten(),
        });
        // Queued (durably, off this task): the store never blocks a call.
        self.shared.store.submit(Record::Cdr(record));
        self.cdr_written = true;
        if self.answered_wall.is_some() {
            self.shared
                .open_cdrs
                .remove_when_stored(&self.info.call_id, self.shared.store.clone());
        }
        // Dropping the handle detaches the call from its media worker (sockets closed at
        // the next tick, after the recording feed has ended).
        self.media = None;
        if self.deferred_end.is_none() {
            self.tap = None;
        }
        self.end_far();
    }

    /// After `finish` deferred the bot's end: forwards the caller audio the media worker
    /// still hands over until it closes the tap (at its next tick, once it has read the
    /// sockets a last time; at most [`TAP_CLOSE_WAIT`]), then ends the bot's session.
    pub(super) async fn finish_tap(&mut self) {
        let Some(reason) = self.deferred_end.take() else {
            return;
        };
        let deadline = tokio::time::Instant::now() + TAP_CLOSE_WAIT;
        if let Some(tap) = self.tap.as_mut() {
            while let Ok(Some(f)) = tokio::time::timeout_at(deadline, tap.frames.recv()).await {
                self.flow.caller_audio(&f.samples);
            }
        }
        self.tap = None;
        self.flow
            .handle_event(FlowEvent::Ended { reason }, Instant::now(), Utc::now());
    }

    /// The CDR so far, kept on disk while the call is up (from the answer): if the gateway
    /// dies, the next start completes it as `gateway_crashed` (`crate::call::open_cdr`).
    /// Never blocks (written on the open-CDR thread).
    pub(super) fn write_open_cdr(&self) {
        if self.answered_wall.is_none() || self.cdr_written {
            return;
        }
        let reason = EndReason::Error(String::new());
        let mut record = cdr::record(&CallFacts {
            info: &self.info,
            started: self.started_wall,
            answered: self.answered_wall,
            ended: Utc::now(),
            reason: &reason,
            media_ms: 0,
            codec: self.negotiated.as_ref().map(|n| n.codec.name()),
            transfer: self.forward.outcome(),
            recording_ids: self.recordings.ids(),
            rtp: RtpCounts::default(),
            dtmf_digits: self.dtmf_count,
            flow: None,
        });
        if let Some(o) = record.as_object_mut() {
            o.insert("end_reason".into(), json!("in_progress"));
            o.insert("end_detail".into(), Value::Null);
            o.insert("end".into(), Value::Null);
            o.insert("duration_ms".into(), Value::Null);
            o.insert("rtp".into(), Value::Null);
        }
        self.shared.open_cdrs.write(&self.info.call_id, &record);
    }

    /// After the call: give recordings a moment to finish so `recording.ready` is logged
    /// and reaches the flow.
    pub(super) async fn after_end(&mut self) {
        let deadline = Instant::now() + AFTER_END_WAIT;
        while self.recordings.unfinished() > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.rec_rx.recv()).await {
                Ok(Some(e)) => self.on_recorder_event(e),
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::state::CallState;

    fn ms(b: Instant, n: u64) -> Instant {
        b + Duration::from_millis(n)
    }

    #[test]
    fn close_waits_for_recordings_but_never_past_700ms() {
        let b = Instant::now();
        let c = Closing::begin(b, true, true);
        assert_eq!(c.deadline(), ms(b, 700));
        assert!(!c.due(ms(b, 100), 1), "recording still finalizing");
        assert!(c.due(ms(b, 120), 0), "finalized: go at once");
        assert!(!c.due(ms(b, 699), 2));
        assert!(c.due(ms(b, 700), 2), "bounded wait");
    }

    #[test]
    fn close_without_recording_is_due_at_once() {
        let b = Instant::now();
        assert!(Closing::begin(b, false, false).due(b, 0));
    }

    #[test]
    fn the_cdr_is_written_before_the_bye() {
        // A confirmed call closed by the flow: the lifecycle says BYE then Finish; the call
        // carries them out with Finish (CDR) first.
        let b = Instant::now();
        let mut s = CallState::new(b);
        s.handle(Input::Answer, b);
        s.handle(Input::Acked, b);
        let cmds = s.handle(Input::Hangup(EndReason::FlowClosed), ms(b, 5));
        assert_eq!(
            bye_last(cmds),
            vec![Command::Finish(EndReason::FlowClosed), Command::SendBye]
        );
        // Commands without a BYE keep their order.
        let cmds = vec![Command::SendAnswer, Command::StartMedia];
        assert_eq!(bye_last(cmds.clone()), cmds);
    }

    #[test]
    fn the_close_report_says_what_succeeded() {
        let c = Closing::begin(Instant::now(), true, true);
        assert_eq!(
            c.report(false, true, true),
            json!({
                "variables_erased": true,
                "recordings_finalized": false,
                "cdr_written": true,
                "bye_sent": true,
            })
        );
    }
}
