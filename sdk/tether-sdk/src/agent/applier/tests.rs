//! Unit tests of the applier: guards in order, duplicates, actual state,
//! persistence before the report.

use std::sync::Mutex as StdMutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::future::BoxFuture;
use prost_types::Timestamp;
use tether_proto::state::v1::{Climate, Doors, VehicleState, Windows};
use tether_proto::vehicle::v1::{DesiredState, FieldMeta};

use super::*;
use crate::agent::RecordingCapability;
use crate::agent::guards::{Check, Precondition};

const MS: Duration = Duration::from_millis(1);

fn meta(path: &str, generation: u64) -> FieldMeta {
    FieldMeta { path: path.into(), generation, ..Default::default() }
}

fn snapshot(generation: u64, state: &VehicleState, fields: Vec<FieldMeta>) -> DesiredState {
    DesiredState { generation, state: Some(RawState::from_typed(state)), fields, server_time: None }
}

fn windows(front_left: u32) -> VehicleState {
    VehicleState { windows: Some(Windows { front_left: Some(front_left), ..Default::default() }), ..Default::default() }
}

struct Fixture {
    applier: Option<Applier>,
    applied: Arc<StdMutex<Vec<FieldChange>>>,
    events: broadcast::Receiver<AgentEvent>,
    shared: Arc<Shared>,
}

impl Fixture {
    fn new(last_applied: u64, store: Option<GenerationStore>) -> Self {
        let windows = RecordingCapability::new("windows");
        let applied = windows.applied();
        let mut caps: HashMap<String, Box<dyn Capability>> = HashMap::new();
        caps.insert("windows".into(), Box::new(windows));
        caps.insert("climate".into(), Box::new(Refusing));
        let not_full: Check = Arc::new(|c: &FieldChange| c.value.as_u32() != Some(100));
        let preconditions =
            HashMap::from([("windows".to_string(), vec![Precondition { name: "not_full".into(), check: not_full }])]);
        let guards = Guards::new(2000 * MS, 0, 500 * MS, HashMap::new(), preconditions);
        let (tx, events) = broadcast::channel(64);
        let shared = Arc::new(Shared::default());
        let applier = Applier::new(
            StateSchema::contract(),
            caps,
            guards,
            last_applied,
            RawState::default(),
            store,
            shared.clone(),
            tx,
        );
        Fixture { applier: Some(applier), applied, events, shared }
    }

    async fn handle(&mut self, desired: DesiredState) -> Report {
        let applier = self.applier.take().expect("fixture applier present");
        let (applier, report) = applier.handle(desired).await;
        self.applier = Some(applier);
        report
    }

    fn applied_paths(&self) -> Vec<String> {
        self.applied.lock().unwrap().iter().map(|c| format!("{}@{}", c.path, c.generation)).collect()
    }
}

/// Refuses everything, as a capability that tried and failed.
struct Refusing;

impl Capability for Refusing {
    fn name(&self) -> &str {
        "climate"
    }

    fn apply<'a>(&'a mut self, _change: &'a FieldChange) -> BoxFuture<'a, Result<(), Refusal>> {
        Box::pin(async { Err(Refusal::failed("compressor", "the compressor did not start")) })
    }
}

fn statuses(report: &Report) -> Vec<(String, FieldStatus, String)> {
    report
        .results
        .iter()
        .map(|r| (r.path.clone(), FieldStatus::try_from(r.status).unwrap(), r.reason.clone()))
        .collect()
}

#[tokio::test(start_paused = true)]
async fn applies_new_fields_and_reports_actual_state() {
    let mut f = Fixture::new(0, None);
    let report = f.handle(snapshot(3, &windows(40), vec![meta("windows.front_left", 3)])).await;
    assert_eq!(report.observed_generation, 3);
    assert_eq!(statuses(&report), [("windows.front_left".into(), FieldStatus::Applied, String::new())]);
    assert_eq!(report.actual.unwrap().decode_typed().unwrap(), windows(40));
    assert_eq!(f.applied_paths(), ["windows.front_left@3"]);
    assert_eq!(f.shared.last_applied.load(Ordering::Acquire), 3);
    assert_eq!(f.events.try_recv().unwrap(), AgentEvent::Applied { path: "windows.front_left".into(), generation: 3 });
}

#[tokio::test(start_paused = true)]
async fn duplicates_and_old_fields_apply_nothing() {
    let mut f = Fixture::new(5, None);
    // The whole snapshot is at or below the handled generation.
    let report = f.handle(snapshot(5, &windows(40), vec![meta("windows.front_left", 5)])).await;
    assert!(report.results.is_empty());
    assert_eq!(report.observed_generation, 5);
    // A newer snapshot re-lists an old field with a new one: only the new one applies.
    let state = VehicleState { doors: Some(Doors { lock: Some(1) }), ..windows(40) };
    let report = f.handle(snapshot(7, &state, vec![meta("windows.front_left", 4), meta("doors.lock", 7)])).await;
    assert_eq!(statuses(&report), [("doors.lock".into(), FieldStatus::Rejected, "unsupported".into())]);
    assert_eq!(report.observed_generation, 7);
    assert!(f.applied_paths().is_empty());
    // The same snapshot again: nothing.
    let report = f.handle(snapshot(7, &state, vec![meta("doors.lock", 7)])).await;
    assert!(report.results.is_empty());
}

#[tokio::test(start_paused = true)]
async fn guards_refuse_with_reasons_in_order() {
    let mut f = Fixture::new(0, None);
    // Expired long ago (beyond the 2 s allowance), and also failing the
    // precondition: expiry is checked first.
    let expired = FieldMeta {
        expires_at: Some(Timestamp::from(SystemTime::now() - Duration::from_secs(60))),
        ..meta("windows.front_left", 1)
    };
    let report = f.handle(snapshot(1, &windows(100), vec![expired])).await;
    assert_eq!(statuses(&report), [("windows.front_left".into(), FieldStatus::Expired, "expired_on_arrival".into())]);

    // Within the allowance: applied.
    let late = FieldMeta {
        expires_at: Some(Timestamp::from(SystemTime::now() - Duration::from_secs(1))),
        ..meta("windows.front_left", 2)
    };
    let report = f.handle(snapshot(2, &windows(10), vec![late])).await;
    assert_eq!(statuses(&report)[0].1, FieldStatus::Applied);

    // Precondition.
    tokio::time::advance(Duration::from_secs(1)).await;
    let report = f.handle(snapshot(3, &windows(100), vec![meta("windows.front_left", 3)])).await;
    assert_eq!(statuses(&report)[0].2, "precondition:not_full");

    // Rate limit: the last apply was 1 s ago; apply now, then again at once.
    let report = f.handle(snapshot(4, &windows(20), vec![meta("windows.front_left", 4)])).await;
    assert_eq!(statuses(&report)[0].1, FieldStatus::Applied);
    tokio::time::advance(100 * MS).await;
    let report = f.handle(snapshot(5, &windows(30), vec![meta("windows.front_left", 5)])).await;
    assert_eq!(statuses(&report)[0], ("windows.front_left".into(), FieldStatus::Rejected, "rate_limited".into()));

    // A capability's own refusal.
    let climate =
        VehicleState { climate: Some(Climate { on: Some(true), ..Default::default() }), ..Default::default() };
    let report = f.handle(snapshot(6, &climate, vec![meta("climate.on", 6)])).await;
    assert_eq!(statuses(&report), [("climate.on".into(), FieldStatus::Failed, "compressor".into())]);

    // Only the applied values are in the actual state.
    assert_eq!(f.applier.as_ref().unwrap().actual().decode_typed().unwrap(), windows(20));
    assert_eq!(f.applied_paths(), ["windows.front_left@2", "windows.front_left@4"]);
}

#[tokio::test(start_paused = true)]
async fn fields_of_one_snapshot_share_the_rate_limit() {
    let mut f = Fixture::new(0, None);
    let state = VehicleState {
        windows: Some(Windows { front_left: Some(0), rear_left: Some(0), ..Default::default() }),
        ..Default::default()
    };
    let report = f.handle(snapshot(1, &state, vec![meta("windows.front_left", 1), meta("windows.rear_left", 1)])).await;
    assert!(statuses(&report).iter().all(|s| s.1 == FieldStatus::Applied), "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn unknown_fields_are_unsupported_not_fatal() {
    let mut f = Fixture::new(0, None);
    // windows.front_left = 40 plus a top-level field 99 this schema lacks.
    let mut bytes = RawState::from_typed(&windows(40)).0.to_vec();
    bytes.extend_from_slice(&[0x98, 0x06, 0x07]);
    let desired = DesiredState {
        generation: 1,
        state: Some(RawState(bytes.into())),
        fields: vec![meta("teleport.enabled", 1), meta("windows.front_left", 1)],
        server_time: None,
    };
    let report = f.handle(desired).await;
    assert_eq!(
        statuses(&report),
        [
            ("teleport.enabled".into(), FieldStatus::Rejected, "unsupported".into()),
            ("windows.front_left".into(), FieldStatus::Applied, String::new()),
        ]
    );
}

#[tokio::test]
async fn persists_before_reporting() {
    let dir = tempfile::tempdir().unwrap();
    let store = GenerationStore::new(dir.path().into(), "car-1");
    let mut f = Fixture::new(0, Some(store.clone()));
    let report = f.handle(snapshot(9, &windows(40), vec![meta("windows.front_left", 9)])).await;
    assert_eq!(report.observed_generation, 9);
    assert_eq!(store.load().unwrap(), 9);
}

#[tokio::test]
async fn a_panicking_capability_fails_the_field() {
    struct Panicking;
    impl Capability for Panicking {
        fn name(&self) -> &str {
            "windows"
        }
        fn apply<'a>(&'a mut self, _change: &'a FieldChange) -> BoxFuture<'a, Result<(), Refusal>> {
            Box::pin(async { panic!("motor driver bug") })
        }
    }
    let mut caps: HashMap<String, Box<dyn Capability>> = HashMap::new();
    caps.insert("windows".into(), Box::new(Panicking));
    let guards = Guards::new(Duration::ZERO, 0, Duration::ZERO, HashMap::new(), HashMap::new());
    let (tx, _rx) = broadcast::channel(8);
    let applier = Applier::new(
        StateSchema::contract(),
        caps,
        guards,
        0,
        RawState::default(),
        None,
        Arc::new(Shared::default()),
        tx,
    );
    let (_, report) = applier.handle(snapshot(1, &windows(5), vec![meta("windows.front_left", 1)])).await;
    assert_eq!(report.results[0].status, FieldStatus::Failed as i32);
    assert!(report.results[0].message.contains("motor driver bug"));
}
