//! Issue 10, the integration steps, against real components started by each test:
//! an SMTP server (Debian's aiosmtpd, tests/smtp/smtpd.py) and HTTP servers (axum, in the
//! test process).
//!
//! - `mail_starttls_and_auth`: the mail executor (the code behind `send_mail` / `mail_report`)
//!   talks STARTTLS (required) and AUTH to aiosmtpd with a certificate made for the test by
//!   the `openssl` command, delivers a report carrying the transcript, and a wrong password is a
//!   clear `smtp` step error.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::json;
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
        let port = common::free_tcp_port();
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
        let s = Smtpd { child, port, maildir, log };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !s.log_text().contains("listening") {
            assert!(Instant::now() < deadline, "aiosmtpd did not start: {}", s.log_text());
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

/// A self-signed certificate for 127.0.0.1 (the `openssl` command; not linked into voxgate).
fn make_cert(dir: &Path) -> (PathBuf, PathBuf) {
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let st = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run openssl");
    assert!(st.success(), "openssl req failed");
    (cert, key)
}

#[test]
fn mail_starttls_and_auth() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = make_cert(tmp.path());
    let smtpd = Smtpd::start(tmp.path(), Some((&cert, &key)), Some(("bot", "s3cret-pw")));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let cfg = MailConfig {
            smtp_url: Some(format!("smtp://127.0.0.1:{}", smtpd.port)),
            from: "voxgate@example.com".into(),
            username: Some("bot".into()),
            password: Some(Secret::new("s3cret-pw")),
            starttls: StartTls::Required,
            ca_file: Some(cert.clone()),
            ..MailConfig::default()
        };
        let mailer = Mailer::start(&cfg).expect("mailer");
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
        let r = mailer.send_step(req.clone(), &ctx, Duration::from_secs(8)).await.expect("sent");
        assert_eq!(r["sent"], true, "{r}");
        assert!(r["message_id"].as_str().unwrap().ends_with("@voxgate>"));
        let msgs = smtpd.wait_messages(1, Duration::from_secs(5));
        assert_eq!(msgs.len(), 1, "{}", smtpd.log_text());
        let m = &msgs[0];
        assert!(m.contains("Subject: Report call-42"), "{m}");
        assert!(m.contains("Caller pressed 4") && m.contains("Keys pressed: 42"), "{m}");
        assert!(m.contains("Bot said: Welcome to voxgate"), "{m}");
        assert!(m.contains("rec_20240501T120000_0123456789abcdef"), "{m}");
        assert!(smtpd.log_text().contains("auth=bot tls=yes"), "{}", smtpd.log_text());

        // A wrong password is refused for good: a clear step error, no retry loop.
        let bad = Mailer::start(&MailConfig { password: Some(Secret::new("wrong")), ..cfg.clone() }).unwrap();
        let e = bad.send_step(req, &ctx, Duration::from_secs(8)).await.unwrap_err();
        assert_eq!(e.code, "smtp", "{e:?}");
        assert!(!e.message.contains("wrong"), "{e:?}");
    });
    let _ = json!(null);
}
