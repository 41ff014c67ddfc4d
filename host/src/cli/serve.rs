//! `berth serve --state DIR`: the long-running host. It restores every
//! service from the state directory, serves them on `--listen`, runs their
//! subscriptions and schedules, and takes deploys, upgrades, rollbacks,
//! removals and events on the admin API (`--admin-listen`).
//!
//! State directory layout (see `docs/operations.md`):
//!
//! ```text
//! DIR/berth.db        services, revisions, artifact index, event queue (SQLite, WAL)
//! DIR/usage.db        the usage ledger: one record per invocation (SQLite, WAL)
//! DIR/artifacts/      <sha256>.wasm, the uploaded components
//! DIR/code/           compiled code, one entry per (artifact, engine)
//! DIR/lock            held while a host uses the directory
//! ```

use super::host::Host;
use crate::admin::{self, Auth};
use crate::engine::EngineOptions;
use crate::units::ByteSize;
use anyhow::Context;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;
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

    #[command(flatten)]
    host: super::host::HostArgs,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let auth = auth(&args)?;
    let host = Host::open(args.host.options(
        args.state.clone(),
        None,
        EngineOptions::default(),
        args.max_upload,
    )?)
    .await?;
    let restored = host.runtime.services().len();

    let public = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let admin_listener = tokio::net::TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("listening on {} for the admin API", args.admin_listen))?;
    let public_addr = public.local_addr()?;
    let admin_addr = admin_listener.local_addr()?;
    host.runtime.add_listener(public_addr);
    host.runtime.add_listener(admin_addr);
    crate::telemetry::flush();
    eprintln!(
        "berth: serving {restored} service{} on http://{public_addr}",
        if restored == 1 { "" } else { "s" }
    );
    eprintln!("berth: admin API on http://{admin_addr}");

    let stop = CancellationToken::new();
    let public_task = tokio::spawn(crate::http::accept(
        public,
        crate::http::public_handler(host.runtime.clone(), public_addr),
        stop.clone(),
    ));
    let admin_task = tokio::spawn(crate::http::accept(
        admin_listener,
        admin::handler(host.control.clone(), auth),
        stop.clone(),
    ));
    crate::shutdown::signal().await;
    stop.cancel();
    host.control.shutdown();
    let listeners = vec![public_task.await?, admin_task.await?];
    crate::http::drain(listeners, &host.runtime).await;
    host.close();
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
