//! The nodes of a cluster: each reports itself (a [`NodeReport`]) in the
//! KV bucket `berth_nodes` every [`HEARTBEAT`], and at once after it
//! changes what it serves; a report older than [`NODE_TIMEOUT`] is a node
//! gone (killed, cut off). The bucket's entries expire by themselves a
//! while later.

use super::{Cluster, HEARTBEAT, NODE_TIMEOUT};
use crate::control::catalog::NodeReport;
use crate::control::deploy::{ControlError, ControlPlane};
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Every live node's latest report, in name order.
pub async fn list(cluster: &Cluster) -> Result<Vec<NodeReport>, ControlError> {
    // Cut off, a node knows of no other (rather than wait for a timeout).
    if cluster.ensure_up().is_err() {
        return Ok(Vec::new());
    }
    let kv = &cluster.nodes;
    let mut keys = kv.keys().await.map_err(|e| cluster.unavailable(e))?;
    let mut names = Vec::new();
    while let Some(key) = keys.next().await {
        names.push(key.map_err(|e| cluster.unavailable(e))?);
    }
    let mut entries = Vec::new();
    for name in names {
        let Some(entry) = kv
            .entry(name.as_str())
            .await
            .map_err(|e| cluster.unavailable(e))?
        else {
            continue;
        };
        if entry.operation == async_nats::jetstream::kv::Operation::Put {
            entries.push((name, entry));
        }
    }
    // Ages are measured against the newest report (this node's own, made
    // at most a heartbeat ago), in the servers' clock: a node whose clock
    // is off still sees who is alive.
    let created =
        |e: &async_nats::jetstream::kv::Entry| e.created.unix_timestamp_nanos() / 1_000_000;
    let newest = entries.iter().map(|(_, e)| created(e)).max().unwrap_or(0);
    let mut nodes = Vec::new();
    for (name, entry) in entries {
        let age_ms = (newest - created(&entry)).max(0);
        if Duration::from_millis(age_ms as u64) > NODE_TIMEOUT {
            continue;
        }
        match serde_json::from_slice::<NodeReport>(&entry.value) {
            Ok(report) => nodes.push(report),
            Err(e) => tracing::warn!(node = name, error = %e, "ignoring an unreadable node report"),
        }
    }
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

/// Reports this node every [`HEARTBEAT`] (and whenever `control` says
/// what it serves has changed) until `stop`; then removes its report, so
/// the node leaves the list at once on a clean shutdown.
pub async fn heartbeat(cluster: Cluster, control: Arc<ControlPlane>, stop: CancellationToken) {
    let changed = control.node_changed();
    loop {
        if cluster.ensure_up().is_ok() {
            let report = control.node_report();
            match serde_json::to_vec(&report) {
                Ok(json) => {
                    if let Err(e) = cluster.nodes.put(cluster.node.as_str(), json.into()).await {
                        tracing::debug!(error = %e, "cannot report this node to the cluster");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot encode this node's report"),
            }
        }
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(HEARTBEAT) => {}
            () = changed.notified() => {}
        }
    }
    if let Err(e) = cluster.nodes.purge(cluster.node.as_str()).await {
        tracing::debug!(error = %e, "cannot remove this node's report");
    }
}
