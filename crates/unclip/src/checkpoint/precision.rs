//! Storage precision of a saved model folder. The built-in models ship their weights as f16
//! to halve their size in git (and a user may want the same for theirs); nothing else changes,
//! because every loader casts what it reads to the compute dtype (f32 on CPU).

use super::save_safetensors;
use crate::error::{Error, Result};
use candle_core::{DType, Device};
use std::path::{Path, PathBuf};

/// What [`cast_folder_weights`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CastSummary {
    pub files: usize,
    pub tensors: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// Parses a storage dtype as the CLI spells it.
pub fn parse_storage_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::InvalidInput(format!(
            "storage dtype `{other}` is not one of f32, f16, bf16"
        ))),
    }
}

fn safetensors_files(dir: &Path, found: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        if path.is_dir() {
            safetensors_files(&path, found)?;
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            found.push(path);
        }
    }
    Ok(())
}

/// Rewrites every `*.safetensors` under `dir` with its floating-point tensors in `dtype`
/// (integer tensors are kept as they are). Each file is replaced through a temporary name.
pub fn cast_folder_weights(dir: &Path, dtype: DType) -> Result<CastSummary> {
    if !dtype.is_float() {
        return Err(Error::InvalidInput(format!(
            "weights can be stored as f32, f16 or bf16, not {dtype:?}"
        )));
    }
    let mut files = Vec::new();
    safetensors_files(dir, &mut files)?;
    files.sort();
    let mut summary = CastSummary::default();
    for file in files {
        let before = std::fs::metadata(&file)
            .map_err(|e| Error::io(&file, e))?
            .len();
        let tensors =
            candle_core::safetensors::load(&file, &Device::Cpu).map_err(|e| Error::Checkpoint {
                path: file.clone(),
                message: format!("cannot read safetensors: {e}"),
            })?;
        let mut cast = Vec::with_capacity(tensors.len());
        for (name, tensor) in tensors {
            let tensor = if tensor.dtype().is_float() {
                tensor.to_dtype(dtype)?
            } else {
                tensor
            };
            cast.push((name, tensor));
        }
        cast.sort_by(|a, b| a.0.cmp(&b.0));
        summary.tensors += cast.len();
        save_safetensors(&cast, &file)?;
        summary.files += 1;
        summary.bytes_before += before;
        summary.bytes_after += std::fs::metadata(&file)
            .map_err(|e| Error::io(&file, e))?
            .len();
    }
    Ok(summary)
}
