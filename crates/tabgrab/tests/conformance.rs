//! The backend conformance suite: the same scenarios (ordering per subject, consumer groups,
//! redelivery, dead letters, bad input, de-duplication, replay, request-reply) against every
//! backend, one test per scenario and backend (`embedded::…`, `nats::…`, `amqp::…`), so a failure names
//! both. A difference between backends is a `Capabilities` flag that the scenario checks.
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
    let bus = Bus::connect("nats://127.0.0.1:4222").await.unwrap();
    Some(Fixture::new(bus, None))
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
#[cfg(feature = "amqp")]
conformance!(amqp, amqp_bus());
