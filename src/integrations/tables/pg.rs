//! The flow's tables in the shared PostgreSQL (`[store] url`), so every node's calls and API
//! see the same rows: a row inserted by a call on node A is found by a lookup on node B.
//!
//! Schema (src/store/migrations/0002_flow_tables.sql): `flow_tables` names each table and its
//! columns in order; `table_rows` holds one JSON object per row (column -> text, or null), its
//! `seq` being the row's `_id`. Values and names are always bound parameters: a filter is a
//! JSON containment (`data @> $2`, served by the GIN index) plus `(data ->> $n) IS NULL` for
//! null conditions; table and column names are checked against `flow_tables` as well, exactly
//! as the SQLite store checks them against SQLite's catalogue.
//!
//! The methods block (the `TableStore` contract): each runs its queries on the gateway's
//! runtime through `Handle::block_on`, from the `spawn_blocking` thread that called it, bounded
//! by `[store] timeout_ms`. One connection, opened on first use and again after it drops; while
//! the database is down a table step fails at once with a clear `table` error (calls go on).

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::Mutex;
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use tracing::{info, warn};

use super::{check_new_columns, valid_identifier, SeedCsv, SqliteTables, TableError, TableInfo};

/// Where and how to reach the database.
#[derive(Debug, Clone)]
pub struct PgTablesConfig {
    pub url: String,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
    /// `[node] name`, stored with every row this node writes.
    pub node: String,
}

pub struct PgTables {
    cfg: PgTablesConfig,
    runtime: tokio::runtime::Handle,
    client: Mutex<Option<Client>>,
}

fn db(e: tokio_postgres::Error) -> TableError {
    TableError::Database(e.to_string())
}

/// A cell as stored: text (numbers and booleans as their JSON text), or null.
fn cell(v: &Value) -> Value {
    match v {
        Value::Null => Value::Null,
        Value::String(s) => Value::String(s.clone()),
        other => Value::String(other.to_string()),
    }
}

/// `{"_id": seq, "<col>": value, ...}` in column order; a column the row lacks is null.
fn row_json(columns: &[String], seq: i64, data: &Value) -> Value {
    let mut o = Map::new();
    o.insert("_id".into(), json!(seq));
    for c in columns {
        o.insert(c.clone(), data.get(c).cloned().unwrap_or(Value::Null));
    }
    Value::Object(o)
}

type Param = Box<dyn ToSql + Sync + Send>;

/// ` AND data @> $n [AND (data ->> $m) IS NULL ...]` for checked columns, with its parameters
/// appended to `params` (so numbering continues from what is there).
fn filter_sql(filter: &[(String, Value)], params: &mut Vec<Param>) -> String {
    let mut contains = Map::new();
    let mut nulls = Vec::new();
    for (c, v) in filter {
        if v.is_null() {
            nulls.push(c.clone());
        } else {
            contains.insert(c.clone(), cell(v));
        }
    }
    params.push(Box::new(Value::Object(contains)));
    let mut sql = format!(" AND data @> ${}", params.len());
    for c in nulls {
        params.push(Box::new(c));
        sql.push_str(&format!(" AND (data ->> ${}) IS NULL", params.len()));
    }
    sql
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn values_object(values: &[(String, Value)]) -> Value {
    Value::Object(values.iter().map(|(c, v)| (c.clone(), cell(v))).collect())
}

fn check_name(name: &str) -> Result<(), TableError> {
    if valid_identifier(name) {
        Ok(())
    } else {
        Err(TableError::BadName(name.chars().take(80).collect()))
    }
}

/// The real columns of a table (and proof that it exists).
async fn columns_of(c: &Client, table: &str) -> Result<Vec<String>, TableError> {
    check_name(table)?;
    let row = c
        .query_opt("SELECT columns FROM flow_tables WHERE name = $1", &[&table])
        .await
        .map_err(db)?
        .ok_or_else(|| TableError::UnknownTable(table.to_string()))?;
    let cols: Value = row.try_get(0).map_err(db)?;
    Ok(cols
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default())
}

fn check_columns<'a>(
    table: &str,
    real: &[String],
    wanted: impl IntoIterator<Item = &'a String>,
) -> Result<(), TableError> {
    SqliteTables::check_columns(table, real, wanted)
}

impl PgTables {
    /// Does not connect: the first use does (a node starts while the database is down).
    pub fn new(cfg: PgTablesConfig, runtime: tokio::runtime::Handle) -> PgTables {
        PgTables {
            cfg,
            runtime,
            client: Mutex::new(None),
        }
    }

    /// Runs `op` with the connection (opened if needed), bounded by the timeout. Blocks: only
    /// from a blocking thread.
    fn block<T>(
        &self,
        op: impl for<'c> FnOnce(
            &'c mut Client,
        )
            -> std::pin::Pin<Box<dyn Future<Output = Result<T, TableError>> + 'c>>,
    ) -> Result<T, TableError> {
        let timeout = self.cfg.timeout;
        self.runtime.block_on(async move {
            let work = async {
                let mut guard = self.client.lock().await;
                if guard.as_ref().is_none_or(Client::is_closed) {
                    let c = crate::store::postgres::connect_migrated(
                        &self.cfg.url,
                        self.cfg.ca_file.as_deref(),
                        timeout,
                        &format!("voxgate {} tables", self.cfg.node),
                    )
                    .await
                    .map_err(|e| TableError::Database(e.to_string()))?;
                    *guard = Some(c);
                }
                match guard.as_mut() {
                    Some(c) => op(c).await,
                    None => Err(TableError::Database("no connection".into())),
                }
            };
            match tokio::time::timeout(timeout, work).await {
                Ok(r) => r,
                Err(_) => Err(TableError::Database(format!(
                    "no answer within {} ms",
                    timeout.as_millis()
                ))),
            }
        })
    }

    pub fn columns(&self, table: &str) -> Result<Vec<String>, TableError> {
        let table = table.to_string();
        self.block(move |c| Box::pin(async move { columns_of(c, &table).await }))
    }

    pub fn create_table(&self, name: &str, columns: &[String]) -> Result<TableInfo, TableError> {
        check_name(name)?;
        check_new_columns(columns)?;
        let (name, columns) = (name.to_string(), columns.to_vec());
        let node = self.cfg.node.clone();
        self.block(move |c| {
            Box::pin(async move {
                let cols = json!(columns);
                let n = c
                    .execute(
                        "INSERT INTO flow_tables (name, columns, node) VALUES ($1, $2, $3)
                         ON CONFLICT (name) DO NOTHING",
                        &[&name, &cols, &node],
                    )
                    .await
                    .map_err(db)?;
                if n == 0 {
                    return Err(TableError::Exists(name));
                }
                Ok(TableInfo {
                    name,
                    columns,
                    rows: 0,
                })
            })
        })
    }

    pub fn drop_table(&self, name: &str) -> Result<(), TableError> {
        check_name(name)?;
        let name = name.to_string();
        self.block(move |c| {
            Box::pin(async move {
                let n = c
                    .execute("DELETE FROM flow_tables WHERE name = $1", &[&name])
                    .await
                    .map_err(db)?;
                if n == 0 {
                    return Err(TableError::UnknownTable(name));
                }
                Ok(())
            })
        })
    }

    pub fn tables(&self) -> Result<Vec<TableInfo>, TableError> {
        self.block(|c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT t.name, t.columns,
                                (SELECT count(*) FROM table_rows r WHERE r.table_name = t.name)
                         FROM flow_tables t ORDER BY t.name",
                        &[],
                    )
                    .await
                    .map_err(db)?;
                let mut out = Vec::new();
                for r in rows {
                    let name: String = r.try_get(0).map_err(db)?;
                    let cols: Value = r.try_get(1).map_err(db)?;
                    let rows: i64 = r.try_get(2).map_err(db)?;
                    let columns = cols
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(Value::as_str)
                                .map(str::to_string)
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(TableInfo {
                        name,
                        columns,
                        rows,
                    });
                }
                Ok(out)
            })
        })
    }

    pub fn find(
        &self,
        table: &str,
        filter: &[(String, Value)],
        limit: usize,
        offset: usize,
    ) -> Result<(Vec<Value>, i64), TableError> {
        let (table, filter) = (table.to_string(), filter.to_vec());
        let limit = limit.min(super::MAX_LIST) as i64;
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        self.block(move |c| {
            Box::pin(async move {
                let columns = columns_of(c, &table).await?;
                check_columns(&table, &columns, filter.iter().map(|(k, _)| k))?;
                let mut params: Vec<Param> = vec![Box::new(table.clone())];
                let wh = filter_sql(&filter, &mut params);
                let count: i64 = c
                    .query_one(
                        &format!("SELECT count(*) FROM table_rows WHERE table_name = $1{wh}"),
                        &refs(&params),
                    )
                    .await
                    .map_err(db)?
                    .try_get(0)
                    .map_err(db)?;
                params.push(Box::new(limit));
                params.push(Box::new(offset));
                let n = params.len();
                let rows = c
                    .query(
                        &format!(
                            "SELECT seq, data FROM table_rows WHERE table_name = $1{wh}
                             ORDER BY seq LIMIT ${} OFFSET ${n}",
                            n - 1
                        ),
                        &refs(&params),
                    )
                    .await
                    .map_err(db)?;
                let mut out = Vec::with_capacity(rows.len());
                for r in rows {
                    let seq: i64 = r.try_get(0).map_err(db)?;
                    let data: Value = r.try_get(1).map_err(db)?;
                    out.push(row_json(&columns, seq, &data));
                }
                Ok((out, count))
            })
        })
    }

    pub fn get_row(&self, table: &str, id: i64) -> Result<Value, TableError> {
        let table = table.to_string();
        self.block(move |c| {
            Box::pin(async move {
                let columns = columns_of(c, &table).await?;
                let row = c
                    .query_opt(
                        "SELECT seq, data FROM table_rows WHERE table_name = $1 AND seq = $2",
                        &[&table, &id],
                    )
                    .await
                    .map_err(db)?
                    .ok_or_else(|| TableError::UnknownRow {
                        table: table.clone(),
                        id,
                    })?;
                let data: Value = row.try_get(1).map_err(db)?;
                Ok(row_json(&columns, id, &data))
            })
        })
    }

    pub fn insert(&self, table: &str, values: &[(String, Value)]) -> Result<i64, TableError> {
        let (table, values) = (table.to_string(), values.to_vec());
        let node = self.cfg.node.clone();
        self.block(move |c| {
            Box::pin(async move {
                let columns = columns_of(c, &table).await?;
                check_columns(&table, &columns, values.iter().map(|(k, _)| k))?;
                let data = values_object(&values);
                c.query_one(
                    "INSERT INTO table_rows (table_name, data, node) VALUES ($1, $2, $3)
                     RETURNING seq",
                    &[&table, &data, &node],
                )
                .await
                .map_err(db)?
                .try_get(0)
                .map_err(db)
            })
        })
    }

    pub fn update(
        &self,
        table: &str,
        filter: &[(String, Value)],
        values: &[(String, Value)],
    ) -> Result<usize, TableError> {
        let (table, filter, values) = (table.to_string(), filter.to_vec(), values.to_vec());
        self.block(move |c| {
            Box::pin(async move {
                let columns = columns_of(c, &table).await?;
                check_columns(&table, &columns, values.iter().map(|(k, _)| k))?;
                check_columns(&table, &columns, filter.iter().map(|(k, _)| k))?;
                let mut params: Vec<Param> =
                    vec![Box::new(table.clone()), Box::new(values_object(&values))];
                let wh = filter_sql(&filter, &mut params);
                let n = c
                    .execute(
                        &format!(
                            "UPDATE table_rows SET data = data || $2 WHERE table_name = $1{wh}"
                        ),
                        &refs(&params),
                    )
                    .await
                    .map_err(db)?;
                Ok(n as usize)
            })
        })
    }

    pub fn delete(&self, table: &str, filter: &[(String, Value)]) -> Result<usize, TableError> {
        let (table, filter) = (table.to_string(), filter.to_vec());
        self.block(move |c| {
            Box::pin(async move {
                let columns = columns_of(c, &table).await?;
                check_columns(&table, &columns, filter.iter().map(|(k, _)| k))?;
                let mut params: Vec<Param> = vec![Box::new(table.clone())];
                let wh = filter_sql(&filter, &mut params);
                let n = c
                    .execute(
                        &format!("DELETE FROM table_rows WHERE table_name = $1{wh}"),
                        &refs(&params),
                    )
                    .await
                    .map_err(db)?;
                Ok(n as usize)
            })
        })
    }

    pub fn update_row(
        &self,
        table: &str,
        id: i64,
        values: &[(String, Value)],
    ) -> Result<(), TableError> {
        let (table, values) = (table.to_string(), values.to_vec());
        self.block(move |c| {
            Box::pin(async move {
                let columns = columns_of(c, &table).await?;
                check_columns(&table, &columns, values.iter().map(|(k, _)| k))?;
                let data = values_object(&values);
                let n = c
                    .execute(
                        "UPDATE table_rows SET data = data || $3 WHERE table_name = $1 AND seq = $2",
                        &[&table, &id, &data],
                    )
                    .await
                    .map_err(db)?;
                if n == 0 {
                    return Err(TableError::UnknownRow { table, id });
                }
                Ok(())
            })
        })
    }

    pub fn delete_row(&self, table: &str, id: i64) -> Result<(), TableError> {
        let table = table.to_string();
        self.block(move |c| {
            Box::pin(async move {
                columns_of(c, &table).await?;
                let n = c
                    .execute(
                        "DELETE FROM table_rows WHERE table_name = $1 AND seq = $2",
                        &[&table, &id],
                    )
                    .await
                    .map_err(db)?;
                if n == 0 {
                    return Err(TableError::UnknownRow { table, id });
                }
                Ok(())
            })
        })
    }

    /// Seeds one table in one transaction; `None` when it existed and was left alone. Nodes
    /// starting together seed it once: the second one's insert into `flow_tables` waits for
    /// the first one's commit and then finds the table there.
    pub fn seed(
        &self,
        name: &str,
        csv: &SeedCsv,
        reseed: bool,
    ) -> Result<Option<usize>, TableError> {
        check_name(name)?;
        let name = name.to_string();
        let node = self.cfg.node.clone();
        let columns = json!(csv.header);
        let rows: Value = csv
            .rows
            .iter()
            .map(|r| {
                Value::Object(
                    csv.header
                        .iter()
                        .zip(r)
                        .map(|(h, v)| (h.clone(), Value::String(v.clone())))
                        .collect(),
                )
            })
            .collect();
        let (sha, file, count) = (csv.sha256.clone(), csv.file.clone(), csv.rows.len());
        self.block(move |c| {
            Box::pin(async move {
                let tx = c.transaction().await.map_err(db)?;
                if reseed {
                    tx.execute("DELETE FROM flow_tables WHERE name = $1", &[&name])
                        .await
                        .map_err(db)?;
                }
                let created = tx
                    .execute(
                        "INSERT INTO flow_tables (name, columns, seed_sha256, node)
                         VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                        &[&name, &columns, &sha, &node],
                    )
                    .await
                    .map_err(db)?;
                if created == 0 {
                    let seeded: Option<String> = tx
                        .query_opt(
                            "SELECT seed_sha256 FROM flow_tables WHERE name = $1",
                            &[&name],
                        )
                        .await
                        .map_err(db)?
                        .and_then(|r| r.try_get(0).ok());
                    if seeded.as_deref() != Some(sha.as_str()) {
                        warn!(table = %name, file = %file, "the CSV differs from the one that seeded the shared table; it is not re-applied (set [tables] reseed = true)");
                    }
                    return Ok(None);
                }
                tx.execute(
                    "INSERT INTO table_rows (table_name, data, node)
                     SELECT $1, r.x, $3 FROM jsonb_array_elements($2) WITH ORDINALITY AS r(x, i)
                     ORDER BY r.i",
                    &[&name, &rows, &node],
                )
                .await
                .map_err(db)?;
                tx.commit().await.map_err(db)?;
                info!(table = %name, rows = count, "shared table seeded");
                Ok(Some(count))
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_are_bound_never_spliced() {
        let mut params: Vec<Param> = vec![Box::new("t".to_string())];
        let f = vec![
            ("number".to_string(), json!("' OR 1=1 --")),
            ("n".to_string(), json!(42)),
            ("gone".to_string(), Value::Null),
        ];
        let sql = filter_sql(&f, &mut params);
        assert_eq!(sql, " AND data @> $2 AND (data ->> $3) IS NULL");
        assert!(!sql.contains("OR 1=1"));
        assert_eq!(params.len(), 3);
        assert_eq!(
            values_object(&f),
            json!({"number": "' OR 1=1 --", "n": "42", "gone": null})
        );
    }

    #[test]
    fn rows_list_every_column_in_order() {
        let cols = vec!["a".to_string(), "b".to_string()];
        let r = row_json(&cols, 7, &json!({"b": "x", "zz": "ignored"}));
        assert_eq!(r, json!({"_id": 7, "a": null, "b": "x"}));
    }
}
