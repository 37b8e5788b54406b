//! Scaled dot-product attention with additive masks: the fused CPU kernel where it applies
//! (f32 on the CPU), otherwise composed from primitives that record their backward ops
//! (candle's fused `softmax_last_dim` does not).

use super::flash_attention;
use super::softmax::softmax_last_dim;
use candle_core::{DType, Device, Result, Tensor};

/// Value added to attention logits that must receive no weight. Finite, so that a fully masked
/// row yields a uniform distribution instead of NaN; exp() of it underflows to exactly 0.
pub const MASKED: f32 = -1e9;

/// softmax(q kᵀ · scale + mask) v.
///
/// q: (B, H, Tq, D), k and v: (B, H, Tk, D); `mask` is additive and broadcasts to (B, H, Tq, Tk).
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    if flash_attention::supports(q, k, v, mask) {
        return flash_attention::flash_attention(q, k, v, mask, scale);
    }
    reference_attention(q, k, v, mask, scale)
}

/// The composed attention: the fallback for other devices and dtypes, and the kernel's oracle.
pub(crate) fn reference_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?; // (B, H, Tq, Tk)
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    softmax_last_dim(&scores)?.matmul(&v.contiguous()?) // (B, H, Tq, D)
}

/// Additive causal mask (1, 1, T, T): position i sees positions 0..=i.
pub fn causal_mask(len: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..len)
        .flat_map(|i| (0..len).map(move |j| if j > i { MASKED } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (1, 1, len, len), device)?.to_dtype(dtype)
}

/// Additive key mask (B, 1, 1, T) from a (B, T) mask of ones (attend) and zeros (ignore).
pub fn padding_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (batch, len) = attention_mask.dims2()?;
    let keep = attention_mask.to_dtype(DType::F32)?;
    let additive = ((keep - 1.0)? * (-(MASKED as f64)))?;
    additive.reshape((batch, 1, 1, len))?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causal_attention_ignores_the_future() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 2, 4, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (1, 2, 4, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (1, 2, 4, 8), &dev)?;
        let mask = causal_mask(4, DType::F32, &dev)?;
        let full = scaled_dot_product_attention(&q, &k, &v, Some(&mask), 0.5)?;
        // Changing the last key/value must not change the first three outputs.
        let k2 = k.slice_assign(
            &[0..1, 0..2, 3..4, 0..8],
            &Tensor::ones((1, 2, 1, 8), DType::F32, &dev)?,
        )?;
        let v2 = v.slice_assign(
            &[0..1, 0..2, 3..4, 0..8],
            &Tensor::ones((1, 2, 1, 8), DType::F32, &dev)?,
        )?;
        let changed = scaled_dot_product_attention(&q, &k2, &v2, Some(&mask), 0.5)?;
        let diff = (full.narrow(2, 0, 3)? - changed.narrow(2, 0, 3)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff < 1e-6);
        // The first query sees only the first value.
        let first = (full.narrow(2, 0, 1)? - v.narrow(2, 0, 1)?)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(first < 1e-6);
        Ok(())
    }
}
