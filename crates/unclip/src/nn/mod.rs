//! Numerics with correct gradients.
//!
//! candle's fused `LayerNorm`, `ops::layer_norm`, `ops::softmax_last_dim` and `ops::rms_norm`
//! record no backward op, so every parameter upstream of them silently receives no gradient.
//! The ops here are built from differentiable primitives; every model in the project uses them,
//! and `tests/gradients.rs` checks that each trainable tensor of each model gets a gradient.
//! Norms and softmax on f32 CPU tensors run as fused custom ops with their own backward
//! (`*_kernel.rs`), checked against those compositions.

mod activation;
mod attention;
mod conv;
mod conv_bf16;
mod conv_gemm;
mod conv_weight_grad;
mod conv_winograd;
mod embedding;
mod fast_exp;
mod flash_attention;
mod group_norm_kernel;
pub(crate) mod kernel_io;
mod lanes;
mod layer_norm_kernel;
mod linear;
mod matmul;
mod norm;
mod packed_weights;
mod precision;
mod resample;
mod simd;
mod softmax;
mod softmax_kernel;

pub use activation::{quick_gelu, sigmoid, Activation};
pub use attention::{causal_mask, padding_mask, scaled_dot_product_attention, MASKED};
pub use conv::{conv2d, Conv2d, Conv2dConfig};
pub use embedding::timestep_embedding;
pub use linear::{linear, linear_no_bias, Linear};
pub use norm::{
    group_norm, group_norm_scale_shift, group_norm_silu, layer_norm, GroupNorm, LayerNorm,
};
pub use precision::{
    bf16_supported, float32_matmul_precision, set_float32_matmul_precision, MatmulPrecision,
};
pub use resample::{avg_pool_2x, upsample_nearest_2x};
pub use softmax::{log_softmax_last_dim, softmax_last_dim};
