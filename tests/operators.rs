//! Operators (issue 15), against the real binary:
//! - trunk registration: a SIPp registrar stand-in challenges every REGISTER with 401 and checks
//!   the digest credentials (SIPp's verifyauth), sees the refresh inside the granted 6 s and the
//!   de-registration (`Expires: 0`) on SIGTERM; a wrong password shows as failed, with the
//!   registrar's reason, in `GET /v1/trunks` and in the metric;
//! - the per-trunk digest challenge of inbound INVITEs (SIPp answers the 401 with credentials);
//! - with `flow.websocket_url` set the gateway neither needs nor reads a flow file.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

fn trunk_toml(registrar_port: u16, password_line: &str, extra: &str) -> String {
    format!(
        "[[trunks]]\nname = \"main\"\nregistrar = \"sip:127.0.0.1:{registrar_port}\"\n\
         username = \"voxgate\"\n{password_line}\nexpires = 6\n{extra}\n"
    )
}

fn trunks(gw: &Gateway) -> Vec<Value> {
    let r = gw.get("/v1/trunks").expect("GET /v1/trunks");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["trunks"].as_array().cloned().unwrap_or_default()
}

fn metric_line(gw: &Gateway, prefix: &str) -> Option<String> {
    let text = gw.get_noauth("/metrics").ok()?.text();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .map(str::to_string)
}

/// Polls until `f` holds; false on timeout.
fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Responses the registrar has sent so far that start with `status_line`.
fn sent(reg: &SippProcess, status_line: &str) -> usize {
    reg.messages_so_far()
        .lines()
        .filter(|l| l.trim_start().starts_with(status_line))
        .count()
}

#[test]
fn trunk_registers_with_digest_refreshes_and_deregisters_on_sigterm() {
    require_sipp();
    let reg_port = free_port();
    let mut registrar = Sipp::uas("peers/registrar_digest.xml", reg_port)
        .timeout_s(90)
        .spawn();
    registrar.wait_listening(Duration::from_secs(10));
    // The password comes from the environment (password_env), not the file.
    let mut gw = Gateway::builder()
        .toml(&trunk_toml(
            reg_port,
            "password_env = \"VOXGATE_TEST_TRUNK_PASSWORD\"",
            "",
        ))
        .env("VOXGATE_TEST_TRUNK_PASSWORD", "secret")
        .start();
    assert!(
        !gw.config_text.contains("secret"),
        "the password is not in the config file"
    );

    // First registration: 401, then credentials, then 200.
    assert!(
        eventually(Duration::from_secs(15), || sent(
            &registrar,
            "SIP/2.0 200 OK"
        ) >= 1),
        "no registration\n{}\n{}",
        registrar.messages_so_far(),
        gw.log_tail(40)
    );
    let mut t = Value::Null;
    assert!(
        eventually(Duration::from_secs(5), || {
            t = trunks(&gw)[0].clone();
            t["registered"] == true
        }),
        "{t}"
    );
    assert_eq!(t["name"], "main");
    assert_eq!(t["state"], "registered");
    assert_eq!(t["last_error"], Value::Null);
    assert_eq!(t["transport"], "udp");
    let expires_at = chrono::DateTime::parse_from_rfc3339(t["expires_at"].as_str().unwrap())
        .expect("expires_at is RFC 3339");
    let left = expires_at.signed_duration_since(chrono::Utc::now());
    assert!(
        left > chrono::Duration::zero() && left <= chrono::Duration::seconds(7),
        "the registrar granted 6 s: {left}"
    );
    assert_eq!(
        metric_line(&gw, "voxgate_trunk_registered{").as_deref(),
        Some("voxgate_trunk_registered{trunk=\"main\"} 1")
    );
    assert!(!gw.log_text().contains("secret"), "no password in the log");

    // The refresh: the registrar fails the call unless it arrives within the 6 s granted.
    assert!(
        eventually(Duration::from_secs(10), || sent(
            &registrar,
            "SIP/2.0 200 OK"
        ) >= 2),
        "no refresh\n{}",
        registrar.messages_so_far()
    );

    // SIGTERM: the binding is removed (REGISTER with Expires: 0, answered after a challenge).
    gw.terminate();
    let status = gw.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}\n{}", gw.log_tail(40));
    let out = registrar.wait();
    out.assert_success();
    for step in [
        "REGISTER 1 credentials valid=",
        "REGISTER 2 (refresh)",
        "REGISTER 2 credentials valid=",
        "REGISTER 3 (de-register)",
        "REGISTER 3 credentials valid=",
    ] {
        assert!(out.logs.contains(step), "{step}\n{}", out.logs);
    }
    assert!(!out.logs.contains("FAIL"), "{}", out.logs);
    assert!(
        gw.log_contains("trunk de-registered"),
        "{}",
        gw.log_tail(30)
    );
}

#[test]
fn wrong_password_shows_as_failed_with_the_reason() {
    require_sipp();
    let reg_port = free_port();
    let mut registrar = Sipp::uas("peers/registrar_reject.xml", reg_port)
        .timeout_s(120)
        .spawn();
    registrar.wait_listening(Duration::from_secs(10));
    let gw = Gateway::builder()
        .toml(&trunk_toml(reg_port, "password = \"not-the-password\"", ""))
        .start();
    let mut t = Value::Null;
    assert!(
        eventually(Duration::from_secs(15), || {
            t = trunks(&gw)[0].clone();
            t["state"] == "failed"
                && t["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("403 Forbidden"))
        }),
        "{t}\n{}",
        gw.log_tail(30)
    );
    assert_eq!(t["registered"], false);
    assert_eq!(t["expires_at"], Value::Null);
    assert!(t["failures"].as_u64().unwrap_or(0) >= 1, "{t}");
    assert!(t["next_attempt_at"].is_string(), "{t}");
    assert_eq!(
        metric_line(&gw, "voxgate_trunk_registered{").as_deref(),
        Some("voxgate_trunk_registered{trunk=\"main\"} 0")
    );
    // It backs off and tries again (a second challenged attempt reaches the registrar).
    assert!(
        eventually(Duration::from_secs(10), || sent(
            &registrar,
            "SIP/2.0 403 Forbidden"
        ) >= 2),
        "no retry\n{}",
        registrar.messages_so_far()
    );
    let out = registrar.kill();
    assert!(
        out.logs
            .contains("REGISTER with credentials valid=false Authorization: Digest")
            || out.logs.contains("valid=0"),
        "the registrar saw digest credentials and found them wrong:\n{}",
        out.logs
    );
    assert!(!out.logs.contains("ACCEPTED"), "{}", out.logs);
    assert!(!gw.log_text().contains("not-the-password"));
}

#[test]
fn inbound_invites_for_a_trunk_are_digest_challenged() {
    require_sipp();
    // The registrar is not there (registration keeps failing in the background); the inbound
    // challenge does not depend on it.
    let gw = Gateway::builder()
        .toml(&trunk_toml(
            free_port(),
            "password = \"secret\"",
            "challenge_inbound = true",
        ))
        .start();
    let out = Sipp::uac("uac_digest.xml", gw.sip_addr())
        .service("voxgate")
        .timeout_s(30)
        .run();
    out.assert_success();
    assert!(
        out.messages.contains("SIP/2.0 401 Unauthorized"),
        "{}",
        out.report()
    );
    assert!(gw.log_contains("INVITE challenged"), "{}", gw.log_tail(40));
    assert!(gw.log_contains("result=\"accepted\"") || gw.log_contains("result=accepted"));
    // Calls for anyone else are not challenged.
    let plain = Sipp::uac("uac_short.xml", gw.sip_addr())
        .timeout_s(30)
        .run();
    plain.assert_success();
    assert!(
        !plain.messages.contains("401 Unauthorized"),
        "{}",
        plain.report()
    );
    let metric = metric_line(&gw, "voxgate_invite_auth_total{").unwrap_or_default();
    assert!(metric.contains("trunk=\"main\""), "{metric}");
}

/// A bot that answers every call and closes it after one second.
struct Bot {
    url: String,
    sessions: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    _rt: tokio::runtime::Runtime,
}

fn answering_bot() -> Bot {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let sessions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = sessions.clone();
    rt.spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(msg)) = rx.next().await {
                    let Message::Text(t) = msg else { continue };
                    let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                    if v["type"] == "session.start" {
                        seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        let answer = json!({"type": "answer", "id": "a1"}).to_string();
                        tx.send(Message::Text(answer.into())).await.ok();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        let close = json!({"type": "close", "id": "c1"}).to_string();
                        tx.send(Message::Text(close.into())).await.ok();
                    }
                }
            });
        }
    });
    Bot {
        url: format!("ws://{addr}/bot"),
        sessions,
        _rt: rt,
    }
}

#[test]
fn websocket_mode_needs_and_reads_no_flow_file() {
    require_sipp();
    let bot = answering_bot();
    // An empty working directory: no sip-config/flows/demo.yaml, and no `[flow] file` key.
    let cwd = tempfile::tempdir().unwrap();
    let mut gw = Gateway::builder()
        .without_flow_file()
        .cwd(cwd.path())
        .toml(&format!("[flow]\nwebsocket_url = \"{}\"\n", bot.url))
        .start();
    assert!(!gw.config_text.contains("file ="), "{}", gw.config_text);
    Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(30)
        .run()
        .assert_success();
    assert_eq!(bot.sessions.load(std::sync::atomic::Ordering::SeqCst), 1);
    // SIGHUP has no flow file to reload: a clear message, and the gateway keeps running.
    let pid = gw.pid().unwrap();
    std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(
        gw.wait_for_log("no flow file to reload", Duration::from_secs(5)),
        "{}",
        gw.log_tail(20)
    );
    assert!(gw.is_running());
    assert!(!gw.log_contains("flow loaded"), "{}", gw.log_tail(40));
    gw.terminate();
    gw.wait_exit(Duration::from_secs(20));

    // A flow file that is not even YAML is ignored too: it is never read.
    let junk = cwd.path().join("junk.yaml");
    std::fs::write(&junk, "{{{ not: [yaml").unwrap();
    let gw = Gateway::builder()
        .toml(&format!(
            "[flow]\nwebsocket_url = \"{}\"\nfile = {:?}\n",
            bot.url,
            junk.display().to_string()
        ))
        .start();
    assert!(gw.get_noauth("/healthz").unwrap().status == 200);
}

/// The media workers' tick lateness is a histogram with the documented buckets (not the
/// exporter's default summary), filled from the first tick, calls or not.
#[test]
fn media_tick_lateness_is_a_histogram_on_metrics() {
    let gw = Gateway::builder().start();
    let count = |gw: &Gateway| -> f64 {
        metric_line(gw, "voxgate_media_tick_lateness_seconds_count")
            .and_then(|l| l.split_whitespace().last().and_then(|v| v.parse().ok()))
            .unwrap_or(0.0)
    };
    // Each worker ticks 50 times a second.
    assert!(
        eventually(Duration::from_secs(10), || count(&gw) >= 50.0),
        "{:?}",
        metric_line(&gw, "voxgate_media_tick")
    );
    let text = gw.get_noauth("/metrics").unwrap().text();
    for le in ["0.0005", "0.001", "0.005", "0.1", "+Inf"] {
        let bucket = format!("voxgate_media_tick_lateness_seconds_bucket{{le=\"{le}\"}}");
        assert!(text.contains(&bucket), "no {bucket} in:\n{text}");
    }
}

/// Every `"voxgate_…"` string literal in src/ that names a metric.
fn metric_names_in_code() -> std::collections::BTreeSet<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    // String literals with this prefix that are not metrics.
    const NOT_METRICS: &[&str] = &["voxgate_session"];
    let mut files = Vec::new();
    walk(&repo_root().join("src"), &mut files);
    let mut names = std::collections::BTreeSet::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, _) in text.match_indices("\"voxgate_") {
            let rest = &text[i + 1..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            if rest[end..].starts_with('"') && !NOT_METRICS.contains(&&rest[..end]) {
                names.insert(rest[..end].to_string());
            }
        }
    }
    names
}

#[test]
fn every_metric_in_the_code_is_documented() {
    let names = metric_names_in_code();
    assert!(
        names.contains("voxgate_calls_active") && names.len() > 10,
        "{names:?}"
    );
    let doc = std::fs::read_to_string(repo_root().join("docs/metrics.md")).unwrap();
    let missing: Vec<_> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "metrics missing from docs/metrics.md: {missing:?}"
    );
    // The dashboard only queries metrics that exist.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/voxgate.json")).unwrap(),
    )
    .expect("deploy/grafana/voxgate.json is JSON");
    let mut exprs = Vec::new();
    fn collect(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    match (k.as_str(), x) {
                        ("expr", Value::String(s)) => out.push(s.clone()),
                        _ => collect(x, out),
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|x| collect(x, out)),
            _ => {}
        }
    }
    collect(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    for e in &exprs {
        for (i, _) in e.match_indices("voxgate_") {
            let rest = &e[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(rest.len());
            // A histogram is queried through its series' suffixes.
            let name = &rest[..end];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| names.contains(*b))
                .unwrap_or(name);
            assert!(
                names.contains(base),
                "dashboard queries unknown metric in {e}"
            );
        }
    }
}
