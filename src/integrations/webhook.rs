//! POSTing JSON to an operator's webhook: signed with HMAC-SHA256 when a secret is set,
//! retried with exponential backoff on connection errors, timeouts, 408, 429 and 5xx.
//!
//! Headers of every POST:
//! - `Content-Type: application/json`
//! - `X-Voxgate-Event: <event type>`
//! - `X-Voxgate-Delivery: <id>` (the same on every retry of one event, for de-duplication)
//! - `X-Voxgate-Timestamp: <unix seconds>`
//! - `X-Voxgate-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>` (with a secret)

use std::time::Duration;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::Secret;

/// One endpoint.
#[derive(Clone)]
pub struct Webhook {
    pub url: reqwest::Url,
    secret: Option<Secret>,
    client: reqwest::Client,
}

/// Why one delivery attempt failed, and whether another attempt may succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    pub message: String,
    pub retry: bool,
}

/// `sha256=<hex>` of HMAC-SHA256(secret, "<timestamp>.<body>").
pub fn signature(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length: new_from_slice cannot fail.
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret.as_bytes()) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// Backoff before attempt `n` (1-based; attempt 1 goes at once): 0.5 s, 1 s, 2 s ... max 30 s.
pub fn backoff(attempt: u32) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    let ms = 500u64.saturating_mul(1u64 << (attempt - 2).min(16));
    Duration::from_millis(ms.min(30_000))
}

impl Webhook {
    pub fn new(url: &str, secret: Option<Secret>, timeout: Duration) -> Result<Webhook, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("`{url}`: {e}"))?;
        let client = super::http::plain_client(timeout).map_err(|e| e.to_string())?;
        Ok(Webhook {
            url,
            secret,
            client,
        })
    }

    /// One attempt.
    pub async fn post(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
    ) -> Result<u16, AttemptError> {
        let ts = chrono::Utc::now().timestamp();
        let mut req = self
            .client
            .post(self.url.clone())
            .header("content-type", "application/json")
            .header("x-voxgate-event", event)
            .header("x-voxgate-delivery", delivery)
            .header("x-voxgate-timestamp", ts.to_string())
            .body(body.to_vec());
        if let Some(secret) = &self.secret {
            req = req.header("x-voxgate-signature", signature(secret.expose(), ts, body));
        }
        match req.send().await {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if resp.status().is_success() {
                    Ok(status)
                } else {
                    Err(AttemptError {
                        message: format!("the webhook answered {status}"),
                        retry: status == 408 || status == 429 || status >= 500,
                    })
                }
            }
            Err(e) => Err(AttemptError {
                message: if e.is_timeout() {
                    "the webhook timed out".into()
                } else {
                    format!("cannot reach the webhook: {}", chain(&e))
                },
                retry: true,
            }),
        }
    }

    /// Attempts until success, a permanent failure or `max_attempts`, with [`backoff`].
    pub async fn deliver(
        &self,
        event: &str,
        delivery: &str,
        body: &[u8],
        max_attempts: u32,
    ) -> Result<u32, AttemptError> {
        let mut attempt = 1;
        loop {
            tokio::time::sleep(backoff(attempt)).await;
            match self.post(event, delivery, body).await {
                Ok(_) => return Ok(attempt),
                Err(e) if !e.retry || attempt >= max_attempts => return Err(e),
                Err(e) => {
                    tracing::debug!(event, delivery, attempt, error = %e.message, "webhook attempt failed; retrying");
                    attempt += 1;
                }
            }
        }
    }
}

fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = String::new();
    let mut cur = e.source();
    while let Some(err) = cur {
        msg = err.to_string();
        cur = err.source();
    }
    if msg.is_empty() {
        "connection failed".into()
    } else {
        msg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // HMAC-SHA256("key", "1700000000.{}") computed independently (python hmac module).
        let sig = signature("key", 1_700_000_000, b"{}");
        assert_eq!(
            sig,
            "sha256=9d713ed406bb7076d4123f0dc2c39d2df5c654ed4b0cd56b52c8b4c940bd63ae"
        );
        assert_eq!(sig.len(), 7 + 64);
        assert_ne!(sig, signature("key2", 1_700_000_000, b"{}"));
        assert_ne!(sig, signature("key", 1_700_000_001, b"{}"));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::ZERO);
        assert_eq!(backoff(2), Duration::from_millis(500));
        assert_eq!(backoff(3), Duration::from_millis(1000));
        assert_eq!(backoff(5), Duration::from_millis(4000));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }
}
