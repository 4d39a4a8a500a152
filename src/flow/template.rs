//! Text with `{var.path}` placeholders, used by `message` (file names and TTS text) and
//! `track_event` names. Placeholders are full expressions, parsed at load time so a typo fails
//! the flow file instead of a live call.

use serde_json::{Map, Value};
use thiserror::Error;

use super::expr::{display_value, Expr, ExprError};

#[derive(Debug, Clone, PartialEq, Error)]
pub enum TemplateError {
    #[error("template syntax: {0}")]
    Syntax(String),
    #[error("in placeholder `{{{placeholder}}}`: {source}")]
    Expr {
        placeholder: String,
        source: ExprError,
    },
    #[error(
        "placeholder `{{{placeholder}}}` produced `{value}`, which is not allowed in a file name"
    )]
    UnsafePath { placeholder: String, value: String },
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Expr(Expr),
    /// `{secrets.NAME}`: never evaluated by the flow; rendered back as written so the
    /// integration executor can fill it at send time.
    Secret(String),
}

/// The root under which `{secrets.NAME}` placeholders live (never a variable).
pub const SECRETS_ROOT: &str = "secrets";

/// A parsed template. `{{` and `}}` stand for literal braces.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    pub fn parse(source: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = source.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '}' => {
                    return Err(TemplateError::Syntax(
                        "`}` without a matching `{` (write `}}` for a literal brace)".to_string(),
                    ))
                }
                '{' => {
                    let mut inner = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some('{') => {
                                return Err(TemplateError::Syntax(
                                    "`{` inside a placeholder".to_string(),
                                ))
                            }
                            Some(c) => inner.push(c),
                            None => {
                                return Err(TemplateError::Syntax(format!(
                                    "placeholder `{{{inner}` is not closed with `}}`"
                                )))
                            }
                        }
                    }
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    if let Some(name) = secret_name(inner.trim()) {
                        parts.push(Part::Secret(name.to_string()));
                        continue;
                    }
                    let expr = Expr::parse(inner.trim()).map_err(|source| TemplateError::Expr {
                        placeholder: inner.clone(),
                        source,
                    })?;
                    parts.push(Part::Expr(expr));
                }
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Self { parts })
    }

    /// The text if there are no placeholders (lets the loader check literal prompt files).
    pub fn literal(&self) -> Option<String> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(_) | Part::Secret(_) => return None,
            }
        }
        Some(out)
    }

    /// True if the text holds a `{secrets.NAME}` placeholder.
    pub fn has_secrets(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Secret(_)))
    }

    /// The expressions of the placeholders, for load-time checks.
    pub fn exprs(&self) -> impl Iterator<Item = &Expr> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(e) => Some(e),
            _ => None,
        })
    }

    /// Renders with the session variables; missing variables render as nothing.
    pub fn render(&self, vars: &Map<String, Value>) -> Result<String, TemplateError> {
        self.render_inner(vars, false)
    }

    /// Like [`Template::render`], but a placeholder value may not contain path separators or
    /// `..`: a caller's input must never pick a file outside the prompts directory.
    pub fn render_file_name(&self, vars: &Map<String, Value>) -> Result<String, TemplateError> {
        self.render_inner(vars, true)
    }

    fn render_inner(
        &self,
        vars: &Map<String, Value>,
        file_name: bool,
    ) -> Result<String, TemplateError> {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Secret(name) => {
                    out.push_str(&format!("{{{SECRETS_ROOT}.{name}}}"));
                }
                Part::Expr(expr) => {
                    let value = expr.eval(vars).map_err(|source| TemplateError::Expr {
                        placeholder: expr.source().to_string(),
                        source,
                    })?;
                    let text = display_value(&value);
                    if file_name
                        && (text.contains('/') || text.contains('\\') || text.contains(".."))
                    {
                        return Err(TemplateError::UnsafePath {
                            placeholder: expr.source().to_string(),
                            value: text,
                        });
                    }
                    out.push_str(&text);
                }
            }
        }
        Ok(out)
    }
}

/// `secrets.NAME` (NAME: letters, digits, `_`) -> NAME.
fn secret_name(inner: &str) -> Option<&str> {
    let name = inner.strip_prefix(SECRETS_ROOT)?.strip_prefix('.')?;
    (!name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
        .then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars() -> Map<String, Value> {
        json!({"name": "Ann", "lang": "nl", "n": 2, "evil": "../../etc/passwd"})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn renders_placeholders() {
        let cases = [
            ("plain text", "plain text"),
            ("Hello {name}!", "Hello Ann!"),
            ("{lang}/greeting.wav", "nl/greeting.wav"),
            ("{ n + 1 } items", "3 items"),
            ("missing: [{nope.x}]", "missing: []"),
            ("braces {{literal}}", "braces {literal}"),
            ("{name}{lang}", "Annnl"),
            ("", ""),
        ];
        for (src, want) in cases {
            let t = Template::parse(src).unwrap();
            assert_eq!(t.render(&vars()).unwrap(), want, "{src}");
        }
    }

    #[test]
    fn rejects_bad_templates() {
        for (src, text) in [
            ("Hello {name", "not closed"),
            ("a } b", "without a matching"),
            ("{a {b}}", "inside a placeholder"),
            ("{}", "ends where a value"),
            ("{1 +}", "ends where a value"),
        ] {
            let err = Template::parse(src).unwrap_err();
            assert!(err.to_string().contains(text), "{src}: {err}");
        }
    }

    #[test]
    fn runtime_errors_name_the_placeholder() {
        let t = Template::parse("x{n / 0}").unwrap();
        let err = t.render(&vars()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "in placeholder `{n / 0}`: division by zero"
        );
    }

    #[test]
    fn file_names_refuse_traversal_from_variables() {
        let t = Template::parse("{evil}.wav").unwrap();
        assert!(t.render(&vars()).is_ok());
        assert!(matches!(
            t.render_file_name(&vars()),
            Err(TemplateError::UnsafePath { .. })
        ));
        let ok = Template::parse("{lang}_menu.wav").unwrap();
        assert_eq!(ok.render_file_name(&vars()).unwrap(), "nl_menu.wav");
    }

    #[test]
    fn secrets_are_left_for_the_executor() {
        let t = Template::parse("Bearer {secrets.API_TOKEN} for {name}").unwrap();
        assert!(t.has_secrets());
        assert_eq!(
            t.render(&vars()).unwrap(),
            "Bearer {secrets.API_TOKEN} for Ann"
        );
        assert!(!Template::parse("{name}").unwrap().has_secrets());
        // Anything but a bare `secrets.NAME` is an ordinary expression.
        assert!(!Template::parse("{secrets}").unwrap().has_secrets());
    }

    #[test]
    fn literal_only_without_placeholders() {
        assert_eq!(
            Template::parse("a{{b}}").unwrap().literal().as_deref(),
            Some("a{b}")
        );
        assert_eq!(Template::parse("a{b}").unwrap().literal(), None);
    }
}
