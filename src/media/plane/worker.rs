//! One media worker: a dedicated OS thread that owns many calls' sockets and media cores
//! and serves them all on one 20 ms tick: apply the call tasks' commands, read what
//! arrived (epoll + recvmmsg), run every core, send what is due (sendmmsg), hand events to
//! the call tasks. It sleeps between ticks whatever the traffic, so its wake-ups do not
//! grow with calls or packets.

use std::collections::HashMap;
use std::net::UdpSocket;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::sync::mpsc;
use tracing::{debug, warn};

use super::io::{raise_priority, set_timer_slack, Poller, RecvBatch, SendBatch};
use super::schedule::TickSchedule;
use crate::media::core::{Leg, MediaCommand, MediaCore, MediaEvent, MediaStats, Outbox};
use crate::media::recorder::PendingJob;

/// The tick.
pub const TICK: Duration = Duration::from_millis(20);
/// How late the workers wake for their ticks (a histogram, seconds).
pub const TICK_LATENESS: &str = "voxgate_media_tick_lateness_seconds";
/// Ticks a worker missed altogether (it was not scheduled for a whole tick or more).
const TICKS_SKIPPED: &str = "voxgate_media_ticks_skipped_total";
/// The histogram's buckets: up to 1 ms is on time for 20 ms audio; beyond 5 ms a listener
/// may hear it (the peer's jitter buffer absorbs only so much).
pub const TICK_LATENESS_BUCKETS: [f64; 8] = [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1];

/// What a call task (through its `MediaHandle`) asks of the worker.
#[derive(Debug)]
pub(crate) enum WorkerMsg {
    Attach {
        key: u64,
        rtp: UdpSocket,
        rtcp: UdpSocket,
        events: mpsc::Sender<MediaEvent>,
        stats: Arc<MediaStats>,
        /// Held by the call's handle too: when only the worker holds it, the call is over.
        lease: Arc<()>,
        /// The call's span, for the log lines of its media (see `MediaCore::new`).
        span: tracing::Span,
    },
    AttachFar {
        key: u64,
        rtp: UdpSocket,
        rtcp: UdpSocket,
    },
    DetachFar {
        key: u64,
    },
    Command {
        key: u64,
        cmd: MediaCommand,
    },
}

/// Socket slots of a call, in epoll-token order.
const CALLER_RTP: u64 = 0;
const CALLER_RTCP: u64 = 1;
const FAR_RTP: u64 = 2;
const FAR_RTCP: u64 = 3;

struct CallMedia {
    core: MediaCore,
    socks: [Option<UdpSocket>; 4],
    events: mpsc::Sender<MediaEvent>,
    lease: Arc<()>,
    events_dropped: u64,
}

impl CallMedia {
    fn fd(&self, slot: u64) -> Option<RawFd> {
        self.socks[slot as usize].as_ref().map(|s| s.as_raw_fd())
    }
}

/// The sending side of a tick: datagrams go into the worker's batch, by socket.
struct TickOut<'a> {
    batch: &'a mut SendBatch,
    fds: [Option<RawFd>; 4],
}

impl Outbox for TickOut<'_> {
    fn send(&mut self, leg: Leg, rtcp: bool, dest: std::net::SocketAddr, payload: &[u8]) {
        let slot = match (leg, rtcp) {
            (Leg::Caller, false) => CALLER_RTP,
            (Leg::Caller, true) => CALLER_RTCP,
            (Leg::Far, false) => FAR_RTP,
            (Leg::Far, true) => FAR_RTCP,
        };
        if let Some(fd) = self.fds[slot as usize] {
            self.batch.push(fd, dest, payload);
        }
    }
}

pub(crate) struct Worker {
    index: usize,
    rx: mpsc::Receiver<WorkerMsg>,
    calls: HashMap<u64, CallMedia>,
    load: Arc<AtomicUsize>,
    poller: Poller,
    recv: RecvBatch,
    send: SendBatch,
    ready: Vec<u64>,
    pending_jobs: Vec<PendingJob>,
}

impl Worker {
    /// Built on the worker's own thread (the IO batches hold raw pointers).
    pub(crate) fn new(
        index: usize,
        rx: mpsc::Receiver<WorkerMsg>,
        load: Arc<AtomicUsize>,
        poller: Poller,
    ) -> Self {
        Worker {
            index,
            rx,
            calls: HashMap::new(),
            load,
            poller,
            recv: RecvBatch::new(16),
            send: SendBatch::default(),
            ready: Vec::with_capacity(1024),
            pending_jobs: Vec::new(),
        }
    }

    /// The thread body: ticks on the grid that starts at `first_tick` until every handle to
    /// the worker is gone.
    pub(crate) fn run(mut self, realtime: bool, first_tick: Instant) {
        set_timer_slack(1_000);
        let priority = if realtime {
            raise_priority()
        } else {
            "default"
        };
        tracing::info!(worker = self.index, priority, "media worker started");
        let mut schedule = TickSchedule::new(first_tick, TICK);
        loop {
            let now = Instant::now();
            let deadline = schedule.deadline();
            if deadline > now {
                std::thread::sleep(deadline - now);
            }
            let now = Instant::now();
            let tick = schedule.wake(now);
            // Egress pacing is the tick period plus this lateness (docs/metrics.md, "Media").
            metrics::histogram!(TICK_LATENESS).record(tick.late.as_secs_f64());
            if tick.skipped > 0 {
                metrics::counter!(TICKS_SKIPPED).increment(tick.skipped);
                debug!(
                    worker = self.index,
                    skipped = tick.skipped,
                    "media worker stalled; skipping ahead"
                );
            }
            // Commands apply at the tick instant (send clocks snap to the grid), which is
            // at most one tick before `now`; the wall clock is read for the same instant.
            let wall = Utc::now()
                - chrono::Duration::from_std(now.saturating_duration_since(tick.at))
                    .unwrap_or_default();
            if !self.commands(tick.at, wall) {
                break;
            }
            self.receive(now);
            self.tick(now);
        }
        debug!(worker = self.index, "media worker stopped");
    }

    /// Applies what the call tasks asked; false when the plane is gone and no call is left.
    fn commands(&mut self, tick_at: Instant, wall: chrono::DateTime<Utc>) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(msg) => self.apply(msg, tick_at, wall),
                Err(mpsc::error::TryRecvError::Empty) => return true,
                Err(mpsc::error::TryRecvError::Disconnected) => return !self.calls.is_empty(),
            }
        }
    }

    fn apply(&mut self, msg: WorkerMsg, tick_at: Instant, wall: chrono::DateTime<Utc>) {
        match msg {
            WorkerMsg::Attach {
                key,
                rtp,
                rtcp,
                events,
                stats,
                lease,
                span,
            } => {
                let mut call = CallMedia {
                    core: MediaCore::new(stats, span),
                    socks: [Some(rtp), Some(rtcp), None, None],
                    events,
                    lease,
                    events_dropped: 0,
                };
                self.watch(key, &mut call, CALLER_RTP);
                self.watch(key, &mut call, CALLER_RTCP);
                self.calls.insert(key, call);
            }
            WorkerMsg::AttachFar { key, rtp, rtcp } => {
                if let Some(mut call) = self.calls.remove(&key) {
                    self.unwatch(&mut call, FAR_RTP);
                    self.unwatch(&mut call, FAR_RTCP);
                    call.socks[FAR_RTP as usize] = Some(rtp);
                    call.socks[FAR_RTCP as usize] = Some(rtcp);
                    self.watch(key, &mut call, FAR_RTP);
                    self.watch(key, &mut call, FAR_RTCP);
                    self.calls.insert(key, call);
                }
            }
            WorkerMsg::DetachFar { key } => {
                if let Some(mut call) = self.calls.remove(&key) {
                    call.core.command(MediaCommand::EndFar, tick_at, wall);
                    self.unwatch(&mut call, FAR_RTP);
                    self.unwatch(&mut call, FAR_RTCP);
                    self.calls.insert(key, call);
                }
            }
            WorkerMsg::Command { key, cmd } => {
                if let Some(call) = self.calls.get_mut(&key) {
                    call.core.command(cmd, tick_at, wall);
                }
            }
        }
    }

    fn watch(&self, key: u64, call: &mut CallMedia, slot: u64) {
        if let Some(fd) = call.fd(slot) {
            if let Err(e) = self.poller.add(fd, key << 2 | slot) {
                warn!(error = %e, "media worker cannot watch a socket; its packets are lost");
            }
        }
    }

    fn unwatch(&self, call: &mut CallMedia, slot: u64) {
        if let Some(s) = call.socks[slot as usize].take() {
            self.poller.remove(s.as_raw_fd());
        }
    }

    /// Reads every socket that has data, feeding each datagram to its call's core.
    fn receive(&mut self, now: Instant) {
        loop {
            let n = match self.poller.poll(&mut self.ready) {
                Ok(n) => n,
                Err(e) => {
                    warn!(error = %e, "epoll_wait failed");
                    return;
                }
            };
            for &token in &self.ready {
                let (key, slot) = (token >> 2, token & 3);
                let Some(call) = self.calls.get_mut(&key) else {
                    continue;
                };
                let Some(fd) = call.fd(slot) else { continue };
                let leg = if slot < FAR_RTP {
                    Leg::Caller
                } else {
                    Leg::Far
                };
                let rtcp = slot == CALLER_RTCP || slot == FAR_RTCP;
                loop {
                    let got = match self.recv.recv(fd) {
                        Ok(n) => n,
                        Err(e) => {
                            debug!(error = %e, "recvmmsg failed");
                            0
                        }
                    };
                    for i in 0..got {
                        let (bytes, from) = self.recv.get(i);
                        if let Some(from) = from {
                            call.core.handle_datagram(leg, rtcp, bytes, from, now);
                        }
                    }
                    if got < 16 {
                        break;
                    }
                }
            }
            if n < self.poller.capacity() {
                return;
            }
        }
    }

    /// Runs every core, sends the tick's datagrams, hands out events, drops ended calls.
    fn tick(&mut self, now: Instant) {
        self.pending_jobs = std::mem::take(&mut self.pending_jobs)
            .into_iter()
            .filter_map(PendingJob::retry)
            .collect();
        let mut ended = Vec::new();
        for (&key, call) in self.calls.iter_mut() {
            // Only the worker holds the lease when the call's handle is gone.
            if Arc::strong_count(&call.lease) == 1 {
                ended.push(key);
                continue;
            }
            let mut out = TickOut {
                batch: &mut self.send,
                fds: [
                    call.fd(CALLER_RTP),
                    call.fd(CALLER_RTCP),
                    call.fd(FAR_RTP),
                    call.fd(FAR_RTCP),
                ],
            };
            call.core.on_tick(now, &mut out);
            while let Some(ev) = call.core.poll_event() {
                if call.events.try_send(ev).is_err() {
                    call.events_dropped += 1;
                    if call.events_dropped.is_power_of_two() {
                        warn!(
                            parent: call.core.span(),
                            dropped = call.events_dropped,
                            "call task not reading media events"
                        );
                    }
                }
            }
        }
        let errors = self.send.errors;
        self.send.flush();
        if self.send.errors > errors {
            debug!(errors = self.send.errors - errors, "RTP sends refused");
        }
        for key in ended {
            if let Some(mut call) = self.calls.remove(&key) {
                self.pending_jobs.extend(call.core.close(now));
                for slot in 0..4 {
                    self.unwatch(&mut call, slot);
                }
                self.load.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
