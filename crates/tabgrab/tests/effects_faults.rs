//! The inbox under faults (RELIABILITY.md tiers one and two), on SQLite and on PostgreSQL:
//! a consumer killed with SIGKILL at each of the three failpoints, duplicate deliveries, and
//! poison messages. The effects checker must report exactly one effect per (group, message
//! id), nothing missing, after every seeded run.
//!
//! Children are this test binary re-run on the ignored test `fx_consumer_child`, told by
//! environment variables where the bus and the database are and where to die (they SIGKILL
//! themselves at the failpoint, so the parent can check they died exactly there).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod fx;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use fx::{AnyInbox, Db, Kind, TxPoint};
use rand::{Rng as _, SeedableRng as _};
use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Context, Publisher, Subscription};
use tabgrab::retry::Backoff;
use tabgrab_testkit::effects;

const GROUP: &str = "payment";
const TOPIC: &str = "work";
/// Events per kill scenario.
const EVENTS: u64 = 180;
/// Rounds of the three failpoints per kill scenario (a child each).
const ROUNDS: usize = 2;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.work.queued.v1", event)]
struct Work {
    n: u64,
    poison: bool,
}

fn fast_backoff() -> Backoff {
    Backoff {
        base: Duration::from_millis(5),
        max: Duration::from_millis(20),
    }
}

/// Where a consumer dies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failpoint {
    /// The handler was called, nothing is written.
    BeforeHandling,
    /// The effect and the inbox row are written in the transaction, not committed.
    BeforeCommit,
    /// Committed, not acknowledged.
    AfterCommit,
}

impl Failpoint {
    const ALL: [Failpoint; 3] = [
        Failpoint::BeforeHandling,
        Failpoint::BeforeCommit,
        Failpoint::AfterCommit,
    ];
    fn name(self) -> &'static str {
        match self {
            Failpoint::BeforeHandling => "before_handling",
            Failpoint::BeforeCommit => "before_commit",
            Failpoint::AfterCommit => "after_commit",
        }
    }
    fn parse(s: &str) -> Option<Failpoint> {
        Failpoint::ALL.into_iter().find(|f| f.name() == s)
    }
}

/// Publishes `n` work events (subjects s0..s3), returns their ids.
async fn publish_work(bus: &EmbeddedBus, n: u64, poison: impl Fn(u64) -> bool) -> Vec<String> {
    let publisher = Publisher::new(bus, TOPIC, "/test").unwrap();
    let batch: Vec<_> = (0..n)
        .map(|i| {
            publisher
                .envelope(
                    &Work {
                        n: i,
                        poison: poison(i),
                    },
                    format!("s{}", i % 4),
                )
                .unwrap()
        })
        .collect();
    publisher.publish_batch(&batch).await.unwrap();
    batch.into_iter().map(|e| e.id).collect()
}

/// The subscription every consumer runs: inbox-guarded effects, dying at `fail` on the
/// `at`-th handled delivery.
fn consumer(
    bus: &EmbeddedBus,
    db: Db,
    inbox: AnyInbox,
    fail: Option<(Failpoint, u64)>,
) -> Subscription {
    let handled = Arc::new(AtomicU64::new(0));
    Subscription::builder(bus, TOPIC, GROUP)
        .commit_interval(Duration::from_millis(5))
        .backoff(fast_backoff())
        .max_deliveries(3)
        .handle(move |work: Work, ctx: Context| {
            let db = db.clone();
            let inbox = inbox.clone();
            let handled = Arc::clone(&handled);
            async move {
                let n = handled.fetch_add(1, Ordering::SeqCst) + 1;
                let here = |point: Failpoint| {
                    if fail == Some((point, n)) {
                        fx::die(point.name());
                    }
                };
                here(Failpoint::BeforeHandling);
                db.handle(&inbox, ctx.envelope(), |p| {
                    match p {
                        TxPoint::BeforeCommit => here(Failpoint::BeforeCommit),
                        TxPoint::AfterCommit => here(Failpoint::AfterCommit),
                    }
                    if work.poison && p == TxPoint::BeforeCommit {
                        // Recorded and applied, then it fails: the transaction rolls back.
                        return Err(tabgrab::Error::new(
                            tabgrab::ErrorKind::Handler,
                            "poison: this event always fails",
                        ));
                    }
                    Ok(())
                })
                .await?;
                Ok(())
            }
        })
        .start()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the consumer kill scenarios"]
async fn fx_consumer_child() {
    let Ok(dir) = std::env::var("FX_DIR") else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let kind = Kind::parse(&std::env::var("FX_DB").unwrap());
    let prefix = std::env::var("FX_PREFIX").unwrap();
    let fail = Failpoint::parse(&std::env::var("FX_FAILPOINT").unwrap())
        .map(|f| (f, std::env::var("FX_FAIL_AT").unwrap().parse().unwrap()));
    let db = Db::open(kind, &dir, &prefix).await;
    let inbox = db.inbox(GROUP).await;
    let bus = EmbeddedBus::open(dir.join("bus")).unwrap();
    let _sub = consumer(&bus, db, inbox, fail);
    // Runs until it kills itself (the parent kills it after a timeout otherwise).
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Runs a consumer in this process until the group finished `total` records.
async fn finish_in_process(dir: &std::path::Path, db: &Db, total: u64) -> AnyInbox {
    let bus = EmbeddedBus::open(dir.join("bus")).unwrap();
    let inbox = db.inbox(GROUP).await;
    assert_eq!(
        bus.end_offset(TOPIC).unwrap(),
        total,
        "every record is in the log"
    );
    let sub = consumer(&bus, db.clone(), inbox.clone(), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.lag() > 0 {
        assert!(
            Instant::now() < deadline,
            "the restarted consumer did not finish"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
    bus.close().await.unwrap();
    inbox
}

async fn consumer_killed_at_each_failpoint(kind: Kind) {
    if !kind.available() {
        return;
    }
    let scenario = format!("consumer kills ({})", kind.name());
    let seed = fx::seed(&scenario);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let prefix = fx::unique_prefix();
    let db = Db::open(kind, dir.path(), &prefix).await;
    db.create_tables().await;
    let ids = {
        let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
        let ids = publish_work(&bus, EVENTS, |_| false).await;
        bus.close().await.unwrap();
        ids
    };
    let started = Instant::now();
    let mut kills = 0;
    for point in Failpoint::ALL.into_iter().cycle().take(3 * ROUNDS) {
        let at = rng.random_range(1..=EVENTS / (3 * ROUNDS as u64));
        let mut child = fx::spawn_child(
            "fx_consumer_child",
            &[
                ("FX_DIR", dir.path().display().to_string()),
                ("FX_DB", kind.name().to_owned()),
                ("FX_PREFIX", prefix.clone()),
                ("FX_FAILPOINT", point.name().to_owned()),
                ("FX_FAIL_AT", at.to_string()),
            ],
        );
        let status = fx::wait_child(&mut child, Duration::from_secs(30));
        assert!(
            fx::killed(&status),
            "the child should die by SIGKILL at {} (delivery {at}); it ended with {status}",
            point.name()
        );
        println!("  killed at {} on delivery {at}", point.name());
        kills += 1;
    }
    let inbox = finish_in_process(dir.path(), &db, EVENTS).await;
    let report = effects::check(
        ids.iter().map(|id| (GROUP, id.as_str())),
        db.effects().await,
    );
    let dups = db.dups().await;
    println!(
        "{scenario}: {kills} kills, {EVENTS} events, {report}; duplicates caught by the inbox {} (restart run: {}), {:?}",
        dups.len(),
        inbox.stats().duplicates,
        started.elapsed()
    );
    assert!(report.is_valid(), "{report}");
    assert!(
        !dups.is_empty(),
        "the kill after the commit must cause at least one redelivery, caught as a duplicate"
    );
    db.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_consumer_killed_at_each_failpoint_applies_each_effect_once() {
    consumer_killed_at_each_failpoint(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_consumer_killed_at_each_failpoint_applies_each_effect_once() {
    consumer_killed_at_each_failpoint(Kind::Postgres).await;
}

async fn duplicate_deliveries_have_no_second_effect(kind: Kind) {
    if !kind.available() {
        return;
    }
    let scenario = format!("duplicate injection ({})", kind.name());
    let seed = fx::seed(&scenario);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(kind, dir.path(), &fx::unique_prefix()).await;
    db.create_tables().await;
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    let envelopes: Vec<_> = (0..80)
        .map(|i| {
            publisher
                .envelope(
                    &Work {
                        n: i,
                        poison: false,
                    },
                    format!("s{}", i % 5),
                )
                .unwrap()
        })
        .collect();
    // Each envelope once, then a seeded third of them again, some twice more (the embedded
    // log does not de-duplicate publishes: every copy is delivered).
    let mut copies = envelopes.clone();
    for e in &envelopes {
        for _ in 0..rng.random_range(0..3u32) {
            if rng.random_bool(0.35) {
                copies.push(e.clone());
            }
        }
    }
    let injected = copies.len() - envelopes.len();
    publisher.publish_batch(&copies).await.unwrap();
    let inbox = db.inbox(GROUP).await;
    let sub = consumer(&bus, db.clone(), inbox.clone(), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.lag() > 0 {
        assert!(Instant::now() < deadline, "the consumer did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
    let report = effects::check(
        envelopes.iter().map(|e| (GROUP, e.id.as_str())),
        db.effects().await,
    );
    let stats = inbox.stats();
    println!(
        "{scenario}: {} events, {injected} injected copies, {report}; inbox first {} duplicates {}",
        envelopes.len(),
        stats.first,
        stats.duplicates
    );
    assert!(report.is_valid(), "{report}");
    assert_eq!(
        stats.duplicates, injected as u64,
        "every copy counted as a duplicate"
    );
    assert_eq!(db.dups().await.len(), injected);
    db.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_duplicate_deliveries_have_no_second_effect() {
    duplicate_deliveries_have_no_second_effect(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_duplicate_deliveries_have_no_second_effect() {
    duplicate_deliveries_have_no_second_effect(Kind::Postgres).await;
}

async fn poison_is_dead_lettered_without_effect(kind: Kind) {
    if !kind.available() {
        return;
    }
    let scenario = format!("poison with the inbox ({})", kind.name());
    let seed = fx::seed(&scenario);
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(kind, dir.path(), &fx::unique_prefix()).await;
    db.create_tables().await;
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let poisoned: std::collections::BTreeSet<u64> =
        (0..4).map(|_| rng.random_range(0..60u64)).collect();
    let ids = publish_work(&bus, 60, |i| poisoned.contains(&i)).await;
    let inbox = db.inbox(GROUP).await;
    let sub = consumer(&bus, db.clone(), inbox.clone(), None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while sub.lag() > 0 {
        assert!(Instant::now() < deadline, "the consumer did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
    let healthy: Vec<&String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !poisoned.contains(&(*i as u64)))
        .map(|(_, id)| id)
        .collect();
    let report = effects::check(
        healthy.iter().map(|id| (GROUP, id.as_str())),
        db.effects().await,
    );
    let letters = tabgrab::event::read_dead_letters(&bus, TOPIC).unwrap();
    println!(
        "{scenario}: 60 events, poisoned {poisoned:?}, {report}; dead letters {}",
        letters.len()
    );
    assert!(
        report.is_valid(),
        "no poison took effect, every other event once: {report}"
    );
    assert_eq!(letters.len(), poisoned.len());
    for letter in &letters {
        assert_eq!(letter.attempts, 3, "dead-lettered after max deliveries");
        let id = letter.message_id.clone().unwrap();
        assert!(
            !inbox.contains(&id).await,
            "a poison id is not recorded as processed"
        );
    }
    db.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_poison_is_dead_lettered_without_effect_and_others_flow() {
    poison_is_dead_lettered_without_effect(Kind::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_poison_is_dead_lettered_without_effect_and_others_flow() {
    poison_is_dead_lettered_without_effect(Kind::Postgres).await;
}

/// The checker is not vacuous: the same duplicate injection without the inbox shows second
/// effects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_inbox_the_checker_sees_second_effects() {
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let publisher = Publisher::new(&bus, TOPIC, "/test").unwrap();
    let envelopes: Vec<_> = (0..10)
        .map(|i| {
            publisher
                .envelope(
                    &Work {
                        n: i,
                        poison: false,
                    },
                    "s",
                )
                .unwrap()
        })
        .collect();
    let mut copies = envelopes.clone();
    copies.extend(envelopes[..3].iter().cloned());
    publisher.publish_batch(&copies).await.unwrap();
    let effects = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sub = {
        let effects = Arc::clone(&effects);
        Subscription::builder(&bus, TOPIC, GROUP)
            .handle(move |_: Work, ctx: Context| {
                let effects = Arc::clone(&effects);
                async move {
                    effects
                        .lock()
                        .unwrap()
                        .push((GROUP.to_owned(), ctx.envelope().id.clone()));
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.lag() > 0 {
        assert!(Instant::now() < deadline, "the consumer did not finish");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    sub.shutdown().await.unwrap();
    let report = effects::check(
        envelopes.iter().map(|e| (GROUP, e.id.as_str())),
        effects.lock().unwrap().clone(),
    );
    assert_eq!(report.duplicated.len(), 3, "{report}");
    assert!(!report.is_valid());
}

/// The paused member's handler: on its first delivery it writes `marker` inside the
/// transaction (effect written, not committed) and lingers there, so the parent can SIGSTOP
/// it past the ack wait while it holds the message.
fn pause_consumer(
    bus: &Bus,
    topic: &str,
    db: Db,
    inbox: AnyInbox,
    marker: Option<PathBuf>,
) -> Subscription {
    let handled = Arc::new(AtomicU64::new(0));
    Subscription::builder(bus, topic, GROUP)
        .ack_wait(PAUSE_ACK_WAIT)
        .backoff(fast_backoff())
        .handle(move |_: Work, ctx: Context| {
            let db = db.clone();
            let inbox = inbox.clone();
            let handled = Arc::clone(&handled);
            let marker = marker.clone();
            async move {
                let n = handled.fetch_add(1, Ordering::SeqCst) + 1;
                db.handle(&inbox, ctx.envelope(), |p| {
                    if let (Some(marker), TxPoint::BeforeCommit, 1) = (&marker, p, n) {
                        std::fs::write(marker, &ctx.envelope().id).unwrap();
                        // Lingers in the open transaction; the parent stops the process here.
                        std::thread::sleep(Duration::from_millis(500));
                    }
                    Ok(())
                })
                .await?;
                Ok(())
            }
        })
        .start()
        .unwrap()
}

/// The ack wait of the pause scenario; the pause lasts well past it.
const PAUSE_ACK_WAIT: Duration = Duration::from_secs(1);
const PAUSE: Duration = Duration::from_millis(2500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the pause scenarios"]
async fn fx_pause_child() {
    let Ok(dir) = std::env::var("FX_PAUSE_DIR") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let kind = Kind::parse(&std::env::var("FX_DB").unwrap());
    let prefix = std::env::var("FX_PREFIX").unwrap();
    let topic = std::env::var("FX_TOPIC").unwrap();
    let db = Db::open(kind, &dir, &prefix).await;
    let inbox = db.inbox(GROUP).await;
    let bus = Bus::connect(NATS_URL).await.unwrap();
    let _sub = pause_consumer(&bus, &topic, db, inbox, Some(dir.join("held")));
    tokio::time::sleep(Duration::from_secs(60)).await;
}

const NATS_URL: &str = "nats://127.0.0.1:4222";

fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {sig} failed");
}

async fn paused_member_past_its_ack_wait(kind: Kind) {
    if !kind.available() || !tabgrab_testkit::services::require("NATS", "127.0.0.1:4222") {
        return;
    }
    const EVENTS: u64 = 20;
    let scenario = format!("pause past the ack wait (nats, {})", kind.name());
    let _seed = fx::seed(&scenario);
    let dir = tempfile::tempdir().unwrap();
    let prefix = fx::unique_prefix();
    let topic = format!("fx-pause-{prefix}");
    let db = Db::open(kind, dir.path(), &prefix).await;
    db.create_tables().await;
    let bus = Bus::connect(NATS_URL).await.unwrap();
    println!("  connected");
    let publisher = Publisher::new(&bus, &topic, "/test").unwrap();
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        let receipt = publisher
            .publish(
                &Work {
                    n: i,
                    poison: false,
                },
                format!("s{}", i % 4),
            )
            .await
            .unwrap();
        ids.push(receipt.id);
    }
    // Member A (a child) takes its first message and lingers inside the transaction.
    let mut a = fx::spawn_child(
        "fx_pause_child",
        &[
            ("FX_PAUSE_DIR", dir.path().display().to_string()),
            ("FX_DB", kind.name().to_owned()),
            ("FX_PREFIX", prefix.clone()),
            ("FX_TOPIC", topic.clone()),
        ],
    );
    let marker = dir.path().join("held");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !marker.exists() {
        assert!(Instant::now() < deadline, "member A never took a message");
        assert!(a.try_wait().unwrap().is_none(), "member A exited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&a, "-STOP");
    println!("  member A stopped");
    let stopped = Instant::now();
    let held = std::fs::read_to_string(&marker).unwrap();
    // Member B (this process) gets everything, A's held messages after the ack wait.
    let inbox = db.inbox(GROUP).await;
    let b = pause_consumer(&bus, &topic, db.clone(), inbox.clone(), None);
    b.ready().await.unwrap();
    println!("  member B ready");
    tokio::time::sleep(PAUSE.saturating_sub(stopped.elapsed())).await;
    signal(&a, "-CONT");
    println!("  member A continued");
    // Quiescence: every event has its effect and nothing is pending for the group.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let effects = db.effects().await;
        if effects.len() as u64 >= EVENTS && b.lag() == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the group did not finish: {} effects",
            effects.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Let A finish what it held (it was resumed), then stop both.
    tokio::time::sleep(Duration::from_millis(300)).await;
    a.kill().unwrap();
    a.wait().unwrap();
    b.shutdown().await.unwrap();
    let report = effects::check(
        ids.iter().map(|id| (GROUP, id.as_str())),
        db.effects().await,
    );
    let dups = db.dups().await;
    let held_dup = dups.iter().any(|(_, id)| *id == held);
    println!(
        "{scenario}: {EVENTS} events, A paused {PAUSE:?} (ack wait {PAUSE_ACK_WAIT:?}) holding {held}; {report}; duplicates caught {} (the one held inside its transaction among them: {held_dup})",
        dups.len(),
    );
    assert!(report.is_valid(), "{report}");
    assert!(
        !dups.is_empty(),
        "messages held by the paused member were redelivered to the other and caught as duplicates"
    );
    bus.delete_topic(&topic).await.unwrap();
    db.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_member_paused_past_its_ack_wait_applies_each_effect_once() {
    tokio::time::timeout(
        Duration::from_secs(60),
        paused_member_past_its_ack_wait(Kind::Sqlite),
    )
    .await
    .expect("the pause scenario is bounded to 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_member_paused_past_its_ack_wait_applies_each_effect_once() {
    tokio::time::timeout(
        Duration::from_secs(60),
        paused_member_past_its_ack_wait(Kind::Postgres),
    )
    .await
    .expect("the pause scenario is bounded to 60 s");
}
