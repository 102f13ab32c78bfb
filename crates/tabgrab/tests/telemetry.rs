//! Metrics as Prometheus reads them, from the library's own components on the embedded bus:
//! a consumer group's lag, outcomes, durations and dead letters by reason; a requester's
//! requests and replies; figures that outlive a stopped member; calls at both ends and a
//! breaker that opens; the outbox relay (rows relayed, their lag, the backlog) and an inbox's
//! duplicates. The HTTP endpoint and a real
//! Prometheus server are tested with the pizzeria (crates/pizzeria/tests/metrics.rs).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{HandlerError, Publisher, Subscription};
use tabgrab::messaging::{MemoryStore, Requester, Responder, SendOptions};
use tabgrab::retry::Backoff;
use tabgrab::telemetry::Prometheus;

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.ticket.placed.v1", event)]
struct Ticket {
    n: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.payment.charge.v1", command, response = Charged)]
struct Charge {
    cents: u64,
}
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Charged {
    cents: u64,
}

/// The value of the series `name` whose labels include every one of `labels`, summed over
/// the series that match; `None` when none does.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        let (series, number) = match rest.strip_prefix('{') {
            Some(rest) => match rest.split_once("} ") {
                Some((series, number)) => (series, number),
                None => continue,
            },
            None => match rest.strip_prefix(' ') {
                Some(number) => ("", number),
                None => continue,
            },
        };
        if labels
            .iter()
            .all(|(k, v)| series.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
        {
            *found.get_or_insert(0.0) += number.trim().parse::<f64>().unwrap();
        }
    }
    found
}

/// Renders until `name{labels}` has `want` (bounded), so that the test does not depend on
/// when a handler's counter moves.
async fn until_value(metrics: &Prometheus, name: &str, labels: &[(&str, &str)], want: f64) {
    let start = Instant::now();
    loop {
        let text = metrics.render();
        if value(&text, name, labels) == Some(want) {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name}{labels:?} never became {want}; last:\n{}",
            text.lines()
                .filter(|l| l.starts_with(name))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_lag_outcomes_durations_and_dead_letters() {
    let metrics = Prometheus::install().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let held = Arc::clone(&gate);
    let subscription = Subscription::builder(&bus, "lagging", "slow")
        .max_deliveries(2)
        .backoff(Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        })
        .handle(move |t: Ticket, _ctx| {
            let gate = Arc::clone(&held);
            async move {
                gate.acquire().await.unwrap().forget();
                match t.n {
                    7 => Err(HandlerError::permanent("seven is refused")),
                    8 => Err(HandlerError::transient("eight always fails")),
                    _ => Ok(()),
                }
            }
        })
        .start()
        .unwrap();
    let publisher = Publisher::new(&bus, "lagging", "/test").unwrap();
    for n in 0..10 {
        publisher
            .publish(&Ticket { n }, format!("s-{n}"))
            .await
            .unwrap();
    }
    let group = [("messaging_consumer_group_name", "slow")];
    let topic = [("messaging_destination_name", "lagging")];
    // Nothing finished: the whole topic is the group's lag.
    until_value(&metrics, "tabgrab_consumer_lag", &group, 10.0).await;
    let text = metrics.render();
    assert_eq!(
        value(&text, "messaging_client_sent_messages_total", &topic),
        Some(10.0)
    );
    assert_eq!(
        value(
            &text,
            "messaging_client_operation_duration_seconds_count",
            &topic
        ),
        Some(10.0)
    );
    assert_eq!(
        value(
            &text,
            "messaging_client_operation_duration_seconds_bucket",
            &[("messaging_destination_name", "lagging"), ("le", "+Inf")]
        ),
        Some(10.0)
    );

    gate.add_permits(1_000);
    until_value(&metrics, "tabgrab_consumer_lag", &group, 0.0).await;
    let text = metrics.render();
    let outcome = |o: &str| {
        value(
            &text,
            "tabgrab_messaging_processed_messages_total",
            &[("messaging_consumer_group_name", "slow"), ("outcome", o)],
        )
    };
    assert_eq!(outcome("ack"), Some(8.0));
    assert_eq!(outcome("dead_letter"), Some(2.0));
    assert_eq!(
        value(&text, "messaging_client_consumed_messages_total", &group),
        Some(10.0)
    );
    // One retry of the transient failure before max_deliveries (2) gave up.
    assert_eq!(value(&text, "tabgrab_retries_total", &group), Some(1.0));
    for (reason, n) in [("permanent_error", 1.0), ("max_deliveries", 1.0)] {
        assert_eq!(
            value(
                &text,
                "tabgrab_dead_letters_total",
                &[
                    ("messaging_consumer_group_name", "slow"),
                    ("reason", reason)
                ]
            ),
            Some(n),
            "{reason}"
        );
    }
    // Handler durations: 8 successes, and the failures by kind.
    assert_eq!(
        value(&text, "messaging_process_duration_seconds_count", &group),
        Some(11.0)
    );
    assert_eq!(
        value(
            &text,
            "messaging_process_duration_seconds_count",
            &[
                ("messaging_consumer_group_name", "slow"),
                ("error_type", "transient")
            ]
        ),
        Some(2.0)
    );

    // A stopped member's counts stay; its lag is no longer reported as a level.
    subscription.shutdown().await.unwrap();
    let text = metrics.render();
    assert_eq!(
        value(&text, "messaging_client_consumed_messages_total", &group),
        Some(10.0)
    );
    assert_eq!(value(&text, "tabgrab_consumer_lag", &group), Some(0.0));
    bus.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_their_replies() {
    let metrics = Prometheus::install().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let responder = Responder::builder(&bus, "billing", "billing")
        .handle(|c: Charge, _ctx| async move { Ok(Charged { cents: c.cents }) })
        .start()
        .unwrap();
    let requester = Requester::builder(&bus, "till")
        .store(MemoryStore::new())
        .route::<Charge>("billing")
        .start()
        .unwrap();
    for cents in [1, 2, 3] {
        let charged = requester
            .request(
                &Charge { cents },
                SendOptions::default().timeout(Duration::from_secs(20)),
            )
            .await
            .unwrap();
        assert_eq!(charged, Charged { cents });
    }
    let till = [("messaging_consumer_group_name", "till")];
    // A reply counts once its request is marked finished in the store, which is after the
    // waiting `request` has it.
    until_value(
        &metrics,
        "tabgrab_replies_total",
        &[
            ("messaging_consumer_group_name", "till"),
            ("outcome", "handled"),
        ],
        3.0,
    )
    .await;
    let text = metrics.render();
    assert_eq!(
        value(&text, "tabgrab_requests_sent_total", &till),
        Some(3.0)
    );
    assert_eq!(
        value(
            &text,
            "tabgrab_replies_total",
            &[
                ("messaging_consumer_group_name", "till"),
                ("outcome", "handled")
            ]
        ),
        Some(3.0)
    );
    for outcome in ["late", "duplicate", "forged"] {
        assert_eq!(
            value(
                &text,
                "tabgrab_replies_total",
                &[
                    ("messaging_consumer_group_name", "till"),
                    ("outcome", outcome)
                ]
            ),
            Some(0.0),
            "{outcome}"
        );
    }
    assert_eq!(value(&text, "tabgrab_requests_in_flight", &till), Some(0.0));
    // The responder is a consumer group like any other: its handler's durations (recorded
    // after its handler returned, so perhaps after the requester had the reply).
    until_value(
        &metrics,
        "messaging_process_duration_seconds_count",
        &[("messaging_consumer_group_name", "billing")],
        3.0,
    )
    .await;
    requester.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
    bus.close().await.unwrap();
}

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.menu.price.v1", query, response = u64)]
struct Price {
    item: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_at_the_client_and_the_server() {
    use tabgrab::call::{CallContext, Client, HandlerError, Handlers, http::HttpTransport};
    let metrics = Prometheus::install().unwrap();
    let handlers = Handlers::new().handle(|p: Price, _ctx: CallContext| async move {
        match p.item.as_str() {
            "margherita" => Ok(900),
            _ => Err(HandlerError::from(tabgrab::Rejection::new(
                "menu.unknown",
                "not on the menu",
            ))),
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(tabgrab::call::serve(
        listener,
        tabgrab::call::router(handlers),
        async move {
            let _ = stopped.await;
        },
    ));
    let client = Client::builder(HttpTransport::new(format!("http://{addr}")))
        .service_name("menu")
        .build();
    for _ in 0..3 {
        let price = client
            .call(&Price {
                item: "margherita".into(),
            })
            .await
            .unwrap();
        assert_eq!(price, 900);
    }
    let refused = client
        .call(&Price {
            item: "sushi".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.kind(), tabgrab::ErrorKind::Remote);
    let text = metrics.render();
    let method = ("rpc_method", "test.menu.price.v1");
    assert_eq!(
        value(
            &text,
            "rpc_client_call_duration_seconds_count",
            &[("rpc_service", "menu"), method]
        ),
        Some(4.0)
    );
    assert_eq!(
        value(
            &text,
            "rpc_client_call_duration_seconds_count",
            &[("rpc_service", "menu"), method, ("error_type", "remote")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&text, "rpc_server_call_duration_seconds_count", &[method]),
        Some(4.0)
    );
    assert_eq!(
        value(
            &text,
            "rpc_server_call_duration_seconds_count",
            &[method, ("error_type", "remote")]
        ),
        Some(1.0)
    );
    // The client's breaker stayed closed (a rejection is an answer) and no retry was needed.
    let menu = [("rpc_service", "menu")];
    assert_eq!(value(&text, "tabgrab_breaker_state", &menu), Some(0.0));
    assert_eq!(
        value(&text, "tabgrab_retry_budget_exhausted_total", &menu),
        Some(0.0)
    );
    // A service that is down: the client's breaker opens, and says so.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let down = Client::builder(HttpTransport::new(dead_url))
        .service_name("down")
        .retry(tabgrab::call::retry::RetryConfig {
            max_attempts: 1,
            ..Default::default()
        })
        .breaker(tabgrab::breaker::BreakerConfig {
            consecutive_failures: Some(2),
            open_for: Duration::from_secs(60),
            ..Default::default()
        })
        .build();
    for _ in 0..3 {
        let _ = down.call(&Price { item: "x".into() }).await.unwrap_err();
    }
    let text = metrics.render();
    let down = [("rpc_service", "down")];
    assert_eq!(value(&text, "tabgrab_breaker_state", &down), Some(2.0));
    assert_eq!(
        value(
            &text,
            "tabgrab_breaker_transitions_total",
            &[("rpc_service", "down"), ("to", "open")]
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &text,
            "rpc_client_call_duration_seconds_count",
            &[("rpc_service", "down"), ("error_type", "circuit_open")]
        ),
        Some(1.0)
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_outbox_relay_and_the_inbox() {
    let metrics = Prometheus::install().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("app.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let outbox = tabgrab::Outbox::sqlite_table(pool.clone(), "metered_outbox")
        .await
        .unwrap();
    let events: Vec<tabgrab::Envelope> = (0..20)
        .map(|n| {
            tabgrab::Envelope::raw(
                "/test",
                "test.thing.happened.v1",
                format!("{{\"n\":{n}}}").into(),
            )
            .with_subject(format!("s-{}", n % 3))
        })
        .collect();
    let mut tx = pool.begin().await.unwrap();
    for event in &events {
        outbox.stage(&mut tx, "things", event).await.unwrap();
    }
    tx.commit().await.unwrap();
    let relay = outbox.relay(&bus).start();
    let table = [("tabgrab_outbox_table", "metered_outbox")];
    until_value(&metrics, "tabgrab_outbox_relayed_total", &table, 20.0).await;
    // Every relayed row's lag is measured; the relay's next empty round says the backlog is 0.
    let text = metrics.render();
    assert_eq!(
        value(&text, "tabgrab_outbox_relay_lag_seconds_count", &table),
        Some(20.0)
    );
    outbox.notify();
    until_value(&metrics, "tabgrab_outbox_backlog", &table, 0.0).await;
    relay.shutdown().await.unwrap();

    // The inbox: a second delivery of the same event is absorbed, and counted.
    let inbox = tabgrab::Inbox::sqlite(pool.clone(), "metered")
        .await
        .unwrap();
    for _ in 0..2 {
        let mut tx = pool.begin().await.unwrap();
        inbox.record(&mut tx, &events[0]).await.unwrap();
        tx.commit().await.unwrap();
    }
    let text = metrics.render();
    assert_eq!(
        value(
            &text,
            "tabgrab_inbox_duplicates_total",
            &[("messaging_consumer_group_name", "metered")]
        ),
        Some(1.0)
    );
    bus.close().await.unwrap();
}

/// With Prometheus and OTLP both installed, every measurement reaches both: a receiver
/// tabgrab did not write (`tabgrab_testkit::otlp`) gets the same counts, as cumulative
/// monotonic sums named by the conventions, and the same duration histograms, unit `s`, in
/// tabgrab's buckets. The export interval is long: what arrives is the final export that
/// `Otel::shutdown` makes, with the components' statistics read first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_carry_the_same_measurements_as_prometheus() {
    let Some(receiver) = tabgrab_testkit::otlp::Receiver::start() else {
        return;
    };
    let metrics = Prometheus::install().unwrap();
    let otel = tabgrab::telemetry::Otel::builder(receiver.endpoint())
        .service("metrics-test")
        .metrics(Some(Duration::from_secs(3600)))
        .install()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let subscription = Subscription::builder(&bus, "exported", "audit")
        .handle(|t: Ticket, _ctx| async move {
            if t.n == 7 {
                Err(HandlerError::permanent("seven is refused"))
            } else {
                Ok(())
            }
        })
        .start()
        .unwrap();
    let publisher = Publisher::new(&bus, "exported", "/test").unwrap();
    for n in 0..20 {
        publisher
            .publish(&Ticket { n }, format!("s-{n}"))
            .await
            .unwrap();
    }
    let group = [("messaging_consumer_group_name", "audit")];
    until_value(&metrics, "tabgrab_consumer_lag", &group, 0.0).await;
    let prometheus = metrics.render();
    tokio::task::spawn_blocking(move || otel.shutdown())
        .await
        .unwrap()
        .unwrap();
    subscription.shutdown().await.unwrap();
    bus.close().await.unwrap();

    let points = receiver.metrics();
    let point = |name: &str, attributes: &[(&str, &str)]| {
        points
            .iter()
            .rev()
            .find(|p| {
                p["name"] == name
                    && attributes
                        .iter()
                        .all(|(k, v)| p["attributes"][*k].as_str() == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {name} {attributes:?} among {points:?}"))
            .clone()
    };
    let number = |v: &serde_json::Value| {
        v.as_f64()
            .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
            .unwrap()
    };
    let sent = point(
        "messaging.client.sent.messages",
        &[("messaging.destination.name", "exported")],
    );
    assert_eq!(sent["type"], "sum");
    assert_eq!(sent["monotonic"], true);
    assert_eq!(sent["cumulative"], true);
    assert_eq!(sent["service"], "metrics-test");
    assert_eq!(number(&sent["value"]), 20.0);
    assert_eq!(
        value(
            &prometheus,
            "messaging_client_sent_messages_total",
            &[("messaging_destination_name", "exported")]
        ),
        Some(20.0)
    );
    // Counted by the subscription for its stats() and read at export: the same totals.
    for (outcome, n) in [("ack", 19.0), ("dead_letter", 1.0)] {
        let otlp = point(
            "tabgrab.messaging.processed.messages",
            &[
                ("messaging.consumer.group.name", "audit"),
                ("outcome", outcome),
            ],
        );
        assert_eq!(number(&otlp["value"]), n, "{outcome}");
        assert_eq!(
            value(
                &prometheus,
                "tabgrab_messaging_processed_messages_total",
                &[
                    ("messaging_consumer_group_name", "audit"),
                    ("outcome", outcome)
                ]
            ),
            Some(n),
            "{outcome}"
        );
    }
    let letters = point(
        "tabgrab.dead_letters",
        &[("messaging.consumer.group.name", "audit")],
    );
    assert_eq!(letters["attributes"]["reason"], "permanent_error");
    assert_eq!(number(&letters["value"]), 1.0);
    // The successes' series (the refusal's has an `error.type`).
    let durations = points
        .iter()
        .rev()
        .find(|p| {
            p["name"] == "messaging.process.duration"
                && p["attributes"]["messaging.consumer.group.name"] == "audit"
                && p["attributes"].get("error.type").is_none()
        })
        .unwrap_or_else(|| panic!("no process durations among {points:?}"));
    assert_eq!(durations["type"], "histogram");
    assert_eq!(durations["unit"], "s");
    assert_eq!(number(&durations["count"]), 19.0);
    assert_eq!(
        value(
            &prometheus,
            "messaging_process_duration_seconds_count",
            &[("messaging_consumer_group_name", "audit")]
        )
        .map(|n| n - 1.0), // the refusal, counted with its error type
        Some(19.0)
    );
    assert_eq!(durations["bounds"].as_array().unwrap().len(), 17);
}
