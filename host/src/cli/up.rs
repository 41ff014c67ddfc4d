//! `berth up [MANIFEST]`: validate the manifest, build (with `--build`),
//! load every component, and only then listen.

use crate::cache::CodeCache;
use crate::component;
use crate::engine::{BerthEngine, EngineOptions};
use crate::manifest::Manifest;
use crate::runtime::{Runtime, Service};
use crate::units::ByteSize;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Args)]
pub struct UpArgs {
    /// The manifest to run.
    #[arg(default_value = "berth.toml")]
    manifest: PathBuf,

    /// Address to serve HTTP on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,

    /// Run each service's build command before loading.
    #[arg(long)]
    build: bool,

    /// Directory of the compiled-code cache [default: $XDG_CACHE_HOME/berth/code].
    #[arg(long, env = "BERTH_CACHE_DIR")]
    cache_dir: Option<PathBuf>,

    /// Instances that may run at once across all services.
    #[arg(long, default_value_t = EngineOptions::default().max_instances)]
    max_instances: u32,

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

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let manifest = Manifest::load(&args.manifest)?;
    if args.build {
        build(&manifest)?;
    }
    manifest.check_components()?;

    let defaults = EngineOptions::default();
    let options = EngineOptions {
        max_instances: args.max_instances,
        pooling: !args.no_pooling,
        memory_init_cow: !args.no_cow,
        pagemap_scan: !args.no_pagemap_scan,
        memory_keep_resident: args
            .memory_keep_resident
            .unwrap_or(defaults.memory_keep_resident),
        ..defaults
    };
    let engine = BerthEngine::new(&options)?;
    let cache_dir = args.cache_dir.unwrap_or_else(default_cache_dir);
    let cache = CodeCache::new(&cache_dir, engine.engine())
        .with_context(|| format!("opening the code cache in {}", cache_dir.display()))?;

    let mut services = Vec::with_capacity(manifest.services.len());
    for entry in &manifest.services {
        let bytes = std::fs::read(&entry.component).map_err(|e| {
            manifest.component_error(
                entry,
                format!("cannot read {}: {e}", entry.component.display()),
            )
        })?;
        let (handler, report) = component::load_http(&engine, &cache, &bytes).map_err(|e| {
            manifest.component_error(entry, format!("{}: {e}", entry.component.display()))
        })?;
        tracing::info!(
            service = %entry.spec.name,
            digest = %handler.digest.short(),
            code = %report.cache,
            elapsed_ms = report.elapsed.as_secs_f64() * 1000.0,
            "loaded"
        );
        services.push(Arc::new(Service::new(entry.spec.clone(), 1, handler)));
    }
    let count = services.len();
    let runtime = Runtime::new(engine);
    runtime.replace_all(services)?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    eprintln!(
        "berth: serving {count} service{} on http://{addr}",
        if count == 1 { "" } else { "s" }
    );
    crate::http::serve(listener, runtime, crate::shutdown::signal()).await
}

/// Runs each service's build command, in manifest order, stopping at the
/// first that fails.
pub(super) fn build(manifest: &Manifest) -> anyhow::Result<()> {
    for entry in &manifest.services {
        let Some(spec) = &entry.build else { continue };
        let dir = match &spec.workdir {
            Some(w) => manifest.dir.join(w),
            None => manifest.dir.clone(),
        };
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
            .with_context(|| {
                format!("running the build command of service `{}`", entry.spec.name)
            })?;
        anyhow::ensure!(
            status.success(),
            "the build command of service `{}` failed ({status})",
            entry.spec.name
        );
    }
    Ok(())
}

fn default_cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("berth").join("code")
}
