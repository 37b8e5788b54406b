//! Contrastive training of CLIP (Radford et al. 2021, Figure 3: symmetric cross-entropy over the
//! batch's similarity matrix with a learned temperature, clamped at ln 100 as CLIP does) as a
//! stage of the shared training loop, so it gets the same data sources, accumulation, EMA,
//! validation, checkpoints and exact resume. Checkpoints are transformers `CLIPModel` folders
//! with the tokenizer (trained on the captions unless one is given) and the image processor.
//! The recipe may add hard negative captions to every batch (`HardNegatives`); they join the
//! image-to-text side of the loss only.

use super::hard_negatives::HardNegatives;
use super::params::ParamStore;
use super::runner::{Batch, TrainSettings, TrainStage};
use crate::checkpoint::write_atomic;
use crate::clip::{
    contrastive_loss_with_negatives, save_clip, ClipConfig, ClipImageProcessor, ClipLayout,
    ClipModel, PROCESSOR_FILE,
};
use crate::data::{captions, DataSource};
use crate::error::{Error, Result};
use crate::tokenizer::ClipTokenizer;
use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `logit_scale` is clamped to ln(100) after every step, as CLIP does.
const MAX_LOGIT_SCALE: f64 = 4.605_170_185_988_092;

/// A CLIP training recipe: optimisation settings, the vocabulary size and the model config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClipRecipe {
    pub train: TrainSettings,
    /// Size of the BPE vocabulary trained from the captions when no tokenizer is given.
    pub vocab_size: usize,
    pub clip: ClipConfig,
    /// Extra negatives per batch: "none" (the default), "shapes", "shapes-rounded" or
    /// "word-swap".
    #[serde(default)]
    pub hard_negatives: HardNegatives,
}

impl ClipRecipe {
    pub fn validate(&self) -> Result<()> {
        self.clip.validate()?;
        self.train.validate()?;
        if self.train.batch_size < 2 {
            return Err(Error::config(
                "train.batch_size",
                "contrastive training needs at least 2 pairs per batch",
            ));
        }
        Ok(())
    }
}

pub struct ClipStage {
    params: ParamStore,
    model: ClipModel,
    config: ClipConfig,
    tokenizer: ClipTokenizer,
    processor: ClipImageProcessor,
    logit_scale: Var,
    hard_negatives: HardNegatives,
    device: Device,
}

impl ClipStage {
    /// Trains a tokenizer on the captions of `data` unless `tokenizer` names one.
    pub fn new(
        recipe: &ClipRecipe,
        data: &str,
        tokenizer: Option<&Path>,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        recipe.validate()?;
        let mut config = recipe.clip.clone();
        let context = config.text_config.max_position_embeddings;
        let tokenizer = match tokenizer {
            Some(dir) => ClipTokenizer::load(dir)?.with_context_length(context)?,
            None => {
                let source = DataSource::open(data)?;
                let texts = captions(&source)?;
                ClipTokenizer::train(texts.iter(), recipe.vocab_size, context)?
            }
        };
        let text = &mut config.text_config;
        text.vocab_size = tokenizer.vocab_size();
        text.bos_token_id = tokenizer.bos_id();
        text.eos_token_id = tokenizer.eos_id();
        text.pad_token_id = tokenizer.pad_id();
        if text.eos_token_id == 2 {
            // transformers reads eos_token_id == 2 as "pool at argmax(ids)"; with this vocabulary
            // that is not the end token, so pooling would silently differ there.
            return Err(Error::Tokenizer(
                "the end-of-text token has id 2, which transformers treats as a legacy marker; use a tokenizer whose <|endoftext|> id is not 2".into(),
            ));
        }
        let params = ParamStore::new(seed);
        let model = ClipModel::new(&config, params.var_builder(device))?;
        let logit_scale = params
            .vars()
            .into_iter()
            .find(|(n, _)| n == "logit_scale")
            .map(|(_, v)| v)
            .ok_or_else(|| Error::InvalidInput("the CLIP model has no logit_scale".into()))?;
        Ok(Self {
            params,
            model,
            processor: ClipImageProcessor::for_image_size(config.vision_config.image_size),
            config,
            tokenizer,
            logit_scale,
            hard_negatives: recipe.hard_negatives,
            device: device.clone(),
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }
}

/// A diffusers unCLIP folder with both CLIP towers.
pub(crate) fn is_pipeline(dir: &Path) -> bool {
    dir.join("text_encoder").is_dir() && dir.join("image_encoder").is_dir()
}

impl ClipStage {
    /// Rendered scenes as the data loader delivers images: resized and cropped by the image
    /// processor (PIL bicubic), whole 8-bit values, then [-1, 1]. (B, 3, S, S).
    fn scene_pixels(&self, scenes: &[image::RgbImage], device: &Device) -> Result<Tensor> {
        let size = self.config.vision_config.image_size;
        let mut resize_only = self.processor.clone();
        resize_only.do_rescale = false;
        resize_only.do_normalize = false;
        let mut values = Vec::with_capacity(scenes.len() * 3 * size * size);
        for scene in scenes {
            let (w, h) = (scene.width() as usize, scene.height() as usize);
            let chw = resize_only.preprocess_rgb8(scene.as_raw(), w, h)?;
            values.extend(chw.iter().map(|&v| (v as u8) as f32 / 127.5 - 1.0));
        }
        Ok(Tensor::from_vec(
            values,
            (scenes.len(), 3, size, size),
            device,
        )?)
    }
}

impl TrainStage for ClipStage {
    fn name(&self) -> &'static str {
        "clip"
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn image_size(&self) -> usize {
        self.config.vision_config.image_size
    }

    fn loss(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let negatives = self.hard_negatives.for_captions(&batch.captions, rng)?;
        let mut captions = batch.captions.clone();
        captions.extend(negatives.captions);
        let (ids, mask) = self
            .tokenizer
            .encode_batch(&captions)?
            .to_tensors(batch.pixels.device())?;
        let mut images = vec![batch.pixels.clone()];
        if !negatives.scenes.is_empty() {
            images.push(self.scene_pixels(&negatives.scenes, batch.pixels.device())?);
        }
        // Last: they pair with no caption.
        if let Some(rounded) =
            self.hard_negatives
                .rounded_images(&batch.pixels, &batch.captions, rng)?
        {
            images.push(rounded);
        }
        let batch_pixels = Tensor::cat(&images, 0)?;
        // Pixels arrive in [-1, 1]; CLIP normalises [0, 1] with the processor's mean and std.
        let p = &self.processor;
        let mean = Tensor::new(&p.image_mean, batch.pixels.device())?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&p.image_std, batch.pixels.device())?.reshape((1, 3, 1, 1))?;
        let pixels = ((&batch_pixels + 1.0)? / 2.0)?
            .broadcast_sub(&mean)?
            .broadcast_div(&std)?;
        let text = self.model.text_features(&ids, Some(&mask))?;
        let image = self.model.image_features(&pixels)?;
        let (logits_per_text, _) = self.model.logits(&text, &image)?;
        Ok(contrastive_loss_with_negatives(&logits_per_text)?)
    }

    fn after_step(&self) -> Result<()> {
        let clamped = self.logit_scale.as_tensor().clamp(0.0, MAX_LOGIT_SCALE)?;
        Ok(self.logit_scale.set(&clamped)?)
    }

    fn init_from(&self, dir: &Path) -> Result<()> {
        if dir.join("config.json").is_file() || !is_pipeline(dir) {
            self.params
                .load_folder("", dir, &["model.safetensors"], &[])?;
            return Ok(());
        }
        // A pipeline stores the towers apart and no logit_scale, which then starts afresh.
        let names: Vec<String> = self.params.vars().into_iter().map(|(n, _)| n).collect();
        for (folder, prefix, projection) in [
            ("text_encoder", "text_model.", "text_projection.weight"),
            ("image_encoder", "vision_model.", "visual_projection.weight"),
        ] {
            let others: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| !n.starts_with(prefix) && *n != projection)
                .collect();
            self.params
                .load_folder("", &dir.join(folder), &["model.safetensors"], &others)?;
        }
        Ok(())
    }

    fn save_model(&self, dir: &Path, weights: &[(String, Tensor)]) -> Result<()> {
        save_clip(dir, &self.config, weights, ClipLayout::Full)?;
        self.tokenizer.save(dir)?;
        let json = serde_json::to_string_pretty(&self.processor)
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        write_atomic(&dir.join(PROCESSOR_FILE), json.as_bytes())
    }

    fn preview(&self, _path: &Path, _weights: &[(String, Tensor)], _batch: &Batch) -> Result<()> {
        // CLIP's progress is its validation loss (and `unclip classify` on the result).
        Ok(())
    }
}
