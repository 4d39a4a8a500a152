//! The task that runs one call, from INVITE to the CDR: a thin tokio shell that owns the
//! call's sockets, channels and clock, and feeds the IO-free parts that decide.
//!
//! Split by job (each file holds its job's IO-free decisions with their tests, and the few
//! lines of shell that carry them out):
//! * [`setup`]: admission, SDP offer/answer, when to ring and answer, media start.
//! * [`caller_leg`]: requests inside the caller's dialog (ACK, INFO, re-INVITE/UPDATE,
//!   NOTIFY, BYE/CANCEL).
//! * [`media`]: the call's end of the media plane: commands to its media core (on a media
//!   worker), the core's events, the caller-audio tap for an external bot.
//! * [`actions`]: the one dispatch over `FlowAction`, delegating to the jobs below; the
//!   plug-in point for step executors.
//! * [`recording`]: start/stop and the recorder's events.
//! * [`forward`]: forward-call validation and policy, and the forward's outcome.
//! * [`far_leg`]: the B2BUA leg of a bridged forward ("bridge" means only this here).
//! * [`cdr`]: the call detail record from the call's facts.
//! * [`close`]: close conversation (recordings, CDR, then BYE) and the end of the call.
//!
//! Async results (TTS, the REFER transaction, integration steps, speech) come back through
//! the call's [`Inbox`](crate::call::inbox::Inbox).

mod actions;
mod caller_leg;
mod cdr;
mod close;
mod far_leg;
mod forward;
mod media;
mod offload;
mod recording;
mod setup;
mod wakeups;

use super::inbox::{self, Delivery, Inbox, InboxSender, Outstanding};
use super::registry::Control;
use super::shared::Shared;
use super::state::{CallState, Command, Input, Phase};
use crate::flow::driver::FlowDriver;
use crate::flow::{FlowDefinition, FlowEvent};
use crate::media::core::MediaEvent;
use crate::media::plane::{MediaHandle, Tap};
use crate::media::recorder::{RecorderEvent, RecordingId};
use crate::sip::sdp::{LocalMedia, Negotiated};
use crate::sip::{CallLeg, IncomingCall, InviteInfo, LegEvent};
use chrono::Utc;
use close::Closing;
use far_leg::FarLeg;
use forward::Forward;
use recording::Recordings;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};
use wakeups::{Source, Wakeups};

/// Runs a call from INVITE to the end, then removes it from the registry.
pub async fn run(shared: Arc<Shared>, incoming: IncomingCall) {
    let call_id = incoming.info.call_id.clone();
    let span = info_span!("call", call_id = %call_id);
    async move {
        let mut call = match Call::setup(shared.clone(), incoming).await {
            Some(c) => c,
            None => return,
        };
        call.run().await;
        shared.registry.remove(&call_id);
    }
    .instrument(span)
    .await
}

struct Call {
    shared: Arc<Shared>,
    leg: CallLeg,
    info: InviteInfo,
    events: mpsc::UnboundedReceiver<LegEvent>,
    control: mpsc::UnboundedReceiver<Control>,
    state: CallState,

    // The call's media: its core runs on a media worker; `None` once the call is over.
    media: Option<MediaHandle>,
    media_events: mpsc::Receiver<MediaEvent>,
    /// The caller's RTP session has been started (answer sent with an agreed SDP).
    media_started: bool,
    /// Caller audio for an external bot (a tap on the media core).
    tap: Option<Tap>,
    local: LocalMedia,
    /// Our SDP: the answer to their offer, or our offer when the INVITE had none.
    local_sdp: String,
    negotiated: Option<Negotiated>,

    // The flow (embedded engine or external bot).
    flow: FlowDriver,
    flow_def: Arc<FlowDefinition>,
    flow_started: bool,
    flow_closed: bool,
    /// The bot's end, held by `finish` until the caller-audio tap has closed.
    deferred_end: Option<String>,
    answer_at: Option<Instant>,

    // Async results.
    inbox_tx: InboxSender,
    inbox_rx: mpsc::UnboundedReceiver<Inbox>,
    outstanding: Outstanding,
    /// The running `listen`: dropping it stops the recogniser.
    listening: Option<crate::speech::ListenHandle>,
    /// `Say` ids whose TTS is still being synthesised, and those a `StopPlayback` cut before
    /// their audio arrived (reported as interrupted instead of played).
    says_in_flight: std::collections::BTreeSet<u64>,
    says_cut: std::collections::BTreeSet<u64>,
    /// What `GET /v1/calls` shows as `paused` (the operator's pause or `pause_bot`).
    shown_paused: bool,

    // Recording.
    rec_tx: mpsc::Sender<RecorderEvent>,
    rec_rx: mpsc::Receiver<RecorderEvent>,
    recordings: Recordings<RecordingId>,

    // Forward and the bridged far leg.
    forward: Forward,
    far: Option<FarLeg>,
    far_events: Option<mpsc::UnboundedReceiver<LegEvent>>,
    /// The caller is connected to the far leg; the bot is gone.
    bridged: bool,

    // Facts for the CDR, and the end.
    started_wall: chrono::DateTime<Utc>,
    answered_wall: Option<chrono::DateTime<Utc>>,
    dtmf_count: u32,
    /// Close conversation waiting for recordings to finalize before CDR + BYE.
    closing: Option<Closing>,
    cdr_written: bool,
    /// The REFER transaction in flight, stopped when the forward moves on without it.
    refer_task: Option<tokio::task::AbortHandle>,
    /// Digits that arrived before the flow started (handed over when it starts).
    early_dtmf: Vec<FlowEvent>,
    /// Media actions of an external bot between the 200 OK and the ACK (released when media
    /// starts).
    early_media: Vec<crate::flow::FlowAction>,
    /// This call's slot under `max_calls` (released when the task ends).
    _slot: crate::sip::Reservation,
    /// An offload waiting for its webhook before the transfer starts.
    pending_offload: Option<forward::Target>,
    /// What the bot said and the caller did (`GET /v1/calls/{id}/transcript`, mail reports).
    transcript: Option<crate::integrations::transcript::SharedTranscript>,
    /// Which of the task's sources signalled (polled instead of all of them).
    wakeups: Wakeups,
}

impl Call {
    async fn run(&mut self) {
        let mut frames = Vec::with_capacity(8);
        // One timer for the task's life, moved only when a part needs an earlier wake-up or
        // once it has fired (a wake-up earlier than needed is harmless: `drive` finds
        // nothing due), instead of a new timer on every wake-up.
        let mut timer = Box::pin(tokio::time::sleep_until(Instant::now().into()));
        let mut timer_at: Option<Instant> = None;
        loop {
            let now = Instant::now();
            self.drive(now);
            if self.state.is_ended() {
                break;
            }
            let deadline = self.next_deadline(now);
            if timer_at.is_none_or(|at| deadline < at || at <= now) {
                timer.as_mut().reset(deadline.into());
                timer_at = Some(deadline);
                self.wakeups.mark(Source::Timer);
            }
            let woke =
                std::future::poll_fn(|cx| self.poll_sources(cx, timer.as_mut(), &mut frames)).await;
            // Whatever happened may have queued frames for the bot or changed its
            // connection: its socket is polled on the next round.
            self.wakeups.mark(Source::Flow);
            match woke {
                Woke::Leg(Some(ev)) => self.on_leg_event(ev).await,
                Woke::Leg(None) => {
                    self.input(Input::DialogFailed("SIP stack dropped the dialog".into()))
                }
                Woke::Media(ev) => self.on_media_event(ev),
                Woke::Tap(n) => self.on_caller_audio(&mut frames, n),
                Woke::Far(Some(ev)) => self.on_far_event(ev),
                Woke::Far(None) => self.far_events = None,
                Woke::Control(c) => self.on_control(c),
                Woke::Inbox(m) => self.on_inbox(m),
                Woke::Recorder(e) => self.on_recorder_event(e),
                Woke::Io(io) => self.flow.handle_io(io, Instant::now()),
                Woke::Timer => timer_at = None,
            }
        }
        self.finish_tap().await;
        self.after_end().await;
        // Written with the CDR, once late recording events are in.
        if let Some(i) = self.shared.integrations.as_ref() {
            if let Some(t) = i.transcripts.finish(&self.info.call_id) {
                self.shared.store.submit(crate::store::Record::Transcript {
                    call_id: self.info.call_id.clone(),
                    transcript: (*t).clone(),
                });
            }
        }
    }

    /// Polls the sources that signalled since the last look (see [`wakeups`]), round-robin;
    /// the first that has something wins.
    fn poll_sources(
        &mut self,
        cx: &mut std::task::Context<'_>,
        mut timer: std::pin::Pin<&mut tokio::time::Sleep>,
        frames: &mut Vec<crate::media::core::AudioFrame>,
    ) -> Poll<Woke> {
        use std::future::Future;
        let mut round = self.wakeups.begin(cx);
        while let Some(source) = round.next() {
            let mut cx = self.wakeups.context(source);
            let cx = &mut cx;
            let woke = match source {
                Source::Leg => self.events.poll_recv(cx).map(Woke::Leg),
                Source::Media => match self.media_events.poll_recv(cx) {
                    Poll::Ready(Some(ev)) => Poll::Ready(Woke::Media(ev)),
                    // Closed: it never signals again.
                    _ => Poll::Pending,
                },
                Source::Tap => match self.tap.as_mut() {
                    Some(t) => t.frames.poll_recv_many(cx, frames, 8).map(Woke::Tap),
                    None => Poll::Pending,
                },
                Source::Far => match self.far_events.as_mut() {
                    Some(rx) => rx.poll_recv(cx).map(Woke::Far),
                    None => Poll::Pending,
                },
                Source::Control => match self.control.poll_recv(cx) {
                    Poll::Ready(Some(c)) => Poll::Ready(Woke::Control(c)),
                    _ => Poll::Pending,
                },
                Source::Inbox => match self.inbox_rx.poll_recv(cx) {
                    Poll::Ready(Some(m)) => Poll::Ready(Woke::Inbox(m)),
                    _ => Poll::Pending,
                },
                Source::Recorder => match self.rec_rx.poll_recv(cx) {
                    Poll::Ready(Some(e)) => Poll::Ready(Woke::Recorder(e)),
                    _ => Poll::Pending,
                },
                Source::Flow => self.flow.poll_io(cx).map(Woke::Io),
                Source::Timer => timer.as_mut().poll(cx).map(|()| Woke::Timer),
            };
            if woke.is_ready() {
                self.wakeups.end(source, round);
                return woke;
            }
        }
        Poll::Pending
    }

    /// Adds to the call's transcript (IO-free; the lock is the API's, held for microseconds).
    fn transcribe(&self, f: impl FnOnce(&mut crate::integrations::Transcript)) {
        if let Some(t) = self.transcript.as_ref() {
            f(&mut t.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// When the task must wake at the latest: the earliest timer of any part, within 1 s.
    fn next_deadline(&self, now: Instant) -> Instant {
        let flow = if self.flow_started {
            self.flow.poll_timeout()
        } else {
            None
        };
        earliest(
            now,
            [
                self.answer_at
                    .filter(|_| self.state.phase() == Phase::Offered),
                self.state.ack_deadline(),
                self.closing.as_ref().map(|c| c.deadline()),
                self.forward.leave_at(),
                self.forward.poll_timeout(),
                flow,
            ],
        )
    }

    /// Runs every state machine up to `now` and carries out what they ask for.
    fn drive(&mut self, now: Instant) {
        let timed_out = self.state.handle_timeout(now);
        if !timed_out.is_empty() {
            warn!("no ACK for our 2xx and the SIP stack did not end the dialog: BYE");
            for cmd in close::bye_last(timed_out) {
                self.command(cmd, now);
            }
        }
        if self.forward.take_leave(now) {
            self.input(Input::Hangup(super::state::EndReason::Transferred));
        }
        if let Some(c) = self.closing.take() {
            if c.due(now, self.recordings.unfinished()) {
                self.finish_close(c);
            } else {
                self.closing = Some(c);
            }
        }
        if self.state.phase() == Phase::Offered {
            if let Some(at) = self.answer_at {
                if now >= at {
                    self.answer_at = None;
                    self.input(Input::Answer);
                }
            }
        }
        let out = self.forward.handle_timeout(now);
        if !out.is_empty() {
            // The forward gave up waiting (for the REFER's answer or its NOTIFY): whatever
            // comes next (bridge, back to the bot), the REFER is no longer retransmitted.
            self.abandon_refer();
        }
        self.transfer_outputs(out, now);
        if self.flow_started && !self.flow_closed {
            self.flow.handle_timeout(now);
        }
        self.pump_flow(now);
    }

    /// Feeds the call lifecycle and carries out its commands (the CDR before the BYE).
    fn input(&mut self, input: Input) {
        let now = Instant::now();
        debug!(?input, phase = ?self.state.phase(), "call input");
        let cmds = close::bye_last(self.state.handle(input, now));
        for cmd in cmds {
            self.command(cmd, now);
        }
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::SendAnswer => self.send_answer(),
            Command::SendReject(code) => {
                self.leg.reject(code, None).ok();
                info!(status = code, "INVITE answered with a failure");
            }
            Command::StartMedia => {
                // At the ACK. Without an offer in the INVITE, the ACK's answer already
                // started media (`accept_ack_answer`).
                if !self.media_started {
                    if let Some(n) = self.negotiated.clone() {
                        self.start_media(&n, now);
                    }
                }
            }
            Command::SendBye => {
                let leg = self.leg.clone();
                // Shutdown waits for this BYE (and its retransmissions) to finish.
                let in_flight = self.shared.registry.hangup_started();
                tokio::spawn(
                    async move {
                        let _in_flight = in_flight;
                        match leg.bye().await {
                            Ok(()) => info!("BYE sent and answered"),
                            Err(e) => warn!(error = %e, "BYE failed"),
                        }
                    }
                    .in_current_span(),
                );
            }
            Command::Finish(reason) => self.finish(reason, now),
        }
    }

    /// Hands an event to the flow, unless it has not started or is already closed.
    fn flow_event(&mut self, ev: FlowEvent) {
        if let FlowEvent::Dtmf { .. } = ev {
            self.dtmf_count += 1;
        }
        let now = Instant::now();
        self.transcribe(|t| crate::integrations::transcript::record_event(t, now, &ev));
        if self.flow_started && !self.flow_closed {
            self.flow.handle_event(ev, Instant::now(), Utc::now());
        } else if !self.flow_closed && matches!(ev, FlowEvent::Dtmf { .. }) {
            // A digit typed between our 200 and the caller's ACK (INFO) waits for the flow,
            // which starts at the ACK.
            self.early_dtmf.push(ev);
        }
    }

    fn on_control(&mut self, c: Control) {
        info!(?c, "control");
        match c {
            Control::Pause => {
                self.shown_paused = true;
                self.set_summary(|s| s.paused = true);
                self.flow_event(FlowEvent::Paused);
            }
            Control::Resume => {
                self.shown_paused = false;
                self.set_summary(|s| s.paused = false);
                self.flow_event(FlowEvent::Resumed);
            }
            Control::Hangup => self.input(Input::Hangup(super::state::EndReason::Shutdown)),
            Control::OperatorHangup => self.input(Input::Hangup(super::state::EndReason::Operator)),
        }
    }

    fn on_inbox(&mut self, msg: Inbox) {
        let delivery = inbox::route(msg, &mut self.outstanding);
        let delivery = cut_say(delivery, &mut self.says_in_flight, &mut self.says_cut);
        match delivery {
            Delivery::Audio { id, samples } => self.queue_pcm(id, samples),
            Delivery::Flow(ev) => {
                if let FlowEvent::PlaybackFailed { reason, .. } = &ev {
                    warn!(%reason, "say failed");
                }
                if let FlowEvent::Speech { id, outcome } = &ev {
                    self.speech_done(*id, outcome);
                }
                self.flow_event(ev);
            }
            Delivery::Transfer(input) => self.transfer_input(input),
            Delivery::Drop(why) => debug!(why, "inbox message dropped"),
            Delivery::Offload => self.offload_notified(),
        }
    }

    /// Changes this call's summary in the registry (`GET /v1/calls`).
    fn set_summary(&self, f: impl FnOnce(&mut super::registry::CallSummary)) {
        self.shared.registry.update(&self.info.call_id, f);
    }
}

/// The earliest of `timers`, but no later than 1 s from `now` and never before it.
/// TTS that arrives for a `Say` a `StopPlayback` already cut is reported as interrupted and
/// never queued (a key during synthesis must not let the audio play later, over the next
/// prompt). IO-free.
fn cut_say(
    delivery: Delivery,
    in_flight: &mut std::collections::BTreeSet<u64>,
    cut: &mut std::collections::BTreeSet<u64>,
) -> Delivery {
    let id = match &delivery {
        Delivery::Audio { id, .. } => *id,
        Delivery::Flow(FlowEvent::PlaybackFailed { id, .. }) => *id,
        _ => return delivery,
    };
    in_flight.remove(&id);
    if cut.remove(&id) {
        return Delivery::Flow(FlowEvent::PlaybackFinished {
            id,
            interrupted: true,
        });
    }
    delivery
}

fn earliest<const N: usize>(now: Instant, timers: [Option<Instant>; N]) -> Instant {
    let cap = now + Duration::from_secs(1);
    timers
        .into_iter()
        .flatten()
        .fold(cap, |d, t| d.min(t))
        .max(now)
}

/// What woke the call task.
enum Woke {
    /// SIP: an event of the caller's dialog, or None once the stack has dropped it.
    Leg(Option<LegEvent>),
    Media(MediaEvent),
    /// Caller audio from the tap: this many frames (at most 8); 0 once the tap has closed.
    Tap(usize),
    /// The far leg: an event, or None once its dialog is gone.
    Far(Option<LegEvent>),
    Control(Control),
    Inbox(Inbox),
    Recorder(RecorderEvent),
    /// The bot's connection.
    Io(crate::flow::websocket::ConnEvent),
    Timer,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_wakes_for_the_earliest_timer_within_a_second() {
        let b = Instant::now();
        let ms = |n| b + Duration::from_millis(n);
        assert_eq!(earliest(b, [None, None]), ms(1000));
        assert_eq!(earliest(b, [Some(ms(300)), Some(ms(20)), None]), ms(20));
        assert_eq!(earliest(b, [Some(ms(5000))]), ms(1000));
        // A timer already past wakes at once, never in the past.
        assert_eq!(earliest(ms(50), [Some(ms(10))]), ms(50));
    }

    #[test]
    fn tts_cut_during_synthesis_never_plays() {
        use std::collections::BTreeSet;
        let audio = |id| Delivery::Audio {
            id,
            samples: std::sync::Arc::from(vec![0i16; 160]),
        };
        let mut in_flight: BTreeSet<u64> = [1, 2].into();
        let mut cut = BTreeSet::new();
        // A key (StopPlayback) while both are being synthesised cuts both.
        cut.append(&mut in_flight);
        assert_eq!(
            cut_say(audio(1), &mut in_flight, &mut cut),
            Delivery::Flow(FlowEvent::PlaybackFinished {
                id: 1,
                interrupted: true
            })
        );
        let failed = Delivery::Flow(FlowEvent::PlaybackFailed {
            id: 2,
            reason: "tts".into(),
        });
        assert!(matches!(
            cut_say(failed, &mut in_flight, &mut cut),
            Delivery::Flow(FlowEvent::PlaybackFinished {
                id: 2,
                interrupted: true
            })
        ));
        // A later Say, not cut, plays.
        in_flight.insert(3);
        assert!(matches!(
            cut_say(audio(3), &mut in_flight, &mut cut),
            Delivery::Audio { id: 3, .. }
        ));
        assert!(in_flight.is_empty() && cut.is_empty());
    }
}
