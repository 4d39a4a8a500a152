//! The call side's engine for `StepRequest::KnowledgeBase`: the search runs on a blocking
//! thread (a large knowledge base is CPU work), the answer goes to the call's inbox. Every other
//! request goes to the `next` executor (the integrations engine) or is answered
//! `not_configured`. Like the integration steps, the outcome joins the call's transcript as a
//! `step` entry when a transcript store is given.

use super::KbHandle;
use crate::call::executor::{RequestContext, RequestExecutor};
use crate::call::inbox::{Inbox, InboxSender};
use crate::flow::{StepFailure, StepRequest};
use crate::integrations::transcript::TranscriptStore;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, Instrument};

pub struct KbExecutor {
    kb: KbHandle,
    next: Option<Arc<dyn RequestExecutor>>,
    transcripts: Option<Arc<TranscriptStore>>,
}

impl KbExecutor {
    /// Answers `knowledge_base` from `kb`; hands every other request to `next`.
    pub fn new(kb: KbHandle, next: Option<Arc<dyn RequestExecutor>>) -> Self {
        KbExecutor {
            kb,
            next,
            transcripts: None,
        }
    }

    /// Records each answer in the call's live transcript (`step` entries).
    pub fn with_transcripts(mut self, transcripts: Arc<TranscriptStore>) -> Self {
        self.transcripts = Some(transcripts);
        self
    }
}

/// The transcript's words for a search's result.
fn outcome_words(result: &Result<super::Answer, StepFailure>) -> String {
    match result {
        Ok(a) => match &a.source {
            Some(source) if a.answer.is_some() => {
                format!("answered from {source} (score {:.2})", a.score)
            }
            _ => format!("no answer (best score {:.2})", a.score),
        },
        Err(f) => format!("error {}: {}", f.code, f.message),
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
        let transcripts = self.transcripts.clone();
        let call_id = call.call_id.clone();
        let search = tokio::task::spawn_blocking(move || {
            kb.answer(&query.question, query.source.as_deref(), query.min_score)
        });
        tokio::spawn(
            async move {
                let result = match tokio::time::timeout(timeout, search).await {
                    Ok(Ok(answer)) => {
                        debug!(source = ?answer.source, score = answer.score, "knowledge base answered");
                        Ok(answer)
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
                if let Some(t) = &transcripts {
                    let words = outcome_words(&result);
                    t.with_live(&call_id, |t| {
                        t.step(std::time::Instant::now(), "knowledge_base", &words, None)
                    });
                }
                let result = result.map(|a| a.to_json());
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
