//! Trunk registration (RFC 3261 §10): for each `[[trunks]]` entry voxgate REGISTERs its
//! Contact with the registrar, answers the digest challenge, refreshes the binding before it
//! expires, backs off when the registrar refuses or does not answer, and removes the binding
//! (`Expires: 0`) on shutdown.
//!
//! The policy (when to refresh, how long to back off, what the operator sees) is the IO-free
//! [`Binding`]; the thin shell ([`Trunks`]) runs one tokio task per trunk around rsipstack's
//! `Registration`, which builds the REGISTER and answers 401/407 challenges.

use super::server::SipServer;
use crate::config::TrunkConfig;
use chrono::{DateTime, SecondsFormat, Utc};
use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::registration::{backoff_interval, refresh_interval, Registration};
use rsipstack::sip::{Header, Response, StatusCodeKind, Uri};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

/// How long a de-registration may take at shutdown.
pub const UNREGISTER_TIMEOUT: Duration = Duration::from_secs(5);

/// What one REGISTER transaction came back with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 2xx: the registrar keeps the binding for `granted` seconds.
    Registered { granted: u32 },
    /// A final non-2xx. `min_expires` comes from a 423's Min-Expires header.
    Rejected {
        status: u16,
        reason: String,
        min_expires: Option<u32>,
    },
    /// No answer, or the request could not be sent.
    Failed(String),
}

/// Where a trunk's registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingState {
    /// Not tried yet.
    Idle,
    Registered,
    /// The last attempt failed; retrying after a back-off.
    Failed,
    /// Removed at shutdown.
    Unregistered,
}

impl BindingState {
    fn as_str(self) -> &'static str {
        match self {
            BindingState::Idle => "idle",
            BindingState::Registered => "registered",
            BindingState::Failed => "failed",
            BindingState::Unregistered => "unregistered",
        }
    }
}

/// The IO-free registration policy of one trunk: feed it each REGISTER's [`Outcome`] and the
/// wall clock, get back how long to wait before the next REGISTER.
#[derive(Debug, Clone)]
pub struct Binding {
    /// The `expires` we ask for (raised by a 423 Interval Too Brief).
    requested: u32,
    state: BindingState,
    /// When the registrar drops the binding unless refreshed.
    expires_at: Option<DateTime<Utc>>,
    last_registered_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    /// Consecutive failed attempts.
    failures: u32,
    next_attempt_at: Option<DateTime<Utc>>,
    /// Some REGISTER was answered 2xx at some point (so shutdown must remove it).
    ever_bound: bool,
}

impl Binding {
    pub fn new(expires: u32) -> Self {
        Binding {
            requested: expires,
            state: BindingState::Idle,
            expires_at: None,
            last_registered_at: None,
            last_error: None,
            failures: 0,
            next_attempt_at: None,
            ever_bound: false,
        }
    }

    /// The `Expires` value for the next REGISTER.
    pub fn requested_expires(&self) -> u32 {
        self.requested
    }

    pub fn state(&self) -> BindingState {
        self.state
    }

    /// True while the registrar holds a binding we know of.
    pub fn registered(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t > now) && self.state != BindingState::Unregistered
    }

    pub fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether a de-registration is due at shutdown.
    pub fn needs_unregister(&self, now: DateTime<Utc>) -> bool {
        self.ever_bound && self.registered(now)
    }

    /// Records one attempt's outcome; returns the wait before the next REGISTER.
    pub fn outcome(&mut self, outcome: Outcome, now: DateTime<Utc>) -> Duration {
        let wait = match outcome {
            Outcome::Registered { granted } => {
                self.failures = 0;
                self.state = BindingState::Registered;
                self.last_error = None;
                self.ever_bound = true;
                self.last_registered_at = Some(now);
                // A registrar that grants 0 (or nothing sensible) gets our own value back.
                let granted = if granted == 0 {
                    self.requested
                } else {
                    granted
                };
                self.expires_at = Some(now + chrono::Duration::seconds(i64::from(granted)));
                refresh_interval(granted)
            }
            Outcome::Rejected {
                status: 423,
                min_expires: Some(min),
                reason,
            } if min > self.requested && min <= 86_400 => {
                // Interval Too Brief: ask again at once with the registrar's minimum.
                self.requested = min;
                self.last_error = Some(format!("423 {reason} (retrying with expires={min})"));
                Duration::ZERO
            }
            Outcome::Rejected { status, reason, .. } => {
                let hint = match status {
                    401 | 407 => ": credentials rejected",
                    403 => ": check username and password",
                    _ => "",
                };
                self.fail(format!("{status} {reason}{hint}"))
            }
            Outcome::Failed(reason) => self.fail(reason),
        };
        self.next_attempt_at =
            Some(now + chrono::Duration::from_std(wait).unwrap_or(chrono::Duration::zero()));
        wait
    }

    fn fail(&mut self, reason: String) -> Duration {
        self.state = BindingState::Failed;
        self.last_error = Some(reason);
        let wait = backoff_interval(self.failures);
        self.failures = self.failures.saturating_add(1);
        wait
    }

    /// The binding was removed (or given up) at shutdown.
    pub fn unregistered(&mut self, error: Option<String>) {
        self.state = BindingState::Unregistered;
        self.expires_at = None;
        self.next_attempt_at = None;
        if let Some(e) = error {
            self.last_error = Some(e);
        }
    }

    /// The `GET /v1/trunks` view (without the trunk's static settings).
    pub fn status(&self, now: DateTime<Utc>) -> Value {
        let ts =
            |t: &Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true));
        json!({
            "state": self.state.as_str(),
            "registered": self.registered(now),
            "expires_at": ts(&self.expires_at),
            "last_registered_at": ts(&self.last_registered_at),
            "last_error": self.last_error,
            "failures": self.failures,
            "next_attempt_at": ts(&self.next_attempt_at),
            "expires": self.requested,
        })
    }
}

/// One trunk's settings, resolved (password read from the environment when configured so).
#[derive(Clone)]
struct TrunkSpec {
    name: String,
    /// Request-URI of the REGISTER (with `;transport=tcp` when TCP).
    registrar: String,
    username: String,
    auth_username: Option<String>,
    password: String,
    transport: String,
    challenge_inbound: bool,
}

struct Entry {
    spec: TrunkSpec,
    binding: Mutex<Binding>,
}

impl Entry {
    fn binding(&self) -> std::sync::MutexGuard<'_, Binding> {
        self.binding.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Errors starting the registrations.
#[derive(Debug, thiserror::Error)]
pub enum TrunkError {
    #[error("trunk `{name}`: {reason}")]
    Invalid { name: String, reason: String },
}

/// Every configured trunk: status for the API, one registration task each.
pub struct Trunks {
    entries: Vec<Arc<Entry>>,
    token: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Trunks {
    /// Resolves the settings; nothing is sent until [`Trunks::start`].
    pub fn new(configs: &[TrunkConfig]) -> Result<Arc<Trunks>, TrunkError> {
        let mut entries = Vec::new();
        for c in configs {
            let invalid = |reason: String| TrunkError::Invalid {
                name: c.name.clone(),
                reason,
            };
            let password = c.resolve_password().map_err(invalid)?;
            let transport = c.transport_name();
            let mut registrar = c.registrar.clone();
            if transport == "tcp" && !registrar.to_ascii_lowercase().contains(";transport=") {
                registrar.push_str(";transport=tcp");
            }
            Uri::try_from(registrar.as_str())
                .map_err(|e| invalid(format!("registrar `{registrar}`: {e}")))?;
            entries.push(Arc::new(Entry {
                spec: TrunkSpec {
                    name: c.name.clone(),
                    registrar,
                    username: c.username.clone(),
                    auth_username: c.auth_username.clone(),
                    password,
                    transport,
                    challenge_inbound: c.challenge_inbound,
                },
                binding: Mutex::new(Binding::new(c.expires)),
            }));
        }
        Ok(Arc::new(Trunks {
            entries,
            token: CancellationToken::new(),
            tasks: Mutex::new(Vec::new()),
        }))
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Starts one registration task per trunk on the running SIP stack.
    pub fn start(self: &Arc<Self>, sip: &SipServer) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|p| p.into_inner());
        for entry in &self.entries {
            let transport_param = if entry.spec.transport == "tcp" {
                ";transport=tcp"
            } else {
                ""
            };
            let contact = format!(
                "sip:{}@{}{}",
                entry.spec.username,
                sip.contact_host(),
                transport_param
            );
            let span = info_span!("trunk", trunk = %entry.spec.name);
            tasks.push(tokio::spawn(
                run(entry.clone(), sip.endpoint(), contact, self.token.clone()).instrument(span),
            ));
        }
    }

    /// One JSON object per trunk (`GET /v1/trunks`).
    pub fn status(&self) -> Vec<Value> {
        let now = Utc::now();
        self.entries
            .iter()
            .map(|e| {
                let mut v = e.binding().status(now);
                if let Some(o) = v.as_object_mut() {
                    o.insert("name".into(), json!(e.spec.name));
                    o.insert("registrar".into(), json!(e.spec.registrar));
                    o.insert("username".into(), json!(e.spec.username));
                    o.insert("transport".into(), json!(e.spec.transport));
                    o.insert("challenge_inbound".into(), json!(e.spec.challenge_inbound));
                }
                v
            })
            .collect()
    }

    /// Stops refreshing and removes every binding (each bounded by [`UNREGISTER_TIMEOUT`]).
    pub async fn shutdown(&self) {
        self.token.cancel();
        let tasks: Vec<_> = self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .collect();
        for t in tasks {
            if tokio::time::timeout(UNREGISTER_TIMEOUT + Duration::from_secs(1), t)
                .await
                .is_err()
            {
                warn!("a trunk registration task did not stop in time");
            }
        }
    }
}

impl crate::api::TrunksView for Trunks {
    fn trunks(&self) -> Vec<Value> {
        self.status()
    }
}

fn header(resp: &Response, name: &str) -> Option<String> {
    resp.headers.iter().find_map(|h: &Header| {
        let text = h.to_string();
        let (n, v) = text.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn classify(result: Result<Response, rsipstack::Error>, granted: Option<u32>) -> Outcome {
    match result {
        Ok(resp) if resp.status_code.kind() == StatusCodeKind::Successful => Outcome::Registered {
            granted: granted.unwrap_or(0),
        },
        Ok(resp) => Outcome::Rejected {
            status: resp.status_code.code(),
            reason: resp.status_code.text().to_string(),
            min_expires: header(&resp, "min-expires").and_then(|v| v.parse().ok()),
        },
        Err(e) => Outcome::Failed(format!("no usable answer from the registrar: {e}")),
    }
}

fn set_metric(name: &str, registered: bool) {
    metrics::gauge!("voxgate_trunk_registered", "trunk" => name.to_string()).set(if registered {
        1.0
    } else {
        0.0
    });
}

async fn run(
    entry: Arc<Entry>,
    endpoint: super::server::EndpointRef,
    contact: String,
    token: CancellationToken,
) {
    let spec = &entry.spec;
    let credential = Credential {
        username: spec.username.clone(),
        password: spec.password.clone(),
        realm: None,
        auth_username: spec.auth_username.clone(),
    };
    let (server, contact) = match (
        Uri::try_from(spec.registrar.as_str()),
        Uri::try_from(contact.as_str()),
    ) {
        (Ok(s), Ok(c)) => (s, c),
        (Err(e), _) | (_, Err(e)) => {
            warn!(error = %e, "trunk URIs do not parse; not registering");
            entry
                .binding()
                .outcome(Outcome::Failed(format!("bad URI: {e}")), Utc::now());
            return;
        }
    };
    let mut reg = Registration::new(endpoint, Some(credential));
    reg.contact = Some(server_contact(contact));
    set_metric(&spec.name, false);
    info!(registrar = %spec.registrar, username = %spec.username, transport = %spec.transport, "trunk registration starting");
    loop {
        let expires = entry.binding().requested_expires();
        let result = tokio::select! {
            r = reg.register(server.clone(), Some(expires)) => r,
            _ = token.cancelled() => break,
        };
        let outcome = classify(result, reg.granted_expires);
        let label = match &outcome {
            Outcome::Registered { .. } => "ok",
            Outcome::Rejected { .. } => "rejected",
            Outcome::Failed(_) => "error",
        };
        metrics::counter!("voxgate_trunk_registrations_total", "trunk" => spec.name.clone(), "outcome" => label)
            .increment(1);
        let (wait, registered, error) = {
            let mut b = entry.binding();
            let wait = b.outcome(outcome.clone(), Utc::now());
            (
                wait,
                b.registered(Utc::now()),
                b.last_error().map(str::to_string),
            )
        };
        set_metric(&spec.name, registered);
        match &outcome {
            Outcome::Registered { granted } => {
                info!(
                    granted_s = granted,
                    refresh_in_ms = wait.as_millis() as u64,
                    "trunk registered"
                )
            }
            _ => warn!(
                error = error.as_deref().unwrap_or(""),
                retry_in_ms = wait.as_millis() as u64,
                "trunk registration failed"
            ),
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = token.cancelled() => break,
        }
    }
    // Shutdown: remove the binding so the trunk stops sending us calls.
    let due = entry.binding().needs_unregister(Utc::now());
    if !due {
        entry.binding().unregistered(None);
        set_metric(&spec.name, false);
        return;
    }
    let error = match tokio::time::timeout(UNREGISTER_TIMEOUT, reg.register(server, Some(0))).await
    {
        Ok(Ok(resp)) if resp.status_code.kind() == StatusCodeKind::Successful => {
            info!("trunk de-registered");
            None
        }
        Ok(Ok(resp)) => Some(format!("de-registration refused: {}", resp.status_code)),
        Ok(Err(e)) => Some(format!("de-registration failed: {e}")),
        Err(_) => Some("de-registration timed out".to_string()),
    };
    if let Some(e) = &error {
        warn!(error = %e, "trunk de-registration did not complete");
    }
    entry.binding().unregistered(error);
    set_metric(&spec.name, false);
}

fn server_contact(uri: Uri) -> rsipstack::sip::typed::Contact {
    rsipstack::sip::typed::Contact::from(uri)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t0() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn success_refreshes_before_expiry_and_reports_registered() {
        let mut b = Binding::new(60);
        assert_eq!(b.state(), BindingState::Idle);
        assert!(!b.registered(t0()));
        let wait = b.outcome(Outcome::Registered { granted: 60 }, t0());
        assert_eq!(wait, Duration::from_secs(45));
        assert!(b.registered(t0() + chrono::Duration::seconds(59)));
        assert!(!b.registered(t0() + chrono::Duration::seconds(60)));
        let s = b.status(t0());
        assert_eq!(s["state"], "registered");
        assert_eq!(s["expires_at"], "2026-01-01T12:01:00.000Z");
        assert_eq!(s["last_error"], Value::Null);
        // The registrar may grant less than asked: refresh follows what was granted.
        assert_eq!(
            b.outcome(Outcome::Registered { granted: 6 }, t0()),
            Duration::from_millis(4000)
        );
    }

    #[test]
    fn failures_back_off_exponentially_and_keep_the_reason() {
        let mut b = Binding::new(60);
        let rejected = Outcome::Rejected {
            status: 403,
            reason: "Forbidden".into(),
            min_expires: None,
        };
        let waits: Vec<u64> = (0..8)
            .map(|_| b.outcome(rejected.clone(), t0()).as_secs())
            .collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.state(), BindingState::Failed);
        assert!(!b.registered(t0()));
        assert_eq!(b.failures(), 8);
        assert!(b.last_error().unwrap().starts_with("403 Forbidden"));
        // Success resets the back-off.
        b.outcome(Outcome::Registered { granted: 60 }, t0());
        assert_eq!(b.failures(), 0);
        assert_eq!(
            b.outcome(Outcome::Failed("timeout".into()), t0()),
            Duration::from_secs(1)
        );
        // A failed refresh keeps the old binding until it runs out.
        assert!(b.registered(t0() + chrono::Duration::seconds(30)));
        assert_eq!(b.status(t0())["last_error"], "timeout");
    }

    #[test]
    fn interval_too_brief_retries_at_once_with_min_expires() {
        let mut b = Binding::new(30);
        let wait = b.outcome(
            Outcome::Rejected {
                status: 423,
                reason: "Interval Too Brief".into(),
                min_expires: Some(120),
            },
            t0(),
        );
        assert_eq!(wait, Duration::ZERO);
        assert_eq!(b.requested_expires(), 120);
        // A 423 that asks for nothing larger is an ordinary failure.
        let wait = b.outcome(
            Outcome::Rejected {
                status: 423,
                reason: "Interval Too Brief".into(),
                min_expires: Some(60),
            },
            t0(),
        );
        assert_eq!(wait, Duration::from_secs(1));
    }

    #[test]
    fn unregister_only_when_bound() {
        let mut b = Binding::new(60);
        assert!(!b.needs_unregister(t0()));
        b.outcome(Outcome::Failed("x".into()), t0());
        assert!(!b.needs_unregister(t0()));
        b.outcome(Outcome::Registered { granted: 60 }, t0());
        assert!(b.needs_unregister(t0()));
        b.unregistered(None);
        assert_eq!(b.state(), BindingState::Unregistered);
        assert!(!b.registered(t0()));
        assert_eq!(b.status(t0())["state"], "unregistered");
    }

    #[test]
    fn classify_maps_responses() {
        let resp: Response = "SIP/2.0 423 Interval Too Brief\r\nVia: SIP/2.0/UDP 1.2.3.4;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:a@b>\r\nCall-ID: x\r\nCSeq: 1 REGISTER\r\nMin-Expires: 300\r\nContent-Length: 0\r\n\r\n"
            .try_into()
            .unwrap();
        assert_eq!(
            classify(Ok(resp), None),
            Outcome::Rejected {
                status: 423,
                reason: "Interval Too Brief".into(),
                min_expires: Some(300)
            }
        );
    }

    #[test]
    fn trunks_resolve_settings_and_report_idle() {
        let (c, _) = crate::config::Config::from_toml(
            "[[trunks]]\nname = \"t\"\nregistrar = \"sip:127.0.0.1:5090\"\nusername = \"vg\"\npassword = \"pw\"\ntransport = \"tcp\"\n",
            "t.toml",
        )
        .unwrap();
        let trunks = Trunks::new(&c.trunks).unwrap();
        let s = trunks.status();
        assert_eq!(s.len(), 1);
        assert_eq!(s[0]["name"], "t");
        assert_eq!(s[0]["registrar"], "sip:127.0.0.1:5090;transport=tcp");
        assert_eq!(s[0]["registered"], false);
        assert_eq!(s[0]["state"], "idle");
        assert!(!s[0].to_string().contains("pw"));
    }
}
