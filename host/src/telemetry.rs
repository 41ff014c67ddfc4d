//! Logs: `tracing` events to stderr, filtered by `BERTH_LOG` (same syntax as
//! `RUST_LOG`; default `info`). Guest stdout/stderr lines arrive with target
//! `guest` and the fields `service`, `invocation` and `stream`.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber. Calling it twice is harmless.
pub fn init() {
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
