//! A CLIP checkpoint in any of transformers' three layouts: `CLIPModel` (both towers, both
//! projections, the temperature), `CLIPTextModelWithProjection` and
//! `CLIPVisionModelWithProjection` (one tower and its projection; the plain `CLIPTextModel` and
//! `CLIPVisionModel` load too). Reference: transformers `modeling_clip.py`.

use super::config::{ClipConfig, ClipTextConfig, ClipVisionConfig};
use super::text::{ClipTextTransformer, TextOutput};
use super::vision::{ClipVisionTransformer, VisionOutput};
use crate::checkpoint::{find_weights_file, read_config, save_safetensors, write_config, Weights};
use crate::error::{Error, Result};
use crate::nn::{linear_no_bias, Linear};
use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{Init, VarBuilder};
use std::path::Path;

pub const WEIGHTS_FILE: &str = "model.safetensors";

/// Which towers a checkpoint folder holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// `CLIPModel`.
    Full,
    /// `CLIPTextModelWithProjection` (or `CLIPTextModel` when the projection is absent).
    Text,
    /// `CLIPVisionModelWithProjection` (or `CLIPVisionModel`).
    Vision,
}

impl ClipLayout {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "full" | "clip" | "CLIPModel" => Ok(Self::Full),
            "text" | "CLIPTextModelWithProjection" => Ok(Self::Text),
            "vision" | "CLIPVisionModelWithProjection" => Ok(Self::Vision),
            other => Err(Error::InvalidInput(format!(
                "unknown CLIP layout `{other}`; allowed: full, text, vision"
            ))),
        }
    }

    fn architecture(self) -> &'static str {
        match self {
            Self::Full => "CLIPModel",
            Self::Text => "CLIPTextModelWithProjection",
            Self::Vision => "CLIPVisionModelWithProjection",
        }
    }

    /// Reads the layout from a config.json's `model_type` (or, in old files, its shape).
    fn of_config(raw: &serde_json::Value, path: &Path) -> Result<Self> {
        match raw.get("model_type").and_then(|v| v.as_str()) {
            Some("clip") => Ok(Self::Full),
            Some("clip_text_model") => Ok(Self::Text),
            Some("clip_vision_model") => Ok(Self::Vision),
            Some(other) => Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: format!(
                    "model_type `{other}` is not a CLIP model; expected clip, clip_text_model or clip_vision_model"
                ),
            }),
            None if raw.get("text_config").is_some() => Ok(Self::Full),
            None if raw.get("image_size").is_some() => Ok(Self::Vision),
            None => Ok(Self::Text),
        }
    }
}

/// Both CLIP towers, or one of them, with their projections into the shared embedding space.
#[derive(Debug, Clone)]
pub struct ClipModel {
    text_model: Option<ClipTextTransformer>,
    text_projection: Option<Linear>,
    vision_model: Option<ClipVisionTransformer>,
    visual_projection: Option<Linear>,
    logit_scale: Option<Tensor>,
    config: ClipConfig,
    layout: ClipLayout,
}

impl ClipModel {
    /// Builds a full `CLIPModel`; with a `VarMap`-backed builder this creates fresh weights.
    pub fn new(cfg: &ClipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let text = ClipTextTransformer::new(&cfg.text_config, vb.pp("text_model"))?;
        let vision = ClipVisionTransformer::new(&cfg.vision_config, vb.pp("vision_model"))?;
        let text_projection = linear_no_bias(
            cfg.text_config.hidden_size,
            cfg.projection_dim,
            vb.pp("text_projection"),
        )?;
        let visual_projection = linear_no_bias(
            cfg.vision_config.hidden_size,
            cfg.projection_dim,
            vb.pp("visual_projection"),
        )?;
        let logit_scale =
            vb.get_with_hints((), "logit_scale", Init::Const(cfg.logit_scale_init_value))?;
        Ok(Self {
            text_model: Some(text),
            text_projection: Some(text_projection),
            vision_model: Some(vision),
            visual_projection: Some(visual_projection),
            logit_scale: Some(logit_scale),
            config: cfg.clone(),
            layout: ClipLayout::Full,
        })
    }

    pub(crate) fn new_text(cfg: &ClipTextConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let text = ClipTextTransformer::new(cfg, vb.pp("text_model"))?;
        let text_projection = if vb.contains_tensor("text_projection.weight") {
            Some(linear_no_bias(
                cfg.hidden_size,
                cfg.projection_dim,
                vb.pp("text_projection"),
            )?)
        } else {
            None
        };
        Ok(Self {
            text_model: Some(text),
            text_projection,
            vision_model: None,
            visual_projection: None,
            logit_scale: None,
            config: ClipConfig::new(cfg.clone(), ClipVisionConfig::default(), cfg.projection_dim),
            layout: ClipLayout::Text,
        })
    }

    fn new_vision(cfg: &ClipVisionConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let vision = ClipVisionTransformer::new(cfg, vb.pp("vision_model"))?;
        let visual_projection = if vb.contains_tensor("visual_projection.weight") {
            Some(linear_no_bias(
                cfg.hidden_size,
                cfg.projection_dim,
                vb.pp("visual_projection"),
            )?)
        } else {
            None
        };
        Ok(Self {
            text_model: None,
            text_projection: None,
            vision_model: Some(vision),
            visual_projection,
            logit_scale: None,
            config: ClipConfig::new(ClipTextConfig::default(), cfg.clone(), cfg.projection_dim),
            layout: ClipLayout::Vision,
        })
    }

    /// Loads a transformers CLIP folder (`config.json` + `model.safetensors`) in any layout.
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config_path = dir.join("config.json");
        if !config_path.is_file() {
            return Err(Error::Checkpoint {
                path: dir.to_path_buf(),
                message: "no config.json: not a transformers model folder".into(),
            });
        }
        let raw: serde_json::Value = read_config(&config_path, "a CLIP config")?;
        let layout = ClipLayout::of_config(&raw, &config_path)?;
        let weights = Weights::load(&find_weights_file(dir, &[WEIGHTS_FILE])?, device)?;
        let vb = weights.var_builder(DType::F32, device);
        let model = match layout {
            ClipLayout::Full => {
                let cfg: ClipConfig = read_config(&config_path, "a CLIPConfig")?;
                cfg.validate().map_err(|e| e.in_file(&config_path))?;
                Self::new(&cfg, vb)
            }
            ClipLayout::Text => {
                let cfg: ClipTextConfig = read_config(&config_path, "a CLIPTextConfig")?;
                cfg.validate().map_err(|e| e.in_file(&config_path))?;
                Self::new_text(&cfg, vb)
            }
            ClipLayout::Vision => {
                let cfg: ClipVisionConfig = read_config(&config_path, "a CLIPVisionConfig")?;
                cfg.validate().map_err(|e| e.in_file(&config_path))?;
                Self::new_vision(&cfg, vb)
            }
        }
        .map_err(|e| weights.explain(e))?;
        weights.report_unused();
        Ok(model)
    }

    /// Joins a text tower and an image tower that were trained together (a pipeline's
    /// `text_encoder/` and `image_encoder/`) into one model with both. It has no logit_scale:
    /// the pipeline does not store one, so contrastive logits are not available from it.
    pub fn from_towers(text: ClipModel, vision: ClipModel) -> Result<Self> {
        let (Some(text_model), Some(text_projection)) = (text.text_model, text.text_projection)
        else {
            return Err(Error::InvalidInput(
                "the text tower needs its text_projection (a CLIPTextModelWithProjection)".into(),
            ));
        };
        let (Some(vision_model), Some(visual_projection)) =
            (vision.vision_model, vision.visual_projection)
        else {
            return Err(Error::InvalidInput(
                "the image tower needs its visual_projection (a CLIPVisionModelWithProjection)"
                    .into(),
            ));
        };
        let (text_config, vision_config) = (text.config.text_config, vision.config.vision_config);
        if text_config.projection_dim != vision_config.projection_dim {
            return Err(Error::InvalidInput(format!(
                "the towers project to different widths: text {}, image {}",
                text_config.projection_dim, vision_config.projection_dim
            )));
        }
        let projection_dim = text_config.projection_dim;
        Ok(Self {
            text_model: Some(text_model),
            text_projection: Some(text_projection),
            vision_model: Some(vision_model),
            visual_projection: Some(visual_projection),
            logit_scale: None,
            config: ClipConfig::new(text_config, vision_config, projection_dim),
            layout: ClipLayout::Full,
        })
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    pub fn layout(&self) -> ClipLayout {
        self.layout
    }

    pub fn has_text(&self) -> bool {
        self.text_model.is_some()
    }

    pub fn has_vision(&self) -> bool {
        self.vision_model.is_some()
    }

    fn text_tower(&self) -> Result<&ClipTextTransformer> {
        self.text_model.as_ref().ok_or_else(|| {
            Error::InvalidInput(
                "this CLIP checkpoint has no text tower (it is a vision-only layout)".into(),
            )
        })
    }

    fn vision_tower(&self) -> Result<&ClipVisionTransformer> {
        self.vision_model.as_ref().ok_or_else(|| {
            Error::InvalidInput(
                "this CLIP checkpoint has no vision tower (it is a text-only layout)".into(),
            )
        })
    }

    pub fn text_config(&self) -> Result<&ClipTextConfig> {
        Ok(self.text_tower()?.config())
    }

    pub fn vision_config(&self) -> Result<&ClipVisionConfig> {
        Ok(self.vision_tower()?.config())
    }

    pub fn text_outputs(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<TextOutput> {
        Ok(self.text_tower()?.forward(input_ids, attention_mask)?)
    }

    /// The text encoder's input and every layer's output (before the final layer norm).
    pub fn text_hidden_states(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Vec<Tensor>> {
        Ok(self
            .text_tower()?
            .forward_hidden_states(input_ids, attention_mask)?)
    }

    pub fn vision_outputs(&self, pixel_values: &Tensor) -> Result<VisionOutput> {
        Ok(self.vision_tower()?.forward(pixel_values)?)
    }

    /// Projected text features (B, P), not normalised (`get_text_features`).
    pub fn text_features(
        &self,
        input_ids: &Tensor,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let pooled = self.text_outputs(input_ids, attention_mask)?.pooler_output;
        let projection = self.text_projection.as_ref().ok_or_else(|| {
            Error::InvalidInput("this CLIP text checkpoint has no text_projection".into())
        })?;
        Ok(projection.forward(&pooled)?)
    }

    /// Projected image features (B, P), not normalised (`get_image_features`).
    pub fn image_features(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let pooled = self.vision_outputs(pixel_values)?.pooler_output;
        let projection = self.visual_projection.as_ref().ok_or_else(|| {
            Error::InvalidInput("this CLIP vision checkpoint has no visual_projection".into())
        })?;
        Ok(projection.forward(&pooled)?)
    }

    /// The learned log temperature; exp() of it scales the cosine similarities.
    pub fn logit_scale(&self) -> Result<&Tensor> {
        self.logit_scale.as_ref().ok_or_else(|| {
            Error::InvalidInput("only a full CLIPModel checkpoint has a logit_scale".into())
        })
    }

    /// (logits_per_text (T, I), logits_per_image (I, T)) from unnormalised features.
    pub fn logits(
        &self,
        text_features: &Tensor,
        image_features: &Tensor,
    ) -> Result<(Tensor, Tensor)> {
        let text = l2_normalize(text_features)?;
        let image = l2_normalize(image_features)?;
        let scale = self.logit_scale()?.exp()?;
        let per_text = text.matmul(&image.t()?)?.broadcast_mul(&scale)?;
        let per_image = per_text.t()?;
        Ok((per_text, per_image))
    }
}

/// x / ‖x‖₂ along the last dimension, as transformers normalises CLIP embeddings.
pub fn l2_normalize(xs: &Tensor) -> candle_core::Result<Tensor> {
    xs.broadcast_div(&xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)
}

/// Writes `tensors` (named as in a full CLIPModel) as a transformers folder in `layout`.
pub fn save_clip(
    dir: &Path,
    config: &ClipConfig,
    tensors: &[(String, Tensor)],
    layout: ClipLayout,
) -> Result<()> {
    let keep = |name: &str| match layout {
        ClipLayout::Full => true,
        ClipLayout::Text => name.starts_with("text_model.") || name.starts_with("text_projection."),
        ClipLayout::Vision => {
            name.starts_with("vision_model.") || name.starts_with("visual_projection.")
        }
    };
    let selected: Vec<(String, Tensor)> =
        tensors.iter().filter(|(n, _)| keep(n)).cloned().collect();
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let config_path = dir.join("config.json");
    match layout {
        ClipLayout::Full => {
            let mut cfg = config.clone();
            cfg.architectures = vec![layout.architecture().into()];
            write_config(&config_path, &cfg)?;
        }
        ClipLayout::Text => {
            let mut cfg = config.text_config.clone();
            cfg.projection_dim = config.projection_dim;
            cfg.architectures = vec![layout.architecture().into()];
            write_config(&config_path, &cfg)?;
        }
        ClipLayout::Vision => {
            let mut cfg = config.vision_config.clone();
            cfg.projection_dim = config.projection_dim;
            cfg.architectures = vec![layout.architecture().into()];
            write_config(&config_path, &cfg)?;
        }
    }
    save_safetensors(&selected, &dir.join(WEIGHTS_FILE))
}

/// Reads every tensor of a CLIP folder, for re-saving it in another layout.
pub fn load_clip_tensors(dir: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let weights = Weights::load(&find_weights_file(dir, &[WEIGHTS_FILE])?, device)?;
    let vb = weights.var_builder(DType::F32, device);
    let mut names: Vec<String> = weights.names().map(str::to_string).collect();
    names.sort();
    names
        .into_iter()
        .filter(|n| !n.ends_with("position_ids"))
        .map(|n| {
            let t = vb.get_unchecked(&n).map_err(|e| weights.explain(e))?;
            Ok((n, t))
        })
        .collect()
}
