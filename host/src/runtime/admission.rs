//! Admission: how many instances of a service may run at once, how many
//! callers may wait for one, and for how long. Past those bounds a caller is
//! turned away at once (HTTP 503 with `Retry-After`) instead of piling up.
//!
//! A host-wide gate sits behind the per-service one: it matches the number
//! of instance slots in the engine's pool, so the pool is never asked for
//! more instances than it has.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per-service admission control.
#[derive(Debug)]
pub struct Admission {
    running: Arc<Semaphore>,
    waiting: AtomicU32,
    queue: u32,
    queue_timeout: Duration,
}

/// Why a caller was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// Every instance is busy and the wait queue is full.
    #[error("the service is at its concurrency limit and its queue is full")]
    QueueFull,
    /// The caller waited in the queue for the whole queue timeout.
    #[error("no instance became free within the queue timeout")]
    QueueTimeout,
    /// The host is shutting down.
    #[error("the host is shutting down")]
    Closed,
}

/// Held for the whole invocation; dropping it frees the slots.
#[derive(Debug)]
pub struct Permit {
    _service: OwnedSemaphorePermit,
    host: Option<OwnedSemaphorePermit>,
    /// Whether the invocation had to wait for a slot.
    pub waited: bool,
}

impl Permit {
    /// Frees the service's slot, keeping the host's: what an idle reused
    /// instance holds, since it still occupies a slot of the instance pool.
    pub fn into_host_slot(self) -> Option<OwnedSemaphorePermit> {
        self.host
    }

    /// Takes the host's slot out of the permit: a shared instance holds
    /// one for all the invocations it serves (the one it was made for
    /// gives it its own; the others give theirs back).
    pub fn take_host_slot(&mut self) -> Option<OwnedSemaphorePermit> {
        self.host.take()
    }
}

/// Decrements the waiting count however the wait ends.
struct Waiting<'a>(&'a AtomicU32);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Admission {
    /// `concurrency` instances at once, `queue` callers waiting at most
    /// `queue_timeout` each.
    pub fn new(concurrency: u32, queue: u32, queue_timeout: Duration) -> Self {
        Admission {
            running: Arc::new(Semaphore::new(concurrency as usize)),
            waiting: AtomicU32::new(0),
            queue,
            queue_timeout,
        }
    }

    /// Instances running now.
    pub fn in_flight(&self, concurrency: u32) -> u32 {
        concurrency - self.running.available_permits() as u32
    }

    /// Callers waiting now.
    pub fn queued(&self) -> u32 {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Waits for a slot of this service and then one of the host.
    pub async fn admit(&self, host: &Arc<Semaphore>) -> Result<Permit, Rejection> {
        let mut waited = false;
        let service = match self.running.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Rejection::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                if self.waiting.fetch_add(1, Ordering::Relaxed) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::Relaxed);
                    return Err(Rejection::QueueFull);
                }
                let _waiting = Waiting(&self.waiting);
                waited = true;
                match tokio::time::timeout(self.queue_timeout, self.running.clone().acquire_owned())
                    .await
                {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => return Err(Rejection::Closed),
                    Err(_elapsed) => return Err(Rejection::QueueTimeout),
                }
            }
        };
        let host = match host.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(tokio::sync::TryAcquireError::Closed) => return Err(Rejection::Closed),
            Err(tokio::sync::TryAcquireError::NoPermits) => {
                waited = true;
                match tokio::time::timeout(self.queue_timeout, host.clone().acquire_owned()).await {
                    Ok(Ok(permit)) => permit,
                    Ok(Err(_closed)) => return Err(Rejection::Closed),
                    Err(_elapsed) => return Err(Rejection::QueueTimeout),
                }
            }
        };
        Ok(Permit {
            _service: service,
            host: Some(host),
            waited,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn bounded_queue_then_rejection() {
        let host = Arc::new(Semaphore::new(100));
        let a = Arc::new(Admission::new(1, 1, Duration::from_secs(1)));
        let first = a.admit(&host).await.unwrap();
        assert_eq!(a.in_flight(1), 1);

        // One caller may wait...
        let waiter = tokio::spawn({
            let a = a.clone();
            let host = host.clone();
            async move { a.admit(&host).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(a.queued(), 1);
        // ...a second is turned away at once.
        assert_eq!(a.admit(&host).await.unwrap_err(), Rejection::QueueFull);

        drop(first);
        let second = waiter.await.unwrap().unwrap();
        assert_eq!(a.queued(), 0);

        // A waiter that is never served times out.
        let started = tokio::time::Instant::now();
        assert_eq!(a.admit(&host).await.unwrap_err(), Rejection::QueueTimeout);
        assert!(started.elapsed() >= Duration::from_secs(1));
        drop(second);
        assert!(a.admit(&host).await.is_ok());
    }

    #[tokio::test]
    async fn host_gate_applies_across_services() {
        let host = Arc::new(Semaphore::new(1));
        let a = Admission::new(10, 10, Duration::from_millis(10));
        let b = Admission::new(10, 10, Duration::from_millis(10));
        let held = a.admit(&host).await.unwrap();
        assert_eq!(b.admit(&host).await.unwrap_err(), Rejection::QueueTimeout);
        drop(held);
        assert!(b.admit(&host).await.is_ok());
    }
}
