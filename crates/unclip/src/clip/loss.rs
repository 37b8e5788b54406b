//! CLIP's symmetric contrastive loss (Radford et al. 2021, Figure 3): cross-entropy over the
//! batch's similarity matrix in both directions, matching pairs on the diagonal.

use crate::nn::log_softmax_last_dim;
use candle_core::{DType, Result, Tensor};

/// mean_i -log softmax(logits)[i, i] for a square (N, N) logit matrix.
fn diagonal_cross_entropy(logits: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let log_probs = log_softmax_last_dim(logits)?;
    let eye = Tensor::eye(n, DType::F32, logits.device())?.to_dtype(logits.dtype())?;
    (log_probs * eye)?.sum_all()?.neg()? / n as f64
}

/// (CE(logits_per_text) + CE(logits_per_textᵀ)) / 2, as transformers' `clip_loss`.
pub fn contrastive_loss(logits_per_text: &Tensor) -> Result<Tensor> {
    let (rows, cols) = logits_per_text.dims2()?;
    if rows != cols {
        candle_core::bail!("contrastive loss needs as many texts as images, got {rows} and {cols}");
    }
    let caption_loss = diagonal_cross_entropy(logits_per_text)?;
    let image_loss = diagonal_cross_entropy(&logits_per_text.t()?.contiguous()?)?;
    (caption_loss + image_loss)? / 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn perfect_alignment_has_low_loss_and_uniform_has_log_n() -> Result<()> {
        let dev = Device::Cpu;
        let uniform = Tensor::zeros((4, 4), DType::F32, &dev)?;
        let loss = contrastive_loss(&uniform)?.to_scalar::<f32>()?;
        assert!((loss - 4f32.ln()).abs() < 1e-6);
        let aligned = (Tensor::eye(4, DType::F32, &dev)? * 50.0)?;
        assert!(contrastive_loss(&aligned)?.to_scalar::<f32>()? < 1e-6);
        assert!(contrastive_loss(&Tensor::zeros((2, 3), DType::F32, &dev)?).is_err());
        Ok(())
    }
}
