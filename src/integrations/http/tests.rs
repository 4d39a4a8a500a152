use super::*;
use crate::config::Secret;
use axum::extract::Query;
use axum::http::{HeaderMap as AxHeaders, StatusCode};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// What the test server saw last.
static SEEN: Mutex<Option<Value>> = Mutex::new(None);

async fn server() -> SocketAddr {
    async fn echo(
        headers: AxHeaders,
        Query(q): Query<HashMap<String, String>>,
        body: String,
    ) -> impl IntoResponse {
        let h: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    Value::String(v.to_str().unwrap_or("").into()),
                )
            })
            .collect();
        let v = json!({"headers": h, "query": q, "body": body});
        *SEEN.lock().unwrap() = Some(v.clone());
        axum::Json(v)
    }
    let app = Router::new()
        .route("/echo", any(echo))
        .route(
            "/json",
            any(|| async { axum::Json(json!({"session": {"tier": "gold"}, "n": 3})) }),
        )
        .route(
            "/text",
            any(|| async { ([("content-type", "text/plain")], "plain words") }),
        )
        .route(
            "/badjson",
            any(|| async { ([("content-type", "application/json")], "{not json") }),
        )
        .route(
            "/status",
            any(|| async { (StatusCode::NOT_FOUND, axum::Json(json!({"error": "nope"}))) }),
        )
        .route(
            "/slow",
            any(|| async {
                tokio::time::sleep(Duration::from_secs(3)).await;
                "late"
            }),
        )
        .route("/big", any(|| async { "x".repeat(300 * 1024) }))
        .route(
            "/redirect",
            any(|Query(q): Query<HashMap<String, String>>| async move {
                (
                    StatusCode::FOUND,
                    [("location", q.get("to").cloned().unwrap_or_default())],
                )
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A listener that only counts the connections it gets.
async fn canary() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let n2 = n.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            n2.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, n)
}

fn executor(allow: &[&str], max_body: usize) -> HttpExecutor {
    let mut m = BTreeMap::new();
    m.insert("TOKEN".to_string(), Secret::new("tok-12345"));
    m.insert("PASS".to_string(), Secret::new("pa55word"));
    HttpExecutor::new(
        HostPolicy::new(&allow.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap(),
        Secrets::without_env(m),
        max_body,
        3,
    )
    .unwrap()
}

fn get(url: String) -> Request {
    Request {
        method: "GET".into(),
        url,
        headers: vec![],
        query: vec![],
        body: None,
        auth: None,
    }
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn json_text_and_status() {
    let addr = server().await;
    let x = executor(&["127.0.0.1"], 1 << 20);
    let r = x
        .execute(&get(format!("http://{addr}/json")), T)
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"session": {"tier": "gold"}, "n": 3}));
    assert_eq!(r.headers["content-type"], "application/json");
    let v = r.to_json();
    assert_eq!(v["body"]["n"], 3);
    let r = x
        .execute(&get(format!("http://{addr}/text")), T)
        .await
        .unwrap();
    assert_eq!(r.body, json!("plain words"));
    let r = x
        .execute(&get(format!("http://{addr}/badjson")), T)
        .await
        .unwrap();
    assert_eq!(
        r.body,
        json!("{not json"),
        "invalid JSON comes back as text"
    );
    // A 404 is a response, not a step error: the flow branches on `status`.
    let r = x
        .execute(&get(format!("http://{addr}/status")), T)
        .await
        .unwrap();
    assert_eq!(r.status, 404);
    assert_eq!(r.body["error"], "nope");
}

#[tokio::test]
async fn request_parts_auth_and_secrets_are_sent_but_never_returned() {
    let addr = server().await;
    let x = executor(&["127.0.0.1"], 1 << 20);
    let req = Request {
        method: "post".into(),
        url: format!("http://{addr}/echo?k={{secrets.TOKEN}}"),
        headers: vec![
            ("X-Api-Key".into(), "{secrets.TOKEN}".into()),
            ("X-Plain".into(), "a b".into()),
        ],
        query: vec![("q".into(), "caller said & more".into())],
        body: Some(json!({"from": "+3225550001", "key": "{secrets.PASS}"})),
        auth: Some(HttpAuth::Basic {
            username: "bot".into(),
            password: "{secrets.PASS}".into(),
        }),
    };
    let r = x.execute(&req, T).await.unwrap();
    let seen = SEEN.lock().unwrap().clone().unwrap();
    assert_eq!(seen["headers"]["x-api-key"], "tok-12345");
    assert_eq!(seen["query"]["k"], "tok-12345");
    assert_eq!(seen["query"]["q"], "caller said & more");
    assert_eq!(seen["headers"]["content-type"], "application/json");
    let sent: Value = serde_json::from_str(seen["body"].as_str().unwrap()).unwrap();
    assert_eq!(sent, json!({"from": "+3225550001", "key": "pa55word"}));
    use base64::Engine;
    let basic = base64::engine::general_purpose::STANDARD.encode("bot:pa55word");
    assert_eq!(seen["headers"]["authorization"], format!("Basic {basic}"));
    // The echo carries the secrets back; the step result does not.
    let text = r.to_json().to_string();
    assert!(
        !text.contains("tok-12345") && !text.contains("pa55word"),
        "{text}"
    );
    assert_eq!(r.body["headers"]["x-api-key"], "***");

    let req = Request {
        auth: Some(HttpAuth::Bearer {
            token: "{secrets.TOKEN}".into(),
        }),
        body: Some(json!("just text")),
        ..get(format!("http://{addr}/echo"))
    };
    x.execute(&req, T).await.unwrap();
    let seen = SEEN.lock().unwrap().clone().unwrap();
    assert_eq!(seen["headers"]["authorization"], "Bearer tok-12345");
    assert_eq!(seen["body"], "just text");
    assert!(seen["headers"]["content-type"]
        .as_str()
        .unwrap()
        .starts_with("text/plain"));
}

#[tokio::test]
async fn timeout_is_a_step_error() {
    let addr = server().await;
    let x = executor(&["127.0.0.1"], 1 << 20);
    let t = std::time::Instant::now();
    let e = x
        .execute(
            &get(format!("http://{addr}/slow")),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "timeout");
    assert!(t.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn hosts_outside_the_allow_list_get_no_connection() {
    let (target, hits) = canary().await;
    let x = executor(&["127.0.0.1"], 1 << 20);
    // A name for an allowed address is still a name that is not listed.
    let e = x
        .execute(&get(format!("http://localhost:{}/", target.port())), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "refused", "{e:?}");
    // A listed name that resolves to an address not listed.
    let x2 = executor(&["localhost"], 1 << 20);
    let e = x2
        .execute(&get(format!("http://localhost:{}/", target.port())), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "refused", "{e:?}");
    assert!(
        e.message
            .contains("resolves only to addresses that are not allowed"),
        "{e:?}"
    );
    let x3 = executor(&["example.com"], 1 << 20);
    let e = x3
        .execute(&get(format!("http://127.0.0.1:{}/", target.port())), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "refused");
    let e = x3
        .execute(&get("file:///etc/passwd".into()), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "refused");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no connection may be made");
}

#[tokio::test]
async fn redirects_are_checked_too() {
    let addr = server().await;
    let (target, hits) = canary().await;
    let x = executor(&["127.0.0.1"], 1 << 20);
    let to = format!("http://localhost:{}/", target.port());
    let e = x
        .execute(
            &get(format!("http://{addr}/redirect?to={}", urlencode(&to))),
            T,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "refused", "{e:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    // An allowed redirect is followed.
    let to = format!("http://{addr}/json");
    let r = x
        .execute(
            &get(format!("http://{addr}/redirect?to={}", urlencode(&to))),
            T,
        )
        .await
        .unwrap();
    assert_eq!(r.body["n"], 3);
}

fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[tokio::test]
async fn size_cap_secrets_and_bad_requests() {
    let addr = server().await;
    let x = executor(&["127.0.0.1"], 100 * 1024);
    let e = x
        .execute(&get(format!("http://{addr}/big")), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "too_large");
    let e = x
        .execute(&get(format!("http://{addr}/echo?k={{secrets.MISSING}}")), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "secret");
    let e = x
        .execute(
            &Request {
                method: "TRACE".into(),
                ..get(format!("http://{addr}/json"))
            },
            T,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "http");
    let e = x.execute(&get("not a url".into()), T).await.unwrap_err();
    assert_eq!(e.code, "http");
    let e = x
        .execute(
            &Request {
                headers: vec![("X-Bad".into(), "a\r\nInjected: 1".into())],
                ..get(format!("http://{addr}/json"))
            },
            T,
        )
        .await
        .unwrap_err();
    assert_eq!(e.code, "http");
    // A connection error names no secret even when the URL held one.
    let (dead, _) = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        (l.local_addr().unwrap(), ())
    };
    let e = x
        .execute(&get(format!("http://{dead}/?k={{secrets.TOKEN}}")), T)
        .await
        .unwrap_err();
    assert_eq!(e.code, "http", "{e:?}");
    assert!(!e.message.contains("tok-12345"), "{e:?}");
}
