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

/// tetherd-under-test with `args`, and its data in a new directory.
async fn binary_with(args: &[&str]) -> (ChildServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_tetherd-under-test"));
    (ChildServer::start_with_args(&binary, &dir.path().join("data"), None, args).await, dir)
}

/// Whether the server closed `socket` (EOF or reset) within `bound`.
async fn closed_within(socket: &mut tokio::net::TcpStream, bound: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(bound, socket.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            // A refusal or GOAWAY on its way out: keep reading to the end.
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn at_the_cap_a_connection_that_never_spoke_makes_room_for_one_that_does() {
    // 50 sockets that never send a byte fill a node capped at 50 connections,
    // with a preface timeout long enough that it is not what frees them.
    let (server, _dir) = binary_with(&["--max-connections", "50", "--preface-timeout", "60s"]).await;
    let mut silent = Vec::new();
    for _ in 0..50 {
        silent.push(tokio::net::TcpStream::connect(server.addr).await.unwrap());
    }
    // Accepted after them (one accept loop, in order): the cap is reached,
    // and the oldest silent socket makes room.
    let started = std::time::Instant::now();
    let mut app = tether_proto::app::v1::control_service_client::ControlServiceClient::new(
        tether_tests::channel(&server.url()).await,
    );
    let err = app.get_vehicle(GetVehicleRequest { vehicle_id: "car-1".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "served, not refused at the cap: {err:?}");
    let (_vehicle, _) = RawVehicle::connect(tether_tests::channel(&server.url()).await, "car-1", 0).await;
    assert!(started.elapsed() < Duration::from_secs(5), "served at once: {:?}", started.elapsed());
    // The two oldest silent sockets were closed for them; the others wait.
    assert!(closed_within(&mut silent[0], BOUND).await, "the oldest silent socket is closed");
    assert!(closed_within(&mut silent[1], BOUND).await, "and the next oldest");
    assert!(!closed_within(&mut silent[2], Duration::from_millis(200)).await, "the rest still wait");
    // A proven connection is never evicted: with no silent socket left to
    // close, a connection over the cap is refused with the reason.
    drop(silent);
    let mut more = Vec::new();
    for i in 0..48 {
        more.push(RawVehicle::connect(tether_tests::channel(&server.url()).await, &format!("car-x{i}"), 0).await);
    }
    let mut over = tether_proto::app::v1::control_service_client::ControlServiceClient::new(
        tether_tests::channel(&server.url()).await,
    );
    let err = over.get_vehicle(GetVehicleRequest { vehicle_id: "car-1".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains("connection limit (50)"), "{}", err.message());
}

#[tokio::test]
async fn a_connection_that_says_nothing_or_half_a_preface_is_closed_after_the_preface_timeout() {
    use tokio::io::AsyncWriteExt;
    let (server, _dir) = binary_with(&["--preface-timeout", "500ms"]).await;
    let started = std::time::Instant::now();
    let mut silent = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let mut half = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    assert!(closed_within(&mut silent, BOUND).await, "a silent socket is closed");
    assert!(closed_within(&mut half, BOUND).await, "so is one that sent half the preface");
    // Closed after 75-100% of the timeout (jittered).
    assert!(started.elapsed() >= Duration::from_millis(370), "not before the timeout: {:?}", started.elapsed());
    // A real client is unaffected.
    let mut app = tether_proto::app::v1::control_service_client::ControlServiceClient::new(
        tether_tests::channel(&server.url()).await,
    );
    let err = app.get_vehicle(GetVehicleRequest { vehicle_id: "car-1".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn a_connection_with_no_stream_is_closed_after_the_idle_limit_and_a_vehicle_stays() {
    let server = TestServer::start_with(|c| c.max_connection_idle = Duration::from_millis(300)).await;
    let (vehicle, _) = RawVehicle::connect(server.channel().await, "car-1", 0).await;
    let beating = tokio::spawn(async move {
        for sequence in 0.. {
            vehicle.heartbeat(sequence).await;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut app = server.app().await;
    let get = GetVehicleRequest { vehicle_id: "car-1".into() };
    app.get_vehicle(get.clone()).await.unwrap();
    assert_eq!(server.stats().connections, 2);
    // The app's connection, idle, is closed; the vehicle's, with its
    // session's stream open, stays.
    eventually("the idle app connection is closed", BOUND, || async {
        (server.stats().connections == 1).then_some(())
    })
    .await;
    assert_eq!(server.stats().sessions, 1, "the vehicle's session is untouched");
    // The app's next call reconnects by itself.
    app.get_vehicle(get).await.unwrap();
    beating.abort();
}
