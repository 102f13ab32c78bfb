//! The connection limit: the registry of open connections, and who gives way to a newcomer
//! when it is full (the policy and its reasons are in the [server docs](super)).
//!
//! The victim is the oldest connection that has not sent a complete request, else the one
//! idle the longest; a connection with a request in flight is never chosen. Choosing scans
//! the registry, which only happens when it is full, so the cost (a few atomic loads per open
//! connection, microseconds for thousands) is paid only under pressure, and only once per
//! newcomer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::connection::State;

/// The largest default limit: beyond it the memory of idle connections (tens of KiB each
/// with HTTP/2) matters more than descriptors; raise it explicitly when a server needs more.
const MAX_DEFAULT: usize = 16_384;

/// The default [`max_connections`](super::ServeConfig::max_connections): half the soft limit
/// of open files, at most 16,384; 512 where the limit cannot be read.
pub(super) fn default_max_connections() -> usize {
    let soft = open_files_limit().unwrap_or(1024);
    usize::try_from(soft / 2)
        .unwrap_or(MAX_DEFAULT)
        .clamp(1, MAX_DEFAULT)
}

/// The process's soft `RLIMIT_NOFILE`, if it has one.
#[cfg(unix)]
fn open_files_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Not known off Unix.
#[cfg(not(unix))]
fn open_files_limit() -> Option<u64> {
    None
}

/// The signal an accept loop waiting for room listens to.
#[derive(Debug, Default)]
pub(super) struct Room {
    /// Whether the accept loop waits; connections signal only then, so the request path
    /// pays one load of a flag that rarely changes.
    waiting: AtomicBool,
    /// Signalled when a connection ends or its last request in flight ends.
    changed: Notify,
}

impl Room {
    /// A connection ended or became idle.
    pub(super) fn changed(&self) {
        if self.waiting.load(Ordering::SeqCst) {
            self.changed.notify_one();
        }
    }
}

/// The open connections, under a limit.
#[derive(Debug)]
pub(super) struct Connections {
    /// The most connections open at once.
    max: usize,
    /// What connections signal.
    room: Arc<Room>,
    /// Open connections by id; ids grow with accept time, so the map's order is age.
    open: Arc<Mutex<Registry>>,
}

/// The map and the next id.
#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    by_id: BTreeMap<u64, Arc<State>>,
}

fn lock(registry: &Mutex<Registry>) -> MutexGuard<'_, Registry> {
    // The registry stays consistent even if a holder panicked: every change is one map call.
    registry
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connections {
    /// No connection yet, at most `max` (at least one).
    pub(super) fn new(max: usize) -> Connections {
        Connections {
            max: max.max(1),
            room: Arc::default(),
            open: Arc::default(),
        }
    }

    /// Whether a newcomer can be admitted now: there is room, or a connection can give way.
    pub(super) fn can_admit(&self) -> bool {
        let open = lock(&self.open);
        open.by_id.len() < self.max || open.by_id.values().any(|s| s.can_give_way())
    }

    /// Waits until [`Connections::can_admit`] holds.
    pub(super) async fn wait_for_room(&self) {
        loop {
            if self.can_admit() {
                return;
            }
            // Set before the second look, so that a change after it is signalled.
            self.room.waiting.store(true, Ordering::SeqCst);
            let admit = self.can_admit();
            if !admit {
                self.room.changed.notified().await;
            }
            self.room.waiting.store(false, Ordering::SeqCst);
            if admit {
                return;
            }
        }
    }

    /// Registers a connection accepted now: at once if there is room, else after closing the
    /// connection that gives way (see the module docs), else, when every connection has a
    /// request in flight, once one finishes (the newcomer was accepted between the look for
    /// room before the accept and now; it waits, unserved, rather than going over the limit).
    pub(super) async fn admit(&self) -> Entry {
        loop {
            if let Some(entry) = self.try_admit() {
                self.room.waiting.store(false, Ordering::SeqCst);
                return entry;
            }
            self.room.waiting.store(true, Ordering::SeqCst);
            if let Some(entry) = self.try_admit() {
                self.room.waiting.store(false, Ordering::SeqCst);
                return entry;
            }
            self.room.changed.notified().await;
        }
    }

    /// [`Connections::admit`] if it needs no waiting.
    fn try_admit(&self) -> Option<Entry> {
        let mut open = lock(&self.open);
        if open.by_id.len() >= self.max {
            let id = victim(&open.by_id)?;
            if let Some(victim) = open.by_id.remove(&id) {
                victim.evict();
            }
        }
        let state = Arc::new(State::new(Arc::clone(&self.room)));
        let id = open.next_id;
        open.next_id += 1;
        open.by_id.insert(id, Arc::clone(&state));
        Some(Entry {
            id,
            state,
            open: Arc::clone(&self.open),
            room: Arc::clone(&self.room),
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        lock(&self.open).by_id.len()
    }
}

/// The connection to close for a newcomer: the oldest that never sent a complete request,
/// else the one idle the longest; none if every connection has a request in flight.
fn victim(open: &BTreeMap<u64, Arc<State>>) -> Option<u64> {
    let mut idle: Option<(u64, tokio::time::Instant)> = None;
    for (&id, state) in open {
        if !state.can_give_way() {
            continue;
        }
        if state.is_fresh() {
            return Some(id);
        }
        let since = state.idle_since();
        if idle.is_none_or(|(_, earliest)| since < earliest) {
            idle = Some((id, since));
        }
    }
    idle.map(|(id, _)| id)
}

/// A connection's place in the registry, held by its task; dropping it frees the place.
#[derive(Debug)]
pub(super) struct Entry {
    id: u64,
    state: Arc<State>,
    open: Arc<Mutex<Registry>>,
    room: Arc<Room>,
}

impl Entry {
    /// The connection's state.
    pub(super) fn state(&self) -> &Arc<State> {
        &self.state
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        lock(&self.open).by_id.remove(&self.id);
        self.room.changed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_oldest_connection_without_a_request_gives_way_first() {
        let connections = Connections::new(3);
        let a = connections.try_admit().expect("room");
        let b = connections.try_admit().expect("room");
        let c = connections.try_admit().expect("room");
        // `a` has served a request and is idle, `b` has one in flight, `c` has sent nothing.
        a.state().request_started(false);
        a.state().request_ended();
        b.state().request_started(false);
        let d = connections.try_admit().expect("room");
        assert_eq!(connections.len(), 3);
        assert!(c.state().is_evicted(), "c had sent nothing");
        assert!(!a.state().is_evicted());
        // Next, the idle one; never the busy one.
        tokio::time::advance(std::time::Duration::from_secs(1)).await;
        d.state().request_started(false);
        d.state().request_ended();
        let e = connections.try_admit().expect("room");
        assert!(a.state().is_evicted(), "a was idle the longest");
        assert!(!b.state().is_evicted());
        assert!(!d.state().is_evicted());
        // Only busy ones left beside the newcomer `e`, which has sent nothing yet: it can give
        // way, so a newcomer is admitted; once all are busy, none is.
        e.state().request_started(false);
        d.state().request_started(false);
        assert!(!connections.can_admit());
        assert!(
            connections.try_admit().is_none(),
            "a request in flight is never cut"
        );
        b.state().request_ended();
        assert!(connections.can_admit());
        drop(c);
        assert_eq!(connections.len(), 3);
    }
}
