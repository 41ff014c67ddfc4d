//! The control plane: `berth serve` with durable state, the admin API and
//! the CLI — deploy, upgrade under load, roll back, remove, restart, crash.

use crate::host::*;
use crate::support::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

const V1: &str = "hello from berth: /svc/x\n";
const V2: &str = "hello from wstd: /svc/x\n";

/// Sends requests from `n` loops until stopped; returns each loop's
/// replies in order (status, body).
fn load(
    berth: &Berth,
    n: usize,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<(u16, String)>>> {
    (0..n)
        .map(|_| {
            let addr = berth.addr;
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let req = http::Request::get("/svc/x")
                        .header("host", "berth")
                        .body(http_body_util::Full::new(bytes::Bytes::new()))
                        .unwrap();
                    let reply = send(addr, req).await;
                    let body = reply.body.map(|b| String::from_utf8_lossy(&b).into_owned());
                    seen.push((
                        reply.status,
                        body.unwrap_or_else(|e| format!("cut off: {e}")),
                    ));
                }
                seen
            })
        })
        .collect()
}

async fn wait_for_body(berth: &Berth, path: &str, body: &str) {
    for _ in 0..500 {
        if get(berth, path).await.body.as_deref().ok() == Some(body.as_bytes()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{path} never answered {body:?}");
}

#[tokio::test]
async fn deploy_upgrade_and_rollback_under_load_lose_no_request_then_remove() {
    let host = Host::start(&[]);
    let out = host.deploy("svc", programs::HELLO, "/svc/...");
    assert!(out.contains("deployed svc revision 1"), "{out}");
    assert_eq!(get(&host.berth, "/svc/x").await.text(), V1);

    let stop = Arc::new(AtomicBool::new(false));
    let loops = load(&host.berth, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Upgrade: same routes and limits, new component.
    let out = host.cli_ok(&["deploy", "svc", "--component", programs::HELLO_WSTD]);
    assert!(out.contains("deployed svc revision 2"), "{out}");
    wait_for_body(&host.berth, "/svc/x", V2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Roll back to revision 1: no recompile, the same switch.
    let out = host.cli_ok(&["rollback", "svc"]);
    assert!(out.contains("svc now serves revision 1"), "{out}");
    wait_for_body(&host.berth, "/svc/x", V1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for handle in loops {
        let seen = handle.await.unwrap();
        total += seen.len();
        for (status, body) in &seen {
            assert_eq!(*status, 200, "a request failed during the switch: {body}");
            assert!(body == V1 || body == V2, "unexpected body {body:?}");
        }
        // Each loop saw v1, then v2, then v1 again, never interleaved.
        let mut phases: Vec<&str> = seen.iter().map(|(_, b)| b.as_str()).collect();
        phases.dedup();
        assert!(phases.len() <= 3, "flapping between revisions: {phases:?}");
    }
    assert!(total > 20, "the load loop sent only {total} requests");
    eprintln!("{total} requests across deploy and rollback, none failed");

    let revisions: Vec<serde_json::Value> =
        serde_json::from_str(&host.cli_ok(&["revisions", "svc", "--json"])).unwrap();
    assert_eq!(revisions.len(), 2);
    assert_eq!(revisions[0]["revision"], 2);
    assert_eq!(revisions[0]["active"], false);
    assert_eq!(revisions[1]["active"], true);
    // Two uploads compiled; the deploys and the rollback loaded from the
    // code cache.
    let logs = host.berth.wait_for_logs(&["rolled back"]);
    assert_eq!(logs.matches("code=compiled").count(), 2, "{logs}");
    assert_eq!(logs.matches("code=cache hit").count(), 3, "{logs}");

    host.cli_ok(&["rm", "svc"]);
    assert_eq!(get(&host.berth, "/svc/x").await.status, 404);
    assert!(host.services().is_empty());
}

#[tokio::test]
async fn a_restart_restores_every_service_and_its_active_revision() {
    let mut host = Host::start(&[]);
    host.deploy("svc", programs::HELLO, "/svc/...");
    host.cli_ok(&["deploy", "svc", "--component", programs::HELLO_WSTD]);
    host.cli_ok(&["rollback", "svc", "--to", "1"]);
    host.cli_ok(&[
        "deploy",
        "echo",
        "--component",
        programs::ECHO,
        "--route",
        "/echo",
        "--memory",
        "32MiB",
        "--timeout",
        "5s",
    ]);
    let before = host.services();

    host.restart();
    // Restored unloaded: the first request loads from the code cache.
    assert!(host.services().iter().all(|s| s["loaded"] == false));
    assert_eq!(get(&host.berth, "/svc/x").await.text(), V1);
    host.berth.wait_for_logs(&["cold start", "code=cache hit"]);
    assert_eq!(
        post(&host.berth, "/echo", "round trip").await.text(),
        "round trip"
    );
    let after = host.services();
    assert_eq!(after.len(), 2);
    for (a, b) in before.iter().zip(&after) {
        for field in [
            "name",
            "revision",
            "latest_revision",
            "artifact",
            "routes",
            "limits",
            "created_at",
        ] {
            assert_eq!(a[field], b[field], "{field} changed across the restart");
        }
    }
    assert_eq!(after[0]["name"], "echo");
    assert_eq!(after[0]["limits"]["memory"], "32MiB");
    assert_eq!(after[1]["revision"], 1);
    assert_eq!(after[1]["latest_revision"], 2);

    // A damaged artifact (and no compiled code to fall back on): loading
    // that service fails, its requests get 503 and it is reported failed;
    // the others serve. Uploading the component again repairs it.
    let status = host.berth.terminate();
    assert!(status.success());
    let digest = after[0]["artifact"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_owned();
    host.damage_artifact(&digest);
    host.start_again();
    let reply = post(&host.berth, "/echo", "x").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.header("retry-after"), Some("1"));
    let services = host.services();
    assert_eq!(services[0]["status"], "failed");
    assert!(
        services[0]["error"].as_str().unwrap().contains("damaged"),
        "{}",
        services[0]
    );
    assert_eq!(services[1]["status"], "serving");
    assert_eq!(get(&host.berth, "/svc/x").await.text(), V1);
    host.cli_ok(&["deploy", "echo", "--component", programs::ECHO]);
    assert_eq!(host.services()[0]["status"], "serving");
    assert_eq!(
        post(&host.berth, "/echo", "repaired").await.text(),
        "repaired"
    );
}

#[tokio::test]
async fn missing_or_wrong_tokens_get_401_and_change_nothing() {
    let host = Host::start(&[]);
    let hello = std::fs::read(programs::HELLO).unwrap();
    for token in [None, Some("wrong"), Some("")] {
        for (method, path) in [
            ("GET", "/v1/services"),
            ("POST", "/v1/artifacts"),
            ("PUT", "/v1/services/svc"),
            ("DELETE", "/v1/services/svc"),
            ("POST", "/v1/services/svc/rollback"),
        ] {
            let reply = host.api(method, path, hello.clone(), token).await;
            assert_eq!(reply.status, 401, "{method} {path} with {token:?}");
            assert_eq!(Host::json(&reply)["error"]["code"], "unauthorized");
            assert_eq!(reply.header("www-authenticate"), Some("Bearer"));
        }
        let out = cli_with_token(
            &host.admin_url(),
            token,
            &[
                "deploy",
                "svc",
                "--component",
                programs::HELLO,
                "--route",
                "/svc",
            ],
        );
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("unauthorized"));
    }
    // Health needs no token.
    assert_eq!(host.api("GET", "/healthz", "", None).await.status, 200);
    // Nothing was stored.
    let artifacts = host.api("GET", "/v1/artifacts", "", Some(TOKEN)).await;
    assert_eq!(Host::json(&artifacts), serde_json::json!([]));
    assert!(host.services().is_empty());
}

#[tokio::test]
async fn bad_uploads_are_refused_with_a_reason_and_nothing_is_stored() {
    let host = Host::start(&["--max-upload", "200KiB"]);
    let hello = std::fs::read(programs::HELLO).unwrap();
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "garbage",
            b"not wasm".to_vec(),
            422,
            "not_a_component",
            "not a WebAssembly file",
        ),
        (
            "core module",
            b"\0asm\x01\0\0\0".to_vec(),
            422,
            "not_a_component",
            "core WebAssembly module",
        ),
        (
            "truncated",
            hello[..hello.len() / 2].to_vec(),
            422,
            "invalid_component",
            "invalid component",
        ),
        ("empty", Vec::new(), 422, "not_a_component", "truncated"),
        (
            "too large",
            std::fs::read(programs::HELLO_WSTD).unwrap(),
            413,
            "payload_too_large",
            "200KiB",
        ),
        (
            "no http export",
            std::fs::read(programs::CLI_APP).unwrap(),
            422,
            "missing_export",
            "wasi:http/incoming-handler",
        ),
        (
            "unknown import",
            std::fs::read(programs::BAD_IMPORT).unwrap(),
            422,
            "unknown_import",
            "acme:inventory/stock@1.0.0",
        ),
    ];
    for (what, bytes, status, code, reason) in cases {
        let reply = host.api("POST", "/v1/artifacts", bytes, Some(TOKEN)).await;
        assert_eq!(reply.status, status, "{what}: {}", reply.text());
        let body = Host::json(&reply);
        assert_eq!(body["error"]["code"], code, "{what}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(reason), "{what}: {message}");
    }
    let artifacts = host.api("GET", "/v1/artifacts", "", Some(TOKEN)).await;
    assert_eq!(Host::json(&artifacts), serde_json::json!([]));
    let stored: Vec<_> = std::fs::read_dir(host.state.join("artifacts"))
        .unwrap()
        .collect();
    assert!(
        stored.is_empty(),
        "files were left in the artifact store: {stored:?}"
    );

    // A good one is stored once.
    let first = host
        .api("POST", "/v1/artifacts", hello.clone(), Some(TOKEN))
        .await;
    assert_eq!(first.status, 201);
    let again = host.api("POST", "/v1/artifacts", hello, Some(TOKEN)).await;
    assert_eq!(again.status, 200);
    assert_eq!(Host::json(&first)["digest"], Host::json(&again)["digest"]);
}

#[tokio::test]
async fn conflicts_unknown_revisions_and_bad_requests_are_refused() {
    let host = Host::start(&[]);
    host.deploy("a", programs::HELLO, "/shared/...");

    // A route another service owns: 409 naming the owner; b is not created.
    let out = host.cli(&[
        "deploy",
        "b",
        "--component",
        programs::HELLO_WSTD,
        "--route",
        "/shared/...",
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("already claimed by service `a`") && stderr.contains("route_conflict"),
        "{stderr}"
    );
    let artifact = Host::json(
        &host
            .api(
                "POST",
                "/v1/artifacts",
                std::fs::read(programs::HELLO).unwrap(),
                Some(TOKEN),
            )
            .await,
    )["digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = serde_json::json!({"artifact": artifact, "routes": ["/shared/..."]}).to_string();
    let reply = host.api("PUT", "/v1/services/b", body, Some(TOKEN)).await;
    assert_eq!(reply.status, 409);
    assert_eq!(Host::json(&reply)["error"]["code"], "route_conflict");
    assert_eq!(host.services().len(), 1);

    // Rollback to a revision that does not exist: 404.
    let reply = host
        .api(
            "POST",
            "/v1/services/a/rollback",
            r#"{"to": 7}"#,
            Some(TOKEN),
        )
        .await;
    assert_eq!(reply.status, 404);
    assert!(
        Host::json(&reply)["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no revision 7")
    );
    let out = host.cli(&["rollback", "a"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no revision before 1"));
    let out = host.cli(&["rollback", "nope"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("not_found"));

    // Malformed requests name the field.
    for (body, needle) in [
        (r#"{"artifact": "sha256:00", "routes": ["/x"]}"#, "artifact"),
        (r#"{"artifact": "ARTIFACT", "routes": ["x"]}"#, "routes[0]"),
        (
            r#"{"artifact": "ARTIFACT", "routes": ["/x"], "limits": {"memroy": 1}}"#,
            "limits.memroy",
        ),
        (
            r#"{"artifact": "ARTIFACT", "routes": ["/x"], "color": "red"}"#,
            "color",
        ),
        (
            r#"{"artifact": "ARTIFACT", "routes": []}"#,
            "at least one trigger",
        ),
    ] {
        let body = body.replace("ARTIFACT", &artifact);
        let reply = host.api("PUT", "/v1/services/c", body, Some(TOKEN)).await;
        assert_eq!(reply.status, 400, "{}", reply.text());
        let message = Host::json(&reply)["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains(needle), "{message}");
    }
    // An artifact that was never uploaded: 404.
    let missing = format!("sha256:{}", "ab".repeat(32));
    let body = serde_json::json!({"artifact": missing, "routes": ["/x"]}).to_string();
    assert_eq!(
        host.api("PUT", "/v1/services/c", body, Some(TOKEN))
            .await
            .status,
        404
    );
    assert_eq!(
        host.api("GET", "/v1/nothing", "", Some(TOKEN)).await.status,
        404
    );
    assert_eq!(
        host.api("PATCH", "/v1/services", "", Some(TOKEN))
            .await
            .status,
        405
    );
    assert_eq!(host.services().len(), 1);
}

#[tokio::test]
async fn health_on_both_listeners_and_one_host_per_state_directory() {
    let host = Host::start(&[]);
    for addr in [host.berth.addr, host.berth.admin.unwrap()] {
        for (path, body) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
            let req = http::Request::get(path)
                .header("host", "berth")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let reply = send(addr, req).await;
            assert_eq!((reply.status, reply.text().as_str()), (200, body));
        }
    }
    let second = std::process::Command::new(berth_bin())
        .args(["serve", "--state"])
        .arg(&host.state)
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!second.status.success());
    assert!(
        String::from_utf8_lossy(&second.stderr)
            .contains("another berth is using the state directory")
    );
}

#[test]
fn an_exposed_admin_api_needs_a_token() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = std::process::Command::new(berth_bin())
        .args(["serve", "--state"])
        .arg(dir.path())
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"])
        .env_remove("BERTH_TOKEN")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("not loopback") && stderr.contains("--admin-token"),
        "{stderr}"
    );
    assert!(!stderr.contains("http://"), "it must not listen: {stderr}");
}

/// The active revision and artifact of `svc`.
fn active(host: &Host) -> (u64, String) {
    let services = host.services();
    let svc = services
        .iter()
        .find(|s| s["name"] == "svc")
        .expect("svc survives");
    (
        svc["revision"].as_u64().unwrap(),
        svc["artifact"].as_str().unwrap().to_owned(),
    )
}

/// `kill -9` at many points during deploys (upload, compile, commit,
/// switch): after each restart the old or the new revision is active, an
/// acknowledged deploy is never lost, and the state is consistent.
#[tokio::test]
async fn kill_9_during_deploys_leaves_the_old_or_the_new_revision() {
    let mut host = Host::start(&[]);
    host.deploy("svc", programs::HELLO, "/svc/...");
    let components = [
        programs::HELLO_WSTD,
        programs::SLEEP,
        programs::ECHO,
        programs::ISOLATION,
        programs::SPIN,
        programs::ALLOC,
        programs::PANIC,
        programs::NO_RESPONSE,
    ];
    let (mut old_kept, mut new_kept) = (0, 0);
    for (i, component) in components.iter().enumerate() {
        let delay = Duration::from_millis([0, 10, 30, 60, 100, 150, 250, 400][i]);
        let (before_rev, before) = active(&host);
        let new = format!(
            "sha256:{}",
            berth::values::digest::Digest::of(&std::fs::read(component).unwrap()).hex()
        );
        let mut deploy = host.spawn_cli(&["deploy", "svc", "--component", component]);
        tokio::time::sleep(delay).await;
        host.berth.kill9();
        let acknowledged = deploy.wait().unwrap().success();
        host.start_again();

        let (after_rev, after) = active(&host);
        if after == new {
            new_kept += 1;
            assert_eq!(after_rev, before_rev + 1);
        } else {
            assert_eq!(
                after, before,
                "neither the old nor the new revision is active"
            );
            assert!(!acknowledged, "an acknowledged deploy was lost");
            assert_eq!(after_rev, before_rev);
            old_kept += 1;
        }
        assert_ne!(
            get(&host.berth, "/svc/x").await.status,
            404,
            "svc is not routed"
        );
        assert_state_consistent(&host);
    }
    eprintln!(
        "kill -9 during {} deploys: old revision kept {old_kept} times, new one {new_kept} times",
        components.len()
    );
}

#[tokio::test]
async fn a_full_or_unwritable_state_dir_fails_changes_clearly_and_keeps_serving() {
    let (berth, state, _dir) = host_on_tmpfs("16m");
    let admin = format!("http://{}", berth.admin.unwrap());
    let cli = |args: &[&str]| cli_with_token(&admin, Some(TOKEN), args);
    let ok = cli(&[
        "deploy",
        "svc",
        "--component",
        programs::HELLO,
        "--route",
        "/svc/...",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(get(&berth, "/svc/x").await.text(), V1);

    // The state directory as berth sees it, inside its mount namespace.
    let inside = inside(&berth, &state);
    let filler = fill(&inside);

    let full = cli(&["deploy", "svc", "--component", programs::HELLO_WSTD]);
    assert!(!full.status.success());
    let stderr = String::from_utf8_lossy(&full.stderr);
    assert!(
        stderr.contains("storage_error") && stderr.contains("No space left"),
        "{stderr}"
    );
    for _ in 0..20 {
        assert_eq!(
            get(&berth, "/svc/x").await.text(),
            V1,
            "the running service stopped serving"
        );
    }
    let services: Vec<serde_json::Value> =
        serde_json::from_slice(&cli(&["ls", "--json"]).stdout).unwrap();
    assert_eq!(services[0]["revision"], 1);

    // Room again: the same deploy goes through.
    std::fs::remove_file(&filler).unwrap();
    let ok = cli(&["deploy", "svc", "--component", programs::HELLO_WSTD]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(get(&berth, "/svc/x").await.text(), V2);

    // Unwritable: no file can be created in the artifact and code
    // directories (immutable, so that even root cannot). A deploy of a new
    // component fails; serving goes on.
    let dirs = ["artifacts", "code"].map(|f| inside.join(f));
    let chattr = |flag: &str| {
        let status = std::process::Command::new("chattr")
            .arg(flag)
            .args(&dirs)
            .status()
            .unwrap();
        assert!(status.success(), "chattr {flag} failed");
    };
    chattr("+i");
    let ro = cli(&[
        "deploy",
        "other",
        "--component",
        programs::ECHO,
        "--route",
        "/other",
    ]);
    let stderr = String::from_utf8_lossy(&ro.stderr);
    assert!(
        !ro.status.success() && stderr.contains("storage_error"),
        "{stderr}"
    );
    assert!(stderr.contains("Operation not permitted"), "{stderr}");
    assert_eq!(get(&berth, "/other").await.status, 404);
    assert_eq!(get(&berth, "/svc/x").await.text(), V2);
    chattr("-i");
    assert!(
        cli(&[
            "deploy",
            "other",
            "--component",
            programs::ECHO,
            "--route",
            "/other"
        ])
        .status
        .success()
    );
    assert!(cli(&["rollback", "svc"]).status.success());
    assert_eq!(get(&berth, "/svc/x").await.text(), V1);
}

#[tokio::test]
async fn deploy_a_manifest_then_inspect_its_services() {
    let host = Host::start(&[]);
    let dir = manifest_dir(
        &[
            service("hello", programs::HELLO, "/hello/...", ""),
            service(
                "echo",
                programs::ECHO,
                "/echo",
                "memory = \"32MiB\"\nconcurrency = 3",
            ),
        ]
        .concat(),
    );
    let manifest = dir.path().join("berth.toml");
    let out = host.cli_ok(&["deploy", manifest.to_str().unwrap()]);
    assert!(
        out.contains("deployed hello revision 1") && out.contains("deployed echo revision 1"),
        "{out}"
    );
    assert_eq!(
        get(&host.berth, "/hello/m").await.text(),
        "hello from berth: /hello/m\n"
    );
    assert_eq!(
        post(&host.berth, "/echo", "manifest").await.text(),
        "manifest"
    );

    let text = host.cli_ok(&["inspect", "echo"]);
    for line in [
        "name:         echo",
        "revision:     1 (latest 1)",
        "routes:       /echo",
        "memory:       32MiB",
        "concurrency:  3",
        "status:       serving",
    ] {
        assert!(text.contains(line), "{line:?} missing from:\n{text}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&host.cli_ok(&["inspect", "echo", "--json"])).unwrap();
    assert_eq!(json["limits"]["concurrency"], 3);
    let table = host.cli_ok(&["ls"]);
    assert!(table.starts_with("NAME"), "{table}");
    assert_eq!(table.lines().count(), 3, "{table}");

    // Deploying the same manifest again makes new revisions of the same code.
    let out = host.cli_ok(&["deploy", manifest.to_str().unwrap(), "--json"]);
    let revisions: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(
        revisions
            .iter()
            .map(|r| r["revision"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 2]
    );
}

#[tokio::test]
async fn every_admin_api_error_is_a_json_error_with_a_code() {
    let host = Host::start(&[]);
    for (method, path, status, code) in [
        ("GET", "/v1/services/%FF", 400, "bad_request"),
        ("GET", "/v1/services/Not_A_Name", 400, "bad_request"),
        ("GET", "/v1/nothing", 404, "not_found"),
        ("PATCH", "/v1/services/x", 405, "method_not_allowed"),
        ("HEAD", "/v1/services", 405, "method_not_allowed"),
        ("GET", "/v1/usage?since=yesterday", 400, "bad_request"),
    ] {
        let reply = host.api(method, path, "", Some(TOKEN)).await;
        assert_eq!(reply.status, status, "{method} {path}: {}", reply.text());
        if method != "HEAD" {
            assert_eq!(Host::json(&reply)["error"]["code"], code, "{method} {path}");
        }
    }
    // A trailing slash is the same endpoint.
    let reply = host.api("GET", "/v1/services/", "", Some(TOKEN)).await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(Host::json(&reply), serde_json::json!([]));
}
