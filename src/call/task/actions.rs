//! Flow actions: the one dispatch over [`FlowAction`], each arm delegating to its job
//! (media, recording, forward, close) or to an executor.
//!
//! Executors plug in here: an arm hands the action to an engine held in `Shared` together
//! with the call's [`InboxSender`](crate::call::inbox::InboxSender), books what the call now
//! waits for in `Outstanding`, and the answer comes back through the inbox
//! (`Call::on_inbox`). Steps with no engine are answered at once with a clear failure.

use super::Call;
use crate::call::executor::RequestContext;
use crate::call::inbox::Inbox;
use crate::call::state::Input;
use crate::flow::{FlowAction, FlowEvent, SpeechOutcome, StepFailure, StepRequest};
use crate::store::Record;
use chrono::Utc;
use serde_json::json;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn, Instrument};

/// The answer to a `Request` when no executor is configured.
pub(super) fn request_not_configured(id: u64) -> FlowEvent {
    FlowEvent::RequestDone {
        id,
        result: Err(StepFailure {
            code: "not_configured".into(),
            message: "integration steps are not available in this build".into(),
        }),
    }
}

/// The answer to a `Listen` when no recogniser is configured.
pub(super) fn listen_not_configured(id: u64) -> FlowEvent {
    FlowEvent::Speech {
        id,
        outcome: SpeechOutcome::Error("speech recognition is not available in this build".into()),
    }
}

impl Call {
    /// Carries out what the flow asked for, in order, until the call ends.
    pub(super) fn pump_flow(&mut self, now: Instant) {
        while let Some(action) = self.flow.poll_action() {
            if self.state.is_ended() {
                break;
            }
            // Bot audio can be seconds of samples: log its length, not its contents.
            match &action {
                FlowAction::PlayAudio { samples } => {
                    debug!(samples = samples.len(), "flow action PlayAudio")
                }
                other => debug!(action = ?other, "flow action"),
            }
            self.action(action, now);
        }
        // A `pause_bot` step pauses the bot by itself: show it in `GET /v1/calls`.
        if let Some(paused) = self.flow.is_paused() {
            if paused != self.shown_paused {
                self.shown_paused = paused;
                self.set_summary(|s| s.paused = paused);
            }
        }
    }

    fn action(&mut self, action: FlowAction, now: Instant) {
        match action {
            // Playback and the caller's media.
            FlowAction::Play { id, file } => {
                self.transcribe(|t| t.prompt(now, &file));
                self.play(id, &file)
            }
            FlowAction::Say { id, text } => {
                self.transcribe(|t| t.say(now, &text));
                self.say(id, text)
            }
            FlowAction::StopPlayback => {
                if let Some(rtp) = self.rtp.as_mut() {
                    rtp.clear_audio();
                }
                // TTS still being synthesised is cut too: its audio must not play later.
                self.says_cut.append(&mut self.says_in_flight);
            }
            FlowAction::PlayAudio { samples } => {
                if let Some(rtp) = self.rtp.as_mut() {
                    rtp.queue_audio(&samples);
                }
            }
            FlowAction::QueueMark { id } => match self.rtp.as_mut() {
                Some(rtp) => rtp.queue_mark(id),
                None => self.flow_event(FlowEvent::PlaybackFinished {
                    id,
                    interrupted: true,
                }),
            },
            FlowAction::SendDtmf { digits } => {
                if let Some(rtp) = self.rtp.as_mut() {
                    for d in digits.chars() {
                        if let Err(e) = rtp.send_dtmf(d, 100) {
                            warn!(digit = %d, error = %e, "cannot send DTMF");
                        }
                    }
                }
            }
            // Recording.
            FlowAction::StartRecording => self.start_recording(now),
            FlowAction::StopRecording => self.stop_recording(now, true),
            // Forward.
            FlowAction::Transfer { to } => {
                self.transcribe(|t| t.transfer_started(now, &to));
                self.start_transfer(&to, now)
            }
            FlowAction::Offload {
                to,
                headers,
                context,
            } => self.start_offload(to, headers, context, now),
            // The call's lifecycle (an external bot decides before answer).
            FlowAction::Answer => {
                info!("bot answers");
                self.input(Input::Answer);
            }
            FlowAction::Ring => {
                info!("bot rings");
                self.leg.ring().ok();
            }
            FlowAction::Reject { status } => {
                info!(status, "bot rejects the call");
                self.input(Input::Reject(status));
            }
            FlowAction::Close { cleared_session } => {
                self.flow_closed = true;
                info!(cleared_session, "flow closes the conversation");
                self.close_conversation(cleared_session, now);
            }
            FlowAction::TrackEvent { name, properties } => {
                metrics::counter!("voxgate_tracked_events_total").increment(1);
                self.shared.store.submit(Record::Event(json!({
                    "ts": Utc::now().to_rfc3339(),
                    "call_id": self.info.call_id,
                    "name": name,
                    "properties": properties,
                })));
            }
            // Integration steps: an executor in `Shared`, answered through the inbox.
            FlowAction::Request {
                id,
                request,
                timeout,
            } => self.request(id, request, timeout),
            FlowAction::CancelRequest { id } => self.cancel_request(id),
            // Speech: no recogniser is wired yet.
            FlowAction::Listen { id, .. } => {
                warn!(id, "listen requested but no recogniser is configured");
                self.flow_event(listen_not_configured(id));
            }
            FlowAction::StopListening { id } => {
                self.outstanding.listen_stopped(id);
            }
        }
    }

    fn play(&mut self, id: u64, file: &str) {
        let path = self.flow_def.resolve_prompt(file);
        match self.shared.prompts.get(&path) {
            Ok(samples) => self.queue_audio(id, &samples),
            Err(e) => {
                warn!(error = %e, "prompt could not be played");
                self.flow_event(FlowEvent::PlaybackFailed {
                    id,
                    reason: e.to_string(),
                });
            }
        }
    }

    /// TTS runs off the call task; the audio (or the failure) comes back to the inbox.
    fn say(&mut self, id: u64, text: String) {
        self.says_in_flight.insert(id);
        let tts = self.shared.tts.clone();
        let inbox = self.inbox_tx.clone();
        tokio::spawn(
            async move {
                let result = match tts.say(&text).await {
                    Ok(spoken) => {
                        if let Some(why) = &spoken.fallback {
                            warn!(reason = %why, "TTS unavailable: playing the fallback prompt");
                        }
                        Ok(spoken.audio)
                    }
                    Err(e) => Err(e.to_string()),
                };
                inbox.post(Inbox::Spoken { id, result });
            }
            .in_current_span(),
        );
    }

    fn request(&mut self, id: u64, request: StepRequest, timeout: Duration) {
        let Some(exec) = self.shared.requests.clone() else {
            // No executor is wired: answer at once as a clear step failure (never a hang).
            warn!(
                id,
                "integration step requested but no executor is configured"
            );
            self.flow_event(request_not_configured(id));
            return;
        };
        let ctx = RequestContext {
            call_id: self.info.call_id.clone(),
            from: self.info.from_user.clone(),
            to: self.info.to_user.clone(),
            recording_ids: self.recordings.ids().to_vec(),
        };
        self.outstanding.request_started(id);
        exec.start(&ctx, id, request, timeout, self.inbox_tx.clone());
    }

    fn cancel_request(&mut self, id: u64) {
        if self.outstanding.request_cancelled(id) {
            if let Some(exec) = self.shared.requests.as_ref() {
                exec.cancel(&self.info.call_id, id);
            }
        }
    }

    /// The call is over: abort what executors are still running for it.
    pub(super) fn cancel_outstanding(&mut self) {
        let (requests, _listens) = self.outstanding.drain();
        if let Some(exec) = self.shared.requests.as_ref() {
            for id in requests {
                exec.cancel(&self.info.call_id, id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unwired_steps_fail_clearly_instead_of_hanging() {
        match request_not_configured(3) {
            FlowEvent::RequestDone {
                id: 3,
                result: Err(f),
            } => assert_eq!(f.code, "not_configured"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            listen_not_configured(4),
            FlowEvent::Speech {
                id: 4,
                outcome: SpeechOutcome::Error(_)
            }
        ));
    }
}
