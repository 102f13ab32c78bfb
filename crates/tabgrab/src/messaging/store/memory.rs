//! An in-memory correlation store: the same state machine as the SQL stores, in a map.
//!
//! It exists for tests and to measure, in the benchmark, what persistence costs. It is not
//! durable: a restart loses every pending request, which is exactly what tabgrab's requester
//! is built to avoid, so do not use it where a reply may outlive the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

use futures::FutureExt as _;
use futures::future::BoxFuture;

use super::{
    Claim, CorrelationStore, InFlight, PendingRequest, RecordState, ReplyKey, StoreCounts, Tally,
    classify, default_node,
};
use crate::{Error, ErrorKind};

/// One record: the request, its state, its lease and when it finished.
#[derive(Clone, Debug)]
struct Entry {
    request: PendingRequest,
    state: RecordState,
    lease_until_ms: i64,
    finished_ms: i64,
}

/// A correlation store in a map (not durable; see the module docs).
#[derive(Debug)]
pub struct MemoryStore {
    /// Records by request id.
    entries: Mutex<HashMap<String, Entry>>,
    /// The holder of every claim: this process.
    node: String,
    /// Tallied replies: late, duplicate, forged.
    tallies: [AtomicU64; 3],
}

impl Default for MemoryStore {
    fn default() -> MemoryStore {
        MemoryStore {
            entries: Mutex::default(),
            node: default_node(),
            tallies: Default::default(),
        }
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl CorrelationStore for MemoryStore {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn insert<'a>(&'a self, request: &'a PendingRequest) -> BoxFuture<'a, Result<(), Error>> {
        let result = {
            let mut entries = self.lock();
            if entries.contains_key(&request.id) {
                Err(Error::new(
                    ErrorKind::Storage,
                    format!(
                        "correlation store (memory): request {} exists already",
                        request.id
                    ),
                ))
            } else {
                entries.insert(
                    request.id.clone(),
                    Entry {
                        request: request.clone(),
                        state: RecordState::Pending,
                        lease_until_ms: 0,
                        finished_ms: 0,
                    },
                );
                Ok(())
            }
        };
        futures::future::ready(result).boxed()
    }

    fn claim_reply<'a>(
        &'a self,
        reply: ReplyKey<'a>,
        now_ms: i64,
        lease_until_ms: i64,
    ) -> BoxFuture<'a, Result<Claim, Error>> {
        let claim = {
            let mut entries = self.lock();
            match entries.get_mut(reply.id) {
                Some(e)
                    if reply
                        .request_type
                        .is_none_or(|t| e.request.request_type == t)
                        && reply.responder.is_none_or(|r| e.request.responder == r)
                        && e.request.deadline_ms > now_ms
                        && (e.state == RecordState::Pending
                            || (e.state == RecordState::Replying && e.lease_until_ms < now_ms)) =>
                {
                    e.state = RecordState::Replying;
                    e.lease_until_ms = lease_until_ms;
                    Claim::Claimed(e.request.clone())
                }
                found => classify(
                    found.map(|e| {
                        (
                            e.state.as_str().to_owned(),
                            e.request.request_type.clone(),
                            e.request.responder.clone(),
                            e.request.deadline_ms,
                        )
                    }),
                    &reply,
                    now_ms,
                ),
            }
        };
        futures::future::ready(Ok(claim)).boxed()
    }

    fn claim_expired(
        &self,
        now_ms: i64,
        lease_until_ms: i64,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<PendingRequest>, Error>> {
        let claimed = {
            let mut entries = self.lock();
            let mut due: Vec<&mut Entry> = entries
                .values_mut()
                .filter(|e| {
                    e.request.deadline_ms <= now_ms
                        && (e.state == RecordState::Pending
                            || (matches!(e.state, RecordState::Replying | RecordState::TimingOut)
                                && e.lease_until_ms < now_ms))
                })
                .collect();
            due.sort_by_key(|e| e.request.deadline_ms);
            due.into_iter()
                .take(limit as usize)
                .map(|e| {
                    e.state = RecordState::TimingOut;
                    e.lease_until_ms = lease_until_ms;
                    e.request.clone()
                })
                .collect()
        };
        futures::future::ready(Ok(claimed)).boxed()
    }

    fn complete<'a>(
        &'a self,
        id: &'a str,
        state: RecordState,
        now_ms: i64,
    ) -> BoxFuture<'a, Result<bool, Error>> {
        let done = match self.lock().get_mut(id) {
            Some(e) if matches!(e.state, RecordState::Replying | RecordState::TimingOut) => {
                e.state = state;
                e.finished_ms = now_ms;
                true
            }
            _ => false,
        };
        futures::future::ready(Ok(done)).boxed()
    }

    fn release<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        if let Some(e) = self.lock().get_mut(id)
            && matches!(e.state, RecordState::Replying | RecordState::TimingOut)
        {
            e.state = RecordState::Pending;
            e.lease_until_ms = 0;
        }
        futures::future::ready(Ok(())).boxed()
    }

    fn remove<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        let mut entries = self.lock();
        if entries
            .get(id)
            .is_some_and(|e| e.state == RecordState::Pending)
        {
            entries.remove(id);
        }
        futures::future::ready(Ok(())).boxed()
    }

    fn state<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<RecordState>, Error>> {
        let state = self.lock().get(id).map(|e| e.state);
        futures::future::ready(Ok(state)).boxed()
    }

    fn purge(&self, before_ms: i64) -> BoxFuture<'_, Result<u64, Error>> {
        let mut entries = self.lock();
        let before = entries.len();
        entries.retain(|_, e| !(e.state.is_final() && e.finished_ms < before_ms));
        let purged = (before - entries.len()) as u64;
        futures::future::ready(Ok(purged)).boxed()
    }

    fn in_flight(&self, limit: usize) -> BoxFuture<'_, Result<Vec<InFlight>, Error>> {
        let mut open: Vec<InFlight> = self
            .lock()
            .values()
            .filter(|e| !e.state.is_final())
            .map(|e| InFlight {
                request: e.request.clone(),
                state: e.state,
                lease_until_ms: if e.state == RecordState::Pending {
                    0
                } else {
                    e.lease_until_ms
                },
                holder: (e.state != RecordState::Pending).then(|| self.node.clone()),
            })
            .collect();
        open.sort_by(|a, b| {
            (a.request.sent_ms, &a.request.id).cmp(&(b.request.sent_ms, &b.request.id))
        });
        open.truncate(limit);
        futures::future::ready(Ok(open)).boxed()
    }

    fn counts(&self) -> BoxFuture<'_, Result<StoreCounts, Error>> {
        let mut counts = StoreCounts::default();
        for e in self.lock().values() {
            match e.state {
                RecordState::Pending => counts.pending += 1,
                RecordState::Replying | RecordState::TimingOut => counts.in_progress += 1,
                RecordState::Replied => counts.replied += 1,
                RecordState::TimedOut => counts.timed_out += 1,
            }
        }
        let tally = |i: usize| self.tallies[i].load(Ordering::Relaxed);
        (counts.late, counts.duplicate, counts.forged) = (tally(0), tally(1), tally(2));
        futures::future::ready(Ok(counts)).boxed()
    }

    fn tally(&self, tally: Tally) -> BoxFuture<'_, Result<(), Error>> {
        let i = match tally {
            Tally::Late => 0,
            Tally::Duplicate => 1,
            Tally::Forged => 2,
        };
        self.tallies[i].fetch_add(1, Ordering::Relaxed);
        futures::future::ready(Ok(())).boxed()
    }
}
