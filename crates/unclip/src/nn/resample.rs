//! 2x spatial resampling for U-Nets, from primitives that record a correct backward op.
//!
//! candle's `upsample_nearest2d` backward *overwrites* the gradient already accumulated for its
//! input instead of adding to it (candle-core 0.11.1 `backprop.rs`, `Op::UpsampleNearest2D`), and
//! `avg_pool2d` backward mishandles odd sizes. A ResNet block that upsamples both its input and
//! its normalised branch would silently lose gradient, so these ops use reshape, broadcast and
//! sum instead.

use candle_core::{Result, Tensor};

/// Nearest-neighbour 2x upsampling of (B, C, H, W) to (B, C, 2H, 2W), as
/// `F.interpolate(x, scale_factor=2.0, mode="nearest")`.
pub fn upsample_nearest_2x(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    xs.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// 2x2 average pooling with stride 2 of (B, C, H, W) to (B, C, H/2, W/2), as
/// `nn.AvgPool2d(kernel_size=2, stride=2)`: an odd last row or column is dropped.
pub fn avg_pool_2x(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    if oh == 0 || ow == 0 {
        candle_core::bail!("avg_pool_2x: input {h}x{w} is too small to halve");
    }
    let xs = if h % 2 == 1 || w % 2 == 1 {
        xs.narrow(2, 0, 2 * oh)?.narrow(3, 0, 2 * ow)?
    } else {
        xs.clone()
    };
    let pooled = xs
        .reshape((b, c, oh, 2, ow, 2))?
        .sum(5)? // (B, C, oh, 2, ow)
        .sum(3)?; // (B, C, oh, ow)
    pooled * 0.25
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn upsample_repeats_each_pixel_and_sums_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_vec(vec![1f32, 2., 3., 4.], (1, 1, 2, 2), &dev)?;
        let y = upsample_nearest_2x(x.as_tensor())?;
        assert_eq!(
            y.flatten_all()?.to_vec1::<f32>()?,
            [1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.]
        );
        // Two consumers of x: the gradient must be the sum (4 from the upsample, 1 from x itself).
        let loss = (y.sum_all()? + x.as_tensor().sum_all()?)?;
        let grads = loss.backward()?;
        let g = grads.get(x.as_tensor()).expect("gradient").flatten_all()?;
        assert_eq!(g.to_vec1::<f32>()?, [5., 5., 5., 5.]);
        Ok(())
    }

    #[test]
    fn avg_pool_averages_blocks_and_drops_odd_edges() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f32, 15., &dev)?.reshape((1, 1, 3, 5))?)?;
        let y = avg_pool_2x(x.as_tensor())?;
        // Rows 0-1, columns 0-1 and 2-3 of [[0..5], [5..10]].
        assert_eq!(y.flatten_all()?.to_vec1::<f32>()?, [3.0, 5.0]);
        let grads = y.sum_all()?.backward()?;
        let g = grads
            .get(x.as_tensor())
            .expect("gradient")
            .squeeze(0)?
            .to_vec3::<f32>()?;
        assert_eq!(g[0][0], [0.25, 0.25, 0.25, 0.25, 0.0]);
        assert_eq!(g[0][2], [0.0; 5]);
        Ok(())
    }
}
