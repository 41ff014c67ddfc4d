//! Warm instances of a service that opted in to reuse
//! ([`crate::values::reuse`]): a store whose invocation ended well goes
//! back here, and the service's next invocation takes it instead of making
//! a fresh one — until it has served `max_requests`, or waited unused for
//! `idle`.
//!
//! Only an instance whose invocation ended well comes back (no trap, no
//! fuel or memory exhaustion, no deadline, its response body finished):
//! one that failed is dropped, so a guest's failure never reaches the
//! next invocation through a broken instance.

use super::InstanceState;
use super::shared::SharedInstances;
use crate::values::digest::Digest;
use crate::values::reuse::Reuse;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use wasmtime::Store;

/// A store kept for reuse, with its instance in it.
pub struct Warm {
    /// The store.
    pub store: Store<InstanceState>,
    /// Where its instance came from and what it served.
    pub history: History,
    /// When it was put back.
    since: Instant,
    /// Its slot of the host's instance pool, held while it waits (the
    /// invocation that takes it holds one of its own).
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// A reusable instance's history.
#[derive(Debug, Clone, Copy)]
pub struct History {
    /// The invocations it served.
    pub served: u32,
    /// The artifact it was made from.
    pub digest: Digest,
    /// The invocation it was made for: it names the instance in the
    /// invocations' logs and records.
    pub made: InstanceTag,
}

/// Which instance served an invocation: the id of the invocation it was
/// made for. Invocations that shared an instance share its tag.
pub type InstanceTag = crate::values::id::InvocationId;

/// A service's warm instances.
pub struct InstancePool {
    reuse: Reuse,
    idle: Mutex<Vec<Warm>>,
    /// Its WASI 0.3 instances serving several invocations at once, if it
    /// allows more than one (`max_concurrent`).
    shared: Option<Arc<SharedInstances>>,
}

impl std::fmt::Debug for InstancePool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstancePool")
            .field("reuse", &self.reuse)
            .field("idle", &self.len())
            .finish()
    }
}

impl InstancePool {
    /// An empty pool reusing instances as `reuse` says.
    pub fn new(reuse: Reuse) -> Self {
        InstancePool {
            reuse,
            idle: Mutex::new(Vec::new()),
            shared: (reuse.max_concurrent > 1).then(|| SharedInstances::new(reuse)),
        }
    }

    /// Its shared instances, if its instances may serve several
    /// invocations at once (a WASI 0.3 guest's; a 0.2 guest's serve one at
    /// a time whatever `max_concurrent` says).
    pub fn shared(&self) -> Option<&Arc<SharedInstances>> {
        self.shared.as_ref()
    }

    /// Warm instances waiting now.
    fn len(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Takes the instances of `idle` that waited past `idle` out of it.
    fn expire(&self, idle: &mut Vec<Warm>, now: Instant) -> Vec<Warm> {
        let (keep, expired) = std::mem::take(idle)
            .into_iter()
            .partition(|warm| now.duration_since(warm.since) < self.reuse.idle);
        *idle = keep;
        expired
    }

    /// The most recently used warm instance of `digest` that has not
    /// waited past `idle` (its pages are the likeliest to be resident).
    pub fn take(&self, digest: &Digest) -> Option<Warm> {
        let now = Instant::now();
        let (warm, expired) = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let expired = self.expire(&mut idle, now);
            let warm = idle
                .iter()
                .rposition(|warm| warm.history.digest == *digest)
                .map(|at| idle.swap_remove(at));
            (warm, expired)
        };
        // Dropped outside the lock: a store's drop returns its slot.
        drop(expired);
        warm
    }

    /// Puts `warm` back after an invocation that ended well, unless it has
    /// served its `max_requests` (then it is dropped).
    pub fn put(&self, mut warm: Warm) {
        if warm.history.served >= self.reuse.max_requests {
            return;
        }
        warm.since = Instant::now();
        let dropped = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            idle.push(warm);
            // At most as many as ran at once (each holds a host slot);
            // a fixed bound besides.
            (idle.len() > MAX_IDLE).then(|| idle.remove(0))
        };
        drop(dropped);
    }

    /// Drops the instances that waited past `idle`; how many.
    pub fn sweep(&self, now: Instant) -> usize {
        let expired = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            self.expire(&mut idle, now)
        };
        // Dropped outside the lock: a store's drop returns its slot.
        expired.len()
    }
}

impl Drop for InstancePool {
    fn drop(&mut self) {
        // The service's revision is gone: its shared instances go once
        // they are done.
        if let Some(shared) = &self.shared {
            shared.shut();
        }
    }
}

/// The most warm instances one service keeps.
const MAX_IDLE: usize = 1024;

impl Warm {
    /// A store going back to its pool with its `history`, holding `slot`.
    pub fn new(
        store: Store<InstanceState>,
        history: History,
        slot: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        Warm {
            store,
            history,
            since: Instant::now(),
            _slot: slot,
        }
    }
}
