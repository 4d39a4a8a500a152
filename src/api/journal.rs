//! `/v1/cdrs` and `/v1/events`: read-only views of what the gateway recorded, through the
//! store (the embedded JSON-lines files, or the shared PostgreSQL with every node's records).

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::{parse_limit, query_map, ApiError, ApiState};
use crate::store::JournalQuery;

fn journal_query(params: &HashMap<String, String>) -> Result<JournalQuery, ApiError> {
    Ok(JournalQuery {
        limit: parse_limit(params)?,
        call_id: params.get("call_id").cloned(),
        name: params.get("name").cloned(),
    })
}

/// `GET /v1/cdrs?limit=&call_id=`
pub async fn cdrs(
    State(st): State<ApiState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = journal_query(&query_map(query)?)?;
    let cdrs = st.store.cdrs(&q).await?;
    Ok(Json(json!({ "cdrs": cdrs })))
}

/// `GET /v1/events?name=&call_id=&limit=`
pub async fn events(
    State(st): State<ApiState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = journal_query(&query_map(query)?)?;
    let events = st.store.events(&q).await?;
    Ok(Json(json!({ "events": events })))
}
