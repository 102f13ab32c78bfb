//! The lab and the messaging style on real brokers (the shared NATS on 4222 and RabbitMQ on
//! 5672; skipped with a printed reason when absent): the quick lab on NATS measures the same
//! facts as on the embedded bus and deletes the streams it made; `pizzeria run --style
//! messaging --bus …` delivers every order on NATS and on RabbitMQ, in a namespace of its own
//! that it deletes at the end.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use futures::StreamExt as _;
use pizzeria::lab::report::LabReport;
use pizzeria::run::Style;
use serde_json::Value;

const NATS: &str = "nats://127.0.0.1:4222";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn pizzeria() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pizzeria"))
}

/// A namespace no other test or run uses.
fn namespace(what: &str) -> String {
    format!(
        "test-{what}-{}",
        &uuid::Uuid::now_v7().simple().to_string()[20..]
    )
}

/// The JetStream streams whose names contain `part`.
async fn streams_named(part: &str) -> Vec<String> {
    let bus = tabgrab::backend::nats::NatsBus::connect(NATS)
        .await
        .unwrap();
    let names: Vec<String> = bus
        .jetstream()
        .stream_names()
        .filter_map(|n| async move { n.ok() })
        .collect()
        .await;
    names.into_iter().filter(|n| n.contains(part)).collect()
}

fn run_lab(bus: &str, out: &Path) -> (String, LabReport) {
    let started = Instant::now();
    let output = pizzeria()
        .args(["lab", "--quick", "--seed", "7", "--bus", bus, "--out"])
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    println!(
        "the quick lab on {bus} took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    (
        stdout,
        pizzeria::lab::json::read(&out.join("lab.json")).unwrap(),
    )
}

/// The facts the quick lab asserts on every bus.
fn assert_the_measured_facts(report: &LabReport) {
    assert_eq!(report.blocking.len(), 4);
    for b in &report.blocking {
        assert_eq!(b.probe.completed, b.n, "{b:?}");
        let per_request = b.caller == pizzeria::lab::blocking::Caller::Baseline;
        assert_eq!(b.blocks_a_thread_per_request, per_request, "{b:?}");
    }
    assert_eq!(report.availability.len(), 6);
    for a in &report.availability {
        assert!(a.offered_during_outage > 0, "{a:?}");
        match a.style {
            Style::Calls => {
                assert!(a.recipient_must_be_up, "{a:?}");
                assert!(a.failed_during_outage > 0, "{a:?}");
                assert!(a.accepted_during_outage < a.offered_during_outage, "{a:?}");
            }
            Style::Messaging | Style::Events => {
                assert!(!a.recipient_must_be_up, "{a:?}");
                assert_eq!(a.accepted_during_outage, a.offered_during_outage, "{a:?}");
                assert_eq!((a.failed, a.lost), (0, 0), "{a:?}");
                assert_eq!(a.completed, a.offered, "{a:?}");
                assert!(a.completed_after_recovery > 0, "{a:?}");
            }
        }
    }
    for r in &report.response {
        assert_eq!(r.completed, r.orders, "{r:?}");
        assert!(!r.work_open_ms.is_empty(), "{r:?}");
        match r.style {
            Style::Events => {
                assert_eq!(r.responses_per_order, 0.0, "{r:?}");
                assert_eq!(r.correlation_records_per_order, 0.0, "{r:?}");
                assert!(r.bus_messages_per_order > 0.0, "{r:?}");
                assert!(!r.response_expected, "{r:?}");
            }
            Style::Messaging => {
                assert!(r.responses_per_order >= 3.0, "{r:?}");
                assert!(r.correlation_records_per_order >= 3.0, "{r:?}");
                assert!(r.response_expected, "{r:?}");
            }
            Style::Calls => {
                assert!(r.responses_per_order >= 3.0, "{r:?}");
                assert!(r.response_expected, "{r:?}");
            }
        }
    }
    for c in &report.capacity {
        assert!(!c.faster_than_the_kitchen, "{c:?}");
    }
}

#[test]
fn the_quick_lab_on_nats_measures_the_same_facts_and_deletes_its_streams() {
    if !tabgrab_testkit::services::require("NATS (JetStream)", "127.0.0.1:4222") {
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let (stdout, report) = run_lab(NATS, out.path());
    assert!(stdout.contains(&report.render()));
    assert_eq!(report.bus, "nats");
    let bus = report.bus_report.as_ref().expect("the broker's report");
    assert_eq!(bus.engine, "nats");
    let version = bus
        .server_version
        .as_deref()
        .expect("NATS reports its version");
    assert!(
        stdout.contains(&format!("bus: nats (server {version}")),
        "{stdout}"
    );
    assert!(report.rustc.starts_with("rustc "), "{}", report.rustc);
    assert_the_measured_facts(&report);

    // Every trial ran in a namespace of the run, and none of its streams is left.
    let run = report
        .namespace
        .as_deref()
        .expect("the run's namespace prefix");
    assert!(run.starts_with("lab-"), "{run}");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let left = runtime.block_on(streams_named(run));
    assert!(left.is_empty(), "the lab left streams behind: {left:?}");
}

/// `pizzeria run --style messaging --bus <url>?namespace=…`: its summary.
fn run_messaging(url: &str, orders: u64) -> Value {
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = pizzeria()
        .args(["run", "--style", "messaging", "--json", "--bus", url])
        .args(["--orders", &orders.to_string(), "--decline-rate", "0"])
        .args(["--truffles", "100000", "--deadline-secs", "60"])
        .arg("--data-dir")
        .arg(data.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    let summary: Value = serde_json::from_slice(&output.stdout).unwrap();
    println!("{summary}\n({:.1} s)", started.elapsed().as_secs_f64());
    summary
}

fn assert_every_order_delivered(s: &Value, orders: u64) {
    assert_eq!(s["style"], "messaging");
    assert_eq!(s["accepted"], orders, "{s}");
    assert_eq!(s["delivered"], orders, "{s}");
    assert_eq!(s["failed"], 0, "{s}");
    assert_eq!(s["timeouts"], 0, "{s}");
    assert_eq!(s["dead_letters"], 0, "{s}");
    // Four requests and four replies per order (charge, reserve, ticket, delivery), each
    // request with its correlation record.
    assert_eq!(s["correlation_records"], 4 * orders, "{s}");
    assert_eq!(s["events_published"], 8 * orders, "{s}");
}

#[test]
fn the_messaging_style_delivers_every_order_over_nats() {
    if !tabgrab_testkit::services::require("NATS (JetStream)", "127.0.0.1:4222") {
        return;
    }
    let ns = namespace("messaging");
    let s = run_messaging(&format!("{NATS}?namespace={ns}"), 300);
    assert_every_order_delivered(&s, 300);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let left = runtime.block_on(streams_named(&ns));
    assert!(left.is_empty(), "the run left streams behind: {left:?}");
}

#[test]
fn the_messaging_style_delivers_every_order_over_rabbitmq() {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") {
        return;
    }
    let ns = namespace("messaging");
    let s = run_messaging(&format!("{AMQP}?namespace={ns}"), 300);
    assert_every_order_delivered(&s, 300);
}

#[test]
fn the_calls_style_refuses_a_bus_with_a_typed_reason() {
    let output = pizzeria()
        .args(["run", "--style", "calls", "--orders", "1", "--bus", NATS])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("uses no bus"), "{stderr}");
}

#[test]
fn the_lab_refuses_a_bus_it_does_not_know_and_a_namespace_of_the_users() {
    let out = tempfile::tempdir().unwrap();
    for (bus, says) in [
        ("kafka://127.0.0.1:9092", "not a bus the lab knows"),
        (
            "nats://127.0.0.1:4222?namespace=mine",
            "the lab makes a namespace per trial",
        ),
    ] {
        let output = pizzeria()
            .args(["lab", "--quick", "--bus", bus, "--out"])
            .arg(out.path())
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{bus}: {stderr}");
    }
}
