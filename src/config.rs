//! Gateway configuration (TOML). Keys follow CONTRACT §2; everything else is documented in
//! docs/config.md. The config is validated once at start-up and every error names the file,
//! the key and the reason, so an operator can fix it without reading code.

use serde::Deserialize;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

/// Where the gateway looks when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "sip-config/gateway.toml";

/// A configuration error: which file, which key, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid {
        file: String,
        key: String,
        reason: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sip: SipConfig,
    pub rtp: RtpConfig,
    pub http: HttpConfig,
    pub recordings: RecordingsConfig,
    pub flow: FlowConfig,
    pub transfer: TransferConfig,
    pub tts: TtsConfig,
    pub media: MediaConfig,
    pub speech: SpeechConfig,
    pub knowledge_base: KnowledgeBaseConfig,
    /// Outbound HTTP and scripts of the integration steps (`api`, `code`).
    pub integrations: IntegrationsConfig,
    /// Where `json_builder` events and `recording.ready` are POSTed.
    pub events: EventsConfig,
    /// SMTP for `send_mail` / `mail_report`.
    pub mail: MailConfig,
    /// The `table` step's embedded SQLite tables.
    pub tables: TablesConfig,
    /// The `offload` step (hand-over to a human agent).
    pub offload: OffloadConfig,
    /// Seconds that calls in progress get to finish after SIGTERM/SIGINT.
    pub shutdown_grace_s: u64,
    /// Where CDRs (one JSON line per call) and tracked events are appended.
    pub data_dir: PathBuf,
    /// SIP registrations voxgate keeps with trunk providers / PBXs (`[[trunks]]`, docs/sip.md).
    pub trunks: Vec<TrunkConfig>,
    /// This node's name, written into every record (CONTRACT §10).
    pub node: NodeConfig,
    /// Where records go: the embedded files (default) or a shared PostgreSQL (CONTRACT §10).
    pub store: StoreConfig,
}

/// One `[[trunks]]` entry: voxgate REGISTERs with `registrar` as `username` and keeps the
/// binding fresh (CONTRACT §9).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    pub name: String,
    /// `sip:host[:port]`; `;transport=tcp` or the `transport` key picks TCP.
    pub registrar: String,
    pub username: String,
    /// Digest user when it differs from `username` (the AOR user).
    #[serde(default)]
    pub auth_username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    /// Name of an environment variable holding the password (keeps it out of the file).
    #[serde(default)]
    pub password_env: Option<String>,
    /// Requested binding lifetime in seconds.
    #[serde(default = "default_trunk_expires")]
    pub expires: u32,
    /// "udp" (default) or "tcp".
    #[serde(default)]
    pub transport: Option<String>,
    /// Challenge INVITEs for this trunk (Request-URI user = `username`, or sent from the
    /// registrar's IP) with digest auth against the same credentials.
    #[serde(default)]
    pub challenge_inbound: bool,
}

fn default_trunk_expires() -> u32 {
    600
}

impl std::fmt::Debug for TrunkConfig {
    // Never prints the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrunkConfig")
            .field("name", &self.name)
            .field("registrar", &self.registrar)
            .field("username", &self.username)
            .field("auth_username", &self.auth_username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("expires", &self.expires)
            .field("transport", &self.transport)
            .field("challenge_inbound", &self.challenge_inbound)
            .finish()
    }
}

impl TrunkConfig {
    /// The password, from the file or the environment.
    pub fn resolve_password(&self) -> Result<String, String> {
        match (&self.password, &self.password_env) {
            (Some(p), None) => Ok(p.clone()),
            (None, Some(var)) => match std::env::var(var) {
                Ok(p) if !p.is_empty() => Ok(p),
                _ => Err(format!("environment variable `{var}` is not set")),
            },
            (Some(_), Some(_)) => Err("set `password` or `password_env`, not both".into()),
            (None, None) => Err("`password` or `password_env` is required".into()),
        }
    }

    /// "udp" or "tcp": the `transport` key, else the registrar's `;transport=` parameter.
    pub fn transport_name(&self) -> String {
        if let Some(t) = &self.transport {
            return t.to_ascii_lowercase();
        }
        let lower = self.registrar.to_ascii_lowercase();
        if lower.contains(";transport=tcp") {
            "tcp".into()
        } else {
            "udp".into()
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Letters, digits, '.', '_' and '-'; the host name when unset.
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user:pass@host:port/db`; unset keeps the embedded files in `data_dir`.
    pub url: Option<String>,
    /// Read the URL from this environment variable instead (keeps the password out of the file).
    pub url_env: Option<String>,
    /// Records waiting for the database are spooled to `data_dir/spool`, up to this size.
    pub spool_max_mb: u64,
    /// Give up a connection attempt or a query after this long (the record stays spooled).
    pub timeout_ms: u64,
    /// PEM file with the CA that signed the server's certificate (`sslmode=require|verify-full`);
    /// the public web roots are used when unset.
    pub ca_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP and TCP listen address.
    pub listen: String,
    /// Address advertised in SDP and Contact when the gateway is behind NAT.
    pub external_ip: Option<String>,
    /// INVITEs beyond this many concurrent calls get 503 with Retry-After.
    pub max_calls: usize,
    /// RFC 3261 T1 in milliseconds (retransmission base).
    pub t1_ms: u64,
    /// Server / User-Agent header. No version by default (less fingerprinting).
    pub user_agent: String,
    /// CIDRs whose INVITEs are accepted (CONTRACT §8); others get 403. Unset: everyone (with a
    /// start-up warning).
    pub trusted: Option<Vec<String>>,
    /// New INVITEs per second one source address may send (sustained rate; 0: no limit).
    pub invite_rate_per_source: f64,
    /// Burst of INVITEs a source may send above the sustained rate.
    pub invite_burst_per_source: u32,
    /// Answered calls not yet confirmed by an ACK, per source and in total. Over it: 503.
    pub max_unconfirmed_per_source: usize,
    pub max_unconfirmed: usize,
    /// User-Agent substrings of known scanners; their INVITEs/OPTIONS get no answer at all.
    pub scanner_user_agents: Vec<String>,
    /// TCP: seconds a peer has to complete a message's headers once it started one.
    pub tcp_header_timeout_s: u64,
    /// TCP: seconds without a complete message before the connection is closed.
    pub tcp_idle_timeout_s: u64,
    /// TCP connections accepted from one source address / in total.
    pub tcp_max_connections_per_source: usize,
    pub tcp_max_connections: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RtpConfig {
    /// Inclusive port range "lo-hi" for media sockets.
    pub ports: String,
    /// With no RTP for this long (held calls included) the call is ended.
    pub inactivity_timeout_s: u64,
    /// Jitter/reorder buffer depth.
    pub jitter_ms: u64,
    /// Preferred codecs, in order ("PCMU", "PCMA").
    pub codecs: Vec<String>,
}

/// The media plane (`[media]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Media worker threads (each serves many calls on one 20 ms tick); 0 = one per core.
    /// Never more than the cores.
    pub workers: usize,
    /// Ask for real-time scheduling (SCHED_FIFO, lowest priority; else nice -10) for the
    /// media workers, so a busy machine delays their ticks less. Needs CAP_SYS_NICE.
    pub realtime: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
    pub token: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordingsConfig {
    pub dir: PathBuf,
    /// "stereo" (caller left, bot/far leg right) or "mixed" (mono).
    pub channels: String,
    pub retention_days: Option<u64>,
    /// Shared storage every node can read: `file:///mnt/recordings` (a directory all nodes
    /// mount) or `s3://bucket/prefix` (S3-compatible). Finished recordings are copied there
    /// and checked by SHA-256. Unset: recordings stay on the node that made them.
    pub shared_url: Option<String>,
    /// S3 endpoint for S3-compatible stores (MinIO, Ceph, ...); AWS when unset.
    pub s3_endpoint: Option<String>,
    pub s3_region: Option<String>,
    /// Allow a plain-http endpoint (a local test store).
    pub s3_allow_http: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlowConfig {
    pub file: PathBuf,
    pub websocket_url: Option<String>,
    /// The bot's dialect: "native" (docs/websocket-protocol.md) or "twilio" (Media Streams).
    pub protocol: crate::flow::websocket::Dialect,
    /// Sent as `Authorization: Bearer <token>` on the upgrade.
    pub websocket_token: Option<String>,
    /// Signs the upgrade: `X-Voxgate-Signature` = hex HMAC-SHA256 of "<timestamp>.<call_id>".
    pub websocket_hmac_secret: Option<String>,
    pub websocket_connect_timeout_ms: u64,
    /// How long a connected bot may take to answer/ring/reject before the failure policy.
    pub websocket_answer_timeout_ms: u64,
    /// "prompt" | "forward" | "reconnect" when the bot cannot be reached at INVITE time.
    pub websocket_on_connect_failure: crate::flow::websocket::FailurePolicy,
    /// "prompt" | "forward" | "reconnect" when the bot's socket drops mid-call.
    pub websocket_on_drop: crate::flow::websocket::FailurePolicy,
    /// The prompt played before closing when the bot is gone (flow prompt dir or absolute).
    pub websocket_fallback_prompt: Option<String>,
    /// Where the `forward` policy sends the caller (E.164, subject to transfer.allow).
    pub websocket_fallback_number: Option<String>,
    pub websocket_reconnect_attempts: u32,
    /// Events kept for `resume {last_seq}` after a reconnect.
    pub websocket_replay_buffer: usize,
    /// The largest message from the bot that is used (larger: `too_large` error; over twice
    /// this the socket is closed with 1009).
    pub websocket_max_message_bytes: usize,
    /// Twilio mode: signs the upgrade with `X-Twilio-Signature` as Twilio does. A secret.
    pub twilio_auth_token: Option<String>,
    /// Twilio mode: the `accountSid` in `start`/`stop` (AC + 32 hex).
    pub twilio_account_sid: Option<String>,
    /// Twilio mode: static `customParameters`, like `<Parameter name value>`.
    pub twilio_parameters: std::collections::BTreeMap<String, String>,
    /// Twilio mode: INVITE headers copied into `customParameters` (under the name given).
    pub twilio_parameter_headers: Vec<String>,
}

impl FlowConfig {
    /// The WebSocket message limit and the Twilio keys; (key, reason) on error.
    fn check_websocket_limits(&self) -> Result<(), (&'static str, String)> {
        use crate::flow::websocket::{protocol, twilio};
        let range = protocol::MAX_MESSAGE_BYTES_RANGE;
        if !range.contains(&self.websocket_max_message_bytes) {
            return Err((
                "flow.websocket_max_message_bytes",
                format!(
                    "{} is not between {} and {}",
                    self.websocket_max_message_bytes,
                    range.start(),
                    range.end()
                ),
            ));
        }
        if let Some(sid) = &self.twilio_account_sid {
            if !twilio::is_sid("AC", sid) {
                return Err((
                    "flow.twilio_account_sid",
                    format!("`{sid}` is not AC followed by 32 lower-case hex digits"),
                ));
            }
        }
        if self.twilio_auth_token.as_deref() == Some("") {
            return Err(("flow.twilio_auth_token", "must not be empty".into()));
        }
        for (name, value) in &self.twilio_parameters {
            if name.chars().count() + value.chars().count() > twilio::MAX_PARAMETER_CHARS {
                return Err((
                    "flow.twilio_parameters",
                    format!(
                        "`{name}`: name and value together exceed Twilio's {} characters",
                        twilio::MAX_PARAMETER_CHARS
                    ),
                ));
            }
            if name.is_empty() || twilio::BUILTIN_PARAMETERS.contains(&name.as_str()) {
                return Err((
                    "flow.twilio_parameters",
                    format!(
                        "`{name}` is empty or one voxgate sets itself ({})",
                        twilio::BUILTIN_PARAMETERS.join(", ")
                    ),
                ));
            }
        }
        for h in &self.twilio_parameter_headers {
            let valid = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.!%*+`'~".contains(&b));
            if !valid || twilio::BUILTIN_PARAMETERS.contains(&h.as_str()) {
                return Err((
                    "flow.twilio_parameter_headers",
                    format!("`{h}` is not a SIP header name voxgate can copy"),
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferMode {
    Refer,
    Bridge,
    Auto,
}

impl TransferMode {
    pub fn as_str(self) -> &'static str {
        match self {
            TransferMode::Refer => "refer",
            TransferMode::Bridge => "bridge",
            TransferMode::Auto => "auto",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransferConfig {
    pub mode: TransferMode,
    /// Where bridged legs go: INVITE sip:+E164@<trunk host:port>.
    pub trunk: String,
    /// E.164 prefixes a forward may reach. Empty refuses everything.
    pub allow: Vec<String>,
    /// Prefixes refused even when allowed (premium-rate ranges).
    pub deny: Vec<String>,
    /// Also refuse the built-in premium-rate / shared-cost / satellite ranges
    /// ([`crate::phone::DEFAULT_DENY`]), even where `allow` covers the country.
    pub deny_defaults: bool,
    /// Accept numbers written without '+' (country code first) and normalise them.
    pub legacy_no_plus: bool,
    /// Caller id for bridged legs; the original caller when unset.
    pub caller_id: Option<String>,
    /// How long to wait for the final NOTIFY after a REFER.
    pub refer_timeout_s: u64,
    /// How long a bridged leg may ring before it is cancelled.
    pub ring_timeout_s: u64,
    /// Digest credentials for the trunk (401/407 challenges).
    pub username: Option<String>,
    pub password: Option<String>,
    /// Hosts a `sip:` URI target (`offload`) may have: names or IP addresses. Empty refuses
    /// every SIP URI target (E.164 targets follow `allow` / `deny`).
    pub allow_uris: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TtsConfig {
    /// espeak-ng voice.
    pub voice: String,
    /// Played (with a logged warning) when espeak-ng is not installed.
    pub fallback_wav: Option<PathBuf>,
    pub binary: String,
}

/// Speech recognition for `listen` steps (docs/speech.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeechConfig {
    /// "pocketsphinx" (in-process, offline), "vosk" (a Vosk-protocol server over WebSocket)
    /// or "off" (listen steps fail over at once).
    pub engine: String,
    /// Recognisers (threads); a listen beyond this many at once fails over at once.
    pub pool_size: usize,
    /// PocketSphinx model directory (Debian's pocketsphinx-en-us layout). When unset, the
    /// Debian path is used if it exists, else speech is off with a warning.
    pub model_dir: Option<PathBuf>,
    /// Load the n-gram model so `listen` without grammar or keywords works (~70 MB each).
    pub free_speech: bool,
    /// Below this confidence (0..1) a hypothesis is a no-match.
    pub min_confidence: f32,
    /// Silence that ends an utterance.
    pub end_silence_ms: u64,
    /// A frame is speech when this many dB above the noise floor.
    pub vad_threshold_db: f32,
    /// 20 ms frames queued between the media path and a recogniser (dropped when full).
    pub frame_queue: usize,
    /// engine = "vosk": the server, e.g. "ws://127.0.0.1:2700".
    pub server_url: Option<String>,
    /// engine = "vosk": connect / answer timeout.
    pub server_timeout_ms: u64,
}

impl Default for SpeechConfig {
    fn default() -> Self {
        SpeechConfig {
            engine: "pocketsphinx".into(),
            pool_size: 2,
            model_dir: None,
            free_speech: false,
            min_confidence: 0.5,
            end_silence_ms: 700,
            vad_threshold_db: 10.0,
            frame_queue: 50,
            server_url: None,
            server_timeout_ms: 3000,
        }
    }
}

/// Documents for the `knowledge_base` step (docs/speech.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeBaseConfig {
    /// A folder of Markdown / text documents, indexed at start-up and on SIGHUP.
    pub dir: PathBuf,
}

impl Default for KnowledgeBaseConfig {
    fn default() -> Self {
        KnowledgeBaseConfig {
            dir: PathBuf::from("sip-config/kb"),
        }
    }
}

impl SpeechConfig {
    fn validate(&self, bad: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        match self.engine.as_str() {
            "off" | "vosk" | "pocketsphinx" => {}
            other => {
                return Err(bad(
                    "speech.engine",
                    format!("`{other}` is not one of \"pocketsphinx\", \"vosk\", \"off\""),
                ))
            }
        }
        if !(1..=64).contains(&self.pool_size) {
            return Err(bad("speech.pool_size", "must be between 1 and 64".into()));
        }
        if !(0.0..=1.0).contains(&self.min_confidence) {
            return Err(bad(
                "speech.min_confidence",
                "must be between 0 and 1".into(),
            ));
        }
        if !(100..=5000).contains(&self.end_silence_ms) {
            return Err(bad(
                "speech.end_silence_ms",
                "must be between 100 and 5000".into(),
            ));
        }
        if !(3.0..=40.0).contains(&self.vad_threshold_db) {
            return Err(bad(
                "speech.vad_threshold_db",
                "must be between 3 and 40".into(),
            ));
        }
        if !(5..=1000).contains(&self.frame_queue) {
            return Err(bad(
                "speech.frame_queue",
                "must be between 5 and 1000".into(),
            ));
        }
        if self.engine == "vosk" {
            match &self.server_url {
                Some(u) if u.starts_with("ws://") => {}
                Some(u) => {
                    return Err(bad(
                        "speech.server_url",
                        format!("`{u}` must start with ws://"),
                    ))
                }
                None => {
                    return Err(bad(
                        "speech.server_url",
                        "must be set when speech.engine is \"vosk\"".into(),
                    ))
                }
            }
        }
        if !(100..=60_000).contains(&self.server_timeout_ms) {
            return Err(bad(
                "speech.server_timeout_ms",
                "must be between 100 and 60000".into(),
            ));
        }
        Ok(())
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sip: SipConfig::default(),
            rtp: RtpConfig::default(),
            http: HttpConfig::default(),
            recordings: RecordingsConfig::default(),
            flow: FlowConfig::default(),
            transfer: TransferConfig::default(),
            tts: TtsConfig::default(),
            media: MediaConfig::default(),
            speech: SpeechConfig::default(),
            knowledge_base: KnowledgeBaseConfig::default(),
            integrations: IntegrationsConfig::default(),
            events: EventsConfig::default(),
            mail: MailConfig::default(),
            tables: TablesConfig::default(),
            offload: OffloadConfig::default(),
            shutdown_grace_s: 10,
            data_dir: PathBuf::from("data"),
            trunks: Vec::new(),
            node: NodeConfig::default(),
            store: StoreConfig::default(),
        }
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: default_node_name(),
        }
    }
}

/// The host name (Linux), or "voxgate".
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| valid_node_name(h))
        .unwrap_or_else(|| "voxgate".to_string())
}

fn valid_node_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            url_env: None,
            spool_max_mb: 1024,
            timeout_ms: 5000,
            ca_file: None,
        }
    }
}

impl StoreConfig {
    /// The database URL from `url` or `url_env`, if any.
    pub fn resolved_url(&self) -> Option<String> {
        match &self.url_env {
            Some(var) => std::env::var(var).ok().filter(|v| !v.trim().is_empty()),
            None => self.url.clone(),
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            listen: "127.0.0.1:5060".into(),
            external_ip: None,
            max_calls: 200,
            t1_ms: 500,
            user_agent: "voxgate".into(),
            trusted: None,
            invite_rate_per_source: 5.0,
            invite_burst_per_source: 20,
            max_unconfirmed_per_source: 4,
            max_unconfirmed: 20,
            scanner_user_agents: vec![
                "friendly-scanner".into(),
                "sipvicious".into(),
                "sipcli".into(),
                "sip-scan".into(),
                "sundayddr".into(),
                "VaxSIPUserAgent".into(),
                "iWar".into(),
                "SIVuS".into(),
                "pplsip".into(),
            ],
            tcp_header_timeout_s: 5,
            tcp_idle_timeout_s: 300,
            tcp_max_connections_per_source: 16,
            tcp_max_connections: 512,
        }
    }
}

impl Default for RtpConfig {
    fn default() -> Self {
        RtpConfig {
            ports: "20000-29999".into(),
            inactivity_timeout_s: 60,
            jitter_ms: 60,
            codecs: vec!["PCMU".into(), "PCMA".into()],
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            token: "change-me".into(),
        }
    }
}

impl Default for RecordingsConfig {
    fn default() -> Self {
        RecordingsConfig {
            dir: PathBuf::from("recordings"),
            channels: "stereo".into(),
            retention_days: None,
            shared_url: None,
            s3_endpoint: None,
            s3_region: None,
            s3_allow_http: false,
        }
    }
}

impl Default for FlowConfig {
    fn default() -> Self {
        FlowConfig {
            file: PathBuf::from("sip-config/flows/demo.yaml"),
            websocket_url: None,
            protocol: Default::default(),
            websocket_token: None,
            websocket_hmac_secret: None,
            websocket_connect_timeout_ms: 3000,
            websocket_answer_timeout_ms: 5000,
            websocket_on_connect_failure: Default::default(),
            websocket_on_drop: Default::default(),
            websocket_fallback_prompt: None,
            websocket_fallback_number: None,
            websocket_reconnect_attempts: 3,
            websocket_replay_buffer: 512,
            websocket_max_message_bytes:
                crate::flow::websocket::protocol::DEFAULT_MAX_MESSAGE_BYTES,
            twilio_auth_token: None,
            twilio_account_sid: None,
            twilio_parameters: Default::default(),
            twilio_parameter_headers: Vec::new(),
        }
    }
}

impl Default for TransferConfig {
    fn default() -> Self {
        TransferConfig {
            mode: TransferMode::Auto,
            trunk: "sip:127.0.0.1:5080".into(),
            allow: vec!["+32".into(), "+31".into(), "+44".into(), "+1".into()],
            deny: Vec::new(),
            deny_defaults: true,
            legacy_no_plus: false,
            caller_id: None,
            refer_timeout_s: 15,
            ring_timeout_s: 30,
            username: None,
            password: None,
            allow_uris: Vec::new(),
        }
    }
}

impl Default for TtsConfig {
    fn default() -> Self {
        TtsConfig {
            voice: "en".into(),
            fallback_wav: Some(PathBuf::from("sip-config/prompts/tts_fallback.wav")),
            binary: "espeak-ng".into(),
        }
    }
}

/// A secret string from the config (password, HMAC key, API token): never printed by `Debug`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself; keep it out of logs and error messages.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IntegrationsConfig {
    /// Hosts the `api` step and a script's `fetch` may reach: names (`api.example.com`,
    /// `*.example.com`), IP addresses or CIDR ranges. Empty refuses every request.
    pub allow_hosts: Vec<String>,
    /// `{secrets.NAME}` values. A name missing here is read from `VOXGATE_SECRET_<NAME>`.
    pub secrets: std::collections::BTreeMap<String, Secret>,
    /// Largest response body an `api` step (or `fetch`) reads, in KiB.
    pub max_response_kb: u64,
    /// Most redirects followed (each target is checked against `allow_hosts`).
    pub max_redirects: usize,
    /// Threads running `code` steps (scripts never run on the async workers).
    pub script_threads: usize,
    /// Ceiling for a step's `memory_kb`.
    pub script_max_memory_kb: u32,
    /// Whether scripts get `fetch` (through `allow_hosts`).
    pub script_fetch: bool,
}

impl Default for IntegrationsConfig {
    fn default() -> Self {
        IntegrationsConfig {
            allow_hosts: Vec::new(),
            secrets: Default::default(),
            max_response_kb: 1024,
            max_redirects: 5,
            script_threads: 2,
            script_max_memory_kb: 65_536,
            script_fetch: true,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// `json_builder` events (`CL_DISPATCH_EVENT`) and `recording.ready` are POSTed here.
    pub webhook_url: Option<String>,
    /// Signs each POST: `X-Voxgate-Signature: sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
    pub secret: Option<Secret>,
    /// Deliveries tried before an event is given up (logged).
    pub max_attempts: u32,
    /// Timeout of one delivery attempt.
    pub timeout_ms: u64,
    /// Events waiting for delivery; beyond this new events are dropped with a warning.
    pub queue_size: usize,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            webhook_url: None,
            secret: None,
            max_attempts: 6,
            timeout_ms: 5000,
            queue_size: 1000,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StartTls {
    /// STARTTLS when the server offers it.
    Opportunistic,
    /// STARTTLS or fail.
    Required,
    /// Plain text only.
    Never,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MailConfig {
    /// `smtp://host:port` (STARTTLS per `starttls`) or `smtps://host:port` (TLS from the start).
    pub smtp_url: Option<String>,
    /// The From address.
    pub from: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Environment variable holding the password (instead of `password`).
    pub password_env: Option<String>,
    pub starttls: StartTls,
    /// Attempts per message before it is given up (logged).
    pub max_attempts: u32,
    /// Timeout of one SMTP conversation.
    pub timeout_ms: u64,
    /// Messages waiting to be sent; beyond this a step fails at once.
    pub queue_size: usize,
    /// Base URL written before `/v1/recordings/{id}/audio` in mail reports.
    pub recording_link_base: Option<String>,
    /// Extra CA certificate (PEM) trusted for the SMTP server's TLS (a private relay).
    pub ca_file: Option<PathBuf>,
}

impl Default for MailConfig {
    fn default() -> Self {
        MailConfig {
            smtp_url: None,
            from: "voxgate@localhost".into(),
            username: None,
            password: None,
            password_env: None,
            starttls: StartTls::Opportunistic,
            max_attempts: 5,
            timeout_ms: 10_000,
            queue_size: 1000,
            recording_link_base: None,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TablesConfig {
    /// `<name>.csv` files here seed table `<name>` (header row = columns) at start-up.
    pub dir: PathBuf,
    /// Replace a seeded table's rows from its CSV at every start-up (rows added by calls or
    /// the API are lost). Off: a CSV seeds its table once, when the table does not exist yet.
    pub reseed: bool,
}

impl Default for TablesConfig {
    fn default() -> Self {
        TablesConfig {
            dir: PathBuf::from("sip-config/tables"),
            reseed: false,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OffloadConfig {
    /// The transcript and chosen variables are POSTed here before an `offload` transfer.
    pub webhook_url: Option<String>,
    /// Signs the POST like `[events] secret`.
    pub secret: Option<Secret>,
    /// How long the transfer waits for the webhook (it goes ahead on failure).
    pub timeout_ms: u64,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        OffloadConfig {
            webhook_url: None,
            secret: None,
            timeout_ms: 2000,
        }
    }
}

/// The parts of the config that need parsing, checked once so the rest of the code can rely on them.
#[derive(Debug, Clone)]
pub struct Validated {
    pub sip_listen: SocketAddr,
    pub external_ip: Option<IpAddr>,
    pub rtp_ports: (u16, u16),
    pub http_listen: SocketAddr,
    pub trunk: TrunkTarget,
    pub codecs: Vec<crate::media::codec::Codec>,
    /// `sip.trusted` parsed; `None` when unset (every source accepted).
    pub trusted: Option<Vec<crate::sip::access::Cidr>>,
}

/// `transfer.trunk` split into host and port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkTarget {
    pub host: String,
    pub port: u16,
}

impl TrunkTarget {
    /// "host:port" as used in Request-URIs and Refer-To.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<(Config, Validated), ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Self::from_toml(&text, &file)
    }

    /// Parses and validates config text; `file` is used in error messages.
    pub fn from_toml(text: &str, file: &str) -> Result<(Config, Validated), ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.to_string(),
            message: e.to_string().trim().replace('\n', " "),
        })?;
        if config.transfer.deny_defaults {
            for p in crate::phone::DEFAULT_DENY {
                if !config.transfer.deny.iter().any(|d| d == p) {
                    config.transfer.deny.push((*p).to_string());
                }
            }
        }
        let validated = config.validate(file)?;
        Ok((config, validated))
    }

    fn validate(&self, file: &str) -> Result<Validated, ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let sip_listen: SocketAddr = self.sip.listen.parse().map_err(|_| {
            bad(
                "sip.listen",
                format!("`{}` is not an IP:port address", self.sip.listen),
            )
        })?;
        let external_ip = match &self.sip.external_ip {
            None => None,
            Some(s) => Some(
                s.parse::<IpAddr>()
                    .map_err(|_| bad("sip.external_ip", format!("`{s}` is not an IP address")))?,
            ),
        };
        if self.sip.max_calls == 0 {
            return Err(bad("sip.max_calls", "must be at least 1".into()));
        }
        if !(50..=10_000).contains(&self.sip.t1_ms) {
            return Err(bad("sip.t1_ms", "must be between 50 and 10000".into()));
        }
        let trusted = match &self.sip.trusted {
            None => None,
            Some(list) => Some(
                list.iter()
                    .map(|c| c.parse::<crate::sip::access::Cidr>())
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|r| bad("sip.trusted", r))?,
            ),
        };
        if !self.sip.invite_rate_per_source.is_finite() || self.sip.invite_rate_per_source < 0.0 {
            return Err(bad(
                "sip.invite_rate_per_source",
                "must be a number >= 0 (0 disables the limit)".into(),
            ));
        }
        for (key, v) in [
            ("sip.max_unconfirmed", self.sip.max_unconfirmed),
            (
                "sip.max_unconfirmed_per_source",
                self.sip.max_unconfirmed_per_source,
            ),
            ("sip.tcp_max_connections", self.sip.tcp_max_connections),
            (
                "sip.tcp_max_connections_per_source",
                self.sip.tcp_max_connections_per_source,
            ),
        ] {
            if v == 0 {
                return Err(bad(key, "must be at least 1".into()));
            }
        }
        if self.sip.tcp_header_timeout_s == 0 || self.sip.tcp_idle_timeout_s == 0 {
            return Err(bad(
                "sip.tcp_header_timeout_s / sip.tcp_idle_timeout_s",
                "must be at least 1".into(),
            ));
        }
        let rtp_ports = parse_port_range(&self.rtp.ports).map_err(|r| bad("rtp.ports", r))?;
        if self.rtp.inactivity_timeout_s == 0 {
            return Err(bad("rtp.inactivity_timeout_s", "must be at least 1".into()));
        }
        if !(20..=1000).contains(&self.rtp.jitter_ms) {
            return Err(bad("rtp.jitter_ms", "must be between 20 and 1000".into()));
        }
        let mut codecs = Vec::new();
        for name in &self.rtp.codecs {
            let c = crate::media::codec::Codec::from_rtpmap(name, 8000).ok_or_else(|| {
                bad(
                    "rtp.codecs",
                    format!("unknown codec `{name}` (supported: PCMU, PCMA)"),
                )
            })?;
            if !codecs.contains(&c) {
                codecs.push(c);
            }
        }
        if codecs.is_empty() {
            return Err(bad("rtp.codecs", "at least one codec is needed".into()));
        }
        let http_listen: SocketAddr = self.http.listen.parse().map_err(|_| {
            bad(
                "http.listen",
                format!("`{}` is not an IP:port address", self.http.listen),
            )
        })?;
        if self.http.token.trim().is_empty() {
            return Err(bad("http.token", "must not be empty".into()));
        }
        if self.recordings.dir.as_os_str().is_empty() {
            return Err(bad("recordings.dir", "must not be empty".into()));
        }
        if !matches!(self.recordings.channels.as_str(), "stereo" | "mixed") {
            return Err(bad(
                "recordings.channels",
                format!(
                    "`{}` is not one of \"stereo\", \"mixed\"",
                    self.recordings.channels
                ),
            ));
        }
        if let Some(url) = &self.flow.websocket_url {
            if !(url.starts_with("ws://") || url.starts_with("wss://")) {
                return Err(bad(
                    "flow.websocket_url",
                    format!("`{url}` must start with ws:// or wss://"),
                ));
            }
            let forward = crate::flow::websocket::FailurePolicy::Forward;
            if (self.flow.websocket_on_drop == forward
                || self.flow.websocket_on_connect_failure == forward)
                && self.flow.websocket_fallback_number.is_none()
            {
                return Err(bad(
                    "flow.websocket_fallback_number",
                    "must be set when a websocket failure policy is \"forward\"".into(),
                ));
            }
            self.flow
                .check_websocket_limits()
                .map_err(|(k, r)| bad(k, r))?;
        } else if self.flow.file.as_os_str().is_empty() {
            return Err(bad(
                "flow.file",
                "must be set when flow.websocket_url is not".into(),
            ));
        }
        self.speech.validate(&bad)?;
        let trunk = parse_trunk(&self.transfer.trunk).map_err(|r| bad("transfer.trunk", r))?;
        if !valid_node_name(&self.node.name) {
            return Err(bad(
                "node.name",
                format!(
                    "`{}` must be 1-64 letters, digits, '.', '_' or '-'",
                    self.node.name
                ),
            ));
        }
        if self.store.url.is_some() && self.store.url_env.is_some() {
            return Err(bad(
                "store.url_env",
                "set either store.url or store.url_env, not both".into(),
            ));
        }
        if let Some(var) = &self.store.url_env {
            if self.store.resolved_url().is_none() {
                return Err(bad(
                    "store.url_env",
                    format!("the environment variable `{var}` is not set"),
                ));
            }
        }
        if let Some(url) = self.store.resolved_url() {
            crate::store::postgres::check_url(&url).map_err(|r| {
                bad(
                    if self.store.url_env.is_some() {
                        "store.url_env"
                    } else {
                        "store.url"
                    },
                    r,
                )
            })?;
        }
        if self.store.spool_max_mb == 0 {
            return Err(bad("store.spool_max_mb", "must be at least 1".into()));
        }
        if !(100..=600_000).contains(&self.store.timeout_ms) {
            return Err(bad(
                "store.timeout_ms",
                "must be between 100 and 600000".into(),
            ));
        }
        if let Some(url) = &self.recordings.shared_url {
            crate::store::objects::check_url(url).map_err(|r| bad("recordings.shared_url", r))?;
        }
        for (key, list) in [
            ("transfer.allow", &self.transfer.allow),
            ("transfer.deny", &self.transfer.deny),
        ] {
            for p in list {
                let digits = p.strip_prefix('+').unwrap_or("");
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.bytes().all(|b| b.is_ascii_digit())
                {
                    return Err(bad(
                        key,
                        format!("`{p}` is not an E.164 prefix ('+' then 1-15 digits)"),
                    ));
                }
            }
        }
        if self.transfer.refer_timeout_s == 0 || self.transfer.ring_timeout_s == 0 {
            return Err(bad(
                "transfer.refer_timeout_s / transfer.ring_timeout_s",
                "must be at least 1".into(),
            ));
        }
        if self.transfer.username.is_some() != self.transfer.password.is_some() {
            return Err(bad(
                "transfer.password",
                "username and password must be set together".into(),
            ));
        }
        let mut trunk_names = std::collections::HashSet::new();
        for (i, t) in self.trunks.iter().enumerate() {
            let key = |k: &str| format!("trunks[{i}].{k}");
            if t.name.trim().is_empty() || !trunk_names.insert(t.name.clone()) {
                return Err(bad(
                    &key("name"),
                    format!("`{}` must be non-empty and unique", t.name),
                ));
            }
            parse_trunk(&t.registrar).map_err(|r| bad(&key("registrar"), r))?;
            if t.username.trim().is_empty()
                || t.username
                    .contains(|c: char| c.is_whitespace() || "@:;<>\"".contains(c))
            {
                return Err(bad(
                    &key("username"),
                    format!("`{}` is not a SIP user name", t.username),
                ));
            }
            t.resolve_password().map_err(|r| {
                bad(
                    &key(if t.password_env.is_some() {
                        "password_env"
                    } else {
                        "password"
                    }),
                    r,
                )
            })?;
            if !(2..=86_400).contains(&t.expires) {
                return Err(bad(&key("expires"), "must be between 2 and 86400".into()));
            }
            if !matches!(t.transport_name().as_str(), "udp" | "tcp") {
                return Err(bad(
                    &key("transport"),
                    format!("`{}` is not one of \"udp\", \"tcp\"", t.transport_name()),
                ));
            }
        }
        self.validate_integrations(file)?;
        Ok(Validated {
            sip_listen,
            external_ip,
            rtp_ports,
            http_listen,
            trunk,
            codecs,
            trusted,
        })
    }
}

impl Config {
    /// `[integrations]`, `[events]`, `[mail]`, `[tables]`, `[offload]` and `transfer.allow_uris`.
    fn validate_integrations(&self, file: &str) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| ConfigError::Invalid {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let i = &self.integrations;
        for entry in &i.allow_hosts {
            crate::integrations::hosts::HostRule::parse(entry)
                .map_err(|r| bad("integrations.allow_hosts", r))?;
        }
        for name in i.secrets.keys() {
            if !crate::integrations::secrets::valid_name(name) {
                return Err(bad(
                    "integrations.secrets",
                    format!("`{name}` is not a secret name (letters, digits, `_`)"),
                ));
            }
        }
        if i.max_response_kb == 0 {
            return Err(bad(
                "integrations.max_response_kb",
                "must be at least 1".into(),
            ));
        }
        if !(1..=64).contains(&i.script_threads) {
            return Err(bad(
                "integrations.script_threads",
                "must be between 1 and 64".into(),
            ));
        }
        if i.script_max_memory_kb < 1024 {
            return Err(bad(
                "integrations.script_max_memory_kb",
                "must be at least 1024".into(),
            ));
        }
        for (key, url) in [
            ("events.webhook_url", &self.events.webhook_url),
            ("offload.webhook_url", &self.offload.webhook_url),
        ] {
            if let Some(url) = url {
                check_http_url(url).map_err(|r| bad(key, r))?;
            }
        }
        if self.events.max_attempts == 0 {
            return Err(bad("events.max_attempts", "must be at least 1".into()));
        }
        if self.events.timeout_ms == 0 || self.offload.timeout_ms == 0 {
            return Err(bad(
                "events.timeout_ms / offload.timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if self.events.queue_size == 0 || self.mail.queue_size == 0 {
            return Err(bad(
                "events.queue_size / mail.queue_size",
                "must be at least 1".into(),
            ));
        }
        let m = &self.mail;
        if let Some(url) = &m.smtp_url {
            crate::integrations::mail::SmtpTarget::parse(url)
                .map_err(|r| bad("mail.smtp_url", r))?;
        }
        crate::integrations::mail::check_address(&m.from).map_err(|r| bad("mail.from", r))?;
        if m.password.is_some() && m.password_env.is_some() {
            return Err(bad(
                "mail.password_env",
                "set `password` or `password_env`, not both".into(),
            ));
        }
        if (m.password.is_some() || m.password_env.is_some()) && m.username.is_none() {
            return Err(bad(
                "mail.username",
                "must be set when a password is".into(),
            ));
        }
        if m.max_attempts == 0 || m.timeout_ms == 0 {
            return Err(bad(
                "mail.max_attempts / mail.timeout_ms",
                "must be at least 1".into(),
            ));
        }
        if let Some(base) = &m.recording_link_base {
            check_http_url(base).map_err(|r| bad("mail.recording_link_base", r))?;
        }
        if self.tables.dir.as_os_str().is_empty() {
            return Err(bad("tables.dir", "must not be empty".into()));
        }
        for host in &self.transfer.allow_uris {
            if host.is_empty() || host.contains(['@', ';', ' ', '/']) {
                return Err(bad(
                    "transfer.allow_uris",
                    format!("`{host}` is not a host name or IP address"),
                ));
            }
        }
        Ok(())
    }
}

/// An absolute `http://` or `https://` URL with a host.
fn check_http_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("`{url}` must start with http:// or https://"));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (lo, hi) = s
        .split_once('-')
        .ok_or_else(|| format!("`{s}` is not a range like \"20000-29999\""))?;
    let lo: u16 = lo
        .trim()
        .parse()
        .map_err(|_| format!("`{lo}` is not a port number"))?;
    let hi: u16 = hi
        .trim()
        .parse()
        .map_err(|_| format!("`{hi}` is not a port number"))?;
    if lo == 0 || lo > hi {
        return Err(format!("`{s}`: the low port must be 1..=high port"));
    }
    if hi - lo < 1 {
        return Err(format!(
            "`{s}`: the range needs at least 2 ports (RTP and RTCP)"
        ));
    }
    Ok((lo, hi))
}

/// The address of a `sip:` registrar URI when its host is a literal IP (for recognising
/// requests that come from the registrar).
pub fn parse_registrar_addr(s: &str) -> Option<SocketAddr> {
    let t = parse_trunk(s).ok()?;
    Some(SocketAddr::new(t.host.parse().ok()?, t.port))
}

fn parse_trunk(s: &str) -> Result<TrunkTarget, String> {
    let rest = s
        .strip_prefix("sip:")
        .ok_or_else(|| format!("`{s}` must be a sip: URI like \"sip:127.0.0.1:5080\""))?;
    let rest = rest.rsplit('@').next().unwrap_or(rest);
    let rest = rest.split(';').next().unwrap_or(rest);
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: unclosed IPv6 bracket"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| format!("`{s}`: bad port"))?,
            None => 5060,
        };
        (h.to_string(), port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("`{s}`: bad port `{p}`"))?,
            ),
            None => (rest.to_string(), 5060),
        }
    };
    if host.is_empty() {
        return Err(format!("`{s}` has no host"));
    }
    Ok(TrunkTarget { host, port })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        let (c, v) = Config::from_toml("", "t.toml").unwrap();
        assert_eq!(c.shutdown_grace_s, 10);
        assert_eq!(v.sip_listen, "127.0.0.1:5060".parse().unwrap());
        assert_eq!(v.rtp_ports, (20000, 29999));
        assert_eq!(v.trunk.host_port(), "127.0.0.1:5080");
    }

    #[test]
    fn contract_example_parses() {
        let text = r#"
[sip]
listen = "127.0.0.1:5070"
[rtp]
ports = "30000-30100"
[http]
listen = "127.0.0.1:8081"
token = "t0k"
[recordings]
dir = "/tmp/recs"
[flow]
file = "sip-config/flows/demo.yaml"
[transfer]
mode = "refer"
trunk = "sip:127.0.0.1:5090"
allow = ["+32"]
"#;
        let (c, v) = Config::from_toml(text, "g.toml").unwrap();
        assert_eq!(c.transfer.mode, TransferMode::Refer);
        assert_eq!(v.trunk.port, 5090);
        assert_eq!(v.rtp_ports, (30000, 30100));
    }

    #[test]
    fn errors_name_file_key_and_reason() {
        let cases = [
            ("[sip]\nlisten = \"nope\"", "sip.listen"),
            ("[rtp]\nports = \"9-1\"", "rtp.ports"),
            ("[rtp]\nports = \"abc\"", "rtp.ports"),
            ("[http]\ntoken = \"\"", "http.token"),
            ("[transfer]\ntrunk = \"127.0.0.1\"", "transfer.trunk"),
            ("[transfer]\nallow = [\"32\"]", "transfer.allow"),
            ("[recordings]\nchannels = \"quad\"", "recordings.channels"),
            ("[rtp]\ncodecs = [\"opus\"]", "rtp.codecs"),
            ("[flow]\nwebsocket_url = \"http://x\"", "flow.websocket_url"),
            (
                "[flow]\nwebsocket_url = \"ws://x\"\nwebsocket_max_message_bytes = 100",
                "flow.websocket_max_message_bytes",
            ),
            (
                "[flow]\nwebsocket_url = \"ws://x\"\ntwilio_account_sid = \"AC12\"",
                "flow.twilio_account_sid",
            ),
            (
                "[flow]\nwebsocket_url = \"ws://x\"\ntwilio_parameters = { from = \"x\" }",
                "flow.twilio_parameters",
            ),
            (
                "[flow]\nwebsocket_url = \"ws://x\"\ntwilio_parameter_headers = [\"a b\"]",
                "flow.twilio_parameter_headers",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(text, "bad.toml").unwrap_err().to_string();
            assert!(err.starts_with("bad.toml: key `"), "{err}");
            assert!(err.contains(key), "{text} -> {err}");
        }
    }

    #[test]
    fn trunks_parse_and_validate() {
        let text = r#"
[[trunks]]
name = "main"
registrar = "sip:127.0.0.1:5090"
username = "voxgate"
password = "secret"
expires = 60
"#;
        let (c, _) = Config::from_toml(text, "g.toml").unwrap();
        assert_eq!(c.trunks.len(), 1);
        assert_eq!(c.trunks[0].resolve_password().unwrap(), "secret");
        assert_eq!(c.trunks[0].transport_name(), "udp");
        assert!(!format!("{:?}", c.trunks[0]).contains("secret"));

        let base = "[[trunks]]\nname = \"a\"\nregistrar = \"sip:x:5090\"\nusername = \"u\"\n";
        let cases = [
            (base.to_string(), "trunks[0].password"),
            (format!("{base}password = \"p\"\nexpires = 1"), "trunks[0].expires"),
            (format!("{base}password = \"p\"\ntransport = \"sctp\""), "trunks[0].transport"),
            (
                format!("{base}password_env = \"VOXGATE_TEST_SURELY_UNSET_VAR\""),
                "trunks[0].password_env",
            ),
            (
                "[[trunks]]\nname = \"a\"\nregistrar = \"127.0.0.1\"\nusername = \"u\"\npassword = \"p\"".into(),
                "trunks[0].registrar",
            ),
            (
                format!("{base}password = \"p\"\n{base}password = \"p\""),
                "trunks[1].name",
            ),
        ];
        for (text, key) in cases {
            let err = Config::from_toml(&text, "bad.toml")
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text} -> {err}");
        }
        let tcp = format!("{base}password = \"p\"\nregistrar = \"sip:x;transport=TCP\"");
        let tcp = tcp.replace("registrar = \"sip:x:5090\"\n", "");
        let (c, _) = Config::from_toml(&tcp, "g.toml").unwrap();
        assert_eq!(c.trunks[0].transport_name(), "tcp");
    }

    #[test]
    fn unknown_keys_and_bad_types_are_syntax_errors_naming_the_key() {
        let err = Config::from_toml("[sip]\nlisten_addr = \"x\"", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("bad.toml") && err.contains("listen_addr"),
            "{err}"
        );
        let err = Config::from_toml("[transfer]\nmode = \"teleport\"", "bad.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("teleport"), "{err}");
    }
}
