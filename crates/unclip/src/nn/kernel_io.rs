//! Borrowing the f32 data of CPU tensors inside the custom-op kernels (norms, softmax, AdamW),
//! and handing disjoint parts of one output buffer to parallel tasks.

use candle_core::{bail, CpuStorage, Layout, Result, Storage};

/// The contiguous f32 data `layout` describes in `storage`; `what` names the operand in errors.
pub(crate) fn cpu_f32<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data.as_slice(),
        _ => bail!("{what}: the fused kernel takes f32 data only"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!(
            "{what}: expected a contiguous tensor, got strides {:?}",
            layout.stride()
        ),
    }
}

/// As [`cpu_f32`], for a tensor's storage (as `Tensor::storage_and_layout` returns it).
pub(crate) fn storage_f32<'a>(
    storage: &'a Storage,
    layout: &Layout,
    what: &str,
) -> Result<&'a [f32]> {
    match storage {
        Storage::Cpu(cpu) => cpu_f32(cpu, layout, what),
        _ => bail!("{what}: the fused kernel runs on the CPU only"),
    }
}

/// As [`cpu_f32`], writable: the destination of an in-place kernel.
pub(crate) fn cpu_f32_mut<'a>(
    storage: &'a mut CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<&'a mut [f32]> {
    let data = match storage {
        CpuStorage::F32(data) => data.as_mut_slice(),
        _ => bail!("{what}: the fused kernel takes f32 data only"),
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => bail!(
            "{what}: expected a contiguous tensor, got strides {:?}",
            layout.stride()
        ),
    }
}

/// A raw output pointer shared by threads that write disjoint regions.
#[derive(Clone, Copy)]
pub(crate) struct SharedMut(pub(crate) *mut f32);
// SAFETY: every user writes only its own rows (documented at each use).
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// A method, not the field: closures then capture the whole `Send + Sync` wrapper.
    pub(crate) fn get(self) -> *mut f32 {
        self.0
    }
}
