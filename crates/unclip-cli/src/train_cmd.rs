//! `unclip train prior|decoder|upsampler` and `unclip assemble`.

use crate::progress;
use anyhow::{bail, Result};
use candle_core::Device;
use clap::Args;
use std::path::PathBuf;
use unclip::checkpoint::{cast_folder_weights, parse_storage_dtype};
use unclip::data::DataSource;
use unclip::device::parse_device;
use unclip::pipeline::{assemble, PipelineParts};
use unclip::train::{
    build_embedding_cache, check_run_options, load_recipe_with, run_training, ClipRecipe,
    ClipStage, DecoderRecipe, DecoderStage, EmbeddingCache, FrozenClip, PriorRecipe, PriorStage,
    RecipeOverride, RunOptions, TrainSettings, TrainStage, UpsamplerRecipe, UpsamplerStage,
};

#[derive(Args)]
pub struct StageArgs {
    /// Training data: an image folder with .txt captions, a WebDataset .tar, a brace pattern
    /// such as data/train-{000000..000009}.tar, or a folder of .tar shards.
    #[arg(long)]
    pub data: String,
    /// Held-out data for the validation loss and previews (default: a fixed training batch).
    #[arg(long)]
    pub val_data: Option<String>,
    #[arg(long)]
    pub out: PathBuf,
    /// The CLIP model whose embeddings condition the prior and the decoder: a CLIPModel folder,
    /// or a pipeline folder (whose text and image encoders are used), or a built-in model's name.
    #[arg(long, value_parser = crate::builtin_models::model_path)]
    pub clip: Option<PathBuf>,
    #[arg(long, default_value = "tiny", value_parser = ["tiny", "small", "medium"], conflicts_with = "config")]
    pub preset: String,
    /// A recipe JSON instead of a preset (same fields as models/presets/<stage>-*.json).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Changes one recipe field by its dotted path, e.g. --set min_snr_gamma=5 or
    /// --set unet.sample_size=64 (repeatable; the value is read as JSON). The recipe used is
    /// written to OUT/recipe.json.
    #[arg(long = "set", value_name = "FIELD=VALUE", value_parser = parse_override)]
    pub set: Vec<RecipeOverride>,
    #[arg(long, default_value_t = 1000)]
    pub max_steps: usize,
    /// Overrides the recipe's batch size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Overrides the recipe's learning rate.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Overrides the recipe's gradient accumulation.
    #[arg(long)]
    pub grad_accumulation: Option<usize>,
    #[arg(long, default_value_t = 200)]
    pub checkpoint_every: usize,
    /// Checkpoints kept under OUT/checkpoints.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    #[arg(long, default_value_t = 100)]
    pub validate_every: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Continue from the newest checkpoint in OUT (optimizer, EMA, step, RNG, data position).
    #[arg(long)]
    pub resume: bool,
    /// Fine-tune: start from the weights of a model folder of this stage (a training run's
    /// output, one of its checkpoints, a pipeline folder or a built-in model's name) instead of a
    /// fresh initialisation.
    /// The recipe must describe the same network; optimizer, EMA and schedule start anew.
    #[arg(long, value_name = "DIR", conflicts_with = "resume", value_parser = crate::builtin_models::model_path)]
    pub init_from: Option<PathBuf>,
    /// Stop (with a checkpoint) at this step, keeping --max-steps for the learning-rate schedule;
    /// continue later with --resume.
    #[arg(long)]
    pub stop_at: Option<usize>,
    /// Prior only: CLIP embeddings precomputed by `unclip embed-dataset` for this data.
    #[arg(long)]
    pub embeddings: Option<PathBuf>,
    /// Image decoding threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Where to train: cpu, or cuda / cuda:N in a build with `--features cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Args)]
pub struct EmbedDatasetArgs {
    /// The CLIP model (the one the prior will be trained against); a built-in model's name too.
    #[arg(long, value_parser = crate::builtin_models::model_path)]
    pub clip: PathBuf,
    #[arg(long)]
    pub data: String,
    /// Output file (safetensors).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct AssembleArgs {
    /// A CLIPModel folder, or a pipeline folder (or a built-in model's name) whose CLIP parts
    /// are copied as they are.
    #[arg(long, value_parser = crate::builtin_models::model_path)]
    pub clip: PathBuf,
    /// Output of `unclip train prior`, or a pipeline folder (optional: without it the folder
    /// makes variations only).
    #[arg(long, value_parser = crate::builtin_models::model_path)]
    pub prior: Option<PathBuf>,
    /// Output of `unclip train decoder`.
    #[arg(long)]
    pub decoder: PathBuf,
    /// Output of `unclip train upsampler`, or a pipeline folder (optional: without it the
    /// decoder's image is final).
    #[arg(long, value_parser = crate::builtin_models::model_path)]
    pub upsampler: Option<PathBuf>,
    #[arg(long)]
    pub out: PathBuf,
    /// Sampling settings to ship with the pipeline as its `sampling.json` (e.g.
    /// models/shapes/sampling.json); without it the folder samples with Karlo's defaults
    /// (decoder guidance 8), which suit a briefly trained decoder badly.
    #[arg(long)]
    pub sampling: Option<PathBuf>,
    /// A CLIP that ranks image candidates (`--image-candidates`, or `image_candidates` in the
    /// sampling file) instead of the pipeline's own: a CLIPModel folder (`unclip train clip`'s
    /// output, e.g. fine-tuned with hard negatives), or a pipeline folder whose `ranker/` is
    /// copied. It is stored as `ranker/`.
    #[arg(long, value_parser = crate::builtin_models::model_path)]
    pub ranker: Option<PathBuf>,
    /// Storage precision of the weights written (every loader computes in f32 regardless):
    /// f16 halves the folder, as the built-in models use.
    #[arg(long, default_value = "f32", value_parser = ["f32", "f16", "bf16"])]
    pub dtype: String,
}

fn parse_override(text: &str) -> std::result::Result<RecipeOverride, String> {
    RecipeOverride::parse(text).map_err(|e| e.to_string())
}

/// The stage's recipe: the preset or --config, then --set.
fn recipe<T: serde::Serialize + serde::de::DeserializeOwned>(
    stage: &str,
    args: &StageArgs,
) -> Result<T> {
    Ok(load_recipe_with(
        stage,
        &args.preset,
        args.config.as_deref(),
        &args.set,
    )?)
}

/// The recipe's `train` section with --batch-size, --lr and --grad-accumulation applied, and
/// the run's options checked: all before the stage opens data or builds its model.
fn settings(train: &mut TrainSettings, args: &StageArgs) -> Result<()> {
    apply_flags(train, args);
    train.validate()?;
    check_run_options(&run_options(args, None))?;
    Ok(())
}

fn apply_flags(train: &mut TrainSettings, args: &StageArgs) {
    if let Some(b) = args.batch_size {
        train.batch_size = b;
    }
    if let Some(lr) = args.lr {
        train.learning_rate = lr;
    }
    if let Some(g) = args.grad_accumulation {
        train.grad_accumulation = g;
    }
}

fn clip(args: &StageArgs, stage: &str) -> Result<FrozenClip> {
    let Some(dir) = &args.clip else {
        bail!("training the {stage} needs --clip DIR (a CLIPModel folder, or a pipeline folder)")
    };
    Ok(FrozenClip::load(dir, &parse_device(&args.device)?)?)
}

fn run_options(args: &StageArgs, recipe: Option<serde_json::Value>) -> RunOptions {
    RunOptions {
        data: args.data.clone(),
        val_data: args.val_data.clone(),
        out: args.out.clone(),
        max_steps: args.max_steps,
        checkpoint_every: args.checkpoint_every,
        keep_checkpoints: args.keep,
        validate_every: args.validate_every,
        seed: args.seed,
        resume: args.resume,
        workers: args.workers,
        stop_at: args.stop_at,
        init_from: args.init_from.clone(),
        recipe,
    }
}

fn run<T: serde::Serialize>(
    stage: &dyn TrainStage,
    recipe: &T,
    train: &TrainSettings,
    args: &StageArgs,
) -> Result<()> {
    // Checked by `settings` before the stage was built, and again by run_training.
    let opts = run_options(args, Some(serde_json::to_value(recipe)?));
    let bar = progress::bar(args.max_steps as u64, &format!("train {}", stage.name()));
    let summary = run_training(stage, train, &opts, &mut |s| {
        bar.set_position(s.step as u64);
        let val = s
            .val_loss
            .map(|v| format!(" val {v:.4}"))
            .unwrap_or_default();
        bar.set_message(format!(
            "loss {:.4}{val} {:.1} img/s",
            s.loss, s.images_per_second
        ));
    })?;
    bar.finish();
    eprintln!(
        "{}: steps {}..{} in {:.1}s on {}, loss {:.4} -> {:.4}, {} unreadable records skipped; model, \
         checkpoints, recipe.json, train_log.jsonl, loss.png and samples/ in {}",
        summary.stage,
        summary.first_step,
        summary.steps,
        summary.seconds,
        summary.data,
        summary.first_loss,
        summary.last_loss,
        summary.skipped_records,
        args.out.display()
    );
    Ok(())
}

pub fn clip_command(args: crate::cli::TrainClipArgs) -> Result<()> {
    let stage_args = args.stage;
    if stage_args.clip.is_some() || stage_args.embeddings.is_some() {
        bail!(
            "--clip and --embeddings are for the prior and decoder, not for training CLIP itself"
        );
    }
    let mut recipe: ClipRecipe = recipe("clip", &stage_args)?;
    settings(&mut recipe.train, &stage_args)?;
    // Fine-tuning keeps the vocabulary its embeddings were learnt with.
    let tokenizer = args.tokenizer.clone().or_else(|| {
        stage_args.init_from.as_ref().map(|dir| {
            if dir.join("tokenizer").is_dir() {
                dir.join("tokenizer")
            } else {
                dir.clone()
            }
        })
    });
    let stage = ClipStage::new(
        &recipe,
        &stage_args.data,
        tokenizer.as_deref(),
        stage_args.seed,
        &parse_device(&stage_args.device)?,
    )?;
    run(&stage, &recipe, &recipe.train, &stage_args)
}

pub fn prior(args: StageArgs) -> Result<()> {
    let mut recipe: PriorRecipe = recipe("prior", &args)?;
    settings(&mut recipe.train, &args)?;
    let cache = args
        .embeddings
        .as_deref()
        .map(EmbeddingCache::load)
        .transpose()?;
    let stage = PriorStage::new(&recipe, clip(&args, "prior")?, &args.data, args.seed, cache)?;
    run(&stage, &recipe, &recipe.train, &args)
}

pub fn embed_dataset(args: EmbedDatasetArgs) -> Result<()> {
    let clip = FrozenClip::load(&args.clip, &Device::Cpu)?;
    let source = DataSource::open(&args.data)?;
    let bar = progress::bar(0, "embed");
    let n = build_embedding_cache(&clip, &source, &args.out, &mut |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish();
    eprintln!(
        "embedded {n} records of {} into {}",
        source.describe(),
        args.out.display()
    );
    Ok(())
}

pub fn decoder(args: StageArgs) -> Result<()> {
    if args.embeddings.is_some() {
        bail!("--embeddings is for the prior; the decoder reads images");
    }
    let mut recipe: DecoderRecipe = recipe("decoder", &args)?;
    settings(&mut recipe.train, &args)?;
    let stage = DecoderStage::new(&recipe, clip(&args, "decoder")?, args.seed)?;
    run(&stage, &recipe, &recipe.train, &args)
}

pub fn upsampler(args: StageArgs) -> Result<()> {
    if args.clip.is_some() || args.embeddings.is_some() {
        bail!("--clip and --embeddings are for the prior and decoder; the upsampler reads images only");
    }
    let mut recipe: UpsamplerRecipe = recipe("upsampler", &args)?;
    settings(&mut recipe.train, &args)?;
    let stage = UpsamplerStage::new(&recipe, args.seed, &parse_device(&args.device)?)?;
    run(&stage, &recipe, &recipe.train, &args)
}

pub fn assemble_command(args: AssembleArgs) -> Result<()> {
    let parts = PipelineParts {
        clip: &args.clip,
        prior: args.prior.as_deref(),
        decoder: &args.decoder,
        upsampler: args.upsampler.as_deref(),
        sampling: args.sampling.as_deref(),
        ranker: args.ranker.as_deref(),
    };
    assemble(&parts, &args.out)?;
    let dtype = parse_storage_dtype(&args.dtype)?;
    if dtype != candle_core::DType::F32 {
        let cast = cast_folder_weights(&args.out, dtype)?;
        eprintln!(
            "stored {} tensors in {} files as {}: {:.1} MB -> {:.1} MB",
            cast.tensors,
            cast.files,
            args.dtype,
            cast.bytes_before as f64 / 1e6,
            cast.bytes_after as f64 / 1e6
        );
    }
    eprintln!("wrote the pipeline folder {}", args.out.display());
    Ok(())
}
