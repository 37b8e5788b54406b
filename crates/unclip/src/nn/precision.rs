//! The precision of f32 convolution products in inference, process-wide, as PyTorch's
//! `torch.set_float32_matmul_precision`: the CLI's `--precision` sets it once per job.
//!
//! Only what carries no gradient changes: a training step's operands are tracked and always run
//! in f32, so a trainer in the same process is unaffected.

use std::sync::atomic::{AtomicBool, Ordering};

static BF16: AtomicBool = AtomicBool::new(false);

/// How the products of f32 convolutions are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MatmulPrecision {
    /// f32 products and sums (the default).
    #[default]
    Highest,
    /// Inputs and weights rounded to bfloat16, products summed in f32, on CPUs with AVX-512
    /// BF16: stride-1 convolutions whose rows are whole 32-pixel tiles (every convolution at
    /// the 32 and 64 px levels of the U-Nets, and 1x1 ones) at up to twice the rate.
    Bf16,
}

/// Whether this CPU can run [`MatmulPrecision::Bf16`].
pub fn bf16_supported() -> bool {
    super::conv_bf16::supported()
}

/// Sets the precision for the rest of the process. Asking for bf16 on a CPU without AVX-512
/// BF16 is an error that names the CPU's lack, not a silent fallback.
pub fn set_float32_matmul_precision(precision: MatmulPrecision) -> candle_core::Result<()> {
    if precision == MatmulPrecision::Bf16 && !bf16_supported() {
        candle_core::bail!(
            "bf16 precision needs a CPU with AVX-512 BF16 (avx512_bf16), which this one lacks; \
             use f32"
        );
    }
    BF16.store(precision == MatmulPrecision::Bf16, Ordering::Relaxed);
    Ok(())
}

pub fn float32_matmul_precision() -> MatmulPrecision {
    if BF16.load(Ordering::Relaxed) {
        MatmulPrecision::Bf16
    } else {
        MatmulPrecision::Highest
    }
}
