//! The web console in a real browser: Debian's headless Chromium driven by Playwright
//! (tests/console/browser.mjs, npm `playwright-core` pinned by tests/console/package-lock.json)
//! while a real SIPp call is up. The script checks that without the token only the login form
//! shows and the API answers 401, logs in, sees the live call arrive over server-sent events,
//! pauses/resumes/hangs it up with the buttons, finds its recording by search, draws the
//! two-lane waveform with the call's real transcript marked on it (the greeting prompt, the
//! caller's key "4" sent by SIPp as SIP INFO, the `code` integration step's outcome), plays the
//! audio through the Range API (`ended` or a positive `currentTime`), opens the call's CDR and
//! events, and signs out. Screenshots are kept under
//! target/console-test/ and their paths printed.
//!
//! Needs `node`, `/usr/bin/chromium` (Debian `chromium`) and the node package; scripts/test.sh
//! installs them. Missing tools fail the test (a green run without a browser would be a lie).

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn console_dir() -> PathBuf {
    repo_root().join("tests").join("console")
}

fn chromium() -> String {
    std::env::var("VOXGATE_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".to_string())
}

/// node, Chromium and playwright-core (installed from the lockfile when missing).
fn require_browser_tools() {
    let node = Command::new("node").arg("--version").output();
    assert!(
        node.as_ref().is_ok_and(|o| o.status.success()),
        "the console test needs Node.js (`node`); scripts/test.sh installs it (Debian nodejs): {node:?}"
    );
    assert!(
        Path::new(&chromium()).exists(),
        "the console test needs Chromium at {} (Debian package chromium; scripts/test.sh \
         installs it, VOXGATE_CHROMIUM overrides the path)",
        chromium()
    );
    let module = console_dir().join("node_modules/playwright-core/package.json");
    if !module.exists() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(console_dir())
            .status();
        assert!(
            status.as_ref().is_ok_and(|s| s.success()) && module.exists(),
            "`npm ci` in tests/console failed ({status:?}); scripts/test.sh runs it"
        );
    }
}

/// The test's flow: recording, the greeting (playing on while the flow goes on), a `code`
/// integration step (local JavaScript, no server needed), then a menu that notes every key as
/// an event and waits for the next one.
const CONSOLE_FLOW: &str = r#"
name: console
start: answer
inactivity_s: 0
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  answer:
    - start_recording
    - message: {file: greeting.wav, wait: false}
    - code: {source: "new ChatlayerResponseBuilder().setSessionVariable('tier', 'gold').send()", timeout_ms: 2000}
    - goto: menu
  menu:
    - collect: {max_digits: 1, variable: choice, default: pressed}
  pressed:
    - track_event: {name: console_key, properties: {key: choice}}
    - goto: menu
"#;

/// Percent-encodes a call id for a URL path or query.
fn pct(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn artifacts_dir() -> PathBuf {
    let dir = repo_root().join("target").join("console-test");
    std::fs::create_dir_all(&dir).expect("create target/console-test");
    dir
}

#[test]
fn console_in_headless_chromium_after_a_real_call() {
    require_sipp();
    require_browser_tools();
    let gw = Gateway::builder().flow_yaml(CONSOLE_FLOW).start();

    // A real call that presses "4" and stays up until the gateway hangs up (the console's
    // button will).
    let mut sipp = Sipp::uac("console_call.xml", gw.sip_addr())
        .timeout_s(120)
        .spawn();
    assert!(
        sipp.wait_for_message("ACK sip:", Duration::from_secs(20)),
        "the call did not come up\n{}",
        gw.log_tail(40)
    );
    let mut call_id = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while call_id.is_empty() && Instant::now() < deadline {
        let calls = gw.get("/v1/calls").expect("GET /v1/calls").json();
        if let Some(id) = calls["calls"][0]["call_id"].as_str() {
            call_id = id.to_string();
        } else {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    assert!(!call_id.is_empty(), "no active call in /v1/calls");

    // The transcript the console will draw: the prompt, the key and the integration step are
    // in it before the browser starts (no race with the hang-up button).
    let transcript_path = format!("/v1/calls/{}/transcript", pct(&call_id));
    let mut transcript = Value::Null;
    let deadline = Instant::now() + Duration::from_secs(20);
    let kinds = |t: &Value| -> Vec<String> {
        t["entries"]
            .as_array()
            .map(|es| {
                es.iter()
                    .filter_map(|e| e["kind"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    while Instant::now() < deadline {
        transcript = gw.get(&transcript_path).expect("GET transcript").json();
        let k = kinds(&transcript);
        if ["prompt", "dtmf", "step"]
            .iter()
            .all(|want| k.iter().any(|have| have == want))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let k = kinds(&transcript);
    assert!(
        ["prompt", "dtmf", "step"]
            .iter()
            .all(|want| k.iter().any(|have| have == want)),
        "the live transcript lacks the prompt, the key or the step: {transcript}\n{}",
        gw.log_tail(40)
    );
    let step = transcript["entries"]
        .as_array()
        .and_then(|es| es.iter().find(|e| e["kind"] == "step"))
        .cloned()
        .unwrap_or(Value::Null);
    assert_eq!(
        (&step["step"], &step["outcome"]),
        (&Value::from("code"), &Value::from("ok")),
        "{step}"
    );
    let answered = transcript["entries"].as_array().is_some_and(|es| {
        es.iter()
            .any(|e| e["kind"] == "call" && e["event"] == "answered")
    });
    assert!(answered, "no `call answered` entry: {transcript}");

    let artifacts = artifacts_dir();
    let started = Instant::now();
    let out = Command::new("node")
        .arg(console_dir().join("browser.mjs"))
        .current_dir(console_dir())
        .env("VOXGATE_URL", format!("http://{}", gw.http_addr()))
        .env("VOXGATE_TOKEN", TOKEN)
        .env("VOXGATE_CALL_ID", &call_id)
        .env("VOXGATE_ARTIFACTS", &artifacts)
        .env("CHROMIUM", chromium())
        .stdin(Stdio::null())
        .output()
        .expect("run node tests/console/browser.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!(
        "--- browser.mjs ({:.1} s) ---\n{stdout}{stderr}",
        started.elapsed().as_secs_f64()
    );
    let summary: Value = stdout
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or(Value::Null);
    assert!(
        out.status.success() && summary["ok"] == true,
        "the browser run failed ({}): {}\n{}",
        out.status,
        summary,
        gw.log_tail(60)
    );

    // The hang-up button ended the real call: SIPp got the gateway's BYE.
    sipp.wait().assert_success();

    let shot = PathBuf::from(summary["screenshot"].as_str().unwrap_or_default());
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "screenshot {} missing or empty",
        shot.display()
    );
    println!("console screenshot: {}", shot.display());
    if let Some(p) = summary["records_screenshot"].as_str() {
        println!("console screenshot: {p}");
    }

    // What the browser showed matches the records.
    let cdrs = gw
        .get(&format!("/v1/cdrs?call_id={}", pct(&call_id)))
        .unwrap()
        .json();
    assert_eq!(cdrs["cdrs"][0]["end_reason"], "operator_hangup", "{cdrs}");
    assert_eq!(cdrs["cdrs"][0]["end_reason"], summary["end_reason"]);
    assert!(summary["current_time"].as_f64().unwrap_or(0.0) > 0.0);
    assert!(gw.log_contains("call hung up via API"));
    // The browser listed the key and the step from the real transcript.
    assert!(summary["markers"].as_u64().unwrap_or(0) >= 3, "{summary}");
    // The flow saw the key too (its track_event, listed in the console's events table).
    let events = gw
        .get(&format!(
            "/v1/events?call_id={}&name=console_key",
            pct(&call_id)
        ))
        .unwrap()
        .json();
    assert_eq!(events["events"][0]["properties"]["key"], "4", "{events}");
    assert!(gw.log_contains("call paused/resumed via API"));
}
