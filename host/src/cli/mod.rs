//! The `berth` command line: one module per command.

mod up;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Berth: a WebAssembly host for microservices and functions.
#[derive(Debug, Parser)]
#[command(name = "berth", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the services of a manifest in the foreground.
    Up(up::UpArgs),
}

/// Parses the command line, runs the command, and turns its error into a
/// message on stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    crate::telemetry::init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth-worker")
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Up(args) => up::run(args).await,
        }
    });
    // Invocations still running past the drain limit are abandoned here.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
