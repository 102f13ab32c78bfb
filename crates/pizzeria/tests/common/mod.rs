//! What the effects tests share: the pizzeria order's state machine, and reading every
//! event of the pizzeria topic back from a bus.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pizzeria::messages::{
    IngredientsMissing, IngredientsReleased, IngredientsReserved, OrderAccepted, OrderCancelled,
    OrderDelivered, PaymentCollected, PaymentDeclined, PaymentRefunded, PizzaReady, TOPIC,
    registry,
};
use tabgrab::backend::Bus;
use tabgrab::event::{Context, StartFrom, Subscription};
use tabgrab::{Envelope, Message};
use tabgrab_testkit::lifecycle::{Lifecycle, LifecycleReport, Rule};

pub(crate) mod processes;

/// One event read back: (order id, message id, short fact name).
pub(crate) type Fact = (String, String, &'static str);

/// The short name of each pizzeria event type.
pub(crate) fn fact_name(ty: &str) -> &'static str {
    match ty {
        OrderAccepted::TYPE => "accepted",
        PaymentCollected::TYPE => "collected",
        PaymentDeclined::TYPE => "declined",
        IngredientsReserved::TYPE => "reserved",
        IngredientsMissing::TYPE => "missing",
        PizzaReady::TYPE => "ready",
        OrderDelivered::TYPE => "delivered",
        OrderCancelled::TYPE => "cancelled",
        PaymentRefunded::TYPE => "refunded",
        IngredientsReleased::TYPE => "released",
        _ => "unknown",
    }
}

/// An order's life: accepted → paid and reserved (either order) → baking → ready →
/// delivered; or cancelled after a decline or a shortage, with at most one refund (only of a
/// collection) and at most one release (only of a reservation). The kitchen and delivery
/// are at least once: a repeated bell or delivery (a new id) is counted, not a violation.
/// Terminal: delivered, or cancelled with every collection refunded and every reservation
/// released.
pub(crate) fn order_machine() -> Lifecycle {
    Lifecycle::new()
        .rule(Rule::new("accepted").once())
        .rule(
            Rule::new("collected")
                .after("accepted")
                .once()
                .excludes("declined"),
        )
        .rule(
            Rule::new("declined")
                .after("accepted")
                .once()
                .excludes("collected"),
        )
        .rule(
            Rule::new("reserved")
                .after("accepted")
                .once()
                .excludes("missing"),
        )
        .rule(
            Rule::new("missing")
                .after("accepted")
                .once()
                .excludes("reserved"),
        )
        .rule(
            Rule::new("ready")
                .after("collected")
                .after("reserved")
                .excludes("cancelled")
                .repeatable(),
        )
        .rule(
            Rule::new("delivered")
                .after("ready")
                .excludes("cancelled")
                .repeatable(),
        )
        .rule(
            Rule::new("cancelled")
                .after("accepted")
                .after_any(["declined", "missing"])
                .excludes("ready")
                .once(),
        )
        .rule(
            Rule::new("refunded")
                .after("collected")
                .after("cancelled")
                .once(),
        )
        .rule(
            Rule::new("released")
                .after("reserved")
                .after("cancelled")
                .once(),
        )
        .terminal(|f| {
            if f.has("delivered") {
                return Ok(());
            }
            if !f.has("cancelled") {
                return Err(format!(
                    "neither delivered nor cancelled: {:?}",
                    f.sequence()
                ));
            }
            if f.has("collected") && !f.has("refunded") {
                return Err(format!(
                    "cancelled, charged and not refunded: {:?}",
                    f.sequence()
                ));
            }
            if f.has("reserved") && !f.has("released") {
                return Err(format!(
                    "cancelled, reserved and not released: {:?}",
                    f.sequence()
                ));
            }
            Ok(())
        })
}

/// How many orders have `fact` (copies and repeats counted once).
pub(crate) fn orders_with(facts: &[Fact], fact: &str) -> u64 {
    let orders: std::collections::HashSet<&str> = facts
        .iter()
        .filter(|(_, _, f)| *f == fact)
        .map(|(o, _, _)| o.as_str())
        .collect();
    orders.len() as u64
}

/// The effects the events on the bus call for, as (`service:kind`, id of the causing
/// event): a charge for each collected order (caused by its `OrderAccepted`), a refund for each
/// refunded one (caused by its `OrderCancelled`), a reservation, a release. Compare with
/// `Store::effects` in `tabgrab_testkit::effects::check`.
pub(crate) fn expected_effects(facts: &[Fact]) -> Vec<(String, String)> {
    use std::collections::HashMap;
    let mut first: HashMap<(&str, &str), &str> = HashMap::new();
    for (order, id, fact) in facts {
        first.entry((order.as_str(), *fact)).or_insert(id.as_str());
    }
    let mut expected = Vec::new();
    for ((order, fact), _) in first.iter() {
        let (key, cause) = match *fact {
            "collected" => ("payment:charge", "accepted"),
            "refunded" => ("payment:refund", "cancelled"),
            "reserved" => ("inventory:reserve", "accepted"),
            "released" => ("inventory:release", "cancelled"),
            _ => continue,
        };
        if let Some(id) = first.get(&(*order, cause)) {
            expected.push((key.to_owned(), (*id).to_owned()));
        }
    }
    expected
}

/// Checks `facts` (in bus order) against [`order_machine`].
pub(crate) fn check_orders(facts: &[Fact]) -> LifecycleReport {
    let mut history = order_machine().history();
    for (order, id, fact) in facts {
        history.record(order.clone(), id.clone(), *fact);
    }
    history.check()
}

/// Every event of the pizzeria topic on `bus`, in the order the bus delivers them to a new
/// consumer group (which reads from the beginning): waits (bounded) until the group has
/// caught up and nothing new arrived for `quiet`.
pub(crate) async fn read_back(bus: &Bus, quiet: Duration) -> Vec<Fact> {
    let group = format!("audit-{}", uuid::Uuid::now_v7().simple());
    let recorder = Recorder::start(bus, &group, StartFrom::Beginning).await;
    recorder.caught_up(quiet).await;
    recorder.stop().await
}

/// A consumer group that records every pizzeria event it reads (as [`Fact`]s, in bus
/// order) and keeps a sample of their envelopes (to publish again, as a duplicate). Types it
/// does not know, and known types it cannot decode, it dead-letters like any group.
pub(crate) struct Recorder {
    facts: Arc<Mutex<Vec<Fact>>>,
    /// When each fact's envelope was made (Unix nanoseconds), by index.
    made: Arc<Mutex<Vec<i128>>>,
    sample: Arc<Mutex<Vec<Envelope>>>,
    subscription: Subscription,
}

/// How many envelopes a [`Recorder`] keeps.
const SAMPLE: usize = 256;

impl Recorder {
    /// Starts the group `group` on the pizzeria topic of `bus`, from `start`.
    pub(crate) async fn start(bus: &Bus, group: &str, start: StartFrom) -> Recorder {
        let facts: Arc<Mutex<Vec<Fact>>> = Arc::default();
        let made: Arc<Mutex<Vec<i128>>> = Arc::default();
        let sample: Arc<Mutex<Vec<Envelope>>> = Arc::default();
        let mut builder = Subscription::builder(bus, TOPIC, group)
            .known(&registry())
            .start_from(start)
            .concurrency(1);
        macro_rules! collect {
            ($($ty:ty),*) => {$(
                let sink = Arc::clone(&facts);
                let times = Arc::clone(&made);
                let kept = Arc::clone(&sample);
                builder = builder.handle(move |_e: $ty, ctx: Context| {
                    let sink = Arc::clone(&sink);
                    let times = Arc::clone(&times);
                    let kept = Arc::clone(&kept);
                    async move {
                        let envelope = ctx.envelope();
                        let mut facts = sink.lock().unwrap();
                        times.lock().unwrap().push(
                            envelope.time.map_or(i128::MAX, |t| t.unix_timestamp_nanos()),
                        );
                        facts.push((
                            envelope.subject.clone().unwrap_or_default(),
                            envelope.id.clone(),
                            fact_name(&envelope.ty),
                        ));
                        let mut kept = kept.lock().unwrap();
                        if kept.len() < SAMPLE {
                            kept.push(envelope.clone());
                        } else {
                            // Spread over the whole run: replace one, picked by position.
                            let slot = facts.len() % SAMPLE;
                            kept[slot] = envelope.clone();
                        }
                        Ok(())
                    }
                });
            )*};
        }
        collect!(
            OrderAccepted,
            PaymentCollected,
            PaymentDeclined,
            IngredientsReserved,
            IngredientsMissing,
            PizzaReady,
            OrderDelivered,
            OrderCancelled,
            PaymentRefunded,
            IngredientsReleased
        );
        let subscription = builder.start().unwrap();
        subscription.ready().await.unwrap();
        Recorder {
            facts,
            made,
            sample,
            subscription,
        }
    }

    /// The facts recorded so far, in bus order.
    pub(crate) fn facts(&self) -> Vec<Fact> {
        self.facts.lock().unwrap().clone()
    }

    /// The facts recorded so far in the order their envelopes were made (their `time`; bus
    /// order among equal times). An engine that keeps no order across publishers (RabbitMQ:
    /// one queue is fed by several channels, each with its own pending window) may deliver
    /// an effect before its cause; on one machine, one clock, this order is causal.
    pub(crate) fn facts_in_made_order(&self) -> Vec<Fact> {
        let facts = self.facts.lock().unwrap();
        let made = self.made.lock().unwrap();
        let mut order: Vec<usize> = (0..facts.len()).collect();
        order.sort_by_key(|&i| (made[i], i));
        order.into_iter().map(|i| facts[i].clone()).collect()
    }

    /// Up to `n` recorded envelopes.
    pub(crate) fn sample(&self, n: usize) -> Vec<Envelope> {
        self.sample
            .lock()
            .unwrap()
            .iter()
            .take(n)
            .cloned()
            .collect()
    }

    /// Waits (bounded, 60 s) until the group has read everything there is and nothing new
    /// arrived for `quiet`.
    pub(crate) async fn caught_up(&self, quiet: Duration) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut last = (usize::MAX, Instant::now());
        loop {
            let n = self.facts.lock().unwrap().len();
            if n != last.0 {
                last = (n, Instant::now());
            } else if self.subscription.lag() == 0 && last.1.elapsed() >= quiet {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "reading the topic back did not finish in 60 s ({n} events, lag {})",
                self.subscription.lag()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the group (committing what it read); returns every fact.
    pub(crate) async fn stop(self) -> Vec<Fact> {
        self.subscription.shutdown().await.unwrap();
        Arc::try_unwrap(self.facts).unwrap().into_inner().unwrap()
    }
}

/// The open dead letters of `topic` in the embedded data directory `dir`, read as a library
/// user would (`DeadLetters::list`).
pub(crate) async fn open_dead_letters(
    dir: &std::path::Path,
    topic: &str,
) -> Vec<tabgrab::event::KeptLetter> {
    let embedded = tabgrab::backend::embedded::EmbeddedBus::open(dir).unwrap();
    let open = tabgrab::event::DeadLetters::new(&Bus::from(&embedded), topic)
        .unwrap()
        .list(&tabgrab::event::Filter::default())
        .await
        .unwrap();
    embedded.close().await.unwrap();
    open
}
