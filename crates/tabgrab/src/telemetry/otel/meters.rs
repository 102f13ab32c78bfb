//! tabgrab's metrics to OpenTelemetry: a `metrics` recorder whose counters, gauges and
//! histograms are OpenTelemetry instruments, exported over OTLP by a periodic reader.
//!
//! Names stay as the conventions write them (`messaging.process.duration`, unit `s`), and
//! every label becomes an attribute. A counter that a component reports as a total
//! (`absolute`, read from its statistics by [`collect`](crate::telemetry::collect)) adds
//! what it grew by since the last report. One instrument per name, and per key one handle
//! bound to its attributes (a measurement does not look its attributes up again), kept for
//! the life of the process as the Prometheus recorder keeps its series.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundGauge, BoundHistogram, Meter};

/// The recorder (see the module docs).
pub(super) struct OtlpRecorder {
    meter: Meter,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    descriptions: HashMap<String, (Option<Unit>, SharedString)>,
    counters: HashMap<Key, Arc<OtelCounter>>,
    gauges: HashMap<Key, Arc<OtelGauge>>,
    histograms: HashMap<Key, Arc<OtelHistogram>>,
    counter_instruments: HashMap<String, opentelemetry::metrics::Counter<u64>>,
    gauge_instruments: HashMap<String, opentelemetry::metrics::Gauge<f64>>,
    histogram_instruments: HashMap<String, opentelemetry::metrics::Histogram<f64>>,
}

impl OtlpRecorder {
    pub(super) fn new(meter: Meter) -> OtlpRecorder {
        OtlpRecorder {
            meter,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while the maps were changed leaves them whole (each change is one insert).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.state()
            .descriptions
            .insert(key.as_str().to_owned(), (unit, description));
    }
}

/// An instrument's description and unit, as described (the unit empty when none).
fn about(
    descriptions: &HashMap<String, (Option<Unit>, SharedString)>,
    name: &str,
) -> (Cow<'static, str>, &'static str) {
    match descriptions.get(name) {
        Some((unit, description)) => (
            Cow::Owned(description.to_string()),
            unit.map_or("", |u| match u {
                Unit::Seconds => "s",
                Unit::Milliseconds => "ms",
                Unit::Microseconds => "us",
                Unit::Nanoseconds => "ns",
                Unit::Bytes => "By",
                _ => "1",
            }),
        ),
        None => (Cow::Borrowed(""), ""),
    }
}

/// The handle of `key`: the one made before, or one that `make` makes from the instrument of
/// `key`'s name (which `build` makes the first time the name is seen).
fn cached<I: Clone, H>(
    handles: &mut HashMap<Key, Arc<H>>,
    instruments: &mut HashMap<String, I>,
    key: &Key,
    build: impl FnOnce(&str) -> I,
    make: impl FnOnce(&I, &[KeyValue]) -> H,
) -> Arc<H> {
    if let Some(handle) = handles.get(key) {
        return Arc::clone(handle);
    }
    let name = key.name();
    let instrument = instruments
        .entry(name.to_owned())
        .or_insert_with(|| build(name));
    let handle = Arc::new(make(instrument, &attributes(key)));
    handles.insert(key.clone(), Arc::clone(&handle));
    handle
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned()))
        .collect()
}

impl Recorder for OtlpRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut state = self.state();
        let State {
            descriptions,
            counters,
            counter_instruments,
            ..
        } = &mut *state;
        let build = |name: &str| {
            let (description, unit) = about(descriptions, name);
            let meter = self.meter.u64_counter(name.to_owned());
            meter.with_description(description).with_unit(unit).build()
        };
        Counter::from_arc(cached(counters, counter_instruments, key, build, |i, a| {
            OtelCounter {
                instrument: i.bind(a),
                total: AtomicU64::new(0),
            }
        }))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut state = self.state();
        let State {
            descriptions,
            gauges,
            gauge_instruments,
            ..
        } = &mut *state;
        let build = |name: &str| {
            let (description, unit) = about(descriptions, name);
            let meter = self.meter.f64_gauge(name.to_owned());
            meter.with_description(description).with_unit(unit).build()
        };
        Gauge::from_arc(cached(gauges, gauge_instruments, key, build, |i, a| {
            OtelGauge {
                instrument: i.bind(a),
                value: AtomicU64::new(0f64.to_bits()),
            }
        }))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut state = self.state();
        let State {
            descriptions,
            histograms,
            histogram_instruments,
            ..
        } = &mut *state;
        let build = |name: &str| {
            let (description, unit) = about(descriptions, name);
            let meter = self.meter.f64_histogram(name.to_owned());
            meter
                .with_description(description)
                .with_unit(unit)
                .with_boundaries(crate::telemetry::BUCKETS.to_vec())
                .build()
        };
        Histogram::from_arc(cached(
            histograms,
            histogram_instruments,
            key,
            build,
            |i, a| OtelHistogram {
                instrument: i.bind(a),
            },
        ))
    }
}

struct OtelCounter {
    instrument: BoundCounter<u64>,
    /// What was added so far, for totals reported with `absolute`.
    total: AtomicU64,
}

impl CounterFn for OtelCounter {
    fn increment(&self, value: u64) {
        self.total.fetch_add(value, Ordering::Relaxed);
        self.instrument.add(value);
    }

    fn absolute(&self, value: u64) {
        // A counter never goes down: a smaller total (a component that restarted its count)
        // adds nothing.
        let before = self.total.fetch_max(value, Ordering::Relaxed);
        if value > before {
            self.instrument.add(value - before);
        }
    }
}

struct OtelGauge {
    instrument: BoundGauge<f64>,
    value: AtomicU64,
}

impl OtelGauge {
    fn change(&self, by: impl Fn(f64) -> f64) {
        let mut now = self.value.load(Ordering::Relaxed);
        loop {
            let next = by(f64::from_bits(now));
            match self.value.compare_exchange_weak(
                now,
                next.to_bits(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    self.instrument.record(next);
                    return;
                }
                Err(actual) => now = actual,
            }
        }
    }
}

impl GaugeFn for OtelGauge {
    fn increment(&self, value: f64) {
        self.change(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.change(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Relaxed);
        self.instrument.record(value);
    }
}

struct OtelHistogram {
    instrument: BoundHistogram<f64>,
}

impl HistogramFn for OtelHistogram {
    fn record(&self, value: f64) {
        self.instrument.record(value);
    }
}
