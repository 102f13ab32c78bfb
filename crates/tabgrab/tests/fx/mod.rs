//! Shared by the outbox and inbox fault tests: the application's database (SQLite or
//! PostgreSQL) with its effects, duplicates and ledger tables, the handler transaction that
//! uses an inbox, failpoints, child processes and seeds.
#![allow(dead_code, unreachable_pub)]

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tabgrab::inbox::Inbox;
use tabgrab::outbox::Outbox;
use tabgrab::{Envelope, Error, ErrorKind};

pub const PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Which database a scenario runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "sqlite",
            Kind::Postgres => "postgres",
        }
    }

    pub fn parse(s: &str) -> Kind {
        if s == "postgres" {
            Kind::Postgres
        } else {
            Kind::Sqlite
        }
    }

    /// Whether the scenario can run here (PostgreSQL must be up; skipped with a reason,
    /// or failed under TABGRAB_REQUIRE_SERVICES=1).
    pub fn available(self) -> bool {
        match self {
            Kind::Sqlite => true,
            Kind::Postgres => tabgrab_testkit::services::require("PostgreSQL", "127.0.0.1:5432"),
        }
    }
}

/// The seed of a scenario: `TABGRAB_SEED`, or a fresh one; printed.
pub fn seed(scenario: &str) -> u64 {
    let seed = std::env::var("TABGRAB_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("{scenario}: seed {seed} (set TABGRAB_SEED to replay)");
    seed
}

/// A table prefix unique to this run (the PostgreSQL server is shared).
pub fn unique_prefix() -> String {
    format!("fx{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

fn storage(e: sqlx::Error) -> Error {
    Error::new(ErrorKind::Storage, e.to_string())
}

/// The application's database.
#[derive(Clone)]
pub enum Db {
    Sqlite(sqlx::SqlitePool, String),
    Postgres(sqlx::PgPool, String),
}

/// An inbox in either database.
#[derive(Clone)]
pub enum AnyInbox {
    Sqlite(Inbox<sqlx::Sqlite>),
    Postgres(Inbox<sqlx::Postgres>),
}

/// An outbox in either database.
#[derive(Clone)]
pub enum AnyOutbox {
    Sqlite(Outbox<sqlx::Sqlite>),
    Postgres(Outbox<sqlx::Postgres>),
}

/// Where a handler transaction may be told to die.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxPoint {
    /// The effect and the inbox row are written, not committed.
    BeforeCommit,
    /// Committed.
    AfterCommit,
}

impl Db {
    pub async fn open(kind: Kind, dir: &std::path::Path, prefix: &str) -> Db {
        match kind {
            Kind::Sqlite => {
                let options = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(dir.join("app.db"))
                    .create_if_missing(true)
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Full)
                    .busy_timeout(Duration::from_secs(20));
                let pool = sqlx::sqlite::SqlitePoolOptions::new()
                    .max_connections(4)
                    .connect_with(options)
                    .await
                    .unwrap();
                Db::Sqlite(pool, prefix.to_owned())
            }
            Kind::Postgres => {
                let pool = sqlx::postgres::PgPoolOptions::new()
                    .max_connections(6)
                    .acquire_timeout(Duration::from_secs(20))
                    .connect(PG_URL)
                    .await
                    .unwrap();
                Db::Postgres(pool, prefix.to_owned())
            }
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            Db::Sqlite(..) => Kind::Sqlite,
            Db::Postgres(..) => Kind::Postgres,
        }
    }

    fn prefix(&self) -> &str {
        match self {
            Db::Sqlite(_, p) | Db::Postgres(_, p) => p,
        }
    }

    async fn exec(&self, sql: &str) {
        match self {
            Db::Sqlite(pool, _) => sqlx::query(sql).execute(pool).await.map(|_| ()),
            Db::Postgres(pool, _) => sqlx::query(sql).execute(pool).await.map(|_| ()),
        }
        .unwrap();
    }

    /// Effects (one row per applied effect: no unique key, so a second effect would show),
    /// duplicates seen, and the ledger (the state changes that stage outbox events).
    pub async fn create_tables(&self) {
        let p = self.prefix().to_owned();
        let serial = match self.kind() {
            Kind::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Kind::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        self.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {p}_effects (n {serial}, grp TEXT NOT NULL, id TEXT NOT NULL)"
        ))
        .await;
        self.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {p}_dups (n {serial}, grp TEXT NOT NULL, id TEXT NOT NULL)"
        ))
        .await;
        self.exec(&format!(
            "CREATE TABLE IF NOT EXISTS {p}_ledger (n {serial}, id TEXT NOT NULL, subject TEXT NOT NULL)"
        ))
        .await;
    }

    /// Drops this run's tables (PostgreSQL; a SQLite file goes with its temp dir).
    pub async fn drop_tables(&self) {
        if let Db::Postgres(..) = self {
            let p = self.prefix().to_owned();
            for t in [
                "effects",
                "dups",
                "ledger",
                "inbox",
                "outbox",
                "outbox_dead",
            ] {
                self.exec(&format!("DROP TABLE IF EXISTS {p}_{t}")).await;
            }
        }
    }

    pub async fn inbox(&self, group: &str) -> AnyInbox {
        let table = format!("{}_inbox", self.prefix());
        match self {
            Db::Sqlite(pool, _) => AnyInbox::Sqlite(
                Inbox::sqlite_table(pool.clone(), group, &table)
                    .await
                    .unwrap(),
            ),
            Db::Postgres(pool, _) => AnyInbox::Postgres(
                Inbox::postgres_table(pool.clone(), group, &table)
                    .await
                    .unwrap(),
            ),
        }
    }

    pub async fn outbox(&self) -> AnyOutbox {
        let table = format!("{}_outbox", self.prefix());
        match self {
            Db::Sqlite(pool, _) => {
                AnyOutbox::Sqlite(Outbox::sqlite_table(pool.clone(), &table).await.unwrap())
            }
            Db::Postgres(pool, _) => {
                AnyOutbox::Postgres(Outbox::postgres_table(pool.clone(), &table).await.unwrap())
            }
        }
    }

    /// The handler's transaction: record the id in the inbox; the first time apply the
    /// effect, a duplicate only notes that it was one. `at` is called at each point; an error
    /// from it abandons the transaction (rolled back) and is returned.
    pub async fn handle(
        &self,
        inbox: &AnyInbox,
        envelope: &Envelope,
        at: impl Fn(TxPoint) -> Result<(), Error>,
    ) -> Result<bool, Error> {
        let p = self.prefix();
        match (self, inbox) {
            (Db::Sqlite(pool, _), AnyInbox::Sqlite(inbox)) => {
                let mut tx = pool.begin().await.map_err(storage)?;
                let first = inbox.record(&mut tx, envelope).await?;
                let table = if first { "effects" } else { "dups" };
                sqlx::query(&format!("INSERT INTO {p}_{table} (grp, id) VALUES (?, ?)"))
                    .bind(inbox.group())
                    .bind(&envelope.id)
                    .execute(&mut *tx)
                    .await
                    .map_err(storage)?;
                at(TxPoint::BeforeCommit)?;
                tx.commit().await.map_err(storage)?;
                at(TxPoint::AfterCommit)?;
                Ok(first)
            }
            (Db::Postgres(pool, _), AnyInbox::Postgres(inbox)) => {
                let mut tx = pool.begin().await.map_err(storage)?;
                let first = inbox.record(&mut tx, envelope).await?;
                let table = if first { "effects" } else { "dups" };
                sqlx::query(&format!(
                    "INSERT INTO {p}_{table} (grp, id) VALUES ($1, $2)"
                ))
                .bind(inbox.group())
                .bind(&envelope.id)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
                at(TxPoint::BeforeCommit)?;
                tx.commit().await.map_err(storage)?;
                at(TxPoint::AfterCommit)?;
                Ok(first)
            }
            _ => unreachable!("inbox and database kinds match"),
        }
    }

    async fn pairs(&self, table: &str) -> Vec<(String, String)> {
        let sql = format!("SELECT grp, id FROM {}_{table} ORDER BY n", self.prefix());
        match self {
            Db::Sqlite(pool, _) => sqlx::query_as::<_, (String, String)>(&sql)
                .fetch_all(pool)
                .await
                .unwrap(),
            Db::Postgres(pool, _) => sqlx::query_as::<_, (String, String)>(&sql)
                .fetch_all(pool)
                .await
                .unwrap(),
        }
    }

    /// Every applied effect, as (group, message id).
    pub async fn effects(&self) -> Vec<(String, String)> {
        self.pairs("effects").await
    }

    /// Every duplicate the inbox caught (committed), as (group, message id).
    pub async fn dups(&self) -> Vec<(String, String)> {
        self.pairs("dups").await
    }

    /// The state change and the staging of its event, in one transaction.
    /// Commits with `Outbox::commit` (waking the relay) when `notify`, else plainly.
    pub async fn stage(
        &self,
        outbox: &AnyOutbox,
        topic: &str,
        envelope: &Envelope,
        notify: bool,
    ) -> Result<(), Error> {
        let p = self.prefix();
        let subject = envelope.subject.clone().unwrap_or_default();
        match (self, outbox) {
            (Db::Sqlite(pool, _), AnyOutbox::Sqlite(outbox)) => {
                let mut tx = pool.begin().await.map_err(storage)?;
                sqlx::query(&format!(
                    "INSERT INTO {p}_ledger (id, subject) VALUES (?, ?)"
                ))
                .bind(&envelope.id)
                .bind(&subject)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
                outbox.stage(&mut tx, topic, envelope).await?;
                if notify {
                    outbox.commit(tx).await
                } else {
                    tx.commit().await.map_err(storage)
                }
            }
            (Db::Postgres(pool, _), AnyOutbox::Postgres(outbox)) => {
                let mut tx = pool.begin().await.map_err(storage)?;
                sqlx::query(&format!(
                    "INSERT INTO {p}_ledger (id, subject) VALUES ($1, $2)"
                ))
                .bind(&envelope.id)
                .bind(&subject)
                .execute(&mut *tx)
                .await
                .map_err(storage)?;
                outbox.stage(&mut tx, topic, envelope).await?;
                if notify {
                    outbox.commit(tx).await
                } else {
                    tx.commit().await.map_err(storage)
                }
            }
            _ => unreachable!("outbox and database kinds match"),
        }
    }

    /// The committed ledger: (event id, subject) in commit order.
    pub async fn ledger(&self) -> Vec<(String, String)> {
        let sql = format!(
            "SELECT id, subject FROM {}_ledger ORDER BY n",
            self.prefix()
        );
        match self {
            Db::Sqlite(pool, _) => sqlx::query_as::<_, (String, String)>(&sql)
                .fetch_all(pool)
                .await
                .unwrap(),
            Db::Postgres(pool, _) => sqlx::query_as::<_, (String, String)>(&sql)
                .fetch_all(pool)
                .await
                .unwrap(),
        }
    }
}

impl AnyInbox {
    pub fn stats(&self) -> tabgrab::inbox::InboxStats {
        match self {
            AnyInbox::Sqlite(i) => i.stats(),
            AnyInbox::Postgres(i) => i.stats(),
        }
    }

    pub async fn contains(&self, id: &str) -> bool {
        match self {
            AnyInbox::Sqlite(i) => i.contains(id).await.unwrap(),
            AnyInbox::Postgres(i) => i.contains(id).await.unwrap(),
        }
    }
}

impl AnyOutbox {
    pub async fn pending(&self) -> u64 {
        match self {
            AnyOutbox::Sqlite(o) => o.pending().await.unwrap(),
            AnyOutbox::Postgres(o) => o.pending().await.unwrap(),
        }
    }

    pub fn stats(&self) -> tabgrab::outbox::OutboxStats {
        match self {
            AnyOutbox::Sqlite(o) => o.stats(),
            AnyOutbox::Postgres(o) => o.stats(),
        }
    }

    /// Starts a relay to `bus` with `batch` rows per round and `hook`.
    pub fn relay(
        &self,
        bus: &tabgrab::backend::Bus,
        batch: usize,
        hook: impl Fn(&tabgrab::outbox::RelayEvent) + Send + Sync + 'static,
    ) -> tabgrab::Relay {
        match self {
            AnyOutbox::Sqlite(o) => o
                .relay(bus)
                .batch_size(batch)
                .poll_interval(Duration::from_millis(20))
                .hook(hook)
                .start(),
            AnyOutbox::Postgres(o) => o
                .relay(bus)
                .batch_size(batch)
                .poll_interval(Duration::from_millis(20))
                .hook(hook)
                .start(),
        }
    }
}

/// Kills this process with SIGKILL at a failpoint (no destructor, no flush: a crash).
pub fn die(point: &str) -> ! {
    eprintln!("failpoint {point}: SIGKILL");
    let pid = std::process::id().to_string();
    let _ = Command::new("kill").args(["-KILL", &pid]).status();
    std::process::abort()
}

/// Re-runs this test binary as a child running the ignored test `name`, with `env`.
pub fn spawn_child(name: &str, env: &[(&str, String)]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", name, "--ignored", "--nocapture"])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().unwrap()
}

/// Waits for a child, killing it (SIGKILL) if it has not exited by `within`.
pub fn wait_child(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            return child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether a child died of SIGKILL (it hit its failpoint).
pub fn killed(status: &ExitStatus) -> bool {
    use std::os::unix::process::ExitStatusExt as _;
    status.signal() == Some(9)
}

/// Every envelope of an embedded topic, oldest first.
pub fn read_topic(bus: &tabgrab::backend::embedded::EmbeddedBus, topic: &str) -> Vec<Envelope> {
    let log = bus.topic(topic).unwrap();
    let codec = tabgrab::Codec::default();
    let mut out = Vec::new();
    let mut from = log.start_offset();
    loop {
        let records = log.read(from, 1024).unwrap();
        let Some(last) = records.last() else { break };
        from = last.offset + 1;
        for r in records {
            out.push(codec.decode(&r.payload).unwrap());
        }
    }
    out
}
