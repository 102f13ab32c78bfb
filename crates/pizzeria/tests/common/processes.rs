//! What the multi-process tests share: a PostgreSQL database of a test's own, and
//! `pizzeria service` child processes that can be killed with SIGKILL or stopped with SIGTERM.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// Where the tests create (and drop) their own databases.
pub(crate) const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// The pizzeria binary of this build (where nextest extracted it, when it runs an archive:
/// the long chaos tier runs from one while the tree is rebuilt).
pub(crate) fn pizzeria() -> Command {
    match std::env::var_os("NEXTEST_BIN_EXE_pizzeria") {
        Some(path) => Command::new(path),
        None => Command::new(env!("CARGO_BIN_EXE_pizzeria")),
    }
}

/// A database of one test's own, dropped by [`Database::drop_it`].
pub(crate) struct Database {
    name: String,
}

impl Database {
    /// Creates `pizzeria_<prefix>_<uuid>`.
    pub(crate) async fn create(prefix: &str) -> Database {
        let name = format!("pizzeria_{prefix}_{}", uuid::Uuid::now_v7().simple());
        let admin = sqlx::PgPool::connect(&format!("{POSTGRES}/test"))
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        Database { name }
    }

    /// Its name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("{POSTGRES}/{}", self.name)
    }

    /// Drops it (forcing other sessions out).
    pub(crate) async fn drop_it(self) {
        let admin = sqlx::PgPool::connect(&format!("{POSTGRES}/test"))
            .await
            .unwrap();
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ))
        .execute(&admin)
        .await;
        admin.close().await;
    }
}

/// One `pizzeria service` process; its stdout lines arrive on a channel. Killed on drop.
pub(crate) struct Service {
    pub(crate) name: &'static str,
    child: Child,
    lines: mpsc::Receiver<String>,
    /// Its last lines on stderr.
    errors: Arc<Mutex<VecDeque<String>>>,
    /// The last `duplicates=` it reported.
    duplicates: u64,
}

impl Service {
    /// Starts service `name` on `bus` with its state in the database `db` and waits (30 s at
    /// most) for its `ready` line.
    pub(crate) fn start(name: &'static str, bus: &str, db: &str) -> Service {
        let mut command = pizzeria();
        command
            .args([
                "service",
                name,
                "--bus",
                bus,
                "--store",
                db,
                "--kitchen-db",
                db,
            ])
            .args(["--truffles", "12", "--ovens", "8", "--bake-ms", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        // The last lines of stderr, to say why a service did not start.
        let stderr = child.stderr.take().unwrap();
        let errors: Arc<Mutex<VecDeque<String>>> = Arc::default();
        let sink = Arc::clone(&errors);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut lines = sink.lock().unwrap();
                if lines.len() == 20 {
                    lines.pop_front();
                }
                lines.push_back(line);
            }
        });
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut service = Service {
            name,
            child,
            lines,
            errors,
            duplicates: 0,
        };
        service.wait_for("ready ", Duration::from_secs(30));
        service
    }

    /// Reads lines (bounded) until one starts with `prefix`, noting `duplicates=`.
    fn wait_for(&mut self, prefix: &str, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                let status = self.child.try_wait().ok().flatten();
                let errors = self.errors.lock().unwrap();
                panic!(
                    "{}: no {prefix:?} line within {within:?} (exit: {status:?}); its stderr:\n{}",
                    self.name,
                    errors.iter().cloned().collect::<Vec<_>>().join("\n")
                );
            };
            self.note(&line);
            if line.starts_with(prefix) {
                return;
            }
        }
    }

    fn note(&mut self, line: &str) {
        if let Some(n) = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("duplicates="))
            .and_then(|v| v.parse().ok())
        {
            self.duplicates = n;
        }
    }

    /// Drains the lines so far; returns the last duplicates figure.
    fn drain(&mut self) -> u64 {
        while let Ok(line) = self.lines.try_recv() {
            self.note(&line);
        }
        self.duplicates
    }

    /// SIGKILL, by PID; returns the duplicates it had reported.
    pub(crate) fn kill(mut self) -> u64 {
        let duplicates = self.drain();
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        duplicates
    }

    /// SIGTERM, then waits (bounded) for `stopped`; returns its last duplicates figure.
    pub(crate) fn stop(mut self) -> u64 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_for("stopped", Duration::from_secs(20));
        self.child.wait().unwrap();
        self.duplicates
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
