//! Recorded histories and the set and request checkers from RELIABILITY.md.
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

/// The outcome of a request-checker run (RELIABILITY.md): every request has exactly one
/// outcome, within its deadline plus a slack.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestReport {
    /// Requests sent.
    pub sent: usize,
    /// Requests that ended with a reply.
    pub replied: usize,
    /// Requests that ended as timed out.
    pub timed_out: usize,
    /// Sent but never ended: a hang.
    pub missing: BTreeSet<String>,
    /// Ended more than once: a duplicate delivery.
    pub duplicated: BTreeSet<String>,
    /// An outcome for a request never sent: a misdelivered or forged reply.
    pub unexpected: BTreeSet<String>,
    /// Timed out later than deadline + slack: the timeout did not hold.
    pub overdue: BTreeSet<String>,
    /// Replied although the reply was recorded after the deadline: a late reply delivered.
    pub late_delivered: BTreeSet<String>,
}

impl RequestReport {
    /// Whether every request ended exactly once, in time, with nothing late delivered.
    pub fn is_valid(&self) -> bool {
        self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.unexpected.is_empty()
            && self.overdue.is_empty()
            && self.late_delivered.is_empty()
    }
}

impl fmt::Display for RequestReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "sent {}, replied {}, timed out {}, missing {}, duplicated {}, unexpected {}, overdue {}, late delivered {}",
            self.sent,
            self.replied,
            self.timed_out,
            self.missing.len(),
            self.duplicated.len(),
            self.unexpected.len(),
            self.overdue.len(),
            self.late_delivered.len()
        )?;
        for (what, set) in [
            ("missing", &self.missing),
            ("duplicated", &self.duplicated),
            ("unexpected", &self.unexpected),
            ("overdue", &self.overdue),
            ("late delivered", &self.late_delivered),
        ] {
            if let Some(first) = set.iter().next() {
                write!(f, " (first {what}: {first})")?;
            }
        }
        Ok(())
    }
}

/// How a request ended, as recorded by the reply handler.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestEnd {
    /// A reply (response or typed refusal) was delivered.
    Replied,
    /// A timeout was delivered.
    TimedOut,
}

/// Records requests (with their deadlines) and their outcomes (with the time they were
/// delivered), all in the caller's milliseconds.
#[derive(Clone, Debug, Default)]
pub struct RequestHistory {
    /// Deadline of every request sent, by id.
    sent: std::collections::BTreeMap<String, i64>,
    /// Every outcome delivered: id, how, when.
    ended: Vec<(String, RequestEnd, i64)>,
}

impl RequestHistory {
    /// An empty history.
    pub fn new() -> RequestHistory {
        RequestHistory::default()
    }

    /// Records that request `id` was sent (acknowledged) with a deadline.
    pub fn sent(&mut self, id: impl Into<String>, deadline_ms: i64) {
        self.sent.insert(id.into(), deadline_ms);
    }

    /// Records an outcome delivered for `id` at `at_ms`.
    pub fn ended(&mut self, id: impl Into<String>, how: RequestEnd, at_ms: i64) {
        self.ended.push((id.into(), how, at_ms));
    }

    /// Checks the history; `slack_ms` is how long after its deadline a timeout may come.
    /// A reply delivered after deadline + slack counts as late delivered.
    pub fn check(&self, slack_ms: i64) -> RequestReport {
        let mut report = RequestReport {
            sent: self.sent.len(),
            ..RequestReport::default()
        };
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        for (id, how, at) in &self.ended {
            let Some(deadline) = self.sent.get(id) else {
                report.unexpected.insert(id.clone());
                continue;
            };
            if !seen.insert(id) {
                report.duplicated.insert(id.clone());
                continue;
            }
            match how {
                RequestEnd::Replied => {
                    report.replied += 1;
                    if *at > deadline + slack_ms {
                        report.late_delivered.insert(id.clone());
                    }
                }
                RequestEnd::TimedOut => {
                    report.timed_out += 1;
                    if *at > deadline + slack_ms {
                        report.overdue.insert(id.clone());
                    }
                }
            }
        }
        report.missing = self
            .sent
            .keys()
            .filter(|id| !seen.contains(id.as_str()))
            .cloned()
            .collect();
        report
    }
}

#[cfg(test)]
mod request_tests {
    use super::*;

    #[test]
    fn reports_missing_duplicated_unexpected_and_overdue() {
        let mut h = RequestHistory::new();
        h.sent("a", 100);
        h.sent("b", 100);
        h.sent("c", 100);
        h.sent("d", 100);
        h.ended("a", RequestEnd::Replied, 50);
        h.ended("b", RequestEnd::TimedOut, 120);
        h.ended("b", RequestEnd::Replied, 130);
        h.ended("c", RequestEnd::TimedOut, 500);
        h.ended("zz", RequestEnd::Replied, 10);
        let r = h.check(50);
        assert_eq!(r.missing, BTreeSet::from(["d".to_owned()]));
        assert_eq!(r.duplicated, BTreeSet::from(["b".to_owned()]));
        assert_eq!(r.unexpected, BTreeSet::from(["zz".to_owned()]));
        assert_eq!(r.overdue, BTreeSet::from(["c".to_owned()]));
        assert!(!r.is_valid());
        let mut ok = RequestHistory::new();
        ok.sent("a", 100);
        ok.ended("a", RequestEnd::TimedOut, 110);
        assert!(ok.check(50).is_valid());
    }
}
