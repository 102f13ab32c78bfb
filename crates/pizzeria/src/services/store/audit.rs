//! The cross-check of the effects: [`Audit`] reads the ledger and the reservations back and
//! tallies them per order against what the one-transaction-per-event design promises (at most
//! one charge and one refund, a refund only of a charge; at most one reservation and one
//! release, a release only of a reservation). The tallies come from the rows, not from the
//! services' counters, so a duplicate effect that got through shows here even when every
//! service believes it handled each event once; the tests that kill and restart services
//! assert on it.

use tabgrab::Error;

use super::{Db, Store, kind, storage};

impl Store {
    /// Reads the ledger and the reservations back and checks them: exactly one charge per
    /// charged order, at most one refund and only of a charge, at most one reservation and one
    /// release per order and a release only of a reservation.
    pub async fn audit(&self) -> Result<Audit, Error> {
        /// One ledger or reservation row: the order and what happened to it.
        type Row = (String, String);
        let (payments, reservations): (Vec<Row>, Vec<Row>) = on_db!(self.db().await?, p => {
            let payments = sqlx::query_as(
                "SELECT order_id, kind FROM pizzeria_payment_ledger ORDER BY seq",
            )
            .fetch_all(&p.pool)
            .await
            .map_err(storage("read the ledger"))?;
            let reservations = sqlx::query_as(
                "SELECT order_id, kind FROM pizzeria_inventory_reservations ORDER BY seq",
            )
            .fetch_all(&p.pool)
            .await
            .map_err(storage("read the reservations"))?;
            (payments, reservations)
        });
        Ok(Audit::of(&payments, &reservations))
    }
}

/// What [`Store::audit`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Orders charged.
    pub charged: u64,
    /// Orders refunded.
    pub refunded: u64,
    /// Orders whose ingredients were reserved.
    pub reserved: u64,
    /// Orders whose ingredients were released.
    pub released: u64,
    /// Broken promises, one line each: must be empty.
    pub violations: Vec<String>,
}

/// An effect and the one that undoes it (a charge and its refund, a reservation and its
/// release): each at most once per order, and no undoing without the effect before it.
struct Pair {
    done: &'static str,
    undone: &'static str,
    done_word: &'static str,
    undone_word: &'static str,
    before: &'static str,
    table: &'static str,
}

impl Pair {
    /// Counts the orders with the effect and with its undoing; adds the broken rules to
    /// `violations`.
    fn tally(&self, rows: &[(String, String)], violations: &mut Vec<String>) -> (u64, u64) {
        use std::collections::HashMap;
        let mut per_order: HashMap<&str, (u32, u32)> = HashMap::new();
        for (order, k) in rows {
            let entry = per_order.entry(order.as_str()).or_default();
            if k == self.done {
                entry.0 += 1;
            } else if k == self.undone {
                if entry.0 == 0 {
                    violations.push(format!(
                        "order {order}: {} without {} before",
                        self.undone_word, self.before
                    ));
                }
                entry.1 += 1;
            } else {
                violations.push(format!("order {order}: unknown {} row {k:?}", self.table));
            }
        }
        let (mut done, mut undone) = (0, 0);
        for (order, (n_done, n_undone)) in &per_order {
            done += u64::from(*n_done > 0);
            undone += u64::from(*n_undone > 0);
            if *n_done > 1 {
                violations.push(format!("order {order}: {} {n_done} times", self.done_word));
            }
            if *n_undone > 1 {
                violations.push(format!(
                    "order {order}: {} {n_undone} times",
                    self.undone_word
                ));
            }
        }
        (done, undone)
    }
}

impl Audit {
    /// Checks rows (order id, kind) of the ledger and of the reservations, in order.
    pub fn of(payments: &[(String, String)], reservations: &[(String, String)]) -> Audit {
        let mut audit = Audit::default();
        let payment = Pair {
            done: kind::CHARGE,
            undone: kind::REFUND,
            done_word: "charged",
            undone_word: "refunded",
            before: "a charge",
            table: "ledger",
        };
        (audit.charged, audit.refunded) = payment.tally(payments, &mut audit.violations);
        let inventory = Pair {
            done: kind::RESERVE,
            undone: kind::RELEASE,
            done_word: "reserved",
            undone_word: "released",
            before: "a reservation",
            table: "reservation",
        };
        (audit.reserved, audit.released) = inventory.tally(reservations, &mut audit.violations);
        audit.violations.sort();
        audit
    }

    /// No violation.
    pub fn is_valid(&self) -> bool {
        self.violations.is_empty()
    }
}

impl std::fmt::Display for Audit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} charged, {} refunded, {} reserved, {} released, {} violations",
            self.charged,
            self.refunded,
            self.reserved,
            self.released,
            self.violations.len()
        )?;
        for v in self.violations.iter().take(10) {
            write!(f, "\n  {v}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_finds_double_charges_and_refunds_without_a_charge() {
        let row = |o: &str, k: &str| (o.to_owned(), k.to_owned());
        let good = Audit::of(
            &[row("a", "charge"), row("b", "charge"), row("b", "refund")],
            &[
                row("a", "reserve"),
                row("c", "reserve"),
                row("c", "release"),
            ],
        );
        assert!(good.is_valid(), "{good}");
        assert_eq!(
            (good.charged, good.refunded, good.reserved, good.released),
            (2, 1, 2, 1)
        );
        let bad = Audit::of(
            &[
                row("a", "charge"),
                row("a", "charge"),
                row("b", "refund"),
                row("a", "refund"),
                row("a", "refund"),
            ],
            &[
                row("c", "release"),
                row("d", "reserve"),
                row("d", "reserve"),
            ],
        );
        assert_eq!(
            bad.violations,
            [
                "order a: charged 2 times",
                "order a: refunded 2 times",
                "order b: refunded without a charge before",
                "order c: released without a reservation before",
                "order d: reserved 2 times",
            ],
            "{bad}"
        );
    }
}
