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

use super::host_args::{HostArgs, ListenArgs, TokenArgs};
use crate::control::cluster::ClusterOptions;
use crate::host::{Host, Listeners};
use crate::values::units::ByteSize;
use crate::wasm::engine::EngineOptions;
use clap::Args;
use std::net::SocketAddr;
use std::path::PathBuf;

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

    #[command(flatten)]
    token: TokenArgs,

    #[command(flatten)]
    edge: ListenArgs,

    /// Largest component the admin API accepts.
    #[arg(long, default_value = "128MiB")]
    max_upload: ByteSize,

    #[command(flatten)]
    host: HostArgs,

    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Joining a cluster of nodes on NATS JetStream.
#[derive(Debug, Args)]
struct ClusterArgs {
    /// Join the cluster whose NATS servers are at these URLs
    /// (`nats://HOST:PORT`, or `tls://`; comma-separated). Credentials go
    /// in a URL (`nats://user:password@host:4222`, `nats://token@host:4222`)
    /// or in --nats-creds.
    #[arg(
        long,
        env = "BERTH_CLUSTER",
        value_delimiter = ',',
        hide_env_values = true
    )]
    cluster: Vec<String>,

    /// This node's name in the cluster (default: the host name). Every
    /// node needs its own.
    #[arg(long, env = "BERTH_NODE")]
    node: Option<String>,

    /// A NATS credentials file (`.creds`: user JWT and nkey seed).
    #[arg(long, requires = "cluster")]
    nats_creds: Option<PathBuf>,

    /// A CA certificate (PEM) to verify `tls://` NATS servers with.
    #[arg(long, requires = "cluster")]
    nats_ca: Option<PathBuf>,

    /// Replicas of the buckets and streams Berth makes in JetStream
    /// (default: the cluster's servers, at most 3).
    #[arg(long, requires = "cluster")]
    cluster_replicas: Option<usize>,
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    args.token.check(args.admin_listen)?;
    let (auth, token_file) = args.token.auth(args.admin_listen, &args.state)?;
    let (public_tls, admin_tls) = args.edge.tls()?;
    let mut options = args.host.options(
        args.state.clone(),
        None,
        EngineOptions::default(),
        args.max_upload,
    )?;
    if let Some(node) = &args.cluster.node {
        options.node = node.clone();
        if let Some(traces) = &mut options.traces {
            traces.node = node.clone();
        }
    }
    if !args.cluster.cluster.is_empty() {
        options.cluster = Some(ClusterOptions {
            urls: args.cluster.cluster.clone(),
            node: options.node.clone(),
            creds: args.cluster.nats_creds.clone(),
            ca: args.cluster.nats_ca.clone(),
            replicas: args.cluster.cluster_replicas,
        });
    }
    let clustered = options.cluster.as_ref().map(|c| c.display_urls());
    let host = Host::open(options).await?;
    if let Some(logs) = host.control().logs() {
        super::telemetry::keep_service_logs(logs.clone());
    }
    let restored = host.runtime().registry().services().len();

    let public = host.bind(args.listen, "").await?;
    let admin = host.bind(args.admin_listen, " for the admin API").await?;
    super::host_args::reload_on_hangup(public_tls.iter().chain(&admin_tls).cloned().collect());
    let (public, admin) = args
        .edge
        .listeners((public, public_tls), Some((admin, admin_tls)));
    let admin = admin.expect("serve always has an admin listener");
    let _note = super::host_args::announce(restored, &public, Some(&admin), token_file.as_deref())?;
    if let Some(urls) = clustered {
        eprintln!(
            "berth: node {} of the cluster at {urls}",
            host.control().node_report().name
        );
    }
    let listeners = Listeners {
        public,
        admin: Some((admin, auth)),
    };
    host.serve(listeners, super::shutdown::signal()).await
}
