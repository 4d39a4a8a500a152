//! The durable outbox between the gateway and its database: records are appended (and
//! fsynced) to numbered segment files under `data_dir/spool/` before anything tries the
//! database, and a segment is deleted only once every record in it has been committed. So a
//! database outage, a restart or a crash in between loses nothing; at worst a record is sent
//! twice, which the database ignores (each record carries a unique id).
//!
//! Blocking std::fs throughout: call from the writer thread or `spawn_blocking`.
//!
//! ```text
//! spool/00000000000000000007.jsonl   oldest: being shipped
//! spool/00000000000000000008.jsonl   newest: being appended to
//! ```

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A segment is closed once it grows past this, so shipped records are freed in bounded steps.
const SEGMENT_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("spool is full ({bytes} bytes waiting for the database, limit {limit})")]
    Full { bytes: u64, limit: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_owned(),
        source,
    }
}

struct Active {
    seq: u64,
    file: Option<File>,
}

/// Segment files of JSON lines, appended at the newest, consumed from the oldest.
pub struct Spool {
    dir: PathBuf,
    active: Mutex<Active>,
    /// Bytes in every segment on disk (the backlog).
    bytes: AtomicU64,
    limit: u64,
}

impl Spool {
    /// Opens (creating) the spool dir. Appends go to a new segment after the existing ones, so
    /// a line torn by a crash stays at the end of a closed segment.
    pub fn open(dir: &Path, limit: u64) -> Result<Spool, SpoolError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let spool = Spool {
            dir: dir.to_owned(),
            active: Mutex::new(Active { seq: 0, file: None }),
            bytes: AtomicU64::new(0),
            limit,
        };
        let segs = spool.segments()?;
        let mut total = 0;
        for s in &segs {
            total += fs::metadata(spool.path(*s)).map(|m| m.len()).unwrap_or(0);
        }
        spool.bytes.store(total, Ordering::SeqCst);
        spool.lock().seq = segs.last().map_or(1, |s| s + 1);
        Ok(spool)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Active> {
        self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("{seq:020}.jsonl"))
    }

    /// Bytes waiting to be shipped.
    pub fn backlog(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }

    /// Appends complete lines (each ending in '\n') and fsyncs once. Refused when the backlog
    /// is over the limit.
    pub fn append(&self, lines: &[u8]) -> Result<(), SpoolError> {
        if lines.is_empty() {
            return Ok(());
        }
        let backlog = self.backlog();
        if backlog + lines.len() as u64 > self.limit {
            return Err(SpoolError::Full {
                bytes: backlog,
                limit: self.limit,
            });
        }
        let mut a = self.lock();
        let path = self.path(a.seq);
        if a.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io_err(&path))?;
            crate::media::recorder::store::sync_dir(&self.dir);
            a.file = Some(f);
        }
        let Some(f) = a.file.as_mut() else {
            return Ok(());
        };
        f.write_all(lines).map_err(io_err(&path))?;
        f.sync_data().map_err(io_err(&path))?;
        self.bytes.fetch_add(lines.len() as u64, Ordering::SeqCst);
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len >= SEGMENT_BYTES {
            a.file = None;
            a.seq += 1;
        }
        Ok(())
    }

    /// Segment numbers on disk, oldest first.
    pub fn segments(&self) -> Result<Vec<u64>, SpoolError> {
        let mut out = Vec::new();
        for entry in fs::read_dir(&self.dir).map_err(io_err(&self.dir))? {
            let entry = entry.map_err(io_err(&self.dir))?;
            if let Some(seq) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".jsonl"))
                .and_then(|n| n.parse::<u64>().ok())
            {
                out.push(seq);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Up to about `max` bytes of complete lines of segment `seq` from `offset`.
    pub fn read(&self, seq: u64, offset: u64, max: usize) -> Result<Vec<u8>, SpoolError> {
        let path = self.path(seq);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_err(&path)(e)),
        };
        f.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
        let mut buf = Vec::with_capacity(max.min(1 << 20));
        f.take(max as u64)
            .read_to_end(&mut buf)
            .map_err(io_err(&path))?;
        match buf.iter().rposition(|&b| b == b'\n') {
            Some(end) => buf.truncate(end + 1),
            None if buf.len() >= max => {
                // One line longer than `max`: read it whole.
                let mut f = File::open(&path).map_err(io_err(&path))?;
                f.seek(SeekFrom::Start(offset)).map_err(io_err(&path))?;
                let mut all = Vec::new();
                f.read_to_end(&mut all).map_err(io_err(&path))?;
                let end = all.iter().position(|&b| b == b'\n').map_or(0, |e| e + 1);
                all.truncate(end);
                return Ok(all);
            }
            None => buf.clear(),
        }
        Ok(buf)
    }

    /// Everything of segment `seq` before `offset` is in the database. Deletes the segment when
    /// nothing else is in it (closing it first if it is the one being appended to). Returns
    /// true when the segment is gone.
    pub fn consumed(&self, seq: u64, offset: u64) -> Result<bool, SpoolError> {
        let path = self.path(seq);
        let mut a = self.lock();
        let len = match fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
            Err(e) => return Err(io_err(&path)(e)),
        };
        if offset < len {
            return Ok(false);
        }
        let torn = offset > len;
        if seq == a.seq {
            a.file = None;
            a.seq += 1;
        } else if seq > a.seq {
            return Ok(false);
        }
        fs::remove_file(&path).map_err(io_err(&path))?;
        let _ = self
            .bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |b| {
                Some(b.saturating_sub(len))
            });
        if torn {
            tracing::warn!(segment = seq, "spool segment shorter than what was read");
        }
        Ok(true)
    }

    /// The segment being appended to.
    pub fn active_seq(&self) -> u64 {
        self.lock().seq
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_read_consume_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(b"{\"a\":1}\n{\"a\":2}\n").unwrap();
        let seq = s.segments().unwrap()[0];
        let got = s.read(seq, 0, 1000).unwrap();
        assert_eq!(got, b"{\"a\":1}\n{\"a\":2}\n");
        // A partial read stops at the last full line.
        assert_eq!(s.read(seq, 0, 10).unwrap(), b"{\"a\":1}\n");
        assert_eq!(s.backlog(), 16);
        // Not everything consumed: kept.
        assert!(!s.consumed(seq, 8).unwrap());
        s.append(b"{\"a\":3}\n").unwrap();
        assert!(
            !s.consumed(seq, 16).unwrap(),
            "a line arrived after the read"
        );
        assert!(s.consumed(seq, 24).unwrap());
        assert!(s.segments().unwrap().is_empty());
        assert_eq!(s.backlog(), 0);
        // The next append opens a new segment.
        s.append(b"{\"a\":4}\n").unwrap();
        let segs = s.segments().unwrap();
        assert_eq!(segs, vec![seq + 1]);
        drop(s);
        // Reopening appends after the existing segments and counts their bytes.
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(s.backlog(), 8);
        s.append(b"{\"a\":5}\n").unwrap();
        assert_eq!(s.segments().unwrap(), vec![seq + 1, seq + 2]);
    }

    #[test]
    fn full_spool_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 20).unwrap();
        s.append(b"0123456789012345678\n").unwrap();
        assert!(matches!(s.append(b"x\n"), Err(SpoolError::Full { .. })));
    }

    #[test]
    fn torn_tail_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let s = Spool::open(dir.path(), 1 << 20).unwrap();
        s.append(b"{\"a\":1}\n{\"a\":").unwrap();
        let seq = s.segments().unwrap()[0];
        assert_eq!(s.read(seq, 0, 1000).unwrap(), b"{\"a\":1}\n");
        assert_eq!(s.read(seq, 8, 1000).unwrap(), b"");
    }
}
