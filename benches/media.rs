//! Per-packet hot paths of voxgate, each timed against a baseline measured in the same run.
//!
//! Absolute times on a shared 2-core VM are noise, so every row is paired with a plain memcpy
//! (`<[u8]>::copy_from_slice`) of a stated number of bytes, and the samples of the two are taken
//! alternately: the reported ratio is the median of the per-repetition ratios, which cancels
//! most of the machine's drift; the ratio of the two fastest samples is printed too. A small
//! std-only harness (warm-up, calibrated batches, repetitions, median, IQR) instead of
//! criterion keeps the dependency list as it is.
//!
//! ```text
//! cargo bench --bench media                  # every case, markdown table on stdout
//! cargo bench --bench media -- rtp sdp       # only cases whose name contains a filter
//! cargo bench --bench media -- --reps 81     # more repetitions (default 41)
//! cargo test --bench media                   # smoke: every case set up and run 10 times
//! <bench binary> --list                      # case names and baseline sizes
//! <bench binary> --count NAME N              # run NAME's op N times, untimed (callgrind)
//! ```
//!
//! `benches/callgrind.sh` uses `--count` to get instruction counts, which are repeatable.
//! Every case checks in its setup that it drives the intended path (e.g. the RTP slot really
//! sends one packet and releases one frame), so a broken setup cannot produce a fast number.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeZone, Utc};
use voxgate::flow::machine::MAX_STEP_LOG;
use voxgate::flow::{FlowAction, FlowDefinition, FlowEvent, FlowMachine, SessionInfo};
use voxgate::media::codec::{Codec, FRAME_SAMPLES};
use voxgate::media::g711;
use voxgate::media::packet::{self, RtpHeader};
use voxgate::media::recorder::feed::BLOCK_SLOTS;
use voxgate::media::recorder::writer::{self, Job};
use voxgate::media::recorder::{ChannelMode, FeedSpec, RecordingFeed, RecordingId};
use voxgate::media::rtp::{RtpConfig, RtpEvent, RtpSession};
use voxgate::sip::guard::{inspect_datagram, Verdict};
use voxgate::sip::sdp::{negotiate_answer, LocalMedia, SessionDescription};

/// Slots (20 ms RTP packets) per second of call.
const SLOTS_PER_S: f64 = 50.0;
/// Each timed sample runs a batch calibrated to about this long.
const SAMPLE_TARGET: Duration = Duration::from_millis(5);
const WARM_UP: Duration = Duration::from_millis(150);
const DEFAULT_REPS: usize = 41;

/// A benchmark case: what one op is, how often a call does it, and what to compare it with.
struct Case {
    name: &'static str,
    /// One op, in words.
    op_desc: &'static str,
    /// Ops per second of a call, for the per-call-second column (0: once per call).
    per_call_s: f64,
    /// Size of the memcpy baseline.
    baseline_bytes: usize,
    /// Runs the op `n` times.
    run: Box<dyn FnMut(u64)>,
}

/// Wraps a single op so the loop is monomorphised (no indirect call per op).
fn looped(mut op: impl FnMut() + 'static) -> Box<dyn FnMut(u64)> {
    Box::new(move |n| {
        for _ in 0..n {
            op();
        }
    })
}

/// The baseline: copy `bytes` bytes from one buffer to another, opaque to the optimiser.
fn memcpy(bytes: usize) -> Box<dyn FnMut(u64)> {
    let src: Vec<u8> = (0..bytes).map(|i| i as u8).collect();
    let mut dst = vec![0u8; bytes];
    looped(move || {
        dst.copy_from_slice(black_box(&src));
        black_box(&mut dst);
    })
}

// ---- inputs -------------------------------------------------------------------------------

/// Everything the cases need from disk, read once.
struct Inputs {
    /// 3 s of real speech as μ-law (the SIPp test media), split into 20 ms frames.
    ulaw_frames: Vec<Vec<u8>>,
    /// The same speech as linear PCM.
    pcm_frames: Vec<Vec<i16>>,
    demo_flow: Arc<FlowDefinition>,
}

fn load_inputs() -> Result<Inputs, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ulaw_path = root.join("tests/sipp/media/hello_3s.ulaw");
    let ulaw = std::fs::read(&ulaw_path)
        .map_err(|e| format!("cannot read {}: {e}", ulaw_path.display()))?;
    let ulaw_frames: Vec<Vec<u8>> = ulaw
        .chunks_exact(FRAME_SAMPLES)
        .map(<[u8]>::to_vec)
        .collect();
    if ulaw_frames.is_empty() {
        return Err(format!("{} holds no 20 ms frame", ulaw_path.display()));
    }
    let pcm_frames = ulaw_frames
        .iter()
        .map(|f| f.iter().map(|&b| g711::ulaw_decode(b)).collect())
        .collect();
    let flow_path = root.join("sip-config/flows/demo.yaml");
    let demo_flow = FlowDefinition::load(&flow_path).map_err(|e| e.to_string())?;
    Ok(Inputs {
        ulaw_frames,
        pcm_frames,
        demo_flow,
    })
}

/// The INVITE SIPp's `uac_basic.xml` sends, as it is on the wire (CRLF, real Content-Length).
fn sipp_invite() -> Vec<u8> {
    let sdp = sipp_offer();
    let head = [
        "INVITE sip:bot@127.0.0.1:5060 SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK-13428-1-0;rport",
        "Max-Forwards: 70",
        "From: \"SIPp caller\" <sip:sipp@127.0.0.1:5061>;tag=13428SIPpTag001",
        "To: <sip:bot@127.0.0.1:5060>",
        "Call-ID: 1-13428@127.0.0.1",
        "CSeq: 1 INVITE",
        "Contact: <sip:sipp@127.0.0.1:5061>",
        "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, REFER, NOTIFY, INFO",
        "User-Agent: sipp-test/uac_basic",
        "Content-Type: application/sdp",
    ]
    .join("\r\n");
    format!("{head}\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()).into_bytes()
}

/// The SDP offer of `uac_basic.xml` (PCMU, PCMA, telephone-event).
fn sipp_offer() -> String {
    [
        "v=0",
        "o=sipp 134281 1 IN IP4 127.0.0.1",
        "s=sipp",
        "c=IN IP4 127.0.0.1",
        "t=0 0",
        "m=audio 6000 RTP/AVP 0 8 101",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:101 telephone-event/8000",
        "a=fmtp:101 0-16",
        "a=ptime:20",
        "a=sendrecv",
        "",
    ]
    .join("\r\n")
}

fn slot_time(t0: Instant, slot: u64) -> Instant {
    t0 + Duration::from_millis(20 * slot)
}

// ---- cases --------------------------------------------------------------------------------

fn g711_encode_case(inputs: &Inputs, codec: Codec, name: &'static str) -> Case {
    let frames = inputs.pcm_frames.clone();
    let mut out = Vec::with_capacity(FRAME_SAMPLES);
    let mut i = 0;
    Case {
        name,
        op_desc: "encode 160 samples (20 ms)",
        per_call_s: SLOTS_PER_S,
        baseline_bytes: FRAME_SAMPLES * 2,
        run: looped(move || {
            out.clear();
            g711::encode(codec, black_box(&frames[i]), &mut out);
            black_box(&out);
            i = (i + 1) % frames.len();
        }),
    }
}

fn g711_decode_case(inputs: &Inputs, codec: Codec, name: &'static str) -> Case {
    let frames = inputs.ulaw_frames.clone();
    let mut out = Vec::with_capacity(FRAME_SAMPLES);
    let mut i = 0;
    Case {
        name,
        op_desc: "decode 160 bytes (20 ms)",
        per_call_s: SLOTS_PER_S,
        baseline_bytes: FRAME_SAMPLES,
        run: looped(move || {
            out.clear();
            g711::decode(codec, black_box(&frames[i]), &mut out);
            black_box(&out);
            i = (i + 1) % frames.len();
        }),
    }
}

/// One 20 ms slot of a call's RTP session as the media task runs it: the caller's packet in,
/// timers, our packet out (a prompt is playing), released audio out.
struct RtpSlot {
    session: RtpSession,
    t0: Instant,
    slot: u64,
    peer: SocketAddr,
    /// One datagram per speech frame; sequence and timestamp are patched per slot.
    packets: Vec<Vec<u8>>,
    prompt: Vec<i16>,
    sent: u64,
    frames_out: u64,
}

impl RtpSlot {
    fn new(inputs: &Inputs) -> Self {
        let peer = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 6000);
        let mut cfg = RtpConfig::new(Codec::Pcmu, 0, Some(101));
        cfg.remote = Some(peer);
        cfg.seed = 7;
        let t0 = Instant::now();
        let packets = inputs
            .ulaw_frames
            .iter()
            .map(|payload| {
                let header = RtpHeader {
                    marker: false,
                    payload_type: 0,
                    sequence: 0,
                    timestamp: 0,
                    ssrc: 0x5150_5150,
                };
                let mut buf = Vec::new();
                packet::write(&header, payload, &mut buf);
                buf
            })
            .collect();
        RtpSlot {
            session: RtpSession::new(cfg, t0),
            t0,
            slot: 0,
            peer,
            packets,
            prompt: inputs.pcm_frames.concat(),
            sent: 0,
            frames_out: 0,
        }
    }

    fn step(&mut self) {
        // The caller's packet arrives a little after the slot boundary.
        let now = slot_time(self.t0, self.slot) + Duration::from_millis(3);
        let idx = (self.slot % self.packets.len() as u64) as usize;
        let pkt = &mut self.packets[idx];
        pkt[2..4].copy_from_slice(&(self.slot as u16).to_be_bytes());
        pkt[4..8].copy_from_slice(&((self.slot as u32).wrapping_mul(160)).to_be_bytes());
        self.session
            .handle_datagram(black_box(pkt), self.peer, black_box(now));
        self.session.handle_timeout(now);
        if self.session.queued_ms() < 200 {
            self.session.queue_audio(&self.prompt);
        }
        while let Some(t) = self.session.poll_transmit(now) {
            self.sent += u64::from(!t.rtcp);
            black_box(t);
        }
        while let Some(ev) = self.session.poll_event() {
            self.frames_out += u64::from(matches!(ev, RtpEvent::Audio { .. }));
            black_box(ev);
        }
        black_box(self.session.poll_timeout());
        self.slot += 1;
    }
}

fn rtp_slot_case(inputs: &Inputs) -> Result<Case, String> {
    let mut probe = RtpSlot::new(inputs);
    for _ in 0..500 {
        probe.step();
    }
    // Steady state: one packet out per slot, one frame released per slot (after the jitter
    // buffer's depth).
    if !(499..=501).contains(&probe.sent) || !(490..=500).contains(&probe.frames_out) {
        return Err(format!(
            "rtp slot setup is off: 500 slots sent {} packets and released {} frames",
            probe.sent, probe.frames_out
        ));
    }
    let mut s = RtpSlot::new(inputs);
    Ok(Case {
        name: "rtp_slot",
        op_desc: "RtpSession: 1 RTP in + 1 out + timers, one 20 ms slot",
        per_call_s: SLOTS_PER_S,
        baseline_bytes: 2 * (packet::HEADER_LEN + FRAME_SAMPLES),
        run: looped(move || s.step()),
    })
}

fn recorder_case(inputs: &Inputs, mode: ChannelMode, name: &'static str) -> Result<Case, String> {
    let left = inputs.pcm_frames.clone();
    let right: Vec<Vec<i16>> = left.iter().rev().cloned().collect();
    let t0 = Instant::now();
    // The writer's queue; the op drains it and hands the blocks back to the pool as the
    // writer thread does, so the pool is in steady state.
    let (tx, rx) = std::sync::mpsc::sync_channel(64);
    let spec = FeedSpec {
        id: RecordingId::generate(Utc::now()),
        mode,
        writer: tx,
    };
    let mut feed = RecordingFeed::new(spec, 0, t0, t0, Utc::now());
    let step = move |feed: &mut RecordingFeed, slot: u64| {
        let i = (slot % left.len() as u64) as usize;
        let now = slot_time(t0, slot) + Duration::from_millis(1);
        feed.caller_frame((slot as u32).wrapping_mul(160), &left[i], now);
        feed.sent(slot, &right[i]);
        feed.advance(now);
    };
    let probe_rx = move || -> usize {
        let mut slots = 0;
        while let Ok(job) = rx.try_recv() {
            if let Job::Block {
                slots: n, samples, ..
            } = job
            {
                slots += n;
                writer::give_block(samples);
            }
        }
        slots
    };
    for slot in 0..120 {
        step(&mut feed, slot);
    }
    let written = probe_rx();
    // 117 slots are due after 120 (less the lag), handed over in whole blocks.
    let whole_blocks = 117 / BLOCK_SLOTS * BLOCK_SLOTS;
    if written != whole_blocks || feed.slots() != 117 {
        return Err(format!(
            "recorder setup is off: 120 slots handed {written} slots to the writer, fed {}",
            feed.slots()
        ));
    }
    let mut slot = 120u64;
    Ok(Case {
        name,
        op_desc: "RecordingFeed: caller frame + sent frame + advance, one 20 ms slot",
        per_call_s: SLOTS_PER_S,
        baseline_bytes: 2 * FRAME_SAMPLES * 2,
        run: looped(move || {
            step(&mut feed, slot);
            black_box(probe_rx());
            slot += 1;
        }),
    })
}

fn guard_case() -> Result<Case, String> {
    let invite = sipp_invite();
    match inspect_datagram(&invite) {
        Verdict::Pass(bytes) if bytes.as_ref() == invite.as_slice() => {}
        other => return Err(format!("guard setup is off: SIPp INVITE gave {other:?}")),
    }
    Ok(Case {
        name: "sip_guard_invite",
        op_desc: "guard::inspect_datagram on SIPp's INVITE (includes an rsipstack parse)",
        per_call_s: 0.0,
        baseline_bytes: invite.len(),
        run: looped(move || {
            black_box(inspect_datagram(black_box(&invite)));
        }),
    })
}

/// For reading the guard row: the rsipstack parse the guard runs, alone.
fn sip_parse_case() -> Result<Case, String> {
    let invite = sipp_invite();
    rsipstack::sip::SipMessage::try_from(invite.as_slice())
        .map_err(|e| format!("rsipstack cannot parse the SIPp INVITE: {e}"))?;
    Ok(Case {
        name: "sip_parse_invite",
        op_desc: "rsipstack SipMessage::try_from on the same INVITE (reference)",
        per_call_s: 0.0,
        baseline_bytes: invite.len(),
        run: looped(move || {
            let parsed = rsipstack::sip::SipMessage::try_from(black_box(invite.as_slice()));
            black_box(parsed.is_ok());
        }),
    })
}

fn sdp_case() -> Result<Case, String> {
    let offer = sipp_offer();
    let local = LocalMedia {
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
        port: 20_000,
        session_id: 42,
        version: 1,
    };
    let prefs = [Codec::Pcmu, Codec::Pcma];
    let check = SessionDescription::parse(&offer)
        .map_err(|e| e.to_string())
        .and_then(|o| negotiate_answer(&o, &prefs, &local).map_err(|e| e.to_string()))
        .map_err(|e| format!("sdp setup is off: {e}"))?;
    if check.codec != Codec::Pcmu || check.telephone_event_pt != Some(101) {
        return Err(format!("sdp setup is off: negotiated {check:?}"));
    }
    Ok(Case {
        name: "sdp_negotiate",
        op_desc: "parse SIPp's offer + negotiate_answer (answer SDP text)",
        per_call_s: 0.0,
        baseline_bytes: offer.len(),
        run: looped(move || {
            if let Ok(o) = SessionDescription::parse(black_box(&offer)) {
                black_box(negotiate_answer(&o, &prefs, &local).ok());
            }
        }),
    })
}

/// The demo flow sitting in its menu; each op is one key press.
fn flow_case(inputs: &Inputs) -> Result<Case, String> {
    let t0 = Instant::now();
    let wall: DateTime<Utc> = Utc
        .with_ymd_and_hms(2024, 5, 1, 12, 0, 0)
        .single()
        .ok_or("bad fixed wall clock")?;
    let mut m = FlowMachine::new(Arc::clone(&inputs.demo_flow), t0, wall);
    m.handle_event(
        FlowEvent::Started(SessionInfo {
            call_id: "bench-1".into(),
            from: "+3211223344".into(),
            to: "+3225550000".into(),
            headers: BTreeMap::new(),
            codec: "PCMU".into(),
        }),
        t0,
        wall,
    );
    m.handle_event(
        FlowEvent::PlaybackFinished {
            id: 1,
            interrupted: false,
        },
        t0,
        wall,
    );
    while m.poll_action().is_some() {}
    let mut presses = 0u64;
    let mut press = move |m: &mut FlowMachine| -> Vec<FlowAction> {
        // `2` stops the recording, `3` starts one; both return to the menu.
        let digit = if presses.is_multiple_of(2) { '2' } else { '3' };
        presses += 1;
        let now = t0 + Duration::from_millis(500 * presses);
        m.handle_event(
            FlowEvent::Dtmf {
                digit,
                duration_ms: 100,
            },
            now,
            wall,
        );
        std::iter::from_fn(|| m.poll_action()).collect()
    };
    let first = press(&mut m);
    if first != [FlowAction::StopRecording] || press(&mut m) != [FlowAction::StartRecording] {
        return Err(format!("flow setup is off: `2` gave {first:?}"));
    }
    // Fill the step log (capped) so every measured press costs the same.
    for _ in 0..MAX_STEP_LOG {
        if m.step_log().len() >= MAX_STEP_LOG {
            break;
        }
        press(&mut m);
    }
    if m.is_finished() {
        return Err("flow setup is off: the demo flow finished".into());
    }
    Ok(Case {
        name: "flow_dtmf",
        op_desc: "FlowMachine: demo flow menu, one DTMF (2/3) + drain actions",
        per_call_s: 0.0,
        baseline_bytes: 2 * FRAME_SAMPLES,
        run: looped(move || {
            black_box(press(&mut m));
        }),
    })
}

/// Every case name, in table order.
const CASES: &[&str] = &[
    "g711_encode_pcmu",
    "g711_encode_pcma",
    "g711_decode_pcmu",
    "g711_decode_pcma",
    "rtp_slot",
    "recorder_tick_stereo",
    "recorder_tick_mixed",
    "sip_guard_invite",
    "sip_parse_invite",
    "sdp_negotiate",
    "flow_dtmf",
];

/// Sets up one case (only the one asked for, so callgrind runs stay short).
fn make_case(name: &str, inputs: &Inputs) -> Result<Case, String> {
    match name {
        "g711_encode_pcmu" => Ok(g711_encode_case(inputs, Codec::Pcmu, "g711_encode_pcmu")),
        "g711_encode_pcma" => Ok(g711_encode_case(inputs, Codec::Pcma, "g711_encode_pcma")),
        "g711_decode_pcmu" => Ok(g711_decode_case(inputs, Codec::Pcmu, "g711_decode_pcmu")),
        "g711_decode_pcma" => Ok(g711_decode_case(inputs, Codec::Pcma, "g711_decode_pcma")),
        "rtp_slot" => rtp_slot_case(inputs),
        "recorder_tick_stereo" => {
            recorder_case(inputs, ChannelMode::Stereo, "recorder_tick_stereo")
        }
        "recorder_tick_mixed" => recorder_case(inputs, ChannelMode::Mixed, "recorder_tick_mixed"),
        "sip_guard_invite" => guard_case(),
        "sip_parse_invite" => sip_parse_case(),
        "sdp_negotiate" => sdp_case(),
        "flow_dtmf" => flow_case(inputs),
        other => Err(format!("no case named {other} (see --list)")),
    }
}

// ---- measuring ----------------------------------------------------------------------------

fn time_batch(run: &mut dyn FnMut(u64), n: u64) -> Duration {
    let start = Instant::now();
    run(n);
    start.elapsed()
}

/// Runs `run` for at least `d`, then returns a batch size that takes about `SAMPLE_TARGET`.
fn warm_and_calibrate(run: &mut dyn FnMut(u64), d: Duration) -> u64 {
    let mut n = 1u64;
    let start = Instant::now();
    loop {
        let t = time_batch(run, n);
        if t < SAMPLE_TARGET / 4 {
            n = n.saturating_mul(2);
        } else if start.elapsed() >= d {
            let per_op = t.as_secs_f64() / n as f64;
            return ((SAMPLE_TARGET.as_secs_f64() / per_op) as u64).max(1);
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

struct Measured {
    case_ns: f64,
    base_ns: f64,
    /// Fastest sample of each side: interference only ever adds time, so on a busy machine
    /// the ratio of the minimums is the steadier figure.
    case_min_ns: f64,
    base_min_ns: f64,
    ratio: f64,
    ratio_p25: f64,
    ratio_p75: f64,
}

/// Alternates baseline and case samples `reps` times; medians of ns/op and of the ratios.
fn measure(case: &mut Case, reps: usize) -> Measured {
    let mut base = memcpy(case.baseline_bytes);
    let n_base = warm_and_calibrate(&mut base, WARM_UP / 3);
    let n_case = warm_and_calibrate(&mut case.run, WARM_UP);
    let mut case_ns = Vec::with_capacity(reps);
    let mut base_ns = Vec::with_capacity(reps);
    let mut ratios = Vec::with_capacity(reps);
    for rep in 0..reps {
        // Swap the order every repetition so neither side always runs on a cold cache.
        let (b, c) = if rep % 2 == 0 {
            let b = time_batch(&mut base, n_base);
            (b, time_batch(&mut case.run, n_case))
        } else {
            let c = time_batch(&mut case.run, n_case);
            (time_batch(&mut base, n_base), c)
        };
        let b = b.as_nanos() as f64 / n_base as f64;
        let c = c.as_nanos() as f64 / n_case as f64;
        base_ns.push(b);
        case_ns.push(c);
        ratios.push(c / b);
    }
    let ratios = sorted(ratios);
    let case_ns = sorted(case_ns);
    let base_ns = sorted(base_ns);
    Measured {
        case_ns: percentile(&case_ns, 0.5),
        base_ns: percentile(&base_ns, 0.5),
        case_min_ns: percentile(&case_ns, 0.0),
        base_min_ns: percentile(&base_ns, 0.0),
        ratio: percentile(&ratios, 0.5),
        ratio_p25: percentile(&ratios, 0.25),
        ratio_p75: percentile(&ratios, 0.75),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

// ---- command line -------------------------------------------------------------------------

enum Mode {
    Table {
        filters: Vec<String>,
        reps: usize,
    },
    List,
    Count {
        name: String,
        n: u64,
    },
    /// `cargo test` (no `--bench`): set every case up and run a few ops, untimed, so the
    /// test suite proves the cases still drive their intended paths without slowing down.
    Smoke,
}

fn parse_args() -> Result<Mode, String> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let wants = |flag: &str| all.iter().any(|a| a == flag);
    if !wants("--bench") && !wants("--list") && !wants("--count") {
        // Under `cargo test`, which may pass libtest flags such as --test-threads.
        return Ok(Mode::Smoke);
    }
    let mut args = all.into_iter();
    let mut filters = Vec::new();
    let mut reps = DEFAULT_REPS;
    while let Some(a) = args.next() {
        match a.as_str() {
            // cargo bench passes `--bench`.
            "--bench" => {}
            "--list" => return Ok(Mode::List),
            "--reps" => {
                reps = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&r| r >= 3)
                    .ok_or("--reps needs a number >= 3")?;
            }
            "--count" => {
                let name = args.next().ok_or("--count needs NAME N")?;
                let n = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--count needs NAME N (N a number)")?;
                return Ok(Mode::Count { name, n });
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            s => filters.push(s.to_string()),
        }
    }
    Ok(Mode::Table { filters, reps })
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("media bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<(), String> {
    let mode = parse_args()?;
    let inputs = load_inputs()?;
    match mode {
        Mode::List => {
            for name in CASES {
                println!("{name} {}", make_case(name, &inputs)?.baseline_bytes);
            }
            Ok(())
        }
        Mode::Count { name, n } => {
            // `memcpy/<bytes>` runs a baseline, so callgrind can count it the same way.
            if let Some(bytes) = name.strip_prefix("memcpy/") {
                let bytes = bytes.parse().map_err(|_| format!("bad size in {name}"))?;
                memcpy(bytes)(n);
                return Ok(());
            }
            let mut case = make_case(&name, &inputs)?;
            (case.run)(n);
            Ok(())
        }
        Mode::Smoke => {
            for name in CASES {
                let mut case = make_case(name, &inputs)?;
                (case.run)(10);
                println!("bench case {name} ... ok");
            }
            Ok(())
        }
        Mode::Table { filters, reps } => {
            let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
            println!(
                "# voxgate media bench: {} CPU(s), {}; {reps} reps of ~{} ms per side, median",
                nproc,
                cpu_model(),
                SAMPLE_TARGET.as_millis()
            );
            println!();
            println!(
                "| case | one op | ns/op median (min) | memcpy baseline | baseline ns median (min) | ratio: median of pairs (IQR) | ratio of mins | µs per call-second |"
            );
            println!("|---|---|---:|---:|---:|---:|---:|---:|");
            let chosen = CASES
                .iter()
                .filter(|c| filters.is_empty() || filters.iter().any(|f| c.contains(f.as_str())));
            for name in chosen {
                let mut case = make_case(name, &inputs)?;
                let m = measure(&mut case, reps);
                let per_call_s = if case.per_call_s > 0.0 {
                    format!("{:.2}", m.case_ns * case.per_call_s / 1000.0)
                } else {
                    "once per call".into()
                };
                println!(
                    "| {} | {} | {:.0} ({:.0}) | {} B | {:.1} ({:.1}) | {:.1} ({:.1}–{:.1}) | {:.1} | {} |",
                    case.name,
                    case.op_desc,
                    m.case_ns,
                    m.case_min_ns,
                    case.baseline_bytes,
                    m.base_ns,
                    m.base_min_ns,
                    m.ratio,
                    m.ratio_p25,
                    m.ratio_p75,
                    m.case_min_ns / m.base_min_ns,
                    per_call_s
                );
            }
            Ok(())
        }
    }
}
