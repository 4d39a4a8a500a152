//! `listen`: the caller may speak or press keys; the first input wins.
//!
//! - A key (typed ahead, or pressed while listening) stops the recogniser (`StopListening`)
//!   and the step becomes a `collect` with the listen's keypad fields.
//! - Speech: `SpeechStarted` (barge-in point), then one `Speech` result.
//! - The machine guards the recogniser: no result within `timeout_ms` (+1 s) is a timeout,
//!   speech that never ends within `max_speech_ms` (+5 s) a step error.
//! - A recogniser error falls back to the keypad when the step takes keys (keypad branches
//!   or a `variable`), else goes to the error path.

use super::*;
use crate::flow::definition::ListenStep;
use crate::flow::load::{contains_words, normalise_phrase};
use crate::flow::{ListenSpec, SpeechOutcome, StepFailure};

/// Slack for the recogniser's own `timeout` before the machine calls it a timeout.
const LISTEN_GRACE: Duration = Duration::from_secs(1);
/// Slack after `max_speech` for the recogniser to produce its result.
const RECOGNITION_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(super) struct ListenWait {
    id: u64,
    /// The recogniser is running (no key, no result yet).
    listening: bool,
    speech_started: bool,
    /// Keys pressed: the step now collects like `collect`.
    keyed: bool,
    collector: Collector,
    /// While listening: the guard; after a recogniser error: the keypad's wait.
    deadline: Option<Instant>,
    /// `timeout_ms` from the start of the step (the keypad fallback's deadline).
    ends: Instant,
    /// The recogniser failed and the step fell back to keys: the failure's code, saved as
    /// `<save_as>.error` so the flow can tell "no speech" from "no recogniser".
    speech_error: Option<String>,
}

impl ListenWait {
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        if self.keyed {
            self.collector.poll_timeout()
        } else {
            self.deadline
        }
    }

    pub(super) fn shift(&mut self, by: Duration) {
        self.collector.shift(by);
        if let Some(d) = &mut self.deadline {
            *d += by;
        }
        self.ends += by;
    }
}

/// How a listen ended.
enum Heard {
    Keys(Collected),
    Speech {
        text: String,
        confidence: f32,
        matched: bool,
    },
    Timeout,
}

impl FlowMachine {
    fn listen_step(&self) -> Option<Arc<FlowDefinition>> {
        matches!(self.current_step(), Some(Step::Listen(_))).then(|| Arc::clone(&self.def))
    }

    pub(super) fn exec_listen(&mut self, l: &ListenStep, now: Instant) -> Result<Next, StepError> {
        let id = self.next_id();
        let mut collector = Collector::new(l.keypad.clone(), now);
        let mut keyed = false;
        while let Some(digit) = self.typeahead.pop_front() {
            keyed = true;
            if let Some(result) = collector.push(digit, now) {
                // Keys typed ahead won before the step even listened.
                return self.resolve_listen(l, Heard::Keys(result), None);
            }
        }
        let ends = now + l.waiting.timeout;
        if !keyed {
            self.actions.push_back(FlowAction::Listen {
                id,
                spec: ListenSpec {
                    mode: l.mode.clone(),
                    timeout: l.waiting.timeout,
                    max_speech: l.max_speech,
                    barge_in: l.barge_in,
                },
            });
            if let Some(hold) = &l.waiting.hold {
                self.start_hold(hold.clone(), HoldOwner::Step, now);
            }
        }
        Ok(Next::Wait(Wait::Listen(Box::new(ListenWait {
            id,
            listening: !keyed,
            speech_started: false,
            keyed,
            collector,
            deadline: (!keyed).then_some(ends + LISTEN_GRACE),
            ends,
            speech_error: None,
        }))))
    }

    /// A key while listening: the keypad wins.
    pub(super) fn listen_key(&mut self, digit: char, now: Instant) {
        let Wait::Listen(w) = &mut self.wait else {
            return;
        };
        let stop = w.listening.then_some(w.id);
        w.listening = false;
        w.keyed = true;
        let result = w.collector.push(digit, now);
        if let Some(id) = stop {
            tracing::debug!(id, %digit, "key during listen: keypad wins");
            self.actions.push_back(FlowAction::StopListening { id });
            if self
                .hold
                .as_ref()
                .is_some_and(|h| h.owner == HoldOwner::Step)
            {
                self.stop_hold();
            }
        }
        if let Some(result) = result {
            self.finish_listen(Heard::Keys(result), now);
        }
    }

    pub(super) fn on_speech_started(&mut self, id: u64, now: Instant) {
        let Wait::Listen(w) = &mut self.wait else {
            return;
        };
        if w.id != id || !w.listening {
            return;
        }
        w.speech_started = true;
        let max_speech = match self.current_step() {
            Some(Step::Listen(l)) => l.max_speech,
            _ => return,
        };
        if let Wait::Listen(w) = &mut self.wait {
            w.deadline = Some(now + max_speech + RECOGNITION_GRACE);
        }
        self.reset_idle(now);
        let barge_in = matches!(self.current_step(), Some(Step::Listen(l)) if l.barge_in);
        if self
            .hold
            .as_ref()
            .is_some_and(|h| h.owner == HoldOwner::Step)
        {
            self.stop_hold();
        }
        if barge_in {
            let gone = self.prompts.stop(
                &[PromptClass::Normal, PromptClass::BargeIn],
                &mut self.actions,
            );
            tracing::debug!(?gone, "speech barge-in: prompts stopped");
            for id in gone {
                self.prompt_done(id, None, now);
            }
        }
    }

    pub(super) fn on_speech(&mut self, id: u64, outcome: SpeechOutcome, now: Instant) {
        let Wait::Listen(w) = &mut self.wait else {
            tracing::debug!(id, "speech result while not listening; dropped");
            return;
        };
        if w.id != id || !w.listening {
            tracing::debug!(id, "late speech result dropped (a key won, or timed out)");
            return;
        }
        w.listening = false;
        let (text, confidence, matched) = match outcome {
            SpeechOutcome::Heard { text, confidence } => (text, confidence, true),
            SpeechOutcome::NoMatch { text, confidence } => (text, confidence, false),
            SpeechOutcome::Timeout => {
                self.finish_listen(Heard::Timeout, now);
                return;
            }
            SpeechOutcome::Error(failure) => {
                self.listen_error(failure, now);
                return;
            }
        };
        self.reset_idle(now);
        self.finish_listen(
            Heard::Speech {
                text,
                confidence,
                matched,
            },
            now,
        );
    }

    /// The recogniser failed: keep waiting for keys when the step takes them.
    fn listen_error(&mut self, failure: StepFailure, now: Instant) {
        let Some(def) = self.listen_step() else {
            return;
        };
        let Some(Step::Listen(l)) = def.dialog(self.pc.0).steps.get(self.pc.1) else {
            return;
        };
        let takes_keys = !l.keys.is_empty() || l.variable.is_some();
        if takes_keys {
            if matches!(failure.code.as_str(), "unavailable" | "not_configured") {
                // Said once at start-up: no recogniser at all is not news for each call.
                tracing::debug!(code = %failure.code, error = %failure.message, "no speech recognition; waiting for keys");
            } else {
                tracing::warn!(code = %failure.code, error = %failure.message, "speech recognition failed; waiting for keys");
            }
            if let Wait::Listen(w) = &mut self.wait {
                w.deadline = Some(w.ends.max(now));
                w.speech_error = Some(failure.code);
            }
            return;
        }
        self.wait = Wait::Ready;
        self.step_failed(StepError {
            message: format!("listen: speech recognition failed: {}", failure.message),
            fallback: l.waiting.on_error,
            code: "speech",
            detail_code: Some(failure.code),
        });
        self.run(now);
    }

    pub(super) fn listen_timeout(&mut self, now: Instant) {
        let Wait::Listen(w) = &mut self.wait else {
            return;
        };
        if w.keyed {
            if let Some(result) = w.collector.handle_timeout(now) {
                self.finish_listen(Heard::Keys(result), now);
            }
            return;
        }
        if w.deadline.is_none_or(|d| d > now) {
            return;
        }
        let (id, listening, speech_started) = (w.id, w.listening, w.speech_started);
        if listening {
            self.actions.push_back(FlowAction::StopListening { id });
        }
        if listening && speech_started {
            let fallback = match self.current_step() {
                Some(Step::Listen(l)) => l.waiting.on_error,
                _ => None,
            };
            self.wait = Wait::Ready;
            self.step_failed(StepError {
                message: "listen: the recogniser gave no result for the caller's speech".into(),
                fallback,
                code: "timeout",
                detail_code: None,
            });
            return;
        }
        self.finish_listen(Heard::Timeout, now);
    }

    fn finish_listen(&mut self, heard: Heard, now: Instant) {
        let Some(def) = self.listen_step() else {
            return;
        };
        let Some(Step::Listen(l)) = def.dialog(self.pc.0).steps.get(self.pc.1) else {
            return;
        };
        let speech_error = match std::mem::replace(&mut self.wait, Wait::Ready) {
            Wait::Listen(w) => w.speech_error,
            _ => None,
        };
        let outcome = self.resolve_listen(l, heard, speech_error);
        self.conclude(outcome);
        self.run(now);
    }

    /// Stores what was heard or typed and picks the branch.
    fn resolve_listen(
        &mut self,
        l: &ListenStep,
        heard: Heard,
        speech_error: Option<String>,
    ) -> Result<Next, StepError> {
        let (mut saved, target) = match heard {
            Heard::Keys(result) => {
                let input = match result {
                    Collected::Input(s) => s,
                    Collected::NoInput => String::new(),
                };
                if let Some(p) = &l.variable {
                    self.session
                        .set(p, Value::String(input.clone()))
                        .map_err(|e| e.to_string())?;
                }
                let target = l.keys.get(&input).copied().or(l.default);
                (
                    json!({"text": input, "confidence": 1.0, "input": "dtmf"}),
                    target,
                )
            }
            Heard::Speech {
                text,
                confidence,
                matched,
            } => {
                // f32 confidences read badly as JSON (0.800000011920929): keep 4 decimals.
                let confidence = (f64::from(confidence) * 1e4).round() / 1e4;
                let normal = normalise_phrase(&text);
                let branch = if matched {
                    best_phrase(&l.phrases, &normal)
                } else {
                    None
                };
                let target = match branch {
                    Some(d) => Some(d),
                    None if matched => l.default.or(l.on_no_match),
                    None => l.on_no_match.or(l.default),
                };
                tracing::info!(%text, confidence, matched, "listen heard");
                (
                    json!({"text": text, "confidence": confidence, "input": "speech"}),
                    target,
                )
            }
            Heard::Timeout => {
                if let Some(p) = &l.variable {
                    self.session
                        .set(p, Value::String(String::new()))
                        .map_err(|e| e.to_string())?;
                }
                (
                    json!({"text": "", "confidence": 0.0, "input": "none"}),
                    l.on_timeout.or(l.default),
                )
            }
        };
        if let Some(code) = speech_error {
            saved["error"] = Value::String(code);
        }
        if let Some(p) = &l.save_as {
            self.session.set(p, saved).map_err(|e| e.to_string())?;
        }
        Ok(target.map_or(Next::Continue, Next::Goto))
    }
}

/// The branch for recognised text: an exact phrase first, else the longest phrase the text
/// contains (earliest in the file on a tie).
fn best_phrase(phrases: &[(String, DialogId)], text: &str) -> Option<DialogId> {
    if let Some((_, d)) = phrases.iter().find(|(p, _)| p == text) {
        return Some(*d);
    }
    let mut best: Option<(usize, DialogId)> = None;
    for (p, d) in phrases {
        if contains_words(text, p) && best.is_none_or(|(len, _)| p.len() > len) {
            best = Some((p.len(), *d));
        }
    }
    best.map(|(_, d)| d)
}
