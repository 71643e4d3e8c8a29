//! SIGTERM during a write load: tetherd drains, exits within its grace
//! period, and every write that was answered ACCEPTED is there after restart.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tether_proto::app::v1::GetVehicleRequest;
use tether_tests::{BOUND, ChildServer, eventually};

use crate::{set, window};

const WRITERS: usize = 8;

#[tokio::test]
async fn sigterm_under_write_load_keeps_every_accepted_write() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tetherd-under-test"));
    let server = ChildServer::start(&binary, &data).await;

    // Each writer owns a vehicle and writes a new value each time, so a
    // write's generation names its value: generation g set window g % 101.
    let accepted: Arc<Mutex<BTreeMap<String, (u64, u32)>>> = Arc::default();
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let url = server.url();
        let accepted = accepted.clone();
        writers.push(tokio::spawn(async move {
            let mut app = tether_proto::app::v1::control_service_client::ControlServiceClient::new(
                tether_tests::channel(&url).await,
            );
            let vehicle = format!("car-load-{w}");
            for i in 1u64.. {
                let value = (i % 101) as u32;
                let mut req = set(&vehicle, &format!("k-{w}-{i}"), window(value));
                req.no_expiry = true;
                match app.set_desired(req).await {
                    Ok(r) => {
                        let generation = r.into_inner().generation;
                        assert_eq!(generation, i, "one generation per write");
                        accepted.lock().unwrap().insert(vehicle.clone(), (generation, value));
                    }
                    // The node is going away: refused (UNAVAILABLE) or cut.
                    Err(_) => return i - 1,
                }
            }
            unreachable!()
        }));
    }
    eventually("the load is running", BOUND, || async {
        let total: u64 = accepted.lock().unwrap().values().map(|(g, _)| g).sum();
        (total >= 200).then_some(())
    })
    .await;

    // Default grace period: 10 s.
    let (status, took) = server.terminate(Duration::from_secs(15)).await;
    eprintln!("SIGTERM to exit under a write load of {WRITERS} writers: {took:?}");
    assert!(status.success(), "a clean exit after SIGTERM: {status:?}");
    assert!(took < Duration::from_secs(11), "exited within the grace period: {took:?}");
    for writer in writers {
        tokio::time::timeout(BOUND, writer).await.expect("writers stop").unwrap();
    }
    let accepted = accepted.lock().unwrap().clone();
    assert_eq!(accepted.len(), WRITERS);

    let server = ChildServer::start(&binary, &data).await;
    let mut app = tether_proto::app::v1::control_service_client::ControlServiceClient::new(
        tether_tests::channel(&server.url()).await,
    );
    for (vehicle, (generation, value)) in &accepted {
        let v = app.get_vehicle(GetVehicleRequest { vehicle_id: vehicle.clone() }).await.unwrap().into_inner();
        // A write whose answer was lost with the connection may be stored too;
        // none that was answered ACCEPTED may be missing.
        assert!(v.generation >= *generation, "{vehicle}: stored {} < accepted {generation}", v.generation);
        let stored = v.desired.unwrap().decode_typed().unwrap().windows.unwrap().front_left.unwrap();
        assert_eq!(stored, (v.generation % 101) as u32, "{vehicle}: the value of the stored generation");
        if v.generation == *generation {
            assert_eq!(stored, *value, "{vehicle}");
        }
    }
    server.kill_9().await;
}
