//! SIP core, end to end: the real `voxgate` binary called by SIPp.
//!
//! Every test starts its own gateway on private ports (tests/common), so they run in parallel.
//! Tests named `harness_*` check the harness itself: they need SIPp but not a working gateway
//! (SIPp scenarios are played against SIPp stand-ins in tests/sipp/peers), so a broken harness
//! or scenario shows up as such and not as a gateway bug.
//!
//! Log lines the gateway is assumed to write (tracing `key=value` fields, any order):
//! - `call ended ... rtp_tx_packets=N rtp_rx_packets=M media_ms=D` once per call;
//! - `DTMF received ... digit=<d> via=<rfc4733|info>` once per digit.

mod common;

use common::*;
use std::time::Duration;

// ---------------------------------------------------------------------------------------------
// Flows written by the tests (format: docs/flows.md of the flow engine).
// ---------------------------------------------------------------------------------------------

/// Greets, then swallows every digit (no forward, no close), so DTMF tests can send `1` without
/// triggering the demo flow's forward (which would send a REFER the simple UAC scenarios do not
/// expect). Inactivity close is off.
const DTMF_SINK_FLOW: &str = r#"
name: test-dtmf-sink
start: main
inactivity_s: 0
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  main:
    - message:
        file: greeting.wav
        wait: false
    - goto: listen
  listen:
    - collect:
        max_digits: 1
        terminator: ""
        timeout_ms: 600000
        default: listen
        on_timeout: listen
"#;

/// Plays the greeting, waits, then closes the conversation (the gateway sends BYE).
fn close_after_flow(delay_ms: u64) -> String {
    format!(
        r#"
name: test-close-after
start: main
inactivity_s: 0
prompts_dir: "{{{{PROMPTS_DIR}}}}"
dialogs:
  main:
    - message:
        file: greeting.wav
        wait: false
    - delay:
        ms: {delay_ms}
    - close
"#
    )
}

/// Rings for 2 s before answering (`answer_delay_ms`), so a CANCEL can arrive first.
const RING_FIRST_FLOW: &str = r#"
name: test-ring-first
start: main
answer_delay_ms: 2000
inactivity_s: 0
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  main:
    - message:
        file: greeting.wav
    - close
"#;

/// Only the gateway's end-of-call summary carries this field (the flow engine also logs a
/// "call ended under the flow" line without it).
const CALL_END_FIELD: &str = "rtp_tx_packets";
const T5: Duration = Duration::from_secs(5);
const T10: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Harness self-tests
// ---------------------------------------------------------------------------------------------

#[test]
fn harness_sipp_is_installed() {
    let banner = require_sipp();
    assert!(
        banner.starts_with("SIPp v3."),
        "unexpected banner {banner:?}"
    );
}

#[test]
fn harness_log_field_parsing() {
    let colored = "2025-01-01T00:00:00Z \u{1b}[34mDEBUG\u{1b}[0m voxgate::call: call ended \
                   \u{1b}[3mcall_id\u{1b}[0m\u{1b}[2m=\u{1b}[0m\"a b\" \u{1b}[3mrtp_tx_packets\u{1b}[0m\
                   \u{1b}[2m=\u{1b}[0m226 rtp_rx_packets=180 reason=caller_bye media_ms=4520";
    let line = strip_ansi(colored);
    let stats = CallEndStats::parse(&line).expect("parses");
    assert_eq!(stats.rtp_tx_packets, 226);
    assert_eq!(stats.rtp_rx_packets, 180);
    assert_eq!(stats.media_ms, 4520);
    assert_eq!(field(&line, "call_id").as_deref(), Some("a b"));
    assert!((stats.tx_rate() - 50.0).abs() < 0.1);
    // duration_ms is the fallback, order does not matter, JSON works too
    let j = r#"{"message":"call ended","duration_ms":1000,"rtp_rx_packets":3,"rtp_tx_packets":50}"#;
    let s = CallEndStats::parse(j).expect("json parses");
    assert_eq!(
        (s.rtp_tx_packets, s.rtp_rx_packets, s.media_ms),
        (50, 3, 1000)
    );
    assert!(CallEndStats::parse("call started rtp_tx_packets=1").is_none());
    assert!(CallEndStats::parse("call ended media_ms=1").is_none());

    // the gateway's real lines (tracing fmt, span prefix, quoted &str fields)
    let real = "2026-11-25T14:02:49.087047Z  INFO call{call_id=1-6465@127.0.0.1}: \
                voxgate::call::session: DTMF received digit=# via=\"rfc4733\" duration_ms=280";
    let d = DtmfLog::parse(real).unwrap();
    assert_eq!((d.digit.as_str(), d.via.as_deref()), ("#", Some("rfc4733")));
    let real = "2026-11-25T14:02:49.551697Z  INFO call{call_id=1-6465@127.0.0.1}: \
                voxgate::call::session: call ended reason=caller_hangup rtp_tx_packets=237 \
                rtp_rx_packets=180 rtp_lost=0 media_ms=4726 dtmf=3";
    let s = CallEndStats::parse(real).unwrap();
    assert_eq!(
        (s.rtp_tx_packets, s.rtp_rx_packets, s.media_ms),
        (237, 180, 4726)
    );
    assert!(
        CallEndStats::parse("INFO voxgate::flow::machine: call ended under the flow").is_none()
    );
    let d = DtmfLog::parse("INFO voxgate: DTMF received digit='#' via=rfc4733 call_id=x").unwrap();
    assert_eq!((d.digit.as_str(), d.via.as_deref()), ("#", Some("rfc4733")));
    let d = DtmfLog::parse("DEBUG voxgate::media::dtmf: DTMF received digit=1 duration_ms=100");
    assert_eq!(d.unwrap().via, None);
    // a longer name ending in the key is not the key
    assert_eq!(field("last_digit=4 digit=5", "digit").as_deref(), Some("5"));
    assert_eq!(field("xdigit=4", "digit"), None);
    let logs: Vec<DtmfLog> = [
        "DTMF received digit=1 via=info",
        "DTMF received digit=1",
        "DTMF received via=rfc4733 digit=2",
    ]
    .iter()
    .filter_map(|l| DtmfLog::parse(l))
    .collect();
    assert_eq!(dtmf_digits_via(&logs, "info"), ["1"]);
    assert_eq!(dtmf_digits_via(&logs, "rfc4733"), ["2"]);
}

#[test]
fn harness_http_parsing() {
    let r = parse_http_response(
        b"HTTP/1.1 206 Partial Content\r\nContent-Length: 3\r\nETag: \"x\"\r\n\r\nabcdef",
        false,
    )
    .unwrap();
    assert_eq!(r.status, 206);
    assert_eq!(r.body, b"abc");
    assert_eq!(r.header("etag"), Some("\"x\""));
    let r = parse_http_response(
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n",
        false,
    )
    .unwrap();
    assert_eq!(r.json()["a"], 1);
    let r = parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true).unwrap();
    assert!(r.body.is_empty());
    assert!(parse_http_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab", false).is_err());
    assert!(parse_http_response(b"garbage", false).is_err());
}

#[test]
fn harness_http_client_roundtrip() {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 512];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut chunk).unwrap();
            buf.extend_from_slice(&chunk[..n]);
        }
        s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .unwrap();
        String::from_utf8(buf).unwrap()
    });
    let r = http_request(
        addr,
        "GET",
        "/v1/calls",
        &[("Authorization", "Bearer test-token")],
        T5,
    )
    .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "ok"));
    let req = server.join().unwrap();
    assert!(req.starts_with("GET /v1/calls HTTP/1.1\r\n"), "{req}");
    assert!(
        req.contains("Authorization: Bearer test-token\r\n"),
        "{req}"
    );
}

#[test]
fn harness_ports_do_not_collide() {
    let a = free_rtp_range();
    let b = free_rtp_range();
    assert_eq!(a.1 - a.0 + 1, RTP_RANGE_LEN);
    assert!(a.1 < b.0 || b.1 < a.0, "{a:?} overlaps {b:?}");
    assert!(a.0 >= 30000 && a.1 <= 60000);
    let m = free_media_port();
    assert_eq!(m % 2, 0);
    assert!(std::net::UdpSocket::bind(("127.0.0.1", m + 2)).is_ok());
    let ports: Vec<u16> = (0..20).map(|_| free_port()).collect();
    let mut dedup = ports.clone();
    dedup.sort_unstable();
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        ports.len(),
        "duplicate ports handed out: {ports:?}"
    );
    for p in ports {
        assert!(!(a.0..=a.1).contains(&p) && !(b.0..=b.1).contains(&p));
    }
}

#[test]
fn harness_config_overrides_merge() {
    let gw = Gateway::builder()
        .toml("[sip]\nmax_calls = 1\n[transfer]\nmode = \"bridge\"")
        .toml("shutdown_grace_s = 2")
        .prepare();
    let cfg: toml::Table = gw.config_text.parse().unwrap();
    assert_eq!(cfg["sip"]["max_calls"].as_integer(), Some(1));
    assert_eq!(
        cfg["sip"]["listen"].as_str(),
        Some(format!("127.0.0.1:{}", gw.sip_port).as_str())
    );
    assert_eq!(cfg["transfer"]["mode"].as_str(), Some("bridge"));
    assert_eq!(
        cfg["transfer"]["trunk"].as_str(),
        Some(format!("sip:127.0.0.1:{}", gw.trunk_port).as_str())
    );
    assert_eq!(cfg["shutdown_grace_s"].as_integer(), Some(2));
    assert_eq!(cfg["http"]["token"].as_str(), Some(TOKEN));
    let flow = cfg["flow"]["file"].as_str().unwrap();
    assert!(flow.ends_with("sip-config/flows/demo.yaml"), "{flow}");
    assert!(std::path::Path::new(flow).is_absolute());
    let rec = cfg["recordings"]["dir"].as_str().unwrap();
    assert!(rec.starts_with(gw.dir().to_str().unwrap()), "{rec}");

    let gw = Gateway::builder().flow_yaml(DTMF_SINK_FLOW).prepare();
    let cfg: toml::Table = gw.config_text.parse().unwrap();
    let flow = std::fs::read_to_string(cfg["flow"]["file"].as_str().unwrap()).unwrap();
    assert!(flow.contains(&format!("prompts_dir: \"{}\"", prompts_dir().display())));
    assert!(!flow.contains("{{"));
}

/// Not a test on its own: when `VOXGATE_TEST_CONFIG` is set, this test binary plays a minimal
/// gateway (binds the SIP UDP+TCP port, serves `/healthz` and a token-checked `/v1/calls`,
/// logs a `call ended` line) so `harness_gateway_lifecycle` can check the fixture without the
/// real gateway. Without the variable it returns at once.
#[test]
fn harness_fake_gateway_process() {
    let Ok(path) = std::env::var("VOXGATE_TEST_CONFIG") else {
        return;
    };
    use std::io::{Read, Write};
    let cfg: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
    let sip = cfg["sip"]["listen"].as_str().unwrap().to_string();
    let http = cfg["http"]["listen"].as_str().unwrap().to_string();
    let token = format!("Bearer {}", cfg["http"]["token"].as_str().unwrap());
    let _udp = std::net::UdpSocket::bind(&sip).unwrap();
    let _tcp = std::net::TcpListener::bind(&sip).unwrap();
    let listener = std::net::TcpListener::bind(&http).unwrap();
    println!("fake gateway ready pid={}", std::process::id());
    eprintln!("INFO call ended call_id=x rtp_tx_packets=50 rtp_rx_packets=49 media_ms=1000");
    for conn in listener.incoming() {
        let Ok(mut s) = conn else { continue };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let req = String::from_utf8_lossy(&buf).to_string();
        let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
        let (status, body) = if path == "/healthz" {
            ("200 OK", "ok".to_string())
        } else if !req.contains(&format!("Authorization: {token}\r\n")) {
            ("401 Unauthorized", String::new())
        } else {
            ("200 OK", r#"{"calls":[]}"#.to_string())
        };
        let _ = write!(
            s,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}

#[test]
fn harness_gateway_lifecycle() {
    let exe = std::env::current_exe().unwrap();
    let args = [
        "harness_fake_gateway_process",
        "--exact",
        "--nocapture",
        "--test-threads=1",
    ];
    let mut gw = Gateway::builder().program(exe, &args).start();
    assert!(gw.is_running());
    assert!(gw.log_contains("fake gateway ready"));
    assert_eq!(gw.udp_bound(), Some(true));
    let r = gw.get("/v1/calls").unwrap();
    assert_eq!(
        (r.status, r.json()["calls"].as_array().map(Vec::len)),
        (200, Some(0))
    );
    assert_eq!(gw.get_noauth("/v1/calls").unwrap().status, 401);
    let end = gw.call_end_stats();
    assert_eq!(end.len(), 1);
    assert_eq!(end[0].rtp_tx_packets, 50);
    let first_pid = gw.pid().unwrap();

    // crash + restart with the same config and ports
    gw.kill9();
    assert!(!gw.is_running());
    gw.restart();
    assert_ne!(gw.pid().unwrap(), first_pid);
    assert_eq!(gw.get_noauth("/healthz").unwrap().status, 200);
    assert!(gw.log_contains("=== harness: start #2 ==="));
    let current = gw.log_text_current_run();
    assert!(!current.contains(&format!("pid={first_pid}")), "{current}");
    assert!(current.contains(&format!("pid={}", gw.pid().unwrap())));
    assert_eq!(gw.call_end_stats().len(), 2);
    assert!(gw.wait_for_log_count("fake gateway ready", 2, T5));
    assert!(!gw.wait_for_log("never logged", Duration::from_millis(200)));

    // SIGTERM: the stand-in does not catch it, so it dies of the signal
    gw.terminate();
    let status = gw.wait_exit(T5);
    assert!(!status.success());
    assert!(!gw.is_running());
}

/// Plays `uac` against the SIPp stand-in `uas` (both UDP, or both TCP).
fn selftest(uac: &str, uas: &str, uas_keys: &[(&str, &str)], tcp: bool) -> SippOutcome {
    require_sipp();
    let mut peer = Sipp::uas(uas, free_port()).timeout_s(30).arg("-rtp_echo");
    for (k, v) in uas_keys {
        peer = peer.key(k, v);
    }
    if tcp {
        peer = peer.tcp();
    }
    let mut peer = peer.spawn();
    peer.wait_listening(T5);
    let mut caller = Sipp::uac(uac, peer.addr()).timeout_s(30);
    if tcp {
        caller = caller.tcp();
    }
    let out = caller.run();
    let peer_out = peer.wait();
    peer_out.assert_success();
    out
}

const PCMU: [(&str, &str); 2] = [("answer_pt", "0"), ("answer_name", "PCMU")];
const PCMA: [(&str, &str); 2] = [("answer_pt", "8"), ("answer_name", "PCMA")];

#[test]
fn harness_scenario_basic_against_stand_in() {
    let out = selftest("uac_basic.xml", "peers/uas_answer.xml", &PCMA, false);
    out.assert_success();
    assert!(out.logs.contains("RTP/AVP 8"), "{}", out.report());
}

#[test]
fn harness_scenario_info_dtmf_against_stand_in() {
    let out = selftest(
        "uac_info_dtmf.xml",
        "peers/uas_answer_info.xml",
        &PCMU,
        false,
    );
    out.assert_success();
    assert_eq!(
        out.messages.matches("Signal=").count(),
        3,
        "{}",
        out.report()
    );
}

#[test]
fn harness_scenario_short_tcp_against_stand_in() {
    let out = selftest("uac_short.xml", "peers/uas_answer.xml", &PCMU, true);
    out.assert_success();
    assert!(out.messages.contains("SIP/2.0/TCP"), "{}", out.report());
}

#[test]
fn harness_scenario_cancel_against_stand_in() {
    selftest("uac_cancel.xml", "peers/uas_ring_no_answer.xml", &[], false).assert_success();
}

#[test]
fn harness_scenario_options_against_stand_in() {
    selftest("uac_options.xml", "peers/uas_options.xml", &[], false).assert_success();
}

#[test]
fn harness_scenario_503_against_stand_in() {
    selftest("uac_busy_503.xml", "peers/uas_503.xml", &[], false).assert_success();
    selftest("uac_invite_503.xml", "peers/uas_503.xml", &[], false).assert_success();
}

#[test]
fn harness_scenario_unknown_method_against_stand_in() {
    selftest("uac_unknown_method.xml", "peers/uas_501.xml", &[], false).assert_success();
}

#[test]
fn harness_scenario_remote_bye_against_stand_in() {
    let out = selftest("uac_remote_bye.xml", "peers/uas_bye.xml", &[], false);
    out.assert_success();
    assert!(out.logs.contains("BYE received"), "{}", out.report());
}

/// The harness must report failure: a UAC calling nobody times out and exits non-zero.
#[test]
fn harness_reports_sipp_failure() {
    require_sipp();
    let nobody = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let out = Sipp::uac("uac_options.xml", nobody).timeout_s(2).run();
    assert!(
        !out.success(),
        "SIPp calling nobody succeeded?\n{}",
        out.report()
    );
    assert!(
        out.code.is_some(),
        "SIPp did not exit by itself\n{}",
        out.report()
    );
}

// ---------------------------------------------------------------------------------------------
// Gateway tests
// ---------------------------------------------------------------------------------------------

/// The single `call ended` summary of a one-call test (waits for it to be logged).
fn the_call_end(gw: &Gateway) -> CallEndStats {
    assert!(
        gw.wait_for_log(CALL_END_FIELD, T10),
        "no `call ended ... {CALL_END_FIELD}=` line\n{}",
        gw.log_tail(80)
    );
    // The summary fields may be logged a moment after the line is first seen; re-read once.
    std::thread::sleep(Duration::from_millis(100));
    let ends = gw.call_end_stats();
    assert_eq!(
        ends.len(),
        1,
        "expected one parsable `call ended ... rtp_tx_packets= rtp_rx_packets= media_ms=` line, \
         got {ends:?}\n{}",
        gw.log_tail(80)
    );
    ends[0].clone()
}

#[test]
fn basic_call_with_media_and_rfc4733() {
    require_sipp();
    let gw = Gateway::builder().flow_yaml(DTMF_SINK_FLOW).start();
    let out = Sipp::uac("uac_basic.xml", gw.sip_addr()).run();
    out.assert_success();

    // The gateway's RTP must reach the caller at ~50 packets/s for the whole call.
    let end = the_call_end(&gw);
    let secs = end.media_ms as f64 / 1000.0;
    assert!(
        secs > 4.0 && secs < 10.0,
        "media time {secs} s is off for a ~5 s call: {}",
        end.line
    );
    let expected = 50.0 * secs;
    assert!(
        (end.rtp_tx_packets as f64 - expected).abs() <= 3.0 * secs + 2.0,
        "gateway sent {} RTP packets in {secs:.2} s ({:.1}/s), want 50±3/s: {}",
        end.rtp_tx_packets,
        end.tx_rate(),
        end.line
    );
    // SIPp sent 150 speech packets (3 s) plus 3 DTMF events.
    assert!(
        end.rtp_rx_packets >= 150,
        "gateway received only {} RTP packets: {}",
        end.rtp_rx_packets,
        end.line
    );
}

#[test]
fn caller_bye_ends_the_call() {
    require_sipp();
    let gw = Gateway::start_default();
    let out = Sipp::uac("uac_short.xml", gw.sip_addr()).run();
    out.assert_success();
    let end = the_call_end(&gw);
    assert!(end.rtp_rx_packets >= 90, "{}", end.line);
    // The call is gone from the registry.
    let deadline = std::time::Instant::now() + T5;
    loop {
        let r = gw.get("/v1/calls").expect("GET /v1/calls");
        assert_eq!(r.status, 200, "{}", r.text());
        let calls = r.json()["calls"].as_array().map(Vec::len);
        if calls == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "call still listed after BYE: {}",
            r.text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn cancel_before_answer_gets_487() {
    require_sipp();
    let mut gw = Gateway::builder().flow_yaml(RING_FIRST_FLOW).start();
    let out = Sipp::uac("uac_cancel.xml", gw.sip_addr()).run();
    out.assert_success();
    assert!(out.messages.contains("SIP/2.0 487"), "{}", out.report());
    assert!(gw.is_running(), "gateway died\n{}", gw.log_tail(40));
}

#[test]
fn options_answered_with_allow() {
    require_sipp();
    let gw = Gateway::start_default();
    Sipp::uac("uac_options.xml", gw.sip_addr())
        .run()
        .assert_success();
}

#[test]
fn info_dtmf_is_received() {
    require_sipp();
    let gw = Gateway::builder().flow_yaml(DTMF_SINK_FLOW).start();
    Sipp::uac("uac_info_dtmf.xml", gw.sip_addr())
        .run()
        .assert_success();
    gw.wait_for_log(CALL_END_FIELD, T10);
    let digits = dtmf_digits_via(&gw.dtmf_logs(), "info");
    assert_eq!(
        digits,
        ["1", "2", "#"],
        "want `DTMF received digit=<d> via=info` once per INFO\n{}",
        gw.log_tail(80)
    );
}

#[test]
fn rfc4733_dtmf_each_digit_once() {
    require_sipp();
    let gw = Gateway::builder().flow_yaml(DTMF_SINK_FLOW).start();
    Sipp::uac("uac_basic.xml", gw.sip_addr())
        .run()
        .assert_success();
    gw.wait_for_log(CALL_END_FIELD, T10);
    // SIPp's pcaps carry 3 end packets per event: each digit must still be reported once.
    let digits = dtmf_digits_via(&gw.dtmf_logs(), "rfc4733");
    assert_eq!(
        digits,
        ["1", "2", "#"],
        "want `DTMF received digit=<d> via=rfc4733` exactly once per digit\n{}",
        gw.log_tail(80)
    );
}

#[test]
fn over_capacity_gets_503_with_retry_after() {
    require_sipp();
    let gw = Gateway::builder()
        .flow_yaml(&close_after_flow(6000))
        .toml("[sip]\nmax_calls = 1")
        .start();
    // One call occupies the only slot; the flow hangs it up after ~6 s.
    let mut first = Sipp::uac("uac_remote_bye.xml", gw.sip_addr()).spawn();
    assert!(
        first.wait_for_message("ACK sip:", T10),
        "first call not established\n{}",
        first.messages_so_far()
    );
    let busy = Sipp::uac("uac_busy_503.xml", gw.sip_addr())
        .timeout_s(15)
        .run();
    busy.assert_success();
    assert!(busy.logs.contains("Retry-After: "), "{}", busy.report());
    let first = first.wait();
    first.assert_success();
    // The slot is free again once the first call ended.
    assert!(gw.wait_for_log(CALL_END_FIELD, T10), "{}", gw.log_tail(60));
    Sipp::uac("uac_short.xml", gw.sip_addr())
        .run()
        .assert_success();
}

#[test]
fn unknown_method_gets_501() {
    require_sipp();
    let gw = Gateway::start_default();
    Sipp::uac("uac_unknown_method.xml", gw.sip_addr())
        .run()
        .assert_success();
}

#[test]
fn garbage_datagrams_are_ignored() {
    require_sipp();
    let mut gw = Gateway::start_default();
    let junk: [&[u8]; 6] = [
        b"\x00\xff\x13\x37garbage\x80\x81",
        b"\r\n\r\n",
        b"INVITE sip:bot@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP broken\r\nContent-Length: 99999\r\n\r\nx",
        b"SIP/2.0 200 OK\r\n\r\n",
        b"OPTIONS  SIP/2.0\r\nCall-ID:\r\n\r\n",
        &[0xffu8; 4000],
    ];
    for j in junk {
        send_udp(gw.sip_addr(), j).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        gw.is_running(),
        "gateway died on garbage\n{}",
        gw.log_tail(40)
    );
    Sipp::uac("uac_short.xml", gw.sip_addr())
        .run()
        .assert_success();
    assert!(gw.is_running());
}

#[test]
fn invite_over_tcp_completes() {
    require_sipp();
    let gw = Gateway::start_default();
    let out = Sipp::uac("uac_short.xml", gw.sip_addr()).tcp().run();
    out.assert_success();
    assert!(out.messages.contains("SIP/2.0/TCP"), "{}", out.report());
}

#[test]
fn flow_close_sends_bye() {
    require_sipp();
    let gw = Gateway::builder()
        .flow_yaml(&close_after_flow(2000))
        .start();
    let started = std::time::Instant::now();
    let out = Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(30)
        .run();
    out.assert_success();
    assert!(out.logs.contains("BYE received"), "{}", out.report());
    assert!(!out.logs.contains("REFER received"), "{}", out.report());
    // ~2 s of flow + greeting + SIPp's 2 s timewait; a BYE only at SIPp's 60 s limit is wrong.
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "BYE came late: {:?}",
        started.elapsed()
    );
}
