//! The embedded store (the default): append-only JSON-lines files in `data_dir`
//! (`cdrs.jsonl`, `events.jsonl`, `transcripts.jsonl`) and the recording sidecars in the
//! recordings dir. Appends happen on one writer thread, in order, with one fsync per batch,
//! so callers never wait on the disk.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

use super::{
    live_view, page, with_node, JournalQuery, Record, RecordingPage, RecordingQuery,
    SharedRecordings, Store, StoreError, StoreStatus, Uploader,
};
use crate::media::recorder::store as rec_store;
use crate::media::recorder::{RecordingId, Sidecar};

/// The three journals, by record kind.
fn journal_file(data_dir: &Path, kind: &str) -> PathBuf {
    data_dir.join(match kind {
        "cdr" => "cdrs.jsonl",
        "event" => "events.jsonl",
        _ => "transcripts.jsonl",
    })
}

struct Writer {
    tx: Mutex<Option<mpsc::Sender<(PathBuf, Value)>>>,
    submitted: AtomicU64,
    written: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

pub struct FileStore {
    node: String,
    data_dir: PathBuf,
    recordings_dir: PathBuf,
    shared: Option<SharedRecordings>,
    uploader: Option<Uploader>,
    writer: Writer,
}

impl FileStore {
    /// A store over `data_dir` and `recordings_dir`. With shared storage it also starts the
    /// uploader, so it must then be called inside a tokio runtime.
    pub fn new(
        node: String,
        data_dir: PathBuf,
        recordings_dir: PathBuf,
        shared: Option<SharedRecordings>,
    ) -> FileStore {
        let written = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let tx = spawn_writer(written.clone(), failed.clone());
        let uploader = shared.clone().map(|s| {
            // Shared copies are noted in the local sidecar; nothing else to record here.
            Uploader::start(s, recordings_dir.clone(), Arc::new(|_| {}))
        });
        FileStore {
            node,
            data_dir,
            recordings_dir,
            shared,
            uploader,
            writer: Writer {
                tx: Mutex::new(tx),
                submitted: AtomicU64::new(0),
                written,
                failed,
            },
        }
    }

    fn append(&self, kind: &str, v: Value) {
        let path = journal_file(&self.data_dir, kind);
        self.writer.submitted.fetch_add(1, Ordering::SeqCst);
        let tx = self.writer.tx.lock().unwrap_or_else(|p| p.into_inner());
        let sent = match tx.as_ref() {
            Some(tx) => tx.send((path.clone(), v)).map_err(|e| e.0 .1),
            None => Err(v),
        };
        drop(tx);
        if let Err(v) = sent {
            // No writer thread: append inline rather than lose the record.
            let ok = append_lines(&path, std::slice::from_ref(&v)).is_ok();
            self.writer.written.fetch_add(1, Ordering::SeqCst);
            if !ok {
                self.writer.failed.fetch_add(1, Ordering::SeqCst);
                tracing::error!(file = %path.display(), record = %v, "could not write record");
            }
        }
    }
}

fn spawn_writer(
    written: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
) -> Option<mpsc::Sender<(PathBuf, Value)>> {
    let (tx, rx) = mpsc::channel::<(PathBuf, Value)>();
    let started = std::thread::Builder::new()
        .name("store-files".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut batch = vec![first];
                while batch.len() < 1000 {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                // Group by file, keeping each file's order.
                let mut by_file: Vec<(PathBuf, Vec<Value>)> = Vec::new();
                for (p, v) in batch {
                    match by_file.iter_mut().find(|(q, _)| *q == p) {
                        Some((_, vs)) => vs.push(v),
                        None => by_file.push((p, vec![v])),
                    }
                }
                for (path, values) in by_file {
                    let n = values.len() as u64;
                    if let Err(e) = append_lines(&path, &values) {
                        failed.fetch_add(n, Ordering::SeqCst);
                        for v in &values {
                            tracing::error!(file = %path.display(), error = %e, record = %v, "could not write record");
                        }
                    }
                    written.fetch_add(n, Ordering::SeqCst);
                }
            }
        });
    match started {
        Ok(_) => Some(tx),
        Err(e) => {
            tracing::warn!(error = %e, "no store writer thread; appending inline");
            None
        }
    }
}

/// Appends one JSON object per line and fsyncs.
fn append_lines(path: &Path, values: &[Value]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut buf = Vec::new();
    for v in values {
        serde_json::to_writer(&mut buf, v)?;
        buf.push(b'\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(&buf)?;
    f.sync_data()
}

/// Parses JSON lines newest first (last line first), keeping those `keep` accepts, up to
/// `limit`. Returns the records and how many lines were malformed (for instance one still
/// being written).
pub fn newest_first(
    text: &str,
    limit: usize,
    keep: impl Fn(&Value) -> bool,
) -> (Vec<Value>, usize) {
    let mut bad = 0;
    let mut out = Vec::new();
    for line in text.lines().rev().map(str::trim).filter(|l| !l.is_empty()) {
        if out.len() >= limit {
            break;
        }
        match serde_json::from_str::<Value>(line) {
            Ok(v) if v.is_object() => {
                if keep(&v) {
                    out.push(v);
                }
            }
            _ => bad += 1,
        }
    }
    (out, bad)
}

async fn read_journal(path: PathBuf) -> Result<String, StoreError> {
    match tokio::fs::read(&path).await {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(StoreError::Io(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// A string filter on a top-level key; an absent filter keeps everything.
fn field_is(v: &Value, key: &str, want: Option<&String>) -> bool {
    want.is_none_or(|w| v.get(key).and_then(Value::as_str) == Some(w.as_str()))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Io(format!("background task failed: {e}")))?
}

#[async_trait::async_trait]
impl Store for FileStore {
    fn node(&self) -> &str {
        &self.node
    }

    fn submit(&self, record: Record) {
        match record {
            Record::Cdr(v) => self.append("cdr", with_node(v, &self.node)),
            Record::Event(v) => self.append("event", with_node(v, &self.node)),
            Record::Transcript {
                call_id,
                transcript,
            } => {
                let v = serde_json::json!({
                    "call_id": call_id,
                    "node": self.node,
                    "transcript": transcript,
                });
                self.append("transcript", v)
            }
            // The sidecar next to the audio is the record; only its shared copy is left to do.
            Record::Recording(s) => {
                if let Some(u) = &self.uploader {
                    u.offer(&s);
                }
            }
        }
    }

    async fn cdrs(&self, q: &JournalQuery) -> Result<Vec<Value>, StoreError> {
        let path = journal_file(&self.data_dir, "cdr");
        let text = read_journal(path.clone()).await?;
        let (v, bad) = newest_first(&text, q.limit, |v| {
            field_is(v, "call_id", q.call_id.as_ref())
        });
        if bad > 0 {
            tracing::warn!(file = %path.display(), lines = bad, "skipped malformed JSON lines");
        }
        Ok(v)
    }

    async fn events(&self, q: &JournalQuery) -> Result<Vec<Value>, StoreError> {
        let path = journal_file(&self.data_dir, "event");
        let text = read_journal(path.clone()).await?;
        let (v, bad) = newest_first(&text, q.limit, |v| {
            field_is(v, "call_id", q.call_id.as_ref()) && field_is(v, "name", q.name.as_ref())
        });
        if bad > 0 {
            tracing::warn!(file = %path.display(), lines = bad, "skipped malformed JSON lines");
        }
        Ok(v)
    }

    async fn transcript(&self, call_id: &str) -> Result<Option<Value>, StoreError> {
        let text = read_journal(journal_file(&self.data_dir, "transcript")).await?;
        let want = call_id.to_string();
        let (v, _) = newest_first(&text, 1, |v| field_is(v, "call_id", Some(&want)));
        Ok(v.into_iter()
            .next()
            .and_then(|mut v| v.get_mut("transcript").map(Value::take)))
    }

    async fn recordings(&self, q: &RecordingQuery) -> Result<RecordingPage, StoreError> {
        let dir = self.recordings_dir.clone();
        let all = blocking(move || {
            rec_store::list(&dir)
                .map(|v| {
                    v.into_iter()
                        .map(|s| live_view(&dir, s))
                        .collect::<Vec<_>>()
                })
                .map_err(|e| StoreError::Io(e.to_string()))
        })
        .await?;
        Ok(page(all, q))
    }

    async fn recording(&self, id: &RecordingId) -> Result<Option<Sidecar>, StoreError> {
        let dir = self.recordings_dir.clone();
        let id = id.clone();
        blocking(move || match rec_store::read_sidecar(&dir, &id) {
            Ok(s) => Ok(s.map(|s| live_view(&dir, s))),
            Err(e) => Err(StoreError::Io(e.to_string())),
        })
        .await
    }

    async fn delete_recording(&self, id: &RecordingId) -> Result<(), StoreError> {
        let key = self.recording(id).await?.and_then(|s| s.shared_key);
        let dir = self.recordings_dir.clone();
        let rid = id.clone();
        blocking(move || rec_store::delete(&dir, &rid).map_err(|e| StoreError::Io(e.to_string())))
            .await?;
        if let (Some(shared), Some(key)) = (&self.shared, key) {
            shared.delete(&key).await?;
        }
        Ok(())
    }

    fn shared(&self) -> Option<&SharedRecordings> {
        self.shared.as_ref()
    }

    fn status(&self) -> StoreStatus {
        StoreStatus {
            kind: "files",
            backlog_bytes: 0,
            dropped: self.writer.failed.load(Ordering::SeqCst),
            connected: true,
        }
    }

    async fn flush(&self, timeout: Duration) -> bool {
        let target = self.writer.submitted.load(Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if self.writer.written.load(Ordering::SeqCst) >= target {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn newest_first_skips_bad_lines_and_filters() {
        let text = "{\"n\":1,\"name\":\"a\"}\nnot json\n{\"n\":2,\"name\":\"b\"}\n[1]\n\n{\"n\":3,\"name\":\"a\"}\n{\"n\":4,";
        let (all, bad) = newest_first(text, 10, |_| true);
        assert_eq!(
            all.iter()
                .map(|v| v["n"].as_i64().unwrap())
                .collect::<Vec<_>>(),
            [3, 2, 1]
        );
        assert_eq!(bad, 3);
        let (a, _) = newest_first(text, 1, |v| v["name"] == "a");
        assert_eq!(a.len(), 1);
        assert_eq!(a[0]["n"], 3);
    }

    #[tokio::test]
    async fn records_land_in_their_journals_in_order_with_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let s = FileStore::new(
            "n1".into(),
            dir.path().join("data"),
            dir.path().join("rec"),
            None,
        );
        for i in 0..50 {
            s.submit(Record::Event(json!({"call_id": "c", "name": "e", "i": i})));
        }
        s.submit(Record::Cdr(json!({"call_id": "c"})));
        s.submit(Record::Transcript {
            call_id: "c".into(),
            transcript: json!({"entries": [1]}),
        });
        assert!(s.flush(Duration::from_secs(5)).await);
        let q = JournalQuery {
            limit: 100,
            ..Default::default()
        };
        let ev = s.events(&q).await.unwrap();
        assert_eq!(ev.len(), 50);
        assert_eq!(ev[0]["i"], 49, "newest first");
        assert!(ev.iter().all(|e| e["node"] == "n1"));
        let cdrs = s.cdrs(&q).await.unwrap();
        assert_eq!(cdrs, vec![json!({"call_id": "c", "node": "n1"})]);
        assert_eq!(
            s.transcript("c").await.unwrap(),
            Some(json!({"entries": [1]}))
        );
        assert_eq!(s.transcript("other").await.unwrap(), None);
        let text = std::fs::read_to_string(dir.path().join("data/events.jsonl")).unwrap();
        assert_eq!(text.lines().count(), 50);
    }
}
