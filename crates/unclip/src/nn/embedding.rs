//! Sinusoidal timestep embeddings (DDPM, Ho et al. 2020, appendix B, after the Transformer's
//! positional encoding). Reference: diffusers `models/embeddings.py`, `get_timestep_embedding`.

use candle_core::{Result, Tensor};

/// The period of the slowest frequency, as in diffusers.
pub const MAX_PERIOD: f64 = 10_000.0;

/// Embeds timesteps (N,) as (N, dim): `[sin(t ω_i), cos(t ω_i)]` with
/// ω_i = exp(-ln(10000) · i / (dim/2 - freq_shift)), i = 0..dim/2, or `[cos, sin]` when
/// `flip_sin_to_cos`; an odd `dim` gets a zero last column.
///
/// The frequencies are rounded to f32 in the order PyTorch computes them, because t reaches 999
/// and one ulp of a frequency there moves the argument by ~1e-4.
pub fn timestep_embedding(
    timesteps: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    freq_shift: f64,
) -> Result<Tensor> {
    let n = timesteps.dims1()?;
    let half = dim / 2;
    let denominator = half as f64 - freq_shift;
    if half == 0 || denominator == 0.0 {
        candle_core::bail!(
            "timestep_embedding: dim {dim} with freq_shift {freq_shift} has no frequencies"
        );
    }
    let scale = -(MAX_PERIOD.ln()) as f32;
    let freqs: Vec<f32> = (0..half)
        .map(|i| (scale * i as f32 / denominator as f32).exp())
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), timesteps.device())?;
    let args = timesteps
        .to_dtype(candle_core::DType::F32)?
        .reshape((n, 1))?
        .broadcast_mul(&freqs)?; // (N, half)
    let (sin, cos) = (args.sin()?, args.cos()?);
    let emb = if flip_sin_to_cos {
        Tensor::cat(&[cos, sin], 1)?
    } else {
        Tensor::cat(&[sin, cos], 1)?
    };
    if dim % 2 == 1 {
        emb.pad_with_zeros(1, 0, 1)
    } else {
        Ok(emb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn matches_diffusers_values() -> Result<()> {
        // diffusers get_timestep_embedding(torch.tensor([0., 1., 999.]), 8, flip_sin_to_cos=True,
        // downscale_freq_shift=0): columns are cos then sin of t * [1, 0.1, 0.01, 0.001].
        let t = Tensor::new(&[0f32, 1., 999.], &Device::Cpu)?;
        let emb = timestep_embedding(&t, 8, true, 0.0)?.to_vec2::<f32>()?;
        assert_eq!(emb[0], [1., 1., 1., 1., 0., 0., 0., 0.]);
        let w = [1f64, 0.1, 0.01, 0.001];
        for (row, t) in [(1usize, 1f64), (2, 999.)] {
            for i in 0..4 {
                assert!((emb[row][i] as f64 - (t * w[i]).cos()).abs() < 2e-4);
                assert!((emb[row][4 + i] as f64 - (t * w[i]).sin()).abs() < 2e-4);
            }
        }
        let odd = timestep_embedding(&t, 7, false, 1.0)?;
        assert_eq!(odd.dims(), [3, 7]);
        Ok(())
    }
}
