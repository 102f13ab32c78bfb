//! `lab.html`: the table and the charts in one self-contained file: inline SVG drawn here,
//! no script, no stylesheet or font from the network, so it opens anywhere (a CI artefact,
//! a laptop on a train) and prints.
//!
//! Charts: orders over time through each outage, per style (cumulative accepted, made and
//! failed, the outage shaded); the distribution of the front desk's open work per order
//! (a cumulative distribution on a log scale); peak threads per caller; orders made per
//! second beside the kitchen's ceiling. Every chart is an `<svg class="chart">` with an
//! `id`, which the rendering test looks for.

use std::fmt::Write as _;
use std::path::Path;

use super::report::LabReport;
use crate::error::{Error, ErrorKind};

/// Writes the HTML report of `report` to `path`.
pub fn write(report: &LabReport, path: &Path) -> Result<(), Error> {
    std::fs::write(path, render(report)).map_err(|e| {
        Error::new(ErrorKind::Io, format!("cannot write {}", path.display())).with_source(e)
    })
}

const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#7f7f7f"];
const W: f64 = 520.0;
const H: f64 = 260.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 28.0;
const BOTTOM: f64 = 40.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A line series: its name, and its points.
struct Series {
    name: String,
    points: Vec<(f64, f64)>,
}

/// Round tick steps for a range.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let span = (hi - lo).max(1e-9);
    let raw = span / 5.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| span / s <= 6.0)
        .unwrap_or(mag * 10.0);
    let mut t = (lo / step).ceil() * step;
    let mut out = Vec::new();
    while t <= hi + 1e-9 {
        out.push(t);
        t += step;
    }
    out
}

fn fmt_tick(v: f64) -> String {
    if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A line chart; `log_x` draws x on a log10 scale (values must be > 0); `shade` marks an
/// x interval (the outage).
fn line_chart(
    id: &str,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    shade: Option<(f64, f64)>,
    log_x: bool,
) -> String {
    let tx = |x: f64| if log_x { x.max(1e-3).log10() } else { x };
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| tx(p.0)));
    let (mut x0, mut x1) = xs.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), x| {
        (a.min(x), b.max(x))
    });
    if !x0.is_finite() {
        (x0, x1) = (0.0, 1.0);
    }
    if log_x {
        x0 = x0.floor();
        x1 = x1.ceil().max(x0 + 1.0);
    } else {
        x0 = x0.min(0.0);
        x1 = x1.max(x0 + 1e-3);
    }
    let y1 = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1.0);
    let px = |x: f64| LEFT + (tx(x) - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let pxt = |t: f64| LEFT + (t - x0) / (x1 - x0) * (W - LEFT - RIGHT);
    let py = |y: f64| H - BOTTOM - y / y1 * (H - TOP - BOTTOM);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="chart" id="{id}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"##
    );
    let _ = write!(
        s,
        r##"<text x="{LEFT}" y="16" font-size="13" font-weight="bold">{}</text>"##,
        escape(title)
    );
    if let Some((a, b)) = shade {
        let (xa, xb) = (px(a), px(b));
        let _ = write!(
            s,
            r##"<rect class="outage" x="{xa:.1}" y="{TOP}" width="{:.1}" height="{:.1}" fill="#fdd" /><text x="{:.1}" y="{:.1}" fill="#a33">down</text>"##,
            (xb - xa).max(0.0),
            H - TOP - BOTTOM,
            xa + 3.0,
            TOP + 12.0
        );
    }
    // Axes and ticks.
    let _ = write!(
        s,
        r##"<line x1="{LEFT}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="#333"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{:.1}" stroke="#333"/>"##,
        H - BOTTOM,
        W - RIGHT,
        H - BOTTOM,
        H - BOTTOM
    );
    let xticks: Vec<f64> = if log_x {
        (x0 as i32..=x1 as i32).map(f64::from).collect()
    } else {
        ticks(x0, x1)
    };
    for t in xticks {
        let x = pxt(t);
        let label = if log_x {
            fmt_tick(10f64.powf(t))
        } else {
            fmt_tick(t)
        };
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{label}</text>"##,
            H - BOTTOM,
            H - BOTTOM + 4.0,
            H - BOTTOM + 16.0
        );
    }
    for t in ticks(0.0, y1) {
        let y = py(t);
        let _ = write!(
            s,
            r##"<line x1="{:.1}" y1="{y:.1}" x2="{LEFT}" y2="{y:.1}" stroke="#333"/><line x1="{LEFT}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 4.0,
            W - RIGHT,
            LEFT - 6.0,
            y + 4.0,
            fmt_tick(t)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text><text x="12" y="{:.1}" transform="rotate(-90 12 {:.1})" text-anchor="middle">{}</text>"##,
        (LEFT + W - RIGHT) / 2.0,
        H - 6.0,
        escape(x_label),
        (TOP + H - BOTTOM) / 2.0,
        (TOP + H - BOTTOM) / 2.0,
        escape(y_label)
    );
    for (i, serie) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<String> = serie
            .points
            .iter()
            .map(|(x, y)| format!("{:.1},{:.1}", px(*x), py(*y)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline class="series" fill="none" stroke="{color}" stroke-width="2" points="{}"><title>{}</title></polyline>"##,
            points.join(" "),
            escape(&serie.name)
        );
        // The legend: one row above the plot, right-aligned, clear of the lines.
        let lx = W - RIGHT - 78.0 * (series.len() - i) as f64;
        let _ = write!(
            s,
            r##"<rect x="{lx:.1}" y="12" width="10" height="3" fill="{color}"/><text x="{:.1}" y="17">{}</text>"##,
            lx + 14.0,
            escape(&serie.name)
        );
    }
    s.push_str("</svg>");
    s
}

/// A horizontal bar chart; `log` draws the values on a log10 scale; `mark` draws a dashed
/// reference line with its label.
fn bar_chart(
    id: &str,
    title: &str,
    unit: &str,
    bars: &[(String, f64)],
    mark: Option<(f64, &str)>,
    log: bool,
) -> String {
    let f = |v: f64| if log { (v.max(1.0)).log10() } else { v };
    let max = bars
        .iter()
        .map(|b| f(b.1))
        .chain(mark.map(|m| f(m.0)))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.1;
    let label_w = 170.0;
    let h = TOP + 26.0 * bars.len() as f64 + 24.0;
    let px = |v: f64| label_w + f(v) / max * (W - label_w - 80.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg class="chart" id="{id}" xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif" font-size="11">"##
    );
    let _ = write!(
        s,
        r##"<text x="8" y="16" font-size="13" font-weight="bold">{}</text>"##,
        escape(title)
    );
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = TOP + 26.0 * i as f64;
        let color = COLORS[i % COLORS.len()];
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text><rect class="bar" x="{label_w}" y="{y:.1}" width="{:.1}" height="18" fill="{color}"/><text x="{:.1}" y="{:.1}">{} {}</text>"##,
            label_w - 6.0,
            y + 13.0,
            escape(label),
            (px(*value) - label_w).max(1.0),
            px(*value) + 4.0,
            y + 13.0,
            fmt_tick(*value),
            escape(unit)
        );
    }
    if let Some((v, label)) = mark {
        let x = px(v);
        let _ = write!(
            s,
            r##"<line x1="{x:.1}" y1="{TOP}" x2="{x:.1}" y2="{:.1}" stroke="#000" stroke-dasharray="4 3"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            h - 20.0,
            h - 8.0,
            escape(label)
        );
    }
    s.push_str("</svg>");
    s
}

/// The HTML report.
pub fn render(report: &LabReport) -> String {
    let mut body = String::new();
    let _ = write!(
        body,
        "<h1>pizzeria lab</h1><p class=\"meta\">bus: {} · seed {} · {}{} · {:.0} s · {} ({} CPUs, {}) · pizzeria {} · {}</p>",
        escape(&report.bus_label()),
        report.seed,
        escape(&report.started_at),
        if report.quick { " · quick" } else { "" },
        report.wall_time_s,
        escape(&report.machine.hostname),
        report.machine.cpus,
        escape(&report.machine.kernel),
        escape(&report.version),
        escape(&report.rustc)
    );
    // The table.
    let _ = write!(
        body,
        "<h2>The table, measured</h2><table id=\"lab-table\"><tr><th>on {}</th>",
        escape(&report.bus)
    );
    for c in &report.table.columns {
        let _ = write!(body, "<th>{}</th>", escape(c));
    }
    body.push_str("</tr>");
    for row in &report.table.rows {
        let _ = write!(body, "<tr><th>{}</th>", escape(&row.question));
        for cell in &row.cells {
            let _ = write!(
                body,
                "<td>{}<br><b class=\"verdict\">{}</b></td>",
                escape(&cell.figures),
                escape(&cell.verdict)
            );
        }
        body.push_str("</tr>");
    }
    body.push_str("</table><ul class=\"notes\">");
    for note in report.notes() {
        let _ = write!(body, "<li>{}</li>", escape(&note));
    }
    body.push_str("</ul>");

    // Orders over time through each outage.
    for down in ["kitchen", "payment"] {
        let _ = write!(
            body,
            "<h2>Orders over time, {down} down</h2><p>Cumulative orders accepted by the front desk, made and failed; the shaded band is the outage.</p><div class=\"grid\">"
        );
        for a in report.availability.iter().filter(|a| a.down == down) {
            let cumulative = |pick: fn(&super::availability::Bucket) -> u64| {
                let mut total = 0;
                let mut points = vec![(0.0, 0.0)];
                for b in &a.series {
                    total += pick(b);
                    points.push((b.t_s + 0.1, total as f64));
                }
                points
            };
            let series = [
                Series {
                    name: "accepted".to_owned(),
                    points: cumulative(|b| b.accepted),
                },
                Series {
                    name: "failed".to_owned(),
                    points: cumulative(|b| b.failed),
                },
                Series {
                    name: "made".to_owned(),
                    points: cumulative(|b| b.completed),
                },
            ];
            let start = a.outage_from_s;
            body.push_str(&line_chart(
                &format!("chart-availability-{down}-{}", a.style.as_str()),
                &format!("{} — {down} down {:.1} s", a.style.as_str(), a.outage_s),
                "seconds",
                "orders",
                &series,
                Some((start, start + a.outage_s)),
                false,
            ));
        }
        body.push_str("</div>");
    }

    // Open work per order.
    body.push_str("<h2>How long the front desk's work for an order stays open</h2><p>Cumulative share of orders (y, %) whose work was open at most x milliseconds (log scale). Calls: the POST handling; messaging: send to last reply; events: the POST, until the publish returned.</p>");
    let series: Vec<Series> = report
        .response
        .iter()
        .map(|r| {
            let mut v = r.work_open_ms.clone();
            v.sort_by(f64::total_cmp);
            let n = v.len().max(1) as f64;
            Series {
                name: r.style.as_str().to_owned(),
                points: v
                    .iter()
                    .enumerate()
                    .map(|(i, ms)| (ms.max(0.01), (i + 1) as f64 / n * 100.0))
                    .collect(),
            }
        })
        .collect();
    body.push_str(&line_chart(
        "chart-work-open",
        "work open per order",
        "milliseconds (log)",
        "% of orders",
        &series,
        None,
        true,
    ));

    // Threads and capacity.
    body.push_str("<h2>Threads and capacity</h2><div class=\"grid\">");
    let n = report.blocking.first().map_or(0, |b| b.n);
    let bars: Vec<(String, f64)> = report
        .blocking
        .iter()
        .map(|b| (b.caller.as_str().to_owned(), b.probe.peak_threads as f64))
        .collect();
    body.push_str(&bar_chart(
        "chart-threads",
        &format!("peak OS threads, {n} requests in flight (log scale)"),
        "threads",
        &bars,
        Some((n as f64, "N")),
        true,
    ));
    let bars: Vec<(String, f64)> = report
        .capacity
        .iter()
        .map(|c| (c.style.as_str().to_owned(), c.completed_per_s))
        .collect();
    let ceiling = report.capacity.first().map_or(0.0, |c| c.ceiling_per_s);
    body.push_str(&bar_chart(
        "chart-capacity",
        "orders made per second, kitchen of 2 ovens × 10 ms",
        "/s",
        &bars,
        Some((ceiling, "ceiling")),
        false,
    ));
    body.push_str("</div>");

    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>pizzeria lab</title><style>\
body{{font-family:sans-serif;margin:24px;max-width:1150px;color:#222}}\
table{{border-collapse:collapse;font-size:13px}}td,th{{border:1px solid #ccc;padding:6px;vertical-align:top;text-align:left}}\
.verdict{{font-size:14px}}.meta{{color:#666}}.grid{{display:flex;flex-wrap:wrap;gap:12px}}\
</style></head><body>{body}</body></html>\n"
    )
}
