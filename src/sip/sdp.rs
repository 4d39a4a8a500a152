//! SDP parsing and RFC 3264 offer/answer for a G.711 + telephone-event audio gateway.
//!
//! Pure functions over text: no sockets, no rsipstack types. The parser is tolerant (CRLF or
//! LF, unknown lines ignored) because trunks send all kinds of SDP; the negotiator is strict
//! about what we can actually do (plain RTP/AVP, PCMU/PCMA at 8 kHz).

use std::fmt;
use std::net::{IpAddr, SocketAddr};

use thiserror::Error;
use tracing::debug;

use crate::media::codec::Codec;

/// The RTP profile we speak. SRTP (`RTP/SAVP`) and feedback (`RTP/AVPF`) offers are skipped.
const RTP_AVP: &str = "RTP/AVP";
/// DTMF events we accept when the offer does not say (RFC 4733 digits 0-9, *, #, A-D, flash).
const DEFAULT_TE_EVENTS: &str = "0-16";
/// Packetisation we always answer with; our RTP path produces 20 ms frames.
const PTIME_MS: u32 = 20;

/// Why an SDP body could not be parsed or negotiated.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SdpError {
    #[error("SDP body is empty")]
    Empty,
    #[error("body is not SDP: it has no `type=value` lines")]
    NotSdp,
    #[error("SDP has no m=audio line")]
    MissingAudio,
    #[error("line {line}: malformed o= line `{value}`: expected `<username> <sess-id> <version> IN <IP4|IP6> <address>` with numeric sess-id and version")]
    BadOrigin { line: usize, value: String },
    #[error(
        "line {line}: malformed m= line `{value}`: expected `<media> <port> <proto> <fmt> ...`"
    )]
    BadMediaLine { line: usize, value: String },
    #[error("line {line}: bad port `{value}` in m= line (must be a number 0-65535)")]
    BadPort { line: usize, value: String },
    #[error("line {line}: bad c= line `{value}`: expected `IN IP4 <ipv4>` or `IN IP6 <ipv6>`")]
    BadConnection { line: usize, value: String },
    #[error("m=audio line {line} has no connection address (no c= at session or media level)")]
    NoConnection { line: usize },
    #[error(
        "no usable audio stream: every m=audio line is rejected (port 0) or not plain RTP/AVP"
    )]
    NoUsableAudio,
    #[error("no common codec: offered payload types [{offered}], we support PCMU/PCMA")]
    NoCommonCodec { offered: String },
}

/// Media direction (RFC 4566 §6 / RFC 3264 §5.1), always from the point of view of the side
/// that wrote (or, in [`Negotiated`], that holds) the description.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    /// The attribute name, e.g. `sendrecv`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// Parses an attribute name; `None` for anything that is not a direction.
    pub fn from_attr(s: &str) -> Option<Direction> {
        match s.to_ascii_lowercase().as_str() {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }

    /// The peer's view of this direction: what an answer must say (RFC 3264 §6.1).
    pub fn mirror(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// Drops the sending half; used when the peer gave no address to send to (hold).
    pub fn without_send(self) -> Direction {
        match self {
            Direction::SendRecv | Direction::RecvOnly => Direction::RecvOnly,
            Direction::SendOnly | Direction::Inactive => Direction::Inactive,
        }
    }

    /// Whether this side may send media.
    pub fn sends(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether this side expects to receive media.
    pub fn receives(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The `o=` line: identifies the session and its revision (re-INVITEs bump the version).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: u64,
    pub version: u64,
    pub address: String,
}

/// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RtpMap {
    pub payload_type: u8,
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: Option<u16>,
}

/// `a=fmtp:<pt> <params>`, params kept verbatim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fmtp {
    pub payload_type: u8,
    pub params: String,
}

/// One `m=` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaDescription {
    /// 1-based line number of the `m=` line, for error messages.
    pub line: usize,
    pub media: String,
    pub port: u16,
    pub proto: String,
    /// Format tokens as written (payload type numbers for RTP profiles).
    pub formats: Vec<String>,
    /// Effective connection address: media-level `c=` if present, else session-level.
    pub connection: Option<IpAddr>,
    pub rtpmaps: Vec<RtpMap>,
    pub fmtps: Vec<Fmtp>,
    pub ptime: Option<u32>,
    /// Effective direction: media-level attribute, else session-level, else sendrecv.
    pub direction: Direction,
}

impl MediaDescription {
    /// Whether this is an audio stream we could use: non-zero port, plain RTP/AVP.
    pub fn is_usable_audio(&self) -> bool {
        self.media.eq_ignore_ascii_case("audio")
            && self.port != 0
            && self.proto.eq_ignore_ascii_case(RTP_AVP)
    }

    /// The formats that parse as RTP payload types, in offer order.
    pub fn payload_types(&self) -> Vec<u8> {
        self.formats.iter().filter_map(|f| f.parse().ok()).collect()
    }

    /// The rtpmap for a payload type, if one was given.
    pub fn rtpmap(&self, pt: u8) -> Option<&RtpMap> {
        self.rtpmaps.iter().find(|m| m.payload_type == pt)
    }

    /// The fmtp parameters for a payload type, if given.
    pub fn fmtp(&self, pt: u8) -> Option<&str> {
        self.fmtps
            .iter()
            .find(|f| f.payload_type == pt)
            .map(|f| f.params.as_str())
    }

    /// Resolves a payload type to one of our codecs: the rtpmap wins, else the static table.
    pub fn codec_for(&self, pt: u8) -> Option<Codec> {
        match self.rtpmap(pt) {
            Some(map) if map.channels.unwrap_or(1) == 1 => {
                Codec::from_rtpmap(&map.encoding, map.clock_rate)
            }
            Some(_) => None,
            None => Codec::from_payload_type(pt),
        }
    }

    /// The payload type announced for `telephone-event/8000` and listed in the m= line.
    pub fn telephone_event_pt(&self) -> Option<u8> {
        self.payload_types().into_iter().find(|pt| {
            self.rtpmap(*pt).is_some_and(|m| {
                m.encoding.eq_ignore_ascii_case("telephone-event") && m.clock_rate == 8000
            })
        })
    }

    /// The RTP address of the peer, `None` when on hold (unspecified address) or absent.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.connection
            .filter(|ip| !ip.is_unspecified())
            .map(|ip| SocketAddr::new(ip, self.port))
    }
}

/// A parsed SDP body (RFC 4566), keeping only what a G.711 gateway needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionDescription {
    /// `None` if the (mandatory) o= line was missing; tolerated rather than failing the call.
    pub origin: Option<Origin>,
    /// Session-level `c=` address.
    pub connection: Option<IpAddr>,
    /// Session-level direction attribute.
    pub direction: Option<Direction>,
    pub media: Vec<MediaDescription>,
}

impl SessionDescription {
    /// Parses SDP text. Accepts CRLF or LF line endings and ignores lines it does not know.
    ///
    /// Fails when there is no `m=audio` line, when a line we rely on (o=, c=, m=) is
    /// malformed, or when a live audio stream has no connection address.
    pub fn parse(text: &str) -> Result<SessionDescription, SdpError> {
        if text.trim().is_empty() {
            return Err(SdpError::Empty);
        }
        let mut origin = None;
        let mut session_conn = None;
        let mut session_dir = None;
        // Per-media raw state; effective values are resolved once the session level is known.
        let mut media: Vec<(MediaDescription, Option<IpAddr>, Option<Direction>)> = Vec::new();
        let mut saw_sdp_line = false;

        for (idx, raw) in text.lines().enumerate() {
            let line_no = idx + 1;
            let line = raw.trim();
            if line.is_empty() {
                continue;
            }
            let Some((kind, value)) = split_line(line) else {
                debug!(line = line_no, "ignoring non-SDP line");
                continue;
            };
            saw_sdp_line = true;
            match kind {
                'o' => origin = Some(parse_origin(value, line_no)?),
                'c' => {
                    let addr = parse_connection(value, line_no)?;
                    match media.last_mut() {
                        Some((_, conn, _)) => *conn = Some(addr),
                        None => session_conn = Some(addr),
                    }
                }
                'm' => media.push((parse_media(value, line_no)?, None, None)),
                'a' => {
                    let (name, arg) = match value.split_once(':') {
                        Some((n, a)) => (n.trim(), Some(a.trim())),
                        None => (value.trim(), None),
                    };
                    if let Some(dir) = Direction::from_attr(name) {
                        match media.last_mut() {
                            Some((_, _, d)) => *d = Some(dir),
                            None => session_dir = Some(dir),
                        }
                    } else if let (Some((m, _, _)), Some(arg)) = (media.last_mut(), arg) {
                        apply_media_attribute(m, name, arg, line_no);
                    }
                }
                _ => {}
            }
        }

        if !saw_sdp_line {
            return Err(SdpError::NotSdp);
        }
        let media: Vec<MediaDescription> = media
            .into_iter()
            .map(|(mut m, conn, dir)| {
                m.connection = conn.or(session_conn);
                m.direction = dir.or(session_dir).unwrap_or_default();
                m
            })
            .collect();
        if !media.iter().any(|m| m.media.eq_ignore_ascii_case("audio")) {
            return Err(SdpError::MissingAudio);
        }
        if let Some(m) = media.iter().find(|m| {
            m.media.eq_ignore_ascii_case("audio") && m.port != 0 && m.connection.is_none()
        }) {
            return Err(SdpError::NoConnection { line: m.line });
        }
        Ok(SessionDescription {
            origin,
            connection: session_conn,
            direction: session_dir,
            media,
        })
    }

    /// The first audio stream we could use, if any.
    pub fn usable_audio(&self) -> Option<&MediaDescription> {
        self.media.iter().find(|m| m.is_usable_audio())
    }
}

/// Our side of the media session, as advertised in SDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalMedia {
    /// The external/advertised address (what the peer must send RTP to).
    pub addr: IpAddr,
    pub port: u16,
    /// Stays fixed for the dialog.
    pub session_id: u64,
    /// Must increase with every new description sent in the dialog (RFC 3264 §8).
    pub version: u64,
}

/// The outcome of offer/answer: what to send, where, and (when we answered) the SDP text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    /// The payload type the peer uses for `codec` (may be dynamic).
    pub payload_type: u8,
    pub telephone_event_pt: Option<u8>,
    /// Where to send RTP; `None` when the peer is on hold (0.0.0.0) and must not be sent to.
    pub remote: Option<SocketAddr>,
    /// Our direction (what we put in the answer / the mirror of the peer's answer).
    pub direction: Direction,
    /// Full answer SDP (CRLF line endings); empty from [`accept_answer`].
    pub answer: String,
}

/// Answers an offer (RFC 3264 §6): picks the first offered codec we support, mirrors the
/// direction and writes the answer SDP.
///
/// `prefs` is the set of codecs we are willing to use; the offer's order decides among them,
/// which is what the offerer asked for. Every offered m= line gets an answer line (unused ones
/// with port 0), as RFC 3264 requires.
pub fn negotiate_answer(
    offer: &SessionDescription,
    prefs: &[Codec],
    local: &LocalMedia,
) -> Result<Negotiated, SdpError> {
    let mut chosen: Option<(usize, Codec, u8)> = None;
    let mut offered = Vec::new();
    let mut saw_usable = false;
    for (idx, m) in offer.media.iter().enumerate() {
        if !m.is_usable_audio() {
            continue;
        }
        saw_usable = true;
        offered.extend(m.formats.iter().cloned());
        let pick = m.payload_types().into_iter().find_map(|pt| {
            m.codec_for(pt)
                .filter(|c| prefs.contains(c))
                .map(|c| (c, pt))
        });
        if let Some((codec, pt)) = pick {
            chosen = Some((idx, codec, pt));
            break;
        }
    }
    if !saw_usable {
        return Err(SdpError::NoUsableAudio);
    }
    let Some((chosen_idx, codec, payload_type)) = chosen else {
        return Err(SdpError::NoCommonCodec {
            offered: offered.join(" "),
        });
    };
    let m = &offer.media[chosen_idx];
    let telephone_event_pt = m.telephone_event_pt();
    let remote = m.remote_addr();
    let mut direction = m.direction.mirror();
    if remote.is_none() {
        direction = direction.without_send();
    }

    let mut sdp = session_header(local);
    for (idx, other) in offer.media.iter().enumerate() {
        if idx == chosen_idx {
            let te = telephone_event_pt.map(|pt| {
                let events = m.fmtp(pt).unwrap_or(DEFAULT_TE_EVENTS);
                (pt, events)
            });
            push_audio_section(
                &mut sdp,
                local.port,
                &[(payload_type, codec)],
                te,
                direction,
            );
        } else {
            let formats = if other.formats.is_empty() {
                "0".to_string()
            } else {
                other.formats.join(" ")
            };
            push_line(
                &mut sdp,
                &format!("m={} 0 {} {}", other.media, other.proto, formats),
            );
        }
    }
    debug!(
        codec = codec.name(),
        payload_type,
        ?telephone_event_pt,
        ?remote,
        %direction,
        "SDP answer negotiated"
    );
    Ok(Negotiated {
        codec,
        payload_type,
        telephone_event_pt,
        remote,
        direction,
        answer: sdp,
    })
}

/// Builds an offer for INVITEs we send (and for a 200 OK to an INVITE without SDP).
///
/// Codecs keep the caller's order and static payload types; `telephone_event_pt` should be a
/// dynamic type (96-127). An empty codec list falls back to PCMU+PCMA so the SDP stays valid.
pub fn build_offer(
    codecs: &[Codec],
    telephone_event_pt: u8,
    local: &LocalMedia,
    direction: Direction,
) -> String {
    let mut list: Vec<(u8, Codec)> = Vec::new();
    for c in codecs {
        if !list.iter().any(|(_, x)| x == c) {
            list.push((c.payload_type(), *c));
        }
    }
    if list.is_empty() {
        tracing::warn!("build_offer called without codecs; offering PCMU and PCMA");
        list = vec![(0, Codec::Pcmu), (8, Codec::Pcma)];
    }
    let te = if list.iter().any(|(pt, _)| *pt == telephone_event_pt) {
        tracing::warn!(
            telephone_event_pt,
            "telephone-event payload type collides with a codec; not offering DTMF events"
        );
        None
    } else {
        Some((telephone_event_pt, DEFAULT_TE_EVENTS))
    };
    let mut sdp = session_header(local);
    push_audio_section(&mut sdp, local.port, &list, te, direction);
    sdp
}

/// Reads the answer to an offer we sent: the first answered codec among those we offered.
pub fn accept_answer(
    our_offer_codecs: &[Codec],
    answer: &SessionDescription,
) -> Result<Negotiated, SdpError> {
    let Some(m) = answer.usable_audio() else {
        return Err(SdpError::NoUsableAudio);
    };
    let Some((codec, payload_type)) = m.payload_types().into_iter().find_map(|pt| {
        m.codec_for(pt)
            .filter(|c| our_offer_codecs.contains(c))
            .map(|c| (c, pt))
    }) else {
        return Err(SdpError::NoCommonCodec {
            offered: m.formats.join(" "),
        });
    };
    let remote = m.remote_addr();
    let mut direction = m.direction.mirror();
    if remote.is_none() {
        direction = direction.without_send();
    }
    Ok(Negotiated {
        codec,
        payload_type,
        telephone_event_pt: m.telephone_event_pt(),
        remote,
        direction,
        answer: String::new(),
    })
}

fn push_line(sdp: &mut String, line: &str) {
    sdp.push_str(line);
    sdp.push_str("\r\n");
}

fn addr_fields(addr: IpAddr) -> String {
    match addr {
        IpAddr::V4(a) => format!("IN IP4 {a}"),
        IpAddr::V6(a) => format!("IN IP6 {a}"),
    }
}

/// v=, o=, s=, c= (session level, so it matches `c=IN IP4 <addr>` exactly) and t=.
fn session_header(local: &LocalMedia) -> String {
    let fields = addr_fields(local.addr);
    let mut sdp = String::with_capacity(256);
    push_line(&mut sdp, "v=0");
    push_line(
        &mut sdp,
        &format!("o=- {} {} {}", local.session_id, local.version, fields),
    );
    push_line(&mut sdp, "s=voxgate");
    push_line(&mut sdp, &format!("c={fields}"));
    push_line(&mut sdp, "t=0 0");
    sdp
}

/// The audio m= section: codecs first (chosen one leading), then telephone-event.
fn push_audio_section(
    sdp: &mut String,
    port: u16,
    codecs: &[(u8, Codec)],
    te: Option<(u8, &str)>,
    direction: Direction,
) {
    let mut m = format!("m=audio {port} {RTP_AVP}");
    for (pt, _) in codecs {
        m.push_str(&format!(" {pt}"));
    }
    if let Some((pt, _)) = te {
        m.push_str(&format!(" {pt}"));
    }
    push_line(sdp, &m);
    for (pt, codec) in codecs {
        push_line(sdp, &format!("a=rtpmap:{pt} {}/8000", codec.name()));
    }
    if let Some((pt, events)) = te {
        push_line(sdp, &format!("a=rtpmap:{pt} telephone-event/8000"));
        push_line(sdp, &format!("a=fmtp:{pt} {events}"));
    }
    push_line(sdp, &format!("a=ptime:{PTIME_MS}"));
    push_line(sdp, &format!("a={direction}"));
}

/// Splits `x=value`; `None` for lines that are not SDP syntax.
fn split_line(line: &str) -> Option<(char, &str)> {
    let mut chars = line.chars();
    let kind = chars.next()?;
    if !kind.is_ascii_alphabetic() || chars.next()? != '=' {
        return None;
    }
    Some((kind.to_ascii_lowercase(), &line[2..]))
}

fn parse_origin(value: &str, line: usize) -> Result<Origin, SdpError> {
    let bad = || SdpError::BadOrigin {
        line,
        value: value.to_string(),
    };
    let f: Vec<&str> = value.split_whitespace().collect();
    if f.len() < 6 {
        return Err(bad());
    }
    Ok(Origin {
        username: f[0].to_string(),
        session_id: f[1].parse().map_err(|_| bad())?,
        version: f[2].parse().map_err(|_| bad())?,
        address: f[5].to_string(),
    })
}

/// `IN IP4 <addr>[/ttl[/n]]`; hostnames are refused because we would have to resolve them.
fn parse_connection(value: &str, line: usize) -> Result<IpAddr, SdpError> {
    let bad = || SdpError::BadConnection {
        line,
        value: value.to_string(),
    };
    let f: Vec<&str> = value.split_whitespace().collect();
    if f.len() < 3 || !f[0].eq_ignore_ascii_case("IN") {
        return Err(bad());
    }
    let addr_text = f[2].split('/').next().unwrap_or_default();
    let addr: IpAddr = addr_text.parse().map_err(|_| bad())?;
    let family_ok = match addr {
        IpAddr::V4(_) => f[1].eq_ignore_ascii_case("IP4"),
        IpAddr::V6(_) => f[1].eq_ignore_ascii_case("IP6"),
    };
    if !family_ok {
        return Err(bad());
    }
    Ok(addr)
}

/// `<media> <port>[/<count>] <proto> <fmt> ...`
fn parse_media(value: &str, line: usize) -> Result<MediaDescription, SdpError> {
    let f: Vec<&str> = value.split_whitespace().collect();
    if f.len() < 3 {
        return Err(SdpError::BadMediaLine {
            line,
            value: value.to_string(),
        });
    }
    let port_text = f[1].split('/').next().unwrap_or_default();
    let port: u16 = port_text.parse().map_err(|_| SdpError::BadPort {
        line,
        value: f[1].to_string(),
    })?;
    Ok(MediaDescription {
        line,
        media: f[0].to_string(),
        port,
        proto: f[2].to_string(),
        formats: f[3..].iter().map(|s| s.to_string()).collect(),
        connection: None,
        rtpmaps: Vec::new(),
        fmtps: Vec::new(),
        ptime: None,
        direction: Direction::SendRecv,
    })
}

/// rtpmap / fmtp / ptime; malformed ones are logged and dropped, never fatal.
fn apply_media_attribute(m: &mut MediaDescription, name: &str, arg: &str, line: usize) {
    if name.eq_ignore_ascii_case("rtpmap") {
        match parse_rtpmap(arg) {
            Some(map) => m.rtpmaps.push(map),
            None => debug!(line, arg, "ignoring malformed rtpmap"),
        }
    } else if name.eq_ignore_ascii_case("fmtp") {
        let (pt, params) = arg.split_once(char::is_whitespace).unwrap_or((arg, ""));
        match pt.parse() {
            Ok(payload_type) => m.fmtps.push(Fmtp {
                payload_type,
                params: params.trim().to_string(),
            }),
            Err(_) => debug!(line, arg, "ignoring malformed fmtp"),
        }
    } else if name.eq_ignore_ascii_case("ptime") {
        match arg.parse() {
            Ok(ms) => m.ptime = Some(ms),
            Err(_) => debug!(line, arg, "ignoring malformed ptime"),
        }
    }
}

fn parse_rtpmap(arg: &str) -> Option<RtpMap> {
    let (pt, rest) = arg.split_once(char::is_whitespace)?;
    let mut parts = rest.trim().split('/');
    let encoding = parts.next()?.trim().to_string();
    let clock_rate = parts.next()?.trim().parse().ok()?;
    let channels = match parts.next() {
        Some(c) => Some(c.trim().parse().ok()?),
        None => None,
    };
    if encoding.is_empty() {
        return None;
    }
    Some(RtpMap {
        payload_type: pt.parse().ok()?,
        encoding,
        clock_rate,
        channels,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SIPP_OFFER: &str = "v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n";

    fn local() -> LocalMedia {
        LocalMedia {
            addr: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
            port: 40000,
            session_id: 42,
            version: 7,
        }
    }

    fn offer(body: &str) -> SessionDescription {
        SessionDescription::parse(body).unwrap()
    }

    fn lines(sdp: &str) -> Vec<&str> {
        sdp.split("\r\n").filter(|l| !l.is_empty()).collect()
    }

    /// What a negotiation case must produce.
    struct Expect {
        codec: Codec,
        pt: u8,
        te: Option<u8>,
        remote: Option<&'static str>,
        dir: Direction,
        m_line: &'static str,
    }

    fn base(m: &str, attrs: &str) -> String {
        format!(
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n{m}\r\n{attrs}"
        )
    }

    #[test]
    fn negotiation_table() {
        let cases: Vec<(&str, String, Expect)> = vec![
            (
                "sipp offer 0 8 101",
                SIPP_OFFER.to_string(),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: Some(101),
                    remote: Some("127.0.0.1:6000"),
                    dir: Direction::SendRecv,
                    m_line: "m=audio 40000 RTP/AVP 0 101",
                },
            ),
            (
                "pcma only, no rtpmap",
                base("m=audio 5000 RTP/AVP 8", ""),
                Expect {
                    codec: Codec::Pcma,
                    pt: 8,
                    te: None,
                    remote: Some("192.0.2.1:5000"),
                    dir: Direction::SendRecv,
                    m_line: "m=audio 40000 RTP/AVP 8",
                },
            ),
            (
                "offer order wins: pcma before pcmu",
                base("m=audio 5000 RTP/AVP 8 0 96", "a=rtpmap:96 telephone-event/8000\r\n"),
                Expect {
                    codec: Codec::Pcma,
                    pt: 8,
                    te: Some(96),
                    remote: Some("192.0.2.1:5000"),
                    dir: Direction::SendRecv,
                    m_line: "m=audio 40000 RTP/AVP 8 96",
                },
            ),
            (
                "dynamic pt for pcmu, unknown codecs first",
                base(
                    "m=audio 5000 RTP/AVP 18 97 100",
                    "a=rtpmap:97 pcmu/8000/1\r\na=rtpmap:100 telephone-event/8000\r\n",
                ),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 97,
                    te: Some(100),
                    remote: Some("192.0.2.1:5000"),
                    dir: Direction::SendRecv,
                    m_line: "m=audio 40000 RTP/AVP 97 100",
                },
            ),
            (
                "sendonly -> recvonly",
                base("m=audio 5000 RTP/AVP 0", "a=sendonly\r\n"),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: None,
                    remote: Some("192.0.2.1:5000"),
                    dir: Direction::RecvOnly,
                    m_line: "m=audio 40000 RTP/AVP 0",
                },
            ),
            (
                "recvonly -> sendonly",
                base("m=audio 5000 RTP/AVP 0", "a=recvonly\r\n"),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: None,
                    remote: Some("192.0.2.1:5000"),
                    dir: Direction::SendOnly,
                    m_line: "m=audio 40000 RTP/AVP 0",
                },
            ),
            (
                "inactive -> inactive",
                base("m=audio 5000 RTP/AVP 0", "a=inactive\r\n"),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: None,
                    remote: Some("192.0.2.1:5000"),
                    dir: Direction::Inactive,
                    m_line: "m=audio 40000 RTP/AVP 0",
                },
            ),
            (
                "c=0.0.0.0 hold (rfc 2543 style)",
                "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\n".to_string(),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: None,
                    remote: None,
                    dir: Direction::RecvOnly,
                    m_line: "m=audio 40000 RTP/AVP 0",
                },
            ),
            (
                "c=0.0.0.0 with recvonly cannot send anywhere -> inactive",
                "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 5000 RTP/AVP 0\r\na=recvonly\r\n".to_string(),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: None,
                    remote: None,
                    dir: Direction::Inactive,
                    m_line: "m=audio 40000 RTP/AVP 0",
                },
            ),
            (
                "media-level direction overrides session-level",
                "v=0\r\nc=IN IP4 192.0.2.1\r\na=sendonly\r\nm=audio 5000 RTP/AVP 0\r\na=sendrecv\r\n".to_string(),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: None,
                    remote: Some("192.0.2.1:5000"),
                    dir: Direction::SendRecv,
                    m_line: "m=audio 40000 RTP/AVP 0",
                },
            ),
            (
                "session-level direction applies when media has none",
                "v=0\r\nc=IN IP4 192.0.2.1\r\na=sendonly\r\nm=audio 5000 RTP/AVP 0\r\n".to_string(),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: None,
                    remote: Some("192.0.2.1:5000"),
                    dir: Direction::RecvOnly,
                    m_line: "m=audio 40000 RTP/AVP 0",
                },
            ),
            (
                "ipv6 media-level c=",
                "v=0\r\no=- 1 1 IN IP6 2001:db8::1\r\ns=-\r\nt=0 0\r\nm=audio 7000 RTP/AVP 8\r\nc=IN IP6 2001:db8::1\r\n".to_string(),
                Expect {
                    codec: Codec::Pcma,
                    pt: 8,
                    te: None,
                    remote: Some("[2001:db8::1]:7000"),
                    dir: Direction::SendRecv,
                    m_line: "m=audio 40000 RTP/AVP 8",
                },
            ),
            (
                "LF-only line endings",
                SIPP_OFFER.replace("\r\n", "\n"),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: Some(101),
                    remote: Some("127.0.0.1:6000"),
                    dir: Direction::SendRecv,
                    m_line: "m=audio 40000 RTP/AVP 0 101",
                },
            ),
            (
                "first audio line rejected (port 0), second used",
                "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 0 RTP/AVP 0\r\nm=audio 5002 RTP/AVP 8\r\n".to_string(),
                Expect {
                    codec: Codec::Pcma,
                    pt: 8,
                    te: None,
                    remote: Some("192.0.2.1:5002"),
                    dir: Direction::SendRecv,
                    m_line: "m=audio 40000 RTP/AVP 8",
                },
            ),
            (
                "SRTP line skipped, plain RTP line used",
                "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/SAVP 0\r\nm=audio 5002 RTP/AVP 0\r\n".to_string(),
                Expect {
                    codec: Codec::Pcmu,
                    pt: 0,
                    te: None,
                    remote: Some("192.0.2.1:5002"),
                    dir: Direction::SendRecv,
                    m_line: "m=audio 40000 RTP/AVP 0",
                },
            ),
        ];
        for (name, body, want) in cases {
            let offer = SessionDescription::parse(&body)
                .unwrap_or_else(|e| panic!("{name}: parse failed: {e}"));
            let n = negotiate_answer(&offer, &[Codec::Pcmu, Codec::Pcma], &local())
                .unwrap_or_else(|e| panic!("{name}: negotiation failed: {e}"));
            assert_eq!(n.codec, want.codec, "{name}");
            assert_eq!(n.payload_type, want.pt, "{name}");
            assert_eq!(n.telephone_event_pt, want.te, "{name}");
            assert_eq!(
                n.remote,
                want.remote.map(|r| r.parse::<SocketAddr>().unwrap()),
                "{name}"
            );
            assert_eq!(n.direction, want.dir, "{name}");
            let ls = lines(&n.answer);
            assert!(ls.contains(&want.m_line), "{name}: {:?}", ls);
            let dir_line = format!("a={}", want.dir);
            assert!(ls.contains(&dir_line.as_str()), "{name}: {:?}", ls);
            // The answer must itself be parseable SDP with as many m= lines as the offer.
            let reparsed = SessionDescription::parse(&n.answer).unwrap();
            assert_eq!(reparsed.media.len(), offer.media.len(), "{name}");
        }
    }

    #[test]
    fn sipp_answer_is_exact() {
        let n =
            negotiate_answer(&offer(SIPP_OFFER), &[Codec::Pcmu, Codec::Pcma], &local()).unwrap();
        assert_eq!(
            n.answer,
            "v=0\r\n\
o=- 42 7 IN IP4 203.0.113.5\r\n\
s=voxgate\r\n\
c=IN IP4 203.0.113.5\r\n\
t=0 0\r\n\
m=audio 40000 RTP/AVP 0 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=fmtp:101 0-15\r\n\
a=ptime:20\r\n\
a=sendrecv\r\n"
        );
    }

    #[test]
    fn answer_version_comes_from_caller() {
        let o = offer(SIPP_OFFER);
        let mut l = local();
        let first = negotiate_answer(&o, &[Codec::Pcmu], &l).unwrap();
        l.version += 1;
        let second = negotiate_answer(&o, &[Codec::Pcmu], &l).unwrap();
        let a = offer(&first.answer).origin.unwrap();
        let b = offer(&second.answer).origin.unwrap();
        assert_eq!(a.session_id, b.session_id);
        assert_eq!(b.version, a.version + 1);
    }

    #[test]
    fn telephone_event_default_fmtp() {
        let body = base(
            "m=audio 5000 RTP/AVP 0 101",
            "a=rtpmap:101 telephone-event/8000\r\n",
        );
        let n = negotiate_answer(&offer(&body), &[Codec::Pcmu], &local()).unwrap();
        assert!(lines(&n.answer).contains(&"a=fmtp:101 0-16"));
    }

    #[test]
    fn telephone_event_at_other_rate_is_ignored() {
        let body = base(
            "m=audio 5000 RTP/AVP 0 101",
            "a=rtpmap:101 telephone-event/48000\r\n",
        );
        let n = negotiate_answer(&offer(&body), &[Codec::Pcmu], &local()).unwrap();
        assert_eq!(n.telephone_event_pt, None);
        assert!(lines(&n.answer).contains(&"m=audio 40000 RTP/AVP 0"));
    }

    #[test]
    fn prefs_restrict_choice() {
        let n = negotiate_answer(&offer(SIPP_OFFER), &[Codec::Pcma], &local()).unwrap();
        assert_eq!(n.codec, Codec::Pcma);
        assert!(lines(&n.answer).contains(&"m=audio 40000 RTP/AVP 8 101"));
    }

    #[test]
    fn unused_streams_are_rejected_with_port_zero() {
        let body =
            "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/AVP 0\r\nm=video 5002 RTP/AVP 31\r\n";
        let n = negotiate_answer(&offer(body), &[Codec::Pcmu], &local()).unwrap();
        let ls = lines(&n.answer);
        assert!(ls.contains(&"m=audio 40000 RTP/AVP 0"));
        assert!(ls.contains(&"m=video 0 RTP/AVP 31"));
    }

    #[test]
    fn negotiation_errors() {
        let cases: Vec<(&str, String, SdpError)> = vec![
            (
                "no common codec",
                base("m=audio 5000 RTP/AVP 18 9", ""),
                SdpError::NoCommonCodec {
                    offered: "18 9".into(),
                },
            ),
            (
                "pcmu at wrong rate is not pcmu",
                base("m=audio 5000 RTP/AVP 96", "a=rtpmap:96 PCMU/16000\r\n"),
                SdpError::NoCommonCodec {
                    offered: "96".into(),
                },
            ),
            (
                "port 0 audio",
                base("m=audio 0 RTP/AVP 0", ""),
                SdpError::NoUsableAudio,
            ),
            (
                "srtp only",
                base("m=audio 5000 RTP/SAVP 0", ""),
                SdpError::NoUsableAudio,
            ),
        ];
        for (name, body, want) in cases {
            let err =
                negotiate_answer(&offer(&body), &[Codec::Pcmu, Codec::Pcma], &local()).unwrap_err();
            assert_eq!(err, want, "{name}");
        }
    }

    #[test]
    fn parse_errors() {
        let cases: Vec<(&str, &str, SdpError)> = vec![
            ("empty", "  \r\n", SdpError::Empty),
            ("garbage", "hello world\nthis is not sdp", SdpError::NotSdp),
            (
                "no audio",
                "v=0\r\nc=IN IP4 192.0.2.1\r\nm=video 5000 RTP/AVP 31\r\n",
                SdpError::MissingAudio,
            ),
            (
                "missing c=",
                "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio 5000 RTP/AVP 0\r\n",
                SdpError::NoConnection { line: 3 },
            ),
            (
                "bad port",
                "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 70000 RTP/AVP 0\r\n",
                SdpError::BadPort {
                    line: 3,
                    value: "70000".into(),
                },
            ),
            (
                "non-numeric port",
                "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio abc RTP/AVP 0\r\n",
                SdpError::BadPort {
                    line: 3,
                    value: "abc".into(),
                },
            ),
            (
                "short m= line",
                "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000\r\n",
                SdpError::BadMediaLine {
                    line: 3,
                    value: "audio 5000".into(),
                },
            ),
            (
                "hostname in c=",
                "v=0\r\nc=IN IP4 pbx.example.com\r\nm=audio 5000 RTP/AVP 0\r\n",
                SdpError::BadConnection {
                    line: 2,
                    value: "IN IP4 pbx.example.com".into(),
                },
            ),
            (
                "ip6 address labelled IP4",
                "v=0\r\nc=IN IP4 2001:db8::1\r\nm=audio 5000 RTP/AVP 0\r\n",
                SdpError::BadConnection {
                    line: 2,
                    value: "IN IP4 2001:db8::1".into(),
                },
            ),
            (
                "non-numeric origin version",
                "v=0\r\no=- 1 x IN IP4 192.0.2.1\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/AVP 0\r\n",
                SdpError::BadOrigin {
                    line: 2,
                    value: "- 1 x IN IP4 192.0.2.1".into(),
                },
            ),
        ];
        for (name, body, want) in cases {
            assert_eq!(SessionDescription::parse(body).unwrap_err(), want, "{name}");
        }
    }

    #[test]
    fn error_messages_are_readable() {
        let e = SdpError::NoConnection { line: 5 };
        assert!(e.to_string().contains("no connection address"));
        let e = SdpError::NoCommonCodec {
            offered: "18".into(),
        };
        assert!(e.to_string().contains("no common codec"));
    }

    #[test]
    fn parse_keeps_fields() {
        let s = offer(SIPP_OFFER);
        let o = s.origin.clone().unwrap();
        assert_eq!(o.username, "user1");
        assert_eq!(o.session_id, 53655765);
        assert_eq!(o.version, 2353687637);
        assert_eq!(s.connection, Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(s.direction, None);
        let m = &s.media[0];
        assert_eq!(m.media, "audio");
        assert_eq!(m.port, 6000);
        assert_eq!(m.proto, "RTP/AVP");
        assert_eq!(m.formats, vec!["0", "8", "101"]);
        assert_eq!(m.rtpmaps.len(), 3);
        assert_eq!(m.fmtp(101), Some("0-15"));
        assert_eq!(m.ptime, Some(20));
        assert_eq!(m.direction, Direction::SendRecv);
        assert_eq!(m.telephone_event_pt(), Some(101));
    }

    #[test]
    fn parse_tolerates_unknown_and_odd_lines() {
        let body = "v=0\r\nX-junk here\r\nz=whatever\r\nc=IN IP4 224.2.1.1/127\r\nm=audio 5000/2 RTP/AVP 0\r\na=rtpmap:bogus\r\na=ptime:abc\r\na=rtcp:5001\r\n";
        let s = offer(body);
        let m = &s.media[0];
        assert_eq!(m.port, 5000);
        assert_eq!(m.connection, Some(IpAddr::V4(Ipv4Addr::new(224, 2, 1, 1))));
        assert!(m.rtpmaps.is_empty());
        assert_eq!(m.ptime, None);
        assert!(s.origin.is_none());
    }

    #[test]
    fn media_level_connection_overrides_session() {
        let body = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5000 RTP/AVP 0\r\nc=IN IP6 ::1\r\n";
        let s = offer(body);
        assert_eq!(s.connection, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))));
        assert_eq!(s.media[0].connection, Some(IpAddr::V6(Ipv6Addr::LOCALHOST)));
    }

    #[test]
    fn ipv6_answer_uses_ip6() {
        let mut l = local();
        l.addr = "2001:db8::5".parse().unwrap();
        let n = negotiate_answer(&offer(SIPP_OFFER), &[Codec::Pcmu], &l).unwrap();
        let ls = lines(&n.answer);
        assert!(ls.contains(&"c=IN IP6 2001:db8::5"));
        assert!(ls.contains(&"o=- 42 7 IN IP6 2001:db8::5"));
    }

    #[test]
    fn build_offer_layout() {
        let sdp = build_offer(
            &[Codec::Pcma, Codec::Pcmu, Codec::Pcma],
            101,
            &local(),
            Direction::SendRecv,
        );
        let ls = lines(&sdp);
        assert!(sdp.ends_with("\r\n"));
        assert!(ls.contains(&"c=IN IP4 203.0.113.5"));
        assert!(ls.contains(&"m=audio 40000 RTP/AVP 8 0 101"));
        assert!(ls.contains(&"a=rtpmap:8 PCMA/8000"));
        assert!(ls.contains(&"a=rtpmap:0 PCMU/8000"));
        assert!(ls.contains(&"a=rtpmap:101 telephone-event/8000"));
        assert!(ls.contains(&"a=fmtp:101 0-16"));
        assert!(ls.contains(&"a=ptime:20"));
        assert!(ls.contains(&"a=sendrecv"));
    }

    #[test]
    fn build_offer_edge_cases() {
        let sdp = build_offer(&[], 101, &local(), Direction::SendOnly);
        assert!(lines(&sdp).contains(&"m=audio 40000 RTP/AVP 0 8 101"));
        assert!(lines(&sdp).contains(&"a=sendonly"));
        let sdp = build_offer(&[Codec::Pcmu], 0, &local(), Direction::SendRecv);
        assert!(lines(&sdp).contains(&"m=audio 40000 RTP/AVP 0"));
        assert!(!sdp.contains("telephone-event"));
    }

    #[test]
    fn offer_answer_round_trip() {
        let our = build_offer(
            &[Codec::Pcmu, Codec::Pcma],
            101,
            &local(),
            Direction::SendRecv,
        );
        let their_local = LocalMedia {
            addr: IpAddr::V4(Ipv4Addr::new(198, 51, 100, 9)),
            port: 30000,
            session_id: 9,
            version: 1,
        };
        let answered = negotiate_answer(&offer(&our), &[Codec::Pcma], &their_local).unwrap();
        let n = accept_answer(&[Codec::Pcmu, Codec::Pcma], &offer(&answered.answer)).unwrap();
        assert_eq!(n.codec, Codec::Pcma);
        assert_eq!(n.payload_type, 8);
        assert_eq!(n.telephone_event_pt, Some(101));
        assert_eq!(n.remote, Some("198.51.100.9:30000".parse().unwrap()));
        assert_eq!(n.direction, Direction::SendRecv);
        assert!(n.answer.is_empty());
    }

    #[test]
    fn accept_answer_cases() {
        // Answer says recvonly: we may only send.
        let a = base("m=audio 5000 RTP/AVP 0", "a=recvonly\r\n");
        let n = accept_answer(&[Codec::Pcmu], &offer(&a)).unwrap();
        assert_eq!(n.direction, Direction::SendOnly);
        // Answer picked a codec we never offered.
        let a = base("m=audio 5000 RTP/AVP 8", "");
        assert_eq!(
            accept_answer(&[Codec::Pcmu], &offer(&a)).unwrap_err(),
            SdpError::NoCommonCodec {
                offered: "8".into()
            }
        );
        // Answer rejected the stream.
        let a = base("m=audio 0 RTP/AVP 0", "");
        assert_eq!(
            accept_answer(&[Codec::Pcmu], &offer(&a)).unwrap_err(),
            SdpError::NoUsableAudio
        );
        // Answer on hold.
        let a = "v=0\r\nc=IN IP4 0.0.0.0\r\nm=audio 5000 RTP/AVP 0\r\n";
        let n = accept_answer(&[Codec::Pcmu], &offer(a)).unwrap();
        assert_eq!(n.remote, None);
        assert_eq!(n.direction, Direction::RecvOnly);
    }

    #[test]
    fn direction_helpers() {
        for d in [
            Direction::SendRecv,
            Direction::SendOnly,
            Direction::RecvOnly,
            Direction::Inactive,
        ] {
            assert_eq!(d.mirror().mirror(), d);
            assert_eq!(Direction::from_attr(d.as_str()), Some(d));
            assert!(!d.without_send().sends());
        }
        assert_eq!(Direction::from_attr("SENDONLY"), Some(Direction::SendOnly));
        assert_eq!(Direction::from_attr("rtcp-mux"), None);
    }
}
