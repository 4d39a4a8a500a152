//! `json_builder` events and `recording.ready`: stored in the events journal (`/v1/events`)
//! and POSTed to `[events] webhook_url` through a bounded queue, so a slow or dead webhook
//! never holds a call up. Deliveries run concurrently (at most [`MAX_IN_FLIGHT`]), each with
//! its own retries (see `webhook.rs`), so their order at the receiver is not guaranteed; each
//! body carries `ts` and the delivery id is in `X-Voxgate-Delivery`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::{mpsc, Semaphore};
use tracing::{info, warn};

use super::webhook::Webhook;
use super::InitError;
use crate::config::EventsConfig;

/// Appends one record to the events journal (`/v1/events`).
pub type EventLog = Arc<dyn Fn(Value) + Send + Sync>;

/// Deliveries in progress at once.
pub const MAX_IN_FLIGHT: usize = 8;

struct Outgoing {
    event: String,
    delivery: String,
    body: Vec<u8>,
}

/// Shared by every call.
#[derive(Clone)]
pub struct EventSink {
    log: EventLog,
    queue: Option<mpsc::Sender<Outgoing>>,
    dropped: Arc<AtomicU64>,
}

fn delivery_id() -> String {
    format!("dlv_{:016x}", rand::random::<u64>())
}

impl EventSink {
    /// Starts the delivery task when a webhook is configured (needs a tokio runtime).
    pub fn start(cfg: &EventsConfig, log: EventLog) -> Result<EventSink, InitError> {
        let queue = match &cfg.webhook_url {
            None => None,
            Some(url) => {
                let hook = Webhook::new(
                    url,
                    cfg.secret.clone(),
                    Duration::from_millis(cfg.timeout_ms),
                )
                .map_err(InitError::Config)?;
                let (tx, rx) = mpsc::channel(cfg.queue_size);
                tokio::spawn(deliver_all(hook, rx, cfg.max_attempts));
                Some(tx)
            }
        };
        Ok(EventSink {
            log,
            queue,
            dropped: Arc::new(AtomicU64::new(0)),
        })
    }

    /// Without a webhook: only the journal (tests, and gateways without `[events]`).
    pub fn journal_only(log: EventLog) -> EventSink {
        EventSink {
            log,
            queue: None,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Events that could not even be queued (queue full).
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    fn enqueue(&self, event: &str, body: &Value) -> &'static str {
        let Some(tx) = &self.queue else {
            return "disabled";
        };
        let bytes = match serde_json::to_vec(body) {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "event could not be serialised");
                return "dropped";
            }
        };
        match tx.try_send(Outgoing {
            event: event.to_string(),
            delivery: delivery_id(),
            body: bytes,
        }) {
            Ok(()) => "queued",
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("voxgate_webhook_dropped_total").increment(1);
                warn!(event, "webhook queue full: event not delivered");
                "dropped"
            }
        }
    }

    /// A `json_builder` step. Result: `{"websocket": bool, "webhook": "queued" | "disabled" | "dropped"}`.
    pub fn dispatch(&self, call_id: &str, payload: Value, websocket: bool) -> Value {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let mut body = super::dispatch_event(call_id, &payload);
        if let Some(o) = body.as_object_mut() {
            o.insert("ts".into(), Value::String(now.clone()));
        }
        let webhook = self.enqueue("CL_DISPATCH_EVENT", &body);
        (self.log)(json!({
            "ts": now,
            "call_id": call_id,
            "name": "CL_DISPATCH_EVENT",
            "type": "CL_DISPATCH_EVENT",
            "properties": payload,
            "payload": payload,
            "websocket": websocket,
            "webhook": webhook,
        }));
        info!(call_id, webhook, websocket, "CL_DISPATCH_EVENT dispatched");
        json!({"websocket": websocket, "webhook": webhook})
    }

    /// A finished recording: journal and webhook (`recording.ready`).
    pub fn recording_ready(&self, call_id: &str, id: &str, duration_ms: u64, sha256: &str) {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let recording = json!({
            "id": id,
            "duration_ms": duration_ms,
            "sha256": sha256,
            "audio": format!("/v1/recordings/{id}/audio"),
        });
        let body = json!({"type": "recording.ready", "call_id": call_id, "ts": now, "recording": recording});
        let webhook = self.enqueue("recording.ready", &body);
        (self.log)(json!({
            "ts": now,
            "call_id": call_id,
            "name": "recording.ready",
            "type": "recording.ready",
            "properties": recording,
            "webhook": webhook,
        }));
    }
}

async fn deliver_all(hook: Webhook, mut rx: mpsc::Receiver<Outgoing>, max_attempts: u32) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let hook = Arc::new(hook);
    while let Some(out) = rx.recv().await {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let hook = hook.clone();
        tokio::spawn(async move {
            let _permit = permit;
            match hook
                .deliver(&out.event, &out.delivery, &out.body, max_attempts)
                .await
            {
                Ok(attempts) => {
                    metrics::counter!("voxgate_webhook_deliveries_total", "outcome" => "ok")
                        .increment(1);
                    tracing::debug!(event = %out.event, delivery = %out.delivery, attempts, "webhook delivered");
                }
                Err(e) => {
                    metrics::counter!("voxgate_webhook_deliveries_total", "outcome" => "failed")
                        .increment(1);
                    warn!(event = %out.event, delivery = %out.delivery, url = %hook.url, error = %e.message, "webhook delivery given up");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn collecting() -> (EventLog, Arc<Mutex<Vec<Value>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        (Arc::new(move |v| s2.lock().unwrap().push(v)), seen)
    }

    #[test]
    fn dispatch_without_webhook_is_journaled() {
        let (log, seen) = collecting();
        let sink = EventSink::journal_only(log);
        let r = sink.dispatch("c1", json!({"lang": "nl"}), true);
        assert_eq!(r, json!({"websocket": true, "webhook": "disabled"}));
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0]["name"], "CL_DISPATCH_EVENT");
        assert_eq!(seen[0]["call_id"], "c1");
        assert_eq!(seen[0]["properties"], json!({"lang": "nl"}));
    }

    #[tokio::test]
    async fn webhook_gets_signed_event_after_retries() {
        use axum::{extract::State, http::HeaderMap, routing::post, Router};
        type Posts = Vec<(HeaderMap, Vec<u8>)>;
        #[derive(Clone, Default)]
        struct Rx(Arc<Mutex<Posts>>);
        async fn hook(
            State(rx): State<Rx>,
            headers: HeaderMap,
            body: axum::body::Bytes,
        ) -> axum::http::StatusCode {
            let mut v = rx.0.lock().unwrap();
            v.push((headers, body.to_vec()));
            // The first attempt fails, the retry succeeds.
            if v.len() == 1 {
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            } else {
                axum::http::StatusCode::NO_CONTENT
            }
        }
        let rx = Rx::default();
        let app = Router::new()
            .route("/hook", post(hook))
            .with_state(rx.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let cfg = EventsConfig {
            webhook_url: Some(format!("http://{addr}/hook")),
            secret: Some(crate::config::Secret::new("s3cret")),
            ..Default::default()
        };
        let (log, seen) = collecting();
        let sink = EventSink::start(&cfg, log).unwrap();
        let r = sink.dispatch("call-9", json!({"a": [1, 2]}), false);
        assert_eq!(r["webhook"], "queued");
        for _ in 0..100 {
            if rx.0.lock().unwrap().len() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let got = rx.0.lock().unwrap();
        assert_eq!(got.len(), 2, "one failed attempt then one retry");
        let (headers, body) = &got[1];
        let v: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(v["type"], "CL_DISPATCH_EVENT");
        assert_eq!(v["call_id"], "call-9");
        assert_eq!(v["payload"], json!({"a": [1, 2]}));
        let ts: i64 = headers["x-voxgate-timestamp"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            headers["x-voxgate-signature"].to_str().unwrap(),
            super::super::webhook::signature("s3cret", ts, body)
        );
        assert_eq!(
            headers["x-voxgate-delivery"], got[0].0["x-voxgate-delivery"],
            "a retry keeps its delivery id"
        );
        assert_eq!(seen.lock().unwrap().len(), 1);
    }
}
