//! The multi-process pizzeria under kills (RELIABILITY.md, fault tier): payment, inventory,
//! the kitchen and delivery run as separate processes over NATS, sharing their state in a
//! PostgreSQL database of their own; while 300 orders flow, payment, inventory and the
//! kitchen are killed with SIGKILL at seeded random moments and restarted. After quiescence
//! every order read back from the bus went through allowed transitions only to a terminal
//! state, and the ledger holds exactly one charge per charged order, at most one refund (of a
//! charge), one reservation per reserved order and at most one release: the inboxes absorbed
//! the redeliveries, the outbox lost nothing.
//!
//! The nats-server is this test's own (free port, killed on drop): the pizzeria's topic has a
//! fixed name, so a private server is what keeps its stream apart from other tests'. Set
//! `PIZZERIA_SEED` to replay a schedule.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pizzeria::services::Store;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use serde_json::Value;
use tabgrab::backend::Bus;
use tabgrab_testkit::nats_server::{self, NatsOptions, NatsServer};

/// Where this test creates (and drops) its own database.
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";
const ORDERS: u64 = 300;

fn pizzeria() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pizzeria"))
}

/// A database of this test's own, dropped at the end.
struct Database {
    name: String,
}

impl Database {
    async fn create() -> Database {
        let name = format!("pizzeria_kills_{}", uuid::Uuid::now_v7().simple());
        let admin = sqlx::PgPool::connect(&format!("{POSTGRES}/test"))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        Database { name }
    }

    fn url(&self) -> String {
        format!("{POSTGRES}/{}", self.name)
    }

    async fn drop_it(self) {
        let admin = sqlx::PgPool::connect(&format!("{POSTGRES}/test"))
            .await
            .unwrap();
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

/// One service process; its stdout lines arrive on a channel. Killed on drop.
struct Service {
    name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// The last `duplicates=` it reported.
    duplicates: u64,
}

impl Service {
    fn start(name: &'static str, bus: &str, db: &str) -> Service {
        let mut command = pizzeria();
        command
            .args([
                "service",
                name,
                "--bus",
                bus,
                "--store",
                db,
                "--kitchen-db",
                db,
            ])
            .args(["--truffles", "12", "--ovens", "8", "--bake-ms", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = command.spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut service = Service {
            name,
            child,
            lines,
            duplicates: 0,
        };
        service.wait_for("ready ", Duration::from_secs(30));
        service
    }

    /// Reads lines (bounded) until one starts with `prefix`, noting `duplicates=`.
    fn wait_for(&mut self, prefix: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self
                .lines
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("{}: no {prefix:?} line within {within:?}", self.name));
            self.note(&line);
            if line.starts_with(prefix) {
                return;
            }
        }
    }

    fn note(&mut self, line: &str) {
        if let Some(n) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("duplicates="))
            .and_then(|v| v.parse().ok())
        {
            self.duplicates = n;
        }
    }

    /// Drains the lines so far; returns the last duplicates figure.
    fn drain(&mut self) -> u64 {
        while let Ok(line) = self.lines.try_recv() {
            self.note(&line);
        }
        self.duplicates
    }

    /// SIGKILL, by PID; returns the duplicates it had reported.
    fn kill(mut self) -> u64 {
        let duplicates = self.drain();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        duplicates
    }

    /// SIGTERM, then waits (bounded) for `stopped`; returns its last duplicates figure.
    fn stop(mut self) -> u64 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_for("stopped", Duration::from_secs(20));
        self.child.wait().unwrap();
        self.duplicates
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pizzeria_under_kills_charges_once_and_ends_every_order() {
    if nats_server::require().is_none()
        || !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432")
    {
        return;
    }
    let seed: u64 = std::env::var("PIZZERIA_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let started = Instant::now();
    let server = NatsServer::start(NatsOptions::default()).unwrap();
    // A killed member's unacknowledged events go to its successor after 1 s.
    let bus_url = format!("{}?ack_wait_ms=1000", server.url());
    let db = Database::create().await;
    let db_url = db.url();

    let names = ["payment", "inventory", "kitchen", "delivery"];
    let mut services: BTreeMap<&str, Service> = names
        .iter()
        .map(|n| (*n, Service::start(n, &bus_url, &db_url)))
        .collect();
    let mut run = pizzeria()
        .args(["run", "--style", "events", "--json"])
        .args(["--orders", &ORDERS.to_string(), "--concurrency", "8"])
        .args(["--decline-rate", "0.05", "--deadline-secs", "45"])
        .args(["--bus", &bus_url, "--services", "external"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Kill while orders flow: a seeded victim at a seeded moment, restarted at once.
    let mut kills: BTreeMap<&str, u32> = BTreeMap::new();
    let mut duplicates = 0;
    let kill_deadline = Instant::now() + Duration::from_secs(30);
    while kills.values().sum::<u32>() < 9 && Instant::now() < kill_deadline {
        tokio::time::sleep(Duration::from_millis(rng.random_range(100..500))).await;
        if run.try_wait().unwrap().is_some() {
            break; // every order ended already
        }
        let victim = ["payment", "inventory", "kitchen"][rng.random_range(0..3)];
        let service = services.remove(victim).unwrap();
        duplicates += service.kill();
        *kills.entry(victim).or_default() += 1;
        services.insert(victim, Service::start(victim, &bus_url, &db_url));
    }
    let output = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "the run failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary["accepted"], ORDERS);

    // Quiescence: read everything back until every order is terminal (bounded).
    let bus = Bus::connect(&server.url()).await.unwrap();
    let store = Store::open(&db_url).await.unwrap();
    let quiet_deadline = Instant::now() + Duration::from_secs(20);
    let (facts, report, audit) = loop {
        let facts = common::read_back(&bus, Duration::from_millis(300)).await;
        let report = common::check_orders(&facts);
        let audit = store.audit().await.unwrap();
        let pending = store.pending().await.unwrap();
        if (report.is_valid() && pending == 0) || Instant::now() > quiet_deadline {
            break (facts, report, audit);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    for (_, service) in std::mem::take(&mut services) {
        duplicates += service.stop();
    }
    let count = |fact: &str| common::orders_with(&facts, fact);
    println!(
        "seed {seed}: {ORDERS} orders, kills {kills:?} ({} in all), {duplicates} duplicate deliveries absorbed by the inboxes, {:.1} s",
        kills.values().sum::<u32>(),
        started.elapsed().as_secs_f64()
    );
    println!("run: {summary}");
    println!("orders: {report}");
    println!("ledger: {audit}");
    // Exactly one effect per (service, causing message id), and one for each the bus calls for.
    let effects = tabgrab_testkit::effects::check(
        common::expected_effects(&facts),
        store.effects().await.unwrap(),
    );
    println!("effects: {effects}");
    assert!(effects.is_valid(), "{effects}");
    assert!(
        kills.values().sum::<u32>() >= 3,
        "too few kills happened: {kills:?}"
    );
    assert!(report.is_valid(), "{report}");
    assert_eq!(
        report.entities as u64, ORDERS,
        "an order is missing from the bus"
    );
    assert!(audit.is_valid(), "{audit}");
    // Every charge in the ledger was announced, and every announcement is one charge.
    assert_eq!(audit.charged, count("collected"));
    assert_eq!(audit.refunded, count("refunded"));
    assert_eq!(audit.reserved, count("reserved"));
    assert_eq!(audit.released, count("released"));
    drop(bus);
    db.drop_it().await;
}
