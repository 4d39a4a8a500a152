//! `/v1/cdrs` and `/v1/events`: read-only views of the JSON-lines files other parts of the
//! gateway append to. A missing file is an empty list; a malformed line (for instance one
//! still being written) is skipped with a warning rather than failing the request.

use std::collections::HashMap;
use std::path::Path;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use serde_json::{json, Value};

use super::{parse_limit, query_map, ApiError, ApiState};

/// Parses JSON lines newest first (last line first), keeping those `keep` accepts, up to
/// `limit`. Returns the records and how many lines were malformed.
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

async fn read(path: &Path) -> Result<String, ApiError> {
    match tokio::fs::read(path).await {
        Ok(b) => Ok(String::from_utf8_lossy(&b).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(ApiError::Internal(format!(
            "cannot read {}: {e}",
            path.display()
        ))),
    }
}

/// A string filter on a top-level key; absent filter keeps everything.
fn field_is(v: &Value, key: &str, want: Option<&String>) -> bool {
    want.is_none_or(|w| v.get(key).and_then(Value::as_str) == Some(w.as_str()))
}

async fn serve(
    path: &Path,
    params: &HashMap<String, String>,
    filters: &[&str],
) -> Result<Vec<Value>, ApiError> {
    let limit = parse_limit(params)?;
    let text = read(path).await?;
    let (records, bad) = newest_first(&text, limit, |v| {
        filters.iter().all(|k| field_is(v, k, params.get(*k)))
    });
    if bad > 0 {
        tracing::warn!(file = %path.display(), lines = bad, "skipped malformed JSON lines");
    }
    Ok(records)
}

/// `GET /v1/cdrs?limit=&call_id=`
pub async fn cdrs(
    State(st): State<ApiState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query_map(query)?;
    let cdrs = serve(&st.cdr_file, &params, &["call_id"]).await?;
    Ok(Json(json!({ "cdrs": cdrs })))
}

/// `GET /v1/events?name=&call_id=&limit=`
pub async fn events(
    State(st): State<ApiState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let params = query_map(query)?;
    let events = serve(&st.events_file, &params, &["name", "call_id"]).await?;
    Ok(Json(json!({ "events": events })))
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
