//! Property tests (proptest) for the parse ∘ serialise round trips of the formats voxgate both
//! writes and reads (issue 12): whatever voxgate writes, it reads back as the same value, and
//! what it reads from a peer it writes back the same. Each property runs 512 generated cases;
//! proptest shrinks a failure to a minimal case and prints it.

use proptest::collection::vec;
use proptest::prelude::*;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use voxgate::media::codec::Codec;
use voxgate::media::dtmf::EventPayload;
use voxgate::media::g711;
use voxgate::media::packet::{self, RtpHeader};
use voxgate::media::rtcp::{
    parse_compound, write_compound, ReportBlock, RtcpPacket, SdesChunk, SenderInfo,
};
use voxgate::phone::{parse_e164, ParseOptions};
use voxgate::sip::guard::{inspect_datagram, Verdict};
use voxgate::sip::sdp::{
    accept_answer, build_offer, negotiate_answer, Direction, LocalMedia, SessionDescription,
};
use voxgate::sip::sipfrag::SipFrag;

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

// ---- strategies --------------------------------------------------------------------------------

fn codec() -> impl Strategy<Value = Codec> {
    prop_oneof![Just(Codec::Pcmu), Just(Codec::Pcma)]
}

fn rtp_header() -> impl Strategy<Value = RtpHeader> {
    (
        any::<bool>(),
        0u8..=127,
        any::<u16>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(marker, payload_type, sequence, timestamp, ssrc)| RtpHeader {
                marker,
                payload_type,
                sequence,
                timestamp,
                ssrc,
            },
        )
}

fn report_block() -> impl Strategy<Value = ReportBlock> {
    (
        any::<u32>(),
        any::<u8>(),
        -0x80_0000i32..=0x7F_FFFF,
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
    )
        .prop_map(
            |(ssrc, fraction_lost, cumulative_lost, seq, jitter, last_sr, dlsr)| ReportBlock {
                ssrc,
                fraction_lost,
                cumulative_lost,
                extended_highest_seq: seq,
                jitter,
                last_sr,
                delay_since_last_sr: dlsr,
            },
        )
}

/// Text as a peer may put in an SDES CNAME or a BYE reason (any Unicode, at most 255 bytes).
fn rtcp_text() -> impl Strategy<Value = String> {
    ".{0,60}".prop_filter("at most 255 bytes", |s| s.len() <= 255)
}

/// Every RTCP packet voxgate can write, within what the wire format holds (5-bit counts).
fn rtcp_packet() -> impl Strategy<Value = RtcpPacket> {
    let sender = (
        any::<u32>(),
        any::<u64>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        vec(report_block(), 0..=31),
    )
        .prop_map(
            |(ssrc, ntp, rtp, packets, octets, reports)| RtcpPacket::SenderReport {
                ssrc,
                info: SenderInfo {
                    ntp_timestamp: ntp,
                    rtp_timestamp: rtp,
                    packet_count: packets,
                    octet_count: octets,
                },
                reports,
            },
        );
    let receiver = (any::<u32>(), vec(report_block(), 0..=31))
        .prop_map(|(ssrc, reports)| RtcpPacket::ReceiverReport { ssrc, reports });
    let sdes = vec(
        (any::<u32>(), proptest::option::of(rtcp_text()))
            .prop_map(|(ssrc, cname)| SdesChunk { ssrc, cname }),
        0..=31,
    )
    .prop_map(RtcpPacket::SourceDescription);
    let bye = (vec(any::<u32>(), 0..=31), proptest::option::of(rtcp_text()))
        .prop_map(|(sources, reason)| RtcpPacket::Goodbye { sources, reason });
    // APP, feedback and XR types are kept only by type.
    let unknown = prop_oneof![Just(204u8), Just(205), Just(206), Just(207)]
        .prop_map(|packet_type| RtcpPacket::Unknown { packet_type });
    prop_oneof![sender, receiver, sdes, bye, unknown]
}

fn local_media() -> impl Strategy<Value = LocalMedia> {
    let addr = prop_oneof![
        any::<[u8; 4]>().prop_map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        any::<[u16; 8]>().prop_map(|s| IpAddr::V6(Ipv6Addr::from(s))),
    ];
    // A real SDP address is never unspecified; 0.0.0.0 means hold, which is its own case.
    (
        addr.prop_filter("specified", |a| !a.is_unspecified()),
        1u16..,
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(addr, port, session_id, version)| LocalMedia {
            addr,
            port,
            session_id,
            version,
        })
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![
        Just(Direction::SendRecv),
        Just(Direction::SendOnly),
        Just(Direction::RecvOnly),
        Just(Direction::Inactive),
    ]
}

// ---- properties --------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// RTP: header and payload written, then parsed, come back unchanged.
    #[test]
    fn rtp_packet_write_then_parse(header in rtp_header(), payload in vec(any::<u8>(), 0..1400)) {
        let mut wire = Vec::new();
        packet::write(&header, &payload, &mut wire);
        let parsed = packet::parse(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed.header, header);
        prop_assert_eq!(parsed.payload, &payload[..]);
    }

    /// RTCP: any compound datagram voxgate writes parses back to the same packets.
    #[test]
    fn rtcp_compound_write_then_parse(packets in vec(rtcp_packet(), 1..5)) {
        let wire = write_compound(&packets);
        prop_assert_eq!(wire.len() % 4, 0, "RTCP packets are whole 32-bit words");
        let parsed = parse_compound(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(parsed, packets);
    }

    /// RTCP from a peer: whatever parses, re-written and re-parsed, is the same.
    #[test]
    fn rtcp_parse_then_write(bytes in vec(any::<u8>(), 0..300)) {
        if let Ok(packets) = parse_compound(&bytes) {
            let again = parse_compound(&write_compound(&packets))
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(again, packets);
        }
    }

    /// RFC 4733 telephone-event payloads.
    #[test]
    fn telephone_event_round_trip(event in 0u8..=15, end in any::<bool>(), volume in 0u8..=63, duration in any::<u16>()) {
        let p = EventPayload { event, end, volume, duration };
        prop_assert_eq!(EventPayload::parse(&p.to_bytes()), Ok(p));
    }

    /// RFC 4733 from a peer: the reserved bit is the only thing not kept.
    #[test]
    fn telephone_event_parse_then_write(bytes in any::<[u8; 4]>()) {
        if let Ok(p) = EventPayload::parse(&bytes) {
            let mut expected = bytes;
            expected[1] &= !0x40;
            prop_assert_eq!(p.to_bytes(), expected);
        }
    }

    /// G.711: a decoded payload re-encodes to samples that decode identically (the encoder
    /// picks the same quantisation step), so a same-codec relay never degrades audio.
    #[test]
    fn g711_decode_encode_decode(codec in codec(), payload in vec(any::<u8>(), 0..480)) {
        let mut pcm = Vec::new();
        g711::decode(codec, &payload, &mut pcm);
        prop_assert_eq!(pcm.len(), payload.len());
        let mut wire = Vec::new();
        g711::encode(codec, &pcm, &mut wire);
        let mut again = Vec::new();
        g711::decode(codec, &wire, &mut again);
        prop_assert_eq!(again, pcm);
    }

    /// SDP: an offer voxgate writes (the bridged leg's INVITE) parses back to what was meant.
    #[test]
    fn sdp_offer_write_then_parse(
        codecs in vec(codec(), 1..4),
        te in 96u8..=127,
        local in local_media(),
        dir in direction(),
    ) {
        let text = build_offer(&codecs, te, &local, dir);
        let sdp = SessionDescription::parse(&text).map_err(|e| TestCaseError::fail(format!("{e}: {text}")))?;
        let origin = sdp.origin.clone().ok_or_else(|| TestCaseError::fail("no o= line"))?;
        prop_assert_eq!(origin.session_id, local.session_id);
        prop_assert_eq!(origin.version, local.version);
        let m = sdp.usable_audio().ok_or_else(|| TestCaseError::fail("no usable audio"))?;
        prop_assert_eq!(m.port, local.port);
        prop_assert_eq!(m.connection, Some(local.addr));
        prop_assert_eq!(m.direction, dir);
        prop_assert_eq!(m.telephone_event_pt(), Some(te));
        let mut wanted: Vec<Codec> = Vec::new();
        for c in &codecs {
            if !wanted.contains(c) {
                wanted.push(*c);
            }
        }
        let offered: Vec<Codec> = m.payload_types().into_iter().filter_map(|pt| m.codec_for(pt)).collect();
        prop_assert_eq!(offered, wanted);
    }

    /// SDP offer/answer: voxgate answering its own offer agrees with itself on both sides.
    #[test]
    fn sdp_offer_answer_agree(
        offered in vec(codec(), 1..3),
        prefs in vec(codec(), 1..3),
        te in 96u8..=127,
        offerer in local_media(),
        answerer in local_media(),
        dir in direction(),
    ) {
        let offer_text = build_offer(&offered, te, &offerer, dir);
        let offer = SessionDescription::parse(&offer_text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let common = offered.iter().find(|c| prefs.contains(c)).copied();
        match negotiate_answer(&offer, &prefs, &answerer) {
            Ok(answered) => {
                prop_assert_eq!(Some(answered.codec), common);
                prop_assert_eq!(answered.telephone_event_pt, Some(te));
                prop_assert_eq!(answered.direction, dir.mirror());
                let answer = SessionDescription::parse(&answered.answer)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {}", answered.answer)))?;
                let accepted = accept_answer(&offered, &answer)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(accepted.codec, answered.codec);
                prop_assert_eq!(accepted.payload_type, answered.payload_type);
                prop_assert_eq!(accepted.telephone_event_pt, Some(te));
                let m = answer.usable_audio().ok_or_else(|| TestCaseError::fail("no audio"))?;
                prop_assert_eq!(m.port, answerer.port);
                prop_assert_eq!(m.connection, Some(answerer.addr));
            }
            Err(e) => prop_assert!(common.is_none(), "no answer although {common:?} is common: {e}"),
        }
    }

    /// A transfer's NOTIFY body: the status line voxgate reads is the one that was written.
    #[test]
    fn sipfrag_round_trip(status in 100u16..=699, reason in "[A-Za-z][A-Za-z '-]{0,30}[A-Za-z]") {
        let body = format!("SIP/2.0 {status} {reason}\r\nContent-Length: 0\r\n");
        let frag = SipFrag::parse(&body).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(frag.status, status);
        prop_assert_eq!(frag.reason, reason);
    }

    /// E.164: a number voxgate accepted, written out and read again, is the same number
    /// (the normal form is a fixed point), whatever separators it was typed with.
    #[test]
    fn e164_normal_form_is_a_fixed_point(
        country in prop_oneof![Just("1"), Just("32"), Just("44"), Just("33"), Just("49"), Just("31"), Just("61"), Just("81")],
        digits in "[0-9]{6,12}",
        sep in prop_oneof![Just(""), Just(" "), Just("-"), Just(".")],
        legacy in any::<bool>(),
    ) {
        let typed = format!("+{country}{sep}{}", digits.chars().map(String::from).collect::<Vec<_>>().join(sep));
        let opts = ParseOptions { legacy_no_plus: legacy };
        if let Ok(n) = parse_e164(&typed, &opts) {
            prop_assert!(n.as_str().starts_with('+'));
            prop_assert!(n.digits().len() <= 15);
            prop_assert!(n.digits().chars().all(|c| c.is_ascii_digit()));
            let written = n.to_string();
            let again = parse_e164(&written, &opts).map_err(|e| TestCaseError::fail(e.reason()))?;
            prop_assert_eq!(again, n);
        }
    }

    /// The SIP guard's repairs are idempotent on generated requests with the defects real
    /// trunks send (bare LF line ends, padded or missing Content-Length, folded headers).
    #[test]
    fn sip_guard_repair_is_idempotent(
        lf_only in any::<bool>(),
        pad in 0usize..4,
        drop_length in any::<bool>(),
        fold in any::<bool>(),
        body in "[a-z=0-9 ]{0,40}",
        user in "[a-z0-9]{1,10}",
    ) {
        let eol = if lf_only { "\n" } else { "\r\n" };
        let mut msg = String::new();
        for line in [
            format!("INVITE sip:{user}@127.0.0.1:5060 SIP/2.0"),
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-prop".to_string(),
            "Max-Forwards: 70".to_string(),
            "From: <sip:a@127.0.0.1>;tag=1".to_string(),
            "To: <sip:b@127.0.0.1>".to_string(),
            "Call-ID: prop@127.0.0.1".to_string(),
            "CSeq: 1 INVITE".to_string(),
        ] {
            msg.push_str(&line);
            msg.push_str(eol);
        }
        if fold {
            msg.push_str("Subject: a folded");
            msg.push_str(eol);
            msg.push_str("  header");
            msg.push_str(eol);
        }
        if !drop_length {
            msg.push_str(&format!("Content-Length:{}{}", " ".repeat(pad + 1), body.len()));
            msg.push_str(eol);
        }
        msg.push_str(eol);
        msg.push_str(&body);
        if let Verdict::Pass(bytes) = inspect_datagram(msg.as_bytes()) {
            match inspect_datagram(&bytes) {
                Verdict::Pass(again) => prop_assert_eq!(again.as_ref(), bytes.as_ref()),
                other => prop_assert!(false, "a passed message must pass again: {other:?}"),
            }
        }
    }
}
