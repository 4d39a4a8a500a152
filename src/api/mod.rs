//! The operator HTTP API (axum): health, Prometheus metrics, and the token-protected `/v1/`
//! endpoints for recordings, calls, CDRs and events (CONTRACT §5; docs/http-api.md).
//!
//! The API reads state through narrow seams (the recordings dir, the [`CallsView`] trait, the
//! [`crate::store::Store`], a metrics render closure) so it can be tested without a running
//! gateway.

mod auth;
mod calls;
pub mod console;
mod error;
pub mod integrations;
mod journal;
pub mod openapi;
pub mod ranges;
mod recordings;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{middleware, Json, Router};

pub use auth::authorized;
pub use error::ApiError;
pub use integrations::IntegrationsApi;
pub use recordings::ListQuery;

/// What the API needs from the call registry.
pub trait CallsView: Send + Sync {
    /// One JSON object per active call.
    fn calls(&self) -> Vec<serde_json::Value>;
    /// Pauses or resumes the bot on a call; false when no such call is active.
    fn set_paused(&self, call_id: &str, paused: bool) -> bool;
    /// Ends a call (BYE, or a final response before answer); false when no such call.
    fn hangup(&self, call_id: &str) -> bool;
}

/// What the API needs from trunk registration (`GET /v1/trunks`).
pub trait TrunksView: Send + Sync {
    /// One JSON object per configured trunk.
    fn trunks(&self) -> Vec<serde_json::Value>;
}

/// No trunks configured.
pub struct NoTrunks;

impl TrunksView for NoTrunks {
    fn trunks(&self) -> Vec<serde_json::Value> {
        Vec::new()
    }
}

/// Renders the `/metrics` body.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Shared state of every handler.
#[derive(Clone)]
pub struct ApiState {
    /// Bearer token for `/v1/`; an empty token locks `/v1/` entirely.
    pub token: String,
    /// This node's recordings dir: audio made here is served from it.
    pub recordings_dir: PathBuf,
    pub calls: Arc<dyn CallsView>,
    /// CDRs, events, transcripts and recording metadata (embedded files or PostgreSQL).
    pub store: Arc<dyn crate::store::Store>,
    pub metrics: MetricsRender,
    pub trunks: Arc<dyn TrunksView>,
    /// Console logins (cookie sessions that stand in for the bearer token).
    pub sessions: Arc<console::Sessions>,
}

impl ApiState {
    /// A `MetricsRender` backed by the process's Prometheus recorder.
    pub fn prometheus(handle: metrics_exporter_prometheus::PrometheusHandle) -> MetricsRender {
        Arc::new(move || handle.render())
    }
}

/// Largest `limit` any list endpoint accepts.
pub const MAX_LIMIT: usize = 1000;
/// `limit` when none is given.
pub const DEFAULT_LIMIT: usize = 100;

/// Builds the whole API. Serve it with `axum::serve(listener, router(state))`.
pub fn router(state: ApiState) -> Router {
    let v1 = Router::new()
        .route("/recordings", get(recordings::list))
        .route(
            "/recordings/{id}",
            get(recordings::get_one).delete(recordings::delete),
        )
        // `get` also answers HEAD (axum drops the body, our Content-Length stays).
        .route("/recordings/{id}/audio", get(recordings::audio))
        .route("/recordings/{id}/peaks", get(recordings::peaks))
        .route("/calls", get(calls::list))
        .route("/calls/stream", get(calls::stream))
        .route("/calls/{call_id}/pause", post(calls::pause))
        .route("/calls/{call_id}/resume", post(calls::resume))
        .route("/calls/{call_id}/hangup", post(calls::hangup))
        .route("/trunks", get(trunks))
        .route("/calls/{call_id}/transcript", get(integrations::transcript))
        .route(
            "/tables",
            get(integrations::list_tables).post(integrations::create_table),
        )
        .route(
            "/tables/{name}",
            get(integrations::get_table).delete(integrations::drop_table),
        )
        .route(
            "/tables/{name}/rows",
            get(integrations::list_rows).post(integrations::insert_row),
        )
        .route(
            "/tables/{name}/rows/{id}",
            get(integrations::get_row)
                .patch(integrations::update_row)
                .delete(integrations::delete_row),
        )
        .route("/cdrs", get(journal::cdrs))
        .route("/events", get(journal::events))
        .route("/openapi.json", get(openapi::serve))
        .fallback(not_found)
        // A layer (not route_layer) so unknown /v1/ paths also answer 401 without a token.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .nest("/v1", v1)
        .merge(console::router())
        .fallback(not_found)
        .with_state(state)
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok"}))
}

async fn metrics(State(st): State<ApiState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        (st.metrics)(),
    )
}

async fn trunks(State(st): State<ApiState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "trunks": st.trunks.trunks() }))
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

/// The query string as a map, with a readable 400 when it cannot be decoded.
pub(crate) fn query_map(
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<HashMap<String, String>, ApiError> {
    query
        .map(|Query(q)| q)
        .map_err(|e| ApiError::BadRequest(format!("invalid query string: {}", e.body_text())))
}

/// `limit`: 1..=1000, default 100.
pub(crate) fn parse_limit(params: &HashMap<String, String>) -> Result<usize, ApiError> {
    match params.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "`limit` must be an integer from 1 to {MAX_LIMIT}, got {v:?}"
            ))),
        },
    }
}
