//! A vehicle that stops reading costs one snapshot, hurts no other vehicle,
//! and on resume receives the latest state, never the history.

use std::sync::Arc;
use std::time::Duration;

use tether_proto::app::v1::{GetVehicleRequest, WaitLevel};
use tether_proto::common::v1::FieldStatus;
use tether_proto::vehicle::v1::{FieldResult, Report, server_message, vehicle_message};
use tether_tests::{BOUND, RawVehicle, TestServer};

use crate::{set, window};

/// Acknowledges and applies every snapshot, like a healthy agent.
async fn healthy(mut v: RawVehicle) {
    while let Ok(Some(msg)) = v.rx.message().await {
        if let Some(server_message::Kind::Desired(d)) = msg.kind {
            v.ack(d.generation).await;
            v.send(applied_report(&d)).await;
        }
    }
}

#[tokio::test]
async fn a_vehicle_that_stops_reading_gets_one_snapshot_then_only_the_latest() {
    let server = TestServer::start_with(|c| c.heartbeat_interval = Duration::from_secs(30)).await;
    let (mut slow, _) = RawVehicle::connect(server.channel().await, "slow", 0).await;
    let (fast, _) = RawVehicle::connect(server.channel().await, "fast", 0).await;
    let fast = tokio::spawn(healthy(fast));

    // 10,000 writes from 50 concurrent callers while "slow" reads nothing.
    let app = server.app().await;
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let mut writers = Vec::new();
    for _ in 0..50 {
        let mut app = app.clone();
        let next = next.clone();
        writers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= 10_000 {
                    return;
                }
                app.set_desired(set("slow", &format!("w{i}"), window(i % 101))).await.unwrap();
            }
        }));
    }
    // Meanwhile another vehicle on the node is served at once.
    let mut app2 = server.app().await;
    for i in 0..5 {
        let mut req = set("fast", &format!("f{i}"), window(i * 10));
        req.wait = WaitLevel::Applied as i32;
        let mut req = tonic::Request::new(req);
        req.set_timeout(BOUND);
        let out = app2.set_desired(req).await.expect("the other vehicle is unaffected").into_inner();
        assert_eq!(out.fields[0].status, FieldStatus::Applied as i32);
    }
    for w in writers {
        w.await.unwrap();
    }

    let view = app2.get_vehicle(GetVehicleRequest { vehicle_id: "slow".into() }).await.unwrap().into_inner();
    let presence = view.presence.clone().unwrap();
    assert_eq!(presence.snapshots_sent, 1, "one snapshot in flight, the rest coalesced: {presence:?}");
    assert!(presence.snapshot_pending);
    assert!(server.stats().pending_snapshots <= 1);
    let latest = view.generation;
    let latest_state = view.desired.unwrap();

    // Resume: the snapshot that was in flight, then the latest, then nothing.
    let first = match slow.next_non_heartbeat().await {
        Some(server_message::Kind::Desired(d)) => d,
        other => panic!("expected a snapshot, got {other:?}"),
    };
    assert!(first.generation < latest);
    slow.ack(first.generation).await;
    let second = match slow.next_non_heartbeat().await {
        Some(server_message::Kind::Desired(d)) => d,
        other => panic!("expected a snapshot, got {other:?}"),
    };
    assert_eq!(second.generation, latest);
    assert_eq!(second.state.unwrap(), latest_state);
    slow.ack(second.generation).await;
    tether_tests::eventually("ack recorded", BOUND, || {
        let mut app = app2.clone();
        async move {
            let v = app.get_vehicle(GetVehicleRequest { vehicle_id: "slow".into() }).await.unwrap().into_inner();
            let p = v.presence.unwrap();
            (p.unacknowledged_generation == 0).then_some(p)
        }
    })
    .await;
    let p =
        app2.get_vehicle(GetVehicleRequest { vehicle_id: "slow".into() }).await.unwrap().into_inner().presence.unwrap();
    assert_eq!(p.snapshots_sent, 2, "two snapshots for 10,000 writes");
    assert!(!p.snapshot_pending);
    fast.abort();
}

/// The Report of a vehicle that applied every field of snapshot `d`.
fn applied_report(d: &tether_proto::vehicle::v1::DesiredState) -> vehicle_message::Kind {
    let results = d
        .fields
        .iter()
        .map(|f| FieldResult {
            path: f.path.clone(),
            generation: f.generation,
            status: FieldStatus::Applied as i32,
            ..Default::default()
        })
        .collect();
    vehicle_message::Kind::Report(Report { observed_generation: d.generation, actual: d.state.clone(), results })
}

#[tokio::test]
async fn a_report_sent_without_an_ack_acknowledges_its_snapshot() {
    let server = TestServer::start_with(|c| c.heartbeat_interval = Duration::from_secs(30)).await;
    let (mut v, _) = RawVehicle::connect(server.channel().await, "car-r", 0).await;
    let mut app = server.app().await;
    for (i, pct) in [(1, 10), (2, 20)] {
        let mut req = set("car-r", &format!("k{i}"), window(pct));
        req.wait = WaitLevel::Applied as i32;
        let mut req = tonic::Request::new(req);
        req.set_timeout(BOUND);
        let mut call = app.clone();
        let write = tokio::spawn(async move { call.set_desired(req).await });
        // The second snapshot comes only if the first was acknowledged: the
        // Report alone did it.
        let d = match v.next_non_heartbeat().await {
            Some(server_message::Kind::Desired(d)) => d,
            other => panic!("expected snapshot {i}, got {other:?}"),
        };
        assert_eq!(d.generation, i);
        v.send(applied_report(&d)).await;
        let out = write.await.unwrap().expect("the write reaches APPLIED").into_inner();
        assert_eq!(out.fields[0].status, FieldStatus::Applied as i32, "{out:?}");
    }
    let view = app.get_vehicle(GetVehicleRequest { vehicle_id: "car-r".into() }).await.unwrap().into_inner();
    let presence = view.presence.unwrap();
    assert!(!presence.snapshot_pending, "{presence:?}");
    assert_eq!(presence.snapshots_sent, 2);
}
