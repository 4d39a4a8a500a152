//! The embedded flow engine: an IO-free state machine (quinn-proto style).
//!
//! The call feeds it [`FlowEvent`]s and timeouts together with the current time, and drains
//! [`FlowAction`]s and the next deadline. Nothing here sleeps or touches a socket, so every
//! behaviour is tested deterministically with fabricated `Instant`s and a fixed wall clock.
//!
//! Three clocks matter:
//! - each waiting step's own deadline (`collect` timeouts, `delay`, a request's `timeout_ms`,
//!   `listen`). While the bot is paused they stand still and continue with the time that was
//!   left when it resumes (one rule for every step);
//! - inactivity, which counts only while the bot waits for the caller (`collect`, `listen`)
//!   and says nothing, and starts again from zero on the caller's input;
//! - `pause_bot`'s `max_ms`, the only one that runs while paused.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use super::clock::time_fields;
use super::collect::{Collected, Collector};
use super::definition::{Clear, Content, DialogId, FlowDefinition, Step, StepKind};
use super::expr::display_value;
use super::expr::truthy;
use super::session::{Scope, Session};
use super::{FlowAction, FlowEvent};

mod listen;
mod prompts;
mod requests;

use listen::ListenWait;
use prompts::{PromptClass, PromptQueue};

/// Steps that may run back to back without waiting for the caller; more means the flow loops.
pub const MAX_STEPS_WITHOUT_WAIT: usize = 1000;
/// DTMF keys remembered for the next `collect` (older keys are dropped first).
pub const MAX_TYPEAHEAD: usize = 32;
/// Step records kept for the summary; later ones are only counted.
pub const MAX_STEP_LOG: usize = 10_000;
/// How long the error prompt may take before the conversation closes anyway.
const GOODBYE_LIMIT: Duration = Duration::from_secs(15);
/// A hold prompt shorter than this is not looped (it would spin).
const MIN_HOLD_LOOP: Duration = Duration::from_millis(200);

/// How one executed step went.
#[derive(Debug, Clone, PartialEq)]
pub enum StepOutcome {
    Ok,
    Failed(String),
}

/// One executed step, for the close summary ("which steps succeeded").
#[derive(Debug, Clone, PartialEq)]
pub struct StepRecord {
    pub dialog: Arc<str>,
    /// 0-based position in the dialog.
    pub index: usize,
    pub kind: StepKind,
    pub outcome: StepOutcome,
}

impl StepRecord {
    /// `{"dialog", "step" (from 1), "type", "ok", "error"?}` for the CDR.
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "dialog": &*self.dialog,
            "step": self.index + 1,
            "type": self.kind.name(),
            "ok": self.outcome == StepOutcome::Ok,
        });
        if let StepOutcome::Failed(m) = &self.outcome {
            v["error"] = Value::String(m.clone());
        }
        v
    }
}

/// Why the conversation was closed.
#[derive(Debug, Clone, PartialEq)]
pub enum CloseReason {
    /// A `close` step.
    Step,
    /// No input for `inactivity_s`.
    Inactivity,
    /// The flow ran past the last step of a dialog.
    EndOfDialog,
    /// A step failed and the flow has no `on_error` dialog, or the flow looped.
    Error(String),
    /// The call side asked ([`FlowMachine::close`]).
    Requested,
}

/// How the machine finished.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowEnd {
    Closed(CloseReason),
    /// A `hangup` step.
    HungUp,
    /// A forward (or offload) succeeded; the call left the bot.
    Transferred {
        to: String,
    },
    /// The call ended under the bot (`FlowEvent::Ended`).
    CallEnded {
        reason: String,
    },
}

impl FlowEnd {
    /// `{"how": "closed"|"hung_up"|"transferred"|"call_ended", ...}` for the CDR.
    pub fn to_json(&self) -> Value {
        match self {
            FlowEnd::Closed(reason) => {
                let (why, error) = match reason {
                    CloseReason::Step => ("close_step", None),
                    CloseReason::Inactivity => ("inactivity", None),
                    CloseReason::EndOfDialog => ("end_of_dialog", None),
                    CloseReason::Error(m) => ("error", Some(m.clone())),
                    CloseReason::Requested => ("requested", None),
                };
                let mut v = json!({"how": "closed", "reason": why});
                if let Some(m) = error {
                    v["error"] = Value::String(m);
                }
                v
            }
            FlowEnd::HungUp => json!({"how": "hung_up"}),
            FlowEnd::Transferred { to } => json!({"how": "transferred", "to": to}),
            FlowEnd::CallEnded { reason } => json!({"how": "call_ended", "reason": reason}),
        }
    }
}

/// What the CDR needs from the bot.
#[derive(Debug, Clone, PartialEq)]
pub struct FlowSummary {
    pub flow: String,
    pub steps_ok: usize,
    pub steps_failed: usize,
    /// The failed steps, in order.
    pub failures: Vec<StepRecord>,
    /// Steps executed beyond [`MAX_STEP_LOG`], not kept in the log.
    pub steps_not_logged: usize,
    pub end: Option<FlowEnd>,
}

impl FlowSummary {
    /// The summary as the CDR stores it.
    pub fn to_json(&self) -> Value {
        json!({
            "flow": self.flow,
            "steps_ok": self.steps_ok,
            "steps_failed": self.steps_failed,
            "failures": self.failures.iter().map(StepRecord::to_json).collect::<Vec<_>>(),
            "steps_not_logged": self.steps_not_logged,
            "end": self.end.as_ref().map(FlowEnd::to_json),
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotStarted,
    Running,
    Finished,
}

/// What the current step is waiting for.
#[derive(Debug)]
enum Wait {
    /// Nothing: the step at `pc` is next to run.
    Ready,
    /// A `message` with `wait: true`.
    Playback(u64),
    Collect(Collector),
    Delay(Instant),
    /// A `forward` (no deadline) or an `offload` (its `timeout_ms`).
    Transfer {
        deadline: Option<Instant>,
    },
    /// An integration step's `Request`.
    Request {
        id: u64,
        deadline: Instant,
    },
    Listen(Box<ListenWait>),
    /// Text a step's result asked to say (Chatlayer `messages`, a knowledge-base answer);
    /// then the step ends and the flow goes to `then` (or on).
    Messages {
        last: u64,
        then: Option<DialogId>,
    },
    /// The error prompt before an unhandled error closes the conversation.
    Goodbye {
        id: Option<u64>,
        deadline: Instant,
        reason: CloseReason,
    },
}

/// Where the flow goes after a step.
enum Next {
    Continue,
    Goto(DialogId),
    Wait(Wait),
    /// The step finished the machine (close, hangup).
    Stop,
}

/// A failed step, with the dialog to go to if the step names its own error path.
struct StepError {
    message: String,
    fallback: Option<DialogId>,
    /// A short code for `error.code` (`timeout`, `http_status`, an executor's code...).
    code: &'static str,
    /// The executor's own code, when it gave one.
    detail_code: Option<String>,
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        Self {
            message,
            fallback: None,
            code: "step",
            detail_code: None,
        }
    }
}

impl StepError {
    fn with_fallback(mut self, fallback: Option<DialogId>) -> Self {
        self.fallback = self.fallback.or(fallback);
        self
    }
}

/// Who started the hold loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HoldOwner {
    /// A waiting step: stops when the step moves on.
    Step,
    /// `pause_bot`: stops when the bot resumes.
    Pause,
}

#[derive(Debug)]
struct HoldLoop {
    content: Content,
    owner: HoldOwner,
    /// The current instance, if any (None: it failed or was too short to loop).
    id: Option<u64>,
    /// When the current instance went out to the call (it may wait behind other prompts).
    sent_at: Option<Instant>,
}

/// One call's bot. Create it when the call is answered and feed it events in order.
#[derive(Debug)]
pub struct FlowMachine {
    def: Arc<FlowDefinition>,
    session: Session,
    phase: Phase,
    end: Option<FlowEnd>,
    pc: (DialogId, usize),
    wait: Wait,
    /// Paused by an operator or a `pause_bot` step: input ignored, no steps run.
    paused: bool,
    paused_at: Option<Instant>,
    /// `pause_bot`'s `max_ms` deadline and where to go then.
    pause_timer: Option<(Instant, Option<DialogId>)>,
    /// Results that arrived while paused, handled on resume.
    stashed: Vec<FlowEvent>,
    typeahead: VecDeque<char>,
    prompts: PromptQueue,
    hold: Option<HoldLoop>,
    /// Ids for plays, requests and listens alike.
    next_id: u64,
    /// Time spent waiting for the caller since their last input (closed stretches).
    idle_spent: Duration,
    /// Start of the current waiting stretch, while the inactivity clock runs.
    idle_since: Option<Instant>,
    actions: VecDeque<FlowAction>,
    log: Vec<StepRecord>,
    steps_ok: usize,
    steps_failed: usize,
    steps_not_logged: usize,
    /// The last (monotonic, wall) pair seen, to derive wall time at later timeouts.
    clock: (Instant, DateTime<Utc>),
}

impl FlowMachine {
    /// A machine with a fresh session holding the flow's initial variables.
    pub fn new(def: Arc<FlowDefinition>, now: Instant, wall: DateTime<Utc>) -> Self {
        let session = Session::new(def.variables());
        let start = def.start;
        Self {
            def,
            session,
            phase: Phase::NotStarted,
            end: None,
            pc: (start, 0),
            wait: Wait::Ready,
            paused: false,
            paused_at: None,
            pause_timer: None,
            stashed: Vec::new(),
            typeahead: VecDeque::new(),
            prompts: PromptQueue::default(),
            hold: None,
            next_id: 1,
            idle_spent: Duration::ZERO,
            idle_since: None,
            actions: VecDeque::new(),
            log: Vec::new(),
            steps_ok: 0,
            steps_failed: 0,
            steps_not_logged: 0,
            clock: (now, wall),
        }
    }

    /// Feeds one event. `wall` is the current wall-clock time (for `get_time`).
    pub fn handle_event(&mut self, event: FlowEvent, now: Instant, wall: DateTime<Utc>) {
        self.clock = (now, wall);
        if self.phase == Phase::Finished {
            tracing::trace!(?event, "flow finished; event ignored");
            return;
        }
        let _clock = super::expr::ClockGuard::set(wall);
        self.on_event(event, now);
        self.note_hold_sent(now);
        self.sync_idle(now);
    }

    fn on_event(&mut self, event: FlowEvent, now: Instant) {
        match event {
            FlowEvent::Started(info) => {
                if self.phase != Phase::NotStarted {
                    tracing::warn!("duplicate Started event ignored");
                    return;
                }
                self.set_call_context(&info);
                tracing::info!(flow = %self.def.name(), call_id = %info.call_id, "flow started");
                self.phase = Phase::Running;
                self.run(now);
            }
            FlowEvent::Ended { reason } => {
                tracing::info!(flow = %self.def.name(), %reason, "call ended under the flow");
                self.actions.clear();
                self.session.clear(Scope::All, None);
                self.finish(FlowEnd::CallEnded { reason });
            }
            event if self.phase == Phase::NotStarted => {
                tracing::warn!(?event, "event before Started ignored");
            }
            FlowEvent::Dtmf { digit, .. } => self.on_dtmf(digit, now),
            FlowEvent::PlaybackFinished { id, interrupted } => {
                tracing::debug!(id, interrupted, "playback finished");
                self.on_playback_done(id, None, now);
            }
            FlowEvent::PlaybackFailed { id, reason } => {
                tracing::warn!(id, %reason, "playback failed");
                self.on_playback_done(id, Some(format!("playback failed: {reason}")), now);
            }
            FlowEvent::RecordingStarted { id } => {
                self.session
                    .set_context("recording", "id", Value::String(id));
                self.session
                    .set_context("recording", "active", Value::Bool(true));
            }
            FlowEvent::RecordingStopped { id } => {
                self.session
                    .set_context("recording", "id", Value::String(id));
                self.session
                    .set_context("recording", "active", Value::Bool(false));
            }
            FlowEvent::RecordingFailed { id, reason } => {
                tracing::warn!(?id, %reason, "recording failed");
                // A start that never began (`id: None`, e.g. "already recording") says nothing
                // about the recording that runs; only a failure of that one stops it.
                let current = self
                    .session
                    .vars()
                    .get("recording")
                    .and_then(|r| r.get("id"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                if let Some(failed) = &id {
                    if current.is_none() || current.as_deref() == Some(failed.as_str()) {
                        self.session
                            .set_context("recording", "active", Value::Bool(false));
                    }
                }
                self.session
                    .set_context("recording", "error", Value::String(reason));
            }
            FlowEvent::RecordingReady {
                id, duration_ms, ..
            } => {
                let ready = json!({"id": id, "duration_ms": duration_ms});
                self.session.set_context("recording", "ready", ready);
            }
            FlowEvent::TransferProgress { status } => {
                self.session
                    .set_context("transfer", "status", Value::from(status));
            }
            FlowEvent::TransferCompleted { to, mode } => {
                tracing::info!(flow = %self.def.name(), %to, %mode, "transfer completed; bot done");
                if matches!(self.wait, Wait::Transfer { .. }) {
                    self.record(StepOutcome::Ok);
                }
                self.actions.clear();
                self.session.clear(Scope::All, None);
                self.finish(FlowEnd::Transferred { to });
            }
            FlowEvent::TransferFailed { reason, detail } => {
                self.on_transfer_failed(reason, detail, now)
            }
            FlowEvent::Paused => {
                tracing::info!(flow = %self.def.name(), "bot paused");
                self.pause(now);
            }
            FlowEvent::Resumed => self.resume(now, false),
            event @ (FlowEvent::RequestDone { .. }
            | FlowEvent::SpeechStarted { .. }
            | FlowEvent::Speech { .. })
                if self.paused =>
            {
                // The step's answer waits until the bot runs again.
                self.stashed.push(event);
            }
            FlowEvent::RequestDone { id, result } => self.on_request_done(id, result, now),
            FlowEvent::SpeechStarted { id } => self.on_speech_started(id, now),
            FlowEvent::Speech { id, outcome } => self.on_speech(id, outcome, now),
        }
    }

    /// Call when `now` reaches the instant from [`FlowMachine::poll_timeout`] (late is fine).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            return;
        }
        self.clock = (now, self.wall_at(now));
        let _clock = super::expr::ClockGuard::set(self.clock.1);
        if self.paused {
            if self.pause_timer.is_some_and(|(at, _)| at <= now) {
                tracing::info!(flow = %self.def.name(), "pause_bot max_ms reached; resuming");
                self.resume(now, true);
            }
            self.sync_idle(now);
            return;
        }
        if self.idle_deadline().is_some_and(|d| d <= now) {
            tracing::info!(flow = %self.def.name(), "no input for inactivity_s; closing");
            self.close_with(Scope::All, CloseReason::Inactivity);
            return;
        }
        match &mut self.wait {
            Wait::Collect(c) => {
                if let Some(result) = c.handle_timeout(now) {
                    self.finish_collect(result, now);
                }
            }
            Wait::Delay(until) if *until <= now => {
                self.record(StepOutcome::Ok);
                self.apply(Next::Continue);
            }
            Wait::Request { id, deadline } if *deadline <= now => {
                let id = *id;
                self.request_timed_out(id);
            }
            Wait::Transfer {
                deadline: Some(deadline),
            } if *deadline <= now => self.offload_timed_out(),
            Wait::Listen(_) => self.listen_timeout(now),
            Wait::Goodbye {
                deadline, reason, ..
            } if *deadline <= now => {
                let reason = reason.clone();
                tracing::warn!("error prompt did not finish in time; closing");
                self.close_with(Scope::All, reason);
            }
            _ => {}
        }
        self.run(now);
        self.note_hold_sent(now);
        self.sync_idle(now);
    }

    /// The next action for the call, in order.
    pub fn poll_action(&mut self) -> Option<FlowAction> {
        self.actions.pop_front()
    }

    /// When [`FlowMachine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase != Phase::Running {
            return None;
        }
        if self.paused {
            return self.pause_timer.map(|(at, _)| at);
        }
        let step = match &self.wait {
            Wait::Collect(c) => c.poll_timeout(),
            Wait::Delay(until) => Some(*until),
            Wait::Request { deadline, .. } => Some(*deadline),
            Wait::Transfer { deadline } => *deadline,
            Wait::Listen(l) => l.poll_timeout(),
            Wait::Goodbye { deadline, .. } => Some(*deadline),
            _ => None,
        };
        match (step, self.idle_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// True once the bot is done (closed, hung up, transferred or the call ended).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Finished
    }

    /// Closes the conversation from outside (e.g. shutdown): erases the session and emits
    /// `Close { cleared_session: true }`. Does nothing if already finished.
    pub fn close(&mut self) {
        self.close_with(Scope::All, CloseReason::Requested);
    }

    /// The session's variables (flow variables plus the `call`/`transfer`/`recording`/`error`
    /// context).
    pub fn variables(&self) -> &Map<String, Value> {
        self.session.vars()
    }

    /// True while an operator or a `pause_bot` step has the bot paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Every executed step in order (up to [`MAX_STEP_LOG`]).
    pub fn step_log(&self) -> &[StepRecord] {
        &self.log
    }

    pub fn summary(&self) -> FlowSummary {
        FlowSummary {
            flow: self.def.name().to_string(),
            steps_ok: self.steps_ok,
            steps_failed: self.steps_failed,
            failures: self
                .log
                .iter()
                .filter(|r| matches!(r.outcome, StepOutcome::Failed(_)))
                .cloned()
                .collect(),
            steps_not_logged: self.steps_not_logged,
            end: self.end.clone(),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Event handling

    fn on_dtmf(&mut self, digit: char, now: Instant) {
        if self.paused {
            tracing::debug!(%digit, "bot paused; DTMF ignored");
            return;
        }
        if matches!(self.wait, Wait::Transfer { .. } | Wait::Goodbye { .. }) {
            tracing::debug!(%digit, "transfer in progress or closing; DTMF ignored");
            return;
        }
        self.reset_idle(now);
        // Barge-in: a key stops the barge-in prompts, playing or waiting to play; prompts of
        // other classes play on.
        let gone = self
            .prompts
            .stop(&[PromptClass::BargeIn], &mut self.actions);
        if !gone.is_empty() {
            tracing::debug!(%digit, ?gone, "barge-in: prompts stopped");
        }
        for id in gone {
            self.prompt_done(id, None, now);
        }
        match &mut self.wait {
            Wait::Collect(c) => {
                if let Some(result) = c.push(digit, now) {
                    self.finish_collect(result, now);
                }
            }
            Wait::Listen(_) => self.listen_key(digit, now),
            _ => {
                if self.typeahead.len() >= MAX_TYPEAHEAD {
                    self.typeahead.pop_front();
                }
                self.typeahead.push_back(digit);
            }
        }
        self.run(now);
    }

    fn on_playback_done(&mut self, id: u64, failure: Option<String>, now: Instant) {
        if !self.prompts.finished(id, &mut self.actions) {
            tracing::trace!(id, "report for a prompt no longer tracked");
        }
        self.note_hold_sent(now);
        self.prompt_done(id, failure, now);
        self.note_hold_sent(now);
        self.run(now);
    }

    /// Remembers when the hold prompt actually went out (for the too-short-to-loop check).
    fn note_hold_sent(&mut self, now: Instant) {
        if let Some(h) = &mut self.hold {
            if let Some(id) = h.id {
                if h.sent_at.is_none() && self.prompts.is_sent(id) {
                    h.sent_at = Some(now);
                }
            }
        }
    }

    /// A prompt will not play (further): finished, failed or dropped.
    fn prompt_done(&mut self, id: u64, failure: Option<String>, now: Instant) {
        if let Some(hold) = &mut self.hold {
            if hold.id == Some(id) {
                hold.id = None;
                let played = hold
                    .sent_at
                    .take()
                    .map(|at| now.saturating_duration_since(at))
                    .unwrap_or(MIN_HOLD_LOOP);
                if failure.is_some() {
                    tracing::warn!(id, "hold prompt failed; not looped");
                } else if played < MIN_HOLD_LOOP {
                    tracing::warn!(id, "hold prompt too short to loop");
                } else {
                    self.play_hold(now);
                }
                return;
            }
        }
        match &self.wait {
            Wait::Playback(w) if *w == id => {
                self.record(failure.map_or(StepOutcome::Ok, StepOutcome::Failed));
                self.apply(Next::Continue);
            }
            Wait::Messages { last, then } if *last == id => {
                let then = *then;
                if let Some(f) = failure {
                    tracing::warn!(error = %f, "a message of the step's result failed");
                }
                self.record(StepOutcome::Ok);
                self.apply(then.map_or(Next::Continue, Next::Goto));
            }
            Wait::Goodbye {
                id: Some(g),
                reason,
                ..
            } if *g == id => {
                let reason = reason.clone();
                self.close_with(Scope::All, reason);
            }
            _ => {}
        }
    }

    fn on_transfer_failed(&mut self, reason: String, detail: String, now: Instant) {
        if !matches!(self.wait, Wait::Transfer { .. }) {
            tracing::warn!(%reason, "TransferFailed without a transfer in progress; ignored");
            return;
        }
        tracing::info!(flow = %self.def.name(), %reason, %detail, "forward failed");
        let message = format!("{reason} ({detail})");
        self.session
            .set_context("transfer", "reason", Value::String(reason.clone()));
        self.session
            .set_context("transfer", "detail", Value::String(detail));
        self.reset_idle(now);
        match self.current_step() {
            Some(Step::Offload(o)) => {
                let fallback = o.on_failure.or(o.waiting.on_error);
                self.wait = Wait::Ready;
                self.step_failed(StepError {
                    message: format!("offload failed: {message}"),
                    fallback,
                    code: "transfer",
                    detail_code: Some(reason),
                });
            }
            step => {
                let on_failure = match step {
                    Some(Step::Forward { on_failure, .. }) => *on_failure,
                    _ => None,
                };
                self.record(StepOutcome::Failed(format!("forward failed: {message}")));
                self.apply(on_failure.map_or(Next::Continue, Next::Goto));
            }
        }
        self.run(now);
    }

    fn pause(&mut self, now: Instant) {
        if self.paused {
            return;
        }
        self.paused = true;
        self.paused_at = Some(now);
    }

    /// Resumes after an operator's `Resumed` or `pause_bot`'s `max_ms` (`timed_out`).
    fn resume(&mut self, now: Instant, timed_out: bool) {
        if !self.paused {
            return;
        }
        tracing::info!(flow = %self.def.name(), timed_out, "bot resumed");
        self.paused = false;
        let on_timeout = self.pause_timer.take().and_then(|(_, target)| target);
        if self
            .hold
            .as_ref()
            .is_some_and(|h| h.owner == HoldOwner::Pause)
        {
            self.stop_hold();
        }
        if self.phase != Phase::Running {
            return;
        }
        // Step timers stood still while paused: they continue with the time that was left.
        let shift = self
            .paused_at
            .take()
            .map(|at| now.saturating_duration_since(at))
            .unwrap_or_default();
        self.shift_timers(shift);
        self.reset_idle(now);
        if timed_out {
            if let (Some(target), Wait::Ready) = (on_timeout, &self.wait) {
                self.apply(Next::Goto(target));
            }
        }
        for event in std::mem::take(&mut self.stashed) {
            self.on_event(event, now);
        }
        self.run(now);
    }

    fn shift_timers(&mut self, shift: Duration) {
        match &mut self.wait {
            Wait::Collect(c) => c.shift(shift),
            Wait::Delay(until) => *until += shift,
            Wait::Request { deadline, .. } => *deadline += shift,
            Wait::Transfer { deadline: Some(d) } => *d += shift,
            Wait::Listen(l) => l.shift(shift),
            _ => {}
        }
    }

    // -----------------------------------------------------------------------------------------
    // Running steps

    /// Runs steps until one waits, the bot pauses or finishes. Bounded so a flow that loops
    /// without waiting closes instead of hanging the call.
    fn run(&mut self, now: Instant) {
        let mut executed = 0;
        while self.phase == Phase::Running && !self.paused && matches!(self.wait, Wait::Ready) {
            if executed >= MAX_STEPS_WITHOUT_WAIT {
                let (dialog, _) = self.pc;
                let message = format!(
                    "{MAX_STEPS_WITHOUT_WAIT} steps ran without waiting for the caller (last in \
                     dialog `{}`); the flow loops",
                    self.def.dialog(dialog).name
                );
                tracing::error!(flow = %self.def.name(), "{message}");
                self.goodbye(CloseReason::Error(message));
                return;
            }
            executed += 1;
            let def = Arc::clone(&self.def);
            let (dialog, index) = self.pc;
            let Some(step) = def.dialog(dialog).steps.get(index) else {
                tracing::info!(flow = %def.name(), dialog = %def.dialog(dialog).name,
                    "end of dialog; closing");
                self.close_with(Scope::All, CloseReason::EndOfDialog);
                return;
            };
            tracing::debug!(dialog = %def.dialog(dialog).name, step = index + 1,
                kind = %step.kind(), "step");
            match self.exec(step, now) {
                Ok(Next::Wait(wait)) => self.wait = wait,
                // close/hangup recorded themselves before finishing the machine.
                Ok(Next::Stop) => {}
                Ok(next) => {
                    self.record(StepOutcome::Ok);
                    self.apply(next);
                }
                Err(err) => self.step_failed(err),
            }
        }
    }

    fn exec(&mut self, step: &Step, now: Instant) -> Result<Next, StepError> {
        match step {
            Step::Message {
                content,
                wait,
                barge_in,
            } => {
                if *barge_in && !self.typeahead.is_empty() {
                    tracing::debug!("typed-ahead input barges in; prompt skipped");
                    return Ok(Next::Continue);
                }
                let class = if *barge_in {
                    PromptClass::BargeIn
                } else {
                    PromptClass::Normal
                };
                let id = self.play(content, class).map_err(StepError::from)?;
                Ok(if *wait {
                    Next::Wait(Wait::Playback(id))
                } else {
                    Next::Continue
                })
            }
            Step::Collect { rules, .. } => {
                let mut collector = Collector::new(rules.clone(), now);
                while let Some(digit) = self.typeahead.pop_front() {
                    if let Some(result) = collector.push(digit, now) {
                        return self.resolve_collect(step, result);
                    }
                }
                Ok(Next::Wait(Wait::Collect(collector)))
            }
            Step::Condition {
                expr,
                then,
                otherwise,
            } => {
                let value = expr
                    .eval(self.session.vars())
                    .map_err(|e| format!("condition `{expr}`: {e}"))?;
                let target = if truthy(&value) { then } else { otherwise };
                Ok(target.map_or(Next::Continue, Next::Goto))
            }
            Step::Goto(target) => Ok(Next::Goto(*target)),
            Step::GotoVariable { variable, on_error } => {
                let found = match self.session.get(variable) {
                    Some(Value::String(name)) => self.def.dialog_id(name).ok_or_else(|| {
                        format!("variable `{variable}` names dialog `{name}`, which does not exist")
                    }),
                    Some(other) => Err(format!(
                        "variable `{variable}` holds `{other}`, not a dialog name"
                    )),
                    None => Err(format!("variable `{variable}` is not set")),
                };
                found
                    .map(Next::Goto)
                    .map_err(|message| StepError::from(message).with_fallback(*on_error))
            }
            Step::Set(assignments) => {
                for (path, value) in assignments {
                    let v = value
                        .eval(self.session.vars())
                        .map_err(|e| format!("set `{path}`: {e}"))?;
                    self.session.set(path, v).map_err(|e| e.to_string())?;
                }
                Ok(Next::Continue)
            }
            Step::ClearSession(Clear::Scope(scope)) => {
                self.session.clear(*scope, Some(self.def.variables()));
                if *scope != Scope::Variables {
                    self.typeahead.clear();
                }
                Ok(Next::Continue)
            }
            Step::ClearSession(Clear::Paths(paths)) => {
                for p in paths {
                    self.session.remove(p);
                }
                Ok(Next::Continue)
            }
            Step::Delay(duration) => Ok(if duration.is_zero() {
                Next::Continue
            } else {
                Next::Wait(Wait::Delay(now + *duration))
            }),
            Step::PauseBot {
                max,
                on_timeout,
                hold,
            } => {
                tracing::info!(flow = %self.def.name(), "bot paused by pause_bot");
                self.pause(now);
                self.pause_timer = max.map(|m| (now + m, *on_timeout));
                if let Some(content) = hold {
                    self.start_hold(content.clone(), HoldOwner::Pause, now);
                }
                Ok(Next::Continue)
            }
            Step::GetTime { variable, zone } => {
                let value = time_fields(self.wall_at(now), zone.as_ref());
                self.session
                    .set(variable, value)
                    .map_err(|e| e.to_string())?;
                Ok(Next::Continue)
            }
            Step::TrackEvent { name, properties } => {
                let name = name
                    .render(self.session.vars())
                    .map_err(|e| e.to_string())?;
                let mut props = Map::new();
                for (key, value) in properties {
                    let v = value
                        .eval(self.session.vars())
                        .map_err(|e| format!("property `{key}`: {e}"))?;
                    props.insert(key.clone(), v);
                }
                self.actions.push_back(FlowAction::TrackEvent {
                    name,
                    properties: Value::Object(props),
                });
                Ok(Next::Continue)
            }
            Step::StartRecording => {
                self.actions.push_back(FlowAction::StartRecording);
                Ok(Next::Continue)
            }
            Step::StopRecording => {
                self.actions.push_back(FlowAction::StopRecording);
                Ok(Next::Continue)
            }
            Step::Forward { to, .. } => {
                let target = self.phone_target("forward target", to)?;
                tracing::info!(flow = %self.def.name(), to = %target, "forwarding");
                self.begin_transfer(&target);
                self.actions.push_back(FlowAction::Transfer { to: target });
                Ok(Next::Wait(Wait::Transfer { deadline: None }))
            }
            Step::Close(scope) => {
                self.record(StepOutcome::Ok);
                self.close_with(*scope, CloseReason::Step);
                Ok(Next::Stop)
            }
            Step::Hangup => {
                self.record(StepOutcome::Ok);
                tracing::info!(flow = %self.def.name(), "hangup step");
                self.actions.push_back(FlowAction::Close {
                    cleared_session: false,
                });
                self.finish(FlowEnd::HungUp);
                Ok(Next::Stop)
            }
            Step::Request(r) => self
                .exec_request(r, now)
                .map_err(|e| e.with_fallback(r.waiting.on_error)),
            Step::Offload(o) => self
                .exec_offload(o, now)
                .map_err(|e| e.with_fallback(o.waiting.on_error)),
            Step::Listen(l) => self
                .exec_listen(l, now)
                .map_err(|e| e.with_fallback(l.waiting.on_error)),
        }
    }

    /// Evaluates a transfer target: non-empty text, or a number.
    fn phone_target(&self, what: &str, to: &super::value::ValueTpl) -> Result<String, StepError> {
        let value = to
            .eval(self.session.vars())
            .map_err(|e| format!("{what}: {e}"))?;
        match &value {
            Value::String(s) if !s.trim().is_empty() => Ok(s.trim().to_string()),
            Value::Number(_) => Ok(display_value(&value)),
            other => Err(format!("{what} gave `{other}`, not a phone number or address").into()),
        }
    }

    /// Context and buffers for a forward or offload that is about to start.
    fn begin_transfer(&mut self, target: &str) {
        self.typeahead.clear();
        for key in ["reason", "detail", "status"] {
            self.session.remove_context_key("transfer", key);
        }
        self.session
            .set_context("transfer", "to", Value::String(target.to_string()));
    }

    /// Stores the collected input and picks the branch.
    fn resolve_collect(&mut self, step: &Step, result: Collected) -> Result<Next, StepError> {
        let Step::Collect {
            variable,
            branches,
            default,
            on_timeout,
            ..
        } = step
        else {
            return Ok(Next::Continue);
        };
        let input = match &result {
            Collected::Input(s) => s.clone(),
            Collected::NoInput => String::new(),
        };
        tracing::debug!(?result, "collect finished");
        if let Some(path) = variable {
            self.session
                .set(path, Value::String(input.clone()))
                .map_err(|e| e.to_string())?;
        }
        let target = match result {
            Collected::NoInput => on_timeout.or(*default),
            Collected::Input(_) => branches.get(&input).copied().or(*default),
        };
        Ok(target.map_or(Next::Continue, Next::Goto))
    }

    fn finish_collect(&mut self, result: Collected, now: Instant) {
        let def = Arc::clone(&self.def);
        let (dialog, index) = self.pc;
        let Some(step) = def.dialog(dialog).steps.get(index) else {
            return;
        };
        self.wait = Wait::Ready;
        let outcome = self.resolve_collect(step, result);
        self.conclude(outcome);
        self.run(now);
    }

    /// Ends the current (waiting) step with its result.
    fn conclude(&mut self, outcome: Result<Next, StepError>) {
        match outcome {
            Ok(Next::Wait(wait)) => self.wait = wait,
            Ok(Next::Stop) => {}
            Ok(next) => {
                self.record(StepOutcome::Ok);
                self.apply(next);
            }
            Err(err) => self.step_failed(err),
        }
    }

    fn apply(&mut self, next: Next) {
        match next {
            Next::Continue => self.pc.1 += 1,
            Next::Goto(dialog) => self.pc = (dialog, 0),
            Next::Wait(wait) => {
                self.wait = wait;
                return;
            }
            Next::Stop => return,
        }
        self.wait = Wait::Ready;
        if self
            .hold
            .as_ref()
            .is_some_and(|h| h.owner == HoldOwner::Step)
        {
            self.stop_hold();
        }
    }

    /// A step error goes to the step's own error dialog, else the flow's `on_error`, else
    /// says the error prompt and closes the conversation. `error.*` tells the error dialog
    /// what went wrong.
    fn step_failed(&mut self, err: StepError) {
        let (dialog, index) = self.pc;
        let kind = self.current_step().map(Step::kind);
        tracing::warn!(flow = %self.def.name(), dialog = %self.def.dialog(dialog).name,
            step = index + 1, error = %err.message, "flow step failed");
        self.record(StepOutcome::Failed(err.message.clone()));
        let mut error = json!({
            "dialog": &*self.def.dialog(dialog).name,
            "step": index + 1,
            "type": kind.map(StepKind::name),
            "code": err.code,
            "message": err.message,
        });
        if let Some(detail) = err.detail_code {
            error["detail_code"] = Value::String(detail);
        }
        self.session.set_context_root("error", error);
        match err.fallback.or(self.def.on_error) {
            Some(target) => self.apply(Next::Goto(target)),
            None => self.goodbye(CloseReason::Error(err.message)),
        }
    }

    /// Says the flow's error prompt, then closes (issue: an error must never just hang up).
    fn goodbye(&mut self, reason: CloseReason) {
        if self.phase == Phase::Finished {
            return;
        }
        self.stop_hold();
        self.typeahead.clear();
        let now = self.clock.0;
        let id = match self.def.error_prompt.clone() {
            Some(content) => match self.play(&content, PromptClass::Normal) {
                Ok(id) => Some(id),
                Err(e) => {
                    tracing::warn!(error = %e, "error prompt could not be rendered");
                    None
                }
            },
            None => None,
        };
        match id {
            Some(id) => {
                self.wait = Wait::Goodbye {
                    id: Some(id),
                    deadline: now + GOODBYE_LIMIT,
                    reason,
                }
            }
            None => self.close_with(Scope::All, reason),
        }
    }

    fn close_with(&mut self, scope: Scope, reason: CloseReason) {
        if self.phase == Phase::Finished {
            return;
        }
        self.session.clear(scope, None);
        self.actions.push_back(FlowAction::Close {
            // `scope: context` keeps the flow's variables.
            cleared_session: scope != Scope::Context,
        });
        tracing::info!(flow = %self.def.name(), ?reason, "conversation closed");
        self.finish(FlowEnd::Closed(reason));
    }

    fn finish(&mut self, end: FlowEnd) {
        self.phase = Phase::Finished;
        self.end = Some(end);
        self.wait = Wait::Ready;
        self.paused = false;
        self.pause_timer = None;
        self.stashed.clear();
        self.typeahead.clear();
        self.prompts.clear();
        self.hold = None;
        self.idle_since = None;
    }

    // -----------------------------------------------------------------------------------------
    // Prompts and hold

    fn next_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Renders and queues a prompt; returns its id.
    fn play(&mut self, content: &Content, class: PromptClass) -> Result<u64, String> {
        let vars = self.session.vars();
        let (is_file, rendered) = match content {
            Content::File(t) => (true, t.render_file_name(vars)),
            Content::Text(t) => (false, t.render(vars)),
        };
        let rendered = rendered.map_err(|e| e.to_string())?;
        let id = self.next_id();
        let action = if is_file {
            FlowAction::Play { id, file: rendered }
        } else {
            FlowAction::Say { id, text: rendered }
        };
        self.queue_prompt(id, action, class)
    }

    /// Queues a rendered Play/Say.
    fn queue_prompt(
        &mut self,
        id: u64,
        action: FlowAction,
        class: PromptClass,
    ) -> Result<u64, String> {
        if !self.prompts.push(id, class, action, &mut self.actions) {
            return Err(format!(
                "too many prompts queued (at most {})",
                prompts::MAX_PROMPTS
            ));
        }
        Ok(id)
    }

    fn say_text(&mut self, text: String) -> Result<u64, String> {
        let id = self.next_id();
        self.queue_prompt(id, FlowAction::Say { id, text }, PromptClass::Normal)
    }

    fn start_hold(&mut self, content: Content, owner: HoldOwner, now: Instant) {
        self.stop_hold();
        self.hold = Some(HoldLoop {
            content,
            owner,
            id: None,
            sent_at: None,
        });
        self.play_hold(now);
    }

    fn play_hold(&mut self, now: Instant) {
        let Some(content) = self.hold.as_ref().map(|h| h.content.clone()) else {
            return;
        };
        match self.play(&content, PromptClass::Hold) {
            Ok(id) => {
                if let Some(h) = &mut self.hold {
                    h.id = Some(id);
                    h.sent_at = None;
                }
                self.note_hold_sent(now);
            }
            Err(e) => tracing::warn!(error = %e, "hold prompt not played"),
        }
    }

    fn stop_hold(&mut self) {
        if self.hold.take().is_some() {
            self.prompts.stop(&[PromptClass::Hold], &mut self.actions);
        }
    }

    // -----------------------------------------------------------------------------------------
    // Inactivity: counts only while the bot waits for the caller and says nothing.

    fn idle_should_run(&self) -> bool {
        self.phase == Phase::Running
            && !self.paused
            && matches!(self.wait, Wait::Collect(_) | Wait::Listen(_))
            && !self.prompts.talking()
    }

    fn sync_idle(&mut self, now: Instant) {
        match (self.idle_should_run(), self.idle_since) {
            (true, None) => self.idle_since = Some(now),
            (false, Some(since)) => {
                self.idle_spent += now.saturating_duration_since(since);
                self.idle_since = None;
            }
            _ => {}
        }
    }

    /// The caller did something: inactivity starts again from zero.
    fn reset_idle(&mut self, now: Instant) {
        self.idle_spent = Duration::ZERO;
        if self.idle_since.is_some() {
            self.idle_since = Some(now);
        }
    }

    fn idle_deadline(&self) -> Option<Instant> {
        let limit = self.def.inactivity()?;
        let since = self.idle_since?;
        Some(since + limit.saturating_sub(self.idle_spent))
    }

    // -----------------------------------------------------------------------------------------
    // Helpers

    fn current_step(&self) -> Option<&Step> {
        let (dialog, index) = self.pc;
        self.def.dialog(dialog).steps.get(index)
    }

    fn record(&mut self, outcome: StepOutcome) {
        match outcome {
            StepOutcome::Ok => self.steps_ok += 1,
            StepOutcome::Failed(_) => self.steps_failed += 1,
        }
        if self.log.len() >= MAX_STEP_LOG {
            self.steps_not_logged += 1;
            return;
        }
        let (dialog, index) = self.pc;
        let Some(kind) = self.current_step().map(Step::kind) else {
            return;
        };
        self.log.push(StepRecord {
            dialog: Arc::clone(&self.def.dialog(dialog).name),
            index,
            kind,
            outcome,
        });
    }

    fn wall_at(&self, now: Instant) -> DateTime<Utc> {
        let (at, wall) = self.clock;
        chrono::TimeDelta::from_std(now.saturating_duration_since(at))
            .ok()
            .and_then(|d| wall.checked_add_signed(d))
            .unwrap_or(wall)
    }

    fn set_call_context(&mut self, info: &super::SessionInfo) {
        let headers: Map<String, Value> = info
            .headers
            .iter()
            .map(|(k, v)| (k.to_lowercase().replace('-', "_"), Value::String(v.clone())))
            .collect();
        for (key, value) in [
            ("call_id", Value::String(info.call_id.clone())),
            ("from", Value::String(info.from.clone())),
            ("to", Value::String(info.to.clone())),
            ("codec", Value::String(info.codec.clone())),
            ("headers", Value::Object(headers)),
        ] {
            self.session.set_context("call", key, value);
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod demo_tests;

#[cfg(test)]
mod integration_tests;

#[cfg(test)]
mod listen_tests;
