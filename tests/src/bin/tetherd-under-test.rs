//! The real `tetherd` command, built inside this package so its integration
//! tests can start it as a process (`CARGO_BIN_EXE_tetherd-under-test`) and
//! `kill -9` it.

fn main() -> std::process::ExitCode {
    tetherd::command::main()
}
