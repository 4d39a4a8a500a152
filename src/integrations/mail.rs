//! `send_mail` and `mail_report`: SMTP through lettre (rustls on ring) to `[mail] smtp_url`,
//! with STARTTLS (`opportunistic`, `required` or `never`) or TLS from the start (`smtps://`),
//! and AUTH when a username is set.
//!
//! Sending never blocks a call: a step queues its message and waits (at most its timeout) for
//! the first attempt. Accepted by the server: `{"queued": true, "sent": true, "message_id"}`.
//! Not yet (slow server, connection refused, 4xx): `{"queued": true, "sent": false, ...}` and
//! the queue retries with backoff up to `max_attempts`. Refused for good (5xx, bad address):
//! a step error `smtp`.
//!
//! The queue survives a restart: each message is written to the spool directory
//! (`<data_dir>/mail-spool/`, one JSON file per message: envelope and the formatted message;
//! temp file, fsync, rename, on the blocking pool) before it is queued, and deleted once it is
//! sent, refused or given up. At start-up what is left there is queued again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use lettre::address::{Address, Envelope};

use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tracing::{info, warn};

use super::{RequestContext, StepError};
use crate::config::{MailConfig, StartTls};
use crate::flow::MailRequest;

/// Messages being sent at once.
const MAX_IN_FLIGHT: usize = 4;
/// Recipients (to + cc) per message.
pub const MAX_RECIPIENTS: usize = 50;

/// `[mail] smtp_url` split up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpTarget {
    pub host: String,
    pub port: u16,
    /// `smtps://`: TLS from the first byte.
    pub implicit_tls: bool,
}

impl SmtpTarget {
    pub fn parse(url: &str) -> Result<SmtpTarget, String> {
        let parsed = url::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
        let implicit_tls = match parsed.scheme() {
            "smtp" => false,
            "smtps" => true,
            other => {
                return Err(format!(
                    "`{url}`: scheme `{other}` is not smtp:// or smtps://"
                ))
            }
        };
        if !parsed.username().is_empty() || parsed.password().is_some() {
            return Err(format!(
                "`{url}`: put credentials in mail.username / mail.password, not in the URL"
            ));
        }
        let host = parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("`{url}` has no host"))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = parsed.port().unwrap_or(if implicit_tls { 465 } else { 25 });
        Ok(SmtpTarget {
            host,
            port,
            implicit_tls,
        })
    }
}

/// An e-mail address (`ops@example.com` or `Ops <ops@example.com>`).
pub fn check_address(addr: &str) -> Result<Mailbox, String> {
    addr.trim()
        .parse::<Mailbox>()
        .map_err(|e| format!("`{addr}` is not an e-mail address: {e}"))
}

struct Job {
    message_id: String,
    to: String,
    envelope: Envelope,
    raw: Arc<Vec<u8>>,
    first: Option<oneshot::Sender<Attempt>>,
    /// Its spool file, deleted once the message is done with.
    spooled: Option<PathBuf>,
}

/// A spooled message, as one JSON file.
#[derive(serde::Serialize, serde::Deserialize)]
struct Spooled {
    message_id: String,
    to: String,
    from: Option<String>,
    rcpt: Vec<String>,
    /// The formatted message, base64.
    raw: String,
}

fn spool_name(message_id: &str) -> String {
    use sha2::Digest;
    let h = sha2::Sha256::digest(message_id.as_bytes());
    format!("{}.json", &hex::encode(h)[..32])
}

/// Writes one message to the spool (temp file, fsync, rename). Blocking.
fn spool_write(dir: &Path, s: &Spooled) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(spool_name(&s.message_id));
    let tmp = path.with_extension("tmp");
    let bytes = serde_json::to_vec(s).map_err(std::io::Error::other)?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, &path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

/// Every message left in the spool, as jobs (unreadable files are logged and kept). Blocking.
fn spool_load(dir: &Path) -> Vec<Job> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut jobs = Vec::new();
    for path in entries.flatten().map(|e| e.path()) {
        if path.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let parsed = std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Spooled>(&b).map_err(|e| e.to_string()))
            .and_then(|s| {
                let from = match &s.from {
                    Some(f) => Some(f.parse::<Address>().map_err(|e| e.to_string())?),
                    None => None,
                };
                let rcpt = s
                    .rcpt
                    .iter()
                    .map(|r| r.parse::<Address>().map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()?;
                let envelope = Envelope::new(from, rcpt).map_err(|e| e.to_string())?;
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(&s.raw)
                    .map_err(|e| e.to_string())?;
                Ok(Job {
                    message_id: s.message_id,
                    to: s.to,
                    envelope,
                    raw: Arc::new(raw),
                    first: None,
                    spooled: Some(path.clone()),
                })
            });
        match parsed {
            Ok(job) => jobs.push(job),
            Err(e) => {
                warn!(file = %path.display(), error = %e, "unreadable mail spool file; left in place")
            }
        }
    }
    jobs
}

#[derive(Debug)]
enum Attempt {
    Sent,
    Transient(String),
    Permanent(String),
}

/// The mail queue and its sender task.
pub struct Mailer {
    tx: mpsc::Sender<Job>,
    from: Mailbox,
    link_base: Option<String>,
    /// Where queued messages wait on disk (none: in memory only).
    spool: Option<PathBuf>,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer").field("from", &self.from).finish()
    }
}

impl Mailer {
    /// Builds the transport and starts the queue (needs a tokio runtime). With `spool`, queued
    /// messages are kept there until done, and those left by a previous run are sent again.
    pub fn start(cfg: &MailConfig, spool: Option<PathBuf>) -> Result<Mailer, String> {
        let url = cfg.smtp_url.as_deref().ok_or("mail.smtp_url is not set")?;
        let target = SmtpTarget::parse(url)?;
        let from = check_address(&cfg.from)?;
        let mut tls = TlsParameters::builder(target.host.clone());
        if let Some(path) = &cfg.ca_file {
            let pem =
                std::fs::read(path).map_err(|e| format!("mail.ca_file {}: {e}", path.display()))?;
            let cert = Certificate::from_pem(&pem)
                .map_err(|e| format!("mail.ca_file {}: {e}", path.display()))?;
            tls = tls.add_root_certificate(cert);
        }
        let tls = tls.build_rustls().map_err(|e| format!("TLS: {e}"))?;
        let mode = if target.implicit_tls {
            Tls::Wrapper(tls)
        } else {
            match cfg.starttls {
                StartTls::Opportunistic => Tls::Opportunistic(tls),
                StartTls::Required => Tls::Required(tls),
                StartTls::Never => Tls::None,
            }
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(target.host.clone())
                .port(target.port)
                .tls(mode)
                .timeout(Some(Duration::from_millis(cfg.timeout_ms)));
        if let Some(user) = &cfg.username {
            let password = match (&cfg.password, &cfg.password_env) {
                (Some(p), _) => p.expose().to_string(),
                (None, Some(var)) => std::env::var(var)
                    .map_err(|_| format!("mail.password_env: ${var} is not set"))?,
                (None, None) => String::new(),
            };
            builder = builder.credentials(Credentials::new(user.clone(), password));
        }
        let transport = builder.build();
        let (tx, rx) = mpsc::channel(cfg.queue_size);
        tokio::spawn(run_queue(transport, rx, cfg.max_attempts));
        info!(host = %target.host, port = target.port, starttls = ?cfg.starttls, "mail queue ready");
        if let Some(dir) = spool.clone() {
            let tx = tx.clone();
            tokio::spawn(async move {
                let d = dir.clone();
                let jobs = tokio::task::spawn_blocking(move || spool_load(&d))
                    .await
                    .unwrap_or_default();
                if !jobs.is_empty() {
                    info!(messages = jobs.len(), dir = %dir.display(), "mail left in the spool queued again");
                }
                for job in jobs {
                    if tx.send(job).await.is_err() {
                        return;
                    }
                }
            });
        }
        Ok(Mailer {
            tx,
            from,
            link_base: cfg.recording_link_base.clone(),
            spool,
        })
    }

    /// Builds the message of a step (placeholders already filled by the flow).
    pub fn build(
        &self,
        req: &MailRequest,
        ctx: &RequestContext,
        message_id: &str,
    ) -> Result<Message, StepError> {
        let bad = |m: String| StepError::new("smtp", m);
        if req.to.is_empty() {
            return Err(bad("no recipient (`to` is empty)".into()));
        }
        if req.to.len() + req.cc.len() > MAX_RECIPIENTS {
            return Err(bad(format!("more than {MAX_RECIPIENTS} recipients")));
        }
        let mut b = Message::builder()
            .from(self.from.clone())
            .subject(one_line(&req.subject))
            .message_id(Some(message_id.to_string()))
            .user_agent(concat!("voxgate/", env!("CARGO_PKG_VERSION")).to_string());
        for a in &req.to {
            b = b.to(check_address(a).map_err(bad)?);
        }
        for a in &req.cc {
            b = b.cc(check_address(a).map_err(bad)?);
        }
        let message = if req.report {
            let (text, transcript_json) = self.report_body(&req.body, ctx);
            b.multipart(
                MultiPart::mixed()
                    .singlepart(SinglePart::plain(text))
                    .singlepart(Attachment::new("transcript.json".to_string()).body(
                        transcript_json,
                        ContentType::parse("application/json").unwrap_or(ContentType::TEXT_PLAIN),
                    )),
            )
        } else {
            b.header(ContentType::TEXT_PLAIN).body(req.body.clone())
        };
        message.map_err(|e| bad(format!("cannot build the message: {e}")))
    }

    /// The report: the step's body, the transcript as lines, the recordings; and the
    /// transcript as JSON for the attachment.
    fn report_body(&self, body: &str, ctx: &RequestContext) -> (String, String) {
        let mut text = String::new();
        text.push_str(body);
        text.push_str("\n\n");
        text.push_str(&format!(
            "Call {}\nFrom: {}\nTo: {}\n\n",
            ctx.call_id, ctx.from, ctx.to
        ));
        text.push_str("Transcript\n----------\n");
        match &ctx.transcript {
            Some(t) if !t.entries().is_empty() => {
                text.push_str(&t.render_text());
                let digits = t.digits();
                if !digits.is_empty() {
                    text.push_str(&format!("\nKeys pressed: {digits}\n"));
                }
            }
            _ => text.push_str("(nothing yet)\n"),
        }
        text.push_str("\nRecordings\n----------\n");
        if ctx.recording_ids.is_empty() {
            text.push_str("(none)\n");
        }
        for id in &ctx.recording_ids {
            match &self.link_base {
                Some(base) => text.push_str(&format!(
                    "{id}: {}/v1/recordings/{id}/audio\n",
                    base.trim_end_matches('/')
                )),
                None => text.push_str(&format!("{id} (GET /v1/recordings/{id}/audio)\n")),
            }
        }
        let mut json = ctx
            .transcript
            .as_ref()
            .map(|t| t.to_json())
            .unwrap_or_else(|| json!({"call_id": ctx.call_id, "entries": []}));
        json["recording_ids"] = json!(ctx.recording_ids);
        (
            text,
            serde_json::to_string_pretty(&json).unwrap_or_default(),
        )
    }

    /// A step: queue the message, wait at most `budget` for the first attempt.
    pub async fn send_step(
        &self,
        req: MailRequest,
        ctx: &RequestContext,
        budget: Duration,
    ) -> Result<Value, StepError> {
        let message_id = format!(
            "<{:016x}.{}@voxgate>",
            rand::random::<u64>(),
            chrono::Utc::now().timestamp()
        );
        let message = self.build(&req, ctx, &message_id)?;
        let envelope = message.envelope().clone();
        let raw = Arc::new(message.formatted());
        let to = req.to.join(", ");
        let spooled = match &self.spool {
            None => None,
            Some(dir) => {
                let record = Spooled {
                    message_id: message_id.clone(),
                    to: to.clone(),
                    from: envelope.from().map(|a| a.to_string()),
                    rcpt: envelope.to().iter().map(|a| a.to_string()).collect(),
                    raw: base64::engine::general_purpose::STANDARD.encode(raw.as_slice()),
                };
                let dir = dir.clone();
                match tokio::task::spawn_blocking(move || spool_write(&dir, &record)).await {
                    Ok(Ok(path)) => Some(path),
                    Ok(Err(e)) => {
                        warn!(message_id = %message_id, error = %e, "mail not spooled (kept in memory only)");
                        None
                    }
                    Err(e) => {
                        warn!(message_id = %message_id, error = %e, "mail not spooled (kept in memory only)");
                        None
                    }
                }
            }
        };
        let (first_tx, first_rx) = oneshot::channel();
        let job = Job {
            message_id: message_id.clone(),
            to,
            envelope,
            raw,
            first: Some(first_tx),
            spooled: spooled.clone(),
        };
        if self.tx.try_send(job).is_err() {
            if let Some(path) = spooled {
                let _ = tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
            }
            return Err(StepError::new("smtp", "the mail queue is full"));
        }
        match tokio::time::timeout(budget, first_rx).await {
            Ok(Ok(Attempt::Sent)) => {
                Ok(json!({"queued": true, "sent": true, "message_id": message_id}))
            }
            Ok(Ok(Attempt::Permanent(e))) => Err(StepError::new("smtp", e)),
            Ok(Ok(Attempt::Transient(e))) => {
                Ok(json!({"queued": true, "sent": false, "message_id": message_id, "retrying": e}))
            }
            Ok(Err(_)) => Err(StepError::new("smtp", "the mail queue stopped")),
            Err(_) => Ok(json!({"queued": true, "sent": false, "message_id": message_id})),
        }
    }
}

/// Header text on one line: line breaks become single spaces.
fn one_line(s: &str) -> String {
    s.split(['\r', '\n'])
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn classify(e: &lettre::transport::smtp::Error) -> Attempt {
    let text = e.to_string();
    if e.is_permanent() {
        Attempt::Permanent(format!("the SMTP server refused the message: {text}"))
    } else {
        Attempt::Transient(text)
    }
}

async fn run_queue(
    transport: AsyncSmtpTransport<Tokio1Executor>,
    mut rx: mpsc::Receiver<Job>,
    max_attempts: u32,
) {
    let transport = Arc::new(transport);
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    while let Some(mut job) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let transport = transport.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut attempt = 1;
            loop {
                tokio::time::sleep(super::webhook::backoff(attempt).saturating_mul(4)).await;
                let outcome = match transport.send_raw(&job.envelope, &job.raw).await {
                    Ok(_) => Attempt::Sent,
                    Err(e) => classify(&e),
                };
                let done = match &outcome {
                    Attempt::Sent => {
                        metrics::counter!("voxgate_mail_total", "outcome" => "sent").increment(1);
                        info!(message_id = %job.message_id, to = %job.to, attempt, "mail sent");
                        true
                    }
                    Attempt::Permanent(e) => {
                        metrics::counter!("voxgate_mail_total", "outcome" => "refused")
                            .increment(1);
                        warn!(message_id = %job.message_id, to = %job.to, error = %e, "mail refused");
                        true
                    }
                    Attempt::Transient(e) if attempt >= max_attempts => {
                        metrics::counter!("voxgate_mail_total", "outcome" => "given_up")
                            .increment(1);
                        warn!(message_id = %job.message_id, to = %job.to, attempts = attempt, error = %e, "mail given up");
                        true
                    }
                    Attempt::Transient(e) => {
                        warn!(message_id = %job.message_id, attempt, error = %e, "mail attempt failed; will retry");
                        false
                    }
                };
                if let Some(first) = job.first.take() {
                    first.send(outcome).ok();
                }
                if done {
                    if let Some(path) = job.spooled.take() {
                        let _ =
                            tokio::task::spawn_blocking(move || std::fs::remove_file(path)).await;
                    }
                    return;
                }
                attempt += 1;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrations::Transcript;
    use std::time::Instant;

    #[test]
    fn smtp_urls() {
        assert_eq!(
            SmtpTarget::parse("smtp://127.0.0.1:2525").unwrap(),
            SmtpTarget {
                host: "127.0.0.1".into(),
                port: 2525,
                implicit_tls: false
            }
        );
        assert_eq!(
            SmtpTarget::parse("smtps://mail.example.com").unwrap().port,
            465
        );
        assert_eq!(SmtpTarget::parse("smtp://[::1]:25").unwrap().host, "::1");
        for bad in ["http://x", "smtp://", "smtp://u:p@host:25", "nonsense"] {
            assert!(SmtpTarget::parse(bad).is_err(), "{bad}");
        }
        assert!(check_address("Ops <ops@example.com>").is_ok());
        assert!(check_address("not an address").is_err());
    }

    fn mailer() -> Mailer {
        let (tx, _rx) = mpsc::channel(1);
        Mailer {
            tx,
            from: check_address("voxgate@example.com").unwrap(),
            link_base: Some("https://gw.example.com/".into()),
            spool: None,
        }
    }

    #[test]
    fn report_carries_transcript_keys_and_recording_links() {
        let start = Instant::now();
        let mut t = Transcript::new("call-1", start, chrono::Utc::now());
        t.say(start, "Press 1 for sales");
        t.dtmf(start + Duration::from_millis(900), '1');
        t.dtmf(start + Duration::from_millis(1200), '#');
        let ctx = RequestContext {
            call_id: "call-1".into(),
            from: "+3225550001".into(),
            to: "+3225559999".into(),
            transcript: Some(t),
            recording_ids: vec!["rec_1".into()],
            websocket_delivered: false,
        };
        let req = MailRequest {
            to: vec!["ops@example.com".into()],
            cc: vec!["boss@example.com".into()],
            subject: "Report call-1\r\nBcc: evil@example.com".into(),
            body: "Transcript below".into(),
            report: true,
        };
        let m = mailer().build(&req, &ctx, "<x@voxgate>").unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(
            raw.contains("Subject: Report call-1 Bcc: evil@example.com"),
            "{raw}"
        );
        assert!(!raw.contains("\r\nBcc:"), "no header injection");
        assert!(raw.contains("Bot said: Press 1 for sales"), "{raw}");
        assert!(raw.contains("Keys pressed: 1#"), "{raw}");
        assert!(
            raw.contains("https://gw.example.com/v1/recordings/rec_1/audio"),
            "{raw}"
        );
        assert!(raw.contains("transcript.json"), "{raw}");
        let plain = MailRequest {
            report: false,
            ..req.clone()
        };
        let m = mailer().build(&plain, &ctx, "<y@voxgate>").unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(!raw.contains("Keys pressed"));
        let bad = MailRequest {
            to: vec!["nope".into()],
            ..plain.clone()
        };
        assert_eq!(
            mailer().build(&bad, &ctx, "<z@voxgate>").unwrap_err().code,
            "smtp"
        );
        let none = MailRequest {
            to: vec![],
            ..plain
        };
        assert!(mailer().build(&none, &ctx, "<z@voxgate>").is_err());
    }
}
