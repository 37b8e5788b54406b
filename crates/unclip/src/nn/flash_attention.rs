//! Fused, memory-bounded attention for f32 on the CPU, forward and backward (flash-style).
//!
//! Why our own: composed from candle ops, attention at 64 px materialises a 4096 x 4177 score
//! matrix per head (~70 MB per layer), writes it, exponentiates it and reads it back several
//! times, and its backward keeps all of it alive; that was two thirds of the decoder's forward.
//! Here each thread takes a block of query rows whose scores fit in L2, computes
//! `softmax(q kᵀ·scale + mask) v` for it with `gemm`, and keeps only each row's max and log-sum
//! for the backward, which rebuilds the probabilities block by block instead of storing them.

use super::kernel_io::SharedMut;
use super::simd;
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Device, Layout, Result, Shape, Storage, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;
use std::sync::Mutex;

/// Scores per block: 64 K floats (256 KB) keeps a block and its gemm panels inside a 1 MB L2.
const BLOCK_FLOATS: usize = 64 * 1024;

/// Whether the fused kernel handles these inputs: f32 on the CPU, (B, H, T, D) views whose last
/// dimension is contiguous, and an untracked additive mask that broadcasts to (B, H, Tq, Tk).
pub(crate) fn supports(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> bool {
    let all = [q, k, v];
    if !all
        .iter()
        .all(|t| matches!(t.device(), Device::Cpu) && t.dtype() == DType::F32 && t.rank() == 4)
    {
        return false;
    }
    if !all.iter().all(|t| t.stride()[3] == 1 || t.dims()[3] == 1) {
        return false;
    }
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    let same_bh = qd[0] == kd[0] && qd[1] == kd[1] && kd[..3] == vd[..3] && qd[3] == kd[3];
    if !same_bh || qd[2] == 0 || kd[2] == 0 || qd[3] == 0 || vd[3] == 0 {
        return false;
    }
    match mask {
        None => true,
        Some(m) => {
            m.dtype() == DType::F32
                && matches!(m.device(), Device::Cpu)
                && !m.track_op()
                && m.rank() <= 4
                && broadcast_dims(m.dims(), [qd[0], qd[1], qd[2], kd[2]]).is_some()
        }
    }
}

/// The mask's shape left-padded to 4 dims, if each dim is 1 or matches `target`.
fn broadcast_dims(dims: &[usize], target: [usize; 4]) -> Option<[usize; 4]> {
    let mut out = [1usize; 4];
    out[4 - dims.len()..].copy_from_slice(dims);
    out.iter()
        .zip(target)
        .all(|(&d, t)| d == 1 || d == t)
        .then_some(out)
}

/// softmax(q kᵀ · scale + mask) v for (B, H, T, D) inputs; callers check [`supports`] first.
pub(crate) fn flash_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
) -> Result<Tensor> {
    let (b, h, tq, _) = q.dims4()?;
    let tk = k.dim(2)?;
    let mask = mask.map(|m| Mask::new(m, [b, h, tq, tk])).transpose()?;
    let op = FlashAttention {
        scale: scale as f32,
        mask,
        row_stats: Mutex::new(None),
    };
    // The kernel writes (B, Tq, H, D) so that the usual next step, merging heads, is free.
    q.apply_op3(k, v, op)?.transpose(1, 2)
}

/// An additive mask materialised in its own (broadcast) shape, with zero strides where it
/// broadcasts.
struct Mask {
    values: Vec<f32>,
    strides: [usize; 3],
}

impl Mask {
    fn new(mask: &Tensor, target: [usize; 4]) -> Result<Self> {
        let dims = broadcast_dims(mask.dims(), target).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "attention mask of shape {:?} does not broadcast to {target:?}",
                mask.dims()
            ))
        })?;
        let tk = target[3];
        let full = mask
            .reshape(dims.to_vec())?
            .broadcast_as((dims[0], dims[1], dims[2], tk))?
            .contiguous()?;
        let values = full.flatten_all()?.to_vec1::<f32>()?;
        let stride = |i: usize, size: usize| if dims[i] == 1 { 0 } else { size };
        let strides = [
            stride(0, dims[1] * dims[2] * tk),
            stride(1, dims[2] * tk),
            stride(2, tk),
        ];
        Ok(Self { values, strides })
    }

    fn row(&self, b: usize, h: usize, i: usize, tk: usize) -> &[f32] {
        let start = b * self.strides[0] + h * self.strides[1] + i * self.strides[2];
        &self.values[start..start + tk]
    }
}

struct FlashAttention {
    scale: f32,
    mask: Option<Mask>,
    /// Per query row (B, H, Tq): the max and ln Σ exp of its scores, for the backward.
    row_stats: Mutex<Option<Vec<(f32, f32)>>>,
}

/// A strided (B, H, T, D) view with a contiguous last dimension.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [f32],
    offset: usize,
    strides: [usize; 3],
}

impl<'a> View<'a> {
    fn new(data: &'a [f32], layout: &Layout) -> Self {
        let s = layout.stride();
        Self {
            data,
            offset: layout.start_offset(),
            strides: [s[0], s[1], s[2]],
        }
    }

    fn head(&self, b: usize, h: usize) -> *const f32 {
        let start = self.offset + b * self.strides[0] + h * self.strides[1];
        self.data[start..].as_ptr()
    }
}

fn f32_data<'a>(storage: &'a CpuStorage, what: &str) -> Result<&'a [f32]> {
    match storage {
        CpuStorage::F32(data) => Ok(data),
        other => Err(candle_core::Error::Msg(format!(
            "flash attention takes f32 {what}, got {:?}",
            other.dtype()
        ))),
    }
}

fn rows_per_block(tk: usize, tq: usize) -> usize {
    (BLOCK_FLOATS / tk).clamp(4, 128).min(tq)
}

/// dst (m x n, row stride dst_rs) = beta · lhs (m x k) · rhs (k x n) [+ dst when accumulate].
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    lhs: *const f32,
    lhs_rs: usize,
    lhs_cs: usize,
    rhs: *const f32,
    rhs_rs: usize,
    rhs_cs: usize,
    beta: f32,
    parallelism: Parallelism,
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_rs as isize,
        accumulate,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        1.0,
        beta,
        false,
        false,
        false,
        parallelism,
    )
}

fn gemm_parallelism(outer_tasks: usize) -> Parallelism {
    let threads = rayon::current_num_threads();
    if outer_tasks >= threads || threads == 1 {
        Parallelism::None
    } else {
        Parallelism::Rayon(threads)
    }
}

impl FlashAttention {
    /// Scores of query rows `i0..i0+rows` of head (b, h) into `scores` (rows x tk), scaled and
    /// masked.
    #[allow(clippy::too_many_arguments)]
    fn scores(
        &self,
        q: View,
        k: View,
        (b, h, i0, rows): (usize, usize, usize, usize),
        (tk, d): (usize, usize),
        scores: &mut [f32],
        parallelism: Parallelism,
    ) {
        // SAFETY: q rows i0..i0+rows and k rows 0..tk of head (b, h) lie inside their storages
        // (checked by the layouts), and `scores` holds rows * tk floats.
        unsafe {
            matmul(
                rows,
                tk,
                d,
                scores.as_mut_ptr(),
                tk,
                false,
                q.head(b, h).add(i0 * q.strides[2]),
                q.strides[2],
                1,
                k.head(b, h),
                1,
                k.strides[2],
                self.scale,
                parallelism,
            );
        }
        if let Some(mask) = &self.mask {
            for (r, row) in scores.chunks_exact_mut(tk).enumerate() {
                for (s, m) in row.iter_mut().zip(mask.row(b, h, i0 + r, tk)) {
                    *s += m;
                }
            }
        }
    }
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        qs: &CpuStorage,
        ql: &Layout,
        ks: &CpuStorage,
        kl: &Layout,
        vs: &CpuStorage,
        vl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (q, k, v) = (
            View::new(f32_data(qs, "queries")?, ql),
            View::new(f32_data(ks, "keys")?, kl),
            View::new(f32_data(vs, "values")?, vl),
        );
        let (qd, kd, vd) = (ql.dims(), kl.dims(), vl.dims());
        let (b, h, tq, d) = (qd[0], qd[1], qd[2], qd[3]);
        let (tk, dv) = (kd[2], vd[3]);
        let rows = rows_per_block(tk, tq);
        let blocks = tq.div_ceil(rows);
        let tasks = b * h * blocks;
        let parallelism = gemm_parallelism(tasks);

        let mut out = vec![0f32; b * tq * h * dv];
        let mut stats = vec![(0f32, 0f32); b * h * tq];
        let out_ptr = SharedMut(out.as_mut_ptr());
        let stats_ptr = SharedMut(stats.as_mut_ptr() as *mut f32);
        (0..tasks).into_par_iter().with_max_len(1).for_each_init(
            || vec![0f32; rows * tk],
            |scores, task| {
                let (bh, block) = (task / blocks, task % blocks);
                let (bi, hi) = (bh / h, bh % h);
                let i0 = block * rows;
                let n = rows.min(tq - i0);
                let scores = &mut scores[..n * tk];
                self.scores(q, k, (bi, hi, i0, n), (tk, d), scores, parallelism);
                // SAFETY: task (b, h, block) alone writes stats rows i0..i0+n of head (b, h).
                let stats = unsafe {
                    std::slice::from_raw_parts_mut(
                        (stats_ptr.get() as *mut (f32, f32)).add(bh * tq + i0),
                        n,
                    )
                };
                for (row, stat) in scores.chunks_exact_mut(tk).zip(stats.iter_mut()) {
                    *stat = simd::softmax_in_place(row);
                }
                // Output (B, Tq, H, Dv): row i of head (b, h) at ((b·Tq + i)·H + h)·Dv.
                // SAFETY: this task alone writes those rows; p (n x tk) and v (tk x dv) are in
                // bounds.
                unsafe {
                    matmul(
                        n,
                        dv,
                        tk,
                        out_ptr.get().add(((bi * tq + i0) * h + hi) * dv),
                        h * dv,
                        false,
                        scores.as_ptr(),
                        tk,
                        1,
                        v.head(bi, hi),
                        v.strides[2],
                        1,
                        1.0,
                        parallelism,
                    );
                }
            },
        );
        if let Ok(mut saved) = self.row_stats.lock() {
            *saved = Some(stats);
        }
        Ok((CpuStorage::F32(out), Shape::from((b, tq, h, dv))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let stats = self
            .row_stats
            .lock()
            .map_err(|_| candle_core::Error::Msg("flash attention statistics poisoned".into()))?
            .clone()
            .ok_or_else(|| {
                candle_core::Error::Msg("flash attention backward before forward".into())
            })?;
        let grad_out = grad_out.contiguous()?; // (B, Tq, H, Dv)
        let out = out.contiguous()?;
        let (b, h, tq, d) = q.dims4()?;
        let (tk, dv) = (k.dim(2)?, v.dim(3)?);

        let (qs, ql) = q.storage_and_layout();
        let (ks, kl) = k.storage_and_layout();
        let (vs, vl) = v.storage_and_layout();
        let (os, ol) = out.storage_and_layout();
        let (gs, gl) = grad_out.storage_and_layout();
        let (qc, kc, vc, oc, gc) = match (&*qs, &*ks, &*vs, &*os, &*gs) {
            (
                Storage::Cpu(q),
                Storage::Cpu(k),
                Storage::Cpu(v),
                Storage::Cpu(o),
                Storage::Cpu(g),
            ) => (q, k, v, o, g),
            _ => {
                return Err(candle_core::Error::Msg(
                    "flash attention runs on the CPU".into(),
                ))
            }
        };
        let q = View::new(f32_data(qc, "queries")?, ql);
        let k = View::new(f32_data(kc, "keys")?, kl);
        let v = View::new(f32_data(vc, "values")?, vl);
        let o = &f32_data(oc, "outputs")?[ol.start_offset()..];
        let go = &f32_data(gc, "output gradients")?[gl.start_offset()..];

        let rows = rows_per_block(tk, tq);
        let parallelism = gemm_parallelism(b * h);
        let mut dq = vec![0f32; b * h * tq * d];
        let mut dk = vec![0f32; b * h * tk * d];
        let mut dv_grad = vec![0f32; b * h * tk * dv];
        let dq_ptr = SharedMut(dq.as_mut_ptr());
        let dk_ptr = SharedMut(dk.as_mut_ptr());
        let dv_ptr = SharedMut(dv_grad.as_mut_ptr());
        (0..b * h).into_par_iter().with_max_len(1).for_each_init(
            || (vec![0f32; rows * tk], vec![0f32; rows * tk]),
            |(probs, dprobs), bh| {
                let (bi, hi) = (bh / h, bh % h);
                // Row i of the (B, Tq, H, Dv) output and its gradient.
                let out_row = |src: &[f32], i: usize| -> *const f32 {
                    src[((bi * tq + i) * h + hi) * dv..].as_ptr()
                };
                let mut i0 = 0;
                while i0 < tq {
                    let n = rows.min(tq - i0);
                    let probs = &mut probs[..n * tk];
                    let dprobs = &mut dprobs[..n * tk];
                    self.scores(q, k, (bi, hi, i0, n), (tk, d), probs, parallelism);
                    for (r, row) in probs.chunks_exact_mut(tk).enumerate() {
                        let (max, ln_sum) = stats[bh * tq + i0 + r];
                        simd::exp_shifted_in_place(row, max, ln_sum);
                    }
                    // SAFETY: head (b, h) is written only by this task: dq rows i0..i0+n, all of
                    // its dk and dv; reads stay inside the views checked above.
                    unsafe {
                        let go_block = out_row(go, i0);
                        // dV += Pᵀ dO
                        matmul(
                            tk,
                            dv,
                            n,
                            dv_ptr.get().add(bh * tk * dv),
                            dv,
                            true,
                            probs.as_ptr(),
                            1,
                            tk,
                            go_block,
                            h * dv,
                            1,
                            1.0,
                            parallelism,
                        );
                        // dP = dO Vᵀ
                        matmul(
                            n,
                            tk,
                            dv,
                            dprobs.as_mut_ptr(),
                            tk,
                            false,
                            go_block,
                            h * dv,
                            1,
                            v.head(bi, hi),
                            1,
                            v.strides[2],
                            1.0,
                            parallelism,
                        );
                    }
                    for (r, (p, dp)) in probs
                        .chunks_exact(tk)
                        .zip(dprobs.chunks_exact_mut(tk))
                        .enumerate()
                    {
                        let i = i0 + r;
                        let at = ((bi * tq + i) * h + hi) * dv;
                        let row_dot = simd::dot(&go[at..at + dv], &o[at..at + dv]);
                        simd::softmax_grad_in_place(p, dp, row_dot);
                    }
                    unsafe {
                        // dQ = scale · dS K
                        matmul(
                            n,
                            d,
                            tk,
                            dq_ptr.get().add((bh * tq + i0) * d),
                            d,
                            false,
                            dprobs.as_ptr(),
                            tk,
                            1,
                            k.head(bi, hi),
                            k.strides[2],
                            1,
                            self.scale,
                            parallelism,
                        );
                        // dK += scale · dSᵀ Q
                        matmul(
                            tk,
                            d,
                            n,
                            dk_ptr.get().add(bh * tk * d),
                            d,
                            true,
                            dprobs.as_ptr(),
                            1,
                            tk,
                            q.head(bi, hi).add(i0 * q.strides[2]),
                            q.strides[2],
                            1,
                            self.scale,
                            parallelism,
                        );
                    }
                    i0 += n;
                }
            },
        );
        let device = Device::Cpu;
        let grad = |data: Vec<f32>, t: usize, dim: usize| -> Result<Tensor> {
            Tensor::from_vec(data, (b, h, t, dim), &device)
        };
        Ok((
            Some(grad(dq, tq, d)?),
            Some(grad(dk, tk, d)?),
            Some(grad(dv_grad, tk, dv)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::attention::reference_attention;
    use crate::nn::{causal_mask, padding_mask};
    use candle_core::Var;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .and_then(|d| d.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>())
            .unwrap_or(f32::INFINITY)
    }

    /// Forward and all three gradients of the kernel against the composed attention.
    fn check(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Result<()> {
        assert!(supports(q, k, v, mask));
        let (qv, kv, vv) = (
            Var::from_tensor(q)?,
            Var::from_tensor(k)?,
            Var::from_tensor(v)?,
        );
        let weights = Tensor::randn(
            0f32,
            1.,
            (q.dim(0)?, q.dim(1)?, q.dim(2)?, v.dim(3)?),
            q.device(),
        )?;
        let fused = flash_attention(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), mask, 0.37)?;
        let reference =
            reference_attention(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), mask, 0.37)?;
        assert!(
            max_diff(&fused, &reference) < 1e-5,
            "forward {}",
            max_diff(&fused, &reference)
        );
        let g_fused = (fused * &weights)?.sum_all()?.backward()?;
        let g_ref = (reference * &weights)?.sum_all()?.backward()?;
        for (name, var) in [("q", &qv), ("k", &kv), ("v", &vv)] {
            let a = g_fused.get(var).expect("fused gradient");
            let b = g_ref.get(var).expect("reference gradient");
            let scale = b.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1.0);
            let diff = max_diff(a, b) / scale;
            assert!(diff < 2e-5, "grad {name}: {diff}");
        }
        Ok(())
    }

    #[test]
    fn matches_reference_unmasked_with_odd_sizes() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 37, 5), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 3, 29, 5), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 3, 29, 7), &dev)?;
        check(&q, &k, &v, None)
    }

    #[test]
    fn matches_reference_on_long_rows_split_into_blocks() -> Result<()> {
        let dev = Device::Cpu;
        // 4100 keys: 15 query rows per block, so 300 queries take 20 blocks.
        let q = Tensor::randn(0f32, 1., (1, 2, 300, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (1, 2, 4100, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (1, 2, 4100, 8), &dev)?;
        check(&q, &k, &v, None)
    }

    #[test]
    fn matches_reference_on_strided_head_views() -> Result<()> {
        let dev = Device::Cpu;
        // (B, T, H, D) projections viewed as (B, H, T, D), as the models produce them.
        let view = |t: usize| -> Result<Tensor> {
            Tensor::randn(0f32, 1., (2, t, 4, 6), &dev)?.transpose(1, 2)
        };
        let (q, k, v) = (view(11)?, view(13)?, view(13)?);
        assert!(!q.is_contiguous());
        check(&q, &k, &v, None)
    }

    #[test]
    fn matches_reference_with_causal_and_padding_masks() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 2, 9, 4), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 2, 9, 4), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 2, 9, 4), &dev)?;
        check(&q, &k, &v, Some(&causal_mask(9, DType::F32, &dev)?))?;
        // The second sequence masks every key: its rows become uniform, as in the reference.
        let keep = Tensor::from_vec(
            [vec![1f32; 6], vec![0f32; 3], vec![0f32; 9]].concat(),
            (2, 9),
            &dev,
        )?;
        check(&q, &k, &v, Some(&padding_mask(&keep, DType::F32)?))
    }

    #[test]
    fn a_mask_that_does_not_broadcast_is_rejected() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (1, 2, 4, 4), &dev)?;
        let mask = Tensor::zeros((1, 1, 3, 5), DType::F32, &dev)?;
        assert!(!supports(&q, &q, &q, Some(&mask)));
        let err = flash_attention(&q, &q, &q, Some(&mask), 1.0).map(|_| ());
        assert!(err.is_err_and(|e| e.to_string().contains("does not broadcast")));
        Ok(())
    }
}
