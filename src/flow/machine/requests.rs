//! The integration steps on the machine's side: build the [`StepRequest`] from the step and
//! the session, wait (with a hold prompt and the step's own deadline), then store the result
//! and apply Chatlayer's reply semantics (`session`, `messages`, `nextDialogstate`).

use super::*;
use crate::flow::definition::{AuthSpec, OffloadStep, RequestSpec, RequestStep};
use crate::flow::expr::VarPath;
use crate::flow::session::is_reserved;
use crate::flow::{
    HttpAuth, HttpRequest, KbQuery, MailRequest, ScriptRequest, StepFailure, StepRequest,
    TableRequest,
};

/// Messages from one reply said at most (a hostile backend must not talk forever).
const MAX_REPLY_MESSAGES: usize = 20;

fn text_of(v: &Value) -> String {
    match v {
        Value::Object(_) | Value::Array(_) => v.to_string(),
        other => display_value(other),
    }
}

impl FlowMachine {
    pub(super) fn exec_request(
        &mut self,
        r: &RequestStep,
        now: Instant,
    ) -> Result<Next, StepError> {
        let kind = r.kind;
        let vars = self.session.vars();
        let fail = |e: String| StepError::from(format!("{kind}: {e}"));
        let request = match &r.spec {
            RequestSpec::Api {
                method,
                url,
                headers,
                query,
                body,
                auth,
            } => {
                let url = url.render(vars).map_err(|e| fail(format!("url: {e}")))?;
                let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
                if !scheme_ok {
                    return Err(fail(format!(
                        "url `{url}` does not start with http:// or https://"
                    )));
                }
                let pairs = |list: &[(String, crate::flow::value::ValueTpl)], what: &str| {
                    list.iter()
                        .map(|(k, v)| {
                            v.eval(vars)
                                .map(|val| (k.clone(), text_of(&val)))
                                .map_err(|e| fail(format!("{what}.{k}: {e}")))
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                let render = |t: &crate::flow::template::Template, what: &str| {
                    t.render(vars).map_err(|e| fail(format!("{what}: {e}")))
                };
                StepRequest::Http(HttpRequest {
                    method: method.clone(),
                    url,
                    headers: pairs(headers, "headers")?,
                    query: pairs(query, "query")?,
                    body: body
                        .as_ref()
                        .map(|b| b.eval(vars).map_err(|e| fail(format!("body: {e}"))))
                        .transpose()?,
                    auth: match auth {
                        None => None,
                        Some(AuthSpec::Basic { username, password }) => Some(HttpAuth::Basic {
                            username: render(username, "auth.username")?,
                            password: render(password, "auth.password")?,
                        }),
                        Some(AuthSpec::Bearer { token }) => Some(HttpAuth::Bearer {
                            token: render(token, "auth.token")?,
                        }),
                    },
                })
            }
            RequestSpec::Code { source, memory_kb } => StepRequest::Script(ScriptRequest {
                source: Arc::clone(source),
                args: Value::Object(vars.clone()),
                memory_kb: *memory_kb,
            }),
            RequestSpec::Dispatch { payload } => StepRequest::Dispatch {
                payload: payload
                    .eval(vars)
                    .map_err(|e| fail(format!("payload: {e}")))?,
            },
            RequestSpec::Mail {
                to,
                cc,
                subject,
                body,
                report,
            } => {
                let list = |items: &[crate::flow::value::ValueTpl], what: &str| {
                    let mut out = Vec::new();
                    for item in items {
                        let value = item.eval(vars).map_err(|e| fail(format!("{what}: {e}")))?;
                        // A variable may hold one address or a list of them.
                        let texts = match value {
                            Value::Array(a) => a.iter().map(display_value).collect(),
                            other => vec![display_value(&other)],
                        };
                        for a in texts {
                            let a = a.trim().to_string();
                            if a.is_empty() {
                                continue;
                            }
                            if !crate::flow::value::valid_address(&a) {
                                return Err(fail(format!(
                                    "{what}: `{a}` is not an e-mail address"
                                )));
                            }
                            out.push(a);
                        }
                    }
                    Ok(out)
                };
                let to = list(to, "to")?;
                if to.is_empty() {
                    return Err(fail("`to` gave no address".into()));
                }
                StepRequest::Mail(MailRequest {
                    to,
                    cc: list(cc, "cc")?,
                    subject: subject
                        .render(vars)
                        .map_err(|e| fail(format!("subject: {e}")))?,
                    body: body.render(vars).map_err(|e| fail(format!("body: {e}")))?,
                    report: *report,
                })
            }
            RequestSpec::Table {
                op,
                table,
                filter,
                values,
            } => {
                let eval = |list: &[(String, crate::flow::value::ValueTpl)], what: &str| {
                    list.iter()
                        .map(|(k, v)| {
                            v.eval(vars)
                                .map(|val| (k.clone(), val))
                                .map_err(|e| fail(format!("{what}.{k}: {e}")))
                        })
                        .collect::<Result<Vec<_>, _>>()
                };
                StepRequest::Table(TableRequest {
                    op: *op,
                    table: table.clone(),
                    filter: eval(filter, "where")?,
                    values: eval(values, "values")?,
                })
            }
            RequestSpec::KnowledgeBase {
                question,
                source,
                min_score,
                on_no_answer,
                ..
            } => {
                let q = question
                    .eval_text(vars)
                    .map_err(|e| fail(format!("question: {e}")))?;
                if q.trim().is_empty() {
                    // Nothing to ask (the caller said nothing): no answer, without a request.
                    tracing::debug!("knowledge_base: empty question");
                    self.save(
                        r.save_as.as_ref(),
                        json!({"answer": null, "source": null, "score": 0}),
                    )?;
                    return Ok(on_no_answer.map_or(Next::Continue, Next::Goto));
                }
                let source = source
                    .as_ref()
                    .map(|s| s.eval_text(vars).map_err(|e| fail(format!("source: {e}"))))
                    .transpose()?
                    .filter(|s| !s.trim().is_empty());
                StepRequest::KnowledgeBase(KbQuery {
                    question: q,
                    source,
                    min_score: *min_score,
                })
            }
        };
        let id = self.next_id();
        tracing::info!(flow = %self.def.name(), id, kind = %kind, "integration request");
        self.actions.push_back(FlowAction::Request {
            id,
            request,
            timeout: r.waiting.timeout,
        });
        if let Some(hold) = &r.waiting.hold {
            self.start_hold(hold.clone(), HoldOwner::Step, now);
        }
        Ok(Next::Wait(Wait::Request {
            id,
            deadline: now + r.waiting.timeout,
        }))
    }

    pub(super) fn on_request_done(
        &mut self,
        id: u64,
        result: Result<Value, StepFailure>,
        now: Instant,
    ) {
        if !matches!(self.wait, Wait::Request { id: w, .. } if w == id) {
            tracing::debug!(id, "late or unknown request result dropped");
            return;
        }
        let def = Arc::clone(&self.def);
        let Some(Step::Request(r)) = def.dialog(self.pc.0).steps.get(self.pc.1) else {
            return;
        };
        self.wait = Wait::Ready;
        if self
            .hold
            .as_ref()
            .is_some_and(|h| h.owner == HoldOwner::Step)
        {
            self.stop_hold();
        }
        let outcome = match result {
            Err(f) => {
                tracing::warn!(id, code = %f.code, message = %f.message, "integration step failed");
                Err(StepError {
                    message: format!("{}: {}: {}", r.kind, f.code, f.message),
                    fallback: r.waiting.on_error,
                    code: "request",
                    detail_code: Some(f.code),
                })
            }
            Ok(value) => self
                .request_result(r, value)
                .map_err(|e| e.with_fallback(r.waiting.on_error)),
        };
        self.conclude(outcome);
        self.run(now);
    }

    pub(super) fn request_timed_out(&mut self, id: u64) {
        let (kind, timeout, fallback) = match self.current_step() {
            Some(Step::Request(r)) => (r.kind, r.waiting.timeout, r.waiting.on_error),
            _ => return,
        };
        tracing::warn!(flow = %self.def.name(), id, kind = %kind, "integration step timed out");
        self.actions.push_back(FlowAction::CancelRequest { id });
        self.wait = Wait::Ready;
        self.step_failed(StepError {
            message: format!(
                "{kind}: no result within {} ms (timed out; request cancelled)",
                timeout.as_millis()
            ),
            fallback,
            code: "timeout",
            detail_code: None,
        });
    }

    /// Stores a step's result and decides where the flow goes.
    fn request_result(&mut self, r: &RequestStep, value: Value) -> Result<Next, StepError> {
        let kind = r.kind;
        match &r.spec {
            RequestSpec::Api { .. } => {
                let status = value.get("status").and_then(Value::as_u64).unwrap_or(0);
                self.save(r.save_as.as_ref(), value.clone())?;
                if !(100..400).contains(&status) {
                    return Err(StepError {
                        message: format!("api: the server answered HTTP {status}"),
                        fallback: None,
                        code: "http_status",
                        detail_code: Some(status.to_string()),
                    });
                }
                match value.get("body") {
                    Some(body) if (200..300).contains(&status) && is_chatlayer_reply(body) => {
                        self.apply_reply(kind, body)
                    }
                    _ => Ok(Next::Continue),
                }
            }
            RequestSpec::Code { .. } => {
                self.save(r.save_as.as_ref(), value.clone())?;
                self.apply_reply(kind, &value)
            }
            RequestSpec::Table { op, .. } => {
                if *op == crate::flow::TableOp::Lookup {
                    let row = value.get("row").cloned().unwrap_or(Value::Null);
                    let count = value
                        .get("count")
                        .cloned()
                        .unwrap_or_else(|| Value::from(u64::from(!row.is_null())));
                    if let Some(path) = &r.save_as {
                        self.save(Some(path), row)?;
                        let count_path = VarPath::parse(&format!("{path}_count"))
                            .map_err(|e| StepError::from(e.to_string()))?;
                        self.save(Some(&count_path), count)?;
                    }
                } else {
                    self.save(r.save_as.as_ref(), value)?;
                }
                Ok(Next::Continue)
            }
            RequestSpec::KnowledgeBase {
                on_no_answer, say, ..
            } => {
                let answer = value
                    .get("answer")
                    .and_then(Value::as_str)
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .map(str::to_string);
                let stored = json!({
                    "answer": answer,
                    "source": value.get("source").cloned().unwrap_or(Value::Null),
                    "score": value.get("score").cloned().unwrap_or(Value::from(0)),
                });
                self.save(r.save_as.as_ref(), stored)?;
                match answer {
                    None => Ok(on_no_answer.map_or(Next::Continue, Next::Goto)),
                    Some(text) if *say => {
                        let last = self.say_text(text).map_err(StepError::from)?;
                        Ok(Next::Wait(Wait::Messages { last, then: None }))
                    }
                    Some(_) => Ok(Next::Continue),
                }
            }
            RequestSpec::Dispatch { .. } | RequestSpec::Mail { .. } => {
                self.save(r.save_as.as_ref(), value)?;
                Ok(Next::Continue)
            }
        }
    }

    fn save(&mut self, path: Option<&VarPath>, value: Value) -> Result<(), StepError> {
        if let Some(p) = path {
            self.session
                .set(p, value)
                .map_err(|e| StepError::from(e.to_string()))?;
        }
        Ok(())
    }

    /// Chatlayer's reply: `session` merged into the variables, then `messages` said in order,
    /// then `nextDialogstate` (a dialog name). An unknown dialog is a step error, checked
    /// before anything is said.
    fn apply_reply(&mut self, kind: StepKind, reply: &Value) -> Result<Next, StepError> {
        let Some(obj) = reply.as_object() else {
            return Ok(Next::Continue);
        };
        let target = match obj.get("nextDialogstate") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.trim().is_empty() => None,
            Some(Value::String(name)) => {
                Some(self.def.dialog_id(name.trim()).ok_or_else(|| StepError {
                    message: format!(
                        "{kind}: nextDialogstate `{name}` names no dialog of this flow"
                    ),
                    fallback: None,
                    code: "next_dialog",
                    detail_code: None,
                })?)
            }
            Some(other) => {
                return Err(StepError::from(format!(
                    "{kind}: nextDialogstate must be a dialog name, not `{other}`"
                )))
            }
        };
        match obj.get("session") {
            Some(Value::Object(vars)) => {
                for (key, value) in vars {
                    let valid = VarPath::parse(key).is_ok_and(|p| p.segments().len() == 1);
                    if !valid || is_reserved(key) {
                        tracing::warn!(%key, "{kind}: session key ignored (reserved or not a name)");
                        continue;
                    }
                    self.session.merge(key, value.clone());
                }
            }
            None | Some(Value::Null) => {}
            Some(other) => {
                tracing::warn!(%other, "{kind}: `session` is not an object; ignored");
            }
        }
        let mut texts = obj.get("messages").map(message_texts).unwrap_or_default();
        if texts.len() > MAX_REPLY_MESSAGES {
            tracing::warn!(
                n = texts.len(),
                "{kind}: too many messages; the rest are dropped"
            );
            texts.truncate(MAX_REPLY_MESSAGES);
        }
        let mut last = None;
        for text in texts {
            last = Some(self.say_text(text).map_err(StepError::from)?);
        }
        Ok(match last {
            Some(last) => Next::Wait(Wait::Messages { last, then: target }),
            None => target.map_or(Next::Continue, Next::Goto),
        })
    }

    pub(super) fn exec_offload(
        &mut self,
        o: &OffloadStep,
        now: Instant,
    ) -> Result<Next, StepError> {
        let to = self.phone_target("offload target", &o.to)?;
        let vars = self.session.vars();
        let mut headers = Vec::with_capacity(o.headers.len());
        for (name, value) in &o.headers {
            let v = value
                .eval(vars)
                .map_err(|e| format!("offload header {name}: {e}"))?;
            let text = text_of(&v);
            if text.contains(['\r', '\n']) {
                return Err(format!("offload header {name}: the value has a line break").into());
            }
            headers.push((name.clone(), text));
        }
        let context = match &o.context {
            Some(paths) => {
                let mut m = Map::new();
                for p in paths {
                    m.insert(
                        p.to_string(),
                        p.lookup(vars).cloned().unwrap_or(Value::Null),
                    );
                }
                Value::Object(m)
            }
            None => Value::Object(
                vars.iter()
                    .filter(|(k, _)| !is_reserved(k) || k.as_str() == "call")
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            ),
        };
        tracing::info!(flow = %self.def.name(), %to, "offloading to an agent");
        self.begin_transfer(&to);
        self.actions.push_back(FlowAction::Offload {
            to,
            headers,
            context,
        });
        if let Some(hold) = &o.waiting.hold {
            self.start_hold(hold.clone(), HoldOwner::Step, now);
        }
        Ok(Next::Wait(Wait::Transfer {
            deadline: Some(now + o.waiting.timeout),
        }))
    }

    pub(super) fn offload_timed_out(&mut self) {
        let (timeout, fallback) = match self.current_step() {
            Some(Step::Offload(o)) => (o.waiting.timeout, o.on_failure.or(o.waiting.on_error)),
            _ => return,
        };
        self.wait = Wait::Ready;
        self.step_failed(StepError {
            message: format!("offload: no result within {} ms", timeout.as_millis()),
            fallback,
            code: "timeout",
            detail_code: None,
        });
    }
}

/// A JSON body shaped like Chatlayer's API step reply.
fn is_chatlayer_reply(body: &Value) -> bool {
    body.as_object().is_some_and(|o| {
        o.contains_key("session") || o.contains_key("messages") || o.contains_key("nextDialogstate")
    })
}

/// The sayable text of Chatlayer `messages`: plain strings, `{text}`, `{message: {text}}`,
/// and `{type: text, config: {textMessages: [{text}]}}`. Other kinds (buttons, carousels)
/// have nothing a phone can show; their text parts are said, the rest is skipped.
fn message_texts(messages: &Value) -> Vec<String> {
    fn item(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::String(s) => out.push(s.clone()),
            Value::Object(m) => {
                if let Some(Value::String(t)) = m.get("text") {
                    out.push(t.clone());
                } else if let Some(Value::String(t)) = m.get("message").and_then(|x| x.get("text"))
                {
                    out.push(t.clone());
                } else if let Some(Value::Array(list)) =
                    m.get("config").and_then(|c| c.get("textMessages"))
                {
                    for t in list {
                        if let Some(Value::String(s)) = t.get("text") {
                            out.push(s.clone());
                        }
                    }
                } else {
                    tracing::debug!(message = %v, "reply message without text skipped");
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    match messages {
        Value::Array(items) => items.iter().for_each(|i| item(i, &mut out)),
        other => item(other, &mut out),
    }
    out.retain(|t| !t.trim().is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_shapes() {
        let v = json!([
            "one",
            {"text": "two"},
            {"message": {"text": "three"}},
            {"type": "text", "config": {"textMessages": [{"text": "four"}, {"text": "five"}]}},
            {"type": "carousel", "config": {}},
            "",
            42
        ]);
        assert_eq!(
            message_texts(&v),
            vec!["one", "two", "three", "four", "five"]
        );
        assert_eq!(message_texts(&json!("solo")), vec!["solo"]);
        assert!(is_chatlayer_reply(&json!({"messages": []})));
        assert!(!is_chatlayer_reply(&json!({"name": "x"})));
        assert!(!is_chatlayer_reply(&json!("text")));
    }
}
