//! `berth up --watch`: rebuilds a service when its sources change and swaps
//! to the new revision live, as a deploy does (requests in flight finish on
//! the revision they started on).
//!
//! - A service with a build is watched below its workdir: the files its
//!   `watch` patterns match, or without any, every file. Never sources:
//!   hidden files and folders, `target/`, `node_modules/`, `__pycache__/`,
//!   `*.wasm`, every service's component and the state directory.
//! - A service without a build (a component file) is watched for that file.
//! - The manifest is watched too: when it changes it is read again (an
//!   invalid one is reported and ignored), every service is built, and the
//!   services, routes and settings follow it.
//!
//! Changes settle for [`SETTLE`] (an editor's save is a burst of events)
//! before anything builds; a change during a build builds again after it.
//! A failing build prints the compiler's output (a build's stdout and
//! stderr both go to stderr) and leaves the serving revision alone; a
//! component that did not change deploys nothing. File events come from
//! `notify` (inotify on Linux).

use super::up::{build_service, deploy_manifest, deploy_service};
use crate::control::ControlPlane;
use crate::values::manifest::Manifest;
use anyhow::Context;
use notify::event::{CreateKind, ModifyKind, RemoveKind};
use notify::{EventKind, RecursiveMode, Watcher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// How long the sources must be quiet before a build starts.
const SETTLE: Duration = Duration::from_millis(300);

/// Folders whose contents are never sources: build outputs and installed
/// packages.
const NOT_SOURCES: &[&str] = &["target", "node_modules", "__pycache__"];

/// The watch, for as long as it is held.
pub struct Watching {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts watching the sources of `manifest`'s services (built and
/// deployed already); `outputs` are never sources (the state directory).
pub fn start(
    control: Arc<ControlPlane>,
    manifest: Manifest,
    outputs: Vec<PathBuf>,
) -> anyhow::Result<Watching> {
    let watch = Watch::new(&manifest, &outputs)?;
    let task = tokio::spawn(run(control, manifest, watch, outputs));
    Ok(Watching { task })
}

/// What one service is rebuilt or redeployed on.
#[derive(Debug)]
enum Sources {
    /// Files below `root` that the patterns match.
    Patterns {
        root: PathBuf,
        set: globset::GlobSet,
    },
    /// Every file below `root`.
    Below { root: PathBuf },
    /// The component file itself.
    Component(PathBuf),
}

impl Sources {
    /// Whether a change to `path` is a change to these sources. Below a
    /// root, hidden files and folders, [`NOT_SOURCES`] and what a build
    /// makes (`outputs`: every service's component; `*.wasm` and their
    /// temporary siblings `*.wasm.*`) never are.
    /// A folder made, moved or removed is (its files may have come or gone
    /// with it, unseen).
    fn matches(&self, path: &Path, folder: bool, outputs: &[PathBuf]) -> bool {
        let below = |root: &Path| {
            path.strip_prefix(root).ok().filter(|rel| {
                !outputs.iter().any(|o| path.starts_with(o))
                    && !rel.to_string_lossy().contains(".wasm")
                    && rel.components().all(|c| may_be_source(c.as_os_str()))
            })
        };
        match self {
            Sources::Patterns { root, set } => {
                below(root).is_some_and(|rel| folder || set.is_match(rel))
            }
            Sources::Below { root } => below(root).is_some(),
            Sources::Component(file) => path == file,
        }
    }
}

/// The watched paths of one manifest, and its events.
struct Watch {
    /// Each service's sources, in manifest order.
    sources: Vec<Option<Sources>>,
    /// What builds make, never sources.
    outputs: Vec<PathBuf>,
    manifest: PathBuf,
    /// The build folders, each watched with every folder below it that
    /// may hold sources.
    roots: Vec<PathBuf>,
    events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    watcher: notify::RecommendedWatcher,
}

/// Whether a file or folder of this name may be or hold sources: not
/// hidden, not one of [`NOT_SOURCES`].
fn may_be_source(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    !name.starts_with('.') && !NOT_SOURCES.contains(&name.as_ref())
}

/// Whether a folder may hold sources: its name may, and it is not an
/// output.
fn may_hold_sources(folder: &Path, outputs: &[PathBuf]) -> bool {
    may_be_source(folder.file_name().unwrap_or_default())
        && !outputs.iter().any(|o| folder.starts_with(o))
}

/// Watches `root` and every folder below it that may hold sources, each
/// on its own: `target/`, `node_modules/` and `.git` cost no watches.
/// Symbolic links are not followed.
fn watch_tree(
    watcher: &mut notify::RecommendedWatcher,
    root: &Path,
    outputs: &[PathBuf],
) -> anyhow::Result<()> {
    watcher
        .watch(root, RecursiveMode::NonRecursive)
        .with_context(|| format!("watching {}", root.display()))?;
    let mut folders = vec![root.to_path_buf()];
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|t| t.is_dir()) && may_hold_sources(&path, outputs) {
                // A folder gone meanwhile is no loss; running out of
                // watches is said.
                if let Err(e) = watcher.watch(&path, RecursiveMode::NonRecursive) {
                    if !matches!(&e.kind, notify::ErrorKind::PathNotFound) {
                        eprintln!("berth: watching {}: {e}", path.display());
                    }
                    continue;
                }
                folders.push(path);
            }
        }
    }
    Ok(())
}

impl Watch {
    /// Watches the sources of `manifest`'s services, and the manifest;
    /// `outputs` are more paths that are never sources (the state
    /// directory).
    fn new(manifest: &Manifest, outputs: &[PathBuf]) -> anyhow::Result<Watch> {
        // Paths as the file system names them, as events name them.
        let absolute = |p: &Path| {
            std::fs::canonicalize(p)
                .or_else(|_| std::path::absolute(p))
                .unwrap_or_else(|_| p.to_path_buf())
        };
        let components: Vec<PathBuf> = manifest
            .services
            .iter()
            .map(|e| absolute(&e.component))
            .collect();
        let mut outputs: Vec<PathBuf> = outputs.iter().map(|p| absolute(p)).collect();
        outputs.extend(components.iter().cloned());
        let (tx, events) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = tx.send(event);
        })
        .context("watching files")?;
        let mut roots: Vec<PathBuf> = Vec::new();
        let mut folders: Vec<PathBuf> = Vec::new();
        let mut sources = Vec::new();
        for (entry, component) in manifest.services.iter().zip(components) {
            let service = match &entry.build {
                Some(build) => {
                    let root = absolute(&build.dir(&manifest.dir));
                    roots.push(root.clone());
                    match build.watch.is_empty() {
                        true => Some(Sources::Below { root }),
                        false => {
                            let set = build.watch_set().map_err(anyhow::Error::msg)?;
                            Some(Sources::Patterns { root, set })
                        }
                    }
                }
                // A pulled component has no file to watch.
                None if entry.oci().is_some() => None,
                None => {
                    // The folder, not the file: a new build may replace it.
                    folders.extend(component.parent().map(Path::to_path_buf));
                    Some(Sources::Component(component))
                }
            };
            sources.push(service);
        }
        let manifest_file = absolute(&manifest.path);
        folders.extend(manifest_file.parent().map(Path::to_path_buf));
        for root in &roots {
            watch_tree(&mut watcher, root, &outputs)?;
        }
        for folder in &folders {
            watcher
                .watch(folder, RecursiveMode::NonRecursive)
                .with_context(|| format!("watching {}", folder.display()))?;
        }
        Ok(Watch {
            sources,
            outputs,
            manifest: manifest_file,
            roots,
            events,
            watcher,
        })
    }

    /// Waits for a change, then for the sources to settle (no change for
    /// [`SETTLE`]): the services whose sources changed (manifest order),
    /// and whether the manifest did. `None` when the watcher is gone.
    async fn changes(&mut self) -> Option<(Vec<usize>, bool)> {
        let mut changed = vec![false; self.sources.len()];
        let mut manifest = false;
        let mut settled: Option<tokio::time::Instant> = None;
        loop {
            let event = match settled {
                Some(at) => match tokio::time::timeout_at(at, self.events.recv()).await {
                    Ok(event) => event?,
                    Err(_) => break,
                },
                None => self.events.recv().await?,
            };
            let event = match event {
                Ok(event) => event,
                Err(e) => {
                    eprintln!("berth: watching files: {e}");
                    continue;
                }
            };
            let mut seen = false;
            if event.need_rescan() {
                // Events were lost: anything may have changed.
                changed.iter_mut().for_each(|c| *c = true);
                seen = true;
            }
            let folder = match event.kind {
                EventKind::Create(kind) => kind == CreateKind::Folder,
                EventKind::Remove(kind) => kind == RemoveKind::Folder,
                EventKind::Modify(ModifyKind::Name(_)) => event.paths.iter().any(|p| p.is_dir()),
                EventKind::Modify(_) => false,
                _ => continue,
            };
            for path in &event.paths {
                // A folder made or moved in below a root: watch it and
                // what it holds.
                let below_root = self.roots.iter().any(|r| path.starts_with(r) && path != r);
                if folder
                    && below_root
                    && path.is_dir()
                    && may_hold_sources(path, &self.outputs)
                    && let Err(e) = watch_tree(&mut self.watcher, path, &self.outputs)
                {
                    eprintln!("berth: {e:#}");
                }
                if *path == self.manifest {
                    manifest = true;
                    seen = true;
                }
                for (i, sources) in self.sources.iter().enumerate() {
                    if sources
                        .as_ref()
                        .is_some_and(|s| s.matches(path, folder, &self.outputs))
                    {
                        changed[i] = true;
                        seen = true;
                    }
                }
            }
            if seen {
                settled = Some(tokio::time::Instant::now() + SETTLE);
            }
        }
        let services = (0..changed.len()).filter(|&i| changed[i]).collect();
        Some((services, manifest))
    }
}

async fn run(
    control: Arc<ControlPlane>,
    mut manifest: Manifest,
    mut watch: Watch,
    outputs: Vec<PathBuf>,
) {
    // A manifest read but not yet applied (its build failed, or its deploy
    // was refused): every change tries it again.
    let mut pending = false;
    while let Some((services, manifest_changed)) = watch.changes().await {
        if manifest_changed || pending {
            let (new, applied) = match reload(&control, &manifest.path, &outputs, &mut watch).await
            {
                Some(reloaded) => reloaded,
                None => continue,
            };
            pending = !applied;
            if applied {
                manifest = new;
            }
            continue;
        }
        for i in services {
            rebuild(&control, &manifest, i).await;
        }
    }
}

/// Builds service `i` of `manifest` and deploys what it built, reporting
/// each step on stderr.
async fn rebuild(control: &ControlPlane, manifest: &Manifest, i: usize) {
    let entry = &manifest.services[i];
    let name = &entry.spec.name;
    let serving = || async {
        match control.service(name.clone()).await {
            Ok(s) => format!("revision {} keeps serving", s.record.active.number),
            Err(_) => "nothing changed".to_owned(),
        }
    };
    if entry.build.is_some() {
        eprintln!("berth: {name}: sources changed, building");
        let (m, e) = (manifest.clone(), entry.clone());
        let built = tokio::task::spawn_blocking(move || build_service(&m, &e)).await;
        if let Err(e) = built.map_err(anyhow::Error::from).and_then(|r| r) {
            eprintln!("berth: {name}: {e:#}; {}", serving().await);
            return;
        }
    } else {
        eprintln!("berth: {name}: its component changed");
    }
    let bytes = match tokio::fs::read(&entry.component).await {
        Ok(bytes) => bytes,
        Err(e) => {
            let file = entry.component.display();
            eprintln!("berth: {name}: reading {file}: {e}; {}", serving().await);
            return;
        }
    };
    match deploy_service(control, manifest, entry, bytes, true).await {
        Ok(Some(revision)) => eprintln!(
            "berth: {name}: revision {} is serving ({})",
            revision.number,
            revision.artifact.short()
        ),
        Ok(None) => eprintln!("berth: {name}: the component is unchanged"),
        Err(e) => eprintln!("berth: {name}: not deployed: {e:#}; {}", serving().await),
    }
}

/// Reads the changed manifest and, if it is valid, watches what it
/// names (at once, so that no save made during its build is missed), then
/// builds and deploys it: `None` (reported) when it is invalid, else the
/// manifest and whether it is applied (not when a build failed or the
/// deploy was refused).
async fn reload(
    control: &ControlPlane,
    path: &Path,
    outputs: &[PathBuf],
    watch: &mut Watch,
) -> Option<(Manifest, bool)> {
    eprintln!("berth: {} changed, reading it again", path.display());
    let manifest = match Manifest::load(path) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("berth: {e}\nberth: the services keep serving as they were");
            return None;
        }
    };
    match Watch::new(&manifest, outputs) {
        Ok(new) => *watch = new,
        Err(e) => {
            eprintln!("berth: {e:#}\nberth: the services keep serving as they were");
            return None;
        }
    }
    let m = manifest.clone();
    let built = tokio::task::spawn_blocking(move || super::up::build(&m)).await;
    let built = built.map_err(anyhow::Error::from).and_then(|r| r);
    let result = match built.and_then(|()| Ok(manifest.check_components()?)) {
        Err(e) => {
            eprintln!(
                "berth: {e:#}\nberth: the services keep serving as they were; \
                 the manifest is tried again at the next change"
            );
            return Some((manifest, false));
        }
        Ok(()) => deploy_manifest(control, &manifest, true).await,
    };
    match result {
        Ok(()) => {
            eprintln!("berth: serving {} as it is now", path.display());
            Some((manifest, true))
        }
        Err(e) => {
            eprintln!(
                "berth: {e:#}\nberth: the manifest is applied only up to that service; \
                 it is tried again at the next change"
            );
            Some((manifest, false))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_sources_leave_out_outputs_and_hidden_files() {
        let below = Sources::Below { root: "/p".into() };
        let outputs = [PathBuf::from("/p/out/app.bin"), PathBuf::from("/p/state")];
        for yes in ["/p/app.py", "/p/src/lib.rs", "/p/Cargo.toml"] {
            assert!(below.matches(Path::new(yes), false, &outputs), "{yes}");
        }
        for no in [
            "/p/app.wasm",
            "/p/out/app.bin",
            "/p/state/berth.db-wal",
            "/p/target/release/x",
            "/p/node_modules/a/b.js",
            "/p/.venv/bin/python",
            "/p/.git/index",
            "/p/src/.lib.rs.swp",
            "/p/pkg/__pycache__/x.pyc",
            "/elsewhere/app.py",
        ] {
            assert!(!below.matches(Path::new(no), false, &outputs), "{no}");
        }
    }

    #[test]
    fn patterns_match_below_the_root_and_folders_made_or_moved() {
        let build: crate::values::manifest::BuildSpec = toml::from_str(
            "command = \"make\"\nwatch = [\"src/**/*.rs\", \"./Cargo.toml\", \"**/*.py\"]",
        )
        .unwrap();
        let sources = Sources::Patterns {
            root: "/p".into(),
            set: build.watch_set().unwrap(),
        };
        let file = |p: &str| sources.matches(Path::new(p), false, &[]);
        for yes in [
            "/p/src/lib.rs",
            "/p/src/a/b.rs",
            "/p/Cargo.toml",
            "/p/app.py",
            "/p/pkg/mod.py",
        ] {
            assert!(file(yes), "{yes}");
        }
        for no in [
            "/p/src/lib.txt",
            "/p/x/Cargo.toml",
            "/q/Cargo.toml",
            "/p/.venv/lib/site.py",
            "/p/target/x.rs",
        ] {
            assert!(!file(no), "{no}");
        }
        // A folder moved in may hold sources no event named.
        assert!(sources.matches(Path::new("/p/src/handlers"), true, &[]));
        assert!(!sources.matches(Path::new("/p/target/debug"), true, &[]));
    }
}
