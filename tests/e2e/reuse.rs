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
