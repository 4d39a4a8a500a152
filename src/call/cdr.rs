//! Call detail records and tracked events: append-only JSON-lines files under `data_dir`.

use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use tracing::warn;

/// Appends one JSON object per line. Writes are small and rare (one per call or tracked
/// event), so a mutex-guarded append is enough; a failed write is logged, never fatal.
pub struct JsonLines {
    path: PathBuf,
    lock: Mutex<()>,
    /// Feeds a writer thread for appends that must not stall a call's task (fsync can take
    /// tens of milliseconds, longer than an RTP slot). Started on first use; keeps order.
    queue: Mutex<Option<std::sync::mpsc::Sender<Value>>>,
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

    pub fn append(&self, value: &Value) -> std::io::Result<()> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut line = serde_json::to_vec(value)?;
        line.push(b'\n');
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(&line)?;
        f.sync_data()
    }

    /// Appends on the writer thread, in order, without blocking the caller. Failures are logged.
    pub fn append_queued(self: &std::sync::Arc<Self>, value: Value) {
        let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if q.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<Value>();
            let me = self.clone();
            let started = std::thread::Builder::new()
                .name("jsonl-writer".into())
                .spawn(move || {
                    while let Ok(v) = rx.recv() {
                        me.append_or_log("JSON line", &v);
                    }
                });
            match started {
                Ok(_) => *q = Some(tx),
                Err(e) => warn!(error = %e, "no writer thread; appending inline"),
            }
        }
        match q.as_ref() {
            Some(tx) => {
                if let Err(e) = tx.send(value) {
                    self.append_or_log("JSON line", &e.0);
                }
            }
            None => {
                self.append_or_log("JSON line", &value);
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
