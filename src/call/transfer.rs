//! "Forward call" as one atomic step, as an IO-free state machine.
//!
//! The number has already been validated and checked against the policy (see `phone`). This
//! machine runs the SIP side: REFER and its NOTIFYs, or a bridged B2BUA leg, or REFER first
//! then bridge (auto). It ends with exactly one outcome, `Completed` or `Failed`, and tells
//! the call what SIP to send on the way. Timers are deadlines the shell wakes us for.

use crate::config::TransferMode;
use std::time::{Duration, Instant};

/// What happened on the SIP side of a forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferInput {
    /// The REFER transaction's final response (408 when it timed out, 0 when it could not be sent).
    ReferAnswered(u16),
    /// A NOTIFY's sipfrag status line.
    Notify(u16),
    /// A provisional response (180/183) on the bridged leg.
    BridgeProgress(u16),
    /// 200 OK on the bridged leg (already ACKed).
    BridgeAnswered,
    /// A final failure on the bridged leg (0 = could not even send it).
    BridgeFailed(u16),
    /// The caller (transferee) hung up while the forward was in progress.
    CallerBye,
}

/// What the call must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferOutput {
    SendRefer,
    StartBridge,
    CancelBridge,
    /// The REFER succeeded: voxgate leaves the call with a BYE to the caller.
    HangupCaller,
    /// Progress for the bot (`transfer.progress`).
    Progress(u16),
    /// The single terminal success. `mode` is "refer" or "bridge".
    Completed {
        mode: &'static str,
    },
    /// The single terminal failure; the call goes back to the bot.
    Failed {
        reason: &'static str,
        detail: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// REFER sent, waiting for its final response.
    ReferSent,
    /// 202 received, waiting for the final NOTIFY.
    ReferAccepted,
    /// Bridged leg INVITE sent, ringing.
    Bridging,
    Done,
}

/// Timing knobs (from `[transfer]`).
#[derive(Debug, Clone, Copy)]
pub struct TransferTimers {
    pub refer_timeout: Duration,
    pub ring_timeout: Duration,
}

/// One forward in progress.
#[derive(Debug)]
pub struct Transfer {
    mode: TransferMode,
    phase: Phase,
    timers: TransferTimers,
    deadline: Option<Instant>,
    /// Why REFER did not work, kept for the final report when the bridge fails too.
    refer_failure: Option<String>,
}

impl Transfer {
    /// Starts a forward; returns the machine and its first outputs.
    pub fn start(
        mode: TransferMode,
        timers: TransferTimers,
        now: Instant,
    ) -> (Transfer, Vec<TransferOutput>) {
        let mut t = Transfer {
            mode,
            phase: Phase::Done,
            timers,
            deadline: None,
            refer_failure: None,
        };
        let out = match mode {
            TransferMode::Refer | TransferMode::Auto => {
                t.phase = Phase::ReferSent;
                t.deadline = Some(now + timers.refer_timeout);
                vec![TransferOutput::SendRefer]
            }
            TransferMode::Bridge => t.bridge(now),
        };
        (t, out)
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// True while the bridged leg is ringing (its media should be relayed as early media).
    pub fn is_bridging(&self) -> bool {
        self.phase == Phase::Bridging
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            None
        } else {
            self.deadline
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<TransferOutput> {
        match self.deadline {
            Some(d) if now >= d && self.phase != Phase::Done => {}
            _ => return Vec::new(),
        }
        self.deadline = None;
        match self.phase {
            Phase::ReferSent | Phase::ReferAccepted => self.refer_failed(
                "timeout",
                format!(
                    "no final NOTIFY within {} s of the REFER",
                    self.timers.refer_timeout.as_secs()
                ),
                now,
            ),
            Phase::Bridging => {
                let mut out = vec![TransferOutput::CancelBridge];
                out.extend(self.fail(
                    "no_answer",
                    format!(
                        "the destination did not answer within {} s",
                        self.timers.ring_timeout.as_secs()
                    ),
                ));
                out
            }
            Phase::Done => Vec::new(),
        }
    }

    pub fn handle(&mut self, input: TransferInput, now: Instant) -> Vec<TransferOutput> {
        match (self.phase, input) {
            (Phase::Done, _) => Vec::new(),
            (Phase::ReferSent, TransferInput::ReferAnswered(code))
                if (200..300).contains(&code) =>
            {
                self.phase = Phase::ReferAccepted;
                self.deadline = Some(now + self.timers.refer_timeout);
                vec![TransferOutput::Progress(code)]
            }
            (Phase::ReferSent, TransferInput::ReferAnswered(code)) if code < 200 => {
                vec![TransferOutput::Progress(code)]
            }
            (Phase::ReferSent, TransferInput::ReferAnswered(code)) => self.refer_failed(
                "refer_rejected",
                if code == 0 {
                    "the REFER could not be sent".into()
                } else {
                    format!("the caller's side refused the REFER with {code}")
                },
                now,
            ),
            (Phase::ReferSent | Phase::ReferAccepted, TransferInput::Notify(code)) => {
                if code < 200 {
                    return vec![TransferOutput::Progress(code)];
                }
                if code < 300 {
                    self.phase = Phase::Done;
                    return vec![
                        TransferOutput::HangupCaller,
                        TransferOutput::Completed { mode: "refer" },
                    ];
                }
                let reason = failure_reason(code);
                self.refer_failed(reason, format!("the transfer target answered {code}"), now)
            }
            (Phase::ReferSent | Phase::ReferAccepted, TransferInput::CallerBye) => {
                // The transferee left on its own after accepting the REFER: it has what it
                // needs, so the forward succeeded (RFC 5589 §6 allows either side to BYE).
                self.phase = Phase::Done;
                vec![TransferOutput::Completed { mode: "refer" }]
            }
            (Phase::Bridging, TransferInput::BridgeProgress(code)) => {
                vec![TransferOutput::Progress(code)]
            }
            (Phase::Bridging, TransferInput::BridgeAnswered) => {
                self.phase = Phase::Done;
                vec![TransferOutput::Completed { mode: "bridge" }]
            }
            (Phase::Bridging, TransferInput::BridgeFailed(code)) => {
                let reason = if code == 0 {
                    "trunk_error"
                } else {
                    failure_reason(code)
                };
                let detail = if code == 0 {
                    "the call to the trunk could not be sent".to_string()
                } else {
                    format!("the trunk answered {code}")
                };
                self.fail(reason, detail)
            }
            (Phase::Bridging, TransferInput::CallerBye) => {
                let mut out = vec![TransferOutput::CancelBridge];
                out.extend(self.fail("caller_hangup", "the caller hung up first".into()));
                out
            }
            // Late or unrelated inputs (a NOTIFY after we moved to bridging, ...): ignore.
            _ => Vec::new(),
        }
    }

    fn bridge(&mut self, now: Instant) -> Vec<TransferOutput> {
        self.phase = Phase::Bridging;
        self.deadline = Some(now + self.timers.ring_timeout);
        vec![TransferOutput::StartBridge]
    }

    fn refer_failed(
        &mut self,
        reason: &'static str,
        detail: String,
        now: Instant,
    ) -> Vec<TransferOutput> {
        if self.mode == TransferMode::Auto {
            self.refer_failure = Some(detail);
            return self.bridge(now);
        }
        self.fail(reason, detail)
    }

    fn fail(&mut self, reason: &'static str, detail: String) -> Vec<TransferOutput> {
        self.phase = Phase::Done;
        self.deadline = None;
        let detail = match self.refer_failure.take() {
            Some(refer) => format!("{detail} (REFER before it: {refer})"),
            None => detail,
        };
        vec![TransferOutput::Failed { reason, detail }]
    }
}

/// Maps a SIP failure status to the reason a bot builder sees.
pub fn failure_reason(code: u16) -> &'static str {
    match code {
        486 | 600 => "busy",
        408 | 480 | 487 => "no_answer",
        603 => "declined",
        404 | 484 | 604 => "invalid_destination",
        _ => "trunk_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransferInput::*;
    use TransferOutput::*;

    const TIMERS: TransferTimers = TransferTimers {
        refer_timeout: Duration::from_secs(15),
        ring_timeout: Duration::from_secs(30),
    };

    fn at(base: Instant, s: u64) -> Instant {
        base + Duration::from_secs(s)
    }

    #[test]
    fn refer_success_hangs_up_the_caller_once() {
        let b = Instant::now();
        let (mut t, out) = Transfer::start(TransferMode::Refer, TIMERS, b);
        assert_eq!(out, vec![SendRefer]);
        assert_eq!(t.handle(ReferAnswered(202), at(b, 1)), vec![Progress(202)]);
        assert_eq!(t.handle(Notify(100), at(b, 2)), vec![Progress(100)]);
        assert_eq!(
            t.handle(Notify(200), at(b, 3)),
            vec![HangupCaller, Completed { mode: "refer" }]
        );
        assert!(t.is_done());
        assert!(t.handle(Notify(200), at(b, 4)).is_empty());
        assert!(t.handle_timeout(at(b, 60)).is_empty());
    }

    #[test]
    fn refer_refused_in_auto_mode_falls_back_to_bridge() {
        let b = Instant::now();
        let (mut t, _) = Transfer::start(TransferMode::Auto, TIMERS, b);
        assert_eq!(t.handle(ReferAnswered(405), at(b, 1)), vec![StartBridge]);
        assert!(t.is_bridging());
        assert_eq!(t.handle(BridgeProgress(180), at(b, 2)), vec![Progress(180)]);
        assert_eq!(
            t.handle(BridgeAnswered, at(b, 3)),
            vec![Completed { mode: "bridge" }]
        );
    }

    #[test]
    fn refer_refused_in_refer_mode_fails() {
        let b = Instant::now();
        let (mut t, _) = Transfer::start(TransferMode::Refer, TIMERS, b);
        let out = t.handle(ReferAnswered(405), at(b, 1));
        assert!(
            matches!(
                &out[..],
                [Failed {
                    reason: "refer_rejected",
                    ..
                }]
            ),
            "{out:?}"
        );
    }

    #[test]
    fn accepted_but_no_notify_times_out_after_15s_from_the_202() {
        let b = Instant::now();
        let (mut t, _) = Transfer::start(TransferMode::Refer, TIMERS, b);
        t.handle(ReferAnswered(202), at(b, 2));
        assert_eq!(t.poll_timeout(), Some(at(b, 17)));
        assert!(t.handle_timeout(at(b, 16)).is_empty());
        let out = t.handle_timeout(at(b, 17));
        assert!(
            matches!(
                &out[..],
                [Failed {
                    reason: "timeout",
                    ..
                }]
            ),
            "{out:?}"
        );
        // The same case in auto mode bridges instead.
        let (mut t, _) = Transfer::start(TransferMode::Auto, TIMERS, b);
        t.handle(ReferAnswered(202), at(b, 2));
        assert_eq!(t.handle_timeout(at(b, 17)), vec![StartBridge]);
        assert_eq!(t.poll_timeout(), Some(at(b, 47)));
    }

    #[test]
    fn failed_notify_maps_to_a_reason_or_bridges() {
        let b = Instant::now();
        let (mut t, _) = Transfer::start(TransferMode::Refer, TIMERS, b);
        t.handle(ReferAnswered(202), b);
        let out = t.handle(Notify(486), b);
        assert!(
            matches!(&out[..], [Failed { reason: "busy", .. }]),
            "{out:?}"
        );
        let (mut t, _) = Transfer::start(TransferMode::Auto, TIMERS, b);
        t.handle(ReferAnswered(202), b);
        assert_eq!(t.handle(Notify(503), b), vec![StartBridge]);
    }

    #[test]
    fn bridge_busy_and_ring_timeout() {
        let b = Instant::now();
        let (mut t, out) = Transfer::start(TransferMode::Bridge, TIMERS, b);
        assert_eq!(out, vec![StartBridge]);
        let out = t.handle(BridgeFailed(486), at(b, 1));
        assert!(
            matches!(&out[..], [Failed { reason: "busy", .. }]),
            "{out:?}"
        );

        let (mut t, _) = Transfer::start(TransferMode::Bridge, TIMERS, b);
        t.handle(BridgeProgress(180), at(b, 1));
        assert!(t.handle_timeout(at(b, 29)).is_empty());
        let out = t.handle_timeout(at(b, 30));
        assert_eq!(out[0], CancelBridge);
        assert!(
            matches!(
                &out[1],
                Failed {
                    reason: "no_answer",
                    ..
                }
            ),
            "{out:?}"
        );
    }

    #[test]
    fn auto_failure_after_both_attempts_mentions_the_refer() {
        let b = Instant::now();
        let (mut t, _) = Transfer::start(TransferMode::Auto, TIMERS, b);
        t.handle(ReferAnswered(501), b);
        let out = t.handle(BridgeFailed(503), b);
        match &out[..] {
            [Failed { reason, detail }] => {
                assert_eq!(*reason, "trunk_error");
                assert!(detail.contains("501"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transferee_bye_after_202_counts_as_completed() {
        let b = Instant::now();
        let (mut t, _) = Transfer::start(TransferMode::Refer, TIMERS, b);
        t.handle(ReferAnswered(202), b);
        assert_eq!(t.handle(CallerBye, b), vec![Completed { mode: "refer" }]);
    }

    #[test]
    fn caller_bye_while_bridging_cancels_the_leg() {
        let b = Instant::now();
        let (mut t, _) = Transfer::start(TransferMode::Bridge, TIMERS, b);
        let out = t.handle(CallerBye, b);
        assert_eq!(out[0], CancelBridge);
        assert!(matches!(
            &out[1],
            Failed {
                reason: "caller_hangup",
                ..
            }
        ));
    }

    #[test]
    fn reasons() {
        for (code, r) in [
            (486, "busy"),
            (600, "busy"),
            (480, "no_answer"),
            (408, "no_answer"),
            (603, "declined"),
            (404, "invalid_destination"),
            (500, "trunk_error"),
            (503, "trunk_error"),
        ] {
            assert_eq!(failure_reason(code), r);
        }
    }
}
