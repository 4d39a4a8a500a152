//! The IO-free heart of the WebSocket bridge: turns call events into protocol messages and the
//! bot's commands into flow actions, tracks acks/results, marks, the pre-answer decision, and
//! applies the failure policy when the bot cannot be reached. The tokio shell (client.rs) only
//! moves frames; every decision is made here so tests can drive it with fabricated Instants.

use super::protocol::{
    decode_native, decode_twilio, pcm_from_bytes, pcm_to_bytes, ulaw_b64_encode, AudioFormat,
    Command, Dialect, Event, Inbound, Outbox, Outgoing, TwilioIn, FRAME_SAMPLES,
};
use crate::flow::{FlowAction, FlowEvent, SessionInfo};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// What to do when the bot cannot be reached (connect timeout) or its socket drops mid-call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FailurePolicy {
    /// Play the fallback prompt (if any), then close the conversation.
    #[default]
    Prompt,
    /// Forward the call to the fallback number (the prompt plays if that fails).
    Forward,
    /// Reconnect with the same call_id; the bot sends `resume {last_seq}`.
    Reconnect,
}

#[derive(Debug, Clone)]
pub struct BridgeConfig {
    pub dialect: Dialect,
    pub on_connect_failure: FailurePolicy,
    pub on_drop: FailurePolicy,
    pub fallback_prompt: Option<String>,
    pub fallback_number: Option<String>,
    pub connect_timeout: Duration,
    /// How long a connected bot may take to send `answer`/`ring`/`reject`.
    pub answer_timeout: Duration,
    pub reconnect_attempts: u32,
    pub reconnect_backoff: Duration,
    pub replay_capacity: usize,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            dialect: Dialect::Native,
            on_connect_failure: FailurePolicy::Prompt,
            on_drop: FailurePolicy::Prompt,
            fallback_prompt: None,
            fallback_number: None,
            connect_timeout: Duration::from_secs(3),
            answer_timeout: Duration::from_secs(5),
            reconnect_attempts: 3,
            reconnect_backoff: Duration::from_millis(200),
            replay_capacity: 512,
        }
    }
}

/// What the shell must do with the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum IoRequest {
    /// Open a connection; report its frames tagged with this generation.
    Connect { generation: u64 },
    /// Drop the current connection now (timed out or given up on).
    Abort,
    /// Send what is queued, close the socket politely, and stop.
    Finish,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Link {
    Connecting {
        deadline: Instant,
        ever_up: bool,
    },
    Up,
    /// Waiting to reconnect at this instant.
    Backoff(Instant),
    /// Given up on the bot (fallback running) or the session is over.
    Gone,
}

#[derive(Debug, Clone)]
enum Pending {
    Command {
        id: Option<String>,
        name: &'static str,
    },
    Mark {
        id: Option<String>,
        name: String,
    },
    Fallback,
}

pub struct BridgeCore {
    cfg: BridgeConfig,
    info: SessionInfo,
    outbox: Outbox,
    link: Link,
    generation: u64,
    connections: u32,
    reconnects_left: u32,
    actions: VecDeque<FlowAction>,
    out: VecDeque<Outgoing>,
    requests: VecDeque<IoRequest>,
    decided: bool,
    answered: bool,
    answer_deadline: Option<Instant>,
    next_play: u64,
    pending: HashMap<u64, Pending>,
    record_start: VecDeque<Option<String>>,
    record_stop: VecDeque<Option<String>>,
    transfer: Option<(Option<String>, bool)>,
    audio_paused: bool,
    variables: Map<String, Value>,
    ended: bool,
    started_at: Instant,
    dtmf_count: u32,
    recordings: Vec<String>,
    transfer_outcome: Option<String>,
    media_chunk: u64,
    stream_sid: String,
}

impl BridgeCore {
    /// A bridge for one call; it immediately asks the shell to connect.
    pub fn new(cfg: BridgeConfig, info: SessionInfo, now: Instant) -> Self {
        let outbox = Outbox::new(info.call_id.clone(), cfg.replay_capacity);
        let stream_sid = format!("MZ{}", &hex::encode(sha_short(&info.call_id)));
        let mut core = BridgeCore {
            reconnects_left: cfg.reconnect_attempts,
            link: Link::Connecting {
                deadline: now + cfg.connect_timeout,
                ever_up: false,
            },
            cfg,
            info,
            outbox,
            generation: 1,
            connections: 0,
            actions: VecDeque::new(),
            out: VecDeque::new(),
            requests: VecDeque::new(),
            decided: false,
            answered: false,
            answer_deadline: None,
            next_play: 1,
            pending: HashMap::new(),
            record_start: VecDeque::new(),
            record_stop: VecDeque::new(),
            transfer: None,
            audio_paused: false,
            variables: Map::new(),
            ended: false,
            started_at: now,
            dtmf_count: 0,
            recordings: Vec::new(),
            transfer_outcome: None,
            media_chunk: 0,
            stream_sid,
        };
        core.requests
            .push_back(IoRequest::Connect { generation: 1 });
        core
    }

    pub fn poll_action(&mut self) -> Option<FlowAction> {
        self.actions.pop_front()
    }
    pub fn poll_outgoing(&mut self) -> Option<Outgoing> {
        self.out.pop_front()
    }
    pub fn poll_request(&mut self) -> Option<IoRequest> {
        self.requests.pop_front()
    }
    pub fn call_id(&self) -> &str {
        &self.info.call_id
    }

    /// The last seq stamped on a sent message.
    pub fn last_seq(&self) -> u64 {
        self.outbox.last_seq()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.ended {
            return None;
        }
        let link = match self.link {
            Link::Connecting { deadline, .. } => Some(deadline),
            Link::Backoff(at) => Some(at),
            _ => None,
        };
        match (link, self.answer_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        match self.link {
            Link::Connecting { deadline, ever_up } if now >= deadline => {
                warn!(
                    timeout_ms = self.cfg.connect_timeout.as_millis() as u64,
                    "bot connect timed out"
                );
                self.requests.push_back(IoRequest::Abort);
                self.generation += 1;
                let policy = if ever_up {
                    self.cfg.on_drop
                } else {
                    self.cfg.on_connect_failure
                };
                self.failure(policy, "connect timeout", now);
            }
            Link::Backoff(at) if now >= at => self.connect(now),
            _ => {}
        }
        if let Some(d) = self.answer_deadline {
            if now >= d && !self.decided {
                warn!("the bot made no answer/ring/reject decision in time");
                self.answer_deadline = None;
                self.requests.push_back(IoRequest::Abort);
                self.generation += 1;
                self.link = Link::Gone;
                self.fallback(self.cfg.on_connect_failure, now);
            }
        }
    }

    fn connect(&mut self, now: Instant) {
        self.generation += 1;
        let ever_up = self.connections > 0;
        self.link = Link::Connecting {
            deadline: now + self.cfg.connect_timeout,
            ever_up,
        };
        self.requests.push_back(IoRequest::Connect {
            generation: self.generation,
        });
    }

    /// The connection of `generation` is open.
    pub fn on_connected(&mut self, generation: u64, now: Instant) {
        if generation != self.generation || self.ended || self.link == Link::Gone {
            return;
        }
        self.link = Link::Up;
        let reconnect = self.connections > 0;
        self.connections += 1;
        self.reconnects_left = self.cfg.reconnect_attempts;
        info!(reconnect, "bot connected");
        match self.cfg.dialect {
            Dialect::Native => {
                self.send(Event::SessionStart {
                    from: self.info.from.clone(),
                    to: self.info.to.clone(),
                    headers: self.info.headers.clone(),
                    audio: AudioFormat::pcm16(),
                    reconnect,
                });
                if !self.decided {
                    self.answer_deadline = Some(now + self.cfg.answer_timeout);
                }
            }
            Dialect::Twilio => {
                self.twilio(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}));
                self.twilio(json!({
                    "event": "start",
                    "streamSid": self.stream_sid,
                    "start": {
                        "streamSid": self.stream_sid,
                        "accountSid": "",
                        "callSid": self.info.call_id,
                        "tracks": ["inbound"],
                        "customParameters": {"from": self.info.from, "to": self.info.to},
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    },
                }));
                // Twilio bots never decide: the call is answered once they are connected.
                self.decide_answer();
            }
        }
    }

    /// The connection of `generation` closed or could not be opened.
    pub fn on_closed(&mut self, generation: u64, why: &str, now: Instant) {
        if generation != self.generation || self.ended || self.link == Link::Gone {
            return;
        }
        let was_up = self.link == Link::Up;
        let ever_up = was_up || matches!(self.link, Link::Connecting { ever_up: true, .. });
        warn!(reason = %why, was_up, "bot connection lost");
        self.generation += 1;
        let policy = if ever_up {
            self.cfg.on_drop
        } else {
            self.cfg.on_connect_failure
        };
        self.failure(policy, why, now);
    }

    fn failure(&mut self, policy: FailurePolicy, why: &str, now: Instant) {
        metrics::counter!("voxgate_ws_failures_total").increment(1);
        if policy == FailurePolicy::Reconnect && self.reconnects_left > 0 {
            self.reconnects_left -= 1;
            info!(left = self.reconnects_left, reason = %why, "reconnecting to the bot");
            self.link = Link::Backoff(now + self.cfg.reconnect_backoff);
            return;
        }
        self.link = Link::Gone;
        self.fallback(policy, now);
    }

    /// The bot is gone for good: keep the caller from dead air.
    fn fallback(&mut self, policy: FailurePolicy, now: Instant) {
        let _ = now;
        info!(?policy, "bot unavailable: failure policy");
        self.decide_answer();
        match (&policy, self.cfg.fallback_number.clone()) {
            (FailurePolicy::Forward, Some(to)) => {
                self.transfer = Some((None, true));
                self.actions.push_back(FlowAction::Transfer { to });
            }
            _ => self.fallback_prompt(),
        }
    }

    fn fallback_prompt(&mut self) {
        match self.cfg.fallback_prompt.clone() {
            Some(file) => {
                let id = self.play_id(Pending::Fallback);
                self.actions.push_back(FlowAction::Play { id, file });
            }
            None => self.actions.push_back(FlowAction::Close {
                cleared_session: false,
            }),
        }
    }

    fn decide_answer(&mut self) {
        if !self.decided {
            self.decided = true;
            self.answered = true;
            self.answer_deadline = None;
            self.actions.push_back(FlowAction::Answer);
        }
    }

    fn play_id(&mut self, p: Pending) -> u64 {
        let id = self.next_play;
        self.next_play += 1;
        self.pending.insert(id, p);
        id
    }

    fn send(&mut self, event: Event) {
        if self.cfg.dialect != Dialect::Native {
            return;
        }
        let ts = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let text = self.outbox.native(&event, &ts);
        if self.link == Link::Up {
            self.out.push_back(Outgoing::Text(text));
        }
    }

    fn twilio(&mut self, value: Value) {
        let text = self.outbox.twilio(value);
        if self.link == Link::Up {
            self.out.push_back(Outgoing::Text(text));
        }
    }

    fn result(&mut self, id: Option<String>, name: &str, outcome: Result<(), String>) {
        if let Some(id) = id {
            let (ok, reason) = match outcome {
                Ok(()) => (true, None),
                Err(r) => (false, Some(r)),
            };
            self.send(Event::Result {
                id,
                command: name.to_string(),
                ok,
                reason,
            });
        }
    }

    fn bot_active(&self) -> bool {
        !self.ended && self.link == Link::Up
    }

    /// A text frame from the bot.
    pub fn on_text(&mut self, generation: u64, text: &str, now: Instant) {
        if generation != self.generation || !self.bot_active() {
            return;
        }
        match self.cfg.dialect {
            Dialect::Native => match decode_native(text) {
                Ok(inbound) => self.command(inbound, now),
                Err(rej) => {
                    warn!(error = %rej.error, "bad message from the bot");
                    if let Some(id) = rej.id.clone() {
                        self.send(Event::Ack { id: id.clone() });
                        self.result(Some(id), "invalid", Err(rej.error.to_string()));
                    }
                    self.send(Event::Error {
                        id: rej.id,
                        code: rej.error.code().into(),
                        message: rej.error.to_string(),
                    });
                }
            },
            Dialect::Twilio => match decode_twilio(text) {
                Ok(TwilioIn::Media(samples)) => self.bot_audio(samples),
                Ok(TwilioIn::Mark(name)) => {
                    let id = self.play_id(Pending::Mark { id: None, name });
                    self.actions.push_back(FlowAction::QueueMark { id });
                }
                Ok(TwilioIn::Clear) => self.actions.push_back(FlowAction::StopPlayback),
                Ok(TwilioIn::Ignored) => {}
                Err(e) => warn!(error = %e, "bad message from the Twilio bot; ignored"),
            },
        }
    }

    /// A binary frame from the bot: PCM16LE audio (native dialect only).
    pub fn on_binary(&mut self, generation: u64, data: &[u8]) {
        if generation != self.generation || !self.bot_active() {
            return;
        }
        if self.cfg.dialect != Dialect::Native {
            warn!("binary frame from a Twilio bot; ignored");
            return;
        }
        match pcm_from_bytes(data) {
            Ok(samples) => self.bot_audio(samples),
            Err(e) => self.send(Event::Error {
                id: None,
                code: e.code().into(),
                message: e.to_string(),
            }),
        }
    }

    fn bot_audio(&mut self, samples: Vec<i16>) {
        if !samples.is_empty() {
            self.actions.push_back(FlowAction::PlayAudio { samples });
        }
    }

    fn command(&mut self, inbound: Inbound, now: Instant) {
        let Inbound { id, command } = inbound;
        let name = command.name();
        if let Some(id) = &id {
            self.send(Event::Ack { id: id.clone() });
        }
        let rid = id.clone();
        let done = |s: &mut Self, r: Result<(), String>| s.result(rid.clone(), name, r);
        match command {
            Command::Answer => {
                if self.decided {
                    done(
                        self,
                        Err("the call was already answered or rejected".into()),
                    );
                } else {
                    self.decide_answer();
                    done(self, Ok(()));
                }
            }
            Command::Ring => {
                if self.decided {
                    done(
                        self,
                        Err("the call was already answered or rejected".into()),
                    );
                } else {
                    self.actions.push_back(FlowAction::Ring);
                    done(self, Ok(()));
                }
            }
            Command::Reject { sip_code } => {
                if self.decided {
                    done(
                        self,
                        Err("the call was already answered or rejected".into()),
                    );
                } else if !(300..=699).contains(&sip_code) {
                    done(self, Err(format!("sip_code {sip_code} is not 300-699")));
                } else {
                    self.decided = true;
                    self.answer_deadline = None;
                    self.actions
                        .push_back(FlowAction::Reject { status: sip_code });
                    done(self, Ok(()));
                    self.end_session("rejected", now);
                }
            }
            Command::Say { text } => {
                let pid = self.play_id(Pending::Command { id, name });
                self.actions.push_back(FlowAction::Say { id: pid, text });
            }
            Command::Play { file } => {
                let pid = self.play_id(Pending::Command { id, name });
                self.actions.push_back(FlowAction::Play { id: pid, file });
            }
            Command::Mark { name: mark } => {
                let pid = self.play_id(Pending::Mark { id, name: mark });
                self.actions.push_back(FlowAction::QueueMark { id: pid });
            }
            Command::Clear => {
                self.actions.push_back(FlowAction::StopPlayback);
                done(self, Ok(()));
            }
            Command::RecordStart => {
                self.record_start.push_back(id);
                self.actions.push_back(FlowAction::StartRecording);
            }
            Command::RecordStop => {
                self.record_stop.push_back(id);
                self.actions.push_back(FlowAction::StopRecording);
            }
            Command::Transfer { to, mode } => {
                if let Some(m) = mode {
                    info!(requested_mode = %m, "transfer mode is set by transfer.mode; request noted");
                }
                if self.transfer.is_some() {
                    done(self, Err("a forward is already in progress".into()));
                } else {
                    self.transfer = Some((id, false));
                    self.actions.push_back(FlowAction::Transfer { to });
                }
            }
            Command::Hangup | Command::Close { .. } => {
                let cleared = matches!(
                    command,
                    Command::Close {
                        clear_session: true
                    }
                );
                if cleared {
                    self.variables.clear();
                }
                done(self, Ok(()));
                if self.answered {
                    self.actions.push_back(FlowAction::Close {
                        cleared_session: cleared,
                    });
                } else {
                    self.decided = true;
                    self.answer_deadline = None;
                    self.actions.push_back(FlowAction::Reject { status: 480 });
                }
                self.end_session("bot_closed", now);
            }
            Command::SendDtmf { digits } => {
                let valid = !digits.is_empty()
                    && digits.len() <= 64
                    && digits
                        .chars()
                        .all(|c| c.is_ascii_digit() || "*#ABCDabcd".contains(c));
                if valid {
                    self.actions.push_back(FlowAction::SendDtmf {
                        digits: digits.to_ascii_uppercase(),
                    });
                    done(self, Ok(()));
                } else {
                    done(self, Err("digits must be 1-64 of 0-9 * # A-D".into()));
                }
            }
            Command::SetVariables { variables } => {
                if self.variables.len() + variables.len() > 256 {
                    done(self, Err("more than 256 variables".into()));
                } else {
                    self.variables.extend(variables);
                    done(self, Ok(()));
                }
            }
            Command::ClearSession => {
                self.variables.clear();
                done(self, Ok(()));
            }
            Command::Pause => {
                self.audio_paused = true;
                done(self, Ok(()));
            }
            Command::Resume { last_seq: None } => {
                self.audio_paused = false;
                done(self, Ok(()));
            }
            Command::Resume {
                last_seq: Some(last),
            } => {
                let replay = match self.outbox.replay_after(last) {
                    Ok(r) => Ok(r),
                    Err(gap) => {
                        let msg = gap.to_string();
                        self.send(Event::Error {
                            id: id.clone(),
                            code: "replay_gap".into(),
                            message: msg,
                        });
                        self.outbox.replay_after(gap.oldest - 1).map_err(|_| ())
                    }
                };
                let replay = replay.unwrap_or_default();
                info!(last_seq = last, replayed = replay.len(), "replaying events");
                self.out.extend(replay.into_iter().map(Outgoing::Text));
                done(self, Ok(()));
            }
        }
    }

    /// Caller audio, one or more 20 ms frames (8 kHz PCM).
    pub fn caller_audio(&mut self, samples: &[i16]) {
        if !self.bot_active() || self.audio_paused || !self.answered {
            return;
        }
        for frame in samples.chunks(FRAME_SAMPLES) {
            match self.cfg.dialect {
                Dialect::Native => self.out.push_back(Outgoing::Binary(pcm_to_bytes(frame))),
                Dialect::Twilio => {
                    self.media_chunk += 1;
                    let v = json!({
                        "event": "media",
                        "streamSid": self.stream_sid,
                        "media": {
                            "track": "inbound",
                            "chunk": self.media_chunk.to_string(),
                            "timestamp": ((self.media_chunk - 1) * 20).to_string(),
                            "payload": ulaw_b64_encode(frame),
                        },
                    });
                    self.twilio(v);
                }
            }
        }
    }

    /// What happened on the call.
    pub fn handle_event(&mut self, ev: FlowEvent, now: Instant) {
        if self.ended {
            return;
        }
        match ev {
            FlowEvent::Started(_) => {}
            // Answers to the embedded engine's integration and speech steps; an external bot
            // does not ask for them.
            FlowEvent::RequestDone { .. }
            | FlowEvent::SpeechStarted { .. }
            | FlowEvent::Speech { .. } => {}
            FlowEvent::Dtmf { digit, duration_ms } => {
                self.dtmf_count += 1;
                match self.cfg.dialect {
                    Dialect::Native => self.send(Event::Dtmf {
                        digit: digit.to_string(),
                        duration_ms,
                    }),
                    Dialect::Twilio => self.twilio(json!({
                        "event": "dtmf",
                        "streamSid": self.stream_sid,
                        "dtmf": {"track": "inbound_track", "digit": digit.to_string()},
                    })),
                }
            }
            FlowEvent::PlaybackFinished { id, interrupted } => {
                self.playback_done(id, if interrupted { Err(None) } else { Ok(()) })
            }
            FlowEvent::PlaybackFailed { id, reason } => self.playback_done(id, Err(Some(reason))),
            FlowEvent::RecordingStarted { id } => {
                self.recordings.push(id.clone());
                let cmd = self.record_start.pop_front().flatten();
                self.send(Event::RecordingStarted { recording_id: id });
                self.result(cmd, "record.start", Ok(()));
            }
            FlowEvent::RecordingStopped { id } => {
                let cmd = self.record_stop.pop_front().flatten();
                self.send(Event::RecordingStopped { recording_id: id });
                self.result(cmd, "record.stop", Ok(()));
            }
            FlowEvent::RecordingFailed { id, reason } => {
                self.send(Event::RecordingFailed {
                    recording_id: id,
                    reason: reason.clone(),
                });
                if let Some(cmd) = self.record_start.pop_front() {
                    self.result(cmd, "record.start", Err(reason));
                } else if let Some(cmd) = self.record_stop.pop_front() {
                    self.result(cmd, "record.stop", Err(reason));
                }
            }
            FlowEvent::RecordingReady {
                id,
                duration_ms,
                sha256,
            } => self.send(Event::RecordingReady {
                recording_id: id,
                duration_ms,
                sha256,
            }),
            FlowEvent::TransferProgress { status } => self.send(Event::TransferProgress { status }),
            FlowEvent::TransferCompleted { to, mode } => {
                self.transfer_outcome = Some(format!("completed:{mode}:{to}"));
                let cmd = self.transfer.take().and_then(|(id, _)| id);
                self.send(Event::TransferCompleted { to, mode });
                self.result(cmd, "transfer", Ok(()));
                self.end_session("transferred", now);
            }
            FlowEvent::TransferFailed { reason, detail } => {
                self.transfer_outcome = Some(format!("failed:{reason}"));
                let (cmd, fallback) = self.transfer.take().unwrap_or((None, false));
                self.send(Event::TransferFailed {
                    reason: reason.clone(),
                    detail,
                });
                self.result(cmd, "transfer", Err(reason));
                if fallback {
                    self.fallback_prompt();
                }
            }
            FlowEvent::Paused => self.send(Event::SessionPaused),
            FlowEvent::Resumed => self.send(Event::SessionResumed),
            FlowEvent::Ended { reason } => self.end_session(&reason, now),
        }
    }

    fn playback_done(&mut self, id: u64, outcome: Result<(), Option<String>>) {
        match self.pending.remove(&id) {
            Some(Pending::Command { id, name }) => {
                let r = outcome.map_err(|r| r.unwrap_or_else(|| "interrupted".into()));
                self.result(id, name, r);
            }
            Some(Pending::Mark { id, name }) => {
                let cleared = outcome.is_err();
                match self.cfg.dialect {
                    Dialect::Native => self.send(Event::PlaybackMark {
                        name: name.clone(),
                        cleared,
                    }),
                    Dialect::Twilio => self.twilio(json!({
                        "event": "mark",
                        "streamSid": self.stream_sid,
                        "mark": {"name": name},
                    })),
                }
                self.result(id, "mark", Ok(()));
            }
            Some(Pending::Fallback) => self.actions.push_back(FlowAction::Close {
                cleared_session: false,
            }),
            None => {}
        }
    }

    fn end_session(&mut self, reason: &str, now: Instant) {
        if self.ended {
            return;
        }
        let cdr = json!({
            "duration_ms": now.saturating_duration_since(self.started_at).as_millis() as u64,
            "answered": self.answered,
            "dtmf_digits": self.dtmf_count,
            "recording_ids": self.recordings,
            "transfer": self.transfer_outcome,
            "variables": self.variables,
        });
        match self.cfg.dialect {
            Dialect::Native => self.send(Event::SessionEnd {
                reason: reason.to_string(),
                cdr,
            }),
            Dialect::Twilio => self.twilio(json!({
                "event": "stop",
                "streamSid": self.stream_sid,
                "stop": {"accountSid": "", "callSid": self.info.call_id},
            })),
        }
        info!(reason, "bot session ended");
        self.ended = true;
        self.answer_deadline = None;
        self.requests.push_back(IoRequest::Finish);
    }
}

fn sha_short(s: &str) -> [u8; 16] {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(s.as_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&d[..16]);
    out
}

#[cfg(test)]
mod tests;
