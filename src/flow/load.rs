//! Reading and validating flow files. Everything that can be checked without a call is checked
//! here, and every error names the file, the dialog and the step, so a broken flow fails at
//! start-up (or on reload) with a message an author can act on.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::{self, DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer};
use serde_yaml::{Mapping, Value as Yaml};
use thiserror::Error;

use super::clock::Zone;
use super::collect::CollectRules;
use super::definition::{Clear, Content, Dialog, DialogId, FlowDefinition, Step, StepKind};
use super::expr::{Expr, VarPath};
use super::session::{is_reserved, Scope, RESERVED_ROOTS};
use super::template::{Template, SECRETS_ROOT};
use super::value::{Mode, ValueTpl};

mod integrations;

pub(crate) use integrations::{contains_words, normalise_phrase};

/// Default for `inactivity_s`.
pub const DEFAULT_INACTIVITY_S: u64 = 30;
/// Default for `collect.inter_digit_timeout_ms`.
pub const DEFAULT_INTER_DIGIT_MS: u64 = 3000;
/// Upper bound for any timeout or delay in a flow file (one hour).
const MAX_MS: u64 = 3_600_000;
const MAX_DIGITS: usize = 64;
/// Upper bound for `answer_delay_ms`: callers and trunks give up on long ringing.
const MAX_ANSWER_DELAY_MS: u64 = 60_000;
/// Default for `pause_bot.max_ms`: a bot nobody resumes does not hold the line forever.
pub const DEFAULT_PAUSE_MAX_MS: u64 = 600_000;
/// What the caller hears when a step fails and the flow has no error dialog.
pub const DEFAULT_ERROR_TEXT: &str = "Sorry, something went wrong. Goodbye.";
const DTMF: &str = "0123456789*#ABCD";

/// Why a flow file was refused.
#[derive(Debug, Error)]
pub enum FlowLoadError {
    #[error("{path}: cannot read flow file: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not YAML, or its top level has a wrong/unknown key.
    #[error("{path}: {message}")]
    Syntax { path: PathBuf, message: String },
    /// A problem with a top-level setting (`start`, `on_error`, `variables`, ...).
    #[error("{path}: `{key}`: {message}")]
    Setting {
        path: PathBuf,
        key: String,
        message: String,
    },
    /// A problem inside a step. `step` counts from 1, as authors read the file.
    #[error("{path}: dialog `{dialog}`, step {step} ({kind}): {message}")]
    Step {
        path: PathBuf,
        dialog: String,
        step: usize,
        kind: String,
        message: String,
    },
}

impl FlowDefinition {
    /// Reads and validates a flow file. Missing prompt files only warn: prompts may be added
    /// after the flow, and the call side reports a failed playback anyway.
    pub fn load(path: impl AsRef<Path>) -> Result<Arc<FlowDefinition>, FlowLoadError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| FlowLoadError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let def = Self::from_str(&text, path)?;
        for dialog in &def.dialogs {
            for step in &dialog.steps {
                if let Step::Message {
                    content: Content::File(t),
                    ..
                } = step
                {
                    if let Some(file) = t.literal() {
                        let resolved = def.resolve_prompt(&file);
                        if !resolved.is_file() {
                            tracing::warn!(flow = %path.display(), dialog = %dialog.name,
                                prompt = %resolved.display(), "prompt file not found");
                        }
                    }
                }
            }
        }
        tracing::info!(flow = %def.name, file = %path.display(), dialogs = def.dialogs.len(),
            "flow loaded");
        Ok(def)
    }

    /// Parses a flow from text; `origin` names it in errors and anchors `prompts_dir`.
    pub fn from_str(
        text: &str,
        origin: impl AsRef<Path>,
    ) -> Result<Arc<FlowDefinition>, FlowLoadError> {
        let origin = origin.as_ref();
        let raw: RawFlow = serde_yaml::from_str(text).map_err(|e| FlowLoadError::Syntax {
            path: origin.to_path_buf(),
            message: e.to_string(),
        })?;
        compile(raw, origin).map(Arc::new)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFlow {
    name: String,
    start: String,
    #[serde(default = "default_inactivity")]
    inactivity_s: u64,
    #[serde(default)]
    answer_delay_ms: u64,
    #[serde(default)]
    variables: Mapping,
    #[serde(default)]
    prompts_dir: Option<String>,
    #[serde(default)]
    on_error: Option<String>,
    /// A prompt (`{file}` / `{text}`, a file name, or `false` for none) said before an
    /// unhandled error closes the conversation.
    #[serde(default)]
    error_prompt: Option<Yaml>,
    dialogs: Mapping,
}

fn default_inactivity() -> u64 {
    DEFAULT_INACTIVITY_S
}

fn compile(raw: RawFlow, origin: &Path) -> Result<FlowDefinition, FlowLoadError> {
    let setting = |key: &str, message: String| FlowLoadError::Setting {
        path: origin.to_path_buf(),
        key: key.to_string(),
        message,
    };
    if raw.name.trim().is_empty() {
        return Err(setting("name", "must not be empty".into()));
    }
    if raw.inactivity_s > MAX_MS / 1000 {
        return Err(setting(
            "inactivity_s",
            format!(
                "{} is more than the maximum of {}",
                raw.inactivity_s,
                MAX_MS / 1000
            ),
        ));
    }
    if raw.answer_delay_ms > MAX_ANSWER_DELAY_MS {
        return Err(setting(
            "answer_delay_ms",
            format!(
                "{} is more than the maximum of {MAX_ANSWER_DELAY_MS}",
                raw.answer_delay_ms
            ),
        ));
    }

    // Dialog names first, so steps may refer to dialogs defined later in the file.
    let mut by_name = HashMap::new();
    let mut bodies = Vec::new();
    for (key, body) in raw.dialogs {
        let Yaml::String(name) = key else {
            return Err(setting(
                "dialogs",
                format!("dialog names must be text, found {}", describe(&key)),
            ));
        };
        if name.trim().is_empty() {
            return Err(setting("dialogs", "a dialog name is empty".into()));
        }
        by_name.insert(name.clone(), DialogId(bodies.len()));
        bodies.push((name, body));
    }
    if bodies.is_empty() {
        return Err(setting("dialogs", "the flow has no dialogs".into()));
    }
    let lookup = |key: &str, name: &str| {
        by_name.get(name).copied().ok_or_else(|| {
            setting(
                key,
                format!("dialog `{name}` does not exist{}", known(&by_name)),
            )
        })
    };
    let start = lookup("start", &raw.start)?;
    let on_error = raw
        .on_error
        .as_deref()
        .map(|n| lookup("on_error", n))
        .transpose()?;

    let mut variables = serde_json::Map::new();
    for (key, value) in raw.variables {
        let Yaml::String(name) = key else {
            return Err(setting(
                "variables",
                format!("variable names must be text, found {}", describe(&key)),
            ));
        };
        let path = VarPath::parse(&name)
            .ok()
            .filter(|p| p.segments().len() == 1)
            .ok_or_else(|| {
                setting(
                    "variables",
                    format!("`{name}` is not a variable name (letters, digits, `_`)"),
                )
            })?;
        if is_reserved(path.root()) {
            return Err(setting(
                "variables",
                format!("`{name}` is reserved for call context (reserved: {RESERVED_ROOTS:?})"),
            ));
        }
        let json = serde_json::to_value(&value)
            .map_err(|e| setting("variables", format!("`{name}`: {e}")))?;
        variables.insert(name, json);
    }

    let error_prompt = match raw.error_prompt {
        None => Some(Content::Text(
            Template::parse(DEFAULT_ERROR_TEXT)
                .map_err(|e| setting("error_prompt", e.to_string()))?,
        )),
        Some(Yaml::Bool(false)) => None,
        Some(y) => Some(prompt("error_prompt", y).map_err(|m| setting("error_prompt", m))?),
    };

    let ctx = Ctx {
        origin,
        by_name: &by_name,
    };
    let mut dialogs = Vec::with_capacity(bodies.len());
    for (name, body) in bodies {
        let Yaml::Sequence(items) = body else {
            return Err(setting(
                "dialogs",
                format!(
                    "dialog `{name}` must be a list of steps, found {}",
                    describe(&body)
                ),
            ));
        };
        if items.is_empty() {
            return Err(setting("dialogs", format!("dialog `{name}` has no steps")));
        }
        let mut steps = Vec::with_capacity(items.len());
        for (index, item) in items.into_iter().enumerate() {
            steps.push(ctx.step(&name, index, item)?);
        }
        dialogs.push(Dialog {
            name: Arc::from(name.as_str()),
            steps,
        });
    }

    let mut warnings = Vec::new();
    let any_step_error_path = dialogs
        .iter()
        .flat_map(|d: &Dialog| d.steps.iter())
        .any(Step::has_own_error_path);
    if on_error.is_none() && !any_step_error_path {
        warnings.push(
            "the flow has no `on_error` dialog anywhere: a step that fails says the error \
             prompt and closes the conversation"
                .to_string(),
        );
    }
    for w in &warnings {
        tracing::warn!(flow = %raw.name, file = %origin.display(), "{w}");
    }

    let base = origin.parent().unwrap_or(Path::new(""));
    Ok(FlowDefinition {
        name: raw.name,
        origin: origin.to_path_buf(),
        start,
        inactivity: (raw.inactivity_s > 0).then(|| Duration::from_secs(raw.inactivity_s)),
        answer_delay: Duration::from_millis(raw.answer_delay_ms),
        variables,
        prompts_dir: base.join(raw.prompts_dir.as_deref().unwrap_or(".")),
        on_error,
        error_prompt,
        dialogs,
        by_name,
        warnings,
    })
}

fn known(by_name: &HashMap<String, DialogId>) -> String {
    let mut names: Vec<&str> = by_name.keys().map(String::as_str).collect();
    names.sort_unstable();
    format!(" (dialogs: {})", names.join(", "))
}

fn describe(v: &Yaml) -> &'static str {
    match v {
        Yaml::Null => "nothing",
        Yaml::Bool(_) => "a boolean",
        Yaml::Number(_) => "a number",
        Yaml::String(_) => "text",
        Yaml::Sequence(_) => "a list",
        Yaml::Mapping(_) => "a mapping",
        Yaml::Tagged(_) => "a tagged value",
    }
}

/// An expression written as YAML: usually text, but `expr: true` or `expr: 3` are fine too.
struct ExprSrc(String);

impl<'de> Deserialize<'de> for ExprSrc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ExprSrc;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an expression (text, number or boolean)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ExprSrc, E> {
                Ok(ExprSrc(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ExprSrc, E> {
                Ok(ExprSrc(v.to_string()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ExprSrc, E> {
                Ok(ExprSrc(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ExprSrc, E> {
                Ok(ExprSrc(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ExprSrc, E> {
                Ok(ExprSrc(format!("{v:?}")))
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageSpec {
    file: Option<String>,
    text: Option<String>,
    #[serde(default = "yes")]
    wait: bool,
    #[serde(default)]
    barge_in: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CollectSpec {
    #[serde(default = "one")]
    max_digits: usize,
    #[serde(default = "hash")]
    terminator: Option<String>,
    #[serde(default = "inter_digit")]
    inter_digit_timeout_ms: u64,
    timeout_ms: Option<u64>,
    variable: Option<String>,
    #[serde(default)]
    branches: Mapping,
    default: Option<String>,
    on_timeout: Option<String>,
}

fn one() -> usize {
    1
}

fn hash() -> Option<String> {
    Some("#".to_string())
}

fn inter_digit() -> u64 {
    DEFAULT_INTER_DIGIT_MS
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConditionSpec {
    expr: ExprSrc,
    then: Option<String>,
    #[serde(rename = "else")]
    otherwise: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GotoVariableSpec {
    variable: String,
    on_error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetItem {
    name: String,
    expr: Yaml,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeSpec {
    #[serde(default)]
    scope: Option<Scope>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearSpec {
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    variables: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseSpec {
    max_ms: Option<u64>,
    on_timeout: Option<String>,
    hold: Option<Yaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DelaySpec {
    ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EmptySpec {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GetTimeSpec {
    variable: String,
    offset_minutes: Option<i32>,
    /// Hours (`2`, `-5.5`) or text (`"+02:00"`, `"-0530"`, `"Z"`).
    timezone_offset: Option<Yaml>,
    /// An IANA name (`Europe/Brussels`), daylight saving included.
    timezone: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackEventSpec {
    name: String,
    #[serde(default)]
    properties: BTreeMap<String, Yaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardSpec {
    to: Yaml,
    on_failure: Option<String>,
}

/// What step compilation needs to know about the whole file.
struct Ctx<'a> {
    origin: &'a Path,
    by_name: &'a HashMap<String, DialogId>,
}

/// Errors inside one step before the file/dialog/step prefix is added.
type StepResult<T> = Result<T, String>;

impl Ctx<'_> {
    fn step(&self, dialog: &str, index: usize, item: Yaml) -> Result<Step, FlowLoadError> {
        let err = |kind: &str, message: String| FlowLoadError::Step {
            path: self.origin.to_path_buf(),
            dialog: dialog.to_string(),
            step: index + 1,
            kind: kind.to_string(),
            message,
        };
        // A step is `- type` (no settings) or a one-key mapping `- type: settings`.
        let (kind_name, body) = match item {
            Yaml::String(s) => (s, Yaml::Null),
            Yaml::Mapping(m) if m.len() == 1 => match m.into_iter().next() {
                Some((Yaml::String(k), v)) => (k, v),
                _ => return Err(err("?", "the step type must be text".into())),
            },
            other => {
                return Err(err(
                    "?",
                    format!(
                        "a step is a mapping with exactly one key, the step type (e.g. \
                         `- goto: menu`); found {}",
                        describe(&other)
                    ),
                ))
            }
        };
        let Some(kind) = StepKind::from_name(&kind_name) else {
            let all: Vec<&str> = StepKind::ALL.iter().map(|k| k.name()).collect();
            return Err(err(
                &kind_name,
                format!(
                    "unknown step type `{kind_name}` (known: {})",
                    all.join(", ")
                ),
            ));
        };
        self.compile_step(kind, body)
            .map_err(|message| err(kind.name(), message))
    }

    fn dialog(&self, field: &str, name: &str) -> StepResult<DialogId> {
        self.by_name.get(name).copied().ok_or_else(|| {
            format!(
                "`{field}` refers to dialog `{name}`, which does not exist{}",
                known(self.by_name)
            )
        })
    }

    fn opt_dialog(&self, field: &str, name: Option<&str>) -> StepResult<Option<DialogId>> {
        name.map(|n| self.dialog(field, n)).transpose()
    }

    fn compile_step(&self, kind: StepKind, body: Yaml) -> StepResult<Step> {
        Ok(match kind {
            StepKind::Message => {
                let s: MessageSpec = spec(body)?;
                let content = match (s.file, s.text) {
                    (Some(f), None) if !f.trim().is_empty() => Content::File(template("file", &f)?),
                    (None, Some(t)) => Content::Text(template("text", &t)?),
                    (Some(_), None) => return Err("`file` must not be empty".into()),
                    _ => return Err("give exactly one of `file` (a prompt) or `text` (TTS)".into()),
                };
                Step::Message {
                    content,
                    wait: s.wait,
                    barge_in: s.barge_in,
                }
            }
            StepKind::Collect => self.collect(spec(body)?)?,
            StepKind::Condition => {
                let s: ConditionSpec = spec(body)?;
                if s.then.is_none() && s.otherwise.is_none() {
                    return Err("give `then` and/or `else` (a dialog name)".into());
                }
                Step::Condition {
                    expr: checked(expr("expr", &s.expr.0)?)?,
                    then: self.opt_dialog("then", s.then.as_deref())?,
                    otherwise: self.opt_dialog("else", s.otherwise.as_deref())?,
                }
            }
            StepKind::Goto => {
                let Yaml::String(name) = body else {
                    return Err(format!(
                        "expected a dialog name (`- goto: menu`), found {}",
                        describe(&body)
                    ));
                };
                Step::Goto(self.dialog("goto", &name)?)
            }
            StepKind::GotoVariable => {
                let s = match body {
                    Yaml::String(variable) => GotoVariableSpec {
                        variable,
                        on_error: None,
                    },
                    other => spec(other)?,
                };
                Step::GotoVariable {
                    variable: path("variable", &s.variable)?,
                    on_error: self.opt_dialog("on_error", s.on_error.as_deref())?,
                }
            }
            StepKind::Set => {
                let items: Vec<SetItem> = match body {
                    Yaml::Mapping(_) => vec![spec(body)?],
                    other => spec(other)?,
                };
                if items.is_empty() {
                    return Err("the list of `{name, expr}` assignments is empty".into());
                }
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push((target("name", &item.name)?, value("expr", &item.expr)?));
                }
                Step::Set(out)
            }
            StepKind::Close => {
                let s: ScopeSpec = spec(body)?;
                Step::Close(s.scope.unwrap_or(Scope::All))
            }
            StepKind::ClearSession => {
                let s: ClearSpec = spec(body)?;
                match (s.scope, s.variables) {
                    (Some(_), Some(_)) => {
                        return Err("give `scope` or `variables`, not both".into())
                    }
                    (_, Some(names)) => {
                        if names.is_empty() {
                            return Err("`variables` is empty".into());
                        }
                        let paths = names
                            .iter()
                            .map(|n| target("variables", n))
                            .collect::<StepResult<Vec<_>>>()?;
                        Step::ClearSession(Clear::Paths(paths))
                    }
                    (scope, None) => Step::ClearSession(Clear::Scope(scope.unwrap_or(Scope::All))),
                }
            }
            StepKind::PauseBot => {
                let s: PauseSpec = spec(body)?;
                let max_ms = s.max_ms.unwrap_or(DEFAULT_PAUSE_MAX_MS);
                Step::PauseBot {
                    max: (max_ms > 0)
                        .then(|| duration("max_ms", max_ms))
                        .transpose()?,
                    on_timeout: self.opt_dialog("on_timeout", s.on_timeout.as_deref())?,
                    hold: s.hold.map(|h| prompt("hold", h)).transpose()?,
                }
            }
            StepKind::Delay => {
                let ms = match body {
                    Yaml::Number(n) => n
                        .as_u64()
                        .ok_or_else(|| format!("`{n}` is not a whole number of milliseconds"))?,
                    other => spec::<DelaySpec>(other)?.ms,
                };
                Step::Delay(duration("ms", ms)?)
            }
            StepKind::GetTime => {
                let s: GetTimeSpec = spec(body)?;
                let given = [
                    s.offset_minutes.is_some(),
                    s.timezone_offset.is_some(),
                    s.timezone.is_some(),
                ];
                if given.iter().filter(|g| **g).count() > 1 {
                    return Err(
                        "give one of `timezone`, `timezone_offset` and `offset_minutes`, not both"
                            .into(),
                    );
                }
                let zone = if let Some(m) = s.offset_minutes {
                    Some(Zone::minutes(m).map_err(|e| format!("`offset_minutes`: {e}"))?)
                } else if let Some(tz) = s.timezone_offset {
                    let parsed = match &tz {
                        Yaml::Number(n) => match n.as_f64() {
                            Some(h) => Zone::hours(h),
                            None => Err(format!("`{n}` is not a number of hours")),
                        },
                        Yaml::String(t) => Zone::parse(t).and_then(|z| match z {
                            Zone::Iana(_) => {
                                Err(format!("`{t}` is a time zone name: use `timezone`"))
                            }
                            fixed => Ok(fixed),
                        }),
                        other => Err(format!(
                            "expected hours or \"+02:00\", found {}",
                            describe(other)
                        )),
                    };
                    Some(parsed.map_err(|e| format!("`timezone_offset`: {e}"))?)
                } else if let Some(name) = s.timezone {
                    Some(Zone::parse(&name).map_err(|e| format!("`timezone`: {e}"))?)
                } else {
                    None
                };
                Step::GetTime {
                    variable: target("variable", &s.variable)?,
                    zone,
                }
            }
            StepKind::TrackEvent => {
                let s: TrackEventSpec = spec(body)?;
                if s.name.trim().is_empty() {
                    return Err("`name` must not be empty".into());
                }
                let mut properties = Vec::with_capacity(s.properties.len());
                for (key, src) in s.properties {
                    properties.push((key.clone(), value(&format!("properties.{key}"), &src)?));
                }
                Step::TrackEvent {
                    name: template("name", &s.name)?,
                    properties,
                }
            }
            StepKind::Forward => {
                let s: ForwardSpec = spec(body)?;
                Step::Forward {
                    to: value("to", &s.to)?,
                    on_failure: self.opt_dialog("on_failure", s.on_failure.as_deref())?,
                }
            }
            StepKind::StartRecording | StepKind::StopRecording | StepKind::Hangup => {
                let _: EmptySpec = spec(body)?;
                match kind {
                    StepKind::StartRecording => Step::StartRecording,
                    StepKind::StopRecording => Step::StopRecording,
                    _ => Step::Hangup,
                }
            }
            StepKind::Api
            | StepKind::Code
            | StepKind::JsonBuilder
            | StepKind::SendMail
            | StepKind::MailReport
            | StepKind::Table
            | StepKind::KnowledgeBase => self.request(kind, body)?,
            StepKind::Offload => self.offload(body)?,
            StepKind::Listen => self.listen(body)?,
        })
    }

    fn collect(&self, s: CollectSpec) -> StepResult<Step> {
        if s.max_digits == 0 || s.max_digits > MAX_DIGITS {
            return Err(format!(
                "`max_digits` must be between 1 and {MAX_DIGITS}, not {}",
                s.max_digits
            ));
        }
        let terminator = match s.terminator.as_deref() {
            None | Some("") => None,
            Some(t) => {
                let mut chars = t.chars();
                match (chars.next(), chars.next()) {
                    (Some(c), None) if DTMF.contains(c) => Some(c),
                    _ => {
                        return Err(format!(
                            "`terminator` must be one DTMF key (0-9 * # A-D), not `{t}`"
                        ))
                    }
                }
            }
        };
        let mut branches = BTreeMap::new();
        for (key, target) in s.branches {
            let key = match key {
                Yaml::String(s) => s,
                Yaml::Number(n) if n.is_u64() => n.to_string(),
                other => {
                    return Err(format!(
                        "branch keys are DTMF input like \"1\", found {}",
                        describe(&other)
                    ))
                }
            };
            let Yaml::String(target) = target else {
                return Err(format!("branch `{key}` must name a dialog"));
            };
            if key.is_empty() || !key.chars().all(|c| DTMF.contains(c)) {
                return Err(format!(
                    "branch `{key}` is not DTMF input (keys 0-9 * # A-D)"
                ));
            }
            if terminator.is_some_and(|t| key.contains(t)) {
                return Err(format!(
                    "branch `{key}` contains the terminator, so it can never match"
                ));
            }
            if key.chars().count() > s.max_digits {
                return Err(format!(
                    "branch `{key}` is longer than max_digits ({}), so it can never match",
                    s.max_digits
                ));
            }
            branches.insert(
                key.clone(),
                self.dialog(&format!("branches.{key}"), &target)?,
            );
        }
        Ok(Step::Collect {
            rules: CollectRules {
                max_digits: s.max_digits,
                terminator,
                timeout: s
                    .timeout_ms
                    .map(|ms| duration("timeout_ms", ms))
                    .transpose()?,
                inter_digit_timeout: duration("inter_digit_timeout_ms", s.inter_digit_timeout_ms)?,
            },
            variable: s
                .variable
                .as_deref()
                .map(|v| target("variable", v))
                .transpose()?,
            branches,
            default: self.opt_dialog("default", s.default.as_deref())?,
            on_timeout: self.opt_dialog("on_timeout", s.on_timeout.as_deref())?,
        })
    }
}

/// Deserializes a step's settings; an absent body (`- hangup`, `hangup:`) is an empty mapping.
fn spec<T: DeserializeOwned>(body: Yaml) -> StepResult<T> {
    let body = match body {
        Yaml::Null => Yaml::Mapping(Mapping::new()),
        other => other,
    };
    serde_yaml::from_value(body).map_err(|e| e.to_string())
}

fn expr(field: &str, src: &str) -> StepResult<Expr> {
    Expr::parse(src).map_err(|e| format!("`{field}` expression `{src}`: {e}"))
}

/// Refuses expressions that read `secrets.*`: secrets only exist as `{secrets.NAME}`
/// placeholders in `api` fields, filled by the executor.
fn checked(e: Expr) -> StepResult<Expr> {
    if e.roots().contains(&SECRETS_ROOT) {
        return Err(format!(
            "`{e}` reads `{SECRETS_ROOT}`: secrets can only be written as `{{{SECRETS_ROOT}.NAME}}` \
             placeholders in `api` url, headers, query, body and auth"
        ));
    }
    Ok(e)
}

/// A value in expression mode (`set.expr`, `forward.to`, properties, payloads).
fn value(field: &str, yaml: &Yaml) -> StepResult<ValueTpl> {
    value_in(field, yaml, Mode::Expr)
}

/// A value in the given mode, with secrets refused (see [`checked`]).
fn value_in(field: &str, yaml: &Yaml, mode: Mode) -> StepResult<ValueTpl> {
    let v = ValueTpl::compile(yaml, mode, field)?;
    if v.has_secrets() {
        return Err(format!(
            "`{field}`: `{{{SECRETS_ROOT}.NAME}}` placeholders are only allowed in `api` url, \
             headers, query, body and auth"
        ));
    }
    check_value_exprs(&v)?;
    Ok(v)
}

fn check_value_exprs(v: &ValueTpl) -> StepResult<()> {
    match v {
        ValueTpl::Lit(_) => Ok(()),
        ValueTpl::Expr(e) => checked(e.clone()).map(|_| ()),
        ValueTpl::Text(t) => t.exprs().try_for_each(|e| checked(e.clone()).map(|_| ())),
        ValueTpl::List(items) => items.iter().try_for_each(check_value_exprs),
        ValueTpl::Map(entries) => entries.iter().try_for_each(|(_, v)| check_value_exprs(v)),
    }
}

fn template(field: &str, src: &str) -> StepResult<Template> {
    let t = Template::parse(src).map_err(|e| format!("`{field}`: {e}"))?;
    if t.has_secrets() {
        return Err(format!(
            "`{field}`: `{{{SECRETS_ROOT}.NAME}}` placeholders are only allowed in `api` url, \
             headers, query, body and auth"
        ));
    }
    t.exprs().try_for_each(|e| checked(e.clone()).map(|_| ()))?;
    Ok(t)
}

/// A prompt: a file name, or `{file: ...}` / `{text: ...}` (used by `hold`, `error_prompt`).
fn prompt(field: &str, yaml: Yaml) -> StepResult<Content> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct PromptSpec {
        file: Option<String>,
        text: Option<String>,
    }
    let s = match yaml {
        Yaml::String(file) => PromptSpec {
            file: Some(file),
            text: None,
        },
        other => spec::<PromptSpec>(other).map_err(|e| format!("`{field}`: {e}"))?,
    };
    match (s.file, s.text) {
        (Some(f), None) if !f.trim().is_empty() => Ok(Content::File(template(field, &f)?)),
        (None, Some(t)) if !t.trim().is_empty() => Ok(Content::Text(template(field, &t)?)),
        _ => Err(format!(
            "`{field}`: give a prompt file name, or exactly one of `file` and `text` (not empty)"
        )),
    }
}

/// A variable the step writes: a valid path whose root is not reserved.
fn target(field: &str, src: &str) -> StepResult<VarPath> {
    let p = path(field, src)?;
    if is_reserved(p.root()) {
        return Err(format!(
            "`{field}`: `{src}` is reserved (the engine owns {RESERVED_ROOTS:?}); pick another name"
        ));
    }
    Ok(p)
}

fn path(field: &str, src: &str) -> StepResult<VarPath> {
    VarPath::parse(src).map_err(|e| format!("`{field}`: {e}"))
}

fn duration(field: &str, ms: u64) -> StepResult<Duration> {
    if ms > MAX_MS {
        return Err(format!(
            "`{field}` of {ms} ms is more than the maximum of {MAX_MS}"
        ));
    }
    Ok(Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "flows/test.yaml";

    fn wrap(steps: &str) -> String {
        format!("name: t\nstart: main\ndialogs:\n  main:\n{steps}\n  other:\n    - hangup\n")
    }

    fn load_err(text: &str) -> String {
        FlowDefinition::from_str(text, ORIGIN)
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn a_flow_says_whether_it_listens() {
        use crate::flow::definition::StepKind;
        let keys = FlowDefinition::from_str(&wrap("    - message: {text: hi}"), ORIGIN).unwrap();
        assert!(!keys.uses(StepKind::Listen));
        assert!(keys.uses(StepKind::Message));
        let text = "name: t\nstart: main\ndialogs:\n  main:\n    - message: {text: hi}\n  \
                    later:\n    - listen: {grammar: [yes, no], default: main}\n";
        let speech = FlowDefinition::from_str(text, ORIGIN).unwrap();
        assert!(
            speech.uses(StepKind::Listen),
            "a listen in any dialog counts"
        );
    }

    #[test]
    fn accepts_every_step_type() {
        let text = wrap(
            r##"    - message: {file: "greeting.wav", barge_in: true}
    - message: {text: "Hello {call.from}", wait: false}
    - collect:
        max_digits: 4
        terminator: "#"
        inter_digit_timeout_ms: 2000
        timeout_ms: 5000
        variable: pin
        branches: {"1": other, 2: main, "*9": other}
        default: other
        on_timeout: main
    - condition: {expr: "pin == '1234'", then: other, else: main}
    - condition: {expr: true, then: other}
    - goto_variable: next
    - goto_variable: {variable: next, on_error: other}
    - set: [{name: a.b, expr: "1 + 2"}, {name: c, expr: 3}]
    - set: {name: d, expr: "'x'"}
    - clear_session: {scope: variables}
    - clear_session
    - delay: {ms: 250}
    - delay: 100
    - pause_bot
    - get_time: {variable: now, timezone_offset: "+02:00"}
    - get_time: {variable: now2, offset_minutes: -300}
    - get_time: {variable: now3, timezone_offset: -5.5}
    - get_time: {variable: now4, timezone: Europe/Brussels}
    - track_event: {name: "menu_{pin}", properties: {pin: pin, n: 1}}
    - start_recording
    - stop_recording: {}
    - forward: {to: "'+' + pin", on_failure: other}
    - api: {method: post, url: "http://h/x?n={call.from}", headers: {Authorization: "Bearer {secrets.T}"}, body: {a: "{n}"}, auth: {type: bearer, token: "{secrets.T}"}, save_as: resp, timeout_ms: 900, on_error: other, hold: music.wav}
    - code: {source: "new ChatlayerResponseBuilder().send()", memory_kb: 4096}
    - json_builder: {payload: {caller: call.from, n: "1 + 1"}}
    - send_mail: {to: [ops@example.com], cc: "{boss}", subject: "Hi {call.from}", body: b}
    - mail_report: {to: ops@example.com, subject: r, hold: {text: "One moment"}}
    - table: {op: lookup, table: vip, where: {number: call.from}, save_as: vip}
    - offload: {to: "sip:agents@127.0.0.1:5080", headers: {X-Customer: vip.name}, context: [vip], on_failure: other}
    - listen: {grammar: [sales], branches: {sales: other, "1": main}, save_as: heard, on_no_match: other, on_timeout: main}
    - knowledge_base: {question: heard.text, save_as: kb, on_no_answer: other}
    - forward: {to: "+3225551212"}
    - clear_session: {variables: [a, b.c]}
    - pause_bot: {max_ms: 5000, on_timeout: other, hold: hold.wav}
    - close: {scope: all}
    - goto: other"##,
        );
        let def = FlowDefinition::from_str(&text, ORIGIN).unwrap();
        assert_eq!(def.name(), "t");
        assert_eq!(def.start_dialog(), "main");
        assert_eq!(def.inactivity(), Some(Duration::from_secs(30)));
        assert_eq!(def.answer_delay(), Duration::ZERO);
        assert_eq!(def.prompts_dir(), Path::new("flows/."));
        let main = def.dialog(def.dialog_id("main").unwrap());
        let kinds: Vec<&str> = main.steps.iter().map(|s| s.kind().name()).collect();
        assert_eq!(kinds.len(), 36);
        for kind in StepKind::ALL {
            assert!(
                kinds.contains(&kind.name()) || kind == StepKind::Hangup,
                "{kind} not covered"
            );
        }
        match &main.steps[2] {
            Step::Collect {
                branches, rules, ..
            } => {
                assert_eq!(
                    branches.keys().cloned().collect::<Vec<_>>(),
                    vec!["*9", "1", "2"]
                );
                assert_eq!(rules.terminator, Some('#'));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn listen_defaults_its_grammar_to_the_phrases() {
        let def = FlowDefinition::from_str(
            &wrap("    - listen: {branches: {Sales: other, 'Support, please': main, '2': other}}"),
            ORIGIN,
        )
        .unwrap();
        let main = def.dialog(def.dialog_id("main").unwrap());
        let Step::Listen(l) = &main.steps[0] else {
            panic!()
        };
        assert_eq!(
            l.mode,
            crate::flow::ListenMode::Grammar(vec!["sales".into(), "support please".into()])
        );
        assert_eq!(l.keys.keys().collect::<Vec<_>>(), vec!["2"]);
        assert_eq!(l.keypad.max_digits, 1);
        assert_eq!(l.waiting.timeout, Duration::from_secs(5));
    }

    #[test]
    fn integration_step_defaults() {
        let def = FlowDefinition::from_str(
            &wrap(
                "    - api: {url: 'http://x'}\n    - code: {source: x}\n    - offload: {to: '+32'}",
            ),
            ORIGIN,
        )
        .unwrap();
        let main = def.dialog(def.dialog_id("main").unwrap());
        let timeouts: Vec<Duration> = main
            .steps
            .iter()
            .map(|s| match s {
                Step::Request(r) => r.waiting.timeout,
                Step::Offload(o) => o.waiting.timeout,
                _ => Duration::ZERO,
            })
            .collect();
        assert_eq!(
            timeouts,
            vec![
                Duration::from_secs(5),
                Duration::from_secs(2),
                Duration::from_secs(60)
            ]
        );
    }

    #[test]
    fn warns_when_no_error_path_exists_anywhere() {
        let def = FlowDefinition::from_str(&wrap("    - hangup"), ORIGIN).unwrap();
        assert_eq!(def.warnings().len(), 1);
        assert!(
            def.warnings()[0].contains("no `on_error`"),
            "{:?}",
            def.warnings()
        );
        let def = FlowDefinition::from_str(
            &format!("on_error: other\n{}", wrap("    - hangup")),
            ORIGIN,
        )
        .unwrap();
        assert!(def.warnings().is_empty());
        let def = FlowDefinition::from_str(
            &wrap("    - api: {url: 'http://x', on_error: other}"),
            ORIGIN,
        )
        .unwrap();
        assert!(def.warnings().is_empty(), "a step-level on_error counts");
    }

    #[test]
    fn error_prompt_setting() {
        let text = |extra: &str| format!("name: t\nstart: m\n{extra}dialogs: {{m: [hangup]}}\n");
        let def = FlowDefinition::from_str(&text(""), ORIGIN).unwrap();
        assert!(matches!(def.error_prompt, Some(Content::Text(_))));
        let def = FlowDefinition::from_str(&text("error_prompt: false\n"), ORIGIN).unwrap();
        assert!(def.error_prompt.is_none());
        let def = FlowDefinition::from_str(&text("error_prompt: sorry.wav\n"), ORIGIN).unwrap();
        assert!(matches!(def.error_prompt, Some(Content::File(_))));
        let def =
            FlowDefinition::from_str(&text("error_prompt: {text: 'Oops {call.from}'}\n"), ORIGIN)
                .unwrap();
        assert!(matches!(def.error_prompt, Some(Content::Text(_))));
        let err = FlowDefinition::from_str(&text("error_prompt: {}\n"), ORIGIN).unwrap_err();
        assert!(err.to_string().contains("`error_prompt`"), "{err}");
    }

    #[test]
    fn top_level_settings() {
        let text = "name: t\nstart: main\ninactivity_s: 0\nanswer_delay_ms: 1500\n\
                    prompts_dir: ../prompts\n\
                    on_error: main\nvariables: {n: 1, s: x, nested: {a: [1, 2]}}\n\
                    dialogs: {main: [hangup]}\n";
        let def = FlowDefinition::from_str(text, "/etc/vg/flows/x.yaml").unwrap();
        assert_eq!(def.inactivity(), None);
        assert_eq!(def.answer_delay(), Duration::from_millis(1500));
        assert_eq!(def.prompts_dir(), Path::new("/etc/vg/flows/../prompts"));
        assert_eq!(
            def.resolve_prompt("a.wav"),
            PathBuf::from("/etc/vg/flows/../prompts/a.wav")
        );
        assert_eq!(
            def.resolve_prompt("/abs/a.wav"),
            PathBuf::from("/abs/a.wav")
        );
        assert_eq!(
            serde_json::Value::Object(def.variables().clone()),
            serde_json::json!({"n": 1, "s": "x", "nested": {"a": [1, 2]}})
        );
        assert_eq!(def.dialog_names().collect::<Vec<_>>(), vec!["main"]);
    }

    #[test]
    fn step_errors_name_file_dialog_and_step() {
        let cases: &[(&str, &str)] = &[
            (
                "    - hangup\n    - play: {file: a.wav}",
                "flows/test.yaml: dialog `main`, step 2 (play): unknown step type `play`",
            ),
            (
                "    - goto: nowhere",
                "flows/test.yaml: dialog `main`, step 1 (goto): `goto` refers to dialog \
                 `nowhere`, which does not exist (dialogs: main, other)",
            ),
            (
                "    - message: {fil: a.wav}",
                "dialog `main`, step 1 (message): unknown field `fil`",
            ),
            ("    - message: {}", "step 1 (message): give exactly one of"),
            (
                "    - message: {file: a.wav, text: hi}",
                "give exactly one of",
            ),
            ("    - message: {text: 'hi {name'}", "not closed"),
            (
                "    - condition: {expr: 'a = 1', then: other}",
                "step 1 (condition): `expr` expression `a = 1`: syntax error at column 3",
            ),
            ("    - condition: {expr: 'a'}", "give `then` and/or `else`"),
            (
                "    - collect: {branches: {\"1\": ghost}}",
                "`branches.1` refers to dialog `ghost`",
            ),
            (
                "    - collect: {max_digits: 0}",
                "`max_digits` must be between",
            ),
            ("    - collect: {terminator: '##'}", "must be one DTMF key"),
            ("    - collect: {branches: {x: other}}", "is not DTMF input"),
            (
                "    - collect: {max_digits: 3, branches: {'1#': other}}",
                "contains the terminator",
            ),
            (
                "    - collect: {branches: {'12': other}}",
                "longer than max_digits (1)",
            ),
            (
                "    - collect: {timeout_ms: 99999999}",
                "more than the maximum",
            ),
            (
                "    - collect: {default: ghost}",
                "`default` refers to dialog `ghost`",
            ),
            ("    - collect: {on_timeout: ghost}", "`on_timeout` refers"),
            ("    - goto: {dialog: other}", "expected a dialog name"),
            ("    - goto_variable: '1bad'", "`variable`"),
            (
                "    - goto_variable: {variable: x, on_error: ghost}",
                "`on_error` refers",
            ),
            ("    - set: []", "is empty"),
            ("    - set: [{name: x}]", "missing field `expr`"),
            ("    - set: [{name: 'a..b', expr: 1}]", "`name`"),
            (
                "    - clear_session: {scope: everything}",
                "unknown variant `everything`",
            ),
            ("    - delay: -5", "not a whole number"),
            ("    - delay: {ms: 4000000}", "more than the maximum"),
            (
                "    - get_time: {variable: t, offset_minutes: 1, timezone_offset: Z}",
                "not both",
            ),
            (
                "    - get_time: {variable: t, timezone: Europe/Nowhere}",
                "not an IANA time zone",
            ),
            (
                "    - get_time: {variable: t, timezone_offset: Europe/Brussels}",
                "use `timezone`",
            ),
            (
                "    - get_time: {variable: t, timezone_offset: 20}",
                "out of range",
            ),
            (
                "    - get_time: {variable: t, timezone: UTC, timezone_offset: 1}",
                "not both",
            ),
            (
                "    - get_time: {variable: t, timezone_offset: '2h'}",
                "not a UTC offset",
            ),
            (
                "    - get_time: {variable: t, offset_minutes: 5000}",
                "out of range",
            ),
            ("    - track_event: {name: ''}", "`name` must not be empty"),
            (
                "    - track_event: {name: e, properties: {p: '1 +'}}",
                "`properties.p` expression",
            ),
            ("    - forward: {to: '+'}", "`to` expression `+`"),
            (
                "    - forward: {to: x, on_failure: ghost}",
                "`on_failure` refers",
            ),
            ("    - hangup: {now: true}", "unknown field `now`"),
            (
                "    - set: [{name: call.x, expr: 1}]",
                "`call.x` is reserved",
            ),
            ("    - set: [{name: transfer, expr: 1}]", "is reserved"),
            (
                "    - collect: {variable: recording.x}",
                "`recording.x` is reserved",
            ),
            ("    - get_time: {variable: call}", "`call` is reserved"),
            ("    - set: [{name: secrets.x, expr: 1}]", "is reserved"),
            ("    - set: [{name: x, expr: secrets.x}]", "reads `secrets`"),
            (
                "    - message: {text: 'key {secrets.X}'}",
                "only allowed in `api`",
            ),
            ("    - clear_session: {variables: [call]}", "is reserved"),
            (
                "    - clear_session: {scope: all, variables: [a]}",
                "not both",
            ),
            (
                "    - clear_session: {variables: []}",
                "`variables` is empty",
            ),
            (
                "    - pause_bot: {on_timeout: ghost}",
                "`on_timeout` refers",
            ),
            (
                "    - pause_bot: {hold: {}}",
                "`hold`: give a prompt file name",
            ),
            (
                "    - api: {url: 'ftp://x'}",
                "must start with http:// or https://",
            ),
            (
                "    - api: {url: 'http://x', method: TRACE}",
                "is not one of",
            ),
            (
                "    - api: {url: 'http://x', body: {a: 1}}",
                "a GET request has no `body`",
            ),
            (
                "    - api: {url: 'http://x', timeout_ms: 0}",
                "`timeout_ms` must be at least 1",
            ),
            (
                "    - api: {url: 'http://x', timeout_ms: 9999999}",
                "more than the maximum",
            ),
            (
                "    - api: {url: 'http://x', on_error: ghost}",
                "`on_error` refers",
            ),
            (
                "    - api: {url: 'http://x', save_as: call}",
                "`save_as`: `call` is reserved",
            ),
            (
                "    - api: {url: 'http://x', headers: {'a b': x}}",
                "not a valid header name",
            ),
            (
                "    - api: {url: 'http://x', auth: {type: basic, username: u, password: hunter2}}",
                "secrets never go in a flow file",
            ),
            (
                "    - api: {url: 'http://x', auth: {type: digest}}",
                "unknown variant `digest`",
            ),
            (
                "    - api: {url: 'http://x', colour: red}",
                "unknown field `colour`",
            ),
            ("    - api: {url: 'http://{1 +}'}", "`url`"),
            ("    - code: {}", "give exactly one of `source`"),
            (
                "    - code: {source: x, file: y.js}",
                "give exactly one of `source`",
            ),
            ("    - code: {file: missing.js}", "missing.js"),
            (
                "    - code: {source: x, memory_kb: 10}",
                "`memory_kb` must be between",
            ),
            (
                "    - json_builder: {payload: 3}",
                "`payload` must be a mapping",
            ),
            (
                "    - json_builder: {payload: {a: 'x = 1'}}",
                "`payload.a` expression `x = 1`",
            ),
            (
                "    - send_mail: {to: [], subject: s}",
                "at least one address",
            ),
            (
                "    - send_mail: {to: nobody, subject: s}",
                "is not an e-mail address",
            ),
            (
                "    - send_mail: {to: a@b.c, subject: ''}",
                "`subject` must not be empty",
            ),
            (
                "    - send_mail: {to: a@b.c, subject: 'x {secrets.P}'}",
                "only allowed in `api`",
            ),
            (
                "    - table: {op: select, table: t}",
                "unknown variant `select`",
            ),
            (
                "    - table: {op: lookup, table: 't; drop', save_as: x}",
                "not a table or column",
            ),
            ("    - table: {op: lookup, table: t}", "needs `save_as`"),
            ("    - table: {op: insert, table: t}", "needs `values`"),
            ("    - table: {op: delete, table: t}", "`where` is required"),
            (
                "    - table: {op: update, table: t, values: {a: 1}}",
                "`where` is required",
            ),
            (
                "    - table: {op: insert, table: t, values: {'a-b': 1}}",
                "not a table or column",
            ),
            (
                "    - knowledge_base: {question: q, min_score: -1}",
                "`min_score` must be 0",
            ),
            (
                "    - knowledge_base: {question: q, on_no_answer: ghost}",
                "`on_no_answer` refers",
            ),
            (
                "    - offload: {to: x, headers: {Contact: y}}",
                "context headers are `X-...`",
            ),
            (
                "    - offload: {to: x, on_failure: ghost}",
                "`on_failure` refers",
            ),
            (
                "    - offload: {to: x, context: [secrets.a]}",
                "cannot be sent",
            ),
            (
                "    - listen: {grammar: [a], keywords: [b]}",
                "at most one of",
            ),
            (
                "    - listen: {grammar: [sales], branches: {billing: other}}",
                "can never be heard",
            ),
            (
                "    - listen: {branches: {'1#': other}}",
                "contains the terminator",
            ),
            (
                "    - listen: {max_digits: 1, branches: {'12': other}}",
                "longer than max_digits",
            ),
            (
                "    - listen: {max_speech_ms: 0}",
                "`max_speech_ms` must be between",
            ),
            ("    - listen: {grammar: ['']}", "needs words"),
            ("    - listen: {branches: {'!!': other}}", "has no words"),
            ("    - listen: {variable: error}", "is reserved"),
            (
                "    - [a, b]",
                "step 1 (?): a step is a mapping with exactly one key",
            ),
            ("    - {goto: other, hangup: null}", "exactly one key"),
        ];
        for (steps, want) in cases {
            let err = load_err(&wrap(steps));
            assert!(err.contains(want), "{steps}\n got: {err}\nwant: {want}");
            assert!(err.starts_with(ORIGIN), "{err}");
        }
    }

    #[test]
    fn top_level_errors() {
        let cases: &[(&str, &str)] = &[
            (
                "name: t\nstart: ghost\ndialogs: {main: [hangup]}",
                "flows/test.yaml: `start`: dialog `ghost` does not exist (dialogs: main)",
            ),
            (
                "name: t\nstart: main\non_error: ghost\ndialogs: {main: [hangup]}",
                "`on_error`: dialog `ghost` does not exist",
            ),
            (
                "name: t\nstart: main\ncolour: red\ndialogs: {main: [hangup]}",
                "unknown field `colour`",
            ),
            (
                "name: t\ndialogs: {main: [hangup]}",
                "missing field `start`",
            ),
            (
                "name: t\nstart: main\ndialogs: {}",
                "the flow has no dialogs",
            ),
            ("name: t\nstart: main\ndialogs: {main: []}", "has no steps"),
            (
                "name: t\nstart: main\ndialogs: {main: hangup}",
                "must be a list of steps",
            ),
            (
                "name: t\nstart: main\nvariables: {call: 1}\ndialogs: {main: [hangup]}",
                "reserved for call context",
            ),
            (
                "name: t\nstart: main\nvariables: {'a.b': 1}\ndialogs: {main: [hangup]}",
                "is not a variable name",
            ),
            (
                "name: ' '\nstart: main\ndialogs: {main: [hangup]}",
                "`name`: must not be empty",
            ),
            (
                "name: t\nstart: main\ninactivity_s: 999999\ndialogs: {main: [hangup]}",
                "`inactivity_s`",
            ),
            (
                "name: t\nstart: main\nanswer_delay_ms: 60001\ndialogs: {main: [hangup]}",
                "`answer_delay_ms`: 60001 is more than the maximum",
            ),
            ("{{{", "flows/test.yaml: "),
        ];
        for (text, want) in cases {
            let err = load_err(text);
            assert!(err.contains(want), "{text}\n got: {err}\nwant: {want}");
        }
    }

    #[test]
    fn load_reads_files_and_names_missing_ones() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f.yaml");
        std::fs::write(
            &file,
            "name: f\nstart: a\ndialogs: {a: [{message: {file: x.wav}}]}",
        )
        .unwrap();
        let def = FlowDefinition::load(&file).unwrap();
        assert_eq!(def.origin(), file.as_path());
        let missing = dir.path().join("missing.yaml");
        let err = FlowDefinition::load(&missing).unwrap_err();
        assert!(matches!(err, FlowLoadError::Io { .. }));
        assert!(err
            .to_string()
            .contains("missing.yaml: cannot read flow file"));
    }
}
