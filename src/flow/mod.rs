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
pub mod websocket;

pub use definition::{FlowDefinition, StepKind};
pub use expr::ExprError;
pub use load::FlowLoadError;
pub use machine::{CloseReason, FlowEnd, FlowMachine, FlowSummary, StepOutcome, StepRecord};
pub use session::Scope;
