//! Row kernels for the attention hot loop (exp, softmax and its gradient), compiled three times
//! (AVX-512, AVX2+FMA, baseline) and picked at run time.
//!
//! Why our own: the release binary targets baseline x86-64, so plain loops get SSE2 only, and
//! `f32::exp` is a libm call per element that never vectorises. Attention at 64 px exponentiates
//! ~17 M scores per head per layer; a polynomial exp the compiler can vectorise, built with the
//! widest instructions this CPU has, is most of the speed-up of the fused attention over the
//! composed one. No crate offers runtime-dispatched slice kernels for these three operations.

/// exp(x) for f32 by Cephes' range reduction and degree-5 polynomial (relative error ~2e-7),
/// written branch-free so that the loops calling it vectorise. Inputs below -87 give 0.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let clamped = x.clamp(-87.0, 88.0);
    let n = (clamped * LOG2E + 0.5).floor();
    let r = clamped - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let poly = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    let value = poly * scale;
    if x < -87.0 {
        0.0
    } else {
        value
    }
}

#[inline(always)]
fn max_of(row: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = row.chunks_exact(16);
    for chunk in &mut chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane = lane.max(x);
        }
    }
    let tail = chunks
        .remainder()
        .iter()
        .fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

/// Replaces `row` by exp(row - shift) and returns the sum.
#[inline(always)]
fn exp_shift_sum(row: &mut [f32], shift: f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = row.chunks_exact_mut(16);
    for chunk in &mut chunks {
        for (lane, x) in lanes.iter_mut().zip(chunk.iter_mut()) {
            *x = exp_approx(*x - shift);
            *lane += *x;
        }
    }
    let mut sum = 0f32;
    for x in chunks.into_remainder() {
        *x = exp_approx(*x - shift);
        sum += *x;
    }
    sum + lanes.iter().sum::<f32>()
}

#[inline(always)]
fn softmax_body(row: &mut [f32]) -> (f32, f32) {
    let max = max_of(row);
    let sum = exp_shift_sum(row, max);
    let inv = 1.0 / sum;
    for x in row.iter_mut() {
        *x *= inv;
    }
    (max, sum.ln())
}

#[inline(always)]
fn exp_shifted_body(row: &mut [f32], max: f32, ln_sum: f32) {
    // Two subtractions, not one of (max + ln_sum): for a fully masked row max is ~-1e9, where
    // adding ln_sum would round away.
    for x in row.iter_mut() {
        *x = exp_approx((*x - max) - ln_sum);
    }
}

#[inline(always)]
fn softmax_grad_body(p: &[f32], dp: &mut [f32], row_dot: f32) {
    for (g, &p) in dp.iter_mut().zip(p) {
        *g = p * (*g - row_dot);
    }
}

#[inline(always)]
fn dot_body(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let mut ca = a.chunks_exact(16);
    let mut cb = b.chunks_exact(16);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for i in 0..16 {
            lanes[i] += x[i] * y[i];
        }
    }
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    tail + lanes.iter().sum::<f32>()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Level {
    Avx512,
    Avx2,
    Baseline,
}

fn level() -> Level {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<Level> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Level::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Level::Avx2;
            }
        }
        Level::Baseline
    })
}

/// Defines `pub fn $name(args) -> ret` that runs `$body` compiled for the best instruction set
/// this CPU supports.
macro_rules! dispatch {
    ($(#[$doc:meta])* $name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty => $body:ident) => {
        $(#[$doc])*
        #[allow(clippy::unused_unit)]
        pub fn $name($($arg: $ty),*) -> $ret {
            #[cfg(target_arch = "x86_64")]
            {
                #[allow(clippy::unused_unit)]
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                #[allow(clippy::unused_unit)]
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret {
                    $body($($arg),*)
                }
                match level() {
                    // SAFETY: the CPU was checked for these features by `level`.
                    Level::Avx512 => return unsafe { avx512($($arg),*) },
                    Level::Avx2 => return unsafe { avx2($($arg),*) },
                    Level::Baseline => {}
                }
            }
            $body($($arg),*)
        }
    };
}

dispatch!(
    /// In-place softmax of one row; returns (max, ln Σ exp(x - max)) so the row can be rebuilt.
    softmax_in_place(row: &mut [f32]) -> (f32, f32) => softmax_body
);
dispatch!(
    /// row = exp(row - max - ln_sum): rebuilds softmax probabilities from logits and the
    /// statistics `softmax_in_place` returned.
    exp_shifted_in_place(row: &mut [f32], max: f32, ln_sum: f32) -> () => exp_shifted_body
);
dispatch!(
    /// dp = p ⊙ (dp - row_dot): the softmax backward for one row.
    softmax_grad_in_place(p: &[f32], dp: &mut [f32], row_dot: f32) -> () => softmax_grad_body
);
dispatch!(
    /// Σ a ⊙ b.
    dot(a: &[f32], b: &[f32]) -> f32 => dot_body
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_over_the_attention_range() {
        let mut worst = 0f32;
        let mut x = -80f32;
        while x < 80.0 {
            let rel = ((exp_approx(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(rel);
            x += 0.0137;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp_approx(-1e9), 0.0);
        assert_eq!(exp_approx(-88.0), 0.0);
        assert_eq!(exp_approx(0.0), 1.0);
    }

    #[test]
    fn softmax_matches_the_definition_at_every_level() {
        let row: Vec<f32> = (0..37)
            .map(|i| ((i * 7919) % 23) as f32 * 0.37 - 3.0)
            .collect();
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
        let sum: f32 = row.iter().map(|x| (x - max).exp()).sum();
        let mut fast = row.clone();
        let (m, ln_sum) = softmax_in_place(&mut fast);
        assert_eq!(m, max);
        assert!((ln_sum - sum.ln()).abs() < 1e-5);
        for (f, x) in fast.iter().zip(&row) {
            assert!((f - (x - max).exp() / sum).abs() < 1e-6);
        }
        let mut plain = row.clone();
        assert_eq!(softmax_body(&mut plain), (m, ln_sum));
        let mut rebuilt = row.clone();
        exp_shifted_in_place(&mut rebuilt, m, ln_sum);
        for (r, f) in rebuilt.iter().zip(&fast) {
            assert!((r - f).abs() < 1e-6);
        }
    }

    #[test]
    fn dot_and_softmax_grad() {
        let a: Vec<f32> = (0..35).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..35).map(|i| 1.0 - i as f32 * 0.01).collect();
        let expected: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - expected).abs() < 1e-3);
        let mut dp = b.clone();
        softmax_grad_in_place(&a, &mut dp, 0.25);
        for i in 0..35 {
            assert!((dp[i] - a[i] * (b[i] - 0.25)).abs() < 1e-6);
        }
    }
}
