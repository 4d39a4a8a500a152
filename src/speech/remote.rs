//! A server-side recogniser speaking the Vosk server's WebSocket protocol (vosk-server's
//! `asr_server.py`; other engines such as Whisper servers offer the same protocol through
//! adapters). One connection per utterance, from the pool thread, with blocking IO bounded by
//! timeouts:
//!
//! 1. text `{"config": {"sample_rate": 8000, "phrase_list": [...]?, "words": 1}}`
//!    (`phrase_list` only in grammar / keywords mode);
//! 2. binary PCM 16-bit little-endian, 8 kHz mono, in chunks; the server answers each with a
//!    `{"partial": ...}` or `{"text": ...}` message;
//! 3. text `{"eof": 1}`; the server answers `{"text": "...", "result": [{"word", "conf"}, ...]}`.
//!
//! The utterance is buffered by VAD first and sent whole when it ends, so no network round
//! trip sits in the 20 ms frame loop.

use super::{Hypothesis, Recognizer, SpeechError};
use crate::flow::ListenMode;
use serde_json::{json, Value};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;
use tungstenite::{Message, WebSocket};

/// Audio per binary message: 0.5 s.
const CHUNK_SAMPLES: usize = 4000;
/// The most audio one utterance may buffer (60 s), whatever max_speech says.
const MAX_SAMPLES: usize = 8000 * 60;

pub struct RemoteRecognizer {
    url: String,
    timeout: Duration,
    phrases: Option<Vec<String>>,
    audio: Vec<i16>,
    active: bool,
}

impl RemoteRecognizer {
    /// `url` is `ws://host:port[/path]`.
    pub fn new(url: &str, timeout: Duration) -> Result<Self, SpeechError> {
        if !url.starts_with("ws://") {
            return Err(SpeechError::Engine(format!(
                "{url}: only ws:// is supported"
            )));
        }
        Ok(RemoteRecognizer {
            url: url.to_string(),
            timeout,
            phrases: None,
            audio: Vec::new(),
            active: false,
        })
    }

    fn connect(&self) -> Result<WebSocket<TcpStream>, SpeechError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            SpeechError::Engine(format!("{}: {what}: {e}", self.url))
        };
        let rest = &self.url["ws://".len()..];
        let authority = rest.split('/').next().unwrap_or(rest);
        let host_port = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:80")
        };
        let addr = host_port
            .to_socket_addrs()
            .map_err(|e| err("address", &e))?
            .next()
            .ok_or_else(|| SpeechError::Engine(format!("{}: no address", self.url)))?;
        let stream =
            TcpStream::connect_timeout(&addr, self.timeout).map_err(|e| err("connect", &e))?;
        stream
            .set_read_timeout(Some(self.timeout))
            .and_then(|()| stream.set_write_timeout(Some(self.timeout)))
            .map_err(|e| err("socket", &e))?;
        stream.set_nodelay(true).ok();
        let (ws, _) = tungstenite::client::client(self.url.as_str(), stream)
            .map_err(|e| err("handshake", &e))?;
        Ok(ws)
    }

    fn transact(&self) -> Result<Hypothesis, SpeechError> {
        let err = |e: tungstenite::Error| SpeechError::Engine(format!("{}: {e}", self.url));
        let mut ws = self.connect()?;
        let mut config = json!({"sample_rate": 8000, "words": 1});
        if let Some(p) = &self.phrases {
            // Vosk grammars list the phrases plus "[unk]" so other speech is not forced in.
            let mut list: Vec<Value> = p.iter().map(|s| Value::from(s.as_str())).collect();
            list.push(Value::from("[unk]"));
            config["phrase_list"] = Value::Array(list);
        }
        ws.send(Message::text(json!({ "config": config }).to_string()))
            .map_err(err)?;
        for chunk in self.audio.chunks(CHUNK_SAMPLES) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            ws.send(Message::binary(bytes)).map_err(err)?;
            // One answer (partial or result) per chunk.
            read_json(&mut ws)?;
        }
        ws.send(Message::text(r#"{"eof": 1}"#)).map_err(err)?;
        let last = read_json(&mut ws)?;
        ws.close(None).ok();
        Ok(parse_final(&last))
    }
}

fn read_json(ws: &mut WebSocket<TcpStream>) -> Result<Value, SpeechError> {
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => {
                return serde_json::from_str(t.as_str())
                    .map_err(|e| SpeechError::Engine(format!("bad reply from the server: {e}")))
            }
            Ok(Message::Close(_)) => {
                return Err(SpeechError::Engine(
                    "the server closed the connection".into(),
                ))
            }
            Ok(_) => continue,
            Err(e) => return Err(SpeechError::Engine(format!("server: {e}"))),
        }
    }
}

/// `{"text": ..., "result": [{"conf": ..}]}` -> hypothesis; confidence is the words' mean.
fn parse_final(v: &Value) -> Hypothesis {
    let text = v
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or("")
        .replace("[unk]", " ");
    let text = super::normalize(&text);
    let confs: Vec<f64> = v
        .get("result")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|w| w.get("conf")?.as_f64()).collect())
        .unwrap_or_default();
    let confidence = if text.is_empty() {
        0.0
    } else if confs.is_empty() {
        1.0
    } else {
        (confs.iter().sum::<f64>() / confs.len() as f64) as f32
    };
    Hypothesis { text, confidence }
}

impl Recognizer for RemoteRecognizer {
    fn name(&self) -> &'static str {
        "vosk"
    }

    fn begin(&mut self, mode: &ListenMode) -> Result<(), SpeechError> {
        self.phrases = match mode {
            ListenMode::Grammar(p) | ListenMode::Keywords(p) => Some(p.clone()),
            ListenMode::Free => None,
        };
        // Keywords are spotted in free speech: no grammar, the listener searches the text.
        if matches!(mode, ListenMode::Keywords(_)) {
            self.phrases = None;
        }
        self.audio.clear();
        self.active = true;
        Ok(())
    }

    fn feed(&mut self, samples: &[i16]) -> Result<(), SpeechError> {
        if !self.active {
            return Err(SpeechError::Engine("audio outside an utterance".into()));
        }
        let room = MAX_SAMPLES.saturating_sub(self.audio.len());
        self.audio
            .extend_from_slice(&samples[..samples.len().min(room)]);
        Ok(())
    }

    fn finish(&mut self) -> Result<Hypothesis, SpeechError> {
        if !self.active {
            return Err(SpeechError::Engine("no utterance to finish".into()));
        }
        self.active = false;
        let result = self.transact();
        self.audio.clear();
        result
    }

    fn abort(&mut self) {
        self.active = false;
        self.audio.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    /// A server speaking the Vosk protocol, answering `answer` to the final `eof`. Returns
    /// the config it got and the number of audio bytes.
    fn server(answer: Value) -> (String, std::thread::JoinHandle<(Value, usize)>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("ws://{}/", listener.local_addr().unwrap());
        let h = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut ws = tungstenite::accept(stream).unwrap();
            let mut config = Value::Null;
            let mut bytes = 0;
            loop {
                match ws.read().unwrap() {
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if v.get("config").is_some() {
                            config = v["config"].clone();
                        } else if v.get("eof").is_some() {
                            ws.send(Message::text(answer.to_string())).unwrap();
                            break;
                        }
                    }
                    Message::Binary(b) => {
                        bytes += b.len();
                        ws.send(Message::text(r#"{"partial": "sa"}"#)).unwrap();
                    }
                    _ => {}
                }
            }
            (config, bytes)
        });
        (url, h)
    }

    #[test]
    fn grammar_utterance_round_trip() {
        let (url, server) = server(json!({
            "text": "sales",
            "result": [{"word": "sales", "conf": 0.8, "start": 0.1, "end": 0.5}]
        }));
        let mut rec = RemoteRecognizer::new(&url, Duration::from_secs(5)).unwrap();
        rec.begin(&ListenMode::Grammar(vec!["sales".into(), "support".into()]))
            .unwrap();
        for _ in 0..50 {
            rec.feed(&[100i16; 160]).unwrap();
        }
        let h = rec.finish().unwrap();
        assert_eq!(
            h,
            Hypothesis {
                text: "sales".into(),
                confidence: 0.8
            }
        );
        let (config, bytes) = server.join().unwrap();
        assert_eq!(config["sample_rate"], 8000);
        assert_eq!(config["phrase_list"], json!(["sales", "support", "[unk]"]));
        assert_eq!(bytes, 50 * 160 * 2);
    }

    #[test]
    fn unknown_words_and_dead_servers() {
        let (url, server) = server(json!({"text": "[unk]"}));
        let mut rec = RemoteRecognizer::new(&url, Duration::from_secs(5)).unwrap();
        rec.begin(&ListenMode::Free).unwrap();
        rec.feed(&[0i16; 160]).unwrap();
        assert_eq!(rec.finish().unwrap().text, "");
        assert_eq!(server.join().unwrap().0.get("phrase_list"), None);

        // Nothing listens on the port any more.
        let mut rec = RemoteRecognizer::new(&url, Duration::from_millis(500)).unwrap();
        rec.begin(&ListenMode::Free).unwrap();
        rec.feed(&[0i16; 160]).unwrap();
        assert!(matches!(rec.finish(), Err(SpeechError::Engine(_))));
        assert!(RemoteRecognizer::new("http://x", Duration::from_secs(1)).is_err());
    }
}
