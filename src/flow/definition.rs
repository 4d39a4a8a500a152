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
    pub(crate) dialogs: Vec<Dialog>,
    pub(crate) by_name: HashMap<String, DialogId>,
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
    Set(Vec<(VarPath, Expr)>),
    ClearSession(Scope),
    Delay(Duration),
    PauseBot,
    GetTime {
        variable: VarPath,
        offset_minutes: i32,
    },
    TrackEvent {
        name: Template,
        properties: Vec<(String, Expr)>,
    },
    StartRecording,
    StopRecording,
    Forward {
        to: Expr,
        on_failure: Option<DialogId>,
    },
    Close(Scope),
    Hangup,
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
}

impl StepKind {
    pub const ALL: [StepKind; 16] = [
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
            Step::PauseBot => StepKind::PauseBot,
            Step::GetTime { .. } => StepKind::GetTime,
            Step::TrackEvent { .. } => StepKind::TrackEvent,
            Step::StartRecording => StepKind::StartRecording,
            Step::StopRecording => StepKind::StopRecording,
            Step::Forward { .. } => StepKind::Forward,
            Step::Close(_) => StepKind::Close,
            Step::Hangup => StepKind::Hangup,
        }
    }
}

impl FlowDefinition {
    pub fn name(&self) -> &str {
        &self.name
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
