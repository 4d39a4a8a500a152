//! RTCP (RFC 3550 §6): the compound reports we send (SR or RR + SDES CNAME, optionally BYE)
//! and a tolerant parser for what peers send. Trunks vary a lot here, so parsing keeps
//! every well-framed packet it understands, skips the rest, and never trusts a length.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;
use tracing::debug;

pub const PT_SR: u8 = 200;
pub const PT_RR: u8 = 201;
pub const PT_SDES: u8 = 202;
pub const PT_BYE: u8 = 203;
const SDES_CNAME: u8 = 1;
const HEADER_LEN: usize = 4;
const SENDER_INFO_LEN: usize = 20;
const REPORT_BLOCK_LEN: usize = 24;
/// Seconds from the NTP epoch (1900) to the Unix epoch.
const NTP_UNIX_OFFSET: u64 = 2_208_988_800;

/// Why an RTCP datagram yielded nothing usable.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtcpError {
    #[error("RTCP datagram of {0} bytes is too short")]
    TooShort(usize),
    #[error("RTCP version {0} is not supported (only 2)")]
    BadVersion(u8),
    #[error("RTCP packet (type {packet_type}) claims {claimed} bytes but only {available} remain")]
    LengthOverrun {
        packet_type: u8,
        claimed: usize,
        available: usize,
    },
    #[error("RTCP packet of type {0} has a malformed body")]
    Malformed(u8),
}

/// One reception report block: how well we hear the source `ssrc`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Cumulative packets lost (24-bit signed on the wire; clamped when written).
    pub cumulative_lost: i32,
    pub extended_highest_seq: u32,
    /// Interarrival jitter in RTP clock units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from `ssrc` (0: none).
    pub last_sr: u32,
    /// Delay since that SR, in 1/65536 s.
    pub delay_since_last_sr: u32,
}

/// The sender-information part of an SR.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SenderInfo {
    pub ntp_timestamp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

/// One SDES chunk; only the CNAME item is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SdesChunk {
    pub ssrc: u32,
    pub cname: Option<String>,
}

/// One packet of a compound RTCP datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcpPacket {
    SenderReport {
        ssrc: u32,
        info: SenderInfo,
        reports: Vec<ReportBlock>,
    },
    ReceiverReport {
        ssrc: u32,
        reports: Vec<ReportBlock>,
    },
    SourceDescription(Vec<SdesChunk>),
    Goodbye {
        sources: Vec<u32>,
        reason: Option<String>,
    },
    /// A well-framed packet of a type we do not use (APP, XR, feedback, ...).
    Unknown {
        packet_type: u8,
    },
}

impl RtcpPacket {
    /// Appends this packet to `out`. Lists longer than the 5-bit count allows and texts
    /// longer than 255 bytes are truncated.
    pub fn write(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; HEADER_LEN]);
        let (count, packet_type) = match self {
            RtcpPacket::SenderReport {
                ssrc,
                info,
                reports,
            } => {
                out.extend_from_slice(&ssrc.to_be_bytes());
                out.extend_from_slice(&info.ntp_timestamp.to_be_bytes());
                out.extend_from_slice(&info.rtp_timestamp.to_be_bytes());
                out.extend_from_slice(&info.packet_count.to_be_bytes());
                out.extend_from_slice(&info.octet_count.to_be_bytes());
                (write_blocks(reports, out), PT_SR)
            }
            RtcpPacket::ReceiverReport { ssrc, reports } => {
                out.extend_from_slice(&ssrc.to_be_bytes());
                (write_blocks(reports, out), PT_RR)
            }
            RtcpPacket::SourceDescription(chunks) => {
                let chunks = &chunks[..chunks.len().min(31)];
                for chunk in chunks {
                    out.extend_from_slice(&chunk.ssrc.to_be_bytes());
                    if let Some(cname) = &chunk.cname {
                        push_text(SDES_CNAME, cname, out);
                    }
                    out.push(0); // END item
                    pad_to_word(start, out);
                }
                (chunks.len() as u8, PT_SDES)
            }
            RtcpPacket::Goodbye { sources, reason } => {
                let sources = &sources[..sources.len().min(31)];
                for s in sources {
                    out.extend_from_slice(&s.to_be_bytes());
                }
                if let Some(reason) = reason {
                    let text = truncate_utf8(reason, 255);
                    out.push(text.len() as u8);
                    out.extend_from_slice(text.as_bytes());
                    pad_to_word(start, out);
                }
                (sources.len() as u8, PT_BYE)
            }
            RtcpPacket::Unknown { packet_type } => (0, *packet_type),
        };
        let words = ((out.len() - start) / 4 - 1) as u16;
        out[start] = 0x80 | count;
        out[start + 1] = packet_type;
        out[start + 2..start + 4].copy_from_slice(&words.to_be_bytes());
    }
}

/// Serialises packets into one compound datagram.
pub fn write_compound(packets: &[RtcpPacket]) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    for p in packets {
        p.write(&mut out);
    }
    out
}

/// Parses a compound datagram. Unknown types come back as `Unknown`; a packet with a
/// malformed body is skipped; parsing stops at the first framing error. Fails only when
/// nothing usable was found.
pub fn parse_compound(buf: &[u8]) -> Result<Vec<RtcpPacket>, RtcpError> {
    let mut packets = Vec::new();
    let mut first_error = None;
    let mut rest = buf;
    while !rest.is_empty() {
        match split_packet(rest) {
            Ok((
                Framed {
                    packet_type,
                    count,
                    body,
                },
                tail,
            )) => {
                rest = tail;
                match parse_body(packet_type, count, body) {
                    Some(p) => packets.push(p),
                    None => {
                        debug!(packet_type, "skipping malformed RTCP packet");
                        first_error.get_or_insert(RtcpError::Malformed(packet_type));
                    }
                }
            }
            Err(e) => {
                debug!(error = %e, "RTCP framing error; ignoring the rest of the datagram");
                first_error.get_or_insert(e);
                break;
            }
        }
    }
    if packets.is_empty() {
        return Err(first_error.unwrap_or(RtcpError::TooShort(buf.len())));
    }
    Ok(packets)
}

/// NTP 64-bit timestamp (32.32 fixed point since 1900) of a wall-clock time.
pub fn ntp_from_system_time(t: SystemTime) -> u64 {
    let since_unix = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    ntp_add(NTP_UNIX_OFFSET << 32, since_unix)
}

/// `ntp` advanced by `d`.
pub fn ntp_add(ntp: u64, d: Duration) -> u64 {
    let frac = (u64::from(d.subsec_nanos()) << 32) / 1_000_000_000;
    ntp.wrapping_add(d.as_secs() << 32).wrapping_add(frac)
}

/// The middle 32 bits of an NTP timestamp, as used in LSR.
pub fn ntp_middle(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// A duration in the 16.16 fixed-point seconds used by DLSR (saturating).
pub fn to_short_ntp(d: Duration) -> u32 {
    let v = (d.as_nanos() << 16) / 1_000_000_000;
    u32::try_from(v).unwrap_or(u32::MAX)
}

/// The inverse of [`to_short_ntp`].
pub fn from_short_ntp(v: u32) -> Duration {
    Duration::from_nanos((u64::from(v) * 1_000_000_000) >> 16)
}

fn write_blocks(reports: &[ReportBlock], out: &mut Vec<u8>) -> u8 {
    let reports = &reports[..reports.len().min(31)];
    for r in reports {
        out.extend_from_slice(&r.ssrc.to_be_bytes());
        let lost = r.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32 & 0x00FF_FFFF;
        out.extend_from_slice(&((u32::from(r.fraction_lost) << 24) | lost).to_be_bytes());
        out.extend_from_slice(&r.extended_highest_seq.to_be_bytes());
        out.extend_from_slice(&r.jitter.to_be_bytes());
        out.extend_from_slice(&r.last_sr.to_be_bytes());
        out.extend_from_slice(&r.delay_since_last_sr.to_be_bytes());
    }
    reports.len() as u8
}

fn push_text(item: u8, text: &str, out: &mut Vec<u8>) {
    let text = truncate_utf8(text, 255);
    out.push(item);
    out.push(text.len() as u8);
    out.extend_from_slice(text.as_bytes());
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn pad_to_word(start: usize, out: &mut Vec<u8>) {
    while !(out.len() - start).is_multiple_of(4) {
        out.push(0);
    }
}

/// One framed packet: its header fields and body (without header or padding).
struct Framed<'a> {
    packet_type: u8,
    count: u8,
    body: &'a [u8],
}

/// Splits off one packet, returning it and the bytes after it.
fn split_packet(buf: &[u8]) -> Result<(Framed<'_>, &[u8]), RtcpError> {
    let &[b0, packet_type, l0, l1, ..] = buf else {
        return Err(RtcpError::TooShort(buf.len()));
    };
    let version = b0 >> 6;
    if version != 2 {
        return Err(RtcpError::BadVersion(version));
    }
    let total = (usize::from(u16::from_be_bytes([l0, l1])) + 1) * 4;
    if total > buf.len() {
        return Err(RtcpError::LengthOverrun {
            packet_type,
            claimed: total,
            available: buf.len(),
        });
    }
    let (packet, tail) = buf.split_at(total);
    let mut body = &packet[HEADER_LEN..];
    if b0 & 0x20 != 0 {
        let pad = usize::from(packet[total - 1]);
        if pad == 0 || pad > body.len() {
            return Err(RtcpError::Malformed(packet_type));
        }
        body = &body[..body.len() - pad];
    }
    let framed = Framed {
        packet_type,
        count: b0 & 0x1F,
        body,
    };
    Ok((framed, tail))
}

fn parse_body(packet_type: u8, count: u8, body: &[u8]) -> Option<RtcpPacket> {
    let count = usize::from(count);
    match packet_type {
        PT_SR => {
            let ssrc = be32(body, 0)?;
            let info = SenderInfo {
                ntp_timestamp: (u64::from(be32(body, 4)?) << 32) | u64::from(be32(body, 8)?),
                rtp_timestamp: be32(body, 12)?,
                packet_count: be32(body, 16)?,
                octet_count: be32(body, 20)?,
            };
            let reports = parse_blocks(body.get(4 + SENDER_INFO_LEN..)?, count);
            Some(RtcpPacket::SenderReport {
                ssrc,
                info,
                reports,
            })
        }
        PT_RR => Some(RtcpPacket::ReceiverReport {
            ssrc: be32(body, 0)?,
            reports: parse_blocks(body.get(4..)?, count),
        }),
        PT_SDES => parse_sdes(body, count).map(RtcpPacket::SourceDescription),
        PT_BYE => {
            let sources = (0..count)
                .map(|i| be32(body, 4 * i))
                .collect::<Option<Vec<_>>>()?;
            let reason = body.get(4 * count).and_then(|&len| {
                let text = body.get(4 * count + 1..4 * count + 1 + usize::from(len))?;
                Some(String::from_utf8_lossy(text).into_owned())
            });
            Some(RtcpPacket::Goodbye { sources, reason })
        }
        _ => Some(RtcpPacket::Unknown { packet_type }),
    }
}

/// Report blocks that actually fit; a count larger than the body is tolerated.
fn parse_blocks(body: &[u8], count: usize) -> Vec<ReportBlock> {
    body.chunks_exact(REPORT_BLOCK_LEN)
        .take(count)
        .filter_map(|b| {
            let word = be32(b, 4)?;
            // Sign-extend the 24-bit cumulative loss.
            let lost = ((word << 8) as i32) >> 8;
            Some(ReportBlock {
                ssrc: be32(b, 0)?,
                fraction_lost: (word >> 24) as u8,
                cumulative_lost: lost,
                extended_highest_seq: be32(b, 8)?,
                jitter: be32(b, 12)?,
                last_sr: be32(b, 16)?,
                delay_since_last_sr: be32(b, 20)?,
            })
        })
        .collect()
}

fn parse_sdes(body: &[u8], count: usize) -> Option<Vec<SdesChunk>> {
    let mut chunks = Vec::with_capacity(count);
    let mut pos = 0;
    for _ in 0..count {
        let ssrc = be32(body, pos)?;
        pos += 4;
        let mut cname = None;
        loop {
            let item = *body.get(pos)?;
            if item == 0 {
                pos += 1;
                break;
            }
            let len = usize::from(*body.get(pos + 1)?);
            let text = body.get(pos + 2..pos + 2 + len)?;
            if item == SDES_CNAME {
                cname = Some(String::from_utf8_lossy(text).into_owned());
            }
            pos += 2 + len;
        }
        pos = pos.next_multiple_of(4);
        chunks.push(SdesChunk { ssrc, cname });
    }
    Some(chunks)
}

fn be32(buf: &[u8], at: usize) -> Option<u32> {
    let b = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(ssrc: u32, lost: i32) -> ReportBlock {
        ReportBlock {
            ssrc,
            fraction_lost: 25,
            cumulative_lost: lost,
            extended_highest_seq: 0x0001_0005,
            jitter: 42,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 0x0001_8000,
        }
    }

    fn sample_compound() -> Vec<RtcpPacket> {
        vec![
            RtcpPacket::SenderReport {
                ssrc: 0xAABB_CCDD,
                info: SenderInfo {
                    ntp_timestamp: 0xE000_0001_8000_0000,
                    rtp_timestamp: 160_000,
                    packet_count: 1000,
                    octet_count: 160_000,
                },
                reports: vec![block(0x0E05_384E, -3)],
            },
            RtcpPacket::SourceDescription(vec![SdesChunk {
                ssrc: 0xAABB_CCDD,
                cname: Some("voxgate@host".into()),
            }]),
            RtcpPacket::Goodbye {
                sources: vec![0xAABB_CCDD],
                reason: Some("bye now".into()),
            },
        ]
    }

    #[test]
    fn compound_round_trip() {
        let packets = sample_compound();
        let wire = write_compound(&packets);
        assert_eq!(wire.len() % 4, 0);
        assert_eq!(wire[1], PT_SR);
        assert_eq!(parse_compound(&wire).unwrap(), packets);

        let rr = vec![
            RtcpPacket::ReceiverReport {
                ssrc: 1,
                reports: vec![],
            },
            RtcpPacket::SourceDescription(vec![SdesChunk {
                ssrc: 1,
                cname: Some("abc".into()), // 4 + 2 + 3 + END = 10 -> padded to 12
            }]),
        ];
        let wire = write_compound(&rr);
        assert_eq!(wire.len(), 8 + 4 + 12);
        assert_eq!(parse_compound(&wire).unwrap(), rr);
    }

    #[test]
    fn cumulative_loss_is_24_bit_signed() {
        for (lost, expected) in [
            (-1, -1),
            (5, 5),
            (-0x80_0000, -0x80_0000),
            (i32::MAX, 0x7F_FFFF),
        ] {
            let p = RtcpPacket::ReceiverReport {
                ssrc: 9,
                reports: vec![block(7, lost)],
            };
            let parsed = parse_compound(&write_compound(&[p])).unwrap();
            let RtcpPacket::ReceiverReport { reports, .. } = &parsed[0] else {
                panic!("not an RR");
            };
            assert_eq!(reports[0].cumulative_lost, expected);
        }
    }

    #[test]
    fn unknown_types_and_padding_are_tolerated() {
        let mut wire = write_compound(&[RtcpPacket::ReceiverReport {
            ssrc: 5,
            reports: vec![],
        }]);
        // APP packet (204): header + SSRC + name.
        wire.extend_from_slice(&[0x80, 204, 0, 2, 0, 0, 0, 5, b't', b'e', b's', b't']);
        // An RR with 4 bytes of padding.
        wire.extend_from_slice(&[0xA0, PT_RR, 0, 2, 0, 0, 0, 6, 0, 0, 0, 4]);
        let parsed = parse_compound(&wire).unwrap();
        assert_eq!(
            parsed,
            vec![
                RtcpPacket::ReceiverReport {
                    ssrc: 5,
                    reports: vec![]
                },
                RtcpPacket::Unknown { packet_type: 204 },
                RtcpPacket::ReceiverReport {
                    ssrc: 6,
                    reports: vec![]
                },
            ]
        );
    }

    #[test]
    fn malformed_input_is_refused_or_trimmed() {
        assert_eq!(parse_compound(&[]), Err(RtcpError::TooShort(0)));
        assert_eq!(parse_compound(&[0x80, 201]), Err(RtcpError::TooShort(2)));
        assert_eq!(
            parse_compound(&[0x40, 201, 0, 1, 0, 0, 0, 0]),
            Err(RtcpError::BadVersion(1))
        );
        assert_eq!(
            parse_compound(&[0x80, 201, 0, 9, 0, 0, 0, 0]),
            Err(RtcpError::LengthOverrun {
                packet_type: 201,
                claimed: 40,
                available: 8
            })
        );
        // SR too short for its sender info.
        assert_eq!(
            parse_compound(&[0x80, PT_SR, 0, 1, 0, 0, 0, 1]),
            Err(RtcpError::Malformed(PT_SR))
        );
        // A good RR followed by a truncated packet: the RR survives.
        let mut wire = write_compound(&[RtcpPacket::ReceiverReport {
            ssrc: 3,
            reports: vec![],
        }]);
        wire.extend_from_slice(&[0x80, PT_SDES, 0, 7, 1]);
        assert_eq!(parse_compound(&wire).unwrap().len(), 1);
        // Report count larger than the body: keep the blocks that fit.
        let mut wire = write_compound(&[RtcpPacket::ReceiverReport {
            ssrc: 3,
            reports: vec![block(1, 0)],
        }]);
        wire[0] = 0x80 | 5;
        let parsed = parse_compound(&wire).unwrap();
        assert_eq!(
            parsed,
            vec![RtcpPacket::ReceiverReport {
                ssrc: 3,
                reports: vec![block(1, 0)]
            }]
        );
        // SDES item running off the end.
        assert_eq!(
            parse_compound(&[0x81, PT_SDES, 0, 2, 0, 0, 0, 1, 1, 200, b'x', 0]),
            Err(RtcpError::Malformed(PT_SDES))
        );
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut state = 0x9E37_79B9u32;
        let valid = write_compound(&sample_compound());
        for round in 0..20_000 {
            let mut buf = valid.clone();
            let flips = 1 + round % 4;
            for _ in 0..flips {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                let i = state as usize % buf.len();
                buf[i] = (state >> 8) as u8;
            }
            buf.truncate(state as usize % (valid.len() + 1));
            let _ = parse_compound(&buf);
        }
    }

    #[test]
    fn ntp_helpers() {
        let t = UNIX_EPOCH + Duration::from_millis(1_500);
        let ntp = ntp_from_system_time(t);
        assert_eq!(ntp >> 32, NTP_UNIX_OFFSET + 1);
        assert_eq!(ntp as u32, 0x8000_0000);
        assert_eq!(
            ntp_middle(ntp),
            (((NTP_UNIX_OFFSET + 1) as u32) << 16) | 0x8000
        );
        assert_eq!(
            ntp_add(ntp, Duration::from_millis(500)) >> 32,
            NTP_UNIX_OFFSET + 2
        );
        assert_eq!(to_short_ntp(Duration::from_millis(1500)), 0x0001_8000);
        assert_eq!(from_short_ntp(0x0001_8000), Duration::from_millis(1500));
        assert_eq!(to_short_ntp(Duration::from_secs(1 << 20)), u32::MAX);
    }
}
