//! Fused softmax and log-softmax over the last dimension on f32 CPU tensors, as a candle custom
//! op with its own backward (candle's fused `softmax_last_dim` records none; the composed version
//! makes five passes and allocations forward and as many backward). Rows are split into blocks
//! of roughly equal work, one task each.
//!
//! Backward uses only the output y: softmax dx = y ⊙ (dy − Σ dy ⊙ y); log-softmax
//! dx = dy − exp(y) Σ dy.

use super::fast_exp::exp_in_place;
use super::kernel_io::{cpu_f32, storage_f32};
use super::lanes::{dot, max, sum};
use candle_core::{bail, CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per task: enough to amortise scheduling, small enough to balance two to many cores.
const TASK_ELEMS: usize = 1 << 14;

pub(super) struct SoftmaxOp {
    /// log-softmax instead of softmax.
    log: bool,
}

impl SoftmaxOp {
    pub(super) fn softmax() -> Self {
        Self { log: false }
    }

    pub(super) fn log_softmax() -> Self {
        Self { log: true }
    }
}

fn last_dim(shape: &Shape) -> Result<usize> {
    match shape.dims().last() {
        Some(&d) => Ok(d),
        None => bail!("softmax: the input is a scalar; it needs a last dimension"),
    }
}

fn task_len(dim: usize) -> usize {
    (TASK_ELEMS / dim.max(1)).max(1) * dim
}

impl CustomOp1 for SoftmaxOp {
    fn name(&self) -> &'static str {
        if self.log {
            "log-softmax-last-dim"
        } else {
            "softmax-last-dim"
        }
    }

    fn cpu_fwd(&self, xs: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = layout.shape().clone();
        let x = cpu_f32(xs, layout, "softmax input")?;
        let dim = last_dim(&shape)?;
        let mut out = vec![0f32; x.len()];
        if x.is_empty() {
            return Ok((CpuStorage::F32(out), shape));
        }
        out.par_chunks_mut(task_len(dim))
            .zip(x.par_chunks(task_len(dim)))
            .for_each(|(ob, xb)| {
                for (orow, xrow) in ob.chunks_exact_mut(dim).zip(xb.chunks_exact(dim)) {
                    let m = max(xrow);
                    // A row of −∞ (fully masked) gives NaN, as the composed version does.
                    for (o, &xv) in orow.iter_mut().zip(xrow) {
                        *o = xv - m;
                    }
                    if self.log {
                        let mut exps = orow.to_vec();
                        exp_in_place(&mut exps);
                        let log_sum = sum(&exps).ln();
                        for o in orow.iter_mut() {
                            *o -= log_sum;
                        }
                    } else {
                        exp_in_place(orow);
                        let inv = 1.0 / sum(orow);
                        for o in orow.iter_mut() {
                            *o *= inv;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), shape))
    }

    fn bwd(&self, xs: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if !xs.track_op() {
            return Ok(None);
        }
        let grad = grad.contiguous()?;
        let res = res.contiguous()?;
        let (y_store, y_layout) = res.storage_and_layout();
        let (g_store, g_layout) = grad.storage_and_layout();
        let y = storage_f32(&y_store, y_layout, "softmax output")?;
        let dy = storage_f32(&g_store, g_layout, "softmax gradient")?;
        let dim = last_dim(res.shape())?;
        let mut dx = vec![0f32; y.len()];
        if !y.is_empty() {
            let len = task_len(dim);
            dx.par_chunks_mut(len)
                .zip(y.par_chunks(len))
                .zip(dy.par_chunks(len))
                .for_each(|((dxb, yb), dyb)| {
                    let rows = dxb.chunks_exact_mut(dim).zip(yb.chunks_exact(dim));
                    for ((dxrow, yrow), dyrow) in rows.zip(dyb.chunks_exact(dim)) {
                        if self.log {
                            let total = sum(dyrow);
                            dxrow.copy_from_slice(yrow);
                            exp_in_place(dxrow);
                            for (d, &g) in dxrow.iter_mut().zip(dyrow) {
                                *d = g - *d * total;
                            }
                        } else {
                            let total = dot(dyrow, yrow);
                            for ((d, &g), &yv) in dxrow.iter_mut().zip(dyrow).zip(yrow) {
                                *d = yv * (g - total);
                            }
                        }
                    }
                });
        }
        Ok(Some(Tensor::from_vec(dx, xs.shape(), xs.device())?))
    }
}
