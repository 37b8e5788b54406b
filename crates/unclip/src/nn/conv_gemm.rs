//! Stride-1 convolutions on AVX-512 CPUs as one gemm per image that reads its pixel operand
//! in place, with a 32 x 12 microkernel.
//!
//! Why our own gemm here: the `gemm` crate's f32 kernel on stable Rust is AVX2 (16 registers, a
//! 16 x 6 tile), and the im2col path paid twice for the column matrix: im2col wrote it (9x the
//! image for a 3x3 kernel), then gemm's packing read it and wrote it again (~15% of a 64 px
//! decoder forward). For a stride-1 convolution the column matrix needs no copy at all: entry
//! (channel, i, j) of 32 consecutive output pixels in one row is 32 consecutive floats of the
//! zero-padded input, `offsets[entry]` further on. So the microkernel loads them straight from
//! a padded copy of the input (the image itself for a 1x1 kernel), and only the weights are
//! packed, shared by every image and thread (once per loaded layer, see `packed_weights`). Other convolutions (strided, or
//! rows narrower than a tile, late in the U-Net) keep im2col + `gemm`: gathering their pixels
//! into panels for this kernel measured slower. CPUs without AVX-512 keep it for all.
//!
//! Layout: the output (C_out, pixels) of one image is C = W · X, X the virtual column matrix
//! (C_in·kh·kw, pixels). A tile is 32 output pixels (two zmm registers) by 12 output channels:
//! 24 accumulators, 2 loads and 12 broadcasts per step of the reduction.

use super::conv::Geometry;
use super::kernel_io::SharedMut;
use super::packed_weights::PackedWeights;
use rayon::prelude::*;

/// Output pixels per microkernel tile: two 16-float registers.
pub(super) const MR: usize = 32;
/// Output channels per microkernel tile.
pub(super) const NR: usize = 12;
/// Reduction (patch) entries per block: the block's packed weights for one tile (12 KB) stay in
/// L1 while the tile sweeps the pixel block.
pub(super) const KC: usize = 256;
/// Output pixels per block (a multiple of MR): the input rows they read for one block of
/// entries (a few rows of ~28 channels) stay in L2 while every channel tile passes over them.
pub(super) const MC: usize = 256;

/// Whether this CPU runs the kernel (AVX-512 F); otherwise the caller uses im2col + gemm.
pub(super) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The weights (C_out, K) packed as the microkernel reads them: for each block of KC patch
/// entries, for each panel of NR output channels, for each entry, NR channels (zero past C_out).
pub(super) fn pack_weights(weight: &[f32], cout: usize, k: usize) -> Vec<f32> {
    let panels = cout.div_ceil(NR);
    let mut packed = vec![0f32; k * panels * NR];
    let mut at = 0;
    for k0 in (0..k).step_by(KC) {
        let k1 = (k0 + KC).min(k);
        let klen = k1 - k0;
        for panel in 0..panels {
            let dst = &mut packed[at..at + klen * NR];
            for j in 0..NR.min(cout - panel * NR) {
                let src = &weight[(panel * NR + j) * k + k0..(panel * NR + j) * k + k1];
                for (kk, &v) in src.iter().enumerate() {
                    dst[kk * NR + j] = v;
                }
            }
            at += klen * NR;
        }
    }
    packed
}

/// One unit of parallel work: a block of pixels of one image, for a range of channel panels.
#[derive(Clone, Copy)]
pub(super) struct Task {
    pub(super) image: usize,
    pub(super) pixels: (usize, usize),
    pub(super) panels: (usize, usize),
}

/// Splits the batch into pixel blocks, and the channel panels too when there are too few
/// blocks to keep every thread busy (small images late in the U-Net).
pub(super) fn tasks(g: &Geometry, threads: usize) -> Vec<Task> {
    let pixels = g.out_pixels();
    let panels = g.cout.div_ceil(NR);
    let blocks = pixels.div_ceil(MC);
    let basic = g.batch * blocks;
    let splits = if basic >= 4 * threads || threads == 1 {
        1
    } else {
        (4 * threads).div_ceil(basic).min(panels)
    };
    let per_split = panels.div_ceil(splits);
    let mut out = Vec::with_capacity(basic * splits);
    for image in 0..g.batch {
        for b in 0..blocks {
            let px = (b * MC, ((b + 1) * MC).min(pixels));
            for s in 0..splits {
                let p0 = s * per_split;
                let p1 = ((s + 1) * per_split).min(panels);
                if p0 < p1 {
                    out.push(Task {
                        image,
                        pixels: px,
                        panels: (p0, p1),
                    });
                }
            }
        }
    }
    out
}

/// Whether `forward` is faster than im2col + gemm for this convolution: when the pixels are
/// read in place, in whole tiles (measured: gathering them into panels, as strided convolutions
/// and rows shorter than a tile need, was slower than the gemm path).
pub(super) fn reads_in_place(g: &Geometry) -> bool {
    g.stride == 1
        && g.out_pixels().is_multiple_of(MR)
        && (g.is_pointwise() || g.wo.is_multiple_of(MR))
}

/// The column matrix read in place: entry kk of output pixel p of image n is
/// `image(n)[offsets[kk] + base(p)]`; for stride 1, consecutive pixels of a row are consecutive
/// floats.
pub(super) struct PixelSource<'a> {
    /// The input itself (pointwise convolutions) or a zero-padded copy of it.
    data: std::borrow::Cow<'a, [f32]>,
    image_len: usize,
    row_len: usize,
    out_row_len: usize,
    stride: usize,
    pub(super) offsets: Vec<usize>,
}

impl<'a> PixelSource<'a> {
    pub(super) fn new(g: &Geometry, x: &'a [f32]) -> Self {
        if g.is_pointwise() {
            let pixels = g.out_pixels();
            return Self {
                data: x.into(),
                image_len: g.in_image(),
                row_len: g.wo,
                out_row_len: g.wo,
                stride: 1,
                offsets: (0..g.cin).map(|c| c * pixels).collect(),
            };
        }
        let (hp, wp) = (g.h + 2 * g.padding, g.w + 2 * g.padding);
        let mut padded = vec![0f32; g.batch * g.cin * hp * wp];
        padded
            .par_chunks_mut(hp * wp)
            .zip(x.par_chunks(g.h * g.w))
            .for_each(|(dst, src)| {
                for (r, row) in src.chunks_exact(g.w).enumerate() {
                    let at = (r + g.padding) * wp + g.padding;
                    dst[at..at + g.w].copy_from_slice(row);
                }
            });
        let mut offsets = Vec::with_capacity(g.patch_len());
        for c in 0..g.cin {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    offsets.push(c * hp * wp + i * wp + j);
                }
            }
        }
        Self {
            data: padded.into(),
            image_len: g.cin * hp * wp,
            row_len: wp,
            out_row_len: g.wo,
            stride: g.stride,
            offsets,
        }
    }

    pub(super) fn image(&self, n: usize) -> &[f32] {
        &self.data[n * self.image_len..(n + 1) * self.image_len]
    }

    /// Where output pixel p's window starts in an image's source.
    pub(super) fn base(&self, p: usize) -> usize {
        (p / self.out_row_len) * self.stride * self.row_len + (p % self.out_row_len) * self.stride
    }
}

/// (B, C_out, H', W') = bias + conv(x, weight) for contiguous f32 slices. Call only where
/// `supported()` and `reads_in_place(g)` hold.
/// `cache` keeps the packed weights across calls (see `packed_weights`).
pub(super) fn forward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    cache: Option<&PackedWeights>,
) -> Vec<f32> {
    assert!(
        supported() && reads_in_place(g),
        "conv_gemm::forward called for {g:?}"
    );
    let pixels = g.out_pixels();
    let k = g.patch_len();
    let mut out = output_with_bias(g, bias);
    if pixels == 0 || g.cout == 0 || k == 0 {
        return out;
    }
    let packed = PackedWeights::f32(cache, || pack_weights(weight, g.cout, k));
    let packed = &packed[..];
    let source = PixelSource::new(g, x);
    let tasks = tasks(g, rayon::current_num_threads());
    let out_ptr = SharedMut(out.as_mut_ptr());
    // One rayon job per task: the default split hands each thread a few large ranges, whose
    // uneven ends left one core idle at the tail of each convolution (2-thread profiles).
    tasks.par_iter().with_max_len(1).for_each(|task| {
        // SAFETY: tasks cover disjoint (image, pixel range, channel range) regions of `out`,
        // and `run_task` writes only inside its own region.
        let out_image = unsafe { out_ptr.get().add(task.image * g.out_image()) };
        run_task(g, &source, packed, task, out_image);
    });
    out
}

/// The output (B, C_out, H', W') filled with each channel's bias (zeros without one), for the
/// tiles to accumulate into.
pub(super) fn output_with_bias(g: &Geometry, bias: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; g.batch * g.out_image()];
    if let Some(b) = bias {
        for image in out.chunks_exact_mut(g.out_image()) {
            for (row, &v) in image.chunks_exact_mut(g.out_pixels()).zip(b) {
                row.fill(v);
            }
        }
    }
    out
}

fn run_task(g: &Geometry, source: &PixelSource, packed: &[f32], task: &Task, out: *mut f32) {
    let k = g.patch_len();
    let pixels = g.out_pixels();
    let panels_total = g.cout.div_ceil(NR);
    let image = source.image(task.image);
    let (px0, px1) = task.pixels;
    for k0 in (0..k).step_by(KC) {
        let k1 = (k0 + KC).min(k);
        let klen = k1 - k0;
        let w_block = &packed[k0 * panels_total * NR..];
        for panel in task.panels.0..task.panels.1 {
            let b = &w_block[panel * klen * NR..(panel + 1) * klen * NR];
            let co0 = panel * NR;
            let rows = NR.min(g.cout - co0);
            for p in (px0..px1).step_by(MR) {
                let base = source.base(p);
                // SAFETY: pixels come in whole tiles within one output row (`reads_in_place`),
                // so the tile reads offsets[kk] + base + t, t < 32, inside this image's source;
                // its output rows co0.. co0+rows, pixels p..p+32, lie inside this task's region.
                unsafe {
                    tile(
                        klen,
                        image.as_ptr().add(base),
                        &source.offsets[k0..k1],
                        b,
                        out.add(co0 * pixels + p),
                        pixels,
                        rows,
                    );
                }
            }
        }
    }
}

/// C[rows x 32] += A · B for one tile: entry kk of the tile's 32 pixels is read from
/// `a + offsets[kk]`, `b` is klen x NR, and C row j (an output channel) starts at `c + j * ldc`.
///
/// # Safety
/// The CPU has AVX-512 F; `a + offsets[kk] .. + 32` is readable for every kk < klen, and `c`
/// addresses `rows` (at most NR) rows of 32 writable floats at stride `ldc`.
pub(super) unsafe fn tile(
    klen: usize,
    a: *const f32,
    offsets: &[usize],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller.
    unsafe {
        tile_avx512(klen, a, offsets, b, c, ldc, rows)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (klen, a, offsets, b, c, ldc, rows);
        unreachable!("conv_gemm::forward runs only where supported() holds")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(
    klen: usize,
    a: *const f32,
    offsets: &[usize],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
) {
    use std::arch::x86_64::*;
    assert!(offsets.len() >= klen && b.len() >= klen * NR && rows <= NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; NR];
    let pb = b.as_ptr();
    for (k, &off) in offsets[..klen].iter().enumerate() {
        // SAFETY: the caller guarantees the pixel reads; k < klen bounds `b`.
        unsafe {
            let a0 = _mm512_loadu_ps(a.add(off));
            let a1 = _mm512_loadu_ps(a.add(off + 16));
            let bk = pb.add(k * NR);
            for (j, acc) in acc.iter_mut().enumerate() {
                let bj = _mm512_set1_ps(*bk.add(j));
                acc[0] = _mm512_fmadd_ps(a0, bj, acc[0]);
                acc[1] = _mm512_fmadd_ps(a1, bj, acc[1]);
            }
        }
    }
    for (j, acc) in acc.iter().enumerate().take(rows) {
        // SAFETY: row j < rows of the caller's tile, 32 floats.
        unsafe {
            let row = c.add(j * ldc);
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc[0]));
            let row = row.add(16);
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc[1]));
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    /// The definition, one multiply-add at a time.
    pub(in crate::nn) fn direct(
        g: &Geometry,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let mut out = vec![0f32; g.batch * g.out_image()];
        for n in 0..g.batch {
            for co in 0..g.cout {
                for r in 0..g.ho {
                    for col in 0..g.wo {
                        let mut s = bias.map_or(0.0, |b| b[co]) as f64;
                        for ci in 0..g.cin {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let ih = (r * g.stride + i) as isize - g.padding as isize;
                                    let iw = (col * g.stride + j) as isize - g.padding as isize;
                                    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((n * g.cin + ci) * g.h + ih as usize) * g.w
                                        + iw as usize];
                                    let wv = w[((co * g.cin + ci) * g.kh + i) * g.kw + j];
                                    s += (xv * wv) as f64;
                                }
                            }
                        }
                        out[((n * g.cout + co) * g.ho + r) * g.wo + col] = s as f32;
                    }
                }
            }
        }
        out
    }

    /// n deterministic values in [-1, 1] (`seed` shifts the sequence).
    pub(in crate::nn) fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let v = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (v % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn matches_the_definition_on_every_edge() -> candle_core::Result<()> {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512");
            return Ok(());
        }
        // (batch, cin, h, w, cout, k, stride, padding): channel counts that leave a partial
        // tile, reductions longer than one KC block, pointwise convolutions on images whose rows
        // are shorter than a tile, wider padding than the kernel's half, one output channel.
        let cases = [
            (2, 5, 32, 32, 13, 3, 1, 1),
            (1, 40, 4, 64, 25, 3, 1, 1),
            (1, 3, 6, 30, 4, 5, 1, 3),
            (1, 300, 8, 4, 25, 1, 1, 0),
            (3, 7, 16, 16, 12, 1, 1, 0),
            (1, 64, 3, 34, 1, 3, 1, 0),
            (2, 1, 2, 64, 24, 3, 1, 1),
        ];
        for (batch, cin, h, w, cout, k, stride, padding) in cases {
            let dev = Device::Cpu;
            let xs = Tensor::from_vec(values(batch * cin * h * w, 1), (batch, cin, h, w), &dev)?;
            let ws = Tensor::from_vec(values(cout * cin * k * k, 2), (cout, cin, k, k), &dev)?;
            let bs = Tensor::from_vec(values(cout, 3), cout, &dev)?;
            let g = Geometry::new(&xs, &ws, Some(&bs), stride, padding)?;
            assert!(reads_in_place(&g), "not an in-place case: {g:?}");
            let (x, w, b) = (
                xs.flatten_all()?.to_vec1::<f32>()?,
                ws.flatten_all()?.to_vec1::<f32>()?,
                bs.to_vec1::<f32>()?,
            );
            for bias in [Some(b.as_slice()), None] {
                let want = direct(&g, &x, &w, bias);
                let got = forward(&g, &x, &w, bias, None);
                assert_eq!(got.len(), want.len());
                // Packed once and reused, the weights give the same output bit for bit.
                let cache = PackedWeights::default();
                for _ in 0..2 {
                    assert!(forward(&g, &x, &w, bias, Some(&cache)) == got);
                }
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                assert!(
                    worst < 1e-3,
                    "case {:?}: max |diff| {worst}",
                    (batch, cin, h, w, cout, k, stride, padding)
                );
            }
        }
        Ok(())
    }

    #[test]
    fn strided_and_narrow_convolutions_stay_on_the_gemm_path() -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // (h, w, k, stride, padding)
        for (h, w, k, stride, padding) in [(64, 64, 3, 2, 1), (16, 16, 3, 1, 1), (4, 4, 1, 1, 0)] {
            let xs = Tensor::zeros((1, 4, h, w), candle_core::DType::F32, &dev)?;
            let ws = Tensor::zeros((8, 4, k, k), candle_core::DType::F32, &dev)?;
            let g = Geometry::new(&xs, &ws, None, stride, padding)?;
            assert!(!reads_in_place(&g), "{g:?}");
        }
        Ok(())
    }
}
