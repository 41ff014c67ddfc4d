//! The control plane: deploys, upgrades, rolls back and removes services
//! while traffic flows, and restores them after a restart.
//!
//! Every change follows the same order, so that a failure at any step, or a
//! crash between two, leaves the old revision serving or the new one, never
//! a half state:
//!
//! 1. check the request (configuration, routes free, artifact known);
//! 2. load the revision: read the artifact (checked against its digest),
//!    compile it or load it from the code cache, pre-instantiate it;
//! 3. commit the change to the state database (one transaction);
//! 4. switch routing to the new revision atomically. Requests already
//!    running finish on the revision they started on.
//!
//! Changes are serialized; reads are not.

use crate::control::catalog::{Catalog, Committed, NodeReport, NodeService};
use crate::control::ledger::Ledger;
use crate::control::scheduler::Scheduler;
use crate::control::state::{ArtifactRecord, RevisionRecord, ServiceRecord, StateError};
use crate::runtime::Runtime;
use crate::runtime::logs::LogBook;
use crate::runtime::registry::{RouteConflict, Service};
use crate::runtime::traffic::Traffic;
use crate::triggers::events::bus::Bus;
use crate::triggers::events::dispatch::Dispatcher;
use crate::triggers::http::gateway::Gateway;
use crate::values::capabilities::{EnvValue, validate_nesting};
use crate::values::digest::Digest;
use crate::values::event::Event;
use crate::values::service::{InvalidConfig, ServiceConfig, ServiceName, ServiceSpec};
use crate::values::units::ByteSize;
use crate::wasm::artifact::{self, ArtifactStore};
use crate::wasm::cache::{CacheOutcome, CodeCache};
use crate::wasm::component::{self, Handlers, LoadError};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Why a control-plane request was refused. Nothing changed in any case.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The service, revision or artifact does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request itself is malformed.
    #[error("{0}")]
    BadRequest(String),
    /// The service's configuration is refused.
    #[error("{0}")]
    InvalidConfig(#[from] InvalidConfig),
    /// Another service holds a route.
    #[error(transparent)]
    RouteConflict(#[from] RouteConflict),
    /// The component cannot be served.
    #[error("{0}")]
    InvalidComponent(#[from] LoadError),
    /// The upload is over the size limit.
    #[error("the upload is over the limit of {0}")]
    TooLarge(ByteSize),
    /// A secret the service refers to is not set on this host.
    #[error("{0}")]
    MissingSecret(String),
    /// The state directory could not be written or read (unwritable, disk
    /// full, damaged).
    #[error("storage: {0}")]
    Storage(String),
    /// The service changed meanwhile (through another node of a cluster);
    /// nothing changed.
    #[error("{0}")]
    Conflict(String),
    /// The cluster cannot take the change now (NATS unreachable); nothing
    /// changed.
    #[error("{0}")]
    Unavailable(String),
}

impl From<crate::triggers::events::bus::BusError> for ControlError {
    fn from(e: crate::triggers::events::bus::BusError) -> Self {
        match e {
            crate::triggers::events::bus::BusError::Unavailable(why) => {
                ControlError::Unavailable(why)
            }
            other => ControlError::Storage(other.to_string()),
        }
    }
}

impl From<StateError> for ControlError {
    fn from(e: StateError) -> Self {
        ControlError::Storage(e.to_string())
    }
}

impl ControlError {
    /// A stable, machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            ControlError::NotFound(_) => "not_found",
            ControlError::BadRequest(_) | ControlError::InvalidConfig(_) => "bad_request",
            ControlError::RouteConflict(_) => "route_conflict",
            ControlError::InvalidComponent(LoadError::NotAComponent(_)) => "not_a_component",
            ControlError::InvalidComponent(LoadError::Invalid(_)) => "invalid_component",
            ControlError::InvalidComponent(LoadError::MissingExport { .. }) => "missing_export",
            ControlError::InvalidComponent(LoadError::UnknownImport(_)) => "unknown_import",
            ControlError::TooLarge(_) => "payload_too_large",
            ControlError::MissingSecret(_) => "missing_secret",
            ControlError::Storage(_) => "storage_error",
            ControlError::Unavailable(_) => "cluster_unavailable",
            ControlError::Conflict(_) => "conflict",
        }
    }
}

/// A service as the control plane sees it: its record, and how it runs.
#[derive(Debug, Clone)]
pub struct ServiceStatus {
    /// The stored service and its active revision.
    pub record: ServiceRecord,
    /// Why its active revision could not be loaded, if it could not.
    pub error: Option<String>,
    /// Instances running now.
    pub in_flight: u32,
    /// Requests waiting for an instance now.
    pub queued: u32,
    /// Whether its compiled component is in memory (false: scaled to zero,
    /// the next invocation is a cold start).
    pub loaded: bool,
    /// In a cluster: what each live node serves of it (empty on a
    /// standalone host).
    pub nodes: Vec<(String, NodeService)>,
}

/// The event machinery a control plane keeps in step with its services.
pub struct Events {
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// Runs the subscriptions.
    pub dispatcher: Arc<Dispatcher>,
    /// Fires the schedules.
    pub scheduler: Arc<Scheduler>,
}

/// What a control plane is made of.
pub struct Parts {
    /// The runtime it changes.
    pub runtime: Arc<Runtime>,
    /// The store of record: services, revisions, artifacts.
    pub catalog: Arc<dyn Catalog>,
    /// Where artifacts are stored on this node.
    pub artifacts: ArtifactStore,
    /// Where compiled code is cached.
    pub cache: CodeCache,
    /// The largest artifact accepted.
    pub max_upload: ByteSize,
    /// The bus, the dispatcher and the scheduler.
    pub events: Events,
    /// The largest event accepted.
    pub max_event_size: ByteSize,
    /// The usage ledger, if the host keeps one.
    pub ledger: Option<Arc<Ledger>>,
    /// This node's name.
    pub node: String,
    /// The edge: the API keys requests are checked against.
    pub gateway: Arc<Gateway>,
    /// The services' recent log lines, if the host keeps them.
    pub logs: Option<Arc<LogBook>>,
    /// The services' traffic over the last hour (sampled while the host
    /// serves).
    pub traffic: Arc<Traffic>,
    /// In a cluster: the logs shared with the other nodes.
    pub cluster_logs: Option<Arc<crate::control::cluster::logs::ClusterLogs>>,
}

/// The control plane of one host.
pub struct ControlPlane {
    pub(super) parts: Parts,
    changes: tokio::sync::Mutex<()>,
    /// Services whose active revision could not be loaded (on restore, or
    /// on this node of a cluster).
    failed: Mutex<BTreeMap<ServiceName, String>>,
    /// When this node started (ms since the epoch).
    started_ms: i64,
    /// Where it listens: the public and the admin address.
    addresses: Mutex<(Option<String>, Option<String>)>,
    /// Signalled when what this node serves has changed.
    node_changed: Arc<tokio::sync::Notify>,
}

impl ControlPlane {
    /// A control plane over `parts`.
    pub fn new(parts: Parts) -> ControlPlane {
        ControlPlane {
            parts,
            changes: tokio::sync::Mutex::new(()),
            failed: Mutex::new(BTreeMap::new()),
            started_ms: crate::values::units::now_ms(),
            addresses: Mutex::new((None, None)),
            node_changed: Arc::default(),
        }
    }

    /// Notes where this node listens (for its report).
    pub fn set_addresses(&self, public: Option<String>, admin: Option<String>) {
        *self.addresses.lock().unwrap_or_else(|e| e.into_inner()) = (public, admin);
        self.node_changed.notify_one();
    }

    /// This node's name, when it is a node of a cluster (its metrics carry
    /// it).
    pub fn node_label(&self) -> Option<&str> {
        self.parts
            .catalog
            .is_cluster()
            .then_some(self.parts.node.as_str())
    }

    /// Signalled when what this node serves has changed (a cluster node
    /// reports itself at once).
    pub fn node_changed(&self) -> Arc<tokio::sync::Notify> {
        self.node_changed.clone()
    }

    /// This node's report: where it listens, whether it is ready, what it
    /// serves.
    pub fn node_report(&self) -> NodeReport {
        let (public, admin) = self
            .addresses
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let failed = self.failed().clone();
        let running = self.parts.runtime.registry().services();
        let mut services: BTreeMap<String, NodeService> = running
            .iter()
            .map(|s| {
                let name = s.name().to_string();
                let service = NodeService {
                    error: failed.get(s.name()).cloned(),
                    revision: Some(s.revision),
                    loaded: s.is_loaded(),
                    in_flight: s.admission.in_flight(s.limits().concurrency),
                    name: name.clone(),
                };
                (name, service)
            })
            .collect();
        for (name, error) in failed {
            services
                .entry(name.to_string())
                .or_insert_with(|| NodeService {
                    name: name.to_string(),
                    revision: None,
                    error: None,
                    loaded: false,
                    in_flight: 0,
                })
                .error = Some(error);
        }
        NodeReport {
            name: self.parts.node.clone(),
            public,
            admin,
            version: env!("CARGO_PKG_VERSION").into(),
            started_ms: self.started_ms,
            heartbeat_ms: crate::values::units::now_ms(),
            unready: self.parts.runtime.unready(),
            in_flight: services.values().map(|s| s.in_flight).sum(),
            services: services.into_values().collect(),
        }
    }

    /// Every node: the cluster's live nodes (this one's report fresh), or
    /// this node alone when it is standalone.
    pub async fn nodes(&self) -> Result<Vec<NodeReport>, ControlError> {
        let mut nodes = self.catalog().nodes().await?;
        let own = self.node_report();
        nodes.retain(|n| n.name != own.name);
        nodes.push(own);
        nodes.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(nodes)
    }

    /// In a cluster, what each live node serves of each service.
    async fn placements(&self) -> Vec<NodeReport> {
        if !self.parts.catalog.is_cluster() {
            return Vec::new();
        }
        match self.nodes().await {
            Ok(nodes) => nodes,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the cluster's nodes");
                vec![self.node_report()]
            }
        }
    }

    /// The usage ledger, if the host keeps one.
    pub fn ledger(&self) -> Option<&Arc<Ledger>> {
        self.parts.ledger.as_ref()
    }

    /// The services' recent log lines, if the host keeps them.
    pub fn logs(&self) -> Option<&Arc<LogBook>> {
        self.parts.logs.as_ref()
    }

    /// This node's name.
    pub fn node_name(&self) -> &str {
        &self.parts.node
    }

    /// In a cluster: the logs shared with the other nodes.
    pub fn cluster_logs(&self) -> Option<&Arc<crate::control::cluster::logs::ClusterLogs>> {
        self.parts.cluster_logs.as_ref()
    }

    /// The services' traffic over the last hour.
    pub fn traffic(&self) -> &Arc<Traffic> {
        &self.parts.traffic
    }

    /// The event bus.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.parts.events.bus
    }

    /// The largest event accepted.
    pub fn max_event_size(&self) -> ByteSize {
        self.parts.max_event_size
    }

    /// Stops dispatching events (on shutdown; pending ones stay stored).
    pub fn shutdown(&self) {
        self.parts.events.dispatcher.shutdown();
    }

    /// Publishes events (from the admin API): checks the topic and sizes,
    /// then waits until they are durable. Returns the deliveries made per
    /// event.
    pub async fn publish(&self, events: Vec<Event>) -> Result<Vec<usize>, ControlError> {
        for event in &events {
            if event.topic.is_system() {
                return Err(ControlError::BadRequest(format!(
                    "{} is reserved for the host's own events",
                    event.topic
                )));
            }
            if event.size() as u64 > self.parts.max_event_size.bytes() {
                return Err(ControlError::TooLarge(self.parts.max_event_size));
            }
        }
        self.parts
            .events
            .bus
            .publish(events)
            .await
            .map_err(ControlError::from)
    }

    /// Brings subscriptions and schedules in line with the services.
    async fn sync_events(&self) {
        if let Err(e) = self.parts.events.dispatcher.sync().await {
            tracing::error!(error = %e, "cannot update the subscriptions");
        }
        self.parts.events.scheduler.sync().await;
    }

    /// The runtime the control plane changes.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.parts.runtime
    }

    /// The largest artifact accepted.
    pub fn max_upload(&self) -> ByteSize {
        self.parts.max_upload
    }

    /// The store of record.
    pub(super) fn catalog(&self) -> &dyn Catalog {
        &*self.parts.catalog
    }

    /// Reads an artifact and loads it into a handler (from the code cache
    /// when it was compiled before), on a blocking thread.
    async fn load(&self, digest: Digest, config: &ServiceConfig) -> Result<Handlers, ControlError> {
        self.catalog().fetch(digest).await?;
        let config = config.clone();
        let artifacts = self.parts.artifacts.clone();
        let cache = self.parts.cache.clone();
        let runtime = self.parts.runtime.clone();
        tokio::task::spawn_blocking(move || {
            let bytes = artifacts
                .read(&digest)
                .map_err(|e| ControlError::Storage(e.to_string()))?;
            let (handlers, report) = component::load(runtime.engine(), &cache, &bytes)?;
            handlers.check(&config)?;
            log_load(&digest, &report.cache, "loaded");
            runtime.metrics().code_cache(&report.cache);
            Ok(handlers)
        })
        .await
        .map_err(|e| ControlError::Storage(format!("loading task failed: {e}")))?
    }

    /// Routes every stored service's active revision again, unloaded: its
    /// component is loaded on its first invocation (from the code cache,
    /// so a restart compiles nothing and holds no idle code in memory). A
    /// service whose artifact is missing is logged, reported by
    /// [`ControlPlane::services`], and left out; the others serve. One
    /// whose component turns out not to load is reported when that is
    /// tried.
    pub async fn restore(&self) -> Result<usize, ControlError> {
        let _changes = self.changes.lock().await;
        let records = self.catalog().services().await?;
        let mut services = Vec::with_capacity(records.len());
        for record in records {
            if self.parts.artifacts.contains(&record.active.artifact) {
                services.push(Arc::new(self.routed(&record.active, None)));
            } else {
                let e = ControlError::Storage(format!(
                    "artifact {} is missing from the artifact store",
                    record.active.artifact
                ));
                self.restore_failed(&record.active.service, record.active.number, e);
            }
        }
        let mut restored = services.len();
        for (service, conflict) in self.parts.runtime.registry().upsert_many(services) {
            restored -= 1;
            self.restore_failed(service.name(), service.revision, conflict.into());
        }
        self.sync_events().await;
        Ok(restored)
    }

    /// Notes that a stored service could not be restored: it is not
    /// served, and says why.
    fn restore_failed(&self, name: &ServiceName, revision: u32, e: ControlError) {
        tracing::error!(service = %name, revision, error = %e, "cannot restore the service; it is not served");
        self.failed().insert(name.clone(), e.to_string());
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, BTreeMap<ServiceName, String>> {
        self.failed.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Stores an artifact once it is checked: a component, that compiles,
    /// imports only what Berth provides and exports a trigger Berth knows.
    /// Returns its record, and whether it is new.
    pub async fn upload(&self, bytes: Vec<u8>) -> Result<(ArtifactRecord, bool), ControlError> {
        if bytes.len() as u64 > self.parts.max_upload.bytes() {
            return Err(ControlError::TooLarge(self.parts.max_upload));
        }
        self.catalog().writable()?;
        artifact::check_component(&bytes).map_err(LoadError::from)?;
        let artifacts = self.parts.artifacts.clone();
        let cache = self.parts.cache.clone();
        let runtime = self.parts.runtime.clone();
        let digest = tokio::task::spawn_blocking(move || {
            let digest = Digest::of(&bytes);
            // Compiling checks it and fills the code cache for the deploy
            // that usually follows.
            let (_, report) = component::load(runtime.engine(), &cache, &bytes)?;
            log_load(&digest, &report.cache, "artifact checked");
            runtime.metrics().code_cache(&report.cache);
            artifacts
                .put(&digest, &bytes)
                .map_err(|e| ControlError::Storage(format!("writing artifact {digest}: {e}")))?;
            Ok::<_, ControlError>((digest, Arc::<[u8]>::from(bytes)))
        })
        .await
        .map_err(|e| ControlError::Storage(format!("upload task failed: {e}")))??;
        let (digest, bytes) = digest;
        self.catalog().add_artifact(digest, bytes).await
    }

    /// Deploys a new revision of `name` (creating the service if needed)
    /// and switches its traffic to it.
    pub async fn deploy(
        &self,
        name: ServiceName,
        artifact: Digest,
        config: ServiceConfig,
    ) -> Result<RevisionRecord, ControlError> {
        let mut config = config;
        config.validate()?;
        self.catalog().writable()?;
        self.check_capabilities(&mut config)?;
        let changes = self.changes.lock().await;
        if self.catalog().artifact(artifact).await?.is_none() {
            return Err(ControlError::NotFound(format!(
                "artifact {artifact} is not uploaded"
            )));
        }
        self.parts
            .runtime
            .registry()
            .check_routes(&name, &config.routes)?;
        let handler = self.load(artifact, &config).await?;
        let committed = self.catalog().deploy(&name, artifact, &config).await?;
        let record = committed.value.clone();
        self.settle(changes, committed, &record, handler).await?;
        tracing::info!(service = %name, revision = record.number, artifact = %artifact.short(), "deployed");
        Ok(record)
    }

    /// Checks what a configuration gives its guest can be given on this
    /// host: every mounted directory exists (its path is made canonical,
    /// so the revision records exactly what the guest gets), and every
    /// secret is set. Secrets are only looked up, never recorded.
    fn check_capabilities(&self, config: &mut ServiceConfig) -> Result<(), ControlError> {
        for (i, mount) in config.files.iter_mut().enumerate() {
            mount
                .resolve(None)
                .map_err(|e| ControlError::BadRequest(format!("files[{i}].host: {e}")))?;
        }
        validate_nesting(&config.files)?;
        for (var, value) in &config.env {
            if let EnvValue::Secret(name) = value {
                self.parts
                    .runtime
                    .ports()
                    .secrets
                    .read(name)
                    .map_err(|e| ControlError::MissingSecret(format!("env.{var}: {e}")))?;
            }
        }
        if let Some(auth) = &config.auth {
            // The JWKS's keys decode, and an HS256 secret is set.
            crate::triggers::http::gateway::auth::Authenticator::new(auth)
                .map_err(|e| ControlError::BadRequest(format!("auth.jwt.jwks: {e}")))?;
            if let Some(secret) = auth.jwt.as_ref().and_then(|jwt| jwt.secret.as_deref()) {
                let name = crate::values::capabilities::SecretName::parse(secret)
                    .map_err(|e| ControlError::BadRequest(format!("auth.jwt.secret: {e}")))?;
                let key = self
                    .parts
                    .runtime
                    .ports()
                    .secrets
                    .read(&name)
                    .map_err(|e| ControlError::MissingSecret(format!("auth.jwt.secret: {e}")))?;
                if key.len() < crate::triggers::http::gateway::auth::MIN_HS256_KEY {
                    return Err(ControlError::BadRequest(format!(
                        "auth.jwt.secret: the secret {} is {} bytes; an HS256 key must be at least {} (RFC 7518)",
                        name.as_str(),
                        key.len(),
                        crate::triggers::http::gateway::auth::MIN_HS256_KEY
                    )));
                }
            }
        }
        Ok(())
    }

    /// Switches `name` back to revision `to`, or to the one before its
    /// active revision.
    pub async fn rollback(
        &self,
        name: ServiceName,
        to: Option<u32>,
    ) -> Result<RevisionRecord, ControlError> {
        self.catalog().writable()?;
        let changes = self.changes.lock().await;
        let current = self
            .catalog()
            .service(&name)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("there is no service `{name}`")))?;
        let revisions = self.catalog().revisions(&name).await?;
        let active = current.active.number;
        let target = match to {
            Some(n) => revisions
                .into_iter()
                .find(|r| r.number == n)
                .ok_or_else(|| {
                    ControlError::NotFound(format!("service `{name}` has no revision {n}"))
                })?,
            None => revisions
                .into_iter()
                .find(|r| r.number < active)
                .ok_or_else(|| {
                    ControlError::NotFound(format!(
                        "service `{name}` has no revision before {active} to roll back to"
                    ))
                })?,
        };
        if target.number == active && self.parts.runtime.registry().service(&name).is_some() {
            return Ok(target);
        }
        self.parts
            .runtime
            .registry()
            .check_routes(&name, &target.config.routes)?;
        // What the old revision gives its guest must still be there.
        let mut config = target.config.clone();
        self.check_capabilities(&mut config)?;
        if config.files != target.config.files {
            return Err(ControlError::BadRequest(format!(
                "revision {} mounts a directory that has moved since it was deployed; deploy it again",
                target.number
            )));
        }
        let handler = self.load(target.artifact, &target.config).await?;
        let committed = self
            .catalog()
            .activate(&name, target.number, active)
            .await?;
        self.settle(changes, committed, &target, handler).await?;
        tracing::info!(service = %name, revision = target.number, "rolled back");
        Ok(target)
    }

    /// Applies a committed change to `record`: switches routing to it now
    /// (standalone), or lets go of the changes lock and waits until the
    /// catalog's watcher has applied it (cluster).
    async fn settle<T>(
        &self,
        changes: tokio::sync::MutexGuard<'_, ()>,
        committed: Committed<T>,
        record: &RevisionRecord,
        handler: Handlers,
    ) -> Result<(), ControlError> {
        match committed.seq {
            None => {
                self.switch(record, handler)?;
                self.sync_events().await;
            }
            Some(seq) => {
                drop((changes, handler));
                self.catalog().applied(seq).await?;
                // The node that made the change forgets, for the whole
                // cluster, the subscriptions the revision no longer holds.
                let keep: Vec<String> =
                    crate::triggers::events::dispatch::specs(&record.service, &record.config)
                        .into_iter()
                        .map(|s| s.id)
                        .collect();
                if let Err(e) = self
                    .parts
                    .events
                    .bus
                    .retain(record.service.as_str(), &keep)
                    .await
                {
                    tracing::error!(service = %record.service, error = %e, "cannot drop the subscriptions the revision no longer holds");
                }
            }
        }
        Ok(())
    }

    fn switch(&self, record: &RevisionRecord, handler: Handlers) -> Result<(), ControlError> {
        self.parts
            .runtime
            .registry()
            .upsert(Arc::new(self.routed(record, Some(handler))))?;
        self.failed().remove(&record.service);
        self.node_changed.notify_one();
        Ok(())
    }

    /// Removes a service: no more routing to it, and its revisions are
    /// forgotten. Requests already running finish.
    pub async fn remove(&self, name: ServiceName) -> Result<(), ControlError> {
        self.catalog().writable()?;
        let changes = self.changes.lock().await;
        let committed = self
            .catalog()
            .remove(&name)
            .await?
            .ok_or_else(|| ControlError::NotFound(format!("there is no service `{name}`")))?;
        match committed.seq {
            None => {
                self.unroute(&name);
                self.sync_events().await;
            }
            Some(seq) => {
                drop(changes);
                self.catalog().applied(seq).await?;
            }
        }
        if let Err(e) = self.parts.events.bus.drop_service(name.as_str()).await {
            tracing::error!(service = %name, error = %e, "cannot drop the service's pending events");
        }
        tracing::info!(service = %name, "removed");
        Ok(())
    }

    /// The services this node could not bring to their active revision.
    pub fn failed_services(&self) -> Vec<ServiceName> {
        self.failed().keys().cloned().collect()
    }

    /// Stops routing to `name` (removed).
    fn unroute(&self, name: &ServiceName) {
        self.parts.runtime.registry().remove(name);
        self.failed().remove(name);
        if let Some(logs) = &self.parts.logs {
            logs.forget(name.as_str());
        }
        self.parts.runtime.ports().output.forget(name);
        self.node_changed.notify_one();
    }

    /// Every service, in name order.
    pub async fn services(&self) -> Result<Vec<ServiceStatus>, ControlError> {
        let records = self.catalog().services().await?;
        let nodes = self.placements().await;
        Ok(records
            .into_iter()
            .map(|r| self.status(r, &nodes))
            .collect())
    }

    /// One service.
    pub async fn service(&self, name: ServiceName) -> Result<ServiceStatus, ControlError> {
        let record = self.catalog().service(&name).await?;
        let nodes = self.placements().await;
        record
            .map(|r| self.status(r, &nodes))
            .ok_or_else(|| ControlError::NotFound(format!("there is no service `{name}`")))
    }

    fn status(&self, record: ServiceRecord, nodes: &[NodeReport]) -> ServiceStatus {
        let name = &record.active.service;
        let placed = nodes
            .iter()
            .map(|n| {
                let here = n
                    .services
                    .iter()
                    .find(|s| s.name == name.as_str())
                    .cloned()
                    .unwrap_or_else(|| NodeService {
                        name: name.to_string(),
                        revision: None,
                        error: None,
                        loaded: false,
                        in_flight: 0,
                    });
                (n.name.clone(), here)
            })
            .collect();
        let running = self.parts.runtime.registry().service(name);
        let (in_flight, queued) = running
            .as_ref()
            .map(|s| {
                (
                    s.admission.in_flight(s.limits().concurrency),
                    s.admission.queued(),
                )
            })
            .unwrap_or_default();
        let error = self.failed().get(name).cloned().or_else(|| {
            running
                .as_ref()
                .and_then(|s| s.load_error())
                .map(|e| e.to_string())
        });
        ServiceStatus {
            error,
            loaded: running.as_ref().is_some_and(|s| s.is_loaded()),
            record,
            in_flight,
            queued,
            nodes: placed,
        }
    }

    /// Every revision of a service, newest first.
    pub async fn revisions(
        &self,
        name: ServiceName,
    ) -> Result<(u32, Vec<RevisionRecord>), ControlError> {
        let status = self.service(name.clone()).await?;
        let revisions = self.catalog().revisions(&name).await?;
        Ok((status.record.active.number, revisions))
    }

    /// Every stored artifact, newest first.
    pub async fn artifacts(&self) -> Result<Vec<ArtifactRecord>, ControlError> {
        self.catalog().artifacts().await
    }
}

/// Convergence: a cluster node makes its routing match the catalog, for
/// changes made through any node.
impl ControlPlane {
    /// Makes this node serve what the catalog says of `name` now (`None`:
    /// the service was removed).
    pub async fn converge(&self, name: &ServiceName, record: Option<&ServiceRecord>) {
        let _changes = self.changes.lock().await;
        self.converge_one(name, record).await;
        self.sync_events().await;
    }

    /// Makes this node serve exactly `records` (when it joins, or comes
    /// back after losing the cluster): every other service is removed.
    pub async fn converge_all(&self, records: &[ServiceRecord]) {
        let _changes = self.changes.lock().await;
        let wanted: std::collections::BTreeSet<&ServiceName> =
            records.iter().map(|r| &r.active.service).collect();
        for service in self.parts.runtime.registry().services() {
            if !wanted.contains(service.name()) {
                self.unroute(service.name());
            }
        }
        self.failed().retain(|name, _| wanted.contains(name));
        for record in records {
            self.converge_one(&record.active.service, Some(record))
                .await;
        }
        self.sync_events().await;
    }

    async fn converge_one(&self, name: &ServiceName, record: Option<&ServiceRecord>) {
        let Some(record) = record else {
            if self.parts.runtime.registry().service(name).is_some() {
                tracing::info!(service = %name, "removed");
            }
            self.unroute(name);
            return;
        };
        let active = &record.active;
        let running = self.parts.runtime.registry().service(name);
        if running.as_ref().is_some_and(|s| {
            s.revision == active.number
                && s.source.digest == active.artifact
                && s.spec().config == active.config
        }) {
            self.failed().remove(name);
            return;
        }
        let switched = match self.prepare(active).await {
            Ok(handlers) => self.switch(active, handlers),
            Err(e) => Err(e),
        };
        match switched {
            Ok(()) => {
                tracing::info!(service = %name, revision = active.number, artifact = %active.artifact.short(), "serving")
            }
            Err(e) => {
                // An older revision that serves here keeps serving.
                let serving = running.map(|s| s.revision);
                let why = format!("revision {}: {e}", active.number);
                let again = self.failed().insert(name.clone(), why.clone()) == Some(why);
                if again {
                    tracing::debug!(service = %name, revision = active.number, serving, error = %e, "still cannot serve the revision on this node");
                } else {
                    tracing::error!(service = %name, revision = active.number, serving, error = %e, "cannot serve the revision on this node");
                }
                self.node_changed.notify_one();
            }
        }
    }

    /// Checks that this node can serve `record` (its capabilities, its
    /// routes) and loads it.
    async fn prepare(&self, record: &RevisionRecord) -> Result<Handlers, ControlError> {
        let mut config = record.config.clone();
        self.check_capabilities(&mut config)?;
        self.parts
            .runtime
            .registry()
            .check_routes(&record.service, &config.routes)?;
        self.load(record.artifact, &record.config).await
    }
}

fn log_load(digest: &Digest, cache: &CacheOutcome, what: &str) {
    if cache.is_uncached() {
        tracing::warn!(artifact = %digest.short(), code = %cache, "{what}, but its compiled code could not be stored");
    } else {
        tracing::info!(artifact = %digest.short(), code = %cache, "{what}");
    }
}

impl ControlPlane {
    fn source(&self, digest: Digest) -> component::Source {
        component::Source {
            digest,
            artifacts: self.parts.artifacts.clone(),
            cache: self.parts.cache.clone(),
        }
    }

    /// The runtime's service for `record`, loaded (`Some` handlers) or not.
    fn routed(&self, record: &RevisionRecord, handlers: Option<Handlers>) -> Service {
        self.parts.runtime.service(
            ServiceSpec {
                name: record.service.clone(),
                config: record.config.clone(),
            },
            record.number,
            self.source(record.artifact),
            handlers,
        )
    }
}
