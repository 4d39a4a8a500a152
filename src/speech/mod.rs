//! Speech in: what a `listen` step hears.
//!
//! The call side pushes the caller's 20 ms frames into a [`FrameSink`] (a bounded channel:
//! when it is full the frame is dropped and counted, so the media path never waits). A
//! bounded pool of recogniser threads ([`SpeechPool`]) takes each `listen`: voice activity
//! detection ([`vad`]) finds the start and end of the utterance, a [`Recognizer`] turns it
//! into text, and the outcome goes back to the call as [`FlowEvent`]s
//! (`SpeechStarted`, then exactly one `Speech`). When every recogniser is busy the listen
//! fails at once with an error outcome instead of queueing.
//!
//! Engines sit behind [`Recognizer`]: PocketSphinx in-process (the default; see
//! docs/speech.md for why) or a Vosk-protocol server over WebSocket.

pub mod listen;
pub mod pocketsphinx;
pub mod pool;
pub mod remote;
pub mod vad;

pub use listen::{Listener, ListenerConfig};
pub use pool::{FrameSink, ListenHandle, SpeechPool};

use crate::flow::{ListenMode, SpeechOutcome, StepFailure};

/// Samples in one 20 ms frame at 8 kHz: the unit VAD and recognisers work in.
pub const FRAME_SAMPLES: usize = 160;

/// Why recognition could not be done. Reported to the flow as `SpeechOutcome::Error` with
/// [`SpeechError::code`] (the step's `error.detail_code`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpeechError {
    #[error("all {0} recognisers are busy")]
    Busy(usize),
    #[error("speech recognition is not configured")]
    NotConfigured,
    #[error("speech recognition is off ([speech] engine = \"off\")")]
    Off,
    /// The engine's library or model is not installed (or could not be loaded).
    #[error("speech recognition is unavailable: {0}")]
    Unavailable(String),
    #[error("the listen step has nothing to listen for (empty grammar or keywords)")]
    EmptyGrammar,
    #[error("cannot recognise {word:?}: not in the recogniser's dictionary")]
    UnknownWord { word: String },
    #[error("{0} is not supported by this recogniser")]
    Unsupported(&'static str),
    #[error("recogniser: {0}")]
    Engine(String),
}

impl SpeechError {
    /// A short, stable code the flow can branch on (`error.detail_code` of a failed `listen`):
    /// `busy`, `not_configured` (no engine, or `engine = "off"`), `unavailable` (the engine's
    /// library or model is missing), `grammar` (empty, or a word the recogniser does not know),
    /// `unsupported`, `engine` (the recogniser failed).
    pub fn code(&self) -> &'static str {
        match self {
            SpeechError::Busy(_) => "busy",
            SpeechError::NotConfigured | SpeechError::Off => "not_configured",
            SpeechError::Unavailable(_) => "unavailable",
            SpeechError::EmptyGrammar | SpeechError::UnknownWord { .. } => "grammar",
            SpeechError::Unsupported(_) => "unsupported",
            SpeechError::Engine(_) => "engine",
        }
    }

    /// The outcome that reports this error to the flow.
    pub fn outcome(&self) -> SpeechOutcome {
        SpeechOutcome::Error(StepFailure {
            code: self.code().to_string(),
            message: self.to_string(),
        })
    }
}

/// The recogniser's best guess for one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Lower-case words separated by single spaces; empty when nothing was recognised.
    pub text: String,
    /// 0..=1: how much better the words fit the audio than any other sound would.
    pub confidence: f32,
}

/// A speech recogniser: one utterance at a time, fed in order. Implementations run on a pool
/// thread and may block and burn CPU there; they never run on tokio workers.
pub trait Recognizer: Send {
    /// A short name for logs and docs ("pocketsphinx", "vosk").
    fn name(&self) -> &'static str;
    /// Prepares for one utterance in this mode (compiles the grammar). Called when a `listen`
    /// starts, before any audio, so a bad grammar fails the step at once.
    fn begin(&mut self, mode: &ListenMode) -> Result<(), SpeechError>;
    /// The utterance's audio: 8 kHz mono PCM, in order, any length.
    fn feed(&mut self, samples: &[i16]) -> Result<(), SpeechError>;
    /// The end of the utterance: the best hypothesis. The recogniser is then ready for `begin`.
    fn finish(&mut self) -> Result<Hypothesis, SpeechError>;
    /// Abandons the utterance (no speech, stopped); ready for `begin` again.
    fn abort(&mut self);
}

/// Lower-case words made of letters, digits and apostrophes, one space apart: the form that
/// grammars are compiled from and recognised text is compared in.
pub fn normalize(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text
        .split(|c: char| !(c.is_alphanumeric() || c == '\''))
        .map(|w| w.trim_matches('\''))
        .filter(|w| !w.is_empty())
    {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

/// Whether `phrase` (normalised) occurs in `text` (normalised) as whole words.
pub fn contains_phrase(text: &str, phrase: &str) -> bool {
    if phrase.is_empty() {
        return false;
    }
    let t: Vec<&str> = text.split(' ').collect();
    let p: Vec<&str> = phrase.split(' ').collect();
    t.windows(p.len()).any(|w| w == p.as_slice())
}

/// Builds the recogniser pool `[speech]` asks for (blocking: libraries and models load here;
/// call it from a blocking thread). An error is not fatal to the gateway: it says why listens
/// will fail over (`Off`, `Unavailable` when PocketSphinx or its model is not installed, ...)
/// and is what each `listen` then answers.
pub fn start_pool(cfg: &crate::config::SpeechConfig) -> Result<SpeechPool, SpeechError> {
    let listener = ListenerConfig {
        vad: vad::VadConfig {
            threshold_db: cfg.vad_threshold_db,
            end_frames: (cfg.end_silence_ms / 20).max(1) as u32,
            ..vad::VadConfig::default()
        },
        min_confidence: cfg.min_confidence,
        ..ListenerConfig::default()
    };
    let mut recognizers: Vec<Box<dyn Recognizer>> = Vec::with_capacity(cfg.pool_size);
    match cfg.engine.as_str() {
        "off" => return Err(SpeechError::Off),
        "vosk" => {
            let url = cfg
                .server_url
                .as_deref()
                .ok_or(SpeechError::NotConfigured)?;
            let timeout = std::time::Duration::from_millis(cfg.server_timeout_ms);
            for _ in 0..cfg.pool_size {
                recognizers.push(Box::new(remote::RemoteRecognizer::new(url, timeout)?));
            }
        }
        "pocketsphinx" => {
            pocketsphinx::load_library()?;
            let dir = cfg
                .model_dir
                .clone()
                .unwrap_or_else(|| std::path::PathBuf::from(pocketsphinx::DEBIAN_MODEL_DIR));
            let paths = pocketsphinx::ModelPaths::in_dir(&dir, cfg.free_speech)?;
            for _ in 0..cfg.pool_size {
                recognizers.push(Box::new(pocketsphinx::PocketSphinx::new(&paths)?));
            }
        }
        other => {
            return Err(SpeechError::Engine(format!("unknown engine {other:?}")));
        }
    }
    SpeechPool::new(recognizers, listener, cfg.frame_queue)
}

/// A gateway's recogniser pool, loaded only once a flow has a `listen` step: each recogniser
/// holds its model (PocketSphinx en-us: about 80 MB of heap), which a gateway whose flows never
/// listen should not pay.
pub struct SpeechSlot {
    cfg: crate::config::SpeechConfig,
    cell: std::sync::OnceLock<Result<SpeechPool, SpeechError>>,
    claimed: std::sync::atomic::AtomicBool,
}

impl SpeechSlot {
    pub fn new(cfg: crate::config::SpeechConfig) -> Self {
        SpeechSlot {
            cfg,
            cell: std::sync::OnceLock::new(),
            claimed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// True for the first caller only: that caller loads (with [`SpeechSlot::load`]).
    pub fn claim(&self) -> bool {
        !self.claimed.swap(true, std::sync::atomic::Ordering::SeqCst)
    }

    /// Loads the pool (blocking: libraries and models; run it off the async workers). Only
    /// the first call loads; later ones return the same result.
    pub fn load(&self) -> &Result<SpeechPool, SpeechError> {
        self.claimed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.cell.get_or_init(|| start_pool(&self.cfg))
    }

    /// Whether the pool has been loaded (successfully or not).
    pub fn is_loaded(&self) -> bool {
        self.cell.get().is_some()
    }

    /// The pool for a `listen`; `unavailable` while it is still loading (or was never needed).
    pub fn get(&self) -> Result<SpeechPool, SpeechError> {
        match self.cell.get() {
            Some(Ok(pool)) => Ok(pool.clone()),
            Some(Err(e)) => Err(e.clone()),
            None => Err(SpeechError::Unavailable(
                "the recognisers are still loading".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slot_loads_once_and_says_unavailable_before() {
        let cfg = crate::config::SpeechConfig {
            engine: "off".into(),
            ..crate::config::Config::default().speech
        };
        let slot = SpeechSlot::new(cfg);
        assert!(!slot.is_loaded());
        assert_eq!(slot.get().err().map(|e| e.code()), Some("unavailable"));
        assert!(slot.claim(), "the first claim wins");
        assert!(!slot.claim(), "only once");
        assert_eq!(slot.load().as_ref().err(), Some(&SpeechError::Off));
        assert!(slot.is_loaded());
        assert_eq!(slot.get().err(), Some(SpeechError::Off));
    }

    #[test]
    fn normalize_keeps_words_only() {
        assert_eq!(normalize("  Opening-Hours? "), "opening hours");
        assert_eq!(normalize("I'd like SALES!"), "i'd like sales");
        assert_eq!(normalize("'quoted'"), "quoted");
        assert_eq!(normalize("...!"), "");
    }

    #[test]
    fn phrases_match_whole_words() {
        assert!(contains_phrase("i want sales please", "sales"));
        assert!(contains_phrase(
            "what are your opening hours",
            "opening hours"
        ));
        assert!(!contains_phrase("wholesales", "sales"));
        assert!(!contains_phrase("opening the hours", "opening hours"));
        assert!(!contains_phrase("sales", ""));
    }
}
