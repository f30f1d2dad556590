//! The memory limit of one instance, summed over all of its linear memories.

use wasmtime::ResourceLimiter;

/// Refuses growth that would take the sum of all memories past the limit.
pub(crate) struct MemoryLimiter {
    limit: u64,
    used: u64,
    refused: bool,
}

impl MemoryLimiter {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit,
            used: 0,
            refused: false,
        }
    }

    /// Whether a growth was refused.
    pub(crate) fn refused(&self) -> bool {
        self.refused
    }
}

impl ResourceLimiter for MemoryLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let grow = desired.saturating_sub(current) as u64;
        if self.used.saturating_add(grow) > self.limit {
            self.refused = true;
            return Ok(false);
        }
        self.used += grow;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_growth_over_memories() {
        // (current, desired, allowed)
        let steps = [
            (0, 40, true),
            (0, 40, true),
            (40, 60, true),
            (0, 1, false),
            (60, 60, true),
        ];
        let mut l = MemoryLimiter::new(100);
        for (i, (current, desired, allowed)) in steps.into_iter().enumerate() {
            assert_eq!(
                l.memory_growing(current, desired, None).unwrap(),
                allowed,
                "step {i}"
            );
        }
        assert!(l.refused());
        assert_eq!(l.used, 100);
    }
}
