//! Twilio Media Streams mode, end to end: the real `voxgate` binary with
//! `flow.protocol = "twilio"`, SIPp as the caller, and a bot written here only from Twilio's
//! public documentation ("Media Streams - WebSocket Messages", "Webhooks Security"): it
//! checks `X-Twilio-Signature` on the upgrade, reads `connected` then `start`, sends `media`,
//! `mark` and `clear` with its `streamSid`, and closes the stream itself.
//!
//! The caller (tests/sipp/caller_then_silent.xml) speaks for 3 s and then sends no RTP at all,
//! so the stream has to carry the caller's silence.

mod common;

use base64::Engine;
use common::*;
use futures::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const AUTH_TOKEN: &str = "twilio-test-auth-token";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Script {
    /// One 7 s `media` + mark "utterance"; when it comes back, 5 s + mark "cut", `clear` 1 s
    /// later; when "cut" comes back, close the stream.
    Utterance,
    /// A message between the limit and twice it and a mark (refused, the call goes on), then
    /// one over twice the limit (the gateway closes with 1009).
    Oversized,
}

#[derive(Default)]
struct Seen {
    /// Request path, Host and X-Twilio-Signature of the upgrade.
    upgrade: Option<(String, String, Option<String>)>,
    msgs: Vec<(Instant, Value)>,
    /// When the bot sent what (by label).
    sent: Vec<(&'static str, Instant)>,
    /// The gateway's close frame, if one came.
    gateway_close: Option<(u16, String)>,
    /// The bot sent its own close frame.
    bot_closed: bool,
    /// The connection ended after a close handshake (no reset, no error).
    clean_end: bool,
}

struct Bot {
    url: String,
    seen: Arc<Mutex<Seen>>,
    _rt: tokio::runtime::Runtime,
}

impl Bot {
    fn start(script: Script) -> Bot {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s2 = seen.clone();
        rt.spawn(async move {
            if let Ok((tcp, _)) = listener.accept().await {
                serve(tcp, script, s2).await;
            }
        });
        Bot {
            url: format!("ws://{addr}/media"),
            seen,
            _rt: rt,
        }
    }

    fn msgs(&self) -> Vec<Value> {
        let s = self.seen.lock().unwrap();
        s.msgs.iter().map(|(_, v)| v.clone()).collect()
    }

    fn events(&self, e: &str) -> Vec<(Instant, Value)> {
        let s = self.seen.lock().unwrap();
        s.msgs
            .iter()
            .filter(|(_, v)| v["event"] == e)
            .cloned()
            .collect()
    }

    fn sent(&self, label: &str) -> Instant {
        let s = self.seen.lock().unwrap();
        s.sent
            .iter()
            .find(|(l, _)| *l == label)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| panic!("the bot never sent {label}"))
    }

    fn wait_until(&self, what: &str, timeout: Duration, f: impl Fn(&Seen) -> bool) {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if f(&self.seen.lock().unwrap()) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("timed out waiting for {what}");
    }
}

/// μ-law bytes of a 440 Hz tone (G.711 μ-law, as Twilio's `media.payload` is).
fn tone_ulaw(seconds: f64) -> Vec<u8> {
    let n = (seconds * 8000.0) as usize;
    (0..n)
        .map(|i| {
            let x = (i as f64 / 8000.0 * 440.0 * std::f64::consts::TAU).sin() * 8000.0;
            linear_to_ulaw(x as i16)
        })
        .collect()
}

/// ITU-T G.711 μ-law encoding of one sample (the classic segment table; written here, not
/// taken from voxgate).
fn linear_to_ulaw(sample: i16) -> u8 {
    const SEG_END: [i32; 8] = [0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF, 0x3FFF, 0x7FFF];
    let (mut pcm, mask) = if sample < 0 {
        (-(sample as i32), 0x7F)
    } else {
        (sample as i32, 0xFF)
    };
    pcm = pcm.min(32635) + 0x84;
    let seg = SEG_END.iter().position(|&end| pcm <= end).unwrap_or(7) as i32;
    let uval = (seg << 4) | ((pcm >> (seg + 3)) & 0x0F);
    (uval ^ mask) as u8
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Twilio's signature as its security documentation describes it: HMAC-SHA1 of the full URL
/// (plus sorted POST parameters, none for a WebSocket) with the auth token, base64.
fn twilio_signature(token: &str, url: &str) -> String {
    let mut mac = Hmac::<Sha1>::new_from_slice(token.as_bytes()).unwrap();
    mac.update(url.as_bytes());
    b64(&mac.finalize().into_bytes())
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn serve(tcp: tokio::net::TcpStream, script: Script, seen: Arc<Mutex<Seen>>) {
    let seen_cb = seen.clone();
    let cb = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                   resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
        let h = |n: &str| {
            req.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(String::from)
        };
        seen_cb.lock().unwrap().upgrade = Some((
            req.uri().to_string(),
            h("host").unwrap_or_default(),
            h("x-twilio-signature"),
        ));
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
        return;
    };
    let (mut tx, mut rx) = ws.split();
    let mark = |seen: &Arc<Mutex<Seen>>, label: &'static str| {
        seen.lock().unwrap().sent.push((label, Instant::now()));
    };
    let text = |v: Value| Message::Text(v.to_string().into());
    let mut sid = String::new();
    let mut clear_at: Option<Instant> = None;
    let mut close_at: Option<Instant> = None;
    let mut way_over_at: Option<Instant> = None;
    loop {
        let wake = [clear_at, close_at, way_over_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(60));
        let frame = tokio::select! {
            f = rx.next() => f,
            _ = tokio::time::sleep_until(wake.into()) => {
                if clear_at.is_some_and(|t| Instant::now() >= t) {
                    clear_at = None;
                    tx.send(text(json!({"event": "clear", "streamSid": sid}))).await.ok();
                    mark(&seen, "clear");
                }
                if way_over_at.is_some_and(|t| Instant::now() >= t) {
                    way_over_at = None;
                    // ~200 KB: over twice the limit.
                    let m = json!({"event": "media", "streamSid": sid,
                                   "media": {"payload": b64(&tone_ulaw(18.0))}});
                    tx.send(text(m)).await.ok();
                    mark(&seen, "way-over");
                }
                if close_at.is_some_and(|t| Instant::now() >= t) {
                    close_at = None;
                    let frame = CloseFrame { code: CloseCode::Normal, reason: "bot done".into() };
                    tx.send(Message::Close(Some(frame))).await.ok();
                    seen.lock().unwrap().bot_closed = true;
                }
                continue;
            }
        };
        let msg = match frame {
            Some(Ok(m)) => m,
            Some(Err(_)) => return,
            None => {
                let mut s = seen.lock().unwrap();
                s.clean_end = s.gateway_close.is_some();
                return;
            }
        };
        let v: Value = match msg {
            Message::Text(t) => serde_json::from_str(t.as_str()).unwrap_or(Value::Null),
            Message::Close(f) => {
                seen.lock().unwrap().gateway_close =
                    f.map(|f| (u16::from(f.code), f.reason.to_string()));
                continue;
            }
            _ => continue,
        };
        seen.lock().unwrap().msgs.push((Instant::now(), v.clone()));
        match (script, v["event"].as_str().unwrap_or("")) {
            (Script::Utterance, "start") => {
                sid = v["streamSid"].as_str().unwrap_or("").to_string();
                let m = json!({"event": "media", "streamSid": sid,
                               "media": {"payload": b64(&tone_ulaw(7.0))}});
                tx.send(text(m)).await.ok();
                tx.send(text(json!({"event": "mark", "streamSid": sid,
                                    "mark": {"name": "utterance"}})))
                    .await
                    .ok();
                mark(&seen, "utterance");
            }
            (Script::Utterance, "mark") if v["mark"]["name"] == "utterance" => {
                let m = json!({"event": "media", "streamSid": sid,
                               "media": {"payload": b64(&tone_ulaw(5.0))}});
                tx.send(text(m)).await.ok();
                tx.send(text(
                    json!({"event": "mark", "streamSid": sid, "mark": {"name": "cut"}}),
                ))
                .await
                .ok();
                mark(&seen, "cut");
                clear_at = Some(Instant::now() + Duration::from_secs(1));
            }
            (Script::Utterance, "mark") if v["mark"]["name"] == "cut" => {
                close_at = Some(Instant::now() + Duration::from_millis(500));
            }
            (Script::Oversized, "start") => {
                sid = v["streamSid"].as_str().unwrap_or("").to_string();
                // ~100 KB: over the 64 KiB limit, under twice it.
                let m = json!({"event": "media", "streamSid": sid,
                               "media": {"payload": b64(&tone_ulaw(9.0))}});
                tx.send(text(m)).await.ok();
                mark(&seen, "over");
                tx.send(text(json!({"event": "mark", "streamSid": sid,
                                    "mark": {"name": "after-over"}})))
                    .await
                    .ok();
            }
            (Script::Oversized, "error")
                if v["error"]["code"] == "too_large" && seen.lock().unwrap().sent.len() == 1 =>
            {
                // The stream is still up: listen for a second, then go way over.
                way_over_at = Some(Instant::now() + Duration::from_secs(1));
            }
            _ => {}
        }
    }
}

fn gateway(bot: &Bot, extra: &str) -> Gateway {
    Gateway::builder()
        .toml(&format!(
            "[flow]\nwebsocket_url = \"{}\"\nprotocol = \"twilio\"\n{extra}",
            bot.url
        ))
        .start()
}

fn seq(v: &Value) -> u64 {
    v["sequenceNumber"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no string sequenceNumber: {v}"))
}

#[test]
fn twilio_bot_from_the_docs_runs_a_whole_call() {
    require_sipp();
    let bot = Bot::start(Script::Utterance);
    let gw = gateway(
        &bot,
        &format!(
            "twilio_auth_token = \"{AUTH_TOKEN}\"\n\
             twilio_account_sid = \"AC0123456789abcdef0123456789abcdef\"\n\
             twilio_parameters = {{ tenant = \"acme\" }}\n\
             twilio_parameter_headers = [\"X-Customer-Id\"]\n"
        ),
    );
    let out = Sipp::uac("caller_then_silent.xml", gw.sip_addr())
        .key("customer", "c-42")
        .timeout_s(60)
        .run();
    out.assert_success();
    bot.wait_until("the end of the stream", Duration::from_secs(10), |s| {
        s.clean_end
    });
    let msgs = bot.msgs();

    // The upgrade carries a valid X-Twilio-Signature for the URL the bot is reached at.
    let (path, host, signature) = bot.seen.lock().unwrap().upgrade.clone().unwrap();
    assert_eq!(path, "/media");
    let url = format!("ws://{host}{path}");
    assert_eq!(
        signature.as_deref(),
        Some(twilio_signature(AUTH_TOKEN, &url).as_str()),
        "signature for {url}"
    );
    assert!(
        !gw.log_contains(AUTH_TOKEN),
        "the auth token reached the log"
    );

    // `connected` exactly as Twilio sends it, then `start` numbered "1".
    assert_eq!(
        msgs[0],
        json!({"event": "connected", "protocol": "Call", "version": "1.0.0"})
    );
    let start = &msgs[1];
    assert_eq!(start["event"], "start");
    assert_eq!(start["sequenceNumber"], "1");
    let sid = start["streamSid"].as_str().unwrap();
    let st = &start["start"];
    assert_eq!(st["streamSid"], sid);
    let sid_shaped = |prefix: &str, s: &Value| {
        let s = s.as_str().unwrap_or("");
        s.len() == 34 && s.starts_with(prefix) && s[2..].bytes().all(|b| b.is_ascii_hexdigit())
    };
    assert!(sid_shaped("MZ", &start["streamSid"]), "{start}");
    assert!(sid_shaped("CA", &st["callSid"]), "{start}");
    assert_eq!(st["accountSid"], "AC0123456789abcdef0123456789abcdef");
    assert_eq!(st["tracks"], json!(["inbound"]));
    assert_eq!(
        st["mediaFormat"],
        json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1})
    );
    let params = &st["customParameters"];
    assert_eq!(params["from"], "sipp");
    assert_eq!(params["tenant"], "acme");
    assert_eq!(params["X-Customer-Id"], "c-42");
    let call_id = params["sipCallId"].as_str().unwrap();
    assert!(
        out.messages.contains(&format!("Call-ID: {call_id}")),
        "sipCallId {call_id} is not SIPp's Call-ID"
    );

    // Every message after `connected` is numbered, from 1, one more each time, on this stream.
    let seqs: Vec<u64> = msgs[1..].iter().map(seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    assert!(msgs[1..].iter().all(|m| m["streamSid"] == sid));
    assert!(bot.events("error").is_empty(), "{:?}", bot.events("error"));

    // Inbound media: chunks from 1, 160 bytes of μ-law each, timestamps in ms since start.
    let media = bot.events("media");
    for (i, (_, m)) in media.iter().enumerate() {
        let i = i as u64;
        assert_eq!(m["media"]["track"], "inbound");
        assert_eq!(m["media"]["chunk"], (i + 1).to_string());
        assert_eq!(m["media"]["timestamp"], (i * 20).to_string());
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(m["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert_eq!(bytes.len(), 160);
    }
    // 50 a second for the whole stream, through the caller's silence: count arrivals in every
    // whole second between `start` and the bot's close.
    let t_start = bot.events("start")[0].0;
    let t_last = media.last().unwrap().0;
    let secs = (t_last - t_start).as_secs();
    assert!(secs >= 8, "stream of only {secs} s");
    for s in 1..secs {
        let from = t_start + Duration::from_secs(s);
        let to = from + Duration::from_secs(1);
        let n = media.iter().filter(|(t, _)| *t >= from && *t < to).count();
        assert!((40..=60).contains(&n), "{n} media messages in second {s}");
    }
    // The caller stopped sending after 3 s: what follows is μ-law silence, not a gap.
    let late: Vec<&Value> = media
        .iter()
        .filter(|(t, _)| *t > t_start + Duration::from_secs(5))
        .map(|(_, m)| m)
        .collect();
    assert!(late.len() > 100, "{} media messages after 5 s", late.len());
    for m in &late {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(m["media"]["payload"].as_str().unwrap())
            .unwrap();
        assert!(bytes.iter().all(|&b| b == 0xFF || b == 0x7F), "{m}");
    }

    // The 7 s utterance played whole: its mark came back no sooner than 7 s of audio.
    let marks = bot.events("mark");
    let names: Vec<&str> = marks
        .iter()
        .map(|(_, m)| m["mark"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["utterance", "cut"]);
    let played = marks[0].0 - bot.sent("utterance");
    assert!(
        played >= Duration::from_millis(6900),
        "mark after {played:?}"
    );
    // `clear` dropped the rest of the 5 s message: its mark came back at once, not 4 s later.
    let after_clear = marks[1].0.saturating_duration_since(bot.sent("clear"));
    assert!(
        after_clear < Duration::from_millis(1500),
        "cleared mark after {after_clear:?}"
    );

    // A clean close: the bot closed, the gateway answered with its close frame, no `stop`
    // after the bot's close, and the call ended with a BYE (SIPp succeeded above).
    let s = bot.seen.lock().unwrap();
    assert!(s.bot_closed);
    assert_eq!(s.gateway_close.as_ref().map(|c| c.0), Some(1000));
    assert!(s.clean_end);
    drop(s);
    assert!(bot.events("stop").is_empty());
    assert!(gw.log_contains("the bot closed the stream"));
}

#[test]
fn oversized_messages_are_refused_out_loud() {
    require_sipp();
    let bot = Bot::start(Script::Oversized);
    let gw = gateway(&bot, "websocket_max_message_bytes = 65536\n");
    Sipp::uac("caller_then_silent.xml", gw.sip_addr())
        .key("customer", "c-1")
        .timeout_s(30)
        .run()
        .assert_success();
    bot.wait_until("the gateway's close frame", Duration::from_secs(10), |s| {
        s.gateway_close.is_some()
    });
    let errors = bot.events("error");
    assert_eq!(errors.len(), 2, "{errors:?}");
    for (_, e) in &errors {
        assert_eq!(e["error"]["code"], "too_large");
        assert!(
            e["error"]["message"]
                .as_str()
                .unwrap()
                .contains("65536-byte limit"),
            "{e}"
        );
    }
    // The first (under twice the limit) left the stream up: media kept flowing after it.
    let first_error = errors[0].0;
    let way_over = bot.sent("way-over");
    let between = bot
        .events("media")
        .iter()
        .filter(|(t, _)| *t > first_error && *t < way_over)
        .count();
    assert!(between >= 25, "{between} media messages between the two");
    // The second could not be read: the gateway closed with 1009 (Message Too Big).
    let close = bot.seen.lock().unwrap().gateway_close.clone();
    assert_eq!(close.as_ref().map(|c| c.0), Some(1009), "{close:?}");
    assert!(gw.log_contains("message from the bot refused"));
    // The refused audio was not queued: the mark sent right after it came back at once
    // (9 s later had it been played).
    let marks = bot.events("mark");
    assert_eq!(marks.len(), 1, "{marks:?}");
    assert_eq!(marks[0].1["mark"]["name"], "after-over");
    let echo = marks[0].0 - bot.sent("over");
    assert!(echo < Duration::from_secs(2), "mark after {echo:?}");
}

// ---------------------------------------------------------------------------------------------
// A real consumer from the ecosystem: pipecat (TwilioFrameSerializer, FastAPIWebsocketTransport,
// a pipeline run by PipelineRunner), installed by scripts/test.sh into target/ecosystem-venv.
// ---------------------------------------------------------------------------------------------

/// The Python that has pipecat: `VOXGATE_PIPECAT_PYTHON`, else the venv scripts/test.sh makes.
/// Fails (never skips) when it is missing.
fn require_pipecat() -> std::path::PathBuf {
    let python = std::env::var_os("VOXGATE_PIPECAT_PYTHON")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| repo_root().join("target/ecosystem-venv/bin/python"));
    let ok = std::process::Command::new(&python)
        .args(["-c", "import pipecat.serializers.twilio, fastapi, uvicorn"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "pipecat is required for this test but {} cannot import it. \
         Run scripts/test.sh (it creates target/ecosystem-venv), or set VOXGATE_PIPECAT_PYTHON.",
        python.display()
    );
    python
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn pipecat_twilio_bot_exchanges_audio_with_voxgate() {
    require_sipp();
    let python = require_pipecat();
    let dir = tempfile::tempdir().unwrap();
    let result = dir.path().join("result.json");
    let port_file = dir.path().join("port");
    let log = std::fs::File::create(dir.path().join("bot.log")).unwrap();
    let _bot = Child(
        std::process::Command::new(python)
            .arg(repo_root().join("tests/ecosystem/pipecat_twilio_bot.py"))
            .arg("--result")
            .arg(&result)
            .arg("--port-file")
            .arg(&port_file)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start the pipecat bot"),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let port = loop {
        if let Some(p) = std::fs::read_to_string(&port_file)
            .ok()
            .and_then(|s| s.trim().parse::<u16>().ok())
        {
            break p;
        }
        assert!(
            Instant::now() < deadline,
            "the pipecat bot did not start:\n{}",
            std::fs::read_to_string(dir.path().join("bot.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let gw = Gateway::builder()
        .toml(&format!(
            "[flow]\nwebsocket_url = \"ws://127.0.0.1:{port}/media\"\nprotocol = \"twilio\"\n\
             twilio_auth_token = \"{AUTH_TOKEN}\"\n"
        ))
        .start();
    let out = Sipp::uac("caller_echo.xml", gw.sip_addr())
        .key("customer", "c-9")
        .arg("-rtp_echo")
        .timeout_s(40)
        .run();
    let bot_log = || std::fs::read_to_string(dir.path().join("bot.log")).unwrap_or_default();
    assert!(
        out.code == Some(0),
        "SIPp failed (no BYE?): {:?}\n{}\n--- bot ---\n{}",
        out.code,
        gw.log_tail(40),
        bot_log()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !result.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let r: Value = serde_json::from_str(
        &std::fs::read_to_string(&result)
            .unwrap_or_else(|_| panic!("no result from the bot\n{}", bot_log())),
    )
    .unwrap();
    // pipecat recognised a Twilio stream and took its ids from `start`.
    assert_eq!(r["transport_type"], "twilio", "{r}");
    assert!(
        r["stream_id"].as_str().unwrap_or("").starts_with("MZ"),
        "{r}"
    );
    assert!(r["call_id"].as_str().unwrap_or("").starts_with("CA"), "{r}");
    assert_eq!(
        r["body"]["X-Customer-Id"],
        Value::Null,
        "not configured: {r}"
    );
    assert_eq!(r["body"]["from"], "sipp", "{r}");
    // It heard the caller's stream and, in it, its own tone played by voxgate to the caller
    // and echoed back: audio went both ways through voxgate.
    let heard = r["tone_ms_heard"].as_u64().unwrap_or(0);
    assert!(heard >= 400, "{r}");
    assert!(r["audio_ms_in"].as_u64().unwrap_or(0) >= heard, "{r}");
    assert_eq!(r["pipeline_done"], true, "{r}");
    let sig = r["signature"].as_str().unwrap_or("");
    assert_eq!(
        sig,
        twilio_signature(AUTH_TOKEN, &format!("ws://127.0.0.1:{port}/media"))
    );
    // The pipeline's end closed the WebSocket, which ended the call (the BYE SIPp got).
    assert!(
        gw.log_contains("the bot closed the stream"),
        "{}",
        gw.log_tail(30)
    );
}
