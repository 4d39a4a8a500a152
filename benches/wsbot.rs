//! A WebSocket bot for `scripts/bench-load` (profile W): it speaks voxgate's native bot
//! protocol (docs/websocket-protocol.md) on one WebSocket per call, answers every call, and
//! sends audio back at real time: one 320-byte frame (PCM16 LE, 8 kHz, 20 ms of a 440 Hz
//! tone) per call every 20 ms, on an absolute schedule, until `session.end` or the socket
//! closes. It counts, per call, the caller's frames it receives (and how many of them carry
//! sound), when the first and last arrived, and the frames it sent.
//!
//! Cheap on purpose, since its CPU is measured too: one thread (a current-thread tokio
//! runtime), one 20 ms ticker for all connections that writes every call's frame itself (no
//! timer and no wake-up per connection).
//!
//! ```text
//! cargo build --release --example wsbot
//! target/release/examples/wsbot --listen 127.0.0.1:9100 --json out.json --idle-exit-s 20
//! ```
//!
//! Options: `--listen IP:PORT` (loopback only; default 127.0.0.1:0, the port chosen is printed
//! on stderr as `wsbot: listening on ...`), `--json FILE` (results, written on SIGTERM/SIGINT or
//! at the idle exit; stdout when absent), `--idle-exit-s S` (exit once S seconds passed with no
//! connection open, after at least one; 0 = never, the default), `--record` (send
//! `record.start` after `answer`), `--silent` (send frames of silence instead of the tone),
//! `--read-buffer BYTES` (tungstenite's read buffer per connection, default 4096; tungstenite's
//! own default is 128 KiB, and it zero-fills that buffer on every read of the socket, which
//! costs more than everything else the bot does).

#[path = "common/args.rs"]
mod args;

use futures::stream::SplitSink;
use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::cell::RefCell;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::WebSocketStream;

const TICK: Duration = Duration::from_millis(20);
const FRAME_SAMPLES: usize = 160;

struct Args {
    listen: SocketAddr,
    json: Option<String>,
    idle_exit: Option<Duration>,
    record: bool,
    silent: bool,
    read_buffer: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut cli = args::Cli::from_env();
    let mut a = Args {
        listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
        json: None,
        idle_exit: None,
        record: false,
        silent: false,
        read_buffer: 4096,
    };
    while let Some(o) = cli.next_opt() {
        match o.as_str() {
            "--listen" => a.listen = cli.parse()?,
            "--json" => a.json = Some(cli.value()?),
            "--idle-exit-s" => {
                let s: u64 = cli.parse()?;
                a.idle_exit = (s > 0).then(|| Duration::from_secs(s));
            }
            "--record" => a.record = true,
            "--silent" => a.silent = true,
            "--read-buffer" => a.read_buffer = cli.parse()?,
            _ => return Err(cli.unknown()),
        }
    }
    if !a.listen.ip().is_loopback() {
        return Err("loopback only: --listen must be 127.0.0.0/8 or ::1".into());
    }
    Ok(a)
}

/// One call (one connection) as counted.
#[derive(Default)]
struct CallStats {
    call_id: String,
    /// Milliseconds since the bot started.
    connected_ms: f64,
    answered_ms: Option<f64>,
    end_ms: Option<f64>,
    closed_ms: Option<f64>,
    end_reason: Option<String>,
    cdr_duration_ms: Option<u64>,
    /// Binary frames from the gateway (the caller's audio), and how many carry sound.
    rx_frames: u64,
    rx_sound: u64,
    rx_bytes: u64,
    rx_odd: u64,
    first_rx_ms: Option<f64>,
    last_rx_ms: Option<f64>,
    rx_texts: u64,
    recording_started: bool,
    /// Frames sent to the gateway, and those sent before `session.end` arrived.
    tx_frames: u64,
    tx_before_end: u64,
    last_tx_ms: Option<f64>,
    /// When the last few frames left (ms since the bot started), oldest first: the bench
    /// compares them with the client's BYE to tell frames still in flight at the hang-up.
    tx_recent_ms: std::collections::VecDeque<f64>,
    tx_errors: u64,
}

type WsSink = SplitSink<WebSocketStream<TcpStream>, Message>;

struct Shared {
    t0: Instant,
    /// `t0` as wall-clock milliseconds since the Unix epoch (to compare with the client's).
    t0_unix_ms: f64,
    calls: Vec<CallStats>,
    open: usize,
    last_close: Option<Instant>,
}

impl Shared {
    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }
}

enum TickerMsg {
    /// Start sending on this call's socket.
    Add(usize, WsSink),
    /// Stop sending (session.end or the socket closed); the sink goes back for the close.
    Remove(usize),
}

fn main() {
    let args = args::or_exit("wsbot", parse_args());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    if let Err(e) = local.block_on(&rt, run(args)) {
        eprintln!("wsbot: {e}");
        std::process::exit(1);
    }
}

fn tone_frames(silent: bool) -> Vec<Bytes> {
    // 440 Hz fits 440 whole cycles into one second: 50 frames repeat seamlessly.
    (0..50)
        .map(|f| {
            let mut b = Vec::with_capacity(FRAME_SAMPLES * 2);
            for i in 0..FRAME_SAMPLES {
                let t = (f * FRAME_SAMPLES + i) as f64 / 8000.0;
                let s = if silent {
                    0
                } else {
                    ((t * 440.0 * std::f64::consts::TAU).sin() * 8000.0) as i16
                };
                b.extend_from_slice(&s.to_le_bytes());
            }
            Bytes::from(b)
        })
        .collect()
}

async fn run(args: Args) -> Result<(), String> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| format!("{}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("wsbot: listening on {addr}");
    let shared = Rc::new(RefCell::new(Shared {
        t0: Instant::now(),
        t0_unix_ms: unix_ms(),
        calls: Vec::new(),
        open: 0,
        last_close: None,
    }));
    let cpu0 = cpu_seconds();
    let (tick_tx, tick_rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(ticker(shared.clone(), tick_rx, tone_frames(args.silent)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| e.to_string())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .map_err(|e| e.to_string())?;
    let mut idle_check = tokio::time::interval(Duration::from_millis(250));
    let record = args.record;
    let config = WebSocketConfig::default().read_buffer_size(args.read_buffer.max(64));
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let Ok((tcp, _)) = acc else { continue };
                tcp.set_nodelay(true).ok();
                tokio::task::spawn_local(serve(tcp, shared.clone(), tick_tx.clone(), record, config));
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = idle_check.tick() => {
                if let Some(idle) = args.idle_exit {
                    let s = shared.borrow();
                    if s.open == 0 && s.last_close.is_some_and(|t| t.elapsed() >= idle) {
                        break;
                    }
                }
            }
        }
    }
    let cpu = cpu_seconds() - cpu0;
    let out = report(&shared.borrow(), cpu);
    match &args.json {
        Some(p) => std::fs::write(p, out.to_string()).map_err(|e| format!("{p}: {e}"))?,
        None => println!("{out}"),
    }
    let t = &out["totals"];
    eprintln!(
        "wsbot: {} connections, frames received {} ({} with sound), sent {}, cpu {cpu:.2} s",
        out["connections"], t["rx_frames"], t["rx_sound"], t["tx_frames"]
    );
    Ok(())
}

/// One shared 20 ms clock for every call: each tick writes one frame to each answered call.
async fn ticker(
    shared: Rc<RefCell<Shared>>,
    mut rx: mpsc::UnboundedReceiver<TickerMsg>,
    frames: Vec<Bytes>,
) {
    // Absolute schedule: tick k is due at start + k × 20 ms; a late tick is caught up
    // (Burst), so the rate never drifts.
    let mut iv = tokio::time::interval(TICK);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // (call index, sink, frames sent on it: the tone's phase)
    let mut sinks: Vec<(usize, WsSink, usize)> = Vec::new();
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(TickerMsg::Add(i, sink)) => sinks.push((i, sink, 0)),
                Some(TickerMsg::Remove(i)) => {
                    if let Some(p) = sinks.iter().position(|s| s.0 == i) {
                        let (_, mut sink, _) = sinks.swap_remove(p);
                        // Answer the gateway's close frame (tungstenite queued the reply) and
                        // let the socket go.
                        tokio::task::spawn_local(async move {
                            let _ = tokio::time::timeout(Duration::from_secs(3), sink.close()).await;
                        });
                    }
                }
                None => return,
            },
            _ = iv.tick() => {
                let mut failed = Vec::new();
                for (k, (i, sink, n)) in sinks.iter_mut().enumerate() {
                    let frame = frames[*n % frames.len()].clone();
                    *n += 1;
                    let ok = sink.send(Message::Binary(frame)).await.is_ok();
                    let mut s = shared.borrow_mut();
                    let ms = s.ms();
                    let c = &mut s.calls[*i];
                    if ok {
                        c.tx_frames += 1;
                        c.last_tx_ms = Some(ms);
                        if c.end_ms.is_none() {
                            c.tx_before_end += 1;
                            if c.tx_recent_ms.len() == 4 {
                                c.tx_recent_ms.pop_front();
                            }
                            c.tx_recent_ms.push_back(ms);
                        }
                    } else {
                        c.tx_errors += 1;
                        failed.push(k);
                    }
                }
                for k in failed.into_iter().rev() {
                    drop(sinks.swap_remove(k));
                }
            }
        }
    }
}

#[allow(clippy::result_large_err)] // tungstenite's callback signature
async fn serve(
    tcp: TcpStream,
    shared: Rc<RefCell<Shared>>,
    ticker: mpsc::UnboundedSender<TickerMsg>,
    record: bool,
    config: WebSocketConfig,
) {
    let mut call_id = String::new();
    let cb = |req: &Request, resp: Response| {
        call_id = req
            .headers()
            .get("x-voxgate-call-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async_with_config(tcp, cb, Some(config)).await
    else {
        return;
    };
    let idx = {
        let mut s = shared.borrow_mut();
        let ms = s.ms();
        s.open += 1;
        s.calls.push(CallStats {
            call_id,
            connected_ms: ms,
            ..Default::default()
        });
        s.calls.len() - 1
    };
    let (sink, mut stream) = ws.split();
    // The write half, until the ticker takes it over (after `answer`).
    let mut sink = Some(sink);
    while let Some(Ok(msg)) = stream.next().await {
        match msg {
            Message::Binary(b) => {
                let sound = b.chunks_exact(2).any(|p| p != [0, 0]);
                let mut s = shared.borrow_mut();
                let ms = s.ms();
                let c = &mut s.calls[idx];
                c.rx_frames += 1;
                c.rx_bytes += b.len() as u64;
                if b.len() != FRAME_SAMPLES * 2 {
                    c.rx_odd += 1;
                }
                if sound {
                    c.rx_sound += 1;
                }
                c.first_rx_ms.get_or_insert(ms);
                c.last_rx_ms = Some(ms);
            }
            Message::Text(t) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                let kind = v["type"].as_str().unwrap_or("");
                {
                    let mut s = shared.borrow_mut();
                    let ms = s.ms();
                    let c = &mut s.calls[idx];
                    c.rx_texts += 1;
                    match kind {
                        "session.end" => {
                            c.end_ms = Some(ms);
                            c.end_reason = v["reason"].as_str().map(String::from);
                            c.cdr_duration_ms = v["cdr"]["duration_ms"].as_u64();
                        }
                        "recording.started" => c.recording_started = true,
                        _ => {}
                    }
                }
                match kind {
                    "session.start" if sink.is_some() => {
                        let Some(w) = sink.as_mut() else { break };
                        let mut ok = w
                            .send(Message::Text(json!({"type": "answer"}).to_string().into()))
                            .await
                            .is_ok();
                        if ok && record {
                            let m = json!({"type": "record.start", "id": "r"}).to_string();
                            ok = w.send(Message::Text(m.into())).await.is_ok();
                        }
                        if !ok {
                            break;
                        }
                        {
                            let mut s = shared.borrow_mut();
                            let ms = s.ms();
                            s.calls[idx].answered_ms = Some(ms);
                        }
                        // The ticker owns the write half from now on.
                        if let Some(w) = sink.take() {
                            if ticker.send(TickerMsg::Add(idx, w)).is_err() {
                                break;
                            }
                        }
                    }
                    "session.end" if sink.is_none() => {
                        ticker.send(TickerMsg::Remove(idx)).ok();
                    }
                    _ => {}
                }
            }
            // tungstenite queues the reply to a close frame; the read loop ends after it.
            Message::Close(_) => {}
            _ => {}
        }
    }
    match sink {
        None => {
            ticker.send(TickerMsg::Remove(idx)).ok();
        }
        Some(mut w) => {
            let _ = tokio::time::timeout(Duration::from_secs(3), w.close()).await;
        }
    }
    let mut s = shared.borrow_mut();
    let ms = s.ms();
    s.calls[idx].closed_ms = Some(ms);
    s.open -= 1;
    s.last_close = Some(Instant::now());
}

fn report(s: &Shared, cpu: f64) -> Value {
    let calls: Vec<Value> = s
        .calls
        .iter()
        .map(|c| {
            json!({
                "call_id": c.call_id, "connected_ms": c.connected_ms,
                "answered_ms": c.answered_ms, "end_ms": c.end_ms, "closed_ms": c.closed_ms,
                "end_reason": c.end_reason, "cdr_duration_ms": c.cdr_duration_ms,
                "rx_frames": c.rx_frames, "rx_sound": c.rx_sound, "rx_bytes": c.rx_bytes,
                "rx_odd": c.rx_odd, "first_rx_ms": c.first_rx_ms, "last_rx_ms": c.last_rx_ms,
                "rx_texts": c.rx_texts, "recording_started": c.recording_started,
                "tx_frames": c.tx_frames, "tx_before_end": c.tx_before_end,
                "last_tx_ms": c.last_tx_ms, "tx_recent_ms": c.tx_recent_ms,
                "tx_errors": c.tx_errors,
            })
        })
        .collect();
    let sum = |f: fn(&CallStats) -> u64| s.calls.iter().map(f).sum::<u64>();
    json!({
        "connections": s.calls.len(),
        "answered": s.calls.iter().filter(|c| c.answered_ms.is_some()).count(),
        "ended": s.calls.iter().filter(|c| c.end_ms.is_some()).count(),
        "recordings_started": s.calls.iter().filter(|c| c.recording_started).count(),
        "wsbot_cpu_s": cpu,
        "t0_unix_ms": s.t0_unix_ms,
        "wall_s": s.t0.elapsed().as_secs_f64(),
        "totals": {
            "rx_frames": sum(|c| c.rx_frames), "rx_sound": sum(|c| c.rx_sound),
            "rx_odd": sum(|c| c.rx_odd),
            "tx_frames": sum(|c| c.tx_frames), "tx_before_end": sum(|c| c.tx_before_end),
            "tx_errors": sum(|c| c.tx_errors),
        },
        "calls": calls,
    })
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Wall-clock milliseconds since the Unix epoch.
fn unix_ms() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}
