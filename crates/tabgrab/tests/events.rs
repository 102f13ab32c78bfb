//! Events on the embedded backend, end to end: publish, consumer groups, ordering, retries,
//! dead letters, bad input, replay, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tabgrab::backend::embedded::{EmbeddedBus, EmbeddedConfig};
use tabgrab::event::{
    Context, HandlerError, Publisher, StartFrom, Subscription, read_dead_letters,
};
use tabgrab::retry::Backoff;
use tabgrab::{Codec, Envelope, Message};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, Message)]
#[message(type = "test.ticket.placed.v1", event)]
struct Ticket {
    order: String,
    seq: u32,
}

const TOPIC: &str = "tickets";
const DEADLINE: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds or the deadline passes (then fails with `what`).
async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(1),
        max: Duration::from_millis(5),
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
            publisher
                .publish(
                    &Ticket {
                        order: (*order).into(),
                        seq,
                    },
                    *order,
                )
                .await
                .unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_is_delivered_in_order_per_subject() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    publish_tickets(&publisher, &["a", "b", "c", "d"], 50).await;

    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    wait_until("200 deliveries", || seen.lock().unwrap().len() >= 200).await;
    sub.shutdown().await.unwrap();

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 200, "no duplicates without a crash");
    let mut per_order: HashMap<&str, Vec<u32>> = HashMap::new();
    for (order, seq) in seen.iter() {
        per_order.entry(order).or_default().push(*seq);
    }
    for (order, seqs) in per_order {
        assert_eq!(
            seqs,
            (0..50).collect::<Vec<_>>(),
            "order of subject {order}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_group_sees_every_event_and_members_of_a_group_share_them() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    let orders: Vec<String> = (0..40).map(|i| format!("o{i}")).collect();
    let order_refs: Vec<&str> = orders.iter().map(String::as_str).collect();

    let audit: Seen = Arc::default();
    let member_a: Seen = Arc::default();
    let member_b: Seen = Arc::default();
    let audit_sub = Subscription::builder(&bus, TOPIC, "audit")
        .handle(recorder(&audit))
        .start()
        .unwrap();
    let a = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(recorder(&member_a))
        .start()
        .unwrap();
    let b = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(recorder(&member_b))
        .start()
        .unwrap();
    publish_tickets(&publisher, &order_refs, 5).await;

    wait_until("audit sees all", || audit.lock().unwrap().len() >= 200).await;
    wait_until("kitchen sees all", || {
        member_a.lock().unwrap().len() + member_b.lock().unwrap().len() >= 200
    })
    .await;
    audit_sub.shutdown().await.unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();

    let (na, nb) = (
        member_a.lock().unwrap().len(),
        member_b.lock().unwrap().len(),
    );
    assert_eq!(na + nb, 200, "each event handled once by the group");
    assert!(
        na > 0 && nb > 0,
        "competing members share the work: {na} / {nb}"
    );
    assert_eq!(audit.lock().unwrap().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retrying_subject_does_not_block_others_and_poison_is_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    publisher
        .publish(
            &Ticket {
                order: "poison".into(),
                seq: 0,
            },
            "poison",
        )
        .await
        .unwrap();
    publisher
        .publish(
            &Ticket {
                order: "poison".into(),
                seq: 1,
            },
            "poison",
        )
        .await
        .unwrap();
    publish_tickets(&publisher, &["x", "y", "z"], 30).await;

    let attempts = Arc::new(AtomicU32::new(0));
    let seen: Seen = Arc::default();
    let handler = {
        let (attempts, seen) = (Arc::clone(&attempts), Arc::clone(&seen));
        move |t: Ticket, ctx: Context| {
            let (attempts, seen) = (Arc::clone(&attempts), Arc::clone(&seen));
            async move {
                if t.order == "poison" && t.seq == 0 {
                    attempts.store(ctx.attempt(), Ordering::SeqCst);
                    return Err(HandlerError::transient(format!(
                        "oven on fire (attempt {})",
                        ctx.attempt()
                    )));
                }
                seen.lock().unwrap().push((t.order, t.seq));
                Ok(())
            }
        }
    };
    // Phase 1: effectively endless retries. Everything else must still flow.
    let sub = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(handler.clone())
        .max_deliveries(1_000_000)
        .backoff(fast_backoff())
        .start()
        .unwrap();
    wait_until("other subjects handled", || {
        seen.lock().unwrap().len() >= 90
    })
    .await;
    wait_until("poison retried", || attempts.load(Ordering::SeqCst) >= 3).await;
    assert!(
        seen.lock().unwrap().iter().all(|(o, _)| o != "poison"),
        "the event after the poison in its subject waits for it"
    );
    assert!(read_dead_letters(&bus, TOPIC).unwrap().is_empty());
    sub.shutdown().await.unwrap();

    // Phase 2: a delivery limit sends the poison to dead letters, and its subject resumes.
    let sub = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(handler)
        .max_deliveries(3)
        .backoff(fast_backoff())
        .start()
        .unwrap();
    wait_until("poison subject resumes", || {
        seen.lock()
            .unwrap()
            .iter()
            .any(|(o, s)| o == "poison" && *s == 1)
    })
    .await;
    let stats = sub.stats();
    sub.shutdown().await.unwrap();
    let letters = read_dead_letters(&bus, TOPIC).unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.reason, "max_deliveries");
    assert_eq!(letter.attempts, 3);
    assert_eq!(letter.offset, 0);
    assert_eq!(letter.group, "kitchen");
    assert!(
        letter.error.contains("oven on fire (attempt 3)"),
        "{}",
        letter.error
    );
    assert_eq!(letter.subject.as_deref(), Some("poison"));
    let original = Codec::default()
        .decode(&letter.original().unwrap())
        .unwrap();
    assert_eq!(
        original.decode::<Ticket>().unwrap(),
        Ticket {
            order: "poison".into(),
            seq: 0
        }
    );
    assert_eq!(stats.dead_lettered, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_goes_straight_to_dead_letters_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = EmbeddedConfig::new(dir.path());
    config.codec = Codec::with_max_size(4096);
    let bus = EmbeddedBus::open_with(config).unwrap();
    let log = bus.topic(TOPIC).unwrap();
    let valid = |ty: &str| {
        let mut e = Envelope::new(
            "/test",
            &Ticket {
                order: "o".into(),
                seq: 1,
            },
        )
        .unwrap()
        .with_subject("o");
        e.ty = ty.into();
        e
    };
    let big = Envelope::new(
        "/test",
        &Ticket {
            order: "x".repeat(10_000),
            seq: 1,
        },
    )
    .unwrap();
    let inputs: Vec<(Bytes, &str)> = vec![
        (Bytes::from_static(b"\x00\xffnot json at all"), "malformed"),
        (Codec::default().encode(&big).unwrap(), "too_large"),
        (Codec::default().encode(&valid("test.ticket.eaten.v1")).unwrap(), "unknown_type"),
        (Codec::default().encode(&valid("test.ticket.placed.v2")).unwrap(), "unsupported_version"),
        (Bytes::from_static(br#"{"specversion":"1.0","source":"/x","type":"test.ticket.placed.v1"}"#), "missing_attribute"),
        (Bytes::from_static(br#"{"specversion":"1.0","id":"1","source":"/x","type":"test.ticket.placed.v1","data":{"order":7}}"#), "invalid_payload"),
    ];
    for (bytes, _) in &inputs {
        log.append(bytes.clone()).await.unwrap();
    }
    Publisher::new(&bus, TOPIC, "/test")
        .unwrap()
        .publish(
            &Ticket {
                order: "ok".into(),
                seq: 9,
            },
            "ok",
        )
        .await
        .unwrap();

    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    wait_until("valid event handled", || !seen.lock().unwrap().is_empty()).await;
    wait_until("all bad input dead-lettered", || {
        read_dead_letters(&bus, TOPIC).unwrap().len() >= inputs.len()
    })
    .await;
    sub.shutdown().await.unwrap();

    assert_eq!(*seen.lock().unwrap(), vec![("ok".to_owned(), 9)]);
    let mut letters = read_dead_letters(&bus, TOPIC).unwrap();
    // Bad envelopes are dead-lettered in the order read; a payload that does not decode is
    // found in its lane, so its dead letter may come first.
    letters.sort_by_key(|l| l.offset);
    assert_eq!(letters.len(), inputs.len());
    for (offset, ((bytes, reason), letter)) in inputs.iter().zip(&letters).enumerate() {
        assert_eq!(letter.reason, *reason, "offset {offset}: {}", letter.error);
        assert_eq!(letter.offset, offset as u64);
        assert_eq!(letter.original_size, bytes.len() as u64);
        if letter.original_truncated {
            // Only the 10 KB one: its dead letter must fit the bus's 4 KiB limit too, so it
            // keeps the start of it, and says where the whole is.
            assert_eq!(offset, 1);
            let excerpt = letter.excerpt().unwrap();
            assert!(!excerpt.is_empty() && bytes.starts_with(&excerpt));
            let kept_at = letter.original_kept_at.as_deref().unwrap();
            assert!(kept_at.contains("offset 1"), "{kept_at}");
        } else {
            assert_eq!(
                &letter.original().unwrap(),
                bytes,
                "the original is kept byte for byte"
            );
        }
        assert!(!letter.error.is_empty());
    }
    assert!(
        letters[1]
            .error
            .contains("exceeds the maximum of 4096 bytes"),
        "{}",
        letters[1].error
    );
    assert!(
        letters[3].error.contains("knows only v1"),
        "{}",
        letters[3].error
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_resumes_after_its_committed_offset_and_can_replay() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    publish_tickets(&publisher, &["a"], 10).await;
    // Replay by time has millisecond granularity: keep the boundary clear of both batches.
    tokio::time::sleep(Duration::from_millis(3)).await;
    let before_second_batch = SystemTime::now();
    tokio::time::sleep(Duration::from_millis(5)).await;

    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    wait_until("first ten", || seen.lock().unwrap().len() >= 10).await;
    sub.shutdown().await.unwrap();

    for seq in 10..15 {
        publisher
            .publish(
                &Ticket {
                    order: "a".into(),
                    seq,
                },
                "a",
            )
            .await
            .unwrap();
    }
    let resumed: Seen = Arc::default();
    let sub = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(recorder(&resumed))
        .start()
        .unwrap();
    wait_until("five more", || resumed.lock().unwrap().len() >= 5).await;
    sub.shutdown().await.unwrap();
    let seqs: Vec<u32> = resumed.lock().unwrap().iter().map(|(_, s)| *s).collect();
    assert_eq!(
        seqs,
        vec![10, 11, 12, 13, 14],
        "only what the group had not acknowledged"
    );

    for (start, expected_first, expected_len) in [
        (StartFrom::Beginning, 0, 15),
        (StartFrom::Offset(12), 12, 3),
        (StartFrom::Time(before_second_batch), 10, 5),
    ] {
        let replayed: Seen = Arc::default();
        let sub = Subscription::builder(&bus, TOPIC, "kitchen")
            .handle(recorder(&replayed))
            .start_from(start)
            .start()
            .unwrap();
        wait_until("replay", || replayed.lock().unwrap().len() >= expected_len).await;
        sub.shutdown().await.unwrap();
        let seqs: Vec<u32> = replayed.lock().unwrap().iter().map(|(_, s)| *s).collect();
        assert_eq!(seqs.first(), Some(&expected_first), "{start:?}");
        assert_eq!(seqs.len(), expected_len, "{start:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_running_handlers_and_commits_them() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    publish_tickets(&publisher, &["slow"], 1).await;

    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Notify::new());
    let done = Arc::new(AtomicU32::new(0));
    let handler = {
        let (started, release, done) = (
            Arc::clone(&started),
            Arc::clone(&release),
            Arc::clone(&done),
        );
        move |_t: Ticket, _ctx: Context| {
            let (started, release, done) = (
                Arc::clone(&started),
                Arc::clone(&release),
                Arc::clone(&done),
            );
            async move {
                started.notify_one();
                release.notified().await;
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        }
    };
    let sub = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(handler)
        .start()
        .unwrap();
    started.notified().await;
    let shutdown = tokio::spawn(sub.shutdown());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        !shutdown.is_finished(),
        "shutdown waits for the running handler"
    );
    release.notify_one();
    shutdown.await.unwrap().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), 1);
    assert_eq!(
        bus.topic(TOPIC)
            .unwrap()
            .consumer_offset("kitchen")
            .unwrap(),
        Some(1),
        "the drained event is committed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_events_survive_closing_and_reopening_the_bus() {
    let dir = tempfile::tempdir().unwrap();
    let receipts = {
        let bus = EmbeddedBus::open(dir.path()).unwrap();
        let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
        let batch: Vec<Envelope> = (0..20)
            .map(|seq| {
                publisher
                    .envelope(
                        &Ticket {
                            order: "b".into(),
                            seq,
                        },
                        "b",
                    )
                    .unwrap()
            })
            .collect();
        let receipts = publisher.publish_batch(&batch).await.unwrap();
        bus.close().await.unwrap();
        assert!(
            publisher
                .publish(
                    &Ticket {
                        order: "b".into(),
                        seq: 99
                    },
                    "b"
                )
                .await
                .is_err(),
            "closed bus refuses"
        );
        receipts
    };
    assert_eq!(
        receipts.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(recorder(&seen))
        .start()
        .unwrap();
    wait_until("all twenty", || seen.lock().unwrap().len() >= 20).await;
    sub.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_handler_sees_shutdown_and_its_event_stays_unacknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    publish_tickets(&publisher, &["waits"], 1).await;

    let started = Arc::new(tokio::sync::Notify::new());
    let handler = {
        let started = Arc::clone(&started);
        move |_t: Ticket, ctx: Context| {
            let started = Arc::clone(&started);
            async move {
                started.notify_one();
                ctx.shutdown_requested().await;
                assert!(ctx.is_shutting_down());
                Err(HandlerError::transient("gave way to shutdown"))
            }
        }
    };
    let sub = Subscription::builder(&bus, TOPIC, "kitchen")
        .handle(handler)
        .drain_timeout(Duration::from_secs(60))
        .start()
        .unwrap();
    started.notified().await;
    assert_eq!(sub.lag(), 1, "the waiting event is not done");
    let began = Instant::now();
    sub.shutdown().await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "shutdown did not wait for the drain timeout"
    );
    let committed = bus
        .topic(TOPIC)
        .unwrap()
        .consumer_offset("kitchen")
        .unwrap();
    assert_eq!(
        committed.unwrap_or(0),
        0,
        "the unfinished event is redelivered after a restart"
    );
    assert!(
        read_dead_letters(&bus, TOPIC).unwrap().is_empty(),
        "shutdown is not a failure"
    );
}

#[tokio::test]
async fn listing_dead_letters_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    assert!(read_dead_letters(&bus, TOPIC).unwrap().is_empty());
    let topics: Vec<_> = std::fs::read_dir(dir.path().join("topics"))
        .unwrap()
        .collect();
    assert!(topics.is_empty(), "reading dead letters made {topics:?}");
}

/// While the dead letters cannot be written (here: their topic's directory is a file), a bad
/// record waits unacknowledged, every failed write is counted, and the records behind it
/// flow; once the dead letters can be written again, it is recorded and the group's
/// watermark moves past it. A failed dead-letter write used to hold up the whole group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_written_blocks_nothing_and_is_written_later() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let blocker = dir
        .path()
        .join("topics")
        .join(format!("{TOPIC}.dead-letters"));
    std::fs::write(&blocker, b"not a directory").unwrap();
    let seen: Seen = Arc::default();
    let sub = Subscription::builder(&bus, TOPIC, "g")
        .backoff(fast_backoff())
        .handle(recorder(&seen))
        .start()
        .unwrap();
    let bad = tabgrab::backend::Bus::from(&bus)
        .publish_raw(TOPIC, None, Bytes::from_static(b"\x00 not an envelope"))
        .await
        .unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    publish_tickets(&publisher, &["a", "b"], 5).await;
    wait_until("the records behind the bad one", || {
        seen.lock().unwrap().len() == 10
    })
    .await;
    wait_until("failed dead-letter writes are counted", || {
        sub.stats().dead_letter_failures >= 2
    })
    .await;
    assert_eq!(sub.stats().dead_lettered, 0);
    assert_eq!(bad.position, 0);
    assert_eq!(sub.lag(), 11, "the bad record is still pending");

    std::fs::remove_file(&blocker).unwrap();
    wait_until("the dead letter is written", || {
        sub.stats().dead_lettered == 1
    })
    .await;
    wait_until("the watermark moves past it", || sub.lag() == 0).await;
    let letters = read_dead_letters(&bus, TOPIC).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].offset, bad.position);
    assert_eq!(letters[0].reason, "malformed");
    sub.shutdown().await.unwrap();
}
