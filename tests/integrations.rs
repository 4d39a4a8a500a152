//! Issue 10, the integration steps, against real components started by each test:
//! an SMTP server (Debian's aiosmtpd, tests/smtp/smtpd.py) and HTTP servers (axum, in the
//! test process).
//!
//! - `mail_starttls_and_auth`: the mail executor (the code behind `send_mail` / `mail_report`)
//!   talks STARTTLS (required) and AUTH to aiosmtpd with a certificate made for the test by
//!   the `openssl` command, delivers a report carrying the transcript, and a wrong password is a
//!   clear `smtp` step error.
//!
//! End to end (the real `voxgate` binary, a SIPp caller, flows written here):
//! - `api_step_on_a_call`: an HTTP server in the test returns JSON; the flow branches on a field
//!   of it, a `session` key of the Chatlayer-shaped reply shows up in the variables (seen through
//!   `track_event` in `/v1/events`); a slow server hits `timeout_ms` and goes to `on_error`; a
//!   host outside `allow_hosts` is refused and its listener never sees a connection.
//! - `code_step_on_a_call`: a script computes a variable and picks the next dialog; an endless
//!   loop and a 10 MiB allocation end as `timeout` / `memory` step errors; the call goes on.
//! - `json_builder_webhook_and_recording_ready`: the webhook receiver gets the signed
//!   `CL_DISPATCH_EVENT` with the evaluated payload, and `recording.ready`; `/v1/events` has both.
//! - `mail_steps_on_a_call`: aiosmtpd receives `send_mail` with the placeholders filled and the
//!   `mail_report` with the transcript (the keys the caller pressed, what the bot said); the
//!   transcript endpoint serves the same after the call.
//! - `table_steps_on_a_call`: a CSV-seeded table is looked up by the caller's number, a row is
//!   inserted and `/v1/tables/{name}/rows` lists it; `' OR 1=1 --` finds nothing.
//! - `offload_refer_and_bridge`: the caller (REFER mode) gets a REFER to the agent URI whose
//!   Refer-To carries `X-Voxgate-Call-Id` and the flow's header, after the offload webhook got the
//!   transcript; in bridge mode a SIPp stand-in at the agent URI gets the INVITE with the headers.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use voxgate::config::{MailConfig, Secret, StartTls};
use voxgate::flow::MailRequest;
use voxgate::integrations::mail::Mailer;
use voxgate::integrations::{RequestContext, Transcript};

/// aiosmtpd, killed on drop.
struct Smtpd {
    child: Child,
    port: u16,
    maildir: PathBuf,
    log: PathBuf,
}

impl Smtpd {
    fn start(dir: &Path, tls: Option<(&Path, &Path)>, auth: Option<(&str, &str)>) -> Smtpd {
        Smtpd::start_on(common::free_tcp_port(), dir, tls, auth)
    }

    fn start_on(
        port: u16,
        dir: &Path,
        tls: Option<(&Path, &Path)>,
        auth: Option<(&str, &str)>,
    ) -> Smtpd {
        let maildir = dir.join("maildir");
        let log = dir.join("smtpd.log");
        let script = common::repo_root().join("tests/smtp/smtpd.py");
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(&script)
            .args(["--port", &port.to_string(), "--maildir"])
            .arg(&maildir);
        if let Some((cert, key)) = tls {
            cmd.arg("--cert").arg(cert).arg("--key").arg(key);
        }
        if let Some((u, p)) = auth {
            cmd.args(["--user", u, "--password", p]);
        }
        let out = std::fs::File::create(&log).expect("smtpd log");
        let child = cmd
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("start /usr/bin/python3 tests/smtp/smtpd.py (python3-aiosmtpd, scripts/test.sh installs it)");
        let s = Smtpd {
            child,
            port,
            maildir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.log_text().contains("listening") {
            assert!(
                Instant::now() < deadline,
                "aiosmtpd did not start: {}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The raw messages received so far.
    fn messages(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) {
            for e in entries.flatten() {
                out.push(std::fs::read_to_string(e.path()).unwrap_or_default());
            }
        }
        out
    }

    fn wait_messages(&self, n: usize, timeout: Duration) -> Vec<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n || Instant::now() > deadline {
                return m;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Smtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test CA and a server certificate for 127.0.0.1 signed by it (the `openssl` command; not
/// linked into voxgate). Returns (CA cert, server cert, server key).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run openssl");
        assert!(st.success(), "openssl {args:?} failed");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=voxgate test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "srv.csr",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "srv.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "cert.pem",
    ]);
    (p("ca.pem"), p("cert.pem"), p("key.pem"))
}

#[test]
fn mail_starttls_and_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let (ca, cert, key) = make_cert(tmp.path());
    let smtpd = Smtpd::start(tmp.path(), Some((&cert, &key)), Some(("bot", "s3cret-pw")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = MailConfig {
            smtp_url: Some(format!("smtp://127.0.0.1:{}", smtpd.port)),
            from: "voxgate@example.com".into(),
            username: Some("bot".into()),
            password: Some(Secret::new("s3cret-pw")),
            starttls: StartTls::Required,
            ca_file: Some(ca.clone()),
            ..MailConfig::default()
        };
        let mailer = Mailer::start(&cfg, None).expect("mailer");
        let start = Instant::now();
        let mut t = Transcript::new("call-42", start, chrono::Utc::now());
        t.say(start, "Welcome to voxgate");
        t.dtmf(start + Duration::from_millis(800), '4');
        t.dtmf(start + Duration::from_millis(1100), '2');
        let ctx = RequestContext {
            call_id: "call-42".into(),
            from: "+3225550001".into(),
            to: "bot".into(),
            transcript: Some(t),
            recording_ids: vec!["rec_20240501T120000_0123456789abcdef".into()],
            websocket_delivered: false,
        };
        let req = MailRequest {
            to: vec!["ops@example.com".into()],
            cc: vec![],
            subject: "Report call-42".into(),
            body: "Transcript below".into(),
            report: true,
        };
        let r = mailer
            .send_step(req.clone(), &ctx, Duration::from_secs(8))
            .await
            .expect("sent");
        assert_eq!(r["sent"], true, "{r}");
        assert!(r["message_id"].as_str().unwrap().ends_with("@voxgate>"));
        let msgs = smtpd.wait_messages(1, Duration::from_secs(5));
        assert_eq!(msgs.len(), 1, "{}", smtpd.log_text());
        let m = &msgs[0];
        assert!(m.contains("Subject: Report call-42"), "{m}");
        assert!(
            m.contains("Caller pressed 4") && m.contains("Keys pressed: 42"),
            "{m}"
        );
        assert!(m.contains("Bot said: Welcome to voxgate"), "{m}");
        assert!(m.contains("rec_20240501T120000_0123456789abcdef"), "{m}");
        assert!(
            smtpd.log_text().contains("auth=bot tls=yes"),
            "{}",
            smtpd.log_text()
        );

        // A wrong password is refused for good: a clear step error, no retry loop.
        let bad = Mailer::start(
            &MailConfig {
                password: Some(Secret::new("wrong")),
                ..cfg.clone()
            },
            None,
        )
        .unwrap();
        let e = bad
            .send_step(req, &ctx, Duration::from_secs(8))
            .await
            .unwrap_err();
        assert_eq!(e.code, "smtp", "{e:?}");
        assert!(!e.message.contains("wrong"), "{e:?}");
    });
}

/// A message queued while the SMTP server is down is kept in the spool; the process stops
/// (its runtime and queue are gone); the next start sends it once the server is there.
#[test]
fn queued_mail_survives_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let spool = tmp.path().join("mail-spool");
    let port = common::free_tcp_port();
    let cfg = MailConfig {
        smtp_url: Some(format!("smtp://127.0.0.1:{port}")),
        from: "voxgate@example.com".into(),
        starttls: StartTls::Never,
        ..MailConfig::default()
    };
    let ctx = RequestContext {
        call_id: "call-7".into(),
        ..RequestContext::default()
    };
    let req = MailRequest {
        to: vec!["ops@example.com".into()],
        cc: vec![],
        subject: "Callback for +3225550001".into(),
        body: "Call +3225550001 back".into(),
        report: false,
    };
    {
        // First run: nothing listens on the port; the step answers "queued, not sent".
        let rt = tokio::runtime::Runtime::new().unwrap();
        let r = rt.block_on(async {
            let mailer = Mailer::start(&cfg, Some(spool.clone())).expect("mailer");
            mailer
                .send_step(req, &ctx, Duration::from_millis(1500))
                .await
                .expect("queued")
        });
        assert_eq!(
            (&r["queued"], &r["sent"]),
            (&json!(true), &json!(false)),
            "{r}"
        );
        // The process stops: its queue and retries are gone with the runtime.
        rt.shutdown_timeout(Duration::from_secs(1));
    }
    let files: Vec<_> = std::fs::read_dir(&spool).unwrap().flatten().collect();
    assert_eq!(files.len(), 1, "one spooled message");
    // The SMTP server is back, and the gateway starts again with the same spool.
    let smtpd = Smtpd::start_on(port, tmp.path(), None, None);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let _mailer = Mailer::start(&cfg, Some(spool.clone())).expect("mailer");
        let deadline = Instant::now() + Duration::from_secs(20);
        while smtpd.messages().is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let msgs = smtpd.messages();
        assert_eq!(msgs.len(), 1, "{}", smtpd.log_text());
        assert!(
            msgs[0].contains("Subject: Callback for +3225550001"),
            "{}",
            msgs[0]
        );
        assert!(msgs[0].contains("Call +3225550001 back"), "{}", msgs[0]);
        // Sent: its spool file is gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::fs::read_dir(&spool).unwrap().count() > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(std::fs::read_dir(&spool).unwrap().count(), 0);
    });
}

// ---------------------------------------------------------------------------------------------
// End to end: HTTP peers in the test process (axum on a runtime of its own)
// ---------------------------------------------------------------------------------------------

/// One request an HTTP peer received: (arrival, path, headers, body).
type Got = (Instant, String, Vec<(String, String)>, Vec<u8>);
type Seen = Arc<Mutex<Vec<Got>>>;

/// An HTTP server on 127.0.0.1 (a port of its own), answering per path, recording requests.
struct Peer {
    addr: SocketAddr,
    seen: Seen,
    _rt: tokio::runtime::Runtime,
}

impl Peer {
    fn start() -> Peer {
        use axum::extract::State;
        use axum::http::{HeaderMap, StatusCode, Uri};
        use axum::response::IntoResponse;
        async fn any(
            State(seen): State<Seen>,
            uri: Uri,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::response::Response {
            let h = headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            seen.lock()
                .unwrap()
                .push((Instant::now(), uri.to_string(), h, body.to_vec()));
            match uri.path() {
                "/customer" => axum::Json(json!({
                    "vip": true, "name": "Ann",
                    "session": {"tier": "gold"}
                }))
                .into_response(),
                "/slow" => {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    "late".into_response()
                }
                _ => StatusCode::NO_CONTENT.into_response(),
            }
        }
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let seen: Seen = Arc::default();
        let app = axum::Router::new().fallback(any).with_state(seen.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
        Peer {
            addr,
            seen,
            _rt: rt,
        }
    }

    fn requests(&self, path_prefix: &str) -> Vec<Got> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.1.starts_with(path_prefix))
            .cloned()
            .collect()
    }

    fn wait(&self, path_prefix: &str, n: usize, timeout: Duration) -> Vec<Got> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.requests(path_prefix);
            if r.len() >= n || Instant::now() > deadline {
                return r;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn header<'a>(h: &'a [(String, String)], name: &str) -> Option<&'a str> {
    h.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// A TCP listener that only counts connections.
fn canary() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let n2 = n.clone();
    std::thread::spawn(move || {
        for c in l.incoming() {
            if c.is_ok() {
                n2.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    (port, n)
}

fn events(gw: &common::Gateway, name: &str) -> Vec<Value> {
    let r = gw
        .get(&format!("/v1/events?name={name}"))
        .expect("GET /v1/events");
    r.json()["events"].as_array().cloned().unwrap_or_default()
}

/// Waits until `/v1/events?name=` has at least one event, returning the newest.
fn event(gw: &common::Gateway, name: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(e) = events(gw, name).into_iter().next() {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no `{name}` event; log:\n{}",
            gw.log_tail(60)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A step error event that says "timed out" (the flow's timer or the executor's).
fn is_timeout(ev: &Value) -> bool {
    let p = &ev["properties"];
    p["code"] == "timeout" || (p["code"] == "request" && p["detail"] == "timeout")
}

/// One call that waits for the gateway's BYE (answering a REFER in between).
fn call_until_bye(gw: &common::Gateway) -> common::SippOutcome {
    common::Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(40)
        .run()
}

const T10: Duration = Duration::from_secs(10);

#[test]
fn api_step_on_a_call() {
    common::require_sipp();
    let peer = Peer::start();
    let (canary_port, hits) = canary();
    let flow = format!(
        r#"
name: api
start: main
inactivity_s: 0
on_error: failed
dialogs:
  main:
    - api: {{url: "http://{addr}/customer?number={{call.from}}", save_as: resp, timeout_ms: 3000}}
    - condition: {{expr: "resp.body.vip", then: vip, else: failed}}
  vip:
    - track_event: {{name: api_vip, properties: {{tier: tier, status: resp.status, name: resp.body.name}}}}
    - api: {{url: "http://{addr}/slow", timeout_ms: 300, on_error: slow}}
    - goto: failed
  slow:
    - track_event: {{name: api_slow, properties: {{code: error.code, detail: error.detail_code}}}}
    - api: {{url: "http://localhost:{canary_port}/x", timeout_ms: 2000, on_error: refused}}
    - goto: failed
  refused:
    - track_event: {{name: api_refused, properties: {{code: error.code, detail: error.detail_code}}}}
    - close
  failed:
    - track_event: {{name: api_failed, properties: {{code: error.code, message: error.message}}}}
    - close
"#,
        addr = peer.addr
    );
    let gw = common::Gateway::builder()
        .flow_yaml(&flow)
        .toml("[integrations]\nallow_hosts = [\"127.0.0.1\"]")
        .start();
    call_until_bye(&gw).assert_success();
    let vip = event(&gw, "api_vip", T10);
    assert_eq!(
        vip["properties"],
        json!({"tier": "gold", "status": 200, "name": "Ann"}),
        "{vip}"
    );
    let got = peer.requests("/customer");
    assert_eq!(got.len(), 1);
    assert!(got[0].1.contains("number=sipp"), "{}", got[0].1);
    // The executor's own timeout (a `request` error with detail `timeout`) or the flow's
    // (`timeout`), whichever fires first: both are the step's timeout.
    assert!(is_timeout(&event(&gw, "api_slow", T10)));
    let refused = event(&gw, "api_refused", T10);
    assert_eq!(
        refused["properties"],
        json!({"code": "request", "detail": "refused"}),
        "{refused}"
    );
    assert!(
        events(&gw, "api_failed").is_empty(),
        "{:?}",
        events(&gw, "api_failed")
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "no connection to a host outside the allow-list"
    );
}

#[test]
fn code_step_on_a_call() {
    common::require_sipp();
    let flow = r#"
name: code
start: main
inactivity_s: 0
on_error: failed
variables: {a: 2, b: 3}
dialogs:
  main:
    - code: {source: "new ChatlayerResponseBuilder().setSessionVariable('total', args.a + args.b).setNextDialogState('done').send()", timeout_ms: 2000}
    - goto: failed
  done:
    - track_event: {name: code_total, properties: {total: total}}
    - code: {source: "while (true) {}", timeout_ms: 300, on_error: loop_err}
    - goto: failed
  loop_err:
    - track_event: {name: code_loop, properties: {code: error.code, detail: error.detail_code}}
    - code: {source: "const b = new ArrayBuffer(10 * 1024 * 1024); new ChatlayerResponseBuilder().send()", memory_kb: 4096, timeout_ms: 2000, on_error: mem_err}
    - goto: failed
  mem_err:
    - track_event: {name: code_memory, properties: {code: error.code, detail: error.detail_code}}
    - message: {text: "still here"}
    - close
  failed:
    - track_event: {name: code_failed, properties: {code: error.code, message: error.message}}
    - close
"#;
    let gw = common::Gateway::builder().flow_yaml(flow).start();
    call_until_bye(&gw).assert_success();
    assert_eq!(event(&gw, "code_total", T10)["properties"]["total"], 5);
    assert!(is_timeout(&event(&gw, "code_loop", T10)));
    let mem = event(&gw, "code_memory", T10);
    assert_eq!(
        mem["properties"],
        json!({"code": "request", "detail": "memory"}),
        "{mem}"
    );
    assert!(
        events(&gw, "code_failed").is_empty(),
        "{:?}",
        events(&gw, "code_failed")
    );
    // The call went on after both errors: the bot still spoke.
    let cdr = gw.get("/v1/cdrs?limit=1").unwrap().json()["cdrs"][0].clone();
    let call_id = cdr["call_id"].as_str().unwrap().to_string();
    let t = gw
        .get(&format!("/v1/calls/{call_id}/transcript"))
        .unwrap()
        .json();
    let said: Vec<&str> = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "say")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(said, ["still here"], "{t}");
}

#[test]
fn json_builder_webhook_and_recording_ready() {
    common::require_sipp();
    let hook = Peer::start();
    let flow = r#"
name: dispatch
start: main
inactivity_s: 0
variables: {lang: nl}
dialogs:
  main:
    - start_recording
    - json_builder: {payload: {language: lang, caller: call.from, n: "1 + 2"}}
    - delay: {ms: 600}
    - stop_recording
    - close
"#;
    let gw = common::Gateway::builder()
        .flow_yaml(flow)
        .toml(&format!(
            "[events]\nwebhook_url = \"http://{}/hook\"\nsecret = \"hook-secret\"",
            hook.addr
        ))
        .start();
    call_until_bye(&gw).assert_success();
    let got = hook.wait("/hook", 2, T10);
    let bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_slice(&r.3).unwrap())
        .collect();
    let d = bodies
        .iter()
        .position(|b| b["type"] == "CL_DISPATCH_EVENT")
        .expect("CL_DISPATCH_EVENT posted");
    assert_eq!(
        bodies[d]["payload"],
        json!({"language": "nl", "caller": "sipp", "n": 3})
    );
    assert!(bodies[d]["call_id"].as_str().is_some_and(|c| !c.is_empty()));
    // The signature: HMAC-SHA256(secret, "<timestamp>.<body>").
    let h = &got[d].2;
    let ts = header(h, "x-voxgate-timestamp").unwrap();
    let want = voxgate_signature("hook-secret", ts, &got[d].3);
    assert_eq!(header(h, "x-voxgate-signature"), Some(want.as_str()));
    let r = bodies
        .iter()
        .find(|b| b["type"] == "recording.ready")
        .expect("recording.ready posted");
    assert!(r["recording"]["id"].as_str().unwrap().starts_with("rec_"));
    assert_eq!(
        event(&gw, "CL_DISPATCH_EVENT", T10)["properties"]["language"],
        "nl"
    );
    event(&gw, "recording.ready", T10);
}

/// `sha256=<hex>` computed here with the `hmac` crate, independently of voxgate's code path.
fn voxgate_signature(secret: &str, ts: &str, body: &[u8]) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

#[test]
fn mail_steps_on_a_call() {
    common::require_sipp();
    let tmp = tempfile::tempdir().unwrap();
    let smtpd = Smtpd::start(tmp.path(), None, None);
    let flow = r#"
name: mail
start: main
inactivity_s: 0
dialogs:
  main:
    - message: {text: "Welcome to voxgate"}
    - collect: {max_digits: 2, terminator: "", variable: keys, timeout_ms: 8000, inter_digit_timeout_ms: 6000}
    - send_mail: {to: ["ops@example.com"], subject: "Callback for {call.from}", body: "Call {call.from} back, keys {keys}"}
    - mail_report: {to: ["ops@example.com"], subject: "Report {call.call_id}", body: "Transcript below"}
    - close
"#;
    let gw = common::Gateway::builder()
        .flow_yaml(flow)
        .toml(&format!(
            "[mail]\nsmtp_url = \"smtp://127.0.0.1:{}\"\nfrom = \"voxgate@example.com\"",
            smtpd.port
        ))
        .start();
    common::Sipp::uac("flow_two_keys.xml", gw.sip_addr())
        .key("d1", "4")
        .key("d2", "2")
        .timeout_s(40)
        .run()
        .assert_success();
    let msgs = smtpd.wait_messages(2, T10);
    assert_eq!(msgs.len(), 2, "{}\n{}", smtpd.log_text(), gw.log_tail(40));
    let plain = msgs
        .iter()
        .find(|m| m.contains("Subject: Callback for sipp"))
        .expect("send_mail");
    assert!(plain.contains("Call sipp back, keys 42"), "{plain}");
    let report = msgs
        .iter()
        .find(|m| m.contains("Subject: Report "))
        .expect("mail_report");
    for want in [
        "Transcript below",
        "Bot said: Welcome to voxgate",
        "Caller pressed 4",
        "Caller pressed 2",
        "Keys pressed: 42",
    ] {
        assert!(report.contains(want), "{want}: {report}");
    }
    // The same transcript over HTTP after the call.
    let cdr = gw.get("/v1/cdrs?limit=1").unwrap().json()["cdrs"][0].clone();
    let call_id = cdr["call_id"].as_str().unwrap().to_string();
    let t = gw
        .get(&format!("/v1/calls/{call_id}/transcript"))
        .unwrap()
        .json();
    let digits: String = t["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "dtmf")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(digits, "42", "{t}");
    assert!(
        t["entries"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "step" && e["step"] == "mail_report"),
        "{t}"
    );
}

#[test]
fn table_steps_on_a_call() {
    common::require_sipp();
    let tables = tempfile::tempdir().unwrap();
    std::fs::write(
        tables.path().join("vip.csv"),
        "number,name\nsipp,Ann\n+3225550002,Bob\n",
    )
    .unwrap();
    std::fs::write(tables.path().join("callbacks.csv"), "number,note\n").unwrap();
    // DTMF cannot type a quote: the hostile text stands in a variable the lookup uses like
    // caller input (the unit tests send it through every operation).
    let flow = r#"
name: tables
start: main
inactivity_s: 0
variables: {typed: "' OR 1=1 --"}
dialogs:
  main:
    - table: {op: lookup, table: vip, where: {number: call.from}, save_as: vip}
    - track_event: {name: vip_lookup, properties: {name: vip.name, count: vip_count}}
    - table: {op: insert, table: callbacks, values: {number: call.from, note: "'called'"}}
    - table: {op: lookup, table: vip, where: {number: typed}, save_as: evil}
    - track_event: {name: evil_lookup, properties: {count: evil_count, row: evil}}
    - close
"#;
    let gw = common::Gateway::builder()
        .flow_yaml(flow)
        .toml(&format!(
            "[tables]\ndir = {:?}",
            tables.path().display().to_string()
        ))
        .start();
    call_until_bye(&gw).assert_success();
    assert_eq!(
        event(&gw, "vip_lookup", T10)["properties"],
        json!({"name": "Ann", "count": 1})
    );
    assert_eq!(
        event(&gw, "evil_lookup", T10)["properties"],
        json!({"count": 0, "row": null})
    );
    let rows = gw.get("/v1/tables/callbacks/rows").unwrap().json();
    assert_eq!(
        rows["rows"],
        json!([{"_id": 1, "number": "sipp", "note": "called"}]),
        "{rows}"
    );
    let list = gw.get("/v1/tables").unwrap().json();
    assert!(
        list["tables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["name"] == "vip" && t["rows"] == 2),
        "{list}"
    );
}

#[test]
fn offload_refer_and_bridge() {
    common::require_sipp();
    let hook = Peer::start();
    let agent_port = common::free_port();
    let flow = format!(
        r#"
name: offload
start: main
inactivity_s: 0
dialogs:
  main:
    - message: {{text: "Connecting you to an agent"}}
    - offload: {{to: "sip:agents@127.0.0.1:{agent_port}", headers: {{X-Customer: "'Ann'"}}, on_failure: failed}}
  failed:
    - track_event: {{name: offload_failed, properties: {{}}}}
    - close
"#
    );
    let hook_toml = format!(
        "[transfer]\nallow_uris = [\"127.0.0.1\"]\nmode = \"refer\"\n[offload]\nwebhook_url = \"http://{}/offload\"",
        hook.addr
    );
    // REFER: the caller is told to call the agent, with the context headers in the Refer-To.
    let gw = common::Gateway::builder()
        .flow_yaml(&flow)
        .toml(&hook_toml)
        .start();
    let out = call_until_bye(&gw);
    out.assert_success();
    let refer = out
        .messages
        .split("\n\n")
        .find(|m| m.contains("REFER sip:"))
        .map(str::to_string)
        .unwrap_or_default();
    let refer_to = refer
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("refer-to:"))
        .unwrap_or_default();
    assert!(
        refer_to.contains(&format!("sip:agents@127.0.0.1:{agent_port}?")),
        "{refer_to}\n{}",
        out.messages
    );
    assert!(
        refer_to.contains("X-Voxgate-Call-Id=") && refer_to.contains("X-Customer=Ann"),
        "{refer_to}"
    );
    let posted = hook.wait("/offload", 1, T10);
    assert_eq!(posted.len(), 1);
    let body: Value = serde_json::from_slice(&posted[0].3).unwrap();
    assert_eq!(body["type"], "offload");
    assert_eq!(body["target"], format!("sip:agents@127.0.0.1:{agent_port}"));
    let said: Vec<&str> = body["transcript"]["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "say")
        .filter_map(|e| e["text"].as_str())
        .collect();
    assert_eq!(said, ["Connecting you to an agent"], "{body}");
    // The webhook went out before the REFER (the gateway's own log order).
    let log = gw.log_text();
    let (w, r) = (
        log.find("offload webhook delivered"),
        log.find("sending REFER"),
    );
    assert!(
        w.is_some() && r.is_some() && w < r,
        "webhook then REFER:\n{}",
        gw.log_tail(40)
    );
    assert!(events(&gw, "offload_failed").is_empty());
    drop(gw);

    // Bridge: a SIPp stand-in at the agent URI gets the INVITE with the headers.
    let gw = common::Gateway::builder()
        .flow_yaml(&flow)
        .toml(&hook_toml.replace("mode = \"refer\"", "mode = \"bridge\""))
        .start();
    let agent = common::Sipp::uas("xfer_trunk_answer.xml", agent_port)
        .key("number", "agents")
        .key("hold_ms", "1500")
        .key("rtp_port", &common::free_port().to_string())
        .timeout_s(40)
        .spawn();
    let caller = call_until_bye(&gw);
    let agent = agent.wait();
    caller.assert_success();
    agent.assert_success();
    let invite = agent
        .messages
        .split("\n\n")
        .find(|m| m.contains("INVITE sip:agents@"))
        .unwrap_or_default()
        .to_string();
    assert!(invite.contains("X-Voxgate-Call-Id:"), "{invite}");
    assert!(invite.contains("X-Customer: Ann"), "{invite}");
}
