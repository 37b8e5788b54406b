//! CLIP as a tool: embed texts and images, and zero-shot classify an image against labels.

use crate::clip::{l2_normalize, ClipImageProcessor, ClipModel};
use crate::error::{Error, Result};
use crate::nn::softmax_last_dim;
use crate::tokenizer::{ClipTokenizer, TokenBatch};
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
    /// Loads a transformers CLIP folder (any of the three layouts), or the CLIP of a diffusers
    /// unCLIP folder: its `text_encoder/` with `tokenizer/`, its `image_encoder/` with
    /// `feature_extractor/`, whichever it has.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let text_dir = dir.join("text_encoder");
        let image_dir = dir.join("image_encoder");
        let pipeline =
            !dir.join("config.json").is_file() && (text_dir.is_dir() || image_dir.is_dir());
        if !pipeline {
            return Self::from_parts(ClipModel::load(dir, device)?, dir, dir, device);
        }
        let text = text_dir
            .is_dir()
            .then(|| ClipModel::load(&text_dir, device))
            .transpose()?;
        let vision = image_dir
            .is_dir()
            .then(|| ClipModel::load(&image_dir, device))
            .transpose()?;
        let model = match (text, vision) {
            (Some(text), Some(vision)) => {
                ClipModel::from_towers(text, vision).map_err(|e| Error::Checkpoint {
                    path: dir.to_path_buf(),
                    message: e.to_string(),
                })?
            }
            (Some(tower), None) | (None, Some(tower)) => tower,
            (None, None) => unreachable!("a pipeline folder has at least one tower"),
        };
        Self::from_parts(
            model,
            &dir.join("tokenizer"),
            &dir.join("feature_extractor"),
            device,
        )
    }

    fn from_parts(
        model: ClipModel,
        tokenizer_dir: &Path,
        processor_dir: &Path,
        device: &Device,
    ) -> Result<Self> {
        let tokenizer = if model.has_text() {
            let context = model.text_config()?.max_position_embeddings;
            Some(ClipTokenizer::load(tokenizer_dir)?.with_context_length(context)?)
        } else {
            None
        };
        let processor = if model.has_vision() {
            Some(ClipImageProcessor::load_or_default(
                processor_dir,
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

    /// The tokens of `texts` and the text tower's last hidden states (B, T, D): the token
    /// states an unCLIP decoder reads through cross-attention.
    pub fn text_states<S: AsRef<str>>(&self, texts: &[S]) -> Result<(TokenBatch, Tensor)> {
        let batch = self.tokenizer()?.encode_batch(texts)?;
        let (ids, _) = batch.to_tensors(&self.device)?;
        let states = self.model.text_outputs(&ids, None)?.last_hidden_state;
        Ok((batch, states))
    }

    pub fn image_features(&self, images: &[impl AsRef<Path>]) -> Result<Tensor> {
        let pixels = self.processor()?.preprocess_files(images, &self.device)?;
        self.model.image_features(&pixels)
    }

    /// Unnormalised features of in-memory images.
    pub fn image_features_of(&self, images: &[image::RgbImage]) -> Result<Tensor> {
        let pixels = self.processor()?.preprocess_images(images, &self.device)?;
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
        if self.model.logit_scale().is_err() {
            return Err(Error::InvalidInput(
                "a pipeline folder stores no logit_scale (CLIP's temperature), so it cannot turn \
                 similarities into probabilities: classify with the CLIPModel folder it was \
                 trained as, or compare cosine similarities with `unclip embed`"
                    .into(),
            ));
        }
        let (_, logits_per_image) = self.model.logits(&text, &image)?;
        Ok(softmax_last_dim(&logits_per_image)?
            .squeeze(0)?
            .to_vec1::<f32>()?)
    }
}
