//! The tokio shell of the WebSocket bridge: opens the connection the core asks for (bearer
//! token, HMAC or `X-Twilio-Signature` on the upgrade, ws:// or wss:// over rustls), moves
//! frames both ways, closes with a proper handshake, and reports what happened. It decides
//! nothing: [`BridgeCore`] does.

use super::bridge::{BridgeConfig, BridgeCore, IoRequest, TwilioConfig};
use super::protocol::{sign_upgrade, Outgoing};
use super::twilio;
use crate::flow::{FlowAction, FlowEvent, SessionInfo};
use futures::{SinkExt, StreamExt};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::CapacityError;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tracing::{debug, warn, Instrument};

/// The socket's read buffer (see `run_conn`).
const READ_BUFFER_BYTES: usize = 4 * 1024;

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

/// What a connection task reports, tagged with its generation so stale reports are ignored.
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

struct Conn {
    out: mpsc::Sender<Outgoing>,
    task: JoinHandle<()>,
    dropped: u64,
}

/// One call's bot connection: the core plus the task that owns the socket.
pub struct WsBridge {
    core: BridgeCore,
    settings: ClientSettings,
    connect_timeout: Duration,
    events_tx: mpsc::UnboundedSender<ConnEvent>,
    events_rx: mpsc::UnboundedReceiver<ConnEvent>,
    conn: Option<Conn>,
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
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let mut b = WsBridge {
            core: BridgeCore::new(cfg, info, now),
            settings,
            connect_timeout,
            events_tx,
            events_rx,
            conn: None,
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

    /// The next report from the connection task (pending while there is none).
    pub async fn next_io(&mut self) -> ConnEvent {
        match self.events_rx.recv().await {
            Some(e) => e,
            // We hold a sender ourselves, so this cannot end; stay pending to be safe.
            None => std::future::pending().await,
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

    /// Carries out what the core asked of the connection, then sends its frames.
    fn pump(&mut self) {
        loop {
            while let Some(o) = self.core.poll_outgoing() {
                if let Some(c) = &mut self.conn {
                    if let Err(mpsc::error::TrySendError::Full(_)) = c.out.try_send(o) {
                        c.dropped += 1;
                        if c.dropped.is_power_of_two() {
                            warn!(
                                dropped = c.dropped,
                                "bot connection not keeping up: frames dropped"
                            );
                        }
                    }
                }
            }
            let Some(req) = self.core.poll_request() else {
                break;
            };
            match req {
                IoRequest::Connect { generation } => {
                    if let Some(c) = self.conn.take() {
                        c.task.abort();
                    }
                    self.conn = Some(self.spawn(generation));
                }
                IoRequest::Abort => {
                    if let Some(c) = self.conn.take() {
                        c.task.abort();
                    }
                }
                // Dropping the sender lets the task flush what is queued, then close.
                IoRequest::Finish => self.conn = None,
            }
        }
    }

    fn spawn(&self, generation: u64) -> Conn {
        let (out, out_rx) = mpsc::channel(OUT_QUEUE);
        let task = tokio::spawn(
            run_conn(
                generation,
                self.settings.clone(),
                self.core_call_id(),
                self.connect_timeout,
                out_rx,
                self.events_tx.clone(),
            )
            .in_current_span(),
        );
        Conn {
            out,
            task,
            dropped: 0,
        }
    }

    fn core_call_id(&self) -> String {
        self.core.call_id().to_string()
    }
}

impl Drop for WsBridge {
    fn drop(&mut self) {
        // A connection still open here gets its queued frames and a close, not an abort.
        self.conn = None;
    }
}

async fn run_conn(
    generation: u64,
    settings: ClientSettings,
    call_id: String,
    connect_timeout: Duration,
    mut out_rx: mpsc::Receiver<Outgoing>,
    events: mpsc::UnboundedSender<ConnEvent>,
) {
    let closed = |why: String| ConnEvent::Closed(generation, why);
    let mut request = match settings.url.as_str().into_client_request() {
        Ok(r) => r,
        Err(e) => {
            events.send(closed(format!("bad websocket_url: {e}"))).ok();
            return;
        }
    };
    let headers = request.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&call_id) {
        headers.insert("X-Voxgate-Call-Id", v);
    }
    if let Some(token) = &settings.token {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {token}")) {
            headers.insert("Authorization", v);
        }
    }
    if let Some(secret) = &settings.hmac_secret {
        let ts = chrono::Utc::now().timestamp();
        let sig = sign_upgrade(secret.as_bytes(), ts, &call_id);
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
    // zero-fills before each read (two per 20 ms frame: the frame, then WouldBlock), so the
    // buffer is kept small: 4 KiB holds a dozen frames; a larger message takes more reads.
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_message_size(Some(hard_limit))
        .max_frame_size(Some(hard_limit));
    let connect =
        tokio_tungstenite::connect_async_tls_with_config(request, Some(config), true, None);
    let ws = match tokio::time::timeout(connect_timeout, connect).await {
        Ok(Ok((ws, _resp))) => ws,
        Ok(Err(e)) => {
            warn!(error = %e, "bot connection failed");
            events.send(closed(format!("connect failed: {e}"))).ok();
            return;
        }
        Err(_) => {
            events.send(closed("connect timeout".into())).ok();
            return;
        }
    };
    events.send(ConnEvent::Connected(generation)).ok();
    let (mut sink, mut stream) = ws.split();
    // Reading stops after an oversized message: the stream is no longer framed.
    let mut readable = true;
    loop {
        tokio::select! {
            o = out_rx.recv() => {
                let (code, reason) = match o {
                    Some(Outgoing::Text(t)) => {
                        if let Err(e) = sink.send(Message::Text(t.into())).await {
                            events.send(closed(format!("send failed: {e}"))).ok();
                            return;
                        }
                        continue;
                    }
                    Some(Outgoing::Binary(b)) => {
                        if let Err(e) = sink.send(Message::Binary(b.into())).await {
                            events.send(closed(format!("send failed: {e}"))).ok();
                            return;
                        }
                        continue;
                    }
                    Some(Outgoing::Close { code, reason }) => (CloseCode::from(code), reason),
                    None => (CloseCode::Normal, String::new()),
                };
                debug!(code = u16::from(code), %reason, "closing the bot's socket");
                let frame = CloseFrame { code, reason: reason.into() };
                sink.send(Message::Close(Some(frame))).await.ok();
                if readable {
                    // Wait for the bot's close frame; the bot then ends the TCP connection.
                    let drain = async { while let Some(Ok(_)) = stream.next().await {} };
                    tokio::time::timeout(CLOSE_GRACE, drain).await.ok();
                } else {
                    // The stream can no longer be parsed (an unread message is in it), so the
                    // bot's reply cannot be read; give it time to read ours before the socket
                    // goes (closing with unread data resets the connection).
                    tokio::time::sleep(CLOSE_GRACE / 2).await;
                }
                sink.close().await.ok();
                return;
            }
            f = stream.next(), if readable => match f {
                Some(Ok(Message::Text(t))) => {
                    events.send(ConnEvent::Text(generation, t.to_string())).ok();
                }
                Some(Ok(Message::Binary(b))) => {
                    events.send(ConnEvent::Binary(generation, b.to_vec())).ok();
                }
                Some(Ok(Message::Close(frame))) => {
                    let (code, reason) = match &frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.to_string()),
                        None => (None, String::new()),
                    };
                    debug!(?code, %reason, "the bot closed the socket; answering");
                    events.send(ConnEvent::CloseFrame(generation, code, reason)).ok();
                    // The reply is queued by the protocol: flush it, then let the bot end TCP.
                    sink.flush().await.ok();
                    let drain = async { while let Some(Ok(_)) = stream.next().await {} };
                    tokio::time::timeout(CLOSE_GRACE, drain).await.ok();
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(WsError::Capacity(CapacityError::MessageTooLong { size, .. }))) => {
                    warn!(size, limit = hard_limit, "message from the bot too big to read");
                    readable = false;
                    // The core answers with an error and a 1009 close (queued on out_rx).
                    events.send(ConnEvent::Oversized(generation, size)).ok();
                }
                Some(Err(e)) => {
                    events.send(closed(format!("read failed: {e}"))).ok();
                    return;
                }
                None => {
                    events.send(closed("socket ended".into())).ok();
                    return;
                }
            }
        }
    }
}
