//! Where a control plane keeps its services, their revisions and the
//! artifacts: the node's own state database ([`LocalCatalog`]), or a
//! cluster's JetStream buckets ([`ClusterCatalog`](crate::control::cluster::ClusterCatalog)).
//! The control plane checks, loads and switches the same way over either;
//! only who applies a committed change differs (see [`Committed`]).

use crate::control::deploy::ControlError;
use crate::control::state::{ArtifactRecord, RevisionRecord, ServiceRecord, State, StateError};
use crate::values::digest::Digest;
use crate::values::key::ApiKey;
use crate::values::service::{ServiceConfig, ServiceName};
use async_trait::async_trait;
use std::sync::{Arc, Mutex};

/// A change the catalog has made durable.
#[derive(Debug, Clone)]
pub struct Committed<T> {
    /// What the change made.
    pub value: T,
    /// `None`: the caller switches routing itself. `Some(seq)`: the
    /// catalog's own watcher applies the change (on every node of a
    /// cluster); the caller waits with [`Catalog::applied`].
    pub seq: Option<u64>,
}

impl<T> Committed<T> {
    /// A change the caller applies.
    pub fn by_caller(value: T) -> Self {
        Committed { value, seq: None }
    }
}

/// The store of record of a control plane.
#[async_trait]
pub trait Catalog: Send + Sync + 'static {
    /// Every service with its active revision, in name order.
    async fn services(&self) -> Result<Vec<ServiceRecord>, ControlError>;

    /// One service with its active revision.
    async fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>, ControlError>;

    /// Every revision of a service, newest first.
    async fn revisions(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>, ControlError>;

    /// Adds the next revision of `name` (creating the service) and makes it
    /// the active one.
    async fn deploy(
        &self,
        name: &ServiceName,
        artifact: Digest,
        config: &ServiceConfig,
    ) -> Result<Committed<RevisionRecord>, ControlError>;

    /// Makes revision `number` of `name` the active one, if revision
    /// `from` still is (a rollback computed from it is void otherwise).
    async fn activate(
        &self,
        name: &ServiceName,
        number: u32,
        from: u32,
    ) -> Result<Committed<()>, ControlError>;

    /// Forgets a service and its revisions; `None` if there was none.
    async fn remove(&self, name: &ServiceName) -> Result<Option<Committed<()>>, ControlError>;

    /// Every stored artifact, newest first.
    async fn artifacts(&self) -> Result<Vec<ArtifactRecord>, ControlError>;

    /// One stored artifact.
    async fn artifact(&self, digest: Digest) -> Result<Option<ArtifactRecord>, ControlError>;

    /// Records an artifact already checked and written to the local
    /// artifact store (`bytes` are its content); returns its record, and
    /// whether it is new.
    async fn add_artifact(
        &self,
        digest: Digest,
        bytes: Arc<[u8]>,
    ) -> Result<(ArtifactRecord, bool), ControlError>;

    /// Makes sure the local artifact store holds `digest`'s bytes (a
    /// cluster fetches them, checked against the digest).
    async fn fetch(&self, digest: Digest) -> Result<(), ControlError>;

    /// Waits until this node has applied the change numbered `seq` (see
    /// [`Committed::seq`]).
    async fn applied(&self, seq: u64) -> Result<(), ControlError>;

    /// The latest report of every live node of the cluster (none for a
    /// standalone host).
    async fn nodes(&self) -> Result<Vec<NodeReport>, ControlError>;

    /// Every API key (what is kept of it), by name.
    async fn keys(&self) -> Result<Vec<ApiKey>, ControlError>;

    /// Stores a new API key; `Conflict` if its name is taken.
    async fn add_key(&self, key: &ApiKey) -> Result<(), ControlError>;

    /// Stores a changed API key (revoked) over the one of its name.
    async fn put_key(&self, key: &ApiKey) -> Result<(), ControlError>;

    /// Whether this is a cluster's catalog.
    fn is_cluster(&self) -> bool;

    /// Fails at once when a change cannot be stored now (a cluster node
    /// cut off from NATS), before any work is done for it.
    fn writable(&self) -> Result<(), ControlError>;
}

/// The catalog of a standalone host: its state database (the artifacts'
/// bytes are in its artifact directory).
pub struct LocalCatalog {
    state: Arc<Mutex<State>>,
}

impl LocalCatalog {
    /// A catalog over `state`.
    pub fn new(state: Arc<Mutex<State>>) -> LocalCatalog {
        LocalCatalog { state }
    }

    /// Runs `f` on the database on a blocking thread.
    async fn db<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut State) -> Result<T, StateError> + Send + 'static,
    ) -> Result<T, ControlError> {
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || f(&mut state.lock().unwrap_or_else(|e| e.into_inner())))
            .await
            .map_err(|e| ControlError::Storage(format!("database task failed: {e}")))?
            .map_err(ControlError::from)
    }
}

#[async_trait]
impl Catalog for LocalCatalog {
    async fn services(&self) -> Result<Vec<ServiceRecord>, ControlError> {
        self.db(|s| s.services()).await
    }

    async fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>, ControlError> {
        let name = name.clone();
        self.db(move |s| s.service(&name)).await
    }

    async fn revisions(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>, ControlError> {
        let name = name.clone();
        self.db(move |s| s.revisions(&name)).await
    }

    async fn deploy(
        &self,
        name: &ServiceName,
        artifact: Digest,
        config: &ServiceConfig,
    ) -> Result<Committed<RevisionRecord>, ControlError> {
        let (name, config) = (name.clone(), config.clone());
        self.db(move |s| s.deploy(&name, &artifact, &config))
            .await
            .map(Committed::by_caller)
    }

    async fn activate(
        &self,
        name: &ServiceName,
        number: u32,
        _from: u32,
    ) -> Result<Committed<()>, ControlError> {
        // Changes are serialized by the control plane: `from` is current.
        let name = name.clone();
        self.db(move |s| s.activate(&name, number))
            .await
            .map(Committed::by_caller)
    }

    async fn remove(&self, name: &ServiceName) -> Result<Option<Committed<()>>, ControlError> {
        let name = name.clone();
        let removed = self.db(move |s| s.remove(&name)).await?;
        Ok(removed.then(|| Committed::by_caller(())))
    }

    async fn artifacts(&self) -> Result<Vec<ArtifactRecord>, ControlError> {
        self.db(|s| s.artifacts()).await
    }

    async fn artifact(&self, digest: Digest) -> Result<Option<ArtifactRecord>, ControlError> {
        self.db(move |s| s.artifact(&digest)).await
    }

    async fn add_artifact(
        &self,
        digest: Digest,
        bytes: Arc<[u8]>,
    ) -> Result<(ArtifactRecord, bool), ControlError> {
        let size = bytes.len() as u64;
        let created = self.db(move |s| s.add_artifact(&digest, size)).await?;
        let record = self
            .artifact(digest)
            .await?
            .ok_or_else(|| ControlError::Storage("the artifact vanished from the index".into()))?;
        Ok((record, created))
    }

    async fn fetch(&self, _digest: Digest) -> Result<(), ControlError> {
        // The local store is the only one: reading it says what is missing.
        Ok(())
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, ControlError> {
        self.db(|s| s.keys()).await
    }

    async fn add_key(&self, key: &ApiKey) -> Result<(), ControlError> {
        let (name, key) = (key.name.clone(), key.clone());
        if self.db(move |s| s.put_key(&key, false)).await? {
            Ok(())
        } else {
            Err(ControlError::Conflict(format!(
                "an API key named {name} exists"
            )))
        }
    }

    async fn put_key(&self, key: &ApiKey) -> Result<(), ControlError> {
        let key = key.clone();
        self.db(move |s| s.put_key(&key, true)).await.map(|_| ())
    }

    async fn applied(&self, _seq: u64) -> Result<(), ControlError> {
        Ok(())
    }

    async fn nodes(&self) -> Result<Vec<NodeReport>, ControlError> {
        Ok(Vec::new())
    }

    fn is_cluster(&self) -> bool {
        false
    }

    fn writable(&self) -> Result<(), ControlError> {
        Ok(())
    }
}

/// What a node reports of itself to the cluster (and `GET /v1/nodes`
/// shows).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeReport {
    /// Its name.
    pub name: String,
    /// Where it serves the services.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public: Option<String>,
    /// Where its admin API listens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// Berth's version on it.
    pub version: String,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// When it made this report (ms since the epoch).
    pub heartbeat_ms: i64,
    /// Why it is not ready, if it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unready: Option<String>,
    /// Instances running on it now.
    pub in_flight: u32,
    /// What it serves.
    pub services: Vec<NodeService>,
}

/// One service on one node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NodeService {
    /// The service.
    pub name: String,
    /// The revision the node serves (`None`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// Why the node does not serve the active revision, if it does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Whether its code is in memory on the node.
    pub loaded: bool,
    /// Instances of it running on the node now.
    pub in_flight: u32,
}
