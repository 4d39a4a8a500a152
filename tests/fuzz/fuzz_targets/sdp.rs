//! Any text as an SDP offer: parse, negotiate an answer, and re-parse the answer.
#![no_main]
use libfuzzer_sys::fuzz_target;
use voxgate::media::codec::Codec;
use voxgate::sip::sdp::{negotiate_answer, LocalMedia, SessionDescription};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(offer) = SessionDescription::parse(text) else { return };
    let local = LocalMedia {
        addr: "127.0.0.1".parse().unwrap(),
        port: 20000,
        session_id: 1,
        version: 1,
    };
    if let Ok(n) = negotiate_answer(&offer, &[Codec::Pcmu, Codec::Pcma], &local) {
        assert!(SessionDescription::parse(&n.answer).is_ok(), "our own answer must parse");
    }
});
