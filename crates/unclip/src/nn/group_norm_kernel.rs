//! Fused group norm (optionally followed by SiLU) on f32 CPU tensors, as a candle custom op with
//! its own backward.
//!
//! Why not the composed version: it makes ~8 passes over the activation, each allocating a
//! tensor, and as many again in backward; in a U-Net training step that was a large share of the
//! time. Here each (batch, group) block, contiguous in (B, C, spatial) layout and small enough to
//! stay in cache, is normalised by one task: the statistics (two passes over cached data, exact
//! rather than E[x²] − E[x]²), then one pass writing x̂ · w + b (and SiLU). The per-block mean and
//! 1/σ are kept for backward, which makes two passes: per-channel Σ dz·x̂ and Σ dz (dz = dy, or
//! dy · silu'(z) with z recomputed), then dx = σ⁻¹ (w dz − mean(w dz) − x̂ mean(w dz x̂)).
//!
//! The affine weight and bias are per (batch, channel) here, so the U-Net's scale-shift
//! modulation GroupNorm(h)·(1 + s) + t folds into them; plain group norm broadcasts its
//! per-channel weights over the batch (the broadcast's backward sums the gradient back).

use super::fast_exp::{silu_backward_in_place, silu_in_place};
use super::kernel_io::{cpu_f32, storage_f32};
use super::lanes::{dot_centered, sum, sum_sq_dev};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// (B, C, S): batch, channels, product of the spatial dims.
fn split_dims(shape: &Shape, groups: usize) -> Result<(usize, usize, usize)> {
    let dims = shape.dims();
    if dims.len() < 2 || groups == 0 || !dims[1].is_multiple_of(groups) {
        bail!(
            "group_norm: {} channels cannot be split into {groups} groups (input {dims:?})",
            dims.get(1).copied().unwrap_or(0)
        );
    }
    Ok((dims[0], dims[1], dims[2..].iter().product()))
}

pub(super) struct GroupNormOp {
    groups: usize,
    eps: f32,
    silu: bool,
    /// (mean, 1/σ) per (batch, group), from the forward pass.
    stats: OnceLock<Vec<[f32; 2]>>,
}

impl GroupNormOp {
    pub(super) fn new(groups: usize, eps: f64, silu: bool) -> Self {
        Self {
            groups,
            eps: eps as f32,
            silu,
            stats: OnceLock::new(),
        }
    }

    fn statistics(&self, x: &[f32], block: usize) -> Vec<[f32; 2]> {
        x.par_chunks(block)
            .map(|xb| {
                let n = xb.len() as f32;
                let mean = sum(xb) / n;
                let var = sum_sq_dev(xb, mean) / n;
                [mean, 1.0 / (var + self.eps).sqrt()]
            })
            .collect()
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        if self.silu {
            "group-norm-silu"
        } else {
            "group-norm"
        }
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_layout: &Layout,
        weight: &CpuStorage,
        weight_layout: &Layout,
        bias: &CpuStorage,
        bias_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = xs_layout.shape().clone();
        let (b, c, s) = split_dims(&shape, self.groups)?;
        let x = cpu_f32(xs, xs_layout, "group_norm input")?;
        let w = cpu_f32(weight, weight_layout, "group_norm weight")?;
        let bias = cpu_f32(bias, bias_layout, "group_norm bias")?;
        if w.len() != b * c || bias.len() != b * c {
            bail!(
                "group_norm: weight and bias need {b}x{c} (batch x channel) values, got {} and {}",
                w.len(),
                bias.len()
            );
        }
        let mut out = vec![0f32; x.len()];
        if x.is_empty() {
            return Ok((CpuStorage::F32(out), shape));
        }
        let cg = c / self.groups;
        let block = cg * s;
        let stats = self.statistics(x, block);
        out.par_chunks_mut(block)
            .zip(x.par_chunks(block))
            .zip(&stats)
            .enumerate()
            .for_each(|(i, ((ob, xb), &[mean, rstd]))| {
                let first = i * cg; // = batch · C + group · cg
                let (wb, bb) = (&w[first..first + cg], &bias[first..first + cg]);
                for (ch, (orow, xrow)) in ob.chunks_exact_mut(s).zip(xb.chunks_exact(s)).enumerate()
                {
                    let scale = rstd * wb[ch];
                    let shift = bb[ch] - mean * scale;
                    for (o, &xv) in orow.iter_mut().zip(xrow) {
                        *o = xv * scale + shift;
                    }
                    if self.silu {
                        silu_in_place(orow);
                    }
                }
            });
        // A second forward of the same op instance recomputes identical values; ignore it.
        let _ = self.stats.set(stats);
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, c, s) = split_dims(xs.shape(), self.groups)?;
        let cg = c / self.groups;
        let block = cg * s;
        let mut dx = vec![0f32; xs.elem_count()];
        let mut dw = vec![0f32; b * c];
        let mut db = vec![0f32; b * c];
        if block > 0 {
            let grad = grad.contiguous()?;
            let (x_store, x_layout) = xs.storage_and_layout();
            let (w_store, w_layout) = weight.storage_and_layout();
            let (b_store, b_layout) = bias.storage_and_layout();
            let (g_store, g_layout) = grad.storage_and_layout();
            let x = storage_f32(&x_store, x_layout, "group_norm input")?;
            let w = storage_f32(&w_store, w_layout, "group_norm weight")?;
            let bias = storage_f32(&b_store, b_layout, "group_norm bias")?;
            let dy = storage_f32(&g_store, g_layout, "group_norm gradient")?;
            let recomputed;
            let stats = match self.stats.get() {
                Some(stats) => stats,
                None => {
                    recomputed = self.statistics(x, block);
                    &recomputed
                }
            };
            dx.par_chunks_mut(block)
                .zip(x.par_chunks(block))
                .zip(dy.par_chunks(block))
                .zip(dw.par_chunks_mut(cg).zip(db.par_chunks_mut(cg)))
                .zip(stats)
                .enumerate()
                .for_each(|(i, ((((dxb, xb), dyb), (dwb, dbb)), &[mean, rstd]))| {
                    let first = i * cg;
                    let (wb, bb) = (&w[first..first + cg], &bias[first..first + cg]);
                    // Pass 1: dz (kept in dx when SiLU changes it) and the per-channel sums.
                    let (mut sum_wdz, mut sum_wdz_xhat) = (0f32, 0f32);
                    for ch in 0..cg {
                        let range = ch * s..(ch + 1) * s;
                        let (xrow, dyrow) = (&xb[range.clone()], &dyb[range.clone()]);
                        let dz_row: &[f32] = if self.silu {
                            let zrow = &mut dxb[range];
                            let scale = rstd * wb[ch];
                            let shift = bb[ch] - mean * scale;
                            for (z, &xv) in zrow.iter_mut().zip(xrow) {
                                *z = xv * scale + shift;
                            }
                            silu_backward_in_place(zrow, dyrow);
                            zrow
                        } else {
                            dyrow
                        };
                        let sum_dz = sum(dz_row);
                        let sum_dz_xhat = rstd * dot_centered(dz_row, xrow, mean);
                        dwb[ch] = sum_dz_xhat;
                        dbb[ch] = sum_dz;
                        sum_wdz += wb[ch] * sum_dz;
                        sum_wdz_xhat += wb[ch] * sum_dz_xhat;
                    }
                    // Pass 2: dx = rstd · (w dz − m1 − x̂ m2) = p · dz − q · x + r per channel.
                    let n = block as f32;
                    let (m1, m2) = (sum_wdz / n, sum_wdz_xhat / n);
                    let q = rstd * rstd * m2;
                    let r = mean * q - rstd * m1;
                    let rows = dxb.chunks_exact_mut(s).zip(xb.chunks_exact(s));
                    for ((dxrow, xrow), (dyrow, &wv)) in rows.zip(dyb.chunks_exact(s).zip(wb)) {
                        let p = rstd * wv;
                        if self.silu {
                            for (d, &xv) in dxrow.iter_mut().zip(xrow) {
                                *d = p * *d - q * xv + r;
                            }
                        } else {
                            for ((d, &xv), &g) in dxrow.iter_mut().zip(xrow).zip(dyrow) {
                                *d = p * g - q * xv + r;
                            }
                        }
                    }
                });
        }
        let dev = xs.device();
        let dx = Tensor::from_vec(dx, xs.shape(), dev)?;
        let dw = Tensor::from_vec(dw, weight.shape(), dev)?;
        let db = Tensor::from_vec(db, bias.shape(), dev)?;
        let keep = |t: &Tensor, g: Tensor| t.track_op().then_some(g);
        Ok((keep(xs, dx), keep(weight, dw), keep(bias, db)))
    }
}
