//! The shared PostgreSQL store (`[store] url = "postgres://…"`), on tokio-postgres with
//! rustls (ring). Three moving parts:
//!
//! * `submit` hands the record to the spool writer thread (a bounded channel, `try_send`):
//!   nothing on the caller's side waits for a disk or a socket.
//! * The spool writer thread appends batches to the on-disk [`Spool`] (one fsync per batch)
//!   and wakes the shipper.
//! * The shipper task reads the oldest spool segment and commits its records in one
//!   transaction per batch (`ON CONFLICT DO NOTHING` on the record's uid, so a replay after a
//!   crash is harmless), then frees the segment. While the database is down it retries with
//!   backoff; the records wait on disk.
//!
//! Reads (the HTTP API) use a second connection, opened on demand and bounded by
//! `[store] timeout_ms`; while the database is down they fail with `Unavailable`.
//! Schema migrations live in `src/store/migrations/` and are applied at the first connection,
//! under an advisory lock so nodes starting together do not race.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{Mutex, Notify};
use tokio_postgres::{Client, Statement};

use super::spool::{Spool, SpoolError};
use super::{
    live_view, with_node, JournalQuery, Record, RecordingPage, RecordingQuery, SharedRecordings,
    Store, StoreError, StoreStatus, Uploader,
};
use crate::media::recorder::sidecar::parse_rfc3339;
use crate::media::recorder::store as rec_store;
use crate::media::recorder::{RecordingId, RecordingStatus, Sidecar};

/// The migrations, in order. Never edit one that has shipped: add the next.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("migrations/0001_init.sql")),
    (
        2,
        "flow_tables",
        include_str!("migrations/0002_flow_tables.sql"),
    ),
];
/// `pg_advisory_lock` key held while migrating ("voxgate" in ASCII, more or less).
const MIGRATION_LOCK: i64 = 0x0076_6f78_6761_7465;
/// Records per transaction, and bytes of spool read per batch.
const BATCH_RECORDS: usize = 500;
const BATCH_BYTES: usize = 512 * 1024;
/// Records waiting between `submit` and the spool writer thread.
const QUEUE_DEPTH: usize = 65_536;

/// Checks a `[store] url`: a postgres:// URL tokio-postgres understands.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(
            "must be a postgres:// URL like postgres://user:pass@127.0.0.1:5432/voxgate".into(),
        );
    }
    tokio_postgres::Config::from_str(url)
        .map(|_| ())
        .map_err(|e| format!("not a usable PostgreSQL URL: {e}"))
}

/// The URL with its password replaced, for logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "postgres://(unparsable)".into(),
    }
}

/// Settings of [`PgStore::start`].
pub struct PgOptions {
    pub url: String,
    pub node: String,
    pub data_dir: PathBuf,
    pub recordings_dir: PathBuf,
    pub spool_max_bytes: u64,
    pub timeout: Duration,
    pub ca_file: Option<PathBuf>,
    pub shared: Option<SharedRecordings>,
}

#[derive(Debug, thiserror::Error)]
pub enum PgStartError {
    #[error("{0}")]
    Url(String),
    #[error("TLS setup: {0}")]
    Tls(String),
    #[error("{0}")]
    Spool(#[from] SpoolError),
    #[error("cannot start the spool writer thread: {0}")]
    Thread(std::io::Error),
}

/// One record on its way to the database, as spooled (one JSON line).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
struct Envelope {
    uid: String,
    kind: String,
    node: String,
    /// When it was submitted (RFC 3339).
    at: String,
    data: Value,
}

/// Counters shared by the submit side, the writer thread and the shipper.
#[derive(Default)]
struct Counters {
    submitted: AtomicU64,
    spooled: AtomicU64,
    dropped: AtomicU64,
    shipped: AtomicU64,
    connected: AtomicBool,
}

/// The part of the store that queues records; shared with the uploader.
struct Submitter {
    node: String,
    tx: mpsc::SyncSender<Envelope>,
    counters: Arc<Counters>,
}

impl Submitter {
    fn submit(&self, record: Record) {
        let kind = record.kind().to_string();
        let data = match record {
            Record::Cdr(v) | Record::Event(v) => with_node(v, &self.node),
            Record::Transcript {
                call_id,
                transcript,
            } => {
                serde_json::json!({"call_id": call_id, "node": self.node, "transcript": transcript})
            }
            Record::Recording(mut s) => {
                if s.node.is_empty() {
                    s.node = self.node.clone();
                }
                serde_json::to_value(&s).unwrap_or(Value::Null)
            }
        };
        let env = Envelope {
            uid: new_uid(),
            kind,
            node: self.node.clone(),
            at: Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            data,
        };
        self.counters.submitted.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.tx.try_send(env) {
            let env = match e {
                mpsc::TrySendError::Full(env) | mpsc::TrySendError::Disconnected(env) => env,
            };
            self.counters.dropped.fetch_add(1, Ordering::SeqCst);
            metrics::counter!("voxgate_store_records_dropped_total").increment(1);
            let line = serde_json::to_string(&env).unwrap_or_default();
            tracing::error!(record = %line, "store queue full: record not queued (kept in this log line)");
        }
    }
}

/// 128 random bits, hex.
fn new_uid() -> String {
    use rand::Rng;
    let v: u128 = rand::thread_rng().gen();
    format!("{v:032x}")
}

pub struct PgStore {
    submitter: Arc<Submitter>,
    recordings_dir: PathBuf,
    shared: Option<SharedRecordings>,
    uploader: Option<Uploader>,
    spool: Arc<Spool>,
    reader: ReaderDb,
    wake: Arc<Notify>,
}

impl PgStore {
    /// Opens the spool, starts the writer thread and the shipper, and offers the local
    /// recordings that are not fully recorded in the store yet (recovered after a crash,
    /// failed, or not yet copied to shared storage). Does not wait for the database: a node
    /// starts and takes calls while it is down.
    pub async fn start(o: PgOptions) -> Result<Arc<dyn Store>, PgStartError> {
        check_url(&o.url).map_err(PgStartError::Url)?;
        let mut config = tokio_postgres::Config::from_str(&o.url)
            .map_err(|e| PgStartError::Url(e.to_string()))?;
        config.connect_timeout(o.timeout);
        if config.get_application_name().is_none() {
            config.application_name(format!("voxgate {}", o.node));
        }
        let tls = make_tls(o.ca_file.as_deref()).map_err(PgStartError::Tls)?;
        let spool = Arc::new(Spool::open(&o.data_dir.join("spool"), o.spool_max_bytes)?);
        let counters = Arc::new(Counters::default());
        let wake = Arc::new(Notify::new());
        let (tx, rx) = mpsc::sync_channel::<Envelope>(QUEUE_DEPTH);
        {
            let spool = spool.clone();
            let counters = counters.clone();
            let wake = wake.clone();
            std::thread::Builder::new()
                .name("store-spool".into())
                .spawn(move || spool_writer(rx, &spool, &counters, &wake))
                .map_err(PgStartError::Thread)?;
        }
        let db = Db {
            config,
            tls,
            timeout: o.timeout,
        };
        tracing::info!(url = %redact(&o.url), node = %o.node, spool_bytes = spool.backlog(), "store: PostgreSQL");
        tokio::spawn(ship_forever(
            db.clone(),
            spool.clone(),
            counters.clone(),
            wake.clone(),
        ));
        let submitter = Arc::new(Submitter {
            node: o.node.clone(),
            tx,
            counters,
        });
        let uploader = o.shared.clone().map(|s| {
            let sub = submitter.clone();
            Uploader::start(
                s,
                o.recordings_dir.clone(),
                Arc::new(move |r| sub.submit(r)),
            )
        });
        let store = Arc::new(PgStore {
            submitter,
            recordings_dir: o.recordings_dir.clone(),
            shared: o.shared,
            uploader,
            spool,
            reader: db.with_shared_client(),
            wake,
        });
        let me: Arc<dyn Store> = store.clone();
        tokio::spawn(reconcile(
            me.clone(),
            o.recordings_dir,
            store.shared.is_some(),
        ));
        Ok(me)
    }
}

/// Re-offers the local recordings the store may not have in their final state.
async fn reconcile(store: Arc<dyn Store>, dir: PathBuf, shared: bool) {
    let listed = tokio::task::spawn_blocking(move || rec_store::list(&dir)).await;
    let Ok(Ok(all)) = listed else {
        return;
    };
    let mut n = 0;
    for s in all {
        let pending = match s.status {
            RecordingStatus::Recording => false, // recovery runs first; a live one is ours
            RecordingStatus::Complete => shared && s.shared_key.is_none(),
            RecordingStatus::Recovered | RecordingStatus::Failed => {
                s.shared_key.is_none() || !shared
            }
        };
        if pending {
            store.submit(Record::Recording(Box::new(s)));
            n += 1;
        }
    }
    if n > 0 {
        tracing::info!(recordings = n, "store: local recordings re-offered");
    }
}

fn make_tls(ca_file: Option<&Path>) -> Result<tokio_postgres_rustls::MakeRustlsConnect, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(p) = ca_file {
        let certs = CertificateDer::pem_file_iter(p)
            .map_err(|e| format!("store.ca_file {}: {e}", p.display()))?;
        for c in certs {
            let c = c.map_err(|e| format!("store.ca_file {}: {e}", p.display()))?;
            roots
                .add(c)
                .map_err(|e| format!("store.ca_file {}: {e}", p.display()))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(cfg))
}

/// The writer thread: spool → disk, in batches, then wake the shipper.
fn spool_writer(rx: mpsc::Receiver<Envelope>, spool: &Spool, counters: &Counters, wake: &Notify) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while batch.len() < 1000 {
            match rx.try_recv() {
                Ok(e) => batch.push(e),
                Err(_) => break,
            }
        }
        let mut buf = Vec::with_capacity(batch.len() * 512);
        for e in &batch {
            if serde_json::to_writer(&mut buf, e).is_ok() {
                buf.push(b'\n');
            }
        }
        let n = batch.len() as u64;
        match spool.append(&buf) {
            Ok(()) => {
                counters.spooled.fetch_add(n, Ordering::SeqCst);
            }
            Err(e) => {
                counters.dropped.fetch_add(n, Ordering::SeqCst);
                metrics::counter!("voxgate_store_records_dropped_total").increment(n);
                for env in &batch {
                    let line = serde_json::to_string(env).unwrap_or_default();
                    tracing::error!(error = %e, record = %line, "record not spooled (kept in this log line)");
                }
            }
        }
        metrics::gauge!("voxgate_store_backlog_bytes").set(spool.backlog() as f64);
        wake.notify_one();
    }
}

/// Connection settings, plus (for readers) one shared client.
#[derive(Clone)]
struct Db {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    timeout: Duration,
}

impl Db {
    fn with_shared_client(self) -> ReaderDb {
        ReaderDb {
            db: self,
            client: Mutex::new(None),
            migrated: AtomicBool::new(false),
        }
    }

    /// Connects (bounded by the timeout) and makes sure the schema is current.
    async fn connect(&self) -> Result<Client, StoreError> {
        let connecting = self.config.connect(self.tls.clone());
        let (client, conn) = match tokio::time::timeout(self.timeout, connecting).await {
            Ok(Ok(pair)) => pair,
            Ok(Err(e)) => return Err(StoreError::Unavailable(e.to_string())),
            Err(_) => {
                return Err(StoreError::Unavailable(format!(
                    "no connection within {} ms",
                    self.timeout.as_millis()
                )))
            }
        };
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "database connection ended");
            }
        });
        Ok(client)
    }

    async fn timed<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(db_err(e)),
            Err(_) => Err(StoreError::Unavailable(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }
}

fn db_err(e: tokio_postgres::Error) -> StoreError {
    if e.is_closed() || e.as_db_error().is_none() {
        StoreError::Unavailable(e.to_string())
    } else {
        StoreError::Database(e.to_string())
    }
}

/// A client for another part of the gateway (the flow's tables: integrations/tables/pg.rs),
/// connected as the store connects (TLS, `[store] timeout_ms`) and with the schema migrated.
pub(crate) async fn connect_migrated(
    url: &str,
    ca_file: Option<&Path>,
    timeout: Duration,
    application_name: &str,
) -> Result<Client, StoreError> {
    let mut config =
        tokio_postgres::Config::from_str(url).map_err(|e| StoreError::Database(e.to_string()))?;
    config.connect_timeout(timeout);
    if config.get_application_name().is_none() {
        config.application_name(application_name);
    }
    let tls = make_tls(ca_file).map_err(StoreError::Io)?;
    let db = Db {
        config,
        tls,
        timeout,
    };
    let mut client = db.connect().await?;
    db.timed(migrate(&mut client)).await?;
    Ok(client)
}

/// Applies the migrations this database lacks, under an advisory lock.
async fn migrate(client: &mut Client) -> Result<(), tokio_postgres::Error> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        client
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS voxgate_migrations (
                    version integer PRIMARY KEY,
                    name text NOT NULL,
                    applied_at timestamptz NOT NULL DEFAULT now())",
            )
            .await?;
        for (version, name, sql) in MIGRATIONS {
            let done = client
                .query_opt(
                    "SELECT 1 FROM voxgate_migrations WHERE version = $1",
                    &[version],
                )
                .await?
                .is_some();
            if done {
                continue;
            }
            let tx = client.transaction().await?;
            tx.batch_execute(sql).await?;
            tx.execute(
                "INSERT INTO voxgate_migrations (version, name) VALUES ($1, $2)",
                &[version, name],
            )
            .await?;
            tx.commit().await?;
            tracing::info!(version, name, "store: migration applied");
        }
        Ok(())
    }
    .await;
    let unlock = client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await;
    result.and(unlock.map(|_| ()))
}

/// The read side: one client shared by every API request, reconnected when it drops.
struct ReaderDb {
    db: Db,
    client: Mutex<Option<Arc<Client>>>,
    migrated: AtomicBool,
}

impl ReaderDb {
    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        let mut g = self.client.lock().await;
        if let Some(c) = g.as_ref() {
            if !c.is_closed() {
                return Ok(c.clone());
            }
        }
        let mut c = self.db.connect().await?;
        if !self.migrated.load(Ordering::SeqCst) {
            self.db.timed(migrate(&mut c)).await?;
            self.migrated.store(true, Ordering::SeqCst);
        }
        let c = Arc::new(c);
        *g = Some(c.clone());
        Ok(c)
    }

    async fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<tokio_postgres::Row>, StoreError> {
        let c = self.client().await?;
        self.db.timed(c.query(sql, params)).await
    }
}

/// The shipper's own connection and statements.
struct Shipper {
    client: Client,
    cdr: Statement,
    event: Statement,
    transcript: Statement,
    recording: Statement,
}

impl Shipper {
    async fn open(db: &Db) -> Result<Shipper, StoreError> {
        let mut client = db.connect().await?;
        db.timed(migrate(&mut client)).await?;
        let prep = |sql: &'static str| {
            let c = &client;
            async move { c.prepare(sql).await }
        };
        let cdr = db
            .timed(prep(
                "INSERT INTO cdrs (uid, node, call_id, started_at, ended_at, body)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (uid) DO NOTHING",
            ))
            .await?;
        let event = db
            .timed(prep(
                "INSERT INTO events (uid, node, call_id, name, at, body)
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (uid) DO NOTHING",
            ))
            .await?;
        let transcript = db
            .timed(prep(
                "INSERT INTO transcripts (uid, node, call_id, body)
                 VALUES ($1, $2, $3, $4) ON CONFLICT (uid) DO NOTHING",
            ))
            .await?;
        let recording = db
            .timed(prep(
                "INSERT INTO recordings (id, node, call_id, started_at, status, shared_key, body)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (id) DO UPDATE SET
                    node = EXCLUDED.node, call_id = EXCLUDED.call_id,
                    started_at = EXCLUDED.started_at, status = EXCLUDED.status,
                    shared_key = COALESCE(EXCLUDED.shared_key, recordings.shared_key),
                    body = CASE WHEN EXCLUDED.shared_key IS NULL AND recordings.shared_key IS NOT NULL
                                THEN jsonb_set(EXCLUDED.body, '{shared_key}', to_jsonb(recordings.shared_key))
                                ELSE EXCLUDED.body END,
                    updated_at = now()
                 WHERE recordings.deleted_at IS NULL",
            ))
            .await?;
        Ok(Shipper {
            client,
            cdr,
            event,
            transcript,
            recording,
        })
    }

    /// Commits a batch in one transaction.
    async fn ship(&mut self, batch: &[Envelope]) -> Result<(), tokio_postgres::Error> {
        let tx = self.client.transaction().await?;
        for e in batch {
            let str_of = |k: &str| e.data.get(k).and_then(Value::as_str).map(str::to_string);
            let time_of = |k: &str| str_of(k).as_deref().and_then(parse_rfc3339);
            let at = parse_rfc3339(&e.at).unwrap_or_else(Utc::now);
            match e.kind.as_str() {
                "cdr" => {
                    let call_id = str_of("call_id").unwrap_or_default();
                    tx.execute(
                        &self.cdr,
                        &[
                            &e.uid,
                            &e.node,
                            &call_id,
                            &time_of("start"),
                            &time_of("end").or(Some(at)),
                            &e.data,
                        ],
                    )
                    .await?;
                }
                "event" => {
                    let name = str_of("name").unwrap_or_default();
                    let when = time_of("ts").unwrap_or(at);
                    tx.execute(
                        &self.event,
                        &[&e.uid, &e.node, &str_of("call_id"), &name, &when, &e.data],
                    )
                    .await?;
                }
                "transcript" => {
                    let call_id = str_of("call_id").unwrap_or_default();
                    let body = e.data.get("transcript").cloned().unwrap_or(Value::Null);
                    tx.execute(&self.transcript, &[&e.uid, &e.node, &call_id, &body])
                        .await?;
                }
                "recording" => {
                    let Ok(s) = serde_json::from_value::<Sidecar>(e.data.clone()) else {
                        tracing::warn!(uid = %e.uid, "spooled recording metadata unreadable; skipped");
                        continue;
                    };
                    let started: DateTime<Utc> = s.started_at_utc().unwrap_or(at);
                    let node = if s.node.is_empty() { &e.node } else { &s.node };
                    tx.execute(
                        &self.recording,
                        &[
                            &s.id,
                            node,
                            &s.call_id,
                            &started,
                            &s.status.as_str(),
                            &s.shared_key,
                            &e.data,
                        ],
                    )
                    .await?;
                }
                other => {
                    tracing::warn!(kind = other, uid = %e.uid, "unknown spooled record kind; skipped")
                }
            }
        }
        tx.commit().await
    }
}

/// Ships the spool to the database for as long as the process lives.
async fn ship_forever(db: Db, spool: Arc<Spool>, counters: Arc<Counters>, wake: Arc<Notify>) {
    let mut shipper: Option<Shipper> = None;
    let mut backoff = Duration::from_millis(250);
    let mut outage_logged = false;
    // Where we are in the oldest segment.
    let mut cursor: Option<(u64, u64)> = None;
    loop {
        let sp = spool.clone();
        let segs = match tokio::task::spawn_blocking(move || sp.segments()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "spool unreadable");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(_) => return,
        };
        let Some(&seq) = segs.first() else {
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            continue;
        };
        let offset = match cursor {
            Some((s, o)) if s == seq => o,
            _ => 0,
        };
        let sp = spool.clone();
        let chunk =
            match tokio::task::spawn_blocking(move || sp.read(seq, offset, BATCH_BYTES)).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "spool unreadable");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(_) => return,
            };
        if chunk.is_empty() {
            // Nothing new in this segment. A closed one is finished (a torn last line from a
            // crash is dropped); the open one waits for more.
            let closed = seq < spool.active_seq();
            let sp = spool.clone();
            let upto = if closed { u64::MAX } else { offset };
            let gone = tokio::task::spawn_blocking(move || sp.consumed(seq, upto))
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or(false);
            metrics::gauge!("voxgate_store_backlog_bytes").set(spool.backlog() as f64);
            if !gone {
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            }
            continue;
        }
        let mut records = Vec::new();
        for line in chunk.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match serde_json::from_slice::<Envelope>(line) {
                Ok(e) => records.push(e),
                Err(e) => tracing::warn!(error = %e, segment = seq, "malformed spool line skipped"),
            }
        }
        if shipper.is_none() {
            match Shipper::open(&db).await {
                Ok(s) => {
                    if outage_logged {
                        tracing::info!(
                            backlog_bytes = spool.backlog(),
                            "store: database is back; writing the queued records"
                        );
                    }
                    shipper = Some(s);
                }
                Err(e) => {
                    counters.connected.store(false, Ordering::SeqCst);
                    metrics::gauge!("voxgate_store_up").set(0.0);
                    if !outage_logged {
                        tracing::warn!(error = %e, backlog_bytes = spool.backlog(), "store: database unavailable; records are kept in the spool");
                        outage_logged = true;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let Some(sh) = shipper.as_mut() else {
            continue;
        };
        let mut ok = true;
        for batch in records.chunks(BATCH_RECORDS) {
            if let Err(e) = db.timed(sh.ship(batch)).await {
                ok = false;
                if !outage_logged {
                    tracing::warn!(error = %e, backlog_bytes = spool.backlog(), "store: write failed; records are kept in the spool");
                    outage_logged = true;
                }
                break;
            }
        }
        if !ok {
            // Start over from this chunk on a fresh connection: committed batches are ignored
            // the second time (their uids are known).
            shipper = None;
            counters.connected.store(false, Ordering::SeqCst);
            metrics::gauge!("voxgate_store_up").set(0.0);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
            continue;
        }
        backoff = Duration::from_millis(250);
        outage_logged = false;
        counters.connected.store(true, Ordering::SeqCst);
        metrics::gauge!("voxgate_store_up").set(1.0);
        counters
            .shipped
            .fetch_add(records.len() as u64, Ordering::SeqCst);
        metrics::counter!("voxgate_store_records_written_total").increment(records.len() as u64);
        let next = offset + chunk.len() as u64;
        cursor = Some((seq, next));
        let sp = spool.clone();
        let _ = tokio::task::spawn_blocking(move || sp.consumed(seq, next)).await;
        metrics::gauge!("voxgate_store_backlog_bytes").set(spool.backlog() as f64);
    }
}

fn bodies(rows: Vec<tokio_postgres::Row>) -> Vec<Value> {
    rows.into_iter()
        .filter_map(|r| r.try_get::<_, Value>(0).ok())
        .collect()
}

impl PgStore {
    fn sidecar_of(&self, body: Value) -> Option<Sidecar> {
        let s: Sidecar = serde_json::from_value(body).ok()?;
        Some(if s.node == self.submitter.node {
            live_view(&self.recordings_dir, s)
        } else {
            s
        })
    }
}

#[async_trait::async_trait]
impl Store for PgStore {
    fn node(&self) -> &str {
        &self.submitter.node
    }

    fn submit(&self, record: Record) {
        if let (Some(u), Record::Recording(s)) = (&self.uploader, &record) {
            u.offer(s);
        }
        self.submitter.submit(record);
    }

    async fn cdrs(&self, q: &JournalQuery) -> Result<Vec<Value>, StoreError> {
        let limit = q.limit as i64;
        let rows = self
            .reader
            .query(
                "SELECT body FROM cdrs WHERE ($1::text IS NULL OR call_id = $1)
                 ORDER BY ended_at DESC NULLS LAST, seq DESC LIMIT $2",
                &[&q.call_id, &limit],
            )
            .await?;
        Ok(bodies(rows))
    }

    async fn events(&self, q: &JournalQuery) -> Result<Vec<Value>, StoreError> {
        let limit = q.limit as i64;
        let rows = self
            .reader
            .query(
                "SELECT body FROM events
                 WHERE ($1::text IS NULL OR call_id = $1) AND ($2::text IS NULL OR name = $2)
                 ORDER BY at DESC, seq DESC LIMIT $3",
                &[&q.call_id, &q.name, &limit],
            )
            .await?;
        Ok(bodies(rows))
    }

    async fn transcript(&self, call_id: &str) -> Result<Option<Value>, StoreError> {
        let rows = self
            .reader
            .query(
                "SELECT body FROM transcripts WHERE call_id = $1 ORDER BY seq DESC LIMIT 1",
                &[&call_id],
            )
            .await?;
        Ok(bodies(rows).into_iter().next())
    }

    async fn recordings(&self, q: &RecordingQuery) -> Result<RecordingPage, StoreError> {
        let after_at = q
            .after
            .as_ref()
            .and_then(|(ms, _)| DateTime::<Utc>::from_timestamp_millis(*ms));
        let after_id = q.after.as_ref().map(|(_, id)| id.clone());
        let limit = q.limit as i64 + 1;
        // `q`: a case-insensitive substring of id, call id, from or to (LIKE wildcards escaped).
        let like = q.text.as_ref().map(|t| {
            let escaped = t
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            format!("%{escaped}%")
        });
        let rows = self
            .reader
            .query(
                "SELECT body FROM recordings
                 WHERE deleted_at IS NULL
                   AND ($1::text IS NULL OR call_id = $1)
                   AND ($2::timestamptz IS NULL OR started_at >= $2)
                   AND ($3::timestamptz IS NULL OR started_at < $3)
                   AND ($4::timestamptz IS NULL OR (started_at, id) < ($4, $5::text))
                   AND ($7::text IS NULL OR id ILIKE $7 OR call_id ILIKE $7
                        OR body->>'from' ILIKE $7 OR body->>'to' ILIKE $7)
                 ORDER BY started_at DESC, id DESC LIMIT $6",
                &[
                    &q.call_id, &q.since, &q.until, &after_at, &after_id, &limit, &like,
                ],
            )
            .await?;
        let mut items: Vec<Sidecar> = bodies(rows)
            .into_iter()
            .filter_map(|b| self.sidecar_of(b))
            .collect();
        let more = items.len() > q.limit;
        items.truncate(q.limit);
        let next = more
            .then(|| {
                items
                    .last()
                    .map(|s| super::encode_cursor(&super::sort_key(s)))
            })
            .flatten();
        Ok((items, next))
    }

    async fn recording(&self, id: &RecordingId) -> Result<Option<Sidecar>, StoreError> {
        let rows = self
            .reader
            .query(
                "SELECT body FROM recordings WHERE id = $1 AND deleted_at IS NULL",
                &[&id.as_str()],
            )
            .await?;
        Ok(bodies(rows)
            .into_iter()
            .next()
            .and_then(|b| self.sidecar_of(b)))
    }

    async fn delete_recording(&self, id: &RecordingId) -> Result<(), StoreError> {
        let rows = self
            .reader
            .query(
                "UPDATE recordings SET deleted_at = now()
                 WHERE id = $1 AND deleted_at IS NULL RETURNING shared_key",
                &[&id.as_str()],
            )
            .await?;
        let key: Option<String> = rows.first().and_then(|r| r.try_get(0).ok()).flatten();
        if let (Some(shared), Some(key)) = (&self.shared, key) {
            shared.delete(&key).await?;
        }
        let dir = self.recordings_dir.clone();
        let rid = id.clone();
        tokio::task::spawn_blocking(move || rec_store::delete(&dir, &rid))
            .await
            .map_err(|e| StoreError::Io(e.to_string()))?
            .map_err(|e| StoreError::Io(e.to_string()))
    }

    fn shared(&self) -> Option<&SharedRecordings> {
        self.shared.as_ref()
    }

    fn status(&self) -> StoreStatus {
        let c = &self.submitter.counters;
        StoreStatus {
            kind: "postgres",
            backlog_bytes: self.spool.backlog(),
            dropped: c.dropped.load(Ordering::SeqCst),
            connected: c.connected.load(Ordering::SeqCst),
        }
    }

    async fn flush(&self, timeout: Duration) -> bool {
        let c = &self.submitter.counters;
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let queued = c.submitted.load(Ordering::SeqCst)
                > c.spooled.load(Ordering::SeqCst) + c.dropped.load(Ordering::SeqCst);
            if !queued && self.spool.backlog() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            self.wake.notify_one();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_redacted() {
        assert!(check_url("postgres://u:p@127.0.0.1:5432/voxgate").is_ok());
        assert!(check_url("postgresql://127.0.0.1/db?sslmode=require").is_ok());
        assert!(check_url("mysql://x").is_err());
        assert!(check_url("postgres://h/db?sslmode=bogus").is_err());
        let r = redact("postgres://voxgate:s3cret@db:5432/voxgate");
        assert!(!r.contains("s3cret") && r.contains("***"), "{r}");
    }

    #[test]
    fn envelopes_round_trip_as_one_line() {
        let e = Envelope {
            uid: new_uid(),
            kind: "cdr".into(),
            node: "a".into(),
            at: "2024-01-01T00:00:00.000Z".into(),
            data: serde_json::json!({"call_id": "x\ny"}),
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(serde_json::from_str::<Envelope>(&line).unwrap(), e);
        assert_eq!(e.uid.len(), 32);
        assert_ne!(new_uid(), new_uid());
    }
}
