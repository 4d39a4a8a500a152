//! CDRs of calls in progress, kept on disk so a crash (`kill -9`, power loss, OOM kill) still
//! leaves a CDR. At the answer the call's CDR so far is appended to the journal
//! `data_dir/calls-open.jsonl` (again when a recording starts); when the call ends its
//! complete CDR goes to the store as usual and, once the store has it, a `closed` line for the
//! call is appended. At start-up every call the journal leaves open belongs to a call the
//! gateway lost: if the store has no CDR for it, its CDR is completed with
//! `end_reason: "gateway_crashed"` (docs/http-api.md) and submitted.
//!
//! One thread writes the journal, never the tokio workers. It appends what is queued with one
//! `write` and syncs once per batch when the batch opened a call (a lost `closed` line only
//! makes the next start look the call up in the store), so a burst of calls costs a few syncs,
//! not one file created, synced, renamed and deleted per call. Past [`COMPACT_BYTES`] (or
//! twice what the last compaction kept) the journal is rewritten with only the calls still
//! open (temp file, sync, rename).
//! Earlier versions kept one file per call in `data_dir/calls-open/`; start-up still reads
//! and removes those.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

use chrono::Utc;
use serde_json::{json, Value};
use tracing::{info, warn};

use crate::store::{JournalQuery, Record, Store};

/// The `end_reason` of a call the gateway lost (killed or crashed while it was up).
pub const CRASHED: &str = "gateway_crashed";

/// The journal is compacted once it grows past this size.
pub const COMPACT_BYTES: u64 = 4 << 20;

/// Lines appended in one batch at most.
const BATCH: usize = 256;

/// The journal of open CDRs under `data_dir`.
pub fn journal(data_dir: &Path) -> PathBuf {
    data_dir.join("calls-open.jsonl")
}

/// The directory of per-call open CDRs that earlier versions wrote (read at start-up only).
pub fn legacy_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("calls-open")
}

enum Op {
    Open(Vec<u8>),
    Closed(Vec<u8>),
}

/// The writer of open CDRs (cheap to clone).
#[derive(Clone)]
pub struct OpenCdrs {
    tx: Arc<Mutex<Option<mpsc::Sender<Op>>>>,
}

impl OpenCdrs {
    /// Starts the writer thread for the journal at `path` (created on first write).
    pub fn start(path: PathBuf) -> OpenCdrs {
        let (tx, rx) = mpsc::channel::<Op>();
        let started = std::thread::Builder::new()
            .name("cdr-open".into())
            .spawn(move || Journal::new(path).run(rx));
        let tx = match started {
            Ok(_) => Some(tx),
            Err(e) => {
                warn!(error = %e, "no thread for open CDRs; a crash will leave no CDR");
                None
            }
        };
        OpenCdrs {
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
        match serde_json::to_vec(&json!({"call_id": call_id, "open": cdr})) {
            Ok(line) => self.send(Op::Open(line)),
            Err(e) => warn!(error = %e, "open CDR not serialisable"),
        }
    }

    /// Closes a call's open CDR once the store holds everything submitted so far (its
    /// complete CDR included). If the store cannot confirm in time the call stays open and
    /// the next start-up finds the complete CDR and just drops it.
    pub fn remove_when_stored(&self, call_id: &str, store: Arc<dyn Store>) {
        let me = self.clone();
        let line = serde_json::to_vec(&json!({"call_id": call_id, "closed": true}));
        tokio::spawn(async move {
            if store.flush(std::time::Duration::from_secs(30)).await {
                if let Ok(line) = line {
                    me.send(Op::Closed(line));
                }
            }
        });
    }
}

/// The writer thread's state.
struct Journal {
    path: PathBuf,
    file: Option<std::fs::File>,
    len: u64,
    /// Compact past this size: `COMPACT_BYTES`, or twice what the last compaction kept (many
    /// calls up at once must not make every batch compact).
    compact_at: u64,
    /// The last append failed, maybe half-way through a line: the next starts a new line.
    torn: bool,
    buf: Vec<u8>,
}

impl Journal {
    fn new(path: PathBuf) -> Journal {
        Journal {
            path,
            file: None,
            len: 0,
            compact_at: COMPACT_BYTES,
            torn: false,
            buf: Vec::new(),
        }
    }

    fn run(mut self, rx: mpsc::Receiver<Op>) {
        while let Ok(first) = rx.recv() {
            let mut sync = false;
            self.buf.clear();
            if self.torn {
                self.buf.push(b'\n');
            }
            let mut op = Some(first);
            let mut n = 0;
            while let Some(o) = op.take() {
                let line = match o {
                    Op::Open(l) => {
                        sync = true;
                        l
                    }
                    Op::Closed(l) => l,
                };
                self.buf.extend_from_slice(&line);
                self.buf.push(b'\n');
                n += 1;
                if n < BATCH {
                    op = rx.try_recv().ok();
                }
            }
            self.torn = false;
            if let Err(e) = self.append(sync) {
                warn!(file = %self.path.display(), error = %e, "could not write open CDRs");
                self.file = None;
                self.torn = true;
            }
            if self.len > self.compact_at {
                if let Err(e) = self.compact() {
                    warn!(file = %self.path.display(), error = %e, "could not compact the open CDRs");
                }
            }
        }
    }

    fn append(&mut self, sync: bool) -> std::io::Result<()> {
        if self.file.is_none() {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            self.len = f.metadata()?.len();
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&self.buf)?;
            self.len += self.buf.len() as u64;
            if sync {
                f.sync_data()?;
            }
        }
        Ok(())
    }

    /// Rewrites the journal with the latest line of every call still open.
    fn compact(&mut self) -> std::io::Result<()> {
        let text = std::fs::read(&self.path)?;
        let (open, _) = replay(&text);
        let tmp = self.path.with_extension("jsonl.tmp");
        let mut out = Vec::new();
        for line in open.values() {
            out.extend_from_slice(line);
            out.push(b'\n');
        }
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&out)?;
            f.sync_data()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        self.file = None;
        self.len = out.len() as u64;
        self.compact_at = COMPACT_BYTES.max(2 * self.len);
        Ok(())
    }
}

/// The calls a journal leaves open: call id -> its latest `open` line. Also the number of
/// lines that could not be read (a line cut by a crash is skipped).
fn replay(text: &[u8]) -> (HashMap<String, &[u8]>, usize) {
    #[derive(serde::Deserialize)]
    struct Line {
        call_id: String,
        #[serde(default)]
        closed: bool,
        #[serde(default)]
        open: Option<serde::de::IgnoredAny>,
    }
    let mut open = HashMap::new();
    let mut bad = 0;
    for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        match serde_json::from_slice::<Line>(line) {
            Ok(l) if l.closed => {
                open.remove(&l.call_id);
            }
            Ok(l) if l.open.is_some() => {
                open.insert(l.call_id, line);
            }
            _ => bad += 1,
        }
    }
    (open, bad)
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

/// Open CDRs left by an earlier process (blocking: run before serving calls, or in
/// `spawn_blocking`, and never while an `OpenCdrs` writer of this process is writing): the
/// calls the journal leaves open, then the per-call files of earlier versions. Returns the
/// CDRs and the legacy files they came from; unreadable lines and files are logged and
/// skipped (legacy temp files removed).
fn leftovers(data_dir: &Path) -> (Vec<Value>, Vec<PathBuf>) {
    let mut out = Vec::new();
    let path = journal(data_dir);
    match std::fs::read(&path) {
        Ok(text) => {
            let (open, bad) = replay(&text);
            if bad > 0 {
                warn!(file = %path.display(), lines = bad, "unreadable open CDR lines skipped");
            }
            let mut cdrs: Vec<Value> = open
                .values()
                .filter_map(|line| serde_json::from_slice::<Value>(line).ok())
                .filter_map(|mut v| v.get_mut("open").map(Value::take))
                .filter(|v| v.get("call_id").and_then(Value::as_str).is_some())
                .collect();
            cdrs.sort_by(|a, b| a["call_id"].as_str().cmp(&b["call_id"].as_str()));
            out.extend(cdrs);
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => warn!(file = %path.display(), error = %e, "cannot read the open CDRs"),
    }
    let dir = legacy_dir(data_dir);
    let mut files = Vec::new();
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return (out, files),
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "cannot read the open CDRs");
            return (out, files);
        }
    };
    let mut found = Vec::new();
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
            Ok(v) if v.get("call_id").and_then(Value::as_str).is_some() => found.push((path, v)),
            Ok(_) => warn!(file = %path.display(), "open CDR without a call_id; left alone"),
            Err(e) => warn!(file = %path.display(), error = %e, "unreadable open CDR; left alone"),
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    for (path, v) in found {
        files.push(path);
        out.push(v);
    }
    (out, files)
}

/// Start-up: completes the CDR of every call an earlier process lost, then (once the store
/// has them) empties the journal and removes legacy files. Returns how many CDRs were
/// completed.
pub async fn recover(data_dir: PathBuf, store: Arc<dyn Store>) -> usize {
    let scan = data_dir.clone();
    let (found, files) = tokio::task::spawn_blocking(move || leftovers(&scan))
        .await
        .unwrap_or_default();
    if found.is_empty() && files.is_empty() {
        return 0;
    }
    let mut completed = 0;
    let mut kept = 0;
    for open in found {
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
            Ok(v) if !v.is_empty() => {} // ended normally; its `closed` line was cut
            Ok(_) => {
                let cdr = crashed(open, Utc::now());
                warn!(call_id = %call_id, reason = CRASHED, "CDR of a call the gateway lost, completed at start-up");
                metrics::counter!("voxgate_calls_total", "outcome" => CRASHED).increment(1);
                store.submit(Record::Cdr(cdr));
                completed += 1;
            }
            Err(e) => {
                kept += 1;
                warn!(call_id = %call_id, error = %e, "store unavailable: open CDR kept for the next start");
            }
        }
    }
    if kept > 0 {
        // Everything stays for the next start: the calls completed now are in the store by
        // then, so they are not completed twice.
        return completed;
    }
    if store.flush(std::time::Duration::from_secs(10)).await {
        let path = journal(&data_dir);
        let _ = tokio::task::spawn_blocking(move || {
            for p in files.iter().chain(std::iter::once(&path)) {
                match std::fs::remove_file(p) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        warn!(file = %p.display(), error = %e, "could not remove the open CDRs")
                    }
                }
            }
        })
        .await;
        info!(completed, "open CDRs of an earlier run handled");
    } else {
        warn!("store did not confirm the completed CDRs; open CDRs kept");
    }
    completed
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn line(v: Value) -> Vec<u8> {
        let mut l = serde_json::to_vec(&v).unwrap();
        l.push(b'\n');
        l
    }

    #[test]
    fn replay_keeps_the_latest_open_line_of_calls_not_closed() {
        let mut text = Vec::new();
        text.extend(line(
            json!({"call_id": "a", "open": {"call_id": "a", "n": 1}}),
        ));
        text.extend(line(json!({"call_id": "b", "open": {"call_id": "b"}})));
        text.extend(line(
            json!({"call_id": "a", "open": {"call_id": "a", "n": 2}}),
        ));
        text.extend(line(json!({"call_id": "b", "closed": true})));
        text.extend(line(json!({"call_id": "c", "open": {"call_id": "c"}})));
        // A line cut by a crash, and one that is not ours.
        text.extend_from_slice(b"{\"call_id\": \"d\", \"open\": {\"call_");
        text.push(b'\n');
        text.extend(line(json!({"other": 1})));
        let (open, bad) = replay(&text);
        assert_eq!(bad, 2);
        let mut ids: Vec<&String> = open.keys().collect();
        ids.sort();
        assert_eq!(ids, ["a", "c"]);
        let a: Value = serde_json::from_slice(open["a"]).unwrap();
        assert_eq!(a["open"]["n"], 2, "the latest line wins");
    }

    #[test]
    fn compaction_keeps_only_open_calls() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = Journal::new(journal(tmp.path()));
        for i in 0..100 {
            let id = format!("call{i}");
            j.buf = line(json!({"call_id": id, "open": {"call_id": id}}));
            j.append(true).unwrap();
            if i != 42 {
                j.buf = line(json!({"call_id": id, "closed": true}));
                j.append(false).unwrap();
            }
        }
        let before = j.len;
        j.compact().unwrap();
        let text = std::fs::read(journal(tmp.path())).unwrap();
        assert_eq!(j.len, text.len() as u64);
        assert!(j.len < before / 50, "{} of {before} bytes", j.len);
        let (open, bad) = replay(&text);
        assert_eq!((open.len(), bad), (1, 0));
        assert!(open.contains_key("call42"));
        // Appending goes on in the new file.
        j.buf = line(json!({"call_id": "x", "open": {"call_id": "x"}}));
        j.append(true).unwrap();
        let text = std::fs::read(journal(tmp.path())).unwrap();
        let (open, _) = replay(&text);
        assert_eq!(open.len(), 2);
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
        let open = OpenCdrs::start(journal(&data));
        open.write(
            "lost@x",
            &json!({"call_id": "lost@x", "end_reason": "in_progress"}),
        );
        open.write(
            "ended@x",
            &json!({"call_id": "ended@x", "end_reason": "in_progress"}),
        );
        open.write(
            "closed@x",
            &json!({"call_id": "closed@x", "end_reason": "in_progress"}),
        );
        // "ended@x" ended normally but the process died before its `closed` line; "closed@x"
        // ended and was closed.
        store.submit(Record::Cdr(
            json!({"call_id": "ended@x", "end_reason": "hangup"}),
        ));
        store.submit(Record::Cdr(
            json!({"call_id": "closed@x", "end_reason": "hangup"}),
        ));
        open.remove_when_stored("closed@x", store.clone());
        // A call left by an earlier version, one file per call.
        let legacy = legacy_dir(&data);
        std::fs::create_dir_all(&legacy).unwrap();
        std::fs::write(
            legacy.join("old.json"),
            serde_json::to_vec(&json!({"call_id": "old@x", "end_reason": "in_progress"})).unwrap(),
        )
        .unwrap();
        let lines = |d: &Path| {
            std::fs::read(journal(d)).map_or(0, |t| t.iter().filter(|b| **b == b'\n').count())
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while lines(&data) < 4 {
            assert!(
                std::time::Instant::now() < deadline,
                "open CDRs not written"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(recover(data.clone(), store.clone()).await, 2);
        assert!(!journal(&data).exists(), "journal emptied");
        assert!(!legacy.join("old.json").exists(), "legacy file removed");
        let all = store
            .cdrs(&JournalQuery {
                limit: 10,
                call_id: None,
                name: None,
            })
            .await
            .unwrap();
        assert_eq!(all.len(), 4, "{all:?}");
        let crashed: Vec<&str> = all
            .iter()
            .filter(|c| c["end_reason"] == CRASHED)
            .filter_map(|c| c["call_id"].as_str())
            .collect();
        assert_eq!(crashed.len(), 2, "{all:?}");
        assert!(crashed.contains(&"lost@x") && crashed.contains(&"old@x"));
        // A second start finds nothing to do.
        assert_eq!(recover(data, store).await, 0);
    }
}
