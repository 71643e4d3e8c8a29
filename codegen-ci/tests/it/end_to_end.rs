//! Test 2, end to end on loopback: `publish` the released contract to a local cargo
//! registry (cargo-http-registry), a local Python index (pypiserver) and an npm
//! tarball folder; three consumer projects outside the workspace depend on that
//! version by number (Rust through the registry, Python via pip into a fresh
//! virtualenv, Node via npm) and each sets a desired state on a real tetherd and
//! reads it back. Then a capability is added to the contract, released (minor bump)
//! and published, and each consumer moves to the new version and uses the field.
//!
//! Every child process is bounded by a deadline and killed (with its process group)
//! on timeout or drop; every wait polls a condition with a deadline.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tether_tests::TestServer;
use tokio::process::{Child, Command};

use codegen_ci::Bump;

use crate::support::{after_release, edit, released, repo, scratch, set_version};

/// Installing the tools cold (cargo-http-registry is a ~4 min `cargo install`).
const INSTALL: Duration = Duration::from_secs(20 * 60);
/// A publish: it builds all three packages (`cargo package` compiles tether-proto).
const PUBLISH: Duration = Duration::from_secs(15 * 60);
/// A consumer's install or build (the Rust one compiles tonic cold once).
const BUILD: Duration = Duration::from_secs(15 * 60);
/// A consumer's run against the server, or a server coming up.
const RUN: Duration = Duration::from_secs(60);

/// Shared across runs under the repository's target/: the consumers' and the
/// staged crate's build (dependencies compile once) and the Python runtime wheels.
fn shared(dir: &str) -> PathBuf {
    let path = repo().join("target/e2e").join(dir);
    fs::create_dir_all(&path).unwrap();
    path
}

// === Processes ===

/// Runs `cmd` in its own process group, bounded by `bound`; on timeout the whole
/// group is killed. Returns stdout; panics with the output on failure.
async fn run(what: &str, mut cmd: Command, bound: Duration) -> String {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true).process_group(0);
    let child = cmd.spawn().unwrap_or_else(|e| panic!("{what}: could not start: {e}"));
    let pid = child.id().expect("running");
    let started = Instant::now();
    let out = match tokio::time::timeout(bound, child.wait_with_output()).await {
        Ok(out) => out.unwrap_or_else(|e| panic!("{what}: {e}")),
        Err(_) => {
            kill_group(pid);
            panic!("{what}: still running after {bound:?}; killed");
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{what} failed ({}):\n{stdout}\n{stderr}", out.status);
    eprintln!("e2e: {what}: {:.1?}", started.elapsed());
    stdout
}

/// Kills a process group (a build's compilers included).
fn kill_group(pgid: u32) {
    let _ = std::process::Command::new("kill").args(["-KILL", "--", &format!("-{pgid}")]).status();
}

/// A long-running child (a registry) killed with its group when dropped.
struct Daemon {
    child: Child,
}

impl Daemon {
    fn spawn(what: &str, mut cmd: Command, log: &Path) -> Daemon {
        let log = fs::File::create(log).unwrap();
        cmd.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log).kill_on_drop(true).process_group(0);
        Daemon { child: cmd.spawn().unwrap_or_else(|e| panic!("{what}: could not start: {e}")) }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            kill_group(pid);
        }
    }
}

/// Polls `ready` until it yields `Some`, at most `bound`; panics naming `what`
/// (with the daemon's log) otherwise.
async fn until<T>(what: &str, log: &Path, bound: Duration, mut ready: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("{what}: not ready after {bound:?}; log:\n{}", fs::read_to_string(log).unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn answers(addr: &str) -> bool {
    addr.parse().is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_millis(200)).is_ok())
}

/// A free loopback port (for pypiserver, which cannot report an ephemeral one).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Removes what cargo cached (in CARGO_HOME) of the throwaway registry at `index`,
/// when dropped: its clone under registry/index/ (found by its FETCH_HEAD, which
/// names the URL) and the same-named folders under registry/cache/ and src/.
struct CargoHomeCleanup {
    index: String,
}

impl Drop for CargoHomeCleanup {
    fn drop(&mut self) {
        let home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
        let Some(registry) = home.map(|h| h.join("registry")) else { return };
        let Ok(entries) = fs::read_dir(registry.join("index")) else { return };
        for entry in entries.flatten() {
            let fetched = fs::read_to_string(entry.path().join(".git/FETCH_HEAD")).unwrap_or_default();
            if fetched.split_whitespace().any(|w| w == self.index) {
                for part in ["index", "cache", "src"] {
                    let _ = fs::remove_dir_all(registry.join(part).join(entry.file_name()));
                }
            }
        }
    }
}

// === The registries ===

struct Registries {
    /// `file://` URL of cargo-http-registry's git index.
    cargo_index: String,
    /// pypiserver's root URL (uploads; `simple/` is the index).
    python: String,
    /// The npm tarball folder.
    npm: PathBuf,
    _daemons: Vec<Daemon>,
}

async fn start_registries(dir: &Path) -> Registries {
    let cargo_root = dir.join("cargo-registry");
    fs::create_dir_all(&cargo_root).unwrap();
    let mut cmd = Command::new(repo().join(".tools/cargo/bin/cargo-http-registry"));
    cmd.arg(&cargo_root);
    let cargo_log = dir.join("cargo-registry.log");
    let cargo = Daemon::spawn("cargo-http-registry", cmd, &cargo_log);
    // It binds 127.0.0.1:0 and writes the bound address into the index's config.json.
    let config = cargo_root.join("config.json");
    until("cargo-http-registry", &cargo_log, RUN, || {
        let config: serde_json::Value = serde_json::from_str(&fs::read_to_string(&config).ok()?).ok()?;
        let api = config["api"].as_str()?.strip_prefix("http://")?.to_string();
        answers(&api).then_some(())
    })
    .await;

    let packages = dir.join("pypi");
    fs::create_dir_all(&packages).unwrap();
    let port = free_port();
    let mut cmd = Command::new(repo().join(".tools/venv/bin/pypi-server"));
    // No authentication (loopback, throwaway) and no fallback to pypi.org: a
    // consumer finds only what was published here (and the pinned runtime wheels).
    cmd.args(["run", "--host", "127.0.0.1", "--port", &port.to_string(), "-a", ".", "-P", "."])
        .arg("--disable-fallback")
        .arg(&packages);
    let pypi_log = dir.join("pypiserver.log");
    let pypi = Daemon::spawn("pypiserver", cmd, &pypi_log);
    let addr = format!("127.0.0.1:{port}");
    until("pypiserver", &pypi_log, RUN, || answers(&addr).then_some(())).await;

    let npm = dir.join("npm");
    fs::create_dir_all(&npm).unwrap();
    Registries {
        cargo_index: format!("file://{}", cargo_root.display()),
        python: format!("http://{addr}/"),
        npm,
        _daemons: vec![cargo, pypi],
    }
}

impl Registries {
    /// `codegen-ci publish` to all three, with the credentials in the environment.
    fn publish(&self, root: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_codegen-ci"));
        cmd.arg("--root").arg(root).arg("--tools").arg(repo());
        cmd.args(["publish", "--to", "rust=local", "--to"])
            .arg(format!("python={}", self.python))
            .arg("--to")
            .arg(format!("typescript=dir:{}", self.npm.display()));
        cmd.env("CARGO_REGISTRIES_LOCAL_INDEX", &self.cargo_index)
            .env("CARGO_REGISTRIES_LOCAL_TOKEN", "loopback-token")
            .env("TWINE_USERNAME", "e2e")
            .env("TWINE_PASSWORD", "e2e")
            .env("CODEGEN_CI_TARGET_DIR", shared("cargo-target"))
            .env("TETHER_CONTRACT_COMMIT", "e2e");
        for var in ["TETHER_PUBLISH_RUST", "TETHER_PUBLISH_PYTHON", "TETHER_PUBLISH_TYPESCRIPT"] {
            cmd.env_remove(var);
        }
        cmd
    }
}

// === The consumers ===

/// Which contract a consumer is written against: `Base`, the release the
/// repository is at (`proto/VERSION`), sets a window; `Next`, its minor bump made by
/// the test, adds `seats` and sets its heater. Derived, not written down, so the
/// test follows the real contract's releases.
#[derive(Clone, Copy)]
enum Release {
    Base,
    Next,
}

impl Release {
    fn version(self) -> String {
        match self {
            Release::Base => released().to_string(),
            Release::Next => after_release(Bump::Minor),
        }
    }
}

const RUST_MANIFEST: &str = r#"[package]
name = "tether-consumer"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
tether-proto = { version = "=@VERSION@", registry = "local" }
tonic = { version = "0.14.9", default-features = false, features = ["transport"] }
tokio = { version = "1", features = ["rt-multi-thread", "macros"] }

# Not part of any enclosing workspace.
[workspace]
"#;

const RUST_MAIN: &str = r#"use std::time::Duration;

use tether_proto::RawState;
use tether_proto::app::v1::control_service_client::ControlServiceClient;
use tether_proto::app::v1::{GetVehicleRequest, SetDesiredRequest};
use tether_proto::state::v1::*;

#[tokio::main]
async fn main() {
    let url = std::env::args().nth(1).expect("server URL");
    let channel = tonic::transport::Endpoint::from_shared(url).unwrap()
        .connect_timeout(Duration::from_secs(5)).timeout(Duration::from_secs(10))
        .connect().await.expect("connects");
    let mut client = ControlServiceClient::new(channel);
    let patch = @PATCH@;
    let request = SetDesiredRequest { vehicle_id: "rust-car".into(), idempotency_key: "rust-@VERSION@".into(), patch: Some(RawState::from_typed(&patch)), ..Default::default() };
    client.set_desired(request).await.expect("SetDesired");
    let vehicle = client.get_vehicle(GetVehicleRequest { vehicle_id: "rust-car".into() }).await.expect("GetVehicle").into_inner();
    let desired = vehicle.desired.expect("desired state").decode_typed().expect("decodes");
    let got = @READ@;
    assert_eq!(got, Some(@WANT@), "read back {desired:?}");
    println!("rust: tether-proto {}: @FIELD@={}", tether_proto::CONTRACT_VERSION.trim(), @WANT@);
}
"#;

const PYTHON_MAIN: &str = r#"import importlib.metadata, sys
import grpc
from tether.app.v1 import app_pb2, app_pb2_grpc
from tether.state.v1 import state_pb2 as s

channel = grpc.insecure_channel(sys.argv[1])
grpc.channel_ready_future(channel).result(timeout=10)
stub = app_pb2_grpc.ControlServiceStub(channel)
stub.SetDesired(app_pb2.SetDesiredRequest(vehicle_id="py-car", idempotency_key="py-@VERSION@", patch=@PATCH@), timeout=10)
desired = stub.GetVehicle(app_pb2.GetVehicleRequest(vehicle_id="py-car"), timeout=10).desired
assert @READ@ == @WANT@, desired
@EXTRA@
print(f"python: tether-proto {importlib.metadata.version('tether-proto')}: @FIELD@={@READ@}")
"#;

const NODE_MAIN: &str = r#"import { readFileSync } from "node:fs";
import { create } from "@bufbuild/protobuf";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ControlService } from "tether-proto/tether/app/v1/app_pb.js";
import { VehicleStateSchema } from "tether-proto/tether/state/v1/state_pb.js";

const client = createClient(ControlService, createGrpcTransport({ baseUrl: process.argv[2] }));
const patch = create(VehicleStateSchema, @PATCH@);
await client.setDesired({ vehicleId: "node-car", idempotencyKey: "node-@VERSION@", patch }, { timeoutMs: 10000 });
const { desired } = await client.getVehicle({ vehicleId: "node-car" }, { timeoutMs: 10000 });
if (@READ@ !== @WANT@) throw new Error(`read back ${JSON.stringify(desired)}`);
const version = JSON.parse(readFileSync("node_modules/tether-proto/package.json", "utf8")).version;
console.log(`node: tether-proto ${version}: @FIELD@=${@READ@}`);
"#;

/// Fills a consumer template for a release: what it sets, how it reads it back.
fn fill(template: &str, release: Release, lang: &str) -> String {
    let (field, want, patch, read) = match (release, lang) {
        (Release::Base, "rust") => (
            "front_left",
            "40",
            "VehicleState { windows: Some(Windows { front_left: Some(40), ..Default::default() }), ..Default::default() }",
            "desired.windows.and_then(|w| w.front_left)",
        ),
        (Release::Next, "rust") => (
            "heater_level",
            "2",
            "VehicleState { seats: Some(Seats { heater_level: Some(2) }), ..Default::default() }",
            "desired.seats.and_then(|s| s.heater_level)",
        ),
        (Release::Base, "python") => {
            ("front_left", "40", "s.VehicleState(windows=s.Windows(front_left=40))", "desired.windows.front_left")
        }
        (Release::Next, "python") => {
            ("heater_level", "2", "s.VehicleState(seats=s.Seats(heater_level=2))", "desired.seats.heater_level")
        }
        (Release::Base, _) => ("frontLeft", "40", "{ windows: { frontLeft: 40 } }", "desired?.windows?.frontLeft"),
        (Release::Next, _) => ("heaterLevel", "2", "{ seats: { heaterLevel: 2 } }", "desired?.seats?.heaterLevel"),
    };
    // Python, the next release: the new field's rules (0..=3) are the server's too.
    let extra = match (release, lang) {
        (Release::Next, "python") => concat!(
            "try:\n",
            "    stub.SetDesired(app_pb2.SetDesiredRequest(vehicle_id=\"py-car\", idempotency_key=\"py-bad\", patch=s.VehicleState(seats=s.Seats(heater_level=7))), timeout=10)\n",
            "    raise SystemExit(\"heater_level 7 was accepted\")\n",
            "except grpc.RpcError as e:\n",
            "    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT and \"heater_level\" in e.details(), e\n",
        ),
        _ => "",
    };
    // Both fields are `optional uint32`.
    let want = if lang == "rust" { format!("{want}u32") } else { want.to_string() };
    template
        .replace("@PATCH@", patch)
        .replace("@READ@", read)
        .replace("@WANT@", &want)
        .replace("@FIELD@", field)
        .replace("@EXTRA@\n", extra)
        .replace("@VERSION@", &release.version())
}

/// The Rust consumer: resolves `tether-proto = "=<version>"` from the local
/// registry (a `[registries]` entry in its own .cargo/config.toml), builds, runs.
async fn rust_consumer(dir: &Path, index: &str, release: Release, server: &str) -> String {
    fs::create_dir_all(dir.join("src")).unwrap();
    fs::create_dir_all(dir.join(".cargo")).unwrap();
    fs::write(dir.join(".cargo/config.toml"), format!("[registries.local]\nindex = \"{index}\"\n")).unwrap();
    fs::write(dir.join("Cargo.toml"), fill(RUST_MANIFEST, release, "rust")).unwrap();
    fs::write(dir.join("src/main.rs"), fill(RUST_MAIN, release, "rust")).unwrap();
    let cargo = |args: &[&str]| {
        let mut cmd = Command::new("cargo");
        cmd.args(args).current_dir(dir).env("CARGO_TARGET_DIR", shared("cargo-target"));
        for var in ["CARGO_REGISTRIES_LOCAL_INDEX", "CARGO_REGISTRIES_LOCAL_TOKEN"] {
            cmd.env_remove(var);
        }
        cmd
    };
    run("rust consumer: cargo build", cargo(&["build", "--quiet"]), BUILD).await;
    let mut cmd = cargo(&["run", "--quiet", "--"]);
    cmd.arg(server);
    run("rust consumer: run", cmd, RUN).await
}

/// The Python consumer: a fresh virtualenv, `pip install tether-proto==<version>`
/// from the local index only (the grpcio/protobuf runtime from a wheel folder
/// filled once from PyPI with the versions pinned in scripts/tools).
async fn python_consumer(dir: &Path, index: &str, release: Release, server: &str) -> String {
    let venv = dir.join("venv");
    if !venv.exists() {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "venv"]).arg(&venv);
        run("python consumer: venv", cmd, BUILD).await;
    }
    let wheels = runtime_wheels().await;
    let mut cmd = Command::new(venv.join("bin/pip"));
    cmd.args(["install", "--quiet", "--disable-pip-version-check", "--no-cache-dir", "--index-url"])
        .arg(format!("{index}simple/"))
        .arg("--find-links")
        .arg(&wheels)
        .arg(format!("tether-proto=={}", release.version()))
        .env_remove("PIP_INDEX_URL")
        .env_remove("PIP_EXTRA_INDEX_URL");
    run("python consumer: pip install", cmd, BUILD).await;
    fs::write(dir.join("main.py"), fill(PYTHON_MAIN, release, "python")).unwrap();
    let mut cmd = Command::new(venv.join("bin/python"));
    cmd.arg(dir.join("main.py")).arg(server.trim_start_matches("http://"));
    run("python consumer: run", cmd, RUN).await
}

/// grpcio and protobuf wheels at the versions pinned in scripts/tools, downloaded
/// from PyPI once into target/e2e/wheels.
async fn runtime_wheels() -> PathBuf {
    let dir = shared("wheels");
    let pins: Vec<String> = fs::read_to_string(repo().join("scripts/tools/requirements.txt"))
        .unwrap()
        .lines()
        .filter(|l| ["grpcio==", "protobuf==", "typing_extensions=="].iter().any(|p| l.starts_with(p)))
        .map(String::from)
        .collect();
    let stamp = dir.join("pins.txt");
    if fs::read_to_string(&stamp).ok().as_deref() != Some(pins.join("\n").as_str()) {
        let mut cmd = Command::new(repo().join(".tools/venv/bin/pip"));
        cmd.args(["download", "--quiet", "--disable-pip-version-check", "--only-binary=:all:", "--dest"])
            .arg(&dir)
            .args(&pins);
        run("pip download (grpcio, protobuf)", cmd, BUILD).await;
        fs::write(&stamp, pins.join("\n")).unwrap();
    }
    dir
}

/// The Node consumer: depends on the tarball of `<version>` in the npm folder.
async fn node_consumer(dir: &Path, npm: &Path, release: Release, server: &str) -> String {
    fs::create_dir_all(dir).unwrap();
    let tarball = npm.join(format!("tether-proto-{}.tgz", release.version()));
    let manifest = serde_json::json!({
        "name": "tether-consumer",
        "private": true,
        "type": "module",
        "dependencies": {
            "tether-proto": format!("file:{}", tarball.display()),
            "@bufbuild/protobuf": "^2.17.0",
            "@connectrpc/connect": "~2.1.1",
            "@connectrpc/connect-node": "~2.1.1",
        },
    });
    fs::write(dir.join("package.json"), serde_json::to_string_pretty(&manifest).unwrap()).unwrap();
    let mut cmd = Command::new("npm");
    cmd.args(["install", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error"]).current_dir(dir);
    run("node consumer: npm install", cmd, BUILD).await;
    fs::write(dir.join("main.mjs"), fill(NODE_MAIN, release, "node")).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg("main.mjs").arg(server).current_dir(dir);
    run("node consumer: run", cmd, RUN).await
}

/// All three consumers against `server`, concurrently; returns what each printed.
async fn consumers(dir: &Path, reg: &Registries, release: Release, server: &str) -> [String; 3] {
    let (rust_dir, python_dir, node_dir) = (dir.join("rust"), dir.join("python"), dir.join("node"));
    let (rust, python, node) = tokio::join!(
        rust_consumer(&rust_dir, &reg.cargo_index, release, server),
        python_consumer(&python_dir, &reg.python, release, server),
        node_consumer(&node_dir, &reg.npm, release, server),
    );
    [rust, python, node]
}

fn assert_printed(out: &[String; 3], release: Release) {
    let v = release.version();
    let (rust_field, py_field, node_field, want) = match release {
        Release::Base => ("front_left", "front_left", "frontLeft", 40),
        Release::Next => ("heater_level", "heater_level", "heaterLevel", 2),
    };
    assert_eq!(out[0].trim(), format!("rust: tether-proto {v}: {rust_field}={want}"));
    assert_eq!(out[1].trim(), format!("python: tether-proto {v}: {py_field}={want}"));
    assert_eq!(out[2].trim(), format!("node: tether-proto {v}: {node_field}={want}"));
}

// === The test ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_sdks_reach_consumers_and_a_new_capability_follows() {
    let started = Instant::now();
    let mut install = Command::new(repo().join("scripts/install-tools"));
    install.args(["node", "python", "registry"]).current_dir(repo());
    run("scripts/install-tools node python registry", install, INSTALL).await;

    let work = tempfile::tempdir().unwrap();
    let root = scratch();
    let root = root.path();
    let reg = start_registries(work.path()).await;
    let _cleanup = CargoHomeCleanup { index: reg.cargo_index.clone() };

    // The repository's version is released: publish it.
    let (base, next) = (Release::Base.version(), Release::Next.version());
    let out = run(&format!("publish {base}"), reg.publish(root), PUBLISH).await;
    assert!(out.contains(&format!("tether-proto {base} to cargo registry local")), "{out}");
    assert!(reg.npm.join(format!("tether-proto-{base}.tgz")).is_file());

    // Publishing the same number again is refused before anything is built.
    let mut again = reg.publish(root);
    let out = again.output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "rust: tether-proto {base} is already published to local: a release number is never reused"
        )),
        "{stderr}"
    );

    let consumers_dir = work.path().join("consumers");
    let server = TestServer::start().await;
    let printed = consumers(&consumers_dir, &reg, Release::Base, &server.url()).await;
    assert_printed(&printed, Release::Base);
    server.shutdown().await;

    // Add a capability (with rules), release it as a minor bump, publish again.
    edit(
        root,
        "proto/tether/state/v1/state.proto",
        "  Horn horn = 7;\n}",
        "  Horn horn = 7;\n  // Seats.\n  Seats seats = 50;\n}\n\n\
         // Seats.\nmessage Seats {\n  // Heater level, 0 to 3.\n  \
         optional uint32 heater_level = 1 [(tether.options.v1.rules) = {min: 0, max: 3}];\n}",
    );
    set_version(root, &next);
    let mut release = Command::new(env!("CARGO_BIN_EXE_codegen-ci"));
    release.arg("--root").arg(root).arg("--tools").arg(repo()).arg("release");
    let out = run(&format!("release {next}"), release, PUBLISH).await;
    assert!(out.contains(&format!("released contract {next}")), "{out}");
    let changelog = fs::read_to_string(root.join("proto/CHANGELOG.md")).unwrap();
    assert!(changelog.contains(&format!("## {next}")) && changelog.contains("Seats"), "{changelog}");
    run(&format!("publish {next}"), reg.publish(root), PUBLISH).await;

    // A server that understands the new release: it reads its descriptor set.
    let descriptor = root.join(format!("proto/releases/{next}.binpb"));
    let server = TestServer::start_with(|c| c.state_descriptor = Some(descriptor.clone())).await;
    let printed = consumers(&consumers_dir, &reg, Release::Next, &server.url()).await;
    assert_printed(&printed, Release::Next);
    server.shutdown().await;
    eprintln!("e2e: total {:.1?}", started.elapsed());
}
