//! Broker restart under load: a nats-server that this test started itself (on a free port,
//! file-backed stream, `sync_interval: always` when the binary has it) is killed with
//! SIGKILL and started again while writers publish. Every acknowledged event is read
//! afterwards (set checker of RELIABILITY.md), nothing unattempted appears, and a publish
//! retried with the same envelope id is not a second event.
#![cfg(feature = "nats")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tabgrab::Message;
use tabgrab::backend::Bus;
use tabgrab::event::Publisher;
use tabgrab_testkit::history::SetHistory;
use tabgrab_testkit::nats_server::{self, NatsOptions, NatsServer};

#[derive(Clone, Debug, Serialize, Deserialize, Message)]
#[message(type = "test.restart.write.v1", event)]
struct Write {
    value: String,
}

const WRITERS: usize = 4;
const PER_WRITER: usize = 250;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_event_survives_a_broker_restart_and_retries_are_not_duplicates() {
    let Some(binary) = nats_server::require() else {
        return;
    };
    let sync_always = NatsServer::supports_sync_always(&binary);
    if !sync_always {
        eprintln!(
            "note: {} has no sync_interval; testing a process kill only",
            binary.display()
        );
    }
    let mut server = NatsServer::start(NatsOptions {
        sync_always,
        ..NatsOptions::default()
    })
    .unwrap();
    let bus = Bus::connect(&server.url()).await.unwrap();
    println!("engine: {}", bus.report().await.unwrap());
    let topic = "restart";
    let publisher = Publisher::new(&bus, topic, "/test/restart").unwrap();
    let history = Arc::new(Mutex::new(SetHistory::new()));
    let acked = Arc::new(AtomicUsize::new(0));
    let retried = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let publisher = publisher.clone();
        let history = Arc::clone(&history);
        let acked = Arc::clone(&acked);
        let retried = Arc::clone(&retried);
        writers.push(tokio::spawn(async move {
            let mut envelopes = Vec::new();
            for n in 0..PER_WRITER {
                let value = format!("w{w}-{n:04}");
                let envelope = publisher
                    .envelope(
                        &Write {
                            value: value.clone(),
                        },
                        value.clone(),
                    )
                    .unwrap();
                history.lock().unwrap().attempt(value.clone());
                // Retry the same envelope until it is acknowledged: the id de-duplicates it.
                loop {
                    match publisher.publish_envelope(&envelope).await {
                        Ok(_) => break,
                        Err(_) => {
                            assert!(Instant::now() < deadline, "{value} never acknowledged");
                            retried.fetch_add(1, Ordering::Relaxed);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                history.lock().unwrap().ack(value);
                acked.fetch_add(1, Ordering::Relaxed);
                envelopes.push(envelope);
            }
            envelopes
        }));
    }
    // Restart once a third of the load is acknowledged, while writers keep publishing.
    while acked.load(Ordering::Relaxed) < WRITERS * PER_WRITER / 3 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let at = acked.load(Ordering::Relaxed);
    tokio::task::block_in_place(|| server.restart()).unwrap();
    println!("restarted nats-server (SIGKILL) after {at} acknowledged publishes");
    let mut envelopes = Vec::new();
    for w in writers {
        envelopes.extend(w.await.unwrap());
    }
    println!(
        "{} acknowledged, {} failed attempts retried with the same id",
        acked.load(Ordering::Relaxed),
        retried.load(Ordering::Relaxed)
    );
    // Retry 50 acknowledged publishes once more: all recognised, none a second event.
    for envelope in envelopes.iter().step_by(envelopes.len() / 50) {
        let receipt = publisher.publish_envelope(envelope).await.unwrap();
        assert!(receipt.duplicate, "a retried publish made a second event");
    }
    let backend = bus.backend();
    let read = backend
        .read_all(&tabgrab::Topic::new(topic).unwrap())
        .await
        .unwrap();
    let mut copies: HashMap<String, usize> = HashMap::new();
    for envelope in &read {
        *copies
            .entry(envelope.decode::<Write>().unwrap().value)
            .or_default() += 1;
    }
    let report = history.lock().unwrap().check(copies.keys().cloned());
    println!("set checker: {report}");
    assert!(report.is_valid(), "{report}");
    let doubles: Vec<_> = copies.iter().filter(|(_, n)| **n > 1).collect();
    assert!(doubles.is_empty(), "events stored twice: {doubles:?}");
    assert_eq!(read.len(), WRITERS * PER_WRITER);
    bus.delete_topic(topic).await.unwrap();
}
