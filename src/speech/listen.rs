//! One `listen`, IO-free: frames and the clock go in, `SpeechStarted` and exactly one outcome
//! come out. The recogniser is passed in by the caller (a pool thread), so this file decides
//! *when* (VAD, timeouts) and *what it means* (grammar match, confidence), never *how* the
//! words are recognised.

use super::vad::{Vad, VadConfig, VadEvent};
use super::{contains_phrase, normalize, Hypothesis, Recognizer, SpeechError, FRAME_SAMPLES};
use crate::flow::{ListenMode, ListenSpec, SpeechOutcome};
use std::collections::VecDeque;
use std::time::Instant;

/// Settings shared by every listen (from `[speech]`).
#[derive(Debug, Clone, PartialEq)]
pub struct ListenerConfig {
    pub vad: VadConfig,
    /// Below this confidence a hypothesis is a no-match.
    pub min_confidence: f32,
    /// Frames kept from before the VAD fired, so the first consonant is not cut.
    pub preroll_frames: usize,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            vad: VadConfig::default(),
            min_confidence: 0.5,
            preroll_frames: 15,
        }
    }
}

/// What the listener reports.
#[derive(Debug, Clone, PartialEq)]
pub enum ListenStep {
    SpeechStarted,
    Done(SpeechOutcome),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Waiting,
    Speaking { since: Instant },
    Done,
}

pub struct Listener {
    spec: ListenSpec,
    cfg: ListenerConfig,
    /// Normalised grammar phrases or keywords.
    phrases: Vec<String>,
    vad: Vad,
    started: Instant,
    phase: Phase,
    preroll: VecDeque<Vec<i16>>,
    /// Samples waiting to fill a whole frame.
    partial: Vec<i16>,
    /// Frames fed to the recogniser in this utterance.
    fed_frames: u64,
}

impl Listener {
    /// Starts listening: prepares the recogniser for the spec's mode. A grammar the
    /// recogniser cannot take is reported as the step's outcome at once.
    pub fn start(
        spec: ListenSpec,
        cfg: ListenerConfig,
        now: Instant,
        rec: &mut dyn Recognizer,
    ) -> Result<Self, SpeechOutcome> {
        let phrases: Vec<String> = match &spec.mode {
            ListenMode::Grammar(p) | ListenMode::Keywords(p) => p
                .iter()
                .map(|s| normalize(s))
                .filter(|s| !s.is_empty())
                .collect(),
            ListenMode::Free => Vec::new(),
        };
        if phrases.is_empty() && !matches!(spec.mode, ListenMode::Free) {
            return Err(SpeechError::EmptyGrammar.outcome());
        }
        let mode = match &spec.mode {
            ListenMode::Grammar(_) => ListenMode::Grammar(phrases.clone()),
            ListenMode::Keywords(_) => ListenMode::Keywords(phrases.clone()),
            ListenMode::Free => ListenMode::Free,
        };
        rec.begin(&mode).map_err(|e| e.outcome())?;
        Ok(Listener {
            vad: Vad::new(cfg.vad.clone()),
            spec,
            phrases,
            started: now,
            phase: Phase::Waiting,
            preroll: VecDeque::with_capacity(cfg.preroll_frames + 1),
            partial: Vec::with_capacity(FRAME_SAMPLES),
            fed_frames: 0,
            cfg,
        })
    }

    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// When [`Listener::poll`] must next be called: the no-speech timeout or the end of the
    /// longest utterance allowed.
    pub fn deadline(&self) -> Option<Instant> {
        match self.phase {
            Phase::Waiting => Some(self.started + self.spec.timeout),
            Phase::Speaking { since } => Some(since + self.spec.max_speech),
            Phase::Done => None,
        }
    }

    /// Caller audio (any length; cut into 20 ms frames here).
    pub fn push(
        &mut self,
        samples: &[i16],
        now: Instant,
        rec: &mut dyn Recognizer,
    ) -> Vec<ListenStep> {
        let mut out = Vec::new();
        let mut rest = samples;
        while !rest.is_empty() && !self.is_done() {
            let take = (FRAME_SAMPLES - self.partial.len()).min(rest.len());
            self.partial.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.partial.len() == FRAME_SAMPLES {
                let frame = std::mem::replace(&mut self.partial, Vec::with_capacity(FRAME_SAMPLES));
                self.frame(frame, now, rec, &mut out);
            }
        }
        if let Some(step) = self.poll(now, rec) {
            out.push(step);
        }
        out
    }

    fn frame(
        &mut self,
        frame: Vec<i16>,
        now: Instant,
        rec: &mut dyn Recognizer,
        out: &mut Vec<ListenStep>,
    ) {
        let event = self.vad.push(&frame);
        match self.phase {
            Phase::Waiting => {
                self.preroll.push_back(frame);
                if self.preroll.len() > self.cfg.preroll_frames.max(1) {
                    self.preroll.pop_front();
                }
                if let Some(VadEvent::SpeechStart { .. }) = event {
                    self.phase = Phase::Speaking { since: now };
                    out.push(ListenStep::SpeechStarted);
                    let frames: Vec<Vec<i16>> = self.preroll.drain(..).collect();
                    for f in frames {
                        if let Err(e) = self.feed(&f, rec) {
                            out.push(self.fail(e, rec));
                            return;
                        }
                    }
                }
            }
            Phase::Speaking { .. } => {
                if let Err(e) = self.feed(&frame, rec) {
                    out.push(self.fail(e, rec));
                    return;
                }
                if let Some(VadEvent::SpeechEnd) = event {
                    out.push(self.finish(rec));
                }
            }
            Phase::Done => {}
        }
    }

    fn feed(&mut self, frame: &[i16], rec: &mut dyn Recognizer) -> Result<(), SpeechError> {
        self.fed_frames += 1;
        rec.feed(frame)
    }

    /// Deadlines: no speech before `timeout`, or an utterance longer than `max_speech`.
    pub fn poll(&mut self, now: Instant, rec: &mut dyn Recognizer) -> Option<ListenStep> {
        let deadline = self.deadline()?;
        if now < deadline {
            return None;
        }
        Some(match self.phase {
            Phase::Waiting => {
                rec.abort();
                self.phase = Phase::Done;
                ListenStep::Done(SpeechOutcome::Timeout)
            }
            _ => self.finish(rec),
        })
    }

    /// Stops without an outcome (the flow moved on).
    pub fn stop(&mut self, rec: &mut dyn Recognizer) {
        if !self.is_done() {
            rec.abort();
            self.phase = Phase::Done;
        }
    }

    fn fail(&mut self, e: SpeechError, rec: &mut dyn Recognizer) -> ListenStep {
        rec.abort();
        self.phase = Phase::Done;
        ListenStep::Done(e.outcome())
    }

    fn finish(&mut self, rec: &mut dyn Recognizer) -> ListenStep {
        self.phase = Phase::Done;
        match rec.finish() {
            Ok(h) => ListenStep::Done(self.judge(h)),
            Err(e) => ListenStep::Done(e.outcome()),
        }
    }

    /// What the hypothesis means for the step: heard (in the grammar, spotted keyword or any
    /// free text, confident enough) or no match.
    fn judge(&self, h: Hypothesis) -> SpeechOutcome {
        let text = normalize(&h.text);
        let confidence = h.confidence.clamp(0.0, 1.0);
        let matches = !text.is_empty()
            && match &self.spec.mode {
                ListenMode::Grammar(_) => self.phrases.contains(&text),
                ListenMode::Keywords(_) => self.phrases.iter().any(|p| contains_phrase(&text, p)),
                ListenMode::Free => true,
            };
        if matches && confidence >= self.cfg.min_confidence {
            SpeechOutcome::Heard { text, confidence }
        } else {
            SpeechOutcome::NoMatch { text, confidence }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A recogniser that answers with a fixed hypothesis and records what it was fed.
    #[derive(Default)]
    struct Scripted {
        answer: Option<Hypothesis>,
        fed: usize,
        begun: Vec<ListenMode>,
        aborted: usize,
        fail_begin: bool,
    }

    impl Recognizer for Scripted {
        fn name(&self) -> &'static str {
            "scripted"
        }
        fn begin(&mut self, mode: &ListenMode) -> Result<(), SpeechError> {
            if self.fail_begin {
                return Err(SpeechError::UnknownWord {
                    word: "zzyzx".into(),
                });
            }
            self.begun.push(mode.clone());
            Ok(())
        }
        fn feed(&mut self, samples: &[i16]) -> Result<(), SpeechError> {
            self.fed += samples.len();
            Ok(())
        }
        fn finish(&mut self) -> Result<Hypothesis, SpeechError> {
            self.answer
                .clone()
                .ok_or_else(|| SpeechError::Engine("no answer".into()))
        }
        fn abort(&mut self) {
            self.aborted += 1;
        }
    }

    fn spec(mode: ListenMode) -> ListenSpec {
        ListenSpec {
            mode,
            timeout: Duration::from_millis(3000),
            max_speech: Duration::from_millis(2000),
            barge_in: true,
        }
    }

    fn frame(amplitude: f64) -> Vec<i16> {
        (0..FRAME_SAMPLES)
            .map(|i| (amplitude * (i as f64 * 0.4).sin()) as i16)
            .collect()
    }

    /// Feeds `frames` frames of `amplitude`, 20 ms apart, from `*t`.
    fn run(
        l: &mut Listener,
        rec: &mut Scripted,
        t: &mut Instant,
        frames: usize,
        amplitude: f64,
    ) -> Vec<ListenStep> {
        let f = frame(amplitude);
        let mut out = Vec::new();
        for _ in 0..frames {
            *t += Duration::from_millis(20);
            out.extend(l.push(&f, *t, rec));
        }
        out
    }

    #[test]
    fn utterance_in_grammar_is_heard() {
        let mut rec = Scripted {
            answer: Some(Hypothesis {
                text: "Sales".into(),
                confidence: 0.9,
            }),
            ..Default::default()
        };
        let mut t = Instant::now();
        let mut l = Listener::start(
            spec(ListenMode::Grammar(vec![
                "sales".into(),
                "Opening hours!".into(),
            ])),
            ListenerConfig::default(),
            t,
            &mut rec,
        )
        .unwrap();
        assert_eq!(
            rec.begun,
            vec![ListenMode::Grammar(vec![
                "sales".into(),
                "opening hours".into()
            ])]
        );
        assert!(run(&mut l, &mut rec, &mut t, 20, 20.0).is_empty());
        let steps = run(&mut l, &mut rec, &mut t, 30, 9000.0);
        assert_eq!(steps, vec![ListenStep::SpeechStarted]);
        // Pre-roll (15 frames, the last 4 of them voiced) plus the 26 voiced frames after it.
        assert_eq!(rec.fed, (15 + 26) * FRAME_SAMPLES);
        let steps = run(&mut l, &mut rec, &mut t, 40, 20.0);
        assert_eq!(
            steps,
            vec![ListenStep::Done(SpeechOutcome::Heard {
                text: "sales".into(),
                confidence: 0.9
            })]
        );
        assert!(l.is_done());
        assert!(run(&mut l, &mut rec, &mut t, 5, 9000.0).is_empty());
    }

    #[test]
    fn low_confidence_or_outside_grammar_is_no_match() {
        for (text, conf) in [("sales", 0.2f32), ("billing", 0.9), ("", 0.0)] {
            let mut rec = Scripted {
                answer: Some(Hypothesis {
                    text: text.into(),
                    confidence: conf,
                }),
                ..Default::default()
            };
            let mut t = Instant::now();
            let mut l = Listener::start(
                spec(ListenMode::Grammar(vec!["sales".into()])),
                ListenerConfig::default(),
                t,
                &mut rec,
            )
            .unwrap();
            run(&mut l, &mut rec, &mut t, 20, 9000.0);
            let steps = run(&mut l, &mut rec, &mut t, 40, 0.0);
            assert_eq!(
                steps,
                vec![ListenStep::Done(SpeechOutcome::NoMatch {
                    text: text.into(),
                    confidence: conf
                })],
                "{text}"
            );
        }
    }

    #[test]
    fn keywords_are_spotted_in_a_sentence() {
        let mut rec = Scripted {
            answer: Some(Hypothesis {
                text: "i want to talk to sales".into(),
                confidence: 0.7,
            }),
            ..Default::default()
        };
        let mut t = Instant::now();
        let mut l = Listener::start(
            spec(ListenMode::Keywords(vec!["sales".into(), "support".into()])),
            ListenerConfig::default(),
            t,
            &mut rec,
        )
        .unwrap();
        run(&mut l, &mut rec, &mut t, 20, 9000.0);
        let steps = run(&mut l, &mut rec, &mut t, 40, 0.0);
        assert_eq!(
            steps,
            vec![ListenStep::Done(SpeechOutcome::Heard {
                text: "i want to talk to sales".into(),
                confidence: 0.7
            })]
        );
    }

    #[test]
    fn silence_times_out_without_asking_the_recogniser() {
        let mut rec = Scripted::default();
        let start = Instant::now();
        let mut t = start;
        let mut l = Listener::start(
            spec(ListenMode::Free),
            ListenerConfig::default(),
            t,
            &mut rec,
        )
        .unwrap();
        assert_eq!(l.deadline(), Some(start + Duration::from_millis(3000)));
        let steps = run(&mut l, &mut rec, &mut t, 149, 0.0);
        assert!(steps.is_empty());
        let steps = run(&mut l, &mut rec, &mut t, 1, 0.0);
        assert_eq!(steps, vec![ListenStep::Done(SpeechOutcome::Timeout)]);
        assert_eq!(rec.fed, 0);
        assert_eq!(rec.aborted, 1);
        // With no frames at all the clock alone ends it.
        let mut l = Listener::start(
            spec(ListenMode::Free),
            ListenerConfig::default(),
            start,
            &mut rec,
        )
        .unwrap();
        assert_eq!(l.poll(start + Duration::from_millis(2999), &mut rec), None);
        assert_eq!(
            l.poll(start + Duration::from_millis(3000), &mut rec),
            Some(ListenStep::Done(SpeechOutcome::Timeout))
        );
    }

    #[test]
    fn endless_speech_is_cut_at_max_speech() {
        let mut rec = Scripted {
            answer: Some(Hypothesis {
                text: "support".into(),
                confidence: 0.8,
            }),
            ..Default::default()
        };
        let mut t = Instant::now();
        let mut l = Listener::start(
            spec(ListenMode::Grammar(vec!["support".into()])),
            ListenerConfig::default(),
            t,
            &mut rec,
        )
        .unwrap();
        let steps = run(&mut l, &mut rec, &mut t, 200, 9000.0);
        assert_eq!(steps.len(), 2, "{steps:?}");
        assert_eq!(steps[0], ListenStep::SpeechStarted);
        assert!(matches!(
            steps[1],
            ListenStep::Done(SpeechOutcome::Heard { .. })
        ));
        // Started on frame 4 (80 ms), cut 2 s later.
        assert_eq!(rec.fed, (4 + 100) * FRAME_SAMPLES);
    }

    #[test]
    fn bad_grammar_fails_at_once() {
        let mut rec = Scripted {
            fail_begin: true,
            ..Default::default()
        };
        let now = Instant::now();
        let err = Listener::start(
            spec(ListenMode::Grammar(vec!["zzyzx".into()])),
            ListenerConfig::default(),
            now,
            &mut rec,
        )
        .err();
        assert!(
            matches!(err, Some(SpeechOutcome::Error(f)) if f.message.contains("zzyzx") && f.code == "grammar")
        );
        let err = Listener::start(
            spec(ListenMode::Keywords(vec!["?!".into()])),
            ListenerConfig::default(),
            now,
            &mut Scripted::default(),
        )
        .err();
        assert!(
            matches!(err, Some(SpeechOutcome::Error(f)) if f.message.contains("empty") && f.code == "grammar")
        );
    }

    #[test]
    fn odd_packet_sizes_are_reframed() {
        let mut rec = Scripted {
            answer: Some(Hypothesis {
                text: "yes".into(),
                confidence: 1.0,
            }),
            ..Default::default()
        };
        let mut t = Instant::now();
        let mut l = Listener::start(
            spec(ListenMode::Free),
            ListenerConfig::default(),
            t,
            &mut rec,
        )
        .unwrap();
        // 30 ms packets (240 samples).
        let loud: Vec<i16> = frame(9000.0).into_iter().cycle().take(240).collect();
        let mut started = false;
        for _ in 0..10 {
            t += Duration::from_millis(30);
            started |= l
                .push(&loud, t, &mut rec)
                .contains(&ListenStep::SpeechStarted);
        }
        assert!(started);
        assert_eq!(rec.fed % FRAME_SAMPLES, 0);
    }
}
