//! The UDP socket handed to rsipstack, with the raw-bytes [`guard`](super::guard) in front.

use super::guard::{inspect_datagram, Verdict};
use rsipstack::platform::net::UdpSocket as StackUdpSocket;
use std::net::SocketAddr;
use tracing::{debug, warn};

/// Wraps the listening UDP socket: answers what the stack would drop (501/400), repairs UDP
/// messages without Content-Length, and hands everything else through unchanged.
pub struct GuardedUdp {
    socket: tokio::net::UdpSocket,
}

impl GuardedUdp {
    pub fn new(socket: tokio::net::UdpSocket) -> Self {
        GuardedUdp { socket }
    }
}

#[async_trait::async_trait]
impl StackUdpSocket for GuardedUdp {
    async fn recv_from(&self, buf: &mut [u8]) -> rsipstack::Result<(usize, SocketAddr)> {
        let mut scratch = vec![0u8; buf.len()];
        loop {
            let (len, from) = self.socket.recv_from(&mut scratch).await?;
            let datagram = &scratch[..len];
            // Keep-alives are the stack's business (it answers CRLFCRLF).
            if datagram.iter().all(|b| b.is_ascii_whitespace()) {
                buf[..len].copy_from_slice(datagram);
                return Ok((len, from));
            }
            match inspect_datagram(datagram) {
                Verdict::Pass(bytes) => {
                    if bytes.len() > buf.len() {
                        warn!(%from, len = bytes.len(), "SIP datagram too large after repair; dropped");
                        continue;
                    }
                    buf[..bytes.len()].copy_from_slice(&bytes);
                    return Ok((bytes.len(), from));
                }
                Verdict::Reply { response, why } => {
                    debug!(%from, why, "answering a request the stack cannot handle");
                    if let Err(e) = self.socket.send_to(&response, from).await {
                        warn!(%from, error = %e, "could not send stateless response");
                    }
                }
                Verdict::Drop { why } => {
                    debug!(%from, len, why, "ignoring datagram");
                }
            }
        }
    }

    async fn send_to(&self, buf: &[u8], addr: SocketAddr) -> rsipstack::Result<usize> {
        Ok(self.socket.send_to(buf, addr).await?)
    }

    fn local_addr(&self) -> rsipstack::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }
}
