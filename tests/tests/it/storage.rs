//! Storage that never loses and never lies, on the real binary: a
//! write-ahead log damaged before its end stops the start (and recovery says
//! what it drops), a torn last frame does not; a damaged database file is an
//! error, never a panic or silently missing data; a full disk refuses
//! writes, turns health NOT_SERVING, leaves memory as the disk is, and
//! writes resume by themselves once space is freed.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tether_proto::app::v1::GetVehicleRequest;
use tether_proto::app::v1::control_service_client::ControlServiceClient;
use tether_tests::{BOUND, ChildServer, Refused, eventually};
use tonic::Code;
use tonic::transport::Channel;

use crate::{set, window};

fn tetherd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tetherd-under-test"))
}

async fn control(server: &ChildServer) -> ControlServiceClient<Channel> {
    ControlServiceClient::new(tether_tests::channel(&server.url()).await)
}

/// The front-left window of `vehicle` and its generation, or the error.
async fn window_of(app: &mut ControlServiceClient<Channel>, vehicle: &str) -> Result<(u32, u64), tonic::Status> {
    let v = app.get_vehicle(GetVehicleRequest { vehicle_id: vehicle.into() }).await?.into_inner();
    let state: tether_proto::state::v1::VehicleState = v.desired.expect("desired").decode_typed().expect("decodes");
    let pct = state.windows.and_then(|w| w.front_left).expect("a window");
    Ok((pct, v.generation))
}

/// The frames of a write-ahead log: (offset, total length with its header).
fn frames(log: &[u8]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 8 <= log.len() {
        let len = u32::from_le_bytes(log[at..at + 4].try_into().unwrap()) as usize;
        if at + 8 + len > log.len() {
            break;
        }
        out.push((at, 8 + len));
        at += 8 + len;
    }
    out
}

/// Starts the binary on `data` with `args`, expecting it to refuse.
async fn refused(data: &Path, args: &[&str]) -> Refused {
    match ChildServer::try_start_with_args(&tetherd(), data, None, args).await {
        Ok(_) => panic!("tetherd started on a damaged store"),
        Err(refused) => refused,
    }
}

/// Ten writes, one commit each (one at a time, no vehicle connected: no
/// other saves), then `kill -9`: the log holds ten frames. Returns the log.
async fn ten_commits_then_kill(data: &Path) -> Vec<u8> {
    let server = ChildServer::start(&tetherd(), data).await;
    let mut app = control(&server).await;
    for i in 0..10u32 {
        app.set_desired(set(&format!("car-{i}"), &format!("k{i}"), window(i))).await.unwrap();
    }
    // Well within the second without saves after which the store
    // checkpoints and empties its log.
    server.kill_9().await;
    let log = std::fs::read(data.join("tether.wal")).unwrap();
    assert_eq!(frames(&log).len(), 10, "ten commits in the log (a checkpoint came before the kill?)");
    log
}

#[tokio::test]
async fn a_log_damaged_before_its_end_stops_the_start_and_recovery_says_what_it_drops() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = ten_commits_then_kill(&data).await;
    // One flipped byte in the body of the third frame: the seven after it
    // are intact and acknowledged.
    let (third, _) = frames(&log)[2];
    let mut damaged = log.clone();
    damaged[third + 10] ^= 0x20;
    std::fs::write(data.join("tether.wal"), &damaged).unwrap();

    let refusal = refused(&data, &[]).await;
    assert_eq!(refusal.status.code(), Some(1), "{refusal:?}");
    let line = refusal.stderr.lines().last().unwrap_or_default();
    assert!(line.contains("tether.wal") && line.contains(&format!("damaged at byte {third}")), "{line}");
    assert!(line.contains("7 acknowledged commit(s) follow") && line.contains("--recover-damaged-store"), "{line}");
    assert_eq!(std::fs::read(data.join("tether.wal")).unwrap(), damaged, "the log is left untouched");

    // Accepting the loss: the first two commits are replayed, the rest
    // dropped and counted, the damaged log kept aside.
    let server = ChildServer::start_with_args(&tetherd(), &data, None, &["--recover-damaged-store"]).await;
    assert!(server.logged("dropping 8 acknowledged commit(s)"), "says what it drops");
    let mut app = control(&server).await;
    assert_eq!(window_of(&mut app, "car-1").await.unwrap(), (1, 1));
    for lost in 2..10 {
        let err = window_of(&mut app, &format!("car-{lost}")).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "car-{lost}");
    }
    let aside: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("tether.wal.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged log is kept");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), damaged);
}

#[tokio::test]
async fn a_damaged_first_frame_or_a_missing_frame_is_a_loss_too() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = ten_commits_then_kill(&data).await;
    let all = frames(&log);
    let mut first = log.clone();
    first[all[0].0 + 9] ^= 0x01;
    let (missing_at, missing_len) = all[4];
    let gap = [&log[..missing_at], &log[missing_at + missing_len..]].concat();
    for (what, bytes, says) in [("first", first, "damaged at byte 0"), ("gap", gap, "commit 5 is missing")] {
        std::fs::write(data.join("tether.wal"), &bytes).unwrap();
        let refusal = refused(&data, &[]).await;
        assert!(refusal.stderr.contains(says), "{what}: {}", refusal.stderr);
        assert_eq!(std::fs::read(data.join("tether.wal")).unwrap(), bytes, "{what}: untouched");
    }
}

#[tokio::test]
async fn a_torn_last_frame_is_dropped_and_everything_before_it_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let log = ten_commits_then_kill(&data).await;
    // A crash in the middle of the last append: its frame cut short.
    std::fs::write(data.join("tether.wal"), &log[..log.len() - 5]).unwrap();
    let server = ChildServer::start(&tetherd(), &data).await;
    assert!(server.logged("a crash during a write"), "says what it dropped");
    let mut app = control(&server).await;
    for i in 0..9u32 {
        assert_eq!(window_of(&mut app, &format!("car-{i}")).await.unwrap(), (i, 1), "car-{i}");
    }
    // The torn write was never acknowledged (its fsync never returned).
    assert_eq!(window_of(&mut app, "car-9").await.unwrap_err().code(), Code::NotFound);
}

/// A data directory with 30 vehicles, each written once, stopped cleanly
/// (everything checkpointed into the database file); and each vehicle's
/// window and generation.
async fn thirty_vehicles(data: &Path) -> Vec<(String, (u32, u64))> {
    let server = ChildServer::start(&tetherd(), data).await;
    let mut app = control(&server).await;
    let mut expected = Vec::new();
    for i in 0..30u32 {
        let id = format!("car-{i:02}");
        app.set_desired(set(&id, "k1", window(i))).await.unwrap();
        expected.push((id, (i, 1)));
    }
    let (status, _) = server.terminate(BOUND).await;
    assert!(status.success());
    expected
}

#[tokio::test]
async fn a_byte_flipped_in_the_database_file_is_refused_or_harmless_never_a_panic_or_silent() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let expected = thirty_vehicles(&data).await;
    let pristine = std::fs::read(data.join("tether.redb")).unwrap();
    // 30 positions spread over the file (a fixed stride, so a failure names
    // its byte), the first pages (redb's header and commit slots) included.
    let positions: Vec<usize> = (0..30).map(|i| (i * 7919 + 13) % pristine.len()).collect();
    let (mut refused_count, mut harmless) = (0, 0);
    for at in positions {
        let trial = tempfile::tempdir().unwrap();
        let copy = trial.path().join("data");
        std::fs::create_dir_all(&copy).unwrap();
        for file in std::fs::read_dir(&data).unwrap() {
            let file = file.unwrap();
            std::fs::copy(file.path(), copy.join(file.file_name())).unwrap();
        }
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x04;
        std::fs::write(copy.join("tether.redb"), &bytes).unwrap();
        match ChildServer::try_start_with_args(&tetherd(), &copy, None, &[]).await {
            Err(refusal) => {
                assert_eq!(refusal.status.code(), Some(1), "byte {at}: a clear error exit, not a panic: {refusal:?}");
                let last = refusal.stderr.lines().last().unwrap_or_default();
                assert!(last.starts_with("tetherd: cannot open the store"), "byte {at}: {last}");
                refused_count += 1;
            }
            Ok(server) => {
                // It started: then every vehicle is there, as it was.
                let mut app = control(&server).await;
                for (id, want) in &expected {
                    let got = window_of(&mut app, id).await;
                    assert_eq!(got.as_ref().ok(), Some(want), "byte {at}: {id} after a start on a damaged file");
                }
                harmless += 1;
                server.kill_9().await;
            }
        }
    }
    eprintln!("30 flipped bytes: {refused_count} refused at start, {harmless} harmless (unused bytes)");
}

#[tokio::test]
async fn a_record_that_does_not_verify_stops_the_start_and_recovery_quarantines_it() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let expected = thirty_vehicles(&data).await;
    // Damage redb cannot see (its pages verify): car-07's stored bytes
    // changed through redb itself.
    {
        use redb::ReadableTable;
        let db = redb::Database::create(data.join("tether.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(redb::TableDefinition::<&str, &[u8]>::new("vehicles")).unwrap();
            let mut row = table.get("car-07").unwrap().unwrap().value().to_vec();
            row[6] ^= 0x08;
            table.insert("car-07", row.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let refusal = refused(&data, &[]).await;
    let line = refusal.stderr.lines().last().unwrap_or_default();
    assert!(line.contains("\"car-07\" is damaged") && line.contains("checksum"), "{line}");
    assert!(line.contains("--recover-damaged-store"), "{line}");

    // Recovery quarantines it (kept in the store, out of the way) and says so.
    let server = ChildServer::start_with_args(&tetherd(), &data, None, &["--recover-damaged-store"]).await;
    assert!(server.logged("car-07") && server.logged("quarantine"), "reported");
    let mut app = control(&server).await;
    assert_eq!(window_of(&mut app, "car-07").await.unwrap_err().code(), Code::NotFound);
    for (id, want) in expected.iter().filter(|(id, _)| id != "car-07") {
        assert_eq!(&window_of(&mut app, id).await.unwrap(), want, "{id}");
    }
    server.kill_9().await;
    // Once quarantined, a plain start works again.
    let server = ChildServer::start(&tetherd(), &data).await;
    let mut app = control(&server).await;
    assert_eq!(window_of(&mut app, "car-08").await.unwrap(), (8, 1));
}

/// A small tmpfs mounted for a test, unmounted when dropped.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts `size` of tmpfs, or says why it cannot (not root, no mount).
    fn mount(size: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!("mount -t tmpfs: {}", String::from_utf8_lossy(&out.stderr).trim()));
        }
        Ok(SmallDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a file of its own; returns it (remove it to
    /// free the space).
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0xa5u8; 16 * 1024];
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling the disk: {e}"),
            }
        }
        let _ = file.flush();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// The status `grpc.health.v1.Health` gives for `service`.
pub(crate) async fn health(server: &ChildServer, service: &str) -> i32 {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let mut client = HealthClient::new(tether_tests::channel(&server.url()).await);
    client.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner().status
}

#[tokio::test]
async fn a_full_disk_refuses_writes_shows_only_what_is_durable_and_writes_resume_when_space_is_freed() {
    use tonic_health::ServingStatus;
    let disk = match SmallDisk::mount("16m") {
        Ok(disk) => disk,
        Err(why) => {
            eprintln!("skipped: this test needs a tmpfs it can mount (CI runs as root): {why}");
            return;
        }
    };
    let data = disk.path().join("data");
    let server = ChildServer::start(&tetherd(), &data).await;
    let mut app = control(&server).await;
    let mut last = (0, 0);
    let written = app.set_desired(set("car-1", "k-first", window(1))).await.unwrap().into_inner();
    last = (1, written.generation).max(last);
    let filler = disk.fill();

    // Writes until the disk refuses one (the log's last page may have room
    // for a few): refused as UNAVAILABLE, nothing stored.
    let mut refusal = None;
    for i in 0..500u32 {
        let pct = 2 + i % 90;
        match app.set_desired(set("car-1", &format!("k{i}"), window(pct))).await {
            Ok(r) => last = (pct, r.into_inner().generation),
            Err(status) => {
                refusal = Some((pct, status));
                break;
            }
        }
    }
    let (refused_pct, status) = refusal.expect("the full disk refuses a write");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    // Memory is what the disk holds: the last accepted write, never the
    // refused one (or, while the store cannot read it back, nothing).
    match window_of(&mut app, "car-1").await {
        Ok(got) => assert_eq!(got, last, "the refused {refused_pct} is not shown"),
        Err(e) => assert_eq!(e.code(), Code::Unavailable, "{e:?}"),
    }
    // Load balancers are told.
    eventually("health turns NOT_SERVING", BOUND, || async {
        (health(&server, "").await == ServingStatus::NotServing as i32).then_some(())
    })
    .await;
    assert_eq!(health(&server, "tether.app.v1.ControlService").await, ServingStatus::NotServing as i32);
    assert!(app.set_desired(set("car-1", "k-more", window(99))).await.is_err(), "still refused");

    // Space comes back: writes resume by themselves.
    std::fs::remove_file(filler).unwrap();
    eventually("health is SERVING again", Duration::from_secs(20), || async {
        (health(&server, "").await == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    assert_eq!(window_of(&mut app, "car-1").await.unwrap(), last, "durable state after the failure");
    let after = app.set_desired(set("car-1", "k-after", window(100))).await.unwrap().into_inner();
    assert_eq!(after.generation, last.1 + 1, "no generation of a refused write was used");

    // And a crash right after keeps exactly what was accepted.
    server.kill_9().await;
    let server = ChildServer::start(&tetherd(), &data).await;
    let mut app = control(&server).await;
    assert_eq!(window_of(&mut app, "car-1").await.unwrap(), (100, last.1 + 1));
    server.kill_9().await;
    drop(disk);
}
