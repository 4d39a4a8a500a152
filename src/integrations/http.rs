//! The `api` step (and a script's `fetch`): one HTTP request through reqwest with rustls on
//! ring, gated by the host allow-list, with `{secrets.NAME}` filled at send time, a size cap
//! on the response and a deadline.
//!
//! Result shape: `{"status": 200, "headers": {"content-type": "..."}, "body": <JSON or text>}`.

use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};
use serde_json::{json, Value};
use tracing::{debug, info};

use super::hosts::{find_refused, HostPolicy, PolicyResolver, Refused};
use super::secrets::{SecretError, Secrets, Used};
use super::StepError;
use crate::flow::{HttpAuth, HttpRequest};

/// A request fully described, before secrets are filled (what `api` and `fetch` share).
pub type Request = HttpRequest;

/// The response of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct Response {
    pub status: u16,
    pub headers: serde_json::Map<String, Value>,
    /// Parsed JSON when the response says it is JSON (and parses), else text.
    pub body: Value,
    /// The body as text (what `fetch().text()` returns).
    pub text: String,
}

impl Response {
    pub fn to_json(&self) -> Value {
        json!({"status": self.status, "headers": self.headers, "body": self.body})
    }
}

pub struct HttpExecutor {
    client: reqwest::Client,
    policy: Arc<HostPolicy>,
    secrets: Secrets,
    max_body: usize,
}

impl std::fmt::Debug for HttpExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpExecutor")
            .field("policy", &self.policy)
            .field("max_body", &self.max_body)
            .finish()
    }
}

/// A rustls client config on ring with the Mozilla roots (no OpenSSL, no aws-lc).
pub fn tls_config() -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        // ring supports TLS 1.2 and 1.3, the safe defaults: this cannot fail.
        .unwrap_or_else(|_| unreachable!("ring supports the default TLS versions"))
}

/// A plain client for operator-configured endpoints (webhooks): no allow-list, no redirects.
pub fn plain_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls_config())
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .user_agent(concat!("voxgate/", env!("CARGO_PKG_VERSION")))
        .build()
}

const METHODS: [&str; 7] = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"];

impl HttpExecutor {
    pub fn new(
        policy: HostPolicy,
        secrets: Secrets,
        max_body: usize,
        max_redirects: usize,
    ) -> Result<HttpExecutor, reqwest::Error> {
        let policy = Arc::new(policy);
        let redirect_policy = {
            let policy = policy.clone();
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() > max_redirects {
                    return attempt.error(format!("more than {max_redirects} redirects"));
                }
                match policy.check_url(attempt.url()) {
                    Ok(()) => attempt.follow(),
                    Err(refused) => attempt.error(refused),
                }
            })
        };
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config())
            // Proxies from the environment would bypass the address checks.
            .no_proxy()
            .dns_resolver(Arc::new(PolicyResolver {
                policy: policy.clone(),
            }))
            .redirect(redirect_policy)
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("voxgate/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(HttpExecutor {
            client,
            policy,
            secrets,
            max_body,
        })
    }

    pub fn secrets(&self) -> &Secrets {
        &self.secrets
    }

    /// Runs one request within `timeout` (connect, send, and reading the body).
    pub async fn execute(&self, req: &Request, timeout: Duration) -> Result<Response, StepError> {
        let mut used = Used::default();
        let result = self.execute_inner(req, timeout, &mut used).await;
        match result {
            Ok(mut resp) => {
                if !used.is_empty() {
                    used.redact_json(&mut resp.body);
                    resp.text = used.redact(&resp.text);
                    for v in resp.headers.values_mut() {
                        used.redact_json(v);
                    }
                }
                Ok(resp)
            }
            Err(e) => Err(e.redacted(&used)),
        }
    }

    async fn execute_inner(
        &self,
        req: &Request,
        timeout: Duration,
        used: &mut Used,
    ) -> Result<Response, StepError> {
        let method_name = req.method.trim().to_ascii_uppercase();
        if !METHODS.contains(&method_name.as_str()) {
            return Err(StepError::new(
                "http",
                format!(
                    "method `{}` is not one of {}",
                    req.method,
                    METHODS.join(", ")
                ),
            ));
        }
        let method = reqwest::Method::from_bytes(method_name.as_bytes())
            .map_err(|_| StepError::new("http", format!("bad method `{}`", req.method)))?;
        let secret_err = |e: SecretError| StepError::new("secret", e.to_string());
        let url_text = self
            .secrets
            .fill(req.url.trim(), used)
            .map_err(secret_err)?;
        let mut url = reqwest::Url::parse(&url_text)
            .map_err(|e| StepError::new("http", format!("bad URL: {e}")))?;
        if !req.query.is_empty() {
            let mut pairs = url.query_pairs_mut();
            for (k, v) in &req.query {
                let v = self.secrets.fill(v, used).map_err(secret_err)?;
                pairs.append_pair(k, &v);
            }
        }
        self.policy.check_url(&url).map_err(refused)?;

        let mut headers = HeaderMap::new();
        for (k, v) in &req.headers {
            let name = HeaderName::from_bytes(k.trim().as_bytes())
                .map_err(|_| StepError::new("http", format!("bad header name `{k}`")))?;
            let value = self.secrets.fill(v, used).map_err(secret_err)?;
            let value = HeaderValue::from_str(&value)
                .map_err(|_| StepError::new("http", format!("bad value for header `{k}`")))?;
            headers.append(name, value);
        }
        let mut builder = self.client.request(method.clone(), url.clone());
        match &req.auth {
            None => {}
            Some(HttpAuth::Basic { username, password }) => {
                let u = self.secrets.fill(username, used).map_err(secret_err)?;
                let p = self.secrets.fill(password, used).map_err(secret_err)?;
                builder = builder.basic_auth(u, Some(p));
            }
            Some(HttpAuth::Bearer { token }) => {
                let t = self.secrets.fill(token, used).map_err(secret_err)?;
                builder = builder.bearer_auth(t);
            }
        }
        match &req.body {
            None | Some(Value::Null) => {}
            Some(Value::String(text)) => {
                let text = self.secrets.fill(text, used).map_err(secret_err)?;
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(
                        CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                }
                builder = builder.body(text);
            }
            Some(other) => {
                let filled = self.secrets.fill_json(other, used).map_err(secret_err)?;
                let bytes = serde_json::to_vec(&filled)
                    .map_err(|e| StepError::new("http", format!("body: {e}")))?;
                if !headers.contains_key(CONTENT_TYPE) {
                    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                builder = builder.body(bytes);
            }
        }
        builder = builder.headers(headers);
        // The URL as the flow wrote it: placeholders, never secret values.
        let shown = used.redact(url.as_str());
        debug!(method = %method, url = %shown, "api request");
        let started = std::time::Instant::now();
        let fut = async {
            let mut resp = builder.send().await.map_err(|e| send_error(&e))?;
            let status = resp.status().as_u16();
            let mut header_map = serde_json::Map::new();
            for (name, value) in resp.headers() {
                let v = String::from_utf8_lossy(value.as_bytes()).into_owned();
                match header_map.get_mut(name.as_str()) {
                    Some(Value::String(prev)) => {
                        prev.push_str(", ");
                        prev.push_str(&v);
                    }
                    _ => {
                        header_map.insert(name.as_str().to_string(), Value::String(v));
                    }
                }
            }
            if let Some(len) = resp.content_length() {
                if len as usize > self.max_body {
                    return Err(too_large(self.max_body));
                }
            }
            let mut body = Vec::new();
            while let Some(chunk) = resp.chunk().await.map_err(|e| send_error(&e))? {
                if body.len() + chunk.len() > self.max_body {
                    return Err(too_large(self.max_body));
                }
                body.extend_from_slice(&chunk);
            }
            let is_json = header_map
                .get("content-type")
                .and_then(Value::as_str)
                .map(|ct| {
                    let mime = ct
                        .split(';')
                        .next()
                        .unwrap_or("")
                        .trim()
                        .to_ascii_lowercase();
                    mime == "application/json" || mime.ends_with("+json")
                })
                .unwrap_or(false);
            let text = String::from_utf8_lossy(&body).into_owned();
            let parsed = if is_json {
                serde_json::from_slice::<Value>(&body).ok()
            } else {
                None
            };
            Ok(Response {
                status,
                headers: header_map,
                body: parsed.unwrap_or_else(|| Value::String(text.clone())),
                text,
            })
        };
        let resp = tokio::time::timeout(timeout, fut).await.map_err(|_| {
            StepError::new(
                "timeout",
                format!("no complete response within {} ms", timeout.as_millis()),
            )
        })??;
        info!(
            method = %method,
            url = %shown,
            status = resp.status,
            ms = started.elapsed().as_millis() as u64,
            "api request done"
        );
        Ok(resp)
    }
}

fn refused(r: Refused) -> StepError {
    StepError::new("refused", r.to_string())
}

fn too_large(max: usize) -> StepError {
    StepError::new(
        "too_large",
        format!("the response is larger than {} KiB", max / 1024),
    )
}

/// A reqwest failure as a step error: refusals by the allow-list keep their own code.
fn send_error(e: &reqwest::Error) -> StepError {
    if let Some(r) = find_refused(e) {
        return refused(r);
    }
    if e.is_timeout() {
        return StepError::new("timeout", "the request timed out".to_string());
    }
    // Without the URL (it may carry a filled secret); the chain says what went wrong.
    let mut msg = String::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let part = err.to_string();
        if !msg.contains(&part) {
            if !msg.is_empty() {
                msg.push_str(": ");
            }
            msg.push_str(&part);
        }
        cur = err.source();
    }
    if let Some(url) = e.url() {
        msg = msg.replace(url.as_str(), "<url>");
    }
    StepError::new("http", msg)
}

#[cfg(test)]
mod tests;
