//! `unclip bench`: throughput of the models on the same inputs the PyTorch scripts in
//! tools/bench/ use (tokenisation and preprocessing not timed). Threads follow
//! RAYON_NUM_THREADS, as candle's CPU kernels do; `--threads` sets it.

use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::{Args, Subcommand};
use std::path::PathBuf;
use std::time::Instant;
use unclip::clip::ClipModel;
use unclip::device::parse_device;
use unclip::tokenizer::ClipTokenizer;

use crate::generate::Precision;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// CLIP text and image embedding throughput (tools/bench/clip_embed.py is the PyTorch side).
    Clip(BenchClipArgs),
    /// One decoder U-Net forward on the inputs tools/bench/unclip_decoder.py --save wrote.
    Decoder(BenchDecoderArgs),
    /// One decoder training step (forward, noise MSE, backward, AdamW) on the same folder.
    DecoderTrain(BenchDecoderArgs),
    /// A whole text-to-image `generate` on a pipeline folder, the model loaded once (warm start);
    /// tools/bench/generate.py runs diffusers' UnCLIPPipeline on the same folder.
    Generate(BenchGenerateArgs),
}

#[derive(Args)]
pub struct BenchGenerateArgs {
    /// A diffusers unCLIP pipeline folder.
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value = "a red circle above a blue square")]
    pub prompt: String,
    #[arg(long, default_value_t = 25)]
    pub prior_steps: usize,
    #[arg(long, default_value_t = 25)]
    pub decoder_steps: usize,
    #[arg(long, default_value_t = 7)]
    pub super_res_steps: usize,
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Convolution products in inference: f32, or bf16 on CPUs with AVX-512 BF16.
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// cpu, or cuda / cuda:N in a build with `--features cuda` (each timed run then waits for
    /// the GPU to finish).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args)]
pub struct BenchDecoderArgs {
    /// The folder `unclip_decoder.py --save DIR` wrote (decoder/ + bench_inputs.safetensors).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    #[arg(long)]
    pub threads: Option<usize>,
    /// Convolution products of the forward: f32, or bf16 on CPUs with AVX-512 BF16 (a training
    /// step is always f32).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// cpu, or cuda / cuda:N in a build with `--features cuda` (each timed run then waits for
    /// the GPU to finish).
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args)]
pub struct BenchClipArgs {
    #[arg(long)]
    pub model: PathBuf,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Seconds per measurement (at least).
    #[arg(long, default_value_t = 3.0)]
    pub min_time: f64,
    #[arg(long, default_value_t = 5)]
    pub min_iters: usize,
    /// Worker threads for candle's CPU kernels (sets RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
}

pub fn run(command: BenchCommand) -> Result<()> {
    let threads = match &command {
        BenchCommand::Clip(args) => args.threads,
        BenchCommand::Decoder(args) | BenchCommand::DecoderTrain(args) => args.threads,
        BenchCommand::Generate(args) => args.threads,
    };
    use_threads(threads);
    unclip::compute_pool::install(|| match command {
        BenchCommand::Clip(args) => clip(args),
        BenchCommand::Decoder(args) => decoder(args),
        BenchCommand::DecoderTrain(args) => decoder_train(args),
        BenchCommand::Generate(args) => generate(args),
    })
}

/// Median and minimum milliseconds of `f` over at least `min_iters` runs and `min_time` seconds.
fn time_it(
    min_time: f64,
    min_iters: usize,
    mut f: impl FnMut() -> Result<()>,
) -> Result<(f64, f64)> {
    f()?; // warm-up
    let mut times = Vec::new();
    let started = Instant::now();
    while times.len() < min_iters || started.elapsed().as_secs_f64() < min_time {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], times[0]))
}

fn clip(args: BenchClipArgs) -> Result<()> {
    if !(1..=1024).contains(&args.batch) {
        bail!("--batch {}; allowed: 1..=1024", args.batch);
    }
    if !(1..=100_000).contains(&args.min_iters) {
        bail!("--min-iters {}; allowed: 1..=100000", args.min_iters);
    }
    if !(args.min_time.is_finite() && (0.0..=3600.0).contains(&args.min_time)) {
        bail!("--min-time {}; allowed: 0 to 3600 seconds", args.min_time);
    }
    let threads = use_threads(args.threads);
    let device = Device::Cpu;
    let model = ClipModel::load(&args.model, &device)?;
    let text_cfg = model.text_config()?.clone();
    let tokenizer =
        ClipTokenizer::load(&args.model)?.with_context_length(text_cfg.max_position_embeddings)?;
    let prompts_file = args.model.join("bench_inputs.json");
    let mut texts: Vec<String> = if prompts_file.is_file() {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&prompts_file)?)
                .with_context(|| format!("reading {}", prompts_file.display()))?;
        v["texts"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    if texts.is_empty() {
        texts = vec!["a photo of a cat sitting on a red chair".to_string()];
    }
    let texts: Vec<String> = texts.iter().cycle().take(args.batch).cloned().collect();
    let (ids, _) = tokenizer.encode_batch(&texts)?.to_tensors(&device)?;
    let vision = model.vision_config()?.clone();
    let pixels = Tensor::randn(
        0f32,
        1.0,
        (args.batch, 3, vision.image_size, vision.image_size),
        &device,
    )?;

    let (median, min) = time_it(args.min_time, args.min_iters, || {
        model.text_features(&ids, None)?;
        Ok(())
    })?;
    print_line("clip_text", threads, args.batch, median, min);
    let (median, min) = time_it(args.min_time, args.min_iters, || {
        model.image_features(&pixels)?;
        Ok(())
    })?;
    print_line("clip_image", threads, args.batch, median, min);
    Ok(())
}

/// The inputs `unclip_decoder.py --save` recorded, as the decoder takes them.
struct DecoderInputs {
    sample: Tensor,
    timestep: Tensor,
    context: Tensor,
    labels: Tensor,
    mask: Tensor,
    output: Tensor,
}

impl DecoderInputs {
    fn load(dir: &std::path::Path, device: &Device) -> Result<Self> {
        let path = dir.join("bench_inputs.safetensors");
        let x = candle_core::safetensors::load(&path, device)
            .with_context(|| format!("reading {}", path.display()))?;
        let get = |k: &str| {
            x.get(k)
                .cloned()
                .with_context(|| format!("{} lacks `{k}`", path.display()))
        };
        let sample = get("sample")?;
        let batch = sample.dim(0)?;
        Ok(Self {
            timestep: get("timestep")?
                .to_dtype(candle_core::DType::F32)?
                .repeat(batch)?,
            sample,
            context: get("encoder_hidden_states")?,
            labels: get("class_labels")?,
            mask: get("attention_mask")?,
            output: get("output")?,
        })
    }

    fn forward(&self, unet: &unclip::models::unet::UNet2DConditionModel) -> Result<Tensor> {
        Ok(unet.forward(
            &self.sample,
            &self.timestep,
            &self.context,
            Some(&self.labels),
            Some(&self.mask),
        )?)
    }
}

/// Sets the CPU thread count before any candle work, and reports it.
fn use_threads(threads: Option<usize>) -> usize {
    if let Some(t) = threads {
        // SAFETY: set before any thread pool exists; this is the process's first candle work.
        unsafe { std::env::set_var("RAYON_NUM_THREADS", t.to_string()) };
    }
    candle_core::utils::get_num_threads()
}

fn decoder(args: BenchDecoderArgs) -> Result<()> {
    let threads = use_threads(args.threads);
    args.precision.apply()?;
    let device = parse_device(&args.device)?;
    let unet =
        unclip::models::unet::UNet2DConditionModel::load(&args.dir.join("decoder"), &device)?;
    let inputs = DecoderInputs::load(&args.dir, &device)?;
    let run = || -> Result<Tensor> {
        let out = inputs.forward(&unet)?;
        device.synchronize()?;
        Ok(out)
    };
    let out = run()?;
    let diff = (&out - &inputs.output)?
        .abs()?
        .flatten_all()?
        .max(0)?
        .to_scalar::<f32>()?;
    let (sample, batch) = (&inputs.sample, inputs.sample.dim(0)?);
    let mut times = Vec::new();
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let line = serde_json::json!({
        "impl": "unclip", "bench": "unclip_decoder_forward", "threads": threads, "batch": batch,
        "precision": if args.precision == Precision::Bf16 { "bf16" } else { "f32" },
        "size": sample.dim(3)?, "runs": times.len(), "median_ms": times[times.len() / 2], "min_ms": times[0],
        "max_abs_diff_vs_pytorch": diff, "device": args.device,
    });
    println!("{line}");
    Ok(())
}

fn decoder_train(args: BenchDecoderArgs) -> Result<()> {
    use unclip::models::unet::UNet2DConditionModel;
    use unclip::train::{gradients, AdamW, AdamWConfig, ParamStore};
    let threads = use_threads(args.threads);
    let device = parse_device(&args.device)?;
    let (cfg, weights) = unclip::checkpoint::read_folder(
        &args.dir.join("decoder"),
        "UNet2DConditionModel",
        &device,
    )?;
    let params = ParamStore::new(0);
    let unet = UNet2DConditionModel::new(&cfg, params.var_builder(&device))?;
    params.load_from(&weights)?;
    let inputs = DecoderInputs::load(&args.dir, &device)?;
    let (sample, batch) = (&inputs.sample, inputs.sample.dim(0)?);
    let noise = Tensor::randn(0f32, 1.0, sample.dims(), &device)?;
    let vars = params.vars();
    let mut optimizer = AdamW::new(
        vars.clone(),
        AdamWConfig {
            weight_decay: 0.0,
            beta2: 0.999,
            eps: 1e-8,
            ..AdamWConfig::default()
        },
    )?;
    let mut step = || -> Result<()> {
        let out = inputs.forward(&unet)?;
        let loss = (out.narrow(1, 0, 3)? - &noise)?.sqr()?.mean_all()?;
        let grads = gradients(&loss.backward()?, &vars);
        optimizer.step(&grads, 1e-4)?;
        device.synchronize()?;
        Ok(())
    };
    step()?;
    let mut times = Vec::new();
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        step()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let line = serde_json::json!({
        "impl": "unclip", "bench": "decoder_train_step", "threads": threads, "batch": batch,
        "median_ms": median, "images_per_s": batch as f64 / (median / 1e3), "device": args.device,
    });
    println!("{line}");
    Ok(())
}

fn generate(args: BenchGenerateArgs) -> Result<()> {
    use unclip::diffusion::NoiseSource;
    use unclip::pipeline::{GenerateOptions, UnclipPipeline};
    let threads = use_threads(args.threads);
    args.precision.apply()?;
    let device = parse_device(&args.device)?;
    let pipeline = UnclipPipeline::load(&args.model, &device)?;
    let opts = GenerateOptions {
        prior_steps: args.prior_steps,
        decoder_steps: args.decoder_steps,
        super_res_steps: args.super_res_steps,
        ..GenerateOptions::default()
    };
    let prompts = [args.prompt.as_str()];
    let run = || -> Result<()> {
        let mut noise = NoiseSource::seeded(0);
        pipeline.generate(&prompts, &opts, &mut noise, &mut |_, _, _| {})?;
        device.synchronize()?;
        Ok(())
    };
    run()?; // warm-up: first-touch allocations, thread pool start
    let mut times = Vec::new();
    for _ in 0..args.runs.max(1) {
        let t = Instant::now();
        run()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let (h, w) = pipeline.output_size()?;
    let line = serde_json::json!({
        "impl": "unclip", "bench": "generate", "threads": threads, "size": [h, w],
        "precision": if args.precision == Precision::Bf16 { "bf16" } else { "f32" },
        "steps": [args.prior_steps, args.decoder_steps, args.super_res_steps],
        "runs": times.len(), "median_ms": times[times.len() / 2], "min_ms": times[0],
        "device": args.device,
    });
    println!("{line}");
    Ok(())
}

fn print_line(what: &str, threads: usize, batch: usize, median_ms: f64, min_ms: f64) {
    let line = serde_json::json!({
        "impl": "unclip",
        "bench": what,
        "threads": threads,
        "batch": batch,
        "items_per_s": batch as f64 / (median_ms / 1e3),
        "median_ms": median_ms,
        "min_ms": min_ms,
    });
    println!("{line}");
}
