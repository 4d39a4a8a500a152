//! Requests inside the caller's dialog: the ACK, INFO (DTMF), re-INVITE/UPDATE, NOTIFY
//! (REFER progress) and the dialog's end (BYE, CANCEL, timeouts).

use super::Call;
use crate::call::state::Input;
use crate::call::transfer::TransferInput;
use crate::flow::FlowEvent;
use crate::media::codec::Codec;
use crate::sip::dtmf_info::parse_info_dtmf;
use crate::sip::sdp::{self, LocalMedia, Negotiated, SessionDescription};
use crate::sip::sipfrag::SipFrag;
use crate::sip::{LegEnd, LegEvent, Responder};
use std::time::Instant;
use tracing::{debug, info, warn};

/// What voxgate answers to an INFO, and the digit it carried.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct InfoReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The DTMF for the flow, when the INFO carried one.
    pub dtmf: Option<FlowEvent>,
    /// Why the INFO was refused (for the log).
    pub error: Option<String>,
}

/// INFO: a DTMF body is answered 200 and becomes a flow event; a broken DTMF body is 400,
/// any other content 415, both with the `Accept` we understand.
pub(super) fn info_reply(content_type: &str, body: &[u8]) -> InfoReply {
    match parse_info_dtmf(content_type, body) {
        Ok(d) => InfoReply {
            status: 200,
            headers: Vec::new(),
            dtmf: Some(FlowEvent::Dtmf {
                digit: d.digit,
                duration_ms: d.duration_ms.unwrap_or(0),
            }),
            error: None,
        },
        Err(e) => {
            let ct = content_type.to_ascii_lowercase();
            let status = if ct.starts_with("application/dtmf") {
                400
            } else {
                415
            };
            InfoReply {
                status,
                headers: vec![(
                    "Accept".into(),
                    "application/dtmf-relay, application/dtmf".into(),
                )],
                dtmf: None,
                error: Some(e.to_string()),
            }
        }
    }
}

/// What a re-INVITE / UPDATE does.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Reoffer {
    /// No offer in it: answer 200 with our current SDP as the offer; media unchanged.
    RepeatOurs,
    /// Accepted: answer 200 with `n.answer` and apply `n` to the media (see [`holds`]).
    Accept(Negotiated),
    /// Refused: answer `status`; the call keeps its media and SDP version.
    Refuse { status: u16, why: String },
}

/// Decides a re-INVITE/UPDATE against our codecs. Our SDP version goes up only when a new
/// answer is produced.
pub(super) fn reoffer(offer: Option<&str>, codecs: &[Codec], local: &mut LocalMedia) -> Reoffer {
    let Some(text) = offer else {
        return Reoffer::RepeatOurs;
    };
    local.version += 1;
    let result = SessionDescription::parse(text)
        .map_err(|e| (400u16, e.to_string()))
        .and_then(|o| sdp::negotiate_answer(&o, codecs, local).map_err(|e| (488, e.to_string())));
    match result {
        Ok(n) => Reoffer::Accept(n),
        Err((status, why)) => {
            local.version -= 1;
            Reoffer::Refuse { status, why }
        }
    }
}

/// True when the negotiated media means we must not send (hold: sendonly/inactive from the
/// peer, or no address to send to).
pub(super) fn holds(n: &Negotiated) -> bool {
    !n.direction.sends() || n.remote.is_none()
}

/// What a NOTIFY means to the call (every NOTIFY is answered 200 whatever it says).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Notify {
    /// Not a REFER sipfrag: nothing to do.
    Ignored,
    /// REFER progress: the sipfrag's status line.
    ReferStatus { status: u16, reason: String },
    /// A REFER NOTIFY whose sipfrag cannot be read.
    Unreadable(String),
}

pub(super) fn notify(event: &str, content_type: &str, body: &[u8]) -> Notify {
    let is_refer = event.to_ascii_lowercase().starts_with("refer");
    if !is_refer
        || !content_type
            .to_ascii_lowercase()
            .starts_with("message/sipfrag")
    {
        return Notify::Ignored;
    }
    match SipFrag::parse_bytes(body) {
        Ok(frag) => Notify::ReferStatus {
            status: frag.status,
            reason: frag.reason,
        },
        Err(e) => Notify::Unreadable(e.to_string()),
    }
}

/// What the end of the caller's dialog means for the call (`None`: we ended it ourselves).
pub(super) fn dialog_end(end: LegEnd) -> Option<Input> {
    match end {
        LegEnd::RemoteBye => Some(Input::RemoteBye),
        LegEnd::Cancelled => Some(Input::Cancelled),
        LegEnd::LocalHangup => None,
        LegEnd::Timeout => Some(Input::DialogFailed("no ACK or transaction timeout".into())),
        LegEnd::Other(why) => Some(Input::DialogFailed(why)),
    }
}

impl Call {
    pub(super) async fn on_leg_event(&mut self, ev: LegEvent) {
        match ev {
            LegEvent::Confirmed { ack_sdp } => {
                info!("ACK received: call confirmed");
                if self.negotiated.is_none() {
                    self.accept_ack_answer(ack_sdp);
                }
                self.set_summary(|s| s.state = "confirmed".into());
                self.input(Input::Acked);
            }
            LegEvent::Info {
                content_type,
                body,
                reply,
            } => {
                let r = info_reply(&content_type, &body);
                match (r.dtmf, r.error) {
                    (Some(ev), _) => {
                        reply.respond(r.status, r.headers, None).await.ok();
                        if let FlowEvent::Dtmf { digit, duration_ms } = &ev {
                            info!(%digit, via = "info", duration_ms, "DTMF received");
                        }
                        self.flow_event(ev);
                    }
                    (None, error) => {
                        let error = error.unwrap_or_default();
                        info!(status = r.status, %error, "INFO refused");
                        reply.respond(r.status, r.headers, None).await.ok();
                    }
                }
            }
            LegEvent::Offer { sdp, reply } => self.on_reoffer(sdp, reply).await,
            LegEvent::Notify {
                reply,
                event,
                content_type,
                body,
            } => {
                // RFC 3515: every NOTIFY is answered 200, whatever it says.
                reply.respond(200, vec![], None).await.ok();
                match notify(&event, &content_type, &body) {
                    Notify::Ignored => debug!(%event, %content_type, "NOTIFY ignored"),
                    Notify::ReferStatus { status, reason } => {
                        info!(status, %reason, "REFER progress (NOTIFY)");
                        let out = self
                            .forward
                            .handle(TransferInput::Notify(status), Instant::now());
                        self.transfer_outputs(out, Instant::now());
                    }
                    Notify::Unreadable(e) => warn!(error = %e, "NOTIFY with an unreadable sipfrag"),
                }
            }
            LegEvent::Progress { .. } | LegEvent::Answered { .. } | LegEvent::Rejected { .. } => {}
            LegEvent::Terminated(end) => {
                info!(?end, "SIP dialog ended");
                if end == LegEnd::RemoteBye {
                    let out = self
                        .forward
                        .handle(TransferInput::CallerBye, Instant::now());
                    self.transfer_outputs(out, Instant::now());
                    self.hangup_far().await;
                }
                if let Some(input) = dialog_end(end) {
                    self.input(input);
                }
            }
        }
    }

    /// re-INVITE / UPDATE: hold, unhold, a new media address or codec.
    async fn on_reoffer(&mut self, sdp_text: Option<String>, reply: Responder) {
        let ct = vec![("Content-Type".to_string(), "application/sdp".to_string())];
        match reoffer(
            sdp_text.as_deref(),
            &self.shared.validated.codecs,
            &mut self.local,
        ) {
            Reoffer::RepeatOurs => {
                reply
                    .respond(200, ct, Some(self.local_sdp.clone().into_bytes()))
                    .await
                    .ok();
            }
            Reoffer::Accept(n) => {
                let hold = holds(&n);
                info!(remote = ?n.remote, direction = %n.direction, codec = n.codec.name(), hold, "re-INVITE accepted");
                if let Some(rtp) = self.rtp.as_mut() {
                    if let Some(addr) = n.remote {
                        rtp.set_remote(addr);
                    }
                    rtp.set_codec(n.codec, n.payload_type, n.telephone_event_pt);
                    rtp.set_hold(hold);
                }
                self.local_sdp = n.answer.clone();
                self.negotiated = Some(n);
                reply
                    .respond(200, ct, Some(self.local_sdp.clone().into_bytes()))
                    .await
                    .ok();
            }
            Reoffer::Refuse { status, why } => {
                warn!(status, %why, "re-INVITE refused; the call keeps its media");
                reply.respond(status, vec![], None).await.ok();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::sdp::Direction;

    fn local() -> LocalMedia {
        LocalMedia {
            addr: "127.0.0.1".parse().unwrap(),
            port: 20000,
            session_id: 7,
            version: 1,
        }
    }

    fn offer(dir: &str, addr: &str) -> String {
        format!("v=0\r\no=- 1 2 IN IP4 {addr}\r\ns=-\r\nc=IN IP4 {addr}\r\nt=0 0\r\nm=audio 4002 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na={dir}\r\n")
    }

    #[test]
    fn info_dtmf_is_200_and_one_flow_event() {
        let r = info_reply("application/dtmf-relay", b"Signal=5\r\nDuration=160\r\n");
        assert_eq!(r.status, 200);
        assert!(r.headers.is_empty());
        assert_eq!(
            r.dtmf,
            Some(FlowEvent::Dtmf {
                digit: '5',
                duration_ms: 160
            })
        );
        // application/dtmf carries no duration: 0.
        let r = info_reply("application/dtmf", b"#");
        assert_eq!(
            r.dtmf,
            Some(FlowEvent::Dtmf {
                digit: '#',
                duration_ms: 0
            })
        );
    }

    #[test]
    fn a_broken_dtmf_info_is_400_and_other_content_415_with_accept() {
        let accept = vec![(
            "Accept".to_string(),
            "application/dtmf-relay, application/dtmf".to_string(),
        )];
        let r = info_reply("application/dtmf-relay", b"Signal=Z\r\n");
        assert_eq!((r.status, &r.headers, &r.dtmf), (400, &accept, &None));
        assert!(r.error.is_some());
        let r = info_reply("Application/DTMF", b"");
        assert_eq!(r.status, 400);
        let r = info_reply("application/media_control+xml", b"<x/>");
        assert_eq!((r.status, &r.headers, &r.dtmf), (415, &accept, &None));
    }

    #[test]
    fn reinvite_to_hold_keeps_the_codec_and_stops_sending() {
        let mut l = local();
        match reoffer(Some(&offer("sendonly", "10.0.0.9")), &[Codec::Pcmu], &mut l) {
            Reoffer::Accept(n) => {
                assert_eq!(n.direction, Direction::RecvOnly);
                assert!(holds(&n));
                assert!(n.answer.contains("a=recvonly"), "{}", n.answer);
                assert!(
                    n.answer.contains("o=- 7 2 IN IP4"),
                    "version bumped: {}",
                    n.answer
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.version, 2);
        // Unhold at a new address.
        match reoffer(
            Some(&offer("sendrecv", "10.0.0.10")),
            &[Codec::Pcmu],
            &mut l,
        ) {
            Reoffer::Accept(n) => {
                assert!(!holds(&n));
                assert_eq!(n.remote, Some("10.0.0.10:4002".parse().unwrap()));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(l.version, 3);
    }

    #[test]
    fn a_refused_reinvite_keeps_the_sdp_version() {
        let mut l = local();
        assert!(matches!(
            reoffer(Some("not sdp"), &[Codec::Pcmu], &mut l),
            Reoffer::Refuse { status: 400, .. }
        ));
        assert!(matches!(
            reoffer(Some(&offer("sendrecv", "10.0.0.9")), &[Codec::Pcma], &mut l),
            Reoffer::Refuse { status: 488, .. }
        ));
        assert_eq!(l.version, 1);
        // No offer at all: repeat ours, no new version.
        assert_eq!(reoffer(None, &[Codec::Pcmu], &mut l), Reoffer::RepeatOurs);
        assert_eq!(l.version, 1);
    }

    #[test]
    fn only_a_refer_sipfrag_notify_counts() {
        assert_eq!(
            notify(
                "refer;id=7",
                "message/sipfrag;version=2.0",
                b"SIP/2.0 200 OK\r\n"
            ),
            Notify::ReferStatus {
                status: 200,
                reason: "OK".into()
            }
        );
        assert_eq!(
            notify("presence", "message/sipfrag", b"SIP/2.0 200 OK\r\n"),
            Notify::Ignored
        );
        assert_eq!(notify("refer", "text/plain", b"hi"), Notify::Ignored);
        assert!(matches!(
            notify("REFER", "message/sipfrag", b"garbage"),
            Notify::Unreadable(_)
        ));
    }

    #[test]
    fn dialog_end_maps_to_call_inputs() {
        assert_eq!(dialog_end(LegEnd::RemoteBye), Some(Input::RemoteBye));
        assert_eq!(dialog_end(LegEnd::Cancelled), Some(Input::Cancelled));
        assert_eq!(dialog_end(LegEnd::LocalHangup), None);
        assert!(matches!(
            dialog_end(LegEnd::Timeout),
            Some(Input::DialogFailed(_))
        ));
        assert_eq!(
            dialog_end(LegEnd::Other("transport".into())),
            Some(Input::DialogFailed("transport".into()))
        );
    }
}
