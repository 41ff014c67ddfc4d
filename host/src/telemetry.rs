//! Logs: `tracing` events to stderr, filtered by `BERTH_LOG` (same syntax as
//! `RUST_LOG`; default `info`), as text for people or as JSON, one object
//! per line, for machines (`--log-format json`).
//!
//! Every invocation runs in a span named `invocation` (see
//! [`crate::invoke::span`]) and ends with one event of target
//! `berth::invocation`; `BERTH_LOG=info,berth::invocation=off` silences
//! those. Guest stdout/stderr lines arrive with target `guest` and the
//! fields `service`, `invocation` and `stream`.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields`
    /// (the message among them), and `span`, the fields of the span the
    /// event happened in (the invocation's, for everything about one).
    Json,
}

/// Installs the global subscriber. Calling it twice is harmless.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("BERTH_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
}
