//! softmax and log-softmax from primitives that record their backward ops (candle's fused
//! `softmax_last_dim` records none). When no gradient can flow (`track_op()` is false: sampling,
//! or inputs built only from loaded weights), the fused kernel is used instead: one pass over
//! memory instead of five, which matters for the U-Net's 4096 x 4177 attention maps.

use candle_core::{Result, Tensor, D};

/// softmax over the last dimension. The max is detached: softmax is shift invariant, so the
/// shift carries no gradient.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if !xs.track_op() {
        return candle_nn::ops::softmax_last_dim(&xs.contiguous()?);
    }
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// log(softmax(x)) over the last dimension, computed stably as x - max - log Σ exp(x - max).
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let shifted = xs.broadcast_sub(&max)?;
    let log_sum = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_sum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn softmax_sums_to_one_and_has_gradient() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2., 3., 1000., 1000., -5.], (2, 3), &dev)?;
        let y = softmax_last_dim(x.as_tensor())?;
        let rows = y.sum_keepdim(1)?.to_vec2::<f32>()?;
        assert!((rows[0][0] - 1.0).abs() < 1e-6 && (rows[1][0] - 1.0).abs() < 1e-6);
        let v = y.to_vec2::<f32>()?;
        let e = [1f64.exp(), 2f64.exp(), 3f64.exp()];
        let s: f64 = e.iter().sum();
        assert!((v[0][2] as f64 - e[2] / s).abs() < 1e-6);
        let weights = Tensor::new(&[[1f32, 0., 0.], [0., 1., 0.]], &dev)?;
        let grads = (y * weights)?.sum_all()?.backward()?;
        let g = grads.get(x.as_tensor()).expect("softmax gradient");
        assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        Ok(())
    }

    #[test]
    fn log_softmax_is_log_of_softmax() -> Result<()> {
        let x = Tensor::new(&[[0.5f32, -1.0, 2.0, 80.0]], &Device::Cpu)?;
        let a = log_softmax_last_dim(&x)?;
        let b = softmax_last_dim(&x)?.log()?;
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(diff < 1e-5, "{diff}");
        Ok(())
    }
}
