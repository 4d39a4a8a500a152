//! Receive-side statistics for one remote RTP source (RFC 3550 appendix A.1, A.3, A.8):
//! extended sequence numbers across the 16-bit wrap, duplicate detection, loss counts for
//! RTCP report blocks and the interarrival jitter estimate.

/// A jump ahead of at most this many sequence numbers is taken as loss (RFC 3550 A.1).
const MAX_DROPOUT: u16 = 3000;
/// A packet at most this far behind the highest one is taken as reordered (RFC 3550 A.1).
const MAX_MISORDER: u16 = 100;
/// Sequence numbers behind the highest whose receipt we remember, to spot duplicates.
const HISTORY: u64 = 128;

/// What a sequence number means for the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqUpdate {
    /// New highest packet; the extended sequence number.
    Ahead(u64),
    /// An earlier packet arriving late (reordered); not seen before.
    Late(u64),
    /// Already received.
    Duplicate,
    /// Far outside the expected window; dropped unless the next packet follows it.
    Discarded,
    /// The sender restarted its sequence numbers (two sequential far-off packets): all
    /// counters were reset and this packet starts the new run.
    Restarted(u64),
}

/// Loss figures for one RTCP report block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossReport {
    /// Fraction of packets lost since the previous report, in 1/256.
    pub fraction_lost: u8,
    /// Packets expected minus packets received since the stream began.
    pub cumulative_lost: i64,
    /// Highest sequence number received, extended with the wrap count since the stream
    /// began, as RFC 3550 counts it (the low 32 bits go on the wire).
    pub extended_highest: u64,
}

/// Sequence and jitter state for one SSRC.
#[derive(Debug, Clone)]
pub struct SeqTracker {
    /// Highest extended sequence number seen.
    max_ext: u64,
    base_ext: u64,
    /// The sequence number that would confirm a restart, if a far-off packet was seen.
    bad_seq: Option<u16>,
    /// Bit i set: `max_ext - i` was received.
    history: u128,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Jitter estimate in RTP clock units, scaled by 16 (RFC 3550 A.8).
    jitter_x16: u64,
    last_transit: Option<u32>,
}

impl SeqTracker {
    /// Starts tracking at the first packet's sequence number (counted as received).
    pub fn new(first_seq: u16) -> Self {
        // Start one 65536-cycle up so packets reordered before the first stay representable.
        let ext = (1 << 16) + u64::from(first_seq);
        SeqTracker {
            max_ext: ext,
            base_ext: ext,
            bad_seq: None,
            history: 1,
            received: 1,
            expected_prior: 0,
            received_prior: 0,
            jitter_x16: 0,
            last_transit: None,
        }
    }

    /// The extended sequence number of the first packet.
    pub fn first_extended(&self) -> u64 {
        self.base_ext
    }

    /// Classifies a sequence number and updates the counters.
    pub fn update(&mut self, seq: u16) -> SeqUpdate {
        let max_seq = self.max_ext as u16; // low 16 bits
        let delta = seq.wrapping_sub(max_seq);
        if delta == 0 {
            return SeqUpdate::Duplicate;
        }
        if delta < MAX_DROPOUT {
            self.bad_seq = None;
            self.max_ext += u64::from(delta);
            self.history = if u64::from(delta) >= HISTORY {
                1
            } else {
                (self.history << delta) | 1
            };
            self.received += 1;
            return SeqUpdate::Ahead(self.max_ext);
        }
        let behind = 65536 - u64::from(delta);
        if behind <= u64::from(MAX_MISORDER) {
            let ext = self.max_ext - behind;
            if ext < self.base_ext {
                return SeqUpdate::Discarded; // from before the stream began
            }
            let bit = 1u128 << behind;
            if self.history & bit != 0 {
                return SeqUpdate::Duplicate;
            }
            self.history |= bit;
            self.received += 1;
            return SeqUpdate::Late(ext);
        }
        // A big jump: accept it only if the next packet confirms it (RFC 3550 A.1).
        if self.bad_seq == Some(seq) {
            // Keep extended numbers increasing so a restart never looks like going back.
            let ext = (((self.max_ext >> 16) + 2) << 16) | u64::from(seq);
            *self = SeqTracker::new(seq);
            self.max_ext = ext;
            self.base_ext = ext;
            SeqUpdate::Restarted(ext)
        } else {
            self.bad_seq = Some(seq.wrapping_add(1));
            SeqUpdate::Discarded
        }
    }

    /// Feeds the jitter estimate with an audio packet's RTP timestamp and its arrival time
    /// in RTP clock units (any fixed origin).
    pub fn update_jitter(&mut self, rtp_timestamp: u32, arrival: u32) {
        let transit = arrival.wrapping_sub(rtp_timestamp);
        if let Some(last) = self.last_transit {
            let d = u64::from((transit.wrapping_sub(last) as i32).unsigned_abs());
            // J += (|D| - J) / 16, kept scaled by 16 as in RFC 3550 A.8.
            self.jitter_x16 = self.jitter_x16 + d - ((self.jitter_x16 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// Interarrival jitter in RTP clock units.
    pub fn jitter(&self) -> u32 {
        u32::try_from(self.jitter_x16 >> 4).unwrap_or(u32::MAX)
    }

    /// Packets received (duplicates excluded).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected from the first to the highest sequence number.
    pub fn expected(&self) -> u64 {
        self.max_ext - self.base_ext + 1
    }

    /// Packets never received (so far).
    pub fn cumulative_lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    pub fn extended_highest(&self) -> u64 {
        self.max_ext
    }

    /// Loss figures for a report block, starting a new reporting interval.
    pub fn take_report(&mut self) -> LossReport {
        let expected = self.expected();
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            u8::try_from(((lost_interval as u64) << 8) / expected_interval).unwrap_or(u8::MAX)
        };
        LossReport {
            fraction_lost,
            cumulative_lost: self.cumulative_lost(),
            // Internally we start one or more cycles up; the wire counts from zero cycles.
            extended_highest: self.max_ext - (self.base_ext & !0xFFFF),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext_of(u: SeqUpdate) -> u64 {
        match u {
            SeqUpdate::Ahead(e) | SeqUpdate::Late(e) | SeqUpdate::Restarted(e) => e,
            other => panic!("no extended seq in {other:?}"),
        }
    }

    #[test]
    fn wraps_at_65536() {
        let mut t = SeqTracker::new(65534);
        let base = t.first_extended();
        assert_eq!(ext_of(t.update(65535)), base + 1);
        assert_eq!(ext_of(t.update(0)), base + 2);
        assert_eq!(ext_of(t.update(1)), base + 3);
        assert_eq!(t.cumulative_lost(), 0);
        assert_eq!(t.expected(), 4);
        assert_eq!(t.take_report().extended_highest, 65536 + 1);
        // Reordered across the wrap.
        let mut t = SeqTracker::new(65535);
        let base = t.first_extended();
        assert_eq!(t.update(1), SeqUpdate::Ahead(base + 2));
        assert_eq!(t.update(0), SeqUpdate::Late(base + 1));
        assert_eq!(t.cumulative_lost(), 0);
    }

    #[test]
    fn duplicates_and_loss() {
        let mut t = SeqTracker::new(10);
        assert!(matches!(t.update(11), SeqUpdate::Ahead(_)));
        assert_eq!(t.update(11), SeqUpdate::Duplicate);
        assert!(matches!(t.update(14), SeqUpdate::Ahead(_)));
        assert_eq!(t.cumulative_lost(), 2);
        assert!(matches!(t.update(12), SeqUpdate::Late(_)));
        assert_eq!(t.update(12), SeqUpdate::Duplicate);
        assert_eq!(t.update(10), SeqUpdate::Duplicate);
        assert_eq!(t.cumulative_lost(), 1);
        assert_eq!(t.received(), 4);
        // Before the first packet: not part of this stream's accounting.
        assert_eq!(t.update(5), SeqUpdate::Discarded);
    }

    #[test]
    fn big_jump_needs_confirmation() {
        let mut t = SeqTracker::new(100);
        let before = t.extended_highest();
        assert_eq!(t.update(40000), SeqUpdate::Discarded);
        assert_eq!(t.extended_highest(), before);
        assert!(matches!(t.update(101), SeqUpdate::Ahead(_)));
        assert_eq!(t.update(40000), SeqUpdate::Discarded);
        let SeqUpdate::Restarted(ext) = t.update(40001) else {
            panic!("expected restart");
        };
        assert!(ext > before);
        assert_eq!(t.received(), 1);
        assert_eq!(t.update(40002), SeqUpdate::Ahead(ext + 1));
    }

    #[test]
    fn report_fraction_lost_per_interval() {
        let mut t = SeqTracker::new(0);
        for s in 1..100u16 {
            if s % 4 != 0 {
                t.update(s);
            }
        }
        // 100 expected, 76 received.
        let r = t.take_report();
        assert_eq!(r.cumulative_lost, 24);
        assert_eq!(r.fraction_lost, ((24u64 << 8) / 100) as u8);
        for s in 100..200u16 {
            t.update(s);
        }
        let r = t.take_report();
        assert_eq!(r.fraction_lost, 0);
        assert_eq!(r.cumulative_lost, 24);
        assert_eq!(r.extended_highest, 199);
    }

    #[test]
    fn jitter_follows_rfc3550() {
        let mut t = SeqTracker::new(0);
        // Perfectly paced: zero jitter.
        for i in 0..50u32 {
            t.update_jitter(i * 160, 1000 + i * 160);
        }
        assert_eq!(t.jitter(), 0);
        // Arrivals alternating 8 ticks (1 ms) late and on time: |D| = 8 each packet.
        for i in 50..2000u32 {
            let wobble = if i % 2 == 0 { 8 } else { 0 };
            t.update_jitter(i * 160, 1000 + i * 160 + wobble);
        }
        assert!((7..=8).contains(&t.jitter()), "jitter {}", t.jitter());
        // Timestamp wrap does not upset it.
        let mut t = SeqTracker::new(0);
        for i in 0..100u32 {
            let ts = (u32::MAX - 800).wrapping_add(i * 160);
            t.update_jitter(ts, i * 160);
        }
        assert_eq!(t.jitter(), 0);
    }
}
