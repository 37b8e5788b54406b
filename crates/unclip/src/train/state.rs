//! What a training checkpoint holds besides the model folder: the raw (non-averaged) weights,
//! the optimizer moments, the EMA, and in JSON the step, the data position, the RNG and a
//! fingerprint of the architecture, so that `--resume` continues exactly, or refuses a
//! checkpoint of another model by name.

use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const STATE_TENSORS: &str = "training_state.safetensors";
pub const STATE_JSON: &str = "training_state.json";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Progress {
    pub stage: String,
    pub step: usize,
    pub epoch: u64,
    /// Samples of `epoch` already consumed.
    pub position: u64,
    pub ema_updates: u64,
    pub rng: ChaCha8Rng,
    /// Parameter names and shapes, one "name:d0xd1" per parameter.
    pub fingerprint: Vec<String>,
}

pub fn fingerprint(params: &[(String, candle_core::Var)]) -> Vec<String> {
    params
        .iter()
        .map(|(n, v)| {
            format!(
                "{n}:{}",
                v.dims()
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join("x")
            )
        })
        .collect()
}

/// The `step-NNNNNNNN` folders under `out/checkpoints`, oldest first.
fn checkpoints(out: &Path) -> Vec<(usize, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(out.join("checkpoints")) else {
        return Vec::new();
    };
    let mut steps: Vec<(usize, PathBuf)> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let n = p
                .file_name()?
                .to_str()?
                .strip_prefix("step-")?
                .parse()
                .ok()?;
            Some((n, p))
        })
        .collect();
    steps.sort();
    steps
}

/// Removes the staging folders of checkpoints a killed run was writing (`.step-N.new-PID.tmp`
/// under `out/checkpoints`): never complete, never read, and as large as a checkpoint.
pub fn remove_unfinished_checkpoints(out: &Path) -> Result<()> {
    let Ok(entries) = std::fs::read_dir(out.join("checkpoints")) else {
        return Ok(());
    };
    for path in entries.filter_map(|e| e.ok().map(|e| e.path())) {
        let staging = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(".step-") && n.contains(".new-") && n.ends_with(".tmp"));
        if staging && path.is_dir() {
            std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// The newest complete checkpoint, if any.
pub fn latest_checkpoint(out: &Path) -> Option<PathBuf> {
    checkpoints(out)
        .into_iter()
        .rev()
        .map(|(_, p)| p)
        .find(|p| p.join(STATE_JSON).is_file())
}

/// Deletes all but the newest `keep` checkpoints.
pub fn prune_checkpoints(out: &Path, keep: usize) -> Result<()> {
    let steps = checkpoints(out);
    let excess = steps.len().saturating_sub(keep.max(1));
    for (_, path) in steps.into_iter().take(excess) {
        std::fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}

pub fn read_progress(dir: &Path) -> Result<Progress> {
    let path = dir.join(STATE_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    serde_json::from_str(&text).map_err(|cause| Error::Json {
        path,
        what: "a training state",
        cause,
    })
}

pub fn read_state_tensors(dir: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    let path = dir.join(STATE_TENSORS);
    candle_core::safetensors::load(&path, device).map_err(|e| Error::Checkpoint {
        path,
        message: format!("unreadable training state: {e}"),
    })
}

/// Checks that a checkpoint was written by a model of the same architecture.
pub fn check_fingerprint(
    dir: &Path,
    saved: &Progress,
    stage: &str,
    current: &[String],
) -> Result<()> {
    if saved.stage != stage {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!(
                "this checkpoint is from a `{}` run, not `{stage}`",
                saved.stage
            ),
        });
    }
    if saved.fingerprint != current {
        let differs = current
            .iter()
            .zip(&saved.fingerprint)
            .find(|(a, b)| a != b)
            .map(|(a, b)| format!("checkpoint has {b}, the configured model has {a}"))
            .unwrap_or_else(|| {
                format!(
                    "checkpoint has {} parameters, the configured model {}",
                    saved.fingerprint.len(),
                    current.len()
                )
            });
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: format!("--resume with a different architecture: {differs}"),
        });
    }
    Ok(())
}
