//! An OTLP/gRPC receiver tabgrab did not write, for tests of exported traces and metrics:
//! Python on the official `opentelemetry-proto` definitions (crates/tabgrab/tests/interop/
//! otlp_receiver.py), killed by PID when dropped. Each received span is one JSON object:
//! `trace_id`, `span_id`, `parent_span_id` (hex, empty for a root), `name`, `kind`
//! (`SPAN_KIND_CONSUMER`, …), `service`, `attributes`, `events` (`name`, `attributes`). Each
//! received metric data point is one too: `name`, `unit`, `type` (`sum`, `gauge`,
//! `histogram`), `monotonic` and `cumulative` (sums), `service`, `attributes`, and `value`,
//! or a histogram's `count`, `sum`, `bounds` and `bucket_counts`.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A running receiver on a free loopback port.
#[derive(Debug)]
pub struct Receiver {
    child: Child,
    port: u16,
    spans: PathBuf,
    metrics: PathBuf,
    _dir: tempfile::TempDir,
}

impl Receiver {
    /// Starts a receiver (`None`: skipped, see [`crate::python::with`]).
    pub fn start() -> Option<Receiver> {
        let python = crate::python::with(
            "grpc, opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc",
            "grpcio and opentelemetry-proto",
        )?;
        let dir = tempfile::tempdir().ok()?;
        let spans = dir.path().join("spans.jsonl");
        let metrics = dir.path().join("metrics.jsonl");
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../tabgrab/tests/interop/otlp_receiver.py");
        let mut child = Command::new(python)
            .arg(script)
            .arg(&spans)
            .arg(&metrics)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the OTLP receiver starts");
        let mut line = String::new();
        if let Some(stdout) = child.stdout.take() {
            let _ = BufReader::new(stdout).read_line(&mut line);
        }
        let port = line
            .strip_prefix("port ")
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("the OTLP receiver did not say its port: {line:?}"));
        Some(Receiver {
            child,
            port,
            spans,
            metrics,
            _dir: dir,
        })
    }

    /// Its OTLP/gRPC endpoint (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The spans received so far, in the order they arrived.
    pub fn spans(&self) -> Vec<serde_json::Value> {
        lines(&self.spans)
    }

    /// The metric data points received so far, in the order they arrived.
    pub fn metrics(&self) -> Vec<serde_json::Value> {
        lines(&self.metrics)
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|line| serde_json::from_str(line).expect("the receiver writes JSON lines"))
        .collect()
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
