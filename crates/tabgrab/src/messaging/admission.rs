//! What a requester node lets out: its bulkhead (a cap on its requests awaiting their outcome)
//! and its circuit breaker (how the responders are doing, as this node sees it), with the
//! book of this node's requests in flight that ties each outcome back to them.
//!
//! Both are opt-in ([`RequesterBuilder::max_in_flight`](super::RequesterBuilder::max_in_flight),
//! [`RequesterBuilder::breaker`](super::RequesterBuilder::breaker)): a durable request is
//! meant to wait for a recipient that is down, and a node that refuses to send while it is
//! down gives that up. They are for callers that would rather fail fast: an open breaker
//! refuses a request with `CircuitOpen` before anything is stored or published, a full
//! bulkhead with `Rejected`.
//!
//! The policies are the ones of `tabgrab-resilience`, as for calls and consumers. A reply (an
//! answer or a typed rejection) is a success for the breaker, a time-out a failure. Outcomes
//! reach the node whose reply consumer or sweep takes them, which may be another node of the
//! group: a request whose outcome this node never sees is forgotten (its breaker ticket given
//! back, its bulkhead slot freed) once no outcome can come any more, at its deadline plus two
//! sweep intervals and a second, the same bound as [`Requester::request`](super::Requester::request) waits.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use tabgrab_resilience::Bulkhead;
use tabgrab_resilience::breaker::{BreakerHandle, Outcome, Ticket};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::{Error, ErrorKind};

/// The admission of one requester node.
pub(crate) struct Admission {
    bulkhead: Option<Bulkhead>,
    breaker: Option<BreakerHandle>,
    /// This node's admitted requests that were sent, by id, until their outcome.
    book: Mutex<HashMap<String, Entry>>,
}

/// A request admitted and not yet booked: dropped unbooked (it was not sent), it gives its
/// slot and its ticket back.
pub(crate) struct Pass<'a> {
    admission: &'a Admission,
    ticket: Option<Ticket>,
    slot: Option<OwnedSemaphorePermit>,
}

/// A booked request.
struct Entry {
    ticket: Option<Ticket>,
    _slot: Option<OwnedSemaphorePermit>,
    /// When no outcome can reach this node any more.
    forget_at: Instant,
}

impl Admission {
    pub(crate) fn new(max_in_flight: Option<usize>, breaker: Option<BreakerHandle>) -> Admission {
        Admission {
            bulkhead: max_in_flight.map(Bulkhead::new),
            breaker,
            book: Mutex::new(HashMap::new()),
        }
    }

    fn book(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Admits a request of type `ty` of group `group`, or refuses it with a typed error that
    /// says which policy refused and what to do.
    pub(crate) fn admit(&self, group: &str, ty: &str) -> Result<Pass<'_>, Error> {
        let slot = match &self.bulkhead {
            None => None,
            Some(bulkhead) => Some(bulkhead.try_enter_owned().ok_or_else(|| {
                Error::new(
                    ErrorKind::Rejected,
                    format!(
                        "requester group {group}: {ty} shed: {} requests of this node already \
                         await their outcome (the bulkhead's cap); slow down or raise \
                         max_in_flight",
                        bulkhead.max()
                    ),
                )
            })?),
        };
        let ticket = match &self.breaker {
            None => None,
            Some(breaker) => Some(breaker.allow(Instant::now()).ok_or_else(|| {
                Error::new(
                    ErrorKind::CircuitOpen,
                    format!(
                        "requester group {group}: the circuit breaker is open after recent \
                         requests timed out, so {ty} was not sent; it lets a probe through \
                         after its open duration"
                    ),
                )
            })?),
        };
        Ok(Pass {
            admission: self,
            ticket,
            slot,
        })
    }

    /// Records the outcome of request `id` if this node booked it: a reply counts as a
    /// success, a time-out as a failure. Later calls for the same id do nothing.
    pub(crate) fn outcome(&self, id: &str, replied: bool) {
        if self.bulkhead.is_none() && self.breaker.is_none() {
            return;
        }
        let Some(entry) = self.book().remove(id) else {
            return;
        };
        if let (Some(breaker), Some(ticket)) = (&self.breaker, entry.ticket) {
            let outcome = if replied {
                Outcome::Success
            } else {
                Outcome::Failure
            };
            breaker.record(ticket, outcome, Instant::now());
        }
    }

    /// Takes back booked request `id`, whose publish failed: no outcome will come.
    pub(crate) fn withdraw(&self, id: &str) {
        if self.bulkhead.is_none() && self.breaker.is_none() {
            return;
        }
        let entry = self.book().remove(id);
        if let (
            Some(breaker),
            Some(Entry {
                ticket: Some(ticket),
                ..
            }),
        ) = (&self.breaker, entry)
        {
            breaker.cancel(ticket);
        }
    }

    /// Forgets the booked requests whose outcome went to another node (see the module docs).
    pub(crate) fn forget_expired(&self, now: Instant) {
        if self.bulkhead.is_none() && self.breaker.is_none() {
            return;
        }
        let gone: Vec<Entry> = {
            let mut book = self.book();
            let ids: Vec<String> = book
                .iter()
                .filter(|(_, e)| e.forget_at <= now)
                .map(|(id, _)| id.clone())
                .collect();
            ids.iter().filter_map(|id| book.remove(id)).collect()
        };
        for entry in gone {
            if let (Some(breaker), Some(ticket)) = (&self.breaker, entry.ticket) {
                breaker.cancel(ticket);
            }
        }
    }

    /// The breaker's state, if the node has one.
    pub(crate) fn breaker(&self) -> Option<&BreakerHandle> {
        self.breaker.as_ref()
    }

    /// Requests of this node awaiting their outcome, if it has a bulkhead.
    pub(crate) fn in_flight(&self) -> Option<usize> {
        self.bulkhead.as_ref().map(Bulkhead::in_flight)
    }
}

impl Pass<'_> {
    /// The request is about to be published as `id` (booked first, so that no reply can come
    /// before it): its outcome is recorded when it comes, or it is forgotten at `forget_at`;
    /// [`Admission::withdraw`] takes it back if the publish fails.
    pub(crate) fn book(mut self, id: &str, forget_at: Instant) {
        if self.ticket.is_none() && self.slot.is_none() {
            return;
        }
        let entry = Entry {
            ticket: self.ticket.take(),
            _slot: self.slot.take(),
            forget_at,
        };
        self.admission.book().insert(id.to_owned(), entry);
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        if let (Some(breaker), Some(ticket)) = (&self.admission.breaker, self.ticket.take()) {
            breaker.cancel(ticket);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tabgrab_resilience::breaker::{BreakerConfig, CircuitState};

    use super::*;

    /// A breaker opened by one failure, that stays open for `open_for`.
    fn opened_breaker(open_for: Duration) -> BreakerHandle {
        let breaker = BreakerHandle::new(BreakerConfig {
            window: 10,
            minimum_calls: 10,
            failure_rate: 1.0,
            consecutive_failures: Some(1),
            open_for,
            probes: 1,
        });
        let t = breaker.allow(Instant::now()).expect("closed");
        breaker.record(t, Outcome::Failure, Instant::now());
        breaker
    }

    /// A request whose outcome went to another node holds its bulkhead slot and its probe
    /// slot only until it is forgotten; a withdrawn one at once; a reply closes the breaker.
    #[tokio::test(start_paused = true)]
    async fn slots_come_back_when_an_outcome_cannot_come_any_more() {
        let breaker = opened_breaker(Duration::from_millis(1));
        let admission = Admission::new(Some(1), Some(breaker.clone()));
        tokio::time::sleep(Duration::from_millis(2)).await;
        let pass = admission.admit("g", "t").expect("the probe");
        assert_eq!(breaker.state(), CircuitState::HalfOpen);
        let soon = Instant::now() + Duration::from_secs(1);
        pass.book("a", soon);
        assert_eq!(admission.in_flight(), Some(1));
        let refused = admission
            .admit("g", "t")
            .err()
            .expect("the bulkhead is full");
        assert_eq!(refused.kind(), ErrorKind::Rejected);
        assert!(refused.to_string().contains("bulkhead"), "{refused}");

        admission.forget_expired(Instant::now());
        assert_eq!(admission.in_flight(), Some(1), "not yet");
        admission.forget_expired(soon);
        assert_eq!(admission.in_flight(), Some(0));
        // The probe slot came back: a new probe is admitted, then withdrawn (publish failed).
        admission
            .admit("g", "t")
            .expect("the probe slot again")
            .book("b", soon);
        admission.withdraw("b");
        assert_eq!(admission.in_flight(), Some(0));
        // A probe that gets its reply closes the breaker; its outcome counts once.
        admission
            .admit("g", "t")
            .expect("the probe slot again")
            .book("c", soon);
        admission.outcome("c", true);
        admission.outcome("c", false);
        assert_eq!(breaker.state(), CircuitState::Closed);
        assert_eq!(admission.in_flight(), Some(0));
    }

    #[test]
    fn an_open_breaker_refuses_with_circuit_open() {
        // Real time here: open for an hour, so that a slow machine cannot see it half-open
        // (with 1 ms, a pause of the test thread let a probe through: a CI failure).
        let admission = Admission::new(None, Some(opened_breaker(Duration::from_secs(3600))));
        let refused = admission.admit("g", "t").err().expect("open");
        assert_eq!(refused.kind(), ErrorKind::CircuitOpen);
        assert!(refused.to_string().contains("t was not sent"), "{refused}");
        assert_eq!(admission.in_flight(), None);
    }
}
