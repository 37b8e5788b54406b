//! Borrowing the f32 data of CPU tensors inside the custom-op kernels (norms, softmax, AdamW),
//! handing disjoint parts of one output buffer to parallel tasks, and computing an op's
//! gradients side by side.

use candle_core::{bail, CpuStorage, Device, Layout, Result, Shape, Storage, Tensor};

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

/// The gradients of an op's three inputs, each computed only when asked (`None` otherwise), side
/// by side (`rayon::join`): each kernel splits across the threads on its own, and the join lets a
/// thread that has finished its share of one take tasks of another instead of idling at that
/// kernel's tail.
pub(crate) fn gradients_side_by_side(
    first: Option<impl FnOnce() -> Vec<f32> + Send>,
    second: Option<impl FnOnce() -> Vec<f32> + Send>,
    third: Option<impl FnOnce() -> Vec<f32> + Send>,
) -> [Option<Vec<f32>>; 3] {
    let (a, (b, c)) = rayon::join(
        || first.map(|f| f()),
        || rayon::join(|| second.map(|f| f()), || third.map(|f| f())),
    );
    [a, b, c]
}

/// A gradient computed on the CPU, as a tensor of `shape`.
pub(crate) fn cpu_gradient(
    data: Option<Vec<f32>>,
    shape: impl Into<Shape>,
) -> Result<Option<Tensor>> {
    data.map(|d| Tensor::from_vec(d, shape, &Device::Cpu))
        .transpose()
}
