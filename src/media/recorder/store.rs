//! The on-disk layout of the recordings directory, and the only code that turns a
//! [`RecordingId`] into a path. Blocking std::fs: call from a writer thread, start-up code,
//! or `spawn_blocking`.
//!
//! ```text
//! <dir>/<id>.wav.part   audio while recording (header refreshed about once a second)
//! <dir>/<id>.wav        final audio
//! <dir>/<id>.json       sidecar metadata
//! <dir>/<id>.json.tmp   sidecar being replaced (atomic write; never read)
//! ```
//!
//! A sidecar that cannot be written (a full disk) is not lost: [`write_sidecar`] falls back to
//! rewriting the existing file in place (no new blocks needed), and failing that keeps it in a
//! process-wide overlay that [`read_sidecar`] and [`list`] serve and that every later store
//! call tries to write again.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

use super::id::RecordingId;
use super::sidecar::Sidecar;

/// Sidecars that could not be written yet, by sidecar path.
static PENDING: Mutex<BTreeMap<PathBuf, Sidecar>> = Mutex::new(BTreeMap::new());

fn pending() -> std::sync::MutexGuard<'static, BTreeMap<PathBuf, Sidecar>> {
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// A filesystem problem in the recordings directory.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot access {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("sidecar {} is not valid recording metadata: {source}", path.display())]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The three files a recording may own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordingPaths {
    pub wav: PathBuf,
    pub part: PathBuf,
    pub sidecar: PathBuf,
}

impl RecordingPaths {
    pub fn new(dir: &Path, id: &RecordingId) -> Self {
        RecordingPaths {
            wav: dir.join(format!("{id}.wav")),
            part: dir.join(format!("{id}.wav.part")),
            sidecar: dir.join(format!("{id}.json")),
        }
    }

    fn sidecar_tmp(&self) -> PathBuf {
        self.sidecar.with_extension("json.tmp")
    }
}

/// Replaces `<id>.json` atomically (write tmp, fsync, rename), so readers never see half a file
/// and a crash leaves either the old or the new sidecar.
pub fn write_sidecar(dir: &Path, id: &RecordingId, sidecar: &Sidecar) -> Result<(), StoreError> {
    write_sidecar_with(dir, id, sidecar, true)
}

/// [`write_sidecar`], with the fsync left to the caller when `durable` is false (the
/// recording writer syncs a whole batch of sidecars at once).
pub fn write_sidecar_with(
    dir: &Path,
    id: &RecordingId,
    sidecar: &Sidecar,
    durable: bool,
) -> Result<(), StoreError> {
    let paths = RecordingPaths::new(dir, id);
    match write_atomic(&paths, sidecar, durable)
        .or_else(|e| write_in_place(&paths, sidecar, durable).map_err(|_| e))
    {
        Ok(()) => {
            pending().remove(&paths.sidecar);
            Ok(())
        }
        Err(e) => {
            // Kept in memory (served by read_sidecar / list) and written when possible.
            pending().insert(paths.sidecar.clone(), sidecar.clone());
            Err(e)
        }
    }
}

fn write_atomic(
    paths: &RecordingPaths,
    sidecar: &Sidecar,
    durable: bool,
) -> Result<(), StoreError> {
    let tmp = paths.sidecar_tmp();
    let body = serde_json::to_vec_pretty(sidecar).map_err(|source| StoreError::Malformed {
        path: tmp.clone(),
        source,
    })?;
    let result = (|| {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(&body).map_err(io_err(&tmp))?;
        if durable {
            f.sync_all().map_err(io_err(&tmp))?;
        }
        drop(f);
        fs::rename(&tmp, &paths.sidecar).map_err(io_err(&paths.sidecar))
    })();
    if result.is_err() {
        // No stray temp files, even on a full disk.
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Rewrites an existing sidecar in place: on a full disk the file's own blocks still take a
/// body of about the same size, where a new temp file cannot be created.
fn write_in_place(
    paths: &RecordingPaths,
    sidecar: &Sidecar,
    durable: bool,
) -> Result<(), StoreError> {
    let path = &paths.sidecar;
    let body = serde_json::to_vec(sidecar).map_err(|source| StoreError::Malformed {
        path: path.clone(),
        source,
    })?;
    let mut f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err(path))?;
    let old_len = f.metadata().map_err(io_err(path))?.len();
    // Pad with spaces (valid JSON whitespace) rather than grow past what is allocated when the
    // new body is shorter; truncate afterwards when it is not.
    let mut out = body;
    if (out.len() as u64) < old_len {
        out.resize(old_len as usize, b' ');
    }
    f.write_all(&out).map_err(io_err(path))?;
    f.set_len(out.len() as u64).map_err(io_err(path))?;
    if durable {
        f.sync_all().map_err(io_err(path))?;
    }
    Ok(())
}

/// Keeps `sidecar` in memory only (listed and served at once, written to disk at the next
/// [`flush_pending`]): for callers that must not touch the disk (the call task).
pub fn keep_pending(dir: &Path, id: &RecordingId, sidecar: &Sidecar) {
    pending().insert(RecordingPaths::new(dir, id).sidecar, sidecar.clone());
}

/// Tries to write the sidecars kept in memory for `dir`; those written are forgotten.
pub fn flush_pending(dir: &Path) {
    let waiting: Vec<(PathBuf, Sidecar)> = pending()
        .iter()
        .filter(|(p, _)| p.parent() == Some(dir))
        .map(|(p, s)| (p.clone(), s.clone()))
        .collect();
    for (path, sidecar) in waiting {
        let Some(id) = RecordingId::parse(&sidecar.id) else {
            pending().remove(&path);
            continue;
        };
        let paths = RecordingPaths::new(dir, &id);
        if write_atomic(&paths, &sidecar, true)
            .or_else(|_| write_in_place(&paths, &sidecar, true))
            .is_ok()
        {
            tracing::info!(recording = %id, status = sidecar.status.as_str(), "pending recording metadata written");
            pending().remove(&path);
        }
    }
}

pub fn read_sidecar(dir: &Path, id: &RecordingId) -> Result<Option<Sidecar>, StoreError> {
    let path = RecordingPaths::new(dir, id).sidecar;
    if let Some(s) = pending().get(&path) {
        return Ok(Some(s.clone()));
    }
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err(&path)(e)),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|source| StoreError::Malformed { path, source })
}

/// Ids of every file in `dir` whose name is `<valid id><suffix>`. A missing dir is empty.
pub fn ids_with_suffix(dir: &Path, suffix: &str) -> Result<Vec<RecordingId>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut ids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        if let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_suffix(suffix))
            .and_then(RecordingId::parse)
        {
            ids.push(id);
        }
    }
    ids.sort();
    Ok(ids)
}

/// Every readable sidecar in `dir`. Unreadable or malformed ones are skipped with a warning
/// so one bad file cannot hide the rest.
pub fn list(dir: &Path) -> Result<Vec<Sidecar>, StoreError> {
    flush_pending(dir);
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for id in ids_with_suffix(dir, ".json")? {
        seen.insert(id.as_str().to_string());
        match read_sidecar(dir, &id) {
            Ok(Some(s)) if s.id == id.as_str() => out.push(s),
            Ok(Some(s)) => {
                tracing::warn!(file = %id, inner = %s.id, "sidecar id mismatch, skipped")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "skipping unreadable sidecar"),
        }
    }
    // Recordings whose metadata is only in memory so far (e.g. one that could not start on a
    // full disk) are listed too.
    for (path, s) in pending().iter() {
        if path.parent() == Some(dir) && !seen.contains(&s.id) {
            out.push(s.clone());
        }
    }
    Ok(out)
}

/// Removes every file of a recording. Missing files are not an error.
pub fn delete(dir: &Path, id: &RecordingId) -> Result<(), StoreError> {
    let paths = RecordingPaths::new(dir, id);
    pending().remove(&paths.sidecar);
    // Audio first: a sidecar without audio is still listed and deletable; the reverse would
    // leave an invisible orphan.
    for path in [
        &paths.wav,
        &paths.part,
        &paths.sidecar_tmp(),
        &paths.sidecar,
    ] {
        match fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(path)(e)),
        }
    }
    Ok(())
}

/// Hex SHA-256 and length of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), StoreError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}

/// fsyncs a directory so a rename in it survives power loss. Best effort: not every platform
/// lets a directory be opened for this.
pub fn sync_dir(dir: &Path) {
    if let Ok(d) = OpenOptions::new().read(true).open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::recorder::feed::ChannelMode;
    use crate::media::recorder::sidecar::RecordingMeta;
    use chrono::Utc;

    #[test]
    fn sidecar_roundtrip_list_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let id = RecordingId::generate(Utc::now());
        let s = Sidecar::new_recording(
            id.as_str(),
            &RecordingMeta::default(),
            Utc::now(),
            ChannelMode::Stereo,
        );
        write_sidecar(dir.path(), &id, &s).unwrap();
        assert_eq!(read_sidecar(dir.path(), &id).unwrap(), Some(s.clone()));
        // Junk in the dir is ignored by list.
        fs::write(dir.path().join("notes.json"), b"{}").unwrap();
        let bad = RecordingId::generate(Utc::now());
        fs::write(RecordingPaths::new(dir.path(), &bad).sidecar, b"{oops").unwrap();
        assert_eq!(list(dir.path()).unwrap(), vec![s]);

        let paths = RecordingPaths::new(dir.path(), &id);
        fs::write(&paths.wav, b"RIFF").unwrap();
        delete(dir.path(), &id).unwrap();
        assert!(!paths.wav.exists() && !paths.sidecar.exists());
        assert!(dir.path().join("notes.json").exists());
    }

    #[test]
    fn missing_dir_lists_empty() {
        let dir = tempfile::tempdir().unwrap();
        assert!(list(&dir.path().join("nope")).unwrap().is_empty());
    }

    #[test]
    fn sha256_of_known_content() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(&p, b"abc").unwrap();
        let (h, n) = sha256_file(&p).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            h,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
