//! Setup: admission, the SDP offer/answer of the INVITE (or of the ACK when the INVITE had
//! no offer), when to ring and answer, and starting the caller's media and the flow.

use super::close::Closing;
use super::forward::Forward;
use super::recording::Recordings;
use super::Call;
use crate::call::inbox::{self, Outstanding};
use crate::call::registry::CallSummary;
use crate::call::shared::Shared;
use crate::call::state::{CallState, EndReason, Input};
use crate::flow::driver::FlowDriver;
use crate::flow::websocket::WsBridge;
use crate::flow::{FlowEvent, FlowMachine, SessionInfo};
use crate::media::codec::Codec;
use crate::sip::sdp::{self, Direction, LocalMedia, Negotiated, SessionDescription};
use crate::sip::{IncomingCall, InviteInfo};
use chrono::Utc;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{info, warn};

/// Recorder events a call may have waiting (a recording sends at most three).
const REC_EVENTS: usize = 32;

/// Why an INVITE is refused, before anything is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Refusal {
    pub code: u16,
    pub why: String,
}

/// Our side of the INVITE's offer/answer: the SDP that goes in our 200, and what was
/// negotiated (`None` when the INVITE had no offer: ours goes in the 200, theirs in the ACK).
pub(super) fn negotiate_invite(
    offer: Option<&str>,
    codecs: &[Codec],
    local: &LocalMedia,
) -> Result<(String, Option<Negotiated>), Refusal> {
    let Some(text) = offer else {
        return Ok((
            sdp::build_offer(codecs, 101, local, Direction::SendRecv),
            None,
        ));
    };
    let offer = SessionDescription::parse(text).map_err(|e| Refusal {
        code: 400,
        why: format!("bad SDP: {e}"),
    })?;
    let n = sdp::negotiate_answer(&offer, codecs, local).map_err(|e| Refusal {
        code: 488,
        why: format!("SDP: {e}"),
    })?;
    Ok((n.answer.clone(), Some(n)))
}

/// The answer the ACK carried, for an INVITE that had no offer.
pub(super) fn ack_answer(ack_sdp: Option<&str>, codecs: &[Codec]) -> Result<Negotiated, String> {
    let text = ack_sdp.ok_or_else(|| "the ACK carried no SDP answer".to_string())?;
    let answer = SessionDescription::parse(text).map_err(|e| e.to_string())?;
    sdp::accept_answer(codecs, &answer).map_err(|e| e.to_string())
}

/// How the call is answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AnswerPlan {
    /// Send 180 Ringing now.
    pub ring: bool,
    /// When to send the 200 (`None`: the external bot decides).
    pub answer_at: Option<Instant>,
    /// The flow is started at once (an external bot is told about the INVITE before answer).
    pub flow_started: bool,
}

pub(super) fn answer_plan(external: bool, answer_delay: Duration, now: Instant) -> AnswerPlan {
    AnswerPlan {
        ring: !external && !answer_delay.is_zero(),
        answer_at: (!external).then(|| now + answer_delay),
        flow_started: external,
    }
}

/// What the bot sees of the call when its session starts.
pub(super) fn session_info(info: &InviteInfo, codec: &str) -> SessionInfo {
    SessionInfo {
        call_id: info.call_id.clone(),
        from: info.from_user.clone(),
        to: info.to_user.clone(),
        headers: info.headers.clone(),
        codec: codec.to_string(),
    }
}

impl Call {
    /// Registers the call, binds its media sockets and negotiates SDP. Returns None when the
    /// INVITE was refused (the response has been sent).
    pub(super) async fn setup(shared: Arc<Shared>, incoming: IncomingCall) -> Option<Call> {
        let IncomingCall {
            leg,
            info,
            events,
            slot,
        } = incoming;
        let now = Instant::now();
        let started_wall = Utc::now();
        info!(
            from = %info.from_uri, to = %info.to_uri, transport = info.transport,
            source = ?info.source, "INVITE received"
        );
        let control = shared.registry.insert(CallSummary {
            call_id: info.call_id.clone(),
            from: info.from_user.clone(),
            to: info.to_user.clone(),
            started_at: started_wall.to_rfc3339(),
            answered_at: None,
            state: "offered".into(),
            codec: None,
            recording_id: None,
            paused: false,
        });
        let refuse = |r: Refusal| {
            warn!(status = r.code, reason = %r.why, "INVITE refused");
            leg.reject(r.code, Some(r.why)).ok();
            shared.registry.remove(&info.call_id);
            metrics::counter!("voxgate_calls_total", "outcome" => "refused").increment(1);
        };
        let (rtp_sock, rtcp_sock) = match shared.ports.allocate() {
            Ok(p) => p,
            Err(e) => {
                refuse(Refusal {
                    code: 503,
                    why: e.to_string(),
                });
                return None;
            }
        };
        let port = rtp_sock.local_addr().map(|a| a.port()).unwrap_or(0);
        let (media, media_events) =
            match shared
                .media
                .attach(rtp_sock, rtcp_sock, tracing::Span::current())
            {
                Ok(m) => m,
                Err(e) => {
                    refuse(Refusal {
                        code: 503,
                        why: e.to_string(),
                    });
                    return None;
                }
            };
        let local = LocalMedia {
            addr: shared.advertised_ip,
            port,
            session_id: rand::random::<u32>() as u64,
            version: 1,
        };
        let (local_sdp, negotiated) =
            match negotiate_invite(info.sdp.as_deref(), &shared.validated.codecs, &local) {
                Ok(x) => x,
                Err(r) => {
                    refuse(r);
                    return None;
                }
            };
        let def = shared.flow();
        let codec = negotiated
            .as_ref()
            .map(|n| n.codec.name())
            .unwrap_or_default();
        let flow = match WsBridge::from_config(&shared.config.flow, session_info(&info, codec), now)
        {
            Some(ws) => FlowDriver::External(Box::new(ws)),
            None => FlowDriver::Embedded(FlowMachine::new(def.clone(), now, started_wall)),
        };
        let plan = answer_plan(flow.is_external(), def.answer_delay(), now);
        if plan.ring {
            leg.ring().ok();
            info!(
                delay_ms = def.answer_delay().as_millis() as u64,
                "ringing before answer"
            );
        }
        let (inbox_tx, inbox_rx) = inbox::inbox();
        let (rec_tx, rec_rx) = mpsc::channel(REC_EVENTS);
        let transcript = shared
            .integrations
            .as_ref()
            .map(|i| i.transcripts.open(&info.call_id, now, started_wall));
        // 64*T1 for the stack's Timer L, plus T2 (4 s) so the stack normally ends it first.
        let ack_wait = std::time::Duration::from_millis(shared.config.sip.t1_ms.saturating_mul(64))
            + std::time::Duration::from_secs(4);
        Some(Call {
            shared,
            leg,
            info,
            events,
            control,
            state: CallState::new(now).with_ack_wait(ack_wait),
            media: Some(media),
            media_events,
            media_started: false,
            tap: None,
            local,
            local_sdp,
            negotiated,
            flow,
            flow_def: def,
            flow_started: plan.flow_started,
            flow_closed: false,
            deferred_end: None,
            answer_at: plan.answer_at,
            inbox_tx,
            inbox_rx,
            listening: None,
            outstanding: Outstanding::default(),
            says_in_flight: Default::default(),
            says_cut: Default::default(),
            shown_paused: false,
            rec_tx,
            rec_rx,
            recordings: Recordings::default(),
            forward: Forward::default(),
            far: None,
            far_events: None,
            bridged: false,
            started_wall,
            answered_wall: None,
            dtmf_count: 0,
            closing: None::<Closing>,
            cdr_written: false,
            refer_task: None,
            early_dtmf: Vec::new(),
            early_media: Vec::new(),
            _slot: slot,
            pending_offload: None,
            transcript,
            wakeups: super::wakeups::Wakeups::new(),
        })
    }

    /// Sends our 200 OK and shows the call as answered.
    pub(super) fn send_answer(&mut self) {
        if let Err(e) = self.leg.answer(&self.local_sdp) {
            warn!(error = %e, "could not send 200 OK");
            self.input(Input::DialogFailed(e.to_string()));
            return;
        }
        self.answered_wall = Some(Utc::now());
        // The transcript's `call answered` entry (FlowEvent::Started goes straight to the
        // flow in start_media, not through flow_event, so nothing else adds it).
        self.transcribe(|t| t.answered(Instant::now()));
        let answered = self.answered_wall.map(|t| t.to_rfc3339());
        let codec = self.negotiated.as_ref().map(|n| n.codec.name().to_string());
        self.set_summary(|s| {
            s.state = "answered".into();
            s.answered_at = answered;
            s.codec = codec;
        });
        info!(codec = ?self.negotiated.as_ref().map(|n| n.codec.name()), "200 OK sent");
        self.write_open_cdr();
    }

    /// Starts the caller's RTP session and, on first media, the flow.
    pub(super) fn start_media(&mut self, n: &Negotiated, now: Instant) {
        self.start_caller_media(n);
        if !self.flow_started {
            self.flow_started = true;
            let ev = FlowEvent::Started(session_info(&self.info, n.codec.name()));
            self.flow.handle_event(ev, now, Utc::now());
        }
        for ev in std::mem::take(&mut self.early_dtmf) {
            self.flow_event(ev);
        }
        self.release_early_media(now);
    }

    /// The INVITE had no offer: the ACK must carry the answer, or the call ends.
    pub(super) fn accept_ack_answer(&mut self, ack_sdp: Option<String>) {
        match ack_answer(ack_sdp.as_deref(), &self.shared.validated.codecs) {
            Ok(n) => {
                info!(codec = n.codec.name(), "SDP answer from the ACK");
                self.negotiated = Some(n.clone());
                self.start_media(&n, Instant::now());
            }
            Err(why) => {
                warn!(%why, "no usable SDP answer in the ACK: ending the call");
                self.input(Input::Acked);
                self.input(Input::Hangup(EndReason::Error(why)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 10.0.0.9\r\ns=-\r\nc=IN IP4 10.0.0.9\r\nt=0 0\r\nm=audio 4000 RTP/AVP 8 0 101\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-15\r\n";

    fn local() -> LocalMedia {
        LocalMedia {
            addr: "127.0.0.1".parse().unwrap(),
            port: 20000,
            session_id: 7,
            version: 1,
        }
    }

    #[test]
    fn an_offer_is_answered_in_its_own_codec_order() {
        let (answer, n) =
            negotiate_invite(Some(OFFER), &[Codec::Pcmu, Codec::Pcma], &local()).expect("answer");
        let n = n.expect("negotiated");
        assert_eq!(n.codec, Codec::Pcma, "the offer's first codec we support");
        assert_eq!(n.telephone_event_pt, Some(101));
        assert_eq!(n.remote, Some("10.0.0.9:4000".parse().unwrap()));
        assert_eq!(answer, n.answer);
        assert!(answer.contains("m=audio 20000 "), "{answer}");
    }

    #[test]
    fn no_offer_means_our_offer_goes_in_the_200() {
        let (sdp, n) = negotiate_invite(None, &[Codec::Pcmu], &local()).expect("offer");
        assert!(n.is_none());
        assert!(sdp.contains("m=audio 20000 RTP/AVP 0 101"), "{sdp}");
        assert!(sdp.contains("a=sendrecv"), "{sdp}");
    }

    #[test]
    fn bad_sdp_is_400_and_no_common_codec_is_488() {
        let r = negotiate_invite(Some("garbage"), &[Codec::Pcmu], &local()).unwrap_err();
        assert_eq!(r.code, 400);
        assert!(r.why.starts_with("bad SDP: "), "{}", r.why);
        let g722 = OFFER
            .replace("RTP/AVP 8 0 101", "RTP/AVP 9")
            .replace("a=rtpmap:8 PCMA/8000\r\na=rtpmap:0 PCMU/8000\r\n", "");
        let r = negotiate_invite(Some(&g722), &[Codec::Pcmu], &local()).unwrap_err();
        assert_eq!(r.code, 488);
        assert!(r.why.starts_with("SDP: "), "{}", r.why);
    }

    #[test]
    fn the_ack_must_carry_a_usable_answer() {
        assert_eq!(
            ack_answer(None, &[Codec::Pcmu]).unwrap_err(),
            "the ACK carried no SDP answer"
        );
        assert!(ack_answer(Some("nonsense"), &[Codec::Pcmu]).is_err());
        let n = ack_answer(Some(OFFER), &[Codec::Pcmu, Codec::Pcma]).expect("answer");
        assert_eq!(n.remote, Some("10.0.0.9:4000".parse().unwrap()));
    }

    #[test]
    fn embedded_flow_rings_during_its_answer_delay() {
        let b = Instant::now();
        let p = answer_plan(false, Duration::from_millis(1500), b);
        assert!(p.ring && !p.flow_started);
        assert_eq!(p.answer_at, Some(b + Duration::from_millis(1500)));
        // No delay: answer on the first pass, no 180.
        let p = answer_plan(false, Duration::ZERO, b);
        assert_eq!((p.ring, p.answer_at), (false, Some(b)));
    }

    #[test]
    fn an_external_bot_decides_when_to_answer() {
        let p = answer_plan(true, Duration::from_secs(2), Instant::now());
        assert_eq!(
            p,
            AnswerPlan {
                ring: false,
                answer_at: None,
                flow_started: true
            }
        );
    }
}
