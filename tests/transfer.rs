//! Forwarding a call (issue 4, CONTRACT §3 and §4), end to end: the real `voxgate` binary with
//! the demo flow, a SIPp caller (the transferee) and a SIPp UAS playing the trunk on
//! `gw.trunk_port` (where `[transfer] trunk` points). Every test has its own gateway and peers.
//!
//! Scenarios (tests/sipp):
//! - `xfer_caller_refer_ok.xml`: keys as INFO, REFER with the exact Refer-To -> 202, NOTIFY
//!   100 and 200 (each must get 200), BYE within 1 s of the final NOTIFY.
//! - `xfer_caller_bridged.xml`: `1` as RFC 4733, REFER with the exact Refer-To -> 405 (or 202
//!   and silence), speech, waits for voxgate's BYE.
//! - `xfer_caller_back_to_bot.xml`: keys as INFO, no REFER (or REFER -> 202 and silence), stays
//!   on the call (a BYE meanwhile fails it), presses `9`, must get BYE.
//! - `xfer_trunk_answer.xml` (exact Request-URI, answers, hangs up after `hold_ms`; its SDP
//!   points the media at the test's [`RtpEcho`]), `xfer_trunk_busy.xml` (486),
//!   `xfer_trunk_no_answer.xml` (rings until CANCEL).
//!
//! Media. The callee's RTP is played by the test: it counts what voxgate sends to the far leg
//! (caller -> callee) and echoes each packet back 300 ms later. What the caller hears is read
//! from the call's recording, whose right channel is exactly what voxgate sent to the caller
//! (the bot, then the far leg after a bridge; docs/recording.md) and whose left channel is what
//! the caller sent. After a bridge the caller's own speech must come back on the right channel
//! at least the echo delay later (callee -> caller); after a failure the error prompt must be
//! there, right after the failure.
//!
//! Log lines relied on (tracing fmt, key=value): `forward starting`, `sending REFER
//! refer_to=`, `REFER answered status=N`, `bridging: INVITE to the trunk target=`,
//! `transfer.completed number= mode=`, `transfer.failed reason=`, `forward failed reason=` (the
//! flow), `flow action action=Play { .. file: "error.wav" }` (debug), `call ended reason=`,
//! `DTMF received digit= via=`, `conversation closed`.

mod common;

use chrono::{DateTime, FixedOffset, NaiveDateTime};
use common::*;
use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The demo flow's `forward_number`.
const NUMBER: &str = "+3225551212";
/// A London number (+44 20 7946 0000): valid E.164, allowed by default, not with allow=["+32"].
const UK_NUMBER: &str = "+442079460000";

const CALLER_REFER_OK: &str = "xfer_caller_refer_ok.xml";
const CALLER_BRIDGED: &str = "xfer_caller_bridged.xml";
const CALLER_BACK_TO_BOT: &str = "xfer_caller_back_to_bot.xml";
const TRUNK_ANSWER: &str = "xfer_trunk_answer.xml";
const TRUNK_BUSY: &str = "xfer_trunk_busy.xml";
const TRUNK_NO_ANSWER: &str = "xfer_trunk_no_answer.xml";

const T5: Duration = Duration::from_secs(5);
const T10: Duration = Duration::from_secs(10);

/// The session's end-of-call summary (the flow's own line is "call ended under the flow").
const CALL_ENDED: &str = "call ended reason=";
const ERROR_PROMPT: &str = "error.wav";
/// Normalised cross-correlation that counts as "this is that audio". Measured: the error
/// prompt in the recording and pieces of the echoed speech score 0.99 and more (both went
/// through G.711); a piece straddling a 20 ms slip of the recording's left channel drops to
/// about 0.7, unrelated audio or silence lower still.
const SAME_AUDIO: f64 = 0.8;

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A gateway with the demo flow and the harness config (mode auto, trunk on `trunk_port`,
/// allow +32 +31 +44 +1), plus `extra` TOML merged over it.
fn gateway(extra: &str) -> Gateway {
    require_sipp();
    let mut b = Gateway::builder();
    if !extra.is_empty() {
        b = b.toml(extra);
    }
    b.start()
}

/// A SIPp UAS on the gateway's trunk port, listening before the call starts.
fn trunk(gw: &Gateway, scenario: &str, keys: &[(&str, &str)], timeout_s: u64) -> SippProcess {
    let mut s = Sipp::uas(scenario, gw.trunk_port).timeout_s(timeout_s);
    for (k, v) in keys {
        s = s.key(k, v);
    }
    let mut p = s.spawn();
    p.wait_listening(T10);
    p
}

/// A trunk stand-in that must receive nothing: any SIP reaching it is traced, and SIPp aborts
/// its (only) call and exits on anything but the INVITE it would answer.
fn silent_trunk(gw: &Gateway, timeout_s: u64) -> SippProcess {
    trunk(
        gw,
        TRUNK_ANSWER,
        &[("number", NUMBER), ("hold_ms", "1000"), ("rtp_port", "9")],
        timeout_s,
    )
}

/// How long the callee's echo holds each packet. The caller's speech must come back at least
/// this late: a shortcut inside voxgate (or the recorder) could not produce the delay.
const ECHO_DELAY: Duration = Duration::from_millis(300);

/// The callee's media end, played by the test (the trunk scenario's SDP answer points here):
/// every RTP packet is counted and sent back to where it came from, [`ECHO_DELAY`] later.
struct RtpEcho {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<EchoStats>>,
}

#[derive(Debug, Default, Clone)]
struct EchoStats {
    packets: u64,
    /// Packets whose G.711 payload carries sound (not silence).
    speech_packets: u64,
    payload_types: BTreeSet<u8>,
    sources: BTreeSet<std::net::SocketAddr>,
}

impl RtpEcho {
    fn start() -> RtpEcho {
        // An even port whose odd neighbour (RTCP, which voxgate sends there) is reserved too.
        let port = free_media_port();
        let sock = UdpSocket::bind(("127.0.0.1", port)).expect("bind the RTP echo");
        sock.set_read_timeout(Some(Duration::from_millis(2)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut stats = EchoStats::default();
            let mut buf = [0u8; 2048];
            let mut later: std::collections::VecDeque<(Instant, Vec<u8>, std::net::SocketAddr)> =
                Default::default();
            while !stopping.load(Ordering::Relaxed) {
                while later
                    .front()
                    .is_some_and(|(due, _, _)| *due <= Instant::now())
                {
                    let (_, pkt, to) = later.pop_front().expect("front");
                    sock.send_to(&pkt, to).ok();
                }
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let pkt = &buf[..n];
                if n < 12 || pkt[0] >> 6 != 2 {
                    continue; // not RTP (e.g. RTCP goes to port + 1 anyway)
                }
                let pt = pkt[1] & 0x7f;
                stats.packets += 1;
                stats.payload_types.insert(pt);
                stats.sources.insert(from);
                let header = 12 + 4 * usize::from(pkt[0] & 0x0f);
                if pt == 0 && n > header && ulaw_rms(&pkt[header..]) > 300.0 {
                    stats.speech_packets += 1;
                }
                later.push_back((Instant::now() + ECHO_DELAY, pkt.to_vec(), from));
            }
            stats
        });
        RtpEcho {
            port,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> EchoStats {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .map(|t| t.join().expect("RTP echo thread"))
            .unwrap_or_default()
    }
}

impl Drop for RtpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// G.711 mu-law to linear (ITU-T G.711).
fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let exponent = (u >> 4) & 0x07;
    let mantissa = i32::from(u & 0x0f);
    let magnitude = (((mantissa << 3) + 0x84) << exponent) - 0x84;
    (if u & 0x80 != 0 { -magnitude } else { magnitude }) as i16
}

fn ulaw_rms(payload: &[u8]) -> f64 {
    let v: Vec<f32> = payload
        .iter()
        .map(|&b| f32::from(ulaw_to_linear(b)))
        .collect();
    rms(&v)
}

#[track_caller]
fn assert_trunk_got_nothing(gw: &Gateway, mut watcher: SippProcess) {
    let running = watcher.is_running();
    let out = watcher.kill();
    assert!(
        running && out.messages.trim().is_empty(),
        "the trunk (port {}) must receive no SIP at all, but it got:\n{}\n{}",
        gw.trunk_port,
        out.report(),
        gw.log_tail(80)
    );
}

/// The caller's keys for `xfer_caller_back_to_bot.xml`.
fn back_to_bot(gw: &Gateway, digits: &str, refer_status: &str, stay_ms: u64) -> Sipp {
    Sipp::uac(CALLER_BACK_TO_BOT, gw.sip_addr())
        .key("digits", digits)
        .key("refer_status", refer_status)
        .key("number", NUMBER)
        .key("trunk_port", &gw.trunk_port.to_string())
        .key("stay_ms", &stay_ms.to_string())
        .timeout_s(60)
}

#[track_caller]
fn assert_sipp_ok(who: &str, out: &SippOutcome, gw: &Gateway) {
    assert!(
        out.success(),
        "{who} failed (exit {:?})\n{}\n{}",
        out.code,
        out.report(),
        gw.log_tail(120)
    );
}

// ---------------------------------------------------------------------------------------------
// Logs
// ---------------------------------------------------------------------------------------------

/// The one line containing `pattern` (panics with the log when there is none).
#[track_caller]
fn one_line(gw: &Gateway, pattern: &str) -> String {
    let lines = gw.log_lines(pattern);
    assert!(
        !lines.is_empty(),
        "no log line contains {pattern:?}\n{}",
        gw.log_tail(150)
    );
    assert_eq!(
        lines.len(),
        1,
        "expected exactly one {pattern:?} line, got {lines:#?}"
    );
    lines[0].clone()
}

/// Waits for the gateway's end-of-call line and returns it.
#[track_caller]
fn call_ended_line(gw: &Gateway) -> String {
    assert!(
        gw.wait_for_log(CALL_ENDED, T10),
        "no `call ended` line\n{}",
        gw.log_tail(120)
    );
    one_line(gw, CALL_ENDED)
}

/// The timestamp tracing puts first on each line (`2026-01-01T00:00:00.123456Z`).
#[track_caller]
fn log_time(line: &str) -> DateTime<FixedOffset> {
    let ts = line.split_whitespace().next().unwrap_or_default();
    DateTime::parse_from_rfc3339(ts)
        .unwrap_or_else(|e| panic!("no RFC 3339 timestamp at the start of {line:?}: {e}"))
}

fn secs_between(a: &str, b: &str) -> f64 {
    (log_time(b) - log_time(a)).num_microseconds().unwrap_or(0) as f64 / 1e6
}

/// `GET /v1/calls` -> the calls array.
#[track_caller]
fn active_calls(gw: &Gateway) -> Vec<serde_json::Value> {
    let r = gw.get("/v1/calls").expect("GET /v1/calls");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["calls"].as_array().cloned().unwrap_or_default()
}

/// Polls `/v1/calls` until it is empty.
#[track_caller]
fn assert_calls_drain(gw: &Gateway, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let calls = active_calls(gw);
        if calls.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the call is still listed in /v1/calls {timeout:?} after it ended: {calls:#?}\n{}",
            gw.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The demo flow's `track_event` lines in `data/events.jsonl` named `name`.
fn tracked_events(gw: &Gateway, name: &str) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(gw.data_dir().join("events.jsonl")).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["name"] == name)
        .collect()
}

/// No SIP went out for a forward: no REFER, no INVITE to the trunk.
#[track_caller]
fn assert_no_forward_sip(gw: &Gateway) {
    for pattern in ["forward starting", "sending REFER", "bridging: INVITE"] {
        assert!(
            !gw.log_contains(pattern),
            "{pattern:?} logged, but no SIP may be sent for this forward\n{}",
            gw.log_tail(80)
        );
    }
}

/// The failure path back to the bot: one `transfer.failed` with `reason`, the flow's
/// `forward failed` with the same reason and its `forward_failed` event.
#[track_caller]
fn assert_transfer_failed(gw: &Gateway, reason: &str) -> String {
    let flow = one_line(gw, "forward failed");
    assert_eq!(
        field(&flow, "reason").as_deref(),
        Some(reason),
        "the flow saw another reason: {flow}"
    );
    let events = tracked_events(gw, "forward_failed");
    assert!(
        events.len() == 1 && events[0]["properties"]["reason"] == reason,
        "events.jsonl must hold one forward_failed event with reason {reason}: {events:#?}"
    );
    let failed = gw.log_lines("transfer.failed");
    assert!(
        failed.len() == 1 && field(&failed[0], "reason").as_deref() == Some(reason),
        "expected exactly one `transfer.failed reason={reason}` log line, got {failed:#?}\n{}",
        gw.log_tail(80)
    );
    assert!(!gw.log_contains("transfer.completed"));
    failed[0].clone()
}

// ---------------------------------------------------------------------------------------------
// SIPp message traces
// ---------------------------------------------------------------------------------------------

/// One message of a SIPp `-trace_msg` file.
#[derive(Debug, Clone)]
struct Traced {
    at: NaiveDateTime,
    sent: bool,
    text: String,
}

impl Traced {
    fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }
}

fn parse_trace(messages: &str) -> Vec<Traced> {
    let mut out = Vec::new();
    for block in messages.split("----------------------------------------------- ") {
        let mut lines = block.lines();
        let Some(ts) = lines.next() else { continue };
        let Ok(at) = NaiveDateTime::parse_from_str(ts.trim(), "%Y-%m-%d %H:%M:%S%.f") else {
            continue;
        };
        let Some(kind) = lines.next() else { continue };
        let text: Vec<&str> = lines.skip_while(|l| l.trim().is_empty()).collect();
        out.push(Traced {
            at,
            sent: kind.contains("sent"),
            text: text.join("\n"),
        });
    }
    out
}

/// First message whose first line starts with `start` (and that was sent / received).
#[track_caller]
fn traced(trace: &[Traced], sent: bool, start: &str, body: &str) -> Traced {
    trace
        .iter()
        .find(|m| m.sent == sent && m.first_line().starts_with(start) && m.text.contains(body))
        .cloned()
        .unwrap_or_else(|| {
            panic!(
                "no {} message starting {start:?} (with {body:?}) in the SIPp trace",
                if sent { "sent" } else { "received" }
            )
        })
}

fn trace_secs(from: &Traced, to: &Traced) -> f64 {
    (to.at - from.at).num_microseconds().unwrap_or(0) as f64 / 1e6
}

// ---------------------------------------------------------------------------------------------
// Recordings: what the caller heard
// ---------------------------------------------------------------------------------------------

struct Recording {
    id: String,
    started_at: DateTime<FixedOffset>,
    /// What the caller sent.
    left: Vec<f32>,
    /// What voxgate sent to the caller.
    right: Vec<f32>,
}

impl Recording {
    /// Sample index of a log line's instant.
    fn index_of(&self, line: &str) -> usize {
        let us = (log_time(line) - self.started_at)
            .num_microseconds()
            .unwrap_or(0)
            .max(0);
        (us as u64 * 8 / 1000) as usize
    }
}

/// Waits for the call's recordings to be complete and reads them, oldest first.
#[track_caller]
fn recordings(gw: &Gateway, n: usize) -> Vec<Recording> {
    let dir = gw.recordings_dir();
    let deadline = Instant::now() + T10;
    loop {
        let sidecars: Vec<serde_json::Value> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.extension().is_some_and(|x| x == "json"))
                    .filter_map(|p| std::fs::read(p).ok())
                    .filter_map(|b| serde_json::from_slice(&b).ok())
                    .collect()
            })
            .unwrap_or_default();
        let complete = sidecars
            .iter()
            .filter(|s| s["status"] == "complete")
            .count();
        if complete >= n && sidecars.len() == n {
            let mut recs: Vec<Recording> =
                sidecars.iter().map(|s| read_recording(&dir, s)).collect();
            recs.sort_by_key(|r| r.started_at);
            return recs;
        }
        assert!(
            Instant::now() < deadline,
            "expected {n} complete recording(s) in {}, found {sidecars:#?}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_recording(dir: &Path, sidecar: &serde_json::Value) -> Recording {
    let id = sidecar["id"].as_str().expect("sidecar id").to_string();
    let started_at = DateTime::parse_from_rfc3339(sidecar["started_at"].as_str().unwrap_or(""))
        .expect("sidecar started_at");
    let path: PathBuf = dir.join(format!("{id}.wav"));
    let mut reader = hound::WavReader::open(&path).expect("open recording");
    let spec = reader.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16),
        "{}",
        path.display()
    );
    let samples: Vec<f32> = reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")))
        .collect();
    let left = samples.iter().step_by(2).copied().collect();
    let right = samples.iter().skip(1).step_by(2).copied().collect();
    Recording {
        id,
        started_at,
        left,
        right,
    }
}

fn prompt(name: &str) -> Vec<f32> {
    let path = prompts_dir().join(name);
    let mut r = hound::WavReader::open(&path).expect("open prompt");
    assert_eq!(r.spec().sample_rate, 8000, "{}", path.display());
    r.samples::<i16>()
        .map(|s| f32::from(s.expect("sample")))
        .collect()
}

fn rms(x: &[f32]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|&v| f64::from(v) * f64::from(v)).sum::<f64>() / x.len() as f64).sqrt()
}

/// Where `needle` best matches `hay` for start offsets in `from..=to`: (offset, normalised
/// cross-correlation in -1..=1).
fn best_match(hay: &[f32], needle: &[f32], from: usize, to: usize) -> (usize, f64) {
    let m = needle.len();
    if hay.len() < m {
        return (0, 0.0);
    }
    let to = to.min(hay.len() - m);
    let needle_norm = needle
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum::<f64>()
        .sqrt();
    // running energy of hay[lag..lag + m]
    let mut energy: f64 = hay[from.min(to)..from.min(to) + m]
        .iter()
        .map(|&v| f64::from(v).powi(2))
        .sum();
    let mut best = (from, -1.0f64);
    for lag in from..=to {
        if lag > from {
            energy += f64::from(hay[lag + m - 1]).powi(2) - f64::from(hay[lag - 1]).powi(2);
        }
        let dot: f32 = hay[lag..lag + m]
            .iter()
            .zip(needle)
            .map(|(a, b)| a * b)
            .sum();
        let c = f64::from(dot) / (energy.max(1e-9).sqrt() * needle_norm.max(1e-9));
        if c > best.1 {
            best = (lag, c);
        }
    }
    best
}

/// The error prompt is what voxgate sent to the caller right after the failure.
#[track_caller]
fn assert_error_prompt_heard(gw: &Gateway) {
    let failed = one_line(gw, "forward failed");
    let play = gw
        .log_lines("flow action")
        .into_iter()
        .find(|l| l.contains("Play") && l.contains(ERROR_PROMPT));
    let play = play.unwrap_or_else(|| {
        panic!(
            "the flow never played {ERROR_PROMPT} after the failure\n{}",
            gw.log_tail(80)
        )
    });
    assert!(log_time(&play) >= log_time(&failed), "{play}\n{failed}");

    let recs = recordings(gw, 1);
    let rec = &recs[0];
    let needle = prompt(ERROR_PROMPT);
    let at = rec.index_of(&failed);
    let (pos, score) = best_match(&rec.right, &needle, at.saturating_sub(4000), at + 12000);
    let offset_ms = (pos as f64 - at as f64) / 8.0;
    assert!(
        score >= SAME_AUDIO,
        "the error prompt is not in what the caller heard (recording {}): best match {score:.3} \
         at {offset_ms:+.0} ms from the failure",
        rec.id
    );
    assert!(
        (-200.0..=1000.0).contains(&offset_ms),
        "the error prompt started {offset_ms:+.0} ms after the failure (score {score:.3})"
    );
    eprintln!("error prompt heard: score {score:.3}, {offset_ms:+.0} ms after the failure");
}

/// After the bridge, the caller's own speech comes back to it: caller -> voxgate -> callee
/// (the test's echo, [`ECHO_DELAY`] late) -> voxgate -> caller.
///
/// The check runs on short pieces of the caller's speech: the recording pairs one caller frame
/// with each frame sent, so the left channel may slip by a frame now and then, and a long
/// piece straddling a slip would correlate poorly although the audio is all there.
#[track_caller]
fn assert_two_way_media(gw: &Gateway, bridged_line: &str, bridged_for_ms: u64) {
    const PIECE_MS: usize = 250;
    const MAX_LAG_MS: usize = 1200;
    let recs = recordings(gw, 1);
    let rec = &recs[0];
    let b = rec.index_of(bridged_line);
    // Pieces of the caller's speech well inside the bridged period.
    let first = b + 8 * 800;
    let last_end = (b + 8 * bridged_for_ms as usize).min(rec.right.len()) - 8 * MAX_LAG_MS;
    assert!(
        first + 8 * 4 * PIECE_MS <= last_end,
        "recording {} too short: {} samples, bridged at {b}",
        rec.id,
        rec.right.len()
    );
    let mut results = Vec::new();
    let mut start = first;
    while start + 8 * PIECE_MS <= last_end {
        let needle = &rec.left[start..start + 8 * PIECE_MS];
        if rms(needle) > 500.0 {
            let (pos, score) = best_match(&rec.right, needle, start, start + 8 * MAX_LAG_MS);
            results.push((start, score, (pos - start) as f64 / 8.0));
        }
        start += 8 * PIECE_MS;
    }
    let min_delay = ECHO_DELAY.as_millis() as f64 - 100.0;
    let good = results
        .iter()
        .filter(|(_, score, delay)| *score >= SAME_AUDIO && *delay >= min_delay)
        .count();
    let summary: Vec<String> = results
        .iter()
        .map(|(at, score, delay)| format!("+{} ms: {score:.3} at {delay:.0} ms", (at - b) / 8))
        .collect();
    assert!(
        results.len() >= 3 && good * 4 >= results.len() * 3,
        "the caller's speech did not come back through the callee's {ECHO_DELAY:?} echo: \
         want >= 3 pieces of speech and 3 in 4 of them matched (score >= {SAME_AUDIO}, delay >= \
         {min_delay} ms); recording {}, after the bridge: {summary:?}",
        rec.id
    );
    eprintln!(
        "echo through the bridge: {good}/{} pieces match: {summary:?}",
        results.len()
    );
}

// ---------------------------------------------------------------------------------------------
// REFER
// ---------------------------------------------------------------------------------------------

/// `1` -> REFER to `<sip:+3225551212@127.0.0.1:<trunk port>;user=phone>` -> 202, NOTIFY 100,
/// NOTIFY 200 -> BYE within 1 s; `transfer.completed`, reason transferred, gone from /v1/calls.
#[test]
fn refer_accepted_and_notified_200_completes_and_hangs_up() {
    let gw = gateway("");
    let watcher = silent_trunk(&gw, 60);
    let caller = Sipp::uac(CALLER_REFER_OK, gw.sip_addr())
        .key("digits", "1")
        .key("number", NUMBER)
        .key("trunk_port", &gw.trunk_port.to_string())
        .timeout_s(30)
        .run();
    assert_sipp_ok("caller (REFER, 202, NOTIFY 100/200)", &caller, &gw);

    // The exchange, from the caller's side.
    let trace = parse_trace(&caller.messages);
    let refer = traced(&trace, false, "REFER ", "Refer-To:");
    let refer_to = format!("<sip:{NUMBER}@127.0.0.1:{};user=phone>", gw.trunk_port);
    assert!(
        refer.text.contains(&format!("Refer-To: {refer_to}")),
        "{}",
        refer.text
    );
    let notify_100 = traced(&trace, true, "NOTIFY ", "SIP/2.0 100 Trying");
    let notify_200 = traced(&trace, true, "NOTIFY ", "\nSIP/2.0 200 OK");
    for n in [&notify_100, &notify_200] {
        for h in [
            "Event: refer",
            "Subscription-State: ",
            "Content-Type: message/sipfrag",
        ] {
            assert!(n.text.contains(h), "{h:?} missing:\n{}", n.text);
        }
    }
    // each NOTIFY (by CSeq) must get 200
    for n in [&notify_100, &notify_200] {
        let cseq = n
            .text
            .lines()
            .find(|l| l.starts_with("CSeq:"))
            .unwrap_or("?");
        assert!(
            trace.iter().any(|m| !m.sent
                && m.first_line() == "SIP/2.0 200 OK"
                && m.text.lines().any(|l| l == cseq)),
            "no 200 for the NOTIFY with {cseq}"
        );
    }
    let bye = traced(&trace, false, "BYE ", "");
    let bye_after = trace_secs(&notify_200, &bye);
    assert!(
        (0.0..1.0).contains(&bye_after),
        "BYE {bye_after:.3} s after the final NOTIFY (must be within 1 s)"
    );
    eprintln!("BYE {:.0} ms after the final NOTIFY", bye_after * 1000.0);

    // The gateway's side.
    let sending = one_line(&gw, "sending REFER");
    assert_eq!(
        field(&sending, "refer_to").as_deref(),
        Some(refer_to.as_str())
    );
    assert_eq!(
        field(&one_line(&gw, "REFER answered"), "status").as_deref(),
        Some("202")
    );
    let done = one_line(&gw, "transfer.completed");
    assert_eq!(field(&done, "mode").as_deref(), Some("refer"), "{done}");
    assert_eq!(field(&done, "number").as_deref(), Some(NUMBER), "{done}");
    assert!(!gw.log_contains("transfer.failed"), "{}", gw.log_tail(60));
    let ended = call_ended_line(&gw);
    assert_eq!(
        field(&ended, "reason").as_deref(),
        Some("transferred"),
        "{ended}"
    );
    assert_calls_drain(&gw, T5);
    assert_trunk_got_nothing(&gw, watcher);
}

/// REFER refused (405), default mode auto: voxgate calls the trunk itself (exact Request-URI),
/// media flows both ways through it, and the callee's BYE is passed on to the caller.
#[test]
fn refer_refused_405_auto_mode_bridges_through_the_trunk() {
    let gw = gateway("");
    let hold_ms = 4000;
    let echo = RtpEcho::start();
    let callee = trunk(
        &gw,
        TRUNK_ANSWER,
        &[
            ("number", NUMBER),
            ("hold_ms", &hold_ms.to_string()),
            ("rtp_port", &echo.port.to_string()),
        ],
        60,
    );
    let caller = Sipp::uac(CALLER_BRIDGED, gw.sip_addr())
        .key("number", NUMBER)
        .key("trunk_port", &gw.trunk_port.to_string())
        .key("refer_status", "405")
        .timeout_s(40)
        .run();
    let callee = callee.wait();
    let echo = echo.finish();
    assert_sipp_ok("trunk (answers, hangs up)", &callee, &gw);
    assert_sipp_ok("caller (REFER -> 405, then waits for BYE)", &caller, &gw);
    check_bridged_call(&gw, &caller, &callee, &echo, "405", hold_ms);
}

/// What every bridged call must show once both SIPp peers are done.
#[track_caller]
fn check_bridged_call(
    gw: &Gateway,
    caller: &SippOutcome,
    callee: &SippOutcome,
    echo: &EchoStats,
    refer_status: &str,
    hold_ms: u64,
) {
    // `1` arrived as RFC 4733.
    let dtmf = dtmf_digits_via(&gw.dtmf_logs(), "rfc4733");
    assert_eq!(dtmf, ["1"], "{}", gw.log_tail(60));
    assert_eq!(
        field(&one_line(gw, "REFER answered"), "status").as_deref(),
        Some(refer_status)
    );
    // The INVITE to the trunk, as the trunk saw it.
    let ruri = format!("sip:{NUMBER}@127.0.0.1:{}", gw.trunk_port);
    let callee_trace = parse_trace(&callee.messages);
    let invite = traced(&callee_trace, false, "INVITE ", "");
    assert_eq!(invite.first_line(), format!("INVITE {ruri} SIP/2.0"));
    let bridging = one_line(gw, "bridging: INVITE to the trunk");
    assert_eq!(field(&bridging, "target").as_deref(), Some(ruri.as_str()));
    let done = one_line(gw, "transfer.completed");
    assert_eq!(field(&done, "mode").as_deref(), Some("bridge"), "{done}");
    assert!(!gw.log_contains("transfer.failed"), "{}", gw.log_tail(60));

    // The callee hung up; the caller got BYE from voxgate right after.
    let callee_bye = traced(&callee_trace, true, "BYE ", "");
    let caller_bye = traced(&parse_trace(&caller.messages), false, "BYE ", "");
    let relay = trace_secs(&callee_bye, &caller_bye);
    assert!(
        (0.0..2.0).contains(&relay),
        "the caller got BYE {relay:.3} s after the callee hung up"
    );
    let ended = call_ended_line(gw);
    assert_eq!(
        field(&ended, "reason").as_deref(),
        Some("far_end_hangup"),
        "{ended}"
    );
    // Caller leg counters: the caller streamed all along, voxgate relayed the far leg back.
    let stats = CallEndStats::parse(&ended).expect("call ended stats");
    let min_packets = hold_ms / 20 * 7 / 10;
    assert!(
        stats.rtp_rx_packets >= min_packets && stats.rtp_tx_packets >= min_packets,
        "too few RTP packets on the caller leg (want >= {min_packets} each way): {ended}"
    );
    // Caller -> callee: the far end got a steady PCMU stream from voxgate carrying the caller's
    // speech (hello_3s is about half speech, half pauses).
    assert_eq!(
        echo.payload_types,
        BTreeSet::from([0]),
        "the far leg must get PCMU only: {echo:?}"
    );
    assert_eq!(echo.sources.len(), 1, "one RTP source expected: {echo:?}");
    assert!(
        echo.packets >= min_packets && echo.speech_packets >= min_packets / 4,
        "the callee got too little audio from voxgate (want >= {min_packets} packets, a \
         quarter of them speech): {echo:?}"
    );
    eprintln!(
        "callee received {} RTP packets ({} with speech)",
        echo.packets, echo.speech_packets
    );
    // Callee -> caller: what the callee sent back reached the caller.
    assert_two_way_media(gw, &done, hold_ms);
    assert_calls_drain(gw, T5);
}

/// 202 but no NOTIFY, mode auto, the default 15 s: voxgate gives up on the REFER after 15 s
/// and bridges through the trunk.
#[test]
fn refer_accepted_without_notify_falls_back_to_bridge_after_15s() {
    let gw = gateway("");
    let hold_ms = 4000;
    let echo = RtpEcho::start();
    let callee = trunk(
        &gw,
        TRUNK_ANSWER,
        &[
            ("number", NUMBER),
            ("hold_ms", &hold_ms.to_string()),
            ("rtp_port", &echo.port.to_string()),
        ],
        60,
    );
    let caller = Sipp::uac(CALLER_BRIDGED, gw.sip_addr())
        .key("number", NUMBER)
        .key("trunk_port", &gw.trunk_port.to_string())
        .key("refer_status", "202")
        .timeout_s(50)
        .run();
    let callee = callee.wait();
    let echo = echo.finish();
    assert_sipp_ok("trunk (answers, hangs up)", &callee, &gw);
    assert_sipp_ok(
        "caller (REFER -> 202, no NOTIFY, waits for BYE)",
        &caller,
        &gw,
    );

    let answered = one_line(&gw, "REFER answered");
    let bridging = one_line(&gw, "bridging: INVITE to the trunk");
    let waited = secs_between(&answered, &bridging);
    assert!(
        (14.9..16.5).contains(&waited),
        "the trunk was called {waited:.2} s after the 202 (refer_timeout_s defaults to 15)"
    );
    eprintln!("bridged {waited:.2} s after the 202");
    check_bridged_call(&gw, &caller, &callee, &echo, "202", hold_ms);
}

/// 202 but no NOTIFY, `mode = "refer"`: after refer_timeout_s the forward fails with reason
/// timeout, the caller hears the error prompt and stays connected; `9` then closes the call.
#[test]
fn refer_accepted_without_notify_in_refer_mode_returns_to_the_bot() {
    let gw = gateway("[transfer]\nmode = \"refer\"\nrefer_timeout_s = 4");
    let watcher = silent_trunk(&gw, 60);
    // 4 s timeout + 2.4 s error prompt + margin before the caller presses 9.
    let mut caller = back_to_bot(&gw, "1", "202", 9000).spawn();
    check_stays_up(&gw, &mut caller, T10);
    let caller = caller.wait();
    assert_sipp_ok("caller (REFER -> 202, no NOTIFY, stays, 9)", &caller, &gw);

    let failed = assert_transfer_failed(&gw, "timeout");
    let waited = secs_between(&one_line(&gw, "REFER answered"), &failed);
    assert!(
        (3.9..5.5).contains(&waited),
        "the REFER failed {waited:.2} s after the 202 (refer_timeout_s = 4)"
    );
    assert!(!gw.log_contains("bridging: INVITE"));
    check_back_to_bot_end(&gw);
    assert_trunk_got_nothing(&gw, watcher);
}

/// While the caller waits after a failed forward, the call is still listed, back in state
/// `confirmed` (not `transferring`).
#[track_caller]
fn check_stays_up(gw: &Gateway, caller: &mut SippProcess, within: Duration) {
    assert!(
        gw.wait_for_log("forward failed", within + T5),
        "the forward did not fail\n{}",
        gw.log_tail(80)
    );
    assert!(caller.is_running(), "the caller left before pressing 9");
    let calls = active_calls(gw);
    assert_eq!(calls.len(), 1, "{calls:#?}");
    assert_eq!(calls[0]["state"], "confirmed", "{calls:#?}");
}

/// After `9`: the error prompt was heard, the conversation was closed by the flow, the call is
/// gone.
#[track_caller]
fn check_back_to_bot_end(gw: &Gateway) {
    assert_error_prompt_heard(gw);
    let nine = gw
        .log_lines("DTMF received")
        .into_iter()
        .rfind(|l| field(l, "digit").as_deref() == Some("9"))
        .expect("the 9 was received");
    assert!(log_time(&nine) > log_time(&one_line(gw, "forward failed")));
    assert!(
        gw.log_contains("conversation closed"),
        "{}",
        gw.log_tail(40)
    );
    let ended = call_ended_line(gw);
    assert_eq!(
        field(&ended, "reason").as_deref(),
        Some("flow_closed"),
        "{ended}"
    );
    assert_calls_drain(gw, T5);
}

// ---------------------------------------------------------------------------------------------
// Bridge failures
// ---------------------------------------------------------------------------------------------

/// `mode = "bridge"`, the callee is busy (486): error prompt, the call stays up, `9` closes it.
#[test]
fn bridge_callee_busy_returns_to_the_bot() {
    let gw = gateway("[transfer]\nmode = \"bridge\"");
    let busy = trunk(&gw, TRUNK_BUSY, &[("number", NUMBER)], 60);
    let mut caller = back_to_bot(&gw, "1", "none", 5000).spawn();
    check_stays_up(&gw, &mut caller, T5);
    let caller = caller.wait();
    let busy = busy.wait();
    assert_sipp_ok("trunk (486)", &busy, &gw);
    assert_sipp_ok("caller (1, no REFER, stays, 9)", &caller, &gw);
    assert!(!gw.log_contains("sending REFER"));
    let ruri = format!("INVITE sip:{NUMBER}@127.0.0.1:{} SIP/2.0", gw.trunk_port);
    assert!(busy.messages.contains(&ruri), "{}", busy.report());
    assert_transfer_failed(&gw, "busy");
    check_back_to_bot_end(&gw);
}

/// `mode = "bridge"`, `ring_timeout_s = 3`, the callee rings and never answers: CANCEL after
/// 3 s, error prompt, the call stays up, `9` closes it.
#[test]
fn bridge_callee_no_answer_is_cancelled_and_returns_to_the_bot() {
    let gw = gateway("[transfer]\nmode = \"bridge\"\nring_timeout_s = 3");
    let ringing = trunk(&gw, TRUNK_NO_ANSWER, &[("number", NUMBER)], 60);
    let mut caller = back_to_bot(&gw, "1", "none", 8000).spawn();
    check_stays_up(&gw, &mut caller, T10);
    let caller = caller.wait();
    let ringing = ringing.wait();
    assert_sipp_ok("trunk (rings until CANCEL)", &ringing, &gw);
    assert_sipp_ok("caller (1, no REFER, stays, 9)", &caller, &gw);
    assert!(!gw.log_contains("sending REFER"));
    let trace = parse_trace(&ringing.messages);
    let invite = traced(&trace, false, "INVITE ", "");
    assert_eq!(
        invite.first_line(),
        format!("INVITE sip:{NUMBER}@127.0.0.1:{} SIP/2.0", gw.trunk_port)
    );
    let cancel = traced(&trace, false, "CANCEL ", "");
    let rang = trace_secs(&invite, &cancel);
    // 3 s, give or take: the gateway may start the ring timer up to a few hundred ms before
    // the INVITE leaves (see the report on the stale `now` in start_transfer).
    assert!(
        (2.5..4.5).contains(&rang),
        "CANCEL {rang:.2} s after the INVITE (ring_timeout_s = 3)"
    );
    eprintln!("CANCEL {rang:.2} s after the INVITE");
    assert_transfer_failed(&gw, "no_answer");
    check_back_to_bot_end(&gw);
}

// ---------------------------------------------------------------------------------------------
// Keypad numbers (`5`, digits, `#`): validation and policy before any SIP
// ---------------------------------------------------------------------------------------------

/// A keyed number that must be refused before any SIP: no REFER to the caller (the scenario
/// fails on one), nothing to the trunk, `transfer.failed reason=<reason>`, error prompt, the
/// call stays up and `9` closes it.
fn refused_keypad_number(extra: &str, digits: &str, reason: &str) {
    let gw = gateway(extra);
    let watcher = silent_trunk(&gw, 60);
    let mut caller = back_to_bot(&gw, digits, "none", 4500).spawn();
    check_stays_up(&gw, &mut caller, T10);
    let caller = caller.wait();
    assert_sipp_ok("caller (keyed number, no REFER, stays, 9)", &caller, &gw);
    let keyed: String = gw
        .dtmf_logs()
        .iter()
        .filter(|d| d.via.as_deref() == Some("info"))
        .map(|d| d.digit.clone())
        .collect();
    assert_eq!(keyed, format!("{digits}9"));
    assert_no_forward_sip(&gw);
    assert_trunk_got_nothing(&gw, watcher);
    check_back_to_bot_end(&gw);
    assert_transfer_failed(&gw, reason);
}

/// `5 0032 2 555 12 12 #` -> "+003225551212": a leading 0 after the + is refused.
#[test]
fn keypad_number_with_00_prefix_is_refused_without_sip() {
    refused_keypad_number("", "5003225551212#", "invalid_number");
}

/// `5 999 #` -> "+999": too short to be an international number.
#[test]
fn keypad_number_too_short_is_refused_without_sip() {
    refused_keypad_number("", "5999#", "invalid_number");
}

/// `5 44 20 7946 0000 #` with `allow = ["+32"]`: a valid number outside the allow list.
#[test]
fn keypad_uk_number_is_denied_when_plus44_is_not_allowed() {
    refused_keypad_number("[transfer]\nallow = [\"+32\"]", "5442079460000#", "denied");
}

/// `5 44 20 7946 0000 #` with the default allow list (+44 in it): the REFER goes out for
/// +442079460000 and the transfer completes.
#[test]
fn keypad_uk_number_is_referred_when_plus44_is_allowed() {
    let gw = gateway("");
    let watcher = silent_trunk(&gw, 60);
    let caller = Sipp::uac(CALLER_REFER_OK, gw.sip_addr())
        .key("digits", &format!("5{}#", &UK_NUMBER[1..]))
        .key("number", UK_NUMBER)
        .key("trunk_port", &gw.trunk_port.to_string())
        .timeout_s(30)
        .run();
    assert_sipp_ok(
        "caller (5 442079460000 #, REFER, 202, NOTIFY 100/200)",
        &caller,
        &gw,
    );
    let sending = one_line(&gw, "sending REFER");
    assert_eq!(
        field(&sending, "refer_to"),
        Some(format!(
            "<sip:{UK_NUMBER}@127.0.0.1:{};user=phone>",
            gw.trunk_port
        ))
    );
    let done = one_line(&gw, "transfer.completed");
    assert_eq!(field(&done, "number").as_deref(), Some(UK_NUMBER), "{done}");
    let ended = call_ended_line(&gw);
    assert_eq!(
        field(&ended, "reason").as_deref(),
        Some("transferred"),
        "{ended}"
    );
    assert_calls_drain(&gw, T5);
    assert_trunk_got_nothing(&gw, watcher);
}
