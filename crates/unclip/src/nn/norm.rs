//! Layer norm and group norm from differentiable primitives (see the module note in `nn`).
//! Statistics are computed as PyTorch does: biased variance, eps added inside the square root.

use candle_core::{DType, Result, Tensor, D};
use candle_nn::{Init, VarBuilder};

/// Normalises over the last dimension: (x - mean) / sqrt(var + eps) * weight + bias.
pub fn layer_norm(xs: &Tensor, weight: &Tensor, bias: Option<&Tensor>, eps: f64) -> Result<Tensor> {
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

/// Group norm over (B, C, ...) with a per-channel affine transform.
pub fn group_norm(
    xs: &Tensor,
    num_groups: usize,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    let dims = xs.dims().to_vec();
    if dims.len() < 2 || !dims[1].is_multiple_of(num_groups) {
        candle_core::bail!(
            "group_norm: {} channels cannot be split into {num_groups} groups (input {dims:?})",
            dims.get(1).copied().unwrap_or(0)
        );
    }
    let batch = dims[0];
    let channels = dims[1];
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
        Ok(())
    }
}
