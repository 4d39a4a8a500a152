//! Recording: start/stop on the flow's request, the recorder's events, and the bookkeeping
//! the end of the call needs (which recordings exist, which are still finalizing).
//!
//! The recorder (media) knows nothing of the flow; this is where its events become flow
//! events.

use super::Call;
use crate::flow::FlowEvent;
use crate::media::core::MediaCommand;
use crate::media::recorder::{RecorderEvent, RecordingId, RecordingMeta};
use std::collections::BTreeSet;
use std::time::Instant;
use tracing::{info, warn};

/// A recording in progress, as far as the bookkeeping is concerned.
pub(super) trait Handle {
    fn id(&self) -> &RecordingId;
}

impl Handle for RecordingId {
    fn id(&self) -> &RecordingId {
        self
    }
}

/// The call's recordings (IO-free).
#[derive(Debug)]
pub(super) struct Recordings<H> {
    /// The recording being written, if any (at most one at a time).
    active: Option<H>,
    /// Every recording started on this call, oldest first (for the CDR).
    ids: Vec<String>,
    /// Started and not yet `Ready`/`Failed`: the writer is still finalizing them.
    unfinished: BTreeSet<RecordingId>,
}

impl<H> Default for Recordings<H> {
    fn default() -> Self {
        Recordings {
            active: None,
            ids: Vec::new(),
            unfinished: BTreeSet::new(),
        }
    }
}

/// What a stop request does.
#[derive(Debug, PartialEq)]
pub(super) enum Stop<H> {
    /// Stop this recording.
    Now(H),
    /// Nothing was recording and the flow asked: tell it.
    Refused(FlowEvent),
    /// Nothing was recording (the call is ending): nothing to do.
    Nothing,
}

impl<H: Handle> Recordings<H> {
    pub fn is_recording(&self) -> bool {
        self.active.is_some()
    }
    pub fn ids(&self) -> &[String] {
        &self.ids
    }
    pub fn active_id(&self) -> Option<&RecordingId> {
        self.active.as_ref().map(|r| r.id())
    }
    pub fn unfinished(&self) -> usize {
        self.unfinished.len()
    }

    /// A start is refused while a recording runs (the flow hears why).
    pub fn check_start(&self) -> Result<(), FlowEvent> {
        match &self.active {
            Some(rec) => Err(FlowEvent::RecordingFailed {
                id: None,
                reason: format!("already recording ({}); start ignored", rec.id()),
            }),
            None => Ok(()),
        }
    }

    /// The recorder started `rec`.
    pub fn started(&mut self, rec: H) {
        self.ids.push(rec.id().to_string());
        self.unfinished.insert(rec.id().clone());
        self.active = Some(rec);
    }

    /// Stops the active recording; `requested` when the flow asked (not the call's end).
    pub fn stop(&mut self, requested: bool) -> Stop<H> {
        match self.active.take() {
            Some(rec) => Stop::Now(rec),
            None if requested => Stop::Refused(FlowEvent::RecordingFailed {
                id: None,
                reason: "not recording; stop ignored".into(),
            }),
            None => Stop::Nothing,
        }
    }

    /// Books a recorder event; true when it ended the active recording (write failure).
    pub fn on_event(&mut self, e: &RecorderEvent) -> bool {
        match e {
            RecorderEvent::Ready { id, .. } => {
                self.unfinished.remove(id);
                false
            }
            RecorderEvent::Failed { id, .. } => {
                self.unfinished.remove(id);
                if self.active.as_ref().is_some_and(|r| r.id() == id) {
                    self.active = None;
                    return true;
                }
                false
            }
            RecorderEvent::Started { .. } | RecorderEvent::Stopped { .. } => false,
        }
    }
}

/// The flow's view of a recorder event.
pub(super) fn flow_event(e: RecorderEvent) -> FlowEvent {
    match e {
        RecorderEvent::Started { id } => FlowEvent::RecordingStarted { id: id.to_string() },
        RecorderEvent::Stopped { id } => FlowEvent::RecordingStopped { id: id.to_string() },
        RecorderEvent::Failed { id, reason } => FlowEvent::RecordingFailed {
            id: Some(id.to_string()),
            reason,
        },
        RecorderEvent::Ready {
            id,
            duration_ms,
            sha256,
            ..
        } => FlowEvent::RecordingReady {
            id: id.to_string(),
            duration_ms,
            sha256,
        },
    }
}

impl Call {
    pub(super) fn start_recording(&mut self, _now: Instant) {
        if let Err(refusal) = self.recordings.check_start() {
            let id = self.recordings.active_id().map(|i| i.to_string());
            warn!(recording = ?id, "start recording ignored: already recording");
            self.flow_event(refusal);
            return;
        }
        let meta = RecordingMeta {
            call_id: self.info.call_id.clone(),
            from: self.info.from_user.clone(),
            to: self.info.to_user.clone(),
        };
        match self.shared.recorder.start(meta, self.rec_tx.clone()) {
            Ok(spec) => {
                let id = spec.id.clone();
                // The media core starts the feed on its next tick; the writer creates the
                // files meanwhile (Started or Failed comes back on rec_tx).
                self.media_cmd(MediaCommand::StartRecording(spec));
                let shown = id.to_string();
                self.set_summary(|s| s.recording_id = Some(shown));
                self.recordings.started(id);
                // A crash from now on leaves a CDR naming this recording.
                self.write_open_cdr();
            }
            Err(e) => {
                // The recorder already sent Failed on rec_tx; the call goes on.
                warn!(error = %e, "recording could not start");
            }
        }
    }

    pub(super) fn stop_recording(&mut self, _now: Instant, requested: bool) {
        match self.recordings.stop(requested) {
            Stop::Now(id) => {
                info!(recording = %id, "recording stopped");
                // The media core ends the feed at its next tick (the file's length is the
                // wall time to then) and hands the end to the writer.
                self.media_cmd(MediaCommand::StopRecording);
                self.set_summary(|s| s.recording_id = None);
                if self.rec_tx.try_send(RecorderEvent::Stopped { id }).is_err() {
                    warn!("recorder events full: `recording stopped` not reported");
                }
            }
            Stop::Refused(ev) => {
                warn!("stop recording ignored: not recording");
                self.flow_event(ev);
            }
            Stop::Nothing => {}
        }
    }

    pub(super) fn on_recorder_event(&mut self, e: RecorderEvent) {
        if self.recordings.on_event(&e) {
            // The writer failed the active recording: stop feeding it.
            self.media_cmd(MediaCommand::StopRecording);
            self.set_summary(|s| s.recording_id = None);
        }
        match &e {
            RecorderEvent::Failed { id, reason } => {
                warn!(recording = %id, %reason, "recording failed; the call goes on");
            }
            RecorderEvent::Ready {
                id,
                duration_ms,
                sha256,
                ..
            } => {
                info!(recording = %id, duration_ms, %sha256, "recording ready");
                if let Some(i) = self.shared.integrations.as_ref() {
                    i.events.recording_ready(
                        &self.info.call_id,
                        &id.to_string(),
                        *duration_ms,
                        sha256,
                    );
                }
            }
            _ => {}
        }
        self.flow_event(flow_event(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Fake(RecordingId);
    impl Handle for Fake {
        fn id(&self) -> &RecordingId {
            &self.0
        }
    }

    fn rid() -> RecordingId {
        RecordingId::generate(chrono::Utc::now())
    }

    fn ready(id: &RecordingId) -> RecorderEvent {
        RecorderEvent::Ready {
            id: id.clone(),
            duration_ms: 1000,
            sha256: "ab".into(),
            bytes: 16044,
            overflow_frames: 0,
        }
    }

    #[test]
    fn one_recording_at_a_time_and_a_stop_needs_one() {
        let mut r = Recordings::<Fake>::default();
        assert_eq!(r.check_start(), Ok(()));
        let a = rid();
        r.started(Fake(a.clone()));
        match r.check_start() {
            Err(FlowEvent::RecordingFailed { id: None, reason }) => {
                assert!(reason.contains(a.as_str()), "{reason}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(r.stop(true), Stop::Now(Fake(a.clone())));
        assert!(matches!(
            r.stop(true),
            Stop::Refused(FlowEvent::RecordingFailed { id: None, .. })
        ));
        // The call's own stop at the end is silent.
        assert_eq!(r.stop(false), Stop::Nothing);
        assert_eq!(r.ids(), &[a.to_string()]);
    }

    #[test]
    fn a_recording_is_unfinished_until_ready_or_failed() {
        let mut r = Recordings::<Fake>::default();
        let (a, b) = (rid(), rid());
        r.started(Fake(a.clone()));
        let _ = r.stop(true);
        r.started(Fake(b.clone()));
        assert_eq!(r.unfinished(), 2);
        assert!(!r.on_event(&RecorderEvent::Stopped { id: a.clone() }));
        assert_eq!(r.unfinished(), 2);
        assert!(!r.on_event(&ready(&a)));
        assert_eq!(r.unfinished(), 1);
        // A duplicate report does not count twice.
        r.on_event(&ready(&a));
        assert_eq!(r.unfinished(), 1);
        assert_eq!(r.ids().len(), 2);
    }

    #[test]
    fn a_write_failure_ends_the_active_recording_only() {
        let mut r = Recordings::<Fake>::default();
        let (a, b) = (rid(), rid());
        r.started(Fake(a.clone()));
        let _ = r.stop(true);
        r.started(Fake(b.clone()));
        let failed = |id: &RecordingId| RecorderEvent::Failed {
            id: id.clone(),
            reason: "disk full".into(),
        };
        // The old one failing to finalize leaves the new one recording.
        assert!(!r.on_event(&failed(&a)));
        assert!(r.is_recording());
        assert!(r.on_event(&failed(&b)));
        assert!(!r.is_recording());
        assert_eq!(r.unfinished(), 0);
    }

    #[test]
    fn a_failed_start_does_not_touch_the_finalizing_count() {
        // Recorder::start failing reports Failed for an id that never started.
        let mut r = Recordings::<Fake>::default();
        let a = rid();
        r.started(Fake(a.clone()));
        let _ = r.stop(true);
        r.on_event(&RecorderEvent::Failed {
            id: rid(),
            reason: "cannot create".into(),
        });
        assert_eq!(r.unfinished(), 1, "a is still finalizing");
    }

    #[test]
    fn recorder_events_become_flow_events() {
        let a = rid();
        assert_eq!(
            flow_event(RecorderEvent::Started { id: a.clone() }),
            FlowEvent::RecordingStarted { id: a.to_string() }
        );
        assert_eq!(
            flow_event(RecorderEvent::Stopped { id: a.clone() }),
            FlowEvent::RecordingStopped { id: a.to_string() }
        );
        assert_eq!(
            flow_event(RecorderEvent::Failed {
                id: a.clone(),
                reason: "x".into()
            }),
            FlowEvent::RecordingFailed {
                id: Some(a.to_string()),
                reason: "x".into()
            }
        );
        assert_eq!(
            flow_event(ready(&a)),
            FlowEvent::RecordingReady {
                id: a.to_string(),
                duration_ms: 1000,
                sha256: "ab".into()
            }
        );
    }
}
