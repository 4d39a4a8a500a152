//! `/v1/recordings`: list, metadata, audio download and delete. The sidecars in the
//! recordings dir are the source of truth; ids from the URL are validated before any path is
//! built, so nothing outside the dir can be reached.

use std::collections::HashMap;
use std::path::{Path as FsPath, PathBuf};

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::error::blocking;
use super::ranges::{self, RangeOutcome};
use super::{parse_limit, query_map, ApiError, ApiState};
use crate::media::recorder::sidecar::parse_rfc3339;
use crate::media::recorder::store::{self, RecordingPaths};
use crate::media::recorder::{RecordingId, RecordingStatus, Sidecar};

/// Size of a canonical WAV header, to estimate a live recording's duration.
const WAV_HEADER: u64 = 44;

/// Parsed `GET /v1/recordings` query.
#[derive(Debug, Default, PartialEq)]
pub struct ListQuery {
    pub call_id: Option<String>,
    /// Inclusive lower bound on `started_at`.
    pub since: Option<DateTime<Utc>>,
    /// Exclusive upper bound on `started_at`.
    pub until: Option<DateTime<Utc>>,
    pub limit: usize,
    /// Resume after this (started_at ms, id) sort key.
    pub after: Option<(i64, String)>,
    /// Case-insensitive text that the id, call id, from or to must contain (`q`).
    pub text: Option<String>,
}

impl ListQuery {
    pub fn parse(params: &HashMap<String, String>) -> Result<Self, ApiError> {
        let time = |key: &str| -> Result<Option<DateTime<Utc>>, ApiError> {
            params
                .get(key)
                .map(|v| {
                    parse_rfc3339(v).ok_or_else(|| {
                        ApiError::BadRequest(format!(
                            "`{key}` must be an RFC 3339 timestamp such as 2024-05-01T12:00:00Z, got {v:?}"
                        ))
                    })
                })
                .transpose()
        };
        Ok(ListQuery {
            call_id: params.get("call_id").cloned(),
            since: time("since")?,
            until: time("until")?,
            limit: parse_limit(params)?,
            after: params.get("cursor").map(|c| decode_cursor(c)).transpose()?,
            text: params
                .get("q")
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty()),
        })
    }
}

/// Cursors are opaque to clients: hex of `<started_at ms>|<id>`, the sort key of the last item
/// returned. Resuming "after a key" keeps pages stable while recordings come and go.
fn encode_cursor(key: &(i64, String)) -> String {
    hex::encode(format!("{}|{}", key.0, key.1))
}

fn decode_cursor(c: &str) -> Result<(i64, String), ApiError> {
    let bad = || ApiError::BadRequest("`cursor` is not a cursor returned by this API".into());
    let raw = hex::decode(c).map_err(|_| bad())?;
    let text = String::from_utf8(raw).map_err(|_| bad())?;
    let (ms, id) = text.split_once('|').ok_or_else(bad)?;
    let ms = ms.parse().map_err(|_| bad())?;
    let id = RecordingId::parse(id).ok_or_else(bad)?;
    Ok((ms, id.to_string()))
}

fn sort_key(s: &Sidecar) -> (i64, String) {
    let ms = s
        .started_at_utc()
        .map_or(i64::MIN, |t| t.timestamp_millis());
    (ms, s.id.clone())
}

/// Filters, sorts newest first and cuts one page; returns the page and the next cursor.
pub fn page(items: Vec<Sidecar>, q: &ListQuery) -> (Vec<Sidecar>, Option<String>) {
    let mut items: Vec<_> = items
        .into_iter()
        .filter(|s| q.call_id.as_ref().is_none_or(|c| &s.call_id == c))
        .filter(|s| {
            q.text.as_ref().is_none_or(|t| {
                [&s.id, &s.call_id, &s.from, &s.to]
                    .iter()
                    .any(|f| f.to_lowercase().contains(t.as_str()))
            })
        })
        .filter(|s| {
            let t = s.started_at_utc();
            q.since.is_none_or(|since| t.is_some_and(|t| t >= since))
                && q.until.is_none_or(|until| t.is_some_and(|t| t < until))
        })
        .map(|s| (sort_key(&s), s))
        .filter(|(k, _)| q.after.as_ref().is_none_or(|after| k < after))
        .collect();
    items.sort_by(|a, b| b.0.cmp(&a.0));
    let more = items.len() > q.limit;
    items.truncate(q.limit);
    let next = more
        .then(|| items.last().map(|(k, _)| encode_cursor(k)))
        .flatten();
    (items.into_iter().map(|(_, s)| s).collect(), next)
}

/// While recording, the sidecar's size fields are still zero: report the `.part` size instead.
fn live_view(dir: &FsPath, mut s: Sidecar) -> Sidecar {
    if s.status == RecordingStatus::Recording {
        if let Some(id) = RecordingId::parse(&s.id) {
            if let Ok(m) = std::fs::metadata(RecordingPaths::new(dir, &id).part) {
                s.bytes = m.len();
                let per_ms = u64::from(s.channels) * 2 * u64::from(s.sample_rate) / 1000;
                s.duration_ms = m.len().saturating_sub(WAV_HEADER) / per_ms.max(1);
            }
        }
    }
    s
}

fn id_from(path: Result<Path<String>, PathRejection>) -> Result<RecordingId, ApiError> {
    let not_found = || ApiError::NotFound("no such recording".into());
    let Path(raw) = path.map_err(|_| not_found())?;
    RecordingId::parse(&raw).ok_or_else(not_found)
}

async fn load(dir: PathBuf, id: RecordingId) -> Result<Sidecar, ApiError> {
    blocking(move || match store::read_sidecar(&dir, &id) {
        Ok(Some(s)) => Ok(live_view(&dir, s)),
        Ok(None) => Err(ApiError::NotFound(format!("no recording {id}"))),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    })
    .await
}

pub async fn list(
    State(st): State<ApiState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = ListQuery::parse(&query_map(query)?)?;
    let dir = st.recordings_dir.clone();
    let all = blocking(move || {
        store::list(&dir)
            .map(|v| {
                v.into_iter()
                    .map(|s| live_view(&dir, s))
                    .collect::<Vec<_>>()
            })
            .map_err(|e| ApiError::Internal(e.to_string()))
    })
    .await?;
    let (items, next) = page(all, &q);
    Ok(Json(json!({"recordings": items, "next_cursor": next})))
}

pub async fn get_one(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Sidecar>, ApiError> {
    let id = id_from(path)?;
    Ok(Json(load(st.recordings_dir.clone(), id).await?))
}

pub async fn delete(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id_from(path)?;
    let s = load(st.recordings_dir.clone(), id.clone()).await?;
    if s.status == RecordingStatus::Recording {
        return Err(ApiError::Conflict(format!(
            "recording {id} is still in progress; stop it first"
        )));
    }
    let dir = st.recordings_dir.clone();
    let deleted = id.clone();
    blocking(move || store::delete(&dir, &deleted).map_err(|e| ApiError::Internal(e.to_string())))
        .await?;
    tracing::info!(recording = %id, "recording deleted via API");
    Ok(StatusCode::NO_CONTENT)
}

/// The file to serve and its validator.
struct AudioFile {
    path: PathBuf,
    len: u64,
    etag: String,
}

fn pick_audio(dir: &FsPath, id: &RecordingId, s: &Sidecar) -> Result<AudioFile, ApiError> {
    let paths = RecordingPaths::new(dir, id);
    let finished = matches!(
        s.status,
        RecordingStatus::Complete | RecordingStatus::Recovered
    );
    let (path, meta) = match std::fs::metadata(&paths.wav) {
        Ok(m) => (paths.wav, m),
        Err(_) if s.status == RecordingStatus::Recording => match std::fs::metadata(&paths.part) {
            Ok(m) => (paths.part, m),
            Err(_) => {
                return Err(ApiError::NotFound(format!(
                    "recording {id} has no audio yet"
                )))
            }
        },
        Err(_) => {
            return Err(ApiError::NotFound(format!(
                "recording {id} has no audio (status {})",
                s.status.as_str()
            )))
        }
    };
    let etag = match (&s.sha256, finished) {
        (Some(sha), true) => format!("\"{sha}\""),
        // Still changing (or never hashed): size + mtime identifies this version.
        _ => {
            let mtime = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            format!("W/\"{}-{mtime}\"", meta.len())
        }
    };
    Ok(AudioFile {
        path,
        len: meta.len(),
        etag,
    })
}

/// `GET|HEAD /v1/recordings/{id}/audio` with Range, ETag and If-None-Match / If-Range.
pub async fn audio(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = id_from(path)?;
    let s = load(st.recordings_dir.clone(), id.clone()).await?;
    let dir = st.recordings_dir.clone();
    let pick_id = id.clone();
    let file = blocking(move || pick_audio(&dir, &pick_id, &s)).await?;
    let etag = HeaderValue::from_str(&file.etag)
        .map_err(|e| ApiError::Internal(format!("bad etag: {e}")))?;
    let text = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };

    let mut resp = Response::builder()
        .header(header::ETAG, etag)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::CACHE_CONTROL, "no-cache");
    if text(header::IF_NONE_MATCH).is_some_and(|h| ranges::none_match(h, &file.etag)) {
        return resp
            .status(StatusCode::NOT_MODIFIED)
            .body(Body::empty())
            .map_err(|e| ApiError::Internal(e.to_string()));
    }
    let range_ok = text(header::IF_RANGE).is_none_or(|h| ranges::if_range_matches(h, &file.etag));
    let outcome = if range_ok {
        ranges::evaluate(text(header::RANGE), file.len)
    } else {
        RangeOutcome::Full
    };
    let (status, start, len) = match outcome {
        RangeOutcome::Full => (StatusCode::OK, 0, file.len),
        RangeOutcome::Partial { start, end } => {
            resp = resp.header(
                header::CONTENT_RANGE,
                format!("bytes {start}-{end}/{}", file.len),
            );
            (StatusCode::PARTIAL_CONTENT, start, end - start + 1)
        }
        RangeOutcome::Unsatisfiable => {
            let body = json!({
                "error": "range_not_satisfiable",
                "message": format!("the audio is {} bytes long", file.len),
            });
            let mut r = (StatusCode::RANGE_NOT_SATISFIABLE, Json(body)).into_response();
            let cr = HeaderValue::from_str(&format!("bytes */{}", file.len))
                .map_err(|e| ApiError::Internal(e.to_string()))?;
            r.headers_mut().insert(header::CONTENT_RANGE, cr);
            return Ok(r);
        }
    };
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        file_body(&file.path, start, len).await?
    };
    resp.status(status)
        .header(header::CONTENT_TYPE, "audio/wav")
        .header(header::CONTENT_LENGTH, len)
        .header(
            header::CONTENT_DISPOSITION,
            format!("inline; filename=\"{id}.wav\""),
        )
        .body(body)
        .map_err(|e| ApiError::Internal(e.to_string()))
}

/// Most buckets `GET /v1/recordings/{id}/peaks` computes.
pub const MAX_PEAK_BUCKETS: usize = 4000;

/// `GET /v1/recordings/{id}/peaks?buckets=N`: per channel, the loudest sample of each of `N`
/// equal slices of a finished recording, scaled to 0..=1000. The console draws its waveform
/// from this instead of downloading the audio twice.
pub async fn peaks(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = id_from(path)?;
    let params = query_map(query)?;
    let buckets = match params.get("buckets") {
        None => 800,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PEAK_BUCKETS).contains(&n) => n,
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "`buckets` must be an integer from 1 to {MAX_PEAK_BUCKETS}, got {v:?}"
                )))
            }
        },
    };
    let s = load(st.recordings_dir.clone(), id.clone()).await?;
    if !matches!(
        s.status,
        RecordingStatus::Complete | RecordingStatus::Recovered
    ) {
        return Err(ApiError::Conflict(format!(
            "recording {id} is {}; peaks are computed once it is finished",
            s.status.as_str()
        )));
    }
    let wav = RecordingPaths::new(&st.recordings_dir, &id).wav;
    let (channels, sample_rate, frames, peaks) = blocking(move || {
        wav_peaks(&wav, buckets).map_err(|e| ApiError::Internal(format!("recording {id}: {e}")))
    })
    .await?;
    Ok(Json(json!({
        "id": s.id,
        "channels": channels,
        "sample_rate": sample_rate,
        "frames": frames,
        "buckets": buckets,
        "peaks": peaks,
    })))
}

/// What [`wav_peaks`] found: (channels, sample rate, frames, peaks per channel).
pub type Peaks = (u16, u32, u64, Vec<Vec<u16>>);

/// Reads a 16-bit PCM WAV and returns its peaks.
pub fn wav_peaks(path: &FsPath, buckets: usize) -> Result<Peaks, hound::Error> {
    let mut reader = hound::WavReader::open(path)?;
    let spec = reader.spec();
    if spec.sample_format != hound::SampleFormat::Int || spec.bits_per_sample != 16 {
        return Err(hound::Error::Unsupported);
    }
    let channels = usize::from(spec.channels.max(1));
    let frames = u64::from(reader.duration());
    let mut peaks = vec![vec![0u16; buckets]; channels];
    let per_bucket = frames.div_ceil(buckets as u64).max(1);
    for (i, sample) in reader.samples::<i16>().enumerate() {
        let sample = sample?;
        let frame = (i / channels) as u64;
        let bucket = usize::try_from(frame / per_bucket)
            .unwrap_or(usize::MAX)
            .min(buckets - 1);
        let level = u16::try_from(u32::from(sample.unsigned_abs()) * 1000 / 32768).unwrap_or(1000);
        let slot = &mut peaks[i % channels][bucket];
        *slot = (*slot).max(level);
    }
    Ok((spec.channels, spec.sample_rate, frames, peaks))
}

/// Streams `len` bytes from `start` without loading the file into memory.
async fn file_body(path: &FsPath, start: u64, len: u64) -> Result<Body, ApiError> {
    let open_err = |e: std::io::Error| ApiError::Internal(format!("cannot read audio: {e}"));
    let mut f = tokio::fs::File::open(path).await.map_err(open_err)?;
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(open_err)?;
    let stream = futures::stream::unfold((f, len), |(mut f, remaining)| async move {
        if remaining == 0 {
            return None;
        }
        let want = usize::try_from(remaining.min(64 * 1024)).unwrap_or(64 * 1024);
        let mut buf = vec![0u8; want];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (f, remaining - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    Ok(Body::from_stream(stream))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::recorder::{ChannelMode, RecordingMeta};
    use chrono::TimeZone;

    fn rec(call: &str, secs: i64) -> Sidecar {
        let at = Utc.timestamp_opt(1_700_000_000 + secs, 0).unwrap();
        let id = RecordingId::generate(at);
        let meta = RecordingMeta {
            call_id: call.into(),
            ..Default::default()
        };
        Sidecar::new_recording(id.as_str(), &meta, at, ChannelMode::Stereo)
    }

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, ApiError> {
        ListQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    #[test]
    fn query_validation() {
        assert_eq!(q(&[]).unwrap().limit, 100);
        for bad in [
            ("limit", "0"),
            ("limit", "1001"),
            ("limit", "ten"),
            ("since", "yesterday"),
            ("until", "2024-13-01T00:00:00Z"),
            ("cursor", "zz"),
            ("cursor", "2e2e2f"),
        ] {
            let err = q(&[bad]).unwrap_err();
            assert!(matches!(err, ApiError::BadRequest(_)), "{bad:?}");
            assert!(err.to_string().contains(bad.0), "{err}");
        }
    }

    #[test]
    fn pages_are_newest_first_and_stable() {
        let items: Vec<_> = (0..7)
            .map(|i| rec(if i % 2 == 0 { "a" } else { "b" }, i))
            .collect();
        let mut query = q(&[("limit", "3")]).unwrap();
        let (p1, c1) = page(items.clone(), &query);
        assert_eq!(
            p1.iter().map(|s| &s.id).collect::<Vec<_>>(),
            [&items[6].id, &items[5].id, &items[4].id]
        );
        // A newer recording arriving between pages does not shift the next page.
        let mut grown = items.clone();
        grown.push(rec("a", 100));
        query.after = Some(decode_cursor(&c1.unwrap()).unwrap());
        let (p2, c2) = page(grown.clone(), &query);
        assert_eq!(p2[0].id, items[3].id);
        query.after = Some(decode_cursor(&c2.unwrap()).unwrap());
        let (p3, c3) = page(grown, &query);
        assert_eq!(p3.len(), 1);
        assert_eq!(p3[0].id, items[0].id);
        assert_eq!(c3, None);
    }

    #[test]
    fn text_search_matches_id_call_and_parties() {
        let mut items: Vec<_> = (0..4).map(|i| rec(&format!("call-{i}"), i)).collect();
        items[1].from = "+3225550101".into();
        items[2].to = "Sales-Line".into();
        let (p, _) = page(items.clone(), &q(&[("q", "5550101")]).unwrap());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].call_id, "call-1");
        let (p, _) = page(items.clone(), &q(&[("q", " sales ")]).unwrap());
        assert_eq!(p[0].call_id, "call-2");
        let (p, _) = page(items.clone(), &q(&[("q", "CALL-3")]).unwrap());
        assert_eq!(p[0].call_id, "call-3");
        let (p, _) = page(items.clone(), &q(&[("q", "")]).unwrap());
        assert_eq!(p.len(), 4);
    }

    #[test]
    fn peaks_follow_each_channel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        // First half: loud left, silent right; second half: the other way round.
        for i in 0..8000 {
            let (l, r) = if i < 4000 {
                (16384i16, 0i16)
            } else {
                (0, -32768)
            };
            w.write_sample(l).unwrap();
            w.write_sample(r).unwrap();
        }
        w.finalize().unwrap();
        let (ch, rate, frames, p) = wav_peaks(&path, 4).unwrap();
        assert_eq!((ch, rate, frames), (2, 8000, 8000));
        assert_eq!(p[0], [500, 500, 0, 0]);
        assert_eq!(p[1], [0, 0, 1000, 1000]);
        // More buckets than frames still works.
        let (_, _, _, p) = wav_peaks(&path, 4000).unwrap();
        assert_eq!(p[0].len(), 4000);
    }

    #[test]
    fn filters_by_call_and_time() {
        let items: Vec<_> = (0..6)
            .map(|i| rec(if i < 3 { "a" } else { "b" }, i * 60))
            .collect();
        let since = items[1].started_at.clone();
        let until = items[4].started_at.clone();
        let (p, _) = page(
            items.clone(),
            &q(&[("since", &since), ("until", &until)]).unwrap(),
        );
        assert_eq!(p.len(), 3, "since inclusive, until exclusive");
        let (p, _) = page(items, &q(&[("call_id", "a")]).unwrap());
        assert!(p.iter().all(|s| s.call_id == "a") && p.len() == 3);
    }
}
