//! 2-D convolution for f32 on the CPU: im2col + gemm forward, and a backward of its own.
//!
//! Why not candle's `conv2d`: in candle-core 0.11 its CPU forward is a slow direct loop or an
//! im2col that materialises the whole column matrix for the batch, and its backward is built
//! from a `conv_transpose2d` (for the input) and a second `conv2d` over transposed tensors (for
//! the weight), which together were one of the largest costs of a decoder training step. Here the
//! forward is one gemm per image (`W · im2col(x)`; a 1x1 stride-1 convolution multiplies the image
//! directly), with the bias written into the output before the gemm accumulates into it, and the
//! backward computes exactly what it needs: `dX = col2im(Wᵀ · dY)` only when the input carries a
//! gradient, `dW = Σ_batch dY · colsᵀ` and `db = Σ dY`. The column matrix is built for blocks of
//! output rows so it stays small (cache-sized and bounded on large images), in per-thread scratch
//! buffers reused across calls. Images run one at a time, each gemm and im2col split across the
//! threads; only tiny products run whole images in parallel. Other dtypes and devices use
//! candle's convolution.
//!
//! On AVX-512 CPUs faster kernels take what they cover, first match wins (`conv_forward`):
//! bf16 products for inference under `MatmulPrecision::Bf16` (`conv_bf16`), Winograd F(2x2, 3x3)
//! for 3x3 stride-1 convolutions (`conv_winograd`, also the input gradient), and the direct
//! kernel for stride-1 convolutions with whole 32-pixel rows (`conv_gemm`); im2col + gemm does
//! the rest. A loaded layer keeps each kernel's packing of its weights (`packed_weights`).

use super::kernel_io::{cpu_gradient, gradients_side_by_side, storage_f32};
use super::matmul::{gemm_parallelism, matmul, threads, View};
use super::packed_weights::PackedWeights;
use super::precision::{float32_matmul_precision, MatmulPrecision};
use super::{conv_bf16, conv_gemm, conv_weight_grad, conv_winograd};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Module};
use candle_core::{Result, Shape, Tensor};
use candle_nn::VarBuilder;
use gemm::Parallelism;
use rayon::prelude::*;
use std::cell::RefCell;
use std::sync::Arc;

/// Upper bound on one block of the column matrix, in floats (4 MiB): about the L2 cache, and
/// what keeps a 3x3 convolution on a large image from allocating its full 9x-sized column matrix.
const COLUMN_BLOCK_FLOATS: usize = 1 << 20;

/// Output pixels per image at or below which the forward and input gradient run whole images in
/// parallel whatever their size (see `images_in_parallel_small`).
const SMALL_IMAGE_PIXELS: usize = 256;

/// Multiply-adds per image below which whole images run in parallel (see `images_in_parallel`).
const SMALL_PRODUCT: usize = 1 << 20;

/// Stride and padding of a convolution (dilation 1, one group: all the project's models use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conv2dConfig {
    pub padding: usize,
    pub stride: usize,
}

impl Default for Conv2dConfig {
    fn default() -> Self {
        Self {
            padding: 0,
            stride: 1,
        }
    }
}

/// A 2-D convolution layer with keys `weight` (C_out, C_in, k, k) and optional `bias` (C_out),
/// as `candle_nn::Conv2d` (and PyTorch's `nn.Conv2d`) store them.
#[derive(Debug, Clone)]
pub struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    config: Conv2dConfig,
    /// The weights as the microkernels read them, kept while they are not trained.
    packed: Arc<PackedWeights>,
}

impl Conv2d {
    /// An untracked `weight` (no gradient) must not change afterwards: the layer keeps its
    /// packing for the kernels (`packed_weights`). Build a new layer after updating one in place.
    pub fn new(weight: Tensor, bias: Option<Tensor>, config: Conv2dConfig) -> Self {
        Self {
            weight,
            bias,
            config,
            packed: Arc::default(),
        }
    }

    /// Loads (or initialises, as `candle_nn::conv2d` does) a k x k convolution with a bias.
    pub fn load(
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        config: Conv2dConfig,
        vb: VarBuilder,
    ) -> Result<Self> {
        let cfg = candle_nn::Conv2dConfig {
            padding: config.padding,
            stride: config.stride,
            ..Default::default()
        };
        let conv = candle_nn::conv2d(in_channels, out_channels, kernel, cfg, vb)?;
        Ok(Self::new(
            conv.weight().clone(),
            conv.bias().cloned(),
            config,
        ))
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn config(&self) -> Conv2dConfig {
        self.config
    }
}

impl Module for Conv2d {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        // A tracked weight (a `Var`, or computed from one) may change between calls.
        let packed = (!self.weight.track_op()).then(|| self.packed.clone());
        conv2d_with_packing(
            xs,
            &self.weight,
            self.bias.as_ref(),
            self.config.stride,
            self.config.padding,
            packed,
        )
    }
}

/// Cross-correlation of `xs` (B, C_in, H, W) with `weight` (C_out, C_in, kh, kw), plus `bias`
/// (C_out), with zero padding on every side: (B, C_out, H', W'), as PyTorch's `F.conv2d`.
pub fn conv2d(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    conv2d_with_packing(xs, weight, bias, stride, padding, None)
}

/// `conv2d`, keeping the weights' packing in `packed` across calls when given.
fn conv2d_with_packing(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
    packed: Option<Arc<PackedWeights>>,
) -> Result<Tensor> {
    let geometry = Geometry::new(xs, weight, bias, stride, padding)?;
    let own_kernel = matches!(xs.device(), Device::Cpu)
        && [Some(xs), Some(weight), bias]
            .iter()
            .flatten()
            .all(|t| t.dtype() == DType::F32);
    if !own_kernel {
        let ys = xs.conv2d(weight, padding, stride, 1, 1)?;
        return match bias {
            Some(b) => ys.broadcast_add(&b.reshape((1, geometry.cout, 1, 1))?),
            None => Ok(ys),
        };
    }
    conv2d_own(xs, weight, bias, geometry, packed)
}

/// The own kernel with the given geometry (tests shrink its column blocks).
fn conv2d_own(
    xs: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    geometry: Geometry,
    packed: Option<Arc<PackedWeights>>,
) -> Result<Tensor> {
    let tracked = [Some(xs), Some(weight), bias]
        .iter()
        .flatten()
        .any(|t| t.track_op());
    let geometry = Geometry {
        bf16: !tracked && float32_matmul_precision() == MatmulPrecision::Bf16,
        ..geometry
    };
    let op = Conv2dOp { geometry, packed };
    let (xs, weight) = (xs.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => xs.apply_op3(&weight, &b.contiguous()?, op),
        None => xs.apply_op2(&weight, op),
    }
}

/// Sizes of one convolution, checked once when it is built.
#[derive(Debug, Clone, Copy)]
pub(super) struct Geometry {
    pub(super) batch: usize,
    pub(super) cin: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) cout: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) padding: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
    /// Cap on one block of the column matrix, in floats (`COLUMN_BLOCK_FLOATS`; tests lower it).
    pub(super) block_floats: usize,
    /// Products (MACs per image) below which images run in parallel (`SMALL_PRODUCT`; tests vary it).
    pub(super) small_product: usize,
    /// Output pixels at or below which forward and input gradient go image-parallel
    /// (`SMALL_IMAGE_PIXELS`; tests vary it).
    pub(super) small_image_pixels: usize,
    /// Forward through the packed AVX-512 kernel (`conv_gemm`) where the CPU has it; tests
    /// turn it off to check the im2col + gemm path on such CPUs too.
    pub(super) packed: bool,
    /// Forward in bf16 products (`conv_bf16`): inference under `MatmulPrecision::Bf16` only.
    pub(super) bf16: bool,
    /// 3x3 stride-1 forwards and input gradients as Winograd F(2x2, 3x3) (`conv_winograd`)
    /// where the CPU has AVX-512; tests turn it off to check the direct kernels.
    pub(super) winograd: bool,
}

impl Geometry {
    pub(super) fn new(
        xs: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let Ok((batch, cin, h, w)) = xs.dims4() else {
            candle_core::bail!(
                "conv2d: the input must be (batch, channels, height, width), got {:?}",
                xs.dims()
            )
        };
        let Ok((cout, wcin, kh, kw)) = weight.dims4() else {
            candle_core::bail!(
                "conv2d: the weight must be (out channels, in channels, kh, kw), got {:?}",
                weight.dims()
            )
        };
        if wcin != cin {
            candle_core::bail!(
                "conv2d: the input has {cin} channels but the weight takes {wcin} (groups are not supported)"
            )
        }
        if let Some(b) = bias {
            if b.dims() != [cout] {
                candle_core::bail!(
                    "conv2d: the bias must be ({cout}) for {cout} output channels, got {:?}",
                    b.dims()
                )
            }
        }
        if stride == 0 {
            candle_core::bail!("conv2d: the stride must be at least 1")
        }
        if kh == 0 || kw == 0 || h + 2 * padding < kh || w + 2 * padding < kw {
            candle_core::bail!(
                "conv2d: a {kh}x{kw} kernel does not fit the {h}x{w} input padded by {padding}"
            )
        }
        Ok(Self {
            batch,
            cin,
            h,
            w,
            cout,
            kh,
            kw,
            stride,
            padding,
            ho: (h + 2 * padding - kh) / stride + 1,
            wo: (w + 2 * padding - kw) / stride + 1,
            block_floats: COLUMN_BLOCK_FLOATS,
            small_product: SMALL_PRODUCT,
            small_image_pixels: SMALL_IMAGE_PIXELS,
            packed: conv_gemm::supported(),
            bf16: false,
            winograd: conv_winograd::enabled(),
        })
    }

    /// Rows of the column matrix: one per (input channel, kernel row, kernel column).
    pub(super) fn patch_len(&self) -> usize {
        self.cin * self.kh * self.kw
    }

    pub(super) fn in_image(&self) -> usize {
        self.cin * self.h * self.w
    }

    pub(super) fn out_pixels(&self) -> usize {
        self.ho * self.wo
    }

    pub(super) fn out_image(&self) -> usize {
        self.cout * self.out_pixels()
    }

    /// A 1x1 stride-1 unpadded convolution: the image itself is the column matrix.
    pub(super) fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.padding == 0
    }

    /// Output rows per block of the column matrix.
    fn rows_per_block(&self) -> usize {
        (self.block_floats / (self.patch_len() * self.wo)).clamp(1, self.ho)
    }

    fn row_blocks(&self) -> impl Iterator<Item = (usize, usize)> {
        let step = self.rows_per_block();
        let ho = self.ho;
        (0..ho)
            .step_by(step)
            .map(move |r0| (r0, (r0 + step).min(ho)))
    }

    /// The valid output columns [lo, hi) for kernel column `j`: those reading inside the image.
    pub(super) fn valid_cols(&self, j: usize) -> (usize, usize) {
        let (s, p) = (self.stride, self.padding);
        let lo = if j >= p { 0 } else { (p - j).div_ceil(s) };
        let hi = if self.w + p > j {
            ((self.w + p - j - 1) / s + 1).min(self.wo)
        } else {
            0
        };
        (lo.min(hi), hi)
    }

    /// The input row read by output row `r` at kernel row `i`, if inside the image.
    pub(super) fn input_row(&self, r: usize, i: usize) -> Option<usize> {
        (r * self.stride + i)
            .checked_sub(self.padding)
            .filter(|&ih| ih < self.h)
    }
}

/// Whether to run images in parallel (each product single-threaded) rather than one image at a
/// time with gemm's and im2col's own threads. Measured on the decoder's shapes at 2 threads and
/// batch 2, one image at a time was as fast or faster down to 8x8 images with 256 channels
/// (private caches stay warm and no thread idles on an odd batch); only tiny products, where
/// splitting one gemm costs more than it saves, go image-parallel.
fn images_in_parallel(g: &Geometry, threads: usize) -> bool {
    threads > 1 && g.batch > 1 && g.cout * g.patch_len() * g.out_pixels() < g.small_product
}

/// The forward and input gradient of small images (`SMALL_IMAGE_PIXELS` output pixels or fewer:
/// 16 px and below) also go image-parallel: with the compute pool, `gemm` splitting one such product
/// between 2 threads measured 1.2-1.25x slower than two whole images side by side
/// (`tests::kernel_timing`). The weight gradient keeps the rule above: its per-thread partial
/// sums cost more than they save there.
fn images_in_parallel_small(g: &Geometry, threads: usize) -> bool {
    images_in_parallel(g, threads)
        || (threads > 1 && g.batch > 1 && g.out_pixels() <= g.small_image_pixels)
}

thread_local! {
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer resized to `len` (contents unspecified). The
/// buffer is taken out while `f` runs, so a re-entrant call just allocates its own.
fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = SCRATCH.with(|s| s.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let result = f(&mut buf[..len]);
    SCRATCH.with(|s| s.replace(buf));
    result
}

/// Writes the column matrix of output rows [r0, r1) of one image: `col` is
/// (cin·kh·kw, (r1 - r0)·wo), zero where the kernel reads padding. Channels are split across
/// threads when `parallelism` has more than one.
fn im2col(
    g: &Geometry,
    x: &[f32],
    rows: (usize, usize),
    col: &mut [f32],
    parallelism: Parallelism,
) {
    let per_channel = g.kh * g.kw * (rows.1 - rows.0) * g.wo;
    let planes = x.chunks_exact(g.h * g.w);
    if matches!(parallelism, Parallelism::None) {
        col.chunks_exact_mut(per_channel)
            .zip(planes)
            .for_each(|(col, plane)| im2col_channel(g, plane, rows, col));
    } else {
        col.par_chunks_exact_mut(per_channel)
            .zip(planes.collect::<Vec<_>>())
            .for_each(|(col, plane)| im2col_channel(g, plane, rows, col));
    }
}

/// `im2col` for one channel's plane: its kh·kw rows of the column matrix.
fn im2col_channel(g: &Geometry, plane: &[f32], (r0, r1): (usize, usize), col: &mut [f32]) {
    let bn = (r1 - r0) * g.wo;
    let mut rows = col.chunks_exact_mut(bn);
    for i in 0..g.kh {
        for j in 0..g.kw {
            let Some(dst) = rows.next() else { return };
            let (lo, hi) = g.valid_cols(j);
            for (r, out) in (r0..r1).zip(dst.chunks_exact_mut(g.wo)) {
                let Some(ih) = g.input_row(r, i) else {
                    out.fill(0.0);
                    continue;
                };
                let src = &plane[ih * g.w..(ih + 1) * g.w];
                out[..lo].fill(0.0);
                out[hi..].fill(0.0);
                let first = lo * g.stride + j - g.padding;
                if g.stride == 1 {
                    out[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
                } else {
                    for (o, v) in out[lo..hi]
                        .iter_mut()
                        .zip(src[first..].iter().step_by(g.stride))
                    {
                        *o = *v;
                    }
                }
            }
        }
    }
}

/// Adds the column-matrix gradient of output rows [r0, r1) back into the image gradient `dx`:
/// the transpose of `im2col`, split across threads by channel likewise.
fn col2im_add(
    g: &Geometry,
    dcol: &[f32],
    rows: (usize, usize),
    dx: &mut [f32],
    parallelism: Parallelism,
) {
    let per_channel = g.kh * g.kw * (rows.1 - rows.0) * g.wo;
    let cols = dcol.chunks_exact(per_channel);
    if matches!(parallelism, Parallelism::None) {
        dx.chunks_exact_mut(g.h * g.w)
            .zip(cols)
            .for_each(|(plane, dcol)| col2im_channel(g, dcol, rows, plane));
    } else {
        dx.par_chunks_exact_mut(g.h * g.w)
            .zip(cols.collect::<Vec<_>>())
            .for_each(|(plane, dcol)| col2im_channel(g, dcol, rows, plane));
    }
}

/// `col2im_add` for one channel's plane.
fn col2im_channel(g: &Geometry, dcol: &[f32], (r0, r1): (usize, usize), plane: &mut [f32]) {
    let bn = (r1 - r0) * g.wo;
    let mut rows = dcol.chunks_exact(bn);
    for i in 0..g.kh {
        for j in 0..g.kw {
            let Some(src) = rows.next() else { return };
            let (lo, hi) = g.valid_cols(j);
            for (r, grad) in (r0..r1).zip(src.chunks_exact(g.wo)) {
                let Some(ih) = g.input_row(r, i) else {
                    continue;
                };
                let dst = &mut plane[ih * g.w..(ih + 1) * g.w];
                let first = lo * g.stride + j - g.padding;
                if g.stride == 1 {
                    for (d, v) in dst[first..first + hi - lo].iter_mut().zip(&grad[lo..hi]) {
                        *d += *v;
                    }
                } else {
                    for (d, v) in dst[first..].iter_mut().step_by(g.stride).zip(&grad[lo..hi]) {
                        *d += *v;
                    }
                }
            }
        }
    }
}

/// One image's output (cout, ho·wo) = bias + W · im2col(x).
fn forward_image(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    out: &mut [f32],
    parallelism: Parallelism,
) {
    let pixels = g.out_pixels();
    if let Some(b) = bias {
        for (row, &v) in out.chunks_exact_mut(pixels).zip(b) {
            row.fill(v);
        }
    }
    let w = View {
        data: weight,
        rs: g.patch_len(),
        cs: 1,
    };
    if g.is_pointwise() {
        let x = View {
            data: x,
            rs: pixels,
            cs: 1,
        };
        matmul(
            (g.cout, pixels, g.cin),
            out,
            pixels,
            bias.is_some(),
            w,
            x,
            parallelism,
        );
        return;
    }
    let block = g.rows_per_block() * g.wo;
    with_scratch(g.patch_len() * block, |col| {
        for rows in g.row_blocks() {
            let bn = (rows.1 - rows.0) * g.wo;
            let col = &mut col[..g.patch_len() * bn];
            im2col(g, x, rows, col, parallelism);
            let col = View {
                data: col,
                rs: bn,
                cs: 1,
            };
            let dst = &mut out[rows.0 * g.wo..];
            matmul(
                (g.cout, bn, g.patch_len()),
                dst,
                pixels,
                bias.is_some(),
                w,
                col,
                parallelism,
            );
        }
    });
}

/// One image's input gradient (cin, h·w) = col2im(Wᵀ · dY).
fn backward_input_image(
    g: &Geometry,
    dy: &[f32],
    weight: &[f32],
    dx: &mut [f32],
    parallelism: Parallelism,
) {
    let pixels = g.out_pixels();
    let wt = View {
        data: weight,
        rs: 1,
        cs: g.patch_len(),
    };
    if g.is_pointwise() {
        let dy = View {
            data: dy,
            rs: pixels,
            cs: 1,
        };
        matmul(
            (g.cin, pixels, g.cout),
            dx,
            pixels,
            false,
            wt,
            dy,
            parallelism,
        );
        return;
    }
    dx.fill(0.0);
    let block = g.rows_per_block() * g.wo;
    with_scratch(g.patch_len() * block, |dcol| {
        for rows in g.row_blocks() {
            let bn = (rows.1 - rows.0) * g.wo;
            let dcol = &mut dcol[..g.patch_len() * bn];
            let dy = View {
                data: &dy[rows.0 * g.wo..],
                rs: pixels,
                cs: 1,
            };
            matmul(
                (g.patch_len(), bn, g.cout),
                dcol,
                bn,
                false,
                wt,
                dy,
                parallelism,
            );
            col2im_add(g, dcol, rows, dx, parallelism);
        }
    });
}

/// Adds one image's weight gradient dY · im2col(x)ᵀ to `dw` (cout, cin·kh·kw).
fn backward_weight_image(
    g: &Geometry,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    parallelism: Parallelism,
) {
    let pixels = g.out_pixels();
    let len = g.patch_len();
    if g.is_pointwise() {
        let dy = View {
            data: dy,
            rs: pixels,
            cs: 1,
        };
        let xt = View {
            data: x,
            rs: 1,
            cs: pixels,
        };
        matmul((g.cout, len, pixels), dw, len, true, dy, xt, parallelism);
        return;
    }
    let block = g.rows_per_block() * g.wo;
    with_scratch(len * block, |col| {
        for rows in g.row_blocks() {
            let bn = (rows.1 - rows.0) * g.wo;
            let col = &mut col[..len * bn];
            im2col(g, x, rows, col, parallelism);
            let dy = View {
                data: &dy[rows.0 * g.wo..],
                rs: pixels,
                cs: 1,
            };
            let colt = View {
                data: col,
                rs: 1,
                cs: bn,
            };
            matmul((g.cout, len, bn), dw, len, true, dy, colt, parallelism);
        }
    });
}

fn conv_forward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    packed: Option<&PackedWeights>,
) -> Vec<f32> {
    if g.packed && g.bf16 && conv_gemm::reads_in_place(g) {
        return conv_bf16::forward(g, x, weight, bias, packed);
    }
    if g.packed && g.winograd && conv_winograd::applies(g) {
        return conv_winograd::forward(g, x, weight, bias, packed);
    }
    if g.packed && conv_gemm::reads_in_place(g) {
        return conv_gemm::forward(g, x, weight, bias, packed);
    }
    let mut out = vec![0f32; g.batch * g.out_image()];
    let threads = threads();
    if images_in_parallel_small(g, threads) {
        out.par_chunks_mut(g.out_image())
            .zip(x.par_chunks(g.in_image()))
            .for_each(|(out, x)| forward_image(g, x, weight, bias, out, Parallelism::None));
    } else {
        for (out, x) in out.chunks_mut(g.out_image()).zip(x.chunks(g.in_image())) {
            forward_image(g, x, weight, bias, out, gemm_parallelism(threads));
        }
    }
    out
}

/// For a stride-1 convolution with a square kernel, the input gradient is itself a
/// convolution: of dY with the kernel flipped and its channel axes swapped, padded by k-1-p.
/// Returns that convolution's geometry and weights.
fn input_gradient_as_convolution(g: &Geometry, weight: &[f32]) -> Option<(Geometry, Vec<f32>)> {
    if g.stride != 1 || g.kh != g.kw || g.padding >= g.kh {
        return None;
    }
    let k = g.kh;
    let mut flipped = vec![0f32; weight.len()];
    // One task per input channel: its (C_out, k, k) block of the flipped kernel.
    flipped
        .par_chunks_mut(g.cout * k * k)
        .enumerate()
        .for_each(|(ci, flipped)| {
            for co in 0..g.cout {
                for i in 0..k {
                    for j in 0..k {
                        flipped[(co * k + (k - 1 - i)) * k + (k - 1 - j)] =
                            weight[((co * g.cin + ci) * k + i) * k + j];
                    }
                }
            }
        });
    let transposed = Geometry {
        cin: g.cout,
        h: g.ho,
        w: g.wo,
        cout: g.cin,
        padding: k - 1 - g.padding,
        ho: g.h,
        wo: g.w,
        ..*g
    };
    Some((transposed, flipped))
}

fn conv_backward_input(g: &Geometry, dy: &[f32], weight: &[f32]) -> Vec<f32> {
    if g.packed {
        if let Some((transposed, flipped)) = input_gradient_as_convolution(g, weight) {
            if transposed.winograd && conv_winograd::applies(&transposed) {
                return conv_winograd::forward(&transposed, dy, &flipped, None, None);
            }
            if conv_gemm::reads_in_place(&transposed) {
                return conv_gemm::forward(&transposed, dy, &flipped, None, None);
            }
        }
    }
    let mut dx = vec![0f32; g.batch * g.in_image()];
    let threads = threads();
    if images_in_parallel_small(g, threads) {
        dx.par_chunks_mut(g.in_image())
            .zip(dy.par_chunks(g.out_image()))
            .for_each(|(dx, dy)| backward_input_image(g, dy, weight, dx, Parallelism::None));
    } else {
        for (dx, dy) in dx.chunks_mut(g.in_image()).zip(dy.chunks(g.out_image())) {
            backward_input_image(g, dy, weight, dx, gemm_parallelism(threads));
        }
    }
    dx
}

fn conv_backward_weight(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    if g.packed && conv_weight_grad::is_faster(g) {
        return conv_weight_grad::weight_gradient(g, x, dy);
    }
    let len = g.cout * g.patch_len();
    let threads = threads();
    let images = |range: std::ops::Range<usize>, parallelism: Parallelism| {
        let mut dw = vec![0f32; len];
        for n in range {
            let x = &x[n * g.in_image()..(n + 1) * g.in_image()];
            let dy = &dy[n * g.out_image()..(n + 1) * g.out_image()];
            backward_weight_image(g, x, dy, &mut dw, parallelism);
        }
        dw
    };
    if !images_in_parallel(g, threads) {
        return images(0..g.batch, gemm_parallelism(threads));
    }
    // Fixed contiguous shares of the batch, summed in order: the result does not depend on
    // which thread ran what.
    let per = g.batch.div_ceil(threads);
    let partial: Vec<Vec<f32>> = (0..threads)
        .into_par_iter()
        .map(|t| images(t * per..((t + 1) * per).min(g.batch), Parallelism::None))
        .collect();
    let mut partial = partial.into_iter();
    let mut dw = partial.next().unwrap_or_else(|| vec![0f32; len]);
    for p in partial {
        dw.iter_mut().zip(&p).for_each(|(a, b)| *a += b);
    }
    dw
}

fn conv_backward_bias(g: &Geometry, dy: &[f32]) -> Vec<f32> {
    let mut db = vec![0f32; g.cout];
    for image in dy.chunks_exact(g.out_image()) {
        for (d, row) in db.iter_mut().zip(image.chunks_exact(g.out_pixels())) {
            *d += row.iter().sum::<f32>();
        }
    }
    db
}

fn f32_slice<'a>(storage: &'a CpuStorage, layout: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(data) = storage else {
        candle_core::bail!("conv2d: the {what} must be f32, got {:?}", storage.dtype())
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("conv2d: the {what} must be contiguous"),
    }
}

fn out_shape(g: &Geometry) -> Shape {
    Shape::from((g.batch, g.cout, g.ho, g.wo))
}

/// The forward convolution: (x, weight) or (x, weight, bias).
struct Conv2dOp {
    geometry: Geometry,
    /// The layer's packing cache: only for weights that no gradient tracks.
    packed: Option<Arc<PackedWeights>>,
}

impl Conv2dOp {
    /// dX, dW and db, each only when its tensor carries a gradient, side by side.
    fn grads(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: Option<&Tensor>,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let g = &self.geometry;
        let grad = grad.contiguous()?;
        let (want_dx, want_dw) = (xs.track_op(), weight.track_op());
        let want_db = bias.is_some_and(|b| b.track_op());
        let [dx, dw, db] = {
            let (x_store, x_layout) = xs.storage_and_layout();
            let (w_store, w_layout) = weight.storage_and_layout();
            let (dy_store, dy_layout) = grad.storage_and_layout();
            let x = storage_f32(&x_store, x_layout, "conv2d input")?;
            let w = storage_f32(&w_store, w_layout, "conv2d weight")?;
            let dy = storage_f32(&dy_store, dy_layout, "conv2d output gradient")?;
            gradients_side_by_side(
                want_dx.then_some(|| conv_backward_input(g, dy, w)),
                want_dw.then_some(|| conv_backward_weight(g, x, dy)),
                want_db.then_some(|| conv_backward_bias(g, dy)),
            )
        };
        Ok((
            cpu_gradient(dx, (g.batch, g.cin, g.h, g.w))?,
            cpu_gradient(dw, (g.cout, g.cin, g.kh, g.kw))?,
            cpu_gradient(db, g.cout)?,
        ))
    }
}

impl CustomOp2 for Conv2dOp {
    fn name(&self) -> &'static str {
        "unclip-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        w: &CpuStorage,
        w_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let x = f32_slice(xs, xs_l, "input")?;
        let w = f32_slice(w, w_l, "weight")?;
        let out = conv_forward(g, x, w, None, self.packed.as_deref());
        Ok((CpuStorage::F32(out), out_shape(g)))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw, _) = self.grads(xs, weight, None, grad)?;
        Ok((dx, dw))
    }
}

impl CustomOp3 for Conv2dOp {
    fn name(&self) -> &'static str {
        "unclip-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xs_l: &Layout,
        w: &CpuStorage,
        w_l: &Layout,
        b: &CpuStorage,
        b_l: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = &self.geometry;
        let x = f32_slice(xs, xs_l, "input")?;
        let w = f32_slice(w, w_l, "weight")?;
        let b = f32_slice(b, b_l, "bias")?;
        let out = conv_forward(g, x, w, Some(b), self.packed.as_deref());
        Ok((CpuStorage::F32(out), out_shape(g)))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        self.grads(xs, weight, Some(bias), grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Var;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(shape: &[usize], rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let n = shape.iter().product::<usize>();
        let data: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
        Tensor::from_vec(data, shape, &Device::Cpu)
    }

    /// candle's convolution and broadcast bias: the forward reference.
    fn reference(
        xs: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
        s: usize,
        p: usize,
    ) -> Result<Tensor> {
        let ys = xs.conv2d(w, p, s, 1, 1)?;
        match b {
            Some(b) => ys.broadcast_add(&b.reshape((1, b.dim(0)?, 1, 1))?),
            None => Ok(ys),
        }
    }

    /// The convolution composed from ops with a correct backward (pad, index_select, matmul):
    /// the gradient reference. candle's own conv2d backward is wrong when the rows and the
    /// columns leave different remainders (it takes the transposed convolution's output padding
    /// from the height only), e.g. an 8x7 input with a 3x3 kernel at stride 2.
    fn composed(xs: &Tensor, w: &Tensor, b: Option<&Tensor>, s: usize, p: usize) -> Result<Tensor> {
        let (batch, cin, h, wd) = xs.dims4()?;
        let (cout, _, kh, kw) = w.dims4()?;
        let (ho, wo) = ((h + 2 * p - kh) / s + 1, (wd + 2 * p - kw) / s + 1);
        let padded = xs
            .contiguous()?
            .pad_with_zeros(2, p, p)?
            .pad_with_zeros(3, p, p)?
            .contiguous()?;
        let index = |k: usize, n: usize| {
            let idx: Vec<u32> = (0..n).map(|o| (o * s + k) as u32).collect();
            Tensor::new(idx, &Device::Cpu)
        };
        let mut patches = Vec::new();
        for i in 0..kh {
            for j in 0..kw {
                let patch = padded
                    .index_select(&index(i, ho)?, 2)?
                    .contiguous()?
                    .index_select(&index(j, wo)?, 3)?;
                patches.push(patch.reshape((batch, cin, 1, ho * wo))?);
            }
        }
        let cols = Tensor::cat(&patches, 2)?.reshape((batch, cin * kh * kw, ho * wo))?;
        let ys = w
            .reshape((1, cout, cin * kh * kw))?
            .broadcast_matmul(&cols)?
            .reshape((batch, cout, ho, wo))?;
        match b {
            Some(b) => ys.broadcast_add(&b.reshape((1, cout, 1, 1))?),
            None => Ok(ys),
        }
    }

    fn max_rel_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        let scale = b.abs()?.max_all()?.to_scalar::<f32>()?.max(1e-6);
        let diff = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
        Ok(diff / scale)
    }

    struct Case {
        batch: usize,
        cin: usize,
        cout: usize,
        hw: (usize, usize),
        k: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    }

    const CASES: [Case; 9] = [
        // Rows of whole 32-pixel tiles: the forward, the input gradient (a convolution of dY
        // with the flipped kernel) and the weight gradient take the in-place AVX-512 kernels
        // where the CPU has them.
        Case {
            batch: 2,
            cin: 3,
            cout: 13,
            hw: (8, 32),
            k: 3,
            stride: 1,
            padding: 1,
            bias: true,
        },
        Case {
            batch: 1,
            cin: 14,
            cout: 5,
            hw: (2, 64),
            k: 1,
            stride: 1,
            padding: 0,
            bias: false,
        },
        // The brief's odd case: 7x5 images, stride 2, padding 1.
        Case {
            batch: 2,
            cin: 3,
            cout: 5,
            hw: (7, 5),
            k: 3,
            stride: 2,
            padding: 1,
            bias: true,
        },
        Case {
            batch: 3,
            cin: 4,
            cout: 6,
            hw: (5, 7),
            k: 3,
            stride: 1,
            padding: 1,
            bias: true,
        },
        Case {
            batch: 1,
            cin: 5,
            cout: 3,
            hw: (6, 9),
            k: 3,
            stride: 1,
            padding: 1,
            bias: false,
        },
        Case {
            batch: 2,
            cin: 6,
            cout: 4,
            hw: (5, 3),
            k: 1,
            stride: 1,
            padding: 0,
            bias: true,
        },
        Case {
            batch: 1,
            cin: 3,
            cout: 2,
            hw: (8, 7),
            k: 3,
            stride: 2,
            padding: 0,
            bias: true,
        },
        // Patch embedding: kernel = stride.
        Case {
            batch: 2,
            cin: 3,
            cout: 4,
            hw: (8, 8),
            k: 4,
            stride: 4,
            padding: 0,
            bias: false,
        },
        Case {
            batch: 3,
            cin: 2,
            cout: 3,
            hw: (4, 5),
            k: 5,
            stride: 1,
            padding: 2,
            bias: true,
        },
    ];

    /// How a case runs: column block size, the image-parallel threshold, and whether the
    /// forward may take the packed AVX-512 kernel.
    /// (column block floats, small product, the AVX-512 kernels, Winograd).
    type Tuning = (usize, usize, bool, bool);

    /// Runs every case with full-size and with tiny column blocks (several blocks per image),
    /// and with images in parallel and one at a time.
    fn for_each_case(mut check: impl FnMut(&Case, Tuning) -> Result<()>) -> Result<()> {
        for case in &CASES {
            for tuning in [
                (COLUMN_BLOCK_FLOATS, 0, true, true),
                (COLUMN_BLOCK_FLOATS, 0, true, false),
                (COLUMN_BLOCK_FLOATS, 0, false, false),
                (1, 0, false, false),
                (COLUMN_BLOCK_FLOATS, usize::MAX, false, false),
            ] {
                check(case, tuning)?;
            }
        }
        Ok(())
    }

    fn inputs(c: &Case, rng: &mut ChaCha8Rng) -> Result<(Tensor, Tensor, Option<Tensor>)> {
        // (B, C, W, H) transposed: the input is not contiguous.
        let xs = random(&[c.batch, c.cin, c.hw.1, c.hw.0], rng)?.transpose(2, 3)?;
        let w = random(&[c.cout, c.cin, c.k, c.k], rng)?;
        let b = if c.bias {
            Some(random(&[c.cout], rng)?)
        } else {
            None
        };
        Ok((xs, w, b))
    }

    fn own(
        c: &Case,
        (block_floats, small_product, packed, winograd): Tuning,
        xs: &Tensor,
        w: &Tensor,
        b: Option<&Tensor>,
    ) -> Result<Tensor> {
        let mut g = Geometry::new(xs, w, b, c.stride, c.padding)?;
        g.block_floats = block_floats;
        g.small_product = small_product;
        g.small_image_pixels = if small_product == 0 { 0 } else { usize::MAX };
        g.packed &= packed;
        g.winograd = winograd;
        conv2d_own(xs, w, b, g, None)
    }

    #[test]
    fn forward_matches_candle() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for_each_case(|c, tuning| {
            let (xs, w, b) = inputs(c, &mut rng)?;
            assert!(!xs.is_contiguous());
            let ours = own(c, tuning, &xs, &w, b.as_ref())?;
            let theirs = reference(&xs, &w, b.as_ref(), c.stride, c.padding)?;
            let d = max_rel_diff(&ours, &theirs)?;
            assert!(
                d < 1e-5,
                "forward differs by {d} (k {} s {} p {})",
                c.k,
                c.stride,
                c.padding
            );
            Ok(())
        })
    }

    #[test]
    fn composition_matches_candle_forward() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        for c in &CASES {
            let (xs, w, b) = inputs(c, &mut rng)?;
            let d = max_rel_diff(
                &composed(&xs, &w, b.as_ref(), c.stride, c.padding)?,
                &reference(&xs, &w, b.as_ref(), c.stride, c.padding)?,
            )?;
            assert!(d < 1e-5, "composition differs by {d}");
        }
        Ok(())
    }

    #[test]
    fn gradients_match_the_composition() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(8);
        for_each_case(|c, tuning| {
            let (xs, w, b) = inputs(c, &mut rng)?;
            let (xv, wv) = (Var::from_tensor(&xs)?, Var::from_tensor(&w)?);
            let bv = b.as_ref().map(Var::from_tensor).transpose()?;
            let bt = bv.as_ref().map(|v| v.as_tensor());
            let ours = own(c, tuning, xv.as_tensor(), wv.as_tensor(), bt)?;
            // A random upstream gradient, so every output element matters differently.
            let up = random(ours.dims(), &mut rng)?;
            let theirs = composed(xv.as_tensor(), wv.as_tensor(), bt, c.stride, c.padding)?;
            let g_ours = (&ours * &up)?.sum_all()?.backward()?;
            let g_theirs = (&theirs * &up)?.sum_all()?.backward()?;
            let mut vars = vec![("input", xv.as_tensor()), ("weight", wv.as_tensor())];
            if let Some(b) = bt {
                vars.push(("bias", b));
            }
            for (name, v) in vars {
                let (a, e) = (g_ours.get(v).expect(name), g_theirs.get(v).expect(name));
                let d = max_rel_diff(a, e)?;
                assert!(
                    d < 1e-5,
                    "{name} gradient differs by {d} (k {} s {} p {})",
                    c.k,
                    c.stride,
                    c.padding
                );
            }
            Ok(())
        })
    }

    #[test]
    fn a_constant_input_gets_no_gradient() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let xs = random(&[2, 3, 5, 5], &mut rng)?;
        let w = Var::from_tensor(&random(&[4, 3, 3, 3], &mut rng)?)?;
        let ys = conv2d(&xs, w.as_tensor(), None, 1, 1)?;
        let grads = ys.sum_all()?.backward()?;
        assert!(grads.get(&xs).is_none());
        assert!(grads.get(w.as_tensor()).is_some());
        Ok(())
    }

    #[test]
    fn a_loaded_layer_packs_its_weights_once_and_a_trained_one_every_call() -> Result<()> {
        if !conv_gemm::supported() {
            eprintln!("skipped: this CPU has no AVX-512, so nothing is packed");
            return Ok(());
        }
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let xs = random(&[2, 5, 32, 32], &mut rng)?;
        let (w, b) = (random(&[7, 5, 3, 3], &mut rng)?, random(&[7], &mut rng)?);
        let config = Conv2dConfig {
            padding: 1,
            stride: 1,
        };
        let loaded = Conv2d::new(w.clone(), Some(b.clone()), config);
        let want = conv2d(&xs, &w, Some(&b), 1, 1)?;
        for _ in 0..2 {
            assert_eq!(max_rel_diff(&loaded.forward(&xs)?, &want)?, 0.0);
        }
        assert!(loaded.packed.kept());

        let trained = Var::from_tensor(&w)?;
        let layer = Conv2d::new(trained.as_tensor().clone(), Some(b.clone()), config);
        layer.forward(&xs)?;
        assert!(!layer.packed.kept());
        let stepped = random(&[7, 5, 3, 3], &mut rng)?;
        trained.set(&stepped)?;
        let want = conv2d(&xs, &stepped, Some(&b), 1, 1)?;
        assert_eq!(max_rel_diff(&layer.forward(&xs)?, &want)?, 0.0);
        Ok(())
    }

    #[test]
    fn bad_shapes_are_named() -> Result<()> {
        let xs = Tensor::zeros((1, 3, 5, 5), DType::F32, &Device::Cpu)?;
        let w = Tensor::zeros((4, 2, 3, 3), DType::F32, &Device::Cpu)?;
        let err = conv2d(&xs, &w, None, 1, 1).expect_err("channel mismatch");
        assert!(err.to_string().contains("3 channels"), "{err}");
        let w = Tensor::zeros((4, 3, 7, 7), DType::F32, &Device::Cpu)?;
        let err = conv2d(&xs, &w, None, 1, 0).expect_err("kernel too large");
        assert!(err.to_string().contains("does not fit"), "{err}");
        let b = Tensor::zeros(5, DType::F32, &Device::Cpu)?;
        let w = Tensor::zeros((4, 3, 3, 3), DType::F32, &Device::Cpu)?;
        let err = conv2d(&xs, &w, Some(&b), 1, 0).expect_err("bias length");
        assert!(err.to_string().contains("bias"), "{err}");
        Ok(())
    }

    #[test]
    fn other_dtypes_fall_back_to_candle() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(10);
        let xs = random(&[1, 2, 4, 4], &mut rng)?;
        let w = random(&[3, 2, 3, 3], &mut rng)?;
        let ours = conv2d(
            &xs.to_dtype(DType::F64)?,
            &w.to_dtype(DType::F64)?,
            None,
            1,
            1,
        )?;
        assert_eq!(ours.dtype(), DType::F64);
        let d = max_rel_diff(&ours.to_dtype(DType::F32)?, &conv2d(&xs, &w, None, 1, 1)?)?;
        assert!(d < 1e-5, "f64 differs by {d}");
        Ok(())
    }

    /// Timing against candle on the decoder bench's convolution shapes (batch 2):
    /// `cargo test --release -p unclip --lib nn::conv::tests::timing -- --ignored --nocapture`.
    /// Each pass of the decoder's convolution shapes (batch 2) on the AVX-512 kernels and on
    /// im2col + gemm: `cargo test --release -p unclip --lib kernel_timing -- --ignored --nocapture`.
    #[test]
    #[ignore = "timing, not a check"]
    fn kernel_timing() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(13);
        let time = |f: &mut dyn FnMut()| -> f64 {
            f();
            let mut best = f64::MAX;
            for _ in 0..5 {
                let start = std::time::Instant::now();
                f();
                best = best.min(start.elapsed().as_secs_f64() * 1e3);
            }
            best
        };
        println!(
            "threads {}; ms (best of 5): Winograd / AVX-512 direct kernels / im2col + gemm",
            rayon::current_num_threads()
        );
        // (cin, cout, size, k, stride, padding)
        for (cin, cout, size, k, s, p) in [
            (64, 64, 64, 3, 1, 1),
            (128, 128, 32, 3, 1, 1),
            (192, 192, 16, 3, 1, 1),
            (256, 256, 8, 3, 1, 1),
            (128, 128, 32, 3, 2, 1),
            (64, 128, 32, 1, 1, 0),
        ] {
            let xs = random(&[2, cin, size, size], &mut rng)?;
            let w = random(&[cout, cin, k, k], &mut rng)?;
            let mut g = Geometry::new(&xs, &w, None, s, p)?;
            let x = xs.flatten_all()?.to_vec1::<f32>()?;
            let w = w.flatten_all()?.to_vec1::<f32>()?;
            let dy = random(&[2 * g.out_image()], &mut rng)?.to_vec1::<f32>()?;
            let mut row = format!("{cin:>4}->{cout:<4} {size:>3}px k{k} s{s}:");
            for (name, pass) in [("forward", 0), ("input grad", 1), ("weight grad", 2)] {
                let mut ms = [0f64; 3];
                for (slot, packed, winograd) in
                    [(0, true, true), (1, true, false), (2, false, false)]
                {
                    g.packed = packed && conv_gemm::supported();
                    g.winograd = winograd;
                    ms[slot] = time(&mut || match pass {
                        0 => drop(conv_forward(&g, &x, &w, None, None)),
                        1 => drop(conv_backward_input(&g, &dy, &w)),
                        _ if g.packed => drop(conv_weight_grad::weight_gradient(&g, &x, &dy)),
                        _ => drop(conv_backward_weight(&g, &x, &dy)),
                    });
                }
                row += &format!("  {name} {:.2} / {:.2} / {:.2}", ms[0], ms[1], ms[2]);
            }
            println!("{row}");
        }
        Ok(())
    }

    #[test]
    #[ignore = "timing, not a check"]
    fn timing() -> Result<()> {
        let mut rng = ChaCha8Rng::seed_from_u64(12);
        let time = |f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
            f()?;
            let mut best = f64::MAX;
            for _ in 0..3 {
                let start = std::time::Instant::now();
                f()?;
                best = best.min(start.elapsed().as_secs_f64() * 1e3);
            }
            Ok(best)
        };
        println!("threads {}", threads());
        for (m, k, n) in [(64, 576, 4096), (128, 1152, 1024), (64, 576, 1792)] {
            let a = random(&[m, k], &mut rng)?;
            let b = random(&[k, n], &mut rng)?;
            let ms = time(&mut || a.matmul(&b).map(drop))?;
            let gflops = 2.0 * (m * k * n) as f64 / ms / 1e6;
            println!("matmul {m}x{k}x{n}: {ms:.2} ms, {gflops:.1} GFLOP/s");
        }
        // (cin, cout, size, k, stride, padding)
        let shapes = [
            (64, 64, 64, 3, 1, 1),
            (64, 128, 32, 3, 1, 1),
            (128, 128, 32, 3, 1, 1),
            (192, 192, 16, 3, 1, 1),
            (256, 256, 8, 3, 1, 1),
            (128, 128, 32, 3, 2, 1),
            (64, 128, 32, 1, 1, 0),
        ];
        for (cin, cout, size, k, s, p) in shapes {
            let xs = Var::from_tensor(&random(&[2, cin, size, size], &mut rng)?)?;
            let w = Var::from_tensor(&random(&[cout, cin, k, k], &mut rng)?)?;
            let b = Var::from_tensor(&random(&[cout], &mut rng)?)?;
            let (x, w, b) = (xs.as_tensor(), w.as_tensor(), b.as_tensor());
            let ours_f = time(&mut || conv2d(x, w, Some(b), s, p).map(drop))?;
            let candle_f = time(&mut || reference(x, w, Some(b), s, p).map(drop))?;
            let ours_b =
                time(&mut || conv2d(x, w, Some(b), s, p)?.sum_all()?.backward().map(drop))?;
            let candle_b = time(&mut || {
                reference(x, w, Some(b), s, p)?
                    .sum_all()?
                    .backward()
                    .map(drop)
            })?;
            println!(
                "{cin:>4}->{cout:<4} {size:>3}px k{k} s{s}: forward {ours_f:7.2} ms (candle {candle_f:7.2}), forward+backward {ours_b:7.2} ms (candle {candle_b:7.2})"
            );
        }
        Ok(())
    }
}
