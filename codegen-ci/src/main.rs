//! `codegen-ci`: the tether contract pipeline (run it as `cargo codegen-ci`).
//! A thin command line over the library: every error is one line and a non-zero
//! exit; findings are printed one per line with their fix.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};
use codegen_ci::lang::{self, Context};
use codegen_ci::{Version, check, publish, release};

#[derive(Parser)]
#[command(about = "The tether contract pipeline: check, generate, release and publish the SDKs")]
struct Cli {
    /// The repository root (defaults to the workspace this binary was built in).
    #[arg(long, global = true)]
    root: Option<PathBuf>,
    /// The repository whose .tools/ and scripts/ to use (defaults to --root).
    #[arg(long, global = true, hide = true)]
    tools: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Lint the contract, gate breaking changes and semver, and fail on generated-code drift.
    Check,
    /// Regenerate the checked-in Rust and build the Rust, Python and TypeScript packages into target/sdk/.
    Generate,
    /// Cut the release of proto/VERSION: descriptor set, CHANGELOG entry, SDK packages.
    Release,
    /// Publish the SDKs of the released proto/VERSION.
    Publish {
        /// A destination per target: rust=<cargo registry name>, python=<index URL>,
        /// typescript=<npm registry URL | dir:<folder>>. Also read from
        /// TETHER_PUBLISH_RUST, TETHER_PUBLISH_PYTHON, TETHER_PUBLISH_TYPESCRIPT.
        #[arg(long = "to", value_name = "TARGET=DESTINATION")]
        to: Vec<String>,
        /// Build everything and show what would be published, uploading nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(err) => {
            eprintln!("codegen-ci: error: {}", codegen_ci::contract::one_line(&format!("{err:#}")));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> Result<bool> {
    let root = cli.root.unwrap_or_else(default_root);
    let tools = cli.tools.unwrap_or_else(|| root.clone());
    match cli.command {
        Command::Check => {
            let report = check::contract(&root, &tools)?;
            let cx = context(&root, &tools)?;
            let mut failures = report.failures();
            for target in lang::all() {
                failures.extend(target.check(&cx)?);
            }
            for b in report.breaking.iter().filter(|_| report.semver.is_empty()) {
                println!("codegen-ci: allowed by the major bump: {}", b.finding);
            }
            for f in &failures {
                eprintln!("codegen-ci: {f}");
            }
            println!(
                "codegen-ci: contract {} since release {}: {} (needs a {} bump); {} failure(s)",
                report.version,
                report.last_release,
                report.verdict,
                report.verdict.bump(),
                failures.len()
            );
            Ok(failures.is_empty())
        }
        Command::Generate => {
            let cx = context(&root, &tools)?;
            for target in lang::all() {
                let dir = target.generate(&cx)?;
                println!("codegen-ci: generated {} {} in {}", target.name(), cx.version, dir.display());
            }
            Ok(true)
        }
        Command::Release => {
            let cx = context(&root, &tools)?;
            let released = release::release(&cx)?;
            println!("codegen-ci: released contract {}:", released.version);
            for line in &released.changes {
                println!("  {line}");
            }
            for target in lang::all() {
                let dir = target.generate(&cx)?;
                println!("codegen-ci: generated {} {} in {}", target.name(), cx.version, dir.display());
            }
            Ok(true)
        }
        Command::Publish { to, dry_run } => {
            let cx = context(&root, &tools)?;
            let mut destinations = BTreeMap::new();
            for target in lang::all() {
                let var = format!("TETHER_PUBLISH_{}", target.name().to_ascii_uppercase());
                if let Ok(dest) = std::env::var(&var) {
                    destinations.insert(target.name().to_string(), dest);
                }
            }
            for pair in &to {
                let Some((name, dest)) = pair.split_once('=') else {
                    bail!("--to {pair}: expected TARGET=DESTINATION");
                };
                destinations.insert(name.to_string(), dest.to_string());
            }
            for line in publish::publish(&cx, &destinations, dry_run)? {
                println!("codegen-ci: {line}");
            }
            Ok(true)
        }
    }
}

fn context(root: &Path, tools: &Path) -> Result<Context> {
    let version = Version::read(root)?;
    let commit = match std::env::var("TETHER_CONTRACT_COMMIT") {
        Ok(c) => c,
        Err(_) => Process::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(root)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into()),
    };
    Ok(Context {
        root: root.to_path_buf(),
        tools: tools.to_path_buf(),
        version,
        out: root.join("target/sdk"),
        generator: format!("codegen-ci {}", env!("CARGO_PKG_VERSION")),
        commit,
    })
}

fn default_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("codegen-ci lives one level below the repository root")
        .map(Path::to_path_buf)
        .unwrap_or_else(|_| PathBuf::from("."))
}
