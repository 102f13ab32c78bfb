//! Counters and gauges read from the components' own statistics when metrics are rendered.
//!
//! Subscriptions, requesters and call clients count what they do in atomics for their
//! `stats()`. Rather than counting everything twice, each registers itself here as a
//! [`Source`] (a weak reference: registration does not keep it alive), and [`collect`], called
//! by an exporter before it renders, reads every live source and hands the sums to the
//! installed `metrics` recorder: counters as absolute values, gauges as levels. Several
//! sources with the same name and labels (members of one group in one process) are added up.
//! A source that is dropped leaves its final counts behind ([`retire`]), so a counter never
//! goes down; its gauges drop to 0.
//!
//! Durations are histograms and cannot be read back from atomics: components record them
//! where they happen (`metrics::histogram!`).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Weak};

/// A metric's attributes: bounded values only (engine, topic, group, kind; never an id).
pub type Labels = Vec<(&'static str, String)>;

/// One metric with its attributes.
type Key = (&'static str, Labels);

/// What sources report at one collection.
#[derive(Default)]
pub struct Samples {
    counters: Vec<(Key, u64)>,
    gauges: Vec<(Key, f64)>,
    /// Counters only: the source is being dropped ([`retire`]).
    retiring: bool,
}

impl Samples {
    /// Whether gauges are wanted: not when the source is being dropped, so that a source
    /// skips their work (locks, engine queries) in its `Drop`.
    pub fn wants_gauges(&self) -> bool {
        !self.retiring
    }

    /// A counter's total so far.
    pub fn counter(&mut self, name: &'static str, labels: &Labels, value: u64) {
        self.counters.push(((name, labels.clone()), value));
    }

    /// A counter's total so far, with one attribute more than `labels`.
    pub fn counter_by(
        &mut self,
        name: &'static str,
        labels: &Labels,
        extra: (&'static str, &str),
        value: u64,
    ) {
        let mut labels = labels.clone();
        labels.push((extra.0, extra.1.to_owned()));
        self.counters.push(((name, labels), value));
    }

    /// A gauge's level now.
    pub fn gauge(&mut self, name: &'static str, labels: &Labels, value: f64) {
        if !self.retiring {
            self.gauges.push(((name, labels.clone()), value));
        }
    }
}

/// A component whose statistics are exported as metrics: register it with [`register`],
/// and call [`retire`] from its `Drop`.
pub trait Source: Send + Sync {
    /// Reports the component's counters and gauges.
    fn sample(&self, out: &mut Samples);
}

#[derive(Default)]
struct Registry {
    sources: Vec<Weak<dyn Source>>,
    /// Final counts of dropped sources.
    retired: HashMap<Key, u64>,
    /// Gauges set at the last collection (set to 0 when no source reports them any more).
    gauges: HashSet<Key>,
}

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Mutex::default);

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Registers `source`; it is read at every [`collect`] while it lives.
pub fn register(source: Weak<dyn Source>) {
    let mut registry = registry();
    // Dead entries go when the list would grow, so it stays as long as the live ones.
    if registry.sources.len() == registry.sources.capacity() {
        registry.sources.retain(|s| s.strong_count() > 0);
    }
    registry.sources.push(source);
}

/// Keeps the final counts of `source`, which is being dropped (call it from its `Drop`).
pub fn retire(source: &dyn Source) {
    let mut samples = Samples {
        retiring: true,
        ..Samples::default()
    };
    source.sample(&mut samples);
    let mut registry = registry();
    for (key, value) in samples.counters {
        *registry.retired.entry(key).or_default() += value;
    }
}

/// Reads every registered component's statistics into the installed `metrics` recorder.
/// Exporters call it before rendering (`tabgrab::telemetry::Prometheus::render` does).
pub fn collect() {
    let live: Vec<Arc<dyn Source>> = {
        let mut registry = registry();
        registry.sources.retain(|s| s.strong_count() > 0);
        registry.sources.iter().filter_map(Weak::upgrade).collect()
    };
    // Sampled without the registry's lock: a source dropped here retires itself, and that
    // takes the lock.
    let mut samples = Samples::default();
    for source in &live {
        source.sample(&mut samples);
    }
    let mut counters: HashMap<Key, u64> = HashMap::new();
    for (key, value) in samples.counters {
        *counters.entry(key).or_default() += value;
    }
    let mut gauges: HashMap<Key, f64> = HashMap::new();
    for (key, value) in samples.gauges {
        *gauges.entry(key).or_default() += value;
    }
    {
        let mut registry = registry();
        for (key, value) in &registry.retired {
            *counters.entry(key.clone()).or_default() += value;
        }
        for key in registry.gauges.drain() {
            gauges.entry(key).or_default();
        }
        registry.gauges = gauges
            .iter()
            .filter(|(_, v)| **v != 0.0)
            .map(|(k, _)| k.clone())
            .collect();
    }
    for ((name, labels), value) in counters {
        metrics::counter!(name, &labels).absolute(value);
    }
    for ((name, labels), value) in gauges {
        metrics::gauge!(name, &labels).set(value);
    }
    drop(live);
}
