//! Metrics exported as OpenTelemetry over OTLP/gRPC when configured: observable
//! instruments whose callbacks read the same atomics as the Prometheus
//! endpoint (`metrics.rs`), collected and pushed by a periodic reader.
//!
//! One source of truth: nothing here counts anything. Each instrument is
//! asynchronous (observable), so a collection reads [`Stats`], the hub and the
//! task tracker exactly as a scrape does, and the hot paths stay the relaxed
//! atomics they are with export off.
//!
//! Histograms: OpenTelemetry has no asynchronous histogram, and recording a
//! second, synchronous one would be a second pipeline. So each [`Histogram`]
//! is exported as it is kept — three observable counters, `<name>.bucket`
//! (cumulative, with the upper bound in `le`, `+Inf` last, as Prometheus
//! does), `<name>.count` and `<name>.sum` (seconds) — which a backend can
//! turn back into the histogram without loss.
//!
//! With nothing configured there is no meter provider, no reader and no
//! thread: [`OtlpMetrics::off`] holds `None`.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Meter, MeterProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::hub::Hub;
use crate::metrics::{pending, status_label};
use crate::stats::{FIELD_OUTCOMES, HandshakeFailure, Histogram, LATENCY_BUCKETS, Stats, WriteOutcome, get};

/// How long shutdown waits for the last export.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The export interval when neither `otlp_metrics_interval` nor
/// `OTEL_METRIC_EXPORT_INTERVAL` says otherwise (the OpenTelemetry default).
const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// The node's metric export: `None` when off.
#[derive(Default)]
pub struct OtlpMetrics {
    provider: Option<SdkMeterProvider>,
}

impl std::fmt::Debug for OtlpMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpMetrics").field("exporting", &self.provider.is_some()).finish()
    }
}

/// Whether the standard environment asks for metric export.
fn env_endpoint() -> bool {
    ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()))
}

/// Whether the standard environment turns metric export off whatever else is set.
fn env_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_METRICS_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"))
}

/// `OTEL_METRIC_EXPORT_INTERVAL` (milliseconds), if set and valid.
fn env_interval() -> Option<Duration> {
    let ms = std::env::var("OTEL_METRIC_EXPORT_INTERVAL").ok()?.trim().parse::<u64>().ok()?;
    (ms > 0).then(|| Duration::from_millis(ms))
}

impl OtlpMetrics {
    /// No export: no provider, no reader, no thread.
    pub fn off() -> Self {
        OtlpMetrics { provider: None }
    }

    /// Export as configured — the same switch as traces: `otlp_endpoint`,
    /// else `OTEL_EXPORTER_OTLP_(METRICS_)ENDPOINT`; off with neither, or
    /// with `OTEL_SDK_DISABLED=true` or `OTEL_METRICS_EXPORTER=none`. Every
    /// `otlp_metrics_interval`, else `OTEL_METRIC_EXPORT_INTERVAL` (ms), else
    /// 60 s. Must run inside the tokio runtime (the OTLP channel is created
    /// on it).
    pub fn from_config(config: &Config, hub: &Arc<Hub>, tasks: &TaskTracker) -> Result<Self, String> {
        if env_disabled() || (config.otlp_endpoint.is_none() && !env_endpoint()) {
            return Ok(OtlpMetrics::off());
        }
        let mut exporter = opentelemetry_otlp::MetricExporter::builder().with_tonic();
        if let Some(endpoint) = &config.otlp_endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let exporter = exporter.build().map_err(|e| format!("cannot build the OTLP metric exporter: {e}"))?;
        let interval = config.otlp_metrics_interval.or_else(env_interval).unwrap_or(DEFAULT_INTERVAL);
        let reader = PeriodicReader::builder(exporter).with_interval(interval).build();
        let resource = Resource::builder().with_service_name("tetherd").build();
        let provider = SdkMeterProvider::builder().with_reader(reader).with_resource(resource).build();
        register(&provider.meter("tetherd"), hub, tasks);
        Ok(OtlpMetrics { provider: Some(provider) })
    }

    /// Whether metrics are exported.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports the current values one last time and stops the reader's thread.
    pub async fn shutdown(&self) {
        let Some(provider) = self.provider.clone() else { return };
        // Shutdown blocks until the reader's thread exported; that thread
        // needs this runtime to drive the OTLP channel.
        let done = tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT));
        if let Ok(Err(e)) = done.await {
            tracing::warn!(error = %e, "metric export did not flush at shutdown");
        }
    }
}

// === instruments ===

/// Registers every metric of `metrics::render` as an observable instrument.
/// The instruments' handles are not kept: the provider keeps the callbacks.
fn register(meter: &Meter, hub: &Arc<Hub>, tasks: &TaskTracker) {
    let s = &hub.stats;
    up_down(meter, "tether.sessions.connected", "{session}", "Vehicles with a live session.", s, |s| &s.sessions);
    up_down(meter, "tether.connections.active", "{connection}", "Open connections.", s, |s| &s.connections);
    up_down(
        meter,
        "tether.calls.waiting",
        "{call}",
        "SetDesired calls waiting for an acknowledgement level.",
        s,
        |s| &s.waiters,
    );
    up_down(meter, "tether.watchers.active", "{stream}", "Open WatchVehicle streams.", s, |s| &s.watchers);
    let h = hub.clone();
    meter
        .i64_observable_up_down_counter("tether.vehicles.known")
        .with_unit("{vehicle}")
        .with_description("Vehicles the node holds (connected or not).")
        .with_callback(move |o| o.observe(h.len() as i64, &[]))
        .build();
    let h = hub.clone();
    meter
        .i64_observable_up_down_counter("tether.fields.pending")
        .with_unit("{field}")
        .with_description("Desired fields not yet delivered and not expired.")
        .with_callback(move |o| o.observe(pending(&h).0 as i64, &[]))
        .build();
    let h = hub.clone();
    meter
        .i64_observable_up_down_counter("tether.snapshots.pending")
        .with_unit("{vehicle}")
        .with_description("Vehicles with a desired-state change not yet sent.")
        .with_callback(move |o| o.observe(pending(&h).1 as i64, &[]))
        .build();
    let t = tasks.clone();
    meter
        .i64_observable_up_down_counter("tether.tasks.active")
        .with_unit("{task}")
        .with_description("Tasks of the node.")
        .with_callback(move |o| o.observe(t.len() as i64, &[]))
        .build();

    counter(meter, "tether.sessions.opened", "{session}", "Vehicle sessions opened.", s, |s| &s.sessions_opened);
    counter(meter, "tether.sessions.superseded", "{session}", "Sessions replaced by a newer one.", s, |s| {
        &s.sessions_superseded
    });
    counter(
        meter,
        "tether.cluster.conflicts_retried",
        "{call}",
        "Calls applied again because another node changed their vehicle first.",
        s,
        |s| &s.conflicts_retried,
    );
    counter(meter, "tether.sessions.timed_out", "{session}", "Sessions closed for heartbeat loss.", s, |s| {
        &s.sessions_timed_out
    });
    counter(meter, "tether.heartbeats.missed", "{heartbeat}", "Heartbeat intervals a session heard nothing.", s, |s| {
        &s.heartbeat_misses
    });
    counter(meter, "tether.connections.refused", "{connection}", "Connections refused at the cap.", s, |s| {
        &s.connections_refused
    });
    labelled(
        meter,
        "tether.tls.handshakes",
        "{handshake}",
        "TLS handshakes completed: in full, or resuming a session with a ticket.",
        "tether.tls.handshake.kind",
        s,
        |s| vec![("full", &s.tls_full_handshakes), ("resumed", &s.tls_resumed_handshakes)],
    );
    counter(meter, "tether.tls.reloads", "{reload}", "Times the TLS files were reloaded.", s, |s| &s.tls_reloads);
    let st = s.clone();
    meter
        .u64_observable_counter("tether.network.io")
        .with_unit("By")
        .with_description("Bytes read from (receive) and written to (transmit) connections.")
        .with_callback(move |o| {
            o.observe(get(&st.bytes_in), &[KeyValue::new("network.io.direction", "receive")]);
            o.observe(get(&st.bytes_out), &[KeyValue::new("network.io.direction", "transmit")]);
        })
        .build();
    labelled(
        meter,
        "tether.handshakes.failed",
        "{stream}",
        "Vehicle streams that ended before their session opened, by reason.",
        "error.type",
        s,
        |s| HandshakeFailure::ALL.iter().map(|r| r.label()).zip(&s.handshake_failures).collect(),
    );
    labelled(meter, "tether.writes", "{call}", "SetDesired calls by outcome.", "tether.write.outcome", s, |s| {
        WriteOutcome::ALL.iter().map(|o| o.label()).zip(&s.writes).collect()
    });
    labelled(
        meter,
        "tether.fields.outcomes",
        "{field}",
        "Desired fields reaching a status (each field of a write reaches its own).",
        "tether.field.outcome",
        s,
        |s| FIELD_OUTCOMES.iter().map(|f| status_label(*f)).zip(&s.field_outcomes).collect(),
    );
    histogram(meter, "tether.field.set_to_delivered.duration", "From a field's write to its delivery.", s, |s| {
        &s.set_to_delivered
    });
    histogram(meter, "tether.field.set_to_applied.duration", "From a field's write to its application.", s, |s| {
        &s.set_to_applied
    });
}

/// A gauge-like count of live things (an up-down counter, as the semantic
/// conventions ask for additive counts).
fn up_down(
    meter: &Meter,
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    stats: &Arc<Stats>,
    field: fn(&Stats) -> &AtomicU64,
) {
    let stats = stats.clone();
    meter
        .i64_observable_up_down_counter(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |o| o.observe(i64::try_from(get(field(&stats))).unwrap_or(i64::MAX), &[]))
        .build();
}

/// A running total.
fn counter(
    meter: &Meter,
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    stats: &Arc<Stats>,
    field: fn(&Stats) -> &AtomicU64,
) {
    let stats = stats.clone();
    meter
        .u64_observable_counter(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |o| o.observe(get(field(&stats)), &[]))
        .build();
}

/// Running totals by one attribute.
fn labelled(
    meter: &Meter,
    name: &'static str,
    unit: &'static str,
    description: &'static str,
    key: &'static str,
    stats: &Arc<Stats>,
    values: fn(&Stats) -> Vec<(&'static str, &AtomicU64)>,
) {
    let stats = stats.clone();
    meter
        .u64_observable_counter(name)
        .with_unit(unit)
        .with_description(description)
        .with_callback(move |o| {
            for (label, value) in values(&stats) {
                o.observe(get(value), &[KeyValue::new(key, label)]);
            }
        })
        .build();
}

/// A [`Histogram`] as it is kept: `<name>.bucket` (cumulative, by `le`),
/// `<name>.count` and `<name>.sum` in seconds.
fn histogram(
    meter: &Meter,
    name: &'static str,
    description: &'static str,
    stats: &Arc<Stats>,
    field: fn(&Stats) -> &Histogram,
) {
    let st = stats.clone();
    meter
        .u64_observable_counter(format!("{name}.bucket"))
        .with_unit("{field}")
        .with_description(format!("{description} Observations at or below `le` seconds (cumulative)."))
        .with_callback(move |o| {
            let h = field(&st);
            let mut cumulative = 0;
            for (bound, count) in LATENCY_BUCKETS.iter().zip(&h.buckets) {
                cumulative += get(count);
                o.observe(cumulative, &[KeyValue::new("le", bound.to_string())]);
            }
            cumulative += get(&h.buckets[LATENCY_BUCKETS.len()]);
            o.observe(cumulative, &[KeyValue::new("le", "+Inf")]);
        })
        .build();
    let st = stats.clone();
    meter
        .u64_observable_counter(format!("{name}.count"))
        .with_unit("{field}")
        .with_description(format!("{description} Observations."))
        .with_callback(move |o| o.observe(get(&field(&st).count), &[]))
        .build();
    let st = stats.clone();
    meter
        .f64_observable_counter(format!("{name}.sum"))
        .with_unit("s")
        .with_description(format!("{description} Sum of observations."))
        .with_callback(move |o| o.observe(get(&field(&st).sum_micros) as f64 / 1e6, &[]))
        .build();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_has_no_provider() {
        let metrics = OtlpMetrics::off();
        assert!(!metrics.exporting());
        assert!(format!("{metrics:?}").contains("false"));
    }
}
