//! The weight gradient of a convolution on AVX-512 CPUs, dW = Σ_images dY · Xᵀ with X the
//! column matrix, read in place from the (padded) input instead of written out by im2col.
//!
//! Why our own: with im2col + `gemm` this product was the largest share of a decoder training
//! step left on the AVX2 `gemm` kernel (it is a third of a step's convolution work, at every
//! resolution and stride), and it paid for the 9x column matrix twice (im2col, then gemm's
//! packing of it). Here a tile is 32 output channels (two zmm registers of dY, transposed into
//! pixel-major panels once per block) by 12 patch entries, whose values at each pixel are single
//! floats of the input, broadcast: any stride and any image width work, since nothing needs 32
//! consecutive pixels. The tile accumulates over a block of pixels, then adds into dWᵀ.

use super::conv::Geometry;
use super::conv_gemm::PixelSource;
use super::kernel_io::SharedMut;
use rayon::prelude::*;

/// Output channels per tile: two 16-float registers.
const CO_TILE: usize = 32;
/// Patch entries per tile.
const KK_TILE: usize = 12;
/// Pixels per block: the block's transposed dY panel (16 KB) stays in L1 while the tiles of a
/// task's patch entries sweep it.
const PIXEL_BLOCK: usize = 128;

/// One unit of parallel work: a 32-channel tile for a range of patch-entry tiles, over the whole
/// batch. Tasks own disjoint regions of dWᵀ.
#[derive(Clone, Copy)]
struct Task {
    co_tile: usize,
    kk_tiles: (usize, usize),
}

fn tasks(g: &Geometry, threads: usize) -> Vec<Task> {
    let co_tiles = g.cout.div_ceil(CO_TILE);
    let kk_tiles = g.patch_len().div_ceil(KK_TILE);
    let chunks = (4 * threads).div_ceil(co_tiles).clamp(1, kk_tiles);
    let per_chunk = kk_tiles.div_ceil(chunks);
    let mut out = Vec::new();
    for co_tile in 0..co_tiles {
        for c in 0..chunks {
            let (t0, t1) = (c * per_chunk, ((c + 1) * per_chunk).min(kk_tiles));
            if t0 < t1 {
                out.push(Task {
                    co_tile,
                    kk_tiles: (t0, t1),
                });
            }
        }
    }
    out
}

/// Whether `weight_gradient` is faster than im2col + gemm here. Measured on the decoder's
/// shapes (batch 2, `conv::tests::kernel_timing`): 0.80-0.89x the time for 3x3 convolutions at
/// 64 and 32 px on 2 threads (a tie on 1), but slower where each tile sums over few pixels or few
/// patch entries (8 px: 1.6x; 1x1: 1.5-1.9x), where transposing dY and storing the tile cost more
/// than the sums.
pub(super) fn is_faster(g: &Geometry) -> bool {
    g.kh * g.kw > 1 && g.out_pixels() >= 256
}

/// dW (C_out, C_in·kh·kw) summed over the batch, for contiguous f32 `x` (B, C_in, H, W) and
/// `dy` (B, C_out, H', W'). Call only where `conv_gemm::supported()` holds.
pub(super) fn weight_gradient(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
    assert!(
        super::conv_gemm::supported(),
        "conv_weight_grad needs AVX-512"
    );
    let k = g.patch_len();
    let mut dw = vec![0f32; g.cout * k];
    if g.batch == 0 || g.out_pixels() == 0 || k == 0 || g.cout == 0 {
        return dw;
    }
    let source = PixelSource::new(g, x);
    let co_padded = g.cout.div_ceil(CO_TILE) * CO_TILE;
    // dWᵀ (K, C_out rounded up to whole tiles): each tile row is 32 consecutive floats.
    let mut dwt = vec![0f32; k * co_padded];
    let dwt_ptr = SharedMut(dwt.as_mut_ptr());
    tasks(g, rayon::current_num_threads())
        .par_iter()
        .with_max_len(1)
        .for_each(|task| {
            // SAFETY: each task writes only rows of its own patch-entry tiles, columns of its
            // own channel tile, of `dwt`; tasks share no (row, column) pair.
            run_task(g, &source, dy, task, co_padded, dwt_ptr);
        });
    for (kk, row) in dwt.chunks_exact(co_padded).enumerate() {
        for (co, &v) in row[..g.cout].iter().enumerate() {
            dw[co * k + kk] = v;
        }
    }
    dw
}

fn run_task(
    g: &Geometry,
    source: &PixelSource,
    dy: &[f32],
    task: &Task,
    co_padded: usize,
    dwt: SharedMut,
) {
    let k = g.patch_len();
    let pixels = g.out_pixels();
    let co0 = task.co_tile * CO_TILE;
    let channels = CO_TILE.min(g.cout - co0);
    let mut panel = vec![0f32; PIXEL_BLOCK * CO_TILE];
    let mut bases = vec![0usize; PIXEL_BLOCK];
    for n in 0..g.batch {
        let image = source.image(n);
        let dy_image = &dy[n * g.out_image()..(n + 1) * g.out_image()];
        for p0 in (0..pixels).step_by(PIXEL_BLOCK) {
            let len = PIXEL_BLOCK.min(pixels - p0);
            // dY of this block, pixel-major: panel[p * 32 + c] = dY[co0 + c][p0 + p].
            for c in 0..CO_TILE {
                if c < channels {
                    let row = &dy_image[(co0 + c) * pixels + p0..(co0 + c) * pixels + p0 + len];
                    for (p, &v) in row.iter().enumerate() {
                        panel[p * CO_TILE + c] = v;
                    }
                } else {
                    for p in 0..len {
                        panel[p * CO_TILE + c] = 0.0;
                    }
                }
            }
            for (p, base) in bases[..len].iter_mut().enumerate() {
                *base = source.base(p0 + p);
            }
            for t in task.kk_tiles.0..task.kk_tiles.1 {
                let kk0 = t * KK_TILE;
                let rows = KK_TILE.min(k - kk0);
                let mut offsets = [source.offsets[kk0]; KK_TILE];
                offsets[..rows].copy_from_slice(&source.offsets[kk0..kk0 + rows]);
                // SAFETY: every base + offset is a pixel of this image's source (the geometry's
                // windows lie inside the padded input); rows kk0..kk0+rows, columns co0..co0+32
                // of dWᵀ belong to this task.
                unsafe {
                    tile(
                        &panel[..len * CO_TILE],
                        image,
                        &bases[..len],
                        &offsets,
                        dwt.get().add(kk0 * co_padded + co0),
                        co_padded,
                        rows,
                    );
                }
            }
        }
    }
}

/// dWᵀ[rows x 32] += Σ_p X[offsets[j] + bases[p]] · panel[p] over the block's pixels.
///
/// # Safety
/// The CPU has AVX-512 F; `image[offsets[j] + bases[p]]` is in bounds for every j and p (checked
/// in debug builds), and `c` addresses `rows` rows of 32 writable floats at stride `ldc`.
unsafe fn tile(
    panel: &[f32],
    image: &[f32],
    bases: &[usize],
    offsets: &[usize; KK_TILE],
    c: *mut f32,
    ldc: usize,
    rows: usize,
) {
    debug_assert!(bases
        .iter()
        .all(|&b| offsets.iter().all(|&o| b + o < image.len())));
    #[cfg(target_arch = "x86_64")]
    // SAFETY: forwarded from the caller.
    unsafe {
        tile_avx512(panel, image.as_ptr(), bases, offsets, c, ldc, rows)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (panel, image, bases, offsets, c, ldc, rows);
        unreachable!("conv_weight_grad runs only where conv_gemm::supported() holds")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_avx512(
    panel: &[f32],
    image: *const f32,
    bases: &[usize],
    offsets: &[usize; KK_TILE],
    c: *mut f32,
    ldc: usize,
    rows: usize,
) {
    use std::arch::x86_64::*;
    assert!(panel.len() >= bases.len() * CO_TILE && rows <= KK_TILE);
    let mut acc = [[_mm512_setzero_ps(); 2]; KK_TILE];
    let pa = panel.as_ptr();
    for (p, &base) in bases.iter().enumerate() {
        // SAFETY: p < bases.len() bounds the panel (asserted); the pixel reads are the caller's.
        unsafe {
            let a0 = _mm512_loadu_ps(pa.add(p * CO_TILE));
            let a1 = _mm512_loadu_ps(pa.add(p * CO_TILE + 16));
            let px = image.add(base);
            for (acc, &off) in acc.iter_mut().zip(offsets) {
                let b = _mm512_set1_ps(*px.add(off));
                acc[0] = _mm512_fmadd_ps(a0, b, acc[0]);
                acc[1] = _mm512_fmadd_ps(a1, b, acc[1]);
            }
        }
    }
    for (j, acc) in acc.iter().enumerate().take(rows) {
        // SAFETY: row j < rows of the caller's region, 32 floats.
        unsafe {
            let row = c.add(j * ldc);
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc[0]));
            let row = row.add(16);
            _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc[1]));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::conv_gemm::tests::values;
    use candle_core::{Device, Tensor};

    /// The definition: dW[co][ci][i][j] = Σ_n Σ_(r,c) dY[n][co][r][c] · x[n][ci][r·s+i-p][c·s+j-p].
    fn direct(g: &Geometry, x: &[f32], dy: &[f32]) -> Vec<f32> {
        let mut dw = vec![0f32; g.cout * g.patch_len()];
        for co in 0..g.cout {
            for ci in 0..g.cin {
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let mut s = 0f64;
                        for n in 0..g.batch {
                            for r in 0..g.ho {
                                for c in 0..g.wo {
                                    let ih = (r * g.stride + i) as isize - g.padding as isize;
                                    let iw = (c * g.stride + j) as isize - g.padding as isize;
                                    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize
                                    {
                                        continue;
                                    }
                                    let xv = x[((n * g.cin + ci) * g.h + ih as usize) * g.w
                                        + iw as usize];
                                    let d = dy[((n * g.cout + co) * g.ho + r) * g.wo + c];
                                    s += (xv * d) as f64;
                                }
                            }
                        }
                        dw[((co * g.cin + ci) * g.kh + i) * g.kw + j] = s as f32;
                    }
                }
            }
        }
        dw
    }

    #[test]
    fn matches_the_definition() -> candle_core::Result<()> {
        if !super::super::conv_gemm::supported() {
            eprintln!("skipped: this CPU has no AVX-512");
            return Ok(());
        }
        // (batch, cin, h, w, cout, k, stride, padding): partial channel and entry tiles, more
        // pixels than one block, strides, odd sizes, pointwise, padding wider than half the
        // kernel.
        let cases = [
            (2, 3, 9, 7, 5, 3, 1, 1),
            (1, 20, 17, 13, 40, 3, 2, 1),
            (3, 4, 16, 16, 33, 3, 1, 1),
            (1, 30, 6, 5, 7, 1, 1, 0),
            (2, 2, 4, 4, 3, 3, 1, 2),
            (1, 5, 8, 64, 64, 3, 1, 1),
        ];
        for (batch, cin, h, w, cout, k, stride, padding) in cases {
            let dev = Device::Cpu;
            let xs = Tensor::from_vec(values(batch * cin * h * w, 1), (batch, cin, h, w), &dev)?;
            let ws = Tensor::zeros((cout, cin, k, k), candle_core::DType::F32, &dev)?;
            let g = Geometry::new(&xs, &ws, None, stride, padding)?;
            let x = xs.flatten_all()?.to_vec1::<f32>()?;
            let dy = values(batch * g.out_image(), 5);
            let want = direct(&g, &x, &dy);
            let got = weight_gradient(&g, &x, &dy);
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0f32, f32::max);
            assert!(
                worst < 1e-4,
                "case {:?}: max rel diff {worst}",
                (batch, cin, h, w, cout, k, stride, padding)
            );
        }
        Ok(())
    }
}
