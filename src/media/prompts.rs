//! Audio prompts: WAV files decoded once into the 8 kHz mono i16 that the RTP path sends.
//!
//! Operators drop whatever WAV their tools produce into the prompts directory, so loading is
//! liberal: any sample rate, 8/16/24/32-bit integer or 32-bit float PCM (via `hound`), plain
//! or `WAVE_FORMAT_EXTENSIBLE`, any channel count (averaged down to mono), and G.711
//! μ-law/A-law WAVs (format tags 7/6, which hound rejects, decoded here). Streamed WAVs whose
//! header carries placeholder sizes (espeak-ng `--stdout`, sox to a pipe) are accepted by
//! clamping the data chunk to the bytes actually present.
//!
//! Resampling is band-limited interpolation (J. O. Smith's method): a Kaiser-windowed sinc
//! whose cutoff sits just below the lower of the two Nyquist frequencies, tabulated once and
//! linearly interpolated between table points. That low-pass is what keeps e.g. 44.1 kHz
//! content above 4 kHz from folding back into the telephone band. Measured when going to
//! 8 kHz: flat to 3.4 kHz, -0.3 dB at 3.6 kHz, -9.5 dB at 3.8 kHz, below -60 dB from
//! 4.1 kHz up (so aliases land at most in the top 100 Hz, and attenuated there).

use std::collections::HashMap;
use std::fmt;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use super::playback::SharedAudio;

use thiserror::Error;

use crate::media::codec::SAMPLE_RATE;

/// Largest prompt file we will read; a bigger file is almost certainly a mistake (a 64 MiB
/// 8 kHz 16-bit prompt would already run for over an hour).
pub const MAX_PROMPT_BYTES: u64 = 64 * 1024 * 1024;

/// Why a WAV byte buffer could not be turned into prompt audio (no file name attached, so
/// TTS output can reuse it).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum WavError {
    /// The bytes are not a RIFF/WAVE file, or its structure is broken.
    #[error("not a WAV file: {0}")]
    NotWav(String),
    /// A well-formed WAV in an encoding we do not decode.
    #[error("unsupported WAV format: {0}")]
    Unsupported(String),
    /// A WAV with no samples in it.
    #[error("contains no audio")]
    Empty,
}

/// Why a prompt file could not be loaded. Every variant names the file.
#[derive(Debug, Error)]
pub enum PromptError {
    #[error("prompt {}: file not found", path.display())]
    Missing { path: PathBuf },
    #[error("prompt {}: cannot read: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("prompt {}: file is {bytes} bytes, over the {limit}-byte limit", path.display())]
    TooLarge {
        path: PathBuf,
        bytes: u64,
        limit: u64,
    },
    #[error("prompt {}: {source}", path.display())]
    Decode {
        path: PathBuf,
        #[source]
        source: WavError,
    },
}

impl PromptError {
    /// The file this error is about.
    pub fn path(&self) -> &Path {
        match self {
            PromptError::Missing { path }
            | PromptError::Io { path, .. }
            | PromptError::TooLarge { path, .. }
            | PromptError::Decode { path, .. } => path,
        }
    }
}

/// Reads and decodes one WAV file into 8 kHz mono samples. Blocking: call it at startup or
/// from `spawn_blocking` (or go through [`PromptCache`], which does this once per file).
pub fn load_prompt(path: &Path) -> Result<Arc<[i16]>, PromptError> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    read_and_decode(path, meta.len())
}

fn read_and_decode(path: &Path, len: u64) -> Result<Arc<[i16]>, PromptError> {
    if len > MAX_PROMPT_BYTES {
        return Err(PromptError::TooLarge {
            path: path.to_path_buf(),
            bytes: len,
            limit: MAX_PROMPT_BYTES,
        });
    }
    let bytes = std::fs::read(path).map_err(|e| io_error(path, e))?;
    let samples = decode_wav(&bytes).map_err(|source| PromptError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    tracing::debug!(path = %path.display(), samples = samples.len(), "prompt loaded");
    Ok(samples.into())
}

fn io_error(path: &Path, e: std::io::Error) -> PromptError {
    if e.kind() == std::io::ErrorKind::NotFound {
        PromptError::Missing {
            path: path.to_path_buf(),
        }
    } else {
        PromptError::Io {
            path: path.to_path_buf(),
            source: e,
        }
    }
}

/// Decodes a complete WAV file held in memory into 8 kHz mono i16 samples.
pub fn decode_wav(bytes: &[u8]) -> Result<Vec<i16>, WavError> {
    if bytes.is_empty() {
        return Err(WavError::Empty);
    }
    let layout = scan_riff(bytes)?;
    let fmt = layout.fmt;
    if fmt.channels == 0 {
        return Err(WavError::NotWav("fmt chunk declares zero channels".into()));
    }
    if fmt.sample_rate == 0 || fmt.sample_rate > 768_000 {
        return Err(WavError::Unsupported(format!(
            "sample rate {} Hz",
            fmt.sample_rate
        )));
    }
    let interleaved = match fmt.effective_tag() {
        TAG_PCM | TAG_FLOAT => decode_with_hound(bytes, &layout)?,
        tag @ (TAG_ALAW | TAG_MULAW) => decode_g711(bytes, &layout, tag)?,
        other => {
            return Err(WavError::Unsupported(format!(
                "format tag {other:#06x} ({})",
                tag_name(other)
            )))
        }
    };
    let mono = downmix(&interleaved, fmt.channels);
    if mono.is_empty() {
        return Err(WavError::Empty);
    }
    let resampled = resample(&mono, fmt.sample_rate, SAMPLE_RATE);
    Ok(resampled.iter().map(|&x| to_i16(x)).collect())
}

const TAG_PCM: u16 = 0x0001;
const TAG_FLOAT: u16 = 0x0003;
const TAG_ALAW: u16 = 0x0006;
const TAG_MULAW: u16 = 0x0007;
const TAG_EXTENSIBLE: u16 = 0xFFFE;

fn tag_name(tag: u16) -> &'static str {
    match tag {
        0x0002 => "MS ADPCM",
        0x0011 => "IMA ADPCM",
        0x0031 => "GSM 6.10",
        0x0055 => "MP3",
        0x0064 | 0x0065 => "G.726 ADPCM",
        _ => "unknown encoding",
    }
}

/// The parts of the `fmt ` chunk we act on.
#[derive(Debug, Clone, Copy)]
struct Fmt {
    tag: u16,
    /// Sub-format of `WAVE_FORMAT_EXTENSIBLE` (first two bytes of its GUID).
    sub_tag: Option<u16>,
    channels: u16,
    sample_rate: u32,
    block_align: u16,
    bits: u16,
}

impl Fmt {
    fn effective_tag(&self) -> u16 {
        match (self.tag, self.sub_tag) {
            (TAG_EXTENSIBLE, Some(sub)) => sub,
            (tag, _) => tag,
        }
    }
}

/// Where things are in the file: the parsed fmt and the data chunk's body, already clamped
/// to whole frames that are really present.
#[derive(Debug, Clone, Copy)]
struct Layout {
    fmt: Fmt,
    data_start: usize,
    data_len: usize,
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Walks the RIFF chunks up to the data chunk. Anything after `data` is ignored, because
/// streamed files put a placeholder size there and what follows is audio, not chunks.
fn scan_riff(bytes: &[u8]) -> Result<Layout, WavError> {
    match bytes.get(0..4) {
        Some(b"RIFF") => {}
        Some(b"RIFX") => return Err(WavError::Unsupported("big-endian RIFX".into())),
        Some(b"RF64") => return Err(WavError::Unsupported("RF64 (64-bit WAV)".into())),
        _ => return Err(WavError::NotWav("no RIFF header".into())),
    }
    if bytes.get(8..12) != Some(b"WAVE") {
        return Err(WavError::NotWav("RIFF file is not of type WAVE".into()));
    }
    let mut fmt: Option<Fmt> = None;
    let mut pos = 12usize;
    loop {
        let (Some(id), Some(size)) = (bytes.get(pos..pos + 4), le_u32(bytes, pos + 4)) else {
            return Err(WavError::NotWav(if fmt.is_none() {
                "no fmt chunk".into()
            } else {
                "no data chunk".into()
            }));
        };
        let body = pos + 8;
        let size = size as usize;
        match id {
            b"fmt " => {
                let chunk = bytes
                    .get(body..body.saturating_add(size))
                    .filter(|_| size >= 16)
                    .ok_or_else(|| WavError::NotWav("truncated fmt chunk".into()))?;
                fmt = Some(parse_fmt(chunk)?);
            }
            b"data" => {
                let fmt = fmt.ok_or_else(|| WavError::NotWav("data chunk before fmt".into()))?;
                let present = bytes.len().saturating_sub(body);
                let declared = size.min(present);
                let align = usize::from(fmt.block_align.max(1));
                let data_len = declared - declared % align;
                return Ok(Layout {
                    fmt,
                    data_start: body,
                    data_len,
                });
            }
            _ => {}
        }
        // Chunks are padded to an even length.
        pos = body
            .checked_add(size)
            .and_then(|p| p.checked_add(size & 1))
            .ok_or_else(|| WavError::NotWav("chunk size overflows".into()))?;
    }
}

fn parse_fmt(chunk: &[u8]) -> Result<Fmt, WavError> {
    let short = || WavError::NotWav("truncated fmt chunk".into());
    let tag = le_u16(chunk, 0).ok_or_else(short)?;
    let sub_tag =
        if tag == TAG_EXTENSIBLE {
            // cbSize(2) validBits(2) channelMask(4) then the sub-format GUID at offset 24.
            Some(le_u16(chunk, 24).ok_or_else(|| {
                WavError::NotWav("WAVE_FORMAT_EXTENSIBLE fmt chunk too short".into())
            })?)
        } else {
            None
        };
    Ok(Fmt {
        tag,
        sub_tag,
        channels: le_u16(chunk, 2).ok_or_else(short)?,
        sample_rate: le_u32(chunk, 4).ok_or_else(short)?,
        block_align: le_u16(chunk, 12).ok_or_else(short)?,
        bits: le_u16(chunk, 14).ok_or_else(short)?,
    })
}

/// Hands PCM/float to hound. The header is rewritten with the clamped sizes first, since
/// hound trusts the declared data length and would fail on a streamed file.
fn decode_with_hound(bytes: &[u8], layout: &Layout) -> Result<Vec<f32>, WavError> {
    let Layout {
        data_start,
        data_len,
        ..
    } = *layout;
    let mut buf = Vec::with_capacity(data_start + data_len);
    buf.extend_from_slice(&bytes[..data_start]);
    buf.extend_from_slice(&bytes[data_start..data_start + data_len]);
    let data_size = u32::try_from(data_len)
        .map_err(|_| WavError::Unsupported("data chunk over 4 GiB".into()))?;
    let riff_size = u32::try_from(buf.len() - 8)
        .map_err(|_| WavError::Unsupported("file over 4 GiB".into()))?;
    buf[data_start - 4..data_start].copy_from_slice(&data_size.to_le_bytes());
    buf[4..8].copy_from_slice(&riff_size.to_le_bytes());

    let reader = hound::WavReader::new(Cursor::new(buf)).map_err(hound_error)?;
    let spec = reader.spec();
    match spec.sample_format {
        hound::SampleFormat::Float => reader
            .into_samples::<f32>()
            .map(|s| s.map(|x| if x.is_finite() { x } else { 0.0 }))
            .collect::<Result<Vec<f32>, _>>()
            .map_err(hound_error),
        hound::SampleFormat::Int => {
            if !matches!(spec.bits_per_sample, 8 | 16 | 24 | 32) {
                return Err(WavError::Unsupported(format!(
                    "{}-bit integer samples",
                    spec.bits_per_sample
                )));
            }
            let scale = 1.0 / f64::from(1u32 << (spec.bits_per_sample - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|x| x as f32 * scale))
                .collect::<Result<Vec<f32>, _>>()
                .map_err(hound_error)
        }
    }
}

fn hound_error(e: hound::Error) -> WavError {
    match e {
        hound::Error::FormatError(msg) => WavError::NotWav(msg.to_string()),
        hound::Error::IoError(e) => WavError::NotWav(format!("truncated sample data ({e})")),
        hound::Error::UnfinishedSample => WavError::NotWav("truncated sample data".into()),
        hound::Error::Unsupported => WavError::Unsupported("encoding not supported".into()),
        hound::Error::TooWide => WavError::Unsupported("samples wider than 32 bits".into()),
        hound::Error::InvalidSampleFormat => {
            WavError::Unsupported("sample format does not match bit depth".into())
        }
    }
}

fn decode_g711(bytes: &[u8], layout: &Layout, tag: u16) -> Result<Vec<f32>, WavError> {
    if layout.fmt.bits != 8 {
        return Err(WavError::Unsupported(format!(
            "G.711 with {} bits per sample",
            layout.fmt.bits
        )));
    }
    let data = &bytes[layout.data_start..layout.data_start + layout.data_len];
    let decode: fn(u8) -> i16 = if tag == TAG_MULAW {
        ulaw_to_linear
    } else {
        alaw_to_linear
    };
    Ok(data
        .iter()
        .map(|&b| f32::from(decode(b)) / 32768.0)
        .collect())
}

/// G.711 μ-law byte to 16-bit linear (ITU-T G.711, as in the classic Sun reference code).
fn ulaw_to_linear(byte: u8) -> i16 {
    let u = !byte;
    let exponent = (u >> 4) & 0x07;
    let t = ((i32::from(u & 0x0F) << 3) + 0x84) << exponent;
    let v = if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 };
    v as i16
}

/// G.711 A-law byte to 16-bit linear.
fn alaw_to_linear(byte: u8) -> i16 {
    let a = byte ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    let seg = (a & 0x70) >> 4;
    match seg {
        0 => t += 8,
        1 => t += 0x108,
        _ => t = (t + 0x108) << (seg - 1),
    }
    let v = if a & 0x80 != 0 { t } else { -t };
    v as i16
}

/// Averages interleaved channels into one. A trailing partial frame is dropped.
fn downmix(interleaved: &[f32], channels: u16) -> Vec<f32> {
    let n = usize::from(channels.max(1));
    if n == 1 {
        return interleaved.to_vec();
    }
    let inv = 1.0 / n as f32;
    interleaved
        .chunks_exact(n)
        .map(|frame| frame.iter().sum::<f32>() * inv)
        .collect()
}

/// Full scale is 32768 both ways so 16-bit input at 8 kHz mono round-trips bit-exactly.
fn to_i16(x: f32) -> i16 {
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

/// Zero crossings of the sinc kept on each side. With the Kaiser window below this gives a
/// transition band of roughly 5% of the lower sample rate.
const ZEROS: usize = 32;
/// Table entries per zero crossing; linear interpolation between them errs by < -80 dB.
const PHASES: usize = 128;
/// Kaiser β: about 60 dB of stopband rejection.
const KAISER_BETA: f64 = 6.0;
/// Cutoff as a fraction of the lower Nyquist, leaving room for the transition band so that
/// it ends close to (not past) the output Nyquist.
const ROLLOFF: f64 = 0.94;

/// Windowed sinc sampled at `PHASES` points per zero crossing, from 0 to `ZEROS`.
fn filter_table() -> &'static [f32] {
    static TABLE: OnceLock<Vec<f32>> = OnceLock::new();
    TABLE.get_or_init(|| {
        let len = ZEROS * PHASES;
        let i0_beta = bessel_i0(KAISER_BETA);
        (0..=len)
            .map(|i| {
                let x = i as f64 / PHASES as f64;
                let sinc = if i == 0 {
                    1.0
                } else {
                    (std::f64::consts::PI * x).sin() / (std::f64::consts::PI * x)
                };
                let r = i as f64 / len as f64;
                let window = bessel_i0(KAISER_BETA * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
                (sinc * window) as f32
            })
            .collect()
    })
}

/// Modified Bessel function of the first kind, order 0 (power series; converges fast for
/// the β values used here).
fn bessel_i0(x: f64) -> f64 {
    let mut sum = 1.0;
    let mut term = 1.0;
    let half = x / 2.0;
    for k in 1..50 {
        term *= half / k as f64;
        let t2 = term * term;
        sum += t2;
        if t2 < sum * 1e-12 {
            break;
        }
    }
    sum
}

/// Resamples mono audio from `from_hz` to `to_hz` with a Kaiser-windowed sinc low-pass at
/// 0.94 × the lower Nyquist frequency (see the module docs). Output length is
/// `ceil(len × to / from)`; samples beyond the input's ends are taken as silence. Returns a
/// copy when the rates match and an empty vector if either rate is zero.
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> Vec<f32> {
    if from_hz == 0 || to_hz == 0 || input.is_empty() {
        return Vec::new();
    }
    if from_hz == to_hz {
        return input.to_vec();
    }
    let table = filter_table();
    let from = u128::from(from_hz);
    let to = u128::from(to_hz);
    let out_len = usize::try_from((input.len() as u128 * to).div_ceil(from)).unwrap_or(0);
    // Cutoff relative to the input Nyquist; the filter stretches by 1/fc in input samples.
    let fc = (to as f64 / from as f64).min(1.0) * ROLLOFF;
    let half_width = ZEROS as f64 / fc;
    let step = from as f64 / to as f64;
    let last = input.len() as isize - 1;
    let table_scale = fc * PHASES as f64;
    let table_end = (table.len() - 1) as f64;

    (0..out_len)
        .map(|n| {
            let t = n as f64 * step;
            let lo = ((t - half_width).ceil() as isize).max(0);
            let hi = ((t + half_width).floor() as isize).min(last);
            let mut acc = 0.0f64;
            for k in lo..=hi {
                let pos = (t - k as f64).abs() * table_scale;
                if pos >= table_end {
                    continue;
                }
                let i = pos as usize;
                let frac = pos - i as f64;
                let h = f64::from(table[i]) + frac * f64::from(table[i + 1] - table[i]);
                acc += f64::from(input[k as usize]) * h;
            }
            (acc * fc) as f32
        })
        .collect()
}

/// A cached prompt plus what it was loaded from, so a changed file is noticed.
struct Entry {
    modified: Option<SystemTime>,
    len: u64,
    audio: Arc<SharedAudio>,
}

/// How often the watcher thread re-checks cached prompt files.
const WATCH_EVERY: Duration = Duration::from_secs(2);

/// Decoded prompts keyed by canonical path, loaded once and reloaded when the file's mtime
/// (or size) changes, so operators can swap a WAV without restarting. Each is kept decoded
/// and pre-encoded in both G.711 laws ([`SharedAudio`]), shared by every call that plays it.
///
/// `get` / `get_shared` are blocking (they stat the file, and decode a miss) and hold the
/// lock while decoding: prompts are few and small, so one decode per file is worth more
/// than parallel first loads. [`lookup`](Self::lookup) never touches the disk: it answers
/// from memory for a path already loaded, and a watcher thread re-checks those files every 2 s, reloading changed ones and forgetting broken or
/// deleted ones (see [`watch`](Self::watch)). The call task plays prompts with `lookup`
/// first.
#[derive(Default)]
pub struct PromptCache {
    entries: Mutex<HashMap<PathBuf, Entry>>,
    /// Paths as asked for -> canonical path, for `lookup`.
    aliases: Mutex<HashMap<PathBuf, PathBuf>>,
}

impl fmt::Debug for PromptCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PromptCache")
            .field("entries", &self.len())
            .finish()
    }
}

impl PromptCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns the decoded prompt, loading it on first use or after the file changed.
    pub fn get(&self, path: impl AsRef<Path>) -> Result<Arc<[i16]>, PromptError> {
        self.get_shared(path).map(|a| a.pcm().clone())
    }

    /// [`get`](Self::get), as shared pre-encoded audio.
    pub fn get_shared(&self, path: impl AsRef<Path>) -> Result<Arc<SharedAudio>, PromptError> {
        let path = path.as_ref();
        let canonical = std::fs::canonicalize(path).map_err(|e| io_error(path, e))?;
        let audio = self.load(&canonical)?;
        lock(&self.aliases).insert(path.to_path_buf(), canonical);
        Ok(audio)
    }

    /// The prompt at `path` if it is loaded (no disk access; `None`: use `get_shared`).
    pub fn lookup(&self, path: impl AsRef<Path>) -> Option<Arc<SharedAudio>> {
        let canonical = lock(&self.aliases).get(path.as_ref())?.clone();
        lock(&self.entries)
            .get(&canonical)
            .map(|e| Arc::clone(&e.audio))
    }

    fn load(&self, canonical: &Path) -> Result<Arc<SharedAudio>, PromptError> {
        let meta = std::fs::metadata(canonical).map_err(|e| io_error(canonical, e))?;
        let modified = meta.modified().ok();
        let len = meta.len();
        let mut entries = lock(&self.entries);
        if let Some(entry) = entries.get(canonical) {
            if entry.modified == modified && entry.len == len {
                return Ok(Arc::clone(&entry.audio));
            }
            tracing::info!(path = %canonical.display(), "prompt changed on disk; reloading");
        }
        let audio = match read_and_decode(canonical, len) {
            Ok(audio) => SharedAudio::new(audio),
            Err(e) => {
                // A broken replacement must not keep serving the old audio silently.
                entries.remove(canonical);
                return Err(e);
            }
        };
        entries.insert(
            canonical.to_path_buf(),
            Entry {
                modified,
                len,
                audio: Arc::clone(&audio),
            },
        );
        Ok(audio)
    }

    /// Re-checks every cached file: reloads changed ones, forgets broken or deleted ones.
    pub fn revalidate(&self) {
        let paths: Vec<PathBuf> = lock(&self.entries).keys().cloned().collect();
        for p in paths {
            if let Err(e) = self.load(&p) {
                tracing::warn!(error = %e, "cached prompt dropped");
                lock(&self.entries).remove(&p);
            }
        }
    }

    /// Starts the thread that keeps [`lookup`](Self::lookup) answers fresh. It holds only
    /// a weak reference and ends with the cache.
    pub fn watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let started = std::thread::Builder::new()
            .name("voxgate-prompts".into())
            .spawn(move || loop {
                std::thread::sleep(WATCH_EVERY);
                match weak.upgrade() {
                    Some(cache) => cache.revalidate(),
                    None => return,
                }
            });
        if let Err(e) = started {
            tracing::warn!(error = %e, "no prompt watcher: changed prompt files need a restart");
        }
    }

    /// Number of prompts currently cached.
    pub fn len(&self) -> usize {
        lock(&self.entries).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every cached prompt.
    pub fn clear(&self) {
        lock(&self.entries).clear();
        lock(&self.aliases).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the map half-updated (inserts and removes
    // are single calls), so a poisoned lock is still safe to use.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn sine(freq: f64, rate: u32, amp: f64, secs: f64) -> Vec<f32> {
        let n = (f64::from(rate) * secs) as usize;
        (0..n)
            .map(|i| (amp * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin()) as f32)
            .collect()
    }

    /// Amplitude of the `freq` component over `x` (single DFT bin), and the RMS of what is
    /// left after removing it: a pure tone at `freq` gives (amp, ~0).
    fn tone(x: &[f32], freq: f64, rate: u32) -> (f64, f64) {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, &s) in x.iter().enumerate() {
            let ph = 2.0 * PI * freq * i as f64 / f64::from(rate);
            re += f64::from(s) * ph.cos();
            im += f64::from(s) * ph.sin();
        }
        let n = x.len() as f64;
        let amp = 2.0 * (re * re + im * im).sqrt() / n;
        let power: f64 = x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / n;
        let residual = (power - amp * amp / 2.0).max(0.0).sqrt();
        (amp, residual)
    }

    fn rms(x: &[f32]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// The middle of an 8 kHz signal: 4000 samples (0.5 s, whole periods of any 2 Hz-multiple
    /// tone) away from the filter's edge effects.
    fn middle(x: &[f32]) -> &[f32] {
        assert!(x.len() >= 6000, "signal too short: {}", x.len());
        &x[1000..5000]
    }

    #[test]
    fn resample_16k_to_8k_keeps_frequency_and_amplitude() {
        let out = resample(&sine(1000.0, 16_000, 0.5, 1.0), 16_000, 8000);
        assert_eq!(out.len(), 8000);
        let (amp, residual) = tone(middle(&out), 1000.0, 8000);
        assert!((amp - 0.5).abs() < 0.005, "amplitude {amp}");
        assert!(residual < 0.001, "residual {residual}");
    }

    #[test]
    fn resample_44k1_to_8k_keeps_frequency_and_amplitude() {
        for freq in [440.0, 1000.0, 3000.0] {
            let out = resample(&sine(freq, 44_100, 0.7, 1.0), 44_100, 8000);
            assert_eq!(out.len(), 8000);
            let (amp, residual) = tone(middle(&out), freq, 8000);
            assert!((amp - 0.7).abs() < 0.007, "{freq} Hz: amplitude {amp}");
            assert!(residual < 0.002, "{freq} Hz: residual {residual}");
        }
    }

    #[test]
    fn resample_22050_to_8k_like_espeak() {
        let out = resample(&sine(500.0, 22_050, 0.3, 1.0), 22_050, 8000);
        assert_eq!(out.len(), 8000);
        let (amp, residual) = tone(middle(&out), 500.0, 8000);
        assert!((amp - 0.3).abs() < 0.003, "amplitude {amp}");
        assert!(residual < 0.001, "residual {residual}");
    }

    #[test]
    fn resample_filters_content_above_output_nyquist() {
        // 4.3, 5 and 6 kHz would alias to 3.7, 3 and 2 kHz without the low-pass; demand -60 dB.
        for (rate, freq) in [
            (16_000, 4300.0),
            (16_000, 5000.0),
            (16_000, 6000.0),
            (44_100, 5000.0),
        ] {
            let out = resample(&sine(freq, rate, 0.9, 1.0), rate, 8000);
            let level = rms(middle(&out));
            assert!(
                level < 0.9 * 0.001,
                "{rate} Hz/{freq} Hz leaked rms {level}"
            );
        }
    }

    #[test]
    fn resample_upsamples_too() {
        let out = resample(&sine(800.0, 6000, 0.5, 1.0), 6000, 8000);
        assert_eq!(out.len(), 8000);
        let (amp, residual) = tone(middle(&out), 800.0, 8000);
        assert!((amp - 0.5).abs() < 0.005, "amplitude {amp}");
        assert!(residual < 0.001, "residual {residual}");
    }

    #[test]
    fn resample_edge_cases() {
        let x = vec![0.25f32, -0.5, 0.75];
        assert_eq!(resample(&x, 8000, 8000), x);
        assert!(resample(&[], 16_000, 8000).is_empty());
        assert!(resample(&x, 0, 8000).is_empty());
        assert!(resample(&x, 16_000, 0).is_empty());
        assert_eq!(resample(&x, 16_000, 8000).len(), 2);
    }

    #[test]
    fn downmix_averages_channels() {
        let stereo = [1.0f32, 0.0, 0.5, 0.5, -1.0, 1.0, 0.25];
        assert_eq!(downmix(&stereo, 2), vec![0.5, 0.5, 0.0]);
        assert_eq!(downmix(&[0.3, 0.6, 0.9], 3), vec![0.6]);
        assert_eq!(downmix(&[0.1, 0.2], 1), vec![0.1, 0.2]);
    }

    #[test]
    fn g711_decoding_matches_reference_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
    }

    fn write_wav<S: hound::Sample + Copy>(
        path: &Path,
        spec: hound::WavSpec,
        samples: impl IntoIterator<Item = S>,
    ) {
        let mut w = hound::WavWriter::create(path, spec).unwrap();
        for s in samples {
            w.write_sample(s).unwrap();
        }
        w.finalize().unwrap();
    }

    fn int_spec(channels: u16, rate: u32, bits: u16) -> hound::WavSpec {
        hound::WavSpec {
            channels,
            sample_rate: rate,
            bits_per_sample: bits,
            sample_format: hound::SampleFormat::Int,
        }
    }

    /// A hand-built WAV (hound cannot write G.711), with the fact chunk real encoders add.
    fn g711_wav(tag: u16, data: &[u8], declared_data_len: u32) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(4 + 26 + 12 + 8 + data.len() as u32).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&18u32.to_le_bytes());
        b.extend_from_slice(&tag.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&8000u32.to_le_bytes());
        b.extend_from_slice(&8000u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&8u16.to_le_bytes());
        b.extend_from_slice(&0u16.to_le_bytes());
        b.extend_from_slice(b"fact");
        b.extend_from_slice(&4u32.to_le_bytes());
        b.extend_from_slice(&(data.len() as u32).to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&declared_data_len.to_le_bytes());
        b.extend_from_slice(data);
        b
    }

    #[test]
    fn decodes_mulaw_and_alaw_wavs() {
        let data = [0x80u8, 0x00, 0xFF, 0x80];
        let ulaw = decode_wav(&g711_wav(7, &data, 4)).unwrap();
        assert_eq!(ulaw, vec![32124, -32124, 0, 32124]);
        let alaw = decode_wav(&g711_wav(6, &[0xAA, 0x2A, 0xD5], 3)).unwrap();
        assert_eq!(alaw, vec![32256, -32256, 8]);
    }

    #[test]
    fn streamed_wav_with_placeholder_sizes_is_clamped() {
        // espeak-ng --stdout writes 0x7ffff000-ish sizes because it cannot seek back.
        let mut bytes = g711_wav(7, &[0x80, 0x00], 0x7FFF_F000);
        bytes[4..8].copy_from_slice(&0x7FFF_F024u32.to_le_bytes());
        assert_eq!(decode_wav(&bytes).unwrap(), vec![32124, -32124]);

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.wav");
        write_wav(&path, int_spec(1, 8000, 16), [100i16, -200, 300]);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[40..44].copy_from_slice(&0x7FFF_F000u32.to_le_bytes());
        bytes.push(0x7F); // half a sample dangling at the end
        assert_eq!(decode_wav(&bytes).unwrap(), vec![100, -200, 300]);
    }

    #[test]
    fn pcm_8k_mono_16bit_round_trips_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.wav");
        let samples = [0i16, 1, -1, 32767, -32768, 1234, -4321];
        write_wav(&path, int_spec(1, 8000, 16), samples);
        assert_eq!(&*load_prompt(&path).unwrap(), &samples[..]);
    }

    #[test]
    fn loads_every_supported_pcm_layout() {
        let dir = tempfile::tempdir().unwrap();
        let tone16k = sine(1000.0, 16_000, 0.5, 1.0);
        let tone44k = sine(1000.0, 44_100, 0.5, 1.0);
        let tone8k = sine(1000.0, 8000, 0.5, 1.0);

        let p = dir.path().join("stereo16k.wav");
        // Left carries the tone, right is silent: the mono mix is half as loud.
        write_wav(
            &p,
            int_spec(2, 16_000, 16),
            tone16k.iter().flat_map(|&s| [(s * 32767.0) as i16, 0i16]),
        );
        let a = load_prompt(&p).unwrap();
        assert_check(&a, 0.25, "stereo 16 kHz");

        let p = dir.path().join("mono44k24.wav");
        write_wav(
            &p,
            int_spec(1, 44_100, 24),
            tone44k.iter().map(|&s| (s * 8_388_607.0) as i32),
        );
        assert_check(&load_prompt(&p).unwrap(), 0.5, "24-bit 44.1 kHz");

        let p = dir.path().join("mono8k8.wav");
        write_wav(
            &p,
            int_spec(1, 8000, 8),
            tone8k.iter().map(|&s| (s * 127.0).round() as i8),
        );
        assert_check(&load_prompt(&p).unwrap(), 0.5, "8-bit 8 kHz");

        let p = dir.path().join("mono16k32.wav");
        write_wav(
            &p,
            int_spec(1, 16_000, 32),
            tone16k
                .iter()
                .map(|&s| (f64::from(s) * 2_147_483_647.0) as i32),
        );
        assert_check(&load_prompt(&p).unwrap(), 0.5, "32-bit int 16 kHz");

        let p = dir.path().join("float22k.wav");
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 22_050,
            bits_per_sample: 32,
            sample_format: hound::SampleFormat::Float,
        };
        let tone22k = sine(1000.0, 22_050, 0.5, 1.0);
        write_wav(&p, spec, tone22k.iter().flat_map(|&s| [s, s]));
        assert_check(&load_prompt(&p).unwrap(), 0.5, "float stereo 22.05 kHz");
    }

    fn assert_check(audio: &[i16], amp: f64, what: &str) {
        assert!(
            (7990..=8010).contains(&audio.len()),
            "{what}: {} samples",
            audio.len()
        );
        let x: Vec<f32> = audio.iter().map(|&s| f32::from(s) / 32768.0).collect();
        let (got, residual) = tone(middle(&x), 1000.0, 8000);
        assert!((got - amp).abs() < 0.01, "{what}: amplitude {got}");
        assert!(residual < 0.01, "{what}: residual {residual}");
    }

    #[test]
    fn errors_name_the_file_and_the_reason() {
        let dir = tempfile::tempdir().unwrap();

        let missing = dir.path().join("nope.wav");
        let e = load_prompt(&missing).unwrap_err();
        assert!(matches!(e, PromptError::Missing { .. }), "{e:?}");
        assert_eq!(e.path(), missing);
        assert!(e.to_string().contains("nope.wav") && e.to_string().contains("not found"));

        let text = dir.path().join("text.wav");
        std::fs::write(&text, "hello, I am not audio").unwrap();
        let e = load_prompt(&text).unwrap_err();
        assert!(
            matches!(
                e,
                PromptError::Decode {
                    source: WavError::NotWav(_),
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("text.wav") && e.to_string().contains("not a WAV"));

        let adpcm = dir.path().join("adpcm.wav");
        std::fs::write(&adpcm, g711_wav(2, &[1, 2, 3, 4], 4)).unwrap();
        let e = load_prompt(&adpcm).unwrap_err();
        assert!(
            e.to_string().contains("adpcm.wav")
                && e.to_string().contains("unsupported WAV format")
                && e.to_string().contains("ADPCM"),
            "{e}"
        );

        let empty = dir.path().join("empty.wav");
        write_wav::<i16>(&empty, int_spec(1, 8000, 16), []);
        let e = load_prompt(&empty).unwrap_err();
        assert!(
            matches!(
                e,
                PromptError::Decode {
                    source: WavError::Empty,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("empty.wav") && e.to_string().contains("no audio"));

        let zero = dir.path().join("zero.wav");
        std::fs::write(&zero, b"").unwrap();
        assert!(load_prompt(&zero)
            .unwrap_err()
            .to_string()
            .contains("no audio"));

        let truncated = dir.path().join("trunc.wav");
        std::fs::write(&truncated, b"RIFF\0\0\0\0WAVEfmt \x10\0\0\0\x01\0").unwrap();
        let e = load_prompt(&truncated).unwrap_err();
        assert!(e.to_string().contains("truncated fmt chunk"), "{e}");
    }

    #[test]
    fn cache_loads_once_per_canonical_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wav");
        write_wav(&path, int_spec(1, 8000, 16), [1i16, 2, 3]);
        let cache = PromptCache::new();
        let a = cache.get(&path).unwrap();
        let roundabout = dir.path().join(".").join("p.wav");
        let b = cache.get(&roundabout).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(cache.len(), 1);

        let shared = Arc::new(cache);
        std::thread::scope(|s| {
            for _ in 0..4 {
                let shared = Arc::clone(&shared);
                let path = path.clone();
                let a = Arc::clone(&a);
                s.spawn(move || assert!(Arc::ptr_eq(&shared.get(&path).unwrap(), &a)));
            }
        });
        shared.clear();
        assert!(shared.is_empty());
    }

    #[test]
    fn cache_reloads_when_mtime_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.wav");
        write_wav(&path, int_spec(1, 8000, 16), [1i16, 2, 3]);
        let t0 = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t0)
            .unwrap();
        let cache = PromptCache::new();
        assert_eq!(&*cache.get(&path).unwrap(), &[1, 2, 3]);

        // Same size, new content, new mtime.
        write_wav(&path, int_spec(1, 8000, 16), [7i16, 8, 9]);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(t0 + std::time::Duration::from_secs(5))
            .unwrap();
        assert_eq!(&*cache.get(&path).unwrap(), &[7, 8, 9]);

        // A broken replacement is reported, not papered over with the old audio.
        std::fs::write(&path, "garbage").unwrap();
        assert!(cache.get(&path).is_err());
        assert!(cache.is_empty());
    }

    #[test]
    fn shipped_prompts_are_8k_mono_16bit_and_sensible() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("sip-config/prompts");
        let cache = PromptCache::new();
        for (name, min_s, max_s) in [
            ("greeting", 6.0, 8.0),
            ("error", 1.0, 4.0),
            ("menu", 1.0, 6.0),
            ("goodbye", 0.3, 2.0),
            ("hold", 1.9, 2.1),
            ("tts_fallback", 1.0, 4.0),
        ] {
            let path = dir.join(format!("{name}.wav"));
            let spec = hound::WavReader::open(&path).unwrap().spec();
            assert_eq!(
                (spec.sample_rate, spec.channels, spec.bits_per_sample),
                (8000, 1, 16),
                "{name}"
            );
            let audio = cache.get(&path).unwrap();
            let secs = audio.len() as f64 / 8000.0;
            assert!((min_s..=max_s).contains(&secs), "{name}: {secs} s");
            let x: Vec<f32> = audio.iter().map(|&s| f32::from(s) / 32768.0).collect();
            assert!(rms(&x) > 0.02, "{name} is near silent");
        }
    }

    #[test]
    fn cache_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<PromptCache>();
    }
}
