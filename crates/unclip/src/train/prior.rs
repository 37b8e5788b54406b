//! Training the diffusion prior (unCLIP §2.2): from a noised CLIP image embedding, the caption's
//! CLIP text embedding and token states, predict the clean image embedding (MSE on x_0), with
//! the caption dropped 10% of the time for classifier-free guidance. Embeddings are standardised
//! with `clip_mean`/`clip_std`, fixed from the training data before the first step.

use super::conditioning::{
    keep_mask, normal, select_rows, timesteps, FrozenClip, TextConditioning,
};
use super::embedding_cache::EmbeddingCache;
use super::params::ParamStore;
use super::recipes::{check_probability, check_scheduler};
use super::runner::{Batch, TrainSettings, TrainStage};
use crate::checkpoint::write_config;
use crate::data::{stream, DataSource, StreamOptions};
use crate::diffusion::{NoiseSchedule, Prediction, SchedulerConfig};
use crate::error::{Error, Result};
use crate::models::{PriorConfig, PriorTransformer};
use candle_core::{DType, Device, Tensor, D};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriorRecipe {
    pub train: TrainSettings,
    /// The prior's size; `embedding_dim` and `num_embeddings` are taken from the CLIP model.
    pub prior: PriorConfig,
    pub scheduler: SchedulerConfig,
    #[serde(default = "text_drop")]
    pub text_drop: f64,
}

fn text_drop() -> f64 {
    0.1
}

pub struct PriorStage {
    params: ParamStore,
    prior: PriorTransformer,
    config: PriorConfig,
    scheduler: SchedulerConfig,
    schedule: NoiseSchedule,
    clip: FrozenClip,
    text_drop: f64,
    /// Fixed standardisation (1, D), detached from the graph.
    mean: Tensor,
    std: Tensor,
    /// The empty caption's conditioning (1 row), used where the caption is dropped.
    empty: TextConditioning,
    cache: Option<EmbeddingCache>,
}

impl PriorStage {
    /// With `cache`, embeddings come from `unclip embed-dataset`'s file instead of running CLIP.
    pub fn new(
        recipe: &PriorRecipe,
        clip: FrozenClip,
        data: &str,
        seed: u64,
        cache: Option<EmbeddingCache>,
    ) -> Result<Self> {
        check_scheduler(&recipe.scheduler)?;
        check_probability("text_drop", recipe.text_drop)?;
        if recipe.scheduler.prediction_type != Prediction::Sample {
            return Err(Error::config(
                "scheduler.prediction_type",
                "the prior predicts the clean embedding: use \"sample\"",
            ));
        }
        let mut config = recipe.prior.clone();
        config.embedding_dim = clip.embedding_dim();
        config.num_embeddings = clip.tokenizer.context_length();
        config.clip_embed_dim = None;
        config.validate()?;
        let device = clip.device().clone();
        let params = ParamStore::new(seed);
        let prior = PriorTransformer::new(&config, params.var_builder(&device))?;
        let (mean, std) = match &cache {
            Some(c) => {
                if c.embedding_dim()? != config.embedding_dim {
                    return Err(Error::config(
                        "embeddings",
                        format!(
                            "the embeddings file has width {}, the CLIP model {}",
                            c.embedding_dim()?,
                            config.embedding_dim
                        ),
                    ));
                }
                c.statistics()?
            }
            None => embedding_statistics(&clip, data, seed)?,
        };
        let (mean, std) = (mean.to_device(&device)?, std.to_device(&device)?);
        let empty = clip.encode_text(&[""])?;
        for (name, var) in params.vars() {
            match name.as_str() {
                "clip_mean" => var.set(&mean)?,
                "clip_std" => var.set(&std)?,
                _ => {}
            }
        }
        Ok(Self {
            params,
            prior,
            schedule: NoiseSchedule::cosine(recipe.scheduler.num_train_timesteps),
            scheduler: recipe.scheduler.clone(),
            config,
            clip,
            text_drop: recipe.text_drop,
            mean,
            std,
            empty,
            cache,
        })
    }
}

/// Mean and std (1, D) of the CLIP image embeddings of up to 512 training images.
fn embedding_statistics(clip: &FrozenClip, data: &str, seed: u64) -> Result<(Tensor, Tensor)> {
    let source = DataSource::open(data)?;
    let size = clip.model.vision_config()?.image_size;
    let opts = StreamOptions {
        image_size: size,
        seed,
        epoch: 0,
        skip: 0,
        shuffle_buffer: 64,
        workers: 2,
    };
    let mut embeds = Vec::new();
    let mut chunk = Vec::new();
    let mut n = 0;
    for sample in stream(&source, &opts)?.take(512) {
        chunk.extend(sample.pixels);
        n += 1;
        if n % 64 == 0 {
            embeds.push(encode_chunk(clip, &chunk, size)?);
            chunk.clear();
        }
    }
    if !chunk.is_empty() {
        embeds.push(encode_chunk(clip, &chunk, size)?);
    }
    if n < 2 {
        return Err(Error::Data(format!(
            "{}: fewer than 2 readable images",
            source.describe()
        )));
    }
    let all = Tensor::cat(&embeds, 0)?;
    let mean = all.mean_keepdim(0)?;
    let std = all
        .broadcast_sub(&mean)?
        .sqr()?
        .mean_keepdim(0)?
        .sqrt()?
        .clamp(1e-4, f64::MAX)?;
    Ok((mean, std))
}

fn encode_chunk(clip: &FrozenClip, pixels: &[u8], size: usize) -> Result<Tensor> {
    let b = pixels.len() / (size * size * 3);
    let x = Tensor::from_vec(pixels.to_vec(), (b, size, size, 3), clip.device())?
        .permute((0, 3, 1, 2))?
        .to_dtype(DType::F32)?;
    clip.encode_images(&((x / 127.5)? - 1.0)?)
}

impl TrainStage for PriorStage {
    fn name(&self) -> &'static str {
        "prior"
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn device(&self) -> &Device {
        self.clip.device()
    }

    fn image_size(&self) -> usize {
        self.clip
            .model
            .vision_config()
            .map(|c| c.image_size)
            .unwrap_or(64)
    }

    fn loss(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let device = batch.pixels.device();
        let b = batch.captions.len();
        let (image, text) = match &self.cache {
            Some(cache) => {
                let (image, text) = cache.lookup(&batch.keys)?;
                (image.to_device(device)?, text.to_device(device)?)
            }
            None => (
                self.clip.encode_images(&batch.pixels)?,
                self.clip.encode_text(&batch.captions)?,
            ),
        };
        let empty = &self.empty;
        let keep = keep_mask(rng, b, self.text_drop, device)?;
        let embeds = select_rows(&keep, &text.embeds, &empty.embeds)?;
        let states = select_rows(&keep, &text.states, &empty.states)?;
        let mask = select_rows(
            &keep,
            &text.mask.to_dtype(DType::F32)?,
            &empty.mask.to_dtype(DType::F32)?,
        )?;
        let x0 = image.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
        let ts = timesteps(rng, b, self.scheduler.num_train_timesteps);
        let noise = normal(rng, x0.dims(), device)?;
        let x_t = self.schedule.q_sample(&x0, &noise, &ts)?;
        let t = Tensor::new(
            ts.iter().map(|&t| t as f32).collect::<Vec<_>>().as_slice(),
            device,
        )?;
        let predicted = self
            .prior
            .forward(&x_t, &t, &embeds, &states, Some(&mask))?;
        Ok((predicted - x0)?.sqr()?.mean(D::Minus1)?.mean_all()?)
    }

    fn init_from(&self, dir: &Path) -> Result<()> {
        // The normalisation statistics stay those of this run's data: the loss and the saved
        // model must agree on them.
        self.params.load_folder(
            "",
            &dir.join("prior"),
            &["diffusion_pytorch_model.safetensors"],
            &["clip_mean", "clip_std"],
        )?;
        Ok(())
    }

    fn save_model(&self, dir: &Path, weights: &[(String, Tensor)]) -> Result<()> {
        PriorTransformer::save(&dir.join("prior"), &self.config, weights)?;
        write_config(
            &dir.join("prior_scheduler").join("scheduler_config.json"),
            &self.scheduler,
        )
    }

    fn preview(&self, _path: &Path, _weights: &[(String, Tensor)], _batch: &Batch) -> Result<()> {
        // The prior makes embeddings, not pictures: its progress is the validation loss.
        Ok(())
    }
}
