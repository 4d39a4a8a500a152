//! CDRs of calls in progress, kept on disk so a crash (`kill -9`, power loss, OOM kill) still
//! leaves a CDR. At the answer the call's CDR so far is written to `data_dir/calls-open/`
//! (and rewritten when a recording starts); when the call ends its complete CDR goes to the
//! store as usual and, once the store has it, the open file is removed. At start-up every open
//! file left behind belongs to a call the gateway lost: if the store has no CDR for it, its CDR
//! is completed with `end_reason: "gateway_crashed"` (docs/http-api.md) and submitted.
//!
//! Files are written and removed in order on one thread, never on the tokio workers; each
//! write is atomic (temp file, fsync, rename).

use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use chrono::Utc;
use serde_json::Value;
use tracing::{info, warn};

use crate::store::{JournalQuery, Record, Store};

/// The `end_reason` of a call the gateway lost (killed or crashed while it was up).
pub const CRASHED: &str = "gateway_crashed";

/// The directory of open CDRs under `data_dir`.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("calls-open")
}

/// A file name for any Call-ID: a readable prefix plus a hash of the whole (Call-IDs may hold
/// any character and be long).
fn file_name(call_id: &str) -> String {
    let prefix: String = call_id
        .chars()
        .take(40)
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect();
    // FNV-1a: stable across builds (the name must be found again by the next process).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in call_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{prefix}-{h:016x}.json")
}

enum Op {
    Write(PathBuf, Vec<u8>),
    Remove(PathBuf),
}

/// The writer of open CDRs (cheap to clone).
#[derive(Clone)]
pub struct OpenCdrs {
    dir: PathBuf,
    tx: Arc<Mutex<Option<mpsc::Sender<Op>>>>,
}

impl OpenCdrs {
    /// Starts the writer thread for `dir` (created on first write).
    pub fn start(dir: PathBuf) -> OpenCdrs {
        let (tx, rx) = mpsc::channel::<Op>();
        let started = std::thread::Builder::new()
            .name("cdr-open".into())
            .spawn(move || {
                while let Ok(op) = rx.recv() {
                    apply(op);
                }
            });
        let tx = match started {
            Ok(_) => Some(tx),
            Err(e) => {
                warn!(error = %e, "no thread for open CDRs; a crash will leave no CDR");
                None
            }
        };
        OpenCdrs {
            dir,
            tx: Arc::new(Mutex::new(tx)),
        }
    }

    fn send(&self, op: Op) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = tx.as_ref() {
            if tx.send(op).is_err() {
                warn!("open CDR writer stopped");
            }
        }
    }

    /// Writes (or replaces) the open CDR of a call. Never blocks.
    pub fn write(&self, call_id: &str, cdr: &Value) {
        match serde_json::to_vec(cdr) {
            Ok(bytes) => self.send(Op::Write(self.dir.join(file_name(call_id)), bytes)),
            Err(e) => warn!(error = %e, "open CDR not serialisable"),
        }
    }

    /// Removes a call's open CDR once the store holds everything submitted so far (its
    /// complete CDR included). If the store cannot confirm in time the file stays and the
    /// next start-up finds the complete CDR and just removes it.
    pub fn remove_when_stored(&self, call_id: &str, store: Arc<dyn Store>) {
        let me = self.clone();
        let path = self.dir.join(file_name(call_id));
        tokio::spawn(async move {
            if store.flush(std::time::Duration::from_secs(30)).await {
                me.send(Op::Remove(path));
            }
        });
    }
}

fn apply(op: Op) {
    match op {
        Op::Write(path, bytes) => {
            if let Err(e) = write_atomic(&path, &bytes) {
                warn!(file = %path.display(), error = %e, "could not write the open CDR");
            }
        }
        Op::Remove(path) => match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => warn!(file = %path.display(), error = %e, "could not remove the open CDR"),
        },
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("json.tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)
}

/// The CDR of a lost call: the open CDR, completed.
pub fn crashed(mut open: Value, found_at: chrono::DateTime<Utc>) -> Value {
    if let Some(o) = open.as_object_mut() {
        o.insert("end_reason".into(), Value::String(CRASHED.into()));
        o.insert(
            "end_detail".into(),
            Value::String(
                "the gateway stopped during the call (killed or crashed); the end time is unknown"
                    .into(),
            ),
        );
        o.insert("end".into(), Value::Null);
        o.insert("duration_ms".into(), Value::Null);
        o.insert("cut_short".into(), Value::Bool(true));
        o.insert("recovered_at".into(), Value::String(found_at.to_rfc3339()));
    }
    open
}

/// Open CDRs left in `dir` by an earlier process (blocking: run before serving calls, or in
/// `spawn_blocking`). Returns (file, CDR); unreadable files are logged and skipped (temp files
/// removed, so this must not run while an `OpenCdrs` writer of this process is writing).
fn leftovers(dir: &Path) -> Vec<(PathBuf, Value)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot read the open CDRs");
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if name.ends_with(".json.tmp") {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<Value>(&b).map_err(|e| e.to_string()))
        {
            Ok(v) if v.get("call_id").and_then(Value::as_str).is_some() => out.push((path, v)),
            Ok(_) => warn!(file = %path.display(), "open CDR without a call_id; left alone"),
            Err(e) => warn!(file = %path.display(), error = %e, "unreadable open CDR; left alone"),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Start-up: completes the CDR of every call an earlier process lost, and removes its open
/// file once the store has the CDR. Returns how many CDRs were completed.
pub async fn recover(dir: PathBuf, store: Arc<dyn Store>) -> usize {
    let scan = dir.clone();
    let found = tokio::task::spawn_blocking(move || leftovers(&scan))
        .await
        .unwrap_or_default();
    let mut completed = 0;
    let mut done = Vec::new();
    for (path, open) in found {
        let call_id = open
            .get("call_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        let q = JournalQuery {
            limit: 1,
            call_id: Some(call_id.clone()),
            name: None,
        };
        match store.cdrs(&q).await {
            Ok(v) if !v.is_empty() => done.push(path), // ended normally; the removal was cut
            Ok(_) => {
                let cdr = crashed(open, Utc::now());
                warn!(call_id = %call_id, reason = CRASHED, "CDR of a call the gateway lost, completed at start-up");
                metrics::counter!("voxgate_calls_total", "outcome" => CRASHED).increment(1);
                store.submit(Record::Cdr(cdr));
                completed += 1;
                done.push(path);
            }
            Err(e) => {
                warn!(call_id = %call_id, error = %e, "store unavailable: open CDR kept for the next start");
            }
        }
    }
    if !done.is_empty() {
        if store.flush(std::time::Duration::from_secs(10)).await {
            let n = done.len();
            let _ = tokio::task::spawn_blocking(move || {
                for p in done {
                    apply(Op::Remove(p));
                }
            })
            .await;
            info!(open = n, completed, "open CDRs of an earlier run handled");
        } else {
            warn!("store did not confirm the completed CDRs; open CDRs kept");
        }
    }
    completed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn file_names_are_safe_and_distinct() {
        let a = file_name("abc/../../etc@host");
        assert!(!a.contains('/') && !a.contains(".."), "{a}");
        assert!(a.ends_with(".json"));
        assert_ne!(file_name("x@a"), file_name("x@b"));
        assert_eq!(file_name("x@a"), file_name("x@a"));
        let long = "z".repeat(5000);
        assert!(file_name(&long).len() < 80);
    }

    #[test]
    fn a_crashed_cdr_says_so() {
        let open = json!({"call_id": "c", "answer": "2026-01-01T00:00:00Z", "end": null,
                          "end_reason": "in_progress", "recording_ids": ["r1"]});
        let c = crashed(open, Utc::now());
        assert_eq!(c["end_reason"], CRASHED);
        assert_eq!(c["cut_short"], true);
        assert_eq!(c["recording_ids"], json!(["r1"]));
        assert!(c["end"].is_null());
    }

    #[tokio::test]
    async fn writes_in_order_and_recovers_only_lost_calls() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().to_path_buf();
        let store: Arc<dyn Store> = Arc::new(crate::store::file::FileStore::new(
            "n1".into(),
            data.clone(),
            data.join("rec"),
            None,
        ));
        let open = OpenCdrs::start(dir(&data));
        open.write(
            "lost@x",
            &json!({"call_id": "lost@x", "end_reason": "in_progress"}),
        );
        open.write(
            "ended@x",
            &json!({"call_id": "ended@x", "end_reason": "in_progress"}),
        );
        // "ended@x" ended normally but the process died before its open file was removed.
        store.submit(Record::Cdr(
            json!({"call_id": "ended@x", "end_reason": "hangup"}),
        ));
        // Counts the renamed files only: `leftovers` removes temp files, so polling with it
        // could delete a temp file the writer is about to rename, losing that CDR.
        let written = |d: &Path| {
            std::fs::read_dir(d).map_or(0, |es| {
                es.flatten()
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while written(&dir(&data)) < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "open CDRs not written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(recover(dir(&data), store.clone()).await, 1);
        assert!(leftovers(&dir(&data)).is_empty(), "both handled");
        let all = store
            .cdrs(&JournalQuery {
                limit: 10,
                call_id: None,
                name: None,
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 2, "{all:?}");
        assert_eq!(all[0]["call_id"], "lost@x");
        assert_eq!(all[0]["end_reason"], CRASHED);
        // A second start finds nothing to do.
        assert_eq!(recover(dir(&data), store).await, 0);
    }
}
