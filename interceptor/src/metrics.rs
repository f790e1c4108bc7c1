//! The daemon's counters, shared by the data path (which counts) and the
//! admin API (which exposes them): a leaf, so neither depends on the other.
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters for /metrics.
#[derive(Default, Debug, serde::Serialize)]
pub struct Stats {
    pub accepted: AtomicU64,
    pub allowed: AtomicU64,
    pub denied: AtomicU64,
    pub unattributed: AtomicU64,
    pub upstream_errors: AtomicU64,
    pub active: AtomicU64,
    pub bytes_up: AtomicU64,
    pub bytes_down: AtomicU64,
    pub requests: AtomicU64,
    /// Connections refused at a workload's `max_connections_per_workload`.
    pub over_cap: AtomicU64,
    /// HTTP exchanges from request to the end of the response body; a
    /// stopping daemon waits for them (bounded), see `Proxy::drain`.
    #[serde(skip)]
    pub in_flight: Arc<AtomicU64>,
}

/// Counts one HTTP exchange in flight while it lives.
pub struct InFlight(Arc<AtomicU64>);

impl InFlight {
    pub fn new(counter: &Arc<AtomicU64>) -> InFlight {
        counter.fetch_add(1, Ordering::Relaxed);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}
