//! One call's variables. A machine owns exactly one session, so calls never share state.
//!
//! Everything lives in one JSON object so expressions see a single namespace. The engine fills a
//! few reserved roots (the *context*: `call`, `transfer`, `recording`); every other root is a
//! flow *variable*. `clear_session` and `close` erase by that split.

use serde::Deserialize;
use serde_json::{Map, Value};
use thiserror::Error;

use super::expr::VarPath;

/// Roots the engine owns; everything else is a flow variable.
pub const CONTEXT_ROOTS: &[&str] = &["call", "transfer", "recording", "error"];

/// Roots a flow can never assign: the context, plus `secrets` (placeholders only).
pub const RESERVED_ROOTS: &[&str] = &["call", "transfer", "recording", "error", "secrets"];

/// True if a flow may not write under this root.
pub fn is_reserved(root: &str) -> bool {
    RESERVED_ROOTS.contains(&root)
}

/// Which part of a session `clear_session` / `close` erases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The flow's variables (non-context roots).
    Variables,
    /// What the engine recorded about the call (`call`, `transfer`, `recording`).
    Context,
    All,
}

impl Scope {
    fn covers(self, root: &str) -> bool {
        let context = CONTEXT_ROOTS.contains(&root);
        match self {
            Scope::Variables => !context,
            Scope::Context => context,
            Scope::All => true,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Error)]
#[error("cannot set `{path}`: `{blocker}` holds a {kind}, not an object")]
pub struct SetError {
    pub path: String,
    pub blocker: String,
    pub kind: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct Session {
    vars: Map<String, Value>,
}

impl Session {
    pub fn new(initial: &Map<String, Value>) -> Self {
        Self {
            vars: initial.clone(),
        }
    }

    pub fn vars(&self) -> &Map<String, Value> {
        &self.vars
    }

    pub fn get(&self, path: &VarPath) -> Option<&Value> {
        path.lookup(&self.vars)
    }

    /// Sets a value, creating missing intermediate objects. Refuses to replace a non-object
    /// on the way, since silently discarding data would hide flow bugs.
    pub fn set(&mut self, path: &VarPath, value: Value) -> Result<(), SetError> {
        let Some((last, parents)) = path.segments().split_last() else {
            return Ok(());
        };
        let mut cur = &mut self.vars;
        for (i, seg) in parents.iter().enumerate() {
            let slot = cur
                .entry(seg.clone())
                .or_insert_with(|| Value::Object(Map::new()));
            cur = match slot {
                Value::Object(map) => map,
                other => {
                    return Err(SetError {
                        path: path.to_string(),
                        blocker: path.segments()[..=i].join("."),
                        kind: kind_of(other),
                    })
                }
            };
        }
        cur.insert(last.clone(), value);
        Ok(())
    }

    /// Removes the value at a path (no-op if missing). Returns whether something was removed.
    pub fn remove(&mut self, path: &VarPath) -> bool {
        let Some((last, parents)) = path.segments().split_last() else {
            return false;
        };
        let mut cur = &mut self.vars;
        for seg in parents {
            match cur.get_mut(seg) {
                Some(Value::Object(map)) => cur = map,
                _ => return false,
            }
        }
        cur.remove(last).is_some()
    }

    /// Merges `value` into the variable `key`: objects merge key by key (recursively), any
    /// other value replaces what was there (Chatlayer's `session` reply).
    pub fn merge(&mut self, key: &str, value: Value) {
        fn merge_into(slot: &mut Value, value: Value) {
            match (slot, value) {
                (Value::Object(old), Value::Object(new)) => {
                    for (k, v) in new {
                        match old.get_mut(&k) {
                            Some(existing) => merge_into(existing, v),
                            None => {
                                old.insert(k, v);
                            }
                        }
                    }
                }
                (slot, value) => *slot = value,
            }
        }
        match self.vars.get_mut(key) {
            Some(existing) => merge_into(existing, value),
            None => {
                self.vars.insert(key.to_string(), value);
            }
        }
    }

    /// Replaces a whole context root (`error`).
    pub fn set_context_root(&mut self, root: &str, value: Value) {
        self.vars.insert(root.to_string(), value);
    }

    /// Sets a context value the engine owns (`root.key`).
    pub fn set_context(&mut self, root: &str, key: &str, value: Value) {
        let entry = self
            .vars
            .entry(root.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !entry.is_object() {
            *entry = Value::Object(Map::new());
        }
        if let Value::Object(map) = entry {
            map.insert(key.to_string(), value);
        }
    }

    pub fn remove_context_key(&mut self, root: &str, key: &str) {
        if let Some(Value::Object(map)) = self.vars.get_mut(root) {
            map.remove(key);
        }
    }

    /// Erases the scope. With `reset_to`, flow variables go back to their initial values
    /// (a fresh session) instead of vanishing.
    pub fn clear(&mut self, scope: Scope, reset_to: Option<&Map<String, Value>>) {
        self.vars.retain(|root, _| !scope.covers(root));
        if let Some(initial) = reset_to {
            for (k, v) in initial {
                if scope.covers(k) {
                    self.vars.insert(k.clone(), v.clone());
                }
            }
        }
    }
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "list",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> VarPath {
        VarPath::parse(s).unwrap()
    }

    fn initial() -> Map<String, Value> {
        json!({"forward_number": "+3225551212", "lang": "en"})
            .as_object()
            .cloned()
            .unwrap()
    }

    #[test]
    fn set_and_get_nested_paths() {
        let mut s = Session::new(&initial());
        s.set(&p("a.b.c"), json!(1)).unwrap();
        assert_eq!(s.get(&p("a.b.c")), Some(&json!(1)));
        assert_eq!(s.get(&p("a.b")), Some(&json!({"c": 1})));
        s.set(&p("lang"), json!("nl")).unwrap();
        assert_eq!(s.get(&p("lang")), Some(&json!("nl")));
        let err = s.set(&p("lang.x"), json!(1)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot set `lang.x`: `lang` holds a string, not an object"
        );
    }

    #[test]
    fn clear_by_scope() {
        let setup = || {
            let mut s = Session::new(&initial());
            s.set(&p("choice"), json!("1")).unwrap();
            s.set(&p("lang"), json!("nl")).unwrap();
            s.set_context("call", "from", json!("alice"));
            s.set_context("transfer", "reason", json!("busy"));
            s
        };
        let keys = |s: &Session| s.vars().keys().cloned().collect::<Vec<_>>().join(",");

        let mut s = setup();
        s.clear(Scope::Variables, None);
        assert_eq!(keys(&s), "call,transfer");

        let mut s = setup();
        s.clear(Scope::Variables, Some(&initial()));
        assert_eq!(keys(&s), "call,forward_number,lang,transfer");
        assert_eq!(s.get(&p("lang")), Some(&json!("en")), "reset to initial");

        let mut s = setup();
        s.clear(Scope::Context, Some(&initial()));
        assert_eq!(keys(&s), "choice,forward_number,lang");
        assert_eq!(s.get(&p("lang")), Some(&json!("nl")), "variables untouched");

        let mut s = setup();
        s.clear(Scope::All, None);
        assert!(s.vars().is_empty());
    }

    #[test]
    fn remove_and_merge() {
        let mut s = Session::new(&initial());
        s.set(&p("a.b"), json!(1)).unwrap();
        s.set(&p("a.c"), json!(2)).unwrap();
        assert!(s.remove(&p("a.b")));
        assert!(!s.remove(&p("a.b")));
        assert!(!s.remove(&p("lang.x")), "through a non-object");
        assert_eq!(s.get(&p("a")), Some(&json!({"c": 2})));
        s.merge("a", json!({"d": {"e": 1}}));
        s.merge("a", json!({"d": {"f": 2}, "c": 3}));
        assert_eq!(
            s.get(&p("a")),
            Some(&json!({"c": 3, "d": {"e": 1, "f": 2}}))
        );
        s.merge("lang", json!(["x"]));
        assert_eq!(s.get(&p("lang")), Some(&json!(["x"])));
        s.merge("fresh", json!(1));
        assert_eq!(s.get(&p("fresh")), Some(&json!(1)));
        assert!(is_reserved("secrets") && is_reserved("call") && !is_reserved("resp"));
    }

    #[test]
    fn context_helpers() {
        let mut s = Session::default();
        s.set_context("transfer", "reason", json!("busy"));
        s.set_context("transfer", "detail", json!("486"));
        s.remove_context_key("transfer", "reason");
        assert_eq!(s.vars().get("transfer"), Some(&json!({"detail": "486"})));
    }
}
