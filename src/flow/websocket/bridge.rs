//! The IO-free heart of the WebSocket bridge: turns call events into protocol messages and the
//! bot's commands into flow actions, tracks acks/results, marks, the pre-answer decision, and
//! applies the failure policy when the bot cannot be reached. The tokio shell (client.rs) only
//! moves frames; every decision is made here so tests can drive it with fabricated Instants.

use super::protocol::{
    decode_native, pcm_from_bytes, pcm_to_bytes, AudioFormat, Command, DecodeError, Dialect, Event,
    Inbound, Outbox, Outgoing, DEFAULT_MAX_MESSAGE_BYTES,
};
use super::twilio::{self, StreamIds, TwilioIn};
use super::uplink::CallerStream;
use crate::flow::{FlowAction, FlowEvent, SessionInfo, StepRequest};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// WebSocket close status for a message too big to read (RFC 6455 §7.4.1).
pub const CLOSE_TOO_BIG: u16 = 1009;

/// Refused bot messages logged at `warn` per call; the rest at `debug` (counted at the end).
const WARN_REFUSALS: u32 = 5;

/// The largest `dispatch` payload (serialized): an event for a webhook, not a file transfer.
pub const MAX_DISPATCH_BYTES: usize = 256 * 1024;
/// Dispatches waiting for the executor at once, per call.
const MAX_PENDING_DISPATCHES: usize = 64;
/// How long the executor may take to journal and queue a dispatched event.
const DISPATCH_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// The largest message from the bot that is used; larger ones get a `too_large` error.
    pub max_message_bytes: usize,
    pub twilio: TwilioConfig,
}

/// What Twilio mode puts in `start` beyond the call itself.
#[derive(Debug, Clone)]
pub struct TwilioConfig {
    pub account_sid: String,
    /// Static `customParameters`.
    pub parameters: BTreeMap<String, String>,
    /// INVITE headers copied into `customParameters`, under the name given.
    pub parameter_headers: Vec<String>,
}

impl Default for TwilioConfig {
    fn default() -> Self {
        TwilioConfig {
            account_sid: twilio::DEFAULT_ACCOUNT_SID.to_string(),
            parameters: BTreeMap::new(),
            parameter_headers: Vec::new(),
        }
    }
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
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            twilio: TwilioConfig::default(),
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
    /// The caller's audio as a continuous 20 ms frame stream (running while it flows).
    caller: CallerStream,
    /// Twilio: media messages sent on this connection (`chunk`).
    chunk: u64,
    ids: StreamIds,
    custom_parameters: BTreeMap<String, String>,
    refused: u32,
    /// `dispatch` commands handed to the executor: request id -> (command id, payload).
    dispatches: HashMap<u64, (Option<String>, Value)>,
    next_request: u64,
}

impl BridgeCore {
    /// A bridge for one call; it immediately asks the shell to connect.
    pub fn new(cfg: BridgeConfig, info: SessionInfo, now: Instant) -> Self {
        let outbox = Outbox::new(info.call_id.clone(), cfg.replay_capacity);
        let ids = StreamIds {
            account_sid: cfg.twilio.account_sid.clone(),
            call_sid: twilio::call_sid(&info.call_id),
            stream_sid: twilio::stream_sid(&info.call_id, 1),
        };
        let custom_parameters = custom_parameters(&cfg.twilio, &info);
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
            caller: CallerStream::new(),
            chunk: 0,
            ids,
            custom_parameters,
            refused: 0,
            dispatches: HashMap::new(),
            next_request: 1,
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
        [link, self.answer_deadline, self.caller.poll_timeout()]
            .into_iter()
            .flatten()
            .min()
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.ended {
            return;
        }
        self.caller.handle_timeout(now);
        self.flush_caller();
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
                self.start_caller_stream(now);
            }
            Dialect::Twilio => {
                // Every connection is a new stream: its own streamSid, numbering from 1.
                self.outbox.restart();
                self.chunk = 0;
                self.ids.stream_sid = twilio::stream_sid(&self.info.call_id, self.connections);
                self.out.push_back(Outgoing::Text(twilio::connected()));
                let start = twilio::start(&self.ids, &self.custom_parameters);
                self.twilio(start);
                // Twilio bots never decide: the call is answered once they are connected.
                self.decide_answer();
                self.start_caller_stream(now);
            }
        }
    }

    /// The caller's audio flows to a connected bot once the call is answered, unless paused;
    /// (re)starting the stream restarts its clock (Twilio: `timestamp` 0 at `start`).
    fn start_caller_stream(&mut self, now: Instant) {
        if self.link == Link::Up && self.answered && !self.audio_paused && !self.ended {
            self.caller.start(now);
        }
    }

    /// Sends the caller's frames that are ready.
    fn flush_caller(&mut self) {
        while let Some(frame) = self.caller.poll_frame() {
            if !self.bot_active() {
                continue;
            }
            match self.cfg.dialect {
                Dialect::Native => self
                    .out
                    .push_back(Outgoing::Binary(pcm_to_bytes(&frame.samples))),
                Dialect::Twilio => {
                    self.chunk += 1;
                    let m = twilio::media(
                        &self.ids.stream_sid,
                        self.chunk,
                        frame.timestamp_ms(),
                        &frame.samples,
                    );
                    self.twilio(m);
                }
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
        self.caller.stop();
        let policy = if ever_up {
            self.cfg.on_drop
        } else {
            self.cfg.on_connect_failure
        };
        self.failure(policy, why, now);
    }

    /// The bot sent a close frame (the shell has answered it).
    pub fn on_close_frame(
        &mut self,
        generation: u64,
        code: Option<u16>,
        reason: &str,
        now: Instant,
    ) {
        if generation != self.generation || self.ended || self.link == Link::Gone {
            return;
        }
        match self.cfg.dialect {
            // Twilio: closing the socket ends the stream; with nothing after `<Connect><Stream>`
            // the call ends.
            Dialect::Twilio => {
                info!(?code, reason, "the bot closed the stream: ending the call");
                self.generation += 1;
                self.link = Link::Gone;
                self.caller.stop();
                self.hang_up();
                self.end_session("bot_closed", now);
            }
            Dialect::Native => {
                let why = format!("closed by the bot (code {code:?}, reason {reason:?})");
                self.on_closed(generation, &why, now);
            }
        }
    }

    /// The bot sent a message over twice the limit: it cannot be read, so the connection
    /// cannot go on. The bot is told why, the socket is closed with 1009, and the drop policy
    /// applies.
    pub fn on_oversized(&mut self, generation: u64, size: usize, now: Instant) {
        if generation != self.generation || !self.bot_active() {
            return;
        }
        let limit = self.cfg.max_message_bytes;
        let err = DecodeError::TooLarge { size, limit };
        self.refuse(None, &err);
        self.out.push_back(Outgoing::Close {
            code: CLOSE_TOO_BIG,
            reason: format!("message of {size} bytes exceeds {limit}"),
        });
        self.on_closed(generation, &err.to_string(), now);
    }

    /// Ends the call from the bot's side: BYE once answered, 480 before.
    fn hang_up(&mut self) {
        if self.answered {
            self.actions.push_back(FlowAction::Close {
                cleared_session: false,
            });
        } else {
            self.decided = true;
            self.answer_deadline = None;
            self.actions.push_back(FlowAction::Reject { status: 480 });
        }
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
        if text.len() > self.cfg.max_message_bytes {
            let err = DecodeError::TooLarge {
                size: text.len(),
                limit: self.cfg.max_message_bytes,
            };
            return self.refuse(None, &err);
        }
        match self.cfg.dialect {
            Dialect::Native => match decode_native(text) {
                Ok(inbound) => self.command(inbound, now),
                Err(rej) => self.refuse(rej.id, &rej.error),
            },
            Dialect::Twilio => match twilio::decode(text, &self.ids.stream_sid) {
                Ok(TwilioIn::Media(samples)) => self.bot_audio(samples),
                Ok(TwilioIn::Mark(name)) => {
                    let id = self.play_id(Pending::Mark { id: None, name });
                    self.actions.push_back(FlowAction::QueueMark { id });
                }
                Ok(TwilioIn::Clear) => self.actions.push_back(FlowAction::StopPlayback),
                Err(e) => self.refuse(None, &e),
            },
        }
    }

    /// A binary frame from the bot: PCM16LE audio (native dialect only).
    pub fn on_binary(&mut self, generation: u64, data: &[u8]) {
        if generation != self.generation || !self.bot_active() {
            return;
        }
        if data.len() > self.cfg.max_message_bytes {
            let err = DecodeError::TooLarge {
                size: data.len(),
                limit: self.cfg.max_message_bytes,
            };
            return self.refuse(None, &err);
        }
        if self.cfg.dialect != Dialect::Native {
            return self.refuse(None, &DecodeError::BinaryFrame);
        }
        match pcm_from_bytes(data) {
            Ok(samples) => self.bot_audio(samples),
            Err(e) => self.refuse(None, &e),
        }
    }

    /// A message from the bot that could not be used: logged, counted, and answered with an
    /// `error` (plus, native, the `ack` and failed `result` its id is owed). The call goes on.
    fn refuse(&mut self, id: Option<String>, err: &DecodeError) {
        self.refused += 1;
        metrics::counter!("voxgate_ws_refused_messages_total", "code" => err.code()).increment(1);
        // Twilio reports these as debugger warnings: 31950 (binary), 31951 (invalid message).
        let twilio_warning = match (self.cfg.dialect, err) {
            (Dialect::Native, _) => None,
            (Dialect::Twilio, DecodeError::BinaryFrame) => Some(31950),
            (Dialect::Twilio, _) => Some(31951),
        };
        if self.refused <= WARN_REFUSALS {
            warn!(code = err.code(), twilio_warning, error = %err, "message from the bot refused");
        } else {
            debug!(code = err.code(), error = %err, "message from the bot refused");
        }
        match self.cfg.dialect {
            Dialect::Native => {
                if let Some(id) = id.clone() {
                    self.send(Event::Ack { id: id.clone() });
                    self.result(Some(id), "invalid", Err(err.to_string()));
                }
                self.send(Event::Error {
                    id,
                    code: err.code().into(),
                    message: err.to_string(),
                });
            }
            Dialect::Twilio => {
                let e = twilio::error(&self.ids.stream_sid, err.code(), &err.to_string());
                self.twilio(e);
            }
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
                    self.start_caller_stream(now);
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
                self.caller.stop();
                done(self, Ok(()));
            }
            Command::Resume { last_seq: None } => {
                if self.audio_paused {
                    self.audio_paused = false;
                    self.start_caller_stream(now);
                }
                done(self, Ok(()));
            }
            Command::Dispatch { payload } => {
                let payload = Value::Object(payload);
                let size = payload.to_string().len();
                if size > MAX_DISPATCH_BYTES {
                    done(
                        self,
                        Err(format!(
                            "payload of {size} bytes exceeds {MAX_DISPATCH_BYTES} bytes"
                        )),
                    );
                } else if self.dispatches.len() >= MAX_PENDING_DISPATCHES {
                    done(
                        self,
                        Err(format!(
                            "{MAX_PENDING_DISPATCHES} dispatches are already in progress"
                        )),
                    );
                } else {
                    let rid = self.next_request;
                    self.next_request += 1;
                    self.dispatches.insert(rid, (id, payload.clone()));
                    self.actions.push_back(FlowAction::Request {
                        id: rid,
                        request: StepRequest::Dispatch { payload },
                        timeout: DISPATCH_TIMEOUT,
                    });
                }
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

    /// The caller's audio (8 kHz PCM, any number of samples: a 20 ms or 30 ms packet). It
    /// reaches the bot as 20 ms frames; silence fills in when the caller sends nothing
    /// ([`CallerStream`], driven by [`handle_timeout`](Self::handle_timeout)).
    pub fn caller_audio(&mut self, samples: &[i16]) {
        if !self.bot_active() {
            return;
        }
        self.caller.push(samples);
        self.flush_caller();
    }

    /// What happened on the call.
    pub fn handle_event(&mut self, ev: FlowEvent, now: Instant) {
        if self.ended {
            return;
        }
        match ev {
            FlowEvent::Started(_) => {}
            // A `dispatch` went through the same executor as the embedded `json_builder`
            // (journal, webhook): the bot gets the event, then its command's result.
            FlowEvent::RequestDone { id, result } => {
                let Some((cmd, payload)) = self.dispatches.remove(&id) else {
                    return;
                };
                match result {
                    Ok(v) => {
                        let webhook = v
                            .get("webhook")
                            .and_then(Value::as_str)
                            .unwrap_or("disabled")
                            .to_string();
                        self.send(Event::Dispatched {
                            payload,
                            id: cmd.clone(),
                            webhook,
                        });
                        self.result(cmd, "dispatch", Ok(()));
                    }
                    Err(f) => {
                        warn!(code = %f.code, error = %f.message, "dispatch from the bot failed");
                        self.result(cmd, "dispatch", Err(format!("{}: {}", f.code, f.message)));
                    }
                }
            }
            // Answers to the embedded engine's speech steps; an external bot does not ask
            // for them.
            FlowEvent::SpeechStarted { .. } | FlowEvent::Speech { .. } => {}
            FlowEvent::Dtmf { digit, duration_ms } => {
                self.dtmf_count += 1;
                match self.cfg.dialect {
                    Dialect::Native => self.send(Event::Dtmf {
                        digit: digit.to_string(),
                        duration_ms,
                    }),
                    Dialect::Twilio => self.twilio(twilio::dtmf(&self.ids.stream_sid, digit)),
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
                    Dialect::Twilio => self.twilio(twilio::mark(&self.ids.stream_sid, &name)),
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
            Dialect::Twilio => self.twilio(twilio::stop(&self.ids)),
        }
        info!(
            reason,
            refused_messages = self.refused,
            silence_filled_frames = self.caller.filled_frames(),
            "bot session ended"
        );
        self.caller.stop();
        self.ended = true;
        self.answer_deadline = None;
        self.requests.push_back(IoRequest::Finish);
    }
}

/// Twilio's `customParameters`: `from`, `to`, `sipCallId`, the static ones from the config,
/// then the chosen INVITE headers (cut to Twilio's 500 characters per name and value).
fn custom_parameters(cfg: &TwilioConfig, info: &SessionInfo) -> BTreeMap<String, String> {
    let mut p = BTreeMap::new();
    p.insert("from".to_string(), info.from.clone());
    p.insert("to".to_string(), info.to.clone());
    p.insert("sipCallId".to_string(), info.call_id.clone());
    for (k, v) in &cfg.parameters {
        p.insert(k.clone(), v.clone());
    }
    for name in &cfg.parameter_headers {
        if let Some(v) = info.headers.get(&name.to_ascii_lowercase()) {
            let room = twilio::MAX_PARAMETER_CHARS.saturating_sub(name.chars().count());
            p.insert(name.clone(), v.chars().take(room).collect());
        }
    }
    p
}

#[cfg(test)]
mod tests;
