//! Fused layer norm over the last dimension on f32 CPU tensors, as a candle custom op with its
//! own backward (candle's fused `ops::layer_norm` records none; the composed version makes ~7
//! passes and allocations each way). Rows are split into blocks of roughly equal work, one task
//! each: statistics and normalisation per row while it is in cache, (mean, 1/σ) kept for
//! backward; backward computes dx per row and per-block partial Σ dy·x̂ and Σ dy for the weight
//! and bias, summed at the end.

use super::kernel_io::{cpu_f32, storage_f32};
use super::lanes::{dot, sum, sum_sq_dev};
use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Elements per task: enough to amortise scheduling, small enough to balance two to many cores.
const TASK_ELEMS: usize = 1 << 14;

fn rows_per_task(dim: usize) -> usize {
    (TASK_ELEMS / dim.max(1)).max(1)
}

pub(super) struct LayerNormOp {
    eps: f32,
    /// Whether the third operand is a real bias (else zeros with no gradient).
    has_bias: bool,
    /// (mean, 1/σ) per row, from the forward pass.
    stats: OnceLock<Vec<[f32; 2]>>,
}

impl LayerNormOp {
    pub(super) fn new(eps: f64, has_bias: bool) -> Self {
        Self {
            eps: eps as f32,
            has_bias,
            stats: OnceLock::new(),
        }
    }

    fn row_stats(&self, row: &[f32]) -> [f32; 2] {
        let n = row.len() as f32;
        let mean = sum(row) / n;
        let var = sum_sq_dev(row, mean) / n;
        [mean, 1.0 / (var + self.eps).sqrt()]
    }
}

fn last_dim(shape: &Shape, weight_len: usize, bias_len: usize) -> Result<usize> {
    let dim = match shape.dims().last() {
        Some(&d) => d,
        None => bail!("layer_norm: the input is a scalar; it needs a last dimension"),
    };
    if weight_len != dim || bias_len != dim {
        bail!("layer_norm: last dimension {dim}, but weight has {weight_len} values and bias {bias_len}");
    }
    Ok(dim)
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        let x = cpu_f32(xs, xs_layout, "layer_norm input")?;
        let w = cpu_f32(weight, weight_layout, "layer_norm weight")?;
        let bias = cpu_f32(bias, bias_layout, "layer_norm bias")?;
        let dim = last_dim(&shape, w.len(), bias.len())?;
        let mut out = vec![0f32; x.len()];
        if x.is_empty() {
            return Ok((CpuStorage::F32(out), shape));
        }
        let mut stats = vec![[0f32; 2]; x.len() / dim];
        let rows = rows_per_task(dim);
        out.par_chunks_mut(rows * dim)
            .zip(x.par_chunks(rows * dim))
            .zip(stats.par_chunks_mut(rows))
            .for_each(|((ob, xb), sb)| {
                for ((orow, xrow), st) in ob.chunks_exact_mut(dim).zip(xb.chunks_exact(dim)).zip(sb)
                {
                    let [mean, rstd] = self.row_stats(xrow);
                    *st = [mean, rstd];
                    for ((o, &xv), (&wv, &bv)) in orow.iter_mut().zip(xrow).zip(w.iter().zip(bias))
                    {
                        *o = (xv - mean) * rstd * wv + bv;
                    }
                }
            });
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
        let grad = grad.contiguous()?;
        let (x_store, x_layout) = xs.storage_and_layout();
        let (w_store, w_layout) = weight.storage_and_layout();
        let (g_store, g_layout) = grad.storage_and_layout();
        let x = storage_f32(&x_store, x_layout, "layer_norm input")?;
        let w = storage_f32(&w_store, w_layout, "layer_norm weight")?;
        let dy = storage_f32(&g_store, g_layout, "layer_norm gradient")?;
        let dim = last_dim(xs.shape(), w.len(), w.len())?;
        let mut dx = vec![0f32; x.len()];
        let mut dw = vec![0f32; dim];
        let mut db = vec![0f32; dim];
        if !x.is_empty() {
            let recomputed;
            let stats = match self.stats.get() {
                Some(stats) => stats,
                None => {
                    recomputed = x.chunks_exact(dim).map(|r| self.row_stats(r)).collect();
                    &recomputed
                }
            };
            let rows = rows_per_task(dim);
            let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
                .par_chunks_mut(rows * dim)
                .zip(x.par_chunks(rows * dim))
                .zip(dy.par_chunks(rows * dim))
                .zip(stats.par_chunks(rows))
                .map(|(((dxb, xb), dyb), sb)| {
                    let (mut dw_part, mut db_part) = (vec![0f32; dim], vec![0f32; dim]);
                    let rows = dxb.chunks_exact_mut(dim).zip(xb.chunks_exact(dim));
                    for ((dxrow, xrow), (dyrow, &[mean, rstd])) in
                        rows.zip(dyb.chunks_exact(dim).zip(sb))
                    {
                        // With g = dy·w: dx = rstd · (g − mean(g) − x̂ · mean(g x̂)).
                        let n = dim as f32;
                        let m1 = dot(dyrow, w) / n;
                        let mut acc = 0f32;
                        for ((&g, &wv), &xv) in dyrow.iter().zip(w).zip(xrow) {
                            acc += g * wv * (xv - mean);
                        }
                        let m2 = rstd * acc / n;
                        let q = rstd * rstd * m2;
                        for (((d, &g), &wv), &xv) in dxrow.iter_mut().zip(dyrow).zip(w).zip(xrow) {
                            *d = rstd * (g * wv - m1) - q * (xv - mean);
                        }
                        for (((dwv, dbv), &g), &xv) in dw_part
                            .iter_mut()
                            .zip(db_part.iter_mut())
                            .zip(dyrow)
                            .zip(xrow)
                        {
                            *dwv += g * (xv - mean) * rstd;
                            *dbv += g;
                        }
                    }
                    (dw_part, db_part)
                })
                .collect();
            for (dw_part, db_part) in partials {
                for (a, b) in dw.iter_mut().zip(dw_part) {
                    *a += b;
                }
                for (a, b) in db.iter_mut().zip(db_part) {
                    *a += b;
                }
            }
        }
        let dev = xs.device();
        let dx = Tensor::from_vec(dx, xs.shape(), dev)?;
        let dw = Tensor::from_vec(dw, weight.shape(), dev)?;
        let db = Tensor::from_vec(db, bias.shape(), dev)?;
        let keep = |t: &Tensor, g: Tensor| t.track_op().then_some(g);
        let db = if self.has_bias { keep(bias, db) } else { None };
        Ok((keep(xs, dx), keep(weight, dw), db))
    }
}
