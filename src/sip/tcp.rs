//! SIP over TCP with limits: voxgate accepts and reads TCP connections itself and hands
//! complete messages to rsipstack through an in-memory channel connection.
//!
//! rsipstack's own listener keeps a connection open as long as one byte arrives every idle
//! period, has no cap per source or in total, and allocates 128 KiB of buffers per connection
//! (the slowloris row of issue 12). Here every connection has:
//! - a header deadline: once a message has started, it must be complete within
//!   `header_timeout` (a peer sending one byte every few seconds is cut off);
//! - an idle timeout: no complete message for `idle_timeout` closes the connection;
//! - a cap per source address and a cap in total (over it: closed at once);
//! - a buffer that grows with the message (at most [`MAX_MESSAGE`]) and is freed on close.
//!
//! Complete messages go through the same raw-bytes [guard](super::guard) as UDP datagrams.

use super::access::LogLimiter;
use super::guard::{inspect_datagram, Verdict};
use bytes::{Buf, BytesMut};
use rsipstack::transaction::endpoint::EndpointInnerRef;
use rsipstack::transport::channel::ChannelConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportEvent};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// The largest SIP message accepted over TCP (headers and body).
pub const MAX_MESSAGE: usize = 65_535;

/// Limits for the TCP listener.
#[derive(Debug, Clone)]
pub struct TcpLimits {
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_per_source: usize,
    pub max_total: usize,
}

impl Default for TcpLimits {
    fn default() -> Self {
        TcpLimits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(300),
            max_per_source: 16,
            max_total: 512,
        }
    }
}

/// How the framing of one connection's byte stream stands.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete message of this many bytes is at the front of the buffer.
    Message(usize),
    /// A keep-alive (CRLF CRLF: answer CRLF) of this many bytes.
    KeepAlive(usize),
    /// Stray CRLF (a keep-alive pong) to skip.
    Skip(usize),
    /// Not complete yet.
    Incomplete,
    /// The stream cannot be framed (bad Content-Length, too large): close it.
    Invalid(&'static str),
}

/// Finds the first message in `buf` (RFC 3261 §18.3: on streams Content-Length is mandatory;
/// without it the body is empty).
pub fn frame(buf: &[u8]) -> Frame {
    if buf.starts_with(b"\r\n\r\n") {
        return Frame::KeepAlive(4);
    }
    if buf.starts_with(b"\r\n") {
        return Frame::Skip(2);
    }
    if buf.is_empty() || buf == b"\r" {
        return Frame::Incomplete;
    }
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > MAX_MESSAGE {
            return Frame::Invalid("headers too large");
        }
        return Frame::Incomplete;
    };
    let head = &buf[..head_end + 2];
    let mut content_length = 0usize;
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") || name.eq_ignore_ascii_case(b"l") {
            let value = line[colon + 1..].trim_ascii();
            match std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<usize>().ok())
            {
                Some(n) => content_length = n,
                None => return Frame::Invalid("bad Content-Length"),
            }
            break;
        }
    }
    let total = head_end + 4 + content_length;
    if total > MAX_MESSAGE {
        return Frame::Invalid("message too large");
    }
    if buf.len() >= total {
        Frame::Message(total)
    } else {
        Frame::Incomplete
    }
}

#[derive(Default)]
struct Counts {
    per_source: HashMap<IpAddr, usize>,
    total: usize,
}

/// Releases a connection's place in the caps when the connection ends.
struct Slot {
    counts: Arc<Mutex<Counts>>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.per_source.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                c.per_source.remove(&self.ip);
            }
        }
        metrics::gauge!("voxgate_sip_tcp_connections").set(c.total as f64);
    }
}

/// Binds the TCP listener now (so a taken port is a start-up error).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv6() {
        tokio::net::TcpSocket::new_v6()?
    } else {
        tokio::net::TcpSocket::new_v4()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Accepts connections until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    endpoint: EndpointInnerRef,
    limits: TcpLimits,
    token: CancellationToken,
) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let refusals = Arc::new(LogLimiter::default());
    loop {
        let (stream, remote) = tokio::select! {
            _ = token.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    warn!(error = %e, "TCP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let ip = remote.ip();
        let refused = {
            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
            let mine = c.per_source.get(&ip).copied().unwrap_or(0);
            if c.total >= limits.max_total {
                Some("total")
            } else if mine >= limits.max_per_source {
                Some("per_source")
            } else {
                c.total += 1;
                *c.per_source.entry(ip).or_default() += 1;
                metrics::gauge!("voxgate_sip_tcp_connections").set(c.total as f64);
                None
            }
        };
        if let Some(cap) = refused {
            metrics::counter!("voxgate_sip_tcp_refused_total", "cap" => cap).increment(1);
            if let Some(suppressed) = refusals.allow(ip, Instant::now(), Duration::from_secs(60)) {
                warn!(%remote, cap, suppressed, "TCP connection refused: over the connection cap");
            }
            drop(stream);
            continue;
        }
        let slot = Slot {
            counts: counts.clone(),
            ip,
        };
        let endpoint = endpoint.clone();
        let limits = limits.clone();
        let token = token.child_token();
        tokio::spawn(async move {
            connection(stream, remote, endpoint, limits, token).await;
            drop(slot);
        });
    }
}

/// Why a connection was closed (logged at debug, counted in a metric).
fn closed(remote: SocketAddr, why: &'static str) {
    metrics::counter!("voxgate_sip_tcp_closed_total", "why" => why).increment(1);
    debug!(%remote, why, "SIP TCP connection closed");
}

async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    endpoint: EndpointInnerRef,
    limits: TcpLimits,
    token: CancellationToken,
) {
    stream.set_nodelay(true).ok();
    let (mut reader, mut writer) = stream.into_split();
    let addr = SipAddr {
        r#type: Some(rsipstack::sip::Transport::Tcp),
        addr: remote.into(),
    };
    let (to_stack, from_us) = mpsc::unbounded_channel::<TransportEvent>();
    let (to_peer, mut from_stack) = mpsc::unbounded_channel::<TransportEvent>();
    let conn = match ChannelConnection::create_connection(
        from_us,
        to_peer,
        addr.clone(),
        Some(token.clone()),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => {
            warn!(%remote, error = %e, "cannot set up a SIP TCP connection");
            return;
        }
    };
    let sip_conn = SipConnection::Channel(conn);
    endpoint.transport_layer.add_connection(sip_conn.clone());
    debug!(%remote, "SIP TCP connection accepted");

    // Writer: what the stack sends on this connection, plus our own stateless answers.
    let (raw_tx, mut raw_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    let writer_token = token.clone();
    let writer_task = tokio::spawn(async move {
        loop {
            let bytes = tokio::select! {
                _ = writer_token.cancelled() => break,
                ev = from_stack.recv() => match ev {
                    Some(TransportEvent::Incoming(msg, _, _)) => msg.to_bytes().to_vec(),
                    Some(_) => continue,
                    None => break,
                },
                raw = raw_rx.recv() => match raw {
                    Some(b) => b,
                    None => break,
                },
            };
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        writer.shutdown().await.ok();
    });

    let mut buf = BytesMut::new();
    let mut last_message = Instant::now();
    let mut message_started: Option<Instant> = None;
    let why = loop {
        // Frame whatever is buffered.
        match frame(&buf) {
            Frame::Message(n) => {
                let bytes = buf.split_to(n);
                message_started = None;
                last_message = Instant::now();
                deliver(&bytes, remote, &addr, &sip_conn, &to_stack, &raw_tx);
                continue;
            }
            Frame::KeepAlive(n) => {
                buf.advance(n);
                raw_tx.send(b"\r\n".to_vec()).ok();
                continue;
            }
            Frame::Skip(n) => {
                buf.advance(n);
                continue;
            }
            Frame::Invalid(why) => break why,
            Frame::Incomplete => {}
        }
        if buf.is_empty() {
            message_started = None;
            // Give back what a large message made the buffer grow to.
            if buf.capacity() > 8192 {
                buf = BytesMut::new();
            }
        } else if message_started.is_none() {
            message_started = Some(Instant::now());
        }
        let now = Instant::now();
        let (deadline, on_expiry) = match message_started {
            Some(t) => (t + limits.header_timeout, "header deadline"),
            None => (last_message + limits.idle_timeout, "idle"),
        };
        if deadline <= now {
            break on_expiry;
        }
        buf.reserve(4096);
        let read = tokio::select! {
            _ = token.cancelled() => break "shutdown",
            _ = tokio::time::sleep_until(deadline.into()) => break on_expiry,
            r = reader.read_buf(&mut buf) => r,
        };
        match read {
            Ok(0) => break "peer closed",
            Ok(_) => {}
            Err(_) => break "read error",
        }
    };
    closed(remote, why);
    if matches!(why, "header deadline" | "idle") {
        info!(%remote, why, "closing SIP TCP connection");
    }
    // The stack forgets the connection once its serve loop sees our side close.
    drop(to_stack);
    token.cancel();
    writer_task.await.ok();
    endpoint.transport_layer.remove_connection(&sip_conn);
}

/// One complete message: through the guard, then to the stack (or answered / dropped).
fn deliver(
    bytes: &[u8],
    remote: SocketAddr,
    addr: &SipAddr,
    conn: &SipConnection,
    to_stack: &mpsc::UnboundedSender<TransportEvent>,
    raw: &mpsc::UnboundedSender<Vec<u8>>,
) {
    match inspect_datagram(bytes) {
        Verdict::Pass(b) => {
            let msg = match rsipstack::sip::SipMessage::try_from(b.as_ref()) {
                Ok(m) => m,
                Err(e) => {
                    debug!(%remote, error = %e, "unparseable SIP message over TCP");
                    return;
                }
            };
            let msg = match SipConnection::update_msg_received(
                msg,
                remote,
                rsipstack::sip::Transport::Tcp,
            ) {
                Ok(m) => m,
                Err(e) => {
                    debug!(%remote, error = %e, "SIP message over TCP without a usable Via");
                    return;
                }
            };
            to_stack
                .send(TransportEvent::Incoming(msg, conn.clone(), addr.clone()))
                .ok();
        }
        Verdict::Reply { response, why } => {
            debug!(%remote, why, "answering a request the stack cannot handle (TCP)");
            raw.send(response).ok();
        }
        Verdict::Drop { why } => debug!(%remote, why, "ignoring SIP message over TCP"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing() {
        assert_eq!(frame(b""), Frame::Incomplete);
        assert_eq!(frame(b"\r\n\r\nOPTIONS"), Frame::KeepAlive(4));
        assert_eq!(frame(b"\r\nOPTIONS"), Frame::Skip(2));
        assert_eq!(frame(b"OPTIONS sip:x SIP/2.0\r\nVia: a"), Frame::Incomplete);
        let m = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 3\r\n\r\nabcNEXT";
        assert_eq!(frame(m), Frame::Message(m.len() - 4));
        let short = b"OPTIONS sip:x SIP/2.0\r\nl: 10\r\n\r\nabc";
        assert_eq!(frame(short), Frame::Incomplete);
        let none = b"OPTIONS sip:x SIP/2.0\r\nVia: x\r\n\r\nrest";
        assert_eq!(frame(none), Frame::Message(none.len() - 4));
        let bad = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: -1\r\n\r\n";
        assert_eq!(frame(bad), Frame::Invalid("bad Content-Length"));
        let huge = b"OPTIONS sip:x SIP/2.0\r\nContent-Length: 99999999\r\n\r\n";
        assert_eq!(frame(huge), Frame::Invalid("message too large"));
        let endless = vec![b'a'; MAX_MESSAGE + 1];
        assert_eq!(frame(&endless), Frame::Invalid("headers too large"));
    }
}
