//! The `traces` scenario: the [`latency`](super::latency) scenario three
//! times in one run — trace export off, on with every trace sampled, on with
//! 1% sampled — each on a fresh tetherd, exporting over OTLP/gRPC to a null
//! sink this process serves on loopback (it decodes and counts spans, keeps
//! nothing). With export on, the bench's own SDK spans (app client, agent
//! apply) are exported to the sink too, at the same ratio, as an app and a
//! vehicle with OpenTelemetry configured would.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::latency::{self, LatencyConfig, LatencyReport};
use super::{Tetherd, TetherdOptions};

/// One mode's figures.
#[derive(Debug, Clone, Serialize)]
pub struct TracesRow {
    /// `off`, or the sampled share (`100%`, `1%`).
    pub export: String,
    /// The latency scenario's report under that mode.
    pub latency: LatencyReport,
    /// Spans the sink received during the run (tetherd's and the bench's;
    /// tetherd is killed at the end, so its last unexported batch is missing).
    pub spans_received: u64,
}

/// What the scenario measured.
#[derive(Debug, Clone, Serialize)]
pub struct TracesReport {
    /// Always `"traces"`.
    pub scenario: &'static str,
    /// Off, 100%, 1%.
    pub rows: Vec<TracesRow>,
}

/// A null OTLP trace receiver: counts spans.
#[derive(Clone, Default)]
struct NullSink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for NullSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Runs latency with export off, at 100% and at 1%.
pub async fn run(options: &TetherdOptions, config: &LatencyConfig) -> anyhow::Result<TracesReport> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.context("cannot bind the OTLP sink")?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let sink = NullSink::default();
    let stop = CancellationToken::new();
    let serve = tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(sink.clone()))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    let server_task = tokio::spawn(serve);
    let _stop = stop.drop_guard();

    let mut rows = Vec::new();
    for ratio in [None, Some(1.0), Some(0.01)] {
        let mut options = options.clone();
        let provider = match ratio {
            None => None,
            Some(ratio) => {
                options.args.extend(["--otlp-endpoint".into(), endpoint.clone()]);
                options.args.extend(["--trace-sample-ratio".into(), ratio.to_string()]);
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build()
                    .context("cannot build the bench's OTLP exporter")?;
                let provider = SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))))
                    .build();
                opentelemetry::global::set_tracer_provider(provider.clone());
                Some(provider)
            }
        };
        let before = sink.0.load(Ordering::Relaxed);
        let server = Tetherd::start(&options).await?;
        let latency = latency::run(&server, config).await;
        server.stop().await?;
        if let Some(provider) = provider {
            // Blocking: the batch thread exports on this runtime's channel.
            tokio::task::spawn_blocking(move || provider.shutdown()).await?.ok();
        }
        let export = ratio.map_or("off".to_string(), |r| format!("{}%", r * 100.0));
        rows.push(TracesRow { export, latency: latency?, spans_received: sink.0.load(Ordering::Relaxed) - before });
    }
    drop(_stop);
    let _ = server_task.await;
    Ok(TracesReport { scenario: "traces", rows })
}

impl fmt::Display for TracesReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let first = self.rows.first().map(|r| &r.latency);
        writeln!(
            f,
            "traces: latency ({} sequential writes, wait APPLIED, {} cores) with OTLP trace export off and on",
            first.map_or(0, |l| l.writes),
            first.map_or(0, |l| l.cores)
        )?;
        writeln!(
            f,
            "  {:<8} {:>12} {:>10} {:>10} {:>10} {:>8}",
            "export", "writes/s", "p50 ms", "p99 ms", "max ms", "spans"
        )?;
        for row in &self.rows {
            let ms = |us: u64| us as f64 / 1000.0;
            writeln!(
                f,
                "  {:<8} {:>12.1} {:>10.3} {:>10.3} {:>10.3} {:>8}",
                row.export,
                row.latency.writes_per_second,
                ms(row.latency.percentiles.p50_us),
                ms(row.latency.percentiles.p99_us),
                ms(row.latency.percentiles.max_us),
                row.spans_received
            )?;
        }
        Ok(())
    }
}
