//! The forward-process schedule: β_t and ᾱ_t = Π (1 - β_s).
//!
//! unCLIP uses the cosine schedule of Nichol & Dhariwal 2021 (eq. 17, "squaredcos_cap_v2").
//! Values are kept in f32 as the reference keeps them (β computed in f64 and stored as f32,
//! the cumulative product accumulated in f64 and stored as f32, as torch.cumprod does on CPU),
//! so that the sampler's arithmetic matches the reference to the last bits that matter.

/// β_t = min(1 - ᾱ(t+1)/ᾱ(t), 0.999) with ᾱ(t) = cos²((t/T + 0.008)/1.008 · π/2).
pub fn cosine_betas(num_train_timesteps: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::FRAC_PI_2)
            .cos()
            .powi(2)
    };
    (0..num_train_timesteps)
        .map(|i| {
            let t1 = i as f64 / num_train_timesteps as f64;
            let t2 = (i + 1) as f64 / num_train_timesteps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

#[derive(Debug, Clone)]
pub struct NoiseSchedule {
    pub betas: Vec<f32>,
    pub alphas: Vec<f32>,
    pub alphas_cumprod: Vec<f32>,
}

impl NoiseSchedule {
    pub fn cosine(num_train_timesteps: usize) -> Self {
        Self::from_betas(cosine_betas(num_train_timesteps))
    }

    pub fn from_betas(betas: Vec<f32>) -> Self {
        let alphas: Vec<f32> = betas.iter().map(|b| 1.0 - b).collect();
        let mut acc = 1f64;
        let alphas_cumprod = alphas
            .iter()
            .map(|&a| {
                acc *= a as f64;
                acc as f32
            })
            .collect();
        Self {
            betas,
            alphas,
            alphas_cumprod,
        }
    }

    pub fn len(&self) -> usize {
        self.betas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// ᾱ at `t`, with ᾱ(-1) = 1 (the clean end of the chain).
    pub fn alpha_bar(&self, t: i64) -> f32 {
        if t < 0 {
            1.0
        } else {
            self.alphas_cumprod[t as usize]
        }
    }
}

impl NoiseSchedule {
    /// q(x_t | x_0) = √ᾱ_t x_0 + √(1-ᾱ_t) ε with one timestep per sample (DDPM eq. 4).
    pub fn q_sample(
        &self,
        x0: &candle_core::Tensor,
        noise: &candle_core::Tensor,
        ts: &[i64],
    ) -> candle_core::Result<candle_core::Tensor> {
        let (a, b) = self.per_sample(ts, x0)?;
        x0.broadcast_mul(&a)? + noise.broadcast_mul(&b)?
    }

    /// (√ᾱ_t, √(1-ᾱ_t)) per sample, shaped (B, 1, ...) to broadcast against `like`.
    pub fn per_sample(
        &self,
        ts: &[i64],
        like: &candle_core::Tensor,
    ) -> candle_core::Result<(candle_core::Tensor, candle_core::Tensor)> {
        let mut shape = vec![ts.len()];
        shape.extend(std::iter::repeat_n(1, like.rank() - 1));
        let a: Vec<f32> = ts.iter().map(|&t| self.alpha_bar(t).sqrt()).collect();
        let b: Vec<f32> = ts
            .iter()
            .map(|&t| (1.0 - self.alpha_bar(t)).sqrt())
            .collect();
        Ok((
            candle_core::Tensor::from_vec(a, shape.as_slice(), like.device())?,
            candle_core::Tensor::from_vec(b, shape.as_slice(), like.device())?,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_betas_are_not_zero_and_are_capped() {
        // candle-transformers' version divides integers and makes all but the last beta zero.
        let b = cosine_betas(1000);
        assert!(b.iter().all(|&x| x > 0.0 && x <= 0.999));
        assert!((b[999] - 0.999).abs() < 1e-6);
        // diffusers' betas_for_alpha_bar(1000): betas[0] and betas[500] as float32.
        assert!((b[0] - 4.128_422_4e-5).abs() < 1e-10, "{}", b[0]);
        assert!((b[500] - 3.155_691_5e-3).abs() < 1e-9, "{}", b[500]);
        let s = NoiseSchedule::cosine(1000);
        assert!(s.alphas_cumprod.windows(2).all(|w| w[1] < w[0]));
        assert_eq!(s.alpha_bar(-1), 1.0);
    }
}
