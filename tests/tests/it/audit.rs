//! The audit trail (issue 4, test 7): after a mix of accepted and refused
//! writes and cancels by several subjects, the vehicle's audit query returns
//! every one, newest first, with the right subject, values, key and outcome;
//! reading it needs `audit:read`; records age out after the retention.

use std::time::Duration;

use tether_cli::pki::DevSigner;
use tether_proto::app::v1::control_service_client::ControlServiceClient;
use tether_proto::app::v1::{
    AuditAction, AuditOutcome, AuditRecord, CancelDesiredRequest, ListAuditRecordsRequest, SetDesiredRequest,
};
use tether_proto::state::v1::{Climate, Doors, LockState, VehicleState};
use tether_tests::{BOUND, eventually};
use tonic::Code;
use tonic::transport::Channel;

use crate::auth::{AUDIENCE, ISSUER, bearer, hour, server_with_keys_and};
use crate::{set, window};

/// Every record of `vehicle`, newest first, `page_size` at a time.
async fn trail(
    app: &mut ControlServiceClient<Channel>,
    vehicle: &str,
    token: &str,
    page_size: u32,
) -> Result<Vec<AuditRecord>, tonic::Status> {
    let mut records = Vec::new();
    let mut page_token = String::new();
    loop {
        let request = ListAuditRecordsRequest { vehicle_id: vehicle.into(), page_size, page_token };
        let page = app.list_audit_records(bearer(request, token)).await?.into_inner();
        assert!(page.records.len() <= page_size as usize || page_size == 0);
        records.extend(page.records);
        if page.next_page_token.is_empty() {
            return Ok(records);
        }
        page_token = page.next_page_token;
    }
}

/// What a test expects of one record.
#[derive(Debug, PartialEq)]
struct Seen {
    subject: String,
    action: AuditAction,
    key: String,
    outcome: AuditOutcome,
    code: Code,
}

fn seen(r: &AuditRecord) -> Seen {
    Seen {
        subject: r.subject.clone(),
        action: AuditAction::try_from(r.action).unwrap(),
        key: r.idempotency_key.clone(),
        outcome: AuditOutcome::try_from(r.outcome).unwrap(),
        code: Code::from_i32(r.code),
    }
}

fn expect(subject: &str, action: AuditAction, key: &str, outcome: AuditOutcome, code: Code) -> Seen {
    Seen { subject: subject.into(), action, key: key.into(), outcome, code }
}

#[tokio::test]
async fn every_write_accepted_or_refused_is_in_the_vehicles_audit_trail() {
    let signer = DevSigner::new("k1", ISSUER, AUDIENCE).unwrap();
    let server = server_with_keys_and(&signer, |c| {
        // The flood below is soon limited; no other subject writes more than 4 times.
        c.subject_write_rate = 1;
        c.subject_write_burst = 4;
    })
    .await;
    let mut app = server.app().await;
    let token = |subject: &str, scopes: &str| signer.token(subject, scopes, hour()).unwrap();
    let climate_app = token("climate-app", "vehicles:read control:climate");
    let ops = token("ops", "vehicles:read vehicles:control");
    let other_car = token("car-2-app", "vehicles:control vehicle:car-2");
    let flooder = token("flooder", "vehicles:control");
    let auditor = token("auditor", "audit:read");

    let climate = VehicleState {
        climate: Some(Climate { on: Some(true), target_temperature_celsius: Some(21.5) }),
        ..Default::default()
    };
    let warmer = VehicleState {
        climate: Some(Climate { on: Some(true), target_temperature_celsius: Some(23.0) }),
        ..Default::default()
    };
    let unlock = VehicleState { doors: Some(Doors { lock: Some(LockState::Unlocked as i32) }), ..Default::default() };
    let write = |req: SetDesiredRequest, token: &str| bearer(req, token);

    // Accepted, then its retry replayed.
    let first = app.set_desired(write(set("car-1", "c-1", climate), &climate_app)).await.unwrap().into_inner();
    let replay = app.set_desired(write(set("car-1", "c-1", climate), &climate_app)).await.unwrap().into_inner();
    assert!(replay.replayed);
    // Refusals, each for its own reason; none changes anything.
    let refusals = [
        (write(set("car-1", "c-2", unlock), &climate_app), Code::PermissionDenied),
        (write(set("car-1", "o-1", window(140)), &ops), Code::InvalidArgument),
        (
            write(SetDesiredRequest { expected_generation: Some(99), ..set("car-1", "o-2", window(10)) }, &ops),
            Code::Aborted,
        ),
        (write(set("car-1", "c-1", warmer), &climate_app), Code::AlreadyExists),
        (write(SetDesiredRequest { require_online: true, ..set("car-1", "o-3", window(10)) }, &ops), Code::Unavailable),
        (write(set("car-1", "x-1", window(20)), &other_car), Code::PermissionDenied),
    ];
    for (request, code) in refusals {
        assert_eq!(app.set_desired(request).await.unwrap_err().code(), code);
    }
    // A flood: accepted until rate limited.
    let mut flood = Vec::new();
    for i in 0..50 {
        let key = format!("f-{i}");
        match app.set_desired(write(set("car-1", &key, window(30 + i)), &flooder)).await {
            Ok(response) => flood.push((key, response.into_inner().generation)),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
                flood.push((key, 0));
                break;
            }
        }
    }
    let (limited, _) = flood.pop().expect("the flood was limited");
    // A cancel, and a write without credentials (not recorded: no verified subject).
    let cancel = CancelDesiredRequest { vehicle_id: "car-1".into(), paths: vec!["windows.front_left".into()] };
    let cancelled = app.cancel_desired(bearer(cancel, &ops)).await.unwrap().into_inner();
    assert_eq!(app.set_desired(set("car-1", "anon", window(1))).await.unwrap_err().code(), Code::Unauthenticated);

    use AuditAction::{CancelDesired as Cancel, SetDesired as Set};
    use AuditOutcome::{Accepted, Refused, Replayed};
    let mut expected = vec![
        expect("climate-app", Set, "c-1", Accepted, Code::Ok),
        expect("climate-app", Set, "c-1", Replayed, Code::Ok),
        expect("climate-app", Set, "c-2", Refused, Code::PermissionDenied),
        expect("ops", Set, "o-1", Refused, Code::InvalidArgument),
        expect("ops", Set, "o-2", Refused, Code::Aborted),
        expect("climate-app", Set, "c-1", Refused, Code::AlreadyExists),
        expect("ops", Set, "o-3", Refused, Code::Unavailable),
        expect("car-2-app", Set, "x-1", Refused, Code::PermissionDenied),
    ];
    expected.extend(flood.iter().map(|(key, _)| expect("flooder", Set, key, Accepted, Code::Ok)));
    expected.push(expect("flooder", Set, &limited, Refused, Code::ResourceExhausted));
    expected.push(expect("ops", Cancel, "", Accepted, Code::Ok));
    expected.reverse();

    // Newest first, whole, whatever the page size.
    let records = trail(&mut app, "car-1", &auditor, 0).await.unwrap();
    assert_eq!(records.iter().map(seen).collect::<Vec<_>>(), expected);
    let paged = trail(&mut app, "car-1", &auditor, 3).await.unwrap();
    assert_eq!(paged, records, "pages of 3 give the same trail");
    assert!(records.windows(2).all(|w| w[0].sequence > w[1].sequence), "sequences fall, newest first");

    // What, when and the generations.
    let oldest = records.last().unwrap();
    let asked: VehicleState = oldest.patch.as_ref().unwrap().decode_typed().unwrap();
    assert_eq!(asked, climate);
    assert_eq!(oldest.paths, ["climate.on", "climate.target_temperature_celsius"]);
    assert_eq!(oldest.generation, first.generation);
    assert!(oldest.recorded_at.is_some());
    assert_eq!(records[records.len() - 2].generation, replay.generation);
    let by_key = |key: &str| records.iter().find(|r| r.idempotency_key == key).unwrap();
    assert!(flood.iter().all(|(key, generation)| by_key(key).generation == *generation));
    assert!(by_key("o-1").message.contains("windows.front_left"), "{}", by_key("o-1").message);
    assert!(by_key("c-2").message.contains("control:doors"), "{}", by_key("c-2").message);
    assert_eq!(by_key("o-2").expected_generation, Some(99));
    assert!(by_key("o-3").require_online);
    assert!(by_key(&limited).message.contains("rate limit"), "{}", by_key(&limited).message);
    assert_eq!(records[0].paths, ["windows.front_left"]);
    assert_eq!(records[0].generation, cancelled.generation);

    // Reading the trail needs audit:read, within the vehicle scopes.
    let err = trail(&mut app, "car-1", &ops, 0).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("audit:read"), "{}", err.message());
    let fleet_auditor = token("eu-auditor", "audit:read fleet:eu-");
    assert_eq!(trail(&mut app, "car-1", &fleet_auditor, 0).await.unwrap_err().code(), Code::PermissionDenied);
    // Another vehicle's trail is its own; bad arguments are named.
    assert!(trail(&mut app, "car-2", &auditor, 0).await.unwrap().is_empty());
    let bad = ListAuditRecordsRequest { vehicle_id: "car-1".into(), page_size: 1001, ..Default::default() };
    assert_eq!(app.list_audit_records(bearer(bad, &auditor)).await.unwrap_err().code(), Code::InvalidArgument);
    let bad =
        ListAuditRecordsRequest { vehicle_id: "car-1".into(), page_token: "garbage".into(), ..Default::default() };
    assert_eq!(app.list_audit_records(bearer(bad, &auditor)).await.unwrap_err().code(), Code::InvalidArgument);
    server.shutdown().await;
}

#[tokio::test]
async fn audit_records_age_out_after_the_retention() {
    let signer = DevSigner::new("k1", ISSUER, AUDIENCE).unwrap();
    let server = server_with_keys_and(&signer, |c| c.audit_retention = Duration::from_secs(3)).await;
    let mut app = server.app().await;
    let writer = signer.token("ops", "vehicles:control", hour()).unwrap();
    let auditor = signer.token("auditor", "audit:read", hour()).unwrap();
    app.set_desired(bearer(set("car-1", "k-1", window(10)), &writer)).await.unwrap();
    assert_eq!(trail(&mut app, "car-1", &auditor, 0).await.unwrap().len(), 1);
    // Pruned within a tenth of the retention after it passes.
    eventually("the record ages out", BOUND, || {
        let mut app = app.clone();
        let auditor = auditor.clone();
        async move { trail(&mut app, "car-1", &auditor, 0).await.unwrap().is_empty().then_some(()) }
    })
    .await;
    // The desired state itself is untouched.
    let vehicle = app
        .get_vehicle(bearer(
            tether_proto::app::v1::GetVehicleRequest { vehicle_id: "car-1".into() },
            &signer.token("r", "vehicles:read", hour()).unwrap(),
        ))
        .await
        .unwrap();
    assert_eq!(vehicle.into_inner().generation, 1);
    server.shutdown().await;
}
