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
}

impl JsonLines {
    pub fn new(path: PathBuf) -> Self {
        JsonLines {
            path,
            lock: Mutex::new(()),
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
    fn appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let j = JsonLines::new(dir.path().join("sub/cdrs.jsonl"));
        j.append(&serde_json::json!({"a":1})).unwrap();
        j.append(&serde_json::json!({"a":2})).unwrap();
        let text = std::fs::read_to_string(j.path()).unwrap();
        assert_eq!(text, "{\"a\":1}\n{\"a\":2}\n");
    }
}
