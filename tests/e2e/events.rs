//! Events: publishing (API, CLI, guests), at-least-once delivery, retries,
//! dead letters, replay, schedules, crashes.

use crate::host::*;
use crate::support::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

pub fn consumer(topic: &str, policy: &str) -> String {
    format!(
        "[service.consumer]\ncomponent = {:?}\n\n[service.consumer.limits]\ntimeout = \"500ms\"\n\n[[service.consumer.subscriptions]]\ntopic = {topic:?}\n{policy}\n",
        programs::EVENTS_CONSUMER
    )
}

pub fn event(id: &str, ty: &str, data: &str) -> serde_json::Value {
    serde_json::json!({"specversion": "1.0", "id": id, "source": "/tests", "type": ty, "data": data})
}

/// Checks that every one of `ids` was handled; returns how many handlings
/// were duplicates.
pub fn all_handled(ids: &[String], seen: &HashMap<String, usize>) -> usize {
    let missing: Vec<_> = ids.iter().filter(|id| !seen.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} events were never handled, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    seen.values().map(|n| n - 1).sum()
}

/// The ids the consumer logged as handled, with how often.
pub fn handled(logs: &str) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for line in logs.lines() {
        if let Some(rest) = line.split("guest: handled ").nth(1) {
            let id = rest
                .split_whitespace()
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            *seen.entry(id).or_default() += 1;
        }
    }
    seen
}

#[tokio::test]
async fn published_events_reach_their_handler_with_their_payload() {
    let host = Host::start(&[]);
    host.deploy_manifest(&consumer("orders.*", ""));

    // Structured mode through the API.
    let reply = host
        .publish_batch(
            "orders.created",
            &[event("e-1", "order.created", "{\"total\": 42}")],
        )
        .await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    assert_eq!(Host::json(&reply)["published"][0]["deliveries"], 1);
    let line = host
        .berth
        .wait_for_logs(&["handled orders.created e-1 attempt=1"]);
    assert!(
        line.contains("data={\"total\":42}") || line.contains("data={\"total\": 42}"),
        "{line}"
    );

    // Binary mode through the CLI, with data from a file.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let file = dir.path().join("payload.txt");
    std::fs::write(&file, "from a file").unwrap();
    let out = host.cli_ok(&[
        "publish",
        "orders.shipped",
        "--data",
        &format!("@{}", file.display()),
        "--type",
        "order.shipped",
        "--id",
        "e-2",
    ]);
    assert!(
        out.contains("published e-2 on orders.shipped: 1 delivery"),
        "{out}"
    );
    host.berth
        .wait_for_logs(&["handled orders.shipped e-2 attempt=1 data=from a file"]);

    // A topic nobody subscribes to: accepted, counted, dropped.
    let out = host.cli_ok(&["publish", "nobody.listens", "--data", "x"]);
    assert!(out.contains(": 0 deliveries"), "{out}");
    let topics = host.events()["topics"].clone();
    let nobody = topics
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "nobody.listens")
        .unwrap();
    assert_eq!(
        (nobody["published"].as_u64(), nobody["unrouted"].as_u64()),
        (Some(1), Some(1))
    );
}

#[tokio::test]
async fn malformed_and_oversized_events_are_refused_and_nothing_is_stored() {
    let host = Host::start(&["--max-event-size", "64KiB"]);
    host.deploy_manifest(&consumer("t.>", ""));
    let binary = |headers: &[(&str, &str)], body: Vec<u8>| {
        let mut req = http::Request::post("/v1/events/t.x")
            .header("host", "berth-admin")
            .header("authorization", format!("Bearer {TOKEN}"));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        send(
            host.berth.admin.unwrap(),
            req.body(http_body_util::Full::new(bytes::Bytes::from(body)))
                .unwrap(),
        )
    };
    let full = [
        ("ce-specversion", "1.0"),
        ("ce-id", "1"),
        ("ce-source", "/s"),
        ("ce-type", "t"),
    ];
    for missing in ["ce-specversion", "ce-id", "ce-source", "ce-type"] {
        let headers: Vec<_> = full
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        let reply = binary(&headers, b"x".to_vec()).await;
        assert_eq!(reply.status, 400);
        let message = Host::json(&reply)["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            message.contains(&format!("`{}`", &missing[3..])),
            "{message}"
        );
    }
    // 64 KiB is the CloudEvents floor; more is refused with 413.
    let reply = binary(&full, vec![b'a'; 64 * 1024 + 1]).await;
    assert_eq!(reply.status, 413, "{}", reply.text());
    let ok = binary(&full, vec![b'a'; 60 * 1024]).await;
    assert_eq!(ok.status, 202);
    let reply = host
        .publish_batch("berth.schedule.x.y", &[event("s", "t", "x")])
        .await;
    assert_eq!(reply.status, 400, "system topics are the host's");
    host.berth.wait_for_logs(&["handled t.x 1 attempt=1"]);
    let events = host.events();
    let published: u64 = events["topics"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["published"].as_u64().unwrap())
        .sum();
    assert_eq!(published, 1, "only the valid event was stored: {events:#}");
}

#[tokio::test]
async fn a_guest_chain_http_to_publish_to_consumer() {
    let host = Host::start(&[]);
    host.deploy_manifest(&format!(
        "[service.api]\ncomponent = {:?}\nroute = \"/api/...\"\npublish = [\"users.>\"]\n\n{}",
        programs::EVENTS_API,
        consumer("users.*", "")
    ));
    let reply = post(&host.berth, "/api/signup", r#"{"name":"ada"}"#).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
    let id =
        serde_json::from_slice::<serde_json::Value>(reply.body.as_ref().unwrap()).unwrap()["event"]
            .as_str()
            .unwrap()
            .to_owned();
    let logs = host
        .berth
        .wait_for_logs(&[&format!("handled users.signed-up {id} attempt=1")]);
    assert!(logs.contains("data={\"name\":\"ada\"}"), "{logs}");

    // A topic the api may not publish on: the guest gets the error, and
    // nothing is published.
    let reply = post(&host.berth, "/api/publish/admin.secret", "x").await;
    assert_eq!(reply.status, 403);
    assert!(
        reply.text().contains("may not publish on admin.secret"),
        "{}",
        reply.text()
    );
    let topics = host.events()["topics"].clone();
    assert!(
        topics
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["topic"] != "admin.secret"),
        "{topics:#}"
    );
}

#[tokio::test]
async fn failures_are_retried_then_dead_lettered_then_replayed_or_purged() {
    let host = Host::start(&[]);
    host.deploy_manifest(&consumer(
        "jobs.*",
        "max_attempts = 3\nbackoff = \"50ms\"\nmax_backoff = \"200ms\"",
    ));
    let reply = host
        .publish_batch(
            "jobs.run",
            &[
                event("err", "fail", "x"),
                event("trap", "trap", "x"),
                event("slow", "sleep", "x"),
                event("rej", "reject", "x"),
                event("flaky", "fail-until-3", "x"),
            ],
        )
        .await;
    assert_eq!(reply.status, 202);
    // The flaky one makes it on its third attempt.
    host.berth
        .wait_for_logs(&["handled jobs.run flaky attempt=3"]);
    let stats = host.wait_for_events("dead-lettered the four", |e| {
        e["subscriptions"][0]["dead_letters"] == 4 && e["subscriptions"][0]["depth"] == 0
    });
    assert_eq!(stats["subscriptions"][0]["in_flight"], 0);

    let dead: Vec<serde_json::Value> =
        serde_json::from_str(&host.cli_ok(&["events", "dead", "--json"])).unwrap();
    let reason = |id: &str| {
        let d = dead
            .iter()
            .find(|d| d["event"]["id"] == id)
            .unwrap_or_else(|| panic!("{id} not dead"));
        (
            d["attempts"].as_u64().unwrap(),
            d["error"].as_str().unwrap().to_owned(),
        )
    };
    let (attempts, error) = reason("err");
    assert_eq!(attempts, 3);
    assert!(error.contains("failing on purpose (attempt 3)"), "{error}");
    let (attempts, error) = reason("trap");
    assert_eq!(attempts, 3);
    assert!(error.contains("guest trapped"), "{error}");
    let (attempts, error) = reason("slow");
    assert_eq!(attempts, 3);
    assert!(error.contains("deadline"), "{error}");
    let (attempts, error) = reason("rej");
    assert_eq!(attempts, 1, "a rejected event is not retried");
    assert!(error.contains("rejected on purpose"), "{error}");
    let table = host.cli_ok(&["events", "dead"]);
    assert!(
        table.contains("jobs.run") && table.contains("consumer:jobs.*"),
        "{table}"
    );

    // Replay one: it is delivered again from attempt 1 (and fails again).
    let out = host.cli_ok(&["events", "replay", "err"]);
    assert!(out.contains("replayed 1 dead letter"), "{out}");
    host.berth
        .wait_for_count("failing on purpose (attempt 1)", 2);
    host.wait_for_events("dead again", |e| {
        e["subscriptions"][0]["dead_letters"] == 4 && e["subscriptions"][0]["depth"] == 0
    });
    assert!(!host.cli(&["events", "replay", "nope"]).status.success());

    // Purge by topic, then all.
    let out = host.cli_ok(&["events", "purge", "--topic", "other.topic"]);
    assert!(out.contains("purged 0"), "{out}");
    let out = host.cli_ok(&["events", "purge"]);
    assert!(out.contains("purged 4 dead letters"), "{out}");
    assert_eq!(host.subscription("consumer:jobs.*")["dead_letters"], 0);
}

#[tokio::test]
async fn replay_after_a_fix_delivers_the_dead_letter() {
    let host = Host::start(&[]);
    host.deploy_manifest(&consumer("jobs.*", "max_attempts = 2\nbackoff = \"50ms\""));
    host.publish_batch("jobs.run", &[event("flaky", "fail-until-3", "x")])
        .await;
    host.wait_for_events("dead", |e| e["subscriptions"][0]["dead_letters"] == 1);
    // The fix: a policy with room for the third attempt.
    host.deploy_manifest(&consumer("jobs.*", "max_attempts = 5\nbackoff = \"50ms\""));
    host.cli_ok(&["events", "replay", "--all"]);
    host.berth
        .wait_for_logs(&["handled jobs.run flaky attempt=3"]);
    host.wait_for_events("drained", |e| {
        e["subscriptions"][0]["dead_letters"] == 0 && e["subscriptions"][0]["depth"] == 0
    });
}

/// A poison event waits for its retries; the events behind it pass.
#[tokio::test]
async fn a_poison_event_never_blocks_the_events_behind_it() {
    let host = Host::start(&[]);
    host.deploy_manifest(&consumer(
        "q.*",
        "max_attempts = 3\nbackoff = \"1s\"\nconcurrency = 1",
    ));
    let mut batch = vec![event("poison", "fail", "x")];
    batch.extend((0..20).map(|i| event(&format!("good-{i}"), "ok", "x")));
    assert_eq!(host.publish_batch("q.work", &batch).await.status, 202);
    let logs = host
        .berth
        .wait_for_logs(&["handled q.work good-19 attempt=1"]);
    // Every good event was handled before the poison was given up on.
    assert!(
        !logs.contains("dead-lettered"),
        "the poison blocked the queue:\n{logs}"
    );
    host.berth
        .wait_for_logs(&["event dead-lettered after 3 attempts"]);
}

/// A backlog behind a slow handler shows as lag (the most overdue
/// waiting delivery's wait), in `berth events` and `/metrics`; drained, 0.
#[tokio::test]
async fn a_backlog_shows_as_bus_lag_until_it_drains() {
    let host = Host::start(&[]);
    host.deploy_manifest(&consumer(
        "lag.*",
        "max_attempts = 1
concurrency = 1",
    ));
    // Each spins to its 500 ms deadline, one at a time.
    let batch: Vec<_> = (0..6)
        .map(|i| event(&format!("slow-{i}"), "sleep", "x"))
        .collect();
    assert_eq!(host.publish_batch("lag.work", &batch).await.status, 202);
    let stats = host.wait_for_events("lagging", |e| {
        e["subscriptions"][0]["lag_ms"].as_u64().unwrap() >= 1000
    });
    assert!(stats["subscriptions"][0]["depth"].as_u64().unwrap() > 0);
    let metrics = host.api("GET", "/metrics", "", Some(TOKEN)).await.text();
    let lag: f64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                "berth_event_lag_seconds{service=\"consumer\",subscription=\"consumer:lag.*\"} ",
            )
        })
        .unwrap_or_else(|| panic!("no lag in:\n{metrics}"))
        .parse()
        .unwrap();
    assert!(lag >= 1.0, "{lag}");
    host.wait_for_events("drained", |e| {
        e["subscriptions"][0]["depth"] == 0 && e["subscriptions"][0]["lag_ms"] == 0
    });
}

#[tokio::test]
async fn schedules_fire_and_a_missed_schedule_fires_once_on_restart() {
    let mut host = Host::start(&[]);
    host.deploy_manifest(&format!(
        "[service.consumer]\ncomponent = {:?}\n\n[[service.consumer.schedules]]\nname = \"tick\"\nevery = \"2s\"\n\n[[service.consumer.schedules]]\nname = \"cron\"\ncron = \"* * * * * *\"\n",
        programs::EVENTS_CONSUMER
    ));
    host.berth.wait_for_logs(&[
        "handled berth.schedule.consumer.tick",
        "handled berth.schedule.consumer.cron",
    ]);
    let logs = host.berth.wait_for_logs(&["schedule=tick"]);
    assert!(
        logs.contains("\"schedule\":\"tick\""),
        "the firing carries its schedule: {logs}"
    );

    // Down for more than three periods of `tick`: one catch-up firing.
    let status = host.berth.terminate();
    assert!(status.success());
    std::thread::sleep(Duration::from_millis(7000));
    let restarted = Instant::now();
    host.start_again();
    host.berth
        .wait_for_logs(&["schedule fired service=consumer schedule=tick"]);
    let caught_up = restarted.elapsed();
    // The next regular firing is 2 s after the catch-up: one second later,
    // there must be exactly one firing.
    std::thread::sleep(Duration::from_millis(1000));
    let logs = host.berth.logs();
    let fired = logs
        .matches("schedule fired service=consumer schedule=tick")
        .count();
    assert_eq!(
        fired, 1,
        "the missed firings were replayed {fired} times:\n{logs}"
    );
    assert!(
        caught_up < Duration::from_millis(1900),
        "no catch-up firing on start ({caught_up:?})"
    );
}

/// Publish 10,000 events, `kill -9` the host mid-delivery, restart: every
/// acknowledged event is handled at least once.
#[tokio::test]
async fn kill_9_mid_delivery_loses_no_acknowledged_event() {
    const N: usize = 10_000;
    // The guest's log lines are this test's record of what was handled:
    // write each as it is logged, so the crash loses none of them.
    let mut host = Host::start(&["--log-buffer", "0ms"]);
    host.deploy_manifest(&consumer("load.*", "concurrency = 16"));
    let mut ids = Vec::with_capacity(N);
    for batch in 0..N / 500 {
        let events: Vec<_> = (0..500)
            .map(|i| {
                let id = format!("ev-{}", batch * 500 + i);
                ids.push(id.clone());
                event(&id, "load", "x")
            })
            .collect();
        let reply = host.publish_batch("load.test", &events).await;
        assert_eq!(reply.status, 202, "{}", reply.text());
    }
    // Let some be handled, then crash.
    let deadline = Instant::now() + Duration::from_secs(120);
    while handled(&host.berth.logs()).len() < 1000 {
        assert!(Instant::now() < deadline, "deliveries did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    host.berth.kill9();
    let before = host.berth.logs();
    let handled_before = handled(&before).len();
    assert!(
        handled_before < N,
        "everything was handled before the crash"
    );

    host.start_again();
    host.wait_for_events("drained", |e| {
        e["subscriptions"]
            .as_array()
            .is_some_and(|s| s.iter().all(|s| s["depth"] == 0 && s["in_flight"] == 0))
    });
    let mut seen = handled(&before);
    for (id, n) in handled(&host.berth.logs()) {
        *seen.entry(id).or_default() += n;
    }
    let duplicates = all_handled(&ids, &seen);
    eprintln!(
        "kill -9 after {handled_before} of {N} events: all {N} handled at least once; {duplicates} delivered twice (in flight at the crash)"
    );
}
