//! Recorded histories and the set checker from RELIABILITY.md.
//!
//! Each write is recorded as attempted, then as acknowledged (it happened) or not; at the end
//! the test reads everything back. The checker reports values that were acknowledged but not
//! read (**lost**: must be empty) and values read but never attempted (**unexpected**: must be
//! empty). Values attempted but unacknowledged may or may not be read (**recovered**): both
//! are allowed, because a crash can interrupt an operation after it took effect.

use std::collections::BTreeSet;
use std::fmt;

/// The outcome of a set-checker run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetReport {
    /// Acknowledged but not read back: a broken promise.
    pub lost: BTreeSet<String>,
    /// Read back but never attempted: invented data.
    pub unexpected: BTreeSet<String>,
    /// Read back although the write's outcome was unknown: allowed.
    pub recovered: BTreeSet<String>,
    /// How many values were acknowledged.
    pub acknowledged: usize,
}

impl SetReport {
    /// Whether nothing was lost and nothing invented.
    pub fn is_valid(&self) -> bool {
        self.lost.is_empty() && self.unexpected.is_empty()
    }
}

impl fmt::Display for SetReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "acknowledged {}, lost {}, unexpected {}, recovered {}",
            self.acknowledged,
            self.lost.len(),
            self.unexpected.len(),
            self.recovered.len()
        )?;
        if let Some(first) = self.lost.iter().next() {
            write!(f, " (first lost: {first})")?;
        }
        if let Some(first) = self.unexpected.iter().next() {
            write!(f, " (first unexpected: {first})")?;
        }
        Ok(())
    }
}

/// Records attempted and acknowledged writes.
#[derive(Clone, Debug, Default)]
pub struct SetHistory {
    /// Every value a writer tried to write.
    attempted: BTreeSet<String>,
    /// The values whose write returned Ok.
    acknowledged: BTreeSet<String>,
}

impl SetHistory {
    /// An empty history.
    pub fn new() -> SetHistory {
        SetHistory::default()
    }

    /// Records that a write of `value` was invoked.
    pub fn attempt(&mut self, value: impl Into<String>) {
        self.attempted.insert(value.into());
    }

    /// Records that the write of `value` returned Ok (also counts as attempted).
    pub fn ack(&mut self, value: impl Into<String>) {
        let value = value.into();
        self.attempted.insert(value.clone());
        self.acknowledged.insert(value);
    }

    /// Checks the values read back against the history.
    pub fn check<I, S>(&self, read: I) -> SetReport
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let read: BTreeSet<String> = read.into_iter().map(Into::into).collect();
        SetReport {
            lost: self.acknowledged.difference(&read).cloned().collect(),
            unexpected: read.difference(&self.attempted).cloned().collect(),
            recovered: read
                .iter()
                .filter(|v| self.attempted.contains(*v) && !self.acknowledged.contains(*v))
                .cloned()
                .collect(),
            acknowledged: self.acknowledged.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_lost_unexpected_and_recovered() {
        let mut h = SetHistory::new();
        h.ack("a");
        h.ack("b");
        h.attempt("c");
        h.attempt("d");
        let report = h.check(["a", "c", "zz"]);
        assert_eq!(report.lost, BTreeSet::from(["b".to_owned()]));
        assert_eq!(report.unexpected, BTreeSet::from(["zz".to_owned()]));
        assert_eq!(report.recovered, BTreeSet::from(["c".to_owned()]));
        assert!(!report.is_valid());
        assert!(h.check(["a", "b", "d"]).is_valid());
    }
}
