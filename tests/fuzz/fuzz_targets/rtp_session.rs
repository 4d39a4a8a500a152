//! Arbitrary datagrams into an RTP session (as RTP and as RTCP), with the clock moving.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};
use voxgate::media::codec::Codec;
use voxgate::media::rtp::{RtpConfig, RtpSession};

fuzz_target!(|data: &[u8]| {
    let start = Instant::now();
    let mut cfg = RtpConfig::new(Codec::Pcmu, 0, Some(101));
    cfg.remote = Some("127.0.0.1:4000".parse().unwrap());
    let mut s = RtpSession::new(cfg, start);
    let from = "127.0.0.1:4000".parse().unwrap();
    for (i, chunk) in data.chunks(172).enumerate() {
        let now = start + Duration::from_millis(20 * i as u64);
        if i % 5 == 4 {
            s.handle_rtcp(chunk, from, now);
        } else {
            s.handle_datagram(chunk, from, now);
        }
        s.handle_timeout(now);
        while s.poll_transmit(now).is_some() {}
        while s.poll_event().is_some() {}
    }
});
