//! The convolutions of `conv_gemm` in bfloat16 products with f32 sums, for inference on CPUs
//! with AVX-512 BF16 (opt-in: [`super::MatmulPrecision::Bf16`]).
//!
//! Why: `vdpbf16ps` multiplies 32 pairs of bf16 and adds them into 16 f32 sums per instruction,
//! twice the multiply-adds of an f32 FMA in the same register width. The kernel is `conv_gemm`'s
//! with the reduction taken two entries at a time: the input is copied once, zero-padded, as
//! bf16 with each pair of channels interleaved (one 32-bit lane holds channel 2c and 2c+1 of one
//! pixel), so 16 consecutive lanes are 16 output pixels' pairs for one (channel pair, i, j)
//! entry, read in place as in the f32 kernel; the weights are packed as pairs too. Products of
//! two bf16 are exact in f32 and the sums stay f32; what changes is the rounding of each input
//! and weight to 8 significant bits (relative error up to 2^-9 each).

use super::conv::Geometry;
use super::conv_gemm::{output_with_bias, tasks, Task, MR, NR};
use super::kernel_io::SharedMut;
use super::packed_weights::PackedWeights;
use rayon::prelude::*;

/// Entry pairs per reduction block: the block's packed weights for one tile (12 KB) stay in L1.
const KC: usize = 256;

/// Whether this CPU has the instructions (AVX-512 F and BF16).
pub(super) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `v` rounded to the nearest bfloat16 (ties to even), as its 16 bits.
pub(super) fn to_bf16(v: f32) -> u16 {
    let bits = v.to_bits();
    if v.is_nan() {
        return ((bits >> 16) | 0x40) as u16;
    }
    let rounding = 0x7FFF + ((bits >> 16) & 1);
    (bits.wrapping_add(rounding) >> 16) as u16
}

/// Channels 2c (low half) and 2c + 1 (high half) of one pixel.
fn pair(lo: f32, hi: f32) -> u32 {
    u32::from(to_bf16(lo)) | (u32::from(to_bf16(hi)) << 16)
}

/// The input as zero-padded planes of channel pairs: entry (pair, i, j) of output pixel p of
/// image n is `image(n)[offsets[entry] + base(p)]`.
struct PairSource {
    data: Vec<u32>,
    image_len: usize,
    row_len: usize,
    out_row_len: usize,
    offsets: Vec<usize>,
}

impl PairSource {
    fn new(g: &Geometry, x: &[f32]) -> Self {
        let pairs = g.cin.div_ceil(2);
        let (hp, wp) = (g.h + 2 * g.padding, g.w + 2 * g.padding);
        let plane = g.h * g.w;
        let mut data = vec![0u32; g.batch * pairs * hp * wp];
        data.par_chunks_mut(hp * wp)
            .enumerate()
            .for_each(|(index, dst)| {
                let (n, c) = (index / pairs, 2 * (index % pairs));
                let channel = |c: usize| &x[(n * g.cin + c) * plane..(n * g.cin + c + 1) * plane];
                let lo = channel(c);
                let hi = (c + 1 < g.cin).then(|| channel(c + 1));
                for r in 0..g.h {
                    let at = (r + g.padding) * wp + g.padding;
                    let row = &mut dst[at..at + g.w];
                    let lo = &lo[r * g.w..(r + 1) * g.w];
                    match hi {
                        Some(hi) => {
                            let hi = &hi[r * g.w..(r + 1) * g.w];
                            for ((d, &a), &b) in row.iter_mut().zip(lo).zip(hi) {
                                *d = pair(a, b);
                            }
                        }
                        None => {
                            for (d, &a) in row.iter_mut().zip(lo) {
                                *d = pair(a, 0.0);
                            }
                        }
                    }
                }
            });
        let mut offsets = Vec::with_capacity(pairs * g.kh * g.kw);
        for c in 0..pairs {
            for i in 0..g.kh {
                for j in 0..g.kw {
                    offsets.push(c * hp * wp + i * wp + j);
                }
            }
        }
        Self {
            data,
            image_len: pairs * hp * wp,
            row_len: wp,
            out_row_len: g.wo,
            offsets,
        }
    }

    fn image(&self, n: usize) -> &[u32] {
        &self.data[n * self.image_len..(n + 1) * self.image_len]
    }

    /// Where output pixel p's window starts in an image's planes (stride 1).
    fn base(&self, p: usize) -> usize {
        (p / self.out_row_len) * self.row_len + p % self.out_row_len
    }
}

/// The weights (C_out, C_in, kh, kw) as pairs of channels, packed as the microkernel reads them:
/// for each block of KC entries (pair, i, j), for each panel of NR output channels, for each
/// entry, NR pairs (zero past C_out and past an odd C_in).
fn pack_weights(g: &Geometry, weight: &[f32]) -> Vec<u32> {
    let pairs = g.cin.div_ceil(2);
    let taps = g.kh * g.kw;
    let entries = pairs * taps;
    let panels = g.cout.div_ceil(NR);
    let w = |co: usize, c: usize, tap: usize| {
        if c < g.cin {
            weight[(co * g.cin + c) * taps + tap]
        } else {
            0.0
        }
    };
    let mut packed = vec![0u32; entries * panels * NR];
    let mut at = 0;
    for k0 in (0..entries).step_by(KC) {
        let k1 = (k0 + KC).min(entries);
        for panel in 0..panels {
            for entry in k0..k1 {
                let (c, tap) = (2 * (entry / taps), entry % taps);
                for j in 0..NR.min(g.cout - panel * NR) {
                    let co = panel * NR + j;
                    packed[at + (entry - k0) * NR + j] = pair(w(co, c, tap), w(co, c + 1, tap));
                }
            }
            at += (k1 - k0) * NR;
        }
    }
    packed
}

/// (B, C_out, H', W') = bias + conv(x, weight) with bf16 products. Call only where
/// `supported()` and `conv_gemm::reads_in_place(g)` hold.
/// `cache` keeps the packed weights across calls (see `packed_weights`).
pub(super) fn forward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    cache: Option<&PackedWeights>,
) -> Vec<f32> {
    assert!(
        supported() && super::conv_gemm::reads_in_place(g),
        "conv_bf16::forward called for {g:?}"
    );
    let pixels = g.out_pixels();
    let mut out = output_with_bias(g, bias);
    if pixels == 0 || g.cout == 0 || g.cin == 0 {
        return out;
    }
    let packed = PackedWeights::bf16(cache, || pack_weights(g, weight));
    let packed = &packed[..];
    let source = PairSource::new(g, x);
    let out_ptr = SharedMut(out.as_mut_ptr());
    tasks(g, rayon::current_num_threads())
        .par_iter()
        .with_max_len(1)
        .for_each(|task| {
            // SAFETY: tasks cover disjoint (image, pixel range, channel range) regions of `out`,
            // and `run_task` writes only inside its own region.
            let out_image = unsafe { out_ptr.get().add(task.image * g.out_image()) };
            run_task(g, &source, packed, task, out_image);
        });
    out
}

fn run_task(g: &Geometry, source: &PairSource, packed: &[u32], task: &Task, out: *mut f32) {
    let entries = source.offsets.len();
    let pixels = g.out_pixels();
    let panels_total = g.cout.div_ceil(NR);
    let image = source.image(task.image);
    let (px0, px1) = task.pixels;
    for k0 in (0..entries).step_by(KC) {
        let k1 = (k0 + KC).min(entries);
        let klen = k1 - k0;
        let w_block = &packed[k0 * panels_total * NR..];
        for panel in task.panels.0..task.panels.1 {
            let b = &w_block[panel * klen * NR..(panel + 1) * klen * NR];
            let co0 = panel * NR;
            let rows = NR.min(g.cout - co0);
            for p in (px0..px1).step_by(MR) {
                let base = source.base(p);
                // SAFETY: as in `conv_gemm::run_task`: whole tiles within one output row (or
                // contiguous pixels of a pointwise convolution), so every lane read lies inside
                // this image's planes, and the tile's output lies inside this task's region.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    tile_avx512_bf16(
                        klen,
                        image.as_ptr().add(base),
                        &source.offsets[k0..k1],
                        b,
                        out.add(co0 * pixels + p),
                        pixels,
                        rows,
                    );
                }
                #[cfg(not(target_arch = "x86_64"))]
                {
                    let _ = (base, b, rows, image);
                    unreachable!("conv_bf16::forward runs only where supported() holds")
                }
            }
        }
    }
}

/// C[rows x 32] += A · B for one tile, two reduction entries per step: lane t of
/// `a + offsets[kk]` holds both entries' bf16 for pixel t, and `b[kk * NR + j]` both weights of
/// output channel j.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `a + offsets[kk] .. + 32` is readable for every kk < klen,
/// and `c` addresses `rows` (at most NR) rows of 32 writable floats at stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn tile_avx512_bf16(
    klen: usize,
    a: *const u32,
    offsets: &[usize],
    b: &[u32],
    c: *mut f32,
    ldc: usize,
    rows: usize,
) {
    use std::arch::x86_64::*;
    assert!(offsets.len() >= klen && b.len() >= klen * NR && rows <= NR);
    let mut acc = [[_mm512_setzero_ps(); 2]; NR];
    let pb = b.as_ptr();
    for (k, &off) in offsets[..klen].iter().enumerate() {
        // SAFETY: the caller guarantees the lane reads; k < klen bounds `b`. The transmutes
        // reinterpret 512 bits of packed bf16 pairs, which is what they are.
        unsafe {
            let a0: __m512bh = std::mem::transmute(_mm512_loadu_epi32(a.add(off) as *const i32));
            let a1: __m512bh =
                std::mem::transmute(_mm512_loadu_epi32(a.add(off + 16) as *const i32));
            let bk = pb.add(k * NR);
            for (j, acc) in acc.iter_mut().enumerate() {
                let bj: __m512bh = std::mem::transmute(_mm512_set1_epi32(*bk.add(j) as i32));
                acc[0] = _mm512_dpbf16_ps(acc[0], a0, bj);
                acc[1] = _mm512_dpbf16_ps(acc[1], a1, bj);
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
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    fn from_bf16(bits: u16) -> f32 {
        f32::from_bits(u32::from(bits) << 16)
    }

    #[test]
    fn rounds_to_the_nearest_bfloat16() {
        assert_eq!(to_bf16(1.0), 0x3F80);
        // 1 + 2^-8 lies halfway between 1 and 1 + 2^-7: ties go to the even neighbour, 1.
        assert_eq!(from_bf16(to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        assert_eq!(from_bf16(to_bf16(1.0 + 3.0 / 256.0)), 1.0 + 4.0 / 256.0);
        assert_eq!(from_bf16(to_bf16(-2.5)), -2.5);
        assert!(from_bf16(to_bf16(f32::NAN)).is_nan());
    }

    /// The convolution of the bf16-rounded operands: products of two bf16 are exact, so the
    /// f32 definition on rounded inputs is what the kernel computes, up to summation order.
    fn reference(g: &Geometry, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
        let round = |v: &f32| from_bf16(to_bf16(*v));
        let x: Vec<f32> = x.iter().map(round).collect();
        let w: Vec<f32> = w.iter().map(round).collect();
        super::super::conv_gemm::tests::direct(g, &x, &w, bias)
    }

    #[test]
    fn matches_the_rounded_definition_on_every_edge() -> candle_core::Result<()> {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return Ok(());
        }
        // (batch, cin, h, w, cout, k, padding): odd channel counts, a partial channel tile,
        // reductions longer than one KC block, pointwise on rows shorter than a tile.
        let cases = [
            (2, 5, 32, 32, 13, 3, 1),
            (1, 3, 4, 64, 25, 3, 1),
            (1, 120, 6, 32, 12, 3, 1),
            (1, 301, 8, 4, 25, 1, 0),
            (2, 1, 2, 64, 24, 3, 1),
        ];
        for (i, &(batch, cin, h, w, cout, k, padding)) in cases.iter().enumerate() {
            let n = batch * cin * h * w;
            let x: Vec<f32> = (0..n)
                .map(|v| ((v * 7919) % 2001) as f32 / 1000.0 - 1.0)
                .collect();
            let wn = cout * cin * k * k;
            let wv: Vec<f32> = (0..wn)
                .map(|v| ((v * 104_729) % 1999) as f32 / 999.0 - 1.0)
                .collect();
            let bias: Vec<f32> = (0..cout).map(|c| c as f32 * 0.1 - 0.5).collect();
            let xs = Tensor::from_vec(x.clone(), (batch, cin, h, w), &Device::Cpu)?;
            let ws = Tensor::from_vec(wv.clone(), (cout, cin, k, k), &Device::Cpu)?;
            let g = Geometry::new(&xs, &ws, None, 1, padding)?;
            assert!(super::super::conv_gemm::reads_in_place(&g), "case {i}");
            let got = forward(&g, &x, &wv, Some(&bias), None);
            let cache = PackedWeights::default();
            for _ in 0..2 {
                assert!(forward(&g, &x, &wv, Some(&bias), Some(&cache)) == got);
            }
            let want = reference(&g, &x, &wv, Some(&bias));
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs() / (1.0 + b.abs()))
                .fold(0f32, f32::max);
            assert!(worst < 1e-4, "case {i}: relative error {worst}");
        }
        Ok(())
    }
}
