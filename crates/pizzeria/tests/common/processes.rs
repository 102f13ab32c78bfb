//! What the multi-process tests share: a PostgreSQL database of a test's own, and
//! `pizzeria service` child processes that can be killed with SIGKILL or stopped with SIGTERM.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, VecDeque};
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
    /// The last value of each `name=<number>` figure it printed.
    figures: HashMap<String, u64>,
    /// The line that said it was ready: `ready <name> <pid>` on a bus, `… listening on
    /// <url>` in the call style.
    pub(crate) ready: String,
}

impl Service {
    /// Starts service `name` on `bus` with its state in the database `db` and waits (30 s at
    /// most) for its `ready` line.
    pub(crate) fn start(name: &'static str, bus: &str, db: &str) -> Service {
        Service::spawn(
            name,
            &[
                "--bus",
                bus,
                "--store",
                db,
                "--kitchen-db",
                db,
                "--truffles",
                "12",
                "--ovens",
                "8",
                "--bake-ms",
                "5",
            ],
        )
    }

    /// Starts `pizzeria service <name> <args>` and waits (30 s at most) for its `ready` line
    /// (on a bus) or the URL it listens on (call style).
    pub(crate) fn spawn(name: &'static str, args: &[&str]) -> Service {
        Service::try_spawn(name, args).unwrap_or_else(|why| panic!("{why}"))
    }

    /// [`Service::spawn`], or why the process did not get ready.
    pub(crate) fn try_spawn(name: &'static str, args: &[&str]) -> Result<Service, String> {
        let mut child = pizzeria()
            .args(["service", name])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
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
        let mut service = Service {
            name,
            child,
            lines,
            errors,
            figures: HashMap::new(),
            ready: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match service.lines.recv_timeout(left) {
                Ok(line) if line.starts_with("ready ") || line.contains(" listening on ") => {
                    service.note(&line);
                    service.ready = line;
                    return Ok(service);
                }
                Ok(line) => service.note(&line),
                Err(_) => {
                    let _ = service.child.kill();
                    let status = service.child.wait().ok();
                    return Err(format!(
                        "{name}: not ready within 30 s (exit: {status:?}); its stderr:\n{}",
                        service.stderr_tail().join("\n")
                    ));
                }
            }
        }
    }

    /// [`Service::spawn`], tried again (for at most `within`) while the process exits before
    /// it is ready: a restart on the port of a killed process may find the port not free yet.
    pub(crate) fn respawn(name: &'static str, args: &[&str], within: Duration) -> Service {
        let deadline = Instant::now() + within;
        loop {
            match Service::try_spawn(name, args) {
                Ok(service) => return service,
                Err(why) => assert!(
                    Instant::now() < deadline,
                    "{name} could not start again within {within:?}: {why}"
                ),
            }
        }
    }

    /// The URL a call-style service listens on.
    pub(crate) fn url(&self) -> &str {
        self.ready
            .rsplit_once(" listening on ")
            .map_or("", |(_, url)| url.trim())
    }

    /// Whether it has exited (it could not start, or it died).
    pub(crate) fn exited(&mut self) -> bool {
        self.child.try_wait().ok().flatten().is_some()
    }

    /// Its last lines on stderr (at most 20), to say what it was doing when a check failed.
    pub(crate) fn stderr_tail(&self) -> Vec<String> {
        self.errors.lock().unwrap().iter().cloned().collect()
    }

    /// Its PID.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Reads lines (bounded) until one matches `what`, noting figures; returns it.
    pub(crate) fn wait_for(
        &mut self,
        mut what: impl FnMut(&str) -> bool,
        label: &str,
        within: Duration,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Ok(line) = self.lines.recv_timeout(left) else {
                let status = self.child.try_wait().ok().flatten();
                let errors = self.errors.lock().unwrap();
                panic!(
                    "{}: no {label} line within {within:?} (exit: {status:?}); its stderr:\n{}",
                    self.name,
                    errors.iter().cloned().collect::<Vec<_>>().join("\n")
                );
            };
            self.note(&line);
            if what(&line) {
                return line;
            }
        }
    }

    fn note(&mut self, line: &str) {
        for (name, value) in line.split_whitespace().filter_map(|w| w.split_once('=')) {
            if let Ok(n) = value.parse() {
                self.figures.insert(name.to_owned(), n);
            }
        }
    }

    /// The last value of the figure `name=` it printed so far (0 if none).
    pub(crate) fn figure(&mut self, name: &str) -> u64 {
        while let Ok(line) = self.lines.try_recv() {
            self.note(&line);
        }
        self.figures.get(name).copied().unwrap_or(0)
    }

    /// SIGKILL, by PID; returns the duplicates it had reported.
    pub(crate) fn kill(mut self) -> u64 {
        let duplicates = self.figure("duplicates");
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        duplicates
    }

    /// SIGTERM, then waits (bounded) for `stopped`; returns its last duplicates figure.
    pub(crate) fn stop(mut self) -> u64 {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        self.wait_for(
            |l| l.starts_with("stopped"),
            "stopped",
            Duration::from_secs(20),
        );
        self.child.wait().unwrap();
        self.figure("duplicates")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
