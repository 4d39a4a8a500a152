//! A loaded, validated flow: dialogs of compiled steps with every reference already resolved,
//! so the machine never meets a dangling dialog name or an unparsable expression at call time.
//! Loading lives in `load.rs`; this file only holds the shapes and accessors.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::collect::CollectRules;
use super::expr::{Expr, VarPath};
use super::session::Scope;
use super::template::Template;
use super::value::ValueTpl;
use super::{ListenMode, TableOp};

/// Index of a dialog inside its [`FlowDefinition`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DialogId(pub(crate) usize);

/// An immutable flow, shared (`Arc`) by every call that runs it. Hot reload swaps the `Arc`.
#[derive(Debug)]
pub struct FlowDefinition {
    pub(crate) name: String,
    pub(crate) origin: PathBuf,
    pub(crate) start: DialogId,
    pub(crate) inactivity: Option<Duration>,
    pub(crate) answer_delay: Duration,
    pub(crate) variables: Map<String, Value>,
    pub(crate) prompts_dir: PathBuf,
    pub(crate) on_error: Option<DialogId>,
    /// What the caller hears before the conversation closes on an error nobody handles.
    pub(crate) error_prompt: Option<Content>,
    pub(crate) dialogs: Vec<Dialog>,
    pub(crate) by_name: HashMap<String, DialogId>,
    /// Load-time warnings (also logged): the flow runs, but an author should look.
    pub(crate) warnings: Vec<String>,
}

#[derive(Debug)]
pub(crate) struct Dialog {
    pub name: Arc<str>,
    pub steps: Vec<Step>,
}

/// What a `message` plays.
#[derive(Debug, Clone)]
pub(crate) enum Content {
    File(Template),
    Text(Template),
}

#[derive(Debug, Clone)]
pub(crate) enum Step {
    Message {
        content: Content,
        wait: bool,
        barge_in: bool,
    },
    Collect {
        rules: CollectRules,
        variable: Option<VarPath>,
        branches: BTreeMap<String, DialogId>,
        default: Option<DialogId>,
        on_timeout: Option<DialogId>,
    },
    Condition {
        expr: Expr,
        then: Option<DialogId>,
        otherwise: Option<DialogId>,
    },
    Goto(DialogId),
    GotoVariable {
        variable: VarPath,
        on_error: Option<DialogId>,
    },
    Set(Vec<(VarPath, ValueTpl)>),
    ClearSession(Clear),
    Delay(Duration),
    PauseBot {
        /// `max_ms`: the bot resumes by itself after this (None: only an operator resumes it).
        max: Option<Duration>,
        on_timeout: Option<DialogId>,
        hold: Option<Content>,
    },
    GetTime {
        variable: VarPath,
        /// `timezone` / `timezone_offset` / `offset_minutes`; None: `offset` equals `utc`.
        zone: Option<super::clock::Zone>,
    },
    TrackEvent {
        name: Template,
        properties: Vec<(String, ValueTpl)>,
    },
    StartRecording,
    StopRecording,
    Forward {
        to: ValueTpl,
        on_failure: Option<DialogId>,
    },
    Close(Scope),
    Hangup,
    /// `api`, `code`, `json_builder`, `send_mail`, `mail_report`, `table`, `knowledge_base`.
    Request(Box<RequestStep>),
    Offload(Box<OffloadStep>),
    Listen(Box<ListenStep>),
}

/// What `clear_session` erases.
#[derive(Debug, Clone)]
pub(crate) enum Clear {
    Scope(Scope),
    /// `{variables: [a, b.c]}`: just these.
    Paths(Vec<VarPath>),
}

/// Settings every waiting integration step shares.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    /// The flow gives up after this (and goes to the error path).
    pub timeout: Duration,
    /// The step's own error dialog (before the flow's `on_error`).
    pub on_error: Option<DialogId>,
    /// A prompt looped while the step waits.
    pub hold: Option<Content>,
}

/// An integration step run by the call side ([`crate::flow::FlowAction::Request`]).
#[derive(Debug, Clone)]
pub(crate) struct RequestStep {
    pub kind: StepKind,
    pub waiting: Waiting,
    pub save_as: Option<VarPath>,
    pub spec: RequestSpec,
}

#[derive(Debug, Clone)]
pub(crate) enum RequestSpec {
    Api {
        method: String,
        url: Template,
        headers: Vec<(String, ValueTpl)>,
        query: Vec<(String, ValueTpl)>,
        body: Option<ValueTpl>,
        auth: Option<AuthSpec>,
    },
    Code {
        source: Arc<str>,
        memory_kb: u32,
    },
    Dispatch {
        payload: ValueTpl,
    },
    Mail {
        to: Vec<ValueTpl>,
        cc: Vec<ValueTpl>,
        subject: Template,
        body: Template,
        report: bool,
    },
    Table {
        op: TableOp,
        table: String,
        filter: Vec<(String, ValueTpl)>,
        values: Vec<(String, ValueTpl)>,
    },
    KnowledgeBase {
        question: ValueTpl,
        source: Option<ValueTpl>,
        min_score: f64,
        on_no_answer: Option<DialogId>,
        /// Speak the answer (TTS) before going on.
        say: bool,
    },
}

#[derive(Debug, Clone)]
pub(crate) enum AuthSpec {
    Basic {
        username: Template,
        password: Template,
    },
    Bearer {
        token: Template,
    },
}

/// `offload`: hand the caller to a human agent.
#[derive(Debug, Clone)]
pub(crate) struct OffloadStep {
    pub to: ValueTpl,
    pub headers: Vec<(String, ValueTpl)>,
    /// Variables sent as context; `None`: every flow variable.
    pub context: Option<Vec<VarPath>>,
    pub on_failure: Option<DialogId>,
    pub waiting: Waiting,
}

/// `listen`: speech with a keypad fallback.
#[derive(Debug, Clone)]
pub(crate) struct ListenStep {
    pub mode: ListenMode,
    pub max_speech: Duration,
    pub barge_in: bool,
    pub save_as: Option<VarPath>,
    /// Spoken phrases (normalised) to dialogs, in file order.
    pub phrases: Vec<(String, DialogId)>,
    /// Keypad input to dialogs.
    pub keys: BTreeMap<String, DialogId>,
    /// Keypad rules (the first-key wait is the listen's `timeout_ms`).
    pub keypad: CollectRules,
    /// Where keypad input is stored, as `collect.variable`.
    pub variable: Option<VarPath>,
    pub default: Option<DialogId>,
    pub on_no_match: Option<DialogId>,
    pub on_timeout: Option<DialogId>,
    /// `timeout_ms` is the wait for speech or a key; `on_error`, `hold` as other steps.
    pub waiting: Waiting,
}

/// The step types, by the names flow files use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StepKind {
    Message,
    Collect,
    Condition,
    Goto,
    GotoVariable,
    Set,
    ClearSession,
    Delay,
    PauseBot,
    GetTime,
    TrackEvent,
    StartRecording,
    StopRecording,
    Forward,
    Close,
    Hangup,
    Api,
    Code,
    JsonBuilder,
    SendMail,
    MailReport,
    Table,
    Offload,
    Listen,
    KnowledgeBase,
}

impl StepKind {
    pub const ALL: [StepKind; 25] = [
        StepKind::Message,
        StepKind::Collect,
        StepKind::Condition,
        StepKind::Goto,
        StepKind::GotoVariable,
        StepKind::Set,
        StepKind::ClearSession,
        StepKind::Delay,
        StepKind::PauseBot,
        StepKind::GetTime,
        StepKind::TrackEvent,
        StepKind::StartRecording,
        StepKind::StopRecording,
        StepKind::Forward,
        StepKind::Close,
        StepKind::Hangup,
        StepKind::Api,
        StepKind::Code,
        StepKind::JsonBuilder,
        StepKind::SendMail,
        StepKind::MailReport,
        StepKind::Table,
        StepKind::Offload,
        StepKind::Listen,
        StepKind::KnowledgeBase,
    ];

    pub fn name(self) -> &'static str {
        match self {
            StepKind::Message => "message",
            StepKind::Collect => "collect",
            StepKind::Condition => "condition",
            StepKind::Goto => "goto",
            StepKind::GotoVariable => "goto_variable",
            StepKind::Set => "set",
            StepKind::ClearSession => "clear_session",
            StepKind::Delay => "delay",
            StepKind::PauseBot => "pause_bot",
            StepKind::GetTime => "get_time",
            StepKind::TrackEvent => "track_event",
            StepKind::StartRecording => "start_recording",
            StepKind::StopRecording => "stop_recording",
            StepKind::Forward => "forward",
            StepKind::Close => "close",
            StepKind::Hangup => "hangup",
            StepKind::Api => "api",
            StepKind::Code => "code",
            StepKind::JsonBuilder => "json_builder",
            StepKind::SendMail => "send_mail",
            StepKind::MailReport => "mail_report",
            StepKind::Table => "table",
            StepKind::Offload => "offload",
            StepKind::Listen => "listen",
            StepKind::KnowledgeBase => "knowledge_base",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl std::fmt::Display for StepKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Step {
    /// True if the step names its own error dialog (for the "no error path" warning).
    pub fn has_own_error_path(&self) -> bool {
        match self {
            Step::GotoVariable { on_error, .. } => on_error.is_some(),
            Step::Request(r) => r.waiting.on_error.is_some(),
            Step::Offload(o) => o.waiting.on_error.is_some() || o.on_failure.is_some(),
            Step::Listen(l) => l.waiting.on_error.is_some(),
            _ => false,
        }
    }

    pub fn kind(&self) -> StepKind {
        match self {
            Step::Message { .. } => StepKind::Message,
            Step::Collect { .. } => StepKind::Collect,
            Step::Condition { .. } => StepKind::Condition,
            Step::Goto(_) => StepKind::Goto,
            Step::GotoVariable { .. } => StepKind::GotoVariable,
            Step::Set(_) => StepKind::Set,
            Step::ClearSession(_) => StepKind::ClearSession,
            Step::Delay(_) => StepKind::Delay,
            Step::PauseBot { .. } => StepKind::PauseBot,
            Step::GetTime { .. } => StepKind::GetTime,
            Step::TrackEvent { .. } => StepKind::TrackEvent,
            Step::StartRecording => StepKind::StartRecording,
            Step::StopRecording => StepKind::StopRecording,
            Step::Forward { .. } => StepKind::Forward,
            Step::Close(_) => StepKind::Close,
            Step::Hangup => StepKind::Hangup,
            Step::Request(r) => r.kind,
            Step::Offload(_) => StepKind::Offload,
            Step::Listen(_) => StepKind::Listen,
        }
    }
}

impl FlowDefinition {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether any step of any dialog is of this kind (the gateway loads speech recognition
    /// only for flows that `listen`).
    pub fn uses(&self, kind: StepKind) -> bool {
        self.dialogs
            .iter()
            .any(|d| d.steps.iter().any(|s| s.kind() == kind))
    }

    /// The file the flow came from (as given to `load` / `from_str`).
    pub fn origin(&self) -> &Path {
        &self.origin
    }

    pub fn start_dialog(&self) -> &str {
        &self.dialog(self.start).name
    }

    /// `None` when `inactivity_s: 0` switched the inactivity close off.
    pub fn inactivity(&self) -> Option<Duration> {
        self.inactivity
    }

    /// How long the call rings before it is answered (`answer_delay_ms`, default 0).
    pub fn answer_delay(&self) -> Duration {
        self.answer_delay
    }

    /// The initial session variables.
    pub fn variables(&self) -> &Map<String, Value> {
        &self.variables
    }

    /// Where `Play { file }` names are resolved: `prompts_dir` relative to the flow file.
    pub fn prompts_dir(&self) -> &Path {
        &self.prompts_dir
    }

    /// The path a `Play { file }` refers to: absolute names as-is, others under `prompts_dir`.
    pub fn resolve_prompt(&self, file: &str) -> PathBuf {
        let p = Path::new(file);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.prompts_dir.join(p)
        }
    }

    /// Load-time warnings (for example: no error path anywhere).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn dialog_names(&self) -> impl Iterator<Item = &str> {
        self.dialogs.iter().map(|d| &*d.name)
    }

    pub(crate) fn dialog(&self, id: DialogId) -> &Dialog {
        // Ids are only minted by the loader for this definition, so the index is valid; the
        // fallback keeps this total anyway.
        self.dialogs
            .get(id.0)
            .unwrap_or_else(|| &self.dialogs[self.start.0])
    }

    pub(crate) fn dialog_id(&self, name: &str) -> Option<DialogId> {
        self.by_name.get(name).copied()
    }
}
