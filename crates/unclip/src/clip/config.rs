//! CLIP configs as transformers writes them (`CLIPConfig`, `CLIPTextConfig`, `CLIPVisionConfig`).
//! Absent fields take transformers' defaults; unknown fields are ignored.
//! Reference: transformers/models/clip/configuration_clip.py.

use crate::error::{Error, Result};
use crate::nn::Activation;
use serde::{Deserialize, Serialize};

/// How the text tower picks the token whose state becomes the pooled output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    /// Karlo-era configs (`eos_token_id == 2`): the position of the largest token id, which is
    /// `<|endoftext|>` in OpenAI's vocabulary.
    ArgmaxId,
    /// Newer configs: the first position holding `eos_token_id`.
    FirstEos(u32),
}

macro_rules! default_fn {
    ($name:ident, $ty:ty, $value:expr) => {
        fn $name() -> $ty {
            $value
        }
    };
}

default_fn!(text_vocab, usize, 49408);
default_fn!(text_hidden, usize, 512);
default_fn!(text_intermediate, usize, 2048);
default_fn!(text_heads, usize, 8);
default_fn!(text_positions, usize, 77);
default_fn!(vision_hidden, usize, 768);
default_fn!(vision_intermediate, usize, 3072);
default_fn!(vision_heads, usize, 12);
default_fn!(projection, usize, 512);
default_fn!(layers, usize, 12);
default_fn!(channels, usize, 3);
default_fn!(image_size, usize, 224);
default_fn!(patch_size, usize, 32);
default_fn!(act, Activation, Activation::QuickGelu);
default_fn!(eps, f64, 1e-5);
default_fn!(pad_id, u32, 1);
default_fn!(bos_id, u32, 49406);
default_fn!(eos_id, u32, 49407);
default_fn!(init_range, f64, 0.02);
default_fn!(one, f64, 1.0);
default_fn!(logit_scale_init, f64, 2.6592);
default_fn!(text_model_type, String, "clip_text_model".into());
default_fn!(vision_model_type, String, "clip_vision_model".into());
default_fn!(clip_model_type, String, "clip".into());

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default = "text_vocab")]
    pub vocab_size: usize,
    #[serde(default = "text_hidden")]
    pub hidden_size: usize,
    #[serde(default = "text_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "projection")]
    pub projection_dim: usize,
    #[serde(default = "layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "text_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "act")]
    pub hidden_act: Activation,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "pad_id")]
    pub pad_token_id: u32,
    #[serde(default = "bos_id")]
    pub bos_token_id: u32,
    #[serde(default = "eos_id")]
    pub eos_token_id: u32,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
    #[serde(default = "one")]
    pub initializer_factor: f64,
    #[serde(default = "text_model_type")]
    pub model_type: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    #[serde(default = "vision_hidden")]
    pub hidden_size: usize,
    #[serde(default = "vision_intermediate")]
    pub intermediate_size: usize,
    #[serde(default = "projection")]
    pub projection_dim: usize,
    #[serde(default = "layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "channels")]
    pub num_channels: usize,
    #[serde(default = "image_size")]
    pub image_size: usize,
    #[serde(default = "patch_size")]
    pub patch_size: usize,
    #[serde(default = "act")]
    pub hidden_act: Activation,
    #[serde(default = "eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "init_range")]
    pub initializer_range: f64,
    #[serde(default = "one")]
    pub initializer_factor: f64,
    #[serde(default = "vision_model_type")]
    pub model_type: String,
}

/// `CLIPConfig`: both towers plus the shared projection size and the initial temperature.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    #[serde(default)]
    pub text_config: ClipTextConfig,
    #[serde(default)]
    pub vision_config: ClipVisionConfig,
    #[serde(default = "projection")]
    pub projection_dim: usize,
    #[serde(default = "logit_scale_init")]
    pub logit_scale_init_value: f64,
    #[serde(default = "one")]
    pub initializer_factor: f64,
    #[serde(default = "clip_model_type")]
    pub model_type: String,
    #[serde(default)]
    pub architectures: Vec<String>,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every text config field has a default")
    }
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every vision config field has a default")
    }
}

fn check_heads(tower: &str, hidden: usize, heads: usize) -> Result<()> {
    if heads == 0 || hidden == 0 || !hidden.is_multiple_of(heads) {
        return Err(Error::config(
            format!("{tower}.num_attention_heads"),
            format!(
                "hidden_size {hidden} must be a positive multiple of num_attention_heads {heads}"
            ),
        ));
    }
    Ok(())
}

impl ClipTextConfig {
    /// transformers' rule (modeling_clip.py): `eos_token_id == 2` marks the legacy configs.
    pub fn pooling(&self) -> Pooling {
        if self.eos_token_id == 2 {
            Pooling::ArgmaxId
        } else {
            Pooling::FirstEos(self.eos_token_id)
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_heads("text_config", self.hidden_size, self.num_attention_heads)?;
        for (field, value) in [
            ("text_config.vocab_size", self.vocab_size),
            (
                "text_config.max_position_embeddings",
                self.max_position_embeddings,
            ),
            ("text_config.intermediate_size", self.intermediate_size),
        ] {
            if value == 0 {
                return Err(Error::config(field, "must be positive"));
            }
        }
        Ok(())
    }
}

impl ClipVisionConfig {
    pub fn num_patches(&self) -> usize {
        let side = self.image_size / self.patch_size.max(1);
        side * side
    }

    pub fn validate(&self) -> Result<()> {
        check_heads("vision_config", self.hidden_size, self.num_attention_heads)?;
        if self.patch_size == 0 || self.image_size < self.patch_size {
            return Err(Error::config(
                "vision_config.patch_size",
                format!("must be in 1..={} (image_size)", self.image_size),
            ));
        }
        if self.num_channels == 0 || self.intermediate_size == 0 {
            return Err(Error::config(
                "vision_config",
                "num_channels and intermediate_size must be positive",
            ));
        }
        Ok(())
    }
}

impl ClipConfig {
    pub fn new(
        text_config: ClipTextConfig,
        vision_config: ClipVisionConfig,
        projection_dim: usize,
    ) -> Self {
        Self {
            text_config,
            vision_config,
            projection_dim,
            logit_scale_init_value: logit_scale_init(),
            initializer_factor: 1.0,
            model_type: clip_model_type(),
            architectures: vec!["CLIPModel".into()],
        }
    }

    pub fn validate(&self) -> Result<()> {
        self.text_config.validate()?;
        self.vision_config.validate()?;
        if self.projection_dim == 0 {
            return Err(Error::config("projection_dim", "must be positive"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_fields_take_transformers_defaults() {
        let cfg: ClipConfig = serde_json::from_str(
            r#"{"text_config": {"hidden_size": 64}, "torch_dtype": "float32"}"#,
        )
        .unwrap();
        assert_eq!(cfg.text_config.hidden_size, 64);
        assert_eq!(cfg.text_config.vocab_size, 49408);
        assert_eq!(cfg.text_config.hidden_act, Activation::QuickGelu);
        assert_eq!(cfg.vision_config.patch_size, 32);
        assert_eq!(cfg.projection_dim, 512);
        assert_eq!(cfg.text_config.pooling(), Pooling::FirstEos(49407));
        let legacy: ClipTextConfig = serde_json::from_str(r#"{"eos_token_id": 2}"#).unwrap();
        assert_eq!(legacy.pooling(), Pooling::ArgmaxId);
    }

    #[test]
    fn impossible_values_are_named() {
        let cfg: ClipTextConfig =
            serde_json::from_str(r#"{"hidden_size": 30, "num_attention_heads": 4}"#).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("num_attention_heads"), "{err}");
    }
}
