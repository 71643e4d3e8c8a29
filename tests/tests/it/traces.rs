//! Traces: one connected OpenTelemetry trace per command, from the app's
//! call through tetherd and the vehicle's apply back to tetherd, exported
//! over real OTLP/gRPC to an in-process receiver; session lifecycle events.

use std::sync::OnceLock;

use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tether_sdk::{Agent, AgentEvent, Client, FieldStatus, Patch, RecordingCapability, WaitLevel, Window};
use tether_tests::otlp::{OtlpReceiver, ReceivedSpan};
use tether_tests::{BOUND, RawVehicle, TestServer, eventually};

/// The spans of this process's SDK (app client and agent), through the
/// global tracer provider an application would install. Set once: the other
/// tests' SDK spans land here too, and are told apart by trace id.
fn sdk_spans() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        opentelemetry::global::set_tracer_provider(provider);
        exporter
    })
}

fn sdk_attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
}

fn finished() -> Vec<SpanData> {
    sdk_spans().get_finished_spans().expect("in-memory exporter")
}

fn one<'a>(spans: &'a [ReceivedSpan], name: &str, trace: TraceId) -> &'a ReceivedSpan {
    let found: Vec<_> = spans.iter().filter(|s| s.span.name == name && s.span.trace_id == trace.to_bytes()).collect();
    assert_eq!(found.len(), 1, "one `{name}` span in trace {trace}: {found:#?}");
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_to_applied_round_trip_is_one_trace_across_app_server_and_agent() {
    const VEHICLE: &str = "car-traced";
    sdk_spans();
    let receiver = OtlpReceiver::start().await;
    let server = TestServer::start_with(|c| c.otlp_endpoint = Some(receiver.url())).await;
    let windows = RecordingCapability::new("windows");
    let applied = windows.applied();
    let agent = Agent::builder(server.url(), VEHICLE).capability(windows).spawn();
    let mut events = agent.events();
    tokio::time::timeout(BOUND, async { while !matches!(events.recv().await, Ok(AgentEvent::Connected { .. })) {} })
        .await
        .expect("the agent connects");
    let session = agent.session_id().expect("a session");

    let client = Client::connect(server.url()).await.unwrap();
    let outcome = client
        .set_desired(VEHICLE, Patch::new().window(Window::FrontLeft, 40))
        .wait(WaitLevel::Applied)
        .timeout(BOUND)
        .await
        .unwrap();
    assert!(outcome.fields.iter().all(|f| f.status == FieldStatus::Applied), "{outcome:?}");

    // The app's client span, ended when the call returned.
    let app = finished()
        .into_iter()
        .find(|s| s.span_kind == SpanKind::Client && sdk_attr(s, "tether.vehicle.id").as_deref() == Some(VEHICLE))
        .expect("the SDK's client span");
    let trace = app.span_context.trace_id();
    assert_eq!(app.name, "tether.app.v1.ControlService/SetDesired");

    // Shutting down flushes tetherd's exporter; everything below was
    // exported before the call above returned, or at the goodbye.
    server.shutdown().await;
    agent.shutdown().await;
    let spans = receiver.spans();

    let handled = one(&spans, "tether.app.v1.ControlService/SetDesired", trace);
    assert_eq!(handled.service, "tetherd");
    assert_eq!(handled.span.kind, opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32);
    assert_eq!(handled.span.parent_span_id, app.span_context.span_id().to_bytes(), "server span is the app's child");
    let server_span = handled.span.span_id.clone();

    let delivered = one(&spans, "tetherd.deliver", trace);
    assert_eq!(delivered.span.parent_span_id, server_span);
    assert_eq!(delivered.attribute("tether.field.path").as_deref(), Some("windows.front_left"));

    // The agent's apply: a child of the write, through FieldMeta.traceparent.
    let apply: Vec<SpanData> = finished()
        .into_iter()
        .filter(|s| s.name == "tether.agent.apply" && s.span_context.trace_id() == trace)
        .collect();
    assert_eq!(apply.len(), 1, "{apply:#?}");
    assert_eq!(apply[0].parent_span_id.to_bytes().to_vec(), server_span, "apply is the write's child");
    assert_eq!(sdk_attr(&apply[0], "tether.field.path").as_deref(), Some("windows.front_left"));
    assert_eq!(sdk_attr(&apply[0], "tether.field.status").as_deref(), Some("FIELD_STATUS_APPLIED"));
    let seen = applied.lock().unwrap()[0].traceparent.clone();
    assert!(seen.contains(&format!("{trace}")), "the capability got the write's context: {seen}");

    // The result back on tetherd, in the same trace.
    let result = one(&spans, "tetherd.field_result", trace);
    assert_eq!(result.span.parent_span_id, server_span);
    assert_eq!(result.attribute("tether.field.status").as_deref(), Some("FIELD_STATUS_APPLIED"));
    assert_eq!(result.attribute("tether.vehicle.id").as_deref(), Some(VEHICLE));

    // Nothing else joined the trace: no span as long as a session.
    let in_trace = spans.iter().filter(|s| s.span.trace_id == trace.to_bytes()).count();
    assert_eq!(in_trace, 3, "server, deliver and result spans only");

    // Sessions: connect and goodbye as events with vehicle and session ids.
    let session_event = |name: &str| {
        spans.iter().find(|s| {
            s.span.name == name
                && s.attribute("tether.vehicle.id").as_deref() == Some(VEHICLE)
                && s.attribute("tether.session.id") == Some(session.to_string())
        })
    };
    let connect = session_event("session.connect").expect("session.connect");
    assert_eq!(connect.span.events.len(), 1);
    let goodbye = session_event("session.goodbye").expect("session.goodbye at shutdown");
    assert_eq!(goodbye.attribute("tether.goodbye.reason").as_deref(), Some("GOODBYE_REASON_SHUTTING_DOWN"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn supersede_and_heartbeat_loss_are_session_events() {
    const VEHICLE: &str = "car-traced-sessions";
    let receiver = OtlpReceiver::start().await;
    let server = TestServer::start_with(|c| c.otlp_endpoint = Some(receiver.url())).await;
    let (first, welcome) = RawVehicle::connect(server.channel().await, VEHICLE, 0).await;
    let (second, second_welcome) = RawVehicle::connect(server.channel().await, VEHICLE, 0).await;
    // The second session never answers: tetherd gives up on it after
    // heartbeat_interval × heartbeat_misses (600 ms in tests).
    let stats_idle = || async { (server.stats().sessions == 0).then_some(()) };
    eventually("the silent session is closed", BOUND, stats_idle).await;
    server.shutdown().await;
    drop((first, second));
    let spans = receiver.spans();
    let event = |name: &str, session: u64| {
        spans.iter().any(|s| {
            s.span.name == name
                && s.attribute("tether.vehicle.id").as_deref() == Some(VEHICLE)
                && s.attribute("tether.session.id") == Some(session.to_string())
        })
    };
    assert!(event("session.connect", welcome.session_id));
    assert!(event("session.superseded", welcome.session_id), "{spans:#?}");
    assert!(event("session.heartbeat_lost", second_welcome.session_id), "{spans:#?}");
}
