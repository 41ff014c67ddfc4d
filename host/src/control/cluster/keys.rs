//! API keys in a cluster: one record per key in the KV bucket `berth_keys`
//! (its hash and what it opens, never the key), created with a
//! compare-and-swap so two nodes cannot make the same name twice, and
//! followed by every node into its gateway's key table.

use super::Cluster;
use crate::control::deploy::ControlError;
use crate::triggers::http::gateway::Gateway;
use crate::triggers::http::gateway::auth::KeyTable;
use crate::values::key::ApiKey;
use async_nats::jetstream::kv::{CreateErrorKind, Operation};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every key in the bucket.
pub async fn list(cluster: &Cluster) -> Result<Vec<ApiKey>, ControlError> {
    cluster.ensure_up()?;
    let mut names = cluster
        .keys
        .keys()
        .await
        .map_err(|e| cluster.unavailable(e))?;
    let mut keys = Vec::new();
    while let Some(name) = names.next().await {
        let name = name.map_err(|e| cluster.unavailable(e))?;
        if let Some(bytes) = cluster
            .keys
            .get(&name)
            .await
            .map_err(|e| cluster.unavailable(e))?
        {
            match serde_json::from_slice::<ApiKey>(&bytes) {
                Ok(key) => keys.push(key),
                Err(e) => {
                    tracing::error!(key = name, error = %e, "ignoring an unreadable API key record")
                }
            }
        }
    }
    keys.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(keys)
}

/// Stores a new key; `Conflict` if its name is taken.
pub async fn add(cluster: &Cluster, key: &ApiKey) -> Result<(), ControlError> {
    cluster.ensure_up()?;
    let bytes = serde_json::to_vec(key).map_err(|e| ControlError::Storage(e.to_string()))?;
    match cluster.keys.create(key.name.as_str(), bytes.into()).await {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == CreateErrorKind::AlreadyExists => Err(ControlError::Conflict(
            format!("an API key named {} exists", key.name),
        )),
        Err(e) => Err(cluster.unavailable(e)),
    }
}

/// Stores a changed key over the one of its name.
pub async fn put(cluster: &Cluster, key: &ApiKey) -> Result<(), ControlError> {
    cluster.ensure_up()?;
    let bytes = serde_json::to_vec(key).map_err(|e| ControlError::Storage(e.to_string()))?;
    cluster
        .keys
        .put(key.name.as_str(), bytes.into())
        .await
        .map(|_| ())
        .map_err(|e| cluster.unavailable(e))
}

/// Keeps `table` in step with the bucket until `stop`: every key at first,
/// then each change as it comes; a broken watch starts over.
pub async fn follow(cluster: Cluster, gateway: Arc<Gateway>, stop: CancellationToken) {
    loop {
        if let Err(e) = watch(&cluster, gateway.keys(), &stop).await {
            tracing::debug!(error = %e, "following the API keys again");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn watch(
    cluster: &Cluster,
    table: &KeyTable,
    stop: &CancellationToken,
) -> Result<(), String> {
    let mut entries = cluster
        .keys
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    loop {
        let entry = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            entry = entries.next() => entry,
        };
        let entry = match entry {
            None => return Err("the watch ended".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(entry)) => entry,
        };
        match entry.operation {
            Operation::Put => match serde_json::from_slice::<ApiKey>(&entry.value) {
                Ok(key) => table.upsert(key),
                Err(e) => {
                    tracing::error!(key = entry.key, error = %e, "ignoring an unreadable API key record")
                }
            },
            Operation::Delete | Operation::Purge => table.remove(&entry.key),
        }
    }
}
