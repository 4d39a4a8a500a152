//! `{secrets.NAME}` placeholders: the flow leaves them in a step's text, the executor fills
//! them at send time from `[integrations.secrets]` or the `VOXGATE_SECRET_<NAME>` environment
//! variable. Values never reach the flow's variables, the step log or the logs: every error
//! message and every response that leaves an executor goes through [`Secrets::redact`].

use std::collections::BTreeMap;

use crate::config::Secret;

/// Prefix of the environment variables a secret may come from. A flow can name only
/// variables under it, never the gateway's whole environment.
pub const ENV_PREFIX: &str = "VOXGATE_SECRET_";

const OPEN: &str = "{secrets.";

/// Letters, digits and `_`, 1 to 64 of them.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("unknown secret `{0}` (set [integrations.secrets] {0} or ${ENV_PREFIX}{0})")]
    Unknown(String),
    #[error("malformed secret placeholder near `{0}`")]
    Malformed(String),
}

/// The configured secrets plus the environment fallback.
#[derive(Clone, Default)]
pub struct Secrets {
    configured: BTreeMap<String, Secret>,
    /// Looks a name up in the environment (replaceable in tests).
    env: Option<fn(&str) -> Option<String>>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secrets")
            .field("names", &self.configured.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn from_env(name: &str) -> Option<String> {
    std::env::var(format!("{ENV_PREFIX}{name}")).ok()
}

/// The values a fill used, so the caller can scrub them from whatever comes back.
#[derive(Default, Clone)]
pub struct Used(Vec<String>);

impl std::fmt::Debug for Used {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Used({} secrets)", self.0.len())
    }
}

impl Used {
    /// Replaces every used secret value in `text` with `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.0 {
            // Very short values would blank out ordinary words; they are not redacted.
            if v.len() >= 4 {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
    }

    /// Redacts every string (keys too) of a JSON value.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        if self.0.is_empty() {
            return;
        }
        match value {
            serde_json::Value::String(s) => {
                let r = self.redact(s);
                if r != *s {
                    *s = r;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => {
                let taken = std::mem::take(map);
                for (k, mut v) in taken {
                    self.redact_json(&mut v);
                    map.insert(self.redact(&k), v);
                }
            }
            _ => {}
        }
    }

    pub fn merge(&mut self, other: Used) {
        for v in other.0 {
            if !self.0.contains(&v) {
                self.0.push(v);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl Secrets {
    pub fn new(configured: BTreeMap<String, Secret>) -> Self {
        Secrets {
            configured,
            env: Some(from_env),
        }
    }

    /// Only the configured values, no environment (tests).
    pub fn without_env(configured: BTreeMap<String, Secret>) -> Self {
        Secrets {
            configured,
            env: None,
        }
    }

    fn lookup(&self, name: &str) -> Option<String> {
        if let Some(s) = self.configured.get(name) {
            return Some(s.expose().to_string());
        }
        self.env.and_then(|f| f(name))
    }

    /// Fills every `{secrets.NAME}` of `text`, recording the values used in `used`.
    pub fn fill(&self, text: &str, used: &mut Used) -> Result<String, SecretError> {
        if !text.contains(OPEN) {
            return Ok(text.to_string());
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(at) = rest.find(OPEN) {
            out.push_str(&rest[..at]);
            let after = &rest[at + OPEN.len()..];
            let Some(end) = after.find('}') else {
                return Err(SecretError::Malformed(
                    rest[at..].chars().take(24).collect(),
                ));
            };
            let name = &after[..end];
            if !valid_name(name) {
                return Err(SecretError::Malformed(
                    rest[at..].chars().take(24).collect(),
                ));
            }
            let value = self
                .lookup(name)
                .ok_or_else(|| SecretError::Unknown(name.to_string()))?;
            if !used.0.contains(&value) {
                used.0.push(value.clone());
            }
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }

    /// Fills the string leaves (not the keys) of a JSON value.
    pub fn fill_json(
        &self,
        value: &serde_json::Value,
        used: &mut Used,
    ) -> Result<serde_json::Value, SecretError> {
        Ok(match value {
            serde_json::Value::String(s) => serde_json::Value::String(self.fill(s, used)?),
            serde_json::Value::Array(items) => serde_json::Value::Array(
                items
                    .iter()
                    .map(|v| self.fill_json(v, used))
                    .collect::<Result<_, _>>()?,
            ),
            serde_json::Value::Object(map) => {
                let mut out = serde_json::Map::new();
                for (k, v) in map {
                    out.insert(k.clone(), self.fill_json(v, used)?);
                }
                serde_json::Value::Object(out)
            }
            other => other.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secrets() -> Secrets {
        let mut m = BTreeMap::new();
        m.insert("API_KEY".to_string(), Secret::new("k3y-value"));
        m.insert("PW".to_string(), Secret::new("hunter22"));
        Secrets::without_env(m)
    }

    #[test]
    fn fills_placeholders_and_records_values() {
        let s = secrets();
        let mut used = Used::default();
        let out = s
            .fill(
                "https://x/?key={secrets.API_KEY}&p={secrets.PW}&k={secrets.API_KEY}",
                &mut used,
            )
            .unwrap();
        assert_eq!(out, "https://x/?key=k3y-value&p=hunter22&k=k3y-value");
        assert_eq!(used.0.len(), 2);
        assert_eq!(
            used.redact("echo k3y-value and hunter22"),
            "echo *** and ***"
        );
        assert_eq!(
            s.fill("no placeholders {call.from}", &mut used).unwrap(),
            "no placeholders {call.from}"
        );
    }

    #[test]
    fn unknown_and_malformed_placeholders_are_errors_without_values() {
        let s = secrets();
        let mut used = Used::default();
        let e = s.fill("{secrets.NOPE}", &mut used).unwrap_err();
        assert_eq!(e, SecretError::Unknown("NOPE".into()));
        assert!(e.to_string().contains("VOXGATE_SECRET_NOPE"));
        assert!(matches!(
            s.fill("{secrets.API_KEY", &mut used),
            Err(SecretError::Malformed(_))
        ));
        assert!(matches!(
            s.fill("{secrets.a b}", &mut used),
            Err(SecretError::Malformed(_))
        ));
    }

    #[test]
    fn json_fill_and_redaction() {
        let s = secrets();
        let mut used = Used::default();
        let v = s
            .fill_json(
                &json!({"auth": "Bearer {secrets.API_KEY}", "n": 1, "l": ["{secrets.PW}"]}),
                &mut used,
            )
            .unwrap();
        assert_eq!(
            v,
            json!({"auth": "Bearer k3y-value", "n": 1, "l": ["hunter22"]})
        );
        let mut echoed =
            json!({"headers": {"authorization": "Bearer k3y-value"}, "k3y-value": true});
        used.redact_json(&mut echoed);
        assert_eq!(
            echoed,
            json!({"headers": {"authorization": "Bearer ***"}, "***": true})
        );
    }

    #[test]
    fn debug_never_shows_values() {
        let s = secrets();
        let text = format!("{s:?} {:?}", Secret::new("hunter22"));
        assert!(
            !text.contains("hunter22") && !text.contains("k3y-value"),
            "{text}"
        );
        assert!(text.contains("API_KEY"));
    }

    #[test]
    fn environment_fallback_uses_the_prefix() {
        let s = Secrets {
            configured: BTreeMap::new(),
            env: Some(|n| (n == "FROM_ENV").then(|| "env-value".to_string())),
        };
        let mut used = Used::default();
        assert_eq!(
            s.fill("{secrets.FROM_ENV}", &mut used).unwrap(),
            "env-value"
        );
        assert!(s.fill("{secrets.PATH}", &mut used).is_err());
        assert!(valid_name("A_1") && !valid_name("") && !valid_name("a-b"));
    }
}
