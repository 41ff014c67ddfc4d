//! A cluster of Berth nodes on a real three-server NATS JetStream cluster
//! (`berth serve --cluster`): deployed once, served by every node;
//! revisions by compare-and-swap; nodes that die and come back; what a
//! node does without NATS; bad credentials, tampered artifacts, missing
//! secrets.

use crate::host::{Host, TOKEN, assert_artifacts_whole, batch_request, cli_with_token};
use crate::nats::Nats;
use crate::support::*;
use serde_json::Value;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const V1: &str = "hello from berth: /hello\n";
const V2: &str = "hello from wstd: /hello\n";
/// The CLI's arguments to deploy what answers [`V2`] as `hello`.
const DEPLOY_V2: [&str; 6] = [
    "deploy",
    "hello",
    "--component",
    programs::HELLO_WSTD,
    "--route",
    "/hello",
];

/// A `berth serve` joined to `nats` as node `name`.
fn node(nats: &Nats, name: &str, extra: &[&str]) -> Host {
    let urls = nats.urls();
    let mut args = vec!["--cluster", urls.as_str(), "--node", name];
    args.extend_from_slice(extra);
    Host::start(&args)
}

/// Three nodes on `nats`.
fn three_nodes(nats: &Nats) -> [Host; 3] {
    ["a", "b", "c"].map(|name| node(nats, name, &[]))
}

/// Status and body of `GET path` on `host`'s public listener.
async fn answer(host: &Host, path: &str) -> (u16, String) {
    let reply = get(&host.berth, path).await;
    (reply.status, reply.text())
}

/// Waits until every one of `hosts` answers `path` with `status` and
/// `body`.
async fn wait_all(hosts: &[&Host], path: &str, status: u16, body: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for host in hosts {
        loop {
            let got = answer(host, path).await;
            if got.0 == status && (body.is_empty() || got.1 == body) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{path} on {} never answered {status} {body:?} (last: {got:?})",
                host.admin_url()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until `check` holds, polling.
fn wait_until(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// [`wait_until`] in a test whose tasks go on meanwhile (a blocking
/// wait would hold up the test's one runtime thread).
async fn wait_until_async(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn json(host: &Host, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    serde_json::from_str(&host.cli_ok(&all)).unwrap()
}

/// `service`'s status per node, as `inspect` shows it: (node, status,
/// revision, error).
fn placements(host: &Host, service: &str) -> Vec<(String, String, Option<u64>, String)> {
    // A node that has not applied the deploy yet knows no such service.
    let out = host.cli(&["inspect", service, "--json"]);
    if !out.status.success() {
        return Vec::new();
    }
    let view: Value = serde_json::from_slice(&out.stdout).unwrap();
    view["nodes"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|n| {
            (
                n["node"].as_str().unwrap().to_owned(),
                n["status"].as_str().unwrap().to_owned(),
                n["revision"].as_u64(),
                n["error"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// A service's revision numbers, newest first, and the active one.
fn revisions(host: &Host, service: &str) -> (Vec<u64>, u64) {
    let all = json(host, &["revisions", service]);
    let all = all.as_array().unwrap();
    let numbers = all
        .iter()
        .map(|r| r["revision"].as_u64().unwrap())
        .collect();
    let active = all
        .iter()
        .find(|r| r["active"] == true)
        .map(|r| r["revision"].as_u64().unwrap())
        .unwrap();
    (numbers, active)
}

/// Waits until `nodes` nodes serve `service`'s active revision, as `host`
/// sees it.
fn serving_everywhere(host: &Host, service: &str, nodes: usize) {
    wait_until(
        &format!("{nodes} nodes serve {service}"),
        Duration::from_secs(20),
        || {
            placements(host, service)
                .iter()
                .filter(|p| p.1 == "serving")
                .count()
                == nodes
        },
    );
}

fn node_names(host: &Host) -> Vec<String> {
    json(host, &["nodes"])
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn changes_made_through_any_node_reach_every_node() {
    let nats = Nats::cluster(3);
    let [a, b, c] = three_nodes(&nats);

    // Deployed through a, served by all three.
    let out = a.deploy("hello", programs::HELLO, "/hello");
    assert!(out.contains("deployed hello revision 1"), "{out}");
    wait_all(&[&a, &b, &c], "/hello", 200, V1).await;
    wait_until(
        "every node reports revision 1",
        Duration::from_secs(10),
        || {
            let mut seen = placements(&c, "hello");
            seen.sort();
            seen == [("a", 1), ("b", 1), ("c", 1)]
                .map(|(n, r)| (n.to_owned(), "serving".to_owned(), Some(r), String::new()))
        },
    );

    // An upgrade through b.
    let out = b.deploy("hello", programs::HELLO_WSTD, "/hello");
    assert!(out.contains("deployed hello revision 2"), "{out}");
    wait_all(&[&a, &b, &c], "/hello", 200, V2).await;
    let (numbers, active) = revisions(&c, "hello");
    assert_eq!((numbers, active), (vec![2, 1], 2));

    // A rollback through c.
    c.cli_ok(&["rollback", "hello"]);
    wait_all(&[&a, &b, &c], "/hello", 200, V1).await;
    let listed = json(&a, &["ls"]);
    assert_eq!(listed[0]["revision"], 1, "{listed}");
    assert_eq!(listed[0]["latest_revision"], 2, "{listed}");

    // The nodes, with their addresses.
    let nodes = json(&b, &["nodes"]);
    let nodes = nodes.as_array().unwrap();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    for (view, host) in nodes.iter().zip([&a, &b, &c]) {
        assert_eq!(view["public"], host.berth.addr.to_string(), "{view}");
        assert_eq!(
            view["admin"],
            host.berth.admin.unwrap().to_string(),
            "{view}"
        );
        assert_eq!(view["ready"], true, "{view}");
        assert_eq!(view["version"], env!("CARGO_PKG_VERSION"), "{view}");
    }
    let table = b.cli_ok(&["nodes"]);
    assert!(table.contains("NODE") && table.contains("ready"), "{table}");

    // A removal through a: done there when acknowledged, and everywhere
    // soon after.
    a.cli_ok(&["rm", "hello"]);
    assert_eq!(json(&a, &["ls"]), serde_json::json!([]));
    assert_eq!(answer(&a, "/hello").await.0, 404);
    wait_all(&[&a, &b, &c], "/hello", 404, "").await;
    assert_eq!(json(&b, &["ls"]), serde_json::json!([]));
}

#[tokio::test]
async fn concurrent_deploys_through_two_nodes_get_consecutive_revisions() {
    let nats = Nats::cluster(3);
    let [a, b, c] = three_nodes(&nats);
    const ROUNDS: usize = 4;
    for _ in 0..ROUNDS {
        std::thread::scope(|s| {
            for host in [&a, &b] {
                s.spawn(move || host.deploy("svc", programs::HELLO, "/svc"));
            }
        });
    }
    let (mut numbers, active) = revisions(&a, "svc");
    numbers.sort();
    let expected: Vec<u64> = (1..=2 * ROUNDS as u64).collect();
    assert_eq!(numbers, expected, "no revision lost or numbered twice");
    assert_eq!(active, 2 * ROUNDS as u64);
    // A node that made none of the changes sees them all.
    wait_until("c has every revision", Duration::from_secs(20), || {
        revisions(&c, "svc") == revisions(&a, "svc")
    });
    wait_until(
        "every node serves the last revision",
        Duration::from_secs(20),
        || {
            placements(&a, "svc")
                .iter()
                .filter(|(_, status, revision, _)| {
                    status == "serving" && *revision == Some(2 * ROUNDS as u64)
                })
                .count()
                == 3
        },
    );
}

#[tokio::test]
async fn a_killed_node_leaves_and_a_restarted_one_catches_up_before_it_is_ready() {
    let nats = Nats::cluster(3);
    let [a, b, mut c] = three_nodes(&nats);
    a.deploy("hello", programs::HELLO, "/hello");
    wait_all(&[&a, &b, &c], "/hello", 200, V1).await;
    assert_eq!(node_names(&a), ["a", "b", "c"]);

    let killed = Instant::now();
    c.berth.kill9();
    wait_until("c leaves the list", Duration::from_secs(15), || {
        node_names(&a) == ["a", "b"]
    });
    let gone = killed.elapsed();
    assert!(gone <= Duration::from_secs(10), "c left after {gone:?}");

    // Changes made while c is away.
    b.deploy("hello", programs::HELLO_WSTD, "/hello");
    b.deploy("other", programs::HELLO, "/other");
    a.cli_ok(&["rollback", "hello"]);
    a.deploy("hello", programs::HELLO_WSTD, "/hello");

    // Back: by the time it listens it serves all of them, and is ready.
    c.start_again();
    assert_eq!(answer(&c, "/readyz").await, (200, "ready\n".into()));
    assert_eq!(answer(&c, "/hello").await, (200, V2.into()));
    assert_eq!(
        answer(&c, "/other").await,
        (200, "hello from berth: /other\n".into())
    );
    wait_until("c is listed again", Duration::from_secs(10), || {
        node_names(&b) == ["a", "b", "c"]
    });
}

#[tokio::test]
async fn a_node_without_a_secret_reports_the_service_failed_and_the_others_serve_it() {
    let nats = Nats::cluster(3);
    let with = secrets_dir(&[("api-key", "k3y")]);
    let without = secrets_dir(&[]);
    let with = with.path().to_str().unwrap();
    let a = node(&nats, "a", &["--secrets-dir", with]);
    let b = node(&nats, "b", &["--secrets-dir", with]);
    let c = node(
        &nats,
        "c",
        &["--secrets-dir", without.path().to_str().unwrap()],
    );
    a.cli_ok(&[
        "deploy",
        "vault",
        "--component",
        programs::CAPS,
        "--route",
        "/vault/...",
        "--secret",
        "KEY=api-key",
    ]);
    wait_all(&[&a, &b], "/vault/env?name=KEY", 200, "k3y").await;
    wait_until(
        "c reports the service failed",
        Duration::from_secs(20),
        || {
            placements(&b, "vault")
                .iter()
                .any(|(node, status, _, error)| {
                    node == "c" && status == "failed" && error.contains("api-key")
                })
        },
    );
    assert_eq!(answer(&c, "/vault/env?name=KEY").await.0, 404);
    let inspect = a.cli_ok(&["inspect", "vault"]);
    assert!(
        inspect.contains("node c:") && inspect.contains("failed"),
        "{inspect}"
    );
    let ls = a.cli_ok(&["ls"]);
    assert!(ls.contains("2/3 serving, 1 failed"), "{ls}");
    // Its own view says so too.
    let own = json(&c, &["inspect", "vault"]);
    assert_eq!(own["status"], "failed", "{own}");
}

#[tokio::test]
async fn an_artifact_whose_bytes_do_not_match_its_digest_is_refused_by_every_node() {
    let nats = Nats::cluster(3);
    let [a, b, c] = three_nodes(&nats);
    // Bytes of one component stored under the digest of another.
    let named = std::fs::read(programs::HELLO).unwrap();
    let digest = format!("sha256:{}", sha256_hex(&named));
    let client = async_nats::connect(nats.url(0)).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let store = js.get_object_store("berth_artifacts").await.unwrap();
    let mut wrong: &[u8] = &std::fs::read(programs::HELLO_WSTD).unwrap();
    store.put(digest.as_str(), &mut wrong).await.unwrap();

    // A deploy of it through the API is refused, saying why.
    let reply = a
        .api(
            "PUT",
            "/v1/services/tampered",
            format!(r#"{{"artifact": "{digest}", "routes": ["/tampered"]}}"#),
            Some(TOKEN),
        )
        .await;
    let body = reply.text();
    assert!(body.contains("does not match its digest"), "{body}");

    // A revision record written behind Berth's back: every node refuses it.
    let kv = js.get_key_value("berth_services").await.unwrap();
    let record = format!(
        r#"{{"active": 1, "created_ms": 0, "updated_ms": 0, "revisions": [{{"number": 1, "artifact": "{digest}", "config": {{"routes": ["/tampered"]}}, "created_ms": 0}}]}}"#
    );
    kv.put("tampered", record.into()).await.unwrap();
    wait_until(
        "every node reports it failed",
        Duration::from_secs(20),
        || {
            let seen = placements(&b, "tampered");
            seen.len() == 3
                && seen.iter().all(|(_, status, _, error)| {
                    status == "failed" && error.contains("does not match its digest")
                })
        },
    );
    for host in [&a, &b, &c] {
        assert_eq!(answer(host, "/tampered").await.0, 404);
    }
}

#[tokio::test]
async fn start_fails_clearly_on_an_unreachable_cluster_or_wrong_credentials() {
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("nats://127.0.0.1:{port}");
    let (ok, stderr) = serve_once(&url);
    assert!(!ok, "berth started without its cluster: {stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    assert!(!stderr.contains("berth: serving"), "{stderr}");

    // A server that wants a password; a wrong one is refused, and never
    // shown.
    let nats = Nats::cluster_with(1, &["--user", "berth", "--pass", "right-pass"]);
    let port = nats.url(0).rsplit(':').next().unwrap().to_owned();
    let (ok, stderr) = serve_once(&format!("nats://berth:wrong-pass@127.0.0.1:{port}"));
    assert!(!ok, "berth started with a wrong password: {stderr}");
    assert!(
        stderr.contains(&format!("nats://berth:***@127.0.0.1:{port}")),
        "{stderr}"
    );
    assert!(!stderr.contains("wrong-pass"), "{stderr}");
    assert!(!stderr.contains("berth: serving"), "{stderr}");

    // The right one works.
    let host = Host::start(&[
        "--cluster",
        &format!("nats://berth:right-pass@127.0.0.1:{port}"),
        "--node",
        "solo",
    ]);
    assert_eq!(node_names(&host), ["solo"]);
    assert!(!host.berth.logs().contains("right-pass"));
}

/// Runs `berth serve --cluster URL` expecting it to exit by itself; returns
/// whether it succeeded, and its stderr.
fn serve_once(url: &str) -> (bool, String) {
    serve_once_with(url, &[])
}

fn serve_once_with(url: &str, extra: &[&str]) -> (bool, String) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut child = Command::new(berth_bin())
        .args(["serve", "--state"])
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--cluster", url])
        .args(extra)
        .env_remove("RUST_BACKTRACE")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn with_one_nats_server_of_three_down_changes_carry_on() {
    let mut nats = Nats::cluster(3);
    let [a, b, c] = three_nodes(&nats);
    a.deploy("hello", programs::HELLO, "/hello");
    c.deploy_manifest(&crate::events::consumer("orders.*", ""));
    wait_all(&[&a, &b, &c], "/hello", 200, V1).await;
    serving_everywhere(&a, "consumer", 3);
    // The first server is the one every node tried first.
    nats.kill(0);
    let out = b.deploy("hello", programs::HELLO_WSTD, "/hello");
    assert!(out.contains("revision 2"), "{out}");
    // Events are published and delivered.
    let reply = a
        .publish_batch(
            "orders.created",
            &[crate::events::event("during", "order", "x")],
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    wait_until("the event is handled", Duration::from_secs(60), || {
        handled_across(&[&a, &b, &c], &[]).get("during") == Some(&1)
    });
    wait_all(&[&a, &b, &c], "/hello", 200, V2).await;
    c.cli_ok(&["rollback", "hello"]);
    wait_all(&[&a, &b, &c], "/hello", 200, V1).await;
    // Back, it catches up by itself; nothing changes for the nodes.
    nats.start(0);
    nats.wait_all_ready();
    a.deploy("other", programs::HELLO, "/other");
    wait_all(&[&a, &b, &c], "/other", 200, "hello from berth: /other\n").await;
}

#[tokio::test]
async fn without_nats_loaded_services_answer_changes_fail_clearly_and_the_nodes_catch_up() {
    let mut nats = Nats::cluster(3);
    let a = node(&nats, "a", &[]);
    let b = node(&nats, "b", &[]);
    a.deploy("hello", programs::HELLO, "/hello");
    // A guest that publishes, and one scaled to zero before the outage.
    a.cli_ok(&[
        "deploy",
        "api",
        "--component",
        programs::EVENTS_API,
        "--route",
        "/api/...",
        "--publish",
        "orders.>",
    ]);
    a.cli_ok(&[
        "deploy",
        "cold",
        "--component",
        programs::HELLO,
        "--route",
        "/cold",
        "--idle-timeout",
        "1s",
    ]);
    wait_all(&[&a, &b], "/hello", 200, V1).await;
    wait_all(&[&a], "/cold", 200, "hello from berth: /cold\n").await;
    wait_until(
        "cold is scaled to zero on a",
        Duration::from_secs(20),
        || json(&a, &["inspect", "cold"])["loaded"] == false,
    );

    for i in 0..3 {
        nats.kill(i);
    }
    let down = Instant::now();
    // Ten seconds without any NATS server: both nodes keep answering.
    let mut answered = 0;
    while down.elapsed() < Duration::from_secs(10) {
        for host in [&a, &b] {
            assert_eq!(answer(host, "/hello").await, (200, V1.into()));
            answered += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(answered >= 20, "{answered}");
    // Changes fail at once, naming the cluster.
    deploy_fails_at_once(&a, &nats.url(0));
    let removed = a.cli(&["rm", "hello"]);
    assert!(!removed.status.success());
    assert!(String::from_utf8_lossy(&removed.stderr).contains("cluster_unavailable"));
    // A service scaled to zero starts again from the node's code cache.
    assert_eq!(
        answer(&a, "/cold").await,
        (200, "hello from berth: /cold\n".into())
    );
    // A guest's publish says the event could not be stored.
    let reply = post(&a.berth, "/api/publish/orders.x", "x").await;
    assert_eq!(reply.status, 500, "{}", reply.text());
    assert!(
        reply.text().contains("could not be stored"),
        "{}",
        reply.text()
    );
    // So do publishes: nothing is accepted that is not stored.
    publish_is_refused(&b, "orders.created", "order").await;
    // Reads still answer, from what the node knows.
    let names: Vec<Value> = json(&b, &["ls"])
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].clone())
        .collect();
    assert_eq!(names, ["api", "cold", "hello"]);
    // Not ready, and why.
    let (status, why) = answer(&a, "/readyz").await;
    assert_eq!(status, 503, "{why}");
    assert!(why.contains("lost the cluster"), "{why}");
    // What a container's health check runs says the same.
    let readyz = format!("http://{}/readyz", a.berth.addr);
    let healthz = format!("http://{}/healthz", a.berth.addr);
    let probe = |url: &str| cli_with_token("http://127.0.0.1:1", None, &["health", url]);
    let out = probe(&readyz);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("lost the cluster"));
    assert!(probe(&healthz).status.success(), "alive all the same");

    for i in 0..3 {
        nats.start(i);
    }
    nats.wait_all_ready();
    for host in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(60);
        while answer(host, "/readyz").await.0 != 200 {
            assert!(Instant::now() < deadline, "never ready again");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert!(probe(&readyz).status.success());
    // The change goes through now, and reaches both.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = b.cli(&DEPLOY_V2);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deploys never worked again: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    wait_all(&[&a, &b], "/hello", 200, V2).await;
}

/// A deploy through `node`, cut off from the cluster, fails within 5 s
/// with `cluster_unavailable`, naming the cluster (`naming`).
fn deploy_fails_at_once(node: &Host, naming: &str) {
    let tried = Instant::now();
    let out = node.cli(&DEPLOY_V2);
    let took = tried.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cluster_unavailable"), "{stderr}");
    assert!(stderr.contains(naming), "{stderr}");
    assert!(
        took < Duration::from_secs(5),
        "the deploy took {took:?} to fail"
    );
}

/// A publish through `node` of an event on `topic` is refused with 503
/// `cluster_unavailable`: nothing is accepted that is not stored.
async fn publish_is_refused(node: &Host, topic: &str, kind: &str) {
    let reply = node
        .publish_batch(topic, &[crate::events::event("lost?", kind, "x")])
        .await;
    assert_eq!(reply.status, 503, "{}", reply.text());
    assert!(
        reply.text().contains("cluster_unavailable"),
        "{}",
        reply.text()
    );
}

/// Every id handled by the consumer on any of `hosts` (with `also`, the
/// logs of a process gone), and how often.
fn handled_across(hosts: &[&Host], also: &[String]) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    let logs = hosts
        .iter()
        .map(|h| h.berth.logs())
        .chain(also.iter().cloned());
    for log in logs {
        for (id, n) in crate::events::handled(&log) {
            *seen.entry(id).or_default() += n;
        }
    }
    seen
}

/// Waits until every subscription is drained, as `node` sees the cluster.
fn drained(node: &Host) {
    node.wait_for_events("drained", |e| {
        e["subscriptions"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["depth"] == 0 && s["in_flight"] == 0))
    });
}

/// Publishes ten events every 100 ms through a node's admin API, until
/// stopped: what the consumers drain as fast as they come.
struct Publisher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<Vec<String>>,
}

impl Publisher {
    /// Publishes to `topic` through `node`, events of type `load` with ids
    /// `TAG-bBATCH-I`.
    fn start(node: &Host, topic: &str, tag: String) -> Publisher {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let admin = node.berth.admin.unwrap();
        let topic = topic.to_owned();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut acked = Vec::new();
                let mut batch = 0;
                while !stop.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let ids: Vec<String> = (0..10).map(|i| format!("{tag}-b{batch}-{i}")).collect();
                    let events: Vec<_> = ids
                        .iter()
                        .map(|id| crate::events::event(id, "load", "x"))
                        .collect();
                    match try_send(admin, batch_request(&topic, &events)).await {
                        Ok(r) if r.status == 202 => acked.extend(ids),
                        Ok(_) => {}
                        // Its node is gone: wait for the stop.
                        Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                    batch += 1;
                }
                acked
            }
        });
        Publisher { stop, task }
    }

    /// Stops; the ids of the events acknowledged.
    async fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

#[tokio::test]
async fn events_published_through_any_node_run_once_across_the_nodes() {
    let nats = Nats::cluster(3);
    let [a, b, c] = three_nodes(&nats);
    a.deploy_manifest(&crate::events::consumer("orders.*", ""));
    serving_everywhere(&c, "consumer", 3);
    let events: Vec<_> = (0..30)
        .map(|i| crate::events::event(&format!("o-{i}"), "order", "x"))
        .collect();
    let reply = b.publish_batch("orders.created", &events).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(Host::json(&reply)["published"][0]["deliveries"], 1);
    // The CLI through another node.
    let out = c.cli_ok(&["publish", "orders.paid", "--id", "o-cli", "--data", "x"]);
    assert!(out.contains("1 delivery"), "{out}");
    drained(&a);
    wait_until("all 31 handled", Duration::from_secs(30), || {
        handled_across(&[&a, &b, &c], &[]).len() == 31
    });
    let seen = handled_across(&[&a, &b, &c], &[]);
    assert!(seen.values().all(|&n| n == 1), "{seen:?}");
    // The same CloudEvent (source and id) published again is stored once.
    let reply = a
        .publish_batch(
            "orders.created",
            &[crate::events::event("o-0", "order", "x")],
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    tokio::time::sleep(Duration::from_millis(500)).await;
    drained(&b);
    assert_eq!(handled_across(&[&a, &b, &c], &[])["o-0"], 1);

    // A revision that subscribes to something else: the old subscription
    // is gone for the whole cluster, and collects nothing more.
    b.deploy_manifest(&crate::events::consumer("orders.paid", ""));
    let subscriptions = |host: &Host| -> Vec<String> {
        host.events()["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["subscription"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(subscriptions(&c), ["consumer:orders.paid"]);
    let reply = a
        .publish_batch(
            "orders.created",
            &[crate::events::event("late", "order", "x")],
        )
        .await;
    assert_eq!(Host::json(&reply)["published"][0]["deliveries"], 0);
}

#[tokio::test]
async fn retries_dead_letters_replay_and_purge_work_from_any_node() {
    let nats = Nats::cluster(3);
    let [a, b, c] = three_nodes(&nats);
    a.deploy_manifest(&crate::events::consumer(
        "jobs.*",
        "max_attempts = 3\nbackoff = \"50ms\"\nmax_backoff = \"200ms\"",
    ));
    serving_everywhere(&c, "consumer", 3);
    let reply = b
        .publish_batch(
            "jobs.run",
            &[
                crate::events::event("err", "fail", "x"),
                crate::events::event("rej", "reject", "x"),
                crate::events::event("flaky", "fail-until-3", "x"),
            ],
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    wait_until("the flaky one made it", Duration::from_secs(30), || {
        [&a, &b, &c]
            .iter()
            .any(|h| h.berth.logs().contains("handled jobs.run flaky attempt=3"))
    });
    c.wait_for_events("two dead letters", |e| {
        e["subscriptions"][0]["dead_letters"] == 2
    });
    let dead: Vec<Value> = serde_json::from_str(&a.cli_ok(&["events", "dead", "--json"])).unwrap();
    let attempts = |id: &str| {
        dead.iter()
            .find(|d| d["event"]["id"] == id)
            .unwrap_or_else(|| panic!("{id} is not dead: {dead:?}"))["attempts"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(attempts("err"), 3);
    assert_eq!(attempts("rej"), 1);
    assert!(
        dead.iter()
            .any(|d| d["error"].as_str().unwrap().contains("failing on purpose"))
    );

    // Replayed through b: delivered again from the first attempt.
    let out = b.cli_ok(&["events", "replay", "err"]);
    assert!(out.contains("replayed 1 dead letter"), "{out}");
    wait_until("the replay failed again", Duration::from_secs(30), || {
        let logs: String = [&a, &b, &c].iter().map(|h| h.berth.logs()).collect();
        logs.matches("failing on purpose (attempt 1)").count() >= 2
    });
    c.wait_for_events("dead again", |e| e["subscriptions"][0]["dead_letters"] == 2);
    // Purged through c, by topic then all.
    let out = c.cli_ok(&["events", "purge", "--topic", "other.topic"]);
    assert!(out.contains("purged 0"), "{out}");
    let out = c.cli_ok(&["events", "purge"]);
    assert!(out.contains("purged 2 dead letters"), "{out}");
    assert_eq!(a.subscription("consumer:jobs.*")["dead_letters"], 0);
}

#[tokio::test]
async fn kill_9_of_a_node_while_10000_events_flow_loses_none() {
    const N: usize = 10_000;
    let nats = Nats::cluster(3);
    let a = node(&nats, "a", &["--log-buffer", "0ms"]);
    let mut b = node(&nats, "b", &["--log-buffer", "0ms"]);
    let c = node(&nats, "c", &["--log-buffer", "0ms"]);
    a.deploy_manifest(&crate::events::consumer("load.*", "concurrency = 16"));
    serving_everywhere(&c, "consumer", 3);
    let ids: Vec<String> = (0..N).map(|i| format!("ev-{i}")).collect();
    // Published through a, in batches, while b is killed.
    let publisher = {
        let admin = a.berth.admin.unwrap();
        let ids = ids.clone();
        tokio::spawn(async move {
            for chunk in ids.chunks(250) {
                let events: Vec<_> = chunk
                    .iter()
                    .map(|id| crate::events::event(id, "load", "x"))
                    .collect();
                let reply = send(admin, batch_request("load.test", &events)).await;
                assert_eq!(reply.status, 202, "{}", reply.text());
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while crate::events::handled(&b.berth.logs()).len() < 500 {
        assert!(Instant::now() < deadline, "b handled nothing");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    b.berth.kill9();
    let gone = vec![b.berth.logs()];
    let on_b = crate::events::handled(&gone[0]).len();
    publisher.await.unwrap();
    let published_at_kill = handled_across(&[&a, &c], &gone).len();
    assert!(
        published_at_kill < N,
        "everything was handled before the kill"
    );
    drained(&a);
    let seen = handled_across(&[&a, &c], &gone);
    let duplicates = crate::events::all_handled(&ids, &seen);
    eprintln!(
        "kill -9 of node b (which had handled {on_b}) while {N} events flowed: all {N} handled at least once; {duplicates} handled twice (in flight on b)"
    );
}

#[tokio::test]
async fn schedules_fire_once_per_cluster_and_once_after_the_whole_cluster_was_down() {
    const FIRED: &str = "schedule fired service=consumer schedule=tick";
    let nats = Nats::cluster(3);
    let mut nodes = three_nodes(&nats);
    nodes[0].deploy_manifest(&format!(
        "[service.consumer]\ncomponent = {:?}\n\n[[service.consumer.schedules]]\nname = \"tick\"\nevery = \"2s\"\n",
        programs::EVENTS_CONSUMER
    ));
    let all_logs = |nodes: &[Host]| -> String { nodes.iter().map(|n| n.berth.logs()).collect() };
    wait_until("three firings", Duration::from_secs(30), || {
        all_logs(&nodes).matches(FIRED).count() >= 3
    });
    std::thread::sleep(Duration::from_millis(500));
    let logs = all_logs(&nodes);
    let fired = logs.matches(FIRED).count();
    let handled = logs.matches("handled berth.schedule.consumer.tick").count();
    // Three nodes, each waking at every due time: one firing per period.
    assert!(fired <= 4, "{fired} firings in about six seconds:\n{logs}");
    assert!(
        handled >= fired.saturating_sub(1) && handled <= fired,
        "{handled} handled of {fired}"
    );

    // Every node down for more than three periods: one catch-up firing.
    for node in nodes.iter_mut() {
        assert!(node.berth.terminate().success());
    }
    std::thread::sleep(Duration::from_millis(7000));
    let restarted = Instant::now();
    for node in nodes.iter_mut() {
        node.start_again();
    }
    wait_until("the catch-up firing", Duration::from_secs(10), || {
        all_logs(&nodes).contains(FIRED)
    });
    let caught_up = restarted.elapsed();
    std::thread::sleep(Duration::from_millis(800));
    let logs = all_logs(&nodes);
    assert_eq!(logs.matches(FIRED).count(), 1, "{logs}");
    assert!(caught_up < Duration::from_secs(5), "{caught_up:?}");
}

#[tokio::test]
async fn usage_on_any_node_is_the_clusters_and_keeps_a_dead_nodes_records() {
    let nats = Nats::cluster(3);
    let [a, b, mut c] = three_nodes(&nats);
    a.deploy("hello", programs::HELLO, "/hello");
    wait_all(&[&a, &b, &c], "/hello", 200, V1).await;
    // The three answers that said every node serves it count too.
    let per_node = [(&a, 6), (&b, 10), (&c, 12)];
    for (host, n) in per_node {
        for _ in 0..n {
            assert_eq!(answer(host, "/hello").await.0, 200);
        }
    }
    // Counted once each, on every node, c's among them...
    let total = |host: &Host| -> u64 {
        let report = json(host, &["usage", "--service", "hello"]);
        report["total"]["invocations"].as_u64().unwrap_or(0)
    };
    wait_until("every node counts 31", Duration::from_secs(20), || {
        [&a, &b, &c].iter().all(|h| total(h) == 31)
    });
    // Metrics stay per node, and say which.
    let metrics = a.api("GET", "/metrics", "", Some(TOKEN)).await.text();
    assert!(
        metrics.contains("berth_invocations_total{node=\"a\",service=\"hello\""),
        "{metrics}"
    );
    // ... and still after c is gone.
    c.berth.kill9();
    for _ in 0..4 {
        assert_eq!(answer(&b, "/hello").await.0, 200);
    }
    wait_until("a and b count 35", Duration::from_secs(20), || {
        total(&a) == 35 && total(&b) == 35
    });
    let records = json(&a, &["usage", "--records", "--service", "hello"]);
    let ids: std::collections::HashSet<_> = records
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["invocation"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids.len(), 35, "every invocation once");
    // A node that joins later gets the whole bill.
    let d = node(&nats, "d", &[]);
    wait_until("d counts 35", Duration::from_secs(20), || total(&d) == 35);
}

/// `openssl ARGS` in `dir`, which must succeed.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn a_tls_cluster_is_joined_with_its_ca_and_refused_without_it() {
    // A CA, and a server certificate for 127.0.0.1 signed by it.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = |f: &str| dir.path().join(f).to_str().unwrap().to_owned();
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=berth test CA",
        ],
    );
    openssl(
        dir.path(),
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(dir.path().join("san.cnf"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    openssl(
        dir.path(),
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.cnf",
        ],
    );
    let (cert, key) = (path("server.pem"), path("server.key"));
    let nats = Nats::cluster_with(1, &["--tls", "--tlscert", &cert, "--tlskey", &key]);
    let url = nats.url(0).replace("nats://", "tls://");

    // Without the CA, the server's certificate is not trusted.
    let (ok, stderr) = serve_once(&url);
    assert!(!ok, "joined an untrusted server: {stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    // A CA file that is not there is named.
    let (ok, stderr) = serve_once_with(&url, &["--nats-ca", "/nonexistent/ca.pem"]);
    assert!(!ok && stderr.contains("/nonexistent/ca.pem"), "{stderr}");

    // With it, the node joins, and serves.
    let ca = path("ca.pem");
    let host = Host::start(&["--cluster", &url, "--nats-ca", &ca, "--node", "secure"]);
    assert_eq!(node_names(&host), ["secure"]);
    host.deploy("hello", programs::HELLO, "/hello");
    assert_eq!(answer(&host, "/hello").await, (200, V1.into()));
}

#[tokio::test]
async fn a_creds_file_joins_an_operator_mode_cluster_and_is_required() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (config, creds) = crate::creds::issue(dir.path());
    let nats = Nats::cluster_with(1, &["-c", config.to_str().unwrap()]);
    let url = nats.url(0);
    // Without credentials the server refuses the node.
    let (ok, stderr) = serve_once(&url);
    assert!(!ok, "joined without credentials: {stderr}");
    assert!(stderr.contains(&url), "{stderr}");
    // With the user's .creds file it joins, and JetStream works for it.
    let creds = creds.to_str().unwrap();
    let host = Host::start(&["--cluster", &url, "--nats-creds", creds, "--node", "creds"]);
    host.deploy("hello", programs::HELLO, "/hello");
    assert_eq!(answer(&host, "/hello").await, (200, V1.into()));
    assert_eq!(node_names(&host), ["creds"]);
    // A creds file that is not there is named.
    let (ok, stderr) = serve_once_with(&url, &["--nats-creds", "/nonexistent/node.creds"]);
    assert!(
        !ok && stderr.contains("/nonexistent/node.creds"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_api_key_made_on_one_node_opens_every_node_and_a_revoke_on_another_closes_them_all() {
    let nats = Nats::cluster(3);
    let a = node(&nats, "a", &[]);
    let b = node(&nats, "b", &[]);
    let manifest = format!(
        "{}[service.api.auth]\napi_keys = true\n",
        service("api", programs::HELLO, "/hello", "")
    );
    a.deploy_manifest(&manifest);
    let key = a
        .cli_ok(&["keys", "create", "ci", "--service", "api"])
        .trim()
        .to_owned();
    // A second key of the same name is refused, through either node.
    let again = b.cli(&["keys", "create", "ci", "--service", "api"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    let with_key = |host: &Host| {
        let addr = host.berth.addr;
        let key = key.clone();
        async move {
            let req = http::Request::get("/hello")
                .header("host", addr.to_string())
                .header("x-api-key", key)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            send(addr, req).await.status
        }
    };
    for host in [&a, &b] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while with_key(host).await != 200 {
            assert!(
                Instant::now() < deadline,
                "the key never opened {}",
                host.admin_url()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(get(&host.berth, "/hello").await.status, 401);
    }
    b.cli_ok(&["keys", "revoke", "ci"]);
    for host in [&b, &a] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while with_key(host).await != 401 {
            assert!(
                Instant::now() < deadline,
                "the revoke never reached {}",
                host.admin_url()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let listed: Value = json(&a, &["keys", "ls"]);
    assert_eq!(listed[0]["state"], "revoked");
    assert!(!listed.to_string().contains(&key));
}

/// The lines `berth logs ARGS` shows through `host` (it must succeed).
fn logs_through(host: &Host, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    host.cli_ok(&all)
}

#[tokio::test]
async fn berth_logs_on_any_node_shows_every_nodes_lines_and_follows_them() {
    let nats = Nats::cluster(3);
    let [a, b, c] = three_nodes(&nats);
    a.deploy("hello", programs::HELLO, "/hello/...");
    serving_everywhere(&c, "hello", 3);
    let mut ids = Vec::new();
    for (host, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
        let reply = get(&host.berth, &format!("/hello/from-{name}")).await;
        assert_eq!(reply.status, 200);
        ids.push((name, reply.invocation()));
    }

    // Through node a: every node's lines, each tagged with its node.
    let mut text = String::new();
    wait_until("every node's lines", Duration::from_secs(20), || {
        text = logs_through(&a, &["hello"]);
        ids.iter().all(|(name, id)| {
            text.lines().any(|l| {
                l.contains(&format!(" {name} hello {id} stdout "))
                    && l.contains(&format!("hello handled /hello/from-{name}"))
            })
        })
    });
    let json: Vec<Value> = logs_through(&b, &["hello", "--json"])
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let nodes: std::collections::BTreeSet<&str> =
        json.iter().filter_map(|l| l["node"].as_str()).collect();
    assert_eq!(nodes.into_iter().collect::<Vec<_>>(), ["a", "b", "c"]);
    // In time order, whichever node they came from.
    let times: Vec<u64> = json
        .iter()
        .map(|l| l["time_ms"].as_u64().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    // A node that keeps no lines answers with none: every node answered.
    let d = node(&nats, "d", &["--service-log-size", "0"]);
    serving_everywhere(&a, "hello", 4);
    let out = a.cli(&["logs", "hello"]);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("no answer"), "{stderr}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("/hello/from-c"));
    // One invocation's lines, found on the node that ran it.
    let (_, c_id) = &ids[2];
    let one = logs_through(&a, &["hello", "--invocation", c_id]);
    assert!(
        !one.is_empty()
            && one
                .lines()
                .all(|l| l.contains(&format!(" c hello {c_id} "))),
        "{one}"
    );

    // Following through node b: new lines from a and c as they come.
    let mut follower = Command::new(berth_bin())
        .args(["logs", "hello", "-f", "--tail", "0"])
        .env("BERTH_HOST", b.admin_url())
        .env("BERTH_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut follower);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = String::new();
    let mut round = 0;
    while !(seen.contains("/hello/live-a-") && seen.contains("/hello/live-c-")) {
        assert!(
            Instant::now() < deadline,
            "the follower on b never showed a's and c's new lines:\n{seen}"
        );
        // Again until seen: the follower may not be listening yet.
        for (host, name) in [(&a, "a"), (&c, "c")] {
            let path = format!("/hello/live-{name}-{round}");
            assert_eq!(get(&host.berth, &path).await.status, 200);
        }
        round += 1;
        let until = Instant::now() + Duration::from_millis(500);
        while let Ok(line) = rx.recv_timeout(until.saturating_duration_since(Instant::now())) {
            seen.push_str(&line);
            seen.push('\n');
        }
    }
    for line in seen.lines().filter(|l| l.contains("/hello/live-")) {
        let node = if line.contains("/hello/live-a-") {
            "a"
        } else {
            "c"
        };
        assert!(line.contains(&format!(" {node} hello ")), "{line}");
    }
    // Each line once.
    let mut live: Vec<&str> = seen.lines().filter(|l| l.contains("stdout")).collect();
    let count = live.len();
    live.sort();
    live.dedup();
    assert_eq!(live.len(), count, "a line shown twice:\n{seen}");
    let _ = follower.kill();
    let _ = follower.wait();
    drop(d);
}

#[tokio::test]
async fn a_backlog_on_jetstream_shows_as_bus_lag_until_it_drains() {
    let nats = Nats::cluster(1);
    let a = node(&nats, "a", &[]);
    a.deploy_manifest(&crate::events::consumer(
        "lag.*",
        "max_attempts = 1\nconcurrency = 1",
    ));
    serving_everywhere(&a, "consumer", 1);
    // Each spins to its 500 ms deadline, one at a time.
    let batch: Vec<_> = (0..6)
        .map(|i| crate::events::event(&format!("slow-{i}"), "sleep", "x"))
        .collect();
    assert_eq!(a.publish_batch("lag.work", &batch).await.status, 202);
    a.wait_for_events("lagging", |e| {
        e["subscriptions"][0]["lag_ms"].as_u64().unwrap() >= 1000
    });
    let metrics = a.api("GET", "/metrics", "", Some(TOKEN)).await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("berth_event_lag_seconds{")
                && l.contains("subscription=\"consumer:lag.*\"")),
        "{metrics}"
    );
    a.wait_for_events("drained", |e| {
        e["subscriptions"][0]["depth"] == 0 && e["subscriptions"][0]["lag_ms"] == 0
    });
}

/// Crash loops in a cluster (issue 17): twenty rounds, each a deploy
/// through one node and event batches published through another, with
/// `kill -9` of a Berth node or of a NATS server at a random point, and the
/// victim restarted. No acknowledged deploy or event is lost: every node
/// converges on the acknowledged revision (else on the old one or the new
/// one, the same everywhere), every acknowledged event is handled, and
/// every node's artifacts hash to their names.
#[tokio::test]
async fn crash_loop_of_nodes_and_nats_servers_loses_nothing_acknowledged() {
    const ROUNDS: usize = 20;
    let mut rng = crate::crash::Rng::seeded("cluster crash loop");
    let mut nats = Nats::cluster(3);
    // Guest log lines are the record of what was handled: each is written
    // as it is logged, so a kill loses none.
    let mut nodes = ["a", "b", "c"].map(|name| node(&nats, name, &["--log-buffer", "0ms"]));
    nodes[0].deploy_manifest(&crate::events::consumer("load.*", "concurrency = 8"));
    nodes[0].deploy("svc", programs::HELLO, "/svc/...");
    serving_everywhere(&nodes[1], "consumer", 3);
    serving_everywhere(&nodes[2], "svc", 3);
    let components = [programs::HELLO, programs::HELLO_WSTD, programs::ECHO];
    let mut gone: Vec<String> = Vec::new();
    let mut acked_events: Vec<String> = Vec::new();
    let mut table = Vec::new();

    for round in 0..ROUNDS {
        let (deployer, publisher) = (round % 3, (round + 1) % 3);
        let (_, old) = crate::crash::active_of(&nodes[deployer], "svc");
        let component = components[round % components.len()];
        let new = format!(
            "sha256:{}",
            berth::values::digest::Digest::of(&std::fs::read(component).unwrap()).hex()
        );
        let mut deploy = nodes[deployer].spawn_cli(&[
            "deploy",
            "svc",
            "--component",
            component,
            "--route",
            "/svc/...",
        ]);
        let publishing = Publisher::start(&nodes[publisher], "load.crash", format!("r{round}"));
        // The kill lands while events are published and delivered; when it
        // is the deploying node's, within the deploy's first tens of
        // milliseconds (a deploy of a stored artifact takes about that).
        let victim = rng.below(6) as usize;
        let delay = Duration::from_millis(if victim == deployer {
            rng.below(60)
        } else {
            5 + rng.below(400)
        });
        tokio::time::sleep(delay).await;
        let what = if victim < 3 {
            nodes[victim].berth.kill9();
            gone.push(nodes[victim].berth.logs());
            format!("node {}", ["a", "b", "c"][victim])
        } else {
            nats.kill(victim - 3);
            format!("nats-{}", victim - 3)
        };
        // Publishing and the deploy go on for a moment without it.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let acked = publishing.stop().await;
        let deploy_acked = deploy.wait().unwrap().success();
        if victim < 3 {
            nodes[victim].start_again();
        } else {
            nats.start(victim - 3);
            nats.wait_all_ready();
        }

        // Every node converges on one revision: the new one if the deploy
        // was acknowledged, else the old one or the new one.
        let mut now = String::new();
        wait_until(
            &format!("round {round}: every node has one active artifact"),
            Duration::from_secs(60),
            || {
                let seen: Vec<String> = nodes
                    .iter()
                    .map(|n| crate::crash::active_of(n, "svc").1)
                    .collect();
                now = seen[0].clone();
                seen.iter().all(|s| *s == now) && (!deploy_acked || now == new)
            },
        );
        assert!(
            now == old || now == new,
            "round {round}: {now} is neither {old} nor {new}"
        );
        let round_acked = acked.len();
        acked_events.extend(acked);
        table.push(format!(
            "round {round:2}: {what:6} killed after {:4} ms; deploy through {} {}; {round_acked:4} events acknowledged through {}",
            delay.as_millis(),
            ["a", "b", "c"][deployer],
            if deploy_acked {
                "acknowledged"
            } else if now == new {
                "kept unacknowledged"
            } else {
                "not kept"
            },
            ["a", "b", "c"][publisher],
        ));
    }

    // Every acknowledged event is handled, at least once, on some node.
    drained(&nodes[0]);
    let refs: Vec<&Host> = nodes.iter().collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen = handled_across(&refs, &gone);
        if acked_events.iter().all(|id| seen.contains_key(id)) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let duplicates = crate::events::all_handled(&acked_events, &seen);
    for node in &nodes {
        assert!(assert_artifacts_whole(node) >= 1);
    }
    wait_all(&refs, "/svc/x", 200, "").await;
    eprintln!("{}", table.join("\n"));
    eprintln!(
        "{ROUNDS} kill -9s of nodes and NATS servers: {} events acknowledged, all handled ({duplicates} twice); every acknowledged deploy kept on every node",
        acked_events.len()
    );
}

/// A NATS server that hangs (stopped: its connections stay open and it
/// answers nothing) while events flow, every node connected to it: the
/// nodes give it up and go on with the other servers, no subscription
/// stalls on a request the hung server never answers (found by the crash
/// loop: a fetch waited for ever), and every acknowledged event is
/// handled; let go again, it rejoins.
#[tokio::test]
async fn a_hung_nats_server_stalls_no_subscription_and_loses_nothing() {
    let nats = Nats::cluster(3);
    // Given only the first server, every node connects to it, and learns
    // the others from it.
    let first = nats.url(0);
    let nodes = ["a", "b", "c"]
        .map(|name| Host::start(&["--cluster", &first, "--node", name, "--log-buffer", "0ms"]));
    nodes[0].deploy_manifest(&crate::events::consumer("load.*", "concurrency = 8"));
    serving_everywhere(&nodes[2], "consumer", 3);
    let refs: Vec<&Host> = nodes.iter().collect();
    let publisher = Publisher::start(&nodes[0], "load.hang", "hang".into());
    wait_until_async("events are handled", Duration::from_secs(30), || {
        handled_across(&refs, &[]).len() >= 50
    })
    .await;
    nats.set_running(0, false);
    let hung = Instant::now();
    // Long enough for the nodes to give it up (their pings: about 10 s)
    // and for a fetch lost with it to have waited past any answer.
    tokio::time::sleep(Duration::from_secs(25)).await;
    nats.set_running(0, true);
    let before = handled_across(&refs, &[]).len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let acked = publisher.stop().await;
    let deadline = Instant::now() + Duration::from_secs(90);
    let seen = loop {
        let seen = handled_across(&refs, &[]);
        if acked.iter().all(|id| seen.contains_key(id)) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} acknowledged events handled {:?} after the server hung (a subscription stalled?)",
            acked.iter().filter(|id| seen.contains_key(*id)).count(),
            acked.len(),
            hung.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let duplicates = crate::events::all_handled(&acked, &seen);
    drained(&nodes[1]);
    eprintln!(
        "a NATS server hung for 25 s under every node: {} events acknowledged, all handled ({duplicates} twice; {before} handled by the time it went on)",
        acked.len()
    );
}

/// A node cut off from NATS by the network — its link down, so what it
/// sends is lost without a word, as on a cut cable — while the rest of
/// the cluster carries on: it serves what it has loaded, is not ready,
/// refuses changes and publishes naming the cluster, and the others stop
/// listing it; healed, it catches up with what changed, is ready again
/// and takes changes; no acknowledged event is lost.
///
/// The NATS servers run in a network namespace of their own, nodes a and
/// b in a second, node c in a third, each linked to the servers' by a veth
/// link (c's is the one cut) and to this process by another, on which the
/// test reaches the nodes. Nothing in the namespaces has a route out.
#[tokio::test]
async fn a_node_cut_off_from_nats_by_the_network_serves_what_it_has_and_catches_up_when_healed() {
    use crate::netns::{Block, Netns, Veth};
    let block = Block::take();
    let nats_net = Netns::new("nats");
    let ab_net = Netns::new("nodes-ab");
    let c_net = Netns::new("node-c");
    let ab_to_nats = Veth::new(&block, 0, Some(&ab_net), Some(&nats_net));
    let c_to_nats = Veth::new(&block, 1, Some(&c_net), Some(&nats_net));
    let to_ab = Veth::new(&block, 2, None, Some(&ab_net));
    let to_c = Veth::new(&block, 3, None, Some(&c_net));
    let nats = Nats::cluster_in(3, &nats_net);
    // Without the servers' advertised addresses, the nodes are told the
    // replicas.
    let joined = |urls: &str, name: &str| -> Vec<String> {
        ["--cluster", urls, "--node", name, "--cluster-replicas", "3"]
            .map(str::to_owned)
            .to_vec()
    };
    let start = |ns: &Netns, bind: &str, nats_at: &str, name: &str| {
        let args = joined(&nats.urls_at(nats_at), name);
        Host::start_in(
            ns,
            bind,
            &args.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let a = start(&ab_net, &to_ab.two(), &ab_to_nats.two(), "a");
    let b = start(&ab_net, &to_ab.two(), &ab_to_nats.two(), "b");
    let c = start(&c_net, &to_c.two(), &c_to_nats.two(), "c");
    a.deploy("hello", programs::HELLO, "/hello");
    a.deploy_manifest(&crate::events::consumer("load.*", "concurrency = 8"));
    serving_everywhere(&a, "hello", 3);
    serving_everywhere(&a, "consumer", 3);
    wait_all(&[&a, &b, &c], "/hello", 200, V1).await;
    assert_eq!(node_names(&a), ["a", "b", "c"]);

    // Events flow through a for the whole test; c takes its part.
    let publisher = Publisher::start(&a, "load.cut", "cut".into());
    wait_until_async("c handles events", Duration::from_secs(30), || {
        crate::events::handled(&c.berth.logs()).len() >= 20
    })
    .await;

    c_to_nats.set_two(false);
    let cut = Instant::now();
    // A change through c before it notices fails after its request's
    // timeout rather than hang.
    let early = tokio::task::spawn_blocking({
        let admin = c.admin_url();
        move || {
            let out = cli_with_token(&admin, Some(TOKEN), &DEPLOY_V2);
            (out, cut.elapsed())
        }
    });
    // c answers throughout; it notices the loss (by the connection's
    // pings or the watch's heartbeats) and, once its connection is given
    // up, says it lost the cluster.
    let mut answered = 0;
    let mut noticed = None;
    loop {
        assert_eq!(answer(&c, "/hello").await, (200, V1.into()));
        answered += 1;
        let (status, why) = answer(&c, "/readyz").await;
        if status == 503 {
            noticed.get_or_insert(cut.elapsed());
            if why.contains("lost the cluster") {
                break;
            }
        }
        assert!(
            cut.elapsed() < Duration::from_secs(30),
            "c never said it lost the cluster: {status} {why}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let noticed = noticed.unwrap();
    let (out, early_took) = early.await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cluster_unavailable"), "{stderr}");
    // Noticed, changes and publishes through c fail at once, naming the
    // cluster.
    deploy_fails_at_once(&c, &c_to_nats.two());
    publish_is_refused(&c, "load.cut", "load").await;
    // Cut off, c knows of no other node, and says why it is not ready.
    let nodes = json(&c, &["nodes"]);
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
    assert_eq!(nodes[0]["name"], "c");
    assert_eq!(nodes[0]["ready"], false);
    let why = nodes[0]["unready"].as_str().unwrap();
    assert!(why.contains("lost the cluster"), "{why}");

    // The rest of the cluster carries on: a change through a reaches b,
    // not c, which serves what it has; a and b stop listing c.
    a.cli_ok(&DEPLOY_V2);
    wait_all(&[&a, &b], "/hello", 200, V2).await;
    wait_until_async("a lists c no more", Duration::from_secs(30), || {
        node_names(&a) == ["a", "b"]
    })
    .await;
    // Cut for 10 s more at least, c answering all along.
    while cut.elapsed() < noticed + Duration::from_secs(10) {
        assert_eq!(answer(&c, "/hello").await, (200, V1.into()));
        answered += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(answer(&c, "/readyz").await.0, 503);

    c_to_nats.set_two(true);
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(60);
    while answer(&c, "/readyz").await.0 != 200 {
        assert!(Instant::now() < deadline, "c never ready again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_after = healed.elapsed();
    // Ready means caught up: the change made while it was cut off.
    assert_eq!(answer(&c, "/hello").await, (200, V2.into()));
    wait_until_async("a lists c again", Duration::from_secs(30), || {
        node_names(&a) == ["a", "b", "c"]
    })
    .await;
    // c takes changes and publishes again.
    c.deploy("hello", programs::HELLO, "/hello");
    wait_all(&[&a, &b, &c], "/hello", 200, V1).await;
    let reply = c
        .publish_batch("load.cut", &[crate::events::event("after", "load", "x")])
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());

    // Every acknowledged event is handled, at least once, on some node
    // (c's in flight at the cut, again on another).
    let mut acked = publisher.stop().await;
    acked.push("after".into());
    drained(&a);
    let deadline = Instant::now() + Duration::from_secs(60);
    let seen = loop {
        let seen = handled_across(&[&a, &b, &c], &[]);
        if acked.iter().all(|id| seen.contains_key(id)) || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let duplicates = crate::events::all_handled(&acked, &seen);
    assert!(!seen.contains_key("lost?"));
    for node in [&a, &b, &c] {
        assert!(assert_artifacts_whole(node) >= 2);
    }
    eprintln!(
        "node c cut off from NATS for {:.1} s: noticed after {:.1} s (a deploy through it before then failed after {:.1} s), answered {answered} requests with what it had; ready again {:.1} s after the heal, caught up; {} events acknowledged, all handled ({duplicates} twice)",
        (healed - cut).as_secs_f64(),
        noticed.as_secs_f64(),
        early_took.as_secs_f64(),
        ready_after.as_secs_f64(),
        acked.len(),
    );
}
