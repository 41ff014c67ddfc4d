//! `berth up [MANIFEST]`: validate the manifest, build (with `--build`),
//! deploy every service to a host of its own, and only then listen.
//!
//! The host is the same as `berth serve`'s, on a temporary state directory
//! (in memory when the system has a memory-backed directory; removed on
//! exit) unless `--state` names one; compiled code goes to the
//! user's cache, so a second `up` does not recompile.

use super::host_args::{HostArgs, ListenArgs, TokenArgs};
use crate::control::state::RevisionRecord;
use crate::control::{ControlError, ControlPlane};
use crate::host::{Host, Listeners};
use crate::values::digest::Digest;
use crate::values::manifest::{Manifest, ServiceEntry};
use crate::values::units::ByteSize;
use crate::wasm::engine::EngineOptions;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The manifest to run.
    #[arg(default_value = "berth.toml")]
    manifest: PathBuf,

    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,

    /// Also serve the admin API (metrics, usage, events, deploys) here.
    /// Off loopback, a token is required.
    #[arg(long)]
    admin_listen: Option<SocketAddr>,

    #[command(flatten)]
    token: TokenArgs,

    #[command(flatten)]
    edge: ListenArgs,

    /// Run each service's build command before loading.
    #[arg(long)]
    build: bool,

    /// Build, then rebuild a service whenever its sources change and swap
    /// to the new revision live (requests in flight finish on the old one).
    /// A failing build leaves the serving revision alone. The manifest is
    /// watched too.
    #[arg(long)]
    watch: bool,

    /// Keep state (events, schedules) in this directory across runs,
    /// instead of a temporary one.
    #[arg(long)]
    state: Option<PathBuf>,

    /// Directory of the compiled-code cache [default: $XDG_CACHE_HOME/berth/code].
    #[arg(long, env = "BERTH_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    #[command(flatten)]
    host: HostArgs,

    /// Engine tuning, for benchmarks: do not use the pooling allocator.
    #[arg(long, hide = true)]
    no_pooling: bool,

    /// Engine tuning, for benchmarks: initialize memories by copying, not
    /// from copy-on-write images.
    #[arg(long, hide = true)]
    no_cow: bool,

    /// Engine tuning, for benchmarks: linear-memory bytes kept resident per
    /// pool slot.
    #[arg(long, hide = true)]
    memory_keep_resident: Option<ByteSize>,

    /// Engine tuning, for benchmarks: reset pool slots without scanning for
    /// touched pages.
    #[arg(long, hide = true)]
    no_pagemap_scan: bool,
}

/// A state directory removed when dropped.
struct TempState(PathBuf);

impl Drop for TempState {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let (public_tls, admin_tls) = args.edge.tls()?;
    if let Some(addr) = args.admin_listen {
        args.token.check(addr)?;
    } else {
        anyhow::ensure!(
            admin_tls.is_none(),
            "--admin-tls-cert is given but there is no admin API: add --admin-listen"
        );
    }
    let manifest = Manifest::load(&args.manifest)?;
    if args.build || args.watch {
        build(&manifest)?;
    }
    manifest.check_components()?;

    let (state, _temp) = match &args.state {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = ephemeral_state();
            (dir.clone(), Some(TempState(dir)))
        }
    };
    let (auth, token_file) = match args.admin_listen {
        Some(addr) => {
            let (auth, file) = args.token.auth(addr, &state)?;
            (Some(auth), file)
        }
        None => (None, None),
    };
    let cache = args.cache_dir.clone().unwrap_or_else(default_cache_dir);
    let state_dir = state.clone();
    let options = args
        .host
        .options(state, Some(cache), args.engine(), ByteSize::gib(4))?;
    let host = Host::open(options).await?;
    if let Some(logs) = host.control().logs() {
        super::telemetry::keep_service_logs(logs.clone());
    }
    deploy_exactly(&host, &manifest).await?;

    let public = host.bind(args.listen, "").await?;
    let admin = match (args.admin_listen, auth) {
        (Some(addr), Some(auth)) => Some((host.bind(addr, " for the admin API").await?, auth)),
        _ => None,
    };
    super::host_args::reload_on_hangup(public_tls.iter().chain(&admin_tls).cloned().collect());
    let (admin, auth) = match admin {
        Some((socket, auth)) => (Some((socket, admin_tls)), Some(auth)),
        None => (None, None),
    };
    let (public, admin) = args.edge.listeners((public, public_tls), admin);
    let admin = admin.zip(auth);
    let _note = super::host_args::announce(
        manifest.services.len(),
        &public,
        admin.as_ref().map(|(admin, _)| admin),
        token_file.as_deref(),
    )?;
    let _watching = match args.watch {
        true => {
            let outputs = vec![state_dir];
            Some(super::watch::start(
                host.control().clone(),
                manifest,
                outputs,
            )?)
        }
        false => None,
    };
    host.serve(Listeners { public, admin }, super::shutdown::signal())
        .await
}

impl UpArgs {
    /// The engine, with the tuning flags benchmarks use.
    fn engine(&self) -> EngineOptions {
        let defaults = EngineOptions::default();
        EngineOptions {
            pooling: !self.no_pooling,
            memory_init_cow: !self.no_cow,
            pagemap_scan: !self.no_pagemap_scan,
            memory_keep_resident: self
                .memory_keep_resident
                .unwrap_or(defaults.memory_keep_resident),
            ..defaults
        }
    }
}

/// Deploys exactly the manifest's services to `host`: each of them, and
/// removes any other (a `--state` directory may hold older ones).
async fn deploy_exactly(host: &Host, manifest: &Manifest) -> anyhow::Result<()> {
    deploy_manifest(host.control(), manifest, false).await
}

/// Deploys each of the manifest's services, and removes any other. With
/// `skip_unchanged`, a service whose serving revision already has its
/// component and configuration is left as it is.
pub(super) async fn deploy_manifest(
    control: &ControlPlane,
    manifest: &Manifest,
    skip_unchanged: bool,
) -> anyhow::Result<()> {
    // Every component in hand (read, or pulled) before any is deployed.
    let components = super::oci::manifest_components(manifest).await?;
    for (entry, bytes) in manifest.services.iter().zip(components) {
        deploy_service(control, manifest, entry, bytes, skip_unchanged).await?;
    }
    for stale in control.services().await? {
        let name = stale.record.active.service;
        if !manifest.services.iter().any(|s| s.spec.name == name) {
            control.remove(name).await?;
        }
    }
    Ok(())
}

/// Uploads and deploys one service of a manifest; errors about its
/// component point at its line. Returns the revision deployed, or `None`
/// when `skip_unchanged` found it serving already.
pub(super) async fn deploy_service(
    control: &ControlPlane,
    manifest: &Manifest,
    entry: &ServiceEntry,
    bytes: Vec<u8>,
    skip_unchanged: bool,
) -> anyhow::Result<Option<RevisionRecord>> {
    let in_manifest = |e: ControlError| -> anyhow::Error {
        match e {
            ControlError::InvalidComponent(e) => manifest
                .component_error(entry, format!("{}: {e}", entry.component.display()))
                .into(),
            other => anyhow::Error::new(other)
                .context(format!("deploying service `{}`", entry.spec.name)),
        }
    };
    let name = entry.spec.name.clone();
    if skip_unchanged && let Ok(serving) = control.service(name.clone()).await {
        let active = &serving.record.active;
        if active.artifact == Digest::of(&bytes) && active.config == entry.spec.config {
            return Ok(None);
        }
    }
    let (artifact, _) = control.upload(bytes).await.map_err(in_manifest)?;
    let revision = control
        .deploy(name, artifact.digest, entry.spec.config.clone())
        .await
        .map_err(in_manifest)?;
    Ok(Some(revision))
}

/// Runs each service's build command, in manifest order, stopping at the
/// first that fails.
pub(super) fn build(manifest: &Manifest) -> anyhow::Result<()> {
    for entry in &manifest.services {
        build_service(manifest, entry)?;
    }
    Ok(())
}

/// Runs a service's build command, if it has one; its output goes to
/// stderr.
pub(super) fn build_service(manifest: &Manifest, entry: &ServiceEntry) -> anyhow::Result<()> {
    let Some(spec) = &entry.build else {
        return Ok(());
    };
    let dir = spec.dir(&manifest.dir);
    eprintln!(
        "berth: building {}: {} (in {})",
        entry.spec.name,
        spec.command,
        dir.display()
    );
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(&spec.command)
        .current_dir(&dir)
        .stdout(std::io::stderr())
        .status()
        .with_context(|| format!("running the build command of service `{}`", entry.spec.name))?;
    anyhow::ensure!(
        status.success(),
        "the build command of service `{}` failed ({status})",
        entry.spec.name
    );
    Ok(())
}

/// A fresh state directory that lives only as long as the process: in a
/// memory-backed directory when there is one (`$XDG_RUNTIME_DIR`, else
/// `/dev/shm`), where the state's syncs to disk cost nothing, else in the
/// temporary directory.
fn ephemeral_state() -> PathBuf {
    let name = format!(
        "berth-up-{}-{}",
        std::process::id(),
        crate::values::id::InvocationId::new()
    );
    let memory = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("/dev/shm")])
        .filter(|p| p.is_absolute());
    for base in memory {
        let dir = base.join(&name);
        if std::fs::create_dir(&dir).is_ok() {
            return dir;
        }
    }
    std::env::temp_dir().join(name)
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("berth").join("code")
}
