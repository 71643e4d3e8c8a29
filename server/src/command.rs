//! The `tetherd` command: load and validate the whole config (file, env,
//! flags), start, run until SIGINT or SIGTERM, shut down gracefully.

use std::process::ExitCode;

use crate::config::{ConfigError, load};
use tracing_subscriber::EnvFilter;

/// Runs tetherd as a command (the `tetherd` binary is this function).
pub fn main() -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(run()),
        Err(e) => {
            eprintln!("tetherd: cannot start the runtime: {e}");
            ExitCode::from(1)
        }
    }
}

async fn run() -> ExitCode {
    let loaded = match load(std::env::args_os()) {
        Ok(loaded) => loaded,
        Err(ConfigError::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("tetherd: {e}");
            return ExitCode::from(2);
        }
    };
    if loaded.config.print_config {
        print!("{}", loaded.render());
        return ExitCode::SUCCESS;
    }
    let config = loaded.config;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
    let server = match crate::start(config).await {
        Ok(server) => server,
        Err(e) => {
            eprintln!("tetherd: {e}");
            return ExitCode::from(1);
        }
    };
    eprintln!("tetherd: listening on {} — stop with Ctrl-C", server.local_addr());
    if let Some(admin) = server.admin_addr() {
        eprintln!("tetherd: metrics on http://{admin}/metrics");
    }
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
