//! Bearer-token check for every `/v1/` path.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};

use super::{ApiError, ApiState};

/// Middleware: passes the request on only with `Authorization: Bearer <token>`, or with a
/// console session cookie (writes with the cookie also need the console's CSRF header).
pub async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    if authorized(&state.token, req.headers()) || console_session_allows(&state, &req) {
        next.run(req).await
    } else {
        tracing::debug!(path = %req.uri().path(), "API request without valid token");
        ApiError::Unauthorized.into_response()
    }
}

fn console_session_allows(state: &ApiState, req: &Request) -> bool {
    use super::console;
    if !console::has_session(state, req.headers()) {
        return false;
    }
    let read_only = matches!(*req.method(), Method::GET | Method::HEAD);
    read_only
        || req
            .headers()
            .get(console::CSRF_HEADER)
            .is_some_and(|v| v.as_bytes() == console::CSRF_VALUE.as_bytes())
}

/// True when `given` is the configured token (constant time; an empty token never matches).
pub fn token_matches(expected: &str, given: &str) -> bool {
    !expected.is_empty() && constant_time_eq(given, expected)
}

/// True when the header carries exactly `expected`. An empty configured token never matches,
/// so a missing config value cannot open the API.
pub fn authorized(expected: &str, headers: &HeaderMap) -> bool {
    if expected.is_empty() {
        return false;
    }
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some((scheme, token)) = value.trim().split_once(' ') else {
        return false;
    };
    scheme.eq_ignore_ascii_case("bearer") && constant_time_eq(token.trim(), expected)
}

/// Compares digests rather than the strings so neither the content nor the length of the
/// token leaks through timing.
fn constant_time_eq(a: &str, b: &str) -> bool {
    let (da, db) = (Sha256::digest(a.as_bytes()), Sha256::digest(b.as_bytes()));
    da.iter()
        .zip(db.iter())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn bearer_token_rules() {
        assert!(authorized("s3cret", &with("Bearer s3cret")));
        assert!(authorized("s3cret", &with("bearer s3cret")));
        assert!(!authorized("s3cret", &with("Bearer s3cre")));
        assert!(!authorized("s3cret", &with("Bearer s3cretX")));
        assert!(!authorized("s3cret", &with("Basic s3cret")));
        assert!(!authorized("s3cret", &with("s3cret")));
        assert!(!authorized("s3cret", &HeaderMap::new()));
        assert!(!authorized("", &with("Bearer ")));
    }
}
