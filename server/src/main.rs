//! The `tetherd` binary: parse the whole config, start, run until SIGINT or
//! SIGTERM, shut down gracefully.

use std::process::ExitCode;

use clap::Parser;
use tetherd::Config;
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    if let Err(e) = config.validate() {
        eprintln!("tetherd: invalid configuration: {e}");
        return ExitCode::from(2);
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let server = match tetherd::start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("tetherd: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("tetherd: listening on {} — stop with Ctrl-C", server.local_addr());
    wait_for_signal().await;
    server.shutdown().await;
    ExitCode::SUCCESS
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
