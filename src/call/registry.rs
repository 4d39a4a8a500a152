//! The set of live calls: admission (capacity, shutdown), a summary per call for
//! `GET /v1/calls`, and a control channel to each call task.

use crate::sip::{Admission, Reservation};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, Notify};

/// What an operator or the gateway can ask of a running call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Control {
    Pause,
    Resume,
    /// Graceful shutdown is over: end the call now.
    Hangup,
    /// An operator ends the call (API / console).
    OperatorHangup,
}

/// The public view of a call.
#[derive(Debug, Clone, Serialize)]
pub struct CallSummary {
    pub call_id: String,
    pub from: String,
    pub to: String,
    /// RFC 3339.
    pub started_at: String,
    pub answered_at: Option<String>,
    /// offered | answered | confirmed | transferring | bridged
    pub state: String,
    pub codec: Option<String>,
    pub recording_id: Option<String>,
    pub paused: bool,
}

struct Entry {
    summary: CallSummary,
    control: mpsc::UnboundedSender<Control>,
}

/// Shared registry of live calls.
pub struct Registry {
    calls: Mutex<HashMap<String, Entry>>,
    max_calls: usize,
    /// Slots reserved by admitted INVITEs, held until their calls end (atomic admission).
    slots: Arc<AtomicUsize>,
    shutting_down: AtomicBool,
    emptied: Notify,
    /// BYEs (and far-leg CANCELs) sent and not yet answered or timed out: shutdown waits for
    /// them so their retransmissions (Timer E) still go out.
    hangups: Arc<AtomicUsize>,
    hangups_done: Arc<Notify>,
}

/// Held while a BYE or CANCEL transaction runs (see [`Registry::hangup_started`]).
pub struct HangupInFlight {
    count: Arc<AtomicUsize>,
    done: Arc<Notify>,
}

impl Drop for HangupInFlight {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.done.notify_waiters();
        }
    }
}

impl Registry {
    pub fn new(max_calls: usize) -> Arc<Self> {
        Arc::new(Registry {
            calls: Mutex::new(HashMap::new()),
            max_calls,
            slots: Arc::new(AtomicUsize::new(0)),
            shutting_down: AtomicBool::new(false),
            emptied: Notify::new(),
            hangups: Arc::new(AtomicUsize::new(0)),
            hangups_done: Arc::new(Notify::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic elsewhere while holding the lock must not take the registry down with it.
        self.calls.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a call; returns the receiver for its control messages.
    pub fn insert(&self, summary: CallSummary) -> mpsc::UnboundedReceiver<Control> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().insert(
            summary.call_id.clone(),
            Entry {
                summary,
                control: tx,
            },
        );
        metrics::gauge!("voxgate_calls_active").set(self.len() as f64);
        rx
    }

    /// Changes a call's summary in place.
    pub fn update(&self, call_id: &str, f: impl FnOnce(&mut CallSummary)) {
        if let Some(e) = self.lock().get_mut(call_id) {
            f(&mut e.summary);
        }
    }

    pub fn remove(&self, call_id: &str) {
        let empty = {
            let mut calls = self.lock();
            calls.remove(call_id);
            calls.is_empty()
        };
        metrics::gauge!("voxgate_calls_active").set(self.len() as f64);
        if empty {
            self.emptied.notify_waiters();
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, call_id: &str) -> bool {
        self.lock().contains_key(call_id)
    }

    pub fn summaries(&self) -> Vec<CallSummary> {
        let mut v: Vec<CallSummary> = self.lock().values().map(|e| e.summary.clone()).collect();
        v.sort_by(|a, b| a.started_at.cmp(&b.started_at));
        v
    }

    /// Sends a control message to one call. False when there is no such call.
    pub fn control(&self, call_id: &str, c: Control) -> bool {
        match self.lock().get(call_id) {
            Some(e) => e.control.send(c).is_ok(),
            None => false,
        }
    }

    /// Sends a control message to every call.
    pub fn control_all(&self, c: Control) {
        for e in self.lock().values() {
            e.control.send(c.clone()).ok();
        }
    }

    /// From now on new INVITEs get 503.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Resolves once no call is left.
    pub async fn wait_empty(&self) {
        loop {
            let notified = self.emptied.notified();
            if self.is_empty() {
                return;
            }
            notified.await;
        }
    }
}

impl Registry {
    /// A BYE or CANCEL transaction starts; hold the guard until it ends.
    pub fn hangup_started(&self) -> HangupInFlight {
        self.hangups.fetch_add(1, Ordering::SeqCst);
        HangupInFlight {
            count: self.hangups.clone(),
            done: self.hangups_done.clone(),
        }
    }

    /// BYE / CANCEL transactions still running.
    pub fn hangups_in_flight(&self) -> usize {
        self.hangups.load(Ordering::SeqCst)
    }

    /// Resolves once no BYE or CANCEL transaction is running.
    pub async fn wait_hangups(&self) {
        loop {
            let notified = self.hangups_done.notified();
            if self.hangups_in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Admission for Registry {
    fn admit(&self) -> Result<Reservation, (u16, u32)> {
        if self.is_shutting_down() {
            metrics::counter!("voxgate_invites_refused_total", "reason" => "shutdown").increment(1);
            return Err((503, 30));
        }
        // Reserve in one atomic step: INVITEs that arrive together each see the others.
        let reserved = self
            .slots
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.max_calls).then_some(n + 1)
            });
        if reserved.is_err() {
            metrics::counter!("voxgate_invites_refused_total", "reason" => "capacity").increment(1);
            return Err((503, 5));
        }
        let slots = self.slots.clone();
        Ok(Reservation::new(move || {
            slots.fetch_sub(1, Ordering::SeqCst);
        }))
    }

    fn draining(&self) -> bool {
        self.is_shutting_down()
    }
}

impl crate::api::CallsView for Registry {
    fn calls(&self) -> Vec<serde_json::Value> {
        self.summaries()
            .into_iter()
            .filter_map(|s| serde_json::to_value(s).ok())
            .collect()
    }

    fn set_paused(&self, call_id: &str, paused: bool) -> bool {
        self.control(
            call_id,
            if paused {
                Control::Pause
            } else {
                Control::Resume
            },
        )
    }

    fn hangup(&self, call_id: &str) -> bool {
        self.control(call_id, Control::OperatorHangup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(id: &str) -> CallSummary {
        CallSummary {
            call_id: id.into(),
            from: "a".into(),
            to: "b".into(),
            started_at: "2026-01-01T00:00:00Z".into(),
            answered_at: None,
            state: "offered".into(),
            codec: None,
            recording_id: None,
            paused: false,
        }
    }

    #[tokio::test]
    async fn hangups_in_flight_are_counted_until_dropped() {
        let r = Registry::new(2);
        r.wait_hangups().await;
        let a = r.hangup_started();
        let b = r.hangup_started();
        assert_eq!(r.hangups_in_flight(), 2);
        drop(a);
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(50), r.wait_hangups());
        assert!(waiting.await.is_err(), "one BYE still runs");
        let r2 = r.clone();
        let waiter = tokio::spawn(async move { r2.wait_hangups().await });
        tokio::task::yield_now().await;
        drop(b);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiter)
            .await
            .expect("woken when the last BYE ends")
            .expect("waiter task");
        assert_eq!(r.hangups_in_flight(), 0);
    }

    #[test]
    fn capacity_and_shutdown_admission() {
        let r = Registry::new(2);
        let a = r.admit().expect("first slot");
        let _b = r.admit().expect("second slot");
        // Reserved slots count before any call is in the registry (INVITEs arriving together).
        assert_eq!(r.admit().err(), Some((503, 5)));
        drop(a);
        let _c = r.admit().expect("a freed slot is reusable");
        assert!(!r.draining(), "full is not draining: OPTIONS stay 200");
        r.begin_shutdown();
        assert_eq!(r.admit().err(), Some((503, 30)));
        assert!(r.draining(), "OPTIONS answer 503 from now on");
    }

    #[test]
    fn simultaneous_admissions_never_exceed_the_limit() {
        let r = Registry::new(5);
        let granted: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8).map(|_| s.spawn(|| r.admit().ok())).collect();
            hs.into_iter().filter_map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(granted.len(), 5);
    }

    #[test]
    fn control_reaches_the_call() {
        let r = Registry::new(4);
        let mut rx = r.insert(summary("c1"));
        assert!(r.control("c1", Control::Pause));
        assert!(!r.control("nope", Control::Pause));
        assert_eq!(rx.try_recv().unwrap(), Control::Pause);
    }

    #[tokio::test]
    async fn wait_empty_resolves_when_the_last_call_leaves() {
        let r = Registry::new(4);
        let _rx = r.insert(summary("c1"));
        let r2 = r.clone();
        let h = tokio::spawn(async move { r2.wait_empty().await });
        tokio::task::yield_now().await;
        r.remove("c1");
        h.await.unwrap();
    }
}
