//! The diffusion models of unCLIP: the prior, the text projection, and the U-Nets.

pub mod prior;
pub mod text_proj;
pub mod time_embedding;
pub mod unet;

pub use prior::{PriorConfig, PriorTransformer};
pub use text_proj::{DecoderContext, TextProj, TextProjConfig};
pub use time_embedding::TimestepEmbedding;
