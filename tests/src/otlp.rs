//! An in-process OTLP receiver: a tonic server implementing
//! `opentelemetry.proto.collector.trace.v1.TraceService` and
//! `…metrics.v1.MetricsService` on 127.0.0.1:0 that keeps every span and the
//! latest value of every metric data point it is sent, for tests to inspect.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::metrics::v1::metric::Data;
use opentelemetry_proto::tonic::metrics::v1::number_data_point;
use opentelemetry_proto::tonic::trace::v1::Span;
use tokio_util::sync::CancellationToken;

/// A span as received, with the service that sent it.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the sender's resource.
    pub service: String,
    /// The span.
    pub span: Span,
}

impl ReceivedSpan {
    /// A string or integer attribute, rendered as a string.
    pub fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

fn attribute(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()?;
    match value {
        Value::StringValue(s) => Some(s.clone()),
        Value::IntValue(i) => Some(i.to_string()),
        Value::BoolValue(b) => Some(b.to_string()),
        Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}

#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<ReceivedSpan>>>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for resource in request.into_inner().resource_spans {
            let service =
                resource.resource.as_ref().and_then(|r| attribute(&r.attributes, "service.name")).unwrap_or_default();
            for scope in resource.scope_spans {
                kept.extend(scope.spans.into_iter().map(|span| ReceivedSpan { service: service.clone(), span }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// One number data point as last received.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedPoint {
    /// `service.name` of the sender's resource.
    pub service: String,
    /// The metric's unit.
    pub unit: String,
    /// `sum` (monotonic), `up_down` (a non-monotonic sum) or `gauge`.
    pub kind: &'static str,
    /// The value.
    pub value: f64,
}

/// The latest point of each metric series, keyed `name{k="v",…}` (attributes
/// sorted by key; just `name` without attributes), as Prometheus prints them.
#[derive(Clone, Default)]
struct MetricSink(Arc<Mutex<BTreeMap<String, ReceivedPoint>>>);

fn series(name: &str, attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> String {
    let mut labels: Vec<(String, String)> =
        attributes.iter().filter_map(|kv| Some((kv.key.clone(), attribute(attributes, &kv.key)?))).collect();
    if labels.is_empty() {
        return name.to_string();
    }
    labels.sort();
    let labels: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

#[tonic::async_trait]
impl MetricsService for MetricSink {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        let mut kept = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for resource in request.into_inner().resource_metrics {
            let service =
                resource.resource.as_ref().and_then(|r| attribute(&r.attributes, "service.name")).unwrap_or_default();
            for metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                let (kind, points) = match metric.data {
                    Some(Data::Sum(sum)) => (if sum.is_monotonic { "sum" } else { "up_down" }, sum.data_points),
                    Some(Data::Gauge(gauge)) => ("gauge", gauge.data_points),
                    // tetherd exports no other kind; a test asserting one would not find it.
                    _ => continue,
                };
                for point in points {
                    let value = match point.value {
                        Some(number_data_point::Value::AsDouble(d)) => d,
                        Some(number_data_point::Value::AsInt(i)) => i as f64,
                        None => continue,
                    };
                    let unit = metric.unit.clone();
                    kept.insert(
                        series(&metric.name, &point.attributes),
                        ReceivedPoint { service: service.clone(), unit, kind, value },
                    );
                }
            }
        }
        Ok(tonic::Response::new(ExportMetricsServiceResponse { partial_success: None }))
    }
}

/// The receiver; stops when dropped.
pub struct OtlpReceiver {
    addr: SocketAddr,
    spans: Sink,
    metrics: MetricSink,
    stop: CancellationToken,
}

impl OtlpReceiver {
    /// Serves on 127.0.0.1:0.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the OTLP receiver");
        let addr = listener.local_addr().expect("local address");
        let spans = Sink::default();
        let metrics = MetricSink::default();
        let stop = CancellationToken::new();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(spans.clone()))
            .add_service(MetricsServiceServer::new(metrics.clone()))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            );
        tokio::spawn(server);
        OtlpReceiver { addr, spans, metrics, stop }
    }

    /// `http://addr`, for `otlp_endpoint`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The latest point of every metric series received so far, keyed
    /// `name{k="v",…}`.
    pub fn metrics(&self) -> BTreeMap<String, ReceivedPoint> {
        self.metrics.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
