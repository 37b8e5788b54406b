//! exp, SiLU and SiLU's derivative over f32 slices, for the fused norm and softmax kernels.
//!
//! Why our own: libm's `expf` is a scalar call the compiler cannot vectorise, and it dominated
//! the fused SiLU and softmax loops. Here exp is a Cephes-style polynomial written as plain
//! arithmetic that autovectorises; each loop is compiled twice, for AVX2+FMA and for the baseline
//! target, and picked at run time. Relative error is about 2e-7 (a few f32 ulps) on
//! [-87, 88]; inputs outside saturate to exp(-87) and exp(88) (NaN propagates as NaN).
//! (The attention work keeps its own runtime-dispatched exp in `nn/simd.rs`; this one is private
//! to the norm and softmax kernels.)

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5 · 2^23: adding it rounds a float below 2^22 to an integer kept in the mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    let x = if x < -87.0 { -87.0 } else { x };
    let x = if x > 88.0 { 88.0 } else { x };
    // x = n ln2 + r with |r| <= ln2 / 2; exp(x) = 2^n · exp(r).
    let shifted = x * LOG2E + ROUND_MAGIC;
    let n = shifted - ROUND_MAGIC;
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let exp_r = p * r * r + r + 1.0;
    // The low mantissa bits of `shifted` hold n (two's complement); build 2^n's exponent field.
    let n_bits = shifted.to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let pow2n = f32::from_bits(n_bits.wrapping_add(127) << 23);
    exp_r * pow2n
}

#[inline(always)]
fn exp_loop(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x = exp_approx(*x);
    }
}

#[inline(always)]
fn silu_loop(xs: &mut [f32]) {
    for x in xs.iter_mut() {
        *x /= 1.0 + exp_approx(-*x);
    }
}

/// z_then_grad holds z on entry and d silu(z)/dz · dy on exit.
#[inline(always)]
fn silu_backward_loop(z_then_grad: &mut [f32], dy: &[f32]) {
    for (z, &dy) in z_then_grad.iter_mut().zip(dy) {
        let s = 1.0 / (1.0 + exp_approx(-*z));
        *z = dy * s * (1.0 + *z * (1.0 - s));
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    // std caches the CPUID result; this is an atomic load.
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_loop_avx2(xs: &mut [f32]) {
    exp_loop(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_loop_avx2(xs: &mut [f32]) {
    silu_loop(xs)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_backward_loop_avx2(z_then_grad: &mut [f32], dy: &[f32]) {
    silu_backward_loop(z_then_grad, dy)
}

/// xs ← exp(xs).
pub(super) fn exp_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { exp_loop_avx2(xs) };
    }
    exp_loop(xs)
}

/// xs ← xs · sigmoid(xs).
pub(super) fn silu_in_place(xs: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { silu_loop_avx2(xs) };
    }
    silu_loop(xs)
}

/// z_then_grad ← dy · silu'(z), silu'(z) = s (1 + z (1 − s)) with s = sigmoid(z).
pub(super) fn silu_backward_in_place(z_then_grad: &mut [f32], dy: &[f32]) {
    debug_assert_eq!(z_then_grad.len(), dy.len());
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2 and FMA (checked just above).
        return unsafe { silu_backward_loop_avx2(z_then_grad, dy) };
    }
    silu_backward_loop(z_then_grad, dy)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_matches_std_within_a_few_ulps() {
        let mut xs: Vec<f32> = (-8700..=8800).map(|i| i as f32 * 0.01).collect();
        let expected: Vec<f32> = xs.iter().map(|x| x.exp()).collect();
        exp_in_place(&mut xs);
        for (i, (g, e)) in xs.iter().zip(&expected).enumerate() {
            let rel = ((g - e) / e).abs();
            assert!(
                rel < 5e-7,
                "x = {}: {g} vs {e} (rel {rel})",
                i as f32 * 0.01 - 87.0
            );
        }
        let mut extreme = [-1e30f32, -100.0, 100.0, f32::NAN];
        exp_in_place(&mut extreme);
        assert!(extreme[0] >= 0.0 && extreme[0] < 1e-37);
        assert!(extreme[1] >= 0.0 && extreme[1] < 1e-37);
        assert!(extreme[2].is_finite() && extreme[2] > 1e38);
        assert!(extreme[3].is_nan());
    }

    #[test]
    fn silu_and_its_derivative_match_the_definition() {
        let zs: Vec<f32> = (-300..300).map(|i| i as f32 * 0.37).collect();
        let dy: Vec<f32> = (0..zs.len()).map(|i| 1.0 + (i % 7) as f32).collect();
        let mut silu = zs.clone();
        silu_in_place(&mut silu);
        let mut grad = zs.clone();
        silu_backward_in_place(&mut grad, &dy);
        for i in 0..zs.len() {
            let z = zs[i] as f64;
            let s = 1.0 / (1.0 + (-z).exp());
            let want = z * s;
            assert!(
                (silu[i] as f64 - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "silu({z})"
            );
            let want_grad = dy[i] as f64 * s * (1.0 + z * (1.0 - s));
            assert!(
                (grad[i] as f64 - want_grad).abs() <= 1e-5 * (1.0 + want_grad.abs()),
                "silu'({z}): {} vs {want_grad}",
                grad[i]
            );
        }
    }
}

#[cfg(test)]
mod timing {
    #[test]
    #[ignore = "timing, run by hand"]
    fn timing() {
        let mut xs: Vec<f32> = (0..4_000_000).map(|i| (i % 1000) as f32 * -0.01).collect();
        let start = std::time::Instant::now();
        for _ in 0..10 {
            super::exp_in_place(&mut xs);
            for x in xs.iter_mut() {
                *x = -*x;
            }
        }
        let ns = start.elapsed().as_secs_f64() * 1e9 / (10.0 * xs.len() as f64);
        println!("exp_in_place: {ns:.3} ns per element");
        let start = std::time::Instant::now();
        let mut m = 0.0;
        for _ in 0..10 {
            m += super::super::lanes::max(&xs) + super::super::lanes::sum(&xs);
        }
        let ns = start.elapsed().as_secs_f64() * 1e9 / (10.0 * xs.len() as f64);
        println!("max + sum: {ns:.3} ns per element ({m})");
    }
}
