//! The operator console: its sign-in, its refusals (no token, a wrong
//! one, a change from another site), and every page in a real browser
//! (Debian's Chromium driven by Playwright), replaying a dead letter.

use crate::events::{consumer, event};
use crate::host::{Host, TOKEN};
use crate::support::*;
use crate::tools::{CHROMIUM, python_browser};
use bytes::Bytes;
use http_body_util::Full;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// A host serving hello and a consumer whose `fail` events are dead
/// letters at once; one such event, `poison`, is dead already.
async fn host_with_a_dead_letter() -> Host {
    let host = Host::start(&[]);
    host.deploy_manifest(&format!(
        "{}\n{}",
        service("hello", programs::HELLO, "/hello/...", ""),
        consumer("jobs.*", "max_attempts = 1")
    ));
    let reply = host
        .publish_batch("jobs.run", &[event("poison", "fail", "x")])
        .await;
    assert_eq!(reply.status, 202);
    host.wait_for_events("dead-lettered", |e| {
        e["subscriptions"][0]["dead_letters"] == 1 && e["subscriptions"][0]["depth"] == 0
    });
    host
}

/// A console request with these headers (and a form body for a POST).
async fn console(
    host: &Host,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    form: &str,
) -> Reply {
    let admin = host.berth.admin.unwrap();
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin.to_string());
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    if method == "POST" {
        req = req.header("content-type", "application/x-www-form-urlencoded");
    }
    send(
        admin,
        req.body(Full::new(Bytes::from(form.to_owned()))).unwrap(),
    )
    .await
}

/// Signs in; the session cookie (`name=value`).
async fn sign_in(host: &Host) -> String {
    let origin = format!("http://{}", host.berth.admin.unwrap());
    let reply = console(
        host,
        "POST",
        "/console/login",
        &[("origin", &origin)],
        &format!("token={TOKEN}&next=%2Fconsole%2Fevents"),
    )
    .await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    assert_eq!(reply.header("location"), Some("/console/events"));
    let cookie = reply.header("set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    cookie.split(';').next().unwrap().to_owned()
}

/// The CSRF token in a page's forms.
fn csrf(page: &str) -> String {
    let (_, rest) = page
        .split_once("name=\"csrf\" value=\"")
        .unwrap_or_else(|| panic!("no CSRF token in:\n{page}"));
    rest.split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn the_console_refuses_without_the_token_and_changes_from_other_sites() {
    let host = host_with_a_dead_letter().await;
    let origin = format!("http://{}", host.berth.admin.unwrap());

    // No token, a wrong one: 401 with the sign-in form; the right one as
    // a bearer token: the page.
    let none = console(&host, "GET", "/console", &[], "").await;
    assert_eq!(none.status, 401);
    assert!(none.text().contains("name=\"token\""), "{}", none.text());
    assert!(
        none.header("content-security-policy")
            .is_some_and(|csp| csp.contains("default-src 'none'")),
        "{:?}",
        none.headers
    );
    let wrong = console(
        &host,
        "GET",
        "/console/events",
        &[("authorization", "Bearer wrong")],
        "",
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert!(!wrong.text().contains("poison"));
    let bearer = format!("Bearer {TOKEN}");
    let page = console(
        &host,
        "GET",
        "/console/events",
        &[("authorization", &bearer)],
        "",
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.text().contains("poison"), "{}", page.text());
    for path in [
        "/console",
        "/console/usage",
        "/console/nodes",
        "/console/services/hello",
    ] {
        let reply = console(&host, "GET", path, &[("authorization", &bearer)], "").await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
    }
    for path in [
        "/console/services/nope",
        "/console/invocations/not-an-id",
        "/console/invocations/01M8XE5CFK4E1J1TV3M22HS068",
        "/console/nothing",
    ] {
        let reply = console(&host, "GET", path, &[("authorization", &bearer)], "").await;
        assert_eq!(reply.status, 404, "{path}");
    }

    // Sign-in: a wrong token is 401 and no cookie; one sent from another
    // site is 403.
    let reply = console(&host, "POST", "/console/login", &[], "token=wrong").await;
    assert_eq!(reply.status, 401);
    assert!(reply.header("set-cookie").is_none());
    let reply = console(
        &host,
        "POST",
        "/console/login",
        &[("origin", "http://evil.example")],
        &format!("token={TOKEN}"),
    )
    .await;
    assert_eq!(reply.status, 403);
    assert!(reply.header("set-cookie").is_none());
    // Over HTTP/2 (no Host header: the authority is in the URI), a
    // browser's sign-in from the console itself is let in.
    let h2 = crate::tools::run(
        "curl",
        &[
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
            "--http2-prior-knowledge",
            "-H",
            &format!("Origin: {origin}"),
            "-d",
            &format!("token={TOKEN}"),
            &format!("{origin}/console/login"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&h2.stdout), "303 2");
    let cookie = sign_in(&host).await;
    let page = console(&host, "GET", "/console/events", &[("cookie", &cookie)], "").await;
    assert_eq!(page.status, 200);
    let token = csrf(&page.text());

    // Replays that must change nothing: no session; a wrong session; the
    // session from another site (Origin, Sec-Fetch-Site); the session
    // without its CSRF token or with another.
    let form = format!("all=1&csrf={token}");
    type Headers<'a> = &'a [(&'a str, &'a str)];
    let refused: [(Headers, &str, u16); 6] = [
        (&[], &form, 401),
        (&[("cookie", "berth_console=forged")], &form, 401),
        (
            &[("cookie", &cookie), ("origin", "http://evil.example")],
            &form,
            403,
        ),
        (
            &[("cookie", &cookie), ("sec-fetch-site", "cross-site")],
            &form,
            403,
        ),
        (&[("cookie", &cookie)], "all=1", 403),
        (&[("cookie", &cookie)], "all=1&csrf=guess", 403),
    ];
    for (headers, form, status) in refused {
        let reply = console(&host, "POST", "/console/events/replay", headers, form).await;
        assert_eq!(reply.status, status, "{headers:?} {form}: {}", reply.text());
        let purge = console(&host, "POST", "/console/events/purge", headers, form).await;
        assert_eq!(purge.status, status, "{headers:?} {form}");
    }
    assert_eq!(host.subscription("consumer:jobs.*")["dead_letters"], 1);
    assert_eq!(
        host.berth
            .logs()
            .matches("failing on purpose (attempt 1)")
            .count(),
        1
    );

    // From the console itself: replayed (and dead again, failing again).
    let reply = console(
        &host,
        "POST",
        "/console/events/replay",
        &[
            ("cookie", &cookie),
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
        ],
        "id=poison&csrf=",
    )
    .await;
    assert_eq!(reply.status, 403, "a form without the token");
    let reply = console(
        &host,
        "POST",
        "/console/events/replay",
        &[
            ("cookie", &cookie),
            ("origin", &origin),
            ("sec-fetch-site", "same-origin"),
        ],
        &format!("id=poison&csrf={token}"),
    )
    .await;
    assert_eq!(reply.status, 303, "{}", reply.text());
    assert_eq!(
        reply.header("location"),
        Some("/console/events?done=replayed+1")
    );
    host.berth
        .wait_for_count("failing on purpose (attempt 1)", 2);

    // Signed out, the session opens nothing.
    let reply = console(
        &host,
        "POST",
        "/console/logout",
        &[("cookie", &cookie)],
        &format!("csrf={token}"),
    )
    .await;
    assert_eq!(reply.status, 303);
    let reply = console(&host, "GET", "/console", &[("cookie", &cookie)], "").await;
    assert_eq!(reply.status, 401);
}

#[tokio::test]
async fn the_console_in_a_real_browser() {
    let python = python_browser();
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "Debian's chromium is not installed at {CHROMIUM}"
    );
    let host = host_with_a_dead_letter().await;
    let first = get(&host.berth, "/hello/first").await;
    assert_eq!(first.status, 200);
    let invocation = first.invocation();

    // Traffic through two of the history's samples (10 s apart), and on
    // while the browser looks.
    let stop = Arc::new(AtomicBool::new(false));
    let addr = host.berth.addr;
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(format!("/hello/load-{sent}"))
                    .header("host", addr.to_string())
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                assert_eq!(send(addr, req).await.status, 200);
                sent += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            sent
        })
    };
    let bearer = format!("Bearer {TOKEN}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page = console(
            &host,
            "GET",
            "/console/services/hello",
            &[("authorization", &bearer)],
            "",
        )
        .await;
        if page.text().contains("Req/s (1 min)") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no traffic figures: {}",
            page.text()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Screenshots for the README when asked for, else beside the test.
    let scratch = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = std::env::var("BERTH_CONSOLE_SHOTS")
        .unwrap_or_else(|_| scratch.path().to_str().unwrap().to_owned());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/e2e/console_browser.py"
    );
    let admin = host.admin_url();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .args(["--admin", &admin, "--token", TOKEN, "--service", "hello"])
            .args([
                "--invocation",
                &invocation,
                "--dead",
                "poison",
                "--out",
                &out,
            ])
            .env("BERTH_CHROMIUM", CHROMIUM)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    let sent = traffic.await.unwrap();
    assert!(
        run.status.success(),
        "the browser run failed:\n{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    let seen: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(seen["cross_site_status"], 403);
    assert_eq!(seen["replayed"], true);
    assert_eq!(seen["screenshots"].as_array().unwrap().len(), 7);
    for shot in seen["screenshots"].as_array().unwrap() {
        let png = std::fs::read(shot.as_str().unwrap()).unwrap();
        assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "{shot}");
    }
    // The browser's replay delivered the dead letter again.
    host.berth
        .wait_for_count("failing on purpose (attempt 1)", 2);
    assert!(sent > 100, "only {sent} requests");
}
