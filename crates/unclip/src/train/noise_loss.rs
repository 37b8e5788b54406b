//! The denoising loss of the decoder and upsampler, for either prediction target, optionally
//! Min-SNR-γ weighted (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR Weighting
//! Strategy").
//!
//! - `epsilon` (ADM, Karlo): the network guesses the noise. Sampling recovers x̂_0 as
//!   (x_t − √(1−ᾱ) ε̂) / √ᾱ, which multiplies the guess's error by up to 1/√ᾱ_999 ≈ 2·10⁴ at
//!   the first steps: a model must be trained far past what two CPU cores give before its
//!   samples leave the noise (measured: an upsampler whose x̂_0 beats bicubic at t ≤ 300 still
//!   sampled pure noise). With γ, each sample's error is scaled by min(SNR_t, γ) / SNR_t.
//! - `sample`: the network guesses x_0 itself, well conditioned at every noise level (at the
//!   top it is the mean image given the condition); diffusers' UnCLIPScheduler samples it.
//!   With γ, each sample's error is scaled by min(SNR_t, γ).

use crate::diffusion::{NoiseSchedule, Prediction};
use crate::error::{Error, Result};
use candle_core::Tensor;

/// An error unless the decoder and upsampler can train `prediction`.
pub fn check_trainable(prediction: Prediction) -> Result<()> {
    match prediction {
        Prediction::Epsilon | Prediction::Sample => Ok(()),
        Prediction::VPrediction => Err(Error::config(
            "scheduler.prediction_type",
            "the decoder and upsampler train `epsilon` or `sample` (what diffusers' UnCLIPScheduler samples)",
        )),
    }
}

/// The network's target for clean images `x0` noised with `noise`, by prediction type.
pub fn denoising_target(prediction: Prediction, x0: &Tensor, noise: &Tensor) -> Result<Tensor> {
    check_trainable(prediction)?;
    Ok(match prediction {
        Prediction::Sample => x0.clone(),
        _ => noise.clone(),
    })
}

/// Mean squared error between the prediction and its `target`, with Min-SNR-`gamma` weights
/// for the prediction type when `gamma` is given (uniform weights otherwise).
pub fn denoising_loss(
    predicted: &Tensor,
    target: &Tensor,
    prediction: Prediction,
    schedule: &NoiseSchedule,
    ts: &[i64],
    gamma: Option<f64>,
) -> Result<Tensor> {
    let squared = (predicted - target)?.sqr()?;
    let Some(gamma) = gamma else {
        return Ok(squared.mean_all()?);
    };
    if !gamma.is_finite() || gamma <= 0.0 {
        return Err(Error::config("min_snr_gamma", "must be positive"));
    }
    let weights: Vec<f32> = ts
        .iter()
        .map(|&t| {
            let alpha_bar = schedule.alpha_bar(t) as f64;
            let snr = alpha_bar / (1.0 - alpha_bar).max(1e-12);
            match prediction {
                Prediction::Sample => snr.min(gamma) as f32,
                _ => (snr.min(gamma) / snr.max(1e-12)) as f32,
            }
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
    fn min_snr_weights_follow_the_prediction_type() {
        let schedule = NoiseSchedule::cosine(1000);
        let dev = Device::Cpu;
        let predicted = Tensor::zeros((2, 3, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let noise = Tensor::ones((2, 3, 4, 4), candle_core::DType::F32, &dev).unwrap();
        let plain = denoising_loss(
            &predicted,
            &noise,
            Prediction::Epsilon,
            &schedule,
            &[10, 900],
            None,
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        assert_eq!(plain, 1.0);
        // t = 900 is noisy (SNR < 5): weight 1; t = 10 is nearly clean: weight 5 / SNR << 1.
        let weighted = denoising_loss(
            &predicted,
            &noise,
            Prediction::Epsilon,
            &schedule,
            &[10, 900],
            Some(5.0),
        )
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
        let eps = Prediction::Epsilon;
        assert!(denoising_loss(&predicted, &noise, eps, &schedule, &[10], Some(0.0)).is_err());
        // x0-prediction: weight min(SNR, 5): 5 at t = 10, SNR (< 1) at t = 900.
        let sample = denoising_loss(
            &predicted,
            &noise,
            Prediction::Sample,
            &schedule,
            &[10, 900],
            Some(5.0),
        )
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
        let b = schedule.alpha_bar(900) as f64;
        let expected = (5.0 + b / (1.0 - b)) / 2.0;
        assert!(
            (sample as f64 - expected).abs() < 1e-4,
            "{sample} vs {expected}"
        );
        let x0 = Tensor::ones((1, 3, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let z = Tensor::zeros((1, 3, 2, 2), candle_core::DType::F32, &dev).unwrap();
        let target = denoising_target(Prediction::Sample, &x0, &z).unwrap();
        assert_eq!(target.sum_all().unwrap().to_scalar::<f32>().unwrap(), 12.0);
        assert!(denoising_target(Prediction::VPrediction, &x0, &z).is_err());
    }
}
