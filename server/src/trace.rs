//! Traces: one OpenTelemetry trace per command, exported over OTLP/gRPC when
//! configured, and session lifecycle events.
//!
//! A command's trace is: the app's client span (the SDK puts its W3C
//! `traceparent` into the gRPC metadata) → tetherd's `SetDesired` server span
//! (started by [`TraceLayer`], whose context is stored in the written fields'
//! origin) → the vehicle agent's apply span (the context travels inside
//! `FieldMeta.traceparent`, since the session stream outlives any span) →
//! tetherd's `field result` span when the vehicle reports the outcome. The
//! delivery of a field is a short span too. Every span here ends within one
//! call or one message; none lives as long as a stream (sessions are
//! reported as instant `session.*` spans instead).
//!
//! The OpenTelemetry API is used directly rather than through
//! `tracing-opentelemetry`: tetherd's `tracing` spans include one per
//! session, which must never become an exported span, and a handful of
//! explicit spans is easier to keep short than a filter over all of them.
//!
//! With no endpoint configured there is no exporter, no provider and no
//! background thread: [`Traces::off`] holds `None` and every method returns
//! at its first line. tetherd then still forwards a caller's `traceparent`
//! into the write's origin, so the vehicle's spans join the app's trace.

use std::sync::Arc;
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status as SpanStatus, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};

use crate::config::Config;

/// The W3C trace context header (and the key in gRPC metadata).
pub const TRACEPARENT: &str = "traceparent";

/// The path of the call that gets a server span.
const SET_DESIRED: &str = "/tether.app.v1.ControlService/SetDesired";

/// How long shutdown waits for the last spans to be exported.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(3);

/// The write's trace context, put into the request's extensions by
/// [`TraceLayer`] for `ControlService` to store in the write's origin.
#[derive(Debug, Clone)]
pub struct WriteTrace(pub String);

/// The W3C trace context of the call `req`, to store in the write's origin
/// (empty without one).
pub fn write_traceparent<T>(req: &tonic::Request<T>) -> String {
    req.extensions().get::<WriteTrace>().map(|t| t.0.clone()).unwrap_or_default()
}

/// The node's tracer: `None` when export is off.
#[derive(Clone, Default)]
pub struct Traces {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Traces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Traces").field("exporting", &self.inner.is_some()).finish()
    }
}

/// Whether the standard environment asks for trace export.
fn env_endpoint() -> bool {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .any(|var| std::env::var(var).is_ok_and(|v| !v.trim().is_empty()))
}

/// Whether the standard environment turns tracing off whatever else is set.
fn env_disabled() -> bool {
    std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v.eq_ignore_ascii_case("none"))
}

impl Traces {
    /// No export: no provider, no exporter, no background thread.
    pub fn off() -> Self {
        Traces { inner: None }
    }

    /// Export as configured: `otlp_endpoint`, else the standard
    /// `OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT`; the sampler from
    /// `trace_sample_ratio`, else `OTEL_TRACES_SAMPLER`/`_ARG`. Off when
    /// neither endpoint is set, or `OTEL_SDK_DISABLED=true`, or
    /// `OTEL_TRACES_EXPORTER=none`. Must run inside the tokio runtime (the
    /// OTLP channel is created on it).
    pub fn from_config(config: &Config) -> Result<Self, String> {
        if env_disabled() || (config.otlp_endpoint.is_none() && !env_endpoint()) {
            return Ok(Traces::off());
        }
        let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(endpoint) = &config.otlp_endpoint {
            exporter = exporter.with_endpoint(endpoint.clone());
        }
        let exporter = exporter.build().map_err(|e| format!("cannot build the OTLP span exporter: {e}"))?;
        let resource = Resource::builder().with_service_name("tetherd").build();
        let mut provider = SdkTracerProvider::builder().with_batch_exporter(exporter).with_resource(resource);
        if let Some(ratio) = config.trace_sample_ratio {
            // Parent-based: a caller's sampling decision is honoured, so a
            // trace is never half exported.
            provider = provider.with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio))));
        }
        let provider = provider.build();
        let tracer = provider.tracer("tetherd");
        Ok(Traces { inner: Some(Arc::new(Inner { provider, tracer })) })
    }

    /// Whether spans are exported.
    pub fn exporting(&self) -> bool {
        self.inner.is_some()
    }

    /// A short span, child of the field's `traceparent` (the write's server
    /// span), ended at once: the delivery of a field or its reported result.
    pub fn field_span(&self, name: &'static str, traceparent: &str, attributes: Vec<KeyValue>) {
        let Some(inner) = &self.inner else { return };
        let Some(parent) = parse(traceparent) else { return };
        let cx = Context::new().with_remote_span_context(parent);
        let mut span = inner
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .start_with_context(&inner.tracer, &cx);
        span.end();
    }

    /// A session lifecycle event (`session.connect`, `session.superseded`,
    /// `session.heartbeat_lost`, `session.goodbye`, `session.closed`): an
    /// instant root span carrying one event, with the vehicle and session ids.
    pub fn session_event(&self, name: &'static str, vehicle: &str, session: u64, mut attributes: Vec<KeyValue>) {
        let Some(inner) = &self.inner else { return };
        attributes.push(KeyValue::new("tether.vehicle.id", vehicle.to_string()));
        attributes.push(KeyValue::new("tether.session.id", session as i64));
        let mut span = inner
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes.clone())
            .start_with_context(&inner.tracer, &Context::new());
        span.add_event(name, attributes);
        span.end();
    }

    /// Exports what is buffered and stops the exporter's thread.
    pub async fn shutdown(&self) {
        let Some(inner) = self.inner.clone() else { return };
        // The provider's shutdown blocks until the batch thread exported;
        // that thread needs this runtime to drive the OTLP channel.
        let done = tokio::task::spawn_blocking(move || inner.provider.shutdown_with_timeout(FLUSH_TIMEOUT));
        if let Ok(Err(e)) = done.await {
            tracing::warn!(error = %e, "trace export did not flush at shutdown");
        }
    }

    /// The server span of a SetDesired call: a child of the caller's
    /// context, or a root. Returns the span and its context as a traceparent.
    fn server_span(&self, incoming: Option<&str>) -> Option<(opentelemetry_sdk::trace::Span, String)> {
        let inner = self.inner.as_ref()?;
        let cx = match incoming.and_then(parse) {
            Some(parent) => Context::new().with_remote_span_context(parent),
            None => Context::new(),
        };
        let span = inner
            .tracer
            .span_builder("tether.app.v1.ControlService/SetDesired")
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", "tether.app.v1.ControlService"),
                KeyValue::new("rpc.method", "SetDesired"),
            ])
            .start_with_context(&inner.tracer, &cx);
        let traceparent = format(span.span_context());
        Some((span, traceparent))
    }
}

// === impl TraceLayer ===

/// A tower layer giving each SetDesired call its server span (a child of
/// the caller's `traceparent`) for the duration of the call, and putting the
/// write's trace context into the request for the service to store. Other
/// calls pass untouched. Without export, the caller's `traceparent` is
/// passed on as the write's.
#[derive(Clone)]
pub struct TraceLayer<S> {
    inner: S,
    traces: Traces,
}

impl<S> TraceLayer<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, traces: Traces) -> Self {
        TraceLayer { inner, traces }
    }
}

impl<S, B, R> tower::Service<http::Request<B>> for TraceLayer<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>> + Send,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        if req.uri().path() != SET_DESIRED {
            return Box::pin(self.inner.call(req));
        }
        let incoming = req.headers().get(TRACEPARENT).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let span = self.traces.server_span(incoming.as_deref());
        let write_trace = match (&span, incoming) {
            (Some((_, ours)), _) => Some(ours.clone()),
            (None, Some(theirs)) if parse(&theirs).is_some() => Some(theirs),
            _ => None,
        };
        if let Some(t) = write_trace {
            req.extensions_mut().insert(WriteTrace(t));
        }
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await;
            if let Some((mut span, _)) = span {
                // A unary call's status is in the trailers unless it failed
                // before a message ("trailers-only"): then it is a header.
                let code = response
                    .as_ref()
                    .ok()
                    .and_then(|r| r.headers().get("grpc-status"))
                    .and_then(|v| v.to_str().ok().and_then(|s| s.parse::<i64>().ok()));
                if let Some(code) = code.filter(|c| *c != 0) {
                    span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
                    span.set_status(SpanStatus::error(format!("gRPC status {code}")));
                }
                span.end();
            }
            response
        })
    }
}

// === W3C traceparent ===
//
// The value travels in gRPC metadata and in a protobuf field, where no
// propagator's carrier applies; `tether_proto::traceparent` parses it once
// for the server and the SDK alike.

/// Parses a traceparent into a remote span context.
pub fn parse(traceparent: &str) -> Option<SpanContext> {
    let tp = tether_proto::traceparent::TraceParent::parse(traceparent)?;
    let flags = if tp.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
    Some(SpanContext::new(
        TraceId::from_bytes(tp.trace_id),
        SpanId::from_bytes(tp.span_id),
        flags,
        true,
        TraceState::default(),
    ))
}

/// Formats a span context as a version-00 traceparent.
pub fn format(cx: &SpanContext) -> String {
    let tp = tether_proto::traceparent::TraceParent {
        trace_id: cx.trace_id().to_bytes(),
        span_id: cx.span_id().to_bytes(),
        sampled: cx.is_sampled(),
    };
    tp.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_bad_ones_are_refused() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = parse(tp).unwrap();
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(format(&cx), tp);
        // The parser's edge cases are tested in tether_proto::traceparent.
        assert!(parse("garbage").is_none());
    }

    #[test]
    fn off_makes_no_spans() {
        let traces = Traces::off();
        assert!(!traces.exporting());
        assert!(traces.server_span(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")).is_none());
        traces.field_span("x", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", vec![]);
        traces.session_event("session.connect", "car-1", 1, vec![]);
    }
}
