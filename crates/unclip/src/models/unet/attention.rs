//! Spatial attention inside the U-Net blocks, as diffusers' `Attention` module builds it with two
//! processors:
//!
//! - **added K/V** (`AttnAddedKVProcessor`, the `SimpleCrossAttn*` blocks of unCLIP's decoder,
//!   GLIDE-style): every pixel attends to the text tokens, projected by `add_k_proj`/`add_v_proj`,
//!   followed (unless `only_cross_attention`) by the pixels themselves through `to_k`/`to_v`.
//!   unCLIP §2.1 feeds the four extra CLIP tokens and the text encoder's states this way.
//! - **self-attention** (`AttnProcessor2_0`, `UNetMidBlock2D` with `add_attention`): pixels
//!   attend to pixels.
//!
//! Both normalise the pixels with a group norm first, add the block input back, and divide by
//! `rescale_output_factor`. Keys: `group_norm`, `to_q`, `to_k`, `to_v`, `add_k_proj`,
//! `add_v_proj`, `to_out.0`. Reference: diffusers `models/attention_processor.py`.

use super::position_codes::sine_position_codes_2d;
use crate::nn::{linear, Linear};
use crate::nn::{scaled_dot_product_attention, GroupNorm};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// The shape of one attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionSpec {
    /// Pixel channels (`query_dim`).
    pub channels: usize,
    pub heads: usize,
    pub head_dim: usize,
    /// Width of the encoder states projected by `add_k_proj`/`add_v_proj`; `None` for plain
    /// self-attention.
    pub added_kv_dim: Option<usize>,
    /// Attend to the encoder states only (no `to_k`/`to_v`).
    pub only_cross_attention: bool,
    /// Groups of the input group norm; `None` for no norm.
    pub groups: Option<usize>,
    pub eps: f64,
    pub rescale_output_factor: f64,
    /// Add fixed 2-D position codes to the normalised pixels before they become queries, keys
    /// and values (this project's `attention_position_codes`; diffusers has no such option).
    pub position_codes: bool,
}

#[derive(Debug, Clone)]
pub struct Attention {
    group_norm: Option<GroupNorm>,
    to_q: Linear,
    to_k: Option<Linear>,
    to_v: Option<Linear>,
    add_k_proj: Option<Linear>,
    add_v_proj: Option<Linear>,
    to_out: Linear,
    spec: AttentionSpec,
}

impl Attention {
    pub fn new(spec: &AttentionSpec, vb: VarBuilder) -> Result<Self> {
        let (c, inner) = (spec.channels, spec.heads * spec.head_dim);
        if spec.added_kv_dim.is_none() && spec.only_cross_attention {
            candle_core::bail!("only_cross_attention needs encoder states (added_kv_proj_dim)");
        }
        let group_norm = match spec.groups {
            Some(g) => Some(GroupNorm::new(g, c, spec.eps, vb.pp("group_norm"))?),
            None => None,
        };
        let (to_k, to_v) = if spec.only_cross_attention {
            (None, None)
        } else {
            (
                Some(linear(c, inner, vb.pp("to_k"))?),
                Some(linear(c, inner, vb.pp("to_v"))?),
            )
        };
        let (add_k_proj, add_v_proj) = match spec.added_kv_dim {
            Some(e) => (
                Some(linear(e, inner, vb.pp("add_k_proj"))?),
                Some(linear(e, inner, vb.pp("add_v_proj"))?),
            ),
            None => (None, None),
        };
        Ok(Self {
            group_norm,
            to_q: linear(c, inner, vb.pp("to_q"))?,
            to_k,
            to_v,
            add_k_proj,
            add_v_proj,
            to_out: linear(inner, c, vb.pp("to_out").pp("0"))?,
            spec: *spec,
        })
    }

    /// (B, T, heads·D) → (B, heads, T, D).
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, _) = xs.dims3()?;
        xs.reshape((b, t, self.spec.heads, self.spec.head_dim))?
            .transpose(1, 2)
    }

    /// xs: (B, C, H, W); `encoder`: (B, S, E) for added K/V; `encoder_mask`: additive (B, S),
    /// 0 for tokens to attend and -10000 for padding. Returns (B, C, H, W).
    pub fn forward(
        &self,
        xs: &Tensor,
        encoder: Option<&Tensor>,
        encoder_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, c, h, w) = xs.dims4()?;
        let normed = match &self.group_norm {
            Some(norm) => norm.forward(xs)?,
            None => xs.clone(),
        };
        let pixels = normed
            .reshape((b, c, h * w))?
            .transpose(1, 2)?
            .contiguous()?; // (B, HW, C)
        let pixels = if self.spec.position_codes {
            pixels.broadcast_add(&sine_position_codes_2d(h, w, c, xs.device())?)?
        } else {
            pixels
        };
        let q = self.split_heads(&self.to_q.forward(&pixels)?)?;
        let self_kv = match (&self.to_k, &self.to_v) {
            (Some(k), Some(v)) => Some((
                self.split_heads(&k.forward(&pixels)?)?,
                self.split_heads(&v.forward(&pixels)?)?,
            )),
            _ => None,
        };
        let (k, v, mask) = match (&self.add_k_proj, &self.add_v_proj) {
            (Some(add_k), Some(add_v)) => {
                let encoder = encoder.ok_or_else(|| {
                    candle_core::Error::Msg(
                        "cross-attention layer called without encoder_hidden_states".into(),
                    )
                })?;
                let ek = self.split_heads(&add_k.forward(encoder)?)?; // (B, heads, S, D)
                let ev = self.split_heads(&add_v.forward(encoder)?)?;
                // Text keys first, then pixel keys; the mask covers the text keys and lets every
                // pixel key through (diffusers pads it with zeros).
                let mask = encoder_mask
                    .map(|m| {
                        let pad = if self_kv.is_some() { h * w } else { 0 };
                        let (mb, s) = m.dims2()?;
                        m.pad_with_zeros(1, 0, pad)?.reshape((mb, 1, 1, s + pad))
                    })
                    .transpose()?;
                match self_kv {
                    Some((sk, sv)) => {
                        (Tensor::cat(&[ek, sk], 2)?, Tensor::cat(&[ev, sv], 2)?, mask)
                    }
                    None => (ek, ev, mask),
                }
            }
            _ => {
                let (sk, sv) = self_kv.ok_or_else(|| {
                    candle_core::Error::Msg("attention layer has no keys to attend to".into())
                })?;
                (sk, sv, None)
            }
        };
        let scale = 1.0 / (self.spec.head_dim as f64).sqrt();
        // (B, heads, HW, D)
        let attended = scaled_dot_product_attention(&q, &k, &v, mask.as_ref(), scale)?;
        let merged = attended.transpose(1, 2)?.reshape((b, h * w, ()))?; // (B, HW, heads·D)
        let out = self
            .to_out
            .forward(&merged)? // (B, HW, C)
            .transpose(1, 2)?
            .reshape((b, c, h, w))?;
        let out = (out + xs)?;
        if self.spec.rescale_output_factor == 1.0 {
            Ok(out)
        } else {
            out / self.spec.rescale_output_factor
        }
    }
}
