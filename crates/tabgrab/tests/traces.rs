//! Traces of a consumer group, exported over OTLP/gRPC to a receiver tabgrab did not write
//! (`tabgrab_testkit::otlp`): each handling continues the trace of the publish that made the
//! event, and a retry and a dead letter are events on the handling's span, with the attempt
//! and the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{HandlerError, Publisher, Subscription};
use tabgrab::retry::Backoff;
use tabgrab::telemetry::Otel;
use tabgrab::{Event, Message};
use tabgrab_testkit::otlp::Receiver;
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Serialize, Deserialize)]
struct Ticket {
    n: u32,
}
impl Message for Ticket {
    const TYPE: &'static str = "test.ticket.placed.v1";
}
impl Event for Ticket {}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_and_a_dead_letter_are_events_on_the_handlings_span() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let otel = traced(&receiver.endpoint(), "traces-test");

    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let subscription = Subscription::builder(&bus, "tickets", "kitchen")
        .backoff(Backoff {
            base: Duration::from_millis(1),
            max: Duration::from_millis(2),
        })
        .handle(|t: Ticket, ctx| async move {
            match (t.n, ctx.attempt()) {
                (1, 1) => Err(HandlerError::transient("the oven is cold")),
                (2, _) => Err(HandlerError::permanent("no such pizza")),
                _ => Ok(()),
            }
        })
        .start()
        .unwrap();
    let publisher = Publisher::new(&bus, "tickets", "/test").unwrap();
    let root = tracing::info_span!("order");
    let (retried, refused) = tracing::Instrument::instrument(
        async {
            let a = publisher.publish(&Ticket { n: 1 }, "a").await.unwrap();
            let b = publisher.publish(&Ticket { n: 2 }, "b").await.unwrap();
            (a.id, b.id)
        },
        root,
    )
    .await;
    let start = Instant::now();
    while subscription.stats().acked + subscription.stats().dead_lettered < 2 {
        assert!(start.elapsed() < Duration::from_secs(20), "both handled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    subscription.shutdown().await.unwrap();
    bus.close().await.unwrap();
    let spans = exported(otel, &receiver).await;
    let root = spans.iter().find(|s| s["name"] == "order").unwrap();
    let handling = |id: &str| {
        spans
            .iter()
            .find(|s| {
                s["kind"] == "SPAN_KIND_CONSUMER" && s["attributes"]["messaging.message.id"] == id
            })
            .unwrap_or_else(|| panic!("no process span for {id}: {spans:?}"))
    };
    for id in [&retried, &refused] {
        let process = handling(id);
        assert_eq!(process["trace_id"], root["trace_id"]);
        let publish = spans
            .iter()
            .find(|s| s["span_id"] == process["parent_span_id"])
            .expect("the publish span");
        assert_eq!(publish["kind"], "SPAN_KIND_PRODUCER");
        assert_eq!(publish["parent_span_id"], root["span_id"]);
        assert_eq!(
            process["attributes"]["messaging.consumer.group.name"],
            "kitchen"
        );
    }
    let events = |id: &str| handling(id)["events"].as_array().unwrap().clone();
    let retry = events(&retried);
    assert_eq!(retry.len(), 1, "{retry:?}");
    assert_eq!(retry[0]["name"], "handler failed; retrying");
    // tracing's unsigned integers arrive as strings or integers depending on the layer.
    let number = |v: &Value| v.to_string().trim_matches('"').to_owned();
    assert_eq!(number(&retry[0]["attributes"]["attempt"]), "1");
    let dead = events(&refused);
    let letter = dead
        .iter()
        .find(|e| e["name"] == "event dead-lettered")
        .unwrap_or_else(|| panic!("no dead-letter event: {dead:?}"));
    assert_eq!(letter["attributes"]["reason"], "permanent_error");
    assert_eq!(number(&letter["attributes"]["attempt"]), "1");
}

const CRASH_DIR_ENV: &str = "TABGRAB_TRACE_CRASH_DIR";
const CRASH_OTLP_ENV: &str = "TABGRAB_TRACE_CRASH_OTLP";
const CRASH_REQUESTS: usize = 10;

#[derive(Serialize, Deserialize)]
struct Charge {
    n: usize,
}
#[derive(Serialize, Deserialize)]
struct Charged {
    n: usize,
}
impl Message for Charge {
    const TYPE: &'static str = "test.payment.charge.v1";
}
impl tabgrab::Command for Charge {
    type Response = Charged;
}
tabgrab::request!(command Charge);

/// Exports what `otel` still holds (off the runtime's threads, as `Otel::shutdown` asks) and
/// returns every span `receiver` got.
async fn exported(otel: Otel, receiver: &Receiver) -> Vec<Value> {
    tokio::task::spawn_blocking(move || otel.shutdown())
        .await
        .unwrap()
        .unwrap();
    receiver.spans()
}

/// Installs the exporter and a subscriber with its layer only.
fn traced(endpoint: &str, service: &str) -> Otel {
    let otel = Otel::install(endpoint, service).unwrap();
    let subscriber = tracing_subscriber::registry().with(tracing_subscriber::Layer::with_filter(
        otel.layer(),
        Otel::filter(&[env!("CARGO_CRATE_NAME")]),
    ));
    tracing::subscriber::set_global_default(subscriber).unwrap();
    otel
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of a_reply_handled_after_the_requester_died_continues_its_trace"]
async fn traced_requester_child() {
    let (Ok(dir), Ok(endpoint)) = (std::env::var(CRASH_DIR_ENV), std::env::var(CRASH_OTLP_ENV))
    else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let _otel = traced(&endpoint, "requester-that-dies");
    let bus = EmbeddedBus::open(dir.join("bus")).unwrap();
    let requester = tabgrab::messaging::Requester::builder(&bus, "front-desk")
        .store(
            tabgrab::messaging::SqliteStore::open(dir.join("correlation.db"))
                .await
                .unwrap(),
        )
        .on_reply::<Charge, _, _>(
            "payment",
            |_o: tabgrab::messaging::Outcome<Charged>, _ctx| async move {
                panic!("no reply can reach the child: the responder is down")
            },
        )
        .start()
        .unwrap();
    let mut sent = String::new();
    for n in 0..CRASH_REQUESTS {
        let span = tracing::info_span!("checkout", n);
        let traceparent = span
            .in_scope(tabgrab_core::telemetry::trace::current)
            .unwrap();
        let charge = Charge { n };
        let request = requester.send(
            &charge,
            tabgrab::messaging::SendOptions::default().timeout(Duration::from_secs(120)),
        );
        tracing::Instrument::instrument(request, span)
            .await
            .unwrap();
        sent.push_str(&traceparent);
        sent.push('\n');
    }
    std::fs::write(dir.join("sent.txt"), sent).unwrap();
    std::fs::write(dir.join("done"), b"done").unwrap();
    // Runs until killed: its own spans are never exported.
    tokio::time::sleep(Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_handled_after_the_requester_died_continues_its_trace() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "traced_requester_child",
            "--ignored",
            "--nocapture",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .env(CRASH_OTLP_ENV, receiver.endpoint())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("done").exists() {
        assert!(Instant::now() < deadline, "the child did not send in time");
        assert!(child.try_wait().unwrap().is_none(), "the child exited");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap(); // SIGKILL: nothing of its own reaches the receiver
    child.wait().unwrap();
    let traces: std::collections::BTreeSet<String> =
        std::fs::read_to_string(dir.path().join("sent.txt"))
            .unwrap()
            .lines()
            .map(|tp| tp.split('-').nth(1).unwrap().to_owned())
            .collect();
    assert_eq!(traces.len(), CRASH_REQUESTS, "one trace per request");

    // Another node of the group and the responder, in this process, exporting too.
    let otel = traced(&receiver.endpoint(), "requester-that-lives");
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let handled = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = std::sync::Arc::clone(&handled);
    let node = tabgrab::messaging::Requester::builder(&bus, "front-desk")
        .store(
            tabgrab::messaging::SqliteStore::open(dir.path().join("correlation.db"))
                .await
                .unwrap(),
        )
        .on_reply::<Charge, _, _>(
            "payment",
            move |_o: tabgrab::messaging::Outcome<Charged>, _ctx| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Ok(()) }
            },
        )
        .start()
        .unwrap();
    let responder = tabgrab::messaging::Responder::builder(&bus, "payment", "payment")
        .handle(|c: Charge, _ctx| async move { Ok::<_, tabgrab::Rejection>(Charged { n: c.n }) })
        .start()
        .unwrap();
    while node.stats().replied < CRASH_REQUESTS as u64 {
        assert!(Instant::now() < deadline, "not every reply was handled");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        handled.load(std::sync::atomic::Ordering::SeqCst),
        CRASH_REQUESTS
    );
    node.shutdown().await.unwrap();
    responder.shutdown().await.unwrap();
    bus.close().await.unwrap();
    let spans = exported(otel, &receiver).await;
    let of_group = |group: &str| -> Vec<&Value> {
        spans
            .iter()
            .filter(|s| s["attributes"]["messaging.consumer.group.name"] == group)
            .collect()
    };
    // The responder's handling of each request, and the surviving node's handling of each
    // reply, are in the trace the dead requester started.
    for group in ["payment", "front-desk"] {
        let handled: std::collections::BTreeSet<String> = of_group(group)
            .iter()
            .map(|s| s["trace_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            handled, traces,
            "{group}'s spans continue the requests' traces"
        );
    }
    for reply in of_group("front-desk") {
        let parent = spans
            .iter()
            .find(|s| s["span_id"] == reply["parent_span_id"])
            .expect("the reply's parent span was exported");
        assert_eq!(
            parent["attributes"]["messaging.consumer.group.name"], "payment",
            "a reply handling is the child of the responder's handling"
        );
    }
    assert!(
        spans.iter().all(|s| s["service"] != "requester-that-dies"),
        "the killed node exported nothing (the traces continue without it)"
    );
}
