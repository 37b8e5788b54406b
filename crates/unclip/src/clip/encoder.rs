//! The pre-LN Transformer encoder both CLIP towers share (Radford et al. 2021, §2.4; transformers
//! `modeling_clip.py`: CLIPAttention, CLIPMLP, CLIPEncoderLayer, CLIPEncoder).

use crate::nn::{linear, Linear};
use crate::nn::{scaled_dot_product_attention, Activation, LayerNorm};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// Sizes of one tower's encoder, taken from its config.
#[derive(Debug, Clone, Copy)]
pub struct EncoderSpec {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    pub act: Activation,
    pub eps: f64,
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(spec: &EncoderSpec, vb: VarBuilder) -> Result<Self> {
        let h = spec.hidden;
        Ok(Self {
            q_proj: linear(h, h, vb.pp("q_proj"))?,
            k_proj: linear(h, h, vb.pp("k_proj"))?,
            v_proj: linear(h, h, vb.pp("v_proj"))?,
            out_proj: linear(h, h, vb.pp("out_proj"))?,
            heads: spec.heads,
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, t, c) = xs.dims3()?;
        let head_dim = c / self.heads;
        let split = |proj: &Linear| -> Result<Tensor> {
            proj.forward(xs)?
                .reshape((b, t, self.heads, head_dim))?
                .transpose(1, 2) // (B, H, T, D)
        };
        let (q, k, v) = (
            split(&self.q_proj)?,
            split(&self.k_proj)?,
            split(&self.v_proj)?,
        );
        let scale = 1.0 / (head_dim as f64).sqrt();
        let attended = scaled_dot_product_attention(&q, &k, &v, mask, scale)?; // (B, H, T, D)
        let merged = attended.transpose(1, 2)?.reshape((b, t, c))?;
        self.out_proj.forward(&merged)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl Mlp {
    fn new(spec: &EncoderSpec, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            fc1: linear(spec.hidden, spec.intermediate, vb.pp("fc1"))?,
            fc2: linear(spec.intermediate, spec.hidden, vb.pp("fc2"))?,
            act: spec.act,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.forward(&self.fc1.forward(xs)?)?)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    self_attn: SelfAttention,
    layer_norm1: LayerNorm,
    mlp: Mlp,
    layer_norm2: LayerNorm,
}

impl EncoderLayer {
    fn new(spec: &EncoderSpec, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            self_attn: SelfAttention::new(spec, vb.pp("self_attn"))?,
            layer_norm1: LayerNorm::new(spec.hidden, spec.eps, vb.pp("layer_norm1"))?,
            mlp: Mlp::new(spec, vb.pp("mlp"))?,
            layer_norm2: LayerNorm::new(spec.hidden, spec.eps, vb.pp("layer_norm2"))?,
        })
    }

    /// x + attn(ln1(x)), then x + mlp(ln2(x)).
    fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let xs = (xs
            + self
                .self_attn
                .forward(&self.layer_norm1.forward(xs)?, mask)?)?;
        &xs + self.mlp.forward(&self.layer_norm2.forward(&xs)?)?
    }
}

#[derive(Debug, Clone)]
pub struct Encoder {
    layers: Vec<EncoderLayer>,
}

impl Encoder {
    pub fn new(spec: &EncoderSpec, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("layers");
        let layers = (0..spec.layers)
            .map(|i| EncoderLayer::new(spec, vb.pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers })
    }

    /// Returns the input followed by every layer's output (transformers' `hidden_states`).
    pub fn forward_all(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Vec<Tensor>> {
        let mut states = Vec::with_capacity(self.layers.len() + 1);
        states.push(xs.clone());
        for layer in &self.layers {
            let next = layer.forward(&states[states.len() - 1], mask)?;
            states.push(next);
        }
        Ok(states)
    }

    pub fn forward(&self, xs: &Tensor, mask: Option<&Tensor>) -> Result<Tensor> {
        let mut xs = xs.clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, mask)?;
        }
        Ok(xs)
    }
}
