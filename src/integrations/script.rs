//! The `code` step: JavaScript in an embedded QuickJS (rquickjs), sandboxed.
//!
//! - Runs on its own thread pool (`[integrations] script_threads`), never on the async workers.
//! - Each script gets a fresh runtime and context (nothing leaks from one call to another),
//!   with `args` (a copy of the session's variables), Chatlayer's `ChatlayerResponseBuilder`,
//!   `console.log`, a small `_` (get/has/set/isEmpty) and, when enabled, `fetch` through the
//!   `api` step's executor (allow-list, secrets, size cap).
//! - Limits: a wall-clock deadline enforced by QuickJS's interrupt handler (an endless loop is
//!   stopped), a heap limit (`memory_kb`, capped by `script_max_memory_kb`), a 256 KiB stack.
//! - Nothing else: QuickJS has no file system, network, timers or process access of its own
//!   and rquickjs adds none (no `std`/`os` modules are loaded).
//!
//! The script's source is wrapped in an `async` function, so `await fetch(...)` and `return`
//! work at its top level. Result: `{"session": {...}, "messages": [...], "nextDialogstate":
//! name | null, "sent": bool, "logs": [...]}`; without `send()` nothing is applied (as in
//! Chatlayer).
//!
//! Why QuickJS and not boa: docs/integrations.md (measured).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rquickjs::{Context, Ctx, Function, Promise, Runtime, Value as JsValue};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::http::HttpExecutor;
use super::StepError;
use crate::flow::{HttpRequest, ScriptRequest};

const PRELUDE: &str = include_str!("script/prelude.js");
/// The script's stack.
const STACK: usize = 256 * 1024;
/// Largest result (JSON bytes) a script may hand back.
pub const MAX_RESULT: usize = 1024 * 1024;
/// The smallest heap a script gets (the context itself needs a few hundred KiB).
pub const MIN_MEMORY_KB: u32 = 1024;

/// `fetch` for scripts: the `api` executor and a runtime to run it on (the script's thread
/// blocks on it; it is not a runtime worker).
#[derive(Clone)]
pub struct Fetch {
    pub http: Arc<HttpExecutor>,
    pub runtime: tokio::runtime::Handle,
}

pub struct PoolConfig {
    pub threads: usize,
    pub max_memory_kb: u32,
    pub fetch: Option<Fetch>,
}

struct Job {
    source: Arc<str>,
    args: Value,
    memory_kb: u32,
    deadline: Instant,
    cancel: Arc<AtomicBool>,
    reply: oneshot::Sender<Result<Value, StepError>>,
}

/// The script threads and their queue.
pub struct ScriptPool {
    tx: Mutex<mpsc::Sender<Job>>,
    max_memory_kb: u32,
}

impl std::fmt::Debug for ScriptPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptPool")
            .field("max_memory_kb", &self.max_memory_kb)
            .finish()
    }
}

/// Sets the job's cancel flag when the waiting side gives up (timeout, CancelRequest).
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl ScriptPool {
    pub fn new(cfg: PoolConfig) -> std::io::Result<ScriptPool> {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..cfg.threads.max(1) {
            let rx = rx.clone();
            let fetch = cfg.fetch.clone();
            std::thread::Builder::new()
                .name(format!("script-{i}"))
                // QuickJS's own stack limit (STACK) stays well inside the thread's.
                .stack_size(4 * 1024 * 1024)
                .spawn(move || loop {
                    let job = {
                        let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
                        guard.recv()
                    };
                    let Ok(job) = job else { return };
                    let Job {
                        source,
                        args,
                        memory_kb,
                        deadline,
                        cancel,
                        reply,
                    } = job;
                    if reply.is_closed() || cancel.load(Ordering::Relaxed) {
                        continue;
                    }
                    let result = if Instant::now() >= deadline {
                        Err(StepError::new(
                            "timeout",
                            "the script waited too long for a free script thread",
                        ))
                    } else {
                        // A panic in the engine's bindings must not take the thread down.
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            run_script(&source, &args, memory_kb, deadline, &cancel, fetch.as_ref())
                        }))
                        .unwrap_or_else(|_| {
                            Err(StepError::new(
                                "script",
                                "the script engine failed (panic); see the log",
                            ))
                        })
                    };
                    reply.send(result).ok();
                })?;
        }
        Ok(ScriptPool {
            tx: Mutex::new(tx),
            max_memory_kb: cfg.max_memory_kb,
        })
    }

    /// Runs a script within `budget`. Dropping the future stops the script (interrupt).
    pub async fn run(&self, req: ScriptRequest, budget: Duration) -> Result<Value, StepError> {
        let memory_kb = req
            .memory_kb
            .clamp(MIN_MEMORY_KB, self.max_memory_kb.max(MIN_MEMORY_KB));
        let cancel = Arc::new(AtomicBool::new(false));
        let _guard = CancelOnDrop(cancel.clone());
        let (reply, rx) = oneshot::channel();
        let job = Job {
            source: req.source,
            args: req.args,
            memory_kb,
            deadline: Instant::now() + budget,
            cancel,
            reply,
        };
        self.tx
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .send(job)
            .map_err(|_| StepError::new("script", "the script threads have stopped"))?;
        rx.await
            .map_err(|_| StepError::new("script", "the script thread stopped"))?
    }
}

/// Why the interrupt handler stopped the script.
#[derive(Default)]
struct Stop {
    timeout: AtomicBool,
    cancelled: AtomicBool,
}

fn run_script(
    source: &str,
    args: &Value,
    memory_kb: u32,
    deadline: Instant,
    cancel: &Arc<AtomicBool>,
    fetch: Option<&Fetch>,
) -> Result<Value, StepError> {
    let started = Instant::now();
    let budget_ms = deadline.saturating_duration_since(started).as_millis();
    let rt = Runtime::new()
        .map_err(|e| StepError::new("script", format!("cannot start the engine: {e}")))?;
    rt.set_memory_limit(memory_kb as usize * 1024);
    rt.set_max_stack_size(STACK);
    let stop = Arc::new(Stop::default());
    {
        let stop = stop.clone();
        let cancel = cancel.clone();
        rt.set_interrupt_handler(Some(Box::new(move || {
            if cancel.load(Ordering::Relaxed) {
                stop.cancelled.store(true, Ordering::Relaxed);
                return true;
            }
            if Instant::now() >= deadline {
                stop.timeout.store(true, Ordering::Relaxed);
                return true;
            }
            false
        })));
    }
    let ctx = Context::full(&rt).map_err(|e| {
        StepError::new(
            "memory",
            format!("cannot create a context within {memory_kb} KiB: {e}"),
        )
    })?;
    let limits = |e: StepError| -> StepError {
        if stop.cancelled.load(Ordering::Relaxed) {
            StepError::new("cancelled", "the flow stopped waiting for the script")
        } else if stop.timeout.load(Ordering::Relaxed) || Instant::now() >= deadline {
            StepError::new(
                "timeout",
                format!("the script ran longer than {budget_ms} ms and was stopped"),
            )
        } else {
            e
        }
    };
    let result = ctx.with(|ctx| -> Result<Value, StepError> {
        let args_text = serde_json::to_string(args).map_err(|e| StepError::new("script", e.to_string()))?;
        let js_args = ctx.json_parse(args_text).map_err(|e| js_error(&ctx, e))?;
        ctx.globals().set("args", js_args).map_err(|e| js_error(&ctx, e))?;
        if let Some(fetch) = fetch {
            let fetch = fetch.clone();
            let f = Function::new(ctx.clone(), move |url: String, opts: String| -> String {
                do_fetch(&fetch, &url, &opts, deadline)
            })
            .map_err(|e| js_error(&ctx, e))?;
            ctx.globals().set("__voxgate_fetch", f).map_err(|e| js_error(&ctx, e))?;
        }
        ctx.eval::<(), _>(PRELUDE).map_err(|e| js_error(&ctx, e))?;
        // One line, so the script's line numbers stay its own.
        let wrapped = format!("(async function () {{ {source}\n}})()");
        let promise: Promise = ctx.eval(wrapped).map_err(|e| js_error(&ctx, e))?;
        // Run the jobs the script queued (promise reactions, awaited fetches) until it settles.
        while promise.state() == rquickjs::promise::PromiseState::Pending {
            if !ctx.execute_pending_job() && promise.state() == rquickjs::promise::PromiseState::Pending {
                if stop.timeout.load(Ordering::Relaxed) || stop.cancelled.load(Ordering::Relaxed) {
                    return Err(StepError::new("script", "interrupted"));
                }
                return Err(StepError::new(
                    "script",
                    "the script is waiting for something that never happens (a promise that never settles)",
                ));
            }
        }
        if let Some(Err(e)) = promise.result::<JsValue>() {
            return Err(js_error(&ctx, e));
        }
        let out: String = ctx
            .eval::<String, _>("__voxgate_result()")
            .map_err(|e| js_error(&ctx, e))?;
        if out.len() > MAX_RESULT {
            return Err(StepError::new("too_large", format!("the script's result is larger than {} KiB", MAX_RESULT / 1024)));
        }
        let logs: String = ctx.eval::<String, _>("__voxgate_logs()").unwrap_or_else(|_| "[]".into());
        let mut v: Value = serde_json::from_str(&out).map_err(|e| StepError::new("script", format!("result: {e}")))?;
        v["logs"] = serde_json::from_str(&logs).unwrap_or(json!([]));
        Ok(v)
    });
    let result = result.map_err(limits);
    tracing::debug!(
        ms = started.elapsed().as_millis() as u64,
        ok = result.is_ok(),
        "script finished"
    );
    result
}

/// The exception the script threw, as a step error (`memory` for an exhausted heap).
fn js_error(ctx: &Ctx<'_>, e: rquickjs::Error) -> StepError {
    let text = match e {
        rquickjs::Error::Exception => {
            let v = ctx.catch();
            describe_exception(&v)
        }
        rquickjs::Error::Allocation => "out of memory".to_string(),
        other => other.to_string(),
    };
    let lower = text.to_ascii_lowercase();
    if lower.contains("out of memory") {
        StepError::new("memory", format!("the script ran out of memory: {text}"))
    } else {
        StepError::new("script", text.chars().take(500).collect::<String>())
    }
}

fn describe_exception(v: &JsValue<'_>) -> String {
    if let Some(ex) = v.as_exception() {
        let msg = ex.message().unwrap_or_default();
        let name: Option<String> = ex.get("name").ok();
        let line = ex.stack().and_then(|s| {
            s.lines().find_map(|l| {
                l.split("<eval>:")
                    .nth(1)
                    .map(|x| x.trim_end_matches(')').to_string())
            })
        });
        let mut out = match name {
            Some(n) if !n.is_empty() => format!("{n}: {msg}"),
            _ => msg,
        };
        if let Some(l) = line {
            out.push_str(&format!(" (line {l})"));
        }
        return out;
    }
    if let Some(s) = v.as_string().and_then(|s| s.to_string().ok()) {
        return format!("uncaught: {s}");
    }
    format!("uncaught {:?}", v.type_of())
}

fn do_fetch(fetch: &Fetch, url: &str, opts: &str, deadline: Instant) -> String {
    let answer = |r: Result<super::http::Response, StepError>| -> String {
        match r {
            Ok(resp) => json!({"status": resp.status, "headers": resp.headers, "text": resp.text})
                .to_string(),
            Err(e) => json!({"error": {"code": e.code, "message": e.message}}).to_string(),
        }
    };
    let opts: Value = match serde_json::from_str(opts) {
        Ok(v) => v,
        Err(e) => return answer(Err(StepError::new("http", format!("fetch options: {e}")))),
    };
    let headers = match opts.get("headers") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string()),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    let body = match opts.get("body") {
        None | Some(Value::Null) => None,
        // fetch bodies are text (scripts JSON.stringify their objects).
        Some(Value::String(s)) => Some(Value::String(s.clone())),
        Some(other) => Some(Value::String(other.to_string())),
    };
    let mut req = HttpRequest {
        method: opts
            .get("method")
            .and_then(Value::as_str)
            .unwrap_or("GET")
            .to_string(),
        url: url.to_string(),
        headers,
        query: Vec::new(),
        body,
        auth: None,
    };
    // A JSON text body keeps its declared type.
    if req.body.is_some()
        && !req
            .headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        req.headers
            .push(("content-type".into(), "text/plain; charset=utf-8".into()));
    }
    let remaining = deadline.saturating_duration_since(Instant::now());
    if remaining.is_zero() {
        return answer(Err(StepError::new("timeout", "no time left for fetch")));
    }
    answer(fetch.runtime.block_on(fetch.http.execute(&req, remaining)))
}

#[cfg(test)]
mod tests;
