//! tabgrab's spans as OpenTelemetry spans, made with the SDK's tracer directly.
//!
//! A span starts by deciding sampling, with nothing built but the trace id: a parent-based
//! sampler follows the parent's flag, a root asks the sampler. Only a sampled span gets its
//! name and attributes and goes to the exporter. An unsampled one is
//! [`Started::Unsampled`], a bare W3C context that tabgrab-core keeps current while its work
//! runs (no OpenTelemetry context, no allocation), so the envelopes made inside carry the
//! decision and the next process follows it instead of deciding again.
//!
//! A sampled span's context is OpenTelemetry's (`Context::current`), which
//! [`Otel::layer`](super::Otel::layer) also sets while an application's `tracing` span is
//! entered: a publish inside a `tracing` span is its child, and a `tracing` span inside a
//! handler is the handler span's child. Inside an unsampled tabgrab span, an application's
//! `tracing` span is not sampled either ([`Follow`]).

use std::borrow::Cow;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, SdkTracer, ShouldSample,
};
use tabgrab_core::telemetry::trace::{
    self, Active, Attribute, Kind, Parent, Start, Started, TraceContext, Tracer, Value,
};

use super::sampling::Ids;

/// The tracer tabgrab's components start their spans with.
pub(super) struct Spans {
    pub(super) tracer: SdkTracer,
    pub(super) sampler: Sampler,
    pub(super) ids: Ids,
}

/// Where a span's parent is.
enum Origin {
    /// None: the span is a trace's root.
    Root,
    /// A context carried by a message, or the unsampled tabgrab span the code runs in.
    Context(TraceContext),
    /// OpenTelemetry's current context (a sampled tabgrab span, or an application's span).
    Otel(Context),
}

impl Tracer for Spans {
    fn current(&self) -> Option<String> {
        Context::map_current(|cx| to_core(cx.span().span_context()).map(|c| c.traceparent()))
    }

    fn start(&self, start: Start<'_>) -> Started {
        let from = match start.parent {
            Parent::Current => match trace::unsampled() {
                Some(context) => Origin::Context(context),
                // OpenTelemetry's context is cloned only when the span will be its child.
                None => match Context::map_current(|cx| to_core(cx.span().span_context())) {
                    None => Origin::Root,
                    Some(context) if !context.is_sampled() => Origin::Context(context),
                    Some(_) => Origin::Otel(Context::current()),
                },
            },
            Parent::Carried(carried) => carried
                .and_then(TraceContext::parse)
                .map_or(Origin::Root, Origin::Context),
        };
        let parent = match &from {
            Origin::Root => None,
            Origin::Context(context) => Some(*context),
            Origin::Otel(cx) => to_core(cx.span().span_context()),
        };
        let kind = span_kind(start.kind);
        let trace_id = parent.map_or_else(|| self.ids.trace_id(), |p| TraceId::from(p.trace_id));
        // A parent-based sampler follows the parent's flag (tabgrab's samplers keep the
        // defaults for remote and local parents); the others decide by the trace id alone.
        let sampled = match (&self.sampler, parent) {
            (Sampler::ParentBased(_), Some(parent)) => parent.is_sampled(),
            _ => {
                self.sampler
                    .should_sample(None, trace_id, start.name.0, &kind, &[], &[])
                    .decision
                    == SamplingDecision::RecordAndSample
            }
        };
        if !sampled {
            return Started::Unsampled(TraceContext {
                trace_id: u128::from_be_bytes(trace_id.to_bytes()),
                span_id: parent.map_or_else(
                    || u64::from_be_bytes(self.ids.span_id().to_bytes()),
                    |p| p.span_id,
                ),
                flags: parent.map_or(0, |p| p.flags & !1),
            });
        }
        let parent = match from {
            Origin::Root => Context::new(),
            Origin::Context(context) => Context::new().with_remote_span_context(to_otel(context)),
            Origin::Otel(cx) => cx,
        };
        let name: Cow<'static, str> = match start.name {
            (a, "") => Cow::Owned(a.to_owned()),
            ("", b) => Cow::Owned(b.to_owned()),
            (a, b) => Cow::Owned(format!("{a} {b}")),
        };
        let builder = self
            .tracer
            .span_builder(name)
            .with_kind(kind)
            .with_attributes(start.attributes.iter().filter_map(key_value));
        let span = if parent.span().span_context().is_valid() {
            builder.start_with_context(&self.tracer, &parent)
        } else {
            Ids::with_trace_id(trace_id, || {
                builder.start_with_context(&self.tracer, &parent)
            })
        };
        let recording = opentelemetry::trace::Span::is_recording(&span);
        Started::Sampled(Box::new(Otel {
            cx: parent.with_span(span),
            recording,
        }))
    }

    fn fail(&self, error_type: &str, message: &str) {
        Context::map_current(|cx| {
            let span = cx.span();
            if span.is_recording() {
                span.set_attribute(KeyValue::new("error.type", error_type.to_owned()));
                span.set_status(opentelemetry::trace::Status::error(message.to_owned()));
            }
        });
    }

    fn event(&self, name: &'static str, attributes: &[Attribute<'_>]) {
        Context::map_current(|cx| {
            let span = cx.span();
            if span.is_recording() {
                span.add_event(name, attributes.iter().filter_map(key_value).collect());
            }
        });
    }
}

/// The SDK's sampler, for the spans the SDK builds itself (an application's `tracing` spans):
/// a span with no parent of its own made inside an unsampled tabgrab span is that span's
/// child, and so not sampled either.
#[derive(Debug, Clone)]
pub(super) struct Follow(pub(super) Sampler);

impl ShouldSample for Follow {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[opentelemetry::trace::Link],
    ) -> SamplingResult {
        let has_parent = parent_context.is_some_and(|cx| cx.span().span_context().is_valid());
        if !has_parent && trace::unsampled().is_some() {
            return SamplingResult {
                decision: SamplingDecision::Drop,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.0
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// An OpenTelemetry span context as a W3C trace context, if it is valid.
fn to_core(sc: &SpanContext) -> Option<TraceContext> {
    sc.is_valid().then(|| TraceContext {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
        flags: sc.trace_flags().to_u8(),
    })
}

/// A carried W3C trace context as a remote OpenTelemetry span context.
fn to_otel(context: TraceContext) -> SpanContext {
    SpanContext::new(
        TraceId::from(context.trace_id),
        SpanId::from(context.span_id),
        TraceFlags::new(context.flags),
        true,
        TraceState::default(),
    )
}

/// A started span: its context, whose span ends when this is dropped.
struct Otel {
    cx: Context,
    recording: bool,
}

impl Active for Otel {
    fn is_recording(&self) -> bool {
        self.recording
    }

    fn set(&self, key: &'static str, value: Value<'_>) {
        if self.recording
            && let Some(kv) = key_value(&(key, value))
        {
            self.cx.span().set_attribute(kv);
        }
    }

    fn scope(&self, f: &mut dyn FnMut()) {
        let _current = self.cx.clone().attach();
        f();
    }
}

impl Drop for Otel {
    fn drop(&mut self) {
        if self.recording {
            self.cx.span().end();
        }
    }
}

fn span_kind(kind: Kind) -> SpanKind {
    match kind {
        Kind::Producer => SpanKind::Producer,
        Kind::Consumer => SpanKind::Consumer,
        Kind::Client => SpanKind::Client,
        Kind::Server => SpanKind::Server,
    }
}

fn key_value((key, value): &Attribute<'_>) -> Option<KeyValue> {
    match *value {
        Value::Str(s) => Some(KeyValue::new(*key, s.to_owned())),
        Value::Int(i) => Some(KeyValue::new(*key, i)),
        Value::None => None,
    }
}
