//! A RabbitMQ that stops answering without closing the connection (a memory or disk alarm
//! blocks publishers; a network path drops everything until the heartbeat notices): a publish
//! fails with `Timeout` within its confirm timeout instead of waiting as long as the stall,
//! and once the path is back, publishing goes on.
//!
//! A relay of the test's own sits between the bus and the machine's RabbitMQ and, while
//! frozen, holds every byte in both directions.
#![cfg(feature = "amqp")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::backend::Bus;
use tabgrab::event::{Context, Publisher, Subscription};
use tabgrab::{ErrorKind, Message};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

const RABBITMQ: &str = "127.0.0.1:5672";

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "stall.parcel.sent.v1", event)]
struct Parcel {
    n: u32,
}

/// Copies `from` to `to`, holding what it read while `frozen`.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A relay to RabbitMQ on a free port, and the switch that freezes it.
async fn relay() -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let frozen = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&frozen);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(RABBITMQ).await else {
                return;
            };
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = server.into_split();
            tokio::spawn(pipe(client_read, server_write, Arc::clone(&frozen)));
            tokio::spawn(pipe(server_read, client_write, Arc::clone(&frozen)));
        }
    });
    (port, switch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_rabbitmq_does_not_confirm_times_out_and_publishing_goes_on_after() {
    if !tabgrab_testkit::services::require("RabbitMQ", RABBITMQ) {
        return;
    }
    let (port, frozen) = relay().await;
    let bus = Bus::connect(&format!(
        "amqp://guest:guest@127.0.0.1:{port}/%2f?confirm_timeout_ms=500"
    ))
    .await
    .unwrap();
    let topic = format!("stall-{}", uuid::Uuid::now_v7().simple());
    let seen: Arc<Mutex<Vec<u32>>> = Arc::default();
    let record = Arc::clone(&seen);
    let sub = Subscription::builder(&bus, &topic, "g")
        .handle(move |p: Parcel, _ctx: Context| {
            record.lock().unwrap().push(p.n);
            futures::future::ready(Ok(()))
        })
        .start()
        .unwrap();
    sub.ready().await.unwrap();
    let publisher = Publisher::new(&bus, &topic, "/test").unwrap();
    publisher.publish(&Parcel { n: 1 }, "p").await.unwrap();

    frozen.store(true, Ordering::SeqCst);
    let started = Instant::now();
    // Bounded here too: without the confirm timeout the publish would wait for ever.
    let stalled = tokio::time::timeout(
        Duration::from_secs(10),
        publisher.publish(&Parcel { n: 2 }, "p"),
    )
    .await
    .expect("the publish waited as long as the stall")
    .unwrap_err();
    let waited = started.elapsed();
    assert_eq!(stalled.kind(), ErrorKind::Timeout, "{stalled}");
    assert!(
        stalled.to_string().contains("did not confirm") && stalled.to_string().contains("500 ms"),
        "{stalled}"
    );
    assert!(
        waited >= Duration::from_millis(450) && waited < Duration::from_secs(5),
        "failed after {waited:?}"
    );

    // The path is back: what was held goes through, and so does the next publish.
    frozen.store(false, Ordering::SeqCst);
    publisher.publish(&Parcel { n: 3 }, "p").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.lock().unwrap().contains(&3) {
        assert!(
            Instant::now() < deadline,
            "the publish after the stall never arrived"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The timed-out publish "may or may not be stored": here the broker got it once the
    // relay let it through, and it arrived before the next one (one channel, in order).
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
    sub.shutdown().await.unwrap();
    bus.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn a_confirm_timeout_that_is_not_a_number_is_refused() {
    let e = Bus::connect("amqp://guest:guest@127.0.0.1:5672/%2f?confirm_timeout_ms=soon")
        .await
        .unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Malformed, "{e}");
    assert!(e.to_string().contains("confirm_timeout_ms"), "{e}");
    assert!(!e.to_string().contains("guest:guest"), "{e}");
}
