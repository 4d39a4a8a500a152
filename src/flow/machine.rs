//! The embedded flow engine: an IO-free state machine (quinn-proto style).
//!
//! The call feeds it [`FlowEvent`]s and timeouts together with the current time, and drains
//! [`FlowAction`]s and the next deadline. Nothing here sleeps or touches a socket, so every
//! behaviour is tested deterministically with fabricated `Instant`s and a fixed wall clock.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use super::clock::time_fields;
use super::collect::{Collected, Collector};
use super::definition::{Content, DialogId, FlowDefinition, Step, StepKind};
use super::expr::{display_value, truthy};
use super::session::{Scope, Session};
use super::{FlowAction, FlowEvent};

/// Steps that may run back to back without waiting for the caller; more means the flow loops.
pub const MAX_STEPS_WITHOUT_WAIT: usize = 1000;
/// DTMF keys remembered for the next `collect` (older keys are dropped first).
pub const MAX_TYPEAHEAD: usize = 32;
/// Step records kept for the summary; later ones are only counted.
pub const MAX_STEP_LOG: usize = 10_000;
/// Playbacks tracked for barge-in at once (a flow that never waits could queue more).
const MAX_PLAYING: usize = 64;

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
    /// A forward succeeded; the call left the bot.
    Transferred {
        to: String,
    },
    /// The call ended under the bot (`FlowEvent::Ended`).
    CallEnded {
        reason: String,
    },
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
    /// A `forward`: TransferCompleted / TransferFailed.
    Transfer,
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
}

impl From<String> for StepError {
    fn from(message: String) -> Self {
        Self {
            message,
            fallback: None,
        }
    }
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
    typeahead: VecDeque<char>,
    /// Playbacks not yet reported finished: (id, barge_in).
    playing: Vec<(u64, bool)>,
    next_play_id: u64,
    inactivity_deadline: Option<Instant>,
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
            typeahead: VecDeque::new(),
            playing: Vec::new(),
            next_play_id: 1,
            inactivity_deadline: None,
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
        match event {
            FlowEvent::Started(info) => {
                if self.phase != Phase::NotStarted {
                    tracing::warn!("duplicate Started event ignored");
                    return;
                }
                self.set_call_context(&info);
                tracing::info!(flow = %self.def.name(), call_id = %info.call_id, "flow started");
                self.phase = Phase::Running;
                self.restart_inactivity(now);
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
                self.session
                    .set_context("recording", "active", Value::Bool(false));
                self.session
                    .set_context("recording", "error", Value::String(reason));
            }
            FlowEvent::RecordingReady {
                id, duration_ms, ..
            } => {
                let ready = serde_json::json!({"id": id, "duration_ms": duration_ms});
                self.session.set_context("recording", "ready", ready);
            }
            FlowEvent::TransferProgress { status } => {
                self.session
                    .set_context("transfer", "status", Value::from(status));
            }
            FlowEvent::TransferCompleted { to, mode } => {
                tracing::info!(flow = %self.def.name(), %to, %mode, "forward completed; bot done");
                if matches!(self.wait, Wait::Transfer) {
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
                self.paused = true;
            }
            FlowEvent::Resumed => self.resume(now),
            // Integration and speech steps are not run by this engine yet.
            FlowEvent::RequestDone { id, .. }
            | FlowEvent::SpeechStarted { id }
            | FlowEvent::Speech { id, .. } => {
                tracing::debug!(id, "answer to a request the flow did not make; ignored");
            }
        }
    }

    /// Call when `now` reaches the instant from [`FlowMachine::poll_timeout`] (late is fine).
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.phase != Phase::Running || self.paused {
            return;
        }
        self.clock = (now, self.wall_at(now));
        if self.inactivity_applies() && self.inactivity_deadline.is_some_and(|d| d <= now) {
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
            _ => {}
        }
        self.run(now);
    }

    /// The next action for the call, in order.
    pub fn poll_action(&mut self) -> Option<FlowAction> {
        self.actions.pop_front()
    }

    /// When [`FlowMachine::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase != Phase::Running || self.paused {
            return None;
        }
        let step = match &self.wait {
            Wait::Collect(c) => c.poll_timeout(),
            Wait::Delay(until) => Some(*until),
            _ => None,
        };
        let inactivity = self
            .inactivity_deadline
            .filter(|_| self.inactivity_applies());
        match (step, inactivity) {
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

    /// The session's variables (flow variables plus the `call`/`transfer`/`recording` context).
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
        if matches!(self.wait, Wait::Transfer) {
            tracing::debug!(%digit, "forward in progress; DTMF ignored");
            return;
        }
        self.restart_inactivity(now);
        if self.playing.iter().any(|&(_, barge_in)| barge_in) {
            tracing::debug!(%digit, "barge-in: stopping playback");
            self.actions.push_back(FlowAction::StopPlayback);
            let awaited_barges = match self.wait {
                Wait::Playback(id) => self.playing.contains(&(id, true)),
                _ => false,
            };
            self.playing.clear();
            if awaited_barges {
                self.record(StepOutcome::Ok);
                self.apply(Next::Continue);
            }
        }
        match &mut self.wait {
            Wait::Collect(c) => {
                if let Some(result) = c.push(digit, now) {
                    self.finish_collect(result, now);
                }
            }
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
        self.playing.retain(|&(p, _)| p != id);
        if matches!(self.wait, Wait::Playback(w) if w == id) {
            self.record(failure.map_or(StepOutcome::Ok, StepOutcome::Failed));
            self.apply(Next::Continue);
            self.run(now);
        }
    }

    fn on_transfer_failed(&mut self, reason: String, detail: String, now: Instant) {
        if !matches!(self.wait, Wait::Transfer) {
            tracing::warn!(%reason, "TransferFailed without a forward in progress; ignored");
            return;
        }
        tracing::info!(flow = %self.def.name(), %reason, %detail, "forward failed");
        let message = format!("forward failed: {reason} ({detail})");
        self.session
            .set_context("transfer", "reason", Value::String(reason));
        self.session
            .set_context("transfer", "detail", Value::String(detail));
        let on_failure = match self.current_step() {
            Some(Step::Forward { on_failure, .. }) => *on_failure,
            _ => None,
        };
        self.record(StepOutcome::Failed(message));
        self.apply(on_failure.map_or(Next::Continue, Next::Goto));
        self.restart_inactivity(now);
        self.run(now);
    }

    fn resume(&mut self, now: Instant) {
        if !self.paused {
            return;
        }
        tracing::info!(flow = %self.def.name(), "bot resumed");
        self.paused = false;
        if self.phase != Phase::Running {
            return;
        }
        self.restart_inactivity(now);
        if let Wait::Collect(c) = &mut self.wait {
            c.restart_timers(now);
        }
        self.run(now);
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
                self.close_with(Scope::All, CloseReason::Error(message));
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
                let id = self.next_play_id;
                let action = match content {
                    Content::File(t) => FlowAction::Play {
                        id,
                        file: t
                            .render_file_name(self.session.vars())
                            .map_err(|e| e.to_string())?,
                    },
                    Content::Text(t) => FlowAction::Say {
                        id,
                        text: t.render(self.session.vars()).map_err(|e| e.to_string())?,
                    },
                };
                self.next_play_id += 1;
                self.actions.push_back(action);
                if self.playing.len() >= MAX_PLAYING {
                    self.playing.remove(0);
                }
                self.playing.push((id, *barge_in));
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
                found.map(Next::Goto).map_err(|message| StepError {
                    message,
                    fallback: *on_error,
                })
            }
            Step::Set(assignments) => {
                for (path, expr) in assignments {
                    let value = expr
                        .eval(self.session.vars())
                        .map_err(|e| format!("set `{path}` = `{expr}`: {e}"))?;
                    self.session.set(path, value).map_err(|e| e.to_string())?;
                }
                Ok(Next::Continue)
            }
            Step::ClearSession(scope) => {
                self.session.clear(*scope, Some(self.def.variables()));
                if *scope != Scope::Variables {
                    self.typeahead.clear();
                }
                Ok(Next::Continue)
            }
            Step::Delay(duration) => Ok(if duration.is_zero() {
                Next::Continue
            } else {
                Next::Wait(Wait::Delay(now + *duration))
            }),
            Step::PauseBot => {
                tracing::info!(flow = %self.def.name(), "bot paused by pause_bot");
                self.paused = true;
                Ok(Next::Continue)
            }
            Step::GetTime {
                variable,
                offset_minutes,
            } => {
                let value = time_fields(self.wall_at(now), *offset_minutes);
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
                for (key, expr) in properties {
                    let value = expr
                        .eval(self.session.vars())
                        .map_err(|e| format!("property `{key}` = `{expr}`: {e}"))?;
                    props.insert(key.clone(), value);
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
                let value = to
                    .eval(self.session.vars())
                    .map_err(|e| format!("forward target `{to}`: {e}"))?;
                let target = match &value {
                    Value::String(s) if !s.trim().is_empty() => s.trim().to_string(),
                    Value::Number(_) => display_value(&value),
                    other => {
                        return Err(format!(
                            "forward target `{to}` gave `{other}`, not a phone number"
                        )
                        .into())
                    }
                };
                tracing::info!(flow = %self.def.name(), to = %target, "forwarding");
                self.typeahead.clear();
                self.session.remove_context_key("transfer", "reason");
                self.session.remove_context_key("transfer", "detail");
                self.session.remove_context_key("transfer", "status");
                self.session
                    .set_context("transfer", "to", Value::String(target.clone()));
                self.actions.push_back(FlowAction::Transfer { to: target });
                Ok(Next::Wait(Wait::Transfer))
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
        }
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
        match self.resolve_collect(step, result) {
            Ok(next) => {
                self.record(StepOutcome::Ok);
                self.apply(next);
            }
            Err(err) => self.step_failed(err),
        }
        self.run(now);
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
    }

    /// A step error goes to the step's own error dialog, else the flow's `on_error`, else
    /// closes the conversation.
    fn step_failed(&mut self, err: StepError) {
        let (dialog, index) = self.pc;
        tracing::warn!(flow = %self.def.name(), dialog = %self.def.dialog(dialog).name,
            step = index + 1, error = %err.message, "flow step failed");
        self.record(StepOutcome::Failed(err.message.clone()));
        match err.fallback.or(self.def.on_error) {
            Some(target) => self.apply(Next::Goto(target)),
            None => self.close_with(Scope::All, CloseReason::Error(err.message)),
        }
    }

    fn close_with(&mut self, scope: Scope, reason: CloseReason) {
        if self.phase == Phase::Finished {
            return;
        }
        self.session.clear(scope, None);
        self.actions.push_back(FlowAction::Close {
            cleared_session: true,
        });
        tracing::info!(flow = %self.def.name(), ?reason, "conversation closed");
        self.finish(FlowEnd::Closed(reason));
    }

    fn finish(&mut self, end: FlowEnd) {
        self.phase = Phase::Finished;
        self.end = Some(end);
        self.wait = Wait::Ready;
        self.paused = false;
        self.typeahead.clear();
        self.playing.clear();
        self.inactivity_deadline = None;
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

    /// Inactivity does not count while a forward is under way (the caller is busy with it).
    fn inactivity_applies(&self) -> bool {
        !matches!(self.wait, Wait::Transfer)
    }

    fn restart_inactivity(&mut self, now: Instant) {
        self.inactivity_deadline = self.def.inactivity().map(|d| now + d);
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
