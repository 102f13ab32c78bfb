//! The process's one `metrics` recorder, which hands every measurement to each exporter
//! tabgrab installed: Prometheus' (scraped), OpenTelemetry's (pushed over OTLP), or both.
//!
//! `metrics` takes a single global recorder, once; exporters are added to this one as they
//! are installed. A handle (a histogram a component took when it was built) reaches the
//! exporters installed before it was taken, so install them first.

use std::sync::{Arc, OnceLock};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

use crate::{Error, ErrorKind};

/// An exporter's recorder.
pub(crate) type Exporter = Box<dyn Recorder + Send + Sync>;

/// The exporters, in fixed slots (each installed at most once per process).
struct Hub {
    prometheus: OnceLock<Exporter>,
    otlp: OnceLock<Exporter>,
}

static HUB: Hub = Hub {
    prometheus: OnceLock::new(),
    otlp: OnceLock::new(),
};

/// Which slot an exporter goes in.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Slot {
    #[cfg_attr(not(feature = "prometheus"), allow(dead_code))]
    Prometheus,
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    Otlp,
}

/// Makes the hub the global recorder (once) and adds `exporter` to it; `false` if that slot
/// was taken before (the first stays).
pub(crate) fn install(slot: Slot, exporter: impl FnOnce() -> Exporter) -> Result<bool, Error> {
    static GLOBAL: OnceLock<bool> = OnceLock::new();
    let global = *GLOBAL.get_or_init(|| metrics::set_global_recorder(Global).is_ok());
    if !global {
        return Err(Error::new(
            ErrorKind::Conflict,
            "another metrics recorder is installed in this process; tabgrab records through \
             it (install tabgrab's exporters before any other to use them)",
        ));
    }
    let cell = match slot {
        Slot::Prometheus => &HUB.prometheus,
        Slot::Otlp => &HUB.otlp,
    };
    let mut added = false;
    cell.get_or_init(|| {
        added = true;
        exporter()
    });
    if added {
        tabgrab_core::telemetry::describe();
    }
    Ok(added)
}

/// The global recorder: the hub's exporters, side by side.
struct Global;

impl Global {
    fn each(&self, mut f: impl FnMut(&Exporter)) {
        for exporter in [HUB.prometheus.get(), HUB.otlp.get()].into_iter().flatten() {
            f(exporter);
        }
    }
}

impl Recorder for Global {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.each(|e| e.describe_counter(key.clone(), unit, description.clone()));
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.each(|e| e.describe_gauge(key.clone(), unit, description.clone()));
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.each(|e| e.describe_histogram(key.clone(), unit, description.clone()));
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        match (HUB.prometheus.get(), HUB.otlp.get()) {
            (Some(a), Some(b)) => Counter::from_arc(Arc::new(Both(
                a.register_counter(key, metadata),
                b.register_counter(key, metadata),
            ))),
            (Some(one), None) | (None, Some(one)) => one.register_counter(key, metadata),
            (None, None) => Counter::noop(),
        }
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        match (HUB.prometheus.get(), HUB.otlp.get()) {
            (Some(a), Some(b)) => Gauge::from_arc(Arc::new(Both(
                a.register_gauge(key, metadata),
                b.register_gauge(key, metadata),
            ))),
            (Some(one), None) | (None, Some(one)) => one.register_gauge(key, metadata),
            (None, None) => Gauge::noop(),
        }
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        match (HUB.prometheus.get(), HUB.otlp.get()) {
            (Some(a), Some(b)) => Histogram::from_arc(Arc::new(Both(
                a.register_histogram(key, metadata),
                b.register_histogram(key, metadata),
            ))),
            (Some(one), None) | (None, Some(one)) => one.register_histogram(key, metadata),
            (None, None) => Histogram::noop(),
        }
    }
}

/// One measurement, to two exporters.
struct Both<T>(T, T);

impl CounterFn for Both<Counter> {
    fn increment(&self, value: u64) {
        self.0.increment(value);
        self.1.increment(value);
    }

    fn absolute(&self, value: u64) {
        self.0.absolute(value);
        self.1.absolute(value);
    }
}

impl GaugeFn for Both<Gauge> {
    fn increment(&self, value: f64) {
        self.0.increment(value);
        self.1.increment(value);
    }

    fn decrement(&self, value: f64) {
        self.0.decrement(value);
        self.1.decrement(value);
    }

    fn set(&self, value: f64) {
        self.0.set(value);
        self.1.set(value);
    }
}

impl HistogramFn for Both<Histogram> {
    fn record(&self, value: f64) {
        self.0.record(value);
        self.1.record(value);
    }
}
