//! tetherd's configuration as an operator meets it: the real binary, a TOML
//! file, `TETHER_*` variables and flags (file < env < flags), and one clear
//! line naming the key for each kind of invalid value, before anything binds.

use std::path::{Path, PathBuf};
use std::process::Output;

fn tetherd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_tetherd-under-test"))
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = tokio::process::Command::new(tetherd());
    command.args(args).env("RUST_LOG", "warn").stdin(std::process::Stdio::null()).kill_on_drop(true);
    for (k, v) in env {
        command.env(k, v);
    }
    tokio::time::timeout(tether_tests::BOUND, command.output()).await.expect("tetherd exits").expect("tetherd runs")
}

fn write(dir: &Path, body: &str) -> String {
    let path = dir.join("tether.toml");
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_string()
}

#[tokio::test]
async fn file_then_environment_then_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "default_ttl = \"1m\"\nheartbeat_interval = \"20s\"\nmax_wait = \"30s\"\nmax_connections = 500\n",
    );
    let out = run(
        &["--config", &file, "--max-wait", "50s", "--print-config"],
        &[("TETHER_HEARTBEAT_INTERVAL", "25s"), ("TETHER_MAX_WAIT", "40s"), ("TETHER_DRAIN_DELAY", "3s")],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let line = |key: &str| {
        text.lines().find(|l| l.starts_with(&format!("{key} = "))).unwrap_or_else(|| panic!("{key} in {text}"))
    };
    assert_eq!(line("default_ttl"), format!("default_ttl = \"1m\"  # file {file}"), "file only");
    assert_eq!(line("max_connections"), format!("max_connections = 500  # file {file}"), "file only");
    assert_eq!(line("heartbeat_interval"), "heartbeat_interval = \"25s\"  # env TETHER_HEARTBEAT_INTERVAL");
    assert_eq!(line("drain_delay"), "drain_delay = \"3s\"  # env TETHER_DRAIN_DELAY", "env only");
    assert_eq!(line("max_wait"), "max_wait = \"50s\"  # flag", "flag beats env beats file");
    assert_eq!(line("max_ttl"), "max_ttl = \"7d\"  # default");
    assert!(!text.contains("print_config") && !text.contains("\nconfig ="), "loading keys are not settings: {text}");

    // The printed configuration is a valid file.
    let again = write(dir.path(), &text);
    let out = run(&["--config", &again, "--print-config"], &[]).await;
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8(out.stdout).unwrap().contains("max_wait = \"50s\"  # file"));
}

/// Runs tetherd with an invalid configuration; returns its one stderr line.
async fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = run(args, env).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line: {stderr}");
    assert!(lines[0].starts_with("tetherd: invalid configuration: "), "{stderr}");
    assert!(!stderr.contains("listening"), "nothing was bound: {stderr}");
    lines[0].to_string()
}

#[tokio::test]
async fn each_kind_of_invalid_value_is_one_line_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();

    // A value a flag's parser refuses.
    let line = refused(&["--data-dir", data, "--default-ttl", "soon"], &[]).await;
    assert!(line.contains("--default-ttl") && line.contains("not a duration"), "{line}");
    // From the environment: the variable is named.
    let line = refused(&["--data-dir", data], &[("TETHER_MAX_CONNECTIONS", "lots")]).await;
    assert!(line.contains("--max-connections") && line.contains("TETHER_MAX_CONNECTIONS"), "{line}");
    // An out-of-range value.
    let line = refused(&["--data-dir", data, "--heartbeat-misses", "0"], &[]).await;
    assert!(line.contains("--heartbeat-misses") && line.contains("0"), "{line}");
    // A relation between two keys.
    let line = refused(&["--data-dir", data, "--default-ttl", "9d"], &[]).await;
    assert!(line.contains("default_ttl") && line.contains("max_ttl"), "{line}");
    // An address that is not one.
    let line = refused(&["--data-dir", data, "--admin-listen", "everywhere"], &[]).await;
    assert!(line.contains("--admin-listen") && line.contains("off"), "{line}");
    // An unknown flag.
    let line = refused(&["--data-dir", data, "--heartbeat", "1s"], &[]).await;
    assert!(line.contains("--heartbeat"), "{line}");

    // The file: a bad value, an unknown key, a wrong type, broken TOML, no file.
    let file = write(dir.path(), "max_wait = \"forever\"\n");
    let line = refused(&["--data-dir", data, "--config", &file], &[]).await;
    assert!(line.contains(&file) && line.contains("`max_wait`") && line.contains("not a duration"), "{line}");
    let file = write(dir.path(), "listen_address = \"127.0.0.1:1\"\n");
    let line = refused(&["--data-dir", data, "--config", &file], &[]).await;
    assert!(line.contains(&file) && line.contains("unknown key `listen_address`"), "{line}");
    let file = write(dir.path(), "listen = { host = \"x\" }\n");
    let line = refused(&["--data-dir", data, "--config", &file], &[]).await;
    assert!(line.contains("`listen` must be a string or a number"), "{line}");
    let file = write(dir.path(), "listen = \n");
    let line = refused(&["--data-dir", data, "--config", &file], &[]).await;
    assert!(line.contains(&file), "{line}");
    let missing = dir.path().join("absent.toml");
    let line = refused(&["--data-dir", data], &[("TETHER_CONFIG", missing.to_str().unwrap())]).await;
    assert!(line.contains("absent.toml") && line.contains("cannot read"), "{line}");
    // A value the file got right is still overridden, not merged, by a bad flag.
    let file = write(dir.path(), "max_wait = \"10s\"\n");
    let line = refused(&["--data-dir", data, "--config", &file, "--max-wait", "later"], &[]).await;
    assert!(line.contains("--max-wait") && !line.contains(&file), "{line}");
    assert!(!Path::new(data).exists(), "no store was opened");
}
