//! The circuit breaker: stop calling a dependency that is failing, probe it, resume.
//!
//! [`state`] is the pure state machine (no clock of its own, no I/O). [`BreakerHandle`] shares
//! one machine between everything that calls the same dependency and reports its state
//! changes through a `tokio::sync::watch` channel ([`BreakerHandle::subscribe`]). What counts
//! as a failure is the user's to say (the call client's breaker layer counts unhealthy error
//! kinds, see `tabgrab_call::breaker`; a consumer counts transient handler errors and
//! panics, see `tabgrab::event::subscription`).

pub mod state;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;

pub use self::state::{BreakerConfig, BreakerCore, CircuitState, Outcome, Ticket};

/// The shared state of one breaker: the machine and the channel that reports its changes.
#[derive(Debug)]
struct Shared {
    core: Mutex<BreakerCore>,
    changes: watch::Sender<CircuitState>,
    /// State changes so far, by the state changed to (closed, open, half-open).
    transitions: [AtomicU64; 3],
}

/// How often a breaker changed state, by the state it changed to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    /// Changes to closed (a probe succeeded).
    pub closed: u64,
    /// Changes to open (failures crossed the threshold, or a probe failed).
    pub open: u64,
    /// Changes to half-open (the open duration ended and a probe was admitted).
    pub half_open: u64,
}

/// A handle on a breaker: its state and its changes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl From<BreakerConfig> for BreakerHandle {
    fn from(config: BreakerConfig) -> BreakerHandle {
        BreakerHandle::new(config)
    }
}

impl BreakerHandle {
    /// A closed breaker with `config`.
    pub fn new(config: BreakerConfig) -> BreakerHandle {
        let (changes, _) = watch::channel(CircuitState::Closed);
        BreakerHandle {
            shared: Arc::new(Shared {
                core: Mutex::new(BreakerCore::new(config)),
                changes,
                transitions: Default::default(),
            }),
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.lock().state()
    }

    /// How often the breaker changed state so far.
    pub fn transitions(&self) -> Transitions {
        let [closed, open, half_open] = &self.shared.transitions;
        Transitions {
            closed: closed.load(Ordering::Relaxed),
            open: open.load(Ordering::Relaxed),
            half_open: half_open.load(Ordering::Relaxed),
        }
    }

    /// Reports the breaker as metrics, for a component's telemetry source: its state (0
    /// closed, 1 half-open, 2 open) and its transitions by the state changed to.
    pub fn sample(
        &self,
        out: &mut tabgrab_core::telemetry::Samples,
        labels: &tabgrab_core::telemetry::Labels,
    ) {
        use tabgrab_core::telemetry as names;
        let t = self.transitions();
        for (to, n) in [
            ("closed", t.closed),
            ("open", t.open),
            ("half_open", t.half_open),
        ] {
            out.counter_by(names::BREAKER_TRANSITIONS, labels, (names::TO, to), n);
        }
        let level = match self.state() {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        };
        out.gauge(names::BREAKER_STATE, labels, level);
    }

    /// A receiver that sees every state change (the latest one, as `watch` does).
    pub fn subscribe(&self) -> watch::Receiver<CircuitState> {
        self.shared.changes.subscribe()
    }

    /// Admits a call at `now`, or refuses it (`None`): see [`BreakerCore::allow`].
    pub fn allow(&self, now: Instant) -> Option<Ticket> {
        self.with(|core| core.allow(now))
    }

    /// Records the outcome of an admitted call: see [`BreakerCore::record`].
    pub fn record(&self, ticket: Ticket, outcome: Outcome, now: Instant) {
        self.with(|core| core.record(ticket, outcome, now));
    }

    /// While open: when the open duration ends; see [`BreakerCore::open_until`].
    pub fn open_until(&self) -> Option<Instant> {
        self.lock().open_until()
    }

    /// Forgets an admitted call that ended without an outcome: see [`BreakerCore::cancel`].
    /// A probe slot given back is announced to the receivers of [`subscribe`](Self::subscribe)
    /// as the same state again, so that a caller waiting for a slot wakes up.
    pub fn cancel(&self, ticket: Ticket) {
        let core = &mut *self.lock();
        if core.cancel(ticket) {
            self.shared.changes.send_replace(core.state());
        }
    }

    fn lock(&self) -> MutexGuard<'_, BreakerCore> {
        // The core has no invariants a panicking holder could break half-way that matter
        // more than availability: keep going with the inner value.
        self.shared
            .core
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the core and publishes a state change if there was one. The change is
    /// published while the core is still locked, so observers see changes in their order.
    fn with<T>(&self, f: impl FnOnce(&mut BreakerCore) -> T) -> T {
        let mut core = self.lock();
        let before = core.state();
        let out = f(&mut core);
        let state = core.state();
        if before != state {
            tracing::info!(from = ?before, to = ?state, "circuit breaker changed state");
            let index = match state {
                CircuitState::Closed => 0,
                CircuitState::Open => 1,
                CircuitState::HalfOpen => 2,
            };
            self.shared.transitions[index].fetch_add(1, Ordering::Relaxed);
            self.shared.changes.send_replace(state);
        }
        drop(core);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config() -> BreakerConfig {
        BreakerConfig {
            window: 10,
            minimum_calls: 10,
            failure_rate: 1.0,
            consecutive_failures: Some(1),
            open_for: Duration::from_secs(1),
            probes: 1,
        }
    }

    /// Open, the handle says until when; the first call after that is the one probe, and a
    /// probe given back without an outcome wakes the receivers (a waiter may take the slot).
    #[test]
    fn a_probe_slot_given_back_wakes_the_waiters() {
        let breaker = BreakerHandle::from(config());
        let mut changes = breaker.subscribe();
        let t0 = Instant::now();
        assert_eq!(breaker.open_until(), None);
        let ticket = breaker.allow(t0).expect("closed");
        breaker.record(ticket, Outcome::Failure, t0);
        assert_eq!(breaker.state(), CircuitState::Open);
        assert_eq!(breaker.open_until(), Some(t0 + Duration::from_secs(1)));
        assert!(breaker.allow(t0 + Duration::from_millis(999)).is_none());
        changes.borrow_and_update();

        let later = t0 + Duration::from_secs(1);
        let probe = breaker.allow(later).expect("the probe");
        assert_eq!(breaker.open_until(), None);
        assert!(breaker.allow(later).is_none(), "one probe slot");
        assert!(changes.has_changed().unwrap(), "open to half-open");
        changes.borrow_and_update();

        breaker.cancel(probe);
        assert!(
            changes.has_changed().unwrap(),
            "the slot given back is announced"
        );
        assert_eq!(*changes.borrow_and_update(), CircuitState::HalfOpen);
        let probe = breaker.allow(later).expect("the slot again");
        breaker.record(probe, Outcome::Success, later);
        assert_eq!(breaker.state(), CircuitState::Closed);

        // A stale ticket's cancellation frees nothing and announces nothing.
        changes.borrow_and_update();
        breaker.cancel(ticket);
        assert!(!changes.has_changed().unwrap());
    }
}
