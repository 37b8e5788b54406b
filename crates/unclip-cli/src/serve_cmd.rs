//! `unclip serve`: the OpenAI Images API over HTTP (crates/unclip-server).

use crate::builtin_models::{model_path, DEFAULT_MODEL};
use anyhow::{bail, Result};
use clap::Args;
use std::path::PathBuf;
use std::time::Duration;
use unclip::pipeline::GenerateOptions;
use unclip_server::{ApiKeys, BatchPolicy, ServerConfig};

#[derive(Args)]
pub struct ServeArgs {
    /// A diffusers unCLIP pipeline folder: prior/ serves generations and edits, image_encoder/
    /// variations.
    #[arg(long, default_value = DEFAULT_MODEL, value_parser = model_path)]
    pub model: PathBuf,
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// Accepted Bearer keys, one per line (# comments allowed). Without it no key is needed.
    #[arg(long)]
    pub api_key_file: Option<PathBuf>,
    /// Most images generated in one shared batch (1: no batching).
    #[arg(long, default_value_t = 8)]
    pub max_batch: usize,
    /// Requests that may wait for the model; more are answered 429 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// How long the first request of a batch waits for others, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub batch_wait_ms: u64,
    #[arg(long, default_value_t = 25)]
    pub prior_steps: usize,
    #[arg(long, default_value_t = 25)]
    pub decoder_steps: usize,
    #[arg(long, default_value_t = 7)]
    pub super_res_steps: usize,
    /// Requests taking longer than this (seconds, queueing included) are answered 408.
    #[arg(long, default_value_t = 300)]
    pub request_timeout: u64,
    /// How long `response_format: "url"` links work, in seconds.
    #[arg(long, default_value_t = 3600)]
    pub url_ttl: u64,
    /// Connections served at once; more wait (in the listen queue) until one closes.
    #[arg(long, default_value_t = 256)]
    pub max_connections: usize,
    /// Seconds a connection has to send its request headers (after opening, or after its
    /// previous response when kept alive) before it is closed.
    #[arg(long, default_value_t = 30)]
    pub header_read_timeout: u64,
    /// Times each edit (inpainting) step is redone to blend the repainted region (1: none).
    #[arg(long, default_value_t = 3)]
    pub edit_resample: usize,
    /// Convolution products: f32, or bf16 on CPUs with AVX-512 BF16 (faster, slightly
    /// different images: see docs/benchmarks.md).
    #[arg(long, value_enum, default_value_t = crate::generate::Precision::F32)]
    pub precision: crate::generate::Precision,
}

pub fn serve(args: ServeArgs) -> Result<()> {
    args.precision.apply()?;
    if args.max_batch == 0 || args.max_queue == 0 {
        bail!("--max-batch and --max-queue must be at least 1");
    }
    if !(1..=unclip_server::MAX_CONNECTIONS_LIMIT).contains(&args.max_connections) {
        bail!(
            "--max-connections {}; allowed: 1..={}",
            args.max_connections,
            unclip_server::MAX_CONNECTIONS_LIMIT
        );
    }
    // A deadline is now + the duration: past about a year, the sum can overflow the clock.
    const YEAR: u64 = 365 * 24 * 3600;
    for (flag, seconds) in [
        ("--header-read-timeout", args.header_read_timeout),
        ("--request-timeout", args.request_timeout),
        ("--url-ttl", args.url_ttl),
    ] {
        if !(1..=YEAR).contains(&seconds) {
            bail!("{flag} {seconds}; allowed: 1..={YEAR} seconds (a year)");
        }
    }
    if args.batch_wait_ms > 60_000 {
        bail!(
            "--batch-wait-ms {}; allowed: 0..=60000 (a minute: the first request of a batch \
             waits this long for others)",
            args.batch_wait_ms
        );
    }
    if !(1..=20).contains(&args.edit_resample) {
        bail!(
            "--edit-resample {}; allowed: 1..=20 (1: no resampling)",
            args.edit_resample
        );
    }
    let api_keys = match &args.api_key_file {
        Some(path) => ApiKeys::load(path)?,
        None => ApiKeys::default(),
    };
    let config = ServerConfig {
        options: GenerateOptions {
            prior_steps: args.prior_steps,
            decoder_steps: args.decoder_steps,
            super_res_steps: args.super_res_steps,
            // Guidance as the model folder recommends (sampling.json), else Karlo's.
            ..GenerateOptions::for_model(&args.model)?
        },
        api_keys,
        batch: BatchPolicy {
            max_batch: args.max_batch,
            batch_wait: Duration::from_millis(args.batch_wait_ms),
        },
        max_queue: args.max_queue,
        request_timeout: Duration::from_secs(args.request_timeout),
        url_ttl: Duration::from_secs(args.url_ttl),
        max_connections: args.max_connections,
        header_read_timeout: Duration::from_secs(args.header_read_timeout),
        edit_resamples: args.edit_resample,
        ..ServerConfig::new(&args.model)
    };
    unclip_server::serve_blocking(config, &args.addr)?;
    Ok(())
}
