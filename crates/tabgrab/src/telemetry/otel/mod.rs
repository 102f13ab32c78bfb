//! Traces to OpenTelemetry over OTLP/gRPC.
//!
//! [`Otel::install`] (or [`Otel::builder`], to choose the sampling) builds a tracer provider
//! that batches spans on tokio and exports them to an OTLP/gRPC endpoint (a collector,
//! Jaeger, Tempo), and installs it as the tracer of `tabgrab_core::telemetry::trace`: from
//! then on tabgrab's components make their spans (a publish's `send`, a consumer's or
//! responder's `process`, a call's client and server span), every envelope made inside a
//! span carries its `traceparent`, and every handler's span continues the trace of the
//! message it handles.
//!
//! Add [`Otel::layer`] to the application's `tracing` subscriber (filtered with
//! [`Otel::filter`]) so that its own `tracing` spans are exported too, in the same traces, and
//! call [`Otel::shutdown`] before the process ends (it exports what is still batched).
//!
//! Traces are sampled at their root ([`sampling`]): by default one in a hundred
//! ([`DEFAULT_RATIO`]), every span of a kept trace, in every process it reaches.
//!
//! The same endpoint receives tabgrab's metrics ([`names`](super::names)) every
//! `OTEL_METRIC_EXPORT_INTERVAL` milliseconds (default 60 s) and when the process shuts down,
//! unless [`OtelBuilder::metrics`] turns them off: the same measurements `/metrics` shows
//! when [`Prometheus`](super::Prometheus) is installed as well.

mod meters;
mod sampling;
mod spans;

use std::time::Duration;

use opentelemetry::metrics::MeterProvider as _;
use opentelemetry_sdk::metrics::SdkMeterProvider;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;

pub use sampling::DEFAULT_RATIO;

use crate::{Error, ErrorKind};

/// The process's OpenTelemetry tracer and meter providers, and its `tracing` layer.
#[derive(Debug)]
pub struct Otel {
    provider: SdkTracerProvider,
    tracer: opentelemetry_sdk::trace::SdkTracer,
    meters: Option<(SdkMeterProvider, tokio::task::JoinHandle<()>)>,
    /// What the sampler keeps, in words.
    sampling: String,
}

/// How [`Otel`] is set up: where to, as which service, how much to keep.
#[derive(Debug, Clone)]
pub struct OtelBuilder {
    endpoint: String,
    service: String,
    ratio: Option<f64>,
    metrics: Option<Duration>,
}

impl OtelBuilder {
    /// The service name the spans are exported under (`service.name`; default `tabgrab`).
    pub fn service(mut self, service: impl Into<String>) -> Self {
        self.service = service.into();
        self
    }

    /// Keeps this share of new traces (0 to 1; `1.0` keeps every trace), overriding
    /// `OTEL_TRACES_SAMPLER` and the default ([`DEFAULT_RATIO`]). Traces that arrive with a
    /// decision (a message or a call that carried a sampled or unsampled `traceparent`) keep
    /// it.
    pub fn sampling(mut self, ratio: f64) -> Self {
        self.ratio = Some(ratio);
        self
    }

    /// Exports metrics every `every` (`Some`), or not at all (`None`). By default every
    /// `OTEL_METRIC_EXPORT_INTERVAL` milliseconds, or 60 s.
    pub fn metrics(mut self, every: Option<Duration>) -> Self {
        self.metrics = every;
        self
    }

    /// Makes the exporter and installs the tracer. Must be called inside a tokio runtime
    /// (the batches are sent from a task); fails on an endpoint that cannot be used and on a
    /// sampling ratio, or `OTEL_TRACES_SAMPLER` setting, that is not valid.
    pub fn install(self) -> Result<Otel, Error> {
        let endpoint = self.endpoint.as_str();
        check_endpoint(endpoint)?;
        let (sampler, sampling) = sampling::sampler(self.ratio)?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .build()
            .map_err(|e| no_exporter("spans", endpoint, &e))?;
        let processor =
            BatchSpanProcessor::builder(exporter, opentelemetry_sdk::runtime::Tokio).build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(self.service)
            .build();
        let meters = match self.metrics {
            None => None,
            Some(every) => Some(install_metrics(endpoint, every, resource.clone())?),
        };
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .with_sampler(spans::Follow(sampler.clone()))
            .with_id_generator(sampling::Ids::default())
            .build();
        let tracer = provider.tracer("tabgrab");
        tabgrab_core::telemetry::trace::install(spans::Spans {
            tracer: tracer.clone(),
            sampler,
            ids: sampling::Ids::default(),
        });
        Ok(Otel {
            provider,
            tracer,
            meters,
            sampling,
        })
    }
}

/// Exports tabgrab's metrics to `endpoint` every `every`: an OpenTelemetry recorder in the
/// process's `metrics` recorder, and a task that reads the components' statistics just as
/// often.
fn install_metrics(
    endpoint: &str,
    every: Duration,
    resource: opentelemetry_sdk::Resource,
) -> Result<(SdkMeterProvider, tokio::task::JoinHandle<()>), Error> {
    let exporter = opentelemetry_otlp::MetricExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| no_exporter("metrics", endpoint, &e))?;
    let reader =
        opentelemetry_sdk::metrics::periodic_reader_with_async_runtime::PeriodicReader::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .with_interval(every)
        .build();
    let provider = SdkMeterProvider::builder()
        .with_reader(reader)
        .with_resource(resource)
        .build();
    let meter = provider.meter("tabgrab");
    super::recorders::install(super::recorders::Slot::Otlp, move || {
        Box::new(meters::OtlpRecorder::new(meter))
    })
    .map_err(|e| {
        Error::new(
            e.kind(),
            format!(
                "{}; or leave tabgrab's metrics out of OTLP with OtelBuilder::metrics(None)",
                e.message()
            ),
        )
    })?;
    let collecting = tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            super::collect();
        }
    });
    Ok((provider, collecting))
}

/// An exporter of `what` to `endpoint` that could not be made.
fn no_exporter(what: &str, endpoint: &str, e: &dyn std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::Unavailable,
        format!("cannot make an OTLP {what} exporter to {endpoint}: {e}"),
    )
}

/// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), or 60 s.
fn metric_interval() -> Duration {
    std::env::var("OTEL_METRIC_EXPORT_INTERVAL")
        .ok()
        .and_then(|ms| ms.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .map_or(Duration::from_secs(60), Duration::from_millis)
}

impl Otel {
    /// Exports spans to the OTLP/gRPC `endpoint` (e.g. `http://127.0.0.1:4317`) as
    /// `service`, sampled as the environment or the default says; see [`OtelBuilder`].
    pub fn install(endpoint: &str, service: &str) -> Result<Otel, Error> {
        Otel::builder(endpoint).service(service).install()
    }

    /// What the sampler keeps, in words (`keeping 1 % of new traces (the default)`), for a
    /// service to say at start.
    pub fn sampling(&self) -> &str {
        &self.sampling
    }

    /// Sets up the export to the OTLP/gRPC `endpoint` step by step.
    pub fn builder(endpoint: impl Into<String>) -> OtelBuilder {
        OtelBuilder {
            endpoint: endpoint.into(),
            service: "tabgrab".to_owned(),
            ratio: None,
            metrics: Some(metric_interval()),
        }
    }

    /// The `tracing` layer that turns the application's `tracing` spans into OpenTelemetry
    /// spans: add it to the application's subscriber
    /// (`tracing_subscriber::registry().with(otel.layer())`).
    pub fn layer<S>(&self) -> impl tracing_subscriber::Layer<S> + use<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        // Per span, only what the conventions ask for: no timings of every poll (two clock
        // reads per enter and exit of an instrumented future), no source location, thread
        // or level attributes. An entered span is OpenTelemetry's current context, which
        // tabgrab's spans and envelopes take as their parent.
        tracing_opentelemetry::layer()
            .with_tracer(self.tracer.clone())
            .with_tracked_inactivity(false)
            .with_location(false)
            .with_threads(false)
            .with_level(false)
            .with_target(false)
            .with_context_activation(true)
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

    /// Exports what is batched, and the metrics as they are now, and stops exporting. Call it from outside the runtime's
    /// threads while the runtime still runs (the export is a task on it); a queue that is
    /// still full (spans made faster than they are exported) is given up to 10 s to drain.
    pub fn shutdown(&self) -> Result<(), Error> {
        if let Some((meters, collecting)) = &self.meters {
            collecting.abort();
            super::collect();
            if let Err(e) = meters.shutdown() {
                tracing::warn!(error = %e, "exporting the last metrics over OTLP failed");
            }
        }
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

#[cfg(test)]
mod tests {
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
}
