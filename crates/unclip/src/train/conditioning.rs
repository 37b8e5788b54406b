//! The frozen CLIP a prior or decoder is trained against: text embeddings and token states of
//! captions, image embeddings of training images, and the random draws (timesteps, noise,
//! drop masks) every diffusion loss needs, all from the run's seeded RNG.

use crate::clip::{ClipImageProcessor, ClipModel};
use crate::error::{Error, Result};
use crate::imageops::resize_bicubic_antialias;
use crate::tokenizer::ClipTokenizer;
use candle_core::{Device, Tensor};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use std::path::Path;

/// What the text tower says about a batch of captions.
pub struct TextConditioning {
    pub embeds: Tensor, // (B, D)
    pub states: Tensor, // (B, T, D)
    pub mask: Tensor,   // (B, T) u32
}

impl TextConditioning {
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        Ok(Self {
            embeds: self.embeds.to_device(device)?,
            states: self.states.to_device(device)?,
            mask: self.mask.to_device(device)?,
        })
    }
}

pub struct FrozenClip {
    pub model: ClipModel,
    pub tokenizer: ClipTokenizer,
    image_size: usize,
    mean: Tensor, // (1, 3, 1, 1)
    std: Tensor,
    device: Device,
}

impl FrozenClip {
    /// Where the towers' weights live, and so where a stage trained against them computes.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Loads a CLIPModel folder, or the CLIP of a pipeline folder (its `text_encoder/`,
    /// `image_encoder/`, `tokenizer/` and `feature_extractor/`), so that a stage can be trained
    /// or fine-tuned against the CLIP an existing model already uses.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let pipeline = !dir.join("config.json").is_file()
            && dir.join("text_encoder").is_dir()
            && dir.join("image_encoder").is_dir();
        let (model, tokenizer_dir, processor_dir) = if pipeline {
            let text = ClipModel::load(&dir.join("text_encoder"), device)?;
            let vision = ClipModel::load(&dir.join("image_encoder"), device)?;
            let model = ClipModel::from_towers(text, vision).map_err(|e| Error::Checkpoint {
                path: dir.to_path_buf(),
                message: e.to_string(),
            })?;
            (model, dir.join("tokenizer"), dir.join("feature_extractor"))
        } else {
            let model = ClipModel::load(dir, device)?;
            (model, dir.to_path_buf(), dir.to_path_buf())
        };
        if !model.has_text() || !model.has_vision() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message:
                    "training a prior or decoder needs a full CLIPModel (text and vision towers)"
                        .into(),
            });
        }
        let text = model.text_config()?;
        if text.hidden_size != model.config().projection_dim {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: format!(
                    "unCLIP's prior and text projection read the text tower's token states as CLIP embeddings, \
                     so its hidden_size ({}) must equal projection_dim ({})",
                    text.hidden_size,
                    model.config().projection_dim
                ),
            });
        }
        let tokenizer = ClipTokenizer::load(&tokenizer_dir)?
            .with_context_length(text.max_position_embeddings)?;
        let image_size = model.vision_config()?.image_size;
        let processor = ClipImageProcessor::load_or_default(&processor_dir, image_size)?;
        let mean = Tensor::new(&processor.image_mean, device)?.reshape((1, 3, 1, 1))?;
        let std = Tensor::new(&processor.image_std, device)?.reshape((1, 3, 1, 1))?;
        Ok(Self {
            model,
            tokenizer,
            image_size,
            mean,
            std,
            device: device.clone(),
        })
    }

    pub fn embedding_dim(&self) -> usize {
        self.model.config().projection_dim
    }

    pub fn encode_text<S: AsRef<str>>(&self, captions: &[S]) -> Result<TextConditioning> {
        let (ids, mask) = self
            .tokenizer
            .encode_batch(captions)?
            .to_tensors(&self.device)?;
        let states = self
            .model
            .text_outputs(&ids, None)?
            .last_hidden_state
            .detach();
        let embeds = self.model.text_features(&ids, None)?.detach();
        Ok(TextConditioning {
            embeds,
            states,
            mask,
        })
    }

    /// Unnormalised image embeddings (what unCLIP's decoder is conditioned on) of (B, 3, S, S)
    /// images in [-1, 1]: resized to CLIP's size and normalised as its processor does.
    pub fn encode_images(&self, pixels: &Tensor) -> Result<Tensor> {
        let x = resize_bicubic_antialias(pixels, self.image_size, self.image_size)?;
        let x = ((x + 1.0)? / 2.0)?
            .broadcast_sub(&self.mean)?
            .broadcast_div(&self.std)?;
        Ok(self.model.image_features(&x)?.detach())
    }
}

/// Standard normal noise of `shape` from the run's RNG.
pub fn normal(rng: &mut ChaCha8Rng, shape: &[usize], device: &Device) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(rng)).collect();
    Ok(Tensor::from_vec(v, shape, device)?)
}

/// One uniform timestep in 0..train per sample.
pub fn timesteps(rng: &mut ChaCha8Rng, batch: usize, train: usize) -> Vec<i64> {
    (0..batch)
        .map(|_| rng.random_range(0..train as i64))
        .collect()
}

/// Per sample: with probability `share` a timestep uniform in min_timestep..train, otherwise
/// one uniform in 0..train.
pub fn timesteps_with_high_noise(
    rng: &mut ChaCha8Rng,
    batch: usize,
    train: usize,
    min_timestep: usize,
    share: f64,
) -> Vec<i64> {
    (0..batch)
        .map(|_| {
            let low = if rng.random::<f64>() < share {
                min_timestep
            } else {
                0
            };
            rng.random_range(low as i64..train as i64)
        })
        .collect()
}

/// A (B, 1) keep-mask: 1 with probability 1 - p_drop.
pub fn keep_mask(
    rng: &mut ChaCha8Rng,
    batch: usize,
    p_drop: f64,
    device: &Device,
) -> Result<Tensor> {
    let v: Vec<f32> = (0..batch)
        .map(|_| {
            if rng.random::<f64>() < p_drop {
                0.0
            } else {
                1.0
            }
        })
        .collect();
    Ok(Tensor::from_vec(v, (batch, 1), device)?)
}

/// Row-wise choice: keep ? a : b, for a keep-mask (B, 1); `b` may have a single row, which
/// then stands for every row.
pub fn select_rows(keep: &Tensor, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let mut shape = vec![keep.dim(0)?];
    shape.extend(std::iter::repeat_n(1, a.rank() - 1));
    let k = keep.reshape(shape.as_slice())?.to_dtype(a.dtype())?;
    let b = b.to_dtype(a.dtype())?;
    Ok((a.broadcast_mul(&k)? + b.broadcast_mul(&(1.0 - &k)?)?)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_high_noise_share_draws_that_share_from_the_noisy_end_and_the_rest_uniformly() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let ts = timesteps_with_high_noise(&mut rng, 20_000, 1000, 800, 0.5);
        assert!(ts.iter().all(|&t| (0..1000).contains(&t)));
        let high = ts.iter().filter(|&&t| t >= 800).count() as f64 / ts.len() as f64;
        // 0.5 drawn from 800..1000 plus a fifth of the uniform half.
        assert!((high - 0.6).abs() < 0.02, "share at t >= 800: {high}");
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let all_high = timesteps_with_high_noise(&mut rng, 1000, 1000, 900, 1.0);
        assert!(all_high.iter().all(|&t| t >= 900));
    }
}
