//! Integration-test harness: runs the REAL `voxgate` binary on private ports and drives it with
//! SIPp (Debian package `sip-tester`).
//!
//! Why a real process and real SIPp: the unit tests already cover the IO-free state machines;
//! these tests catch what only shows up on the wire (transport quirks, timing, wiring between
//! modules, start-up and shutdown). Every test gets its own gateway, ports and temp dir so tests
//! can run in parallel.
//!
//! Pieces:
//! - [`Gateway`] / [`GatewayBuilder`]: temp config dir, free ports, spawn, health wait, logs,
//!   signals, restart, and a tiny HTTP/1.1 client for the API (no extra crates).
//! - [`Sipp`] / [`SippProcess`] / [`SippOutcome`]: SIPp command lines that follow the pitfalls
//!   in tests/sipp/README (always `-i/-mi 127.0.0.1`, `-nostdin`, `-timeout .. -timeout_error`,
//!   cwd = tests/sipp so `media/` resolves, traces into a temp dir).
//! - Log parsing helpers ([`field`], [`CallEndStats`], [`DtmfLog`]) that tolerate field order,
//!   quoting and ANSI colours.
#![allow(dead_code)] // each test binary uses a different subset of the harness

pub mod peer;

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bearer token written into every test config.
pub const TOKEN: &str = "test-token";

/// How long a freshly spawned gateway may take to answer `/healthz` and bind its SIP sockets.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// The repository root (the gateway runs with this cwd, like `cargo run` would).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// tests/sipp: SIPp runs from here so that `rtp_stream="media/..."` paths resolve.
pub fn sipp_dir() -> PathBuf {
    repo_root().join("tests").join("sipp")
}

/// The demo flow the gateway uses when a test does not bring its own.
pub fn demo_flow_path() -> PathBuf {
    repo_root()
        .join("sip-config")
        .join("flows")
        .join("demo.yaml")
}

/// Absolute prompts dir, for flows written into a temp dir (substituted for `{{PROMPTS_DIR}}`).
pub fn prompts_dir() -> PathBuf {
    repo_root().join("sip-config").join("prompts")
}

/// The gateway binary Cargo built for this test run.
pub fn gateway_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voxgate"))
}

// ---------------------------------------------------------------------------------------------
// Ports
// ---------------------------------------------------------------------------------------------

/// Ports handed out by this process, so two parallel tests never get the same one even though
/// each probe socket is closed before the port is used.
struct PortBook {
    used: BTreeSet<u16>,
    rtp_ranges: Vec<(u16, u16)>,
}

static PORTS: Mutex<PortBook> = Mutex::new(PortBook {
    used: BTreeSet::new(),
    rtp_ranges: Vec::new(),
});
static RTP_SLOT_COUNTER: AtomicU32 = AtomicU32::new(0);

const RTP_REGION: (u16, u16) = (30000, 60000);
const RTP_SLOT: u16 = 256;
/// Ports per gateway RTP range (inclusive range of this many ports).
pub const RTP_RANGE_LEN: u16 = 200;

fn book() -> std::sync::MutexGuard<'static, PortBook> {
    // A test that panicked while holding the lock leaves valid data behind; keep going.
    PORTS.lock().unwrap_or_else(|e| e.into_inner())
}

fn in_rtp_range(book: &PortBook, port: u16) -> bool {
    book.rtp_ranges
        .iter()
        .any(|&(lo, hi)| (lo..=hi).contains(&port))
}

fn udp_free(port: u16) -> bool {
    UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

fn tcp_free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A port free for both UDP and TCP on 127.0.0.1 (SIP listens on both, SIPp `-t t1` too).
pub fn free_port() -> u16 {
    for _ in 0..500 {
        let port = match UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()) {
            Ok(a) => a.port(),
            Err(_) => continue,
        };
        let mut b = book();
        if b.used.contains(&port) || in_rtp_range(&b, port) || !tcp_free(port) {
            continue;
        }
        b.used.insert(port);
        return port;
    }
    panic!("harness: could not find a free UDP+TCP port on 127.0.0.1");
}

/// A free TCP port (HTTP).
pub fn free_tcp_port() -> u16 {
    for _ in 0..500 {
        let port = match TcpListener::bind("127.0.0.1:0").and_then(|s| s.local_addr()) {
            Ok(a) => a.port(),
            Err(_) => continue,
        };
        let mut b = book();
        if b.used.contains(&port) || in_rtp_range(&b, port) {
            continue;
        }
        b.used.insert(port);
        return port;
    }
    panic!("harness: could not find a free TCP port on 127.0.0.1");
}

/// An even UDP port `p` with `p+2` also free: SIPp binds `-mp` and `-mp + 2` (video), and with
/// an explicit `-mp` it makes one try only.
pub fn free_media_port() -> u16 {
    for _ in 0..2000 {
        let port = match UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()) {
            Ok(a) => a.port(),
            Err(_) => continue,
        };
        if port % 2 != 0 || port > u16::MAX - 4 {
            continue;
        }
        let mut b = book();
        let all = [port, port + 1, port + 2, port + 3];
        if all
            .iter()
            .any(|p| b.used.contains(p) || in_rtp_range(&b, *p))
        {
            continue;
        }
        if !udp_free(port + 2) {
            continue;
        }
        b.used.extend(all);
        return port;
    }
    panic!("harness: could not find a free even UDP port pair for SIPp media");
}

/// An inclusive RTP range of [`RTP_RANGE_LEN`] ports in 30000-60000. The slot is derived from
/// the pid and a global counter so parallel tests (and parallel test binaries) spread out, and
/// every port of the range is probed before it is handed out.
pub fn free_rtp_range() -> (u16, u16) {
    let slots = u32::from((RTP_REGION.1 - RTP_REGION.0) / RTP_SLOT);
    let start = std::process::id().wrapping_mul(7919) % slots;
    for _ in 0..slots {
        let n = RTP_SLOT_COUNTER.fetch_add(1, Ordering::SeqCst);
        let slot = (start + n) % slots;
        let lo = RTP_REGION.0 + (slot as u16) * RTP_SLOT;
        let hi = lo + RTP_RANGE_LEN - 1;
        let mut b = book();
        if b.rtp_ranges.iter().any(|&(l, h)| lo <= h && l <= hi)
            || (lo..=hi).any(|p| b.used.contains(&p))
        {
            continue;
        }
        if !(lo..=hi).all(udp_free) {
            continue;
        }
        b.rtp_ranges.push((lo, hi));
        return (lo, hi);
    }
    panic!("harness: no free RTP port range left in 30000-60000");
}

/// Is something bound to this UDP port on the loopback (or any) address? Reads /proc so the
/// check never steals the port from the process that is about to bind it.
pub fn udp_port_bound(port: u16) -> Option<bool> {
    proc_net_has(&["/proc/net/udp", "/proc/net/udp6"], port, None)
}

/// Is something listening on this TCP port? (/proc, see [`udp_port_bound`]).
pub fn tcp_port_listening(port: u16) -> Option<bool> {
    proc_net_has(&["/proc/net/tcp", "/proc/net/tcp6"], port, Some("0A"))
}

fn proc_net_has(files: &[&str], port: u16, state: Option<&str>) -> Option<bool> {
    let want = format!(":{port:04X}");
    let mut readable = false;
    for f in files {
        let Ok(text) = fs::read_to_string(f) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 4 {
                continue;
            }
            if cols[1].ends_with(&want) && state.is_none_or(|s| cols[3] == s) {
                return Some(true);
            }
        }
    }
    readable.then_some(false)
}

// ---------------------------------------------------------------------------------------------
// Gateway fixture
// ---------------------------------------------------------------------------------------------

/// Configures a [`Gateway`] before it starts.
#[derive(Debug, Default, Clone)]
pub struct GatewayBuilder {
    flow_yaml: Option<String>,
    overrides: Vec<String>,
    program: Option<(PathBuf, Vec<String>)>,
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
    no_flow_file: bool,
}

impl GatewayBuilder {
    /// Use this flow instead of the demo flow. It is written to `<tmp>/flow.yaml`;
    /// `{{PROMPTS_DIR}}` and `{{REPO}}` are replaced by absolute paths (the flow's
    /// `prompts_dir` is relative to the flow file, which lives in the temp dir).
    pub fn flow_yaml(mut self, yaml: &str) -> Self {
        self.flow_yaml = Some(yaml.to_string());
        self
    }

    /// TOML deep-merged over the generated config, e.g. `"[sip]\nmax_calls = 1"`. Tables are
    /// merged key by key, so `[sip]` here does not clash with the harness's `[sip]`.
    pub fn toml(mut self, extra: &str) -> Self {
        self.overrides.push(extra.to_string());
        self
    }

    /// Run `exe args...` instead of `voxgate --config FILE` (harness self-tests use a stand-in);
    /// the config path is passed in the `VOXGATE_TEST_CONFIG` environment variable.
    pub fn program(mut self, exe: PathBuf, args: &[&str]) -> Self {
        self.program = Some((exe, args.iter().map(|a| a.to_string()).collect()));
        self
    }

    /// Run the gateway in this directory instead of the repository root.
    pub fn cwd(mut self, dir: &Path) -> Self {
        self.cwd = Some(dir.to_path_buf());
        self
    }

    /// An environment variable for the gateway process.
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Leave `[flow] file` out of the config (the gateway's default path applies).
    pub fn without_flow_file(mut self) -> Self {
        self.no_flow_file = true;
        self
    }

    /// Start and wait until `/healthz` answers 200 and the SIP sockets are bound.
    pub fn start(self) -> Gateway {
        let mut gw = self.prepare();
        gw.start();
        gw
    }

    /// Start without waiting (for tests of start-up failures; see [`Gateway::wait_exit`]).
    pub fn spawn_only(self) -> Gateway {
        let mut gw = self.prepare();
        gw.spawn();
        gw
    }

    /// Pick ports and write the temp dir (config, flow) without starting the process.
    pub fn prepare(self) -> Gateway {
        let dir = tempfile::Builder::new()
            .prefix("voxgate-it-")
            .tempdir()
            .expect("harness: create temp dir");
        let root = dir.path().to_path_buf();
        let sip_port = free_port();
        let http_port = free_tcp_port();
        let trunk_port = free_port();
        let rtp = free_rtp_range();

        let flow_file = match &self.flow_yaml {
            Some(yaml) => {
                let text = yaml
                    .replace("{{PROMPTS_DIR}}", &prompts_dir().to_string_lossy())
                    .replace("{{REPO}}", &repo_root().to_string_lossy());
                let p = root.join("flow.yaml");
                fs::write(&p, text).expect("harness: write flow.yaml");
                p
            }
            None => demo_flow_path(),
        };

        let base = format!(
            r#"
data_dir = {data_dir}

[sip]
listen = "127.0.0.1:{sip_port}"

[rtp]
ports = "{rtp_lo}-{rtp_hi}"

[http]
listen = "127.0.0.1:{http_port}"
token = "{TOKEN}"

[recordings]
dir = {rec_dir}

[flow]
file = {flow_file}

[transfer]
mode = "auto"
trunk = "sip:127.0.0.1:{trunk_port}"
allow = ["+32", "+31", "+44", "+1"]
"#,
            data_dir = toml_str(&root.join("data")),
            rec_dir = toml_str(&root.join("recordings")),
            flow_file = toml_str(&flow_file),
            rtp_lo = rtp.0,
            rtp_hi = rtp.1,
        );
        let mut table: toml::Table = base.parse().expect("harness: base config is valid TOML");
        for extra in &self.overrides {
            let over: toml::Table = extra
                .parse()
                .unwrap_or_else(|e| panic!("harness: bad TOML override {extra:?}: {e}"));
            merge_toml(&mut table, over);
        }
        if self.no_flow_file {
            if let Some(toml::Value::Table(flow)) = table.get_mut("flow") {
                flow.remove("file");
            }
        }
        let config_text = toml::to_string(&table).expect("harness: serialize config");
        let config_path = root.join("gateway.toml");
        fs::write(&config_path, &config_text).expect("harness: write gateway.toml");

        Gateway {
            program: self.program,
            cwd: self.cwd,
            env: self.env,
            config_path,
            log_path: root.join("gateway.log"),
            config_text,
            sip_port,
            http_port,
            trunk_port,
            rtp_ports: rtp,
            child: None,
            runs: 0,
            run_log_offset: 0,
            dir: Some(dir),
        }
    }
}

fn toml_str(p: &Path) -> String {
    toml::Value::String(p.to_string_lossy().into_owned()).to_string()
}

/// Deep merge: tables merge recursively, anything else replaces.
fn merge_toml(base: &mut toml::Table, over: toml::Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge_toml(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// One gateway process on private ports with its own temp dir. Killed (SIGKILL) on drop; when
/// the test is failing, the tail of its log is printed. Set `VOXGATE_KEEP_TEST_DIR=1` to keep
/// the temp dir (config, log, recordings) for a post-mortem.
pub struct Gateway {
    pub config_path: PathBuf,
    pub log_path: PathBuf,
    pub config_text: String,
    pub sip_port: u16,
    pub http_port: u16,
    /// Where `[transfer] trunk` points; start a SIPp UAS here to play the trunk.
    pub trunk_port: u16,
    /// Inclusive `[rtp] ports` range.
    pub rtp_ports: (u16, u16),
    program: Option<(PathBuf, Vec<String>)>,
    cwd: Option<PathBuf>,
    env: Vec<(String, String)>,
    child: Option<Child>,
    runs: u32,
    run_log_offset: u64,
    dir: Option<tempfile::TempDir>,
}

impl Gateway {
    /// A gateway with the demo flow and default settings, ready for calls.
    pub fn start_default() -> Gateway {
        GatewayBuilder::default().start()
    }

    pub fn builder() -> GatewayBuilder {
        GatewayBuilder::default()
    }

    /// The temp dir holding config, log, `data/` and `recordings/`.
    pub fn dir(&self) -> &Path {
        self.dir
            .as_ref()
            .map(|d| d.path())
            .expect("harness: temp dir present while the Gateway lives")
    }

    pub fn recordings_dir(&self) -> PathBuf {
        self.dir().join("recordings")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir().join("data")
    }

    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.sip_port))
    }

    pub fn http_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.http_port))
    }

    /// Is the SIP UDP port bound (per /proc; `None` without /proc)?
    pub fn udp_bound(&self) -> Option<bool> {
        udp_port_bound(self.sip_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Spawn the process (same config as before) without waiting for readiness. Output is
    /// appended to the same log file, behind a `=== harness: start #N ===` marker.
    pub fn spawn(&mut self) {
        assert!(
            !self.is_running(),
            "harness: gateway already running; kill9()/terminate() it first"
        );
        self.runs += 1;
        let mut log = File::options()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("harness: open gateway.log");
        writeln!(log, "=== harness: start #{} ===", self.runs).expect("harness: write log");
        self.run_log_offset = fs::metadata(&self.log_path).map(|m| m.len()).unwrap_or(0);
        let err = log.try_clone().expect("harness: clone log handle");
        let mut cmd = match &self.program {
            Some((exe, args)) => {
                let mut c = Command::new(exe);
                c.args(args);
                c
            }
            None => {
                let mut c = Command::new(gateway_bin());
                c.arg("--config").arg(&self.config_path);
                c
            }
        };
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .current_dir(self.cwd.clone().unwrap_or_else(repo_root))
            .env("VOXGATE_TEST_CONFIG", &self.config_path)
            .env("RUST_LOG", "info,voxgate=debug")
            .env("NO_COLOR", "1")
            .env_remove("RUST_LOG_STYLE")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .unwrap_or_else(|e| panic!("harness: spawn gateway: {e}"));
        self.child = Some(child);
    }

    /// Spawn and wait until ready (`/healthz` 200, SIP UDP bound and TCP listening).
    pub fn start(&mut self) {
        self.spawn();
        self.wait_ready(STARTUP_TIMEOUT);
    }

    /// SIGKILL (if running) and start again with the same config, ports and dirs.
    pub fn restart(&mut self) {
        if self.is_running() {
            self.kill9();
        }
        self.start();
    }

    /// Poll until ready; panics with the log tail when the process exits or time runs out.
    pub fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            if let Some(status) = self.try_exit_status() {
                panic!(
                    "harness: gateway exited during start-up with {status}\n{}",
                    self.log_tail(80)
                );
            }
            let healthy = match self.get_noauth("/healthz") {
                Ok(r) if r.status == 200 => true,
                Ok(r) => {
                    last = format!("/healthz answered {}", r.status);
                    false
                }
                Err(e) => {
                    last = format!("/healthz: {e}");
                    false
                }
            };
            if healthy {
                let udp = udp_port_bound(self.sip_port).unwrap_or(true);
                let tcp = tcp_port_listening(self.sip_port).unwrap_or(true);
                if udp && tcp {
                    return;
                }
                last = format!("healthy, but SIP port bound: udp={udp} tcp={tcp}");
            }
            if Instant::now() >= deadline {
                panic!(
                    "harness: gateway not ready after {timeout:?} ({last})\n{}",
                    self.log_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// SIGTERM (graceful shutdown, CONTRACT §1). Does not wait; see [`Gateway::wait_exit`].
    pub fn terminate(&mut self) {
        self.signal("-TERM");
    }

    /// SIGINT (also graceful per CONTRACT §1).
    pub fn interrupt(&mut self) {
        self.signal("-INT");
    }

    fn signal(&mut self, sig: &str) {
        let pid = self.pid().expect("harness: gateway was never started");
        let status = Command::new("kill")
            .arg(sig)
            .arg(pid.to_string())
            .status()
            .expect("harness: run `kill`");
        assert!(status.success(), "harness: kill {sig} {pid} failed");
    }

    /// Wait for the process to exit; panics (with the log tail) if it is still running after
    /// `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.try_exit_status() {
                return s;
            }
            if Instant::now() >= deadline {
                panic!(
                    "harness: gateway still running {timeout:?} after being asked to stop\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// SIGKILL and reap (crash simulation). Safe to call when already exited.
    pub fn kill9(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    // --- logs --------------------------------------------------------------------------------

    /// The whole log (all runs), ANSI colour codes removed.
    pub fn log_text(&self) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        strip_ansi(&String::from_utf8_lossy(&bytes))
    }

    /// The log of the current run only (since the last spawn).
    pub fn log_text_current_run(&self) -> String {
        let bytes = fs::read(&self.log_path).unwrap_or_default();
        let from = usize::try_from(self.run_log_offset)
            .unwrap_or(0)
            .min(bytes.len());
        strip_ansi(&String::from_utf8_lossy(&bytes[from..]))
    }

    pub fn log_contains(&self, pattern: &str) -> bool {
        self.log_text().contains(pattern)
    }

    /// Lines containing `pattern`.
    pub fn log_lines(&self, pattern: &str) -> Vec<String> {
        self.log_text()
            .lines()
            .filter(|l| l.contains(pattern))
            .map(str::to_string)
            .collect()
    }

    pub fn log_count(&self, pattern: &str) -> usize {
        self.log_lines(pattern).len()
    }

    /// Poll the log until `pattern` shows up; false on timeout.
    pub fn wait_for_log(&self, pattern: &str, timeout: Duration) -> bool {
        self.wait_for_log_count(pattern, 1, timeout)
    }

    /// Poll the log until at least `n` lines contain `pattern`; false on timeout.
    pub fn wait_for_log_count(&self, pattern: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_count(pattern) >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(n);
        format!(
            "----- gateway log ({}), last {} lines -----\n{}\n----- end of gateway log -----",
            self.log_path.display(),
            lines.len() - from,
            lines[from..].join("\n")
        )
    }

    /// Every parsed `call ended` line, in log order.
    pub fn call_end_stats(&self) -> Vec<CallEndStats> {
        self.log_text()
            .lines()
            .filter_map(CallEndStats::parse)
            .collect()
    }

    /// Every parsed `DTMF received` line, in log order.
    pub fn dtmf_logs(&self) -> Vec<DtmfLog> {
        self.log_text().lines().filter_map(DtmfLog::parse).collect()
    }

    // --- HTTP --------------------------------------------------------------------------------

    /// `GET` with the bearer token. Errors only on transport failure.
    pub fn get(&self, path: &str) -> io::Result<HttpResponse> {
        self.request("GET", path, &[("Authorization", &bearer())])
    }

    pub fn get_noauth(&self, path: &str) -> io::Result<HttpResponse> {
        self.request("GET", path, &[])
    }

    pub fn head(&self, path: &str) -> io::Result<HttpResponse> {
        self.request("HEAD", path, &[("Authorization", &bearer())])
    }

    /// `GET` with `Range: <range>` (e.g. `"bytes=0-99"`) and the token.
    pub fn get_range(&self, path: &str, range: &str) -> io::Result<HttpResponse> {
        self.request(
            "GET",
            path,
            &[("Authorization", &bearer()), ("Range", range)],
        )
    }

    pub fn delete(&self, path: &str) -> io::Result<HttpResponse> {
        self.request("DELETE", path, &[("Authorization", &bearer())])
    }

    /// Any request; `headers` are sent as given.
    pub fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
    ) -> io::Result<HttpResponse> {
        http_request(
            self.http_addr(),
            method,
            path,
            headers,
            Duration::from_secs(10),
        )
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill9();
        if std::thread::panicking() {
            eprintln!("{}", self.log_tail(150));
        }
        if std::env::var_os("VOXGATE_KEEP_TEST_DIR").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("harness: kept {}", d.keep().display());
            }
        }
    }
}

fn bearer() -> String {
    format!("Bearer {TOKEN}")
}

// ---------------------------------------------------------------------------------------------
// Minimal HTTP/1.1 client (Connection: close; Content-Length or chunked bodies)
// ---------------------------------------------------------------------------------------------

/// An HTTP response: status, headers in wire order, body bytes (empty for HEAD).
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// First header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "harness: body is not JSON ({e}); status {}: {}",
                self.status,
                self.text()
            )
        })
    }
}

/// One request on a fresh connection.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let _ = s.shutdown(Shutdown::Both);
    parse_http_response(&raw, method.eq_ignore_ascii_case("HEAD"))
}

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Parses a complete response read until EOF.
pub fn parse_http_response(raw: &[u8], head_request: bool) -> io::Result<HttpResponse> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| bad(format!("no end of headers in {} bytes", raw.len())))?;
    let head = String::from_utf8_lossy(&raw[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().unwrap_or_default();
    if !version.starts_with("HTTP/1.") {
        return Err(bad(format!("bad status line {status_line:?}")));
    }
    let status: u16 = parts
        .next()
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad(format!("bad status code in {status_line:?}")))?;
    let mut headers = Vec::new();
    for l in lines {
        let (k, v) = l
            .split_once(':')
            .ok_or_else(|| bad(format!("bad header line {l:?}")))?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let rest = &raw[end + 4..];
    let mut resp = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if head_request || status == 204 || status == 304 || (100..200).contains(&status) {
        return Ok(resp);
    }
    let chunked = resp
        .header("transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    resp.body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = resp.header("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| bad(format!("bad Content-Length {len:?}")))?;
        if rest.len() < len {
            return Err(bad(format!(
                "body truncated: Content-Length {len}, got {}",
                rest.len()
            )));
        }
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(resp)
}

fn decode_chunked(mut data: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or_else(|| bad("chunked body: missing chunk size line"))?;
        let size_text = String::from_utf8_lossy(&data[..eol]);
        let size_hex = size_text.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .map_err(|_| bad(format!("chunked body: bad chunk size {size_hex:?}")))?;
        data = &data[eol + 2..];
        if size == 0 {
            return Ok(out);
        }
        if data.len() < size + 2 {
            return Err(bad("chunked body: truncated chunk"));
        }
        out.extend_from_slice(&data[..size]);
        data = &data[size + 2..];
    }
}

// ---------------------------------------------------------------------------------------------
// Log parsing
// ---------------------------------------------------------------------------------------------

/// Removes ANSI escape sequences (tracing colours fields even when not on a tty unless told
/// otherwise).
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // CSI: parameters then one final byte in '@'..='~'
                for n in chars.by_ref() {
                    if ('@'..='~').contains(&n) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The value of field `key` in a log line. Accepts `key=value`, `key="value"`, `key='v'`,
/// `key: value` and JSON `"key":value`; the key must not be the tail of a longer name
/// (`digit` does not match `last_digit`).
pub fn field(line: &str, key: &str) -> Option<String> {
    let bytes = line.as_bytes();
    let mut from = 0;
    while let Some(pos) = line[from..].find(key) {
        let start = from + pos;
        let after = start + key.len();
        from = after;
        let before_ok = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        };
        if !before_ok {
            continue;
        }
        let mut rest = &line[after..];
        if let Some(r) = rest.strip_prefix('"') {
            rest = r; // JSON key
        }
        let rest = if let Some(r) = rest.strip_prefix('=') {
            r
        } else if let Some(r) = rest.strip_prefix(':') {
            r.trim_start()
        } else {
            continue;
        };
        let value = if let Some(r) = rest.strip_prefix('"') {
            r.split('"').next().unwrap_or_default()
        } else if let Some(r) = rest.strip_prefix('\'') {
            r.split('\'').next().unwrap_or_default()
        } else {
            rest.split(|c: char| c.is_whitespace() || c == ',' || c == '}')
                .next()
                .unwrap_or_default()
        };
        return Some(value.to_string());
    }
    None
}

/// Numeric field; `None` when missing or not a number.
pub fn field_u64(line: &str, key: &str) -> Option<u64> {
    field(line, key)?.parse().ok()
}

/// The gateway's end-of-call summary. Assumed format (tracing, any order, other fields allowed):
/// `... call ended ... rtp_tx_packets=N rtp_rx_packets=M media_ms=D ...`
/// (`duration_ms` is accepted when `media_ms` is missing).
#[derive(Debug, Clone, PartialEq)]
pub struct CallEndStats {
    pub rtp_tx_packets: u64,
    pub rtp_rx_packets: u64,
    pub media_ms: u64,
    pub line: String,
}

impl CallEndStats {
    pub fn parse(line: &str) -> Option<CallEndStats> {
        if !line.contains("call ended") {
            return None;
        }
        Some(CallEndStats {
            rtp_tx_packets: field_u64(line, "rtp_tx_packets")?,
            rtp_rx_packets: field_u64(line, "rtp_rx_packets")?,
            media_ms: field_u64(line, "media_ms").or_else(|| field_u64(line, "duration_ms"))?,
            line: line.to_string(),
        })
    }

    /// Sent packets per second of media time.
    pub fn tx_rate(&self) -> f64 {
        self.rtp_tx_packets as f64 * 1000.0 / self.media_ms.max(1) as f64
    }
}

/// One `DTMF received digit=<d> via=<rfc4733|info>` log line (fields in any order).
#[derive(Debug, Clone, PartialEq)]
pub struct DtmfLog {
    pub digit: String,
    /// `None` when the line has no `via` field (e.g. a lower layer's own debug line).
    pub via: Option<String>,
    pub line: String,
}

impl DtmfLog {
    pub fn parse(line: &str) -> Option<DtmfLog> {
        if !line.contains("DTMF received") {
            return None;
        }
        Some(DtmfLog {
            digit: field(line, "digit")?,
            via: field(line, "via"),
            line: line.to_string(),
        })
    }
}

/// Digits logged with the given `via`, in order.
pub fn dtmf_digits_via(logs: &[DtmfLog], via: &str) -> Vec<String> {
    logs.iter()
        .filter(|d| d.via.as_deref() == Some(via))
        .map(|d| d.digit.clone())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// SIPp
// ---------------------------------------------------------------------------------------------

/// The SIPp binary (`VOXGATE_SIPP` overrides `sipp` on PATH).
pub fn sipp_bin() -> String {
    std::env::var("VOXGATE_SIPP").unwrap_or_else(|_| "sipp".to_string())
}

/// Fails the test (never skips it) when SIPp is missing: a green run without SIPp would be a
/// lie. scripts/test.sh installs it (Debian package `sip-tester`).
#[track_caller]
pub fn require_sipp() -> String {
    let out = Command::new(sipp_bin()).arg("-v").output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!(
            "SIPp is required for the integration tests but `{} -v` failed: {e}. \
             Install the Debian package sip-tester (scripts/test.sh does this when run as root), \
             or set VOXGATE_SIPP to the binary.",
            sipp_bin()
        ),
    };
    // `sipp -v` exits 99 ("no call processed"), so judge by the banner, not the exit code.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let version = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SIPp v"))
        .unwrap_or_else(|| panic!("`{} -v` did not print a SIPp banner:\n{text}", sipp_bin()))
        .to_string();
    version
}

/// Builder for one SIPp run. UAC: `Sipp::uac("uac_basic.xml", gw.sip_addr())`;
/// UAS (trunk/callee stand-in): `Sipp::uas("peers/uas_answer.xml", port)`.
#[derive(Debug, Clone)]
pub struct Sipp {
    scenario: String,
    remote: Option<SocketAddr>,
    local_port: Option<u16>,
    tcp: bool,
    calls: u32,
    timeout_s: u64,
    service: String,
    keys: Vec<(String, String)>,
    args: Vec<String>,
}

impl Sipp {
    /// A caller: scenario path relative to tests/sipp (or absolute), calling `remote`.
    pub fn uac(scenario: &str, remote: SocketAddr) -> Sipp {
        Sipp {
            scenario: scenario.to_string(),
            remote: Some(remote),
            local_port: None,
            tcp: false,
            calls: 1,
            timeout_s: 60,
            service: "bot".to_string(),
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    /// A callee/trunk stand-in listening on `port`.
    pub fn uas(scenario: &str, port: u16) -> Sipp {
        Sipp {
            remote: None,
            local_port: Some(port),
            ..Sipp::uac(scenario, SocketAddr::from(([127, 0, 0, 1], 0)))
        }
    }

    /// `-t t1`: one TCP connection.
    pub fn tcp(mut self) -> Sipp {
        self.tcp = true;
        self
    }

    /// `-key name value` (scenario `[name]`).
    pub fn key(mut self, name: &str, value: &str) -> Sipp {
        self.keys.push((name.to_string(), value.to_string()));
        self
    }

    /// Any extra SIPp argument, e.g. `.arg("-rtp_echo")`.
    pub fn arg(mut self, a: &str) -> Sipp {
        self.args.push(a.to_string());
        self
    }

    /// `-m N` (default 1).
    pub fn calls(mut self, n: u32) -> Sipp {
        self.calls = n;
        self
    }

    /// `-timeout Ns -timeout_error` (default 60 s).
    pub fn timeout_s(mut self, s: u64) -> Sipp {
        self.timeout_s = s;
        self
    }

    /// `-s user` (default `bot`).
    pub fn service(mut self, s: &str) -> Sipp {
        self.service = s.to_string();
        self
    }

    /// Fix the local SIP port (`-p`); otherwise a free one is picked.
    pub fn local_port(mut self, p: u16) -> Sipp {
        self.local_port = Some(p);
        self
    }

    fn build(&self, tmp: &Path) -> (Command, Vec<String>, u16) {
        let port = self.local_port.unwrap_or_else(free_port);
        let media = free_media_port();
        let control = free_port();
        let mut argv: Vec<String> = Vec::new();
        if let Some(r) = self.remote {
            argv.push(r.to_string());
        }
        let name = Path::new(&self.scenario)
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "scenario".to_string());
        let f = |suffix: &str| tmp.join(format!("{name}_{suffix}")).display().to_string();
        argv.extend(
            [
                "-sf",
                &self.scenario,
                "-s",
                &self.service,
                "-i",
                "127.0.0.1",
                "-mi",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-mp",
                &media.to_string(),
                "-cp",
                &control.to_string(),
                "-m",
                &self.calls.to_string(),
                "-nostdin",
                "-timeout",
                &format!("{}s", self.timeout_s),
                "-timeout_error",
                "-trace_err",
                "-error_file",
                &f("errors.log"),
                "-trace_msg",
                "-message_file",
                &f("messages.log"),
                "-trace_logs",
                "-log_file",
                &f("logs.log"),
            ]
            .map(String::from),
        );
        if self.tcp {
            argv.extend(["-t".to_string(), "t1".to_string()]);
        }
        for (k, v) in &self.keys {
            argv.extend(["-key".to_string(), k.clone(), v.clone()]);
        }
        argv.extend(self.args.iter().cloned());
        let mut cmd = Command::new(sipp_bin());
        cmd.args(&argv).current_dir(sipp_dir()).stdin(Stdio::null());
        (cmd, argv, port)
    }

    /// Run to completion (bounded by the SIPp timeout plus a margin).
    pub fn run(self) -> SippOutcome {
        self.spawn().wait()
    }

    /// Start in the background; call [`SippProcess::wait`] later.
    pub fn spawn(self) -> SippProcess {
        let tmp = tempfile::Builder::new()
            .prefix("voxgate-sipp-")
            .tempdir()
            .expect("harness: sipp temp dir");
        let (mut cmd, argv, port) = self.build(tmp.path());
        let stdout = File::create(tmp.path().join("stdout.txt")).expect("harness: sipp stdout");
        let stderr = File::create(tmp.path().join("stderr.txt")).expect("harness: sipp stderr");
        cmd.stdout(Stdio::from(stdout)).stderr(Stdio::from(stderr));
        let command = format!(
            "(cd {} && {} {})",
            sipp_dir().display(),
            sipp_bin(),
            argv.join(" ")
        );
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!("harness: cannot start SIPp ({e}); is sip-tester installed?\n{command}")
        });
        SippProcess {
            child: Some(child),
            deadline: Instant::now() + Duration::from_secs(self.timeout_s + 20),
            tmp,
            command,
            port,
            tcp: self.tcp,
            scenario: self.scenario,
        }
    }
}

/// A SIPp instance running in the background.
pub struct SippProcess {
    child: Option<Child>,
    deadline: Instant,
    tmp: tempfile::TempDir,
    command: String,
    port: u16,
    tcp: bool,
    scenario: String,
}

impl SippProcess {
    /// Its SIP port (`-p`).
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Wait until SIPp has bound its SIP port (for UAS stand-ins that must be up before the
    /// gateway calls them). Panics on timeout or early exit.
    pub fn wait_listening(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(s)) = c.try_wait() {
                    panic!(
                        "harness: SIPp exited ({s}) before listening\n{}",
                        self.collect(s.code(), None).report()
                    );
                }
            }
            let bound = if self.tcp {
                tcp_port_listening(self.port)
            } else {
                udp_port_bound(self.port)
            };
            match bound {
                Some(true) => return,
                None => {
                    // No /proc: give it a moment and hope.
                    std::thread::sleep(Duration::from_millis(500));
                    return;
                }
                Some(false) => {}
            }
            if Instant::now() >= deadline {
                panic!(
                    "harness: SIPp did not bind port {} within {timeout:?}",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// The `-trace_msg` file so far (SIP messages sent and received while still running).
    pub fn messages_so_far(&self) -> String {
        self.collect(None, None).messages
    }

    /// Poll the message trace until it contains `pattern` (e.g. `"ACK sip:"` once the call is
    /// up). False on timeout or when SIPp exits first.
    pub fn wait_for_message(&mut self, pattern: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.messages_so_far().contains(pattern) {
                return true;
            }
            if !self.is_running() || Instant::now() >= deadline {
                return self.messages_so_far().contains(pattern);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for exit (SIGKILL after the SIPp timeout + 20 s) and collect its output.
    pub fn wait(mut self) -> SippOutcome {
        let mut child = self.child.take().expect("harness: SIPp child present");
        let mut note = None;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) => {}
                Err(e) => {
                    note = Some(format!("try_wait failed: {e}"));
                    break None;
                }
            }
            if Instant::now() >= self.deadline {
                let _ = child.kill();
                let _ = child.wait();
                note = Some("harness killed SIPp: it outlived its own -timeout".to_string());
                break None;
            }
            std::thread::sleep(Duration::from_millis(25));
        };
        self.collect(status.and_then(|s| s.code()), note)
    }

    /// SIGKILL now and collect whatever it wrote.
    pub fn kill(mut self) -> SippOutcome {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.collect(None, Some("killed by the test".to_string()))
    }

    fn collect(&self, code: Option<i32>, note: Option<String>) -> SippOutcome {
        let read = |n: &str| -> String {
            let mut out = String::new();
            if let Ok(entries) = fs::read_dir(self.tmp.path()) {
                let mut names: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.to_string_lossy().ends_with(n))
                    .collect();
                names.sort();
                for p in names {
                    out.push_str(&String::from_utf8_lossy(&fs::read(p).unwrap_or_default()));
                }
            }
            out
        };
        SippOutcome {
            code,
            note,
            command: self.command.clone(),
            scenario: self.scenario.clone(),
            stdout: read("stdout.txt"),
            stderr: read("stderr.txt"),
            errors: read("errors.log"),
            messages: read("messages.log"),
            logs: read("logs.log"),
        }
    }
}

impl Drop for SippProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a SIPp run left behind. Exit codes: 0 all calls succeeded, 1 some failed, 99 no call
/// processed, 255/254 fatal (bad scenario, port in use...).
#[derive(Debug, Clone)]
pub struct SippOutcome {
    /// `None` when killed by a signal (or by the harness).
    pub code: Option<i32>,
    pub note: Option<String>,
    pub command: String,
    pub scenario: String,
    pub stdout: String,
    pub stderr: String,
    /// `-trace_err` file: unexpected messages and errors.
    pub errors: String,
    /// `-trace_msg` file: every SIP message sent and received.
    pub messages: String,
    /// `-trace_logs` file: the scenario's `<log>` actions.
    pub logs: String,
}

impl SippOutcome {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Panics with everything SIPp wrote unless it exited 0.
    #[track_caller]
    pub fn assert_success(&self) {
        assert!(
            self.success(),
            "SIPp {} failed (exit {:?})\n{}",
            self.scenario,
            self.code,
            self.report()
        );
    }

    /// A readable dump for failure messages (long parts truncated to their tail).
    pub fn report(&self) -> String {
        fn tail(s: &str, max: usize) -> &str {
            if s.len() <= max {
                return s;
            }
            let mut i = s.len() - max;
            while !s.is_char_boundary(i) {
                i += 1;
            }
            &s[i..]
        }
        format!(
            "command: {}\nexit: {:?}{}\n--- stderr ---\n{}\n--- errors ---\n{}\n--- scenario logs ---\n{}\n--- SIP messages (tail) ---\n{}\n--- stdout (tail) ---\n{}\n--- end SIPp ---",
            self.command,
            self.code,
            self.note
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default(),
            tail(&self.stderr, 4000),
            tail(&self.errors, 4000),
            tail(&self.logs, 4000),
            tail(&self.messages, 12000),
            tail(&self.stdout, 3000),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Raw SIP helpers
// ---------------------------------------------------------------------------------------------

/// Fire one datagram at `to` from a throwaway socket (garbage-tolerance tests).
pub fn send_udp(to: SocketAddr, payload: &[u8]) -> io::Result<()> {
    let s = UdpSocket::bind("127.0.0.1:0")?;
    s.send_to(payload, to)?;
    Ok(())
}
