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

use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

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

/// What a tracing backend provides.
pub trait Tracer: Send + Sync + 'static {
    /// The W3C `traceparent` of the current span, if it has a valid context.
    fn current(&self) -> Option<String>;
    /// Starts a span: decides sampling first and builds a recorded span only if sampled.
    fn start(&self, start: Start<'_>) -> Box<dyn Active>;
    /// Adds an event to the current span, if it is recorded.
    fn event(&self, name: &'static str, attributes: &[Attribute<'_>]);
}

/// A started span, ended when dropped.
pub trait Active: Send + Sync {
    /// Whether attributes and events are kept (the span is sampled).
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
    TRACER.get().and_then(|t| t.current())
}

/// Adds an event (a retry, a dead letter) to the current span, when it is recorded.
pub fn event(name: &'static str, attributes: &[Attribute<'_>]) {
    if let Some(tracer) = TRACER.get() {
        tracer.event(name, attributes);
    }
}

/// A span of tabgrab's work, or nothing when no tracer is installed. Ends when dropped.
#[must_use = "a span ends when it is dropped"]
pub struct Span(Option<Box<dyn Active>>);

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
        Span(TRACER.get().map(|t| t.start(start)))
    }

    /// Whether the span is sampled (its attributes and events are kept).
    pub fn is_recording(&self) -> bool {
        self.0.as_ref().is_some_and(|a| a.is_recording())
    }

    /// Sets an attribute (a no-op on a span that is not recorded).
    pub fn set<'a>(&self, key: &'static str, value: impl Into<Value<'a>>) {
        if let Some(active) = &self.0 {
            active.set(key, value.into());
        }
    }

    /// Runs `f` inside the span: envelopes made in it carry its context.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.0 {
            None => f(),
            Some(active) => {
                let mut f = Some(f);
                let mut out = None;
                active.scope(&mut || out = f.take().map(|f| f()));
                match out {
                    Some(out) => out,
                    // `scope` must run its closure; a tracer that did not is a bug.
                    None => unreachable!("a tracer's scope did not run its closure"),
                }
            }
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
            None => this.future.poll(cx),
            Some(active) => {
                let mut future = Some(this.future);
                let mut out = Poll::Pending;
                active.scope(&mut || {
                    if let Some(future) = future.take() {
                        out = future.poll(cx);
                    }
                });
                out
            }
        }
    }
}
