//! A fixed set of recogniser threads. Each `listen` takes one for its whole life; when none is
//! free it fails at once (`Busy`) rather than queue, so a loaded gateway degrades to DTMF
//! instead of delaying audio. Audio reaches the thread through a bounded [`FrameSink`] that
//! never blocks the sender: a full queue drops the frame and counts it.

use super::listen::{ListenStep, Listener, ListenerConfig};
use super::{Recognizer, SpeechError};
use crate::flow::{FlowEvent, ListenSpec, SpeechOutcome};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::{debug, warn, Span};

/// How often an idle listen wakes to check for a stop when no audio arrives.
const TICK: Duration = Duration::from_millis(20);

/// Where the media side pushes the caller's audio for a listen. Cheap to clone; `push` never
/// blocks and never allocates more than the frame it sends.
#[derive(Clone)]
pub struct FrameSink {
    tx: SyncSender<Vec<i16>>,
    dropped: Arc<AtomicU64>,
}

impl FrameSink {
    /// Queues one frame (normally 20 ms). Returns false when it was dropped (queue full) or the
    /// listen is over.
    pub fn push(&self, samples: &[i16]) -> bool {
        match self.tx.try_send(samples.to_vec()) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("voxgate_speech_frames_dropped_total").increment(1);
                false
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// Frames dropped so far because the recogniser fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// A running listen. Dropping it stops the listen (no outcome is sent after that, except one
/// that was already on its way: match events on the listen id).
pub struct ListenHandle {
    id: u64,
    sink: FrameSink,
    stop: Arc<AtomicBool>,
}

impl ListenHandle {
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The audio feed; hand a clone to whatever produces the caller's frames.
    pub fn sink(&self) -> FrameSink {
        self.sink.clone()
    }

    /// Shorthand for `sink().push(..)`.
    pub fn push(&self, samples: &[i16]) -> bool {
        self.sink.push(samples)
    }
}

impl Drop for ListenHandle {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

struct Job {
    id: u64,
    spec: ListenSpec,
    started: Instant,
    frames: Receiver<Vec<i16>>,
    stop: Arc<AtomicBool>,
    events: Box<dyn Fn(FlowEvent) + Send>,
    span: Span,
}

struct Inner {
    workers: Vec<SyncSender<Job>>,
    /// Free recogniser slots; workers push theirs back when a listen ends.
    idle: Arc<Mutex<Vec<usize>>>,
    frame_queue: usize,
    engine: &'static str,
}

/// The recogniser pool. Clone freely (shared).
#[derive(Clone)]
pub struct SpeechPool {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SpeechPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpeechPool")
            .field("size", &self.size())
            .field("engine", &self.inner.engine)
            .finish()
    }
}

fn lock(idle: &Mutex<Vec<usize>>) -> std::sync::MutexGuard<'_, Vec<usize>> {
    // A panic while holding this lock cannot leave the list inconsistent (push/pop only).
    idle.lock().unwrap_or_else(|p| p.into_inner())
}

impl SpeechPool {
    /// Starts one thread per recogniser. `frame_queue` bounds the audio queued per listen.
    pub fn new(
        recognizers: Vec<Box<dyn Recognizer>>,
        cfg: ListenerConfig,
        frame_queue: usize,
    ) -> Result<Self, SpeechError> {
        let Some(first) = recognizers.first() else {
            return Err(SpeechError::NotConfigured);
        };
        let engine = first.name();
        let idle = Arc::new(Mutex::new(Vec::new()));
        let mut workers = Vec::with_capacity(recognizers.len());
        for (index, rec) in recognizers.into_iter().enumerate() {
            let (tx, rx) = mpsc::sync_channel::<Job>(1);
            let cfg = cfg.clone();
            let slots = idle.clone();
            std::thread::Builder::new()
                .name(format!("speech-{index}"))
                .spawn(move || worker(index, rec, rx, cfg, slots))
                .map_err(|e| SpeechError::Engine(format!("cannot start a thread: {e}")))?;
            workers.push(tx);
            lock(&idle).push(index);
        }
        Ok(SpeechPool {
            inner: Arc::new(Inner {
                workers,
                idle,
                frame_queue: frame_queue.max(1),
                engine,
            }),
        })
    }

    pub fn size(&self) -> usize {
        self.inner.workers.len()
    }

    pub fn engine(&self) -> &'static str {
        self.inner.engine
    }

    /// Recognisers free right now.
    pub fn idle(&self) -> usize {
        lock(&self.inner.idle).len()
    }

    /// Starts a listen on a free recogniser. Its `SpeechStarted` / `Speech` events (with `id`)
    /// are handed to `events` on the recogniser thread (it must not block). Fails at once with
    /// `Busy` when every recogniser is taken.
    pub fn listen(
        &self,
        id: u64,
        spec: ListenSpec,
        events: Box<dyn Fn(FlowEvent) + Send>,
    ) -> Result<ListenHandle, SpeechError> {
        let Some(slot) = lock(&self.inner.idle).pop() else {
            metrics::counter!("voxgate_speech_busy_total").increment(1);
            return Err(SpeechError::Busy(self.size()));
        };
        let (tx, rx) = mpsc::sync_channel(self.inner.frame_queue);
        let stop = Arc::new(AtomicBool::new(false));
        let job = Job {
            id,
            spec,
            started: Instant::now(),
            frames: rx,
            stop: stop.clone(),
            events,
            span: Span::current(),
        };
        if self.inner.workers[slot].try_send(job).is_err() {
            // The worker is gone (it cannot be busy: it was idle). The slot is not reused.
            warn!(slot, "speech worker is not running");
            return Err(SpeechError::Engine("recogniser thread stopped".into()));
        }
        metrics::gauge!("voxgate_speech_recognisers_busy").increment(1.0);
        Ok(ListenHandle {
            id,
            sink: FrameSink {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            stop,
        })
    }
}

fn worker(
    index: usize,
    mut rec: Box<dyn Recognizer>,
    jobs: Receiver<Job>,
    cfg: ListenerConfig,
    idle: Arc<Mutex<Vec<usize>>>,
) {
    while let Ok(job) = jobs.recv() {
        run_job(rec.as_mut(), job, &cfg);
        lock(&idle).push(index);
        metrics::gauge!("voxgate_speech_recognisers_busy").decrement(1.0);
    }
}

/// One listen on this thread: audio in until an outcome, a stop, or the deadline.
fn run_job(rec: &mut dyn Recognizer, job: Job, cfg: &ListenerConfig) {
    let _enter = job.span.enter();
    let id = job.id;
    let send = |ev: FlowEvent| (job.events)(ev);
    let mut listener = match Listener::start(job.spec, cfg.clone(), job.started, rec) {
        Ok(l) => l,
        Err(outcome) => {
            send(FlowEvent::Speech { id, outcome });
            return;
        }
    };
    let t0 = Instant::now();
    loop {
        if job.stop.load(Ordering::Relaxed) {
            listener.stop(rec);
            debug!(id, "listen stopped");
            return;
        }
        let now = Instant::now();
        let wait = listener
            .deadline()
            .map(|d| d.saturating_duration_since(now))
            .unwrap_or(TICK)
            .min(TICK);
        let steps = match job.frames.recv_timeout(wait) {
            Ok(frame) => listener.push(&frame, Instant::now(), rec),
            Err(RecvTimeoutError::Timeout) => {
                listener.poll(Instant::now(), rec).into_iter().collect()
            }
            Err(RecvTimeoutError::Disconnected) => {
                // Every sink is gone: the call ended or stopped listening.
                listener.stop(rec);
                return;
            }
        };
        for step in steps {
            match step {
                ListenStep::SpeechStarted => send(FlowEvent::SpeechStarted { id }),
                ListenStep::Done(outcome) => {
                    let kind = match &outcome {
                        SpeechOutcome::Heard { .. } => "heard",
                        SpeechOutcome::NoMatch { .. } => "no_match",
                        SpeechOutcome::Timeout => "timeout",
                        SpeechOutcome::Error(_) => "error",
                    };
                    metrics::counter!("voxgate_speech_listens_total", "outcome" => kind)
                        .increment(1);
                    debug!(
                        id,
                        ?outcome,
                        busy_ms = t0.elapsed().as_millis() as u64,
                        "listen done"
                    );
                    if !job.stop.load(Ordering::Relaxed) {
                        send(FlowEvent::Speech { id, outcome });
                    }
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::ListenMode;
    use crate::speech::{Hypothesis, FRAME_SAMPLES};
    use std::sync::mpsc as std_mpsc;

    /// Hears "yes" in whatever it is fed.
    struct Yes;
    impl Recognizer for Yes {
        fn name(&self) -> &'static str {
            "yes"
        }
        fn begin(&mut self, _: &ListenMode) -> Result<(), SpeechError> {
            Ok(())
        }
        fn feed(&mut self, _: &[i16]) -> Result<(), SpeechError> {
            Ok(())
        }
        fn finish(&mut self) -> Result<Hypothesis, SpeechError> {
            Ok(Hypothesis {
                text: "yes".into(),
                confidence: 0.9,
            })
        }
        fn abort(&mut self) {}
    }

    fn spec(timeout_ms: u64) -> ListenSpec {
        ListenSpec {
            mode: ListenMode::Grammar(vec!["yes".into()]),
            timeout: Duration::from_millis(timeout_ms),
            max_speech: Duration::from_secs(5),
            barge_in: false,
        }
    }

    fn events() -> (Box<dyn Fn(FlowEvent) + Send>, std_mpsc::Receiver<FlowEvent>) {
        let (tx, rx) = std_mpsc::channel();
        (
            Box::new(move |ev| {
                tx.send(ev).ok();
            }),
            rx,
        )
    }

    fn pool(n: usize, queue: usize) -> SpeechPool {
        let recs: Vec<Box<dyn Recognizer>> = (0..n).map(|_| Box::new(Yes) as Box<_>).collect();
        SpeechPool::new(recs, ListenerConfig::default(), queue).unwrap()
    }

    #[test]
    fn busy_pool_fails_at_once_and_slots_come_back() {
        let pool = pool(1, 50);
        let (tx, rx) = events();
        let first = pool.listen(1, spec(100), tx).unwrap();
        assert_eq!(pool.idle(), 0);
        let (tx2, _rx2) = events();
        assert_eq!(
            pool.listen(2, spec(100), tx2).err(),
            Some(SpeechError::Busy(1))
        );
        // The first times out (no audio) and frees its recogniser.
        let ev = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            ev,
            FlowEvent::Speech {
                id: 1,
                outcome: SpeechOutcome::Timeout
            }
        );
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        while pool.idle() == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(pool.idle(), 1);
    }

    #[test]
    fn speech_through_the_sink_is_heard_and_stop_is_silent() {
        let pool = pool(2, 500);
        let (tx, rx) = events();
        let h = pool.listen(7, spec(5000), tx).unwrap();
        let sink = h.sink();
        let loud: Vec<i16> = (0..FRAME_SAMPLES)
            .map(|i| (9000.0 * (i as f64 * 0.4).sin()) as i16)
            .collect();
        for _ in 0..20 {
            assert!(sink.push(&loud));
        }
        for _ in 0..40 {
            assert!(sink.push(&[0; FRAME_SAMPLES]));
        }
        let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(first, FlowEvent::SpeechStarted { id: 7 });
        let second = rx.recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(
            second,
            FlowEvent::Speech {
                id: 7,
                outcome: SpeechOutcome::Heard {
                    text: "yes".into(),
                    confidence: 0.9
                }
            }
        );
        // A stopped listen says nothing more and its sink goes dead.
        let (tx, rx) = events();
        let h2 = pool.listen(8, spec(200), tx).unwrap();
        let sink2 = h2.sink();
        drop(h2);
        assert!(rx.recv_timeout(Duration::from_millis(600)).is_err());
        let deadline = Instant::now() + Duration::from_secs(5);
        while sink2.push(&[0; FRAME_SAMPLES]) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!sink2.push(&[0; FRAME_SAMPLES]));
        drop(h);
    }

    #[test]
    fn a_full_queue_drops_and_counts() {
        // No worker thread drains this sink: a bare channel of capacity 2.
        let (tx, _rx) = mpsc::sync_channel(2);
        let sink = FrameSink {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        assert!(sink.push(&[0; 160]));
        assert!(sink.push(&[0; 160]));
        assert!(!sink.push(&[0; 160]));
        assert!(!sink.push(&[0; 160]));
        assert_eq!(sink.dropped(), 2);
    }
}
