//! The diffusion prior (unCLIP §2.2): a decoder-only Transformer over
//! [text token states, text embedding, timestep embedding, noised image embedding, query token]
//! whose output at the final query token predicts the clean CLIP image embedding.
//! Reference: diffusers `models/transformers/prior_transformer.py` (PriorTransformer), v0.42.1.

use super::time_embedding::TimestepEmbedding;
use crate::checkpoint::{read_folder, save_folder};
use crate::error::{Error, Result};
use crate::nn::{linear, Linear};
use crate::nn::{scaled_dot_product_attention, timestep_embedding, Activation, LayerNorm};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The value diffusers adds to masked attention logits here (not -inf).
const MASKED: f64 = -10000.0;
const LAYER_NORM_EPS: f64 = 1e-5;

fn d_heads() -> usize {
    32
}
fn d_head_dim() -> usize {
    64
}
fn d_layers() -> usize {
    20
}
fn d_embedding_dim() -> usize {
    768
}
fn d_num_embeddings() -> usize {
    77
}
fn d_additional() -> usize {
    4
}
fn d_silu() -> Activation {
    Activation::Silu
}
fn d_linear() -> Option<String> {
    Some("linear".into())
}
fn d_prd() -> Option<String> {
    Some("prd".into())
}
fn d_class() -> String {
    "PriorTransformer".into()
}

/// `PriorTransformer`'s config.json, with diffusers' defaults (Karlo's sizes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriorConfig {
    #[serde(rename = "_class_name", default = "d_class")]
    pub class_name: String,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "d_head_dim")]
    pub attention_head_dim: usize,
    #[serde(default = "d_layers")]
    pub num_layers: usize,
    #[serde(default = "d_embedding_dim")]
    pub embedding_dim: usize,
    #[serde(default = "d_num_embeddings")]
    pub num_embeddings: usize,
    #[serde(default = "d_additional")]
    pub additional_embeddings: usize,
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "d_silu")]
    pub time_embed_act_fn: Activation,
    #[serde(default)]
    pub norm_in_type: Option<String>,
    #[serde(default)]
    pub embedding_proj_norm_type: Option<String>,
    #[serde(default = "d_linear")]
    pub encoder_hid_proj_type: Option<String>,
    #[serde(default = "d_prd")]
    pub added_emb_type: Option<String>,
    #[serde(default)]
    pub time_embed_dim: Option<usize>,
    #[serde(default)]
    pub embedding_proj_dim: Option<usize>,
    #[serde(default)]
    pub clip_embed_dim: Option<usize>,
}

impl Default for PriorConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every prior field has a default")
    }
}

impl PriorConfig {
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn clip_dim(&self) -> usize {
        self.clip_embed_dim.unwrap_or(self.embedding_dim)
    }

    pub fn validate(&self) -> Result<()> {
        let check = |field: &str, value: &Option<String>, allowed: &[&str]| -> Result<()> {
            match value {
                Some(v) if !allowed.contains(&v.as_str()) => Err(Error::config(
                    field,
                    format!(
                        "`{v}` is not supported; allowed: {} or null",
                        allowed.join(", ")
                    ),
                )),
                _ => Ok(()),
            }
        };
        check("norm_in_type", &self.norm_in_type, &["layer"])?;
        check(
            "embedding_proj_norm_type",
            &self.embedding_proj_norm_type,
            &["layer"],
        )?;
        check(
            "encoder_hid_proj_type",
            &self.encoder_hid_proj_type,
            &["linear"],
        )?;
        check("added_emb_type", &self.added_emb_type, &["prd"])?;
        if self.added_emb_type.is_none() {
            return Err(Error::config(
                "added_emb_type",
                "only \"prd\" (the query token) is implemented",
            ));
        }
        if self.inner_dim() == 0 || self.num_layers == 0 {
            return Err(Error::config(
                "num_attention_heads",
                "heads, head dim and layers must be positive",
            ));
        }
        Ok(())
    }
}

/// diffusers' `Attention` as `BasicTransformerBlock` builds it for self-attention with biases.
#[derive(Debug, Clone)]
struct SelfAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(dim: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            to_q: linear(dim, dim, vb.pp("to_q"))?,
            to_k: linear(dim, dim, vb.pp("to_k"))?,
            to_v: linear(dim, dim, vb.pp("to_v"))?,
            to_out: linear(dim, dim, vb.pp("to_out").pp("0"))?,
            heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let (b, t, c) = xs.dims3()?;
        let d = c / self.heads;
        let split = |l: &Linear| {
            l.forward(xs)?
                .reshape((b, t, self.heads, d))?
                .transpose(1, 2)
        };
        let out = scaled_dot_product_attention(
            &split(&self.to_q)?,
            &split(&self.to_k)?,
            &split(&self.to_v)?,
            mask,
            1.0 / (d as f64).sqrt(),
        )?;
        self.to_out
            .forward(&out.transpose(1, 2)?.reshape((b, t, c))?)
    }
}

/// `BasicTransformerBlock` without cross-attention: x + attn(norm1(x)), x + ff(norm3(x)).
#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attn1: SelfAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl Block {
    fn new(dim: usize, heads: usize, vb: VarBuilder) -> candle_core::Result<Self> {
        Ok(Self {
            norm1: LayerNorm::new(dim, LAYER_NORM_EPS, vb.pp("norm1"))?,
            attn1: SelfAttention::new(dim, heads, vb.pp("attn1"))?,
            norm3: LayerNorm::new(dim, LAYER_NORM_EPS, vb.pp("norm3"))?,
            ff_in: linear(dim, 4 * dim, vb.pp("ff.net.0.proj"))?,
            ff_out: linear(4 * dim, dim, vb.pp("ff.net.2"))?,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let xs = (xs + self.attn1.forward(&self.norm1.forward(xs)?, mask)?)?;
        let ff = self
            .ff_out
            .forward(&self.ff_in.forward(&self.norm3.forward(&xs)?)?.gelu_erf()?)?;
        xs + ff
    }
}

#[derive(Debug, Clone)]
pub struct PriorTransformer {
    time_embedding: TimestepEmbedding,
    proj_in: Linear,
    embedding_proj_norm: Option<LayerNorm>,
    embedding_proj: Linear,
    encoder_hidden_states_proj: Option<Linear>,
    positional_embedding: Tensor,
    prd_embedding: Tensor,
    norm_in: Option<LayerNorm>,
    transformer_blocks: Vec<Block>,
    norm_out: LayerNorm,
    proj_to_clip_embeddings: Linear,
    clip_mean: Tensor,
    clip_std: Tensor,
    config: PriorConfig,
}

impl PriorTransformer {
    pub fn new(cfg: &PriorConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let inner = cfg.inner_dim();
        let time_dim = cfg.time_embed_dim.unwrap_or(inner);
        let proj_dim = cfg.embedding_proj_dim.unwrap_or(cfg.embedding_dim);
        let clip_dim = cfg.clip_dim();
        let small = Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let embedding_proj_norm = match cfg.embedding_proj_norm_type.as_deref() {
            Some("layer") => Some(LayerNorm::new(
                proj_dim,
                LAYER_NORM_EPS,
                vb.pp("embedding_proj_norm"),
            )?),
            _ => None,
        };
        let norm_in = match cfg.norm_in_type.as_deref() {
            Some("layer") => Some(LayerNorm::new(inner, LAYER_NORM_EPS, vb.pp("norm_in"))?),
            _ => None,
        };
        let encoder_hidden_states_proj = match cfg.encoder_hid_proj_type.as_deref() {
            Some("linear") => Some(linear(
                cfg.embedding_dim,
                inner,
                vb.pp("encoder_hidden_states_proj"),
            )?),
            _ => None,
        };
        let blocks = vb.pp("transformer_blocks");
        Ok(Self {
            time_embedding: TimestepEmbedding::new(
                inner,
                time_dim,
                inner,
                cfg.time_embed_act_fn,
                vb.pp("time_embedding"),
            )?,
            proj_in: linear(cfg.embedding_dim, inner, vb.pp("proj_in"))?,
            embedding_proj_norm,
            embedding_proj: linear(proj_dim, inner, vb.pp("embedding_proj"))?,
            encoder_hidden_states_proj,
            positional_embedding: vb.get_with_hints(
                (1, cfg.num_embeddings + cfg.additional_embeddings, inner),
                "positional_embedding",
                small,
            )?,
            prd_embedding: vb.get_with_hints((1, 1, inner), "prd_embedding", small)?,
            norm_in,
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| Block::new(inner, cfg.num_attention_heads, blocks.pp(i)))
                .collect::<candle_core::Result<Vec<_>>>()?,
            norm_out: LayerNorm::new(inner, LAYER_NORM_EPS, vb.pp("norm_out"))?,
            proj_to_clip_embeddings: linear(inner, clip_dim, vb.pp("proj_to_clip_embeddings"))?,
            clip_mean: vb.get_with_hints((1, clip_dim), "clip_mean", Init::Const(0.0))?,
            clip_std: vb.get_with_hints((1, clip_dim), "clip_std", Init::Const(1.0))?,
            config: cfg.clone(),
        })
    }

    /// Loads a diffusers `prior/` folder.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let (cfg, weights) = read_folder::<PriorConfig>(dir, "PriorTransformer", device)?;
        cfg.validate()
            .map_err(|e| e.in_file(dir.join("config.json")))?;
        let model = Self::new(&cfg, weights.var_builder(DType::F32, device))
            .map_err(|e| weights.explain(e))?;
        weights.report_unused();
        Ok(model)
    }

    pub fn config(&self) -> &PriorConfig {
        &self.config
    }

    /// Writes a diffusers `prior/` folder holding `tensors` (checked against `cfg` first).
    pub fn save(dir: &Path, cfg: &PriorConfig, tensors: &[(String, Tensor)]) -> Result<()> {
        save_folder(dir, cfg, tensors, |vb| Self::new(cfg, vb).map(|_| ()))
    }

    /// Predicts the (normalised) clean image embedding.
    ///
    /// hidden_states: noised image embedding (B, D); timestep: (B,) f32; proj_embedding: CLIP
    /// text embedding (B, D); encoder_hidden_states: text token states (B, T, D);
    /// attention_mask: (B, T) of 1 (token) / 0 (padding). With a mask the sequence is also
    /// causal; without one, diffusers applies no mask at all, and neither does this.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        proj_embedding: &Tensor,
        encoder_hidden_states: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let b = hidden_states.dim(0)?;
        let inner = self.config.inner_dim();
        let time = timestep_embedding(timestep, inner, true, 0.0)?;
        let time = self.time_embedding.forward(&time)?.unsqueeze(1)?; // (B, 1, C)
        let proj = match &self.embedding_proj_norm {
            Some(norm) => norm.forward(proj_embedding)?,
            None => proj_embedding.clone(),
        };
        let proj = self.embedding_proj.forward(&proj)?.unsqueeze(1)?; // (B, 1, C)
        let text = match &self.encoder_hidden_states_proj {
            Some(p) => p.forward(encoder_hidden_states)?,
            None => encoder_hidden_states.clone(),
        }; // (B, T, C)
        let latent = self.proj_in.forward(hidden_states)?.unsqueeze(1)?; // (B, 1, C)
        let query = self.prd_embedding.broadcast_as((b, 1, inner))?;
        let tokens = Tensor::cat(&[&text, &proj, &time, &latent, &query], 1)?; // (B, T + 4, C)
        let len = tokens.dim(1)?;
        if len != self.positional_embedding.dim(1)? {
            candle_core::bail!(
                "prior sequence of {len} tokens; this prior takes {} text tokens plus 4",
                self.config.num_embeddings
            );
        }
        let mut xs = tokens.broadcast_add(&self.positional_embedding)?;
        let mask = match attention_mask {
            Some(keep) => {
                // (1 - mask) * -10000, padded with zeros for the 4 extra tokens, plus causal.
                let keep = keep.to_dtype(DType::F32)?;
                let text_mask = ((1.0 - keep)? * MASKED)?.pad_with_zeros(
                    1,
                    0,
                    self.config.additional_embeddings,
                )?;
                let causal: Vec<f32> = (0..len)
                    .flat_map(|i| (0..len).map(move |j| if j > i { MASKED as f32 } else { 0.0 }))
                    .collect();
                let causal = Tensor::from_vec(causal, (1, len, len), xs.device())?;
                Some(
                    text_mask
                        .unsqueeze(1)?
                        .broadcast_add(&causal)?
                        .unsqueeze(1)?,
                ) // (B, 1, L, L)
            }
            None => None,
        };
        if let Some(norm) = &self.norm_in {
            xs = norm.forward(&xs)?;
        }
        for block in &self.transformer_blocks {
            xs = block.forward(&xs, mask.as_ref())?;
        }
        let xs = self.norm_out.forward(&xs)?;
        let last = xs.narrow(1, len - 1, 1)?.squeeze(1)?; // (B, C)
        self.proj_to_clip_embeddings.forward(&last)
    }

    /// x · clip_std + clip_mean: from the prior's normalised space to CLIP's.
    pub fn post_process_latents(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        latents
            .broadcast_mul(&self.clip_std)?
            .broadcast_add(&self.clip_mean)
    }

    /// (x - clip_mean) / clip_std: CLIP embeddings into the prior's space, for training.
    pub fn normalize_embeddings(&self, embeddings: &Tensor) -> candle_core::Result<Tensor> {
        embeddings
            .broadcast_sub(&self.clip_mean)?
            .broadcast_div(&self.clip_std)
    }
}

/// The mean over the last dimension of (a - b)², a convenience for the prior's MSE objective.
pub fn mse(a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
    (a - b)?.sqr()?.mean(D::Minus1)?.mean_all()
}
