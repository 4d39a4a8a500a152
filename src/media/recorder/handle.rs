//! [`Recorder`]: the process-wide recording service. Starting a recording only queues a
//! `Create` for the writer thread and hands back a [`FeedSpec`] for the call's media core;
//! nothing here touches the disk, so it is safe on a tokio worker.

use std::path::PathBuf;
use std::sync::mpsc::{SyncSender, TrySendError};
use std::sync::Arc;

use chrono::Utc;
use tokio::sync::watch;

use super::feed::{ChannelMode, FeedSpec};
use super::id::RecordingId;
use super::sidecar::{RecordingMeta, Sidecar};
use super::store;
use super::writer::{self, EventTx, Job};
use super::{metric, RecorderError, RecorderEvent};

/// Recording settings (the `[recordings]` config section).
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    pub channels: ChannelMode,
    /// The writer's queue, in jobs (a job is a block: 200 ms of one recording's audio); beyond
    /// it blocks are replaced by silence and counted.
    pub queue_blocks: usize,
    /// The node name written into every sidecar (`[node] name`).
    pub node: String,
    /// Told about every sidecar written (start, failure, final), e.g. to copy it to a shared
    /// store. Called from the writer threads; it must not block.
    pub sink: Option<RecordingSink>,
}

/// Receives every sidecar the recorder writes. Cheap to clone.
#[derive(Clone)]
pub struct RecordingSink(pub Arc<dyn Fn(&Sidecar) + Send + Sync>);

impl RecordingSink {
    pub fn notify(&self, sidecar: &Sidecar) {
        (self.0)(sidecar)
    }
}

impl std::fmt::Debug for RecordingSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordingSink")
    }
}

impl RecorderConfig {
    /// Stereo, and room for 2,048 queued blocks.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RecorderConfig {
            dir: dir.into(),
            channels: ChannelMode::Stereo,
            queue_blocks: 8192,
            node: String::new(),
            sink: None,
        }
    }
}

/// Starts recordings and tracks the ones still finishing. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    config: Arc<RecorderConfig>,
    active: Arc<watch::Sender<usize>>,
    writer: Option<SyncSender<Job>>,
}

impl Recorder {
    /// Starts the writer threads. Without them (the OS refused a thread) every recording
    /// fails to start, with that reason; calls go on.
    pub fn new(config: RecorderConfig) -> Self {
        let active = Arc::new(watch::Sender::new(0));
        let writer = match writer::spawn(
            config.dir.clone(),
            config.queue_blocks,
            active.clone(),
            config.sink.clone(),
        ) {
            Ok(tx) => Some(tx),
            Err(e) => {
                tracing::error!(error = %e, "cannot start the recording writer threads");
                None
            }
        };
        Recorder {
            config: Arc::new(config),
            active,
            writer,
        }
    }

    pub fn config(&self) -> &RecorderConfig {
        &self.config
    }

    /// Recordings that have not yet finished (recording or finalizing).
    pub fn pending(&self) -> usize {
        *self.active.borrow()
    }

    /// Resolves once every recording started so far has been finalized (or has failed).
    /// Used at shutdown, after the calls have stopped their recordings.
    pub async fn finalized(&self) {
        let mut rx = self.active.subscribe();
        // The sender lives in `self`, so this cannot report a closed channel.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Queues the creation of `<id>.wav.part` and its sidecar, and returns what the media
    /// core needs to feed it. `Started` (or `Failed`) follows on `events` once the writer
    /// has created the files; an error here means the writer could not even be asked, and
    /// `Failed` has been sent too. Either way the call goes on.
    pub fn start(&self, meta: RecordingMeta, events: EventTx) -> Result<FeedSpec, RecorderError> {
        let started_at = Utc::now();
        let id = RecordingId::generate(started_at);
        let mode = self.config.channels;
        let mut sidecar = Sidecar::new_recording(id.as_str(), &meta, started_at, mode);
        sidecar.node = self.config.node.clone();
        let Some(writer) = self.writer.clone() else {
            return Err(self.refuse(id, Some(sidecar), events, RecorderError::NoWriter));
        };
        self.active.send_modify(|n| *n += 1);
        let job = Job::Create {
            id: id.clone(),
            sidecar: Box::new(sidecar),
            mode,
            events: events.clone(),
        };
        match writer.try_send(job) {
            Ok(()) => {
                metrics::counter!(metric::STARTED).increment(1);
                tracing::debug!(recording = %id, call_id = %meta.call_id, "recording requested");
                Ok(FeedSpec { id, mode, writer })
            }
            Err(e) => {
                self.active.send_modify(|n| *n = n.saturating_sub(1));
                let (err, job) = match e {
                    TrySendError::Full(job) => (RecorderError::Busy, job),
                    TrySendError::Disconnected(job) => (RecorderError::NoWriter, job),
                };
                let sidecar = match job {
                    Job::Create { sidecar, .. } => Some(*sidecar),
                    _ => None,
                };
                Err(self.refuse(id, sidecar, events, err))
            }
        }
    }

    /// A recording that could not even be queued: listed as failed at once (kept in memory,
    /// written to disk by the next listing: this runs on the call task, which never touches
    /// the disk), reported to the sink, and `Failed` sent to the call.
    fn refuse(
        &self,
        id: RecordingId,
        sidecar: Option<Sidecar>,
        events: EventTx,
        e: RecorderError,
    ) -> RecorderError {
        let reason = e.to_string();
        tracing::error!(recording = %id, %reason, "recording could not start");
        metrics::counter!(metric::ERRORS).increment(1);
        if let Some(mut failed) = sidecar {
            failed.mark_failed(&reason, Utc::now());
            store::keep_pending(&self.config.dir, &id, &failed);
            if let Some(sink) = &self.config.sink {
                sink.notify(&failed);
            }
        }
        let _ = events.try_send(RecorderEvent::Failed { id, reason });
        e
    }
}
