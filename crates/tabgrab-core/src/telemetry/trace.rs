//! Trace context on every message: the W3C `traceparent` of the span that made an envelope
//! travels with it (the CloudEvents distributed-tracing extension), on every transport and
//! through every store that keeps envelopes (the log, outbox rows, the correlation store),
//! and whoever handles the message continues that trace.
//!
//! This crate knows no tracing backend: an application that exports traces installs a
//! [`Tracer`] (`tabgrab::telemetry::Otel` is one, for OpenTelemetry), and then
//! [`Envelope::raw`](crate::Envelope::raw), the one place every envelope is made, stamps the
//! current span's context ([`current`]), and the components that handle messages make their
//! spans children of it ([`continue_from`]). Without a tracer both do nothing.

use std::sync::OnceLock;

/// What a tracing backend provides.
pub trait Tracer: Send + Sync + 'static {
    /// The W3C `traceparent` of the current span, if it has a valid context.
    fn current(&self) -> Option<String>;
    /// Makes `span` a child of the remote context `traceparent` (ignored if malformed).
    fn set_parent(&self, span: &tracing::Span, traceparent: &str);
}

static TRACER: OnceLock<Box<dyn Tracer>> = OnceLock::new();

/// Installs the process's tracer; `false` if one was installed before (it stays).
pub fn install(tracer: impl Tracer) -> bool {
    TRACER.set(Box::new(tracer)).is_ok()
}

/// The current span's `traceparent`, when a tracer is installed and the span is traced.
pub fn current() -> Option<String> {
    TRACER.get().and_then(|t| t.current())
}

/// Makes `span` continue the trace of a message that carried `traceparent`.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let (Some(tracer), Some(traceparent)) = (TRACER.get(), traceparent) {
        tracer.set_parent(span, traceparent);
    }
}
