//! The resilience policies of tabgrab, in one place for all three kinds of communication.
//!
//! - [`Backoff`]: the one retry-spacing formula (exponential bound, full jitter), used by the
//!   call client's retries, by consumers' handler retries and by dead-letter writes.
//! - [`RetryBudget`]: retries at most a share of recent requests.
//! - [`breaker`]: the circuit breaker's pure state machine ([`breaker::BreakerCore`], checked
//!   against a reference model in `tabgrab-call/tests/breaker_model.rs`) and the shared
//!   [`breaker::BreakerHandle`] that the call client's breaker layer and consumers use (a
//!   consumer's breaker pauses its group's intake; see `tabgrab::event::subscription`). One
//!   handle may be shared by a call client and a consumer that depend on the same service.
//!
//! Neither the bus (`tabgrab`) nor the calls (`tabgrab-call`) keeps a copy of its own; both
//! depend on this crate, and the bus does not depend on the calls crate.

pub mod backoff;
pub mod breaker;
pub mod budget;

pub use self::backoff::Backoff;
pub use self::budget::RetryBudget;
