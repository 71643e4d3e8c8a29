//! Counters of what the node holds and does: read by AdminService, the
//! Prometheus endpoint (`metrics.rs`) and tests. One set of atomics, no
//! locks on any hot path.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::core::FieldStatus;

/// Why a vehicle stream ended before its session opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeFailure {
    /// No Hello within the handshake timeout.
    Timeout,
    /// The first message was not a Hello.
    NotHello,
    /// The Hello named a malformed vehicle id.
    InvalidVehicleId,
    /// The Hello's actual state did not decode.
    InvalidState,
    /// The node was draining.
    Draining,
    /// The stream failed or ended before a Hello.
    Stream,
    /// The Hello named another vehicle than the client certificate.
    WrongVehicle,
    /// The TLS handshake was refused (no, unknown, expired or revoked certificate).
    TlsRefused,
    /// The TLS handshake did not finish in time.
    TlsTimeout,
    /// A newer connection of the same vehicle opened its session first.
    Superseded,
    /// The client certificate names no vehicle (none, or several names), or
    /// is a service's.
    NoIdentity,
    /// A connection said nothing (no TLS ClientHello, no HTTP preface) within
    /// `--preface-timeout`, and was closed.
    Silent,
    /// A connection that had said nothing yet was closed at the connection
    /// cap to make room for a new one.
    Evicted,
    /// The node could not claim the vehicle in its cluster (cut off from
    /// NATS, or the claim was not taken in time).
    Cluster,
}

impl HandshakeFailure {
    /// Every reason, in label order.
    pub const ALL: [HandshakeFailure; 14] = [
        HandshakeFailure::Timeout,
        HandshakeFailure::NotHello,
        HandshakeFailure::InvalidVehicleId,
        HandshakeFailure::InvalidState,
        HandshakeFailure::Draining,
        HandshakeFailure::Stream,
        HandshakeFailure::WrongVehicle,
        HandshakeFailure::TlsRefused,
        HandshakeFailure::TlsTimeout,
        HandshakeFailure::Superseded,
        HandshakeFailure::NoIdentity,
        HandshakeFailure::Silent,
        HandshakeFailure::Evicted,
        HandshakeFailure::Cluster,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            HandshakeFailure::Timeout => "timeout",
            HandshakeFailure::NotHello => "not_hello",
            HandshakeFailure::InvalidVehicleId => "invalid_vehicle_id",
            HandshakeFailure::InvalidState => "invalid_state",
            HandshakeFailure::Draining => "draining",
            HandshakeFailure::Stream => "stream",
            HandshakeFailure::WrongVehicle => "wrong_vehicle",
            HandshakeFailure::TlsRefused => "tls_refused",
            HandshakeFailure::TlsTimeout => "tls_timeout",
            HandshakeFailure::Superseded => "superseded",
            HandshakeFailure::NoIdentity => "no_identity",
            HandshakeFailure::Silent => "silent",
            HandshakeFailure::Evicted => "evicted",
            HandshakeFailure::Cluster => "cluster",
        }
    }
}

/// How a write call ended (counted once per SetDesired call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// Stored (a new change).
    Accepted,
    /// A retry answered with the first outcome.
    Replayed,
    /// Refused: malformed, out of range, a key reused, a generation mismatch.
    Invalid,
    /// Refused by `require_online`.
    Offline,
    /// Refused by authentication or authorization.
    RefusedByAuth,
    /// Refused by a rate limit (per subject or per vehicle).
    RateLimited,
}

impl WriteOutcome {
    /// Every outcome, in label order.
    pub const ALL: [WriteOutcome; 6] = [
        WriteOutcome::Accepted,
        WriteOutcome::Replayed,
        WriteOutcome::Invalid,
        WriteOutcome::Offline,
        WriteOutcome::RefusedByAuth,
        WriteOutcome::RateLimited,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            WriteOutcome::Accepted => "accepted",
            WriteOutcome::Replayed => "replayed",
            WriteOutcome::Invalid => "invalid",
            WriteOutcome::Offline => "offline",
            WriteOutcome::RefusedByAuth => "refused_by_auth",
            WriteOutcome::RateLimited => "rate_limited",
        }
    }
}

/// Field statuses counted as outcomes (each field of a write reaches its own).
pub const FIELD_OUTCOMES: [FieldStatus; 6] = [
    FieldStatus::Delivered,
    FieldStatus::Applied,
    FieldStatus::Rejected,
    FieldStatus::Failed,
    FieldStatus::Expired,
    FieldStatus::Cancelled,
];

/// Upper bounds (seconds) of the latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Observations per bucket (not cumulative); the last one is +Inf.
    pub buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    /// Sum of observations, in microseconds.
    pub sum_micros: AtomicU64,
    /// Number of observations.
    pub count: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = LATENCY_BUCKETS.iter().position(|b| secs <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// A cluster node's own figures (the store keeps them; one node has none).
#[derive(Debug, Default)]
pub struct ClusterStats {
    /// From a save's publish to the stream's acknowledgement (or refusal).
    pub publish: Histogram,
    /// Saves refused because another node changed the vehicle first.
    pub conflicts: AtomicU64,
    /// Presence claims committed by this node.
    pub claims: AtomicU64,
    /// Other nodes whose leases this node sees renewed.
    pub nodes_live: AtomicU64,
    /// 1 while this node cannot renew its own lease (cut off).
    pub isolated: AtomicU64,
    /// Times the node followed the stream again after its feed stalled.
    pub feed_restarts: AtomicU64,
}

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
    /// Calls applied again because another node changed their vehicle
    /// first (cluster only).
    pub conflicts_retried: AtomicU64,
    /// Connections refused at the connection cap since start.
    pub connections_refused: AtomicU64,
    /// TLS handshakes completed in full (certificates verified).
    pub tls_full_handshakes: AtomicU64,
    /// TLS handshakes that resumed a session with a ticket.
    pub tls_resumed_handshakes: AtomicU64,
    /// Times the TLS files were reloaded (changed, or SIGHUP).
    pub tls_reloads: AtomicU64,
    /// Vehicle streams that ended before their session opened, by [`HandshakeFailure`].
    pub handshake_failures: [AtomicU64; HandshakeFailure::ALL.len()],
    /// Heartbeat intervals in which a live session heard nothing.
    pub heartbeat_misses: AtomicU64,
    /// Bytes read from connections.
    pub bytes_in: AtomicU64,
    /// Bytes written to connections.
    pub bytes_out: AtomicU64,
    /// SetDesired calls by [`WriteOutcome`].
    pub writes: [AtomicU64; WriteOutcome::ALL.len()],
    /// Fields reaching each status of [`FIELD_OUTCOMES`].
    pub field_outcomes: [AtomicU64; FIELD_OUTCOMES.len()],
    /// From a field's write to its delivery to the vehicle.
    pub set_to_delivered: Histogram,
    /// From a field's write to its application by the vehicle.
    pub set_to_applied: Histogram,
}

impl Stats {
    /// Counts a handshake failure.
    pub fn handshake_failed(&self, why: HandshakeFailure) {
        let i = HandshakeFailure::ALL.iter().position(|w| *w == why).expect("listed");
        bump(&self.handshake_failures[i]);
    }

    /// Counts a write call's outcome.
    pub fn write(&self, outcome: WriteOutcome) {
        let i = WriteOutcome::ALL.iter().position(|w| *w == outcome).expect("listed");
        bump(&self.writes[i]);
    }

    /// Counts a field reaching `status` `since` its write (latencies for
    /// DELIVERED and APPLIED).
    pub fn field_reached(&self, status: FieldStatus, since: Duration) {
        if let Some(i) = FIELD_OUTCOMES.iter().position(|s| *s == status) {
            bump(&self.field_outcomes[i]);
        }
        match status {
            FieldStatus::Delivered => self.set_to_delivered.observe(since),
            FieldStatus::Applied => self.set_to_applied.observe(since),
            _ => {}
        }
    }
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

/// Adds `n` to a running total.
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}
