//! CLIP's symmetric contrastive loss (Radford et al. 2021, Figure 3): cross-entropy over the
//! batch's similarity matrix in both directions, matching pairs on the diagonal; with extra
//! negative captions (NegCLIP), those join only the image-to-text direction.

use crate::nn::log_softmax_last_dim;
use candle_core::{DType, Result, Tensor};

/// mean_i -log softmax(logits)[i, i] for an (N, C) logit matrix with C >= N: row i's target
/// is column i, the columns past N are negatives only.
fn diagonal_cross_entropy(logits: &Tensor) -> Result<Tensor> {
    let n = logits.dim(0)?;
    let log_probs = log_softmax_last_dim(logits)?.narrow(1, 0, n)?;
    let eye = Tensor::eye(n, DType::F32, logits.device())?.to_dtype(logits.dtype())?;
    (log_probs * eye)?.sum_all()?.neg()? / n as f64
}

/// (CE(logits_per_text) + CE(logits_per_textᵀ)) / 2, as transformers' `clip_loss`.
pub fn contrastive_loss(logits_per_text: &Tensor) -> Result<Tensor> {
    let (rows, cols) = logits_per_text.dims2()?;
    if rows != cols {
        candle_core::bail!("contrastive loss needs as many texts as images, got {rows} and {cols}");
    }
    contrastive_loss_with_negatives(logits_per_text)
}

/// The contrastive loss when `logits_per_text` (N + M, N + U) holds N captions paired with the
/// first N images, followed by M negative captions that match no image, and U negative images
/// that match no caption (one of M and U is 0): each paired image's softmax runs over all
/// captions, each paired caption's over all images.
pub fn contrastive_loss_with_negatives(logits_per_text: &Tensor) -> Result<Tensor> {
    let (rows, images) = logits_per_text.dims2()?;
    let paired = rows.min(images);
    if paired == 0 {
        candle_core::bail!("contrastive loss needs at least one caption and one image");
    }
    let caption_loss = diagonal_cross_entropy(&logits_per_text.narrow(0, 0, paired)?)?;
    let image_loss =
        diagonal_cross_entropy(&logits_per_text.t()?.contiguous()?.narrow(0, 0, paired)?)?;
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

    #[test]
    fn negative_captions_only_add_to_the_image_side() -> Result<()> {
        let dev = Device::Cpu;
        let square = Tensor::new(&[[2f32, 0.5], [-1.0, 1.5]], &dev)?;
        let plain = contrastive_loss(&square)?.to_scalar::<f32>()?;
        // A negative that every image scores far below its own caption changes nothing ...
        let easy = Tensor::new(&[[2f32, 0.5], [-1.0, 1.5], [-50.0, -50.0]], &dev)?;
        let with_easy = contrastive_loss_with_negatives(&easy)?.to_scalar::<f32>()?;
        assert!((with_easy - plain).abs() < 1e-6);
        // ... one scored like the true caption costs each image about ln 2 (halved in the mean).
        let hard = Tensor::new(&[[2f32, 0.5], [-1.0, 1.5], [2.0, 1.5]], &dev)?;
        let with_hard = contrastive_loss_with_negatives(&hard)?.to_scalar::<f32>()?;
        assert!(with_hard > plain + 0.25, "{with_hard} vs {plain}");
        assert!(
            contrastive_loss_with_negatives(&Tensor::zeros((0, 2), DType::F32, &dev)?).is_err()
        );
        Ok(())
    }

    #[test]
    fn negative_images_only_add_to_the_caption_side() -> Result<()> {
        let dev = Device::Cpu;
        let square = Tensor::new(&[[2f32, 0.5], [-1.0, 1.5]], &dev)?;
        let plain = contrastive_loss(&square)?.to_scalar::<f32>()?;
        // A third image that no caption owns: far from every caption, it changes nothing ...
        let easy = Tensor::new(&[[2f32, 0.5, -50.0], [-1.0, 1.5, -50.0]], &dev)?;
        let with_easy = contrastive_loss_with_negatives(&easy)?.to_scalar::<f32>()?;
        assert!((with_easy - plain).abs() < 1e-6);
        // ... scored like the first caption's own image, it costs that caption about ln 2.
        let hard = Tensor::new(&[[2f32, 0.5, 2.0], [-1.0, 1.5, -50.0]], &dev)?;
        let with_hard = contrastive_loss_with_negatives(&hard)?.to_scalar::<f32>()?;
        assert!(with_hard > plain + 0.1, "{with_hard} vs {plain}");
        Ok(())
    }
}
