//! The call side's engine for `StepRequest::KnowledgeBase`: the search runs on a blocking
//! thread (a large knowledge base is CPU work), the answer goes to the call's inbox. Every other
//! request goes to the `next` executor (the integrations engine) or is answered
//! `not_configured`.

use super::KbHandle;
use crate::call::executor::{RequestContext, RequestExecutor};
use crate::call::inbox::{Inbox, InboxSender};
use crate::flow::{StepFailure, StepRequest};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, Instrument};

pub struct KbExecutor {
    kb: KbHandle,
    next: Option<Arc<dyn RequestExecutor>>,
}

impl KbExecutor {
    pub fn new(kb: KbHandle, next: Option<Arc<dyn RequestExecutor>>) -> Self {
        KbExecutor { kb, next }
    }
}

impl RequestExecutor for KbExecutor {
    fn start(
        &self,
        call: &RequestContext,
        id: u64,
        request: StepRequest,
        timeout: Duration,
        reply: InboxSender,
    ) {
        let query = match request {
            StepRequest::KnowledgeBase(q) => q,
            other => {
                match &self.next {
                    Some(next) => next.start(call, id, other, timeout, reply),
                    None => {
                        reply.post(Inbox::RequestDone {
                            id,
                            result: Err(StepFailure {
                                code: "not_configured".into(),
                                message: "this integration step is not available in this build"
                                    .into(),
                            }),
                        });
                    }
                }
                return;
            }
        };
        let kb = self.kb.get();
        let search = tokio::task::spawn_blocking(move || {
            kb.answer(&query.question, query.source.as_deref(), query.min_score)
        });
        tokio::spawn(
            async move {
                let result = match tokio::time::timeout(timeout, search).await {
                    Ok(Ok(answer)) => {
                        debug!(source = ?answer.source, score = answer.score, "knowledge base answered");
                        Ok(answer.to_json())
                    }
                    Ok(Err(e)) => Err(StepFailure {
                        code: "knowledge_base".into(),
                        message: format!("search failed: {e}"),
                    }),
                    Err(_) => Err(StepFailure {
                        code: "timeout".into(),
                        message: format!("no answer within {} ms", timeout.as_millis()),
                    }),
                };
                reply.post(Inbox::RequestDone { id, result });
            }
            .in_current_span(),
        );
    }

    fn cancel(&self, call_id: &str, id: u64) {
        // A search is short and cannot be interrupted; its late answer is dropped by the call.
        if let Some(next) = &self.next {
            next.cancel(call_id, id);
        }
    }
}
