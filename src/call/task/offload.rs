//! `offload`: hand the caller to a human agent through the forward machinery. The target (an
//! E.164 number, then `transfer.allow`/`deny`; or a `sip:` URI whose host `transfer.allow_uris`
//! lists) and the context headers are checked before any SIP; with `[offload] webhook_url`,
//! the transcript and the flow's context are POSTed first (off the task; the answer comes back
//! through the inbox), then the forward starts. A failed POST is logged and the transfer goes
//! ahead.

use super::forward::{check_forward, Dest, Target};
use super::Call;
use crate::call::inbox::Inbox;
use crate::flow::FlowEvent;
use crate::integrations::offload::{self, OffloadNotifier};
use crate::phone::ParseOptions;
use std::time::Instant;
use tracing::{info, warn, Instrument};

impl Call {
    pub(super) fn start_offload(
        &mut self,
        to: String,
        headers: Vec<(String, String)>,
        context: serde_json::Value,
        now: Instant,
    ) {
        self.transcribe(|t| t.transfer_started(now, &to));
        let fail = |reason: &str, detail: String| FlowEvent::TransferFailed {
            reason: reason.into(),
            detail,
        };
        if self.forward.in_progress() || self.bridged || self.pending_offload.is_some() {
            self.flow_event(fail("busy", "a forward is already in progress".into()));
            return;
        }
        let cfg = &self.shared.config.transfer;
        let checked = offload::parse_target(&to, &cfg.allow_uris)
            .and_then(|t| offload::context_headers(&self.info.call_id, &headers).map(|h| (t, h)));
        let (target, headers) = match checked {
            Ok(x) => x,
            Err(e) => {
                warn!(to = %to, reason = e.code(), detail = %e, "transfer.failed");
                metrics::counter!("voxgate_transfers_total", "outcome" => e.code()).increment(1);
                self.flow_event(fail(e.code(), e.to_string()));
                return;
            }
        };
        let dest = match target {
            offload::Target::Number(raw) => {
                let opts = ParseOptions {
                    legacy_no_plus: cfg.legacy_no_plus,
                };
                match check_forward(&raw, false, &opts, &self.shared.policy) {
                    Ok(n) => Dest::Number(n),
                    Err(r) => {
                        r.log();
                        self.forward.refused(&r);
                        self.flow_event(r.flow_event());
                        return;
                    }
                }
            }
            offload::Target::Uri { uri, .. } => Dest::Uri(uri),
        };
        let target = Target { dest, headers };
        info!(target = %target, headers = target.headers.len(), "offload starting");
        let notifier = self
            .shared
            .integrations
            .as_ref()
            .map(|i| i.offload.clone())
            .filter(|n| n.enabled());
        let Some(notifier) = notifier else {
            self.begin_forward(target, now);
            return;
        };
        let transcript = self
            .transcript
            .as_ref()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).to_json())
            .unwrap_or(serde_json::Value::Null);
        let body = OffloadNotifier::body(
            &self.info.call_id,
            &self.info.from_user,
            &self.info.to_user,
            &target.to_string(),
            &context,
            &transcript,
        );
        self.pending_offload = Some(target);
        self.set_summary(|s| s.state = "transferring".into());
        let inbox = self.inbox_tx.clone();
        tokio::spawn(
            async move {
                match notifier.notify(&body).await {
                    Ok(_) => info!("offload webhook delivered"),
                    Err(e) => warn!(error = %e, "offload webhook failed; transferring anyway"),
                }
                inbox.post(Inbox::OffloadNotified);
            }
            .in_current_span(),
        );
    }

    /// The offload webhook answered (or failed): now the transfer.
    pub(super) fn offload_notified(&mut self) {
        if let Some(target) = self.pending_offload.take() {
            if !self.state.is_ended() {
                self.begin_forward(target, Instant::now());
            }
        }
    }
}
