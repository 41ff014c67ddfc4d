//! The memory limiter: caps an instance's linear memory and records its
//! peak, for the memory limit and the usage record; and the host's budget
//! of linear memory, which all instances share.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use wasmtime::ResourceLimiter;

/// The linear memory all the host's instances may hold together. A growth
/// past it fails inside the guest (`memory.grow` returns -1) as one past
/// the instance's own cap does, so guests together never take the memory
/// the host itself needs (see [`crate::wasm::budget`]).
#[derive(Debug)]
pub struct MemoryBudget {
    limit: usize,
    used: AtomicUsize,
}

impl MemoryBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(MemoryBudget {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: AtomicUsize::new(0),
        })
    }

    /// No budget: only each instance's cap.
    pub fn unlimited() -> Arc<Self> {
        Arc::default()
    }

    /// One service's share of the host's budget `host`: half of it, so
    /// that no one service's instances can take the memory every other
    /// service needs.
    pub fn share_of(host: &MemoryBudget) -> Arc<Self> {
        Self::new((host.limit / 2) as u64)
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Linear memory the host's instances hold now, in bytes.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Takes `bytes` out of the budget, if they fit.
    fn take(&self, bytes: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .is_ok()
    }

    /// Gives `bytes` back.
    fn give(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

impl Default for MemoryBudget {
    fn default() -> Self {
        MemoryBudget {
            limit: usize::MAX,
            used: AtomicUsize::new(0),
        }
    }
}

/// Whose budget refused a growth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Whose {
    /// The host's: all instances.
    Host,
    /// The service's share of the host's: its instances.
    Service,
}

/// Why a growth of an instance's memory was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// Past the instance's own cap.
    Cap {
        /// The total the guest asked for.
        requested: usize,
    },
    /// Past a budget the instance shares with others.
    Budget {
        /// Which: the host's, or its service's share of it.
        whose: Whose,
        /// The growth asked for.
        growth: usize,
        /// What that budget's instances held then.
        used: usize,
        /// The budget.
        limit: usize,
    },
    /// A table past [`MAX_TABLE_ELEMENTS`].
    Table {
        /// The elements the guest asked for.
        requested: usize,
    },
    /// Allowed, but the system could not map the memory (the address
    /// space or the machine's memory ran out).
    System {
        /// The growth asked for.
        growth: usize,
        /// What the system said.
        error: String,
    },
}

/// Caps an instance's linear memory (the sum over all its memories) and
/// records its peak and whether the cap was hit.
#[derive(Debug)]
pub struct MemoryLimiter {
    cap: usize,
    total: usize,
    peak: usize,
    last_growth: usize,
    denied: Option<Denial>,
    budget: Arc<MemoryBudget>,
    share: Arc<MemoryBudget>,
}

/// Largest table an instance may have, in elements (also the pool's
/// table slots' size).
pub const MAX_TABLE_ELEMENTS: usize = 100_000;

/// Core instances (module instantiations) one component instance may make.
/// Compilers emit a few (a Rust guest about 3, a componentize-py one 14);
/// without a bound, one hand-made component of a thousand would hold a
/// large part of the host's instance pool.
pub const MAX_CORE_INSTANCES: usize = 64;

/// Linear memories one component instance may have.
pub const MAX_MEMORIES: usize = 8;

/// Tables one component instance may have.
pub const MAX_TABLES: usize = 16;

impl MemoryLimiter {
    /// An instance's limiter: at most `cap`, taken from its service's
    /// `share` and from the host's `budget`.
    pub(super) fn new(cap: u64, budget: Arc<MemoryBudget>, share: Arc<MemoryBudget>) -> Self {
        MemoryLimiter {
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            total: 0,
            peak: 0,
            last_growth: 0,
            denied: None,
            budget,
            share,
        }
    }

    /// The most linear memory the instance held at once, in bytes.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// Starts a new invocation in the same instance: its peak starts at
    /// the memory the instance holds now, and no denial is carried over.
    pub(super) fn renew(&mut self) {
        self.peak = self.total;
        self.denied = None;
    }

    /// The cap, in bytes.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// If a growth was refused, why.
    pub fn denied(&self) -> Option<&Denial> {
        self.denied.as_ref()
    }
}

impl Drop for MemoryLimiter {
    /// The instance is gone: its memory goes back to the host's budget.
    fn drop(&mut self) {
        self.budget.give(self.total);
        self.share.give(self.total);
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let growth = desired.saturating_sub(current);
        let total = self.total.saturating_add(growth);
        if total > self.cap {
            self.denied = Some(Denial::Cap { requested: total });
            return Ok(false);
        }
        let refused = |budget: &MemoryBudget, whose| Denial::Budget {
            whose,
            growth,
            used: budget.used(),
            limit: budget.limit(),
        };
        if !self.share.take(growth) {
            self.denied = Some(refused(&self.share, Whose::Service));
            return Ok(false);
        }
        if !self.budget.take(growth) {
            self.share.give(growth);
            self.denied = Some(refused(&self.budget, Whose::Host));
            return Ok(false);
        }
        self.total = total;
        self.last_growth = growth;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.denied = Some(Denial::System {
            growth: self.last_growth,
            error: format!("{error:#}"),
        });
        self.total -= self.last_growth;
        self.budget.give(self.last_growth);
        self.share.give(self.last_growth);
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.denied = Some(Denial::Table { requested: desired });
            return Ok(false);
        }
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_CORE_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_sum_and_records_the_peak() {
        let mut l = MemoryLimiter::new(
            4 << 16,
            MemoryBudget::unlimited(),
            MemoryBudget::unlimited(),
        );
        assert!(l.memory_growing(0, 2 << 16, None).unwrap());
        assert!(l.memory_growing(0, 1 << 16, None).unwrap());
        assert_eq!(l.peak(), 3 << 16);
        assert!(!l.memory_growing(2 << 16, 4 << 16, None).unwrap());
        assert_eq!(l.denied(), Some(&Denial::Cap { requested: 5 << 16 }));
        assert!(l.memory_growing(1 << 16, 2 << 16, None).unwrap());
        assert_eq!(l.peak(), 4 << 16);
        l.memory_grow_failed(wasmtime::format_err!("os said no"))
            .unwrap();
        assert!(l.memory_growing(1 << 16, 2 << 16, None).unwrap());
        assert!(l.table_growing(0, MAX_TABLE_ELEMENTS, None).unwrap());
        assert!(!l.table_growing(0, MAX_TABLE_ELEMENTS + 1, None).unwrap());
        assert_eq!(
            l.denied(),
            Some(&Denial::Table {
                requested: MAX_TABLE_ELEMENTS + 1
            })
        );
    }
}

#[cfg(test)]
mod budget_tests {
    use super::*;

    #[test]
    fn instances_share_the_host_budget_and_give_it_back() {
        let page = 1 << 16;
        let budget = MemoryBudget::new(5 * page);
        let share = MemoryBudget::unlimited;
        let mut a = MemoryLimiter::new(4 * page, budget.clone(), share());
        let mut b = MemoryLimiter::new(4 * page, budget.clone(), share());
        assert!(a.memory_growing(0, 3 * page as usize, None).unwrap());
        assert!(b.memory_growing(0, page as usize, None).unwrap());
        assert_eq!(budget.used(), 4 * page as usize);
        // Within b's own cap, past the host's budget.
        assert!(
            !b.memory_growing(page as usize, 3 * page as usize, None)
                .unwrap()
        );
        assert_eq!(
            b.denied(),
            Some(&Denial::Budget {
                whose: Whose::Host,
                growth: 2 * page as usize,
                used: 4 * page as usize,
                limit: 5 * page as usize,
            })
        );
        // A growth the system then failed is given back.
        assert!(
            b.memory_growing(page as usize, 2 * page as usize, None)
                .unwrap()
        );
        b.memory_grow_failed(wasmtime::format_err!("mmap failed"))
            .unwrap();
        assert_eq!(budget.used(), 4 * page as usize);
        assert_eq!(
            b.denied(),
            Some(&Denial::System {
                growth: page as usize,
                error: "mmap failed".into()
            })
        );
        // A dropped instance gives back all it held.
        drop(a);
        assert_eq!(budget.used(), page as usize);
        let mut c = MemoryLimiter::new(4 * page, budget.clone(), share());
        assert!(c.memory_growing(0, 4 * page as usize, None).unwrap());
        drop((b, c));
        assert_eq!(budget.used(), 0);
    }
}

#[cfg(test)]
mod share_tests {
    use super::*;

    #[test]
    fn a_service_holds_at_most_half_the_host_budget() {
        let page = 1usize << 16;
        let host = MemoryBudget::new(8 * page as u64);
        let greedy = MemoryBudget::share_of(&host);
        let other = MemoryBudget::share_of(&host);
        let mut g1 = MemoryLimiter::new(u64::MAX, host.clone(), greedy.clone());
        let mut g2 = MemoryLimiter::new(u64::MAX, host.clone(), greedy.clone());
        assert!(g1.memory_growing(0, 3 * page, None).unwrap());
        assert!(!g2.memory_growing(0, 2 * page, None).unwrap());
        assert_eq!(
            g2.denied(),
            Some(&Denial::Budget {
                whose: Whose::Service,
                growth: 2 * page,
                used: 3 * page,
                limit: 4 * page,
            })
        );
        // What the greedy service cannot take is left for the others.
        let mut o = MemoryLimiter::new(u64::MAX, host.clone(), other.clone());
        assert!(o.memory_growing(0, 4 * page, None).unwrap());
        let third = MemoryBudget::share_of(&host);
        let mut t = MemoryLimiter::new(u64::MAX, host.clone(), third.clone());
        assert!(t.memory_growing(0, page, None).unwrap());
        // The host's budget is full: a growth within the share is refused
        // by the host, and the share gets it back.
        assert!(!g2.memory_growing(0, page, None).unwrap());
        assert!(matches!(
            g2.denied(),
            Some(Denial::Budget {
                whose: Whose::Host,
                ..
            })
        ));
        assert_eq!((host.used(), greedy.used()), (8 * page, 3 * page));
        drop((g1, g2, o, t));
        assert_eq!(
            (host.used(), greedy.used(), other.used(), third.used()),
            (0, 0, 0, 0)
        );
    }
}
