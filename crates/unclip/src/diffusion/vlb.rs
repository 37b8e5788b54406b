//! The variational bound term that teaches a learned-variance model its Σ (Nichol & Dhariwal
//! 2021, §3.1, "L_hybrid = L_simple + λ L_vlb"; reference: openai/improved-diffusion
//! `gaussian_diffusion.py` `_vb_terms_bpd`, `losses.py`). The mean is taken from the detached ε
//! prediction, so this term trains only the variance; with T = 1000 the ADM scaling makes λ·T = 1.

use super::schedule::NoiseSchedule;
use candle_core::{Result, Tensor, D};

/// Per-sample (B, 1, 1, 1) tensors of a schedule quantity.
fn column(values: Vec<f32>, like: &Tensor) -> Result<Tensor> {
    let mut shape = vec![values.len()];
    shape.extend(std::iter::repeat_n(1, like.rank() - 1));
    Tensor::from_vec(values, shape.as_slice(), like.device())
}

/// KL(N(μ1, e^{lv1}) ‖ N(μ2, e^{lv2})), elementwise.
fn normal_kl(mean1: &Tensor, logvar1: &Tensor, mean2: &Tensor, logvar2: &Tensor) -> Result<Tensor> {
    let a = (logvar2 - logvar1)?;
    let b = (logvar1 - logvar2)?.exp()?;
    let c = ((mean1 - mean2)?.sqr()? * logvar2.neg()?.exp()?)?;
    (((a + b)? + c)? - 1.0)? * 0.5
}

/// Φ(x) by the tanh approximation ADM uses.
fn approx_std_normal_cdf(x: &Tensor) -> Result<Tensor> {
    let inner = ((x + (x.powf(3.0)? * 0.044715)?)? * (2.0 / std::f64::consts::PI).sqrt())?;
    (inner.tanh()? + 1.0)? * 0.5
}

/// log p(x_0 | x_1) under an 8-bit discretised Gaussian, elementwise.
fn discretized_log_likelihood(x: &Tensor, mean: &Tensor, log_scale: &Tensor) -> Result<Tensor> {
    let centered = (x - mean)?;
    let inv_std = log_scale.neg()?.exp()?;
    let cdf_plus = approx_std_normal_cdf(&((&centered + 1.0 / 255.0)? * &inv_std)?)?;
    let cdf_min = approx_std_normal_cdf(&((&centered - 1.0 / 255.0)? * &inv_std)?)?;
    let log_cdf_plus = cdf_plus.clamp(1e-12, f64::MAX)?.log()?;
    let log_one_minus_cdf_min = (1.0 - &cdf_min)?.clamp(1e-12, f64::MAX)?.log()?;
    let log_delta = (cdf_plus - cdf_min)?.clamp(1e-12, f64::MAX)?.log()?;
    let low = x.lt(-0.999)?;
    let high = x.gt(0.999)?;
    low.where_cond(
        &log_cdf_plus,
        &high.where_cond(&log_one_minus_cdf_min, &log_delta)?,
    )
}

/// L_vlb in bits per dimension, averaged over the batch.
///
/// `x0`, `x_t`: (B, C, H, W); `eps`: the model's ε (detached here); `v`: its variance output in
/// [-1, 1] (learned range); `ts`: one timestep per sample.
pub fn vlb_loss(
    schedule: &NoiseSchedule,
    x0: &Tensor,
    x_t: &Tensor,
    eps: &Tensor,
    v: &Tensor,
    ts: &[i64],
) -> Result<Tensor> {
    let mut c_x0 = Vec::new();
    let mut c_xt = Vec::new();
    let mut sqrt_ab = Vec::new();
    let mut sqrt_1m_ab = Vec::new();
    let mut min_log = Vec::new();
    let mut max_log = Vec::new();
    for &t in ts {
        let i = t as usize;
        let ab = schedule.alpha_bar(t) as f64;
        let ab_prev = schedule.alpha_bar(t - 1) as f64;
        let beta = schedule.betas[i] as f64;
        c_x0.push((beta * ab_prev.sqrt() / (1.0 - ab)) as f32);
        c_xt.push(((1.0 - ab_prev) * (1.0 - beta).sqrt() / (1.0 - ab)) as f32);
        sqrt_ab.push(ab.sqrt() as f32);
        sqrt_1m_ab.push((1.0 - ab).sqrt() as f32);
        // β̃_t, with β̃_1 standing in at t = 0 where it is 0 (ADM's "clipped" log variance).
        let posterior = |t: i64| -> f64 {
            let (ab, ab_prev) = (
                schedule.alpha_bar(t) as f64,
                schedule.alpha_bar(t - 1) as f64,
            );
            schedule.betas[t as usize] as f64 * (1.0 - ab_prev) / (1.0 - ab)
        };
        let clipped = if t == 0 {
            posterior(1.min(schedule.len() as i64 - 1))
        } else {
            posterior(t)
        };
        min_log.push(clipped.ln() as f32);
        max_log.push(beta.ln() as f32);
    }
    let c_x0 = column(c_x0, x0)?;
    let c_xt = column(c_xt, x0)?;
    let min_log = column(min_log, x0)?;
    let max_log = column(max_log, x0)?;
    let true_mean = (x0.broadcast_mul(&c_x0)? + x_t.broadcast_mul(&c_xt)?)?;
    let x0_pred = (x_t - eps.detach().broadcast_mul(&column(sqrt_1m_ab, x0)?)?)?
        .broadcast_div(&column(sqrt_ab, x0)?)?;
    let model_mean = (x0_pred.broadcast_mul(&c_x0)? + x_t.broadcast_mul(&c_xt)?)?;
    let frac = ((v + 1.0)? / 2.0)?;
    let model_log_var =
        (frac.broadcast_mul(&max_log)? + (1.0 - &frac)?.broadcast_mul(&min_log)?)?;
    let kl = normal_kl(
        &true_mean,
        &min_log.broadcast_as(x0.shape())?.contiguous()?,
        &model_mean,
        &model_log_var,
    )?;
    let nll = discretized_log_likelihood(x0, &model_mean, &(&model_log_var * 0.5)?)?.neg()?;
    let per_sample = |x: &Tensor| -> Result<Tensor> { x.flatten_from(1)?.mean(D::Minus1) };
    let (kl, nll) = (per_sample(&kl)?, per_sample(&nll)?);
    let is_first = Tensor::from_vec(
        ts.iter().map(|&t| (t == 0) as u8).collect::<Vec<_>>(),
        ts.len(),
        x0.device(),
    )?;
    let terms = is_first.where_cond(&nll, &kl)?;
    terms.mean_all()? / std::f64::consts::LN_2
}
