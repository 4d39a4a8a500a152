//! `/v1/recordings`: list, metadata, audio download and delete. The metadata comes from the
//! store (the sidecars in the recordings dir, or every node's recordings in PostgreSQL); the
//! audio from this node's recordings dir when it was made here, else from shared storage.
//! Ids from the URL are validated before any path or key is built, so nothing outside the
//! dir can be reached.

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
use crate::media::recorder::store::RecordingPaths;
use crate::media::recorder::{RecordingId, RecordingStatus, Sidecar};

/// Parsed `GET /v1/recordings` query (the store's query type).
pub use crate::store::RecordingQuery as ListQuery;

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
        let after = match params.get("cursor") {
            None => None,
            Some(c) => Some(crate::store::decode_cursor(c).ok_or_else(|| {
                ApiError::BadRequest("`cursor` is not a cursor returned by this API".into())
            })?),
        };
        Ok(ListQuery {
            call_id: params.get("call_id").cloned(),
            since: time("since")?,
            until: time("until")?,
            limit: parse_limit(params)?,
            after,
            text: params
                .get("q")
                .map(|t| t.trim().to_lowercase())
                .filter(|t| !t.is_empty()),
        })
    }
}

fn id_from(path: Result<Path<String>, PathRejection>) -> Result<RecordingId, ApiError> {
    let not_found = || ApiError::NotFound("no such recording".into());
    let Path(raw) = path.map_err(|_| not_found())?;
    RecordingId::parse(&raw).ok_or_else(not_found)
}

async fn load(st: &ApiState, id: &RecordingId) -> Result<Sidecar, ApiError> {
    st.store
        .recording(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no recording {id}")))
}

pub async fn list(
    State(st): State<ApiState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let q = ListQuery::parse(&query_map(query)?)?;
    let (items, next) = st.store.recordings(&q).await?;
    Ok(Json(json!({"recordings": items, "next_cursor": next})))
}

pub async fn get_one(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Sidecar>, ApiError> {
    let id = id_from(path)?;
    Ok(Json(load(&st, &id).await?))
}

pub async fn delete(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = id_from(path)?;
    let s = load(&st, &id).await?;
    if s.status == RecordingStatus::Recording {
        return Err(ApiError::Conflict(format!(
            "recording {id} is still in progress; stop it first"
        )));
    }
    st.store.delete_recording(&id).await?;
    tracing::info!(recording = %id, "recording deleted via API");
    Ok(StatusCode::NO_CONTENT)
}

/// Where the audio comes from.
enum AudioSource {
    /// A file in this node's recordings dir.
    Local(PathBuf),
    /// The verified copy in shared storage (made on another node, or moved off this one).
    Shared(String),
}

/// The audio to serve and its validator.
struct AudioFile {
    source: AudioSource,
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
        source: AudioSource::Local(path),
        len: meta.len(),
        etag,
    })
}

/// The shared copy of a finished recording, if there is one.
async fn shared_audio(st: &ApiState, s: &Sidecar) -> Result<Option<AudioFile>, ApiError> {
    let (Some(shared), Some(key), Some(sha)) = (st.store.shared(), &s.shared_key, &s.sha256) else {
        return Ok(None);
    };
    let len = shared
        .size(key)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    Ok(len.map(|len| AudioFile {
        source: AudioSource::Shared(key.clone()),
        len,
        etag: format!("\"{sha}\""),
    }))
}

/// `GET|HEAD /v1/recordings/{id}/audio` with Range, ETag and If-None-Match / If-Range.
pub async fn audio(
    State(st): State<ApiState>,
    path: Result<Path<String>, PathRejection>,
    method: Method,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let id = id_from(path)?;
    let s = load(&st, &id).await?;
    let dir = st.recordings_dir.clone();
    let (pick_id, pick_s) = (id.clone(), s.clone());
    let file = match blocking(move || pick_audio(&dir, &pick_id, &pick_s)).await {
        Ok(f) => f,
        Err(ApiError::NotFound(msg)) => match shared_audio(&st, &s).await? {
            Some(f) => f,
            None if !s.node.is_empty() && s.node != st.store.node() => {
                return Err(ApiError::NotFound(format!(
                    "recording {id} was made on node {} and is not in shared storage (yet)",
                    s.node
                )))
            }
            None => return Err(ApiError::NotFound(msg)),
        },
        Err(e) => return Err(e),
    };
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
    let body = if method == Method::HEAD || len == 0 {
        Body::empty()
    } else {
        match &file.source {
            AudioSource::Local(path) => file_body(path, start, len).await?,
            AudioSource::Shared(key) => {
                let shared = st
                    .store
                    .shared()
                    .ok_or_else(|| ApiError::Internal("shared storage vanished".into()))?;
                let stream = shared
                    .stream(key, start..start + len)
                    .await
                    .map_err(|e| ApiError::Unavailable(e.to_string()))?;
                Body::from_stream(stream)
            }
        }
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
/// Largest shared-storage recording the peaks endpoint reads into memory (about 4.5 h stereo).
const MAX_SHARED_PEAK_BYTES: u64 = 256 * 1024 * 1024;

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
    let s = load(&st, &id).await?;
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
    let name = id.to_string();
    let bad = move |e: hound::Error| ApiError::Internal(format!("recording {name}: {e}"));
    let (channels, sample_rate, frames, peaks) = if tokio::fs::metadata(&wav).await.is_ok() {
        blocking(move || {
            let f = std::fs::File::open(&wav)
                .map_err(|e| ApiError::Internal(format!("cannot read audio: {e}")))?;
            wav_peaks(std::io::BufReader::new(f), buckets).map_err(bad)
        })
        .await?
    } else {
        // Made on another node (or moved off this one): read the shared copy.
        let Some(file) = shared_audio(&st, &s).await? else {
            return Err(ApiError::NotFound(format!(
                "recording {id} has no audio here"
            )));
        };
        let (AudioSource::Shared(key), Some(shared)) = (&file.source, st.store.shared()) else {
            return Err(ApiError::NotFound(format!(
                "recording {id} has no audio here"
            )));
        };
        if file.len > MAX_SHARED_PEAK_BYTES {
            return Err(ApiError::Conflict(format!(
                "recording {id} is too long for peaks from shared storage"
            )));
        }
        let mut stream = shared
            .stream(key, 0..file.len)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        let mut bytes = Vec::with_capacity(usize::try_from(file.len).unwrap_or(0));
        while let Some(chunk) = futures::StreamExt::next(&mut stream).await {
            let chunk = chunk.map_err(|e| ApiError::Unavailable(e.to_string()))?;
            bytes.extend_from_slice(&chunk);
        }
        blocking(move || wav_peaks(std::io::Cursor::new(bytes), buckets).map_err(bad)).await?
    };
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
pub fn wav_peaks(input: impl std::io::Read, buckets: usize) -> Result<Peaks, hound::Error> {
    let mut reader = hound::WavReader::new(input)?;
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

    fn q(pairs: &[(&str, &str)]) -> Result<ListQuery, ApiError> {
        ListQuery::parse(
            &pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
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
        let bytes = std::fs::read(&path).unwrap();
        let (ch, rate, frames, p) = wav_peaks(&bytes[..], 4).unwrap();
        assert_eq!((ch, rate, frames), (2, 8000, 8000));
        assert_eq!(p[0], [500, 500, 0, 0]);
        assert_eq!(p[1], [0, 0, 1000, 1000]);
        // More buckets than frames still works.
        let (_, _, _, p) = wav_peaks(&bytes[..], 4000).unwrap();
        assert_eq!(p[0].len(), 4000);
        assert!(wav_peaks(&b"not a wav"[..], 4).is_err());
    }

    #[test]
    fn q_is_trimmed_and_lowercased() {
        assert_eq!(
            q(&[("q", " Sales ")]).unwrap().text.as_deref(),
            Some("sales")
        );
        assert_eq!(q(&[("q", "  ")]).unwrap().text, None);
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
}
