//! The WebSocket bot protocol on the wire (docs/websocket-protocol.md): message types, decoding
//! of what the bot sends, the sequence-stamping outbox with its replay buffer, and the audio
//! framing of both dialects (native PCM16LE binary frames, Twilio base64 μ-law). IO-free.

use crate::media::g711::{ulaw_decode, ulaw_encode};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, VecDeque};

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Bytes in one native binary audio frame (PCM16LE).
pub const FRAME_BYTES: usize = FRAME_SAMPLES * 2;
/// The default for `flow.websocket_max_message_bytes`: the largest message (text or binary)
/// the gateway uses. Room for a whole utterance: 4 min of Twilio base64 μ-law, 2 min of PCM16.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 4 << 20;
/// The range `flow.websocket_max_message_bytes` may take.
pub const MAX_MESSAGE_BYTES_RANGE: std::ops::RangeInclusive<usize> = (64 << 10)..=(64 << 20);

/// Which protocol the bot speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Dialect {
    #[default]
    Native,
    Twilio,
}

/// Why a frame from the bot could not be used. Reported to the bot as an `error` event.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the {limit}-byte limit (flow.websocket_max_message_bytes); it was not used")]
    TooLarge { size: usize, limit: usize },
    #[error("not JSON: {0}")]
    NotJson(String),
    #[error("message is not a JSON object")]
    NotObject,
    #[error("missing string field `{0}`")]
    MissingType(&'static str),
    #[error("unknown message type `{0}`")]
    UnknownType(String),
    #[error("`{0}` is not a message a bot sends: Twilio accepts media, mark and clear")]
    NotAccepted(String),
    #[error("streamSid `{0}` is not this connection's stream")]
    WrongStream(String),
    #[error("binary frames are not part of Twilio's protocol: send media messages")]
    BinaryFrame,
    #[error("bad `{kind}` message: {reason}")]
    BadFields { kind: String, reason: String },
    #[error("binary audio frame of {0} bytes is not whole 16-bit samples")]
    OddAudio(usize),
    #[error("bad media payload: {0}")]
    BadMedia(String),
}

impl DecodeError {
    /// A stable short code for the `error` event.
    pub fn code(&self) -> &'static str {
        match self {
            DecodeError::TooLarge { .. } => "too_large",
            DecodeError::NotJson(_) | DecodeError::NotObject => "bad_json",
            DecodeError::MissingType(_)
            | DecodeError::UnknownType(_)
            | DecodeError::NotAccepted(_) => "unknown_type",
            DecodeError::WrongStream(_) => "wrong_stream",
            DecodeError::BinaryFrame => "bad_frame",
            DecodeError::BadFields { .. } => "bad_fields",
            DecodeError::OddAudio(_) | DecodeError::BadMedia(_) => "bad_audio",
        }
    }
}

/// A command from a native-protocol bot.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type")]
pub enum Command {
    #[serde(rename = "answer")]
    Answer,
    #[serde(rename = "ring")]
    Ring,
    #[serde(rename = "reject")]
    Reject { sip_code: u16 },
    #[serde(rename = "say")]
    Say { text: String },
    #[serde(rename = "play")]
    Play { file: String },
    #[serde(rename = "mark")]
    Mark { name: String },
    #[serde(rename = "clear")]
    Clear,
    #[serde(rename = "record.start")]
    RecordStart,
    #[serde(rename = "record.stop")]
    RecordStop,
    #[serde(rename = "transfer")]
    Transfer {
        to: String,
        #[serde(default)]
        mode: Option<String>,
    },
    #[serde(rename = "hangup")]
    Hangup,
    #[serde(rename = "close")]
    Close {
        #[serde(default)]
        clear_session: bool,
    },
    #[serde(rename = "send_dtmf")]
    SendDtmf { digits: String },
    #[serde(rename = "set_variables")]
    SetVariables { variables: Map<String, Value> },
    #[serde(rename = "clear_session")]
    ClearSession,
    #[serde(rename = "pause")]
    Pause,
    /// Without `last_seq`: resume caller audio after `pause`. With it: replay every event
    /// after `last_seq` (after a reconnect).
    #[serde(rename = "resume")]
    Resume {
        #[serde(default)]
        last_seq: Option<u64>,
    },
    /// Chatlayer's JSON builder from an external bot: the gateway dispatches
    /// `CL_DISPATCH_EVENT` exactly as the embedded `json_builder` step does (events journal,
    /// signed webhook) and sends it back to the bot as a `CL_DISPATCH_EVENT` message.
    #[serde(rename = "dispatch")]
    Dispatch { payload: Map<String, Value> },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::Answer => "answer",
            Command::Ring => "ring",
            Command::Reject { .. } => "reject",
            Command::Say { .. } => "say",
            Command::Play { .. } => "play",
            Command::Mark { .. } => "mark",
            Command::Clear => "clear",
            Command::RecordStart => "record.start",
            Command::RecordStop => "record.stop",
            Command::Transfer { .. } => "transfer",
            Command::Hangup => "hangup",
            Command::Close { .. } => "close",
            Command::SendDtmf { .. } => "send_dtmf",
            Command::SetVariables { .. } => "set_variables",
            Command::ClearSession => "clear_session",
            Command::Pause => "pause",
            Command::Resume { .. } => "resume",
            Command::Dispatch { .. } => "dispatch",
        }
    }
}

const COMMAND_TYPES: &[&str] = &[
    "answer",
    "ring",
    "reject",
    "say",
    "play",
    "mark",
    "clear",
    "record.start",
    "record.stop",
    "transfer",
    "hangup",
    "close",
    "send_dtmf",
    "set_variables",
    "clear_session",
    "pause",
    "resume",
    "dispatch",
];

/// A decoded native command with its optional correlation id.
#[derive(Debug, Clone, PartialEq)]
pub struct Inbound {
    pub id: Option<String>,
    pub command: Command,
}

/// A decode failure, with the id when the frame carried one (so the bot can correlate).
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: Option<String>,
    pub error: DecodeError,
}

/// Decodes one native text frame (its size was checked by the caller). Never panics, whatever
/// the input.
pub fn decode_native(text: &str) -> Result<Inbound, Rejected> {
    let fail = |id: Option<String>, error| Rejected { id, error };
    let value: Value =
        serde_json::from_str(text).map_err(|e| fail(None, DecodeError::NotJson(e.to_string())))?;
    let obj = value
        .as_object()
        .ok_or_else(|| fail(None, DecodeError::NotObject))?;
    let id = match obj.get("id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.chars().take(128).collect()),
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(_) => {
            return Err(fail(
                None,
                DecodeError::BadFields {
                    kind: "id".into(),
                    reason: "`id` must be a string or number".into(),
                },
            ))
        }
    };
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .ok_or_else(|| fail(id.clone(), DecodeError::MissingType("type")))?;
    if !COMMAND_TYPES.contains(&kind) {
        let shown: String = kind.chars().take(64).collect();
        return Err(fail(id, DecodeError::UnknownType(shown)));
    }
    let kind = kind.to_string();
    match Command::deserialize(&value) {
        Ok(command) => Ok(Inbound { id, command }),
        Err(e) => Err(fail(
            id,
            DecodeError::BadFields {
                kind,
                reason: e.to_string(),
            },
        )),
    }
}

/// PCM16LE bytes to samples. Odd lengths are refused rather than guessed at.
pub fn pcm_from_bytes(data: &[u8]) -> Result<Vec<i16>, DecodeError> {
    if !data.len().is_multiple_of(2) {
        return Err(DecodeError::OddAudio(data.len()));
    }
    Ok(data
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect())
}

pub fn pcm_to_bytes(samples: &[i16]) -> Vec<u8> {
    samples.iter().flat_map(|s| s.to_le_bytes()).collect()
}

pub fn ulaw_b64_encode(samples: &[i16]) -> String {
    let bytes: Vec<u8> = samples.iter().map(|&s| ulaw_encode(s)).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn ulaw_b64_decode(payload: &str) -> Result<Vec<i16>, DecodeError> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(payload)
        .map_err(|e| DecodeError::BadMedia(e.to_string()))?;
    Ok(bytes.into_iter().map(ulaw_decode).collect())
}

/// An event from the gateway to a native bot. Serialized with `type` as the tag; the
/// envelope (`call_id`, `seq`, `ts`) is added by the [`Outbox`].
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type")]
pub enum Event {
    #[serde(rename = "session.start")]
    SessionStart {
        from: String,
        to: String,
        headers: BTreeMap<String, String>,
        audio: AudioFormat,
        reconnect: bool,
    },
    #[serde(rename = "ack")]
    Ack { id: String },
    #[serde(rename = "result")]
    Result {
        id: String,
        command: String,
        ok: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    #[serde(rename = "dtmf")]
    Dtmf { digit: String, duration_ms: u32 },
    #[serde(rename = "playback.mark")]
    PlaybackMark { name: String, cleared: bool },
    #[serde(rename = "recording.started")]
    RecordingStarted { recording_id: String },
    #[serde(rename = "recording.stopped")]
    RecordingStopped { recording_id: String },
    #[serde(rename = "recording.failed")]
    RecordingFailed {
        recording_id: Option<String>,
        reason: String,
    },
    #[serde(rename = "recording.ready")]
    RecordingReady {
        recording_id: String,
        duration_ms: u64,
        sha256: String,
    },
    #[serde(rename = "transfer.progress")]
    TransferProgress { status: u16 },
    #[serde(rename = "transfer.completed")]
    TransferCompleted { to: String, mode: String },
    #[serde(rename = "transfer.failed")]
    TransferFailed { reason: String, detail: String },
    #[serde(rename = "session.paused")]
    SessionPaused,
    #[serde(rename = "session.resumed")]
    SessionResumed,
    #[serde(rename = "error")]
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        code: String,
        message: String,
    },
    #[serde(rename = "session.end")]
    SessionEnd { reason: String, cdr: Value },
    /// A dispatched `CL_DISPATCH_EVENT` (the `dispatch` command): the payload as the webhook
    /// and `/v1/events` got it, the command's id, and what became of the webhook delivery.
    #[serde(rename = "CL_DISPATCH_EVENT")]
    Dispatched {
        payload: Value,
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        webhook: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AudioFormat {
    pub encoding: &'static str,
    pub sample_rate: u32,
    pub channels: u8,
    pub frame_ms: u32,
}

impl AudioFormat {
    pub fn pcm16() -> Self {
        AudioFormat {
            encoding: "pcm16le",
            sample_rate: 8000,
            channels: 1,
            frame_ms: 20,
        }
    }
}

/// What to send on the socket.
#[derive(Debug, Clone, PartialEq)]
pub enum Outgoing {
    Text(String),
    Binary(Vec<u8>),
    /// Close the socket with this status after what was queued before it.
    Close {
        code: u16,
        reason: String,
    },
}

/// Stamps `seq` on every text message the gateway sends and keeps the last `capacity` of them
/// so a reconnecting bot can ask for what it missed (`resume {last_seq}`).
#[derive(Debug)]
pub struct Outbox {
    call_id: String,
    seq: u64,
    capacity: usize,
    sent: VecDeque<(u64, String)>,
}

/// The replay could not go back far enough: events up to `oldest - 1` are gone.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("events {from}..{oldest} are no longer buffered")]
pub struct ReplayGap {
    pub from: u64,
    pub oldest: u64,
}

impl Outbox {
    pub fn new(call_id: String, capacity: usize) -> Self {
        Outbox {
            call_id,
            seq: 0,
            capacity: capacity.max(1),
            sent: VecDeque::new(),
        }
    }

    /// The seq of the last message stamped (0 before the first).
    pub fn last_seq(&self) -> u64 {
        self.seq
    }

    /// Serializes a native event with its envelope and remembers it for replay.
    pub fn native(&mut self, event: &Event, ts: &str) -> String {
        let mut value = serde_json::to_value(event).unwrap_or_else(|_| json!({"type": "error"}));
        self.seq += 1;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("call_id".into(), Value::String(self.call_id.clone()));
            obj.insert("seq".into(), Value::from(self.seq));
            obj.insert("ts".into(), Value::String(ts.to_string()));
        }
        self.remember(value.to_string())
    }

    /// Stamps a Twilio message: `sequenceNumber` is a string, "1" on `start`, one more on every
    /// message after it. Not remembered: Twilio has no replay.
    pub fn twilio(&mut self, mut value: Value) -> String {
        self.seq += 1;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("sequenceNumber".into(), Value::String(self.seq.to_string()));
        }
        value.to_string()
    }

    /// Starts numbering again from 1 (a Twilio reconnect is a new stream).
    pub fn restart(&mut self) {
        self.seq = 0;
        self.sent.clear();
    }

    fn remember(&mut self, text: String) -> String {
        self.sent.push_back((self.seq, text.clone()));
        while self.sent.len() > self.capacity {
            self.sent.pop_front();
        }
        text
    }

    /// Every buffered message after `last_seq`, oldest first. When some were already dropped
    /// from the buffer, the error says which; the caller still gets what is left via `Ok`
    /// from a second call with `last_seq = gap.oldest - 1`.
    pub fn replay_after(&self, last_seq: u64) -> Result<Vec<String>, ReplayGap> {
        if let Some((oldest, _)) = self.sent.front() {
            if last_seq + 1 < *oldest {
                return Err(ReplayGap {
                    from: last_seq + 1,
                    oldest: *oldest,
                });
            }
        }
        Ok(self
            .sent
            .iter()
            .filter(|(s, _)| *s > last_seq)
            .map(|(_, t)| t.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_command_kind() {
        let table: &[(&str, Command)] = &[
            (r#"{"type":"answer"}"#, Command::Answer),
            (r#"{"type":"ring"}"#, Command::Ring),
            (
                r#"{"type":"reject","sip_code":486}"#,
                Command::Reject { sip_code: 486 },
            ),
            (
                r#"{"type":"say","text":"hi"}"#,
                Command::Say { text: "hi".into() },
            ),
            (
                r#"{"type":"play","file":"a.wav"}"#,
                Command::Play {
                    file: "a.wav".into(),
                },
            ),
            (
                r#"{"type":"mark","name":"m1"}"#,
                Command::Mark { name: "m1".into() },
            ),
            (r#"{"type":"clear"}"#, Command::Clear),
            (r#"{"type":"record.start"}"#, Command::RecordStart),
            (r#"{"type":"record.stop"}"#, Command::RecordStop),
            (
                r#"{"type":"transfer","to":"+3225551212","mode":"refer"}"#,
                Command::Transfer {
                    to: "+3225551212".into(),
                    mode: Some("refer".into()),
                },
            ),
            (r#"{"type":"hangup"}"#, Command::Hangup),
            (
                r#"{"type":"close","clear_session":true}"#,
                Command::Close {
                    clear_session: true,
                },
            ),
            (
                r#"{"type":"close"}"#,
                Command::Close {
                    clear_session: false,
                },
            ),
            (
                r#"{"type":"send_dtmf","digits":"12#"}"#,
                Command::SendDtmf {
                    digits: "12#".into(),
                },
            ),
            (r#"{"type":"clear_session"}"#, Command::ClearSession),
            (r#"{"type":"pause"}"#, Command::Pause),
            (r#"{"type":"resume"}"#, Command::Resume { last_seq: None }),
            (
                r#"{"type":"dispatch","payload":{"a":1}}"#,
                Command::Dispatch {
                    payload: serde_json::from_str(r#"{"a":1}"#).unwrap(),
                },
            ),
            (
                r#"{"type":"resume","last_seq":7}"#,
                Command::Resume { last_seq: Some(7) },
            ),
        ];
        for (text, want) in table {
            let got = decode_native(text).unwrap_or_else(|e| panic!("{text}: {e:?}"));
            assert_eq!(&got.command, want, "{text}");
            assert_eq!(got.id, None);
            assert_eq!(
                got.command.name(),
                COMMAND_TYPES[COMMAND_TYPES
                    .iter()
                    .position(|t| *t == want.name())
                    .unwrap()]
            );
        }
    }

    #[test]
    fn ids_are_kept_as_strings() {
        let a = decode_native(r#"{"type":"say","id":"c1","text":"x"}"#).unwrap();
        assert_eq!(a.id.as_deref(), Some("c1"));
        let b = decode_native(r#"{"type":"answer","id":42}"#).unwrap();
        assert_eq!(b.id.as_deref(), Some("42"));
    }

    #[test]
    fn hostile_input_is_an_error_never_a_panic() {
        let table: &[(&str, &str, Option<&str>)] = &[
            ("", "bad_json", None),
            ("{", "bad_json", None),
            ("[1,2]", "bad_json", None),
            ("null", "bad_json", None),
            ("\u{0}\u{1}", "bad_json", None),
            (r#"{"id":"x"}"#, "unknown_type", Some("x")),
            (r#"{"type":5}"#, "unknown_type", None),
            (
                r#"{"type":"format_disk","id":"z"}"#,
                "unknown_type",
                Some("z"),
            ),
            (r#"{"type":"reject","id":"r"}"#, "bad_fields", Some("r")),
            (r#"{"type":"reject","sip_code":99999}"#, "bad_fields", None),
            (r#"{"type":"reject","sip_code":-1}"#, "bad_fields", None),
            (r#"{"type":"say","text":5}"#, "bad_fields", None),
            (
                r#"{"type":"set_variables","variables":[]}"#,
                "bad_fields",
                None,
            ),
            (r#"{"type":"resume","last_seq":"x"}"#, "bad_fields", None),
            (r#"{"type":"dispatch","id":"d"}"#, "bad_fields", Some("d")),
            (r#"{"type":"dispatch","payload":[1]}"#, "bad_fields", None),
            (r#"{"type":"dispatch","payload":"x"}"#, "bad_fields", None),
            (r#"{"type":"say","id":{},"text":"x"}"#, "bad_fields", None),
        ];
        for (text, code, id) in table {
            let e = decode_native(text).expect_err(text);
            assert_eq!(e.error.code(), *code, "{text}: {}", e.error);
            assert_eq!(e.id.as_deref(), *id, "{text}");
            assert!(!e.error.to_string().is_empty());
        }
    }

    #[test]
    fn audio_framing_round_trips() {
        let samples: Vec<i16> = (0..160).map(|i| (i * 200 - 16000) as i16).collect();
        let bytes = pcm_to_bytes(&samples);
        assert_eq!(bytes.len(), FRAME_BYTES);
        assert_eq!(pcm_from_bytes(&bytes).unwrap(), samples);
        assert_eq!(pcm_from_bytes(&[1, 2, 3]), Err(DecodeError::OddAudio(3)));
        let back = ulaw_b64_decode(&ulaw_b64_encode(&samples)).unwrap();
        for (a, b) in samples.iter().zip(&back) {
            assert!((a - b).abs() < 1100, "{a} vs {b}");
        }
    }

    #[test]
    fn outbox_stamps_monotonic_seq_and_replays_from_a_bounded_buffer() {
        let mut o = Outbox::new("c".into(), 3);
        for _ in 0..5 {
            o.native(&Event::SessionPaused, "t");
        }
        assert_eq!(o.last_seq(), 5);
        let r = o.replay_after(3).unwrap();
        assert_eq!(r.len(), 2);
        let v: Value = serde_json::from_str(&r[0]).unwrap();
        assert_eq!(v["seq"], 4);
        assert_eq!(v["call_id"], "c");
        assert_eq!(v["type"], "session.paused");
        assert_eq!(o.replay_after(5).unwrap().len(), 0);
        assert_eq!(o.replay_after(0), Err(ReplayGap { from: 1, oldest: 3 }));
        assert_eq!(o.replay_after(2).unwrap().len(), 3);
    }
}

/// HMAC-SHA256 over `"{timestamp}.{call_id}"`, hex: the `X-Voxgate-Signature` a bot checks on
/// the upgrade to know the connection comes from its gateway.
pub fn sign_upgrade(secret: &[u8], timestamp: i64, call_id: &str) -> String {
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<sha2::Sha256> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(format!("{timestamp}.{call_id}").as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod hmac_tests {
    #[test]
    fn upgrade_signature_is_hmac_sha256_of_timestamp_dot_call_id() {
        // Vectors from Python's hmac module:
        // hmac.new(b"secret", b"1700000000.call-1@host", hashlib.sha256).hexdigest()
        assert_eq!(
            super::sign_upgrade(b"secret", 1_700_000_000, "call-1@host"),
            "94d83e35bb884a3ce8523cdadaff1cc9d497bb8ae1e74fa180d22b17ca7ce845"
        );
        assert_eq!(
            super::sign_upgrade(b"k", 1, "c"),
            "aef8eecbe58d24a13caac9050861cb94890d7e7385139cefd7e11d945490a650"
        );
    }
}
