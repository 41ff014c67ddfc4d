//! WASI 0.3 HTTP services (`wasi:http/service`): components built by the
//! `wasip3` crate (Rust) and componentize-py (Python) served next to WASI
//! 0.2 ones, through the same limits, capabilities and metering — and the
//! ways a 0.3 guest can misbehave, each contained.

use crate::support::*;
use bytes::Bytes;
use std::time::{Duration, Instant};

/// The 0.3 services under test, next to a 0.2 bystander.
fn manifest(limits: &str) -> String {
    [
        service("rust03", programs::SERVICE_P3, "/rust03/...", limits),
        service("py03", programs::PY_SERVICE_P3, "/py03/...", limits),
        service("hello", programs::HELLO, "/hello", ""),
    ]
    .concat()
}

#[tokio::test]
async fn wasi_03_services_from_rust_and_python_serve_next_to_02_ones() {
    let berth = Berth::up_admin(&manifest(""), &[]);
    let reply = get(&berth, "/rust03/").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "Hello from Rust on WASI 0.3\n");
    assert_eq!(reply.header("content-type"), Some("text/plain"));
    let reply = get(&berth, "/py03/").await;
    assert_eq!(reply.status, 200, "{:?}", reply.body);
    assert_eq!(reply.text(), "Hello from Python on WASI 0.3\n");
    let reply = get(&berth, "/hello").await;
    assert_eq!(reply.status, 200);

    // The request as a 0.3 guest sees it: the same one a 0.2 guest sees.
    let req = http::Request::put("/rust03/info?x=1")
        .header("host", berth.addr.to_string())
        .header("x-custom", "yes")
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let reply = send(berth.addr, req).await;
    let info = reply.text();
    for line in [
        "method: PUT\n".to_owned(),
        "scheme: http\n".to_owned(),
        format!("authority: {}\n", berth.addr),
        "path: /rust03/info?x=1\n".to_owned(),
        "header x-custom: yes\n".to_owned(),
    ] {
        assert!(info.contains(&line), "{line:?} in\n{info}");
    }

    // Metered like any invocation: fuel, memory, an outcome.
    let records = crate::scale::records(&berth, 4).await;
    for service in ["rust03", "py03"] {
        let record = records
            .iter()
            .find(|r| r["service"] == service)
            .unwrap_or_else(|| panic!("a record for {service}: {records:#?}"));
        assert_eq!(record["outcome"], "ok", "{record}");
        assert_eq!(record["status"], 200, "{record}");
        assert!(record["fuel"].as_u64().unwrap() > 0, "{record}");
        assert!(record["peak_memory"].as_u64().unwrap() > 0, "{record}");
    }
}

#[tokio::test]
async fn a_streamed_echo_of_8_mib_comes_back_whole_from_rust_and_python() {
    let berth = Berth::up(&manifest("request_body = \"16MiB\"\nmemory = \"256MiB\""));
    let body: Vec<u8> = (0..8usize << 20).map(|i| (i * 7 % 251) as u8).collect();
    for path in ["/rust03/echo", "/py03/echo"] {
        // Sent in 64 KiB chunks without a length: streamed both ways.
        let chunks: Vec<Bytes> = body.chunks(64 << 10).map(Bytes::copy_from_slice).collect();
        let req = http::Request::post(path)
            .header("host", berth.addr.to_string())
            .body(chunked(chunks))
            .unwrap();
        let reply = send(berth.addr, req).await;
        assert_eq!(reply.status, 200, "{path}");
        let echoed = reply.body.as_ref().expect("a complete body");
        assert_eq!(echoed.len(), body.len(), "{path}");
        assert!(echoed[..] == body[..], "{path}: the echo differs");
    }
}

#[tokio::test]
async fn requests_that_outlive_their_deadline_are_504_and_free_their_slot() {
    let limits = "timeout = \"500ms\"\nfuel = 1_000_000_000_000_000\nconcurrency = 1\nqueue = 0";
    let berth = Berth::up(&manifest(limits));
    for path in [
        "/rust03/sleep",
        "/rust03/spin",
        "/rust03/never",
        "/py03/sleep",
    ] {
        let reply = get(&berth, path).await;
        assert_eq!(reply.status, 504, "{path}");
        assert!(
            reply.elapsed >= Duration::from_millis(500),
            "{path}: {:?}",
            reply.elapsed
        );
        let line = berth.log_line(&reply.invocation(), "deadline passed");
        assert!(line.contains("500ms"), "{line}");
        // With a concurrency of 1 and no queue, the next request is
        // admitted: the instance is gone.
        assert_eq!(get(&berth, "/hello").await.status, 200);
        assert_eq!(get(&berth, path).await.status, 504, "{path}");
    }
    assert_eq!(get(&berth, "/rust03/sleep?ms=10").await.status, 200);
    assert_eq!(get(&berth, "/py03/sleep?ms=10").await.status, 200);
}

#[tokio::test]
async fn a_body_dropped_half_way_is_cut_off_never_complete() {
    let berth = Berth::up(&manifest(""));
    let reply = get(&berth, "/rust03/half").await;
    assert_eq!(reply.status, 200);
    let err = reply
        .body
        .as_ref()
        .expect_err("a body that promised 1 MiB and stopped at 64 KiB must not look complete");
    assert!(!err.is_empty());
    assert_eq!(get(&berth, "/hello").await.status, 200);
}

#[tokio::test]
async fn tasks_left_running_past_the_deadline_are_stopped_and_metered() {
    let limits = "timeout = \"1s\"\nconcurrency = 1\nqueue = 0";
    let berth = Berth::up_admin(&manifest(limits), &[]);
    let started = Instant::now();
    let reply = get(&berth, "/rust03/late?ms=60000").await;
    // The answer comes at once and whole...
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "answered; a task goes on\n");
    assert!(
        reply.elapsed < Duration::from_secs(1),
        "{:?}",
        reply.elapsed
    );
    // ...while the task it left holds the instance (and the service's one
    // slot) until the deadline stops it.
    let id = reply.invocation();
    let line = berth.log_line(&id, "deadline passed");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(line.contains("service=rust03"), "{line}");
    let records = crate::scale::records(&berth, 1).await;
    let record = records
        .iter()
        .find(|r| r["invocation"] == id.as_str())
        .expect("its record");
    assert_eq!(record["outcome"], "deadline", "{record}");
    assert_eq!(record["status"], 200, "{record}");
    assert!(!berth.logs().contains("the late task ran"));
    // The slot is free again.
    assert_eq!(get(&berth, "/rust03/").await.status, 200);
}

#[tokio::test]
async fn a_03_guest_over_its_memory_limit_traps_and_bystanders_answer() {
    let berth = Berth::up(&manifest("memory = \"16MiB\""));
    let reply = get(&berth, "/rust03/alloc?mib=64").await;
    assert_eq!(reply.status, 500);
    berth.log_line(&reply.invocation(), "memory limit");
    let reply = get(&berth, "/rust03/alloc?mib=1").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "held 1 MiB\n"));
    assert_eq!(get(&berth, "/hello").await.status, 200);
}

#[tokio::test]
async fn outbound_calls_from_a_03_guest_follow_the_allow_list() {
    let manifest = [
        format!(
            "{}allowed_outbound = [\"http://hello.svc\"]\n",
            service("rust03", programs::SERVICE_P3, "/rust03/...", "")
        ),
        service("hello", programs::HELLO, "/hello", ""),
        service("closed", programs::SERVICE_P3, "/closed/...", ""),
    ]
    .concat();
    let berth = Berth::up_admin(&manifest, &[]);
    // A call by name, allowed: the callee's own invocation.
    let reply = get(&berth, "/rust03/call?url=http://hello.svc/hello").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(
        reply.text(),
        "status 200\nhello from berth: /hello\n",
        "the callee's answer"
    );
    let records = crate::scale::records(&berth, 2).await;
    let callee = records
        .iter()
        .find(|r| r["service"] == "hello")
        .expect("the callee's record");
    assert_eq!(callee["trigger"], "call");
    // Anything else is denied inside the guest.
    for path in [
        "/rust03/call?url=http://127.0.0.1:9/",
        "/closed/call?url=http://hello.svc/hello",
    ] {
        let reply = get(&berth, path).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (502, "error ErrorCode::HttpRequestDenied\n"),
            "{path}"
        );
    }
    berth.wait_for_logs(&["not in the service's allowed_outbound"]);
}
