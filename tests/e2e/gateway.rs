//! The edge gateway with real clients: TLS (rustls) with SNI and reload,
//! HTTP/2 by ALPN and h2c, the listeners' limits on slow, idle, numerous
//! and oversized clients, and the admin token made by default.

use crate::host::TOKEN;
use crate::support::*;
use crate::tools::{self, Pki, run, run_ok, served_serial};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn info_service() -> String {
    service("info", programs::REQUEST_INFO, "/info/...", "")
}

/// `curl -sS` with `args`; returns (status line's version, status, body).
fn curl(args: &[&str]) -> (String, u16, String) {
    let mut all = vec!["-sS", "-o", "-", "-w", "\n%{http_version} %{http_code}"];
    all.extend_from_slice(args);
    let out = run_ok("curl", &all);
    let (body, tail) = out.rsplit_once('\n').expect("curl's write-out line");
    let (version, code) = tail.split_once(' ').unwrap();
    (version.to_owned(), code.parse().unwrap(), body.to_owned())
}

/// The request lines of a `request-info` answer (not the headers a
/// client chose).
fn request_lines(body: &str) -> Vec<&str> {
    body.lines().filter(|l| !l.starts_with("header ")).collect()
}

#[test]
fn tls_with_sni_speaks_http1_and_h2_and_refuses_old_versions_and_plain_http() {
    let dir = manifest_dir(&info_service());
    let pki = Pki::new(dir.path());
    let (a_cert, a_key, a_serial) = pki.issue("a.test", "a");
    let (b_cert, b_key, b_serial) = pki.issue("b.test", "b");
    let berth = Berth::up_with(
        dir,
        &[
            "--cache-dir",
            shared_cache().to_str().unwrap(),
            "--tls-cert",
            &a_cert,
            "--tls-key",
            &a_key,
            "--tls-cert",
            &b_cert,
            "--tls-key",
            &b_key,
        ],
    );
    berth.wait_for_logs(&["on https://"]);
    let port = berth.addr.port();
    let resolve = |name: &str| format!("{name}:{port}:127.0.0.1");
    let url = |name: &str| format!("https://{name}:{port}/info/x?y=1");

    let (v1, s1, body1) = curl(&[
        "--cacert",
        &pki.ca,
        "--http1.1",
        "--resolve",
        &resolve("a.test"),
        &url("a.test"),
    ]);
    let (v2, s2, body2) = curl(&[
        "--cacert",
        &pki.ca,
        "--http2",
        "--resolve",
        &resolve("a.test"),
        &url("a.test"),
    ]);
    assert_eq!((v1.as_str(), s1, v2.as_str(), s2), ("1.1", 200, "2", 200));
    // The guest sees the same request over both.
    assert_eq!(request_lines(&body1), request_lines(&body2));
    assert!(body1.contains("scheme: https\n"), "{body1}");
    assert!(
        body1.contains(&format!("authority: a.test:{port}\n")),
        "{body1}"
    );
    assert!(body1.contains("path: /info/x?y=1\n"), "{body1}");

    // SNI picks the certificate; no SNI gets the first.
    assert!(served_serial(port, "b.test").contains(&b_serial));
    assert!(served_serial(port, "www.b.test").contains(&b_serial));
    assert!(served_serial(port, "a.test").contains(&a_serial));
    assert!(served_serial(port, "unknown.test").contains(&a_serial));

    // TLS 1.0 and 1.1 clients are refused.
    for version in ["-tls1", "-tls1_1"] {
        let out = run(
            "sh",
            &[
                "-c",
                &format!(
                    "openssl s_client -connect 127.0.0.1:{port} {version} -cipher DEFAULT@SECLEVEL=0 </dev/null 2>&1"
                ),
            ],
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            !text.contains("BEGIN CERTIFICATE") && !text.contains("Cipher is ECDHE"),
            "{version}: {text}"
        );
    }
    // curl asking for TLS 1.1 at most (its own floor lowered) is refused too.
    let r = resolve("a.test");
    let u = url("a.test");
    let old = run(
        "curl",
        &[
            "-sS",
            "--tlsv1.1",
            "--tls-max",
            "1.1",
            "--ciphers",
            "DEFAULT@SECLEVEL=0",
            "--cacert",
            &pki.ca,
            "--resolve",
            &r,
            &u,
        ],
    );
    assert!(!old.status.success(), "curl --tlsv1.1 got through");
    // TLS 1.2 and 1.3 are served.
    for version in ["--tlsv1.2 --tls-max 1.2", "--tlsv1.3"] {
        let mut args: Vec<&str> = version.split(' ').collect();
        args.extend(["--cacert", &pki.ca, "--resolve"]);
        let r = resolve("a.test");
        let u = url("a.test");
        args.extend([r.as_str(), u.as_str()]);
        assert_eq!(curl(&args).1, 200, "{version}");
    }

    // Plain HTTP to the TLS port: no HTTP answer, the connection closes.
    let mut plain = TcpStream::connect(berth.addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /info/x HTTP/1.1\r\nHost: a.test\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = plain.read_to_end(&mut got);
    assert!(!String::from_utf8_lossy(&got).contains("HTTP/1.1 200"));

    // h2load over TLS (ALPN h2).
    let out = run_ok(
        tools::h2load(),
        &[
            "-n",
            "200",
            "-c",
            "4",
            "-m",
            "8",
            &format!("https://127.0.0.1:{port}/info/load"),
        ],
    );
    assert!(out.contains("200 succeeded"), "{out}");
    // And the host serves on.
    assert_eq!(
        curl(&[
            "--cacert",
            &pki.ca,
            "--resolve",
            &resolve("b.test"),
            &url("b.test")
        ])
        .1,
        200
    );
}

#[test]
fn certificates_are_reloaded_when_replaced_and_a_bad_one_is_kept_out() {
    let dir = manifest_dir(&info_service());
    let pki = Pki::new(dir.path());
    let (cert, key, first) = pki.issue("a.test", "served");
    let mut berth = Berth::up_with(
        tempfile_dir_keep(dir),
        &[
            "--cache-dir",
            shared_cache().to_str().unwrap(),
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
        ],
    );
    let port = berth.addr.port();
    assert!(served_serial(port, "a.test").contains(&first));
    // Replaced on disk (as a renewal would): served within a few seconds.
    let (new_cert, new_key, second) = pki.issue("a.test", "renewed");
    std::fs::copy(&new_key, &key).unwrap();
    std::fs::copy(&new_cert, &cert).unwrap();
    wait_until("the renewed certificate is served", || {
        served_serial(port, "a.test").contains(&second)
    });
    // Garbage: the old one stays, and the log says why.
    std::fs::write(&cert, "not a certificate\n").unwrap();
    berth.wait_for_logs(&[
        "TLS certificates not reloaded",
        "served.pem: no PEM certificate",
    ]);
    assert!(served_serial(port, "a.test").contains(&second));
    // A good one again, picked up at once on SIGHUP.
    let (third_cert, third_key, third) = pki.issue("a.test", "third");
    std::fs::copy(&third_key, &key).unwrap();
    std::fs::copy(&third_cert, &cert).unwrap();
    run_ok("kill", &["-HUP", &berth.pid().to_string()]);
    wait_until("the third certificate is served", || {
        served_serial(port, "a.test").contains(&third)
    });
    berth.wait_for_logs(&["TLS certificates reloaded"]);
    let status = berth.terminate();
    assert!(status.success());
}

/// Keeps the directory (the certificates live in it) for the host.
fn tempfile_dir_keep(dir: tempfile::TempDir) -> tempfile::TempDir {
    dir
}

fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(Instant::now() < deadline, "never: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_bad_or_mismatched_certificate_at_start_is_refused_naming_the_file() {
    let dir = manifest_dir(&info_service());
    let pki = Pki::new(dir.path());
    let (a_cert, a_key, _) = pki.issue("a.test", "a");
    let (_, b_key, _) = pki.issue("b.test", "b");
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let garbage = garbage.to_str().unwrap().to_owned();
    for (cert, key, file, why) in [
        (
            &a_cert,
            &b_key,
            &b_key,
            "does not belong to the certificate",
        ),
        (&garbage, &a_key, &garbage, "certificate"),
        (&a_cert, &a_cert, &a_cert, "private key"),
    ] {
        let out = std::process::Command::new(berth_bin())
            .args([
                "up",
                "berth.toml",
                "--listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert,
                "--tls-key",
                key,
            ])
            .current_dir(dir.path())
            .env_remove("RUST_BACKTRACE")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(
            stderr.contains(file.as_str()) && stderr.contains(why),
            "{stderr}"
        );
        assert!(!stderr.contains("https://"), "it must not listen: {stderr}");
    }
}

#[test]
fn h2c_with_prior_knowledge_serves_the_same_request_as_http1() {
    let berth = Berth::up(&info_service());
    let url = format!("http://{}/info/x?y=1", berth.addr);
    let (v1, s1, body1) = curl(&["--http1.1", &url]);
    let (v2, s2, body2) = curl(&["--http2-prior-knowledge", &url]);
    assert_eq!((v1.as_str(), s1, v2.as_str(), s2), ("1.1", 200, "2", 200));
    assert_eq!(request_lines(&body1), request_lines(&body2));
    assert!(body2.contains("scheme: http\n"), "{body2}");
    let out = run_ok(tools::h2load(), &["-n", "500", "-c", "4", "-m", "16", &url]);
    assert!(out.contains("500 succeeded"), "{out}");
}

/// Reads from `stream` until it closes (or `wait` passes); what it sent.
fn read_all(stream: &mut TcpStream, wait: Duration) -> String {
    stream.set_read_timeout(Some(wait)).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn oversized_heads_are_refused_and_the_host_serves_on() {
    let berth = Berth::up(&info_service());
    let send_raw = |head: String| {
        let mut s = TcpStream::connect(berth.addr).unwrap();
        let _ = s.write_all(head.as_bytes());
        read_all(&mut s, Duration::from_secs(10))
    };
    let big = format!(
        "GET /info/a HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    assert!(send_raw(big).starts_with("HTTP/1.1 431"));
    let many: String = (0..10_000).map(|i| format!("X-H{i}: v\r\n")).collect();
    let many = format!("GET /info/a HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert!(send_raw(many).starts_with("HTTP/1.1 431"));
    let long = format!(
        "GET /info/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "u".repeat(64 * 1024)
    );
    let answer = send_raw(long);
    assert!(
        answer.starts_with("HTTP/1.1 414") || answer.starts_with("HTTP/1.1 431"),
        "{answer:.80}"
    );
    let long = format!(
        "GET /info/{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "u".repeat(9 * 1024)
    );
    assert!(send_raw(long).starts_with("HTTP/1.1 414"));
    assert_eq!(get(&berth, "/info/ok").await.status, 200);
}

/// Requests framed so that a proxy in front and Berth could read them
/// differently (request smuggling), or with two hosts: each refused with a
/// 400 and the connection closed; a length and a chunked coding at once
/// are read as chunked, and the connection is closed after the answer, so
/// what the length would have left over is never taken for a request.
#[tokio::test]
async fn ambiguous_framing_and_two_hosts_are_refused_and_nothing_is_smuggled() {
    let berth = Berth::up(&format!(
        "{}{}",
        info_service(),
        service("echo", programs::ECHO, "/echo/...", "")
    ));
    let send_raw = |raw: &str| {
        let mut s = TcpStream::connect(berth.addr).unwrap();
        let _ = s.write_all(raw.as_bytes());
        read_all(&mut s, Duration::from_secs(3))
    };
    let post = "POST /echo/a HTTP/1.1\r\nHost: x\r\n";
    let refused = [
        ("two lengths", format!("{post}Content-Length: 4\r\nContent-Length: 40\r\n\r\nabcd")),
        ("a list of lengths", format!("{post}Content-Length: 4, 4\r\n\r\nabcd")),
        ("a signed length", format!("{post}Content-Length: +4\r\n\r\nabcd")),
        ("a negative length", format!("{post}Content-Length: -1\r\n\r\nabcd")),
        ("an unknown coding", format!("{post}Transfer-Encoding: xchunked\r\n\r\nabcd")),
        (
            "chunked, not last",
            format!("{post}Transfer-Encoding: chunked, identity\r\n\r\n4\r\nabcd\r\n0\r\n\r\n"),
        ),
        (
            "chunked on HTTP/1.0",
            "POST /echo/a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n".into(),
        ),
        ("a folded header", "GET /info/a HTTP/1.1\r\nHost: x\r\nX-A: a\r\n  b\r\n\r\n".into()),
        ("a space before the colon", "GET /info/a HTTP/1.1\r\nHost: x\r\nX-A : a\r\n\r\n".into()),
        ("a NUL in the target", "GET /info/a\0b HTTP/1.1\r\nHost: x\r\n\r\n".into()),
        ("two Host lines", "GET /info/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n".into()),
    ];
    for (what, raw) in &refused {
        let answer = send_raw(raw);
        assert!(answer.starts_with("HTTP/1.1 400"), "{what}: {answer:.200}");
        assert!(
            answer.to_ascii_lowercase().contains("connection: close") || what == &"two Host lines",
            "{what}: {answer:.200}"
        );
    }
    let answer = send_raw("GET /info/a HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n");
    assert!(answer.ends_with("more than one Host header\n"), "{answer}");

    // A length and chunked: chunked wins (an empty body), and the
    // connection ends with the answer.
    let answer = send_raw(&format!(
        "{post}Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /info/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    ));
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "{answer}");
    // A chunk size past 64 bits: no answer but the connection's end.
    let answer = send_raw(&format!(
        "{post}Transfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFFF\r\nabcd\r\n0\r\n\r\n"
    ));
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    // Nothing was taken for a request but what was sent as one.
    assert!(!berth.logs().contains("smuggled"));
    assert_eq!(get(&berth, "/info/ok").await.status, 200);
    let reply = crate::support::post(&berth, "/echo/ok", "body").await;
    assert_eq!((reply.status, reply.text().as_str()), (200, "body"));
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_header_timeout_while_others_are_served() {
    let berth = Berth::up_with(
        manifest_dir(&info_service()),
        &[
            "--cache-dir",
            shared_cache().to_str().unwrap(),
            "--header-read-timeout",
            "6s",
        ],
    );
    // Timed from before the first connection: none may close earlier
    // than the timeout after it.
    let started = Instant::now();
    let mut idle: Vec<TcpStream> = (0..1000)
        .map(|_| TcpStream::connect(berth.addr).unwrap())
        .collect();
    let reply = get(&berth, "/info/busy").await;
    assert_eq!(reply.status, 200);
    // Served while the idle ones are still held: the last one opened is
    // still open (a read would block).
    let last = idle.last().unwrap();
    last.set_nonblocking(true).unwrap();
    let still_open = matches!(
        (&*last).read(&mut [0u8; 1]),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
    );
    assert!(
        still_open,
        "served after {:?}, once the idle ones were gone",
        started.elapsed()
    );
    last.set_nonblocking(false).unwrap();
    // Every idle one is closed by the host, none before the timeout.
    for stream in &mut idle {
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).unwrap_or(0);
        assert_eq!(n, 0, "an idle connection got an answer");
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(5900) && took < Duration::from_secs(30),
        "{took:?}"
    );
    assert_eq!(get(&berth, "/info/after").await.status, 200);
}

#[test]
fn a_trickled_body_is_cut_at_its_timeout() {
    let mut berth = Berth::up_admin(
        &service("echo", programs::ECHO, "/echo/...", ""),
        &["--body-timeout", "2s", "--body-min-rate", "1KiB"],
    );
    // An upload to the admin API at a byte every 200 ms: 408.
    let admin = berth.admin.unwrap();
    let mut s = TcpStream::connect(admin).unwrap();
    s.write_all(
        format!(
            "POST /v1/artifacts HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 100000\r\n\r\n"
        )
        .as_bytes(),
    )
    .unwrap();
    let started = Instant::now();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut answer = Vec::new();
    while started.elapsed() < Duration::from_secs(20) {
        if s.write_all(b"x").is_err() {
            break;
        }
        let mut buf = [0u8; 4096];
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    // The same to a guest: its read fails, and the request ends.
    let mut s = TcpStream::connect(berth.addr).unwrap();
    s.write_all(b"POST /echo/buffered HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\nx")
        .unwrap();
    let answer = read_all(&mut s, Duration::from_secs(15));
    assert!(answer.starts_with("HTTP/1.1 500"), "{answer}");
    assert!(answer.contains("reading the body failed"), "{answer}");
    berth.wait_for_logs(&["a request body arrived too slowly"]);
    assert!(berth.terminate().success());
}

/// Reads one whole HTTP/1.1 response (chunked or with a length) from a
/// kept-alive connection.
fn read_response(s: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let text = String::from_utf8_lossy(&all).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            });
            let complete = match length {
                Some(length) => body.len() >= length,
                None => body.ends_with("0\r\n\r\n"),
            };
            if complete {
                return text;
            }
        }
        match s.read(&mut buf) {
            Ok(0) => return text,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) => return format!("{text}(error: {e})"),
        }
    }
}

#[test]
fn twenty_thousand_held_connections_wait_and_never_exhaust_descriptors() {
    let berth = Berth::up_with(
        manifest_dir(&info_service()),
        &[
            "--cache-dir",
            shared_cache().to_str().unwrap(),
            "--max-connections",
            "1000",
            "--header-read-timeout",
            "10s",
        ],
    );
    // A client already connected keeps being served throughout.
    let mut kept = TcpStream::connect(berth.addr).unwrap();
    kept.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let ask = |s: &mut TcpStream, n: usize| {
        s.write_all(format!("GET /info/kept{n} HTTP/1.1\r\nHost: a\r\n\r\n").as_bytes())
            .unwrap();
        let text = read_response(s);
        assert!(text.starts_with("HTTP/1.1 200"), "request {n}: {text:?}");
    };
    ask(&mut kept, 0);
    // Two processes hold 10,000 connections each for 6 s.
    let holder = r#"
import socket, sys, time
port = int(sys.argv[1]); held = []
for _ in range(10000):
    s = socket.socket(); s.setblocking(False)
    try: s.connect(("127.0.0.1", port))
    except BlockingIOError: pass
    except OSError: s.close(); continue
    held.append(s)
print(len(held), flush=True)
time.sleep(6)
"#;
    let port = berth.addr.port().to_string();
    let holders: Vec<_> = (0..2)
        .map(|_| {
            std::process::Command::new("python3")
                .args(["-c", holder, &port])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // The host keeps serving its kept-alive client while the others wait
    // (asked every second: a kept-alive connection waits for its next
    // request at most --header-read-timeout).
    for n in 1..=5 {
        std::thread::sleep(Duration::from_secs(1));
        ask(&mut kept, n);
    }
    for holder in holders {
        let out = holder.wait_with_output().unwrap();
        let held: usize = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0);
        assert!(held > 9000, "a holder made only {held} connections");
    }
    // Once they are gone, new clients are served again.
    let mut fresh = TcpStream::connect(berth.addr).unwrap();
    fresh
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    ask(&mut fresh, 9);
    let logs = berth.logs();
    assert!(!logs.contains("accepting a connection failed"), "{logs}");
}

#[tokio::test]
async fn the_admin_api_needs_a_token_by_default_and_the_cli_finds_it() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    let notes = dir.path().join("xdg-state");
    let mut cmd = std::process::Command::new(berth_bin());
    cmd.args(["serve", "--state"])
        .arg(&state)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("BERTH_TOKEN")
        .env("XDG_STATE_HOME", &notes);
    let berth = Berth::start(cmd, Duration::from_secs(120), None, true);
    let file = state.join("admin.token");
    berth.wait_for_logs(&[&format!("admin token in {}", file.display())]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    assert!(token.len() >= 32);
    let admin = berth.admin.unwrap();
    let ask = |token: Option<String>| {
        let mut req = http::Request::get("/v1/services").header("host", "a");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        send(
            admin,
            req.body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap(),
        )
    };
    assert_eq!(ask(None).await.status, 401);
    assert_eq!(ask(Some("wrong".into())).await.status, 401);
    assert_eq!(ask(Some(token.clone())).await.status, 200);
    // The CLI of the same user finds it by the address alone.
    let out = std::process::Command::new(berth_bin())
        .args(["ls"])
        .env("BERTH_HOST", format!("http://{admin}"))
        .env_remove("BERTH_TOKEN")
        .env("XDG_STATE_HOME", &notes)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Without the note, it is refused.
    let out = std::process::Command::new(berth_bin())
        .args(["ls"])
        .env("BERTH_HOST", format!("http://{admin}"))
        .env_remove("BERTH_TOKEN")
        .env("XDG_STATE_HOME", dir.path().join("elsewhere"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    // The same token again after a restart.
    drop(berth);
    let mut cmd = std::process::Command::new(berth_bin());
    cmd.args(["serve", "--state"])
        .arg(&state)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("BERTH_TOKEN")
        .env("XDG_STATE_HOME", &notes);
    let again = Berth::start(cmd, Duration::from_secs(120), None, true);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    drop(again);
}

#[tokio::test]
async fn a_guest_of_one_berth_cannot_use_another_berths_admin_api_without_its_token() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let mut cmd = std::process::Command::new(berth_bin());
    cmd.args(["serve", "--state"])
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .env_remove("BERTH_TOKEN")
        .env("XDG_STATE_HOME", dir.path().join("notes"));
    let other = Berth::start(cmd, Duration::from_secs(120), None, true);
    let manifest = format!(
        "[service.sneaky]\ncomponent = {:?}\nroute = \"/...\"\nallowed_outbound = [\"http://127.0.0.1:*\"]\n",
        programs::CAPS
    );
    let berth = Berth::up(&manifest);
    let url = format!(
        "http://127.0.0.1:{}/v1/services",
        other.admin.unwrap().port()
    );
    let reply = get(&berth, &format!("/fetch?url={url}")).await;
    assert!(reply.text().starts_with("status=401"), "{}", reply.text());
}

/// Tokens and a JWKS made by PyJWT (a real JWT library, not Berth's), for
/// issuer `https://id.test` and audience `api`.
fn mint(dir: &std::path::Path) -> serde_json::Value {
    let rsa = dir.join("rsa.key");
    let ec = dir.join("ec.key");
    run_ok(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            rsa.to_str().unwrap(),
        ],
    );
    run_ok(
        "openssl",
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            ec.to_str().unwrap(),
        ],
    );
    let script = r#"
import base64, hashlib, hmac, json, sys, time
import jwt
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from cryptography.hazmat.primitives import serialization
rsa = serialization.load_pem_private_key(open(sys.argv[1], "rb").read(), None)
ec = serialization.load_pem_private_key(open(sys.argv[2], "rb").read(), None)
now = int(time.time())
def claims(**over):
    c = {"iss": "https://id.test", "aud": "api", "sub": "ada", "exp": now + 300, "email": "ada@example.com", "scope": "orders:read"}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}
def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
rsa_jwk = json.loads(RSAAlgorithm.to_jwk(rsa.public_key())); rsa_jwk.update(kid="r1", alg="RS256", use="sig")
ec_jwk = json.loads(ECAlgorithm.to_jwk(ec.public_key())); ec_jwk.update(kid="e1", alg="ES256", use="sig")
pem = rsa.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "r1"}).encode())
body = b64(json.dumps(claims()).encode())
confused = head + "." + body + "." + b64(hmac.new(pem, (head + "." + body).encode(), hashlib.sha256).digest())
good = jwt.encode(claims(), rsa, algorithm="RS256", headers={"kid": "r1"})
parts = good.split(".")
sig = parts[2]
tampered = ".".join(parts[:2] + [("A" if sig[0] != "A" else "B") + sig[1:]])
out = {
    "jwks": {"keys": [rsa_jwk, ec_jwk]},
    "rs256": good,
    "es256": jwt.encode(claims(sub="grace"), ec, algorithm="ES256", headers={"kid": "e1"}),
    "expired": jwt.encode(claims(exp=now - 120), rsa, algorithm="RS256", headers={"kid": "r1"}),
    "not_yet": jwt.encode(claims(nbf=now + 120), rsa, algorithm="RS256", headers={"kid": "r1"}),
    "wrong_issuer": jwt.encode(claims(iss="https://evil.test"), rsa, algorithm="RS256", headers={"kid": "r1"}),
    "wrong_audience": jwt.encode(claims(aud="other"), rsa, algorithm="RS256", headers={"kid": "r1"}),
    "alg_none": jwt.encode(claims(), None, algorithm="none"),
    "hs256_with_public_key": confused,
    "tampered": tampered,
    "no_scope": jwt.encode(claims(scope="orders:write"), rsa, algorithm="RS256", headers={"kid": "r1"}),
    "hs256": jwt.encode(claims(iss="billing"), "hs-secret-of-thirty-two-bytes-or-more", algorithm="HS256"),
    "hs256_wrong": jwt.encode(claims(iss="billing"), "not-the-secret-but-as-long-as-it-is", algorithm="HS256"),
}
print(json.dumps(out))
"#;
    let out = run_ok(
        tools::python_jwt(),
        &["-c", script, rsa.to_str().unwrap(), ec.to_str().unwrap()],
    );
    serde_json::from_str(&out).unwrap()
}

/// A GET of `path` with `headers`.
async fn get_with(berth: &Berth, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::get(path).header("host", berth.addr.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    send(
        berth.addr,
        req.body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap(),
    )
    .await
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// `berth keys …` against `berth`'s admin API; stdout.
fn keys(berth: &Berth, args: &[&str]) -> String {
    let mut all = vec!["keys"];
    all.extend_from_slice(args);
    let out = crate::host::cli_with_token(
        &format!("http://{}", berth.admin.unwrap()),
        Some(TOKEN),
        &all,
    );
    assert!(
        out.status.success(),
        "berth keys {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn api_keys_and_jwts_let_in_exactly_who_they_should() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let tokens = mint(dir.path());
    let manifest = format!(
        r#"{}
[service.api.auth]
api_keys = true
jwt = {{ issuer = "https://id.test", audience = "api", jwks = "jwks.json", claims = ["email"], scopes = ["orders:read"] }}
public_routes = ["/api/health", "/api/public/..."]

{}
[service.billing.auth]
jwt = {{ issuer = "billing", audience = "api", secret = "jwt-key" }}

{}
[service.other.auth]
api_keys = true
"#,
        service("api", programs::REQUEST_INFO, "/api/...", ""),
        service("billing", programs::REQUEST_INFO, "/billing/...", ""),
        service("other", programs::REQUEST_INFO, "/other/...", ""),
    );
    let mdir = manifest_dir(&manifest);
    std::fs::write(mdir.path().join("jwks.json"), tokens["jwks"].to_string()).unwrap();
    let secrets = secrets_dir(&[("jwt-key", "hs-secret-of-thirty-two-bytes-or-more")]);
    let berth = Berth::up_admin_in(mdir, &["--secrets-dir", secrets.path().to_str().unwrap()]);
    let ci = keys(&berth, &["create", "ci", "--service", "api"])
        .trim()
        .to_owned();
    assert!(ci.starts_with("berth_") && ci.len() > 40, "{ci}");
    let elsewhere = keys(&berth, &["create", "elsewhere", "--service", "other"])
        .trim()
        .to_owned();
    let brief = keys(
        &berth,
        &["create", "brief", "--service", "api", "--expires", "1s"],
    )
    .trim()
    .to_owned();
    let listed = keys(&berth, &["ls"]);
    assert!(
        listed.contains("ci") && listed.contains("active") && !listed.contains(&ci),
        "{listed}"
    );

    let guest_ran = |reply: &Reply| reply.text().starts_with("method: GET");
    let with_token = |path: &'static str, name: &str| {
        let auth = bearer(tokens[name].as_str().unwrap());
        let berth = &berth;
        async move { get_with(berth, path, &[("authorization", &auth)]).await }
    };
    // No credentials: 401 with a challenge; the public route is open.
    let reply = get_with(&berth, "/api/orders", &[]).await;
    assert_eq!(reply.status, 401);
    assert!(
        reply
            .header("www-authenticate")
            .unwrap()
            .starts_with("Bearer")
    );
    assert!(!guest_ran(&reply));
    let reply = get_with(&berth, "/api/health", &[("berth-principal", "root")]).await;
    assert_eq!(reply.status, 200);
    assert!(
        !reply.text().contains("berth-principal"),
        "a client's principal header got through: {}",
        reply.text()
    );
    // A public prefix is no way around the check.
    assert_eq!(get_with(&berth, "/api/public/x", &[]).await.status, 200);
    for sneaky in [
        "/api/public/../orders",
        "/api/public/%2e%2e/orders",
        "/api/public/..%2forders",
        "/api//orders",
    ] {
        let reply = get_with(&berth, sneaky, &[]).await;
        assert_eq!(reply.status, 400, "{sneaky}: {}", reply.text());
        assert!(!guest_ran(&reply), "{sneaky}");
    }

    // A key, as a bearer token or in X-API-Key; a forged principal header
    // is replaced.
    for header in [("authorization", bearer(&ci)), ("x-api-key", ci.clone())] {
        let reply = get_with(
            &berth,
            "/api/orders",
            &[
                (header.0, &header.1),
                ("berth-principal", "root"),
                ("berth-claims", "{\"admin\":true}"),
            ],
        )
        .await;
        assert_eq!(reply.status, 200, "{}", reply.text());
        let text = reply.text();
        assert!(text.contains("header berth-principal: ci\n"), "{text}");
        assert!(
            text.contains("header berth-principal-kind: key\n"),
            "{text}"
        );
        assert_eq!(text.matches("berth-principal:").count(), 1, "{text}");
        assert!(!text.contains("berth-claims"), "{text}");
    }
    // A key for another service: 403; an unknown one: 401.
    let reply = get_with(
        &berth,
        "/api/orders",
        &[("authorization", &bearer(&elsewhere))],
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(!guest_ran(&reply));
    assert_eq!(
        get_with(
            &berth,
            "/other/x",
            &[("authorization", &bearer(&elsewhere))]
        )
        .await
        .status,
        200
    );
    assert_eq!(
        get_with(
            &berth,
            "/api/orders",
            &[("authorization", "Bearer berth_nope")]
        )
        .await
        .status,
        401
    );
    // An expired key, and a revoked one: 401.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        get_with(&berth, "/api/orders", &[("authorization", &bearer(&brief))])
            .await
            .status,
        401
    );
    keys(&berth, &["revoke", "ci"]);
    assert_eq!(
        get_with(&berth, "/api/orders", &[("authorization", &bearer(&ci))])
            .await
            .status,
        401
    );
    assert!(keys(&berth, &["ls"]).contains("revoked"));

    // JWTs: RS256 and ES256 from the JWKS.
    for (token, subject) in [("rs256", "ada"), ("es256", "grace")] {
        let reply = with_token("/api/orders", token).await;
        assert_eq!(reply.status, 200, "{token}: {}", reply.text());
        let text = reply.text();
        assert!(
            text.contains(&format!("header berth-principal: {subject}\n")),
            "{text}"
        );
        assert!(
            text.contains("header berth-principal-kind: jwt\n"),
            "{text}"
        );
        assert!(
            text.contains("header berth-claims: {\"email\":\"ada@example.com\"}\n"),
            "{text}"
        );
    }
    for bad in [
        "expired",
        "not_yet",
        "wrong_issuer",
        "wrong_audience",
        "alg_none",
        "hs256_with_public_key",
        "tampered",
    ] {
        let reply = with_token("/api/orders", bad).await;
        assert_eq!(reply.status, 401, "{bad}: {}", reply.text());
        assert!(
            reply
                .header("www-authenticate")
                .unwrap()
                .contains("invalid_token"),
            "{bad}"
        );
        assert!(!guest_ran(&reply), "{bad}");
    }
    let reply = with_token("/api/orders", "no_scope").await;
    assert_eq!(reply.status, 403);
    // HS256 with the secret from the secrets store.
    let ok = with_token("/billing/x", "hs256").await;
    assert_eq!(ok.status, 200, "{}", ok.text());
    let wrong = with_token("/billing/x", "hs256_wrong").await;
    assert_eq!(wrong.status, 401);
    // An RS256 token is no good where only HS256 is taken.
    let reply = with_token("/billing/x", "rs256").await;
    assert_eq!(reply.status, 401);

    // Refusals are counted and leave usage records.
    let metrics = berth.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("berth_edge_rejections_total{service=\"api\",reason=\"unauthenticated\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("berth_edge_rejections_total{service=\"api\",reason=\"forbidden\"}"),
        "{metrics}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let statuses = loop {
        let reply = berth
            .admin_get("/v1/usage/records?service=api&limit=1000")
            .await;
        let records: Vec<serde_json::Value> = serde_json::from_str(&reply.text()).unwrap();
        let statuses: Vec<(String, u64)> = records
            .iter()
            .map(|r| {
                (
                    r["outcome"].as_str().unwrap().to_owned(),
                    r["status"].as_u64().unwrap_or(0),
                )
            })
            .collect();
        if statuses.contains(&("rejected".into(), 403)) || Instant::now() > deadline {
            break statuses;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(statuses.contains(&("rejected".into(), 401)), "{statuses:?}");
    assert!(statuses.contains(&("rejected".into(), 403)), "{statuses:?}");
}

#[tokio::test]
async fn a_burst_over_the_rate_limit_from_one_key_leaves_another_key_alone() {
    let manifest = format!(
        "{}[service.api.auth]\napi_keys = true\n[service.api.rate_limit]\nrate = \"1/m\"\nburst = 3\nby = \"key\"\n",
        service("api", programs::REQUEST_INFO, "/api/...", "")
    );
    let berth = Berth::up_admin(&manifest, &[]);
    let a = keys(&berth, &["create", "a", "--service", "api"])
        .trim()
        .to_owned();
    let b = keys(&berth, &["create", "b", "--service", "api"])
        .trim()
        .to_owned();
    for left in ["2", "1", "0"] {
        let reply = get_with(&berth, "/api/x", &[("x-api-key", &a)]).await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("ratelimit-limit"), Some("3"));
        assert_eq!(reply.header("ratelimit-remaining"), Some(left));
        assert!(reply.header("ratelimit-reset").is_some());
    }
    let over = get_with(&berth, "/api/x", &[("x-api-key", &a)]).await;
    assert_eq!(over.status, 429);
    assert_eq!(over.header("ratelimit-remaining"), Some("0"));
    let wait: u64 = over.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    assert_eq!(
        over.header("ratelimit-reset"),
        Some(wait.to_string().as_str())
    );
    assert!(!over.text().contains("method: GET"));
    // The other key has its own bucket.
    let other = get_with(&berth, "/api/x", &[("x-api-key", &b)]).await;
    assert_eq!(
        (other.status, other.header("ratelimit-remaining")),
        (200, Some("2"))
    );
    let metrics = berth.admin_get("/metrics").await.text();
    assert!(
        metrics.contains("berth_edge_rejections_total{service=\"api\",reason=\"rate_limited\"} 1"),
        "{metrics}"
    );
    // Bad keys count against the client's address: a flood of them is
    // limited too.
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(
            get_with(&berth, "/api/x", &[("x-api-key", "berth_forged")])
                .await
                .status,
        );
    }
    assert_eq!(statuses, [401, 401, 401, 429]);
}

#[tokio::test]
async fn cors_preflights_are_answered_by_berth_and_headers_added() {
    let manifest = format!(
        "{}[service.api.auth]\napi_keys = true\n[service.api.cors]\norigins = [\"https://app.test\"]\nmethods = [\"GET\", \"POST\"]\nheaders = [\"authorization\"]\nmax_age = \"10m\"\n",
        service("api", programs::REQUEST_INFO, "/api/...", "")
    );
    let berth = Berth::up_admin(&manifest, &[]);
    let key = keys(&berth, &["create", "web", "--service", "api"])
        .trim()
        .to_owned();
    let req = http::Request::builder()
        .method("OPTIONS")
        .uri("/api/orders")
        .header("host", berth.addr.to_string())
        .header("origin", "https://app.test")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let preflight = send(berth.addr, req).await;
    assert_eq!(preflight.status, 200);
    assert_eq!(
        preflight.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    assert!(
        preflight
            .header("access-control-allow-methods")
            .unwrap()
            .contains("POST")
    );
    assert!(
        preflight
            .header("access-control-allow-headers")
            .unwrap()
            .contains("authorization")
    );
    assert_eq!(preflight.header("access-control-max-age"), Some("600"));
    assert!(
        !preflight.text().contains("method:"),
        "the guest ran for a preflight"
    );
    let auth = bearer(&key);
    let ok = get_with(
        &berth,
        "/api/orders",
        &[("origin", "https://app.test"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    // A refusal carries the header too, so the page can read it.
    let refused = get_with(&berth, "/api/orders", &[("origin", "https://app.test")]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("access-control-allow-origin"),
        Some("https://app.test")
    );
    let stranger = get_with(
        &berth,
        "/api/orders",
        &[("origin", "https://evil.test"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(stranger.status, 200);
    assert!(stranger.header("access-control-allow-origin").is_none());
}

#[test]
fn the_admin_api_over_tls_is_used_by_the_cli_with_its_ca() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pki = Pki::new(dir.path());
    let (cert, key, _) = pki.issue("localhost", "admin");
    let mut cmd = std::process::Command::new(berth_bin());
    cmd.args(["serve", "--state"])
        .arg(dir.path().join("state"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--admin-tls-cert", &cert, "--admin-tls-key", &key])
        .env("BERTH_TOKEN", TOKEN);
    let berth = Berth::start(cmd, Duration::from_secs(120), None, true);
    berth.wait_for_logs(&["admin API on https://"]);
    let url = format!("https://localhost:{}", berth.admin.unwrap().port());
    let cli = |args: &[&str], ca: Option<&str>| {
        let mut cmd = std::process::Command::new(berth_bin());
        cmd.args(args)
            .env("BERTH_HOST", &url)
            .env("BERTH_TOKEN", TOKEN);
        if let Some(ca) = ca {
            cmd.env("BERTH_CA", ca);
        }
        cmd.output().unwrap()
    };
    let ok = cli(&["nodes"], Some(&pki.ca));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // Without the CA, the host's certificate is not trusted.
    let refused = cli(&["nodes"], None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("cannot reach the admin API at https://")
    );
    let health = cli(&["health", &format!("{url}/readyz"), "--ca", &pki.ca], None);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
}
