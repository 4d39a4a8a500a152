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

use super::clock::{check_offset_minutes, parse_timezone_offset};
use super::collect::CollectRules;
use super::definition::{Content, Dialog, DialogId, FlowDefinition, Step, StepKind};
use super::expr::{Expr, VarPath};
use super::session::{Scope, CONTEXT_ROOTS};
use super::template::Template;

/// Default for `inactivity_s`.
pub const DEFAULT_INACTIVITY_S: u64 = 30;
/// Default for `collect.inter_digit_timeout_ms`.
pub const DEFAULT_INTER_DIGIT_MS: u64 = 3000;
/// Upper bound for any timeout or delay in a flow file (one hour).
const MAX_MS: u64 = 3_600_000;
const MAX_DIGITS: usize = 64;
/// Upper bound for `answer_delay_ms`: callers and trunks give up on long ringing.
const MAX_ANSWER_DELAY_MS: u64 = 60_000;
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
        if CONTEXT_ROOTS.contains(&path.root()) {
            return Err(setting(
                "variables",
                format!("`{name}` is reserved for call context (reserved: {CONTEXT_ROOTS:?})"),
            ));
        }
        let json = serde_json::to_value(&value)
            .map_err(|e| setting("variables", format!("`{name}`: {e}")))?;
        variables.insert(name, json);
    }

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
        dialogs,
        by_name,
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
    expr: ExprSrc,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScopeSpec {
    #[serde(default)]
    scope: Option<Scope>,
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
    timezone_offset: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TrackEventSpec {
    name: String,
    #[serde(default)]
    properties: BTreeMap<String, ExprSrc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ForwardSpec {
    to: ExprSrc,
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
                    expr: expr("expr", &s.expr.0)?,
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
                    out.push((path("name", &item.name)?, expr("expr", &item.expr.0)?));
                }
                Step::Set(out)
            }
            StepKind::ClearSession | StepKind::Close => {
                let s: ScopeSpec = spec(body)?;
                let scope = s.scope.unwrap_or(Scope::All);
                if kind == StepKind::Close {
                    Step::Close(scope)
                } else {
                    Step::ClearSession(scope)
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
                let offset_minutes = match (s.offset_minutes, s.timezone_offset) {
                    (Some(_), Some(_)) => {
                        return Err("give `offset_minutes` or `timezone_offset`, not both".into())
                    }
                    (Some(m), None) => {
                        check_offset_minutes(m).map_err(|e| format!("`offset_minutes`: {e}"))?;
                        m
                    }
                    (None, Some(tz)) => {
                        parse_timezone_offset(&tz).map_err(|e| format!("`timezone_offset`: {e}"))?
                    }
                    (None, None) => 0,
                };
                Step::GetTime {
                    variable: path("variable", &s.variable)?,
                    offset_minutes,
                }
            }
            StepKind::TrackEvent => {
                let s: TrackEventSpec = spec(body)?;
                if s.name.trim().is_empty() {
                    return Err("`name` must not be empty".into());
                }
                let mut properties = Vec::with_capacity(s.properties.len());
                for (key, src) in s.properties {
                    properties.push((key.clone(), expr(&format!("properties.{key}"), &src.0)?));
                }
                Step::TrackEvent {
                    name: template("name", &s.name)?,
                    properties,
                }
            }
            StepKind::Forward => {
                let s: ForwardSpec = spec(body)?;
                Step::Forward {
                    to: expr("to", &s.to.0)?,
                    on_failure: self.opt_dialog("on_failure", s.on_failure.as_deref())?,
                }
            }
            StepKind::PauseBot
            | StepKind::StartRecording
            | StepKind::StopRecording
            | StepKind::Hangup => {
                let _: EmptySpec = spec(body)?;
                match kind {
                    StepKind::PauseBot => Step::PauseBot,
                    StepKind::StartRecording => Step::StartRecording,
                    StepKind::StopRecording => Step::StopRecording,
                    _ => Step::Hangup,
                }
            }
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
                .map(|v| path("variable", v))
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

fn template(field: &str, src: &str) -> StepResult<Template> {
    Template::parse(src).map_err(|e| format!("`{field}`: {e}"))
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
    - track_event: {name: "menu_{pin}", properties: {pin: pin, n: 1}}
    - start_recording
    - stop_recording: {}
    - forward: {to: "'+' + pin", on_failure: other}
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
        assert_eq!(kinds.len(), 22);
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
