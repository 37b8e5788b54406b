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
//!
//! A floor raises the weights of the noisiest steps to at least that value, in x_0 terms:
//! max(min(SNR_t, γ), floor). Plain Min-SNR with x0 prediction scales the steps where sampling
//! decides the layout (SNR ≈ 0 at t ≥ 800) to nothing; floor 1 keeps them at the plain mean
//! squared error's weight while the clean end keeps Min-SNR's γ, which is where corners are drawn.

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

/// Min-SNR-γ weights, optionally with a floor (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SnrWeighting {
    pub gamma: f64,
    pub floor: f64,
}

impl SnrWeighting {
    /// The weighting a recipe's `min_snr_gamma` and `min_snr_floor` ask for; `None` for the
    /// plain mean squared error. A floor without γ, or one above it, is an error.
    pub fn from_recipe(gamma: Option<f64>, floor: Option<f64>) -> Result<Option<Self>> {
        let Some(gamma) = gamma else {
            return match floor {
                Some(_) => Err(Error::config(
                    "min_snr_floor",
                    "only applies with min_snr_gamma (set both, e.g. min_snr_gamma=5, min_snr_floor=1)",
                )),
                None => Ok(None),
            };
        };
        if !gamma.is_finite() || gamma <= 0.0 {
            return Err(Error::config("min_snr_gamma", "must be positive"));
        }
        let floor = floor.unwrap_or(0.0);
        if !floor.is_finite() || !(0.0..=gamma).contains(&floor) {
            return Err(Error::config(
                "min_snr_floor",
                format!("must be between 0 and min_snr_gamma ({gamma})"),
            ));
        }
        Ok(Some(Self { gamma, floor }))
    }

    /// The loss weight of one sample at `snr`, for the prediction type.
    fn weight(&self, snr: f64, prediction: Prediction) -> f64 {
        let image_weight = snr.min(self.gamma).max(self.floor);
        match prediction {
            Prediction::Sample => image_weight,
            // The noise's error is the image's error times SNR.
            _ => image_weight / snr.max(1e-12),
        }
    }
}

/// Mean squared error between the prediction and its `target`, weighted per sample by
/// `weighting` for the prediction type when given (uniform weights otherwise).
pub fn denoising_loss(
    predicted: &Tensor,
    target: &Tensor,
    prediction: Prediction,
    schedule: &NoiseSchedule,
    ts: &[i64],
    weighting: Option<SnrWeighting>,
) -> Result<Tensor> {
    let squared = (predicted - target)?.sqr()?;
    let Some(weighting) = weighting else {
        return Ok(squared.mean_all()?);
    };
    let weights: Vec<f32> = ts
        .iter()
        .map(|&t| {
            let alpha_bar = schedule.alpha_bar(t) as f64;
            let snr = alpha_bar / (1.0 - alpha_bar).max(1e-12);
            weighting.weight(snr, prediction) as f32
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

    fn min_snr(gamma: f64) -> Option<SnrWeighting> {
        SnrWeighting::from_recipe(Some(gamma), None).unwrap()
    }

    /// The weighted loss of predicting 0 where the target is 1 (every sample's error is 1).
    fn unit_error_loss(prediction: Prediction, ts: &[i64], w: Option<SnrWeighting>) -> f32 {
        let dev = Device::Cpu;
        let shape = (ts.len(), 3, 4, 4);
        let predicted = Tensor::zeros(shape, candle_core::DType::F32, &dev).unwrap();
        let target = Tensor::ones(shape, candle_core::DType::F32, &dev).unwrap();
        let schedule = NoiseSchedule::cosine(1000);
        denoising_loss(&predicted, &target, prediction, &schedule, ts, w)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn a_floor_keeps_the_noisiest_steps_at_plain_weight() {
        let floored = SnrWeighting::from_recipe(Some(5.0), Some(1.0)).unwrap();
        let loss = |ts: &[i64], w| unit_error_loss(Prediction::Sample, ts, w);
        // t = 950: SNR ≈ 0, so Min-SNR alone weighs it ≈ 0 and the floor lifts it to 1.
        assert!(loss(&[950, 950], min_snr(5.0)) < 0.05);
        assert!((loss(&[950, 950], floored) - 1.0).abs() < 1e-6);
        // t = 10: SNR far above γ, so both give γ.
        assert!((loss(&[10, 10], floored) - 5.0).abs() < 1e-5);
        assert!((loss(&[10, 10], min_snr(5.0)) - 5.0).abs() < 1e-5);
    }

    #[test]
    fn a_floor_needs_gamma_and_must_not_exceed_it() {
        let no_gamma = SnrWeighting::from_recipe(None, Some(1.0)).unwrap_err();
        assert!(no_gamma.to_string().contains("min_snr_floor"), "{no_gamma}");
        let above = SnrWeighting::from_recipe(Some(5.0), Some(6.0)).unwrap_err();
        assert!(above.to_string().contains("min_snr_floor"), "{above}");
        assert!(SnrWeighting::from_recipe(Some(5.0), Some(-1.0)).is_err());
        assert_eq!(SnrWeighting::from_recipe(None, None).unwrap(), None);
    }

    #[test]
    fn min_snr_weights_follow_the_prediction_type() {
        let schedule = NoiseSchedule::cosine(1000);
        let dev = Device::Cpu;
        let plain = unit_error_loss(Prediction::Epsilon, &[10, 900], None);
        assert_eq!(plain, 1.0);
        // t = 900 is noisy (SNR < 5): weight 1; t = 10 is nearly clean: weight 5 / SNR << 1.
        let weighted = unit_error_loss(Prediction::Epsilon, &[10, 900], min_snr(5.0));
        let a = schedule.alpha_bar(10) as f64;
        let expected = (1.0 + 5.0 / (a / (1.0 - a))) / 2.0;
        assert!(
            (weighted as f64 - expected).abs() < 1e-5,
            "{weighted} vs {expected}"
        );
        assert!(weighted < 0.6);
        assert!(SnrWeighting::from_recipe(Some(0.0), None).is_err());
        // x0-prediction: weight min(SNR, 5): 5 at t = 10, SNR (< 1) at t = 900.
        let sample = unit_error_loss(Prediction::Sample, &[10, 900], min_snr(5.0));
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
