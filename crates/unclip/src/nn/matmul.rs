//! The one f32 matrix product every CPU op here calls: `gemm` on strided views, with the
//! thread count the compute pool runs.

use gemm::Parallelism;

/// The threads the compute pool (and so every split op) runs with.
pub(super) fn threads() -> usize {
    candle_core::utils::get_num_threads().max(1)
}

pub(super) fn gemm_parallelism(threads: usize) -> Parallelism {
    if threads > 1 {
        Parallelism::Rayon(threads)
    } else {
        Parallelism::None
    }
}

/// A strided f32 matrix view: element (i, j) at `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(super) struct View<'a> {
    pub(super) data: &'a [f32],
    pub(super) rs: usize,
    pub(super) cs: usize,
}

/// `dst = (dst if accumulate) + lhs · rhs` for an m x n row-major `dst` with row stride `dst_rs`.
#[allow(clippy::too_many_arguments)]
pub(super) fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    dst_rs: usize,
    accumulate: bool,
    lhs: View,
    rhs: View,
    parallelism: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    let extent = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(extent(m, n, dst_rs, 1) < dst.len(), "matmul: dst too short");
    if k == 0 {
        if !accumulate {
            (0..m).for_each(|i| dst[i * dst_rs..i * dst_rs + n].fill(0.0));
        }
        return;
    }
    assert!(
        extent(m, k, lhs.rs, lhs.cs) < lhs.data.len(),
        "matmul: lhs too short"
    );
    assert!(
        extent(k, n, rhs.rs, rhs.cs) < rhs.data.len(),
        "matmul: rhs too short"
    );
    // SAFETY: the asserts above keep every index gemm reads or writes inside the slices, and
    // `dst` is borrowed mutably so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        )
    }
}
