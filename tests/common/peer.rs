//! A hand-written SIP UAC on real UDP sockets, for tests that need to do what SIPp cannot
//! (skip the ACK, change media address mid-call, send exact bytes).

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

/// A minimal UAC on a real UDP socket.
pub struct Peer {
    pub sock: UdpSocket,
    pub media: UdpSocket,
    pub gw: SocketAddr,
    pub call_id: String,
    pub tag: String,
    pub to_tag: Option<String>,
    pub contact: Option<String>,
}

impl Peer {
    pub fn new(gw: SocketAddr) -> Peer {
        Peer::bind(gw, "127.0.0.1")
    }

    /// A peer on another loopback address (e.g. `127.0.0.7`), to play a different source.
    pub fn bind(gw: SocketAddr, ip: &str) -> Peer {
        let sock = UdpSocket::bind((ip, 0)).unwrap();
        let media = UdpSocket::bind((ip, 0)).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        media
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let n: u32 = rand_u32();
        Peer {
            sock,
            media,
            gw,
            call_id: format!("txn-{n}@127.0.0.1"),
            tag: format!("t{n}"),
            to_tag: None,
            contact: None,
        }
    }

    pub fn local(&self) -> SocketAddr {
        self.sock.local_addr().unwrap()
    }

    pub fn sdp(&self, media: &UdpSocket, direction: &str) -> String {
        let port = media.local_addr().unwrap().port();
        format!(
            "v=0\r\no=peer 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na={direction}\r\n",
            ip = media.local_addr().unwrap().ip(),
        )
    }

    pub fn request(&self, method: &str, cseq: u32, branch: &str, body: Option<&str>) -> String {
        let to = match &self.to_tag {
            Some(t) => format!("<sip:bot@{}>;tag={t}", self.gw),
            None => format!("<sip:bot@{}>", self.gw),
        };
        let uri = self
            .contact
            .clone()
            .unwrap_or_else(|| format!("sip:bot@{}", self.gw));
        let body = body.unwrap_or("");
        let ct = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".into()
        };
        let cseq_method = if method == "ACK" { "ACK" } else { method };
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{branch};rport\r\nMax-Forwards: 70\r\nFrom: <sip:peer@{local}>;tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {cseq_method}\r\nContact: <sip:peer@{local}>\r\n{ct}Content-Length: {len}\r\n\r\n{body}",
            local = self.local(),
            tag = self.tag,
            cid = self.call_id,
            len = body.len(),
        )
    }

    pub fn send(&self, text: &str) {
        self.sock.send_to(text.as_bytes(), self.gw).unwrap();
    }

    /// Receives SIP messages until one matches `pred` or the timeout passes.
    pub fn recv_until(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 8192];
        while Instant::now() < deadline {
            if let Ok((n, _)) = self.sock.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                let at = Instant::now();
                if text.starts_with("SIP/2.0 2") && text.contains("INVITE") {
                    self.learn(&text);
                }
                if pred(&text) {
                    return Some((at, text));
                }
            }
        }
        None
    }

    pub fn learn(&mut self, resp: &str) {
        if let Some(to) = header(resp, "To") {
            if let Some(i) = to.find("tag=") {
                self.to_tag = Some(
                    to[i + 4..]
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_string(),
                );
            }
        }
        if let Some(c) = header(resp, "Contact") {
            let c = c.trim();
            let uri = c.trim_start_matches('<').split('>').next().unwrap_or(c);
            self.contact = Some(uri.to_string());
        }
    }

    /// Counts RTP packets reaching `sock` within `window`.
    pub fn rtp_count(sock: &UdpSocket, window: Duration) -> usize {
        let deadline = Instant::now() + window;
        let mut buf = [0u8; 2048];
        let mut n = 0;
        while Instant::now() < deadline {
            if let Ok((len, _)) = sock.recv_from(&mut buf) {
                if len >= 12 && buf[0] >> 6 == 2 {
                    n += 1;
                }
            }
        }
        n
    }
}

pub fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish() as u32
}

pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

pub fn status(msg: &str) -> Option<u16> {
    msg.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()
}

pub fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

impl Peer {
    /// INVITE with an SDP offer, wait for the 200, ACK it. Panics (test failure) otherwise.
    pub fn call(&mut self) {
        let offer = self.sdp(&self.media, "sendrecv");
        self.send(&self.request("INVITE", 1, "call1", Some(&offer)));
        self.recv_until(Duration::from_secs(5), |m| status(m) == Some(200))
            .expect("no 200 OK for the INVITE");
        self.send(&self.request("ACK", 1, "call2", None));
        std::thread::sleep(Duration::from_millis(50));
    }

    /// Sends an INFO with `application/dtmf-relay` and waits for its 200.
    pub fn info_digit(&mut self, cseq: u32, digit: char) {
        let body = format!("Signal={digit}\r\nDuration=160\r\n");
        let req = self
            .request("INFO", cseq, &format!("info{cseq}"), Some(&body))
            .replace("application/sdp", "application/dtmf-relay");
        let tag = format!("{cseq} INFO");
        // Retransmit like a real UAC (Timer E): an INFO racing the ACK may go unanswered.
        for _ in 0..4 {
            self.send(&req);
            let ok = self.recv_until(Duration::from_millis(500), |m| {
                status(m) == Some(200) && m.contains(&tag)
            });
            if ok.is_some() {
                return;
            }
        }
        panic!("no 200 for INFO");
    }

    pub fn bye(&mut self, cseq: u32) {
        self.send(&self.request("BYE", cseq, &format!("bye{cseq}"), None));
    }
}
