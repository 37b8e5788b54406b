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

use std::borrow::Cow;
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
    /// The f32 packing (`conv_gemm`): the layer's kept one, or made by `pack` for this call only.
    pub(super) fn f32(cache: Option<&Self>, pack: impl FnOnce() -> Vec<f32>) -> Cow<'_, [f32]> {
        kept_or_made(cache.map(|c| &c.f32), pack)
    }

    /// The bf16 packing (`conv_bf16`), as `f32`.
    pub(super) fn bf16(cache: Option<&Self>, pack: impl FnOnce() -> Vec<u32>) -> Cow<'_, [u32]> {
        kept_or_made(cache.map(|c| &c.bf16), pack)
    }

    /// The Winograd-transformed weights (`conv_winograd`), as `f32`.
    pub(super) fn winograd(
        cache: Option<&Self>,
        transform: impl FnOnce() -> Vec<f32>,
    ) -> Cow<'_, [f32]> {
        kept_or_made(cache.map(|c| &c.winograd), transform)
    }

    /// Whether a forward has kept a packing.
    #[cfg(test)]
    pub(super) fn kept(&self) -> bool {
        self.f32.get().is_some() || self.bf16.get().is_some() || self.winograd.get().is_some()
    }
}

/// The value kept in `slot`, made by `make` (and kept) on first use; without a slot, made for
/// this call. `make` runs outside the lock: a packing may use the thread pool, whose threads
/// may meanwhile pick up another forward of this layer, which must not wait on a lock its own
/// thread holds. Two racing first calls both make one; one result is kept.
fn kept_or_made<T: Clone>(
    slot: Option<&OnceLock<Vec<T>>>,
    make: impl FnOnce() -> Vec<T>,
) -> Cow<'_, [T]> {
    let Some(slot) = slot else {
        return Cow::Owned(make());
    };
    if let Some(kept) = slot.get() {
        return Cow::Borrowed(kept);
    }
    let made = make();
    Cow::Borrowed(slot.get_or_init(|| made))
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
