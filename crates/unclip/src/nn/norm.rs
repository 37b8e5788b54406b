//! Layer norm and group norm with gradients (see the module note in `nn`). f32 tensors on the CPU
//! take the fused kernels (`layer_norm_kernel`, `group_norm_kernel`); other devices and dtypes
//! the composition of differentiable primitives below, which is also the kernels' reference.
//! Statistics are computed as PyTorch does: biased variance, eps added inside the square root.

use super::activation::Activation;
use super::group_norm_kernel::GroupNormOp;
use super::layer_norm_kernel::LayerNormOp;
use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// Whether every operand is an f32 CPU tensor, which the fused kernels take.
fn fused_kernel_applies(tensors: &[&Tensor]) -> bool {
    tensors
        .iter()
        .all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// Normalises over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
    if fused_kernel_applies(&[xs, weight]) && bias.is_none_or(|b| fused_kernel_applies(&[b])) {
        let bias_or_zeros = match bias {
            Some(b) => b.contiguous()?,
            None => weight.zeros_like()?.detach(),
        };
        let op = LayerNormOp::new(eps, bias.is_some());
        return xs
            .contiguous()?
            .apply_op3(&weight.contiguous()?, &bias_or_zeros, op);
    }
    layer_norm_composed(xs, weight, bias, eps)
}

fn layer_norm_composed(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    eps: f64,
) -> Result<Tensor> {
    // Without gradients to record, candle's fused kernel computes the same in one pass.
    if !xs.track_op()
        && !weight.track_op()
        && !bias.is_some_and(|b| b.track_op())
        && xs.dtype() == DType::F32
    {
        let bias = match bias {
            Some(b) => b.clone(),
            None => weight.zeros_like()?,
        };
        return candle_nn::ops::layer_norm(&xs.contiguous()?, weight, &bias, eps as f32);
    }
    let dtype = xs.dtype();
    let xs = xs.to_dtype(DType::F32)?;
    let mean = xs.mean_keepdim(D::Minus1)?;
    let centered = xs.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered.broadcast_div(&(var + eps)?.sqrt()?)?;
    let out = normed.broadcast_mul(weight)?;
    let out = match bias {
        Some(bias) => out.broadcast_add(bias)?,
        None => out,
    };
    out.to_dtype(dtype)
}

/// `torch.nn.LayerNorm(dim, eps)`, keys `weight` and `bias`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Option<Tensor>,
    eps: f64,
}

impl LayerNorm {
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(dim, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias: Some(bias),
            eps,
        })
    }

    /// A layer norm whose checkpoint has no bias (`elementwise_affine` with `bias=False`).
    pub fn new_no_bias(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        Ok(Self {
            weight,
            bias: None,
            eps,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        layer_norm(xs, &self.weight, self.bias.as_ref(), self.eps)
    }
}

impl candle_core::Module for LayerNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, xs)
    }
}

/// (B, C) of a group norm input, or an error naming the shapes when C does not split into groups.
fn check_groups(xs: &Tensor, num_groups: usize) -> Result<(usize, usize)> {
    let dims = xs.dims();
    if dims.len() < 2 || num_groups == 0 || !dims[1].is_multiple_of(num_groups) {
        candle_core::bail!(
            "group_norm: {} channels cannot be split into {num_groups} groups (input {dims:?})",
            dims.get(1).copied().unwrap_or(0)
        );
    }
    Ok((dims[0], dims[1]))
}

/// The fused kernel with per-(batch, channel) weight and bias, both (B, C).
fn group_norm_kernel(
    xs: &Tensor,
    num_groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let op = GroupNormOp::new(num_groups, eps, silu);
    xs.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}

/// A per-channel (C) parameter repeated over the batch, (B, C).
fn per_batch(param: &Tensor, batch: usize, channels: usize) -> Result<Tensor> {
    param
        .reshape((1, channels))?
        .broadcast_as((batch, channels))
}

/// Group norm over (B, C, ...) with a per-channel affine transform.
pub fn group_norm(
    xs: &Tensor,
    num_groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (batch, channels) = check_groups(xs, num_groups)?;
    if fused_kernel_applies(&[xs, weight, bias]) {
        let weight = per_batch(weight, batch, channels)?;
        let bias = per_batch(bias, batch, channels)?;
        return group_norm_kernel(xs, num_groups, &weight, &bias, eps, false);
    }
    group_norm_composed(xs, num_groups, weight, bias, eps)
}

/// silu(group_norm(x)), in one pass on the fused path.
pub fn group_norm_silu(
    xs: &Tensor,
    num_groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (batch, channels) = check_groups(xs, num_groups)?;
    if fused_kernel_applies(&[xs, weight, bias]) {
        let weight = per_batch(weight, batch, channels)?;
        let bias = per_batch(bias, batch, channels)?;
        return group_norm_kernel(xs, num_groups, &weight, &bias, eps, true);
    }
    group_norm_composed(xs, num_groups, weight, bias, eps)?.silu()
}

/// group_norm(x) · (1 + scale) + shift, then SiLU when `silu`: the adaptive group norm of the
/// improved-DDPM ResNet block (scale and shift (B, C) or (1, C), from the time embedding). On the fused
/// path the modulation folds into a per-(batch, channel) affine transform:
/// (x̂ w + b)(1 + s) + t = x̂ · w(1 + s) + (b(1 + s) + t).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_scale_shift(
    xs: &Tensor,
    num_groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    scale: &Tensor,
    shift: &Tensor,
    eps: f64,
    silu: bool,
) -> Result<Tensor> {
    let (batch, channels) = check_groups(xs, num_groups)?;
    let mut modulation = Vec::with_capacity(2);
    for (name, t) in [("scale", scale), ("shift", shift)] {
        let fits = t.rank() == 2 && t.dim(1)? == channels && [1, batch].contains(&t.dim(0)?);
        if !fits {
            candle_core::bail!(
                "group_norm_scale_shift: {name} must be (batch, channels) = ({batch}, {channels}) \
                 or (1, {channels}), got {:?}",
                t.dims()
            );
        }
        modulation.push(t.broadcast_as((batch, channels))?);
    }
    let gain = (&modulation[0] + 1.0)?; // (B, C)
    let shift = &modulation[1];
    if fused_kernel_applies(&[xs, weight, bias, scale, shift]) {
        let weight = weight.reshape((1, channels))?.broadcast_mul(&gain)?;
        let bias = bias
            .reshape((1, channels))?
            .broadcast_mul(&gain)?
            .add(shift)?;
        return group_norm_kernel(xs, num_groups, &weight, &bias, eps, silu);
    }
    let mut modulation_shape = vec![1usize; xs.rank()];
    modulation_shape[0] = batch;
    modulation_shape[1] = channels;
    let out = group_norm_composed(xs, num_groups, weight, bias, eps)?
        .broadcast_mul(&gain.reshape(modulation_shape.as_slice())?)?
        .broadcast_add(&shift.reshape(modulation_shape.as_slice())?)?;
    if silu {
        out.silu()
    } else {
        Ok(out)
    }
}

fn group_norm_composed(
    xs: &Tensor,
    num_groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let (batch, channels) = check_groups(xs, num_groups)?;
    let dims = xs.dims().to_vec();
    let dtype = xs.dtype();
    let grouped = xs.to_dtype(DType::F32)?.reshape((batch, num_groups, ()))?;
    let mean = grouped.mean_keepdim(D::Minus1)?;
    let centered = grouped.broadcast_sub(&mean)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centered
        .broadcast_div(&(var + eps)?.sqrt()?)?
        .reshape(dims.as_slice())?;
    let mut affine_shape = vec![1usize; dims.len()];
    affine_shape[1] = channels;
    let out = normed
        .broadcast_mul(&weight.reshape(affine_shape.as_slice())?)?
        .broadcast_add(&bias.reshape(affine_shape.as_slice())?)?;
    out.to_dtype(dtype)
}

/// `torch.nn.GroupNorm(num_groups, channels, eps)`, keys `weight` and `bias`.
#[derive(Debug, Clone)]
pub struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    num_groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub fn new(num_groups: usize, channels: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        if num_groups == 0 || !channels.is_multiple_of(num_groups) {
            candle_core::bail!(
                "GroupNorm: {channels} channels are not divisible into {num_groups} groups"
            );
        }
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        Ok(Self {
            weight,
            bias,
            num_groups,
            eps,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        group_norm(xs, self.num_groups, &self.weight, &self.bias, self.eps)
    }

    /// silu(GroupNorm(x)), fused.
    pub fn forward_silu(&self, xs: &Tensor) -> Result<Tensor> {
        group_norm_silu(xs, self.num_groups, &self.weight, &self.bias, self.eps)
    }

    /// act(GroupNorm(x)), fused when `act` is SiLU.
    pub fn forward_act(&self, xs: &Tensor, act: Activation) -> Result<Tensor> {
        match act {
            Activation::Silu => self.forward_silu(xs),
            other => other.forward(&self.forward(xs)?),
        }
    }

    /// GroupNorm(x) · (1 + scale) + shift, then SiLU when `silu`; scale and shift are (B, C).
    pub fn forward_scale_shift(
        &self,
        xs: &Tensor,
        scale: &Tensor,
        shift: &Tensor,
        silu: bool,
    ) -> Result<Tensor> {
        group_norm_scale_shift(
            xs,
            self.num_groups,
            &self.weight,
            &self.bias,
            scale,
            shift,
            self.eps,
            silu,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn layer_norm_matches_definition_and_passes_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2., 4., -1., 0., 3.], (2, 3), &dev)?;
        let w = Var::from_vec(vec![1f32, 2., 0.5], 3, &dev)?;
        let b = Var::from_vec(vec![0f32, 1., -1.], 3, &dev)?;
        let y = layer_norm(x.as_tensor(), w.as_tensor(), Some(b.as_tensor()), 1e-5)?;
        // Row 0: mean 7/3, biased var = ((4/3)^2 + (1/3)^2 + (5/3)^2)/3 = 42/27.
        let std = (42f64 / 27. + 1e-5).sqrt();
        let expected0 = [
            (1. - 7. / 3.) / std,
            2. * (2. - 7. / 3.) / std + 1.,
            0.5 * (4. - 7. / 3.) / std - 1.,
        ];
        let got = y.to_vec2::<f32>()?;
        for (g, e) in got[0].iter().zip(expected0) {
            assert!((*g as f64 - e).abs() < 1e-5, "{g} vs {e}");
        }
        let loss = (y.sqr()?.sum_all()? + y.sum_all()?)?;
        let grads = loss.backward()?;
        for v in [&x, &w, &b] {
            let g = grads.get(v.as_tensor()).expect("gradient recorded");
            assert!(g.abs()?.sum_all()?.to_scalar::<f32>()? > 0.0);
        }
        Ok(())
    }

    /// Uniform values in [-2, 2) plus `offset` (a nonzero mean tests the centering).
    fn random(shape: &[usize], offset: f64, seed: u64) -> Result<Tensor> {
        let t = Tensor::rand(-2f32, 2f32, shape, &Device::Cpu)?;
        // Tensor::rand has no seed; mix in the seed so calls differ deterministically in scale.
        (t * (1.0 + seed as f64 * 0.1))? + offset
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-3);
        Ok((a - b)?.abs()?.max_all()?.to_scalar::<f32>()? / scale)
    }

    /// Runs `f` on the kernel path (f32 CPU) and on the composed reference, with `loss` =
    /// Σ y · r for a fixed random r, and compares the output and every gradient.
    fn compare_with_composed(
        inputs: &[Tensor],
        fused: impl Fn(&[Tensor]) -> Result<Tensor>,
        composed: impl Fn(&[Tensor]) -> Result<Tensor>,
        tol: f32,
        label: &str,
    ) -> Result<()> {
        let vars = inputs
            .iter()
            .map(Var::from_tensor)
            .collect::<Result<Vec<_>>>()?;
        let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let y_fused = fused(&tensors)?;
        let y_ref = composed(&tensors)?;
        let diff = max_rel_diff(&y_fused, &y_ref)?;
        assert!(diff < tol, "{label}: forward differs by {diff}");
        let r = Tensor::rand(-1f32, 1f32, y_ref.dims(), &Device::Cpu)?;
        let g_fused = (&y_fused * &r)?.sum_all()?.backward()?;
        let g_ref = (&y_ref * &r)?.sum_all()?.backward()?;
        for (i, v) in vars.iter().enumerate() {
            let a = g_fused.get(v.as_tensor()).expect("fused gradient");
            let b = g_ref.get(v.as_tensor()).expect("reference gradient");
            let diff = max_rel_diff(a, b)?;
            assert!(
                diff < tol,
                "{label}: gradient of input {i} differs by {diff}"
            );
        }
        Ok(())
    }

    #[test]
    fn fused_group_norm_matches_composed_with_gradients() -> Result<()> {
        // Odd sizes, batch 3, 12 channels in 4 groups of 3, 5x7 spatial; 1-d spatial too.
        for (shape, groups) in [
            (vec![3usize, 12, 5, 7], 4usize),
            (vec![2, 6, 33], 3),
            (vec![2, 10], 2),
        ] {
            let c = shape[1];
            let inputs = [
                random(&shape, 0.7, 1)?,
                random(&[c], 1.0, 2)?,
                random(&[c], 0.0, 3)?,
            ];
            let fused = |t: &[Tensor]| group_norm(&t[0], groups, &t[1], &t[2], 1e-5);
            let silu = |t: &[Tensor]| group_norm_silu(&t[0], groups, &t[1], &t[2], 1e-5);
            let reference = |t: &[Tensor]| group_norm_composed(&t[0], groups, &t[1], &t[2], 1e-5);
            let label = format!("{shape:?} in {groups} groups");
            compare_with_composed(&inputs, fused, reference, 2e-5, &label)?;
            compare_with_composed(&inputs, silu, |t| reference(t)?.silu(), 2e-5, &label)?;
        }
        Ok(())
    }

    #[test]
    fn fused_group_norm_scale_shift_matches_composed_with_gradients() -> Result<()> {
        let (b, c, groups) = (2usize, 6usize, 3usize);
        let inputs = [
            random(&[b, c, 3, 5], -0.4, 1)?,
            random(&[c], 1.0, 2)?,
            random(&[c], 0.0, 3)?,
            random(&[b, c], 0.0, 4)?,
            random(&[b, c], 0.0, 5)?,
        ];
        for silu in [false, true] {
            let fused = |t: &[Tensor]| {
                group_norm_scale_shift(&t[0], groups, &t[1], &t[2], &t[3], &t[4], 1e-5, silu)
            };
            let reference = |t: &[Tensor]| {
                let shape = (b, c, 1, 1);
                let out = group_norm_composed(&t[0], groups, &t[1], &t[2], 1e-5)?
                    .broadcast_mul(&(t[3].reshape(shape)? + 1.0)?)?
                    .broadcast_add(&t[4].reshape(shape)?)?;
                if silu {
                    out.silu()
                } else {
                    Ok(out)
                }
            };
            compare_with_composed(&inputs, fused, reference, 2e-5, &format!("silu {silu}"))?;
        }
        Ok(())
    }

    #[test]
    fn fused_group_norm_takes_non_contiguous_input() -> Result<()> {
        // (B, H, C, W) transposed to (B, C, H, W): strided.
        let raw = random(&[2, 5, 8, 3], 0.3, 1)?;
        let xs = raw.transpose(1, 2)?;
        assert!(!xs.is_contiguous());
        let (w, b) = (random(&[8], 1.0, 2)?, random(&[8], 0.0, 3)?);
        let inputs = [xs.contiguous()?, w, b];
        let fused = |t: &[Tensor]| {
            group_norm_silu(
                &t[0].transpose(1, 2)?.contiguous()?.transpose(1, 2)?,
                4,
                &t[1],
                &t[2],
                1e-6,
            )
        };
        let reference = |t: &[Tensor]| group_norm_composed(&t[0], 4, &t[1], &t[2], 1e-6)?.silu();
        compare_with_composed(&inputs, fused, reference, 2e-5, "strided")?;
        let direct = group_norm(&xs, 4, &inputs[1], &inputs[2], 1e-6)?;
        let expected = group_norm_composed(&xs, 4, &inputs[1], &inputs[2], 1e-6)?;
        assert!(max_rel_diff(&direct, &expected)? < 2e-5);
        Ok(())
    }

    #[test]
    fn fused_layer_norm_matches_composed_with_gradients() -> Result<()> {
        for shape in [vec![3usize, 5, 37], vec![7, 256], vec![1, 1]] {
            let d = *shape.last().expect("rank >= 1");
            let inputs = [
                random(&shape, 1.5, 1)?,
                random(&[d], 1.0, 2)?,
                random(&[d], 0.0, 3)?,
            ];
            let with_bias = |t: &[Tensor]| layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5);
            let reference = |t: &[Tensor]| layer_norm_composed(&t[0], &t[1], Some(&t[2]), 1e-5);
            compare_with_composed(&inputs, with_bias, reference, 2e-5, &format!("{shape:?}"))?;
            let no_bias = |t: &[Tensor]| layer_norm(&t[0], &t[1], None, 1e-5);
            let reference = |t: &[Tensor]| layer_norm_composed(&t[0], &t[1], None, 1e-5);
            compare_with_composed(
                &inputs[..2],
                no_bias,
                reference,
                2e-5,
                &format!("{shape:?} no bias"),
            )?;
        }
        // Non-contiguous: normalise over the first dim of a transposed matrix.
        let xs = random(&[9, 4], 0.5, 1)?.t()?;
        let (w, b) = (random(&[9], 1.0, 2)?, random(&[9], 0.0, 3)?);
        let got = layer_norm(&xs, &w, Some(&b), 1e-5)?;
        let want = layer_norm_composed(&xs, &w, Some(&b), 1e-5)?;
        assert!(max_rel_diff(&got, &want)? < 2e-5);
        Ok(())
    }

    #[test]
    fn group_norm_normalises_each_group() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 32., &dev)?.reshape((1, 4, 2, 4))?;
        let w = Tensor::ones(4, DType::F32, &dev)?;
        let b = Tensor::zeros(4, DType::F32, &dev)?;
        let y = group_norm(&x, 2, &w, &b, 1e-6)?.reshape((2, 16))?;
        let mean = y.mean_keepdim(1)?.to_vec2::<f32>()?;
        let var = y.sqr()?.mean_keepdim(1)?.to_vec2::<f32>()?;
        for g in 0..2 {
            assert!(mean[g][0].abs() < 1e-5);
            assert!((var[g][0] - 1.0).abs() < 1e-4);
        }
        assert!(group_norm(&x, 3, &w, &b, 1e-6).is_err());
        assert!(group_norm_silu(&x, 3, &w, &b, 1e-6).is_err());
        let s = Tensor::zeros((1, 4), DType::F32, &dev)?;
        assert!(group_norm_scale_shift(&x, 3, &w, &b, &s, &s, 1e-6, true).is_err());
        let wrong = Tensor::zeros((1, 3), DType::F32, &dev)?;
        assert!(group_norm_scale_shift(&x, 2, &w, &b, &wrong, &s, 1e-6, true).is_err());
        Ok(())
    }
}

/// Kernel timings against the composed version (not a test; run by hand, release build):
/// `cargo test --release -p unclip --lib nn::norm::timing -- --ignored --nocapture`.
#[cfg(test)]
mod timing {
    use super::*;
    use candle_core::{Device, Var};
    use std::time::Instant;

    /// Median milliseconds of `f` over `runs` runs after one warm-up.
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

    fn forward_backward(inputs: &[Var], f: &dyn Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
        let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().clone()).collect();
        let grads = f(&tensors)?.sum_all()?.backward()?;
        assert!(grads.get(inputs[0].as_tensor()).is_some());
        Ok(())
    }

    #[test]
    #[ignore = "timing, run by hand"]
    fn timing() -> Result<()> {
        let dev = Device::Cpu;
        let var = |shape: &[usize]| Var::from_tensor(&Tensor::rand(-1f32, 1f32, shape, &dev)?);
        // The decoder bench's largest ResNet activation: (2, 64, 64, 64), 32 groups.
        let gn = [var(&[2, 64, 64, 64])?, var(&[64])?, var(&[64])?];
        let ln = [var(&[2 * 81, 256])?, var(&[256])?, var(&[256])?];
        type Case<'a> = (&'a str, &'a [Var], Box<dyn Fn(&[Tensor]) -> Result<Tensor>>);
        let cases: Vec<Case> = vec![
            (
                "group_norm+silu composed",
                &gn,
                Box::new(|t: &[Tensor]| group_norm_composed(&t[0], 32, &t[1], &t[2], 1e-5)?.silu()),
            ),
            (
                "group_norm+silu fused",
                &gn,
                Box::new(|t: &[Tensor]| group_norm_silu(&t[0], 32, &t[1], &t[2], 1e-5)),
            ),
            (
                "layer_norm composed",
                &ln,
                Box::new(|t: &[Tensor]| layer_norm_composed(&t[0], &t[1], Some(&t[2]), 1e-5)),
            ),
            (
                "layer_norm fused",
                &ln,
                Box::new(|t: &[Tensor]| layer_norm(&t[0], &t[1], Some(&t[2]), 1e-5)),
            ),
        ];
        for (name, inputs, f) in &cases {
            let tensors: Vec<Tensor> = inputs.iter().map(|v| v.as_tensor().detach()).collect();
            let fwd = median_ms(9, || f(&tensors).map(|_| ()))?;
            let both = median_ms(9, || forward_backward(inputs, f.as_ref()))?;
            println!("{name:>26}: forward {fwd:8.3} ms, forward+backward {both:8.3} ms");
        }
        Ok(())
    }
}
