//! The JSON sidecar that travels next to every recording. It is the recording's only
//! metadata store: the HTTP API, recovery and retention all read it, so a recording's state
//! survives restarts without a database.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::clock::ChannelMode;
use crate::media::codec::SAMPLE_RATE;

/// Where a recording is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecordingStatus {
    /// Still being written (`<id>.wav.part` exists).
    Recording,
    /// Finalized normally.
    Complete,
    /// Could not be written; `reason` says why.
    Failed,
    /// Repaired at start-up after the process died mid-recording.
    Recovered,
}

impl RecordingStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecordingStatus::Recording => "recording",
            RecordingStatus::Complete => "complete",
            RecordingStatus::Failed => "failed",
            RecordingStatus::Recovered => "recovered",
        }
    }
}

/// Who and what a recording belongs to; supplied by the call when it starts recording.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordingMeta {
    pub call_id: String,
    pub from: String,
    pub to: String,
}

/// The contents of `<id>.json`. Field names are part of the HTTP API (CONTRACT §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sidecar {
    pub id: String,
    pub call_id: String,
    pub from: String,
    pub to: String,
    /// RFC 3339, UTC, millisecond precision.
    pub started_at: String,
    /// RFC 3339; `null` while recording.
    #[serde(default)]
    pub ended_at: Option<String>,
    #[serde(default)]
    pub duration_ms: u64,
    pub channels: u16,
    /// `stereo` (left caller, right bot/far leg) or `mixed` (mono sum).
    #[serde(default)]
    pub channel_mode: ChannelMode,
    pub sample_rate: u32,
    /// Size of the audio file in bytes (0 until finalized).
    #[serde(default)]
    pub bytes: u64,
    /// Hex SHA-256 of the final `.wav`; `null` until finalized.
    #[serde(default)]
    pub sha256: Option<String>,
    pub status: RecordingStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// 20 ms frames replaced by silence because the writer queue was full.
    #[serde(default)]
    pub overflow_frames: u64,
    /// 20 ms frames dropped because ticks ran ahead of wall time.
    #[serde(default)]
    pub dropped_frames: u64,
    /// The node that made the recording (`[node] name`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// Where the verified copy lives in shared storage (`[recordings] shared_url`), once it
    /// has been copied there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_key: Option<String>,
}

impl Sidecar {
    /// The sidecar written when a recording starts.
    pub fn new_recording(
        id: &str,
        meta: &RecordingMeta,
        started_at: DateTime<Utc>,
        mode: ChannelMode,
    ) -> Self {
        Sidecar {
            id: id.to_owned(),
            call_id: meta.call_id.clone(),
            from: meta.from.clone(),
            to: meta.to.clone(),
            started_at: rfc3339(started_at),
            ended_at: None,
            duration_ms: 0,
            channels: mode.channels(),
            channel_mode: mode,
            sample_rate: SAMPLE_RATE,
            bytes: 0,
            sha256: None,
            status: RecordingStatus::Recording,
            reason: None,
            overflow_frames: 0,
            dropped_frames: 0,
            node: String::new(),
            shared_key: None,
        }
    }

    /// `started_at` parsed, if it is valid RFC 3339.
    pub fn started_at_utc(&self) -> Option<DateTime<Utc>> {
        parse_rfc3339(&self.started_at)
    }

    /// Marks the recording failed, keeping the first reason if it already failed.
    pub fn mark_failed(&mut self, reason: &str, ended_at: DateTime<Utc>) {
        if self.status != RecordingStatus::Failed {
            self.reason = Some(reason.to_owned());
        }
        self.status = RecordingStatus::Failed;
        self.ended_at.get_or_insert_with(|| rfc3339(ended_at));
    }
}

/// The one timestamp format used in sidecars and the API.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

pub fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn serializes_contract_fields() {
        let at = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        let meta = RecordingMeta {
            call_id: "c1".into(),
            from: "+3211".into(),
            to: "+3222".into(),
        };
        let s = Sidecar::new_recording("rec_x", &meta, at, ChannelMode::Stereo);
        let v = serde_json::to_value(&s).unwrap();
        for key in [
            "id",
            "call_id",
            "from",
            "to",
            "started_at",
            "ended_at",
            "duration_ms",
            "channels",
            "sample_rate",
            "bytes",
            "sha256",
            "status",
        ] {
            assert!(v.get(key).is_some(), "missing {key}");
        }
        assert_eq!(v["status"], "recording");
        assert_eq!(v["channels"], 2);
        assert_eq!(v["sample_rate"], 8000);
        assert_eq!(v["started_at"], "2024-05-01T12:00:00.000Z");
        assert!(v.get("reason").is_none());
        let back: Sidecar = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.started_at_utc(), Some(at));
    }

    #[test]
    fn mark_failed_keeps_first_reason() {
        let at = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        let mut s = Sidecar::new_recording("x", &RecordingMeta::default(), at, ChannelMode::Mixed);
        s.mark_failed("disk full", at);
        s.mark_failed("later", at);
        assert_eq!(s.status, RecordingStatus::Failed);
        assert_eq!(s.reason.as_deref(), Some("disk full"));
        assert_eq!(s.channels, 1);
    }
}
