//! Call recording, end to end (issue 3): the real `voxgate` binary with the demo flow, called by
//! SIPp, and the recordings HTTP API (CONTRACT §3, §5, §6; docs/recording.md, docs/http-api.md).
//!
//! Every test starts its own gateway on private ports (tests/common), so they run in parallel.
//! The SIPp scenarios (tests/sipp/rec_*.xml) offer PCMU only, so the caller's audio is exactly
//! `media/hello_3s.ulaw`, and press DTMF as SIP INFO (`application/dtmf-relay`), which is
//! deterministic (no raw-socket pcap play).
//!
//! Timing: the recording's duration is compared with the time between the answer and the `2`
//! measured twice, on the SIPp side (its `-trace_msg` timestamps: 200 received, INFO sent) and on
//! the gateway side (its log: `200 OK sent`, `DTMF received digit=2`). CONTRACT §6 allows 100 ms.
//!
//! Log lines relied on: `200 OK sent`, `DTMF received digit=<d> via="info"`,
//! `recording started recording=<id>`, `recording ready`, `recording recovered`,
//! `recording could not start ... reason=...`, `call ended reason=... rtp_tx_packets=N`.

mod common;

use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

const T10: Duration = Duration::from_secs(10);
/// CONTRACT §6: a recording's duration equals the wall time from start to stop within 100 ms.
const DURATION_TOLERANCE_MS: i64 = 100;
/// Caller number in the rec_*.xml From header.
const CALLER: &str = "+3211110000";

// ---------------------------------------------------------------------------------------------
// Audio helpers
// ---------------------------------------------------------------------------------------------

/// G.711 mu-law to 16-bit linear (ITU-T G.711, the classic Sun `ulaw2linear`).
fn ulaw_decode(b: u8) -> i16 {
    let u = !b;
    let exp = (u >> 4) & 0x07;
    let mant = i32::from(u & 0x0f);
    let mag = (((mant << 3) + 0x84) << exp) - 0x84;
    if u & 0x80 != 0 {
        -mag as i16
    } else {
        mag as i16
    }
}

/// 16-bit linear to G.711 mu-law (Sun `linear2ulaw`), to put the greeting through the codec.
fn ulaw_encode(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 32635;
    let mut s = i32::from(sample);
    let mask = if s < 0 {
        s = -s;
        0x7f
    } else {
        0xff
    };
    s = s.min(CLIP) + BIAS;
    let mut exp = 7;
    let mut probe = 0x4000;
    while exp > 0 && s & probe == 0 {
        exp -= 1;
        probe >>= 1;
    }
    let mant = (s >> (exp + 3)) & 0x0f;
    ((exp << 4) | mant) as u8 ^ mask
}

/// The caller's audio as the gateway must decode it: media/hello_3s.ulaw (3.000 s).
fn hello_reference() -> Vec<f64> {
    let raw = std::fs::read(sipp_dir().join("media").join("hello_3s.ulaw"))
        .expect("read tests/sipp/media/hello_3s.ulaw");
    assert_eq!(raw.len(), 24_000, "hello_3s.ulaw must be 3.000 s of G.711");
    raw.iter().map(|&b| f64::from(ulaw_decode(b))).collect()
}

/// The greeting prompt as the caller hears it (through PCMU), mono 8 kHz.
fn greeting_reference() -> Vec<f64> {
    let path = prompts_dir().join("greeting.wav");
    let mut r = hound::WavReader::open(&path).expect("open sip-config/prompts/greeting.wav");
    let spec = r.spec();
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (1, 8000, 16),
        "greeting.wav is expected to be 8 kHz mono 16-bit"
    );
    r.samples::<i16>()
        .map(|s| f64::from(ulaw_decode(ulaw_encode(s.expect("greeting sample")))))
        .collect()
}

fn rms(x: &[f64]) -> f64 {
    if x.is_empty() {
        return 0.0;
    }
    (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64).sqrt()
}

/// Best normalized cross-correlation of `signal[lag..]` with `reference[..]` over
/// `lag in 0..=max_lag` samples, on at most `len` samples. Returns (peak, lag).
fn best_correlation(signal: &[f64], reference: &[f64], max_lag: usize, len: usize) -> (f64, usize) {
    let mut best = (f64::MIN, 0);
    for lag in 0..=max_lag.min(signal.len().saturating_sub(1)) {
        let n = len.min(signal.len() - lag).min(reference.len());
        if n < 800 {
            break;
        }
        let a = &signal[lag..lag + n];
        let b = &reference[..n];
        let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
        for (x, y) in a.iter().zip(b) {
            ab += x * y;
            aa += x * x;
            bb += y * y;
        }
        let c = if aa > 0.0 && bb > 0.0 {
            ab / (aa * bb).sqrt()
        } else {
            0.0
        };
        if c > best.0 {
            best = (c, lag);
        }
    }
    best
}

/// A recording's WAV, checked for the contract's format (8 kHz, 16-bit PCM, stereo).
struct Wav {
    left: Vec<f64>,
    right: Vec<f64>,
    /// Sample frames, per the header.
    frames: u32,
}

impl Wav {
    fn duration_ms(&self) -> f64 {
        f64::from(self.frames) / 8.0
    }
}

/// Parses a WAV with hound, and checks with a hand parser that the RIFF and `data` sizes in the
/// header agree with the byte count (so the sample count is consistent with the file).
fn parse_wav(bytes: &[u8]) -> Wav {
    assert!(
        bytes.len() >= 44,
        "WAV shorter than a header: {} bytes",
        bytes.len()
    );
    assert_eq!(&bytes[0..4], b"RIFF", "not a RIFF file");
    assert_eq!(&bytes[8..12], b"WAVE", "not a WAVE file");
    let riff_size = u32::from_le_bytes(bytes[4..8].try_into().unwrap()) as usize;
    assert_eq!(
        riff_size + 8,
        bytes.len(),
        "RIFF size does not match the file length"
    );
    let mut pos = 12;
    let data = loop {
        assert!(pos + 8 <= bytes.len(), "no data chunk in the WAV");
        let id = &bytes[pos..pos + 4];
        let size = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap()) as usize;
        if id == b"data" {
            break (pos + 8, size);
        }
        pos += 8 + size + (size & 1);
    };
    assert_eq!(
        data.0 + data.1,
        bytes.len(),
        "data chunk size {} does not reach the end of the file ({} bytes, data at {})",
        data.1,
        bytes.len(),
        data.0
    );
    assert_eq!(
        data.1 % 4,
        0,
        "data size is not a whole number of stereo frames"
    );

    let mut r = hound::WavReader::new(std::io::Cursor::new(bytes)).expect("hound opens the WAV");
    let spec = r.spec();
    assert_eq!(spec.channels, 2, "CONTRACT §6: 2 channels");
    assert_eq!(spec.sample_rate, 8000, "CONTRACT §6: 8000 Hz");
    assert_eq!(spec.bits_per_sample, 16, "CONTRACT §6: 16-bit");
    assert_eq!(
        spec.sample_format,
        hound::SampleFormat::Int,
        "CONTRACT §6: PCM"
    );
    let frames = r.duration();
    assert_eq!(
        frames as usize * 4,
        data.1,
        "hound's frame count disagrees with the data size"
    );
    let samples: Vec<i16> = r
        .samples::<i16>()
        .collect::<Result<_, _>>()
        .expect("every sample readable");
    assert_eq!(samples.len(), frames as usize * 2, "sample count != header");
    let left = samples.iter().step_by(2).map(|&s| f64::from(s)).collect();
    let right = samples
        .iter()
        .skip(1)
        .step_by(2)
        .map(|&s| f64::from(s))
        .collect();
    Wav {
        left,
        right,
        frames,
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

// ---------------------------------------------------------------------------------------------
// Timestamps (SIPp trace, gateway log)
// ---------------------------------------------------------------------------------------------

/// One message of SIPp's `-trace_msg` file.
#[derive(Debug)]
struct TracedMsg {
    at: chrono::NaiveDateTime,
    sent: bool,
    text: String,
}

impl TracedMsg {
    fn first_line(&self) -> &str {
        self.text.lines().next().unwrap_or_default()
    }
}

/// Splits SIPp's message trace (`----...---- 2026-11-25 14:15:41.436478`, `UDP message sent
/// (N bytes):` / `UDP message received [N] bytes :`, blank line, the message).
fn sipp_trace(messages: &str) -> Vec<TracedMsg> {
    let mut out = Vec::new();
    let mut cur: Option<TracedMsg> = None;
    for line in messages.lines() {
        let l = line.trim_end_matches('\r');
        if l.starts_with("-----------") {
            let stamp = l.trim_start_matches('-').trim().replace('\t', " ");
            if let Ok(at) = chrono::NaiveDateTime::parse_from_str(&stamp, "%Y-%m-%d %H:%M:%S%.f") {
                out.extend(cur.take());
                cur = Some(TracedMsg {
                    at,
                    sent: false,
                    text: String::new(),
                });
                continue;
            }
        }
        let Some(m) = cur.as_mut() else { continue };
        if m.text.is_empty() && l.contains(" message sent") {
            m.sent = true;
        } else if m.text.is_empty() && (l.contains(" message received") || l.is_empty()) {
        } else {
            m.text.push_str(l);
            m.text.push('\n');
        }
    }
    out.extend(cur);
    out
}

/// When SIPp received the INVITE's 200 (the answer).
fn sipp_answer_at(trace: &[TracedMsg]) -> chrono::NaiveDateTime {
    trace
        .iter()
        .find(|m| {
            !m.sent
                && m.first_line().starts_with("SIP/2.0 200")
                && m.text
                    .lines()
                    .any(|l| l.to_ascii_lowercase().starts_with("cseq:") && l.contains("INVITE"))
        })
        .unwrap_or_else(|| panic!("no 200 to the INVITE in the SIPp trace: {trace:#?}"))
        .at
}

/// When SIPp sent the INFO carrying `Signal=<digit>` (first transmission).
fn sipp_info_sent_at(trace: &[TracedMsg], digit: char) -> chrono::NaiveDateTime {
    let body = format!("Signal={digit}");
    trace
        .iter()
        .find(|m| m.sent && m.first_line().starts_with("INFO ") && m.text.contains(&body))
        .unwrap_or_else(|| panic!("no INFO {body} sent in the SIPp trace"))
        .at
}

/// When SIPp sent its BYE.
fn sipp_bye_sent_at(trace: &[TracedMsg]) -> chrono::NaiveDateTime {
    trace
        .iter()
        .find(|m| m.sent && m.first_line().starts_with("BYE "))
        .expect("no BYE sent in the SIPp trace")
        .at
}

/// The Call-ID SIPp used (from its INVITE).
fn sipp_call_id(trace: &[TracedMsg]) -> String {
    let invite = trace
        .iter()
        .find(|m| m.sent && m.first_line().starts_with("INVITE "))
        .expect("no INVITE in the SIPp trace");
    invite
        .text
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("call-id")
                .then(|| v.trim().to_string())
        })
        .expect("INVITE without Call-ID")
}

fn ms_between(a: chrono::NaiveDateTime, b: chrono::NaiveDateTime) -> i64 {
    (b - a).num_milliseconds()
}

/// The leading RFC 3339 timestamp of a gateway log line.
fn log_time(line: &str) -> chrono::DateTime<chrono::FixedOffset> {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    chrono::DateTime::parse_from_rfc3339(stamp)
        .unwrap_or_else(|e| panic!("log line without an RFC 3339 timestamp ({e}): {line}"))
}

/// The timestamp of the first gateway log line containing every one of `needles`.
fn log_time_of(gw: &Gateway, needles: &[&str]) -> chrono::DateTime<chrono::FixedOffset> {
    let text = gw.log_text();
    let line = text
        .lines()
        .find(|l| needles.iter().all(|n| l.contains(n)))
        .unwrap_or_else(|| panic!("no gateway log line with {needles:?}\n{}", gw.log_tail(80)));
    log_time(line)
}

// ---------------------------------------------------------------------------------------------
// API helpers
// ---------------------------------------------------------------------------------------------

fn list_recordings(gw: &Gateway) -> Vec<Value> {
    let r = gw.get("/v1/recordings").expect("GET /v1/recordings");
    assert_eq!(r.status, 200, "GET /v1/recordings: {}", r.text());
    let v = r.json();
    v["recordings"]
        .as_array()
        .unwrap_or_else(|| panic!("no \"recordings\" array: {v}"))
        .clone()
}

fn recordings_of_call(gw: &Gateway, call_id: &str) -> Vec<Value> {
    list_recordings(gw)
        .into_iter()
        .filter(|r| r["call_id"] == call_id)
        .collect()
}

/// Polls the list until `n` recordings of `call_id` exist and none is still `recording`.
fn wait_final_recordings(gw: &Gateway, call_id: &str, n: usize, timeout: Duration) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let recs = recordings_of_call(gw, call_id);
        if recs.len() >= n && recs.iter().all(|r| r["status"] != "recording") {
            return recs;
        }
        if Instant::now() >= deadline {
            panic!(
                "expected {n} finished recordings of call {call_id} within {timeout:?}, got: {}\n{}",
                serde_json::to_string_pretty(&recs).unwrap(),
                gw.log_tail(60)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn str_field<'a>(rec: &'a Value, key: &str) -> &'a str {
    rec[key]
        .as_str()
        .unwrap_or_else(|| panic!("recording field {key:?} is not a string: {rec}"))
}

fn u64_field(rec: &Value, key: &str) -> u64 {
    rec[key]
        .as_u64()
        .unwrap_or_else(|| panic!("recording field {key:?} is not an integer: {rec}"))
}

/// Checks the metadata fields CONTRACT §5 lists for a finished recording of this call.
fn check_metadata(rec: &Value, call_id: &str, status: &str) {
    for key in [
        "id",
        "call_id",
        "from",
        "to",
        "started_at",
        "ended_at",
        "duration_ms",
        "channels",
        "sample_rate",
        "bytes",
        "sha256",
        "status",
    ] {
        assert!(
            rec.get(key).is_some_and(|v| !v.is_null()),
            "recording lacks {key:?}: {rec}"
        );
    }
    assert_eq!(str_field(rec, "status"), status, "{rec}");
    assert_eq!(str_field(rec, "call_id"), call_id, "{rec}");
    assert!(
        str_field(rec, "from").contains(CALLER.trim_start_matches('+')),
        "from should name the caller {CALLER}: {rec}"
    );
    assert_eq!(u64_field(rec, "channels"), 2, "{rec}");
    assert_eq!(u64_field(rec, "sample_rate"), 8000, "{rec}");
    let sha = str_field(rec, "sha256");
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "sha256 is not 64 hex digits: {sha}"
    );
    let started = chrono::DateTime::parse_from_rfc3339(str_field(rec, "started_at"))
        .unwrap_or_else(|e| panic!("started_at not RFC 3339 ({e}): {rec}"));
    let ended = chrono::DateTime::parse_from_rfc3339(str_field(rec, "ended_at"))
        .unwrap_or_else(|e| panic!("ended_at not RFC 3339 ({e}): {rec}"));
    let span = (ended - started).num_milliseconds();
    let dur = u64_field(rec, "duration_ms") as i64;
    assert!(
        (span - dur).abs() <= 20,
        "ended_at - started_at = {span} ms but duration_ms = {dur}: {rec}"
    );
}

/// Downloads the audio and checks it against the metadata (length, sha256, content type).
fn download_audio(gw: &Gateway, rec: &Value) -> (Vec<u8>, HttpResponse) {
    let id = str_field(rec, "id");
    let r = gw
        .get(&format!("/v1/recordings/{id}/audio"))
        .expect("GET audio");
    assert_eq!(r.status, 200, "GET /v1/recordings/{id}/audio: {}", r.text());
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("audio/wav"), "Content-Type {ct:?}");
    assert_eq!(
        r.body.len() as u64,
        u64_field(rec, "bytes"),
        "downloaded size != metadata bytes"
    );
    assert_eq!(
        sha256_hex(&r.body),
        str_field(rec, "sha256"),
        "sha256 of the downloaded bytes != metadata sha256"
    );
    (r.body.clone(), r)
}

fn assert_close_ms(what: &str, got_ms: f64, want_ms: i64, tolerance_ms: i64) {
    assert!(
        (got_ms - want_ms as f64).abs() <= tolerance_ms as f64,
        "{what}: {got_ms} ms, expected {want_ms} ms +- {tolerance_ms} ms"
    );
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

/// Done when #1: the demo flow records from answer; `2` (SIP INFO) after ~2 s stops it. The
/// recording is listed complete, its duration matches answer -> `2` within 100 ms (measured on
/// both sides), the left channel is the caller's speech and the right one the greeting, and the
/// audio endpoint serves exactly the hashed bytes with HEAD, Range (206) and ETag (304).
#[test]
fn recording_from_answer_to_stop_digit() {
    require_sipp();
    let gw = Gateway::start_default();
    let out = Sipp::uac("rec_stop.xml", gw.sip_addr()).timeout_s(30).run();
    out.assert_success();
    let trace = sipp_trace(&out.messages);
    let call_id = sipp_call_id(&trace);

    let recs = wait_final_recordings(&gw, &call_id, 1, T10);
    assert_eq!(recs.len(), 1, "one recording for the call: {recs:#?}");
    let rec = &recs[0];
    check_metadata(rec, &call_id, "complete");
    let id = str_field(rec, "id").to_string();
    assert!(
        gw.log_contains(&format!("recording started recording={id}")),
        "no `recording started recording={id}` line"
    );

    // Duration vs answer -> "2", seen by SIPp and by the gateway.
    let sipp_ms = ms_between(sipp_answer_at(&trace), sipp_info_sent_at(&trace, '2'));
    let gw_ms = (log_time_of(&gw, &["DTMF received", "digit=2"])
        - log_time_of(&gw, &["200 OK sent"]))
    .num_milliseconds();
    assert!(
        (1900..=2600).contains(&sipp_ms),
        "the scenario presses 2 about 2 s after the answer; SIPp measured {sipp_ms} ms"
    );
    let duration_ms = u64_field(rec, "duration_ms") as f64;
    eprintln!(
        "recording {id}: duration_ms={duration_ms} sipp answer->2 = {sipp_ms} ms, gateway \
         200 OK sent->DTMF 2 = {gw_ms} ms"
    );
    assert_close_ms(
        "duration_ms vs SIPp answer->2",
        duration_ms,
        sipp_ms,
        DURATION_TOLERANCE_MS,
    );
    assert_close_ms(
        "duration_ms vs gateway answer->2",
        duration_ms,
        gw_ms,
        DURATION_TOLERANCE_MS,
    );

    // The bytes: sha256, format, duration of the audio itself.
    let (bytes, full) = download_audio(&gw, rec);
    let wav = parse_wav(&bytes);
    assert_close_ms(
        "WAV length vs SIPp answer->2",
        wav.duration_ms(),
        sipp_ms,
        DURATION_TOLERANCE_MS,
    );
    assert_close_ms(
        "WAV length vs duration_ms",
        wav.duration_ms(),
        duration_ms as i64,
        20,
    );

    // Left = caller: speech, and it is hello_3s (decoded PCMU) delayed by the jitter buffer.
    let hello = hello_reference();
    let left_rms = rms(&wav.left);
    let (corr, lag) = best_correlation(&wav.left, &hello, 4000, 12_000);
    eprintln!("left: rms={left_rms:.0} corr with hello_3s={corr:.3} at lag {lag} samples");
    assert!(
        left_rms > 500.0,
        "left channel (caller) is (nearly) silent: rms {left_rms:.1}"
    );
    assert!(
        corr > 0.9,
        "left channel does not match the caller's audio (hello_3s): best correlation {corr:.3} \
         at lag {lag}"
    );

    // Right = bot: the greeting, from the start of the recording.
    let greeting = greeting_reference();
    let right_rms = rms(&wav.right);
    let (gcorr, glag) = best_correlation(&wav.right, &greeting, 1600, 12_000);
    let n = wav.right.len().min(greeting.len());
    let greeting_rms = rms(&greeting[..n]);
    eprintln!(
        "right: rms={right_rms:.0} (greeting over the same span {greeting_rms:.0}) corr with \
         greeting={gcorr:.3} at lag {glag} samples"
    );
    assert!(
        right_rms > 0.5 * greeting_rms && right_rms < 2.0 * greeting_rms,
        "right channel (bot) rms {right_rms:.1} is not the greeting's level {greeting_rms:.1}"
    );
    assert!(
        gcorr > 0.9,
        "right channel does not carry the greeting: best correlation {gcorr:.3} at lag {glag}"
    );
    // The two channels are not the same signal (no mix-up, no bleed of one into the other).
    let (cross, _) = best_correlation(&wav.left, &greeting, 1600, 12_000);
    assert!(
        cross < 0.5,
        "left channel resembles the greeting ({cross:.3})"
    );

    // Metadata endpoint agrees with the list.
    let one = gw.get(&format!("/v1/recordings/{id}")).unwrap();
    assert_eq!(one.status, 200, "{}", one.text());
    assert_eq!(&one.json(), rec, "GET /v1/recordings/{{id}} != list item");

    // HEAD: same headers, no body.
    let audio = format!("/v1/recordings/{id}/audio");
    let etag = full.header("etag").expect("ETag on the audio").to_string();
    assert_eq!(
        etag.trim_start_matches("W/").trim_matches('"'),
        str_field(rec, "sha256"),
        "docs/http-api.md: a finalized recording's ETag is its sha256"
    );
    let head = gw.head(&audio).unwrap();
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty(), "HEAD returned a body");
    assert_eq!(head.header("etag"), Some(etag.as_str()));
    assert_eq!(
        head.header("content-length"),
        Some(bytes.len().to_string().as_str())
    );
    assert!(head
        .header("content-type")
        .unwrap_or_default()
        .starts_with("audio/wav"));
    assert_eq!(head.header("accept-ranges"), Some("bytes"));

    // Range: 206 with exactly those bytes.
    let total = bytes.len();
    for (range, from, to) in [
        ("bytes=100-1099".to_string(), 100, 1099),
        ("bytes=0-43".to_string(), 0, 43),
        (format!("bytes={}-", total - 1000), total - 1000, total - 1),
        ("bytes=-500".to_string(), total - 500, total - 1),
    ] {
        let r = gw.get_range(&audio, &range).unwrap();
        assert_eq!(r.status, 206, "Range {range}: {}", r.text());
        assert_eq!(
            r.header("content-range"),
            Some(format!("bytes {from}-{to}/{total}").as_str()),
            "Range {range}"
        );
        assert!(r.body == bytes[from..=to], "Range {range}: wrong bytes");
    }
    let r = gw
        .get_range(&audio, &format!("bytes={}-", total + 10))
        .unwrap();
    assert_eq!(r.status, 416, "a range past the end");

    // ETag: If-None-Match -> 304 with no body; another tag -> 200.
    let auth = format!("Bearer {TOKEN}");
    let r = gw
        .request(
            "GET",
            &audio,
            &[("Authorization", &auth), ("If-None-Match", &etag)],
        )
        .unwrap();
    assert_eq!(r.status, 304, "If-None-Match with the current ETag");
    assert!(r.body.is_empty());
    let r = gw
        .request(
            "GET",
            &audio,
            &[
                ("Authorization", &auth),
                ("If-None-Match", "\"not-the-tag\""),
            ],
        )
        .unwrap();
    assert_eq!(r.status, 200, "If-None-Match with another tag");
    assert!(r.body == bytes);
}

/// Done when #2: `3` after `2` opens a second recording of the same call. Both are listed
/// (newest first, also through the `call_id` filter), with the same call_id, each complete
/// and each as long as its part of the call.
#[test]
fn stop_then_start_makes_two_recordings_of_one_call() {
    require_sipp();
    let gw = Gateway::start_default();
    let out = Sipp::uac("rec_two.xml", gw.sip_addr()).timeout_s(30).run();
    out.assert_success();
    let trace = sipp_trace(&out.messages);
    let call_id = sipp_call_id(&trace);

    let recs = wait_final_recordings(&gw, &call_id, 2, T10);
    assert_eq!(recs.len(), 2, "two recordings for the call: {recs:#?}");
    for r in &recs {
        check_metadata(r, &call_id, "complete");
    }
    // Newest first: [0] is the one `3` opened.
    let (second, first) = (&recs[0], &recs[1]);
    assert_ne!(first["id"], second["id"]);
    assert!(
        str_field(first, "started_at") <= str_field(second, "started_at"),
        "list not newest first: {recs:#?}"
    );
    assert!(
        str_field(first, "ended_at") <= str_field(second, "started_at"),
        "the second recording must start after the first ended: {recs:#?}"
    );

    // The call_id filter returns the same two.
    let q = format!("/v1/recordings?call_id={}", call_id.replace('@', "%40"));
    let r = gw.get(&q).unwrap();
    assert_eq!(r.status, 200, "{q}: {}", r.text());
    let filtered: Vec<Value> = r.json()["recordings"].as_array().unwrap().clone();
    let ids: Vec<&Value> = filtered.iter().map(|r| &r["id"]).collect();
    assert_eq!(ids, [&second["id"], &first["id"]], "{q}");

    // Durations: answer -> 2, then 3 -> BYE (SIPp side).
    let answer = sipp_answer_at(&trace);
    let two = sipp_info_sent_at(&trace, '2');
    let three = sipp_info_sent_at(&trace, '3');
    let bye = sipp_bye_sent_at(&trace);
    let d1 = u64_field(first, "duration_ms") as f64;
    let d2 = u64_field(second, "duration_ms") as f64;
    eprintln!(
        "first {d1} ms (answer->2 {} ms), second {d2} ms (3->BYE {} ms)",
        ms_between(answer, two),
        ms_between(three, bye)
    );
    assert_close_ms(
        "first recording",
        d1,
        ms_between(answer, two),
        DURATION_TOLERANCE_MS,
    );
    assert_close_ms(
        "second recording",
        d2,
        ms_between(three, bye),
        DURATION_TOLERANCE_MS,
    );

    // Both files are real, hashed audio with the caller on the left.
    for rec in [first, second] {
        let (bytes, _) = download_audio(&gw, rec);
        let wav = parse_wav(&bytes);
        assert_close_ms(
            "WAV length vs duration_ms",
            wav.duration_ms(),
            u64_field(rec, "duration_ms") as i64,
            20,
        );
        let l = rms(&wav.left);
        assert!(l > 500.0, "{}: left channel silent (rms {l:.1})", rec["id"]);
    }
    assert_eq!(
        gw.log_count("recording started recording="),
        2,
        "two `recording started` lines"
    );
}

/// Done when #3: kill -9 about 3 s into a recording, restart with the same config: the
/// recording is listed `recovered`, is a valid WAV whose header matches its length, and holds
/// at least the audio up to the kill minus 1 s (and no more than wall time allows).
#[test]
fn recording_survives_kill9_as_recovered() {
    require_sipp();
    let mut gw = Gateway::start_default();
    let mut sipp = Sipp::uac("rec_long.xml", gw.sip_addr())
        .timeout_s(60)
        .spawn();
    assert!(
        gw.wait_for_log("recording started recording=", T10),
        "recording did not start\n{}",
        gw.log_tail(60)
    );
    let started_line = gw.log_lines("recording started recording=")[0].clone();
    let id = field(&started_line, "recording").expect("recording id in the log line");
    let started = log_time(&started_line);

    // While it runs: listed as `recording`, a .wav.part on disk.
    std::thread::sleep(Duration::from_millis(1500));
    let live = gw.get(&format!("/v1/recordings/{id}")).unwrap();
    assert_eq!(live.status, 200, "{}", live.text());
    assert_eq!(live.json()["status"], "recording", "{}", live.text());
    let part = gw.recordings_dir().join(format!("{id}.wav.part"));
    assert!(part.exists(), "{} missing while recording", part.display());

    // About 3 s in: SIGKILL.
    let target = started + chrono::Duration::milliseconds(3000);
    let wait = (target.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    std::thread::sleep(wait);
    assert!(gw.is_running(), "gateway died on its own");
    assert!(
        sipp.is_running(),
        "SIPp ended before the kill:\n{}",
        sipp.kill().report()
    );
    let before_kill = chrono::Utc::now();
    gw.kill9();
    let after_kill = chrono::Utc::now();
    let call_id = sipp_call_id(&sipp_trace(&sipp.kill().messages));
    let elapsed_before = (before_kill - started.with_timezone(&chrono::Utc)).num_milliseconds();
    let elapsed_after = (after_kill - started.with_timezone(&chrono::Utc)).num_milliseconds();
    assert!(part.exists(), "the .wav.part is left behind by the crash");

    gw.start();
    assert!(
        gw.wait_for_log(&format!("recording recovered recording={id}"), T10),
        "no `recording recovered` line after restart\n{}",
        gw.log_tail(60)
    );
    let rec = gw.get(&format!("/v1/recordings/{id}")).unwrap();
    assert_eq!(rec.status, 200, "{}", rec.text());
    let rec = rec.json();
    assert_eq!(str_field(&rec, "status"), "recovered", "{rec}");
    let listed = list_recordings(&gw);
    let item = listed
        .iter()
        .find(|r| r["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} not listed: {listed:#?}"));
    assert_eq!(item["status"], "recovered");
    check_metadata(&rec, &call_id, "recovered");
    assert!(!part.exists(), ".wav.part still there after recovery");
    assert!(gw.recordings_dir().join(format!("{id}.wav")).exists());

    let duration = u64_field(&rec, "duration_ms") as i64;
    eprintln!(
        "recovered {id}: duration_ms={duration}, kill {elapsed_before}..{elapsed_after} ms after \
         the start"
    );
    assert!(
        duration >= elapsed_before - 1000,
        "recovered {duration} ms, but the kill came {elapsed_before} ms into the recording \
         (more than 1 s lost)"
    );
    assert!(
        duration <= elapsed_after + DURATION_TOLERANCE_MS,
        "recovered {duration} ms, more than the {elapsed_after} ms of wall time before the kill"
    );

    let (bytes, _) = download_audio(&gw, &rec);
    let wav = parse_wav(&bytes);
    assert_close_ms(
        "recovered WAV length vs duration_ms",
        wav.duration_ms(),
        duration,
        20,
    );
    let l = rms(&wav.left);
    assert!(l > 500.0, "recovered left channel silent (rms {l:.1})");
    let r = rms(&wav.right);
    assert!(
        r > 300.0,
        "recovered right channel (greeting) silent (rms {r:.1})"
    );
}

/// Done when #4: the recordings dir cannot be created (its parent is a regular file). The call
/// still completes normally and the recording is reported failed, with its reason.
#[test]
fn unwritable_recordings_dir_fails_the_recording_not_the_call() {
    require_sipp();
    let tmp = tempfile::tempdir().unwrap();
    let afile = tmp.path().join("afile");
    std::fs::write(&afile, b"a regular file where a directory should be\n").unwrap();
    let rec_dir = afile.join("recs");
    let gw = Gateway::builder()
        .toml(&format!(
            "[recordings]\ndir = {}",
            toml::Value::String(rec_dir.to_string_lossy().into_owned())
        ))
        .start();

    let out = Sipp::uac("rec_stop.xml", gw.sip_addr()).timeout_s(30).run();
    out.assert_success();
    let trace = sipp_trace(&out.messages);
    let call_id = sipp_call_id(&trace);

    // The failure is reported with a reason.
    let failed: Vec<String> = gw
        .log_lines("recording could not start")
        .into_iter()
        .chain(gw.log_lines("recording failed"))
        .collect();
    assert!(
        !failed.is_empty(),
        "no `recording could not start` / `recording failed` line\n{}",
        gw.log_tail(60)
    );
    // The reason is the rest of the line after `reason=` (tracing writes it unquoted).
    let reasons: Vec<&str> = failed
        .iter()
        .filter(|l| l.contains(&call_id))
        .filter_map(|l| {
            l.split_once("reason=")
                .map(|(_, r)| r.trim().trim_matches('"'))
        })
        .collect();
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("Not a directory") || r.contains("afile")),
        "no failure line of call {call_id} gives the reason (the dir or the OS error): \
         {failed:#?}"
    );
    assert!(
        !gw.log_contains("recording started recording="),
        "a recording claims to have started in an unwritable dir"
    );

    // The call was not disturbed: caller hangup, greeting played for the whole call.
    let ends: Vec<String> = gw.log_lines("call ended reason=");
    let end = ends
        .iter()
        .find_map(|l| CallEndStats::parse(l).map(|s| (l.clone(), s)))
        .unwrap_or_else(|| panic!("no `call ended` summary\n{}", gw.log_tail(60)));
    assert_eq!(
        field(&end.0, "reason").as_deref(),
        Some("caller_hangup"),
        "{}",
        end.0
    );
    assert!(
        end.1.rtp_tx_packets >= 100,
        "the bot stopped sending audio: {}",
        end.0
    );

    // The API, if it lists anything for this call, says failed with the reason.
    let r = gw.get("/v1/recordings").unwrap();
    eprintln!(
        "GET /v1/recordings with a broken dir: {} {}",
        r.status,
        r.text()
    );
    assert!(
        r.status == 200 || (r.status >= 500 && r.json()["error"].is_string()),
        "GET /v1/recordings with a broken dir: {} {}",
        r.status,
        r.text()
    );
    if r.status == 200 {
        for rec in r.json()["recordings"].as_array().unwrap() {
            if rec["call_id"] == call_id.as_str() {
                assert_eq!(rec["status"], "failed", "{rec}");
                assert!(
                    rec["reason"].as_str().is_some_and(|s| !s.is_empty()),
                    "{rec}"
                );
            }
        }
    }
    // The error is counted.
    let m = gw.get_noauth("/metrics").unwrap();
    let errors: f64 = m
        .text()
        .lines()
        .find(|l| l.starts_with("voxgate_recording_errors_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        errors >= 1.0,
        "voxgate_recording_errors_total not incremented"
    );
}

/// Done when #5: the recordings API is locked without the right token, ids that could escape
/// the recordings dir and unknown ids are 404, DELETE is 204 then 404.
#[test]
fn recordings_api_access_rules() {
    require_sipp();
    let gw = Gateway::start_default();
    let out = Sipp::uac("rec_stop.xml", gw.sip_addr()).timeout_s(30).run();
    out.assert_success();
    let call_id = sipp_call_id(&sipp_trace(&out.messages));
    let recs = wait_final_recordings(&gw, &call_id, 1, T10);
    let id = str_field(&recs[0], "id").to_string();
    let meta = format!("/v1/recordings/{id}");
    let audio = format!("{meta}/audio");

    // No token, wrong token, wrong scheme: 401 everywhere under /v1/recordings.
    let paths = ["/v1/recordings", meta.as_str(), audio.as_str()];
    let wrong = format!("Bearer {TOKEN}x");
    let basic = format!("Basic {TOKEN}");
    let bad_auth: [&[(&str, &str)]; 4] = [
        &[],
        &[("Authorization", &wrong)],
        &[("Authorization", "Bearer ")],
        &[("Authorization", &basic)],
    ];
    for headers in bad_auth {
        for p in paths {
            for method in ["GET", "HEAD"] {
                let r = gw.request(method, p, headers).unwrap();
                assert_eq!(r.status, 401, "{method} {p} with {headers:?}");
            }
        }
        let r = gw.request("DELETE", &meta, headers).unwrap();
        assert_eq!(r.status, 401, "DELETE {meta} with {headers:?}");
    }
    let r = gw.get_noauth(&meta).unwrap();
    assert!(
        r.header("www-authenticate")
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("bearer")),
        "401 without `WWW-Authenticate: Bearer` (docs/http-api.md)"
    );
    assert_eq!(
        gw.get(&meta).unwrap().status,
        200,
        "unauthorized DELETE deleted it"
    );

    // Ids that could escape the recordings dir. Copies of the recording sit one level up (the
    // gateway's temp dir), so a gateway that joined the raw id to the dir would serve them.
    let recdir = gw.recordings_dir();
    let up = gw.dir().to_path_buf();
    for ext in ["json", "wav"] {
        std::fs::copy(
            recdir.join(format!("{id}.{ext}")),
            up.join(format!("{id}.{ext}")),
        )
        .unwrap();
    }
    let escapes = [
        format!("/v1/recordings/..%2f{id}"),
        format!("/v1/recordings/..%2F{id}/audio"),
        format!("/v1/recordings/%2e%2e%2f{id}"),
        format!("/v1/recordings/%2E%2E%2F{id}/audio"),
        format!("/v1/recordings/%2e%2e/{id}"),
        format!("/v1/recordings/../{id}"),
        format!("/v1/recordings/{id}%2f..%2f..%2f{id}"),
        format!("/v1/recordings/..%252f{id}"),
        format!("/v1/recordings/.%2e%2f{id}/audio"),
        "/v1/recordings/..".to_string(),
        "/v1/recordings/%2e%2e".to_string(),
        "/v1/recordings/%2e%2e/audio".to_string(),
        "/v1/recordings/..%2f..%2fgateway.toml".to_string(),
        "/v1/recordings/%2e%2e%2fgateway.log/audio".to_string(),
    ];
    for p in &escapes {
        let r = gw.get(p).unwrap();
        assert_eq!(r.status, 404, "GET {p}: {}", r.text());
        let r = gw.head(p).unwrap();
        assert_eq!(r.status, 404, "HEAD {p}");
        // DELETE exists only on the metadata path; on `/audio` 405 is as good as 404.
        let r = gw.delete(p).unwrap();
        let want: &[u16] = if p.ends_with("/audio") {
            &[404, 405]
        } else {
            &[404]
        };
        assert!(
            want.contains(&r.status),
            "DELETE {p}: {} {}",
            r.status,
            r.text()
        );
    }
    for ext in ["json", "wav"] {
        assert!(
            up.join(format!("{id}.{ext}")).exists(),
            "a traversal DELETE removed {id}.{ext} outside the recordings dir"
        );
    }
    assert!(gw.dir().join("gateway.toml").exists());

    // Unknown ids: well-formed but absent, and malformed.
    for unknown in ["rec_20240101T000000_0123456789abcdef", "nope", "rec_x"] {
        for p in [
            format!("/v1/recordings/{unknown}"),
            format!("/v1/recordings/{unknown}/audio"),
        ] {
            let r = gw.get(&p).unwrap();
            assert_eq!(r.status, 404, "GET {p}: {}", r.text());
        }
        let r = gw.delete(&format!("/v1/recordings/{unknown}")).unwrap();
        assert_eq!(r.status, 404, "DELETE unknown {unknown}");
    }

    // DELETE: 204, then 404 everywhere, files gone, no longer listed.
    let r = gw.delete(&meta).unwrap();
    assert_eq!(r.status, 204, "DELETE {meta}: {}", r.text());
    assert!(r.body.is_empty());
    assert_eq!(gw.get(&meta).unwrap().status, 404, "GET after DELETE");
    assert_eq!(
        gw.get(&audio).unwrap().status,
        404,
        "GET audio after DELETE"
    );
    assert_eq!(
        gw.head(&audio).unwrap().status,
        404,
        "HEAD audio after DELETE"
    );
    assert_eq!(gw.delete(&meta).unwrap().status, 404, "second DELETE");
    assert!(
        list_recordings(&gw).iter().all(|r| r["id"] != id.as_str()),
        "deleted recording still listed"
    );
    for ext in ["wav", "wav.part", "json"] {
        let p = recdir.join(format!("{id}.{ext}"));
        assert!(!Path::new(&p).exists(), "{} left after DELETE", p.display());
    }
}
