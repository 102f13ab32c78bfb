//! Trace context on every message, and the spans of tabgrab's own work.
//!
//! The W3C `traceparent` of the span that made an envelope travels with it (the CloudEvents
//! distributed-tracing extension), on every transport and through every store that keeps
//! envelopes (the log, outbox rows, the correlation store), and whoever handles the message
//! continues that trace.
//!
//! This crate knows no tracing backend: an application that exports traces installs a
//! [`Tracer`] (`tabgrab::telemetry::Otel` is one, for OpenTelemetry). From then on
//! [`Envelope::raw`](crate::Envelope::raw), the one place every envelope is made, stamps the
//! current span's context ([`current`]), and the components that send or handle messages
//! make their spans with [`Span::start`]. Without a tracer both do nothing and cost one
//! atomic load.
//!
//! Sampling is decided when a span starts, before its name or attributes are made: a span
//! that is not sampled is only a context (trace id, span id, flags) that its children and the
//! envelopes made inside it inherit, so one decision at the root of a trace holds for every
//! message of it, across processes, and an unsampled message costs no span. That is why
//! tabgrab's spans do not go through `tracing`'s subscriber: there a span is built, and its
//! attributes recorded, before any sampler can drop it.
//!
//! An unsampled span is handled here, not by the tracer: it is the [`TraceContext`] it
//! inherited (a root draws new ids), kept in a thread-local while its work runs. It
//! allocates nothing and exports nothing; it keeps its parent's span id, since an unsampled
//! trace has no spans for an id to name. Only a sampled span is the tracer's
//! ([`Started::Sampled`]).

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

/// A W3C trace context: what a `traceparent` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id (never zero in a valid context).
    pub trace_id: u128,
    /// The parent span's id (never zero in a valid context).
    pub span_id: u64,
    /// The trace flags; bit 0 is "sampled".
    pub flags: u8,
}

impl TraceContext {
    /// Reads a W3C `traceparent` (version 00:
    /// `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`); `None` if it is malformed or
    /// names a zero id.
    pub fn parse(traceparent: &str) -> Option<TraceContext> {
        // By hand, with a table: every message a consumer handles is parsed.
        let b = traceparent.trim().as_bytes();
        if b.len() != 55 || &b[..3] != b"00-" || b[35] != b'-' || b[52] != b'-' {
            return None;
        }
        let context = TraceContext {
            trace_id: (u128::from(hex(&b[3..19])?) << 64) | u128::from(hex(&b[19..35])?),
            span_id: hex(&b[36..52])?,
            flags: u8::try_from(hex(&b[53..55])?).ok()?,
        };
        (context.trace_id != 0 && context.span_id != 0).then_some(context)
    }

    /// The context as a W3C `traceparent`.
    pub fn traceparent(&self) -> String {
        let mut out = [0u8; 55];
        out[..3].copy_from_slice(b"00-");
        write_hex(&self.trace_id.to_be_bytes(), &mut out[3..35]);
        out[35] = b'-';
        write_hex(&self.span_id.to_be_bytes(), &mut out[36..52]);
        out[52] = b'-';
        write_hex(&[self.flags], &mut out[53..55]);
        // Always ASCII: the check cannot fail.
        std::str::from_utf8(&out)
            .map(str::to_owned)
            .unwrap_or_default()
    }

    /// Whether the trace is sampled (its spans are kept).
    pub fn is_sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

/// A number written in at most 16 hex digits.
fn hex(digits: &[u8]) -> Option<u64> {
    // No branch per digit: an invalid one sets the high bit of `seen`.
    let (n, seen) = digits.iter().fold((0u64, 0u8), |(n, seen), &b| {
        let digit = HEX_VALUE[usize::from(b)];
        ((n << 4) | u64::from(digit & 0xf), seen | digit)
    });
    (seen & INVALID_BIT == 0).then_some(n)
}

/// `bytes` in lowercase hex, two digits each, into `out` (twice as long).
fn write_hex(bytes: &[u8], out: &mut [u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (b, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// Set in the table's value of a byte that is not a hex digit (a digit's value is below 16).
const INVALID_BIT: u8 = 0x80;
const INVALID: u8 = 0xff;

/// The value of each byte as a hex digit, or [`INVALID`].
static HEX_VALUE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

thread_local! {
    /// The unsampled span this thread runs in, if the innermost tabgrab span is one.
    static UNSAMPLED: Cell<Option<TraceContext>> = const { Cell::new(None) };
}

/// The context of the unsampled tabgrab span the code runs in, if the innermost tabgrab span
/// is an unsampled one (for a [`Tracer`]: a span started there is its child, and so is an
/// application's own span).
pub fn unsampled() -> Option<TraceContext> {
    UNSAMPLED.with(Cell::get)
}

/// Runs `f` with `context` as this thread's unsampled span (`None`: inside a sampled span),
/// restoring the previous one afterwards, also if `f` panics.
fn with_unsampled<R>(context: Option<TraceContext>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<TraceContext>);
    impl Drop for Restore {
        fn drop(&mut self) {
            UNSAMPLED.with(|current| current.set(self.0));
        }
    }
    let _restore = Restore(UNSAMPLED.with(|current| current.replace(context)));
    f()
}

/// What a span stands for (OpenTelemetry's span kinds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Sending a message (a publish, a request).
    Producer,
    /// Handling a message a consumer received.
    Consumer,
    /// Making a call and waiting for its answer.
    Client,
    /// Serving a call.
    Server,
}

/// An attribute's value.
#[derive(Debug, Clone, Copy)]
pub enum Value<'a> {
    /// A string.
    Str(&'a str),
    /// An integer.
    Int(i64),
    /// Nothing: the attribute is left out (an optional field that is absent).
    None,
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(value: &'a str) -> Self {
        Value::Str(value)
    }
}

impl<'a> From<Option<&'a str>> for Value<'a> {
    fn from(value: Option<&'a str>) -> Self {
        value.map_or(Value::None, Value::Str)
    }
}

impl From<u32> for Value<'_> {
    fn from(value: u32) -> Self {
        Value::Int(i64::from(value))
    }
}

/// An attribute: a name from the semantic conventions and its value.
pub type Attribute<'a> = (&'static str, Value<'a>);

/// Where a new span's parent comes from.
#[derive(Debug, Clone, Copy)]
pub enum Parent<'a> {
    /// The span the code runs in (a publish inside a handler is its child).
    Current,
    /// The context a message carried (its `traceparent`); none, or a malformed one, makes
    /// the span the root of a new trace.
    Carried(Option<&'a str>),
}

/// How a span starts: kind, parent, name (`name.0` and `name.1` joined by a space when both
/// are set, made only if the span is sampled) and attributes.
#[derive(Debug, Clone, Copy)]
pub struct Start<'a> {
    /// The span's kind.
    pub kind: Kind,
    /// Its parent.
    pub parent: Parent<'a>,
    /// Its name, in two parts (`("send", topic)` is `send orders`).
    pub name: (&'a str, &'a str),
    /// Its attributes.
    pub attributes: &'a [Attribute<'a>],
}

/// A span a [`Tracer`] started.
pub enum Started {
    /// Not sampled: only its context, which its work and its messages carry.
    Unsampled(TraceContext),
    /// Sampled: recorded by the tracer, ended when dropped.
    Sampled(Box<dyn Active>),
}

/// What a tracing backend provides.
pub trait Tracer: Send + Sync + 'static {
    /// The W3C `traceparent` of the tracer's current span (outside any unsampled tabgrab
    /// span), if it has a valid context.
    fn current(&self) -> Option<String>;
    /// Starts a span: decides sampling first and builds a recorded span only if sampled.
    /// [`Parent::Current`] is the unsampled span the code runs in ([`unsampled`]), if any,
    /// else the tracer's current span.
    fn start(&self, start: Start<'_>) -> Started;
    /// Adds an event to the current span, if it is recorded.
    fn event(&self, name: &'static str, attributes: &[Attribute<'_>]);
    /// Marks the current span, if it is recorded, as failed: status error with `message`,
    /// and `error.type` set to `error_type`.
    fn fail(&self, error_type: &str, message: &str);
}

/// A started, sampled span, ended when dropped.
pub trait Active: Send + Sync {
    /// Whether attributes and events are kept.
    fn is_recording(&self) -> bool;
    /// Sets an attribute.
    fn set(&self, key: &'static str, value: Value<'_>);
    /// Runs `f` with this span as the current one.
    fn scope(&self, f: &mut dyn FnMut());
}

static TRACER: OnceLock<Box<dyn Tracer>> = OnceLock::new();

/// Installs the process's tracer; `false` if one was installed before (it stays).
pub fn install(tracer: impl Tracer) -> bool {
    TRACER.set(Box::new(tracer)).is_ok()
}

/// The current span's `traceparent`, when a tracer is installed and a span is current.
pub fn current() -> Option<String> {
    let tracer = TRACER.get()?;
    match unsampled() {
        Some(context) => Some(context.traceparent()),
        None => tracer.current(),
    }
}

/// Adds an event (a retry, a dead letter) to the current span, when it is recorded.
pub fn event(name: &'static str, attributes: &[Attribute<'_>]) {
    if let Some(tracer) = TRACER.get()
        && unsampled().is_none()
    {
        tracer.event(name, attributes);
    }
}

/// Marks the current span as failed (a dead letter, a failed call): its status is an error
/// with `message`, and `error.type` (OpenTelemetry's convention) is `error_type`, a bounded
/// name such as an error kind or a dead letter's reason. Nothing when it is not recorded.
pub fn fail(error_type: &str, message: &str) {
    if let Some(tracer) = TRACER.get()
        && unsampled().is_none()
    {
        tracer.fail(error_type, message);
    }
}

/// A span of tabgrab's work, or nothing when no tracer is installed. Ends when dropped.
#[must_use = "a span ends when it is dropped"]
pub struct Span(Inner);

enum Inner {
    None,
    Unsampled(TraceContext),
    Sampled(Box<dyn Active>),
}

impl std::fmt::Debug for Span {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Span")
            .field("recording", &self.is_recording())
            .finish()
    }
}

impl Span {
    /// Starts a span with the installed tracer; nothing if there is none.
    pub fn start(start: Start<'_>) -> Span {
        Span(match TRACER.get().map(|t| t.start(start)) {
            None => Inner::None,
            Some(Started::Unsampled(context)) => Inner::Unsampled(context),
            Some(Started::Sampled(active)) => Inner::Sampled(active),
        })
    }

    /// Whether the span is sampled (its attributes and events are kept).
    pub fn is_recording(&self) -> bool {
        match &self.0 {
            Inner::Sampled(active) => active.is_recording(),
            Inner::None | Inner::Unsampled(_) => false,
        }
    }

    /// Sets an attribute (a no-op on a span that is not recorded).
    pub fn set<'a>(&self, key: &'static str, value: impl Into<Value<'a>>) {
        if let Inner::Sampled(active) = &self.0 {
            active.set(key, value.into());
        }
    }

    /// Runs `f` inside the span: envelopes made in it carry its context.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            Inner::None => f(),
            Inner::Unsampled(context) => with_unsampled(Some(*context), f),
            Inner::Sampled(active) => with_unsampled(None, || {
                let mut f = Some(f);
                let mut out = None;
                active.scope(&mut || out = f.take().map(|f| f()));
                match out {
                    Some(out) => out,
                    // `scope` must run its closure; a tracer that did not is a bug.
                    None => unreachable!("a tracer's scope did not run its closure"),
                }
            }),
        }
    }

    /// Runs `future` inside the span on every poll; the span ends when the future is dropped.
    pub fn instrument<F: Future>(self, future: F) -> Instrumented<F> {
        Instrumented { future, span: self }
    }
}

pin_project_lite::pin_project! {
    /// A future that runs inside a [`Span`] ([`Span::instrument`]).
    pub struct Instrumented<F> {
        #[pin]
        future: F,
        span: Span,
    }
}

impl<F: Future> Future for Instrumented<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        match &this.span.0 {
            Inner::None => this.future.poll(cx),
            Inner::Unsampled(context) => with_unsampled(Some(*context), || this.future.poll(cx)),
            Inner::Sampled(active) => with_unsampled(None, || {
                let mut future = Some(this.future);
                let mut out = Poll::Pending;
                active.scope(&mut || {
                    if let Some(future) = future.take() {
                        out = future.poll(cx);
                    }
                });
                out
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::TraceContext;

    #[test]
    fn traceparents_are_read_and_written_and_bad_ones_refused() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let context = TraceContext::parse(good).expect("a valid traceparent");
        assert_eq!(context.trace_id, 0x0af7651916cd43dd8448eb211c80319c);
        assert_eq!(context.span_id, 0xb7ad6b7169203331);
        assert!(context.is_sampled());
        assert_eq!(context.traceparent(), good);
        let unsampled = "00-0AF7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00";
        let context = TraceContext::parse(unsampled).expect("a valid traceparent");
        assert!(!context.is_sampled());
        assert_eq!(context.traceparent(), unsampled.to_ascii_lowercase());
        for bad in [
            "",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
            "00-0af7651916cd43dd8448eb211c8031-b7ad6b7169203331-01",
            "00-zzf7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-0af7651916cd43dd8448eb211c80319c+b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0é",
        ] {
            assert!(TraceContext::parse(bad).is_none(), "{bad:?}");
        }
    }
}
