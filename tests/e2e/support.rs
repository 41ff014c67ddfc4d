//! Test support: run the real `berth` binary and talk HTTP to it.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use berth_test_programs as programs;

/// How long `berth up` may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// A compiled-code cache shared by the whole run, so each fixture is
/// compiled once rather than once per test.
pub fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-code-cache")
}

/// A running `berth up` or `berth serve`, killed when dropped (its output
/// is printed if the test is failing).
pub struct Berth {
    child: Child,
    /// The public listener.
    pub addr: SocketAddr,
    /// The admin listener (`berth serve` only).
    pub admin: Option<SocketAddr>,
    output: Arc<Mutex<String>>,
    /// The thread that reads its stderr into `output`.
    reader: Option<std::thread::JoinHandle<()>>,
    /// Holds the manifest, if it was written for the test; removed when
    /// the test ends.
    _dir: Option<tempfile::TempDir>,
}

/// The result of a `berth` run that was expected to fail before listening.
pub struct Failed {
    pub status: ExitStatus,
    pub stderr: String,
}

pub fn berth_bin() -> &'static str {
    env!("CARGO_BIN_EXE_berth")
}

/// Writes `manifest` into a fresh directory as `berth.toml`.
pub fn manifest_dir(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("berth-e2e-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir");
    std::fs::write(dir.path().join("berth.toml"), manifest).expect("write manifest");
    dir
}

impl Berth {
    /// `berth up` on `manifest` with the shared code cache.
    pub fn up(manifest: &str) -> Berth {
        Self::up_with(
            manifest_dir(manifest),
            &["--cache-dir", shared_cache().to_str().unwrap()],
        )
    }

    /// `berth up` on `manifest` with the shared code cache and an admin
    /// listener (for `/metrics` and `/v1/usage`).
    pub fn up_admin(manifest: &str, extra: &[&str]) -> Berth {
        Self::up_admin_in(manifest_dir(manifest), extra)
    }

    /// `berth up` with an admin listener, on the manifest in `dir` (which
    /// may hold files it names).
    pub fn up_admin_in(dir: tempfile::TempDir, extra: &[&str]) -> Berth {
        let mut cmd = Command::new(berth_bin());
        cmd.args(["up", "berth.toml", "--listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0", "--cache-dir"])
            .arg(shared_cache())
            .args(extra)
            .env("BERTH_TOKEN", crate::host::TOKEN)
            .current_dir(dir.path());
        Self::start(cmd, START_TIMEOUT, Some(dir), true)
    }

    /// A GET on the admin listener; the body as text.
    pub async fn admin_get(&self, path: &str) -> Reply {
        let addr = self.admin.expect("an admin listener");
        let req = http::Request::get(path)
            .header("host", addr.to_string())
            .header("authorization", format!("Bearer {}", crate::host::TOKEN))
            .body(Full::new(Bytes::new()))
            .unwrap();
        send(addr, req).await
    }

    /// `berth up berth.toml --listen 127.0.0.1:0 EXTRA...` in `dir`.
    pub fn up_with(dir: tempfile::TempDir, extra: &[&str]) -> Berth {
        let cwd = dir.path().to_path_buf();
        Self::spawn(&cwd, "berth.toml", extra, START_TIMEOUT, Some(dir))
    }

    /// `berth up MANIFEST --listen 127.0.0.1:0 EXTRA...` in `cwd`, waiting
    /// up to `start_timeout` for it to listen.
    pub fn spawn(
        cwd: &Path,
        manifest: &str,
        extra: &[&str],
        start_timeout: Duration,
        dir: Option<tempfile::TempDir>,
    ) -> Berth {
        let mut cmd = Command::new(berth_bin());
        cmd.args(["up", manifest, "--listen", "127.0.0.1:0"])
            .args(extra)
            .current_dir(cwd);
        Self::start(cmd, start_timeout, dir, false)
    }

    /// Starts `cmd` (a `berth` invocation) and waits until it prints the
    /// address of its public listener and, with `admin`, of its admin API.
    pub fn start(
        mut cmd: Command,
        start_timeout: Duration,
        dir: Option<tempfile::TempDir>,
        admin: bool,
    ) -> Berth {
        // OpenTelemetry's variables, from whoever runs the tests, reach a
        // host only when a test sets them.
        for name in [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_TRACES_SAMPLER",
            "OTEL_TRACES_SAMPLER_ARG",
            "OTEL_SERVICE_NAME",
            "OTEL_RESOURCE_ATTRIBUTES",
            "OTEL_SDK_DISABLED",
            "OTEL_TRACES_EXPORTER",
        ] {
            if !cmd.get_envs().any(|(key, _)| key == name) {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd
            .env("BERTH_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn berth");
        let output = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn({
            let output = output.clone();
            move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    // `… on http://ADDR` or `… on https://ADDR`.
                    if line.starts_with("berth: ")
                        && let Some(i) = line.find(" on http")
                        && let Some(j) = line[i..].find("://")
                    {
                        let addr = line[i + j + 3..].trim().trim_end_matches('/').to_owned();
                        let _ = tx.send((line.contains("admin"), addr));
                    }
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            }
        });
        let deadline = Instant::now() + start_timeout;
        let (mut public, mut admin_addr) = (None, None);
        while public.is_none() || (admin && admin_addr.is_none()) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((true, addr)) => admin_addr = Some(addr.parse().expect("admin address")),
                Ok((false, addr)) => public = Some(addr.parse().expect("listen address")),
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait().ok();
                    std::thread::sleep(Duration::from_millis(100));
                    panic!(
                        "berth did not start listening (exit: {status:?}); output:\n{}",
                        output.lock().unwrap()
                    );
                }
            }
        }
        Berth {
            child,
            addr: public.unwrap(),
            admin: admin_addr,
            output,
            reader: Some(reader),
            _dir: dir,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with SIGKILL, as a crash would; then everything
    /// it wrote is in [`Berth::logs`].
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The reader ends at the pipe's end (give up after 5 s, should
        // anything the process started still hold the pipe).
        if let Some(reader) = self.reader.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while !reader.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Everything berth wrote to stderr so far.
    pub fn logs(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// Waits until the logs contain every one of `needles`.
    pub fn wait_for_logs(&self, needles: &[&str]) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.logs();
            if needles.iter().all(|n| logs.contains(n)) {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "the logs never contained all of {needles:?}:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the logs contain `needle` at least `n` times.
    pub fn wait_for_count(&self, needle: &str, n: usize) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.logs();
            if logs.matches(needle).count() >= n {
                return logs;
            }
            assert!(
                Instant::now() < deadline,
                "the logs never contained {needle:?} {n} times:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id().to_string();
        let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(status.success(), "kill -TERM {pid} failed");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "berth did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The line of the logs about invocation `id` that contains `needle`.
    /// Waits for it: both may be in the logs, on other lines, before it is.
    pub fn log_line(&self, id: &str, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.wait_for_logs(&[id, needle]);
            if let Some(line) = logs.lines().find(|l| l.contains(id) && l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line has both {id} and {needle:?}:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            std::thread::sleep(Duration::from_millis(50));
            eprintln!("---- berth output ----\n{}", self.logs());
        }
    }
}

/// Runs `berth up` on a manifest that must be refused before listening.
pub fn up_fails(dir: &Path, manifest: &str) -> Failed {
    let mut child = Command::new(berth_bin())
        .args(["up", manifest, "--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(shared_cache())
        .current_dir(dir)
        .env_remove("RUST_BACKTRACE")
        .env("BERTH_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn berth");
    let deadline = Instant::now() + START_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("berth up {manifest} kept running; it should have been refused");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert!(
        !stderr.contains("http://"),
        "berth listened although the manifest is invalid:\n{stderr}"
    );
    Failed { status, stderr }
}

/// A response as the client saw it. `body` is an error when the response
/// was cut off before its end.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Result<Bytes, String>,
    pub elapsed: Duration,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(self.body.as_ref().expect("complete body")).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn invocation(&self) -> String {
        self.header("berth-invocation-id")
            .expect("a berth-invocation-id header")
            .to_owned()
    }
}

/// One request on a fresh connection.
pub async fn send<B>(addr: SocketAddr, req: http::Request<B>) -> Reply
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    try_send(addr, req).await.unwrap_or_else(|e| panic!("{e}"))
}

/// One request on a fresh connection; an error if there is no response
/// (refused, reset, no answer within 60 s).
pub async fn try_send<B>(addr: SocketAddr, req: http::Request<B>) -> Result<Reply, String>
where
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let response = tokio::time::timeout(Duration::from_secs(60), sender.send_request(req))
        .await
        .map_err(|_| "no response within 60s".to_owned())?
        .map_err(|e| format!("response: {e:?}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = tokio::time::timeout(Duration::from_secs(60), response.into_body().collect())
        .await
        .expect("no end of body within 60s")
        .map(|c| c.to_bytes())
        .map_err(|e| e.to_string());
    Ok(Reply {
        status,
        headers,
        body,
        elapsed: started.elapsed(),
    })
}

pub async fn get(berth: &Berth, path: &str) -> Reply {
    let req = http::Request::get(path)
        .header("host", berth.addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(berth.addr, req).await
}

/// A GET sent in the background, for requests that must be in flight
/// while the test does something else.
pub fn spawn_get(berth: &Berth, path: &str) -> tokio::task::JoinHandle<Reply> {
    let addr = berth.addr;
    let req = http::Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    tokio::spawn(send(addr, req))
}

pub async fn post(berth: &Berth, path: &str, body: impl Into<Bytes>) -> Reply {
    let req = http::Request::post(path)
        .header("host", berth.addr.to_string())
        .body(Full::new(body.into()))
        .unwrap();
    send(berth.addr, req).await
}

/// A manifest service table.
pub fn service(name: &str, component: &str, route: &str, limits: &str) -> String {
    let mut s = format!("[service.{name}]\ncomponent = {component:?}\nroute = {route:?}\n");
    if !limits.is_empty() {
        s.push_str(&format!("[service.{name}.limits]\n{limits}\n"));
    }
    s
}

/// A chunked request body (no Content-Length) made of `chunks`.
pub fn chunked(chunks: Vec<Bytes>) -> http_body_util::StreamBody<Chunks> {
    http_body_util::StreamBody::new(Chunks(chunks.into_iter()))
}

/// The stream behind [`chunked`].
pub struct Chunks(std::vec::IntoIter<Bytes>);

impl futures_core::Stream for Chunks {
    type Item = Result<http_body::Frame<Bytes>, std::convert::Infallible>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        std::task::Poll::Ready(self.0.next().map(|b| Ok(http_body::Frame::data(b))))
    }
}

/// A directory of secrets as an operator would keep it: 0700, files 0600.
pub fn secrets_dir(secrets: &[(&str, &str)]) -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("berth-secrets-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    for (name, value) in secrets {
        write_secret(dir.path(), name, value);
    }
    dir
}

pub fn write_secret(dir: &Path, name: &str, value: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The lines `child` writes to its (piped) stdout, as they come.
pub fn stdout_lines(child: &mut Child) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().expect("a piped stdout");
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A `kB` figure of `/proc/PID/status` (`VmRSS`, `VmHWM`, …).
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// How many files process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// An upstream on loopback that takes connections and never answers; its
/// port, and how many connections it took.
pub async fn silent_upstream() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = sink.local_addr().unwrap().port();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = accepted.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = sink.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            held.push(stream);
        }
    });
    (port, accepted)
}
