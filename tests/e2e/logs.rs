//! Logs on demand: `berth logs` and `GET /v1/logs`, the per-service
//! buffer, followers, and guests that flood their output.

use crate::host::{TOKEN, cli_with_token};
use crate::support::*;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn admin_url(berth: &Berth) -> String {
    format!("http://{}", berth.admin.unwrap())
}

/// `berth logs ARGS` against `berth`; its stdout (it must succeed).
fn logs(berth: &Berth, args: &[&str]) -> String {
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    let out = cli_with_token(&admin_url(berth), Some(TOKEN), &all);
    assert!(
        out.status.success(),
        "berth {all:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A sample of `/metrics` (name and labels as written).
async fn metric(berth: &Berth, sample: &str) -> f64 {
    let text = berth.admin_get("/metrics").await.text();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in:\n{text}"))
}

/// The resident memory of process `pid`, in bytes.
fn rss(pid: u32) -> u64 {
    proc_status_kib(pid, "VmRSS") * 1024
}

#[tokio::test]
async fn berth_logs_shows_a_services_lines_filters_them_and_follows_them() {
    let manifest = format!(
        "{}{}",
        service("hello", programs::HELLO, "/hello/...", ""),
        service("other", programs::HELLO, "/other/...", ""),
    );
    let berth = Berth::up_admin(&manifest, &["--service-log-size", "64KiB"]);
    let reply = get(&berth, "/hello/first").await;
    assert_eq!(reply.status, 200);
    let first = reply.invocation();
    assert_eq!(get(&berth, "/other/x").await.status, 200);

    // The guest's stdout and stderr, and the host's closing line with
    // what was metered, each tagged with its service and invocation.
    let text = logs(&berth, &["hello"]);
    let line = |needle: &str| {
        text.lines()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in:\n{text}"))
            .to_owned()
    };
    let out = line("hello handled /hello/first");
    assert!(
        out.contains(&format!(" hello {first} stdout INFO: ")),
        "{out}"
    );
    let err = line("hello says hi on stderr");
    assert!(err.contains(" stderr INFO: "), "{err}");
    let finished = line("finished");
    assert!(
        finished.contains(&format!(" hello {first} host INFO: finished")),
        "{finished}"
    );
    assert!(finished.contains("status=200"), "{finished}");
    assert!(finished.contains("outcome=ok"), "{finished}");
    assert!(
        !text.contains("/other/x"),
        "another service's line:\n{text}"
    );

    // JSON, one object per line, and the filters.
    let second = get(&berth, "/hello/second").await.invocation();
    let json = logs(&berth, &["hello", "--json", "--invocation", &second]);
    let lines: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{json}");
    for l in &lines {
        assert_eq!(l["service"], "hello");
        assert_eq!(l["invocation"], second.as_str());
        assert!(l["node"].as_str().is_some_and(|n| !n.is_empty()), "{l}");
        assert!(l["time_ms"].as_u64().is_some(), "{l}");
    }
    assert_eq!(logs(&berth, &["hello", "--tail", "1"]).lines().count(), 1);
    assert_eq!(logs(&berth, &["hello", "--level", "warn"]), "");
    let since = logs(&berth, &["hello", "--since", "10m"]);
    assert!(since.contains("/hello/first"), "{since}");
    let future = cli_with_token(
        &admin_url(&berth),
        Some(TOKEN),
        &["logs", "hello", "--level", "loud"],
    );
    assert!(!future.status.success());
    assert!(
        String::from_utf8_lossy(&future.stderr).contains("`level`"),
        "{}",
        String::from_utf8_lossy(&future.stderr)
    );
    let none = cli_with_token(&admin_url(&berth), Some(TOKEN), &["logs", "nosuch"]);
    assert!(!none.status.success());
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("there is no service `nosuch`"),
        "{}",
        String::from_utf8_lossy(&none.stderr)
    );
    // Every service's lines without a name.
    let all = logs(&berth, &[]);
    assert!(
        all.contains("/other/x") && all.contains("/hello/first"),
        "{all}"
    );

    // Following: the lines kept, then each new one as it comes.
    let mut follower = Command::new(berth_bin())
        .args(["logs", "hello", "-f"])
        .env("BERTH_HOST", admin_url(&berth))
        .env("BERTH_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut follower);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = String::new();
    let mut asked = false;
    while !seen.contains("hello handled /hello/live") {
        if !asked && seen.contains("/hello/second") {
            // The kept lines came first; now a new one.
            assert_eq!(get(&berth, "/hello/live").await.status, 200);
            asked = true;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "the follower never showed the new line:\n{seen}"
        );
        if let Ok(line) = rx.recv_timeout(left.min(Duration::from_millis(200))) {
            seen.push_str(&line);
            seen.push('\n');
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();

    // The buffer is bounded: older lines go first, and are counted.
    for i in 0..300 {
        assert_eq!(get(&berth, &format!("/hello/more{i}")).await.status, 200);
    }
    let kept = logs(&berth, &["hello"]);
    assert!(kept.contains("/hello/more299"), "the newest line is kept");
    assert!(!kept.contains("/hello/first"), "the oldest line went first");
    assert!(kept.len() < 80 * 1024, "{} bytes kept", kept.len());
    assert!(metric(&berth, "berth_log_lines_dropped_total{service=\"hello\"}").await > 0.0);
}

#[tokio::test]
async fn a_guest_flooding_its_output_is_cut_and_other_services_lines_keep_flowing() {
    let manifest = format!(
        "{}{}",
        service("flood", programs::HELLO, "/flood/...", ""),
        service("calm", programs::HELLO, "/calm/...", ""),
    );
    let berth = Berth::up_admin(&manifest, &[]);
    assert_eq!(get(&berth, "/calm/warm").await.status, 200);
    let rss_before = rss(berth.pid());
    let log_before = berth.logs().len();

    // 50 MiB in one invocation: cut at 1 MiB, with a line that says so.
    let reply = get(&berth, "/flood/one?flood=50").await;
    assert_eq!(reply.status, 200);
    let id = reply.invocation();
    let truncated = berth.wait_for_logs(&["output truncated"]);
    assert!(
        truncated.contains(&id),
        "the truncation line names the invocation"
    );
    let kept = logs(&berth, &["flood", "--invocation", &id, "--level", "warn"]);
    assert!(
        kept.contains("output truncated: the invocation wrote more than 1MiB"),
        "{kept}"
    );
    let grown = berth.logs().len() - log_before;
    assert!(grown < 3 << 20, "the host's log grew by {grown} bytes");
    assert!(
        metric(
            &berth,
            "berth_guest_output_dropped_bytes_total{service=\"flood\",reason=\"invocation_limit\"}"
        )
        .await
            > 40.0 * 1048576.0
    );

    // 64 at once, 20 MiB each: each cut at its limit, and the service's
    // rate (1 MiB/s, all its instances together) caps them all.
    let started = Instant::now();
    let log_before = berth.logs().len();
    let floods: Vec<_> = (0..64)
        .map(|i| spawn_get(&berth, &format!("/flood/many{i}?flood=20")))
        .collect();
    // Meanwhile another service is served and its lines come through.
    let mut calm = Vec::new();
    for i in 0..10 {
        let reply = get(&berth, &format!("/calm/during{i}")).await;
        assert_eq!(reply.status, 200);
        calm.push(reply.invocation());
    }
    for flood in floods {
        assert_eq!(flood.await.unwrap().status, 200);
    }
    let seconds = started.elapsed().as_secs_f64();
    let grown = (berth.logs().len() - log_before) as f64;
    // The rate's bucket lets 1 MiB through at once and 1 MiB a second
    // (and each kept line of 1 KiB is logged with its tags); each
    // invocation adds its truncation and closing lines.
    let allowed = (64.0 * 1048576.0f64).min((1.0 + seconds) * 1048576.0 * 1.5) + 64.0 * 4096.0;
    assert!(
        grown < allowed,
        "the host's log grew by {grown} bytes in {seconds:.1} s (allowed {allowed})"
    );
    assert!(
        metric(
            &berth,
            "berth_guest_output_dropped_bytes_total{service=\"flood\",reason=\"rate\"}"
        )
        .await
            > 0.0
    );
    assert!(berth.logs().contains("output dropped: "), "the rate's line");
    let calm_lines = logs(&berth, &["calm"]);
    for id in &calm {
        assert!(
            calm_lines.contains(id.as_str()),
            "calm's {id} missing:\n{calm_lines}"
        );
    }
    let rss_after = rss(berth.pid());
    assert!(
        rss_after < rss_before + (300 << 20),
        "RSS went from {rss_before} to {rss_after}"
    );
}

/// Opens a follower of `/v1/logs?service=SERVICE&follow=1` on a raw
/// socket and reads its answer's head.
fn raw_follower(berth: &Berth, service: &str) -> std::net::TcpStream {
    let mut socket = std::net::TcpStream::connect(berth.admin.unwrap()).unwrap();
    write!(
        socket,
        "GET /v1/logs?service={service}&follow=1 HTTP/1.1\r\nhost: berth\r\nauthorization: Bearer {TOKEN}\r\n\r\n"
    )
    .unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut head = [0u8; 12];
    socket.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "{}", String::from_utf8_lossy(&head));
    socket
}

#[tokio::test]
async fn a_hundred_followers_come_and_go_and_leave_nothing_behind() {
    let berth = Berth::up_admin(&service("hello", programs::HELLO, "/hello/...", ""), &[]);
    let followers: Vec<_> = (0..100).map(|_| raw_follower(&berth, "hello")).collect();
    assert_eq!(metric(&berth, "berth_log_followers").await, 100.0);
    for i in 0..50 {
        assert_eq!(get(&berth, &format!("/hello/{i}")).await.status, 200);
    }
    // Every follower got the lines.
    let mut first = followers.into_iter();
    let mut one = first.next().unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains("hello handled /hello/49") {
        assert!(
            Instant::now() < deadline,
            "{}",
            String::from_utf8_lossy(&seen)
        );
        let mut buf = [0u8; 4096];
        match one.read(&mut buf) {
            Ok(0) => panic!(
                "the follow stream ended: {}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) => panic!("reading the follow stream: {e}"),
        }
    }
    // They leave (one of them mid-stream, unread): the host notices at its
    // next write and lets go of each.
    drop(one);
    drop(first);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(get(&berth, "/hello/after").await.status, 200);
        if metric(&berth, "berth_log_followers").await == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "followers were never let go");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Without a token, or with a wrong one: refused.
    for token in [None, Some("wrong")] {
        let out = cli_with_token(&admin_url(&berth), token, &["logs", "hello"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("401") || err.contains("unauthorized"), "{err}");
    }
}
