//! Contrastive training of CLIP on captioned images (Radford et al. 2021, Figure 3), in the
//! shape of nanoGPT's `train.py`: recipe, data, model, optimizer, the pure `lr(step)`, the loop.
//! Checkpoints are transformers `CLIPModel` folders with the tokenizer and image processor.

use super::optim::{clip_grad_norm, gradients, AdamW, AdamWConfig};
use super::params::ParamStore;
use super::schedule::LrSchedule;
use crate::checkpoint::write_atomic;
use crate::clip::{
    contrastive_loss, save_clip, ClipConfig, ClipImageProcessor, ClipLayout, ClipModel,
    PROCESSOR_FILE,
};
use crate::data::ImageFolder;
use crate::error::{Error, Result};
use crate::tokenizer::ClipTokenizer;
use candle_core::{DType, Device, Tensor};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// `logit_scale` is clamped to ln(100) after every step, as CLIP does.
const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

/// A training recipe: the model config plus the optimisation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipRecipe {
    /// Size of the BPE vocabulary trained from the captions when no tokenizer is given.
    pub vocab_size: usize,
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub batch_size: usize,
    pub weight_decay: f64,
    pub grad_clip: f64,
    pub clip: ClipConfig,
}

impl ClipRecipe {
    /// A built-in preset (`models/presets/clip-<name>.json`).
    pub fn preset(name: &str) -> Result<Self> {
        let text = match name {
            "tiny" => include_str!("../../../../models/presets/clip-tiny.json"),
            "small" => include_str!("../../../../models/presets/clip-small.json"),
            other => {
                return Err(Error::InvalidInput(format!(
                    "unknown preset `{other}`; allowed: tiny, small"
                )));
            }
        };
        serde_json::from_str(text)
            .map_err(|e| Error::config(format!("preset {name}"), e.to_string()))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let recipe: Self = serde_json::from_str(&text).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            what: "a CLIP training recipe",
            source,
        })?;
        recipe.validate()?;
        Ok(recipe)
    }

    pub fn validate(&self) -> Result<()> {
        self.clip.validate()?;
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return Err(Error::config("learning_rate", "must be a positive number"));
        }
        if self.batch_size < 2 {
            return Err(Error::config(
                "batch_size",
                "contrastive training needs at least 2 pairs per batch",
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
pub struct ClipTrainOptions {
    pub data: PathBuf,
    pub out: PathBuf,
    pub recipe: ClipRecipe,
    pub max_steps: usize,
    pub checkpoint_every: usize,
    pub seed: u64,
    /// An existing tokenizer folder; otherwise one is trained on the captions.
    pub tokenizer: Option<PathBuf>,
}

/// What the loop reports after every step.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub step: usize,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub logit_scale: f32,
    pub images_per_second: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TrainSummary {
    pub steps: usize,
    pub pairs: usize,
    pub skipped_images: usize,
    pub first_loss: f32,
    pub last_loss: f32,
    pub seconds: f64,
}

/// Decoded, preprocessed pairs held in memory.
struct Dataset {
    pixels: Tensor, // (N, 3, S, S)
    ids: Tensor,    // (N, T) u32
    mask: Tensor,   // (N, T) u32
    skipped: usize,
}

fn load_dataset(
    folder: &ImageFolder,
    tokenizer: &ClipTokenizer,
    image_size: usize,
    device: &Device,
) -> Result<Dataset> {
    let processor = ClipImageProcessor::for_image_size(image_size);
    let mut pixels = Vec::new();
    let mut captions = Vec::new();
    let mut skipped = 0;
    for item in &folder.items {
        let decoded = ClipImageProcessor::read_rgb8(&item.image)
            .and_then(|(rgb, w, h)| processor.preprocess_rgb8(&rgb, w, h));
        match decoded {
            Ok(values) => {
                pixels.extend(values);
                captions.push(item.caption.as_str());
            }
            Err(err) => {
                tracing::warn!(%err, "skipping unreadable image");
                skipped += 1;
            }
        }
    }
    let n = captions.len();
    if n < 2 {
        return Err(Error::Data(format!(
            "{}: {n} readable captioned images ({skipped} unreadable); contrastive training needs at least 2",
            folder.root.display()
        )));
    }
    let pixels = Tensor::from_vec(pixels, (n, 3, image_size, image_size), device)?;
    let (ids, mask) = tokenizer.encode_batch(&captions)?.to_tensors(device)?;
    Ok(Dataset {
        pixels,
        ids,
        mask,
        skipped,
    })
}

/// Trains CLIP and writes the model folder to `opts.out`; `on_step` sees every step.
pub fn train_clip(
    opts: &ClipTrainOptions,
    on_step: &mut dyn FnMut(&StepReport),
) -> Result<TrainSummary> {
    let started = Instant::now();
    let device = Device::Cpu;
    let mut recipe = opts.recipe.clone();
    recipe.validate()?;
    if opts.max_steps == 0 {
        return Err(Error::InvalidInput("--max-steps must be at least 1".into()));
    }
    let folder = ImageFolder::scan(&opts.data)?;
    let context = recipe.clip.text_config.max_position_embeddings;
    let tokenizer = match &opts.tokenizer {
        Some(dir) => ClipTokenizer::load(dir)?.with_context_length(context)?,
        None => ClipTokenizer::train(
            folder.items.iter().map(|i| i.caption.as_str()),
            recipe.vocab_size,
            context,
        )?,
    };
    let text = &mut recipe.clip.text_config;
    text.vocab_size = tokenizer.vocab_size();
    text.bos_token_id = tokenizer.bos_id();
    text.eos_token_id = tokenizer.eos_id();
    text.pad_token_id = tokenizer.pad_id();
    if text.eos_token_id == 2 {
        // transformers reads eos_token_id == 2 as "pool at argmax(ids)"; with this vocabulary
        // that is not the end token, so pooling would silently differ there.
        return Err(Error::Tokenizer("the end-of-text token has id 2, which transformers treats as a legacy marker; use a tokenizer whose <|endoftext|> id is not 2".into()));
    }
    let cfg = recipe.clip.clone();
    let processor = ClipImageProcessor::for_image_size(cfg.vision_config.image_size);
    let data = load_dataset(&folder, &tokenizer, cfg.vision_config.image_size, &device)?;
    let n = data.pixels.dim(0)?;
    let batch_size = recipe.batch_size.min(n);

    std::fs::create_dir_all(&opts.out).map_err(|e| Error::io(&opts.out, e))?;
    tokenizer.save(&opts.out)?;
    let processor_json =
        serde_json::to_string_pretty(&processor).map_err(|e| Error::InvalidInput(e.to_string()))?;
    write_atomic(&opts.out.join(PROCESSOR_FILE), processor_json.as_bytes())?;

    let params = ParamStore::new(opts.seed);
    let model = ClipModel::new(&cfg, params.var_builder(&device))?;
    let vars = params.vars();
    let logit_scale_var = vars
        .iter()
        .find(|(n, _)| n == "logit_scale")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| Error::InvalidInput("model has no logit_scale".into()))?;
    let mut optimizer = AdamW::new(
        vars.clone(),
        AdamWConfig {
            weight_decay: recipe.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let schedule = LrSchedule {
        peak: recipe.learning_rate,
        warmup_steps: recipe.warmup_steps.min(opts.max_steps / 5),
        total_steps: opts.max_steps,
        min_ratio: 0.0,
    };

    let log_path = opts.out.join("train_log.jsonl");
    let mut log = std::fs::File::create(&log_path).map_err(|e| Error::io(&log_path, e))?;
    let mut rng = ChaCha8Rng::seed_from_u64(opts.seed);
    let mut order: Vec<u32> = Vec::new();
    let (mut first_loss, mut last_loss) = (f32::NAN, f32::NAN);
    for step in 0..opts.max_steps {
        let step_started = Instant::now();
        if order.len() < batch_size {
            let mut epoch: Vec<u32> = (0..n as u32).collect();
            epoch.shuffle(&mut rng);
            order = epoch;
        }
        let picked: Vec<u32> = order.drain(..batch_size).collect();
        let index = Tensor::from_vec(picked, batch_size, &device)?;
        let pixels = data.pixels.index_select(&index, 0)?;
        let ids = data.ids.index_select(&index, 0)?;
        let mask = data.mask.index_select(&index, 0)?;

        let text_features = model.text_features(&ids, Some(&mask))?;
        let image_features = model.image_features(&pixels)?;
        let (logits_per_text, _) = model.logits(&text_features, &image_features)?;
        let loss = contrastive_loss(&logits_per_text)?;
        let mut grads = gradients(&loss.backward()?, &vars);
        let grad_norm = clip_grad_norm(&mut grads, recipe.grad_clip)?;
        let lr = schedule.at(step);
        optimizer.step(&grads, lr)?;
        let clamped = logit_scale_var.as_tensor().clamp(0.0, MAX_LOGIT_SCALE)?;
        logit_scale_var.set(&clamped)?;

        let loss_value = loss.to_dtype(DType::F32)?.to_scalar::<f32>()?;
        if !loss_value.is_finite() {
            return Err(Error::InvalidInput(format!(
                "loss became {loss_value} at step {}; lower the learning rate",
                step + 1
            )));
        }
        if step == 0 {
            first_loss = loss_value;
        }
        last_loss = loss_value;
        let report = StepReport {
            step: step + 1,
            loss: loss_value,
            lr,
            grad_norm,
            logit_scale: clamped.to_scalar::<f32>()?,
            images_per_second: batch_size as f64 / step_started.elapsed().as_secs_f64().max(1e-9),
        };
        if let Ok(line) = serde_json::to_string(&report) {
            let _ = writeln!(log, "{line}");
        }
        on_step(&report);
        let last = step + 1 == opts.max_steps;
        if last || (opts.checkpoint_every > 0 && (step + 1) % opts.checkpoint_every == 0) {
            save_clip(&opts.out, &cfg, &params.tensors(), ClipLayout::Full)?;
        }
    }
    Ok(TrainSummary {
        steps: opts.max_steps,
        pairs: n,
        skipped_images: data.skipped,
        first_loss,
        last_loss,
        seconds: started.elapsed().as_secs_f64(),
    })
}
