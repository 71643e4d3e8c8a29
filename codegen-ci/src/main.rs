//! `codegen-ci`: regenerates the Rust code generated from `proto/` and checks
//! that the checked-in copy has not drifted. Run it as `cargo codegen-ci`.
//!
//! The contract pipeline issue grows this into lint, breaking-change gate,
//! release and publish; today it owns generation only.

mod rust;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "The tether contract pipeline")]
struct Cli {
    /// The repository root (defaults to the workspace this binary was built in).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Regenerate the checked-in Rust code in sdk/tether-proto/src/generated.
    Generate,
    /// Fail when the checked-in generated code differs from what `generate` writes.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let root = cli.root.unwrap_or_else(default_root);
    let result = match cli.command {
        Command::Generate => rust::generate(&root).map(|files| {
            println!("codegen-ci: wrote {} files to {}", files, rust::OUT_DIR);
            true
        }),
        Command::Check => rust::check(&root),
    };
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("codegen-ci: {err:#}");
            ExitCode::from(2)
        }
    }
}

fn default_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("codegen-ci lives one level below the repository root")
        .to_path_buf()
}
