//! The call detail record: built from the call's facts (IO-free), appended by `close`.
//! Add a CDR field here: a fact in [`CallFacts`], a key in [`record`].

use crate::call::state::EndReason;
use crate::sip::InviteInfo;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::time::Instant;

/// RTP counters of the caller's leg.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct RtpCounts {
    pub sent: u64,
    pub received: u64,
    pub lost: i64,
}

/// Everything the CDR says about a call.
#[derive(Debug, Clone)]
pub(super) struct CallFacts<'a> {
    pub info: &'a InviteInfo,
    pub started: DateTime<Utc>,
    pub answered: Option<DateTime<Utc>>,
    pub ended: DateTime<Utc>,
    pub reason: &'a EndReason,
    /// From our 200 to the end (0 when never answered).
    pub media_ms: u64,
    pub codec: Option<&'static str>,
    /// The forward's outcome (`completed:<mode>:<number>` / `failed:<reason>`).
    pub transfer: Option<&'a str>,
    pub recording_ids: &'a [String],
    pub rtp: RtpCounts,
    pub dtmf_digits: u32,
    /// The embedded bot's summary and step log (`None` for an external bot).
    pub flow: Option<Value>,
}

/// Milliseconds of media: from the answer to `now`.
pub(super) fn media_ms(answered_at: Option<Instant>, now: Instant) -> u64 {
    answered_at
        .map(|a| now.saturating_duration_since(a).as_millis() as u64)
        .unwrap_or(0)
}

/// The CDR line (docs/http-api.md, `GET /v1/cdrs`).
pub(super) fn record(f: &CallFacts) -> Value {
    json!({
        "call_id": f.info.call_id,
        "from": f.info.from_user,
        "from_uri": f.info.from_uri,
        "to": f.info.to_user,
        "to_uri": f.info.to_uri,
        "start": f.started.to_rfc3339(),
        "answer": f.answered.map(|t| t.to_rfc3339()),
        "end": f.ended.to_rfc3339(),
        "end_reason": f.reason.code(),
        "end_detail": match f.reason { EndReason::Error(e) => Some(e.clone()), _ => None },
        "duration_ms": f.media_ms,
        "codec": f.codec,
        "transfer": f.transfer,
        "recording_ids": f.recording_ids,
        "rtp": {"sent": f.rtp.sent, "received": f.rtp.received, "lost": f.rtp.lost},
        "dtmf_digits": f.dtmf_digits,
        "flow": f.flow,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn info() -> InviteInfo {
        InviteInfo {
            call_id: "c1@x".into(),
            from_uri: "sip:alice@10.0.0.9".into(),
            from_user: "alice".into(),
            to_uri: "sip:100@gw".into(),
            to_user: "100".into(),
            request_uri: "sip:100@gw".into(),
            headers: Default::default(),
            sdp: None,
            source: None,
            transport: "UDP",
        }
    }

    #[test]
    fn media_time_runs_from_the_answer() {
        let b = Instant::now();
        assert_eq!(media_ms(None, b + Duration::from_secs(5)), 0);
        assert_eq!(
            media_ms(
                Some(b + Duration::from_millis(250)),
                b + Duration::from_millis(4750)
            ),
            4500
        );
        // A clock that went "backwards" (answer after now) is 0, not a panic.
        assert_eq!(media_ms(Some(b + Duration::from_secs(1)), b), 0);
    }

    #[test]
    fn an_answered_transferred_call() {
        let info = info();
        let start = DateTime::parse_from_rfc3339("2025-03-01T10:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let ids = vec!["rec_a".to_string(), "rec_b".to_string()];
        let reason = EndReason::Transferred;
        let cdr = record(&CallFacts {
            info: &info,
            started: start,
            answered: Some(start + chrono::Duration::milliseconds(1500)),
            ended: start + chrono::Duration::seconds(20),
            reason: &reason,
            media_ms: 18_500,
            codec: Some("PCMA"),
            transfer: Some("completed:refer:+3225551212"),
            recording_ids: &ids,
            rtp: RtpCounts {
                sent: 925,
                received: 920,
                lost: 2,
            },
            dtmf_digits: 3,
            flow: Some(json!({"flow": "demo", "steps_ok": 4, "steps": []})),
        });
        assert_eq!(cdr["call_id"], "c1@x");
        assert_eq!(cdr["from"], "alice");
        assert_eq!(cdr["to_uri"], "sip:100@gw");
        assert_eq!(cdr["start"], "2025-03-01T10:00:00+00:00");
        assert_eq!(cdr["answer"], "2025-03-01T10:00:01.500+00:00");
        assert_eq!(cdr["end"], "2025-03-01T10:00:20+00:00");
        assert_eq!(cdr["end_reason"], "transferred");
        assert!(cdr["end_detail"].is_null());
        assert_eq!(cdr["duration_ms"], 18_500);
        assert_eq!(cdr["codec"], "PCMA");
        assert_eq!(cdr["transfer"], "completed:refer:+3225551212");
        assert_eq!(cdr["recording_ids"], json!(["rec_a", "rec_b"]));
        assert_eq!(cdr["rtp"], json!({"sent": 925, "received": 920, "lost": 2}));
        assert_eq!(cdr["dtmf_digits"], 3);
        assert_eq!(
            cdr["flow"]["flow"], "demo",
            "the flow summary reaches the CDR"
        );
    }

    #[test]
    fn an_unanswered_failed_call() {
        let info = info();
        let now = Utc::now();
        let reason = EndReason::Error("no usable SDP".into());
        let cdr = record(&CallFacts {
            info: &info,
            started: now,
            answered: None,
            ended: now,
            reason: &reason,
            media_ms: 0,
            codec: None,
            transfer: None,
            recording_ids: &[],
            rtp: RtpCounts::default(),
            dtmf_digits: 0,
            flow: None,
        });
        assert!(cdr["answer"].is_null());
        assert!(cdr["codec"].is_null());
        assert!(cdr["transfer"].is_null());
        assert_eq!(cdr["end_reason"], "error");
        assert_eq!(cdr["end_detail"], "no usable SDP");
        assert_eq!(cdr["recording_ids"], json!([]));
    }
}
