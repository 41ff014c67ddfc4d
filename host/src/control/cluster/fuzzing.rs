//! Entry points for the fuzz targets in `fuzz/` (compiled only there, with
//! `--cfg fuzzing`): what a node does with each kind of record it reads
//! back from JetStream, from the bytes on, without the network.

use crate::control::ControlPlane;
use crate::control::catalog::NodeReport;
use crate::control::ledger::Ledger;
use crate::runtime::logs::{Level, LogFilter};
use crate::triggers::http::gateway::auth::KeyTable;
use crate::values::key::ApiKey;
use crate::values::usage::Record;
use async_nats::HeaderMap;
use bytes::Bytes;

/// A put in the services bucket, converged to as a follower does.
pub async fn service_entry(control: &ControlPlane, key: &str, value: &[u8]) {
    if let Some((name, record)) = super::catalog::record_of(key, value) {
        control.converge(&name, record.as_ref()).await;
    }
}

/// A put in the keys bucket, taken into the key table as a follower does.
pub fn key_entry(table: &KeyTable, key: &str, value: &[u8]) {
    if let Ok(api_key) = serde_json::from_slice::<ApiKey>(value) {
        table.upsert(api_key);
    } else {
        table.remove(key);
    }
}

/// A node's report, as `GET /v1/nodes` reads it.
pub fn node_entry(value: &[u8]) -> Option<NodeReport> {
    serde_json::from_slice(value).ok()
}

/// An event message of the bus stream: its headers (`name: value`
/// lines) and payload.
pub fn bus_message(headers: &str, payload: &[u8]) {
    let mut map = HeaderMap::new();
    for line in headers.lines() {
        // A name or value the NATS protocol would not carry is skipped
        // (the client's insert panics on one).
        if let Some((name, value)) = line.split_once(':')
            && let Ok(name) = name.trim().parse::<async_nats::header::HeaderName>()
            && !value.contains('\r')
        {
            map.insert(name, value.trim());
        }
    }
    let _ = super::bus::decode(Some(&map), &Bytes::copy_from_slice(payload));
}

/// A message of the usage stream, written to `ledger` as a node does.
pub fn usage_message(ledger: &Ledger, payload: &[u8]) {
    if let Ok(records) = serde_json::from_slice::<Vec<Record>>(payload) {
        for record in records {
            ledger.record(record);
        }
        ledger.flush();
    }
}

/// A log line from another node, filtered as `berth logs` does.
pub fn log_line(json: &[u8]) {
    if let Some(line) = super::logs::RemoteLine::parse(json) {
        let filter = LogFilter {
            service: Some("hello".into()),
            since_ms: Some(1),
            invocation: None,
            level: Some(Level::Info),
        };
        let _ = line.wanted_by(&filter);
    }
}
