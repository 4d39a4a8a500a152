//! The caller's media: sending what the RTP session has due (and feeding the recorder with
//! the pair of frames for each slot), and fanning out what it received: caller audio to the
//! bot, the far leg and the recorder; DTMF and playback marks to the flow.
//!
//! This is the per-packet path; it is kept exactly as it was before the split (the media
//! plane is being replaced by media workers separately).

use super::Call;
use crate::call::shared::Shared;
use crate::call::state::{EndReason, Input};
use crate::flow::FlowEvent;
use crate::media::rtp::{RtpConfig, RtpEvent};
use crate::sip::sdp::Negotiated;
use std::time::{Duration, Instant};
use tracing::{debug, info, warn};

/// RTP settings for one leg, from what SDP negotiated and the `[rtp]` config.
pub(super) fn rtp_config(shared: &Shared, n: &Negotiated) -> RtpConfig {
    let mut cfg = RtpConfig::new(n.codec, n.payload_type, n.telephone_event_pt);
    cfg.remote = n.remote;
    cfg.inactivity_timeout = Duration::from_secs(shared.config.rtp.inactivity_timeout_s);
    cfg.jitter_depth = Duration::from_millis(shared.config.rtp.jitter_ms);
    cfg.seed = rand::random();
    cfg
}

impl Call {
    /// Drains the RTP session: packets to send, audio for the recorder, DTMF and marks for the flow.
    pub(super) fn pump_rtp(&mut self, now: Instant) {
        let Some(rtp) = self.rtp.as_mut() else {
            return;
        };
        while let Some(t) = rtp.poll_transmit(now) {
            let sock = if t.rtcp {
                &self.rtcp_sock
            } else {
                &self.rtp_sock
            };
            if let Err(e) = sock.try_send_to(&t.payload, t.dest) {
                debug!(dest = %t.dest, error = %e, "RTP send failed");
            }
            if let (Some(rec), Some(sent)) = (self.recordings.active_mut(), t.audio.as_deref()) {
                let left = self.caller_frames.pop(self.rec_slot);
                rec.push(now, left.as_deref(), Some(sent));
            }
            if t.audio.is_some() {
                self.rec_slot += 1;
            }
        }
        let mut flow_events = Vec::new();
        while let Some(ev) = rtp.poll_event() {
            match ev {
                RtpEvent::Audio {
                    samples, rtp_ts, ..
                } => {
                    if !self.flow_closed {
                        self.flow.caller_audio(&samples);
                    }
                    if let Some(far_rtp) = self.far.as_mut().and_then(|f| f.rtp.as_mut()) {
                        if self.bridged {
                            far_rtp.queue_audio(&samples);
                        }
                    }
                    if self.recordings.is_recording() {
                        self.caller_frames.push(rtp_ts, samples, self.rec_slot);
                    }
                }
                RtpEvent::Dtmf(d) => {
                    info!(digit = %d.digit, via = "rfc4733", duration_ms = d.duration_ms, "DTMF received");
                    if self.bridged {
                        if let Some(far_rtp) = self.far.as_mut().and_then(|f| f.rtp.as_mut()) {
                            far_rtp.send_dtmf(d.digit, d.duration_ms.max(40)).ok();
                        }
                    }
                    flow_events.push(FlowEvent::Dtmf {
                        digit: d.digit,
                        duration_ms: d.duration_ms,
                    });
                }
                RtpEvent::MarkPlayed(id) => flow_events.push(FlowEvent::PlaybackFinished {
                    id,
                    interrupted: false,
                }),
                RtpEvent::MarkCleared(id) => flow_events.push(FlowEvent::PlaybackFinished {
                    id,
                    interrupted: true,
                }),
                RtpEvent::RemoteAddrChanged(addr) => {
                    info!(%addr, "RTP peer address latched");
                }
                RtpEvent::Inactive { since } => {
                    warn!(
                        silent_s = since.as_secs(),
                        "no RTP from the caller: ending the call"
                    );
                    flow_events.clear();
                    self.input(Input::Hangup(EndReason::RtpTimeout));
                    return;
                }
            }
        }
        for ev in flow_events {
            self.flow_event(ev);
        }
    }

    /// Queues audio for the caller followed by the mark `id`, or reports that it cannot play.
    pub(super) fn queue_audio(&mut self, id: u64, samples: &[i16]) {
        match self.rtp.as_mut() {
            Some(rtp) => {
                rtp.queue_audio(samples);
                rtp.queue_mark(id);
            }
            None => self.flow_event(FlowEvent::PlaybackFailed {
                id,
                reason: "no media session".into(),
            }),
        }
    }
}
