//! RFC 4733 telephone-events carrying DTMF: the wire payload, a receiver that turns the
//! redundant packet stream into one report per key press, and the sender's packet sequence.
//!
//! Senders repeat every event many times (updates every packet, the end packet three times,
//! sometimes with the same sequence number as SIPp's pcaps do), so the receiver must dedupe
//! by event identity (SSRC + event timestamp), not by RTP sequence number.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use thiserror::Error;
use tracing::{debug, trace};

use super::codec::FRAME_SAMPLES;

/// Volume (in -dBm0) of the events we send; 10 is what most stacks use.
pub const EVENT_VOLUME: u8 = 10;
/// How often the final packet of an event is sent (RFC 4733 §2.5.1.4).
pub const END_REPEATS: usize = 3;
/// An event that stops updating without an end packet is reported after this long.
pub const DEFAULT_END_TIMEOUT: Duration = Duration::from_millis(800);
/// The longest event one RFC 4733 payload can describe (16-bit duration at 8 kHz, in frames).
const MAX_EVENT_FRAMES: u32 = u16::MAX as u32 / FRAME_SAMPLES as u32;
/// How many finished events we remember to drop their late retransmissions.
const COMPLETED_MEMORY: usize = 16;
/// RTP clock ticks per millisecond (8 kHz).
const TICKS_PER_MS: u32 = 8;

/// One key press, reported once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfDigit {
    /// One of `0-9 * # A-D`.
    pub digit: char,
    pub duration_ms: u32,
}

/// Why a telephone-event payload or a digit to send was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DtmfError {
    #[error("telephone-event payload is {0} bytes, RFC 4733 needs at least 4")]
    TooShort(usize),
    #[error("telephone-event code {0} is not a DTMF key (only 0-15 are)")]
    NotDtmf(u8),
    #[error("{0:?} is not a DTMF key (expected 0-9, *, #, A-D)")]
    InvalidDigit(char),
}

/// Maps an RFC 4733 event code to its key.
pub fn event_to_digit(event: u8) -> Option<char> {
    match event {
        0..=9 => char::from_digit(u32::from(event), 10),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (event - 12))),
        _ => None,
    }
}

/// Maps a key (`a-d` accepted too) to its RFC 4733 event code.
pub fn digit_to_event(digit: char) -> Option<u8> {
    match digit {
        '0'..='9' => digit.to_digit(10).and_then(|d| u8::try_from(d).ok()),
        '*' => Some(10),
        '#' => Some(11),
        'A'..='D' => Some(digit as u8 - b'A' + 12),
        'a'..='d' => Some(digit as u8 - b'a' + 12),
        _ => None,
    }
}

/// The 4-byte telephone-event payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventPayload {
    pub event: u8,
    /// E bit: this is (a repeat of) the final packet of the event.
    pub end: bool,
    /// Power level in -dBm0 (6 bits).
    pub volume: u8,
    /// Event duration so far, in RTP clock ticks.
    pub duration: u16,
}

impl EventPayload {
    /// Parses a payload; only DTMF events (0-15) are accepted. Extra bytes (e.g. RFC 4733
    /// redundancy we don't use) are ignored.
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        let &[event, flags, d0, d1, ..] = payload else {
            return Err(DtmfError::TooShort(payload.len()));
        };
        if event > 15 {
            return Err(DtmfError::NotDtmf(event));
        }
        Ok(EventPayload {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    pub fn to_bytes(self) -> [u8; 4] {
        let flags = (if self.end { 0x80 } else { 0 }) | (self.volume & 0x3F);
        let [d0, d1] = self.duration.to_be_bytes();
        [self.event, flags, d0, d1]
    }
}

/// An event we have seen but not yet reported.
#[derive(Debug, Clone, Copy)]
struct ActiveEvent {
    ssrc: u32,
    timestamp: u32,
    event: u8,
    duration: u16,
    last_seen: Instant,
}

impl ActiveEvent {
    fn key(&self) -> (u32, u32, u8) {
        (self.ssrc, self.timestamp, self.event)
    }

    fn digit(&self) -> DtmfDigit {
        DtmfDigit {
            // `event` was validated by EventPayload::parse.
            digit: event_to_digit(self.event).unwrap_or('?'),
            duration_ms: u32::from(self.duration) / TICKS_PER_MS,
        }
    }
}

/// Turns received telephone-event packets into one `DtmfDigit` per key press.
///
/// A digit is reported at its first end packet; if every end packet was lost it is reported
/// when the next event starts or after [`DEFAULT_END_TIMEOUT`] without updates.
#[derive(Debug)]
pub struct DtmfReceiver {
    active: Option<ActiveEvent>,
    completed: VecDeque<(u32, u32, u8)>,
    out: VecDeque<DtmfDigit>,
    end_timeout: Duration,
}

impl Default for DtmfReceiver {
    fn default() -> Self {
        Self::new(DEFAULT_END_TIMEOUT)
    }
}

impl DtmfReceiver {
    pub fn new(end_timeout: Duration) -> Self {
        DtmfReceiver {
            active: None,
            completed: VecDeque::with_capacity(COMPLETED_MEMORY),
            out: VecDeque::new(),
            end_timeout,
        }
    }

    /// Feeds one telephone-event packet. Finished digits become available from
    /// [`poll_digit`](Self::poll_digit). Malformed payloads change nothing.
    pub fn handle_packet(
        &mut self,
        ssrc: u32,
        timestamp: u32,
        marker: bool,
        payload: &[u8],
        now: Instant,
    ) -> Result<(), DtmfError> {
        let p = EventPayload::parse(payload)?;
        let key = (ssrc, timestamp, p.event);
        trace!(
            ssrc,
            timestamp,
            marker,
            event = p.event,
            end = p.end,
            duration = p.duration,
            "telephone-event"
        );
        if self.completed.contains(&key) {
            return Ok(()); // retransmission of a digit already reported
        }
        match &mut self.active {
            Some(a) if a.key() == key => {
                a.duration = a.duration.max(p.duration);
                a.last_seen = now;
            }
            _ => {
                if let Some(previous) = self.active.take() {
                    debug!(
                        event = previous.event,
                        "telephone-event ended without an end packet; a new one started"
                    );
                    self.finish(previous);
                }
                self.active = Some(ActiveEvent {
                    ssrc,
                    timestamp,
                    event: p.event,
                    duration: p.duration,
                    last_seen: now,
                });
            }
        }
        if p.end {
            if let Some(a) = self.active.take() {
                self.finish(a);
            }
        }
        Ok(())
    }

    /// When an unfinished event should be given up on, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active.map(|a| a.last_seen + self.end_timeout)
    }

    /// Reports an event whose end packets never came.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(a) = self.active {
            if now >= a.last_seen + self.end_timeout {
                debug!(
                    event = a.event,
                    "telephone-event timed out without an end packet"
                );
                self.active = None;
                self.finish(a);
            }
        }
    }

    /// The next finished digit, in press order.
    pub fn poll_digit(&mut self) -> Option<DtmfDigit> {
        self.out.pop_front()
    }

    fn finish(&mut self, event: ActiveEvent) {
        if self.completed.len() == COMPLETED_MEMORY {
            self.completed.pop_front();
        }
        self.completed.push_back(event.key());
        let digit = event.digit();
        debug!(digit = %digit.digit, duration_ms = digit.duration_ms, "DTMF received");
        self.out.push_back(digit);
    }
}

/// One telephone-event packet to send: the RTP marker bit and the payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    pub marker: bool,
    pub payload: [u8; 4],
}

/// The packets for one key press, one per 20 ms slot, all sharing the event's RTP
/// timestamp: the first carries the marker, durations grow by 160, and the final packet is
/// sent [`END_REPEATS`] times with the E bit.
///
/// `duration_ms` is rounded up to whole 20 ms frames and clamped to 20 ms..8.18 s (the
/// longest event a single RFC 4733 payload can describe).
pub fn event_packets(digit: char, duration_ms: u32) -> Result<Vec<DtmfPacket>, DtmfError> {
    let event = digit_to_event(digit).ok_or(DtmfError::InvalidDigit(digit))?;
    let frames = duration_ms
        .div_ceil(super::codec::FRAME_MS as u32)
        .clamp(1, MAX_EVENT_FRAMES);
    let step = FRAME_SAMPLES as u32;
    let mut packets = Vec::with_capacity(frames as usize + END_REPEATS - 1);
    for i in 1..=frames {
        let end = i == frames;
        let payload = EventPayload {
            event,
            end,
            volume: EVENT_VOLUME,
            // frames <= MAX_EVENT_FRAMES keeps this within u16.
            duration: u16::try_from(i * step).unwrap_or(u16::MAX),
        };
        let repeats = if end { END_REPEATS } else { 1 };
        for _ in 0..repeats {
            packets.push(DtmfPacket {
                marker: i == 1 && packets.is_empty(),
                payload: payload.to_bytes(),
            });
        }
    }
    Ok(packets)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIPP_SSRC: u32 = 0x0E05_384E;

    fn payload(event: u8, end: bool, duration: u16) -> [u8; 4] {
        EventPayload {
            event,
            end,
            volume: 10,
            duration,
        }
        .to_bytes()
    }

    fn drain(rx: &mut DtmfReceiver) -> Vec<DtmfDigit> {
        std::iter::from_fn(|| rx.poll_digit()).collect()
    }

    /// One SIPp-style key press: updates every 20 ms, then 3 end packets with the same seq.
    /// Returns (seq, timestamp, marker, payload) like a pcap would carry.
    fn sipp_press(event: u8, ts: u32, seq0: u16, frames: u16) -> Vec<(u16, u32, bool, [u8; 4])> {
        let mut out = Vec::new();
        for i in 1..=frames {
            let end = i == frames;
            let seq = seq0 + i - 1;
            let reps = if end { 3 } else { 1 };
            for _ in 0..reps {
                out.push((seq, ts, i == 1, payload(event, end, i * 160)));
            }
        }
        out
    }

    #[test]
    fn digit_mapping_covers_all_sixteen_events() {
        let keys = "0123456789*#ABCD";
        for (code, key) in keys.chars().enumerate() {
            assert_eq!(event_to_digit(code as u8), Some(key));
            assert_eq!(digit_to_event(key), Some(code as u8));
        }
        assert_eq!(digit_to_event('b'), Some(13));
        assert_eq!(event_to_digit(16), None);
        assert_eq!(digit_to_event('E'), None);
        assert_eq!(digit_to_event('5'), Some(5));
    }

    #[test]
    fn sipp_sequence_reports_each_digit_once() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::default();
        let mut packets = sipp_press(1, 8000, 100, 5);
        // SIPp's sequence numbers jump between digits.
        packets.extend(sipp_press(11, 16000, 400, 4));
        packets.extend(sipp_press(1, 24000, 900, 6));
        for (i, (_seq, ts, m, p)) in packets.iter().enumerate() {
            let now = t0 + Duration::from_millis(20 * i as u64);
            rx.handle_packet(SIPP_SSRC, *ts, *m, p, now).unwrap();
        }
        // A very late retransmission of the first end packet changes nothing.
        rx.handle_packet(
            SIPP_SSRC,
            8000,
            false,
            &payload(1, true, 800),
            t0 + Duration::from_secs(2),
        )
        .unwrap();
        assert_eq!(
            drain(&mut rx),
            vec![
                DtmfDigit {
                    digit: '1',
                    duration_ms: 100
                },
                DtmfDigit {
                    digit: '#',
                    duration_ms: 80
                },
                DtmfDigit {
                    digit: '1',
                    duration_ms: 120
                },
            ]
        );
        assert_eq!(rx.poll_timeout(), None);
    }

    #[test]
    fn digit_is_reported_at_first_end_packet() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::default();
        rx.handle_packet(1, 50, true, &payload(5, false, 160), t0)
            .unwrap();
        assert_eq!(rx.poll_digit(), None);
        rx.handle_packet(1, 50, false, &payload(5, true, 320), t0)
            .unwrap();
        assert_eq!(
            rx.poll_digit(),
            Some(DtmfDigit {
                digit: '5',
                duration_ms: 40
            })
        );
        rx.handle_packet(1, 50, false, &payload(5, true, 320), t0)
            .unwrap();
        rx.handle_packet(1, 50, false, &payload(5, true, 320), t0)
            .unwrap();
        assert_eq!(rx.poll_digit(), None);
    }

    #[test]
    fn lost_end_packets_reported_when_next_event_starts() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::default();
        rx.handle_packet(7, 1000, true, &payload(2, false, 160), t0)
            .unwrap();
        rx.handle_packet(7, 1000, false, &payload(2, false, 480), t0)
            .unwrap();
        // All end packets of '2' lost; the next event has only its end packets left.
        rx.handle_packet(7, 3000, false, &payload(3, true, 640), t0)
            .unwrap();
        assert_eq!(
            drain(&mut rx),
            vec![
                DtmfDigit {
                    digit: '2',
                    duration_ms: 60
                },
                DtmfDigit {
                    digit: '3',
                    duration_ms: 80
                },
            ]
        );
    }

    #[test]
    fn lost_end_packets_reported_after_timeout_once() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::default();
        rx.handle_packet(7, 1000, true, &payload(10, false, 160), t0)
            .unwrap();
        let deadline = rx.poll_timeout().unwrap();
        assert_eq!(deadline, t0 + DEFAULT_END_TIMEOUT);
        rx.handle_timeout(deadline - Duration::from_millis(1));
        assert_eq!(rx.poll_digit(), None);
        rx.handle_timeout(deadline);
        assert_eq!(
            rx.poll_digit(),
            Some(DtmfDigit {
                digit: '*',
                duration_ms: 20
            })
        );
        // Its late end packet is a retransmission of a reported digit.
        rx.handle_packet(7, 1000, false, &payload(10, true, 800), deadline)
            .unwrap();
        assert_eq!(rx.poll_digit(), None);
        assert_eq!(rx.poll_timeout(), None);
    }

    #[test]
    fn same_timestamp_different_ssrc_is_a_different_event() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::default();
        rx.handle_packet(1, 500, true, &payload(4, true, 160), t0)
            .unwrap();
        rx.handle_packet(2, 500, true, &payload(4, true, 160), t0)
            .unwrap();
        assert_eq!(drain(&mut rx).len(), 2);
    }

    #[test]
    fn malformed_payloads_are_refused() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::default();
        assert_eq!(
            rx.handle_packet(1, 1, true, &[1, 0x80, 0], t0),
            Err(DtmfError::TooShort(3))
        );
        assert_eq!(
            rx.handle_packet(1, 1, true, &[], t0),
            Err(DtmfError::TooShort(0))
        );
        assert_eq!(
            rx.handle_packet(1, 1, true, &payload(16, true, 160), t0),
            Err(DtmfError::NotDtmf(16))
        );
        assert_eq!(rx.poll_digit(), None);
        assert_eq!(rx.poll_timeout(), None);
    }

    #[test]
    fn payload_round_trip() {
        let p = EventPayload {
            event: 11,
            end: true,
            volume: 10,
            duration: 0xABCD,
        };
        assert_eq!(p.to_bytes(), [11, 0x8A, 0xAB, 0xCD]);
        assert_eq!(EventPayload::parse(&p.to_bytes()).unwrap(), p);
    }

    #[test]
    fn send_sequence() {
        let packets = event_packets('9', 100).unwrap();
        let parsed: Vec<_> = packets
            .iter()
            .map(|p| EventPayload::parse(&p.payload).unwrap())
            .collect();
        assert_eq!(packets.len(), 5 + 2);
        assert_eq!(
            packets.iter().map(|p| p.marker).collect::<Vec<_>>(),
            [true, false, false, false, false, false, false]
        );
        assert_eq!(
            parsed.iter().map(|p| p.duration).collect::<Vec<_>>(),
            [160, 320, 480, 640, 800, 800, 800]
        );
        assert_eq!(
            parsed.iter().map(|p| p.end).collect::<Vec<_>>(),
            [false, false, false, false, true, true, true]
        );
        assert!(parsed
            .iter()
            .all(|p| p.event == 9 && p.volume == EVENT_VOLUME));

        // Rounded up to whole frames; zero becomes one frame; huge is clamped.
        assert_eq!(event_packets('#', 90).unwrap().len(), 5 + 2);
        let one = event_packets('A', 0).unwrap();
        assert_eq!(one.len(), 3);
        assert!(one[0].marker && !one[1].marker);
        let long = event_packets('1', u32::MAX).unwrap();
        let last = EventPayload::parse(&long[long.len() - 1].payload).unwrap();
        assert_eq!(u32::from(last.duration), MAX_EVENT_FRAMES * 160);
        assert_eq!(event_packets('x', 100), Err(DtmfError::InvalidDigit('x')));
    }

    #[test]
    fn sender_output_feeds_receiver() {
        let t0 = Instant::now();
        let mut rx = DtmfReceiver::default();
        for p in event_packets('D', 200).unwrap() {
            rx.handle_packet(9, 77, p.marker, &p.payload, t0).unwrap();
        }
        assert_eq!(
            drain(&mut rx),
            vec![DtmfDigit {
                digit: 'D',
                duration_ms: 200
            }]
        );
    }
}
