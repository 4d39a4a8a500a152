//! Speech recognition: accuracy and CPU per second of speech, on utterances generated here with
//! espeak-ng (several voices), resampled to 8 kHz by sox and sent through G.711 μ-law (encode +
//! decode with `voxgate::media::g711`), exactly as a caller's audio reaches the recogniser.
//! Each utterance runs through the gateway's own `Listener` (VAD, grammar match, confidence),
//! fed 20 ms frames with 300 ms of silence before and 1 s after.
//!
//! CPU is the thread's own CPU time (`/proc/thread-self/schedstat`), so other jobs on the
//! machine do not inflate it; it is also given as a ratio to a baseline measured in the same
//! run on the same audio: G.711 decode + VAD of every frame (what the media path does anyway),
//! in CPU µs per second of audio.
//!
//! ```text
//! cargo bench --bench speech               # the full set (about 100 utterances, ~1 min)
//! cargo bench --bench speech -- --free     # also free speech with the n-gram model
//! cargo test --release --bench speech      # smoke: two utterances, checks the pipeline runs
//! ```

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use voxgate::flow::{ListenMode, ListenSpec, SpeechOutcome};
use voxgate::media::codec::Codec;
use voxgate::media::g711;
use voxgate::speech::listen::{ListenStep, Listener, ListenerConfig};
use voxgate::speech::pocketsphinx::{ModelPaths, PocketSphinx, Tuning, DEBIAN_MODEL_DIR};
use voxgate::speech::vad::Vad;
use voxgate::speech::{Recognizer, SpeechError, FRAME_SAMPLES};

const VOICES: &[&str] = &["en-us", "en-gb", "en-us+f3", "en-gb-scotland", "en-029+m3"];
const MENU: &[&str] = &[
    "sales", "support", "billing", "operator", "yes", "no", "help", "cancel",
];
const QUESTION: &str = "what are your opening hours";
const UNKNOWN: &[&str] = &["banana", "weather", "tomorrow", "elephant", "purple"];
/// (sentence, the keyword it contains)
const SENTENCES: &[(&str, &str)] = &[
    ("i want to talk to sales", "sales"),
    ("i need help with my bill", "help"),
    ("what are your opening hours", "opening hours"),
];

/// Thread CPU time so far.
fn thread_cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
    let ns = s
        .split_whitespace()
        .next()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_nanos(ns)
}

fn rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// espeak-ng -> sox 8 kHz 16-bit -> G.711 μ-law encode/decode.
fn utterance(dir: &Path, voice: &str, text: &str) -> Result<Vec<i16>, String> {
    let wav = dir.join("u.wav");
    let raw = dir.join("u.raw");
    let ok = Command::new("espeak-ng")
        .args(["-v", voice, "-s", "150", "-w"])
        .arg(&wav)
        .arg(text)
        .status()
        .map_err(|e| format!("espeak-ng: {e}"))?;
    if !ok.success() {
        return Err(format!("espeak-ng failed for {voice} {text:?}"));
    }
    let ok = Command::new("sox")
        .arg(&wav)
        .args([
            "-r", "8000", "-c", "1", "-e", "signed", "-b", "16", "-t", "raw",
        ])
        .arg(&raw)
        .status()
        .map_err(|e| format!("sox: {e}"))?;
    if !ok.success() {
        return Err("sox failed".into());
    }
    let bytes = std::fs::read(&raw).map_err(|e| e.to_string())?;
    let pcm: Vec<i16> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut ulaw = Vec::new();
    g711::encode(Codec::Pcmu, &pcm, &mut ulaw);
    let mut out = Vec::new();
    g711::decode(Codec::Pcmu, &ulaw, &mut out);
    Ok(out)
}

/// Noise as a caller's line might carry it: 1.2 s of white / low-passed noise.
fn noise(kind: u32) -> Vec<i16> {
    let mut x: u32 = 0x1234_5678 ^ kind;
    let mut lp = 0.0f32;
    (0..9600)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let white = (x as f32 / u32::MAX as f32 - 0.5) * 6000.0;
            lp += (white - lp) * if kind == 0 { 1.0 } else { 0.1 * kind as f32 };
            lp as i16
        })
        .collect()
}

/// Frames with 300 ms of silence before and 1 s after.
fn framed(speech: &[i16]) -> Vec<Vec<i16>> {
    let mut all = vec![0i16; 2400];
    all.extend_from_slice(speech);
    all.extend(std::iter::repeat_n(0i16, 8000));
    all.chunks(FRAME_SAMPLES).map(<[i16]>::to_vec).collect()
}

struct Run {
    outcome: SpeechOutcome,
    cpu: Duration,
    speech_s: f64,
}

fn listen(rec: &mut dyn Recognizer, mode: ListenMode, audio: &[i16]) -> Run {
    let spec = ListenSpec {
        mode,
        timeout: Duration::from_secs(5),
        max_speech: Duration::from_secs(8),
        barge_in: false,
    };
    let mut t = Instant::now();
    let cpu0 = thread_cpu();
    let mut outcome = None;
    match Listener::start(spec, ListenerConfig::default(), t, rec) {
        Err(o) => outcome = Some(o),
        Ok(mut l) => {
            for f in framed(audio) {
                t += Duration::from_millis(20);
                for step in l.push(&f, t, rec) {
                    if let ListenStep::Done(o) = step {
                        outcome = Some(o);
                    }
                }
                if outcome.is_some() {
                    break;
                }
            }
        }
    }
    Run {
        outcome: outcome.unwrap_or_else(|| SpeechError::Engine("no outcome".into()).outcome()),
        cpu: thread_cpu() - cpu0,
        speech_s: audio.len() as f64 / 8000.0,
    }
}

/// The baseline: G.711 decode + VAD of the same frames.
fn baseline(audio: &[i16]) -> Duration {
    let mut ulaw = Vec::new();
    g711::encode(Codec::Pcmu, audio, &mut ulaw);
    let cpu0 = thread_cpu();
    let mut vad = Vad::new(Default::default());
    let mut pcm = Vec::with_capacity(FRAME_SAMPLES);
    for _ in 0..500 {
        for f in ulaw.chunks(FRAME_SAMPLES) {
            pcm.clear();
            g711::decode(Codec::Pcmu, f, &mut pcm);
            std::hint::black_box(vad.push(&pcm));
        }
    }
    (thread_cpu() - cpu0) / 500
}

#[derive(Default)]
struct Tally {
    right: u32,
    wrong: u32,
    rejected: u32,
    cpu: Duration,
    base: Duration,
    speech_s: f64,
}

impl Tally {
    fn n(&self) -> u32 {
        self.right + self.wrong + self.rejected
    }
    fn row(&self, name: &str, right: &str, wrong: &str, rejected: &str) {
        println!(
            "| {name} | {} | {} {right} | {} {wrong} | {} {rejected} | {:.3} | {:.1} |",
            self.n(),
            self.right,
            self.wrong,
            self.rejected,
            self.cpu.as_secs_f64() / self.speech_s.max(1e-9),
            self.base.as_secs_f64() * 1e6 / self.speech_s.max(1e-9),
        );
    }
}

/// The recogniser's pick and confidence, matched or not.
fn pick(o: &SpeechOutcome) -> Option<(&str, f32)> {
    match o {
        SpeechOutcome::Heard { text, confidence } | SpeechOutcome::NoMatch { text, confidence } => {
            Some((text, *confidence))
        }
        _ => None,
    }
}

/// `"-dither yes -ds 2"` -> [("-dither", "yes"), ("-ds", "2")].
fn arg_pairs(var: &str) -> Vec<(String, String)> {
    let v = std::env::var(var).unwrap_or_default();
    let words: Vec<&str> = v.split_whitespace().collect();
    words
        .chunks(2)
        .filter(|c| c.len() == 2)
        .map(|c| (c[0].to_string(), c[1].to_string()))
        .collect()
}

/// Decoder arguments from the environment, for comparing settings without a rebuild:
/// `VOXGATE_BENCH_WORD_ARGS`, `VOXGATE_BENCH_PHONE_ARGS` (`off`: no phone loop).
fn tuning() -> Tuning {
    let phone_off = std::env::var("VOXGATE_BENCH_PHONE_ARGS").is_ok_and(|v| v.trim() == "off");
    Tuning {
        word_args: arg_pairs("VOXGATE_BENCH_WORD_ARGS"),
        phone_args: if phone_off {
            Vec::new()
        } else {
            arg_pairs("VOXGATE_BENCH_PHONE_ARGS")
        },
        phone_loop: !phone_off,
        // VOXGATE_BENCH_DITHER=0 measures without it.
        dither: std::env::var("VOXGATE_BENCH_DITHER").map_or(true, |v| v != "0"),
    }
}

fn heard(o: &SpeechOutcome) -> Option<&str> {
    match o {
        SpeechOutcome::Heard { text, .. } => Some(text),
        _ => None,
    }
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("speech bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let full = args.iter().any(|a| a == "--bench");
    let free = args.iter().any(|a| a == "--free");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let model_dir = PathBuf::from(
        std::env::var("VOXGATE_SPEECH_MODEL").unwrap_or_else(|_| DEBIAN_MODEL_DIR.into()),
    );

    let rss0 = rss_kb();
    let tuning = tuning();
    let mut rec = PocketSphinx::with_tuning(
        &ModelPaths::in_dir(&model_dir, false).map_err(|e| e.to_string())?,
        &tuning,
    )
    .map_err(|e| e.to_string())?;
    let rss1 = rss_kb();

    if !full {
        // Smoke: one word heard right, one silence timing out.
        let grammar = ListenMode::Grammar(MENU.iter().map(|s| s.to_string()).collect());
        let audio = utterance(dir.path(), "en-us", "billing")?;
        let r = listen(&mut rec, grammar.clone(), &audio);
        if heard(&r.outcome) != Some("billing") {
            return Err(format!("smoke: 'billing' gave {:?}", r.outcome));
        }
        let spec_silence = listen(&mut rec, grammar, &[]);
        println!(
            "bench speech smoke: billing ok, silence -> {:?}",
            spec_silence.outcome
        );
        return Ok(());
    }

    let grammar_words: Vec<String> = MENU
        .iter()
        .copied()
        .chain([QUESTION])
        .map(String::from)
        .collect();
    let grammar = ListenMode::Grammar(grammar_words);
    let mut in_grammar = Tally::default();
    let mut oog = Tally::default();
    let mut keywords = Tally::default();
    let mut confusions = Vec::new();
    // (what it was, confidence) for every grammar pick: "right", "wrong" (in-grammar word
    // picked as another phrase), "oog" (unknown word or noise picked as a phrase).
    let mut picks: Vec<(&str, f32)> = Vec::new();

    for voice in VOICES {
        for word in MENU.iter().copied().chain([QUESTION]) {
            let audio = utterance(dir.path(), voice, word)?;
            let r = listen(&mut rec, grammar.clone(), &audio);
            in_grammar.cpu += r.cpu;
            in_grammar.speech_s += r.speech_s;
            in_grammar.base += baseline(&audio);
            if let Some((t, c)) = pick(&r.outcome) {
                if !t.is_empty() {
                    picks.push((if t == word { "right" } else { "wrong" }, c));
                }
            }
            match heard(&r.outcome) {
                Some(t) if t == word => in_grammar.right += 1,
                Some(t) => {
                    in_grammar.wrong += 1;
                    confusions.push(format!("{voice}: {word} -> {t}"));
                }
                None => {
                    in_grammar.rejected += 1;
                    confusions.push(format!("{voice}: {word} -> {:?}", r.outcome));
                }
            }
        }
    }
    let mut oog_inputs: Vec<(String, Vec<i16>)> = Vec::new();
    for voice in &VOICES[..3] {
        for word in UNKNOWN {
            oog_inputs.push((
                format!("{voice}: {word}"),
                utterance(dir.path(), voice, word)?,
            ));
        }
    }
    for kind in 0..3 {
        oog_inputs.push((format!("noise {kind}"), noise(kind)));
    }
    for (name, audio) in &oog_inputs {
        let r = listen(&mut rec, grammar.clone(), audio);
        oog.cpu += r.cpu;
        oog.speech_s += r.speech_s;
        oog.base += baseline(audio);
        if let Some((t, c)) = pick(&r.outcome) {
            if !t.is_empty() {
                picks.push(("oog", c));
            }
        }
        match heard(&r.outcome) {
            // "right" for out-of-grammar input is a no-match.
            None => oog.right += 1,
            Some(t) => {
                oog.wrong += 1;
                confusions.push(format!("{name} -> accepted as {t}"));
            }
        }
    }
    let kw_mode = ListenMode::Keywords(
        ["sales", "support", "billing", "help", "opening hours"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    for voice in VOICES {
        for (sentence, key) in SENTENCES {
            let audio = utterance(dir.path(), voice, sentence)?;
            let r = listen(&mut rec, kw_mode.clone(), &audio);
            keywords.cpu += r.cpu;
            keywords.speech_s += r.speech_s;
            keywords.base += baseline(&audio);
            match heard(&r.outcome) {
                Some(t) if voxgate::speech::contains_phrase(t, key) => keywords.right += 1,
                Some(t) => {
                    keywords.wrong += 1;
                    confusions.push(format!("{voice}: {sentence} -> {t} (keywords)"));
                }
                None => keywords.rejected += 1,
            }
        }
    }

    println!(
        "PocketSphinx 5prealpha (Debian), model {}, tuning {tuning:?}",
        model_dir.display()
    );
    println!("voices: {}", VOICES.join(", "));
    println!();
    println!("| set | utterances | right | wrong | no match | CPU s per s of audio | baseline: G.711 decode + VAD, CPU µs per s of audio |");
    println!("|---|---|---|---|---|---|---|");
    in_grammar.row("menu words + question, grammar of 9", "", "", "");
    oog.row(
        "unknown words + noise, same grammar",
        "rejected",
        "accepted",
        "",
    );
    keywords.row("sentences, keywords mode", "keyword found", "other", "");
    println!();
    println!(
        "grammar picks before the confidence check: {} right of {} in-grammar utterances",
        picks.iter().filter(|p| p.0 == "right").count(),
        in_grammar.n()
    );
    println!("| min_confidence | right accepted | wrong accepted | unknown/noise accepted |");
    println!("|---|---|---|---|");
    for t in [0.0f32, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8] {
        let n = |kind: &str| picks.iter().filter(|p| p.0 == kind && p.1 >= t).count();
        println!(
            "| {t:.1} | {} | {} | {} |",
            n("right"),
            n("wrong"),
            n("oog")
        );
    }
    if free {
        let rss2 = rss_kb();
        let mut free_rec =
            PocketSphinx::new(&ModelPaths::in_dir(&model_dir, true).map_err(|e| e.to_string())?)
                .map_err(|e| e.to_string())?;
        let rss3 = rss_kb();
        let mut t = Tally::default();
        for voice in VOICES {
            for (sentence, _) in SENTENCES {
                let audio = utterance(dir.path(), voice, sentence)?;
                let r = listen(&mut free_rec, ListenMode::Free, &audio);
                t.cpu += r.cpu;
                t.speech_s += r.speech_s;
                t.base += baseline(&audio);
                match heard(&r.outcome) {
                    Some(h) if h == *sentence => t.right += 1,
                    Some(h) => {
                        t.wrong += 1;
                        confusions.push(format!("{voice}: {sentence} -> {h} (free)"));
                    }
                    None => t.rejected += 1,
                }
            }
        }
        t.row("sentences, free speech (n-gram)", "exact", "other", "");
        println!();
        println!(
            "memory per free-speech recogniser: {} MB",
            (rss3 - rss2) / 1024
        );
    }
    println!();
    println!(
        "memory per recogniser (RSS growth): {} MB",
        (rss1 - rss0) / 1024
    );
    println!();
    println!("misses:");
    for c in confusions {
        println!("- {c}");
    }
    Ok(())
}
