//! The media plane: a fixed number of media workers (dedicated OS threads, at most one per
//! core), each serving many calls on one 20 ms tick (see [`worker`]). A call task holds a
//! [`MediaHandle`]: it sends [`MediaCommand`]s through a bounded queue (applied at the
//! worker's next tick), receives [`MediaEvent`]s on a bounded channel, reads counters
//! without waking anyone, and may open audio [`Tap`]s. The task is never woken per packet.
//!
//! Dropping the handle detaches the call: the worker notices at its next tick, ends the
//! recording feed and closes the sockets.

pub mod io;
pub mod schedule;
mod worker;

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;

use super::core::{AudioFrame, MediaCommand, MediaEvent, MediaStats, TapSender};
use worker::{Worker, WorkerMsg};
pub use worker::{TICK, TICK_LATENESS, TICK_LATENESS_BUCKETS};

/// Commands queued per worker at most (all its calls together).
pub const WORKER_QUEUE: usize = 16_384;
/// Media events queued per call at most.
pub const EVENT_QUEUE: usize = 256;

/// Why a command could not be handed to the media worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MediaError {
    #[error("the media worker's queue is full")]
    Busy,
    #[error("the media worker has stopped")]
    Gone,
}

struct WorkerRef {
    tx: mpsc::Sender<WorkerMsg>,
    load: Arc<AtomicUsize>,
}

/// The media workers. One per process, shared by every call.
pub struct MediaPlane {
    workers: Vec<WorkerRef>,
    next_key: AtomicU64,
}

impl MediaPlane {
    /// Starts `workers` workers (0: one per core), never more than the cores; `realtime`
    /// asks for real-time scheduling for them (see [`io::raise_priority`]).
    pub fn start(workers: usize, realtime: bool) -> std::io::Result<Self> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let n = if workers == 0 {
            cores
        } else {
            workers.min(cores)
        }
        .max(1);
        let mut refs = Vec::with_capacity(n);
        let epoch = std::time::Instant::now();
        for index in 0..n {
            // The workers' ticks are spread over the 20 ms rather than all at once, so their
            // bursts of work do not compete for the cores (and with the rest of the process).
            let first_tick = epoch + TICK * index as u32 / n as u32;
            let (tx, rx) = mpsc::channel(WORKER_QUEUE);
            let load = Arc::new(AtomicUsize::new(0));
            let poller = io::Poller::new(1024)?;
            let l = load.clone();
            std::thread::Builder::new()
                .name(format!("voxgate-media-{index}"))
                .spawn(move || Worker::new(index, rx, l, poller).run(realtime, first_tick))?;
            refs.push(WorkerRef { tx, load });
        }
        tracing::info!(workers = n, "media plane started");
        Ok(MediaPlane {
            workers: refs,
            next_key: AtomicU64::new(1),
        })
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }

    /// Calls attached now, over all workers.
    pub fn calls(&self) -> usize {
        self.workers
            .iter()
            .map(|w| w.load.load(Ordering::Relaxed))
            .sum()
    }

    /// Hands a call's RTP/RTCP sockets to the least-loaded worker. `span` is the call's: the
    /// worker's log lines about this call's media carry it (and so the Call-ID).
    pub fn attach(
        &self,
        rtp: UdpSocket,
        rtcp: UdpSocket,
        span: tracing::Span,
    ) -> Result<(MediaHandle, mpsc::Receiver<MediaEvent>), MediaError> {
        let w = self
            .workers
            .iter()
            .min_by_key(|w| w.load.load(Ordering::Relaxed))
            .ok_or(MediaError::Gone)?;
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        let (events, events_rx) = mpsc::channel(EVENT_QUEUE);
        let stats = Arc::new(MediaStats::default());
        let lease = Arc::new(());
        let msg = WorkerMsg::Attach {
            key,
            rtp,
            rtcp,
            events,
            stats: stats.clone(),
            lease: lease.clone(),
            span,
        };
        w.tx.try_send(msg).map_err(map_err)?;
        w.load.fetch_add(1, Ordering::Relaxed);
        Ok((
            MediaHandle {
                key,
                tx: w.tx.clone(),
                stats,
                next_tap: 1,
                _lease: lease,
            },
            events_rx,
        ))
    }
}

fn map_err<T>(e: mpsc::error::TrySendError<T>) -> MediaError {
    match e {
        mpsc::error::TrySendError::Full(_) => MediaError::Busy,
        mpsc::error::TrySendError::Closed(_) => MediaError::Gone,
    }
}

/// A call's end of its media (see the module docs).
pub struct MediaHandle {
    key: u64,
    tx: mpsc::Sender<WorkerMsg>,
    stats: Arc<MediaStats>,
    next_tap: u64,
    _lease: Arc<()>,
}

/// A tap of the caller's audio: 20 ms frames, at most `capacity` waiting; when full, frames
/// are dropped and counted in `dropped`.
pub struct Tap {
    pub id: u64,
    pub frames: mpsc::Receiver<AudioFrame>,
    pub dropped: Arc<AtomicU64>,
}

impl MediaHandle {
    /// Queues a command for the next tick. Never waits.
    pub fn send(&self, cmd: MediaCommand) -> Result<(), MediaError> {
        self.tx
            .try_send(WorkerMsg::Command { key: self.key, cmd })
            .map_err(map_err)
    }

    /// The far leg's sockets (a bridged forward).
    pub fn attach_far(&self, rtp: UdpSocket, rtcp: UdpSocket) -> Result<(), MediaError> {
        self.tx
            .try_send(WorkerMsg::AttachFar {
                key: self.key,
                rtp,
                rtcp,
            })
            .map_err(map_err)
    }

    /// Ends the far leg's media and closes its sockets.
    pub fn detach_far(&self) -> Result<(), MediaError> {
        self.tx
            .try_send(WorkerMsg::DetachFar { key: self.key })
            .map_err(map_err)
    }

    /// Opens a tap of the caller's audio holding at most `capacity` frames.
    pub fn open_tap(&mut self, capacity: usize) -> Result<Tap, MediaError> {
        let id = self.next_tap;
        self.next_tap += 1;
        let (tx, frames) = mpsc::channel(capacity.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        self.send(MediaCommand::OpenTap(TapSender::new(
            id,
            tx,
            dropped.clone(),
        )))?;
        Ok(Tap {
            id,
            frames,
            dropped,
        })
    }

    pub fn close_tap(&self, id: u64) -> Result<(), MediaError> {
        self.send(MediaCommand::CloseTap(id))
    }

    /// The caller leg's counters as of the last tick.
    pub fn stats(&self) -> &MediaStats {
        &self.stats
    }
}
