//! 3x3 stride-1 convolutions as Winograd F(2x2, 3x3) on AVX-512 CPUs: 16 products per 2x2
//! output tile and channel pair instead of 36.
//!
//! Why: the direct kernel (`conv_gemm`) already ran the decoder's convolutions at ~85% of this
//! CPU's nominal peak, as PyTorch's oneDNN does, so at equal multiplies the two could only tie.
//! F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks", 2016) does
//! 2.25x fewer. The output is cut into blocks of 2x2 tiles; for each block, on one thread, the
//! 4x4 input tiles are transformed (V = Bᵀ d B, additions only), each of the 16 transform
//! positions ξ is one product M_ξ (C_out x tiles) = U_ξ (C_out x C_in) · V_ξ (C_in x tiles) on
//! `conv_gemm`'s microkernel, and the tiles are transformed back (Y = Aᵀ M A). Blocks are sized
//! for L2 (up to ~128 channels; wider layers take the 32-tile minimum): transforming the whole
//! image first and multiplying after spent more time moving V and M through memory than the
//! products saved. The weights' transform (U = G g Gᵀ) is kept
//! with a loaded layer's packed weights (`packed_weights`). Measured per convolution (batch 2,
//! 1 thread, against the direct kernel): 64 px 64 channels 2.1x faster, 32 px 128 channels
//! 1.6x, 16 px 192 channels 1.5x, forward and input gradient alike (the input gradient of a 3x3
//! stride-1 convolution is one too).
//! Rounding: the transforms add and subtract values of similar size; the test bounds the
//! difference from the definition by 2e-6 per multiply-add of the sum (the 64 px decoder's
//! output stays within 5e-6 of PyTorch's).

use super::conv::Geometry;
use super::conv_gemm::{output_with_bias, supported, tile, KC, MC, MR, NR};
use super::kernel_io::SharedMut;
use super::packed_weights::PackedWeights;
use rayon::prelude::*;

/// Transform positions of a 4x4 input tile.
const POSITIONS: usize = 16;

/// Whether the Winograd path is on: `UNCLIP_CONV_WINOGRAD=0` turns it off (the direct kernels
/// then compute every convolution, e.g. to compare outputs bit for bit with an older build).
pub(super) fn enabled() -> bool {
    static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("UNCLIP_CONV_WINOGRAD").map_or(true, |v| v != "0"))
}

/// Whether `forward` computes this convolution: 3x3, stride 1, an even output of at least one
/// microkernel tile's worth of 2x2 tiles (16 x 8 pixels) on an AVX-512 CPU. Smaller outputs
/// (the 8 px level) would leave part of every product empty: the direct kernels measured faster.
pub(super) fn applies(g: &Geometry) -> bool {
    supported()
        && (g.kh, g.kw, g.stride) == (3, 3, 1)
        && g.ho.is_multiple_of(2)
        && g.wo.is_multiple_of(2)
        && (g.ho / 2) * (g.wo / 2) >= MR
}

/// The output's 2x2 tiles, `rows` x `cols` per image, taken `block` at a time (a whole number
/// of microkernel tiles).
#[derive(Clone, Copy)]
struct Tiles {
    rows: usize,
    cols: usize,
    block: usize,
}

/// Bytes of one block's V (16, C_in, tiles) or M (16, C_out, tiles), the larger, meant to stay
/// in L2 while its 16 products run (wider layers than ~128 channels exceed it at the minimum
/// block of 32 tiles).
const BLOCK_BYTES: usize = 256 << 10;

/// Floats readable past the end of a padded input row: a 16-tile group reads 32 columns from
/// its start and 32 from two columns on, whatever its length.
const ROW_SLACK: usize = 32;

impl Tiles {
    fn of(g: &Geometry) -> Self {
        let (rows, cols) = (g.ho / 2, g.wo / 2);
        let fit = BLOCK_BYTES / (POSITIONS * 4 * g.cin.max(g.cout).max(1)) / MR * MR;
        let block = fit.clamp(MR, MC).min((rows * cols).div_ceil(MR) * MR);
        Self { rows, cols, block }
    }

    fn count(&self) -> usize {
        self.rows * self.cols
    }

    /// Floats between one channel's row of a block's V or M and the next: one cache line more
    /// than the block, since at a power-of-two distance the microkernel's reads of consecutive
    /// channels fall in one cache set.
    fn ld(&self) -> usize {
        self.block + 16
    }
}

/// U = G g Gᵀ for every (output, input) channel pair, as 16 matrices (C_out, C_in), each laid
/// out as `conv_gemm::pack_weights` packs a (C_out, K) matrix for the microkernel. A trained
/// layer pays this on every call, so both steps run on every thread and in memory order.
fn transform_weights(g: &Geometry, weight: &[f32]) -> Vec<f32> {
    let (cout, cin) = (g.cout, g.cin);
    // U as (C_in, ξ, C_out): each input channel's block written by one task.
    let mut u = vec![0f32; cin * POSITIONS * cout];
    u.par_chunks_mut(POSITIONS * cout)
        .enumerate()
        .for_each(|(ci, u)| {
            for co in 0..cout {
                let kernel = &weight[(co * cin + ci) * 9..][..9];
                for (i, row) in g_times_kernel(kernel).iter().enumerate() {
                    for (j, &v) in g_times(*row).iter().enumerate() {
                        u[(i * 4 + j) * cout + co] = v;
                    }
                }
            }
        });
    let panels = cout.div_ceil(NR);
    let mut packed = vec![0f32; POSITIONS * cin * panels * NR];
    packed
        .par_chunks_mut(cin * panels * NR)
        .enumerate()
        .for_each(|(xi, packed)| {
            let mut at = 0;
            for k0 in (0..cin).step_by(KC) {
                let k1 = (k0 + KC).min(cin);
                for panel in 0..panels {
                    let (co0, width) = (panel * NR, NR.min(cout - panel * NR));
                    for ci in k0..k1 {
                        let src = &u[(ci * POSITIONS + xi) * cout + co0..][..width];
                        packed[at..at + width].copy_from_slice(src);
                        at += NR;
                    }
                }
            }
        });
    packed
}

/// G · (a, b, c) for G = [[1, 0, 0], [½, ½, ½], [½, -½, ½], [0, 0, 1]].
fn g_times([a, b, c]: [f32; 3]) -> [f32; 4] {
    [a, 0.5 * (a + b + c), 0.5 * (a - b + c), c]
}

/// G · w (4 x 3) for a 3x3 kernel w (row-major).
fn g_times_kernel(w: &[f32]) -> [[f32; 3]; 4] {
    let mut out = [[0f32; 3]; 4];
    for j in 0..3 {
        let col = g_times([w[j], w[3 + j], w[6 + j]]);
        for i in 0..4 {
            out[i][j] = col[i];
        }
    }
    out
}

/// (B, C_out, H', W') = bias + conv(x, weight). Call only where `applies(g)` holds; `cache`
/// keeps the transformed weights across calls.
pub(super) fn forward(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    cache: Option<&PackedWeights>,
) -> Vec<f32> {
    assert!(applies(g), "conv_winograd::forward called for {g:?}");
    if g.batch * g.out_image() == 0 || g.cin == 0 {
        return output_with_bias(g, bias);
    }
    let mut out = vec![0f32; g.batch * g.out_image()];
    let packed = PackedWeights::winograd(cache, || transform_weights(g, weight));
    let packed = &packed[..];
    let tiles = Tiles::of(g);
    let blocks = tiles.count().div_ceil(tiles.block);
    let out_ptr = SharedMut(out.as_mut_ptr());
    (0..g.batch * blocks)
        .into_par_iter()
        .with_max_len(1)
        .for_each(|task| {
            let (image, block) = (task / blocks, task % blocks);
            let first = block * tiles.block;
            let len = tiles.block.min(tiles.count() - first);
            let x = &x[image * g.in_image()..(image + 1) * g.in_image()];
            BLOCK_SCRATCH.with_borrow_mut(|scratch| {
                let (v, m) = scratch.sized(g, tiles);
                transform_input(g, x, tiles, first, len, v);
                multiply(g, v, packed, tiles, len, m);
                // SAFETY: this task writes only the output pixels of its own tiles of `image`.
                unsafe {
                    let out = out_ptr.get().add(image * g.out_image());
                    transform_output(g, m, bias, tiles, first, len, out);
                }
            });
        });
    out
}

/// One thread's V and M for a block, reused across blocks and calls.
#[derive(Default)]
struct BlockScratch {
    v: Vec<f32>,
    m: Vec<f32>,
}

impl BlockScratch {
    fn sized(&mut self, g: &Geometry, tiles: Tiles) -> (&mut [f32], &mut [f32]) {
        let (v_len, m_len) = (
            POSITIONS * g.cin * tiles.ld(),
            POSITIONS * g.cout * tiles.ld(),
        );
        if self.v.len() < v_len {
            self.v.resize(v_len, 0.0);
        }
        if self.m.len() < m_len {
            self.m.resize(m_len, 0.0);
        }
        (&mut self.v[..v_len], &mut self.m[..m_len])
    }
}

thread_local! {
    static BLOCK_SCRATCH: std::cell::RefCell<BlockScratch> = Default::default();
}

/// V (ξ, C_in, tile) of tiles first..first + len of one image: Bᵀ d B of each 4x4 tile d of
/// the zero-padded input, Bᵀ = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]
/// applied to rows, then to columns. Entries past `len` are zeroed.
fn transform_input(g: &Geometry, x: &[f32], tiles: Tiles, first: usize, len: usize, v: &mut [f32]) {
    let ld = tiles.ld();
    // Each padded input row, with room for the 16-tile groups' reads past its end.
    let width = 2 * tiles.cols + 2 + ROW_SLACK;
    let mut rows = vec![0f32; 4 * width];
    for ci in 0..g.cin {
        let plane = &x[ci * g.h * g.w..(ci + 1) * g.h * g.w];
        for_each_tile_row(tiles, first, len, |ty, (tx0, tx1), at| {
            for r in 0..4 {
                let row = &mut rows[r * width..(r + 1) * width];
                row.fill(0.0);
                if let Some(i) = (2 * ty + r).checked_sub(g.padding).filter(|&i| i < g.h) {
                    // Padded column c is input column c - padding (the padded row, w + 2p =
                    // W' + 2 = 2 · cols + 2 floats, fits in front of the slack).
                    row[g.padding..g.padding + g.w].copy_from_slice(&plane[i * g.w..(i + 1) * g.w]);
                }
            }
            // SAFETY: `applies` checked AVX-512 F; each row holds 2 · cols + 2 + ROW_SLACK
            // floats; the writes are masked to tiles at..at + (tx1 - tx0) of V's rows.
            unsafe {
                let out = v.as_mut_ptr().add(ci * ld + at);
                transform_tile_row(&rows, width, (tx0, tx1), out, g.cin * ld)
            };
        });
        for xi in 0..POSITIONS {
            let row = (xi * g.cin + ci) * ld;
            v[row + len..row + len.next_multiple_of(MR)].fill(0.0);
        }
    }
}

/// Calls `f(ty, (tx0, tx1), at)` for each row of tiles among first..first + len: tiles tx0..tx1
/// of tile row ty, at position `at` within the block.
fn for_each_tile_row(
    tiles: Tiles,
    first: usize,
    len: usize,
    mut f: impl FnMut(usize, (usize, usize), usize),
) {
    let mut t = first;
    while t < first + len {
        let (ty, tx0) = (t / tiles.cols, t % tiles.cols);
        let tx1 = tiles.cols.min(tx0 + first + len - t);
        f(ty, (tx0, tx1), t - first);
        t += tx1 - tx0;
    }
}

/// The 16 transformed values of tiles tx0..tx1 of one tile row from its 4 padded input rows
/// (`width` floats apart), 16 tiles at a time: position (i, j) of tile t goes to
/// `v + (4 i + j) · xi_stride + t - tx0`.
///
/// # Safety
/// The CPU has AVX-512 F; each row holds 2 · tx1 + 34 readable floats; the writes go to
/// `v + ξ · xi_stride + t` for t < tx1 - tx0 only.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_tile_row(
    rows: &[f32],
    width: usize,
    (tx0, tx1): (usize, usize),
    v: *mut f32,
    xi_stride: usize,
) {
    use std::arch::x86_64::*;
    let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    let odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    let n = tx1 - tx0;
    for t in (0..n).step_by(16) {
        let mask: __mmask16 = if n - t >= 16 {
            0xffff
        } else {
            (1u16 << (n - t)) - 1
        };
        let col = 2 * (tx0 + t);
        // Per input row r: columns 2t, 2t + 1, 2t + 2, 2t + 3 of the 16 tiles.
        let mut cols = [[_mm512_setzero_ps(); 4]; 4];
        for (r, c) in cols.iter_mut().enumerate() {
            // SAFETY: reads col .. col + 34 of row r (caller).
            unsafe {
                let p = rows.as_ptr().add(r * width + col);
                let (lo, hi) = (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)));
                let (lo2, hi2) = (_mm512_loadu_ps(p.add(2)), _mm512_loadu_ps(p.add(18)));
                c[0] = _mm512_permutex2var_ps(lo, even, hi);
                c[1] = _mm512_permutex2var_ps(lo, odd, hi);
                c[2] = _mm512_permutex2var_ps(lo2, even, hi2);
                c[3] = _mm512_permutex2var_ps(lo2, odd, hi2);
            }
        }
        // Bᵀ over rows: row i of (Bᵀ d), each of its 4 columns.
        let [d0, d1, d2, d3] = cols;
        let combined: [[__m512; 4]; 4] = [
            std::array::from_fn(|k| _mm512_sub_ps(d0[k], d2[k])),
            std::array::from_fn(|k| _mm512_add_ps(d1[k], d2[k])),
            std::array::from_fn(|k| _mm512_sub_ps(d2[k], d1[k])),
            std::array::from_fn(|k| _mm512_sub_ps(d1[k], d3[k])),
        ];
        for (i, c) in combined.iter().enumerate() {
            // Bᵀ over columns of row i of (Bᵀ d).
            let out = [
                _mm512_sub_ps(c[0], c[2]),
                _mm512_add_ps(c[1], c[2]),
                _mm512_sub_ps(c[2], c[1]),
                _mm512_sub_ps(c[1], c[3]),
            ];
            for (j, &x) in out.iter().enumerate() {
                // SAFETY: tiles t..t + 16 masked to n (caller).
                unsafe { _mm512_mask_storeu_ps(v.add((i * 4 + j) * xi_stride + t), mask, x) };
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_tile_row(_: &[f32], _: usize, _: (usize, usize), _: *mut f32, _: usize) {
    unreachable!("conv_winograd runs only where AVX-512 is")
}

/// M (ξ, C_out, tile) = U_ξ · V_ξ for the block's 16 positions, over its first `len` tiles
/// rounded up to a microkernel tile.
fn multiply(g: &Geometry, v: &[f32], packed: &[f32], tiles: Tiles, len: usize, m: &mut [f32]) {
    let ld = tiles.ld();
    let panels = g.cout.div_ceil(NR);
    let per_xi = g.cin * panels * NR;
    m.fill(0.0);
    let offsets: Vec<usize> = (0..KC.min(g.cin)).map(|ci| ci * ld).collect();
    for xi in 0..POSITIONS {
        let v_xi = &v[xi * g.cin * ld..(xi + 1) * g.cin * ld];
        let u = &packed[xi * per_xi..(xi + 1) * per_xi];
        let m_xi = &mut m[xi * g.cout * ld..(xi + 1) * g.cout * ld];
        for k0 in (0..g.cin).step_by(KC) {
            let klen = KC.min(g.cin - k0);
            let u_block = &u[k0 * panels * NR..];
            for panel in 0..panels {
                let b = &u_block[panel * klen * NR..(panel + 1) * klen * NR];
                let co0 = panel * NR;
                let rows = NR.min(g.cout - co0);
                for t in (0..len.next_multiple_of(MR)).step_by(MR) {
                    let a = v_xi[k0 * ld + t..].as_ptr();
                    // SAFETY: the tile reads a + kk · ld .. + 32 for kk < klen, inside V_ξ
                    // (t + 32 <= block < ld; tiles len.. are zero), and writes rows
                    // co0..co0 + rows of tiles t..t + 32 of M_ξ.
                    unsafe {
                        let c = m_xi[co0 * ld + t..].as_mut_ptr();
                        tile(klen, a, &offsets[..klen], b, c, ld, rows);
                    }
                }
            }
        }
    }
}

/// Y = Aᵀ M A (+ bias), Aᵀ = [[1, 1, 1, 0], [0, 1, -1, -1]], for tiles first..first + len,
/// written into one image's output planes at `out`.
///
/// # Safety
/// `out` addresses one image's (C_out, H', W') output; nothing else writes these tiles' pixels.
unsafe fn transform_output(
    g: &Geometry,
    m: &[f32],
    bias: Option<&[f32]>,
    tiles: Tiles,
    first: usize,
    len: usize,
    out: *mut f32,
) {
    let ld = tiles.ld();
    assert!(m.len() >= POSITIONS * g.cout * ld);
    for co in 0..g.cout {
        let b = bias.map_or(0.0, |b| b[co]);
        for_each_tile_row(tiles, first, len, |ty, (tx0, tx1), at| {
            // SAFETY: `applies` checked AVX-512 F; M's rows hold `at` + the group rounded up
            // to 16 (ld = block + 16); rows 2 ty, 2 ty + 1, columns 2 tx0..2 tx1 of plane co
            // are this task's pixels.
            unsafe {
                let row = out.add(co * g.out_pixels() + 2 * ty * g.wo + 2 * tx0);
                transform_back_row(
                    m.as_ptr().add(co * ld + at),
                    g.cout * ld,
                    b,
                    tx1 - tx0,
                    row,
                    g.wo,
                )
            };
        });
    }
}

/// Both output rows of n tiles of a tile row, 16 tiles at a time: M's position ξ of tile t at
/// `m + ξ · xi_stride + t`; output row `half` at `out + half · wo`.
///
/// # Safety
/// The CPU has AVX-512 F; m's rows are readable for t < n rounded up to 16; `out` and
/// `out + wo` address 2 n writable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn transform_back_row(
    m: *const f32,
    xi_stride: usize,
    bias: f32,
    n: usize,
    out: *mut f32,
    wo: usize,
) {
    use std::arch::x86_64::*;
    let lo_idx = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    let hi_idx = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
    let b = _mm512_set1_ps(bias);
    for t in (0..n).step_by(16) {
        let left = 2 * (n - t).min(16);
        let lo_mask: __mmask16 = if left >= 16 {
            0xffff
        } else {
            (1u16 << left) - 1
        };
        let hi_mask: __mmask16 = if left >= 32 {
            0xffff
        } else if left > 16 {
            (1u16 << (left - 16)) - 1
        } else {
            0
        };
        // SAFETY: position ξ of tiles t..t + 16 (caller).
        let at = |xi: usize| unsafe { _mm512_loadu_ps(m.add(xi * xi_stride + t)) };
        let m: [[__m512; 4]; 4] = std::array::from_fn(|i| std::array::from_fn(|j| at(4 * i + j)));
        // Aᵀ over rows: rows 0 and 1 of (Aᵀ M), each of its 4 columns.
        let s: [[__m512; 4]; 2] = [
            std::array::from_fn(|j| _mm512_add_ps(_mm512_add_ps(m[0][j], m[1][j]), m[2][j])),
            std::array::from_fn(|j| _mm512_sub_ps(_mm512_sub_ps(m[1][j], m[2][j]), m[3][j])),
        ];
        for (half, s) in s.iter().enumerate() {
            let left_px = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(s[0], s[1]), s[2]), b);
            let right_px = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(s[1], s[2]), s[3]), b);
            let lo = _mm512_permutex2var_ps(left_px, lo_idx, right_px);
            let hi = _mm512_permutex2var_ps(left_px, hi_idx, right_px);
            // SAFETY: pixels 2t .. 2t + left of output row `half` (caller).
            unsafe {
                let row = out.add(half * wo + 2 * t);
                _mm512_mask_storeu_ps(row, lo_mask, lo);
                _mm512_mask_storeu_ps(row.add(16), hi_mask, hi);
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn transform_back_row(_: *const f32, _: usize, _: f32, _: usize, _: *mut f32, _: usize) {
    unreachable!("conv_winograd runs only where AVX-512 is")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::conv_gemm::tests::{direct, values};
    use candle_core::{Device, Tensor};

    #[test]
    fn matches_the_definition() -> candle_core::Result<()> {
        if !supported() {
            eprintln!("skipped: this CPU has no AVX-512");
            return Ok(());
        }
        // (batch, cin, h, w, cout, padding): partial channel panels, a reduction longer than one
        // KC block, blocks and tile rows that end part-way through a microkernel tile or a
        // 16-tile group (27 tiles a row: 16 + 11), non-square images, padding 0 and 2, one
        // channel each way.
        let cases = [
            (2, 5, 8, 16, 13, 1),
            (1, 300, 12, 12, 25, 2),
            (1, 3, 16, 16, 4, 1),
            (2, 7, 10, 14, 12, 2),
            (1, 4, 64, 64, 3, 1),
            (1, 6, 18, 10, 5, 0),
            (3, 1, 64, 2, 1, 1),
            (1, 3, 8, 54, 5, 1),
        ];
        for (batch, cin, h, w, cout, padding) in cases {
            let dev = Device::Cpu;
            let xs = Tensor::from_vec(values(batch * cin * h * w, 1), (batch, cin, h, w), &dev)?;
            let ws = Tensor::from_vec(values(cout * cin * 9, 2), (cout, cin, 3, 3), &dev)?;
            let g = Geometry::new(&xs, &ws, None, 1, padding)?;
            assert!(applies(&g), "{g:?}");
            let (x, w) = (
                xs.flatten_all()?.to_vec1::<f32>()?,
                ws.flatten_all()?.to_vec1::<f32>()?,
            );
            let b = values(cout, 3);
            for bias in [Some(b.as_slice()), None] {
                let want = direct(&g, &x, &w, bias);
                let got = forward(&g, &x, &w, bias, None);
                assert_eq!(got.len(), want.len());
                let scale = (cin * 9) as f32;
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs() / scale)
                    .fold(0f32, f32::max);
                assert!(
                    worst < 2e-6,
                    "case {:?}: max |diff| / taps {worst}",
                    (batch, cin, h, w, cout, padding)
                );
                let cache = PackedWeights::default();
                for _ in 0..2 {
                    assert!(forward(&g, &x, &w, bias, Some(&cache)) == got);
                }
            }
        }
        Ok(())
    }

    #[test]
    fn odd_or_small_outputs_and_other_kernels_are_left_to_the_other_paths(
    ) -> candle_core::Result<()> {
        let dev = Device::Cpu;
        // (h, w, k, stride, padding)
        for (h, w, k, stride, padding) in [
            (7, 8, 3, 1, 1),
            (8, 8, 3, 1, 1),
            (16, 16, 3, 2, 1),
            (16, 16, 1, 1, 0),
        ] {
            let xs = Tensor::zeros((1, 2, h, w), candle_core::DType::F32, &dev)?;
            let ws = Tensor::zeros((2, 2, k, k), candle_core::DType::F32, &dev)?;
            let g = Geometry::new(&xs, &ws, None, stride, padding)?;
            assert!(!applies(&g), "{g:?}");
        }
        Ok(())
    }
}
