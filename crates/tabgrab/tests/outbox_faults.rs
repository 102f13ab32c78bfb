//! The outbox under faults (RELIABILITY.md tiers one and two), on SQLite and on PostgreSQL.
//!
//! A child process stages events in the same transactions as its ledger rows (the state
//! changes) while its relay publishes them to the embedded bus, and SIGKILLs itself at one of
//! three points: right after a commit (before the relay published it), after a batch was
//! published and before it was marked sent, and in the middle of a batch. After each crash the
//! parent restarts a relay on the same database and bus and checks: zero ghosts (every
//! published event has its committed ledger row), zero zombies (every committed ledger row's
//! event is published), per-subject order of first publication equals the commit order, and
//! the restarted relay caught up within 5 s.
//!
//! Also: several relays at once publish every event exactly once, in order per subject.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fx;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fx::{Db, Kind};
use rand::{Rng as _, SeedableRng as _};
use tabgrab::Envelope;
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::outbox::RelayEvent;

const TOPIC: &str = "events";
/// Events a child stages at most.
const EVENTS: u64 = 300;
/// Rows per relay round in the children.
const BATCH: usize = 16;

fn event(n: u64, subject: &str) -> Envelope {
    Envelope::raw(
        "/test",
        "test.ledger.changed.v1",
        format!("{{\"n\":{n}}}").into(),
    )
    .with_subject(subject)
}

/// Where the outbox child dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Point {
    /// The stager committed a ledger row and its event; the relay may not have published it.
    AfterCommit,
    /// The relay published a batch and did not mark it sent.
    AfterPublish,
    /// The relay published half of a batch.
    MidBatch,
}

impl Point {
    const ALL: [Point; 3] = [Point::AfterCommit, Point::AfterPublish, Point::MidBatch];
    fn name(self) -> &'static str {
        match self {
            Point::AfterCommit => "after_commit_before_publish",
            Point::AfterPublish => "after_publish_before_mark_sent",
            Point::MidBatch => "mid_batch",
        }
    }
    fn parse(s: &str) -> Point {
        Point::ALL.into_iter().find(|p| p.name() == s).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the outbox crash scenarios"]
async fn fx_outbox_child() {
    let Ok(dir) = std::env::var("FX_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let kind = Kind::parse(&std::env::var("FX_DB").unwrap());
    let prefix = std::env::var("FX_PREFIX").unwrap();
    let point = Point::parse(&std::env::var("FX_FAILPOINT").unwrap());
    let at: u64 = std::env::var("FX_FAIL_AT").unwrap().parse().unwrap();
    let first: u64 = std::env::var("FX_FIRST").unwrap().parse().unwrap();
    let db = Db::open(kind, &dir, &prefix).await;
    let outbox = db.outbox().await;
    let bus = Bus::from(EmbeddedBus::open(dir.join("bus")).unwrap());
    let hits = Arc::new(AtomicU64::new(0));
    let _relay = outbox.relay(&bus, BATCH, move |event| {
        let hit = match (point, event) {
            (Point::AfterPublish, RelayEvent::MarkingSent { sent }) => *sent > 0,
            (
                Point::MidBatch,
                RelayEvent::Published {
                    published_in_batch,
                    batch,
                    ..
                },
            ) => *batch >= 2 && *published_in_batch == batch / 2,
            _ => false,
        };
        if hit && hits.fetch_add(1, Ordering::SeqCst) + 1 == at {
            fx::die(point.name());
        }
    });
    for n in first..first + EVENTS {
        let e = event(n, &format!("s{}", n % 5));
        // No notify: the relay finds the rows at its 20 ms poll, several per round.
        db.stage(&outbox, TOPIC, &e, false).await.unwrap();
        if point == Point::AfterCommit && n - first + 1 == at {
            fx::die(point.name());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    // The relay failpoint did not fire yet: wait for it (the parent kills us otherwise).
    tokio::time::sleep(Duration::from_secs(30)).await;
}

/// Checks the published topic against the committed ledger.
fn check_no_ghost_no_zombie(ledger: &[(String, String)], published: &[Envelope]) -> usize {
    let committed: BTreeSet<&str> = ledger.iter().map(|(id, _)| id.as_str()).collect();
    let sent: BTreeSet<&str> = published.iter().map(|e| e.id.as_str()).collect();
    let ghosts: Vec<_> = sent.difference(&committed).collect();
    let zombies: Vec<_> = committed.difference(&sent).collect();
    assert!(
        ghosts.is_empty(),
        "ghosts (published, never committed): {ghosts:?}"
    );
    assert!(
        zombies.is_empty(),
        "zombies (committed, never published): {zombies:?}"
    );
    // Order of first publication per subject = commit order per subject.
    let mut seen = HashSet::new();
    let mut first_order: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for e in published {
        if seen.insert(e.id.as_str()) {
            first_order
                .entry(e.subject.clone().unwrap_or_default())
                .or_default()
                .push(e.id.as_str());
        }
    }
    let mut commit_order: BTreeMap<String, Vec<&str>> = BTreeMap::new();
    for (id, subject) in ledger {
        commit_order
            .entry(subject.clone())
            .or_default()
            .push(id.as_str());
    }
    assert_eq!(
        first_order, commit_order,
        "per-subject order of first publication"
    );
    published.len() - sent.len()
}

async fn outbox_crash_points(kind: Kind) {
    if !kind.available() {
        return;
    }
    let scenario = format!("outbox crash points ({})", kind.name());
    let seed = fx::seed(&scenario);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let prefix = fx::unique_prefix();
    let db = Db::open(kind, dir.path(), &prefix).await;
    db.create_tables().await;
    for (i, point) in Point::ALL.into_iter().enumerate() {
        let at = match point {
            Point::AfterCommit => rng.random_range(20..=120u64),
            Point::AfterPublish | Point::MidBatch => rng.random_range(1..=3u64),
        };
        let mut child = fx::spawn_child(
            "fx_outbox_child",
            &[
                ("FX_DIR", dir.path().display().to_string()),
                ("FX_DB", kind.name().to_owned()),
                ("FX_PREFIX", prefix.clone()),
                ("FX_FAILPOINT", point.name().to_owned()),
                ("FX_FAIL_AT", at.to_string()),
                ("FX_FIRST", (i as u64 * 10_000).to_string()),
            ],
        );
        let status = fx::wait_child(&mut child, Duration::from_secs(30));
        assert!(
            fx::killed(&status),
            "the child should die by SIGKILL at {} (hit {at}); it ended with {status}",
            point.name()
        );
        // Restart: a fresh relay on the same database and bus catches up.
        let embedded = EmbeddedBus::open(dir.path().join("bus")).unwrap();
        let outbox = db.outbox().await;
        let left = outbox.pending().await;
        let restarted = Instant::now();
        let relay = outbox.relay(&Bus::from(&embedded), 64, |_| {});
        while outbox.pending().await > 0 {
            assert!(
                restarted.elapsed() < Duration::from_secs(5),
                "the restarted relay did not catch up within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let caught_up = restarted.elapsed();
        relay.shutdown().await.unwrap();
        let ledger = db.ledger().await;
        let published = fx::read_topic(&embedded, TOPIC);
        let copies = check_no_ghost_no_zombie(&ledger, &published);
        println!(
            "  {} (hit {at}): committed {}, left unsent at the crash {left}, caught up in {caught_up:?}, published {} ({copies} republished copies), 0 ghosts, 0 zombies",
            point.name(),
            ledger.len(),
            published.len(),
        );
        embedded.close().await.unwrap();
    }
    db.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_outbox_crashes_leave_no_ghost_and_no_zombie() {
    outbox_crash_points(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outbox_crashes_leave_no_ghost_and_no_zombie() {
    outbox_crash_points(Kind::Postgres).await;
}

async fn several_relays_publish_once_in_order(kind: Kind) {
    if !kind.available() {
        return;
    }
    const STAGERS: u64 = 3;
    const PER_STAGER: u64 = 100;
    let scenario = format!("three relays ({})", kind.name());
    let _seed = fx::seed(&scenario);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(kind, dir.path(), &fx::unique_prefix()).await;
    db.create_tables().await;
    let embedded = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let bus = Bus::from(&embedded);
    let outbox = db.outbox().await;
    let relays: Vec<_> = (0..3).map(|_| outbox.relay(&bus, 8, |_| {})).collect();
    // Each subject is staged by one stager (so its staging order is its commit order);
    // subjects interleave in the table.
    let stagers: Vec<_> = (0..STAGERS)
        .map(|j| {
            let db = db.clone();
            let outbox = outbox.clone();
            tokio::spawn(async move {
                for n in 0..PER_STAGER {
                    let subject = format!("j{j}-s{}", n % 3);
                    db.stage(&outbox, TOPIC, &event(j * 1000 + n, &subject), n % 2 == 0)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for s in stagers {
        s.await.unwrap();
    }
    let started = Instant::now();
    while outbox.pending().await > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the relays did not drain"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let per_relay: Vec<u64> = relays.iter().map(|r| r.stats().published).collect();
    for r in relays {
        r.shutdown().await.unwrap();
    }
    let ledger = db.ledger().await;
    let published = fx::read_topic(&embedded, TOPIC);
    let copies = check_no_ghost_no_zombie(&ledger, &published);
    println!(
        "{scenario}: {} events, published per relay {per_relay:?}, {copies} copies",
        ledger.len()
    );
    assert_eq!(ledger.len() as u64, STAGERS * PER_STAGER);
    assert_eq!(copies, 0, "without crashes no event is published twice");
    db.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_three_relays_publish_each_event_once_in_order_per_subject() {
    several_relays_publish_once_in_order(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_three_relays_publish_each_event_once_in_order_per_subject() {
    several_relays_publish_once_in_order(Kind::Postgres).await;
}
