//! The writer thread: the only place recording touches the disk while a call runs. It drains
//! the bounded frame queue into hound, refreshes the WAV header about once a second (so a
//! kill -9 loses at most that much), and on stop pads, finalizes, renames, hashes and writes
//! the final sidecar. Any error marks the recording failed; the call never notices beyond
//! the `Failed` event.

use std::fs::File;
use std::io::{BufWriter, Seek, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hound::WavWriter;
use tokio::sync::{mpsc, oneshot, watch};

use super::clock::Aligned;
use super::id::RecordingId;
use super::sidecar::{rfc3339, RecordingStatus, Sidecar};
use super::store::{self, RecordingPaths};
use super::{metric, RecorderEvent};
use crate::media::codec::FRAME_MS;

/// What the call side knows only at stop time.
#[derive(Debug, Clone)]
pub(crate) struct StopInfo {
    pub ended_at: DateTime<Utc>,
    pub trailing_slots: u64,
    pub overflow_frames: u64,
    pub dropped_frames: u64,
}

/// Keeps the recorder's count of unfinished writers; decremented when the thread ends however
/// it ends, so `Recorder::finalized` cannot hang on a writer that panicked.
pub(crate) struct ActiveGuard(pub std::sync::Arc<watch::Sender<usize>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Everything the thread owns.
pub(crate) struct WriterJob {
    pub dir: PathBuf,
    pub id: RecordingId,
    pub sidecar: Sidecar,
    pub wav: WavWriter<BufWriter<File>>,
    /// A second handle on the `.part` file, for fsync after hound is done with it.
    pub file: File,
    pub samples_per_slot: usize,
    pub frames: mpsc::Receiver<Aligned>,
    pub stop: oneshot::Receiver<StopInfo>,
    pub events: mpsc::UnboundedSender<RecorderEvent>,
    pub flush_every: Duration,
    pub guard: ActiveGuard,
    pub sink: Option<super::handle::RecordingSink>,
}

/// Appends slots as they arrive until every sender is gone. Returns the slots written, or
/// the first write error.
pub(crate) fn write_loop<W: Write + Seek>(
    wav: &mut WavWriter<W>,
    frames: &mut mpsc::Receiver<Aligned>,
    samples_per_slot: usize,
    flush_every: Duration,
) -> Result<u64, hound::Error> {
    let mut slots = 0u64;
    let mut last_flush = Instant::now();
    while let Some(aligned) = frames.blocking_recv() {
        write_silence(wav, aligned.silence_slots, samples_per_slot)?;
        if let Some(frame) = &aligned.frame {
            for &s in frame {
                wav.write_sample(s)?;
            }
        }
        slots += aligned.slots();
        if last_flush.elapsed() >= flush_every {
            // hound's flush rewrites the RIFF/data sizes: the file is valid up to here.
            wav.flush()?;
            last_flush = Instant::now();
        }
    }
    Ok(slots)
}

pub(crate) fn write_silence<W: Write + Seek>(
    wav: &mut WavWriter<W>,
    slots: u64,
    samples_per_slot: usize,
) -> Result<(), hound::Error> {
    for _ in 0..slots * samples_per_slot as u64 {
        wav.write_sample(0i16)?;
    }
    Ok(())
}

/// The thread body.
pub(crate) fn run(job: WriterJob) {
    let WriterJob {
        dir,
        id,
        mut sidecar,
        mut wav,
        file,
        samples_per_slot,
        mut frames,
        stop,
        events,
        flush_every,
        guard,
        sink,
    } = job;
    let _guard = guard;
    let fail = |sidecar: &mut Sidecar, reason: String| {
        tracing::error!(recording = %id, %reason, "recording failed");
        metrics::counter!(metric::ERRORS).increment(1);
        sidecar.mark_failed(&reason, Utc::now());
        super::recovery::keep_partial_audio(&dir, &id, sidecar);
        if let Err(e) = store::write_sidecar(&dir, &id, sidecar) {
            tracing::warn!(recording = %id, error = %e, "could not write the failure to disk yet; kept in memory");
        }
        if let Some(sink) = &sink {
            sink.notify(sidecar);
        }
        let _ = events.send(RecorderEvent::Failed {
            id: id.clone(),
            reason,
        });
    };

    let mut slots = match write_loop(&mut wav, &mut frames, samples_per_slot, flush_every) {
        Ok(n) => n,
        Err(e) => {
            // Closing the queue tells `push` to stop sending; the call carries on.
            drop(frames);
            // Save what reached the disk: header sizes as far as they go.
            let _ = wav.finalize();
            let _ = file.sync_all();
            drop(file);
            fail(&mut sidecar, format!("write error: {e}"));
            return;
        }
    };
    drop(frames);
    let info = stop.blocking_recv().unwrap_or_else(|_| StopInfo {
        ended_at: Utc::now(),
        trailing_slots: 0,
        overflow_frames: 0,
        dropped_frames: 0,
    });
    sidecar.ended_at = Some(rfc3339(info.ended_at));
    sidecar.overflow_frames = info.overflow_frames;
    sidecar.dropped_frames = info.dropped_frames;

    if let Err(e) = write_silence(&mut wav, info.trailing_slots, samples_per_slot) {
        fail(&mut sidecar, format!("write error: {e}"));
        return;
    }
    slots += info.trailing_slots;
    sidecar.duration_ms = slots * FRAME_MS;
    if let Err(e) = wav.finalize() {
        fail(&mut sidecar, format!("cannot finalize WAV header: {e}"));
        return;
    }
    if let Err(e) = file.sync_all() {
        fail(&mut sidecar, format!("cannot sync audio file: {e}"));
        return;
    }
    drop(file);
    let paths = RecordingPaths::new(&dir, &id);
    if let Err(e) = std::fs::rename(&paths.part, &paths.wav) {
        fail(&mut sidecar, format!("cannot rename finished audio: {e}"));
        return;
    }
    store::sync_dir(&dir);
    let (sha256, bytes) = match store::sha256_file(&paths.wav) {
        Ok(v) => v,
        Err(e) => {
            fail(&mut sidecar, format!("cannot hash finished audio: {e}"));
            return;
        }
    };
    sidecar.sha256 = Some(sha256.clone());
    sidecar.bytes = bytes;
    sidecar.status = RecordingStatus::Complete;
    if let Err(e) = store::write_sidecar(&dir, &id, &sidecar) {
        fail(&mut sidecar, format!("cannot write sidecar: {e}"));
        return;
    }
    metrics::counter!(metric::COMPLETED).increment(1);
    tracing::info!(recording = %id, duration_ms = sidecar.duration_ms, bytes, "recording ready");
    if let Some(sink) = &sink {
        sink.notify(&sidecar);
    }
    let _ = events.send(RecorderEvent::Ready {
        id,
        duration_ms: sidecar.duration_ms,
        sha256,
        bytes,
        overflow_frames: sidecar.overflow_frames,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Cursor, SeekFrom};

    fn spec() -> hound::WavSpec {
        hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        }
    }

    /// A sink that accepts `budget` bytes and then fails like a full disk.
    struct FullDisk {
        inner: Cursor<Vec<u8>>,
        budget: usize,
    }

    impl Write for FullDisk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.inner.get_ref().len() + buf.len() > self.budget {
                return Err(io::Error::other("No space left on device"));
            }
            self.inner.write(buf)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for FullDisk {
        fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
            self.inner.seek(pos)
        }
    }

    #[test]
    fn write_loop_reports_disk_full() {
        let sink = FullDisk {
            inner: Cursor::new(Vec::new()),
            budget: 2_000,
        };
        let mut wav = WavWriter::new(sink, spec()).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        for _ in 0..10 {
            tx.try_send(Aligned {
                silence_slots: 0,
                frame: Some(vec![1; 320]),
            })
            .unwrap();
        }
        drop(tx);
        let err = write_loop(&mut wav, &mut rx, 320, Duration::ZERO).unwrap_err();
        assert!(err.to_string().contains("No space"), "{err}");
        std::mem::forget(wav); // its Drop would try to finalize into the full sink
    }

    #[test]
    fn write_loop_expands_silence() {
        let mut wav = WavWriter::new(Cursor::new(Vec::new()), spec()).unwrap();
        let (tx, mut rx) = mpsc::channel(16);
        tx.try_send(Aligned {
            silence_slots: 2,
            frame: Some(vec![5; 320]),
        })
        .unwrap();
        drop(tx);
        let slots = write_loop(&mut wav, &mut rx, 320, Duration::ZERO).unwrap();
        assert_eq!(slots, 3);
        assert_eq!(wav.duration(), 480);
    }
}
