//! Training the decoder (unCLIP §2.1): a Karlo-shaped U-Net and the text projection learn to
//! predict the noise of an image given its CLIP image embedding (4 extra context tokens and a
//! time-embedding bias) and its caption; the embedding is replaced by the learned null 10% of
//! the time and the caption by the empty one 50% of the time, for classifier-free guidance.
//! With `out_channels: 6` the variance is learned too (L_hybrid, Nichol & Dhariwal 2021).
//!
//! The decoder reads the caption's token states through cross-attention. Karlo takes them from
//! the frozen CLIP text tower; the paper's decoder (GLIDE's) has a text transformer of its own,
//! trained with it. A recipe's `text_encoder` gives it one: a small CLIP text transformer over
//! the same tokenizer, as wide as CLIP (so the text projection is unchanged), trained from
//! scratch with the decoder and saved as `decoder_text_encoder/`. A CLIP whose text tower has
//! learned to ignore a word (the shapes CLIP all but erases "above" against "below") cannot pass
//! it on; a text encoder trained on the decoder's loss keeps what the pictures need.

use super::conditioning::{
    keep_mask, normal, select_rows, timesteps, timesteps_with_high_noise, FrozenClip,
    TextConditioning,
};
use super::noise_loss::{check_trainable, denoising_loss, denoising_target, SnrWeighting};
use super::params::ParamStore;
use super::recipes::{check_probability, check_scheduler};
use super::runner::{Batch, TrainSettings, TrainStage};
use crate::checkpoint::{read_config, save_safetensors, write_config};
use crate::clip::{ClipModel, ClipTextConfig, WEIGHTS_FILE};
use crate::diffusion::{
    vlb_loss, NoiseSchedule, NoiseSource, Prediction, Sampler, SchedulerConfig, VarianceType,
};
use crate::error::{Error, Result};
use crate::imageops::{contact_sheet, save_png, to_rgb8};
use crate::models::unet::{UNet2DConditionConfig, UNet2DConditionModel, CONFIG_FILE};
use crate::models::{TextProj, TextProjConfig};
use crate::pipeline::{GenerateOptions, UnclipPipeline, DECODER_TEXT_ENCODER};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderRecipe {
    pub train: TrainSettings,
    /// The U-Net; `cross_attention_dim` must equal the text projection's.
    pub unet: UNet2DConditionConfig,
    /// `clip_embeddings_dim` is taken from the CLIP model; `time_embed_dim` from the U-Net.
    pub text_proj: TextProjConfig,
    pub scheduler: SchedulerConfig,
    #[serde(default = "image_drop")]
    pub image_embedding_drop: f64,
    #[serde(default = "caption_drop")]
    pub caption_drop: f64,
    /// Min-SNR-γ loss weighting (γ = 5 in its paper); absent: the plain mean squared error.
    #[serde(default)]
    pub min_snr_gamma: Option<f64>,
    /// With `min_snr_gamma`: no sample's weight falls below this (1: the noisiest steps count as
    /// in the plain mean squared error); absent: 0, plain Min-SNR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_snr_floor: Option<f64>,
    /// The decoder's own text encoder; absent: it reads the CLIP text tower's token states.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_encoder: Option<DecoderTextEncoderRecipe>,
    /// Draw a share of the training timesteps from the noisiest end only; absent: all uniform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_noise: Option<HighNoiseRecipe>,
}

/// Extra training at the timesteps where sampling decides the layout. Uniform timesteps give
/// t ≥ 800 a fifth of the steps, and Min-SNR weighting with x0 prediction scales their loss by
/// SNR (≈ 0 there), so a decoder can learn colors and shapes well and still never learn, from
/// pure noise, which half of the picture an object belongs in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HighNoiseRecipe {
    /// The lowest timestep a high-noise sample draws (uniform in min_timestep..T).
    pub min_timestep: usize,
    /// The fraction of samples per batch drawn that way, in (0, 1]; the rest are uniform.
    pub share: f64,
}

impl HighNoiseRecipe {
    fn validate(&self, num_train_timesteps: usize) -> Result<()> {
        if self.min_timestep >= num_train_timesteps {
            return Err(Error::config(
                "high_noise.min_timestep",
                format!(
                    "must be below scheduler.num_train_timesteps ({num_train_timesteps}), got {}",
                    self.min_timestep
                ),
            ));
        }
        if !(self.share > 0.0 && self.share <= 1.0) {
            return Err(Error::config(
                "high_noise.share",
                format!("must be in (0, 1], got {}", self.share),
            ));
        }
        Ok(())
    }
}

/// The size of a decoder's own text encoder; its width, vocabulary, context length and
/// special tokens are the CLIP text tower's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecoderTextEncoderRecipe {
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
}

impl DecoderTextEncoderRecipe {
    fn config(&self, clip: &ClipTextConfig) -> Result<ClipTextConfig> {
        let mut cfg = clip.clone();
        cfg.architectures = vec!["CLIPTextModel".into()];
        cfg.num_hidden_layers = self.num_hidden_layers;
        cfg.num_attention_heads = self.num_attention_heads;
        cfg.intermediate_size = self.intermediate_size;
        if self.num_hidden_layers == 0
            || self.num_attention_heads == 0
            || !cfg.hidden_size.is_multiple_of(self.num_attention_heads)
        {
            return Err(Error::config(
                "text_encoder",
                format!(
                    "needs at least one layer and a head count that divides the CLIP width {} (got {} layers, {} heads)",
                    cfg.hidden_size, self.num_hidden_layers, self.num_attention_heads
                ),
            ));
        }
        Ok(cfg)
    }
}

fn image_drop() -> f64 {
    0.1
}
fn caption_drop() -> f64 {
    0.5
}

pub struct DecoderStage {
    params: ParamStore,
    unet: UNet2DConditionModel,
    text_proj: TextProj,
    unet_config: UNet2DConditionConfig,
    text_proj_config: TextProjConfig,
    scheduler: SchedulerConfig,
    schedule: NoiseSchedule,
    clip: FrozenClip,
    image_drop: f64,
    caption_drop: f64,
    loss_weighting: Option<SnrWeighting>,
    high_noise: Option<HighNoiseRecipe>,
    image_size: usize,
    /// The empty caption's conditioning (1 row), used where the caption is dropped.
    empty: TextConditioning,
    /// The decoder's own text encoder and its config, when the recipe asks for one.
    text_encoder: Option<(ClipModel, ClipTextConfig)>,
}

fn square(cfg: &UNet2DConditionConfig) -> Result<usize> {
    use crate::models::unet::SampleSize;
    match &cfg.sample_size {
        Some(SampleSize::Square(n)) => Ok(*n),
        Some(SampleSize::Rect(v)) if v.len() == 2 && v[0] == v[1] => Ok(v[0]),
        _ => Err(Error::config(
            "unet.sample_size",
            "training needs a square sample_size",
        )),
    }
}

impl DecoderStage {
    pub fn new(recipe: &DecoderRecipe, clip: FrozenClip, seed: u64) -> Result<Self> {
        check_scheduler(&recipe.scheduler)?;
        check_probability("image_embedding_drop", recipe.image_embedding_drop)?;
        check_probability("caption_drop", recipe.caption_drop)?;
        let unet_config = recipe.unet.clone();
        unet_config.validate()?;
        let learned = unet_config.out_channels == 2 * unet_config.in_channels;
        if learned != (recipe.scheduler.variance_type == VarianceType::LearnedRange) {
            return Err(Error::config(
                "scheduler.variance_type",
                "use learned_range exactly when unet.out_channels is twice in_channels",
            ));
        }
        if learned && recipe.scheduler.prediction_type != Prediction::Epsilon {
            return Err(Error::config(
                "scheduler.prediction_type",
                "a learned variance (learned_range) trains with epsilon prediction only",
            ));
        }
        check_trainable(recipe.scheduler.prediction_type)?;
        let loss_weighting = SnrWeighting::from_recipe(recipe.min_snr_gamma, recipe.min_snr_floor)?;
        if let Some(high_noise) = &recipe.high_noise {
            high_noise.validate(recipe.scheduler.num_train_timesteps)?;
            if loss_weighting.is_some_and(|w| w.floor == 0.0)
                && recipe.scheduler.prediction_type == Prediction::Sample
            {
                tracing::warn!(
                    "min_snr_gamma with image prediction weighs each step by its SNR, about 0 at \
                     high noise, so the high_noise steps will teach little (min_snr_floor=1 keeps \
                     them at the plain weight)"
                );
            }
        }
        let mut text_proj_config = recipe.text_proj.clone();
        text_proj_config.clip_embeddings_dim = clip.embedding_dim();
        text_proj_config.time_embed_dim = unet_config.time_embed_dim();
        let empty = clip.encode_text(&[""])?;
        let params = ParamStore::new(seed);
        let vb = params.var_builder(clip.device());
        let unet = UNet2DConditionModel::new(&unet_config, vb.pp("decoder"))?;
        let text_proj = TextProj::new(&text_proj_config, vb.pp("text_proj"))?;
        let text_encoder = match &recipe.text_encoder {
            Some(r) => {
                let cfg = r.config(clip.model.text_config()?)?;
                let model = ClipModel::new_text(&cfg, vb.pp(DECODER_TEXT_ENCODER))?;
                Some((model, cfg))
            }
            None => None,
        };
        Ok(Self {
            params,
            unet,
            text_proj,
            text_encoder,
            image_size: square(&unet_config)?,
            unet_config,
            text_proj_config,
            schedule: NoiseSchedule::cosine(recipe.scheduler.num_train_timesteps),
            scheduler: recipe.scheduler.clone(),
            clip,
            image_drop: recipe.image_embedding_drop,
            caption_drop: recipe.caption_drop,
            loss_weighting,
            high_noise: recipe.high_noise.clone(),
            empty,
        })
    }

    fn split(weights: &[(String, Tensor)], prefix: &str) -> Vec<(String, Tensor)> {
        weights
            .iter()
            .filter_map(|(n, t)| {
                n.strip_prefix(prefix)
                    .map(|rest| (rest.to_string(), t.clone()))
            })
            .collect()
    }

    /// A pipeline (no prior, no upsampler) over the given weights, for previews.
    fn pipeline_with(&self, weights: &[(String, Tensor)]) -> Result<UnclipPipeline> {
        let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
        let vb = VarBuilder::from_tensors(map, DType::F32, self.clip.device());
        let unet = UNet2DConditionModel::new(&self.unet_config, vb.pp("decoder"))?;
        let text_proj = TextProj::new(&self.text_proj_config, vb.pp("text_proj"))?;
        let own_text = match &self.text_encoder {
            Some((_, cfg)) => Some(ClipModel::new_text(cfg, vb.pp(DECODER_TEXT_ENCODER))?),
            None => None,
        };
        let mut pipeline = UnclipPipeline::from_models(
            self.clip.tokenizer.clone(),
            self.clip.model.clone(),
            text_proj,
            unet,
            self.scheduler.clone(),
            None,
            Path::new("decoder preview"),
            self.clip.device(),
        )?;
        pipeline.decoder_text_encoder = own_text;
        Ok(pipeline)
    }

    /// The token states the decoder reads for `captions`, and for the empty caption (1 row):
    /// the frozen CLIP's, or its own text encoder's (with gradients).
    fn decoder_states(
        &self,
        captions: &[String],
        text: &TextConditioning,
    ) -> Result<(Tensor, Tensor)> {
        let Some((own, _)) = &self.text_encoder else {
            return Ok((text.states.clone(), self.empty.states.clone()));
        };
        let mut all = captions.to_vec();
        all.push(String::new());
        let (ids, _) = self
            .clip
            .tokenizer
            .encode_batch(&all)?
            .to_tensors(self.clip.device())?;
        let states = own.text_outputs(&ids, None)?.last_hidden_state;
        let b = captions.len();
        Ok((states.narrow(0, 0, b)?, states.narrow(0, b, 1)?))
    }
}

impl TrainStage for DecoderStage {
    fn name(&self) -> &'static str {
        "decoder"
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn device(&self) -> &Device {
        self.clip.device()
    }

    fn image_size(&self) -> usize {
        self.image_size
    }

    fn loss(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let device = batch.pixels.device();
        let b = batch.captions.len();
        let text = self.clip.encode_text(&batch.captions)?;
        let empty = &self.empty;
        let keep_caption = keep_mask(rng, b, self.caption_drop, device)?;
        let embeds = select_rows(&keep_caption, &text.embeds, &empty.embeds)?;
        let (caption_states, empty_states) = self.decoder_states(&batch.captions, &text)?;
        let states = select_rows(&keep_caption, &caption_states, &empty_states)?;
        let mask = select_rows(
            &keep_caption,
            &text.mask.to_dtype(DType::F32)?,
            &empty.mask.to_dtype(DType::F32)?,
        )?;
        let image = self.clip.encode_images(&batch.pixels)?;
        let keep_image = keep_mask(rng, b, self.image_drop, device)?;
        let image = select_rows(
            &keep_image,
            &image,
            &self.text_proj.null_image_embeddings(b)?,
        )?;
        let context = self.text_proj.forward(&image, &embeds, &states)?;
        let extra = self.text_proj_config.clip_extra_context_tokens;
        let decoder_mask =
            Tensor::cat(&[&Tensor::ones((b, extra), DType::F32, device)?, &mask], 1)?;

        let x0 = &batch.pixels;
        let train_steps = self.scheduler.num_train_timesteps;
        let ts = match &self.high_noise {
            Some(h) => timesteps_with_high_noise(rng, b, train_steps, h.min_timestep, h.share),
            None => timesteps(rng, b, train_steps),
        };
        let noise = normal(rng, x0.dims(), device)?;
        let x_t = self.schedule.q_sample(x0, &noise, &ts)?;
        let t = Tensor::new(
            ts.iter().map(|&t| t as f32).collect::<Vec<_>>().as_slice(),
            device,
        )?;
        let out = self.unet.forward(
            &x_t,
            &t,
            &context.encoder_hidden_states,
            Some(&context.additive_time_embedding),
            Some(&decoder_mask),
        )?;
        let c = x0.dim(1)?;
        let eps = out.narrow(1, 0, c)?;
        let prediction = self.scheduler.prediction_type;
        let target = denoising_target(prediction, x0, &noise)?;
        let mse = denoising_loss(
            &eps,
            &target,
            prediction,
            &self.schedule,
            &ts,
            self.loss_weighting,
        )?;
        if out.dim(1)? == 2 * c {
            let v = out.narrow(1, c, c)?;
            Ok((mse + vlb_loss(&self.schedule, x0, &x_t, &eps, &v, &ts)?)?)
        } else {
            Ok(mse)
        }
    }

    fn init_from(&self, dir: &Path) -> Result<()> {
        // Position codes add no weights, so only the config tells; a decoder that learned with
        // them decodes wrongly without them (adding them to one that had none is fine-tuning).
        let config_path = dir.join("decoder").join(CONFIG_FILE);
        if config_path.is_file() {
            let source: UNet2DConditionConfig = read_config(&config_path, "decoder config")?;
            if source.attention_position_codes && !self.unet_config.attention_position_codes {
                return Err(Error::Checkpoint {
                    path: dir.to_path_buf(),
                    message: "this decoder was trained with position codes at attention; set `unet.attention_position_codes` to true in the recipe".into(),
                });
            }
        }
        self.params.load_folder(
            "decoder.",
            &dir.join("decoder"),
            &["diffusion_pytorch_model.safetensors"],
            &[],
        )?;
        self.params.load_folder(
            "text_proj.",
            &dir.join("text_proj"),
            &["diffusion_pytorch_model.safetensors"],
            &[],
        )?;
        let own_text = dir.join(DECODER_TEXT_ENCODER);
        match (&self.text_encoder, own_text.is_dir()) {
            (Some(_), true) => {
                self.params.load_folder(
                    &format!("{DECODER_TEXT_ENCODER}."),
                    &own_text,
                    &[WEIGHTS_FILE],
                    &[],
                )?;
            }
            // A decoder that read CLIP's states gets its own text encoder: it starts afresh.
            (Some(_), false) => {}
            (None, true) => {
                return Err(Error::Checkpoint {
                    path: dir.to_path_buf(),
                    message: format!(
                        "this decoder was trained with its own text encoder (`{DECODER_TEXT_ENCODER}/`); give the recipe the `text_encoder` it was trained with"
                    ),
                })
            }
            (None, false) => {}
        }
        Ok(())
    }

    fn save_model(&self, dir: &Path, weights: &[(String, Tensor)]) -> Result<()> {
        UNet2DConditionModel::save(
            &dir.join("decoder"),
            &self.unet_config,
            &Self::split(weights, "decoder."),
        )?;
        TextProj::save(
            &dir.join("text_proj"),
            &self.text_proj_config,
            &Self::split(weights, "text_proj."),
        )?;
        if let Some((_, cfg)) = &self.text_encoder {
            let own = dir.join(DECODER_TEXT_ENCODER);
            std::fs::create_dir_all(&own).map_err(|e| Error::io(&own, e))?;
            write_config(&own.join("config.json"), cfg)?;
            save_safetensors(
                &Self::split(weights, &format!("{DECODER_TEXT_ENCODER}.")),
                &own.join(WEIGHTS_FILE),
            )?;
        }
        write_config(
            &dir.join("decoder_scheduler").join("scheduler_config.json"),
            &self.scheduler,
        )
    }

    /// Real images on the left, the decoder's reconstruction from their CLIP embedding and
    /// caption on the right (20 DDIM steps, guidance 3).
    fn preview(&self, path: &Path, weights: &[(String, Tensor)], batch: &Batch) -> Result<()> {
        let pipeline = self.pipeline_with(weights)?;
        let n = batch.captions.len().min(8);
        let pixels = batch.pixels.narrow(0, 0, n)?;
        let embeds = self.clip.encode_images(&pixels)?;
        let opts = GenerateOptions {
            decoder_steps: 20,
            decoder_guidance: 3.0,
            sampler: Sampler::Ddim { eta: 0.0 },
            ..GenerateOptions::default()
        };
        let made = pipeline.decode_embeddings(
            &embeds,
            &batch.captions[..n],
            &opts,
            &mut NoiseSource::seeded(0),
            &mut |_, _, _| {},
        )?;
        let real = ((pixels.permute((0, 2, 3, 1))? + 1.0)? / 2.0)?;
        let mut images = Vec::new();
        for (r, m) in to_rgb8(&real)?.into_iter().zip(to_rgb8(&made)?) {
            images.push(r);
            images.push(m);
        }
        match contact_sheet(&images, 4, 2) {
            Some(sheet) => save_png(&sheet, path),
            None => Ok(()),
        }
    }
}
