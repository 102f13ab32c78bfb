//! The effects checker of RELIABILITY.md: exactly one effect per (consumer group, message id).
//!
//! A consumer with an inbox promises effectively-once effects: however often a message is
//! delivered (redelivery after a crash, a pause past the ack deadline, a republish), its
//! effect is applied once. The test records every effect it can read back (rows of an effects
//! table, written in the handler's transaction) and the messages that were expected to take
//! effect; the checker reports ids with more than one effect (**duplicated**), expected ids
//! with none (**missing**) and effects for ids nobody expected (**unexpected**). All three
//! must be empty.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A (consumer group, message id) pair.
pub type Key = (String, String);

/// The outcome of an effects-checker run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EffectsReport {
    /// How many (group, id) pairs were expected.
    pub expected: usize,
    /// How many effects were read.
    pub effects: usize,
    /// Pairs with more than one effect, and how many they had: a broken promise.
    pub duplicated: BTreeMap<Key, usize>,
    /// Expected pairs with no effect: a lost message.
    pub missing: BTreeSet<Key>,
    /// Effects for pairs never expected (a poison message that took effect, invented data).
    pub unexpected: BTreeSet<Key>,
}

impl EffectsReport {
    /// Whether every expected pair had exactly one effect and nothing else happened.
    pub fn is_valid(&self) -> bool {
        self.duplicated.is_empty() && self.missing.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for EffectsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "expected {}, effects {}, duplicated {}, missing {}, unexpected {}",
            self.expected,
            self.effects,
            self.duplicated.len(),
            self.missing.len(),
            self.unexpected.len()
        )?;
        if let Some(((g, id), n)) = self.duplicated.iter().next() {
            write!(f, " (first duplicated: {g}/{id} x{n})")?;
        }
        if let Some((g, id)) = self.missing.iter().next() {
            write!(f, " (first missing: {g}/{id})")?;
        }
        if let Some((g, id)) = self.unexpected.iter().next() {
            write!(f, " (first unexpected: {g}/{id})")?;
        }
        Ok(())
    }
}

/// Checks `effects` (one item per effect read back, duplicates included) against the
/// `expected` (group, id) pairs.
pub fn check<X, XG, XI, E, EG, EI>(expected: X, effects: E) -> EffectsReport
where
    X: IntoIterator<Item = (XG, XI)>,
    XG: Into<String>,
    XI: Into<String>,
    E: IntoIterator<Item = (EG, EI)>,
    EG: Into<String>,
    EI: Into<String>,
{
    let expected: BTreeSet<Key> = expected
        .into_iter()
        .map(|(g, i)| (g.into(), i.into()))
        .collect();
    let mut counts: BTreeMap<Key, usize> = BTreeMap::new();
    let mut total = 0;
    for (g, i) in effects {
        *counts.entry((g.into(), i.into())).or_default() += 1;
        total += 1;
    }
    EffectsReport {
        expected: expected.len(),
        effects: total,
        duplicated: counts
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(k, n)| (k.clone(), *n))
            .collect(),
        missing: expected
            .iter()
            .filter(|k| !counts.contains_key(*k))
            .cloned()
            .collect(),
        unexpected: counts
            .keys()
            .filter(|k| !expected.contains(*k))
            .cloned()
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_duplicated_missing_and_unexpected_effects() {
        let expected = [("pay", "a"), ("pay", "b"), ("pay", "c"), ("kitchen", "a")];
        let effects = [
            ("pay", "a"),
            ("pay", "a"),
            ("pay", "b"),
            ("kitchen", "a"),
            ("pay", "zz"),
        ];
        let report = check(expected, effects);
        assert_eq!(report.expected, 4);
        assert_eq!(report.effects, 5);
        assert_eq!(
            report.duplicated,
            BTreeMap::from([(("pay".to_owned(), "a".to_owned()), 2)])
        );
        assert_eq!(
            report.missing,
            BTreeSet::from([("pay".to_owned(), "c".to_owned())])
        );
        assert_eq!(
            report.unexpected,
            BTreeSet::from([("pay".to_owned(), "zz".to_owned())])
        );
        assert!(!report.is_valid());
        assert!(report.to_string().contains("first duplicated: pay/a x2"));
    }

    #[test]
    fn exactly_one_effect_per_pair_is_valid() {
        let report = check([("g", "1"), ("h", "1")], [("h", "1"), ("g", "1")]);
        assert!(report.is_valid(), "{report}");
    }
}
