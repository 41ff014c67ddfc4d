//! One pipeline for every trigger: HTTP requests and event deliveries of
//! the same guest leave usage records that mean the same thing, refusals
//! included.

use crate::host::*;
use crate::support::*;
use std::time::{Duration, Instant};

/// The `work` service: both exports, one instance at a time, a queue, and
/// unloaded 100 ms after its last invocation.
fn work_manifest() -> String {
    format!(
        r#"[service.work]
component = {:?}
route = "/work"

[service.work.limits]
concurrency = 1
queue = 8
queue_timeout = "30s"
idle_timeout = "100ms"
timeout = "20s"

[[service.work.subscriptions]]
topic = "work.do"
"#,
        programs::WORK
    )
}

/// The usage records so far, oldest first.
async fn records(host: &Host) -> Vec<serde_json::Value> {
    let reply = host
        .api("GET", "/v1/usage/records?limit=100000", "", Some(TOKEN))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    Host::json(&reply).as_array().unwrap().clone()
}

/// Waits for the record of the `n`-th invocation (0-based) of `service`
/// by `trigger`.
async fn record(host: &Host, service: &str, trigger: &str, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let matching: Vec<_> = records(host)
            .await
            .into_iter()
            .filter(|r| r["service"] == service && r["trigger"] == trigger)
            .collect();
        if let Some(r) = matching.get(n) {
            return r.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no record #{n} of {service} by {trigger}: {matching:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the service's component has been unloaded (idle).
async fn wait_unloaded(host: &Host, service: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = host.api("GET", "/metrics", "", Some(TOKEN)).await;
        let line = format!("berth_service_loaded{{service=\"{service}\"}} 0");
        if reply.text().lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "{service} never unloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn publish_work(host: &Host, id: &str, params: &str) {
    let event = serde_json::json!({
        "specversion": "1.0", "id": id, "source": "/tests", "type": "work", "data": params
    });
    let reply = host.publish_batch("work.do", &[event]).await;
    assert_eq!(reply.status, 202, "{}", reply.text());
}

fn n(r: &serde_json::Value, field: &str) -> u64 {
    r[field]
        .as_u64()
        .unwrap_or_else(|| panic!("no {field}: {r:#}"))
}

/// Checks that an HTTP record and an event record of the same work agree.
fn agree(http: &serde_json::Value, event: &serde_json::Value, work_us: u64) {
    for r in [http, event] {
        assert_eq!(r["outcome"], "ok", "{r:#}");
        // Execution: the guest's run, neither its queueing nor its load.
        let wall = n(r, "wall_us");
        assert!(
            wall >= work_us && wall < work_us + 1_500_000,
            "wall_us {wall} is not the ~{work_us} µs the guest ran: {r:#}"
        );
        assert!(n(r, "cpu_us") > 0 && n(r, "cpu_us") <= wall, "{r:#}");
        assert!(n(r, "peak_memory") >= 2 << 20, "{r:#}");
    }
    assert_eq!(http["cold"], event["cold"], "{http:#}\n{event:#}");
    let close = |field: &str, tolerance: f64| {
        let (a, b) = (n(http, field) as f64, n(event, field) as f64);
        assert!(
            (a - b).abs() <= tolerance * a.max(b),
            "{field}: http {a} vs event {b}\n{http:#}\n{event:#}"
        );
    };
    // The same guest code did the same work: fuel and memory match but for
    // what each export spends decoding its input.
    close("fuel", 0.2);
    close("peak_memory", 0.2);
}

#[tokio::test]
async fn http_and_event_records_of_the_same_work_agree_in_meaning() {
    let host = Host::start(&[]);
    host.deploy_manifest(&work_manifest());
    const WORK: &str = "ms=300&kib=2048";
    let work_us = 300_000;

    // Cold: each finds the component unloaded; the load is its own field.
    wait_unloaded(&host, "work").await;
    let reply = get(&host.berth, &format!("/work?{WORK}")).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let http_cold = record(&host, "work", "http", 0).await;
    wait_unloaded(&host, "work").await;
    publish_work(&host, "cold", WORK).await;
    let event_cold = record(&host, "work", "event", 0).await;
    agree(&http_cold, &event_cold, work_us);
    for r in [&http_cold, &event_cold] {
        assert_eq!(r["cold"], true, "{r:#}");
        assert!(n(r, "load_us") > 0, "{r:#}");
    }

    // Queued: both wait behind a long invocation; the wait is its own
    // field, not execution.
    let blocker = spawn_get(&host.berth, "/work?ms=2000");
    // The blocker's invocation is running once its service is loaded and
    // has one instance in flight.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = host.api("GET", "/metrics", "", Some(TOKEN)).await.text();
        if metrics
            .lines()
            .any(|l| l == "berth_instances_in_flight{service=\"work\"} 1")
        {
            break;
        }
        assert!(Instant::now() < deadline, "the blocker never ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish_work(&host, "queued", WORK).await;
    let queued_http = spawn_get(&host.berth, &format!("/work?{WORK}"));
    assert_eq!(blocker.await.unwrap().status, 200);
    assert_eq!(queued_http.await.unwrap().status, 200);
    let http_queued = record(&host, "work", "http", 2).await;
    let event_queued = record(&host, "work", "event", 1).await;
    agree(&http_queued, &event_queued, work_us);
    for r in [&http_queued, &event_queued] {
        assert_eq!(r["cold"], false, "{r:#}");
        let (queue, wall) = (n(r, "queue_us"), n(r, "wall_us"));
        assert!(queue >= 500_000, "it waited behind the blocker: {r:#}");
        assert!(wall < queue, "wall_us counts execution only: {r:#}");
    }
}

#[tokio::test]
async fn an_event_for_a_service_that_cannot_be_loaded_leaves_a_rejected_record_as_http_does() {
    let mut host = Host::start(&[]);
    host.deploy_manifest(&work_manifest());
    let digest = host.services()[0]["artifact"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();

    // Damage the artifact, with no compiled code to fall back on.
    let status = host.berth.terminate();
    assert!(status.success());
    host.damage_artifact(&digest);
    host.start_again();

    let reply = get(&host.berth, "/work?ms=1").await;
    assert_eq!(reply.status, 503);
    publish_work(&host, "doomed", "ms=1").await;
    let http = record(&host, "work", "http", 0).await;
    let event = record(&host, "work", "event", 0).await;
    for r in [&http, &event] {
        assert_eq!(r["outcome"], "rejected", "{r:#}");
        for field in ["wall_us", "fuel", "peak_memory", "cpu_us"] {
            assert_eq!(n(r, field), 0, "{field}: {r:#}");
        }
        // A cold start was tried and failed: its time is the load's, but
        // it was no cold start (the component was never loaded).
        assert_eq!(r["cold"], false, "{r:#}");
        assert!(n(r, "load_us") > 0, "{r:#}");
    }
    assert_eq!(http["status"], 503);
    assert!(event["status"].is_null(), "{event:#}");
    // The delivery is kept (a redeploy fixes the service, not the event):
    // no attempt was used up, nothing was dead-lettered.
    let subscription = host.subscription("work:work.do");
    assert_eq!(subscription["dead_letters"], 0, "{subscription:#}");
    let kept = n(&subscription, "depth") + n(&subscription, "in_flight");
    assert_eq!(kept, 1, "{subscription:#}");
    host.berth
        .log_line("trigger=\"event\"", "invocation refused before it ran");
}

#[tokio::test]
async fn a_service_call_continues_the_guests_own_trace_and_says_whose_deadline_cut_it() {
    let caller = |name: &str, timeout: &str| {
        format!(
            "[service.{name}]\ncomponent = {:?}\nroute = \"/{name}/...\"\nallowed_outbound = [\"http://*.svc\"]\n[service.{name}.limits]\ntimeout = {timeout:?}\n",
            programs::CAPS
        )
    };
    let manifest = format!(
        "{}{}{}",
        caller("front", "1s"),
        service("hello", programs::HELLO, "/hello", ""),
        service("sleeper", programs::SLEEP, "/sleeper", "timeout = \"1h\""),
    );
    let berth = Berth::up(&manifest);

    // The guest traces on its own: the service it calls continues the
    // guest's trace, as an outbound request would.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let reply = get(
        &berth,
        &format!(
            "/front/fetch?url=http://hello.svc/hello&traceparent=00-{trace}-00f067aa0ba902b7-01"
        ),
    )
    .await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    let line = berth.log_line("trigger=\"call\"", "finished");
    assert!(line.contains("service=hello"), "{line}");
    assert!(line.contains(&format!("trace_id={trace}")), "{line}");

    // A callee allowed an hour, cut by its caller's one second, says so.
    let reply = get(&berth, "/front/fetch?url=http://sleeper.svc/").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    let line = berth.log_line("service=sleeper", "deadline passed");
    assert!(line.contains("its caller's deadline came first"), "{line}");
}
