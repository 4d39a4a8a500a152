//! Call detail records and tracked events: append-only JSON-lines files under `data_dir`.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::oneshot;
use tracing::warn;

/// What the writer thread is asked to do.
enum Job {
    Line(Value, Option<oneshot::Sender<bool>>),
    /// Answered once everything queued before it is on disk.
    Flush(oneshot::Sender<()>),
}

/// Lines queued at most; beyond it `append_async` writes inline (never loses a CDR).
const QUEUE: usize = 8192;
/// Lines written together (one write, one fsync) at most.
const BATCH: usize = 512;

/// Appends one JSON object per line. [`append_async`](Self::append_async) hands the line to a
/// writer thread that commits in groups (all lines waiting: one write, one fsync), so neither
/// a call task nor a tokio worker ever waits for the disk, and 1,000 CDRs a second cost a
/// handful of fsyncs. A failed write is logged, never fatal.
pub struct JsonLines {
    path: PathBuf,
    lock: Mutex<()>,
    queue: Mutex<Option<std::sync::mpsc::SyncSender<Job>>>,
}

impl JsonLines {
    pub fn new(path: PathBuf) -> Self {
        JsonLines {
            path,
            lock: Mutex::new(()),
            queue: Mutex::new(None),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends and fsyncs one line, blocking (start-up, tests, the fallback).
    pub fn append(&self, value: &Value) -> std::io::Result<()> {
        self.append_many(std::slice::from_ref(value))
    }

    fn append_many(&self, values: &[Value]) -> std::io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut buf = Vec::with_capacity(values.len() * 256);
        for v in values {
            serde_json::to_writer(&mut buf, v)?;
            buf.push(b'\n');
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&buf)?;
        f.sync_data()
    }

    /// Appends on the writer thread, in order, without blocking the caller. Failures are logged.
    pub fn append_queued(self: &Arc<Self>, value: Value) {
        let _ = self.append_async(value);
    }

    /// [`append_queued`](Self::append_queued), with an answer once the line is on disk
    /// (`true`) or could not be written (`false`).
    pub fn append_async(self: &Arc<Self>, value: Value) -> oneshot::Receiver<bool> {
        let (tx, rx) = oneshot::channel();
        if let Err(w) = self.send(Job::Line(value, Some(tx))) {
            // No writer thread (or it is far behind): write here rather than lose the line.
            if let Job::Line(v, Some(tx)) = w {
                let _ = tx.send(self.append_or_log("JSON line", &v));
            }
        }
        rx
    }

    /// Resolves once every line queued so far is on disk (shutdown).
    pub async fn flushed(self: &Arc<Self>) {
        let (tx, rx) = oneshot::channel();
        if self.send(Job::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    fn send(self: &Arc<Self>, w: Job) -> Result<(), Job> {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_none() {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(QUEUE);
            let me = self.clone();
            let started = std::thread::Builder::new()
                .name("jsonl-writer".into())
                .spawn(move || me.write_loop(rx));
            match started {
                Ok(_) => *q = Some(tx),
                Err(e) => warn!(error = %e, "no writer thread; appending inline"),
            }
        }
        match q.as_ref() {
            Some(tx) => tx.try_send(w).map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(w)
                | std::sync::mpsc::TrySendError::Disconnected(w) => w,
            }),
            None => Err(w),
        }
    }

    /// The writer thread: waits for a line, takes every line waiting behind it, commits.
    fn write_loop(&self, rx: std::sync::mpsc::Receiver<Job>) {
        let mut lines = Vec::with_capacity(BATCH);
        let mut acks = Vec::with_capacity(BATCH);
        let mut flushes = Vec::new();
        while let Ok(first) = rx.recv() {
            let mut next = Some(first);
            while let Some(w) = next.take() {
                match w {
                    Job::Line(v, ack) => {
                        lines.push(v);
                        acks.extend(ack);
                    }
                    Job::Flush(done) => flushes.push(done),
                }
                if lines.len() < BATCH {
                    next = rx.try_recv().ok();
                }
            }
            let ok = lines.is_empty()
                || match self.append_many(&lines) {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(file = %self.path.display(), error = %e, lines = lines.len(), "could not write JSON lines");
                        false
                    }
                };
            lines.clear();
            for a in acks.drain(..) {
                let _ = a.send(ok);
            }
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
        }
    }

    /// Appends, logging instead of failing. True when the line was written.
    pub fn append_or_log(&self, what: &str, value: &Value) -> bool {
        match self.append(value) {
            Ok(()) => true,
            Err(e) => {
                warn!(file = %self.path.display(), error = %e, "could not write {what}");
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_appends_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let j = std::sync::Arc::new(JsonLines::new(dir.path().join("ev.jsonl")));
        for i in 0..50 {
            j.append_queued(serde_json::json!({ "i": i }));
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(j.path()).unwrap_or_default();
            if text.lines().count() == 50 {
                for (i, line) in text.lines().enumerate() {
                    assert_eq!(line, format!("{{\"i\":{i}}}"));
                }
                break;
            }
            assert!(std::time::Instant::now() < deadline, "writer too slow");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[tokio::test]
    async fn async_appends_are_acknowledged_once_on_disk_and_flush_waits() {
        let dir = tempfile::tempdir().unwrap();
        let j = Arc::new(JsonLines::new(dir.path().join("cdrs.jsonl")));
        let acks: Vec<_> = (0..300)
            .map(|i| j.append_async(serde_json::json!({ "i": i })))
            .collect();
        j.flushed().await;
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert_eq!(text.lines().count(), 300);
        for a in acks {
            assert!(a.await.unwrap());
        }
        // A directory where the file should be: the answer says it failed.
        let bad = Arc::new(JsonLines::new(dir.path().to_path_buf()));
        assert!(!bad.append_async(serde_json::json!({})).await.unwrap());
    }

    #[test]
    fn appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = JsonLines::new(dir.path().join("sub/cdrs.jsonl"));
        j.append(&serde_json::json!({"a":1})).unwrap();
        j.append(&serde_json::json!({"a":2})).unwrap();
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
    }
}
