//! The `unclip` command: parses arguments, calls the library, formats the result.

mod bench;
mod builtin_models;
mod cli;
mod commands;
mod data_cmd;
mod edit_cmd;
mod eval_cmd;
mod generate;
mod out_folder;
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
    keep_candle_elementwise_on_the_compute_pool();
    keep_freed_memory();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("UNCLIP_LOG").unwrap_or_else(|_| "warn".into());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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

/// candle runs large elementwise ops on a second pool of its own whose threads spin for a while
/// after every op. Beside the compute pool that is one thread per core too many: during a
/// training step at 2 threads on 2 cores its spinning was 11% of the profile's samples; without
/// that pool the step is no slower (0.98x, the elementwise ops then run on one thread) and
/// sampling is unchanged. One candle thread means no such pool; a user's own
/// `CANDLE_NUM_THREADS` still wins.
fn keep_candle_elementwise_on_the_compute_pool() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the first statement of main, before any other thread exists.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}

/// mimalloc's `mi_option_purge_delay` (its position in `mi_option_t`, mimalloc.h, v2 and v3).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc hands freed memory back to the kernel 10 ms after it falls free, and the next
/// step's tensors fault it back in, each 2 MB page zeroed by the kernel first. In a 2-thread
/// decoder training step that zeroing was 17% of the profile's samples; never purging took the
/// page faults of 5 steps from ~50,000 to ~1,100, and the step to 0.89x and 0.95x the time in two
/// interleaved A/B runs at 2 threads (0.99x at 1; `generate` 0.95x at 2). A one-second delay did
/// not help: the faults stayed. The price is that a job (the server too) keeps its peak memory
/// until it exits. A user's own `MIMALLOC_PURGE_DELAY` still wins.
fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; mimalloc reads it at its next purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}
