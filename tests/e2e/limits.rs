//! Limits: fuel, memory, deadlines (before and during the response body),
//! concurrency, body size — and the bystander that must not notice.

use crate::support::*;
use std::time::Duration;

#[tokio::test]
async fn fuel_exhaustion_is_500_and_names_the_budget() {
    let berth = Berth::up(
        &[
            service("spin", programs::SPIN, "/spin", "fuel = 100_000_000"),
            service("hello", programs::HELLO, "/hello", ""),
        ]
        .concat(),
    );
    let reply = get(&berth, "/spin").await;
    assert_eq!(reply.status, 500);
    let line = berth.log_line(&reply.invocation(), "fuel exhausted");
    assert!(line.contains("100000000"), "{line}");
    assert!(line.contains("service=spin"), "{line}");
    assert_eq!(get(&berth, "/hello").await.status, 200);
}

#[tokio::test]
async fn memory_limit_fails_the_grow_then_the_trap_is_500() {
    let berth = Berth::up(&service(
        "alloc",
        programs::ALLOC,
        "/alloc/...",
        "memory = \"32MiB\"",
    ));

    // A guest that checks its allocations sees memory.grow fail and carries on.
    let reply = get(&berth, "/alloc/try").await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    let mib: u32 = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected body {text:?}"));
    assert!(mib > 0 && mib < 32, "{text}");

    // One that does not aborts (traps): 500, and the log says why.
    let reply = get(&berth, "/alloc").await;
    assert_eq!(reply.status, 500);
    let line = berth.log_line(&reply.invocation(), "memory limit");
    assert!(line.contains("32MiB"), "{line}");
    assert!(line.contains("outcome=\"memory\""), "{line}");
}

#[tokio::test]
async fn deadline_is_504_for_sleeping_and_spinning_guests_and_frees_the_slot() {
    let berth = Berth::up(
        &[
            service(
                "sleep",
                programs::SLEEP,
                "/sleep",
                "timeout = \"500ms\"\nconcurrency = 1\nqueue = 0",
            ),
            service(
                "spin",
                programs::SPIN,
                "/spin",
                "timeout = \"500ms\"\nfuel = 1_000_000_000_000_000\nconcurrency = 1\nqueue = 0",
            ),
        ]
        .concat(),
    );
    for path in ["/sleep", "/spin"] {
        let reply = get(&berth, path).await;
        assert_eq!(reply.status, 504, "{path}");
        assert!(
            reply.elapsed >= Duration::from_millis(500),
            "{path}: {:?}",
            reply.elapsed
        );
        assert!(
            reply.elapsed < Duration::from_secs(10),
            "{path}: {:?}",
            reply.elapsed
        );
        let line = berth.log_line(&reply.invocation(), "deadline passed");
        assert!(line.contains("500ms"), "{line}");
        // The instance is gone: with a concurrency of 1 and no queue, the
        // next request is admitted (and times out in its turn) rather than
        // being turned away with 503.
        assert_eq!(get(&berth, path).await.status, 504, "{path}");
    }
    assert_eq!(get(&berth, "/sleep?ms=10").await.status, 200);
}

#[tokio::test]
async fn deadline_during_the_body_cuts_the_response_off() {
    let berth = Berth::up(&service(
        "spin",
        programs::SPIN,
        "/spin/...",
        "timeout = \"500ms\"\nfuel = 1_000_000_000_000_000",
    ));
    let reply = get(&berth, "/spin/after-body").await;
    // The headers and the first bytes went out before the deadline...
    assert_eq!(reply.status, 200);
    // ...and then the body was cut, never ended cleanly.
    let err = reply
        .body
        .as_ref()
        .expect_err("the body must not look complete");
    assert!(!err.is_empty());
    berth.log_line(&reply.invocation(), "deadline passed");
}

#[tokio::test]
async fn concurrency_limit_queues_then_rejects_with_503_and_retry_after() {
    let berth = Berth::up(&service(
        "sleep",
        programs::SLEEP,
        "/sleep",
        "concurrency = 1\nqueue = 1\nqueue_timeout = \"10s\"",
    ));
    let running = spawn_get(&berth, "/sleep?ms=1500");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let queued = spawn_get(&berth, "/sleep?ms=10");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // One running, one waiting: the third is turned away at once.
    let rejected = get(&berth, "/sleep?ms=10").await;
    assert_eq!(rejected.status, 503);
    assert_eq!(rejected.header("retry-after"), Some("1"));
    assert!(
        rejected.elapsed < Duration::from_secs(1),
        "{:?}",
        rejected.elapsed
    );
    // The waiting one is served once the slot frees up.
    assert_eq!(running.await.unwrap().status, 200);
    let queued = queued.await.unwrap();
    assert_eq!(queued.status, 200);
    assert_eq!(queued.text(), "slept 10 ms\n");
}

#[tokio::test]
async fn queue_timeout_is_503() {
    let berth = Berth::up(&service(
        "sleep",
        programs::SLEEP,
        "/sleep",
        "concurrency = 1\nqueue = 5\nqueue_timeout = \"200ms\"",
    ));
    let running = spawn_get(&berth, "/sleep?ms=1500");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waited = get(&berth, "/sleep?ms=10").await;
    assert_eq!(waited.status, 503);
    assert!(
        waited.elapsed >= Duration::from_millis(200),
        "{:?}",
        waited.elapsed
    );
    assert_eq!(running.await.unwrap().status, 200);
}

#[tokio::test]
async fn request_body_over_the_limit_is_413() {
    let berth = Berth::up(&service(
        "echo",
        programs::ECHO,
        "/echo/...",
        "request_body = \"1KiB\"",
    ));
    // Declared too large: refused before any instance runs.
    let reply = post(&berth, "/echo", vec![b'x'; 2048]).await;
    assert_eq!(reply.status, 413);
    // Chunked, found too large while the guest reads it.
    let chunks = vec![
        bytes::Bytes::from(vec![b'y'; 700]),
        bytes::Bytes::from(vec![b'z'; 700]),
    ];
    let req = http::Request::post("/echo/buffered")
        .header("host", "berth")
        .body(chunked(chunks))
        .unwrap();
    let reply = send(berth.addr, req).await;
    assert_eq!(reply.status, 413);
    // Within the limit, all is well.
    let reply = post(&berth, "/echo/buffered", vec![b'k'; 1024]).await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body.unwrap().len(), 1024);
}

/// Two guests spin on both cores; `hello`, another service, must still be
/// served — all its requests complete while the spinners are still running.
#[tokio::test]
async fn spinning_guests_do_not_starve_other_services() {
    let berth = Berth::up(
        &[
            service(
                "spin",
                programs::SPIN,
                "/spin",
                "timeout = \"20s\"\nfuel = 1_000_000_000_000_000",
            ),
            service("hello", programs::HELLO, "/hello", ""),
        ]
        .concat(),
    );
    let spinners: Vec<_> = (0..2).map(|_| spawn_get(&berth, "/spin")).collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut latencies = Vec::new();
    for _ in 0..20 {
        let reply = get(&berth, "/hello").await;
        assert_eq!(reply.status, 200);
        latencies.push(reply.elapsed);
    }
    for s in &spinners {
        assert!(
            !s.is_finished(),
            "a spinner ended before the bystander was served"
        );
    }
    latencies.sort();
    eprintln!(
        "hello while two guests spin: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
    for s in spinners {
        s.abort();
    }
}
