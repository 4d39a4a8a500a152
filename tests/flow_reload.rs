//! Operator controls on the embedded engine: SIGHUP reloads the flow file without dropping
//! calls (running calls keep their version, a broken file keeps the old one), and the HTTP
//! API pauses and resumes a call's bot.

mod common;

use common::peer::*;
use common::*;
use std::time::Duration;

const AUTH: &[(&str, &str)] = &[("Authorization", "Bearer test-token")];

fn flow(tag: &str) -> String {
    format!(
        r#"
name: reload-{tag}
start: main
inactivity_s: 0
prompts_dir: "{{{{PROMPTS_DIR}}}}"
dialogs:
  main:
    - collect:
        max_digits: 1
        terminator: ""
        timeout_ms: 600000
        variable: digit
        default: seen
        on_timeout: main
  seen:
    - track_event: {{name: {tag}, properties: {{digit: digit}}}}
    - goto: main
"#
    )
}

fn events_named(gw: &Gateway, name: &str) -> Vec<serde_json::Value> {
    let r = gw
        .get(&format!("/v1/events?name={name}"))
        .expect("GET /v1/events");
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()["events"].as_array().cloned().unwrap_or_default()
}

fn wait_events(gw: &Gateway, name: &str, n: usize) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ev = events_named(gw, name);
        if ev.len() >= n || std::time::Instant::now() > deadline {
            return ev;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sighup(gw: &Gateway) {
    let pid = gw.pid().expect("gateway pid");
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

#[test]
fn sighup_reloads_the_flow_and_running_calls_keep_their_version() {
    let gw = Gateway::builder().flow_yaml(&flow("flow_a")).start();
    let flow_file = gw.dir().join("flow.yaml");
    assert!(
        flow_file.exists(),
        "harness writes the flow to {flow_file:?}"
    );

    let mut first = Peer::new(gw.sip_addr());
    first.call();

    // New flow on disk, then SIGHUP.
    let text = std::fs::read_to_string(&flow_file)
        .unwrap()
        .replace("flow_a", "flow_b");
    std::fs::write(&flow_file, text).unwrap();
    sighup(&gw);
    assert!(
        gw.wait_for_log("flow reloaded", Duration::from_secs(5)),
        "{}",
        gw.log_tail(20)
    );

    // The call that was already up still runs flow A.
    first.info_digit(2, '4');
    let a = wait_events(&gw, "flow_a", 1);
    assert_eq!(a.len(), 1, "old call should keep flow A");
    assert_eq!(a[0]["call_id"], first.call_id.as_str());
    assert_eq!(a[0]["properties"]["digit"], "4");

    // A new call gets flow B.
    let mut second = Peer::new(gw.sip_addr());
    second.call();
    second.info_digit(2, '7');
    let b = wait_events(&gw, "flow_b", 1);
    assert_eq!(b.len(), 1, "new call should run flow B");
    assert_eq!(b[0]["call_id"], second.call_id.as_str());

    // A broken file is refused and the running flow stays.
    std::fs::write(&flow_file, "name: broken\nstart: nowhere\ndialogs: {}\n").unwrap();
    sighup(&gw);
    assert!(
        gw.wait_for_log("flow reload failed", Duration::from_secs(5)),
        "{}",
        gw.log_tail(20)
    );
    let mut third = Peer::new(gw.sip_addr());
    third.call();
    third.info_digit(2, '9');
    assert_eq!(
        wait_events(&gw, "flow_b", 2).len(),
        2,
        "flow B must still be in force"
    );
    for p in [&mut first, &mut second, &mut third] {
        p.bye(3);
    }
    assert!(gw.wait_for_log_count("reason=caller_hangup", 3, Duration::from_secs(5)));
}

#[test]
fn api_pauses_and_resumes_the_bot() {
    let gw = Gateway::builder().flow_yaml(&flow("paused")).start();
    let mut peer = Peer::new(gw.sip_addr());
    peer.call();
    let id = peer.call_id.clone();

    let r = gw
        .request("POST", &format!("/v1/calls/{id}/pause"), AUTH)
        .expect("pause");
    assert!(
        r.status == 204 || r.status == 200,
        "pause: {} {}",
        r.status,
        r.text()
    );
    assert!(gw.wait_for_log("Pause", Duration::from_secs(2)));
    let calls = gw.get("/v1/calls").unwrap().json();
    assert_eq!(calls["calls"][0]["paused"], true, "{calls}");

    peer.info_digit(2, '1');
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        events_named(&gw, "paused").is_empty(),
        "a paused bot must ignore input"
    );

    let r = gw
        .request("POST", &format!("/v1/calls/{id}/resume"), AUTH)
        .expect("resume");
    assert!(r.status == 204 || r.status == 200, "resume: {}", r.status);
    peer.info_digit(3, '2');
    let ev = wait_events(&gw, "paused", 1);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["properties"]["digit"], "2");

    let r = gw
        .request("POST", "/v1/calls/no-such-call/pause", AUTH)
        .unwrap();
    assert_eq!(r.status, 404);
    peer.bye(4);
}
