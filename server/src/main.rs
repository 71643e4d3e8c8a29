//! The `tetherd` binary.

fn main() -> std::process::ExitCode {
    tetherd::command::main()
}
