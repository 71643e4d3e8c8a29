//! Sessions: supersede, heartbeat loss, and task hygiene at 1,000 sessions.

use std::time::Duration;

use tether_proto::app::v1::GetVehicleRequest;
use tether_proto::vehicle::v1::{GoodbyeReason, server_message};
use tether_tests::{BOUND, Deployment, RawVehicle, TestServer, eventually, on_both};

#[tokio::test]
async fn a_second_connection_supersedes_the_first_which_never_comes_back() {
    // `second` stays silent while the test reads the first's goodbye and asks
    // the app API: a heartbeat interval longer than the test.
    let server = TestServer::start_with(|c| c.heartbeat_interval = Duration::from_secs(30)).await;
    let (mut first, w1) = RawVehicle::connect(server.channel().await, "car-s", 0).await;
    let (mut second, w2) = RawVehicle::connect(server.channel().await, "car-s", 0).await;
    assert!(w2.session_id > w1.session_id, "session ids increase");

    match first.next_non_heartbeat().await {
        Some(server_message::Kind::Goodbye(g)) => {
            assert_eq!(g.reason, GoodbyeReason::Superseded as i32);
            assert!(g.message.contains("superseded"), "{}", g.message);
        }
        other => panic!("expected a goodbye, got {other:?}"),
    }
    assert!(first.next_non_heartbeat().await.is_none(), "the old stream is closed");

    let app = server.app().await;
    let presence = || async {
        let v = app.clone().get_vehicle(GetVehicleRequest { vehicle_id: "car-s".into() }).await.unwrap().into_inner();
        v.presence.unwrap()
    };
    let p = presence().await;
    assert!(p.online);
    assert_eq!(p.session_id, w2.session_id);
    // The old session's end never flips presence back.
    drop(first);
    second.heartbeat(1).await;
    assert!(matches!(second.next().await, Some(server_message::Kind::Heartbeat(_))));
    let p = presence().await;
    assert!(p.online);
    assert_eq!(p.session_id, w2.session_id);
    assert_eq!(server.stats().sessions, 1);
    assert_eq!(server.stats().sessions_superseded, 1);
}

#[tokio::test]
async fn a_connect_whose_hello_comes_after_a_newer_session_does_not_supersede_it() {
    use tether_proto::RawState;
    use tether_proto::vehicle::v1::vehicle_service_client::VehicleServiceClient;
    use tether_proto::vehicle::v1::{Hello, VehicleMessage, vehicle_message};

    let server = TestServer::start_with(|c| c.heartbeat_interval = Duration::from_secs(30)).await;
    // A Connect the vehicle gave up on: its stream is open, its Hello still
    // on the way (a node too busy to read it in time).
    let (late_tx, out) = tokio::sync::mpsc::channel(4);
    let mut late = VehicleServiceClient::new(server.channel().await)
        .connect(tokio_stream::wrappers::ReceiverStream::new(out))
        .await
        .unwrap()
        .into_inner();
    // The vehicle's next Connect opens its session.
    let (mut live, welcome) = RawVehicle::connect(server.channel().await, "car-late", 0).await;
    let hello = Hello { vehicle_id: "car-late".into(), actual: Some(RawState::default()), ..Default::default() };
    late_tx.send(VehicleMessage { kind: Some(vehicle_message::Kind::Hello(hello)) }).await.unwrap();

    // The late Hello is the older connection's: it is the one superseded.
    let first = tokio::time::timeout(BOUND, late.message()).await.expect("an answer").unwrap();
    match first.and_then(|m| m.kind) {
        Some(server_message::Kind::Goodbye(g)) => {
            assert_eq!(g.reason, GoodbyeReason::Superseded as i32);
            assert!(g.message.contains("newer connection"), "{}", g.message);
        }
        other => panic!("expected a goodbye, got {other:?}"),
    }
    // The newer session goes on, and presence names it.
    live.heartbeat(1).await;
    assert!(matches!(live.next().await, Some(server_message::Kind::Heartbeat(_))));
    let app = server.app().await;
    let v = app.clone().get_vehicle(GetVehicleRequest { vehicle_id: "car-late".into() }).await.unwrap().into_inner();
    let presence = v.presence.unwrap();
    assert!(presence.online);
    assert_eq!(presence.session_id, welcome.session_id);
    assert_eq!(server.stats().sessions_superseded, 0);
}

#[tokio::test]
async fn a_silent_vehicle_is_closed_within_interval_times_misses_and_freed() {
    // 200 ms x 3 misses.
    let server = TestServer::start().await;
    let idle_tasks = server.stats().tasks;
    // Taken before the Hello, so before the server last heard the vehicle.
    let started = std::time::Instant::now();
    let (mut silent, _) = RawVehicle::connect(server.channel().await, "car-quiet", 0).await;
    assert_eq!(server.stats().sessions, 1);
    let goodbye = loop {
        match silent.next().await {
            Some(server_message::Kind::Heartbeat(_)) => continue,
            Some(server_message::Kind::Goodbye(g)) => break g,
            other => panic!("expected a goodbye, got {other:?}"),
        }
    };
    let took = started.elapsed();
    assert_eq!(goodbye.reason, GoodbyeReason::HeartbeatTimeout as i32);
    // 600 ms of silence, checked on 200 ms ticks: closed by the 4th tick
    // (the upper bound leaves room for a loaded machine).
    assert!(took >= Duration::from_millis(600) && took < Duration::from_secs(3), "closed after {took:?}");
    eventually("session freed", BOUND, || async { (server.stats().sessions == 0).then_some(()) }).await;
    assert_eq!(server.stats().sessions_timed_out, 1);
    drop(silent);
    eventually("tasks back to idle", BOUND, || async { (server.stats().tasks <= idle_tasks).then_some(()) }).await;
}

#[tokio::test]
async fn a_thousand_vehicles_connect_and_disconnect_and_counts_return_to_idle() {
    // Silent vehicles: the first must outlive the last one's handshake.
    let server = TestServer::start_with(|c| c.heartbeat_interval = Duration::from_secs(60)).await;
    let idle = server.stats();
    // 10 connections x 100 streams, as a gateway would multiplex them.
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(server.channel().await);
    }
    let mut vehicles = Vec::new();
    for i in 0..1000 {
        let ch = channels[i % channels.len()].clone();
        vehicles.push(tokio::spawn(async move { RawVehicle::connect(ch, &format!("fleet-{i:04}"), 0).await.0 }));
    }
    let mut connected = Vec::new();
    for v in vehicles {
        connected.push(v.await.unwrap());
    }
    let busy = server.stats();
    assert_eq!(busy.sessions, 1000);
    assert!(busy.tasks >= idle.tasks + 1000, "one task per session at least: {busy:?}");
    drop(connected);
    drop(channels);
    let stats = eventually("sessions, connections and tasks back to idle", BOUND, || async {
        let s = server.stats();
        (s.sessions == 0 && s.connections == 0 && s.tasks <= idle.tasks).then_some(s)
    })
    .await;
    assert_eq!(stats.waiters, 0);
    assert_eq!(stats.watchers, 0);
    assert_eq!(stats.sessions_opened, 1000);
}

on_both!(an_outcome_lost_with_the_link_arrives_with_the_next_hello);
async fn an_outcome_lost_with_the_link_arrives_with_the_next_hello(d: Deployment) {
    use tether_proto::RawState;
    use tether_proto::common::v1::FieldStatus;
    use tether_proto::vehicle::v1::{FieldResult, Hello};

    let mut app = d.app_node().app().await;
    let (mut v, _) = RawVehicle::connect(d.vehicle_node().channel().await, "car-lost", 0).await;
    app.set_desired(crate::set("car-lost", "k", crate::window(100))).await.unwrap();
    let desired = match v.next_non_heartbeat().await {
        Some(server_message::Kind::Desired(d)) => d,
        other => panic!("expected a snapshot, got {other:?}"),
    };
    v.ack(desired.generation).await;
    // The vehicle refuses the field, and the link drops before its report.
    drop(v);
    let hello = Hello {
        vehicle_id: "car-lost".into(),
        agent_version: "raw-test".into(),
        last_applied_generation: desired.generation,
        actual: Some(RawState::default()),
        results: vec![FieldResult {
            path: "windows.front_left".into(),
            generation: desired.fields[0].generation,
            status: FieldStatus::Rejected as i32,
            reason: "precondition:parked".into(),
            message: "not parked".into(),
        }],
    };
    let mut v = RawVehicle::open(d.vehicle_node().channel().await, hello).await.unwrap();
    assert!(matches!(v.next().await, Some(server_message::Kind::Welcome(_))));
    // On a cluster the app's node reads it a moment later, from the stream.
    let field = eventually("the outcome reaches the app's node", BOUND, || async {
        let view = app.clone().get_vehicle(GetVehicleRequest { vehicle_id: "car-lost".into() }).await.ok()?;
        let field = view.into_inner().fields[0].clone();
        (field.status == FieldStatus::Rejected as i32).then_some(field)
    })
    .await;
    assert_eq!((field.status, field.reason.as_str()), (FieldStatus::Rejected as i32, "precondition:parked"));
}

on_both!(a_vehicle_on_a_newer_contract_may_report_fields_this_server_lacks);
async fn a_vehicle_on_a_newer_contract_may_report_fields_this_server_lacks(d: Deployment) {
    use prost::Message;
    use tether_proto::RawState;
    use tether_proto::vehicle::v1::{Hello, Report, vehicle_message};

    // Known field windows.front_left = 7, plus field 50 the server's contract lacks.
    let mut bytes = crate::window(7).encode_to_vec();
    bytes.extend_from_slice(&[0x92, 0x03, 0x02, 0x08, 0x02]); // field 50 { field 1: 2 }
    let actual = RawState(bytes.into());
    let hello = Hello {
        vehicle_id: "car-new".into(),
        agent_version: "from-the-future".into(),
        last_applied_generation: 0,
        actual: Some(actual.clone()),
        results: vec![],
    };
    let mut v = RawVehicle::open(d.vehicle_node().channel().await, hello).await.unwrap();
    assert!(matches!(v.next().await, Some(server_message::Kind::Welcome(_))));
    v.send(vehicle_message::Kind::Report(Report { observed_generation: 0, actual: Some(actual), results: vec![] }))
        .await;
    v.heartbeat(1).await;
    assert!(matches!(v.next().await, Some(server_message::Kind::Heartbeat(_))), "the session lives on");
    let app = d.app_node().app().await;
    // On a cluster the app's node reads it a moment later, from the stream.
    let view = eventually("the report reaches the app's node", BOUND, || async {
        let view = app.clone().get_vehicle(GetVehicleRequest { vehicle_id: "car-new".into() }).await.ok()?.into_inner();
        (view.presence.as_ref()?.online && view.actual.is_some()).then_some(view)
    })
    .await;
    assert_eq!(view.actual.unwrap().decode_typed().unwrap(), crate::window(7));
    assert!(view.presence.unwrap().online);
}
