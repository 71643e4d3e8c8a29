//! Logging of the example programs: `tracing` to stderr, filtered by
//! `RUST_LOG` or the program's default, so stdout keeps only their results.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// Installs the global subscriber: `RUST_LOG` if set, `default_filter`
/// otherwise (e.g. `"info,tether_sdk=warn"`).
pub fn init(default_filter: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}
