//! WebSocket bridge, end to end: the real `voxgate` binary with `flow.websocket_url` set, a
//! bot written here (tokio-tungstenite server on 127.0.0.1:0), and SIPp placing the call.
//! Every text message the gateway sends is validated against docs/websocket-protocol.schema.json.

mod common;

use common::*;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

// ---------------------------------------------------------------------------------------------
// A small validator for the JSON Schema subset the protocol schema uses: type, const, enum,
// required, properties, items, minimum, allOf, oneOf, $ref (#/$defs/...).
// ---------------------------------------------------------------------------------------------

fn schema() -> Value {
    let text = std::fs::read_to_string(repo_root().join("docs/websocket-protocol.schema.json"))
        .expect("schema file");
    serde_json::from_str(&text).expect("schema is JSON")
}

fn type_ok(t: &str, v: &Value) -> bool {
    match t {
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "boolean" => v.is_boolean(),
        "null" => v.is_null(),
        _ => false,
    }
}

fn validate(root: &Value, s: &Value, v: &Value, path: &str) -> Result<(), String> {
    if let Some(r) = s.get("$ref").and_then(Value::as_str) {
        let name = r.trim_start_matches("#/$defs/");
        return validate(root, &root["$defs"][name], v, path);
    }
    match s.get("type") {
        Some(Value::String(t)) if !type_ok(t, v) => return Err(format!("{path}: not {t}")),
        Some(Value::Array(ts)) if !ts.iter().any(|t| type_ok(t.as_str().unwrap_or(""), v)) => {
            return Err(format!("{path}: not any of {ts:?}"))
        }
        _ => {}
    }
    if let Some(c) = s.get("const") {
        if c != v {
            return Err(format!("{path}: {v} != {c}"));
        }
    }
    if let Some(Value::Array(e)) = s.get("enum") {
        if !e.contains(v) {
            return Err(format!("{path}: {v} not in enum"));
        }
    }
    if let (Some(m), Some(n)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if n < m {
            return Err(format!("{path}: {n} < {m}"));
        }
    }
    if let Some(obj) = v.as_object() {
        if let Some(Value::Array(req)) = s.get("required") {
            for k in req {
                let k = k.as_str().unwrap_or("");
                if !obj.contains_key(k) {
                    return Err(format!("{path}: missing `{k}`"));
                }
            }
        }
        if let Some(Value::Object(props)) = s.get("properties") {
            for (k, ps) in props {
                if let Some(x) = obj.get(k) {
                    validate(root, ps, x, &format!("{path}.{k}"))?;
                }
            }
        }
    }
    if let (Some(items), Some(arr)) = (s.get("items"), v.as_array()) {
        for (i, x) in arr.iter().enumerate() {
            validate(root, items, x, &format!("{path}[{i}]"))?;
        }
    }
    if let Some(Value::Array(all)) = s.get("allOf") {
        for a in all {
            validate(root, a, v, path)?;
        }
    }
    if let Some(Value::Array(one)) = s.get("oneOf") {
        let ok: Vec<usize> = one
            .iter()
            .enumerate()
            .filter(|(_, o)| validate(root, o, v, path).is_ok())
            .map(|(i, _)| i)
            .collect();
        if ok.len() != 1 {
            return Err(format!("{path}: matches {} oneOf branches: {v}", ok.len()));
        }
    }
    Ok(())
}

#[test]
fn schema_validator_rejects_what_it_should() {
    let s = schema();
    let good = json!({"type":"dtmf","call_id":"c","seq":3,"ts":"t","digit":"5","duration_ms":80});
    validate(&s, &s, &good, "$").unwrap();
    for bad in [
        json!({"type":"dtmf","call_id":"c","seq":3,"ts":"t","digit":"X","duration_ms":80}),
        json!({"type":"dtmf","call_id":"c","ts":"t","digit":"5","duration_ms":80}),
        json!({"type":"dtmf","call_id":"c","seq":0,"ts":"t","digit":"5","duration_ms":80}),
        json!({"type":"nope","call_id":"c","seq":3,"ts":"t"}),
        json!({"event":"media","sequenceNumber":"1"}),
    ] {
        assert!(validate(&s, &s, &bad, "$").is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// The bot
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Debug)]
enum Script {
    /// Answer, stream 2 s of audio with a mark behind it, start recording; stay until the end.
    Talk,
    /// reject {486}.
    Reject,
    /// Answer, then close {clear_session} after 1 s.
    Close,
    /// Answer, then transfer to +3225551212.
    Transfer,
    /// Answer, then drop the socket after 1 s (first connection); on a reconnect, resume from
    /// seq 1 and then close.
    Drop,
    /// Twilio Media Streams: send audio and a mark, never decide anything.
    Twilio,
    /// Answer, send 7 s of audio in one binary message and a mark; hang up when it comes back.
    Utterance,
    /// Answer, `dispatch` an event; hang up once its `CL_DISPATCH_EVENT` comes back.
    Dispatch,
}

#[derive(Default)]
struct Seen {
    texts: Vec<Value>,
    /// Arrival of each text message (same order as `texts`).
    arrivals: Vec<Instant>,
    /// When the Utterance script sent its audio.
    utterance_sent: Option<Instant>,
    /// The gateway's close frame status, when one came.
    gateway_close: Option<u16>,
    schema_errors: Vec<String>,
    /// (connection number, arrival) of each binary frame and its size.
    binary: Vec<(usize, Instant, usize)>,
    connections: usize,
    auth: Vec<Option<String>>,
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
            let mut n = 0;
            while let Ok((tcp, _)) = listener.accept().await {
                n += 1;
                let seen = s2.clone();
                tokio::spawn(serve(tcp, n, script, seen));
            }
        });
        Bot {
            url: format!("ws://{addr}/bot"),
            seen,
            _rt: rt,
        }
    }

    fn texts(&self) -> Vec<Value> {
        self.seen.lock().unwrap().texts.clone()
    }

    fn of_type(&self, t: &str) -> Vec<Value> {
        self.texts()
            .into_iter()
            .filter(|v| v["type"] == t || v["event"] == t)
            .collect()
    }

    fn wait_for(&self, t: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if !self.of_type(t).is_empty() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    #[track_caller]
    fn assert_schema_clean(&self) {
        let s = self.seen.lock().unwrap();
        assert!(!s.texts.is_empty(), "the bot got no message");
        assert!(
            s.schema_errors.is_empty(),
            "messages not matching the schema: {:#?}",
            s.schema_errors
        );
        // seq is monotonic within each connection's fresh messages (native only).
        let seqs: Vec<u64> = s.texts.iter().filter_map(|v| v["seq"].as_u64()).collect();
        assert!(!seqs.is_empty() || s.texts[0]["event"].is_string());
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn serve(tcp: tokio::net::TcpStream, conn: usize, script: Script, seen: Arc<Mutex<Seen>>) {
    let seen_cb = seen.clone();
    let cb = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                   resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
        let auth = req
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(String::from);
        seen_cb.lock().unwrap().auth.push(auth);
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(tcp, cb).await else {
        return;
    };
    seen.lock().unwrap().connections += 1;
    let schema = schema();
    let (mut tx, mut rx) = ws.split();
    let started = Instant::now();
    let mut acted = false;
    let send = |v: Value| Message::Text(v.to_string().into());
    loop {
        let next = tokio::time::timeout(Duration::from_millis(100), rx.next()).await;
        let msg = match next {
            Ok(Some(Ok(m))) => Some(m),
            Ok(_) => return,
            Err(_) => None,
        };
        let mut got: Option<Value> = None;
        match msg {
            Some(Message::Text(t)) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                let mut s = seen.lock().unwrap();
                if let Err(e) = validate(&schema, &schema, &v, "$") {
                    s.schema_errors.push(e);
                }
                s.texts.push(v.clone());
                s.arrivals.push(Instant::now());
                got = Some(v);
            }
            Some(Message::Binary(b)) => {
                seen.lock()
                    .unwrap()
                    .binary
                    .push((conn, Instant::now(), b.len()));
            }
            Some(Message::Close(f)) => {
                seen.lock().unwrap().gateway_close = f.map(|f| u16::from(f.code));
                // Keep reading: the reply goes out, then the stream ends.
                continue;
            }
            _ => {}
        }
        let is = |t: &str| got.as_ref().map(|v| v["type"] == t).unwrap_or(false);
        match script {
            Script::Reject if is("session.start") => {
                tx.send(send(json!({"type":"reject","id":"r1","sip_code":486})))
                    .await
                    .ok();
            }
            Script::Talk if is("session.start") => {
                tx.send(send(json!({"type":"answer","id":"a1"}))).await.ok();
                tx.send(send(json!({"type":"record.start","id":"rec1"})))
                    .await
                    .ok();
                // 2 s of a 400 Hz tone, then a mark behind it.
                for f in 0..100 {
                    let frame: Vec<u8> = (0..160)
                        .flat_map(|i| {
                            let t = (f * 160 + i) as f64 / 8000.0;
                            (((t * 400.0 * std::f64::consts::TAU).sin() * 8000.0) as i16)
                                .to_le_bytes()
                        })
                        .collect();
                    tx.send(Message::Binary(frame.into())).await.ok();
                }
                tx.send(send(json!({"type":"mark","id":"m1","name":"after-tone"})))
                    .await
                    .ok();
            }
            Script::Close | Script::Transfer | Script::Drop if is("session.start") => {
                let reconnect = got
                    .as_ref()
                    .map(|v| v["reconnect"] == true)
                    .unwrap_or(false);
                if reconnect {
                    if !acted {
                        acted = true;
                        tx.send(send(json!({"type":"resume","id":"res","last_seq":1})))
                            .await
                            .ok();
                    }
                } else {
                    tx.send(send(json!({"type":"answer","id":"a1"}))).await.ok();
                }
            }
            Script::Drop
                if is("result") && got.as_ref().map(|v| v["id"] == "res").unwrap_or(false) =>
            {
                tx.send(send(json!({"type":"close"}))).await.ok();
            }
            Script::Transfer if !acted && started.elapsed() > Duration::from_millis(500) => {
                acted = true;
                tx.send(send(
                    json!({"type":"transfer","id":"t1","to":"+3225551212"}),
                ))
                .await
                .ok();
            }
            Script::Close if !acted && started.elapsed() > Duration::from_millis(1000) => {
                acted = true;
                tx.send(send(json!({"type":"close","id":"c1","clear_session":true})))
                    .await
                    .ok();
            }
            Script::Drop if conn == 1 && started.elapsed() > Duration::from_millis(1000) => {
                // Drop without a close frame: the TCP connection just goes away.
                return;
            }
            Script::Utterance if is("session.start") => {
                tx.send(send(json!({"type":"answer"}))).await.ok();
                // 7 s of a 300 Hz tone in one binary message (112 000 bytes).
                let audio: Vec<u8> = (0..56_000)
                    .flat_map(|i| {
                        let t = i as f64 / 8000.0;
                        (((t * 300.0 * std::f64::consts::TAU).sin() * 8000.0) as i16).to_le_bytes()
                    })
                    .collect();
                tx.send(Message::Binary(audio.into())).await.ok();
                tx.send(send(json!({"type":"mark","name":"utterance"})))
                    .await
                    .ok();
                seen.lock().unwrap().utterance_sent = Some(Instant::now());
            }
            Script::Dispatch if is("session.start") => {
                tx.send(send(json!({"type":"answer"}))).await.ok();
                let from = got.as_ref().map(|v| v["from"].clone()).unwrap_or_default();
                tx.send(send(json!({"type":"dispatch","id":"d1",
                    "payload":{"language":"nl","caller":from,"items":[1,2]}})))
                    .await
                    .ok();
            }
            Script::Dispatch if is("CL_DISPATCH_EVENT") => {
                tx.send(send(json!({"type":"hangup"}))).await.ok();
            }
            Script::Utterance if is("playback.mark") => {
                tx.send(send(json!({"type":"hangup"}))).await.ok();
            }
            Script::Twilio
                if !acted && got.as_ref().map(|v| v["event"] == "start").unwrap_or(false) =>
            {
                acted = true;
                let sid = got.as_ref().unwrap()["streamSid"].clone();
                let payload = {
                    use base64::Engine;
                    base64::engine::general_purpose::STANDARD.encode([0x55u8; 160])
                };
                for _ in 0..50 {
                    tx.send(send(
                        json!({"event":"media","streamSid":sid,"media":{"payload":payload}}),
                    ))
                    .await
                    .ok();
                }
                tx.send(send(
                    json!({"event":"mark","streamSid":sid,"mark":{"name":"tw-mark"}}),
                ))
                .await
                .ok();
            }
            _ => {}
        }
    }
}

fn gateway(bot: &Bot, extra: &str) -> Gateway {
    Gateway::builder()
        .toml(&format!(
            "[flow]\nwebsocket_url = \"{}\"\nwebsocket_token = \"s3cret\"\n{extra}",
            bot.url
        ))
        .start()
}

fn call_end(gw: &Gateway) -> CallEndStats {
    assert!(
        gw.wait_for_log_count("rtp_tx_packets", 1, Duration::from_secs(10)),
        "no call end\n{}",
        gw.log_tail(60)
    );
    gw.call_end_stats().pop().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn bot_answers_hears_the_caller_and_dtmf_and_talks_back() {
    require_sipp();
    let bot = Bot::start(Script::Talk);
    let gw = gateway(&bot, "");
    let out = Sipp::uac("uac_basic.xml", gw.sip_addr()).run();
    out.assert_success();
    assert!(bot.wait_for("session.end", Duration::from_secs(10)));
    bot.assert_schema_clean();
    let start = &bot.of_type("session.start")[0];
    assert_eq!(start["from"], "sipp", "{start}");
    assert_eq!(start["seq"], 1);
    assert_eq!(
        bot.seen.lock().unwrap().auth[0].as_deref(),
        Some("Bearer s3cret")
    );
    let digits: Vec<String> = bot
        .of_type("dtmf")
        .iter()
        .map(|v| v["digit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(digits, vec!["1", "2", "#"]);
    // ack + result for every command with an id.
    for id in ["a1", "rec1", "m1"] {
        let acks = bot
            .texts()
            .iter()
            .filter(|v| v["type"] == "ack" && v["id"] == id)
            .count();
        let results = bot
            .texts()
            .iter()
            .filter(|v| v["type"] == "result" && v["id"] == id)
            .count();
        assert_eq!((acks, results), (1, 1), "id {id}: {:#?}", bot.texts());
    }
    let mark = &bot.of_type("playback.mark")[0];
    assert_eq!(mark["name"], "after-tone");
    assert!(!bot.of_type("recording.started").is_empty());
    // Caller audio: 320-byte frames at ~50 per second.
    let bins = bot.seen.lock().unwrap().binary.clone();
    assert!(bins.len() > 100, "only {} frames", bins.len());
    assert!(bins.iter().all(|b| b.2 == 320));
    let span = bins.last().unwrap().1 - bins[0].1;
    let rate = (bins.len() - 1) as f64 / span.as_secs_f64();
    assert!((40.0..=60.0).contains(&rate), "{rate} frames/s");
    // Seq is strictly increasing.
    let seqs: Vec<u64> = bot
        .texts()
        .iter()
        .filter_map(|v| v["seq"].as_u64())
        .collect();
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    // The bot's 2 s of audio went out as RTP.
    let end = call_end(&gw);
    assert!(end.rtp_tx_packets >= 90, "tx {}", end.rtp_tx_packets);
    // record.start took effect on the call: a complete recording exists on disk and in the API.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let rec = loop {
        let list = gw.get("/v1/recordings").expect("list").json();
        let first = list["recordings"]
            .as_array()
            .and_then(|a| a.first().cloned());
        match first {
            Some(r) if r["status"] == "complete" => break r,
            _ if std::time::Instant::now() > deadline => panic!("no complete recording: {list}"),
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    assert!(rec["duration_ms"].as_u64().unwrap_or(0) >= 2000, "{rec}");
    let id = rec["id"].as_str().unwrap();
    assert!(gw.recordings_dir().join(format!("{id}.wav")).exists());
}

#[test]
fn reject_486_before_answer_reaches_sipp() {
    require_sipp();
    let bot = Bot::start(Script::Reject);
    let gw = gateway(&bot, "");
    Sipp::uac("ws_reject_486.xml", gw.sip_addr())
        .timeout_s(15)
        .run()
        .assert_success();
    assert!(bot.wait_for("session.end", Duration::from_secs(5)));
    bot.assert_schema_clean();
    assert_eq!(bot.of_type("session.end")[0]["reason"], "rejected");
}

#[test]
fn close_from_the_bot_sends_bye() {
    require_sipp();
    let bot = Bot::start(Script::Close);
    let gw = gateway(&bot, "");
    Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(20)
        .run()
        .assert_success();
    bot.assert_schema_clean();
    assert!(bot.wait_for("session.end", Duration::from_secs(5)));
    let end = &bot.of_type("session.end")[0];
    assert_eq!(end["reason"], "bot_closed");
    assert!(gw.wait_for_log("conversation closed", Duration::from_secs(5)));
}

#[test]
fn transfer_from_the_bot_sends_refer() {
    require_sipp();
    let bot = Bot::start(Script::Transfer);
    let gw = gateway(&bot, "[transfer]\nmode = \"refer\"\n");
    let out = Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(30)
        .run();
    out.assert_success();
    assert!(out.messages.contains("REFER sip:"), "no REFER");
    assert!(bot.wait_for("transfer.completed", Duration::from_secs(5)));
    bot.assert_schema_clean();
    let res: Vec<Value> = bot
        .of_type("result")
        .into_iter()
        .filter(|v| v["id"] == "t1")
        .collect();
    assert_eq!(res.len(), 1);
    assert_eq!(res[0]["ok"], true);
}

#[test]
fn dropped_socket_with_prompt_policy_plays_fallback_then_bye() {
    require_sipp();
    let bot = Bot::start(Script::Drop);
    let prompt = prompts_dir().join("greeting.wav");
    let gw = gateway(
        &bot,
        &format!(
            "websocket_on_drop = \"prompt\"\nwebsocket_fallback_prompt = \"{}\"\n",
            prompt.display()
        ),
    );
    Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(30)
        .run()
        .assert_success();
    assert!(gw.log_contains("bot unavailable: failure policy"));
    let end = call_end(&gw);
    // The fallback prompt went out as RTP before the BYE.
    assert!(end.rtp_tx_packets > 20, "tx {}", end.rtp_tx_packets);
    assert_eq!(bot.seen.lock().unwrap().connections, 1);
}

#[test]
fn dropped_socket_with_forward_policy_sends_refer() {
    require_sipp();
    let bot = Bot::start(Script::Drop);
    let gw = gateway(
        &bot,
        "websocket_on_drop = \"forward\"\nwebsocket_fallback_number = \"+3225551212\"\n[transfer]\nmode = \"refer\"\n",
    );
    let out = Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(30)
        .run();
    out.assert_success();
    assert!(
        out.messages.contains("+3225551212"),
        "no REFER to the fallback"
    );
}

#[test]
fn dropped_socket_with_reconnect_policy_resumes_and_replays() {
    require_sipp();
    let bot = Bot::start(Script::Drop);
    let gw = gateway(&bot, "websocket_on_drop = \"reconnect\"\n");
    Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(30)
        .run()
        .assert_success();
    assert!(bot.wait_for("session.end", Duration::from_secs(5)));
    bot.assert_schema_clean();
    assert_eq!(
        bot.seen.lock().unwrap().connections,
        2,
        "{:#?}",
        bot.texts()
    );
    let texts = bot.texts();
    // The replay covers everything after last_seq, the reconnect's own session.start too.
    let mut starts: Vec<&Value> = texts
        .iter()
        .filter(|v| v["type"] == "session.start")
        .collect();
    starts.dedup_by_key(|v| v["seq"].as_u64());
    assert_eq!(starts.len(), 2, "{texts:#?}");
    assert_eq!(starts[1]["reconnect"], true);
    // resume {last_seq: 1} replays seq 2.. : the first connection's ack and result for the
    // answer (seq 2 and 3) arrive again, with the same seq.
    for seq in [2, 3] {
        let copies: Vec<&Value> = texts.iter().filter(|v| v["seq"] == seq).collect();
        assert_eq!(copies.len(), 2, "seq {seq}: {texts:#?}");
        assert_eq!(copies[0], copies[1]);
        assert_eq!(copies[0]["id"], "a1");
    }
    let call_ids: Vec<&Value> = starts.iter().map(|v| &v["call_id"]).collect();
    assert_eq!(call_ids[0], call_ids[1]);
}

#[test]
fn twilio_mode_bot_runs_unchanged() {
    require_sipp();
    let bot = Bot::start(Script::Twilio);
    let gw = gateway(&bot, "protocol = \"twilio\"\n");
    Sipp::uac("uac_basic.xml", gw.sip_addr())
        .run()
        .assert_success();
    assert!(bot.wait_for("stop", Duration::from_secs(10)));
    bot.assert_schema_clean();
    let events: Vec<String> = bot
        .texts()
        .iter()
        .map(|v| v["event"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(events[0], "connected");
    assert_eq!(events[1], "start");
    let media = events.iter().filter(|e| *e == "media").count();
    assert!(media > 100, "{media} media messages");
    let digits: Vec<String> = bot
        .of_type("dtmf")
        .iter()
        .map(|v| v["dtmf"]["digit"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(digits, vec!["1", "2", "#"]);
    assert_eq!(bot.of_type("mark")[0]["mark"]["name"], "tw-mark");
    let end = call_end(&gw);
    assert!(end.rtp_tx_packets >= 45, "tx {}", end.rtp_tx_packets);
    // The caller hung up: `stop` is the last message, then a close frame (1000).
    assert_eq!(events.last().map(String::as_str), Some("stop"));
    let deadline = Instant::now() + Duration::from_secs(5);
    while bot.seen.lock().unwrap().gateway_close.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bot.seen.lock().unwrap().gateway_close, Some(1000));
}

#[test]
fn native_bot_gets_continuous_audio_through_silence_and_plays_a_whole_utterance() {
    require_sipp();
    let bot = Bot::start(Script::Utterance);
    let gw = gateway(&bot, "");
    Sipp::uac("caller_then_silent.xml", gw.sip_addr())
        .key("customer", "c-7")
        .timeout_s(40)
        .run()
        .assert_success();
    assert!(bot.wait_for("session.end", Duration::from_secs(10)));
    bot.assert_schema_clean();
    assert!(
        bot.of_type("error").is_empty(),
        "{:#?}",
        bot.of_type("error")
    );
    let s = bot.seen.lock().unwrap();
    // The 7 s message (over the old 64 KiB limit) played whole before its mark came back.
    let i = s
        .texts
        .iter()
        .position(|v| v["type"] == "playback.mark")
        .expect("mark");
    assert_eq!(s.texts[i]["name"], "utterance");
    assert_eq!(s.texts[i]["cleared"], false);
    let played = s.arrivals[i] - s.utterance_sent.unwrap();
    assert!(
        played >= Duration::from_millis(6900),
        "mark after {played:?}"
    );
    // Caller audio kept coming at 50 frames a second after the caller fell silent (3 s).
    let bins = &s.binary;
    let t0 = bins[0].1;
    let last = bins.last().unwrap().1;
    let secs = (last - t0).as_secs();
    assert!(secs >= 6, "audio for only {secs} s");
    for k in 1..secs {
        let from = t0 + Duration::from_secs(k);
        let n = bins
            .iter()
            .filter(|b| b.1 >= from && b.1 < from + Duration::from_secs(1))
            .count();
        assert!((40..=60).contains(&n), "{n} frames in second {k}");
    }
    assert!(bins.iter().all(|b| b.2 == 320));
    // After session.end the gateway closed the socket with a close frame.
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while bot.seen.lock().unwrap().gateway_close.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(bot.seen.lock().unwrap().gateway_close, Some(1000));
}

/// A webhook receiver: every request's headers and body.
type Hooks = Arc<Mutex<Vec<(Vec<(String, String)>, Vec<u8>)>>>;

fn webhook_receiver(rt: &tokio::runtime::Runtime) -> (SocketAddr, Hooks) {
    async fn hook(
        axum::extract::State(seen): axum::extract::State<Hooks>,
        headers: axum::http::HeaderMap,
        body: axum::body::Bytes,
    ) -> axum::http::StatusCode {
        let h = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
            .collect();
        seen.lock().unwrap().push((h, body.to_vec()));
        axum::http::StatusCode::NO_CONTENT
    }
    let seen: Hooks = Arc::default();
    let app = axum::Router::new().fallback(hook).with_state(seen.clone());
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, app).await.ok() });
    (addr, seen)
}

#[test]
fn dispatch_from_the_bot_reaches_the_webhook_the_journal_and_the_bot() {
    require_sipp();
    let bot = Bot::start(Script::Dispatch);
    let (hook_addr, hooks) = webhook_receiver(&bot._rt);
    let gw = gateway(
        &bot,
        &format!("[events]\nwebhook_url = \"http://{hook_addr}/hook\"\nsecret = \"hook-secret\"\n"),
    );
    Sipp::uac("uac_remote_bye.xml", gw.sip_addr())
        .timeout_s(20)
        .run()
        .assert_success();
    assert!(bot.wait_for("session.end", Duration::from_secs(5)));
    bot.assert_schema_clean();
    let want = json!({"language": "nl", "caller": "sipp", "items": [1, 2]});
    // The bot got the event back, then its command's result.
    let ev = bot.of_type("CL_DISPATCH_EVENT");
    assert_eq!(ev.len(), 1, "{:#?}", bot.texts());
    assert_eq!(ev[0]["payload"], want);
    assert_eq!(ev[0]["id"], "d1");
    assert_eq!(ev[0]["webhook"], "queued");
    let call_id = ev[0]["call_id"].as_str().unwrap().to_string();
    let res: Vec<Value> = bot
        .of_type("result")
        .into_iter()
        .filter(|v| v["id"] == "d1")
        .collect();
    assert_eq!(res.len(), 1);
    assert_eq!(
        (&res[0]["command"], &res[0]["ok"]),
        (&json!("dispatch"), &json!(true))
    );
    // The webhook got the same event, signed as for the embedded json_builder.
    let deadline = Instant::now() + Duration::from_secs(10);
    while hooks.lock().unwrap().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let (headers, body) = hooks
        .lock()
        .unwrap()
        .first()
        .cloned()
        .expect("webhook called");
    let posted: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(posted["type"], "CL_DISPATCH_EVENT");
    assert_eq!(posted["payload"], want);
    assert_eq!(posted["call_id"], call_id.as_str());
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    };
    let mac = {
        use hmac::{Hmac, Mac};
        let mut m = Hmac::<sha2::Sha256>::new_from_slice(b"hook-secret").unwrap();
        m.update(get("x-voxgate-timestamp").as_bytes());
        m.update(b".");
        m.update(&body);
        format!("sha256={}", hex::encode(m.finalize().into_bytes()))
    };
    assert_eq!(get("x-voxgate-signature"), mac);
    // And the events journal has it, noting that the bot got it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let events = loop {
        let v = gw
            .get("/v1/events?name=CL_DISPATCH_EVENT")
            .expect("GET /v1/events")
            .json();
        if v["events"][0].is_object() || Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let e = &events["events"][0];
    assert_eq!(e["properties"], want, "{events}");
    assert_eq!(e["call_id"], call_id.as_str());
    assert_eq!(e["websocket"], true);
}
