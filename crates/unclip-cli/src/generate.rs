//! `unclip generate` and `unclip vary`: parse, run the pipeline, write PNGs.

use crate::builtin_models::{model_path, DEFAULT_MODEL};
use crate::progress;
use anyhow::{bail, Result};
use clap::Args;
use indicatif::ProgressBar;
use std::path::{Path, PathBuf};
use unclip::device::parse_device;
use unclip::diffusion::{NoiseSource, Sampler};
use unclip::imageops::{contact_sheet, save_image_tensor, save_png, to_rgb8};
use unclip::pipeline::{GenerateOptions, Stage, UnclipPipeline};

#[derive(Args)]
pub struct SamplingArgs {
    /// Images per prompt (or per input image).
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// [default: the model's sampling.json, else 25]
    #[arg(long)]
    pub decoder_steps: Option<usize>,
    /// [default: the model's sampling.json, else 7]
    #[arg(long)]
    pub super_res_steps: Option<usize>,
    /// [default: the model's sampling.json, else 8]
    #[arg(long)]
    pub decoder_guidance: Option<f64>,
    /// ddpm (the reference's ancestral sampler), ddim or dpm++.
    #[arg(long, default_value = "ddpm", value_parser = ["ddpm", "ddim", "dpm++"])]
    pub sampler: String,
    /// DDIM's eta, 0..=1 (0, the default: deterministic); only with --sampler ddim or
    /// vary --invert.
    #[arg(long)]
    pub eta: Option<f64>,
    /// Replay recorded draws (safetensors with noise.000, noise.001, ...) instead of --seed.
    #[arg(long)]
    pub noise_tape: Option<PathBuf>,
    /// Also write the float images (tensor `image`, [N, H, W, 3] in [0, 1]) to this file.
    #[arg(long)]
    pub save_tensor: Option<PathBuf>,
    /// Write one contact sheet instead of numbered files when n > 1.
    #[arg(long)]
    pub grid: bool,
    /// Output image, PNG unless the name ends in .jpg, .jpeg or .webp; with several images,
    /// NAME-0.png, NAME-1.png, ...
    #[arg(long, default_value = "out.png")]
    pub output: PathBuf,
    /// Convolution products: f32, or bf16 on CPUs with AVX-512 BF16 (faster; inputs and weights
    /// rounded to 8 significant bits, sums in f32: see docs/benchmarks.md for the drift).
    #[arg(long, value_enum, default_value_t = Precision::F32)]
    pub precision: Precision,
    /// Where to compute: cpu, or cuda / cuda:N in a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

/// `--precision`: how convolution products are computed in inference.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    /// Sets it for the rest of the process; bf16 on a CPU without AVX-512 BF16 is an error.
    pub fn apply(self) -> Result<()> {
        let precision = match self {
            Precision::F32 => unclip::nn::MatmulPrecision::Highest,
            Precision::Bf16 => unclip::nn::MatmulPrecision::Bf16,
        };
        unclip::nn::set_float32_matmul_precision(precision)?;
        Ok(())
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    /// A diffusers unCLIP pipeline folder (Karlo's layout), or a built-in model's name
    /// (emoji, shapes).
    #[arg(long, default_value = DEFAULT_MODEL, value_parser = model_path)]
    pub model: PathBuf,
    /// The prompt. Words given without quotes are one prompt (`generate a red apple` is "a red
    /// apple"); a batch of prompts is --prompt repeated.
    #[arg(value_name = "PROMPT")]
    pub prompt_words: Vec<String>,
    /// One prompt of a batch (repeatable); used with a positional prompt, that one comes first.
    #[arg(long = "prompt")]
    pub prompts: Vec<String>,
    /// [default: the model's sampling.json, else 25]
    #[arg(long)]
    pub prior_steps: Option<usize>,
    /// [default: the model's sampling.json, else 4]
    #[arg(long)]
    pub prior_guidance: Option<f64>,
    /// Draw this many prior samples and keep the one closest to the text (the paper uses 2).
    #[arg(long, default_value_t = 1)]
    pub prior_candidates: usize,
    /// Decode this many images per image and keep the one CLIP finds closest to the prompt
    /// (its ranker/ CLIP if it has one, else its image_encoder/) [default: the model's
    /// sampling.json, else 1]
    #[arg(long)]
    pub image_candidates: Option<usize>,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

#[derive(Args)]
pub struct VaryArgs {
    /// A diffusers unCLIP variations folder (with image_encoder/), or a built-in model's name.
    #[arg(long, default_value = DEFAULT_MODEL, value_parser = model_path)]
    pub model: PathBuf,
    /// Input image (repeat for several).
    #[arg(long = "image", required = true)]
    pub images: Vec<PathBuf>,
    /// Vary as the paper does: invert each image to the decoder's noise, then decode it with
    /// DDIM and --eta (0 reproduces the image, 1 the most varied); --sampler is then ignored
    /// for the decoder.
    #[arg(long)]
    pub invert: bool,
    /// Fixed-point refinements of each inversion step (with --invert).
    #[arg(long, default_value_t = unclip::pipeline::DEFAULT_INVERSION_REFINEMENTS, requires = "invert")]
    pub refine: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

/// The model's sampling defaults (`sampling.json`, else Karlo's) with the flags given applied.
/// `inverting`: vary --invert, whose decoder takes --eta whatever --sampler says.
fn options(model: &Path, s: &SamplingArgs, inverting: bool) -> Result<GenerateOptions> {
    let d = GenerateOptions::for_model(model)?;
    let sampler = if inverting {
        Sampler::parse(&s.sampler, s.eta.unwrap_or(0.0))?
    } else {
        sampler_with_eta(&s.sampler, s.eta)?
    };
    Ok(GenerateOptions {
        images_per_prompt: s.n,
        decoder_steps: s.decoder_steps.unwrap_or(d.decoder_steps),
        super_res_steps: s.super_res_steps.unwrap_or(d.super_res_steps),
        decoder_guidance: s.decoder_guidance.unwrap_or(d.decoder_guidance),
        sampler,
        ..d
    })
}

/// `--sampler` with `--eta`, refusing an eta the sampler would ignore: ddpm draws with the
/// config's variance and dpm++ draws none, so only ddim has an eta.
pub fn sampler_with_eta(name: &str, eta: Option<f64>) -> Result<Sampler> {
    match eta {
        Some(_) if name != "ddim" => bail!(
            "--eta applies to --sampler ddim only (and to vary --invert); the sampler is {name}"
        ),
        eta => Ok(Sampler::parse(name, eta.unwrap_or(0.0))?),
    }
}

fn noise(s: &SamplingArgs) -> Result<NoiseSource> {
    Ok(match &s.noise_tape {
        Some(path) => NoiseSource::tape(path)?,
        None => NoiseSource::seeded(s.seed),
    })
}

/// A progress bar per stage, replaced when the next stage starts.
pub(crate) fn stage_bars() -> impl FnMut(Stage, usize, usize) {
    let mut current: Option<(Stage, ProgressBar)> = None;
    move |stage, done, total| {
        if current.as_ref().map(|(s, _)| *s) != Some(stage) {
            if let Some((_, bar)) = current.take() {
                bar.finish();
            }
            current = Some((
                stage,
                progress::bar(total as u64, &format!("{:<9}", stage.name())),
            ));
        }
        if let Some((_, bar)) = &current {
            bar.set_position(done as u64);
            if done == total {
                bar.finish();
            }
        }
    }
}

pub(crate) fn numbered(path: &Path, i: usize) -> PathBuf {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let ext = path
        .extension()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "png".into());
    path.with_file_name(format!("{stem}-{i}.{ext}"))
}

fn write_outputs(images: &candle_core::Tensor, s: &SamplingArgs) -> Result<()> {
    if let Some(path) = &s.save_tensor {
        save_image_tensor(images, path)?;
    }
    let rgb = to_rgb8(images)?;
    let written: Vec<PathBuf> = if rgb.len() == 1 {
        save_png(&rgb[0], &s.output)?;
        vec![s.output.clone()]
    } else if s.grid {
        let columns = (rgb.len() as f64).sqrt().ceil() as usize;
        let Some(sheet) = contact_sheet(&rgb, columns, 2) else {
            bail!("no images were produced")
        };
        save_png(&sheet, &s.output)?;
        vec![s.output.clone()]
    } else {
        let mut paths = Vec::new();
        for (i, img) in rgb.iter().enumerate() {
            let path = numbered(&s.output, i);
            save_png(img, &path)?;
            paths.push(path);
        }
        paths
    };
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    eprintln!("wrote {}", names.join(", "));
    Ok(())
}

pub fn generate(args: GenerateArgs) -> Result<()> {
    unclip::imageops::output_format(&args.sampling.output)?;
    // A shell splits an unquoted prompt into words; they were meant as one prompt.
    let positional = (!args.prompt_words.is_empty()).then(|| args.prompt_words.join(" "));
    let prompts: Vec<String> = positional.into_iter().chain(args.prompts).collect();
    if prompts.is_empty() {
        bail!("no prompt: give one, as in `unclip generate \"a red apple\"`, or --prompt T");
    }
    args.sampling.precision.apply()?;
    let pipeline = UnclipPipeline::load(&args.model, &parse_device(&args.sampling.device)?)?;
    let base = options(&args.model, &args.sampling, false)?;
    let opts = GenerateOptions {
        prior_steps: args.prior_steps.unwrap_or(base.prior_steps),
        prior_guidance: args.prior_guidance.unwrap_or(base.prior_guidance),
        prior_candidates: args.prior_candidates,
        image_candidates: args.image_candidates.unwrap_or(base.image_candidates),
        ..base
    };
    let mut noise = noise(&args.sampling)?;
    let images = pipeline.generate(&prompts, &opts, &mut noise, &mut stage_bars())?;
    warn_unused_tape(&noise);
    write_outputs(&images, &args.sampling)
}

pub fn vary(args: VaryArgs) -> Result<()> {
    unclip::imageops::output_format(&args.sampling.output)?;
    args.sampling.precision.apply()?;
    let pipeline = UnclipPipeline::load(&args.model, &parse_device(&args.sampling.device)?)?;
    let opts = options(&args.model, &args.sampling, args.invert)?;
    let mut noise = noise(&args.sampling)?;
    let images = if args.invert {
        pipeline
            .vary_inverted(
                &args.images,
                args.sampling.eta.unwrap_or(0.0),
                args.refine,
                &opts,
                &mut noise,
                &mut stage_bars(),
            )?
            .images
    } else {
        pipeline.vary(&args.images, &opts, &mut noise, &mut stage_bars())?
    };
    warn_unused_tape(&noise);
    write_outputs(&images, &args.sampling)
}

fn warn_unused_tape(noise: &NoiseSource) {
    if noise.remaining() > 0 {
        eprintln!(
            "warning: {} recorded draws were not used; the settings differ from the recording",
            noise.remaining()
        );
    }
}
