//! Schedules in a cluster: when each schedule last fired is an entry of the
//! KV bucket `berth_schedules` (`<service>.<schedule>`, ms since the
//! epoch). Every node's scheduler wakes at the due time; the one whose
//! compare-and-swap on the entry succeeds fires, the others find the
//! schedule no longer due. A schedule missed while every node was down is
//! due once when the first node comes back.
//!
//! The claim is made before the event is published: a node that dies in
//! between loses that one firing (the next fires on time).

use super::Cluster;
use crate::control::scheduler::Firings;
use crate::values::schedule::Schedule;
use crate::values::service::ServiceName;
use async_nats::jetstream::kv::Operation;
use std::collections::HashMap;

/// The firings of a cluster.
pub struct ClusterFirings(pub Cluster);

fn key(service: &ServiceName, name: &str) -> String {
    format!("{service}.{name}")
}

impl ClusterFirings {
    /// The entry's last firing and its sequence, if it has one.
    async fn read(&self, key: &str) -> Result<Option<(i64, u64)>, String> {
        // Cut off, say so at once (not after a request's timeout).
        self.0.ensure_up().map_err(|e| e.to_string())?;
        let entry = self
            .0
            .schedules
            .entry(key)
            .await
            .map_err(|e| e.to_string())?;
        Ok(entry
            .filter(|e| e.operation == Operation::Put)
            .and_then(|e| {
                let last = std::str::from_utf8(&e.value).ok()?.parse().ok()?;
                Some((last, e.revision))
            }))
    }
}

#[async_trait::async_trait]
impl Firings for ClusterFirings {
    async fn last_fired(
        &self,
        service: &ServiceName,
        names: &[String],
        now: i64,
    ) -> HashMap<String, i64> {
        let mut out = HashMap::new();
        for name in names {
            let key = key(service, name);
            let last = match self.read(&key).await {
                Ok(Some((last, _))) => last,
                Ok(None) => {
                    // A new schedule starts counting now (the first node
                    // to see it says when).
                    match self.0.schedules.create(&key, now.to_string().into()).await {
                        Ok(_) => now,
                        Err(_) => match self.read(&key).await {
                            Ok(Some((last, _))) => last,
                            _ => now,
                        },
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %service, schedule = name, error = %e, "cannot read when the schedule last fired");
                    now
                }
            };
            out.insert(name.clone(), last);
        }
        out
    }

    async fn claim(&self, service: &ServiceName, schedule: &Schedule, now: i64) -> bool {
        let key = key(service, &schedule.name);
        let read = match self.read(&key).await {
            Ok(read) => read,
            Err(e) => {
                tracing::warn!(service = %service, schedule = schedule.name, error = %e, "cannot claim the firing; it is skipped");
                return false;
            }
        };
        match read {
            Some((last, seq)) => {
                if schedule.next_after(last).is_none_or(|next| next > now) {
                    return false;
                }
                self.0
                    .schedules
                    .update(&key, now.to_string().into(), seq)
                    .await
                    .is_ok()
            }
            None => self
                .0
                .schedules
                .create(&key, now.to_string().into())
                .await
                .is_ok(),
        }
    }

    async fn fired(&self, _service: &ServiceName, _name: &str, _now: i64) {
        // Recorded by the claim.
    }
}
