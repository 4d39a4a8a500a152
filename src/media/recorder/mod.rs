//! Call recording: 8 kHz 16-bit WAV, caller on the left, bot / far leg on the right
//! (CONTRACT §6), written so the media path never waits on the disk.
//!
//! * [`clock`]: IO-free aligner that keeps the file's length equal to wall time.
//! * [`handle`]: [`Recorder`] (per-process) and [`ActiveRecording`] (per recording), the
//!   non-blocking API the call's media task uses.
//! * `writer`: the per-recording thread that owns the file.
//! * [`store`], [`sidecar`], [`id`]: the files on disk and their metadata.
//! * [`recovery`], [`retention`]: start-up repair of crashed recordings and old-file cleanup.
//!
//! See docs/recording.md for the file format and life cycle.

pub mod align;
pub mod clock;
pub mod handle;
pub mod id;
pub mod recovery;
pub mod retention;
pub mod sidecar;
pub mod store;
pub mod wavfix;
mod writer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use clock::{Aligned, ChannelMode, RecordingClock};
pub use handle::{ActiveRecording, Recorder, RecorderConfig, RecordingSink};
pub use id::RecordingId;
pub use recovery::{recover_dir, RecoveryReport};
pub use retention::sweep_retention;
pub use sidecar::{RecordingMeta, RecordingStatus, Sidecar};

/// Metric names, in one place so docs and dashboards can find them.
pub mod metric {
    pub const STARTED: &str = "voxgate_recordings_started_total";
    pub const COMPLETED: &str = "voxgate_recordings_completed_total";
    pub const RECOVERED: &str = "voxgate_recordings_recovered_total";
    pub const ERRORS: &str = "voxgate_recording_errors_total";
    pub const OVERFLOW_FRAMES: &str = "voxgate_recording_overflow_frames_total";

    /// Registers help texts with the installed metrics recorder; call once at start-up.
    pub fn describe() {
        metrics::describe_counter!(STARTED, "Recordings started");
        metrics::describe_counter!(COMPLETED, "Recordings finalized normally");
        metrics::describe_counter!(RECOVERED, "Recordings repaired after a crash");
        metrics::describe_counter!(ERRORS, "Recordings that failed to start, write or finalize");
        metrics::describe_counter!(
            OVERFLOW_FRAMES,
            "20 ms frames replaced by silence because the writer queue was full"
        );
    }
}

/// What happened to a recording (the call passes it on to its flow; media knows no flow).
///
/// Every `Recorder::start` produces exactly one `Started` or `Failed`. After `Started` come
/// `Stopped` (when the call stops it) and then `Ready` or `Failed` from the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum RecorderEvent {
    Started {
        id: RecordingId,
    },
    Stopped {
        id: RecordingId,
    },
    Failed {
        id: RecordingId,
        reason: String,
    },
    Ready {
        id: RecordingId,
        duration_ms: u64,
        sha256: String,
        bytes: u64,
        /// Frames lost to a full writer queue (written as silence).
        overflow_frames: u64,
    },
}

/// Why a recording could not start or a directory could not be processed.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("cannot create recordings directory {}: {source}", dir.display())]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create recording file {}: {source}", path.display())]
    CreateFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write WAV header to {}: {source}", path.display())]
    WavHeader { path: PathBuf, source: hound::Error },
    #[error("cannot write recording metadata: {0}")]
    Sidecar(#[from] store::StoreError),
    #[error("cannot start recording writer thread: {0}")]
    Spawn(std::io::Error),
}
