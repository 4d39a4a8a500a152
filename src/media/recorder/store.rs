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

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::id::RecordingId;
use super::sidecar::Sidecar;

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
    let tmp = paths.sidecar_tmp();
    let body = serde_json::to_vec_pretty(sidecar).map_err(|source| StoreError::Malformed {
        path: tmp.clone(),
        source,
    })?;
    let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
    f.write_all(&body).map_err(io_err(&tmp))?;
    if durable {
        f.sync_all().map_err(io_err(&tmp))?;
    }
    drop(f);
    fs::rename(&tmp, &paths.sidecar).map_err(io_err(&paths.sidecar))?;
    Ok(())
}

/// Reads `<id>.json`; `Ok(None)` when there is none.
pub fn read_sidecar(dir: &Path, id: &RecordingId) -> Result<Option<Sidecar>, StoreError> {
    let path = RecordingPaths::new(dir, id).sidecar;
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
    let mut out = Vec::new();
    for id in ids_with_suffix(dir, ".json")? {
        match read_sidecar(dir, &id) {
            Ok(Some(s)) if s.id == id.as_str() => out.push(s),
            Ok(Some(s)) => {
                tracing::warn!(file = %id, inner = %s.id, "sidecar id mismatch, skipped")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "skipping unreadable sidecar"),
        }
    }
    Ok(out)
}

/// Removes every file of a recording. Missing files are not an error.
pub fn delete(dir: &Path, id: &RecordingId) -> Result<(), StoreError> {
    let paths = RecordingPaths::new(dir, id);
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
