//! The noise-prediction loss of the decoder and upsampler, optionally Min-SNR-γ weighted
//! (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting Strategy"): each
//! sample's squared error is scaled by min(SNR_t, γ) / SNR_t, so the nearly clean timesteps,
//! whose noise is hard to guess and matters little to the image, stop dominating the gradient.
//! The paper measures about 3x faster convergence; the built-in models, trained on two CPU
//! cores, need exactly that.

use crate::diffusion::NoiseSchedule;
use crate::error::{Error, Result};
use candle_core::Tensor;

/// Mean squared error between predicted and true noise, with Min-SNR-`gamma` weights when
/// `gamma` is given (uniform weights otherwise).
pub fn noise_prediction_loss(
    predicted: &Tensor,
    noise: &Tensor,
    schedule: &NoiseSchedule,
    ts: &[i64],
    gamma: Option<f64>,
) -> Result<Tensor> {
    let squared = (predicted - noise)?.sqr()?;
    let Some(gamma) = gamma else {
        return Ok(squared.mean_all()?);
    };
    if !(gamma > 0.0) {
        return Err(Error::config("min_snr_gamma", "must be positive"));
    }
    let weights: Vec<f32> = ts
        .iter()
        .map(|&t| {
            let alpha_bar = schedule.alpha_bar(t) as f64;
            let snr = alpha_bar / (1.0 - alpha_bar).max(1e-12);
            (snr.min(gamma) / snr.max(1e-12)) as f32
        })
        .collect();
    let per_sample = squared.flatten_from(1)?.mean(1)?;
    let weights = Tensor::new(weights.as_slice(), predicted.device())?;
    Ok((per_sample * weights)?.mean_all()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn weights_only_the_clean_timesteps_down() {
        let schedule = NoiseSchedule::cosine(1000);
        let dev = Device::Cpu;
        let predicted = Tensor::zeros((2, 3, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let noise = Tensor::ones((2, 3, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let plain = noise_prediction_loss(&predicted, &noise, &schedule, &[10, 900], None)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert_eq!(plain, 1.0);
        // t = 900 is noisy (SNR < 5): weight 1; t = 10 is nearly clean: weight 5 / SNR << 1.
        let weighted = noise_prediction_loss(&predicted, &noise, &schedule, &[10, 900], Some(5.0))
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let a = schedule.alpha_bar(10) as f64;
        let expected = (1.0 + 5.0 / (a / (1.0 - a))) / 2.0;
        assert!(
            (weighted as f64 - expected).abs() < 1e-5,
            "{weighted} vs {expected}"
        );
        assert!(weighted < 0.6);
        assert!(noise_prediction_loss(&predicted, &noise, &schedule, &[10], Some(0.0)).is_err());
    }
}
