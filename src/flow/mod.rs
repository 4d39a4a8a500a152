//! The flow interface: what a call tells its bot (events) and what the bot asks of the call
//! (actions). The embedded engine and the WebSocket bridge both speak it, so the call code
//! does not care which one drives it.

use std::collections::BTreeMap;

/// Facts about the call that the bot sees when its session starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SessionInfo {
    pub call_id: String,
    /// The caller, as a user part or full URI (From).
    pub from: String,
    /// The dialled number or URI (To / Request-URI user).
    pub to: String,
    /// Selected SIP headers of the INVITE (lower-case names).
    pub headers: BTreeMap<String, String>,
    /// Negotiated codec name ("PCMU" / "PCMA").
    pub codec: String,
}

/// What happened on the call. Fed to the flow engine in order.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowEvent {
    /// The call was answered and media is flowing. Always the first event.
    Started(SessionInfo),
    /// A DTMF digit arrived (RFC 4733 or SIP INFO); `digit` is one of 0-9 * # A-D.
    Dtmf {
        digit: char,
        duration_ms: u32,
    },
    /// The `Play`/`Say` with this id finished playing, or was cut short (`interrupted`).
    PlaybackFinished {
        id: u64,
        interrupted: bool,
    },
    /// A `Play`/`Say` with this id could not be played (missing file, TTS failure, ...).
    PlaybackFailed {
        id: u64,
        reason: String,
    },
    RecordingStarted {
        id: String,
    },
    RecordingStopped {
        id: String,
    },
    RecordingFailed {
        id: Option<String>,
        reason: String,
    },
    RecordingReady {
        id: String,
        duration_ms: u64,
        sha256: String,
    },
    /// A forward is under way: a provisional status (REFER NOTIFY sipfrag or INVITE 1xx).
    TransferProgress {
        status: u16,
    },
    /// The forward succeeded; the call has left the bot. No further events follow but `Ended`.
    TransferCompleted {
        to: String,
        mode: String,
    },
    /// The forward failed; the call is back with the bot. `reason` is a short code
    /// (invalid_number, denied, refer_rejected, busy, no_answer, timeout, trunk_error,
    /// not_available, ...) and `detail` readable words.
    TransferFailed {
        reason: String,
        detail: String,
    },
    /// An operator or external bot paused / resumed the bot (input is ignored while paused).
    Paused,
    Resumed,
    /// The call ended for a reason other than the flow's own `Close`/`Hangup`
    /// (caller BYE, RTP timeout, shutdown). The engine must not emit actions afterwards.
    Ended {
        reason: String,
    },
    /// The answer to `FlowAction::Request { id }`.
    RequestDone {
        id: u64,
        result: Result<serde_json::Value, StepFailure>,
    },
    /// A `Listen` heard the caller start to speak (barge-in point).
    SpeechStarted {
        id: u64,
    },
    /// The answer to `FlowAction::Listen { id }`.
    Speech {
        id: u64,
        outcome: SpeechOutcome,
    },
}

/// What the bot asks the call to do. Actions are carried out in the order they are emitted.
#[derive(Debug, Clone, PartialEq)]
pub enum FlowAction {
    /// Play a WAV prompt (path relative to the flow file's prompt dir, or absolute).
    Play {
        id: u64,
        file: String,
    },
    /// Speak text through TTS.
    Say {
        id: u64,
        text: String,
    },
    /// Stop whatever is playing (barge-in). Reported as `PlaybackFinished{interrupted:true}`.
    StopPlayback,
    StartRecording,
    StopRecording,
    /// Forward the call. `to` is the raw number from the flow; the call side validates it.
    Transfer {
        to: String,
    },
    /// Send DTMF digits to the caller (RFC 4733).
    SendDtmf {
        digits: String,
    },
    /// Store a tracked event with properties (JSON object).
    TrackEvent {
        name: String,
        properties: serde_json::Value,
    },
    /// End the conversation: the engine has already erased the session variables (when
    /// `cleared_session`); the call finalizes recordings, writes the CDR and sends BYE.
    Close {
        cleared_session: bool,
    },
    /// Bot audio (8 kHz PCM) to queue for the caller, paced by the RTP session. External bot only.
    PlayAudio {
        samples: Vec<i16>,
    },
    /// A marker behind the queued audio; reported as `PlaybackFinished{id}` once the audio
    /// before it has played (or `interrupted` when cleared). External bot only.
    QueueMark {
        id: u64,
    },
    /// The pre-answer decision of an external bot: answer, send 180, or refuse the INVITE.
    Answer,
    Ring,
    Reject {
        status: u16,
    },
    /// An integration step's IO (`api`, `code`, `json_builder`, `send_mail`, `mail_report`,
    /// `table`, `knowledge_base`). The call side runs it off the call task, gives up after
    /// `timeout`, and answers with exactly one [`FlowEvent::RequestDone`] carrying this `id`.
    Request {
        id: u64,
        request: StepRequest,
        timeout: std::time::Duration,
    },
    /// The flow no longer waits for this request (its own timeout, barge-in, close): the
    /// call side may abort it; a late result is dropped.
    CancelRequest {
        id: u64,
    },
    /// `offload`: hand the caller to a human agent through the forward machinery (same policy
    /// checks). `to` is an E.164 number or a `sip:` URI (checked against
    /// `transfer.allow_uris`). `headers` go on the REFER / INVITE (`X-...`, `User-to-User`).
    /// `context` (variables chosen by the flow) is POSTed with the transcript to
    /// `[offload] webhook_url` before the transfer. Answered by TransferCompleted/Failed.
    Offload {
        to: String,
        headers: Vec<(String, String)>,
        context: serde_json::Value,
    },
    /// `listen`: start recognising the caller's speech. Answered by exactly one
    /// [`FlowEvent::Speech`] with this `id` (and maybe `SpeechStarted` before it).
    Listen {
        id: u64,
        spec: ListenSpec,
    },
    /// Stop a `Listen` (a DTMF key won, the flow moved on). No `Speech` event follows.
    StopListening {
        id: u64,
    },
}

/// What an integration step asks the call side to do. Values are already evaluated by the
/// flow, except `{secrets.NAME}` placeholders, which the flow leaves in place and the
/// executor fills at send time (secrets never enter the flow's variables, step log or logs).
#[derive(Debug, Clone, PartialEq)]
pub enum StepRequest {
    /// `api`. Result: `{"status": 200, "headers": {"content-type": "..."}, "body": <JSON or text>}`.
    Http(HttpRequest),
    /// `code`. Result: what the script's `ChatlayerResponseBuilder.send()` produced:
    /// `{"session": {...}, "messages": ["..."], "nextDialogstate": "name" | null}`.
    Script(ScriptRequest),
    /// `json_builder`: dispatch `{"type":"CL_DISPATCH_EVENT","payload":...,"call_id":...}`.
    /// Result: `{"websocket": bool, "webhook": "queued" | "disabled"}`.
    Dispatch { payload: serde_json::Value },
    /// `send_mail` / `mail_report` (the call side adds the transcript for a report).
    /// Result: `{"queued": true, "message_id": "..."}` once accepted by the SMTP server or queued.
    Mail(MailRequest),
    /// `table`. Result: lookup `{"row": {...} | null, "count": n}`; insert `{"inserted": 1}`;
    /// update / delete `{"affected": n}`.
    Table(TableRequest),
    /// `knowledge_base`. Result: `{"answer": "...", "source": "doc.md", "score": 3.2}` or
    /// `{"answer": null, "source": null, "score": <best or 0>}` when nothing reaches `min_score`.
    KnowledgeBase(KbQuery),
}

#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    pub method: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    /// JSON body (objects/lists) or a text body (a JSON string is sent as text).
    pub body: Option<serde_json::Value>,
    pub auth: Option<HttpAuth>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HttpAuth {
    Basic { username: String, password: String },
    Bearer { token: String },
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScriptRequest {
    /// The JavaScript source (inline `source`, or the contents of `file` read at flow load).
    pub source: std::sync::Arc<str>,
    /// A copy of the session's variables, seen by the script as `args`.
    pub args: serde_json::Value,
    pub memory_kb: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MailRequest {
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub subject: String,
    pub body: String,
    /// `mail_report`: append the call's transcript and recording ids.
    pub report: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableOp {
    Lookup,
    Insert,
    Update,
    Delete,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TableRequest {
    pub op: TableOp,
    pub table: String,
    /// Column = value conditions, all of which must hold (parameterised, never spliced).
    pub filter: Vec<(String, serde_json::Value)>,
    /// Column values for insert / update.
    pub values: Vec<(String, serde_json::Value)>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct KbQuery {
    pub question: String,
    /// Restrict to one document (file name), if set.
    pub source: Option<String>,
    pub min_score: f64,
}

/// Why a `Request` failed: a short code (`timeout`, `refused`, `http`, `script`, `memory`,
/// `smtp`, `table`, `not_configured`, `cancelled`, ...) and readable words.
#[derive(Debug, Clone, PartialEq)]
pub struct StepFailure {
    pub code: String,
    pub message: String,
}

/// How a `listen` step listens.
#[derive(Debug, Clone, PartialEq)]
pub struct ListenSpec {
    pub mode: ListenMode,
    /// No speech at all within this: `SpeechOutcome::Timeout`.
    pub timeout: std::time::Duration,
    /// An utterance is cut (and recognised) after this long.
    pub max_speech: std::time::Duration,
    /// Speech stops the prompt that is playing.
    pub barge_in: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum ListenMode {
    /// Only these words or phrases can be recognised.
    Grammar(Vec<String>),
    /// Free speech, spotted for these keywords.
    Keywords(Vec<String>),
    /// Free speech.
    Free,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SpeechOutcome {
    /// Recognised text (lower case) with a confidence in 0..=1.
    Heard { text: String, confidence: f32 },
    /// Speech was heard but matched nothing (noise, an unknown word).
    NoMatch { text: String, confidence: f32 },
    /// No speech before `timeout`.
    Timeout,
    /// No recogniser free, none installed, engine error: the step fails over (keys, else
    /// `on_error` with `error.code = speech` and `error.detail_code` = the failure's code:
    /// `busy`, `not_configured`, `unavailable`, `grammar`, `unsupported`, `engine`).
    Error(StepFailure),
}

mod clock;
mod collect;
pub mod definition;
pub mod driver;
pub mod expr;
mod load;
pub mod machine;
mod session;
mod template;
mod value;
pub mod websocket;

pub use definition::{FlowDefinition, StepKind};
pub use expr::ExprError;
pub use load::FlowLoadError;
pub use machine::{CloseReason, FlowEnd, FlowMachine, FlowSummary, StepOutcome, StepRecord};
pub use session::Scope;
