//! Call recording: 8 kHz 16-bit WAV, caller on the left, bot / far leg on the right
//! (CONTRACT §6), written so the media path never waits on the disk.
//!
//! * [`feed`]: [`RecordingFeed`], run by the call's media core on the media worker: pairs
//!   the caller's and the sent frames slot by slot on the send clock (so the file's length
//!   is wall time) and hands ~1 s blocks to the writer.
//! * [`align`]: places the caller's frames by RTP timestamp.
//! * [`handle`]: [`Recorder`], the per-process service the call task starts recordings with.
//! * [`writer`]: the two threads (writer, finalizer) that do all of recording's disk IO.
//! * [`store`], [`sidecar`], [`id`]: the files on disk and their metadata.
//! * [`recovery`], [`retention`]: start-up repair of crashed recordings and old-file cleanup.
//!
//! See docs/recording.md for the file format and life cycle.

pub mod align;
pub mod feed;
pub mod handle;
pub mod id;
pub mod recovery;
pub mod retention;
pub mod sidecar;
pub mod store;
pub mod wavfix;
pub mod writer;

#[cfg(test)]
mod tests;

pub use feed::{ChannelMode, FeedSpec, FeedSummary, PendingJob, RecordingFeed};
pub use handle::{Recorder, RecorderConfig, RecordingSink};
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
/// Every `Recorder::start` produces exactly one `Started` or `Failed` (from the writer, once
/// the files exist). The call reports `Stopped` itself when it stops a recording; `Ready`
/// or `Failed` follow from the writer.
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

/// Why a recording could not start.
#[derive(Debug, thiserror::Error)]
pub enum RecorderError {
    #[error("the recording writer is not running")]
    NoWriter,
    #[error("the recording writer is overloaded (queue full)")]
    Busy,
    #[error("cannot write recording metadata: {0}")]
    Sidecar(#[from] store::StoreError),
}
