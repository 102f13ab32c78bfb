//! The bulkhead: at most `max` requests in flight; the next one is shed at once (never
//! queued), so that a slow dependency cannot pile up work and memory behind it.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

/// A limit on requests in flight; cheap to clone (clones share the limit).
#[derive(Clone, Debug)]
pub struct Bulkhead {
    permits: Arc<Semaphore>,
    max: usize,
}

impl Bulkhead {
    /// At most `max` in flight (at least 1, at most tokio's semaphore limit).
    pub fn new(max: usize) -> Bulkhead {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Bulkhead {
            permits: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Enters, or `None` when `max` are already in flight (shed). In flight until the permit
    /// is dropped.
    pub fn try_enter(&self) -> Option<SemaphorePermit<'_>> {
        self.permits.try_acquire().ok()
    }

    /// [`try_enter`](Self::try_enter) with a permit that does not borrow the bulkhead.
    pub fn try_enter_owned(&self) -> Option<OwnedSemaphorePermit> {
        Arc::clone(&self.permits).try_acquire_owned().ok()
    }

    /// The limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.max - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_over_the_limit_is_shed_and_a_freed_slot_is_taken_again() {
        let bulkhead = Bulkhead::new(2);
        let a = bulkhead.try_enter().expect("first");
        let b = bulkhead.try_enter_owned().expect("second");
        assert_eq!(bulkhead.in_flight(), 2);
        assert!(bulkhead.try_enter().is_none(), "shed");
        drop(a);
        assert!(bulkhead.try_enter().is_some());
        drop(b);
        assert_eq!(bulkhead.in_flight(), 0);
        assert_eq!(Bulkhead::new(0).max(), 1);
    }
}
