//! The relay: a background task that publishes an outbox's committed rows and deletes them.
//!
//! # One round
//! 1. **Claim** up to `batch_size` rows in staging order (see the database files for how:
//!    PostgreSQL locks them with `FOR UPDATE SKIP LOCKED` inside a transaction, SQLite writes
//!    a lease into them). Rows behind an earlier row of their (topic, subject) that another
//!    relay holds are not claimed.
//! 2. **Publish** them: one lane per (topic, subject), lanes concurrently, each lane in
//!    staging order, one publish after the other, each awaited until the bus acknowledged it
//!    durably. A failed publish stops its lane (the rest of that subject waits for the next
//!    round); other subjects go on.
//! 3. **Mark sent:** delete the published rows, count a failed attempt on the failed ones and
//!    give the others back, in one transaction.
//!
//! A crash between 2 and 3 publishes the batch again in the next round, with the same
//! envelope ids (de-duplicated by JetStream, or by the consumers' inboxes). Between rounds
//! the relay sleeps until [`Outbox::notify`](super::Outbox::notify) or the poll interval;
//! after a round that published something it claims again at once, so a backlog drains at
//! full speed.
//!
//! # Leases (SQLite)
//! A SQLite claim lasts `lease` (2 s by default) and the relay renews it every third of that
//! while it publishes. A relay that dies holds its rows until the lease lapses; one that
//! stalls longer than its lease (a paused process) may find its rows taken and republished by
//! another relay, and then publishes its own copies late: duplicates by id, possibly after
//! later events of the same subject. PostgreSQL claims are locks and never lapse (a stalled
//! relay holds its subjects until it resumes or its connection dies).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::dialect::{ClaimedRow, OutboxSql, Outcome};
use super::{Counters, Outbox, damaged};
use crate::backend::Bus;
use crate::event::Publisher;
use crate::sql::{Database, now_ms};
use crate::{Error, ErrorKind};
use tabgrab_core::telemetry::trace::{Kind, Parent, Span, Start, Value};

/// The CloudEvents `source` of the relay's publishers (never stamped: envelopes are staged
/// complete).
const RELAY_SOURCE: &str = "/tabgrab/outbox-relay";

/// A moment in a relay's round, handed to a [`RelayBuilder::hook`] (metrics, tracing, and
/// the fault-injection tests that crash a relay at each of these points).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayEvent {
    /// A batch was claimed.
    Claimed {
        /// Rows in the batch.
        rows: usize,
    },
    /// The bus acknowledged the publish of one row (it is not yet marked sent).
    Published {
        /// The row's staging sequence number.
        seq: i64,
        /// The envelope id.
        id: String,
        /// How many rows of this batch are published so far, this one included.
        published_in_batch: usize,
        /// Rows in the batch.
        batch: usize,
    },
    /// Every lane of the batch is done; the published rows are about to be marked sent.
    MarkingSent {
        /// Rows about to be deleted.
        sent: usize,
    },
}

/// A hook called at each [`RelayEvent`].
type Hook = Arc<dyn Fn(&RelayEvent) + Send + Sync>;

/// Builds a [`Relay`]: [`Outbox::relay`], then [`RelayBuilder::start`].
pub struct RelayBuilder<DB: Database> {
    /// The outbox whose rows it publishes.
    outbox: Outbox<DB>,
    /// Where it publishes.
    bus: Bus,
    /// The longest sleep between rounds when nothing wakes it.
    poll_interval: Duration,
    /// Most rows per round.
    batch_size: usize,
    /// How long a SQLite claim lasts without renewal.
    lease: Duration,
    /// Called at each moment of a round.
    hook: Option<Hook>,
}

impl<DB: Database> std::fmt::Debug for RelayBuilder<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("outbox", &self.outbox)
            .field("bus", &self.bus)
            .field("poll_interval", &self.poll_interval)
            .field("batch_size", &self.batch_size)
            .field("lease", &self.lease)
            .finish_non_exhaustive()
    }
}

impl<DB: Database> RelayBuilder<DB> {
    /// Defaults: poll every 100 ms, 100 rows per round, 2 s leases.
    pub(crate) fn new(outbox: Outbox<DB>, bus: Bus) -> RelayBuilder<DB> {
        RelayBuilder {
            outbox,
            bus,
            poll_interval: Duration::from_millis(100),
            batch_size: 100,
            lease: Duration::from_secs(2),
            hook: None,
        }
    }

    /// The longest sleep between rounds when nothing notifies the relay (default 100 ms):
    /// how late a row committed by another process (or without [`Outbox::notify`]) may be
    /// published.
    pub fn poll_interval(mut self, interval: Duration) -> RelayBuilder<DB> {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Most rows claimed per round (default 100, at least 1).
    pub fn batch_size(mut self, n: usize) -> RelayBuilder<DB> {
        self.batch_size = n.max(1);
        self
    }

    /// How long a claim lasts on SQLite without renewal (default 2 s, at least 300 ms): the
    /// delay before another relay takes over the rows of a relay that died. Ignored on
    /// PostgreSQL, where a claim is a lock released when the relay's connection closes.
    pub fn lease(mut self, lease: Duration) -> RelayBuilder<DB> {
        self.lease = lease.max(Duration::from_millis(300));
        self
    }

    /// Calls `hook` at each moment of a round (synchronously, on the relay's task: keep it
    /// short).
    pub fn hook(mut self, hook: impl Fn(&RelayEvent) + Send + Sync + 'static) -> RelayBuilder<DB> {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Starts the relay on the current tokio runtime.
    pub fn start(self) -> Relay {
        let cancel = CancellationToken::new();
        let table = self.outbox.table.to_string();
        let stats = Arc::new(RelayCounters::new(vec![(
            crate::telemetry::names::OUTBOX_TABLE,
            table.clone(),
        )]));
        let source: Arc<dyn crate::telemetry::Source> = stats.clone();
        crate::telemetry::register(Arc::downgrade(&source));
        let owner = uuid::Uuid::now_v7().to_string();
        let wake = self.outbox.wake.subscribe();
        let worker = Worker {
            outbox: self.outbox,
            bus: self.bus,
            poll_interval: self.poll_interval,
            batch_size: self.batch_size,
            lease: self.lease,
            hook: self.hook,
            owner: owner.clone(),
            stats: Arc::clone(&stats),
            publishers: HashMap::new(),
            metrics: RelayMetrics::new(&table),
        };
        let task = tokio::spawn(worker.run(wake, cancel.clone()));
        Relay {
            owner,
            cancel,
            task: Some(task),
            stats,
        }
    }
}

/// Counters of one relay; its rows relayed are read from them for metrics.
#[derive(Debug)]
struct RelayCounters {
    /// The metrics' attributes (the outbox table).
    labels: crate::telemetry::Labels,
    /// Rounds that claimed rows.
    rounds: AtomicU64,
    /// Rows claimed.
    claimed: AtomicU64,
    /// Rows the bus acknowledged.
    published: AtomicU64,
    /// Acknowledged as duplicates of the same id.
    duplicates: AtomicU64,
    /// Failed publishes.
    publish_errors: AtomicU64,
    /// Failed claims, renewals, deletes.
    store_errors: AtomicU64,
    dead_lettered: AtomicU64,
}

/// A snapshot of one relay's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Rounds that claimed at least one row.
    pub rounds: u64,
    /// Rows claimed.
    pub claimed: u64,
    /// Rows published (acknowledged by the bus).
    pub published: u64,
    /// Of those, publishes the engine recognised as duplicates of the same id.
    pub duplicates: u64,
    /// Failed publishes (the rows stay and are retried).
    pub publish_errors: u64,
    /// Failed claims, renewals or deletes.
    pub store_errors: u64,
    /// Rows the bus refused for good, moved to the dead-letter table.
    pub dead_lettered: u64,
}

/// A running relay. Dropping it stops the task (without waiting); [`Relay::shutdown`] stops
/// it after its current round and waits.
#[derive(Debug)]
pub struct Relay {
    /// This relay's claim owner id (SQLite leases).
    owner: String,
    /// Stops the task.
    cancel: CancellationToken,
    /// The task, taken by `shutdown`.
    task: Option<JoinHandle<()>>,
    /// The counters.
    stats: Arc<RelayCounters>,
}

impl Relay {
    /// This relay's id (the owner of its SQLite leases).
    pub fn id(&self) -> &str {
        &self.owner
    }

    /// This relay's counters.
    pub fn stats(&self) -> RelayStats {
        let s = &self.stats;
        RelayStats {
            rounds: s.rounds.load(Ordering::Relaxed),
            claimed: s.claimed.load(Ordering::Relaxed),
            published: s.published.load(Ordering::Relaxed),
            duplicates: s.duplicates.load(Ordering::Relaxed),
            publish_errors: s.publish_errors.load(Ordering::Relaxed),
            store_errors: s.store_errors.load(Ordering::Relaxed),
            dead_lettered: s.dead_lettered.load(Ordering::Relaxed),
        }
    }

    /// Stops the relay after its current round (a batch being published is finished and
    /// marked sent) and waits for it.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.await.map_err(|e| {
                Error::new(
                    ErrorKind::Closed,
                    format!("outbox relay {} stopped abnormally: {e}", self.owner),
                )
            })?;
        }
        Ok(())
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The relay's task state.
struct Worker<DB: Database> {
    /// The rows' table, the pool, the wake-ups and the shared counters.
    outbox: Outbox<DB>,
    /// Where the rows are published.
    bus: Bus,
    /// The longest sleep between rounds.
    poll_interval: Duration,
    /// Most rows per claim.
    batch_size: usize,
    /// How long a SQLite claim lasts without renewal.
    lease: Duration,
    /// Called at each moment of a round.
    hook: Option<Hook>,
    /// This relay's id, written into its SQLite leases.
    owner: String,
    /// This relay's own counters.
    stats: Arc<RelayCounters>,
    /// One publisher per topic, made on first use.
    publishers: HashMap<String, Publisher>,
    /// The relay's metric handles.
    metrics: RelayMetrics,
}

impl RelayCounters {
    fn new(labels: crate::telemetry::Labels) -> RelayCounters {
        RelayCounters {
            labels,
            rounds: AtomicU64::new(0),
            claimed: AtomicU64::new(0),
            published: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            store_errors: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
        }
    }
}

impl crate::telemetry::Source for RelayCounters {
    fn sample(&self, out: &mut crate::telemetry::Samples) {
        use crate::telemetry::names;
        let published = self.published.load(Ordering::Relaxed);
        out.counter(names::OUTBOX_RELAYED, &self.labels, published);
    }
}

impl Drop for RelayCounters {
    fn drop(&mut self) {
        crate::telemetry::retire(self);
    }
}

/// A relay's metric handles (its rows relayed are its counters, [`RelayCounters`]).
struct RelayMetrics {
    lag: metrics::Histogram,
    backlog: metrics::Gauge,
    /// When the backlog was last counted (at most once a second while rows flow).
    counted: Option<std::time::Instant>,
}

impl RelayMetrics {
    fn new(table: &str) -> RelayMetrics {
        use crate::telemetry::names;
        let labels = [(names::OUTBOX_TABLE, table.to_owned())];
        RelayMetrics {
            lag: metrics::histogram!(names::OUTBOX_RELAY_LAG, &labels),
            backlog: metrics::gauge!(names::OUTBOX_BACKLOG, &labels),
            counted: None,
        }
    }
}

/// What publishing one lane produced.
#[derive(Default)]
struct LaneResult {
    /// Published: to delete.
    sent: Vec<i64>,
    /// Failed, with the error: an attempt is counted.
    failed: Vec<(i64, String)>,
    /// Not attempted (behind a failure of their subject): given back.
    untouched: Vec<i64>,
    /// Refused for good (bad input): to the dead-letter table, with the reason and error.
    dead: Vec<(i64, &'static str, String)>,
}

impl<DB: Database> Worker<DB> {
    async fn run(mut self, mut wake: watch::Receiver<u64>, cancel: CancellationToken) {
        tracing::debug!(relay = %self.owner, table = %self.outbox.table, "outbox relay started");
        while !cancel.is_cancelled() {
            // Seen before the claim: a notify from here on triggers another round.
            wake.borrow_and_update();
            let progressed = self.round().await;
            if !progressed {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = wake.changed() => {}
                    () = tokio::time::sleep(self.poll_interval) => {}
                }
            }
        }
        tracing::debug!(relay = %self.owner, "outbox relay stopped");
    }

    fn emit(&self, event: &RelayEvent) {
        if let Some(hook) = &self.hook {
            hook(event);
        }
    }

    fn counters(&self) -> &Counters {
        &self.outbox.counters
    }

    fn store_error(&self, operation: &str, e: &sqlx::Error) {
        self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
        self.counters().store_errors.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(relay = %self.owner, table = %self.outbox.table, error = %e, "outbox relay: {operation} failed; retrying after the poll interval");
    }

    /// One claim-publish-mark round. Returns whether it published anything.
    async fn round(&mut self) -> bool {
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let now = now_ms();
        let limit = i64::try_from(self.batch_size).unwrap_or(i64::MAX);
        let pool = self.outbox.pool.clone();
        let table = Arc::clone(&self.outbox.table);
        let started = std::time::Instant::now();
        let claimed = <DB as OutboxSql>::claim(
            &pool,
            &table,
            &self.owner,
            limit,
            now,
            now.saturating_add(lease_ms),
        )
        .await;
        let (claim, rows) = match claimed {
            Ok(c) => c,
            Err(e) => {
                self.store_error("claim", &e);
                return false;
            }
        };
        if rows.is_empty() {
            let empty = Outcome {
                sent: &[],
                failed: &[],
                untouched: &[],
                dead: &[],
            };
            if let Err(e) =
                <DB as OutboxSql>::finish(claim, &pool, &table, &self.owner, empty).await
            {
                self.store_error("end an empty claim", &e);
            }
            self.metrics.backlog.set(0.0);
            return false;
        }
        if self
            .metrics
            .counted
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.metrics.counted = Some(std::time::Instant::now());
            if let Ok(pending) = self.outbox.pending().await {
                self.metrics.backlog.set(pending as f64);
            }
        }
        let claimed_after = started.elapsed();
        self.stats.rounds.fetch_add(1, Ordering::Relaxed);
        self.stats
            .claimed
            .fetch_add(rows.len() as u64, Ordering::Relaxed);
        self.emit(&RelayEvent::Claimed { rows: rows.len() });

        let bad_topics = self.prepare_publishers(&rows);
        let result = {
            let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
            let publish = self.publish(&rows, &bad_topics);
            tokio::pin!(publish);
            let mut renew = tokio::time::interval(self.lease / 3);
            renew.tick().await; // the first tick is immediate
            loop {
                tokio::select! {
                    result = &mut publish => break result,
                    _ = renew.tick() => {
                        let until = now_ms().saturating_add(lease_ms);
                        match <DB as OutboxSql>::renew(&pool, &table, &self.owner, &seqs, until).await {
                            Ok(held) if held < seqs.len() as u64 => tracing::warn!(
                                relay = %self.owner, held, claimed = seqs.len(),
                                "outbox relay: some claimed rows were taken over (lease lapsed); they may be published twice"
                            ),
                            Ok(_) => {}
                            Err(e) => {
                                self.stats.store_errors.fetch_add(1, Ordering::Relaxed);
                                self.outbox.counters.store_errors.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(relay = %self.owner, error = %e, "outbox relay: lease renewal failed");
                            }
                        }
                    }
                }
            }
        };
        let published_after = started.elapsed();
        let published = !result.sent.is_empty();
        self.emit(&RelayEvent::MarkingSent {
            sent: result.sent.len(),
        });
        let outcome = Outcome {
            sent: &result.sent,
            failed: &result.failed,
            untouched: &result.untouched,
            dead: &result.dead,
        };
        match <DB as OutboxSql>::finish(claim, &pool, &table, &self.owner, outcome).await {
            Ok(()) => {
                self.counters()
                    .marked_sent
                    .fetch_add(result.sent.len() as u64, Ordering::Relaxed);
                let dead = result.dead.len() as u64;
                self.stats.dead_lettered.fetch_add(dead, Ordering::Relaxed);
                self.counters()
                    .dead_lettered
                    .fetch_add(dead, Ordering::Relaxed);
            }
            // The rows stay (SQLite: until the lease lapses; PostgreSQL: the rollback frees
            // them now) and are published again: duplicates by id, never a loss.
            Err(e) => self.store_error("mark sent", &e),
        }
        // Where a round's time goes: a claim or a "mark sent" that waits long is a relay
        // queued behind the application's transactions on a small pool.
        tracing::debug!(
            relay = %self.owner, rows = rows.len(),
            claim_us = micros(claimed_after),
            publish_us = micros(published_after.saturating_sub(claimed_after)),
            mark_sent_us = micros(started.elapsed().saturating_sub(published_after)),
            "outbox relay round"
        );
        published
    }

    /// Makes the publishers a batch needs; returns the topics that have none, with why.
    fn prepare_publishers(&mut self, rows: &[ClaimedRow]) -> HashMap<String, String> {
        let mut bad_topics: HashMap<String, String> = HashMap::new();
        for row in rows {
            if !self.publishers.contains_key(&row.topic) && !bad_topics.contains_key(&row.topic) {
                match Publisher::new(&self.bus, &row.topic, RELAY_SOURCE) {
                    Ok(p) => {
                        self.publishers.insert(row.topic.clone(), p);
                    }
                    Err(e) => {
                        bad_topics.insert(row.topic.clone(), e.to_string());
                    }
                }
            }
        }
        bad_topics
    }

    /// Publishes a claimed batch: lanes per (topic, subject), concurrently.
    fn publish<'a>(
        &'a self,
        rows: &'a [ClaimedRow],
        bad_topics: &'a HashMap<String, String>,
    ) -> impl std::future::Future<Output = LaneResult> + 'a {
        let mut lanes: Vec<Vec<&ClaimedRow>> = Vec::new();
        let mut index: HashMap<(&str, &str), usize> = HashMap::new();
        for row in rows {
            let key = (row.topic.as_str(), row.subject.as_str());
            let i = *index.entry(key).or_insert_with(|| {
                lanes.push(Vec::new());
                lanes.len() - 1
            });
            lanes[i].push(row);
        }
        let this = self;
        let done = Arc::new(AtomicU64::new(0));
        let batch = rows.len();
        async move {
            let results = futures::future::join_all(lanes.into_iter().map(|lane| {
                let done = Arc::clone(&done);
                async move {
                    let mut out = LaneResult::default();
                    let mut stopped = false;
                    for row in lane {
                        if stopped {
                            out.untouched.push(row.seq);
                            continue;
                        }
                        match this.publish_row(row, bad_topics).await {
                            Ok(()) => {
                                out.sent.push(row.seq);
                                let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                                this.emit(&RelayEvent::Published {
                                    seq: row.seq,
                                    id: row.id.clone(),
                                    published_in_batch: usize::try_from(n).unwrap_or(usize::MAX),
                                    batch,
                                });
                            }
                            Err(e) if refused_for_good(e.kind()) => {
                                // No retry can publish it (too large, malformed): kept in the
                                // dead-letter table, and its subject goes on.
                                this.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                                this.counters()
                                    .publish_errors
                                    .fetch_add(1, Ordering::Relaxed);
                                tracing::error!(
                                    relay = %this.owner, seq = row.seq, id = %row.id, topic = %row.topic,
                                    error = %e, "outbox relay: the bus refuses this event for good; it goes to the outbox's dead letters"
                                );
                                out.dead.push((row.seq, e.kind().as_str(), e.to_string()));
                            }
                            Err(e) => {
                                this.stats.publish_errors.fetch_add(1, Ordering::Relaxed);
                                this.counters()
                                    .publish_errors
                                    .fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    relay = %this.owner, seq = row.seq, id = %row.id, topic = %row.topic,
                                    error = %e, "outbox relay: publish failed; the row stays and its subject waits for the next round"
                                );
                                out.failed.push((row.seq, e.to_string()));
                                stopped = true;
                            }
                        }
                    }
                    out
                }
            }))
            .await;
            let mut all = LaneResult::default();
            for r in results {
                all.sent.extend(r.sent);
                all.failed.extend(r.failed);
                all.untouched.extend(r.untouched);
                all.dead.extend(r.dead);
            }
            all
        }
    }

    /// Publishes one row and counts it.
    async fn publish_row(
        &self,
        row: &ClaimedRow,
        bad_topics: &HashMap<String, String>,
    ) -> Result<(), Error> {
        if let Some(why) = bad_topics.get(&row.topic) {
            return Err(Error::new(ErrorKind::Malformed, why.clone()));
        }
        let envelope = self
            .outbox
            .codec
            .decode(&row.envelope)
            .map_err(|e| damaged(&self.outbox.table, row.seq, &e))?;
        let publisher = self.publishers.get(&row.topic).ok_or_else(|| {
            Error::new(
                ErrorKind::Closed,
                format!("outbox relay: no publisher for topic {}", row.topic),
            )
        })?;
        // The relayed publish's span continues the trace of the span the row was staged in
        // (its transaction's), so a trace shows how long the event waited in the outbox; the
        // envelope keeps that context, and its consumers' spans are children of it too.
        let span = Span::start(Start {
            kind: Kind::Producer,
            parent: Parent::Carried(envelope.traceparent.as_deref()),
            name: ("send", &row.topic),
            attributes: &[
                ("messaging.system", Value::Str(publisher.system())),
                ("messaging.destination.name", Value::Str(&row.topic)),
                ("messaging.operation.type", Value::Str("send")),
                ("messaging.message.id", Value::Str(&row.id)),
                ("tabgrab.outbox.table", Value::Str(&self.outbox.table)),
            ],
        });
        // Decoded to check the row and for engines with a binding of their own; the
        // embedded log appends the stored bytes as they are (encoded once, at staging).
        let receipt = span
            .instrument(publisher.publish_encoded(&envelope, row.envelope.clone()))
            .await?;
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        self.counters().published.fetch_add(1, Ordering::Relaxed);
        if let Some(time) = envelope.time {
            let lag = time::OffsetDateTime::now_utc() - time;
            self.metrics.lag.record(lag.as_seconds_f64().max(0.0));
        }
        if receipt.duplicate {
            self.stats.duplicates.fetch_add(1, Ordering::Relaxed);
            self.counters().duplicates.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

/// Whole microseconds, for logs.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whether a publish error means the event can never be published (bad input: too large for
/// the bus, malformed, a type or attribute the bus refuses), so retrying would block its
/// subject forever.
fn refused_for_good(kind: ErrorKind) -> bool {
    kind.is_bad_input()
}
