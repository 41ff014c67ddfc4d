//! `berth serve --state DIR`: the long-running host. It restores every
//! service from the state directory, serves them on `--listen`, and takes
//! deploys, upgrades, rollbacks and removals on the admin API
//! (`--admin-listen`).
//!
//! State directory layout:
//!
//! ```text
//! DIR/berth.db        services, revisions, artifact index (SQLite, WAL)
//! DIR/artifacts/      <sha256>.wasm, the uploaded components
//! DIR/code/           compiled code, one entry per (artifact, engine)
//! DIR/lock            held while a host uses the directory
//! ```

use crate::admin::{self, Auth};
use crate::artifact::ArtifactStore;
use crate::cache::CodeCache;
use crate::control::ControlPlane;
use crate::engine::{BerthEngine, EngineOptions};
use crate::runtime::Runtime;
use crate::state::{DB_FILE, State};
use crate::units::ByteSize;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// The state directory (created if missing).
    #[arg(long)]
    state: PathBuf,

    /// Address to serve the services on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:3000")]
    listen: SocketAddr,

    /// Address of the admin API (port 0 picks a free port). Off loopback,
    /// a token is required.
    #[arg(long, default_value = "127.0.0.1:3001")]
    admin_listen: SocketAddr,

    /// Bearer token the admin API requires.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// A file holding the admin token (its first line).
    #[arg(long, conflicts_with = "admin_token")]
    admin_token_file: Option<PathBuf>,

    /// Largest component the admin API accepts.
    #[arg(long, default_value = "128MiB")]
    max_upload: ByteSize,

    /// Instances that may run at once across all services.
    #[arg(long, default_value_t = EngineOptions::default().max_instances)]
    max_instances: u32,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let auth = auth(&args)?;
    std::fs::create_dir_all(&args.state)
        .with_context(|| format!("creating the state directory {}", args.state.display()))?;
    let _lock = lock(&args.state)?;
    let state = State::open(&args.state.join(DB_FILE))
        .with_context(|| format!("opening the state in {}", args.state.display()))?;
    let artifacts = ArtifactStore::open(args.state.join("artifacts"))
        .with_context(|| format!("opening {}", args.state.join("artifacts").display()))?;

    let engine = BerthEngine::new(&EngineOptions {
        max_instances: args.max_instances,
        ..EngineOptions::default()
    })?;
    let cache = CodeCache::new(args.state.join("code"), engine.engine())
        .with_context(|| format!("opening {}", args.state.join("code").display()))?;
    let runtime = Runtime::new(engine);
    let control = Arc::new(ControlPlane::new(
        runtime.clone(),
        state,
        artifacts,
        cache,
        args.max_upload,
    ));
    let restored = control.restore().await?;

    let public = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("listening on {} for the admin API", args.admin_listen))?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    eprintln!(
        "berth: serving {restored} service{} on http://{public_addr}",
        if restored == 1 { "" } else { "s" }
    );
    eprintln!("berth: admin API on http://{admin_addr}");

    let stop = CancellationToken::new();
    let public_task = tokio::spawn(crate::http::accept(
        public,
        crate::http::public_handler(runtime.clone(), public_addr),
        stop.clone(),
    ));
    let admin_task = tokio::spawn(crate::http::accept(
        admin_listener,
        admin::handler(control.clone(), auth),
        stop.clone(),
    ));
    crate::shutdown::signal().await;
    stop.cancel();
    let listeners = vec![public_task.await?, admin_task.await?];
    crate::http::drain(listeners, &runtime).await;
    Ok(())
}

/// The token rules: a token from the flag, `BERTH_TOKEN` or a file; none
/// needed on loopback; mandatory anywhere else.
fn auth(args: &ServeArgs) -> anyhow::Result<Auth> {
    let token = match &args.admin_token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading the admin token from {}", path.display()))?;
            Some(text.lines().next().unwrap_or("").trim().to_owned())
        }
        None => args.admin_token.clone(),
    }
    .filter(|t| !t.is_empty());
    match token {
        Some(token) => Ok(Auth::token(token)),
        None if args.admin_listen.ip().is_loopback() => Ok(Auth::none()),
        None => anyhow::bail!(
            "the admin API would listen on {}, which is not loopback, without a token: set --admin-token, BERTH_TOKEN or --admin-token-file",
            args.admin_listen
        ),
    }
}

/// Holds an exclusive lock on `DIR/lock` for as long as the host runs, so
/// two hosts never share a state directory.
fn lock(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another berth is using the state directory {}",
            dir.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}
