//! `unclip eval ...`: score a pipeline on the shapes world or on captioned data, or a CLIP on
//! shapes prompts against their hard negatives.

use crate::builtin_models::model_path;
use crate::generate::sampler_with_eta;
use crate::progress;
use anyhow::{bail, Result};
use candle_core::Device;
use clap::{Args, Subcommand, ValueEnum};
use std::path::{Path, PathBuf};
use unclip::data::shapes::{read_prompt_file, Form};
use unclip::data::DataSource;
use unclip::device::parse_device;
use unclip::eval::{
    evaluate_captions, evaluate_clip_shapes, evaluate_shapes, CaptionScores, CaptionsEvalOptions,
    CaptionsReport, ClipShapesOptions, EvalStart, ShapesEvalOptions, ShapesScore, VerdictFolder,
};
use unclip::pipeline::{ClipEmbedder, GenerateOptions, UnclipPipeline};

#[derive(Subcommand)]
pub enum EvalCommand {
    /// Compositional accuracy on shapes-world prompts, judged exactly by the checker
    /// (docs/shapes-world.md): per form (single, counting, pair, relation), colors, binding, overall.
    Shapes(EvalShapesArgs),
    /// CLIP score, R-precision and Fréchet distance of images generated from a dataset's
    /// captions, beside the same numbers for its real images (the ceiling).
    Captions(EvalCaptionsArgs),
    /// Whether a model's CLIP tells shapes prompts from their hard negatives (objects of a
    /// relation exchanged, colors of a pair exchanged, counts changed): for rendered scenes of
    /// each prompt, the share of negatives the prompt outscores (0.5 is chance).
    ShapesClip(EvalShapesClipArgs),
}

/// Sampling settings; each one left out keeps the pipeline default (`unclip generate`'s).
#[derive(Args)]
pub struct EvalSamplingArgs {
    /// [default: the model's sampling.json, else 25]
    #[arg(long)]
    pub prior_steps: Option<usize>,
    /// [default: the model's sampling.json, else 25]
    #[arg(long)]
    pub decoder_steps: Option<usize>,
    /// [default: the model's sampling.json, else 7]
    #[arg(long)]
    pub super_res_steps: Option<usize>,
    /// [default: the model's sampling.json, else 4]
    #[arg(long)]
    pub prior_guidance: Option<f64>,
    /// [default: the model's sampling.json, else 8]
    #[arg(long)]
    pub decoder_guidance: Option<f64>,
    /// ddpm, ddim or dpm++.
    #[arg(long, value_parser = ["ddpm", "ddim", "dpm++"])]
    pub sampler: Option<String>,
    /// DDIM's eta, 0..=1 (0, the default: deterministic); only with --sampler ddim.
    #[arg(long)]
    pub eta: Option<f64>,
    /// Draw this many prior samples and keep the one closest to the text (the paper uses 2)
    /// [default: 1]
    #[arg(long)]
    pub prior_candidates: Option<usize>,
    /// Decode this many images per image and keep the one CLIP finds closest to the prompt
    /// (its ranker/ CLIP if it has one, else its image_encoder/) [default: the model's
    /// sampling.json, else 1]
    #[arg(long)]
    pub image_candidates: Option<usize>,
    /// Where to compute: cpu, or cuda / cuda:N in a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl EvalSamplingArgs {
    /// The model's sampling defaults (`sampling.json`, else Karlo's) with the flags given applied.
    fn options(&self, model: &Path) -> Result<GenerateOptions> {
        let d = GenerateOptions::for_model(model)?;
        let sampler = match (&self.sampler, self.eta) {
            (Some(name), eta) => sampler_with_eta(name, eta)?,
            (None, Some(_)) => {
                bail!("--eta applies to --sampler ddim only; no --sampler was given")
            }
            (None, None) => d.sampler,
        };
        Ok(GenerateOptions {
            prior_steps: self.prior_steps.unwrap_or(d.prior_steps),
            decoder_steps: self.decoder_steps.unwrap_or(d.decoder_steps),
            super_res_steps: self.super_res_steps.unwrap_or(d.super_res_steps),
            prior_guidance: self.prior_guidance.unwrap_or(d.prior_guidance),
            decoder_guidance: self.decoder_guidance.unwrap_or(d.decoder_guidance),
            prior_candidates: self.prior_candidates.unwrap_or(d.prior_candidates),
            image_candidates: self.image_candidates.unwrap_or(d.image_candidates),
            sampler,
            ..d
        })
    }
}

#[derive(Args)]
pub struct EvalShapesArgs {
    /// A diffusers unCLIP pipeline folder.
    #[arg(long, value_parser = model_path)]
    pub model: PathBuf,
    /// Prompt file: one shapes-world prompt per line (blank lines and # comments skipped),
    /// e.g. models/shapes/eval-prompts.txt.
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub images_per_prompt: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the score as JSON.
    #[arg(long)]
    pub json: bool,
    /// Keep every image here, named PPPP-K-pass.png / -fail.png, with verdicts.json.
    #[arg(long)]
    pub save_dir: Option<PathBuf>,
    /// Where the judged images start, to find which stage loses the accuracy: the prompt
    /// (the whole pipeline), or rendered scenes of it: their CLIP image embeddings decoded with
    /// the prompt (no prior), the scenes at the decoder's resolution through the upsamplers (a
    /// perfect decoder), or the scenes themselves (the checker's ceiling).
    #[arg(long, value_enum, default_value_t = Start::Prompt)]
    pub start: Start,
    #[command(flatten)]
    pub sampling: EvalSamplingArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum Start {
    Prompt,
    ImageEmbedding,
    DecoderSample,
    Scene,
}

impl From<Start> for EvalStart {
    fn from(start: Start) -> Self {
        match start {
            Start::Prompt => EvalStart::Prompt,
            Start::ImageEmbedding => EvalStart::ImageEmbedding,
            Start::DecoderSample => EvalStart::DecoderSample,
            Start::Scene => EvalStart::Scene,
        }
    }
}

#[derive(Args)]
pub struct EvalCaptionsArgs {
    /// A diffusers unCLIP pipeline folder with its CLIP image tower (image_encoder/).
    #[arg(long, value_parser = model_path)]
    pub model: PathBuf,
    /// Held-out captioned data: an image folder with .txt captions or WebDataset shards.
    #[arg(long)]
    pub data: String,
    /// Pairs to evaluate (100 gives R-precision its 99 distractors).
    #[arg(long, default_value_t = 100)]
    pub limit: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Captions generated per pipeline call.
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub sampling: EvalSamplingArgs,
}

#[derive(Args)]
pub struct EvalShapesClipArgs {
    /// A pipeline folder (its text_encoder/ and image_encoder/) or a CLIPModel folder.
    #[arg(long, value_parser = model_path)]
    pub model: PathBuf,
    /// Prompt file, as for `eval shapes`.
    #[arg(long)]
    pub prompts: PathBuf,
    #[arg(long, default_value_t = 4)]
    pub scenes_per_prompt: usize,
    #[arg(long, default_value_t = 4)]
    pub negatives_per_prompt: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Print the score as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(command: EvalCommand) -> Result<()> {
    match command {
        EvalCommand::Shapes(args) => shapes(args),
        EvalCommand::Captions(args) => captions(args),
        EvalCommand::ShapesClip(args) => shapes_clip(args),
    }
}

fn shapes_clip(args: EvalShapesClipArgs) -> Result<()> {
    let prompts = read_prompt_file(&args.prompts)?;
    let clip = ClipEmbedder::load(&args.model, &Device::Cpu)?;
    let opts = ClipShapesOptions {
        scenes_per_prompt: args.scenes_per_prompt,
        negatives_per_prompt: args.negatives_per_prompt,
        seed: args.seed,
    };
    let score = evaluate_clip_shapes(&clip, &prompts, &opts)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&score)?);
        return Ok(());
    }
    for form in Form::ALL {
        match score.per_form.get(&form) {
            Some(f) => println!(
                "{:<9} {:.3}  ({}/{} comparisons won)",
                form.name(),
                f.accuracy,
                f.won,
                f.comparisons
            ),
            None => println!("{:<9} -      (no prompts of this form)", form.name()),
        }
    }
    println!(
        "{:<9} {:.3}  (mean of the per-form accuracies; 0.5 is chance)",
        "overall", score.overall
    );
    println!("by what the negative changed:");
    for (kind, f) in &score.per_negative {
        println!(
            "{:<9} {:.3}  ({}/{})",
            kind.name(),
            f.accuracy,
            f.won,
            f.comparisons
        );
    }
    if let (Some(r), Some(c)) = (&score.relation_word, &score.color_word) {
        println!(
            "what the decoder reads (text tower token states; cosine, 1 = the same), {} relation prompts:",
            r.prompts
        );
        println!("{:<34} at the word  after it  pooled", "");
        for (name, w) in [
            ("relation word -> its opposite", r),
            ("first color -> another color", c),
        ] {
            println!(
                "{name:<34} {:.3}        {:.3}     {:.4}",
                w.at_the_word, w.after_the_word, w.pooled
            );
        }
    }
    Ok(())
}

fn shapes(args: EvalShapesArgs) -> Result<()> {
    if !(1..=64).contains(&args.images_per_prompt) {
        bail!(
            "--images-per-prompt {}; allowed: 1..=64",
            args.images_per_prompt
        );
    }
    let prompts = read_prompt_file(&args.prompts)?;
    let opts = ShapesEvalOptions {
        images_per_prompt: args.images_per_prompt,
        seed: args.seed,
        start: args.start.into(),
        generate: args.sampling.options(&args.model)?,
    };
    let mut folder = args
        .save_dir
        .as_deref()
        .map(VerdictFolder::create)
        .transpose()?;
    let pipeline = UnclipPipeline::load(&args.model, &parse_device(&args.sampling.device)?)?;
    let total = prompts.len() * args.images_per_prompt;
    let bar = progress::bar(total as u64, "images");
    let (score, verdicts) = evaluate_shapes(&pipeline, &prompts, &opts, &mut |judged| {
        bar.inc(1);
        match folder.as_mut() {
            Some(folder) => folder.save(judged),
            None => Ok(()),
        }
    })?;
    bar.finish();
    if let Some(folder) = &folder {
        let path = folder.finish(&score, &verdicts)?;
        eprintln!("wrote the images and {}", path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&score)?);
    } else {
        println!("{}", describe_shapes(&score));
    }
    Ok(())
}

fn describe_shapes(score: &ShapesScore) -> String {
    let mut lines = vec![format!("{} images", score.images)];
    for form in Form::ALL {
        lines.push(match score.per_form.get(&form) {
            Some(f) => format!(
                "{:<9} {:.3}  ({}/{})",
                form.name(),
                f.accuracy,
                f.passed,
                f.images
            ),
            None => format!("{:<9} -      (no prompts of this form)", form.name()),
        });
    }
    lines.push(format!("{:<9} {:.3}", "colors", score.colors));
    lines.push(match score.binding {
        Some(b) => format!("{:<9} {b:.3}", "binding"),
        None => format!("{:<9} -      (no pair or relation prompts)", "binding"),
    });
    if let Some(p) = &score.placement {
        lines.push(format!(
            "{:<9} {:.3}  ({}/{} relation images with both objects found, shapes aside: {} the wrong way round, {} sideways or too close; blind placement scores about 0.25)",
            "placement", p.accuracy, p.right, p.images, p.reversed, p.sideways
        ));
    }
    lines.push(format!(
        "{:<9} {:.3}  (mean of the per-form accuracies)",
        "overall", score.overall
    ));
    if !score.failures.is_empty() {
        lines.push("failed images, by what was wrong:".to_string());
    }
    for (form, kinds) in &score.failures {
        let failed: usize = kinds.values().sum();
        let each: Vec<String> = kinds
            .iter()
            .map(|(kind, n)| format!("{} {n}", kind.name().replace('_', " ")))
            .collect();
        lines.push(format!("{:<9} {failed}: {}", form.name(), each.join(", ")));
    }
    lines.join("\n")
}

fn captions(args: EvalCaptionsArgs) -> Result<()> {
    let source = DataSource::open(&args.data)?;
    let opts = CaptionsEvalOptions {
        limit: args.limit,
        seed: args.seed,
        batch: args.batch,
        generate: args.sampling.options(&args.model)?,
    };
    let pipeline = UnclipPipeline::load(&args.model, &parse_device(&args.sampling.device)?)?;
    let bar = progress::bar(args.limit as u64, "images");
    let report = evaluate_captions(&pipeline, &source, &opts, &mut |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    })?;
    bar.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", describe_captions(&report));
    }
    Ok(())
}

fn describe_captions(report: &CaptionsReport) -> String {
    let row = |name: &str, s: &CaptionScores| {
        let fd = s
            .frechet_distance
            .map_or("-".to_string(), |d| format!("{d:.4}"));
        format!(
            "{name:<10} {:>10.2} {:>12.3} {:>10}",
            s.clip_score, s.r_precision.score, fd
        )
    };
    let r = &report.generated.r_precision;
    [
        format!(
            "{} pairs; R-precision ranks each image's caption among {} candidates; Fréchet \
             distance against the real images of the other half",
            report.pairs, r.candidates
        ),
        format!(
            "{:<10} {:>10} {:>12} {:>10}",
            "images", "CLIP score", "R-precision", "Fréchet"
        ),
        row("generated", &report.generated),
        row("real", &report.real),
    ]
    .join("\n")
}
