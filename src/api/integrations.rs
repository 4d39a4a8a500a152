//! `/v1/tables...` (the `table` step's tables) and `/v1/calls/{call_id}/transcript`.
//!
//! Their state ([`IntegrationsApi`]) is an `Extension` layered on the router by the gateway,
//! so the API can be built (and tested) without it: absent, these paths answer 404
//! `not configured`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde_json::{json, Value};

use super::error::blocking;
use super::{parse_limit, ApiError};
use crate::integrations::tables::{object_pairs, query_filter, TableError, TableStore};
use crate::integrations::TranscriptStore;

/// What these endpoints read and change.
#[derive(Clone)]
pub struct IntegrationsApi {
    pub tables: Arc<TableStore>,
    pub transcripts: Arc<TranscriptStore>,
}

type Ext = Option<Extension<IntegrationsApi>>;

fn api(ext: Ext) -> Result<IntegrationsApi, ApiError> {
    ext.map(|Extension(a)| a)
        .ok_or_else(|| ApiError::NotFound("integrations are not configured".into()))
}

impl From<TableError> for ApiError {
    fn from(e: TableError) -> Self {
        match e {
            TableError::UnknownTable(_) | TableError::UnknownRow { .. } => {
                ApiError::NotFound(e.to_string())
            }
            TableError::Exists(_) => ApiError::Conflict(e.to_string()),
            e if e.is_client_error() => ApiError::BadRequest(e.to_string()),
            e => ApiError::Internal(e.to_string()),
        }
    }
}

/// A table name from the path; anything that cannot be a table name is simply not found.
fn name_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    match path {
        Ok(Path(n)) if crate::integrations::tables::valid_identifier(&n) => Ok(n),
        _ => Err(ApiError::NotFound("no such table".into())),
    }
}

fn body(json: Result<Json<Value>, JsonRejection>) -> Result<Value, ApiError> {
    json.map(|Json(v)| v)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {}", e.body_text())))
}

/// `GET /v1/tables`
pub async fn list_tables(ext: Ext) -> Result<Json<Value>, ApiError> {
    let a = api(ext)?;
    let tables = blocking(move || Ok(a.tables.tables()?)).await?;
    Ok(Json(
        json!({"tables": tables.iter().map(|t| t.to_json()).collect::<Vec<_>>()}),
    ))
}

/// `POST /v1/tables` `{"name": "vip", "columns": ["number", "name"]}`
pub async fn create_table(
    ext: Ext,
    json: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let a = api(ext)?;
    let v = body(json)?;
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("`name` (string) is required".into()))?
        .to_string();
    let columns: Vec<String> = v
        .get("columns")
        .and_then(Value::as_array)
        .ok_or_else(|| ApiError::BadRequest("`columns` (list of names) is required".into()))?
        .iter()
        .map(|c| {
            c.as_str()
                .map(str::to_string)
                .ok_or_else(|| ApiError::BadRequest("column names are strings".into()))
        })
        .collect::<Result<_, _>>()?;
    let info = blocking(move || Ok(a.tables.create_table(&name, &columns)?)).await?;
    Ok((StatusCode::CREATED, Json(info.to_json())))
}

/// `GET /v1/tables/{name}`
pub async fn get_table(
    ext: Ext,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = api(ext)?;
    let name = name_of(path)?;
    let info = blocking(move || {
        let all = a.tables.tables()?;
        all.into_iter()
            .find(|t| t.name == name)
            .ok_or_else(|| ApiError::NotFound(format!("no table `{name}`")))
    })
    .await?;
    Ok(Json(info.to_json()))
}

/// `DELETE /v1/tables/{name}`
pub async fn drop_table(
    ext: Ext,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let a = api(ext)?;
    let name = name_of(path)?;
    blocking(move || Ok(a.tables.drop_table(&name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/tables/{name}/rows?column=value&limit=&offset=`
pub async fn list_rows(
    ext: Ext,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<BTreeMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = api(ext)?;
    let name = name_of(path)?;
    let params = query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))?;
    let limit = parse_limit(
        &params
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<std::collections::HashMap<_, _>>(),
    )?;
    let offset = match params.get("offset") {
        None => 0,
        Some(o) => o.parse::<usize>().map_err(|_| {
            ApiError::BadRequest(format!(
                "`offset` must be a non-negative integer, got {o:?}"
            ))
        })?,
    };
    let filter = query_filter(&params);
    let (rows, count) = blocking(move || Ok(a.tables.find(&name, &filter, limit, offset)?)).await?;
    Ok(Json(json!({"rows": rows, "count": count})))
}

/// `POST /v1/tables/{name}/rows` `{"column": "value", ...}`
pub async fn insert_row(
    ext: Ext,
    path: Result<Path<String>, PathRejection>,
    json: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let a = api(ext)?;
    let name = name_of(path)?;
    let values = object_pairs(&body(json)?)?;
    if values.is_empty() {
        return Err(ApiError::BadRequest("no columns to insert".into()));
    }
    let row = blocking(move || {
        let id = a.tables.insert(&name, &values)?;
        Ok(a.tables.get_row(&name, id)?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(row)))
}

fn row_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, i64), ApiError> {
    let Ok(Path((name, id))) = path else {
        return Err(ApiError::NotFound("no such row".into()));
    };
    if !crate::integrations::tables::valid_identifier(&name) {
        return Err(ApiError::NotFound("no such table".into()));
    }
    let id = id
        .parse::<i64>()
        .map_err(|_| ApiError::NotFound(format!("no row {id:?}")))?;
    Ok((name, id))
}

/// `GET /v1/tables/{name}/rows/{id}`
pub async fn get_row(
    ext: Ext,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = api(ext)?;
    let (name, id) = row_path(path)?;
    Ok(Json(
        blocking(move || Ok(a.tables.get_row(&name, id)?)).await?,
    ))
}

/// `PATCH /v1/tables/{name}/rows/{id}` `{"column": "new value"}`
pub async fn update_row(
    ext: Ext,
    path: Result<Path<(String, String)>, PathRejection>,
    json: Result<Json<Value>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = api(ext)?;
    let (name, id) = row_path(path)?;
    let values = object_pairs(&body(json)?)?;
    let row = blocking(move || {
        a.tables.update_row(&name, id, &values)?;
        Ok(a.tables.get_row(&name, id)?)
    })
    .await?;
    Ok(Json(row))
}

/// `DELETE /v1/tables/{name}/rows/{id}`
pub async fn delete_row(
    ext: Ext,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let a = api(ext)?;
    let (name, id) = row_path(path)?;
    blocking(move || Ok(a.tables.delete_row(&name, id)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/calls/{call_id}/transcript`: live while the call runs, from this node's files
/// after, else from the store (another node's call, with `[store] url`).
pub async fn transcript(
    axum::extract::State(st): axum::extract::State<super::ApiState>,
    ext: Ext,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let a = api(ext)?;
    let Ok(Path(call_id)) = path else {
        return Err(ApiError::NotFound("no such call".into()));
    };
    let store = a.transcripts.clone();
    let id = call_id.clone();
    let v = blocking(move || {
        store
            .get_blocking(&id)
            .map_err(|e| ApiError::Internal(format!("transcript of {id:?}: {e}")))
    })
    .await?;
    if let Some(v) = v {
        return Ok(Json(v));
    }
    match st.store.transcript(&call_id).await {
        Ok(Some(v)) => Ok(Json(v)),
        Ok(None) => Err(ApiError::NotFound(format!(
            "no transcript for call {call_id:?}"
        ))),
        Err(e) => Err(ApiError::Internal(format!(
            "transcript of {call_id:?}: {e}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::{to_bytes, Body};
    use axum::http::{Method, Request};
    use tower::ServiceExt;

    const TOKEN: &str = "t0ken";

    struct NoCalls;
    impl super::super::CallsView for NoCalls {
        fn calls(&self) -> Vec<Value> {
            vec![]
        }
        fn set_paused(&self, _: &str, _: bool) -> bool {
            false
        }
        fn hangup(&self, _: &str) -> bool {
            false
        }
    }

    fn app(with: bool) -> (axum::Router, Arc<TranscriptStore>, tempfile::TempDir) {
        let tmp = tempfile::tempdir().unwrap();
        let state = super::super::ApiState {
            token: TOKEN.into(),
            recordings_dir: tmp.path().join("rec"),
            calls: Arc::new(NoCalls),
            store: Arc::new(crate::store::file::FileStore::new(
                "node-t".into(),
                tmp.path().to_path_buf(),
                tmp.path().join("rec"),
                None,
            )),
            metrics: Arc::new(String::new),
            trunks: Arc::new(super::super::NoTrunks),
            sessions: Arc::new(super::super::console::Sessions::new()),
        };
        let tables = Arc::new(TableStore::in_memory().unwrap());
        std::fs::write(tmp.path().join("vip.csv"), "number,name\n+3225550001,Ann\n").unwrap();
        tables.seed_dir(tmp.path(), false).unwrap();
        let transcripts = Arc::new(TranscriptStore::new(tmp.path().join("transcripts")));
        let mut router = super::super::router(state);
        if with {
            router = router.layer(Extension(IntegrationsApi {
                tables,
                transcripts: transcripts.clone(),
            }));
        }
        (router, transcripts, tmp)
    }

    async fn call(
        app: &axum::Router,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header("authorization", format!("Bearer {TOKEN}"));
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(
                body.map(|b| Body::from(b.to_string()))
                    .unwrap_or_else(Body::empty),
            )
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let bytes = to_bytes(resp.into_body(), 1 << 20).await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    #[tokio::test]
    async fn tables_crud() {
        let (app, _, _tmp) = app(true);
        let (s, v) = call(&app, Method::GET, "/v1/tables", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(
            v["tables"],
            json!([{"name": "vip", "columns": ["number", "name"], "rows": 1}])
        );
        let (s, v) = call(
            &app,
            Method::POST,
            "/v1/tables/vip/rows",
            Some(json!({"number": "+3225550002", "name": "Bob"})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        assert_eq!(v, json!({"_id": 2, "number": "+3225550002", "name": "Bob"}));
        let (s, v) = call(&app, Method::GET, "/v1/tables/vip/rows?name=Bob", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["rows"].as_array().unwrap().len(), 1);
        assert_eq!(v["count"], 1);
        let (_, v) = call(
            &app,
            Method::GET,
            "/v1/tables/vip/rows?number=%27%20OR%201%3D1%20--",
            None,
        )
        .await;
        assert_eq!(v, json!({"rows": [], "count": 0}));
        let (s, v) = call(
            &app,
            Method::PATCH,
            "/v1/tables/vip/rows/2",
            Some(json!({"name": "Robert"})),
        )
        .await;
        assert_eq!((s, v["name"].clone()), (StatusCode::OK, json!("Robert")));
        let (s, _) = call(&app, Method::DELETE, "/v1/tables/vip/rows/2", None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        let (s, _) = call(&app, Method::GET, "/v1/tables/vip/rows/2", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, v) = call(&app, Method::GET, "/v1/tables/vip/rows?bogus=1", None).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
        let (s, _) = call(&app, Method::GET, "/v1/tables/nope/rows", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = call(&app, Method::GET, "/v1/tables/..%2F..%2Fetc/rows", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        let (s, _) = call(
            &app,
            Method::POST,
            "/v1/tables",
            Some(json!({"name": "notes", "columns": ["text"]})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED);
        let (s, _) = call(
            &app,
            Method::POST,
            "/v1/tables",
            Some(json!({"name": "notes", "columns": ["text"]})),
        )
        .await;
        assert_eq!(s, StatusCode::CONFLICT);
        let (s, _) = call(
            &app,
            Method::POST,
            "/v1/tables",
            Some(json!({"name": "bad name", "columns": ["text"]})),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
        let (s, v) = call(&app, Method::GET, "/v1/tables/notes", None).await;
        assert_eq!((s, v["rows"].clone()), (StatusCode::OK, json!(0)));
        let (s, _) = call(&app, Method::DELETE, "/v1/tables/notes", None).await;
        assert_eq!(s, StatusCode::NO_CONTENT);
        // The token is required.
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/v1/tables")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn transcript_live_and_after() {
        let (app, store, _tmp) = app(true);
        let t = store.open("c-1", std::time::Instant::now(), chrono::Utc::now());
        t.lock().unwrap().dtmf(std::time::Instant::now(), '7');
        let (s, v) = call(&app, Method::GET, "/v1/calls/c-1/transcript", None).await;
        assert_eq!(s, StatusCode::OK);
        assert_eq!(v["call_id"], "c-1");
        assert_eq!(v["entries"][0]["kind"], "dtmf");
        assert_eq!(v["entries"][0]["text"], "7");
        store.finish("c-1");
        let (s, v) = call(&app, Method::GET, "/v1/calls/c-1/transcript", None).await;
        assert_eq!(
            (s, v["entries"][0]["text"].clone()),
            (StatusCode::OK, json!("7"))
        );
        let (s, _) = call(&app, Method::GET, "/v1/calls/unknown/transcript", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
    }

    #[tokio::test]
    async fn absent_extension_is_not_found() {
        let (app, _, _tmp) = app(false);
        let (s, v) = call(&app, Method::GET, "/v1/tables", None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        assert!(v["message"].as_str().unwrap().contains("not configured"));
    }
}
