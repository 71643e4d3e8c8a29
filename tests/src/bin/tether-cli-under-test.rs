//! The real `tether` CLI, built inside this package so its integration tests
//! can run it as a process (`CARGO_BIN_EXE_tether-cli-under-test`).

fn main() -> std::process::ExitCode {
    tether_cli::main()
}
