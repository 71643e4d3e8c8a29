//! `tether`: the operator CLI of tetherd — set, read, watch, list and cancel
//! vehicles' desired state, and read a node's counts. It uses only the SDK;
//! values are parsed and rendered through the contract's descriptors.

mod audit;
mod cancel;
mod certs;
mod connect;
mod get;
mod list;
mod outcome;
mod output;
pub mod pki;
mod set;
mod stats;
mod tokens;
mod values;
mod watch;
mod when;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tether_sdk::pb::StateSchema;
use tracing_subscriber::EnvFilter;

use crate::output::{Output, code_name, print_error};

/// Exit status of an error (a failed call, an unreachable server).
const EXIT_ERROR: u8 = 1;
/// Exit status of bad arguments (clap uses it too).
const EXIT_USAGE: u8 = 2;
/// Exit status of a write some of whose fields did not take effect.
const EXIT_NOT_APPLIED: u8 = 3;

/// The operator CLI of tetherd.
#[derive(Debug, Parser)]
#[command(
    name = "tether",
    version,
    about = "The operator CLI of tetherd: set, read, watch, list and cancel vehicles' desired state.",
    after_help = "Exit status: 0 success; 1 error (the gRPC code is printed, e.g. `error: DEADLINE_EXCEEDED: …`); \
                  2 bad arguments; 3 `set` stored the write but a field ended REJECTED, FAILED, EXPIRED or CANCELLED."
)]
struct Cli {
    /// tetherd's address (`https://…` with --ca).
    #[arg(long, global = true, env = "TETHER_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    #[command(flatten)]
    credentials: connect::Credentials,
    /// Machine-readable output: one JSON object per result or event line on
    /// stdout, errors as JSON on stderr, no progress.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sets desired state (PATH=VALUE...) and waits for it to be applied.
    Set(set::Args),
    /// Shows a vehicle: generations, presence, desired fields, actual state.
    Get(get::Args),
    /// Prints one line per change of a vehicle until Ctrl-C.
    Watch(watch::Args),
    /// Lists vehicles, one line each.
    List(list::Args),
    /// Cancels desired fields not yet applied.
    Cancel(cancel::Args),
    /// Shows a vehicle's audit trail: every write and cancel, accepted or
    /// refused, newest first (needs scope audit:read).
    Audit(audit::Args),
    /// Shows the node's counts (connections, sessions, tasks...).
    Stats,
    /// Creates a development PKI: a CA, a server certificate for loopback,
    /// and client certificates for vehicles and services.
    Certs(certs::Args),
    /// Mints a development bearer token (with the key `tether certs` wrote).
    Tokens(tokens::Args),
}

pub(crate) use connect::Server;

/// Runs the CLI as a command (the `tether` binary is this function).
pub fn main() -> ExitCode {
    match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run_command()),
        Err(e) => {
            eprintln!("tether: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run_command() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let output = Output::new(cli.json);
    match run(cli, output).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => report(&error, output),
    }
}

async fn run(cli: Cli, output: Output) -> anyhow::Result<()> {
    let server = Server::new(cli.server, cli.credentials)?;
    let schema = StateSchema::contract();
    match cli.command {
        Command::Set(args) => set::run(&server, &schema, output, args).await,
        Command::Get(args) => get::run(&server.connect().await?, &schema, output, args).await,
        Command::Watch(args) => watch::run(&server.connect().await?, &schema, output, args).await,
        Command::List(args) => list::run(&server.connect().await?, output, args).await,
        Command::Cancel(args) => cancel::run(&server.connect().await?, output, args).await,
        Command::Audit(args) => audit::run(&server.connect().await?, &schema, output, args).await,
        Command::Stats => stats::run(&server.connect().await?, output).await,
        Command::Certs(args) => certs::run(output, args),
        Command::Tokens(args) => tokens::run(output, args),
    }
}

/// Prints `error` and picks the exit status.
fn report(error: &anyhow::Error, output: Output) -> ExitCode {
    if error.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) {
        // The reader went away (`tether list | head`): nothing left to say.
        return ExitCode::SUCCESS;
    }
    if let Some(e) = error.downcast_ref::<values::ValueError>() {
        print_error(output, None, &e.to_string());
        return ExitCode::from(EXIT_USAGE);
    }
    if let Some(e) = error.downcast_ref::<set::NotApplied>() {
        print_error(output, None, &e.to_string());
        return ExitCode::from(EXIT_NOT_APPLIED);
    }
    if let Some(e) = error.downcast_ref::<tether_sdk::Error>() {
        let (code, mut message) = match e {
            tether_sdk::Error::Status(status) if !status.message().is_empty() => {
                (code_name(status.code()), status.message().to_string())
            }
            tether_sdk::Error::Status(status) => (code_name(status.code()), status.code().to_string()),
            tether_sdk::Error::InvalidArgument(message) => ("INVALID_ARGUMENT", message.clone()),
            // `error` is "cannot connect to tetherd at URL"; the causes follow.
            tether_sdk::Error::Transport(e) => ("UNAVAILABLE", causes(&error.to_string(), e)),
            tether_sdk::Error::Io(_) => ("UNKNOWN", format!("{error:#}")),
        };
        // A command's advice on what to do next rides as context.
        if e.status().is_some() && error.chain().count() > 1 {
            message = format!("{message}; {error}");
        }
        print_error(output, Some(code), &message);
        return ExitCode::from(EXIT_ERROR);
    }
    print_error(output, None, &format!("{error:#}"));
    ExitCode::from(EXIT_ERROR)
}

/// `context` followed by `error` and its sources, `: `-separated (a source
/// whose text its error already ends with is not repeated).
fn causes(context: &str, error: &dyn std::error::Error) -> String {
    let mut out = context.to_string();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = e.source();
    }
    out
}
