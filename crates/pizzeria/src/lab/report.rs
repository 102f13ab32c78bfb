//! The lab's report: every figure, and the comparison table derived from them.
//!
//! The table is built from the figures only: each cell holds the figures that decide it and
//! the verdict the scenario module derived from them (never a constant), so a machine where
//! a style behaved otherwise would print another verdict. The same [`Table`] is printed,
//! written to `lab.json` and drawn in `lab.html`, so the three always agree.

use serde::{Deserialize, Serialize};

use super::availability::AvailabilityFigures;
use super::blocking::{BlockingFigures, Caller};
use super::capacity::CapacityFigures;
use super::response::ResponseFigures;
use crate::run::Style;

/// The machine the lab ran on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Host name.
    pub hostname: String,
    /// CPUs available to the process.
    pub cpus: usize,
    /// `uname -sr`-like kernel name and release.
    pub kernel: String,
    /// The CPU model, where /proc/cpuinfo tells it.
    pub cpu_model: String,
}

impl Machine {
    /// Reads the machine's description.
    pub fn read() -> Machine {
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .map(|s| s.trim().to_owned())
                .unwrap_or_default()
        };
        let cpu_model = read("/proc/cpuinfo")
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Machine {
            hostname: read("/proc/sys/kernel/hostname"),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            kernel: format!(
                "{} {}",
                read("/proc/sys/kernel/ostype"),
                read("/proc/sys/kernel/osrelease")
            ),
            cpu_model,
        }
    }
}

/// The broker the lab ran on, as it described itself when the lab started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BusReport {
    /// `nats` or `amqp`.
    pub engine: String,
    /// The URL, its credentials redacted.
    pub url: String,
    /// The server's version, where the engine reports it (NATS does; RabbitMQ's is not read).
    pub server_version: Option<String>,
    /// What an acknowledged publish means there (storage, replicas, fsync), as the engine
    /// reports it.
    pub details: Vec<String>,
}

impl BusReport {
    /// Connects to `url` and reads its start-up report; fails with a clear error if the
    /// broker does not answer.
    pub async fn read(url: &str) -> Result<BusReport, crate::Error> {
        let connection = crate::namespace::connect(url).await?;
        let report = connection.bus().report().await.map_err(|e| {
            crate::Error::new(
                crate::ErrorKind::Bus,
                format!("the broker at {} did not describe itself", shown(url)),
            )
            .with_source(e)
        })?;
        Ok(BusReport {
            engine: report.engine,
            url: shown(url),
            server_version: report.server_version,
            details: report.details,
        })
    }
}

/// `url` with its credentials redacted.
fn shown(url: &str) -> String {
    tabgrab::SecretUrl::new(url).redacted().to_owned()
}

/// One cell of the table: the deciding figures and the verdict derived from them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cell {
    /// The figures, as printed.
    pub figures: String,
    /// The verdict, as printed (`yes`, `no`, `not faster`, …).
    pub verdict: String,
}

/// One row: a question and a cell per column.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// The question the row answers.
    pub question: String,
    /// One per column; empty figures where the column does not apply.
    pub cells: Vec<Cell>,
}

/// The comparison table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// The column heads: the three styles and the blocking baseline.
    pub columns: Vec<String>,
    /// The rows.
    pub rows: Vec<Row>,
}

/// Everything the lab measured.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabReport {
    /// The customers' seed.
    pub seed: u64,
    /// Whether this was the reduced `--quick` lab.
    pub quick: bool,
    /// The engine of the messaging and events styles: `embedded`, `nats` or `amqp`.
    pub bus: String,
    /// The broker, as it described itself (none on the embedded bus).
    #[serde(default)]
    pub bus_report: Option<BusReport>,
    /// On a broker: the prefix of every namespace the run used (`lab-<pid>-<random>`; each
    /// trial's is `<prefix>-<trial>`), all deleted at the end.
    #[serde(default)]
    pub namespace: Option<String>,
    /// How long the calls style's circuit breakers stayed open before a probe, in seconds.
    #[serde(default)]
    pub breaker_open_for_s: f64,
    /// The machine.
    pub machine: Machine,
    /// pizzeria's version.
    pub version: String,
    /// The compiler that built this binary (`rustc --version`, recorded at build time).
    #[serde(default)]
    pub rustc: String,
    /// When the lab started, RFC 3339.
    pub started_at: String,
    /// The lab's wall time, in seconds.
    pub wall_time_s: f64,
    /// Blocking, per caller.
    pub blocking: Vec<BlockingFigures>,
    /// Availability, per style and service down.
    pub availability: Vec<AvailabilityFigures>,
    /// Response expected, per style.
    pub response: Vec<ResponseFigures>,
    /// Capacity, per style.
    pub capacity: Vec<CapacityFigures>,
    /// The comparison table, derived from the figures above.
    pub table: Table,
}

const STYLES: [Style; 3] = [Style::Calls, Style::Messaging, Style::Events];

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_owned()
}

fn empty() -> Cell {
    Cell {
        figures: String::new(),
        verdict: String::new(),
    }
}

/// Builds the table from the figures.
pub(crate) fn table(
    blocking: &[BlockingFigures],
    availability: &[AvailabilityFigures],
    response: &[ResponseFigures],
    capacity: &[CapacityFigures],
) -> Table {
    let mut columns: Vec<String> = STYLES.iter().map(|s| s.as_str().to_owned()).collect();
    columns.push("baseline (thread per call)".to_owned());
    let callers = [
        Caller::Calls,
        Caller::Messaging,
        Caller::Events,
        Caller::Baseline,
    ];
    let mut rows = Vec::new();
    rows.push(Row {
        question: "caller's thread blocked".to_owned(),
        cells: callers
            .iter()
            .map(|c| match blocking.iter().find(|b| b.caller == *c) {
                Some(b) => Cell {
                    figures: format!(
                        "{} threads for {} in flight, {:.2} s, {:.0} MiB",
                        b.probe.peak_threads, b.n, b.probe.wall_s, b.probe.peak_rss_mib
                    ),
                    verdict: yes_no(b.blocks_a_thread_per_request),
                },
                None => empty(),
            })
            .collect(),
    });
    for down in ["kitchen", "payment"] {
        let mut cells: Vec<Cell> = STYLES
            .iter()
            .map(|s| {
                match availability
                    .iter()
                    .find(|a| a.style == *s && a.down == down)
                {
                    Some(a) => Cell {
                        figures: format!(
                            "{:.1} s down: {} of {} accepted, {} failed, {} lost{}",
                            a.outage_s,
                            a.accepted_during_outage,
                            a.offered_during_outage,
                            a.failed,
                            a.lost,
                            a.recovery_s.map_or_else(
                                || ", none made after restart".to_owned(),
                                |r| match a.breaker_wait_s {
                                    Some(w) if w > 0.0 => format!(
                                        ", recovered in {r:.2} s ({w:.2} s of it the breaker's wait)"
                                    ),
                                    _ => format!(", recovered in {r:.2} s"),
                                }
                            )
                        ),
                        verdict: yes_no(a.recipient_must_be_up),
                    },
                    None => empty(),
                }
            })
            .collect();
        cells.push(empty());
        rows.push(Row {
            question: format!("recipient must be up ({down})"),
            cells,
        });
    }
    let mut cells: Vec<Cell> = STYLES
        .iter()
        .map(|s| match response.iter().find(|r| r.style == *s) {
            Some(r) => Cell {
                figures: format!(
                    "{:.1} responses, {:.1} correlation records per order, {} timeouts, work open p50 {:.1} ms",
                    r.responses_per_order,
                    r.correlation_records_per_order,
                    r.timeouts,
                    r.work_open.p50_ms
                ),
                verdict: yes_no(r.response_expected),
            },
            None => empty(),
        })
        .collect();
    cells.push(empty());
    rows.push(Row {
        question: "sender expects a response".to_owned(),
        cells,
    });
    let mut cells: Vec<Cell> = STYLES
        .iter()
        .map(|s| match capacity.iter().find(|c| c.style == *s) {
            Some(c) => Cell {
                figures: format!(
                    "{:.0} made/s of a {:.0}/s ceiling ({:.0}/s offered, {:.0}/s accepted)",
                    c.completed_per_s, c.ceiling_per_s, c.offered_per_s, c.accepted_per_s
                ),
                verdict: if c.faster_than_the_kitchen {
                    "faster".to_owned()
                } else {
                    "not faster".to_owned()
                },
            },
            None => empty(),
        })
        .collect();
    cells.push(empty());
    rows.push(Row {
        question: "makes the kitchen faster".to_owned(),
        cells,
    });
    Table { columns, rows }
}

/// Wraps `text` into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    for word in text.split(' ') {
        if !line.is_empty() && line.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut line));
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(word);
    }
    if !line.is_empty() {
        lines.push(line);
    }
    lines
}

impl LabReport {
    /// The report as text for people: a heading and the table, each cell its figures then
    /// `→ verdict`.
    pub fn render(&self) -> String {
        let width = 30;
        let first = 26;
        let mut out = format!(
            "pizzeria lab, bus: {}, seed {}{}, {:.0} s, {} CPUs\n\n",
            self.bus_label(),
            self.seed,
            if self.quick { ", quick" } else { "" },
            self.wall_time_s,
            self.machine.cpus
        );
        let sep = {
            let mut s = format!("+{}", "-".repeat(first + 2));
            for _ in &self.table.columns {
                s.push_str(&format!("+{}", "-".repeat(width + 2)));
            }
            s.push_str("+\n");
            s
        };
        out.push_str(&sep);
        let corner = format!("on {}", self.bus);
        out.push_str(&format!("| {corner:<first$} "));
        for c in &self.table.columns {
            out.push_str(&format!("| {c:<width$} "));
        }
        out.push_str("|\n");
        out.push_str(&sep);
        for row in &self.table.rows {
            let cells: Vec<Vec<String>> = row
                .cells
                .iter()
                .map(|c| {
                    let mut lines = wrap(&c.figures, width);
                    if !c.verdict.is_empty() {
                        lines.push(format!("→ {}", c.verdict));
                    }
                    lines
                })
                .collect();
            let question = wrap(&row.question, first);
            let height = cells
                .iter()
                .map(Vec::len)
                .chain([question.len()])
                .max()
                .unwrap_or(1);
            for i in 0..height {
                let q = question.get(i).map_or("", String::as_str);
                out.push_str(&format!("| {q:<first$} "));
                for cell in &cells {
                    let text = cell.get(i).map_or("", String::as_str);
                    out.push_str(&format!("| {text:<width$} "));
                }
                out.push_str("|\n");
            }
            out.push_str(&sep);
        }
        for note in self.notes() {
            for (i, line) in wrap(&note, 100).into_iter().enumerate() {
                out.push_str(if i == 0 { "* " } else { "  " });
                out.push_str(&line);
                out.push('\n');
            }
        }
        out
    }

    /// The bus in words: `embedded`, or the engine with its server version and URL.
    pub fn bus_label(&self) -> String {
        match &self.bus_report {
            None => self.bus.clone(),
            Some(b) => format!(
                "{} (server {}, {})",
                b.engine,
                b.server_version
                    .as_deref()
                    .unwrap_or("version not reported"),
                b.url
            ),
        }
    }

    /// What the table's figures mean where that is not obvious, for the text and the HTML.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.bus != "embedded" {
            notes.push(format!(
                "messaging and events ran on {}; calls talk HTTP and use no bus, so their column is the same measurement on every bus",
                self.bus
            ));
        }
        notes.push(
            "work open: from the order reaching the front desk's HTTP server until the front desk holds nothing for it: calls and events, until its handler answered (events: once the broker acknowledged OrderAccepted); messaging, until the last reply was handled".to_owned(),
        );
        if let Some(worst) = self
            .availability
            .iter()
            .filter_map(|a| Some((a, a.breaker_wait_s?)))
            .max_by(|x, y| x.1.total_cmp(&y.1))
        {
            notes.push(format!(
                "calls' recovery is bounded by the circuit breaker: after the restart it stays open until {:.1} s after its last failed probe (the lab's open period); here up to {:.2} s of a recovery of {:.2} s was that wait ({} down)",
                self.breaker_open_for_s,
                worst.1,
                worst.0.recovery_s.unwrap_or(0.0),
                worst.0.down
            ));
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapping_keeps_every_word_and_the_width() {
        let text = "12 threads for 10000 in flight, 0.27 s, 38 MiB";
        let lines = wrap(text, 20);
        assert!(lines.iter().all(|l| l.chars().count() <= 20), "{lines:?}");
        assert_eq!(lines.join(" "), text);
    }
}
