//! Reductions over f32 slices for the fused norm and softmax kernels, accumulated in 16
//! independent lanes. A single accumulator is a serial dependency chain the compiler may not
//! reorder (float addition is not associative), so it stays scalar; 16 lanes vectorise, and
//! summing in lanes is also more accurate than one running sum.

const LANES: usize = 16;

#[inline]
fn fold_lanes(acc: [f32; LANES]) -> f32 {
    let mut half = [0f32; LANES / 2];
    for i in 0..LANES / 2 {
        half[i] = acc[i] + acc[i + LANES / 2];
    }
    half.iter().sum()
}

/// Σ xs.
#[inline]
pub(super) fn sum(xs: &[f32]) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks.remainder().iter().sum();
    for chunk in chunks {
        for i in 0..LANES {
            acc[i] += chunk[i];
        }
    }
    fold_lanes(acc) + tail
}

/// Σ (xs − center)².
#[inline]
pub(super) fn sum_sq_dev(xs: &[f32], center: f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail: f32 = chunks
        .remainder()
        .iter()
        .map(|x| (x - center) * (x - center))
        .sum();
    for chunk in chunks {
        for i in 0..LANES {
            let d = chunk[i] - center;
            acc[i] += d * d;
        }
    }
    fold_lanes(acc) + tail
}

/// Σ a · b over the common length.
#[inline]
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += ca[i] * cb[i];
        }
    }
    fold_lanes(acc) + tail
}

/// Σ a · (b − center) over the common length (exact where Σ a·b − center·Σ a would cancel).
#[inline]
pub(super) fn dot_centered(a: &[f32], b: &[f32], center: f32) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let tail: f32 = a_chunks
        .remainder()
        .iter()
        .zip(b_chunks.remainder())
        .map(|(x, y)| x * (y - center))
        .sum();
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for i in 0..LANES {
            acc[i] += ca[i] * (cb[i] - center);
        }
    }
    fold_lanes(acc) + tail
}

/// max xs (−∞ for an empty slice; NaN entries are skipped unless all are NaN).
#[inline]
pub(super) fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for chunk in chunks {
        for i in 0..LANES {
            acc[i] = acc[i].max(chunk[i]);
        }
    }
    acc.iter().fold(tail, |m, &x| m.max(x))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reductions_match_plain_loops_on_odd_lengths() {
        for n in [0usize, 1, 15, 16, 17, 33, 100] {
            let a: Vec<f32> = (0..n).map(|i| (i as f32 * 0.7).sin() * 3.0).collect();
            let b: Vec<f32> = (0..n).map(|i| (i as f32 * 1.3).cos()).collect();
            let close = |x: f32, y: f64| (x as f64 - y).abs() <= 1e-5 * (1.0 + y.abs());
            assert!(
                close(sum(&a), a.iter().map(|&x| x as f64).sum()),
                "sum n={n}"
            );
            let dot_want: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
            assert!(close(dot(&a, &b), dot_want), "dot n={n}");
            let centered: f64 = a
                .iter()
                .zip(&b)
                .map(|(&x, &y)| x as f64 * (y as f64 - 0.5))
                .sum();
            assert!(
                close(dot_centered(&a, &b, 0.5), centered),
                "dot_centered n={n}"
            );
            let dev: f64 = a.iter().map(|&x| (x as f64 - 0.25).powi(2)).sum();
            assert!(close(sum_sq_dev(&a, 0.25), dev), "sum_sq_dev n={n}");
            let m = a.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
            assert_eq!(max(&a), m, "max n={n}");
        }
    }
}
