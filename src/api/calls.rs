//! `/v1/calls`: active calls and operator pause/resume, delegated to the call registry through
//! [`CallsView`](super::CallsView) so the API does not depend on call internals.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::Json;
use futures::Stream;
use serde_json::{json, Value};

use super::{ApiError, ApiState};

pub async fn list(State(st): State<ApiState>) -> Json<Value> {
    Json(json!({ "calls": st.calls.calls() }))
}

/// How often the live-calls stream looks for changes.
const STREAM_POLL: Duration = Duration::from_millis(500);

/// `GET /v1/calls/stream`: server-sent events. An `calls` event carries the same body as
/// `GET /v1/calls`, sent at once and then whenever the set of calls or any call's state
/// changes; a comment line every 15 s keeps proxies from closing an idle stream.
pub async fn stream(
    State(st): State<ApiState>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let events = futures::stream::unfold((st, None::<String>), |(st, last)| async move {
        loop {
            let body = json!({ "calls": st.calls.calls() }).to_string();
            if last.as_deref() != Some(body.as_str()) {
                let event = Event::default().event("calls").data(body.clone());
                return Some((Ok(event), (st, Some(body))));
            }
            tokio::time::sleep(STREAM_POLL).await;
        }
    });
    Sse::new(events).keep_alive(KeepAlive::default())
}

/// `POST /v1/calls/{call_id}/hangup`
pub async fn hangup(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Ok(Path(call_id)) = path else {
        return Err(ApiError::NotFound("no such call".into()));
    };
    if st.calls.hangup(&call_id) {
        tracing::info!(%call_id, "call hung up via API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::NotFound(format!("no active call {call_id:?}")))
    }
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
