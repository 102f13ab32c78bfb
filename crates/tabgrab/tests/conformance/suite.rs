//! The scenarios of the backend conformance suite, written once against [`Bus`]; the
//! `conformance!` macro instantiates each as its own test per backend.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::event::{Context, HandlerError, Publisher, StartFrom, Subscription};
use tabgrab::messaging::{MemoryStore, Requester, Responder, SendOptions};
use tabgrab::retry::Backoff;
use tabgrab::{Envelope, Message, Rejection};

/// Every wait in the suite is bounded by this.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Message)]
#[message(type = "conformance.ticket.placed.v1", event)]
pub(crate) struct Ticket {
    pub(crate) order: String,
    pub(crate) seq: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Message)]
#[message(type = "conformance.menu.get-price.v1", query, response = u64)]
pub(crate) struct GetPrice {
    pub(crate) pizza: String,
}

/// A bus for one test, with the topics it made (deleted at the end).
pub(crate) struct Fixture {
    pub(crate) bus: Bus,
    /// Keeps the embedded bus directory alive.
    _dir: Option<tempfile::TempDir>,
    /// Keeps a server the test started alive (dropped last: it stops the server).
    _server: Option<Box<dyn std::any::Any + Send>>,
    topics: Mutex<Vec<String>>,
}

impl Fixture {
    pub(crate) fn new(bus: Bus, dir: Option<tempfile::TempDir>) -> Fixture {
        Fixture {
            bus,
            _dir: dir,
            _server: None,
            topics: Mutex::new(Vec::new()),
        }
    }

    /// A fixture on a server of the test's own, stopped when the fixture is dropped.
    #[allow(dead_code)]
    pub(crate) fn on_own_server(bus: Bus, server: Box<dyn std::any::Any + Send>) -> Fixture {
        Fixture {
            _server: Some(server),
            ..Fixture::new(bus, None)
        }
    }

    /// A unique topic (or group) name, remembered for clean-up.
    pub(crate) fn topic(&self, prefix: &str) -> String {
        let name = format!("{prefix}-{}", uuid::Uuid::now_v7().simple());
        self.topics.lock().unwrap().push(name.clone());
        name
    }

    /// Deletes what the test made (brokers only).
    pub(crate) async fn cleanup(self) {
        let topics = self.topics.lock().unwrap().clone();
        for topic in topics {
            self.bus.delete_topic(&topic).await.unwrap();
            self.bus
                .delete_topic(&format!("replies.{topic}"))
                .await
                .unwrap();
        }
    }
}

/// Polls `cond` until it holds or the deadline passes (then fails with `what`).
pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    }
}

type Seen = Arc<Mutex<Vec<(String, u32)>>>;

fn recorder(
    seen: &Seen,
) -> impl Fn(Ticket, Context) -> futures::future::Ready<Result<(), HandlerError>> + Send + Sync + 'static
{
    let seen = Arc::clone(seen);
    move |t: Ticket, _ctx: Context| {
        seen.lock().unwrap().push((t.order, t.seq));
        futures::future::ready(Ok(()))
    }
}

async fn publish_tickets(publisher: &Publisher, orders: &[&str], per_order: u32) {
    for seq in 0..per_order {
        for order in orders {
            let ticket = Ticket {
                order: (*order).into(),
                seq,
            };
            publisher.publish(&ticket, *order).await.unwrap();
        }
    }
}

/// Events of one subject reach a subscription in publish order; every event arrives.
pub(crate) async fn order_is_kept_per_subject(f: Fixture) {
    let topic = f.topic("order");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&f.bus, &topic, "g")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    publish_tickets(&publisher, &["a", "b", "c"], 20).await;
    wait_until("60 events", || seen.lock().unwrap().len() >= 60).await;
    let seen = seen.lock().unwrap().clone();
    for order in ["a", "b", "c"] {
        let seqs: Vec<u32> = seen
            .iter()
            .filter(|(o, _)| o == order)
            .map(|(_, s)| *s)
            .collect();
        assert_eq!(
            seqs,
            (0..20).collect::<Vec<_>>(),
            "order of subject {order}"
        );
    }
    sub.shutdown().await.unwrap();
    f.cleanup().await;
}

/// Every group sees every event; the members of one group share them.
pub(crate) async fn every_group_sees_every_event_and_members_share(f: Fixture) {
    let topic = f.topic("groups");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let (a, b1, b2): (Seen, Seen, Seen) = Default::default();
    let sub_a = Subscription::builder(&f.bus, &topic, "a")
        .handle(recorder(&a))
        .start()
        .unwrap();
    let sub_b1 = Subscription::builder(&f.bus, &topic, "b")
        .handle(recorder(&b1))
        .start()
        .unwrap();
    let sub_b2 = Subscription::builder(&f.bus, &topic, "b")
        .handle(recorder(&b2))
        .start()
        .unwrap();
    for s in [&sub_a, &sub_b1, &sub_b2] {
        s.ready().await.unwrap();
    }
    let orders: Vec<String> = (0..10).map(|i| format!("o{i}")).collect();
    let refs: Vec<&str> = orders.iter().map(String::as_str).collect();
    publish_tickets(&publisher, &refs, 10).await;
    let all: HashSet<(String, u32)> = orders
        .iter()
        .flat_map(|o| (0..10).map(move |s| (o.clone(), s)))
        .collect();
    wait_until("group a has all", || {
        a.lock().unwrap().iter().cloned().collect::<HashSet<_>>() == all
    })
    .await;
    wait_until("group b has all, between its members", || {
        let mut union: HashSet<_> = b1.lock().unwrap().iter().cloned().collect();
        union.extend(b2.lock().unwrap().iter().cloned());
        union == all
    })
    .await;
    // Shared, not copied: together the two members handled each event about once (at least
    // once allows a redelivery, not a second copy of everything).
    let total = b1.lock().unwrap().len() + b2.lock().unwrap().len();
    assert!(
        total < 2 * all.len(),
        "members of a group each got a copy: {total}"
    );
    for s in [sub_a, sub_b1, sub_b2] {
        s.shutdown().await.unwrap();
    }
    f.cleanup().await;
}

/// An event whose handler did not finish when its member stopped is handled by the next
/// member of the group (at least once; nothing lost).
pub(crate) async fn unacknowledged_events_are_redelivered_to_the_next_member(f: Fixture) {
    let topic = f.topic("redeliver");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let started = Arc::new(AtomicU32::new(0));
    let first = {
        let started = Arc::clone(&started);
        Subscription::builder(&f.bus, &topic, "kitchen")
            .ack_wait(Duration::from_secs(2))
            .drain_timeout(Duration::from_secs(5))
            .handle(move |_t: Ticket, ctx: Context| {
                let started = Arc::clone(&started);
                async move {
                    started.fetch_add(1, Ordering::SeqCst);
                    // Stuck until the member stops: never acknowledged.
                    ctx.shutdown_requested().await;
                    Err(HandlerError::transient("stopped while baking"))
                }
            })
            .start()
            .unwrap()
    };
    first.ready().await.unwrap();
    publish_tickets(&publisher, &["x", "y"], 2).await;
    wait_until("the first member holds events", || {
        started.load(Ordering::SeqCst) >= 2
    })
    .await;
    first.shutdown().await.unwrap();
    let seen: Seen = Arc::default();
    let second = Subscription::builder(&f.bus, &topic, "kitchen")
        .ack_wait(Duration::from_secs(2))
        .handle(recorder(&seen))
        .start()
        .unwrap();
    second.ready().await.unwrap();
    wait_until("the next member handles all 4", || {
        seen.lock()
            .unwrap()
            .iter()
            .cloned()
            .collect::<HashSet<_>>()
            .len()
            == 4
    })
    .await;
    second.shutdown().await.unwrap();
    f.cleanup().await;
}

/// Members that stop while deliveries keep arriving leave every event they did not finish to
/// the group: none is acknowledged without a handler having run it. (A member stopping
/// between taking a delivery and queueing it once counted it as a type nobody handles and
/// acknowledged it unhandled.)
pub(crate) async fn members_stopping_under_load_lose_nothing(f: Fixture) {
    const CYCLES: usize = 12;
    let topic = f.topic("churn");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let seen: Seen = Arc::default();
    let member = || {
        Subscription::builder(&f.bus, &topic, "kitchen")
            .ack_wait(Duration::from_secs(1))
            .handle(recorder(&seen))
            .start()
            .unwrap()
    };
    // The group exists before the first publish (RabbitMQ keeps nothing for a missing group).
    let mut current = member();
    current.ready().await.unwrap();
    let orders: Vec<String> = (0..16).map(|i| format!("c{i}")).collect();
    let publishing = {
        let orders = orders.clone();
        tokio::spawn(async move {
            let refs: Vec<&str> = orders.iter().map(String::as_str).collect();
            publish_tickets(&publisher, &refs, 25).await;
        })
    };
    // Stop the member whenever it has handled a few more events, while the publisher runs.
    for _ in 0..CYCLES {
        let before = seen.lock().unwrap().len();
        let start = Instant::now();
        while seen.lock().unwrap().len() < before + 10 && start.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        current.shutdown().await.unwrap();
        current = member();
        current.ready().await.unwrap();
    }
    publishing.await.unwrap();
    let all: HashSet<(String, u32)> = orders
        .iter()
        .flat_map(|o| (0..25).map(move |s| (o.clone(), s)))
        .collect();
    let start = Instant::now();
    loop {
        let got: HashSet<(String, u32)> = seen.lock().unwrap().iter().cloned().collect();
        if got == all {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "{} of {} events never reached a handler, e.g. {:?}",
            all.len() - got.len(),
            all.len(),
            all.difference(&got).take(5).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    current.shutdown().await.unwrap();
    f.cleanup().await;
}

/// Members that stop with a backlog give back deliveries no handler ran: the broker counts
/// them, but they use up none of the handler's `max_deliveries`. (The broker's count was
/// taken for the handler's attempts, so three quick restarts dead-lettered events that had
/// never failed.)
pub(crate) async fn stopping_with_a_backlog_uses_up_no_attempts(f: Fixture) {
    const STOPS: usize = 3;
    let topic = f.topic("backlog");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let seen: Seen = Arc::default();
    let member = || {
        let seen = Arc::clone(&seen);
        Subscription::builder(&f.bus, &topic, "kitchen")
            .max_deliveries(2)
            // What was in transit to a stopped member comes back after the ack wait.
            .ack_wait(Duration::from_secs(1))
            .concurrency(1)
            .handle(move |t: Ticket, _ctx: Context| {
                let seen = Arc::clone(&seen);
                async move {
                    // Slow enough that a member holds a backlog when it is told to stop.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    seen.lock().unwrap().push((t.order, t.seq));
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    // The group exists before the publish (RabbitMQ keeps nothing for a missing group).
    let first = member();
    first.ready().await.unwrap();
    first.shutdown().await.unwrap();
    // Two subjects: their events wait in two lanes, one after the other.
    publish_tickets(&publisher, &["b0", "b1"], 20).await;
    // Members that stop as soon as they have joined and taken a first event.
    for _ in 0..STOPS {
        let before = seen.lock().unwrap().len();
        let sub = member();
        sub.ready().await.unwrap();
        wait_until("the member took events", || {
            seen.lock().unwrap().len() > before
        })
        .await;
        sub.shutdown().await.unwrap();
    }
    let last = member();
    last.ready().await.unwrap();
    wait_until("every event handled", || {
        let got: HashSet<(String, u32)> = seen.lock().unwrap().iter().cloned().collect();
        got.len() == 40
    })
    .await;
    last.shutdown().await.unwrap();
    let letters = f.bus.dead_letters(&topic).await.unwrap();
    assert!(
        letters.is_empty(),
        "events dead-lettered though no handler failed: {:?}",
        letters
            .iter()
            .map(|l| (&l.subject, &l.reason, l.attempts))
            .collect::<Vec<_>>()
    );
    f.cleanup().await;
}

/// An event that always fails goes to dead letters after max deliveries, with its reason;
/// other subjects keep flowing meanwhile.
pub(crate) async fn poison_is_dead_lettered_and_others_flow(f: Fixture) {
    let topic = f.topic("poison");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let seen: Seen = Arc::default();
    let sub = {
        let seen = Arc::clone(&seen);
        Subscription::builder(&f.bus, &topic, "g")
            .max_deliveries(3)
            .backoff(fast_backoff())
            .handle(move |t: Ticket, _ctx: Context| {
                let seen = Arc::clone(&seen);
                async move {
                    if t.order == "poison" {
                        return Err(HandlerError::transient("the oven is on fire"));
                    }
                    seen.lock().unwrap().push((t.order, t.seq));
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    sub.ready().await.unwrap();
    publish_tickets(&publisher, &["poison", "good"], 3).await;
    wait_until("the good subject is handled", || {
        seen.lock().unwrap().len() == 3
    })
    .await;
    let bus = f.bus.clone();
    let start = Instant::now();
    let letters = loop {
        let letters = bus.dead_letters(&topic).await.unwrap();
        if letters.len() == 3 {
            break letters;
        }
        assert!(start.elapsed() < DEADLINE, "dead letters: {letters:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    for letter in &letters {
        assert_eq!(letter.reason, "max_deliveries");
        assert_eq!(letter.attempts, 3);
        assert_eq!(letter.subject.as_deref(), Some("poison"));
        assert!(letter.error.contains("on fire"), "{}", letter.error);
        assert_eq!(letter.group, "g");
    }
    sub.shutdown().await.unwrap();
    f.cleanup().await;
}

/// Undecodable and unknown input goes to dead letters with its typed reason, never to a
/// handler, and never stops the flow.
pub(crate) async fn bad_input_is_dead_lettered_with_its_reason(f: Fixture) {
    let topic = f.topic("bad");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&f.bus, &topic, "g")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    let unknown = Envelope::raw(
        "/conformance",
        "conformance.unknown.thing.v1",
        Bytes::from("{}"),
    )
    .with_subject("s");
    publisher.publish_envelope(&unknown).await.unwrap();
    let wrong = Envelope::raw("/conformance", Ticket::TYPE, Bytes::from("{\"order\": 5}"))
        .with_subject("s");
    publisher.publish_envelope(&wrong).await.unwrap();
    publisher
        .publish(
            &Ticket {
                order: "s".into(),
                seq: 1,
            },
            "s",
        )
        .await
        .unwrap();
    wait_until("the good event after the bad ones", || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    let start = Instant::now();
    let reasons: HashMap<String, String> = loop {
        let letters = f.bus.dead_letters(&topic).await.unwrap();
        if letters.len() == 2 {
            break letters
                .into_iter()
                .map(|l| (l.message_id.unwrap_or_default(), l.reason))
                .collect();
        }
        assert!(start.elapsed() < DEADLINE, "dead letters: {letters:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(reasons[&unknown.id], "unknown_type");
    assert_eq!(reasons[&wrong.id], "invalid_payload");
    sub.shutdown().await.unwrap();
    f.cleanup().await;
}

/// A malformed message close to the engine's size limit (0.8 MB: under NATS's 1 MB
/// `max_payload`, and its base64 copy over the 1 MiB envelope limit) costs one dead letter,
/// whose original is an excerpt with the size and digest and the place the engine keeps the
/// whole; the events behind it flow, and a member that joins later finds nothing left to
/// redeliver. It wedged the group on NATS and RabbitMQ: the dead letter with a full copy
/// could never be written, and was retried forever in front of every later message.
pub(crate) async fn an_oversized_malformed_message_costs_one_dead_letter(f: Fixture) {
    use sha2::Digest as _;
    let topic = f.topic("huge");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&f.bus, &topic, "g")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    let garbage: Vec<u8> = (0..800_000_u32).map(|i| (i * 7 % 251) as u8).collect();
    f.bus
        .publish_raw(&topic, Some("s"), Bytes::from(garbage.clone()))
        .await
        .unwrap();
    let ticket = |seq| Ticket {
        order: "s".into(),
        seq,
    };
    publisher.publish(&ticket(1), "s").await.unwrap();
    wait_until("the event behind the oversized one", || {
        seen.lock().unwrap().len() == 1
    })
    .await;
    let start = Instant::now();
    let letter = loop {
        let letters = f.bus.dead_letters(&topic).await.unwrap();
        if let Some(letter) = letters.first() {
            assert_eq!(letters.len(), 1, "{letters:?}");
            break letter.clone();
        }
        assert!(start.elapsed() < DEADLINE, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let decoding = [
        "malformed",
        "missing_attribute",
        "too_large",
        "unsupported_version",
    ];
    assert!(
        decoding.contains(&letter.reason.as_str()),
        "{}",
        letter.reason
    );
    assert_eq!(letter.attempts, 0);
    assert_eq!(letter.original_size, 800_000);
    assert!(letter.original_truncated);
    let digest: String = sha2::Sha256::digest(&garbage)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(letter.original_sha256, digest);
    assert_eq!(
        letter.excerpt().unwrap(),
        garbage[..tabgrab::event::ORIGINAL_EXCERPT]
    );
    assert!(letter.original_kept_at.is_some(), "{letter:?}");
    assert_eq!(sub.stats().dead_letter_failures, 0);
    sub.shutdown().await.unwrap();

    // A later member of the group gets the next event, and nothing of the bad one.
    let sub = Subscription::builder(&f.bus, &topic, "g")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    publisher.publish(&ticket(2), "s").await.unwrap();
    wait_until("the event after the restart", || {
        seen.lock().unwrap().len() == 2
    })
    .await;
    assert_eq!(sub.stats().dead_lettered, 0);
    assert_eq!(f.bus.dead_letters(&topic).await.unwrap().len(), 1);
    sub.shutdown().await.unwrap();
    f.cleanup().await;
}

/// A publish retried with the same envelope id: one event where the engine de-duplicates
/// (`dedup_window`), two where it says it does not.
pub(crate) async fn a_retried_publish_is_deduplicated_as_the_capability_says(f: Fixture) {
    let topic = f.topic("dedup");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&f.bus, &topic, "g")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    let envelope = publisher
        .envelope(
            &Ticket {
                order: "d".into(),
                seq: 0,
            },
            "d",
        )
        .unwrap();
    let first = publisher.publish_envelope(&envelope).await.unwrap();
    let again = publisher.publish_envelope(&envelope).await.unwrap();
    assert!(!first.duplicate);
    let dedup = f.bus.capabilities().dedup_window.is_some();
    assert_eq!(again.duplicate, dedup);
    if dedup {
        assert_eq!(again.offset, first.offset, "a duplicate names the original");
    }
    // A marker after both, so that "all delivered" is observable.
    publisher
        .publish(
            &Ticket {
                order: "d".into(),
                seq: 1,
            },
            "d",
        )
        .await
        .unwrap();
    wait_until("the marker", || {
        seen.lock().unwrap().iter().any(|(_, s)| *s == 1)
    })
    .await;
    let copies = seen.lock().unwrap().iter().filter(|(_, s)| *s == 0).count();
    assert_eq!(copies, if dedup { 1 } else { 2 });
    sub.shutdown().await.unwrap();
    f.cleanup().await;
}

/// A group can replay from the beginning or from a position, or see only new events; an
/// engine that cannot replay refuses the start position with a typed error.
pub(crate) async fn a_group_can_replay(f: Fixture) {
    let topic = f.topic("replay");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    if !f.bus.capabilities().replay_from_beginning {
        let sub = Subscription::builder(&f.bus, &topic, "replayer")
            .start_from(StartFrom::Beginning)
            .handle(recorder(&Seen::default()))
            .start()
            .unwrap();
        let refused = sub.ready().await.unwrap_err();
        assert_eq!(refused.kind(), tabgrab::ErrorKind::Malformed, "{refused}");
        assert!(refused.message().contains("replay"), "{refused}");
        drop(sub);
        f.cleanup().await;
        return;
    }
    let mut receipts = Vec::new();
    for seq in 0..5 {
        let ticket = Ticket {
            order: "r".into(),
            seq,
        };
        receipts.push(publisher.publish(&ticket, "r").await.unwrap());
    }
    let run = |start: StartFrom| {
        let seen: Seen = Arc::default();
        let sub = Subscription::builder(&f.bus, &topic, "replayer")
            .start_from(start)
            .handle(recorder(&seen))
            .start()
            .unwrap();
        (seen, sub)
    };
    let (seen, sub) = run(StartFrom::Committed);
    sub.ready().await.unwrap();
    wait_until("all 5", || seen.lock().unwrap().len() == 5).await;
    sub.shutdown().await.unwrap();

    let (seen, sub) = run(StartFrom::Beginning);
    sub.ready().await.unwrap();
    wait_until("all 5 again", || seen.lock().unwrap().len() == 5).await;
    sub.shutdown().await.unwrap();

    if f.bus.capabilities().replay_from_offset {
        let (seen, sub) = run(StartFrom::Offset(receipts[2].offset));
        sub.ready().await.unwrap();
        wait_until("the last 3", || seen.lock().unwrap().len() == 3).await;
        assert_eq!(seen.lock().unwrap()[0].1, 2);
        sub.shutdown().await.unwrap();
    }

    let (seen, sub) = run(StartFrom::Latest);
    sub.ready().await.unwrap();
    let ticket = Ticket {
        order: "r".into(),
        seq: 99,
    };
    publisher.publish(&ticket, "r").await.unwrap();
    wait_until("only the new one", || !seen.lock().unwrap().is_empty()).await;
    assert_eq!(seen.lock().unwrap().clone(), vec![("r".to_owned(), 99)]);
    sub.shutdown().await.unwrap();
    f.cleanup().await;
}

/// A reply goes straight into a named queue (`/queues/<name>`) where `reply_queues` says so,
/// and the requester's reply address is then its group's queue; elsewhere putting into a
/// queue is refused as malformed, and a request that asks for it is dead-lettered with the
/// reason, its handler never run.
pub(crate) async fn a_queue_reply_address_is_served_or_refused_as_the_capability_says(f: Fixture) {
    let menu = f.topic("queue-menu");
    let ran = Arc::new(AtomicU32::new(0));
    let responder = {
        let ran = Arc::clone(&ran);
        Responder::builder(&f.bus, &menu, "menu")
            .handle(move |_q: GetPrice, _ctx| {
                ran.fetch_add(1, Ordering::Relaxed);
                async { Ok(900) }
            })
            .start()
            .unwrap()
    };
    responder.ready().await.unwrap();
    let envelope = Envelope::new("/conformance", &GetPrice { pizza: "x".into() }).unwrap();
    let missing = format!("conformance-missing-{}", uuid::Uuid::now_v7().simple());
    let refused = f
        .bus
        .backend()
        .publish_to_queue(&missing, &envelope)
        .await
        .unwrap_err();
    let requester = Requester::builder(&f.bus, &f.topic("queue-front"))
        .shared_store(Arc::new(MemoryStore::new()))
        .route::<GetPrice>(&menu)
        .start()
        .unwrap();
    requester.ready().await.unwrap();
    if f.bus.capabilities().reply_queues {
        // The queue does not exist: refused, not dropped.
        assert_eq!(refused.kind(), tabgrab::ErrorKind::Unavailable, "{refused}");
        assert!(requester.reply_to().starts_with("/queues/"));
        let answer = requester
            .request(
                &GetPrice { pizza: "x".into() },
                SendOptions::default().timeout(Duration::from_secs(20)),
            )
            .await
            .unwrap();
        assert_eq!(answer, 900);
    } else {
        assert_eq!(refused.kind(), tabgrab::ErrorKind::Malformed, "{refused}");
        assert!(!requester.reply_to().starts_with('/'));
        let mut asks = envelope.clone();
        asks.replyto = Some(format!("/queues/{missing}"));
        asks.correlationid = Some(asks.id.clone());
        Publisher::new(&f.bus, &menu, "/conformance")
            .unwrap()
            .publish_envelope(&asks)
            .await
            .unwrap();
        let start = Instant::now();
        let letter = loop {
            if let Some(letter) = f.bus.dead_letters(&menu).await.unwrap().pop() {
                break letter;
            }
            assert!(start.elapsed() < DEADLINE, "no dead letter");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(letter.message_id.as_deref(), Some(asks.id.as_str()));
        assert!(letter.error.contains("named queues"), "{letter:?}");
        assert_eq!(ran.load(Ordering::Relaxed), 0);
    }
    requester.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
    f.cleanup().await;
}

/// Request-reply: the answer reaches the requester group (any of its nodes), a typed
/// rejection crosses the wire, and a request nobody answers times out.
pub(crate) async fn request_reply_answers_rejects_and_times_out(f: Fixture) {
    let menu = f.topic("menu");
    let nobody = f.topic("nobody");
    let group = f.topic("front");
    let responder = Responder::builder(&f.bus, &menu, "menu")
        .handle(|q: GetPrice, _ctx| async move {
            if q.pizza == "margherita" {
                Ok(900)
            } else {
                Err(Rejection::new("menu.unknown", "no such pizza").into())
            }
        })
        .start()
        .unwrap();
    responder.ready().await.unwrap();
    let store = Arc::new(MemoryStore::new());
    let node = |store: Arc<MemoryStore>, topic: &str| {
        Requester::builder(&f.bus, &group)
            .shared_store(store)
            .route::<GetPrice>(topic)
            .sweep_interval(Duration::from_millis(200))
            .start()
            .unwrap()
    };
    let a = node(Arc::clone(&store), &menu);
    a.ready().await.unwrap();
    let answer = a
        .request(
            &GetPrice {
                pizza: "margherita".into(),
            },
            SendOptions::default().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap();
    assert_eq!(answer, 900);
    let refused = a
        .request(
            &GetPrice {
                pizza: "hawaii".into(),
            },
            SendOptions::default().timeout(Duration::from_secs(20)),
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), tabgrab::ErrorKind::Remote, "{refused}");
    assert_eq!(
        refused.rejection().map(|r| r.code.as_str()),
        Some("menu.unknown")
    );
    a.shutdown().await.unwrap();
    let b = node(Arc::clone(&store), &nobody);
    b.ready().await.unwrap();
    let started = Instant::now();
    let timed_out = b
        .request(
            &GetPrice {
                pizza: "margherita".into(),
            },
            SendOptions::default().timeout(Duration::from_millis(500)),
        )
        .await;
    if f.bus.capabilities().keeps_events_without_groups {
        // Nobody listens, the request waits in the topic: it times out.
        let timed_out = timed_out.unwrap_err();
        assert_eq!(
            timed_out.kind(),
            tabgrab::ErrorKind::DeadlineExceeded,
            "{timed_out}"
        );
    } else {
        // The engine would drop it: the send is refused at once instead.
        let refused = timed_out.unwrap_err();
        assert_eq!(refused.kind(), tabgrab::ErrorKind::Unavailable, "{refused}");
    }
    assert!(started.elapsed() < Duration::from_secs(10));
    b.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
    f.cleanup().await;
}

/// A publish to a topic that no group subscribes to yet: kept for a group that starts later,
/// or, where the engine would drop it, refused with `Unavailable`; never silently lost.
pub(crate) async fn a_publish_before_any_group_is_kept_or_refused(f: Fixture) {
    let topic = f.topic("early");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let ticket = Ticket {
        order: "e".into(),
        seq: 7,
    };
    let published = publisher.publish(&ticket, "e").await;
    if !f.bus.capabilities().keeps_events_without_groups {
        let refused = published.unwrap_err();
        assert_eq!(refused.kind(), tabgrab::ErrorKind::Unavailable, "{refused}");
        assert!(refused.message().contains("no consumer group"), "{refused}");
        f.cleanup().await;
        return;
    }
    published.unwrap();
    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&f.bus, &topic, "late")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    wait_until("the early event", || seen.lock().unwrap().len() == 1).await;
    sub.shutdown().await.unwrap();
    f.cleanup().await;
}

/// A group's lag counts what it has not settled: unknown before the group exists, the
/// backlog while no member runs, zero once a member has handled (and the engine has
/// recorded) every event.
pub(crate) async fn a_group_lag_counts_what_it_has_not_settled(f: Fixture) {
    let topic = f.topic("lag");
    let group = f.topic("lag-group");
    assert_eq!(
        f.bus.lag(&topic, &group).await.unwrap(),
        None,
        "no group yet"
    );
    let seen: Seen = Arc::default();
    // The group exists, then its member leaves before the events come.
    let sub = Subscription::builder(&f.bus, &topic, &group)
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    sub.shutdown().await.unwrap();
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    publish_tickets(&publisher, &["a", "b", "c"], 4).await;
    // A broker may count a publish a moment after confirming it.
    wait_for_lag(&f, &topic, &group, 12, "with no member").await;
    // What a console shows beside the lag: the topic's end (where the engine counts it) and
    // the group's members (where the engine can say).
    let (counts_ends, knows_members) = match f.bus.name() {
        "amqp" => (false, true),
        "nats" => (true, false),
        _ => (true, true),
    };
    let end = f.bus.topic_end(&topic).await.unwrap();
    assert_eq!(end, counts_ends.then_some(12), "the topic's end");
    wait_for_members(&f, &topic, &group, knows_members.then_some(0)).await;
    let sub = Subscription::builder(&f.bus, &topic, &group)
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    wait_for_members(&f, &topic, &group, knows_members.then_some(1)).await;
    wait_until("the backlog handled", || seen.lock().unwrap().len() == 12).await;
    // Shutting down settles and commits what was handled.
    sub.shutdown().await.unwrap();
    wait_for_lag(&f, &topic, &group, 0, "after the backlog was handled").await;
    f.cleanup().await;
}

/// A consumer whose handler's dependency is down: its breaker opens, the group takes no
/// deliveries and runs no handler while it is open, nothing is dead-lettered for the outage,
/// and the group catches up once the dependency is back. A group without a breaker (the
/// control) dead-letters the same events.
pub(crate) async fn a_breaker_pauses_the_group_through_an_outage(f: Fixture) {
    use tabgrab::breaker::{BreakerConfig, BreakerHandle, CircuitState};
    use tokio::sync::Semaphore;

    let topic = f.topic("outage");
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    // The dependency: down until `up`. The paused group's first calls hang on `gate` until it
    // is closed, so that the group holds every published event before the failures start.
    let up = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicU32::new(0));
    let seen: Seen = Arc::default();
    // The first failure opens it: no handler attempt then starts between the failures and
    // the opening, so the open time can be watched exactly.
    let open_for = Duration::from_secs(1);
    let breaker = BreakerHandle::new(BreakerConfig {
        window: 20,
        minimum_calls: 10,
        failure_rate: 0.5,
        consecutive_failures: Some(1),
        open_for,
        probes: 1,
    });
    let paused = {
        let (up, gate, calls, seen) = (up.clone(), gate.clone(), calls.clone(), seen.clone());
        // One attempt: a failure the breaker charged to an event would dead-letter it.
        Subscription::builder(&f.bus, &topic, "paused")
            .max_deliveries(1)
            .backoff(fast_backoff())
            .breaker(breaker.clone())
            .handle(move |t: Ticket, _ctx: Context| {
                let (up, gate, calls, seen) =
                    (up.clone(), gate.clone(), calls.clone(), seen.clone());
                async move {
                    calls.fetch_add(1, Ordering::SeqCst);
                    if !up.load(Ordering::SeqCst) {
                        let _ = gate.acquire().await;
                        return Err(HandlerError::transient("the payment service is down"));
                    }
                    seen.lock().unwrap().push((t.order, t.seq));
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    let control = {
        let up = up.clone();
        Subscription::builder(&f.bus, &topic, "control")
            .max_deliveries(3)
            .backoff(fast_backoff())
            .handle(move |_: Ticket, _ctx: Context| {
                let up = up.clone();
                async move {
                    if up.load(Ordering::SeqCst) {
                        Ok(())
                    } else {
                        Err(HandlerError::transient("the payment service is down"))
                    }
                }
            })
            .start()
            .unwrap()
    };
    paused.ready().await.unwrap();
    control.ready().await.unwrap();
    let orders = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"];
    publish_tickets(&publisher, &orders, 2).await;
    wait_until("the control group dead-letters the outage's events", || {
        control.stats().dead_lettered == 20
    })
    .await;
    // Every event is held: one running per subject (hanging on the gate), one queued behind.
    wait_until("the paused group holds every event", || {
        paused.stats().received == 20 && calls.load(Ordering::SeqCst) == 10
    })
    .await;
    gate.close();
    wait_until("the breaker opens", || {
        breaker.state() == CircuitState::Open
    })
    .await;
    assert_eq!(paused.stats().breaker, Some(CircuitState::Open));
    let until = breaker.open_until().expect("open");
    let calls_at_open = calls.load(Ordering::SeqCst);
    // Published while open: not taken, and no handler runs, until the open time is over.
    publish_tickets(&publisher, &["k", "l", "m", "n", "o"], 2).await;
    let mut samples = 0;
    loop {
        let (received, ran) = (paused.stats().received, calls.load(Ordering::SeqCst));
        if tokio::time::Instant::now() >= until {
            break;
        }
        assert_eq!(
            received, 20,
            "a delivery was taken while the breaker was open"
        );
        assert_eq!(
            ran, calls_at_open,
            "a handler ran while the breaker was open"
        );
        samples += 1;
        if samples == 20 {
            // The dependency comes back before the breaker probes it.
            up.store(true, Ordering::SeqCst);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    up.store(true, Ordering::SeqCst);
    assert!(samples >= 10, "only {samples} samples in the open time");
    // The probe succeeds, the breaker closes and the group catches up.
    let all: HashSet<(String, u32)> = orders
        .iter()
        .chain(&["k", "l", "m", "n", "o"])
        .flat_map(|o| (0..2).map(move |seq| ((*o).to_owned(), seq)))
        .collect();
    wait_until("the paused group handles every event", || {
        seen.lock().unwrap().iter().cloned().collect::<HashSet<_>>() == all
    })
    .await;
    assert_eq!(breaker.state(), CircuitState::Closed);
    let stats = paused.stats();
    assert_eq!(stats.dead_lettered, 0, "{stats:?}");
    assert!(stats.acked >= 30, "{stats:?}");
    paused.shutdown().await.unwrap();
    control.shutdown().await.unwrap();
    wait_for_lag(&f, &topic, "paused", 0, "after the outage").await;
    let letters = f.bus.dead_letters(&topic).await.unwrap();
    assert!(
        letters.iter().all(|l| l.group == "control"),
        "the paused group dead-lettered: {letters:?}"
    );
    assert!(
        letters.len() >= 20,
        "control dead letters: {}",
        letters.len()
    );
    f.cleanup().await;
}

/// Waits (bounded) until the engine says `group` on `topic` has `expected` members (a broker
/// counts a consumer a moment after it is made or cancelled).
async fn wait_for_members(f: &Fixture, topic: &str, group: &str, expected: Option<u64>) {
    let start = Instant::now();
    loop {
        let members = f.bus.members(topic, group).await.unwrap();
        if members == expected {
            return;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "members {members:?}, not {expected:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (bounded) until the lag of `group` on `topic` is `expected`.
async fn wait_for_lag(f: &Fixture, topic: &str, group: &str, expected: u64, when: &str) {
    let last = &std::cell::Cell::new(None);
    poll_until(move || async move {
        let lag = f.bus.lag(topic, group).await.unwrap();
        last.set(lag);
        (lag == Some(expected)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("lag {:?}, not {expected}, {when}", last.get()));
}

/// Polls `check` every 20 ms until it gives a value, for up to [`DEADLINE`]; `None` when the
/// deadline passes (the caller says what it waited for).
async fn poll_until<T, Fut: std::future::Future<Output = Option<T>>>(
    mut check: impl FnMut() -> Fut,
) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return Some(value);
        }
        if start.elapsed() >= DEADLINE {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Listing dead letters changes nothing: after many listings every dead letter is still
/// there (on RabbitMQ a listing gets and gives back each message, and a queue with a
/// delivery limit would drop them after some fifty).
pub(crate) async fn dead_letters_survive_many_listings(f: Fixture) {
    let topic = f.topic("listed");
    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&f.bus, &topic, "g")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    for i in 0..3_u8 {
        f.bus
            .publish_raw(&topic, Some("s"), Bytes::from(vec![b'x', i]))
            .await
            .unwrap();
    }
    wait_until("three dead letters", || sub.stats().dead_lettered == 3).await;
    sub.shutdown().await.unwrap();
    for listing in 0..80 {
        let letters = f.bus.dead_letters(&topic).await.unwrap();
        assert_eq!(letters.len(), 3, "listing {listing}: {letters:?}");
    }
    f.cleanup().await;
}

/// A dead letter is listed with a filter, redriven once its cause is fixed (the same event id,
/// with `redrivenfrom`, handled by the group that gave up on it, even within JetStream's
/// duplicate window) and then no longer listed; bytes that are no event cannot be redriven
/// and are purged; a redrive repeated after a crash (publish done, settlement not) is the
/// same event again, which de-duplicates where the engine can.
pub(crate) async fn dead_letters_are_redriven_once_fixed_and_purged(f: Fixture) {
    use tabgrab::event::{DeadLetters, Filter, REDRIVEN_FROM};
    let topic = f.topic("redrive");
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // (order, event id, redrivenfrom) of every handled ticket.
    type Handled = Vec<(String, String, Option<String>)>;
    let handled: Arc<Mutex<Handled>> = Arc::default();
    let sub = {
        let (fixed, handled) = (Arc::clone(&fixed), Arc::clone(&handled));
        Subscription::builder(&f.bus, &topic, "g")
            .max_deliveries(2)
            .backoff(fast_backoff())
            .handle(move |t: Ticket, ctx: Context| {
                let (fixed, handled) = (Arc::clone(&fixed), Arc::clone(&handled));
                async move {
                    if t.order.starts_with("poison") && !fixed.load(Ordering::SeqCst) {
                        return Err(HandlerError::transient("the oven is cold"));
                    }
                    let e = ctx.envelope();
                    handled.lock().unwrap().push((
                        t.order,
                        e.id.clone(),
                        e.extensions.get(REDRIVEN_FROM).cloned(),
                    ));
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    sub.ready().await.unwrap();
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let mut ids = HashMap::new();
    for order in ["poison-1", "poison-2"] {
        let envelope = Envelope::new(
            "/conformance",
            &Ticket {
                order: order.into(),
                seq: 0,
            },
        )
        .unwrap()
        .with_subject(order);
        publisher.publish_envelope(&envelope).await.unwrap();
        ids.insert(order, envelope.id);
    }
    f.bus
        .publish_raw(
            &topic,
            Some("junk"),
            Bytes::from_static(b"\x00 not an event"),
        )
        .await
        .unwrap();
    wait_until("three dead letters", || sub.stats().dead_lettered == 3).await;
    let letters = DeadLetters::new(&f.bus, &topic).unwrap();
    let all = letters.list(&Filter::default()).await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    let given_up = Filter {
        reason: Some("max_deliveries".into()),
        ..Filter::default()
    };
    assert_eq!(letters.list(&given_up).await.unwrap().len(), 2);
    let first = Filter {
        subject: Some("poison-1".into()),
        group: Some("g".into()),
        ..Filter::default()
    };
    let [poison_1] = <[_; 1]>::try_from(letters.list(&first).await.unwrap()).unwrap();
    assert_eq!(letters.get(&poison_1.id).await.unwrap(), poison_1);
    let junk = all
        .iter()
        .find(|k| k.letter.message_id.is_none())
        .unwrap()
        .clone();
    let refused = letters.check_redrivable(&junk).unwrap_err();
    assert!(refused.to_string().contains("purge"), "{refused}");

    fixed.store(true, Ordering::SeqCst);
    let redriven = letters.redrive(&poison_1.id).await.unwrap();
    assert_eq!(redriven.event_id, ids["poison-1"]);
    assert!(!redriven.duplicate, "a first redrive is a new publish");
    wait_until("the redriven ticket is handled", || {
        !handled.lock().unwrap().is_empty()
    })
    .await;
    assert_eq!(
        handled.lock().unwrap()[0],
        (
            "poison-1".to_owned(),
            ids["poison-1"].clone(),
            Some(poison_1.id.clone())
        )
    );
    let again = letters.redrive(&poison_1.id).await.unwrap_err();
    assert_eq!(again.kind(), tabgrab::ErrorKind::NotFound, "{again}");
    letters.purge(&junk.id).await.unwrap();
    let left = letters.list(&Filter::default()).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].letter.subject.as_deref(), Some("poison-2"));

    // A crash after the publish and before the settlement: the redrive runs again.
    let poison_2 = left[0].clone();
    letters.redrive_letter(&poison_2).await.unwrap();
    let repeated = letters.redrive_letter(&poison_2).await.unwrap();
    assert_eq!(repeated.event_id, ids["poison-2"]);
    assert_eq!(
        repeated.duplicate,
        f.bus.capabilities().dedup_window.is_some(),
        "the engine recognises a repeated redrive exactly when it de-duplicates"
    );
    let copies = if repeated.duplicate { 1 } else { 2 };
    wait_until("the second redriven ticket is handled", || {
        handled.lock().unwrap().len() == 1 + copies
    })
    .await;
    for (order, id, from) in handled.lock().unwrap().iter().skip(1) {
        assert_eq!(
            (order.as_str(), id, from.as_deref()),
            ("poison-2", &ids["poison-2"], Some(poison_2.id.as_str())),
            "a copy is the same event: an inbox absorbs it"
        );
    }
    assert!(f.bus.dead_letters(&topic).await.unwrap().is_empty());
    sub.shutdown().await.unwrap();
    f.cleanup().await;
}

/// A redrive to the group that gave up reaches that group alone where the engine has a queue
/// per group (RabbitMQ); elsewhere it is refused with `Conflict`, and nothing is published.
pub(crate) async fn a_redrive_to_one_group_reaches_it_alone(f: Fixture) {
    use tabgrab::event::{DeadLetters, Filter};
    let topic = f.topic("regroup");
    let fixed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let failing = {
        let fixed = Arc::clone(&fixed);
        let seen: Seen = Arc::default();
        let handled = Arc::clone(&seen);
        let sub = Subscription::builder(&f.bus, &topic, "failing")
            .handle(move |t: Ticket, _ctx: Context| {
                let (fixed, seen) = (Arc::clone(&fixed), Arc::clone(&handled));
                async move {
                    if !fixed.load(Ordering::SeqCst) {
                        return Err(HandlerError::permanent("no recipe yet"));
                    }
                    seen.lock().unwrap().push((t.order, t.seq));
                    Ok(())
                }
            })
            .start()
            .unwrap();
        (sub, seen)
    };
    let other_seen: Seen = Arc::default();
    let other = Subscription::builder(&f.bus, &topic, "other")
        .handle(recorder(&other_seen))
        .start()
        .unwrap();
    failing.0.ready().await.unwrap();
    other.ready().await.unwrap();
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    publish_tickets(&publisher, &["p"], 1).await;
    wait_until("the dead letter", || failing.0.stats().dead_lettered == 1).await;
    wait_until("the other group's copy", || {
        other_seen.lock().unwrap().len() == 1
    })
    .await;
    let letters = DeadLetters::new(&f.bus, &topic).unwrap();
    let [kept] = <[_; 1]>::try_from(letters.list(&Filter::default()).await.unwrap()).unwrap();
    assert_eq!(kept.letter.group, "failing");
    fixed.store(true, Ordering::SeqCst);
    if f.bus.capabilities().reply_queues {
        letters.redrive_to_group(&kept).await.unwrap();
        wait_until("the redriven ticket", || {
            failing.1.lock().unwrap().len() == 1
        })
        .await;
        assert!(letters.list(&Filter::default()).await.unwrap().is_empty());
    } else {
        let refused = letters.redrive_to_group(&kept).await.unwrap_err();
        assert_eq!(refused.kind(), tabgrab::ErrorKind::Conflict, "{refused}");
        assert!(
            refused
                .to_string()
                .contains("cannot deliver to group failing alone")
        );
        assert_eq!(letters.list(&Filter::default()).await.unwrap().len(), 1);
    }
    // A marker after it, to every group: once the other group has the marker, a copy of the
    // redriven event sent to it would be there too (published before it).
    publish_tickets(&publisher, &["marker"], 1).await;
    wait_until("the marker", || other_seen.lock().unwrap().len() >= 2).await;
    // The failing group too, before it stops: what it handled is checked below.
    wait_until("the failing group's marker", || {
        failing.1.lock().unwrap().iter().any(|t| t.0 == "marker")
    })
    .await;
    failing.0.shutdown().await.unwrap();
    other.shutdown().await.unwrap();
    let other_seen: Vec<String> = other_seen
        .lock()
        .unwrap()
        .iter()
        .map(|t| t.0.clone())
        .collect();
    assert_eq!(
        other_seen,
        ["p", "marker"],
        "the other group saw the event once"
    );
    if !f.bus.capabilities().reply_queues {
        let handled: Vec<String> = failing
            .1
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.0.clone())
            .collect();
        assert_eq!(handled, ["marker"], "no redrive reached the failing group");
    }
    f.cleanup().await;
}

/// The principal travels as the `principal` attribute on every engine (both content modes on
/// NATS): a group that requires one handles only what its rule admits and dead-letters the
/// rest with the reason; a publisher's principal wins over its cause's; a responder answers
/// an unadmitted request with a rejection of the refusal's code.
pub(crate) async fn principals_travel_and_are_required(f: Fixture) {
    use tabgrab::Principal;
    use tabgrab::event::{DeadLetters, Filter};
    let topic = f.topic("principals");
    /// Each handled ticket's order, with the principal it came from.
    type Handled = Arc<Mutex<Vec<(String, Option<String>)>>>;
    let seen: Handled = Arc::default();
    let record = Arc::clone(&seen);
    let sub = Subscription::builder(&f.bus, &topic, "kitchen")
        .authorize(|principal, _ty| principal.name() == "front-desk")
        .max_deliveries(1)
        .handle(move |t: Ticket, ctx: Context| {
            let who = ctx.principal().map(|p| p.name().to_owned());
            record.lock().unwrap().push((t.order, who));
            futures::future::ready(Ok::<(), HandlerError>(()))
        })
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    let front_desk = Principal::new("front-desk");
    let anonymous = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let desk = anonymous.clone().as_principal(front_desk.clone());
    let guest = anonymous.clone().as_principal(Principal::new("guest"));
    let ticket = |order: &str| Ticket {
        order: order.into(),
        seq: 0,
    };
    desk.publish(&ticket("from-desk"), "a").await.unwrap();
    anonymous.publish(&ticket("anonymous"), "b").await.unwrap();
    guest.publish(&ticket("from-guest"), "c").await.unwrap();
    // Effects: one inherits the desk's principal from its cause, one names its own.
    let cause = desk.envelope(&ticket("cause"), "d").unwrap();
    anonymous
        .publish_caused(&ticket("inherited"), &cause)
        .await
        .unwrap();
    guest
        .publish_caused(&ticket("own-over-cause"), &cause)
        .await
        .unwrap();
    wait_until("two handled and three dead letters", || {
        seen.lock().unwrap().len() == 2 && sub.stats().dead_lettered == 3
    })
    .await;
    let mut handled = seen.lock().unwrap().clone();
    handled.sort();
    assert_eq!(
        handled,
        [
            ("from-desk".to_owned(), Some("front-desk".to_owned())),
            ("inherited".to_owned(), Some("front-desk".to_owned())),
        ]
    );
    let letters = DeadLetters::new(&f.bus, &topic).unwrap();
    let mut reasons: Vec<(String, String, Option<String>)> = letters
        .list(&Filter::default())
        .await
        .unwrap()
        .into_iter()
        .map(|kept| {
            let original = kept.letter.original().unwrap();
            let envelope = tabgrab::Codec::default().decode(&original).unwrap();
            let order = envelope.decode::<Ticket>().unwrap().order;
            (
                order,
                kept.letter.reason.clone(),
                envelope.principal().map(|p| p.name().to_owned()),
            )
        })
        .collect();
    reasons.sort();
    assert_eq!(
        reasons,
        [
            ("anonymous".into(), "unauthenticated".into(), None),
            (
                "from-guest".into(),
                "permission_denied".into(),
                Some("guest".into())
            ),
            (
                "own-over-cause".into(),
                "permission_denied".into(),
                Some("guest".into())
            ),
        ]
    );
    sub.shutdown().await.unwrap();

    let menu = f.topic("guarded-menu");
    let group = f.topic("front");
    let responder = Responder::builder(&f.bus, &menu, "menu")
        .authorize(|principal, _ty| principal.name() == "front-desk")
        .handle(|_q: GetPrice, ctx| async move {
            assert_eq!(ctx.principal().unwrap().name(), "front-desk");
            Ok(900)
        })
        .start()
        .unwrap();
    responder.ready().await.unwrap();
    let requester = Requester::builder(&f.bus, &group)
        .store(MemoryStore::new())
        .route::<GetPrice>(&menu)
        .start()
        .unwrap();
    requester.ready().await.unwrap();
    let ask = |principal: Option<Principal>| {
        let mut options = SendOptions::default().timeout(Duration::from_secs(20));
        options.principal = principal;
        let requester = &requester;
        async move {
            let query = GetPrice {
                pizza: "margherita".into(),
            };
            requester.request(&query, options).await
        }
    };
    assert_eq!(ask(Some(front_desk)).await.unwrap(), 900);
    for (who, code) in [
        (None, "unauthenticated"),
        (Some(Principal::new("guest")), "permission_denied"),
    ] {
        match ask(who).await.map_err(tabgrab::Error::into_rejection) {
            Err(Some(r)) => {
                assert_eq!(r.code, code);
                assert!(
                    r.message.contains("conformance.menu.get-price.v1 refused"),
                    "{}",
                    r.message
                );
            }
            other => panic!("expected the rejection {code}, got {other:?}"),
        }
    }
    assert_eq!(responder.stats().replied, 1);
    requester.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
    f.cleanup().await;
}

/// A message over the bus's size limit is refused where it is made, with a clear `TooLarge`,
/// on every engine: an event at publish, a request at send (the requester keeps no record of
/// it); the topic and the group are untouched, so what follows flows.
pub(crate) async fn a_message_over_the_size_limit_is_refused_where_it_is_made(f: Fixture) {
    let topic = f.topic("big");
    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&f.bus, &topic, "g")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    let publisher = Publisher::new(&f.bus, &topic, "/conformance").unwrap();
    let huge = "x".repeat(tabgrab::codec::DEFAULT_MAX_SIZE + 1);
    let refused = publisher
        .publish(
            &Ticket {
                order: huge.clone(),
                seq: 0,
            },
            "big",
        )
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), tabgrab::ErrorKind::TooLarge, "{refused}");
    assert!(refused.to_string().contains("bytes"), "{refused}");
    publish_tickets(&publisher, &["after"], 1).await;
    wait_until("the event after it", || seen.lock().unwrap().len() == 1).await;
    assert_eq!(sub.stats().dead_lettered, 0);

    let menu = f.topic("big-menu");
    let group = f.topic("front");
    let requester = Requester::builder(&f.bus, &group)
        .store(MemoryStore::new())
        .route::<GetPrice>(&menu)
        .start()
        .unwrap();
    requester.ready().await.unwrap();
    let refused = requester
        .send(&GetPrice { pizza: huge }, SendOptions::default())
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), tabgrab::ErrorKind::TooLarge, "{refused}");
    assert_eq!(requester.stats().sent, 0);
    let counts = requester.store().counts().await.unwrap();
    assert_eq!(counts.pending, 0, "no record kept of a request never sent");
    requester.shutdown().await.unwrap();
    sub.shutdown().await.unwrap();
    f.cleanup().await;
}

/// The first dead letter of `topic` with `reason`, waited for up to [`DEADLINE`].
async fn dead_letter_with_reason(
    f: &Fixture,
    topic: &str,
    reason: &str,
) -> tabgrab::event::DeadLetter {
    poll_until(move || async move {
        let letters = f.bus.dead_letters(topic).await.unwrap();
        letters.into_iter().find(|l| l.reason == reason)
    })
    .await
    .unwrap_or_else(|| panic!("no dead letter with reason {reason} in {topic}"))
}

/// A responder's failure that is not a refusal is not an answer: a transient one is handled
/// again (the requester gets the response of the second attempt), a permanent one is
/// dead-lettered with its reason and the requester sees its deadline pass, not a rejection.
pub(crate) async fn a_responder_s_failures_are_retried_or_dead_lettered_not_answered(f: Fixture) {
    let menu = f.topic("menu");
    let group = f.topic("front");
    let attempts = Arc::new(AtomicU32::new(0));
    let seen = Arc::clone(&attempts);
    let responder = Responder::builder(&f.bus, &menu, "menu")
        .backoff(fast_backoff())
        .handle(move |q: GetPrice, ctx| {
            let seen = Arc::clone(&seen);
            async move {
                match q.pizza.as_str() {
                    "flaky" => {
                        seen.fetch_add(1, Ordering::Relaxed);
                        if ctx.attempt() == 1 {
                            return Err(HandlerError::transient("the oven is still cold"));
                        }
                        Ok(700)
                    }
                    "lost" => Err(HandlerError::permanent("the recipe is lost")),
                    // `?` on an outage reported as a tabgrab error: retried, not dead-lettered
                    // at once, whatever its kind.
                    _ => Err(tabgrab::Error::new(
                        tabgrab::ErrorKind::Unavailable,
                        "the till is down",
                    ))?,
                }
            }
        })
        .start()
        .unwrap();
    responder.ready().await.unwrap();
    let requester = Requester::builder(&f.bus, &group)
        .store(MemoryStore::new())
        .route::<GetPrice>(&menu)
        .sweep_interval(Duration::from_millis(200))
        .start()
        .unwrap();
    requester.ready().await.unwrap();
    let ask = |pizza: &str, timeout: Duration| {
        let query = GetPrice {
            pizza: pizza.into(),
        };
        let requester = &requester;
        async move {
            requester
                .request(&query, SendOptions::default().timeout(timeout))
                .await
        }
    };
    assert_eq!(ask("flaky", Duration::from_secs(20)).await.unwrap(), 700);
    assert_eq!(attempts.load(Ordering::Relaxed), 2, "handled twice");
    let lost = ask("lost", Duration::from_millis(700)).await.unwrap_err();
    assert_eq!(lost.kind(), tabgrab::ErrorKind::DeadlineExceeded, "{lost}");
    let letter = dead_letter_with_reason(&f, &menu, "permanent_error").await;
    assert!(letter.error.contains("the recipe is lost"), "{letter:?}");
    assert_eq!(letter.attempts, 1, "a permanent failure is not retried");
    // An outage: retried up to the attempts, then dead-lettered as such.
    let down = ask("till", Duration::from_millis(700)).await.unwrap_err();
    assert_eq!(down.kind(), tabgrab::ErrorKind::DeadlineExceeded, "{down}");
    let letter = dead_letter_with_reason(&f, &menu, "max_deliveries").await;
    assert!(letter.error.contains("the till is down"), "{letter:?}");
    assert_eq!(letter.attempts, 5, "retried up to the default attempts");
    assert_eq!(responder.stats().rejected, 0, "a failure is no rejection");
    requester.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
    f.cleanup().await;
}

/// Instantiates every scenario as its own test in a module named after the backend; `$make`
/// is an async expression giving `Option<Fixture>` (`None`: skipped, reason printed).
macro_rules! conformance {
    ($backend:ident, $make:expr) => {
        mod $backend {
            use super::suite;
            #[allow(unused_imports)]
            use super::*;
            macro_rules! scenario {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let Some(fixture) = $make.await else { return };
                        tokio::time::timeout(
                            std::time::Duration::from_secs(90),
                            suite::$name(fixture),
                        )
                        .await
                        .expect("the scenario did not finish in 90 s");
                    }
                };
            }
            scenario!(order_is_kept_per_subject);
            scenario!(every_group_sees_every_event_and_members_share);
            scenario!(unacknowledged_events_are_redelivered_to_the_next_member);
            scenario!(members_stopping_under_load_lose_nothing);
            scenario!(stopping_with_a_backlog_uses_up_no_attempts);
            scenario!(poison_is_dead_lettered_and_others_flow);
            scenario!(bad_input_is_dead_lettered_with_its_reason);
            scenario!(an_oversized_malformed_message_costs_one_dead_letter);
            scenario!(a_retried_publish_is_deduplicated_as_the_capability_says);
            scenario!(a_group_can_replay);
            scenario!(a_group_lag_counts_what_it_has_not_settled);
            scenario!(dead_letters_survive_many_listings);
            scenario!(dead_letters_are_redriven_once_fixed_and_purged);
            scenario!(a_redrive_to_one_group_reaches_it_alone);
            scenario!(request_reply_answers_rejects_and_times_out);
            scenario!(a_responder_s_failures_are_retried_or_dead_lettered_not_answered);
            scenario!(a_queue_reply_address_is_served_or_refused_as_the_capability_says);
            scenario!(a_publish_before_any_group_is_kept_or_refused);
            scenario!(a_breaker_pauses_the_group_through_an_outage);
            scenario!(principals_travel_and_are_required);
            scenario!(a_message_over_the_size_limit_is_refused_where_it_is_made);
        }
    };
}
