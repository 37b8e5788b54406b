//! Where a model computes: `cpu`, or `cuda` / `cuda:N` in a build with the `cuda` feature.
//! The CPU path has the project's own kernels; on a GPU every op is candle's, with f32 matrix
//! products allowed to use TF32 tensor cores (10-bit mantissa inputs, f32 accumulation), the
//! precision PyTorch's default convolutions use on the same GPUs.

use crate::error::{Error, Result};
use candle_core::Device;

/// The devices a name may give, for error messages and help text.
pub const DEVICE_NAMES: &str = "cpu, cuda, cuda:N";

/// Parses `cpu`, `cuda` (GPU 0) or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let ordinal = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| bad(name))?,
        None => return Err(bad(name)),
    };
    open_cuda(ordinal)
}

fn bad(name: &str) -> Error {
    Error::InvalidInput(format!(
        "unknown device `{name}`: use one of {DEVICE_NAMES}"
    ))
}

#[cfg(feature = "cuda")]
fn open_cuda(ordinal: usize) -> Result<Device> {
    candle_core::cuda::set_gemm_reduced_precision_f32(true);
    Device::new_cuda(ordinal)
        .map_err(|e| Error::InvalidInput(format!("cannot open GPU cuda:{ordinal}: {e}")))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(ordinal: usize) -> Result<Device> {
    Err(Error::InvalidInput(format!(
        "device cuda:{ordinal} needs a build with the GPU backend: cargo build --release --features cuda"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_or_say_what_is_allowed() {
        assert!(parse_device("cpu").is_ok_and(|d| d.is_cpu()));
        for wrong in ["gpu", "cuda:", "cuda:x", "cuda0", ""] {
            let message = parse_device(wrong)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(message.contains("cpu, cuda, cuda:N"), "{wrong}: {message}");
        }
        #[cfg(not(feature = "cuda"))]
        {
            let message = parse_device("cuda:1")
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(message.contains("--features cuda"), "{message}");
        }
    }
}
