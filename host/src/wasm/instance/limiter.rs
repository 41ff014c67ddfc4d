//! The memory limiter: caps an instance's linear memory and records its
//! peak, for the memory limit and the usage record.

use wasmtime::ResourceLimiter;

/// Caps an instance's linear memory (the sum over all its memories) and
/// records its peak and whether the cap was hit.
#[derive(Debug)]
pub struct MemoryLimiter {
    cap: usize,
    total: usize,
    peak: usize,
    last_growth: usize,
    denied: Option<usize>,
}

/// Largest table an instance may grow, in elements.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

impl MemoryLimiter {
    pub(super) fn new(cap: u64) -> Self {
        MemoryLimiter {
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            total: 0,
            peak: 0,
            last_growth: 0,
            denied: None,
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

    /// If a growth was refused, the total the guest asked for.
    pub fn denied(&self) -> Option<usize> {
        self.denied
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
            self.denied = Some(total);
            return Ok(false);
        }
        self.total = total;
        self.last_growth = growth;
        self.peak = self.peak.max(total);
        Ok(true)
    }

    fn memory_grow_failed(&mut self, _error: wasmtime::Error) -> wasmtime::Result<()> {
        self.total -= self.last_growth;
        self.last_growth = 0;
        Ok(())
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_caps_the_sum_and_records_the_peak() {
        let mut l = MemoryLimiter::new(4 << 16);
        assert!(l.memory_growing(0, 2 << 16, None).unwrap());
        assert!(l.memory_growing(0, 1 << 16, None).unwrap());
        assert_eq!(l.peak(), 3 << 16);
        assert!(!l.memory_growing(2 << 16, 4 << 16, None).unwrap());
        assert_eq!(l.denied(), Some(5 << 16));
        assert!(l.memory_growing(1 << 16, 2 << 16, None).unwrap());
        assert_eq!(l.peak(), 4 << 16);
        l.memory_grow_failed(wasmtime::format_err!("os said no"))
            .unwrap();
        assert!(l.memory_growing(1 << 16, 2 << 16, None).unwrap());
    }
}
