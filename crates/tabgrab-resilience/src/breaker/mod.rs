//! The circuit breaker: stop calling a dependency that is failing, probe it, resume.
//!
//! [`state`] is the pure state machine (no clock of its own, no I/O). [`BreakerHandle`] shares
//! one machine between everything that calls the same dependency and reports its state
//! changes through a `tokio::sync::watch` channel ([`BreakerHandle::subscribe`]). What counts
//! as a failure is the user's to say (the call client's breaker layer counts unhealthy error
//! kinds; see `tabgrab_call::breaker`).

pub mod state;

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;
use tokio::time::Instant;

pub use self::state::{BreakerConfig, BreakerCore, CircuitState, Outcome, Ticket};

/// The shared state of one breaker: the machine and the channel that reports its changes.
#[derive(Debug)]
struct Shared {
    core: Mutex<BreakerCore>,
    changes: watch::Sender<CircuitState>,
}

/// A handle on a breaker: its state and its changes. Cheap to clone.
#[derive(Clone, Debug)]
pub struct BreakerHandle {
    shared: Arc<Shared>,
}

impl AsRef<BreakerHandle> for BreakerHandle {
    fn as_ref(&self) -> &BreakerHandle {
        self
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
            }),
        }
    }

    /// The current state.
    pub fn state(&self) -> CircuitState {
        self.lock().state()
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

    /// Forgets an admitted call that ended without an outcome: see [`BreakerCore::cancel`].
    pub fn cancel(&self, ticket: Ticket) {
        self.with(|core| core.cancel(ticket));
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
            self.shared.changes.send_replace(state);
        }
        drop(core);
        out
    }
}
