//! App authentication and authorization with real tokens (ES256 JWTs from a
//! JWKS): who may call, and what each scope allows. A refusal changes nothing.

use std::time::{Duration, SystemTime};

use tether_cli::pki::DevSigner;
use tether_proto::admin::v1::GetServerStatsRequest;
use tether_proto::admin::v1::admin_service_client::AdminServiceClient;
use tether_proto::app::v1::control_service_client::ControlServiceClient;
use tether_proto::app::v1::{GetVehicleRequest, WatchVehicleRequest};
use tether_proto::state::v1::{Climate, Doors, LockState, VehicleState};
use tether_tests::{BOUND, TestServer};
use tonic::transport::Channel;
use tonic::{Code, Request};

use crate::{set, window};

pub(crate) const ISSUER: &str = "https://issuer.test";
pub(crate) const AUDIENCE: &str = "tetherd-test";

/// A server verifying tokens against `signer`'s JWKS (kept in the server's
/// own scratch directory).
pub(crate) async fn server_with_keys(signer: &DevSigner) -> TestServer {
    server_with_keys_and(signer, |_| {}).await
}

/// [`server_with_keys`] with `more` settings.
pub(crate) async fn server_with_keys_and(signer: &DevSigner, more: impl FnOnce(&mut tetherd::Config)) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &signer.jwks).unwrap();
    TestServer::start_with(move |c| {
        c.jwks = Some(jwks);
        c.jwt_issuer = Some(ISSUER.into());
        c.jwt_audience = Some(AUDIENCE.into());
        more(c);
    })
    .await
    .keeping(dir)
}

pub(crate) fn bearer<T>(message: T, token: &str) -> Request<T> {
    let mut req = Request::new(message);
    req.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    req
}

pub(crate) fn hour() -> Duration {
    Duration::from_secs(3600)
}

async fn get(
    app: &mut ControlServiceClient<Channel>,
    vehicle: &str,
    token: &str,
) -> Result<VehicleState, tonic::Status> {
    let v = app.get_vehicle(bearer(GetVehicleRequest { vehicle_id: vehicle.into() }, token)).await?.into_inner();
    Ok(v.desired.unwrap().decode_typed().unwrap())
}

#[tokio::test]
async fn tokens_are_verified_and_scopes_limit_fields_and_vehicles() {
    let signer = DevSigner::new("k1", ISSUER, AUDIENCE).unwrap();
    let server = server_with_keys(&signer).await;
    let mut app = server.app().await;
    let admin = signer.token("ops", "vehicles:read vehicles:control admin:read", hour()).unwrap();

    // Missing, forged, for someone else, expired, unknown key: UNAUTHENTICATED.
    let err = app.set_desired(set("car-1", "k0", window(10))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("missing credentials"), "{}", err.message());
    let forger = DevSigner::new("k1", ISSUER, AUDIENCE).unwrap();
    let stranger = DevSigner::new("k9", ISSUER, AUDIENCE).unwrap();
    let now = SystemTime::now();
    let cases = [
        ("bad signature", forger.token("ops", "vehicles:control", hour()).unwrap()),
        ("wrong audience", signer.token_until("ops", "vehicles:control", now + hour(), "another-api").unwrap()),
        ("expired", signer.token_until("ops", "vehicles:control", now - Duration::from_secs(60), AUDIENCE).unwrap()),
        ("unknown key id", stranger.token("ops", "vehicles:control", hour()).unwrap()),
        ("not a token", "garbage".to_string()),
    ];
    for (what, token) in cases {
        let err = app.set_desired(bearer(set("car-1", "k1", window(10)), &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }
    assert_eq!(
        app.get_vehicle(bearer(GetVehicleRequest { vehicle_id: "car-1".into() }, &admin)).await.unwrap_err().code(),
        Code::NotFound,
        "nothing was created by refused writes"
    );

    // A valid token works, and the write records who made it.
    let control = signer.token("climate-app", "vehicles:read control:climate", hour()).unwrap();
    let climate = VehicleState {
        climate: Some(Climate { on: Some(true), target_temperature_celsius: Some(21.0) }),
        ..Default::default()
    };
    app.set_desired(bearer(set("car-1", "k2", climate), &control)).await.unwrap();
    let view = app.get_vehicle(bearer(GetVehicleRequest { vehicle_id: "car-1".into() }, &control)).await.unwrap();
    assert!(view.get_ref().fields.iter().all(|f| f.set_by == "climate-app"));

    // control:climate may not unlock the doors; nothing changes.
    let unlock = VehicleState { doors: Some(Doors { lock: Some(LockState::Unlocked as i32) }), ..Default::default() };
    let err = app.set_desired(bearer(set("car-1", "k3", unlock), &control)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("control:doors"), "{}", err.message());
    // A patch mixing an allowed and a forbidden field is refused whole.
    let mut mixed = unlock;
    mixed.climate = Some(Climate { on: Some(false), ..Default::default() });
    assert_eq!(
        app.set_desired(bearer(set("car-1", "k4", mixed), &control)).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(get(&mut app, "car-1", &admin).await.unwrap(), climate, "nothing changed");

    // Vehicle limits: vehicle:car-1 may not touch car-2.
    let one_car = signer.token("car-1-app", "vehicles:read vehicles:control vehicle:car-1", hour()).unwrap();
    let err = app.set_desired(bearer(set("car-2", "k5", window(5)), &one_car)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("car-2"), "{}", err.message());
    app.set_desired(bearer(set("car-1", "k6", window(5)), &one_car)).await.unwrap();

    // Read-only may read, not write; admin statistics need admin:read.
    let reader = signer.token("dashboard", "vehicles:read", hour()).unwrap();
    assert!(get(&mut app, "car-1", &reader).await.is_ok());
    let err = app.set_desired(bearer(set("car-1", "k7", window(50)), &reader)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let mut admin_api = AdminServiceClient::new(server.channel().await);
    let err = admin_api.get_server_stats(bearer(GetServerStatsRequest {}, &reader)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    admin_api.get_server_stats(bearer(GetServerStatsRequest {}, &admin)).await.unwrap();
}

#[tokio::test]
async fn a_token_not_valid_yet_or_issued_in_the_future_is_refused() {
    let signer = DevSigner::new("k1", ISSUER, AUDIENCE).unwrap();
    // The real binary, verifying tokens against the signer's JWKS.
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &signer.jwks).unwrap();
    let binary = std::path::PathBuf::from(env!("CARGO_BIN_EXE_tetherd-under-test"));
    let args = ["--jwks", jwks.to_str().unwrap(), "--jwt-issuer", ISSUER, "--jwt-audience", AUDIENCE];
    let server = tether_tests::ChildServer::start_with_args(&binary, &dir.path().join("data"), None, &args).await;
    let mut app = ControlServiceClient::new(tether_tests::channel(&server.url()).await);
    let now = SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let token = |claims| signer.token_with_claims("ops", "vehicles:read vehicles:control", claims).unwrap();
    let refused = [
        ("nbf an hour ahead", token(serde_json::json!({ "nbf": now + 3600 })), "not valid yet"),
        ("nbf beyond the 5 s leeway", token(serde_json::json!({ "nbf": now + 30 })), "not valid yet"),
        ("iat an hour ahead", token(serde_json::json!({ "iat": now + 3600 })), "issued in the future"),
    ];
    for (what, token, says) in refused {
        let err = app.set_desired(bearer(set("car-1", "k1", window(10)), &token)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
        assert!(err.message().contains(says), "{what}: {}", err.message());
    }
    let admin = signer.token("ops", "vehicles:read", hour()).unwrap();
    let err = app.get_vehicle(bearer(GetVehicleRequest { vehicle_id: "car-1".into() }, &admin)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "no refused token changed anything");
    // Within the leeway, and in the past, both are fine.
    let fine = [
        token(serde_json::json!({ "nbf": now + 2, "iat": now + 2 })),
        token(serde_json::json!({ "nbf": now - 60, "iat": now - 60 })),
    ];
    for (i, token) in fine.iter().enumerate() {
        app.set_desired(bearer(set("car-1", &format!("ok{i}"), window(10)), token)).await.unwrap();
    }
}

#[tokio::test]
async fn a_watch_outlives_its_token_and_resumes_with_a_fresh_one_missing_nothing() {
    let signer = DevSigner::new("k1", ISSUER, AUDIENCE).unwrap();
    let server = server_with_keys(&signer).await;
    let mut app = server.app().await;
    let writer = signer.token("writer", "vehicles:read vehicles:control", hour()).unwrap();
    app.set_desired(bearer(set("car-w", "w1", window(10)), &writer)).await.unwrap();

    let short = signer.token("watcher", "vehicles:read", Duration::from_secs(2)).unwrap();
    let watch = WatchVehicleRequest { vehicle_id: "car-w".into(), from_generation: 0 };
    let mut stream = app.watch_vehicle(bearer(watch, &short)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let seen = first.vehicle.unwrap().generation;
    // The token expires: the stream ends UNAUTHENTICATED.
    let ended = tokio::time::timeout(BOUND, async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the watch ends when its token does");
    assert_eq!(ended.code(), Code::Unauthenticated);

    // A change lands while the watcher is away; resuming with a fresh token
    // from the last generation seen shows it.
    app.set_desired(bearer(set("car-w", "w2", window(90)), &writer)).await.unwrap();
    let fresh = signer.token("watcher", "vehicles:read", hour()).unwrap();
    let watch = WatchVehicleRequest { vehicle_id: "car-w".into(), from_generation: seen };
    let mut stream = app.watch_vehicle(bearer(watch, &fresh)).await.unwrap().into_inner();
    let resumed = stream.message().await.unwrap().unwrap();
    assert!(!resumed.resumed, "the first event says something changed since generation {seen}");
    let vehicle = resumed.vehicle.unwrap();
    assert!(vehicle.generation > seen);
    assert_eq!(vehicle.desired.unwrap().decode_typed().unwrap(), window(90));
}

#[tokio::test]
async fn a_flooding_subject_is_limited_while_another_writes_freely() {
    let signer = DevSigner::new("k1", ISSUER, AUDIENCE).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let jwks = dir.path().join("jwks.json");
    std::fs::write(&jwks, &signer.jwks).unwrap();
    let server = TestServer::start_with(move |c| {
        c.jwks = Some(jwks);
        c.jwt_issuer = Some(ISSUER.into());
        c.jwt_audience = Some(AUDIENCE.into());
        c.subject_write_rate = 5;
        c.subject_write_burst = 10;
        c.vehicle_write_rate = 1000;
        c.vehicle_write_burst = 1000;
    })
    .await
    .keeping(dir);
    let mut app = server.app().await;
    let flooder = signer.token("flooder", "vehicles:control vehicles:read", hour()).unwrap();
    let calm = signer.token("calm", "vehicles:control vehicles:read", hour()).unwrap();

    let (mut accepted, mut limited) = (0, 0);
    for i in 0..40u32 {
        match app.set_desired(bearer(set("car-flood", &format!("f{i}"), window(i % 100)), &flooder)).await {
            Ok(_) => accepted += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                assert!(status.message().contains("\"flooder\"") && status.message().contains("retry after"));
                let pushback = status.metadata().get("grpc-retry-pushback-ms").expect("a retry hint");
                assert!(pushback.to_str().unwrap().parse::<u64>().unwrap() > 0);
                limited += 1;
                // Meanwhile another subject's writes (a few, within its own
                // limit) to another vehicle succeed.
                if limited <= 3 {
                    let key = format!("c{i}");
                    app.set_desired(bearer(set("car-calm", &key, window(i % 100)), &calm)).await.unwrap();
                }
            }
        }
    }
    assert!(limited > 0, "the flood was limited");
    assert!(accepted >= 10, "the burst passed: {accepted}");
    // Refused writes changed nothing: the vehicle's generation counts the accepted ones only.
    let v = app.get_vehicle(bearer(GetVehicleRequest { vehicle_id: "car-flood".into() }, &calm)).await.unwrap();
    assert!(v.get_ref().generation <= accepted, "{} > {accepted}", v.get_ref().generation);
}

#[tokio::test]
async fn a_vehicle_is_protected_from_all_subjects_together() {
    let server = TestServer::start_with(|c| {
        c.vehicle_write_rate = 1;
        c.vehicle_write_burst = 3;
    })
    .await;
    let mut app = server.app().await;
    for i in 0..3 {
        app.set_desired(set("car-v", &format!("v{i}"), window(i * 10))).await.unwrap();
    }
    // The burst is spent; one token comes back per second, so a slow machine
    // may pass a write or two more before one is refused.
    let mut err = None;
    for i in 3..10 {
        if let Err(status) = app.set_desired(set("car-v", &format!("v{i}"), window(90 + i))).await {
            err = Some(status);
            break;
        }
    }
    let err = err.expect("a write beyond the burst is refused");
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("vehicle \"car-v\""), "{}", err.message());
    // Another vehicle is not affected.
    app.set_desired(set("car-other", "o1", window(1))).await.unwrap();
}

#[tokio::test]
async fn the_sdk_watch_outlives_short_tokens_and_misses_no_change() {
    use futures::StreamExt;
    use tether_sdk::{Client, Patch, Window};

    let signer = std::sync::Arc::new(DevSigner::new("k1", ISSUER, AUDIENCE).unwrap());
    let server = server_with_keys(&signer).await;
    // Every token this app gets lives one second.
    let source = {
        let signer = signer.clone();
        move || signer.token("watcher-app", "vehicles:read vehicles:control", Duration::from_secs(1)).unwrap()
    };
    let client = Client::connect(server.url()).await.unwrap().with_token_source(source);
    client.set_desired("car-t", Patch::new().window(Window::FrontLeft, 1)).await.unwrap();
    let mut watch = client.watch("car-t", 0).await.unwrap();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.vehicle.unwrap().generation, 1);

    // Write across several token lifetimes; the stream shows every generation
    // reached, without an error, although each watch call's token expires.
    let mut last = 1;
    for pct in [20u32, 40, 60] {
        tokio::time::sleep(Duration::from_millis(1200)).await; // let the current token expire
        let out = client.set_desired("car-t", Patch::new().window(Window::FrontLeft, pct)).await.unwrap();
        let reached = tokio::time::timeout(BOUND, async {
            loop {
                let event = watch.next().await.expect("the watch goes on").expect("no error surfaces");
                let generation = event.vehicle.unwrap().generation;
                if generation >= out.generation {
                    return generation;
                }
            }
        })
        .await
        .expect("the change arrives");
        assert!(reached > last);
        last = reached;
    }
}
