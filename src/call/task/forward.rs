//! Forward call: the number is validated and checked against the policy before any SIP goes
//! out; then the IO-free [`Transfer`] machine runs REFER / bridge / auto, and its outputs are
//! turned here into what the call must do ([`Effect`]). The B2BUA leg itself is `far_leg`.

use super::Call;
use crate::call::inbox::Inbox;
use crate::call::transfer::{Transfer, TransferInput, TransferOutput, TransferTimers};
use crate::config::TransferMode;
use crate::flow::FlowEvent;
use crate::media::core::MediaCommand;
use crate::phone::{parse_e164, DestinationPolicy, ParseOptions, PhoneError, PolicyError, E164};
use std::time::{Duration, Instant};
use tracing::{info, warn, Instrument};

/// How long after the final NOTIFY of a successful REFER voxgate sends its BYE: the 200 to
/// that NOTIFY goes out from the stack's own task, and a BYE that overtakes it confuses
/// strict peers.
pub(super) const LEAVE_AFTER_REFER: Duration = Duration::from_millis(50);

/// Why a forward is refused before any SIP is sent.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Refusal {
    /// A forward is already running, or the call is already bridged.
    Busy,
    /// Not a valid E.164 number.
    Invalid { raw: String, error: PhoneError },
    /// A valid number the policy does not allow.
    Denied { number: E164, error: PolicyError },
}

impl Refusal {
    /// What the flow hears (`transfer.failed`).
    pub fn flow_event(&self) -> FlowEvent {
        let (reason, detail) = match self {
            Refusal::Busy => ("busy", "a forward is already in progress".to_string()),
            Refusal::Invalid { error, .. } => (error.code(), error.reason()),
            Refusal::Denied { error, .. } => (error.code(), error.reason()),
        };
        FlowEvent::TransferFailed {
            reason: reason.into(),
            detail,
        }
    }

    /// The CDR's `transfer` field after this refusal (`None`: left as it was).
    pub fn cdr_outcome(&self) -> Option<&'static str> {
        match self {
            Refusal::Busy => None,
            Refusal::Invalid { .. } => Some("failed:invalid_number"),
            Refusal::Denied { .. } => Some("failed:denied"),
        }
    }

    pub(super) fn log(&self) {
        match self {
            Refusal::Busy => {}
            Refusal::Invalid { raw, error } => {
                warn!(
                    number = %raw,
                    reason = error.code(),
                    rule = error.rule(),
                    detail = %error.reason(),
                    "transfer.failed"
                );
                metrics::counter!("voxgate_transfers_total", "outcome" => "invalid_number")
                    .increment(1);
            }
            Refusal::Denied { number, error } => {
                warn!(
                    number = %number,
                    reason = error.code(),
                    detail = %error.reason(),
                    "transfer.failed"
                );
                metrics::counter!("voxgate_transfers_refused_total").increment(1);
                metrics::counter!("voxgate_transfers_total", "outcome" => "denied").increment(1);
            }
        }
    }
}

/// Validates a forward before any SIP: not busy, a valid E.164 number, allowed by policy.
pub(super) fn check_forward(
    raw: &str,
    busy: bool,
    opts: &ParseOptions,
    policy: &DestinationPolicy,
) -> Result<E164, Refusal> {
    if busy {
        return Err(Refusal::Busy);
    }
    let number = parse_e164(raw, opts).map_err(|error| Refusal::Invalid {
        raw: raw.to_string(),
        error,
    })?;
    match policy.check(&number) {
        Ok(()) => Ok(number),
        Err(error) => Err(Refusal::Denied { number, error }),
    }
}

/// Where a forward goes: a checked number (through the trunk) or, for an `offload`, a SIP
/// URI whose host `transfer.allow_uris` allows; with the context headers an offload adds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Target {
    pub dest: Dest,
    /// `X-...` / `User-to-User` headers for the REFER's Refer-To or the bridged INVITE.
    pub headers: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Dest {
    Number(E164),
    Uri(String),
}

impl From<E164> for Target {
    fn from(n: E164) -> Target {
        Target {
            dest: Dest::Number(n),
            headers: Vec::new(),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.dest {
            Dest::Number(n) => write!(f, "{n}"),
            Dest::Uri(u) => f.write_str(u),
        }
    }
}

impl Target {
    /// The Request-URI of a bridged INVITE (a number goes through the trunk).
    pub fn request_uri(&self, trunk: &str) -> String {
        match &self.dest {
            Dest::Number(n) => format!("sip:{n}@{trunk}"),
            Dest::Uri(u) => u.clone(),
        }
    }
}

/// `Refer-To` and `Referred-By` for a REFER to `target` (a number through the trunk). Context
/// headers ride in the Refer-To URI (`?X-Voxgate-Call-Id=...`), so the transferee's INVITE
/// carries them (RFC 3261 §19.1.5).
pub(super) fn refer_headers(target: &Target, trunk: &str, called_uri: &str) -> (String, String) {
    let uri = match &target.dest {
        Dest::Number(n) => format!("sip:{n}@{trunk};user=phone"),
        Dest::Uri(u) => u.clone(),
    };
    let refer_to = if target.headers.is_empty() {
        format!("<{uri}>")
    } else {
        format!(
            "<{uri}?{}>",
            crate::integrations::offload::uri_headers(&target.headers)
        )
    };
    (refer_to, format!("<{called_uri}>"))
}

/// What the call must do for one output of the forward.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Effect {
    SendRefer(Target),
    StartBridge(Target),
    /// CANCEL the far leg's INVITE and drop it.
    CancelFar,
    Flow(FlowEvent),
    /// The bot's session ends with the forward: one step, one result.
    CloseFlow,
    StopRecording,
    /// The caller now talks to the far leg: stop the bot's audio.
    Connected,
    /// Back with the bot: the far leg is dropped (unless connected).
    DropFar,
    /// The call's state in `GET /v1/calls`.
    State(&'static str),
}

/// The call's forward: the machine in progress, its outcome for the CDR, and when to leave
/// after a successful REFER (IO-free).
#[derive(Debug, Default)]
pub(super) struct Forward {
    active: Option<(Transfer, Target)>,
    /// For the CDR: `completed:<mode>:<number>` or `failed:<reason>`.
    outcome: Option<String>,
    /// After a successful REFER: when to send our BYE.
    leave_at: Option<Instant>,
}

impl Forward {
    pub fn in_progress(&self) -> bool {
        self.active.is_some()
    }
    pub fn outcome(&self) -> Option<&str> {
        self.outcome.as_deref()
    }
    pub fn leave_at(&self) -> Option<Instant> {
        self.leave_at
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.active.as_ref().and_then(|(t, _)| t.poll_timeout())
    }

    /// True once, when the time to leave after a REFER has come.
    pub fn take_leave(&mut self, now: Instant) -> bool {
        if self.leave_at.is_some_and(|t| now >= t) {
            self.leave_at = None;
            return true;
        }
        false
    }

    /// Books a refusal (its CDR outcome).
    pub fn refused(&mut self, r: &Refusal) {
        if let Some(o) = r.cdr_outcome() {
            self.outcome = Some(o.into());
        }
    }

    pub fn start(
        &mut self,
        mode: TransferMode,
        timers: TransferTimers,
        target: impl Into<Target>,
        now: Instant,
    ) -> Vec<TransferOutput> {
        let (t, out) = Transfer::start(mode, timers, now);
        self.active = Some((t, target.into()));
        out
    }

    pub fn handle(&mut self, input: TransferInput, now: Instant) -> Vec<TransferOutput> {
        match self.active.as_mut() {
            Some((t, _)) => t.handle(input, now),
            None => Vec::new(),
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) -> Vec<TransferOutput> {
        match self.active.as_mut() {
            Some((t, _)) => t.handle_timeout(now),
            None => Vec::new(),
        }
    }

    /// Turns one output of the machine into effects; nothing once the forward is over.
    pub fn apply(&mut self, o: TransferOutput, now: Instant) -> Vec<Effect> {
        let Some((_, number)) = self.active.as_ref() else {
            return Vec::new();
        };
        let number = number.clone();
        match o {
            TransferOutput::SendRefer => vec![Effect::SendRefer(number)],
            TransferOutput::StartBridge => vec![Effect::StartBridge(number)],
            TransferOutput::CancelBridge => vec![Effect::CancelFar],
            TransferOutput::HangupCaller => {
                info!("REFER accepted by the target: leaving the call");
                Vec::new()
            }
            TransferOutput::Progress(status) => {
                vec![Effect::Flow(FlowEvent::TransferProgress { status })]
            }
            TransferOutput::Completed { mode } => {
                info!(number = %number, mode, "transfer.completed");
                metrics::counter!("voxgate_transfers_total", "outcome" => "completed").increment(1);
                self.outcome = Some(format!("completed:{mode}:{number}"));
                self.active = None;
                let mut out = vec![
                    Effect::Flow(FlowEvent::TransferCompleted {
                        to: number.to_string(),
                        mode: mode.into(),
                    }),
                    Effect::CloseFlow,
                ];
                if mode == "refer" {
                    out.push(Effect::StopRecording);
                    self.leave_at = Some(now + LEAVE_AFTER_REFER);
                } else {
                    out.extend([Effect::Connected, Effect::State("bridged")]);
                }
                out
            }
            TransferOutput::Failed { reason, detail } => {
                warn!(number = %number, reason, %detail, "transfer.failed");
                metrics::counter!("voxgate_transfers_total", "outcome" => reason).increment(1);
                self.outcome = Some(format!("failed:{reason}"));
                self.active = None;
                vec![
                    Effect::DropFar,
                    Effect::State("confirmed"),
                    Effect::Flow(FlowEvent::TransferFailed {
                        reason: reason.into(),
                        detail,
                    }),
                ]
            }
        }
    }
}

impl Call {
    /// Stops a REFER transaction still running (unanswered, so still retransmitted): once the
    /// forward has moved on (bridge fallback, call over) nobody waits for its answer.
    pub(super) fn abandon_refer(&mut self) {
        if let Some(task) = self.refer_task.take() {
            if !task.is_finished() {
                task.abort();
                info!("REFER abandoned: no longer retransmitted");
            }
        }
    }

    /// Validates the number, checks the policy (before any SIP), then starts the forward.
    pub(super) fn start_transfer(&mut self, raw: &str, now: Instant) {
        let cfg = &self.shared.config.transfer;
        let opts = ParseOptions {
            legacy_no_plus: cfg.legacy_no_plus,
        };
        let busy = self.forward.in_progress() || self.bridged;
        let number = match check_forward(raw, busy, &opts, &self.shared.policy) {
            Ok(n) => n,
            Err(r) => {
                r.log();
                self.forward.refused(&r);
                self.flow_event(r.flow_event());
                return;
            }
        };
        self.begin_forward(number.into(), now);
    }

    /// Starts a checked forward (a number, or an offload's URI with its headers).
    pub(super) fn begin_forward(&mut self, number: Target, now: Instant) {
        let cfg = &self.shared.config.transfer;
        let timers = TransferTimers {
            refer_timeout: Duration::from_secs(cfg.refer_timeout_s),
            ring_timeout: Duration::from_secs(cfg.ring_timeout_s),
        };
        let mode = cfg.mode;
        info!(number = %number, mode = mode.as_str(), "forward starting");
        // `now` was taken before this drive pass (which may have stalled, e.g. on a synchronous
        // JSON-lines append); the REFER/bridge timers start when the SIP actually goes out.
        let out = self.forward.start(mode, timers, number, Instant::now());
        self.set_summary(|s| s.state = "transferring".into());
        self.transfer_outputs(out, now);
    }

    pub(super) fn transfer_input(&mut self, input: TransferInput) {
        let now = Instant::now();
        let out = self.forward.handle(input, now);
        self.transfer_outputs(out, now);
    }

    /// Carries out what the forward asks for. `now` is the drive pass's time (for the
    /// recorder); the leave timer starts from the current time.
    pub(super) fn transfer_outputs(&mut self, out: Vec<TransferOutput>, now: Instant) {
        for o in out {
            for effect in self.forward.apply(o, Instant::now()) {
                self.forward_effect(effect, now);
            }
        }
    }

    fn forward_effect(&mut self, effect: Effect, now: Instant) {
        match effect {
            Effect::SendRefer(number) => {
                let trunk = self.shared.validated.trunk.host_port();
                let (refer_to, referred_by) = refer_headers(&number, &trunk, &self.info.to_uri);
                info!(%refer_to, "sending REFER");
                let leg = self.leg.clone();
                let inbox = self.inbox_tx.clone();
                let task = tokio::spawn(
                    async move {
                        let status = match leg.refer(&refer_to, &referred_by).await {
                            Ok(code) => code,
                            Err(e) => {
                                warn!(error = %e, "REFER failed");
                                0
                            }
                        };
                        info!(status, "REFER answered");
                        inbox.post(Inbox::ReferAnswered { status });
                    }
                    .in_current_span(),
                );
                self.refer_task = Some(task.abort_handle());
            }
            Effect::StartBridge(number) => {
                self.abandon_refer();
                self.start_bridge(&number)
            }
            Effect::CancelFar => self.cancel_far(),
            Effect::Flow(ev) => self.flow_event(ev),
            Effect::CloseFlow => self.flow_closed = true,
            Effect::StopRecording => self.stop_recording(now, false),
            Effect::Connected => {
                self.bridged = true;
                self.media_cmd(MediaCommand::ClearAudio);
                self.media_cmd(MediaCommand::Bridge(true));
            }
            Effect::DropFar => self.drop_far(),
            Effect::State(state) => self.set_summary(|s| s.state = state.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMERS: TransferTimers = TransferTimers {
        refer_timeout: Duration::from_secs(15),
        ring_timeout: Duration::from_secs(30),
    };

    fn policy() -> DestinationPolicy {
        DestinationPolicy::new(vec!["+32".into(), "+44".into()], vec!["+3290".into()]).unwrap()
    }

    fn num(s: &str) -> E164 {
        parse_e164(s, &ParseOptions::default()).unwrap()
    }

    #[test]
    fn a_forward_is_checked_before_any_sip() {
        let strict = ParseOptions::default();
        let n = check_forward("+32 2 555 12 12", false, &strict, &policy()).expect("ok");
        assert_eq!(n.as_str(), "+3225551212");

        let r = check_forward("+32 2 555 12 12", true, &strict, &policy()).unwrap_err();
        assert_eq!(r, Refusal::Busy);
        assert_eq!(r.cdr_outcome(), None, "busy leaves the CDR's forward alone");

        let r = check_forward("025551212", false, &strict, &policy()).unwrap_err();
        assert!(matches!(r, Refusal::Invalid { .. }), "{r:?}");
        assert_eq!(r.cdr_outcome(), Some("failed:invalid_number"));
        match r.flow_event() {
            FlowEvent::TransferFailed { reason, detail } => {
                assert_eq!(reason, "invalid_number");
                assert!(detail.contains("international format"), "{detail}");
            }
            other => panic!("{other:?}"),
        }

        // Valid but denied (deny wins), and valid but not allowed.
        for raw in ["+32 90 12 34 56", "+33 1 42 68 53 00"] {
            let r = check_forward(raw, false, &strict, &policy()).unwrap_err();
            assert!(matches!(r, Refusal::Denied { .. }), "{raw}: {r:?}");
            assert_eq!(r.cdr_outcome(), Some("failed:denied"));
            assert!(matches!(
                r.flow_event(),
                FlowEvent::TransferFailed { reason, .. } if reason == "denied"
            ));
        }
    }

    #[test]
    fn legacy_numbers_only_when_configured() {
        let legacy = ParseOptions {
            legacy_no_plus: true,
        };
        assert!(check_forward("3225551212", false, &legacy, &policy()).is_ok());
        assert!(check_forward("3225551212", false, &ParseOptions::default(), &policy()).is_err());
    }

    #[test]
    fn an_offload_refers_to_its_uri_with_the_context_headers() {
        let t = Target {
            dest: Dest::Uri("sip:agents@127.0.0.1:5080".into()),
            headers: vec![
                ("X-Voxgate-Call-Id".into(), "abc@host".into()),
                ("X-Customer".into(), "Ann O'Brien".into()),
            ],
        };
        let (to, _) = refer_headers(&t, "trunk:5060", "sip:bot@gw");
        assert_eq!(
            to,
            "<sip:agents@127.0.0.1:5080?X-Voxgate-Call-Id=abc%40host&X-Customer=Ann%20O'Brien>"
        );
        assert_eq!(t.request_uri("trunk:5060"), "sip:agents@127.0.0.1:5080");
        let n: Target = num("+3225551212").into();
        assert_eq!(n.request_uri("trunk:5060"), "sip:+3225551212@trunk:5060");
        assert_eq!(n.to_string(), "+3225551212");
    }

    #[test]
    fn refer_names_the_number_at_the_trunk() {
        let (to, by) = refer_headers(
            &num("+3225551212").into(),
            "trunk.example:5060",
            "sip:bot@gw",
        );
        assert_eq!(to, "<sip:+3225551212@trunk.example:5060;user=phone>");
        assert_eq!(by, "<sip:bot@gw>");
    }

    #[test]
    fn a_successful_refer_closes_the_bot_and_leaves_50ms_later() {
        let b = Instant::now();
        let mut f = Forward::default();
        let out = f.start(TransferMode::Refer, TIMERS, num("+3225551212"), b);
        assert_eq!(
            out.into_iter()
                .flat_map(|o| f.apply(o, b))
                .collect::<Vec<_>>(),
            vec![Effect::SendRefer(num("+3225551212").into())]
        );
        let out = f.handle(TransferInput::ReferAnswered(202), b);
        assert_eq!(
            f.apply(out[0].clone(), b),
            vec![Effect::Flow(FlowEvent::TransferProgress { status: 202 })]
        );
        let t = b + Duration::from_secs(2);
        let effects: Vec<Effect> = f
            .handle(TransferInput::Notify(200), t)
            .into_iter()
            .flat_map(|o| f.apply(o, t))
            .collect();
        assert_eq!(
            effects,
            vec![
                Effect::Flow(FlowEvent::TransferCompleted {
                    to: "+3225551212".into(),
                    mode: "refer".into()
                }),
                Effect::CloseFlow,
                Effect::StopRecording,
            ]
        );
        assert!(!f.in_progress());
        assert_eq!(f.outcome(), Some("completed:refer:+3225551212"));
        assert_eq!(f.leave_at(), Some(t + LEAVE_AFTER_REFER));
        assert!(!f.take_leave(t + Duration::from_millis(49)));
        assert!(f.take_leave(t + Duration::from_millis(50)));
        assert!(!f.take_leave(t + Duration::from_millis(51)), "once");
        // Late NOTIFYs do nothing.
        assert!(f.handle(TransferInput::Notify(200), t).is_empty());
    }

    #[test]
    fn a_bridge_connects_the_caller_to_the_far_leg() {
        let b = Instant::now();
        let mut f = Forward::default();
        let out = f.start(TransferMode::Bridge, TIMERS, num("+442079460958"), b);
        assert_eq!(
            f.apply(out[0].clone(), b),
            vec![Effect::StartBridge(num("+442079460958").into())]
        );
        assert_eq!(f.poll_timeout(), Some(b + Duration::from_secs(30)));
        let out = f.handle(TransferInput::BridgeAnswered, b);
        let effects = f.apply(out[0].clone(), b);
        assert_eq!(
            &effects[1..],
            &[
                Effect::CloseFlow,
                Effect::Connected,
                Effect::State("bridged")
            ]
        );
        assert_eq!(f.leave_at(), None, "voxgate stays in a bridged call");
        assert_eq!(f.outcome(), Some("completed:bridge:+442079460958"));
    }

    #[test]
    fn a_failed_forward_goes_back_to_the_bot() {
        let b = Instant::now();
        let mut f = Forward::default();
        f.start(TransferMode::Bridge, TIMERS, num("+442079460958"), b);
        // Ring timeout: CANCEL the far leg, then the failure.
        let effects: Vec<Effect> = f
            .handle_timeout(b + Duration::from_secs(30))
            .into_iter()
            .flat_map(|o| f.apply(o, b))
            .collect();
        assert_eq!(effects[0], Effect::CancelFar);
        assert_eq!(effects[1..3], [Effect::DropFar, Effect::State("confirmed")]);
        assert!(matches!(
            &effects[3],
            Effect::Flow(FlowEvent::TransferFailed { reason, .. }) if reason == "no_answer"
        ));
        assert_eq!(f.outcome(), Some("failed:no_answer"));
        assert!(!f.in_progress());
        assert!(f.handle_timeout(b + Duration::from_secs(99)).is_empty());
    }

    #[test]
    fn a_refusal_after_a_completed_forward_keeps_the_completion_in_the_cdr() {
        let b = Instant::now();
        let mut f = Forward::default();
        f.start(TransferMode::Bridge, TIMERS, num("+442079460958"), b);
        for o in f.handle(TransferInput::BridgeAnswered, b) {
            f.apply(o, b);
        }
        f.refused(&Refusal::Busy);
        assert_eq!(f.outcome(), Some("completed:bridge:+442079460958"));
    }
}
