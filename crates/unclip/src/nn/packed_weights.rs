//! A convolution layer's weights packed for the microkernels once per model load, not once per
//! call.
//!
//! Why: `conv_gemm` and `conv_bf16` reorder a layer's weights into the panels their tiles read,
//! and every sampling step multiplies the same weights again. A layer whose weights are not
//! trained (no gradient tracked: a loaded model) keeps each packing from its first forward; a
//! trained layer's weights change every step (its `Var` is updated in place), so it packs per
//! call. The cost is memory: the f32 packing is as large as the layer's weights (channels padded
//! to the tile), the bf16 one half of that, and each exists only once a forward has used it.

use std::fmt;
use std::sync::OnceLock;

/// The packings of one layer's weights, each made on first use.
#[derive(Default)]
pub(crate) struct PackedWeights {
    f32: OnceLock<Vec<f32>>,
    bf16: OnceLock<Vec<u32>>,
    winograd: OnceLock<Vec<f32>>,
}

impl PackedWeights {
    /// The f32 packing, made by `pack` the first time.
    pub(super) fn f32(&self, pack: impl FnOnce() -> Vec<f32>) -> &[f32] {
        self.f32.get_or_init(pack)
    }

    /// The bf16 packing, made by `pack` the first time.
    pub(super) fn bf16(&self, pack: impl FnOnce() -> Vec<u32>) -> &[u32] {
        self.bf16.get_or_init(pack)
    }

    /// The Winograd-transformed weights, made by `transform` the first time.
    pub(super) fn winograd(&self, transform: impl FnOnce() -> Vec<f32>) -> &[f32] {
        self.winograd.get_or_init(transform)
    }

    /// Whether a forward has kept a packing.
    #[cfg(test)]
    pub(super) fn kept(&self) -> bool {
        self.f32.get().is_some() || self.bf16.get().is_some() || self.winograd.get().is_some()
    }
}

impl fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PackedWeights")
            .field("f32", &self.f32.get().map(Vec::len))
            .field("bf16", &self.bf16.get().map(Vec::len))
            .field("winograd", &self.winograd.get().map(Vec::len))
            .finish()
    }
}
