//! Router-level tests: real requests through `tower::ServiceExt::oneshot` against a temp dir.

use std::collections::HashMap;
use std::fs;
use std::sync::{Arc, Mutex};

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderMap, Method, Request, StatusCode};
use axum::Router;
use chrono::{TimeZone, Utc};
use serde_json::{json, Value};
use tower::ServiceExt;

use super::*;
use crate::media::recorder::store::{self, RecordingPaths};
use crate::media::recorder::{ChannelMode, RecordingId, RecordingMeta, RecordingStatus, Sidecar};

const TOKEN: &str = "t0ken";

#[derive(Default)]
struct FakeCalls {
    paused: Mutex<HashMap<String, bool>>,
    hung_up: Mutex<Vec<String>>,
}

impl CallsView for FakeCalls {
    fn calls(&self) -> Vec<Value> {
        vec![json!({"call_id": "c-live", "state": "talking"})]
    }
    fn set_paused(&self, call_id: &str, paused: bool) -> bool {
        if call_id != "c-live" {
            return false;
        }
        self.paused.lock().unwrap().insert(call_id.into(), paused);
        true
    }
    fn hangup(&self, call_id: &str) -> bool {
        if call_id != "c-live" {
            return false;
        }
        self.hung_up.lock().unwrap().push(call_id.into());
        true
    }
}

struct FakeTrunks;

impl TrunksView for FakeTrunks {
    fn trunks(&self) -> Vec<Value> {
        vec![
            json!({"name": "main", "registered": false, "expires_at": null, "last_error": "403 Forbidden"}),
        ]
    }
}

struct Fixture {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    dir: std::path::PathBuf,
    app: Router,
    calls: Arc<FakeCalls>,
    /// Finished recordings, oldest first, with their audio bytes.
    done: Vec<(RecordingId, Vec<u8>)>,
    live: RecordingId,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let dir = root.join("recordings");
    fs::create_dir_all(&dir).unwrap();
    // Something outside the recordings dir that must never be reachable.
    fs::write(root.join("secret.json"), b"{\"secret\":true}").unwrap();
    fs::write(root.join("secret.wav"), b"secret").unwrap();

    let mut done = Vec::new();
    for i in 0..3u8 {
        let at = Utc.with_ymd_and_hms(2024, 5, 1, 12, i.into(), 0).unwrap();
        let id = RecordingId::generate(at);
        let meta = RecordingMeta {
            call_id: if i == 1 {
                "call-b".into()
            } else {
                "call-a".into()
            },
            from: "+3211".into(),
            to: "+3222".into(),
        };
        let audio: Vec<u8> = (0..1000u32)
            .map(|n| (n as u8).wrapping_mul(i + 1))
            .collect();
        let paths = RecordingPaths::new(&dir, &id);
        fs::write(&paths.wav, &audio).unwrap();
        let (sha, bytes) = store::sha256_file(&paths.wav).unwrap();
        let mut s = Sidecar::new_recording(id.as_str(), &meta, at, ChannelMode::Stereo);
        s.status = RecordingStatus::Complete;
        s.sha256 = Some(sha);
        s.bytes = bytes;
        s.ended_at = Some("2024-05-01T13:00:00.000Z".into());
        store::write_sidecar(&dir, &id, &s).unwrap();
        done.push((id, audio));
    }
    let at = Utc.with_ymd_and_hms(2024, 5, 1, 12, 30, 0).unwrap();
    let live = RecordingId::generate(at);
    let s = Sidecar::new_recording(
        live.as_str(),
        &RecordingMeta::default(),
        at,
        ChannelMode::Stereo,
    );
    store::write_sidecar(&dir, &live, &s).unwrap();
    fs::write(RecordingPaths::new(&dir, &live).part, vec![0u8; 44 + 3200]).unwrap();

    let calls = Arc::new(FakeCalls::default());
    let state = ApiState {
        token: TOKEN.into(),
        recordings_dir: dir.clone(),
        calls: calls.clone(),
        store: Arc::new(crate::store::file::FileStore::new(
            "node-t".into(),
            root.clone(),
            dir.clone(),
            None,
        )),
        metrics: Arc::new(|| "# TYPE voxgate_up gauge\nvoxgate_up 1\n".to_string()),
        trunks: Arc::new(FakeTrunks),
        sessions: Arc::new(console::Sessions::new()),
    };
    Fixture {
        app: router(state),
        _tmp: tmp,
        root,
        dir,
        calls,
        done,
        live,
    }
}

struct Resp {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
    fn header(&self, name: header::HeaderName) -> &str {
        self.headers.get(name).unwrap().to_str().unwrap()
    }
}

async fn call(app: &Router, method: Method, uri: &str, extra: &[(&str, &str)], auth: bool) -> Resp {
    let mut req = Request::builder().method(method).uri(uri);
    if auth {
        req = req.header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
    }
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

async fn get(app: &Router, uri: &str) -> Resp {
    call(app, Method::GET, uri, &[], true).await
}

#[tokio::test]
async fn health_and_metrics_need_no_token() {
    let f = fixture();
    assert_eq!(
        call(&f.app, Method::GET, "/healthz", &[], false)
            .await
            .status,
        StatusCode::OK
    );
    let m = call(&f.app, Method::GET, "/metrics", &[], false).await;
    assert_eq!(m.status, StatusCode::OK);
    assert!(m.header(header::CONTENT_TYPE).starts_with("text/plain"));
    assert!(String::from_utf8(m.body).unwrap().contains("voxgate_up 1"));
}

#[tokio::test]
async fn every_v1_path_needs_the_token() {
    let f = fixture();
    let id = f.done[0].0.to_string();
    for uri in [
        "/v1/recordings".to_string(),
        format!("/v1/recordings/{id}"),
        format!("/v1/recordings/{id}/audio"),
        "/v1/calls".into(),
        "/v1/calls/stream".into(),
        "/v1/trunks".into(),
        format!("/v1/recordings/{id}/peaks"),
        "/v1/cdrs".into(),
        "/v1/events".into(),
        "/v1/openapi.json".into(),
        "/v1/no-such-thing".into(),
    ] {
        let r = call(&f.app, Method::GET, &uri, &[], false).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert_eq!(r.json()["error"], "unauthorized");
        assert!(r.headers.contains_key(header::WWW_AUTHENTICATE));
        let wrong = call(
            &f.app,
            Method::GET,
            &uri,
            &[("authorization", "Bearer nope")],
            false,
        )
        .await;
        assert_eq!(wrong.status, StatusCode::UNAUTHORIZED, "{uri}");
    }
    let r = call(
        &f.app,
        Method::DELETE,
        &format!("/v1/recordings/{id}"),
        &[],
        false,
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(RecordingPaths::new(&f.dir, &f.done[0].0).wav.exists());
    assert_eq!(
        get(&f.app, "/v1/no-such-thing").await.status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn ids_that_escape_or_do_not_exist_are_404() {
    let f = fixture();
    let unknown = RecordingId::generate(Utc::now());
    for uri in [
        "/v1/recordings/..".to_string(),
        "/v1/recordings/%2e%2e".into(),
        "/v1/recordings/%2E%2E/audio".into(),
        "/v1/recordings/..%2fsecret".into(),
        "/v1/recordings/..%2Fsecret/audio".into(),
        "/v1/recordings/%2e%2e%2fsecret".into(),
        "/v1/recordings/../secret".into(),
        "/v1/recordings/../../etc/passwd".into(),
        "/v1/recordings/%ff%fe".into(),
        "/v1/recordings/secret".into(),
        format!("/v1/recordings/{unknown}"),
        format!("/v1/recordings/{unknown}/audio"),
    ] {
        for method in [Method::GET, Method::HEAD, Method::DELETE] {
            if method == Method::DELETE && uri.ends_with("/audio") {
                continue; // 405: audio has no DELETE
            }
            let r = call(&f.app, method.clone(), &uri, &[], true).await;
            assert_eq!(r.status, StatusCode::NOT_FOUND, "{method} {uri}");
            assert!(!String::from_utf8_lossy(&r.body).contains("secret\":true"));
        }
    }
    assert!(f.root.join("secret.json").exists() && f.root.join("secret.wav").exists());
}

#[tokio::test]
async fn list_is_newest_first_with_filters_and_cursor() {
    let f = fixture();
    let r = get(&f.app, "/v1/recordings").await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    let ids: Vec<&str> = v["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    let expect = [
        f.live.as_str(),
        f.done[2].0.as_str(),
        f.done[1].0.as_str(),
        f.done[0].0.as_str(),
    ];
    assert_eq!(ids, expect);
    assert_eq!(v["next_cursor"], Value::Null);
    let live = &v["recordings"][0];
    assert_eq!(live["status"], "recording");
    assert_eq!(live["bytes"], 3244, "live size comes from the .part file");
    assert_eq!(live["duration_ms"], 100);
    for key in [
        "id",
        "call_id",
        "from",
        "to",
        "started_at",
        "ended_at",
        "duration_ms",
        "channels",
        "sample_rate",
        "bytes",
        "sha256",
        "status",
    ] {
        assert!(v["recordings"][1].get(key).is_some(), "{key}");
    }

    // Pages of 3 then 1, joined by the cursor.
    let p1 = get(&f.app, "/v1/recordings?limit=3").await.json();
    assert_eq!(p1["recordings"].as_array().unwrap().len(), 3);
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let p2 = get(&f.app, &format!("/v1/recordings?limit=3&cursor={cursor}"))
        .await
        .json();
    assert_eq!(p2["recordings"][0]["id"], f.done[0].0.as_str());
    assert_eq!(p2["next_cursor"], Value::Null);

    let by_call = get(&f.app, "/v1/recordings?call_id=call-b").await.json();
    assert_eq!(by_call["recordings"].as_array().unwrap().len(), 1);
    assert_eq!(by_call["recordings"][0]["id"], f.done[1].0.as_str());

    let window = get(
        &f.app,
        "/v1/recordings?since=2024-05-01T12:01:00Z&until=2024-05-01T12:30:00%2B00:00",
    )
    .await;
    let window = window.json();
    let ids: Vec<&str> = window["recordings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [f.done[2].0.as_str(), f.done[1].0.as_str()]);

    for bad in ["since=soon", "limit=0", "limit=5000", "cursor=nope"] {
        let r = get(&f.app, &format!("/v1/recordings?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(r.json()["error"], "bad_request");
        assert!(r.json()["message"]
            .as_str()
            .unwrap()
            .contains(bad.split('=').next().unwrap()));
    }
}

#[tokio::test]
async fn metadata_by_id() {
    let f = fixture();
    let (id, audio) = &f.done[1];
    let r = get(&f.app, &format!("/v1/recordings/{id}")).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["id"], id.as_str());
    assert_eq!(v["call_id"], "call-b");
    assert_eq!(v["bytes"], audio.len());
    assert_eq!(v["status"], "complete");
}

#[tokio::test]
async fn audio_full_range_head_and_etag() {
    let f = fixture();
    let (id, audio) = &f.done[2];
    let uri = format!("/v1/recordings/{id}/audio");
    let sha = store::read_sidecar(&f.dir, id)
        .unwrap()
        .unwrap()
        .sha256
        .unwrap();

    let full = get(&f.app, &uri).await;
    assert_eq!(full.status, StatusCode::OK);
    assert_eq!(full.header(header::CONTENT_TYPE), "audio/wav");
    assert_eq!(full.header(header::ACCEPT_RANGES), "bytes");
    assert_eq!(full.header(header::ETAG), format!("\"{sha}\""));
    assert_eq!(full.header(header::CONTENT_LENGTH), "1000");
    assert_eq!(&full.body, audio);

    let part = call(
        &f.app,
        Method::GET,
        &uri,
        &[("range", "bytes=100-199")],
        true,
    )
    .await;
    assert_eq!(part.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(part.header(header::CONTENT_RANGE), "bytes 100-199/1000");
    assert_eq!(part.header(header::CONTENT_LENGTH), "100");
    assert_eq!(part.body, &audio[100..200]);

    let tail = call(&f.app, Method::GET, &uri, &[("range", "bytes=-10")], true).await;
    assert_eq!(tail.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(tail.body, &audio[990..]);

    let bad = call(&f.app, Method::GET, &uri, &[("range", "bytes=5000-")], true).await;
    assert_eq!(bad.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(bad.header(header::CONTENT_RANGE), "bytes */1000");

    // If-Range with a stale tag: the range is ignored, the whole file comes back.
    let stale = call(
        &f.app,
        Method::GET,
        &uri,
        &[("range", "bytes=0-9"), ("if-range", "\"old\"")],
        true,
    )
    .await;
    assert_eq!(stale.status, StatusCode::OK);
    assert_eq!(stale.body.len(), 1000);

    let head = call(&f.app, Method::HEAD, &uri, &[], true).await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header(header::CONTENT_LENGTH), "1000");
    assert_eq!(head.header(header::ETAG), format!("\"{sha}\""));
    assert!(head.body.is_empty());

    let etag = full.header(header::ETAG).to_string();
    let cached = call(&f.app, Method::GET, &uri, &[("if-none-match", &etag)], true).await;
    assert_eq!(cached.status, StatusCode::NOT_MODIFIED);
    assert!(cached.body.is_empty());
    assert_eq!(cached.header(header::ETAG), etag);
    let changed = call(
        &f.app,
        Method::GET,
        &uri,
        &[("if-none-match", "\"other\"")],
        true,
    )
    .await;
    assert_eq!(changed.status, StatusCode::OK);
}

#[tokio::test]
async fn audio_while_recording_uses_size_and_mtime_etag() {
    let f = fixture();
    let r = get(&f.app, &format!("/v1/recordings/{}/audio", f.live)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.header(header::ETAG).starts_with("W/\"3244-"));
    assert_eq!(r.body.len(), 3244);
}

#[tokio::test]
async fn delete_removes_files_and_refuses_live_recordings() {
    let f = fixture();
    let (id, _) = &f.done[0];
    let r = call(
        &f.app,
        Method::DELETE,
        &format!("/v1/recordings/{id}"),
        &[],
        true,
    )
    .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let paths = RecordingPaths::new(&f.dir, id);
    assert!(!paths.wav.exists() && !paths.sidecar.exists());
    assert_eq!(
        get(&f.app, &format!("/v1/recordings/{id}")).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(&f.app, &format!("/v1/recordings/{id}/audio"))
            .await
            .status,
        StatusCode::NOT_FOUND
    );

    let live = call(
        &f.app,
        Method::DELETE,
        &format!("/v1/recordings/{}", f.live),
        &[],
        true,
    )
    .await;
    assert_eq!(live.status, StatusCode::CONFLICT);
    assert!(RecordingPaths::new(&f.dir, &f.live).part.exists());
}

#[tokio::test]
async fn calls_list_pause_resume() {
    let f = fixture();
    let v = get(&f.app, "/v1/calls").await.json();
    assert_eq!(v["calls"][0]["call_id"], "c-live");
    let r = call(&f.app, Method::POST, "/v1/calls/c-live/pause", &[], true).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(f.calls.paused.lock().unwrap().get("c-live"), Some(&true));
    let r = call(&f.app, Method::POST, "/v1/calls/c-live/resume", &[], true).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(f.calls.paused.lock().unwrap().get("c-live"), Some(&false));
    let r = call(&f.app, Method::POST, "/v1/calls/nope/pause", &[], true).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cdrs_and_events_from_json_lines() {
    let f = fixture();
    assert_eq!(
        get(&f.app, "/v1/cdrs").await.json(),
        json!({"cdrs": []}),
        "missing file = empty"
    );
    fs::write(
        f.root.join("cdrs.jsonl"),
        "{\"call_id\":\"a\",\"n\":1}\ngarbage\n{\"call_id\":\"b\",\"n\":2}\n{\"call_id\":\"a\",\"n\":3}\n",
    )
    .unwrap();
    let v = get(&f.app, "/v1/cdrs").await.json();
    let ns: Vec<i64> = v["cdrs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [3, 2, 1]);
    let v = get(&f.app, "/v1/cdrs?limit=1").await.json();
    assert_eq!(v["cdrs"][0]["n"], 3);
    assert_eq!(v["cdrs"].as_array().unwrap().len(), 1);
    assert_eq!(
        get(&f.app, "/v1/cdrs?limit=x").await.status,
        StatusCode::BAD_REQUEST
    );

    fs::write(
        f.root.join("events.jsonl"),
        "{\"name\":\"menu\",\"n\":1}\n{\"name\":\"transfer\",\"n\":2}\n{\"name\":\"menu\",\"n\":3}\n",
    )
    .unwrap();
    let v = get(&f.app, "/v1/events?name=menu").await.json();
    let ns: Vec<i64> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, [3, 1]);
    let v = get(&f.app, "/v1/events").await.json();
    assert_eq!(v["events"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn openapi_describes_every_route() {
    let f = fixture();
    let r = get(&f.app, "/v1/openapi.json").await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (path, method) in [
        ("/healthz", "get"),
        ("/metrics", "get"),
        ("/v1/recordings", "get"),
        ("/v1/recordings/{id}", "get"),
        ("/v1/recordings/{id}", "delete"),
        ("/v1/recordings/{id}/audio", "get"),
        ("/v1/recordings/{id}/audio", "head"),
        ("/v1/calls", "get"),
        ("/v1/calls/{call_id}/pause", "post"),
        ("/v1/calls/{call_id}/resume", "post"),
        ("/v1/calls/{call_id}/hangup", "post"),
        ("/v1/calls/stream", "get"),
        ("/v1/recordings/{id}/peaks", "get"),
        ("/v1/trunks", "get"),
        ("/console", "get"),
        ("/console/login", "post"),
        ("/console/logout", "post"),
        ("/v1/cdrs", "get"),
        ("/v1/events", "get"),
        ("/v1/calls/{call_id}/transcript", "get"),
        ("/v1/tables", "get"),
        ("/v1/tables", "post"),
        ("/v1/tables/{name}", "get"),
        ("/v1/tables/{name}", "delete"),
        ("/v1/tables/{name}/rows", "get"),
        ("/v1/tables/{name}/rows", "post"),
        ("/v1/tables/{name}/rows/{id}", "get"),
        ("/v1/tables/{name}/rows/{id}", "patch"),
        ("/v1/tables/{name}/rows/{id}", "delete"),
        ("/v1/openapi.json", "get"),
    ] {
        assert!(doc["paths"][path][method].is_object(), "{method} {path}");
    }
}

#[tokio::test]
async fn hangup_and_trunks() {
    let f = fixture();
    let r = call(&f.app, Method::POST, "/v1/calls/c-live/hangup", &[], true).await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    assert_eq!(*f.calls.hung_up.lock().unwrap(), ["c-live"]);
    let r = call(&f.app, Method::POST, "/v1/calls/nope/hangup", &[], true).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = call(&f.app, Method::POST, "/v1/calls/c-live/hangup", &[], false).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let v = get(&f.app, "/v1/trunks").await.json();
    assert_eq!(v["trunks"][0]["name"], "main");
    assert_eq!(v["trunks"][0]["last_error"], "403 Forbidden");
}

#[tokio::test]
async fn calls_stream_sends_the_calls_at_once() {
    let f = fixture();
    let req = Request::builder()
        .uri("/v1/calls/stream")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    let resp = f.app.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.headers()[header::CONTENT_TYPE].to_str().unwrap(),
        "text/event-stream"
    );
    let mut body = resp.into_body().into_data_stream();
    let first = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        futures::StreamExt::next(&mut body),
    )
    .await
    .expect("an event at once")
    .unwrap()
    .unwrap();
    let text = String::from_utf8_lossy(&first).into_owned();
    assert!(text.starts_with("event: calls\ndata: "), "{text}");
    assert!(text.contains("\"call_id\":\"c-live\""), "{text}");
}

#[tokio::test]
async fn peaks_of_a_finished_recording() {
    let f = fixture();
    // Replace the first recording's bytes with a real stereo WAV: loud left, quiet right.
    let (id, _) = &f.done[0];
    let wav = RecordingPaths::new(&f.dir, id).wav;
    let spec = hound::WavSpec {
        channels: 2,
        sample_rate: 8000,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut w = hound::WavWriter::create(&wav, spec).unwrap();
    for _ in 0..800 {
        w.write_sample(32000i16).unwrap();
        w.write_sample(-3277i16).unwrap();
    }
    w.finalize().unwrap();
    let r = get(&f.app, &format!("/v1/recordings/{id}/peaks?buckets=10")).await;
    assert_eq!(r.status, StatusCode::OK);
    let v = r.json();
    assert_eq!(v["channels"], 2);
    assert_eq!(v["frames"], 800);
    assert_eq!(v["peaks"][0].as_array().unwrap().len(), 10);
    assert_eq!(v["peaks"][0][3], 976);
    assert_eq!(v["peaks"][1][9], 100);
    for bad in ["buckets=0", "buckets=99999", "buckets=x"] {
        let r = get(&f.app, &format!("/v1/recordings/{id}/peaks?{bad}")).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{bad}");
    }
    let live = get(&f.app, &format!("/v1/recordings/{}/peaks", f.live)).await;
    assert_eq!(live.status, StatusCode::CONFLICT);
    // Not a WAV: a clear 500, not a panic.
    let broken = get(&f.app, &format!("/v1/recordings/{}/peaks", f.done[1].0)).await;
    assert_eq!(broken.status, StatusCode::INTERNAL_SERVER_ERROR);
}

async fn form(app: &Router, uri: &str, body: &str, extra: &[(&str, &str)]) -> Resp {
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = app
        .clone()
        .oneshot(req.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn console_login_session_and_logout() {
    let f = fixture();
    // Without a session: the login form, and the app's script is not served.
    let page = call(&f.app, Method::GET, "/console", &[], false).await;
    assert_eq!(page.status, StatusCode::OK);
    let html = String::from_utf8_lossy(&page.body).into_owned();
    assert!(html.contains("id=\"login-form\"") && !html.contains("console.js"));
    assert!(page
        .header(header::CONTENT_SECURITY_POLICY)
        .contains("default-src 'self'"));
    assert_eq!(page.header(header::CACHE_CONTROL), "no-store");
    let js = call(
        &f.app,
        Method::GET,
        "/console/assets/console.js",
        &[],
        false,
    )
    .await;
    assert_eq!(js.status, StatusCode::UNAUTHORIZED);
    let css = call(
        &f.app,
        Method::GET,
        "/console/assets/console.css",
        &[],
        false,
    )
    .await;
    assert_eq!(css.status, StatusCode::OK);
    let nope = call(
        &f.app,
        Method::GET,
        "/console/assets/..%2fmod.rs",
        &[],
        false,
    )
    .await;
    assert_eq!(nope.status, StatusCode::NOT_FOUND);

    // A wrong token: 401 and the form again, no cookie.
    let bad = form(&f.app, "/console/login", "token=wrong", &[]).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    assert!(!bad.headers.contains_key(header::SET_COOKIE));
    assert!(String::from_utf8_lossy(&bad.body).contains("Wrong token"));
    let empty = form(&f.app, "/console/login", "", &[]).await;
    assert_eq!(empty.status, StatusCode::BAD_REQUEST);

    // The right token: a redirect with an HttpOnly, SameSite=Strict session cookie.
    let ok = form(&f.app, "/console/login", &format!("token={TOKEN}"), &[]).await;
    assert_eq!(ok.status, StatusCode::SEE_OTHER);
    assert_eq!(ok.header(header::LOCATION), "/console");
    let set = ok.header(header::SET_COOKIE).to_string();
    assert!(
        set.contains("HttpOnly") && set.contains("SameSite=Strict"),
        "{set}"
    );
    assert!(!set.contains(TOKEN), "the cookie is not the token");
    let cookie = set.split(';').next().unwrap().to_string();

    let app = call(
        &f.app,
        Method::GET,
        "/console",
        &[("cookie", &cookie)],
        false,
    )
    .await;
    assert!(String::from_utf8_lossy(&app.body).contains("console.js"));
    let js = call(
        &f.app,
        Method::GET,
        "/console/assets/console.js",
        &[("cookie", &cookie)],
        false,
    )
    .await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(js
        .header(header::CONTENT_TYPE)
        .starts_with("text/javascript"));

    // The cookie opens /v1/ reads; writes also need the CSRF header.
    let list = call(
        &f.app,
        Method::GET,
        "/v1/recordings",
        &[("cookie", &cookie)],
        false,
    )
    .await;
    assert_eq!(list.status, StatusCode::OK);
    let audio = format!("/v1/recordings/{}/audio", f.done[0].0);
    let ranged = call(
        &f.app,
        Method::GET,
        &audio,
        &[("cookie", &cookie), ("range", "bytes=0-9")],
        false,
    )
    .await;
    assert_eq!(ranged.status, StatusCode::PARTIAL_CONTENT);
    let csrf = call(
        &f.app,
        Method::POST,
        "/v1/calls/c-live/pause",
        &[("cookie", &cookie)],
        false,
    )
    .await;
    assert_eq!(csrf.status, StatusCode::UNAUTHORIZED);
    let write = call(
        &f.app,
        Method::POST,
        "/v1/calls/c-live/pause",
        &[("cookie", &cookie), ("x-requested-with", "voxgate-console")],
        false,
    )
    .await;
    assert_eq!(write.status, StatusCode::NO_CONTENT);
    let forged = call(
        &f.app,
        Method::GET,
        "/v1/calls",
        &[("cookie", &format!("voxgate_session={}", "a".repeat(64)))],
        false,
    )
    .await;
    assert_eq!(forged.status, StatusCode::UNAUTHORIZED);

    // Logout ends the session.
    let out = form(&f.app, "/console/logout", "", &[("cookie", &cookie)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert!(out.header(header::SET_COOKIE).contains("Max-Age=0"));
    let after = call(
        &f.app,
        Method::GET,
        "/v1/calls",
        &[("cookie", &cookie)],
        false,
    )
    .await;
    assert_eq!(after.status, StatusCode::UNAUTHORIZED);
    let page = call(
        &f.app,
        Method::GET,
        "/console",
        &[("cookie", &cookie)],
        false,
    )
    .await;
    assert!(String::from_utf8_lossy(&page.body).contains("id=\"login-form\""));
}
