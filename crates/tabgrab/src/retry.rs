//! Retry spacing: the one backoff formula of tabgrab (exponential bound, full jitter), shared
//! with the call client through `tabgrab-resilience`. See [`Backoff`].

pub use tabgrab_resilience::Backoff;
