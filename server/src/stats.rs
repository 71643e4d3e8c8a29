//! Counters of what the node holds, for introspection and tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Live counts and running totals. Gauges are kept exact by RAII guards.
#[derive(Debug, Default)]
pub struct Stats {
    /// Open TCP connections.
    pub connections: AtomicU64,
    /// Live vehicle sessions.
    pub sessions: AtomicU64,
    /// SetDesired calls waiting for an acknowledgement level.
    pub waiters: AtomicU64,
    /// Open watch streams.
    pub watchers: AtomicU64,
    /// Sessions opened since start.
    pub sessions_opened: AtomicU64,
    /// Sessions closed for heartbeat loss since start.
    pub sessions_timed_out: AtomicU64,
    /// Sessions superseded since start.
    pub sessions_superseded: AtomicU64,
    /// Connections refused at the connection cap since start.
    pub connections_refused: AtomicU64,
    /// TLS handshakes that failed (refused or timed out) since start.
    pub handshake_failures: AtomicU64,
}

/// Increments a gauge for as long as it lives.
pub struct Gauge {
    stats: Arc<Stats>,
    field: fn(&Stats) -> &AtomicU64,
}

impl std::fmt::Debug for Gauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Gauge")
    }
}

impl Gauge {
    /// Increments `field` of `stats` until the guard drops.
    pub fn new(stats: &Arc<Stats>, field: fn(&Stats) -> &AtomicU64) -> Self {
        field(stats).fetch_add(1, Ordering::Relaxed);
        Gauge { stats: stats.clone(), field }
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        (self.field)(&self.stats).fetch_sub(1, Ordering::Relaxed);
    }
}

/// Reads a counter.
pub fn get(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

/// Adds one to a running total.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
