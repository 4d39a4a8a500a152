//! Start-up repair of recordings interrupted by a crash or kill -9. Run it once, before any
//! new recording starts: it treats every `.wav.part` and every `recording` sidecar as
//! orphaned.

use std::path::Path;

use chrono::Utc;

use super::feed::ChannelMode;
use super::id::RecordingId;
use super::sidecar::{rfc3339, RecordingMeta, RecordingStatus, Sidecar};
use super::store::{self, RecordingPaths};
use super::wavfix::{self, WavRepair};
use super::{metric, RecorderError};

/// What `recover_dir` did.
#[derive(Debug, Default, PartialEq)]
pub struct RecoveryReport {
    pub recovered: Vec<RecordingId>,
    pub failed: Vec<(RecordingId, String)>,
}

/// Repairs every interrupted recording in `dir`: fixes the WAV sizes from the file length
/// (whole frames only), renames `.wav.part` to `.wav`, hashes it and marks the sidecar
/// `recovered`. Files that hold no usable audio are marked `failed` with the reason. A
/// recording already marked `failed` is left as it is.
pub fn recover_dir(dir: &Path) -> Result<RecoveryReport, RecorderError> {
    for id in store::ids_with_suffix(dir, ".json.tmp")? {
        let _ = std::fs::remove_file(dir.join(format!("{id}.json.tmp")));
    }
    let mut candidates = store::ids_with_suffix(dir, ".wav.part")?;
    for s in store::list(dir)? {
        if s.status == RecordingStatus::Recording {
            if let Some(id) = RecordingId::parse(&s.id) {
                candidates.push(id);
            }
        }
    }
    candidates.sort();
    candidates.dedup();

    let mut report = RecoveryReport::default();
    for id in candidates {
        let sidecar = match store::read_sidecar(dir, &id) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(recording = %id, error = %e, "sidecar unreadable, rebuilding it");
                None
            }
        };
        if let Some(s) = &sidecar {
            if s.status == RecordingStatus::Failed {
                // Failed while the process ran (e.g. a full disk) but its partial audio was
                // never moved into place: keep the audio, keep the status and the reason.
                let mut s = s.clone();
                keep_partial_audio(dir, &id, &mut s);
                store::write_sidecar(dir, &id, &s)?;
                continue;
            }
            if s.status != RecordingStatus::Recording {
                continue;
            }
        }
        let mut sidecar = sidecar.unwrap_or_else(|| {
            let started = id.timestamp().unwrap_or_else(Utc::now);
            Sidecar::new_recording(
                id.as_str(),
                &RecordingMeta::default(),
                started,
                ChannelMode::Stereo,
            )
        });
        match recover_one(dir, &id, &mut sidecar) {
            Ok(()) => {
                metrics::counter!(metric::RECOVERED).increment(1);
                tracing::info!(recording = %id, duration_ms = sidecar.duration_ms, "recording recovered");
                report.recovered.push(id.clone());
            }
            Err(reason) => {
                tracing::warn!(recording = %id, %reason, "recording could not be recovered");
                metrics::counter!(metric::ERRORS).increment(1);
                sidecar.mark_failed(&reason, Utc::now());
                report.failed.push((id.clone(), reason));
            }
        }
        store::write_sidecar(dir, &id, &sidecar)?;
    }
    Ok(report)
}

/// Repairs one recording's audio and fills in `sidecar`; `Err` is the failure reason.
fn recover_one(dir: &Path, id: &RecordingId, sidecar: &mut Sidecar) -> Result<(), String> {
    let paths = RecordingPaths::new(dir, id);
    let repair = if paths.part.exists() {
        let repair = wavfix::repair_file(&paths.part)
            .map_err(|e| format!("cannot repair {}: {e}", paths.part.display()))?
            .map_err(|e| format!("crashed before any audio was saved: {e}"))?;
        std::fs::rename(&paths.part, &paths.wav)
            .map_err(|e| format!("cannot rename repaired audio: {e}"))?;
        store::sync_dir(dir);
        repair
    } else if paths.wav.exists() {
        // Crashed between the rename and the final sidecar: the audio is complete.
        wavfix::repair_file(&paths.wav)
            .map_err(|e| format!("cannot read {}: {e}", paths.wav.display()))?
            .map_err(|e| format!("audio file is damaged: {e}"))?
    } else {
        return Err("audio file missing after crash".into());
    };
    let (sha256, bytes) = store::sha256_file(&paths.wav).map_err(|e| e.to_string())?;
    fill(sidecar, &repair, sha256, bytes);
    Ok(())
}

fn fill(sidecar: &mut Sidecar, repair: &WavRepair, sha256: String, bytes: u64) {
    sidecar.status = RecordingStatus::Recovered;
    sidecar.duration_ms = repair.duration_ms();
    sidecar.channels = repair.channels;
    sidecar.channel_mode = if repair.channels == 1 {
        ChannelMode::Mixed
    } else {
        ChannelMode::Stereo
    };
    sidecar.sample_rate = repair.sample_rate;
    sidecar.bytes = bytes;
    sidecar.sha256 = Some(sha256);
    let duration = chrono::Duration::milliseconds(i64::try_from(sidecar.duration_ms).unwrap_or(0));
    sidecar.ended_at = sidecar.started_at_utc().map(|t| rfc3339(t + duration));
}

/// For a recording that failed: moves whatever audio reached the disk into `<id>.wav` (sizes
/// repaired, whole frames only) and records its length, size and hash in `sidecar`, keeping
/// the `failed` status and reason. Best effort: nothing here may make things worse, and no
/// `.wav.part` is left behind when it can be renamed.
pub(crate) fn keep_partial_audio(dir: &Path, id: &RecordingId, sidecar: &mut Sidecar) {
    let paths = RecordingPaths::new(dir, id);
    if paths.part.exists() {
        match wavfix::repair_file(&paths.part) {
            Ok(Ok(_)) => {
                if std::fs::rename(&paths.part, &paths.wav).is_ok() {
                    store::sync_dir(dir);
                }
            }
            // Not even a header: nothing to keep.
            Ok(Err(_)) => {
                let _ = std::fs::remove_file(&paths.part);
            }
            Err(e) => {
                tracing::warn!(recording = %id, error = %e, "cannot repair partial audio");
                return;
            }
        }
    }
    if !paths.wav.exists() {
        return;
    }
    if let Ok(Ok(repair)) = wavfix::repair_file(&paths.wav) {
        sidecar.duration_ms = repair.duration_ms();
        sidecar.channels = repair.channels;
        sidecar.sample_rate = repair.sample_rate;
    }
    if let Ok((sha256, bytes)) = store::sha256_file(&paths.wav) {
        sidecar.sha256 = Some(sha256);
        sidecar.bytes = bytes;
    }
}
