//! Repairing the header of a WAV file whose writer died. hound refreshes the RIFF and data
//! sizes on every flush, but audio written after the last flush (or a header never refreshed
//! at all) leaves sizes that disagree with the file. The planner here is pure: it reads the
//! header bytes and the file length and says what to truncate and patch.

use std::fs::OpenOptions;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

/// How much of the file start to read to find the `data` chunk.
pub const HEADER_PROBE: usize = 4096;

/// Why a file cannot be repaired.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WavFixError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("header is incomplete (file is {0} bytes)")]
    Truncated(u64),
    #[error("no fmt chunk before the data chunk")]
    NoFormat,
    #[error("fmt chunk has block_align 0")]
    BadFormat,
}

/// What the file should become.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WavRepair {
    /// Offset of the first audio byte.
    pub data_offset: u64,
    /// Audio bytes kept (whole frames only).
    pub data_len: u64,
    pub channels: u16,
    pub sample_rate: u32,
    /// Bytes per frame (all channels).
    pub block_align: u16,
}

impl WavRepair {
    /// The file's length after repair.
    pub fn file_len(&self) -> u64 {
        self.data_offset + self.data_len
    }

    pub fn duration_ms(&self) -> u64 {
        let frames = self.data_len / u64::from(self.block_align);
        frames * 1000 / u64::from(self.sample_rate.max(1))
    }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Works out the repair from the first bytes of the file and its full length. The declared
/// data size is ignored: the file length is the truth, cut down to whole frames.
pub fn plan(header: &[u8], file_len: u64) -> Result<WavRepair, WavFixError> {
    if header.len() < 12 {
        return Err(WavFixError::Truncated(file_len));
    }
    if &header[0..4] != b"RIFF" || &header[8..12] != b"WAVE" {
        return Err(WavFixError::NotWave);
    }
    let mut pos = 12usize;
    let mut format: Option<(u16, u32, u16)> = None;
    loop {
        let (Some(id), Some(size)) = (header.get(pos..pos + 4), u32_at(header, pos + 4)) else {
            return Err(WavFixError::Truncated(file_len));
        };
        let body = pos + 8;
        match id {
            b"fmt " => {
                let channels = u16_at(header, body + 2).ok_or(WavFixError::Truncated(file_len))?;
                let rate = u32_at(header, body + 4).ok_or(WavFixError::Truncated(file_len))?;
                let align = u16_at(header, body + 12).ok_or(WavFixError::Truncated(file_len))?;
                if align == 0 {
                    return Err(WavFixError::BadFormat);
                }
                format = Some((channels, rate, align));
            }
            b"data" => {
                let (channels, sample_rate, block_align) = format.ok_or(WavFixError::NoFormat)?;
                let data_offset = body as u64;
                if file_len < data_offset {
                    return Err(WavFixError::Truncated(file_len));
                }
                let raw = (file_len - data_offset).min(u64::from(u32::MAX) - data_offset);
                let data_len = raw - raw % u64::from(block_align);
                return Ok(WavRepair {
                    data_offset,
                    data_len,
                    channels,
                    sample_rate,
                    block_align,
                });
            }
            _ => {}
        }
        // Chunks are word-aligned: odd sizes carry a pad byte.
        let size = usize::try_from(size).map_err(|_| WavFixError::NotWave)?;
        pos = size
            .checked_add(size % 2)
            .and_then(|s| s.checked_add(body))
            .ok_or(WavFixError::NotWave)?;
    }
}

/// Repairs `path` in place: truncates to whole frames and rewrites the RIFF and data sizes.
pub fn repair_file(path: &Path) -> io::Result<Result<WavRepair, WavFixError>> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    let file_len = f.metadata()?.len();
    let mut header = Vec::with_capacity(HEADER_PROBE);
    (&mut f)
        .take(HEADER_PROBE as u64)
        .read_to_end(&mut header)?;
    let repair = match plan(&header, file_len) {
        Ok(r) => r,
        Err(e) => return Ok(Err(e)),
    };
    f.set_len(repair.file_len())?;
    // Both sizes fit in u32: plan() caps data_len so the file stays under 4 GiB.
    let riff = u32::try_from(repair.file_len() - 8).unwrap_or(u32::MAX);
    let data = u32::try_from(repair.data_len).unwrap_or(u32::MAX);
    f.seek(SeekFrom::Start(4))?;
    f.write_all(&riff.to_le_bytes())?;
    f.seek(SeekFrom::Start(repair.data_offset - 4))?;
    f.write_all(&data.to_le_bytes())?;
    f.sync_all()?;
    Ok(Ok(repair))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A canonical 44-byte PCM header with stale sizes (as hound writes before any flush).
    pub(crate) fn header(channels: u16) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&36u32.to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&channels.to_le_bytes());
        h.extend_from_slice(&8000u32.to_le_bytes());
        h.extend_from_slice(&(8000u32 * 2 * u32::from(channels)).to_le_bytes());
        h.extend_from_slice(&(2 * channels).to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&0u32.to_le_bytes());
        h
    }

    #[test]
    fn plan_uses_file_length_and_whole_frames() {
        let h = header(2);
        let r = plan(&h, 44 + 4 * 1000 + 3).unwrap();
        assert_eq!(r.data_offset, 44);
        assert_eq!(r.data_len, 4000);
        assert_eq!(r.channels, 2);
        assert_eq!(r.duration_ms(), 125);
    }

    #[test]
    fn plan_skips_unknown_chunks() {
        let mut h = header(1);
        // Insert an odd-sized LIST chunk (with pad byte) before data.
        let data = h.split_off(36);
        h.extend_from_slice(b"LIST");
        h.extend_from_slice(&3u32.to_le_bytes());
        h.extend_from_slice(&[1, 2, 3, 0]);
        h.extend_from_slice(&data);
        let r = plan(&h, h.len() as u64 + 10).unwrap();
        assert_eq!(r.data_offset, 56);
        assert_eq!(r.data_len, 10);
    }

    #[test]
    fn plan_rejects_garbage_and_short_headers() {
        assert_eq!(plan(b"", 0), Err(WavFixError::Truncated(0)));
        assert_eq!(plan(&[0u8; 44], 44), Err(WavFixError::NotWave));
        let h = header(2);
        assert_eq!(plan(&h[..30], 30), Err(WavFixError::Truncated(30)));
    }

    #[test]
    fn repair_file_makes_hound_readable() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.wav.part");
        let mut bytes = header(2);
        for i in 0..400i16 {
            bytes.extend_from_slice(&i.to_le_bytes());
        }
        bytes.push(0xAA); // half a sample from an interrupted write
        std::fs::write(&p, &bytes).unwrap();
        let r = repair_file(&p).unwrap().unwrap();
        assert_eq!(r.data_len, 800);
        let reader = hound::WavReader::open(&p).unwrap();
        assert_eq!(reader.duration(), 200);
        let s: Vec<i16> = reader.into_samples().map(Result::unwrap).collect();
        assert_eq!(s.len(), 400);
        assert_eq!(s[399], 399);
    }
}
