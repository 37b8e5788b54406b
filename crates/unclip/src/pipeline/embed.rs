//! CLIP as a tool: embed texts and images, and zero-shot classify an image against labels.

use crate::clip::{l2_normalize, ClipImageProcessor, ClipModel};
use crate::error::{Error, Result};
use crate::nn::softmax_last_dim;
use crate::tokenizer::ClipTokenizer;
use candle_core::{Device, Tensor};
use std::path::Path;

/// A CLIP folder's model with its tokenizer (if it has a text tower) and image processor
/// (if it has a vision tower).
pub struct ClipEmbedder {
    pub model: ClipModel,
    pub tokenizer: Option<ClipTokenizer>,
    pub processor: Option<ClipImageProcessor>,
    device: Device,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Embeddings {
    pub input_ids: Vec<Vec<u32>>,
    /// L2-normalised, as transformers' `CLIPModel` returns them.
    pub text_embeds: Vec<Vec<f32>>,
    pub image_embeds: Vec<Vec<f32>>,
}

impl ClipEmbedder {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let model = ClipModel::load(dir, device)?;
        let tokenizer = if model.has_text() {
            let context = model.text_config()?.max_position_embeddings;
            Some(ClipTokenizer::load(dir)?.with_context_length(context)?)
        } else {
            None
        };
        let processor = if model.has_vision() {
            Some(ClipImageProcessor::load_or_default(
                dir,
                model.vision_config()?.image_size,
            )?)
        } else {
            None
        };
        Ok(Self {
            model,
            tokenizer,
            processor,
            device: device.clone(),
        })
    }

    fn tokenizer(&self) -> Result<&ClipTokenizer> {
        self.tokenizer.as_ref().ok_or_else(|| {
            Error::InvalidInput("this model has no text tower, so it cannot embed text".into())
        })
    }

    fn processor(&self) -> Result<&ClipImageProcessor> {
        self.processor.as_ref().ok_or_else(|| {
            Error::InvalidInput("this model has no vision tower, so it cannot embed images".into())
        })
    }

    /// (input_ids, unnormalised features) for `texts`.
    pub fn text_features<S: AsRef<str>>(&self, texts: &[S]) -> Result<(Vec<Vec<u32>>, Tensor)> {
        let batch = self.tokenizer()?.encode_batch(texts)?;
        let (ids, mask) = batch.to_tensors(&self.device)?;
        let features = self.model.text_features(&ids, Some(&mask))?;
        Ok((batch.input_ids, features))
    }

    pub fn image_features(&self, images: &[impl AsRef<Path>]) -> Result<Tensor> {
        let pixels = self.processor()?.preprocess_files(images, &self.device)?;
        self.model.image_features(&pixels)
    }

    pub fn embed(&self, texts: &[String], images: &[impl AsRef<Path>]) -> Result<Embeddings> {
        let mut out = Embeddings::default();
        if !texts.is_empty() {
            let (ids, features) = self.text_features(texts)?;
            out.input_ids = ids;
            out.text_embeds = l2_normalize(&features)?.to_vec2::<f32>()?;
        }
        if !images.is_empty() {
            out.image_embeds = l2_normalize(&self.image_features(images)?)?.to_vec2::<f32>()?;
        }
        Ok(out)
    }

    /// Zero-shot probabilities of each label for one image: softmax of CLIP's logits_per_image.
    pub fn classify<S: AsRef<str>>(&self, image: &Path, labels: &[S]) -> Result<Vec<f32>> {
        if labels.is_empty() {
            return Err(Error::InvalidInput(
                "classification needs at least one label".into(),
            ));
        }
        let (_, text) = self.text_features(labels)?;
        let image = self.image_features(&[image])?;
        let (_, logits_per_image) = self.model.logits(&text, &image)?;
        Ok(softmax_last_dim(&logits_per_image)?
            .squeeze(0)?
            .to_vec1::<f32>()?)
    }
}
