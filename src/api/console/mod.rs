//! The operator web console at `/console` (CONTRACT §9; docs/console.md): one HTML page and a
//! small plain-JavaScript app, embedded in the binary, that uses the same `/v1/` API as
//! everyone else. No build step, no CDN.
//!
//! Login: the operator types the API token into a form; on a match voxgate creates a random
//! session id, keeps only its SHA-256 (in memory, [`SESSION_TTL`]) and sets it as an
//! `HttpOnly; SameSite=Strict` cookie. The `/v1/` token check accepts that cookie in place of
//! the bearer header, so the `<audio>` element and `EventSource` (which cannot send headers)
//! work; writes made with the cookie must also carry `X-Requested-With: voxgate-console`.
//! Without a session the console serves the login form and nothing else.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::rejection::{FormRejection, PathRejection};
use axum::extract::{Form, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{ApiError, ApiState};

/// The session cookie's name.
pub const COOKIE: &str = "voxgate_session";
/// How long a console login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Logins kept at once; the oldest goes when a new one would exceed this.
pub const MAX_SESSIONS: usize = 256;
/// The header that cookie-authenticated writes must carry (a cross-site form cannot set it).
pub const CSRF_HEADER: &str = "x-requested-with";
pub const CSRF_VALUE: &str = "voxgate-console";
/// Slows down token guessing through the login form.
const FAILED_LOGIN_DELAY: Duration = Duration::from_millis(400);

const INDEX_HTML: &str = include_str!("index.html");
const LOGIN_HTML: &str = include_str!("login.html");
const CONSOLE_JS: &str = include_str!("console.js");
const CONSOLE_CSS: &str = include_str!("console.css");

/// Console logins: SHA-256 of each session id -> when it expires.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<[u8; 32], Instant>>,
}

fn digest(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Instant>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new session; returns its id (64 hex chars, 256 random bits).
    pub fn create(&self) -> String {
        self.create_at(Instant::now())
    }

    fn create_at(&self, now: Instant) -> String {
        let mut raw = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut raw);
        let id = hex::encode(raw);
        let mut map = self.lock();
        map.retain(|_, exp| *exp > now);
        while map.len() >= MAX_SESSIONS {
            let oldest = map.iter().min_by_key(|(_, exp)| **exp).map(|(k, _)| *k);
            match oldest {
                Some(k) => map.remove(&k),
                None => break,
            };
        }
        map.insert(digest(&id), now + SESSION_TTL);
        id
    }

    pub fn valid(&self, id: &str) -> bool {
        self.valid_at(id, Instant::now())
    }

    fn valid_at(&self, id: &str, now: Instant) -> bool {
        if id.len() != 64 {
            return false;
        }
        self.lock().get(&digest(id)).is_some_and(|exp| *exp > now)
    }

    pub fn remove(&self, id: &str) {
        self.lock().remove(&digest(id));
    }
}

/// The session id from the `Cookie` header(s), if any.
pub fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
}

/// True when the request carries a live console session.
pub fn has_session(state: &ApiState, headers: &HeaderMap) -> bool {
    session_cookie(headers).is_some_and(|id| state.sessions.valid(&id))
}

/// The console's routes (merged into the API router).
pub fn router() -> Router<ApiState> {
    Router::new()
        .route("/console", get(page))
        .route("/console/", get(|| async { Redirect::to("/console") }))
        .route("/console/login", post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/{name}", get(asset))
}

/// Headers every console response carries: no caching of operator data, no framing, and a
/// policy that allows nothing but this origin (no inline script, no third party).
fn secure(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    let set = |h: &mut HeaderMap, name: header::HeaderName, v: &'static str| {
        h.insert(name, HeaderValue::from_static(v));
    };
    set(h, header::CACHE_CONTROL, "no-store");
    set(
        h,
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; \
         connect-src 'self'; media-src 'self'; frame-ancestors 'none'; form-action 'self'; \
         base-uri 'none'",
    );
    set(h, header::X_FRAME_OPTIONS, "DENY");
    set(h, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(h, header::REFERRER_POLICY, "no-referrer");
    resp
}

fn html(status: StatusCode, body: String) -> Response {
    secure(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

fn login_page(status: StatusCode, error: Option<&str>) -> Response {
    let msg = error
        .map(|e| format!("<p class=\"error\" id=\"login-error\" role=\"alert\">{e}</p>"))
        .unwrap_or_default();
    html(status, LOGIN_HTML.replace("<!--ERROR-->", &msg))
}

/// `GET /console`: the app with a session, the login form without.
async fn page(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    if has_session(&st, &headers) {
        html(StatusCode::OK, INDEX_HTML.to_string())
    } else {
        login_page(StatusCode::OK, None)
    }
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

/// `POST /console/login` (form field `token`).
async fn login(
    State(st): State<ApiState>,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    let Ok(Form(form)) = form else {
        return login_page(StatusCode::BAD_REQUEST, Some("Enter the API token."));
    };
    if !super::auth::token_matches(&st.token, form.token.trim()) {
        tracing::warn!("console login with a wrong token");
        tokio::time::sleep(FAILED_LOGIN_DELAY).await;
        return login_page(StatusCode::UNAUTHORIZED, Some("Wrong token."));
    }
    let id = st.sessions.create();
    tracing::info!("console login");
    let cookie = format!(
        "{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    );
    let mut resp = Redirect::to("/console").into_response();
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    secure(resp)
}

/// `POST /console/logout`: forgets the session and clears the cookie.
async fn logout(State(st): State<ApiState>, headers: HeaderMap) -> Response {
    if let Some(id) = session_cookie(&headers) {
        st.sessions.remove(&id);
    }
    let mut resp = Redirect::to("/console").into_response();
    resp.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static("voxgate_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    );
    secure(resp)
}

/// `GET /console/assets/{name}`: the app's script and style, for logged-in sessions only
/// (the style is also used by the login form).
async fn asset(
    State(st): State<ApiState>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Response {
    let Ok(Path(name)) = name else {
        return ApiError::NotFound("no such asset".into()).into_response();
    };
    let (body, kind, public) = match name.as_str() {
        "console.js" => (CONSOLE_JS, "text/javascript; charset=utf-8", false),
        "console.css" => (CONSOLE_CSS, "text/css; charset=utf-8", true),
        _ => return ApiError::NotFound("no such asset".into()).into_response(),
    };
    if !public && !has_session(&st, &headers) {
        return ApiError::Unauthorized.into_response();
    }
    secure(([(header::CONTENT_TYPE, kind)], body).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_are_bounded() {
        let s = Sessions::new();
        let t0 = Instant::now();
        let id = s.create_at(t0);
        assert_eq!(id.len(), 64);
        assert!(s.valid_at(&id, t0));
        assert!(!s.valid_at(&id, t0 + SESSION_TTL));
        assert!(!s.valid_at("nope", t0));
        assert!(!s.valid_at(&"0".repeat(64), t0));
        s.remove(&id);
        assert!(!s.valid_at(&id, t0));
        let first = s.create_at(t0);
        for i in 1..=MAX_SESSIONS {
            s.create_at(t0 + Duration::from_millis(i as u64));
        }
        assert!(!s.valid_at(&first, t0), "the oldest login was evicted");
        assert_eq!(s.lock().len(), MAX_SESSIONS);
    }

    #[test]
    fn cookie_parsing() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; voxgate_session=abc ; b=2"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("voxgate_session=x"),
        );
        assert_eq!(session_cookie(&h).as_deref(), Some("x"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }
}
