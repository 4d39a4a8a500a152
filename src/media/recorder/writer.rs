//! The recording writer: two threads for every recording of the process, the only places
//! recording touches the disk.
//!
//! * The **writer** takes jobs from one bounded queue: `Create` (open `<id>.wav.part`, write
//!   the header and the `recording` sidecar), `Block` (200 ms of audio from a media
//!   worker, written with one `write`; the header's sizes are refreshed every second of
//!   audio; a kill -9 loses at most the block not yet handed over) and `Finish` (pad or trim
//!   to the length the media side measured, final header).
//! * The **finalizer** does what is slow and happens once per recording: sync, rename to
//!   `.wav`, directory sync, SHA-256, the final sidecar and the `Ready` event, for every
//!   recording waiting at once (one group of syncs per batch). A long sync therefore never
//!   holds up other recordings' blocks.
//!
//! Any error marks that recording failed (sidecar and `Failed` event); the call goes on.
//! Neither thread ever runs on a tokio worker or a media worker.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::mpsc::Sender;
use tokio::sync::watch;

use super::feed::{ChannelMode, BLOCK_SLOTS};
use super::handle::RecordingSink;
use super::id::RecordingId;
use super::sidecar::{rfc3339, RecordingStatus, Sidecar};
use super::store::{self, RecordingPaths};
use super::{metric, RecorderEvent};
use crate::media::codec::{FRAME_MS, SAMPLE_RATE};

/// Where a recording's events go (the call's channel; bounded: a recording sends at most
/// three).
pub type EventTx = Sender<RecorderEvent>;

/// Size of the standard PCM WAV header we write.
pub const HEADER_LEN: u64 = 44;
/// Samples in a pooled block: `BLOCK_SLOTS` slots (200 ms) of stereo.
const BLOCK_SAMPLES: usize = BLOCK_SLOTS * 2 * crate::media::codec::FRAME_SAMPLES;
/// Recordings finalized together (one group of syncs) at most.
const FINALIZE_BATCH: usize = 256;

/// Batches up to this size are synced file by file, larger ones with one `syncfs`.
const PER_FILE_SYNC_MAX: usize = 4;
/// Spare blocks kept for reuse (400 KiB).
const POOL_MAX: usize = 64;
/// The header's RIFF and data sizes are refreshed once the audio written since the last
/// refresh reaches 1 s (and at the end), not after every block: one `pwrite` a second per
/// recording. A file cut by a kill -9 is a valid WAV up to its last refresh, and recovery at
/// the next start sets the sizes from the file's length anyway.
const HEADER_REFRESH_SLOTS: u64 = 50;

static POOL: Mutex<Vec<Box<[i16]>>> = Mutex::new(Vec::new());

/// A block buffer for `mode` (reused from the pool when one is free).
pub fn take_block(_mode: ChannelMode) -> Box<[i16]> {
    let spare = POOL.lock().unwrap_or_else(|p| p.into_inner()).pop();
    spare.unwrap_or_else(|| vec![0i16; BLOCK_SAMPLES].into_boxed_slice())
}

/// Hands a block buffer back for reuse.
pub fn give_block(block: Box<[i16]>) {
    let mut pool = POOL.lock().unwrap_or_else(|p| p.into_inner());
    if pool.len() < POOL_MAX && block.len() == BLOCK_SAMPLES {
        pool.push(block);
    }
}

/// What the writer is asked to do.
#[derive(Debug)]
pub enum Job {
    Create {
        id: RecordingId,
        sidecar: Box<Sidecar>,
        mode: ChannelMode,
        events: EventTx,
    },
    Block {
        id: RecordingId,
        first_slot: u64,
        slots: usize,
        samples: Box<[i16]>,
    },
    Finish {
        id: RecordingId,
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
        slots: u64,
        overflow_frames: u64,
    },
}

/// Keeps the recorder's count of unfinished recordings; decremented however a recording
/// ends, so `Recorder::finalized` cannot hang on one that failed.
pub(crate) struct ActiveGuard(pub Arc<watch::Sender<usize>>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

struct Open {
    file: File,
    mode: ChannelMode,
    slots: u64,
    /// Slots the header's sizes cover (refreshed at least every `HEADER_REFRESH_SLOTS`).
    header_slots: u64,
    sidecar: Sidecar,
    events: EventTx,
    sink: Option<RecordingSink>,
    _guard: ActiveGuard,
}

impl Open {
    fn notify(&self) {
        if let Some(sink) = &self.sink {
            sink.notify(&self.sidecar);
        }
    }
}

struct Finalize {
    id: RecordingId,
    open: Open,
}

/// Starts the writer and finalizer threads; returns the writer's queue.
pub(crate) fn spawn(
    dir: PathBuf,
    queue_blocks: usize,
    active: Arc<watch::Sender<usize>>,
    sink: Option<RecordingSink>,
) -> io::Result<SyncSender<Job>> {
    let (tx, rx) = sync_channel(queue_blocks.max(1));
    let (fin_tx, fin_rx) = sync_channel::<Finalize>(1024);
    let fin_dir = dir.clone();
    std::thread::Builder::new()
        .name("voxgate-rec-final".into())
        .spawn(move || {
            let mut batch = Vec::with_capacity(FINALIZE_BATCH);
            while let Ok(f) = fin_rx.recv() {
                batch.push(f);
                while batch.len() < FINALIZE_BATCH {
                    match fin_rx.try_recv() {
                        Ok(f) => batch.push(f),
                        Err(_) => break,
                    }
                }
                finalize_batch(&fin_dir, &mut batch);
            }
        })?;
    std::thread::Builder::new()
        .name("voxgate-rec-write".into())
        .spawn(move || Writer::new(dir, active, fin_tx, sink).run(rx))?;
    Ok(tx)
}

struct Writer {
    dir: PathBuf,
    open: HashMap<RecordingId, Open>,
    active: Arc<watch::Sender<usize>>,
    finalizer: SyncSender<Finalize>,
    sink: Option<RecordingSink>,
    bytes: Vec<u8>,
}

impl Writer {
    fn new(
        dir: PathBuf,
        active: Arc<watch::Sender<usize>>,
        finalizer: SyncSender<Finalize>,
        sink: Option<RecordingSink>,
    ) -> Self {
        Writer {
            dir,
            open: HashMap::new(),
            active,
            finalizer,
            sink,
            bytes: Vec::with_capacity(BLOCK_SAMPLES * 2),
        }
    }

    fn run(mut self, rx: Receiver<Job>) {
        while let Ok(job) = rx.recv() {
            match job {
                Job::Create {
                    id,
                    sidecar,
                    mode,
                    events,
                } => self.create(id, *sidecar, mode, events),
                Job::Block {
                    id,
                    first_slot,
                    slots,
                    samples,
                } => {
                    self.block(&id, first_slot, slots, &samples);
                    give_block(samples);
                }
                Job::Finish {
                    id,
                    started_at,
                    ended_at,
                    slots,
                    overflow_frames,
                } => self.finish(id, started_at, ended_at, slots, overflow_frames),
            }
        }
    }

    fn create(&mut self, id: RecordingId, sidecar: Sidecar, mode: ChannelMode, events: EventTx) {
        let guard = ActiveGuard(self.active.clone());
        match create_files(&self.dir, &id, &sidecar, mode) {
            Ok(file) => {
                tracing::info!(recording = %id, call_id = %sidecar.call_id, "recording started");
                let _ = events.try_send(RecorderEvent::Started { id: id.clone() });
                let open = Open {
                    file,
                    mode,
                    slots: 0,
                    header_slots: 0,
                    sidecar,
                    events,
                    sink: self.sink.clone(),
                    _guard: guard,
                };
                open.notify();
                self.open.insert(id, open);
            }
            Err(reason) => {
                tracing::error!(recording = %id, call_id = %sidecar.call_id, %reason, "recording could not start");
                metrics::counter!(metric::ERRORS).increment(1);
                let mut failed = sidecar;
                failed.mark_failed(&reason, Utc::now());
                // Listed as failed either way: on disk when possible, in memory until then.
                if let Err(e) = store::write_sidecar(&self.dir, &id, &failed) {
                    tracing::warn!(recording = %id, error = %e, "could not write the failure to disk yet; kept in memory");
                }
                if let Some(sink) = &self.sink {
                    sink.notify(&failed);
                }
                let _ = events.try_send(RecorderEvent::Failed { id, reason });
            }
        }
    }

    fn block(&mut self, id: &RecordingId, first_slot: u64, slots: usize, samples: &[i16]) {
        let Some(open) = self.open.get_mut(id) else {
            return;
        };
        let per_slot = open.mode.samples_per_slot();
        let result: io::Result<()> = (|| {
            if first_slot > open.slots {
                // Blocks lost to a full queue: their time is silence.
                write_silence(&mut open.file, first_slot - open.slots, per_slot)?;
                open.slots = first_slot;
            }
            let skip = usize::try_from(open.slots - first_slot).unwrap_or(usize::MAX);
            if skip < slots {
                let audio = &samples[skip * per_slot..slots * per_slot];
                samples_to_le(audio, &mut self.bytes);
                open.file.write_all(&self.bytes)?;
                open.slots += (slots - skip) as u64;
            }
            if open.slots >= open.header_slots + HEADER_REFRESH_SLOTS {
                write_sizes(&open.file, open.slots * per_slot as u64 * 2)?;
                open.header_slots = open.slots;
            }
            Ok(())
        })();
        if let Err(e) = result {
            if let Some(open) = self.open.remove(id) {
                fail(&self.dir, id, open, format!("write error: {e}"));
            }
        }
    }

    fn finish(
        &mut self,
        id: RecordingId,
        started_at: DateTime<Utc>,
        ended_at: DateTime<Utc>,
        slots: u64,
        overflow_frames: u64,
    ) {
        let Some(mut open) = self.open.remove(&id) else {
            return;
        };
        let per_slot = open.mode.samples_per_slot();
        let result = (|| {
            if open.slots < slots {
                write_silence(&mut open.file, slots - open.slots, per_slot)?;
            } else if open.slots > slots {
                open.file
                    .set_len(HEADER_LEN + slots * per_slot as u64 * 2)?;
            }
            open.slots = slots;
            write_sizes(&open.file, slots * per_slot as u64 * 2)
        })();
        if let Err(e) = result {
            fail(&self.dir, &id, open, format!("write error: {e}"));
            return;
        }
        open.sidecar.started_at = rfc3339(started_at);
        open.sidecar.ended_at = Some(rfc3339(ended_at));
        open.sidecar.duration_ms = slots * FRAME_MS;
        open.sidecar.overflow_frames = overflow_frames;
        open.sidecar.dropped_frames = 0;
        if let Err(e) = self.finalizer.try_send(Finalize { id, open }) {
            // The finalizer is far behind (or gone): finalize here rather than lose it.
            let f = match e {
                std::sync::mpsc::TrySendError::Full(f)
                | std::sync::mpsc::TrySendError::Disconnected(f) => f,
            };
            finalize_batch(&self.dir, &mut vec![f]);
        }
    }
}

fn create_files(
    dir: &Path,
    id: &RecordingId,
    sidecar: &Sidecar,
    mode: ChannelMode,
) -> Result<File, String> {
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create recordings directory {}: {e}", dir.display()))?;
    let paths = RecordingPaths::new(dir, id);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&paths.part)
        .map_err(|e| format!("cannot create recording file {}: {e}", paths.part.display()))?;
    let cleanup = || {
        let _ = std::fs::remove_file(&paths.part);
    };
    if let Err(e) = file.write_all(&wav_header(mode.channels(), 0)) {
        cleanup();
        return Err(format!(
            "cannot write WAV header to {}: {e}",
            paths.part.display()
        ));
    }
    // Not fsynced: until the end, the `.part` file is what recovery goes by (it rebuilds a
    // lost sidecar), so a power cut here loses nothing a sync would have kept.
    if let Err(e) = store::write_sidecar_with(dir, id, sidecar, false) {
        cleanup();
        return Err(format!("cannot write recording metadata: {e}"));
    }
    Ok(file)
}

/// A canonical 44-byte PCM WAV header for 8 kHz 16-bit audio with `data_len` bytes.
pub fn wav_header(channels: u16, data_len: u64) -> [u8; 44] {
    let data_len = u32::try_from(data_len).unwrap_or(u32::MAX - 36);
    let block_align = channels * 2;
    let byte_rate = SAMPLE_RATE * u32::from(block_align);
    let mut h = [0u8; 44];
    h[0..4].copy_from_slice(b"RIFF");
    h[4..8].copy_from_slice(&(36 + data_len).to_le_bytes());
    h[8..12].copy_from_slice(b"WAVE");
    h[12..16].copy_from_slice(b"fmt ");
    h[16..20].copy_from_slice(&16u32.to_le_bytes());
    h[20..22].copy_from_slice(&1u16.to_le_bytes());
    h[22..24].copy_from_slice(&channels.to_le_bytes());
    h[24..28].copy_from_slice(&SAMPLE_RATE.to_le_bytes());
    h[28..32].copy_from_slice(&byte_rate.to_le_bytes());
    h[32..34].copy_from_slice(&block_align.to_le_bytes());
    h[34..36].copy_from_slice(&16u16.to_le_bytes());
    h[36..40].copy_from_slice(b"data");
    h[40..44].copy_from_slice(&data_len.to_le_bytes());
    h
}

/// Refreshes the RIFF and data sizes in place: the file is valid up to here.
/// `audio` as 16-bit little-endian bytes, in `out` (cleared first). One pass over
/// fixed-size chunks, which the compiler vectorises (extending a `Vec` sample by sample was
/// 6 % of the gateway's CPU on recorded calls, perf, bench profile A).
fn samples_to_le(audio: &[i16], out: &mut Vec<u8>) {
    out.clear();
    out.resize(audio.len() * 2, 0);
    for (b, s) in out.chunks_exact_mut(2).zip(audio) {
        b.copy_from_slice(&s.to_le_bytes());
    }
}

fn write_sizes(file: &File, data_len: u64) -> io::Result<()> {
    let data_len = u32::try_from(data_len).unwrap_or(u32::MAX - 36);
    file.write_all_at(&(36 + data_len).to_le_bytes(), 4)?;
    file.write_all_at(&data_len.to_le_bytes(), 40)
}

fn write_silence(file: &mut File, slots: u64, per_slot: usize) -> io::Result<()> {
    static ZEROS: [u8; 8192] = [0; 8192];
    let mut left = slots * per_slot as u64 * 2;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        file.write_all(&ZEROS[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn fail(dir: &Path, id: &RecordingId, mut open: Open, reason: String) {
    tracing::error!(recording = %id, call_id = %open.sidecar.call_id, %reason, "recording failed");
    metrics::counter!(metric::ERRORS).increment(1);
    open.sidecar.mark_failed(&reason, Utc::now());
    // Save what reached the disk (the header sizes are refreshed after every block): the
    // audio so far becomes `<id>.wav`, its length and hash in the sidecar, status `failed`.
    let _ = open.file.sync_all();
    super::recovery::keep_partial_audio(dir, id, &mut open.sidecar);
    if let Err(e) = store::write_sidecar(dir, id, &open.sidecar) {
        tracing::warn!(recording = %id, error = %e, "could not write the failure to disk yet; kept in memory");
    }
    open.notify();
    let _ = open.events.try_send(RecorderEvent::Failed {
        id: id.clone(),
        reason,
    });
}

/// Finalizes every recording waiting, with one group of syncs for all of them: fsync each
/// file, rename them all, one directory sync, hash, write the final sidecars, one more sync
/// for the sidecars, then `Ready` for each. At 1,000 short calls a second this is a few
/// syncs per batch instead of four per recording.
///
/// A small batch (the usual case: calls ending one at a time) is synced file by file
/// instead: `syncfs` flushes everything dirty on the filesystem, and on a disk shared with
/// other writers (logs, a build, a database) that can take a second, which a caller would
/// wait through before the BYE of close conversation.
fn finalize_batch(dir: &Path, batch: &mut Vec<Finalize>) {
    let per_file = batch.len() <= PER_FILE_SYNC_MAX;
    let synced = if per_file {
        Vec::from_iter(
            batch
                .drain(..)
                .filter_map(|f| match f.open.file.sync_all() {
                    Ok(()) => Some(f),
                    Err(e) => {
                        fail(dir, &f.id, f.open, format!("cannot sync audio file: {e}"));
                        None
                    }
                }),
        )
    } else {
        if let Some(first) = batch.first() {
            if let Err(e) = sync_fs(&first.open.file) {
                for f in batch.drain(..) {
                    fail(dir, &f.id, f.open, format!("cannot sync audio file: {e}"));
                }
                return;
            }
        }
        std::mem::take(batch)
    };
    let mut renamed = Vec::with_capacity(synced.len());
    for f in synced {
        let Finalize { id, open } = f;
        let paths = RecordingPaths::new(dir, &id);
        if let Err(e) = std::fs::rename(&paths.part, &paths.wav) {
            fail(dir, &id, open, format!("cannot rename finished audio: {e}"));
            continue;
        }
        renamed.push((id, open, paths));
    }
    if renamed.is_empty() {
        return;
    }
    store::sync_dir(dir);
    let mut written = Vec::with_capacity(renamed.len());
    for (id, mut open, paths) in renamed {
        let (sha256, bytes) = match store::sha256_file(&paths.wav) {
            Ok(v) => v,
            Err(e) => {
                fail(dir, &id, open, format!("cannot hash finished audio: {e}"));
                continue;
            }
        };
        open.sidecar.sha256 = Some(sha256);
        open.sidecar.bytes = bytes;
        open.sidecar.status = RecordingStatus::Complete;
        if let Err(e) = store::write_sidecar_with(dir, &id, &open.sidecar, per_file) {
            fail(dir, &id, open, format!("cannot write sidecar: {e}"));
            continue;
        }
        written.push((id, open));
    }
    // The sidecars and their renames, all at once (a small batch synced each one above).
    if let Some((_, open)) = written.first().filter(|_| !per_file) {
        if let Err(e) = sync_fs(&open.file) {
            tracing::warn!(error = %e, "cannot sync the recordings' sidecars");
        }
    }
    for (id, open) in written {
        open.notify();
        metrics::counter!(metric::COMPLETED).increment(1);
        let s = &open.sidecar;
        tracing::info!(recording = %id, call_id = %s.call_id, duration_ms = s.duration_ms, bytes = s.bytes, "recording ready");
        let _ = open.events.try_send(RecorderEvent::Ready {
            id: id.clone(),
            duration_ms: s.duration_ms,
            sha256: s.sha256.clone().unwrap_or_default(),
            bytes: s.bytes,
            overflow_frames: s.overflow_frames,
        });
    }
}

/// Flushes the whole filesystem `file` is on (syncfs): one sync for a batch of files.
fn sync_fs(file: &File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: syncfs takes a file descriptor we own (borrowed for the call), no pointers.
    if unsafe { libc::syncfs(file.as_raw_fd()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::samples_to_le;

    #[test]
    fn samples_become_little_endian_bytes_replacing_what_was_there() {
        let mut out = vec![9u8; 7];
        samples_to_le(&[0x0102, -2, i16::MIN], &mut out);
        assert_eq!(out, [0x02, 0x01, 0xfe, 0xff, 0x00, 0x80]);
        samples_to_le(&[], &mut out);
        assert!(out.is_empty());
    }
}
