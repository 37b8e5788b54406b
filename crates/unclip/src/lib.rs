//! unclip: DALL-E 2 (unCLIP, Ramesh et al. 2022) in Rust on candle.
//!
//! The parts: [`clip`] reads prompts and embeds images; later modules add the diffusion prior,
//! the decoder and the upsamplers. [`nn`] holds the numerics with correct gradients,
//! [`checkpoint`] the Hugging Face folder layouts, [`train`] the training loops.

pub mod checkpoint;
pub mod clip;
pub mod compute_pool;
pub mod data;
pub mod device;
pub mod diffusion;
pub mod error;
pub mod eval;
pub mod imageops;
pub mod models;
pub mod nn;
pub mod pipeline;
pub mod tokenizer;
pub mod train;

pub use error::{Error, Result};
