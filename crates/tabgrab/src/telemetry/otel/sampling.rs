//! Which traces are kept: head sampling, decided once at a trace's root.
//!
//! The sampler is parent-based (a span follows the decision its parent's context carries,
//! so a trace is kept or dropped whole, across processes) and decides roots by trace id
//! ratio. The ratio is, in this order: the one the application gives
//! ([`OtelBuilder::sampling`](super::OtelBuilder::sampling)), the standard
//! `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` variables, or [`DEFAULT_RATIO`].
//!
//! tabgrab's spans decide before they build anything ([`super::spans`]); to keep that
//! decision and the SDK's the same, a sampled root is built with the trace id it was decided
//! on ([`Ids`]).

use std::cell::Cell;

use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, Sampler};

use crate::{Error, ErrorKind};

/// The share of new traces kept when nothing else is configured: one in a hundred.
///
/// Tracing every message costs about half the throughput of an event pipeline on the embedded
/// bus (see BENCHMARKS.md, "Telemetry"); at one in a hundred the cost is within a tenth.
/// Dapr keeps one in ten thousand by default; OpenTelemetry's SDKs keep all. Set
/// `OTEL_TRACES_SAMPLER=parentbased_always_on` (or `sampling(1.0)`) to keep every trace.
pub const DEFAULT_RATIO: f64 = 0.01;

/// The sampler: `ratio` if given, else the environment's, else the default; and what it
/// keeps, in words (for a service to say at start).
pub(super) fn sampler(ratio: Option<f64>) -> Result<(Sampler, String), Error> {
    if let Some(ratio) = ratio {
        let kept = format!("keeping {} % of new traces", ratio * 100.0);
        return Ok((parent_based(ratio, "the sampling ratio")?, kept));
    }
    let name = std::env::var("OTEL_TRACES_SAMPLER").ok();
    let arg = std::env::var("OTEL_TRACES_SAMPLER_ARG").ok();
    let sampler = from_env(name.as_deref(), arg.as_deref())?;
    let kept = match name.as_deref().map(str::trim) {
        None | Some("") => format!(
            "keeping {} % of new traces (the default)",
            DEFAULT_RATIO * 100.0
        ),
        Some(name) => format!("sampled as OTEL_TRACES_SAMPLER={name} says"),
    };
    Ok((sampler, kept))
}

/// The sampler the standard variables name (`None`: the default).
fn from_env(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, Error> {
    let ratio = |arg: Option<&str>| -> Result<f64, Error> {
        let arg = arg.ok_or_else(|| {
            Error::new(
                ErrorKind::Malformed,
                "OTEL_TRACES_SAMPLER names a ratio sampler, but OTEL_TRACES_SAMPLER_ARG is not \
                 set; give the share of traces to keep, between 0 and 1",
            )
        })?;
        arg.trim()
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Malformed,
                    format!("OTEL_TRACES_SAMPLER_ARG={arg:?} is not a ratio between 0 and 1"),
                )
            })
    };
    Ok(match name.map(str::trim) {
        None | Some("") => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(DEFAULT_RATIO)))
        }
        Some("always_on") => Sampler::AlwaysOn,
        Some("always_off") => Sampler::AlwaysOff,
        Some("traceidratio") => Sampler::TraceIdRatioBased(ratio(arg)?),
        Some("parentbased_always_on") => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        Some("parentbased_always_off") => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        Some("parentbased_traceidratio") => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio(arg)?)))
        }
        Some(other) => {
            return Err(Error::new(
                ErrorKind::Malformed,
                format!(
                    "OTEL_TRACES_SAMPLER={other:?} is not a sampler tabgrab knows; use \
                     always_on, always_off, traceidratio, parentbased_always_on, \
                     parentbased_always_off or parentbased_traceidratio"
                ),
            ));
        }
    })
}

/// Parent-based, roots kept at `ratio`.
fn parent_based(ratio: f64, what: &str) -> Result<Sampler, Error> {
    if !(0.0..=1.0).contains(&ratio) {
        return Err(Error::new(
            ErrorKind::Malformed,
            format!("{what} {ratio} is not between 0 and 1"),
        ));
    }
    Ok(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
        ratio,
    ))))
}

thread_local! {
    /// The trace id the next root span built on this thread takes (see [`Ids`]).
    static NEXT_TRACE_ID: Cell<Option<TraceId>> = const { Cell::new(None) };
}

/// Random ids, except that a root span whose sampling tabgrab decided takes the trace id it
/// was decided on: the SDK draws a root's trace id inside `build`, where no caller can give
/// one, and a ratio sampler decides by that id.
#[derive(Debug, Default)]
pub(super) struct Ids(RandomIdGenerator);

impl Ids {
    /// A new trace id.
    pub(super) fn trace_id(&self) -> TraceId {
        self.0.new_trace_id()
    }

    /// A new span id.
    pub(super) fn span_id(&self) -> SpanId {
        self.0.new_span_id()
    }

    /// Runs `build` (which builds at most one root span, on this thread) with `trace_id` as
    /// the id it draws.
    pub(super) fn with_trace_id<R>(trace_id: TraceId, build: impl FnOnce() -> R) -> R {
        NEXT_TRACE_ID.with(|next| next.set(Some(trace_id)));
        let built = build();
        // Not drawn if the provider was shut down: not left for another span.
        NEXT_TRACE_ID.with(|next| next.set(None));
        built
    }
}

impl IdGenerator for Ids {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.0.new_span_id()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_names_the_sampler_and_bad_values_are_refused() {
        assert!(matches!(from_env(None, None), Ok(Sampler::ParentBased(_))));
        assert!(matches!(
            from_env(Some("always_on"), None),
            Ok(Sampler::AlwaysOn)
        ));
        assert!(matches!(
            from_env(Some("traceidratio"), Some("0.25")),
            Ok(Sampler::TraceIdRatioBased(r)) if r == 0.25
        ));
        for (name, arg) in [
            ("traceidratio", None),
            ("traceidratio", Some("2")),
            ("parentbased_traceidratio", Some("half")),
            ("sometimes", None),
        ] {
            let error = from_env(Some(name), arg).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::Malformed, "{name} {arg:?}");
        }
        assert!(parent_based(1.5, "the ratio").is_err());
    }

    #[test]
    fn a_root_built_inside_with_trace_id_takes_that_id_and_only_it() {
        let ids = Ids::default();
        let chosen = ids.trace_id();
        let drawn = Ids::with_trace_id(chosen, || ids.new_trace_id());
        assert_eq!(drawn, chosen);
        assert_ne!(ids.new_trace_id(), chosen, "the override is used once");
        // Unused (a shut-down provider draws none): not left for the next span.
        Ids::with_trace_id(chosen, || ());
        assert_ne!(ids.new_trace_id(), chosen);
    }
}
