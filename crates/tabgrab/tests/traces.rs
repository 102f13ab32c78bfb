//! Traces of a consumer group, exported over OTLP/gRPC to a receiver tabgrab did not write
//! (`tabgrab_testkit::otlp`): each handling continues the trace of the publish that made the
//! event, and a retry and a dead letter are events on the handling's span, with the attempt
//! and the reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tabgrab::Message;
use tabgrab::backend::embedded::EmbeddedBus;
use tabgrab::event::{HandlerError, Publisher, Subscription};
use tabgrab::retry::Backoff;
use tabgrab::telemetry::Otel;
use tabgrab_testkit::otlp::Receiver;
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.ticket.placed.v1", event)]
struct Ticket {
    n: u32,
}

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
            // The application's own `tracing` span, inside the handler's.
            tracing::info_span!("bake").in_scope(|| ());
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
        assert!(
            spans
                .iter()
                .any(|s| s["name"] == "bake" && s["parent_span_id"] == process["span_id"]),
            "the handler's own span is a child of its process span: {spans:?}"
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
    // The dead letter's handling failed, with the reason as its error type; the retried one
    // succeeded in the end.
    let failed = handling(&refused);
    assert_eq!(failed["status"]["code"], "STATUS_CODE_ERROR", "{failed}");
    assert_eq!(failed["attributes"]["error.type"], "permanent_error");
    assert!(
        failed["status"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no such pizza")),
        "{failed}"
    );
    let succeeded = handling(&retried);
    assert_eq!(
        succeeded["status"]["code"], "STATUS_CODE_UNSET",
        "{succeeded}"
    );
    assert!(succeeded["attributes"].get("error.type").is_none());
}

#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.menu.price.v1", query, response = u64)]
struct Price {
    item: String,
}

/// A call that fails is an error on both sides, with the error's kind as `error.type`; one that
/// succeeds is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_call_is_an_error_on_the_client_and_the_server_span() {
    use tabgrab::call::{CallContext, Client, HandlerError, Handlers, http::HttpTransport};
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let otel = traced(&receiver.endpoint(), "calls-test");
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
    let item = |item: &str| Price { item: item.into() };
    assert_eq!(client.call(&item("margherita")).await.unwrap(), 900);
    let refused = client.call(&item("sushi")).await.unwrap_err();
    assert_eq!(refused.kind(), tabgrab::ErrorKind::Remote);
    let _ = stop.send(());
    server.await.unwrap().unwrap();

    let spans = exported(otel, &receiver).await;
    let of = |kind: &str| -> Vec<&Value> { spans.iter().filter(|s| s["kind"] == kind).collect() };
    let (clients, servers) = (of("SPAN_KIND_CLIENT"), of("SPAN_KIND_SERVER"));
    assert_eq!((clients.len(), servers.len()), (2, 2), "{spans:?}");
    for side in [clients, servers] {
        let (failed, ok): (Vec<&Value>, Vec<&Value>) = side
            .into_iter()
            .partition(|s| s["status"]["code"] == "STATUS_CODE_ERROR");
        assert_eq!((failed.len(), ok.len()), (1, 1), "{spans:?}");
        assert_eq!(failed[0]["attributes"]["error.type"], "remote");
        assert!(
            failed[0]["status"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("not on the menu")),
            "{}",
            failed[0]
        );
        assert_eq!(ok[0]["status"]["code"], "STATUS_CODE_UNSET");
        assert_ne!(
            failed[0]["trace_id"], ok[0]["trace_id"],
            "one trace per call"
        );
    }
}

/// Sampling is decided once, at a trace's root, and every later span follows the decision
/// its message carries: with no new trace kept, events published outside any span make no
/// span at all and carry an unsampled context, while an event that arrives with a sampled
/// context is handled, and its effect published and handled, in that trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_root_makes_no_spans_and_a_sampled_parent_is_followed() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let otel = Otel::builder(receiver.endpoint())
        .service("sampling-test")
        .sampling(0.0)
        .install()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let effects = Publisher::new(&bus, "effects", "/test").unwrap();
    let tickets = Subscription::builder(&bus, "tickets", "kitchen")
        .handle({
            let seen = std::sync::Arc::clone(&seen);
            move |t: Ticket, ctx| {
                let seen = std::sync::Arc::clone(&seen);
                let effects = effects.clone();
                async move {
                    let carried = ctx.envelope().traceparent.clone();
                    seen.lock().unwrap().push((t.n, carried));
                    if t.n == 100 {
                        effects
                            .publish_caused(&Ticket { n: 101 }, ctx.envelope())
                            .await
                            .map_err(|e| HandlerError::transient(e.to_string()))?;
                    }
                    Ok(())
                }
            }
        })
        .start()
        .unwrap();
    let effects_seen = Subscription::builder(&bus, "effects", "audit")
        .handle(|_: Ticket, _| async { Ok(()) })
        .start()
        .unwrap();
    let publisher = Publisher::new(&bus, "tickets", "/test").unwrap();
    for n in 0..20 {
        publisher.publish(&Ticket { n }, "s").await.unwrap();
    }
    let sampled_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut envelope = tabgrab::Envelope::new("/test", &Ticket { n: 100 }).unwrap();
    envelope.traceparent = Some(format!("00-{sampled_trace}-00f067aa0ba902b7-01"));
    publisher.publish_envelope(&envelope).await.unwrap();
    let start = Instant::now();
    while tickets.stats().acked < 21 || effects_seen.stats().acked < 1 {
        assert!(start.elapsed() < Duration::from_secs(20), "all handled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tickets.shutdown().await.unwrap();
    effects_seen.shutdown().await.unwrap();
    bus.close().await.unwrap();

    // Every unsampled event carried a context with the sampled flag off, each its own trace.
    let seen = seen.lock().unwrap().clone();
    let unsampled: Vec<&String> = seen
        .iter()
        .filter(|(n, _)| *n < 20)
        .map(|(_, tp)| tp.as_ref().expect("a traceparent on every event"))
        .collect();
    assert_eq!(unsampled.len(), 20);
    assert!(
        unsampled.iter().all(|tp| tp.ends_with("-00")),
        "{unsampled:?}"
    );
    let traces: std::collections::HashSet<&str> = unsampled.iter().map(|tp| &tp[3..35]).collect();
    assert_eq!(traces.len(), 20, "one trace per root publish");

    let spans = exported(otel, &receiver).await;
    assert!(
        spans.iter().all(|s| s["trace_id"] == sampled_trace),
        "only the sampled trace is exported: {spans:?}"
    );
    let process = |topic: &str| {
        spans
            .iter()
            .find(|s| s["name"] == format!("process {topic}"))
            .unwrap_or_else(|| panic!("no process span of {topic}: {spans:?}"))
    };
    let (ticket, effect) = (process("tickets"), process("effects"));
    assert_eq!(ticket["parent_span_id"], "00f067aa0ba902b7");
    let send = spans
        .iter()
        .find(|s| s["name"] == "send effects")
        .expect("the effect's publish span");
    assert_eq!(send["parent_span_id"], ticket["span_id"]);
    assert_eq!(effect["parent_span_id"], send["span_id"]);
    assert_eq!(spans.len(), 3, "{spans:?}");
}

/// An event that arrives unsampled stays unsampled however it is handled, even where new
/// traces are all kept: an application's own `tracing` span inside the handling is the
/// handling's child, so neither is exported, and an event published inside that span carries
/// the same trace, still unsampled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_applications_span_inside_an_unsampled_handling_is_not_sampled_either() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let otel = traced(&receiver.endpoint(), "unsampled-test");
    let dir = tempfile::tempdir().unwrap();
    let bus = EmbeddedBus::open(dir.path()).unwrap();
    let effects = Publisher::new(&bus, "effects", "/test").unwrap();
    let tickets = Subscription::builder(&bus, "tickets", "kitchen")
        .handle(move |_: Ticket, _| {
            let effects = effects.clone();
            async move {
                let bake = tracing::info_span!("bake");
                tracing::Instrument::instrument(
                    async { effects.publish(&Ticket { n: 2 }, "s").await },
                    bake,
                )
                .await
                .map_err(|e| HandlerError::transient(e.to_string()))?;
                Ok(())
            }
        })
        .start()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
    let audit = Subscription::builder(&bus, "effects", "audit")
        .handle({
            let seen = std::sync::Arc::clone(&seen);
            move |_: Ticket, ctx| {
                *seen.lock().unwrap() = ctx.envelope().traceparent.clone();
                async { Ok(()) }
            }
        })
        .start()
        .unwrap();
    let unsampled_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut envelope = tabgrab::Envelope::new("/test", &Ticket { n: 1 }).unwrap();
    envelope.traceparent = Some(format!("00-{unsampled_trace}-00f067aa0ba902b7-00"));
    Publisher::new(&bus, "tickets", "/test")
        .unwrap()
        .publish_envelope(&envelope)
        .await
        .unwrap();
    let start = Instant::now();
    while audit.stats().acked < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the effect handled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // A sampled publish outside any span, so that the export is known to work.
    Publisher::new(&bus, "other", "/test")
        .unwrap()
        .publish(&Ticket { n: 3 }, "s")
        .await
        .unwrap();
    tickets.shutdown().await.unwrap();
    audit.shutdown().await.unwrap();
    bus.close().await.unwrap();

    let carried = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the effect carries a context");
    assert_eq!(&carried[3..35], unsampled_trace, "{carried}");
    assert!(carried.ends_with("-00"), "{carried}");
    let spans = exported(otel, &receiver).await;
    let names: Vec<&Value> = spans.iter().map(|s| &s["name"]).collect();
    assert_eq!(names, ["send other"], "{spans:?}");
}

/// An event staged in an outbox keeps the trace of the span it was staged in: the relay's
/// publish (`send`, with the outbox table) and the consumer's handling are both children of
/// that span, however long the row waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_event_continues_the_trace_it_was_staged_in() {
    let Some(receiver) = Receiver::start() else {
        return;
    };
    let otel = traced(&receiver.endpoint(), "outbox-test");
    let dir = tempfile::tempdir().unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("app.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal);
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(2)
        .connect_with(options)
        .await
        .unwrap();
    let bus = EmbeddedBus::open(dir.path().join("bus")).unwrap();
    let outbox = tabgrab::Outbox::sqlite_table(pool.clone(), "traced_outbox")
        .await
        .unwrap();
    // Staged inside the application's span, in the transaction that made it.
    let staged = tracing::info_span!("checkout");
    let id = tracing::Instrument::instrument(
        async {
            let envelope = tabgrab::Envelope::new("/test", &Ticket { n: 1 }).unwrap();
            let mut tx = pool.begin().await.unwrap();
            outbox.stage(&mut tx, "tickets", &envelope).await.unwrap();
            tx.commit().await.unwrap();
            envelope.id
        },
        staged,
    )
    .await;
    let subscription = Subscription::builder(&bus, "tickets", "kitchen")
        .handle(|_: Ticket, _| async { Ok(()) })
        .start()
        .unwrap();
    let relay = outbox.relay(&bus).start();
    let start = Instant::now();
    while subscription.stats().acked < 1 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "relayed and handled"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    relay.shutdown().await.unwrap();
    subscription.shutdown().await.unwrap();
    bus.close().await.unwrap();

    let spans = exported(otel, &receiver).await;
    let checkout = spans.iter().find(|s| s["name"] == "checkout").unwrap();
    let find = |kind: &str| {
        spans
            .iter()
            .find(|s| s["kind"] == kind && s["attributes"]["messaging.message.id"] == id)
            .unwrap_or_else(|| panic!("no {kind} span of {id}: {spans:?}"))
    };
    let (send, process) = (find("SPAN_KIND_PRODUCER"), find("SPAN_KIND_CONSUMER"));
    assert_eq!(send["name"], "send tickets");
    assert_eq!(send["attributes"]["tabgrab.outbox.table"], "traced_outbox");
    for span in [send, process] {
        assert_eq!(span["trace_id"], checkout["trace_id"]);
        assert_eq!(span["parent_span_id"], checkout["span_id"]);
    }
}

const CRASH_DIR_ENV: &str = "TABGRAB_TRACE_CRASH_DIR";
const CRASH_OTLP_ENV: &str = "TABGRAB_TRACE_CRASH_OTLP";
const CRASH_REQUESTS: usize = 10;

#[derive(Serialize, Deserialize, Message)]
#[message(type = "test.payment.charge.v1", command, response = Charged)]
struct Charge {
    n: usize,
}
#[derive(Serialize, Deserialize)]
struct Charged {
    n: usize,
}

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
    let otel = Otel::builder(endpoint)
        .service(service)
        .sampling(1.0)
        .install()
        .unwrap();
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
        .on_reply(
            "payment",
            |_o: tabgrab::messaging::Outcome<Charge>, _ctx| async move {
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
        .on_reply(
            "payment",
            move |_o: tabgrab::messaging::Outcome<Charge>, _ctx| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                async { Ok(()) }
            },
        )
        .start()
        .unwrap();
    let responder = tabgrab::messaging::Responder::builder(&bus, "payment", "payment")
        .handle(|c: Charge, _ctx| async move { Ok::<_, tabgrab::HandlerError>(Charged { n: c.n }) })
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
