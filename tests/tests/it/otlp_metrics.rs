//! OTLP metrics: a tetherd configured with an OTLP endpoint pushes the same
//! values the Prometheus endpoint shows to an in-process OTLP/gRPC receiver,
//! every `otlp_metrics_interval`, and once more at shutdown.

use std::time::Duration;

use tether_proto::vehicle::v1::{GoodbyeReason, server_message};
use tether_sdk::{Agent, AgentEvent, Client, FieldStatus, Patch, RecordingCapability, WaitLevel, Window};
use tether_tests::otlp::{OtlpReceiver, ReceivedPoint};
use tether_tests::{BOUND, RawVehicle, TestServer, eventually};

use crate::command_path::event;
use crate::metrics::{samples, scrape};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_exported_over_otlp_from_the_same_counters_as_prometheus() {
    let receiver = OtlpReceiver::start().await;
    let server = TestServer::start_with(|c| {
        c.otlp_endpoint = Some(receiver.url());
        c.otlp_metrics_interval = Some(Duration::from_millis(200));
        // The counts below are exact: no session may time out because a
        // loaded machine delayed a heartbeat past 3 x 200 ms.
        c.heartbeat_misses = 10;
    })
    .await;
    let admin = server.admin_addr();

    // Two vehicles: an agent that applies, and a raw session superseded by a
    // second one that keeps beating.
    let agent = Agent::builder(server.url(), "car-1")
        .capability(RecordingCapability::new("windows"))
        .rate_limit("windows", Duration::ZERO)
        .spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    let (mut car2, _) = RawVehicle::connect(server.channel().await, "car-2", 0).await;
    let (car2b, _) = RawVehicle::connect(server.channel().await, "car-2", 0).await;
    let Some(server_message::Kind::Goodbye(bye)) = car2.next_non_heartbeat().await else { panic!("a goodbye") };
    assert_eq!(bye.reason, GoodbyeReason::Superseded as i32);
    let beating = tokio::spawn(async move {
        for sequence in 1.. {
            car2b.heartbeat(sequence).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // Three writes applied by car-1.
    let client = Client::connect(server.url()).await.unwrap();
    for i in 1..=3u32 {
        let outcome =
            client.set_desired("car-1", Patch::new().window(Window::FrontLeft, i * 10)).wait(WaitLevel::Applied).await;
        assert_eq!(outcome.unwrap().fields[0].status, FieldStatus::Applied);
    }

    // The periodic reader catches up within a few intervals.
    let m = eventually("the applied writes are exported", BOUND, || async {
        let m = receiver.metrics();
        let applied = m.get("tether.fields.outcomes{tether.field.outcome=\"applied\"}").map(|p| p.value);
        (applied == Some(3.0)).then_some(m)
    })
    .await;
    let point = |name: &str| -> &ReceivedPoint { m.get(name).unwrap_or_else(|| panic!("{name} exported: {m:#?}")) };
    let expect = |name: &str, value: f64, kind: &str, unit: &str| {
        let p = point(name);
        assert_eq!((p.value, p.kind, p.unit.as_str()), (value, kind, unit), "{name}");
        assert_eq!(p.service, "tetherd", "{name}");
    };
    expect("tether.sessions.connected", 2.0, "up_down", "{session}");
    expect("tether.vehicles.known", 2.0, "up_down", "{vehicle}");
    expect("tether.fields.pending", 0.0, "up_down", "{field}");
    expect("tether.sessions.opened", 3.0, "sum", "{session}");
    expect("tether.sessions.superseded", 1.0, "sum", "{session}");
    expect("tether.sessions.timed_out", 0.0, "sum", "{session}");
    expect("tether.writes{tether.write.outcome=\"accepted\"}", 3.0, "sum", "{call}");
    expect("tether.writes{tether.write.outcome=\"invalid\"}", 0.0, "sum", "{call}");
    expect("tether.fields.outcomes{tether.field.outcome=\"delivered\"}", 3.0, "sum", "{field}");
    expect("tether.handshakes.failed{error.type=\"invalid_vehicle_id\"}", 0.0, "sum", "{stream}");
    expect("tether.field.set_to_applied.duration.count", 3.0, "sum", "{field}");
    expect("tether.field.set_to_applied.duration.bucket{le=\"+Inf\"}", 3.0, "sum", "{field}");
    expect("tether.field.set_to_delivered.duration.count", 3.0, "sum", "{field}");
    assert!(point("tether.field.set_to_applied.duration.sum").value > 0.0);
    assert_eq!(point("tether.field.set_to_applied.duration.sum").unit, "s");
    assert_eq!(point("tether.network.io{network.io.direction=\"receive\"}").unit, "By");
    assert!(point("tether.network.io{network.io.direction=\"transmit\"}").value > 0.0);
    assert!(point("tether.tasks.active").value > 0.0);

    // One source of truth: the scrape shows the same counts.
    let prom = samples(&scrape(admin).await);
    for (prometheus, otlp) in [
        ("tether_sessions_opened_total", "tether.sessions.opened"),
        ("tether_sessions_superseded_total", "tether.sessions.superseded"),
        ("tether_writes_total{outcome=\"accepted\"}", "tether.writes{tether.write.outcome=\"accepted\"}"),
        ("tether_set_to_applied_seconds_count", "tether.field.set_to_applied.duration.count"),
        (
            "tether_set_to_applied_seconds_bucket{le=\"+Inf\"}",
            "tether.field.set_to_applied.duration.bucket{le=\"+Inf\"}",
        ),
    ] {
        assert_eq!(prom.get(prometheus), Some(&point(otlp).value), "{prometheus} vs {otlp}");
    }

    // Shutdown exports once more: every session and task has ended by then.
    beating.abort();
    agent.shutdown().await;
    server.shutdown().await;
    let last = receiver.metrics();
    assert_eq!(last["tether.sessions.connected"].value, 0.0, "the final export at shutdown");
    assert_eq!(last["tether.tasks.active"].value, 0.0, "the final export at shutdown");
    assert_eq!(last["tether.sessions.opened"].value, 3.0);
}
