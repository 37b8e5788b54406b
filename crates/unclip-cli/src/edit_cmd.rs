//! `unclip invert`, `interpolate`, `textdiff` and `edit`: manipulations of existing images.

use crate::builtin_models::{model_path, DEFAULT_MODEL};
use crate::generate::{numbered, stage_bars};
use anyhow::{bail, Context, Result};
use candle_core::{Device, Tensor};
use clap::Args;
use std::path::{Path, PathBuf};
use unclip::checkpoint::save_safetensors;
use unclip::diffusion::{NoiseSource, Sampler};
use unclip::imageops::{contact_sheet, save_gif, save_png, to_rgb8};
use unclip::pipeline::{
    keep_mask, read_rgba, reconstruction_error, GenerateOptions, UnclipPipeline,
    DEFAULT_INVERSION_REFINEMENTS,
};

/// The settings of inversion and of decoding from the inverted noise.
#[derive(Args)]
pub struct InversionArgs {
    /// A diffusers unCLIP variations folder (with image_encoder/).
    #[arg(long, default_value = DEFAULT_MODEL, value_parser = model_path)]
    pub model: PathBuf,
    /// DDIM steps, the same for the inversion and the decoding.
    #[arg(long, default_value_t = 25)]
    pub steps: usize,
    /// Fixed-point refinements of each inversion step (more: a closer reconstruction).
    #[arg(long, default_value_t = DEFAULT_INVERSION_REFINEMENTS)]
    pub refine: usize,
    /// Decoder guidance (1: unguided, which inverts most exactly).
    #[arg(long, default_value_t = 1.0)]
    pub decoder_guidance: f64,
    #[arg(long, default_value_t = 7)]
    pub super_res_steps: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

impl InversionArgs {
    fn options(&self) -> GenerateOptions {
        GenerateOptions {
            decoder_steps: self.steps,
            decoder_guidance: self.decoder_guidance,
            super_res_steps: self.super_res_steps,
            ..GenerateOptions::default()
        }
    }
}

#[derive(Args)]
pub struct InvertArgs {
    #[command(flatten)]
    pub inversion: InversionArgs,
    #[arg(long)]
    pub image: PathBuf,
    /// Where to write the reconstruction (after the upsamplers).
    #[arg(long, default_value = "recon.png")]
    pub output: PathBuf,
    /// Also write the inverted noise (`x_T`) and the CLIP embedding (`image_embeds`).
    #[arg(long)]
    pub save_noise: Option<PathBuf>,
}

#[derive(Args)]
pub struct InterpolateArgs {
    #[command(flatten)]
    pub inversion: InversionArgs,
    #[arg(long)]
    pub from: PathBuf,
    #[arg(long)]
    pub to: PathBuf,
    /// Frames, both endpoints included (at least 2).
    #[arg(long, default_value_t = 8)]
    pub frames: usize,
    /// Milliseconds per frame of the GIF.
    #[arg(long, default_value_t = 200)]
    pub delay_ms: u32,
    /// Folder for frame-000.png..., sheet.png and interpolation.gif.
    #[arg(long)]
    pub output: PathBuf,
}

#[derive(Args)]
pub struct TextDiffArgs {
    #[command(flatten)]
    pub inversion: InversionArgs,
    #[arg(long)]
    pub image: PathBuf,
    /// The caption that describes the image now.
    #[arg(long)]
    pub from: String,
    /// The caption to move it towards.
    #[arg(long)]
    pub to: String,
    /// Images from theta = 0 (the image) to --max-theta (at least 2).
    #[arg(long = "frames", default_value_t = 5)]
    pub frames: usize,
    /// The largest slerp fraction towards the text diff, in (0, 1] (the paper shows up to 0.5).
    #[arg(long, default_value_t = 0.5)]
    pub max_theta: f64,
    /// Output contact sheet (the frames also go to NAME-0.png, ...).
    #[arg(long, default_value = "textdiff.png")]
    pub output: PathBuf,
}

#[derive(Args)]
pub struct EditArgs {
    /// A diffusers unCLIP pipeline folder with a prior (text-to-image).
    #[arg(long, default_value = DEFAULT_MODEL, value_parser = model_path)]
    pub model: PathBuf,
    #[arg(long)]
    pub image: PathBuf,
    /// Repaint where this image's alpha is 0 (same size as --image); without it, where the
    /// image's own alpha is 0.
    #[arg(long)]
    pub mask: Option<PathBuf>,
    /// What to paint.
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value_t = 1)]
    pub n: usize,
    /// Times each step is redone to harmonise the seam (RePaint's resampling; 1: none).
    #[arg(long, default_value_t = 3)]
    pub resample: usize,
    #[arg(long, default_value_t = 25)]
    pub prior_steps: usize,
    #[arg(long, default_value_t = 25)]
    pub decoder_steps: usize,
    #[arg(long, default_value_t = 7)]
    pub super_res_steps: usize,
    /// [default: the model's sampling.json, else 4]
    #[arg(long)]
    pub prior_guidance: Option<f64>,
    /// [default: the model's sampling.json, else 8]
    #[arg(long)]
    pub decoder_guidance: Option<f64>,
    /// ddpm or ddim.
    #[arg(long, default_value = "ddpm", value_parser = ["ddpm", "ddim"])]
    pub sampler: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output PNG; with n > 1, NAME-0.png, NAME-1.png, ...
    #[arg(long, default_value = "edit.png")]
    pub output: PathBuf,
}

fn load(model: &Path) -> Result<UnclipPipeline> {
    Ok(UnclipPipeline::load(model, &Device::Cpu)?)
}

fn save_all(images: &Tensor, output: &Path) -> Result<Vec<PathBuf>> {
    let rgb = to_rgb8(images)?;
    if rgb.len() == 1 {
        save_png(&rgb[0], output)?;
        return Ok(vec![output.to_path_buf()]);
    }
    let mut written = Vec::new();
    for (i, img) in rgb.iter().enumerate() {
        let path = numbered(output, i);
        save_png(img, &path)?;
        written.push(path);
    }
    Ok(written)
}

pub fn invert(args: InvertArgs) -> Result<()> {
    unclip::imageops::output_format(&args.output)?;
    if args.save_noise.as_ref() == Some(&args.output) {
        bail!(
            "--save-noise and --output are both {}; allowed: two different files",
            args.output.display()
        );
    }
    let pipeline = load(&args.inversion.model)?;
    let opts = args.inversion.options();
    let images = [&args.image];
    let embeddings = pipeline.image_embeddings(&images)?;
    let targets = pipeline.decoder_targets(&images)?;
    let x_t = pipeline.invert(
        &targets,
        &embeddings,
        args.inversion.refine,
        &opts,
        &mut stage_bars(),
    )?;
    if let Some(path) = &args.save_noise {
        save_safetensors(
            &[
                ("x_T".to_string(), x_t.clone()),
                ("image_embeds".to_string(), embeddings.clone()),
            ],
            path,
        )?;
    }
    let mut noise = NoiseSource::seeded(args.inversion.seed);
    let decoded =
        pipeline.decode_inverted(&x_t, &embeddings, 0.0, &opts, &mut noise, &mut stage_bars())?;
    let err = reconstruction_error(&decoded.small, &targets)?;
    save_all(&decoded.images, &args.output)?;
    let (_, _, h, w) = targets.dims4()?;
    println!(
        "reconstruction at the decoder's {w}x{h}: PSNR {:.2} dB, max |error| {:.4} (pixel values in [0, 1])",
        err.psnr_db, err.max_abs
    );
    eprintln!("wrote {}", args.output.display());
    Ok(())
}

pub fn interpolate(args: InterpolateArgs) -> Result<()> {
    if !(2..=64).contains(&args.frames) {
        bail!(
            "--frames {}; allowed: 2..=64 (the two endpoints included)",
            args.frames
        );
    }
    let pipeline = load(&args.inversion.model)?;
    let opts = args.inversion.options();
    let images = [&args.from, &args.to];
    let embeddings = pipeline.image_embeddings(&images)?;
    let targets = pipeline.decoder_targets(&images)?;
    let x_t = pipeline.invert(
        &targets,
        &embeddings,
        args.inversion.refine,
        &opts,
        &mut stage_bars(),
    )?;
    let (zs, xs) = pipeline.interpolation_inputs(&embeddings, &x_t, args.frames)?;
    let mut noise = NoiseSource::seeded(args.inversion.seed);
    let decoded = pipeline.decode_inverted(&xs, &zs, 0.0, &opts, &mut noise, &mut stage_bars())?;
    let frames = to_rgb8(&decoded.images)?;
    std::fs::create_dir_all(&args.output)
        .with_context(|| format!("creating {}", args.output.display()))?;
    for (i, frame) in frames.iter().enumerate() {
        save_png(frame, &args.output.join(format!("frame-{i:03}.png")))?;
    }
    let Some(sheet) = contact_sheet(&frames, frames.len(), 2) else {
        bail!("no frames were produced")
    };
    save_png(&sheet, &args.output.join("sheet.png"))?;
    save_gif(
        &frames,
        args.delay_ms,
        &args.output.join("interpolation.gif"),
    )?;
    eprintln!(
        "wrote {} frames, sheet.png and interpolation.gif to {}",
        frames.len(),
        args.output.display()
    );
    Ok(())
}

pub fn textdiff(args: TextDiffArgs) -> Result<()> {
    unclip::imageops::output_format(&args.output)?;
    if !(2..=64).contains(&args.frames) {
        bail!(
            "--frames {}; allowed: 2..=64 (theta = 0 and --max-theta included)",
            args.frames
        );
    }
    if args.max_theta.is_nan() || args.max_theta <= 0.0 || args.max_theta > 1.0 {
        bail!(
            "--max-theta {}; allowed: greater than 0 and at most 1 (the fraction of the way to the text diff)",
            args.max_theta
        );
    }
    let pipeline = load(&args.inversion.model)?;
    let opts = args.inversion.options();
    let images = [&args.image];
    let embeddings = pipeline.image_embeddings(&images)?;
    let targets = pipeline.decoder_targets(&images)?;
    let x_t = pipeline.invert(
        &targets,
        &embeddings,
        args.inversion.refine,
        &opts,
        &mut stage_bars(),
    )?;
    let thetas: Vec<f64> = (0..args.frames)
        .map(|k| args.max_theta * k as f64 / (args.frames - 1) as f64)
        .collect();
    let zs = pipeline.text_diff_embeddings(&embeddings, &args.from, &args.to, &thetas)?;
    let xs = x_t.repeat((args.frames, 1, 1, 1))?;
    let mut noise = NoiseSource::seeded(args.inversion.seed);
    let decoded = pipeline.decode_inverted(&xs, &zs, 0.0, &opts, &mut noise, &mut stage_bars())?;
    let frames = to_rgb8(&decoded.images)?;
    for (i, frame) in frames.iter().enumerate() {
        save_png(frame, &numbered(&args.output, i))?;
    }
    let Some(sheet) = contact_sheet(&frames, frames.len(), 2) else {
        bail!("no frames were produced")
    };
    save_png(&sheet, &args.output)?;
    let listed: Vec<String> = thetas.iter().map(|t| format!("{t:.3}")).collect();
    eprintln!(
        "wrote {} (theta {}) and its frames",
        args.output.display(),
        listed.join(", ")
    );
    Ok(())
}

pub fn edit(args: EditArgs) -> Result<()> {
    unclip::imageops::output_format(&args.output)?;
    let image = read_rgba(&args.image)?;
    let mask = args.mask.as_deref().map(read_rgba).transpose()?;
    let keep = keep_mask(&image, mask.as_ref(), &Device::Cpu)?;
    let pipeline = load(&args.model)?;
    let model_defaults = GenerateOptions::for_model(&args.model)?;
    let opts = GenerateOptions {
        images_per_prompt: args.n,
        prior_steps: args.prior_steps,
        decoder_steps: args.decoder_steps,
        super_res_steps: args.super_res_steps,
        prior_guidance: args.prior_guidance.unwrap_or(model_defaults.prior_guidance),
        decoder_guidance: args
            .decoder_guidance
            .unwrap_or(model_defaults.decoder_guidance),
        sampler: Sampler::parse(&args.sampler, 0.0)?,
        ..model_defaults
    };
    let mut noise = NoiseSource::seeded(args.seed);
    let images = pipeline.inpaint(
        &image,
        &keep,
        &args.prompt,
        args.resample,
        &opts,
        &mut noise,
        &mut stage_bars(),
    )?;
    let written = save_all(&images, &args.output)?;
    let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
    eprintln!("wrote {}", names.join(", "));
    Ok(())
}
