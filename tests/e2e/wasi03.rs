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
        // admitted: the instance is gone (its slot freed just after the
        // line above is logged).
        assert_eq!(get(&berth, "/hello").await.status, 200);
        assert_eq!(admitted(&berth, path).await.status, 504, "{path}");
    }
    assert_eq!(get(&berth, "/rust03/sleep?ms=10").await.status, 200);
    assert_eq!(get(&berth, "/py03/sleep?ms=10").await.status, 200);
}

/// A GET that the service admits: retried while it answers 503 (a slot
/// is freed just after its invocation's last log line).
async fn admitted(berth: &Berth, path: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = get(berth, path).await;
        if reply.status != 503 || Instant::now() > deadline {
            return reply;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn bodies_left_unfinished_are_cut_off_never_complete() {
    let berth = Berth::up_admin(&manifest("timeout = \"1s\""), &[]);
    // Promised 1 MiB, sent 64 KiB, dropped its stream; kept its stream
    // open with nothing left to write it (until the deadline); trapped
    // mid-body.
    let mut ids = std::collections::HashMap::new();
    for path in ["/rust03/half", "/rust03/stall", "/rust03/trap-body"] {
        // The client sees the head and then an error, or (when the cut
        // comes before the head is flushed) only a broken connection —
        // never a complete response.
        if let Some(id) = cut_short(&berth, path).await {
            ids.insert(id, path);
        }
        assert_eq!(get(&berth, "/hello").await.status, 200);
    }
    berth.wait_for_logs(&["panicked mid-body on purpose"]);
    let records = crate::scale::records(&berth, 6).await;
    // Each ran until it was stopped: the stall by its deadline, the panic
    // as a trap.
    let outcomes: Vec<&str> = records
        .iter()
        .filter(|r| r["service"] == "rust03")
        .map(|r| r["outcome"].as_str().unwrap_or_default())
        .collect();
    assert!(outcomes.contains(&"deadline"), "{records:#?}");
    assert!(outcomes.contains(&"trap"), "{records:#?}");
    for record in &records {
        let id = record["invocation"].as_str().unwrap_or_default();
        let expected = match ids.get(id).copied() {
            Some("/rust03/stall") => "deadline",
            Some("/rust03/trap-body") => "trap",
            _ => continue,
        };
        assert_eq!(record["outcome"], expected, "{record}");
    }
}

/// GETs `path` and checks the response did not come whole: its
/// invocation id if a head came (then a 200 and a broken body), `None`
/// if the connection broke before any head.
pub(crate) async fn cut_short(berth: &Berth, path: &str) -> Option<String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(berth.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", berth.addr.to_string())
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(req))
        .await
        .expect("an answer or a broken connection within 30 s");
    let Ok(response) = response else {
        eprintln!("{path}: the connection broke before the head");
        return None;
    };
    assert_eq!(response.status(), 200, "{path}");
    let id = response
        .headers()
        .get("berth-invocation-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = tokio::time::timeout(Duration::from_secs(30), response.into_body().collect())
        .await
        .expect("the body ends or breaks within 30 s");
    assert!(
        body.is_err(),
        "{path}: a body cut short must not look complete"
    );
    id
}

#[tokio::test]
async fn an_error_code_is_502_and_a_body_over_the_limit_is_413() {
    let berth = Berth::up(&manifest("request_body = \"1KiB\""));
    let reply = get(&berth, "/rust03/error").await;
    assert_eq!(reply.status, 502);
    let line = berth.log_line(&reply.invocation(), "answered with an error");
    assert!(line.contains("the guest gave up"), "{line}");
    // Declared over the limit, and streamed over it without a length.
    let reply = post(&berth, "/rust03/echo", vec![b'x'; 4096]).await;
    assert_eq!(reply.status, 413);
    let req = http::Request::post("/rust03/length")
        .header("host", berth.addr.to_string())
        .body(chunked(vec![Bytes::from(vec![b'y'; 4096])]))
        .unwrap();
    assert_eq!(send(berth.addr, req).await.status, 413);
    let reply = post(&berth, "/rust03/length", vec![b'z'; 1000]).await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (200, "read 1000 bytes\n")
    );
    let reply = post(&berth, "/rust03/echo", "small").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "small"));
}

#[tokio::test]
async fn a_host_header_that_is_no_authority_reaches_the_guest_without_one() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let berth = Berth::up(&manifest(""));
    let mut stream = tokio::net::TcpStream::connect(berth.addr).await.unwrap();
    stream
        .write_all(
            b"GET /rust03/info HTTP/1.1\r\nHost: not an authority\r\nConnection: close\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("authority: \n"), "{answer}");
    assert!(answer.contains("path: /rust03/info\n"), "{answer}");
}

/// A loopback HTTP server answering every request with 200 and a body
/// that never ends: a byte every 100 ms.
async fn trickling_upstream() -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                    .await;
                while stream.write_all(b"1\r\nx\r\n").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn an_upstream_body_passed_on_is_sent_within_the_callers_deadline() {
    let upstream = trickling_upstream().await;
    let manifest = [
        format!(
            "[service.rust03]\ncomponent = {:?}\nroute = \"/rust03/...\"\n\
             allowed_outbound = [\"http://{upstream}\", \"http://hello.svc\"]\n\
             [service.rust03.limits]\ntimeout = \"1s\"\n",
            programs::SERVICE_P3
        ),
        service("hello", programs::HELLO, "/hello", ""),
    ]
    .concat();
    let berth = Berth::up_admin(&manifest, &[]);
    // A body that ends is passed on whole.
    let reply = get(&berth, "/rust03/proxy?url=http://hello.svc/hello").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "hello from berth: /hello\n");
    // One that never ends is cut off at the deadline: the invocation lasts
    // as long as its body.
    let reply = get(&berth, &format!("/rust03/proxy?url=http://{upstream}/")).await;
    assert_eq!(reply.status, 200);
    assert!(reply.body.is_err(), "{:?}", reply.body);
    assert!(
        reply.elapsed >= Duration::from_secs(1),
        "{:?}",
        reply.elapsed
    );
    assert!(
        reply.elapsed < Duration::from_secs(10),
        "{:?}",
        reply.elapsed
    );
    let line = berth.log_line(&reply.invocation(), "deadline passed");
    assert!(line.contains("service=rust03"), "{line}");
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
