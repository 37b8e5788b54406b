//! A diffusers model folder, both ways: `config.json` plus `diffusion_pytorch_model.safetensors`.

use crate::checkpoint::{find_weights_file, read_config, save_safetensors, write_config, Weights};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

pub const DIFFUSERS_CONFIG: &str = "config.json";
pub const DIFFUSERS_WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// Reads a folder's config (checking its `_class_name`) and weights.
pub fn read_folder<C: DeserializeOwned + Serialize>(
    dir: &Path,
    class_name: &'static str,
    device: &Device,
) -> Result<(C, Arc<Weights>)> {
    let config_path = dir.join(DIFFUSERS_CONFIG);
    if !config_path.is_file() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("no {DIFFUSERS_CONFIG}: not a diffusers {class_name} folder"),
        });
    }
    let raw: serde_json::Value = read_config(&config_path, class_name)?;
    if let Some(found) = raw.get("_class_name").and_then(|v| v.as_str()) {
        if found != class_name {
            return Err(Error::Checkpoint {
                path: config_path,
                message: format!("_class_name is `{found}`; expected `{class_name}`"),
            });
        }
    }
    let config: C = read_config(&config_path, class_name)?;
    let weights = Weights::load(&find_weights_file(dir, &[DIFFUSERS_WEIGHTS])?, device)?;
    Ok((config, weights))
}

/// Writes `config` and `tensors` as a diffusers folder, after `check` has built the model from
/// exactly these tensors (so a folder is only written if it loads again).
pub fn save_folder<C: Serialize>(
    dir: &Path,
    config: &C,
    tensors: &[(String, Tensor)],
    check: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<()> {
    let map: HashMap<String, Tensor> = tensors.iter().cloned().collect();
    let device = tensors
        .first()
        .map(|(_, t)| t.device().clone())
        .unwrap_or(Device::Cpu);
    check(VarBuilder::from_tensors(map, DType::F32, &device)).map_err(|e| Error::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("the tensors to save do not match the config: {e}"),
    })?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_config(&dir.join(DIFFUSERS_CONFIG), config)?;
    save_safetensors(tensors, &dir.join(DIFFUSERS_WEIGHTS))
}
