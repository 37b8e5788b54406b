//! 2x spatial resampling for U-Nets: nearest-neighbour upsampling and 2x2 average pooling.
//!
//! candle's `upsample_nearest2d` backward *overwrites* the gradient already accumulated for its
//! input instead of adding to it (candle-core 0.11.1 `backprop.rs`, `Op::UpsampleNearest2D`), and
//! `avg_pool2d` backward mishandles odd sizes. A ResNet block that upsamples both its input and
//! its normalised branch would silently lose gradient. So on f32 CPU tensors both run as custom
//! ops of their own, each the other's backward (spreading each pixel over a 2x2 block, summing
//! each 2x2 block), split over image planes; elsewhere they are built from reshape, broadcast
//! and sum, whose backward is right but slow on the CPU (the broadcast's gradient is summed
//! element by element on one thread: ~1% of a 2-thread decoder training step).

use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::kernel_io::cpu_f32;

/// Planes (one channel of one image) per parallel task at least: small maps are not worth
/// splitting finely.
const MIN_PLANE_FLOATS: usize = 1 << 14;

fn own_kernel(xs: &Tensor) -> bool {
    matches!(xs.device(), Device::Cpu) && xs.dtype() == DType::F32
}

/// Nearest-neighbour 2x upsampling of (B, C, H, W) to (B, C, 2H, 2W), as
/// `F.interpolate(x, scale_factor=2.0, mode="nearest")`.
pub fn upsample_nearest_2x(xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    if own_kernel(xs) {
        let op = Spread {
            scale: 1.0,
            h,
            w,
            out_h: 2 * h,
            out_w: 2 * w,
        };
        return xs.contiguous()?.apply_op1(op);
    }
    upsample_composed(xs)
}

fn upsample_composed(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    xs.reshape((b, c, h, 1, w, 1))?
        .broadcast_as((b, c, h, 2, w, 2))?
        .reshape((b, c, 2 * h, 2 * w))
}

/// 2x2 average pooling with stride 2 of (B, C, H, W) to (B, C, H/2, W/2), as
/// `nn.AvgPool2d(kernel_size=2, stride=2)`: an odd last row or column is dropped.
pub fn avg_pool_2x(xs: &Tensor) -> Result<Tensor> {
    let (_, _, h, w) = xs.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
    if oh == 0 || ow == 0 {
        candle_core::bail!("avg_pool_2x: input {h}x{w} is too small to halve");
    }
    if own_kernel(xs) {
        let op = BlockSum {
            scale: 0.25,
            h,
            w,
            out_h: oh,
            out_w: ow,
        };
        return xs.contiguous()?.apply_op1(op);
    }
    avg_pool_composed(xs)
}

fn avg_pool_composed(xs: &Tensor) -> Result<Tensor> {
    let (b, c, h, w) = xs.dims4()?;
    let (oh, ow) = (h / 2, w / 2);
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

/// The planes of a (B, C, H, W) layout and their count.
fn planes(layout: &Layout) -> Result<(usize, usize, usize)> {
    let (b, c, h, w) = layout.shape().dims4()?;
    Ok((b * c, h, w))
}

/// Each input pixel times `scale` over a 2x2 block of an (out_h, out_w) plane; rows and
/// columns past 2h x 2w stay zero.
#[derive(Clone, Copy)]
struct Spread {
    scale: f32,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
}

impl CustomOp1 for Spread {
    fn name(&self) -> &'static str {
        "unclip-spread-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(storage, layout, "upsample input")?;
        let (n, h, w) = planes(layout)?;
        if (h, w) != (self.h, self.w) {
            candle_core::bail!(
                "spread 2x: planes of {h}x{w}, expected {}x{}",
                self.h,
                self.w
            );
        }
        let (out_h, out_w) = (self.out_h, self.out_w);
        let mut out = vec![0f32; n * out_h * out_w];
        let min_planes = MIN_PLANE_FLOATS.div_ceil((out_h * out_w).max(1));
        out.par_chunks_mut(out_h * out_w)
            .zip(x.par_chunks(h * w))
            .with_min_len(min_planes)
            .for_each(|(out, x)| {
                for (r, row) in x.chunks_exact(w).enumerate() {
                    let top = &mut out[2 * r * out_w..(2 * r + 1) * out_w];
                    for (pair, &v) in top.chunks_exact_mut(2).zip(row) {
                        pair.fill(v * self.scale);
                    }
                    out.copy_within(2 * r * out_w..(2 * r + 1) * out_w, (2 * r + 1) * out_w);
                }
            });
        let (b, c, _, _) = layout.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((b, c, out_h, out_w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let sum = BlockSum {
            scale: self.scale,
            h: self.out_h,
            w: self.out_w,
            out_h: self.h,
            out_w: self.w,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&sum)?))
    }
}

/// Each 2x2 block of the top-left 2·out_h x 2·out_w of an (h, w) plane, summed and times
/// `scale`.
#[derive(Clone, Copy)]
struct BlockSum {
    scale: f32,
    h: usize,
    w: usize,
    out_h: usize,
    out_w: usize,
}

impl CustomOp1 for BlockSum {
    fn name(&self) -> &'static str {
        "unclip-block-sum-2x"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = cpu_f32(storage, layout, "pooling input")?;
        let (n, h, w) = planes(layout)?;
        if (h, w) != (self.h, self.w) {
            candle_core::bail!(
                "block sum 2x: planes of {h}x{w}, expected {}x{}",
                self.h,
                self.w
            );
        }
        let (out_h, out_w) = (self.out_h, self.out_w);
        let mut out = vec![0f32; n * out_h * out_w];
        let min_planes = MIN_PLANE_FLOATS.div_ceil((h * w).max(1));
        out.par_chunks_mut(out_h * out_w)
            .zip(x.par_chunks(h * w))
            .with_min_len(min_planes)
            .for_each(|(out, x)| {
                for (r, out_row) in out.chunks_exact_mut(out_w).enumerate() {
                    let top = &x[2 * r * w..2 * r * w + 2 * out_w];
                    let bottom = &x[(2 * r + 1) * w..(2 * r + 1) * w + 2 * out_w];
                    for ((o, t), b) in out_row
                        .iter_mut()
                        .zip(top.chunks_exact(2))
                        .zip(bottom.chunks_exact(2))
                    {
                        // Rows first, as the composed version summed: the pipeline parity
                        // case amplifies one ulp at t = 999 (tests/suite/parity_pipeline.rs).
                        *o = ((t[0] + t[1]) + (b[0] + b[1])) * self.scale;
                    }
                }
            });
        let (b, c, _, _) = layout.shape().dims4()?;
        Ok((CpuStorage::F32(out), Shape::from((b, c, out_h, out_w))))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let spread = Spread {
            scale: self.scale,
            h: self.out_h,
            w: self.out_w,
            out_h: self.h,
            out_w: self.w,
        };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&spread)?))
    }
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

    /// The own ops against the compositions, forward and backward, odd sizes included, with
    /// enough planes to split across threads.
    #[test]
    fn own_ops_match_the_compositions() -> Result<()> {
        let dev = Device::Cpu;
        for (b, c, h, w) in [(2, 3, 5, 7), (2, 64, 16, 16), (1, 1, 1, 1)] {
            let n = b * c * h * w;
            let data: Vec<f32> = (0..n)
                .map(|i| ((i * 37) % 101) as f32 / 50.0 - 1.0)
                .collect();
            let x = Var::from_vec(data, (b, c, h, w), &dev)?;
            let weight_like = |t: &Tensor| -> Result<Tensor> {
                let n = t.elem_count();
                let v: Vec<f32> = (0..n).map(|i| ((i * 13) % 29) as f32 - 14.0).collect();
                Tensor::from_vec(v, t.dims(), &dev)
            };
            type Op = fn(&Tensor) -> Result<Tensor>;
            let mut pairs: Vec<(&str, Op, Op)> =
                vec![("upsample", upsample_nearest_2x, upsample_composed)];
            if h >= 2 && w >= 2 {
                pairs.push(("avg_pool", avg_pool_2x, avg_pool_composed));
            }
            for (name, own, composed) in pairs {
                let y = own(x.as_tensor())?;
                let y_ref = composed(x.as_tensor())?;
                let diff = (&y - &y_ref)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(
                    diff < 1e-6,
                    "{name} {b}x{c}x{h}x{w}: forward differs by {diff}"
                );
                let probe = weight_like(&y)?;
                let g = (&y * &probe)?.sum_all()?.backward()?;
                let g_ref = (&y_ref * &probe)?.sum_all()?.backward()?;
                let (g, g_ref) = (
                    g.get(x.as_tensor()).expect("gradient"),
                    g_ref.get(x.as_tensor()).expect("reference gradient"),
                );
                let diff = (g - g_ref)?
                    .abs()?
                    .flatten_all()?
                    .max(0)?
                    .to_scalar::<f32>()?;
                assert!(
                    diff < 1e-5,
                    "{name} {b}x{c}x{h}x{w}: gradient differs by {diff}"
                );
            }
        }
        Ok(())
    }
}
