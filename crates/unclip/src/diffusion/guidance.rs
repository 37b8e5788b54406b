//! The pieces of a guided denoising step that are not the model.

use candle_core::{Result, Tensor};

/// Classifier-free guidance (Ho & Salimans 2022, eq. 6): the batch holds the unconditional
/// half first, then the conditional half; out = u + w (c - u).
/// With a learned-variance output (channels = 2 × `sample_channels`), only the mean half is
/// guided and the conditional variance is kept, as the unCLIP reference does.
pub fn classifier_free_guidance(
    output: &Tensor,
    scale: f64,
    sample_channels: Option<usize>,
) -> Result<Tensor> {
    let half = output.dim(0)? / 2;
    let uncond = output.narrow(0, 0, half)?;
    let cond = output.narrow(0, half, half)?;
    match sample_channels {
        Some(c) if output.rank() >= 2 && output.dim(1)? == 2 * c => {
            let (u_mean, _) = split_learned_variance(&uncond, c)?;
            let (c_mean, c_var) = split_learned_variance(&cond, c)?;
            let guided = (&u_mean + ((c_mean - &u_mean)? * scale)?)?;
            Tensor::cat(&[&guided, &c_var], 1)
        }
        _ => &uncond + ((cond - &uncond)? * scale)?,
    }
}

/// (mean, variance) halves of a learned-variance output along channels.
pub fn split_learned_variance(output: &Tensor, sample_channels: usize) -> Result<(Tensor, Tensor)> {
    Ok((
        output.narrow(1, 0, sample_channels)?,
        output.narrow(1, sample_channels, sample_channels)?,
    ))
}
