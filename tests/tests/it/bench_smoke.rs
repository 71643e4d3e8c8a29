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
