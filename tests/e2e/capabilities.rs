//! Capabilities, deny by default: each test is the legitimate use plus the
//! attacks that must fail — files outside a preopen, writes to a read-only
//! one, undeclared variables, secrets leaking, outbound HTTP off the
//! allow-list, service-call loops, raw sockets.

use crate::host::Host;
use crate::support::*;
use bytes::Bytes;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn caps_service(name: &str, route: &str, extra: &str) -> String {
    format!(
        "[service.{name}]\ncomponent = {:?}\nroute = {route:?}\n{extra}\n",
        programs::CAPS
    )
}

#[tokio::test]
async fn files_are_preopened_read_only_unless_rw_and_no_path_escapes() {
    let manifest = caps_service(
        "site",
        "/...",
        r#"files = [{ host = "./static", guest = "/static" }, { host = "./data", guest = "/data", mode = "rw" }]"#,
    );
    let dir = manifest_dir(&manifest);
    let root = dir.path().to_path_buf();
    std::fs::create_dir(root.join("static")).unwrap();
    std::fs::create_dir(root.join("data")).unwrap();
    std::fs::write(root.join("static/hello.txt"), "hello file").unwrap();
    std::fs::write(root.join("outside.txt"), "outside the preopen").unwrap();
    std::os::unix::fs::symlink(root.join("outside.txt"), root.join("static/absolute-link"))
        .unwrap();
    std::os::unix::fs::symlink("../outside.txt", root.join("static/relative-link")).unwrap();
    std::os::unix::fs::symlink("hello.txt", root.join("static/inner-link")).unwrap();
    let berth = Berth::up_with(dir, &["--cache-dir", shared_cache().to_str().unwrap()]);

    // The legitimate uses: read, list, follow a link that stays inside,
    // write where `rw` allows it.
    let read = get(&berth, "/read?p=/static/hello.txt").await;
    assert_eq!((read.status, read.text().as_str()), (200, "hello file"));
    let inner = get(&berth, "/read?p=/static/inner-link").await;
    assert_eq!((inner.status, inner.text().as_str()), (200, "hello file"));
    let list = get(&berth, "/list?p=/static").await;
    assert_eq!(list.status, 200, "{}", list.text());
    assert!(list.text().contains("hello.txt"), "{}", list.text());
    let write = get(&berth, "/write?p=/data/new.txt").await;
    assert_eq!(write.status, 200, "{}", write.text());
    assert_eq!(
        std::fs::read_to_string(root.join("data/new.txt")).unwrap(),
        "written"
    );

    // The attacks: every one fails inside the guest, and nothing outside
    // the preopens is read or written.
    for attack in [
        "/read?p=/static/../outside.txt",
        "/read?p=/static/../../../../../../etc/passwd",
        "/read?p=/etc/passwd",
        "/read?p=/outside.txt",
        "/read?p=../outside.txt",
        "/read?p=/static/absolute-link",
        "/read?p=/static/relative-link",
        "/list?p=/static/..",
        "/write?p=/static/new.txt",
        "/write?p=/static/hello.txt",
        "/write?p=/data/../static/new.txt",
        "/write?p=/data/../escaped.txt",
        "/write?p=/escaped.txt",
    ] {
        let reply = get(&berth, attack).await;
        assert_eq!(reply.status, 422, "{attack} was allowed: {}", reply.text());
        assert!(
            reply.text().starts_with("error: "),
            "{attack}: {}",
            reply.text()
        );
        assert!(!reply.text().contains("outside the preopen"), "{attack}");
        assert!(!reply.text().contains("root:"), "{attack}");
    }
    assert!(!root.join("static/new.txt").exists());
    assert!(!root.join("escaped.txt").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("static/hello.txt")).unwrap(),
        "hello file"
    );

    // A mounted directory swapped for a symlink (say, by a guest that could
    // write its parent) is not followed: the instance is refused.
    std::fs::rename(root.join("static"), root.join("static-moved")).unwrap();
    std::os::unix::fs::symlink("/etc", root.join("static")).unwrap();
    let reply = get(&berth, "/read?p=/static/passwd").await;
    assert_eq!(reply.status, 500, "{}", reply.text());
    berth.wait_for_logs(&["a symlink was put on its path"]);
}

#[tokio::test]
async fn a_mount_inside_a_writable_mount_is_refused() {
    let manifest = caps_service(
        "site",
        "/...",
        r#"files = [{ host = "./data", guest = "/data", mode = "rw" }, { host = "./data/inner", guest = "/inner" }]"#,
    );
    let dir = manifest_dir(&manifest);
    std::fs::create_dir_all(dir.path().join("data/inner")).unwrap();
    let failed = up_fails(dir.path(), "berth.toml");
    assert!(!failed.status.success());
    assert!(
        failed.stderr.contains("service.site.files: host paths")
            && failed.stderr.contains("overlap"),
        "{}",
        failed.stderr
    );
}

/// Every file under `dir`, as bytes.
fn all_files(dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            all_files(&path, out);
        } else if let Ok(bytes) = std::fs::read(&path) {
            out.push((path.display().to_string(), bytes));
        }
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn variables_and_secrets_reach_their_service_only_and_never_leak() {
    const FIRST: &str = "s3cret-db-value-first";
    const SECOND: &str = "s3cret-db-value-second";
    const FROM_ENV: &str = "k3y-from-the-host-environment";
    let secrets = secrets_dir(&[("db-password", FIRST)]);
    let dir = secrets.path().to_str().unwrap().to_owned();
    let host = Host::start_with_env(
        &["--secrets-dir", &dir],
        &[("BERTH_SECRET_API_KEY", FROM_ENV)],
    );
    let env = r#"env = { GREETING = "hello", DB_PASSWORD = { secret = "db-password" }, API_KEY = { secret = "api-key" } }"#;
    host.deploy_manifest(&format!(
        "{}{}",
        caps_service("vault", "/vault/...", env),
        caps_service("other", "/other/...", "")
    ));

    let value = |path: &'static str| {
        let berth = &host.berth;
        async move {
            let reply = get(berth, path).await;
            (reply.status, reply.text())
        }
    };
    assert_eq!(
        value("/vault/env?name=GREETING").await,
        (200, "hello".into())
    );
    assert_eq!(
        value("/vault/env?name=DB_PASSWORD").await,
        (200, FIRST.into())
    );
    assert_eq!(
        value("/vault/env?name=API_KEY").await,
        (200, FROM_ENV.into())
    );
    // Exactly what was declared: nothing of the host's environment.
    assert_eq!(
        value("/vault/envs").await,
        (200, "API_KEY\nDB_PASSWORD\nGREETING".into())
    );
    for undeclared in ["PATH", "HOME", "BERTH_TOKEN", "BERTH_SECRET_API_KEY"] {
        let path = format!("/vault/env?name={undeclared}");
        let reply = get(&host.berth, &path).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (404, "absent"),
            "{undeclared}"
        );
    }
    // Another service sees none of it.
    assert_eq!(value("/other/envs").await, (200, String::new()));
    assert_eq!(
        value("/other/env?name=DB_PASSWORD").await,
        (404, "absent".into())
    );

    // An updated secret takes effect at the next invocation, no redeploy.
    write_secret(secrets.path(), "db-password", SECOND);
    assert_eq!(
        value("/vault/env?name=DB_PASSWORD").await,
        (200, SECOND.into())
    );

    // A secret file others may read is refused, and the refusal names the
    // file, not the value.
    {
        use std::os::unix::fs::PermissionsExt;
        let file = secrets.path().join("db-password");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        let reply = get(&host.berth, "/vault/env?name=DB_PASSWORD").await;
        assert_eq!(reply.status, 500, "{}", reply.text());
        assert!(!reply.text().contains(SECOND));
        host.berth.wait_for_logs(&["readable by group or others"]);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(
            value("/vault/env?name=DB_PASSWORD").await,
            (200, SECOND.into())
        );
    }

    // A deploy that refers to a secret the host does not have is refused.
    let missing = host.cli(&[
        "deploy",
        manifest_dir(&caps_service(
            "broken",
            "/broken/...",
            r#"env = { X = { secret = "not-there" } }"#,
        ))
        .path()
        .join("berth.toml")
        .to_str()
        .unwrap(),
    ]);
    assert!(!missing.status.success());
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert!(
        stderr.contains("secret \"not-there\" is not set"),
        "{stderr}"
    );
    assert_eq!(get(&host.berth, "/broken/envs").await.status, 404);

    // The same from the command line, without a manifest.
    host.cli_ok(&[
        "deploy",
        "flagged",
        "--component",
        programs::CAPS,
        "--route",
        "/flagged/...",
        "--env",
        "MODE=cli",
        "--secret",
        "DB_PASSWORD=db-password",
        "--file",
        &format!("{}:/scratch", env!("CARGO_TARGET_TMPDIR")),
        "--allow-outbound",
        "http://vault.svc",
    ]);
    assert_eq!(value("/flagged/env?name=MODE").await, (200, "cli".into()));
    assert_eq!(
        value("/flagged/env?name=DB_PASSWORD").await,
        (200, SECOND.into())
    );
    let flagged = host.cli_ok(&["inspect", "flagged"]);
    assert!(
        flagged.contains("DB_PASSWORD=(secret db-password)"),
        "{flagged}"
    );
    assert!(flagged.contains("MODE=cli"), "{flagged}");
    assert!(flagged.contains("/scratch (ro)"), "{flagged}");
    assert!(flagged.contains("http://vault.svc"), "{flagged}");
    let call = get(
        &host.berth,
        "/flagged/fetch?url=http://vault.svc/vault/env?name=GREETING",
    )
    .await;
    assert_eq!(call.text(), "status=200\nhello");

    // The configuration shows the secret's name, never its value: in the
    // CLI, in every API answer, in the logs, in the state directory.
    let inspect = host.cli_ok(&["inspect", "vault"]);
    assert!(inspect.contains("db-password"), "{inspect}");
    let views = [
        inspect,
        host.cli_ok(&["inspect", "vault", "--json"]),
        host.cli_ok(&["inspect", "flagged", "--json"]),
        host.cli_ok(&["ls", "--json"]),
        host.cli_ok(&["revisions", "vault", "--json"]),
        host.api("GET", "/v1/services/vault", "", Some(crate::host::TOKEN))
            .await
            .text(),
        host.api(
            "GET",
            "/v1/services/vault/revisions",
            "",
            Some(crate::host::TOKEN),
        )
        .await
        .text(),
        host.api("GET", "/v1/usage/records", "", Some(crate::host::TOKEN))
            .await
            .text(),
        host.berth.logs(),
    ];
    for (i, view) in views.iter().enumerate() {
        for secret in [FIRST, SECOND, FROM_ENV] {
            assert!(!view.contains(secret), "view {i} shows a secret:\n{view}");
        }
    }
    let mut files = Vec::new();
    all_files(&host.state, &mut files);
    assert!(files.iter().any(|(name, _)| name.ends_with("berth.db")));
    for (name, bytes) in &files {
        for secret in [FIRST, SECOND, FROM_ENV] {
            assert!(!contains(bytes, secret), "{name} holds a secret in clear");
        }
    }
}

/// A tiny HTTP server that answers `from upstream` and records the path
/// and `traceparent` of every request.
async fn upstream() -> (SocketAddr, Arc<Mutex<Vec<(String, Option<String>)>>>) {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let record = record.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let record = record.clone();
                    async move {
                        record.lock().unwrap().push((
                            req.uri().path().to_owned(),
                            req.headers()
                                .get("traceparent")
                                .map(|v| v.to_str().unwrap().to_owned()),
                        ));
                        Ok::<_, std::convert::Infallible>(http::Response::new(
                            http_body_util::Full::new(Bytes::from_static(b"from upstream")),
                        ))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn outbound_http_reaches_only_allowed_origins_and_sockets_are_denied() {
    let (allowed, seen) = upstream().await;
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let _silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    // A plain TCP port that must never see a connection from a guest.
    let raw = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    raw.set_nonblocking(true).unwrap();
    let raw_addr = raw.local_addr().unwrap();

    let manifest = format!(
        "{}{}{}",
        caps_service(
            "out",
            "/out/...",
            &format!(
                "allowed_outbound = [\"http://127.0.0.1:{}\"]",
                allowed.port()
            )
        ),
        caps_service("closed", "/closed/...", ""),
        caps_service(
            "slow",
            "/slow/...",
            "allowed_outbound = [\"http://127.0.0.1:*\"]\n[service.slow.limits]\ntimeout = \"1s\""
        ),
    );
    let berth = Berth::up(&manifest);

    // Allowed: the request goes out, in the caller's trace.
    let trace_id = "4bf92f3577b34da6a3ce929b0e0e4736";
    let req = http::Request::get(format!(
        "/out/fetch?url=http://127.0.0.1:{}/x",
        allowed.port()
    ))
    .header("host", berth.addr.to_string())
    .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
    .body(http_body_util::Full::new(Bytes::new()))
    .unwrap();
    let reply = send(berth.addr, req).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), "status=200\nfrom upstream");
    {
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), 1, "{seen:?}");
        assert_eq!(seen[0].0, "/x");
        let traceparent = seen[0].1.as_deref().expect("a traceparent header");
        assert!(
            traceparent.starts_with(&format!("00-{trace_id}-")),
            "{traceparent}"
        );
        // The parent is the invocation's own span, not the client's.
        assert!(!traceparent.contains("00f067aa0ba902b7"), "{traceparent}");
    }

    // Denied: another port, another host name, a service with no list.
    for (path, why) in [
        (
            format!("/out/fetch?url=http://127.0.0.1:{}/x", silent_addr.port()),
            "not in the service's allowed_outbound",
        ),
        (
            format!("/out/fetch?url=http://localhost:{}/x", allowed.port()),
            "not in the service's allowed_outbound",
        ),
        (
            format!("/out/fetch?url=https://127.0.0.1:{}/x", allowed.port()),
            "not in the service's allowed_outbound",
        ),
        (
            format!("/closed/fetch?url=http://127.0.0.1:{}/x", allowed.port()),
            "no outbound allow-list",
        ),
    ] {
        let reply = get(&berth, &path).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (502, "error=ErrorCode::HttpRequestDenied"),
            "{path}"
        );
        berth.wait_for_logs(&["outgoing HTTP request denied", why]);
    }
    assert_eq!(seen.lock().unwrap().len(), 1, "a denied request went out");

    // An upstream that never answers cannot hold the invocation past its
    // deadline (1 s here): the wait counts toward it.
    let started = Instant::now();
    let reply = get(
        &berth,
        &format!("/slow/fetch?url=http://127.0.0.1:{}/", silent_addr.port()),
    )
    .await;
    assert!(
        [502, 504].contains(&reply.status),
        "{} {}",
        reply.status,
        reply.text()
    );
    assert!(started.elapsed() < Duration::from_secs(15));

    // Raw sockets: refused inside the guest; the port never sees a
    // connection.
    let reply = get(&berth, &format!("/out/tcp?addr={raw_addr}")).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    assert!(reply.text().starts_with("error: "), "{}", reply.text());
    assert_eq!(
        raw.accept().map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the guest opened a TCP connection"
    );
}

#[tokio::test]
async fn a_guest_cannot_reach_the_hosts_own_listeners() {
    let berth = Berth::up_admin(
        &caps_service(
            "sneaky",
            "/...",
            r#"allowed_outbound = ["http://127.0.0.1:*", "http://localhost:*"]"#,
        ),
        &[],
    );
    let admin = berth.admin.unwrap().port();
    let public = berth.addr.port();
    for url in [
        format!("http://127.0.0.1:{admin}/v1/services"),
        format!("http://localhost:{admin}/metrics"),
        format!("http://127.0.0.1:{public}/fetch"),
    ] {
        let reply = get(&berth, &format!("/fetch?url={url}")).await;
        assert_eq!(
            (reply.status, reply.text().as_str()),
            (502, "error=ErrorCode::HttpRequestDenied"),
            "{url}"
        );
    }
    berth.wait_for_logs(&["it would reach this host's own listener"]);
}

#[tokio::test]
async fn services_call_each_other_by_name_metered_twice_and_loops_are_cut() {
    let manifest = format!(
        "{}{}{}{}",
        caps_service(
            "front",
            "/front/...",
            r#"allowed_outbound = ["http://hello.svc"]"#
        ),
        service("hello", programs::HELLO, "/hello", ""),
        caps_service(
            "ping",
            "/ping/...",
            "allowed_outbound = [\"http://pong.svc\"]\nenv = { PEER = \"pong\" }"
        ),
        caps_service(
            "pong",
            "/pong/...",
            "allowed_outbound = [\"http://ping.svc\"]\nenv = { PEER = \"ping\" }"
        ),
    );
    let berth = Berth::up_admin(&manifest, &[]);

    // A call by name: the callee's own invocation, in-process.
    let reply = get(&berth, "/front/fetch?url=http://hello.svc/hello").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().starts_with("status=200\nhello"),
        "{}",
        reply.text()
    );
    let front_id = reply.invocation();
    let records = crate::scale::records(&berth, 2).await;
    assert_eq!(records.len(), 2, "{records:#?}");
    let front = records
        .iter()
        .find(|r| r["invocation"] == front_id.as_str())
        .unwrap();
    assert_eq!(
        (front["service"].as_str(), front["trigger"].as_str()),
        (Some("front"), Some("http"))
    );
    let hello = records.iter().find(|r| r["service"] == "hello").unwrap();
    assert_eq!(hello["trigger"], "call");
    assert_eq!(hello["outcome"], "ok");
    assert_eq!(hello["status"], 200);
    assert!(hello["fuel"].as_u64().unwrap() > 0);
    // Its span names the calling invocation.
    let line = berth.log_line(hello["invocation"].as_str().unwrap(), "finished");
    assert!(line.contains(&format!("caller={front_id}")), "{line}");
    assert!(line.contains("trigger=\"call\""), "{line}");

    // Calling a service that is not on the list is denied like any host.
    let reply = get(&berth, "/front/fetch?url=http://ping.svc/loop").await;
    assert_eq!(
        (reply.status, reply.text().as_str()),
        (502, "error=ErrorCode::HttpRequestDenied")
    );

    // ping and pong call each other forever: the chain is cut at the
    // depth limit, with loop-detected, and every level was an invocation.
    let reply = get(&berth, "/ping/loop").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert!(
        reply.text().ends_with("error=ErrorCode::LoopDetected"),
        "{}",
        reply.text()
    );
    let log = berth.wait_for_logs(&["service call refused: calls nest deeper than 8"]);
    assert!(log.contains("ping → pong → ping"), "{log}");
    // 2 (front → hello) + 1 (front, denied) + 1 (ping) + 8 nested calls.
    let records = crate::scale::records(&berth, 12).await;
    assert_eq!(records.len(), 12, "{records:#?}");
    let calls = records
        .iter()
        .filter(|r| r["trigger"] == "call" && r["service"] != "hello")
        .count();
    assert_eq!(calls, 8);
}

#[tokio::test]
async fn a_service_call_ends_by_its_callers_deadline() {
    let manifest = format!(
        "{}{}",
        caps_service(
            "impatient",
            "/...",
            "allowed_outbound = [\"http://sleeper.svc\"]\n[service.impatient.limits]\ntimeout = \"1s\""
        ),
        service("sleeper", programs::SLEEP, "/sleeper", "timeout = \"1h\""),
    );
    let berth = Berth::up_admin(&manifest, &[]);
    let reply = get(&berth, "/fetch?url=http://sleeper.svc/").await;
    assert_eq!(reply.status, 504, "{}", reply.text());
    // The callee, allowed an hour of its own, was stopped with its caller.
    let records = crate::scale::records(&berth, 2).await;
    let sleeper = records.iter().find(|r| r["service"] == "sleeper").unwrap();
    assert_eq!(sleeper["trigger"], "call");
    assert_eq!(sleeper["outcome"], "deadline");
    assert!(
        sleeper["wall_us"].as_u64().unwrap() < 30_000_000,
        "{sleeper}"
    );
}

#[tokio::test]
async fn the_rest_of_wasi_is_as_documented_sockets_refused_clocks_and_random_given_stdin_closed() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.set_nonblocking(true).unwrap();
    let udp_addr = udp.local_addr().unwrap();
    let berth = Berth::up(&caps_service("plain", "/...", ""));

    // No UDP, no name lookups.
    let reply = get(&berth, &format!("/udp?addr={udp_addr}")).await;
    assert_eq!(reply.status, 422, "{}", reply.text());
    let mut buf = [0u8; 8];
    assert_eq!(
        udp.recv_from(&mut buf).map(|_| ()).unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "the guest sent a datagram"
    );
    let reply = get(&berth, "/resolve?host=localhost").await;
    assert_eq!(reply.status, 422, "{}", reply.text());

    // Clocks: the host's wall clock, and a monotonic clock that moves.
    let reply = get(&berth, "/clock").await;
    assert_eq!(reply.status, 200);
    let text = reply.text();
    let (secs, monotonic_sane) = text.split_once(' ').unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.parse::<u64>().unwrap().abs_diff(now) < 60, "{text}");
    assert_eq!(monotonic_sane, "true");

    // Random: given, and different each time.
    let a = get(&berth, "/random").await.text();
    let b = get(&berth, "/random").await.text();
    assert_eq!(a.len(), 32);
    assert_ne!(a, b);

    // stdin: closed, read to its end at once.
    let reply = get(&berth, "/stdin").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "0 bytes"));
}
