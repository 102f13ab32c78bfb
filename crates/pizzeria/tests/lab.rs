//! The lab, reduced (`pizzeria lab --quick`), run as the real binary: the measured facts of
//! the comparison table hold, the printed table, `lab.json` and `lab.html` agree, and the
//! HTML renders in headless Chromium with its charts (a screenshot is written).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "common/browser.rs"]
mod browser;

use std::path::Path;
use std::process::Command;

use pizzeria::lab::report::LabReport;
use pizzeria::run::Style;

fn pizzeria() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pizzeria"))
}

/// Runs `pizzeria lab --quick --out <dir>` and returns the printed text and the report.
fn quick_lab(out: &Path) -> (String, LabReport) {
    let output = pizzeria()
        .args(["lab", "--quick", "--seed", "7", "--out"])
        .arg(out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report = pizzeria::lab::json::read(&out.join("lab.json")).unwrap();
    (stdout, report)
}

#[test]
fn the_quick_lab_measures_the_table_and_its_report_renders_with_charts() {
    let out = tempfile::tempdir().unwrap();
    let (stdout, report) = quick_lab(out.path());
    println!("{stdout}");

    // The seed, the figures and the verdicts of lab.json are what was printed.
    assert_eq!(report.seed, 7);
    assert!(report.quick);
    assert!(
        stdout.contains(&report.render()),
        "the printed table is not the rendering of lab.json"
    );
    assert!(stdout.contains("seed 7"), "{stdout}");

    // Blocking: the baseline holds a thread per request in flight; tabgrab's styles do not.
    assert_eq!(report.blocking.len(), 4);
    for b in &report.blocking {
        assert_eq!(b.probe.completed, b.n, "{b:?}");
        let per_request = b.caller == pizzeria::lab::blocking::Caller::Baseline;
        assert_eq!(b.blocks_a_thread_per_request, per_request, "{b:?}");
        if per_request {
            assert!(b.probe.peak_threads >= b.n, "{b:?}");
        } else {
            assert!(b.probe.peak_threads < b.n / 10, "{b:?}");
        }
    }

    // Availability: with the kitchen (or payment) down, calls fail or refuse orders; the
    // other two accept every order, fail none and lose none.
    assert_eq!(report.availability.len(), 6);
    for a in &report.availability {
        assert!(a.offered_during_outage > 0, "{a:?}");
        match a.style {
            Style::Calls => {
                assert!(a.recipient_must_be_up, "{a:?}");
                assert!(a.failed_during_outage > 0, "{a:?}");
                assert!(a.accepted_during_outage < a.offered_during_outage, "{a:?}");
            }
            Style::Messaging | Style::Events => {
                assert!(!a.recipient_must_be_up, "{a:?}");
                assert_eq!(a.accepted_during_outage, a.offered_during_outage, "{a:?}");
                assert_eq!((a.failed, a.lost), (0, 0), "{a:?}");
                assert_eq!(a.completed, a.offered, "{a:?}");
                assert!(a.completed_after_recovery > 0, "{a:?}");
                assert!(a.recovery_s.is_some(), "{a:?}");
            }
        }
    }

    // Response expected: events write no response message and no correlation record.
    for r in &report.response {
        assert_eq!(r.completed, r.orders, "{r:?}");
        match r.style {
            Style::Events => {
                assert_eq!(r.responses_per_order, 0.0, "{r:?}");
                assert_eq!(r.correlation_records_per_order, 0.0, "{r:?}");
                assert!(!r.response_expected, "{r:?}");
            }
            Style::Messaging => {
                assert!(r.responses_per_order >= 3.0, "{r:?}");
                assert!(r.correlation_records_per_order >= 3.0, "{r:?}");
                assert!(r.response_expected, "{r:?}");
            }
            Style::Calls => {
                assert!(r.responses_per_order >= 3.0, "{r:?}");
                assert!(r.response_expected, "{r:?}");
            }
        }
    }

    // Capacity: no style makes the kitchen faster than its ovens.
    for c in &report.capacity {
        assert!(!c.faster_than_the_kitchen, "{c:?}");
        assert!(c.completed_per_s <= 1.1 * c.ceiling_per_s, "{c:?}");
    }

    // The HTML report: self-contained, with its charts.
    let html = std::fs::read_to_string(out.path().join("lab.html")).unwrap();
    for fetch in ["src=\"http", "href=\"http", "url(http"] {
        assert!(
            !html.contains(fetch),
            "lab.html fetches from the network: {fetch}"
        );
    }
    for id in [
        "chart-availability-kitchen-calls",
        "chart-availability-payment-events",
        "chart-work-open",
        "chart-threads",
        "chart-capacity",
    ] {
        assert!(
            html.contains(&format!("id=\"{id}\"")),
            "no {id} in lab.html"
        );
    }
    assert!(!html.contains("<script"), "lab.html must not need a script");

    if !browser::require() {
        return;
    }
    let url = format!("file://{}", out.path().join("lab.html").display());
    let dom = browser::dump_dom(&url);
    assert!(
        dom.matches("<svg class=\"chart\"").count() >= 9,
        "the rendered page lacks its charts"
    );
    assert!(dom.contains("<polyline"), "the charts have no lines");
    let png = out.path().join("lab.png");
    browser::screenshot(&url, &png, "1200,2400", 20_000);
    if let Some(keep) = std::env::var_os("PIZZERIA_LAB_KEEP") {
        let keep = Path::new(&keep);
        std::fs::create_dir_all(keep).unwrap();
        for f in ["lab.json", "lab.html", "lab.png"] {
            std::fs::copy(out.path().join(f), keep.join(f)).unwrap();
        }
    }
}
