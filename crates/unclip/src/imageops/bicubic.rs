//! Antialiased bicubic resizing of image tensors, as `torch.nn.functional.interpolate(...,
//! mode="bicubic", align_corners=False, antialias=True)` computes it: PIL's kernel (a = -0.5),
//! stretched by the scale when shrinking, its window clipped to the image and renormalised.
//! unCLIP conditions its upsamplers on this upscale of the decoder's image; torch's plain
//! bicubic (a = -0.75) differs from it by up to 0.17.
//!
//! Written as two matrix products (rows, then columns) so that it is differentiable and uses
//! the fast matmul path.

use super::resample::{taps, Filter};
use candle_core::{Device, Result, Tensor};

/// The (out, in) matrix whose row i holds output sample i's weights over the input samples.
fn weight_matrix(in_size: usize, out_size: usize, device: &Device) -> Result<Tensor> {
    let t = taps(in_size, out_size, Filter::Bicubic);
    let mut m = vec![0f32; out_size * in_size];
    for (row, (start, weights)) in t.start.iter().zip(&t.weights).enumerate() {
        for (k, w) in weights.iter().enumerate() {
            m[row * in_size + start + k] = *w as f32;
        }
    }
    Tensor::from_vec(m, (out_size, in_size), device)
}

/// Resizes (B, C, H, W) to (B, C, out_h, out_w).
pub fn resize_bicubic_antialias(xs: &Tensor, out_h: usize, out_w: usize) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if out_h == 0 || out_w == 0 {
        candle_core::bail!("cannot resize to {out_h}x{out_w}");
    }
    let cols = weight_matrix(w, out_w, xs.device())?.t()?.contiguous()?; // (W, out_w)
    let rows = weight_matrix(h, out_h, xs.device())?; // (out_h, H)
    let xs = xs.contiguous()?.broadcast_matmul(&cols)?; // (B, C, H, out_w)
    rows.broadcast_matmul(&xs) // (B, C, out_h, out_w)
}
