//! The embedded flow engine on real calls (issue 5): the real `voxgate` binary driven by SIPp.
//!
//! What is proved here, end to end:
//! - `9` in the demo flow closes the conversation: BYE within 1 s of the key (SIP INFO and
//!   RFC 4733), the CDR says `flow_closed` and lists the recordings, the call leaves
//!   `/v1/calls`, every recording is `complete` no later than the BYE, and the
//!   `conversation closed` line says `variables_erased=true`.
//! - No input for `inactivity_s` closes the conversation (BYE 3 to 4.5 s after the greeting
//!   with `inactivity_s: 3`: the bot's own talking does not count), and a key restarts that
//!   timer.
//! - Two calls at once keep separate session variables (checked through `/v1/events`).
//! - A broken flow file (dangling dialog reference, unknown step) or a broken config
//!   (`[rtp] ports = "9-1"`) stops `voxgate` with a non-zero exit and a message naming the
//!   file, the dialog and the step (or the key).
//! - SIGTERM with a call up: new INVITEs get 503 while draining, the call is ended with a BYE
//!   once `shutdown_grace_s` is over, its recording is finalized, and the process exits 0.
//! - `message: {text: ...}` speaks through espeak-ng on a real call; with `[tts] binary`
//!   pointing nowhere, a clear line is logged and the fallback WAV is played instead. Both are
//!   checked on the bot channel of the call's own recording.
//!
//! Timing is measured on SIPp's side (its `[clock_tick]` in the scenario logs, and the wall
//! clock stamps of its `-trace_msg` file) and compared with the gateway's log stamps (same
//! machine, same clock). Margins are wide enough for a loaded 2-core machine, except where
//! the issue itself fixes the bound (BYE within 1 s of `9`).

mod common;

use chrono::{DateTime, Local, NaiveDateTime, TimeZone, Utc};
use common::*;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const T5: Duration = Duration::from_secs(5);
const T10: Duration = Duration::from_secs(10);
const T20: Duration = Duration::from_secs(20);

/// Only the gateway's end-of-call summary carries this field.
const CALL_END_FIELD: &str = "rtp_tx_packets";

// ---------------------------------------------------------------------------------------------
// Flows written by the tests (format: docs/flows.md)
// ---------------------------------------------------------------------------------------------

/// The shipped demo flow, with the prompts dir made absolute (the copy lives in a temp dir)
/// and `inactivity_s` replaced.
fn demo_flow_with_inactivity(seconds: u64) -> String {
    let text = std::fs::read_to_string(demo_flow_path()).expect("read the demo flow");
    assert!(
        text.contains("\ninactivity_s: 30\n") && text.contains("\nprompts_dir: ../prompts\n"),
        "the demo flow changed shape; update demo_flow_with_inactivity()"
    );
    text.replace(
        "\ninactivity_s: 30\n",
        &format!("\ninactivity_s: {seconds}\n"),
    )
    .replace(
        "\nprompts_dir: ../prompts\n",
        "\nprompts_dir: \"{{PROMPTS_DIR}}\"\n",
    )
}

/// Each call collects two keys into its own variables and reports what it holds after each,
/// with a per-session counter: shared state would show up as foreign digits or a count > 2.
const SESSIONS_FLOW: &str = r#"
name: test-sessions
start: main
inactivity_s: 0
variables:
  count: 0
  first: "none"
  second: "none"
dialogs:
  main:
    - collect: {max_digits: 1, terminator: "", variable: first}
    - set: {name: count, expr: "count + 1"}
    - track_event:
        name: first_key
        properties: {first: first, second: second, count: count, call: call.call_id}
    - collect: {max_digits: 1, terminator: "", variable: second}
    - set: {name: count, expr: "count + 1"}
    - track_event:
        name: second_key
        properties: {first: first, second: second, count: count, both: "first + second", call: call.call_id}
    - close
"#;

/// Records the call, says `text` through TTS (waiting for the end of it), then closes.
fn tts_flow(text: &str) -> String {
    format!(
        r#"
name: test-tts
start: main
inactivity_s: 0
dialogs:
  main:
    - start_recording
    - message: {{text: "{text}"}}
    - close
"#
    )
}

/// Long on purpose: espeak-ng makes several seconds of it, more than twice the fallback WAV.
const TTS_TEXT: &str = "Thank you for calling the voxgate test line. This sentence is spoken by \
                        the text to speech engine, and it is rather long on purpose.";

// ---------------------------------------------------------------------------------------------
// Helpers: SIPp traces, gateway logs, the HTTP API, WAV analysis
// ---------------------------------------------------------------------------------------------

/// One SIP message of SIPp's `-trace_msg` file.
#[derive(Debug, Clone)]
struct Traced {
    at: DateTime<Utc>,
    sent: bool,
    /// Request or status line.
    start_line: String,
}

/// Parses the `-trace_msg` file: each message follows a line of dashes ending with the local
/// wall-clock time (`2026-11-25 14:15:50.734928`), then `UDP message sent (...)` or
/// `UDP message received [...]`, a blank line and the SIP start line.
fn parse_trace(messages: &str) -> Vec<Traced> {
    let lines: Vec<&str> = messages.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(rest) = line.strip_prefix("-----") else {
            continue;
        };
        let stamp = rest.trim_start_matches('-').trim();
        let Ok(naive) = NaiveDateTime::parse_from_str(stamp, "%Y-%m-%d %H:%M:%S%.f") else {
            continue;
        };
        let Some(local) = Local.from_local_datetime(&naive).earliest() else {
            continue;
        };
        let mut rest = lines[i + 1..]
            .iter()
            .map(|l| l.trim())
            .filter(|l| !l.is_empty());
        let (Some(dir), Some(start)) = (rest.next(), rest.next()) else {
            continue;
        };
        out.push(Traced {
            at: local.with_timezone(&Utc),
            sent: dir.contains("message sent"),
            start_line: start.to_string(),
        });
    }
    out
}

/// The first traced message in the given direction whose start line begins with `prefix`.
#[track_caller]
fn traced(out: &SippOutcome, sent: bool, prefix: &str) -> Traced {
    parse_trace(&out.messages)
        .into_iter()
        .find(|m| m.sent == sent && m.start_line.starts_with(prefix))
        .unwrap_or_else(|| {
            panic!(
                "no {} `{prefix}` in SIPp's message trace\n{}",
                if sent { "sent" } else { "received" },
                out.report()
            )
        })
}

/// SIPp's `[clock_tick]` (ms) logged by the scenario on the first log line containing `marker`.
#[track_caller]
fn sipp_clock(out: &SippOutcome, marker: &str) -> u64 {
    out.logs
        .lines()
        .find(|l| l.contains(marker))
        .and_then(|l| field_u64(l, "clock_ms"))
        .unwrap_or_else(|| panic!("no `{marker} clock_ms=` in SIPp's log\n{}", out.report()))
}

/// The Call-ID, from the scenario's `<call_id> answered ...` log line.
#[track_caller]
fn sipp_call_id(out: &SippOutcome) -> String {
    out.logs
        .lines()
        .find(|l| l.contains(" answered"))
        .and_then(|l| l.split_whitespace().next())
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no `answered` line in SIPp's log\n{}", out.report()))
}

/// The timestamp that starts a gateway log line (tracing fmt, RFC 3339 UTC).
fn log_time(line: &str) -> Option<DateTime<Utc>> {
    let first = line.split_whitespace().next()?;
    DateTime::parse_from_rfc3339(first)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// Percent-encodes a query or path value (Call-IDs hold `@`).
fn enc(s: &str) -> String {
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

#[track_caller]
fn get_json(gw: &Gateway, path: &str) -> Value {
    let r = gw
        .get(path)
        .unwrap_or_else(|e| panic!("GET {path}: {e}\n{}", gw.log_tail(40)));
    assert_eq!(r.status, 200, "GET {path}: {}", r.text());
    r.json()
}

/// The CDR of this call (polls: the CDR is appended when the call ends).
#[track_caller]
fn cdr_of(gw: &Gateway, call_id: &str) -> Value {
    let path = format!("/v1/cdrs?call_id={}", enc(call_id));
    let deadline = Instant::now() + T10;
    loop {
        let body = get_json(gw, &path);
        let cdrs = body["cdrs"].as_array().cloned().unwrap_or_default();
        if let Some(c) = cdrs.iter().find(|c| c["call_id"] == call_id) {
            assert_eq!(cdrs.len(), 1, "one CDR per call: {body:#}");
            return c.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no CDR for {call_id} in {path}: {body:#}\n{}",
            gw.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `GET /v1/calls` lists no call; fails after `timeout`.
#[track_caller]
fn wait_no_calls(gw: &Gateway, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let body = get_json(gw, "/v1/calls");
        if body["calls"].as_array().is_some_and(|c| c.is_empty()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the call is still listed by /v1/calls {timeout:?} after it ended: {body:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The recordings of a call once every one of them has left `recording` (polls).
#[track_caller]
fn settled_recordings(gw: &Gateway, call_id: &str) -> Vec<Value> {
    let path = format!("/v1/recordings?call_id={}", enc(call_id));
    let deadline = Instant::now() + T10;
    loop {
        let body = get_json(gw, &path);
        let recs = body["recordings"].as_array().cloned().unwrap_or_default();
        if !recs.is_empty() && recs.iter().all(|r| r["status"] != "recording") {
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "recordings of {call_id} not finalized 10 s after the call: {body:#}\n{}",
            gw.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// When the gateway logged `recording ready` for this recording (the first such line).
#[track_caller]
fn ready_logged_at(gw: &Gateway, id: &str) -> DateTime<Utc> {
    gw.log_lines("recording ready")
        .iter()
        .filter(|l| field(l, "recording").as_deref() == Some(id))
        .find_map(|l| log_time(l))
        .unwrap_or_else(|| {
            panic!(
                "no `recording ready recording={id}` line\n{}",
                gw.log_tail(80)
            )
        })
}

/// The `conversation closed` line of the call task (the one with `variables_erased`).
#[track_caller]
fn conversation_closed_line(gw: &Gateway, call_id: &str) -> String {
    let lines: Vec<String> = gw
        .log_lines("conversation closed")
        .into_iter()
        .filter(|l| l.contains(call_id) && l.contains("variables_erased"))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "want one `conversation closed ... variables_erased=...` line for {call_id}\n{}",
        gw.log_tail(80)
    );
    lines[0].clone()
}

/// Mono 16-bit PCM from a WAV image; tolerates the unknown sizes espeak-ng writes to a pipe.
/// Returns (sample rate, channels, interleaved samples).
fn parse_wav(bytes: &[u8]) -> (u32, u16, Vec<i16>) {
    assert!(
        bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE",
        "not a WAV file"
    );
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let u32_at =
        |i: usize| u32::from_le_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    let mut pos = 12;
    let mut fmt: Option<(u32, u16, u16)> = None;
    while pos + 8 <= bytes.len() {
        let id = &bytes[pos..pos + 4];
        let size = u32_at(pos + 4) as usize;
        let body = pos + 8;
        if id == b"fmt " {
            fmt = Some((u32_at(body + 4), u16_at(body + 2), u16_at(body + 14)));
        } else if id == b"data" {
            let (rate, channels, bits) = fmt.expect("WAV: data before fmt");
            assert_eq!(bits, 16, "WAV: want 16-bit PCM");
            let end = body.saturating_add(size).min(bytes.len());
            let samples = bytes[body..end]
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect();
            return (rate, channels, samples);
        }
        pos = body.saturating_add(size + (size & 1));
    }
    panic!("WAV: no data chunk");
}

/// Milliseconds from the first to the end of the last 20 ms window whose RMS is above
/// `threshold` (the span of audible sound), or 0 when nothing is audible.
fn audible_span_ms(samples: &[i16], rate: u32, threshold: f64) -> u64 {
    let win = (rate / 50) as usize;
    let loud: Vec<bool> = samples
        .chunks(win)
        .map(|w| {
            let e: f64 = w.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
            (e / w.len() as f64).sqrt() > threshold
        })
        .collect();
    match (loud.iter().position(|&l| l), loud.iter().rposition(|&l| l)) {
        (Some(a), Some(b)) => ((b - a + 1) * 20) as u64,
        _ => 0,
    }
}

const AUDIBLE_RMS: f64 = 300.0;

/// The bot (right) channel of a finalized recording, from the HTTP API.
#[track_caller]
fn bot_channel(gw: &Gateway, id: &str) -> Vec<i16> {
    let r = gw
        .get(&format!("/v1/recordings/{id}/audio"))
        .expect("GET audio");
    assert_eq!(r.status, 200, "audio of {id}: {}", r.text());
    let (rate, channels, samples) = parse_wav(&r.body);
    assert_eq!(
        (rate, channels),
        (8000, 2),
        "recording format (CONTRACT §6)"
    );
    samples.chunks_exact(2).map(|f| f[1]).collect()
}

/// Speech span of `text` as espeak-ng itself renders it (voice `en`, the gateway's default).
#[track_caller]
fn espeak_span_ms(text: &str) -> u64 {
    let out = std::process::Command::new("espeak-ng")
        .args(["--stdout", "-v", "en", "--", text])
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "espeak-ng is required for the TTS tests ({e}); install the Debian package \
                 espeak-ng (scripts/test.sh does)"
            )
        });
    assert!(out.status.success(), "espeak-ng failed: {out:?}");
    let (rate, channels, samples) = parse_wav(&out.stdout);
    assert_eq!(channels, 1);
    audible_span_ms(&samples, rate, AUDIBLE_RMS)
}

#[track_caller]
fn assert_near(what: &str, got_ms: u64, want_ms: u64, tolerance_ms: u64) {
    assert!(
        got_ms.abs_diff(want_ms) <= tolerance_ms,
        "{what}: {got_ms} ms, want {want_ms} ms ± {tolerance_ms} ms"
    );
}

/// The `call ended` summary of this call.
#[track_caller]
fn call_end(gw: &Gateway, call_id: &str) -> CallEndStats {
    assert!(
        gw.wait_for_log(CALL_END_FIELD, T10),
        "no `call ended` line\n{}",
        gw.log_tail(60)
    );
    gw.log_text()
        .lines()
        .filter(|l| l.contains(call_id))
        .find_map(CallEndStats::parse)
        .unwrap_or_else(|| panic!("no `call ended` line for {call_id}\n{}", gw.log_tail(60)))
}

// ---------------------------------------------------------------------------------------------
// Close: `9` in the demo flow
// ---------------------------------------------------------------------------------------------

/// What a closed conversation must leave behind: CDR (`flow_closed`, the recordings), no
/// session in `/v1/calls`, every recording `complete` and finalized no later than the BYE
/// reached the caller, the CDR written before it too, and `variables_erased=true`.
#[track_caller]
fn assert_closed_properly(gw: &Gateway, out: &SippOutcome, call_id: &str) {
    let bye = traced(out, false, "BYE ");
    let closed = conversation_closed_line(gw, call_id);
    assert_eq!(
        field(&closed, "variables_erased").as_deref(),
        Some("true"),
        "{closed}"
    );
    let closed_at = log_time(&closed).expect("timestamp on the `conversation closed` line");
    let claims_finalized = field(&closed, "recordings_finalized").as_deref() == Some("true");

    let cdr = cdr_of(gw, call_id);
    assert_eq!(cdr["end_reason"], "flow_closed", "CDR: {cdr:#}");
    let cdr_recs: Vec<String> = cdr["recording_ids"]
        .as_array()
        .unwrap_or_else(|| panic!("CDR without recording_ids: {cdr:#}"))
        .iter()
        .map(|v| v.as_str().expect("recording id is text").to_string())
        .collect();
    assert!(
        !cdr_recs.is_empty(),
        "the demo flow records from the answer on, so the CDR must list a recording: {cdr:#}"
    );

    wait_no_calls(gw, Duration::from_secs(3));

    let recs = settled_recordings(gw, call_id);
    let mut listed: Vec<String> = recs
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    listed.sort();
    let mut in_cdr = cdr_recs.clone();
    in_cdr.sort();
    assert_eq!(
        listed, in_cdr,
        "recordings of the call vs the CDR's recording_ids"
    );
    for id in &cdr_recs {
        let meta = get_json(gw, &format!("/v1/recordings/{id}"));
        assert_eq!(meta["status"], "complete", "recording {id}: {meta:#}");
        assert_eq!(meta["call_id"], call_id, "recording {id}: {meta:#}");
        // CONTRACT §3: "every recording is finalized, then the gateway sends BYE".
        let ready = ready_logged_at(gw, id);
        // The gateway's own summary line must not claim a finalization that has not happened
        // yet (this catches the BYE/finalize race even when the BYE loses it).
        assert!(
            !claims_finalized || ready <= closed_at,
            "`conversation closed ... recordings_finalized=true` was logged at {closed_at}, \
             but recording {id} only became ready at {ready}: BYE is sent before the \
             recording is finalized\n{}",
            gw.log_tail(60)
        );
        assert!(
            ready <= bye.at,
            "recording {id} was finalized {} µs AFTER the caller received the BYE \
             (ready logged {ready}, BYE received {}); it must be complete before the BYE\n{}",
            (ready - bye.at).num_microseconds().unwrap_or(i64::MAX),
            bye.at,
            gw.log_tail(60)
        );
    }

    // The CDR is written (just after the `call ended` line) before the BYE goes out.
    let ended = gw
        .log_lines("call ended")
        .iter()
        .filter(|l| l.contains(call_id) && l.contains(CALL_END_FIELD))
        .find_map(|l| log_time(l))
        .expect("call ended line");
    assert!(ended <= bye.at, "CDR after the BYE: {ended} > {}", bye.at);
}

fn close_with_9(via: &str) {
    require_sipp();
    let gw = Gateway::start_default();
    let out = Sipp::uac("flow_close.xml", gw.sip_addr())
        .key("dtmf", via)
        .key("digit", "9")
        .timeout_s(30)
        .run();
    out.assert_success();
    let call_id = sipp_call_id(&out);

    let digits = dtmf_digits_via(&gw.dtmf_logs(), via);
    assert_eq!(
        digits,
        ["9"],
        "the gateway must see the key once, via {via}\n{}",
        gw.log_tail(60)
    );
    let sent = sipp_clock(&out, "dtmf sent");
    let bye = sipp_clock(&out, "BYE received");
    let delay = bye.saturating_sub(sent);
    eprintln!("measured: BYE {delay} ms after the `9` ({via})");
    assert!(
        delay < 1000,
        "BYE came {delay} ms after the `9` ({via}); the issue asks for less than 1 s\n{}",
        out.report()
    );
    assert_closed_properly(&gw, &out, &call_id);
}

#[test]
fn close_9_by_info_sends_bye_within_1s_and_cleans_up() {
    close_with_9("info");
}

#[test]
fn close_9_by_rfc4733_sends_bye_within_1s_and_cleans_up() {
    close_with_9("rfc4733");
}

// ---------------------------------------------------------------------------------------------
// Inactivity
// ---------------------------------------------------------------------------------------------

#[test]
fn inactivity_closes_the_conversation_after_inactivity_s() {
    require_sipp();
    let gw = Gateway::builder()
        .flow_yaml(&demo_flow_with_inactivity(3))
        .start();
    // Says nothing, presses nothing, waits for the gateway's BYE.
    let out = Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(30)
        .run();
    out.assert_success();
    assert!(out.logs.contains("BYE received"), "{}", out.report());
    let call_id = sipp_call_id(&out);

    let answered = traced(&out, false, "SIP/2.0 200");
    let bye = traced(&out, false, "BYE ");
    let after = (bye.at - answered.at).num_milliseconds();
    eprintln!("measured: BYE {after} ms after the answer");
    // Inactivity counts only while the bot waits for the caller: the 7.9 s greeting (longer
    // than inactivity_s) plays to the end, then the silent menu waits 3 s. The timer starts a
    // hair before SIPp sees the 200: 100 ms of slack below; 1.5 s of slack above.
    let greeting_ms = 7_882;
    assert!(
        (greeting_ms + 2_900..=greeting_ms + 4_500).contains(&after),
        "BYE {after} ms after the answer; want the greeting ({greeting_ms} ms) + 3 s \
         (inactivity_s) to + 4.5 s\n{}",
        out.report()
    );
    assert_eq!(
        gw.dtmf_logs().len(),
        0,
        "no key was pressed\n{}",
        gw.log_tail(40)
    );
    assert_closed_properly(&gw, &out, &call_id);
}

#[test]
fn a_key_restarts_the_inactivity_timer() {
    require_sipp();
    let gw = Gateway::builder()
        .flow_yaml(&demo_flow_with_inactivity(3))
        .start();
    // `2` at 1.5 s (stop recording, back to the silent menu): the close must then come
    // inactivity_s after the key, not after the answer.
    let out = Sipp::uac("flow_close.xml", gw.sip_addr())
        .key("dtmf", "info")
        .key("digit", "2")
        .timeout_s(30)
        .run();
    out.assert_success();
    let call_id = sipp_call_id(&out);
    let answered = sipp_clock(&out, "answered");
    let key = sipp_clock(&out, "dtmf sent");
    let bye = sipp_clock(&out, "BYE received");
    let after_key = bye.saturating_sub(key);
    eprintln!("measured: BYE {after_key} ms after the key");
    assert!(
        (2900..=4500).contains(&after_key),
        "BYE {after_key} ms after the key (answer + {} ms); want 3 s to 4.5 s after the key\n{}",
        bye.saturating_sub(answered),
        out.report()
    );
    assert_eq!(dtmf_digits_via(&gw.dtmf_logs(), "info"), ["2"]);
    let cdr = cdr_of(&gw, &call_id);
    assert_eq!(cdr["end_reason"], "flow_closed", "CDR: {cdr:#}");
    let closed = conversation_closed_line(&gw, &call_id);
    assert_eq!(
        field(&closed, "variables_erased").as_deref(),
        Some("true"),
        "{closed}"
    );
}

// ---------------------------------------------------------------------------------------------
// Separate sessions
// ---------------------------------------------------------------------------------------------

/// The tracked events of one call, oldest first.
#[track_caller]
fn events_of(gw: &Gateway, call_id: &str) -> Vec<Value> {
    let body = get_json(gw, &format!("/v1/events?call_id={}", enc(call_id)));
    let mut events = body["events"].as_array().cloned().unwrap_or_default();
    for e in &events {
        assert_eq!(e["call_id"], call_id, "call_id filter: {body:#}");
    }
    events.reverse(); // the API lists newest first
    events
}

#[track_caller]
fn event_named<'a>(events: &'a [Value], name: &str, call_id: &str) -> &'a Value {
    let found: Vec<&Value> = events.iter().filter(|e| e["name"] == name).collect();
    assert_eq!(
        found.len(),
        1,
        "want one `{name}` event for {call_id}: {events:#?}"
    );
    found[0]
}

fn event_time(e: &Value) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(e["ts"].as_str().expect("event ts"))
        .expect("event ts is RFC 3339")
        .with_timezone(&Utc)
}

#[test]
fn two_concurrent_calls_keep_their_own_variables() {
    require_sipp();
    let gw = Gateway::builder().flow_yaml(SESSIONS_FLOW).start();
    // A presses 3 then 4, B presses 7 then 8, 3 s apart each; B starts ~1 s after A, so B's
    // first key lands while A already holds its first digit and waits for its second.
    let mut a = Sipp::uac("flow_two_keys.xml", gw.sip_addr())
        .key("d1", "3")
        .key("d2", "4")
        .timeout_s(40)
        .spawn();
    assert!(
        a.wait_for_message("ACK sip:", T10),
        "call A not established\n{}",
        a.messages_so_far()
    );
    std::thread::sleep(Duration::from_millis(1000));
    let mut b = Sipp::uac("flow_two_keys.xml", gw.sip_addr())
        .key("d1", "7")
        .key("d2", "8")
        .timeout_s(40)
        .spawn();
    assert!(
        b.wait_for_message("ACK sip:", T10),
        "call B not established\n{}",
        b.messages_so_far()
    );
    let live = get_json(&gw, "/v1/calls");
    assert_eq!(
        live["calls"].as_array().map(Vec::len),
        Some(2),
        "both calls must be up at the same time: {live:#}"
    );
    let a = a.wait();
    let b = b.wait();
    a.assert_success();
    b.assert_success();
    let (id_a, id_b) = (sipp_call_id(&a), sipp_call_id(&b));
    assert_ne!(id_a, id_b);

    let ev_a = events_of(&gw, &id_a);
    let ev_b = events_of(&gw, &id_b);
    for (call_id, events, d1, d2, other) in [
        (&id_a, &ev_a, "3", "4", ["7", "8"]),
        (&id_b, &ev_b, "7", "8", ["3", "4"]),
    ] {
        let first = &event_named(events, "first_key", call_id)["properties"];
        assert_eq!(first["first"], d1, "{call_id}: {first:#}");
        assert_eq!(first["second"], "none", "{call_id}: {first:#}");
        assert_eq!(first["count"], 1, "{call_id}: {first:#}");
        assert_eq!(first["call"], call_id.as_str(), "{call_id}: {first:#}");
        let second = &event_named(events, "second_key", call_id)["properties"];
        assert_eq!(second["first"], d1, "{call_id}: {second:#}");
        assert_eq!(second["second"], d2, "{call_id}: {second:#}");
        assert_eq!(second["count"], 2, "{call_id}: {second:#}");
        assert_eq!(second["both"], format!("{d1}{d2}"), "{call_id}: {second:#}");
        assert_eq!(second["call"], call_id.as_str(), "{call_id}: {second:#}");
        // Nothing of the other call in any variable this call reported.
        for e in events.iter() {
            for key in ["first", "second", "both"] {
                let v = e["properties"][key].as_str().unwrap_or_default();
                assert!(
                    !other.iter().any(|d| v.contains(d)),
                    "{call_id} carries the other call's digits {other:?}: {e}"
                );
            }
        }
        let cdr = cdr_of(&gw, call_id);
        assert_eq!(cdr["end_reason"], "flow_closed", "CDR: {cdr:#}");
        assert_eq!(cdr["dtmf_digits"], 2, "CDR: {cdr:#}");
    }
    // The sessions really overlapped: B stored its first key while A held its first digit and
    // had not yet got its second.
    let a1 = event_time(event_named(&ev_a, "first_key", &id_a));
    let b1 = event_time(event_named(&ev_b, "first_key", &id_b));
    let a2 = event_time(event_named(&ev_a, "second_key", &id_a));
    eprintln!(
        "measured: B's first key {} ms after A's first, {} ms before A's second",
        (b1 - a1).num_milliseconds(),
        (a2 - b1).num_milliseconds()
    );
    assert!(
        a1 < b1 && b1 < a2,
        "the calls did not interleave (A first {a1}, B first {b1}, A second {a2}); \
         the machine may be too slow for this schedule"
    );
}

// ---------------------------------------------------------------------------------------------
// Bad flow files and a bad config
// ---------------------------------------------------------------------------------------------

/// Starts the gateway on a config/flow that must be refused; returns its output.
fn refused_start(builder: GatewayBuilder) -> (Gateway, String) {
    let mut gw = builder.spawn_only();
    let status = gw.wait_exit(T20);
    assert!(
        !status.success(),
        "voxgate must refuse to start, but exited with {status}\n{}",
        gw.log_tail(40)
    );
    assert!(
        status.code().is_some(),
        "voxgate must exit with an error code, not die of a signal ({status})"
    );
    let text = gw.log_text();
    (gw, text)
}

/// The first output line that holds every one of `parts`.
#[track_caller]
fn line_with_all(text: &str, parts: &[&str]) -> String {
    text.lines()
        .find(|l| parts.iter().all(|p| l.contains(p)))
        .map(str::to_string)
        .unwrap_or_else(|| {
            panic!("no line of the output holds all of {parts:?}:\n{text}");
        })
}

#[test]
fn flow_with_dangling_dialog_reference_is_refused() {
    let flow = demo_flow_with_inactivity(30).replace("\"9\": goodbye", "\"9\": ghost");
    assert!(flow.contains("\"9\": ghost"), "demo flow changed shape");
    let (gw, text) = refused_start(Gateway::builder().flow_yaml(&flow));
    let file = gw.dir().join("flow.yaml");
    let line = line_with_all(
        &text,
        &[&file.display().to_string(), "`menu`", "step 1", "ghost"],
    );
    assert!(line.contains("collect"), "the step type is named: {line}");
}

#[test]
fn flow_with_unknown_step_is_refused() {
    let flow = r#"
name: test-unknown-step
start: main
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  main:
    - message: {file: greeting.wav}
    - play: {file: greeting.wav}
    - close
"#;
    let (gw, text) = refused_start(Gateway::builder().flow_yaml(flow));
    let file = gw.dir().join("flow.yaml");
    line_with_all(
        &text,
        &[&file.display().to_string(), "`main`", "step 2", "play"],
    );
}

#[test]
fn flow_with_unknown_goto_target_is_refused() {
    let flow = r#"
name: test-bad-goto
start: main
dialogs:
  main:
    - goto: nowhere
"#;
    let (gw, text) = refused_start(Gateway::builder().flow_yaml(flow));
    let file = gw.dir().join("flow.yaml");
    line_with_all(
        &text,
        &[&file.display().to_string(), "`main`", "step 1", "nowhere"],
    );
}

#[test]
fn bad_rtp_port_range_is_refused_naming_file_and_key() {
    let (gw, text) = refused_start(Gateway::builder().toml("[rtp]\nports = \"9-1\""));
    line_with_all(
        &text,
        &[&gw.config_path.display().to_string(), "rtp.ports", "9-1"],
    );
}

// ---------------------------------------------------------------------------------------------
// SIGTERM
// ---------------------------------------------------------------------------------------------

/// The sidecars (`<id>.json`) in a recordings dir.
fn sidecars(dir: &Path) -> Vec<Value> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        })
        .collect()
}

#[test]
fn sigterm_drains_refuses_new_calls_finalizes_and_exits_0() {
    require_sipp();
    let mut gw = Gateway::builder().toml("shutdown_grace_s = 2").start();
    // A call in progress (demo flow: recording from the answer on) that never hangs up.
    let mut call = Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(40)
        .spawn();
    assert!(
        call.wait_for_message("ACK sip:", T10),
        "call not established\n{}",
        call.messages_so_far()
    );
    assert!(
        gw.wait_for_log("recording started", T5),
        "{}",
        gw.log_tail(40)
    );
    std::thread::sleep(Duration::from_millis(500));

    let sigterm_at = Utc::now();
    gw.terminate();
    // Draining: a new INVITE is refused with 503.
    let refused = Sipp::uac("uac_invite_503.xml", gw.sip_addr())
        .timeout_s(10)
        .run();
    refused.assert_success();
    let refused_at = traced(&refused, false, "SIP/2.0 503").at;

    // The call in progress is ended by the gateway once the grace period is over.
    let call = call.wait();
    call.assert_success();
    assert!(call.logs.contains("BYE received"), "{}", call.report());
    let bye_at = traced(&call, false, "BYE ").at;
    assert!(
        refused_at < bye_at,
        "the 503 must come while the call drains"
    );
    let after = (bye_at - sigterm_at).num_milliseconds();
    eprintln!("measured: BYE {after} ms after SIGTERM");
    assert!(
        (1900..=5000).contains(&after),
        "BYE {after} ms after SIGTERM; want the 2 s grace (shutdown_grace_s = 2), then a BYE"
    );

    let status = gw.wait_exit(T20);
    assert_eq!(
        status.code(),
        Some(0),
        "voxgate must exit 0 after a graceful shutdown ({status})\n{}",
        gw.log_tail(60)
    );

    // Every recording finalized: sidecar `complete`, the .wav in place, no .part left.
    let recs = sidecars(&gw.recordings_dir());
    assert_eq!(recs.len(), 1, "one recording: {recs:#?}");
    let rec = &recs[0];
    let id = rec["id"].as_str().unwrap();
    assert_eq!(rec["status"], "complete", "{rec:#}");
    assert!(gw.recordings_dir().join(format!("{id}.wav")).is_file());
    assert!(!gw.recordings_dir().join(format!("{id}.wav.part")).exists());

    // The CDR was written, with the shutdown as the reason.
    let call_id = sipp_call_id(&call);
    let cdrs = std::fs::read_to_string(gw.data_dir().join("cdrs.jsonl")).expect("cdrs.jsonl");
    let cdr: Value = cdrs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|c| c["call_id"] == call_id.as_str())
        .unwrap_or_else(|| panic!("no CDR for {call_id}: {cdrs}"));
    assert_eq!(cdr["end_reason"], "shutdown", "{cdr:#}");
    assert_eq!(cdr["recording_ids"][0], id, "{cdr:#}");
}

#[test]
fn sigint_on_an_idle_gateway_exits_0() {
    let mut gw = Gateway::start_default();
    gw.interrupt();
    let status = gw.wait_exit(T10);
    assert_eq!(status.code(), Some(0), "{status}\n{}", gw.log_tail(40));
}

// ---------------------------------------------------------------------------------------------
// Say text (TTS)
// ---------------------------------------------------------------------------------------------

/// Runs the TTS flow on a call that waits for the gateway's BYE; returns the call's id, its
/// `call ended` summary and the bot channel of its recording.
fn tts_call(gw: &Gateway) -> (String, CallEndStats, Vec<i16>) {
    let out = Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(40)
        .run();
    out.assert_success();
    assert!(out.logs.contains("BYE received"), "{}", out.report());
    let call_id = sipp_call_id(&out);
    let end = call_end(gw, &call_id);
    let recs = settled_recordings(gw, &call_id);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    assert_eq!(recs[0]["status"], "complete", "{:#}", recs[0]);
    let bot = bot_channel(gw, recs[0]["id"].as_str().unwrap());
    (call_id, end, bot)
}

#[test]
fn say_text_speaks_through_espeak_on_a_real_call() {
    require_sipp();
    let want = espeak_span_ms(TTS_TEXT);
    assert!(want > 4000, "espeak-ng rendered only {want} ms");
    let gw = Gateway::builder().flow_yaml(&tts_flow(TTS_TEXT)).start();
    let (call_id, end, bot) = tts_call(&gw);

    let log = gw.log_text();
    assert!(
        !log.contains("TTS unavailable") && !log.contains("say failed"),
        "TTS must work when espeak-ng is installed\n{}",
        gw.log_tail(60)
    );
    // RTP: the call lasted, and sent, at least the speech.
    assert!(
        end.rtp_tx_packets * 20 >= want * 9 / 10,
        "{} packets sent (= {} ms) for {want} ms of speech: {}",
        end.rtp_tx_packets,
        end.rtp_tx_packets * 20,
        end.line
    );
    // The bot channel holds the speech: as long as espeak-ng's rendering of the text.
    let got = audible_span_ms(&bot, 8000, AUDIBLE_RMS);
    eprintln!(
        "measured: speech {got} ms on the bot channel, espeak-ng {want} ms, {} packets sent",
        end.rtp_tx_packets
    );
    assert_near(
        "audible speech on the bot channel",
        got,
        want,
        (want / 10).max(300),
    );
    let cdr = cdr_of(&gw, &call_id);
    assert_eq!(cdr["end_reason"], "flow_closed", "{cdr:#}");
}

#[test]
fn say_text_without_tts_binary_logs_and_plays_the_fallback() {
    require_sipp();
    let speech = espeak_span_ms(TTS_TEXT);
    let fallback_file = repo_root().join("sip-config/prompts/tts_fallback.wav");
    let (rate, channels, samples) = parse_wav(&std::fs::read(&fallback_file).unwrap());
    assert_eq!(channels, 1);
    let want = audible_span_ms(&samples, rate, AUDIBLE_RMS);
    assert!(
        want > 1000 && speech > want + 1500,
        "fallback {want} ms vs speech {speech} ms: too close to tell apart"
    );

    let gw = Gateway::builder()
        .flow_yaml(&tts_flow(TTS_TEXT))
        .toml("[tts]\nbinary = \"/nonexistent\"")
        .start();
    let (call_id, _end, bot) = tts_call(&gw);

    // A clear line: TTS is unavailable, naming the binary, and the fallback is played.
    line_with_all(&gw.log_text(), &["/nonexistent", "not found"]);
    assert!(
        gw.log_contains("TTS unavailable"),
        "want a `TTS unavailable` line\n{}",
        gw.log_tail(60)
    );
    let got = audible_span_ms(&bot, 8000, AUDIBLE_RMS);
    eprintln!("measured: fallback {got} ms on the bot channel, file {want} ms");
    assert_near("audible fallback prompt on the bot channel", got, want, 300);
    let cdr = cdr_of(&gw, &call_id);
    assert_eq!(cdr["end_reason"], "flow_closed", "{cdr:#}");
}

// ---------------------------------------------------------------------------------------------
// Issue 11 on a real call: pause_bot with hold audio and max_ms; a key during a barge-in prompt
// keeps the normal prompt queued behind it. (Inactivity during a long prompt: see
// inactivity_closes_the_conversation_after_inactivity_s, whose greeting outlasts it.)
// ---------------------------------------------------------------------------------------------

const PAUSE_FLOW: &str = r#"
name: test-pause
start: main
inactivity_s: 0
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  main:
    - start_recording
    - pause_bot: {max_ms: 3000, on_timeout: after, hold: hold.wav}
    - close
  after:
    - track_event: {name: pause_timed_out}
    - close
"#;

#[test]
fn pause_bot_plays_hold_audio_shows_paused_and_ends_at_max_ms() {
    require_sipp();
    let gw = Gateway::builder().flow_yaml(PAUSE_FLOW).start();
    let sipp = Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(30)
        .spawn();
    // While paused, GET /v1/calls says so.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen_paused = false;
    while Instant::now() < deadline && !seen_paused {
        let calls = get_json(&gw, "/v1/calls");
        seen_paused = calls["calls"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["paused"] == true));
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = sipp.wait();
    out.assert_success();
    assert!(
        seen_paused,
        "paused never showed in /v1/calls\n{}",
        gw.log_tail(40)
    );
    let call_id = sipp_call_id(&out);
    let answered = traced(&out, false, "SIP/2.0 200");
    let bye = traced(&out, false, "BYE ");
    let after = (bye.at - answered.at).num_milliseconds();
    eprintln!("measured: BYE {after} ms after the answer (max_ms 3000)");
    assert!(
        (2900..=4500).contains(&after),
        "BYE {after} ms after the answer; want max_ms (3 s) to 4.5 s\n{}",
        out.report()
    );
    let events = events_of(&gw, &call_id);
    event_named(&events, "pause_timed_out", &call_id);
    // The hold prompt (2 s) looped for the whole pause on the bot channel.
    let recs = settled_recordings(&gw, &call_id);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let bot = bot_channel(&gw, recs[0]["id"].as_str().unwrap());
    let audible = audible_span_ms(&bot, 8000, AUDIBLE_RMS);
    eprintln!("measured: hold audio audible for {audible} ms");
    assert!(
        audible >= 2_500,
        "hold audio audible for only {audible} ms of a 3 s pause"
    );
    // The flow's summary and step log reach the CDR.
    let cdr = cdr_of(&gw, &call_id);
    let flow = &cdr["flow"];
    assert_eq!(flow["flow"], "test-pause", "CDR: {cdr:#}");
    assert_eq!(flow["end"]["reason"], "close_step", "CDR: {cdr:#}");
    let steps: Vec<&str> = flow["steps"]
        .as_array()
        .expect("steps")
        .iter()
        .map(|s| s["type"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        steps,
        ["start_recording", "pause_bot", "track_event", "close"],
        "CDR: {cdr:#}"
    );
}

const QUEUED_FLOW: &str = r#"
name: test-queued
start: main
inactivity_s: 0
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  main:
    - start_recording
    - message: {file: greeting.wav, barge_in: true, wait: false}
    - message: {file: hold.wav, wait: false}
    - collect: {max_digits: 1, terminator: "", variable: c}
    - message: {file: goodbye.wav}
    - close
"#;

#[test]
fn a_key_during_a_barge_in_prompt_keeps_the_prompt_queued_behind_it() {
    require_sipp();
    let gw = Gateway::builder().flow_yaml(QUEUED_FLOW).start();
    // The key comes 1.5 s into the 7.9 s greeting: the greeting stops, then the 2 s
    // hold.wav (queued behind it, not barge-in) and the 0.9 s goodbye play, then BYE.
    let out = Sipp::uac("flow_close.xml", gw.sip_addr())
        .key("dtmf", "info")
        .key("digit", "1")
        .timeout_s(30)
        .run();
    out.assert_success();
    let call_id = sipp_call_id(&out);
    let key = sipp_clock(&out, "dtmf sent");
    let bye = sipp_clock(&out, "BYE received");
    let after_key = bye.saturating_sub(key);
    eprintln!("measured: BYE {after_key} ms after the key");
    assert!(
        (2_700..=4_500).contains(&after_key),
        "BYE {after_key} ms after the key; want hold.wav (2 s) + goodbye.wav (0.9 s) to play \
         first\n{}",
        out.report()
    );
    let recs = settled_recordings(&gw, &call_id);
    assert_eq!(recs.len(), 1, "{recs:#?}");
    let bot = bot_channel(&gw, recs[0]["id"].as_str().unwrap());
    let audible = audible_span_ms(&bot, 8000, AUDIBLE_RMS);
    eprintln!("measured: bot audible for {audible} ms");
    assert!(
        audible >= 3_500,
        "bot audio spans {audible} ms: the queued prompt was dropped with the greeting"
    );
}
