//! Crash loops (issue 17): `kill -9` at random points while deploys,
//! event publishing and delivery, and metered requests are all under way,
//! then a restart, twenty times over. No acknowledged deploy or event is
//! lost, the state and the ledger stay consistent, and every artifact
//! hashes to its name.

use crate::events::{all_handled, consumer, event, handled};
use crate::host::*;
use crate::support::*;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A small deterministic generator (xorshift), seeded from
/// `BERTH_CRASH_SEED` or the clock, so that a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    /// Seeded from `BERTH_CRASH_SEED` or the clock; the seed is printed.
    pub fn seeded(what: &str) -> Rng {
        let seed = std::env::var("BERTH_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("{what} seed: {seed} (BERTH_CRASH_SEED={seed} replays it)");
        Rng(seed)
    }

    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The usage records of `service` in the ledger of `host`, after checking
/// the ledger's integrity.
fn ledger_records(host: &Host, service: &str) -> u64 {
    ledger_count(&host.state, service)
}

#[tokio::test]
async fn twenty_kill_9s_during_deploys_events_and_metered_traffic_lose_nothing_acknowledged() {
    const ROUNDS: usize = 20;
    let mut rng = Rng::seeded("crash loop");

    // Guest log lines are the record of what was handled: each is written
    // as it is logged, so a crash loses none.
    let mut host = Host::start(&["--log-buffer", "0ms"]);
    host.deploy_manifest(&consumer("load.*", "concurrency = 8"));
    host.deploy("svc", programs::HELLO, "/svc/...");
    let components = [programs::HELLO, programs::HELLO_WSTD, programs::ECHO];
    let mut acked_events: Vec<String> = Vec::new();
    let mut logs = String::new();
    let (mut sent, mut answered_before_crash) = (0u64, 0u64);
    let mut table = Vec::new();

    for round in 0..ROUNDS {
        let before = ledger_records(&host, "svc");
        let (_, old) = active_of(&host, "svc");
        let component = components[round % components.len()];
        let new = format!(
            "sha256:{}",
            berth::values::digest::Digest::of(&std::fs::read(component).unwrap()).hex()
        );
        // A deploy, a stream of event batches and a stream of requests,
        // all at once; then kill -9 somewhere in the middle.
        let mut deploy = host.spawn_cli(&[
            "deploy",
            "svc",
            "--component",
            component,
            "--route",
            "/svc/...",
        ]);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked = Arc::new(Mutex::new(Vec::new()));
        let publisher = {
            let (stop, acked, admin) = (stop.clone(), acked.clone(), host.berth.admin.unwrap());
            tokio::spawn(async move {
                let mut batch = 0;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let ids: Vec<String> =
                        (0..20).map(|i| format!("r{round}-b{batch}-{i}")).collect();
                    let events: Vec<_> = ids.iter().map(|id| event(id, "load", "x")).collect();
                    let req = batch_request("load.crash", &events);
                    if try_send(admin, req).await.is_ok_and(|r| r.status == 202) {
                        acked.lock().unwrap().extend(ids);
                    }
                    batch += 1;
                }
            })
        };
        let answered = Arc::new(Mutex::new(Vec::new()));
        let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let client = {
            let (stop, answered, requests, addr) = (
                stop.clone(),
                answered.clone(),
                requests.clone(),
                host.berth.addr,
            );
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    requests.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let req = http::Request::get("/svc/x")
                        .header("host", addr.to_string())
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    if try_send(addr, req).await.is_ok_and(|r| r.status == 200) {
                        answered.lock().unwrap().push(Instant::now());
                    }
                }
            })
        };
        let delay = Duration::from_millis(20 + rng.below(1500));
        tokio::time::sleep(delay).await;
        let killed_at = Instant::now();
        host.berth.kill9();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = publisher.await;
        let _ = client.await;
        let deploy_acked = deploy.wait().unwrap().success();
        logs.push_str(&host.berth.logs());
        host.start_again();

        // The state: consistent, artifacts whole, the deploy there if it
        // was acknowledged (else the old revision or the new one).
        assert_state_consistent(&host);
        let (_, now) = active_of(&host, "svc");
        if deploy_acked {
            assert_eq!(now, new, "round {round}: an acknowledged deploy was lost");
        } else {
            assert!(
                now == old || now == new,
                "round {round}: {now} is neither {old} nor {new}"
            );
        }
        // The ledger: whole; every request answered well before the crash
        // is in it (records commit within ~5 ms of the invocation's end;
        // 2 s leaves room for a checkpoint's fsync on a loaded disk), and
        // nothing that was not sent.
        let records = ledger_records(&host, "svc") - before;
        let settled = answered
            .lock()
            .unwrap()
            .iter()
            .filter(|t| killed_at.duration_since(**t) > Duration::from_secs(2))
            .count() as u64;
        let round_sent = requests.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            settled <= records && records <= round_sent,
            "round {round}: {records} ledger records for {settled} requests answered before the crash and {round_sent} sent"
        );
        sent += round_sent;
        answered_before_crash += settled;
        let round_acked = acked.lock().unwrap().len();
        acked_events.extend(acked.lock().unwrap().drain(..));
        table.push(format!(
            "round {round:2}: kill after {:4} ms; deploy {}; {round_acked:4} events acknowledged; {records:4} records for {round_sent:4} requests",
            delay.as_millis(),
            if deploy_acked { "acknowledged" } else if now == new { "kept unacknowledged" } else { "not kept" },
        ));
    }

    // Every acknowledged event is handled, at least once, in the end.
    host.wait_for_events("drained", |e| {
        e["subscriptions"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["depth"] == 0 && s["in_flight"] == 0))
    });
    // The last lines may still be on their way from the host's stderr.
    let deadline = Instant::now() + Duration::from_secs(30);
    let seen = loop {
        let seen = handled(&format!("{logs}{}", host.berth.logs()));
        if acked_events.iter().all(|id| seen.contains_key(id)) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let duplicates = all_handled(&acked_events, &seen);
    assert_eq!(get(&host.berth, "/svc/x").await.status, 200);
    eprintln!("{}", table.join("\n"));
    eprintln!(
        "{ROUNDS} kill -9s: {} events acknowledged, all handled ({duplicates} twice); {sent} requests sent, {answered_before_crash} answered before a crash, all in the ledger",
        acked_events.len()
    );
}

/// The active artifact of service `name`, with its revision.
pub fn active_of(host: &Host, name: &str) -> (u64, String) {
    let services = host.services();
    let svc = services
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("{name} is gone"));
    (
        svc["revision"].as_u64().unwrap(),
        svc["artifact"].as_str().unwrap().to_owned(),
    )
}
