//! tabgrab's spans as OpenTelemetry spans, made with the SDK's tracer directly.
//!
//! A span starts by asking the sampler, with nothing built but the trace id; only a sampled
//! span gets its name and attributes and goes to the exporter. An unsampled one is a
//! bare context (trace id, a new span id, flags without the sampled bit): it still becomes the
//! current context while its work runs, so the envelopes made inside carry the decision and
//! the next process follows it instead of deciding again.
//!
//! The current context is OpenTelemetry's (`Context::current`), which [`Otel::layer`]
//! (super::Otel::layer) also sets while an application's `tracing` span is entered: a
//! publish inside a `tracing` span is its child, and a `tracing` span inside a handler is the
//! handler span's child.

use std::borrow::Cow;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState,
    Tracer as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracer, ShouldSample as _};
use tabgrab_core::telemetry::trace::{Active, Attribute, Kind, Parent, Start, Tracer, Value};

use super::sampling::Ids;

/// The tracer tabgrab's components start their spans with.
pub(super) struct Spans {
    pub(super) tracer: SdkTracer,
    pub(super) sampler: Sampler,
    pub(super) ids: Ids,
}

impl Tracer for Spans {
    fn current(&self) -> Option<String> {
        Context::map_current(|cx| traceparent(cx.span().span_context()))
    }

    fn start(&self, start: Start<'_>) -> Box<dyn Active> {
        let parent = match start.parent {
            Parent::Current => Context::current(),
            Parent::Carried(carried) => carried.and_then(parse).map_or_else(Context::new, |sc| {
                Context::new().with_remote_span_context(sc)
            }),
        };
        let parent_sc = parent.span().span_context().clone();
        let root = !parent_sc.is_valid();
        let trace_id = if root {
            self.ids.trace_id()
        } else {
            parent_sc.trace_id()
        };
        let kind = span_kind(start.kind);
        let decision =
            self.sampler
                .should_sample(Some(&parent), trace_id, start.name.0, &kind, &[], &[]);
        if decision.decision != opentelemetry_sdk::trace::SamplingDecision::RecordAndSample {
            let sc = SpanContext::new(
                trace_id,
                self.ids.span_id(),
                TraceFlags::default(),
                false,
                decision.trace_state,
            );
            return Box::new(Otel {
                cx: parent.with_remote_span_context(sc),
                recording: false,
            });
        }
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
        let span = if root {
            Ids::with_trace_id(trace_id, || {
                builder.start_with_context(&self.tracer, &parent)
            })
        } else {
            builder.start_with_context(&self.tracer, &parent)
        };
        let recording = opentelemetry::trace::Span::is_recording(&span);
        Box::new(Otel {
            cx: parent.with_span(span),
            recording,
        })
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

/// The W3C `traceparent` of a valid span context (written by hand: it is made for every
/// envelope, and `format!` with the ids' `Display` cost several times as much).
fn traceparent(sc: &SpanContext) -> Option<String> {
    if !sc.is_valid() {
        return None;
    }
    let mut out = String::with_capacity(55);
    out.push_str("00-");
    push_hex(&mut out, &sc.trace_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &sc.span_id().to_bytes());
    out.push('-');
    push_hex(&mut out, &[sc.trace_flags().to_u8()]);
    Some(out)
}

/// Appends `bytes` in lowercase hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
}

/// A W3C `traceparent` (version 00): `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`.
pub(super) fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version != "00" || trace.len() != 32 || span.len() != 16 || flags.len() != 2 {
        return None;
    }
    // By hand: every message a consumer handles is parsed (`from_hex` took about 900
    // instructions for the two ids).
    let trace = TraceId::from(hex(trace)?);
    let span = SpanId::from(u64::try_from(hex(span)?).ok()?);
    let flags = u8::try_from(hex(flags)?).ok()?;
    let context = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// A number written in (at most 32) hex digits.
fn hex(digits: &str) -> Option<u128> {
    digits.bytes().try_fold(0u128, |n, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        Some((n << 4) | u128::from(digit))
    })
}

#[cfg(test)]
mod tests {
    use super::{parse, traceparent};

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
        assert_eq!(traceparent(&context).as_deref(), Some(good));
        let unsampled = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let context = parse(unsampled).expect("a valid traceparent");
        assert!(!context.is_sampled());
        assert_eq!(traceparent(&context).as_deref(), Some(unsampled));
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
