//! The `berth` command line: one module per command, on top of every other
//! layer.
//!
//! `up` and `serve` parse their flags and run a [`Host`](crate::host::Host);
//! the other commands talk to a running host through its admin API
//! ([`client`]; `--host`/`BERTH_HOST`, token in `BERTH_TOKEN`).
//! [`telemetry`] sets up logging; [`shutdown`] waits for the signals.

mod admin_token;
pub mod client;
mod deploy;
mod events;
mod health;
mod host_args;
mod inspect;
mod keys;
mod logs;
mod ls;
mod new;
mod nodes;
mod oci;
/// What the fuzz targets in `fuzz/` reach of the CLI (compiled only
/// there, with `--cfg fuzzing`): `berth pull`.
#[cfg(fuzzing)]
pub mod fuzzing {
    pub use super::oci::{Pulled, pull};
}
mod output;
mod publish;
mod revisions;
mod rm;
mod rollback;
mod serve;
pub mod shutdown;
pub mod telemetry;
mod up;
mod usage;
mod watch;

use clap::{Args, Parser, Subcommand};
use client::Client;
use std::process::ExitCode;

/// Berth: a WebAssembly host for microservices and functions.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// How logs are written to stderr: text, or JSON (one object per line).
    #[arg(
        long,
        global = true,
        env = "BERTH_LOG_FORMAT",
        value_enum,
        default_value_t = telemetry::LogFormat::Text
    )]
    log_format: telemetry::LogFormat,

    /// How long log lines gather before they are written to stderr
    /// together (fewer system calls; a crash loses the last window's
    /// lines). `0ms` writes each line as it is logged.
    #[arg(
        long,
        global = true,
        env = "BERTH_LOG_BUFFER",
        default_value = "5ms",
        value_parser = crate::values::units::parse_duration
    )]
    log_buffer: std::time::Duration,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a service project from a template (Rust, JavaScript, Python).
    New(new::NewArgs),
    /// Run the services of a manifest in the foreground.
    Up(up::UpArgs),
    /// Run the long-lived host: durable state, admin API, live deploys.
    Serve(serve::ServeArgs),
    /// Deploy a service (or every service of a manifest) to a host.
    Deploy(deploy::DeployArgs),
    /// List the services of a host.
    Ls(ls::LsArgs),
    /// Show one service.
    Inspect(inspect::InspectArgs),
    /// List the revisions of a service.
    Revisions(revisions::RevisionsArgs),
    /// Switch a service back to an older revision.
    Rollback(rollback::RollbackArgs),
    /// Remove a service.
    Rm(rm::RmArgs),
    /// Publish an event.
    Publish(publish::PublishArgs),
    /// Show event queues; list, replay or purge dead letters.
    Events(events::EventsArgs),
    /// Show what services used: invocations, fuel, GB-seconds, time.
    Usage(usage::UsageArgs),
    /// Show a service's recent log lines (its guests' output and the
    /// host's lines about its invocations); -f follows them.
    Logs(logs::LogsArgs),
    /// List the nodes of a cluster (a standalone host shows itself).
    Nodes(nodes::NodesArgs),
    /// Ask a host's /healthz or /readyz; exit 0 only on 200.
    Health(health::HealthArgs),
    /// Make, list and revoke API keys.
    Keys(keys::KeysArgs),
    /// Push a component to an OCI registry (the Wasm artifact layout).
    Push(oci::PushArgs),
    /// Pull a component from an OCI registry, its digests verified.
    Pull(oci::PullArgs),
}

/// How client commands reach a host.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The host's admin API.
    #[arg(
        long,
        env = "BERTH_HOST",
        default_value = "http://127.0.0.1:3001",
        global = true
    )]
    host: String,

    /// The admin API's bearer token. Without it (and --token-file), the
    /// token a host on this machine made for itself is used, found by the
    /// --host address.
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,

    /// A file holding the admin API's bearer token (its first line).
    #[arg(
        long,
        env = "BERTH_TOKEN_FILE",
        global = true,
        conflicts_with = "token"
    )]
    token_file: Option<std::path::PathBuf>,

    /// A CA certificate (PEM) to verify an `https://` host with (default:
    /// the system's roots).
    #[arg(long, env = "BERTH_CA", global = true)]
    ca: Option<std::path::PathBuf>,

    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

impl ClientArgs {
    fn client(&self) -> anyhow::Result<Client> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.clone()),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).map_err(|e| {
                    anyhow::anyhow!("reading the admin token from {}: {e}", file.display())
                })?;
                Some(admin_token::first_line(&text))
            }
            (None, None) => None,
        };
        let mut client = Client::with_ca(&self.host, token, self.ca.as_deref())?;
        if !client.has_token()
            && let Some(token) = admin_token::find(client.authority())
        {
            client = client.with_token(token);
        }
        Ok(client)
    }
}

/// Parses the command line, runs the command, and turns its error into a
/// message on stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let logs = telemetry::init(cli.log_format, cli.log_buffer);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::New(args) => new::run(args),
            Command::Up(args) => up::run(args).await,
            Command::Serve(args) => serve::run(args).await,
            Command::Deploy(args) => deploy::run(args).await,
            Command::Ls(args) => ls::run(args).await,
            Command::Inspect(args) => inspect::run(args).await,
            Command::Revisions(args) => revisions::run(args).await,
            Command::Rollback(args) => rollback::run(args).await,
            Command::Rm(args) => rm::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Events(args) => events::run(args).await,
            Command::Usage(args) => usage::run(args).await,
            Command::Logs(args) => logs::run(args).await,
            Command::Nodes(args) => nodes::run(args).await,
            Command::Health(args) => health::run(args).await,
            Command::Keys(args) => keys::run(args).await,
            Command::Push(args) => oci::run_push(args).await,
            Command::Pull(args) => oci::run_pull(args).await,
        }
    });
    // Invocations still running past the drain limit are abandoned here.
    runtime.shutdown_background();
    drop(logs);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
