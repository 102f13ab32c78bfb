//! The correlation store suite: one set of behaviours, run against every store (in memory,
//! SQLite in a temporary directory, PostgreSQL on the real server).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::Arc;

use tabgrab::messaging::store::{
    Claim, CorrelationStore, MemoryStore, PendingRequest, PostgresStore, RecordState, ReplyKey,
    SqliteStore, Tally,
};

const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const T0: i64 = 1_700_000_000_000;
const LEASE: i64 = 1_000;

fn request(id: &str, deadline_ms: i64) -> PendingRequest {
    PendingRequest {
        id: id.to_owned(),
        group: "front-desk".to_owned(),
        request_type: "test.payment.charge.v1".to_owned(),
        responder: "payment".to_owned(),
        sent_ms: T0,
        deadline_ms,
        context: serde_json::json!({ "order": id, "step": 1 }),
    }
}

fn key(id: &str) -> ReplyKey<'_> {
    ReplyKey {
        id,
        request_type: Some("test.payment.charge.v1"),
        responder: Some("payment"),
    }
}

/// Runs every behaviour against `store`, whose claims name `holder` (`None`: any name);
/// ids are prefixed so that one store can hold them all.
async fn suite(store: Arc<dyn CorrelationStore>, holder: Option<&str>) {
    let s = &*store;
    // Insert, and a second insert of the same id fails.
    s.insert(&request("a", T0 + 5_000)).await.unwrap();
    assert_eq!(s.state("a").await.unwrap(), Some(RecordState::Pending));
    assert!(s.insert(&request("a", T0 + 5_000)).await.is_err());
    assert_eq!(s.state("nope").await.unwrap(), None);

    // A reply claims once; the record comes back whole, context included.
    let claim = s
        .claim_reply(key("a"), T0 + 10, T0 + 10 + LEASE)
        .await
        .unwrap();
    assert_eq!(claim, Claim::Claimed(request("a", T0 + 5_000)));
    assert_eq!(s.state("a").await.unwrap(), Some(RecordState::Replying));
    assert_eq!(
        s.claim_reply(key("a"), T0 + 11, T0 + 11 + LEASE)
            .await
            .unwrap(),
        Claim::InProgress,
        "a second reply while the first is handled waits for it"
    );
    assert!(
        s.complete("a", RecordState::Replied, T0 + 12)
            .await
            .unwrap()
    );
    assert!(
        !s.complete("a", RecordState::Replied, T0 + 13)
            .await
            .unwrap()
    );
    assert_eq!(s.state("a").await.unwrap(), Some(RecordState::Replied));
    assert_eq!(
        s.claim_reply(key("a"), T0 + 14, T0 + 14 + LEASE)
            .await
            .unwrap(),
        Claim::Duplicate
    );
    assert!(
        s.claim_expired(T0 + 10_000, T0 + 20_000, 100)
            .await
            .unwrap()
            .is_empty(),
        "a replied request never times out"
    );

    // Forged: unknown id, wrong request type, wrong responder; the real one is untouched.
    s.insert(&request("b", T0 + 5_000)).await.unwrap();
    assert_eq!(
        s.claim_reply(key("unknown"), T0, T0 + LEASE).await.unwrap(),
        Claim::Forged
    );
    let wrong_type = ReplyKey {
        request_type: Some("test.payment.refund.v1"),
        ..key("b")
    };
    assert_eq!(
        s.claim_reply(wrong_type, T0, T0 + LEASE).await.unwrap(),
        Claim::Forged
    );
    let wrong_responder = ReplyKey {
        responder: Some("kitchen"),
        ..key("b")
    };
    assert_eq!(
        s.claim_reply(wrong_responder, T0, T0 + LEASE)
            .await
            .unwrap(),
        Claim::Forged
    );
    assert_eq!(s.state("b").await.unwrap(), Some(RecordState::Pending));

    // A reply that names only its correlation id (a plain AMQP client's) is matched by the
    // id alone: forged when the id is unknown, claimed when it is pending.
    let id_only = |id| ReplyKey {
        id,
        request_type: None,
        responder: None,
    };
    assert_eq!(
        s.claim_reply(id_only("unknown"), T0, T0 + LEASE)
            .await
            .unwrap(),
        Claim::Forged
    );
    assert!(matches!(
        s.claim_reply(id_only("b"), T0, T0 + LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    s.release("b").await.unwrap();

    // Release gives the claim back.
    assert!(matches!(
        s.claim_reply(key("b"), T0, T0 + LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    s.release("b").await.unwrap();
    assert_eq!(s.state("b").await.unwrap(), Some(RecordState::Pending));
    // A lapsed lease lets another node take the claim over (before the deadline).
    assert!(matches!(
        s.claim_reply(key("b"), T0, T0 + LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    assert!(matches!(
        s.claim_reply(key("b"), T0 + LEASE + 1, T0 + 2 * LEASE)
            .await
            .unwrap(),
        Claim::Claimed(_)
    ));
    assert!(
        s.complete("b", RecordState::Replied, T0 + LEASE + 2)
            .await
            .unwrap()
    );

    // Late: after the deadline a reply is late, even before the sweep ran; the sweep claims
    // it once; a reply during or after the timeout is late too.
    s.insert(&request("c", T0 + 100)).await.unwrap();
    assert_eq!(
        s.claim_reply(key("c"), T0 + 100, T0 + LEASE).await.unwrap(),
        Claim::Late
    );
    assert_eq!(s.state("c").await.unwrap(), Some(RecordState::Pending));
    assert!(
        s.claim_expired(T0 + 99, T0 + LEASE, 100)
            .await
            .unwrap()
            .is_empty()
    );
    let expired = s
        .claim_expired(T0 + 100, T0 + 100 + LEASE, 100)
        .await
        .unwrap();
    assert_eq!(expired, vec![request("c", T0 + 100)]);
    assert_eq!(s.state("c").await.unwrap(), Some(RecordState::TimingOut));
    assert!(
        s.claim_expired(T0 + 101, T0 + 101 + LEASE, 100)
            .await
            .unwrap()
            .is_empty(),
        "a claimed timeout is not claimed again while its lease holds"
    );
    assert_eq!(
        s.claim_reply(key("c"), T0 + 50, T0 + LEASE).await.unwrap(),
        Claim::Late
    );
    // The sweeping node died: after the lease, the sweep takes it again.
    let again = s
        .claim_expired(T0 + 200 + LEASE, T0 + 200 + 2 * LEASE, 100)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert!(
        s.complete("c", RecordState::TimedOut, T0 + 300 + LEASE)
            .await
            .unwrap()
    );
    assert_eq!(
        s.claim_reply(key("c"), T0 + 50, T0 + LEASE).await.unwrap(),
        Claim::Late
    );

    // claim_expired honours the limit and takes the earliest deadlines first.
    for (i, d) in [(1, 40), (2, 10), (3, 30), (4, 20)] {
        s.insert(&request(&format!("e{i}"), T0 + d)).await.unwrap();
    }
    let first = s
        .claim_expired(T0 + 1_000, T0 + 1_000 + LEASE, 2)
        .await
        .unwrap();
    let ids: Vec<_> = first.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["e2", "e4"]);
    let rest = s
        .claim_expired(T0 + 1_000, T0 + 1_000 + LEASE, 10)
        .await
        .unwrap();
    let ids: Vec<_> = rest.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["e3", "e1"]);
    for i in 1..=4 {
        assert!(
            s.complete(&format!("e{i}"), RecordState::TimedOut, T0 + 2_000)
                .await
                .unwrap()
        );
    }

    // remove deletes only pending records.
    s.insert(&request("r", T0 + 5_000)).await.unwrap();
    s.remove("r").await.unwrap();
    assert_eq!(s.state("r").await.unwrap(), None);
    s.remove("a").await.unwrap();
    assert_eq!(s.state("a").await.unwrap(), Some(RecordState::Replied));

    // Counts, then purge: tombstones older than the cutoff go, and a reply to a purged
    // request can no longer be told from a forged one.
    s.insert(&request("p", T0 + 50_000)).await.unwrap();
    let counts = s.counts().await.unwrap();
    assert_eq!(
        (
            counts.pending,
            counts.in_progress,
            counts.replied,
            counts.timed_out
        ),
        (1, 0, 2, 5)
    );
    assert_eq!(
        s.purge(T0 + 1_100).await.unwrap(),
        2,
        "a and b finished before T0+1100"
    );
    assert_eq!(
        s.claim_reply(key("a"), T0, T0 + LEASE).await.unwrap(),
        Claim::Forged
    );
    assert_eq!(s.purge(T0 + 10_000).await.unwrap(), 5);
    assert_eq!(s.state("p").await.unwrap(), Some(RecordState::Pending));

    // In flight: what has no outcome yet, oldest first, with its claim; finished ones are
    // not listed, and the limit holds.
    for (id, sent) in [("z1", T0 - 2), ("z2", T0 - 1), ("z3", T0 - 3)] {
        let mut r = request(id, T0 + 60_000);
        r.sent_ms = sent;
        s.insert(&r).await.unwrap();
    }
    assert!(matches!(
        s.claim_reply(key("z2"), T0, T0 + LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    assert!(matches!(
        s.claim_reply(key("z3"), T0, T0 + LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    assert!(
        s.complete("z3", RecordState::Replied, T0 + 1)
            .await
            .unwrap()
    );
    let open = s.in_flight(100).await.unwrap();
    let seen: Vec<(&str, RecordState, i64)> = open
        .iter()
        .map(|f| (f.request.id.as_str(), f.state, f.lease_until_ms))
        .collect();
    assert_eq!(
        seen,
        [
            ("z1", RecordState::Pending, 0),
            ("z2", RecordState::Replying, T0 + LEASE),
            ("p", RecordState::Pending, 0),
        ]
    );
    assert_eq!(open[0].request, {
        let mut r = request("z1", T0 + 60_000);
        r.sent_ms = T0 - 2;
        r
    });
    assert_eq!(open[0].holder, None, "a pending request has no holder");
    let claimed_by = open[1].holder.as_deref().unwrap_or_default();
    match holder {
        Some(holder) => assert_eq!(claimed_by, holder),
        None => assert!(claimed_by.contains(':'), "<host>:<pid>, not {claimed_by:?}"),
    }
    assert_eq!(s.in_flight(1).await.unwrap().len(), 1);
    assert!(
        s.complete("z2", RecordState::Replied, T0 + 2)
            .await
            .unwrap()
    );
    s.remove("z1").await.unwrap();

    // Replies not handed to a handler are tallied for every node to see.
    let before = s.counts().await.unwrap();
    for tally in [Tally::Late, Tally::Forged, Tally::Duplicate, Tally::Forged] {
        s.tally(tally).await.unwrap();
    }
    let after = s.counts().await.unwrap();
    assert_eq!(
        (
            after.late - before.late,
            after.duplicate - before.duplicate,
            after.forged - before.forged
        ),
        (1, 1, 2)
    );
    assert_eq!(after.pending, before.pending);

    race(store).await;
}

/// Replies (two per request) and two sweeps race for the same requests: each request is
/// claimed exactly once.
async fn race(store: Arc<dyn CorrelationStore>) {
    const N: usize = 40;
    let deadline = T0 + 100_000;
    for i in 0..N {
        store
            .insert(&request(&format!("race{i}"), deadline))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for i in 0..N {
        for _ in 0..2 {
            let store = Arc::clone(&store);
            tasks.push(tokio::spawn(async move {
                let id = format!("race{i}");
                // Odd requests get their replies just before the deadline, even ones just after.
                let now = if i % 2 == 0 { deadline } else { deadline - 1 };
                match store.claim_reply(key(&id), now, now + LEASE).await.unwrap() {
                    Claim::Claimed(r) => vec![r.id],
                    _ => vec![],
                }
            }));
        }
    }
    for _ in 0..2 {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let mut won = Vec::new();
            loop {
                let batch = store
                    .claim_expired(deadline, deadline + LEASE, 7)
                    .await
                    .unwrap();
                if batch.is_empty() {
                    return won;
                }
                won.extend(batch.into_iter().map(|r| r.id));
            }
        }));
    }
    let mut winners: HashMap<String, usize> = HashMap::new();
    for task in tasks {
        for id in task.await.unwrap() {
            *winners.entry(id).or_default() += 1;
        }
    }
    for i in 0..N {
        let id = format!("race{i}");
        let n = winners.get(&id).copied().unwrap_or(0);
        // Odd requests: only a reply may take them (deadline not passed). Even ones: only a
        // sweep (a reply at the deadline is late). Either way, exactly once.
        assert_eq!(n, 1, "{id} claimed {n} times");
    }
}

#[tokio::test]
async fn memory_store_passes_the_suite() {
    suite(Arc::new(MemoryStore::new()), None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("correlation.db"))
        .await
        .unwrap()
        .node("node-a");
    suite(Arc::new(store), Some("node-a")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_keeps_pending_requests_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("correlation.db");
    {
        let store = SqliteStore::open(&path).await.unwrap();
        store.insert(&request("kept", T0 + 5_000)).await.unwrap();
        store.close().await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap();
    assert_eq!(
        store
            .claim_reply(key("kept"), T0, T0 + LEASE)
            .await
            .unwrap(),
        Claim::Claimed(request("kept", T0 + 5_000))
    );
}

/// A table made before claims named their holder gets the column when opened, and keeps
/// its records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_upgrades_an_older_table() {
    use sqlx::Connection as _;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("correlation.db");
    {
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = sqlx::SqliteConnection::connect_with(&options)
            .await
            .unwrap();
        sqlx::query(
            "CREATE TABLE tabgrab_correlation (id TEXT PRIMARY KEY NOT NULL, grp TEXT NOT NULL, \
             request_type TEXT NOT NULL, responder TEXT NOT NULL, sent_ms INTEGER NOT NULL, \
             deadline_ms INTEGER NOT NULL, context TEXT NOT NULL, state TEXT NOT NULL, \
             lease_until_ms INTEGER NOT NULL DEFAULT 0, finished_ms INTEGER NOT NULL DEFAULT 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO tabgrab_correlation VALUES ('old', 'front-desk', \
             'test.payment.charge.v1', 'payment', 1700000000000, 1700000005000, '{}', \
             'pending', 0, 0)",
        )
        .execute(&mut conn)
        .await
        .unwrap();
        conn.close().await.unwrap();
    }
    let store = SqliteStore::open(&path).await.unwrap().node("node-c");
    assert!(matches!(
        store.claim_reply(key("old"), T0, T0 + LEASE).await.unwrap(),
        Claim::Claimed(_)
    ));
    let open = store.in_flight(10).await.unwrap();
    assert_eq!(open[0].holder.as_deref(), Some("node-c"));
    store.tally(Tally::Late).await.unwrap();
    assert_eq!(store.counts().await.unwrap().late, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_the_suite() {
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return;
    }
    let table = format!("corr_test_{}", uuid::Uuid::now_v7().simple());
    let store = PostgresStore::connect_table(PG_URL, &table).await.unwrap();
    suite(Arc::new(store.clone()), None).await;
    // Two handles on one table, as two nodes: each claim names its own.
    let other = PostgresStore::connect_table(PG_URL, &table)
        .await
        .unwrap()
        .node("node-b");
    other.insert(&request("b1", T0 + 60_000)).await.unwrap();
    other.claim_reply(key("b1"), T0, T0 + LEASE).await.unwrap();
    let open = store.in_flight(100).await.unwrap();
    let b1 = open.iter().find(|f| f.request.id == "b1").unwrap();
    assert_eq!(b1.holder.as_deref(), Some("node-b"));
    store.drop_table(&table).await.unwrap();
}

#[test]
fn table_names_are_checked() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let err = rt
        .block_on(SqliteStore::open_table(
            dir.path().join("x.db"),
            "x; DROP TABLE y",
        ))
        .unwrap_err();
    assert_eq!(err.kind(), tabgrab::ErrorKind::Malformed);
}
