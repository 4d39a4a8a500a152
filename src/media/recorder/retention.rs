//! Deleting recordings past their retention period, so the recordings dir does not grow
//! without bound. The caller decides when to run it (e.g. hourly from a tokio interval via
//! `spawn_blocking`).

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};

use super::id::RecordingId;
use super::sidecar::{parse_rfc3339, RecordingStatus};
use super::{store, RecorderError};

/// Deletes every finished recording (any status but `recording`) that ended before
/// `now - max_age`; returns the ids removed. `retention_days = N` is `max_age = N * 86400 s`.
pub fn sweep_retention(
    dir: &Path,
    max_age: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<RecordingId>, RecorderError> {
    let Ok(max_age) = chrono::Duration::from_std(max_age) else {
        return Ok(Vec::new()); // an age beyond chrono's range keeps everything
    };
    let cutoff = now - max_age;
    let mut removed = Vec::new();
    for s in store::list(dir)? {
        if s.status == RecordingStatus::Recording {
            continue;
        }
        let Some(id) = RecordingId::parse(&s.id) else {
            continue;
        };
        let ended = s
            .ended_at
            .as_deref()
            .and_then(parse_rfc3339)
            .or_else(|| s.started_at_utc());
        if ended.is_some_and(|t| t < cutoff) {
            store::delete(dir, &id)?;
            tracing::info!(recording = %id, "recording deleted by retention");
            removed.push(id);
        }
    }
    Ok(removed)
}
