//! Metrics and health end to end, with real tools: a real Prometheus server scrapes a
//! `pizzeria run` and its query API returns the figures the run's summary printed; a
//! service's `/readyz` follows its nats-server going down and coming back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead as _, BufReader, Read as _};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::processes::{Service, pizzeria};
use serde_json::Value;
use tabgrab_testkit::nats_server::{self, NatsOptions, NatsServer, free_port};

/// A child process killed by PID when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's Prometheus (`.ci/run` installs the package), or `TABGRAB_PROMETHEUS`; `None`
/// (skipped, reason printed) without one, a failure under `TABGRAB_REQUIRE_SERVICES=1`.
fn prometheus_binary() -> Option<PathBuf> {
    let path = std::env::var_os("TABGRAB_PROMETHEUS")
        .map_or_else(|| PathBuf::from("/usr/bin/prometheus"), PathBuf::from);
    if path.is_file() {
        return Some(path);
    }
    let reason = format!("no Prometheus at {}", path.display());
    assert!(
        !tabgrab_testkit::services::required(),
        "{reason}, and TABGRAB_REQUIRE_SERVICES=1 requires it (apt-get install prometheus)"
    );
    eprintln!("SKIPPED: {reason}; apt-get install prometheus or set TABGRAB_PROMETHEUS");
    None
}

/// A plain HTTP/1.1 GET on loopback: status and body.
fn get(addr: &str, path: &str) -> std::io::Result<(u16, String)> {
    use std::io::Write as _;
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    // Chunked bodies (axum's JSON is not chunked, Prometheus' API may be): joined.
    let body = if response
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(&body)
    } else {
        body
    };
    Ok((status, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// The value of a PromQL query that returns one number, once Prometheus has one.
fn query(prometheus: &str, promql: &str) -> Option<f64> {
    let encoded: String = promql
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let (status, body) = get(prometheus, &format!("/api/v1/query?query={encoded}")).ok()?;
    if status != 200 {
        return None;
    }
    let json: Value = serde_json::from_str(&body).ok()?;
    let result = json["data"]["result"].as_array()?;
    let value = result.first()?["value"][1].as_str()?;
    value.parse().ok()
}

/// Polls `what` every 200 ms until it returns `Some`, for at most `within`.
fn until<T>(label: &str, within: Duration, mut what: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = what() {
            return value;
        }
        assert!(Instant::now() < deadline, "{label} within {within:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn prometheus_scrapes_the_figures_the_run_printed() {
    let Some(prometheus) = prometheus_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // A record that is no CloudEvent, before the run: every group dead-letters it.
    {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        runtime.block_on(async {
            let bus = tabgrab::backend::embedded::EmbeddedBus::open(&data).unwrap();
            tabgrab::backend::Bus::from(&bus)
                .publish_raw(
                    pizzeria::messages::TOPIC,
                    Some("poison"),
                    Bytes::from_static(b"not a cloud event"),
                )
                .await
                .unwrap();
            bus.close().await.unwrap();
        });
    }
    let metrics_port = free_port().unwrap();
    let mut run = pizzeria()
        .args(["run", "--orders", "300", "--json", "--hold", "--data-dir"])
        .arg(&data)
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(run.stdout.take().unwrap());
    let stderr = run.stderr.take().unwrap();
    let run = Killed(run);
    // The summary is complete when the run says it holds its metrics.
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines.recv_timeout(left).unwrap_or_else(|_| {
            panic!(
                "the run did not hold its metrics; stderr:\n{}",
                seen.join("\n")
            )
        });
        if line.contains("until SIGINT or SIGTERM") {
            break;
        }
        seen.push(line);
    }
    let mut json = String::new();
    while !json.trim_end().ends_with('}') || serde_json::from_str::<Value>(&json).is_err() {
        let mut line = String::new();
        assert!(
            stdout.read_line(&mut line).unwrap() > 0,
            "no summary: {json}"
        );
        json.push_str(&line);
    }
    let summary: Value = serde_json::from_str(&json).unwrap();
    let figure = |name: &str| summary[name].as_u64().unwrap() as f64;
    assert_eq!(figure("dead_letters"), 5.0, "one per group: {summary}");

    // Prometheus, scraping the run every second.
    let web = format!("127.0.0.1:{}", free_port().unwrap());
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: pizzeria\n    \
             static_configs:\n      - targets: ['127.0.0.1:{metrics_port}']\n"
        ),
    )
    .unwrap();
    let _prometheus = Killed(
        Command::new(prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let value = |promql: &str| {
        until(
            &format!("Prometheus to return {promql}"),
            Duration::from_secs(60),
            || query(&web, promql),
        )
    };
    // Orders, as the front desk counted them.
    assert_eq!(
        value(r#"sum(pizzeria_orders_total{outcome="accepted"})"#),
        figure("accepted")
    );
    assert_eq!(
        value(r#"sum(pizzeria_orders_total{outcome="delivered"})"#),
        figure("delivered")
    );
    assert_eq!(
        value(r#"sum(pizzeria_orders_total{outcome="cancelled"})"#),
        figure("failed")
    );
    // Events published, and each group received them all (and the poison record).
    assert_eq!(
        value("sum(messaging_client_sent_messages_total)"),
        figure("events_published")
    );
    for group in ["front-desk", "payment", "inventory", "kitchen", "delivery"] {
        assert_eq!(
            value(&format!(
                r#"sum(messaging_client_consumed_messages_total{{messaging_consumer_group_name="{group}"}})"#
            )),
            figure("events_published") + 1.0,
            "{group}"
        );
    }
    // Dead letters, by reason.
    assert_eq!(
        value("sum(tabgrab_dead_letters_total)"),
        figure("dead_letters")
    );
    assert_eq!(
        value(r#"sum(tabgrab_dead_letters_total{reason="malformed"})"#),
        figure("dead_letters")
    );
    // Histograms: every acknowledged publish has a duration, and its buckets are there.
    assert_eq!(
        value("sum(messaging_client_operation_duration_seconds_count)"),
        figure("events_published")
    );
    assert_eq!(
        value(r#"sum(messaging_client_operation_duration_seconds_bucket{le="+Inf"})"#),
        figure("events_published")
    );
    assert_eq!(
        value(
            r#"sum(messaging_process_duration_seconds_count{messaging_consumer_group_name="delivery"})"#
        ),
        figure("delivered")
    );

    // SIGTERM ends the hold.
    let mut run = run;
    let pid = run.0.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = until(
        "the run to stop on SIGTERM",
        Duration::from_secs(20),
        || run.0.try_wait().unwrap(),
    );
    assert!(status.success(), "{status:?}");
}

#[test]
fn readyz_follows_the_bus() {
    if nats_server::require().is_none() {
        return;
    }
    let mut nats = NatsServer::start(NatsOptions::default()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("payment.sqlite").display());
    let addr = format!("127.0.0.1:{}", free_port().unwrap());
    let _payment = Service::spawn(
        "payment",
        &[
            "--bus",
            &nats.url(),
            "--store",
            &store,
            "--metrics-listen",
            &addr,
        ],
    );
    let ready = |want: u16| {
        let addr = addr.clone();
        move || {
            let (status, body) = get(&addr, "/readyz").ok()?;
            (status == want).then_some(body)
        }
    };
    let body = until("ready once joined", Duration::from_secs(30), ready(200));
    let json: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["ready"], true, "{json}");
    let (status, _) = get(&addr, "/healthz").unwrap();
    assert_eq!(status, 200);

    nats.kill().unwrap();
    let body = until(
        "unready without the bus",
        Duration::from_secs(30),
        ready(503),
    );
    let json: Value = serde_json::from_str(&body).unwrap();
    let bus = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bus nats")
        .unwrap();
    assert_eq!(bus["ok"], false, "{json}");
    assert!(
        bus["reason"].as_str().unwrap().contains("not connected"),
        "{json}"
    );
    // Alive all the same: the process answers.
    assert_eq!(get(&addr, "/healthz").unwrap().0, 200);

    nats.restart().unwrap();
    until(
        "ready again with the bus back",
        Duration::from_secs(60),
        ready(200),
    );
}
