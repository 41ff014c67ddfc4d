//! The host as a library: a [`Host`] opens a state directory — state,
//! artifacts, code cache, usage ledger, event bus, runtime — restores its
//! services, and [serves](Host::serve) the public and admin listeners
//! until a shutdown future resolves, then drains. `berth up` and `berth
//! serve` are flag parsing around it.

use crate::control::admin::{self, Auth};
use crate::control::catalog::{Catalog, LocalCatalog};
use crate::control::cluster::bus::JetStreamBus;
use crate::control::cluster::firings::ClusterFirings;
use crate::control::cluster::logs::ClusterLogs;
use crate::control::cluster::usage::Shipper;
use crate::control::cluster::{Cluster, ClusterCatalog, ClusterOptions};
use crate::control::ledger::{Ledger, USAGE_FILE};
use crate::control::scheduler::{LocalFirings, Scheduler};
use crate::control::sqlite_bus::SqliteBus;
use crate::control::state::{DB_FILE, State};
use crate::control::traces::{OtlpTraces, TraceOptions};
use crate::control::{ControlPlane, Events, Parts};
use crate::runtime::Runtime;
use crate::runtime::logs::LogBook;
use crate::triggers::events::BusSink;
use crate::triggers::events::bus::Bus;
use crate::triggers::events::dispatch::Dispatcher;
use crate::triggers::http::Listener;
use crate::triggers::http::call::Calls;
use crate::triggers::http::gateway::Gateway;
use crate::values::trace::Spans;
use crate::values::units::ByteSize;
use crate::wasm::artifact::ArtifactStore;
use crate::wasm::cache::CodeCache;
use crate::wasm::engine::{BerthEngine, EngineOptions};
use crate::wasm::instance::Ports;
use crate::wasm::instance::output::{OutputLimits, Outputs};
use crate::wasm::instance::publish::EventPort;
use crate::wasm::secrets::Secrets;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What a host is made of.
#[derive(Debug, Clone)]
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
    pub usage_retention: Option<Duration>,
    /// Where secrets are read from.
    pub secrets: Secrets,
    /// This node's name (in a cluster, and in its reports).
    pub node: String,
    /// The cluster this node joins; `None`: standalone, all state in the
    /// state directory.
    pub cluster: Option<ClusterOptions>,
    /// Where traces go; `None`: nowhere.
    pub traces: Option<TraceOptions>,
    /// How much guests may write to stdout and stderr.
    pub output: OutputLimits,
    /// How many bytes of each service's recent log lines are kept in
    /// memory (`berth logs`); `None`: none.
    pub logs: Option<ByteSize>,
}

impl HostOptions {
    /// A host on state directory `state`, with the defaults of `berth
    /// serve`.
    pub fn new(state: impl Into<PathBuf>) -> HostOptions {
        HostOptions {
            state: state.into(),
            cache: None,
            engine: EngineOptions::default(),
            max_upload: ByteSize::mib(128),
            max_event_size: ByteSize::kib(256),
            cpu_turns: crate::runtime::default_cpu_turns(),
            usage_retention: Some(Duration::from_secs(30 * 86_400)),
            secrets: Secrets::default(),
            node: crate::control::cluster::hostname(),
            cluster: None,
            traces: None,
            output: OutputLimits::default(),
            logs: None,
        }
    }
}

/// The sockets a host serves: the public listener, and the admin API's
/// with who may use it (see [`Auth::for_listener`]).
pub struct Listeners {
    /// Where the services are served.
    pub public: Listener,
    /// Where the admin API is served, if anywhere.
    pub admin: Option<(Listener, Auth)>,
}

/// A host: its runtime and control plane over one state directory, which
/// it holds locked until it is dropped.
pub struct Host {
    runtime: Arc<Runtime>,
    control: Arc<ControlPlane>,
    gateway: Arc<Gateway>,
    ledger: Option<Arc<Ledger>>,
    /// The trace exporter, flushed on shutdown.
    traces: Option<Arc<OtlpTraces>>,
    /// A cluster node's watcher and heartbeat, stopped on shutdown.
    cluster: Option<(Cluster, CancellationToken, Vec<tokio::task::JoinHandle<()>>)>,
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
        let cluster = match &options.cluster {
            Some(cluster) => Some(Cluster::connect(cluster).await?),
            None => None,
        };
        let db = dir.join(DB_FILE);
        let state =
            State::open(&db).with_context(|| format!("opening the state in {}", dir.display()))?;
        let state = Arc::new(Mutex::new(state));
        let artifacts = ArtifactStore::open(dir.join("artifacts"))
            .with_context(|| format!("opening {}", dir.join("artifacts").display()))?;
        let engine = BerthEngine::new(&options.engine)?;
        let cache_dir = options.cache.clone().unwrap_or_else(|| dir.join("code"));
        let cache = CodeCache::new(&cache_dir)
            .with_context(|| format!("opening the code cache in {}", cache_dir.display()))?;
        let runtime = Runtime::new(engine, options.cpu_turns);
        runtime.start_reaper(Duration::from_millis(500));
        let ledger = match options.usage_retention {
            Some(retention) => {
                let path = dir.join(USAGE_FILE);
                let ledger = Ledger::open(&path, retention)
                    .with_context(|| format!("opening the usage ledger {}", path.display()))?;
                Some(ledger)
            }
            None => None,
        };
        // A standalone host's records go straight to its ledger; a cluster
        // node's go through JetStream, and its ledger collects everyone's.
        let usage = match (&cluster, &ledger, options.usage_retention) {
            (Some(cluster), Some(ledger), Some(retention)) => {
                let stream = crate::control::cluster::at_start("opening the usage stream", || {
                    crate::control::cluster::usage::open(cluster, retention)
                })
                .await?;
                let shipper = Arc::new(Shipper::new(ledger.clone()));
                runtime.meter().set_sink(shipper.clone());
                Some((shipper, stream, ledger.clone()))
            }
            (_, Some(ledger), _) => {
                runtime.meter().set_sink(ledger.clone());
                None
            }
            _ => None,
        };
        let traces = match &options.traces {
            Some(traces) => {
                Some(OtlpTraces::start(traces, &runtime).context("setting up trace export")?)
            }
            None => None,
        };
        let bus: Arc<dyn Bus> = match &cluster {
            Some(cluster) => Arc::new(
                crate::control::cluster::at_start("opening the event streams", || {
                    JetStreamBus::open(cluster.clone())
                })
                .await?,
            ),
            None => Arc::new(
                SqliteBus::open(&db)
                    .with_context(|| format!("opening the event bus in {}", db.display()))?,
            ),
        };
        runtime.set_ports(Ports {
            secrets: options.secrets.clone(),
            listeners: runtime.listeners().clone(),
            events: Some(EventPort {
                sink: Arc::new(BusSink(bus.clone())),
                max_event_size: options.max_event_size.bytes() as usize,
            }),
            calls: Some(Calls::new(&runtime)),
            spans: match &traces {
                Some(traces) => Spans::to(traces.clone()),
                None => Spans::default(),
            },
            output: Arc::new(Outputs::new(options.output)),
            memory: runtime.engine().memory().clone(),
        });
        let events = Events {
            dispatcher: Dispatcher::new(runtime.clone(), bus.clone()),
            scheduler: Scheduler::new(
                runtime.clone(),
                bus.clone(),
                match &cluster {
                    Some(cluster) => Arc::new(ClusterFirings(cluster.clone())),
                    None => Arc::new(LocalFirings(state.clone())),
                },
            ),
            bus,
        };
        let (catalog, cluster_catalog): (Arc<dyn Catalog>, _) = match &cluster {
            Some(cluster) => {
                let catalog = Arc::new(ClusterCatalog::new(cluster.clone(), artifacts.clone()));
                (catalog.clone(), Some(catalog))
            }
            None => (Arc::new(LocalCatalog::new(state)), None),
        };
        let gateway = Arc::new(Gateway::new(options.secrets.clone()));
        // A size of zero keeps none.
        let logs = options
            .logs
            .filter(|size| size.bytes() > 0)
            .map(|size| Arc::new(LogBook::new(&options.node, size.bytes() as usize)));
        if let Some(logs) = &logs {
            runtime.meter().set_logs(logs.clone());
        }
        let control = Arc::new(ControlPlane::new(Parts {
            runtime: runtime.clone(),
            catalog,
            node: options.node.clone(),
            artifacts,
            cache,
            max_upload: options.max_upload,
            events,
            max_event_size: options.max_event_size,
            ledger: ledger.clone(),
            gateway: gateway.clone(),
            logs: logs.clone(),
            traffic: Arc::default(),
            // Every node answers the others' questions, with its lines or
            // (keeping none) with none.
            cluster_logs: cluster.as_ref().map(|cluster| {
                ClusterLogs::new(&cluster.node, cluster.client().clone(), logs.clone())
            }),
        }));
        if cluster.is_some() {
            crate::control::cluster::at_start("loading the API keys", || async {
                control.load_keys().await.map_err(anyhow::Error::from)
            })
            .await?;
        } else {
            control.load_keys().await.context("loading the API keys")?;
        }
        let cluster = match (cluster, cluster_catalog) {
            (Some(cluster), Some(catalog)) => {
                Some(join(cluster, catalog, &control, gateway.clone(), usage).await)
            }
            _ => {
                control.restore().await?;
                None
            }
        };
        Ok(Host {
            runtime,
            control,
            gateway,
            ledger,
            cluster,
            traces,
            _lock: lock,
        })
    }

    /// The runtime: the services and the pipeline.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The control plane: deploys, events, usage.
    pub fn control(&self) -> &Arc<ControlPlane> {
        &self.control
    }

    /// Binds `addr` (naming it, and `what` it is for, in the error) and at
    /// once adds the address to those guests may never reach: a guest
    /// already running (an event delivery) cannot slip into the port
    /// between the bind and the serve.
    pub async fn bind(&self, addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr}{what}"))?;
        self.runtime.listeners().add(listener.local_addr()?);
        Ok(listener)
    }

    /// Serves `listeners` until `shutdown` resolves; then stops accepting,
    /// stops dispatching events, lets in-flight invocations finish
    /// (bounded by the longest deadline), and closes the usage ledger (its
    /// last records stored and synced).
    pub async fn serve(
        mut self,
        listeners: Listeners,
        shutdown: impl Future<Output = ()>,
    ) -> anyhow::Result<()> {
        let public_addr = listeners.public.socket.local_addr()?;
        // Guests must never reach the host's own listeners (those bound by
        // `Host::bind` are known already).
        let known = self.runtime.listeners().get();
        let mut own = vec![public_addr];
        let admin_addr = match &listeners.admin {
            Some((admin, _)) => Some(admin.socket.local_addr()?),
            None => None,
        };
        own.extend(admin_addr);
        for addr in own.into_iter().filter(|a| !known.contains(a)) {
            self.runtime.listeners().add(addr);
        }
        let stop = CancellationToken::new();
        let mut accepting = vec![tokio::spawn(crate::triggers::http::accept(
            listeners.public,
            crate::triggers::http::public_handler(
                self.runtime.clone(),
                self.gateway.clone(),
                public_addr,
            ),
            stop.clone(),
        ))];
        if let Some((admin, auth)) = listeners.admin {
            accepting.push(tokio::spawn(crate::triggers::http::accept(
                admin,
                admin::handler(self.control.clone(), auth),
                stop.clone(),
            )));
        }
        let sampler = tokio::spawn(
            self.control
                .traffic()
                .clone()
                .run(Arc::downgrade(&self.runtime), stop.clone()),
        );
        self.control.set_addresses(
            Some(public_addr.to_string()),
            admin_addr.map(|a| a.to_string()),
        );
        shutdown.await;
        stop.cancel();
        // Followers of the logs stop, or their streams would hold the
        // admin listener's drain.
        if let Some(logs) = self.control.logs() {
            logs.close();
        }
        self.control.shutdown();
        let mut open = Vec::with_capacity(accepting.len());
        for listener in accepting {
            open.push(listener.await?);
        }
        crate::triggers::http::drain(open, &self.runtime).await;
        let _ = sampler.await;
        // The last records of the drained invocations are shipped as the
        // cluster tasks stop.
        if let Some((cluster, stop, tasks)) = self.cluster.take() {
            stop.cancel();
            for task in tasks {
                // The heartbeat removes the node's report as it stops.
                let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
            }
            cluster.close().await;
        }
        if let Some(ledger) = &self.ledger {
            ledger.close();
        }
        if let Some(traces) = &self.traces {
            traces.shutdown(Duration::from_secs(5)).await;
        }
        Ok(())
    }
}

/// Starts a cluster node's watcher and heartbeat, and waits (for a while)
/// until the node has converged: its listeners then open with the
/// cluster's services in place, and `/readyz` says so.
async fn join(
    cluster: Cluster,
    catalog: Arc<ClusterCatalog>,
    control: &Arc<ControlPlane>,
    gateway: Arc<Gateway>,
    usage: Option<(
        Arc<Shipper>,
        async_nats::jetstream::stream::Stream,
        Arc<Ledger>,
    )>,
) -> (Cluster, CancellationToken, Vec<tokio::task::JoinHandle<()>>) {
    let runtime = control.runtime();
    runtime.set_unready(Some(format!(
        "converging with the cluster at {}",
        cluster.display
    )));
    let stop = CancellationToken::new();
    let mut tasks = vec![
        tokio::spawn(crate::control::cluster::catalog::follow(
            catalog,
            control.clone(),
            stop.clone(),
        )),
        tokio::spawn(crate::control::cluster::nodes::heartbeat(
            cluster.clone(),
            control.clone(),
            stop.clone(),
        )),
        tokio::spawn(crate::control::cluster::keys::follow(
            cluster.clone(),
            gateway,
            stop.clone(),
        )),
    ];
    if let Some(logs) = control.cluster_logs() {
        tasks.push(tokio::spawn(logs.clone().serve(stop.clone())));
    }
    if let Some((shipper, stream, ledger)) = usage {
        use crate::control::cluster::usage;
        tasks.push(tokio::spawn(usage::ship(
            cluster.clone(),
            shipper,
            stop.clone(),
        )));
        tasks.push(tokio::spawn(usage::collect(
            cluster.clone(),
            stream,
            ledger,
            stop.clone(),
        )));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while runtime.unready().is_some() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (cluster, stop, tasks)
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
