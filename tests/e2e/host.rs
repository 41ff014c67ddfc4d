//! Support for `berth serve` tests: a host on a state directory, the CLI
//! pointed at it, and raw admin API requests.

use crate::support::*;
use bytes::Bytes;
use http_body_util::Full;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

pub const TOKEN: &str = "test-token";

/// A `berth serve` and its state directory, which outlives restarts.
pub struct Host {
    pub berth: Berth,
    pub state: PathBuf,
    _dir: Option<tempfile::TempDir>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
    place: Place,
}

/// Where a host runs: a command that runs it elsewhere (`ip netns exec
/// NAME`), if any, and the address its listeners bind.
#[derive(Clone)]
struct Place {
    wrap: Vec<String>,
    bind: String,
}

impl Host {
    /// A host on a fresh state directory.
    pub fn start(extra: &[&str]) -> Host {
        Host::start_with_env(extra, &[])
    }

    /// A host on a fresh state directory, with these environment
    /// variables set for the host process.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Host {
        let place = Place {
            wrap: Vec::new(),
            bind: "127.0.0.1".into(),
        };
        Host::start_at(place, extra, env)
    }

    /// A host on a fresh state directory in the network namespace `ns`,
    /// its listeners on `bind` (an address of the namespace that this
    /// process reaches).
    pub fn start_in(ns: &crate::netns::Netns, bind: &str, extra: &[&str]) -> Host {
        let place = Place {
            wrap: ns.wrap(),
            bind: bind.into(),
        };
        Host::start_at(place, extra, &[])
    }

    fn start_at(place: Place, extra: &[&str], env: &[(&str, &str)]) -> Host {
        let dir = tempfile::Builder::new()
            .prefix("berth-host-")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let state = dir.path().join("state");
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let berth = serve(&place, &state, extra, &env);
        Host {
            berth,
            state,
            _dir: Some(dir),
            extra: extra.iter().map(|s| s.to_string()).collect(),
            env,
            place,
        }
    }

    /// Stops (SIGTERM) and starts again on the same state directory.
    pub fn restart(&mut self) {
        let status = self.berth.terminate();
        assert!(status.success(), "berth serve exited with {status}");
        self.start_again();
    }

    /// Starts again on the same state directory (after a crash, say).
    pub fn start_again(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        self.berth = serve(&self.place, &self.state, &extra, &self.env);
    }

    /// Damages the stored artifact `digest` (hex) and removes its compiled
    /// code, so that loading it fails. The host must be stopped.
    pub fn damage_artifact(&self, digest: &str) {
        let file = self.state.join("artifacts").join(format!("{digest}.wasm"));
        let mut bytes = std::fs::read(&file).unwrap();
        bytes[1000] ^= 0xff;
        std::fs::write(&file, bytes).unwrap();
        for entry in std::fs::read_dir(self.state.join("code")).unwrap() {
            let path = entry.unwrap().path();
            if path
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with(digest)
            {
                std::fs::remove_file(path).unwrap();
            }
        }
    }

    pub fn admin_url(&self) -> String {
        format!("http://{}", self.berth.admin.unwrap())
    }

    /// Starts the `berth` CLI against this host with the right token,
    /// without waiting for it (its output is dropped).
    pub fn spawn_cli(&self, args: &[&str]) -> std::process::Child {
        Command::new(berth_bin())
            .args(args)
            .env("BERTH_HOST", self.admin_url())
            .env("BERTH_TOKEN", TOKEN)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Runs the `berth` CLI against this host with the right token.
    pub fn cli(&self, args: &[&str]) -> Output {
        cli_with_token(&self.admin_url(), Some(TOKEN), args)
    }

    /// Runs the CLI and expects success; returns stdout.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "berth {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `berth deploy NAME --component COMPONENT --route ROUTE`, which must
    /// succeed; returns its output.
    pub fn deploy(&self, name: &str, component: &str, route: &str) -> String {
        self.cli_ok(&["deploy", name, "--component", component, "--route", route])
    }

    /// Deploys every service of `manifest` (written to a temporary file).
    pub fn deploy_manifest(&self, manifest: &str) -> String {
        let dir = manifest_dir(manifest);
        let path = dir.path().join("berth.toml");
        self.cli_ok(&["deploy", path.to_str().unwrap()])
    }

    /// `berth events --json`, parsed.
    pub fn events(&self) -> serde_json::Value {
        serde_json::from_str(&self.cli_ok(&["events", "--json"])).unwrap()
    }

    /// The stats of subscription `id` (`service:pattern`).
    pub fn subscription(&self, id: &str) -> serde_json::Value {
        self.events()["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["subscription"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("no subscription {id}"))
    }

    /// Waits until `check` holds of `berth events --json`.
    pub fn wait_for_events(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let events = self.events();
            if check(&events) {
                return events;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "never {what}: {events:#}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Publishes CloudEvents in structured batch mode.
    pub async fn publish_batch(&self, topic: &str, events: &[serde_json::Value]) -> Reply {
        send(self.berth.admin.unwrap(), batch_request(topic, events)).await
    }

    /// `berth ls --json`, parsed.
    pub fn services(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.cli_ok(&["ls", "--json"])).unwrap()
    }

    /// One admin API request, with the token unless `token` says otherwise.
    pub async fn api(
        &self,
        method: &str,
        path: &str,
        body: impl Into<Bytes>,
        token: Option<&str>,
    ) -> Reply {
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "berth-admin");
        if let Some(token) = token {
            req = req.header("authorization", format!("Bearer {token}"));
        }
        send(
            self.berth.admin.unwrap(),
            req.body(Full::new(body.into())).unwrap(),
        )
        .await
    }

    /// The JSON of an admin API reply.
    pub fn json(reply: &Reply) -> serde_json::Value {
        serde_json::from_slice(reply.body.as_ref().expect("complete body"))
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", reply.text()))
    }
}

fn serve(place: &Place, state: &Path, extra: &[&str], env: &[(String, String)]) -> Berth {
    let mut cmd = crate::netns::command(&place.wrap, berth_bin());
    let listen = format!("{}:0", place.bind);
    cmd.args(["serve", "--state"])
        .arg(state)
        .args(["--listen", &listen, "--admin-listen", &listen])
        .args(extra)
        .env("BERTH_TOKEN", TOKEN)
        .envs(env.iter().map(|(k, v)| (k, v)));
    Berth::start(cmd, Duration::from_secs(120), None, true)
}

/// Runs the `berth` CLI against `host` with `token` (none if `None`).
pub fn cli_with_token(host: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = Command::new(berth_bin());
    cmd.args(args)
        .env("BERTH_HOST", host)
        .env_remove("BERTH_TOKEN");
    if let Some(token) = token {
        cmd.env("BERTH_TOKEN", token);
    }
    cmd.output().expect("run the berth CLI")
}

/// `POST /v1/events/{topic}` of `events` in structured batch mode, with
/// the admin token.
pub fn batch_request(topic: &str, events: &[serde_json::Value]) -> http::Request<Full<Bytes>> {
    http::Request::post(format!("/v1/events/{topic}"))
        .header("host", "berth-admin")
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/cloudevents-batch+json")
        .body(Full::new(Bytes::from(serde_json::to_vec(events).unwrap())))
        .unwrap()
}

/// Every stored artifact hashes to its name, the state database passes
/// its integrity and foreign-key checks, and every indexed artifact is
/// stored.
pub fn assert_state_consistent(host: &Host) {
    let dir = host.state.join("artifacts");
    let on_disk = assert_artifacts_whole(host);
    let state =
        berth::control::state::State::open(&host.state.join(berth::control::state::DB_FILE))
            .unwrap();
    state.check().expect("the database is consistent");
    let indexed = state.artifacts().unwrap();
    for artifact in &indexed {
        assert!(
            dir.join(format!("{}.wasm", artifact.digest.hex()))
                .is_file(),
            "{} is indexed but not stored",
            artifact.digest
        );
    }
    assert!(indexed.len() <= on_disk);
}

/// Every artifact `host` stores hashes to its name; how many there are.
pub fn assert_artifacts_whole(host: &Host) -> usize {
    let dir = host.state.join("artifacts");
    let mut on_disk = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_str().unwrap().to_owned();
        if let Some(hex) = name.strip_suffix(".wasm") {
            let bytes = std::fs::read(&path).unwrap();
            assert_eq!(
                berth::values::digest::Digest::of(&bytes).hex(),
                hex,
                "{name} is damaged"
            );
            on_disk += 1;
        }
    }
    on_disk
}

/// Runs `berth serve` on a small tmpfs of its own (a private mount
/// namespace), so the test can fill it or make it read-only.
pub fn host_on_tmpfs(size: &str) -> (Berth, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(format!(
            "mount -t tmpfs -o size={size} berth-test \"$1\" || exit 99; exec \"$2\" serve --state \"$1\" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0"
        ))
        .arg("sh")
        .arg(&state)
        .arg(berth_bin())
        .env("BERTH_TOKEN", TOKEN);
    (
        Berth::start(cmd, Duration::from_secs(60), None, true),
        state,
        dir,
    )
}

/// A path in the state directory `state` of the host `berth`, as the host
/// sees it (inside its mount namespace, when it has one).
pub fn inside(berth: &Berth, state: &Path) -> PathBuf {
    PathBuf::from(format!("/proc/{}/root", berth.pid())).join(state.strip_prefix("/").unwrap())
}

/// Fills the file system holding `dir` with a file in it, until it is
/// full; returns the file.
pub fn fill(dir: &Path) -> PathBuf {
    let filler = dir.join("filler");
    let mut f = std::fs::File::create(&filler).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    // The last blocks, smaller than a chunk.
    while std::io::Write::write_all(&mut f, &[0u8; 4096]).is_ok() {}
    filler
}

/// The usage records of `service` in the ledger of the state directory
/// `state`, after checking the ledger's integrity.
pub fn ledger_count(state: &Path, service: &str) -> u64 {
    let db = rusqlite::Connection::open_with_flags(
        state.join(berth::control::ledger::USAGE_FILE),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let integrity: String = db
        .pragma_query_value(None, "integrity_check", |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok", "the ledger is damaged");
    let n: i64 = db
        .query_row(
            "SELECT count(*) FROM usage WHERE service = ?1",
            [service],
            |r| r.get(0),
        )
        .unwrap();
    n as u64
}
