//! The U-Nets of unCLIP (Ramesh et al. 2022, §2.1): the text- and image-conditioned decoder
//! ([`UNet2DConditionModel`]) and the diffusion upsamplers ([`UNet2DModel`]), in diffusers'
//! layout (`config.json` + `diffusion_pytorch_model.safetensors`), built only from the blocks
//! Karlo v1 alpha uses and rejecting the rest by name.
//!
//! Reading order: [`resnet`] (the residual block) and [`attention`], then [`blocks`], then the
//! two models.

pub mod attention;
pub mod blocks;
mod condition;
mod config;
mod plain;
pub mod position_codes;
pub mod resnet;
mod time;

pub use crate::checkpoint::{DIFFUSERS_CONFIG as CONFIG_FILE, DIFFUSERS_WEIGHTS as WEIGHTS_FILE};
pub use condition::{UNet2DConditionModel, MASK_BIAS};
pub use config::{ClassEmbedding, PerBlock, SampleSize, UNet2DConditionConfig, UNet2DConfig};
pub use plain::UNet2DModel;
