//! Serving standard `wasi:http/proxy` components: routing, what the guest
//! sees, guest logs, both guest toolchains, streaming bodies, shutdown.

use crate::support::*;
use bytes::Bytes;

fn routing_manifest() -> String {
    [
        service("hello", programs::HELLO, "/hello/...", ""),
        service("exact", programs::HELLO, "/hello/exact", ""),
        service("wstd", programs::HELLO_WSTD, "/...", ""),
    ]
    .concat()
}

#[tokio::test]
async fn hello_sees_its_full_path_and_query() {
    let berth = Berth::up(&routing_manifest());
    let reply = get(&berth, "/hello/a/b?x=1&y=two").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from berth: /hello/a/b?x=1&y=two\n");
    assert_eq!(reply.invocation().len(), 26);
}

#[tokio::test]
async fn longest_route_wins_and_catch_all_takes_the_rest() {
    let berth = Berth::up(&routing_manifest());
    // Exact route beats the prefix route over it.
    let reply = get(&berth, "/hello/exact").await;
    assert_eq!(reply.status, 200);
    let exact_id = reply.invocation();
    berth.log_line(&exact_id, "service=exact");
    // The prefix route covers its base path and everything below it.
    for path in ["/hello", "/hello/", "/hello/exact/more"] {
        let reply = get(&berth, path).await;
        assert_eq!(reply.text(), format!("hello from berth: {path}\n"));
        berth.log_line(&reply.invocation(), "service=hello");
    }
    // Not a segment match, so the catch-all (a wstd component) answers.
    let reply = get(&berth, "/helloworld?q").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from wstd: /helloworld?q\n");
}

#[tokio::test]
async fn components_from_two_toolchains_run_unchanged() {
    let berth = Berth::up(
        &[
            service("raw", programs::HELLO, "/raw", ""),
            service("wstd", programs::HELLO_WSTD, "/wstd", ""),
        ]
        .concat(),
    );
    assert_eq!(get(&berth, "/raw").await.text(), "hello from berth: /raw\n");
    assert_eq!(
        get(&berth, "/wstd").await.text(),
        "hello from wstd: /wstd\n"
    );
}

#[tokio::test]
async fn unknown_route_is_404() {
    let berth = Berth::up(&service("hello", programs::HELLO, "/hello", ""));
    let reply = get(&berth, "/nope").await;
    assert_eq!(reply.status, 404);
    assert!(reply.header("berth-invocation-id").is_none());
    // The service is still there.
    assert_eq!(get(&berth, "/hello").await.status, 200);
}

#[tokio::test]
async fn guest_output_becomes_tagged_log_lines() {
    let berth = Berth::up(&service("hello", programs::HELLO, "/hello/...", ""));
    let reply = get(&berth, "/hello/logged").await;
    let id = reply.invocation();
    let stdout = berth.log_line(&id, "hello handled /hello/logged");
    assert!(stdout.contains("service=hello"), "{stdout}");
    assert!(stdout.contains("stream=\"stdout\""), "{stdout}");
    let stderr = berth.log_line(&id, "hello says hi on stderr");
    assert!(stderr.contains("stream=\"stderr\""), "{stderr}");
}

#[tokio::test]
async fn echo_streams_8_mib_back_byte_exact() {
    let berth = Berth::up(&service("echo", programs::ECHO, "/echo/...", ""));
    let payload: Vec<u8> = (0..8 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();

    // With a Content-Length...
    let reply = post(&berth, "/echo", payload.clone()).await;
    assert_eq!(reply.status, 200);
    let body = reply.body.expect("complete body");
    assert_eq!(body.len(), payload.len());
    assert!(body == payload, "the echoed body differs");

    // ...and chunked, in uneven pieces.
    let chunks = payload
        .chunks(100_003)
        .map(Bytes::copy_from_slice)
        .collect();
    let req = http::Request::post("/echo")
        .header("host", "berth")
        .body(chunked(chunks))
        .unwrap();
    let reply = send(berth.addr, req).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.expect("complete body") == payload);
}

#[tokio::test]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let mut berth = Berth::up(&service(
        "sleep",
        programs::SLEEP,
        "/sleep",
        "timeout = \"10s\"",
    ));
    let addr = berth.addr;
    let in_flight = spawn_get(&berth, "/sleep?ms=1500");
    // Let the request reach the guest before asking berth to stop.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let status = tokio::task::spawn_blocking(move || {
        let status = berth.terminate();
        (status, berth)
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    // New connections are refused while the old request finishes.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let reply = in_flight.await.unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "slept 1500 ms\n");
    let (status, berth) = status.await.unwrap();
    assert!(
        status.success(),
        "exit status {status}; logs:\n{}",
        berth.logs()
    );
}

/// Instances share pool slots that are reset between requests (by scanning
/// for the pages a guest wrote); no write may survive into the next one.
#[tokio::test]
async fn nothing_survives_from_one_instance_to_the_next() {
    let berth = Berth::up(&service(
        "iso",
        programs::ISOLATION,
        "/iso",
        "concurrency = 8",
    ));
    for _ in 0..50 {
        assert_eq!(get(&berth, "/iso").await.text(), "count=1 clean\n");
    }
    let concurrent: Vec<_> = (0..32).map(|_| spawn_get(&berth, "/iso")).collect();
    for reply in concurrent {
        assert_eq!(reply.await.unwrap().text(), "count=1 clean\n");
    }
}
