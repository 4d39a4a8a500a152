//! The `table` step's tables: an embedded SQLite database (`<data_dir>/tables.sqlite3`,
//! rusqlite with the bundled SQLite), or, with `[store] url`, the shared PostgreSQL ([`pg`]:
//! every node sees the same rows). Seeded from `<tables.dir>/<name>.csv` at start-up and
//! managed over `/v1/tables`.
//!
//! Every statement is parameterised: values are bound, never spliced. Table and column names
//! cannot be bound in SQL, so they are checked twice: they must look like identifiers
//! (`[A-Za-z_][A-Za-z0-9_]*`, at most 63 characters) and they must be a real table / a real
//! column of that table (read from SQLite itself) before they are quoted into a statement.
//! Columns are TEXT: a CSV has no types, and lookups compare as text (`42` finds `"42"`).
//!
//! All methods block (disk): call them from `spawn_blocking` or a plain thread.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::types::Value as SqlValue;
use rusqlite::{params_from_iter, Connection, OptionalExtension};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

use super::StepError;
use crate::flow::{TableOp, TableRequest};

/// Rows read by one API listing at most.
pub const MAX_LIST: usize = 1000;
/// Largest CSV seeded (bytes).
pub const MAX_CSV: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("`{0}` is not a valid name (letters, digits and `_`, not starting with a digit, at most 63)")]
    BadName(String),
    #[error("no table `{0}`")]
    UnknownTable(String),
    #[error("table `{table}` has no column `{column}`")]
    UnknownColumn { table: String, column: String },
    #[error("table `{0}` already exists")]
    Exists(String),
    #[error("no row {id} in table `{table}`")]
    UnknownRow { table: String, id: i64 },
    #[error("{0}")]
    Invalid(String),
    #[error("{file}: {message}")]
    Csv { file: String, message: String },
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The shared PostgreSQL failed or cannot be reached.
    #[error("database: {0}")]
    Database(String),
}

impl TableError {
    /// Whether the caller asked for something wrong (400/404) rather than the store failing.
    pub fn is_client_error(&self) -> bool {
        !matches!(
            self,
            TableError::Io(_)
                | TableError::Sqlite(_)
                | TableError::Database(_)
                | TableError::Csv { .. }
        )
    }
}

impl From<TableError> for StepError {
    fn from(e: TableError) -> Self {
        StepError::new("table", e.to_string())
    }
}

/// A table as listed by `/v1/tables`.
#[derive(Debug, Clone, PartialEq)]
pub struct TableInfo {
    pub name: String,
    pub columns: Vec<String>,
    pub rows: i64,
}

impl TableInfo {
    pub fn to_json(&self) -> Value {
        json!({"name": self.name, "columns": self.columns, "rows": self.rows})
    }
}

pub fn valid_identifier(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        && !name.to_ascii_lowercase().starts_with("sqlite_")
        && !name.to_ascii_lowercase().starts_with("_voxgate")
}

fn quote(ident: &str) -> String {
    // Only validated identifiers get here; quoting keeps keywords (`order`, `group`) usable.
    format!("\"{ident}\"")
}

fn to_sql(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Text(b.to_string()),
        Value::Number(n) => SqlValue::Text(n.to_string()),
        Value::String(s) => SqlValue::Text(s.clone()),
        other => SqlValue::Text(other.to_string()),
    }
}

fn from_sql(v: SqlValue) -> Value {
    match v {
        SqlValue::Null => Value::Null,
        SqlValue::Integer(i) => json!(i),
        SqlValue::Real(f) => json!(f),
        SqlValue::Text(s) => Value::String(s),
        SqlValue::Blob(b) => Value::String(String::from_utf8_lossy(&b).into_owned()),
    }
}

/// The flow's tables, wherever they are kept. Every method blocks (disk or network): call
/// them from `spawn_blocking` or a plain thread, never on a tokio worker.
pub enum TableStore {
    /// The embedded default: one SQLite file per node.
    Sqlite(SqliteTables),
    /// `[store] url`: the shared PostgreSQL.
    Postgres(pg::PgTables),
}

impl std::fmt::Debug for TableStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TableStore::Sqlite(_) => f.write_str("TableStore(sqlite)"),
            TableStore::Postgres(_) => f.write_str("TableStore(postgres)"),
        }
    }
}

/// Calls the same method on whichever backend holds the tables.
macro_rules! either {
    ($self:ident, $t:ident => $e:expr) => {
        match $self {
            TableStore::Sqlite($t) => $e,
            TableStore::Postgres($t) => $e,
        }
    };
}

impl TableStore {
    /// Opens (or creates) the embedded database file.
    pub fn open(path: &Path) -> Result<TableStore, TableError> {
        SqliteTables::open(path).map(TableStore::Sqlite)
    }

    /// An in-memory embedded store (tests).
    pub fn in_memory() -> Result<TableStore, TableError> {
        SqliteTables::in_memory().map(TableStore::Sqlite)
    }

    /// Whether the tables are shared by every node (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        matches!(self, TableStore::Postgres(_))
    }

    pub fn columns(&self, table: &str) -> Result<Vec<String>, TableError> {
        either!(self, t => t.columns(table))
    }

    /// Creates an empty table with TEXT columns.
    pub fn create_table(&self, name: &str, columns: &[String]) -> Result<TableInfo, TableError> {
        either!(self, t => t.create_table(name, columns))
    }

    /// Drops a table (its CSV seeds it again at the next start-up).
    pub fn drop_table(&self, name: &str) -> Result<(), TableError> {
        either!(self, t => t.drop_table(name))
    }

    /// Every table, with its columns and row count.
    pub fn tables(&self) -> Result<Vec<TableInfo>, TableError> {
        either!(self, t => t.tables())
    }

    /// Matching rows (oldest first) and how many match in all.
    pub fn find(
        &self,
        table: &str,
        filter: &[(String, Value)],
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Value>, i64), TableError> {
        either!(self, t => t.find(table, filter, limit, offset))
    }

    pub fn get_row(&self, table: &str, id: i64) -> Result<Value, TableError> {
        either!(self, t => t.get_row(table, id))
    }

    /// Inserts one row; returns its `_id`.
    pub fn insert(&self, table: &str, values: &[(String, Value)]) -> Result<i64, TableError> {
        either!(self, t => t.insert(table, values))
    }

    /// Sets `values` on every row matching `filter` (which must not be empty).
    pub fn update(
        &self,
        table: &str,
        filter: &[(String, Value)],
        values: &[(String, Value)],
    ) -> Result<usize, TableError> {
        if filter.is_empty() {
            return Err(TableError::Invalid(
                "update needs a `where` (refusing to change every row)".into(),
            ));
        }
        if values.is_empty() {
            return Err(TableError::Invalid("update needs `values`".into()));
        }
        either!(self, t => t.update(table, filter, values))
    }

    /// Deletes every row matching `filter` (which must not be empty).
    pub fn delete(&self, table: &str, filter: &[(String, Value)]) -> Result<usize, TableError> {
        if filter.is_empty() {
            return Err(TableError::Invalid(
                "delete needs a `where` (refusing to delete every row)".into(),
            ));
        }
        either!(self, t => t.delete(table, filter))
    }

    pub fn update_row(
        &self,
        table: &str,
        id: i64,
        values: &[(String, Value)],
    ) -> Result<(), TableError> {
        if values.is_empty() {
            return Err(TableError::Invalid("no values to set".into()));
        }
        either!(self, t => t.update_row(table, id, values))
    }

    pub fn delete_row(&self, table: &str, id: i64) -> Result<(), TableError> {
        either!(self, t => t.delete_row(table, id))
    }

    /// Seeds tables from `<dir>/*.csv`. A missing dir seeds nothing. Returns (table, rows)
    /// for each table (re)loaded.
    pub fn seed_dir(&self, dir: &Path, reseed: bool) -> Result<Vec<(String, usize)>, TableError> {
        let mut report = Vec::new();
        for (name, path) in csv_files(dir)? {
            if let Some(n) = self.seed_csv(&name, &path, reseed)? {
                report.push((name, n));
            }
        }
        Ok(report)
    }

    /// Seeds one table; `None` when it already existed and was left alone.
    pub fn seed_csv(
        &self,
        name: &str,
        path: &Path,
        reseed: bool,
    ) -> Result<Option<usize>, TableError> {
        let csv = SeedCsv::read(path)?;
        let seeded = either!(self, t => t.seed(name, &csv, reseed))?;
        if let Some(n) = seeded {
            info!(table = name, rows = n, file = %path.display(), "table seeded from CSV");
        }
        Ok(seeded)
    }

    /// Answers a `table` step. Results: lookup `{"row": {...} | null, "count": n}`;
    /// insert `{"inserted": 1, "id": n}`; update / delete `{"affected": n}`.
    pub fn run(&self, req: &TableRequest) -> Result<Value, StepError> {
        match req.op {
            TableOp::Lookup => {
                let (rows, count) = self.find(&req.table, &req.filter, 1, 0)?;
                Ok(json!({"row": rows.into_iter().next(), "count": count}))
            }
            TableOp::Insert => {
                if req.values.is_empty() {
                    return Err(StepError::new("table", "insert needs `values`"));
                }
                let id = self.insert(&req.table, &req.values)?;
                Ok(json!({"inserted": 1, "id": id}))
            }
            TableOp::Update => {
                Ok(json!({"affected": self.update(&req.table, &req.filter, &req.values)?}))
            }
            TableOp::Delete => Ok(json!({"affected": self.delete(&req.table, &req.filter)?})),
        }
    }
}

/// The `.csv` files of the seed directory, as (table name, path), sorted.
pub fn csv_files(dir: &Path) -> Result<Vec<(String, std::path::PathBuf)>, TableError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(TableError::Csv {
                file: dir.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x.eq_ignore_ascii_case("csv")))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let name = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if !valid_identifier(&name) {
            return Err(TableError::Csv {
                file: path.display().to_string(),
                message: format!("`{name}` is not a valid table name (letters, digits, `_`)"),
            });
        }
        out.push((name, path));
    }
    Ok(out)
}

/// A seed CSV, read and checked: the header (the columns), the rows, and the file's sha256
/// (a table is not re-seeded from a changed file unless `[tables] reseed`).
pub struct SeedCsv {
    pub file: String,
    pub sha256: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl SeedCsv {
    pub fn read(path: &Path) -> Result<SeedCsv, TableError> {
        let file = path.display().to_string();
        let csv_err = |message: String| TableError::Csv {
            file: file.clone(),
            message,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_CSV + 1).read_to_end(&mut bytes))
            .map_err(|e| csv_err(e.to_string()))?;
        if bytes.len() as u64 > MAX_CSV {
            return Err(csv_err(format!("larger than {} MiB", MAX_CSV >> 20)));
        }
        let sha256 = hex::encode(Sha256::digest(&bytes));
        let mut reader = csv::ReaderBuilder::new()
            .has_headers(true)
            .trim(csv::Trim::All)
            .from_reader(bytes.as_slice());
        let header: Vec<String> = reader
            .headers()
            .map_err(|e| csv_err(format!("header row: {e}")))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').to_string())
            .collect();
        check_new_columns(&header).map_err(|e| csv_err(format!("header row: {e}")))?;
        let mut rows = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let record = record.map_err(|e| csv_err(format!("row {}: {e}", i + 2)))?;
            if record.len() != header.len() {
                return Err(csv_err(format!(
                    "row {} has {} fields, the header has {}",
                    i + 2,
                    record.len(),
                    header.len()
                )));
            }
            rows.push(record.iter().map(str::to_string).collect());
        }
        Ok(SeedCsv {
            file,
            sha256,
            header,
            rows,
        })
    }
}

/// The columns of a new table: at least one, identifiers, no `_id`, no duplicates.
pub fn check_new_columns(columns: &[String]) -> Result<(), TableError> {
    if columns.is_empty() {
        return Err(TableError::Invalid(
            "a table needs at least one column".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for c in columns {
        if !valid_identifier(c) || c.eq_ignore_ascii_case("_id") {
            return Err(TableError::BadName(c.clone()));
        }
        if !seen.insert(c.to_ascii_lowercase()) {
            return Err(TableError::Invalid(format!("column `{c}` appears twice")));
        }
    }
    Ok(())
}

/// The embedded table store (one SQLite file per node).
pub struct SqliteTables {
    conn: Mutex<Connection>,
}

impl SqliteTables {
    /// Opens (or creates) the database file.
    pub fn open(path: &Path) -> Result<SqliteTables, TableError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let conn = Connection::open(path)?;
        Self::init(conn)
    }

    /// An in-memory store (tests).
    pub fn in_memory() -> Result<SqliteTables, TableError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<SqliteTables, TableError> {
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        // WAL lets the API read while a call writes; ignored for in-memory databases.
        let _: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS _voxgate_seeds (name TEXT PRIMARY KEY, sha256 TEXT NOT NULL, seeded_at TEXT NOT NULL);",
        )?;
        Ok(SqliteTables {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn check_name(name: &str) -> Result<(), TableError> {
        if valid_identifier(name) {
            Ok(())
        } else {
            Err(TableError::BadName(name.chars().take(80).collect()))
        }
    }

    fn exists(conn: &Connection, name: &str) -> Result<bool, TableError> {
        Ok(conn
            .query_row(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1",
                [name],
                |_| Ok(()),
            )
            .optional()?
            .is_some())
    }

    /// The real columns of a table (and proof that the table exists).
    fn columns_of(conn: &Connection, table: &str) -> Result<Vec<String>, TableError> {
        Self::check_name(table)?;
        if !Self::exists(conn, table)? {
            return Err(TableError::UnknownTable(table.to_string()));
        }
        let mut stmt = conn.prepare("SELECT name FROM pragma_table_info(?1) ORDER BY cid")?;
        let cols = stmt
            .query_map([table], |r| r.get::<_, String>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(cols)
    }

    fn check_columns<'a>(
        table: &str,
        real: &[String],
        wanted: impl IntoIterator<Item = &'a String>,
    ) -> Result<(), TableError> {
        for c in wanted {
            if !valid_identifier(c) || !real.iter().any(|r| r == c) {
                return Err(TableError::UnknownColumn {
                    table: table.to_string(),
                    column: c.chars().take(80).collect(),
                });
            }
        }
        Ok(())
    }

    pub fn columns(&self, table: &str) -> Result<Vec<String>, TableError> {
        Self::columns_of(&self.conn(), table)
    }

    /// Creates an empty table with TEXT columns.
    pub fn create_table(&self, name: &str, columns: &[String]) -> Result<TableInfo, TableError> {
        Self::check_name(name)?;
        let conn = self.conn();
        if Self::exists(&conn, name)? {
            return Err(TableError::Exists(name.to_string()));
        }
        Self::create(&conn, name, columns)?;
        Ok(TableInfo {
            name: name.to_string(),
            columns: columns.to_vec(),
            rows: 0,
        })
    }

    fn create(conn: &Connection, name: &str, columns: &[String]) -> Result<(), TableError> {
        check_new_columns(columns)?;
        let cols = columns
            .iter()
            .map(|c| format!("{} TEXT", quote(c)))
            .collect::<Vec<_>>()
            .join(", ");
        conn.execute_batch(&format!("CREATE TABLE {} ({cols});", quote(name)))?;
        Ok(())
    }

    /// Drops a table (and its seed record: its CSV seeds it again at the next start-up).
    pub fn drop_table(&self, name: &str) -> Result<(), TableError> {
        let conn = self.conn();
        Self::columns_of(&conn, name)?;
        conn.execute_batch(&format!("DROP TABLE {};", quote(name)))?;
        conn.execute("DELETE FROM _voxgate_seeds WHERE name = ?1", [name])?;
        Ok(())
    }

    /// Every table, with its columns and row count.
    pub fn tables(&self) -> Result<Vec<TableInfo>, TableError> {
        let conn = self.conn();
        let names: Vec<String> = {
            let mut stmt =
                conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        let mut out = Vec::new();
        for name in names.into_iter().filter(|n| valid_identifier(n)) {
            let columns = Self::columns_of(&conn, &name)?;
            let rows: i64 =
                conn.query_row(&format!("SELECT COUNT(*) FROM {}", quote(&name)), [], |r| {
                    r.get(0)
                })?;
            out.push(TableInfo {
                name,
                columns,
                rows,
            });
        }
        Ok(out)
    }

    /// `WHERE "a" = ?1 AND "b" = ?2` over checked columns (or nothing).
    fn where_clause(filter: &[(String, Value)], first: usize) -> String {
        if filter.is_empty() {
            return String::new();
        }
        let parts: Vec<String> = filter
            .iter()
            .enumerate()
            .map(|(i, (c, v))| {
                if v.is_null() {
                    // `= NULL` never matches; NULL is what an unset cell holds.
                    format!("{} IS ?{}", quote(c), first + i)
                } else {
                    format!("{} = ?{}", quote(c), first + i)
                }
            })
            .collect();
        format!(" WHERE {}", parts.join(" AND "))
    }

    fn row_json(columns: &[String], row: &rusqlite::Row<'_>) -> rusqlite::Result<Value> {
        let mut o = Map::new();
        o.insert("_id".into(), json!(row.get::<_, i64>(0)?));
        for (i, c) in columns.iter().enumerate() {
            o.insert(c.clone(), from_sql(row.get::<_, SqlValue>(i + 1)?));
        }
        Ok(Value::Object(o))
    }

    fn select_list(columns: &[String]) -> String {
        let mut s = String::from("rowid");
        for c in columns {
            s.push_str(", ");
            s.push_str(&quote(c));
        }
        s
    }

    /// Matching rows (oldest first) and how many match in all.
    pub fn find(
        &self,
        table: &str,
        filter: &[(String, Value)],
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Value>, i64), TableError> {
        let conn = self.conn();
        let columns = Self::columns_of(&conn, table)?;
        Self::check_columns(table, &columns, filter.iter().map(|(c, _)| c))?;
        let wh = Self::where_clause(filter, 1);
        let params: Vec<SqlValue> = filter.iter().map(|(_, v)| to_sql(v)).collect();
        let count: i64 = conn.query_row(
            &format!("SELECT COUNT(*) FROM {}{wh}", quote(table)),
            params_from_iter(params.iter()),
            |r| r.get(0),
        )?;
        let sql = format!(
            "SELECT {} FROM {}{wh} ORDER BY rowid LIMIT {} OFFSET {}",
            Self::select_list(&columns),
            quote(table),
            limit.min(MAX_LIST),
            offset
        );
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt
            .query_map(params_from_iter(params.iter()), |r| {
                Self::row_json(&columns, r)
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok((rows, count))
    }

    pub fn get_row(&self, table: &str, id: i64) -> Result<Value, TableError> {
        let conn = self.conn();
        let columns = Self::columns_of(&conn, table)?;
        let sql = format!(
            "SELECT {} FROM {} WHERE rowid = ?1",
            Self::select_list(&columns),
            quote(table)
        );
        conn.query_row(&sql, [id], |r| Self::row_json(&columns, r))
            .optional()?
            .ok_or(TableError::UnknownRow {
                table: table.to_string(),
                id,
            })
    }

    /// Inserts one row; returns its `_id`.
    pub fn insert(&self, table: &str, values: &[(String, Value)]) -> Result<i64, TableError> {
        let conn = self.conn();
        Self::insert_with(&conn, table, values)
    }

    fn insert_with(
        conn: &Connection,
        table: &str,
        values: &[(String, Value)],
    ) -> Result<i64, TableError> {
        let columns = Self::columns_of(conn, table)?;
        Self::check_columns(table, &columns, values.iter().map(|(c, _)| c))?;
        let sql = if values.is_empty() {
            format!("INSERT INTO {} DEFAULT VALUES", quote(table))
        } else {
            let cols: Vec<String> = values.iter().map(|(c, _)| quote(c)).collect();
            let marks: Vec<String> = (1..=values.len()).map(|i| format!("?{i}")).collect();
            format!(
                "INSERT INTO {} ({}) VALUES ({})",
                quote(table),
                cols.join(", "),
                marks.join(", ")
            )
        };
        conn.execute(
            &sql,
            params_from_iter(values.iter().map(|(_, v)| to_sql(v))),
        )?;
        Ok(conn.last_insert_rowid())
    }

    /// Sets `values` on every row matching `filter` (which must not be empty).
    pub fn update(
        &self,
        table: &str,
        filter: &[(String, Value)],
        values: &[(String, Value)],
    ) -> Result<usize, TableError> {
        if filter.is_empty() {
            return Err(TableError::Invalid(
                "update needs a `where` (refusing to change every row)".into(),
            ));
        }
        if values.is_empty() {
            return Err(TableError::Invalid("update needs `values`".into()));
        }
        let conn = self.conn();
        let columns = Self::columns_of(&conn, table)?;
        Self::check_columns(table, &columns, values.iter().map(|(c, _)| c))?;
        Self::check_columns(table, &columns, filter.iter().map(|(c, _)| c))?;
        let sets: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{} = ?{}", quote(c), i + 1))
            .collect();
        let wh = Self::where_clause(filter, values.len() + 1);
        let params: Vec<SqlValue> = values
            .iter()
            .chain(filter.iter())
            .map(|(_, v)| to_sql(v))
            .collect();
        let n = conn.execute(
            &format!("UPDATE {} SET {}{wh}", quote(table), sets.join(", ")),
            params_from_iter(params.iter()),
        )?;
        Ok(n)
    }

    /// Deletes every row matching `filter` (which must not be empty).
    pub fn delete(&self, table: &str, filter: &[(String, Value)]) -> Result<usize, TableError> {
        if filter.is_empty() {
            return Err(TableError::Invalid(
                "delete needs a `where` (refusing to delete every row)".into(),
            ));
        }
        let conn = self.conn();
        let columns = Self::columns_of(&conn, table)?;
        Self::check_columns(table, &columns, filter.iter().map(|(c, _)| c))?;
        let wh = Self::where_clause(filter, 1);
        let params: Vec<SqlValue> = filter.iter().map(|(_, v)| to_sql(v)).collect();
        Ok(conn.execute(
            &format!("DELETE FROM {}{wh}", quote(table)),
            params_from_iter(params.iter()),
        )?)
    }

    pub fn update_row(
        &self,
        table: &str,
        id: i64,
        values: &[(String, Value)],
    ) -> Result<(), TableError> {
        if values.is_empty() {
            return Err(TableError::Invalid("no values to set".into()));
        }
        let conn = self.conn();
        let columns = Self::columns_of(&conn, table)?;
        Self::check_columns(table, &columns, values.iter().map(|(c, _)| c))?;
        let sets: Vec<String> = values
            .iter()
            .enumerate()
            .map(|(i, (c, _))| format!("{} = ?{}", quote(c), i + 1))
            .collect();
        let mut params: Vec<SqlValue> = values.iter().map(|(_, v)| to_sql(v)).collect();
        params.push(SqlValue::Integer(id));
        let n = conn.execute(
            &format!(
                "UPDATE {} SET {} WHERE rowid = ?{}",
                quote(table),
                sets.join(", "),
                values.len() + 1
            ),
            params_from_iter(params.iter()),
        )?;
        if n == 0 {
            return Err(TableError::UnknownRow {
                table: table.to_string(),
                id,
            });
        }
        Ok(())
    }

    pub fn delete_row(&self, table: &str, id: i64) -> Result<(), TableError> {
        let conn = self.conn();
        Self::columns_of(&conn, table)?;
        let n = conn.execute(
            &format!("DELETE FROM {} WHERE rowid = ?1", quote(table)),
            [id],
        )?;
        if n == 0 {
            return Err(TableError::UnknownRow {
                table: table.to_string(),
                id,
            });
        }
        Ok(())
    }

    /// Seeds one table from a read CSV; `None` when it already existed and was left alone.
    fn seed(&self, name: &str, csv: &SeedCsv, reseed: bool) -> Result<Option<usize>, TableError> {
        let mut conn = self.conn();
        let exists = Self::exists(&conn, name)?;
        if exists && !reseed {
            let seeded: Option<String> = conn
                .query_row(
                    "SELECT sha256 FROM _voxgate_seeds WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .optional()?;
            if seeded.as_deref() != Some(csv.sha256.as_str()) {
                warn!(table = name, file = %csv.file, "the CSV differs from the one that seeded the table; it is not re-applied (set [tables] reseed = true)");
            }
            return Ok(None);
        }
        let header = &csv.header;
        let tx = conn.transaction()?;
        if exists {
            tx.execute_batch(&format!("DROP TABLE {};", quote(name)))?;
        }
        Self::create(&tx, name, header)?;
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            quote(name),
            header
                .iter()
                .map(|c| quote(c))
                .collect::<Vec<_>>()
                .join(", "),
            (1..=header.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        {
            let mut stmt = tx.prepare(&sql)?;
            for record in &csv.rows {
                stmt.execute(params_from_iter(record.iter()))?;
            }
        }
        tx.execute(
            "INSERT OR REPLACE INTO _voxgate_seeds (name, sha256, seeded_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![name, csv.sha256, chrono::Utc::now().to_rfc3339()],
        )?;
        tx.commit()?;
        Ok(Some(csv.rows.len()))
    }
}

/// A JSON object as ordered column/value pairs.
pub fn object_pairs(v: &Value) -> Result<Vec<(String, Value)>, TableError> {
    match v {
        Value::Object(m) => Ok(m
            .iter()
            .filter(|(k, _)| k.as_str() != "_id")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()),
        _ => Err(TableError::Invalid(
            "expected a JSON object of column: value".into(),
        )),
    }
}

/// Query-string filters (`?number=+32...`), minus the paging keys.
pub fn query_filter(params: &BTreeMap<String, String>) -> Vec<(String, Value)> {
    params
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "limit" | "offset"))
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect()
}

pub mod pg;

#[cfg(test)]
mod tests;
