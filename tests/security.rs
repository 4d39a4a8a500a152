//! Issue 12 (robustness and security), end to end against the real binary: each test plays the
//! attacker or the faulty network of one row of the issue's table. See docs/security.md.
//!
//! Sources other than 127.0.0.1 are other loopback addresses (127.0.0.7, 127.0.0.9, ...): on
//! Linux the whole 127/8 is local, so a test can be "another host" without leaving loopback.

mod common;

use common::peer::{body, header, status, Peer};
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const T5: Duration = Duration::from_secs(5);

/// Greets and then collects digits forever: calls stay up until the test ends them.
const HOLD_FLOW: &str = r#"
name: test-hold
start: main
inactivity_s: 0
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  main:
    - message: {file: greeting.wav, wait: false}
    - goto: listen
  listen:
    - collect: {max_digits: 1, terminator: "", timeout_ms: 600000, default: listen, on_timeout: listen}
"#;

fn invite(p: &mut Peer, n: u32) -> String {
    p.call_id = format!("sec-{n}-{}@{}", peer::rand_u32(), p.local().ip());
    p.to_tag = None;
    p.contact = None;
    let offer = p.sdp(&p.media, "sendrecv");
    p.request(
        "INVITE",
        1,
        &format!("inv{n}x{}", peer::rand_u32()),
        Some(&offer),
    )
}

/// Every SIP message reaching `p` within `window`.
fn drain(p: &Peer, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline {
        if let Ok((n, _)) = p.sock.recv_from(&mut buf) {
            out.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    out
}

fn final_status_for(msgs: &[String], call_id: &str) -> Option<u16> {
    msgs.iter()
        .filter(|m| header(m, "Call-ID") == Some(call_id))
        .filter_map(|m| status(m))
        .find(|s| *s >= 200)
}

fn active_calls(gw: &Gateway) -> usize {
    gw.get("/v1/calls").unwrap().json()["calls"]
        .as_array()
        .map(|a| a.len())
        .unwrap_or(0)
}

// ---- toll fraud ------------------------------------------------------------------------------

/// Row "Toll fraud", part 1: with `[sip] trusted` set, an INVITE from any other address gets 403
/// and starts nothing (no call, no RTP, no recording); a trusted source still gets through.
#[test]
fn untrusted_source_gets_403_and_starts_nothing() {
    let gw = Gateway::builder()
        .flow_yaml(HOLD_FLOW)
        .toml("[sip]\ntrusted = [\"127.0.0.1/32\"]")
        .start();
    assert!(
        !gw.log_contains("trusted is not set"),
        "no warning expected when trusted is set"
    );
    let mut attacker = Peer::bind(gw.sip_addr(), "127.0.0.7");
    let inv = invite(&mut attacker, 1);
    attacker.send(&inv);
    let resp = attacker
        .recv_until(T5, |m| status(m).is_some_and(|s| s >= 200))
        .map(|(_, m)| m);
    let resp = resp.unwrap_or_else(|| panic!("no final response\n{}", gw.log_tail(40)));
    assert_eq!(status(&resp), Some(403), "{resp}");
    assert_eq!(
        Peer::rtp_count(&attacker.media, Duration::from_millis(800)),
        0
    );
    assert_eq!(active_calls(&gw), 0);
    let recs = gw.get("/v1/recordings").unwrap().json();
    assert_eq!(recs["recordings"].as_array().map(|a| a.len()), Some(0));

    let mut caller = Peer::new(gw.sip_addr());
    caller.call();
    assert_eq!(active_calls(&gw), 1, "a trusted source is still answered");
    caller.bye(2);
}

/// CONTRACT §8: unset `trusted` accepts everyone and says so at start-up.
#[test]
fn unset_trusted_logs_a_warning_at_start() {
    let gw = Gateway::builder().flow_yaml(HOLD_FLOW).start();
    assert!(
        gw.wait_for_log("trusted is not set", T5),
        "{}",
        gw.log_tail(30)
    );
}

/// Row "Toll fraud", part 2: with the shipped defaults (`allow` includes +44), the demo flow's
/// `5 <digits> #` to a UK premium-rate number is refused by the default deny list: no REFER,
/// no INVITE to the trunk, a `transfer.failed ... denied` log line and a metric.
#[test]
fn premium_rate_forward_is_refused_by_default() {
    let gw = Gateway::start_default();
    let trunk = UdpSocket::bind(("127.0.0.1", gw.trunk_port)).unwrap();
    trunk
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut caller = Peer::new(gw.sip_addr());
    caller.call();
    let mut cseq = 2;
    for d in "5449098765432#".chars() {
        caller.info_digit(cseq, d);
        cseq += 1;
    }
    assert!(
        gw.wait_for_log("transfer.failed", Duration::from_secs(10)),
        "{}",
        gw.log_tail(40)
    );
    let line = gw.log_lines("transfer.failed").join("\n");
    assert!(
        line.contains("denied") && line.contains("+449098765432"),
        "{line}"
    );
    // Nothing went out: no REFER to the caller, no INVITE to the trunk.
    let msgs = drain(&caller, Duration::from_secs(2));
    assert!(
        !msgs.iter().any(|m| m.starts_with("REFER ")),
        "a REFER went out: {msgs:?}"
    );
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(1);
    while Instant::now() < deadline {
        if let Ok((n, _)) = trunk.recv_from(&mut buf) {
            panic!(
                "the trunk got: {}",
                String::from_utf8_lossy(&buf[..n])
                    .lines()
                    .next()
                    .unwrap_or("")
            );
        }
    }
    let metrics = gw.get_noauth("/metrics").unwrap().text();
    assert!(
        metrics.contains("voxgate_transfers_refused_total"),
        "refusals are counted"
    );
    caller.bye(cseq);
}

// ---- reflection / floods ---------------------------------------------------------------------

/// Row "Reflection / slot exhaustion", admission part: INVITEs that are never ACKed hold at
/// most `max_unconfirmed_per_source` answered calls; the rest get 503 with Retry-After.
#[test]
fn unacked_invites_have_a_small_budget() {
    let gw = Gateway::builder()
        .flow_yaml(HOLD_FLOW)
        .toml("[sip]\nmax_unconfirmed_per_source = 2\ninvite_rate_per_source = 0.0")
        .start();
    let mut p = Peer::bind(gw.sip_addr(), "127.0.0.9");
    let mut ids = Vec::new();
    for n in 0..6 {
        let inv = invite(&mut p, n);
        ids.push(p.call_id.clone());
        p.send(&inv);
    }
    let msgs = drain(&p, Duration::from_secs(3));
    let finals: Vec<Option<u16>> = ids.iter().map(|id| final_status_for(&msgs, id)).collect();
    let answered = finals.iter().filter(|s| **s == Some(200)).count();
    let busy = finals.iter().filter(|s| **s == Some(503)).count();
    assert_eq!(answered, 2, "{finals:?}\n{}", gw.log_tail(30));
    assert_eq!(busy, 4, "{finals:?}");
    assert!(msgs
        .iter()
        .filter(|m| status(m) == Some(503))
        .all(|m| header(m, "Retry-After").is_some()));
    // Another source has its own budget.
    let mut other = Peer::new(gw.sip_addr());
    other.call();
    other.bye(2);
}

/// Per-source INVITE rate limit: a burst beyond the limit gets 503 + Retry-After, a source that
/// keeps going is ignored, and other sources are unaffected.
#[test]
fn invite_flood_is_rate_limited_per_source() {
    let gw = Gateway::builder()
        .flow_yaml(HOLD_FLOW)
        .toml("[sip]\ninvite_rate_per_source = 0.5\ninvite_burst_per_source = 3\nmax_unconfirmed_per_source = 100\nmax_unconfirmed = 100")
        .start();
    let mut p = Peer::bind(gw.sip_addr(), "127.0.0.10");
    let mut ids = Vec::new();
    for n in 0..12 {
        let inv = invite(&mut p, n);
        ids.push(p.call_id.clone());
        p.send(&inv);
    }
    let msgs = drain(&p, Duration::from_secs(3));
    let finals: Vec<Option<u16>> = ids.iter().map(|id| final_status_for(&msgs, id)).collect();
    assert_eq!(
        finals.iter().filter(|s| **s == Some(200)).count(),
        3,
        "{finals:?}"
    );
    let limited = finals.iter().filter(|s| **s == Some(503)).count();
    let silent = finals.iter().filter(|s| s.is_none()).count();
    assert_eq!(
        limited, 3,
        "503 up to the burst size, then silence: {finals:?}"
    );
    assert_eq!(silent, 6, "{finals:?}");
    assert!(gw.log_contains("SIP request refused"));
    let mut other = Peer::new(gw.sip_addr());
    other.call();
    other.bye(2);
}

/// Scanners (by User-Agent) get no answer at all, to OPTIONS or INVITE.
#[test]
fn scanners_get_silence() {
    let gw = Gateway::builder().flow_yaml(HOLD_FLOW).start();
    let mut p = Peer::bind(gw.sip_addr(), "127.0.0.11");
    let opt = p.request("OPTIONS", 1, "scan1", None).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nUser-Agent: friendly-scanner\r\n",
    );
    p.send(&opt);
    let inv = invite(&mut p, 1).replace(
        "Max-Forwards: 70\r\n",
        "Max-Forwards: 70\r\nUser-Agent: sipvicious\r\n",
    );
    p.send(&inv);
    let msgs = drain(&p, Duration::from_secs(2));
    assert!(msgs.is_empty(), "{msgs:?}");
    // The same OPTIONS without the scanner's name is answered.
    p.send(&p.request("OPTIONS", 2, "scan2", None));
    assert!(p.recv_until(T5, |m| status(m) == Some(200)).is_some());
}

// ---- fingerprinting --------------------------------------------------------------------------

/// Row "Fingerprinting": no version in Server / User-Agent, and the bridged leg's Call-ID is
/// ours (not the SIP library's domain).
#[test]
fn no_version_in_headers_and_own_call_id_on_the_bridged_leg() {
    let gw = Gateway::builder()
        .toml("[transfer]\nmode = \"bridge\"")
        .start();
    let trunk = UdpSocket::bind(("127.0.0.1", gw.trunk_port)).unwrap();
    trunk
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut probe = Peer::new(gw.sip_addr());
    probe.send(&probe.request("OPTIONS", 1, "fp1", None));
    let (_, ok) = probe
        .recv_until(T5, |m| status(m) == Some(200))
        .expect("OPTIONS answered");
    let server = header(&ok, "Server")
        .or_else(|| header(&ok, "User-Agent"))
        .unwrap_or("");
    assert!(
        !server.contains('/') && !server.contains(env!("CARGO_PKG_VERSION")),
        "version leaked: {server:?}"
    );
    let mut caller = Peer::new(gw.sip_addr());
    caller.call();
    caller.info_digit(2, '1');
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut far_invite = None;
    while Instant::now() < deadline && far_invite.is_none() {
        if let Ok((n, _)) = trunk.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            if m.starts_with("INVITE ") {
                far_invite = Some(m);
            }
        }
    }
    let far = far_invite.unwrap_or_else(|| panic!("no INVITE to the trunk\n{}", gw.log_tail(40)));
    let call_id = header(&far, "Call-ID").unwrap_or("");
    assert!(
        !call_id.contains("restsend") && call_id.ends_with("@127.0.0.1"),
        "{call_id}"
    );
    let ua = header(&far, "User-Agent").unwrap_or("");
    assert!(!ua.contains('/'), "version leaked on the bridged leg: {ua}");
    caller.bye(3);
}

// ---- dialog correctness ----------------------------------------------------------------------

/// Row "INFO before the ACK": an INFO after our 200 and before the ACK is answered and its
/// digit reaches the call.
#[test]
fn info_before_the_ack_is_answered_and_acted_on() {
    // `7` closes the conversation: the BYE proves the digit reached the flow.
    let flow = r#"
name: test-seven
start: main
inactivity_s: 0
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  main:
    - collect: {max_digits: 1, terminator: "", timeout_ms: 600000, branches: {"7": bye}, default: main, on_timeout: main}
  bye:
    - close
"#;
    let gw = Gateway::builder().flow_yaml(flow).start();
    let mut p = Peer::new(gw.sip_addr());
    let inv = invite(&mut p, 1);
    p.send(&inv);
    p.recv_until(T5, |m| status(m) == Some(200))
        .expect("200 for the INVITE");
    let info = p
        .request(
            "INFO",
            2,
            "early-info",
            Some("Signal=7\r\nDuration=160\r\n"),
        )
        .replace("application/sdp", "application/dtmf-relay");
    p.send(&info);
    let got = p.recv_until(Duration::from_secs(3), |m| {
        status(m).is_some() && m.contains("2 INFO")
    });
    let (_, resp) = got.unwrap_or_else(|| panic!("INFO not answered\n{}", gw.log_tail(40)));
    assert_eq!(status(&resp), Some(200), "{resp}");
    assert!(
        gw.wait_for_log("digit=7", T5),
        "digit lost\n{}",
        gw.log_tail(40)
    );
    p.send(&p.request("ACK", 1, "ack1", None));
    assert!(
        p.recv_until(T5, |m| m.starts_with("BYE ")).is_some(),
        "the flow never acted on the digit\n{}",
        gw.log_tail(40)
    );
}

// ---- TCP -------------------------------------------------------------------------------------

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// Is the server side of `s` closed (EOF or reset) within `within`?
fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let deadline = Instant::now() + within;
    let mut b = [0u8; 64];
    while Instant::now() < deadline {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// Row "Slowloris": connections that trickle bytes are closed at the header deadline, a source
/// cannot open more than its cap, and the memory comes back. A real TCP call still works.
#[test]
fn slowloris_tcp_connections_are_cut_and_capped() {
    let gw = Gateway::builder()
        .flow_yaml(HOLD_FLOW)
        .toml("[sip]\ntcp_header_timeout_s = 2\ntcp_max_connections_per_source = 4\ntcp_max_connections = 64")
        .start();
    let pid = gw.pid().unwrap();
    let addr: SocketAddr = gw.sip_addr();
    let rss_before = rss_kb(pid);
    // 40 sources x 1 byte: every one is cut at the header deadline.
    let mut conns: Vec<TcpStream> = (0..40)
        .map(|i| socket_from(&format!("127.0.1.{}:0", i + 1), addr))
        .collect();
    for c in conns.iter_mut() {
        c.write_all(b"I").unwrap();
    }
    std::thread::sleep(Duration::from_millis(1200));
    for c in conns.iter_mut() {
        let _ = c.write_all(b"N");
    }
    let rss_peak = rss_kb(pid);
    let mut cut = 0;
    for c in conns.iter_mut() {
        if closed_within(c, Duration::from_secs(4)) {
            cut += 1;
        }
    }
    assert_eq!(
        cut, 40,
        "every trickling connection is cut at the header deadline"
    );
    // Per-source cap: the 5th connection from one address is closed at once.
    let mut same: Vec<TcpStream> = (0..5).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let fifth = same.last_mut().unwrap();
    assert!(
        closed_within(fifth, Duration::from_secs(2)),
        "cap per source"
    );
    assert!(!closed_within(&mut same[0], Duration::from_millis(500)));
    drop(same);
    drop(conns);
    std::thread::sleep(Duration::from_millis(500));
    let rss_after = rss_kb(pid);
    eprintln!("RSS kB: before {rss_before}, with 40 connections {rss_peak}, after {rss_after}");
    assert!(
        rss_after < rss_before + 4096,
        "memory not returned: {rss_before} -> {rss_after} kB"
    );
    assert!(gw.log_contains("over the connection cap"));
    // A real call over TCP still works.
    require_sipp();
    Sipp::uac("uac_short.xml", gw.sip_addr())
        .tcp()
        .run()
        .assert_success();
}

/// A TCP connection from a chosen loopback address (another "host").
fn socket_from(local: &str, to: SocketAddr) -> TcpStream {
    let local: SocketAddr = local.parse().unwrap();
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    s.bind(&local.into()).unwrap();
    s.connect(&to.into()).unwrap();
    s.into()
}

// ---- media -----------------------------------------------------------------------------------

fn rtp_packet(ssrc: u32, seq: u16, ts: u32, byte: u8) -> Vec<u8> {
    let mut p = vec![0x80, 0x00];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend(std::iter::repeat_n(byte, 160));
    p
}

/// The gateway's media address from its SDP answer.
fn sdp_media_addr(sdp: &str) -> SocketAddr {
    let ip = sdp
        .lines()
        .find_map(|l| l.strip_prefix("c=IN IP4 "))
        .unwrap()
        .trim();
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap();
    format!("{ip}:{port}").parse().unwrap()
}

/// Row "RTP hijack / injection": during a call, RTP with a new SSRC from another port of the
/// same host neither takes the stream nor receives the call's audio; it is counted and logged
/// once, and the real caller keeps getting the audio.
#[test]
fn rtp_from_a_foreign_port_cannot_take_the_stream() {
    let gw = Gateway::builder().flow_yaml(HOLD_FLOW).start();
    let mut p = Peer::new(gw.sip_addr());
    let inv = invite(&mut p, 1);
    p.send(&inv);
    let (_, ok) = p
        .recv_until(T5, |m| status(m) == Some(200))
        .expect("200 for the INVITE");
    let gw_media = sdp_media_addr(body(&ok));
    p.send(&p.request("ACK", 1, "ack1", None));
    // The caller talks from its SDP address all along.
    let caller_media = p.media.try_clone().unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seq = 1u16;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = caller_media.send_to(
                    &rtp_packet(0x1111, seq, u32::from(seq) * 160, 0xff),
                    gw_media,
                );
                seq = seq.wrapping_add(1);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    // The attacker: same host, another port, its own SSRC, 100 packets.
    let attacker = UdpSocket::bind("127.0.0.1:0").unwrap();
    attacker
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    for seq in 0..100u16 {
        attacker
            .send_to(
                &rtp_packet(0xBAD, seq, u32::from(seq) * 160, 0x00),
                gw_media,
            )
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    let stolen = Peer::rtp_count(&attacker, Duration::from_secs(1));
    let caller_rx = Peer::rtp_count(&p.media, Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    talker.join().unwrap();
    assert_eq!(stolen, 0, "the attacker received the call's audio");
    assert!(
        caller_rx > 20,
        "the caller lost its audio ({caller_rx} packets in 1 s)"
    );
    let foreign_logs = gw.log_lines("RTP from a foreign source dropped");
    assert_eq!(
        foreign_logs.len(),
        1,
        "logged once a minute, not per packet"
    );
    // Logged on a media worker, yet in the call's span: the operator sees which call.
    assert!(
        foreign_logs[0].contains(&format!("call_id={}", p.call_id)),
        "the warning names the call: {}",
        foreign_logs[0]
    );
    assert!(
        gw.log_lines("remote RTP stream started")
            .iter()
            .any(|l| l.contains(&format!("call_id={}", p.call_id))),
        "{}",
        gw.log_tail(30)
    );
    assert!(
        !gw.log_contains("remote SSRC changed"),
        "{}",
        gw.log_tail(20)
    );
    let metrics = gw.get_noauth("/metrics").unwrap().text();
    let foreign: f64 = metrics
        .lines()
        .find(|l| l.starts_with("voxgate_rtp_foreign_packets_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(foreign >= 100.0, "foreign packets counted: {foreign}");
    p.bye(2);
}

// ---- disk full -------------------------------------------------------------------------------

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A small tmpfs mounted for one test; unmounted on drop.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount(dir: std::path::PathBuf, size: &str) -> SmallFs {
        std::fs::create_dir_all(&dir).unwrap();
        let st = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn recordings(gw: &Gateway) -> Vec<serde_json::Value> {
    gw.get("/v1/recordings").unwrap().json()["recordings"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Row "Disk full": a recording that runs out of space ends `failed` with its reason (in the
/// API at once, and on disk, so a restart does not turn it into `recovered`); a recording that
/// cannot start is still listed as failed; DELETE works on failed recordings; no temp files.
#[test]
fn disk_full_recordings_end_failed_with_a_reason() {
    if !is_root() {
        eprintln!("skipped: mounting a small tmpfs needs root");
        return;
    }
    let mut gw = Gateway::builder().prepare();
    let mnt = gw.dir().join("small");
    let _fs = SmallFs::mount(mnt.clone(), "96k");
    // Point the recordings at the small filesystem.
    let cfg = std::fs::read_to_string(&gw.config_path).unwrap();
    let cfg = cfg
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("dir = ") && l.contains("recordings") {
                format!("dir = {:?}", mnt.display().to_string())
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&gw.config_path, cfg).unwrap();
    gw.start();

    // Call 1 records until the disk is full (96 KiB is ~3 s of stereo audio).
    let mut caller = Peer::new(gw.sip_addr());
    caller.call();
    assert!(
        gw.wait_for_log("recording failed", Duration::from_secs(15)),
        "{}",
        gw.log_tail(30)
    );
    caller.bye(2);
    std::thread::sleep(Duration::from_millis(500));
    let recs = recordings(&gw);
    assert_eq!(recs.len(), 1, "{recs:?}");
    assert_eq!(recs[0]["status"], "failed", "{recs:?}");
    let reason = recs[0]["reason"].as_str().unwrap_or("").to_string();
    assert!(reason.to_lowercase().contains("space"), "{reason}");
    let first = recs[0]["id"].as_str().unwrap().to_string();

    // Call 2: its recording cannot start; it is listed as failed all the same.
    let mut caller2 = Peer::new(gw.sip_addr());
    caller2.call();
    std::thread::sleep(Duration::from_millis(800));
    let recs = recordings(&gw);
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(recs.iter().all(|r| r["status"] == "failed"), "{recs:?}");
    caller2.bye(2);

    // A restart does not turn the first into `recovered`.
    gw.kill9();
    gw.start();
    let again = recordings(&gw);
    let r1 = again
        .iter()
        .find(|r| r["id"] == first.as_str())
        .unwrap_or_else(|| panic!("{again:?}"));
    assert_eq!(r1["status"], "failed", "{again:?}");
    assert!(r1["reason"]
        .as_str()
        .unwrap_or("")
        .to_lowercase()
        .contains("space"));

    // DELETE frees the space; nothing temporary is left behind.
    let del = gw.delete(&format!("/v1/recordings/{first}")).unwrap();
    assert_eq!(del.status, 204, "{}", del.text());
    let leftovers: Vec<String> = std::fs::read_dir(&mnt)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp") || n.ends_with(".part"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    gw.kill9();
}

// ---- admission and confirmation --------------------------------------------------------------

/// Row "`max_calls` not enforced for INVITEs that arrive together": 8 INVITEs at once with
/// `max_calls = 5` -> exactly 5 answered, 3 get 503 with Retry-After.
#[test]
fn max_calls_holds_for_simultaneous_invites() {
    let gw = Gateway::builder()
        .flow_yaml(HOLD_FLOW)
        .toml("[sip]\nmax_calls = 5\ninvite_rate_per_source = 0.0\nmax_unconfirmed_per_source = 50\nmax_unconfirmed = 50")
        .start();
    let mut p = Peer::new(gw.sip_addr());
    let mut batch = Vec::new();
    let mut ids = Vec::new();
    for n in 0..8 {
        batch.push(invite(&mut p, n));
        ids.push(p.call_id.clone());
    }
    for inv in &batch {
        p.send(inv);
    }
    let msgs = drain(&p, Duration::from_secs(3));
    let finals: Vec<Option<u16>> = ids.iter().map(|id| final_status_for(&msgs, id)).collect();
    assert_eq!(
        finals.iter().filter(|s| **s == Some(200)).count(),
        5,
        "{finals:?}\n{}",
        gw.log_tail(30)
    );
    assert_eq!(
        finals.iter().filter(|s| **s == Some(503)).count(),
        3,
        "{finals:?}"
    );
    assert!(msgs
        .iter()
        .filter(|m| status(m) == Some(503))
        .all(|m| header(m, "Retry-After").is_some()));
}

/// Row "Reflection / slot exhaustion": INVITEs that are never ACKed get no RTP at all (nothing
/// goes to an address that has not confirmed the dialog), leave no recording, and end at
/// Timer H (64*T1; T1 = 100 ms here).
#[test]
fn unacked_invites_get_no_media_and_no_recording() {
    let gw = Gateway::builder()
        .toml("[sip]\nt1_ms = 100\nmax_unconfirmed_per_source = 30\ninvite_rate_per_source = 0.0")
        .start();
    let mut p = Peer::bind(gw.sip_addr(), "127.0.0.9");
    for n in 0..8 {
        let inv = invite(&mut p, n);
        p.send(&inv);
    }
    // Every INVITE's SDP names the same media socket: count what reaches it.
    let rtp = Peer::rtp_count(&p.media, Duration::from_secs(3));
    assert_eq!(rtp, 0, "RTP sent before the ACK");
    // Timer H: 6.4 s after the 200; the calls end as NoAck.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && active_calls(&gw) > 0 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(active_calls(&gw), 0, "{}", gw.log_tail(30));
    let recs = gw.get("/v1/recordings").unwrap().json();
    assert_eq!(
        recs["recordings"].as_array().map(|a| a.len()),
        Some(0),
        "{recs}"
    );
    let left: Vec<_> = std::fs::read_dir(gw.recordings_dir())
        .map(|d| d.filter_map(|e| e.ok()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    // A caller that does ACK gets its media.
    let mut caller = Peer::new(gw.sip_addr());
    caller.call();
    assert!(Peer::rtp_count(&caller.media, Duration::from_secs(1)) > 10);
    caller.bye(2);
}

// ---- shutdown and crashes --------------------------------------------------------------------

/// A response to `req` (Via, From, To, Call-ID and CSeq copied), as a UAS sends it.
fn response_to(req: &str, code: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for line in req.split("\r\n").skip(1) {
        if line.is_empty() {
            break;
        }
        let name = line
            .split(':')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if ["via", "v", "from", "f", "to", "t", "call-id", "i", "cseq"].contains(&name.as_str()) {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// Row "Shutdown sends one BYE per call, never retransmits, and exits 30 ms later": the
/// caller drops the first BYE; voxgate retransmits it (Timer E), the second copy is answered,
/// and only then does the process exit (0), having logged the BYE as answered.
#[test]
fn shutdown_bye_is_retransmitted_until_answered() {
    let mut gw = Gateway::builder()
        .flow_yaml(HOLD_FLOW)
        .toml("shutdown_grace_s = 1")
        .start();
    let mut p = Peer::new(gw.sip_addr());
    p.call();
    gw.terminate();
    let (_, first) = p
        .recv_until(Duration::from_secs(8), |m| m.starts_with("BYE "))
        .unwrap_or_else(|| panic!("no BYE after SIGTERM\n{}", gw.log_tail(40)));
    // Dropped. The retransmission is the same transaction (same Via branch and CSeq).
    let (_, second) = p
        .recv_until(Duration::from_secs(5), |m| m.starts_with("BYE "))
        .unwrap_or_else(|| panic!("the BYE was never retransmitted\n{}", gw.log_tail(40)));
    assert_eq!(header(&first, "Via"), header(&second, "Via"), "{second}");
    assert_eq!(header(&first, "CSeq"), header(&second, "CSeq"), "{second}");
    p.send(&response_to(&second, 200, "OK"));
    let status = gw.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{}", gw.log_tail(40));
    assert!(
        gw.log_contains("BYE sent and answered"),
        "{}",
        gw.log_tail(40)
    );
}

/// The CDRs of one call (`GET /v1/cdrs?call_id=`).
fn cdrs_of(gw: &Gateway, call_id: &str) -> Vec<serde_json::Value> {
    let q: String = call_id
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect();
    gw.get(&format!("/v1/cdrs?call_id={q}")).unwrap().json()["cdrs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Calls the open-CDR journal (`data_dir/calls-open.jsonl`) holds open: an `open` line and
/// no `closed` line after it. A line still being written is not counted.
fn open_cdr_files(gw: &Gateway) -> usize {
    let text = std::fs::read_to_string(gw.data_dir().join("calls-open.jsonl")).unwrap_or_default();
    let mut open = std::collections::HashSet::new();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(id) = v["call_id"].as_str() else {
            continue;
        };
        if v["closed"] == true {
            open.remove(id);
        } else if v["open"].is_object() {
            open.insert(id.to_string());
        }
    }
    open.len()
}

/// Row "kill -9 leaves no CDR": a call that was up when the gateway was killed gets a CDR at
/// the next start, marked as cut short (`end_reason: gateway_crashed`, with its answer time);
/// a call that ended normally before keeps exactly its own CDR.
#[test]
fn kill_9_leaves_a_cdr_marked_cut_short() {
    let mut gw = Gateway::builder().flow_yaml(HOLD_FLOW).start();

    // A normal call first: its CDR, and no open CDR left once it is stored.
    let mut done = Peer::new(gw.sip_addr());
    done.call();
    done.bye(2);
    let deadline = Instant::now() + T5;
    while cdrs_of(&gw, &done.call_id).is_empty() || open_cdr_files(&gw) > 0 {
        assert!(
            Instant::now() < deadline,
            "normal call: CDR {:?}, open files {}\n{}",
            cdrs_of(&gw, &done.call_id),
            open_cdr_files(&gw),
            gw.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A call that is up when the gateway is killed.
    let mut cut = Peer::new(gw.sip_addr());
    cut.call();
    let deadline = Instant::now() + T5;
    while open_cdr_files(&gw) == 0 {
        assert!(
            Instant::now() < deadline,
            "no open CDR written at the answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        cdrs_of(&gw, &cut.call_id).is_empty(),
        "the call is still up"
    );
    gw.kill9();
    gw.start();

    let cdrs = cdrs_of(&gw, &cut.call_id);
    assert_eq!(cdrs.len(), 1, "{cdrs:#?}\n{}", gw.log_tail(40));
    let c = &cdrs[0];
    assert_eq!(c["end_reason"], "gateway_crashed", "{c:#}");
    assert_eq!(c["cut_short"], true, "{c:#}");
    assert!(c["answer"].is_string(), "{c:#}");
    assert!(c["start"].is_string(), "{c:#}");
    assert_eq!(c["codec"], "PCMU", "{c:#}");
    assert_eq!(open_cdr_files(&gw), 0, "open CDR removed once completed");
    assert_eq!(cdrs_of(&gw, &done.call_id).len(), 1, "no duplicate");
    assert_eq!(
        cdrs_of(&gw, &done.call_id)[0]["end_reason"],
        "caller_hangup"
    );
    gw.kill9();
}

// ---- ordering --------------------------------------------------------------------------------

/// Row "Ordering": the 200 for the INFO carrying the key that starts a forward leaves before
/// the REFER it triggers; and a REFER nobody answers stops being retransmitted once the forward
/// has fallen back to a bridge (`refer_timeout_s = 2`, mode auto).
#[test]
fn info_answered_before_refer_and_an_abandoned_refer_is_not_retransmitted() {
    require_sipp();
    let gw = Gateway::builder()
        .toml("[transfer]\nrefer_timeout_s = 2")
        .start();
    let mut trunk = Sipp::uas("xfer_trunk_answer.xml", gw.trunk_port)
        .key("number", "+3225551212")
        .key("hold_ms", "10000")
        .key("rtp_port", "9")
        .timeout_s(40)
        .spawn();
    trunk.wait_listening(Duration::from_secs(10));
    let mut caller = Peer::new(gw.sip_addr());
    caller.call();

    // `1`: forward to the demo flow's number. Collect what reaches the caller, in order.
    let info = caller
        .request("INFO", 2, "info-one", Some("Signal=1\r\nDuration=160\r\n"))
        .replace("application/sdp", "application/dtmf-relay");
    caller.send(&info);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 8192];
    while Instant::now() < deadline && !seen.iter().any(|m: &String| m.starts_with("REFER ")) {
        if let Ok((n, _)) = caller.sock.recv_from(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let info_ok = seen
        .iter()
        .position(|m| status(m) == Some(200) && m.contains("2 INFO"));
    let refer = seen.iter().position(|m| m.starts_with("REFER "));
    let first_lines: Vec<&str> = seen.iter().filter_map(|m| m.lines().next()).collect();
    assert!(
        refer.is_some(),
        "no REFER: {first_lines:?}\n{}",
        gw.log_tail(40)
    );
    assert!(
        info_ok.is_some() && info_ok < refer,
        "the INFO's 200 must come before the REFER: {first_lines:?}"
    );

    // The REFER goes unanswered (its retransmissions are read and dropped meanwhile); after
    // 2 s voxgate bridges through the trunk instead.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !gw.log_contains("transfer.completed") {
        assert!(Instant::now() < deadline, "{}", gw.log_tail(60));
        drain(&caller, Duration::from_millis(100));
    }
    assert!(gw.log_contains("mode=bridge"), "{}", gw.log_tail(40));
    // Timer E would resend it at 3.5 s and 7.5 s after the first copy: nothing may come.
    let after = drain(&caller, Duration::from_secs(6));
    let refers: Vec<&str> = after
        .iter()
        .filter(|m| m.starts_with("REFER "))
        .filter_map(|m| m.lines().next())
        .collect();
    assert!(
        refers.is_empty(),
        "REFER still retransmitted after the bridge: {refers:?}\n{}",
        gw.log_tail(40)
    );
    assert!(gw.log_contains("REFER abandoned"), "{}", gw.log_tail(40));
    caller.bye(3);
    trunk.kill();
}
