//! Test support shared by tabgrab's crates: real-service gating and history checkers.
//!
//! - [`services`]: tests that need a broker or database call [`services::require`]; it skips
//!   with a printed reason when the server is absent, and fails instead when
//!   `TABGRAB_REQUIRE_SERVICES=1` (as `.ci/run` sets), so CI cannot pass by skipping.
//! - [`history`]: the set checker of RELIABILITY.md over recorded operations.
//! - [`effects`]: the effects checker: exactly one effect per (consumer group, message id).
//! - [`lifecycle`]: the per-entity state-machine checker (allowed transitions, terminal states).
//! - [`nats_server`]: a nats-server of a test's own, [`nats_jwt`] its operator-mode users; [`otlp`]: an OTLP trace and metrics receiver.

pub mod effects;
pub mod history;
pub mod lifecycle;
pub mod nats_jwt;
pub mod nats_server;
pub mod otlp;
pub mod python;
pub mod services;
pub mod tls;
