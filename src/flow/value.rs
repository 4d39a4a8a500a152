//! Structured step values (`api` bodies, `json_builder` payloads, `table` conditions, ...):
//! YAML scalars, lists and mappings whose text leaves are compiled once at load time, either
//! as *expressions* (`caller: call.from`) or as *text* with `{placeholders}`
//! (`subject: "Callback for {call.from}"`), depending on the field (docs/flows.md says which).
//!
//! Two conveniences, in both modes:
//! - a leaf that is exactly one placeholder (`"{customer}"`) keeps the value's type (a number,
//!   list or object), as Chatlayer's variables do in an API body;
//! - in expression mode, text that can never be an expression but reads as a phone number
//!   (`+3225551212`), a URI (`sip:agents@pbx`, `https://...`) or an e-mail address is taken
//!   literally, so such values need no second quotes.

use serde_json::{Map, Value};
use serde_yaml::Value as Yaml;

use super::expr::{display_value, Expr};
use super::template::Template;

/// How the text leaves of a value are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `call.from`, `'+' + digits`, `count + 1`.
    Expr,
    /// `Hello {name}`.
    Text,
}

/// A compiled value, evaluated against the session variables when its step runs.
#[derive(Debug, Clone, PartialEq)]
pub enum ValueTpl {
    Lit(Value),
    Expr(Expr),
    Text(Template),
    List(Vec<ValueTpl>),
    Map(Vec<(String, ValueTpl)>),
}

/// Deepest YAML nesting accepted in a value (hostile-input guard).
const MAX_NESTING: usize = 32;

impl ValueTpl {
    /// Compiles a YAML value; errors name the path inside the value (`body.items.0`).
    pub fn compile(yaml: &Yaml, mode: Mode, field: &str) -> Result<Self, String> {
        compile(yaml, mode, field, 0)
    }

    /// Evaluates against the variables. `{secrets.NAME}` placeholders stay in the text.
    pub fn eval(&self, vars: &Map<String, Value>) -> Result<Value, String> {
        Ok(match self {
            ValueTpl::Lit(v) => v.clone(),
            ValueTpl::Expr(e) => e.eval(vars).map_err(|err| format!("`{e}`: {err}"))?,
            ValueTpl::Text(t) => Value::String(t.render(vars).map_err(|e| e.to_string())?),
            ValueTpl::List(items) => Value::Array(
                items
                    .iter()
                    .map(|i| i.eval(vars))
                    .collect::<Result<_, _>>()?,
            ),
            ValueTpl::Map(entries) => {
                let mut out = Map::new();
                for (k, v) in entries {
                    out.insert(k.clone(), v.eval(vars).map_err(|e| format!("`{k}`: {e}"))?);
                }
                Value::Object(out)
            }
        })
    }

    /// Evaluates and writes the result as text (`null` gives "").
    pub fn eval_text(&self, vars: &Map<String, Value>) -> Result<String, String> {
        self.eval(vars).map(|v| display_value(&v))
    }

    /// True if a `{secrets.NAME}` placeholder appears anywhere in the value.
    pub fn has_secrets(&self) -> bool {
        match self {
            ValueTpl::Lit(_) | ValueTpl::Expr(_) => false,
            ValueTpl::Text(t) => t.has_secrets(),
            ValueTpl::List(items) => items.iter().any(ValueTpl::has_secrets),
            ValueTpl::Map(entries) => entries.iter().any(|(_, v)| v.has_secrets()),
        }
    }

    /// The literal text, if the value is one (lets the loader check fixed values).
    pub fn literal_text(&self) -> Option<String> {
        match self {
            ValueTpl::Lit(Value::String(s)) => Some(s.clone()),
            ValueTpl::Text(t) => t.literal(),
            _ => None,
        }
    }
}

fn compile(yaml: &Yaml, mode: Mode, field: &str, depth: usize) -> Result<ValueTpl, String> {
    if depth > MAX_NESTING {
        return Err(format!(
            "`{field}` is nested more than {MAX_NESTING} levels deep"
        ));
    }
    Ok(match yaml {
        Yaml::Null => ValueTpl::Lit(Value::Null),
        Yaml::Bool(b) => ValueTpl::Lit(Value::Bool(*b)),
        Yaml::Number(_) => {
            ValueTpl::Lit(serde_json::to_value(yaml).map_err(|e| format!("`{field}`: {e}"))?)
        }
        Yaml::String(s) => compile_str(s, mode, field)?,
        Yaml::Sequence(items) => ValueTpl::List(
            items
                .iter()
                .enumerate()
                .map(|(i, item)| compile(item, mode, &format!("{field}.{i}"), depth + 1))
                .collect::<Result<_, _>>()?,
        ),
        Yaml::Mapping(map) => {
            let mut entries = Vec::with_capacity(map.len());
            for (k, v) in map {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Number(n) => n.to_string(),
                    Yaml::Bool(b) => b.to_string(),
                    _ => return Err(format!("`{field}`: keys must be text")),
                };
                let inner = compile(v, mode, &format!("{field}.{key}"), depth + 1)?;
                entries.push((key, inner));
            }
            ValueTpl::Map(entries)
        }
        Yaml::Tagged(_) => return Err(format!("`{field}`: YAML tags are not supported")),
    })
}

fn compile_str(text: &str, mode: Mode, field: &str) -> Result<ValueTpl, String> {
    if mode == Mode::Expr {
        if is_phone(text.trim()) {
            return Ok(ValueTpl::Lit(Value::String(text.trim().to_string())));
        }
        // Object literals (`{'name': 'Ann'}`) start like a placeholder: try the expression first.
        if let Ok(e) = Expr::parse(text) {
            return Ok(ValueTpl::Expr(e));
        }
    }
    // `{expr}` alone keeps the value's type, in either mode.
    if let Some(inner) = single_placeholder(text) {
        let template = Template::parse(text).map_err(|e| format!("`{field}`: {e}"))?;
        if template.has_secrets() {
            return Ok(ValueTpl::Text(template));
        }
        return Expr::parse(inner.trim())
            .map(ValueTpl::Expr)
            .map_err(|e| format!("`{field}`: in placeholder `{{{inner}}}`: {e}"));
    }
    match mode {
        Mode::Text => {
            let template = Template::parse(text).map_err(|e| format!("`{field}`: {e}"))?;
            Ok(match template.literal() {
                Some(lit) => ValueTpl::Lit(Value::String(lit)),
                None => ValueTpl::Text(template),
            })
        }
        Mode::Expr if is_phone(text.trim()) => {
            Ok(ValueTpl::Lit(Value::String(text.trim().to_string())))
        }
        Mode::Expr => match Expr::parse(text) {
            Ok(e) => Ok(ValueTpl::Expr(e)),
            Err(err) => {
                if is_literal_text(text) {
                    return Ok(ValueTpl::Lit(Value::String(text.trim().to_string())));
                }
                // Text with placeholders that is not an expression: `Order {id} for {name}`.
                if text.contains('{') {
                    if let Ok(t) = Template::parse(text) {
                        return Ok(ValueTpl::Text(t));
                    }
                }
                Err(format!("`{field}` expression `{text}`: {err}"))
            }
        },
    }
}

/// `{expr}` with nothing around it (and no second placeholder inside).
fn single_placeholder(text: &str) -> Option<&str> {
    let t = text.trim();
    let inner = t.strip_prefix('{')?.strip_suffix('}')?;
    if inner.contains('{') || inner.contains('}') || inner.trim().is_empty() {
        return None;
    }
    Some(inner)
}

/// Text that is not an expression but is plainly a literal: a phone number, a URI or an
/// e-mail address.
pub fn is_literal_text(text: &str) -> bool {
    let t = text.trim();
    if t.is_empty() || t.chars().any(char::is_whitespace) && !is_phone(t) {
        return false;
    }
    is_phone(t) || is_uri(t) || is_email(t)
}

/// `+3225551212`, `+32 2 555 12 12`, `+1 (555) 010-0000`.
fn is_phone(t: &str) -> bool {
    let Some(rest) = t.strip_prefix('+') else {
        return false;
    };
    rest.starts_with(|c: char| c.is_ascii_digit())
        && rest
            .chars()
            .all(|c| c.is_ascii_digit() || matches!(c, ' ' | '-' | '.' | '(' | ')'))
}

/// `scheme:rest` (`sip:`, `tel:`, `https://`...). An expression can never contain `name:`.
fn is_uri(t: &str) -> bool {
    let Some((scheme, rest)) = t.split_once(':') else {
        return false;
    };
    !rest.is_empty()
        && scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
        && !t.contains(['{', '}', '\'', '"'])
}

fn is_email(t: &str) -> bool {
    let mut parts = t.split('@');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(user), Some(host), None) => {
            !user.is_empty()
                && host.contains('.')
                && !t.contains(['{', '}', '\'', '"', '(', ')', ',', ';'])
        }
        _ => false,
    }
}

/// `user@host`, no spaces or separators (a rendered address is checked again at run time).
pub fn valid_address(a: &str) -> bool {
    let a = a.trim();
    match a.split_once('@') {
        Some((user, host)) => {
            !user.is_empty()
                && !host.is_empty()
                && !host.contains('@')
                && !a.contains(|c: char| c.is_whitespace() || matches!(c, ',' | ';' | '<' | '>'))
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Map<String, Value> {
        json!({"name": "Ann", "n": 2, "call": {"from": "+3211"}, "items": [1, 2]})
            .as_object()
            .cloned()
            .unwrap()
    }

    fn eval(yaml: &str, mode: Mode) -> Result<Value, String> {
        let y: Yaml = serde_yaml::from_str(yaml).unwrap();
        ValueTpl::compile(&y, mode, "f")?.eval(&vars())
    }

    #[test]
    fn expression_mode() {
        let cases = [
            ("call.from", json!("+3211")),
            ("n + 1", json!(3)),
            ("\"'+' + n\"", json!("+2")),
            ("+3225551212", json!(3225551212u64)),
            ("'+3225551212'", json!("+3225551212")),
            ("\"+32 2 555 12 12\"", json!("+32 2 555 12 12")),
            (
                "sip:agents@127.0.0.1:5080",
                json!("sip:agents@127.0.0.1:5080"),
            ),
            (
                "https://example.com/x?a=1",
                json!("https://example.com/x?a=1"),
            ),
            ("ops@example.com", json!("ops@example.com")),
            ("'{items}'", json!([1, 2])),
            ("'Order for {name}'", json!("Order for Ann")),
            (
                "{a: name, b: [n, 3, true, null]}",
                json!({"a": "Ann", "b": [2, 3, true, null]}),
            ),
            ("7", json!(7)),
            ("missing", json!(null)),
        ];
        for (yaml, want) in cases {
            assert_eq!(eval(yaml, Mode::Expr).unwrap(), want, "{yaml}");
        }
    }

    #[test]
    fn phone_numbers_as_unquoted_yaml_text_stay_text() {
        // YAML reads `"+3225551212"` (quoted) as text: that text is a literal number.
        let y = Yaml::String("+3225551212".into());
        let v = ValueTpl::compile(&y, Mode::Expr, "to").unwrap();
        assert_eq!(v.eval(&vars()).unwrap(), json!("+3225551212"));
    }

    #[test]
    fn text_mode() {
        let cases = [
            ("'Hello {name}'", json!("Hello Ann")),
            ("call.from", json!("call.from")),
            ("'{n}'", json!(2)),
            ("'{{literal}}'", json!("{literal}")),
            ("'Bearer {secrets.TOKEN}'", json!("Bearer {secrets.TOKEN}")),
            ("'{secrets.TOKEN}'", json!("{secrets.TOKEN}")),
        ];
        for (yaml, want) in cases {
            assert_eq!(eval(yaml, Mode::Text).unwrap(), want, "{yaml}");
        }
    }

    #[test]
    fn errors_name_the_field() {
        let err = eval("{a: {b: 'x = 1'}}", Mode::Expr).unwrap_err();
        assert!(err.contains("`f.a.b` expression `x = 1`"), "{err}");
        let err = eval("'{1 +}'", Mode::Text).unwrap_err();
        assert!(err.contains("`f`"), "{err}");
        let err = eval("'n / 0'", Mode::Expr).unwrap_err();
        assert!(err.contains("division by zero"), "{err}");
        let deep = format!("{}1{}", "[".repeat(40), "]".repeat(40));
        assert!(eval(&deep, Mode::Expr).unwrap_err().contains("nested"));
    }

    #[test]
    fn secrets_are_detected() {
        let y: Yaml = serde_yaml::from_str("{h: 'Bearer {secrets.T}', x: n}").unwrap();
        assert!(ValueTpl::compile(&y, Mode::Text, "f")
            .unwrap()
            .has_secrets());
        let y: Yaml = serde_yaml::from_str("{h: 'Bearer {name}'}").unwrap();
        assert!(!ValueTpl::compile(&y, Mode::Text, "f")
            .unwrap()
            .has_secrets());
    }

    #[test]
    fn literal_text_detection() {
        for t in [
            "+3225551212",
            "+1 (555) 010-0000",
            "sip:a@b",
            "tel:+32",
            "a@b.com",
        ] {
            assert!(is_literal_text(t), "{t}");
        }
        for t in ["a = 1", "+", "+x", "x:", "a b", "{x}@y.com", "hello", "a@b"] {
            assert!(!is_literal_text(t), "{t}");
        }
    }
}
