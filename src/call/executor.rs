//! Where the call side plugs in engines that answer flow steps off the call task.
//!
//! The call task (`call::task::actions`) hands each `FlowAction::Request` to the
//! [`RequestExecutor`] held in `Shared::requests`; the executor runs it elsewhere (a tokio
//! task, `spawn_blocking`, or its own thread for SQLite/JS) and posts exactly one
//! [`Inbox::RequestDone`](super::inbox::Inbox::RequestDone) with the same id. Without an
//! executor the call answers at once with a `not_configured` failure.

use super::inbox::InboxSender;
use crate::flow::StepRequest;
use std::time::Duration;

/// Facts about the call an executor may need (mail reports, dispatched events, logs).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestContext {
    pub call_id: String,
    pub from: String,
    pub to: String,
    /// Recordings started on this call so far, oldest first.
    pub recording_ids: Vec<String>,
    /// An external bot drives the call over the WebSocket (a dispatched event reaches it).
    pub websocket: bool,
}

/// Runs integration steps for every call.
pub trait RequestExecutor: Send + Sync {
    /// Starts `request` and returns at once (never blocks the call task). Posts exactly one
    /// `Inbox::RequestDone { id, .. }` to `reply`, at the latest when `timeout` has passed
    /// (a `timeout` failure). `{secrets.NAME}` placeholders are filled here, at send time.
    fn start(
        &self,
        call: &RequestContext,
        id: u64,
        request: StepRequest,
        timeout: Duration,
        reply: InboxSender,
    );

    /// The flow gave up on `id` (or the call ended): abort it if possible. A result that
    /// still arrives is dropped by the call.
    fn cancel(&self, call_id: &str, id: u64);
}

/// The integration executors (`src/integrations`) answer the call's requests.
impl RequestExecutor for crate::integrations::Integrations {
    fn start(
        &self,
        call: &RequestContext,
        id: u64,
        request: StepRequest,
        timeout: Duration,
        reply: InboxSender,
    ) {
        let ctx = crate::integrations::RequestContext {
            call_id: call.call_id.clone(),
            from: call.from.clone(),
            to: call.to.clone(),
            transcript: None,
            recording_ids: call.recording_ids.clone(),
            websocket_delivered: call.websocket && matches!(request, StepRequest::Dispatch { .. }),
        };
        let step = crate::integrations::kind_of(&request);
        let transcripts = self.transcripts.clone();
        let call_id = call.call_id.clone();
        self.start_request(ctx, id, request, timeout, move |id, result| {
            // The step's outcome joins the call's transcript (the flow's own log has the dialog).
            let outcome = match &result {
                Ok(_) => "ok".to_string(),
                Err(f) => format!("error {}: {}", f.code, f.message),
            };
            transcripts.with_live(&call_id, |t| {
                t.step(std::time::Instant::now(), step, &outcome, None)
            });
            reply.post(super::inbox::Inbox::RequestDone { id, result });
        });
    }

    fn cancel(&self, call_id: &str, id: u64) {
        crate::integrations::Integrations::cancel(self, call_id, id);
    }
}
