//! A consumer group on the embedded log, served through the [`Backend`](super::Backend)
//! contract like a broker's: the log is read once per group, and each record goes to one
//! member as a [`Delivery`] that the member settles with its acker.
//!
//! # Offsets
//! The group's watermark is the lowest offset handed out and not yet settled (or, with
//! nothing out, the next offset to read): everything below it is finished, so a crash
//! redelivers only work at or above it (at least once). It is committed every
//! `commit_interval`, on [`Backend::flush`](super::Backend::flush) (a stopping member's last
//! step) and when a group starts at a new position.
//!
//! # Members and order
//! Every subscription of a group in this process is a member with its own delivery channel.
//! A record goes to the member that holds unsettled records of its subject, otherwise to
//! the next member in turn, so order per subject holds across the whole group
//! ([`Capabilities::group_wide_order`](super::Capabilities::group_wide_order)). A record
//! given back ([`Acker::nack`]) or dropped unsettled goes out again before any newer record;
//! while a departed member still holds records of a subject, the subject's newer records
//! wait (parked) until those are settled.
//!
//! # Damage
//! A damaged range of the log is delivered once as a record that does not decode (kind
//! [`ErrorKind::DataLoss`]), so the member dead-letters it with its reason; the group moves
//! past the range only when that dead letter is settled. Records deleted by retention before
//! the group read them are skipped with an error in the log.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use tabgrab_log::Log;
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use super::storage;
use crate::backend::{Acker, Deliveries, Delivery};
use crate::event::StartFrom;
use crate::{Codec, Envelope, Error, ErrorKind};

/// How many deliveries wait in a member's channel (beyond what it holds): what it gives back
/// when it stops.
const CHANNEL: usize = 256;

/// How many records one read of the log takes.
const BATCH: usize = 256;

/// A record to hand out: read from the log, or given back.
#[derive(Clone)]
enum Item {
    /// A record of the log.
    Record { offset: u64, payload: Bytes },
    /// A damaged range `offset..end`: delivered as undecodable, with why.
    Loss {
        offset: u64,
        end: u64,
        message: Arc<str>,
    },
}

impl Item {
    fn offset(&self) -> u64 {
        match self {
            Item::Record { offset, .. } | Item::Loss { offset, .. } => *offset,
        }
    }
}

/// A member: where its deliveries go.
struct Member {
    id: u64,
    sender: mpsc::Sender<Result<Delivery, Error>>,
}

/// Mutable state of a group.
struct State {
    members: Vec<Member>,
    next_member: usize,
    next_member_id: u64,
    /// Offsets handed out (or waiting to go out again) and not settled.
    pending: BTreeSet<u64>,
    /// Given back, waiting to go out again, oldest first.
    redeliver: BTreeMap<u64, Item>,
    /// Subjects with records out: the member holding them, and how many.
    affinity: HashMap<Arc<str>, (u64, u32)>,
    /// Records of subjects whose holder has left, waiting until its records are settled.
    parked: HashMap<Arc<str>, BTreeMap<u64, Item>>,
    /// Deliveries of records handed out more than once.
    attempts: HashMap<u64, u32>,
    /// The next offset to read from the log.
    next_read: u64,
    /// The offset committed last.
    committed: u64,
    /// Whether the reader task runs.
    reading: bool,
    /// Bumped when the group starts over at a new position: ackers of an older generation
    /// settle nothing.
    generation: u64,
    /// Set when the log can produce nothing more.
    closed: Option<Error>,
    commit_interval: Duration,
}

impl State {
    fn watermark(&self) -> u64 {
        self.pending.first().copied().unwrap_or(self.next_read)
    }
}

/// A consumer group of one topic on the embedded bus.
pub(crate) struct LogGroup {
    topic: Arc<str>,
    name: Arc<str>,
    log: Log,
    codec: Codec,
    state: Mutex<State>,
    /// Wakes the reader: something was given back, or a member came or went.
    wake: Notify,
    /// Serialises commits so that an older watermark never overwrites a newer one.
    commit_lock: tokio::sync::Mutex<()>,
}

/// Locks a mutex, recovering the data if a panic poisoned it (the critical sections leave
/// the state consistent at every step).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LogGroup {
    /// How many members the group has now.
    pub(crate) fn members(&self) -> usize {
        lock(&self.state).members.len()
    }

    /// Opens the group `name` of `topic`: it resumes at its committed offset, or starts at the
    /// beginning of the log, and is recorded at once (its lag can then be asked).
    pub(crate) fn open(
        topic: &str,
        name: &str,
        log: Log,
        codec: Codec,
    ) -> Result<Arc<LogGroup>, Error> {
        let committed = log
            .consumer_offset(name)
            .map_err(|e| storage(topic, "read group offset", e))?;
        let start = match committed {
            Some(offset) => offset,
            None => {
                let start = log.start_offset();
                log.commit_consumer(name, start)
                    .map_err(|e| storage(topic, "commit group offset", e))?;
                start
            }
        };
        Ok(Arc::new(LogGroup {
            topic: topic.into(),
            name: name.into(),
            log,
            codec,
            state: Mutex::new(State {
                members: Vec::new(),
                next_member: 0,
                next_member_id: 1,
                pending: BTreeSet::new(),
                redeliver: BTreeMap::new(),
                affinity: HashMap::new(),
                parked: HashMap::new(),
                attempts: HashMap::new(),
                next_read: start,
                committed: start,
                reading: false,
                generation: 0,
                closed: None,
                commit_interval: Duration::from_secs(1),
            }),
            wake: Notify::new(),
            commit_lock: tokio::sync::Mutex::new(()),
        }))
    }

    /// How many records of the topic the group has not finished (the end of the log minus
    /// the watermark).
    pub(crate) fn lag(&self) -> u64 {
        let watermark = lock(&self.state).watermark();
        self.log.end_offset().saturating_sub(watermark)
    }

    /// Adds a member. With no member running, a start position other than `Committed` moves
    /// the group there first; with members running it joins them where they are.
    pub(crate) fn join(
        self: &Arc<LogGroup>,
        start: StartFrom,
        commit_interval: Duration,
        stop: CancellationToken,
    ) -> Result<Deliveries, Error> {
        let (sender, receiver) = mpsc::channel(CHANNEL);
        let (id, start_reader, moved_to) = {
            let mut state = lock(&self.state);
            if let Some(error) = &state.closed {
                return Err(Error::new(
                    error.kind(),
                    format!(
                        "group {} of topic {}: the topic's log stopped: {error}",
                        self.name, self.topic
                    ),
                ));
            }
            let mut moved_to = None;
            if state.members.is_empty() && start != StartFrom::Committed {
                let log = &self.log;
                let clamp = |o: u64| o.clamp(log.start_offset(), log.end_offset());
                let to = match start {
                    StartFrom::Committed => state.next_read,
                    StartFrom::Beginning => log.start_offset(),
                    StartFrom::Offset(o) => clamp(o),
                    StartFrom::Time(t) => clamp(log.offset_at_time(t)),
                    StartFrom::Latest => log.end_offset(),
                };
                state.generation += 1;
                state.pending.clear();
                state.redeliver.clear();
                state.affinity.clear();
                state.parked.clear();
                state.attempts.clear();
                state.next_read = to;
                moved_to = Some(to);
            }
            state.commit_interval = commit_interval;
            let id = state.next_member_id;
            state.next_member_id += 1;
            state.members.push(Member { id, sender });
            let start_reader = !state.reading;
            state.reading = true;
            (id, start_reader, moved_to)
        };
        if let Some(to) = moved_to {
            // Recorded at once, as a broker resets its consumer.
            self.log
                .commit_consumer(&self.name, to)
                .map_err(|e| storage(&self.topic, "commit group offset", e))?;
            lock(&self.state).committed = to;
        }
        tracing::debug!(topic = %self.topic, group = %self.name, member = id, "member joined");
        if start_reader {
            tokio::spawn(Arc::clone(self).read());
        } else {
            self.wake.notify_one();
        }
        // The member leaves when it stops: its channel then yields what is already in it and
        // ends, and the member gives that back.
        let group = Arc::clone(self);
        tokio::spawn(async move {
            stop.cancelled().await;
            group.leave(id);
        });
        let mut receiver = receiver;
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            receiver.poll_recv(cx)
        })))
    }

    /// Removes a member: no more deliveries go to it.
    fn leave(&self, id: u64) {
        lock(&self.state).members.retain(|m| m.id != id);
        self.wake.notify_one();
    }

    /// The reader: hands out given-back records first, then the log's, until no member is
    /// left (the next member starts it again).
    async fn read(self: Arc<LogGroup>) {
        let mut reader = self.log.reader(lock(&self.state).next_read);
        let interval = lock(&self.state).commit_interval;
        let mut tick = tokio::time::interval(interval.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            self.hand_out_given_back().await;
            {
                let mut state = lock(&self.state);
                if state.members.is_empty() {
                    state.reading = false;
                    return;
                }
                if state.next_read != reader.position() {
                    // The group moved (a new start position, a damaged range passed): read
                    // from there.
                    reader.seek(state.next_read);
                }
            }
            let batch = tokio::select! {
                biased;
                () = self.wake.notified() => continue,
                _ = tick.tick() => { self.commit_in_background(); continue; }
                batch = reader.next_batch(BATCH) => batch,
            };
            match batch {
                Ok(records) => {
                    for record in records {
                        // Given-back records are older than anything read now: they go first.
                        self.hand_out_given_back().await;
                        let item = Item::Record {
                            offset: record.offset,
                            // A copy: the record is a slice of a 64 KiB read chunk, which a
                            // slice would keep alive for as long as the delivery waits.
                            payload: Bytes::copy_from_slice(&record.payload),
                        };
                        {
                            let mut state = lock(&self.state);
                            state.pending.insert(record.offset);
                            state.next_read = record.offset + 1;
                        }
                        self.hand_out(item).await;
                    }
                }
                Err(error) => {
                    if !self.read_failed(&mut reader, error).await {
                        return;
                    }
                }
            }
        }
    }

    /// Hands out every given-back record, oldest first.
    async fn hand_out_given_back(self: &Arc<LogGroup>) {
        loop {
            let item = {
                let mut state = lock(&self.state);
                if state.members.is_empty() {
                    return;
                }
                match state.redeliver.pop_first() {
                    Some((_, item)) => item,
                    None => return,
                }
            };
            self.hand_out(item).await;
        }
    }

    /// Sends one pending record to a member (or parks it, or keeps it for later when no
    /// member is left).
    async fn hand_out(self: &Arc<LogGroup>, item: Item) {
        let offset = item.offset();
        let (envelope, raw) = match &item {
            Item::Record { payload, .. } => (self.codec.decode_shared(payload), payload.clone()),
            Item::Loss { message, .. } => (
                Err(Error::new(ErrorKind::DataLoss, message.to_string())),
                Bytes::copy_from_slice(message.as_bytes()),
            ),
        };
        let key: Option<Arc<str>> = envelope
            .as_ref()
            .ok()
            .map(|e: &Envelope| Arc::from(e.subject.as_deref().unwrap_or(e.id.as_str())));
        let (member, sender, attempt, generation) = {
            let mut state = lock(&self.state);
            if let Some(key) = &key
                && let Some(parked) = state.parked.get_mut(key)
            {
                parked.insert(offset, item);
                return;
            }
            let owner = key
                .as_ref()
                .and_then(|k| state.affinity.get(k).map(|(m, _)| (Arc::clone(k), *m)));
            let member = match owner {
                Some((key, owner)) => match state.members.iter().find(|m| m.id == owner) {
                    Some(m) => (m.id, m.sender.clone()),
                    None => {
                        // Its subject's holder left with records out: wait for them.
                        state.parked.entry(key).or_default().insert(offset, item);
                        return;
                    }
                },
                None => {
                    if state.members.is_empty() {
                        state.redeliver.insert(offset, item);
                        return;
                    }
                    let i = state.next_member % state.members.len();
                    state.next_member = state.next_member.wrapping_add(1);
                    let m = &state.members[i];
                    (m.id, m.sender.clone())
                }
            };
            if let Some(key) = &key {
                state
                    .affinity
                    .entry(Arc::clone(key))
                    .or_insert((member.0, 0))
                    .1 += 1;
            }
            let attempt = state.attempts.get(&offset).copied().unwrap_or(0) + 1;
            (member.0, member.1, attempt, state.generation)
        };
        let acker = LogAcker {
            group: Arc::clone(self),
            offset,
            key,
            item,
            generation,
            settled: AtomicBool::new(false),
        };
        let delivery = Delivery {
            envelope,
            raw,
            position: offset,
            attempt,
            pending: self.log.end_offset().saturating_sub(offset + 1),
            acker: Box::new(acker),
        };
        if let Err(mpsc::error::SendError(unsent)) = sender.send(Ok(delivery)).await {
            // The member is gone without stopping: dropping the delivery's acker unsettled
            // gives the record back, and it goes to another member.
            drop(unsent);
            self.leave(member);
        }
    }

    /// Settles a record handed out to `member`: done, or given back.
    fn settle(&self, acker: &LogAcker, done: bool) {
        if acker.settled.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut state = lock(&self.state);
        if state.generation != acker.generation {
            return;
        }
        if let Some(key) = &acker.key {
            let free = match state.affinity.get_mut(key) {
                Some((_, count)) => {
                    *count = count.saturating_sub(1);
                    *count == 0
                }
                None => false,
            };
            if free {
                state.affinity.remove(key);
                if let Some(parked) = state.parked.remove(key) {
                    state.redeliver.extend(parked);
                }
            }
        }
        let offset = acker.offset;
        if done {
            state.pending.remove(&offset);
            state.attempts.remove(&offset);
            if let Item::Loss { end, .. } = &acker.item {
                // The dead letter of a damaged range is written: the group moves past it.
                state.next_read = state.next_read.max(*end);
            }
        } else {
            *state.attempts.entry(offset).or_insert(0) += 1;
            state.redeliver.insert(offset, acker.item.clone());
        }
        drop(state);
        if !done {
            self.wake.notify_one();
        }
    }

    /// Handles a read error. Returns `false` when the log can produce nothing more (closed or
    /// poisoned): the group's members are then ended.
    async fn read_failed(
        &self,
        reader: &mut tabgrab_log::Reader,
        error: tabgrab_log::Error,
    ) -> bool {
        match error.kind() {
            tabgrab_log::ErrorKind::Closed | tabgrab_log::ErrorKind::Poisoned => {
                tracing::error!(topic = %self.topic, group = %self.name, %error, "the topic's log stopped; the group stops reading");
                let mut state = lock(&self.state);
                state.closed = Some(storage(&self.topic, "read", error));
                state.members.clear();
                state.reading = false;
                false
            }
            tabgrab_log::ErrorKind::Corrupt => {
                let (range, detail) = match error.damaged() {
                    Some(damage) => (damage.offsets.clone(), format!("{damage:?}")),
                    None => (reader.position()..reader.position() + 1, String::new()),
                };
                tracing::error!(topic = %self.topic, group = %self.name, ?range, %error, "DATA LOSS: a damaged range of the log goes to dead letters");
                let item = Item::Loss {
                    offset: range.start,
                    end: range.end,
                    message: format!(
                        "offsets {}..{} are damaged: {error} {detail}",
                        range.start, range.end
                    )
                    .into(),
                };
                {
                    let mut state = lock(&self.state);
                    state.pending.insert(range.start);
                    state.next_read = range.end;
                    state.redeliver.insert(range.start, item);
                }
                reader.seek(range.end);
                true
            }
            tabgrab_log::ErrorKind::Truncated => {
                let start = self.log.start_offset();
                tracing::error!(topic = %self.topic, group = %self.name, from = reader.position(), to = start, "events were deleted by retention before this group read them");
                lock(&self.state).next_read = start;
                reader.seek(start);
                true
            }
            _ => {
                tracing::error!(topic = %self.topic, group = %self.name, %error, "reading the topic failed; retrying in 1 s");
                tokio::select! {
                    () = self.wake.notified() => {}
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                true
            }
        }
    }

    /// Starts a commit without holding up the reader (an offset commit costs two fsyncs).
    fn commit_in_background(self: &Arc<LogGroup>) {
        let group = Arc::clone(self);
        tokio::spawn(async move {
            if let Ok(_serial) = group.commit_lock.try_lock() {
                group.commit_locked().await;
            }
        });
    }

    /// Commits the watermark if it moved.
    pub(crate) async fn commit(&self) {
        let _serial = self.commit_lock.lock().await;
        self.commit_locked().await;
    }

    async fn commit_locked(&self) {
        let watermark = {
            let state = lock(&self.state);
            let watermark = state.watermark();
            if watermark == state.committed {
                return;
            }
            watermark
        };
        let log = self.log.clone();
        let name = Arc::clone(&self.name);
        let result =
            tokio::task::spawn_blocking(move || log.commit_consumer(&name, watermark)).await;
        match result {
            Ok(Ok(())) => lock(&self.state).committed = watermark,
            Ok(Err(e)) => {
                tracing::error!(topic = %self.topic, group = %self.name, error = %e, "offset commit failed");
            }
            Err(e) => {
                tracing::error!(topic = %self.topic, group = %self.name, error = %e, "offset commit task failed");
            }
        }
    }
}

/// Settles one record handed out by a [`LogGroup`]. Dropped unsettled, it gives the record
/// back (a member that vanished loses nothing).
struct LogAcker {
    group: Arc<LogGroup>,
    offset: u64,
    key: Option<Arc<str>>,
    item: Item,
    generation: u64,
    settled: AtomicBool,
}

impl Acker for LogAcker {
    fn ack(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.group.settle(self, true);
        Box::pin(std::future::ready(Ok(())))
    }

    fn nack(&self, delay: Duration) -> BoxFuture<'_, Result<(), Error>> {
        if delay.is_zero() {
            self.group.settle(self, false);
            return Box::pin(std::future::ready(Ok(())));
        }
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            self.group.settle(self, false);
            Ok(())
        })
    }

    fn term(&self) -> BoxFuture<'_, Result<(), Error>> {
        self.ack()
    }

    fn progress(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

impl Drop for LogAcker {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::Acquire) {
            let group = Arc::clone(&self.group);
            group.settle(self, false);
        }
    }
}
