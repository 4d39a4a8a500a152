//! The seam between a call and whatever drives it: the embedded flow engine or an external
//! bot over WebSocket. The call task makes the same calls either way.

use super::machine::FlowMachine;
use super::websocket::{ConnEvent, WsBridge};
use super::{FlowAction, FlowEvent};
use chrono::{DateTime, Utc};
use std::time::Instant;

/// One per call, so the size difference between the variants does not matter.
#[allow(clippy::large_enum_variant)]
pub enum FlowDriver {
    Embedded(FlowMachine),
    External(Box<WsBridge>),
}

impl FlowDriver {
    pub fn is_external(&self) -> bool {
        matches!(self, FlowDriver::External(_))
    }

    pub fn handle_event(&mut self, ev: FlowEvent, now: Instant, wall: DateTime<Utc>) {
        match self {
            FlowDriver::Embedded(m) => m.handle_event(ev, now, wall),
            FlowDriver::External(b) => b.handle_event(ev, now),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        match self {
            FlowDriver::Embedded(m) => m.handle_timeout(now),
            FlowDriver::External(b) => b.handle_timeout(now),
        }
    }

    pub fn poll_action(&mut self) -> Option<FlowAction> {
        match self {
            FlowDriver::Embedded(m) => m.poll_action(),
            FlowDriver::External(b) => b.poll_action(),
        }
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        match self {
            FlowDriver::Embedded(m) => m.poll_timeout(),
            FlowDriver::External(b) => b.poll_timeout(),
        }
    }

    /// True while the embedded bot is paused (an operator, or its own `pause_bot`); `None`
    /// for an external bot, which reports nothing of the kind.
    pub fn is_paused(&self) -> Option<bool> {
        match self {
            FlowDriver::Embedded(m) => Some(m.is_paused()),
            FlowDriver::External(_) => None,
        }
    }

    /// The embedded bot's summary and step log for the CDR
    /// (`{"flow", "steps_ok", "steps_failed", "failures", "steps_not_logged", "end", "steps"}`).
    pub fn cdr_json(&self) -> Option<serde_json::Value> {
        match self {
            FlowDriver::Embedded(m) => {
                let mut v = m.summary().to_json();
                v["steps"] = m
                    .step_log()
                    .iter()
                    .map(super::machine::StepRecord::to_json)
                    .collect();
                Some(v)
            }
            FlowDriver::External(_) => None,
        }
    }

    /// Caller audio for an external bot (the embedded engine does not listen).
    pub fn caller_audio(&mut self, samples: &[i16]) {
        if let FlowDriver::External(b) = self {
            b.caller_audio(samples);
        }
    }

    /// The next report from the bot connection (it also writes what is queued for the bot);
    /// pending forever for the embedded engine.
    pub fn poll_io(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<ConnEvent> {
        match self {
            FlowDriver::Embedded(_) => std::task::Poll::Pending,
            FlowDriver::External(b) => b.poll_io(cx),
        }
    }

    pub fn handle_io(&mut self, ev: ConnEvent, now: Instant) {
        if let FlowDriver::External(b) = self {
            b.handle_io(ev, now);
        }
    }
}
