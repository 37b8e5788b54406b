//! Safetensors weights behind candle's `VarBuilder`, with errors that name the file, the tensor
//! and both shapes, and a record of which tensors the model used (stale keys in real
//! checkpoints, such as `text_model.embeddings.position_ids`, are reported, not fatal).

use crate::error::{Error, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Every tensor of a checkpoint, in memory, plus the names a model asked for.
pub struct Weights {
    source: PathBuf,
    tensors: HashMap<String, Tensor>,
    used: Mutex<BTreeSet<String>>,
}

/// Finds the weights of a Hugging Face folder among the usual file names, or explains what is
/// there instead.
pub fn find_weights_file(dir: &Path, candidates: &[&str]) -> Result<PathBuf> {
    if !dir.is_dir() {
        return Err(Error::Checkpoint {
            path: dir.to_path_buf(),
            message: "not a directory (expected a model folder)".into(),
        });
    }
    for name in candidates {
        let path = dir.join(name);
        if path.is_file() {
            return Ok(path);
        }
        let index = dir.join(format!("{name}.index.json"));
        if index.is_file() {
            return Ok(index);
        }
    }
    let pickles: Vec<_> = ["pytorch_model.bin", "diffusion_pytorch_model.bin"]
        .iter()
        .filter(|n| dir.join(n).is_file())
        .collect();
    let hint = if pickles.is_empty() {
        String::new()
    } else {
        format!(" (found {pickles:?}: convert PyTorch pickles to safetensors first)")
    };
    Err(Error::Checkpoint {
        path: dir.to_path_buf(),
        message: format!("no weights file; expected one of {candidates:?}{hint}"),
    })
}

impl Weights {
    /// Loads a `.safetensors` file, or every shard listed by a `.safetensors.index.json`.
    pub fn load(path: &Path, device: &Device) -> Result<Arc<Self>> {
        let files = if path.to_string_lossy().ends_with(".index.json") {
            shard_files(path)?
        } else {
            vec![path.to_path_buf()]
        };
        let mut tensors = HashMap::new();
        for file in files {
            let bytes = std::fs::read(&file).map_err(|e| Error::io(&file, e))?;
            let loaded = candle_core::safetensors::load_buffer(&bytes, device).map_err(|e| {
                Error::Checkpoint {
                    path: file.clone(),
                    message: format!("not a readable safetensors file: {e}"),
                }
            })?;
            tensors.extend(loaded);
        }
        Ok(Arc::new(Self {
            source: path.to_path_buf(),
            tensors,
            used: Mutex::new(BTreeSet::new()),
        }))
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// A `VarBuilder` over these tensors, converted to `dtype` on `device`.
    pub fn var_builder(self: &Arc<Self>, dtype: DType, device: &Device) -> VarBuilder<'static> {
        let backend: Box<dyn SimpleBackend> = Box::new(Shared(Arc::clone(self)));
        VarBuilder::from_backend(backend, dtype, device.clone())
    }

    /// Tensors in the file that no model asked for.
    pub fn unused(&self) -> Vec<String> {
        let used = self.used.lock().map(|u| u.clone()).unwrap_or_default();
        let mut unused: Vec<String> = self
            .tensors
            .keys()
            .filter(|k| !used.contains(*k))
            .cloned()
            .collect();
        unused.sort();
        unused
    }

    /// Turns a candle error raised while building a model from these weights into one that
    /// names the checkpoint.
    pub fn explain(&self, err: candle_core::Error) -> Error {
        Error::Checkpoint {
            path: self.source.clone(),
            message: err.to_string(),
        }
    }

    /// Logs stale or foreign tensors the model did not use.
    pub fn report_unused(&self) {
        let unused = self.unused();
        if !unused.is_empty() {
            tracing::info!(path = %self.source.display(), count = unused.len(), ?unused, "ignoring tensors the model does not use");
        }
    }

    fn fetch(&self, name: &str) -> candle_core::Result<&Tensor> {
        let tensor = self.tensors.get(name).ok_or_else(|| {
            candle_core::Error::Msg(format!(
                "tensor `{name}` is missing from {}",
                self.source.display()
            ))
        })?;
        if let Ok(mut used) = self.used.lock() {
            used.insert(name.to_string());
        }
        Ok(tensor)
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|cause| Error::Json {
        path: index.to_path_buf(),
        what: "a safetensors index",
        cause,
    })?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::Checkpoint {
            path: index.to_path_buf(),
            message: "no `weight_map` object".into(),
        })?;
    let dir = index.parent().unwrap_or(Path::new("."));
    let names: BTreeSet<&str> = map.values().filter_map(|v| v.as_str()).collect();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}

struct Shared(Arc<Weights>);

impl SimpleBackend for Shared {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tensor = self.0.fetch(name)?;
        if tensor.shape() != &shape {
            return Err(candle_core::Error::Msg(format!(
                "tensor `{name}`: expected shape {:?}, found {:?}",
                shape.dims(),
                tensor.dims()
            )));
        }
        tensor.to_device(dev)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        self.0.fetch(name)?.to_device(dev)?.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.contains(name)
    }
}

/// Saves named tensors as safetensors (with the `format: pt` metadata transformers checks),
/// through a temporary file.
pub fn save_safetensors(tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let mut contiguous = Vec::with_capacity(tensors.len());
    for (name, tensor) in tensors {
        contiguous.push((name.clone(), tensor.contiguous()?));
    }
    super::atomic::write_atomic_with(path, |tmp| {
        safetensors::serialize_to_file(
            contiguous.iter().map(|(n, t)| (n.as_str(), t)),
            Some(metadata),
            tmp,
        )
        .map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            message: format!("cannot write safetensors: {e}"),
        })
    })
}
