//! The node's metrics in the Prometheus text format (version 0.0.4), served
//! on the admin port at `/metrics`.
//!
//! Hand-written rather than through `opentelemetry-prometheus` (0.33.1 does
//! resolve with our OpenTelemetry pins): the metrics are the same atomics
//! that `AdminService` serves and the tests read ([`Stats`]), so the scrape
//! path needs no second pipeline, no registry and no lock; the format is a
//! few lines per family. OTLP export of the same values (`otlp_metrics.rs`)
//! reads these atomics through OpenTelemetry observable instruments.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::time::SystemTime;

use tokio_util::task::TaskTracker;

use crate::core::FieldStatus;
use crate::hub::Hub;
use crate::stats::{FIELD_OUTCOMES, HandshakeFailure, Histogram, LATENCY_BUCKETS, Stats, WriteOutcome, get};

/// Renders every metric of the node.
pub fn render(hub: &Hub, tasks: &TaskTracker) -> String {
    let s: &Stats = &hub.stats;
    let (pending, pending_snapshots) = pending(hub);
    let mut out = Metrics(String::with_capacity(4096));
    out.gauge("tether_connected_vehicles", "Vehicles with a live session.", get(&s.sessions));
    out.gauge("tether_connections", "Open connections.", get(&s.connections));
    out.gauge("tether_vehicles", "Vehicles the node holds (connected or not).", hub.len() as u64);
    out.gauge("tether_pending_desired_fields", "Desired fields not yet delivered and not expired.", pending);
    out.gauge("tether_pending_snapshots", "Vehicles with a desired-state change not yet sent.", pending_snapshots);
    out.gauge("tether_waiting_calls", "SetDesired calls waiting for an acknowledgement level.", get(&s.waiters));
    out.gauge("tether_watchers", "Open WatchVehicle streams.", get(&s.watchers));
    out.gauge("tether_tasks", "Tasks of the node.", tasks.len() as u64);
    out.counter("tether_sessions_opened_total", "Vehicle sessions opened.", get(&s.sessions_opened));
    out.counter("tether_sessions_superseded_total", "Sessions replaced by a newer one.", get(&s.sessions_superseded));
    out.counter(
        "tether_cluster_conflicts_retried_total",
        "Calls applied again because another node changed their vehicle first.",
        get(&s.conflicts_retried),
    );
    out.counter("tether_sessions_timed_out_total", "Sessions closed for heartbeat loss.", get(&s.sessions_timed_out));
    out.counter(
        "tether_heartbeat_misses_total",
        "Heartbeat intervals a session heard nothing.",
        get(&s.heartbeat_misses),
    );
    out.counter("tether_connections_refused_total", "Connections refused at the cap.", get(&s.connections_refused));
    out.labelled(
        "tether_tls_handshakes_total",
        "TLS handshakes completed: in full, or resuming a session with a ticket.",
        "kind",
        [("full", &s.tls_full_handshakes), ("resumed", &s.tls_resumed_handshakes)].into_iter(),
    );
    out.counter("tether_tls_reloads_total", "Times the TLS files were reloaded.", get(&s.tls_reloads));
    out.counter("tether_bytes_received_total", "Bytes read from connections.", get(&s.bytes_in));
    out.counter("tether_bytes_sent_total", "Bytes written to connections.", get(&s.bytes_out));
    out.labelled(
        "tether_handshake_failures_total",
        "Vehicle streams that ended before their session opened, by reason.",
        "reason",
        HandshakeFailure::ALL.iter().map(|r| r.label()).zip(&s.handshake_failures),
    );
    out.labelled(
        "tether_writes_total",
        "SetDesired calls by outcome (refused_by_auth stays 0 until auth exists).",
        "outcome",
        WriteOutcome::ALL.iter().map(|o| o.label()).zip(&s.writes),
    );
    out.labelled(
        "tether_field_outcomes_total",
        "Desired fields reaching a status (each field of a write reaches its own).",
        "outcome",
        FIELD_OUTCOMES.iter().map(|f| status_label(*f)).zip(&s.field_outcomes),
    );
    out.histogram("tether_set_to_delivered_seconds", "From a field's write to its delivery.", &s.set_to_delivered);
    out.histogram("tether_set_to_applied_seconds", "From a field's write to its application.", &s.set_to_applied);
    if let Some(c) = hub.store().cluster_stats() {
        out.histogram(
            "tether_cluster_publish_seconds",
            "From a save's publish to the stream's acknowledgement or refusal.",
            &c.publish,
        );
        out.counter(
            "tether_cluster_save_conflicts_total",
            "Saves refused because another node changed the vehicle first.",
            get(&c.conflicts),
        );
        out.counter("tether_cluster_presence_claims_total", "Presence claims this node committed.", get(&c.claims));
        out.gauge("tether_cluster_nodes_live", "Other nodes whose leases this node sees renewed.", get(&c.nodes_live));
        out.gauge("tether_cluster_isolated", "1 while this node cannot renew its own lease.", get(&c.isolated));
        out.counter(
            "tether_cluster_feed_restarts_total",
            "Times this node followed the stream again after its feed stalled.",
            get(&c.feed_restarts),
        );
    }
    out.0
}

/// Desired fields not yet delivered and not expired, and vehicles with a
/// desired-state change not yet sent: counted over the hub's cells, each
/// under its own lock, at read time.
pub(crate) fn pending(hub: &Hub) -> (u64, u64) {
    let now = SystemTime::now();
    let (mut fields, mut snapshots) = (0u64, 0u64);
    for cell in hub.all() {
        let inner = cell.lock();
        fields +=
            inner.record.desired.values().filter(|f| f.status == FieldStatus::Pending && f.is_live(now)).count() as u64;
        snapshots += u64::from(inner.snapshot_pending());
    }
    (fields, snapshots)
}

/// The metric label of a field outcome.
pub(crate) fn status_label(status: FieldStatus) -> &'static str {
    match status {
        FieldStatus::Delivered => "delivered",
        FieldStatus::Applied => "applied",
        FieldStatus::Rejected => "rejected",
        FieldStatus::Failed => "failed",
        FieldStatus::Expired => "expired",
        FieldStatus::Cancelled => "cancelled",
        _ => "other",
    }
}

struct Metrics(String);

impl Metrics {
    fn head(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.head(name, help, "gauge");
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.head(name, help, "counter");
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn labelled<'a>(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        values: impl Iterator<Item = (&'a str, &'a AtomicU64)>,
    ) {
        self.head(name, help, "counter");
        for (l, v) in values {
            let _ = writeln!(self.0, "{name}{{{label}=\"{l}\"}} {}", get(v));
        }
    }

    fn histogram(&mut self, name: &str, help: &str, h: &Histogram) {
        self.head(name, help, "histogram");
        let mut cumulative = 0;
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
            cumulative += get(count);
            let _ = writeln!(self.0, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        cumulative += get(&h.buckets[LATENCY_BUCKETS.len()]);
        let _ = writeln!(self.0, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
        let _ = writeln!(self.0, "{name}_sum {}", get(&h.sum_micros) as f64 / 1e6);
        let _ = writeln!(self.0, "{name}_count {}", get(&h.count));
    }
}
