//! The task that runs one call: the thin async shell around the IO-free parts (call state,
//! RTP session, flow machine, recorder). It owns the call's sockets and clock; every decision
//! is made by the state machines it feeds.

use super::gateway::Shared;
use super::registry::{CallSummary, Control};
use super::state::{CallState, Command, EndReason, Input, Phase};
use super::transfer::{Transfer, TransferInput, TransferOutput, TransferTimers};
use crate::flow::driver::FlowDriver;
use crate::flow::websocket::WsBridge;
use crate::flow::{FlowAction, FlowDefinition, FlowEvent, FlowMachine, SessionInfo};
use crate::media::recorder::align::CallerAligner;
use crate::media::recorder::{ActiveRecording, RecorderEvent, RecordingMeta};
use crate::media::rtp::{RtpConfig, RtpEvent, RtpSession};
use crate::phone::{parse_e164, ParseOptions, E164};
use crate::sip::sdp::{self, Direction, LocalMedia, Negotiated, SessionDescription};
use crate::sip::sipfrag::SipFrag;
use crate::sip::{CallLeg, IncomingCall, LegEnd, LegEvent, OutgoingInvite};
use chrono::Utc;
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

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

/// The B2BUA leg towards the trunk.
struct FarLeg {
    leg: CallLeg,
    rtp: Option<RtpSession>,
    local: LocalMedia,
    answered: bool,
    ended: bool,
}

/// A prompt or TTS result arriving from a background task.
/// How long after the final NOTIFY of a successful REFER voxgate sends its BYE.
const LEAVE_AFTER_REFER: Duration = Duration::from_millis(50);

/// A `Synth` id that carries a REFER's final status instead of audio.
const REFER_RESULT: u64 = u64::MAX;

struct Synth {
    id: u64,
    result: Result<Arc<[i16]>, String>,
}

struct Call {
    shared: Arc<Shared>,
    leg: CallLeg,
    info: crate::sip::InviteInfo,
    events: mpsc::UnboundedReceiver<LegEvent>,
    control: mpsc::UnboundedReceiver<Control>,
    state: CallState,
    rtp_sock: UdpSocket,
    rtcp_sock: UdpSocket,
    local: LocalMedia,
    /// Our SDP: the answer to their offer, or our offer when the INVITE had none.
    local_sdp: String,
    negotiated: Option<Negotiated>,
    rtp: Option<RtpSession>,
    flow: FlowDriver,
    flow_def: Arc<FlowDefinition>,
    flow_started: bool,
    flow_closed: bool,
    answer_at: Option<Instant>,
    synth_tx: mpsc::UnboundedSender<Synth>,
    synth_rx: mpsc::UnboundedReceiver<Synth>,
    rec_tx: mpsc::UnboundedSender<RecorderEvent>,
    rec_rx: mpsc::UnboundedReceiver<RecorderEvent>,
    recording: Option<ActiveRecording>,
    recording_ids: Vec<String>,
    /// Recordings started on this call that have not reported Ready/Failed yet.
    unfinished_recordings: usize,
    /// Caller audio released by the jitter buffer, waiting for the next recording slot.
    caller_frames: CallerAligner,
    /// Recording slots so far: one per audio frame sent to the caller.
    rec_slot: u64,
    transfer_outcome: Option<String>,
    /// The forward in progress, if any.
    transfer: Option<(Transfer, E164)>,
    /// The bridged leg (forward in bridge mode): its SIP leg, events, media.
    far: Option<FarLeg>,
    far_events: Option<mpsc::UnboundedReceiver<LegEvent>>,
    far_sock: Option<UdpSocket>,
    far_rtcp: Option<UdpSocket>,
    /// The caller is connected to the far leg; the bot is gone.
    bridged: bool,
    started_wall: chrono::DateTime<Utc>,
    answered_wall: Option<chrono::DateTime<Utc>>,
    dtmf_count: u32,
    /// After a successful REFER: when to send our BYE.
    leave_at: Option<Instant>,
    /// Close conversation waiting for recordings to finalize before CDR + BYE.
    closing: Option<Closing>,
    cdr_written: bool,
}

struct Closing {
    deadline: Instant,
    cleared_session: bool,
    had_recording: bool,
}

impl Call {
    /// Registers the call, binds its media sockets and negotiates SDP. Returns None when the
    /// INVITE was refused (the response has been sent).
    async fn setup(shared: Arc<Shared>, incoming: IncomingCall) -> Option<Call> {
        let IncomingCall { leg, info, events } = incoming;
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
        let refuse = |code: u16, why: String| {
            warn!(status = code, reason = %why, "INVITE refused");
            leg.reject(code, Some(why)).ok();
            shared.registry.remove(&info.call_id);
            metrics::counter!("voxgate_calls_total", "outcome" => "refused").increment(1);
        };
        let (rtp_sock, rtcp_sock) = match shared.ports.allocate() {
            Ok(p) => p,
            Err(e) => {
                refuse(503, e.to_string());
                return None;
            }
        };
        let port = rtp_sock.local_addr().map(|a| a.port()).unwrap_or(0);
        let local = LocalMedia {
            addr: shared.advertised_ip,
            port,
            session_id: rand::random::<u32>() as u64,
            version: 1,
        };
        let codecs = shared.validated.codecs.clone();
        let (local_sdp, negotiated) = match &info.sdp {
            Some(text) => {
                let offer = match SessionDescription::parse(text) {
                    Ok(o) => o,
                    Err(e) => {
                        refuse(400, format!("bad SDP: {e}"));
                        return None;
                    }
                };
                match sdp::negotiate_answer(&offer, &codecs, &local) {
                    Ok(n) => (n.answer.clone(), Some(n)),
                    Err(e) => {
                        refuse(488, format!("SDP: {e}"));
                        return None;
                    }
                }
            }
            // No offer: ours goes in the 200, their answer comes in the ACK.
            None => (
                sdp::build_offer(&codecs, 101, &local, Direction::SendRecv),
                None,
            ),
        };
        let def = shared.flow();
        let session_info = SessionInfo {
            call_id: info.call_id.clone(),
            from: info.from_user.clone(),
            to: info.to_user.clone(),
            headers: info.headers.clone(),
            codec: negotiated
                .as_ref()
                .map(|n| n.codec.name().to_string())
                .unwrap_or_default(),
        };
        let flow = match WsBridge::from_config(&shared.config.flow, session_info, now) {
            Some(bridge) => FlowDriver::External(Box::new(bridge)),
            None => FlowDriver::Embedded(FlowMachine::new(def.clone(), now, started_wall)),
        };
        // An external bot decides when (and whether) to answer; it is "started" from INVITE on.
        let external = flow.is_external();
        let answer_delay = def.answer_delay();
        let (synth_tx, synth_rx) = mpsc::unbounded_channel();
        let (rec_tx, rec_rx) = mpsc::unbounded_channel();
        if !answer_delay.is_zero() && !external {
            leg.ring().ok();
            info!(
                delay_ms = answer_delay.as_millis() as u64,
                "ringing before answer"
            );
        }
        Some(Call {
            shared,
            leg,
            info,
            events,
            control,
            state: CallState::new(now),
            rtp_sock,
            rtcp_sock,
            local,
            local_sdp,
            negotiated,
            rtp: None,
            flow,
            flow_def: def,
            flow_started: external,
            flow_closed: false,
            answer_at: (!external).then(|| now + answer_delay),
            synth_tx,
            synth_rx,
            rec_tx,
            rec_rx,
            recording: None,
            recording_ids: Vec::new(),
            unfinished_recordings: 0,
            caller_frames: CallerAligner::new(3),
            rec_slot: 0,
            transfer_outcome: None,
            transfer: None,
            far: None,
            far_events: None,
            far_sock: None,
            far_rtcp: None,
            bridged: false,
            started_wall,
            answered_wall: None,
            dtmf_count: 0,
            closing: None,
            leave_at: None,
            cdr_written: false,
        })
    }

    async fn run(&mut self) {
        let mut rtp_buf = vec![0u8; 2048];
        let mut rtcp_buf = vec![0u8; 2048];
        let mut far_buf = vec![0u8; 2048];
        let mut far_rtcp_buf = vec![0u8; 2048];
        loop {
            let now = Instant::now();
            self.drive(now);
            if self.state.is_ended() {
                break;
            }
            let deadline = self.next_deadline(now);
            tokio::select! {
                ev = self.events.recv() => match ev {
                    Some(ev) => self.on_leg_event(ev).await,
                    None => self.input(Input::DialogFailed("SIP stack dropped the dialog".into())),
                },
                r = self.rtp_sock.recv_from(&mut rtp_buf) => {
                    if let Ok((n, from)) = r {
                        if let Some(rtp) = self.rtp.as_mut() {
                            rtp.handle_datagram(&rtp_buf[..n], from, Instant::now());
                        }
                    }
                }
                r = self.rtcp_sock.recv_from(&mut rtcp_buf) => {
                    if let Ok((n, from)) = r {
                        if let Some(rtp) = self.rtp.as_mut() {
                            rtp.handle_rtcp(&rtcp_buf[..n], from, Instant::now());
                        }
                    }
                }
                ev = recv_leg(&mut self.far_events) => match ev {
                    Some(ev) => self.on_far_event(ev),
                    None => self.far_events = None,
                },
                r = recv_udp(&self.far_sock, &mut far_buf) => {
                    if let (Ok((n, from)), Some(far)) = (r, self.far.as_mut()) {
                        if let Some(rtp) = far.rtp.as_mut() {
                            rtp.handle_datagram(&far_buf[..n], from, Instant::now());
                        }
                    }
                }
                r = recv_udp(&self.far_rtcp, &mut far_rtcp_buf) => {
                    if let (Ok((n, from)), Some(far)) = (r, self.far.as_mut()) {
                        if let Some(rtp) = far.rtp.as_mut() {
                            rtp.handle_rtcp(&far_rtcp_buf[..n], from, Instant::now());
                        }
                    }
                }
                Some(c) = self.control.recv() => self.on_control(c),
                Some(s) = self.synth_rx.recv() => self.on_synth(s),
                Some(e) = self.rec_rx.recv() => self.on_recorder_event(e),
                io = self.flow.next_io() => self.flow.handle_io(io, Instant::now()),
                _ = tokio::time::sleep_until(deadline.into()) => {}
            }
        }
        self.after_end().await;
    }

    fn next_deadline(&self, now: Instant) -> Instant {
        let mut d = now + Duration::from_secs(1);
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                if t < d {
                    d = t;
                }
            }
        };
        if self.state.phase() == Phase::Offered {
            consider(self.answer_at);
        }
        consider(self.closing.as_ref().map(|c| c.deadline));
        consider(self.leave_at);
        consider(self.rtp.as_ref().and_then(|r| r.poll_timeout()));
        consider(self.transfer.as_ref().and_then(|(t, _)| t.poll_timeout()));
        consider(
            self.far
                .as_ref()
                .and_then(|f| f.rtp.as_ref())
                .and_then(|r| r.poll_timeout()),
        );
        if self.flow_started {
            consider(self.flow.poll_timeout());
        }
        d.max(now)
    }

    /// Runs every state machine up to `now` and carries out what they ask for.
    fn drive(&mut self, now: Instant) {
        if self.leave_at.is_some_and(|t| now >= t) {
            self.leave_at = None;
            self.input(Input::Hangup(EndReason::Transferred));
        }
        if let Some(c) = self.closing.take() {
            if self.unfinished_recordings == 0 || now >= c.deadline {
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
        if let Some(rtp) = self.rtp.as_mut() {
            rtp.handle_timeout(now);
        }
        if let Some(rtp) = self.far.as_mut().and_then(|f| f.rtp.as_mut()) {
            rtp.handle_timeout(now);
        }
        if let Some((t, _)) = self.transfer.as_mut() {
            let out = t.handle_timeout(now);
            self.transfer_outputs(out, now);
        }
        self.pump_rtp(now);
        self.pump_far(now);
        if self.flow_started && !self.flow_closed {
            self.flow.handle_timeout(now);
        }
        self.pump_flow(now);
    }

    fn input(&mut self, input: Input) {
        let now = Instant::now();
        debug!(?input, phase = ?self.state.phase(), "call input");
        // The CDR is written before the BYE goes out (close-conversation order).
        let (byes, rest): (Vec<Command>, Vec<Command>) = self
            .state
            .handle(input, now)
            .into_iter()
            .partition(|c| *c == Command::SendBye);
        for cmd in rest.into_iter().chain(byes) {
            self.command(cmd, now);
        }
    }

    fn command(&mut self, cmd: Command, now: Instant) {
        match cmd {
            Command::SendAnswer => {
                if let Err(e) = self.leg.answer(&self.local_sdp) {
                    warn!(error = %e, "could not send 200 OK");
                    self.input(Input::DialogFailed(e.to_string()));
                    return;
                }
                self.answered_wall = Some(Utc::now());
                let answered = self.answered_wall.map(|t| t.to_rfc3339());
                let codec = self.negotiated.as_ref().map(|n| n.codec.name().to_string());
                self.shared.registry.update(&self.info.call_id, |s| {
                    s.state = "answered".into();
                    s.answered_at = answered;
                    s.codec = codec;
                });
                info!(codec = ?self.negotiated.as_ref().map(|n| n.codec.name()), "200 OK sent");
            }
            Command::SendReject(code) => {
                self.leg.reject(code, None).ok();
                info!(status = code, "INVITE answered with a failure");
            }
            Command::StartMedia => {
                if let Some(n) = self.negotiated.clone() {
                    self.start_media(&n, now);
                }
                // Without an offer, media and the flow start when the ACK brings the answer.
            }
            Command::SendBye => {
                let leg = self.leg.clone();
                tokio::spawn(
                    async move {
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

    fn start_media(&mut self, n: &Negotiated, now: Instant) {
        let mut rtp = RtpSession::new(rtp_config(&self.shared, n), now);
        rtp.set_hold(!n.direction.sends());
        self.rtp = Some(rtp);
        if !self.flow_started {
            self.flow_started = true;
            let ev = FlowEvent::Started(SessionInfo {
                call_id: self.info.call_id.clone(),
                from: self.info.from_user.clone(),
                to: self.info.to_user.clone(),
                headers: self.info.headers.clone(),
                codec: n.codec.name().to_string(),
            });
            self.flow.handle_event(ev, now, Utc::now());
        }
    }

    /// Drains the RTP session: packets to send, audio for the recorder, DTMF and marks for the flow.
    fn pump_rtp(&mut self, now: Instant) {
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
            if let (Some(rec), Some(sent)) = (self.recording.as_mut(), t.audio.as_deref()) {
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
                    if self.recording.is_some() {
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

    fn flow_event(&mut self, ev: FlowEvent) {
        if let FlowEvent::Dtmf { .. } = ev {
            self.dtmf_count += 1;
        }
        if self.flow_started && !self.flow_closed {
            self.flow.handle_event(ev, Instant::now(), Utc::now());
        }
    }

    /// Carries out what the flow asked for.
    fn pump_flow(&mut self, now: Instant) {
        while let Some(action) = self.flow.poll_action() {
            if self.state.is_ended() {
                break;
            }
            debug!(?action, "flow action");
            match action {
                FlowAction::Play { id, file } => {
                    let path = self.flow_def.resolve_prompt(&file);
                    match self.shared.prompts.get(&path) {
                        Ok(samples) => self.queue_audio(id, &samples),
                        Err(e) => {
                            warn!(error = %e, "prompt could not be played");
                            self.flow_event(FlowEvent::PlaybackFailed {
                                id,
                                reason: e.to_string(),
                            });
                        }
                    }
                }
                FlowAction::Say { id, text } => {
                    let tts = self.shared.tts.clone();
                    let tx = self.synth_tx.clone();
                    tokio::spawn(
                        async move {
                            let result = match tts.say(&text).await {
                                Ok(spoken) => {
                                    if let Some(why) = &spoken.fallback {
                                        warn!(reason = %why, "TTS unavailable: playing the fallback prompt");
                                    }
                                    Ok(spoken.audio)
                                }
                                Err(e) => Err(e.to_string()),
                            };
                            tx.send(Synth { id, result }).ok();
                        }
                        .in_current_span(),
                    );
                }
                FlowAction::StopPlayback => {
                    if let Some(rtp) = self.rtp.as_mut() {
                        rtp.clear_audio();
                    }
                }
                FlowAction::StartRecording => self.start_recording(now),
                FlowAction::StopRecording => self.stop_recording(now, true),
                FlowAction::Transfer { to } => self.start_transfer(&to, now),
                FlowAction::SendDtmf { digits } => {
                    if let Some(rtp) = self.rtp.as_mut() {
                        for d in digits.chars() {
                            if let Err(e) = rtp.send_dtmf(d, 100) {
                                warn!(digit = %d, error = %e, "cannot send DTMF");
                            }
                        }
                    }
                }
                FlowAction::TrackEvent { name, properties } => {
                    metrics::counter!("voxgate_tracked_events_total").increment(1);
                    self.shared.events.append_queued(json!({
                        "ts": Utc::now().to_rfc3339(),
                        "call_id": self.info.call_id,
                        "name": name,
                        "properties": properties,
                    }));
                }
                FlowAction::Close { cleared_session } => {
                    self.flow_closed = true;
                    info!(cleared_session, "flow closes the conversation");
                    self.close_conversation(cleared_session, now);
                }
                FlowAction::PlayAudio { samples } => {
                    if let Some(rtp) = self.rtp.as_mut() {
                        rtp.queue_audio(&samples);
                    }
                }
                FlowAction::QueueMark { id } => match self.rtp.as_mut() {
                    Some(rtp) => rtp.queue_mark(id),
                    None => self.flow_event(FlowEvent::PlaybackFinished {
                        id,
                        interrupted: true,
                    }),
                },
                FlowAction::Answer => {
                    info!("bot answers");
                    self.input(Input::Answer);
                }
                FlowAction::Ring => {
                    info!("bot rings");
                    self.leg.ring().ok();
                }
                FlowAction::Reject { status } => {
                    info!(status, "bot rejects the call");
                    self.input(Input::Reject(status));
                }
                // Integration, offload and speech steps: no executor is wired to the call yet,
                // so each is answered at once as a clear step failure (never a hang).
                FlowAction::Request { id, .. } => {
                    warn!(
                        id,
                        "integration step requested but no executor is configured"
                    );
                    self.flow_event(FlowEvent::RequestDone {
                        id,
                        result: Err(crate::flow::StepFailure {
                            code: "not_configured".into(),
                            message: "integration steps are not available in this build".into(),
                        }),
                    });
                }
                FlowAction::Listen { id, .. } => {
                    warn!(id, "listen requested but no recogniser is configured");
                    self.flow_event(FlowEvent::Speech {
                        id,
                        outcome: crate::flow::SpeechOutcome::Error(
                            "speech recognition is not available in this build".into(),
                        ),
                    });
                }
                FlowAction::Offload { .. } => {
                    warn!("offload requested but not available in this build");
                    self.flow_event(FlowEvent::TransferFailed {
                        reason: "not_available".into(),
                        detail: "offload is not available in this build".into(),
                    });
                }
                FlowAction::CancelRequest { .. } | FlowAction::StopListening { .. } => {}
            }
        }
    }

    fn queue_audio(&mut self, id: u64, samples: &[i16]) {
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

    fn start_recording(&mut self, now: Instant) {
        if let Some(rec) = &self.recording {
            let id = rec.id().to_string();
            warn!(recording = %id, "start recording ignored: already recording");
            self.flow_event(FlowEvent::RecordingFailed {
                id: None,
                reason: format!("already recording ({id}); start ignored"),
            });
            return;
        }
        let meta = RecordingMeta {
            call_id: self.info.call_id.clone(),
            from: self.info.from_user.clone(),
            to: self.info.to_user.clone(),
        };
        match self.shared.recorder.start(meta, now, self.rec_tx.clone()) {
            Ok(rec) => {
                let id = rec.id().to_string();
                self.recording_ids.push(id.clone());
                self.unfinished_recordings += 1;
                self.caller_frames.reset();
                self.shared
                    .registry
                    .update(&self.info.call_id, |s| s.recording_id = Some(id));
                self.recording = Some(rec);
            }
            Err(e) => {
                // The recorder already sent Failed on rec_tx; the call goes on.
                warn!(error = %e, "recording could not start");
            }
        }
    }

    fn stop_recording(&mut self, now: Instant, requested: bool) {
        match self.recording.take() {
            Some(rec) => {
                info!(recording = %rec.id(), "recording stopped");
                rec.stop(now);
                self.shared
                    .registry
                    .update(&self.info.call_id, |s| s.recording_id = None);
            }
            None if requested => {
                warn!("stop recording ignored: not recording");
                self.flow_event(FlowEvent::RecordingFailed {
                    id: None,
                    reason: "not recording; stop ignored".into(),
                });
            }
            None => {}
        }
    }

    /// Close conversation: the flow has erased its variables; finalize recordings, write the
    /// CDR, then BYE (the order bot builders rely on).
    fn close_conversation(&mut self, cleared_session: bool, now: Instant) {
        let had_recording = self.recording.is_some();
        self.stop_recording(now, false);
        // Give the writer a moment to finalize (rename + sha256) so the file is complete
        // before the caller sees the BYE; never longer than this bound.
        self.closing = Some(Closing {
            deadline: now + Duration::from_millis(700),
            cleared_session,
            had_recording,
        });
    }

    /// Second half of close conversation: CDR, then BYE, then the final event.
    fn finish_close(&mut self, c: Closing) {
        let finalized = self.unfinished_recordings == 0;
        if !finalized {
            warn!(
                pending = self.unfinished_recordings,
                "recordings still finalizing at BYE time"
            );
        }
        self.input(Input::Hangup(EndReason::FlowClosed));
        let bye = matches!(self.state.end_reason(), Some(EndReason::FlowClosed));
        info!(
            variables_erased = c.cleared_session,
            recordings_finalized = finalized,
            had_recording = c.had_recording,
            cdr_written = self.cdr_written,
            bye_sent = bye,
            "conversation closed"
        );
        self.shared.events.append_queued(json!({
            "ts": Utc::now().to_rfc3339(),
            "call_id": self.info.call_id,
            "name": "conversation.closed",
            "properties": {
                "variables_erased": c.cleared_session,
                "recordings_finalized": finalized,
                "cdr_written": self.cdr_written,
                "bye_sent": bye,
            },
        }));
    }

    /// The call is over: stop recording, tell the flow, write the CDR.
    fn finish(&mut self, reason: EndReason, now: Instant) {
        self.stop_recording(now, false);
        if self.flow_started && !self.flow_closed {
            self.flow.handle_event(
                FlowEvent::Ended {
                    reason: reason.code(),
                },
                now,
                Utc::now(),
            );
        }
        let stats = self.rtp.as_ref().map(|r| r.stats());
        let media_ms = self
            .state
            .answered_at()
            .map(|a| now.saturating_duration_since(a).as_millis() as u64)
            .unwrap_or(0);
        let (tx_packets, rx_packets, lost) = stats
            .as_ref()
            .map(|s| (s.packets_sent, s.packets_received, s.packets_lost))
            .unwrap_or((0, 0, 0));
        info!(
            reason = %reason.code(),
            rtp_tx_packets = tx_packets,
            rtp_rx_packets = rx_packets,
            rtp_lost = lost,
            media_ms,
            dtmf = self.dtmf_count,
            "call ended"
        );
        metrics::counter!("voxgate_calls_total", "outcome" => reason.code()).increment(1);
        let cdr = json!({
            "call_id": self.info.call_id,
            "from": self.info.from_user,
            "from_uri": self.info.from_uri,
            "to": self.info.to_user,
            "to_uri": self.info.to_uri,
            "start": self.started_wall.to_rfc3339(),
            "answer": self.answered_wall.map(|t| t.to_rfc3339()),
            "end": Utc::now().to_rfc3339(),
            "end_reason": reason.code(),
            "end_detail": match &reason { EndReason::Error(e) => Some(e.clone()), _ => None },
            "duration_ms": media_ms,
            "codec": self.negotiated.as_ref().map(|n| n.codec.name()),
            "transfer": self.transfer_outcome,
            "recording_ids": self.recording_ids,
            "rtp": {"sent": tx_packets, "received": rx_packets, "lost": lost},
            "dtmf_digits": self.dtmf_count,
        });
        self.cdr_written = self.shared.cdrs.append_or_log("CDR", &cdr);
        self.rtp = None;
        if let Some(far) = self.far.as_mut() {
            if !far.ended {
                far.ended = true;
                let leg = far.leg.clone();
                let answered = far.answered;
                tokio::spawn(
                    async move {
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

    /// Validates the number, checks the policy (before any SIP), then starts the forward.
    fn start_transfer(&mut self, raw: &str, now: Instant) {
        if self.transfer.is_some() || self.bridged {
            self.flow_event(FlowEvent::TransferFailed {
                reason: "busy".into(),
                detail: "a forward is already in progress".into(),
            });
            return;
        }
        let cfg = &self.shared.config.transfer;
        let opts = ParseOptions {
            legacy_no_plus: cfg.legacy_no_plus,
        };
        let number = match parse_e164(raw, &opts) {
            Ok(n) => n,
            Err(e) => {
                warn!(
                    number = %raw,
                    reason = e.code(),
                    rule = e.rule(),
                    detail = %e.reason(),
                    "transfer.failed"
                );
                metrics::counter!("voxgate_transfers_total", "outcome" => "invalid_number")
                    .increment(1);
                self.transfer_outcome = Some("failed:invalid_number".into());
                self.flow_event(FlowEvent::TransferFailed {
                    reason: e.code().into(),
                    detail: e.reason(),
                });
                return;
            }
        };
        if let Err(e) = self.shared.policy.check(&number) {
            warn!(
                number = %number,
                reason = e.code(),
                detail = %e.reason(),
                "transfer.failed"
            );
            metrics::counter!("voxgate_transfers_refused_total").increment(1);
            metrics::counter!("voxgate_transfers_total", "outcome" => "denied").increment(1);
            self.transfer_outcome = Some("failed:denied".into());
            self.flow_event(FlowEvent::TransferFailed {
                reason: e.code().into(),
                detail: e.reason(),
            });
            return;
        }
        let timers = TransferTimers {
            refer_timeout: Duration::from_secs(cfg.refer_timeout_s),
            ring_timeout: Duration::from_secs(cfg.ring_timeout_s),
        };
        info!(number = %number, mode = cfg.mode.as_str(), "forward starting");
        // `now` was taken before this drive pass (which may have stalled, e.g. on a synchronous
        // JSON-lines append); the REFER/bridge timers start when the SIP actually goes out.
        let (t, out) = Transfer::start(cfg.mode, timers, Instant::now());
        self.transfer = Some((t, number));
        self.shared
            .registry
            .update(&self.info.call_id, |s| s.state = "transferring".into());
        self.transfer_outputs(out, now);
    }

    fn transfer_outputs(&mut self, out: Vec<TransferOutput>, now: Instant) {
        for o in out {
            let Some((_, number)) = self.transfer.as_ref() else {
                return;
            };
            let number = number.clone();
            let trunk = self.shared.validated.trunk.host_port();
            match o {
                TransferOutput::SendRefer => {
                    let refer_to = format!("<sip:{number}@{trunk};user=phone>");
                    let referred_by = format!("<{}>", self.info.to_uri);
                    info!(%refer_to, "sending REFER");
                    let leg = self.leg.clone();
                    let tx = self.synth_tx.clone();
                    tokio::spawn(
                        async move {
                            let status = match leg.refer(&refer_to, &referred_by).await {
                                Ok(code) => code,
                                Err(e) => {
                                    warn!(error = %e, "REFER failed");
                                    0
                                }
                            };
                            info!(status, "REFER answered");
                            // Reuses the synth channel as the call's inbox for async results.
                            tx.send(Synth {
                                id: REFER_RESULT,
                                result: Err(status.to_string()),
                            })
                            .ok();
                        }
                        .in_current_span(),
                    );
                }
                TransferOutput::StartBridge => self.start_bridge(&number, now),
                TransferOutput::CancelBridge => {
                    if let Some(far) = self.far.as_mut() {
                        far.ended = true;
                        let leg = far.leg.clone();
                        tokio::spawn(async move { leg.cancel().await.ok() }.in_current_span());
                    }
                    self.drop_far();
                }
                TransferOutput::HangupCaller => {
                    info!("REFER accepted by the target: leaving the call");
                }
                TransferOutput::Progress(status) => {
                    self.flow_event(FlowEvent::TransferProgress { status })
                }
                TransferOutput::Completed { mode } => {
                    info!(number = %number, mode, "transfer.completed");
                    metrics::counter!("voxgate_transfers_total", "outcome" => "completed")
                        .increment(1);
                    self.transfer_outcome = Some(format!("completed:{mode}:{number}"));
                    self.transfer = None;
                    self.flow_event(FlowEvent::TransferCompleted {
                        to: number.to_string(),
                        mode: mode.into(),
                    });
                    // The bot's session ends with the forward: one step, one result.
                    self.flow_closed = true;
                    if mode == "refer" {
                        self.stop_recording(now, false);
                        // Leave a moment for the 200 to the final NOTIFY to go out first: the
                        // stack sends responses from its own task, and a BYE that overtakes
                        // it confuses strict peers.
                        self.leave_at = Some(Instant::now() + LEAVE_AFTER_REFER);
                    } else {
                        self.bridged = true;
                        if let Some(rtp) = self.rtp.as_mut() {
                            rtp.clear_audio();
                        }
                        self.shared
                            .registry
                            .update(&self.info.call_id, |s| s.state = "bridged".into());
                    }
                }
                TransferOutput::Failed { reason, detail } => {
                    warn!(number = %number, reason, %detail, "transfer.failed");
                    metrics::counter!("voxgate_transfers_total", "outcome" => reason).increment(1);
                    self.transfer_outcome = Some(format!("failed:{reason}"));
                    self.transfer = None;
                    self.drop_far();
                    self.shared
                        .registry
                        .update(&self.info.call_id, |s| s.state = "confirmed".into());
                    self.flow_event(FlowEvent::TransferFailed {
                        reason: reason.into(),
                        detail,
                    });
                }
            }
        }
    }

    /// B2BUA: INVITE the trunk with our offer on a fresh media port.
    fn start_bridge(&mut self, number: &E164, now: Instant) {
        let _ = now;
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
            addr: self.shared.advertised_ip,
            port: sock.local_addr().map(|a| a.port()).unwrap_or(0),
            session_id: rand::random::<u32>() as u64,
            version: 1,
        };
        let cfg = &self.shared.config.transfer;
        let trunk = self.shared.validated.trunk.host_port();
        let from = match &cfg.caller_id {
            Some(id) => format!("sip:{id}@{}", self.shared.advertised_ip),
            None if !self.info.from_uri.is_empty() => self.info.from_uri.clone(),
            None => format!("sip:anonymous@{}", self.shared.advertised_ip),
        };
        let offer = sdp::build_offer(
            &self.shared.validated.codecs,
            101,
            &local,
            Direction::SendRecv,
        );
        let req = OutgoingInvite {
            target: format!("sip:{number}@{trunk}"),
            from,
            from_display: None,
            sdp: offer,
            headers: vec![(
                "Diversion".into(),
                format!("<{}>;reason=unconditional", self.info.to_uri),
            )],
            credential: cfg.username.clone().zip(cfg.password.clone()),
        };
        info!(target = %req.target, "bridging: INVITE to the trunk");
        match sip.invite(req) {
            Ok((leg, events)) => {
                self.far = Some(FarLeg {
                    leg,
                    rtp: None,
                    local,
                    answered: false,
                    ended: false,
                });
                self.far_events = Some(events);
                self.far_sock = Some(sock);
                self.far_rtcp = Some(rtcp);
            }
            Err(e) => {
                warn!(error = %e, "could not send the INVITE to the trunk");
                self.transfer_input(TransferInput::BridgeFailed(0));
            }
        }
    }

    fn transfer_input(&mut self, input: TransferInput) {
        let now = Instant::now();
        if let Some((t, _)) = self.transfer.as_mut() {
            let out = t.handle(input, now);
            self.transfer_outputs(out, now);
        }
    }

    fn drop_far(&mut self) {
        if !self.bridged {
            self.far = None;
            self.far_events = None;
            self.far_sock = None;
            self.far_rtcp = None;
        }
    }

    async fn hangup_far(&mut self) {
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

    /// Starts the far leg's media from its SDP answer (early media or the 200).
    fn far_media(&mut self, sdp_text: &str) {
        let codecs = self.shared.validated.codecs.clone();
        let Some(far) = self.far.as_mut() else { return };
        let parsed = SessionDescription::parse(sdp_text)
            .map_err(|e| e.to_string())
            .and_then(|a| sdp::accept_answer(&codecs, &a).map_err(|e| e.to_string()));
        match parsed {
            Ok(n) => {
                if let Some(rtp) = far.rtp.as_mut() {
                    if let Some(addr) = n.remote {
                        rtp.set_remote(addr);
                    }
                    rtp.set_codec(n.codec, n.payload_type, n.telephone_event_pt);
                    return;
                }
                info!(codec = n.codec.name(), remote = ?n.remote, "far leg media");
                far.rtp = Some(RtpSession::new(
                    rtp_config(&self.shared, &n),
                    Instant::now(),
                ));
            }
            Err(why) => warn!(%why, "far leg SDP unusable"),
        }
    }

    fn on_far_event(&mut self, ev: LegEvent) {
        match ev {
            LegEvent::Progress { status, sdp } => {
                info!(status, "far leg progress");
                if let Some(sdp) = sdp {
                    // Early media: relay the trunk's ringback/announcements to the caller.
                    self.far_media(&sdp);
                }
                self.transfer_input(TransferInput::BridgeProgress(status));
            }
            LegEvent::Answered { sdp } => {
                info!("far leg answered");
                if let Some(far) = self.far.as_mut() {
                    far.answered = true;
                }
                match sdp {
                    Some(sdp) => self.far_media(&sdp),
                    None => warn!("far leg 200 OK without SDP"),
                }
                self.transfer_input(TransferInput::BridgeAnswered);
            }
            LegEvent::Rejected { status } => {
                info!(status, "far leg refused");
                if let Some(far) = self.far.as_mut() {
                    far.ended = true;
                }
                self.transfer_input(TransferInput::BridgeFailed(status));
            }
            LegEvent::Terminated(end) => {
                info!(?end, "far leg ended");
                if let Some(far) = self.far.as_mut() {
                    far.ended = true;
                }
                if self.bridged && end != LegEnd::LocalHangup {
                    self.input(Input::Hangup(EndReason::FarEndHangup));
                }
            }
            LegEvent::Offer { sdp, reply } => {
                // re-INVITE from the far side (hold/unhold): answer with our side's SDP.
                let Some(far) = self.far.as_mut() else { return };
                let codecs = self.shared.validated.codecs.clone();
                far.local.version += 1;
                let answer = sdp
                    .as_deref()
                    .and_then(|t| SessionDescription::parse(t).ok())
                    .and_then(|o| sdp::negotiate_answer(&o, &codecs, &far.local).ok());
                let body = match &answer {
                    Some(n) => {
                        if let Some(rtp) = far.rtp.as_mut() {
                            if let Some(a) = n.remote {
                                rtp.set_remote(a);
                            }
                            rtp.set_hold(!n.direction.sends() || n.remote.is_none());
                        }
                        Some(n.answer.clone())
                    }
                    None => None,
                };
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
                    if let Some(rtp) = self.rtp.as_mut() {
                        rtp.send_dtmf(d.digit, d.duration_ms.unwrap_or(100)).ok();
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

    /// Relays the far leg's audio to the caller (early media and the bridged call).
    fn pump_far(&mut self, now: Instant) {
        let Some(far) = self.far.as_mut() else { return };
        let Some(rtp) = far.rtp.as_mut() else { return };
        if let Some(sock) = self.far_sock.as_ref() {
            while let Some(t) = rtp.poll_transmit(now) {
                let s = if t.rtcp {
                    self.far_rtcp.as_ref().unwrap_or(sock)
                } else {
                    sock
                };
                s.try_send_to(&t.payload, t.dest).ok();
            }
        }
        while let Some(ev) = rtp.poll_event() {
            match ev {
                RtpEvent::Audio {
                    samples,
                    lost: false,
                    ..
                } => {
                    if let Some(caller) = self.rtp.as_mut() {
                        caller.queue_audio(&samples);
                    }
                }
                RtpEvent::Dtmf(d) => {
                    if let Some(caller) = self.rtp.as_mut() {
                        caller.send_dtmf(d.digit, d.duration_ms.max(40)).ok();
                    }
                }
                RtpEvent::Inactive { .. } if self.bridged => {
                    warn!("no RTP from the far leg: ending the bridged call");
                    self.input(Input::Hangup(EndReason::RtpTimeout));
                    return;
                }
                _ => {}
            }
        }
    }

    async fn on_leg_event(&mut self, ev: LegEvent) {
        match ev {
            LegEvent::Confirmed { ack_sdp } => {
                info!("ACK received: call confirmed");
                if self.negotiated.is_none() {
                    self.accept_ack_answer(ack_sdp);
                }
                self.shared
                    .registry
                    .update(&self.info.call_id, |s| s.state = "confirmed".into());
                self.input(Input::Acked);
            }
            LegEvent::Info {
                content_type,
                body,
                reply,
            } => match crate::sip::dtmf_info::parse_info_dtmf(&content_type, &body) {
                Ok(d) => {
                    reply.respond(200, vec![], None).await.ok();
                    info!(digit = %d.digit, via = "info", duration_ms = d.duration_ms.unwrap_or(0), "DTMF received");
                    self.flow_event(FlowEvent::Dtmf {
                        digit: d.digit,
                        duration_ms: d.duration_ms.unwrap_or(0),
                    });
                }
                Err(e) => {
                    let ct = content_type.to_ascii_lowercase();
                    let code = if ct.starts_with("application/dtmf") {
                        400
                    } else {
                        415
                    };
                    info!(status = code, error = %e, "INFO refused");
                    reply
                        .respond(
                            code,
                            vec![(
                                "Accept".into(),
                                "application/dtmf-relay, application/dtmf".into(),
                            )],
                            None,
                        )
                        .await
                        .ok();
                }
            },
            LegEvent::Offer { sdp, reply } => self.on_reoffer(sdp, reply).await,
            LegEvent::Notify {
                reply,
                event,
                content_type,
                body,
            } => {
                // RFC 3515: every NOTIFY is answered 200, whatever it says.
                reply.respond(200, vec![], None).await.ok();
                let is_refer = event.to_ascii_lowercase().starts_with("refer");
                if !is_refer
                    || !content_type
                        .to_ascii_lowercase()
                        .starts_with("message/sipfrag")
                {
                    debug!(%event, %content_type, "NOTIFY ignored");
                } else {
                    match SipFrag::parse_bytes(&body) {
                        Ok(frag) => {
                            info!(status = frag.status, reason = %frag.reason, "REFER progress (NOTIFY)");
                            if let Some((t, _)) = self.transfer.as_mut() {
                                let out =
                                    t.handle(TransferInput::Notify(frag.status), Instant::now());
                                self.transfer_outputs(out, Instant::now());
                            }
                        }
                        Err(e) => warn!(error = %e, "NOTIFY with an unreadable sipfrag"),
                    }
                }
            }
            LegEvent::Progress { .. } | LegEvent::Answered { .. } | LegEvent::Rejected { .. } => {}
            LegEvent::Terminated(end) => {
                info!(?end, "SIP dialog ended");
                if end == LegEnd::RemoteBye {
                    if let Some((t, _)) = self.transfer.as_mut() {
                        let out = t.handle(TransferInput::CallerBye, Instant::now());
                        self.transfer_outputs(out, Instant::now());
                    }
                    self.hangup_far().await;
                }
                let input = match end {
                    LegEnd::RemoteBye => Input::RemoteBye,
                    LegEnd::Cancelled => Input::Cancelled,
                    LegEnd::LocalHangup => return,
                    LegEnd::Timeout => Input::DialogFailed("no ACK or transaction timeout".into()),
                    LegEnd::Other(why) => Input::DialogFailed(why),
                };
                self.input(input);
            }
        }
    }

    fn accept_ack_answer(&mut self, ack_sdp: Option<String>) {
        let codecs = self.shared.validated.codecs.clone();
        let parsed = ack_sdp
            .as_deref()
            .ok_or_else(|| "the ACK carried no SDP answer".to_string())
            .and_then(|t| SessionDescription::parse(t).map_err(|e| e.to_string()))
            .and_then(|a| sdp::accept_answer(&codecs, &a).map_err(|e| e.to_string()));
        match parsed {
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

    /// re-INVITE / UPDATE: hold, unhold, a new media address or codec.
    async fn on_reoffer(&mut self, sdp_text: Option<String>, reply: crate::sip::Responder) {
        let ct = vec![("Content-Type".to_string(), "application/sdp".to_string())];
        let Some(text) = sdp_text else {
            // Offer-less re-INVITE: repeat our current SDP as the offer.
            reply
                .respond(200, ct, Some(self.local_sdp.clone().into_bytes()))
                .await
                .ok();
            return;
        };
        let codecs = self.shared.validated.codecs.clone();
        self.local.version += 1;
        let result = SessionDescription::parse(&text)
            .map_err(|e| (400u16, e.to_string()))
            .and_then(|o| {
                sdp::negotiate_answer(&o, &codecs, &self.local).map_err(|e| (488, e.to_string()))
            });
        match result {
            Ok(n) => {
                let hold = !n.direction.sends() || n.remote.is_none();
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
            Err((code, why)) => {
                self.local.version -= 1;
                warn!(status = code, %why, "re-INVITE refused; the call keeps its media");
                reply.respond(code, vec![], None).await.ok();
            }
        }
    }

    fn on_control(&mut self, c: Control) {
        info!(?c, "control");
        match c {
            Control::Pause => {
                self.shared
                    .registry
                    .update(&self.info.call_id, |s| s.paused = true);
                self.flow_event(FlowEvent::Paused);
            }
            Control::Resume => {
                self.shared
                    .registry
                    .update(&self.info.call_id, |s| s.paused = false);
                self.flow_event(FlowEvent::Resumed);
            }
            Control::Hangup => self.input(Input::Hangup(EndReason::Shutdown)),
        }
    }

    fn on_synth(&mut self, s: Synth) {
        if s.id == REFER_RESULT {
            let status = s.result.err().and_then(|t| t.parse().ok()).unwrap_or(0);
            self.transfer_input(TransferInput::ReferAnswered(status));
            return;
        }
        match s.result {
            Ok(audio) => self.queue_audio(s.id, &audio),
            Err(reason) => {
                warn!(%reason, "say failed");
                self.flow_event(FlowEvent::PlaybackFailed { id: s.id, reason });
            }
        }
    }

    fn on_recorder_event(&mut self, e: RecorderEvent) {
        if matches!(
            e,
            RecorderEvent::Ready { .. } | RecorderEvent::Failed { .. }
        ) {
            self.unfinished_recordings = self.unfinished_recordings.saturating_sub(1);
        }
        match &e {
            RecorderEvent::Failed { id, reason } => {
                warn!(recording = %id, %reason, "recording failed; the call goes on");
                if self
                    .recording
                    .as_ref()
                    .map(|r| r.id() == id)
                    .unwrap_or(false)
                {
                    self.recording = None;
                }
            }
            RecorderEvent::Ready {
                id,
                duration_ms,
                sha256,
                ..
            } => {
                info!(recording = %id, duration_ms, %sha256, "recording ready");
            }
            _ => {}
        }
        self.flow_event(FlowEvent::from(e));
    }

    /// After the call: give recordings a moment to finish so `recording.ready` is logged
    /// and reaches the flow.
    async fn after_end(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(3);
        while self.unfinished_recordings > 0 {
            let remaining = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(remaining, self.rec_rx.recv()).await {
                Ok(Some(e)) => self.on_recorder_event(e),
                _ => break,
            }
        }
    }
}

/// RTP settings for one leg, from what SDP negotiated and the `[rtp]` config.
fn rtp_config(shared: &Shared, n: &Negotiated) -> RtpConfig {
    let mut cfg = RtpConfig::new(n.codec, n.payload_type, n.telephone_event_pt);
    cfg.remote = n.remote;
    cfg.inactivity_timeout = Duration::from_secs(shared.config.rtp.inactivity_timeout_s);
    cfg.jitter_depth = Duration::from_millis(shared.config.rtp.jitter_ms);
    cfg.seed = rand::random();
    cfg
}

async fn recv_leg(rx: &mut Option<mpsc::UnboundedReceiver<LegEvent>>) -> Option<LegEvent> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_udp(
    sock: &Option<UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, std::net::SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}
