//! The developer loop: `berth new` makes a project in each language that
//! `berth up --build` serves at once, for both triggers; `berth up --watch`
//! rebuilds on each save and swaps the new revision in live.

use crate::host::TOKEN;
use crate::support::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long a first build may take: it installs its toolchain's packages
/// (crates, npm, PyPI) and compiles.
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

fn berth_new(dir: &Path, args: &[&str]) -> Output {
    Command::new(berth_bin())
        .arg("new")
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_BACKTRACE")
        .output()
        .expect("run berth new")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A folder for projects, removed when the test ends.
fn projects() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("berth-new-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("temp dir")
}

/// Every file below `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut folders = vec![dir.to_path_buf()];
    while let Some(folder) = folders.pop() {
        for entry in std::fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                folders.push(path);
            } else {
                files.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// Makes project `name` in `root` and starts `berth up` in it with an
/// admin API and `flags` (`--build` or `--watch`).
fn new_and_up(root: &Path, name: &str, template: &str, trigger: &str, flag: &str) -> Berth {
    let out = berth_new(root, &[name, "--template", template, "--trigger", trigger]);
    assert!(out.status.success(), "berth new failed: {}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("berth up --build"), "{said}");
    let mut cmd = Command::new(berth_bin());
    cmd.args(["up", flag, "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--cache-dir"])
        .arg(shared_cache())
        .env("BERTH_TOKEN", TOKEN)
        .current_dir(root.join(name));
    Berth::start(cmd, BUILD_TIMEOUT, None, true)
}

/// The project answers HTTP on every path with its greeting, and its
/// print is a log line of the invocation.
async fn greets(berth: &Berth, name: &str) {
    let reply = get(berth, "/some/path").await;
    assert_eq!(reply.status, 200, "{}", reply.text());
    assert_eq!(reply.text(), format!("Hello from {name} at /some/path!\n"));
    berth.log_line(&reply.invocation(), "/some/path");
}

/// An event published with the CLI, as the README says, reaches the
/// project's handler.
fn handles_events(berth: &Berth, name: &str) {
    let admin = format!("http://{}", berth.admin.unwrap());
    let topic = format!("{name}.requests");
    let out = Command::new(berth_bin())
        .args([
            "publish", &topic, "--data", "hi-there", "--type", "greeting",
        ])
        .args(["--host", &admin, "--token", TOKEN])
        .env_remove("RUST_BACKTRACE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "berth publish failed: {}",
        stderr(&out)
    );
    berth.wait_for_logs(&[
        &format!("{name} handled greeting event"),
        "(attempt 1): hi-there",
    ]);
}

/// Both triggers of a template, each built and served from a new project.
async fn template_serves(template: &str) {
    let root = projects();
    let web = format!("web-{template}");
    let berth = new_and_up(root.path(), &web, template, "http", "--build");
    greets(&berth, &web).await;
    drop(berth);
    let worker = format!("worker-{template}");
    let berth = new_and_up(root.path(), &worker, template, "events", "--build");
    handles_events(&berth, &worker);
}

#[tokio::test]
async fn the_javascript_template_builds_and_serves() {
    template_serves("js").await;
}

#[tokio::test]
async fn the_python_template_builds_and_serves() {
    template_serves("python").await;
}

#[tokio::test]
async fn the_rust_template_builds_serves_and_rebuilds_on_save() {
    let root = projects();
    let berth = new_and_up(root.path(), "web-rust", "rust", "http", "--watch");
    greets(&berth, "web-rust").await;
    let source = root.path().join("web-rust/src/lib.rs");
    let text = std::fs::read_to_string(&source).unwrap();

    // A save: rebuilt, and the new revision serves.
    std::fs::write(&source, text.replace("Hello from", "Howdy from")).unwrap();
    berth.wait_for_logs(&["web-rust: revision 2 is serving"]);
    let reply = get(&berth, "/x").await;
    assert_eq!(reply.text(), "Howdy from web-rust at /x!\n");

    // A save that does not compile: the compiler's error is shown, and
    // revision 2 keeps serving.
    std::fs::write(
        &source,
        text.replace("Response::text(", "Response::text(nope + "),
    )
    .unwrap();
    berth.wait_for_logs(&[
        "cannot find value `nope`",
        "web-rust: the build command of service `web-rust` failed",
        "revision 2 keeps serving",
    ]);
    assert_eq!(
        get(&berth, "/x").await.text(),
        "Howdy from web-rust at /x!\n"
    );

    // Mended: revision 3.
    std::fs::write(&source, &text).unwrap();
    berth.wait_for_logs(&["web-rust: revision 3 is serving"]);
    assert_eq!(
        get(&berth, "/x").await.text(),
        "Hello from web-rust at /x!\n"
    );
    drop(berth);

    let berth = new_and_up(root.path(), "worker-rust", "rust", "events", "--build");
    handles_events(&berth, "worker-rust");
}

#[test]
fn berth_new_refuses_bad_input_and_writes_nothing() {
    let root = projects();
    let dir = root.path();

    let out = berth_new(dir, &["svc", "--template", "cobol"]);
    assert_eq!(out.status.code(), Some(2));
    let e = stderr(&out);
    assert!(
        e.contains("invalid value 'cobol'") && e.contains("rust, js, python"),
        "{e}"
    );

    let out = berth_new(dir, &["svc", "--trigger", "carrier-pigeon"]);
    assert_eq!(out.status.code(), Some(2));

    for bad in ["Hello", "snake_case", "./-dash"] {
        let out = berth_new(dir, &[bad]);
        assert!(!out.status.success());
        assert!(
            stderr(&out).contains("invalid service name"),
            "{}",
            stderr(&out)
        );
    }
    let out = berth_new(dir, &["no/such/parent/svc", "--template", "python"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(tree(dir).is_empty(), "{:?}", tree(dir));
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);

    // An existing folder is refused, and left exactly as it was.
    let taken = dir.join("taken");
    std::fs::create_dir(&taken).unwrap();
    std::fs::write(taken.join("berth.toml"), "# mine\n").unwrap();
    std::fs::write(taken.join("notes.txt"), "mine\n").unwrap();
    let out = berth_new(dir, &["taken", "--template", "js"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    assert_eq!(
        tree(&taken),
        [PathBuf::from("berth.toml"), PathBuf::from("notes.txt")]
    );
    assert_eq!(
        std::fs::read_to_string(taken.join("berth.toml")).unwrap(),
        "# mine\n"
    );

    // --force writes the template over it and keeps the other files.
    let out = berth_new(dir, &["taken", "--template", "js", "--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        std::fs::read_to_string(taken.join("berth.toml"))
            .unwrap()
            .contains("[service.taken]")
    );
    assert_eq!(
        std::fs::read_to_string(taken.join("notes.txt")).unwrap(),
        "mine\n"
    );
    assert!(taken.join("src/index.js").is_file());
    assert!(
        !tree(&taken)
            .iter()
            .any(|p| p.to_string_lossy().contains("berth-new"))
    );

    // A new project is whole: the templates' files, nothing staged left.
    let out = berth_new(dir, &["fresh", "--template", "rust", "--trigger", "events"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let files = tree(&dir.join("fresh"));
    for expected in [
        "berth.toml",
        "README.md",
        ".gitignore",
        "Cargo.toml",
        "src/lib.rs",
        "vendor/berth-sdk/Cargo.toml",
        "vendor/berth-sdk/src/lib.rs",
    ] {
        assert!(
            files.contains(&PathBuf::from(expected)),
            "{expected}: {files:?}"
        );
    }
    let names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
}

/// A project whose "build" copies the fixture `src/which` names to
/// `app.wasm` (or fails like a compiler when it says `broken`), counting
/// its runs in `builds.log`.
fn copying_project() -> tempfile::TempDir {
    let dir = manifest_dir(
        r#"
[service.app]
component = "app.wasm"
route = "/..."

[service.app.build]
command = "sh build.sh"
watch = ["src/*"]
"#,
    );
    std::fs::write(
        dir.path().join("build.sh"),
        r#"set -e
echo build >> builds.log
which=$(cat src/which)
case "$which" in
  broken*) echo "error: src/which: expected a component, found $which" >&2; exit 1;;
esac
cp "$which" app.wasm.tmp && mv app.wasm.tmp app.wasm
"#,
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/which"), programs::SLEEP).unwrap();
    dir
}

fn builds(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("builds.log"))
        .unwrap_or_default()
        .lines()
        .count()
}

/// Waits until `path` answers with a body that starts with `prefix`.
async fn wait_for_body(berth: &Berth, path: &str, prefix: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = get(berth, path).await;
        if reply.text().starts_with(prefix) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {prefix:?}; last: {} {}\n{}",
            reply.status,
            reply.text(),
            berth.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn watch_rebuilds_on_change_and_swaps_live() {
    let project = copying_project();
    let dir = project.path().to_path_buf();
    let which = dir.join("src/which");
    let berth = Berth::up_with(
        project,
        &["--watch", "--cache-dir", shared_cache().to_str().unwrap()],
    );
    assert_eq!(builds(&dir), 1);
    assert_eq!(get(&berth, "/?ms=1").await.text(), "slept 1 ms\n");

    // A request in flight on revision 1 when revision 2 comes: it finishes
    // on revision 1, and the next request is served by revision 2. A burst
    // of saves builds once.
    let slow = spawn_get(&berth, "/?ms=3000");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..5 {
        std::fs::write(&which, programs::HELLO).unwrap();
    }
    berth.wait_for_logs(&["app: revision 2 is serving"]);
    let reply = get(&berth, "/fresh").await;
    assert_eq!(reply.text(), "hello from berth: /fresh\n");
    let slow = slow.await.unwrap();
    assert_eq!(
        (slow.status, slow.text()),
        (200, "slept 3000 ms\n".to_owned())
    );
    assert_eq!(builds(&dir), 2);

    // A failing build: its error is shown, revision 2 keeps serving.
    std::fs::write(&which, "broken on purpose").unwrap();
    berth.wait_for_logs(&[
        "error: src/which: expected a component, found broken on purpose",
        "revision 2 keeps serving",
    ]);
    assert_eq!(
        get(&berth, "/still").await.text(),
        "hello from berth: /still\n"
    );

    // Saved again unchanged: built, nothing deployed.
    std::fs::write(&which, programs::HELLO).unwrap();
    berth.wait_for_logs(&["app: the component is unchanged"]);
    assert_eq!(builds(&dir), 4);

    // Files the patterns leave out build nothing.
    std::fs::write(dir.join("notes.txt"), "x").unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(builds(&dir), 4);

    // The manifest changes: an invalid one is reported and ignored; a valid
    // one is followed (a new route).
    let manifest = dir.join("berth.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("route = \"/...\"", "route = 42")).unwrap();
    berth.wait_for_logs(&["berth.toml:4", "the services keep serving as they were"]);
    assert_eq!(get(&berth, "/x").await.status, 200);
    std::fs::write(
        &manifest,
        text.replace("route = \"/...\"", "route = \"/v2/...\""),
    )
    .unwrap();
    berth.wait_for_logs(&["serving berth.toml as it is now"]);
    wait_for_body(&berth, "/v2/x", "hello from berth: /v2/x").await;
    assert_eq!(get(&berth, "/x").await.status, 404);

    // And the sources are still watched.
    std::fs::write(&which, programs::SLEEP).unwrap();
    wait_for_body(&berth, "/v2/?ms=1", "slept 1 ms").await;
}

#[tokio::test]
async fn watch_without_patterns_takes_every_source_but_what_builds_write() {
    // No `watch` list: every file below the workdir is a source, but for
    // what a build writes (the component, by way of a temporary sibling;
    // a hidden log) and the state directory.
    let project = copying_project();
    let dir = project.path().to_path_buf();
    let manifest = dir.join("berth.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, text.replace("watch = [\"src/*\"]\n", "")).unwrap();
    let script = std::fs::read_to_string(dir.join("build.sh")).unwrap();
    std::fs::write(
        dir.join("build.sh"),
        script.replace("builds.log", ".builds.log"),
    )
    .unwrap();
    let berth = Berth::up_with(
        project,
        &[
            "--watch",
            "--state",
            "state",
            "--cache-dir",
            shared_cache().to_str().unwrap(),
        ],
    );
    let count = || {
        std::fs::read_to_string(dir.join(".builds.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(get(&berth, "/?ms=1").await.text(), "slept 1 ms\n");

    // A folder moved in with a source in it (one event, for the folder).
    let staging = dir.join("..").join(format!(
        "{}-lib",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::create_dir(&staging).unwrap();
    std::fs::write(staging.join("util.txt"), "x").unwrap();
    std::fs::rename(&staging, dir.join("lib")).unwrap();
    berth.wait_for_count("app: sources changed, building", 1);
    berth.wait_for_count("app: the component is unchanged", 1);
    // It is watched from then on.
    std::fs::write(dir.join("lib/util.txt"), "y").unwrap();
    berth.wait_for_count("app: the component is unchanged", 2);

    // Requests write to the state directory, and builds to their outputs:
    // neither sets off a build.
    std::fs::write(dir.join("src/which"), programs::HELLO).unwrap();
    berth.wait_for_logs(&["app: revision 2 is serving"]);
    for _ in 0..5 {
        assert_eq!(get(&berth, "/q").await.status, 200);
    }
    let settled = count();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(), settled, "{}", berth.logs());
    assert_eq!(settled, 4);
}
