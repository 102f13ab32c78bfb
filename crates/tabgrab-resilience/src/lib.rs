//! The resilience policies of tabgrab, in one place for all three kinds of communication.
//!
//! - [`Backoff`]: the one retry-spacing formula (exponential bound, full jitter), used by the
//!   call client's retries, by consumers' handler retries and by dead-letter writes.
//! - [`RetryBudget`]: retries at most a share of recent requests.
//! - [`retry`]: the retry rule ([`retry::next_attempt`]: retryable, under the cap, before the
//!   deadline, within the budget) and its settings ([`RetryConfig`]).
//! - [`Bulkhead`]: a cap on requests in flight that sheds the excess at once.
//! - [`breaker`]: the circuit breaker's pure state machine ([`breaker::BreakerCore`], checked
//!   against a reference model in `tabgrab-call/tests/breaker_model.rs`) and the shared
//!   [`breaker::BreakerHandle`] that the call client (its breaker gate) and consumers use (a
//!   consumer's breaker pauses its group's intake; see `tabgrab::event::subscription`). One
//!   handle may be shared by a call client and a consumer that depend on the same service.
//!
//! Neither the bus (`tabgrab`) nor the calls (`tabgrab-call`) keeps a copy of its own; both
//! depend on this crate, and the bus does not depend on the calls crate.
//!
//! # Functions, not a second stack
//! The policies are plain values and functions; each user runs them in one `async fn` of its
//! own (the call client's `Fused::run`: bulkhead, deadline, retry loop, breaker gate; a
//! consumer's lane: breaker admission, backoff, attempts). They are not tower layers: composed
//! as layers, a call cost a clone of the boxed stack, a clone of the inner stack for tower's
//! `Retry` future and one boxed future per layer, and the client ran a fused copy of the same
//! rules to avoid it, so there were two stacks to keep equal (BENCHMARKS.md, "the fused client
//! stack": about one boxed future per call instead of six). `tabgrab-call/tests/
//! policies_model.rs` composes these functions by hand and checks that the client behaves
//! exactly as the composition does.

pub mod backoff;
pub mod breaker;
pub mod budget;
pub mod bulkhead;
pub mod retry;

pub use self::backoff::Backoff;
pub use self::budget::RetryBudget;
pub use self::bulkhead::Bulkhead;
pub use self::retry::{NoRetry, RetryConfig};
