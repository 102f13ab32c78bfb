//! The real `pizzeria` binary: a run succeeds and its summary adds up, a reused data
//! directory works, and mistakes on the command line are explained.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

fn pizzeria() -> Command {
    Command::new(env!("CARGO_BIN_EXE_pizzeria"))
}

/// Runs a `--json` command that must succeed: its JSON (stdout) and its text (stderr).
fn json_of(command: &mut Command) -> (Value, String) {
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "exit {:?}: {stderr}",
        output.status
    );
    (serde_json::from_slice(&output.stdout).unwrap(), stderr)
}

fn run(data_dir: &std::path::Path) -> Value {
    let (summary, stderr) = json_of(
        pizzeria()
            .args([
                "run",
                "--style",
                "events",
                "--orders",
                "300",
                "--json",
                "--data-dir",
            ])
            .arg(data_dir),
    );
    assert!(
        stderr.contains("orders accepted"),
        "the text summary goes to stderr: {stderr}"
    );
    summary
}

#[test]
fn a_run_of_300_orders_ends_every_order_and_a_reused_data_dir_works() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..2 {
        let summary = run(dir.path());
        assert_eq!(summary["accepted"], 300, "round {round}: {summary}");
        let delivered = summary["delivered"].as_u64().unwrap();
        let failed = summary["failed"].as_u64().unwrap();
        assert_eq!(delivered + failed, 300, "round {round}: {summary}");
        let by_reason: u64 = summary["failed_by_reason"]
            .as_object()
            .unwrap()
            .values()
            .map(|n| n.as_u64().unwrap())
            .sum();
        assert_eq!(by_reason, failed, "{summary}");
        assert_eq!(summary["dead_letters"], 0, "{summary}");
        assert!(
            summary["events_published"].as_u64().unwrap() >= 300 * 3,
            "{summary}"
        );
    }
    let output = pizzeria()
        .args(["dead-letters", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("no dead letters"));
}

#[test]
fn a_wrong_flag_exits_non_zero_and_suggests_the_right_one() {
    let output = pizzeria().args(["run", "--oders", "3"]).output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--orders"), "{stderr}");

    let output = pizzeria()
        .args(["run", "--style", "carrier-pigeon"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("possible values: events"));

    let output = pizzeria()
        .args(["run", "--decline-rate", "2"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("between 0 and 1"));
}

#[test]
fn dead_letters_of_a_missing_directory_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = pizzeria()
        .args(["dead-letters", "--data-dir"])
        .arg(dir.path().join("nothing-here"))
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("holds no pizzeria data"), "{stderr}");
}

/// `pizzeria bench` measures every figure beside its baselines in one run, on the directory
/// given, and leaves nothing behind there.
#[test]
fn bench_reports_the_bus_beside_the_disk_and_a_bare_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (report, stderr) = json_of(
        pizzeria()
            .args([
                "bench",
                "--seconds",
                "1",
                "--publishers",
                "64",
                "--rate",
                "2000",
                "--json",
                "--dir",
            ])
            .arg(dir.path()),
    );
    assert!(
        stderr.contains("bare group commit at 2000/s"),
        "the table goes to stderr: {stderr}"
    );
    let field = |name: &str| {
        report[name]
            .as_u64()
            .or_else(|| report[name].as_f64().map(|f| f as u64))
            .unwrap_or_else(|| panic!("{name} missing: {report}"))
    };
    // Two events per millisecond for a second, every one delivered.
    assert_eq!(field("e2e_events"), 2000, "{report}");
    assert!(field("fdatasync_per_sec") > 0, "{report}");
    assert!(field("publish_per_sec") > 0, "{report}");
    for (p50, p99) in [
        ("fdatasync_p50_us", "fdatasync_p99_us"),
        ("group_commit_p50_us", "group_commit_p99_us"),
        ("e2e_p50_us", "e2e_p99_us"),
    ] {
        assert!(field(p50) > 0, "{p50}: {report}");
        assert!(field(p99) >= field(p50), "{p99} below {p50}: {report}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the scratch directory is removed: {left:?}"
    );
}
