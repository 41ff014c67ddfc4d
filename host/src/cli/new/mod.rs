//! `berth new PATH [--template rust|js|python] [--trigger http|events]`: a
//! ready project that `berth up --build` serves at once: its source, a
//! `berth.toml` with the build command and the files `berth up --watch`
//! watches, a README and a `.gitignore`.
//!
//! - **Rust** uses `berth-sdk`. The SDK is not on crates.io, so the project
//!   carries the one this `berth` was built with, in `vendor/berth-sdk`.
//! - **JavaScript** uses ComponentizeJS (npm) and **Python** componentize-py
//!   (PyPI), pinned; the build command installs them into the project
//!   folder (`node_modules`, `.venv`). Both build against the WIT Berth
//!   links, written to the project's `wit/`.
//!
//! Nothing is half-written: a new folder is made under a hidden name and
//! renamed when complete; with `--force`, each file is written beside its
//! place and renamed over it only once all are written.

use crate::values::name::ServiceName;
use anyhow::Context;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct NewArgs {
    /// The project's folder (made); its last part names the service.
    path: PathBuf,

    /// The language.
    #[arg(long, short, value_enum, default_value_t = Template::Rust)]
    template: Template,

    /// What invokes the service: HTTP requests, or events on a topic.
    #[arg(long, value_enum, default_value_t = Trigger::Http)]
    trigger: Trigger,

    /// Write into a folder that exists, replacing the files of the same
    /// names (others are left as they are).
    #[arg(long)]
    force: bool,
}

/// A project template: its language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Template {
    /// Rust with berth-sdk (cargo, wasm32-wasip2).
    Rust,
    /// JavaScript with ComponentizeJS (Node.js and npm).
    Js,
    /// Python with componentize-py (python3 with venv).
    Python,
}

/// What invokes a new service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Trigger {
    /// HTTP requests, on every path (`route = "/..."`).
    Http,
    /// Events published on `NAME.requests`.
    Events,
}

/// componentize-py, pinned in the Python template's build command.
const COMPONENTIZE_PY: &str = "0.25.0";

/// The WASI 0.2 release ComponentizeJS 0.23's engine (StarlingMonkey)
/// implements: a JavaScript HTTP world must export its
/// `wasi:http/incoming-handler`. WASI 0.2 releases only add, and Berth links
/// a later one, which serves it.
const STARLINGMONKEY_WASI: &str = "0.2.10";

/// The WIT of the WASI 0.2 packages Berth links (`build.rs`).
mod wasi_wit {
    include!(concat!(env!("OUT_DIR"), "/wasi_wit.rs"));
}

/// Berth's own events WIT, the contract of the events trigger.
const EVENTS_WIT: &str = include_str!("../../../../sdk/wit/events.wit");

/// The SDK's files, carried into Rust projects (its manifest is resolved
/// from the workspace's, see [`sdk_manifest`]).
const SDK_FILES: &[(&str, &str)] = &[
    ("src/lib.rs", include_str!("../../../../sdk/src/lib.rs")),
    ("src/http.rs", include_str!("../../../../sdk/src/http.rs")),
    (
        "src/events.rs",
        include_str!("../../../../sdk/src/events.rs"),
    ),
    ("wit/events.wit", EVENTS_WIT),
];
const SDK_CARGO_TOML: &str = include_str!("../../../../sdk/Cargo.toml");
const WORKSPACE_CARGO_TOML: &str = include_str!("../../../../Cargo.toml");

pub fn run(args: NewArgs) -> anyhow::Result<()> {
    let name = service_name(&args.path, args.template)?;
    let files = project(&name, args.template, args.trigger)?;
    write(&args.path, &files, args.force)?;
    let dir = args.path.display();
    let lang = match args.template {
        Template::Rust => "Rust",
        Template::Js => "JavaScript",
        Template::Python => "Python",
    };
    println!(
        "Made {name}, a {lang} service invoked by {}, in {dir}.",
        args.trigger.describe(name.as_str())
    );
    println!("Build and run it:\n\n    cd {dir}\n    berth up --build\n");
    println!("{}", try_it(name.as_str(), args.trigger));
    Ok(())
}

impl Trigger {
    fn describe(self, name: &str) -> String {
        match self {
            Trigger::Http => "HTTP requests".into(),
            Trigger::Events => format!("events on {}", topic(name)),
        }
    }
}

/// The topic an events project subscribes to.
fn topic(name: &str) -> String {
    format!("{name}.requests")
}

/// How to invoke a running project, for the README and `berth new`'s
/// output.
fn try_it(name: &str, trigger: Trigger) -> String {
    let invoke = match trigger {
        Trigger::Http => "Then:\n\n    curl http://127.0.0.1:3000/".to_owned(),
        Trigger::Events => format!(
            "To publish to it, turn the admin API on:\n\n    \
             berth up --build --admin-listen 127.0.0.1:3001\n    \
             berth publish {} --data hello     # in another terminal",
            topic(name)
        ),
    };
    format!("{invoke}\n\n`berth up --watch` also rebuilds it and swaps it in on each save.")
}

/// The service's name: the folder's last part, a valid service name (and
/// for Rust a package name, which starts with a letter).
fn service_name(path: &Path, template: Template) -> anyhow::Result<ServiceName> {
    let last = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} does not end in a folder name", path.display()))?;
    let name = ServiceName::parse(last).map_err(|e| {
        anyhow::anyhow!(
            "{e} (the folder's name names the service: lowercase letters, digits and \"-\")"
        )
    })?;
    anyhow::ensure!(
        template != Template::Rust || last.starts_with(|c: char| c.is_ascii_lowercase()),
        "invalid service name {last:?} for a Rust project: a cargo package name starts with a letter"
    );
    Ok(name)
}

/// A project's files: a path relative to its folder, and the text.
type Files = Vec<(PathBuf, String)>;

/// The files of a new project.
fn project(name: &ServiceName, template: Template, trigger: Trigger) -> anyhow::Result<Files> {
    let name = name.as_str();
    let fill = |text: &str| {
        text.replace("{{name}}", name)
            .replace("{{crate}}", &name.replace('-', "_"))
    };
    let mut files: Files = Vec::new();
    let mut add = |path: &str, text: String| files.push((PathBuf::from(path), text));
    let (source_path, source) = match (template, trigger) {
        (Template::Rust, Trigger::Http) => ("src/lib.rs", include_str!("templates/rust/http.rs")),
        (Template::Rust, Trigger::Events) => {
            ("src/lib.rs", include_str!("templates/rust/events.rs"))
        }
        (Template::Js, Trigger::Http) => ("src/index.js", include_str!("templates/js/http.js")),
        (Template::Js, Trigger::Events) => ("src/index.js", include_str!("templates/js/events.js")),
        (Template::Python, Trigger::Http) => ("app.py", include_str!("templates/python/http.py")),
        (Template::Python, Trigger::Events) => {
            ("app.py", include_str!("templates/python/events.py"))
        }
    };
    add(source_path, fill(source));
    match template {
        Template::Rust => {
            add(
                "Cargo.toml",
                fill(include_str!("templates/rust/Cargo.toml")),
            );
            add(
                ".cargo/config.toml",
                include_str!("templates/rust/config.toml").into(),
            );
            add(
                ".gitignore",
                include_str!("templates/rust/gitignore").into(),
            );
            add("vendor/berth-sdk/Cargo.toml", sdk_manifest()?);
            for (path, text) in SDK_FILES {
                add(&format!("vendor/berth-sdk/{path}"), (*text).into());
            }
        }
        Template::Js => {
            add(
                "package.json",
                fill(include_str!("templates/js/package.json")),
            );
            add(".gitignore", include_str!("templates/js/gitignore").into());
        }
        Template::Python => {
            add(
                ".gitignore",
                include_str!("templates/python/gitignore").into(),
            );
        }
    }
    if template != Template::Rust {
        for (path, text) in wit(template, trigger) {
            add(&path, text);
        }
    }
    add("berth.toml", manifest(name, template, trigger));
    add("README.md", readme(name, template, trigger));
    Ok(files)
}

/// The WIT a JavaScript or Python project builds against: its world, and
/// the packages that world uses.
fn wit(template: Template, trigger: Trigger) -> Vec<(String, String)> {
    match trigger {
        Trigger::Events => vec![
            (
                "wit/world.wit".into(),
                "// The service's world: it handles Berth's events.\n\
                 package berth:app;\n\nworld service {\n  export berth:events/handler@0.1.0;\n}\n"
                    .into(),
            ),
            ("wit/deps/berth-events.wit".into(), EVENTS_WIT.into()),
        ],
        Trigger::Http => {
            let linked = wasi_version();
            // ComponentizeJS's engine exports the handler of an earlier
            // 0.2 release: name the same (compatible) packages so.
            let version = match template {
                Template::Js => STARLINGMONKEY_WASI,
                _ => linked.as_str(),
            };
            let mut files = vec![(
                "wit/world.wit".into(),
                format!(
                    "// The service's world: it handles HTTP requests (WASI {version}; Berth\n\
                     // links WASI {linked}, which serves every 0.2 release).\n\
                     package berth:app;\n\nworld service {{\n  export wasi:http/incoming-handler@{version};\n}}\n"
                ),
            )];
            for (file, text) in wasi_wit::WASI_P2 {
                files.push((format!("wit/deps/{file}"), text.replace(&linked, version)));
            }
            files
        }
    }
}

/// The WASI 0.2 release Berth links (the version of its `wasi:http`).
fn wasi_version() -> String {
    let http = wasi_wit::WASI_P2
        .iter()
        .find(|(file, _)| *file == "http.wit")
        .map(|(_, text)| *text)
        .expect("the WIT of wasi:http is embedded");
    http.lines()
        .find_map(|line| line.trim().strip_prefix("package wasi:http@"))
        .map(|v| v.trim_end_matches(';').trim().to_owned())
        .expect("wasi:http's WIT names its package")
}

/// The project's `berth.toml`.
fn manifest(name: &str, template: Template, trigger: Trigger) -> String {
    let (component, command, watch): (String, String, &[&str]) = match template {
        Template::Rust => (
            format!(
                "target/wasm32-wasip2/release/{}.wasm",
                name.replace('-', "_")
            ),
            "rustup target add wasm32-wasip2 2>/dev/null; \
             cargo build --release --target wasm32-wasip2 --target-dir target"
                .into(),
            &["src/**/*.rs", "Cargo.toml", "build.rs"],
        ),
        Template::Js => (
            format!("{name}.wasm"),
            "npm install --no-audit --no-fund --loglevel=error && npm run --silent build".into(),
            &["src/**/*.js", "package.json", "wit/**/*.wit"],
        ),
        Template::Python => (
            format!("{name}.wasm"),
            format!(
                "[ -x .venv/bin/pip ] || python3 -m venv --clear .venv && \
                 .venv/bin/pip install --quiet --disable-pip-version-check componentize-py=={COMPONENTIZE_PY} && \
                 .venv/bin/componentize-py -d wit -w service componentize app -o {name}.wasm"
            ),
            &["**/*.py", "wit/**/*.wit"],
        ),
    };
    let quote = |s: &str| toml::Value::String(s.into()).to_string();
    let mut text = format!(
        "# {name}, made by `berth new`. `berth up --build` builds and serves it;\n\
         # `berth up --watch` also rebuilds it on each save. Every field is in\n\
         # Berth's docs/manifest.md.\n\n\
         [service.{name}]\ncomponent = {}\n",
        quote(&component)
    );
    match trigger {
        Trigger::Http => text.push_str("route = \"/...\"\n"),
        Trigger::Events => text.push_str(&format!(
            "\n[[service.{name}.subscriptions]]\ntopic = {}\nmax_attempts = 5\nbackoff = \"1s\"\n",
            quote(&topic(name))
        )),
    }
    let watch: Vec<String> = watch.iter().map(|w| quote(w)).collect();
    text.push_str(&format!(
        "\n[service.{name}.build]\ncommand = {}\nwatch = [{}]\n",
        quote(&command),
        watch.join(", ")
    ));
    text
}

/// The project's README.
fn readme(name: &str, template: Template, trigger: Trigger) -> String {
    let needs = match template {
        Template::Rust => {
            "Rust with the `wasm32-wasip2` target (the build command adds it with rustup). \
             `vendor/berth-sdk` is the Berth SDK the project was made with."
        }
        Template::Js => {
            "Node.js 18 or later and npm; the build installs ComponentizeJS (pinned in \
             package.json) into node_modules."
        }
        Template::Python => {
            "python3 (3.10 or later) with venv; the build installs componentize-py (pinned in \
             berth.toml) into .venv."
        }
    };
    format!(
        "# {name}\n\nA Berth service, made by `berth new`. Build and run it with\n\n    berth up --build\n\n\
         {}\n\nTo build it needs {needs} The build command and the files `--watch` watches are in \
         `berth.toml`.\n",
        try_it(name, trigger)
    )
}

/// The SDK's `Cargo.toml` for a project of its own: the fields and
/// dependencies it takes from Berth's workspace written out.
fn sdk_manifest() -> anyhow::Result<String> {
    let workspace: toml::Table = WORKSPACE_CARGO_TOML.parse()?;
    let mut sdk: toml::Table = SDK_CARGO_TOML.parse()?;
    let shared = |section: &str| -> anyhow::Result<&toml::Table> {
        workspace
            .get("workspace")
            .and_then(|w| w.get(section))
            .and_then(|s| s.as_table())
            .with_context(|| format!("the workspace's Cargo.toml has no [workspace.{section}]"))
    };
    let inherits = |value: &toml::Value| {
        value
            .as_table()
            .and_then(|t| t.get("workspace"))
            .and_then(|w| w.as_bool())
            == Some(true)
    };
    if let Some(package) = sdk.get_mut("package").and_then(|p| p.as_table_mut()) {
        let from = shared("package")?;
        for (key, value) in package.iter_mut() {
            if inherits(value) {
                *value = from
                    .get(key)
                    .with_context(|| format!("[workspace.package] has no {key}"))?
                    .clone();
            }
        }
    }
    if let Some(deps) = sdk.get_mut("dependencies").and_then(|d| d.as_table_mut()) {
        let from = shared("dependencies")?;
        for (key, value) in deps.iter_mut() {
            if !inherits(value) {
                continue;
            }
            let mut dep = match from.get(key) {
                Some(toml::Value::String(version)) => {
                    let mut t = toml::Table::new();
                    t.insert("version".into(), toml::Value::String(version.clone()));
                    t
                }
                Some(toml::Value::Table(t)) => t.clone(),
                _ => anyhow::bail!("[workspace.dependencies] has no {key}"),
            };
            // A member may add features to the workspace's.
            if let Some(extra) = value.get("features").and_then(|f| f.as_array()) {
                let features = dep
                    .entry("features")
                    .or_insert_with(|| toml::Value::Array(Vec::new()));
                if let Some(list) = features.as_array_mut() {
                    list.extend(extra.iter().cloned());
                }
            }
            *value = toml::Value::Table(dep);
        }
    }
    sdk.remove("lints");
    Ok(format!(
        "# Berth's SDK, as the berth that made this project carries it.\n{}",
        toml::to_string(&sdk)?
    ))
}

/// Writes `files` into `dir`: a new folder (made complete under a hidden
/// name, then renamed), or with `force` an existing one (each file renamed
/// into place once all are written).
fn write(dir: &Path, files: &Files, force: bool) -> anyhow::Result<()> {
    let exists = dir.symlink_metadata().is_ok();
    if exists {
        anyhow::ensure!(
            force,
            "{} exists: choose another name, or add --force to write the template's files into \
             it (replacing files of the same names)",
            dir.display()
        );
        anyhow::ensure!(dir.is_dir(), "{} exists and is not a folder", dir.display());
        return write_over(dir, files);
    }
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    anyhow::ensure!(
        parent.is_dir(),
        "{} does not exist: make it first",
        parent.display()
    );
    let staging = parent.join(format!(
        ".{}.berth-new-{}",
        dir.file_name().unwrap_or_default().to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> anyhow::Result<()> {
        std::fs::create_dir(&staging).with_context(|| format!("making {}", staging.display()))?;
        for (path, text) in files {
            let file = staging.join(path);
            if let Some(folder) = file.parent() {
                std::fs::create_dir_all(folder)
                    .with_context(|| format!("making {}", folder.display()))?;
            }
            std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
        }
        std::fs::rename(&staging, dir)
            .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))
    })();
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

/// Writes `files` into the existing folder `dir`: every file first beside
/// its place, then each renamed over its place.
fn write_over(dir: &Path, files: &Files) -> anyhow::Result<()> {
    let suffix = format!(".berth-new-{}", std::process::id());
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut made_dirs: Vec<PathBuf> = Vec::new();
    let written = (|| -> anyhow::Result<()> {
        for (path, text) in files {
            let file = dir.join(path);
            let folder = file.parent().unwrap_or(dir);
            // Remember the first folder made on the way, to remove it on failure.
            let mut missing = folder.to_path_buf();
            let mut first_missing = None;
            while !missing.exists() {
                first_missing = Some(missing.clone());
                if !missing.pop() {
                    break;
                }
            }
            std::fs::create_dir_all(folder)
                .with_context(|| format!("making {}", folder.display()))?;
            made_dirs.extend(first_missing);
            anyhow::ensure!(
                !file.is_dir(),
                "{} is a folder, where the template writes a file",
                file.display()
            );
            let mut temp = file.clone().into_os_string();
            temp.push(&suffix);
            let temp = PathBuf::from(temp);
            std::fs::write(&temp, text).with_context(|| format!("writing {}", temp.display()))?;
            staged.push((temp, file));
        }
        Ok(())
    })();
    if let Err(e) = written {
        for (temp, _) in &staged {
            let _ = std::fs::remove_file(temp);
        }
        for folder in made_dirs.iter().rev() {
            let _ = std::fs::remove_dir_all(folder);
        }
        return Err(e);
    }
    for (temp, file) in &staged {
        std::fs::rename(temp, file)
            .with_context(|| format!("renaming {} to {}", temp.display(), file.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::values::manifest::Manifest;

    fn files(template: Template, trigger: Trigger) -> Files {
        project(&ServiceName::parse("my-svc").unwrap(), template, trigger).unwrap()
    }

    fn text<'a>(files: &'a Files, path: &str) -> &'a str {
        &files
            .iter()
            .find(|(p, _)| p == Path::new(path))
            .unwrap_or_else(|| panic!("no {path}"))
            .1
    }

    #[test]
    fn every_template_has_a_valid_manifest_with_a_build_and_a_readme() {
        for template in [Template::Rust, Template::Js, Template::Python] {
            for trigger in [Trigger::Http, Trigger::Events] {
                let files = files(template, trigger);
                let manifest = Manifest::parse(
                    Path::new("/p/berth.toml"),
                    text(&files, "berth.toml").to_owned(),
                )
                .unwrap_or_else(|e| panic!("{template:?}/{trigger:?}: {e}"));
                let svc = &manifest.services[0];
                assert_eq!(svc.spec.name.as_str(), "my-svc");
                assert!(svc.build.as_ref().is_some_and(|b| !b.watch.is_empty()));
                assert!(text(&files, "README.md").contains("berth up --build"));
                for (_, text) in &files {
                    assert!(!text.contains("{{"), "{template:?}: a placeholder is left");
                }
            }
        }
    }

    #[test]
    fn rust_projects_carry_the_sdk_resolved_from_the_workspace() {
        let files = files(Template::Rust, Trigger::Http);
        let manifest: toml::Table = text(&files, "vendor/berth-sdk/Cargo.toml").parse().unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("berth-sdk"));
        assert_eq!(
            manifest["package"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        let serde = &manifest["dependencies"]["serde"];
        assert!(serde["version"].is_str());
        assert!(serde.get("workspace").is_none());
        assert!(manifest.get("lints").is_none());
        assert!(!text(&files, "vendor/berth-sdk/Cargo.toml").contains("workspace"));
        // Every file of the SDK is carried.
        let sdk = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk");
        let mut on_disk = Vec::new();
        for folder in ["src", "wit"] {
            for entry in std::fs::read_dir(sdk.join(folder)).unwrap() {
                let name = entry.unwrap().file_name().into_string().unwrap();
                on_disk.push(format!("{folder}/{name}"));
            }
        }
        on_disk.sort();
        let mut carried: Vec<String> = SDK_FILES.iter().map(|(p, _)| p.to_string()).collect();
        carried.sort();
        assert_eq!(carried, on_disk);
    }

    #[test]
    fn javascript_http_worlds_name_the_engines_wasi_release() {
        let linked = wasi_version();
        assert!(linked.starts_with("0.2."), "{linked}");
        let js = files(Template::Js, Trigger::Http);
        assert!(text(&js, "wit/world.wit").contains("incoming-handler@0.2.10;"));
        assert!(text(&js, "wit/deps/http.wit").contains("package wasi:http@0.2.10;"));
        let py = files(Template::Python, Trigger::Http);
        assert!(text(&py, "wit/deps/http.wit").contains(&format!("package wasi:http@{linked};")));
    }

    #[test]
    fn names_must_be_service_names() {
        assert!(service_name(Path::new("a/hello-1"), Template::Rust).is_ok());
        for bad in ["Hello", "a_b", "-x", ""] {
            assert!(service_name(Path::new(bad), Template::Js).is_err(), "{bad}");
        }
        assert!(service_name(Path::new("1st"), Template::Python).is_ok());
        let e = service_name(Path::new("1st"), Template::Rust).unwrap_err();
        assert!(e.to_string().contains("starts with a letter"), "{e}");
    }

    #[test]
    fn a_folder_is_written_whole_or_not_at_all() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("svc");
        let files = vec![
            (PathBuf::from("a.txt"), "a".to_owned()),
            (PathBuf::from("sub/b.txt"), "b".to_owned()),
        ];
        write(&dir, &files, false).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("sub/b.txt")).unwrap(), "b");

        // It exists now: refused without --force, and left as it was.
        std::fs::write(dir.join("mine.txt"), "mine").unwrap();
        let changed = vec![(PathBuf::from("a.txt"), "A".to_owned())];
        let e = write(&dir, &changed, false).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "a");

        // --force replaces the template's files and keeps the others.
        write(&dir, &changed, true).unwrap();
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "A");
        assert_eq!(
            std::fs::read_to_string(dir.join("mine.txt")).unwrap(),
            "mine"
        );

        // A file where the template needs a folder: nothing is replaced,
        // nothing is left behind.
        let blocked = vec![
            (PathBuf::from("a.txt"), "again".to_owned()),
            (PathBuf::from("new/c.txt"), "c".to_owned()),
            (PathBuf::from("mine.txt/d.txt"), "d".to_owned()),
        ];
        assert!(write(&dir, &blocked, true).is_err());
        assert_eq!(std::fs::read_to_string(dir.join("a.txt")).unwrap(), "A");
        assert!(!dir.join("new").exists());
        let left: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.contains("berth-new"))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // A new folder whose parent is missing: an error, nothing made.
        let e = write(&root.path().join("no/svc"), &files, false).unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let hidden = std::fs::read_dir(root.path())
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().starts_with('.'));
        assert!(!hidden);
    }
}
