//! Where the gateway keeps what outlives a call: CDRs, tracked events, transcripts and
//! recording metadata (the schema also holds the flow's tables, `table_rows`, for the table
//! steps to use). One interface, two homes:
//!
//! * [`file::FileStore`], the embedded default: JSON-lines files in `data_dir` and the
//!   recording sidecars in the recordings dir. A single node needs nothing installed.
//! * [`postgres::PgStore`] (`[store] url = "postgres://…"`): one PostgreSQL shared by every
//!   node, so any node's API sees every node's records. Writes go through a durable on-disk
//!   [`spool`] first, so a database outage never stops or slows a call and loses nothing.
//!
//! Writers call [`Store::submit`], which never blocks and never fails (a record that cannot
//! even be queued is logged whole, at error level). Readers (the HTTP API) use the async
//! queries; they fail with [`StoreError::Unavailable`] while the database is down.
//!
//! Every record carries the node name (`[node] name`, CONTRACT §10). Recording audio can be
//! shared too ([`objects`]): see docs/deploy.md.

pub mod file;
pub mod objects;
pub mod postgres;
pub mod spool;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::media::recorder::store::RecordingPaths;
use crate::media::recorder::{RecordingId, RecordingStatus, Sidecar};

pub use objects::SharedRecordings;

/// Failures of store reads (writes never fail: see [`Store::submit`]).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached right now; try again later.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Shared(#[from] objects::ObjectError),
}

/// What a writer hands over. Each becomes one row (PostgreSQL) or one line or file (embedded).
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// One per call, written when it ends (`call_id`, `start`, `end`, ... ).
    Cdr(Value),
    /// A tracked event (`call_id`, `name`, `properties`, `ts`).
    Event(Value),
    /// A call's transcript, written with its CDR.
    Transcript { call_id: String, transcript: Value },
    /// A recording's metadata, whenever its sidecar changes.
    Recording(Box<Sidecar>),
}

impl Record {
    pub fn kind(&self) -> &'static str {
        match self {
            Record::Cdr(_) => "cdr",
            Record::Event(_) => "event",
            Record::Transcript { .. } => "transcript",
            Record::Recording(_) => "recording",
        }
    }
}

/// Filters of `GET /v1/cdrs` and `GET /v1/events`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JournalQuery {
    pub limit: usize,
    pub call_id: Option<String>,
    /// Events only.
    pub name: Option<String>,
}

/// Filters of `GET /v1/recordings` (CONTRACT §5).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RecordingQuery {
    pub call_id: Option<String>,
    /// Inclusive lower bound on `started_at`.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `started_at`.
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
    /// Resume after this (started_at ms, id) sort key.
    pub after: Option<(i64, String)>,
    /// Lower-case text that the id, call id, from or to must contain (`q`, the console's
    /// search box).
    pub text: Option<String>,
}

impl RecordingQuery {
    /// Whether a recording matches `text` (case-insensitive substring).
    pub fn text_matches(&self, s: &Sidecar) -> bool {
        self.text.as_ref().is_none_or(|t| {
            [&s.id, &s.call_id, &s.from, &s.to]
                .iter()
                .any(|f| f.to_lowercase().contains(t.as_str()))
        })
    }
}

/// One page of recordings, newest first, and the cursor of the next page.
pub type RecordingPage = (Vec<Sidecar>, Option<String>);

/// How the store is doing, for logs, metrics and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreStatus {
    pub kind: &'static str,
    /// Bytes of records waiting for the database.
    pub backlog_bytes: u64,
    /// Records that could not even be queued (spool full or unwritable), since start.
    pub dropped: u64,
    pub connected: bool,
}

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    /// `[node] name`.
    fn node(&self) -> &str;

    /// Queues a record for writing. Never blocks (safe on tokio workers and the media path)
    /// and never fails: a record that cannot be queued is logged in full at error level.
    fn submit(&self, record: Record);

    async fn cdrs(&self, q: &JournalQuery) -> Result<Vec<Value>, StoreError>;
    async fn events(&self, q: &JournalQuery) -> Result<Vec<Value>, StoreError>;
    /// The transcript written with a call's CDR.
    async fn transcript(&self, call_id: &str) -> Result<Option<Value>, StoreError>;

    /// Recordings of every node this store can see, newest first.
    async fn recordings(&self, q: &RecordingQuery) -> Result<RecordingPage, StoreError>;
    async fn recording(&self, id: &RecordingId) -> Result<Option<Sidecar>, StoreError>;
    /// Forgets a recording: its metadata, its shared copy and the local files if they are here.
    async fn delete_recording(&self, id: &RecordingId) -> Result<(), StoreError>;

    /// Shared recording storage, when configured.
    fn shared(&self) -> Option<&SharedRecordings>;

    fn status(&self) -> StoreStatus;

    /// Waits (up to `timeout`) until everything submitted so far is written; true if it is.
    /// Used at shutdown so a node stopping with the database up leaves nothing behind.
    async fn flush(&self, timeout: std::time::Duration) -> bool;
}

/// Opens the store the config asks for, and starts its background work (the spool writer
/// and shipper, shared-storage uploads). `data_dir` holds the embedded files and the spool.
pub async fn open(config: &crate::config::Config) -> Result<Arc<dyn Store>, String> {
    let node = config.node.name.clone();
    let shared = SharedRecordings::from_config(&config.recordings)
        .map_err(|e| format!("recordings.shared_url: {e}"))?;
    match config.store.resolved_url() {
        None => Ok(Arc::new(file::FileStore::new(
            node,
            config.data_dir.clone(),
            config.recordings.dir.clone(),
            shared,
        ))),
        Some(url) => {
            let store = postgres::PgStore::start(postgres::PgOptions {
                url,
                node,
                data_dir: config.data_dir.clone(),
                recordings_dir: config.recordings.dir.clone(),
                spool_max_bytes: config.store.spool_max_mb.saturating_mul(1024 * 1024),
                timeout: std::time::Duration::from_millis(config.store.timeout_ms),
                ca_file: config.store.ca_file.clone(),
                shared,
            })
            .await
            .map_err(|e| format!("store: {e}"))?;
            Ok(store)
        }
    }
}

/// Adds `"node"` to a JSON object that lacks it, so every record names its node.
pub fn with_node(mut v: Value, node: &str) -> Value {
    if let Some(obj) = v.as_object_mut() {
        obj.entry("node")
            .or_insert_with(|| Value::String(node.to_string()));
    }
    v
}

/// The sidecar as the API shows it: while this node is still recording, the size fields come
/// from the growing `.part` file.
pub fn live_view(dir: &Path, mut s: Sidecar) -> Sidecar {
    /// Size of a canonical WAV header, to estimate a live recording's duration.
    const WAV_HEADER: u64 = 44;
    if s.status == RecordingStatus::Recording {
        if let Some(id) = RecordingId::parse(&s.id) {
            if let Ok(m) = std::fs::metadata(RecordingPaths::new(dir, &id).part) {
                s.bytes = m.len();
                let per_ms = u64::from(s.channels) * 2 * u64::from(s.sample_rate) / 1000;
                s.duration_ms = m.len().saturating_sub(WAV_HEADER) / per_ms.max(1);
            }
        }
    }
    s
}

/// Cursors are opaque to clients: hex of `<started_at ms>|<id>`, the sort key of the last item
/// returned. Resuming "after a key" keeps pages stable while recordings come and go.
pub fn encode_cursor(key: &(i64, String)) -> String {
    hex::encode(format!("{}|{}", key.0, key.1))
}

/// The sort key behind a cursor; `None` for anything this API did not hand out.
pub fn decode_cursor(c: &str) -> Option<(i64, String)> {
    let raw = hex::decode(c).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (ms, id) = text.split_once('|')?;
    let ms = ms.parse().ok()?;
    let id = RecordingId::parse(id)?;
    Some((ms, id.to_string()))
}

/// (started_at ms, id): recordings sort on it, newest first.
pub fn sort_key(s: &Sidecar) -> (i64, String) {
    let ms = s
        .started_at_utc()
        .map_or(i64::MIN, |t| t.timestamp_millis());
    (ms, s.id.clone())
}

/// Filters, sorts newest first and cuts one page; returns the page and the next cursor.
pub fn page(items: Vec<Sidecar>, q: &RecordingQuery) -> RecordingPage {
    let mut items: Vec<_> = items
        .into_iter()
        .filter(|s| q.call_id.as_ref().is_none_or(|c| &s.call_id == c))
        .filter(|s| q.text_matches(s))
        .filter(|s| {
            let t = s.started_at_utc();
            q.since.is_none_or(|since| t.is_some_and(|t| t >= since))
                && q.until.is_none_or(|until| t.is_some_and(|t| t < until))
        })
        .map(|s| (sort_key(&s), s))
        .filter(|(k, _)| q.after.as_ref().is_none_or(|after| k < after))
        .collect();
    items.sort_by(|a, b| b.0.cmp(&a.0));
    let more = items.len() > q.limit;
    items.truncate(q.limit);
    let next = more
        .then(|| items.last().map(|(k, _)| encode_cursor(k)))
        .flatten();
    (items.into_iter().map(|(_, s)| s).collect(), next)
}

/// Copies finished recordings to shared storage, retrying until each is verified, then
/// records where the copy is (in the local sidecar and through `submit`). Runs on tokio; the
/// file reads and writes it does are async or `spawn_blocking`.
pub(crate) struct Uploader {
    tx: tokio::sync::mpsc::UnboundedSender<Sidecar>,
}

impl Uploader {
    pub(crate) fn start(
        shared: SharedRecordings,
        dir: PathBuf,
        submit: Arc<dyn Fn(Record) + Send + Sync>,
    ) -> Uploader {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sidecar>();
        tokio::spawn(async move {
            while let Some(s) = rx.recv().await {
                let shared = shared.clone();
                let dir = dir.clone();
                let submit = submit.clone();
                // One at a time keeps the disk and network use of a busy node modest.
                upload_until_done(&shared, &dir, s, submit.as_ref()).await;
            }
        });
        Uploader { tx }
    }

    /// Queues a sidecar if its recording is finished and not yet shared.
    pub(crate) fn offer(&self, s: &Sidecar) {
        let finished = matches!(
            s.status,
            RecordingStatus::Complete | RecordingStatus::Recovered
        );
        if finished && s.shared_key.is_none() && s.sha256.is_some() {
            let _ = self.tx.send(s.clone());
        }
    }
}

async fn upload_until_done(
    shared: &SharedRecordings,
    dir: &Path,
    mut s: Sidecar,
    submit: &(dyn Fn(Record) + Send + Sync),
) {
    let (Some(id), Some(sha)) = (RecordingId::parse(&s.id), s.sha256.clone()) else {
        return;
    };
    let wav = RecordingPaths::new(dir, &id).wav;
    let mut delay = std::time::Duration::from_millis(500);
    for attempt in 1u32.. {
        match shared.upload(&wav, &id, &sha).await {
            Ok(key) => {
                tracing::info!(recording = %id, %key, attempt, "recording copied to shared storage and verified");
                metrics::counter!("voxgate_recordings_shared_total").increment(1);
                s.shared_key = Some(key);
                let d = dir.to_path_buf();
                let (sid, side) = (id.clone(), s.clone());
                let written = tokio::task::spawn_blocking(move || {
                    // Only if the recording still exists here (it may have been deleted).
                    if RecordingPaths::new(&d, &sid).sidecar.exists() {
                        crate::media::recorder::store::write_sidecar(&d, &sid, &side)
                    } else {
                        Ok(())
                    }
                })
                .await;
                if let Ok(Err(e)) = written {
                    tracing::warn!(recording = %id, error = %e, "could not note the shared copy in the sidecar");
                }
                submit(Record::Recording(Box::new(s)));
                return;
            }
            Err(e) => {
                metrics::counter!("voxgate_recording_share_errors_total").increment(1);
                if !wav.exists() {
                    tracing::warn!(recording = %id, "recording deleted before it could be shared");
                    return;
                }
                tracing::warn!(recording = %id, attempt, error = %e, "copy to shared storage failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(60));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::recorder::{ChannelMode, RecordingMeta};
    use chrono::TimeZone;

    fn rec(call: &str, secs: i64) -> Sidecar {
        let at = Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap();
        let id = RecordingId::generate(at);
        let meta = RecordingMeta {
            call_id: call.into(),
            ..Default::default()
        };
        Sidecar::new_recording(id.as_str(), &meta, at, ChannelMode::Stereo)
    }

    fn q(limit: usize) -> RecordingQuery {
        RecordingQuery {
            limit,
            ..Default::default()
        }
    }

    #[test]
    fn pages_are_newest_first_and_stable() {
        let items: Vec<_> = (0..7)
            .map(|i| rec(if i % 2 == 0 { "a" } else { "b" }, i))
            .collect();
        let mut query = q(3);
        let (p1, c1) = page(items.clone(), &query);
        assert_eq!(
            p1.iter().map(|s| &s.id).collect::<Vec<_>>(),
            [&items[6].id, &items[5].id, &items[4].id]
        );
        // A newer recording arriving between pages does not shift the next page.
        let mut grown = items.clone();
        grown.push(rec("a", 100));
        query.after = Some(decode_cursor(&c1.unwrap()).unwrap());
        let (p2, c2) = page(grown.clone(), &query);
        assert_eq!(p2[0].id, items[3].id);
        query.after = Some(decode_cursor(&c2.unwrap()).unwrap());
        let (p3, c3) = page(grown, &query);
        assert_eq!(p3.len(), 1);
        assert_eq!(p3[0].id, items[0].id);
        assert_eq!(c3, None);
    }

    #[test]
    fn filters_by_call_and_time() {
        let items: Vec<_> = (0..6)
            .map(|i| rec(if i < 3 { "a" } else { "b" }, i * 60))
            .collect();
        let mut query = q(100);
        query.since = items[1].started_at_utc();
        query.until = items[4].started_at_utc();
        let (p, _) = page(items.clone(), &query);
        assert_eq!(p.len(), 3, "since inclusive, until exclusive");
        let mut query = q(100);
        query.call_id = Some("a".into());
        let (p, _) = page(items, &query);
        assert!(p.iter().all(|s| s.call_id == "a") && p.len() == 3);
    }

    #[test]
    fn text_search_matches_id_call_and_parties() {
        let mut items: Vec<_> = (0..4).map(|i| rec(&format!("call-{i}"), i)).collect();
        items[1].from = "+3225550101".into();
        items[2].to = "Sales-Line".into();
        let search = |t: &str| {
            let mut query = q(100);
            query.text = Some(t.into());
            page(items.clone(), &query).0
        };
        let p = search("5550101");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].call_id, "call-1");
        // `text` arrives lower-cased (ListQuery); the fields are compared case-insensitively.
        assert_eq!(search("sales")[0].call_id, "call-2");
        assert_eq!(search("call-3")[0].call_id, "call-3");
        let id_piece = items[0].id[items[0].id.len() - 8..].to_string();
        assert_eq!(search(&id_piece)[0].call_id, "call-0");
        assert!(search("nobody").is_empty());
        assert_eq!(page(items.clone(), &q(100)).0.len(), 4);
    }

    #[test]
    fn cursors_round_trip_and_reject_junk() {
        let s = rec("a", 1);
        let k = sort_key(&s);
        assert_eq!(decode_cursor(&encode_cursor(&k)), Some(k));
        for bad in ["zz", "2e2e2f", &hex::encode("12|../etc")] {
            assert_eq!(decode_cursor(bad), None, "{bad}");
        }
    }

    #[test]
    fn node_is_added_once() {
        let v = with_node(serde_json::json!({"a": 1}), "n1");
        assert_eq!(v["node"], "n1");
        let v = with_node(serde_json::json!({"node": "x"}), "n1");
        assert_eq!(v["node"], "x");
    }
}
