//! Idempotency keys on the server: a command sent again under the key of an earlier one gets
//! the earlier answer, and the same key with another payload is refused as a conflict.
//!
//! Why the server keeps them and not only each handler: a caller retries a command whose
//! answer it lost (the retry layer does, with the key it was given), and without a record
//! the handler runs twice. The pizzeria's services also treat a repeated order id as the
//! same command, but a handler that forgets to is the common bug, and a key that comes back
//! with *another* payload was silently answered with the first result: a caller that reused
//! a key by mistake (a counter reset, a copy-paste) believed its new command done. So every
//! transport's dispatch ([`Handlers`](crate::Handlers)) goes through this one record, keyed
//! by message type and key, bound to a SHA-256 digest of the payload bytes:
//!
//! | the command | answer |
//! |---|---|
//! | a key not seen (or forgotten) | the handler runs; its answer is recorded |
//! | the same key and payload, answered | the recorded answer, the handler does not run |
//! | the same key and payload, still running | waits for that run's answer (within its own deadline) |
//! | the same key, another payload | [`ErrorKind::Conflict`]: HTTP 409, gRPC `ALREADY_EXISTS` |
//!
//! Why 409 and `ALREADY_EXISTS`: 422 and `FAILED_PRECONDITION` are the handler's typed
//! refusal here, and a caller must tell "your command was refused" from "your key is taken";
//! 409 says the request conflicts with the state the key already holds, and `ALREADY_EXISTS`
//! that the operation the key names exists. Neither is retryable.
//!
//! What is recorded: an answer, a handler's refusal and a handler's verdict that the input is
//! invalid, all of which a second run would repeat. A failure that a retry may cure (the
//! handler failed, a dependency was down, the deadline passed, the run was cancelled) is not
//! recorded, so the retry runs the handler again. Keys are scoped by message type (one key
//! may name a charge and its refund); the digest covers the payload bytes as sent, so the
//! same JSON spelt differently is another payload (tabgrab's retries resend the same bytes).
//!
//! The record is in memory, per [`Handlers`](crate::Handlers) (shared by the HTTP, gRPC and
//! NATS servers of one process), and bounded: entries live [`IdempotencyConfig::ttl`], at
//! most [`IdempotencyConfig::max_entries`] of them and [`IdempotencyConfig::max_bytes`] of
//! recorded answers, the oldest forgotten first. It covers retries to the same process,
//! which is what a caller's retry layer makes within a deadline; a service that needs
//! effectively-once effects across restarts or replicas keeps the key in its own store (the
//! inbox of tabgrab's event consumers does).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest as _, Sha256};
use tabgrab_core::ErrorKind;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;
use tokio::time::Instant;

use crate::handler::ServeError;

/// The longest idempotency key accepted, in bytes.
pub const MAX_KEY_LEN: usize = 256;

/// Bounds of the record of idempotency keys; see the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub struct IdempotencyConfig {
    /// How long an answer is kept for its key. Default 10 minutes: far beyond any retry a
    /// caller makes within its deadline.
    pub ttl: Duration,
    /// Most keys recorded at once; the oldest go first. Default 10,000.
    pub max_entries: usize,
    /// Most bytes of recorded answers at once; the oldest go first. Default 16 MiB, so the
    /// record cannot hold 10,000 answers of a megabyte.
    pub max_bytes: usize,
}

impl Default for IdempotencyConfig {
    fn default() -> IdempotencyConfig {
        IdempotencyConfig {
            ttl: Duration::from_secs(600),
            max_entries: 10_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

/// A SHA-256 digest of a payload.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Digest([u8; 32]);

impl Digest {
    /// The digest of `payload`.
    pub(crate) fn of(payload: &[u8]) -> Digest {
        Digest(Sha256::digest(payload).into())
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// A key's scope and the key: message type, then the key.
type Key = (Box<str>, Box<str>);

/// What the record holds for a key.
enum Slot {
    /// A run is under way; `done` is notified when it ends.
    Running {
        digest: Digest,
        generation: u64,
        done: Arc<Notify>,
    },
    /// The recorded answer.
    Done {
        digest: Digest,
        generation: u64,
        outcome: Result<Bytes, ServeError>,
        size: usize,
        at: Instant,
    },
}

/// The map, and the keys in the order they were recorded (with the generation, so that a
/// key recorded again is not forgotten by its older place in the queue).
#[derive(Default)]
struct Inner {
    slots: HashMap<Key, Slot>,
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    next_generation: u64,
}

/// The record of idempotency keys of one [`Handlers`](crate::Handlers).
#[derive(Clone, Default)]
pub(crate) struct Record {
    config: IdempotencyConfig,
    inner: Arc<Mutex<Inner>>,
}

impl fmt::Debug for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Record")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What to do with a keyed command.
pub(crate) enum Claim {
    /// Run the handler, and report through the guard.
    Run(Running),
    /// Answer this (recorded) outcome.
    Replay(Result<Bytes, ServeError>),
    /// Another run with this key and payload is under way: wait, then claim again.
    Wait(OwnedNotified),
    /// The key was used with another payload.
    Conflict,
}

/// A run of a keyed command; [`Running::finish`] records its outcome, dropping it unfinished
/// (a cancelled run) forgets the key so a retry runs again.
pub(crate) struct Running {
    record: Record,
    key: Option<Key>,
    generation: u64,
}

fn lock(inner: &Mutex<Inner>) -> MutexGuard<'_, Inner> {
    // Every change keeps the map consistent on its own, so a panicked holder leaves it usable.
    inner
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Record {
    /// An empty record with these bounds.
    pub(crate) fn new(config: IdempotencyConfig) -> Record {
        Record {
            config,
            inner: Arc::default(),
        }
    }

    /// The bounds in force.
    pub(crate) fn config(&self) -> IdempotencyConfig {
        self.config
    }

    /// Claims `key` for a command of type `ty` whose payload has `digest`.
    pub(crate) fn claim(&self, ty: &str, key: &str, digest: Digest) -> Claim {
        let mut inner = lock(&self.inner);
        self.expire(&mut inner);
        let scoped: Key = (ty.into(), key.into());
        if let Some(Slot::Done { at, size, .. }) = inner.slots.get(&scoped)
            && at.elapsed() >= self.config.ttl
        {
            let size = *size;
            inner.slots.remove(&scoped);
            inner.bytes -= size;
        }
        match inner.slots.get(&scoped) {
            Some(
                Slot::Running {
                    digest: running, ..
                }
                | Slot::Done {
                    digest: running, ..
                },
            ) if *running != digest => return Claim::Conflict,
            Some(Slot::Running { done, .. }) => {
                // Made under the lock, before the run can end: `notify_waiters` wakes every
                // future made before it, polled or not.
                return Claim::Wait(Arc::clone(done).notified_owned());
            }
            Some(Slot::Done { outcome, .. }) => return Claim::Replay(outcome.clone()),
            None => {}
        }
        let generation = inner.next_generation;
        inner.next_generation += 1;
        inner.slots.insert(
            scoped.clone(),
            Slot::Running {
                digest,
                generation,
                done: Arc::new(Notify::new()),
            },
        );
        inner.order.push_back((scoped.clone(), generation));
        Claim::Run(Running {
            record: self.clone(),
            key: Some(scoped),
            generation,
        })
    }

    /// Forgets what is past its time or beyond the bounds, oldest first; never a run under
    /// way (runs are bounded by the handlers' concurrency, and end).
    fn expire(&self, inner: &mut Inner) {
        let now = Instant::now();
        let mut i = 0;
        while let Some((key, place)) = inner.order.get(i) {
            match inner.slots.get(key) {
                Some(Slot::Done { generation, at, .. }) if generation == place => {
                    let old = now.saturating_duration_since(*at) >= self.config.ttl;
                    let over = inner.slots.len() > self.config.max_entries
                        || inner.bytes > self.config.max_bytes;
                    if !(old || over) {
                        // Everything behind it was recorded later.
                        return;
                    }
                    if let Some((key, _)) = inner.order.remove(i)
                        && let Some(Slot::Done { size, .. }) = inner.slots.remove(&key)
                    {
                        inner.bytes -= size;
                    }
                }
                Some(Slot::Running { generation, .. }) if generation == place => i += 1,
                // Forgotten, or recorded again since: a stale place.
                _ => {
                    inner.order.remove(i);
                }
            }
        }
    }
}

impl Running {
    /// Records the outcome of the run when a second run would repeat it, else forgets the
    /// key; wakes whoever waits for it.
    pub(crate) fn finish(mut self, outcome: &Result<Bytes, ServeError>) {
        let Some(key) = self.key.take() else { return };
        let recorded = match outcome {
            Ok(_) => true,
            Err(e) => matches!(
                e.kind,
                ErrorKind::Remote | ErrorKind::InvalidPayload | ErrorKind::Conflict
            ),
        };
        let mut inner = lock(&self.record.inner);
        let done = match inner.slots.remove(&key) {
            Some(Slot::Running {
                digest,
                generation,
                done,
            }) if generation == self.generation => {
                if recorded {
                    let size = match outcome {
                        Ok(body) => body.len(),
                        Err(e) => e.message.len(),
                    } + key.0.len()
                        + key.1.len();
                    inner.bytes += size;
                    inner.slots.insert(
                        key,
                        Slot::Done {
                            digest,
                            generation,
                            outcome: outcome.clone(),
                            size,
                            at: Instant::now(),
                        },
                    );
                }
                Some(done)
            }
            // Not ours (cannot happen: only this run removes its slot); put it back.
            Some(other) => {
                inner.slots.insert(key, other);
                None
            }
            None => None,
        };
        self.record.expire(&mut inner);
        drop(inner);
        if let Some(done) = done {
            done.notify_waiters();
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Cancelled before it finished: forget the key, so that a waiter or a retry runs.
        let Some(key) = self.key.take() else { return };
        let mut inner = lock(&self.record.inner);
        let done = match inner.slots.get(&key) {
            Some(Slot::Running { generation, .. }) if *generation == self.generation => {
                match inner.slots.remove(&key) {
                    Some(Slot::Running { done, .. }) => Some(done),
                    _ => None,
                }
            }
            _ => None,
        };
        drop(inner);
        if let Some(done) = done {
            done.notify_waiters();
        }
    }
}

/// The error of a key used again with another payload.
pub(crate) fn conflict(ty: &str, key: &str) -> ServeError {
    let shown: String = key.chars().take(64).collect();
    ServeError::new(
        ErrorKind::Conflict,
        format!(
            "idempotency key {shown:?} was first used for a {ty} with another payload; send \
             that same payload to get its answer again, or use a new key for a new command"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &'static str) -> Result<Bytes, ServeError> {
        Ok(Bytes::from_static(body.as_bytes()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_key_is_bound_to_its_payload_and_forgotten_after_its_time() {
        let record = Record::new(IdempotencyConfig::default());
        let (a, b) = (Digest::of(b"{\"n\":1}"), Digest::of(b"{\"n\":2}"));
        let Claim::Run(run) = record.claim("t.v1", "k", a) else {
            panic!("a new key runs")
        };
        assert!(matches!(record.claim("t.v1", "k", b), Claim::Conflict));
        let Claim::Wait(wait) = record.claim("t.v1", "k", a) else {
            panic!("the same payload waits for the run")
        };
        run.finish(&ok("2"));
        wait.await;
        let Claim::Replay(Ok(body)) = record.claim("t.v1", "k", a) else {
            panic!("the answer is replayed")
        };
        assert_eq!(&body[..], b"2");
        assert!(matches!(record.claim("t.v1", "k", b), Claim::Conflict));
        // Another type: another scope.
        assert!(matches!(record.claim("u.v1", "k", b), Claim::Run(_)));
        tokio::time::advance(IdempotencyConfig::default().ttl).await;
        assert!(matches!(record.claim("t.v1", "k", b), Claim::Run(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_a_retry_may_cure_is_not_recorded_nor_a_cancelled_run() {
        let record = Record::new(IdempotencyConfig::default());
        let d = Digest::of(b"{}");
        let Claim::Run(run) = record.claim("t.v1", "k", d) else {
            panic!()
        };
        run.finish(&Err(ServeError::new(ErrorKind::Unavailable, "down")));
        let Claim::Run(run) = record.claim("t.v1", "k", d) else {
            panic!("runs again after a retryable failure")
        };
        let Claim::Wait(wait) = record.claim("t.v1", "k", d) else {
            panic!()
        };
        drop(run);
        wait.await;
        assert!(matches!(record.claim("t.v1", "k", d), Claim::Run(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn the_record_is_bounded_oldest_first() {
        let record = Record::new(IdempotencyConfig {
            max_entries: 3,
            max_bytes: 1024,
            ..IdempotencyConfig::default()
        });
        let d = Digest::of(b"{}");
        for key in ["a", "b", "c", "d"] {
            let Claim::Run(run) = record.claim("t.v1", key, d) else {
                panic!()
            };
            run.finish(&ok("1"));
        }
        let inner = lock(&record.inner);
        assert!(inner.slots.len() <= 3);
        assert!(!inner.slots.contains_key(&("t.v1".into(), "a".into())));
        drop(inner);
        let Claim::Run(run) = record.claim("t.v1", "big", d) else {
            panic!()
        };
        run.finish(&Ok(Bytes::from(vec![b'1'; 2000])));
        assert!(lock(&record.inner).bytes <= 1024);
    }
}
