//! The whole pizzeria under seeded faults, on the embedded bus, NATS and RabbitMQ: one
//! scenario written once, three engines.
//!
//! While customers order over HTTP, the test kills with SIGKILL what runs the restaurant
//! (the whole `pizzeria run` process on the embedded bus; any `pizzeria service` process and
//! the run holding the front desk on a broker) at seeded moments and starts it again, restarts
//! the NATS server once, and publishes onto the bus what a faulty or hostile producer would:
//! garbage bytes, a CloudEvent of an unknown type, a known type with the wrong shape, a message
//! larger than the bus's envelope limit, and copies of events already published (the same id:
//! duplicate deliveries). A last run is not killed. At the end the testkit's checkers say:
//! - every order accepted on the bus reached exactly one terminal state through allowed
//!   transitions (`common::check_orders`), and the front desk's durable view holds exactly
//!   those orders, every one ended (`pizzeria::orders::Report::check`);
//! - the ledger balances (`Store::audit`) and matches the facts on the bus; no effect happened
//!   twice and every effect the bus calls for happened (`tabgrab_testkit::effects::check`);
//! - every consumer group's lag returns to zero within a bound (`Bus::lag`): nothing wedged;
//! - every bad message is a dead letter with its reason, in every group that reads it, and
//!   no well-formed event is one (a fault delays an event, it never makes a group give up).
//!
//! When orders did not end on a broker, the test first prints where their events are: the
//! outbox's backlog, dead letters of well-formed events, RabbitMQ's ready and unacknowledged
//! counts per queue, and the services' last lines on stderr.
//!
//! # Tiers
//! `cargo nextest run -p pizzeria --test chaos` runs one seed per engine (the short tier, in
//! CI). The long tier runs many seeds per engine with smaller runs:
//! `PIZZERIA_CHAOS_SEEDS=50 cargo nextest run -p pizzeria --test chaos --run-ignored only`
//! (each engine's test prints one line per seed and a total). Every seed is printed;
//! `PIZZERIA_CHAOS_SEED=<seed>` replays one.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::processes::{Database, Service, pizzeria};
use common::{Fact, Recorder};
use pizzeria::messages::{OrderAccepted, TOPIC};
use pizzeria::services::Store;
use rand::rngs::StdRng;
use rand::{Rng as _, RngCore as _, SeedableRng as _};
use serde_json::Value;
use sha2::Digest as _;
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{Publisher, StartFrom};
use tabgrab::{Envelope, Message as _};
use tabgrab_testkit::nats_server::{self, NatsCluster, NatsOptions, NatsServer};

/// The test's own consumer group: it records every fact (and keeps envelopes to duplicate).
const AUDIT: &str = "chaos-audit";
/// The pizzeria's consumer groups.
const GROUPS: [&str; 5] = ["front-desk", "payment", "inventory", "kitchen", "delivery"];
/// The services that run as processes on a broker.
const SERVICES: [&str; 4] = ["payment", "inventory", "kitchen", "delivery"];
/// How long a group may take to come back to zero lag once the faults stop.
const LAG_BOUND: Duration = Duration::from_secs(30);

/// How much one seed does.
#[derive(Clone, Copy, Debug)]
struct Plan {
    /// Runs of the restaurant; all but the last may be killed.
    runs: usize,
    /// Orders per run (on the embedded bus, of the last run: the others are killed).
    orders: u64,
    /// Orders of an embedded run that is to be killed: more than it places before the kill.
    killed_orders: u64,
    /// At most this many SIGKILLs of service processes (brokers).
    service_kills: usize,
}

/// One seed per engine, in CI.
const SHORT: Plan = Plan {
    runs: 4,
    orders: 300,
    killed_orders: 3000,
    service_kills: 5,
};
/// Many seeds per engine, by hand.
const LONG: Plan = Plan {
    runs: 3,
    orders: 150,
    killed_orders: 2000,
    service_kills: 3,
};

/// The seeds to run: `PIZZERIA_CHAOS_SEED` alone, or `PIZZERIA_CHAOS_SEEDS` (else `default`)
/// random ones.
fn seeds(default: usize) -> Vec<u64> {
    if let Some(seed) = std::env::var("PIZZERIA_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![seed];
    }
    let n = std::env::var("PIZZERIA_CHAOS_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).map(|_| rand::random()).collect()
}

/// What one seed did, for the tier's report.
#[derive(Debug, Default)]
struct Outcome {
    accepted: u64,
    killed_runs: u32,
    killed_services: u32,
    broker_restarts: u32,
    bad: usize,
    duplicates: usize,
    dead_letters: usize,
    secs: f64,
}

/// One bad message put on the bus, and how to find its dead letter.
struct Bad {
    kind: &'static str,
    /// The id of a well-formed envelope.
    id: Option<String>,
    /// The digest of raw bytes.
    sha256: Option<String>,
    /// The groups that must dead-letter it (those that decode it as far as it fails).
    groups: &'static [&'static str],
}

/// Groups that decode every message: each must dead-letter what cannot be decoded.
const EVERY_GROUP: &[&str] = &[
    "front-desk",
    "payment",
    "inventory",
    "kitchen",
    "delivery",
    AUDIT,
];
/// Groups that handle `OrderAccepted` (the others only know its type and skip it).
const ORDER_ACCEPTED_HANDLERS: &[&str] = &["payment", "inventory", AUDIT];

fn sha256(bytes: &[u8]) -> String {
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Publishes one of each bad kind (noted in `bad`), and `duplicates` copies of recorded
/// envelopes (the same id: a duplicate delivery, which the inboxes must absorb); returns how
/// many copies.
async fn inject(
    bus: &Bus,
    rng: &mut StdRng,
    oversize: usize,
    duplicates: Vec<Envelope>,
    bad: &mut Vec<Bad>,
) -> usize {
    let publisher = Publisher::new(bus, TOPIC, "/chaos").unwrap();
    let subject = || uuid::Uuid::now_v7().to_string();

    let mut garbage = vec![0_u8; rng.random_range(1..4096)];
    rng.fill_bytes(&mut garbage);
    bus.publish_raw(TOPIC, Some(&subject()), Bytes::from(garbage.clone()))
        .await
        .unwrap();
    bad.push(Bad {
        kind: "garbage",
        id: None,
        sha256: Some(sha256(&garbage)),
        groups: EVERY_GROUP,
    });

    let alien = Envelope::raw(
        "/chaos",
        "pizzeria.alien-visit.v1",
        Bytes::from_static(br#"{"from":"mars"}"#),
    )
    .with_subject(subject());
    publisher.publish_envelope(&alien).await.unwrap();
    bad.push(Bad {
        kind: "unknown type",
        id: Some(alien.id.clone()),
        sha256: None,
        groups: EVERY_GROUP,
    });

    let misshapen = Envelope::raw(
        "/chaos",
        OrderAccepted::TYPE,
        Bytes::from_static(br#"{"order_id":42,"pizzas":"many"}"#),
    )
    .with_subject(subject());
    publisher.publish_envelope(&misshapen).await.unwrap();
    bad.push(Bad {
        kind: "wrong shape",
        id: Some(misshapen.id.clone()),
        sha256: None,
        groups: ORDER_ACCEPTED_HANDLERS,
    });

    let mut huge = vec![0_u8; oversize];
    rng.fill_bytes(&mut huge);
    bus.publish_raw(TOPIC, Some(&subject()), Bytes::from(huge.clone()))
        .await
        .unwrap();
    bad.push(Bad {
        kind: "oversized",
        id: None,
        sha256: Some(sha256(&huge)),
        groups: EVERY_GROUP,
    });

    for envelope in &duplicates {
        publisher.publish_envelope(envelope).await.unwrap();
    }
    duplicates.len()
}

/// What RabbitMQ's own dead-letter queue holds (shared by every namespace): where a message
/// goes that the quorum queue's `x-delivery-limit` gave up on without tabgrab seeing it, the
/// suspect when a bad message is missing from a group's dead letters (`chaos_on_rabbitmq`
/// flaked so twice, replays pass). Empty on other engines.
fn broker_dead_letters() -> String {
    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "messages"])
        .output();
    match listed {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("tabgrab.broker-dead-letters"))
            .map(|l| format!("RabbitMQ queue (name, messages): {l}"))
            .collect::<Vec<_>>()
            .join("; "),
        Err(_) => String::new(),
    }
}

/// Waits (bounded) until every group that must dead-letter bad input exists on the bus. On
/// RabbitMQ a group is a queue, declared when its first member joins, and a message published
/// before that never reaches it: the front desk's group comes with the first run, and a bad
/// message injected while that run was still starting (a loaded machine) was missing from the
/// front desk's dead letters ever after (`chaos_on_rabbitmq`, seeds 14414617592117461384 and
/// 13287281664187314243: the first injection's first messages).
async fn await_groups(seed: u64, bus: &Bus) {
    let deadline = Instant::now() + LAG_BOUND;
    loop {
        let mut absent = Vec::new();
        for group in EVERY_GROUP {
            if !matches!(bus.lag(TOPIC, group).await, Ok(Some(_))) {
                absent.push(*group);
            }
        }
        if absent.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: groups {absent:?} did not join within {LAG_BOUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (bounded) until every bad message is a dead letter, with a reason, in each group
/// that must give up on it; returns how many dead letters the topic holds.
async fn check_dead_letters(seed: u64, bus: &Bus, bad: &[Bad]) -> usize {
    let deadline = Instant::now() + LAG_BOUND;
    loop {
        let letters = bus.dead_letters(TOPIC).await.unwrap();
        let mut missing = Vec::new();
        for b in bad {
            let found: BTreeSet<&str> = letters
                .iter()
                .filter(|l| {
                    (b.id.is_some() && l.message_id == b.id)
                        || (b.sha256.is_some() && Some(&l.original_sha256) == b.sha256.as_ref())
                })
                .inspect(|l| {
                    assert!(
                        !l.reason.is_empty() && !l.error.is_empty(),
                        "seed {seed}: a dead letter without its reason: {l:?}"
                    );
                })
                .map(|l| l.group.as_str())
                .collect();
            for group in b.groups {
                if !found.contains(group) {
                    missing.push(format!("{} in {group}", b.kind));
                }
            }
        }
        if missing.is_empty() {
            return letters.len();
        }
        if Instant::now() >= deadline {
            let seen: BTreeSet<(&str, &str)> = letters
                .iter()
                .map(|l| (l.group.as_str(), l.reason.as_str()))
                .collect();
            panic!(
                "seed {seed}: bad messages not dead-lettered within {LAG_BOUND:?}: {missing:?}; \
                 the topic holds {} dead letters, (group, reason): {seen:?}; {}",
                letters.len(),
                broker_dead_letters()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether dead letter `l` is of one of the bad messages the test published.
fn is_bad(l: &tabgrab::event::DeadLetter, bad: &[Bad]) -> bool {
    bad.iter().any(|b| {
        (b.id.is_some() && l.message_id == b.id)
            || (b.sha256.is_some() && Some(&l.original_sha256) == b.sha256.as_ref())
    })
}

/// No well-formed event is a dead letter: a fault (a killed process, a broker restart, a
/// duplicate) delays an event but never makes a group give up on it.
async fn check_no_good_event_dead(seed: u64, bus: &Bus, bad: &[Bad]) {
    let letters = bus.dead_letters(TOPIC).await.unwrap();
    let good: Vec<String> = letters
        .iter()
        .filter(|l| !is_bad(l, bad))
        .map(|l| {
            format!(
                "{} of {:?} ({:?}) in {}: {} after {} attempts: {}",
                l.message_type.as_deref().unwrap_or("?"),
                l.subject,
                l.message_id,
                l.group,
                l.reason,
                l.attempts,
                l.error
            )
        })
        .collect();
    assert!(
        good.is_empty(),
        "seed {seed}: {} well-formed events are dead letters:\n  {}",
        good.len(),
        good.join("\n  ")
    );
}

/// Prints what the engine, the outbox and the services say, when orders did not end.
async fn diagnose(
    engine: &Broker,
    bus: &Bus,
    store: &Store,
    services: &BTreeMap<&str, Service>,
    bad: &[Bad],
) {
    println!("--- diagnosis: orders did not end ---");
    println!("outbox rows not yet published: {:?}", store.pending().await);
    match bus.dead_letters(TOPIC).await {
        Ok(letters) => {
            let good: Vec<_> = letters.iter().filter(|l| !is_bad(l, bad)).collect();
            println!("dead letters of well-formed events: {}", good.len());
            for l in good.iter().take(20) {
                println!(
                    "  {} in {}: {} ({} attempts): {}",
                    l.message_type.as_deref().unwrap_or("?"),
                    l.group,
                    l.reason,
                    l.attempts,
                    l.error
                );
            }
        }
        Err(e) => println!("dead letters: cannot list: {e}"),
    }
    if let Broker::Amqp { namespace } = engine {
        // The queues' lag counts only what waits; what a member holds unacknowledged is here.
        let prefix = format!("tabgrab.{namespace}.");
        if let Ok(out) = std::process::Command::new("rabbitmqctl")
            .args([
                "-q",
                "list_queues",
                "name",
                "messages_ready",
                "messages_unacknowledged",
                "consumers",
            ])
            .output()
        {
            println!("RabbitMQ queues (name, ready, unacknowledged, consumers):");
            for line in String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with(&prefix))
            {
                println!("  {line}");
            }
        }
    }
    for (name, service) in services {
        println!("{name}'s last lines on stderr:");
        for line in service.stderr_tail() {
            println!("  {line}");
        }
    }
    println!("--- end of diagnosis ---");
}

/// Waits (bounded) until every group has settled everything.
async fn check_lag(seed: u64, bus: &Bus, groups: &[&str]) {
    let deadline = Instant::now() + LAG_BOUND;
    loop {
        let mut behind = BTreeMap::new();
        for group in groups {
            let lag = bus.lag(TOPIC, group).await.unwrap();
            if lag != Some(0) {
                behind.insert(*group, lag);
            }
        }
        if behind.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed}: groups still behind {LAG_BOUND:?} after the faults stopped: {behind:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The order checks: lifecycle on the bus, the durable view, the ledger, the effects.
async fn check_orders(seed: u64, store: &Store, facts: &[Fact]) -> u64 {
    let report = common::check_orders(facts);
    assert!(report.is_valid(), "seed {seed}: {report}");
    let accepted: BTreeSet<String> = facts
        .iter()
        .filter(|(_, _, f)| *f == "accepted")
        .map(|(o, _, _)| o.clone())
        .collect();
    let views = pizzeria::orders::views(store).await.unwrap();
    let viewed: BTreeSet<String> = views.iter().map(|v| v.order_id.to_string()).collect();
    assert_eq!(
        viewed.len(),
        accepted.len(),
        "seed {seed}: the front desk's view and the bus disagree on the accepted orders: \
         only in the view {:?}, only on the bus {:?}",
        viewed.difference(&accepted).take(5).collect::<Vec<_>>(),
        accepted.difference(&viewed).take(5).collect::<Vec<_>>()
    );
    assert_eq!(viewed, accepted, "seed {seed}");
    let fates = pizzeria::orders::Report::of(&views);
    if let Err(e) = fates.check() {
        panic!("seed {seed}: {e}\n{}", fates.render());
    }
    let audit = store.audit().await.unwrap();
    assert!(audit.is_valid(), "seed {seed}: {audit}");
    let count = |fact: &str| common::orders_with(facts, fact);
    assert_eq!(audit.charged, count("collected"), "seed {seed}: {audit}");
    assert_eq!(audit.refunded, count("refunded"), "seed {seed}: {audit}");
    assert_eq!(audit.reserved, count("reserved"), "seed {seed}: {audit}");
    assert_eq!(audit.released, count("released"), "seed {seed}: {audit}");
    let effects = tabgrab_testkit::effects::check(
        common::expected_effects(facts),
        store.effects().await.unwrap(),
    );
    assert!(effects.is_valid(), "seed {seed}: {effects}");
    accepted.len() as u64
}

/// `pizzeria run` with the chaos settings; `extra` adds engine flags.
/// A `pizzeria run` process whose stdout and stderr are read as they come (a run that
/// writes more than a pipe holds, say warnings while a broker node is down, would otherwise
/// block on its write and never end).
struct Run {
    child: Child,
    stdout: std::thread::JoinHandle<Vec<u8>>,
    stderr: std::thread::JoinHandle<Vec<u8>>,
}

impl Run {
    fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        self.child.try_wait()
    }
}

/// Reads `from` to its end on a thread of its own.
fn drain(mut from: impl std::io::Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut all = Vec::new();
        let _ = from.read_to_end(&mut all);
        all
    })
}

fn spawn_run(orders: u64, seed: u64, extra: &[&str]) -> Run {
    let mut child = pizzeria()
        .args(["run", "--style", "events", "--json"])
        .args(["--orders", &orders.to_string(), "--concurrency", "16"])
        .args(["--decline-rate", "0.05", "--deadline-secs", "90"])
        .args(["--seed", &seed.to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = drain(child.stdout.take().unwrap());
    let stderr = drain(child.stderr.take().unwrap());
    Run {
        child,
        stdout,
        stderr,
    }
}

/// Waits for a run that was not killed; it must succeed and account for its orders.
async fn finish_run(seed: u64, run: Run, orders: u64) -> Value {
    let output = tokio::task::spawn_blocking(move || {
        let Run {
            mut child,
            stdout,
            stderr,
        } = run;
        let status = child.wait().unwrap();
        std::process::Output {
            status,
            stdout: stdout.join().unwrap(),
            stderr: stderr.join().unwrap(),
        }
    })
    .await
    .unwrap();
    assert!(
        output.status.success(),
        "seed {seed}: a run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    let ended = summary["delivered"].as_u64().unwrap() + summary["failed"].as_u64().unwrap();
    assert_eq!(
        ended,
        summary["accepted"].as_u64().unwrap(),
        "seed {seed}: {summary}"
    );
    assert_eq!(
        summary["accepted"].as_u64().unwrap() + summary["rejected"].as_u64().unwrap(),
        orders,
        "seed {seed}: {summary}"
    );
    assert!(
        summary["events_published"].as_u64().unwrap() > 0,
        "seed {seed}: {summary}"
    );
    summary
}

/// Whether `child` has exited; SIGKILLs it if not.
fn kill(run: &mut Run) {
    let _ = run.child.kill();
    let _ = run.child.wait();
}

// ---------------------------------------------------------------------------------------
// The embedded bus: the whole restaurant is one process; it is what gets killed.

async fn embedded(seed: u64, plan: Plan) -> Outcome {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap().to_owned();
    let mut outcome = Outcome::default();
    let mut facts: Vec<Fact> = Vec::new();
    let mut bad: Vec<Bad> = Vec::new();

    // The audit group exists before the first event, so it reads them all.
    {
        let embedded = EmbeddedBus::open(dir.path()).unwrap();
        let recorder = Recorder::start(&Bus::from(&embedded), AUDIT, StartFrom::Committed).await;
        recorder.stop().await;
        embedded.close().await.unwrap();
    }
    for r in 0..plan.runs {
        let last = r + 1 == plan.runs;
        let orders = if last {
            plan.orders
        } else {
            plan.killed_orders
        };
        let mut run = spawn_run(
            orders,
            seed.wrapping_add(r as u64),
            &["--data-dir", &data_dir, "--ovens", "8", "--bake-ms", "5"],
        );
        if last {
            let summary = finish_run(seed, run, plan.orders).await;
            outcome.accepted += summary["accepted"].as_u64().unwrap();
            break;
        }
        // Anywhere from opening the data directory to the middle of the flow.
        tokio::time::sleep(Duration::from_millis(rng.random_range(50..2500))).await;
        if run.try_wait().unwrap().is_some() {
            // It ended before the kill: it must have ended well.
            let summary = finish_run(seed, run, orders).await;
            outcome.accepted += summary["accepted"].as_u64().unwrap();
        } else {
            kill(&mut run);
            outcome.killed_runs += 1;
        }
        // While it is down: read what happened so far, then poison the log.
        let embedded = EmbeddedBus::open(dir.path()).unwrap();
        let bus = Bus::from(&embedded);
        let recorder = Recorder::start(&bus, AUDIT, StartFrom::Committed).await;
        recorder.caught_up(Duration::from_millis(50)).await;
        let copies = recorder.sample(rng.random_range(1..20));
        facts.extend(recorder.stop().await);
        outcome.duplicates += inject(&bus, &mut rng, 2 << 20, copies, &mut bad).await;
        embedded.close().await.unwrap();
    }

    let embedded = EmbeddedBus::open(dir.path()).unwrap();
    let bus = Bus::from(&embedded);
    let recorder = Recorder::start(&bus, AUDIT, StartFrom::Committed).await;
    recorder.caught_up(Duration::from_millis(100)).await;
    facts.extend(recorder.stop().await);
    let store = Store::open(&format!("sqlite:{data_dir}/effects.sqlite"))
        .await
        .unwrap();
    assert_eq!(store.pending().await.unwrap(), 0, "seed {seed}: outbox");
    let accepted = check_orders(seed, &store, &facts).await;
    assert!(accepted >= outcome.accepted, "seed {seed}");
    outcome.accepted = accepted;
    let mut groups = GROUPS.to_vec();
    groups.push(AUDIT);
    check_lag(seed, &bus, &groups).await;
    outcome.bad = bad.len();
    outcome.dead_letters = check_dead_letters(seed, &bus, &bad).await;
    check_no_good_event_dead(seed, &bus, &bad).await;
    embedded.close().await.unwrap();
    outcome.secs = started.elapsed().as_secs_f64();
    outcome
}

// ---------------------------------------------------------------------------------------
// A broker: the services are processes, killed and restarted while runs go on; the front
// desk lives in the run, which is killed too.

/// The engine under a broker scenario.
enum Broker {
    Nats(Box<NatsServer>),
    /// Three nodes, streams with three replicas: one node is killed and restarted, then
    /// another.
    NatsCluster(Box<NatsCluster>),
    Amqp {
        namespace: String,
    },
}

impl Broker {
    /// The bus URL the processes get.
    fn url(&self) -> String {
        match self {
            // A killed member's unacknowledged events go to its successor after 1 s.
            Broker::Nats(server) => format!("{}?ack_wait_ms=1000", server.url()),
            Broker::NatsCluster(cluster) => {
                format!("{}?replicas=3&ack_wait_ms=1000", cluster.url())
            }
            Broker::Amqp { namespace } => {
                format!("amqp://guest:guest@127.0.0.1:5672/%2f?namespace={namespace}")
            }
        }
    }

    /// The recorded facts, in an order that respects cause and effect: the bus's order on
    /// one NATS server (one stream), the order they were made on RabbitMQ and on a NATS
    /// cluster (see `Recorder::facts_in_made_order`). On the cluster the recorder's own
    /// consumer loses deliveries in flight when the node leading it dies; JetStream gives
    /// them again after the ack wait, behind what it delivered since, so the recorder can
    /// see an order's `reserved` before its `accepted` (seed 7466760502039289689: six orders
    /// so, every fact there and once).
    fn facts(&self, recorder: &Recorder) -> Vec<Fact> {
        match self {
            Broker::Nats(_) => recorder.facts(),
            Broker::NatsCluster(_) | Broker::Amqp { .. } => recorder.facts_in_made_order(),
        }
    }

    /// Bytes that exceed the bus's envelope limit but that the engine accepts.
    fn oversize(&self) -> usize {
        match self {
            Broker::Nats(_) | Broker::NatsCluster(_) => 900_000, // max_payload is 1 MB
            Broker::Amqp { .. } => 2 << 20,
        }
    }
}

async fn broker(seed: u64, plan: Plan, mut engine: Broker) -> Outcome {
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let mut outcome = Outcome::default();
    let mut bad: Vec<Bad> = Vec::new();
    let url = engine.url();
    let db = Database::create("chaos").await;
    let db_url = db.url();
    let connection = pizzeria::namespace::connect(&url).await.unwrap();
    let bus = connection.bus().clone();
    // Before any event: the audit group reads them all, live.
    let recorder = Recorder::start(&bus, AUDIT, StartFrom::Committed).await;
    let mut services: BTreeMap<&str, Service> = SERVICES
        .iter()
        .map(|n| (*n, Service::start(n, &url, &db_url)))
        .collect();
    // Broker restarts (SIGKILL, then started again): one server; two nodes of a cluster, one
    // after the other has come back.
    let restarts = match &engine {
        Broker::Nats(_) => 1,
        Broker::NatsCluster(_) => 2,
        Broker::Amqp { .. } => 0,
    };

    for r in 0..plan.runs {
        let last = r + 1 == plan.runs;
        let extra = ["--bus", &url, "--services", "external", "--store", &db_url];
        let mut run = spawn_run(plan.orders, seed.wrapping_add(r as u64), &extra);
        let kill_run_at = (!last && rng.random_bool(0.5))
            .then(|| Instant::now() + Duration::from_millis(rng.random_range(300..3000)));
        let mut injected = false;
        if last {
            // Every seed meets bad input with the front desk's group up (or about to come
            // up: it exists since the first run, so its backlog waits for it).
            let copies = recorder.sample(rng.random_range(1..20));
            await_groups(seed, &bus).await;
            outcome.duplicates += inject(&bus, &mut rng, engine.oversize(), copies, &mut bad).await;
            injected = true;
        }
        let finished = loop {
            tokio::time::sleep(Duration::from_millis(rng.random_range(150..700))).await;
            if run.try_wait().unwrap().is_some() {
                break true;
            }
            if kill_run_at.is_some_and(|at| Instant::now() >= at) {
                kill(&mut run);
                outcome.killed_runs += 1;
                break false;
            }
            match rng.random_range(0..10) {
                0..5 if (outcome.killed_services as usize) < plan.service_kills => {
                    let victim = SERVICES[rng.random_range(0..SERVICES.len())];
                    services.remove(victim).unwrap().kill();
                    outcome.killed_services += 1;
                    services.insert(victim, Service::start(victim, &url, &db_url));
                }
                5..7 if !injected => {
                    let copies = recorder.sample(rng.random_range(1..20));
                    await_groups(seed, &bus).await;
                    outcome.duplicates +=
                        inject(&bus, &mut rng, engine.oversize(), copies, &mut bad).await;
                    injected = true;
                }
                // At seeded moments, or in the last run at the latest.
                n if (outcome.broker_restarts as usize) < restarts && (n == 7 || last) => {
                    match &mut engine {
                        Broker::Nats(server) => server.restart().unwrap(),
                        Broker::NatsCluster(cluster) => {
                            let node = (seed as usize + outcome.broker_restarts as usize) % 3;
                            restart_node(cluster, node);
                        }
                        Broker::Amqp { .. } => {}
                    }
                    outcome.broker_restarts += 1;
                }
                _ => {}
            }
        };
        if finished || last {
            let summary = finish_run(seed, run, plan.orders).await;
            outcome.accepted += summary["accepted"].as_u64().unwrap();
        }
    }
    // A cluster's second node restart, if the runs ended before it came.
    if let Broker::NatsCluster(cluster) = &mut engine {
        while (outcome.broker_restarts as usize) < restarts {
            restart_node(
                cluster,
                (seed as usize + outcome.broker_restarts as usize) % 3,
            );
            outcome.broker_restarts += 1;
        }
    }
    // The services drain their backlogs (redeliveries of what killed members held)...
    let store = Store::open(&db_url).await.unwrap();
    quiesce(&engine, &recorder, &store).await;
    let mut groups = SERVICES.to_vec();
    groups.push(AUDIT);
    check_lag(seed, &bus, &groups).await;
    // ...and what they published after the last run ended waits for a front desk: one more
    // run (one order) reads it into the durable view before it leaves.
    let extra = ["--bus", &url, "--services", "external", "--store", &db_url];
    let drain = spawn_run(1, seed ^ 0xd7a1, &extra);
    outcome.accepted += finish_run(seed, drain, 1).await["accepted"]
        .as_u64()
        .unwrap();
    quiesce(&engine, &recorder, &store).await;
    groups.push("front-desk");
    check_lag(seed, &bus, &groups).await;
    outcome.bad = bad.len();
    outcome.dead_letters = check_dead_letters(seed, &bus, &bad).await;
    let facts = engine.facts(&recorder);
    if !common::check_orders(&facts).is_valid() {
        // Said before the check fails: where the unfinished orders' events are.
        diagnose(&engine, &bus, &store, &services, &bad).await;
    }
    check_no_good_event_dead(seed, &bus, &bad).await;
    let arrival = common::check_orders(&recorder.facts());
    if !arrival.is_valid() {
        // Not a failure on an engine without causal order; said, so that it is seen.
        println!("seed {seed}: in the order they arrived, not as made: {arrival}");
    }
    recorder.stop().await;
    let accepted = check_orders(seed, &store, &facts).await;
    assert!(accepted >= outcome.accepted, "seed {seed}");
    outcome.accepted = accepted;
    for (_, service) in std::mem::take(&mut services) {
        service.stop();
    }
    drop(store);
    if let Broker::Amqp { namespace } = &engine {
        delete_amqp_namespace(namespace);
    }
    drop(connection);
    db.drop_it().await;
    outcome.secs = started.elapsed().as_secs_f64();
    outcome
}

/// Waits (bounded) until every order on the bus is terminal and the outboxes are empty.
async fn quiesce(engine: &Broker, recorder: &Recorder, store: &Store) {
    let deadline = Instant::now() + LAG_BOUND;
    loop {
        recorder.caught_up(Duration::from_millis(300)).await;
        let report = common::check_orders(&engine.facts(recorder));
        if (report.is_valid() && store.pending().await.unwrap() == 0) || Instant::now() > deadline {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Deletes the queues of `namespace` (declared by several processes: no one connection knows
/// them all) and its exchanges, best effort, with `rabbitmqctl`.
fn delete_amqp_namespace(namespace: &str) {
    let prefix = format!("tabgrab.{namespace}.");
    let list = |what: &str| -> Vec<String> {
        std::process::Command::new("rabbitmqctl")
            .args(["-q", &format!("list_{what}"), "name"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .filter(|l| l.starts_with(&prefix))
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    };
    for queue in list("queues") {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["-q", "delete_queue", &queue])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    for exchange in list("exchanges") {
        let _ = std::process::Command::new("rabbitmqadmin")
            .args(["delete", "exchange", &format!("name={exchange}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Runs `scenario` for each seed, printing each and the total.
async fn tier<F, Fut>(engine: &str, plan: Plan, seeds: Vec<u64>, mut scenario: F)
where
    F: FnMut(u64, Plan) -> Fut,
    Fut: std::future::Future<Output = Outcome>,
{
    let mut total = Outcome::default();
    let n = seeds.len();
    for seed in seeds {
        println!("{engine}: seed {seed} (replay with PIZZERIA_CHAOS_SEED={seed})");
        let o = scenario(seed, plan).await;
        println!(
            "{engine}: seed {seed}: {} orders accepted, all ended; runs killed {}, services killed {}, \
             broker restarts {}, {} bad messages all dead-lettered ({} dead letters), \
             {} duplicates absorbed, groups at lag 0; {:.1} s",
            o.accepted,
            o.killed_runs,
            o.killed_services,
            o.broker_restarts,
            o.bad,
            o.dead_letters,
            o.duplicates,
            o.secs
        );
        total.accepted += o.accepted;
        total.killed_runs += o.killed_runs;
        total.killed_services += o.killed_services;
        total.broker_restarts += o.broker_restarts;
        total.bad += o.bad;
        total.duplicates += o.duplicates;
        total.secs += o.secs;
    }
    println!(
        "{engine}: {n} seeds passed: {} orders accepted, 0 lost, 0 double effects, 0 wedged groups; \
         runs killed {}, services killed {}, broker restarts {}, {} bad messages dead-lettered, \
         {} duplicates absorbed; {:.0} s",
        total.accepted,
        total.killed_runs,
        total.killed_services,
        total.broker_restarts,
        total.bad,
        total.duplicates,
        total.secs
    );
}

fn nats() -> Option<Broker> {
    nats_server::require()?;
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return None;
    }
    // fsync before every acknowledgement: a broker restart loses nothing acknowledged.
    let options = NatsOptions {
        sync_always: true,
        ..NatsOptions::default()
    };
    Some(Broker::Nats(Box::new(NatsServer::start(options).unwrap())))
}

/// Kills node `node` of `cluster` with SIGKILL, starts it again, and waits until JetStream
/// answers through it (back in the cluster before the next fault).
fn restart_node(cluster: &mut NatsCluster, node: usize) {
    tokio::task::block_in_place(|| {
        cluster.nodes[node].restart().unwrap();
        cluster.nodes[node]
            .wait_for_jetstream(Duration::from_secs(30))
            .unwrap();
    });
}

fn nats_cluster() -> Option<Broker> {
    let binary = nats_server::require()?;
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return None;
    }
    assert!(
        NatsServer::supports_sync_always(&binary),
        "the cluster test needs nats-server 2.10+ (sync_interval): {}",
        binary.display()
    );
    let options = NatsOptions {
        sync_always: true,
        ..NatsOptions::default()
    };
    Some(Broker::NatsCluster(Box::new(
        NatsCluster::start(3, options).unwrap(),
    )))
}

fn amqp() -> Option<Broker> {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672")
        || !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432")
    {
        return None;
    }
    Some(Broker::Amqp {
        namespace: format!("chaos-{}", uuid::Uuid::now_v7().simple()),
    })
}

/// Runs the broker scenario on a new engine from `make` for each seed; skipped (reason
/// printed) when `make` finds no server.
async fn broker_tier(name: &str, plan: Plan, default_seeds: usize, make: fn() -> Option<Broker>) {
    let Some(first) = make() else { return };
    let mut first = Some(first);
    tier(name, plan, seeds(default_seeds), |seed, plan| {
        let engine = first.take().or_else(make).unwrap();
        broker(seed, plan, engine)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_the_embedded_bus() {
    tier("embedded", SHORT, seeds(1), embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_nats() {
    broker_tier("nats", SHORT, 1, nats).await;
}

/// Three nats-servers, streams with three replicas; one node is killed (SIGKILL) and
/// restarted under load, then another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_a_three_node_nats_cluster() {
    broker_tier("nats-cluster", SHORT, 1, nats_cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_rabbitmq() {
    broker_tier("rabbitmq", SHORT, 1, amqp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long tier: minutes; PIZZERIA_CHAOS_SEEDS sets the count (default 50)"]
async fn chaos_long_on_the_embedded_bus() {
    tier("embedded", LONG, seeds(50), embedded).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long tier: minutes; PIZZERIA_CHAOS_SEEDS sets the count (default 50)"]
async fn chaos_long_on_nats() {
    broker_tier("nats", LONG, 50, nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the long tier: minutes; PIZZERIA_CHAOS_SEEDS sets the count (default 50)"]
async fn chaos_long_on_rabbitmq() {
    broker_tier("rabbitmq", LONG, 50, amqp).await;
}
