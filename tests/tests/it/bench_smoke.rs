//! The scenarios of `tether-bench` (issue 6) at a small scale, so they
//! keep working: 200 applying vehicles, about 2 s per phase, against the
//! real tetherd. Asserts correctness only (every write reached APPLIED, every
//! vehicle reported it); never a time. The baseline echo runs in this
//! process here (a test binary cannot re-run itself as the server).

use std::time::Duration;

use tether_examples::bench::TetherdOptions;
use tether_examples::bench::baseline::{Baseline, BaselineOptions};
use tether_examples::bench::lean_vehicle::LeanVehicle;
use tether_examples::bench::writes::{self, FanOutConfig, MaxThroughputConfig, WriteRateConfig, WriteSetup};

const VEHICLES: usize = 200;

fn tetherd() -> TetherdOptions {
    TetherdOptions { path: env!("CARGO_BIN_EXE_tetherd-under-test").into(), log: "warn".into(), args: Vec::new() }
}

fn setup(per_connection: usize) -> WriteSetup {
    let mut setup = WriteSetup::new(VEHICLES);
    setup.fleet.per_connection = per_connection;
    setup.fleet.source_addresses = 4;
    setup.channels = 2;
    setup
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_rate_applies_every_write_and_measures_the_baseline() {
    let config = WriteRateConfig {
        setup: setup(1),
        rate: 100.0,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(500),
        rounds: 2,
    };
    let report = writes::write_rate(&tetherd(), &BaselineOptions::InProcess, &config).await.expect("write-rate runs");
    let (tether, base) = (&report.tetherd.load, &report.baseline.load);
    // Two rounds of 1 s each per server, summed.
    assert_eq!(report.rounds.len(), 2);
    assert!(report.rounds[0].baseline_first && !report.rounds[1].baseline_first);
    assert_eq!(tether.writes, 200);
    assert_eq!((tether.reached, tether.errors, tether.not_reached), (200, 0, 0), "{tether:?}");
    assert_eq!((base.reached, base.errors), (200, 0), "{base:?}");
    // Warm-up (50) and measured (200) writes, one field each, all applied in the vehicles.
    assert_eq!(report.vehicle_fields_applied, 250);
    // Every write's latency splits where its snapshot reached the vehicle
    // (one write per vehicle at a time here); the baseline has no vehicle.
    let split = tether.split.as_ref().expect("tetherd's latency is split");
    assert_eq!(split.writes, 200, "{split:?}");
    assert!(base.split.is_none());
    assert!(report.tetherd.server.is_some(), "tetherd's CPU and RSS are read");
    assert!(serde_json::to_string(&report).unwrap().starts_with("{\"scenario\":\"write-rate\""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_throughput_applies_every_write() {
    let config = MaxThroughputConfig {
        setup: setup(1),
        concurrency: 16,
        duration: Duration::from_secs(2),
        warmup: Duration::from_millis(300),
        rounds: 2,
    };
    let report =
        writes::max_throughput(&tetherd(), &BaselineOptions::InProcess, &config).await.expect("max-throughput runs");
    let (tether, base) = (&report.tetherd.load, &report.baseline.load);
    assert!(tether.writes > 0 && base.writes > 0);
    assert_eq!(report.rounds.len(), 2);
    assert!(report.rounds.iter().all(|r| r.tetherd_writes_per_second > 0.0 && r.baseline_writes_per_second > 0.0));
    assert_eq!((tether.reached, tether.errors, tether.not_reached), (tether.writes, 0, 0), "{tether:?}");
    assert_eq!((base.reached, base.errors), (base.writes, 0), "{base:?}");
    // Every measured write was applied in a vehicle (warm-up writes too).
    assert!(report.vehicle_fields_applied >= tether.writes, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_reaches_every_vehicle_over_shared_connections() {
    // 20 vehicles per connection: the multiplexed path.
    let config = FanOutConfig { setup: setup(20), concurrency: 64 };
    let report = writes::fan_out(&tetherd(), &config).await.expect("fan-out runs");
    assert_eq!(report.connections, VEHICLES / 20);
    assert_eq!(report.vehicles_reached, VEHICLES);
    assert_eq!((report.load.reached, report.load.errors, report.load.not_reached), (VEHICLES as u64, 0, 0));
}

#[tokio::test]
async fn the_baseline_echoes_a_vehicle_session() {
    let baseline = Baseline::start(&BaselineOptions::InProcess).await.expect("baseline starts");
    let vehicle = LeanVehicle::connect(&baseline.url(), None, None, "echo-1".into()).await.expect("Hello → Welcome");
    assert_eq!(vehicle.session_id(), 1);
    drop(vehicle);
    baseline.stop().await.expect("baseline stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_holds_every_idle_vehicle_on_tetherd_and_the_baseline() {
    use tether_examples::bench::tls::{self, TlsConfig};
    // Plaintext and mTLS (a certificate per vehicle), each on tetherd and on
    // the raw tonic echo: every vehicle reads its Welcome and stays.
    let config = TlsConfig {
        vehicles: 50,
        concurrency: 20,
        source_addresses: 2,
        settle: Duration::ZERO,
        baseline: BaselineOptions::InProcess,
    };
    let report = tls::run(&tetherd(), &config).await.expect("tls runs");
    for run in [&report.plaintext, &report.mtls, &report.baseline_plaintext, &report.baseline_mtls] {
        assert_eq!((run.vehicles, run.sessions, run.retries), (50, 50, 0), "{run:?}");
    }
    for run in [&report.plaintext, &report.mtls] {
        assert_eq!((run.server, run.connections), ("tetherd", Some(51)), "{run:?}");
    }
    for run in [&report.baseline_plaintext, &report.baseline_mtls] {
        assert_eq!((run.server, run.connections), ("baseline", None), "{run:?}");
    }
    assert_eq!((report.plaintext.security, report.baseline_mtls.security), ("plaintext", "mtls"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_storm_brings_every_vehicle_back_resynced() {
    use tether_examples::bench::Restart;
    use tether_examples::bench::reconnect_storm::{self, ReconnectStormConfig};
    // mTLS with a certificate per agent, after a crash and after a drain.
    for restart in [Restart::Kill, Restart::Term] {
        let config = ReconnectStormConfig { vehicles: 50, tls: true, restart, source_addresses: 4 };
        let report = reconnect_storm::run(&tetherd(), &config).await.expect("reconnect-storm runs");
        assert_eq!(report.writes, 50, "{report:?}");
        assert!(report.sessions_after_restart >= 50, "{report:?}");
        assert!(report.reconnected_seconds <= report.resynced_seconds, "{report:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_sockets_leave_room_for_every_new_vehicle() {
    use tether_examples::bench::silent_sockets::{self, SilentSocketsConfig};
    // tetherd closes a silent socket after 1 s here (5 s by default), so the
    // attacker re-opens every one within the attacked phase's 2 s of writes.
    let mut options = tetherd();
    options.args.extend(["--preface-timeout".into(), "1s".into()]);
    let config = SilentSocketsConfig {
        vehicles: 20,
        new_vehicles: 20,
        connect_concurrency: 10,
        silent: 300,
        source_addresses: 4,
        rate: 50.0,
        duration: Duration::from_secs(2),
        warmup: Duration::ZERO,
        channels: 1,
        max_connections: None,
    };
    let report = silent_sockets::run(&options, &config).await.expect("silent-sockets runs");
    for phase in [&report.quiet, &report.attacked] {
        let arrivals = &phase.new_vehicles;
        assert_eq!((arrivals.attempted, arrivals.connected, arrivals.failed), (20, 20, 0), "{arrivals:?}");
        let load = &phase.load;
        assert_eq!((load.writes, load.reached, load.errors, load.not_reached), (100, 100, 0, 0), "{load:?}");
    }
    let silent = &report.silent;
    assert_eq!(silent.held_at_start, 300, "{silent:?}");
    // The re-open path ran, and tetherd counted what it closed (the phase
    // lasts at least its 2 s of writes, twice the preface timeout).
    assert!(silent.reopened > 0 && silent.closed_by_tetherd > 0, "{silent:?}");
    assert!(report.tetherd_silent_total > 0 && report.attacked.tetherd_silent > 0, "{report:?}");
    assert_eq!(report.quiet.tetherd_silent, 0, "{report:?}");

    let json = serde_json::to_value(&report).expect("the report encodes");
    assert_eq!(json["scenario"], "silent-sockets");
    for key in ["p99_ratio", "p99_target", "p99_met", "tetherd_silent_total", "tetherd_evicted_total", "silent"] {
        assert!(!json[key].is_null(), "no {key} in {json}");
    }
    for phase in ["quiet", "attacked"] {
        for key in ["p50_us", "p99_us", "p999_us", "max_us"] {
            assert!(json[phase]["load"][key].is_u64(), "no {phase}.load.{key} in {json}");
        }
        for key in ["connected", "welcome_p50_ms", "welcome_p99_ms", "welcome_max_ms"] {
            assert!(!json[phase]["new_vehicles"][key].is_null(), "no {phase}.new_vehicles.{key} in {json}");
        }
        assert!(json[phase]["server_cpu"]["percent"].is_number(), "no {phase}.server_cpu in {json}");
    }
    for key in ["held_at_start", "held_min", "reopened", "closed_by_tetherd"] {
        assert!(json["silent"][key].is_number(), "no silent.{key} in {json}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_rounds_lose_no_acknowledged_write() {
    use tether_examples::bench::crash_rounds::{self, CrashRoundsConfig};
    let config = CrashRoundsConfig {
        tetherd: tetherd(),
        rounds: 4,
        writers: 4,
        vehicles: 20,
        run_between: (Duration::from_millis(200), Duration::from_millis(400)),
        torn_tails: true,
        seed: 7,
    };
    let report = crash_rounds::run(&config).await.expect("crash-rounds runs");
    assert_eq!(report.rounds.len(), 4);
    assert_eq!(report.torn_tails, 4, "every kind of torn tail once");
    assert!(report.acknowledged > 0, "{report:?}");
    assert_eq!(report.lost, 0, "{report}");
    assert!(report.rounds.iter().all(|r| r.checked > 0), "{report:?}");
}
