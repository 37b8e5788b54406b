//! Samplers over a discrete noise schedule: the unCLIP/DDPM ancestral step (Ho et al. 2020,
//! eqs. 6-7 and 15; Nichol & Dhariwal 2021 §3.1 for the learned variance range), DDIM (Song et
//! al. 2021, eq. 12) and DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2).
//! Reference for the unCLIP step: diffusers `schedulers/scheduling_unclip.py` (v0.42.1).
//!
//! Symbols: x_t = `sample`, ᾱ_t = `alpha_bar(t)`, β_t = 1 - ᾱ_t/ᾱ_prev, x̂_0 = predicted clean
//! sample, ε̂ = predicted noise, z = `noise`.
//!
//! A scheduler is a value: config + step count give an immutable plan, `step` is a function of
//! its arguments (plus the explicit multistep history DPM-Solver keeps), and the caller supplies
//! the noise, so that a seeded source or a recorded tape decides it.

use super::schedule::NoiseSchedule;
use crate::error::{Error, Result};
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VarianceType {
    /// σ_t² = β̃_t (the posterior variance), clamped at 1e-20 before the log.
    FixedSmallLog,
    /// The model's second output interpolates log β̃_t and log β_t.
    LearnedRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prediction {
    Epsilon,
    Sample,
    VPrediction,
}

fn default_train_steps() -> usize {
    1000
}
fn default_variance() -> VarianceType {
    VarianceType::FixedSmallLog
}
fn yes() -> bool {
    true
}
fn one() -> f64 {
    1.0
}
fn epsilon() -> Prediction {
    Prediction::Epsilon
}
fn cosine() -> String {
    "squaredcos_cap_v2".into()
}
fn class_name() -> String {
    "UnCLIPScheduler".into()
}

/// diffusers' `UnCLIPScheduler` config (`scheduler_config.json`), with its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", default = "class_name")]
    pub class_name: String,
    #[serde(default = "default_train_steps")]
    pub num_train_timesteps: usize,
    #[serde(default = "default_variance")]
    pub variance_type: VarianceType,
    #[serde(default = "yes")]
    pub clip_sample: bool,
    #[serde(default = "one")]
    pub clip_sample_range: f64,
    #[serde(default = "epsilon")]
    pub prediction_type: Prediction,
    #[serde(default = "cosine")]
    pub beta_schedule: String,
}

impl SchedulerConfig {
    /// The fields every plan relies on; called at load, so the error can name the file.
    pub fn validate(&self) -> Result<()> {
        if self.beta_schedule != "squaredcos_cap_v2" {
            return Err(Error::config(
                "beta_schedule",
                format!(
                    "`{}` is not supported; allowed: squaredcos_cap_v2",
                    self.beta_schedule
                ),
            ));
        }
        if self.num_train_timesteps < 2 {
            return Err(Error::config(
                "num_train_timesteps",
                format!(
                    "{}; allowed: at least 2 (Karlo's is 1000)",
                    self.num_train_timesteps
                ),
            ));
        }
        Ok(())
    }
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every scheduler field has a default")
    }
}

/// How to walk the chain.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// Ancestral sampling with the config's variance (what Karlo and the paper use).
    Ddpm,
    /// DDIM; eta = 0 is deterministic, eta = 1 matches DDPM's variance.
    Ddim { eta: f64 },
    /// DPM-Solver++ (2M), deterministic, second order from the second step.
    DpmSolverPlusPlus,
}

impl Sampler {
    pub fn parse(name: &str, eta: f64) -> Result<Self> {
        match name {
            "ddpm" | "unclip" => Ok(Self::Ddpm),
            "ddim" => Ok(Self::Ddim { eta }),
            "dpm++" | "dpmsolver++" | "dpm-solver++" => Ok(Self::DpmSolverPlusPlus),
            other => Err(Error::InvalidInput(format!(
                "unknown sampler `{other}`; allowed: ddpm, ddim, dpm++"
            ))),
        }
    }
}

/// DPM-Solver++'s memory of the previous step's x̂_0 and log-SNR.
#[derive(Debug, Default, Clone)]
pub struct SolverState {
    previous: Option<(Tensor, f64)>,
}

#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    schedule: NoiseSchedule,
    sampler: Sampler,
    timesteps: Vec<i64>,
    prev_timesteps: Vec<i64>,
}

impl Scheduler {
    /// Plans `steps` steps. The timesteps follow Karlo's spacing (diffusers `set_timesteps`):
    /// round(k · (T-1)/(n-1)) for k = n-1 .. 0, with NumPy's round-half-to-even.
    pub fn new(config: &SchedulerConfig, sampler: Sampler, steps: usize) -> Result<Self> {
        let train = config.num_train_timesteps;
        config.validate()?;
        if steps < 2 || steps > train {
            return Err(Error::InvalidInput(format!(
                "{steps} sampling steps requested; allowed: 2..={train} (the schedule has {train} training steps)"
            )));
        }
        if let Sampler::Ddim { eta } = sampler {
            if !(0.0..=1.0).contains(&eta) {
                return Err(Error::InvalidInput(format!(
                    "DDIM eta {eta} is out of range; allowed: 0..=1"
                )));
            }
        }
        let ratio = (train - 1) as f64 / (steps - 1) as f64;
        let timesteps: Vec<i64> = (0..steps)
            .rev()
            .map(|k| (k as f64 * ratio).round_ties_even() as i64)
            .collect();
        let prev = timesteps.iter().skip(1).copied().chain([-1]).collect();
        Self::with_timesteps(config, sampler, timesteps, prev)
    }

    /// A plan with explicit timesteps and the timestep each step lands on (-1 for the clean
    /// end), for other spacings (diffusers' DDIM "leading"/"trailing", DPM-Solver "linspace").
    pub fn with_timesteps(
        config: &SchedulerConfig,
        sampler: Sampler,
        timesteps: Vec<i64>,
        prev_timesteps: Vec<i64>,
    ) -> Result<Self> {
        let train = config.num_train_timesteps as i64;
        let valid = !timesteps.is_empty()
            && timesteps.len() == prev_timesteps.len()
            && timesteps.iter().all(|&t| (0..train).contains(&t))
            && timesteps.iter().zip(&prev_timesteps).all(|(&t, &p)| p < t);
        if !valid {
            return Err(Error::InvalidInput(format!(
                "invalid sampling plan: timesteps {timesteps:?} landing on {prev_timesteps:?} \
                 (each must be in 0..{train} and above the one it lands on)"
            )));
        }
        config.validate()?;
        Ok(Self {
            config: config.clone(),
            schedule: NoiseSchedule::cosine(config.num_train_timesteps),
            sampler,
            timesteps,
            prev_timesteps,
        })
    }

    pub fn timesteps(&self) -> &[i64] {
        &self.timesteps
    }

    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    pub fn schedule(&self) -> &NoiseSchedule {
        &self.schedule
    }

    /// The timestep after step `i`; -1 after the last (the clean sample).
    pub fn prev_timestep(&self, i: usize) -> i64 {
        self.prev_timesteps.get(i).copied().unwrap_or(-1)
    }

    /// Whether step `i` consumes a draw of noise (the reference draws exactly then).
    pub fn needs_noise(&self, i: usize) -> bool {
        match self.sampler {
            Sampler::Ddpm => self.timesteps[i] > 0,
            Sampler::Ddim { eta } => eta > 0.0 && self.prev_timestep(i) >= 0,
            Sampler::DpmSolverPlusPlus => false,
        }
    }

    /// x̂_0 and ε̂ from the model output, by the prediction type.
    fn predict(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        alpha_bar: f32,
    ) -> Result<(Tensor, Tensor)> {
        let (sqrt_a, sqrt_b) = (alpha_bar.sqrt() as f64, (1.0 - alpha_bar).sqrt() as f64);
        let (x0, eps) = match self.config.prediction_type {
            Prediction::Epsilon => {
                let x0 = ((sample - (model_output * sqrt_b)?)? / sqrt_a)?;
                (x0, model_output.clone())
            }
            Prediction::Sample => {
                let eps = ((sample - (model_output * sqrt_a)?)? / sqrt_b)?;
                (model_output.clone(), eps)
            }
            Prediction::VPrediction => {
                let x0 = ((sample * sqrt_a)? - (model_output * sqrt_b)?)?;
                let eps = ((model_output * sqrt_a)? + (sample * sqrt_b)?)?;
                (x0, eps)
            }
        };
        let x0 = if self.config.clip_sample {
            let r = self.config.clip_sample_range;
            x0.clamp(-r, r)?
        } else {
            x0
        };
        Ok((x0, eps))
    }

    /// Step `i`: from x_t to x_prev. `noise` must be given exactly when `needs_noise(i)`.
    pub fn step(
        &self,
        i: usize,
        model_output: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
        state: &mut SolverState,
    ) -> Result<Tensor> {
        let t = *self.timesteps.get(i).ok_or_else(|| {
            Error::InvalidInput(format!("step {i} of a {}-step plan", self.len()))
        })?;
        let channels = sample.dim(1)?;
        let (model_output, predicted_variance) = if model_output.dim(1)? == 2 * channels {
            (
                model_output.narrow(1, 0, channels)?,
                Some(model_output.narrow(1, channels, channels)?),
            )
        } else {
            (model_output.clone(), None)
        };
        let prev_t = self.prev_timestep(i);
        let noise = match (self.needs_noise(i), noise) {
            (true, Some(z)) => Some(z),
            (true, None) => {
                return Err(Error::InvalidInput(format!(
                    "step {i} (t = {t}) needs noise"
                )))
            }
            (false, _) => None,
        };
        match self.sampler {
            Sampler::Ddpm => self.ddpm_step(
                t,
                prev_t,
                &model_output,
                predicted_variance.as_ref(),
                sample,
                noise,
            ),
            Sampler::Ddim { eta } => self.ddim_step(t, prev_t, eta, &model_output, sample, noise),
            Sampler::DpmSolverPlusPlus => self.dpm_step(t, prev_t, &model_output, sample, state),
        }
    }

    /// DDPM eq. (7): μ̃ = (√ᾱ_prev β_t / (1-ᾱ_t)) x̂_0 + (√α_t (1-ᾱ_prev) / (1-ᾱ_t)) x_t, plus σ z.
    fn ddpm_step(
        &self,
        t: i64,
        prev_t: i64,
        model_output: &Tensor,
        predicted_variance: Option<&Tensor>,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let s = &self.schedule;
        let alpha_prod_t = s.alpha_bar(t);
        let alpha_prod_prev = s.alpha_bar(prev_t);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_prev = 1.0 - alpha_prod_prev;
        let (beta, alpha) = if prev_t == t - 1 {
            (s.betas[t as usize], s.alphas[t as usize])
        } else {
            let beta = 1.0 - alpha_prod_t / alpha_prod_prev;
            (beta, 1.0 - beta)
        };
        let (x0, _) = self.predict(model_output, sample, alpha_prod_t)?;
        let x0_coeff = alpha_prod_prev.sqrt() * beta / beta_prod_t;
        let xt_coeff = alpha.sqrt() * beta_prod_prev / beta_prod_t;
        let mean = ((x0 * x0_coeff as f64)? + (sample * xt_coeff as f64)?)?;
        let Some(z) = noise else {
            return Ok(mean);
        };
        // β̃_t = (1-ᾱ_prev)/(1-ᾱ_t) β_t, DDPM eq. (7).
        let posterior = beta_prod_prev / beta_prod_t * beta;
        let std = match (self.config.variance_type, predicted_variance) {
            (VarianceType::LearnedRange, Some(v)) => {
                // Improved DDPM eq. (15): log σ² = v log β_t + (1 - v) log β̃_t, v = (out + 1)/2.
                let min_log = posterior.ln() as f64;
                let max_log = beta.ln() as f64;
                let frac = ((v + 1.0)? / 2.0)?;
                let log_var = ((&frac * max_log)? + ((1.0 - frac)? * min_log)?)?;
                (log_var * 0.5)?.exp()?
            }
            _ => {
                let std = (0.5 * posterior.max(1e-20).ln()).exp();
                return Ok((mean + (z * std as f64)?)?);
            }
        };
        Ok((mean + (z * std)?)?)
    }

    /// DDIM eq. (12): x_prev = √ᾱ_prev x̂_0 + √(1-ᾱ_prev-σ²) ε̂ + σ z, σ = η √β̃_t.
    fn ddim_step(
        &self,
        t: i64,
        prev_t: i64,
        eta: f64,
        model_output: &Tensor,
        sample: &Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let s = &self.schedule;
        let a_t = s.alpha_bar(t) as f64;
        let a_prev = s.alpha_bar(prev_t) as f64;
        let (x0, eps) = self.predict(model_output, sample, a_t as f32)?;
        let variance = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
        let sigma = eta * variance.max(0.0).sqrt();
        let direction = (1.0 - a_prev - sigma * sigma).max(0.0).sqrt();
        let prev = ((x0 * a_prev.sqrt())? + (eps * direction)?)?;
        Ok(match noise {
            Some(z) => (prev + (z * sigma)?)?,
            None => prev,
        })
    }

    /// DPM-Solver++(2M), Lu et al. 2022 Algorithm 2 (midpoint form), data prediction; the last
    /// step lands on x̂_0 (first order, σ_prev = 0), as diffusers' `lower_order_final` does.
    fn dpm_step(
        &self,
        t: i64,
        prev_t: i64,
        model_output: &Tensor,
        sample: &Tensor,
        state: &mut SolverState,
    ) -> Result<Tensor> {
        let s = &self.schedule;
        let a_t = s.alpha_bar(t) as f64;
        let (x0, _) = self.predict(model_output, sample, a_t as f32)?;
        let lambda = |a: f64| 0.5 * (a / (1.0 - a)).ln();
        let lambda_t = lambda(a_t);
        if prev_t < 0 {
            state.previous = None;
            return Ok(x0);
        }
        let a_prev = s.alpha_bar(prev_t) as f64;
        let lambda_prev = lambda(a_prev);
        let h = lambda_prev - lambda_t;
        let sigma_ratio = ((1.0 - a_prev) / (1.0 - a_t)).sqrt();
        let phi = (-h).exp_m1(); // e^{-h} - 1
        let alpha_prev = a_prev.sqrt();
        let d = match state.previous.take() {
            Some((x0_last, lambda_last)) => {
                let r = (lambda_t - lambda_last) / h;
                let correction = ((&x0 - x0_last)? * (0.5 / r))?;
                (&x0 + correction)?
            }
            None => x0.clone(),
        };
        let out = ((sample * sigma_ratio)? - (d * (alpha_prev * phi))?)?;
        state.previous = Some((x0, lambda_t));
        Ok(out)
    }

    /// q(x_t | x_0) = √ᾱ_t x_0 + √(1-ᾱ_t) ε, for training.
    pub fn add_noise(&self, x0: &Tensor, noise: &Tensor, t: i64) -> Result<Tensor> {
        let a = self.schedule.alpha_bar(t) as f64;
        Ok(((x0 * a.sqrt())? + (noise * (1.0 - a).sqrt())?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cfg(prediction: Prediction) -> SchedulerConfig {
        SchedulerConfig {
            prediction_type: prediction,
            ..SchedulerConfig::default()
        }
    }

    #[test]
    fn karlo_timesteps_and_bad_step_counts() {
        let s = Scheduler::new(&SchedulerConfig::default(), Sampler::Ddpm, 25).unwrap();
        assert_eq!(s.timesteps()[..4], [999, 957, 916, 874]);
        assert_eq!(*s.timesteps().last().unwrap(), 0);
        // 999/6 = 166.5 rounds half to even, as NumPy does.
        let s = Scheduler::new(&SchedulerConfig::default(), Sampler::Ddpm, 7).unwrap();
        assert_eq!(s.timesteps(), &[999, 832, 666, 500, 333, 166, 0]);
        for bad in [0, 1, 1001] {
            let err = Scheduler::new(&SchedulerConfig::default(), Sampler::Ddpm, bad)
                .unwrap_err()
                .to_string();
            assert!(err.contains("allowed: 2..=1000"), "{err}");
        }
        // A schedule too short to plan is named as the config field, not as a step range.
        for train in [0, 1] {
            let config = SchedulerConfig {
                num_train_timesteps: train,
                ..SchedulerConfig::default()
            };
            let err = Scheduler::new(&config, Sampler::Ddpm, 2)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("num_train_timesteps") && err.contains("at least 2"),
                "{err}"
            );
        }
    }

    #[test]
    fn exact_predictions_recover_the_clean_sample() -> Result<()> {
        // With the true ε, every sampler's x̂_0 is x_0, and DDIM(eta=0) lands on it at the end.
        let dev = Device::Cpu;
        let x0 = Tensor::new(&[[0.3f32, -0.2, 0.7]], &dev)?;
        let eps = Tensor::new(&[[0.5f32, 1.0, -1.5]], &dev)?;
        for sampler in [Sampler::Ddim { eta: 0.0 }, Sampler::DpmSolverPlusPlus] {
            let s = Scheduler::new(&cfg(Prediction::Epsilon), sampler, 10)?;
            let mut x = s.add_noise(&x0, &eps, s.timesteps()[0])?;
            let mut state = SolverState::default();
            for i in 0..s.len() {
                let t = s.timesteps()[i];
                let a = s.schedule().alpha_bar(t) as f64;
                // The ε that explains x_t given x_0.
                let e = ((&x - (&x0 * a.sqrt())?)? / (1.0 - a).sqrt())?;
                x = s.step(i, &e, &x, None, &mut state)?;
            }
            let diff = (x - &x0)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(diff < 1e-4, "{sampler:?}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn noise_is_required_exactly_when_drawn() {
        let s = Scheduler::new(&SchedulerConfig::default(), Sampler::Ddpm, 4).unwrap();
        assert_eq!(
            (0..4).map(|i| s.needs_noise(i)).collect::<Vec<_>>(),
            vec![true, true, true, false]
        );
        let x = Tensor::zeros((1, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(s
            .step(0, &x, &x, None, &mut SolverState::default())
            .is_err());
    }
}
