//! [`MediaCore`]: everything one call does with media, as an IO-free state machine run by a
//! media worker (`media::plane`). It owns both legs' [`RtpSession`]s (the caller, and the
//! far leg of a bridged forward), the caller's playback, the recording feed, the bridge
//! relay and the audio taps.
//!
//! Driven as: [`command`](MediaCore::command) (from the call task, applied at the worker's
//! tick), [`handle_datagram`](MediaCore::handle_datagram) for every datagram that arrived,
//! then [`on_tick`](MediaCore::on_tick) once per 20 ms tick, which sends what is due into
//! an [`Outbox`] and runs the recording; [`poll_event`](MediaCore::poll_event) hands out
//! what the call task must hear about (DTMF, marks, inactivity, latching). Nothing here
//! reads a clock or touches a socket, so it is tested with fabricated `Instant`s and a fake
//! network.
//!
//! The bridge relay: a packet accepted on one leg while bridged is queued on the other leg
//! as payload bytes (`RtpSession::queue_relay`): sent unchanged when both legs use the same
//! codec, transcoded when they differ. The far leg's audio reaches the caller before the
//! bridge too (early media: ringback, announcements).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::error::TrySendError;
use tracing::{debug, info, warn};

use super::codec::{Codec, FRAME_SAMPLES};
use super::packet;
use super::playback::Audio;
use super::recorder::{FeedSpec, PendingJob, RecordingFeed, RecordingId};
use super::rtp::{RtpConfig, RtpEvent, RtpSession, TxBuf};

/// Which leg of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Leg {
    Caller,
    Far,
}

/// 20 ms of the caller's audio, as handed to a tap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AudioFrame {
    pub samples: [i16; FRAME_SAMPLES],
    pub rtp_ts: u32,
    /// Silence standing in for a packet that never arrived.
    pub lost: bool,
}

/// The media core's end of an audio tap: a bounded channel of 20 ms frames. A full tap
/// drops the frame and counts it; the media worker never waits for a consumer.
#[derive(Debug, Clone)]
pub struct TapSender {
    id: u64,
    tx: tokio::sync::mpsc::Sender<AudioFrame>,
    dropped: Arc<AtomicU64>,
}

impl TapSender {
    pub fn new(
        id: u64,
        tx: tokio::sync::mpsc::Sender<AudioFrame>,
        dropped: Arc<AtomicU64>,
    ) -> Self {
        TapSender { id, tx, dropped }
    }
}

/// What the call task tells its media core.
#[derive(Debug)]
pub enum MediaCommand {
    /// Start the caller's RTP session (the negotiated settings); on hold when we must not send.
    StartCaller {
        config: Box<RtpConfig>,
        hold: bool,
    },
    /// re-INVITE: a new remote address, codec and hold state for the caller leg.
    UpdateCaller {
        remote: Option<SocketAddr>,
        codec: Codec,
        payload_type: u8,
        telephone_event_pt: Option<u8>,
        hold: bool,
    },
    /// Queue audio for the caller, shared (prompts, TTS) ...
    Play(Audio),
    /// ... or streamed by a bot (copied into the bounded playback queue).
    PlayPcm(Vec<i16>),
    /// A playback mark after the audio queued so far.
    Mark(u64),
    /// Barge-in: drop the queued audio (pending marks are reported cleared).
    ClearAudio,
    /// RFC 4733 key presses to the caller.
    SendDtmf {
        digits: String,
        duration_ms: u32,
    },
    StartRecording(FeedSpec),
    StopRecording,
    OpenTap(TapSender),
    CloseTap(u64),
    /// The far leg answered (or sent early media): start or update its RTP session.
    FarMedia {
        config: Box<RtpConfig>,
    },
    /// The far side's re-INVITE.
    UpdateFar {
        remote: Option<SocketAddr>,
        hold: bool,
    },
    /// The far leg is gone.
    EndFar,
    /// Connect (or disconnect) the caller and the far leg.
    Bridge(bool),
}

/// What the media core reports to the call task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// A key press from the caller (RFC 4733).
    Dtmf { digit: char, duration_ms: u32 },
    /// All audio queued before this mark has been sent.
    MarkPlayed(u64),
    /// The mark's audio was dropped by a barge-in.
    MarkCleared(u64),
    /// The leg now sends to this address (latched on the peer's packets).
    Latched { leg: Leg, addr: SocketAddr },
    /// No valid RTP on the leg for the inactivity timeout.
    Inactive { leg: Leg, since: Duration },
    /// A recording's feed ended: this many 20 ms slots went to the writer.
    RecordingFed {
        id: RecordingId,
        slots: u64,
        overflow_frames: u64,
    },
}

/// Counters the call task reads (for the CDR and logs) without waking the worker; updated
/// once per tick.
#[derive(Debug, Default)]
pub struct MediaStats {
    pub packets_sent: AtomicU64,
    pub packets_received: AtomicU64,
    pub packets_lost: AtomicI64,
    pub tap_dropped: AtomicU64,
    pub relay_dropped: AtomicU64,
}

/// Where [`MediaCore::on_tick`] puts datagrams to send.
pub trait Outbox {
    fn send(&mut self, leg: Leg, rtcp: bool, dest: SocketAddr, payload: &[u8]);
}

/// The media of one call (see the module docs).
pub struct MediaCore {
    caller: Option<RtpSession>,
    far: Option<RtpSession>,
    bridged: bool,
    recording: Option<RecordingFeed>,
    /// A stop asked for at this tick instant: the recording ends there, but only after the
    /// tick has read the caller's last packets (which arrived before the stop was applied).
    stop_at: Option<Instant>,
    pending_jobs: Vec<PendingJob>,
    taps: Vec<TapSender>,
    /// Commands that arrive before the caller's session exists wait here (marks must be
    /// answered in order).
    early: VecDeque<MediaCommand>,
    events: VecDeque<MediaEvent>,
    stats: Arc<MediaStats>,
    tx: TxBuf,
    /// The last tick, the clock of a recording started before media.
    last_tick: Option<Instant>,
    /// The call's span: the core runs on a media worker, so its log lines (and its RTP
    /// sessions') name it to carry the Call-ID.
    span: tracing::Span,
}

impl MediaCore {
    pub fn new(stats: Arc<MediaStats>, span: tracing::Span) -> Self {
        MediaCore {
            caller: None,
            far: None,
            bridged: false,
            recording: None,
            stop_at: None,
            pending_jobs: Vec::new(),
            taps: Vec::new(),
            early: VecDeque::new(),
            events: VecDeque::new(),
            stats,
            tx: TxBuf::default(),
            last_tick: None,
            span,
        }
    }

    /// The call's span (see [`MediaCore::new`]).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Applies a command at the tick `now` (a tick instant: send schedules snap to it).
    pub fn command(&mut self, cmd: MediaCommand, now: Instant, wall: DateTime<Utc>) {
        match cmd {
            MediaCommand::StartCaller { mut config, hold } => {
                config.span = self.span.clone();
                let mut rtp = RtpSession::new(*config, now);
                rtp.set_hold(hold);
                self.caller = Some(rtp);
                while let Some(c) = self.early.pop_front() {
                    self.command(c, now, wall);
                }
            }
            MediaCommand::UpdateCaller {
                remote,
                codec,
                payload_type,
                telephone_event_pt,
                hold,
            } => {
                if let Some(rtp) = self.caller.as_mut() {
                    if let Some(addr) = remote {
                        rtp.set_remote(addr);
                    }
                    rtp.set_codec(codec, payload_type, telephone_event_pt);
                    rtp.set_hold(hold);
                }
            }
            c @ (MediaCommand::Play(_)
            | MediaCommand::PlayPcm(_)
            | MediaCommand::Mark(_)
            | MediaCommand::ClearAudio
            | MediaCommand::SendDtmf { .. }) => match self.caller.as_mut() {
                Some(rtp) => playback(rtp, c),
                None => self.early.push_back(c),
            },
            MediaCommand::StartRecording(spec) => {
                self.stop_recording(now);
                let (base, slot0) = match &self.caller {
                    Some(rtp) => {
                        let base = rtp.send_slot_at(now);
                        (base, rtp.send_slot_instant(base))
                    }
                    None => (0, now),
                };
                self.recording = Some(RecordingFeed::new(spec, base, slot0, now, wall));
            }
            MediaCommand::StopRecording => {
                if self.recording.is_some() {
                    self.stop_at.get_or_insert(now);
                }
            }
            MediaCommand::OpenTap(tap) => {
                self.taps.retain(|t| t.id != tap.id);
                self.taps.push(tap);
            }
            MediaCommand::CloseTap(id) => self.taps.retain(|t| t.id != id),
            MediaCommand::FarMedia { config } => match self.far.as_mut() {
                Some(rtp) => {
                    if let Some(addr) = config.remote {
                        rtp.set_remote(addr);
                    }
                    rtp.set_codec(config.codec, config.payload_type, config.telephone_event_pt);
                }
                None => {
                    let mut config = config;
                    config.span = tracing::info_span!(parent: &self.span, "far_leg");
                    self.far = Some(RtpSession::new(*config, now));
                }
            },
            MediaCommand::UpdateFar { remote, hold } => {
                if let Some(rtp) = self.far.as_mut() {
                    if let Some(addr) = remote {
                        rtp.set_remote(addr);
                    }
                    rtp.set_hold(hold);
                }
            }
            MediaCommand::EndFar => {
                self.far = None;
                self.bridged = false;
                if let Some(rtp) = self.caller.as_mut() {
                    rtp.clear_relay();
                }
            }
            MediaCommand::Bridge(on) => self.bridged = on,
        }
    }

    /// One datagram that arrived on `leg`'s RTP (or RTCP) socket.
    pub fn handle_datagram(
        &mut self,
        leg: Leg,
        rtcp: bool,
        bytes: &[u8],
        from: SocketAddr,
        now: Instant,
    ) {
        let (this, other) = match leg {
            Leg::Caller => (self.caller.as_mut(), self.far.as_mut()),
            Leg::Far => (self.far.as_mut(), self.caller.as_mut()),
        };
        let Some(rtp) = this else { return };
        if rtcp {
            rtp.handle_rtcp(bytes, from, now);
            return;
        }
        if rtp.try_handle_datagram(bytes, from, now).is_err() {
            return;
        }
        // The relay: caller -> far only once bridged; far -> caller always (early media).
        let relay = match leg {
            Leg::Caller => self.bridged,
            Leg::Far => true,
        };
        let Some(other) = other.filter(|_| relay) else {
            return;
        };
        let Ok(pkt) = packet::parse(bytes) else {
            return;
        };
        let pt = pkt.header.payload_type;
        let codec = if pt == rtp.payload_type() {
            Some(rtp.codec())
        } else {
            Codec::from_payload_type(pt)
        };
        if let Some(codec) = codec {
            other.queue_relay(codec, pkt.payload);
        }
    }

    /// One tick: timers, what the sessions released, what is due to send, the recording.
    pub fn on_tick(&mut self, now: Instant, out: &mut impl Outbox) {
        self.last_tick = Some(now);
        self.pending_jobs = std::mem::take(&mut self.pending_jobs)
            .into_iter()
            .filter_map(PendingJob::retry)
            .collect();
        if let Some(rtp) = self.caller.as_mut() {
            rtp.handle_timeout(now);
        }
        if let Some(rtp) = self.far.as_mut() {
            rtp.handle_timeout(now);
        }
        self.drain_caller_events(now);
        self.drain_far_events();
        if let Some(at) = self.stop_at {
            self.stop_recording(at);
        }
        if let Some(rtp) = self.caller.as_mut() {
            while let Some(meta) = rtp.poll_transmit_into(now, &mut self.tx) {
                out.send(Leg::Caller, meta.rtcp, meta.dest, &self.tx.data);
                if let (Some(slot), Some(rec)) = (meta.slot, self.recording.as_mut()) {
                    rec.sent(slot, &self.tx.audio);
                }
            }
            // Marks played by what was just sent.
            self.drain_caller_events(now);
        }
        if let Some(rtp) = self.far.as_mut() {
            while let Some(meta) = rtp.poll_transmit_into(now, &mut self.tx) {
                out.send(Leg::Far, meta.rtcp, meta.dest, &self.tx.data);
            }
        }
        if let Some(rec) = self.recording.as_mut() {
            rec.advance(now);
        }
        self.update_stats();
    }

    pub fn poll_event(&mut self) -> Option<MediaEvent> {
        self.events.pop_front()
    }

    /// The call is over: ends the recording; returns a writer job still to be queued.
    pub fn close(&mut self, now: Instant) -> Vec<PendingJob> {
        self.stop_recording(now);
        // The caller frames the session released since the last tick (this tick's reads)
        // still reach the taps: a bot hears the caller's last packet before its tap closes.
        self.drain_caller_events(now);
        self.update_stats();
        std::mem::take(&mut self.pending_jobs)
    }

    pub fn is_recording(&self) -> bool {
        self.recording.is_some()
    }

    /// Ends the recording at `now` (or at the stop already asked for), after feeding it the
    /// caller frames the session released but no tick has drained yet.
    fn stop_recording(&mut self, now: Instant) {
        let now = self.stop_at.take().unwrap_or(now);
        if self.recording.is_none() {
            return;
        }
        self.drain_caller_events(now);
        if let Some(rec) = self.recording.take() {
            let id = rec.id().clone();
            let (summary, pending) = rec.stop(now);
            debug!(parent: &self.span, recording = %id, slots = summary.slots, "recording feed ended");
            self.events.push_back(MediaEvent::RecordingFed {
                id,
                slots: summary.slots,
                overflow_frames: summary.overflow_frames,
            });
            self.pending_jobs.extend(pending);
        }
    }

    fn drain_caller_events(&mut self, now: Instant) {
        let Some(rtp) = self.caller.as_mut() else {
            return;
        };
        while let Some(ev) = rtp.poll_event() {
            match ev {
                RtpEvent::Audio {
                    samples,
                    rtp_ts,
                    lost,
                } => {
                    if let Some(rec) = self.recording.as_mut() {
                        rec.caller_frame(rtp_ts, &samples, now);
                    }
                    if !self.taps.is_empty() {
                        let mut frame = AudioFrame {
                            samples: [0; FRAME_SAMPLES],
                            rtp_ts,
                            lost,
                        };
                        let n = samples.len().min(FRAME_SAMPLES);
                        frame.samples[..n].copy_from_slice(&samples[..n]);
                        for tap in &self.taps {
                            if let Err(TrySendError::Full(_)) = tap.tx.try_send(frame) {
                                tap.dropped.fetch_add(1, Ordering::Relaxed);
                                self.stats.tap_dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    rtp.recycle(samples);
                }
                RtpEvent::Dtmf(d) => {
                    if self.bridged {
                        if let Some(far) = self.far.as_mut() {
                            far.send_dtmf(d.digit, d.duration_ms.max(40)).ok();
                        }
                    }
                    self.events.push_back(MediaEvent::Dtmf {
                        digit: d.digit,
                        duration_ms: d.duration_ms,
                    });
                }
                RtpEvent::MarkPlayed(id) => self.events.push_back(MediaEvent::MarkPlayed(id)),
                RtpEvent::MarkCleared(id) => self.events.push_back(MediaEvent::MarkCleared(id)),
                RtpEvent::RemoteAddrChanged(addr) => self.events.push_back(MediaEvent::Latched {
                    leg: Leg::Caller,
                    addr,
                }),
                RtpEvent::Inactive { since } => self.events.push_back(MediaEvent::Inactive {
                    leg: Leg::Caller,
                    since,
                }),
            }
        }
    }

    fn drain_far_events(&mut self) {
        let Some(far) = self.far.as_mut() else {
            return;
        };
        while let Some(ev) = far.poll_event() {
            match ev {
                RtpEvent::Audio { samples, .. } => far.recycle(samples),
                RtpEvent::Dtmf(d) => {
                    if let Some(caller) = self.caller.as_mut() {
                        caller.send_dtmf(d.digit, d.duration_ms.max(40)).ok();
                    }
                }
                RtpEvent::RemoteAddrChanged(addr) => self.events.push_back(MediaEvent::Latched {
                    leg: Leg::Far,
                    addr,
                }),
                RtpEvent::Inactive { since } => self.events.push_back(MediaEvent::Inactive {
                    leg: Leg::Far,
                    since,
                }),
                RtpEvent::MarkPlayed(_) | RtpEvent::MarkCleared(_) => {}
            }
        }
    }

    fn update_stats(&self) {
        let Some(rtp) = self.caller.as_ref() else {
            return;
        };
        let s = rtp.stats();
        self.stats
            .packets_sent
            .store(s.packets_sent, Ordering::Relaxed);
        self.stats
            .packets_received
            .store(s.packets_received, Ordering::Relaxed);
        self.stats
            .packets_lost
            .store(s.packets_lost, Ordering::Relaxed);
        let relay = self.far.as_ref().map_or(0, |f| f.relay_dropped()) + rtp.relay_dropped();
        self.stats.relay_dropped.store(relay, Ordering::Relaxed);
    }
}

/// Playback commands on the caller's session.
fn playback(rtp: &mut RtpSession, cmd: MediaCommand) {
    match cmd {
        MediaCommand::Play(audio) => rtp.queue_shared(audio),
        MediaCommand::PlayPcm(samples) => rtp.queue_audio(&samples),
        MediaCommand::Mark(id) => rtp.queue_mark(id),
        MediaCommand::ClearAudio => rtp.clear_audio(),
        MediaCommand::SendDtmf {
            digits,
            duration_ms,
        } => {
            for d in digits.chars() {
                if let Err(e) = rtp.send_dtmf(d, duration_ms) {
                    warn!(parent: rtp.span(), digit = %d, error = %e, "cannot send DTMF");
                }
            }
        }
        other => info!(parent: rtp.span(), ?other, "not a playback command"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::g711;
    use crate::media::playback::SharedAudio;
    use crate::media::recorder::writer::Job;
    use crate::media::recorder::ChannelMode;
    use std::net::{IpAddr, Ipv4Addr};
    use std::sync::mpsc::sync_channel;

    fn addr(host: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)), port)
    }
    const CALLER_PEER: u8 = 1;
    const FAR_PEER: u8 = 2;

    fn ms(t0: Instant, n: u64) -> Instant {
        t0 + Duration::from_millis(n)
    }

    fn leg_config(codec: Codec, remote: SocketAddr, seed: u64) -> Box<RtpConfig> {
        let mut c = RtpConfig::new(codec, codec.payload_type(), Some(101));
        c.remote = Some(remote);
        c.seed = seed;
        Box::new(c)
    }

    /// A fake network: what the core sent, by leg.
    #[derive(Default)]
    struct Net {
        sent: Vec<(Leg, bool, SocketAddr, Vec<u8>)>,
    }
    impl Outbox for Net {
        fn send(&mut self, leg: Leg, rtcp: bool, dest: SocketAddr, payload: &[u8]) {
            self.sent.push((leg, rtcp, dest, payload.to_vec()));
        }
    }

    fn rtp_of(net: &mut Net, leg: Leg) -> Vec<Vec<u8>> {
        let (mine, rest): (Vec<_>, Vec<_>) = net
            .sent
            .drain(..)
            .partition(|(l, rtcp, _, _)| *l == leg && !rtcp);
        net.sent = rest;
        mine.into_iter().map(|(_, _, _, p)| p).collect()
    }

    /// A peer that sends one packet per tick with `payload`.
    fn peer_packet(seq: u16, codec: Codec, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        packet::write(
            &packet::RtpHeader {
                marker: false,
                payload_type: codec.payload_type(),
                sequence: seq,
                timestamp: 160 * u32::from(seq),
                ssrc: 0xABCD,
            },
            payload,
            &mut out,
        );
        out
    }

    fn events(core: &mut MediaCore) -> Vec<MediaEvent> {
        std::iter::from_fn(|| core.poll_event()).collect()
    }

    fn started_core(t0: Instant) -> MediaCore {
        let mut core = MediaCore::new(Arc::new(MediaStats::default()), tracing::Span::none());
        core.command(
            MediaCommand::StartCaller {
                config: leg_config(Codec::Pcmu, addr(CALLER_PEER, 4000), 1),
                hold: false,
            },
            t0,
            Utc::now(),
        );
        core
    }

    #[test]
    fn one_packet_per_tick_and_prompts_go_out_pre_encoded_with_their_mark() {
        let t0 = Instant::now();
        let mut core = MediaCore::new(Arc::new(MediaStats::default()), tracing::Span::none());
        let pcm: Arc<[i16]> = (0..800)
            .map(|i| ((i * 37) % 4000) as i16)
            .collect::<Vec<_>>()
            .into();
        let prompt = SharedAudio::new(pcm);
        // Playback asked for before the session exists waits for it, in order.
        core.command(
            MediaCommand::Play(Audio::Shared(prompt.clone())),
            t0,
            Utc::now(),
        );
        core.command(MediaCommand::Mark(9), t0, Utc::now());
        core.command(
            MediaCommand::StartCaller {
                config: leg_config(Codec::Pcmu, addr(CALLER_PEER, 4000), 1),
                hold: false,
            },
            t0,
            Utc::now(),
        );
        let mut net = Net::default();
        let mut sent = Vec::new();
        for k in 0..8u64 {
            // Ticks run late by up to 3 ms: still one packet each.
            core.on_tick(ms(t0, 20 * k + k % 4), &mut net);
            let pkts = rtp_of(&mut net, Leg::Caller);
            assert_eq!(pkts.len(), 1, "tick {k}");
            sent.push(pkts[0][12..].to_vec());
            let evs = events(&mut core);
            if k == 4 {
                assert_eq!(evs, vec![MediaEvent::MarkPlayed(9)], "after 5 frames");
            } else {
                assert!(evs.is_empty(), "tick {k}: {evs:?}");
            }
        }
        assert_eq!(sent[..5].concat(), prompt.encoded(Codec::Pcmu));
        assert!(sent[5].iter().all(|&b| b == g711::ULAW_SILENCE));
    }

    #[test]
    fn caller_dtmf_and_latching_become_events() {
        let t0 = Instant::now();
        let mut core = started_core(t0);
        let from = addr(CALLER_PEER, 4002);
        core.handle_datagram(
            Leg::Caller,
            false,
            &peer_packet(1, Codec::Pcmu, &[0xFF; 160]),
            from,
            t0,
        );
        // RFC 4733 '5', end packet.
        let mut dtmf = Vec::new();
        packet::write(
            &packet::RtpHeader {
                marker: true,
                payload_type: 101,
                sequence: 2,
                timestamp: 320,
                ssrc: 0xABCD,
            },
            &[5, 0x80 | 10, 0x03, 0x20],
            &mut dtmf,
        );
        core.handle_datagram(Leg::Caller, false, &dtmf, from, ms(t0, 20));
        core.on_tick(ms(t0, 20), &mut Net::default());
        let evs = events(&mut core);
        assert!(evs.contains(&MediaEvent::Latched {
            leg: Leg::Caller,
            addr: from
        }));
        assert!(
            evs.iter()
                .any(|e| matches!(e, MediaEvent::Dtmf { digit: '5', .. })),
            "{evs:?}"
        );
    }

    #[test]
    fn the_recording_pairs_caller_and_sent_audio_and_lasts_wall_time() {
        let t0 = Instant::now();
        let mut core = started_core(t0);
        let (tx, rx) = sync_channel(64);
        let id = RecordingId::generate(Utc::now());
        core.command(
            MediaCommand::Play(Audio::Pcm(vec![1000i16; 160 * 200].into())),
            t0,
            Utc::now(),
        );
        // The recording starts at the tick 100 ms in: its slot 0 is send slot 5.
        let mut net = Net::default();
        for k in 0..5u64 {
            core.on_tick(ms(t0, 20 * k), &mut net);
        }
        core.command(
            MediaCommand::StartRecording(FeedSpec {
                id: id.clone(),
                mode: ChannelMode::Stereo,
                writer: tx,
            }),
            ms(t0, 100),
            Utc::now(),
        );
        let from = addr(CALLER_PEER, 4000);
        for k in 5..160u64 {
            let now = ms(t0, 20 * k + 1);
            core.handle_datagram(
                Leg::Caller,
                false,
                &peer_packet(k as u16, Codec::Pcmu, &[g711::ulaw_encode(-500); 160]),
                from,
                now,
            );
            core.on_tick(now, &mut net);
        }
        // The stop is applied at the tick instant; the caller's last packet arrived just
        // before it and is read by that tick's receive, after the command: it is kept.
        core.command(MediaCommand::StopRecording, ms(t0, 3_210), Utc::now());
        core.handle_datagram(
            Leg::Caller,
            false,
            &peer_packet(160, Codec::Pcmu, &[g711::ulaw_encode(-500); 160]),
            from,
            ms(t0, 3_215),
        );
        core.on_tick(ms(t0, 3_215), &mut net);
        let evs = events(&mut core);
        assert!(
            evs.contains(&MediaEvent::RecordingFed {
                id,
                slots: 156,
                overflow_frames: 0
            }),
            "{evs:?}"
        );
        let mut samples = Vec::new();
        let mut finish = None;
        while let Ok(job) = rx.try_recv() {
            match job {
                Job::Block {
                    slots, samples: s, ..
                } => samples.extend_from_slice(&s[..slots * 320]),
                Job::Finish {
                    slots,
                    started_at,
                    ended_at,
                    ..
                } => finish = Some((slots, (ended_at - started_at).num_milliseconds())),
                Job::Create { .. } => {}
            }
        }
        assert_eq!(finish, Some((156, 3_120)), "3.11 s from slot 5's start");
        assert_eq!(samples.len(), 156 * 320);
        let right: Vec<i16> = samples.iter().skip(1).step_by(2).copied().collect();
        let left: Vec<i16> = samples.iter().step_by(2).copied().collect();
        // Right: what was sent (the queued audio, G.711-quantised as sent), every slot.
        assert!(
            right[..150 * 160].iter().all(|&x| x == 1000),
            "{:?}",
            &right[..4]
        );
        // Left: the caller, every slot, in the slot it arrived in.
        let caller = g711::ulaw_decode(g711::ulaw_encode(-500));
        assert!(
            left.iter().all(|&x| x == caller),
            "no caller packet is missing"
        );
    }

    #[test]
    fn a_recording_started_after_a_stall_holds_no_slot_from_before_it() {
        // The worker's tick schedule and this core, on a fake clock: the worker is not
        // scheduled from 40 ms to 431 ms, and the start of a recording (asked for at
        // 420 ms) is applied on the wake-up at 431 ms; the stop, asked for at 2,429 ms, on
        // the tick at 2,440 ms. The recording is the 2 s between, not the stall too.
        use crate::media::plane::schedule::TickSchedule;
        let t0 = Instant::now();
        let mut sched = TickSchedule::new(t0, Duration::from_millis(20));
        let mut core = started_core(sched.wake(t0).at);
        let mut net = Net::default();
        core.on_tick(t0, &mut net);
        core.on_tick(sched.wake(ms(t0, 20)).at, &mut net);
        let (tx, rx) = sync_channel(64);
        let tick = sched.wake(ms(t0, 431));
        assert_eq!(tick.at, ms(t0, 420));
        core.command(
            MediaCommand::StartRecording(FeedSpec {
                id: RecordingId::generate(Utc::now()),
                mode: ChannelMode::Stereo,
                writer: tx,
            }),
            tick.at,
            Utc::now(),
        );
        core.on_tick(ms(t0, 431), &mut net);
        loop {
            let now = sched.deadline();
            let tick = sched.wake(now);
            if now >= ms(t0, 2_440) {
                core.command(MediaCommand::StopRecording, tick.at, Utc::now());
                core.on_tick(now, &mut net);
                break;
            }
            core.on_tick(now, &mut net);
        }
        let fed = events(&mut core).into_iter().find_map(|e| match e {
            MediaEvent::RecordingFed { slots, .. } => Some(slots),
            _ => None,
        });
        assert_eq!(fed, Some(101), "420 ms .. 2,440 ms");
        let finish = std::iter::from_fn(|| rx.try_recv().ok()).find_map(|j| match j {
            Job::Finish {
                slots,
                started_at,
                ended_at,
                ..
            } => Some((slots, (ended_at - started_at).num_milliseconds())),
            _ => None,
        });
        assert_eq!(finish, Some((101, 2_020)));
    }

    #[test]
    fn a_bridge_relays_same_codec_bytes_untouched_and_transcodes_otherwise() {
        let t0 = Instant::now();
        let mut core = started_core(t0);
        core.command(
            MediaCommand::FarMedia {
                config: leg_config(Codec::Pcmu, addr(FAR_PEER, 6000), 2),
            },
            t0,
            Utc::now(),
        );
        core.command(MediaCommand::Bridge(true), t0, Utc::now());
        let mut net = Net::default();
        // Every μ-law byte, negative zero (0x7F) included, from the far leg.
        let payload: Vec<u8> = (96..256u32).map(|b| b as u8).collect();
        assert!(payload.contains(&0x7F));
        let caller_bytes: Vec<u8> = vec![0x13; 160];
        for k in 0..4u16 {
            let now = ms(t0, 20 * u64::from(k) + 1);
            core.handle_datagram(
                Leg::Far,
                false,
                &peer_packet(k, Codec::Pcmu, &payload),
                addr(FAR_PEER, 6000),
                now,
            );
            core.handle_datagram(
                Leg::Caller,
                false,
                &peer_packet(k, Codec::Pcmu, &caller_bytes),
                addr(CALLER_PEER, 4000),
                now,
            );
            core.on_tick(now, &mut net);
            let to_caller = rtp_of(&mut net, Leg::Caller);
            let to_far = rtp_of(&mut net, Leg::Far);
            assert_eq!(to_caller.len(), 1);
            assert_eq!(&to_caller[0][12..], &payload[..], "far -> caller untouched");
            assert_eq!(
                &to_far[0][12..],
                &caller_bytes[..],
                "caller -> far untouched"
            );
        }
        // The far leg renegotiates to A-law: transcoded both ways.
        core.command(
            MediaCommand::FarMedia {
                config: leg_config(Codec::Pcma, addr(FAR_PEER, 6000), 2),
            },
            ms(t0, 80),
            Utc::now(),
        );
        let alaw = vec![g711::alaw_encode(3000); 160];
        let now = ms(t0, 81);
        core.handle_datagram(
            Leg::Far,
            false,
            &peer_packet(9, Codec::Pcma, &alaw),
            addr(FAR_PEER, 6000),
            now,
        );
        core.on_tick(now, &mut net);
        let to_caller = rtp_of(&mut net, Leg::Caller);
        let want = g711::ulaw_encode(g711::alaw_decode(alaw[0]));
        assert!(to_caller[0][12..].iter().all(|&b| b == want));
        // The far leg ends: the caller hears silence again.
        core.command(MediaCommand::EndFar, ms(t0, 100), Utc::now());
        net.sent.clear();
        core.on_tick(ms(t0, 101), &mut net);
        let to_caller = rtp_of(&mut net, Leg::Caller);
        assert!(to_caller[0][12..].iter().all(|&b| b == g711::ULAW_SILENCE));
        assert!(rtp_of(&mut net, Leg::Far).is_empty());
    }

    #[test]
    fn packets_from_a_foreign_source_are_neither_heard_nor_relayed() {
        // sec's latching rule on the media plane: once a leg has latched onto its peer,
        // RTP from any other address is dropped before the bridge relay sees it.
        let t0 = Instant::now();
        let mut core = started_core(t0);
        core.command(
            MediaCommand::FarMedia {
                config: leg_config(Codec::Pcmu, addr(FAR_PEER, 6000), 2),
            },
            t0,
            Utc::now(),
        );
        core.command(MediaCommand::Bridge(true), t0, Utc::now());
        let mut net = Net::default();
        let good = vec![0x13u8; 160];
        let evil = vec![0x55u8; 160];
        for (leg, peer) in [(Leg::Caller, CALLER_PEER), (Leg::Far, FAR_PEER)] {
            let port = if leg == Leg::Caller { 4000 } else { 6000 };
            core.handle_datagram(
                leg,
                false,
                &peer_packet(0, Codec::Pcmu, &good),
                addr(peer, port),
                ms(t0, 1),
            );
        }
        core.on_tick(ms(t0, 1), &mut net);
        assert!(rtp_of(&mut net, Leg::Far)
            .iter()
            .any(|p| p[12..] == good[..]));
        net.sent.clear();
        for k in 1..4u16 {
            let now = ms(t0, 20 * u64::from(k) + 1);
            for (leg, port) in [(Leg::Caller, 4000), (Leg::Far, 6000)] {
                // Another host, and another port of the peer's own host.
                for from in [addr(66, port), addr(CALLER_PEER, port + 2)] {
                    core.handle_datagram(
                        leg,
                        false,
                        &peer_packet(k, Codec::Pcmu, &evil),
                        from,
                        now,
                    );
                }
            }
            core.on_tick(now, &mut net);
            for leg in [Leg::Caller, Leg::Far] {
                assert!(
                    rtp_of(&mut net, leg).iter().all(|p| p[12..] != evil[..]),
                    "foreign audio relayed to {leg:?}"
                );
            }
        }
    }

    #[test]
    fn a_full_tap_drops_and_counts_instead_of_waiting() {
        let t0 = Instant::now();
        let stats = Arc::new(MediaStats::default());
        let mut core = MediaCore::new(stats.clone(), tracing::Span::none());
        core.command(
            MediaCommand::StartCaller {
                config: leg_config(Codec::Pcmu, addr(CALLER_PEER, 4000), 1),
                hold: false,
            },
            t0,
            Utc::now(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(2);
        let dropped = Arc::new(AtomicU64::new(0));
        core.command(
            MediaCommand::OpenTap(TapSender::new(1, tx, dropped.clone())),
            t0,
            Utc::now(),
        );
        let mut net = Net::default();
        for k in 0..5u16 {
            let now = ms(t0, 20 * u64::from(k));
            core.handle_datagram(
                Leg::Caller,
                false,
                &peer_packet(k, Codec::Pcmu, &[g711::ulaw_encode(k as i16 * 100); 160]),
                addr(CALLER_PEER, 4000),
                now,
            );
            core.on_tick(now, &mut net);
        }
        assert_eq!(dropped.load(Ordering::Relaxed), 3);
        assert_eq!(stats.tap_dropped.load(Ordering::Relaxed), 3);
        let first = rx.try_recv().unwrap();
        assert_eq!(first.samples[0], g711::ulaw_decode(g711::ulaw_encode(0)));
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err());
        assert_eq!(stats.packets_received.load(Ordering::Relaxed), 5);
        assert_eq!(stats.packets_sent.load(Ordering::Relaxed), 5);
        // Closed: nothing more is offered.
        core.command(MediaCommand::CloseTap(1), ms(t0, 100), Utc::now());
        core.handle_datagram(
            Leg::Caller,
            false,
            &peer_packet(5, Codec::Pcmu, &[0xFF; 160]),
            addr(CALLER_PEER, 4000),
            ms(t0, 100),
        );
        core.on_tick(ms(t0, 100), &mut net);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn close_hands_the_taps_the_caller_frames_read_in_its_tick() {
        // The worker reads the sockets, then finds the call detached and closes it without
        // an `on_tick`: the packet it just read still reaches the bot's tap.
        let t0 = Instant::now();
        let mut core = MediaCore::new(Arc::new(MediaStats::default()), tracing::Span::none());
        core.command(
            MediaCommand::StartCaller {
                config: leg_config(Codec::Pcmu, addr(CALLER_PEER, 4000), 1),
                hold: false,
            },
            t0,
            Utc::now(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        core.command(
            MediaCommand::OpenTap(TapSender::new(1, tx, Arc::new(AtomicU64::new(0)))),
            t0,
            Utc::now(),
        );
        let mut net = Net::default();
        for k in 0..3u16 {
            let now = ms(t0, 20 * u64::from(k));
            core.handle_datagram(
                Leg::Caller,
                false,
                &peer_packet(k, Codec::Pcmu, &[g711::ulaw_encode(1000); 160]),
                addr(CALLER_PEER, 4000),
                now,
            );
            if k < 2 {
                core.on_tick(now, &mut net);
            }
        }
        let first = rx.try_recv().expect("first frame");
        assert!(rx.try_recv().is_ok());
        assert!(rx.try_recv().is_err(), "the third packet is not ticked yet");
        core.close(ms(t0, 40));
        let last = rx
            .try_recv()
            .expect("the last packet reaches the tap at close");
        assert_eq!(last.rtp_ts, first.rtp_ts.wrapping_add(2 * 160));
        assert_ne!(last.samples[0], 0);
    }
}
