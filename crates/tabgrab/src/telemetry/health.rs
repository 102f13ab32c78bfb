//! Liveness and readiness: what `/healthz` and `/readyz` answer.
//!
//! A process is *alive* while it can answer at all (`/healthz` needs nothing else). It is
//! *ready* when every check registered on its [`Health`] passes: the bus is connected
//! ([`Health::bus`]), each consumer has joined its group and runs ([`Health::subscription`]),
//! and whatever else the service adds ([`Health::check`]: a database, a downstream service).
//! Checks are cheap and local (a client's view of its connection, a task's state), so an
//! orchestrator may ask often; none makes a round trip.

use std::sync::{Arc, Mutex};

use crate::backend::Bus;
use crate::event::Subscription;

/// One readiness check: `Ok` or why not.
type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// The readiness checks of a service; cheap to clone (clones share the checks).
#[derive(Clone, Default)]
pub struct Health {
    checks: Arc<Mutex<Vec<(String, Check)>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<String> = self.lock().iter().map(|(n, _)| n.clone()).collect();
        f.debug_struct("Health").field("checks", &names).finish()
    }
}

/// The result of one check.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct CheckResult {
    /// The check's name (`bus`, `subscription orders/kitchen`).
    pub name: String,
    /// Whether it passed.
    pub ok: bool,
    /// Why not, when it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Every check's result.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Readiness {
    /// Whether every check passed.
    pub ready: bool,
    /// The checks, in the order they were added.
    pub checks: Vec<CheckResult>,
}

impl Health {
    /// No checks yet: ready.
    pub fn new() -> Health {
        Health::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, Check)>> {
        self.checks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds a check named `name`: `Ok(())` when ready, or the reason it is not.
    pub fn check(
        &self,
        name: impl Into<String>,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) -> &Health {
        self.lock().push((name.into(), Arc::new(check)));
        self
    }

    /// Ready only while `bus` is connected to its engine (the embedded bus always is).
    pub fn bus(&self, bus: &Bus) -> &Health {
        let bus = bus.clone();
        self.check(format!("bus {}", bus.name()), move || bus.connected())
    }

    /// Ready only while `subscription` has joined its group and takes deliveries (not
    /// while it joins, after joining failed, or once it stops).
    pub fn subscription(&self, subscription: &Subscription) -> &Health {
        let (name, probe) = subscription.probe();
        self.check(format!("subscription {name}"), probe)
    }

    /// Runs every check.
    pub fn readiness(&self) -> Readiness {
        let checks: Vec<(String, Check)> = self.lock().clone();
        let checks: Vec<CheckResult> = checks
            .into_iter()
            .map(|(name, check)| match check() {
                Ok(()) => CheckResult {
                    name,
                    ok: true,
                    reason: None,
                },
                Err(reason) => CheckResult {
                    name,
                    ok: false,
                    reason: Some(reason),
                },
            })
            .collect();
        Readiness {
            ready: checks.iter().all(|c| c.ok),
            checks,
        }
    }
}
