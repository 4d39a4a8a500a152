//! Twilio Media Streams on the wire (`flow.protocol = "twilio"`): the messages Twilio sends a
//! bidirectional stream (`<Connect><Stream>`), decoding of the three it accepts back (`media`,
//! `mark`, `clear`), SID-shaped identifiers, and `X-Twilio-Signature`. IO-free.
//!
//! Field names, types and shapes follow Twilio's "Media Streams - WebSocket Messages" page;
//! docs/websocket-protocol.md has the table of every message and what voxgate does with it.

use super::protocol::{ulaw_b64_decode, ulaw_b64_encode, DecodeError};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// The `accountSid` sent when `flow.twilio_account_sid` is not set: SID-shaped, and plainly
/// not a real account.
pub const DEFAULT_ACCOUNT_SID: &str = "AC00000000000000000000000000000000";

/// Twilio's limit on a `<Parameter>`'s name and value together; longer header values are cut.
pub const MAX_PARAMETER_CHARS: usize = 500;

/// Names voxgate always puts in `customParameters`.
pub const BUILTIN_PARAMETERS: [&str; 3] = ["from", "to", "sipCallId"];

/// `prefix` + 32 lower-case hex digits, as Twilio's SIDs are.
pub fn is_sid(prefix: &str, s: &str) -> bool {
    s.len() == 34
        && s.starts_with(prefix)
        && s[2..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn derived_sid(prefix: &str, seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    format!("{prefix}{}", hex::encode(&digest[..16]))
}

/// The `callSid` of a call: derived from the SIP Call-ID, so it is the same on every
/// connection (reconnects) and in every log of the call.
pub fn call_sid(sip_call_id: &str) -> String {
    derived_sid("CA", &format!("voxgate/call/{sip_call_id}"))
}

/// The `streamSid` of the `connection`-th connection of a call (1-based): each connection is
/// a new stream, as each `<Stream>` is on Twilio.
pub fn stream_sid(sip_call_id: &str, connection: u32) -> String {
    derived_sid("MZ", &format!("voxgate/stream/{connection}/{sip_call_id}"))
}

/// What identifies the stream in the messages.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamIds {
    pub account_sid: String,
    pub call_sid: String,
    pub stream_sid: String,
}

/// What a bot may send on a bidirectional stream.
#[derive(Debug, Clone, PartialEq)]
pub enum TwilioIn {
    /// Bot audio, decoded from base64 μ-law (any length: a 20 ms frame or a whole utterance).
    Media(Vec<i16>),
    Mark(String),
    Clear,
}

/// Decodes one text frame from the bot. `stream_sid` is the stream of this connection: a
/// message for another stream (or none) is refused, as Twilio refuses it (warning 31951).
/// Never panics.
pub fn decode(text: &str, stream_sid: &str) -> Result<TwilioIn, DecodeError> {
    let value: Value =
        serde_json::from_str(text).map_err(|e| DecodeError::NotJson(e.to_string()))?;
    let obj = value.as_object().ok_or(DecodeError::NotObject)?;
    let event = obj
        .get("event")
        .and_then(Value::as_str)
        .ok_or(DecodeError::MissingType("event"))?;
    if !matches!(event, "media" | "mark" | "clear") {
        return Err(DecodeError::NotAccepted(event.chars().take(64).collect()));
    }
    let bad = |reason: &str| DecodeError::BadFields {
        kind: event.to_string(),
        reason: reason.to_string(),
    };
    match obj.get("streamSid") {
        Some(Value::String(s)) if s == stream_sid => {}
        Some(Value::String(s)) => {
            return Err(DecodeError::WrongStream(s.chars().take(64).collect()));
        }
        _ => return Err(bad("missing string field `streamSid`")),
    }
    match event {
        "media" => {
            let payload = obj
                .get("media")
                .and_then(|m| m.get("payload"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("missing string field `media.payload`"))?;
            Ok(TwilioIn::Media(ulaw_b64_decode(payload)?))
        }
        "mark" => {
            let name = obj
                .get("mark")
                .and_then(|m| m.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(|| bad("missing string field `mark.name`"))?;
            Ok(TwilioIn::Mark(name.to_string()))
        }
        _ => Ok(TwilioIn::Clear),
    }
}

// ---- messages to the bot (the Outbox stamps `sequenceNumber` on all but `connected`) --------

/// The first message, exactly as Twilio sends it (no `sequenceNumber`, no `streamSid`).
pub fn connected() -> String {
    json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}).to_string()
}

pub fn start(ids: &StreamIds, custom_parameters: &BTreeMap<String, String>) -> Value {
    json!({
        "event": "start",
        "streamSid": ids.stream_sid,
        "start": {
            "accountSid": ids.account_sid,
            "streamSid": ids.stream_sid,
            "callSid": ids.call_sid,
            "tracks": ["inbound"],
            "customParameters": custom_parameters,
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
        },
    })
}

/// One 20 ms frame of the caller: `chunk` counts media messages from 1, `timestamp_ms` is the
/// frame's time since the stream started.
pub fn media(stream_sid: &str, chunk: u64, timestamp_ms: u64, samples: &[i16]) -> Value {
    json!({
        "event": "media",
        "streamSid": stream_sid,
        "media": {
            "track": "inbound",
            "chunk": chunk.to_string(),
            "timestamp": timestamp_ms.to_string(),
            "payload": ulaw_b64_encode(samples),
        },
    })
}

pub fn dtmf(stream_sid: &str, digit: char) -> Value {
    json!({
        "event": "dtmf",
        "streamSid": stream_sid,
        "dtmf": {"track": "inbound_track", "digit": digit.to_string()},
    })
}

pub fn mark(stream_sid: &str, name: &str) -> Value {
    json!({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})
}

pub fn stop(ids: &StreamIds) -> Value {
    json!({
        "event": "stop",
        "streamSid": ids.stream_sid,
        "stop": {"accountSid": ids.account_sid, "callSid": ids.call_sid},
    })
}

/// voxgate's report of a message it could not use (Twilio logs these as debugger warnings
/// 31950/31951; a bot that follows the protocol never gets one).
pub fn error(stream_sid: &str, code: &str, message: &str) -> Value {
    json!({
        "event": "error",
        "streamSid": stream_sid,
        "error": {"code": code, "message": message},
    })
}

// ---- X-Twilio-Signature ----------------------------------------------------------------------

/// Twilio's request signature (its helper libraries' `compute_signature`): base64 of the
/// HMAC-SHA1, keyed with the auth token, of the URL followed by every parameter, sorted by
/// name then value, as name + value with nothing between.
pub fn compute_signature(auth_token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    sorted.dedup();
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(auth_token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// `X-Twilio-Signature` for a WebSocket upgrade to `url`, as Twilio signs it: the `ws(s)://`
/// URL it connects to, with the query string's parameters (decoded) signed as parameters
/// rather than as part of the URL. A Media Streams URL has no query string (Twilio refuses
/// one), so this is normally the HMAC of the URL alone.
pub fn websocket_signature(auth_token: &str, url: &str) -> String {
    let url = url.split('#').next().unwrap_or(url);
    match url.split_once('?') {
        None => compute_signature(auth_token, url, &[]),
        Some((base, query)) => {
            let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
                .into_owned()
                .collect();
            compute_signature(auth_token, base, &params)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The vectors of Twilio's own helper library (twilio-python
    /// tests/unit/test_request_validator.py), token "12345".
    #[test]
    fn signature_matches_twilio_helper_library_vectors() {
        let uri = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = p(&[
            ("CallSid", "CA1234567890ABCDE"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
            ("Caller", "+14158675309"),
        ]);
        assert_eq!(
            compute_signature("12345", uri, &params),
            "RSOYDt4T1cUTdK1PDd93/VVr8B8="
        );
        // Repeated names: every value, sorted.
        let dup = p(&[
            ("Sid", "CA123"),
            ("SidAccount", "AC123"),
            ("Digits", "5678"),
            ("Digits", "1234"),
        ]);
        assert_eq!(
            compute_signature("12345", uri, &dup),
            "IK+Dwps556ElfBT0I3Rgjkr1wJU="
        );
        // The port-443 variant of the same request.
        assert_eq!(
            compute_signature(
                "12345",
                "https://mycompany.com:443/myapp.php?foo=1&bar=2",
                &params
            ),
            "kvajT1Ptam85bY51eRf/AJRuM3w="
        );
        // A JSON-bodied request: only the URL (with bodySHA256) is signed.
        let with_body = format!(
            "{uri}&bodySHA256=0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"
        );
        assert_eq!(
            compute_signature("12345", &with_body, &[]),
            "a9nBmqA0ju/hNViExpshrM61xv4="
        );
    }

    #[test]
    fn websocket_signature_signs_the_url_and_its_query_as_parameters() {
        let plain = "wss://bot.example.com:9443/media";
        assert_eq!(
            websocket_signature("tok", plain),
            compute_signature("tok", plain, &[])
        );
        assert_eq!(
            websocket_signature("tok", "wss://h/ws?b=2&a=x%20y"),
            compute_signature("tok", "wss://h/ws", &p(&[("a", "x y"), ("b", "2")]))
        );
        assert_ne!(
            websocket_signature("tok", plain),
            websocket_signature("other", plain)
        );
    }

    #[test]
    fn sids_are_sid_shaped_and_stable() {
        let a = call_sid("abc@host");
        assert!(is_sid("CA", &a), "{a}");
        assert_eq!(a, call_sid("abc@host"));
        assert_ne!(a, call_sid("abd@host"));
        let s1 = stream_sid("abc@host", 1);
        assert!(is_sid("MZ", &s1), "{s1}");
        assert_ne!(s1, stream_sid("abc@host", 2));
        assert!(is_sid("AC", DEFAULT_ACCOUNT_SID));
        assert!(!is_sid("AC", "AC0000"));
        assert!(!is_sid("AC", "ACzz000000000000000000000000000000"));
    }

    #[test]
    fn decodes_what_a_bot_sends() {
        let payload = ulaw_b64_encode(&[0i16; 8000]);
        let media =
            format!(r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{payload}"}}}}"#);
        match decode(&media, "MZ1").unwrap() {
            TwilioIn::Media(s) => assert_eq!(s.len(), 8000),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            decode(
                r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m"}}"#,
                "MZ1"
            )
            .unwrap(),
            TwilioIn::Mark("m".into())
        );
        assert_eq!(
            decode(r#"{"event":"clear","streamSid":"MZ1"}"#, "MZ1").unwrap(),
            TwilioIn::Clear
        );
    }

    #[test]
    fn refuses_what_twilio_refuses() {
        let table: &[(&str, &str)] = &[
            ("", "bad_json"),
            ("[]", "bad_json"),
            ("{}", "unknown_type"),
            (r#"{"event":"explode","streamSid":"MZ1"}"#, "unknown_type"),
            (r#"{"event":"start","streamSid":"MZ1"}"#, "unknown_type"),
            (r#"{"event":"dtmf","streamSid":"MZ1"}"#, "unknown_type"),
            (r#"{"event":"clear"}"#, "bad_fields"),
            (r#"{"event":"clear","streamSid":5}"#, "bad_fields"),
            (r#"{"event":"clear","streamSid":"MZ2"}"#, "wrong_stream"),
            (r#"{"event":"media","streamSid":"MZ1"}"#, "bad_fields"),
            (
                r#"{"event":"media","streamSid":"MZ1","media":{"payload":"***"}}"#,
                "bad_audio",
            ),
            (
                r#"{"event":"mark","streamSid":"MZ1","mark":{}}"#,
                "bad_fields",
            ),
        ];
        for (text, code) in table {
            let e = decode(text, "MZ1").expect_err(text);
            assert_eq!(e.code(), *code, "{text}: {e}");
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn outgoing_messages_have_twilios_shapes() {
        let c: Value = serde_json::from_str(&connected()).unwrap();
        assert_eq!(
            c,
            json!({"event":"connected","protocol":"Call","version":"1.0.0"})
        );
        let ids = StreamIds {
            account_sid: DEFAULT_ACCOUNT_SID.into(),
            call_sid: call_sid("x"),
            stream_sid: stream_sid("x", 1),
        };
        let mut params = BTreeMap::new();
        params.insert("from".to_string(), "+32".to_string());
        let s = start(&ids, &params);
        assert_eq!(s["start"]["callSid"], ids.call_sid);
        assert_eq!(s["start"]["tracks"], json!(["inbound"]));
        assert_eq!(s["start"]["customParameters"]["from"], "+32");
        assert_eq!(s["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
        let m = media(&ids.stream_sid, 3, 40, &[0; 160]);
        assert_eq!(m["media"]["chunk"], "3");
        assert_eq!(m["media"]["timestamp"], "40");
        assert_eq!(m["media"]["payload"].as_str().unwrap().len(), 216);
        assert_eq!(dtmf("s", '#')["dtmf"]["track"], "inbound_track");
        assert_eq!(stop(&ids)["stop"]["accountSid"], DEFAULT_ACCOUNT_SID);
    }
}
