//! The outbox and the inbox, without faults: a staged event is published once its
//! transaction commits and never if it rolls back; a relay drains a backlog in order; the
//! inbox reports a second delivery as a duplicate; several relays keep per-subject order.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod staged;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tabgrab::Envelope;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::inbox::Inbox;
use tabgrab::outbox::Outbox;

use staged::{indent_the_staged_row, wait_drained};

fn event(n: u64, subject: &str) -> Envelope {
    Envelope::raw(
        "/test",
        "test.thing.happened.v1",
        format!("{{\"n\":{n}}}").into(),
    )
    .with_subject(subject)
}

async fn sqlite_pool(dir: &std::path::Path) -> sqlx::SqlitePool {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.join("app.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap()
}

/// Every envelope of an embedded topic, oldest first.
fn read_topic(bus: &EmbeddedBus, topic: &str) -> Vec<Envelope> {
    let log = bus.topic(topic).unwrap();
    let codec = tabgrab::Codec::default();
    let mut out = Vec::new();
    let mut from = log.start_offset();
    loop {
        let records = log.read(from, 1024).unwrap();
        let Some(last) = records.last() else { break };
        from = last.offset + 1;
        for r in records {
            out.push(codec.decode(&r.payload).unwrap());
        }
    }
    out
}

#[tokio::test]
async fn sqlite_outbox_publishes_committed_events_and_never_rolled_back_ones() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(dir.path()).await;
    sqlx::query("CREATE TABLE ledger (id TEXT PRIMARY KEY)")
        .execute(&pool)
        .await
        .unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let outbox = Outbox::sqlite(pool.clone()).await.unwrap();
    let relay = outbox
        .relay(&bus)
        .poll_interval(Duration::from_secs(5))
        .start();

    let committed = event(1, "o-1");
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("INSERT INTO ledger (id) VALUES (?)")
        .bind(&committed.id)
        .execute(&mut *tx)
        .await
        .unwrap();
    outbox.stage(&mut tx, "orders", &committed).await.unwrap();
    outbox.commit(tx).await.unwrap();

    let rolled_back = event(2, "o-2");
    let mut tx = pool.begin().await.unwrap();
    outbox.stage(&mut tx, "orders", &rolled_back).await.unwrap();
    tx.rollback().await.unwrap();

    // notify() wakes the relay: far sooner than its 5 s poll.
    wait_drained(&outbox, Duration::from_secs(2)).await;
    let published = read_topic(&bus, "orders");
    assert_eq!(
        published,
        vec![committed.clone()],
        "the envelope travels unchanged"
    );
    let stats = outbox.stats();
    assert_eq!(
        (stats.staged, stats.published, stats.marked_sent),
        (2, 1, 1)
    );
    assert_eq!(relay.stats().published, 1);
    relay.shutdown().await.unwrap();
}

/// The relay publishes what the outbox stored, byte for byte, on the embedded log: an event
/// is encoded once, when it is staged. The stored bytes are rewritten here into an equivalent
/// JSON that the codec does not write (indented), so a relay that decoded and encoded again
/// would publish the codec's form instead.
#[tokio::test]
async fn sqlite_relay_publishes_the_stored_bytes_without_encoding_again() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(dir.path()).await;
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let outbox = Outbox::sqlite(pool.clone()).await.unwrap();
    let staged = event(7, "o-7");
    let mut tx = pool.begin().await.unwrap();
    outbox.stage(&mut tx, "orders", &staged).await.unwrap();
    tx.commit().await.unwrap();
    let indented = indent_the_staged_row(&pool, &outbox).await;

    let relay = outbox.relay(&bus).start();
    wait_drained(&outbox, Duration::from_secs(10)).await;
    let records = bus.topic("orders").unwrap().read(0, 10).unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].payload.as_ref(),
        indented.as_slice(),
        "the relay encoded the event again"
    );
    // The same event: its attributes, and its data as JSON (kept as the row wrote it).
    let published = read_topic(&bus, "orders").remove(0);
    let json = |data: &[u8]| serde_json::from_slice::<serde_json::Value>(data).unwrap();
    assert_eq!(json(&published.data), json(&staged.data));
    assert_eq!(
        Envelope {
            data: staged.data.clone(),
            ..published
        },
        staged
    );
    relay.shutdown().await.unwrap();
}

#[tokio::test]
async fn sqlite_relay_drains_a_backlog_in_staging_order_per_subject() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(dir.path()).await;
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let outbox = Outbox::sqlite_table(pool.clone(), "my_outbox")
        .await
        .unwrap();
    let mut staged: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for chunk in 0..10u64 {
        let mut tx = pool.begin().await.unwrap();
        for i in 0..50u64 {
            let n = chunk * 50 + i;
            let subject = format!("s{}", n % 7);
            let e = event(n, &subject);
            staged.entry(subject).or_default().push(e.id.clone());
            outbox.stage(&mut tx, "things", &e).await.unwrap();
        }
        tx.commit().await.unwrap();
    }
    assert_eq!(outbox.pending().await.unwrap(), 500);
    let relay = outbox.relay(&bus).batch_size(64).start();
    wait_drained(&outbox, Duration::from_secs(10)).await;
    relay.shutdown().await.unwrap();
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for e in read_topic(&bus, "things") {
        seen.entry(e.subject.clone().unwrap())
            .or_default()
            .push(e.id);
    }
    assert_eq!(
        seen, staged,
        "every event once, in staging order per subject"
    );
}

#[tokio::test]
async fn sqlite_inbox_reports_a_second_delivery_as_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(dir.path()).await;
    let inbox = Inbox::sqlite(pool.clone(), "payment").await.unwrap();
    let other_group = Inbox::sqlite(pool.clone(), "kitchen").await.unwrap();
    let e = event(1, "o-1");

    let mut tx = pool.begin().await.unwrap();
    assert!(inbox.record(&mut tx, &e).await.unwrap());
    tx.rollback().await.unwrap();
    assert!(
        !inbox.contains(&e.id).await.unwrap(),
        "a rolled-back record is forgotten"
    );

    let mut tx = pool.begin().await.unwrap();
    assert!(
        inbox.record(&mut tx, &e).await.unwrap(),
        "so the redelivery is the first"
    );
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    assert!(
        !inbox.record(&mut tx, &e).await.unwrap(),
        "then a duplicate"
    );
    tx.commit().await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    assert!(
        other_group.record(&mut tx, &e).await.unwrap(),
        "groups are independent"
    );
    tx.commit().await.unwrap();

    let stats = inbox.stats();
    assert_eq!((stats.first, stats.duplicates), (2, 1));
    assert_eq!(inbox.prune(Duration::from_secs(3600)).await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        inbox.prune(Duration::ZERO).await.unwrap(),
        1,
        "prunes its own group only"
    );
    assert!(other_group.contains(&e.id).await.unwrap());
}

/// The background pruner removes ids older than the retention, of its own group, and stops
/// when shut down.
#[tokio::test]
async fn sqlite_inbox_pruner_removes_old_ids_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(dir.path()).await;
    let inbox = Inbox::sqlite(pool.clone(), "payment").await.unwrap();
    let other_group = Inbox::sqlite(pool.clone(), "kitchen").await.unwrap();
    let events: Vec<Envelope> = (0..5).map(|n| event(n, "o-1")).collect();
    let mut tx = pool.begin().await.unwrap();
    for e in &events {
        assert!(inbox.record(&mut tx, e).await.unwrap());
        assert!(other_group.record(&mut tx, e).await.unwrap());
    }
    tx.commit().await.unwrap();
    // A retention of 1 ms: every id is old by the pruner's first round.
    let pruner = inbox.spawn_pruner(Duration::from_millis(20), Duration::from_millis(1));
    let deadline = Instant::now() + Duration::from_secs(5);
    while inbox.stats().pruned < 5 {
        assert!(Instant::now() < deadline, "pruned {}", inbox.stats().pruned);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    pruner.shutdown().await.unwrap();
    for e in &events {
        assert!(!inbox.contains(&e.id).await.unwrap(), "{} was pruned", e.id);
        assert!(
            other_group.contains(&e.id).await.unwrap(),
            "another group's ids stay"
        );
    }
    assert_eq!(inbox.stats().pruned, 5);
}

#[tokio::test]
async fn stage_refuses_a_bad_topic_and_a_bad_table_name() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(dir.path()).await;
    let err = Outbox::sqlite_table(pool.clone(), "drop table;")
        .await
        .unwrap_err();
    assert_eq!(err.kind(), tabgrab::ErrorKind::Malformed);
    let outbox = Outbox::sqlite(pool.clone()).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    let err = outbox.stage(&mut tx, "", &event(1, "s")).await.unwrap_err();
    assert_eq!(err.kind(), tabgrab::ErrorKind::Malformed);
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_concurrent_copies_of_one_message_are_recorded_once() {
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    let table = format!("inbox_race_{:x}", rand::random::<u32>());
    let inbox = Inbox::postgres_table(pool.clone(), "payment", &table)
        .await
        .unwrap();
    let e = event(1, "o-1");
    // The first copy records and holds its transaction open; the second copy's record
    // waits for it, and once it commits, finds a duplicate.
    let mut first = pool.begin().await.unwrap();
    assert!(inbox.record(&mut first, &e).await.unwrap());
    let second = {
        let (pool, inbox, e) = (pool.clone(), inbox.clone(), e.clone());
        tokio::spawn(async move {
            let mut tx = pool.begin().await.unwrap();
            let fresh = inbox.record(&mut tx, &e).await.unwrap();
            tx.commit().await.unwrap();
            fresh
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !second.is_finished(),
        "the second copy waits for the first transaction"
    );
    first.commit().await.unwrap();
    assert!(!second.await.unwrap(), "and is then a duplicate");
    assert_eq!(inbox.stats().duplicates, 1);
    sqlx::query(&format!("DROP TABLE {table}"))
        .execute(&pool)
        .await
        .unwrap();
}

#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_publishes_committed_events_and_never_rolled_back_ones() {
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    let table = format!("outbox_basic_{:x}", rand::random::<u32>());
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let outbox = Outbox::postgres_table(pool.clone(), &table).await.unwrap();
    let relay = outbox.relay(&bus).start();
    let committed = event(1, "o-1");
    let mut tx = pool.begin().await.unwrap();
    outbox.stage(&mut tx, "orders", &committed).await.unwrap();
    outbox.commit(tx).await.unwrap();
    let mut tx = pool.begin().await.unwrap();
    outbox
        .stage(&mut tx, "orders", &event(2, "o-2"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    wait_drained(&outbox, Duration::from_secs(5)).await;
    relay.shutdown().await.unwrap();
    assert_eq!(read_topic(&bus, "orders"), vec![committed]);
    for t in [format!("{table}_dead"), table] {
        sqlx::query(&format!("DROP TABLE {t}"))
            .execute(&pool)
            .await
            .unwrap();
    }
}

/// Backend independence, and the envelope id as the de-duplication key: a row published
/// again (as after a relay crash between the publish and the delete) is recognised by
/// JetStream as a duplicate, and the stream holds the event once.
#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_relay_republish_is_deduplicated_by_the_envelope_id() {
    if !tabgrab_testkit::services::require("NATS", "127.0.0.1:4222") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(dir.path()).await;
    let bus = tabgrab::backend::Bus::connect("nats://127.0.0.1:4222")
        .await
        .unwrap();
    let topic = format!("outbox-dedup-{:x}", rand::random::<u32>());
    let outbox = Outbox::sqlite(pool.clone()).await.unwrap();
    let relay = outbox.relay(&bus).start();
    let e = event(1, "o-1");
    for _ in 0..2 {
        let mut tx = pool.begin().await.unwrap();
        outbox.stage(&mut tx, &topic, &e).await.unwrap();
        outbox.commit(tx).await.unwrap();
        wait_drained(&outbox, Duration::from_secs(5)).await;
    }
    let stats = outbox.stats();
    assert_eq!((stats.published, stats.duplicates), (2, 1), "{stats:?}");
    let backend = bus.backend();
    let stored = backend
        .read_all(&tabgrab::Topic::new(&topic).unwrap())
        .await
        .unwrap();
    assert_eq!(stored, vec![e], "one event in the stream");
    relay.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

/// An event the bus refuses for good (here: larger than the bus takes) goes to the outbox's
/// dead-letter table with its reason, and the events behind it on its subject are published;
/// nothing is lost and the subject is not blocked. Returns the dead letters for the caller's
/// own checks.
async fn refused_event_is_dead_lettered_and_its_subject_flows<DB: tabgrab::sql::Database>(
    outbox: &Outbox<DB>,
    pool: &sqlx::Pool<DB>,
) -> Vec<tabgrab::outbox::OutboxDeadLetter>
where
    for<'c> &'c mut <DB as sqlx::Database>::Connection: sqlx::Executor<'c, Database = DB>,
{
    let dir = tempfile::tempdir().unwrap();
    // The bus takes envelopes of up to 1 KiB; the outbox (default codec) stages up to 1 MiB.
    let mut config = tabgrab::backend::embedded::EmbeddedConfig::new(dir.path().join("bus"));
    config.codec = tabgrab::Codec::with_max_size(1024);
    let bus = EmbeddedBus::open_with(config).unwrap();
    let big = Envelope::raw(
        "/test",
        "test.thing.happened.v1",
        format!("{{\"pad\":\"{}\"}}", "x".repeat(4096)).into(),
    )
    .with_subject("o-1");
    let after = event(2, "o-1");
    let other = event(3, "o-2");
    let mut tx = pool.begin().await.unwrap();
    for e in [&big, &after, &other] {
        outbox.stage(&mut tx, "orders", e).await.unwrap();
    }
    outbox.commit(tx).await.unwrap();
    let relay = outbox.relay(&bus).start();
    wait_drained(outbox, Duration::from_secs(5)).await;
    let stats = relay.stats();
    relay.shutdown().await.unwrap();
    assert_eq!(stats.dead_lettered, 1, "{stats:?}");
    assert_eq!(outbox.stats().dead_lettered, 1);
    // The event behind it on its subject, and the other subject, were published, in order.
    assert_eq!(read_topic(&bus, "orders"), vec![after, other]);
    let letters = outbox.dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0];
    assert_eq!(letter.id, big.id);
    assert_eq!(letter.topic, "orders");
    assert_eq!(letter.subject, "o-1");
    assert_eq!(letter.reason, "too_large");
    assert_eq!(letter.attempts, 1);
    assert!(!letter.error.is_empty());
    // Kept as staged: it decodes to the very envelope.
    assert_eq!(
        tabgrab::Codec::default().decode(&letter.envelope).unwrap(),
        big
    );
    letters
}

#[tokio::test]
async fn sqlite_refused_event_is_dead_lettered_and_its_subject_flows() {
    let dir = tempfile::tempdir().unwrap();
    let pool = sqlite_pool(dir.path()).await;
    let outbox = Outbox::sqlite(pool.clone()).await.unwrap();
    refused_event_is_dead_lettered_and_its_subject_flows(&outbox, &pool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refused_event_is_dead_lettered_and_its_subject_flows() {
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect("postgres://postgres@127.0.0.1:5432/test")
        .await
        .unwrap();
    let table = format!("outbox_dead_{:x}", rand::random::<u32>());
    let outbox = Outbox::postgres_table(pool.clone(), &table).await.unwrap();
    refused_event_is_dead_lettered_and_its_subject_flows(&outbox, &pool).await;
    for t in [format!("{table}_dead"), table] {
        sqlx::query(&format!("DROP TABLE {t}"))
            .execute(&pool)
            .await
            .unwrap();
    }
}
