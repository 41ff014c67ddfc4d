//! Instance reuse, a service's explicit choice: its instances serve
//! several invocations, one at a time, until `max_requests`, an `idle`
//! wait or a failure ends them. Services that do not opt in keep a fresh
//! instance per invocation.

use crate::support::*;
use std::time::Duration;

/// GETs `path` and answers with the first line of the body, once the
/// invocation has finished (its instance is back in the pool by then, so
/// the next request finds it).
async fn counted(berth: &Berth, path: &str) -> String {
    let reply = get(berth, path).await;
    assert_eq!(reply.status, 200, "{path}: {:?}", reply.body);
    berth.log_line(&reply.invocation(), "finished");
    reply.text().lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn reuse_keeps_an_instance_for_max_requests_and_only_where_asked() {
    let manifest = [
        service("fresh", programs::ISOLATION, "/fresh", ""),
        format!(
            "{}reuse = {{ max_requests = 3, idle = \"30s\" }}\n",
            service("reused", programs::ISOLATION, "/reused", "")
        ),
        format!(
            "{}reuse = {{ max_requests = 2, idle = \"30s\" }}\n",
            service("reused03", programs::SERVICE_P3, "/p3/...", "")
        ),
    ]
    .concat();
    let berth = Berth::up_admin(&manifest, &[]);
    for _ in 0..3 {
        assert_eq!(counted(&berth, "/fresh").await, "count=1 clean");
    }
    // One instance serves three requests (its state survives: that is
    // what reuse gives up), then a fresh one takes over.
    let mut seen = Vec::new();
    for _ in 0..4 {
        seen.push(counted(&berth, "/reused").await);
    }
    assert_eq!(seen[0], "count=1 clean");
    assert!(seen[1].starts_with("count=2"), "{seen:?}");
    assert!(seen[2].starts_with("count=3"), "{seen:?}");
    assert_eq!(seen[3], "count=1 clean", "{seen:?}");
    // The same for a WASI 0.3 instance.
    let seen = [
        counted(&berth, "/p3/count").await,
        counted(&berth, "/p3/count").await,
        counted(&berth, "/p3/count").await,
    ];
    assert_eq!(seen, ["count=1", "count=2", "count=1"]);
    // The log names the instance each invocation ran in.
    let logs = berth.wait_for_logs(&["reused=2"]);
    assert!(logs.contains("service=reused revision"), "{logs}");
    assert!(
        !logs
            .lines()
            .any(|l| l.contains("service=fresh") && l.contains("reused=")),
        "fresh invocations share no instance"
    );
    // So does the ledger: the first three `reused` invocations share one
    // instance (named by the first of them), the fourth has its own.
    let records = crate::scale::records(&berth, 10).await;
    let instances = |service: &str| -> Vec<Option<String>> {
        records
            .iter()
            .filter(|r| r["service"] == service)
            .map(|r| r["instance"].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(instances("fresh"), vec![None, None, None]);
    let reused = instances("reused");
    let first = records.iter().find(|r| r["service"] == "reused").unwrap()["invocation"]
        .as_str()
        .map(str::to_owned);
    assert_eq!(reused.len(), 4, "{records:#?}");
    assert!(reused[..3].iter().all(|i| *i == first), "{reused:?}");
    assert!(reused[3].is_some() && reused[3] != first, "{reused:?}");
}

#[tokio::test]
async fn a_failed_or_idle_instance_is_never_reused() {
    let p3 = |name: &str, idle: &str| {
        format!(
            "[service.{name}]\ncomponent = {:?}\nroute = \"/{name}/...\"\n\
             reuse = {{ max_requests = 100, idle = \"{idle}\" }}\n\
             [service.{name}.limits]\ntimeout = \"1s\"\n",
            programs::SERVICE_P3
        )
    };
    let berth = Berth::up(&(p3("kept", "60s") + &p3("brief", "200ms")));
    assert_eq!(counted(&berth, "/kept/count").await, "count=1");
    assert_eq!(counted(&berth, "/kept/count").await, "count=2");
    // A trap, a deadline: each instance is dropped.
    assert_eq!(get(&berth, "/kept/panic").await.status, 500);
    assert_eq!(counted(&berth, "/kept/count").await, "count=1");
    assert_eq!(get(&berth, "/kept/never").await.status, 504);
    assert_eq!(counted(&berth, "/kept/count").await, "count=1");
    assert_eq!(counted(&berth, "/kept/count").await, "count=2");
    // Past `idle`, the instance is gone.
    assert_eq!(counted(&berth, "/brief/count").await, "count=1");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(counted(&berth, "/brief/count").await, "count=1");
}

/// The instance an invocation ran in, from its `finished` log line.
fn instance_of(berth: &Berth, reply: &Reply) -> String {
    let line = finished(berth, reply);
    line.split_whitespace()
        .find_map(|field| field.strip_prefix("instance="))
        .unwrap_or_else(|| panic!("no instance in {line}"))
        .to_owned()
}

/// The `finished` log line of a reply's invocation (its id alone may
/// name the instance of others').
fn finished(berth: &Berth, reply: &Reply) -> String {
    berth.log_line(&format!("invocation={}", reply.invocation()), "finished")
}

/// GETs every one of `paths` at once.
async fn all_at_once(berth: &Berth, paths: &[&str]) -> Vec<Reply> {
    futures_util::future::join_all(paths.iter().map(|path| get(berth, path))).await
}

/// A WASI 0.3 service whose instances take up to `concurrent`
/// invocations at once.
fn shared(name: &str, concurrent: u32, limits: &str) -> String {
    format!(
        "[service.{name}]\ncomponent = {:?}\nroute = \"/{name}/...\"\n\
         reuse = {{ max_requests = 100, max_concurrent = {concurrent}, idle = \"60s\" }}\n\
         [service.{name}.limits]\n{limits}",
        programs::SERVICE_P3
    )
}

#[tokio::test]
async fn a_wasi03_instance_serves_concurrent_requests_up_to_max_concurrent() {
    let berth = Berth::up_admin(&shared("many", 4, "timeout = \"10s\"\n"), &[]);
    // Four requests at once: one instance serves them all.
    let replies = all_at_once(&berth, &["/many/sleep?ms=400"; 4]).await;
    let mut instances = Vec::new();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        assert_eq!(reply.text(), "slept 400 ms\n");
        instances.push(instance_of(&berth, reply));
    }
    assert!(
        instances.iter().all(|i| *i == instances[0]),
        "{instances:?}"
    );
    // Its state survives between them (what reuse gives up).
    assert_eq!(counted(&berth, "/many/count").await, "count=1");
    assert_eq!(counted(&berth, "/many/count").await, "count=2");
    // Seven at once: no instance takes more than four.
    let replies = all_at_once(&berth, &["/many/sleep?ms=400"; 7]).await;
    let mut per_instance = std::collections::HashMap::<String, usize>::new();
    for reply in &replies {
        assert_eq!(reply.status, 200, "{:?}", reply.body);
        *per_instance.entry(instance_of(&berth, reply)).or_default() += 1;
    }
    assert!(per_instance.len() >= 2, "{per_instance:?}");
    assert!(per_instance.values().all(|n| *n <= 4), "{per_instance:?}");
    // An 8 MiB body streams through a shared instance, both ways.
    let body = vec![b'e'; 8 << 20];
    let echoed = post(&berth, "/many/echo", body.clone()).await;
    assert_eq!(echoed.status, 200);
    let echoed = echoed.body.expect("the echo's body");
    assert_eq!(echoed.len(), body.len());
    assert!(echoed == body, "the echo differs");
    // Each invocation has a record of its own, naming the instance.
    let records = crate::scale::records(&berth, 14).await;
    assert!(
        records
            .iter()
            .all(|r| r["outcome"] == "ok" && r["instance"].is_string()),
        "{records:#?}"
    );
}

#[tokio::test]
async fn a_shared_instance_contains_its_guests_failures() {
    let limits = "timeout = \"1s\"\nmemory = \"24MiB\"\n";
    let manifest = shared("shared", 4, limits)
        + &service("bystander", programs::SERVICE_P3, "/bystander/...", "");
    let berth = Berth::up(&manifest);
    // A request that never answers passes its deadline (504) while the
    // one beside it in the same instance answers; the instance takes no
    // more requests after that, and the next one gets a fresh instance.
    let replies = all_at_once(&berth, &["/shared/never", "/shared/sleep?ms=200"]).await;
    assert_eq!(replies[0].status, 504, "{:?}", replies[0].body);
    assert_eq!(replies[1].status, 200, "{:?}", replies[1].body);
    assert!(finished(&berth, &replies[0]).contains("outcome=\"deadline\""));
    assert_eq!(
        instance_of(&berth, &replies[1]),
        instance_of(&berth, &replies[0])
    );
    assert_eq!(counted(&berth, "/shared/count").await, "count=1");
    // Concurrent requests that together exhaust the instance's memory:
    // the instance fails, each request in it is answered 500 with the
    // memory outcome, bystanders are served throughout, and the service
    // serves again at once.
    let (flood, bystander) = tokio::join!(
        all_at_once(&berth, &["/shared/alloc?mib=8"; 4]),
        get(&berth, "/bystander/"),
    );
    assert_eq!(bystander.status, 200);
    let failed: Vec<&Reply> = flood.iter().filter(|r| r.status != 200).collect();
    assert!(!failed.is_empty(), "4 × 8 MiB fit in 24 MiB?");
    for reply in &failed {
        assert_eq!(reply.status, 500, "{:?}", reply.body);
        let line = finished(&berth, reply);
        assert!(line.contains("outcome=\"memory\""), "{line}");
    }
    assert_eq!(counted(&berth, "/shared/count").await, "count=1");
    // A guest that panics takes down the requests in flight beside it
    // (they share its instance: documented), not the service.
    let replies = all_at_once(&berth, &["/shared/panic", "/shared/sleep?ms=300"]).await;
    assert_eq!(replies[0].status, 500);
    assert!(
        [200, 500].contains(&replies[1].status),
        "{:?}",
        replies[1].body
    );
    assert_eq!(counted(&berth, "/shared/count").await, "count=1");
    // A body the guest stops writing is cut off at its deadline, never
    // passed off as complete, and the instance serves on.
    crate::wasi03::cut_short(&berth, "/shared/stall").await;
    assert_eq!(get(&berth, "/bystander/").await.status, 200);
    // A task spawned past its deadline is stopped with the instance at
    // the latest deadline of its requests, and the instance dropped.
    let reply = get(&berth, "/shared/late?ms=5000").await;
    assert_eq!(reply.status, 200);
    let instance = instance_of(&berth, &reply);
    berth.wait_for_logs(&[&format!("instance={instance} outcome=\"deadline\"")]);
    assert!(
        !berth.logs().contains("the late task ran"),
        "the late task outlived its instance"
    );
    assert_eq!(counted(&berth, "/shared/count").await, "count=1");
    assert_eq!(get(&berth, "/bystander/").await.status, 200);
}
