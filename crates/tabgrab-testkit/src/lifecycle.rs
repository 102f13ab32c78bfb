//! The per-entity state-machine checker of RELIABILITY.md: every entity (an order, a
//! payment…) goes through allowed transitions only, and ends in a terminal state.
//!
//! A system built on events rarely has one linear state per entity: two services answer the
//! same fact in parallel and their answers arrive in either order. So the machine is described
//! by **facts** rather than states: the state of an entity is the set of facts seen so far, in
//! the order they were read back from the bus, and each [`Rule`] says when a fact may happen:
//! which facts must come before it (all of them, or at least one of a set), which ones exclude
//! it, and how often it may happen. A fact published at least once by a service that may repeat
//! it (a re-baked pizza after a crash) is marked [`Rule::repeatable`]: repeats are counted, not
//! reported. After quiescence, [`LifecycleHistory::check`] also asks the terminal predicate of
//! each entity whether it is done.
//!
//! Facts with the same message id are one message read twice (a redelivery or a relay that
//! published again after a crash): the checker counts them as copies and looks at the first.
//!
//! ```
//! use tabgrab_testkit::lifecycle::{Lifecycle, Rule};
//!
//! let machine = Lifecycle::new()
//!     .rule(Rule::new("opened").once())
//!     .rule(Rule::new("closed").after("opened").once())
//!     .terminal(|facts| if facts.has("closed") { Ok(()) } else { Err("still open".into()) });
//! let mut history = machine.history();
//! history.record("door-1", "m1", "opened");
//! history.record("door-1", "m2", "closed");
//! history.record("door-2", "m3", "closed"); // closed before it was opened
//! history.record("door-3", "m4", "opened"); // still open
//! let report = history.check();
//! assert_eq!(report.entities, 3);
//! assert_eq!(report.violations.len(), 1);
//! assert_eq!(report.not_terminal.len(), 1);
//! assert!(!report.is_valid());
//! ```

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

/// When one fact may happen.
#[derive(Clone, Debug)]
pub struct Rule {
    /// The fact's name (a message type, or a short name for it).
    fact: String,
    /// Facts that must all have been seen before.
    after_all: Vec<String>,
    /// Groups of facts of which at least one must have been seen before.
    after_any: Vec<Vec<String>>,
    /// Facts that must not have been seen before (nor after: see
    /// [`LifecycleHistory::check`]).
    excludes: Vec<String>,
    /// How often the fact may happen per entity (`None`: any number of times).
    at_most: Option<u32>,
    /// Repeats beyond `at_most` are counted as repeats rather than reported.
    repeatable: bool,
}

impl Rule {
    /// A fact with no precondition that may happen any number of times.
    pub fn new(fact: impl Into<String>) -> Rule {
        Rule {
            fact: fact.into(),
            after_all: Vec::new(),
            after_any: Vec::new(),
            excludes: Vec::new(),
            at_most: None,
            repeatable: false,
        }
    }

    /// `fact` must have been seen before this one.
    pub fn after(mut self, fact: impl Into<String>) -> Rule {
        self.after_all.push(fact.into());
        self
    }

    /// At least one of `facts` must have been seen before this one.
    pub fn after_any<I, S>(mut self, facts: I) -> Rule
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.after_any
            .push(facts.into_iter().map(Into::into).collect());
        self
    }

    /// This fact and `fact` never both happen to one entity, in either order.
    pub fn excludes(mut self, fact: impl Into<String>) -> Rule {
        self.excludes.push(fact.into());
        self
    }

    /// At most once per entity.
    pub fn once(mut self) -> Rule {
        self.at_most = Some(1);
        self
    }

    /// Once per entity as far as the state goes, but a service that publishes it at least
    /// once may repeat it (with a new message id): repeats are counted, not reported.
    pub fn repeatable(mut self) -> Rule {
        self.at_most = Some(1);
        self.repeatable = true;
        self
    }
}

/// The facts one entity has seen, in order: what a terminal predicate looks at.
#[derive(Clone, Debug, Default)]
pub struct Facts {
    /// Each distinct fact with how many times it happened (distinct message ids).
    counts: BTreeMap<String, u32>,
    /// The facts in the order they were read, one entry per distinct message.
    order: Vec<String>,
}

impl Facts {
    /// Whether `fact` happened.
    pub fn has(&self, fact: &str) -> bool {
        self.counts.contains_key(fact)
    }

    /// How many times `fact` happened (distinct message ids).
    pub fn count(&self, fact: &str) -> u32 {
        self.counts.get(fact).copied().unwrap_or(0)
    }

    /// The facts in the order they were read.
    pub fn sequence(&self) -> &[String] {
        &self.order
    }
}

/// Decides whether an entity's facts make a terminal state; `Err` says why not.
type TerminalFn = dyn Fn(&Facts) -> Result<(), String> + Send + Sync;

/// A state machine described by its [`Rule`]s and a terminal predicate.
#[derive(Clone)]
pub struct Lifecycle {
    /// The rule of each fact, by name; a fact without a rule is a violation.
    rules: HashMap<String, Rule>,
    /// Whether an entity is done after quiescence.
    terminal: Arc<TerminalFn>,
}

impl fmt::Debug for Lifecycle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lifecycle")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

impl Default for Lifecycle {
    fn default() -> Lifecycle {
        Lifecycle::new()
    }
}

impl Lifecycle {
    /// A machine with no rules, whose every entity is terminal.
    pub fn new() -> Lifecycle {
        Lifecycle {
            rules: HashMap::new(),
            terminal: Arc::new(|_| Ok(())),
        }
    }

    /// Adds the rule of one fact.
    pub fn rule(mut self, rule: Rule) -> Lifecycle {
        self.rules.insert(rule.fact.clone(), rule);
        self
    }

    /// Sets the terminal predicate: `Ok` when an entity is done, `Err(why not)` otherwise.
    pub fn terminal(
        mut self,
        predicate: impl Fn(&Facts) -> Result<(), String> + Send + Sync + 'static,
    ) -> Lifecycle {
        self.terminal = Arc::new(predicate);
        self
    }

    /// An empty history to record facts into.
    pub fn history(&self) -> LifecycleHistory {
        LifecycleHistory {
            machine: self.clone(),
            entities: BTreeMap::new(),
            seen_ids: HashSet::new(),
            copies: 0,
        }
    }
}

/// One broken rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// The entity.
    pub entity: String,
    /// The fact that should not have happened (then).
    pub fact: String,
    /// Why, in words.
    pub why: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {} {}", self.entity, self.fact, self.why)
    }
}

/// What [`LifecycleHistory::check`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LifecycleReport {
    /// Entities seen.
    pub entities: usize,
    /// Distinct messages read.
    pub facts: usize,
    /// Messages read again with an id already seen (redeliveries, relay re-publishes).
    pub copies: usize,
    /// Repeats of repeatable facts (new ids), by fact.
    pub repeats: BTreeMap<String, u32>,
    /// Broken rules: must be empty.
    pub violations: Vec<Violation>,
    /// Entities not in a terminal state, with why: must be empty after quiescence.
    pub not_terminal: Vec<(String, String)>,
}

impl LifecycleReport {
    /// No violation and every entity terminal.
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty() && self.not_terminal.is_empty()
    }
}

impl fmt::Display for LifecycleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} entities, {} facts, {} copies, repeats {:?}, {} violations, {} not terminal",
            self.entities,
            self.facts,
            self.copies,
            self.repeats,
            self.violations.len(),
            self.not_terminal.len()
        )?;
        for v in self.violations.iter().take(10) {
            write!(f, "\n  violation: {v}")?;
        }
        for (entity, why) in self.not_terminal.iter().take(10) {
            write!(f, "\n  not terminal: {entity}: {why}")?;
        }
        Ok(())
    }
}

/// Facts recorded per entity, in the order they were read back.
#[derive(Debug)]
pub struct LifecycleHistory {
    /// The machine to check against.
    machine: Lifecycle,
    /// Each entity's facts.
    entities: BTreeMap<String, Facts>,
    /// Message ids seen, to tell a copy from a new message.
    seen_ids: HashSet<String>,
    /// Copies skipped.
    copies: usize,
}

impl LifecycleHistory {
    /// Records that message `id` says `fact` about `entity`. Returns whether it was new
    /// (`false`: a copy of a message already recorded).
    pub fn record(
        &mut self,
        entity: impl Into<String>,
        id: impl Into<String>,
        fact: impl Into<String>,
    ) -> bool {
        if !self.seen_ids.insert(id.into()) {
            self.copies += 1;
            return false;
        }
        let facts = self.entities.entry(entity.into()).or_default();
        let fact = fact.into();
        *facts.counts.entry(fact.clone()).or_default() += 1;
        facts.order.push(fact);
        true
    }

    /// Replays every entity's facts through the rules, then asks the terminal predicate.
    pub fn check(&self) -> LifecycleReport {
        let mut report = LifecycleReport {
            entities: self.entities.len(),
            facts: self.seen_ids.len(),
            copies: self.copies,
            ..LifecycleReport::default()
        };
        for (entity, facts) in &self.entities {
            let mut seen: BTreeMap<&str, u32> = BTreeMap::new();
            let mut violate = |fact: &str, why: String| {
                report.violations.push(Violation {
                    entity: entity.clone(),
                    fact: fact.to_owned(),
                    why,
                });
            };
            for fact in &facts.order {
                let Some(rule) = self.machine.rules.get(fact) else {
                    violate(fact, "is not a fact of this machine".to_owned());
                    continue;
                };
                let n = seen.get(fact.as_str()).copied().unwrap_or(0);
                if rule.at_most.is_some_and(|max| n >= max) {
                    let max = rule.at_most.unwrap_or(0);
                    if rule.repeatable {
                        *report.repeats.entry(fact.clone()).or_default() += 1;
                    } else {
                        violate(fact, format!("happened more than {max} time(s)"));
                    }
                    continue;
                }
                for before in &rule.after_all {
                    if !seen.contains_key(before.as_str()) {
                        violate(fact, format!("came before {before}"));
                    }
                }
                for group in &rule.after_any {
                    if !group.iter().any(|g| seen.contains_key(g.as_str())) {
                        violate(fact, format!("came before any of {}", group.join(", ")));
                    }
                }
                for other in &rule.excludes {
                    if seen.contains_key(other.as_str()) {
                        violate(fact, format!("happened after {other}, which excludes it"));
                    }
                }
                *seen.entry(fact.as_str()).or_default() += 1;
            }
            if let Err(why) = (self.machine.terminal)(facts) {
                report.not_terminal.push((entity.clone(), why));
            }
        }
        report
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn machine() -> Lifecycle {
        Lifecycle::new()
            .rule(Rule::new("accepted").once())
            .rule(
                Rule::new("paid")
                    .after("accepted")
                    .once()
                    .excludes("declined"),
            )
            .rule(Rule::new("declined").after("accepted").once())
            .rule(Rule::new("ready").after("paid").repeatable())
            .rule(
                Rule::new("cancelled")
                    .after("accepted")
                    .after_any(["declined"])
                    .once(),
            )
            .terminal(|f| {
                if f.has("ready") || f.has("cancelled") {
                    Ok(())
                } else {
                    Err(format!("stopped at {:?}", f.sequence().last()))
                }
            })
    }

    #[test]
    fn an_allowed_life_is_valid_and_copies_are_counted_once() {
        let mut h = machine().history();
        assert!(h.record("o1", "1", "accepted"));
        assert!(h.record("o1", "2", "paid"));
        assert!(!h.record("o1", "2", "paid"), "same id: a copy");
        assert!(h.record("o1", "3", "ready"));
        assert!(h.record("o1", "4", "ready"), "a repeat with a new id");
        h.record("o2", "5", "accepted");
        h.record("o2", "6", "declined");
        h.record("o2", "7", "cancelled");
        let r = h.check();
        assert!(r.is_valid(), "{r}");
        assert_eq!((r.entities, r.facts, r.copies), (2, 7, 1));
        assert_eq!(r.repeats.get("ready"), Some(&1));
    }

    #[test]
    fn out_of_order_repeated_and_excluded_facts_are_violations() {
        let mut h = machine().history();
        h.record("o1", "1", "paid"); // before accepted
        h.record("o1", "2", "accepted");
        h.record("o1", "3", "paid"); // twice
        h.record("o2", "4", "accepted");
        h.record("o2", "5", "declined");
        h.record("o2", "6", "paid"); // excluded by declined
        h.record("o3", "7", "accepted");
        h.record("o3", "8", "cancelled"); // without a reason
        h.record("o4", "9", "accepted"); // never ends
        h.record("o4", "10", "teleported"); // unknown fact
        let r = h.check();
        let whats: Vec<String> = r.violations.iter().map(ToString::to_string).collect();
        assert_eq!(r.violations.len(), 5, "{whats:#?}");
        assert!(whats[0].contains("o1: paid came before accepted"));
        assert!(whats[1].contains("o1: paid happened more than 1"));
        assert!(whats[2].contains("o2: paid happened after declined"));
        assert!(whats[3].contains("o3: cancelled came before any of declined"));
        assert!(whats[4].contains("o4: teleported is not a fact"));
        let stuck: Vec<&str> = r.not_terminal.iter().map(|(e, _)| e.as_str()).collect();
        assert_eq!(stuck, ["o1", "o2", "o4"]);
        assert!(!r.is_valid());
    }
}
