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
use crate::call::state::{Input, Phase};
use crate::flow::{FlowAction, FlowEvent, SpeechOutcome, StepFailure, StepRequest};
use crate::media::core::MediaCommand;
use crate::media::playback::Audio;
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

/// Runs a disk read from the call task: on the multi-threaded runtime the worker thread is
/// handed off first, so other tasks are not held up.
fn load_blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Bot audio held between the 200 OK and the ACK, at most (30 s at 8 kHz, as the media
/// core's own bound on streamed bot audio).
const EARLY_AUDIO_MAX_SAMPLES: usize = 30 * 8000;
/// Actions held between the 200 OK and the ACK, at most.
const EARLY_ACTIONS_MAX: usize = 1024;

/// Actions that need the caller's media session: between the 200 OK and the ACK they wait.
fn waits_for_media(action: &FlowAction) -> bool {
    matches!(
        action,
        FlowAction::Play { .. }
            | FlowAction::Say { .. }
            | FlowAction::StopPlayback
            | FlowAction::PlayAudio { .. }
            | FlowAction::QueueMark { .. }
            | FlowAction::SendDtmf { .. }
    )
}

impl Call {
    /// Holds a media action until the ACK starts media (bounded: audio past the bound is
    /// dropped with a warning; a mark past it is reported as interrupted).
    fn defer_until_media(&mut self, action: FlowAction) {
        let held_samples: usize = self
            .early_media
            .iter()
            .map(|a| match a {
                FlowAction::PlayAudio { samples } => samples.len(),
                _ => 0,
            })
            .sum();
        let fits = self.early_media.len() < EARLY_ACTIONS_MAX
            && match &action {
                FlowAction::PlayAudio { samples } => {
                    held_samples + samples.len() <= EARLY_AUDIO_MAX_SAMPLES
                }
                _ => true,
            };
        if fits {
            self.early_media.push(action);
            return;
        }
        warn!("too much bot audio before the ACK: dropping it");
        if let FlowAction::QueueMark { id } = action {
            self.flow_event(FlowEvent::PlaybackFinished {
                id,
                interrupted: true,
            });
        }
    }

    /// Media has started: carry out what waited for it, in order.
    pub(super) fn release_early_media(&mut self, now: Instant) {
        for action in std::mem::take(&mut self.early_media) {
            self.action(action, now);
        }
    }

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
        // An external bot answers and streams at once; its audio (and the marks behind it)
        // reaches the caller once the ACK starts media, in order, instead of being lost.
        if !self.media_started && self.state.phase() == Phase::Answered && waits_for_media(&action)
        {
            self.defer_until_media(action);
            return;
        }
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
                if self.media_started {
                    self.media_cmd(MediaCommand::ClearAudio);
                }
                // TTS still being synthesised is cut too: its audio must not play later.
                self.says_cut.append(&mut self.says_in_flight);
            }
            FlowAction::PlayAudio { samples } => {
                if self.media_started {
                    self.media_cmd(MediaCommand::PlayPcm(samples));
                }
            }
            FlowAction::QueueMark { id } => {
                if !(self.media_started && self.media_cmd(MediaCommand::Mark(id))) {
                    self.flow_event(FlowEvent::PlaybackFinished {
                        id,
                        interrupted: true,
                    });
                }
            }
            FlowAction::SendDtmf { digits } => {
                if self.media_started {
                    self.media_cmd(MediaCommand::SendDtmf {
                        digits,
                        duration_ms: 100,
                    });
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
            // Speech: a recogniser from the pool, fed in `media.rs`, answers through the inbox.
            FlowAction::Listen { id, spec } => self.listen(id, spec),
            FlowAction::StopListening { id } => {
                if self.outstanding.listen_stopped(id) {
                    debug!(id, "listen stopped");
                }
                if self.listening.as_ref().is_some_and(|l| l.id() == id) {
                    self.listening = None;
                }
            }
        }
    }

    fn play(&mut self, id: u64, file: &str) {
        let path = self.flow_def.resolve_prompt(file);
        // Cached prompts are a memory lookup; a first play loads the file with the worker
        // thread handed off (block_in_place), keeping the order of playback actions.
        let prompt = match self.shared.prompts.lookup(&path) {
            Some(p) => Ok(p),
            None => load_blocking(|| self.shared.prompts.get_shared(&path)),
        };
        match prompt {
            Ok(audio) => self.queue_audio(id, Audio::Shared(audio)),
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
            websocket: self.flow.is_external(),
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

    fn listen(&mut self, id: u64, spec: crate::flow::ListenSpec) {
        let pool = match self.shared.speech.get() {
            Ok(pool) => pool,
            Err(e) => {
                // Start-up logged why once; each listen says it at debug level only.
                debug!(id, code = e.code(), error = %e, "listen failed over: no recogniser");
                let outcome = e.outcome();
                self.flow_event(FlowEvent::Speech { id, outcome });
                return;
            }
        };
        // One listen at a time: a new one replaces (stops) the old.
        self.listening = None;
        let inbox = self.inbox_tx.clone();
        let post = Box::new(move |ev: FlowEvent| {
            let msg = match ev {
                FlowEvent::SpeechStarted { id } => Inbox::SpeechStarted { id },
                FlowEvent::Speech { id, outcome } => Inbox::Speech { id, outcome },
                _ => return,
            };
            inbox.post(msg);
        });
        match pool.listen(id, spec, post) {
            Ok(handle) => {
                info!(id, engine = pool.engine(), "listening");
                self.outstanding.listen_started(id);
                self.listening = Some(handle);
                // The recogniser hears the caller through the media core's tap.
                if self.media_started {
                    self.open_tap();
                }
            }
            Err(e) => {
                warn!(id, code = e.code(), error = %e, "listen failed over");
                self.flow_event(FlowEvent::Speech {
                    id,
                    outcome: e.outcome(),
                });
            }
        }
    }

    /// The recogniser answered `id`: the listen is over.
    pub(super) fn speech_done(&mut self, id: u64, outcome: &SpeechOutcome) {
        if self.listening.as_ref().is_some_and(|l| l.id() == id) {
            if let Some(l) = self.listening.take() {
                let dropped = l.sink().dropped();
                if dropped > 0 {
                    warn!(
                        id,
                        dropped, "speech: frames dropped (recogniser fell behind)"
                    );
                }
            }
        }
        match outcome {
            SpeechOutcome::Heard { text, confidence } => {
                info!(id, %text, confidence, "speech heard")
            }
            SpeechOutcome::NoMatch { text, confidence } => {
                info!(id, %text, confidence, "speech: no match")
            }
            SpeechOutcome::Timeout => info!(id, "speech: no speech before the timeout"),
            SpeechOutcome::Error(e) => {
                warn!(id, code = %e.code, error = %e.message, "speech: recogniser error")
            }
        }
    }

    /// The call is over: abort what executors are still running for it.
    pub(super) fn cancel_outstanding(&mut self) {
        self.listening = None;
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
        match crate::speech::SpeechError::Unavailable("no library".into()).outcome() {
            SpeechOutcome::Error(f) => {
                assert_eq!(f.code, "unavailable");
                assert!(f.message.contains("no library"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
    }
}
