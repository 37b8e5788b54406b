//! Precomputed CLIP embeddings of a dataset (`unclip embed-dataset`), so that training the prior
//! does not run both CLIP towers on every batch: per record key, the image embedding, the caption's
//! text embedding, token states and mask, in one safetensors file (keys in its metadata).

use super::conditioning::{FrozenClip, TextConditioning};
use crate::checkpoint::write_atomic_with;
use crate::data::{stream, DataSource, StreamOptions};
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub struct EmbeddingCache {
    path: PathBuf,
    index: HashMap<String, u32>,
    image: Tensor,
    text: Tensor,
    states: Tensor,
    mask: Tensor,
}

const CHUNK: usize = 64;

/// Embeds every record of `data` with `clip` and writes the cache to `out`; returns the count.
pub fn build_embedding_cache(
    clip: &FrozenClip,
    data: &DataSource,
    out: &Path,
    on_progress: &mut dyn FnMut(usize),
) -> Result<usize> {
    let size = clip.model.vision_config()?.image_size;
    let opts = StreamOptions {
        image_size: size,
        seed: 0,
        epoch: 0,
        skip: 0,
        shuffle_buffer: 1,
        workers: 2,
    };
    let (mut keys, mut image, mut text, mut states, mut mask) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut pending: Vec<crate::data::Sample> = Vec::new();
    let mut flush = |pending: &mut Vec<crate::data::Sample>| -> Result<()> {
        if pending.is_empty() {
            return Ok(());
        }
        let b = pending.len();
        let pixels: Vec<u8> = pending
            .iter()
            .flat_map(|s| s.pixels.iter().copied())
            .collect();
        let x = Tensor::from_vec(pixels, (b, size, size, 3), &Device::Cpu)?
            .permute((0, 3, 1, 2))?
            .to_dtype(DType::F32)?;
        image.push(clip.encode_images(&((x / 127.5)? - 1.0)?)?);
        let captions: Vec<&str> = pending.iter().map(|s| s.caption.as_str()).collect();
        let t: TextConditioning = clip.encode_text(&captions)?;
        text.push(t.embeds);
        states.push(t.states);
        mask.push(t.mask);
        keys.extend(pending.drain(..).map(|s| s.key));
        on_progress(keys.len());
        Ok(())
    };
    for sample in stream(data, &opts)? {
        pending.push(sample);
        if pending.len() == CHUNK {
            flush(&mut pending)?;
        }
    }
    flush(&mut pending)?;
    if keys.is_empty() {
        return Err(Error::Data(format!(
            "{} holds no readable pairs to embed",
            data.describe()
        )));
    }
    let tensors = [
        ("image_embeds", Tensor::cat(&image, 0)?),
        ("text_embeds", Tensor::cat(&text, 0)?),
        ("text_states", Tensor::cat(&states, 0)?),
        ("text_mask", Tensor::cat(&mask, 0)?),
    ];
    let keys_json = serde_json::to_string(&keys).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let metadata: HashMap<String, String> = [
        ("keys".to_string(), keys_json),
        ("format".to_string(), "pt".to_string()),
    ]
    .into();
    write_atomic_with(out, |tmp| {
        safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (*n, t)), Some(metadata), tmp)
            .map_err(|e| Error::Checkpoint {
                path: out.to_path_buf(),
                message: format!("cannot write embeddings: {e}"),
            })
    })?;
    Ok(keys.len())
}

impl EmbeddingCache {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let bad = |message: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
            .map_err(|e| bad(format!("not a safetensors file: {e}")))?;
        let keys: Vec<String> = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("keys"))
            .and_then(|k| serde_json::from_str(k).ok())
            .ok_or_else(|| {
                bad("no `keys` metadata: not written by `unclip embed-dataset`".into())
            })?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &Device::Cpu)?;
        let get = |name: &str| {
            tensors
                .get(name)
                .cloned()
                .ok_or_else(|| bad(format!("tensor `{name}` is missing")))
        };
        let cache = Self {
            path: path.to_path_buf(),
            index: keys
                .iter()
                .enumerate()
                .map(|(i, k)| (k.clone(), i as u32))
                .collect(),
            image: get("image_embeds")?,
            text: get("text_embeds")?,
            states: get("text_states")?,
            mask: get("text_mask")?,
        };
        if cache.image.dim(0)? != keys.len() {
            return Err(bad(format!(
                "{} keys for {} embeddings",
                keys.len(),
                cache.image.dim(0)?
            )));
        }
        Ok(cache)
    }

    pub fn embedding_dim(&self) -> Result<usize> {
        Ok(self.image.dim(1)?)
    }

    /// (image embeddings, text conditioning) of the records `keys`.
    pub fn lookup(&self, keys: &[String]) -> Result<(Tensor, TextConditioning)> {
        let rows: Vec<u32> = keys
            .iter()
            .map(|k| {
                self.index.get(k).copied().ok_or_else(|| {
                    Error::Data(format!("record `{k}` is not in the embeddings {}; rerun embed-dataset on this data", self.path.display()))
                })
            })
            .collect::<Result<_>>()?;
        let rows = Tensor::new(rows.as_slice(), &Device::Cpu)?;
        Ok((
            self.image.index_select(&rows, 0)?,
            TextConditioning {
                embeds: self.text.index_select(&rows, 0)?,
                states: self.states.index_select(&rows, 0)?,
                mask: self.mask.index_select(&rows, 0)?,
            },
        ))
    }
}

impl EmbeddingCache {
    /// Mean and std (1, D) of the cached image embeddings.
    pub fn statistics(&self) -> Result<(Tensor, Tensor)> {
        let mean = self.image.mean_keepdim(0)?;
        let std = self
            .image
            .broadcast_sub(&mean)?
            .sqr()?
            .mean_keepdim(0)?
            .sqrt()?
            .clamp(1e-4, f64::MAX)?;
        Ok((mean, std))
    }
}
