//! The transport's guarantees: a clear refusal at the connection cap, and no
//! busy loop at the open-files limit.

use std::path::PathBuf;
use std::time::Duration;

use tether_proto::app::v1::GetVehicleRequest;
use tether_tests::{BOUND, ChildServer, RawVehicle, TestServer, eventually};
use tonic::Code;

#[tokio::test]
async fn connections_beyond_the_cap_are_refused_with_a_clear_status() {
    let server = TestServer::start_with(|c| c.max_connections = 2).await;
    let (_a, _) = RawVehicle::connect(server.channel().await, "car-a", 0).await;
    let (_b, _) = RawVehicle::connect(server.channel().await, "car-b", 0).await;
    eventually("two connections", BOUND, || async { (server.stats().connections == 2).then_some(()) }).await;
    let mut third = server.app().await;
    let err = third.get_vehicle(GetVehicleRequest { vehicle_id: "car-a".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("connection limit (2)"), "{}", err.message());
    assert_eq!(server.stats().sessions, 2, "the admitted vehicles are untouched");
}

#[tokio::test]
async fn at_the_open_files_limit_the_accept_loop_backs_off_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tetherd-under-test"));
    // 64 descriptors: the runtime, the store and a few connections.
    let server = ChildServer::start_limited(&binary, &dir.path().join("data"), Some(64)).await;
    let mut flood = Vec::new();
    for _ in 0..100 {
        // The kernel completes these handshakes into the backlog; tetherd
        // cannot accept them all (EMFILE).
        flood.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // Let the server hit the limit, then measure its CPU over one second.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = server.cpu_time();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = server.cpu_time() - before;
    assert!(server.logged("out of resources"), "the server reached the open-files limit");
    assert!(used < Duration::from_millis(300), "tetherd used {used:?} of CPU in 1 s at the fd limit (spinning?)");

    // Once descriptors free up it serves again.
    drop(flood);
    let url = server.url();
    eventually("serving again", BOUND, || async {
        let Ok(ch) = tonic::transport::Endpoint::from_shared(url.clone()).unwrap().connect().await else {
            return None;
        };
        let mut app = tether_proto::app::v1::control_service_client::ControlServiceClient::new(ch);
        let err = app.get_vehicle(GetVehicleRequest { vehicle_id: "nobody".into() }).await.err()?;
        (err.code() == Code::NotFound).then_some(())
    })
    .await;
}
