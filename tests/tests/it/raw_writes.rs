//! Idempotency, optimistic concurrency and require_online, with the raw
//! generated client (what any language's client sends).

use std::time::{Duration, Instant};

use tether_proto::app::v1::GetVehicleRequest;
use tether_proto::common::v1::FieldStatus;
use tether_tests::{Deployment, on_both};
use tonic::Code;

use crate::{set, window};

on_both!(a_retry_with_the_same_key_replays_and_a_different_patch_under_it_is_refused);
async fn a_retry_with_the_same_key_replays_and_a_different_patch_under_it_is_refused(d: Deployment) {
    let mut app = d.app_node().app().await;
    let first = app.set_desired(set("car-1", "key-a", window(40))).await.unwrap().into_inner();
    assert_eq!(first.generation, 1);
    assert!(!first.replayed);
    assert_eq!(first.fields[0].status, FieldStatus::Pending as i32);

    let retry = app.set_desired(set("car-1", "key-a", window(40))).await.unwrap().into_inner();
    assert!(retry.replayed);
    assert_eq!(retry.generation, first.generation);
    let vehicle = app.get_vehicle(GetVehicleRequest { vehicle_id: "car-1".into() }).await.unwrap().into_inner();
    assert_eq!(vehicle.generation, 1, "a replay does not bump the generation");

    let err = app.set_desired(set("car-1", "key-a", window(99))).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
    assert!(err.message().contains("key-a"), "{}", err.message());
    let vehicle = app.get_vehicle(GetVehicleRequest { vehicle_id: "car-1".into() }).await.unwrap().into_inner();
    assert_eq!(vehicle.generation, 1, "the refused write changed nothing");
}

on_both!(a_wrong_expected_generation_is_aborted_and_changes_nothing);
async fn a_wrong_expected_generation_is_aborted_and_changes_nothing(d: Deployment) {
    let mut app = d.app_node().app().await;
    app.set_desired(set("car-2", "k1", window(10))).await.unwrap();
    let mut req = set("car-2", "k2", window(90));
    req.expected_generation = Some(5);
    let err = app.set_desired(req).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert!(err.message().contains("expected generation 5"), "{}", err.message());
    let vehicle = app.get_vehicle(GetVehicleRequest { vehicle_id: "car-2".into() }).await.unwrap().into_inner();
    assert_eq!(vehicle.generation, 1);
    let desired = vehicle.desired.unwrap().decode_typed().unwrap();
    assert_eq!(desired, window(10));

    let mut req = set("car-2", "k3", window(90));
    req.expected_generation = Some(1);
    assert_eq!(app.set_desired(req).await.unwrap().into_inner().generation, 2);
}

on_both!(require_online_to_an_offline_vehicle_fails_fast_and_changes_nothing);
async fn require_online_to_an_offline_vehicle_fails_fast_and_changes_nothing(d: Deployment) {
    let mut app = d.app_node().app().await;
    // Known but offline, and never seen: both fail fast.
    app.set_desired(set("car-3", "k1", window(10))).await.unwrap();
    for vehicle in ["car-3", "never-seen"] {
        let mut req = set(vehicle, "k2", window(50));
        req.require_online = true;
        let started = Instant::now();
        let err = app.set_desired(req).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(err.code(), Code::Unavailable, "{err:?}");
        // Fails fast: at once, not after the write's 60 s max wait.
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    let vehicle = app.get_vehicle(GetVehicleRequest { vehicle_id: "car-3".into() }).await.unwrap().into_inner();
    assert_eq!(vehicle.generation, 1);
    let unknown = app.get_vehicle(GetVehicleRequest { vehicle_id: "never-seen".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "a refused write creates no vehicle");
}
