//! Chaos on the environment (issue 17): a full disk under the ledger and
//! the event bus, a slow disk, a process out of file descriptors, clock
//! steps, memory pressure (an address-space limit, a memory cgroup), and
//! the ledger's and the bus's files made read-only under the host.
//! Berth degrades with clear errors, loses nothing it acknowledged, and
//! recovers by itself.

use crate::events::{consumer, event, handled};
use crate::host::*;
use crate::support::*;
use std::time::{Duration, Instant};

/// The value of metric `name` in a `/metrics` scrape.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in the scrape"))
}

/// Publishes a batch of `n` events on `topic` through the admin API;
/// the ids, and the answer.
async fn publish(berth: &Berth, topic: &str, tag: &str, n: usize) -> (Vec<String>, Reply) {
    let ids: Vec<String> = (0..n).map(|i| format!("{tag}-{i}")).collect();
    let events: Vec<_> = ids.iter().map(|id| event(id, "load", "x")).collect();
    let reply = send(berth.admin.unwrap(), batch_request(topic, &events)).await;
    (ids, reply)
}

/// The invocations of `service` in the ledger, as the admin API counts.
async fn invocations(berth: &Berth, service: &str) -> u64 {
    let reply = berth
        .admin_get(&format!("/v1/usage?service={service}"))
        .await;
    let usage: serde_json::Value = serde_json::from_slice(reply.body.as_ref().unwrap()).unwrap();
    usage["total"]["invocations"].as_u64().unwrap_or(0)
}

/// Sends `n` requests to `svc`, each of which must be served; returns `n`.
async fn serve(berth: &Berth, n: u64) -> u64 {
    for _ in 0..n {
        let reply = get(berth, "/svc/x").await;
        assert_eq!(reply.status, 200, "the service stopped serving");
    }
    n
}

/// Once the disk takes writes again: the held usage records are stored,
/// one per request `answered`; a publish on `topic` is taken; every event
/// `acked` (that one's too) is handled.
async fn recovered(berth: &Berth, answered: u64, topic: &str, acked: &mut Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stored = invocations(berth, "svc").await;
        if stored == answered {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} usage records for {answered} requests answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    berth.wait_for_logs(&["usage records held back are stored"]);
    let (ids, reply) = publish(berth, topic, "after", 20).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    acked.extend(ids);
    wait_handled(berth, acked);
}

/// Waits until the consumer of `berth` has logged every one of `ids`.
fn wait_handled(berth: &Berth, ids: &[String]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = handled(&berth.logs());
        let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
        if missing.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} acknowledged events never handled, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn a_full_disk_holds_usage_records_refuses_events_clearly_and_loses_nothing_once_freed() {
    let (berth, state, _dir) = host_on_tmpfs("32m");
    let admin = format!("http://{}", berth.admin.unwrap());
    let dir = manifest_dir(&format!(
        "{}{}",
        service("svc", programs::HELLO, "/svc/...", ""),
        consumer("full.*", "")
    ));
    let out = cli_with_token(
        &admin,
        Some(TOKEN),
        &["deploy", dir.path().join("berth.toml").to_str().unwrap()],
    );
    assert!(out.status.success(), "{out:?}");
    let mut answered = 0u64;
    answered += serve(&berth, 20).await;
    let (mut acked, reply) = publish(&berth, "full.before", "before", 20).await;
    assert_eq!(reply.status, 202);

    // Full. Requests go on being served; their usage records are held in
    // memory once the ledger cannot grow (its WAL first reuses the room
    // it has, so it takes some records to get there).
    let inside = inside(&berth, &state);
    let filler = fill(&inside);
    let deadline = Instant::now() + Duration::from_secs(120);
    while !berth.logs().contains("holding them in memory") {
        assert!(
            Instant::now() < deadline,
            "the ledger never ran out of room"
        );
        answered += serve(&berth, 50).await;
    }
    let line = berth.log_line("ERROR", "usage records could not be stored");
    assert!(
        line.contains("database or disk is full") || line.contains("No space left"),
        "{line}"
    );
    let scrape = berth.admin_get("/metrics").await.text();
    assert!(metric(&scrape, "berth_ledger_pending_records") > 0.0);

    // Events: taken while the queue has room, then refused with a clear
    // error (nothing acknowledged, nothing to lose).
    let mut refused = None;
    for batch in 0..500 {
        let (ids, reply) = publish(&berth, "full.during", &format!("during{batch}"), 50).await;
        match reply.status {
            202 => acked.extend(ids),
            _ => {
                refused = Some(reply);
                break;
            }
        }
    }
    let refused = refused.expect("the bus never ran out of room");
    assert_eq!(refused.status, 507, "{}", refused.text());
    let text = refused.text();
    assert!(
        text.contains("storage_error")
            && (text.contains("database or disk is full") || text.contains("No space left")),
        "{text}"
    );
    answered += serve(&berth, 20).await;

    // Room again: the held records are stored, one per request answered;
    // events are taken again; every acknowledged one is handled.
    std::fs::remove_file(&filler).unwrap();
    recovered(&berth, answered, "full.after", &mut acked).await;
    let scrape = berth.admin_get("/metrics").await.text();
    assert_eq!(metric(&scrape, "berth_ledger_pending_records"), 0.0);
    // Stopped cleanly, the state and the ledger are whole. (Read from a
    // copy: SQLite resolves /proc/PID/root to the host's own root.)
    let keeper = std::process::Command::new("nsenter")
        .args(["-t", &berth.pid().to_string(), "-m", "sleep", "60"])
        .spawn()
        .unwrap();
    let kept = std::path::PathBuf::from(format!("/proc/{}/root", keeper.id()))
        .join(state.strip_prefix("/").unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !kept.join(berth::control::state::DB_FILE).exists() {
        assert!(Instant::now() < deadline, "nsenter did not enter");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut berth = berth;
    assert!(berth.terminate().success());
    let copy = tempfile::tempdir().unwrap();
    for file in [
        berth::control::state::DB_FILE,
        berth::control::ledger::USAGE_FILE,
    ] {
        for suffix in ["", "-wal"] {
            let from = kept.join(format!("{file}{suffix}"));
            if from.exists() {
                std::fs::copy(&from, copy.path().join(format!("{file}{suffix}"))).unwrap();
            }
        }
    }
    let mut keeper = keeper;
    let _ = keeper.kill();
    let _ = keeper.wait();
    berth::control::state::State::open(&copy.path().join(berth::control::state::DB_FILE))
        .unwrap()
        .check()
        .expect("the state database is consistent");
    assert_eq!(ledger_count(copy.path(), "svc"), answered);
    eprintln!(
        "full disk: {answered} requests answered, all in the ledger; {} events acknowledged, all handled",
        acked.len()
    );
}

/// Builds `slow_fsync.c` (an `LD_PRELOAD` shim: every `fsync` and
/// `fdatasync` takes `SLOW_FSYNC_MS` longer) with the system's C compiler.
fn slow_fsync_shim() -> std::path::PathBuf {
    let out = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("libslow_fsync.so");
    let source = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/e2e/slow_fsync.c");
    let status = std::process::Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&out)
        .arg(&source)
        .arg("-ldl")
        .status()
        .expect("run cc");
    assert!(status.success(), "building the slow-fsync shim failed");
    out
}

// Two threads: the deploy (the CLI, blocking) runs while the requests and
// the publisher go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_disk_slows_changes_and_loses_nothing() {
    let shim = slow_fsync_shim();
    let host = Host::start_with_env(
        &[],
        &[
            ("LD_PRELOAD", shim.to_str().unwrap()),
            ("SLOW_FSYNC_MS", "100"),
        ],
    );
    host.deploy_manifest(&format!(
        "{}{}",
        service("svc", programs::HELLO, "/svc/...", ""),
        consumer("slow.*", "")
    ));
    host.berth.wait_for_logs(&["slow-fsync: every fsync"]);

    // Requests, event batches and a deploy, all at once, on a disk whose
    // every sync takes 100 ms.
    let addr = host.berth.addr;
    let requests = tokio::spawn(async move {
        let mut n = 0u64;
        for _ in 0..300 {
            let req = http::Request::get("/svc/x")
                .header("host", addr.to_string())
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            assert_eq!(send(addr, req).await.status, 200);
            n += 1;
        }
        n
    });
    let admin = host.berth.admin.unwrap();
    let publisher = tokio::spawn(async move {
        let mut acked = Vec::new();
        let mut took = Vec::new();
        for batch in 0..30 {
            let ids: Vec<String> = (0..10).map(|i| format!("slow{batch}-{i}")).collect();
            let events: Vec<_> = ids.iter().map(|id| event(id, "load", "x")).collect();
            let started = Instant::now();
            let reply = send(admin, batch_request("slow.load", &events)).await;
            took.push(started.elapsed());
            assert_eq!(reply.status, 202, "{}", reply.text());
            acked.extend(ids);
        }
        (acked, took)
    });
    let deploy_started = Instant::now();
    let out = host.deploy("svc", programs::HELLO_WSTD, "/svc/...");
    assert!(out.contains("revision 2"), "{out}");
    let deploy_took = deploy_started.elapsed();
    let answered = requests.await.unwrap();
    let (acked, mut took) = publisher.await.unwrap();
    wait_handled(&host.berth, &acked);
    assert_eq!(
        get(&host.berth, "/svc/x").await.text(),
        "hello from wstd: /svc/x\n"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while ledger_count(&host.state, "svc") < answered + 1 {
        assert!(Instant::now() < deadline, "usage records missing");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_state_consistent(&host);
    took.sort();
    eprintln!(
        "slow disk (100 ms per sync): {answered} requests, {} events handled; a publish took {:?} (median), a deploy {deploy_took:?}",
        acked.len(),
        took[took.len() / 2]
    );
}

#[tokio::test]
async fn out_of_file_descriptors_the_guests_are_told_and_the_host_recovers() {
    use std::sync::atomic::Ordering;
    let (sink_port, accepted) = silent_upstream().await;
    let dir = manifest_dir(&format!(
        "[service.greedy]\ncomponent = {:?}\nroute = \"/x/...\"\n\
         allowed_outbound = [\"http://127.0.0.1:{sink_port}\"]\n\
         [service.bystander]\ncomponent = {:?}\nroute = \"/hello/...\"\n",
        programs::EXHAUST,
        programs::HELLO,
    ));
    // 256 descriptors for the whole process (soft and hard).
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", "ulimit -n 256 && exec \"$0\" \"$@\""])
        .arg(berth_bin())
        .args(["up", "berth.toml", "--listen", "127.0.0.1:0", "--cache-dir"])
        .arg(shared_cache())
        .current_dir(dir.path());
    let berth = Berth::start(cmd, Duration::from_secs(120), Some(dir), false);
    assert_eq!(get(&berth, "/hello/warm").await.status, 200);
    let pid = berth.pid();
    let fds_before = open_fds(pid);

    // Four guests wanting 100 connections each: more than the process
    // may open. Each is told, in the guest, for the ones it cannot have;
    // the bystander's requests wait for descriptors and are served.
    let greedy: Vec<_> = (0..4)
        .map(|_| {
            spawn_get(
                &berth,
                &format!("/x/requests?url=127.0.0.1:{sink_port}&n=100"),
            )
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let bystander: Vec<_> = (0..20)
        .map(|i| spawn_get(&berth, &format!("/hello/{i}")))
        .collect();
    let mut refused = 0;
    let mut answers = Vec::new();
    for g in greedy {
        let reply = g.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.text());
        let text = reply.text();
        refused += text
            .split("refused=")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .and_then(|n| n.parse::<usize>().ok())
            .unwrap_or_else(|| panic!("unexpected answer {text:?}"));
        answers.push(text);
    }
    for b in bystander {
        assert_eq!(b.await.unwrap().status, 200, "the bystander was not served");
    }
    assert!(
        refused > 0 && accepted.load(Ordering::SeqCst) < 400,
        "every connection was made: {answers:?}"
    );
    let logs = berth.logs();
    assert!(
        logs.contains("Too many open files"),
        "no clear error in the log:\n{logs}"
    );

    // Recovered: the descriptors are given back, and everything serves.
    let deadline = Instant::now() + Duration::from_secs(30);
    while open_fds(pid) > fds_before + 8 {
        assert!(
            Instant::now() < deadline,
            "{} files open, {fds_before} before",
            open_fds(pid)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for i in 0..20 {
        assert_eq!(get(&berth, &format!("/hello/after{i}")).await.status, 200);
    }
    let reply = get(
        &berth,
        &format!("/x/requests?url=127.0.0.1:{sink_port}&n=1"),
    )
    .await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "in flight=1 refused=0: ")
    );
    eprintln!(
        "out of descriptors: {refused} of 400 connections refused in the guests ({} reached the upstream); {answers:?}",
        accepted.load(Ordering::SeqCst)
    );
}

/// Debian's libfaketime (multi-threaded build), preloaded into a host:
/// its wall clock is off by what `FAKETIME_TIMESTAMP_FILE` says (re-read
/// every second); its monotonic clock is the real one, as when NTP steps
/// the clock.
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

/// How often schedule `name` of the consumer has fired so far.
fn firings(berth: &Berth, name: &str) -> usize {
    berth
        .logs()
        .matches(&format!("schedule fired service=consumer schedule={name}"))
        .count()
}

#[tokio::test]
async fn wall_clock_steps_leave_deadlines_alone_and_move_schedules_as_documented() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let offset = dir.path().join("offset");
    std::fs::write(&offset, "+0\n").unwrap();
    let host = Host::start_with_env(
        &[],
        &[
            ("LD_PRELOAD", LIBFAKETIME),
            ("FAKETIME_TIMESTAMP_FILE", offset.to_str().unwrap()),
            ("FAKETIME_CACHE_DURATION", "1"),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1"),
        ],
    );
    host.deploy_manifest(&format!(
        "[service.consumer]\ncomponent = {:?}\n\n[[service.consumer.schedules]]\nname = \"tick\"\nevery = \"1s\"\n\n\
         [[service.consumer.schedules]]\nname = \"minutely\"\ncron = \"0 * * * * *\"\n\
         {}",
        programs::EVENTS_CONSUMER,
        service("sleep", programs::SLEEP, "/sleep", "timeout = \"3s\""),
    ));
    let wait_for = |what: &str, check: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !check() {
            assert!(Instant::now() < deadline, "{what}:\n{}", host.berth.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_for("tick never fired", &|| firings(&host.berth, "tick") >= 2);

    // A step an hour forward while a request sleeps (1.5 s of its 3 s): its
    // deadline is on the monotonic clock, so it is served. `tick` fires
    // once for the hour it skipped, then every second; `minutely` once.
    let (tick, minutely) = (
        firings(&host.berth, "tick"),
        firings(&host.berth, "minutely"),
    );
    let sleeping = spawn_get(&host.berth, "/sleep?ms=1500");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&offset, "+3600\n").unwrap();
    let reply = sleeping.await.unwrap();
    assert_eq!(
        (reply.status, reply.text()),
        (200, "slept 1500 ms\n".into())
    );
    wait_for("minutely did not fire for the hour skipped", &|| {
        firings(&host.berth, "minutely") > minutely
    });
    let after_step = firings(&host.berth, "tick");
    std::thread::sleep(Duration::from_secs(3));
    let fired = firings(&host.berth, "tick") - after_step;
    assert!(
        (2..=5).contains(&fired),
        "tick fired {fired} times in 3 s after the step forward"
    );
    // Once for the hour skipped, and maybe once on a minute since.
    assert!(
        firings(&host.berth, "minutely") <= minutely + 2,
        "minutely fired once per minute skipped"
    );
    assert!(after_step - tick < 20, "tick fired once per second skipped");

    // Back an hour, again under a sleeping request: it is served; `tick`
    // keeps firing every second (it does not wait for the hour to pass
    // again); `minutely` waits for its next time (none fires twice).
    let sleeping = spawn_get(&host.berth, "/sleep?ms=1500");
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(&offset, "+0\n").unwrap();
    let reply = sleeping.await.unwrap();
    assert_eq!(
        (reply.status, reply.text()),
        (200, "slept 1500 ms\n".into())
    );
    host.berth.wait_for_logs(&["the wall clock stepped back"]);
    let minutely = firings(&host.berth, "minutely");
    let back = firings(&host.berth, "tick");
    std::thread::sleep(Duration::from_secs(3));
    let fired = firings(&host.berth, "tick") - back;
    assert!(
        (2..=5).contains(&fired),
        "tick fired {fired} times in 3 s after the step back"
    );
    assert_eq!(firings(&host.berth, "minutely"), minutely);

    // A deadline still stops a guest, on its own time.
    let reply = get(&host.berth, "/sleep?ms=10000").await;
    assert_eq!(reply.status, 504);
}

/// `berth up` with an admin listener and its state in `dir/state`, run by
/// `sh -c SETUP; exec berth …` (a limit set, a cgroup joined first).
fn up_under(setup: &str, manifest: &str) -> (Berth, std::path::PathBuf) {
    let dir = manifest_dir(manifest);
    let state = dir.path().join("state");
    let mut cmd = std::process::Command::new("sh");
    cmd.args(["-c", &format!("{setup} && exec \"$0\" \"$@\"")])
        .arg(berth_bin())
        .args(["up", "berth.toml", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--state"])
        .arg(&state)
        .arg("--cache-dir")
        .arg(shared_cache())
        .env("BERTH_TOKEN", TOKEN)
        .current_dir(dir.path());
    let berth = Berth::start(cmd, Duration::from_secs(120), Some(dir), true);
    (berth, state)
}

/// Guests that grow their memory as far as they may (8 at once, 256 MiB
/// each), and a bystander. Where a memory bound leaves the guests less
/// than that, the host's guest memory budget (of which one service holds
/// half at most) refuses their growth inside the guests (500, a clear
/// reason), the bystander is served throughout,
/// the memory comes back, and the host (alive, not aborted or OOM-killed)
/// stops cleanly with every invocation in its ledger.
const PRESSURED: &str = "[service.hello]\ncomponent = \"HELLO\"\nroute = \"/hello/...\"\n\
     [service.alloc]\ncomponent = \"ALLOC\"\nroute = \"/alloc/...\"\n\
     limits = { memory = \"256MiB\", concurrency = 8 }\n";

async fn under_memory_pressure(mut berth: Berth, state: &std::path::Path, bound: &str) {
    const MIB: f64 = (1 << 20) as f64;
    let line = berth.log_line("INFO", "guest memory budget set by");
    assert!(line.contains(bound), "{line}");
    let scrape = berth.admin_get("/metrics").await.text();
    let budget = metric(&scrape, "berth_guest_memory_budget_bytes");
    assert!(
        budget > 0.0 && budget < 8.0 * 256.0 * MIB,
        "budget {budget}"
    );
    assert_eq!(get(&berth, "/hello/warm").await.status, 200);

    let greedy: Vec<_> = (0..8)
        .map(|i| spawn_get(&berth, &format!("/alloc/{i}")))
        .collect();
    let mut served = 1;
    for i in 0..20 {
        let reply = get(&berth, &format!("/hello/{i}")).await;
        assert_eq!(reply.status, 200, "the bystander was not served");
        served += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for g in greedy {
        let reply = g.await.unwrap();
        assert_eq!(reply.status, 500, "{}", reply.text());
    }
    let logs = berth.logs();
    let refused = logs
        .matches("host memory budget: the guest asked for")
        .count();
    assert!(
        refused > 0,
        "no growth refused by the host's budget:\n{logs}"
    );
    // (Rust's message when the host's own allocation fails, not a guest's.)
    assert!(
        !logs.lines().any(|l| l.starts_with("memory allocation of")),
        "the host aborted"
    );

    // The memory comes back; one guest alone then grows as far as its cap
    // or its service's share of the budget (half of it) allows.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = berth.admin_get("/metrics").await.text();
        if metric(&scrape, "berth_guest_memory_bytes") == 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the guests' memory never came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = get(&berth, "/alloc/try").await;
    let text = reply.text();
    let mib: f64 = text
        .strip_prefix("allocated ")
        .and_then(|t| t.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected answer {text:?}"));
    let most = (budget / 2.0 / MIB).min(256.0);
    assert!(
        mib <= most && mib >= most - 8.0,
        "{mib} MiB alone, budget {budget}"
    );
    for i in 0..5 {
        assert_eq!(get(&berth, &format!("/hello/after{i}")).await.status, 200);
    }
    served += 5;
    assert!(berth.terminate().success(), "{}", berth.logs());
    assert_eq!(ledger_count(state, "alloc"), 9);
    assert_eq!(ledger_count(state, "hello"), served);
    eprintln!(
        "{bound}: budget {:.0} MiB; {refused} of 8 guests refused by it, the bystander served {served} of {served}, {mib} MiB for one guest alone",
        budget / MIB
    );
}

fn pressured() -> String {
    PRESSURED
        .replace("HELLO", programs::HELLO)
        .replace("ALLOC", programs::ALLOC)
}

#[tokio::test]
async fn memory_pressure_under_an_address_space_limit_refuses_guests_not_the_host() {
    // 2 GiB of address space: too little for the pooling allocator's
    // reservations, so instances are allocated on demand, each reserving
    // what it holds.
    let (berth, state) = up_under("ulimit -v 2097152", &pressured());
    assert!(
        berth
            .logs()
            .contains("falling back to on-demand allocation"),
        "{}",
        berth.logs()
    );
    under_memory_pressure(berth, &state, "the address-space limit").await;
}

/// A memory cgroup of `limit` bytes below the test's own (v1's memory
/// controller, or v2), removed when dropped.
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn new(limit: u64) -> MemoryCgroup {
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let name = format!("berth-test-{}-{}", std::process::id(), limit);
        let (dir, file) = if let Some(path) = own.lines().find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _ = parts.next();
            parts
                .next()?
                .split(',')
                .any(|c| c == "memory")
                .then(|| parts.next())?
        }) {
            (
                std::path::Path::new("/sys/fs/cgroup/memory")
                    .join(path.trim_start_matches('/'))
                    .join(&name),
                "memory.limit_in_bytes",
            )
        } else {
            let path = own
                .lines()
                .find_map(|l| l.strip_prefix("0::"))
                .expect("the test's cgroup");
            (
                std::path::Path::new("/sys/fs/cgroup")
                    .join(path.trim_start_matches('/'))
                    .join(&name),
                "memory.max",
            )
        };
        std::fs::create_dir(&dir)
            .unwrap_or_else(|e| panic!("creating the memory cgroup {}: {e}", dir.display()));
        std::fs::write(dir.join(file), limit.to_string()).unwrap();
        MemoryCgroup(dir)
    }

    /// The kernel's OOM kills in it so far (v1's `oom_control`, v2's
    /// `memory.events`).
    fn oom_kills(&self) -> u64 {
        ["memory.oom_control", "memory.events"]
            .iter()
            .filter_map(|f| std::fs::read_to_string(self.0.join(f)).ok())
            .flat_map(|t| {
                t.lines()
                    .filter_map(|l| l.strip_prefix("oom_kill ")?.trim().parse::<u64>().ok())
                    .collect::<Vec<_>>()
            })
            .sum()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

#[tokio::test]
async fn memory_pressure_in_a_memory_cgroup_refuses_guests_and_no_one_is_oom_killed() {
    let cgroup = MemoryCgroup::new(512 << 20);
    let (berth, state) = up_under(
        &format!("echo $$ > {}/cgroup.procs", cgroup.0.display()),
        &pressured(),
    );
    let pid = berth.pid();
    under_memory_pressure(berth, &state, "the memory cgroup's limit").await;
    assert_eq!(cgroup.oom_kills(), 0, "the kernel killed in the cgroup");
    eprintln!("cgroup: host {pid} never OOM-killed");
}

/// Sets (`+i`) or clears (`-i`) the immutable flag of `files`: even root
/// can no longer write them, through descriptors already open too.
fn chattr(flag: &str, files: &[std::path::PathBuf]) {
    let status = std::process::Command::new("chattr")
        .arg(flag)
        .args(files)
        .status()
        .unwrap();
    assert!(status.success(), "chattr {flag} {files:?} failed");
}

#[tokio::test]
async fn read_only_ledger_and_bus_files_hold_records_refuse_changes_clearly_and_lose_nothing() {
    let manifest = format!(
        "{}{}",
        service("svc", programs::HELLO, "/svc/...", ""),
        consumer("ro.*", "")
    );
    let (mut berth, state) = up_under("true", &manifest);
    let admin = format!("http://{}", berth.admin.unwrap());
    let mut answered = serve(&berth, 20).await;
    let (mut acked, reply) = publish(&berth, "ro.before", "before", 20).await;
    assert_eq!(reply.status, 202);
    wait_handled(&berth, &acked);
    let deadline = Instant::now() + Duration::from_secs(10);
    while invocations(&berth, "svc").await != answered {
        assert!(Instant::now() < deadline, "the ledger never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The ledger's and the state's (and the bus's) files become read-only
    // under the running host: its open descriptors can no longer write
    // them. (Their shared-memory index, mapped, is left alone.)
    let files: Vec<_> = [
        berth::control::ledger::USAGE_FILE,
        berth::control::state::DB_FILE,
    ]
    .iter()
    .flat_map(|f| [state.join(f), state.join(format!("{f}-wal"))])
    .filter(|f| f.exists())
    .collect();
    assert_eq!(files.len(), 4, "{files:?}");
    chattr("+i", &files);

    // Requests are served; their usage records are held.
    answered += serve(&berth, 30).await;
    let line = berth.wait_for_logs(&["holding them in memory"]);
    assert!(line.contains("usage records could not be stored"), "{line}");
    let line = berth.log_line("ERROR", "usage records could not be stored");
    assert!(line.contains("disk I/O error"), "{line}");
    let scrape = berth.admin_get("/metrics").await.text();
    assert!(metric(&scrape, "berth_ledger_pending_records") > 0.0);
    // A publish is refused, clearly; nothing acknowledged.
    let (_, reply) = publish(&berth, "ro.during", "during", 10).await;
    assert_eq!(reply.status, 507, "{}", reply.text());
    let text = reply.text();
    assert!(
        text.contains("storage_error") && text.contains("disk I/O error"),
        "{text}"
    );
    // So is a deploy; the service deployed serves on.
    let deploy_other = || {
        cli_with_token(
            &admin,
            Some(TOKEN),
            &[
                "deploy",
                "other",
                "--component",
                programs::ECHO,
                "--route",
                "/other",
            ],
        )
    };
    let out = deploy_other();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("storage_error"),
        "{stderr}"
    );
    answered += serve(&berth, 10).await;
    assert_eq!(get(&berth, "/other").await.status, 404);

    // Writable again: the held records are stored, one per request
    // answered; publishes and deploys are taken; every acknowledged event
    // is handled.
    chattr("-i", &files);
    recovered(&berth, answered, "ro.after", &mut acked).await;
    let out = deploy_other();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(post(&berth, "/other", "back").await.text(), "back");
    answered += serve(&berth, 5).await;

    // Stopped cleanly, the state and the ledger are whole.
    assert!(berth.terminate().success(), "{}", berth.logs());
    berth::control::state::State::open(&state.join(berth::control::state::DB_FILE))
        .unwrap()
        .check()
        .expect("the state database is consistent");
    assert_eq!(ledger_count(&state, "svc"), answered);
    eprintln!(
        "read-only files: {answered} requests answered, all in the ledger; {} events acknowledged, all handled",
        acked.len()
    );
}
