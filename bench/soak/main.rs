//! The soak (issue 17): a real `berth serve` under mixed traffic at about
//! 80 % of the peak this driver measures first, for minutes, while a cold
//! start, hostile guests, and a deploy or a rollback come round on their
//! own clocks. At the end: no unexpected error, resident memory and open
//! files flat after the warm-up, one ledger record per invocation sent,
//! every acknowledged event handled, and the state database consistent.
//!
//! `bench/soak.sh` runs it for 30 minutes on an optimised build and writes
//! the results into docs/benchmarks.md; CI runs 2 minutes of it:
//!
//! ```text
//! cargo bench -p berth --bench soak -- --minutes 30 --out DIR
//! cargo bench -p berth --profile dev --bench soak -- --minutes 2
//! ```
//!
//! A benchmark target (not a test): `cargo test` leaves it alone, and it
//! builds with the host and the fixtures of the same profile.

use berth_test_programs as programs;
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

const TOKEN: &str = "soak-token";
/// Length of the windows latency and errors are reported by.
const WINDOW: Duration = Duration::from_secs(10);
/// The largest echo body.
const MAX_BODY: usize = 64 * 1024;
const TOPIC: &str = "soak.load";
const EVENTS_PER_BATCH: usize = 5;
/// What the chain answers: front's `status=200` and mid's answer, which is
/// its own `status=200` and hello's.
const CHAIN_ANSWER: &str = "status=200\nstatus=200\nhello from berth: /hello/chain\n";
/// The two revisions `roll` is switched between.
const ROLL_V1: &str = "hello from berth: /roll/x\n";
const ROLL_V2: &str = "hello from wstd: /roll/x\n";

#[derive(Parser, Debug)]
#[command(about = "Berth's soak: mixed traffic at a share of its peak, for minutes")]
struct Args {
    /// How long the soak runs (after the peak is measured).
    #[arg(long, default_value_t = 2.0)]
    minutes: f64,
    /// The share of the measured peak to run at.
    #[arg(long, default_value_t = 0.8)]
    share: f64,
    /// How long the peak is measured (after 5 s of warm-up).
    #[arg(long, default_value_t = 15)]
    peak_seconds: u64,
    /// Connections sending the mixed traffic, each on its own schedule.
    #[arg(long, default_value_t = 32)]
    workers: usize,
    /// Where to write soak.json and the host's log (default: a temporary
    /// folder, removed).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Passed by `cargo bench`.
    #[arg(long, hide = true)]
    bench: bool,
}

/// What is sent. The first five make the mixed traffic, in these shares;
/// the rest come round on clocks of their own.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Hello,
    Echo,
    Chain,
    Roll,
    Events,
    Cold,
    Spin,
    Alloc,
    Panic,
}

const KINDS: [Kind; 9] = [
    Kind::Hello,
    Kind::Echo,
    Kind::Chain,
    Kind::Roll,
    Kind::Events,
    Kind::Cold,
    Kind::Spin,
    Kind::Alloc,
    Kind::Panic,
];
/// The mixed traffic: (kind, weight out of 100).
const MIX: [(Kind, u64); 5] = [
    (Kind::Hello, 40),
    (Kind::Echo, 20),
    (Kind::Chain, 10),
    (Kind::Roll, 20),
    (Kind::Events, 10),
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Hello => "hello",
            Kind::Echo => "echo",
            Kind::Chain => "chain",
            Kind::Roll => "roll",
            Kind::Events => "events",
            Kind::Cold => "cold",
            Kind::Spin => "spin",
            Kind::Alloc => "alloc",
            Kind::Panic => "panic",
        }
    }
}

/// The services, one manifest.
fn manifest() -> String {
    let svc = |name: &str, component: &str, extra: &str| {
        format!("[service.{name}]\ncomponent = {component:?}\nroute = \"/{name}/...\"\n{extra}\n")
    };
    [
        svc("hello", programs::HELLO, ""),
        svc("echo", programs::ECHO, ""),
        // The chain: front calls mid, which calls hello, all in-process.
        svc("front", programs::CAPS, "allowed_outbound = [\"http://mid.svc\"]"),
        svc("mid", programs::CAPS, "allowed_outbound = [\"http://hello.svc\"]"),
        svc("roll", programs::HELLO, ""),
        // Scaled to zero half a second after each request: every request
        // to it, 3 s apart, is a cold start.
        svc("cold", programs::HELLO, "limits = { idle_timeout = \"500ms\" }"),
        svc("spin", programs::SPIN, "limits = { fuel = 100_000_000 }"),
        svc("alloc", programs::ALLOC, "limits = { memory = \"32MiB\" }"),
        svc("panic", programs::PANIC, ""),
        format!(
            "[service.consumer]\ncomponent = {:?}\n[[service.consumer.subscriptions]]\ntopic = \"soak.*\"\n",
            programs::EVENTS_CONSUMER
        ),
    ]
    .concat()
}

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A `berth serve` with its log going to a file.
struct Host {
    child: Child,
    addr: SocketAddr,
    admin: SocketAddr,
    state: PathBuf,
    log: PathBuf,
}

impl Host {
    fn start(dir: &Path) -> Host {
        let state = dir.join("state");
        let log = dir.join("berth.log");
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(["serve", "--state"])
            .arg(&state)
            .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
            .env("BERTH_TOKEN", TOKEN)
            // The per-invocation lines (the host's and the guests' output)
            // off: at thousands of requests a second they would fill
            // gigabytes; the ledger and the metrics keep that record.
            .env("BERTH_LOG", "info,berth::invocation=off,guest=off")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start berth serve");
        let deadline = Instant::now() + Duration::from_secs(120);
        let (mut addr, mut admin) = (None, None);
        while addr.is_none() || admin.is_none() {
            assert!(Instant::now() < deadline, "berth serve did not start");
            std::thread::sleep(Duration::from_millis(50));
            for line in BufReader::new(std::fs::File::open(&log).unwrap()).lines() {
                let line = line.unwrap();
                if let Some(rest) = line.split(" on http://").nth(1) {
                    let parsed = rest.trim().trim_end_matches('/').parse().ok();
                    if line.contains("admin") {
                        admin = parsed;
                    } else {
                        addr = parsed;
                    }
                }
            }
        }
        Host {
            child,
            addr: addr.unwrap(),
            admin: admin.unwrap(),
            state,
            log,
        }
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(env!("CARGO_BIN_EXE_berth"))
            .args(args)
            .env("BERTH_HOST", format!("http://{}", self.admin))
            .env("BERTH_TOKEN", TOKEN)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "berth {args:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    /// SIGTERM, and the exit status; `None` if it did not exit within
    /// 60 s (then it is killed).
    fn stop(mut self) -> Option<std::process::ExitStatus> {
        // SAFETY: signals a child this process started and has not reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }
}

impl Drop for Host {
    /// A driver that fails leaves no host behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// One keep-alive HTTP/1.1 connection, made again after an error.
struct Conn {
    addr: SocketAddr,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    fn new(addr: SocketAddr) -> Conn {
        Conn { addr, sender: None }
    }

    async fn send(&mut self, req: http::Request<Full<Bytes>>) -> Result<(u16, Bytes), String> {
        let result = tokio::time::timeout(Duration::from_secs(60), self.try_send(req))
            .await
            .unwrap_or_else(|_| Err("no response within 60 s".to_owned()));
        if result.is_err() {
            self.sender = None;
        }
        result
    }

    async fn try_send(&mut self, req: http::Request<Full<Bytes>>) -> Result<(u16, Bytes), String> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream = tokio::net::TcpStream::connect(self.addr)
                .await
                .map_err(|e| format!("connect: {e}"))?;
            stream.set_nodelay(true).map_err(|e| e.to_string())?;
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .map_err(|e| format!("handshake: {e}"))?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        let sender = self.sender.as_mut().unwrap();
        sender.ready().await.map_err(|e| format!("ready: {e}"))?;
        let response = sender
            .send_request(req)
            .await
            .map_err(|e| format!("send: {e}"))?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
}

/// Counts, latencies and errors, shared by every task.
struct Stats {
    start: Instant,
    sent: [AtomicU64; KINDS.len()],
    ok: [AtomicU64; KINDS.len()],
    events_acked: AtomicU64,
    unexpected: AtomicU64,
    /// The first unexpected answers, for the report.
    examples: Mutex<Vec<String>>,
    /// Latencies (µs) of the mixed traffic by window, from the time each
    /// request was due (so a late start counts).
    latencies: Mutex<BTreeMap<u64, Vec<u32>>>,
    /// (seconds, RSS KiB, open files) every second.
    samples: Mutex<Vec<(f64, u64, u64)>>,
    deploys: Mutex<Vec<(f64, String, f64)>>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            start: Instant::now(),
            sent: Default::default(),
            ok: Default::default(),
            events_acked: AtomicU64::new(0),
            unexpected: AtomicU64::new(0),
            examples: Mutex::new(Vec::new()),
            latencies: Mutex::new(BTreeMap::new()),
            samples: Mutex::new(Vec::new()),
            deploys: Mutex::new(Vec::new()),
        }
    }

    fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn unexpected(&self, what: String) {
        self.unexpected.fetch_add(1, Relaxed);
        let mut examples = self.examples.lock().unwrap();
        if examples.len() < 20 {
            eprintln!("soak: unexpected at {:.1} s: {what}", self.elapsed());
            examples.push(format!("{:.1} s: {what}", self.elapsed()));
        }
    }

    fn sent(&self, kind: Kind) -> u64 {
        self.sent[kind as usize].load(Relaxed)
    }
}

/// Runs the CLI against the host's admin API `admin`, giving it 60 s.
async fn cli(admin: &str, args: &[&str]) -> Result<(), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(args)
        .env("BERTH_HOST", admin)
        .env("BERTH_TOKEN", TOKEN)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    let mut text = String::new();
                    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut text)
                        .ok();
                    return if status.success() {
                        Ok(())
                    } else {
                        Err(format!("{status}: {text}"))
                    };
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("no answer within 60 s".to_owned());
                }
            }
        }
    })
    .await
    .unwrap()
}

/// Events queued or in flight, over all subscriptions.
async fn queued(api: &mut Conn) -> u64 {
    let (_, body) = api.send(events_request()).await.expect("GET /v1/events");
    let events: serde_json::Value = serde_json::from_slice(&body).unwrap();
    events["subscriptions"]
        .as_array()
        .map(|subs| {
            subs.iter()
                .map(|s| s["depth"].as_u64().unwrap_or(0) + s["in_flight"].as_u64().unwrap_or(0))
                .sum()
        })
        .unwrap_or(0)
}

fn events_request() -> http::Request<Full<Bytes>> {
    http::Request::get("/v1/events")
        .header("host", "berth-admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Sends one request of `kind` and checks its answer.
async fn one(
    kind: Kind,
    stats: &Stats,
    public: &mut Conn,
    admin: &mut Conn,
    rng: &mut Rng,
    payload: &Bytes,
    id: &str,
) -> bool {
    let get = |path: &str| {
        http::Request::get(path)
            .header("host", "soak")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let mut echo = None;
    let (conn, req, expect) = match kind {
        Kind::Hello | Kind::Roll | Kind::Cold => (public, get(&format!("/{}/x", kind.name())), 200),
        Kind::Spin | Kind::Alloc | Kind::Panic => {
            (public, get(&format!("/{}/x", kind.name())), 500)
        }
        Kind::Echo => {
            let len = rng.below(MAX_BODY as u64 + 1) as usize;
            let at = rng.below((payload.len() - len) as u64 + 1) as usize;
            let body = payload.slice(at..at + len);
            echo = Some(body.clone());
            let req = http::Request::post("/echo/x")
                .header("host", "soak")
                .body(Full::new(body))
                .unwrap();
            (public, req, 200)
        }
        Kind::Chain => (
            public,
            // front fetches mid, which fetches hello (the inner URL encoded
            // twice: each caps decodes its own parameter once).
            get(
                "/front/fetch?url=http%3A%2F%2Fmid.svc%2Ffetch%3Furl%3Dhttp%253A%252F%252Fhello.svc%252Fhello%252Fchain",
            ),
            200,
        ),
        Kind::Events => {
            let events: Vec<_> = (0..EVENTS_PER_BATCH)
                .map(|i| {
                    serde_json::json!({"specversion": "1.0", "id": format!("{id}-{i}"),
                        "source": "/soak", "type": "load", "data": "x"})
                })
                .collect();
            let req = http::Request::post(format!("/v1/events/{TOPIC}"))
                .header("host", "berth-admin")
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("content-type", "application/cloudevents-batch+json")
                .body(Full::new(Bytes::from(serde_json::to_vec(&events).unwrap())))
                .unwrap();
            (admin, req, 202)
        }
    };
    stats.sent[kind as usize].fetch_add(1, Relaxed);
    let result = conn.send(req).await;
    let problem = match &result {
        Err(e) => Some(e.clone()),
        Ok((status, _)) if *status != expect => Some(format!(
            "status {status}, not {expect}: {}",
            String::from_utf8_lossy(&result.as_ref().unwrap().1)
                .chars()
                .take(200)
                .collect::<String>()
        )),
        Ok((_, body)) => match kind {
            Kind::Echo => {
                let sent = echo.unwrap_or_default();
                (*body != sent).then(|| {
                    format!(
                        "echoed {} bytes for {} sent, not the same",
                        body.len(),
                        sent.len()
                    )
                })
            }
            // Each hop answers `status=N` and what it got.
            Kind::Chain => (body.as_ref() != CHAIN_ANSWER.as_bytes())
                .then(|| format!("chain answered {:?}", String::from_utf8_lossy(body))),
            // Either revision, while they are switched under it.
            Kind::Roll => (body.as_ref() != ROLL_V1.as_bytes()
                && body.as_ref() != ROLL_V2.as_bytes())
            .then(|| format!("roll answered {:?}", String::from_utf8_lossy(body))),
            Kind::Hello | Kind::Cold => {
                let want = format!("hello from berth: /{}/x\n", kind.name());
                (body.as_ref() != want.as_bytes())
                    .then(|| format!("answered {:?}", String::from_utf8_lossy(body)))
            }
            _ => None,
        },
    };
    match problem {
        Some(p) => {
            stats.unexpected(format!("{}: {p}", kind.name()));
            false
        }
        None => {
            stats.ok[kind as usize].fetch_add(1, Relaxed);
            if kind == Kind::Events {
                stats
                    .events_acked
                    .fetch_add(EVENTS_PER_BATCH as u64, Relaxed);
            }
            true
        }
    }
}

fn pick(rng: &mut Rng) -> Kind {
    let mut n = rng.below(100);
    for (kind, weight) in MIX {
        if n < weight {
            return kind;
        }
        n -= weight;
    }
    unreachable!("the weights add up to 100")
}

/// One worker of the mixed traffic: back to back until `until` when
/// `interval` is `None` (the peak), else one request every `interval` from
/// `first` on. Returns how many requests it completed.
#[allow(clippy::too_many_arguments)]
async fn worker(
    index: usize,
    host: (SocketAddr, SocketAddr),
    stats: Arc<Stats>,
    payload: Bytes,
    first: Instant,
    interval: Option<Duration>,
    until: Instant,
    record: bool,
) -> u64 {
    let (mut public, mut admin) = (Conn::new(host.0), Conn::new(host.1));
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut due = first;
    let mut done = 0;
    loop {
        if interval.is_some() {
            tokio::time::sleep_until(due.into()).await;
        }
        let started = if interval.is_some() {
            due
        } else {
            Instant::now()
        };
        if started >= until {
            return done;
        }
        let kind = pick(&mut rng);
        let id = format!(
            "{}-w{index}-{done}",
            if record {
                "soak"
            } else if until == first {
                "warm"
            } else {
                "peak"
            }
        );
        one(
            kind,
            &stats,
            &mut public,
            &mut admin,
            &mut rng,
            &payload,
            &id,
        )
        .await;
        done += 1;
        if record {
            let window = (started - stats.start).as_secs() / WINDOW.as_secs();
            let micros = started.elapsed().as_micros().min(u32::MAX as u128) as u32;
            stats
                .latencies
                .lock()
                .unwrap()
                .entry(window)
                .or_default()
                .push(micros);
        }
        if let Some(interval) = interval {
            due += interval;
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i] as f64 / 1000.0
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

/// The usage records of each service in the ledger, after checking the
/// ledger's integrity.
fn ledger_counts(state: &Path) -> BTreeMap<String, u64> {
    let db = rusqlite::Connection::open_with_flags(
        state.join(berth::control::ledger::USAGE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let integrity: String = db
        .pragma_query_value(None, "integrity_check", |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "the ledger is damaged");
    let mut stmt = db
        .prepare("SELECT service, count(*) FROM usage GROUP BY service")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn cold_records(state: &Path) -> u64 {
    let db = rusqlite::Connection::open_with_flags(
        state.join(berth::control::ledger::USAGE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row(
        "SELECT count(*) FROM usage WHERE service = 'cold' AND cold = 1",
        [],
        |r| r.get::<_, i64>(0),
    )
    .unwrap() as u64
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let keep = args.out.is_some();
    let dir = match &args.out {
        Some(out) => {
            std::fs::create_dir_all(out).unwrap();
            out.clone()
        }
        None => tempfile::Builder::new()
            .prefix("berth-soak-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap()
            .keep(),
    };
    let _ = std::fs::remove_dir_all(dir.join("state"));
    let host = Host::start(&dir);
    let path = dir.join("berth.toml");
    std::fs::write(&path, manifest()).unwrap();
    host.cli(&["deploy", path.to_str().unwrap()])
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "soak: berth serve (pid {}) on {}, admin {}; log {}",
        host.child.id(),
        host.addr,
        host.admin,
        host.log.display()
    );

    let stats = Arc::new(Stats::new());
    let mut payload = vec![0u8; 4 * MAX_BODY];
    let mut rng = Rng(0xB5AD_4ECE_DA1C_E2A9);
    payload.fill_with(|| rng.below(256) as u8);
    let payload = Bytes::from(payload);
    let addrs = (host.addr, host.admin);

    // The peak: every worker back to back, after a warm-up.
    let run = |first: Instant, interval: Option<Duration>, until: Instant, record: bool| {
        (0..args.workers)
            .map(|i| {
                tokio::spawn(worker(
                    i,
                    addrs,
                    stats.clone(),
                    payload.clone(),
                    first,
                    interval,
                    until,
                    record,
                ))
            })
            .collect::<Vec<_>>()
    };
    let warm = Instant::now() + Duration::from_secs(5);
    for w in run(warm, None, warm, false) {
        w.await.unwrap();
    }
    let t0 = Instant::now();
    let until = t0 + Duration::from_secs(args.peak_seconds);
    let mut peak_done = 0;
    for w in run(t0, None, until, false) {
        peak_done += w.await.unwrap();
    }
    // The events published are delivered after their 202: the peak
    // includes the time until the queue is empty again.
    let mut api = Conn::new(host.admin);
    let drained = Instant::now() + Duration::from_secs(120);
    while queued(&mut api).await > 0 && Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peak = peak_done as f64 / t0.elapsed().as_secs_f64();
    let rate = peak * args.share;
    eprintln!(
        "soak: peak {peak:.0} req/s ({} workers, back to back); soaking at {rate:.0} req/s for {} min",
        args.workers, args.minutes
    );
    let peak_unexpected = stats.unexpected.load(Relaxed);

    // The soak.
    let soak_start = Instant::now();
    let offset = soak_start.duration_since(stats.start).as_secs_f64();
    let duration = Duration::from_secs_f64(args.minutes * 60.0);
    let end = soak_start + duration;
    let interval = Duration::from_secs_f64(args.workers as f64 / rate);
    let mixed_before: u64 = MIX.iter().map(|(k, _)| stats.sent(*k)).sum();
    let mut workers = Vec::new();
    for i in 0..args.workers {
        let first = soak_start + interval.mul_f64(i as f64 / args.workers as f64);
        workers.push(tokio::spawn(worker(
            i,
            addrs,
            stats.clone(),
            payload.clone(),
            first,
            Some(interval),
            end,
            true,
        )));
    }
    // Tells the tasks on clocks of their own to stop.
    let (stop, stopped) = tokio::sync::watch::channel(false);
    // A request every 3 s to a service scaled to zero in between, and a
    // hostile guest every 2 s (looping until its fuel is out, allocating
    // past its memory, panicking), each on a connection of its own.
    let side = |kind_of: fn(u64) -> Kind, every: Duration| {
        let (stats, mut stopped, payload) = (stats.clone(), stopped.clone(), payload.clone());
        tokio::spawn(async move {
            let mut n = 0;
            let mut rng = Rng(7);
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let mut public = Conn::new(addrs.0);
                let mut admin = Conn::new(addrs.1);
                let id = format!("side-{n}");
                one(
                    kind_of(n),
                    &stats,
                    &mut public,
                    &mut admin,
                    &mut rng,
                    &payload,
                    &id,
                )
                .await;
                n += 1;
            }
        })
    };
    let cold = side(|_| Kind::Cold, Duration::from_secs(3));
    let hostile = side(
        |n| [Kind::Spin, Kind::Alloc, Kind::Panic][n as usize % 3],
        Duration::from_secs(2),
    );
    // A deploy and a rollback of `roll` every minute, under its traffic.
    let deployer = {
        let (stats, mut stopped) = (stats.clone(), stopped.clone());
        let admin = format!("http://{}", host.admin);
        tokio::spawn(async move {
            let mut n = 0u64;
            // The first deploy 15 s in, within the warm-up: the memory its
            // component's code takes is counted before the comparison.
            let mut tick = tokio::time::interval_at(
                (soak_start + Duration::from_secs(15)).into(),
                Duration::from_secs(30),
            );
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                // The other component as a new revision, then back to
                // the first revision; once the CLI returns, the switch is
                // made.
                let (args, want): (Vec<&str>, &str) = if n.is_multiple_of(2) {
                    (
                        vec![
                            "deploy",
                            "roll",
                            "--component",
                            programs::HELLO_WSTD,
                            "--route",
                            "/roll/...",
                        ],
                        ROLL_V2,
                    )
                } else {
                    (vec!["rollback", "roll", "--to", "1"], ROLL_V1)
                };
                let what = args[0];
                let took = Instant::now();
                match cli(&admin, &args).await {
                    Ok(()) => {
                        let took = took.elapsed().as_secs_f64();
                        stats.deploys.lock().unwrap().push((
                            stats.elapsed(),
                            what.to_owned(),
                            took,
                        ));
                        let mut check = Conn::new(addrs.0);
                        let req = http::Request::get("/roll/x")
                            .header("host", "soak")
                            .body(Full::new(Bytes::new()))
                            .unwrap();
                        // An invocation of `roll` like the others.
                        stats.sent[Kind::Roll as usize].fetch_add(1, Relaxed);
                        match check.send(req).await {
                            Ok((200, body)) if body.as_ref() == want.as_bytes() => {
                                stats.ok[Kind::Roll as usize].fetch_add(1, Relaxed);
                            }
                            other => stats.unexpected(format!(
                                "after the {what}, roll answered {other:?}, not {want:?}"
                            )),
                        }
                    }
                    Err(e) => stats.unexpected(format!("{what} failed: {e}")),
                }
                n += 1;
            }
        })
    };
    // Memory and open files, every second.
    let sampler = {
        let (stats, stopped) = (stats.clone(), stopped.clone());
        let pid = host.child.id();
        tokio::spawn(async move {
            let probe = Host::probe(pid);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut last_report = 0;
            while !*stopped.borrow() {
                tick.tick().await;
                let (rss, fds) = probe();
                let t = stats.elapsed();
                stats.samples.lock().unwrap().push((t, rss, fds));
                if t as u64 / 60 > last_report {
                    last_report = t as u64 / 60;
                    eprintln!(
                        "soak: {t:.0} s: RSS {} MiB, {fds} files open, {} unexpected",
                        rss / 1024,
                        stats.unexpected.load(Relaxed)
                    );
                }
            }
        })
    };
    for w in workers {
        w.await.unwrap();
    }
    let soak_secs = soak_start.elapsed().as_secs_f64();
    let mixed: u64 = MIX.iter().map(|(k, _)| stats.sent(*k)).sum::<u64>() - mixed_before;
    stop.send(true).unwrap();
    for task in [cold, hostile, deployer, sampler] {
        task.await.unwrap();
    }

    // Every acknowledged event handled: nothing left in the queue, retrying
    // or dead.
    let mut api = Conn::new(host.admin);
    let drained = Instant::now() + Duration::from_secs(120);
    while queued(&mut api).await > 0 && Instant::now() < drained {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, body) = api.send(events_request()).await.expect("GET /v1/events");
    let events: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let acked = stats.events_acked.load(Relaxed);

    // Flat after the warm-up: the median of the first stretch after it
    // against the median of the last.
    let samples = stats.samples.lock().unwrap().clone();
    let warmup = (duration.as_secs_f64() / 6.0).clamp(30.0, 300.0);
    let stretch = ((duration.as_secs_f64() - warmup) / 10.0).max(10.0);
    let in_range = |from: f64, to: f64, f: fn(&(f64, u64, u64)) -> u64| {
        let mut v: Vec<u64> = samples
            .iter()
            .filter(|s| s.0 - offset >= from && s.0 - offset < to)
            .map(f)
            .collect();
        median(&mut v)
    };
    let soak_len = soak_secs;
    let rss = (
        in_range(warmup, warmup + stretch, |s| s.1),
        in_range(soak_len - stretch, soak_len + 1.0, |s| s.1),
    );
    let fds = (
        in_range(warmup, warmup + stretch, |s| s.2),
        in_range(soak_len - stretch, soak_len + 1.0, |s| s.2),
    );
    let growth = |(a, b): (u64, u64)| {
        if a == 0 {
            0.0
        } else {
            b as f64 / a as f64 - 1.0
        }
    };

    // The windows: latency, throughput, memory and files over time.
    let latencies = std::mem::take(&mut *stats.latencies.lock().unwrap());
    let mut windows = Vec::new();
    for (w, mut v) in latencies {
        v.sort_unstable();
        let t = (w * WINDOW.as_secs()) as f64;
        let in_window: Vec<_> = samples
            .iter()
            .filter(|s| s.0 >= t && s.0 < t + WINDOW.as_secs_f64())
            .collect();
        windows.push(serde_json::json!({
            "t": t - offset,
            "requests": v.len(),
            "p50_ms": percentile(&v, 0.5),
            "p99_ms": percentile(&v, 0.99),
            "max_ms": percentile(&v, 1.0),
            "rss_kib": in_window.iter().map(|s| s.1).max().unwrap_or(0),
            "fds": in_window.iter().map(|s| s.2).max().unwrap_or(0),
        }));
    }
    let mut p99s: Vec<f64> = windows
        .iter()
        .map(|w| w["p99_ms"].as_f64().unwrap())
        .collect();
    p99s.sort_by(f64::total_cmp);

    // Stopped (SIGTERM): the ledger commits what it holds as it closes;
    // then the records, the state and the log are read.
    let state_dir = host.state.clone();
    let log_path = host.log.clone();
    let status = host.stop();
    let expected: BTreeMap<&str, u64> = [
        ("hello", stats.sent(Kind::Hello) + stats.sent(Kind::Chain)),
        ("echo", stats.sent(Kind::Echo)),
        ("front", stats.sent(Kind::Chain)),
        ("mid", stats.sent(Kind::Chain)),
        ("roll", stats.sent(Kind::Roll)),
        ("cold", stats.sent(Kind::Cold)),
        ("spin", stats.sent(Kind::Spin)),
        ("alloc", stats.sent(Kind::Alloc)),
        ("panic", stats.sent(Kind::Panic)),
        // Five consumer invocations per batch acknowledged (none fails).
        ("consumer", acked),
    ]
    .into();
    let ledger = ledger_counts(&state_dir);
    let cold_starts = cold_records(&state_dir);
    let state_check =
        berth::control::state::State::open(&state_dir.join(berth::control::state::DB_FILE))
            .and_then(|state| state.check())
            .map_err(|e| e.to_string());
    // The hostile guests' traps are logged as warnings, as they should be;
    // the rest are counted apart.
    let (mut warns, mut errors, mut other) = (0, 0, Vec::new());
    let hostile = |l: &str| {
        ["spin", "alloc", "panic"]
            .iter()
            .any(|s| l.contains(&format!("service={s} ")))
    };
    for line in BufReader::new(std::fs::File::open(&log_path).unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let (warn, error) = (line.contains(" WARN "), line.contains(" ERROR "));
        warns += warn as usize;
        errors += error as usize;
        if (warn || error) && !hostile(&line) {
            eprintln!("soak: host log: {line}");
            other.push(line);
        }
    }
    let other_errors = other.iter().filter(|l| l.contains(" ERROR ")).count();

    let achieved = mixed as f64 / soak_secs;
    let report = serde_json::json!({
        "minutes": args.minutes,
        "workers": args.workers,
        "peak_rps": peak,
        "rate_rps": rate,
        "achieved_rps": achieved,
        "soak_seconds": soak_secs,
        "sent": KINDS.iter().map(|k| (k.name(), stats.sent(*k))).collect::<BTreeMap<_, _>>(),
        "ok": KINDS.iter().map(|k| (k.name(), stats.ok[*k as usize].load(Relaxed))).collect::<BTreeMap<_, _>>(),
        "events_acked": acked,
        "unexpected": stats.unexpected.load(Relaxed),
        "unexpected_during_peak": peak_unexpected,
        "examples": *stats.examples.lock().unwrap(),
        "ledger": ledger,
        "ledger_expected": expected,
        "cold_starts": cold_starts,
        "deploys": stats.deploys.lock().unwrap().iter().map(|(t, what, took)| serde_json::json!({"t": t - offset, "what": what, "seconds": took})).collect::<Vec<_>>(),
        "warmup_s": warmup,
        "rss_kib": {"after_warmup": rss.0, "end": rss.1, "growth": growth(rss)},
        "fds": {"after_warmup": fds.0, "end": fds.1, "growth": growth(fds)},
        "events": events,
        "log": {"warn": warns, "error": errors, "not_from_hostile_guests": other.len()},
        "exit": format!("{status:?}"),
        "windows": windows,
        "samples": samples.iter().map(|s| [s.0 - offset, s.1 as f64, s.2 as f64]).collect::<Vec<_>>(),
    });
    std::fs::write(
        dir.join("soak.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    eprintln!(
        "soak: {:.1} min at {achieved:.0} req/s ({:.0} % of the {peak:.0} req/s peak); p99 by window {:.2}–{:.2} ms",
        soak_secs / 60.0,
        100.0 * achieved / peak,
        p99s.first().copied().unwrap_or(0.0),
        p99s.last().copied().unwrap_or(0.0),
    );
    for kind in KINDS {
        eprintln!(
            "soak:   {:7} {:9} sent {:9} as expected",
            kind.name(),
            stats.sent(kind),
            stats.ok[kind as usize].load(Relaxed)
        );
    }
    eprintln!(
        "soak: {acked} events acknowledged, {} consumer records; {cold_starts} cold starts of {} requests to `cold`; {} deploys and rollbacks",
        ledger.get("consumer").copied().unwrap_or(0),
        stats.sent(Kind::Cold),
        stats.deploys.lock().unwrap().len()
    );
    eprintln!(
        "soak: RSS {} → {} KiB ({:+.1} %), open files {} → {} ({:+.1} %) after a {warmup:.0} s warm-up; log: {warns} warnings, {errors} errors, {} of them not from the hostile guests",
        rss.0,
        rss.1,
        100.0 * growth(rss),
        fds.0,
        fds.1,
        100.0 * growth(fds),
        other.len()
    );
    eprintln!("soak: results in {}", dir.join("soak.json").display());

    // The verdict.
    let mut failures = Vec::new();
    let unexpected = stats.unexpected.load(Relaxed);
    if unexpected > 0 {
        failures.push(format!(
            "{unexpected} unexpected answers, e.g. {:?}",
            stats.examples.lock().unwrap()
        ));
    }
    if soak_secs > duration.as_secs_f64() + 5.0 || achieved < 0.95 * rate {
        failures.push(format!(
            "the host did not keep up: {achieved:.0} req/s of {rate:.0} over {soak_secs:.0} s"
        ));
    }
    for (service, n) in &expected {
        let got = ledger.get(*service).copied().unwrap_or(0);
        if got != *n {
            failures.push(format!(
                "{got} ledger records of {service} for {n} invocations sent"
            ));
        }
    }
    let subs = events["subscriptions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let done = |s: &serde_json::Value| {
        ["depth", "in_flight", "retrying", "dead_letters"]
            .iter()
            .all(|k| s[*k] == 0)
    };
    if subs.is_empty() || !subs.iter().all(done) {
        failures.push(format!("events not all handled: {events}"));
    }
    if stats.sent(Kind::Cold) > 0 && cold_starts + 1 < stats.sent(Kind::Cold) {
        failures.push(format!(
            "{cold_starts} cold starts for {} requests to a service idle for 3 s",
            stats.sent(Kind::Cold)
        ));
    }
    if duration.as_secs_f64() < warmup + 2.0 * stretch || [rss.0, rss.1, fds.0, fds.1].contains(&0)
    {
        failures.push(format!(
            "too short to compare memory and files: {} s with a {warmup:.0} s warm-up",
            duration.as_secs()
        ));
    }
    if growth(rss) >= 0.05 {
        failures.push(format!(
            "RSS grew {:.1} % after the warm-up",
            100.0 * growth(rss)
        ));
    }
    // Files: 5 %, and at least two (a connection being opened).
    if fds.1 > fds.0 + ((fds.0 as f64 * 0.05) as u64).max(2) {
        failures.push(format!("open files grew from {} to {}", fds.0, fds.1));
    }
    if other_errors > 0 {
        failures.push(format!(
            "{other_errors} errors in the host's log not from the hostile guests"
        ));
    }
    if let Err(e) = state_check {
        failures.push(format!("the state database: {e}"));
    }
    if !status.is_some_and(|s| s.success()) {
        failures.push(format!("berth serve did not exit cleanly: {status:?}"));
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("soak: FAILED: {f}");
        }
        std::process::exit(1);
    }
    eprintln!("soak: passed");
}

impl Host {
    /// Reads (RSS KiB, open files) of process `pid`.
    fn probe(pid: u32) -> impl Fn() -> (u64, u64) {
        move || {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let rss = status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0);
            let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
                .map(|d| d.count() as u64)
                .unwrap_or(0);
            (rss, fds)
        }
    }
}
