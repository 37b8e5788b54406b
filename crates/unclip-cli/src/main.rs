//! The `unclip` command: parses arguments, calls the library, formats the result.

mod bench;
mod builtin_models;
mod cli;
mod commands;
mod data_cmd;
mod edit_cmd;
mod eval_cmd;
mod generate;
mod progress;
mod serve_cmd;
mod train_cmd;

use clap::Parser;

/// candle allocates a fresh buffer for every tensor op; glibc's malloc returns large ones to the
/// kernel at once and faults them back in on the next op (a third of training time went to the
/// kernel). mimalloc keeps them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
use std::process::ExitCode;

fn main() -> ExitCode {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("UNCLIP_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    match commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
