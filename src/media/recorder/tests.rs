//! End-to-end recorder tests against a temp dir: real files, fabricated Instants.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use tokio::sync::mpsc;

use super::store::{self, RecordingPaths};
use super::*;
use crate::media::codec::FRAME_SAMPLES;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn meta() -> RecordingMeta {
    RecordingMeta {
        call_id: "call-1".into(),
        from: "+3211111111".into(),
        to: "+3222222222".into(),
    }
}

fn drain(rx: &mut mpsc::Receiver<RecorderEvent>) -> Vec<RecorderEvent> {
    let mut out = Vec::new();
    while let Ok(e) = rx.try_recv() {
        out.push(e);
    }
    out
}

fn read_wav(path: &Path) -> (hound::WavSpec, Vec<i16>) {
    let reader = hound::WavReader::open(path).unwrap();
    let spec = reader.spec();
    let samples = reader.into_samples().map(Result::unwrap).collect();
    (spec, samples)
}

/// Waits (bounded) until the writer has created the recording's files.
async fn started(rx: &mut mpsc::Receiver<RecorderEvent>) -> RecorderEvent {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("writer answers")
        .expect("event")
}

#[tokio::test]
async fn stereo_recording_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let recorder = Recorder::new(RecorderConfig::new(dir.path()));
    let (tx, mut rx) = mpsc::channel(8);
    let t0 = Instant::now();
    let spec = recorder.start(meta(), tx).unwrap();
    let id = spec.id.clone();
    assert_eq!(
        started(&mut rx).await,
        RecorderEvent::Started { id: id.clone() }
    );
    let paths = RecordingPaths::new(dir.path(), &id);
    assert!(paths.part.exists());
    let s = store::read_sidecar(dir.path(), &id).unwrap().unwrap();
    assert_eq!(s.status, RecordingStatus::Recording);

    // 50 slots (1 s) from send slot 7: caller = k, bot = -k; nothing sent in slots 20..30
    // (hold: caller only); the bot is silent on odd slots.
    let mut feed = RecordingFeed::new(spec, 7, t0, t0, Utc::now());
    for k in 0..50u64 {
        let now = t0 + ms(k * 20 + 2);
        feed.caller_frame(160 * k as u32, &[k as i16; FRAME_SAMPLES], now);
        if !(20..30).contains(&k) {
            let right = if k % 2 == 0 { -(k as i16) } else { 0 };
            feed.sent(7 + k, &[right; FRAME_SAMPLES]);
        }
        feed.advance(now);
    }
    let (summary, pending) = feed.stop(t0 + ms(1_500));
    assert!(pending.is_none());
    recorder.finalized().await;
    assert_eq!(recorder.pending(), 0);

    assert!(!paths.part.exists());
    let (spec, samples) = read_wav(&paths.wav);
    assert_eq!(
        (spec.channels, spec.sample_rate, spec.bits_per_sample),
        (2, 8000, 16)
    );
    assert_eq!(samples.len(), 75 * FRAME_SAMPLES * 2, "1.5 s of wall time");
    let slot = |k: usize| &samples[k * 320..(k + 1) * 320];
    assert!(
        slot(5).chunks(2).all(|p| p == [5, 0]),
        "odd slot: bot silent"
    );
    assert!(slot(4).chunks(2).all(|p| p == [4, -4]));
    assert!(
        slot(25).chunks(2).all(|p| p == [25, 0]),
        "hold: caller only"
    );
    assert!(slot(70).iter().all(|&s| s == 0), "padded to stop");

    let s = store::read_sidecar(dir.path(), &id).unwrap().unwrap();
    let (sha, bytes) = store::sha256_file(&paths.wav).unwrap();
    assert_eq!(s.status, RecordingStatus::Complete);
    assert_eq!(s.duration_ms, 1_500);
    assert_eq!(s.sha256.as_deref(), Some(sha.as_str()));
    assert_eq!(s.bytes, bytes);
    assert_eq!(bytes, fs::metadata(&paths.wav).unwrap().len());
    assert_eq!(s.call_id, "call-1");
    let started = s.started_at_utc().unwrap();
    let ended = sidecar::parse_rfc3339(s.ended_at.as_deref().unwrap()).unwrap();
    assert_eq!((ended - started).num_milliseconds(), 1_500);
    assert_eq!(summary.slots, 75);

    assert_eq!(
        drain(&mut rx),
        vec![RecorderEvent::Ready {
            id,
            duration_ms: 1_500,
            sha256: sha,
            bytes,
            overflow_frames: 0,
        }]
    );
}

#[tokio::test]
async fn mixed_recording_is_mono_sum() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = RecorderConfig::new(dir.path());
    cfg.channels = ChannelMode::Mixed;
    let recorder = Recorder::new(cfg);
    let (tx, mut rx) = mpsc::channel(8);
    let t0 = Instant::now();
    let spec = recorder.start(meta(), tx).unwrap();
    let id = spec.id.clone();
    started(&mut rx).await;
    let mut feed = RecordingFeed::new(spec, 0, t0, t0, Utc::now());
    feed.caller_frame(0, &[100; FRAME_SAMPLES], t0);
    for k in 0..5 {
        feed.sent(k, &[-30; FRAME_SAMPLES]);
    }
    let _ = feed.stop(t0 + ms(100));
    recorder.finalized().await;
    let (spec, samples) = read_wav(&RecordingPaths::new(dir.path(), &id).wav);
    assert_eq!(spec.channels, 1);
    assert_eq!(samples.len(), 5 * FRAME_SAMPLES);
    assert_eq!(samples[0], 70, "caller + bot in one channel");
    assert_eq!(samples[3 * FRAME_SAMPLES], -30);
    let s = store::read_sidecar(dir.path(), &id).unwrap().unwrap();
    assert_eq!((s.channels, s.channel_mode), (1, ChannelMode::Mixed));
}

#[tokio::test]
async fn unwritable_dir_fails_with_event_and_call_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    // A regular file where the directory should be: fails even when running as root.
    let not_a_dir = dir.path().join("blocked");
    fs::write(&not_a_dir, b"x").unwrap();
    let recorder = Recorder::new(RecorderConfig::new(not_a_dir.join("sub")));
    let (tx, mut rx) = mpsc::channel(8);
    let spec = recorder.start(meta(), tx).unwrap();
    match started(&mut rx).await {
        RecorderEvent::Failed { id, reason } => {
            assert_eq!(id, spec.id);
            assert!(reason.contains("cannot create"), "{reason}");
            assert!(reason.contains("blocked"), "{reason}");
        }
        other => panic!("unexpected event {other:?}"),
    }
    // Blocks and the end of a recording that never started are ignored.
    let t0 = Instant::now();
    let mut feed = RecordingFeed::new(spec, 0, t0, t0, Utc::now());
    feed.sent(0, &[1; FRAME_SAMPLES]);
    let _ = feed.stop(t0 + ms(20));
    recorder.finalized().await;
    assert_eq!(recorder.pending(), 0);
    assert!(drain(&mut rx).is_empty());
}

#[tokio::test]
async fn write_failure_mid_recording_marks_failed() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("recs");
    let recorder = Recorder::new(RecorderConfig::new(&dir));
    let (tx, mut rx) = mpsc::channel(8);
    let t0 = Instant::now();
    let spec = recorder.start(meta(), tx).unwrap();
    started(&mut rx).await;
    let mut feed = RecordingFeed::new(spec, 0, t0, t0, Utc::now());
    feed.sent(0, &[1; FRAME_SAMPLES]);
    // The directory vanishes under the writer: finalize cannot rename.
    fs::remove_dir_all(&dir).unwrap();
    let _ = feed.stop(t0 + ms(20));
    recorder.finalized().await;
    match drain(&mut rx).as_slice() {
        [RecorderEvent::Failed { reason, .. }] => assert!(reason.contains("rename"), "{reason}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

/// Writes a `.part` the way the writer does while recording (header sizes refreshed every
/// second of audio), then "crashes": audio follows the last refresh.
fn crashed_part(dir: &Path, id: &RecordingId, flushed_slots: usize) {
    use std::io::Write;
    let paths = RecordingPaths::new(dir, id);
    let mut file = fs::File::create(&paths.part).unwrap();
    let data_len = (flushed_slots * 320 * 2) as u64;
    file.write_all(&writer::wav_header(2, data_len)).unwrap();
    for k in 0..flushed_slots {
        for _ in 0..320 {
            file.write_all(&(k as i16).to_le_bytes()).unwrap();
        }
    }
}

#[test]
fn header_is_valid_after_flush_without_finalize() {
    let dir = tempfile::tempdir().unwrap();
    let id = RecordingId::generate(Utc::now());
    crashed_part(dir.path(), &id, 25);
    let (spec, samples) = read_wav(&RecordingPaths::new(dir.path(), &id).part);
    assert_eq!(spec.channels, 2);
    assert_eq!(samples.len(), 25 * 320);
    assert_eq!(samples[24 * 320], 24);
}

#[test]
fn recovery_repairs_renames_hashes_and_marks_recovered() {
    let dir = tempfile::tempdir().unwrap();
    let started = Utc.with_ymd_and_hms(2024, 3, 1, 10, 0, 0).unwrap();
    let id = RecordingId::generate(started);
    let paths = RecordingPaths::new(dir.path(), &id);
    let sidecar = Sidecar::new_recording(id.as_str(), &meta(), started, ChannelMode::Stereo);
    store::write_sidecar(dir.path(), &id, &sidecar).unwrap();
    crashed_part(dir.path(), &id, 50);
    // Audio written after the last header flush, ending in half a frame.
    let mut bytes = fs::read(&paths.part).unwrap();
    bytes.extend(std::iter::repeat_n(0x11, 640 * 5 + 3));
    fs::write(&paths.part, &bytes).unwrap();

    // Two more orphans: a part with no complete header and a sidecar with no audio at all.
    let empty = RecordingId::generate(started);
    fs::write(RecordingPaths::new(dir.path(), &empty).part, b"RIFF").unwrap();
    let ghost = RecordingId::generate(started);
    store::write_sidecar(
        dir.path(),
        &ghost,
        &Sidecar::new_recording(ghost.as_str(), &meta(), started, ChannelMode::Stereo),
    )
    .unwrap();
    // A recording that failed earlier keeps its part file untouched.
    let failed = RecordingId::generate(started);
    let mut fs_side =
        Sidecar::new_recording(failed.as_str(), &meta(), started, ChannelMode::Stereo);
    fs_side.mark_failed("disk full", started);
    store::write_sidecar(dir.path(), &failed, &fs_side).unwrap();
    fs::write(RecordingPaths::new(dir.path(), &failed).part, b"xx").unwrap();

    let report = recover_dir(dir.path()).unwrap();
    assert_eq!(report.recovered, vec![id.clone()]);
    let mut failed_ids: Vec<_> = report.failed.iter().map(|(i, _)| i.clone()).collect();
    failed_ids.sort();
    let mut expect = vec![empty.clone(), ghost.clone()];
    expect.sort();
    assert_eq!(failed_ids, expect);

    assert!(!paths.part.exists());
    let (_, samples) = read_wav(&paths.wav);
    assert_eq!(samples.len(), 55 * 320, "flushed + unflushed whole frames");
    let s = store::read_sidecar(dir.path(), &id).unwrap().unwrap();
    assert_eq!(s.status, RecordingStatus::Recovered);
    assert_eq!(s.duration_ms, 1_100);
    assert_eq!(s.call_id, "call-1");
    assert_eq!(s.ended_at.as_deref(), Some("2024-03-01T10:00:01.100Z"));
    let (sha, n) = store::sha256_file(&paths.wav).unwrap();
    assert_eq!((s.sha256.as_deref(), s.bytes), (Some(sha.as_str()), n));

    let e = store::read_sidecar(dir.path(), &empty).unwrap().unwrap();
    assert_eq!(e.status, RecordingStatus::Failed);
    assert!(e.reason.unwrap().contains("header"));
    let g = store::read_sidecar(dir.path(), &ghost).unwrap().unwrap();
    assert_eq!(g.reason.as_deref(), Some("audio file missing after crash"));
    let f = store::read_sidecar(dir.path(), &failed).unwrap().unwrap();
    assert_eq!(f.reason.as_deref(), Some("disk full"));
    // Its unusable partial audio is not left behind as a temp file; the status stays.
    assert!(!RecordingPaths::new(dir.path(), &failed).part.exists());
    assert_eq!(f.status, RecordingStatus::Failed);

    // Idempotent: a second pass finds nothing to do.
    assert_eq!(recover_dir(dir.path()).unwrap(), RecoveryReport::default());
}

#[test]
fn retention_removes_only_old_finished_recordings() {
    let dir = tempfile::tempdir().unwrap();
    let now = Utc.with_ymd_and_hms(2024, 6, 30, 0, 0, 0).unwrap();
    let mk = |started, status| {
        let id = RecordingId::generate(started);
        let mut s = Sidecar::new_recording(id.as_str(), &meta(), started, ChannelMode::Stereo);
        s.status = status;
        store::write_sidecar(dir.path(), &id, &s).unwrap();
        fs::write(RecordingPaths::new(dir.path(), &id).wav, b"RIFF").unwrap();
        id
    };
    let old = mk(now - chrono::Duration::days(40), RecordingStatus::Complete);
    let young = mk(now - chrono::Duration::days(2), RecordingStatus::Complete);
    let live = mk(now - chrono::Duration::days(40), RecordingStatus::Recording);
    let removed = sweep_retention(dir.path(), Duration::from_secs(30 * 86_400), now).unwrap();
    assert_eq!(removed, vec![old.clone()]);
    assert!(!RecordingPaths::new(dir.path(), &old).wav.exists());
    assert!(RecordingPaths::new(dir.path(), &young).wav.exists());
    assert!(RecordingPaths::new(dir.path(), &live).sidecar.exists());
}
