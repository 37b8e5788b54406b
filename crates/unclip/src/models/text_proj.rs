//! unCLIP's conditioning of the decoder on the CLIP image embedding (§2.1): "we project CLIP
//! embeddings into four extra tokens of context that are concatenated to the sequence of outputs
//! from the GLIDE text encoder", and add a projection of it (plus one of the text embedding) to
//! the timestep embedding. For guidance, the unconditional half uses a learned null embedding.
//! Reference: diffusers `pipelines/deprecated/unclip/text_proj.py` (UnCLIPTextProjModel).

use crate::checkpoint::{read_folder, save_folder};
use crate::error::Result;
use crate::nn::LayerNorm;
use crate::nn::{linear, Linear};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use std::path::Path;

fn four() -> usize {
    4
}
fn d_clip() -> usize {
    768
}
fn d_class() -> String {
    "UnCLIPTextProjModel".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextProjConfig {
    #[serde(rename = "_class_name", default = "d_class")]
    pub class_name: String,
    #[serde(default = "four")]
    pub clip_extra_context_tokens: usize,
    #[serde(default = "d_clip")]
    pub clip_embeddings_dim: usize,
    pub time_embed_dim: usize,
    pub cross_attention_dim: usize,
}

#[derive(Debug, Clone)]
pub struct TextProj {
    learned_classifier_free_guidance_embeddings: Tensor,
    embedding_proj: Linear,
    clip_image_embeddings_project_to_time_embeddings: Linear,
    clip_extra_context_tokens_proj: Linear,
    encoder_hidden_states_proj: Linear,
    text_encoder_hidden_states_norm: LayerNorm,
    config: TextProjConfig,
}

/// The decoder's conditioning.
#[derive(Debug, Clone)]
pub struct DecoderContext {
    /// (B, 4 + T, cross_attention_dim): the 4 image tokens, then the projected text states.
    pub encoder_hidden_states: Tensor,
    /// (B, time_embed_dim): added to the decoder's timestep embedding.
    pub additive_time_embedding: Tensor,
}

impl TextProj {
    pub fn new(cfg: &TextProjConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let d = cfg.clip_embeddings_dim;
        Ok(Self {
            learned_classifier_free_guidance_embeddings: vb.get_with_hints(
                d,
                "learned_classifier_free_guidance_embeddings",
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )?,
            embedding_proj: linear(d, cfg.time_embed_dim, vb.pp("embedding_proj"))?,
            clip_image_embeddings_project_to_time_embeddings: linear(
                d,
                cfg.time_embed_dim,
                vb.pp("clip_image_embeddings_project_to_time_embeddings"),
            )?,
            clip_extra_context_tokens_proj: linear(
                d,
                cfg.clip_extra_context_tokens * cfg.cross_attention_dim,
                vb.pp("clip_extra_context_tokens_proj"),
            )?,
            encoder_hidden_states_proj: linear(
                d,
                cfg.cross_attention_dim,
                vb.pp("encoder_hidden_states_proj"),
            )?,
            text_encoder_hidden_states_norm: LayerNorm::new(
                cfg.cross_attention_dim,
                1e-5,
                vb.pp("text_encoder_hidden_states_norm"),
            )?,
            config: cfg.clone(),
        })
    }

    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg, weights) = read_folder::<TextProjConfig>(dir, "UnCLIPTextProjModel", device)?;
        let model = Self::new(&cfg, weights.var_builder(DType::F32, device))
            .map_err(|e| weights.explain(e))?;
        weights.report_unused();
        Ok(model)
    }

    pub fn config(&self) -> &TextProjConfig {
        &self.config
    }

    /// Writes a diffusers `text_proj/` folder holding `tensors` (checked against `cfg` first).
    pub fn save(dir: &Path, cfg: &TextProjConfig, tensors: &[(String, Tensor)]) -> Result<()> {
        save_folder(dir, cfg, tensors, |vb| Self::new(cfg, vb).map(|_| ()))
    }

    /// The learned null image embedding, repeated `batch` times.
    pub fn null_image_embeddings(&self, batch: usize) -> candle_core::Result<Tensor> {
        let d = self.config.clip_embeddings_dim;
        self.learned_classifier_free_guidance_embeddings
            .reshape((1, d))?
            .repeat((batch, 1))
    }

    /// image_embeddings (B, D) — for guidance the caller has already prepended the null
    /// embeddings (see `null_image_embeddings`) so that it matches the (uncond, cond) text batch;
    /// prompt_embeds (B, D); text_hidden_states (B, T, D).
    pub fn forward(
        &self,
        image_embeddings: &Tensor,
        prompt_embeds: &Tensor,
        text_hidden_states: &Tensor,
    ) -> candle_core::Result<DecoderContext> {
        let b = prompt_embeds.dim(0)?;
        if image_embeddings.dim(0)? != b {
            candle_core::bail!(
                "text_proj: {} image embeddings for {b} prompts",
                image_embeddings.dim(0)?
            );
        }
        let additive_time_embedding = (self
            .clip_image_embeddings_project_to_time_embeddings
            .forward(image_embeddings)?
            + self.embedding_proj.forward(prompt_embeds)?)?;
        // Token k is the strided slice k, k+4, ... of the projection (reshape then permute),
        // exactly as the reference lays it out.
        let k = self.config.clip_extra_context_tokens;
        let extra = self
            .clip_extra_context_tokens_proj
            .forward(image_embeddings)?
            .reshape((b, (), k))?
            .permute((0, 2, 1))?; // (B, 4, cross_dim)
        let text = self.text_encoder_hidden_states_norm.forward(
            &self
                .encoder_hidden_states_proj
                .forward(text_hidden_states)?,
        )?;
        let encoder_hidden_states = Tensor::cat(&[&extra.contiguous()?, &text], 1)?;
        Ok(DecoderContext {
            encoder_hidden_states,
            additive_time_embedding,
        })
    }
}
