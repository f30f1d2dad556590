//! Per-function counters and histograms for `/metrics`, recorded by every invocation.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sluice_types::metrics::{Histogram, HistogramSnapshot, SECONDS_BUCKETS};

/// What one function's invocations did since the server started.
#[derive(Debug)]
pub struct FunctionMetrics {
    pub invocations: AtomicU64,
    /// Invocations that failed as a whole (error, trap, timeout, refused commit).
    pub errors: AtomicU64,
    pub cold_starts: AtomicU64,
    pub in_flight: AtomicU64,
    /// Fuel consumed, when fuel metering is on.
    pub fuel: AtomicU64,
    /// Seconds from the call into the guest to its return.
    pub duration: Histogram,
    /// Seconds to instantiate, for cold invocations.
    pub cold_start: Histogram,
}

impl Default for FunctionMetrics {
    fn default() -> Self {
        Self {
            invocations: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            cold_starts: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            fuel: AtomicU64::new(0),
            duration: Histogram::new(SECONDS_BUCKETS),
            cold_start: Histogram::new(SECONDS_BUCKETS),
        }
    }
}

/// One function's metrics at one moment.
#[derive(Debug, Clone)]
pub struct FunctionMetricsSnapshot {
    pub function: String,
    pub invocations: u64,
    pub errors: u64,
    pub cold_starts: u64,
    pub in_flight: u64,
    pub fuel: u64,
    pub duration: HistogramSnapshot,
    pub cold_start: HistogramSnapshot,
}

/// The metrics of every function invoked since start, by name.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    functions: Mutex<BTreeMap<String, Arc<FunctionMetrics>>>,
}

impl Registry {
    pub(crate) fn of(&self, function: &str) -> Arc<FunctionMetrics> {
        let mut map = self.functions.lock().unwrap();
        if let Some(m) = map.get(function) {
            return m.clone();
        }
        let m = Arc::new(FunctionMetrics::default());
        map.insert(function.to_owned(), m.clone());
        m
    }

    /// Forgets a deleted function.
    pub(crate) fn remove(&self, function: &str) {
        self.functions.lock().unwrap().remove(function);
    }

    pub(crate) fn snapshot(&self) -> Vec<FunctionMetricsSnapshot> {
        let map = self.functions.lock().unwrap();
        map.iter()
            .map(|(name, m)| FunctionMetricsSnapshot {
                function: name.clone(),
                invocations: m.invocations.load(Ordering::Relaxed),
                errors: m.errors.load(Ordering::Relaxed),
                cold_starts: m.cold_starts.load(Ordering::Relaxed),
                in_flight: m.in_flight.load(Ordering::Relaxed),
                fuel: m.fuel.load(Ordering::Relaxed),
                duration: m.duration.snapshot(),
                cold_start: m.cold_start.snapshot(),
            })
            .collect()
    }
}
