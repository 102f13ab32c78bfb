//! Request-response messaging on the embedded backend, end to end: replies to the reply
//! handler exactly once, typed rejections across the wire, `request().await`, durable
//! timeouts, late/duplicate/forged replies, expired requests skipped, two nodes of a group,
//! and a requester restart with the recipient down (request checker over the history).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Publisher, read_dead_letters};
use tabgrab::messaging::store::{CorrelationStore, RecordState};
use tabgrab::messaging::{
    MemoryStore, Outcome, PostgresStore, REPLY_TYPE, REQUEST_TYPE_ATTR, RESPONDER_ATTR, ReplyBody,
    ReplyContext, Requester, Responder, SendOptions, SqliteStore,
};
use tabgrab::{Envelope, Message, Rejection};
use tabgrab_testkit::history::{RequestEnd, RequestHistory};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Message)]
#[message(type = "test.payment.charge.v1", command, response = Charged)]
struct Charge {
    order: String,
    cents: u64,
}
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Charged {
    order: String,
    receipt: String,
}

const TOPIC: &str = "payment";
const GROUP: &str = "front-desk";
const WAIT: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds or the deadline passes.
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < WAIT, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What reply handlers saw: (request id, outcome).
type Seen = Arc<Mutex<Vec<(String, Outcome<Charge>, serde_json::Value)>>>;

fn recorder(
    seen: &Seen,
) -> impl Fn(
    Outcome<Charge>,
    ReplyContext,
) -> futures::future::Ready<Result<(), tabgrab::event::HandlerError>>
+ Send
+ Sync
+ 'static {
    let seen = Arc::clone(seen);
    move |outcome, ctx: ReplyContext| {
        seen.lock()
            .unwrap()
            .push((ctx.request_id().to_owned(), outcome, ctx.context().clone()));
        futures::future::ready(Ok(()))
    }
}

fn payment(bus: &EmbeddedBus) -> Responder {
    Responder::builder(bus, TOPIC, "payment")
        .handle(|c: Charge, _ctx| async move {
            if c.cents > 10_000 {
                Err(Rejection::new("payment.card-declined", "over the limit")
                    .with_details(&serde_json::json!({ "limit": 10_000 }))
                    .unwrap()
                    .into())
            } else {
                Ok(Charged {
                    receipt: format!("r-{}", c.order),
                    order: c.order,
                })
            }
        })
        .start()
        .unwrap()
}

fn charge(order: &str, cents: u64) -> Charge {
    Charge {
        order: order.into(),
        cents,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_reaches_the_reply_handler_once_with_the_callers_context() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let seen = Seen::default();
    let requester = Requester::builder(&bus, GROUP)
        .store(SqliteStore::open(dir.path().join("corr.db")).await.unwrap())
        .on_reply(TOPIC, recorder(&seen))
        .start()
        .unwrap();
    let responder = payment(&bus);
    let ok = requester
        .send(
            &charge("o-1", 900),
            SendOptions::default().context(serde_json::json!({ "order": "o-1" })),
        )
        .await
        .unwrap();
    let declined = requester
        .send(&charge("o-2", 99_000), SendOptions::default())
        .await
        .unwrap();
    wait_until("two outcomes", || seen.lock().unwrap().len() == 2).await;
    let seen = seen.lock().unwrap().clone();
    let by_id: HashMap<_, _> = seen
        .iter()
        .map(|(id, o, c)| (id.clone(), (o.clone(), c.clone())))
        .collect();
    assert_eq!(
        by_id[ok.as_str()],
        (
            Outcome::Replied(Ok(Charged {
                order: "o-1".into(),
                receipt: "r-o-1".into()
            })),
            serde_json::json!({ "order": "o-1" })
        )
    );
    let Outcome::Replied(Err(rejection)) = &by_id[declined.as_str()].0 else {
        panic!("expected a rejection, got {:?}", by_id[declined.as_str()]);
    };
    assert_eq!(rejection.code, "payment.card-declined");
    assert_eq!(
        rejection.details,
        Some(serde_json::json!({ "limit": 10_000 }))
    );
    // The handler runs before the store records the completion: wait for the latter.
    wait_until("both completed", || requester.stats().replied == 2).await;
    let store = requester.store();
    assert_eq!(
        store.state(ok.as_str()).await.unwrap(),
        Some(RecordState::Replied)
    );
    let stats = requester.stats();
    assert_eq!(
        (stats.sent, stats.records_written, stats.replied),
        (2, 2, 2)
    );
    assert_eq!(
        (responder.stats().replied, responder.stats().rejected),
        (1, 1)
    );
    requester.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_awaits_the_outcome_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let requester = Requester::builder(&bus, GROUP)
        .store(MemoryStore::new())
        .route::<Charge>(TOPIC)
        .start()
        .unwrap();
    let responder = payment(&bus);
    let charged = requester
        .request(&charge("o-9", 100), SendOptions::default())
        .await
        .unwrap();
    assert_eq!(charged.receipt, "r-o-9");
    // A refusal is an error of kind Remote that keeps the responder's rejection whole.
    let refused = requester
        .request(&charge("o-10", 100_000), SendOptions::default())
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), tabgrab::ErrorKind::Remote, "{refused}");
    assert_eq!(
        refused.rejection().map(|r| r.code.as_str()),
        Some("payment.card-declined")
    );
    // Nobody answers a request sent to a topic without responder: it times out.
    responder.shutdown().await.unwrap();
    let timed_out = requester
        .request(
            &charge("o-11", 1),
            SendOptions::default().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap_err();
    assert_eq!(
        timed_out.kind(),
        tabgrab::ErrorKind::DeadlineExceeded,
        "{timed_out}"
    );
    assert!(timed_out.rejection().is_none());
    // A request with no route is refused before anything is stored, and the error says how
    // to add one, naming the Rust type.
    let unrouted = Requester::builder(&bus, "unrouted")
        .store(MemoryStore::new())
        .start()
        .unwrap();
    let no_route = unrouted
        .request(&charge("o-12", 1), SendOptions::default())
        .await
        .unwrap_err();
    assert_eq!(no_route.kind(), tabgrab::ErrorKind::UnknownType);
    assert!(
        no_route.to_string().contains(".route::<Charge>(topic)"),
        "{no_route}"
    );
    unrouted.shutdown().await.unwrap();
    requester.shutdown().await.unwrap();
}

/// A response that counts how often it is serialized and deserialized.
#[derive(Debug, PartialEq)]
struct Tally(u64);

/// The serializers and deserializers a `Tally` went through, by type name.
static SERIALIZED_BY: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
static DESERIALIZED_BY: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());

impl Serialize for Tally {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SERIALIZED_BY
            .lock()
            .unwrap()
            .push(std::any::type_name::<S>());
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for Tally {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Tally, D::Error> {
        DESERIALIZED_BY
            .lock()
            .unwrap()
            .push(std::any::type_name::<D>());
        u64::deserialize(d).map(Tally)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.tally.count.v1", query, response = Tally)]
struct Count {
    n: u64,
}

/// A reply's response is serialized once (by the responder, straight to JSON text) and
/// deserialized once (by the requester, from the text): neither goes through a
/// `serde_json::Value` (which cost a tree and a second pass on each side).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_is_encoded_once_and_decoded_once_per_hop() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let requester = Requester::builder(&bus, GROUP)
        .store(MemoryStore::new())
        .route::<Count>("tally")
        .start()
        .unwrap();
    let responder = Responder::builder(&bus, "tally", "tally")
        .handle(|c: Count, _ctx| async move { Ok(Tally(c.n * 2)) })
        .start()
        .unwrap();
    for n in 1..=3 {
        let tally = requester
            .request(&Count { n }, SendOptions::default())
            .await
            .unwrap();
        assert_eq!(tally, Tally(n * 2));
        let (ser, de) = (
            SERIALIZED_BY.lock().unwrap(),
            DESERIALIZED_BY.lock().unwrap(),
        );
        assert_eq!(
            ser.len() as u64,
            n,
            "serializations after {n} requests: {ser:?}"
        );
        assert_eq!(
            de.len() as u64,
            n,
            "deserializations after {n} requests: {de:?}"
        );
        assert!(
            ser.iter()
                .chain(de.iter())
                .all(|name| !name.contains("value::")),
            "through a serde_json::Value: {ser:?} {de:?}"
        );
    }
    responder.shutdown().await.unwrap();
    requester.shutdown().await.unwrap();
}

/// Publishes a hand-made reply to the group's reply topic.
async fn publish_reply(
    bus: &EmbeddedBus,
    correlation: &str,
    request_type: &str,
    responder: &str,
    body: &ReplyBody,
) {
    let mut reply = Envelope::raw(
        "/test/forger",
        REPLY_TYPE,
        Bytes::from(body.encode().unwrap()),
    )
    .with_correlation_id(correlation);
    reply
        .extensions
        .insert(REQUEST_TYPE_ATTR.into(), request_type.into());
    reply
        .extensions
        .insert(RESPONDER_ATTR.into(), responder.into());
    Publisher::new(bus, &format!("replies.{GROUP}"), "/test/forger")
        .unwrap()
        .publish_envelope(&reply)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_duplicate_and_forged_replies_are_counted_and_never_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let seen = Seen::default();
    let requester = Requester::builder(&bus, GROUP)
        .store(SqliteStore::open(dir.path().join("corr.db")).await.unwrap())
        .on_reply(TOPIC, recorder(&seen))
        .sweep_interval(Duration::from_millis(10))
        .start()
        .unwrap();
    let answered = requester
        .send(&charge("o-1", 1), SendOptions::default())
        .await
        .unwrap();
    let unanswered = requester
        .send(
            &charge("o-2", 1),
            SendOptions::default().timeout(Duration::from_millis(50)),
        )
        .await
        .unwrap();
    let ok = ReplyBody::ok(&serde_json::json!({ "order": "o-1", "receipt": "r" })).unwrap();
    publish_reply(&bus, answered.as_str(), Charge::TYPE, TOPIC, &ok).await;
    wait_until("timeout and reply", || seen.lock().unwrap().len() == 2).await;
    // Duplicate, late, and three forgeries: unknown id, other type, other responder.
    publish_reply(&bus, answered.as_str(), Charge::TYPE, TOPIC, &ok).await;
    publish_reply(&bus, unanswered.as_str(), Charge::TYPE, TOPIC, &ok).await;
    publish_reply(&bus, "not-a-request", Charge::TYPE, TOPIC, &ok).await;
    publish_reply(
        &bus,
        answered.as_str(),
        "test.payment.refund.v1",
        TOPIC,
        &ok,
    )
    .await;
    publish_reply(&bus, unanswered.as_str(), Charge::TYPE, "kitchen", &ok).await;
    wait_until("all counted", || {
        let s = requester.stats();
        s.duplicate + s.late + s.rejected == 5 && s.replied + s.timed_out == 2
    })
    .await;
    let stats = requester.stats();
    assert_eq!(
        (
            stats.replied,
            stats.timed_out,
            stats.duplicate,
            stats.late,
            stats.rejected
        ),
        (1, 1, 1, 1, 3),
        "{stats:?}"
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2, "nothing more was delivered: {seen:?}");
    assert!(
        seen.iter()
            .any(|(id, o, _)| id == unanswered.as_str() && o.is_timed_out())
    );
    requester.shutdown().await.unwrap();
    // Forged replies are kept for inspection.
    let letters = read_dead_letters(&bus, &format!("replies.{GROUP}")).unwrap();
    assert_eq!(letters.len(), 3, "{letters:?}");
    // And the store tallied them, for every node of the group (and a console) to see.
    let store = SqliteStore::open(dir.path().join("corr.db")).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = tabgrab::messaging::CorrelationStore::counts(&store)
            .await
            .unwrap();
        if (c.late, c.duplicate, c.forged) == (1, 1, 3) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{c:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_responder_skips_requests_whose_deadline_passed() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let seen = Seen::default();
    let requester = Requester::builder(&bus, GROUP)
        .store(MemoryStore::new())
        .on_reply(TOPIC, recorder(&seen))
        .sweep_interval(Duration::from_millis(10))
        .start()
        .unwrap();
    requester
        .send(
            &charge("o-1", 1),
            SendOptions::default().timeout(Duration::from_millis(20)),
        )
        .await
        .unwrap();
    wait_until("timed out", || seen.lock().unwrap().len() == 1).await;
    let ran = Arc::new(Mutex::new(0));
    let responder = {
        let ran = Arc::clone(&ran);
        Responder::builder(&bus, TOPIC, "payment")
            .handle(move |c: Charge, _ctx| {
                *ran.lock().unwrap() += 1;
                async move {
                    Ok(Charged {
                        receipt: String::new(),
                        order: c.order,
                    })
                }
            })
            .start()
            .unwrap()
    };
    wait_until("request skipped", || responder.stats().expired == 1).await;
    assert_eq!(*ran.lock().unwrap(), 0, "the handler never ran");
    assert_eq!(requester.stats().late, 0, "no reply was sent");
    responder.shutdown().await.unwrap();
    requester.shutdown().await.unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn a_timeout_comes_after_the_deadline_and_not_before() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let seen = Seen::default();
    let interval = Duration::from_millis(100);
    let requester = Requester::builder(&bus, GROUP)
        .store(MemoryStore::new())
        .on_reply(TOPIC, recorder(&seen))
        .sweep_interval(interval)
        .start()
        .unwrap();
    let id = requester
        .send(
            &charge("o-1", 1),
            SendOptions::default().timeout(Duration::from_secs(60)),
        )
        .await
        .unwrap();
    // From here on, time moves only when the test says so.
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(requester.sweep_now().await.unwrap(), 0);
    assert!(
        seen.lock().unwrap().is_empty(),
        "no timeout before the deadline"
    );
    tokio::time::advance(Duration::from_secs(1) + interval * 2).await;
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "the background sweep delivered the timeout");
    assert_eq!(seen[0].0, id.as_str());
    assert!(seen[0].1.is_timed_out());
    assert_eq!(requester.stats().timed_out, 1);
    tokio::time::resume();
    requester.shutdown().await.unwrap();
}

/// Two requester nodes of one group on one store: replies are shared between them, timeouts
/// are swept by both, and every request ends exactly once.
async fn two_nodes_share_the_work(store: Arc<dyn CorrelationStore>) {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let (seen_a, seen_b) = (Seen::default(), Seen::default());
    let node = |seen: &Seen| {
        Requester::builder(&bus, GROUP)
            .shared_store(Arc::clone(&store))
            .on_reply(TOPIC, recorder(seen))
            .sweep_interval(Duration::from_millis(10))
            .start()
            .unwrap()
    };
    let (a, b) = (node(&seen_a), node(&seen_b));
    let responder = payment(&bus);
    let mut sent = Vec::new();
    for i in 0..100 {
        let node = if i % 2 == 0 { &a } else { &b };
        // Every fifth request goes nowhere useful in time: it must time out, once.
        let timeout = if i % 5 == 0 { 1 } else { 30_000 };
        sent.push(
            node.send(
                &charge(&format!("o-{i}"), 1),
                SendOptions::default().timeout(Duration::from_millis(timeout)),
            )
            .await
            .unwrap(),
        );
    }
    let total = || seen_a.lock().unwrap().len() + seen_b.lock().unwrap().len();
    wait_until("100 outcomes", || total() >= 100).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut count: HashMap<String, usize> = HashMap::new();
    for (id, _, _) in seen_a
        .lock()
        .unwrap()
        .iter()
        .chain(seen_b.lock().unwrap().iter())
    {
        *count.entry(id.clone()).or_default() += 1;
    }
    for id in &sent {
        assert_eq!(count.get(id.as_str()), Some(&1), "request {id}");
    }
    assert_eq!(count.len(), 100);
    assert!(
        !seen_a.lock().unwrap().is_empty() && !seen_b.lock().unwrap().is_empty(),
        "both nodes handled outcomes"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_sqlite_store_share_the_replies_and_each_request_ends_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("corr.db")).await.unwrap();
    two_nodes_share_the_work(Arc::new(store)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_postgres_store_share_the_replies_and_each_request_ends_once() {
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let table = format!("corr_nodes_{}", uuid::Uuid::now_v7().simple());
    let store = PostgresStore::connect_table("postgres://postgres@127.0.0.1:5432/test", &table)
        .await
        .unwrap();
    two_nodes_share_the_work(Arc::new(store.clone())).await;
    store.drop_table(&table).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reply_handler_is_retried_and_the_request_completes_once() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let requester = {
        let calls = Arc::clone(&calls);
        Requester::builder(&bus, GROUP)
            .store(SqliteStore::open(dir.path().join("corr.db")).await.unwrap())
            .on_reply(TOPIC, move |_o: Outcome<Charge>, ctx: ReplyContext| {
                let mut calls = calls.lock().unwrap();
                calls.push(ctx.request_id().to_owned());
                let attempt = calls.len();
                async move {
                    if attempt < 3 {
                        Err(tabgrab::event::HandlerError::transient("database busy"))
                    } else {
                        Ok(())
                    }
                }
            })
            .start()
            .unwrap()
    };
    let responder = payment(&bus);
    let id = requester
        .send(&charge("o-1", 1), SendOptions::default())
        .await
        .unwrap();
    wait_until("three attempts", || calls.lock().unwrap().len() == 3).await;
    wait_until("replied", || requester.stats().replied == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        calls.lock().unwrap().len(),
        3,
        "no call after the successful one"
    );
    assert!(calls.lock().unwrap().iter().all(|c| c == id.as_str()));
    let stats = requester.stats();
    assert_eq!(
        (stats.replied, stats.handler_failures, stats.duplicate),
        (1, 2, 0),
        "{stats:?}"
    );
    assert_eq!(
        requester.store().state(id.as_str()).await.unwrap(),
        Some(RecordState::Replied)
    );
    requester.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_in_a_group_of_two_nodes_always_ends() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let store: Arc<dyn CorrelationStore> =
        Arc::new(SqliteStore::open(dir.path().join("corr.db")).await.unwrap());
    let node = || {
        Requester::builder(&bus, GROUP)
            .shared_store(Arc::clone(&store))
            .route::<Charge>(TOPIC)
            .sweep_interval(Duration::from_millis(20))
            .start()
            .unwrap()
    };
    let (a, b) = (node(), node());
    let responder = payment(&bus);
    let timeout = Duration::from_millis(300);
    let (mut here, mut elsewhere) = (0, 0);
    for i in 0..10 {
        let started = Instant::now();
        let outcome = a
            .request(
                &charge(&format!("o-{i}"), 1),
                SendOptions::default().timeout(timeout),
            )
            .await;
        // Deadline + two sweep intervals + 1 s, plus scheduling slack.
        assert!(started.elapsed() < timeout + Duration::from_secs(3));
        match outcome {
            Ok(_) => here += 1,
            Err(e) if e.kind() == tabgrab::ErrorKind::Unavailable => elsewhere += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    println!("answered on the awaiting node {here}, on the other node {elsewhere}");
    assert_eq!(here + elsewhere, 10);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
}

/// Recipient down: requests sent while the responder is stopped are answered when it starts
/// again, or end as TimedOut if their deadline passed first; the requester itself is
/// restarted (a new node on the same store) in between. None ends twice, none is left
/// pending; checked by the request checker over the recorded history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_recipient_down_every_request_ends_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let history = Arc::new(Mutex::new(RequestHistory::new()));
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let store_path = dir.path().join("corr.db");
    let started = std::time::SystemTime::now();
    let now_ms = move || {
        let base = started
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        base + started.elapsed().unwrap().as_millis() as i64
    };
    // Outcomes handed over by either node (the first node may already time out early
    // requests while the later ones are still being sent).
    let ended = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let make = |store: SqliteStore| {
        let history = Arc::clone(&history);
        let ended = Arc::clone(&ended);
        Requester::builder(&bus, GROUP)
            .store(store)
            .on_reply(TOPIC, move |outcome: Outcome<Charge>, ctx: ReplyContext| {
                let how = if outcome.is_timed_out() {
                    RequestEnd::TimedOut
                } else {
                    RequestEnd::Replied
                };
                history
                    .lock()
                    .unwrap()
                    .ended(ctx.request_id(), how, now_ms());
                ended.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                futures::future::ready(Ok(()))
            })
            .sweep_interval(Duration::from_millis(20))
            .start()
            .unwrap()
    };
    // Phase 1: the responder is down; 60 requests, a third with a short deadline.
    let first = make(SqliteStore::open(&store_path).await.unwrap());
    for i in 0..60 {
        let timeout = if i % 3 == 0 { 200 } else { 30_000 };
        let id = first
            .send(
                &charge(&format!("o-{i}"), 1),
                SendOptions::default().timeout(Duration::from_millis(timeout)),
            )
            .await
            .unwrap();
        // The store's deadline is a few ms earlier than this: the checker is lenient by that.
        history
            .lock()
            .unwrap()
            .sent(id.as_str(), now_ms() + timeout as i64);
    }
    // The requester node stops (a restart) before anything was answered, and stays down
    // until the short deadlines have passed.
    first.shutdown().await.unwrap();
    let first_stats = first.stats();
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Phase 2: a new node of the group on the same store, then the responder comes back.
    let second = make(SqliteStore::open(&store_path).await.unwrap());
    let responder = payment(&bus);
    wait_until("every request ended", || {
        ended.load(std::sync::atomic::Ordering::SeqCst) >= 60
    })
    .await;
    // The store records each completion after its handler returned.
    wait_until("every completion recorded", || {
        let s = second.stats();
        s.replied + s.timed_out + first_stats.timed_out == 60
    })
    .await;
    // Quiescence: nothing pending, nothing in progress.
    let counts = second.store().counts().await.unwrap();
    assert_eq!((counts.pending, counts.in_progress), (0, 0), "{counts:?}");
    assert_eq!((counts.replied, counts.timed_out), (40, 20), "{counts:?}");
    let history = history.lock().unwrap().clone();
    // Timeouts may come up to a second after their deadline (the sweep runs every 20 ms,
    // the restart took 300 ms); a reply after that would be a late reply delivered.
    let report = history.check(1_000);
    println!("request checker: {report}");
    assert!(report.is_valid(), "{report}");
    assert_eq!((report.replied, report.timed_out), (40, 20));
    assert_eq!(
        responder.stats().expired,
        20,
        "expired requests were not processed"
    );
    second.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
}

/// Every handler's context has one shape: the responder's and the reply handler's tell the
/// envelope, the attempt, the time left before the deadline and whether they are shutting
/// down; a timeout's reply context has no envelope and no time left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_tell_the_envelope_the_attempt_and_the_time_left() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let (seen, mut sight) = tokio::sync::mpsc::unbounded_channel::<String>();
    let timeout = Duration::from_secs(30);
    let within =
        move |left: Option<Duration>| left.is_some_and(|l| l > Duration::ZERO && l <= timeout);
    let responder = Responder::builder(&bus, TOPIC, "payment")
        .handle_with(seen.clone(), move |seen, c: Charge, ctx| async move {
            let line = format!(
                "request: type {}, attempt {}, time left {}, shutting down {}",
                ctx.envelope().ty,
                ctx.attempt(),
                within(ctx.remaining()),
                ctx.is_shutting_down()
            );
            seen.send(line)?;
            Ok(Charged {
                receipt: format!("r-{}", c.order),
                order: c.order,
            })
        })
        .start()
        .unwrap();
    let requester = Requester::builder(&bus, GROUP)
        .store(MemoryStore::new())
        .sweep_interval(Duration::from_millis(50))
        .on_reply_with(TOPIC, seen, move |seen, o: Outcome<Charge>, ctx| async move {
            let line = match ctx.envelope() {
                Some(reply) => format!(
                    "reply: answers the request {}, type {}, attempt {}, time left {}, shutting down {}",
                    reply.correlationid.as_deref() == Some(ctx.request_id()),
                    reply.ty,
                    ctx.attempt(),
                    within(ctx.remaining()),
                    ctx.is_shutting_down()
                ),
                None => format!(
                    "timeout: {}, attempt {}, time left {:?}",
                    o.is_timed_out(),
                    ctx.attempt(),
                    ctx.remaining()
                ),
            };
            seen.send(line)?;
            Ok(())
        })
        .start()
        .unwrap();
    requester
        .send(&charge("o-1", 100), SendOptions::default().timeout(timeout))
        .await
        .unwrap();
    assert_eq!(
        sight.recv().await.unwrap(),
        "request: type test.payment.charge.v1, attempt 1, time left true, shutting down false"
    );
    assert_eq!(
        sight.recv().await.unwrap(),
        format!(
            "reply: answers the request true, type {REPLY_TYPE}, attempt 1, time left true, \
             shutting down false"
        )
    );
    // Nobody answers once the responder is gone: the sweep hands the timeout over.
    responder.shutdown().await.unwrap();
    requester
        .send(
            &charge("o-2", 100),
            SendOptions::default().timeout(Duration::from_millis(100)),
        )
        .await
        .unwrap();
    assert_eq!(
        sight.recv().await.unwrap(),
        "timeout: true, attempt 1, time left Some(0ns)"
    );
    requester.shutdown().await.unwrap();
}
