//! diffusers' `TimestepEmbedding`: the MLP (linear_1, activation, linear_2) that turns the
//! sinusoidal timestep features into the vector a denoiser is conditioned on.

use crate::nn::Activation;
use crate::nn::{linear, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
pub struct TimestepEmbedding {
    linear_1: Linear,
    linear_2: Linear,
    act: Activation,
}

impl TimestepEmbedding {
    pub fn new(
        in_dim: usize,
        hidden_dim: usize,
        out_dim: usize,
        act: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            linear_1: linear(in_dim, hidden_dim, vb.pp("linear_1"))?,
            linear_2: linear(hidden_dim, out_dim, vb.pp("linear_2"))?,
            act,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.linear_2
            .forward(&self.act.forward(&self.linear_1.forward(xs)?)?)
    }
}
