//! The integration steps' IO: what answers `FlowAction::Request` (`api`, `code`,
//! `json_builder`, `send_mail`, `mail_report`, `table`) and the webhook half of `offload`, plus
//! the per-call [`transcript`]. The flow machine decides (IO-free); these executors do the
//! network, SMTP, SQLite and JavaScript work off the call task and answer with one result.
//!
//! Imports flow one way: `call` uses this module; this module uses `flow`'s request types and
//! `config`, never `call`. See docs/integrations.md.

pub mod events;
pub mod hosts;
pub mod http;
pub mod mail;
pub mod offload;
pub mod script;
pub mod secrets;
pub mod tables;
pub mod transcript;
mod webhook;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tracing::warn;

use crate::config::Config;
use crate::flow::{StepFailure, StepRequest};

pub use events::EventSink;
pub use transcript::{Transcript, TranscriptStore};

/// A step failure: a short code (`timeout`, `refused`, `http`, `script`, `memory`, `smtp`,
/// `table`, `secret`, `not_configured`, `too_large`, ...) and readable words, secrets redacted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct StepError {
    pub code: String,
    pub message: String,
}

impl StepError {
    pub fn new(code: &str, message: impl Into<String>) -> Self {
        StepError {
            code: code.to_string(),
            message: message.into(),
        }
    }

    pub fn not_configured(what: &str) -> Self {
        StepError::new("not_configured", what.to_string())
    }

    /// The same error with every used secret value replaced by `***`.
    pub fn redacted(self, used: &secrets::Used) -> Self {
        StepError {
            code: self.code,
            message: used.redact(&self.message),
        }
    }
}

impl From<StepError> for StepFailure {
    fn from(e: StepError) -> Self {
        StepFailure {
            code: e.code,
            message: e.message,
        }
    }
}

/// Start-up failures of the executors.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("integrations: {0}")]
    Config(String),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("tables: {0}")]
    Tables(#[from] tables::TableError),
    #[error("mail: {0}")]
    Mail(String),
    #[error("scripts: {0}")]
    Script(String),
}

/// What a request needs to know about its call.
#[derive(Debug, Clone, Default)]
pub struct RequestContext {
    pub call_id: String,
    pub from: String,
    pub to: String,
    /// The call's transcript so far (`mail_report`).
    pub transcript: Option<Transcript>,
    /// Recordings of the call so far (`mail_report`).
    pub recording_ids: Vec<String>,
    /// The call side already handed a `json_builder` event to the WebSocket bot.
    pub websocket_delivered: bool,
}

/// Every executor, built once at start-up and shared by all calls (cheap to clone).
#[derive(Clone)]
pub struct Integrations {
    pub http: Arc<http::HttpExecutor>,
    pub scripts: Arc<script::ScriptPool>,
    pub events: EventSink,
    pub mail: Option<Arc<mail::Mailer>>,
    pub tables: Arc<tables::TableStore>,
    pub offload: Arc<offload::OffloadNotifier>,
    pub transcripts: Arc<TranscriptStore>,
    /// Requests in progress, by (call id, request id), so a `CancelRequest` can stop one.
    inflight:
        Arc<std::sync::Mutex<std::collections::HashMap<(String, u64), tokio::task::AbortHandle>>>,
}

impl Integrations {
    /// Builds the executors from the config. `log_event` appends one record to the events
    /// journal served by `/v1/events` (the caller owns that file). Must run inside a tokio
    /// runtime (queues start their tasks).
    pub fn start(config: &Config, log_event: events::EventLog) -> Result<Integrations, InitError> {
        let i = &config.integrations;
        let policy = hosts::HostPolicy::new(&i.allow_hosts).map_err(InitError::Config)?;
        let secrets = secrets::Secrets::new(i.secrets.clone());
        let http = Arc::new(http::HttpExecutor::new(
            policy,
            secrets,
            (i.max_response_kb as usize).saturating_mul(1024),
            i.max_redirects,
        )?);
        let fetch = if i.script_fetch {
            tokio::runtime::Handle::try_current()
                .ok()
                .map(|h| script::Fetch {
                    http: http.clone(),
                    runtime: h,
                })
        } else {
            None
        };
        let scripts = script::ScriptPool::new(script::PoolConfig {
            threads: i.script_threads,
            max_memory_kb: i.script_max_memory_kb,
            fetch,
        })
        .map_err(|e| InitError::Script(e.to_string()))?;
        let events = EventSink::start(&config.events, log_event)?;
        let mail = match &config.mail.smtp_url {
            Some(_) => Some(
                mail::Mailer::start(&config.mail, Some(config.data_dir.join("mail-spool")))
                    .map_err(InitError::Mail)?,
            ),
            None => None,
        };
        let tables = match (
            config.store.resolved_url(),
            tokio::runtime::Handle::try_current(),
        ) {
            // With a shared store the tables are shared too (every node sees every row).
            (Some(url), Ok(runtime)) => {
                let pg = tables::pg::PgTables::new(
                    tables::pg::PgTablesConfig {
                        url,
                        ca_file: config.store.ca_file.clone(),
                        timeout: Duration::from_millis(config.store.timeout_ms),
                        node: config.node.name.clone(),
                    },
                    runtime,
                );
                let tables = Arc::new(tables::TableStore::Postgres(pg));
                seed_shared(
                    tables.clone(),
                    config.tables.dir.clone(),
                    config.tables.reseed,
                )?;
                tables
            }
            _ => {
                let tables = Arc::new(tables::TableStore::open(
                    &config.data_dir.join("tables.sqlite3"),
                )?);
                match tables.seed_dir(&config.tables.dir, config.tables.reseed) {
                    Ok(report) => {
                        if !report.is_empty() {
                            tracing::info!(?report, dir = %config.tables.dir.display(), "tables seeded");
                        }
                    }
                    Err(e) => return Err(InitError::Tables(e)),
                }
                tables
            }
        };
        let offload = offload::OffloadNotifier::new(&config.offload)?;
        let transcripts = Arc::new(TranscriptStore::new(config.data_dir.join("transcripts")));
        Ok(Integrations {
            http,
            scripts: Arc::new(scripts),
            events,
            mail: mail.map(Arc::new),
            tables,
            offload: Arc::new(offload),
            transcripts,
            inflight: Default::default(),
        })
    }

    /// Starts a request off the calling task and returns at once; `done` gets exactly one
    /// result (within `timeout`), unless [`Integrations::cancel`] stops it first.
    /// `mail_report` reads the call's live transcript from the store.
    pub fn start_request(
        &self,
        mut ctx: RequestContext,
        id: u64,
        request: StepRequest,
        timeout: Duration,
        done: impl FnOnce(u64, Result<Value, StepFailure>) + Send + 'static,
    ) {
        if matches!(&request, StepRequest::Mail(m) if m.report) && ctx.transcript.is_none() {
            ctx.transcript = self.transcripts.snapshot(&ctx.call_id);
        }
        let key = (ctx.call_id.clone(), id);
        let me = self.clone();
        let key2 = key.clone();
        let task = tokio::spawn(async move {
            let result = me.run(request, ctx, timeout).await;
            me.inflight
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key2);
            done(id, result);
        });
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        if !task.is_finished() {
            inflight.insert(key, task.abort_handle());
        }
    }

    /// The flow gave up on a request (or the call ended): stop it. No result follows.
    pub fn cancel(&self, call_id: &str, id: u64) {
        let handle = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(call_id.to_string(), id));
        if let Some(h) = handle {
            h.abort();
            tracing::debug!(call_id, id, "step request cancelled");
        }
    }

    /// Cancels every request of a call (the call ended).
    pub fn cancel_call(&self, call_id: &str) {
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        inflight.retain(|(c, _), h| {
            if c == call_id {
                h.abort();
                false
            } else {
                true
            }
        });
    }

    /// Runs one step request within `timeout`, answering exactly once.
    pub async fn run(
        &self,
        request: StepRequest,
        ctx: RequestContext,
        timeout: Duration,
    ) -> Result<Value, StepFailure> {
        let started = Instant::now();
        // The executors get a little less than the flow's timeout so their own, more precise
        // error wins over the flow's generic one.
        let budget = timeout
            .saturating_sub(Duration::from_millis(20))
            .max(Duration::from_millis(1));
        let kind = kind_of(&request);
        let fut = self.dispatch(request, &ctx, budget);
        let result = match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(StepError::new(
                "timeout",
                format!("{kind} did not finish within {} ms", timeout.as_millis()),
            )),
        };
        match &result {
            Ok(_) => tracing::info!(
                step = kind,
                ms = started.elapsed().as_millis() as u64,
                "step request done"
            ),
            Err(e) => warn!(step = kind, code = %e.code, error = %e.message, "step request failed"),
        }
        metrics::counter!("voxgate_step_requests_total", "step" => kind, "outcome" => if result.is_ok() { "ok" } else { "error" }).increment(1);
        result.map_err(StepFailure::from)
    }

    async fn dispatch(
        &self,
        request: StepRequest,
        ctx: &RequestContext,
        budget: Duration,
    ) -> Result<Value, StepError> {
        match request {
            StepRequest::Http(req) => self.http.execute(&req, budget).await.map(|r| r.to_json()),
            StepRequest::Script(req) => self.scripts.run(req, budget).await,
            StepRequest::Dispatch { payload } => {
                Ok(self
                    .events
                    .dispatch(&ctx.call_id, payload, ctx.websocket_delivered))
            }
            StepRequest::Mail(req) => match &self.mail {
                None => Err(StepError::not_configured(
                    "mail is not configured ([mail] smtp_url)",
                )),
                Some(m) => m.send_step(req, ctx, budget).await,
            },
            StepRequest::Table(req) => {
                let tables = self.tables.clone();
                tokio::task::spawn_blocking(move || tables.run(&req))
                    .await
                    .map_err(|e| StepError::new("table", format!("table task failed: {e}")))?
            }
            StepRequest::KnowledgeBase(_) => Err(StepError::not_configured(
                "the knowledge base is not available in this build",
            )),
        }
    }
}

/// Seeds the shared tables off the runtime's workers: the CSV files are read and checked now
/// (a bad file stops the start, as with SQLite); the database is written in the background,
/// retried until it answers, so a node starts while the database is down.
fn seed_shared(
    tables: Arc<tables::TableStore>,
    dir: std::path::PathBuf,
    reseed: bool,
) -> Result<(), InitError> {
    let files = tables::csv_files(&dir)?;
    let mut csvs = Vec::new();
    for (name, path) in files {
        csvs.push((name, path.clone(), tables::SeedCsv::read(&path)?));
    }
    if csvs.is_empty() {
        return Ok(());
    }
    tokio::task::spawn_blocking(move || {
        let mut delay = Duration::from_millis(500);
        let mut pending = csvs;
        while !pending.is_empty() {
            pending.retain(|(name, path, csv)| {
                let tables::TableStore::Postgres(pg) = tables.as_ref() else {
                    return false;
                };
                match pg.seed(name, csv, reseed) {
                    Ok(_) => false,
                    Err(e) if e.is_client_error() => {
                        warn!(table = %name, file = %path.display(), error = %e, "shared table not seeded");
                        false
                    }
                    Err(e) => {
                        warn!(table = %name, error = %e, "shared table not seeded yet; retrying");
                        true
                    }
                }
            });
            if !pending.is_empty() {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(30));
            }
        }
    });
    Ok(())
}

/// The step name of a request, for logs and metrics.
pub fn kind_of(request: &StepRequest) -> &'static str {
    match request {
        StepRequest::Http(_) => "api",
        StepRequest::Script(_) => "code",
        StepRequest::Dispatch { .. } => "json_builder",
        StepRequest::Mail(m) if m.report => "mail_report",
        StepRequest::Mail(_) => "send_mail",
        StepRequest::Table(_) => "table",
        StepRequest::KnowledgeBase(_) => "knowledge_base",
    }
}

/// `{"type":"CL_DISPATCH_EVENT","payload":...,"call_id":...}`: what the WebSocket bot, the
/// webhook and `/v1/events` all receive for a `json_builder` step.
pub fn dispatch_event(call_id: &str, payload: &Value) -> Value {
    json!({"type": "CL_DISPATCH_EVENT", "payload": payload, "call_id": call_id})
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn integrations(dir: &std::path::Path) -> (Integrations, Arc<Mutex<Vec<Value>>>) {
        let config = Config {
            data_dir: dir.join("data"),
            tables: crate::config::TablesConfig {
                dir: dir.join("tables"),
                reseed: false,
            },
            ..Config::default()
        };
        let journal = Arc::new(Mutex::new(Vec::new()));
        let j2 = journal.clone();
        let i =
            Integrations::start(&config, Arc::new(move |v| j2.lock().unwrap().push(v))).unwrap();
        (i, journal)
    }

    fn ctx() -> RequestContext {
        RequestContext {
            call_id: "c1".into(),
            ..Default::default()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn requests_answer_once_and_cancel_stops_them() {
        let dir = tempfile::tempdir().unwrap();
        let (i, journal) = integrations(dir.path());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let tx2 = tx.clone();
        i.start_request(
            ctx(),
            1,
            StepRequest::Dispatch {
                payload: json!({"a": 1}),
            },
            Duration::from_secs(2),
            move |id, r| {
                tx2.send((id, r)).ok();
            },
        );
        let (id, r) = rx.recv().await.unwrap();
        assert_eq!(
            (id, r.unwrap()),
            (1, json!({"websocket": false, "webhook": "disabled"}))
        );
        assert_eq!(journal.lock().unwrap()[0]["name"], "CL_DISPATCH_EVENT");

        // An endless script, cancelled: no answer, and the script thread is free again.
        let tx3 = tx.clone();
        i.start_request(
            ctx(),
            2,
            StepRequest::Script(crate::flow::ScriptRequest {
                source: "while (true) {}".into(),
                args: json!({}),
                memory_kb: 4096,
            }),
            Duration::from_secs(30),
            move |id, r| {
                tx3.send((id, r)).ok();
            },
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        i.cancel("c1", 2);
        // The mail step without [mail]: a clear not_configured failure.
        let tx4 = tx.clone();
        i.start_request(
            ctx(),
            3,
            StepRequest::Mail(crate::flow::MailRequest {
                to: vec!["a@example.com".into()],
                cc: vec![],
                subject: "s".into(),
                body: "b".into(),
                report: false,
            }),
            Duration::from_secs(2),
            move |id, r| {
                tx4.send((id, r)).ok();
            },
        );
        let (id, r) = rx.recv().await.unwrap();
        assert_eq!(id, 3, "the cancelled request never answers");
        assert_eq!(r.unwrap_err().code, "not_configured");
        // A timeout shorter than the work: a `timeout` failure within the limit.
        let t = Instant::now();
        let tx5 = tx.clone();
        i.start_request(
            ctx(),
            4,
            StepRequest::Script(crate::flow::ScriptRequest {
                source: "for (;;) {}".into(),
                args: json!({}),
                memory_kb: 4096,
            }),
            Duration::from_millis(300),
            move |id, r| {
                tx5.send((id, r)).ok();
            },
        );
        let (id, r) = rx.recv().await.unwrap();
        assert_eq!((id, r.unwrap_err().code.as_str()), (4, "timeout"));
        assert!(t.elapsed() < Duration::from_secs(2));
    }
}
