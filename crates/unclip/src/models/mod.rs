//! The diffusion models of unCLIP: U-Nets, the prior, the text projection.

pub mod unet;
