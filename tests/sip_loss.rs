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

    /// Drops `percent` % of SIP datagrams (to and from `port`) in the gateway's namespace.
    fn drop_sip(&self, port: u16, percent: u32) -> bool {
        let rules = format!(
            "table inet vgloss {{\n\
             chain in {{ type filter hook input priority 0; udp dport {port} numgen random mod 100 < {percent} counter drop; }}\n\
             chain out {{ type filter hook output priority 0; udp sport {port} numgen random mod 100 < {percent} counter drop; }}\n\
             }}\n"
        );
        let file = std::env::temp_dir().join(format!("vgloss-{}-{port}.nft", std::process::id()));
        std::fs::write(&file, rules).is_ok()
            && sh(&[
                "ip",
                "netns",
                "exec",
                &self.a,
                "nft",
                "-f",
                &file.display().to_string(),
            ])
    }

    fn dropped(&self) -> String {
        Command::new("ip")
            .args([
                "netns", "exec", &self.a, "nft", "list", "table", "inet", "vgloss",
            ])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.contains("counter"))
                    .map(|l| l.trim().to_string())
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        sh(&["ip", "netns", "del", &self.a]);
        sh(&["ip", "netns", "del", &self.b]);
    }
}

/// `calls` short calls through `percent` % SIP loss; returns (successful, failed) per SIPp.
fn calls_through_loss(tag: u8, percent: u32, calls: u32) -> Option<(u32, u32)> {
    if !is_root() {
        eprintln!("skipped: creating network namespaces needs root");
        return None;
    }
    if !sh(&["nft", "--version"]) {
        panic!("nftables (nft) is not installed; scripts/test.sh installs it");
    }
    let net = Net::new(tag).expect("create namespaces and veth");
    let sip_port = 5060;
    let mut gw = Gateway::builder()
        .toml(&format!(
            "[sip]\nlisten = \"{}:{sip_port}\"\ninvite_rate_per_source = 0.0\nmax_unconfirmed_per_source = 100\n",
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
    assert!(net.drop_sip(sip_port, percent), "nft rules");
    let started = Instant::now();
    let out = Command::new("ip")
        .args(["netns", "exec", &net.b, &sipp_bin()])
        .arg(format!("{}:{sip_port}", net.ip_a))
        .args(["-sf", "uac_short.xml", "-i", &net.ip_b, "-mi", &net.ip_b])
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
    let ok = count("Successful call");
    let failed = count("Failed call");
    eprintln!(
        "{percent}% SIP loss: {ok}/{calls} calls completed, {failed} failed, in {:.1} s; dropped: {}",
        started.elapsed().as_secs_f64(),
        net.dropped()
    );
    let ended = gw.log_count("call ended");
    eprintln!("gateway: {ended} calls ended");
    gw.kill9();
    Some((ok, failed))
}

#[test]
#[ignore = "open (issue 12 follow-up): 1-4 calls in 50 get no final response to their INVITE within SIPp's 40 s receive timeout (46/50 measured); SIPp's CANCEL then gets 200 and 487, so the INVITE transaction exists but its 200 never reached SIPp; run with --ignored"]
fn five_percent_sip_loss_every_call_completes() {
    if let Some((ok, failed)) = calls_through_loss(51, 5, 50) {
        assert_eq!((ok, failed), (50, 0));
    }
}

#[test]
#[ignore = "open: see five_percent_sip_loss_every_call_completes; run with --ignored"]
fn twenty_percent_sip_loss_every_call_completes() {
    if let Some((ok, failed)) = calls_through_loss(52, 20, 30) {
        assert_eq!((ok, failed), (30, 0));
    }
}
