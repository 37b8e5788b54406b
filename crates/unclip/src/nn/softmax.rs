//! softmax and log-softmax with gradients (candle's fused `softmax_last_dim` records none). f32
//! CPU tensors take our fused kernel (`softmax_kernel`), which has its own backward. Elsewhere,
//! when no gradient can flow (`track_op()` is false: sampling, or inputs built only from loaded
//! weights), candle's fused kernel is used: one pass over memory instead of five, which matters
//! for the U-Net's 4096 x 4177 attention maps; otherwise the composition of primitives below.

use super::softmax_kernel::SoftmaxOp;
use candle_core::{DType, Result, Tensor, D};

fn fused_kernel_applies(xs: &Tensor) -> bool {
    xs.device().is_cpu() && xs.dtype() == DType::F32
}

/// softmax over the last dimension. The max is detached: softmax is shift invariant, so the
/// shift carries no gradient.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if fused_kernel_applies(xs) {
        return xs.contiguous()?.apply_op1(SoftmaxOp::softmax());
    }
    if !xs.track_op() {
        return candle_nn::ops::softmax_last_dim(&xs.contiguous()?);
    }
    softmax_composed(xs)
}

fn softmax_composed(xs: &Tensor) -> Result<Tensor> {
    let max = xs.max_keepdim(D::Minus1)?.detach();
    let exp = xs.broadcast_sub(&max)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// log(softmax(x)) over the last dimension, computed stably as x - max - log Σ exp(x - max).
pub fn log_softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if fused_kernel_applies(xs) {
        return xs.contiguous()?.apply_op1(SoftmaxOp::log_softmax());
    }
    log_softmax_composed(xs)
}

fn log_softmax_composed(xs: &Tensor) -> Result<Tensor> {
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

    fn compare(
        fused: impl Fn(&Tensor) -> Result<Tensor>,
        composed: impl Fn(&Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let dev = Device::Cpu;
        for shape in [vec![3usize, 5, 37], vec![2, 300], vec![4, 1]] {
            let base = (Tensor::rand(-4f32, 4f32, shape.as_slice(), &dev)? + 30.0)?;
            // Non-contiguous too: the transpose of a (D, rows) matrix.
            let d = *shape.last().expect("rank >= 1");
            let strided = Tensor::rand(-4f32, 4f32, (d, 6), &dev)?.t()?;
            for x in [base, strided] {
                let var = Var::from_tensor(&x)?;
                let y_fused = fused(var.as_tensor())?;
                let y_ref = composed(var.as_tensor())?;
                let scale = y_ref.abs()?.max_all()?.to_scalar::<f32>()?;
                let diff = (&y_fused - &y_ref)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(diff <= 2e-6 * scale.max(1.0), "forward {shape:?}: {diff}");
                let r = Tensor::rand(-1f32, 1f32, y_ref.dims(), &dev)?;
                let g_fused = (&y_fused * &r)?.sum_all()?.backward()?;
                let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
                let a = g_fused.get(var.as_tensor()).expect("fused gradient");
                let b = g_ref.get(var.as_tensor()).expect("reference gradient");
                let scale = b.abs()?.max_all()?.to_scalar::<f32>()?;
                let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    diff <= 2e-5 * scale.max(1e-3),
                    "gradient {shape:?}: {diff} (scale {scale})"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn fused_softmax_matches_composed_with_gradients() -> Result<()> {
        compare(softmax_last_dim, softmax_composed)
    }

    #[test]
    fn fused_log_softmax_matches_composed_with_gradients() -> Result<()> {
        compare(log_softmax_last_dim, log_softmax_composed)
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

/// Kernel timings against the composed version (not a test; run by hand, release build):
/// `cargo test --release -p unclip --lib nn::softmax::timing -- --ignored --nocapture`.
#[cfg(test)]
mod timing {
    use super::*;
    use candle_core::{Device, Var};
    use std::time::Instant;

    fn median_ms(runs: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
        f()?;
        let mut times = Vec::with_capacity(runs);
        for _ in 0..runs {
            let start = Instant::now();
            f()?;
            times.push(start.elapsed().as_secs_f64() * 1e3);
        }
        times.sort_by(f64::total_cmp);
        Ok(times[runs / 2])
    }

    #[test]
    #[ignore = "timing, run by hand"]
    fn timing() -> Result<()> {
        // The decoder bench's top-level attention map: batch 2 x 2 heads, 1024 queries, 1105 keys.
        let x = Var::from_tensor(&Tensor::rand(-3f32, 3f32, (4, 1024, 1105), &Device::Cpu)?)?;
        let fused = |t: &Tensor| softmax_last_dim(t);
        let composed = |t: &Tensor| softmax_composed(t);
        type Kernel<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor>;
        let cases: [(&str, Kernel); 2] =
            [("softmax composed", &composed), ("softmax fused", &fused)];
        for (name, f) in cases {
            let fwd = median_ms(9, || f(&x.as_tensor().detach()).map(|_| ()))?;
            let both = median_ms(9, || {
                let grads = f(x.as_tensor())?.sqr()?.sum_all()?.backward()?;
                assert!(grads.get(x.as_tensor()).is_some());
                Ok(())
            })?;
            println!("{name:>18}: forward {fwd:8.3} ms, forward+backward (+ sqr) {both:8.3} ms");
        }
        Ok(())
    }
}
