//! One bill for the cluster: every node ships its usage records through
//! the stream `BERTH_USAGE` (`berth.usage.<node>`, batches of JSON records),
//! and every node collects the whole stream into its own ledger through a
//! durable consumer of its own, so any node's `/v1/usage` answers for the
//! cluster — records of nodes that have since died included. The ledger
//! keeps each invocation once (its key is the invocation's id and start),
//! so a batch delivered twice counts once.
//!
//! Loss window: a node keeps its records in memory for at most
//! [`SHIP_EVERY`] before it ships them; `kill -9` loses those for the
//! cluster's bill (the node's own ledger has them). While NATS is
//! unreachable the records wait in memory, up to [`MAX_BUFFERED`] (beyond
//! that the oldest are dropped, and counted in the log); a node stopped
//! before NATS is back ships none of them.

use super::Cluster;
use crate::control::ledger::Ledger;
use crate::runtime::record::UsageSink;
use crate::values::usage::Record;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The usage stream.
pub const USAGE_STREAM: &str = "BERTH_USAGE";

/// How long a record waits before it is shipped.
pub const SHIP_EVERY: Duration = Duration::from_millis(500);

/// Records kept in memory while they cannot be shipped.
pub const MAX_BUFFERED: usize = 200_000;

/// Records per message (well under NATS's 1 MiB payload).
const BATCH: usize = 500;

/// This node's records on their way to the cluster. Each is also written
/// to the node's own ledger at once (the ledger keeps it once when it comes
/// back through the stream): a node never loses its own records to an
/// outage of NATS, though the other nodes see them only once shipped.
pub struct Shipper {
    buffer: Mutex<VecDeque<Record>>,
    dropped: std::sync::atomic::AtomicU64,
    ledger: Arc<Ledger>,
}

impl Shipper {
    /// A shipper that also keeps each record in `ledger`.
    pub fn new(ledger: Arc<Ledger>) -> Shipper {
        Shipper {
            buffer: Mutex::default(),
            dropped: Default::default(),
            ledger,
        }
    }
}

impl UsageSink for Shipper {
    fn record(&self, record: Record) {
        self.ledger.record(record.clone());
        let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
        if buffer.len() >= MAX_BUFFERED {
            buffer.pop_front();
            let dropped = self
                .dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if dropped.is_power_of_two() {
                tracing::error!(
                    dropped = dropped + 1,
                    "usage records dropped: the cluster has been unreachable too long"
                );
            }
        }
        buffer.push_back(record);
    }
}

impl Shipper {
    /// Ships what is buffered; what could not be shipped stays, in order.
    pub async fn ship(&self, cluster: &Cluster) {
        loop {
            let batch: Vec<Record> = {
                let buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
                buffer.iter().take(BATCH).cloned().collect()
            };
            if batch.is_empty() || cluster.ensure_up().is_err() {
                return;
            }
            let payload = match serde_json::to_vec(&batch) {
                Ok(payload) => payload,
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode usage records");
                    return;
                }
            };
            let subject = format!("berth.usage.{}", cluster.node);
            let stored = match cluster.js.publish(subject, payload.into()).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = stored {
                tracing::debug!(error = %e, "usage records not shipped yet");
                return;
            }
            let mut buffer = self.buffer.lock().unwrap_or_else(|e| e.into_inner());
            let n = batch.len().min(buffer.len());
            buffer.drain(..n);
        }
    }
}

/// Opens (or creates) the usage stream, keeping records as long as the
/// ledger does.
pub async fn open(cluster: &Cluster, retention: Duration) -> anyhow::Result<stream::Stream> {
    cluster
        .js
        .get_or_create_stream(stream::Config {
            name: USAGE_STREAM.into(),
            description: Some("Berth: usage records of every node".into()),
            subjects: vec!["berth.usage.>".into()],
            storage: stream::StorageType::File,
            num_replicas: cluster.replicas(),
            max_age: retention,
            ..Default::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("opening the usage stream: {e}"))
}

/// Ships this node's records every [`SHIP_EVERY`] until `stop`, then once
/// more.
pub async fn ship(cluster: Cluster, shipper: Arc<Shipper>, stop: CancellationToken) {
    loop {
        shipper.ship(&cluster).await;
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep(SHIP_EVERY) => {}
        }
    }
    shipper.ship(&cluster).await;
}

/// Collects every node's records into `ledger` until `stop`: a durable
/// consumer of this node's own (`usage_<node>`), acknowledged once the
/// ledger has committed the batch.
pub async fn collect(
    cluster: Cluster,
    usage: stream::Stream,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    let name = format!("usage_{}", cluster.node);
    loop {
        let result = collect_once(&usage, &name, &ledger, &stop).await;
        if stop.is_cancelled() {
            return;
        }
        if let Err(e) = result {
            tracing::debug!(error = %e, "collecting usage records again");
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn collect_once(
    usage: &stream::Stream,
    name: &str,
    ledger: &Arc<Ledger>,
    stop: &CancellationToken,
) -> Result<(), String> {
    let consumer = usage
        .get_or_create_consumer(
            name,
            consumer::pull::Config {
                durable_name: Some(name.to_owned()),
                description: Some("Berth: this node's copy of the cluster's usage".into()),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(60),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => return Ok(()),
            message = messages.next() => message,
        };
        let message = match message {
            None => return Err("the usage stream ended".into()),
            Some(Err(e)) => return Err(e.to_string()),
            Some(Ok(message)) => message,
        };
        match serde_json::from_slice::<Vec<Record>>(&message.payload) {
            Ok(records) => {
                for record in records {
                    ledger.record(record);
                }
                let ledger = ledger.clone();
                let _ = tokio::task::spawn_blocking(move || ledger.flush()).await;
            }
            Err(e) => tracing::error!(error = %e, "skipping unreadable usage records"),
        }
        if let Err(e) = message.ack_with(jetstream::AckKind::Ack).await {
            tracing::debug!(error = %e, "acknowledging usage records");
        }
    }
}
