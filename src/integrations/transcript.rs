//! The call's transcript: what the bot said (prompt names, TTS text), what the caller did
//! (every DTMF key, recognised speech), the steps' outcomes, transfers, recordings, and the
//! call's start and end, each with a wall-clock time and an offset from the INVITE.
//!
//! [`Transcript`] is IO-free: the call task feeds it with `Instant`s it already has, and it
//! derives wall-clock times from the call's start. [`TranscriptStore`] keeps live transcripts
//! for `GET /v1/calls/{call_id}/transcript`, and writes each finished one to
//! `<data_dir>/transcripts/<sha256(call_id)[..32]>.json` (off the async workers) next to the CDR.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};
use tracing::warn;

/// Entries kept per call; later ones are counted, not stored.
pub const MAX_ENTRIES: usize = 5000;
/// Longest text kept in one entry (characters).
pub const MAX_TEXT: usize = 2000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Prompt,
    Say,
    Dtmf,
    Speech,
    Step,
    Transfer,
    Recording,
    Call,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Prompt => "prompt",
            Kind::Say => "say",
            Kind::Dtmf => "dtmf",
            Kind::Speech => "speech",
            Kind::Step => "step",
            Kind::Transfer => "transfer",
            Kind::Recording => "recording",
            Kind::Call => "call",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub at: DateTime<Utc>,
    pub offset_ms: u64,
    pub kind: Kind,
    pub text: String,
    /// Kind-specific fields (`file`, `confidence`, `step`, `outcome`, `dialog`, `to`, `id`,
    /// `event`, `reason`, ...).
    pub extra: Map<String, Value>,
}

impl Entry {
    pub fn to_json(&self) -> Value {
        let mut o = Map::new();
        o.insert(
            "at".into(),
            Value::String(self.at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        );
        o.insert("offset_ms".into(), json!(self.offset_ms));
        o.insert("kind".into(), Value::String(self.kind.as_str().into()));
        o.insert("text".into(), Value::String(self.text.clone()));
        for (k, v) in &self.extra {
            o.insert(k.clone(), v.clone());
        }
        Value::Object(o)
    }
}

fn clip(text: &str) -> String {
    if text.chars().count() <= MAX_TEXT {
        text.to_string()
    } else {
        let mut s: String = text.chars().take(MAX_TEXT).collect();
        s.push('…');
        s
    }
}

/// One call's transcript.
#[derive(Debug, Clone)]
pub struct Transcript {
    call_id: String,
    started: Instant,
    started_wall: DateTime<Utc>,
    entries: Vec<Entry>,
    /// Entries past [`MAX_ENTRIES`].
    dropped: u64,
    ended: bool,
    /// Where the forward under way goes (for its outcome's entry).
    transfer_to: Option<String>,
}

impl Transcript {
    /// `started` / `started_wall`: when the INVITE arrived.
    pub fn new(call_id: &str, started: Instant, started_wall: DateTime<Utc>) -> Transcript {
        Transcript {
            call_id: call_id.to_string(),
            started,
            started_wall,
            entries: Vec::new(),
            dropped: 0,
            ended: false,
            transfer_to: None,
        }
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }

    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    pub fn is_ended(&self) -> bool {
        self.ended
    }

    fn push(&mut self, now: Instant, kind: Kind, text: &str, extra: Map<String, Value>) {
        if self.entries.len() >= MAX_ENTRIES {
            self.dropped += 1;
            return;
        }
        let offset = now.saturating_duration_since(self.started);
        let at = self.started_wall
            + chrono::Duration::from_std(offset).unwrap_or_else(|_| chrono::Duration::zero());
        self.entries.push(Entry {
            at,
            offset_ms: offset.as_millis() as u64,
            kind,
            text: clip(text),
            extra,
        });
    }

    fn fields(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs
            .iter()
            .filter(|(_, v)| !v.is_null())
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    /// The bot played a prompt file.
    pub fn prompt(&mut self, now: Instant, file: &str) {
        self.push(
            now,
            Kind::Prompt,
            file,
            Self::fields(&[("file", json!(file))]),
        );
    }

    /// The bot said text through TTS.
    pub fn say(&mut self, now: Instant, text: &str) {
        self.push(now, Kind::Say, text, Map::new());
    }

    /// The caller pressed a key.
    pub fn dtmf(&mut self, now: Instant, digit: char) {
        let d = digit.to_string();
        self.push(now, Kind::Dtmf, &d, Self::fields(&[("digit", json!(d))]));
    }

    /// The caller's speech was recognised (or heard and not matched: `matched` false).
    pub fn speech(&mut self, now: Instant, text: &str, confidence: f32, matched: bool) {
        self.push(
            now,
            Kind::Speech,
            text,
            Self::fields(&[
                (
                    "confidence",
                    json!((confidence as f64 * 1000.0).round() / 1000.0),
                ),
                ("matched", json!(matched)),
            ]),
        );
    }

    /// A step finished: `outcome` is `ok`, `error: ...`, `timeout`, ...
    pub fn step(&mut self, now: Instant, step: &str, outcome: &str, dialog: Option<&str>) {
        self.push(
            now,
            Kind::Step,
            &format!("{step}: {outcome}"),
            Self::fields(&[
                ("step", json!(step)),
                ("outcome", json!(outcome)),
                ("dialog", dialog.map_or(Value::Null, |d| json!(d))),
            ]),
        );
    }

    /// A forward or offload started / ended: `outcome` is `started`, `completed`, `failed: ...`.
    pub fn transfer(&mut self, now: Instant, to: &str, outcome: &str) {
        self.push(
            now,
            Kind::Transfer,
            &format!("transfer to {to}: {outcome}"),
            Self::fields(&[("to", json!(to)), ("outcome", json!(outcome))]),
        );
    }

    /// A forward or offload to `to` begins.
    pub fn transfer_started(&mut self, now: Instant, to: &str) {
        self.transfer_to = Some(to.to_string());
        self.transfer(now, to, "started");
    }

    /// The forward under way ended: `completed (refer)`, `failed: busy: ...`.
    pub fn transfer_outcome(&mut self, now: Instant, to: Option<&str>, outcome: &str) {
        let to = to
            .map(str::to_string)
            .or_else(|| self.transfer_to.take())
            .unwrap_or_default();
        self.transfer(now, &to, outcome);
    }

    /// A recording `started`, `stopped`, `ready` or `failed`.
    pub fn recording(&mut self, now: Instant, id: &str, event: &str) {
        self.push(
            now,
            Kind::Recording,
            &format!("recording {id} {event}"),
            Self::fields(&[("id", json!(id)), ("event", json!(event))]),
        );
    }

    /// The call was answered.
    pub fn answered(&mut self, now: Instant) {
        self.push(
            now,
            Kind::Call,
            "answered",
            Self::fields(&[("event", json!("answered"))]),
        );
    }

    /// The call ended, with the CDR's end reason.
    pub fn ended(&mut self, now: Instant, reason: &str) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.push(
            now,
            Kind::Call,
            &format!("ended: {reason}"),
            Self::fields(&[("event", json!("ended")), ("reason", json!(reason))]),
        );
    }

    /// `{"call_id", "started_at", "ended", "entries": [...]}` (plus `dropped_entries` when the
    /// cap was reached).
    pub fn to_json(&self) -> Value {
        let mut v = json!({
            "call_id": self.call_id,
            "started_at": self.started_wall.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "ended": self.ended,
            "entries": self.entries.iter().map(Entry::to_json).collect::<Vec<_>>(),
        });
        if self.dropped > 0 {
            v["dropped_entries"] = json!(self.dropped);
        }
        v
    }

    /// Readable lines for a mail report: `12:00:03.120 (+3.1 s)  Bot said: ...`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let who = match e.kind {
                Kind::Prompt => format!("Bot played prompt {}", e.text),
                Kind::Say => format!("Bot said: {}", e.text),
                Kind::Dtmf => format!("Caller pressed {}", e.text),
                Kind::Speech => format!("Caller said: {}", e.text),
                Kind::Step => format!("Step {}", e.text),
                Kind::Transfer => format!("Transfer: {}", e.text),
                Kind::Recording => format!("Recording: {}", e.text),
                Kind::Call => format!("Call {}", e.text),
            };
            out.push_str(&format!(
                "{} (+{:.1} s)  {}\n",
                e.at.format("%Y-%m-%d %H:%M:%S%.3f UTC"),
                e.offset_ms as f64 / 1000.0,
                who
            ));
        }
        if self.dropped > 0 {
            out.push_str(&format!("({} later entries not kept)\n", self.dropped));
        }
        out
    }

    /// The DTMF keys pressed, in order.
    pub fn digits(&self) -> String {
        self.entries
            .iter()
            .filter(|e| e.kind == Kind::Dtmf)
            .map(|e| e.text.as_str())
            .collect()
    }
}

/// What a flow event adds to the transcript: the caller's keys and speech, transfer outcomes,
/// recordings, the answer. (Bot output is recorded from the actions; step outcomes by the
/// executor.)
pub fn record_event(t: &mut Transcript, now: Instant, ev: &crate::flow::FlowEvent) {
    use crate::flow::{FlowEvent, SpeechOutcome};
    match ev {
        FlowEvent::Started(_) => t.answered(now),
        FlowEvent::Dtmf { digit, .. } => t.dtmf(now, *digit),
        FlowEvent::Speech { outcome, .. } => match outcome {
            SpeechOutcome::Heard { text, confidence } => t.speech(now, text, *confidence, true),
            SpeechOutcome::NoMatch { text, confidence } => t.speech(now, text, *confidence, false),
            SpeechOutcome::Timeout | SpeechOutcome::Error(_) => {}
        },
        FlowEvent::TransferCompleted { to, mode } => {
            t.transfer_outcome(now, Some(to), &format!("completed ({mode})"))
        }
        FlowEvent::TransferFailed { reason, detail } => {
            t.transfer_outcome(now, None, &format!("failed: {reason}: {detail}"))
        }
        FlowEvent::RecordingStarted { id } => t.recording(now, id, "started"),
        FlowEvent::RecordingStopped { id } => t.recording(now, id, "stopped"),
        FlowEvent::RecordingReady { id, .. } => t.recording(now, id, "ready"),
        FlowEvent::RecordingFailed { id, reason } => t.recording(
            now,
            id.as_deref().unwrap_or("-"),
            &format!("failed: {reason}"),
        ),
        _ => {}
    }
}

/// A live call's transcript, shared by the call task (writer) and the API (reader).
pub type SharedTranscript = Arc<Mutex<Transcript>>;

/// A finished transcript and the file it goes to.
type WriteJob = (PathBuf, Arc<Value>);

/// Finished transcripts kept in memory for reads right after a call (the file is written
/// off-thread).
const RECENT: usize = 256;

/// Live and finished transcripts.
pub struct TranscriptStore {
    dir: PathBuf,
    live: Mutex<HashMap<String, SharedTranscript>>,
    recent: Mutex<VecDeque<(String, Arc<Value>)>>,
    writer: Mutex<Option<std::sync::mpsc::Sender<WriteJob>>>,
}

impl std::fmt::Debug for TranscriptStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TranscriptStore")
            .field("dir", &self.dir)
            .finish()
    }
}

/// The file a call's transcript is written to (call ids can hold any character).
pub fn file_name(call_id: &str) -> String {
    let h = Sha256::digest(call_id.as_bytes());
    format!("{}.json", &hex::encode(h)[..32])
}

impl TranscriptStore {
    pub fn new(dir: PathBuf) -> TranscriptStore {
        TranscriptStore {
            dir,
            live: Mutex::new(HashMap::new()),
            recent: Mutex::new(VecDeque::new()),
            writer: Mutex::new(None),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a call's transcript and makes it readable through the API.
    pub fn open(
        &self,
        call_id: &str,
        started: Instant,
        started_wall: DateTime<Utc>,
    ) -> SharedTranscript {
        let t = Arc::new(Mutex::new(Transcript::new(call_id, started, started_wall)));
        self.live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call_id.to_string(), t.clone());
        t
    }

    /// The call is over: keep the final transcript in memory and write its file (on a
    /// writer thread, so the call task never waits for the disk). Returns the JSON written.
    pub fn finish(&self, call_id: &str) -> Option<Arc<Value>> {
        let t = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(call_id)?;
        let value = Arc::new(t.lock().unwrap_or_else(|p| p.into_inner()).to_json());
        {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            recent.retain(|(id, _)| id != call_id);
            recent.push_back((call_id.to_string(), value.clone()));
            while recent.len() > RECENT {
                recent.pop_front();
            }
        }
        self.write_queued(self.dir.join(file_name(call_id)), value.clone());
        Some(value)
    }

    fn write_queued(&self, path: PathBuf, value: Arc<Value>) {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        if w.is_none() {
            let (tx, rx) = std::sync::mpsc::channel::<WriteJob>();
            let started = std::thread::Builder::new()
                .name("transcript-writer".into())
                .spawn(move || {
                    while let Ok((path, v)) = rx.recv() {
                        if let Err(e) = write_file(&path, &v) {
                            warn!(file = %path.display(), error = %e, "could not write the transcript");
                        }
                    }
                });
            match started {
                Ok(_) => *w = Some(tx),
                Err(e) => {
                    warn!(error = %e, "no transcript writer thread; writing inline");
                    if let Err(e) = write_file(&path, &value) {
                        warn!(file = %path.display(), error = %e, "could not write the transcript");
                    }
                    return;
                }
            }
        }
        if let Some(tx) = w.as_ref() {
            if let Err(e) = tx.send((path, value)) {
                let (path, v) = e.0;
                if let Err(e) = write_file(&path, &v) {
                    warn!(file = %path.display(), error = %e, "could not write the transcript");
                }
            }
        }
    }

    /// A live call's transcript (a copy), if the call is in progress.
    pub fn live(&self, call_id: &str) -> Option<Value> {
        let t = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(call_id)
            .cloned()?;
        let v = t.lock().unwrap_or_else(|p| p.into_inner()).to_json();
        Some(v)
    }

    /// Runs `f` on a live call's transcript (nothing when the call is not live).
    pub fn with_live(&self, call_id: &str, f: impl FnOnce(&mut Transcript)) {
        let t = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(call_id)
            .cloned();
        if let Some(t) = t {
            f(&mut t.lock().unwrap_or_else(|p| p.into_inner()));
        }
    }

    /// A copy of a live call's transcript.
    pub fn snapshot(&self, call_id: &str) -> Option<Transcript> {
        let t = self
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(call_id)
            .cloned()?;
        let copy = t.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Some(copy)
    }

    /// Live, recently finished, or on disk. Reads a file: call it off the async workers.
    pub fn get_blocking(&self, call_id: &str) -> std::io::Result<Option<Value>> {
        if let Some(v) = self.live(call_id) {
            return Ok(Some(v));
        }
        if let Some((_, v)) = self
            .recent
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .rev()
            .find(|(id, _)| id == call_id)
        {
            return Ok(Some((**v).clone()));
        }
        let path = self.dir.join(file_name(call_id));
        match std::fs::read(&path) {
            Ok(bytes) => {
                // The file is a copy for quick lookups, written without a sync: one cut by a
                // power loss is skipped and the store (which has the durable copy) answers.
                let v: Value = match serde_json::from_slice(&bytes) {
                    Ok(v) => v,
                    Err(e) => {
                        warn!(file = %path.display(), error = %e, "unreadable transcript file; asking the store");
                        return Ok(None);
                    }
                };
                // A hash collision would show another call's transcript: check the id.
                Ok((v.get("call_id").and_then(Value::as_str) == Some(call_id)).then_some(v))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Writes `<path>.tmp` and renames it over `path`, so a reader never sees half a file. Not
/// synced: the durable copy is the store's (`Record::Transcript`, synced with the CDRs), and
/// a file a power loss cuts is skipped by [`TranscriptStore::get_blocking`].
fn write_file(path: &Path, v: &Value) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("json.tmp");
    let mut f = match std::fs::File::create(&tmp) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::File::create(&tmp)?
        }
        Err(e) => return Err(e),
    };
    f.write_all(&serde_json::to_vec(v)?)?;
    drop(f);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn t0() -> (Instant, DateTime<Utc>) {
        let wall = DateTime::parse_from_rfc3339("2024-05-01T12:00:00.000Z")
            .unwrap()
            .with_timezone(&Utc);
        (Instant::now(), wall)
    }

    #[test]
    fn entries_carry_times_kinds_and_fields() {
        let (start, wall) = t0();
        let mut t = Transcript::new("abc@host", start, wall);
        t.answered(start + Duration::from_millis(40));
        t.prompt(start + Duration::from_millis(50), "greeting.wav");
        t.say(start + Duration::from_millis(1200), "Welcome to voxgate");
        t.dtmf(start + Duration::from_millis(3125), '5');
        t.dtmf(start + Duration::from_millis(3400), '#');
        t.speech(start + Duration::from_millis(4000), "sales", 0.8123, true);
        t.step(
            start + Duration::from_millis(4100),
            "api",
            "ok",
            Some("menu"),
        );
        t.transfer(
            start + Duration::from_millis(5000),
            "+3225551212",
            "failed: busy",
        );
        t.recording(start + Duration::from_millis(5100), "rec_1", "ready");
        t.ended(start + Duration::from_millis(6000), "bye");
        t.ended(start + Duration::from_millis(7000), "again");
        let v = t.to_json();
        assert_eq!(v["call_id"], "abc@host");
        let e = v["entries"].as_array().unwrap();
        assert_eq!(e.len(), 10);
        assert_eq!(
            e[1],
            json!({"at": "2024-05-01T12:00:00.050Z", "offset_ms": 50, "kind": "prompt", "text": "greeting.wav", "file": "greeting.wav"})
        );
        assert_eq!(e[2]["kind"], "say");
        assert_eq!(e[2]["text"], "Welcome to voxgate");
        assert_eq!(e[3]["at"], "2024-05-01T12:00:03.125Z");
        assert_eq!(e[3]["digit"], "5");
        assert_eq!(e[5]["confidence"], 0.812);
        assert_eq!(e[6]["step"], "api");
        assert_eq!(e[6]["dialog"], "menu");
        assert_eq!(e[7]["to"], "+3225551212");
        assert_eq!(e[9]["reason"], "bye");
        assert_eq!(t.digits(), "5#");
        let text = t.render_text();
        assert!(text.contains("Caller pressed 5"), "{text}");
        assert!(text.contains("Bot said: Welcome to voxgate"), "{text}");
        assert!(
            text.contains("2024-05-01 12:00:03.125 UTC (+3.1 s)"),
            "{text}"
        );
    }

    #[test]
    fn flow_events_become_entries() {
        use crate::flow::{FlowEvent, SessionInfo, SpeechOutcome};
        let (start, wall) = t0();
        let mut t = Transcript::new("c", start, wall);
        for ev in [
            FlowEvent::Started(SessionInfo::default()),
            FlowEvent::Dtmf {
                digit: '3',
                duration_ms: 100,
            },
            FlowEvent::Speech {
                id: 1,
                outcome: SpeechOutcome::Heard {
                    text: "sales".into(),
                    confidence: 0.9,
                },
            },
            FlowEvent::RecordingStarted { id: "rec_a".into() },
            FlowEvent::Paused,
        ] {
            record_event(&mut t, start, &ev);
        }
        t.transfer_started(start, "+3225551212");
        record_event(
            &mut t,
            start,
            &FlowEvent::TransferFailed {
                reason: "busy".into(),
                detail: "486".into(),
            },
        );
        let kinds: Vec<_> = t.entries().iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "call",
                "dtmf",
                "speech",
                "recording",
                "transfer",
                "transfer"
            ]
        );
        let last = t.entries().last().unwrap();
        assert_eq!(last.extra["to"], "+3225551212");
        assert_eq!(last.extra["outcome"], "failed: busy: 486");
    }

    #[test]
    fn caps_entries_and_text() {
        let (start, wall) = t0();
        let mut t = Transcript::new("c", start, wall);
        for _ in 0..MAX_ENTRIES + 3 {
            t.dtmf(start, '1');
        }
        t.say(start, &"x".repeat(MAX_TEXT + 10));
        assert_eq!(t.entries().len(), MAX_ENTRIES);
        assert_eq!(t.to_json()["dropped_entries"], 4);
        let mut t = Transcript::new("c", start, wall);
        t.say(start, &"é".repeat(MAX_TEXT + 10));
        assert_eq!(t.entries()[0].text.chars().count(), MAX_TEXT + 1);
    }

    #[test]
    fn store_serves_live_recent_and_files() {
        let dir = tempfile::tempdir().unwrap();
        let (start, wall) = t0();
        let store = TranscriptStore::new(dir.path().join("transcripts"));
        let id = "weird/../id@host";
        let t = store.open(id, start, wall);
        t.lock().unwrap().dtmf(start, '9');
        assert_eq!(
            store.get_blocking(id).unwrap().unwrap()["entries"][0]["text"],
            "9"
        );
        assert_eq!(store.get_blocking("other").unwrap(), None);
        t.lock().unwrap().ended(start, "bye");
        store.finish(id).unwrap();
        assert!(store.live(id).is_none());
        assert_eq!(store.get_blocking(id).unwrap().unwrap()["ended"], true);
        // A fresh store (a restart) reads the file.
        let path = dir.path().join("transcripts").join(file_name(id));
        for _ in 0..200 {
            if path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let store2 = TranscriptStore::new(dir.path().join("transcripts"));
        let v = store2.get_blocking(id).unwrap().unwrap();
        assert_eq!(v["entries"][0]["digit"], "9");
        assert_eq!(file_name(id).len(), 37);
        // A file cut short (it is not synced) is skipped, so the store is asked instead.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        let store3 = TranscriptStore::new(dir.path().join("transcripts"));
        assert_eq!(store3.get_blocking(id).unwrap(), None);
    }
}
