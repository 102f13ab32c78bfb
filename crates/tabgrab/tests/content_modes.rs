//! The two CloudEvents content modes on the brokers (`?wire=structured|binary`): whatever a
//! bus sends, a bus in the other mode reads it as the same envelope, on NATS and on
//! RabbitMQ; what each mode puts on the wire; and the outbox relay on NATS publishes the
//! bytes it stored, as they are, in structured mode (an event is encoded once).
#![cfg(all(feature = "nats", feature = "amqp"))]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod staged;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tabgrab::backend::Bus;
use tabgrab::event::{Context, Publisher, Subscription};
use tabgrab::{Envelope, Message, Outbox};

use staged::{indent_the_staged_row, wait_drained};

const NATS: &str = "nats://127.0.0.1:4222";
const AMQP: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const WAIT: Duration = Duration::from_secs(20);

#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Message)]
#[message(type = "test.order.noted.v1", event)]
struct Noted {
    order: String,
    n: u64,
}

fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::now_v7().simple())
}

async fn eventually<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(t) = probe() {
            return t;
        }
        assert!(started.elapsed() < WAIT, "{what}: not within {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Publishes from a bus at `from` and reads with a subscription on a bus at `to`: the
/// envelopes the handler sees carry what was sent (id, type, subject, data, extensions).
async fn read_across(from: &str, to: &str) {
    let (sender, receiver) = (
        Bus::connect(from).await.unwrap(),
        Bus::connect(to).await.unwrap(),
    );
    let topic = unique("modes");
    let seen: Arc<Mutex<Vec<(Envelope, Noted)>>> = Arc::default();
    let sub = {
        let seen = Arc::clone(&seen);
        Subscription::builder(&receiver, &topic, "reader")
            .handle(move |noted: Noted, ctx: Context| {
                let seen = Arc::clone(&seen);
                async move {
                    seen.lock().unwrap().push((ctx.envelope().clone(), noted));
                    Ok(())
                }
            })
            .start()
            .unwrap()
    };
    sub.ready().await.unwrap();
    let publisher = Publisher::new(&sender, &topic, "/content-modes").unwrap();
    let mut sent = Vec::new();
    for n in 0..3u64 {
        let noted = Noted {
            order: format!("o-{n}"),
            n,
        };
        let mut envelope = Envelope::new("/content-modes", &noted)
            .unwrap()
            .with_subject(format!("o-{n}"))
            .with_correlation_id(format!("c-{n}"));
        // An attribute that needs percent-encoding in binary mode, and an extension.
        envelope.source = "/content modes/ü".into();
        envelope.extensions.insert("tenant".into(), "a b".into());
        publisher.publish_envelope(&envelope).await.unwrap();
        sent.push((envelope, noted));
    }
    let got = eventually("the three events", || {
        let seen = seen.lock().unwrap();
        (seen.len() == 3).then(|| seen.clone())
    })
    .await;
    for (envelope, noted) in &sent {
        let (received, data) = got
            .iter()
            .find(|(e, _)| e.id == envelope.id)
            .unwrap_or_else(|| panic!("{} not received: {got:?}", envelope.id));
        assert_eq!(data, noted);
        assert_eq!(received.ty, envelope.ty);
        assert_eq!(received.source, envelope.source);
        assert_eq!(received.subject, envelope.subject);
        assert_eq!(received.correlationid, envelope.correlationid);
        assert_eq!(received.time, envelope.time);
        assert_eq!(received.extensions, envelope.extensions);
    }
    sub.shutdown().await.unwrap();
    sender.delete_topic(&topic).await.unwrap();
}

fn nats_up() -> bool {
    tabgrab_testkit::services::require("NATS (JetStream)", "127.0.0.1:4222")
}

fn amqp_up() -> bool {
    tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_reads_binary_events_on_a_structured_bus_and_back() {
    if !nats_up() {
        return;
    }
    read_across(&format!("{NATS}?wire=binary"), NATS).await;
    read_across(NATS, &format!("{NATS}?wire=binary")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_reads_binary_events_on_a_structured_bus_and_back() {
    if !amqp_up() {
        return;
    }
    read_across(&format!("{AMQP}?wire=binary"), AMQP).await;
    read_across(AMQP, &format!("{AMQP}?wire=binary")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_wire_setting_is_refused_with_the_names_it_takes() {
    // Refused while reading the URL, before any connection: no server needed.
    for url in [
        "nats://127.0.0.1:1?wire=protobuf",
        "amqp://guest:secret@127.0.0.1:1/%2f?wire=protobuf",
    ] {
        let err = Bus::connect(url).await.unwrap_err();
        assert_eq!(err.kind(), tabgrab::ErrorKind::Malformed, "{err}");
        let text = err.to_string();
        assert!(text.contains("structured or binary"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }
}

/// What each mode puts on a NATS message: structured, the codec's JSON with one
/// `content-type` header (and `Nats-Msg-Id`); binary, `ce-*` headers and the data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_messages_carry_the_mode_of_their_bus() {
    if !nats_up() {
        return;
    }
    let client = async_nats::connect(NATS).await.unwrap();
    let js = async_nats::jetstream::new(client);
    for (mode, structured) in [("structured", true), ("binary", false)] {
        let bus = Bus::connect(&format!("{NATS}?wire={mode}")).await.unwrap();
        let topic = unique("wire");
        let noted = Noted {
            order: "o-1".into(),
            n: 1,
        };
        let envelope = Envelope::new("/content-modes", &noted)
            .unwrap()
            .with_subject("o-1");
        let published = Publisher::new(&bus, &topic, "/content-modes")
            .unwrap()
            .publish_envelope(&envelope)
            .await
            .unwrap();
        let stream = js
            .get_stream(tabgrab::backend::nats::stream_name(&topic))
            .await
            .unwrap();
        let message = stream.get_raw_message(published.offset).await.unwrap();
        let headers = &message.headers;
        assert_eq!(
            headers.get("Nats-Msg-Id").map(|v| v.as_str()),
            Some(envelope.id.as_str())
        );
        if structured {
            assert_eq!(
                headers.get("content-type").map(|v| v.as_str()),
                Some("application/cloudevents+json")
            );
            assert_eq!(headers.len(), 2, "{headers:?}");
            let decoded = tabgrab::Codec::default().decode(&message.payload).unwrap();
            assert_eq!(decoded.id, envelope.id);
        } else {
            assert_eq!(
                headers.get("ce-type").map(|v| v.as_str()),
                Some(Noted::TYPE)
            );
            assert_eq!(message.payload, envelope.data);
        }
        bus.delete_topic(&topic).await.unwrap();
    }
}

/// The relay publishes an outbox row's bytes as they are on a structured NATS bus: the row
/// is rewritten with indentation (which the codec never writes), and the stream holds the
/// indented bytes, so they were not encoded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_the_stored_bytes_on_nats() {
    if !nats_up() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("app.db"))
        .create_if_missing(true);
    let pool = sqlx::SqlitePool::connect_with(options).await.unwrap();
    let bus = Bus::connect(NATS).await.unwrap();
    let topic = unique("relayed");
    let outbox = Outbox::sqlite(pool.clone()).await.unwrap();
    let staged = Envelope::raw(
        "/test",
        "test.thing.happened.v1",
        Bytes::from_static(b"{\"n\":7}"),
    )
    .with_subject("o-7");
    let mut tx = pool.begin().await.unwrap();
    outbox
        .stage(&mut tx, topic.as_str(), &staged)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let indented = indent_the_staged_row(&pool, &outbox).await;

    let relay = outbox.relay(&bus).start();
    wait_drained(&outbox, WAIT).await;
    relay.shutdown().await.unwrap();
    let client = async_nats::connect(NATS).await.unwrap();
    let stream = async_nats::jetstream::new(client)
        .get_stream(tabgrab::backend::nats::stream_name(&topic))
        .await
        .unwrap();
    let message = stream.get_raw_message(1).await.unwrap();
    assert_eq!(
        message.payload.as_ref(),
        indented.as_slice(),
        "the relay encoded the event again"
    );
    let published = tabgrab::Codec::default().decode(&message.payload).unwrap();
    assert_eq!(published.id, staged.id);
    assert_eq!(published.subject, staged.subject);
    bus.delete_topic(&topic).await.unwrap();
}
