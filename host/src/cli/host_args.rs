//! The flags `up` and `serve` share: the host's settings, and who may use
//! its admin API.

use crate::control::admin::Auth;
use crate::host::HostOptions;
use crate::values::units::ByteSize;
use crate::wasm::engine::EngineOptions;
use crate::wasm::secrets::{DEFAULT_SECRET_PREFIX, Secrets};
use anyhow::Context;
use std::net::SocketAddr;
use std::path::PathBuf;

/// The settings of a host that `up` and `serve` share.
#[derive(clap::Args, Debug, Clone)]
pub struct HostArgs {
    /// Largest event accepted (attributes and data).
    #[arg(long, default_value = "256KiB")]
    pub max_event_size: ByteSize,

    /// Instances that may run at once across all services.
    #[arg(long, default_value_t = EngineOptions::default().max_instances)]
    pub max_instances: u32,

    /// CPU-bound invocations of one service that may run at once (default:
    /// the machine's cores but one, at least 1).
    #[arg(long)]
    pub cpu_turns: Option<usize>,

    /// How long usage records are kept (e.g. 30d, 12h).
    #[arg(long, default_value = "30d", value_parser = crate::values::units::parse_duration)]
    pub usage_retention: std::time::Duration,

    /// Keep no usage ledger (to measure what it costs).
    #[arg(long, hide = true)]
    pub no_usage: bool,

    /// A directory of secrets: one file per secret, named after it, that
    /// only its owner may read (mode 0600). Read at each invocation, so an
    /// updated file takes effect at once.
    #[arg(long, env = "BERTH_SECRETS_DIR")]
    pub secrets_dir: Option<PathBuf>,

    /// Host environment variables holding secrets start with this
    /// (`db-password` is then `BERTH_SECRET_DB_PASSWORD`); a file in
    /// --secrets-dir wins over a variable.
    #[arg(long, default_value = DEFAULT_SECRET_PREFIX)]
    pub secret_env_prefix: String,
}

impl HostArgs {
    /// The options of a host on `state`, with these settings (the engine's
    /// instance cap among them).
    pub fn options(
        &self,
        state: PathBuf,
        cache: Option<PathBuf>,
        engine: EngineOptions,
        max_upload: ByteSize,
    ) -> anyhow::Result<HostOptions> {
        Ok(HostOptions {
            state,
            cache,
            engine: EngineOptions {
                max_instances: self.max_instances,
                ..engine
            },
            max_upload,
            max_event_size: self.max_event_size,
            cpu_turns: self
                .cpu_turns
                .unwrap_or_else(crate::runtime::default_cpu_turns),
            usage_retention: (!self.no_usage).then_some(self.usage_retention),
            secrets: self.secrets()?,
            node: crate::control::cluster::hostname(),
            cluster: None,
        })
    }

    /// The secrets source these arguments describe.
    fn secrets(&self) -> anyhow::Result<Secrets> {
        if let Some(dir) = &self.secrets_dir {
            let meta = std::fs::metadata(dir)
                .with_context(|| format!("the secrets directory {}", dir.display()))?;
            anyhow::ensure!(
                meta.is_dir(),
                "the secrets directory {} is not a directory",
                dir.display()
            );
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    tracing::warn!(
                        dir = %dir.display(),
                        "the secrets directory is open to group or others (mode {mode:03o}); make it 0700"
                    );
                }
            }
        }
        Ok(Secrets::new(
            self.secrets_dir.clone(),
            self.secret_env_prefix.clone(),
        ))
    }
}

/// Who may use the admin API: the same flags, and the same rule, for `up`
/// and `serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// Bearer token the admin API requires (required off loopback).
    #[arg(long, env = "BERTH_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// A file holding the admin token (its first line).
    #[arg(long, conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,
}

impl TokenArgs {
    /// The admin API's auth on `addr`: the token from the flag,
    /// `BERTH_TOKEN` or a file; none needed on loopback; mandatory
    /// anywhere else (see [`Auth::for_listener`]).
    pub fn auth(&self, addr: SocketAddr) -> anyhow::Result<Auth> {
        let token = match &self.admin_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("reading the admin token from {}", path.display()))?;
                Some(text.lines().next().unwrap_or("").trim().to_owned())
            }
            None => self.admin_token.clone(),
        };
        Ok(Auth::for_listener(addr, token)?)
    }
}
