//! Scale-out (issue 14, CONTRACT §10): two voxgate nodes behind Kamailio's dispatcher
//! (deploy/kamailio/kamailio.cfg, rendered with this test's ports), one shared PostgreSQL and a
//! shared recordings directory, all real processes on loopback:
//!
//! 1. 200 calls through Kamailio land on both nodes (the CDRs in PostgreSQL say which), 0 failed;
//!    every in-dialog request (ACK, INFO, BYE) reached the node owning the dialog.
//! 2. Recordings made on node A are listed and downloaded (SHA-256, Range) through node B.
//! 3. PostgreSQL stopped for 10 s mid-run: calls go on, and every CDR of that window is in the
//!    database afterwards.
//! 4. Node B killed (SIGKILL) mid-run: calls answered by A all complete; once the dispatcher has
//!    marked B down (the time is printed) new calls all go to A with 0 failures. B restarted:
//!    the dispatcher puts it back and it takes calls again.
//! 5. Node A drained (SIGTERM): its OPTIONS answer 503 so no new call reaches it, its calls
//!    finish, it exits 0, and its CDRs are in the database.
//!
//! 6. (`tables_and_transcripts_are_shared_by_every_node`) The flow's tables live in PostgreSQL:
//!    a CSV seeded by both nodes exists once, a row inserted by a call on node A is found by a
//!    `table` lookup on node B and listed by both APIs, and node B serves the transcript of
//!    node A's call from the store.
//!
//! Needs kamailio and PostgreSQL (scripts/test.sh installs both); fails, never skips, without.

mod common;

use common::*;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const DB_PASSWORD: &str = "vx-pass";

// ---------------------------------------------------------------------------------------------
// PostgreSQL: initdb into a temp dir, own port, password auth over TCP.
// ---------------------------------------------------------------------------------------------

/// The newest /usr/lib/postgresql/<version>/bin.
fn pg_bin_dir() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir(root)
        .unwrap_or_else(|e| {
            panic!("PostgreSQL is required ({e} reading {root:?}); scripts/test.sh installs it")
        })
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .unwrap_or_else(|| panic!("no /usr/lib/postgresql/*/bin/initdb; install postgresql"))
}

fn is_root() -> bool {
    // Uid 0 in /proc/self/status (no libc call needed).
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

struct Postgres {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Postgres {
    /// PostgreSQL's tools refuse to run as root: run them as `postgres` then.
    fn cmd(&self, tool: &str) -> Command {
        pg_command(&self.bin, tool)
    }

    fn start() -> Postgres {
        let bin = pg_bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("voxgate-pg-")
            .tempdir()
            .expect("pg temp dir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        fs::write(&pwfile, DB_PASSWORD).unwrap();
        if is_root() {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(ok.success(), "chown the PostgreSQL dir to postgres");
        }
        let port = free_tcp_port();
        let pg = Postgres {
            bin,
            data,
            port,
            _dir: dir,
        };
        let out = pg
            .cmd("initdb")
            .arg("-D")
            .arg(&pg.data)
            .args(["-U", "voxgate", "-E", "UTF8", "--no-sync"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        pg.pg_ctl_start();
        let out = pg
            .cmd("createdb")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &pg.port.to_string(),
                "-U",
                "voxgate",
            ])
            .arg("voxgate")
            .env("PGPASSWORD", DB_PASSWORD)
            .output()
            .expect("createdb");
        assert!(
            out.status.success(),
            "createdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pg
    }

    fn pg_ctl_start(&self) {
        let log = self.data.parent().unwrap().join("postgres.log");
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
            self.port,
            self.data.parent().unwrap().display()
        );
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl start");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(&log).unwrap_or_default()
        );
    }

    fn stop(&self) {
        let out = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"])
            .output()
            .expect("pg_ctl stop");
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn url(&self) -> String {
        format!(
            "postgres://voxgate:{DB_PASSWORD}@127.0.0.1:{}/voxgate",
            self.port
        )
    }

    /// Rows of a query, fields split on '|'.
    fn query(&self, sql: &str) -> Vec<Vec<String>> {
        let out = Command::new(self.bin.join("psql"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-U", "voxgate", "-d", "voxgate", "-At", "-F", "|", "-c", sql,
            ])
            .env("PGPASSWORD", DB_PASSWORD)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_string).collect())
            .collect()
    }
}

fn pg_command(bin: &Path, tool: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin.join(tool));
        c
    } else {
        Command::new(bin.join(tool))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .cmd("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

// ---------------------------------------------------------------------------------------------
// Kamailio: the shipped config, rendered with this test's ports through -A defines.
// ---------------------------------------------------------------------------------------------

struct Kamailio {
    child: Child,
    port: u16,
    log: PathBuf,
    ctl: PathBuf,
    _dir: tempfile::TempDir,
}

impl Kamailio {
    fn start(nodes: &[(&str, u16)]) -> Kamailio {
        let dir = tempfile::Builder::new()
            .prefix("voxgate-kam-")
            .tempdir()
            .unwrap();
        let list = dir.path().join("dispatcher.list");
        let mut text = String::new();
        for (name, port) in nodes {
            text.push_str(&format!("1 sip:127.0.0.1:{port} 0 0 duid={name}\n"));
        }
        fs::write(&list, text).unwrap();
        let port = free_port();
        let log = dir.path().join("kamailio.log");
        let ctl = dir.path().join("ctl");
        let cfg = repo_root().join("deploy/kamailio/kamailio.cfg");
        let child = Command::new("kamailio")
            .args(["-DD", "-E", "-m", "64", "-M", "8", "-f"])
            .arg(&cfg)
            .arg("-A")
            .arg(format!("LISTEN_UDP=udp:127.0.0.1:{port}"))
            .arg("-A")
            .arg(format!("LISTEN_TCP=tcp:127.0.0.1:{port}"))
            .arg("-A")
            .arg(format!("DISPATCHER_LIST=\"{}\"", list.display()))
            .arg("-A")
            .arg(format!("CTL_SOCKET=\"unix:{}\"", ctl.display()))
            .args(["-A", "DS_PING_INTERVAL=1", "-A", "CHILDREN=2"])
            .arg("-Y")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                fs::OpenOptions::new().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .unwrap_or_else(|e| {
                panic!("kamailio is required ({e}); scripts/test.sh installs the Debian package")
            });
        let mut k = Kamailio {
            child,
            port,
            log,
            ctl,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while udp_port_bound(port) != Some(true) || !k.ctl.exists() {
            if let Ok(Some(s)) = k.child.try_wait() {
                panic!("kamailio exited ({s}):\n{}", k.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "kamailio not listening:\n{}",
                k.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        k
    }

    fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The dispatcher's flags for a node (`AP` active, `IP` inactive and probed, `TP`
    /// trying), from `kamcmd dispatcher.list` over the control socket.
    fn flags(&self, port: u16) -> String {
        let out = Command::new("kamcmd")
            .arg("-s")
            .arg(format!("unix:{}", self.ctl.display()))
            .arg("dispatcher.list")
            .output()
            .expect("kamcmd (Debian package kamailio)");
        let text = String::from_utf8_lossy(&out.stdout);
        let uri = format!("URI: sip:127.0.0.1:{port}");
        let mut lines = text.lines().skip_while(|l| l.trim() != uri);
        lines.next();
        lines
            .find_map(|l| l.trim().strip_prefix("FLAGS: ").map(str::to_string))
            .unwrap_or_default()
    }

    /// Waits until the dispatcher holds the node active (`up`) or not; returns how long that
    /// took, polling every 20 ms.
    fn wait_node(&self, port: u16, up: bool, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let flags = self.flags(port);
            if flags.starts_with('A') == up && !flags.is_empty() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < timeout,
                "dispatcher never marked {port} {} within {timeout:?} (flags {flags:?}):\n{}",
                if up { "up" } else { "down" },
                tail(&self.log_text(), 3000)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Kamailio {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "--- kamailio log (tail) ---\n{}",
                tail(&self.log_text(), 6000)
            );
        }
    }
}

fn tail(s: &str, n: usize) -> &str {
    let mut i = s.len().saturating_sub(n);
    while !s.is_char_boundary(i) {
        i += 1;
    }
    &s[i..]
}

// ---------------------------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------------------------

/// What one SIPp run of tests/sipp/scale_call.xml did, per call.
struct Run {
    outcome: SippOutcome,
    /// call-id -> the node's SIP port that answered.
    answered_by: BTreeMap<String, u16>,
    completed: BTreeSet<String>,
}

impl Run {
    fn parse(outcome: SippOutcome) -> Run {
        let mut answered_by = BTreeMap::new();
        let mut completed = BTreeSet::new();
        for line in outcome.logs.lines() {
            let mut words = line.split_whitespace();
            let Some(call_id) = words.next() else {
                continue;
            };
            if line.contains(" answered by sip:voxgate@127.0.0.1:") {
                let port = line
                    .split("answered by sip:voxgate@127.0.0.1:")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                answered_by.insert(call_id.to_string(), port);
            } else if line.trim_end().ends_with(" completed") {
                completed.insert(call_id.to_string());
            }
        }
        Run {
            outcome,
            answered_by,
            completed,
        }
    }

    fn on(&self, port: u16) -> usize {
        self.answered_by.values().filter(|p| **p == port).count()
    }
}

/// `n` calls at `rate` per second through the front door; each holds `hold_ms` after the INFO.
fn calls(front: std::net::SocketAddr, n: u32, rate: u32, hold_ms: u32) -> Sipp {
    Sipp::uac("scale_call.xml", front)
        .calls(n)
        .key("digit", "2")
        .arg("-r")
        .arg(&rate.to_string())
        // At most 60 calls at once: each node's RTP range (harness) holds 100.
        .arg("-l")
        .arg("60")
        .arg("-d")
        .arg(&hold_ms.to_string())
        .timeout_s(180)
}

fn node(name: &str, pg: &Postgres, shared: &Path) -> Gateway {
    Gateway::builder()
        .toml(&format!(
            r#"
shutdown_grace_s = 30
[node]
name = "{name}"
[sip]
# Behind Kamailio every INVITE comes from one source (docs/deploy.md, "The nodes").
invite_rate_per_source = 0.0
max_unconfirmed_per_source = 20
[store]
url = "{url}"
timeout_ms = 2000
[recordings]
shared_url = "file://{shared}"
"#,
            url = pg.url(),
            shared = shared.display()
        ))
        .start()
}

fn sql_list(ids: &BTreeSet<String>) -> String {
    ids.iter()
        .map(|i| format!("'{}'", i.replace('\'', "''")))
        .collect::<Vec<_>>()
        .join(",")
}

/// call-id -> node of the CDRs of these calls in PostgreSQL.
fn cdr_nodes(pg: &Postgres, ids: &BTreeSet<String>) -> BTreeMap<String, String> {
    if ids.is_empty() {
        return BTreeMap::new();
    }
    pg.query(&format!(
        "SELECT call_id, node, body->>'node' FROM cdrs WHERE call_id IN ({})",
        sql_list(ids)
    ))
    .into_iter()
    .map(|r| {
        assert_eq!(r[1], r[2], "the row's node and the CDR's node differ");
        (r[0].clone(), r[1].clone())
    })
    .collect()
}

/// Polls until every call in `ids` has a CDR in PostgreSQL.
fn wait_cdrs(pg: &Postgres, ids: &BTreeSet<String>, timeout: Duration) -> BTreeMap<String, String> {
    let start = Instant::now();
    loop {
        let got = cdr_nodes(pg, ids);
        if got.len() == ids.len() {
            return got;
        }
        assert!(
            start.elapsed() < timeout,
            "{} of {} CDRs in PostgreSQL after {timeout:?}; missing e.g. {:?}",
            got.len(),
            ids.len(),
            ids.iter().find(|i| !got.contains_key(*i))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[test]
fn two_nodes_behind_kamailio_share_one_store() {
    require_sipp();
    let pg = Postgres::start();
    let shared_dir = tempfile::Builder::new()
        .prefix("voxgate-shared-")
        .tempdir()
        .unwrap();
    let mut a = node("a", &pg, shared_dir.path());
    let mut b = node("b", &pg, shared_dir.path());
    let kam = Kamailio::start(&[("a", a.sip_port), ("b", b.sip_port)]);
    kam.wait_node(a.sip_port, true, Duration::from_secs(10));
    kam.wait_node(b.sip_port, true, Duration::from_secs(10));

    // --- 1. 200 calls spread over both nodes -------------------------------------------------
    let run = Run::parse(calls(kam.addr(), 200, 10, 1000).run());
    run.outcome.assert_success();
    assert_eq!(run.answered_by.len(), 200, "every call answered");
    assert_eq!(run.completed.len(), 200, "every call completed");
    let (on_a, on_b) = (run.on(a.sip_port), run.on(b.sip_port));
    eprintln!("scale: 200 calls, node a answered {on_a}, node b {on_b}");
    assert!(
        on_a >= 60 && on_b >= 60,
        "round-robin should spread calls: a={on_a} b={on_b}"
    );
    let ids: BTreeSet<String> = run.answered_by.keys().cloned().collect();
    let nodes = wait_cdrs(&pg, &ids, Duration::from_secs(30));
    for (call_id, port) in &run.answered_by {
        let want = if *port == a.sip_port { "a" } else { "b" };
        assert_eq!(
            nodes[call_id], want,
            "CDR of {call_id} names the wrong node"
        );
    }
    // Each INFO (Signal=2) reached the node owning its dialog (a wrong node answers 481).
    let infos = |gw: &Gateway| dtmf_digits_via(&gw.dtmf_logs(), "info").len();
    assert_eq!((infos(&a), infos(&b)), (on_a, on_b), "INFO digits per node");

    // --- 2. node A's recordings, listed and downloaded through node B ------------------------
    let deadline = Instant::now() + Duration::from_secs(60);
    let (rec_id, rec_sha) = loop {
        let v = b.get("/v1/recordings?limit=1000").unwrap().json();
        let items = v["recordings"].as_array().cloned().unwrap_or_default();
        let of_a: Vec<_> = items.iter().filter(|r| r["node"] == "a").collect();
        let of_b = items.iter().filter(|r| r["node"] == "b").count();
        let shared_a: Vec<_> = of_a
            .iter()
            .filter(|r| r["status"] == "complete" && r["shared_key"].is_string())
            .collect();
        if of_b > 0 && shared_a.len() >= 10 {
            let r = shared_a[0];
            break (
                r["id"].as_str().unwrap().to_string(),
                r["sha256"].as_str().unwrap().to_string(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "node b lists {} recordings of a ({} shared) and {of_b} of its own",
            of_a.len(),
            shared_a.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        !b.recordings_dir().join(format!("{rec_id}.wav")).exists(),
        "the recording must not be local to b"
    );
    let meta = b.get(&format!("/v1/recordings/{rec_id}")).unwrap().json();
    assert_eq!(meta["node"], "a");
    let audio = b.get(&format!("/v1/recordings/{rec_id}/audio")).unwrap();
    assert_eq!(audio.status, 200, "{}", audio.text());
    assert_eq!(audio.header("content-type"), Some("audio/wav"));
    assert_eq!(
        sha256_hex(&audio.body),
        rec_sha,
        "audio via b has a's SHA-256"
    );
    assert_eq!(&audio.body[..4], b"RIFF");
    let part = b
        .get_range(&format!("/v1/recordings/{rec_id}/audio"), "bytes=10-109")
        .unwrap();
    assert_eq!(part.status, 206);
    assert_eq!(part.body, audio.body[10..110]);
    assert_eq!(
        part.header("content-range"),
        Some(format!("bytes 10-109/{}", audio.body.len()).as_str())
    );
    eprintln!("scale: recording {rec_id} of node a downloaded through node b, sha256 ok");
    // The console's waveform and search work on it too: peaks from the shared copy, `q`
    // (case-insensitive, PostgreSQL ILIKE) finds it by a piece of its id.
    let peaks = b
        .get(&format!("/v1/recordings/{rec_id}/peaks?buckets=50"))
        .unwrap();
    assert_eq!(peaks.status, 200, "{}", peaks.text());
    let peaks = peaks.json();
    assert_eq!(
        peaks["peaks"][0].as_array().map(Vec::len),
        Some(50),
        "{peaks}"
    );
    let piece = rec_id[rec_id.len() - 10..].to_uppercase();
    let found = b.get(&format!("/v1/recordings?q={piece}")).unwrap().json();
    let ids: Vec<&str> = found["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["id"].as_str())
        .collect();
    assert_eq!(ids, [rec_id.as_str()], "q={piece}");

    // --- 3. PostgreSQL down for 10 s in the middle of a run ----------------------------------
    let outage = calls(kam.addr(), 100, 5, 1000).spawn();
    std::thread::sleep(Duration::from_secs(3));
    pg.stop();
    let stopped = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let r = a.get("/v1/cdrs").unwrap();
    assert_eq!(
        r.status, 503,
        "reads fail clearly while the database is down"
    );
    std::thread::sleep(Duration::from_secs(10).saturating_sub(stopped.elapsed()));
    pg.pg_ctl_start();
    eprintln!("scale: PostgreSQL was down for {:?}", stopped.elapsed());
    let run = Run::parse(outage.wait());
    run.outcome.assert_success();
    assert_eq!(run.completed.len(), 100);
    let ids: BTreeSet<String> = run.answered_by.keys().cloned().collect();
    let t = Instant::now();
    wait_cdrs(&pg, &ids, Duration::from_secs(60));
    eprintln!(
        "scale: all 100 CDRs of the outage run in PostgreSQL {:?} after the run ended",
        t.elapsed()
    );
    assert_eq!(a.get("/v1/cdrs?limit=1").unwrap().status, 200);

    // --- 4. node B killed mid-run ------------------------------------------------------------
    let first = calls(kam.addr(), 60, 10, 3000).spawn();
    std::thread::sleep(Duration::from_secs(3));
    b.kill9();
    let marked = kam.wait_node(b.sip_port, false, Duration::from_secs(20));
    eprintln!("scale: dispatcher marked node b down {marked:?} after SIGKILL");
    let after = Run::parse(calls(kam.addr(), 60, 10, 1000).run());
    after.outcome.assert_success();
    assert_eq!(after.on(a.sip_port), 60, "every new call went to node a");
    let first = Run::parse(first.wait());
    for (call_id, port) in &first.answered_by {
        if *port == a.sip_port {
            assert!(
                first.completed.contains(call_id),
                "call {call_id} on node a must complete despite b's death"
            );
        }
    }
    eprintln!(
        "scale: run during the kill: {} answered by a (all completed), {} by b ({} of them ended with b)",
        first.on(a.sip_port),
        first.on(b.sip_port),
        first.on(b.sip_port)
            - first
                .answered_by
                .iter()
                .filter(|(c, p)| **p == b.sip_port && first.completed.contains(*c))
                .count()
    );
    // B comes back: the dispatcher puts it back and it takes calls again.
    b.start();
    let back = kam.wait_node(b.sip_port, true, Duration::from_secs(20));
    eprintln!("scale: dispatcher put node b back {back:?} after it restarted");
    let again = Run::parse(calls(kam.addr(), 20, 10, 500).run());
    again.outcome.assert_success();
    assert!(again.on(b.sip_port) > 0 && again.on(a.sip_port) > 0);

    // --- 5. node A drains on SIGTERM ----------------------------------------------------------
    let long = calls(kam.addr(), 10, 10, 8000).spawn();
    std::thread::sleep(Duration::from_secs(3));
    let on_a_before = a.log_count("call ended");
    a.terminate();
    let drained = kam.wait_node(a.sip_port, false, Duration::from_secs(10));
    eprintln!("scale: dispatcher took draining node a out {drained:?} after SIGTERM");
    let during = Run::parse(calls(kam.addr(), 20, 10, 500).run());
    during.outcome.assert_success();
    assert_eq!(
        during.on(b.sip_port),
        20,
        "no new call reached the draining node"
    );
    let long = Run::parse(long.wait());
    long.outcome.assert_success();
    let long_on_a = long.on(a.sip_port);
    assert!(long_on_a > 0, "some long calls were on node a");
    let status = a.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "a drained node exits 0, got {status}");
    assert!(a.log_count("call ended") >= on_a_before + long_on_a);
    let ids: BTreeSet<String> = long.answered_by.keys().cloned().collect();
    let nodes = wait_cdrs(&pg, &ids, Duration::from_secs(20));
    assert_eq!(nodes.values().filter(|n| *n == "a").count(), long_on_a);
}

/// A node with a flow that looks the caller up in `callbacks`, reports what it found, then
/// adds a row for this call.
fn table_node(name: &str, pg: &Postgres, tables: &Path) -> Gateway {
    let flow = r#"
name: shared_tables
start: main
inactivity_s: 0
dialogs:
  main:
    - table: {op: lookup, table: callbacks, where: {number: call.from}, save_as: prev}
    - table: {op: lookup, table: vip, where: {number: call.from}, save_as: vip}
    - track_event: {name: shared_lookup, properties: {before: prev_count, vip: vip.name}}
    - message: {text: "Noted"}
    - table: {op: insert, table: callbacks, values: {number: call.from, note: call.call_id}}
    - close
"#;
    Gateway::builder()
        .flow_yaml(flow)
        .toml(&format!(
            "[node]\nname = \"{name}\"\n[store]\nurl = \"{}\"\ntimeout_ms = 2000\n[tables]\ndir = {:?}\n",
            pg.url(),
            tables.display().to_string()
        ))
        .start()
}

/// Polls `path` on `gw` until `ok` holds for its JSON.
fn wait_json(
    gw: &Gateway,
    path: &str,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = gw
            .get(path)
            .ok()
            .filter(|r| r.status == 200)
            .map(|r| r.json())
            .unwrap_or_default();
        if ok(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "GET {path}: {v}\n{}",
            gw.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn tables_and_transcripts_are_shared_by_every_node() {
    require_sipp();
    let pg = Postgres::start();
    let tables = tempfile::tempdir().unwrap();
    fs::write(
        tables.path().join("vip.csv"),
        "number,name\nsipp,Ann\n+3225550002,Bob\n",
    )
    .unwrap();
    fs::write(tables.path().join("callbacks.csv"), "number,note\n").unwrap();
    let a = table_node("a", &pg, tables.path());
    let b = table_node("b", &pg, tables.path());
    // Both nodes seed the same CSVs; the shared tables hold them once.
    let has_tables = |v: &serde_json::Value| {
        let t = v["tables"].as_array().cloned().unwrap_or_default();
        t.iter().any(|t| t["name"] == "vip") && t.iter().any(|t| t["name"] == "callbacks")
    };
    wait_json(&a, "/v1/tables", has_tables);
    let listed = wait_json(&b, "/v1/tables", has_tables);
    let vip = listed["tables"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "vip")
        .cloned()
        .unwrap();
    assert_eq!(vip["rows"], 2, "seeded once: {listed}");
    assert_eq!(vip["columns"], serde_json::json!(["number", "name"]));

    // A call on node A finds nothing in `callbacks` and adds a row.
    Sipp::uac("uac_remote_bye.xml", a.sip_addr())
        .timeout_s(20)
        .run()
        .assert_success();
    let rows = wait_json(&b, "/v1/tables/callbacks/rows", |v| {
        v["rows"].as_array().is_some_and(|r| r.len() == 1)
    });
    let row_a = rows["rows"][0].clone();
    assert_eq!(row_a["number"], "sipp", "{rows}");
    let call_a = row_a["note"].as_str().unwrap().to_string();
    assert!(!call_a.is_empty());
    // A call on node B: its lookup finds node A's row, then it adds its own.
    Sipp::uac("uac_remote_bye.xml", b.sip_addr())
        .timeout_s(20)
        .run()
        .assert_success();
    let rows = wait_json(&a, "/v1/tables/callbacks/rows", |v| {
        v["rows"].as_array().is_some_and(|r| r.len() == 2)
    });
    assert_eq!(rows["rows"][0], row_a, "{rows}");
    let lookups = wait_json(&a, "/v1/events?name=shared_lookup", |v| {
        v["events"].as_array().is_some_and(|e| e.len() == 2)
    });
    let mut seen: Vec<(String, serde_json::Value, serde_json::Value)> = lookups["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["node"].as_str().unwrap_or("?").to_string(),
                e["properties"]["before"].clone(),
                e["properties"]["vip"].clone(),
            )
        })
        .collect();
    seen.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        seen,
        vec![
            (
                "a".to_string(),
                serde_json::json!(0),
                serde_json::json!("Ann")
            ),
            (
                "b".to_string(),
                serde_json::json!(1),
                serde_json::json!("Ann")
            ),
        ],
        "{lookups}"
    );
    // The rows are PostgreSQL's, each naming the node that wrote it.
    let nodes: BTreeSet<String> = pg
        .query("SELECT node FROM table_rows WHERE table_name = 'callbacks'")
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert_eq!(nodes, BTreeSet::from(["a".to_string(), "b".to_string()]));
    // Node B serves node A's transcript, from the store.
    let t = wait_json(&b, &format!("/v1/calls/{call_a}/transcript"), |v| {
        v["entries"].as_array().is_some_and(|e| !e.is_empty())
    });
    assert!(
        t["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "say" && e["text"] == "Noted"),
        "{t}"
    );
}
