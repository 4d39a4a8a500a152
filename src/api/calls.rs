//! `/v1/calls`: active calls and operator pause/resume, delegated to the call registry through
//! [`CallsView`](super::CallsView) so the API does not depend on call internals.

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::{ApiError, ApiState};

pub async fn list(State(st): State<ApiState>) -> Json<Value> {
    Json(json!({ "calls": st.calls.calls() }))
}

pub async fn pause(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    set(&st, path, true)
}

pub async fn resume(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    set(&st, path, false)
}

fn set(
    st: &ApiState,
    path: Result<Path<String>, PathRejection>,
    paused: bool,
) -> Result<StatusCode, ApiError> {
    let Ok(Path(call_id)) = path else {
        return Err(ApiError::NotFound("no such call".into()));
    };
    if st.calls.set_paused(&call_id, paused) {
        tracing::info!(%call_id, paused, "call paused/resumed via API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no active call {call_id:?}")))
    }
}
