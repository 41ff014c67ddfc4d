//! Components in OCI registries: `berth push`, `berth pull` and
//! `oci://` components, against a real registry on loopback (Debian's
//! `docker-registry`, distribution 2.8), with and without auth, and
//! cross-checked with another client (ORAS's Python client, `oras`).

use crate::host::Host;
use crate::support::*;
use crate::tools::{python_oras, registry_tools};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A `docker-registry` on a free loopback port, stopped when dropped.
struct Registry {
    child: Child,
    addr: String,
    dir: tempfile::TempDir,
}

/// How a test registry authenticates.
enum Auth<'a> {
    None,
    /// HTTP basic, this user and password (an htpasswd file).
    Basic(&'a str, &'a str),
    /// Bearer tokens from a token service at `realm`, signed by the key
    /// of `cert`.
    Token {
        realm: String,
        cert: &'a Path,
    },
}

impl Registry {
    fn start(auth: Auth) -> Registry {
        registry_tools();
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let mut auth_config = String::new();
        if let Auth::Token { realm, cert } = &auth {
            auth_config = format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
                cert.display()
            );
        }
        if let Auth::Basic(user, password) = auth {
            let htpasswd = dir.path().join("htpasswd");
            let out = Command::new("htpasswd")
                .args(["-Bbc", htpasswd.to_str().unwrap(), user, password])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            auth_config = format!(
                "auth:\n  htpasswd:\n    realm: berth-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        let log_path = dir.path().join("registry.log");
        let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
        // A free port is only free until someone takes it: a registry that
        // cannot listen exits, and another port is tried.
        for _ in 0..10 {
            let port = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap().port()
            };
            let addr = format!("127.0.0.1:{port}");
            let config = format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth_config}",
                dir.path().join("data").display()
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, config).unwrap();
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config_path)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log_path).unwrap())
                .spawn()
                .expect("docker-registry");
            let deadline = Instant::now() + Duration::from_secs(20);
            while child.try_wait().unwrap().is_none() {
                // Up when the distribution API answers (200, or 401 with
                // auth), not when anything at all takes the port.
                let url = format!("http://{addr}/v2/");
                let answer = Command::new("curl")
                    .args(["-s", "-o", "/dev/null", "-D", "-", &url])
                    .output()
                    .unwrap();
                let headers = String::from_utf8_lossy(&answer.stdout).to_ascii_lowercase();
                if headers.contains("docker-distribution-api-version") {
                    return Registry { child, addr, dir };
                }
                assert!(
                    Instant::now() < deadline,
                    "the registry never answered: {}",
                    log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("the registry could not listen: {}", log());
    }

    /// The layer blob files the registry stores.
    fn blob(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("data/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const SERVICE: &str = "berth-test-registry";
const ISSUER: &str = "berth-test-issuer";

/// The test token service (`registry_token.py`), stopped when dropped.
struct TokenService {
    child: Child,
    port: u16,
}

impl TokenService {
    /// Serves tokens to `user` with `password`, signed with `key`.
    fn start(cert: &Path, key: &Path, user: &str, password: &str) -> TokenService {
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/e2e/registry_token.py"
        );
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        let child = Command::new(crate::tools::python_jwt())
            .arg(script)
            .args([
                "--cert",
                cert,
                "--key",
                key,
                "--user",
                user,
                "--password",
                password,
            ])
            .args(["--service", SERVICE, "--issuer", ISSUER])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        // Stopped on drop even if what follows fails.
        let mut service = TokenService { child, port: 0 };
        let mut first = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(service.child.stdout.take().unwrap()),
            &mut first,
        )
        .unwrap();
        service.port = first
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("the token service said {first:?}"));
        service
    }
}

impl Drop for TokenService {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `berth ARGS` with `env`.
fn berth(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(berth_bin())
        .args(args)
        .env_remove("BERTH_REGISTRY_USERNAME")
        .env_remove("BERTH_REGISTRY_PASSWORD")
        .env_remove("BERTH_REGISTRY_TOKEN")
        .env_remove("BERTH_REGISTRY_HOST")
        .env_remove("BERTH_INSECURE_REGISTRIES")
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "succeeded:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&ok(out)).unwrap()
}

fn file(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_owned()
}

#[tokio::test]
async fn push_pull_and_serve_components_from_a_registry() {
    let registry = Registry::start(Auth::None);
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let reference = format!("{}/team/hello:v1", registry.addr);
    let original = std::fs::read(programs::HELLO).unwrap();

    // Push: the manifest's digest, and the component's.
    let pushed = json(&berth(
        &[
            "push",
            programs::HELLO,
            &format!("oci://{reference}"),
            "--json",
        ],
        &[],
    ));
    let manifest = pushed["manifest"].as_str().unwrap().to_owned();
    assert!(manifest.starts_with("sha256:"), "{pushed}");
    // The layout the ecosystem reads: one application/wasm layer, the
    // Wasm config.
    let raw = crate::tools::run_ok(
        "curl",
        &[
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
            &format!("http://{}/v2/team/hello/manifests/v1", registry.addr),
        ],
    );
    let oci: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        oci["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    assert_eq!(oci["layers"].as_array().unwrap().len(), 1);
    assert_eq!(oci["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(oci["layers"][0]["digest"], pushed["component"]);

    // Pull, by tag and by digest: the same bytes.
    let out = file(work.path(), "hello.wasm");
    let pulled = json(&berth(&["pull", &reference, "-o", &out, "--json"], &[]));
    assert_eq!(pulled["manifest"], manifest.as_str());
    assert_eq!(std::fs::read(&out).unwrap(), original);
    let pinned = format!("oci://{}/team/hello@{manifest}", registry.addr);
    let by_digest = file(work.path(), "pinned.wasm");
    ok(&berth(&["pull", &pinned, "-o", &by_digest], &[]));
    assert_eq!(std::fs::read(&by_digest).unwrap(), original);

    // Another client reads what Berth pushed, and Berth what it pushes.
    let python = python_oras();
    let oras_dir = work.path().join("oras");
    let script = format!(
        "import oras.client, sys\n\
         c = oras.client.OrasClient(hostname={addr:?}, insecure=True)\n\
         files = c.pull(target={reference:?}, outdir={out:?})\n\
         print(files)\n",
        addr = registry.addr,
        out = oras_dir.to_str().unwrap(),
    );
    ok(&Command::new(python).args(["-c", &script]).output().unwrap());
    let oras_pulled: Vec<_> = std::fs::read_dir(&oras_dir).unwrap().collect();
    assert_eq!(oras_pulled.len(), 1);
    assert_eq!(
        std::fs::read(oras_pulled[0].as_ref().unwrap().path()).unwrap(),
        original
    );

    // A manifest naming it: berth up serves it.
    let up = Berth::up(&format!(
        "[service.hello]\ncomponent = \"oci://{reference}\"\nroute = \"/hello/...\"\n"
    ));
    let reply = get(&up, "/hello/oci").await;
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("/hello/oci"), "{}", reply.text());
    drop(up);
    // berth deploy --component oci://… (pinned by digest) to a host.
    let host = Host::start(&[]);
    host.cli_ok(&[
        "deploy",
        "pinned",
        "--component",
        &pinned,
        "--route",
        "/pinned/...",
    ]);
    assert_eq!(get(&host.berth, "/pinned/x").await.status, 200);
}

#[tokio::test]
async fn registries_that_refuse_lie_or_hold_something_else_are_clear_errors() {
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = file(work.path(), "out.wasm");

    // Unreachable.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let err = failed(&berth(
        &["pull", &format!("{closed}/x/y:v1"), "-o", &out],
        &[],
    ));
    assert!(err.contains("cannot be reached"), "{err}");
    assert!(!Path::new(&out).exists());
    // Not a reference.
    let err = failed(&berth(&["pull", "Not A Ref", "-o", &out], &[]));
    assert!(err.contains("not an OCI reference"), "{err}");
    // Not a component.
    let registry = Registry::start(Auth::None);
    let not_wasm = work.path().join("notes.txt");
    std::fs::write(&not_wasm, "hello").unwrap();
    let err = failed(&berth(
        &[
            "push",
            not_wasm.to_str().unwrap(),
            &format!("{}/x/notes:v1", registry.addr),
        ],
        &[],
    ));
    assert!(err.contains("not a WebAssembly component"), "{err}");

    // Something else pushed by another client: refused, nothing written.
    let python = python_oras();
    let script = format!(
        "import oras.client\n\
         c = oras.client.OrasClient(hostname={addr:?}, insecure=True)\n\
         c.push(target={target:?}, files=[{file:?} + ':text/plain'], disable_path_validation=True)\n",
        addr = registry.addr,
        target = format!("{}/x/notes:v1", registry.addr),
        file = not_wasm.to_str().unwrap(),
    );
    ok(&Command::new(python)
        .args(["-c", &script])
        .current_dir(work.path())
        .output()
        .unwrap());
    let err = failed(&berth(
        &["pull", &format!("{}/x/notes:v1", registry.addr), "-o", &out],
        &[],
    ));
    assert!(err.contains("not a Wasm component artifact"), "{err}");
    assert!(!Path::new(&out).exists());

    // A digest that is not the manifest's; a blob tampered with on the
    // registry's disk.
    let pushed = json(&berth(
        &[
            "push",
            programs::HELLO,
            &format!("{}/x/hello:v1", registry.addr),
            "--json",
        ],
        &[],
    ));
    let unknown = format!("{}/x/hello@sha256:{}", registry.addr, "0".repeat(64));
    let err = failed(&berth(&["pull", &unknown, "-o", &out], &[]));
    assert!(err.contains("no such repository or tag"), "{err}");
    // Implicit Docker Hub: refused before anything is asked.
    let err = failed(&berth(&["pull", "team/hello:v1", "-o", &out], &[]));
    assert!(err.contains("name its registry first"), "{err}");
    // A manifest changed on the registry's disk (same JSON, one byte
    // more): pulled by its digest, refused.
    let manifest = pushed["manifest"].as_str().unwrap();
    let manifest_blob = registry.blob(manifest);
    let text = std::fs::read_to_string(&manifest_blob).unwrap();
    let changed = text.replacen("\"size\":", "\"size\": ", 1);
    assert_ne!(changed, text);
    std::fs::write(&manifest_blob, &changed).unwrap();
    let pinned = format!("{}/x/hello@{manifest}", registry.addr);
    let err = failed(&berth(&["pull", &pinned, "-o", &out], &[]));
    assert!(err.to_lowercase().contains("digest"), "{err}");
    assert!(!Path::new(&out).exists());
    std::fs::write(&manifest_blob, text).unwrap();
    let blob = registry.blob(pushed["component"].as_str().unwrap());
    let mut bytes = std::fs::read(&blob).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = failed(&berth(
        &["pull", &format!("{}/x/hello:v1", registry.addr), "-o", &out],
        &[],
    ));
    assert!(err.to_lowercase().contains("digest"), "{err}");
    assert!(!Path::new(&out).exists());
    // A manifest naming it fails at the component's line.
    std::fs::write(
        work.path().join("berth.toml"),
        format!(
            "[service.hello]\ncomponent = \"oci://{}/x/hello:v1\"\nroute = \"/h\"\n",
            registry.addr
        ),
    )
    .unwrap();
    let failed_up = up_fails(work.path(), "berth.toml");
    assert!(
        failed_up.stderr.contains("service.hello.component")
            && failed_up.stderr.to_lowercase().contains("digest"),
        "{}",
        failed_up.stderr
    );
}

#[tokio::test]
async fn a_registry_with_basic_auth_takes_the_credentials_from_the_environment() {
    let registry = Registry::start(Auth::Basic("ada", "s3cret"));
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let reference = format!("{}/team/hello:v1", registry.addr);
    let creds = [
        ("BERTH_REGISTRY_HOST", registry.addr.as_str()),
        ("BERTH_REGISTRY_USERNAME", "ada"),
        ("BERTH_REGISTRY_PASSWORD", "s3cret"),
    ];
    let wrong = [
        ("BERTH_REGISTRY_HOST", registry.addr.as_str()),
        ("BERTH_REGISTRY_USERNAME", "ada"),
        ("BERTH_REGISTRY_PASSWORD", "guess"),
    ];
    // Credentials for another registry are not sent to this one.
    let elsewhere = [
        ("BERTH_REGISTRY_HOST", "registry.example:5000"),
        ("BERTH_REGISTRY_USERNAME", "ada"),
        ("BERTH_REGISTRY_PASSWORD", "s3cret"),
    ];
    for env in [&[][..], &wrong[..], &elsewhere[..]] {
        let err = failed(&berth(&["push", programs::HELLO, &reference], env));
        assert!(err.contains("refused the credentials"), "{env:?}: {err}");
    }
    // Credentials for no registry in particular are refused outright.
    let err = failed(&berth(&["push", programs::HELLO, &reference], &creds[1..]));
    assert!(err.contains("set BERTH_REGISTRY_HOST"), "{err}");
    ok(&berth(&["push", programs::HELLO, &reference], &creds));
    let out = file(work.path(), "hello.wasm");
    let err = failed(&berth(&["pull", &reference, "-o", &out], &[]));
    assert!(err.contains("refused the credentials"), "{err}");
    ok(&berth(&["pull", &reference, "-o", &out], &creds));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(programs::HELLO).unwrap()
    );
}

#[tokio::test]
async fn a_registry_behind_a_token_service_takes_credentials_or_a_bearer_token() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    // A self-signed EC key and certificate: what signs the tokens.
    let pki = crate::tools::Pki::new(dir.path());
    let (cert, key) = (PathBuf::from(&pki.ca), dir.path().join("ca.key"));
    let tokens = TokenService::start(&cert, &key, "ada", "s3cret");
    let realm = format!("http://127.0.0.1:{}/token", tokens.port);
    let registry = Registry::start(Auth::Token {
        realm: realm.clone(),
        cert: &cert,
    });
    let reference = format!("{}/team/hello:v1", registry.addr);
    let creds = [
        ("BERTH_REGISTRY_HOST", registry.addr.as_str()),
        ("BERTH_REGISTRY_USERNAME", "ada"),
        ("BERTH_REGISTRY_PASSWORD", "s3cret"),
    ];
    // Anonymous: the token opens nothing.
    let err = failed(&berth(&["push", programs::HELLO, &reference], &[]));
    assert!(err.contains("refused the credentials"), "{err}");
    // The credentials, traded for a token after the registry's challenge.
    ok(&berth(&["push", programs::HELLO, &reference], &creds));
    let out = file(dir.path(), "hello.wasm");
    ok(&berth(&["pull", &reference, "-o", &out], &creds));
    assert_eq!(
        std::fs::read(&out).unwrap(),
        std::fs::read(programs::HELLO).unwrap()
    );
    // A bearer token got beforehand, given as is.
    let answer = crate::tools::run_ok(
        "curl",
        &[
            "-sf",
            "-u",
            "ada:s3cret",
            &format!("{realm}?service={SERVICE}&scope=repository:team/hello:pull"),
        ],
    );
    let token: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let token = token["token"].as_str().unwrap();
    let pinned = file(dir.path(), "bearer.wasm");
    ok(&berth(
        &["pull", &reference, "-o", &pinned],
        &[
            ("BERTH_REGISTRY_HOST", registry.addr.as_str()),
            ("BERTH_REGISTRY_TOKEN", token),
        ],
    ));
    assert_eq!(
        std::fs::read(&pinned).unwrap(),
        std::fs::read(&out).unwrap()
    );
    let err = failed(&berth(
        &["pull", &reference, "-o", &pinned],
        &[
            ("BERTH_REGISTRY_HOST", registry.addr.as_str()),
            ("BERTH_REGISTRY_TOKEN", "not-a-token"),
        ],
    ));
    assert!(err.contains("refused the credentials"), "{err}");
}
