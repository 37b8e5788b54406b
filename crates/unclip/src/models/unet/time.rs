//! The timestep's embedding as the U-Nets compute it: sinusoidal features (`Timesteps`), the
//! shared MLP (`TimestepEmbedding`, keys `linear_1`, `linear_2`), then the optional
//! `timestep_post_act`. Reference: diffusers `models/embeddings.py`.

use super::config::ClassEmbedding;
use crate::models::time_embedding::TimestepEmbedding;
use crate::nn::{timestep_embedding, Activation};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone, Copy)]
pub struct TimeSpec {
    /// Sinusoidal features (`block_out_channels[0]`).
    pub features: usize,
    /// Output width (`time_embedding_dim`, default 4 · `block_out_channels[0]`).
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f64,
    pub act: Activation,
    /// `timestep_post_act`.
    pub post_act: Option<Activation>,
}

#[derive(Debug, Clone)]
pub struct TimeEmbedding {
    mlp: TimestepEmbedding,
    spec: TimeSpec,
}

impl TimeEmbedding {
    /// `vb` points at the model's `time_embedding`.
    pub fn new(spec: &TimeSpec, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            mlp: TimestepEmbedding::new(spec.features, spec.dim, spec.dim, spec.act, vb)?,
            spec: *spec,
        })
    }

    /// timesteps: (N,) → (N, dim).
    pub fn forward(&self, timesteps: &Tensor) -> Result<Tensor> {
        let s = &self.spec;
        let features = timestep_embedding(timesteps, s.features, s.flip_sin_to_cos, s.freq_shift)?;
        let h = self.mlp.forward(&features)?;
        match s.post_act {
            Some(act) => act.forward(&h),
            None => Ok(h),
        }
    }
}

/// Broadcasts a timestep tensor of shape (), (1,) or (B,) to (B,) f32, as diffusers expands it.
pub fn batch_timesteps(timestep: &Tensor, batch: usize) -> Result<Tensor> {
    let t = timestep.to_dtype(candle_core::DType::F32)?;
    match t.dims() {
        [] => t.reshape(1)?.broadcast_as(batch)?.contiguous(),
        [1] => t.broadcast_as(batch)?.contiguous(),
        [n] if *n == batch => Ok(t),
        dims => candle_core::bail!(
            "timestep has shape {dims:?}; expected a scalar, (1,) or (batch = {batch},)"
        ),
    }
}

/// Adds (or, with `concat`, appends) the class labels (B, time_embed_dim) to the time embedding
/// (B, time_embed_dim), as `class_embed_type` asks.
pub fn with_class_labels(
    emb: Tensor,
    kind: ClassEmbedding,
    labels: Option<&Tensor>,
    concat: bool,
) -> Result<Tensor> {
    match (kind, labels) {
        (ClassEmbedding::Identity, Some(labels)) => {
            if labels.dims() != emb.dims() {
                candle_core::bail!(
                    "class_labels have shape {:?}; expected {:?} (batch, time embedding width)",
                    labels.dims(),
                    emb.dims()
                );
            }
            if concat {
                Tensor::cat(&[&emb, labels], 1)
            } else {
                emb + labels
            }
        }
        (ClassEmbedding::Identity, None) => candle_core::bail!(
            "class_labels are required: this U-Net adds them to the time embedding (class_embed_type identity)"
        ),
        (ClassEmbedding::None, Some(_)) => {
            candle_core::bail!("class_labels given, but this U-Net has no class_embed_type")
        }
        (ClassEmbedding::None, None) => Ok(emb),
    }
}
