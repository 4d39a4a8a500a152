//! The SIP transaction and dialog layer seen from the wire, with a hand-written UDP peer:
//! retransmission intervals of the 2xx, Timer H, INVITE retransmissions absorbed, INVITE
//! without SDP (offer in the 200, answer in the ACK), re-INVITE hold / unhold / new media
//! address, and 481 for an unknown dialog. `[sip] t1_ms = 100` keeps the timers short; the
//! assertions are on ratios and counts, not on absolute times.

mod common;

use common::peer::*;
use common::*;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

const QUIET_FLOW: &str = r#"
name: quiet
start: main
inactivity_s: 0
prompts_dir: "{{PROMPTS_DIR}}"
dialogs:
  main:
    - message:
        file: greeting.wav
        wait: false
    - delay:
        ms: 600000
"#;

fn gateway() -> Gateway {
    Gateway::builder()
        .flow_yaml(QUIET_FLOW)
        .toml("[sip]\nt1_ms = 100\n")
        .start()
}

#[test]
fn ok_is_retransmitted_until_ack_then_timer_h_ends_the_call() {
    let gw = gateway();
    let mut peer = Peer::new(gw.sip_addr());
    let offer = peer.sdp(&peer.media, "sendrecv");
    peer.send(&peer.request("INVITE", 1, "h1", Some(&offer)));
    let trying = peer.recv_until(Duration::from_secs(3), |m| status(m) == Some(100));
    assert!(trying.is_some(), "no 100 Trying");
    // Never ACK: collect every copy of the 200 until the gateway gives up.
    let mut times = Vec::new();
    let until = Instant::now() + Duration::from_secs(12);
    while Instant::now() < until {
        match peer.recv_until(Duration::from_millis(500), |m| status(m) == Some(200)) {
            Some((t, _)) => times.push(t),
            None if times.len() > 3 && gw.log_contains("reason=no_ack") => break,
            None => {}
        }
    }
    assert!(
        times.len() >= 5,
        "expected the 200 at least 5 times, got {}",
        times.len()
    );
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0)
        .collect();
    eprintln!("2xx retransmission gaps (ms): {gaps:?}");
    // Timer G doubles from T1 (100 ms): 100, 200, 400, 800, ... capped at T2 (4 s).
    for w in gaps.windows(2).take(3) {
        let ratio = w[1] / w[0];
        assert!((1.5..=2.6).contains(&ratio), "gaps should double: {gaps:?}");
    }
    assert!(
        gaps[0] >= 60.0 && gaps[0] <= 400.0,
        "first gap ~T1: {gaps:?}"
    );
    // Timer H (64*T1 = 6.4 s): the call ends as no_ack.
    assert!(
        gw.wait_for_log("reason=no_ack", Duration::from_secs(5)),
        "call did not end with no_ack:\n{}",
        gw.log_tail(30)
    );
    let span = (*times.last().unwrap() - times[0]).as_secs_f64();
    assert!(span < 8.0, "retransmissions went on past Timer H: {span} s");
}

#[test]
fn retransmitted_invite_is_absorbed() {
    let gw = gateway();
    let mut peer = Peer::new(gw.sip_addr());
    let offer = peer.sdp(&peer.media, "sendrecv");
    let invite = peer.request("INVITE", 1, "abs1", Some(&offer));
    peer.send(&invite);
    peer.send(&invite);
    let ok = peer.recv_until(Duration::from_secs(3), |m| status(m) == Some(200));
    assert!(ok.is_some(), "no 200");
    peer.send(&invite); // a late retransmission, after the 200
    let again = peer.recv_until(Duration::from_secs(2), |m| status(m) == Some(200));
    assert!(
        again.is_some(),
        "the retransmitted INVITE should get the 200 again"
    );
    peer.send(&peer.request("ACK", 1, "abs2", None));
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(gw.log_count("INVITE received"), 1, "{}", gw.log_tail(30));
    peer.send(&peer.request("BYE", 2, "abs3", None));
    assert!(peer
        .recv_until(Duration::from_secs(3), |m| status(m) == Some(200)
            && m.contains("BYE"))
        .is_some());
    assert!(gw.wait_for_log("reason=caller_hangup", Duration::from_secs(3)));
}

#[test]
fn invite_without_sdp_gets_offer_in_200_and_answer_in_ack() {
    let gw = gateway();
    let mut peer = Peer::new(gw.sip_addr());
    peer.send(&peer.request("INVITE", 1, "nosdp1", None));
    let (_, ok) = peer
        .recv_until(Duration::from_secs(3), |m| status(m) == Some(200))
        .expect("no 200");
    let offer = body(&ok);
    assert!(
        offer.contains("m=audio ") && offer.contains("RTP/AVP"),
        "200 must carry an offer: {ok}"
    );
    assert!(offer.contains("telephone-event"), "{offer}");
    let answer = peer.sdp(&peer.media, "sendrecv");
    peer.send(&peer.request("ACK", 1, "nosdp2", Some(&answer)));
    // The gateway now sends its greeting to the address in the ACK's SDP.
    let n = Peer::rtp_count(&peer.media, Duration::from_millis(1000));
    assert!(
        n >= 35,
        "expected ~50 RTP packets in 1 s, got {n}\n{}",
        gw.log_tail(30)
    );
    peer.send(&peer.request("BYE", 2, "nosdp3", None));
    assert!(gw.wait_for_log("reason=caller_hangup", Duration::from_secs(3)));
}

#[test]
fn reinvite_hold_unhold_and_new_media_address() {
    let gw = gateway();
    let mut peer = Peer::new(gw.sip_addr());
    let offer = peer.sdp(&peer.media, "sendrecv");
    peer.send(&peer.request("INVITE", 1, "re1", Some(&offer)));
    peer.recv_until(Duration::from_secs(3), |m| status(m) == Some(200))
        .expect("no 200");
    peer.send(&peer.request("ACK", 1, "re2", None));
    assert!(
        Peer::rtp_count(&peer.media, Duration::from_millis(500)) >= 15,
        "no media before hold"
    );

    // Hold: we go sendonly, the gateway must answer recvonly and stop sending.
    let hold = peer.sdp(&peer.media, "sendonly");
    peer.send(&peer.request("INVITE", 2, "re3", Some(&hold)));
    let (_, ok) = peer
        .recv_until(Duration::from_secs(3), |m| {
            status(m) == Some(200) && m.contains("2 INVITE")
        })
        .expect("no 200 for the hold re-INVITE");
    assert!(
        body(&ok).contains("a=recvonly"),
        "hold answer must be recvonly: {ok}"
    );
    peer.send(&peer.request("ACK", 2, "re4", None));
    std::thread::sleep(Duration::from_millis(150));
    let held = Peer::rtp_count(&peer.media, Duration::from_millis(600));
    assert!(
        held <= 2,
        "gateway kept sending during hold: {held} packets"
    );

    // Unhold to a new media address: the gateway must follow it.
    let new_media = UdpSocket::bind("127.0.0.1:0").unwrap();
    new_media
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let unhold = peer.sdp(&new_media, "sendrecv");
    peer.send(&peer.request("INVITE", 3, "re5", Some(&unhold)));
    let (_, ok) = peer
        .recv_until(Duration::from_secs(3), |m| {
            status(m) == Some(200) && m.contains("3 INVITE")
        })
        .expect("no 200 for the unhold re-INVITE");
    assert!(body(&ok).contains("a=sendrecv"), "{ok}");
    peer.send(&peer.request("ACK", 3, "re6", None));
    let moved = Peer::rtp_count(&new_media, Duration::from_millis(800));
    assert!(
        moved >= 25,
        "media did not move to the new address: {moved} packets"
    );
    peer.send(&peer.request("BYE", 4, "re7", None));
    assert!(gw.wait_for_log("reason=caller_hangup", Duration::from_secs(3)));
}

#[test]
fn request_for_unknown_dialog_gets_481() {
    let gw = gateway();
    let mut peer = Peer::new(gw.sip_addr());
    peer.to_tag = Some("nosuchtag".into());
    for (i, method) in ["BYE", "INFO", "INVITE"].iter().enumerate() {
        peer.send(&peer.request(method, 10 + i as u32, &format!("u{i}"), None));
        let r = peer.recv_until(Duration::from_secs(3), |m| {
            m.starts_with("SIP/2.0 ") && status(m) != Some(100)
        });
        let (_, resp) = r.unwrap_or_else(|| panic!("no answer to {method}"));
        assert_eq!(status(&resp), Some(481), "{method}: {resp}");
    }
}

#[test]
fn malformed_sdp_gets_400_and_no_common_codec_gets_488() {
    let gw = gateway();
    let mut peer = Peer::new(gw.sip_addr());
    peer.send(&peer.request("INVITE", 1, "bad1", Some("this is not sdp\r\n")));
    let (_, r) = peer
        .recv_until(Duration::from_secs(3), |m| {
            status(m).is_some_and(|s| s >= 300)
        })
        .expect("no final response to a bad SDP");
    assert_eq!(status(&r), Some(400), "{r}");

    let mut peer = Peer::new(gw.sip_addr());
    let g729 = "v=0\r\no=p 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n";
    peer.send(&peer.request("INVITE", 1, "bad2", Some(g729)));
    let (_, r) = peer
        .recv_until(Duration::from_secs(3), |m| {
            status(m).is_some_and(|s| s >= 300)
        })
        .expect("no final response to an unusable offer");
    assert_eq!(status(&r), Some(488), "{r}");
    // The gateway is still fine.
    let mut peer = Peer::new(gw.sip_addr());
    let offer = peer.sdp(&peer.media, "sendrecv");
    peer.send(&peer.request("INVITE", 1, "ok1", Some(&offer)));
    assert!(peer
        .recv_until(Duration::from_secs(3), |m| status(m) == Some(200))
        .is_some());
}

#[test]
fn rtp_inactivity_ends_the_call_with_bye() {
    let gw = Gateway::builder()
        .flow_yaml(QUIET_FLOW)
        .toml("[sip]\nt1_ms = 100\n[rtp]\ninactivity_timeout_s = 2\n")
        .start();
    let mut peer = Peer::new(gw.sip_addr());
    let offer = peer.sdp(&peer.media, "sendrecv");
    peer.send(&peer.request("INVITE", 1, "idle1", Some(&offer)));
    peer.recv_until(Duration::from_secs(3), |m| status(m) == Some(200))
        .expect("no 200");
    let answered = Instant::now();
    peer.send(&peer.request("ACK", 1, "idle2", None));
    // We never send RTP: after 2 s the gateway must give up and hang up.
    let (at, bye) = peer
        .recv_until(Duration::from_secs(6), |m| m.starts_with("BYE "))
        .expect("no BYE after the RTP inactivity timeout");
    let waited = (at - answered).as_secs_f64();
    assert!((1.8..4.5).contains(&waited), "BYE after {waited:.2} s");
    assert!(bye.contains(&peer.call_id));
    assert!(
        gw.wait_for_log("reason=rtp_timeout", Duration::from_secs(2)),
        "{}",
        gw.log_tail(20)
    );
    assert!(gw.log_contains("no RTP from the caller"));
}
