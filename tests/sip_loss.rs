//! SIP under packet loss (issue 12): the gateway and a SIPp caller in two network namespaces the
//! test creates, joined by a veth pair, with nftables dropping N % of the SIP datagrams in both
//! directions (this kernel has no netem). Every call must complete: retransmissions (Timer A/E/G
//! on both sides) carry the dialog through. Needs root; otherwise it says so and skips.

mod common;

use common::*;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn sh(args: &[&str]) -> bool {
    Command::new(args[0])
        .args(&args[1..])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Two namespaces joined by a veth pair; removed on drop.
struct Net {
    a: String,
    b: String,
    ip_a: String,
    ip_b: String,
}

impl Net {
    fn new(tag: u8) -> Option<Net> {
        let id = std::process::id() % 10_000;
        let net = Net {
            a: format!("vgl{id}a{tag}"),
            b: format!("vgl{id}b{tag}"),
            ip_a: format!("10.213.{tag}.1"),
            ip_b: format!("10.213.{tag}.2"),
        };
        let va = format!("vl{id}a{tag}");
        let vb = format!("vl{id}b{tag}");
        let ok = sh(&["ip", "netns", "add", &net.a])
            && sh(&["ip", "netns", "add", &net.b])
            && sh(&[
                "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
            ])
            && sh(&["ip", "link", "set", &va, "netns", &net.a])
            && sh(&["ip", "link", "set", &vb, "netns", &net.b])
            && sh(&[
                "ip",
                "-n",
                &net.a,
                "addr",
                "add",
                &format!("{}/24", net.ip_a),
                "dev",
                &va,
            ])
            && sh(&[
                "ip",
                "-n",
                &net.b,
                "addr",
                "add",
                &format!("{}/24", net.ip_b),
                "dev",
                &vb,
            ])
            && sh(&["ip", "-n", &net.a, "link", "set", &va, "up"])
            && sh(&["ip", "-n", &net.b, "link", "set", &vb, "up"])
            && sh(&["ip", "-n", &net.a, "link", "set", "lo", "up"])
            && sh(&["ip", "-n", &net.b, "link", "set", "lo", "up"]);
        ok.then_some(net)
    }

    /// Loads an nftables ruleset into namespace `ns`.
    fn nft(&self, ns: &str, rules: &str) -> bool {
        let file = std::env::temp_dir().join(format!("vgloss-{}-{ns}.nft", std::process::id()));
        std::fs::write(&file, rules).is_ok()
            && sh(&[
                "ip",
                "netns",
                "exec",
                ns,
                "nft",
                "-f",
                &file.display().to_string(),
            ])
    }

    /// Loses `percent` % of the SIP datagrams on the wire, both ways: each namespace drops them
    /// as they arrive (its input hook). Dropping in the sender's output hook instead would make
    /// `sendto` fail with EPERM, which real loss never does (that case has its own test).
    fn drop_sip(&self, port: u16, percent: u32) -> bool {
        let into_gateway = format!(
            "table inet vgloss {{\n\
             chain in {{ type filter hook input priority 0; udp dport {port} numgen random mod 100 < {percent} counter drop; }}\n\
             }}\n"
        );
        let into_caller = format!(
            "table inet vgloss {{\n\
             chain in {{ type filter hook input priority 0; udp sport {port} numgen random mod 100 < {percent} counter drop; }}\n\
             }}\n"
        );
        self.nft(&self.a, &into_gateway) && self.nft(&self.b, &into_caller)
    }

    /// Makes the gateway's own sends of SIP datagrams longer than `bytes` fail (a local firewall
    /// refusing them: `sendto` returns EPERM).
    fn refuse_large_sends(&self, port: u16, bytes: u32) -> bool {
        let rules = format!(
            "table inet vgloss {{\n\
             chain out {{ type filter hook output priority 0; udp sport {port} meta length > {bytes} counter drop; }}\n\
             }}\n"
        );
        self.nft(&self.a, &rules)
    }

    fn dropped(&self) -> String {
        [&self.a, &self.b]
            .iter()
            .map(|ns| {
                Command::new("ip")
                    .args([
                        "netns", "exec", ns, "nft", "list", "table", "inet", "vgloss",
                    ])
                    .output()
                    .map(|o| {
                        String::from_utf8_lossy(&o.stdout)
                            .lines()
                            .filter(|l| l.contains("counter"))
                            .map(|l| format!("{ns}: {}", l.trim()))
                            .collect::<Vec<_>>()
                            .join("; ")
                    })
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        sh(&["ip", "netns", "del", &self.a]);
        sh(&["ip", "netns", "del", &self.b]);
    }
}

fn can_run() -> bool {
    if !is_root() {
        eprintln!("skipped: creating network namespaces needs root");
        return false;
    }
    if !sh(&["nft", "--version"]) {
        panic!("nftables (nft) is not installed; scripts/test.sh installs it");
    }
    true
}

const SIP_PORT: u16 = 5060;

/// The gateway, listening on the first namespace's address.
fn gateway_in(net: &Net, sip_toml: &str) -> Gateway {
    let gw = Gateway::builder()
        .toml(&format!(
            "[sip]\nlisten = \"{}:{SIP_PORT}\"\ninvite_rate_per_source = 0.0\nmax_unconfirmed_per_source = 100\n{sip_toml}",
            net.ip_a
        ))
        .flow_yaml(
            r#"
name: test-loss
start: main
inactivity_s: 0
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  main:
    - message: {file: greeting.wav, wait: false}
    - collect: {max_digits: 1, terminator: "", timeout_ms: 600000, default: main, on_timeout: main}
"#,
        )
        .program(
            "sh".into(),
            &[
                "-c",
                &format!(
                    "exec ip netns exec {} {} --config \"$VOXGATE_TEST_CONFIG\"",
                    net.a,
                    gateway_bin().display()
                ),
            ],
        )
        .spawn_only();
    assert!(
        gw.wait_for_log("voxgate ready", Duration::from_secs(30)),
        "{}",
        gw.log_tail(30)
    );
    gw
}

/// Runs SIPp in the second namespace; returns (successful, failed, stdout).
fn sipp_in(net: &Net, scenario: &str, calls: u32, tag: u8) -> (u32, u32, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", &net.b, &sipp_bin()])
        .arg(format!("{}:{SIP_PORT}", net.ip_a))
        .args(["-sf", scenario, "-i", &net.ip_b, "-mi", &net.ip_b])
        .args(["-m", &calls.to_string(), "-r", "5", "-l", "20"])
        .args([
            "-nostdin",
            "-timeout",
            "180s",
            "-timeout_error",
            "-recv_timeout",
            "40000",
        ])
        .args([
            "-trace_err",
            "-error_file",
            &std::env::temp_dir()
                .join(format!("vgloss-{tag}.err"))
                .display()
                .to_string(),
        ])
        .current_dir(sipp_dir())
        .output()
        .expect("run sipp");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let count = |label: &str| -> u32 {
        text.lines()
            .find(|l| l.trim_start().starts_with(label))
            .and_then(|l| l.split('|').nth(2))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    (count("Successful call"), count("Failed call"), text)
}

/// `calls` short calls through `percent` % SIP loss; returns (successful, failed) per SIPp.
fn calls_through_loss(tag: u8, percent: u32, calls: u32) -> Option<(u32, u32)> {
    if !can_run() {
        return None;
    }
    let net = Net::new(tag).expect("create namespaces and veth");
    let mut gw = gateway_in(&net, "");
    assert!(net.drop_sip(SIP_PORT, percent), "nft rules");
    let started = Instant::now();
    let (ok, failed, _) = sipp_in(&net, "uac_short.xml", calls, tag);
    eprintln!(
        "{percent}% SIP loss: {ok}/{calls} calls completed, {failed} failed, in {:.1} s; dropped: {}",
        started.elapsed().as_secs_f64(),
        net.dropped()
    );
    let ended = gw.log_count("call ended reason=");
    eprintln!("gateway: {ended} calls ended");
    if ok != calls {
        eprintln!("{}", gw.log_tail(80));
    }
    gw.kill9();
    Some((ok, failed))
}

#[test]
fn five_percent_sip_loss_every_call_completes() {
    if let Some((ok, failed)) = calls_through_loss(51, 5, 50) {
        assert_eq!((ok, failed), (50, 0));
    }
}

#[test]
fn twenty_percent_sip_loss_every_call_completes() {
    if let Some((ok, failed)) = calls_through_loss(52, 20, 30) {
        assert_eq!((ok, failed), (30, 0));
    }
}

/// A 2xx whose send fails (EPERM from a local firewall here; ENOBUFS under load) is never
/// retransmitted and never times out in the SIP stack. The call's own ACK deadline (64*T1 + T2)
/// must still end it: a BYE to the caller, the CDR's `no_ack`, and the slot freed.
#[test]
fn a_2xx_that_cannot_be_sent_still_ends_the_call_with_a_bye() {
    if !can_run() {
        return;
    }
    let net = Net::new(53).expect("create namespaces and veth");
    // T1 = 100 ms: the deadline is 6.4 s + 4 s.
    let mut gw = gateway_in(&net, "t1_ms = 100\n");
    // The 200 OK with its SDP is ~680 bytes; the 100 Trying and the BYE are under 400.
    assert!(net.refuse_large_sends(SIP_PORT, 550), "nft rules");
    let started = Instant::now();
    let (ok, failed, text) = sipp_in(&net, "uac_no_200.xml", 1, 53);
    let took = started.elapsed().as_secs_f64();
    eprintln!(
        "no-200 call: ok={ok} failed={failed} in {took:.1} s; {}",
        net.dropped()
    );
    assert_eq!(
        (ok, failed),
        (1, 0),
        "the caller never got a BYE:\n{text}\n{}",
        gw.log_tail(40)
    );
    assert!(
        gw.wait_for_log("reason=no_ack", Duration::from_secs(5)),
        "{}",
        gw.log_tail(40)
    );
    assert!(
        gw.log_contains("no ACK for our 2xx"),
        "the call's own deadline should have ended it:\n{}",
        gw.log_tail(40)
    );
    gw.kill9();
}
