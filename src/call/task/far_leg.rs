//! The far leg: the B2BUA leg of a forward in bridge mode (in the call code, "bridge" means
//! only this). Its INVITE to the trunk and its SIP events. Its media runs in the call's
//! media core next to the caller's, which relays audio and DTMF between the two legs.

use super::caller_leg::holds;
use super::forward::Target;
use super::Call;
use crate::call::state::{EndReason, Input};
use crate::call::transfer::TransferInput;
use crate::media::codec::Codec;
use crate::media::core::MediaCommand;
use crate::sip::sdp::{self, Direction, LocalMedia, Negotiated, SessionDescription};
use crate::sip::{CallLeg, LegEnd, LegEvent, OutgoingInvite};
use std::net::IpAddr;
use tracing::{info, warn, Instrument};

/// The B2BUA leg towards the trunk.
pub(super) struct FarLeg {
    pub leg: CallLeg,
    /// Its RTP session runs on the media core (started by its first SDP).
    pub media: bool,
    pub local: LocalMedia,
    pub answered: bool,
    pub ended: bool,
}

/// What the INVITE to the trunk says.
#[derive(Debug, Clone)]
pub(super) struct BridgeParams<'a> {
    pub target: &'a Target,
    /// The trunk's `host:port`.
    pub trunk: &'a str,
    /// `[transfer] caller_id`, if set.
    pub caller_id: Option<&'a str>,
    /// The caller's From URI.
    pub caller_uri: &'a str,
    /// The URI the caller dialled (our side), for `Diversion`.
    pub called_uri: &'a str,
    pub advertised_ip: IpAddr,
    pub credential: Option<(String, String)>,
}

/// The INVITE for the far leg, with our offer for `local`.
pub(super) fn bridge_invite(
    p: &BridgeParams,
    codecs: &[Codec],
    local: &LocalMedia,
) -> OutgoingInvite {
    let from = match p.caller_id {
        Some(id) => format!("sip:{id}@{}", p.advertised_ip),
        None if !p.caller_uri.is_empty() => p.caller_uri.to_string(),
        None => format!("sip:anonymous@{}", p.advertised_ip),
    };
    OutgoingInvite {
        target: p.target.request_uri(p.trunk),
        from,
        from_display: None,
        sdp: sdp::build_offer(codecs, 101, local, Direction::SendRecv),
        headers: std::iter::once((
            "Diversion".into(),
            format!("<{}>;reason=unconditional", p.called_uri),
        ))
        .chain(p.target.headers.iter().cloned())
        .collect(),
        credential: p.credential.clone(),
    }
}

/// The far side's re-INVITE (hold/unhold): our answer, if its offer is usable. Our SDP
/// version goes up either way.
pub(super) fn far_reoffer(
    offer: Option<&str>,
    codecs: &[Codec],
    local: &mut LocalMedia,
) -> Option<Negotiated> {
    local.version += 1;
    offer
        .and_then(|t| SessionDescription::parse(t).ok())
        .and_then(|o| sdp::negotiate_answer(&o, codecs, local).ok())
}

/// The far leg's dialog ended: once bridged, the caller's call ends with it (unless we
/// ended it ourselves).
pub(super) fn far_ended(end: &LegEnd, bridged: bool) -> Option<Input> {
    (bridged && *end != LegEnd::LocalHangup).then_some(Input::Hangup(EndReason::FarEndHangup))
}

/// A response on the far leg's INVITE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FarResponse {
    Progress(u16),
    Answered,
    Rejected(u16),
}

/// What a far-leg response does: (answered, ended) flags to set, and the forward's input.
/// Its SDP (early media or the answer) starts or updates the far leg's media first.
pub(super) fn far_response(r: FarResponse) -> (bool, bool, TransferInput) {
    match r {
        FarResponse::Progress(status) => (false, false, TransferInput::BridgeProgress(status)),
        FarResponse::Answered => (true, false, TransferInput::BridgeAnswered),
        FarResponse::Rejected(status) => (false, true, TransferInput::BridgeFailed(status)),
    }
}

impl Call {
    /// B2BUA: INVITE the trunk with our offer on a fresh media port.
    pub(super) fn start_bridge(&mut self, number: &Target) {
        let Some(sip) = self.shared.sip() else {
            self.transfer_input(TransferInput::BridgeFailed(0));
            return;
        };
        let shared = self.shared.clone();
        let (sock, rtcp) = match shared.ports.allocate() {
            Ok(p) => p,
            _ => {
                warn!("no RTP port for the bridged leg");
                self.transfer_input(TransferInput::BridgeFailed(0));
                return;
            }
        };
        let local = LocalMedia {
            addr: shared.advertised_ip,
            port: sock.local_addr().map(|a| a.port()).unwrap_or(0),
            session_id: rand::random::<u32>() as u64,
            version: 1,
        };
        let cfg = &shared.config.transfer;
        let trunk = shared.validated.trunk.host_port();
        let params = BridgeParams {
            target: number,
            trunk: &trunk,
            caller_id: cfg.caller_id.as_deref(),
            caller_uri: &self.info.from_uri,
            called_uri: &self.info.to_uri,
            advertised_ip: shared.advertised_ip,
            credential: cfg.username.clone().zip(cfg.password.clone()),
        };
        let req = bridge_invite(&params, &shared.validated.codecs, &local);
        info!(target = %req.target, "bridging: INVITE to the trunk");
        let attached = self
            .media
            .as_ref()
            .map(|m| m.attach_far(sock, rtcp).is_ok());
        if attached != Some(true) {
            warn!("the media worker cannot take the bridged leg");
            self.transfer_input(TransferInput::BridgeFailed(0));
            return;
        }
        match sip.invite(req) {
            Ok((leg, events)) => {
                self.far = Some(FarLeg {
                    leg,
                    media: false,
                    local,
                    answered: false,
                    ended: false,
                });
                self.far_events = Some(events);
                self.wakeups.mark(super::wakeups::Source::Far);
            }
            Err(e) => {
                warn!(error = %e, "could not send the INVITE to the trunk");
                if let Some(m) = self.media.as_ref() {
                    m.detach_far().ok();
                }
                self.transfer_input(TransferInput::BridgeFailed(0));
            }
        }
    }

    /// The forward gave up on the far leg (ring timeout, caller gone): CANCEL it.
    pub(super) fn cancel_far(&mut self) {
        if let Some(far) = self.far.as_mut() {
            far.ended = true;
            let leg = far.leg.clone();
            tokio::spawn(async move { leg.cancel().await.ok() }.in_current_span());
        }
        self.drop_far();
    }

    /// Forgets the far leg, unless the caller is connected to it.
    pub(super) fn drop_far(&mut self) {
        if !self.bridged {
            if self.far.take().is_some() {
                if let Some(m) = self.media.as_ref() {
                    m.detach_far().ok();
                }
            }
            self.far_events = None;
        }
    }

    /// The caller hung up: end the far leg too (BYE once answered, CANCEL before).
    pub(super) async fn hangup_far(&mut self) {
        if let Some(far) = self.far.as_mut() {
            if !far.ended {
                far.ended = true;
                let r = if far.answered {
                    far.leg.bye().await
                } else {
                    far.leg.cancel().await
                };
                if let Err(e) = r {
                    warn!(error = %e, "could not end the far leg");
                }
            }
        }
    }

    /// The call is over: end the far leg without waiting for the answer.
    pub(super) fn end_far(&mut self) {
        if let Some(far) = self.far.as_mut() {
            if !far.ended {
                far.ended = true;
                let leg = far.leg.clone();
                let answered = far.answered;
                let in_flight = self.shared.registry.hangup_started();
                tokio::spawn(
                    async move {
                        let _in_flight = in_flight;
                        let r = if answered {
                            leg.bye().await
                        } else {
                            leg.cancel().await
                        };
                        if let Err(e) = r {
                            warn!(error = %e, "could not end the far leg");
                        }
                    }
                    .in_current_span(),
                );
            }
        }
    }

    /// Starts the far leg's media from its SDP answer (early media or the 200).
    fn far_media(&mut self, sdp_text: &str) {
        let Some(far) = self.far.as_mut() else { return };
        let parsed = SessionDescription::parse(sdp_text)
            .map_err(|e| e.to_string())
            .and_then(|a| {
                sdp::accept_answer(&self.shared.validated.codecs, &a).map_err(|e| e.to_string())
            });
        match parsed {
            Ok(n) => {
                if !far.media {
                    info!(codec = n.codec.name(), remote = ?n.remote, "far leg media");
                }
                far.media = true;
                let config = Box::new(super::media::rtp_config(&self.shared, &n));
                // Starts the far leg's session, or updates its address and codec.
                self.media_cmd(MediaCommand::FarMedia { config });
            }
            Err(why) => warn!(%why, "far leg SDP unusable"),
        }
    }

    fn far_response(&mut self, r: FarResponse, sdp: Option<String>) {
        let (answered, ended, input) = far_response(r);
        if let Some(far) = self.far.as_mut() {
            far.answered |= answered;
            far.ended |= ended;
        }
        if let Some(sdp) = sdp {
            // Early media (ringback, announcements) is relayed to the caller too.
            self.far_media(&sdp);
        }
        self.transfer_input(input);
    }

    pub(super) fn on_far_event(&mut self, ev: LegEvent) {
        match ev {
            LegEvent::Progress { status, sdp } => {
                info!(status, "far leg progress");
                self.far_response(FarResponse::Progress(status), sdp);
            }
            LegEvent::Answered { sdp } => {
                info!("far leg answered");
                if sdp.is_none() {
                    warn!("far leg 200 OK without SDP");
                }
                self.far_response(FarResponse::Answered, sdp);
            }
            LegEvent::Rejected { status } => {
                info!(status, "far leg refused");
                self.far_response(FarResponse::Rejected(status), None);
            }
            LegEvent::Terminated(end) => {
                info!(?end, "far leg ended");
                if let Some(far) = self.far.as_mut() {
                    far.ended = true;
                }
                if let Some(input) = far_ended(&end, self.bridged) {
                    self.input(input);
                }
            }
            LegEvent::Offer { sdp, reply } => {
                // re-INVITE from the far side (hold/unhold): answer with our side's SDP.
                let Some(far) = self.far.as_mut() else { return };
                let answer = far_reoffer(
                    sdp.as_deref(),
                    &self.shared.validated.codecs,
                    &mut far.local,
                );
                let started = far.media;
                let body = answer.as_ref().map(|n| n.answer.clone());
                if let (Some(n), true) = (&answer, started) {
                    self.media_cmd(MediaCommand::UpdateFar {
                        remote: n.remote,
                        hold: holds(n),
                    });
                }
                tokio::spawn(async move {
                    match body {
                        Some(b) => reply
                            .respond(
                                200,
                                vec![("Content-Type".into(), "application/sdp".into())],
                                Some(b.into_bytes()),
                            )
                            .await
                            .ok(),
                        None => reply.respond(488, vec![], None).await.ok(),
                    }
                });
            }
            LegEvent::Info {
                reply,
                content_type,
                body,
            } => {
                if let Ok(d) = crate::sip::dtmf_info::parse_info_dtmf(&content_type, &body) {
                    if self.media_started {
                        self.media_cmd(MediaCommand::SendDtmf {
                            digits: d.digit.to_string(),
                            duration_ms: d.duration_ms.unwrap_or(100),
                        });
                    }
                }
                tokio::spawn(async move { reply.respond(200, vec![], None).await.ok() });
            }
            LegEvent::Notify { reply, .. } => {
                tokio::spawn(async move { reply.respond(200, vec![], None).await.ok() });
            }
            LegEvent::Confirmed { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::phone::{parse_e164, ParseOptions};

    fn local() -> LocalMedia {
        LocalMedia {
            addr: "192.0.2.1".parse().unwrap(),
            port: 30000,
            session_id: 9,
            version: 1,
        }
    }

    fn params<'a>(
        target: &'a Target,
        caller_id: Option<&'a str>,
        caller_uri: &'a str,
    ) -> BridgeParams<'a> {
        BridgeParams {
            target,
            trunk: "10.1.1.1:5060",
            caller_id,
            caller_uri,
            called_uri: "sip:bot@192.0.2.1",
            advertised_ip: "192.0.2.1".parse().unwrap(),
            credential: Some(("u".into(), "p".into())),
        }
    }

    #[test]
    fn the_far_invite_goes_to_the_trunk_with_diversion_and_our_offer() {
        let n: Target = parse_e164("+3225551212", &ParseOptions::default())
            .unwrap()
            .into();
        let req = bridge_invite(
            &params(&n, None, "sip:alice@10.0.0.9"),
            &[Codec::Pcma],
            &local(),
        );
        assert_eq!(req.target, "sip:+3225551212@10.1.1.1:5060");
        assert_eq!(
            req.from, "sip:alice@10.0.0.9",
            "the caller's identity by default"
        );
        assert_eq!(
            req.headers,
            vec![(
                "Diversion".to_string(),
                "<sip:bot@192.0.2.1>;reason=unconditional".to_string()
            )]
        );
        assert!(
            req.sdp.contains("m=audio 30000 RTP/AVP 8 101"),
            "{}",
            req.sdp
        );
        assert_eq!(req.credential, Some(("u".into(), "p".into())));
    }

    #[test]
    fn an_offload_invites_its_uri_with_the_context_headers() {
        let t = Target {
            dest: super::super::forward::Dest::Uri("sip:agents@127.0.0.1:5080".into()),
            headers: vec![("X-Voxgate-Call-Id".into(), "c1".into())],
        };
        let req = bridge_invite(&params(&t, None, "sip:alice@x"), &[Codec::Pcmu], &local());
        assert_eq!(req.target, "sip:agents@127.0.0.1:5080");
        assert_eq!(
            req.headers[1],
            ("X-Voxgate-Call-Id".to_string(), "c1".to_string())
        );
    }

    #[test]
    fn the_far_caller_id_is_configured_or_the_caller_or_anonymous() {
        let n: Target = parse_e164("+3225551212", &ParseOptions::default())
            .unwrap()
            .into();
        let with_id = bridge_invite(
            &params(&n, Some("+3220000000"), "sip:alice@x"),
            &[Codec::Pcmu],
            &local(),
        );
        assert_eq!(with_id.from, "sip:+3220000000@192.0.2.1");
        let anonymous = bridge_invite(&params(&n, None, ""), &[Codec::Pcmu], &local());
        assert_eq!(anonymous.from, "sip:anonymous@192.0.2.1");
    }

    #[test]
    fn the_far_reoffer_is_answered_or_refused() {
        let mut l = local();
        let offer = "v=0\r\no=- 1 2 IN IP4 10.1.1.2\r\ns=-\r\nc=IN IP4 10.1.1.2\r\nt=0 0\r\nm=audio 5000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na=sendonly\r\n";
        let n = far_reoffer(Some(offer), &[Codec::Pcmu], &mut l).expect("answer");
        assert!(holds(&n), "the far side put us on hold");
        assert_eq!(l.version, 2);
        assert!(far_reoffer(Some("junk"), &[Codec::Pcmu], &mut l).is_none());
        assert!(far_reoffer(None, &[Codec::Pcmu], &mut l).is_none());
    }

    #[test]
    fn far_responses_drive_the_forward() {
        assert_eq!(
            far_response(FarResponse::Progress(183)),
            (false, false, TransferInput::BridgeProgress(183))
        );
        assert_eq!(
            far_response(FarResponse::Answered),
            (true, false, TransferInput::BridgeAnswered)
        );
        assert_eq!(
            far_response(FarResponse::Rejected(486)),
            (false, true, TransferInput::BridgeFailed(486))
        );
    }

    #[test]
    fn the_far_end_hanging_up_ends_a_bridged_call_only() {
        assert_eq!(
            far_ended(&LegEnd::RemoteBye, true),
            Some(Input::Hangup(EndReason::FarEndHangup))
        );
        assert_eq!(
            far_ended(&LegEnd::RemoteBye, false),
            None,
            "still ringing: the forward decides"
        );
        assert_eq!(far_ended(&LegEnd::LocalHangup, true), None, "we ended it");
    }
}
