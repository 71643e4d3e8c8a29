//! Unit tests of the record's transitions.

use std::time::{Duration, SystemTime};

use prost::Message;
use tether_proto::StateSchema;
use tether_proto::state::v1::{Climate, VehicleState, Windows};

use super::*;

const LIMITS: KeyLimits = KeyLimits { window: Duration::from_secs(3600), max: 100 };

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + secs)
}

fn window(pct: u32) -> Vec<FieldValue> {
    let state =
        VehicleState { windows: Some(Windows { front_left: Some(pct), ..Default::default() }), ..Default::default() };
    StateSchema::contract().split(&state.encode_to_vec()).unwrap()
}

fn write(key: &str, fields: Vec<FieldValue>, expires_at: Option<SystemTime>) -> Write {
    let fingerprint = fields.iter().map(|f| f.encoded.len() as u64 + f.encoded[f.encoded.len() - 1] as u64).sum();
    Write {
        fields,
        fingerprint,
        expected_generation: None,
        expires_at,
        origin: Origin { subject: "app".into(), idempotency_key: key.into(), traceparent: String::new() },
    }
}

fn path() -> Arc<str> {
    "windows.front_left".into()
}

#[test]
fn latest_value_wins_and_older_writes_are_superseded() {
    let mut r = VehicleRecord::default();
    let a = r.write(write("a", window(100), Some(t(600))), t(0), LIMITS).unwrap();
    let b = r.write(write("b", window(50), Some(t(600))), t(1), LIMITS).unwrap();
    assert_eq!((a.generation, b.generation), (1, 2));
    assert_eq!(r.outcome(&path(), 1, t(1)).status, FieldStatus::Superseded);
    assert_eq!(r.outcome(&path(), 2, t(1)).status, FieldStatus::Pending);
    let snap = r.snapshot(t(2));
    assert_eq!(snap.generation, 2);
    assert_eq!(snap.fields.len(), 1);
    assert_eq!(snap.fields[0].generation, 2);
}

#[test]
fn repeating_a_value_in_flight_is_a_noop() {
    let mut r = VehicleRecord::default();
    for (i, key) in ["k1", "k2", "k3", "k4", "k5"].into_iter().enumerate() {
        let res = r.write(write(key, window(100), Some(t(600))), t(i as u64), LIMITS).unwrap();
        assert_eq!(res.generation, 1, "write {key}");
        assert_eq!(res.changed, i == 0);
    }
}

#[test]
fn idempotency_replays_and_refuses_a_different_request() {
    let mut r = VehicleRecord::default();
    let first = r.write(write("k", window(100), None), t(0), LIMITS).unwrap();
    r.write(write("other", window(10), None), t(1), LIMITS).unwrap();
    let again = r.write(write("k", window(100), None), t(2), LIMITS).unwrap();
    assert!(again.replayed);
    assert_eq!(again.generation, first.generation);
    assert_eq!(r.generation, 2, "a replay changes nothing");
    let err = r.write(write("k", window(42), None), t(3), LIMITS).unwrap_err();
    assert!(matches!(err, WriteError::KeyReused { .. }));
}

#[test]
fn expected_generation_mismatch_changes_nothing() {
    let mut r = VehicleRecord::default();
    r.write(write("a", window(1), None), t(0), LIMITS).unwrap();
    let mut w = write("b", window(2), None);
    w.expected_generation = Some(7);
    assert_eq!(r.write(w, t(1), LIMITS).unwrap_err(), WriteError::GenerationMismatch { expected: 7, actual: 1 });
    assert_eq!(r.generation, 1);
    assert_eq!(r.keys.len(), 1, "a refused write leaves no key behind");
}

#[test]
fn expired_fields_are_never_in_a_snapshot() {
    let mut r = VehicleRecord::default();
    r.write(write("a", window(100), Some(t(10))), t(0), LIMITS).unwrap();
    assert_eq!(r.next_expiry(), Some(t(10)));
    assert_eq!(r.outcome(&path(), 1, t(11)).status, FieldStatus::Expired);
    let snap = r.snapshot(t(11));
    assert!(snap.fields.is_empty());
    assert_eq!(r.desired[&path()].status, FieldStatus::Expired);
    assert_eq!(r.next_expiry(), None);
}

#[test]
fn ack_then_report_moves_to_applied_and_refusals_keep_their_reason() {
    let mut r = VehicleRecord::default();
    let mut fields = window(30);
    fields.extend(
        StateSchema::contract()
            .split(
                &VehicleState { climate: Some(Climate { on: Some(true), ..Default::default() }), ..Default::default() }
                    .encode_to_vec(),
            )
            .unwrap(),
    );
    r.write(write("a", fields.clone(), None), t(0), LIMITS).unwrap();
    assert!(r.acknowledge(1));
    assert_eq!(r.outcome(&path(), 1, t(1)).status, FieldStatus::Delivered);
    let results = vec![
        FieldReport {
            path: path(),
            generation: 1,
            status: FieldStatus::Applied,
            reason: "".into(),
            message: "".into(),
        },
        FieldReport {
            path: "climate.on".into(),
            generation: 1,
            status: FieldStatus::Rejected,
            reason: "precondition:parked".into(),
            message: "not parked".into(),
        },
    ];
    assert!(r.report(1, window(30), results));
    assert_eq!(r.outcome(&path(), 1, t(1)).status, FieldStatus::Applied);
    let refused = r.outcome(&"climate.on".into(), 1, t(1));
    assert_eq!((refused.status, refused.reason.as_str()), (FieldStatus::Rejected, "precondition:parked"));
    // A refused field is no longer desired.
    assert_eq!(r.snapshot(t(2)).fields.len(), 1);
    // Applied and matching the actual state: writing it again is a no-op.
    let again = r.write(write("b", window(30), None), t(3), LIMITS).unwrap();
    assert!(!again.changed);
}

#[test]
fn cancel_bumps_the_generation_and_drops_the_field() {
    let mut r = VehicleRecord::default();
    r.write(write("a", window(30), None), t(0), LIMITS).unwrap();
    let cancelled = r.cancel(None, t(1));
    assert_eq!(cancelled.len(), 1);
    assert_eq!(r.generation, 2);
    assert!(r.snapshot(t(1)).fields.is_empty());
    assert!(r.cancel(None, t(2)).is_empty(), "nothing left to cancel");
    assert_eq!(r.generation, 2);
}

#[test]
fn hello_settles_fields_whose_results_were_lost() {
    let mut r = VehicleRecord::default();
    r.write(write("a", window(30), None), t(0), LIMITS).unwrap();
    r.acknowledge(1);
    r.hello(1, window(30), vec![]);
    assert_eq!(r.outcome(&path(), 1, t(1)).status, FieldStatus::Applied);
    r.write(write("b", window(60), None), t(2), LIMITS).unwrap();
    r.hello(2, window(30), vec![]);
    assert_eq!(r.outcome(&path(), 2, t(3)).status, FieldStatus::Failed);
}

#[test]
fn results_re_sent_in_hello_give_the_true_outcome() {
    let mut r = VehicleRecord::default();
    r.write(write("a", window(30), None), t(0), LIMITS).unwrap();
    r.acknowledge(1);
    let refused = FieldReport {
        path: path(),
        generation: 1,
        status: FieldStatus::Rejected,
        reason: "precondition:parked".into(),
        message: String::new(),
    };
    r.hello(1, window(0), vec![refused.clone()]);
    let o = r.outcome(&path(), 1, t(1));
    assert_eq!((o.status, o.reason.as_str()), (FieldStatus::Rejected, "precondition:parked"));
    // Sent again in a later hello: already final, ignored.
    let mut applied = refused;
    applied.status = FieldStatus::Applied;
    r.hello(1, window(30), vec![applied]);
    assert_eq!(r.outcome(&path(), 1, t(2)).status, FieldStatus::Rejected);
}
