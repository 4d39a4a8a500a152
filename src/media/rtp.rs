//! `RtpSession`: the IO-free media state machine for one call leg (8 kHz G.711, 20 ms).
//!
//! The driver owns the sockets and the clock. It feeds datagrams in with
//! [`handle_datagram`](RtpSession::handle_datagram) / [`handle_rtcp`](RtpSession::handle_rtcp),
//! wakes at [`poll_timeout`](RtpSession::poll_timeout) to call
//! [`handle_timeout`](RtpSession::handle_timeout), and after every input drains
//! [`poll_transmit`](RtpSession::poll_transmit) and [`poll_event`](RtpSession::poll_event).
//! Everything here is deterministic given the inputs and the `Instant`s passed in.
//!
//! Sending is a schedule on the monotonic clock: slot `n` is due at `start + n * 20 ms` and
//! carries RTP timestamp `base + n * 160`, so a late driver never accumulates drift.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;
use tracing::{debug, info, warn};

use super::codec::{Codec, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE};
use super::dtmf::{self, DtmfDigit, DtmfError, DtmfPacket, DtmfReceiver, EventPayload};
use super::g711;
use super::jitter::{Entry, Insert, JitterBuffer, Released};
use super::packet::{self, PacketError, RtpHeader};
use super::playback::{Audio, MarkEvent, PlaybackQueue, Taken};
use super::rtcp::{self, ReportBlock, RtcpError, RtcpPacket, SdesChunk, SenderInfo};
use super::seq::{SeqTracker, SeqUpdate};

pub const DEFAULT_INACTIVITY_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_JITTER_DEPTH: Duration = Duration::from_millis(60);
pub const DEFAULT_RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// A driver later than this skips the missed slots instead of bursting them out.
pub const MAX_SEND_LATENESS: Duration = Duration::from_millis(200);
/// Slots of audio between consecutive DTMF events, so receivers see distinct presses.
const DTMF_GAP_SLOTS: u32 = 2;
/// Relayed frames (bridge) waiting to be sent at most: 60 ms. Older ones are dropped, so a
/// far leg that bursts cannot add latency that stays.
pub const MAX_RELAY_FRAMES: usize = 3;
/// Spare sample buffers kept for reuse (see [`RtpSession::recycle`]).
const POOL_MAX: usize = 16;
/// How long after the session starts (or after a re-INVITE's new address) RTP from an address
/// other than the SDP's may still be latched onto (NAT); after that only the SDP address or
/// the latched one is accepted.
pub const DEFAULT_LATCH_WINDOW: Duration = Duration::from_secs(10);
/// Foreign packets are logged at most this often per session.
const FOREIGN_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Sequential packets a new SSRC must send before it replaces the current stream, so a
/// stray late packet from an old stream does not reset everything (RFC 3550 probation).
const SSRC_PROBATION: usize = 2;

/// Settings for one leg, mostly from the SDP negotiation.
#[derive(Debug, Clone)]
pub struct RtpConfig {
    pub codec: Codec,
    /// The payload type negotiated for `codec` (normally its static one).
    pub payload_type: u8,
    /// Negotiated `telephone-event/8000` payload type, if any.
    pub telephone_event_pt: Option<u8>,
    /// Where the SDP says to send. RTP is accepted from this address, or latched once onto the
    /// first source within `latch_window` (NAT); see [`RtpSession`] "Media latching".
    pub remote: Option<SocketAddr>,
    /// See [`DEFAULT_LATCH_WINDOW`].
    pub latch_window: Duration,
    /// Report `Inactive` after this long without valid RTP (`Duration::ZERO`: never).
    pub inactivity_timeout: Duration,
    /// How long a hole in the sequence may delay later frames before it becomes a gap.
    pub jitter_depth: Duration,
    /// Send encoded silence when nothing is queued (keeps NATs and trunks happy).
    pub send_silence: bool,
    /// Time between our RTCP reports. Fixed rather than randomised (RFC 3550 §6.2): with a
    /// single peer there is no report storm to avoid.
    pub rtcp_interval: Duration,
    /// SDES CNAME; derived from the SSRC when not set.
    pub cname: Option<String>,
    /// Wall-clock time at session construction, for SR NTP timestamps. Without it SR
    /// timestamps count from the session start: fine for RTT, meaningless as dates.
    pub wall_clock_at_start: Option<SystemTime>,
    /// Picks the SSRC and the initial sequence number and timestamp: random in
    /// production, fixed in tests.
    pub seed: u64,
    /// The call's span. The session runs on a media worker, outside the call task, so its
    /// log lines name it explicitly to carry the Call-ID.
    pub span: tracing::Span,
}

impl RtpConfig {
    pub fn new(codec: Codec, payload_type: u8, telephone_event_pt: Option<u8>) -> Self {
        RtpConfig {
            codec,
            payload_type,
            telephone_event_pt,
            remote: None,
            latch_window: DEFAULT_LATCH_WINDOW,
            inactivity_timeout: DEFAULT_INACTIVITY_TIMEOUT,
            jitter_depth: DEFAULT_JITTER_DEPTH,
            send_silence: true,
            rtcp_interval: DEFAULT_RTCP_INTERVAL,
            cname: None,
            wall_clock_at_start: None,
            seed: 0,
            span: tracing::Span::none(),
        }
    }
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    pub dest: SocketAddr,
    pub payload: Vec<u8>,
    /// Goes out on the RTCP socket rather than the RTP one.
    pub rtcp: bool,
    /// For RTP, the linear audio of this slot as sent (for recording the outbound side):
    /// the frame, silence for idle slots, and silence for telephone-event packets (whose
    /// tone we don't synthesise). `None` for RTCP.
    pub audio: Option<Vec<i16>>,
}

/// Caller-owned buffers that [`RtpSession::poll_transmit_into`] writes a datagram into; reused
/// from packet to packet so steady-state sending allocates nothing.
#[derive(Debug, Clone)]
pub struct TxBuf {
    /// The datagram (cleared and rewritten on every call).
    pub data: Vec<u8>,
    /// For RTP: this slot's linear audio as sent (see [`Transmit::audio`]).
    pub audio: [i16; FRAME_SAMPLES],
}

impl Default for TxBuf {
    fn default() -> Self {
        TxBuf {
            data: Vec::with_capacity(packet::HEADER_LEN + 2 * FRAME_SAMPLES),
            audio: [0; FRAME_SAMPLES],
        }
    }
}

/// What [`RtpSession::poll_transmit_into`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxMeta {
    pub dest: SocketAddr,
    pub rtcp: bool,
    /// For RTP: the send slot (20 ms since the session's start) whose audio is in
    /// [`TxBuf::audio`]. `None` for RTCP.
    pub slot: Option<u64>,
}

/// What the session reports to the call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtpEvent {
    /// One received frame, in sequence order (usually 160 samples). `lost` frames are
    /// silence standing in for packets that never arrived.
    Audio {
        samples: Vec<i16>,
        rtp_ts: u32,
        lost: bool,
    },
    Dtmf(DtmfDigit),
    /// We now send to this address (symmetric RTP latched onto the peer's source).
    RemoteAddrChanged(SocketAddr),
    /// No valid RTP for the inactivity timeout. Fires once until RTP resumes.
    Inactive {
        since: Duration,
    },
    /// All audio queued before this mark has been sent.
    MarkPlayed(u64),
    /// The mark's audio was dropped by `clear_audio` (barge-in).
    MarkCleared(u64),
}

/// Why an input was refused. Refused datagrams change nothing but counters.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtpError {
    #[error("not a valid RTP packet: {0}")]
    Packet(#[from] PacketError),
    #[error("RTP payload type {0} is not negotiated on this leg")]
    UnknownPayloadType(u8),
    #[error("bad telephone-event: {0}")]
    Dtmf(#[from] DtmfError),
    #[error("cannot send DTMF: no telephone-event payload type was negotiated")]
    DtmfNotNegotiated,
    #[error("not a valid RTCP packet: {0}")]
    Rtcp(#[from] RtcpError),
    #[error("RTP from {0}, which is not the peer's address")]
    ForeignSource(SocketAddr),
}

/// Counters for RTCP, logs and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtpStats {
    pub packets_sent: u64,
    /// Payload octets sent (as in the SR octet count).
    pub bytes_sent: u64,
    /// Valid RTP packets received (audio and telephone-event).
    pub packets_received: u64,
    /// Payload octets received.
    pub bytes_received: u64,
    /// Expected minus received, over every remote stream so far.
    pub packets_lost: i64,
    pub duplicates: u64,
    /// Packets that arrived after their slot had been given up as lost.
    pub late: u64,
    /// Silence frames emitted for missing packets.
    pub concealed_frames: u64,
    /// Datagrams that did not parse as RTP, or bad telephone-event payloads.
    pub invalid: u64,
    pub unknown_payload_type: u64,
    /// Packets far outside the sequence window (possible restart awaiting confirmation).
    pub discarded: u64,
    /// Send slots skipped because the driver was more than 200 ms late.
    pub send_slots_skipped: u64,
    /// RTP/RTCP from an address other than the peer's (dropped: injection / "RTP bleed").
    pub foreign: u64,
    /// RFC 3550 interarrival jitter of the current stream.
    pub jitter: Duration,
    /// Round-trip time from the peer's last report about us.
    pub rtt: Option<Duration>,
    /// The peer's view of our stream, from its last report block about us.
    pub remote_fraction_lost: Option<u8>,
    pub remote_cumulative_lost: Option<i32>,
    /// The peer announced the end of its stream with an RTCP BYE.
    pub remote_bye: bool,
}

#[derive(Debug)]
struct Stream {
    ssrc: u32,
    seq: SeqTracker,
}

/// A different SSRC on probation.
#[derive(Debug)]
struct Candidate {
    ssrc: u32,
    next_seq: u16,
    frames: Vec<(u16, u32, Vec<i16>)>,
}

/// The DTMF event being sent.
#[derive(Debug)]
struct DtmfTx {
    packets: Vec<DtmfPacket>,
    index: usize,
    timestamp: u32,
    payload_type: u8,
}

#[derive(Debug, Clone, Copy)]
struct LastSr {
    ssrc: u32,
    middle_ntp: u32,
    received: Instant,
}

/// Media state for one call leg. See the module docs for how to drive it.
#[derive(Debug)]
pub struct RtpSession {
    codec: Codec,
    payload_type: u8,
    te_pt: Option<u8>,
    send_silence: bool,
    inactivity_timeout: Option<Duration>,
    rtcp_interval: Duration,
    cname: String,

    start: Instant,
    ntp_at_start: u64,

    ssrc: u32,
    next_seq: u16,
    ts_base: u32,

    next_slot: u64,
    /// Re-anchor `next_slot` to the clock before sending: we were idle and the driver may
    /// not have woken for the slots in between.
    resync: bool,
    hold: bool,
    last_audio_slot: Option<u64>,
    last_sent_slot: Option<u64>,
    playback: PlaybackQueue,
    /// Frames relayed from the other leg of a bridge: (payload, its codec).
    relay: VecDeque<([u8; FRAME_SAMPLES], Codec)>,
    relay_dropped: u64,
    /// Sample buffers handed back by the consumer of `Audio` events, for reuse.
    pool: Vec<Vec<i16>>,
    dtmf_queue: VecDeque<(char, u32)>,
    dtmf_tx: Option<DtmfTx>,
    dtmf_gap: u32,

    send_addr: Option<SocketAddr>,
    latched: bool,
    rtcp_addr: Option<SocketAddr>,
    /// The address the SDP gave (always accepted until another one is latched).
    sdp_addr: Option<SocketAddr>,
    latch_window: Duration,
    /// When the current latch window opened (`None`: at the next packet, after a re-INVITE).
    latch_window_start: Option<Instant>,
    foreign_logged_at: Option<Instant>,
    foreign_since_log: u64,

    stream: Option<Stream>,
    candidate: Option<Candidate>,
    lost_in_old_streams: i64,
    jitter: JitterBuffer,
    dtmf_rx: DtmfReceiver,
    last_rx: Instant,
    inactive_fired: bool,

    rtcp_due: Instant,
    bye_pending: bool,
    sent_since_report: bool,
    last_sr: Option<LastSr>,

    stats: RtpStats,
    events: VecDeque<RtpEvent>,
    /// See [`RtpConfig::span`].
    span: tracing::Span,
}

impl RtpSession {
    /// A session whose send clock starts at `now`.
    pub fn new(config: RtpConfig, now: Instant) -> Self {
        let mut rng = StdRng::seed_from_u64(config.seed);
        let rtcp_interval = config.rtcp_interval.max(Duration::from_millis(100));
        let ssrc: u32 = rng.gen();
        let next_seq: u16 = rng.gen();
        let ts_base: u32 = rng.gen();
        let ntp_at_start = config
            .wall_clock_at_start
            .map(rtcp::ntp_from_system_time)
            .unwrap_or(0);
        debug!(parent: &config.span, ssrc, codec = config.codec.name(), remote = ?config.remote, "RTP session created");
        let cname = config
            .cname
            .unwrap_or_else(|| format!("voxgate-{ssrc:08x}"));
        RtpSession {
            codec: config.codec,
            payload_type: config.payload_type,
            te_pt: config.telephone_event_pt,
            send_silence: config.send_silence,
            inactivity_timeout: non_zero(config.inactivity_timeout),
            rtcp_interval,
            cname,
            start: now,
            ntp_at_start,
            ssrc,
            next_seq,
            ts_base,
            next_slot: 0,
            resync: true,
            hold: false,
            last_audio_slot: None,
            last_sent_slot: None,
            playback: PlaybackQueue::new(),
            relay: VecDeque::with_capacity(MAX_RELAY_FRAMES + 1),
            relay_dropped: 0,
            pool: Vec::new(),
            dtmf_queue: VecDeque::new(),
            dtmf_tx: None,
            dtmf_gap: 0,
            send_addr: config.remote,
            latched: false,
            rtcp_addr: None,
            sdp_addr: config.remote,
            latch_window: config.latch_window,
            latch_window_start: Some(now),
            foreign_logged_at: None,
            foreign_since_log: 0,
            stream: None,
            candidate: None,
            lost_in_old_streams: 0,
            jitter: JitterBuffer::new(config.jitter_depth),
            dtmf_rx: DtmfReceiver::default(),
            last_rx: now,
            inactive_fired: false,
            rtcp_due: now + rtcp_interval,
            bye_pending: false,
            sent_since_report: false,
            last_sr: None,
            stats: RtpStats::default(),
            events: VecDeque::new(),
            span: config.span,
        }
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Feeds one datagram received on the RTP socket. Refused datagrams are counted in
    /// the stats and logged at debug level.
    pub fn handle_datagram(&mut self, buf: &[u8], from: SocketAddr, now: Instant) {
        let _ = self.try_handle_datagram(buf, from, now);
    }

    /// [`handle_datagram`](Self::handle_datagram), also saying why a datagram was refused.
    pub fn try_handle_datagram(
        &mut self,
        buf: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<(), RtpError> {
        let pkt = packet::parse(buf).inspect_err(|e| {
            self.stats.invalid += 1;
            debug!(parent: &self.span, %from, error = %e, "dropping non-RTP datagram");
        })?;
        let h = pkt.header;
        if !self.accept_source(from, now) {
            self.foreign(from, now);
            return Err(RtpError::ForeignSource(from));
        }
        if Some(h.payload_type) == self.te_pt {
            return self.handle_telephone_event(h, pkt.payload, from, now);
        }
        let codec = if h.payload_type == self.payload_type {
            Some(self.codec)
        } else {
            // Static G.711 types decode whatever was negotiated: be liberal in what we take.
            Codec::from_payload_type(h.payload_type)
        };
        let Some(codec) = codec else {
            self.stats.unknown_payload_type += 1;
            debug!(parent: &self.span, pt = h.payload_type, %from, "dropping RTP with unknown payload type");
            // Comfort noise and the like still occupy sequence numbers and prove liveness.
            if self.stream_ssrc() == Some(h.ssrc) {
                self.note_alive(now);
                self.ingest(h.sequence, Entry::Skip, None, now);
            }
            return Err(RtpError::UnknownPayloadType(h.payload_type));
        };
        let mut samples = self.spare_buffer();
        g711::decode(codec, pkt.payload, &mut samples);
        self.stats.packets_received += 1;
        self.stats.bytes_received += pkt.payload.len() as u64;
        self.note_alive(now);
        match &self.stream {
            None => self.start_stream(h.ssrc, h.sequence, h.timestamp, samples, now),
            Some(s) if s.ssrc != h.ssrc => self.consider_new_ssrc(h, samples, now),
            Some(_) => {
                let entry = Entry::Audio {
                    timestamp: h.timestamp,
                    samples,
                };
                self.ingest(h.sequence, entry, Some(h.timestamp), now);
            }
        }
        Ok(())
    }

    /// Feeds one datagram received on the RTCP socket; bad ones are logged and ignored.
    pub fn handle_rtcp(&mut self, buf: &[u8], from: SocketAddr, now: Instant) {
        let _ = self.try_handle_rtcp(buf, from, now);
    }

    /// [`handle_rtcp`](Self::handle_rtcp), also saying why a datagram was refused.
    pub fn try_handle_rtcp(
        &mut self,
        buf: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<(), RtpError> {
        // One report every few seconds: the parser's own lines carry the call.
        let packets = self.span.in_scope(|| rtcp::parse_compound(buf));
        let packets = packets.inspect_err(|e| {
            debug!(parent: &self.span, %from, error = %e, "dropping bad RTCP");
        })?;
        // RTCP comes from the RTP peer's host (its port is RTP + 1, or muxed): anything else is
        // foreign.
        let peer_ip = self.send_addr.map(|a| a.ip());
        if self.latched && peer_ip != Some(from.ip()) {
            self.foreign(from, now);
            return Err(RtpError::ForeignSource(from));
        }
        if self.rtcp_addr != Some(from) {
            debug!(parent: &self.span, %from, "RTCP peer address latched");
            self.rtcp_addr = Some(from);
        }
        for p in packets {
            match p {
                RtcpPacket::SenderReport {
                    ssrc,
                    info,
                    reports,
                } => {
                    self.last_sr = Some(LastSr {
                        ssrc,
                        middle_ntp: rtcp::ntp_middle(info.ntp_timestamp),
                        received: now,
                    });
                    self.take_reports(&reports, now);
                }
                RtcpPacket::ReceiverReport { reports, .. } => self.take_reports(&reports, now),
                RtcpPacket::Goodbye { sources, reason } => {
                    let ours = match self.stream_ssrc() {
                        Some(s) => sources.contains(&s),
                        None => true,
                    };
                    if ours {
                        info!(parent: &self.span,
                            reason = reason.as_deref().unwrap_or(""),
                            "peer sent RTCP BYE"
                        );
                        self.stats.remote_bye = true;
                    }
                }
                RtcpPacket::SourceDescription(_) | RtcpPacket::Unknown { .. } => {}
            }
        }
        Ok(())
    }

    /// Processes timers due at `now`: jitter-buffer holes, DTMF end timeout, inactivity.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.release_audio(now);
        if self.dtmf_rx.poll_timeout().is_some() {
            // Only while a key is down, so not a span entered every tick.
            let _in_call = self.span.enter();
            self.dtmf_rx.handle_timeout(now);
        }
        self.drain_digits();
        if let Some(limit) = self.inactivity_timeout {
            let since = now.saturating_duration_since(self.last_rx);
            if !self.inactive_fired && since >= limit {
                warn!(parent: &self.span,
                    since_ms = since.as_millis() as u64,
                    "no RTP received; leg inactive"
                );
                self.inactive_fired = true;
                self.events.push_back(RtpEvent::Inactive { since });
            }
        }
    }

    // ---- outputs ------------------------------------------------------------------------

    /// The earliest instant at which `handle_timeout` / `poll_transmit` have work.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.rtcp_due;
        if self.wants_to_send() {
            t = t.min(self.slot_due(self.next_slot));
        }
        if let Some(d) = self.jitter.next_deadline() {
            t = t.min(d);
        }
        if let Some(d) = self.dtmf_rx.poll_timeout() {
            t = t.min(d);
        }
        if let (Some(limit), false) = (self.inactivity_timeout, self.inactive_fired) {
            t = t.min(self.last_rx + limit);
        }
        Some(t)
    }

    /// The next datagram due at `now`, RTCP first. Call until `None`: a late driver gets
    /// every due packet back to back. Allocates the datagram; the media workers use
    /// [`poll_transmit_into`](Self::poll_transmit_into).
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Transmit> {
        let mut buf = TxBuf::default();
        let meta = self.poll_transmit_into(now, &mut buf)?;
        Some(Transmit {
            dest: meta.dest,
            payload: buf.data,
            rtcp: meta.rtcp,
            audio: meta.slot.map(|_| buf.audio.to_vec()),
        })
    }

    /// [`poll_transmit`](Self::poll_transmit) into caller-owned buffers: no allocation.
    pub fn poll_transmit_into(&mut self, now: Instant, out: &mut TxBuf) -> Option<TxMeta> {
        if let Some(dest) = self.poll_rtcp(now, &mut out.data) {
            return Some(TxMeta {
                dest,
                rtcp: true,
                slot: None,
            });
        }
        if !self.wants_to_send() {
            self.resync = true;
            return None;
        }
        if self.resync {
            self.resync = false;
            self.next_slot = self.next_slot.max(self.slot_at(now));
        }
        loop {
            let due = self.slot_due(self.next_slot);
            if due > now {
                return None;
            }
            if now - due > MAX_SEND_LATENESS {
                let target = self.slot_at(now);
                let skipped = target - self.next_slot;
                let late_ms = (now - due).as_millis() as u64;
                if self.last_sent_slot.map(|s| s + 1) == Some(self.next_slot) {
                    warn!(parent: &self.span,
                        late_ms,
                        skipped, "RTP send clock fell behind; skipping ahead"
                    );
                } else {
                    debug!(parent: &self.span, late_ms, skipped, "RTP sending resumes after idle slots");
                }
                self.stats.send_slots_skipped += skipped;
                self.next_slot = target;
            }
            let slot = self.next_slot;
            self.next_slot += 1;
            if let Some(dest) = self.produce(slot, out) {
                self.last_sent_slot = Some(slot);
                if !self.wants_to_send() {
                    self.resync = true;
                }
                return Some(TxMeta {
                    dest,
                    rtcp: false,
                    slot: Some(slot),
                });
            }
        }
    }

    pub fn poll_event(&mut self) -> Option<RtpEvent> {
        self.events.pop_front()
    }

    // ---- commands -----------------------------------------------------------------------

    /// Appends audio (8 kHz linear) to the outgoing queue (copied; bounded, see
    /// [`MAX_OWNED_SAMPLES`](super::playback::MAX_OWNED_SAMPLES)).
    pub fn queue_audio(&mut self, samples: &[i16]) {
        self.playback.push_audio(samples);
    }

    /// Appends shared audio (a prompt, TTS) to the outgoing queue without copying it.
    pub fn queue_shared(&mut self, audio: Audio) {
        self.playback.push_shared(audio);
    }

    /// Relays one 20 ms payload from the other leg of a bridge. It goes out in the next
    /// slot the playback queue leaves free: unchanged when `codec` is this leg's codec,
    /// transcoded otherwise. At most [`MAX_RELAY_FRAMES`] wait; older ones are dropped.
    /// Payloads of another length are decoded and queued as audio.
    pub fn queue_relay(&mut self, codec: Codec, payload: &[u8]) {
        if payload.len() != FRAME_SAMPLES {
            let mut pcm = self.spare_buffer();
            g711::decode(codec, payload, &mut pcm);
            self.playback.push_audio(&pcm);
            self.recycle(pcm);
            return;
        }
        if self.relay.len() >= MAX_RELAY_FRAMES {
            self.relay.pop_front();
            self.relay_dropped += 1;
        }
        let mut frame = [0u8; FRAME_SAMPLES];
        frame.copy_from_slice(payload);
        self.relay.push_back((frame, codec));
    }

    /// Relayed frames dropped because more than [`MAX_RELAY_FRAMES`] were waiting.
    pub fn relay_dropped(&self) -> u64 {
        self.relay_dropped
    }

    /// Drops relayed frames not yet sent (the bridge ended).
    pub fn clear_relay(&mut self) {
        self.relay.clear();
    }

    /// Hands back the sample buffer of an `Audio` event so the next one reuses it.
    pub fn recycle(&mut self, mut samples: Vec<i16>) {
        if self.pool.len() < POOL_MAX && samples.capacity() >= FRAME_SAMPLES {
            samples.clear();
            self.pool.push(samples);
        }
    }

    fn spare_buffer(&mut self) -> Vec<i16> {
        self.pool
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FRAME_SAMPLES))
    }

    /// Places a mark after the audio queued so far; reported as `MarkPlayed` once it has
    /// all been sent (immediately on an empty queue) or `MarkCleared` on `clear_audio`.
    pub fn queue_mark(&mut self, id: u64) {
        self.playback.push_mark(id);
        self.drain_marks();
    }

    /// Drops all queued audio (barge-in).
    pub fn clear_audio(&mut self) {
        let ms = self.queued_ms();
        self.playback.clear();
        self.drain_marks();
        debug!(parent: &self.span, dropped_ms = ms, "outgoing audio cleared");
    }

    /// Milliseconds of audio waiting to be sent.
    pub fn queued_ms(&self) -> u64 {
        self.playback.queued_samples() as u64 * 1000 / u64::from(SAMPLE_RATE)
    }

    /// Queues an RFC 4733 key press. Audio pauses while it is sent and resumes after.
    pub fn send_dtmf(&mut self, digit: char, duration_ms: u32) -> Result<(), RtpError> {
        if self.te_pt.is_none() {
            return Err(RtpError::DtmfNotNegotiated);
        }
        dtmf::digit_to_event(digit).ok_or(DtmfError::InvalidDigit(digit))?;
        self.dtmf_queue.push_back((digit, duration_ms));
        Ok(())
    }

    /// Stops (or resumes) sending RTP, e.g. when the peer is sendonly/inactive. The slot
    /// clock keeps running, so timestamps stay true to elapsed time. RTCP continues.
    pub fn set_hold(&mut self, hold: bool) {
        if hold != self.hold {
            info!(parent: &self.span, hold, "RTP hold changed");
            self.hold = hold;
            self.resync = true;
        }
    }

    /// The call's span (see [`RtpConfig::span`]).
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// A new SDP address (re-INVITE): send there until the peer's packets say otherwise.
    pub fn set_remote(&mut self, addr: SocketAddr) {
        info!(parent: &self.span, %addr, "RTP remote set from SDP");
        self.send_addr = Some(addr);
        self.sdp_addr = Some(addr);
        self.latched = false;
        self.latch_window_start = None;
        self.rtcp_addr = None;
    }

    /// A renegotiated codec, its payload type, or telephone-event payload type (re-INVITE).
    pub fn set_codec(&mut self, codec: Codec, payload_type: u8, telephone_event_pt: Option<u8>) {
        info!(parent: &self.span, codec = codec.name(), payload_type, te_pt = ?telephone_event_pt, "RTP codec set");
        self.codec = codec;
        self.payload_type = payload_type;
        self.te_pt = telephone_event_pt;
        if telephone_event_pt.is_none() {
            self.dtmf_queue.clear();
            self.dtmf_tx = None;
        }
    }

    /// Changes the inactivity timeout (`Duration::ZERO`: never) and restarts its window at
    /// `now`, e.g. around hold.
    pub fn set_inactivity_timeout(&mut self, timeout: Duration, now: Instant) {
        self.inactivity_timeout = non_zero(timeout);
        self.last_rx = now;
        self.inactive_fired = false;
    }

    /// Sends an RTCP BYE (with a final report) at the next `poll_transmit`.
    pub fn send_bye(&mut self) {
        self.bye_pending = true;
    }

    // ---- getters ------------------------------------------------------------------------

    pub fn stats(&self) -> RtpStats {
        let mut s = self.stats;
        if let Some(stream) = &self.stream {
            s.packets_lost = self.lost_in_old_streams + stream.seq.cumulative_lost();
            s.jitter = ticks_to_duration(stream.seq.jitter());
        } else {
            s.packets_lost = self.lost_in_old_streams;
        }
        s
    }

    pub fn local_ssrc(&self) -> u32 {
        self.ssrc
    }

    pub fn remote_ssrc(&self) -> Option<u32> {
        self.stream_ssrc()
    }

    /// Where RTP currently goes.
    pub fn remote_addr(&self) -> Option<SocketAddr> {
        self.send_addr
    }

    pub fn codec(&self) -> Codec {
        self.codec
    }

    pub fn is_on_hold(&self) -> bool {
        self.hold
    }

    /// The payload type sent for the codec.
    pub fn payload_type(&self) -> u8 {
        self.payload_type
    }

    /// The send slot due at `now` (the latest slot whose time has come).
    pub fn send_slot_at(&self, now: Instant) -> u64 {
        self.slot_at(now)
    }

    /// When send slot `slot` is due.
    pub fn send_slot_instant(&self, slot: u64) -> Instant {
        self.slot_due(slot)
    }

    // ---- receive internals --------------------------------------------------------------

    fn handle_telephone_event(
        &mut self,
        h: RtpHeader,
        payload: &[u8],
        from: SocketAddr,
        now: Instant,
    ) -> Result<(), RtpError> {
        if let Err(e) = EventPayload::parse(payload) {
            self.stats.invalid += 1;
            debug!(parent: &self.span, %from, error = %e, "dropping bad telephone-event");
            return Err(e.into());
        }
        self.stats.packets_received += 1;
        self.stats.bytes_received += payload.len() as u64;
        self.note_alive(now);
        // Some senders (SIPp pcaps) use a separate SSRC for events: they come from the
        // latched address (checked above) but never replace the audio stream.
        if self.stream_ssrc() == Some(h.ssrc) {
            self.ingest(h.sequence, Entry::Skip, None, now);
        }
        {
            // telephone-event packets are few: the receiver's own lines carry the call.
            let _in_call = self.span.enter();
            self.dtmf_rx
                .handle_packet(h.ssrc, h.timestamp, h.marker, payload, now)?;
        }
        self.drain_digits();
        Ok(())
    }

    fn stream_ssrc(&self) -> Option<u32> {
        self.stream.as_ref().map(|s| s.ssrc)
    }

    fn note_alive(&mut self, now: Instant) {
        self.last_rx = now;
        if self.inactive_fired {
            info!(parent: &self.span, "RTP resumed");
            self.inactive_fired = false;
        }
    }

    /// Media latching: RTP is taken only from the address the SDP gave, or from the first
    /// source seen within the latch window (a peer behind NAT), which we then also send to.
    /// Once latched, the peer's address never moves mid-call except through a re-INVITE
    /// ([`set_remote`](Self::set_remote)), and a new SSRC is accepted only from it: anything
    /// else is dropped and counted (Asterisk CVE-2017-14099, "RTP bleed").
    fn accept_source(&mut self, from: SocketAddr, now: Instant) -> bool {
        if self.latched {
            return self.send_addr == Some(from);
        }
        let window_start = *self.latch_window_start.get_or_insert(now);
        if self.sdp_addr == Some(from)
            || now.saturating_duration_since(window_start) < self.latch_window
        {
            self.latch(from);
            return true;
        }
        false
    }

    /// Counts a packet from a foreign source; logs at most once a minute.
    fn foreign(&mut self, from: SocketAddr, now: Instant) {
        self.stats.foreign += 1;
        metrics::counter!("voxgate_rtp_foreign_packets_total").increment(1);
        let due = self
            .foreign_logged_at
            .is_none_or(|t| now.saturating_duration_since(t) >= FOREIGN_LOG_INTERVAL);
        if due {
            warn!(parent: &self.span,
                %from,
                peer = ?self.send_addr,
                suppressed = self.foreign_since_log,
                "RTP from a foreign source dropped"
            );
            self.foreign_logged_at = Some(now);
            self.foreign_since_log = 0;
        } else {
            self.foreign_since_log += 1;
        }
    }

    /// Symmetric RTP: send where the peer's packets come from.
    fn latch(&mut self, from: SocketAddr) {
        let previous = self.send_addr;
        self.latched = true;
        if previous == Some(from) {
            return;
        }
        self.send_addr = Some(from);
        if previous.map(|p| p.ip()) != Some(from.ip()) {
            self.rtcp_addr = None;
        }
        info!(parent: &self.span, %from, previous = ?previous, "RTP peer address latched");
        self.events.push_back(RtpEvent::RemoteAddrChanged(from));
    }

    fn start_stream(
        &mut self,
        ssrc: u32,
        seq: u16,
        timestamp: u32,
        samples: Vec<i16>,
        now: Instant,
    ) {
        info!(parent: &self.span, ssrc, seq, "remote RTP stream started");
        let tracker = SeqTracker::new(seq);
        let first = tracker.first_extended();
        self.stream = Some(Stream { ssrc, seq: tracker });
        self.candidate = None;
        let entry = Entry::Audio { timestamp, samples };
        self.place(SeqUpdate::Ahead(first), entry, Some(timestamp), now);
    }

    fn consider_new_ssrc(&mut self, h: RtpHeader, samples: Vec<i16>, now: Instant) {
        let confirmed = match &mut self.candidate {
            Some(c) if c.ssrc == h.ssrc && c.next_seq == h.sequence => {
                c.frames.push((h.sequence, h.timestamp, samples));
                c.next_seq = h.sequence.wrapping_add(1);
                c.frames.len() >= SSRC_PROBATION
            }
            _ => {
                debug!(parent: &self.span, ssrc = h.ssrc, "packet from another SSRC; on probation");
                self.candidate = Some(Candidate {
                    ssrc: h.ssrc,
                    next_seq: h.sequence.wrapping_add(1),
                    frames: vec![(h.sequence, h.timestamp, samples)],
                });
                false
            }
        };
        if !confirmed {
            return;
        }
        let Some(c) = self.candidate.take() else {
            return;
        };
        info!(parent: &self.span, old = ?self.stream_ssrc(), new = c.ssrc, "remote SSRC changed");
        self.flush_jitter();
        if let Some(old) = self.stream.take() {
            self.lost_in_old_streams += old.seq.cumulative_lost();
        }
        let mut frames = c.frames.into_iter();
        if let Some((seq, ts, samples)) = frames.next() {
            self.start_stream(c.ssrc, seq, ts, samples, now);
        }
        for (seq, ts, samples) in frames {
            let entry = Entry::Audio {
                timestamp: ts,
                samples,
            };
            self.ingest(seq, entry, Some(ts), now);
        }
    }

    /// Runs a packet of the current stream through sequence tracking and the jitter buffer.
    fn ingest(&mut self, seq: u16, entry: Entry, audio_ts: Option<u32>, now: Instant) {
        let Some(stream) = &mut self.stream else {
            return;
        };
        let update = stream.seq.update(seq);
        self.place(update, entry, audio_ts, now);
    }

    fn place(&mut self, update: SeqUpdate, entry: Entry, audio_ts: Option<u32>, now: Instant) {
        let ext = match update {
            SeqUpdate::Ahead(e) | SeqUpdate::Late(e) => e,
            SeqUpdate::Restarted(e) => {
                info!(parent: &self.span, "remote restarted its RTP sequence numbers");
                self.flush_jitter();
                e
            }
            SeqUpdate::Duplicate => {
                self.stats.duplicates += 1;
                return;
            }
            SeqUpdate::Discarded => {
                self.stats.discarded += 1;
                return;
            }
        };
        let arrival = self.rtp_clock_at(now);
        if let (Some(ts), Some(stream)) = (audio_ts, &mut self.stream) {
            stream.seq.update_jitter(ts, arrival);
        }
        match self.jitter.insert(ext, entry, now) {
            Insert::Accepted => {}
            Insert::Duplicate => self.stats.duplicates += 1,
            Insert::TooLate => self.stats.late += 1,
        }
        self.release_audio(now);
    }

    fn release_audio(&mut self, now: Instant) {
        while let Some(r) = self.jitter.pop(now) {
            self.push_released(r);
        }
    }

    fn flush_jitter(&mut self) {
        for r in self.jitter.drain() {
            self.push_released(r);
        }
    }

    fn push_released(&mut self, r: Released) {
        let event = match r {
            Released::Audio { timestamp, samples } => RtpEvent::Audio {
                samples,
                rtp_ts: timestamp,
                lost: false,
            },
            Released::Gap { timestamp, samples } => {
                self.stats.concealed_frames += 1;
                let mut silence = self.spare_buffer();
                silence.resize(samples, 0);
                RtpEvent::Audio {
                    samples: silence,
                    rtp_ts: timestamp,
                    lost: true,
                }
            }
        };
        self.events.push_back(event);
    }

    fn drain_digits(&mut self) {
        while let Some(d) = self.dtmf_rx.poll_digit() {
            self.events.push_back(RtpEvent::Dtmf(d));
        }
    }

    fn drain_marks(&mut self) {
        while let Some(m) = self.playback.poll_event() {
            self.events.push_back(match m {
                MarkEvent::Played(id) => RtpEvent::MarkPlayed(id),
                MarkEvent::Cleared(id) => RtpEvent::MarkCleared(id),
            });
        }
    }

    // ---- send internals -----------------------------------------------------------------

    fn wants_to_send(&self) -> bool {
        self.send_addr.is_some()
            && !self.hold
            && (self.send_silence
                || !self.playback.is_empty()
                || !self.relay.is_empty()
                || self.dtmf_tx.is_some()
                || !self.dtmf_queue.is_empty())
    }

    fn slot_due(&self, slot: u64) -> Instant {
        self.start + Duration::from_millis(FRAME_MS.saturating_mul(slot))
    }

    /// The latest slot due at or before `now`.
    fn slot_at(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_millis();
        u64::try_from(elapsed / u128::from(FRAME_MS)).unwrap_or(u64::MAX / 2)
    }

    fn slot_timestamp(&self, slot: u64) -> u32 {
        // Truncation is the RTP timestamp wrap.
        self.ts_base
            .wrapping_add((slot as u32).wrapping_mul(FRAME_SAMPLES as u32))
    }

    /// `now` on an 8 kHz clock that reads `ts_base` at `start`.
    fn rtp_clock_at(&self, now: Instant) -> u32 {
        let ticks = now.saturating_duration_since(self.start).as_nanos() * u128::from(SAMPLE_RATE)
            / 1_000_000_000;
        self.ts_base.wrapping_add(ticks as u32)
    }

    /// Fills one slot into `out`: a DTMF packet, an audio frame, silence, or nothing.
    fn produce(&mut self, slot: u64, out: &mut TxBuf) -> Option<SocketAddr> {
        let dest = self.send_addr?;
        let ts = self.slot_timestamp(slot);
        if self.dtmf_tx.is_none() && self.dtmf_gap == 0 {
            if let (Some(pt), Some((digit, ms))) = (self.te_pt, self.dtmf_queue.pop_front()) {
                if let Ok(packets) = dtmf::event_packets(digit, ms) {
                    debug!(parent: &self.span, %digit, duration_ms = ms, "sending DTMF");
                    self.dtmf_tx = Some(DtmfTx {
                        packets,
                        index: 0,
                        timestamp: ts,
                        payload_type: pt,
                    });
                }
            }
        }
        if let Some(tx) = &mut self.dtmf_tx {
            let packet = tx.packets.get(tx.index).copied();
            tx.index += 1;
            let (pt, event_ts) = (tx.payload_type, tx.timestamp);
            if tx.index >= tx.packets.len() {
                self.dtmf_tx = None;
                if !self.dtmf_queue.is_empty() {
                    self.dtmf_gap = DTMF_GAP_SLOTS;
                }
            }
            if let Some(p) = packet {
                self.write_rtp(pt, p.marker, event_ts, &p.payload, &mut out.data);
                out.audio.fill(0);
                return Some(dest);
            }
        }
        self.dtmf_gap = self.dtmf_gap.saturating_sub(1);
        let mut encoded = [0u8; FRAME_SAMPLES];
        let mut taken = self.playback.take(self.codec, &mut out.audio, &mut encoded);
        self.drain_marks();
        if taken == Taken::Nothing {
            if let Some((payload, codec)) = self.relay.pop_front() {
                g711::decode_into(codec, &payload, &mut out.audio);
                if codec == self.codec {
                    encoded = payload;
                    taken = Taken::Encoded;
                } else {
                    taken = Taken::Pcm;
                }
            }
        }
        match taken {
            Taken::Nothing if !self.send_silence => return None,
            Taken::Nothing => {
                out.audio.fill(0);
                encoded.fill(g711::silence_byte(self.codec));
            }
            Taken::Pcm => g711::encode_into(self.codec, &out.audio, &mut encoded),
            Taken::Encoded => {}
        }
        // A new talk-spurt (first packet, after DTMF, hold, idle or skipped slots).
        let marker = self.last_audio_slot.is_none_or(|last| last + 1 != slot);
        self.last_audio_slot = Some(slot);
        self.write_rtp(self.payload_type, marker, ts, &encoded, &mut out.data);
        Some(dest)
    }

    fn write_rtp(
        &mut self,
        payload_type: u8,
        marker: bool,
        timestamp: u32,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) {
        let header = RtpHeader {
            marker,
            payload_type,
            sequence: self.next_seq,
            timestamp,
            ssrc: self.ssrc,
        };
        self.next_seq = self.next_seq.wrapping_add(1);
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += payload.len() as u64;
        self.sent_since_report = true;
        out.clear();
        packet::write(&header, payload, out);
    }

    // ---- RTCP internals -----------------------------------------------------------------

    fn rtcp_dest(&self) -> Option<SocketAddr> {
        self.rtcp_addr.or_else(|| {
            let rtp = self.send_addr?;
            Some(SocketAddr::new(rtp.ip(), rtp.port().checked_add(1)?))
        })
    }

    fn poll_rtcp(&mut self, now: Instant, out: &mut Vec<u8>) -> Option<SocketAddr> {
        let due = now >= self.rtcp_due;
        if !due && !self.bye_pending {
            return None;
        }
        if due {
            self.rtcp_due += self.rtcp_interval;
            if self.rtcp_due <= now {
                self.rtcp_due = now + self.rtcp_interval;
            }
        }
        let Some(dest) = self.rtcp_dest() else {
            self.bye_pending = false;
            return None;
        };
        let payload = self.build_rtcp(now);
        out.clear();
        out.extend_from_slice(&payload);
        Some(dest)
    }

    fn build_rtcp(&mut self, now: Instant) -> Vec<u8> {
        let last_sr = self.last_sr;
        let report = self.stream.as_mut().map(|s| {
            let loss = s.seq.take_report();
            let (last_sr, delay) = match last_sr {
                Some(sr) if sr.ssrc == s.ssrc => (
                    sr.middle_ntp,
                    rtcp::to_short_ntp(now.saturating_duration_since(sr.received)),
                ),
                _ => (0, 0),
            };
            ReportBlock {
                ssrc: s.ssrc,
                fraction_lost: loss.fraction_lost,
                cumulative_lost: i32::try_from(loss.cumulative_lost).unwrap_or(i32::MAX),
                extended_highest_seq: loss.extended_highest as u32,
                jitter: s.seq.jitter(),
                last_sr,
                delay_since_last_sr: delay,
            }
        });
        let reports: Vec<ReportBlock> = report.into_iter().collect();
        let first = if self.sent_since_report {
            RtcpPacket::SenderReport {
                ssrc: self.ssrc,
                info: SenderInfo {
                    ntp_timestamp: self.ntp_at(now),
                    rtp_timestamp: self.rtp_clock_at(now),
                    // RTCP counters wrap at 32 bits by definition.
                    packet_count: self.stats.packets_sent as u32,
                    octet_count: self.stats.bytes_sent as u32,
                },
                reports,
            }
        } else {
            RtcpPacket::ReceiverReport {
                ssrc: self.ssrc,
                reports,
            }
        };
        self.sent_since_report = false;
        let mut packets = vec![
            first,
            RtcpPacket::SourceDescription(vec![SdesChunk {
                ssrc: self.ssrc,
                cname: Some(self.cname.clone()),
            }]),
        ];
        if self.bye_pending {
            self.bye_pending = false;
            packets.push(RtcpPacket::Goodbye {
                sources: vec![self.ssrc],
                reason: None,
            });
        }
        rtcp::write_compound(&packets)
    }

    fn ntp_at(&self, now: Instant) -> u64 {
        rtcp::ntp_add(self.ntp_at_start, now.saturating_duration_since(self.start))
    }

    /// Takes what the peer says about our stream; computes RTT from LSR/DLSR.
    fn take_reports(&mut self, reports: &[ReportBlock], now: Instant) {
        let now_mid = rtcp::ntp_middle(self.ntp_at(now));
        for rb in reports.iter().filter(|rb| rb.ssrc == self.ssrc) {
            self.stats.remote_fraction_lost = Some(rb.fraction_lost);
            self.stats.remote_cumulative_lost = Some(rb.cumulative_lost);
            if rb.last_sr != 0 {
                let rtt = now_mid
                    .wrapping_sub(rb.last_sr)
                    .wrapping_sub(rb.delay_since_last_sr);
                // A "negative" result means clock trouble or a bogus report.
                if rtt < 0x8000_0000 {
                    self.stats.rtt = Some(rtcp::from_short_ntp(rtt));
                }
            }
        }
    }
}

fn non_zero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

fn ticks_to_duration(ticks: u32) -> Duration {
    Duration::from_micros(u64::from(ticks) * 1_000_000 / u64::from(SAMPLE_RATE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    const PEER_SSRC: u32 = 0x1111_2222;
    const SIPP_DTMF_SSRC: u32 = 0x0E05_384E;
    const TE: u8 = 101;

    fn addr(host: u8, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, host)), port)
    }

    fn sdp_addr() -> SocketAddr {
        addr(10, 20_000)
    }

    fn ms(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    fn config() -> RtpConfig {
        let mut c = RtpConfig::new(Codec::Pcmu, 0, Some(TE));
        c.remote = Some(sdp_addr());
        c.seed = 1;
        c
    }

    fn seeded(seed: u64) -> RtpConfig {
        RtpConfig { seed, ..config() }
    }

    /// For receive-side tests: no silence, so `poll_timeout` shows only receive timers.
    fn rx_config() -> RtpConfig {
        let mut c = config();
        c.send_silence = false;
        c
    }

    fn rtp(ssrc: u32, seq: u16, ts: u32, pt: u8, marker: bool, payload: &[u8]) -> Vec<u8> {
        let mut buf = Vec::new();
        let header = RtpHeader {
            marker,
            payload_type: pt,
            sequence: seq,
            timestamp: ts,
            ssrc,
        };
        packet::write(&header, payload, &mut buf);
        buf
    }

    /// A PCMU frame whose samples all decode to `ulaw_decode(code)`.
    fn audio(ssrc: u32, seq: u16, ts: u32) -> Vec<u8> {
        rtp(ssrc, seq, ts, 0, false, &[0xFE; 160])
    }

    fn dtmf(ssrc: u32, seq: u16, ts: u32, marker: bool, event: u8, end: bool, dur: u16) -> Vec<u8> {
        let p = EventPayload {
            event,
            end,
            volume: 10,
            duration: dur,
        };
        rtp(ssrc, seq, ts, TE, marker, &p.to_bytes())
    }

    fn events(s: &mut RtpSession) -> Vec<RtpEvent> {
        std::iter::from_fn(|| s.poll_event()).collect()
    }

    /// (rtp_ts, lost) of the audio events.
    fn audio_events(evs: &[RtpEvent]) -> Vec<(u32, bool)> {
        evs.iter()
            .filter_map(|e| match e {
                RtpEvent::Audio {
                    samples,
                    rtp_ts,
                    lost,
                } => {
                    assert_eq!(samples.len(), 160);
                    Some((*rtp_ts, *lost))
                }
                _ => None,
            })
            .collect()
    }

    fn digits(evs: &[RtpEvent]) -> String {
        evs.iter()
            .filter_map(|e| match e {
                RtpEvent::Dtmf(d) => Some(d.digit),
                _ => None,
            })
            .collect()
    }

    fn rtp_out(s: &mut RtpSession, now: Instant) -> Vec<RtpHeader> {
        std::iter::from_fn(|| s.poll_transmit(now))
            .filter(|t| !t.rtcp)
            .map(|t| packet::parse(&t.payload).unwrap().header)
            .collect()
    }

    fn first_rtp(s: &mut RtpSession, now: Instant) -> Option<(Transmit, RtpHeader)> {
        std::iter::from_fn(|| s.poll_transmit(now))
            .find(|t| !t.rtcp)
            .map(|t| {
                let h = packet::parse(&t.payload).unwrap().header;
                (t, h)
            })
    }

    #[test]
    fn pacing_holds_schedule_with_jittered_driver() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(7), t0);
        let mut rng = StdRng::seed_from_u64(99);
        let mut sent: Vec<(Instant, RtpHeader)> = Vec::new();
        while sent.len() < 10_000 {
            let wake = s.poll_timeout().unwrap() + Duration::from_micros(rng.gen_range(0..=7_000));
            s.handle_timeout(wake);
            for h in rtp_out(&mut s, wake) {
                sent.push((wake, h));
            }
        }
        let (_, first) = sent[0];
        for (k, (at, h)) in sent.iter().enumerate() {
            let due = t0 + Duration::from_millis(20 * k as u64);
            assert!(*at >= due, "slot {k} sent early");
            assert!(*at - due <= Duration::from_millis(7), "slot {k} sent late");
            assert_eq!(h.sequence, first.sequence.wrapping_add(k as u16));
            assert_eq!(h.timestamp, first.timestamp.wrapping_add(160 * k as u32));
            assert_eq!(h.marker, k == 0);
            assert_eq!(h.ssrc, s.local_ssrc());
        }
        // No drift: the last slot still goes out within the driver's lateness.
        let (last_at, _) = sent[9_999];
        assert!(last_at - (t0 + Duration::from_millis(20 * 9_999)) <= Duration::from_millis(7));
        assert_eq!(s.stats().send_slots_skipped, 0);
        assert_eq!(s.stats().packets_sent, sent.len() as u64);
    }

    #[test]
    fn late_driver_catches_up_then_skips_when_hugely_late() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(1), t0);
        let first = rtp_out(&mut s, t0);
        assert_eq!(first.len(), 1);
        let (seq0, ts0) = (first[0].sequence, first[0].timestamp);
        // 130 ms late for slot 1: slots 1..=7 go out back to back, in order.
        let burst = rtp_out(&mut s, ms(t0, 150));
        assert_eq!(burst.len(), 7);
        for (i, h) in burst.iter().enumerate() {
            assert_eq!(h.sequence, seq0.wrapping_add(1 + i as u16));
            assert_eq!(h.timestamp, ts0.wrapping_add(160 * (1 + i as u32)));
            assert!(!h.marker);
        }
        assert_eq!(s.poll_timeout(), Some(ms(t0, 160)));
        // 840 ms late: skip to the current slot (50), timestamp follows the clock.
        let skip = rtp_out(&mut s, ms(t0, 1_000));
        assert_eq!(skip.len(), 1);
        assert_eq!(skip[0].sequence, seq0.wrapping_add(8));
        assert_eq!(skip[0].timestamp, ts0.wrapping_add(160 * 50));
        assert!(skip[0].marker);
        assert_eq!(s.stats().send_slots_skipped, 42);
        assert_eq!(s.poll_timeout(), Some(ms(t0, 1_020)));
    }

    #[test]
    fn reordered_packets_come_out_in_order() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(1), t0);
        for (i, seq) in [10u16, 12, 11, 13].iter().enumerate() {
            let ts = 1_000 + 160 * u32::from(seq - 10);
            s.try_handle_datagram(
                &audio(PEER_SSRC, *seq, ts),
                sdp_addr(),
                ms(t0, 20 * i as u64),
            )
            .unwrap();
        }
        let evs = events(&mut s);
        assert_eq!(
            audio_events(&evs),
            vec![
                (1_000, false),
                (1_160, false),
                (1_320, false),
                (1_480, false)
            ]
        );
        let RtpEvent::Audio { samples, .. } = evs
            .iter()
            .find(|e| matches!(e, RtpEvent::Audio { .. }))
            .unwrap()
        else {
            unreachable!()
        };
        assert!(samples.iter().all(|&x| x == g711::ulaw_decode(0xFE)));
        assert_eq!(s.stats().packets_lost, 0);
    }

    #[test]
    fn loss_yields_gap_frames_after_jitter_depth() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(
            RtpConfig {
                seed: 1,
                ..rx_config()
            },
            t0,
        );
        s.try_handle_datagram(&audio(PEER_SSRC, 1, 0), sdp_addr(), t0)
            .unwrap();
        s.try_handle_datagram(&audio(PEER_SSRC, 2, 160), sdp_addr(), ms(t0, 20))
            .unwrap();
        s.try_handle_datagram(&audio(PEER_SSRC, 4, 480), sdp_addr(), ms(t0, 60))
            .unwrap();
        assert_eq!(
            audio_events(&events(&mut s)),
            vec![(0, false), (160, false)]
        );
        assert_eq!(s.poll_timeout(), Some(ms(t0, 120)));
        s.handle_timeout(ms(t0, 119));
        assert_eq!(audio_events(&events(&mut s)), vec![]);
        s.handle_timeout(ms(t0, 120));
        let evs = events(&mut s);
        assert_eq!(audio_events(&evs), vec![(320, true), (480, false)]);
        let RtpEvent::Audio { samples, .. } = &evs[0] else {
            panic!("expected the gap frame first: {evs:?}");
        };
        assert!(samples.iter().all(|&x| x == 0));
        // The missing packet turning up now is too late.
        s.try_handle_datagram(&audio(PEER_SSRC, 3, 320), sdp_addr(), ms(t0, 130))
            .unwrap();
        assert_eq!(audio_events(&events(&mut s)), vec![]);
        let st = s.stats();
        assert_eq!((st.concealed_frames, st.late, st.packets_lost), (1, 1, 0));
    }

    #[test]
    fn sequence_wrap_is_seamless() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(
            RtpConfig {
                seed: 1,
                ..rx_config()
            },
            t0,
        );
        for (i, seq) in [65_534u16, 65_535, 0, 1].iter().enumerate() {
            let ts = 160 * i as u32;
            s.try_handle_datagram(
                &audio(PEER_SSRC, *seq, ts),
                sdp_addr(),
                ms(t0, 20 * i as u64),
            )
            .unwrap();
        }
        assert_eq!(
            audio_events(&events(&mut s)),
            vec![(0, false), (160, false), (320, false), (480, false)]
        );
        assert_eq!(s.stats().packets_lost, 0);
        assert_eq!(s.poll_timeout(), Some(ms(t0, 5_000)));
    }

    #[test]
    fn duplicate_is_dropped() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(1), t0);
        s.try_handle_datagram(&audio(PEER_SSRC, 5, 0), sdp_addr(), t0)
            .unwrap();
        s.try_handle_datagram(&audio(PEER_SSRC, 5, 0), sdp_addr(), t0)
            .unwrap();
        s.try_handle_datagram(&audio(PEER_SSRC, 6, 160), sdp_addr(), t0)
            .unwrap();
        assert_eq!(
            audio_events(&events(&mut s)),
            vec![(0, false), (160, false)]
        );
        assert_eq!(s.stats().duplicates, 1);
        assert_eq!(s.stats().packets_received, 3);
    }

    #[test]
    fn ssrc_change_starts_new_stream_after_probation() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(1), t0);
        s.try_handle_datagram(&audio(0xA, 100, 0), sdp_addr(), t0)
            .unwrap();
        s.try_handle_datagram(&audio(0xA, 102, 320), sdp_addr(), ms(t0, 40))
            .unwrap();
        assert_eq!(s.remote_ssrc(), Some(0xA));
        assert_eq!(audio_events(&events(&mut s)), vec![(0, false)]);
        // A single stray packet from another SSRC changes nothing.
        s.try_handle_datagram(&audio(0xC, 9, 77), sdp_addr(), ms(t0, 45))
            .unwrap();
        assert_eq!(events(&mut s), vec![]);
        assert_eq!(s.remote_ssrc(), Some(0xA));
        // Two sequential packets of a new SSRC: the old stream's buffered frame is flushed,
        // the new one starts with both its frames.
        s.try_handle_datagram(&audio(0xB, 7, 50_000), sdp_addr(), ms(t0, 50))
            .unwrap();
        s.try_handle_datagram(&audio(0xB, 8, 50_160), sdp_addr(), ms(t0, 70))
            .unwrap();
        let evs = events(&mut s);
        assert_eq!(
            audio_events(&evs),
            vec![(320, false), (50_000, false), (50_160, false)]
        );
        assert_eq!(s.remote_ssrc(), Some(0xB));
        // The old stream's packets are now the strays.
        s.try_handle_datagram(&audio(0xA, 103, 480), sdp_addr(), ms(t0, 75))
            .unwrap();
        s.try_handle_datagram(&audio(0xB, 9, 50_320), sdp_addr(), ms(t0, 90))
            .unwrap();
        assert_eq!(audio_events(&events(&mut s)), vec![(50_320, false)]);
        // Loss in the old stream (seq 101) is remembered.
        assert_eq!(s.stats().packets_lost, 1);
    }

    #[test]
    fn sipp_dtmf_on_its_own_ssrc_is_reported_once_per_digit() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(1), t0);
        s.try_handle_datagram(&audio(PEER_SSRC, 1, 0), sdp_addr(), t0)
            .unwrap();
        let mut n = 0u64;
        let mut feed = |s: &mut RtpSession, pkt: Vec<u8>| {
            n += 1;
            s.try_handle_datagram(&pkt, sdp_addr(), ms(t0, 20 * n))
                .unwrap();
        };
        // '1' then '#': updates, then 3 end packets with the same seq; seq jumps between.
        for (event, ts, seq0) in [(1u8, 8_000u32, 3_000u16), (11, 16_000, 3_900)] {
            feed(
                &mut s,
                dtmf(SIPP_DTMF_SSRC, seq0, ts, true, event, false, 160),
            );
            feed(
                &mut s,
                dtmf(SIPP_DTMF_SSRC, seq0 + 1, ts, false, event, false, 320),
            );
            for _ in 0..3 {
                feed(
                    &mut s,
                    dtmf(SIPP_DTMF_SSRC, seq0 + 2, ts, false, event, true, 480),
                );
            }
        }
        let evs = events(&mut s);
        assert_eq!(digits(&evs), "1#");
        assert!(evs.contains(&RtpEvent::Dtmf(DtmfDigit {
            digit: '1',
            duration_ms: 60
        })));
        // The event stream never displaced the audio stream.
        assert_eq!(s.remote_ssrc(), Some(PEER_SSRC));
        s.try_handle_datagram(&audio(PEER_SSRC, 2, 160), sdp_addr(), ms(t0, 300))
            .unwrap();
        assert_eq!(audio_events(&events(&mut s)), vec![(160, false)]);
        assert_eq!(s.stats().packets_lost, 0);
    }

    #[test]
    fn in_stream_dtmf_fills_sequence_and_dedupes() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(1), t0);
        s.try_handle_datagram(&audio(PEER_SSRC, 1, 0), sdp_addr(), t0)
            .unwrap();
        s.try_handle_datagram(
            &dtmf(PEER_SSRC, 2, 160, true, 5, false, 160),
            sdp_addr(),
            ms(t0, 20),
        )
        .unwrap();
        // First end packet lost; two copies arrive (the second a same-seq duplicate).
        s.try_handle_datagram(
            &dtmf(PEER_SSRC, 4, 160, false, 5, true, 480),
            sdp_addr(),
            ms(t0, 60),
        )
        .unwrap();
        s.try_handle_datagram(
            &dtmf(PEER_SSRC, 4, 160, false, 5, true, 480),
            sdp_addr(),
            ms(t0, 60),
        )
        .unwrap();
        s.try_handle_datagram(
            &dtmf(PEER_SSRC, 5, 160, false, 5, true, 480),
            sdp_addr(),
            ms(t0, 80),
        )
        .unwrap();
        s.try_handle_datagram(&audio(PEER_SSRC, 6, 960), sdp_addr(), ms(t0, 100))
            .unwrap();
        s.handle_timeout(ms(t0, 200));
        let evs = events(&mut s);
        assert_eq!(digits(&evs), "5");
        // Seq 3 (an update) was lost: one gap frame, timed after the last audio frame; the
        // event packets themselves are not gaps.
        assert_eq!(
            audio_events(&evs),
            vec![(0, false), (160, true), (960, false)]
        );
        assert_eq!(s.stats().duplicates, 1);
    }

    #[test]
    fn dtmf_without_end_packets_is_reported_on_timeout() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(
            RtpConfig {
                seed: 1,
                ..rx_config()
            },
            t0,
        );
        s.try_handle_datagram(
            &dtmf(SIPP_DTMF_SSRC, 1, 0, true, 12, false, 160),
            sdp_addr(),
            t0,
        )
        .unwrap();
        s.try_handle_datagram(
            &dtmf(SIPP_DTMF_SSRC, 2, 0, false, 12, false, 320),
            sdp_addr(),
            ms(t0, 20),
        )
        .unwrap();
        let deadline = s.poll_timeout().unwrap();
        assert_eq!(deadline, ms(t0, 20) + dtmf::DEFAULT_END_TIMEOUT);
        s.handle_timeout(deadline);
        assert_eq!(digits(&events(&mut s)), "A");
        s.handle_timeout(deadline + Duration::from_secs(1));
        assert_eq!(digits(&events(&mut s)), "");
    }

    #[test]
    fn sends_dtmf_then_resumes_audio_with_marker() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(3), t0);
        s.queue_audio(&[1_000; 160 * 20]);
        let (_, h0) = first_rtp(&mut s, t0).unwrap();
        assert!(h0.marker && h0.payload_type == 0);
        s.send_dtmf('5', 60).unwrap();
        s.send_dtmf('#', 20).unwrap();
        let mut out = Vec::new();
        for slot in 1..=14u64 {
            out.extend(rtp_out(&mut s, ms(t0, 20 * slot)));
        }
        let ts = |slot: u32| h0.timestamp.wrapping_add(160 * slot);
        for (i, h) in out.iter().enumerate() {
            assert_eq!(h.sequence, h0.sequence.wrapping_add(1 + i as u16));
        }
        // '5': 3 frames + 2 extra end packets at slots 1..=5, all with slot 1's timestamp.
        let five: Vec<_> = out[..5].iter().collect();
        assert!(five
            .iter()
            .all(|h| h.payload_type == TE && h.timestamp == ts(1)));
        assert_eq!(
            five.iter().map(|h| h.marker).collect::<Vec<_>>(),
            [true, false, false, false, false]
        );
        // Two slots of audio between digits (new talk-spurt), then '#' at slot 8.
        assert_eq!(
            (out[5].payload_type, out[5].timestamp, out[5].marker),
            (0, ts(6), true)
        );
        assert_eq!((out[6].payload_type, out[6].marker), (0, false));
        let hash: Vec<_> = out[7..10].iter().collect();
        assert!(hash
            .iter()
            .all(|h| h.payload_type == TE && h.timestamp == ts(8)));
        assert!(hash[0].marker);
        // Audio resumes at slot 11 with the marker and the clock's timestamp.
        assert_eq!(
            (out[10].payload_type, out[10].timestamp, out[10].marker),
            (0, ts(11), true)
        );
        assert!(!out[11].marker);
        // Audio was paused, not dropped: 1 + 2 + 4 frames sent of 20.
        assert_eq!(s.queued_ms(), (20 - 7) * 20);

        let mut plain = RtpSession::new(RtpConfig::new(Codec::Pcmu, 0, None), t0);
        assert_eq!(plain.send_dtmf('1', 100), Err(RtpError::DtmfNotNegotiated));
        assert_eq!(
            s.send_dtmf('x', 100),
            Err(RtpError::Dtmf(DtmfError::InvalidDigit('x')))
        );
    }

    #[test]
    fn latching_once_and_foreign_sources_dropped() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(1), t0);
        let (t, _) = first_rtp(&mut s, t0).unwrap();
        assert_eq!(t.dest, sdp_addr());
        // Peer behind NAT: packets come from elsewhere, within the latch window.
        let nat = addr(77, 40_000);
        s.try_handle_datagram(&audio(PEER_SSRC, 1, 0), nat, ms(t0, 10))
            .unwrap();
        assert!(events(&mut s).contains(&RtpEvent::RemoteAddrChanged(nat)));
        let (t, _) = first_rtp(&mut s, ms(t0, 20)).unwrap();
        assert_eq!(t.dest, nat);
        // Junk, other SSRCs, and even our peer's own SSRC from any other address (another
        // port of the same host included) are dropped and counted; nothing moves.
        let evil = addr(66, 1_234);
        let same_host = addr(77, 40_002);
        for (i, from) in [evil, same_host, sdp_addr()].into_iter().enumerate() {
            let seq = 2 + i as u16;
            assert_eq!(
                s.try_handle_datagram(&audio(0xBAD, seq, 0), from, ms(t0, 25)),
                Err(RtpError::ForeignSource(from))
            );
            assert_eq!(
                s.try_handle_datagram(&audio(PEER_SSRC, seq, 160), from, ms(t0, 26)),
                Err(RtpError::ForeignSource(from))
            );
            // And a new SSRC from a foreign address never passes probation.
            let _ = s.try_handle_datagram(&audio(0xBAD, seq + 1, 160), from, ms(t0, 27));
        }
        assert_eq!(s.remote_addr(), Some(nat));
        assert_eq!(s.remote_ssrc(), Some(PEER_SSRC));
        assert!(s.stats().foreign >= 8);
        assert!(!events(&mut s)
            .iter()
            .any(|e| matches!(e, RtpEvent::RemoteAddrChanged(_) | RtpEvent::Audio { .. })));
        // RTCP from a foreign host is dropped too.
        assert!(matches!(
            s.try_handle_rtcp(&[0x80, 201, 0, 1, 0, 0, 0, 1], evil, ms(t0, 28)),
            Err(RtpError::ForeignSource(_))
        ));
        // An SSRC change from the latched address is accepted after probation.
        s.try_handle_datagram(&audio(0xB, 7, 50_000), nat, ms(t0, 30))
            .unwrap();
        s.try_handle_datagram(&audio(0xB, 8, 50_160), nat, ms(t0, 50))
            .unwrap();
        assert_eq!(s.remote_ssrc(), Some(0xB));
        // re-INVITE: the new SDP address is taken, and the window opens again at its first
        // packet.
        let moved = addr(88, 30_000);
        s.set_remote(moved);
        assert_eq!(s.remote_addr(), Some(moved));
        s.try_handle_datagram(&audio(0xB, 9, 50_320), moved, ms(t0, 60_000))
            .unwrap();
        assert!(!events(&mut s)
            .iter()
            .any(|e| matches!(e, RtpEvent::RemoteAddrChanged(_))));
        assert!(s
            .try_handle_datagram(&audio(0xB, 10, 50_480), nat, ms(t0, 60_020))
            .is_err());
    }

    #[test]
    fn without_packets_in_the_window_only_the_sdp_address_is_accepted() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(1), t0);
        let late = ms(t0, 11_000);
        let other = addr(77, 40_000);
        assert!(s
            .try_handle_datagram(&audio(PEER_SSRC, 1, 0), other, late)
            .is_err());
        s.try_handle_datagram(&audio(PEER_SSRC, 2, 160), sdp_addr(), late)
            .unwrap();
        assert_eq!(s.remote_addr(), Some(sdp_addr()));
    }

    #[test]
    fn inactivity_fires_once_per_silence() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(1), t0);
        let inactive = |s: &mut RtpSession| {
            events(s)
                .into_iter()
                .filter(|e| matches!(e, RtpEvent::Inactive { .. }))
                .collect::<Vec<_>>()
        };
        s.handle_timeout(ms(t0, 59_999));
        assert_eq!(inactive(&mut s), vec![]);
        s.handle_timeout(ms(t0, 60_000));
        assert_eq!(
            inactive(&mut s),
            vec![RtpEvent::Inactive {
                since: Duration::from_secs(60)
            }]
        );
        s.handle_timeout(ms(t0, 120_000));
        assert_eq!(inactive(&mut s), vec![]);
        // RTP resumes, then stops again: a new silence, a new report.
        s.try_handle_datagram(&audio(PEER_SSRC, 1, 0), sdp_addr(), ms(t0, 130_000))
            .unwrap();
        s.handle_timeout(ms(t0, 189_999));
        assert_eq!(inactive(&mut s), vec![]);
        assert!(s.poll_timeout().unwrap() <= ms(t0, 190_000));
        s.handle_timeout(ms(t0, 190_000));
        assert_eq!(inactive(&mut s).len(), 1);
        // Disabled (e.g. while the peer holds us): never fires.
        s.set_inactivity_timeout(Duration::ZERO, ms(t0, 200_000));
        s.handle_timeout(ms(t0, 900_000));
        assert_eq!(inactive(&mut s), vec![]);
    }

    #[test]
    fn rtcp_reports_and_rtt() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.wall_clock_at_start = Some(std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        cfg.cname = Some("leg-1@voxgate".into());
        let mut s = RtpSession::new(RtpConfig { seed: 5, ..cfg }, t0);
        // Peer stream with one packet lost (seq 3).
        for (i, seq) in [1u16, 2, 4, 5].iter().enumerate() {
            s.try_handle_datagram(
                &audio(PEER_SSRC, *seq, 160 * u32::from(*seq)),
                sdp_addr(),
                ms(t0, 20 * i as u64),
            )
            .unwrap();
        }
        // Drive to the first report at 5 s.
        let mut rtcp_out = Vec::new();
        let mut now = t0;
        while rtcp_out.is_empty() {
            now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            while let Some(t) = s.poll_transmit(now) {
                if t.rtcp {
                    rtcp_out.push(t);
                }
            }
        }
        assert_eq!(now, ms(t0, 5_000));
        let report = &rtcp_out[0];
        assert_eq!(report.dest, addr(10, 20_001));
        let parsed = rtcp::parse_compound(&report.payload).unwrap();
        let RtcpPacket::SenderReport {
            ssrc,
            info,
            reports,
        } = &parsed[0]
        else {
            panic!("expected SR, got {parsed:?}");
        };
        assert_eq!(*ssrc, s.local_ssrc());
        // Slots 0..=250 were due by 5 s; the report goes out first.
        assert_eq!(info.packet_count, 250);
        assert_eq!(info.octet_count, 250 * 160);
        let our_sr_ntp = info.ntp_timestamp;
        assert_eq!(reports.len(), 1);
        let rb = reports[0];
        assert_eq!(
            (rb.ssrc, rb.cumulative_lost, rb.extended_highest_seq),
            (PEER_SSRC, 1, 5)
        );
        assert_eq!(rb.fraction_lost, 51); // 1 of 5 lost, in 1/256
        assert_eq!(rb.last_sr, 0);
        assert_eq!(
            parsed[1],
            RtcpPacket::SourceDescription(vec![SdesChunk {
                ssrc: s.local_ssrc(),
                cname: Some("leg-1@voxgate".into())
            }])
        );

        // The peer's SR at 5.5 s and its RR about us at 6 s (it held our SR for 250 ms).
        let peer = addr(10, 20_001);
        let peer_sr = RtcpPacket::SenderReport {
            ssrc: PEER_SSRC,
            info: SenderInfo {
                ntp_timestamp: 0xABCD_1234_5678_0000,
                ..SenderInfo::default()
            },
            reports: vec![],
        };
        s.try_handle_rtcp(&rtcp::write_compound(&[peer_sr]), peer, ms(t0, 5_500))
            .unwrap();
        let peer_rr = RtcpPacket::ReceiverReport {
            ssrc: PEER_SSRC,
            reports: vec![ReportBlock {
                ssrc: s.local_ssrc(),
                fraction_lost: 3,
                cumulative_lost: 2,
                last_sr: rtcp::ntp_middle(our_sr_ntp),
                delay_since_last_sr: rtcp::to_short_ntp(Duration::from_millis(250)),
                ..ReportBlock::default()
            }],
        };
        s.try_handle_rtcp(&rtcp::write_compound(&[peer_rr]), peer, ms(t0, 6_000))
            .unwrap();
        let st = s.stats();
        let rtt = st.rtt.unwrap();
        assert!(
            rtt.abs_diff(Duration::from_millis(750)) < Duration::from_millis(1),
            "{rtt:?}"
        );
        assert_eq!(
            (st.remote_fraction_lost, st.remote_cumulative_lost),
            (Some(3), Some(2))
        );

        // The next report is still an SR (slot 250 went out after the last one) and echoes
        // the peer's SR; once we hold, reports become RRs.
        s.set_hold(true);
        let next_report = |s: &mut RtpSession| loop {
            let now = s.poll_timeout().unwrap();
            s.handle_timeout(now);
            let found = std::iter::from_fn(|| s.poll_transmit(now)).find(|t| t.rtcp);
            if let Some(t) = found {
                return (now, rtcp::parse_compound(&t.payload).unwrap());
            }
        };
        let (now, parsed) = next_report(&mut s);
        assert_eq!(now, ms(t0, 10_000));
        let RtcpPacket::SenderReport { info, reports, .. } = &parsed[0] else {
            panic!("expected SR, got {parsed:?}");
        };
        assert_eq!(info.packet_count, 251);
        assert_eq!(reports[0].last_sr, 0x1234_5678);
        assert_eq!(
            reports[0].delay_since_last_sr,
            rtcp::to_short_ntp(Duration::from_millis(4_500))
        );
        assert_eq!(reports[0].fraction_lost, 0);
        let (now, parsed) = next_report(&mut s);
        assert_eq!(now, ms(t0, 15_000));
        assert!(
            matches!(&parsed[0], RtcpPacket::ReceiverReport { reports, .. } if reports.len() == 1)
        );

        // BYE from the peer; BYE from us goes out at once.
        let bye = RtcpPacket::Goodbye {
            sources: vec![PEER_SSRC],
            reason: None,
        };
        s.try_handle_rtcp(&rtcp::write_compound(&[bye]), peer, now)
            .unwrap();
        assert!(s.stats().remote_bye);
        s.send_bye();
        let t = s.poll_transmit(now).unwrap();
        assert!(t.rtcp);
        let parsed = rtcp::parse_compound(&t.payload).unwrap();
        assert!(matches!(parsed.last(), Some(RtcpPacket::Goodbye { .. })));
        // Garbage is refused without effect.
        assert!(s.try_handle_rtcp(&[0x80, 201, 0, 40], peer, now).is_err());
    }

    #[test]
    fn hold_stops_sending_but_clock_runs() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(2), t0);
        let (_, h0) = first_rtp(&mut s, t0).unwrap();
        s.set_hold(true);
        assert!(s.is_on_hold());
        for slot in 1..50u64 {
            assert!(rtp_out(&mut s, ms(t0, 20 * slot)).is_empty());
        }
        // The driver need not wake for slots while held.
        assert_eq!(s.poll_timeout(), Some(ms(t0, 5_000)));
        s.set_hold(false);
        let out = rtp_out(&mut s, ms(t0, 1_005));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].sequence, h0.sequence.wrapping_add(1));
        assert_eq!(out[0].timestamp, h0.timestamp.wrapping_add(160 * 50));
        assert!(out[0].marker);
        assert_eq!(s.stats().send_slots_skipped, 0);
        assert_eq!(s.poll_timeout(), Some(ms(t0, 1_020)));
    }

    #[test]
    fn marks_report_playback_progress() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(2), t0);
        s.queue_mark(1); // nothing queued: played at once
        assert_eq!(events(&mut s), vec![RtpEvent::MarkPlayed(1)]);
        s.queue_audio(&[500; 320]);
        s.queue_mark(2);
        s.queue_audio(&[500; 160]);
        s.queue_mark(3);
        assert_eq!(s.queued_ms(), 60);
        rtp_out(&mut s, t0);
        assert_eq!(events(&mut s), vec![]);
        rtp_out(&mut s, ms(t0, 20));
        assert_eq!(events(&mut s), vec![RtpEvent::MarkPlayed(2)]);
        s.clear_audio();
        assert_eq!(events(&mut s), vec![RtpEvent::MarkCleared(3)]);
        assert_eq!(s.queued_ms(), 0);
        // The queued audio was encoded, not silence.
        s.queue_audio(&[500; 160]);
        let (t, _) = first_rtp(&mut s, ms(t0, 40)).unwrap();
        assert!(t.payload[12..].iter().all(|&b| b == g711::ulaw_encode(500)));
    }

    #[test]
    fn without_silence_only_audio_is_sent() {
        let t0 = Instant::now();
        let mut cfg = config();
        cfg.send_silence = false;
        let mut s = RtpSession::new(RtpConfig { seed: 4, ..cfg }, t0);
        assert!(rtp_out(&mut s, t0).is_empty());
        assert_eq!(s.poll_timeout(), Some(ms(t0, 5_000)));
        s.queue_audio(&[100; 320]);
        let out = rtp_out(&mut s, ms(t0, 1_005));
        let more = rtp_out(&mut s, ms(t0, 1_020));
        assert_eq!(out.len(), 1);
        assert_eq!(more.len(), 1);
        assert!(out[0].marker && !more[0].marker);
        assert_eq!(more[0].timestamp, out[0].timestamp.wrapping_add(160));
        assert!(rtp_out(&mut s, ms(t0, 1_040)).is_empty());
        // The next talk-spurt, a little later, is on the clock and marked again.
        s.queue_audio(&[100; 160]);
        let out2 = rtp_out(&mut s, ms(t0, 1_105));
        assert_eq!(out2.len(), 1);
        assert!(out2[0].marker);
        assert_eq!(out2[0].timestamp, out[0].timestamp.wrapping_add(160 * 5));
        assert_eq!(out2[0].sequence, more[0].sequence.wrapping_add(1));
        assert_eq!(s.stats().send_slots_skipped, 0);
    }

    #[test]
    fn codec_change_and_pcma_receive() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(2), t0);
        assert_eq!(first_rtp(&mut s, t0).unwrap().1.payload_type, 0);
        s.set_codec(Codec::Pcma, 8, None);
        let (t, h) = first_rtp(&mut s, ms(t0, 20)).unwrap();
        assert_eq!(h.payload_type, 8);
        assert!(t.payload[12..].iter().all(|&b| b == g711::ALAW_SILENCE));
        assert_eq!(s.send_dtmf('1', 100), Err(RtpError::DtmfNotNegotiated));
        // A dynamic payload type negotiated for the codec is used both ways.
        s.set_codec(Codec::Pcmu, 96, None);
        let (_, h) = first_rtp(&mut s, ms(t0, 40)).unwrap();
        assert_eq!(h.payload_type, 96);
        s.try_handle_datagram(
            &rtp(PEER_SSRC, 5, 800, 96, false, &[0xFF; 160]),
            sdp_addr(),
            t0,
        )
        .unwrap();
        assert_eq!(audio_events(&events(&mut s)), vec![(800, false)]);
        s.try_handle_datagram(
            &rtp(PEER_SSRC, 6, 960, 8, false, &[0xD5; 160]),
            sdp_addr(),
            t0,
        )
        .unwrap();
        let evs = events(&mut s);
        let RtpEvent::Audio { samples, .. } = evs
            .iter()
            .find(|e| matches!(e, RtpEvent::Audio { .. }))
            .unwrap()
        else {
            unreachable!()
        };
        assert!(samples.iter().all(|&x| x == 8));
    }

    #[test]
    fn bad_input_is_counted_and_refused() {
        let t0 = Instant::now();
        let mut s = RtpSession::new(seeded(2), t0);
        assert_eq!(
            s.try_handle_datagram(&[0x80, 0, 0], sdp_addr(), t0),
            Err(RtpError::Packet(PacketError::TooShort(3)))
        );
        let mut v1 = audio(PEER_SSRC, 1, 0);
        v1[0] = 0x40;
        assert!(matches!(
            s.try_handle_datagram(&v1, sdp_addr(), t0),
            Err(RtpError::Packet(PacketError::BadVersion(1)))
        ));
        assert_eq!(
            s.try_handle_datagram(&rtp(PEER_SSRC, 1, 0, 13, false, &[0; 1]), sdp_addr(), t0),
            Err(RtpError::UnknownPayloadType(13))
        );
        assert!(matches!(
            s.try_handle_datagram(&rtp(PEER_SSRC, 1, 0, TE, true, &[1, 2]), sdp_addr(), t0),
            Err(RtpError::Dtmf(DtmfError::TooShort(2)))
        ));
        assert!(matches!(
            s.try_handle_datagram(&dtmf(PEER_SSRC, 1, 0, true, 200, true, 160), sdp_addr(), t0),
            Err(RtpError::Dtmf(DtmfError::NotDtmf(200)))
        ));
        let st = s.stats();
        assert_eq!(
            (st.invalid, st.unknown_payload_type, st.packets_received),
            (4, 1, 0)
        );
        // None of it latched or started a stream.
        assert_eq!(s.remote_ssrc(), None);
        assert_eq!(events(&mut s), vec![]);
        // Random datagrams never panic.
        let mut rng = StdRng::seed_from_u64(5);
        for i in 0..5_000u64 {
            let len = rng.gen_range(0..200);
            let mut buf: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            if let Some(b) = buf.first_mut() {
                *b = 0x80 | (*b & 0x3F);
            }
            if buf.len() > 1 && i % 2 == 0 {
                buf[1] = [0, 8, TE, 13][i as usize % 4];
            }
            let _ = s.try_handle_datagram(&buf, sdp_addr(), ms(t0, i));
            let _ = s.try_handle_rtcp(&buf, sdp_addr(), ms(t0, i));
            s.handle_timeout(ms(t0, i));
        }
    }

    #[test]
    fn two_sessions_talk_over_a_fake_network() {
        let t0 = Instant::now();
        let (a_addr, b_addr) = (addr(1, 10_000), addr(2, 20_000));
        let mut a = RtpSession::new(
            RtpConfig {
                remote: Some(b_addr),
                ..seeded(11)
            },
            t0,
        );
        let mut b = RtpSession::new(
            RtpConfig {
                remote: Some(a_addr),
                ..seeded(12)
            },
            t0,
        );
        let tone: Vec<i16> = (0..160 * 10)
            .map(|i| ((i as f64 * 0.3).sin() * 8_000.0) as i16)
            .collect();
        a.send_dtmf('7', 60).unwrap();
        a.queue_audio(&tone);
        a.queue_mark(1);
        let (mut a_events, mut b_events) = (Vec::new(), Vec::new());
        let mut sent_audio = Vec::new();
        for step in 0..=300u64 {
            let now = ms(t0, 20 * step);
            a.handle_timeout(now);
            b.handle_timeout(now);
            while let Some(t) = a.poll_transmit(now) {
                assert_eq!(t.dest, if t.rtcp { addr(2, 20_001) } else { b_addr });
                if t.rtcp {
                    assert!(t.audio.is_none());
                    b.try_handle_rtcp(&t.payload, addr(1, 10_001), now).unwrap();
                } else {
                    sent_audio.push(t.audio.clone().unwrap());
                    b.try_handle_datagram(&t.payload, a_addr, now).unwrap();
                }
            }
            while let Some(t) = b.poll_transmit(now) {
                if t.rtcp {
                    a.try_handle_rtcp(&t.payload, addr(2, 20_001), now).unwrap();
                } else {
                    a.try_handle_datagram(&t.payload, b_addr, now).unwrap();
                }
            }
            a_events.extend(events(&mut a));
            b_events.extend(events(&mut b));
        }
        assert_eq!(digits(&b_events), "7");
        assert!(a_events.contains(&RtpEvent::MarkPlayed(1)));
        // DTMF slots carry silence for the recorder, then the tone frames as queued.
        assert!(sent_audio[..5].iter().all(|f| f.iter().all(|&x| x == 0)));
        assert_eq!(sent_audio[5..15].concat(), tone);
        // b heard the tone after the event, frame for frame, through G.711.
        let heard: Vec<i16> = b_events
            .iter()
            .filter_map(|e| match e {
                RtpEvent::Audio { samples, lost, .. } => {
                    assert!(!lost);
                    Some(samples.clone())
                }
                _ => None,
            })
            .flatten()
            .collect();
        let offset = heard
            .windows(tone.len())
            .position(|w| {
                w.iter()
                    .zip(&tone)
                    .all(|(x, y)| (i32::from(*x) - i32::from(*y)).abs() <= 256)
            })
            .expect("tone not found in received audio");
        assert_eq!(offset, 0);
        assert_eq!(b.remote_ssrc(), Some(a.local_ssrc()));
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sb.packets_lost, 0);
        assert_eq!(sb.packets_received, sa.packets_sent);
        // Six seconds in, both have exchanged reports: RTT on a zero-delay network ~ 0.
        assert!(sa.rtt.unwrap() < Duration::from_millis(1));
        assert_eq!(sa.remote_fraction_lost, Some(0));
    }
}
