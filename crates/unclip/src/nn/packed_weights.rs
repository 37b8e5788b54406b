//! A convolution layer's weights packed for the microkernels once per model load, not once per
//! call.
//!
//! Why: `conv_gemm`, `conv_bf16` and `conv_winograd` reorder a layer's weights into the panels
//! their tiles read, and every sampling step multiplies the same weights again. A layer whose
//! weights no gradient tracks (a loaded model) keeps each packing from its first forward; a
//! trained layer's weights change every step (its `Var` is updated in place), so it packs per
//! call. The rule a caller keeps: an untracked weight tensor handed to a `Conv2d` never changes
//! afterwards. candle can break it (a detached `Var` shares its storage, and the EMA updates its
//! shadow tensors in place), so models built from such tensors (the trainers' previews) are
//! built anew after each update, as they are. The cost is memory, each packing made only once a
//! forward uses it: the f32 one as large as the layer's weights (channels padded to the tile),
//! the bf16 one half of that, the Winograd one 16/9 of it.

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

    /// The Winograd-transformed weights, made by `transform` the first time. The transform runs
    /// outside the lock: it uses the thread pool, whose threads may meanwhile pick up another
    /// forward of this layer, which must not wait on a lock its own thread holds. Two racing
    /// first calls both transform; one result is kept.
    pub(super) fn winograd(&self, transform: impl FnOnce() -> Vec<f32>) -> &[f32] {
        if let Some(done) = self.winograd.get() {
            return done;
        }
        let made = transform();
        self.winograd.get_or_init(|| made)
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
