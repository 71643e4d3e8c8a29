//! Trace context of writes and applies, through the OpenTelemetry API (the
//! `otel` feature, on by default).
//!
//! The SDK never installs a tracer provider: it uses the application's
//! global one (`opentelemetry::global::set_tracer_provider`). Without one the
//! API is a no-op and nothing is sent. A write gets a client span whose W3C
//! `traceparent` goes into the call's gRPC metadata; tetherd stores the
//! write's context with each field and sends it in `FieldMeta.traceparent`;
//! the agent applies each field inside a span that is a child of it. Spans
//! last one call or one field's apply, never a session.

/// The W3C trace context key in gRPC metadata.
#[cfg(feature = "otel")]
const TRACEPARENT: &str = "traceparent";

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::global::{self, BoxedSpan};
    use opentelemetry::trace::{
        Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    };
    use opentelemetry::{Context, KeyValue};

    const TRACER: &str = "tether-sdk";

    /// The client span of one write (all its attempts).
    pub(crate) struct WriteSpan {
        span: BoxedSpan,
    }

    impl WriteSpan {
        pub(crate) fn start(vehicle_id: &str) -> Self {
            let tracer = global::tracer(TRACER);
            let span = tracer
                .span_builder("tether.app.v1.ControlService/SetDesired")
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("rpc.system", "grpc"),
                    KeyValue::new("rpc.service", "tether.app.v1.ControlService"),
                    KeyValue::new("rpc.method", "SetDesired"),
                    KeyValue::new("tether.vehicle.id", vehicle_id.to_string()),
                ])
                .start_with_context(&tracer, &Context::new());
            WriteSpan { span }
        }

        /// Puts the span's context into a call's metadata (nothing when no
        /// tracer provider is installed: the span has no valid context).
        pub(crate) fn inject<T>(&self, request: &mut tonic::Request<T>) {
            let cx = self.span.span_context();
            if !cx.is_valid() {
                return;
            }
            if let Ok(value) = format(cx).parse() {
                request.metadata_mut().insert(super::TRACEPARENT, value);
            }
        }

        pub(crate) fn end(mut self, error: Option<&str>) {
            if let Some(message) = error {
                self.span.set_status(Status::error(message.to_string()));
            }
            self.span.end();
        }
    }

    /// The span of one field's apply on the vehicle: a child of the write.
    pub(crate) struct ApplySpan {
        span: BoxedSpan,
    }

    impl ApplySpan {
        pub(crate) fn start(traceparent: &str, path: &str, generation: u64) -> Self {
            let tracer = global::tracer(TRACER);
            let cx = match parse(traceparent) {
                Some(parent) => Context::new().with_remote_span_context(parent),
                None => Context::new(),
            };
            let span = tracer
                .span_builder("tether.agent.apply")
                .with_kind(SpanKind::Consumer)
                .with_attributes([
                    KeyValue::new("tether.field.path", path.to_string()),
                    KeyValue::new("tether.field.generation", generation as i64),
                ])
                .start_with_context(&tracer, &cx);
            ApplySpan { span }
        }

        pub(crate) fn end(mut self, status: &'static str, reason: &str) {
            self.span.set_attribute(KeyValue::new("tether.field.status", status));
            if !reason.is_empty() {
                self.span.set_attribute(KeyValue::new("tether.field.reason", reason.to_string()));
                self.span.set_status(Status::error(reason.to_string()));
            }
            self.span.end();
        }
    }

    // W3C traceparent: parsed by `tether_proto::traceparent` (the server
    // uses the same parser), converted to OpenTelemetry's span context here.

    /// Parses a traceparent into a remote span context.
    pub(crate) fn parse(traceparent: &str) -> Option<SpanContext> {
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
    pub(crate) fn format(cx: &SpanContext) -> String {
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
            assert_eq!(parse(tp).map(|cx| format(&cx)).as_deref(), Some(tp));
            assert!(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01").is_none());
            assert!(parse("garbage").is_none());
        }

        #[test]
        fn without_a_provider_nothing_is_sent() {
            let span = WriteSpan::start("car-1");
            let mut request = tonic::Request::new(());
            span.inject(&mut request);
            assert!(request.metadata().get(super::super::TRACEPARENT).is_none());
            span.end(None);
        }
    }
}

#[cfg(not(feature = "otel"))]
mod otel {
    /// No OpenTelemetry: no span, no context sent.
    pub(crate) struct WriteSpan;

    impl WriteSpan {
        pub(crate) fn start(_vehicle_id: &str) -> Self {
            WriteSpan
        }
        pub(crate) fn inject<T>(&self, _request: &mut tonic::Request<T>) {}
        pub(crate) fn end(self, _error: Option<&str>) {}
    }

    /// No OpenTelemetry: no span.
    pub(crate) struct ApplySpan;

    impl ApplySpan {
        pub(crate) fn start(_traceparent: &str, _path: &str, _generation: u64) -> Self {
            ApplySpan
        }
        pub(crate) fn end(self, _status: &'static str, _reason: &str) {}
    }
}

pub(crate) use otel::{ApplySpan, WriteSpan};
