//! The fleet simulator against a real tetherd, through its fault-injecting
//! proxy: links that keep being cut never make a vehicle apply a field twice.

use std::time::Duration;

use tether_examples::faults::Faults;
use tether_examples::sim::{Fleet, FleetConfig, is_parked, vehicle_id};
use tether_sdk::{Client, FieldStatus, Patch, Window};
use tether_tests::{TestServer, eventually};

#[tokio::test]
async fn over_flaky_links_every_field_is_applied_exactly_once() {
    const VEHICLES: usize = 40;
    let server = TestServer::start().await;
    let config = FleetConfig {
        server: server.url(),
        vehicles: VEHICLES,
        per_connection: 10,
        apply_min: Duration::from_millis(5),
        apply_max: Duration::from_millis(50),
        unparked_share: 0.1,
        // Each of the 4 links is cut about every 3 s and delayed 5 ms.
        faults: Faults {
            drop_per_minute: 20.0,
            stall_per_minute: 0.0,
            stall_for: Duration::ZERO,
            delay: Duration::from_millis(5),
        },
        state_dir: None,
        tls: None,
        // The links leave from 127.0.0.1 to 127.0.0.3 in turn.
        source_addresses: 3,
    };
    let fleet = Fleet::start(&config).await.unwrap();
    let client = Client::connect(server.url()).await.unwrap();
    eventually("the fleet connects", Duration::from_secs(30), || async {
        (fleet.status().connected == VEHICLES).then_some(())
    })
    .await;

    let settle = |pct: u32| {
        let client = client.clone();
        async move {
            for i in 0..VEHICLES {
                client.set_desired(vehicle_id(i), Patch::new().window(Window::FrontLeft, pct)).await.unwrap();
            }
            // Every field reaches its end: APPLIED, or REJECTED where not parked.
            eventually("every field settles", Duration::from_secs(60), || async {
                for i in 0..VEHICLES {
                    let v = client.get_vehicle(vehicle_id(i)).await.ok()?;
                    let status = v.fields.first()?.status;
                    let want = if is_parked(i, 0.1) { FieldStatus::Applied } else { FieldStatus::Rejected };
                    if status != want as i32 {
                        return None;
                    }
                }
                Some(())
            })
            .await;
        }
    };
    settle(100).await;
    // Links are cut (every vehicle behind a cut link reconnects with a Hello)
    // before the second round.
    let drops = fleet.status().faults.drops;
    eventually("links cut", Duration::from_secs(60), || async {
        (fleet.status().faults.drops >= drops + 2).then_some(())
    })
    .await;
    eventually("the fleet back", Duration::from_secs(60), || async {
        (fleet.status().connected == VEHICLES).then_some(())
    })
    .await;
    settle(50).await;
    let status = fleet.shutdown().await;
    let parked = (0..VEHICLES).filter(|i| is_parked(*i, 0.1)).count();
    assert_eq!(status.applied, 2 * parked as u64, "each write applied exactly once: {status:?}");
    assert_eq!(status.refused_precondition, 2 * (VEHICLES - parked) as u64, "{status:?}");
    assert!(status.disconnects > 0, "{status:?}");
    assert!(status.faults.drops > 0, "the links were really cut: {status:?}");
}
