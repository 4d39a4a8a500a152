//! Voice activity detection on 20 ms frames of 8 kHz audio: an energy detector over an
//! adaptive noise floor, with hysteresis so that a click does not start an utterance and the
//! pause between two words does not end one. IO-free: feed frames, read transitions.

use super::FRAME_SAMPLES;

/// Tuning; the defaults suit telephone speech through G.711.
#[derive(Debug, Clone, PartialEq)]
pub struct VadConfig {
    /// A frame is voiced when its level is this far above the noise floor (dB)...
    pub threshold_db: f32,
    /// ...and above this absolute level (dBFS), so digital silence and line hiss never count.
    pub min_level_dbfs: f32,
    /// Voiced frames in a row that start an utterance.
    pub start_frames: u32,
    /// Unvoiced frames in a row that end it.
    pub end_frames: u32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            threshold_db: 10.0,
            min_level_dbfs: -45.0,
            start_frames: 4,
            end_frames: 35,
        }
    }
}

/// What a frame changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began `frames_back` frames ago (these frames belong to the utterance).
    SpeechStart { frames_back: u32 },
    /// Speech ended (the trailing silence is over).
    SpeechEnd,
}

#[derive(Debug, Clone)]
pub struct Vad {
    cfg: VadConfig,
    /// Noise floor estimate in dBFS.
    noise_db: f32,
    in_speech: bool,
    voiced_run: u32,
    unvoiced_run: u32,
    frames: u64,
}

/// Level of a frame in dBFS (RMS; -100 for digital silence).
pub fn level_dbfs(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return -100.0;
    }
    let energy: f64 = samples.iter().map(|&s| f64::from(s) * f64::from(s)).sum();
    let rms = (energy / samples.len() as f64).sqrt();
    if rms < 1.0 {
        return -100.0;
    }
    (20.0 * (rms / 32768.0).log10()) as f32
}

impl Vad {
    pub fn new(cfg: VadConfig) -> Self {
        Vad {
            cfg,
            noise_db: -70.0,
            in_speech: false,
            voiced_run: 0,
            unvoiced_run: 0,
            frames: 0,
        }
    }

    pub fn in_speech(&self) -> bool {
        self.in_speech
    }

    /// The current noise floor estimate (dBFS).
    pub fn noise_floor(&self) -> f32 {
        self.noise_db
    }

    /// One frame (ideally [`FRAME_SAMPLES`] samples).
    pub fn push(&mut self, frame: &[i16]) -> Option<VadEvent> {
        debug_assert!(frame.len() <= FRAME_SAMPLES * 4);
        self.frames += 1;
        let level = level_dbfs(frame);
        let voiced =
            level > self.noise_db + self.cfg.threshold_db && level > self.cfg.min_level_dbfs;
        // The floor follows quiet frames quickly downwards and slowly upwards, and stands
        // still during speech, so a long vowel does not raise it into the speech.
        if !voiced && !self.in_speech {
            let rate = if level < self.noise_db { 0.3 } else { 0.05 };
            self.noise_db += (level.max(-90.0) - self.noise_db) * rate;
        } else if !voiced {
            // Trailing silence of an utterance: let the floor settle, slowly.
            self.noise_db += (level.max(-90.0) - self.noise_db).min(0.0) * 0.05;
        }
        if voiced {
            self.voiced_run += 1;
            self.unvoiced_run = 0;
        } else {
            self.unvoiced_run += 1;
            self.voiced_run = 0;
        }
        if !self.in_speech && self.voiced_run >= self.cfg.start_frames {
            self.in_speech = true;
            return Some(VadEvent::SpeechStart {
                frames_back: self.voiced_run,
            });
        }
        if self.in_speech && self.unvoiced_run >= self.cfg.end_frames {
            self.in_speech = false;
            return Some(VadEvent::SpeechEnd);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(amplitude: f64) -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|i| (amplitude * (i as f64 * 0.35).sin()) as i16)
            .collect()
    }

    #[test]
    fn levels() {
        assert_eq!(level_dbfs(&[0; 160]), -100.0);
        let full = level_dbfs(&tone(32767.0));
        assert!((full + 3.0).abs() < 0.5, "{full}");
    }

    #[test]
    fn start_and_end_with_hysteresis() {
        let mut vad = Vad::new(VadConfig::default());
        let quiet = tone(30.0);
        let loud = tone(8000.0);
        for _ in 0..25 {
            assert_eq!(vad.push(&quiet), None);
        }
        // A two-frame click does not start speech.
        assert_eq!(vad.push(&loud), None);
        assert_eq!(vad.push(&loud), None);
        assert_eq!(vad.push(&quiet), None);
        assert!(!vad.in_speech());
        let mut started = None;
        for i in 0..10 {
            if let Some(ev) = vad.push(&loud) {
                started = Some((i, ev));
            }
        }
        assert_eq!(started, Some((3, VadEvent::SpeechStart { frames_back: 4 })));
        // A 300 ms pause between words keeps the utterance open.
        for _ in 0..15 {
            assert_eq!(vad.push(&quiet), None);
        }
        for _ in 0..5 {
            assert_eq!(vad.push(&loud), None);
        }
        let mut ended = None;
        for i in 0..40 {
            if let Some(ev) = vad.push(&quiet) {
                ended = Some((i, ev));
            }
        }
        assert_eq!(ended, Some((34, VadEvent::SpeechEnd)));
    }

    #[test]
    fn digital_silence_and_steady_hum_are_not_speech() {
        let mut vad = Vad::new(VadConfig::default());
        for _ in 0..100 {
            assert_eq!(vad.push(&[0; 160]), None);
        }
        // A steady hum well above the absolute floor: the noise floor rises to meet it
        // before it runs long enough to start speech, or it starts once and then ends.
        let hum = tone(600.0);
        let mut starts = 0;
        for _ in 0..300 {
            if let Some(VadEvent::SpeechStart { .. }) = vad.push(&hum) {
                starts += 1;
            }
        }
        assert!(starts <= 1);
    }
}
