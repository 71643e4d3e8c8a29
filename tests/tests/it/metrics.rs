//! The Prometheus endpoint after a scripted scenario: connect 3 vehicles,
//! supersede one, time one out, apply 5 writes, expire 1; then scrape the
//! admin port and check each value.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use tether_proto::vehicle::v1::{GoodbyeReason, Hello, server_message};
use tether_sdk::{AgentEvent, Client, Patch, RecordingCapability, WaitLevel, Window};
use tether_tests::{BOUND, RawVehicle, TestServer, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::command_path::event;

/// `GET /metrics` over HTTP/1.0, as the simplest scraper does.
pub(crate) async fn scrape(admin: SocketAddr) -> String {
    let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin port");
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: tetherd\r\n\r\n").await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(BOUND, stream.read_to_string(&mut response)).await.expect("answered").unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    assert!(head.starts_with("HTTP/1.0 200"), "{head}");
    assert!(head.to_ascii_lowercase().contains("content-type: text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// Samples by name with labels (`name{label="v"}`), as numbers.
pub(crate) fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').expect("name value");
            (name.to_string(), value.parse().unwrap_or_else(|_| panic!("a number in {l}")))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_scripted_scenario() {
    // The counts below are exact: only car-3, which never beats, may time
    // out (after 10 x 200 ms), not a session whose heartbeat a loaded
    // machine delayed.
    let server = TestServer::start_with(|c| c.heartbeat_misses = 10).await;
    let admin = server.admin_addr();
    let client = Client::connect(server.url()).await.unwrap();

    // Three vehicles: an agent that applies, and two raw sessions.
    let agent = tether_sdk::Agent::builder(server.url(), "car-1")
        .capability(RecordingCapability::new("windows"))
        .rate_limit("windows", Duration::ZERO)
        .spawn();
    let mut events = agent.events();
    event(&mut events, |e| matches!(e, AgentEvent::Connected { .. })).await;
    let (mut car2, _) = RawVehicle::connect(server.channel().await, "car-2", 0).await;
    let (_car3, _) = RawVehicle::connect(server.channel().await, "car-3", 0).await;

    // Supersede car-2; the new session keeps beating.
    let (car2b, _) = RawVehicle::connect(server.channel().await, "car-2", 0).await;
    let Some(server_message::Kind::Goodbye(bye)) = car2.next_non_heartbeat().await else { panic!("a goodbye") };
    assert_eq!(bye.reason, GoodbyeReason::Superseded as i32);
    let beating = tokio::spawn(async move {
        for sequence in 1.. {
            car2b.heartbeat(sequence).await;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });

    // car-3 never beats: it times out (10 × 200 ms).
    eventually("car-3 times out", BOUND, || async { (server.stats().sessions_timed_out == 1).then_some(()) }).await;

    // Five writes applied by car-1.
    for i in 1..=5u32 {
        let outcome =
            client.set_desired("car-1", Patch::new().window(Window::FrontLeft, i * 10)).wait(WaitLevel::Applied).await;
        assert_eq!(outcome.unwrap().fields[0].status, tether_sdk::FieldStatus::Applied);
    }
    // One write to a vehicle that never comes: it expires.
    client
        .set_desired("car-away", Patch::new().window(Window::FrontLeft, 50))
        .ttl(Duration::from_millis(200))
        .await
        .unwrap();
    // And two refusals: a malformed vehicle id at handshake, an invalid write.
    let hello = Hello { vehicle_id: "not a valid id".into(), ..Default::default() };
    let mut bad = RawVehicle::open(server.channel().await, hello).await.unwrap();
    assert!(bad.rx.message().await.is_err());
    let mut app = server.app().await;
    assert!(app.set_desired(crate::set("car-1", "", crate::window(1))).await.is_err(), "empty key");

    let m = eventually("the expiry is counted", BOUND, || async {
        let m = samples(&scrape(admin).await);
        (m["tether_field_outcomes_total{outcome=\"expired\"}"] == 1.0).then_some(m)
    })
    .await;
    let expect = |name: &str, value: f64| assert_eq!(m.get(name), Some(&value), "{name}");
    expect("tether_connected_vehicles", 2.0);
    expect("tether_vehicles", 4.0);
    expect("tether_sessions_opened_total", 4.0);
    expect("tether_sessions_superseded_total", 1.0);
    expect("tether_sessions_timed_out_total", 1.0);
    expect("tether_writes_total{outcome=\"accepted\"}", 6.0);
    expect("tether_writes_total{outcome=\"invalid\"}", 1.0);
    expect("tether_writes_total{outcome=\"refused_by_auth\"}", 0.0);
    expect("tether_field_outcomes_total{outcome=\"delivered\"}", 5.0);
    expect("tether_field_outcomes_total{outcome=\"applied\"}", 5.0);
    expect("tether_field_outcomes_total{outcome=\"rejected\"}", 0.0);
    expect("tether_field_outcomes_total{outcome=\"failed\"}", 0.0);
    expect("tether_pending_desired_fields", 0.0);
    expect("tether_set_to_delivered_seconds_count", 5.0);
    expect("tether_set_to_applied_seconds_count", 5.0);
    expect("tether_set_to_applied_seconds_bucket{le=\"+Inf\"}", 5.0);
    expect("tether_handshake_failures_total{reason=\"invalid_vehicle_id\"}", 1.0);
    expect("tether_handshake_failures_total{reason=\"timeout\"}", 0.0);
    assert!(m["tether_set_to_applied_seconds_sum"] > 0.0);
    assert!(m["tether_heartbeat_misses_total"] >= 2.0, "car-3 missed beats before its timeout");
    assert!(m["tether_bytes_received_total"] > 0.0 && m["tether_bytes_sent_total"] > 0.0);

    beating.abort();
    agent.shutdown().await;
    server.shutdown().await;
}

/// `GET /metrics` with an optional bearer token: the status line and body.
async fn get_metrics(admin: SocketAddr, token: Option<&str>) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(admin).await.expect("admin port");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    stream.write_all(format!("GET /metrics HTTP/1.0\r\nHost: tetherd\r\n{auth}\r\n").as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(BOUND, stream.read_to_string(&mut response)).await.expect("answered").unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("a response");
    (head.lines().next().unwrap_or_default().to_string(), body.to_string())
}

#[tokio::test]
async fn the_admin_port_off_loopback_needs_a_token_or_an_explicit_opt_out() {
    // Off loopback without a token: tetherd refuses to start, in one line.
    let stderr = crate::refused_start(&["--listen", "127.0.0.1:0", "--admin-listen", "0.0.0.0:0"]).await;
    assert!(stderr.contains("0.0.0.0:0") && stderr.contains("--admin-token-file"), "{stderr}");
    assert!(stderr.contains("--admin-allow-unauthenticated"), "names the opt-out: {stderr}");
    let dir = tempfile::tempdir().unwrap();

    // With a token, on every address: no token or a wrong one is 401.
    let token = "s3cret-admin-token-0123456789";
    let token_file = dir.path().join("admin.token");
    std::fs::write(&token_file, format!("{token}\n")).unwrap();
    let server = TestServer::start_with(|c| {
        c.admin_listen = tetherd::config::OptionalAddr(Some("0.0.0.0:0".parse().unwrap()));
        c.admin_token_file = Some(token_file);
    })
    .await;
    let admin = SocketAddr::from(([127, 0, 0, 1], server.admin_addr().port()));
    for wrong in [None, Some("s3cret-admin-token-012345678"), Some("s3cret-admin-token-0123456789x")] {
        let (status, body) = get_metrics(admin, wrong).await;
        assert!(status.starts_with("HTTP/1.0 401"), "{wrong:?}: {status}");
        assert!(!body.contains("tether_"), "no metrics without the token");
    }
    let (status, body) = get_metrics(admin, Some(token)).await;
    assert!(status.starts_with("HTTP/1.0 200"), "{status}");
    assert!(body.contains("tether_connected_vehicles"), "{body}");
    server.shutdown().await;

    // A token too short to be one is refused at start.
    let short = dir.path().join("short.token");
    std::fs::write(&short, "abc").unwrap();
    let short = short.to_str().unwrap();
    let stderr = crate::refused_start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token-file",
        short,
    ])
    .await;
    assert!(stderr.contains("at least 16"), "{stderr}");
}
