//! CPU turns: fairness between services when guests burn CPU.
//!
//! A guest that is still running after a whole epoch tick is CPU-bound.
//! From then on, at each tick it gives back its CPU turn and waits for one
//! of its service's turns (as many as the machine has cores, less one)
//! before it goes on, and it gives the turn back whenever it calls the
//! host. So however many invocations of one service burn CPU, at most that
//! many of them compete with the rest of the host for the runtime's
//! threads, and a guest waiting on I/O never holds a turn.

use std::sync::{Arc, Mutex};

/// An invocation's share of its service's CPU turns (see [`CpuTurn`]).
pub struct CpuTurn {
    turns: Arc<tokio::sync::Semaphore>,
    held: Mutex<Option<tokio::sync::OwnedSemaphorePermit>>,
    holding: std::sync::atomic::AtomicBool,
}

impl CpuTurn {
    /// A share of `turns`, holding none yet.
    pub fn new(turns: Arc<tokio::sync::Semaphore>) -> Arc<CpuTurn> {
        Arc::new(CpuTurn {
            turns,
            held: Mutex::new(None),
            holding: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Gives the turn back, if held.
    ///
    /// The turn is handed to a thread of its own to be released: the
    /// invocation it wakes is then queued behind the work already waiting
    /// for the runtime's threads. Released here, on a runtime thread, it
    /// would run next (tokio's LIFO slot), and a service's CPU-bound
    /// invocations would pass their turns among themselves while requests
    /// to other services wait.
    pub(super) fn release(&self) {
        if self
            .holding
            .swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Some(permit) = self.held.lock().unwrap_or_else(|e| e.into_inner()).take()
        {
            release_elsewhere(permit);
        }
    }

    /// Gives the turn back, lets everything else run, then waits for a
    /// turn (first come, first served among the service's invocations) and
    /// holds it.
    pub(super) async fn next_turn(self: Arc<Self>) {
        self.release();
        tokio::task::yield_now().await;
        let permit = self.turns.clone().acquire_owned().await.ok();
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) = permit;
        self.holding
            .store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Drops CPU turns on a thread outside the runtime (see [`CpuTurn::release`]).
fn release_elsewhere(permit: tokio::sync::OwnedSemaphorePermit) {
    static RELEASER: std::sync::OnceLock<
        Option<std::sync::mpsc::Sender<tokio::sync::OwnedSemaphorePermit>>,
    > = std::sync::OnceLock::new();
    // `None` if the thread could not be started: turns are then released
    // where they are given back.
    let sender = RELEASER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::OwnedSemaphorePermit>();
        std::thread::Builder::new()
            .name("berth-turns".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    if let Some(sender) = sender
        && let Err(returned) = sender.send(permit)
    {
        drop(returned.0);
    }
}
