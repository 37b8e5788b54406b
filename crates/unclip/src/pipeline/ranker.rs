//! A CLIP of its own for reranking image candidates (`ranker/` in a pipeline folder). The prior
//! and the decoder must keep the CLIP they were trained on, but the CLIP that picks the best of
//! k decoder samples need not be that one: a CLIP fine-tuned with hard negatives (NegCLIP)
//! tells "a red square and a blue circle" from "a red circle and a blue square", which the
//! conditioning CLIP of a small model often cannot. Not part of diffusers' layout, which
//! ignores the folder.

use crate::clip::{ClipImageProcessor, ClipModel};
use crate::error::{Error, Result};
use crate::tokenizer::ClipTokenizer;
use candle_core::{Device, Tensor};
use std::path::Path;

/// The folder name of the ranking CLIP inside a pipeline folder.
pub const RANKER: &str = "ranker";

/// A full CLIPModel (both towers) with its tokenizer and image processor.
pub struct Ranker {
    tokenizer: ClipTokenizer,
    model: ClipModel,
    processor: ClipImageProcessor,
    device: Device,
}

impl Ranker {
    /// Loads a CLIPModel folder as `unclip train clip` writes it (config, weights, tokenizer
    /// files, and optionally `preprocessor_config.json`).
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = ClipModel::load(dir, device)?;
        if !model.has_text() || !model.has_vision() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: "a ranking CLIP needs both towers (a CLIPModel folder, as `unclip train \
                          clip` writes)"
                    .into(),
            });
        }
        let tokenizer = ClipTokenizer::load(dir)?;
        let processor =
            ClipImageProcessor::load_or_default(dir, model.vision_config()?.image_size)?;
        Ok(Self {
            tokenizer,
            model,
            processor,
            device: device.clone(),
        })
    }

    /// Projected text embeddings (P, D) of the prompts.
    pub fn text_embeddings<S: AsRef<str>>(&self, prompts: &[S]) -> Result<Tensor> {
        let (ids, _) = self
            .tokenizer
            .encode_batch(prompts)?
            .to_tensors(&self.device)?;
        self.model.text_features(&ids, None)
    }

    /// Projected image embeddings (B, D) of 8-bit images.
    pub fn image_embeddings(&self, images: &[image::RgbImage]) -> Result<Tensor> {
        let pixels = self.processor.preprocess_images(images, &self.device)?;
        self.model.image_features(&pixels)
    }
}
