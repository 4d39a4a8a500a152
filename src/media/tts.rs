//! Text to speech through the `espeak-ng` command-line tool, producing prompt-ready 8 kHz
//! mono audio.
//!
//! espeak-ng is run directly (never through a shell) with the text as a single argument after
//! `--`, so neither shell metacharacters nor a leading `-` in the text can change what runs.
//! Its 22050 Hz WAV output is converted by [`crate::media::prompts::decode_wav`]. Results are
//! cached per (voice, text) because flows repeat the same sentences on every call. When
//! espeak-ng is not installed, [`Tts::say`] plays a configured fallback WAV instead of
//! leaving the caller in silence.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use crate::media::prompts::{decode_wav, PromptCache, PromptError, WavError};

/// The program looked up on `PATH` unless [`Tts::with_binary`] says otherwise.
pub const DEFAULT_BINARY: &str = "espeak-ng";
/// Longest text accepted, in characters; about a minute of speech, which bounds both the
/// synthesis time and the memory its output takes.
pub const MAX_TEXT_CHARS: usize = 1000;
/// How long espeak-ng may run before it is killed.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Cached utterances kept at most.
pub const DEFAULT_CACHE_ENTRIES: usize = 128;
/// Cached audio kept at most, in samples (10 minutes at 8 kHz, about 9.6 MB).
pub const DEFAULT_CACHE_SAMPLES: usize = 8000 * 60 * 10;
/// Longest voice name accepted.
const MAX_VOICE_CHARS: usize = 64;
/// How much of espeak-ng's stderr is quoted in an error.
const MAX_STDERR_CHARS: usize = 300;

/// Why speech could not be produced.
#[derive(Debug, Error)]
pub enum TtsError {
    #[error(
        "text to speech is not available: `{}` was not found; install espeak-ng \
         (e.g. `apt install espeak-ng`) or configure its path",
        binary.display()
    )]
    NotInstalled { binary: PathBuf },
    #[error("text to speech: nothing to say (text is empty)")]
    EmptyText,
    #[error("text to speech: text is {len} characters, over the {max}-character limit")]
    TextTooLong { len: usize, max: usize },
    #[error("text to speech: invalid voice name {0:?} (expected e.g. \"en-us\" or \"en+f3\")")]
    BadVoice(String),
    #[error("text to speech: could not run `{}`: {source}", binary.display())]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("text to speech: `{}` did not finish within {timeout:?} and was killed", binary.display())]
    Timeout { binary: PathBuf, timeout: Duration },
    #[error("text to speech: `{}` failed ({status}): {stderr}", binary.display())]
    Failed {
        binary: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    #[error("text to speech: espeak-ng output could not be decoded: {0}")]
    BadOutput(#[source] WavError),
    #[error("text to speech fallback could not be loaded: {0}")]
    Fallback(#[source] PromptError),
    #[error("text to speech fallback loader stopped: {0}")]
    FallbackTask(#[source] tokio::task::JoinError),
}

/// Synthesizes `text` with the default binary and timeout, uncached. Most callers want a
/// [`Tts`], which caches and knows the fallback.
pub async fn synthesize(text: &str, voice: &str) -> Result<Arc<[i16]>, TtsError> {
    run_espeak(Path::new(DEFAULT_BINARY), text, voice, DEFAULT_TIMEOUT).await
}

/// Speech (or the fallback standing in for it) ready to play.
#[derive(Debug, Clone)]
pub struct Spoken {
    /// 8 kHz mono samples.
    pub audio: Arc<[i16]>,
    /// `Some(reason)` when this is the fallback prompt because synthesis failed.
    pub fallback: Option<String>,
}

impl Spoken {
    pub fn is_fallback(&self) -> bool {
        self.fallback.is_some()
    }
}

/// A configured speaker: binary, default voice, fallback prompt and a bounded cache.
pub struct Tts {
    binary: PathBuf,
    voice: String,
    fallback_wav: Option<PathBuf>,
    timeout: Duration,
    prompts: Arc<PromptCache>,
    cache: Mutex<SpeechCache>,
    /// "Not installed" is a standing condition, not news on every call: warn once.
    warned_missing: AtomicBool,
}

impl fmt::Debug for Tts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tts")
            .field("binary", &self.binary)
            .field("voice", &self.voice)
            .field("fallback_wav", &self.fallback_wav)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Tts {
    /// A speaker using `espeak-ng` from `PATH` with `voice` (e.g. "en-us"); `fallback_wav`
    /// is played by [`Tts::say`] when synthesis is impossible.
    pub fn new(voice: impl Into<String>, fallback_wav: Option<PathBuf>) -> Self {
        Tts {
            binary: PathBuf::from(DEFAULT_BINARY),
            voice: voice.into(),
            fallback_wav,
            timeout: DEFAULT_TIMEOUT,
            prompts: Arc::new(PromptCache::new()),
            cache: Mutex::new(SpeechCache::new(
                DEFAULT_CACHE_ENTRIES,
                DEFAULT_CACHE_SAMPLES,
            )),
            warned_missing: AtomicBool::new(false),
        }
    }

    /// Uses this program instead of `espeak-ng` from `PATH`.
    pub fn with_binary(mut self, path: impl Into<PathBuf>) -> Self {
        self.binary = path.into();
        self
    }

    /// Kills synthesis that runs longer than this.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Loads the fallback through a shared prompt cache instead of a private one.
    pub fn with_prompt_cache(mut self, prompts: Arc<PromptCache>) -> Self {
        self.prompts = prompts;
        self
    }

    /// Bounds the speech cache (entries and total samples).
    pub fn with_cache_limits(mut self, max_entries: usize, max_samples: usize) -> Self {
        self.cache = Mutex::new(SpeechCache::new(max_entries, max_samples));
        self
    }

    /// The default voice used by [`Tts::say`].
    pub fn voice(&self) -> &str {
        &self.voice
    }

    /// Synthesizes `text` in `voice`, from the cache when it was said before.
    pub async fn synthesize(&self, text: &str, voice: &str) -> Result<Arc<[i16]>, TtsError> {
        let text = clean_text(text)?;
        check_voice(voice)?;
        let key = (voice.to_owned(), text);
        if let Some(audio) = self.lock_cache().get(&key) {
            return Ok(audio);
        }
        let audio = run_espeak(&self.binary, &key.1, voice, self.timeout).await?;
        self.lock_cache().insert(key, Arc::clone(&audio));
        Ok(audio)
    }

    /// Says `text` in the default voice. If speech cannot be produced (espeak-ng missing,
    /// crashing, timing out) and a fallback WAV is configured, returns that instead, marked
    /// as a fallback, after logging why. Invalid input (empty or over-long text, a bad voice
    /// name) is the caller's bug and is returned as an error either way.
    pub async fn say(&self, text: &str) -> Result<Spoken, TtsError> {
        let err = match self.synthesize(text, &self.voice).await {
            Ok(audio) => {
                return Ok(Spoken {
                    audio,
                    fallback: None,
                })
            }
            Err(
                e @ (TtsError::EmptyText | TtsError::TextTooLong { .. } | TtsError::BadVoice(_)),
            ) => return Err(e),
            Err(e) => e,
        };
        let Some(path) = self.fallback_wav.clone() else {
            return Err(err);
        };
        if matches!(err, TtsError::NotInstalled { .. }) {
            if !self.warned_missing.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    fallback = %path.display(),
                    "{err}; playing the fallback prompt instead (warning shown once)"
                );
            }
        } else {
            tracing::warn!(fallback = %path.display(), "{err}; playing the fallback prompt");
        }
        let prompts = Arc::clone(&self.prompts);
        let audio = tokio::task::spawn_blocking(move || prompts.get(&path))
            .await
            .map_err(TtsError::FallbackTask)?
            .map_err(TtsError::Fallback)?;
        Ok(Spoken {
            audio,
            fallback: Some(err.to_string()),
        })
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, SpeechCache> {
        // Cache operations cannot panic midway, so a poisoned lock still holds a sound map.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Replaces control characters (which espeak-ng does not need and NUL cannot be passed in an
/// argument) with spaces, trims, and enforces the length limit.
fn clean_text(text: &str) -> Result<String, TtsError> {
    let cleaned: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let cleaned = cleaned.trim();
    if cleaned.is_empty() {
        return Err(TtsError::EmptyText);
    }
    let len = cleaned.chars().count();
    if len > MAX_TEXT_CHARS {
        return Err(TtsError::TextTooLong {
            len,
            max: MAX_TEXT_CHARS,
        });
    }
    Ok(cleaned.to_owned())
}

/// espeak-ng voice names look like `en-us`, `en+f3`, `gmw/en`, `mb-us1`. A leading `-`
/// would be read as an option, so it is refused.
fn check_voice(voice: &str) -> Result<(), TtsError> {
    let ok = !voice.is_empty()
        && voice.len() <= MAX_VOICE_CHARS
        && !voice.starts_with('-')
        && voice
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '+' | '/' | '.'));
    if ok {
        Ok(())
    } else {
        Err(TtsError::BadVoice(voice.to_owned()))
    }
}

async fn run_espeak(
    binary: &Path,
    text: &str,
    voice: &str,
    timeout: Duration,
) -> Result<Arc<[i16]>, TtsError> {
    let text = clean_text(text)?;
    check_voice(voice)?;
    let spawn = || {
        tokio::process::Command::new(binary)
            .arg("--stdout")
            .arg("-v")
            .arg(voice)
            .arg("--")
            .arg(&text)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Dropping the wait future on timeout then kills the process.
            .kill_on_drop(true)
            .spawn()
    };
    // ETXTBSY: the binary was just written and a concurrent fork still holds it open for
    // writing (package upgrades, tests). It clears within milliseconds, so retry briefly.
    let mut attempt = spawn();
    for _ in 0..5 {
        match &attempt {
            Err(e) if e.raw_os_error() == Some(26) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
                attempt = spawn();
            }
            _ => break,
        }
    }
    let child = attempt.map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            TtsError::NotInstalled {
                binary: binary.to_path_buf(),
            }
        } else {
            TtsError::Spawn {
                binary: binary.to_path_buf(),
                source,
            }
        }
    })?;
    let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(result) => result.map_err(|source| TtsError::Spawn {
            binary: binary.to_path_buf(),
            source,
        })?,
        Err(_) => {
            return Err(TtsError::Timeout {
                binary: binary.to_path_buf(),
                timeout,
            })
        }
    };
    if !output.status.success() {
        let stderr: String = String::from_utf8_lossy(&output.stderr)
            .trim()
            .chars()
            .take(MAX_STDERR_CHARS)
            .collect();
        return Err(TtsError::Failed {
            binary: binary.to_path_buf(),
            status: output.status,
            stderr,
        });
    }
    let samples = decode_wav(&output.stdout).map_err(TtsError::BadOutput)?;
    tracing::debug!(
        voice,
        chars = text.chars().count(),
        samples = samples.len(),
        "synthesized"
    );
    Ok(samples.into())
}

/// Cache key: (voice, cleaned text).
type Key = (String, String);

/// Least-recently-used cache bounded by entry count and total samples. Eviction scans all
/// entries, which is fine for the hundred or so a gateway holds.
#[derive(Debug)]
struct SpeechCache {
    max_entries: usize,
    max_samples: usize,
    total_samples: usize,
    clock: u64,
    /// Audio and the clock value of its last use.
    map: HashMap<Key, (Arc<[i16]>, u64)>,
}

impl SpeechCache {
    fn new(max_entries: usize, max_samples: usize) -> Self {
        SpeechCache {
            max_entries,
            max_samples,
            total_samples: 0,
            clock: 0,
            map: HashMap::new(),
        }
    }

    fn get(&mut self, key: &Key) -> Option<Arc<[i16]>> {
        self.clock += 1;
        let clock = self.clock;
        self.map.get_mut(key).map(|(audio, used)| {
            *used = clock;
            Arc::clone(audio)
        })
    }

    fn insert(&mut self, key: Key, audio: Arc<[i16]>) {
        if self.max_entries == 0 || audio.len() > self.max_samples {
            return;
        }
        self.clock += 1;
        self.total_samples += audio.len();
        if let Some((old, _)) = self.map.insert(key, (audio, self.clock)) {
            self.total_samples -= old.len();
        }
        while self.map.len() > self.max_entries || self.total_samples > self.max_samples {
            let Some(oldest) = self
                .map
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            if let Some((old, _)) = self.map.remove(&oldest) {
                self.total_samples -= old.len();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    fn key(voice: &str, text: &str) -> Key {
        (voice.to_owned(), text.to_owned())
    }

    fn audio(n: usize) -> Arc<[i16]> {
        vec![1i16; n].into()
    }

    fn write_fallback(dir: &Path) -> PathBuf {
        let path = dir.join("fallback.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&path, spec).unwrap();
        for s in [5i16, -5, 10, -10] {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
        path
    }

    /// Writes an executable stand-in for espeak-ng.
    fn fake_binary(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-espeak");
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(format!("#!/bin/sh\n{body}\n").as_bytes())
            .unwrap();
        f.sync_all().unwrap();
        drop(f);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// Runs a synthesis, retrying "text file busy": another test thread forking while the
    /// fake script was still open for writing can briefly make it unexecutable.
    async fn synth(tts: &Tts, text: &str, voice: &str) -> Result<Arc<[i16]>, TtsError> {
        for _ in 0..20 {
            match tts.synthesize(text, voice).await {
                Err(TtsError::Spawn { source, .. }) if source.raw_os_error() == Some(26) => {
                    tokio::task::yield_now().await
                }
                other => return other,
            }
        }
        tts.synthesize(text, voice).await
    }

    #[test]
    fn cache_evicts_least_recently_used_by_count() {
        let mut c = SpeechCache::new(2, 1000);
        c.insert(key("en", "a"), audio(1));
        c.insert(key("en", "b"), audio(1));
        assert!(c.get(&key("en", "a")).is_some()); // "b" is now the oldest
        c.insert(key("en", "c"), audio(1));
        assert!(c.get(&key("en", "b")).is_none());
        assert!(c.get(&key("en", "a")).is_some());
        assert!(c.get(&key("en", "c")).is_some());
        assert!(c.get(&key("de", "a")).is_none(), "voice is part of the key");
    }

    #[test]
    fn cache_evicts_by_total_samples() {
        let mut c = SpeechCache::new(100, 10);
        c.insert(key("en", "a"), audio(4));
        c.insert(key("en", "b"), audio(4));
        c.insert(key("en", "c"), audio(4));
        assert_eq!(c.total_samples, 8);
        assert!(c.get(&key("en", "a")).is_none());
        c.insert(key("en", "huge"), audio(11));
        assert!(
            c.get(&key("en", "huge")).is_none(),
            "over-size audio is not cached"
        );
        c.insert(key("en", "b"), audio(2));
        assert_eq!(
            c.total_samples, 6,
            "replacing an entry releases the old size"
        );
    }

    #[test]
    fn input_is_validated() {
        assert!(matches!(clean_text(" \n\t "), Err(TtsError::EmptyText)));
        assert_eq!(clean_text(" hi\0there\n").unwrap(), "hi there");
        let long = "a".repeat(MAX_TEXT_CHARS + 1);
        let e = clean_text(&long).unwrap_err();
        assert!(e.to_string().contains("1001 characters"), "{e}");
        assert!(check_voice("en-us").is_ok());
        assert!(check_voice("en+f3").is_ok());
        assert!(check_voice("gmw/en").is_ok());
        for bad in ["", "--help", "en us", "en;rm", &"x".repeat(65)] {
            assert!(
                matches!(check_voice(bad), Err(TtsError::BadVoice(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn missing_binary_is_not_installed() {
        let tts = Tts::new("en-us", None).with_binary("/nonexistent/espeak-ng");
        let e = tts.synthesize("hello", "en-us").await.unwrap_err();
        assert!(matches!(e, TtsError::NotInstalled { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(msg.contains("/nonexistent/espeak-ng") && msg.contains("install espeak-ng"));
        // say() without a fallback passes the error on.
        assert!(matches!(
            tts.say("hello").await,
            Err(TtsError::NotInstalled { .. })
        ));
    }

    #[tokio::test]
    async fn missing_binary_plays_fallback_and_warns_once() {
        let dir = tempfile::tempdir().unwrap();
        let fallback = write_fallback(dir.path());
        let tts = Tts::new("en-us", Some(fallback)).with_binary("/nonexistent/espeak-ng");
        assert!(!tts.warned_missing.load(Ordering::Relaxed));
        let spoken = tts.say("hello").await.unwrap();
        assert!(spoken.is_fallback());
        assert!(spoken
            .fallback
            .as_deref()
            .unwrap()
            .contains("not available"));
        assert_eq!(&*spoken.audio, &[5, -5, 10, -10]);
        assert!(tts.warned_missing.load(Ordering::Relaxed));
        let again = tts.say("hello again").await.unwrap();
        assert!(
            Arc::ptr_eq(&spoken.audio, &again.audio),
            "fallback is cached"
        );
        // Bad input is still the caller's error, not a reason to play the fallback.
        assert!(matches!(tts.say("  ").await, Err(TtsError::EmptyText)));
    }

    #[tokio::test]
    async fn missing_fallback_file_is_reported() {
        let tts = Tts::new("en-us", Some(PathBuf::from("/nonexistent/fallback.wav")))
            .with_binary("/nonexistent/espeak-ng");
        let e = tts.say("hello").await.unwrap_err();
        assert!(matches!(e, TtsError::Fallback(_)), "{e:?}");
        assert!(e.to_string().contains("/nonexistent/fallback.wav"), "{e}");
    }

    #[tokio::test]
    async fn text_is_one_argument_after_double_dash() {
        let dir = tempfile::tempdir().unwrap();
        // Output: a 16 kHz mono WAV of 320 samples, which must come back as 160 at 8 kHz.
        let wav = dir.path().join("out.wav");
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: 16_000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::create(&wav, spec).unwrap();
        for i in 0..320 {
            w.write_sample(if i % 32 < 16 { 8000i16 } else { -8000 })
                .unwrap();
        }
        w.finalize().unwrap();
        let args = dir.path().join("args");
        let bin = fake_binary(
            dir.path(),
            &format!(
                "for a in \"$@\"; do printf '%s\\n' \"$a\" >> '{}'; done\ncat '{}'",
                args.display(),
                wav.display()
            ),
        );
        let tts = Tts::new("en-us", None).with_binary(&bin);
        let text = "--help; $(rm -rf /) `id`";
        let out = synth(&tts, text, "en+f3").await.unwrap();
        assert_eq!(out.len(), 160);
        let recorded = std::fs::read_to_string(&args).unwrap();
        assert_eq!(
            recorded,
            format!("--stdout\n-v\nen+f3\n--\n{text}\n"),
            "espeak-ng got unexpected arguments"
        );
        // Second time comes from the cache: the script is not run again.
        let again = synth(&tts, text, "en+f3").await.unwrap();
        assert!(Arc::ptr_eq(&out, &again));
        assert_eq!(std::fs::read_to_string(&args).unwrap().lines().count(), 5);
    }

    #[tokio::test]
    async fn slow_synthesis_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_binary(dir.path(), "exec sleep 30");
        let tts = Tts::new("en-us", None)
            .with_binary(&bin)
            .with_timeout(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let e = synth(&tts, "hello", "en-us").await.unwrap_err();
        assert!(matches!(e, TtsError::Timeout { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn failing_binary_reports_stderr_and_falls_back() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_binary(dir.path(), "echo 'no such voice' >&2\nexit 3");
        let fallback = write_fallback(dir.path());
        let tts = Tts::new("en-us", Some(fallback)).with_binary(&bin);
        let e = synth(&tts, "hello", "en-us").await.unwrap_err();
        assert!(
            matches!(&e, TtsError::Failed { stderr, .. } if stderr == "no such voice"),
            "{e:?}"
        );
        let spoken = tts.say("hello").await.unwrap();
        assert!(spoken.is_fallback());
        assert!(!tts.warned_missing.load(Ordering::Relaxed));
    }

    #[tokio::test]
    async fn garbage_output_is_bad_output() {
        let dir = tempfile::tempdir().unwrap();
        let bin = fake_binary(dir.path(), "echo 'this is not a wav'");
        let tts = Tts::new("en-us", None).with_binary(&bin);
        let e = synth(&tts, "hello", "en-us").await.unwrap_err();
        assert!(
            matches!(e, TtsError::BadOutput(WavError::NotWav(_))),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn real_espeak_produces_8k_speech() {
        let tts = Tts::new("en-us", None);
        let audio = match tts.say("Hello from voxgate.").await {
            Ok(spoken) => spoken.audio,
            Err(TtsError::NotInstalled { .. }) => {
                eprintln!("NOTICE: espeak-ng not installed; skipping real synthesis test");
                return;
            }
            Err(e) => panic!("espeak-ng failed: {e}"),
        };
        let secs = audio.len() as f64 / 8000.0;
        assert!((0.5..5.0).contains(&secs), "{secs} s of speech");
        let rms =
            (audio.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / audio.len() as f64).sqrt();
        assert!(rms > 300.0, "speech is near silent (rms {rms})");

        // Same synthesis straight from espeak-ng: our sample count must be its 22050 Hz
        // count scaled to 8 kHz.
        let raw = std::process::Command::new(DEFAULT_BINARY)
            .args(["--stdout", "-v", "en-us", "--", "Hello from voxgate."])
            .output()
            .unwrap();
        let raw_samples = (raw.stdout.len() - 44) / 2;
        let expected = (raw_samples as u64 * 8000).div_ceil(22_050) as usize;
        assert_eq!(audio.len(), expected);

        let again = tts
            .synthesize("Hello from voxgate.", "en-us")
            .await
            .unwrap();
        assert!(
            Arc::ptr_eq(&audio, &again),
            "second request is served from cache"
        );
    }
}
