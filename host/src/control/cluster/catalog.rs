//! The cluster's catalog: services in the KV bucket `berth_services`,
//! artifacts in the object store `berth_artifacts`, and the watcher that
//! makes this node converge on both.
//!
//! A service's entry is one JSON document (its revisions, newest first,
//! and the active one), so every change of a service — deploy, rollback,
//! removal — is a single compare-and-swap on the entry: a change based on
//! a stale read fails and is tried again on a fresh one. At most
//! [`KEPT_REVISIONS`] revisions are kept per service (the oldest go first;
//! the active one always stays).
//!
//! Reads are served from this node's mirror of the bucket, which the
//! watcher keeps; a change waits until the watcher has applied it here
//! before it is acknowledged, so a node reads its own writes.

use super::{Cluster, Link};
use crate::control::catalog::{Catalog, Committed, NodeReport};
use crate::control::deploy::{ControlError, ControlPlane};
use crate::control::state::{ArtifactRecord, RevisionRecord, ServiceRecord};
use crate::values::digest::Digest;
use crate::values::key::ApiKey;
use crate::values::service::{ServiceConfig, ServiceName};
use crate::values::units::now_ms;
use crate::wasm::artifact::ArtifactStore;
use async_nats::jetstream::kv::{Entry, Operation};
use async_nats::jetstream::object_store::ObjectInfo;
use async_trait::async_trait;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// Revisions kept per service.
pub const KEPT_REVISIONS: usize = 50;

/// How many times a change is tried again after losing a race.
const CAS_TRIES: usize = 64;

/// How long a write refused by a connected cluster is tried again (a
/// server died; its streams are electing new leaders).
pub(super) const TRANSIENT: Duration = Duration::from_secs(15);

/// Longest fetch of an artifact from the object store.
const FETCH_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a node tries again the services it failed to converge on
/// (an artifact it could not fetch, say).
const RETRY_FAILED: Duration = Duration::from_secs(5);

/// Longest wait for the next entry while catching up.
const CATCH_UP: Duration = Duration::from_secs(30);

/// How long a change waits for this node to apply it.
const APPLY_WAIT: Duration = Duration::from_secs(60);

/// A service's entry in the bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct ServiceDoc {
    active: u32,
    created_ms: i64,
    updated_ms: i64,
    /// Newest first.
    revisions: Vec<RevisionDoc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RevisionDoc {
    number: u32,
    artifact: Digest,
    config: ServiceConfig,
    created_ms: i64,
}

impl ServiceDoc {
    fn latest(&self) -> u32 {
        self.revisions.first().map_or(0, |r| r.number)
    }

    fn revision(&self, name: &ServiceName, r: &RevisionDoc) -> RevisionRecord {
        RevisionRecord {
            service: name.clone(),
            number: r.number,
            artifact: r.artifact,
            config: r.config.clone(),
            created_ms: r.created_ms,
        }
    }

    fn record(&self, name: &ServiceName) -> Option<ServiceRecord> {
        let active = self.revisions.iter().find(|r| r.number == self.active)?;
        Some(ServiceRecord {
            active: self.revision(name, active),
            latest: self.latest(),
            created_ms: self.created_ms,
            updated_ms: self.updated_ms,
        })
    }

    /// Drops the oldest revisions beyond [`KEPT_REVISIONS`], never the
    /// active one.
    fn trim(&mut self) {
        while self.revisions.len() > KEPT_REVISIONS {
            let Some(i) = self.revisions.iter().rposition(|r| r.number != self.active) else {
                break;
            };
            self.revisions.remove(i);
        }
    }
}

/// This node's copy of the services bucket.
#[derive(Default)]
struct Mirror {
    /// The bucket sequence each key was last seen at.
    seqs: HashMap<String, u64>,
    docs: BTreeMap<ServiceName, ServiceDoc>,
}

/// The catalog of a cluster node.
pub struct ClusterCatalog {
    cluster: Cluster,
    /// This node's artifact store: a cache of the object store.
    local: ArtifactStore,
    mirror: Mutex<Mirror>,
    /// The highest bucket sequence this node has applied.
    applied: watch::Sender<u64>,
}

impl ClusterCatalog {
    /// A catalog over `cluster`, fetching artifacts into `local`.
    pub fn new(cluster: Cluster, local: ArtifactStore) -> ClusterCatalog {
        ClusterCatalog {
            cluster,
            local,
            mirror: Mutex::default(),
            applied: watch::channel(0).0,
        }
    }

    fn mirror(&self) -> std::sync::MutexGuard<'_, Mirror> {
        self.mirror.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads `name`'s entry from the bucket (not the mirror): the
    /// document, if the service exists, and the entry's sequence, if there
    /// is an entry (a removed service leaves one).
    async fn read(
        &self,
        name: &ServiceName,
    ) -> Result<(Option<ServiceDoc>, Option<u64>), ControlError> {
        let kv = &self.cluster.services;
        let entry = self.cluster.read(move || kv.entry(name.as_str())).await?;
        match entry {
            None => Ok((None, None)),
            Some(entry) => Ok((parse(&entry)?, Some(entry.revision))),
        }
    }

    /// Changes `name`'s entry with `change` (given the current document),
    /// by compare-and-swap, trying again on a fresh read when another
    /// change got in first. `change` returns the new document (`None`:
    /// delete the entry) and what to answer.
    async fn change<T>(
        &self,
        name: &ServiceName,
        mut change: impl FnMut(Option<ServiceDoc>) -> Result<(Option<ServiceDoc>, T), ControlError>,
    ) -> Result<Committed<T>, ControlError> {
        self.cluster.ensure_up()?;
        let kv = &self.cluster.services;
        let started = std::time::Instant::now();
        for attempt in 0..CAS_TRIES {
            let (doc, seq) = self.read(name).await?;
            // A replica answering reads may be a moment behind: "no such
            // service" when this node's mirror has a newer entry of it is
            // read again.
            let mirrored = self.mirror().seqs.get(name.as_str()).copied();
            if mirrored.is_some_and(|m| seq.is_none_or(|s| s < m)) && attempt < 20 {
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            let existed = doc.is_some();
            let (new, value) = change(doc)?;
            let written = match (new, seq) {
                // Nothing there, nothing to remove.
                (None, _) if !existed => return Ok(Committed::by_caller(value)),
                (Some(doc), Some(seq)) => kv
                    .update(name.as_str(), encode(&doc)?, seq)
                    .await
                    .map_err(|e| {
                        (
                            e.kind() == UpdateKind::WrongLastRevision || lost_race(&e),
                            e.to_string(),
                        )
                    }),
                (Some(doc), None) => kv.create(name.as_str(), encode(&doc)?).await.map_err(|e| {
                    (
                        e.kind() == CreateKind::AlreadyExists || lost_race(&e),
                        e.to_string(),
                    )
                }),
                (None, Some(seq)) => kv
                    .delete_expect_revision(name.as_str(), Some(seq))
                    .await
                    .map(|()| 0)
                    .map_err(|e| (lost_race(&e), e.to_string())),
                (None, None) => unreachable!("a document that existed has an entry"),
            };
            match written {
                Ok(0) => {
                    // A delete does not say its sequence: the bucket's last
                    // one covers it.
                    let seq = self.last_seq().await?;
                    return Ok(Committed {
                        value,
                        seq: Some(seq),
                    });
                }
                Ok(seq) => {
                    return Ok(Committed {
                        value,
                        seq: Some(seq),
                    });
                }
                Err((true, _)) => {
                    // Lost a race (or read a replica a moment behind).
                    tokio::time::sleep(Duration::from_millis(5 * attempt as u64)).await;
                    continue;
                }
                Err((false, e)) => {
                    // A server of the cluster just died: its streams elect
                    // new leaders within seconds. Only a write that surely
                    // did not happen is tried again (a timed-out one may
                    // have been stored).
                    if refused(&e)
                        && started.elapsed() < TRANSIENT
                        && self.cluster.ensure_up().is_ok()
                    {
                        tracing::debug!(error = %e, "the cluster refused a change; trying again");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        continue;
                    }
                    return Err(self.cluster.unavailable(e));
                }
            }
        }
        Err(self.cluster.unavailable(format!(
            "service `{name}` changed {CAS_TRIES} times while this change was made; try again"
        )))
    }

    /// The services bucket's stream state now (the KV handle's own copy
    /// is the one from when it was opened): its last sequence, and how
    /// many messages it holds.
    async fn bucket_state(&self) -> Result<(u64, u64), ControlError> {
        let js = &self.cluster.js;
        let name = &format!("KV_{}", super::SERVICES_BUCKET);
        let info = self
            .cluster
            .read(move || async move {
                let mut stream = js.get_stream(&name).await.map_err(|e| e.to_string())?;
                stream.info().await.cloned().map_err(|e| e.to_string())
            })
            .await?;
        Ok((info.state.last_sequence, info.state.messages))
    }

    async fn last_seq(&self) -> Result<u64, ControlError> {
        Ok(self.bucket_state().await?.0)
    }

    fn object_name(digest: &Digest) -> String {
        digest.to_string()
    }

    /// The object store's entry for `digest`, if it holds one.
    async fn object_info(&self, digest: &Digest) -> Result<Option<ObjectInfo>, ControlError> {
        use async_nats::jetstream::object_store::InfoErrorKind;
        self.cluster.ensure_up()?;
        let artifacts = &self.cluster.artifacts;
        let name = &Self::object_name(digest);
        self.cluster
            .read(move || async move {
                match artifacts.info(name).await {
                    Ok(info) => Ok((!info.deleted).then_some(info)),
                    Err(e) if e.kind() == InfoErrorKind::NotFound => Ok(None),
                    Err(e) => Err(e),
                }
            })
            .await
    }
}

fn artifact_record(digest: Digest, info: &ObjectInfo) -> ArtifactRecord {
    ArtifactRecord {
        digest,
        size: info.size as u64,
        created_ms: info
            .modified
            .map_or_else(now_ms, |t| (t.unix_timestamp_nanos() / 1_000_000) as i64),
    }
}

type UpdateKind = async_nats::jetstream::kv::UpdateErrorKind;
type CreateKind = async_nats::jetstream::kv::CreateErrorKind;

/// Whether JetStream refused a request without doing it: no server
/// answers for the stream now (its leader is being elected).
pub(super) fn refused(e: &str) -> bool {
    e.contains("no responders") || e.contains("503") || e.contains("no stream found")
}

/// Whether a request got no answer in time: it may have been done, or
/// not (a leader being elected, or lost with its server).
pub(super) fn timed_out(e: &str) -> bool {
    e.contains("timed out")
}

/// Whether a write failed because the entry changed since it was read
/// (JetStream's "wrong last sequence", error code 10071); `create` reports
/// it wrapped in another kind.
fn lost_race(e: &dyn std::error::Error) -> bool {
    let text = e.to_string();
    text.contains("wrong last sequence") || text.contains("10071")
}

fn encode(doc: &ServiceDoc) -> Result<bytes::Bytes, ControlError> {
    serde_json::to_vec(doc)
        .map(Into::into)
        .map_err(|e| ControlError::Storage(format!("encoding a service record: {e}")))
}

/// The document of an entry; `None` for a deleted one.
fn parse(entry: &Entry) -> Result<Option<ServiceDoc>, ControlError> {
    match entry.operation {
        Operation::Delete | Operation::Purge => Ok(None),
        Operation::Put => parse_value(&entry.key, &entry.value).map(Some),
    }
}

fn parse_value(key: &str, value: &[u8]) -> Result<ServiceDoc, ControlError> {
    serde_json::from_slice(value).map_err(|e| {
        ControlError::Storage(format!(
            "the cluster holds an unreadable record of service `{key}`: {e}"
        ))
    })
}

/// What a follower makes of `value` put under `key` in the services
/// bucket: the record it converges to (for the fuzz targets).
#[cfg(fuzzing)]
pub(super) fn record_of(key: &str, value: &[u8]) -> Option<(ServiceName, Option<ServiceRecord>)> {
    let name = ServiceName::parse(key).ok()?;
    let doc = parse_value(key, value).ok()?;
    let record = doc.record(&name);
    Some((name, record))
}

#[async_trait]
impl Catalog for ClusterCatalog {
    async fn services(&self) -> Result<Vec<ServiceRecord>, ControlError> {
        let mirror = self.mirror();
        Ok(mirror
            .docs
            .iter()
            .filter_map(|(name, doc)| doc.record(name))
            .collect())
    }

    async fn service(&self, name: &ServiceName) -> Result<Option<ServiceRecord>, ControlError> {
        Ok(self.mirror().docs.get(name).and_then(|d| d.record(name)))
    }

    async fn revisions(&self, name: &ServiceName) -> Result<Vec<RevisionRecord>, ControlError> {
        Ok(self
            .mirror()
            .docs
            .get(name)
            .map(|d| d.revisions.iter().map(|r| d.revision(name, r)).collect())
            .unwrap_or_default())
    }

    async fn deploy(
        &self,
        name: &ServiceName,
        artifact: Digest,
        config: &ServiceConfig,
    ) -> Result<Committed<RevisionRecord>, ControlError> {
        self.change(name, |doc| {
            let now = now_ms();
            let mut doc = doc.unwrap_or(ServiceDoc {
                active: 0,
                created_ms: now,
                updated_ms: now,
                revisions: Vec::new(),
            });
            let revision = RevisionDoc {
                number: doc.latest() + 1,
                artifact,
                config: config.clone(),
                created_ms: now,
            };
            let record = doc.revision(name, &revision);
            doc.active = revision.number;
            doc.updated_ms = now;
            doc.revisions.insert(0, revision);
            doc.trim();
            Ok((Some(doc), record))
        })
        .await
    }

    async fn activate(
        &self,
        name: &ServiceName,
        number: u32,
        from: u32,
    ) -> Result<Committed<()>, ControlError> {
        self.change(name, |doc| {
            let mut doc =
                doc.ok_or_else(|| ControlError::NotFound(format!("there is no service `{name}`")))?;
            if doc.active != from {
                return Err(ControlError::Conflict(format!(
                    "service `{name}` changed to revision {} meanwhile (through another node); nothing was rolled back",
                    doc.active
                )));
            }
            if !doc.revisions.iter().any(|r| r.number == number) {
                return Err(ControlError::NotFound(format!(
                    "service `{name}` has no revision {number}"
                )));
            }
            doc.active = number;
            doc.updated_ms = now_ms();
            Ok((Some(doc), ()))
        })
        .await
    }

    async fn remove(&self, name: &ServiceName) -> Result<Option<Committed<()>>, ControlError> {
        let committed = self.change(name, |doc| Ok((None, doc.is_some()))).await?;
        Ok(committed.value.then_some(Committed {
            value: (),
            seq: committed.seq,
        }))
    }

    async fn artifacts(&self) -> Result<Vec<ArtifactRecord>, ControlError> {
        self.cluster.ensure_up()?;
        let store = &self.cluster.artifacts;
        let mut list = store
            .list()
            .await
            .map_err(|e| self.cluster.unavailable(e))?;
        let mut all = Vec::new();
        while let Some(info) = list.next().await {
            let info = info.map_err(|e| self.cluster.unavailable(e))?;
            if info.deleted {
                continue;
            }
            if let Ok(digest) = info.name.parse::<Digest>() {
                all.push(artifact_record(digest, &info));
            }
        }
        all.sort_by_key(|a| std::cmp::Reverse(a.created_ms));
        Ok(all)
    }

    async fn artifact(&self, digest: Digest) -> Result<Option<ArtifactRecord>, ControlError> {
        // A replica answers reads, and may be a moment behind a write made
        // through another server: look twice before saying it is not there.
        for attempt in 0..2 {
            if let Some(info) = self.object_info(&digest).await? {
                return Ok(Some(artifact_record(digest, &info)));
            }
            if attempt == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        Ok(None)
    }

    async fn add_artifact(
        &self,
        digest: Digest,
        bytes: Arc<[u8]>,
    ) -> Result<(ArtifactRecord, bool), ControlError> {
        self.cluster.ensure_up()?;
        if let Some(info) = self.object_info(&digest).await? {
            return Ok((artifact_record(digest, &info), false));
        }
        // A put JetStream refused, or did not answer in time (while a
        // stream elects its leader), is tried again for a while. One that
        // timed out may have been stored all the same: it is looked for
        // first, rather than stored again (a second copy would purge the
        // first's chunks under a node fetching them).
        let started = std::time::Instant::now();
        let mut maybe_stored = false;
        loop {
            if maybe_stored && let Some(info) = self.object_info(&digest).await? {
                return Ok((artifact_record(digest, &info), true));
            }
            let mut reader: &[u8] = &bytes;
            match self
                .cluster
                .artifacts
                .put(Self::object_name(&digest).as_str(), &mut reader)
                .await
            {
                Ok(info) => return Ok((artifact_record(digest, &info), true)),
                Err(e)
                    if (refused(&e.to_string()) || timed_out(&e.to_string()))
                        && started.elapsed() < TRANSIENT
                        && self.cluster.ensure_up().is_ok() =>
                {
                    tracing::debug!(error = %e, "the cluster refused an artifact; trying again");
                    maybe_stored = timed_out(&e.to_string());
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => {
                    return Err(self
                        .cluster
                        .unavailable(format!("storing artifact {digest}: {e}")));
                }
            }
        }
    }

    async fn fetch(&self, digest: Digest) -> Result<(), ControlError> {
        if self.local.contains(&digest) {
            return Ok(());
        }
        let mut object = self
            .cluster
            .artifacts
            .get(Self::object_name(&digest))
            .await
            .map_err(|e| {
                self.cluster
                    .unavailable(format!("fetching artifact {digest}: {e}"))
            })?;
        let mut bytes = Vec::new();
        tokio::time::timeout(FETCH_TIMEOUT, object.read_to_end(&mut bytes))
            .await
            .map_err(|_| {
                self.cluster
                    .unavailable(format!("fetching artifact {digest}: timed out"))
            })?
            .map_err(|e| {
                self.cluster
                    .unavailable(format!("fetching artifact {digest}: {e}"))
            })?;
        let actual = Digest::of(&bytes);
        if actual != digest {
            return Err(ControlError::Storage(format!(
                "artifact {digest} in the cluster's object store does not match its digest (its bytes hash to {actual}); refused"
            )));
        }
        let local = self.local.clone();
        tokio::task::spawn_blocking(move || local.put(&digest, &bytes))
            .await
            .map_err(|e| ControlError::Storage(format!("artifact task failed: {e}")))?
            .map_err(|e| ControlError::Storage(format!("writing artifact {digest}: {e}")))
    }

    async fn applied(&self, seq: u64) -> Result<(), ControlError> {
        let mut applied = self.applied.subscribe();
        let mut link = self.cluster.link();
        let waited = tokio::time::timeout(APPLY_WAIT, async {
            tokio::select! {
                _ = applied.wait_for(|s| *s >= seq) => true,
                _ = link.wait_for(|l| !l.up) => false,
            }
        });
        match waited.await {
            Ok(true) => Ok(()),
            Ok(false) | Err(_) => {
                tracing::warn!(
                    seq,
                    "the change is stored in the cluster but not applied on this node yet"
                );
                Ok(())
            }
        }
    }

    async fn nodes(&self) -> Result<Vec<NodeReport>, ControlError> {
        super::nodes::list(&self.cluster).await
    }

    async fn keys(&self) -> Result<Vec<ApiKey>, ControlError> {
        super::keys::list(&self.cluster).await
    }

    async fn add_key(&self, key: &ApiKey) -> Result<(), ControlError> {
        super::keys::add(&self.cluster, key).await
    }

    async fn put_key(&self, key: &ApiKey) -> Result<(), ControlError> {
        super::keys::put(&self.cluster, key).await
    }

    fn is_cluster(&self) -> bool {
        true
    }

    fn writable(&self) -> Result<(), ControlError> {
        self.cluster.ensure_up()
    }
}

/// The watcher: keeps this node converged with the services bucket until
/// `stop`. The node is not ready (`/readyz`) until it has caught up, and
/// again whenever it has lost the cluster, until it has caught up again.
pub async fn follow(
    catalog: Arc<ClusterCatalog>,
    control: Arc<ControlPlane>,
    stop: CancellationToken,
) {
    let mut link = catalog.cluster.link();
    let mut last: Option<String> = None;
    loop {
        let why = match catalog.converge(&control, &mut link, &stop).await {
            Ok(()) => return,
            Err(why) => why,
        };
        if stop.is_cancelled() {
            return;
        }
        // Cut off, it says so, whichever noticed first: the connection's
        // pings or the watch's heartbeats.
        let unready = if link.borrow().up {
            format!(
                "not converged with the cluster at {}: {why}",
                catalog.cluster.display
            )
        } else {
            format!(
                "lost the cluster at {}; serving what is loaded",
                catalog.cluster.display
            )
        };
        control.runtime().set_unready(Some(unready));
        if last.as_deref() != Some(why.as_str()) {
            tracing::warn!(error = %why, "following the cluster again");
        } else {
            tracing::debug!(error = %why, "following the cluster again");
        }
        last = Some(why);
        // Wait until connected (or a second, to retry a failed read).
        let _ = tokio::time::timeout(Duration::from_secs(1), link.wait_for(|l| l.up)).await;
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

impl ClusterCatalog {
    /// Catches up with the bucket, then applies each change as it comes,
    /// until `stop` (`Ok`) or a lost connection or broken watch (`Err`:
    /// start over).
    async fn converge(
        &self,
        control: &ControlPlane,
        link: &mut watch::Receiver<Link>,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let connects = link.borrow_and_update().connects;
        if !link.borrow().up {
            return Err("it cannot be reached".into());
        }
        let kv = &self.cluster.services;
        // One watch, from the stream's leader: first the last value of
        // every key (deletions too), then every change as it comes.
        let (last, stored) = self.bucket_state().await.map_err(|e| e.to_string())?;
        let mut watch = kv
            .watch_with_history(">")
            .await
            .map_err(|e| e.to_string())?;
        let mut fresh = Mirror::default();
        let mut caught_up = stored == 0;
        while !caught_up {
            let entry = tokio::select! {
                () = stop.cancelled() => return Ok(()),
                entry = tokio::time::timeout(CATCH_UP, watch.next()) => entry,
            };
            let entry = match entry {
                Err(_) => return Err("catching up took too long".into()),
                Ok(None) => return Err("the watch ended".into()),
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(entry))) => entry,
            };
            caught_up = entry.delta == 0;
            fresh.seqs.insert(entry.key.clone(), entry.revision);
            match (ServiceName::parse(&entry.key), parse(&entry)) {
                (Ok(name), Ok(Some(doc))) => {
                    fresh.docs.insert(name, doc);
                }
                (Ok(name), Ok(None)) => {
                    fresh.docs.remove(&name);
                }
                (Err(e), _) => {
                    tracing::warn!(key = entry.key, error = %e, "ignoring an entry of the services bucket")
                }
                (_, Err(e)) => {
                    tracing::error!(key = entry.key, error = %e, "ignoring an unreadable service record")
                }
            }
        }
        let records: Vec<ServiceRecord> = fresh
            .docs
            .iter()
            .filter_map(|(name, doc)| doc.record(name))
            .collect();
        let high = fresh.seqs.values().copied().max().unwrap_or(0).max(last);
        *self.mirror() = fresh;
        control.converge_all(&records).await;
        self.applied.send_modify(|s| *s = (*s).max(high));
        control.runtime().set_unready(None);
        tracing::info!(services = records.len(), "converged with the cluster");
        let mut behind: Option<u64> = None;
        let mut retry = tokio::time::interval(RETRY_FAILED);
        retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                _ = retry.tick() => {
                    // What failed here for a passing reason (an artifact
                    // that could not be fetched) is tried again.
                    for name in control.failed_services() {
                        let record = self.mirror().docs.get(&name).and_then(|d| d.record(&name));
                        control.converge(&name, record.as_ref()).await;
                    }
                    // A watch whose consumer lived on a server that died
                    // may stall without a word: when the bucket is ahead
                    // of what this node applied, twice in a row, catch up
                    // from the start.
                    if link.borrow().up
                        && let Ok(last) = self.last_seq().await
                    {
                        let applied = *self.applied.borrow();
                        match behind {
                            Some(was) if last > applied && applied <= was => {
                                return Err("the watch fell behind; catching up".into());
                            }
                            _ => behind = (last > applied).then_some(applied),
                        }
                    }
                }
                changed = link.changed() => {
                    if changed.is_err() {
                        return Err("the connection closed".into());
                    }
                    let now = *link.borrow_and_update();
                    if !now.up {
                        control.runtime().set_unready(Some(format!(
                            "lost the cluster at {}; serving what is loaded",
                            self.cluster.display
                        )));
                    } else if now.connects != connects {
                        return Err("reconnected; catching up".into());
                    }
                }
                entry = watch.next() => {
                    let entry = match entry {
                        None => return Err("the watch ended".into()),
                        Some(Err(e)) => return Err(e.to_string()),
                        Some(Ok(entry)) => entry,
                    };
                    self.apply(control, entry).await;
                }
            }
        }
    }

    /// Applies one change of the bucket, unless this node has seen it (or
    /// a later one of the same key) already.
    async fn apply(&self, control: &ControlPlane, entry: Entry) {
        let seq = entry.revision;
        let name = match ServiceName::parse(&entry.key) {
            Ok(name) => name,
            Err(e) => {
                tracing::warn!(key = entry.key, error = %e, "ignoring an entry of the services bucket");
                self.applied.send_modify(|s| *s = (*s).max(seq));
                return;
            }
        };
        let doc = match parse(&entry) {
            Ok(doc) => doc,
            Err(e) => {
                tracing::error!(service = %name, error = %e, "ignoring an unreadable service record");
                self.applied.send_modify(|s| *s = (*s).max(seq));
                return;
            }
        };
        let record = {
            let mut mirror = self.mirror();
            if mirror.seqs.get(&entry.key).is_some_and(|&seen| seen >= seq) {
                None
            } else {
                mirror.seqs.insert(entry.key.clone(), seq);
                let record = doc.as_ref().and_then(|d| d.record(&name));
                match doc {
                    Some(doc) => mirror.docs.insert(name.clone(), doc),
                    None => mirror.docs.remove(&name),
                };
                Some(record)
            }
        };
        if let Some(record) = record {
            control.converge(&name, record.as_ref()).await;
        }
        self.applied.send_modify(|s| *s = (*s).max(seq));
    }
}
