//! Loading the integration and speech steps (`api`, `code`, `json_builder`, `send_mail`,
//! `mail_report`, `table`, `knowledge_base`, `offload`, `listen`). Same rules as the other
//! steps: unknown fields are refused, every reference and expression is checked, and errors
//! say which field is wrong.

use super::*;
use crate::flow::definition::{
    AuthSpec, ListenStep, OffloadStep, RequestSpec, RequestStep, Waiting,
};
use crate::flow::value::valid_address;
use crate::flow::{ListenMode, TableOp};

/// Default `timeout_ms` per step: a caller is waiting, so a few seconds at most, except for
/// `offload`, whose transfer has its own SIP timers (REFER 15 s, ringing).
pub fn default_timeout_ms(kind: StepKind) -> u64 {
    match kind {
        StepKind::Code => 2_000,
        StepKind::JsonBuilder | StepKind::Table | StepKind::KnowledgeBase => 3_000,
        StepKind::Offload => 60_000,
        _ => 5_000,
    }
}

/// Default `listen.max_speech_ms`.
pub const DEFAULT_MAX_SPEECH_MS: u64 = 10_000;
/// Upper bound for `listen.max_speech_ms`.
const MAX_SPEECH_MS: u64 = 60_000;
/// `code.memory_kb` bounds and default.
pub const DEFAULT_MEMORY_KB: u32 = 16_384;
const MIN_MEMORY_KB: u32 = 1_024;
const MAX_MEMORY_KB: u32 = 262_144;
/// Largest `code.file` read at load time.
const MAX_SCRIPT_BYTES: u64 = 256 * 1024;
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiSpec {
    #[serde(default)]
    method: Option<String>,
    url: String,
    #[serde(default)]
    headers: Mapping,
    #[serde(default)]
    query: Mapping,
    #[serde(default)]
    body: Option<Yaml>,
    #[serde(default)]
    auth: Option<AuthYaml>,
    save_as: Option<String>,
    timeout_ms: Option<u64>,
    on_error: Option<String>,
    hold: Option<Yaml>,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum AuthYaml {
    Basic { username: String, password: String },
    Bearer { token: String },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CodeSpec {
    source: Option<String>,
    file: Option<String>,
    memory_kb: Option<u32>,
    save_as: Option<String>,
    timeout_ms: Option<u64>,
    on_error: Option<String>,
    hold: Option<Yaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DispatchSpec {
    payload: Yaml,
    save_as: Option<String>,
    timeout_ms: Option<u64>,
    on_error: Option<String>,
    hold: Option<Yaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MailSpec {
    to: Yaml,
    #[serde(default)]
    cc: Option<Yaml>,
    subject: String,
    #[serde(default)]
    body: String,
    save_as: Option<String>,
    timeout_ms: Option<u64>,
    on_error: Option<String>,
    hold: Option<Yaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TableSpec {
    op: TableOpYaml,
    table: String,
    #[serde(default, rename = "where")]
    filter: Mapping,
    #[serde(default)]
    values: Mapping,
    save_as: Option<String>,
    timeout_ms: Option<u64>,
    on_error: Option<String>,
    hold: Option<Yaml>,
}

#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum TableOpYaml {
    Lookup,
    Insert,
    Update,
    Delete,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KbSpec {
    question: Yaml,
    source: Option<Yaml>,
    min_score: Option<f64>,
    save_as: Option<String>,
    on_no_answer: Option<String>,
    #[serde(default = "yes")]
    say: bool,
    timeout_ms: Option<u64>,
    on_error: Option<String>,
    hold: Option<Yaml>,
}

/// Default `knowledge_base.min_score`.
pub const DEFAULT_MIN_SCORE: f64 = 1.0;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct OffloadSpec {
    to: Yaml,
    #[serde(default)]
    headers: Mapping,
    context: Option<Vec<String>>,
    on_failure: Option<String>,
    timeout_ms: Option<u64>,
    on_error: Option<String>,
    hold: Option<Yaml>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenYaml {
    grammar: Option<Vec<String>>,
    keywords: Option<Vec<String>>,
    #[serde(default)]
    free: bool,
    max_speech_ms: Option<u64>,
    #[serde(default)]
    barge_in: bool,
    save_as: Option<String>,
    #[serde(default)]
    branches: Mapping,
    default: Option<String>,
    on_no_match: Option<String>,
    on_timeout: Option<String>,
    // The keypad fallback: collect's fields.
    max_digits: Option<usize>,
    #[serde(default = "hash")]
    terminator: Option<String>,
    #[serde(default = "inter_digit")]
    inter_digit_timeout_ms: u64,
    variable: Option<String>,
    timeout_ms: Option<u64>,
    on_error: Option<String>,
    hold: Option<Yaml>,
}

/// Lower case, punctuation as spaces, single spaces: how phrases and recognised text compare.
pub fn normalise_phrase(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_alphanumeric() || c == '\'' {
                c.to_lowercase().collect::<String>()
            } else {
                " ".to_string()
            }
        })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Keypad input (`1`, `*0`, `12#`), as opposed to a spoken phrase.
fn is_keypad(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
}

fn save_as(s: Option<&str>) -> StepResult<Option<VarPath>> {
    s.map(|v| target("save_as", v)).transpose()
}

fn mapping_entries(
    field: &str,
    map: Mapping,
    mode: Mode,
    secrets: bool,
) -> StepResult<Vec<(String, ValueTpl)>> {
    let mut out = Vec::with_capacity(map.len());
    for (k, v) in map {
        let key = match k {
            Yaml::String(s) => s,
            Yaml::Number(n) => n.to_string(),
            other => {
                return Err(format!(
                    "`{field}` keys must be text, found {}",
                    describe(&other)
                ))
            }
        };
        let name = format!("{field}.{key}");
        let value = if secrets {
            ValueTpl::compile(&v, mode, &name).and_then(|v| {
                check_value_exprs(&v)?;
                Ok(v)
            })?
        } else {
            value_in(&name, &v, mode)?
        };
        out.push((key, value));
    }
    Ok(out)
}

/// An SQL-safe name: a letter or `_`, then letters, digits, `_` (at most 64).
fn identifier(field: &str, name: &str) -> StepResult<String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        return Err(format!(
            "`{field}`: `{name}` is not a table or column name (letters, digits, `_`; at most 64)"
        ));
    }
    Ok(name.to_string())
}

/// An HTTP header name (RFC 9110 token).
fn header_name(field: &str, name: &str) -> StepResult<()> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("`{field}`: `{name}` is not a valid header name"))
    }
}

fn addresses(field: &str, yaml: Yaml) -> StepResult<Vec<ValueTpl>> {
    let items = match yaml {
        Yaml::Sequence(items) => items,
        Yaml::Null => Vec::new(),
        other => vec![other],
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let name = format!("{field}.{i}");
        let Yaml::String(text) = &item else {
            return Err(format!("`{name}`: an address is text"));
        };
        let v = value_in(&name, &Yaml::String(text.clone()), Mode::Text)?;
        if let Some(lit) = v.literal_text() {
            if !valid_address(&lit) {
                return Err(format!("`{name}`: `{lit}` is not an e-mail address"));
            }
        }
        out.push(v);
    }
    Ok(out)
}

impl Ctx<'_> {
    fn waiting(
        &self,
        kind: StepKind,
        timeout_ms: Option<u64>,
        on_error: Option<&str>,
        hold: Option<Yaml>,
    ) -> StepResult<Waiting> {
        let ms = timeout_ms.unwrap_or(default_timeout_ms(kind));
        if ms == 0 {
            return Err("`timeout_ms` must be at least 1".into());
        }
        Ok(Waiting {
            timeout: duration("timeout_ms", ms)?,
            on_error: self.opt_dialog("on_error", on_error)?,
            hold: hold.map(|h| prompt("hold", h)).transpose()?,
        })
    }

    pub(super) fn request(&self, kind: StepKind, body: Yaml) -> StepResult<Step> {
        let (waiting, save, spec) = match kind {
            StepKind::Api => {
                let s: ApiSpec = spec(body)?;
                let method = s
                    .method
                    .unwrap_or_else(|| "GET".into())
                    .to_ascii_uppercase();
                if !METHODS.contains(&method.as_str()) {
                    return Err(format!(
                        "`method` `{method}` is not one of {}",
                        METHODS.join(", ")
                    ));
                }
                if s.url.trim().is_empty() {
                    return Err("`url` must not be empty".into());
                }
                let url = Template::parse(&s.url).map_err(|e| format!("`url`: {e}"))?;
                url.exprs()
                    .try_for_each(|e| checked(e.clone()).map(|_| ()))?;
                if let Some(lit) = url.literal() {
                    if !(lit.starts_with("http://") || lit.starts_with("https://")) {
                        return Err(format!("`url` `{lit}` must start with http:// or https://"));
                    }
                }
                let headers = mapping_entries("headers", s.headers, Mode::Text, true)?;
                for (name, _) in &headers {
                    header_name("headers", name)?;
                }
                let query = mapping_entries("query", s.query, Mode::Text, true)?;
                let body = match s.body {
                    None | Some(Yaml::Null) => None,
                    Some(_) if method == "GET" => {
                        return Err("a GET request has no `body`; use `query`".into())
                    }
                    Some(b) => {
                        let v = ValueTpl::compile(&b, Mode::Text, "body")?;
                        check_value_exprs(&v)?;
                        Some(v)
                    }
                };
                let auth = match s.auth {
                    None => None,
                    Some(AuthYaml::Basic { username, password }) => Some(AuthSpec::Basic {
                        username: secret_template("auth.username", &username, false)?,
                        password: secret_template("auth.password", &password, true)?,
                    }),
                    Some(AuthYaml::Bearer { token }) => Some(AuthSpec::Bearer {
                        token: secret_template("auth.token", &token, true)?,
                    }),
                };
                (
                    self.waiting(kind, s.timeout_ms, s.on_error.as_deref(), s.hold)?,
                    s.save_as,
                    RequestSpec::Api {
                        method,
                        url,
                        headers,
                        query,
                        body,
                        auth,
                    },
                )
            }
            StepKind::Code => {
                let s: CodeSpec = spec(body)?;
                let source: Arc<str> = match (s.source, s.file) {
                    (Some(src), None) if !src.trim().is_empty() => Arc::from(src.as_str()),
                    (None, Some(file)) if !file.trim().is_empty() => self.script(&file)?,
                    _ => return Err("give exactly one of `source` (JavaScript) or `file`".into()),
                };
                let memory_kb = s.memory_kb.unwrap_or(DEFAULT_MEMORY_KB);
                if !(MIN_MEMORY_KB..=MAX_MEMORY_KB).contains(&memory_kb) {
                    return Err(format!(
                        "`memory_kb` must be between {MIN_MEMORY_KB} and {MAX_MEMORY_KB}, not \
                         {memory_kb}"
                    ));
                }
                (
                    self.waiting(kind, s.timeout_ms, s.on_error.as_deref(), s.hold)?,
                    s.save_as,
                    RequestSpec::Code { source, memory_kb },
                )
            }
            StepKind::JsonBuilder => {
                let s: DispatchSpec = spec(body)?;
                if !matches!(s.payload, Yaml::Mapping(_)) {
                    return Err(format!(
                        "`payload` must be a mapping of keys to expressions, found {}",
                        describe(&s.payload)
                    ));
                }
                (
                    self.waiting(kind, s.timeout_ms, s.on_error.as_deref(), s.hold)?,
                    s.save_as,
                    RequestSpec::Dispatch {
                        payload: value("payload", &s.payload)?,
                    },
                )
            }
            StepKind::SendMail | StepKind::MailReport => {
                let s: MailSpec = spec(body)?;
                let to = addresses("to", s.to)?;
                if to.is_empty() {
                    return Err("`to` needs at least one address".into());
                }
                let cc = match s.cc {
                    Some(cc) => addresses("cc", cc)?,
                    None => Vec::new(),
                };
                if s.subject.trim().is_empty() {
                    return Err("`subject` must not be empty".into());
                }
                (
                    self.waiting(kind, s.timeout_ms, s.on_error.as_deref(), s.hold)?,
                    s.save_as,
                    RequestSpec::Mail {
                        to,
                        cc,
                        subject: template("subject", &s.subject)?,
                        body: template("body", &s.body)?,
                        report: kind == StepKind::MailReport,
                    },
                )
            }
            StepKind::Table => {
                let s: TableSpec = spec(body)?;
                let table = identifier("table", &s.table)?;
                let filter = mapping_entries("where", s.filter, Mode::Expr, false)?;
                let values = mapping_entries("values", s.values, Mode::Expr, false)?;
                for (col, _) in filter.iter() {
                    identifier("where", col)?;
                }
                for (col, _) in values.iter() {
                    identifier("values", col)?;
                }
                let op = match s.op {
                    TableOpYaml::Lookup => TableOp::Lookup,
                    TableOpYaml::Insert => TableOp::Insert,
                    TableOpYaml::Update => TableOp::Update,
                    TableOpYaml::Delete => TableOp::Delete,
                };
                match op {
                    TableOp::Lookup if s.save_as.is_none() => {
                        return Err("`op: lookup` needs `save_as` (where the row goes)".into())
                    }
                    TableOp::Lookup | TableOp::Delete if !values.is_empty() => {
                        return Err("`values` is only for `insert` and `update`".into())
                    }
                    TableOp::Insert if values.is_empty() => {
                        return Err("`op: insert` needs `values`".into())
                    }
                    TableOp::Insert if !filter.is_empty() => {
                        return Err("`op: insert` takes no `where`".into())
                    }
                    TableOp::Update if values.is_empty() => {
                        return Err("`op: update` needs `values`".into())
                    }
                    TableOp::Update | TableOp::Delete if filter.is_empty() => {
                        return Err(
                            "`where` is required for `update` and `delete` (it would touch \
                             every row)"
                                .into(),
                        )
                    }
                    _ => {}
                }
                (
                    self.waiting(kind, s.timeout_ms, s.on_error.as_deref(), s.hold)?,
                    s.save_as,
                    RequestSpec::Table {
                        op,
                        table,
                        filter,
                        values,
                    },
                )
            }
            _ => {
                let s: KbSpec = spec(body)?;
                let min_score = s.min_score.unwrap_or(DEFAULT_MIN_SCORE);
                if !min_score.is_finite() || min_score < 0.0 {
                    return Err(format!("`min_score` must be 0 or more, not {min_score}"));
                }
                (
                    self.waiting(kind, s.timeout_ms, s.on_error.as_deref(), s.hold)?,
                    s.save_as,
                    RequestSpec::KnowledgeBase {
                        question: value("question", &s.question)?,
                        source: s
                            .source
                            .map(|src| value_in("source", &src, Mode::Text))
                            .transpose()?,
                        min_score,
                        on_no_answer: self.opt_dialog("on_no_answer", s.on_no_answer.as_deref())?,
                        say: s.say,
                    },
                )
            }
        };
        Ok(Step::Request(Box::new(RequestStep {
            kind,
            waiting,
            save_as: save_as(save.as_deref())?,
            spec,
        })))
    }

    /// Reads `code.file` relative to the flow file, bounded in size.
    fn script(&self, file: &str) -> StepResult<Arc<str>> {
        let p = Path::new(file);
        let full = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.origin.parent().unwrap_or(Path::new("")).join(p)
        };
        let meta =
            std::fs::metadata(&full).map_err(|e| format!("`file` {}: {e}", full.display()))?;
        if meta.len() > MAX_SCRIPT_BYTES {
            return Err(format!(
                "`file` {} is {} bytes; the limit is {MAX_SCRIPT_BYTES}",
                full.display(),
                meta.len()
            ));
        }
        let text = std::fs::read_to_string(&full)
            .map_err(|e| format!("`file` {}: {e}", full.display()))?;
        if text.trim().is_empty() {
            return Err(format!("`file` {} is empty", full.display()));
        }
        Ok(Arc::from(text.as_str()))
    }

    pub(super) fn offload(&self, body: Yaml) -> StepResult<Step> {
        let s: OffloadSpec = spec(body)?;
        let to = value("to", &s.to)?;
        if let Some(lit) = to.literal_text() {
            if lit.trim().is_empty() {
                return Err("`to` must not be empty".into());
            }
        }
        let headers = mapping_entries("headers", s.headers, Mode::Expr, false)?;
        for (name, _) in &headers {
            header_name("headers", name)?;
            let lower = name.to_ascii_lowercase();
            if !(lower.starts_with("x-") || lower == "user-to-user") {
                return Err(format!(
                    "`headers`: `{name}` is not allowed; context headers are `X-...` or \
                     `User-to-User`"
                ));
            }
        }
        let context = s
            .context
            .map(|names| {
                names
                    .iter()
                    .map(|n| path("context", n))
                    .collect::<StepResult<Vec<_>>>()
            })
            .transpose()?;
        if let Some(paths) = &context {
            if let Some(p) = paths.iter().find(|p| p.root() == SECRETS_ROOT) {
                return Err(format!("`context`: `{p}` cannot be sent"));
            }
        }
        Ok(Step::Offload(Box::new(OffloadStep {
            to,
            headers,
            context,
            on_failure: self.opt_dialog("on_failure", s.on_failure.as_deref())?,
            waiting: self.waiting(
                StepKind::Offload,
                s.timeout_ms,
                s.on_error.as_deref(),
                s.hold,
            )?,
        })))
    }

    pub(super) fn listen(&self, body: Yaml) -> StepResult<Step> {
        let s: ListenYaml = spec(body)?;
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
        let mut phrases: Vec<(String, DialogId)> = Vec::new();
        let mut keys = BTreeMap::new();
        for (key, target) in s.branches {
            let key = match key {
                Yaml::String(s) => s,
                Yaml::Number(n) if n.is_u64() => n.to_string(),
                other => {
                    return Err(format!(
                        "branch keys are phrases or keypad input, found {}",
                        describe(&other)
                    ))
                }
            };
            let Yaml::String(target) = target else {
                return Err(format!("branch `{key}` must name a dialog"));
            };
            let dialog = self.dialog(&format!("branches.{key}"), &target)?;
            if is_keypad(&key) {
                if terminator.is_some_and(|t| key.contains(t)) {
                    return Err(format!(
                        "branch `{key}` contains the terminator, so it can never match"
                    ));
                }
                keys.insert(key, dialog);
            } else {
                let phrase = normalise_phrase(&key);
                if phrase.is_empty() {
                    return Err(format!("branch `{key}` has no words"));
                }
                if phrases.iter().any(|(p, _)| *p == phrase) {
                    return Err(format!("branch `{key}` is listed twice"));
                }
                phrases.push((phrase, dialog));
            }
        }
        let longest_key = keys.keys().map(|k| k.chars().count()).max().unwrap_or(1);
        let max_digits = s.max_digits.unwrap_or(longest_key);
        if max_digits == 0 || max_digits > MAX_DIGITS {
            return Err(format!(
                "`max_digits` must be between 1 and {MAX_DIGITS}, not {max_digits}"
            ));
        }
        if let Some(k) = keys.keys().find(|k| k.chars().count() > max_digits) {
            return Err(format!(
                "branch `{k}` is longer than max_digits ({max_digits}), so it can never match"
            ));
        }
        let words = |field: &str, list: Vec<String>| -> StepResult<Vec<String>> {
            let out: Vec<String> = list.iter().map(|w| normalise_phrase(w)).collect();
            if out.is_empty() || out.iter().any(String::is_empty) {
                return Err(format!("`{field}` needs words (none may be empty)"));
            }
            Ok(out)
        };
        let mode = match (s.grammar, s.keywords, s.free) {
            (Some(g), None, false) => ListenMode::Grammar(words("grammar", g)?),
            (None, Some(k), false) => ListenMode::Keywords(words("keywords", k)?),
            (None, None, true) => ListenMode::Free,
            (None, None, false) if !phrases.is_empty() => {
                ListenMode::Grammar(phrases.iter().map(|(p, _)| p.clone()).collect())
            }
            (None, None, false) => ListenMode::Free,
            _ => return Err("give at most one of `grammar`, `keywords` and `free`".into()),
        };
        if let ListenMode::Grammar(entries) | ListenMode::Keywords(entries) = &mode {
            for (phrase, _) in &phrases {
                let reachable = entries
                    .iter()
                    .any(|e| contains_words(e, phrase) || contains_words(phrase, e));
                if !reachable {
                    return Err(format!(
                        "branch `{phrase}` can never be heard: it is not in the grammar or \
                         keywords ({})",
                        entries.join(", ")
                    ));
                }
            }
        }
        let max_speech_ms = s.max_speech_ms.unwrap_or(DEFAULT_MAX_SPEECH_MS);
        if max_speech_ms == 0 || max_speech_ms > MAX_SPEECH_MS {
            return Err(format!(
                "`max_speech_ms` must be between 1 and {MAX_SPEECH_MS}, not {max_speech_ms}"
            ));
        }
        let waiting = self.waiting(
            StepKind::Listen,
            s.timeout_ms,
            s.on_error.as_deref(),
            s.hold,
        )?;
        Ok(Step::Listen(Box::new(ListenStep {
            mode,
            max_speech: Duration::from_millis(max_speech_ms),
            barge_in: s.barge_in,
            save_as: save_as(s.save_as.as_deref())?,
            phrases,
            keys,
            keypad: CollectRules {
                max_digits,
                terminator,
                timeout: None,
                inter_digit_timeout: duration("inter_digit_timeout_ms", s.inter_digit_timeout_ms)?,
            },
            variable: s
                .variable
                .as_deref()
                .map(|v| target("variable", v))
                .transpose()?,
            default: self.opt_dialog("default", s.default.as_deref())?,
            on_no_match: self.opt_dialog("on_no_match", s.on_no_match.as_deref())?,
            on_timeout: self.opt_dialog("on_timeout", s.on_timeout.as_deref())?,
            waiting,
        })))
    }
}

/// True if `phrase`'s words appear, in order and adjacent, in `text` (both normalised).
pub fn contains_words(text: &str, phrase: &str) -> bool {
    if phrase.is_empty() {
        return false;
    }
    let t: Vec<&str> = text.split(' ').collect();
    let p: Vec<&str> = phrase.split(' ').collect();
    t.windows(p.len()).any(|w| w == p.as_slice())
}

/// An auth field: a `{secrets.NAME}` placeholder or a variable, never a literal secret.
fn secret_template(field: &str, text: &str, secret: bool) -> StepResult<Template> {
    let t = Template::parse(text).map_err(|e| format!("`{field}`: {e}"))?;
    t.exprs().try_for_each(|e| checked(e.clone()).map(|_| ()))?;
    if secret && t.literal().is_some() {
        return Err(format!(
            "`{field}`: secrets never go in a flow file; write `{{{SECRETS_ROOT}.NAME}}` and set \
             NAME in the environment or the config"
        ));
    }
    Ok(t)
}
