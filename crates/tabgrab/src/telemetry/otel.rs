//! Traces to OpenTelemetry over OTLP/gRPC.
//!
//! [`Otel::install`] builds a tracer provider that batches spans on tokio and exports them to
//! an OTLP/gRPC endpoint (a collector, Jaeger, Tempo), and installs the W3C trace-context
//! hooks of `tabgrab_core::telemetry::trace`: from then on every envelope made inside a
//! traced span carries its `traceparent`, and every handler's span (a consumer's `process`,
//! a responder's, a call server's) continues the trace of the message it handles. Add
//! [`Otel::layer`] to the application's `tracing` subscriber (filtered with [`Otel::filter`]),
//! and call [`Otel::shutdown`]
//! before the process ends (it exports what is still batched).

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::{Error, ErrorKind};

/// The process's OpenTelemetry tracer provider and its `tracing` layer.
#[derive(Debug)]
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
}

impl Otel {
    /// Exports spans to the OTLP/gRPC `endpoint` (e.g. `http://127.0.0.1:4317`) as
    /// `service`. Must be called inside a tokio runtime (the batches are sent from a task).
    pub fn install(endpoint: &str, service: &str) -> Result<Otel, Error> {
        check_endpoint(endpoint)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unavailable,
                    format!("cannot make an OTLP exporter to {endpoint}: {e}"),
                )
            })?;
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_owned())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("tabgrab");
        tabgrab_core::telemetry::trace::install(W3c);
        Ok(Otel { provider, tracer })
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans: add it to the
    /// application's subscriber (`tracing_subscriber::registry().with(otel.layer())`).
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        // Per span, only what the conventions ask for: no timings of every poll (two clock
        // reads per enter and exit of an instrumented future), no source location, thread
        // or level attributes, no OpenTelemetry context attached on every enter (tabgrab reads
        // a span's context from the span itself).
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_context_activation(false)
    }

    /// A filter for [`Otel::layer`]: tabgrab's spans and events at info and above, and
    /// those of the `also` targets (the application's crates) likewise; every other crate's
    /// at warn and above (a client library's connection loop is not part of a request's
    /// trace).
    pub fn filter(also: &[&str]) -> tracing_subscriber::filter::Targets {
        use tracing::Level;
        let mut targets = tracing_subscriber::filter::Targets::new()
            .with_default(Level::WARN)
            .with_target("tabgrab", Level::INFO)
            .with_target("tabgrab_call", Level::INFO);
        for target in also {
            targets = targets.with_target(*target, Level::INFO);
        }
        targets
    }

    /// Exports what is batched and stops exporting. Call it from outside the runtime's
    /// threads while the runtime still runs (the export is a task on it); a queue that is
    /// still full (spans made faster than they are exported) is given up to 10 s to drain.
    pub fn shutdown(&self) -> Result<(), Error> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        // The batch processor takes a flush only when its queue has room; shutting down
        // cannot be tried twice, so flush first until it is taken.
        while self.provider.force_flush().is_err() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.provider.shutdown().map_err(|e| {
            Error::new(
                ErrorKind::Unavailable,
                format!("exporting the last spans failed: {e}"),
            )
        })
    }
}

/// An endpoint the exporter can use: `http://host:port`, said plainly when it is not.
fn check_endpoint(endpoint: &str) -> Result<(), Error> {
    let authority = endpoint
        .strip_prefix("http://")
        .map(|rest| rest.strip_suffix('/').unwrap_or(rest))
        .unwrap_or_default();
    if !authority.is_empty()
        && !authority.contains(['/', '?', '#', '@'])
        && !authority.contains(char::is_whitespace)
    {
        return Ok(());
    }
    let why = if endpoint.starts_with("https://") {
        "TLS to the collector is not supported yet; reach it over http://"
    } else {
        "give it as http://host:port (OTLP over gRPC, usually port 4317)"
    };
    Err(Error::new(
        ErrorKind::Malformed,
        format!(
            "the OTLP endpoint {} cannot be used: {why}",
            tabgrab_core::SecretUrl::new(endpoint)
        ),
    ))
}

/// W3C trace context between `tracing` spans and envelopes' `traceparent`.
struct W3c;

impl tabgrab_core::telemetry::trace::Tracer for W3c {
    fn current(&self) -> Option<String> {
        let context = tracing::Span::current().context();
        let span = context.span();
        let sc = span.span_context();
        sc.is_valid().then(|| {
            format!(
                "00-{}-{}-{:02x}",
                sc.trace_id(),
                sc.span_id(),
                sc.trace_flags().to_u8()
            )
        })
    }

    fn set_parent(&self, span: &tracing::Span, traceparent: &str) {
        if let Some(parent) = parse(traceparent) {
            let context = opentelemetry::Context::new().with_remote_span_context(parent);
            let _ = span.set_parent(context);
        }
    }
}

/// A W3C `traceparent` (version 00): `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn endpoints_are_http_host_and_port() {
        for good in [
            "http://127.0.0.1:4317",
            "http://collector:4317/",
            "http://[::1]:4317",
        ] {
            assert!(super::check_endpoint(good).is_ok(), "{good}");
        }
        for bad in [
            "notaurl",
            "127.0.0.1:4317",
            "https://collector:4317",
            "http://",
            "http://collector:4317/v1/traces",
            "http://user:secret@collector:4317",
        ] {
            let error = super::check_endpoint(bad).unwrap_err();
            assert_eq!(error.kind(), crate::ErrorKind::Malformed, "{bad}");
            assert!(!error.to_string().contains("secret"), "{error}");
        }
    }

    #[test]
    fn traceparents_are_read_and_bad_ones_refused() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = parse(good).expect("a valid traceparent");
        assert_eq!(
            context.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(context.span_id().to_string(), "b7ad6b7169203331");
        assert!(context.is_sampled());
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
