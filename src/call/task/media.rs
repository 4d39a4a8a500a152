//! The call's end of the media plane. The caller's (and far leg's) RTP, playback, the
//! recording feed and the bridge relay run in the call's `MediaCore` on a media worker;
//! this task only sends it commands and hears its events (DTMF, playback marks,
//! inactivity), so it is never woken per packet. An external bot and a running `listen`
//! (speech recognition) get the caller's audio through a tap (a bounded channel of 20 ms frames), read here in batches.

use super::Call;
use crate::call::shared::Shared;
use crate::call::state::{EndReason, Input};
use crate::flow::FlowEvent;
use crate::media::core::{AudioFrame, Leg, MediaCommand, MediaEvent};
use crate::media::playback::Audio;
use crate::media::rtp::RtpConfig;
use crate::sip::sdp::Negotiated;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// Caller audio an external bot may have waiting before frames are dropped: 1 s.
pub(super) const BOT_TAP_FRAMES: usize = 50;

/// RTP settings for one leg, from what SDP negotiated and the `[rtp]` config.
pub(super) fn rtp_config(shared: &Shared, n: &Negotiated) -> RtpConfig {
    let mut cfg = RtpConfig::new(n.codec, n.payload_type, n.telephone_event_pt);
    cfg.remote = n.remote;
    cfg.inactivity_timeout = Duration::from_secs(shared.config.rtp.inactivity_timeout_s);
    cfg.jitter_depth = Duration::from_millis(shared.config.rtp.jitter_ms);
    cfg.wall_clock_at_start = Some(std::time::SystemTime::now());
    cfg.seed = rand::random();
    cfg
}

/// What a media event means to the flow (and whether it ends the call).
pub(super) fn flow_event(ev: &MediaEvent, bridged: bool) -> MediaOutcome {
    match ev {
        MediaEvent::Dtmf { digit, duration_ms } => MediaOutcome::Flow(FlowEvent::Dtmf {
            digit: *digit,
            duration_ms: *duration_ms,
        }),
        MediaEvent::MarkPlayed(id) => MediaOutcome::Flow(FlowEvent::PlaybackFinished {
            id: *id,
            interrupted: false,
        }),
        MediaEvent::MarkCleared(id) => MediaOutcome::Flow(FlowEvent::PlaybackFinished {
            id: *id,
            interrupted: true,
        }),
        MediaEvent::Inactive {
            leg: Leg::Caller, ..
        } => MediaOutcome::Hangup,
        MediaEvent::Inactive { leg: Leg::Far, .. } if bridged => MediaOutcome::Hangup,
        _ => MediaOutcome::Nothing,
    }
}

/// See [`flow_event`].
#[derive(Debug, Clone, PartialEq)]
pub(super) enum MediaOutcome {
    Flow(FlowEvent),
    Hangup,
    Nothing,
}

impl Call {
    /// Sends a command to the media core; false (logged) when it could not be queued.
    pub(super) fn media_cmd(&mut self, cmd: MediaCommand) -> bool {
        let Some(media) = self.media.as_ref() else {
            return false;
        };
        match media.send(cmd) {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "media command dropped");
                false
            }
        }
    }

    /// What the media core reported.
    pub(super) fn on_media_event(&mut self, ev: MediaEvent) {
        match &ev {
            MediaEvent::Dtmf { digit, duration_ms } => {
                info!(digit = %digit, via = "rfc4733", duration_ms, "DTMF received");
            }
            MediaEvent::Latched { leg, addr } => info!(?leg, %addr, "RTP peer address latched"),
            MediaEvent::Inactive { leg, since } => {
                info!(
                    ?leg,
                    silent_s = since.as_secs(),
                    "no RTP received on the leg"
                )
            }
            MediaEvent::RecordingFed {
                id,
                slots,
                overflow_frames,
            } => debug!(recording = %id, slots, overflow_frames, "recording fed"),
            MediaEvent::MarkPlayed(_) | MediaEvent::MarkCleared(_) => {}
        }
        match flow_event(&ev, self.bridged) {
            MediaOutcome::Flow(e) => self.flow_event(e),
            MediaOutcome::Hangup => {
                match ev {
                    MediaEvent::Inactive { leg: Leg::Far, .. } => {
                        warn!("no RTP from the far leg: ending the bridged call")
                    }
                    _ => warn!("no RTP from the caller: ending the call"),
                }
                self.input(Input::Hangup(EndReason::RtpTimeout));
            }
            MediaOutcome::Nothing => {}
        }
    }

    /// Caller audio from the tap, for an external bot.
    pub(super) fn on_caller_audio(&mut self, frames: &mut Vec<AudioFrame>, n: usize) {
        if n == 0 {
            // The tap was closed by the media side (the call is over).
            self.tap = None;
        }
        if !self.flow_closed {
            for f in frames.iter() {
                self.flow.caller_audio(&f.samples);
            }
        }
        if let Some(listen) = &self.listening {
            for f in frames.iter() {
                // Never blocks: a full queue drops the frame and counts it.
                listen.push(&f.samples);
            }
        }
        frames.clear();
    }

    /// Queues shared audio for the caller followed by the mark `id`, or reports that it
    /// cannot play.
    pub(super) fn queue_audio(&mut self, id: u64, audio: Audio) {
        if !self.media_started {
            self.flow_event(FlowEvent::PlaybackFailed {
                id,
                reason: "no media session".into(),
            });
            return;
        }
        if !(self.media_cmd(MediaCommand::Play(audio)) && self.media_cmd(MediaCommand::Mark(id))) {
            self.flow_event(FlowEvent::PlaybackFailed {
                id,
                reason: "media worker busy".into(),
            });
        }
    }

    /// Queues linear audio (TTS) shared, not copied.
    pub(super) fn queue_pcm(&mut self, id: u64, samples: Arc<[i16]>) {
        self.queue_audio(id, Audio::Pcm(samples));
    }

    /// Starts the caller's RTP session on the media core and, for an external bot, the
    /// caller-audio tap.
    pub(super) fn start_caller_media(&mut self, n: &Negotiated) {
        let config = Box::new(rtp_config(&self.shared, n));
        let hold = !n.direction.sends();
        self.media_started = self.media_cmd(MediaCommand::StartCaller { config, hold });
        if self.flow.is_external() || self.listening.is_some() {
            self.open_tap();
        }
    }

    /// Opens the caller-audio tap (for an external bot, or a running `listen`) unless it is
    /// open already.
    pub(super) fn open_tap(&mut self) {
        if self.tap.is_some() {
            return;
        }
        if let Some(media) = self.media.as_mut() {
            match media.open_tap(BOT_TAP_FRAMES) {
                Ok(t) => {
                    self.tap = Some(t);
                    self.wakeups.mark(super::wakeups::Source::Tap);
                }
                Err(e) => warn!(error = %e, "no caller-audio tap"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_events_map_to_flow_events_and_hangups() {
        assert_eq!(
            flow_event(
                &MediaEvent::Dtmf {
                    digit: '5',
                    duration_ms: 120
                },
                false
            ),
            MediaOutcome::Flow(FlowEvent::Dtmf {
                digit: '5',
                duration_ms: 120
            })
        );
        assert_eq!(
            flow_event(&MediaEvent::MarkCleared(3), false),
            MediaOutcome::Flow(FlowEvent::PlaybackFinished {
                id: 3,
                interrupted: true
            })
        );
        let quiet = |leg| MediaEvent::Inactive {
            leg,
            since: Duration::from_secs(30),
        };
        assert_eq!(flow_event(&quiet(Leg::Caller), false), MediaOutcome::Hangup);
        // A silent far leg matters only once the caller is connected to it.
        assert_eq!(flow_event(&quiet(Leg::Far), false), MediaOutcome::Nothing);
        assert_eq!(flow_event(&quiet(Leg::Far), true), MediaOutcome::Hangup);
    }
}
