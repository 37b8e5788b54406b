//! The training loop every diffusion stage shares, in the shape of nanoGPT's `train.py`: data,
//! model (a [`TrainStage`]), optimizer, the pure `lr(step)`, the loop; with gradient
//! accumulation, clipping, EMA, periodic validation and previews, a JSONL log and a loss-curve
//! PNG, and checkpoints (written under a temporary name, then renamed; the last K kept) from
//! which `--resume` continues with the same optimizer, EMA, step, RNG and data position.

use super::ema::Ema;
use super::optim::{accumulate, clip_grad_norm, gradients, AdamW, AdamWConfig};
use super::params::ParamStore;
use super::plot::write_loss_curve;
use super::recipes::save_recipe;
use super::schedule::LrSchedule;
use super::state::{
    check_fingerprint, fingerprint, latest_checkpoint, prune_checkpoints, read_progress,
    read_state_tensors, remove_unfinished_checkpoints, Progress, STATE_JSON, STATE_TENSORS,
};
use crate::checkpoint::{replace_dir, save_safetensors, write_atomic};
use crate::data::{stream, DataSource, PairStream, StreamOptions};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// A batch as the stages see it.
pub struct Batch {
    /// (B, 3, S, S) in [-1, 1].
    pub pixels: Tensor,
    pub captions: Vec<String>,
    /// The records' keys (for looking up precomputed embeddings).
    pub keys: Vec<String>,
}

/// One stage of unCLIP made trainable: its loss, and how its weights are written.
pub trait TrainStage {
    /// "prior", "decoder" or "upsampler".
    fn name(&self) -> &'static str;
    fn params(&self) -> &ParamStore;
    /// Where the parameters live and every batch is sent.
    fn device(&self) -> &Device;
    /// The side of the square images the stage trains on.
    fn image_size(&self) -> usize;
    /// The training loss of a batch; all randomness comes from `rng`.
    fn loss(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> Result<Tensor>;
    /// Writes a model folder (diffusers layout) holding `weights`.
    fn save_model(&self, dir: &Path, weights: &[(String, Tensor)]) -> Result<()>;
    /// Writes a preview PNG of what the model (with `weights` loaded) makes of `batch`.
    fn preview(&self, path: &Path, weights: &[(String, Tensor)], batch: &Batch) -> Result<()>;
    /// Replaces the freshly initialised weights with those of a model folder in the layout
    /// `save_model` writes (a training run's output or checkpoint, or a pipeline folder), so that
    /// a run fine-tunes instead of starting from scratch. The folder's configuration must match
    /// the recipe's: a tensor of another shape is an error naming it.
    fn init_from(&self, dir: &Path) -> Result<()>;
    /// Runs after every optimizer step (CLIP clamps its temperature here).
    fn after_step(&self) -> Result<()> {
        Ok(())
    }
}

/// The largest batch a recipe may ask for: far beyond any machine's memory for these models,
/// and small enough that the batch's buffers can be sized without overflowing.
pub const MAX_BATCH_SIZE: usize = 65_536;

/// Optimisation settings shared by every stage (the recipe's `train` section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSettings {
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub batch_size: usize,
    #[serde(default = "one")]
    pub grad_accumulation: usize,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default = "one_f")]
    pub grad_clip: f64,
    /// 0 disables the average.
    #[serde(default)]
    pub ema_decay: f64,
}

fn one() -> usize {
    1
}
fn one_f() -> f64 {
    1.0
}

impl TrainSettings {
    pub fn validate(&self) -> Result<()> {
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::config("learning_rate", "must be a positive number"));
        }
        if self.batch_size == 0 || self.grad_accumulation == 0 {
            return Err(Error::config(
                "batch_size",
                "batch_size and grad_accumulation must be at least 1",
            ));
        }
        if self.batch_size > MAX_BATCH_SIZE {
            return Err(Error::config(
                "batch_size",
                format!("{}; allowed: 1..={MAX_BATCH_SIZE}", self.batch_size),
            ));
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return Err(Error::config("ema_decay", "must be in [0, 1)"));
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return Err(Error::config(
                "weight_decay",
                format!("{}; allowed: 0 or more", self.weight_decay),
            ));
        }
        if self.grad_clip.is_nan() || self.grad_clip < 0.0 {
            return Err(Error::config(
                "grad_clip",
                format!(
                    "{}; allowed: a positive gradient norm, or 0 for no clipping",
                    self.grad_clip
                ),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub data: String,
    pub val_data: Option<String>,
    pub out: PathBuf,
    pub max_steps: usize,
    pub checkpoint_every: usize,
    pub keep_checkpoints: usize,
    pub validate_every: usize,
    pub seed: u64,
    pub resume: bool,
    pub workers: usize,
    /// End the run at this step (with a checkpoint) while keeping `max_steps` for the learning
    /// rate schedule: a time-boxed session of a longer run, continued later with `--resume`.
    pub stop_at: Option<usize>,
    /// Start from these weights (a model folder, see [`TrainStage::init_from`]) instead of a
    /// fresh initialisation; the optimizer, EMA and schedule start anew.
    pub init_from: Option<PathBuf>,
    /// The recipe to save as `out/recipe.json`, written once the run's checks have passed (a
    /// refused `--resume` keeps the recipe the run was trained with).
    pub recipe: Option<serde_json::Value>,
}

/// What a run writes into its `--out` before its first checkpoint: a folder holding only these
/// (a run refused early) may be started again, as may one holding a tokenizer (`unclip
/// tokenizer --out X`, then `train clip --tokenizer X --out X`); anything else there is the
/// user's, and kept. Hidden files (`.DS_Store`, a killed save's temporary) do not count.
const RUN_FILES: [&str; 5] = [
    "recipe.json",
    "train_log.jsonl",
    "loss.png",
    "samples",
    "checkpoints",
];

#[derive(Debug, Clone, Serialize)]
pub struct StepLog {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub images_per_second: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub val_loss: Option<f32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub stage: String,
    pub first_step: usize,
    pub steps: usize,
    pub first_loss: f32,
    pub last_loss: f32,
    pub skipped_records: u64,
    pub seconds: f64,
    /// The training data as [`DataSource::describe`] names it (pairs found, images ignored).
    pub data: String,
}

/// Batches from a data source, epoch after epoch, remembering the position for resuming.
struct Batches<'a> {
    source: &'a DataSource,
    base: StreamOptions,
    epoch: u64,
    position: u64,
    current: PairStream,
    skipped_before: u64,
}

impl<'a> Batches<'a> {
    fn new(source: &'a DataSource, base: StreamOptions, epoch: u64, position: u64) -> Result<Self> {
        let current = stream(
            source,
            &StreamOptions {
                epoch,
                skip: position,
                ..base.clone()
            },
        )?;
        Ok(Self {
            source,
            base,
            epoch,
            position,
            current,
            skipped_before: 0,
        })
    }

    fn skipped(&self) -> u64 {
        self.skipped_before + self.current.skipped()
    }

    fn next_batch(&mut self, size: usize, device: &Device) -> Result<Batch> {
        let side = self.base.image_size;
        let mut pixels = Vec::with_capacity(size * side * side * 3);
        let mut captions = Vec::with_capacity(size);
        let mut keys = Vec::with_capacity(size);
        let mut fresh_epochs = 0;
        while captions.len() < size {
            match self.current.next() {
                Some(sample) => {
                    pixels.extend_from_slice(&sample.pixels);
                    captions.push(sample.caption);
                    keys.push(sample.key);
                    self.position += 1;
                }
                None => {
                    fresh_epochs += 1;
                    if fresh_epochs > 1 && captions.is_empty() {
                        return Err(Error::Data(format!(
                            "{} yielded no usable pairs in a whole epoch ({} unreadable records skipped)",
                            self.source.describe(),
                            self.skipped()
                        )));
                    }
                    self.skipped_before += self.current.skipped();
                    self.epoch += 1;
                    self.position = 0;
                    self.current = stream(
                        self.source,
                        &StreamOptions {
                            epoch: self.epoch,
                            skip: 0,
                            ..self.base.clone()
                        },
                    )?;
                }
            }
        }
        let b = captions.len();
        let pixels = Tensor::from_vec(pixels, (b, side, side, 3), device)?
            .permute((0, 3, 1, 2))?
            .to_dtype(DType::F32)?;
        let pixels = ((pixels / 127.5)? - 1.0)?;
        Ok(Batch {
            pixels,
            captions,
            keys,
        })
    }
}

/// The checks on a run's options that need no data or model: made before anything is written
/// to `out` (the CLI calls it before saving the recipe), and again by [`run_training`].
pub fn check_run_options(opts: &RunOptions) -> Result<()> {
    if opts.max_steps == 0 {
        return Err(Error::InvalidInput("--max-steps must be at least 1".into()));
    }
    if let Some(stop) = opts.stop_at.filter(|&s| s == 0 || s > opts.max_steps) {
        return Err(Error::InvalidInput(format!(
            "--stop-at {stop}; allowed: 1..={} (--max-steps)",
            opts.max_steps
        )));
    }
    if opts.out.exists() && !opts.out.is_dir() {
        return Err(Error::InvalidInput(format!(
            "--out {} is a file; allowed: a new or empty folder, or a run's folder with --resume",
            opts.out.display()
        )));
    }
    if !opts.resume {
        if let Some(dir) = latest_checkpoint(&opts.out) {
            return Err(Error::InvalidInput(format!(
                "{} already holds a training run (its newest checkpoint is {}); continue it with \
                 --resume, or give a new --out",
                opts.out.display(),
                dir.display()
            )));
        }
        if let Some(other) = foreign_entry(&opts.out) {
            return Err(Error::InvalidInput(format!(
                "--out {} is not empty and holds no checkpoint to --resume (it has `{other}`); \
                 a run writes its model there, so give a new or empty folder",
                opts.out.display()
            )));
        }
    }
    Ok(())
}

/// An entry of `out` that no run wrote, if any.
fn foreign_entry(out: &Path) -> Option<String> {
    std::fs::read_dir(out)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|name| {
            !name.starts_with('.')
                && !RUN_FILES.contains(&name.as_str())
                && !crate::tokenizer::TOKENIZER_FILES.contains(&name.as_str())
        })
}

/// Trains `stage` as `settings` and `opts` say; `on_step` sees every step's log line.
pub fn run_training(
    stage: &dyn TrainStage,
    settings: &TrainSettings,
    opts: &RunOptions,
    on_step: &mut dyn FnMut(&StepLog),
) -> Result<RunSummary> {
    settings.validate()?;
    check_run_options(opts)?;
    let started = Instant::now();
    let device = stage.device().clone();
    let source = DataSource::open(&opts.data)?;
    if let DataSource::Folder(folder) = &source {
        if folder.len() < settings.batch_size {
            tracing::warn!(
                "a batch of {} from {} pairs: every batch repeats samples",
                settings.batch_size,
                folder.len()
            );
        }
    }
    let val_source = opts
        .val_data
        .as_deref()
        .map(|spec| {
            DataSource::open(spec).map_err(|e| Error::InvalidInput(format!("--val-data: {e}")))
        })
        .transpose()?;
    if let Some(dir) = &opts.init_from {
        if opts.resume {
            return Err(Error::InvalidInput(
                "--init-from starts a new run and --resume continues one: pass only one".into(),
            ));
        }
        stage.init_from(dir)?;
        tracing::info!(from = %dir.display(), "starting from trained weights");
    }
    let params = stage.params().vars();
    let print = fingerprint(&params);
    let mut optimizer = AdamW::new(
        params.clone(),
        AdamWConfig {
            weight_decay: settings.weight_decay,
            beta2: 0.999,
            eps: 1e-8,
            ..AdamWConfig::default()
        },
    )?;
    let mut ema = if settings.ema_decay > 0.0 {
        Some(Ema::new(&params, settings.ema_decay)?)
    } else {
        None
    };
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let (mut step, mut epoch, mut position) = (0usize, 0u64, 0u64);

    let log_path = opts.out.join("train_log.jsonl");
    let mut history: Vec<(usize, f32, Option<f32>)> = Vec::new();
    if opts.resume {
        let dir = latest_checkpoint(&opts.out).ok_or_else(|| Error::Checkpoint {
            path: opts.out.join("checkpoints"),
            message: "--resume: no checkpoint to resume from".into(),
        })?;
        // A checkpoint that does not read is most often one a full disk or a crash damaged;
        // the one before it is intact (each is written under a temporary name, then renamed).
        let damaged = |e: Error| Error::Checkpoint {
            path: dir.clone(),
            message: format!(
                "--resume: this checkpoint does not read ({e}); if it is damaged, remove it to \
                 resume from the one before"
            ),
        };
        let saved = read_progress(&dir).map_err(damaged)?;
        check_fingerprint(&dir, &saved, stage.name(), &print)?;
        let tensors = read_state_tensors(&dir, &device).map_err(damaged)?;
        for (name, var) in &params {
            let t = tensors
                .get(&format!("param.{name}"))
                .ok_or_else(|| Error::TensorMissing {
                    path: dir.join(STATE_TENSORS),
                    name: format!("param.{name}"),
                })?;
            var.set(t)?;
        }
        optimizer.restore(&tensors, saved.step)?;
        if let Some(e) = &mut ema {
            let avg: Vec<(String, Tensor)> = params
                .iter()
                .filter_map(|(n, _)| {
                    tensors
                        .get(&format!("ema.{n}"))
                        .map(|t| (n.clone(), t.clone()))
                })
                .collect();
            *e = Ema::restore(&params, settings.ema_decay, saved.ema_updates, &avg)?;
        }
        let end = opts
            .stop_at
            .map_or(opts.max_steps, |s| s.min(opts.max_steps));
        if saved.step >= end {
            let flag = match opts.stop_at {
                Some(stop) if stop < opts.max_steps => "--stop-at",
                _ => "--max-steps",
            };
            return Err(Error::InvalidInput(format!(
                "--resume: the run is at step {} already, and this one would end at step {end} \
                 ({flag} {end}); raise {flag} to train on",
                saved.step
            )));
        }
        (step, epoch, position, rng) = (saved.step, saved.epoch, saved.position, saved.rng);
        history = read_history(&log_path, step);
        tracing::info!(checkpoint = %dir.display(), step, "resuming");
    }
    let base = StreamOptions {
        image_size: stage.image_size(),
        seed: opts.seed,
        epoch: 0,
        skip: 0,
        shuffle_buffer: 256,
        workers: opts.workers.max(1),
    };
    let mut batches = Batches::new(&source, base.clone(), epoch, position)?;
    let val_batch = match &val_source {
        Some(v) => Batches::new(
            v,
            StreamOptions {
                seed: 0,
                ..base.clone()
            },
            0,
            0,
        )
        .and_then(|mut batches| batches.next_batch(settings.batch_size, &device))
        .map_err(|e| Error::InvalidInput(format!("--val-data: {e}")))?,
        // Without held-out data, a fixed batch of the training data (a different shuffle).
        None => Batches::new(
            &source,
            StreamOptions {
                seed: opts.seed ^ 0x5eed,
                ..base.clone()
            },
            0,
            0,
        )?
        .next_batch(settings.batch_size, &device)?,
    };
    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    remove_unfinished_checkpoints(&opts.out)?;
    if let Some(recipe) = &opts.recipe {
        save_recipe(&opts.out, recipe)?;
    }
    rewrite_log(&log_path, &history)?;
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(&log_path)
        .map_err(|e| Error::io(&log_path, e))?;

    let schedule = LrSchedule {
        peak: settings.learning_rate,
        warmup_steps: settings.warmup_steps.min(opts.max_steps / 5),
        total_steps: opts.max_steps,
        min_ratio: 0.1,
    };
    let first_step = step;
    let (mut first_loss, mut last_loss) = (f32::NAN, f32::NAN);
    let end = opts
        .stop_at
        .map_or(opts.max_steps, |s| s.min(opts.max_steps));
    while step < end {
        let t0 = Instant::now();
        let mut grads: Vec<Option<Tensor>> = vec![None; params.len()];
        let mut loss_sum = 0f32;
        for _ in 0..settings.grad_accumulation {
            let batch = batches.next_batch(settings.batch_size, &device)?;
            let loss = stage.loss(&batch, &mut rng)?;
            let scaled = (&loss / settings.grad_accumulation as f64)?;
            accumulate(&mut grads, gradients(&scaled.backward()?, &params))?;
            loss_sum += loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        }
        let loss_value = loss_sum / settings.grad_accumulation as f32;
        if !loss_value.is_finite() {
            return Err(Error::InvalidInput(format!(
                "loss became {loss_value} at step {}; lower the learning rate",
                step + 1
            )));
        }
        let grad_norm = clip_grad_norm(&mut grads, settings.grad_clip)?;
        let lr = schedule.at(step);
        optimizer.step(&grads, lr)?;
        stage.after_step()?;
        if let Some(e) = &mut ema {
            e.update(&params)?;
        }
        step += 1;
        if step == first_step + 1 {
            first_loss = loss_value;
        }
        last_loss = loss_value;

        let val_loss = if opts.validate_every > 0
            && (step % opts.validate_every == 0 || step == opts.max_steps)
        {
            // A fixed RNG so that validation losses are comparable across steps.
            let v = stage.loss(&val_batch, &mut ChaCha8Rng::seed_from_u64(0))?;
            Some(v.to_dtype(DType::F32)?.to_scalar::<f32>()?)
        } else {
            None
        };
        let entry = StepLog {
            step,
            loss: loss_value,
            lr,
            grad_norm,
            images_per_second: (settings.batch_size * settings.grad_accumulation) as f64
                / t0.elapsed().as_secs_f64().max(1e-9),
            val_loss,
        };
        if let Ok(line) = serde_json::to_string(&entry) {
            let _ = writeln!(log, "{line}");
        }
        history.push((step, loss_value, val_loss));
        on_step(&entry);

        let last = step == end;
        if last || (opts.checkpoint_every > 0 && step % opts.checkpoint_every == 0) {
            let weights = on_cpu(match &ema {
                Some(e) => e.tensors().to_vec(),
                None => stage.params().tensors(),
            })?;
            let progress = Progress {
                stage: stage.name().to_string(),
                step,
                epoch: batches.epoch,
                position: batches.position,
                ema_updates: ema.as_ref().map_or(0, |e| e.updates()),
                rng: rng.clone(),
                fingerprint: print.clone(),
            };
            let mut state: Vec<(String, Tensor)> = stage
                .params()
                .tensors()
                .into_iter()
                .map(|(n, t)| (format!("param.{n}"), t))
                .collect();
            state.extend(optimizer.moments());
            if let Some(e) = &ema {
                state.extend(
                    e.tensors()
                        .iter()
                        .map(|(n, t)| (format!("ema.{n}"), t.clone())),
                );
            }
            let state = on_cpu(state)?;
            let dir = opts.out.join("checkpoints").join(format!("step-{step:08}"));
            replace_dir(&dir, |tmp| {
                stage.save_model(tmp, &weights)?;
                save_safetensors(&state, &tmp.join(STATE_TENSORS))?;
                let json = serde_json::to_string_pretty(&progress)
                    .map_err(|e| Error::InvalidInput(e.to_string()))?;
                write_atomic(&tmp.join(STATE_JSON), json.as_bytes())
            })?;
            prune_checkpoints(&opts.out, opts.keep_checkpoints)?;
            // The model folder at the top of `out` always holds the newest weights.
            stage.save_model(&opts.out, &weights)?;
            let samples = opts.out.join("samples");
            std::fs::create_dir_all(&samples).map_err(|e| Error::io(&samples, e))?;
            stage.preview(
                &samples.join(format!("step-{step:08}.png")),
                &weights,
                &val_batch,
            )?;
            write_loss_curve(&opts.out.join("loss.png"), &history)?;
        }
    }
    Ok(RunSummary {
        stage: stage.name().to_string(),
        first_step,
        steps: step,
        first_loss,
        last_loss,
        skipped_records: batches.skipped(),
        seconds: started.elapsed().as_secs_f64(),
        data: source.describe(),
    })
}

/// Copies tensors that may live on an accelerator to the host, once per checkpoint, so that
/// saving and previews read each one once.
fn on_cpu(tensors: Vec<(String, Tensor)>) -> Result<Vec<(String, Tensor)>> {
    tensors
        .into_iter()
        .map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?)))
        .collect()
}

/// The logged (step, loss, val_loss) up to `until`, so that a resumed run continues the curve.
fn read_history(path: &Path, until: usize) -> Vec<(usize, f32, Option<f32>)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            let step = v["step"].as_u64()? as usize;
            let loss = v["loss"].as_f64()? as f32;
            (step <= until).then(|| (step, loss, v["val_loss"].as_f64().map(|x| x as f32)))
        })
        .collect()
}

/// Rewrites the log with only `history`: steps after the resumed checkpoint are dropped.
fn rewrite_log(path: &Path, history: &[(usize, f32, Option<f32>)]) -> Result<()> {
    let mut text = String::new();
    for (step, loss, val) in history {
        let mut v = serde_json::json!({"step": step, "loss": loss});
        if let Some(val) = val {
            v["val_loss"] = serde_json::json!(val);
        }
        text.push_str(&v.to_string());
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}
