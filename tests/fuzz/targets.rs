//! The body of every fuzz target: one function per parser that sees untrusted bytes. Shared by
//! the cargo-fuzz targets (`fuzz_targets/*.rs`, manual long runs, docs/security.md) and by the
//! corpus replay in `cargo test` (tests/fuzz_corpus.rs), so both exercise exactly the same code.
//! Each function must not panic on any input; the assertions inside are the properties.

use std::time::{Duration, Instant};
use voxgate::media::codec::Codec;
use voxgate::media::rtp::{RtpConfig, RtpSession};
use voxgate::sip::guard::{inspect_datagram, Verdict};
use voxgate::sip::sdp::{negotiate_answer, LocalMedia, SessionDescription};

/// A fuzz target's body.
pub type Target = fn(&[u8]);

/// The fuzz targets, by name (the corpus directory of each is `tests/fuzz/corpus/<name>`).
pub const TARGETS: &[(&str, Target)] = &[
    ("sip_guard", sip_guard),
    ("sdp", sdp),
    ("rtp_session", rtp_session),
    ("bodies", bodies),
];

/// Any datagram through the raw-bytes guard. Property: a message the guard passes on
/// (possibly repaired) passes again unchanged: the repair is idempotent.
pub fn sip_guard(data: &[u8]) {
    if let Verdict::Pass(bytes) = inspect_datagram(data) {
        match inspect_datagram(&bytes) {
            Verdict::Pass(again) => assert_eq!(again.as_ref(), bytes.as_ref()),
            other => panic!("a passed message must pass again: {other:?}"),
        }
    }
}

/// Any text as an SDP offer: parse, negotiate an answer, and re-parse the answer.
pub fn sdp(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(offer) = SessionDescription::parse(text) else {
        return;
    };
    let local = LocalMedia {
        addr: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        port: 20000,
        session_id: 1,
        version: 1,
    };
    if let Ok(n) = negotiate_answer(&offer, &[Codec::Pcmu, Codec::Pcma], &local) {
        assert!(
            SessionDescription::parse(&n.answer).is_ok(),
            "our own answer must parse: {:?}",
            n.answer
        );
    }
}

/// Arbitrary datagrams into an RTP session (as RTP and as RTCP), with the clock moving.
pub fn rtp_session(data: &[u8]) {
    let start = Instant::now();
    let peer = std::net::SocketAddr::from(([127, 0, 0, 1], 4000));
    let mut cfg = RtpConfig::new(Codec::Pcmu, 0, Some(101));
    cfg.remote = Some(peer);
    let mut s = RtpSession::new(cfg, start);
    for (i, chunk) in data.chunks(172).enumerate() {
        let now = start + Duration::from_millis(20 * i as u64);
        if i % 5 == 4 {
            s.handle_rtcp(chunk, peer, now);
        } else {
            s.handle_datagram(chunk, peer, now);
        }
        s.handle_timeout(now);
        while s.poll_transmit(now).is_some() {}
        while s.poll_event().is_some() {}
    }
}

/// The small bodies and inputs voxgate reads: sipfrag, INFO DTMF, E.164 numbers, flow
/// expressions.
pub fn bodies(data: &[u8]) {
    let _ = voxgate::sip::sipfrag::SipFrag::parse_bytes(data);
    let _ = voxgate::sip::dtmf_info::parse_info_dtmf("application/dtmf-relay", data);
    let _ = voxgate::sip::dtmf_info::parse_info_dtmf("application/dtmf", data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = voxgate::phone::parse_e164(
            text,
            &voxgate::phone::ParseOptions {
                legacy_no_plus: true,
            },
        );
        if let Ok(expr) = voxgate::flow::expr::Expr::parse(text) {
            let vars = serde_json::Map::new();
            let _ = expr.eval(&vars);
        }
    }
}
