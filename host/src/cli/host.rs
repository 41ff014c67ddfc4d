//! Assembling a host (shared by `up` and `serve`): state, engine, code
//! cache, event bus, runtime, control plane, restored services.

use crate::artifact::ArtifactStore;
use crate::cache::CodeCache;
use crate::control::{ControlPlane, Events};
use crate::engine::{BerthEngine, EngineOptions};
use crate::events::bus::Bus;
use crate::events::dispatch::Dispatcher;
use crate::events::schedule::Scheduler;
use crate::events::sqlite::SqliteBus;
use crate::runtime::{EventsContext, Runtime};
use crate::state::{DB_FILE, State};
use crate::units::ByteSize;
use crate::usage::{Ledger, USAGE_FILE};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// What a host is made of.
pub struct HostOptions {
    /// The state directory (created if missing).
    pub state: PathBuf,
    /// Where compiled code goes; default `STATE/code`.
    pub cache: Option<PathBuf>,
    /// Engine settings.
    pub engine: EngineOptions,
    /// The largest component accepted.
    pub max_upload: ByteSize,
    /// The largest event accepted.
    pub max_event_size: ByteSize,
    /// CPU-bound invocations of one service running at once.
    pub cpu_turns: usize,
    /// How long usage records are kept; `None` keeps no ledger (for
    /// benchmarks of its cost).
    pub usage_retention: Option<std::time::Duration>,
    /// Where secrets are read from.
    pub secrets: crate::capabilities::Secrets,
}

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
    #[arg(long, default_value = "30d", value_parser = crate::units::parse_duration)]
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
    #[arg(long, default_value = crate::capabilities::DEFAULT_SECRET_PREFIX)]
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
        })
    }
}

impl HostArgs {
    /// The secrets source these arguments describe.
    fn secrets(&self) -> anyhow::Result<crate::capabilities::Secrets> {
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
        Ok(crate::capabilities::Secrets::new(
            self.secrets_dir.clone(),
            self.secret_env_prefix.clone(),
        ))
    }
}

/// A running host. [`Host::close`] it once its invocations are drained.
pub struct Host {
    pub runtime: Arc<Runtime>,
    pub control: Arc<ControlPlane>,
    /// Held for as long as the host runs.
    _lock: std::fs::File,
}

impl Host {
    /// Opens the state directory (locking it), builds everything and
    /// restores the stored services.
    pub async fn open(options: HostOptions) -> anyhow::Result<Host> {
        let dir = &options.state;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let lock = lock(dir)?;
        let db = dir.join(DB_FILE);
        let state =
            State::open(&db).with_context(|| format!("opening the state in {}", dir.display()))?;
        let state = Arc::new(Mutex::new(state));
        let artifacts = ArtifactStore::open(dir.join("artifacts"))
            .with_context(|| format!("opening {}", dir.join("artifacts").display()))?;
        let engine = BerthEngine::new(&options.engine)?;
        let cache_dir = options.cache.unwrap_or_else(|| dir.join("code"));
        let cache = CodeCache::new(&cache_dir, engine.engine())
            .with_context(|| format!("opening the code cache in {}", cache_dir.display()))?;
        let runtime = Runtime::new(engine, options.cpu_turns);
        runtime.set_secrets(options.secrets);
        runtime.start_reaper(std::time::Duration::from_millis(500));
        if let Some(retention) = options.usage_retention {
            let path = dir.join(USAGE_FILE);
            let ledger = Ledger::open(&path, retention)
                .with_context(|| format!("opening the usage ledger {}", path.display()))?;
            runtime.set_ledger(ledger);
        }

        let bus: Arc<dyn Bus> = Arc::new(
            SqliteBus::open(&db)
                .with_context(|| format!("opening the event bus in {}", db.display()))?,
        );
        runtime.set_events(EventsContext {
            bus: bus.clone(),
            max_event_size: options.max_event_size.bytes() as usize,
        });
        let events = Events {
            dispatcher: Dispatcher::new(runtime.clone(), bus.clone()),
            scheduler: Scheduler::new(runtime.clone(), bus.clone(), state.clone()),
            bus,
        };
        let control = Arc::new(ControlPlane::new(
            runtime.clone(),
            state,
            artifacts,
            cache,
            options.max_upload,
            events,
            options.max_event_size,
        ));
        control.restore().await?;
        Ok(Host {
            runtime,
            control,
            _lock: lock,
        })
    }
}

impl Host {
    /// Stores the last usage records (see [`crate::usage`]).
    pub fn close(&self) {
        if let Some(ledger) = self.runtime.ledger() {
            ledger.close();
        }
    }
}

/// Holds an exclusive lock on `DIR/lock` for as long as the host runs, so
/// two hosts never share a state directory.
fn lock(dir: &Path) -> anyhow::Result<std::fs::File> {
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
