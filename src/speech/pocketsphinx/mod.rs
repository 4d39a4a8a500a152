//! PocketSphinx (Debian's `libpocketsphinx3` with the `pocketsphinx-en-us` model) as a
//! [`Recognizer`].
//!
//! The US English model is trained on 16 kHz speech, so telephone audio is upsampled 2x
//! (rubato) before decoding; measured on G.711 test speech this is far more accurate than
//! decoding at 8 kHz with the filter bank cut to 3.5 kHz (docs/speech.md).
//!
//! Two decoders run side by side on the same audio: the *word* decoder (the step's grammar,
//! a keyword carrier grammar, or the n-gram model for free speech) and a *phone loop*
//! (any sequence of English phones). A grammar always yields some phrase; how much better
//! that phrase explains the audio than the best free phone sequence, per frame, separates
//! real answers from unknown words and noise. It becomes the confidence.

mod ffi;

use super::{Hypothesis, Recognizer, SpeechError};
use crate::flow::ListenMode;
use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};
use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::Mutex;

/// Where Debian's `pocketsphinx-en-us` puts the model.
pub const DEBIAN_MODEL_DIR: &str = "/usr/share/pocketsphinx/model/en-us";

/// Confidence is `1 / (1 + e^-((d - OFFSET) / SCALE))` where `d` is the word path's score minus
/// the phone loop's, per 10 ms frame (log base 1.0001). Fitted on the espeak-ng set of
/// docs/speech.md: correct answers lie mostly above -3, unknown words and noise below.
const CONFIDENCE_OFFSET: f32 = -3.0;
const CONFIDENCE_SCALE: f32 = 3.0;

/// The word decoder's arguments beyond the model's files.
const WORD_ARGS: &[(&str, &str)] = &[];

/// The phone loop's: narrow beams (it only needs the best path's score).
const PHONE_ARGS: &[(&str, &str)] = &[("-lw", "2.0"), ("-beam", "1e-10"), ("-pbeam", "1e-10")];

/// Common words allowed around a keyword in `keywords` mode.
const FILLER_WORDS: &[&str] = &[
    "i", "a", "the", "to", "my", "me", "you", "your", "we", "is", "are", "was", "be", "can",
    "could", "would", "please", "want", "need", "like", "talk", "speak", "with", "about", "for",
    "of", "and", "or", "in", "on", "at", "it", "this", "that", "what", "when", "where", "how",
    "do", "does", "have", "has", "get", "know", "just", "hello", "hi", "okay", "so", "um", "uh",
];

/// Model files, found under one directory laid out as Debian's package does.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelPaths {
    pub hmm: PathBuf,
    pub dict: PathBuf,
    pub phone_lm: PathBuf,
    /// The n-gram model for free speech (optional: it costs ~70 MB per recogniser).
    pub lm: Option<PathBuf>,
}

impl ModelPaths {
    /// `<dir>/en-us`, `<dir>/cmudict-en-us.dict`, `<dir>/en-us-phone.lm.bin` and, when
    /// `free_speech`, `<dir>/en-us.lm.bin`. Every file must exist.
    pub fn in_dir(dir: &Path, free_speech: bool) -> Result<Self, SpeechError> {
        let need = |name: &str| {
            let p = dir.join(name);
            if p.exists() {
                Ok(p)
            } else {
                Err(SpeechError::Unavailable(format!(
                    "model file {} not found; install it with `apt-get install pocketsphinx-en-us`",
                    p.display()
                )))
            }
        };
        Ok(ModelPaths {
            hmm: need("en-us")?,
            dict: need("cmudict-en-us.dict")?,
            phone_lm: need("en-us-phone.lm.bin")?,
            lm: if free_speech {
                Some(need("en-us.lm.bin")?)
            } else {
                None
            },
        })
    }
}

/// Decoder construction touches process-wide state in sphinxbase (the log file), so decoders
/// are created one at a time. Decoding itself only touches the decoder.
static INIT: Mutex<()> = Mutex::new(());

/// Loads `libpocketsphinx.so.3` (once per process). The gateway calls this at start-up so a
/// missing library is reported then, not at the first `listen`.
pub fn load_library() -> Result<(), SpeechError> {
    api().map(|_| ())
}

fn api() -> Result<&'static ffi::Api, SpeechError> {
    ffi::api().map_err(|e| {
        SpeechError::Unavailable(format!(
            "cannot load {} ({e}); install it with `apt-get install libpocketsphinx3`",
            ffi::POCKETSPHINX_LIB
        ))
    })
}

/// One `ps_decoder_t`, owned.
///
/// Every `unsafe` call below goes through `api`: function pointers resolved from the loaded
/// library with the types of their C prototypes (ffi.rs), valid for the life of the process
/// (the library is never unloaded). Each call's own conditions are stated where it is made.
struct Decoder {
    api: &'static ffi::Api,
    ps: NonNull<ffi::PsDecoder>,
}

// SAFETY: a decoder has no affinity to the thread that made it (no thread-locals; its global
// log file is set once at construction, under `INIT`), and every call goes through `&mut self`,
// so it is never used from two threads at once. Moving it to a pool thread is therefore sound.
unsafe impl Send for Decoder {}

fn cstring(s: &str) -> Result<CString, SpeechError> {
    CString::new(s).map_err(|_| SpeechError::Engine(format!("NUL byte in {s:?}")))
}

fn path_str(p: &Path) -> Result<&str, SpeechError> {
    p.to_str()
        .ok_or_else(|| SpeechError::Engine(format!("path is not UTF-8: {}", p.display())))
}

impl Decoder {
    fn new(args: &[(&str, &str)]) -> Result<Self, SpeechError> {
        let api = api()?;
        let owned: Vec<CString> = args
            .iter()
            .flat_map(|(k, v)| [cstring(k), cstring(v)])
            .collect::<Result<_, _>>()?;
        let mut argv: Vec<*mut c_char> = owned.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        let argc =
            i32::try_from(argv.len()).map_err(|_| SpeechError::Engine("too many args".into()))?;
        let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `argv` holds `argc` pointers to NUL-terminated strings that outlive the call
        // (`owned`); cmd_ln_parse_r copies what it keeps and does not write through argv.
        // ps_args() returns a static table. A null result is handled below.
        let config = unsafe {
            (api.cmd_ln_parse_r)(
                std::ptr::null_mut(),
                (api.ps_args)(),
                argc,
                argv.as_mut_ptr(),
                1,
            )
        };
        if config.is_null() {
            return Err(SpeechError::Engine(format!(
                "PocketSphinx rejected its arguments {args:?}"
            )));
        }
        // SAFETY: `config` is a valid config we own one reference to; ps_init takes its own
        // reference, so we drop ours whatever it returns.
        let ps = unsafe {
            let ps = (api.ps_init)(config);
            (api.cmd_ln_free_r)(config);
            ps
        };
        let ps = NonNull::new(ps).ok_or_else(|| {
            SpeechError::Engine("PocketSphinx could not load its model (see model_dir)".into())
        })?;
        Ok(Decoder { api, ps })
    }

    fn has_word(&mut self, word: &str) -> Result<bool, SpeechError> {
        let w = cstring(word)?;
        // SAFETY: valid decoder and C string; the returned string (or null) is ours to free.
        unsafe {
            let pron = (self.api.ps_lookup_word)(self.ps.as_ptr(), w.as_ptr());
            if pron.is_null() {
                return Ok(false);
            }
            (self.api.ckd_free)(pron.cast());
        }
        Ok(true)
    }

    fn set_jsgf(&mut self, name: &str, jsgf: &str) -> Result<(), SpeechError> {
        let n = cstring(name)?;
        let g = cstring(jsgf)?;
        // SAFETY: valid decoder and C strings; the decoder copies what it keeps. Replacing a
        // search of the same name frees the old one inside the decoder.
        let rc = unsafe { (self.api.ps_set_jsgf_string)(self.ps.as_ptr(), n.as_ptr(), g.as_ptr()) };
        if rc < 0 {
            return Err(SpeechError::Engine(
                "the grammar could not be compiled".into(),
            ));
        }
        self.set_search(name)
    }

    fn set_search(&mut self, name: &str) -> Result<(), SpeechError> {
        let n = cstring(name)?;
        // SAFETY: valid decoder and C string.
        let rc = unsafe { (self.api.ps_set_search)(self.ps.as_ptr(), n.as_ptr()) };
        if rc < 0 {
            return Err(SpeechError::Engine(format!("no search named {name}")));
        }
        Ok(())
    }

    /// Decodes one whole utterance: (hypothesis, path score, frames).
    fn decode(&mut self, samples: &[i16]) -> Result<(String, i32, i32), SpeechError> {
        let ps = self.ps.as_ptr();
        let api = self.api;
        // SAFETY: valid decoder; `samples` is a live slice of `len` i16 values that is only
        // read. ps_get_hyp's string belongs to the decoder and is copied before the next call.
        unsafe {
            if (api.ps_start_utt)(ps) < 0 {
                return Err(SpeechError::Engine("cannot start an utterance".into()));
            }
            let rc = (api.ps_process_raw)(ps, samples.as_ptr(), samples.len(), 0, 1);
            let end = (api.ps_end_utt)(ps);
            if rc < 0 || end < 0 {
                return Err(SpeechError::Engine("decoding failed".into()));
            }
            let mut score = 0;
            let hyp = (api.ps_get_hyp)(ps, &mut score);
            let text = if hyp.is_null() {
                String::new()
            } else {
                CStr::from_ptr(hyp).to_string_lossy().into_owned()
            };
            Ok((text, score, (api.ps_get_n_frames)(ps)))
        }
    }
}

impl Drop for Decoder {
    fn drop(&mut self) {
        // SAFETY: we own the only reference; it is not used after this.
        unsafe {
            (self.api.ps_free)(self.ps.as_ptr());
        }
    }
}

/// 8 kHz -> 16 kHz, 20 ms at a time.
struct Upsampler {
    fft: Fft<f32>,
    input: Vec<f32>,
    output: Vec<f32>,
    pcm: Vec<i16>,
    pending: Vec<f32>,
}

const CHUNK_IN: usize = 160;

impl Upsampler {
    fn new() -> Result<Self, SpeechError> {
        let fft = Fft::<f32>::new(8000, 16000, CHUNK_IN, 1, FixedSync::Both)
            .map_err(|e| SpeechError::Engine(format!("resampler: {e}")))?;
        let out_max = fft.output_frames_max();
        Ok(Upsampler {
            fft,
            input: vec![0.0; CHUNK_IN],
            output: vec![0.0; out_max],
            pcm: Vec::with_capacity(out_max),
            pending: Vec::with_capacity(CHUNK_IN),
        })
    }

    fn reset(&mut self) {
        self.fft.reset();
        self.pending.clear();
    }

    /// Upsamples whole chunks of `samples` (the rest waits), handing each 16 kHz chunk to `out`.
    fn push(
        &mut self,
        samples: &[i16],
        out: &mut dyn FnMut(&[i16]) -> Result<(), SpeechError>,
    ) -> Result<(), SpeechError> {
        self.pending
            .extend(samples.iter().map(|&s| f32::from(s) / 32768.0));
        while self.pending.len() >= CHUNK_IN {
            self.input.copy_from_slice(&self.pending[..CHUNK_IN]);
            self.pending.drain(..CHUNK_IN);
            self.run(None, out)?;
        }
        Ok(())
    }

    /// Pads what is left with silence and pushes the resampler's delay out.
    fn flush(
        &mut self,
        out: &mut dyn FnMut(&[i16]) -> Result<(), SpeechError>,
    ) -> Result<(), SpeechError> {
        let n = self.pending.len();
        self.input.fill(0.0);
        self.input[..n].copy_from_slice(&self.pending);
        self.pending.clear();
        self.run(Some(n), out)?;
        self.input.fill(0.0);
        self.run(Some(0), out)
    }

    fn run(
        &mut self,
        partial: Option<usize>,
        out: &mut dyn FnMut(&[i16]) -> Result<(), SpeechError>,
    ) -> Result<(), SpeechError> {
        let err = |e: &dyn std::fmt::Display| SpeechError::Engine(format!("resampler: {e}"));
        let out_len = self.output.len();
        let input = InterleavedSlice::new(&self.input, 1, CHUNK_IN).map_err(|e| err(&e))?;
        let mut output =
            InterleavedSlice::new_mut(&mut self.output, 1, out_len).map_err(|e| err(&e))?;
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        let (_, written) = self
            .fft
            .process_into_buffer(&input, &mut output, indexing.as_ref())
            .map_err(|e| err(&e))?;
        self.pcm.clear();
        self.pcm.extend(
            self.output[..written]
                .iter()
                .map(|&x| (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16),
        );
        out(&self.pcm)
    }
}

/// Decoder arguments on top of the model's: what the gateway uses, and what the bench
/// (`cargo bench --bench speech`) varies to measure accuracy against CPU.
#[derive(Debug, Clone, PartialEq)]
pub struct Tuning {
    /// Extra arguments for the word decoder (`("-dither", "yes")`, ...); a key given here
    /// replaces the default's.
    pub word_args: Vec<(String, String)>,
    /// Extra arguments for the phone loop that gives the confidence.
    pub phone_args: Vec<(String, String)>,
    /// Without the phone loop the confidence is 1 for any phrase (no rejection at all).
    pub phone_loop: bool,
    /// Add PocketSphinx's own dither (+1 with probability 1/4 on each sample) to the 16 kHz
    /// audio before decoding. Upsampled telephone audio has nothing above 4 kHz and G.711
    /// silence is exact zeros; the model's filter bank reaches 6.8 kHz, so those bands read
    /// log(0)-like energies. Measured on the bench set: the confidence then separates right
    /// from wrong picks far better (docs/speech.md). Done here, not with `-dither yes`,
    /// because sphinxbase's random generator is one unsynchronised global shared by every
    /// decoder of the process (a data race between pool threads); ours is per recogniser and
    /// restarts with each utterance, so the same audio gives the same result.
    pub dither: bool,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            word_args: Vec::new(),
            phone_args: Vec::new(),
            phone_loop: true,
            dither: true,
        }
    }
}

/// `fe_dither` of sphinxbase with a per-recogniser xorshift generator.
fn dither(samples: &mut [i16]) {
    let mut x: u32 = 0x9E37_79B9;
    for s in samples {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        if x.is_multiple_of(4) {
            *s = s.saturating_add(1);
        }
    }
}

/// `defaults` with `extra` merged in (a key in `extra` replaces the default's value).
fn merge_args<'a>(
    defaults: &[(&'a str, &'a str)],
    extra: &'a [(String, String)],
) -> Vec<(&'a str, &'a str)> {
    let mut out: Vec<(&str, &str)> = defaults
        .iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .copied()
        .collect();
    out.extend(extra.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    out
}

/// The in-process recogniser.
pub struct PocketSphinx {
    words: Decoder,
    phones: Option<Decoder>,
    up: Upsampler,
    has_lm: bool,
    /// The grammar the word decoder has loaded, to skip recompiling it.
    loaded: Option<String>,
    dither: bool,
    in_utt: bool,
    /// The utterance at 16 kHz. It is decoded whole at the end: the model normalises each
    /// utterance by its own mean cepstrum (`-cmn batch`), which needs all of it, and measured
    /// accuracy is much lower when decoding 20 ms at a time.
    audio: Vec<i16>,
}

impl PocketSphinx {
    /// Loads the model (a few hundred ms; done once per pool slot at start-up).
    pub fn new(model: &ModelPaths) -> Result<Self, SpeechError> {
        Self::with_tuning(model, &Tuning::default())
    }

    /// [`PocketSphinx::new`] with other decoder arguments (the bench compares them).
    pub fn with_tuning(model: &ModelPaths, tuning: &Tuning) -> Result<Self, SpeechError> {
        let hmm = path_str(&model.hmm)?;
        let dict = path_str(&model.dict)?;
        let mut word_args = vec![("-hmm", hmm), ("-dict", dict), ("-logfn", "/dev/null")];
        word_args.extend_from_slice(WORD_ARGS);
        if let Some(lm) = &model.lm {
            word_args.push(("-lm", path_str(lm)?));
        }
        let words = Decoder::new(&merge_args(&word_args, &tuning.word_args))?;
        let phones = if tuning.phone_loop {
            let mut phone_args = vec![
                ("-hmm", hmm),
                ("-allphone", path_str(&model.phone_lm)?),
                ("-logfn", "/dev/null"),
            ];
            phone_args.extend_from_slice(PHONE_ARGS);
            Some(Decoder::new(&merge_args(&phone_args, &tuning.phone_args))?)
        } else {
            None
        };
        Ok(PocketSphinx {
            words,
            phones,
            up: Upsampler::new()?,
            dither: tuning.dither,
            has_lm: model.lm.is_some(),
            loaded: None,
            in_utt: false,
            audio: Vec::with_capacity(16000 * 10),
        })
    }

    fn check_words<'a>(
        &mut self,
        phrases: impl Iterator<Item = &'a str>,
    ) -> Result<(), SpeechError> {
        for word in phrases.flat_map(|p| p.split(' ')) {
            if !self.words.has_word(word)? {
                return Err(SpeechError::UnknownWord {
                    word: word.to_string(),
                });
            }
        }
        Ok(())
    }

    fn grammar_for(&mut self, mode: &ListenMode) -> Result<Option<String>, SpeechError> {
        Ok(match mode {
            ListenMode::Grammar(phrases) => {
                self.check_words(phrases.iter().map(String::as_str))?;
                Some(format!(
                    "#JSGF V1.0;\ngrammar listen;\npublic <s> = {};\n",
                    phrases.join(" | ")
                ))
            }
            ListenMode::Keywords(keys) => {
                self.check_words(keys.iter().map(String::as_str))?;
                let fillers: Vec<&str> = FILLER_WORDS
                    .iter()
                    .copied()
                    .filter(|w| !keys.iter().any(|k| k == w))
                    .collect();
                Some(format!(
                    "#JSGF V1.0;\ngrammar listen;\n<f> = {};\n<k> = {};\npublic <s> = [<f>+] <k> [<f>+];\n",
                    fillers.join(" | "),
                    keys.join(" | ")
                ))
            }
            ListenMode::Free => None,
        })
    }
}

impl Recognizer for PocketSphinx {
    fn name(&self) -> &'static str {
        "pocketsphinx"
    }

    fn begin(&mut self, mode: &ListenMode) -> Result<(), SpeechError> {
        self.abort();
        match self.grammar_for(mode)? {
            Some(g) => {
                if self.loaded.as_deref() != Some(g.as_str()) {
                    self.loaded = None;
                    self.words.set_jsgf("listen", &g)?;
                    self.loaded = Some(g);
                } else {
                    self.words.set_search("listen")?;
                }
            }
            None => {
                if !self.has_lm {
                    return Err(SpeechError::Unsupported(
                        "free speech (set [speech] free_speech = true)",
                    ));
                }
                // ps_init names the n-gram search from `-lm` "_default".
                self.words.set_search("_default")?;
            }
        }
        self.up.reset();
        self.audio.clear();
        self.in_utt = true;
        Ok(())
    }

    fn feed(&mut self, samples: &[i16]) -> Result<(), SpeechError> {
        if !self.in_utt {
            return Err(SpeechError::Engine("audio outside an utterance".into()));
        }
        let audio = &mut self.audio;
        self.up.push(samples, &mut |pcm| {
            audio.extend_from_slice(pcm);
            Ok(())
        })
    }

    fn finish(&mut self) -> Result<Hypothesis, SpeechError> {
        if !self.in_utt {
            return Err(SpeechError::Engine("no utterance to finish".into()));
        }
        self.in_utt = false;
        let audio = &mut self.audio;
        self.up.flush(&mut |pcm| {
            audio.extend_from_slice(pcm);
            Ok(())
        })?;
        if self.dither {
            dither(&mut self.audio);
        }
        let (text, word_score, frames) = self.words.decode(&self.audio)?;
        let text = super::normalize(&text);
        let confidence = if text.is_empty() || frames <= 0 {
            0.0
        } else if let Some(phones) = &mut self.phones {
            let (_, phone_score, _) = phones.decode(&self.audio)?;
            let d = (word_score as f32 - phone_score as f32) / frames as f32;
            1.0 / (1.0 + (-(d - CONFIDENCE_OFFSET) / CONFIDENCE_SCALE).exp())
        } else {
            1.0
        };
        Ok(Hypothesis { text, confidence })
    }

    fn abort(&mut self) {
        self.in_utt = false;
        self.audio.clear();
    }
}
