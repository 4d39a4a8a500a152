//! The async-side API of recording. [`Recorder`] is shared by the whole process (config plus
//! a count of writers still finishing); [`ActiveRecording`] is owned by one call's media
//! task, which calls [`ActiveRecording::push`] on every 20 ms tick. `push` only runs the
//! aligner and a `try_send`, so a slow disk can cost audio (counted, written as silence) but
//! can never stall the call.

use std::fs::OpenOptions;
use std::io::BufWriter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};

use super::clock::{Aligned, ChannelMode, RecordingClock};
use super::id::RecordingId;
use super::sidecar::{RecordingMeta, Sidecar};
use super::store::{self, RecordingPaths};
use super::writer::{self, ActiveGuard, StopInfo, WriterJob};
use super::{metric, RecorderError, RecorderEvent};
use crate::media::codec::SAMPLE_RATE;

/// Recording settings (the `[recordings]` config section).
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    pub dir: PathBuf,
    pub channels: ChannelMode,
    /// Writer queue depth in 20 ms slots; beyond it frames overflow (as silence).
    pub queue_slots: usize,
    /// How often the WAV header is refreshed: the most audio a kill -9 can lose.
    pub flush_every: Duration,
    /// The node name written into every sidecar (`[node] name`).
    pub node: String,
    /// Told about every sidecar written (start, failure, final), e.g. to copy it to a shared
    /// store. Called from the writer thread or the starting call; it must not block.
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
    /// Stereo, a 5 s queue and a 1 s header refresh.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        RecorderConfig {
            dir: dir.into(),
            channels: ChannelMode::Stereo,
            queue_slots: 250,
            flush_every: Duration::from_secs(1),
            node: String::new(),
            sink: None,
        }
    }
}

/// The two ends the call side keeps to feed and stop a writer thread.
type WriterInputs = (mpsc::Sender<Aligned>, oneshot::Sender<StopInfo>);

/// Starts recordings and tracks the writers still finishing. Cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    config: Arc<RecorderConfig>,
    active: Arc<watch::Sender<usize>>,
}

impl Recorder {
    pub fn new(config: RecorderConfig) -> Self {
        Recorder {
            config: Arc::new(config),
            active: Arc::new(watch::Sender::new(0)),
        }
    }

    pub fn config(&self) -> &RecorderConfig {
        &self.config
    }

    /// Writers that have not yet finished (recording or finalizing).
    pub fn pending(&self) -> usize {
        *self.active.borrow()
    }

    /// Resolves once every recording started so far has been finalized (or has failed).
    /// Used at shutdown, after the calls have stopped or dropped their recordings.
    pub async fn finalized(&self) {
        let mut rx = self.active.subscribe();
        // The sender lives in `self`, so this cannot report a closed channel.
        let _ = rx.wait_for(|n| *n == 0).await;
    }

    /// Opens `<id>.wav.part`, writes the `recording` sidecar and starts the writer thread.
    ///
    /// Exactly one of `Started` / `Failed` is sent on `events`; on failure the error is also
    /// returned so the caller knows it has nothing to push to. Either way the call goes on.
    pub fn start(
        &self,
        meta: RecordingMeta,
        now: Instant,
        events: mpsc::UnboundedSender<RecorderEvent>,
    ) -> Result<ActiveRecording, RecorderError> {
        let started_at = Utc::now();
        let id = RecordingId::generate(started_at);
        let mode = self.config.channels;
        let mut sidecar = Sidecar::new_recording(id.as_str(), &meta, started_at, mode);
        sidecar.node = self.config.node.clone();
        match self.launch(&id, sidecar.clone(), events.clone()) {
            Ok((frames, stop)) => {
                if let Some(sink) = &self.config.sink {
                    sink.notify(&sidecar);
                }
                metrics::counter!(metric::STARTED).increment(1);
                tracing::info!(recording = %id, call_id = %meta.call_id, "recording started");
                let _ = events.send(RecorderEvent::Started { id: id.clone() });
                Ok(ActiveRecording {
                    id,
                    clock: RecordingClock::new(now, mode),
                    start: now,
                    started_at,
                    frames: Some(frames),
                    stop: Some(stop),
                    events,
                    pending_silence: 0,
                    overflow_frames: 0,
                    writer_gone: false,
                })
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(recording = %id, %reason, "recording could not start");
                metrics::counter!(metric::ERRORS).increment(1);
                let mut failed = sidecar;
                failed.mark_failed(&reason, started_at);
                // Listed as failed either way: on disk when possible, in memory until then.
                if let Err(e) = store::write_sidecar(&self.config.dir, &id, &failed) {
                    tracing::warn!(recording = %id, error = %e, "could not write the failure to disk yet; kept in memory");
                }
                if let Some(sink) = &self.config.sink {
                    sink.notify(&failed);
                }
                let _ = events.send(RecorderEvent::Failed { id, reason });
                Err(e)
            }
        }
    }

    fn launch(
        &self,
        id: &RecordingId,
        sidecar: Sidecar,
        events: mpsc::UnboundedSender<RecorderEvent>,
    ) -> Result<WriterInputs, RecorderError> {
        let dir = &self.config.dir;
        std::fs::create_dir_all(dir).map_err(|source| RecorderError::CreateDir {
            dir: dir.clone(),
            source,
        })?;
        let paths = RecordingPaths::new(dir, id);
        let create_err = |source| RecorderError::CreateFile {
            path: paths.part.clone(),
            source,
        };
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&paths.part)
            .map_err(create_err)?;
        let cleanup = || {
            let _ = std::fs::remove_file(&paths.part);
        };
        let sync_handle = file.try_clone().map_err(|e| {
            cleanup();
            create_err(e)
        })?;
        let spec = hound::WavSpec {
            channels: self.config.channels.channels(),
            sample_rate: SAMPLE_RATE,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let wav = hound::WavWriter::new(BufWriter::new(file), spec).map_err(|source| {
            cleanup();
            RecorderError::WavHeader {
                path: paths.part.clone(),
                source,
            }
        })?;
        if let Err(e) = store::write_sidecar(dir, id, &sidecar) {
            drop(wav);
            cleanup();
            return Err(e.into());
        }

        let (frames_tx, frames_rx) = mpsc::channel(self.config.queue_slots.max(1));
        let (stop_tx, stop_rx) = oneshot::channel();
        self.active.send_modify(|n| *n += 1);
        let job = WriterJob {
            dir: dir.clone(),
            id: id.clone(),
            sidecar,
            wav,
            file: sync_handle,
            samples_per_slot: self.config.channels.samples_per_slot(),
            frames: frames_rx,
            stop: stop_rx,
            events,
            flush_every: self.config.flush_every,
            guard: ActiveGuard(self.active.clone()),
            sink: self.config.sink.clone(),
        };
        std::thread::Builder::new()
            .name("voxgate-rec".into())
            .spawn(move || writer::run(job))
            .map_err(|e| {
                cleanup();
                RecorderError::Spawn(e)
            })?;
        Ok((frames_tx, stop_tx))
    }
}

/// One recording in progress. Dropping it stops the recording at the drop instant, so a
/// call that ends abruptly still leaves a finalized file.
pub struct ActiveRecording {
    id: RecordingId,
    clock: RecordingClock,
    start: Instant,
    started_at: DateTime<Utc>,
    frames: Option<mpsc::Sender<Aligned>>,
    stop: Option<oneshot::Sender<StopInfo>>,
    events: mpsc::UnboundedSender<RecorderEvent>,
    /// Slots that could not be queued; sent as silence with the next frame that fits.
    pending_silence: u64,
    overflow_frames: u64,
    /// The writer failed and closed its queue; pushes are no-ops.
    writer_gone: bool,
}

impl ActiveRecording {
    pub fn id(&self) -> &RecordingId {
        &self.id
    }

    /// Ticks so far whose audio was lost to a full queue.
    pub fn overflow_frames(&self) -> u64 {
        self.overflow_frames
    }

    /// One 20 ms tick: `left` = caller audio, `right` = bot / far leg, `None` = silence.
    /// Never blocks. If the writer is behind, this tick's audio is replaced by silence (the
    /// timeline stays intact) and counted in `voxgate_recording_overflow_frames_total`.
    pub fn push(&mut self, now: Instant, left: Option<&[i16]>, right: Option<&[i16]>) {
        let Some(tx) = &self.frames else { return };
        let mut aligned = self.clock.tick(now, left, right);
        if aligned.slots() == 0 {
            return;
        }
        aligned.silence_slots += self.pending_silence;
        match tx.try_send(aligned) {
            Ok(()) => self.pending_silence = 0,
            Err(TrySendError::Full(lost)) => {
                self.pending_silence = lost.slots();
                self.overflow_frames += 1;
                metrics::counter!(metric::OVERFLOW_FRAMES).increment(1);
                if self.overflow_frames.is_power_of_two() {
                    tracing::warn!(
                        recording = %self.id,
                        overflow_frames = self.overflow_frames,
                        "recording writer behind, audio replaced by silence"
                    );
                }
            }
            Err(TrySendError::Closed(_)) => {
                // The writer hit an error and already reported `Failed`.
                self.frames = None;
                self.writer_gone = true;
            }
        }
    }

    /// Stops at `now`: pads to wall time and hands finalization to the writer. Returns at
    /// once; `Stopped` is sent now, `Ready` (or `Failed`) when the file is final.
    pub fn stop(mut self, now: Instant) {
        self.finish(now);
    }

    fn finish(&mut self, now: Instant) {
        let Some(stop) = self.stop.take() else { return };
        let trailing_slots = self.clock.finish(now) + self.pending_silence;
        self.pending_silence = 0;
        let elapsed = now.saturating_duration_since(self.start);
        let ended_at = self.started_at + chrono::Duration::from_std(elapsed).unwrap_or_default();
        if !self.writer_gone {
            tracing::info!(recording = %self.id, "recording stopped");
            let _ = self.events.send(RecorderEvent::Stopped {
                id: self.id.clone(),
            });
        }
        let _ = stop.send(StopInfo {
            ended_at,
            trailing_slots,
            overflow_frames: self.overflow_frames,
            dropped_frames: self.clock.dropped_early(),
        });
        // Closing the queue lets the writer drain and finalize.
        self.frames = None;
    }

    /// Test access: an `ActiveRecording` wired to a bare queue, no writer thread.
    #[cfg(test)]
    pub(crate) fn detached(
        now: Instant,
        mode: ChannelMode,
        frames: mpsc::Sender<Aligned>,
        events: mpsc::UnboundedSender<RecorderEvent>,
    ) -> (Self, oneshot::Receiver<StopInfo>) {
        let (stop_tx, stop_rx) = oneshot::channel();
        let rec = ActiveRecording {
            id: RecordingId::generate(Utc::now()),
            clock: RecordingClock::new(now, mode),
            start: now,
            started_at: Utc::now(),
            frames: Some(frames),
            stop: Some(stop_tx),
            events,
            pending_silence: 0,
            overflow_frames: 0,
            writer_gone: false,
        };
        (rec, stop_rx)
    }
}

impl Drop for ActiveRecording {
    fn drop(&mut self) {
        if self.stop.is_some() {
            tracing::debug!(recording = %self.id, "recording dropped without stop, stopping now");
            self.finish(Instant::now());
        }
    }
}
