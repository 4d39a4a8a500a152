//! RTP fixed header (RFC 3550 §5.1): a bounds-checked parser and a writer.
//!
//! Our own parser rather than a crate's so every length taken from the wire is checked in
//! one visible place: CSRC list, header extension and padding can all lie.

use thiserror::Error;

/// Size of the fixed RTP header.
pub const HEADER_LEN: usize = 12;

/// Why a datagram is not a usable RTP packet.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PacketError {
    #[error("datagram of {0} bytes is too short for an RTP header")]
    TooShort(usize),
    #[error("RTP version {0} is not supported (only 2)")]
    BadVersion(u8),
    #[error("RTP header claims {0} bytes of CSRC/extension but the datagram is shorter")]
    HeaderOverrun(usize),
    #[error("RTP padding of {0} bytes does not fit the payload")]
    BadPadding(usize),
}

/// The fields of the RTP header voxgate uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub sequence: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

/// A parsed packet borrowing its payload from the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    pub header: RtpHeader,
    pub payload: &'a [u8],
}

/// Parses an RTP datagram, skipping CSRCs and any header extension and removing padding.
pub fn parse(buf: &[u8]) -> Result<RtpPacket<'_>, PacketError> {
    if buf.len() < HEADER_LEN {
        return Err(PacketError::TooShort(buf.len()));
    }
    let version = buf[0] >> 6;
    if version != 2 {
        return Err(PacketError::BadVersion(version));
    }
    let padding = buf[0] & 0x20 != 0;
    let extension = buf[0] & 0x10 != 0;
    let csrc_count = usize::from(buf[0] & 0x0F);
    let header = RtpHeader {
        marker: buf[1] & 0x80 != 0,
        payload_type: buf[1] & 0x7F,
        sequence: u16::from_be_bytes([buf[2], buf[3]]),
        timestamp: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        ssrc: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
    };
    let mut offset = HEADER_LEN + 4 * csrc_count;
    if extension {
        let ext = buf
            .get(offset..offset + 4)
            .ok_or(PacketError::HeaderOverrun(offset + 4))?;
        let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
        offset += 4 + 4 * words;
    }
    if offset > buf.len() {
        return Err(PacketError::HeaderOverrun(offset));
    }
    let mut end = buf.len();
    if padding {
        let pad = usize::from(buf[buf.len() - 1]);
        if pad == 0 || offset + pad > end {
            return Err(PacketError::BadPadding(pad));
        }
        end -= pad;
    }
    Ok(RtpPacket {
        header,
        payload: &buf[offset..end],
    })
}

/// Appends a version-2 packet with no CSRCs, extension or padding to `out`.
pub fn write(header: &RtpHeader, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(HEADER_LEN + payload.len());
    out.push(0x80);
    out.push((if header.marker { 0x80 } else { 0 }) | (header.payload_type & 0x7F));
    out.extend_from_slice(&header.sequence.to_be_bytes());
    out.extend_from_slice(&header.timestamp.to_be_bytes());
    out.extend_from_slice(&header.ssrc.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RtpHeader {
        RtpHeader {
            marker: true,
            payload_type: 101,
            sequence: 0xFFFE,
            timestamp: 0xDEAD_BEEF,
            ssrc: 0x0E05_384E,
        }
    }

    #[test]
    fn write_then_parse() {
        let mut buf = Vec::new();
        write(&header(), &[1, 2, 3], &mut buf);
        assert_eq!(&buf[..2], &[0x80, 0x80 | 101]);
        let p = parse(&buf).unwrap();
        assert_eq!(p.header, header());
        assert_eq!(p.payload, &[1, 2, 3]);
    }

    #[test]
    fn skips_csrc_extension_and_padding() {
        let mut buf = Vec::new();
        write(&header(), &[], &mut buf);
        buf[0] = 0x80 | 0x20 | 0x10 | 2; // padding, extension, 2 CSRCs
        buf.extend_from_slice(&[0; 8]); // CSRCs
        buf.extend_from_slice(&[0xBE, 0xDE, 0, 1, 9, 9, 9, 9]); // extension, 1 word
        buf.extend_from_slice(&[7, 7]); // payload
        buf.extend_from_slice(&[0, 0, 3]); // 3 bytes padding
        let p = parse(&buf).unwrap();
        assert_eq!(p.payload, &[7, 7]);
    }

    #[test]
    fn rejects_malformed() {
        assert_eq!(parse(&[0x80; 11]), Err(PacketError::TooShort(11)));
        let mut buf = Vec::new();
        write(&header(), &[0; 4], &mut buf);
        let mut v1 = buf.clone();
        v1[0] = 0x40;
        assert_eq!(parse(&v1), Err(PacketError::BadVersion(1)));
        let mut csrc = buf.clone();
        csrc[0] = 0x8F; // 15 CSRCs, 60 bytes
        assert_eq!(parse(&csrc), Err(PacketError::HeaderOverrun(72)));
        let mut ext = buf.clone();
        ext[0] = 0x90;
        ext[14..16].copy_from_slice(&[0xFF, 0xFF]);
        assert!(matches!(parse(&ext), Err(PacketError::HeaderOverrun(_))));
        let mut ext_short = buf[..14].to_vec();
        ext_short[0] = 0x90;
        assert!(matches!(
            parse(&ext_short),
            Err(PacketError::HeaderOverrun(16))
        ));
        let mut pad = buf.clone();
        pad[0] = 0xA0;
        *pad.last_mut().unwrap() = 200;
        assert_eq!(parse(&pad), Err(PacketError::BadPadding(200)));
        *pad.last_mut().unwrap() = 0;
        assert_eq!(parse(&pad), Err(PacketError::BadPadding(0)));
    }

    #[test]
    fn never_panics_on_garbage() {
        let mut state = 0x1234_5678u32;
        for len in 0..64 {
            for _ in 0..200 {
                let buf: Vec<u8> = (0..len)
                    .map(|_| {
                        state ^= state << 13;
                        state ^= state >> 17;
                        state ^= state << 5;
                        (state >> 24) as u8 | 0x80
                    })
                    .collect();
                let _ = parse(&buf);
            }
        }
    }
}
