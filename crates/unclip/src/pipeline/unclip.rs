//! unCLIP text-to-image and image variations (Ramesh et al. 2022, §2), composed from the
//! models: tokenizer → CLIP text tower → guided prior → text projection → guided decoder →
//! upsamplers. Loads diffusers' unCLIP pipeline folders (Karlo's layout: `model_index.json`,
//! `prior/`, `text_proj/`, `decoder/`, `super_res_first/`, `super_res_last/`, `text_encoder/`,
//! `tokenizer/`, the three schedulers; variations add `image_encoder/` and `feature_extractor/`).
//! Reference order of operations: diffusers `pipelines/deprecated/unclip/pipeline_unclip.py`.

use super::ranker::{Ranker, RANKER};
use super::sampling::{sample_loop, Progress, Stage};
use crate::checkpoint::read_config;
use crate::clip::{ClipImageProcessor, ClipModel};
use crate::diffusion::{
    classifier_free_guidance, NoiseSource, Sampler, Scheduler, SchedulerConfig,
};
use crate::error::{Error, Result};
use crate::imageops::{resize_bicubic_antialias, to_rgb8};
use crate::models::unet::{SampleSize, UNet2DConditionModel, UNet2DModel};
use crate::models::{DecoderContext, PriorTransformer, TextProj};
use crate::tokenizer::ClipTokenizer;
use candle_core::{DType, Device, Tensor, D};
use std::path::{Path, PathBuf};

/// Per-stage sampling settings; defaults are Karlo's (diffusers' pipeline signature).
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub images_per_prompt: usize,
    pub prior_steps: usize,
    pub decoder_steps: usize,
    pub super_res_steps: usize,
    pub prior_guidance: f64,
    pub decoder_guidance: f64,
    pub sampler: Sampler,
    /// Draw this many prior samples per image and keep the one whose embedding has the highest
    /// dot product with the text embedding (unCLIP §2.2 uses 2). 1 reproduces the reference.
    pub prior_candidates: usize,
    /// Decode this many images per image asked for and keep the one whose CLIP image embedding
    /// is closest (cosine) to the prompt's text embedding, ranked at the decoder's resolution
    /// before upsampling (CLIP reranking, as DALL-E ranked its samples). Needs the pipeline's
    /// `image_encoder/`; 1 reproduces the reference.
    pub image_candidates: usize,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            images_per_prompt: 1,
            prior_steps: 25,
            decoder_steps: 25,
            super_res_steps: 7,
            prior_guidance: 4.0,
            decoder_guidance: 8.0,
            sampler: Sampler::Ddpm,
            prior_candidates: 1,
            image_candidates: 1,
        }
    }
}

impl GenerateOptions {
    pub(super) fn validate(&self) -> Result<()> {
        if !(1..=64).contains(&self.images_per_prompt) {
            return Err(Error::InvalidInput(format!(
                "n = {}; allowed: 1..=64",
                self.images_per_prompt
            )));
        }
        if !(1..=16).contains(&self.prior_candidates) {
            return Err(Error::InvalidInput(format!(
                "prior candidates = {}; allowed: 1..=16",
                self.prior_candidates
            )));
        }
        if !(1..=16).contains(&self.image_candidates) {
            return Err(Error::InvalidInput(format!(
                "image candidates = {}; allowed: 1..=16",
                self.image_candidates
            )));
        }
        for (name, steps) in [
            ("prior steps", self.prior_steps),
            ("decoder steps", self.decoder_steps),
            ("super-res steps", self.super_res_steps),
        ] {
            if steps < 2 {
                return Err(Error::InvalidInput(format!(
                    "{name} {steps}; allowed: 2..=1000 (at most the schedule's training steps, \
                     1000 in Karlo's)"
                )));
            }
        }
        for (name, g) in [
            ("prior guidance", self.prior_guidance),
            ("decoder guidance", self.decoder_guidance),
        ] {
            if !g.is_finite() || g < 0.0 {
                return Err(Error::InvalidInput(format!(
                    "{name} {g}; allowed: a number >= 0 (1 disables guidance)"
                )));
            }
        }
        Ok(())
    }
}

/// The folder of a decoder's own text encoder, in a pipeline and in a decoder training run.
pub const DECODER_TEXT_ENCODER: &str = "decoder_text_encoder";

/// The text tower's view of a batch of prompts.
pub(crate) struct EncodedText {
    pub(crate) embeds: Tensor, // (B, D)
    pub(crate) states: Tensor, // (B, T, D)
    /// The token states the decoder reads: `states`, or those of its own text encoder.
    pub(crate) decoder_states: Tensor, // (B, T, D)
    pub(crate) mask: Tensor,   // (B, T) u32
}

/// What the decoder is conditioned on for one batch: the projected context and its mask, with
/// the unconditional half first when guided.
pub(crate) struct DecoderCondition {
    context: DecoderContext,
    mask: Tensor,
    guided: bool,
    guidance: f64,
}

pub struct UnclipPipeline {
    pub tokenizer: ClipTokenizer,
    pub text_encoder: ClipModel,
    pub prior: Option<PriorTransformer>,
    pub prior_scheduler: SchedulerConfig,
    pub text_proj: TextProj,
    pub decoder: UNet2DConditionModel,
    pub decoder_scheduler: SchedulerConfig,
    pub super_res_first: Option<UNet2DModel>,
    pub super_res_last: Option<UNet2DModel>,
    pub super_res_scheduler: SchedulerConfig,
    pub image_encoder: Option<ClipModel>,
    pub feature_extractor: Option<ClipImageProcessor>,
    /// The decoder's own text encoder (`decoder_text_encoder/`, a CLIPTextModel trained with the
    /// decoder), read by the decoder instead of `text_encoder`'s token states. Not part of
    /// diffusers' layout, which ignores the folder; Karlo's pipelines have none.
    pub decoder_text_encoder: Option<ClipModel>,
    /// A CLIP of its own for ranking image candidates (`ranker/`); without one, the pipeline's
    /// `text_encoder/` and `image_encoder/` rank.
    pub ranker: Option<Ranker>,
    dir: PathBuf,
    device: Device,
}

fn component(dir: &Path, name: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    if path.is_dir() {
        Ok(path)
    } else {
        Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("the pipeline has no `{name}/` component, which this operation needs"),
        })
    }
}

fn scheduler_config(dir: &Path, name: &str) -> Result<SchedulerConfig> {
    let path = component(dir, name)?.join("scheduler_config.json");
    let config: SchedulerConfig = read_config(&path, "an UnCLIPScheduler config")?;
    config.validate().map_err(|e| e.in_file(&path))?;
    Ok(config)
}

pub(crate) fn side(size: &Option<SampleSize>, field: &str) -> Result<(usize, usize)> {
    match size {
        Some(SampleSize::Square(n)) => Ok((*n, *n)),
        Some(SampleSize::Rect(v)) if v.len() == 2 => Ok((v[0], v[1])),
        _ => Err(Error::config(
            field,
            "sample_size must be set (an int or [height, width])",
        )),
    }
}

impl UnclipPipeline {
    /// Loads a pipeline folder. Text-to-image needs `prior/`; variations need `image_encoder/`;
    /// `super_res_*` are optional (then the decoder's image is the output).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        if !dir.join("model_index.json").is_file() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: "no model_index.json: not a diffusers pipeline folder".into(),
            });
        }
        let tokenizer = ClipTokenizer::load(&component(dir, "tokenizer")?)?;
        let text_encoder = ClipModel::load(&component(dir, "text_encoder")?, device)?;
        let prior = if dir.join("prior").is_dir() {
            Some(PriorTransformer::load(&dir.join("prior"), device)?)
        } else {
            None
        };
        let prior_scheduler = if prior.is_some() {
            scheduler_config(dir, "prior_scheduler")?
        } else {
            SchedulerConfig::default()
        };
        let text_proj = TextProj::load(&component(dir, "text_proj")?, device)?;
        let decoder = UNet2DConditionModel::load(&component(dir, "decoder")?, device)?;
        let decoder_scheduler = scheduler_config(dir, "decoder_scheduler")?;
        let (super_res_first, super_res_last, super_res_scheduler) =
            if dir.join("super_res_first").is_dir() {
                let first = UNet2DModel::load(&dir.join("super_res_first"), device)?;
                let last = match dir.join("super_res_last").is_dir() {
                    true => Some(UNet2DModel::load(&dir.join("super_res_last"), device)?),
                    false => None,
                };
                (
                    Some(first),
                    last,
                    scheduler_config(dir, "super_res_scheduler")?,
                )
            } else {
                (None, None, SchedulerConfig::default())
            };
        let (image_encoder, feature_extractor) = if dir.join("image_encoder").is_dir() {
            let encoder = ClipModel::load(&dir.join("image_encoder"), device)?;
            let size = encoder.vision_config()?.image_size;
            let processor =
                ClipImageProcessor::load_or_default(&dir.join("feature_extractor"), size)?;
            (Some(encoder), Some(processor))
        } else {
            (None, None)
        };
        let decoder_text_encoder = if dir.join(DECODER_TEXT_ENCODER).is_dir() {
            Some(ClipModel::load(&dir.join(DECODER_TEXT_ENCODER), device)?)
        } else {
            None
        };
        let ranker = if dir.join(RANKER).is_dir() {
            Some(Ranker::load(&dir.join(RANKER), device)?)
        } else {
            None
        };
        let pipeline = Self {
            tokenizer,
            text_encoder,
            prior,
            prior_scheduler,
            text_proj,
            decoder,
            decoder_scheduler,
            super_res_first,
            super_res_last,
            super_res_scheduler,
            image_encoder,
            feature_extractor,
            decoder_text_encoder,
            ranker,
            dir: dir.to_path_buf(),
            device: device.clone(),
        };
        pipeline.check_dimensions()?;
        Ok(pipeline)
    }

    /// A pipeline from models already in memory (trainers preview with it); `dir` names it in
    /// errors.
    #[allow(clippy::too_many_arguments)]
    pub fn from_models(
        tokenizer: ClipTokenizer,
        text_encoder: ClipModel,
        text_proj: TextProj,
        decoder: UNet2DConditionModel,
        decoder_scheduler: SchedulerConfig,
        super_res: Option<(UNet2DModel, SchedulerConfig)>,
        dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let (super_res_first, super_res_scheduler) = match super_res {
            Some((unet, cfg)) => (Some(unet), cfg),
            None => (None, SchedulerConfig::default()),
        };
        let pipeline = Self {
            tokenizer,
            text_encoder,
            prior: None,
            prior_scheduler: SchedulerConfig::default(),
            text_proj,
            decoder,
            decoder_scheduler,
            super_res_first,
            super_res_last: None,
            super_res_scheduler,
            image_encoder: None,
            feature_extractor: None,
            decoder_text_encoder: None,
            ranker: None,
            dir: dir.to_path_buf(),
            device: device.clone(),
        };
        pipeline.check_dimensions()?;
        Ok(pipeline)
    }

    /// Decodes image embeddings (B, D), one per caption, with those captions as the text.
    pub fn decode_embeddings<S: AsRef<str>>(
        &self,
        image_embeddings: &Tensor,
        captions: &[S],
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        opts.validate()?;
        if captions.len() != image_embeddings.dim(0)? {
            return Err(Error::InvalidInput(format!(
                "{} captions for {} image embeddings",
                captions.len(),
                image_embeddings.dim(0)?
            )));
        }
        let guided = opts.decoder_guidance > 1.0;
        let cond = self.encode_text(captions, 1)?;
        let text = if guided {
            self.with_unconditional(cond)?
        } else {
            cond
        };
        self.decode(image_embeddings, &text, guided, opts, noise, progress)
    }

    /// Components whose sizes disagree are named here, not deep inside a matmul.
    fn check_dimensions(&self) -> Result<()> {
        let text = self.text_encoder.text_config()?;
        let clip_dim = self.text_proj.config().clip_embeddings_dim;
        let mismatch = |what: String| {
            Err(Error::Checkpoint {
                path: self.dir.clone(),
                message: what,
            })
        };
        let projection = self.text_encoder.config().projection_dim;
        if projection != clip_dim || text.hidden_size != clip_dim {
            return mismatch(format!(
                "text_encoder (hidden {}, projection {projection}) does not match text_proj.clip_embeddings_dim {clip_dim}",
                text.hidden_size
            ));
        }
        if let Some(own) = &self.decoder_text_encoder {
            let hidden = own.text_config()?.hidden_size;
            if hidden != clip_dim {
                return mismatch(format!(
                    "{DECODER_TEXT_ENCODER} (hidden {hidden}) does not match text_proj.clip_embeddings_dim {clip_dim}"
                ));
            }
        }
        if let Some(prior) = &self.prior {
            if prior.config().embedding_dim != clip_dim
                || prior.config().num_embeddings != self.tokenizer.context_length()
            {
                return mismatch(format!(
                    "prior (embedding_dim {}, num_embeddings {}) does not match the CLIP size {clip_dim} and the tokenizer's {} tokens",
                    prior.config().embedding_dim,
                    prior.config().num_embeddings,
                    self.tokenizer.context_length()
                ));
            }
        }
        let decoder = self.decoder.config();
        let cross = decoder.cross_attention_dim.resolve(
            decoder.down_block_types.len(),
            "decoder.cross_attention_dim",
        )?;
        let wanted = self.text_proj.config().cross_attention_dim;
        if cross.iter().any(|&c| c != wanted) {
            return mismatch(format!(
                "decoder.cross_attention_dim {cross:?} differs from text_proj.cross_attention_dim {wanted}"
            ));
        }
        if let Some(encoder) = &self.image_encoder {
            if encoder.config().projection_dim != clip_dim {
                return mismatch(format!(
                    "image_encoder.projection_dim {} differs from the CLIP size {clip_dim}",
                    encoder.config().projection_dim
                ));
            }
        }
        if let Some(first) = &self.super_res_first {
            if first.config().in_channels != 2 * decoder.in_channels {
                return mismatch(format!(
                    "super_res_first.in_channels {} must be twice the decoder's {} (noisy image + upscaled image)",
                    first.config().in_channels,
                    decoder.in_channels
                ));
            }
        }
        Ok(())
    }

    /// The device the pipeline's weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The output resolution.
    pub fn output_size(&self) -> Result<(usize, usize)> {
        match &self.super_res_first {
            Some(sr) => side(&sr.config().sample_size, "super_res_first.sample_size"),
            None => side(&self.decoder.config().sample_size, "decoder.sample_size"),
        }
    }

    pub(crate) fn encode_text<S: AsRef<str>>(
        &self,
        prompts: &[S],
        repeat: usize,
    ) -> Result<EncodedText> {
        let batch = self.tokenizer.encode_batch(prompts)?;
        let (ids, mask) = batch.to_tensors(&self.device)?;
        let out = self.text_encoder.text_outputs(&ids, None)?;
        let embeds = self.text_encoder.text_features(&ids, None)?;
        let repeat_rows = |t: &Tensor| -> Result<Tensor> {
            let idx: Vec<u32> = (0..t.dim(0)? as u32)
                .flat_map(|i| std::iter::repeat_n(i, repeat))
                .collect();
            Ok(t.index_select(&Tensor::new(idx.as_slice(), &self.device)?, 0)?)
        };
        let states = repeat_rows(&out.last_hidden_state)?;
        let decoder_states = match &self.decoder_text_encoder {
            Some(own) => repeat_rows(&own.text_outputs(&ids, None)?.last_hidden_state)?,
            None => states.clone(),
        };
        Ok(EncodedText {
            embeds: repeat_rows(&embeds)?,
            states,
            decoder_states,
            mask: repeat_rows(&mask)?,
        })
    }

    /// (uncond, cond) stacked on the batch, as every guided call takes it.
    pub(crate) fn with_unconditional(&self, cond: EncodedText) -> Result<EncodedText> {
        let b = cond.embeds.dim(0)?;
        let uncond = self.encode_text(&vec![""; b], 1)?;
        Ok(EncodedText {
            embeds: Tensor::cat(&[&uncond.embeds, &cond.embeds], 0)?,
            states: Tensor::cat(&[&uncond.states, &cond.states], 0)?,
            decoder_states: Tensor::cat(&[&uncond.decoder_states, &cond.decoder_states], 0)?,
            mask: Tensor::cat(&[&uncond.mask, &cond.mask], 0)?,
        })
    }

    pub(crate) fn timestep(&self, t: i64, batch: usize) -> Result<Tensor> {
        Ok(Tensor::full(t as f32, batch, &self.device)?)
    }

    fn require_prior(&self) -> Result<&PriorTransformer> {
        self.prior.as_ref().ok_or_else(|| Error::Checkpoint {
            path: self.dir.clone(),
            message: "the pipeline has no `prior/` component; text-to-image needs one (this looks like a variations pipeline: use vary)".into(),
        })
    }

    /// The prior: text (with the unconditional half first when guided) → `batch` image
    /// embeddings, keeping the best of `prior_candidates` draws each.
    pub(crate) fn sample_prior(
        &self,
        text: &EncodedText,
        batch: usize,
        guided: bool,
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        let prior = self.require_prior()?;
        let k = opts.prior_candidates;
        let prior_text = if k > 1 {
            repeat_candidates(text, k)?
        } else {
            clone_text(text)
        };
        let scheduler = Scheduler::new(&self.prior_scheduler, opts.sampler, opts.prior_steps)?;
        let dim = prior.config().embedding_dim;
        let latents = noise.draw(&[batch * k, dim], &self.device)?;
        let latents = sample_loop(
            &scheduler,
            latents,
            noise,
            Stage::Prior,
            progress,
            |_, x, t| {
                let input = if guided {
                    Tensor::cat(&[x, x], 0)?
                } else {
                    x.clone()
                };
                let out = prior.forward(
                    &input,
                    &self.timestep(t, input.dim(0)?)?,
                    &prior_text.embeds,
                    &prior_text.states,
                    Some(&prior_text.mask),
                )?;
                Ok(if guided {
                    classifier_free_guidance(&out, opts.prior_guidance, None)?
                } else {
                    out
                })
            },
        )?;
        let mut image_embeddings = prior.post_process_latents(&latents)?;
        if k > 1 {
            let cond_embeds = if guided {
                text.embeds.narrow(0, batch, batch)?
            } else {
                text.embeds.clone()
            };
            image_embeddings = best_candidates(&image_embeddings, &cond_embeds, k)?;
        }
        Ok(image_embeddings)
    }

    /// The decoder's conditioning for image embeddings (B, D) and their captions.
    pub(crate) fn decoder_condition(
        &self,
        image_embeddings: &Tensor,
        text: &EncodedText,
        guided: bool,
        guidance: f64,
    ) -> Result<DecoderCondition> {
        let batch = image_embeddings.dim(0)?;
        let image_embeddings = if guided {
            Tensor::cat(
                &[
                    &self.text_proj.null_image_embeddings(batch)?,
                    image_embeddings,
                ],
                0,
            )?
        } else {
            image_embeddings.clone()
        };
        let context =
            self.text_proj
                .forward(&image_embeddings, &text.embeds, &text.decoder_states)?;
        // The 4 image tokens are always attended to: the text mask gets 4 ones on the left.
        let extra = self.text_proj.config().clip_extra_context_tokens;
        let ones = Tensor::ones((text.mask.dim(0)?, extra), DType::U32, &self.device)?;
        let mask = Tensor::cat(&[&ones, &text.mask], 1)?;
        Ok(DecoderCondition {
            context,
            mask,
            guided,
            guidance,
        })
    }

    /// The decoder's (guided) output for x_t: ε̂ and, with a learned variance, its channels.
    pub(crate) fn decoder_output(
        &self,
        condition: &DecoderCondition,
        x: &Tensor,
        t: i64,
    ) -> Result<Tensor> {
        let input = if condition.guided {
            Tensor::cat(&[x, x], 0)?
        } else {
            x.clone()
        };
        let out = self.decoder.forward(
            &input,
            &self.timestep(t, input.dim(0)?)?,
            &condition.context.encoder_hidden_states,
            Some(&condition.context.additive_time_embedding),
            Some(&condition.mask),
        )?;
        Ok(if condition.guided {
            classifier_free_guidance(&out, condition.guidance, Some(x.dim(1)?))?
        } else {
            out
        })
    }

    /// (channels, height, width) of the decoder's samples.
    pub(crate) fn decoder_shape(&self) -> Result<(usize, usize, usize)> {
        let cfg = self.decoder.config();
        let (h, w) = side(&cfg.sample_size, "decoder.sample_size")?;
        Ok((cfg.in_channels, h, w))
    }

    /// The upsampler's output for step `i` of `last_step + 1`: super_res_last takes the last.
    pub(crate) fn super_res_output(
        &self,
        i: usize,
        last_step: usize,
        x: &Tensor,
        t: i64,
        upscaled: &Tensor,
    ) -> Result<Tensor> {
        let first = self
            .super_res_first
            .as_ref()
            .ok_or_else(|| Error::Checkpoint {
                path: self.dir.clone(),
                message: "the pipeline has no `super_res_first/` component".into(),
            })?;
        let unet = match (&self.super_res_last, i == last_step) {
            (Some(last), true) => last,
            _ => first,
        };
        let input = Tensor::cat(&[x, upscaled], 1)?;
        Ok(unet.forward(&input, &self.timestep(t, x.dim(0)?)?, None)?)
    }

    /// Text-to-image: (N·n, H, W, 3) images in [0, 1].
    pub fn generate<S: AsRef<str>>(
        &self,
        prompts: &[S],
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        opts.validate()?;
        if prompts.is_empty() {
            return Err(Error::InvalidInput("no prompt given".into()));
        }
        self.require_prior()?;
        let k = opts.image_candidates;
        if k > 1 {
            self.require_ranking_towers()?;
        }
        let guided = opts.prior_guidance > 1.0 || opts.decoder_guidance > 1.0;
        let n = opts.images_per_prompt;
        let cond = self.encode_text(prompts, n * k)?;
        let batch = cond.embeds.dim(0)?;
        let text = if guided {
            self.with_unconditional(cond)?
        } else {
            cond
        };

        let image_embeddings = self.sample_prior(&text, batch, guided, opts, noise, progress)?;
        let small = self.decode_small(&image_embeddings, &text, guided, opts, noise, progress)?;
        let small = if k > 1 {
            let picks = self.best_image_candidates(&small, prompts, n, k)?;
            let picks: Vec<u32> = picks.iter().map(|&i| i as u32).collect();
            small.index_select(&Tensor::new(picks.as_slice(), small.device())?, 0)?
        } else {
            small
        };
        to_images(&self.upsample(&small, opts, noise, progress)?)
    }

    /// CLIP reranking on its own: for each prompt, which of its k images (rows
    /// `i·k .. i·k + k` of `images`, (B, C, h, w) in [-1, 1]) the ranking CLIP finds closest
    /// to it, as indices into `images`.
    pub fn closest_to_prompts<S: AsRef<str>>(
        &self,
        images: &Tensor,
        prompts: &[S],
        k: usize,
    ) -> Result<Vec<usize>> {
        let rows = images.dim(0)?;
        if k == 0 || prompts.is_empty() || rows != prompts.len() * k {
            return Err(Error::InvalidInput(format!(
                "{rows} images for {} prompts with {k} candidates each; allowed: prompts x \
                 candidates images, candidates >= 1",
                prompts.len()
            )));
        }
        self.best_image_candidates(images, prompts, 1, k)
    }

    /// Which CLIP ranks: `ranker/` when the pipeline has one, else its own two towers.
    fn require_ranking_towers(&self) -> Result<()> {
        if self.ranker.is_some() || self.image_encoder.is_some() {
            return Ok(());
        }
        Err(Error::Checkpoint {
            path: self.dir.clone(),
            message: "the pipeline has neither `ranker/` nor `image_encoder/`, one of which \
                      ranking image candidates (image_candidates > 1) needs"
                .into(),
        })
    }

    /// Text embeddings (P, D) of the prompts and image embeddings (B, D) of the samples
    /// (B, C, h, w) in [-1, 1], both from the ranking CLIP.
    fn ranking_embeddings<S: AsRef<str>>(
        &self,
        samples: &Tensor,
        prompts: &[S],
    ) -> Result<(Tensor, Tensor)> {
        self.require_ranking_towers()?;
        let images = to_rgb8(&to_images(samples)?)?;
        match &self.ranker {
            Some(ranker) => Ok((
                ranker.text_embeddings(prompts)?,
                ranker.image_embeddings(&images)?,
            )),
            None => Ok((
                self.encode_text(prompts, 1)?.embeds,
                self.image_embeddings_of(&images)?,
            )),
        }
    }

    /// Rows of `samples` come as prompts × `per_prompt` images × `k` candidates; per group of
    /// k, the index (into `samples`) of the candidate whose ranking-CLIP image embedding has
    /// the highest cosine similarity with its prompt's text embedding.
    fn best_image_candidates<S: AsRef<str>>(
        &self,
        samples: &Tensor,
        prompts: &[S],
        per_prompt: usize,
        k: usize,
    ) -> Result<Vec<usize>> {
        let (text, images) = self.ranking_embeddings(samples, prompts)?;
        let normalise = |t: &Tensor| -> Result<Tensor> {
            let norm = t.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
            Ok(t.broadcast_div(&norm.clamp(1e-12, f64::MAX)?)?)
        };
        // (B, P): every candidate against every prompt; each row reads its own prompt's column.
        let cosine = normalise(&images)?
            .matmul(&normalise(&text)?.t()?)?
            .to_vec2::<f32>()?;
        let own = |row: usize| cosine[row][row / (per_prompt * k)];
        Ok((0..cosine.len() / k)
            .map(|group| {
                (group * k..group * k + k)
                    .fold((group * k, f32::NEG_INFINITY), |best, row| {
                        if own(row) > best.1 {
                            (row, own(row))
                        } else {
                            best
                        }
                    })
                    .0
            })
            .collect())
    }

    /// Image variations: embed each image with CLIP and decode again.
    pub fn vary(
        &self,
        images: &[impl AsRef<Path>],
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        opts.validate()?;
        let embeds = self.image_embeddings(images)?;
        self.vary_embeddings(&embeds, opts, noise, progress)
    }

    /// CLIP image embeddings (B, D) of image files, unnormalised as the decoder was trained on.
    pub fn image_embeddings(&self, images: &[impl AsRef<Path>]) -> Result<Tensor> {
        let (encoder, processor) = self.image_tower("variations")?;
        if images.is_empty() {
            return Err(Error::InvalidInput("no image given".into()));
        }
        let pixels = processor.preprocess_files(images, &self.device)?;
        encoder.image_features(&pixels)
    }

    /// CLIP image embeddings (B, D) of in-memory images, as `image_embeddings`.
    pub fn image_embeddings_of(&self, images: &[image::RgbImage]) -> Result<Tensor> {
        let (encoder, processor) = self.image_tower("variations")?;
        if images.is_empty() {
            return Err(Error::InvalidInput("no image given".into()));
        }
        let pixels = processor.preprocess_images(images, &self.device)?;
        encoder.image_features(&pixels)
    }

    fn image_tower(&self, purpose: &str) -> Result<(&ClipModel, &ClipImageProcessor)> {
        match (&self.image_encoder, &self.feature_extractor) {
            (Some(e), Some(p)) => Ok((e, p)),
            _ => Err(Error::Checkpoint {
                path: self.dir.clone(),
                message: format!(
                    "the pipeline has no `image_encoder/` component, which {purpose} needs"
                ),
            }),
        }
    }

    /// The upsamplers alone, on images (B, C, h, w) in [-1, 1] at the decoder's resolution:
    /// what the pipeline makes of a given decoder sample. (B, H, W, C) in [0, 1].
    pub fn upsample_decoder_samples(
        &self,
        small: &Tensor,
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        opts.validate()?;
        let (channels, h, w) = self.decoder_shape()?;
        let fits =
            matches!(small.dims4(), Ok((b, c, sh, sw)) if b > 0 && (c, sh, sw) == (channels, h, w));
        if !fits {
            return Err(Error::InvalidInput(format!(
                "decoder samples must be (batch, {channels}, {h}, {w}), got {:?}",
                small.dims()
            )));
        }
        to_images(&self.upsample(&small.clamp(-1.0, 1.0)?, opts, noise, progress)?)
    }

    /// Decodes given image embeddings (one per row) `images_per_prompt` times each.
    pub fn vary_embeddings(
        &self,
        embeds: &Tensor,
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        let n = opts.images_per_prompt;
        let rows: Vec<u32> = (0..embeds.dim(0)? as u32)
            .flat_map(|i| std::iter::repeat_n(i, n))
            .collect();
        let embeds = embeds.index_select(&Tensor::new(rows.as_slice(), &self.device)?, 0)?;
        let guided = opts.decoder_guidance > 1.0;
        let cond = self.encode_text(&vec![""; embeds.dim(0)?], 1)?;
        let text = if guided {
            self.with_unconditional(cond)?
        } else {
            cond
        };
        self.decode(&embeds, &text, guided, opts, noise, progress)
    }

    /// Decoder and upsamplers from image embeddings (B, D).
    fn decode(
        &self,
        image_embeddings: &Tensor,
        text: &EncodedText,
        guided: bool,
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        let small = self.decode_small(image_embeddings, text, guided, opts, noise, progress)?;
        to_images(&self.upsample(&small, opts, noise, progress)?)
    }

    /// The decoder alone: samples (B, C, h, w) in [-1, 1] from image embeddings (B, D).
    fn decode_small(
        &self,
        image_embeddings: &Tensor,
        text: &EncodedText,
        guided: bool,
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        let batch = image_embeddings.dim(0)?;
        let condition =
            self.decoder_condition(image_embeddings, text, guided, opts.decoder_guidance)?;
        let (channels, h, w) = self.decoder_shape()?;
        let scheduler = Scheduler::new(&self.decoder_scheduler, opts.sampler, opts.decoder_steps)?;
        let latents = noise.draw(&[batch, channels, h, w], &self.device)?;
        let small = sample_loop(
            &scheduler,
            latents,
            noise,
            Stage::Decoder,
            progress,
            |_, x, t| self.decoder_output(&condition, x, t),
        )?;
        Ok(small.clamp(-1.0, 1.0)?)
    }

    /// The upsamplers from the decoder's samples in [-1, 1] (the samples themselves without).
    pub(crate) fn upsample(
        &self,
        small: &Tensor,
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        if self.super_res_first.is_none() {
            return Ok(small.clone());
        }
        let (batch, channels, _, _) = small.dims4()?;
        let (sh, sw) = self.output_size()?;
        let scheduler = Scheduler::new(
            &self.super_res_scheduler,
            opts.sampler,
            opts.super_res_steps,
        )?;
        let latents = noise.draw(&[batch, channels, sh, sw], &self.device)?;
        let upscaled = resize_bicubic_antialias(small, sh, sw)?;
        let last_step = scheduler.len() - 1;
        sample_loop(
            &scheduler,
            latents,
            noise,
            Stage::SuperRes,
            progress,
            |i, x, t| self.super_res_output(i, last_step, x, t, &upscaled),
        )
    }
}

/// (B, C, H, W) in [-1, 1] to (B, H, W, C) in [0, 1].
pub(crate) fn to_images(samples: &Tensor) -> Result<Tensor> {
    let image = ((samples * 0.5)? + 0.5)?.clamp(0.0, 1.0)?;
    Ok(image.permute((0, 2, 3, 1))?.contiguous()?)
}

fn clone_text(t: &EncodedText) -> EncodedText {
    EncodedText {
        embeds: t.embeds.clone(),
        states: t.states.clone(),
        decoder_states: t.decoder_states.clone(),
        mask: t.mask.clone(),
    }
}

/// Repeats each row k times within each (uncond / cond) half, for drawing k prior candidates.
fn repeat_candidates(t: &EncodedText, k: usize) -> Result<EncodedText> {
    let rows = t.embeds.dim(0)?;
    let idx: Vec<u32> = (0..rows as u32)
        .flat_map(|i| std::iter::repeat_n(i, k))
        .collect();
    let idx = Tensor::new(idx.as_slice(), t.embeds.device())?;
    Ok(EncodedText {
        embeds: t.embeds.index_select(&idx, 0)?,
        states: t.states.index_select(&idx, 0)?,
        decoder_states: t.decoder_states.index_select(&idx, 0)?,
        mask: t.mask.index_select(&idx, 0)?,
    })
}

/// Keeps, per group of k candidates, the one with the largest dot product with its text
/// embedding (unCLIP §2.2).
fn best_candidates(candidates: &Tensor, text_embeds: &Tensor, k: usize) -> Result<Tensor> {
    let (rows, dim) = candidates.dims2()?;
    let groups = rows / k;
    let c = candidates.reshape((groups, k, dim))?;
    let scores = c
        .broadcast_mul(&text_embeds.unsqueeze(1)?)?
        .sum(D::Minus1)?; // (groups, k)
    let best = scores.argmax(D::Minus1)?.to_vec1::<u32>()?;
    let picks: Vec<u32> = best
        .iter()
        .enumerate()
        .map(|(g, &b)| (g * k) as u32 + b)
        .collect();
    Ok(candidates.index_select(&Tensor::new(picks.as_slice(), candidates.device())?, 0)?)
}
