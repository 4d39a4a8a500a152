//! The tokio shell of the WebSocket bridge: opens the connection the core asks for (bearer
//! token, HMAC or `X-Twilio-Signature` on the upgrade, ws:// or wss:// over rustls), moves
//! frames both ways, closes with a proper handshake, and reports what happened. It decides
//! nothing: [`BridgeCore`] does.

use super::bridge::{BridgeConfig, BridgeCore, IoRequest, TwilioConfig};
use super::protocol::{sign_upgrade, Outgoing};
use super::twilio;
use crate::flow::{FlowAction, FlowEvent, SessionInfo};
use futures::{Sink, SinkExt, Stream, StreamExt};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{debug, warn, Instrument};

/// The socket's read buffer (see `open`).
const READ_BUFFER_BYTES: usize = 1024;

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub url: String,
    pub token: Option<String>,
    pub hmac_secret: Option<String>,
    /// Signs the upgrade with `X-Twilio-Signature` (Twilio mode).
    pub twilio_auth_token: Option<String>,
    /// The core's message limit; the socket itself reads up to twice this.
    pub max_message_bytes: usize,
}

/// How long a closing handshake may take before the connection is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// What the connection reports, tagged with its generation so stale reports are ignored.
#[derive(Debug)]
pub enum ConnEvent {
    Connected(u64),
    Text(u64, String),
    Binary(u64, Vec<u8>),
    /// The bot sent a close frame (status, reason); it has been answered.
    CloseFrame(u64, Option<u16>, String),
    /// A message of this many bytes was too big to read; the connection cannot go on.
    Oversized(u64, usize),
    /// The connection failed or ended without a close frame from the bot.
    Closed(u64, String),
}

/// Frames waiting for the bot's socket at most (about 20 s of caller audio); beyond it
/// frames are dropped and counted, so a stalled bot cannot grow the gateway's memory.
const OUT_QUEUE: usize = 1024;

type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What the connect task hands back: the open socket, or why there is none.
type Opened = Result<Box<WsStream>, String>;

/// The bot's socket, as the call task sees it.
///
/// Only connecting and closing run as tasks of their own. While the connection is up the
/// socket belongs to the call task: frames from the caller are written and the bot's
/// messages read in the task's own poll ([`WsBridge::poll_io`]), so a 20 ms frame costs one
/// task wake-up each way, not two (a connection task in between doubled the wake-ups and
/// the channel hops: bench profile W).
enum Link {
    Idle,
    Connecting {
        generation: u64,
        task: JoinHandle<()>,
        opened: oneshot::Receiver<Opened>,
    },
    Open(Box<OpenLink>),
}

struct OpenLink {
    generation: u64,
    ws: WsStream,
    /// Reading stops after an oversized message: the stream is no longer framed.
    readable: bool,
}

/// What writing the queue came to.
enum Written {
    /// Everything queued is with the socket, or the socket is full and will wake the task.
    Progress,
    /// The core asked to close with this status (after what was queued before it).
    Close(CloseCode, String),
}

impl OpenLink {
    /// Writes what is queued until the socket pushes back, then flushes.
    fn poll_write(
        &mut self,
        queue: &mut VecDeque<Outgoing>,
        cx: &mut Context<'_>,
    ) -> Result<Written, WsError> {
        let mut wrote = false;
        while let Some(front) = queue.front() {
            if matches!(front, Outgoing::Close { .. }) {
                let close = queue.pop_front();
                queue.clear();
                if let Some(Outgoing::Close { code, reason }) = close {
                    return Ok(Written::Close(CloseCode::from(code), reason));
                }
            }
            match Pin::new(&mut self.ws).poll_ready(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(e)) => return Err(e),
                // Full: the socket wakes the task when it can take more.
                Poll::Pending => break,
            }
            let Some(o) = queue.pop_front() else { break };
            Pin::new(&mut self.ws).start_send(message(o))?;
            wrote = true;
        }
        if wrote {
            if let Poll::Ready(Err(e)) = Pin::new(&mut self.ws).poll_flush(cx) {
                return Err(e);
            }
        }
        Ok(Written::Progress)
    }
}

fn message(o: Outgoing) -> Message {
    match o {
        Outgoing::Text(t) => Message::Text(t.into()),
        Outgoing::Binary(b) => Message::Binary(b.into()),
        Outgoing::Close { code, reason } => Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        })),
    }
}

/// One call's bot connection: the core plus the socket it asked for.
pub struct WsBridge {
    core: BridgeCore,
    settings: ClientSettings,
    connect_timeout: Duration,
    link: Link,
    /// Frames for the bot not yet taken by the socket (at most [`OUT_QUEUE`]).
    queue: VecDeque<Outgoing>,
    dropped: u64,
}

impl WsBridge {
    /// The bridge for a new call when `flow.websocket_url` is set; None for the embedded engine.
    pub fn from_config(
        cfg: &crate::config::FlowConfig,
        info: SessionInfo,
        now: Instant,
    ) -> Option<Self> {
        let url = cfg.websocket_url.clone()?;
        let settings = ClientSettings {
            url,
            token: cfg.websocket_token.clone(),
            hmac_secret: cfg.websocket_hmac_secret.clone(),
            twilio_auth_token: cfg.twilio_auth_token.clone(),
            max_message_bytes: cfg.websocket_max_message_bytes,
        };
        let bridge = BridgeConfig {
            dialect: cfg.protocol,
            on_connect_failure: cfg.websocket_on_connect_failure,
            on_drop: cfg.websocket_on_drop,
            fallback_prompt: cfg.websocket_fallback_prompt.clone(),
            fallback_number: cfg.websocket_fallback_number.clone(),
            connect_timeout: Duration::from_millis(cfg.websocket_connect_timeout_ms),
            answer_timeout: Duration::from_millis(cfg.websocket_answer_timeout_ms),
            reconnect_attempts: cfg.websocket_reconnect_attempts,
            reconnect_backoff: Duration::from_millis(200),
            replay_capacity: cfg.websocket_replay_buffer,
            max_message_bytes: cfg.websocket_max_message_bytes,
            twilio: TwilioConfig {
                account_sid: cfg
                    .twilio_account_sid
                    .clone()
                    .unwrap_or_else(|| twilio::DEFAULT_ACCOUNT_SID.to_string()),
                parameters: cfg.twilio_parameters.clone(),
                parameter_headers: cfg.twilio_parameter_headers.clone(),
            },
        };
        Some(Self::start(settings, bridge, info, now))
    }

    /// Starts connecting at once (INVITE time): the bot decides whether to answer.
    pub fn start(
        settings: ClientSettings,
        cfg: BridgeConfig,
        info: SessionInfo,
        now: Instant,
    ) -> Self {
        let connect_timeout = cfg.connect_timeout;
        let mut b = WsBridge {
            core: BridgeCore::new(cfg, info, now),
            settings,
            connect_timeout,
            link: Link::Idle,
            queue: VecDeque::new(),
            dropped: 0,
        };
        b.pump();
        b
    }

    pub fn handle_event(&mut self, ev: FlowEvent, now: Instant) {
        self.core.handle_event(ev, now);
        self.pump();
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        self.core.handle_timeout(now);
        self.pump();
    }

    pub fn poll_action(&mut self) -> Option<FlowAction> {
        self.core.poll_action()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    pub fn caller_audio(&mut self, samples: &[i16]) {
        self.core.caller_audio(samples);
        self.pump();
    }

    /// The next report from the connection (pending while there is none). Polling it also
    /// writes what is queued for the bot, so the call task polls it whenever it may have
    /// queued something (after every wake-up). Nothing is held across polls but the
    /// bridge's own state.
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<ConnEvent> {
        match &mut self.link {
            Link::Idle => Poll::Pending,
            Link::Connecting {
                generation, opened, ..
            } => {
                let generation = *generation;
                let result = ready!(Pin::new(opened).poll(cx));
                match result {
                    Ok(Ok(ws)) => {
                        self.link = Link::Open(Box::new(OpenLink {
                            generation,
                            ws: *ws,
                            readable: true,
                        }));
                        Poll::Ready(ConnEvent::Connected(generation))
                    }
                    Ok(Err(why)) => {
                        self.link = Link::Idle;
                        Poll::Ready(ConnEvent::Closed(generation, why))
                    }
                    Err(_) => {
                        self.link = Link::Idle;
                        Poll::Ready(ConnEvent::Closed(generation, "connect task ended".into()))
                    }
                }
            }
            Link::Open(link) => {
                let generation = link.generation;
                match link.poll_write(&mut self.queue, cx) {
                    Ok(Written::Progress) => {}
                    Ok(Written::Close(code, reason)) => {
                        if let Link::Open(link) = std::mem::replace(&mut self.link, Link::Idle) {
                            spawn_close(link.ws, link.readable, VecDeque::new(), code, reason);
                        }
                        return Poll::Pending;
                    }
                    Err(e) => {
                        self.link = Link::Idle;
                        self.queue.clear();
                        return Poll::Ready(ConnEvent::Closed(
                            generation,
                            format!("send failed: {e}"),
                        ));
                    }
                }
                loop {
                    let Link::Open(link) = &mut self.link else {
                        return Poll::Pending;
                    };
                    if !link.readable {
                        return Poll::Pending;
                    }
                    let read = ready!(Pin::new(&mut link.ws).poll_next(cx));
                    if let Some(ev) = self.on_read(generation, read) {
                        return Poll::Ready(ev);
                    }
                }
            }
        }
    }

    /// What the socket gave the call task, as a report for the core.
    /// None for what the protocol handled itself (a ping answered, a pong).
    fn on_read(
        &mut self,
        generation: u64,
        read: Option<Result<Message, WsError>>,
    ) -> Option<ConnEvent> {
        let hard_limit = self.settings.max_message_bytes.saturating_mul(2);
        match read {
            Some(Ok(Message::Text(t))) => Some(ConnEvent::Text(generation, t.to_string())),
            Some(Ok(Message::Binary(b))) => Some(ConnEvent::Binary(generation, b.to_vec())),
            Some(Ok(Message::Close(frame))) => {
                let (code, reason) = match &frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                    None => (None, String::new()),
                };
                debug!(?code, %reason, "the bot closed the socket; answering");
                // The reply is queued by the protocol: flushed by the closing task, which
                // then lets the bot end TCP.
                if let Link::Open(link) = std::mem::replace(&mut self.link, Link::Idle) {
                    let task = async move {
                        let mut ws = link.ws;
                        ws.flush().await.ok();
                        let drain = async { while let Some(Ok(_)) = ws.next().await {} };
                        tokio::time::timeout(CLOSE_GRACE, drain).await.ok();
                    };
                    spawn_detached(task);
                }
                self.queue.clear();
                Some(ConnEvent::CloseFrame(generation, code, reason))
            }
            // Pings are answered by the protocol; pongs and raw frames are not used.
            Some(Ok(_)) => None,
            Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, .. }))) => {
                warn!(
                    size,
                    limit = hard_limit,
                    "message from the bot too big to read"
                );
                if let Link::Open(link) = &mut self.link {
                    link.readable = false;
                }
                // The core answers with an error and a 1009 close (queued).
                Some(ConnEvent::Oversized(generation, size))
            }
            Some(Err(e)) => {
                self.link = Link::Idle;
                self.queue.clear();
                Some(ConnEvent::Closed(generation, format!("read failed: {e}")))
            }
            None => {
                self.link = Link::Idle;
                self.queue.clear();
                Some(ConnEvent::Closed(generation, "socket ended".into()))
            }
        }
    }

    pub fn handle_io(&mut self, ev: ConnEvent, now: Instant) {
        match ev {
            ConnEvent::Connected(g) => self.core.on_connected(g, now),
            ConnEvent::Text(g, t) => self.core.on_text(g, &t, now),
            ConnEvent::Binary(g, b) => self.core.on_binary(g, &b),
            ConnEvent::CloseFrame(g, code, reason) => {
                self.core.on_close_frame(g, code, &reason, now)
            }
            ConnEvent::Oversized(g, size) => self.core.on_oversized(g, size, now),
            ConnEvent::Closed(g, why) => self.core.on_closed(g, &why, now),
        }
        self.pump();
    }

    /// Carries out what the core asked of the connection, and queues its frames (written
    /// when the call task next polls [`poll_io`](Self::poll_io)).
    fn pump(&mut self) {
        loop {
            while let Some(o) = self.core.poll_outgoing() {
                if matches!(self.link, Link::Idle) {
                    continue;
                }
                if self.queue.len() >= OUT_QUEUE && !matches!(o, Outgoing::Close { .. }) {
                    self.dropped += 1;
                    if self.dropped.is_power_of_two() {
                        warn!(
                            dropped = self.dropped,
                            "bot connection not keeping up: frames dropped"
                        );
                    }
                    continue;
                }
                self.queue.push_back(o);
            }
            let Some(req) = self.core.poll_request() else {
                break;
            };
            match req {
                IoRequest::Connect { generation } => {
                    self.abort();
                    self.link = self.connect(generation);
                }
                IoRequest::Abort => self.abort(),
                // What is queued goes out, then a close.
                IoRequest::Finish => self.finish(),
            }
        }
    }

    /// Drops the connection at once (a reconnect replaces it, or the core gave up on it).
    fn abort(&mut self) {
        if let Link::Connecting { task, .. } = std::mem::replace(&mut self.link, Link::Idle) {
            task.abort();
        }
        self.queue.clear();
    }

    /// Hands the socket to a closing task: the queued frames, then a normal close. A
    /// connection still being opened closes itself once open (its receiver is gone).
    fn finish(&mut self) {
        let queue = std::mem::take(&mut self.queue);
        if let Link::Open(link) = std::mem::replace(&mut self.link, Link::Idle) {
            spawn_close(
                link.ws,
                link.readable,
                queue,
                CloseCode::Normal,
                String::new(),
            );
        }
    }

    fn connect(&self, generation: u64) -> Link {
        let (tx, opened) = oneshot::channel();
        let task = tokio::spawn(
            run_connect(
                self.settings.clone(),
                self.core.call_id().to_string(),
                self.connect_timeout,
                tx,
            )
            .in_current_span(),
        );
        Link::Connecting {
            generation,
            task,
            opened,
        }
    }
}

impl Drop for WsBridge {
    fn drop(&mut self) {
        // A connection still open here gets its queued frames and a close, not an abort.
        self.finish();
    }
}

/// Runs `task` on its own (outside a runtime, in unit tests, it is dropped: the socket
/// simply closes).
fn spawn_detached(task: impl std::future::Future<Output = ()> + Send + 'static) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(task.in_current_span());
    }
}

/// Closes an open socket without holding up the call: `queue` (up to a close the core
/// asked for), then the close frame, then the bot's answer, each bounded in time. `readable`:
/// whether the bot's answer can still be parsed ([`OpenLink::readable`]).
fn spawn_close(
    mut ws: WsStream,
    readable: bool,
    queue: VecDeque<Outgoing>,
    code: CloseCode,
    reason: String,
) {
    spawn_detached(async move {
        let (mut code, mut reason) = (code, reason);
        let send = async {
            for o in queue {
                if let Outgoing::Close { code: c, reason: r } = o {
                    (code, reason) = (CloseCode::from(c), r);
                    break;
                }
                ws.feed(message(o)).await?;
            }
            debug!(code = u16::from(code), %reason, "closing the bot's socket");
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            ws.send(Message::Close(Some(frame))).await
        };
        if !matches!(tokio::time::timeout(CLOSE_GRACE, send).await, Ok(Ok(()))) {
            // The bot is not reading, or the socket is gone: nothing more to say.
            return;
        }
        if readable {
            // Wait for the bot's close frame; the bot then ends the TCP connection.
            let drain = async { while let Some(Ok(_)) = ws.next().await {} };
            tokio::time::timeout(CLOSE_GRACE, drain).await.ok();
        } else {
            // The stream can no longer be parsed (an unread message is in it), so the bot's
            // reply cannot be read; give it time to read ours before the socket goes
            // (closing with unread data resets the connection).
            tokio::time::sleep(CLOSE_GRACE / 2).await;
        }
        tokio::time::timeout(CLOSE_GRACE, SinkExt::close(&mut ws))
            .await
            .ok();
    });
}

/// Opens the connection and hands the socket to the bridge. If the bridge no longer wants
/// it (the call ended while connecting), the socket is closed properly here.
async fn run_connect(
    settings: ClientSettings,
    call_id: String,
    connect_timeout: Duration,
    opened: oneshot::Sender<Opened>,
) {
    let result = open(&settings, &call_id, connect_timeout).await;
    match result {
        Ok(ws) => {
            if let Err(Ok(ws)) = opened.send(Ok(Box::new(ws))) {
                spawn_close(*ws, true, VecDeque::new(), CloseCode::Normal, String::new());
            }
        }
        Err(why) => {
            opened.send(Err(why)).ok();
        }
    }
}

async fn open(
    settings: &ClientSettings,
    call_id: &str,
    connect_timeout: Duration,
) -> Result<WsStream, String> {
    let mut request = settings
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| format!("bad websocket_url: {e}"))?;
    let headers = request.headers_mut();
    if let Ok(v) = HeaderValue::from_str(call_id) {
        headers.insert("X-Voxgate-Call-Id", v);
    }
    if let Some(token) = &settings.token {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert("Authorization", v);
        }
    }
    if let Some(secret) = &settings.hmac_secret {
        let ts = chrono::Utc::now().timestamp();
        let sig = sign_upgrade(secret.as_bytes(), ts, call_id);
        if let Ok(v) = HeaderValue::from_str(&ts.to_string()) {
            headers.insert("X-Voxgate-Timestamp", v);
        }
        if let Ok(v) = HeaderValue::from_str(&sig) {
            headers.insert("X-Voxgate-Signature", v);
        }
    }
    if let Some(token) = &settings.twilio_auth_token {
        let sig = twilio::websocket_signature(token, &settings.url);
        if let Ok(v) = HeaderValue::from_str(&sig) {
            headers.insert("X-Twilio-Signature", v);
        }
    }
    if settings.url.starts_with("wss://") {
        // Only the ring provider is compiled in; installing it is idempotent.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    // Messages up to the core's limit are used; up to twice it they are read and refused
    // with an error; beyond that the socket cannot read them and the connection ends.
    let hard_limit = settings.max_message_bytes.saturating_mul(2);
    // tungstenite's default read buffer is 128 KiB and it zero-fills the free part before
    // every read: with one 320-byte frame per read that memset was 26-32 % of the gateway's
    // CPU on WebSocket calls (perf, bench profile W) and most of their memory. It still
    // zero-fills before each read (two per 20 ms frame: the frame, then the attempt that
    // finds nothing more), so the buffer is kept small. At 4 KiB the zero-fill was still
    // 2.1 % of the gateway's CPU in profile W; 1 KiB holds three 20 ms frames (324 bytes
    // each) or a Twilio media message, and a larger message takes more reads (a 4 MiB
    // utterance: 4,096 reads, a few ms once per utterance).
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, None);
    match tokio::time::timeout(connect_timeout, connect).await {
        Ok(Ok((ws, _resp))) => Ok(ws),
        Ok(Err(e)) => {
            warn!(error = %e, "bot connection failed");
            Err(format!("connect failed: {e}"))
        }
        Err(_) => Err("connect timeout".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Waker;
    use tokio::sync::mpsc;

    /// A bot that reports every message it receives.
    async fn bot() -> (String, mpsc::UnboundedReceiver<Message>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                if tx.send(m).is_err() {
                    break;
                }
            }
        });
        (url, rx)
    }

    fn settings(url: String) -> ClientSettings {
        ClientSettings {
            url,
            token: None,
            hmac_secret: None,
            twilio_auth_token: None,
            max_message_bytes: 64 * 1024,
        }
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Message>) -> Message {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("the bot got nothing within 5 s")
            .expect("the bot's connection ended")
    }

    #[tokio::test]
    async fn the_call_task_writes_the_frames_and_a_dropped_bridge_closes_properly() {
        let (url, mut got) = bot().await;
        let info = SessionInfo {
            call_id: "call-1".into(),
            ..Default::default()
        };
        let mut b = WsBridge::start(settings(url), BridgeConfig::default(), info, Instant::now());
        let ev = std::future::poll_fn(|cx| b.poll_io(cx)).await;
        assert!(matches!(ev, ConnEvent::Connected(1)), "{ev:?}");
        b.handle_io(ev, Instant::now());
        // `session.start` is queued; polling the bridge (as the call task does) writes it.
        let noop = Waker::noop();
        assert!(b.poll_io(&mut Context::from_waker(noop)).is_pending());
        match next(&mut got).await {
            Message::Text(t) => assert!(t.contains("session.start"), "{t}"),
            other => panic!("expected session.start, got {other:?}"),
        }
        // The call is gone: the bridge hands the socket to a closing task, which sends a
        // normal close instead of dropping the connection.
        drop(b);
        match next(&mut got).await {
            Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Normal),
            other => panic!("expected a close frame, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_bot_that_cannot_be_reached_is_reported_closed() {
        // A port nobody listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}", listener.local_addr().unwrap());
        drop(listener);
        let info = SessionInfo::default();
        let mut b = WsBridge::start(settings(url), BridgeConfig::default(), info, Instant::now());
        let ev = std::future::poll_fn(|cx| b.poll_io(cx)).await;
        match ev {
            ConnEvent::Closed(1, why) => assert!(why.starts_with("connect failed"), "{why}"),
            other => panic!("expected the connection to fail, got {other:?}"),
        }
    }
}
