//! The restaurant as separate processes over NATS, on a nats-server this test starts itself
//! (free port, killed on drop; the shared one on 4222 is left alone): 1,000 orders through
//! five service processes, and a kitchen process killed with SIGKILL while it holds
//! unacknowledged orders, whose orders the other kitchen then bakes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::processes::{Database, Service, pizzeria};
use serde_json::Value;
use tabgrab_testkit::nats_server::{self, NatsOptions, NatsServer};

/// What a test runs on: a nats-server and a PostgreSQL database of its own (two pizzerias on
/// one database relay each other's outbox rows, so a shared one lost orders to the other
/// test); the database is dropped at the end.
struct Servers {
    nats: NatsServer,
    db: Option<Database>,
    runtime: tokio::runtime::Runtime,
}

impl Servers {
    fn db(&self) -> String {
        self.db.as_ref().map(Database::url).unwrap_or_default()
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        if let Some(db) = self.db.take() {
            self.runtime.block_on(db.drop_it());
        }
    }
}

/// The nats-server and PostgreSQL these tests need, or `None` (skipped, reason printed).
fn servers(what: &str) -> Option<Servers> {
    nats_server::require()?;
    if !tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432") {
        return None;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let db = runtime.block_on(Database::create(what));
    Some(Servers {
        nats: NatsServer::start(NatsOptions::default()).unwrap(),
        db: Some(db),
        runtime,
    })
}

fn summary(output: &std::process::Output) -> Value {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[test]
fn a_thousand_orders_through_five_service_processes_are_all_delivered() {
    let Some(servers) = servers("thousand") else {
        return;
    };
    let server = &servers.nats;
    let data = tempfile::tempdir().unwrap();
    let output = pizzeria()
        .args(["run", "--style", "events", "--orders", "1000", "--json"])
        .args(["--data-dir", data.path().to_str().unwrap()])
        .args([
            "--bus",
            &server.url(),
            "--services",
            "spawn",
            "--kitchens",
            "2",
        ])
        .args(["--kitchen-db", &servers.db(), "--deadline-secs", "120"])
        .output()
        .unwrap();
    let s = summary(&output);
    println!("{s}");
    assert_eq!(s["accepted"], 1000);
    let delivered = s["delivered"].as_u64().unwrap();
    let failed = s["failed"].as_u64().unwrap();
    assert_eq!(delivered + failed, 1000, "every order ended");
    assert!(delivered > 900, "{delivered} delivered");
}

fn field(line: &str, name: &str) -> Option<u64> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name))
        .and_then(|v| v.parse().ok())
}

/// Service `name` on `url`, its payment and inventory state in memory (not what this test is
/// about), the kitchens' rail in PostgreSQL.
fn service(name: &'static str, url: &str, db: &str, extra: &[&str]) -> Service {
    let mut args = vec!["--bus", url, "--kitchen-db", db, "--store", "memory"];
    args.extend_from_slice(extra);
    Service::spawn(name, &args)
}

#[test]
fn a_killed_kitchen_process_s_unacknowledged_orders_are_baked_by_the_other_kitchen() {
    let Some(servers) = servers("killed_kitchen") else {
        return;
    };
    let (server, db) = (&servers.nats, servers.db());
    // Deliveries of a dead member go to another after 1.5 s instead of 30 s.
    let url = format!("{}?ack_wait_ms=1500", server.url());
    let _payment = service("payment", &url, &db, &[]);
    let _inventory = service("inventory", &url, &db, &["--truffles", "1000"]);
    let _delivery = service("delivery", &url, &db, &[]);
    // The slow kitchen holds many orders at once: 2 ovens, 200 ms each.
    let mut slow = service("kitchen", &url, &db, &["--ovens", "2", "--bake-ms", "200"]);
    let mut fast = service("kitchen", &url, &db, &["--ovens", "16", "--bake-ms", "2"]);
    // The front desk's view of the orders in a directory of this test's own.
    let data = tempfile::tempdir().unwrap();
    let run = pizzeria()
        .args(["run", "--style", "events", "--orders", "300", "--json"])
        .args([
            "--bus",
            &url,
            "--services",
            "external",
            "--deadline-secs",
            "120",
        ])
        .arg("--data-dir")
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    slow.wait_for(
        |l| field(l, "in_oven=").is_some_and(|n| n > 0),
        "slow kitchen baking",
        Duration::from_secs(60),
    );
    let pid = slow.pid();
    slow.kill(); // SIGKILL: no drain, no nack
    println!("killed the slow kitchen (pid {pid}) mid-bake");
    let output = run.wait_with_output().unwrap();
    let s = summary(&output);
    println!("{s}");
    assert_eq!(s["accepted"], 300);
    let delivered = s["delivered"].as_u64().unwrap();
    let failed = s["failed"].as_u64().unwrap();
    assert_eq!(
        delivered + failed,
        300,
        "no order lost with the killed kitchen"
    );
    assert!(fast.figure("acked") > 0, "the other kitchen took over");
}
