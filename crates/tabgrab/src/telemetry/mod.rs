//! Telemetry: metrics in Prometheus' format, and the health of a service.
//!
//! tabgrab records metrics through the [`metrics`] facade, named after the OpenTelemetry
//! semantic conventions ([`names`]: messages published, received and processed by outcome,
//! handler and publish durations, consumer lag, dead letters by reason, requests in flight
//! and timed out, replies late / duplicate / forged, breaker states, retries, outbox relay and
//! inbox duplicates, call durations). Nothing is kept until the application installs a
//! recorder; [`Prometheus::install`] is one (feature `prometheus`), and [`router`] serves it:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tabgrab::telemetry::{Health, Prometheus};
//!
//! let metrics = Prometheus::install()?; // first, before buses and subscriptions
//! let bus = tabgrab::backend::Bus::connect("nats://127.0.0.1:4222").await?;
//! let health = Health::new();
//! health.bus(&bus);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:9464").await?;
//! axum::serve(listener, tabgrab::telemetry::router(Some(metrics), health)).await?;
//! # Ok(()) }
//! ```
//!
//! Counters that components already keep for their `stats()` are read when metrics are
//! rendered (`collect`), so the hot path counts once; durations are recorded where they
//! happen. Every attribute is bounded (no message ids, no subjects).
//!
//! [`Otel`] (feature `otel`) exports traces and the same metrics over OTLP/gRPC; with
//! [`Prometheus`] installed as well, both exporters receive every measurement (tabgrab's one
//! `metrics` recorder hands each to every exporter installed).

mod health;
#[cfg(feature = "otel")]
mod otel;
#[cfg(feature = "prometheus")]
mod prometheus;
#[cfg_attr(not(any(feature = "prometheus", feature = "otel")), allow(dead_code))]
mod recorders;

pub use health::{CheckResult, Health, Readiness};
#[cfg(feature = "otel")]
pub use otel::{DEFAULT_RATIO, Otel, OtelBuilder};
#[cfg(feature = "prometheus")]
pub use prometheus::{Prometheus, router};
pub use tabgrab_core::telemetry as names;
pub use tabgrab_core::telemetry::collect;
pub(crate) use tabgrab_core::telemetry::{Labels, Samples, Source, register, retire};

/// Histogram buckets of every duration, in seconds, in every exporter: 100 µs (an embedded
/// publish, a call on loopback) to 30 s (a slow handler).
#[cfg_attr(not(any(feature = "prometheus", feature = "otel")), allow(dead_code))]
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0,
];
