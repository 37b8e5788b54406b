//! The two U-Net configs as diffusers writes them (`UNet2DConditionModel`, `UNet2DModel`
//! `config.json`). Absent fields take diffusers 0.42's defaults, unknown ones are ignored (and
//! logged by `checkpoint::read_config`). `validate()` rejects what this project does not
//! implement, naming the field and the allowed values, and resolves block names into kinds.
//! Reference: diffusers `models/unets/unet_2d_condition.py` and `unet_2d.py`, `__init__`.

use super::blocks::{DownBlockKind, MidBlockKind, UpBlockKind};
use super::resnet::TimeScaleShift;
use crate::error::{Error, Result};
use crate::nn::Activation;
use serde::{Deserialize, Serialize};

/// A config value diffusers accepts either once for every block or as one entry per block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PerBlock<T> {
    All(T),
    Each(Vec<T>),
}

impl<T: Clone> PerBlock<T> {
    /// One value per down block (`n` of them).
    pub fn resolve(&self, n: usize, field: &str) -> Result<Vec<T>> {
        match self {
            PerBlock::All(v) => Ok(vec![v.clone(); n]),
            PerBlock::Each(vs) if vs.len() == n => Ok(vs.clone()),
            PerBlock::Each(vs) => Err(Error::config(
                field,
                format!("has {} entries but there are {n} down blocks", vs.len()),
            )),
        }
    }
}

/// `sample_size`: an int or `[height, width]`. Informational: the U-Nets take any size whose
/// sides divide by 2^(number of downsamplers).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SampleSize {
    Square(usize),
    Rect(Vec<usize>),
}

macro_rules! default_fn {
    ($name:ident, $ty:ty, $value:expr) => {
        fn $name() -> $ty {
            $value
        }
    };
}

fn strings(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

default_fn!(yes, bool, true);
default_fn!(one, usize, 1);
default_fn!(two, usize, 2);
default_fn!(three, usize, 3);
default_fn!(four, usize, 4);
default_fn!(one_f, f64, 1.0);
default_fn!(eps, f64, 1e-5);
default_fn!(silu, String, "silu".into());
default_fn!(default_str, String, "default".into());
default_fn!(positional, String, "positional".into());
default_fn!(conv, String, "conv".into());
default_fn!(groups, Option<usize>, Some(32));
default_fn!(groups_plain, usize, 32);
default_fn!(no, PerBlock<bool>, PerBlock::All(false));
default_fn!(two_layers, PerBlock<usize>, PerBlock::All(2));
default_fn!(cross_dim, PerBlock<usize>, PerBlock::All(1280));
default_fn!(head_dim, PerBlock<usize>, PerBlock::All(8));
default_fn!(head_dim_plain, Option<usize>, Some(8));
default_fn!(cond_name, String, "UNet2DConditionModel".into());
default_fn!(plain_name, String, "UNet2DModel".into());
default_fn!(cond_channels, Vec<usize>, vec![320, 640, 1280, 1280]);
default_fn!(plain_channels, Vec<usize>, vec![224, 448, 672, 896]);
default_fn!(
    cond_mid,
    Option<String>,
    Some("UNetMidBlock2DCrossAttn".into())
);
default_fn!(plain_mid, Option<String>, Some("UNetMidBlock2D".into()));
default_fn!(
    cond_down,
    Vec<String>,
    strings(&[
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D"
    ])
);
default_fn!(
    cond_up,
    Vec<String>,
    strings(&[
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D"
    ])
);
default_fn!(
    plain_down,
    Vec<String>,
    strings(&[
        "DownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D",
        "AttnDownBlock2D"
    ])
);
default_fn!(
    plain_up,
    Vec<String>,
    strings(&[
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "AttnUpBlock2D",
        "UpBlock2D"
    ])
);

/// `UNet2DConditionModel`'s config: the unCLIP decoder (Karlo's `decoder/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConditionConfig {
    #[serde(rename = "_class_name", default = "cond_name")]
    pub class_name: String,
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    #[serde(default = "four")]
    pub in_channels: usize,
    #[serde(default = "four")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "cond_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "cond_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "cond_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "no")]
    pub only_cross_attention: PerBlock<bool>,
    #[serde(default = "cond_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two_layers")]
    pub layers_per_block: PerBlock<usize>,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    /// Dropout inside the ResNet blocks. Only inference is exact; training here applies none.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "groups")]
    pub norm_num_groups: Option<usize>,
    #[serde(default = "eps")]
    pub norm_eps: f64,
    #[serde(default = "cross_dim")]
    pub cross_attention_dim: PerBlock<usize>,
    #[serde(default)]
    pub encoder_hid_dim: Option<usize>,
    #[serde(default)]
    pub encoder_hid_dim_type: Option<String>,
    #[serde(default = "head_dim")]
    pub attention_head_dim: PerBlock<usize>,
    #[serde(default)]
    pub num_attention_heads: Option<PerBlock<usize>>,
    #[serde(default)]
    pub dual_cross_attention: bool,
    #[serde(default)]
    pub use_linear_projection: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub addition_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub upcast_attention: bool,
    #[serde(default = "default_str")]
    pub resnet_time_scale_shift: String,
    #[serde(default)]
    pub resnet_skip_time_act: bool,
    #[serde(default = "one_f")]
    pub resnet_out_scale_factor: f64,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub time_embedding_act_fn: Option<String>,
    #[serde(default)]
    pub timestep_post_act: Option<String>,
    #[serde(default)]
    pub time_cond_proj_dim: Option<usize>,
    #[serde(default = "three")]
    pub conv_in_kernel: usize,
    #[serde(default = "three")]
    pub conv_out_kernel: usize,
    #[serde(default)]
    pub projection_class_embeddings_input_dim: Option<usize>,
    #[serde(default = "default_str")]
    pub attention_type: String,
    #[serde(default)]
    pub class_embeddings_concat: bool,
    #[serde(default)]
    pub mid_block_only_cross_attention: Option<bool>,
    #[serde(default)]
    pub cross_attention_norm: Option<String>,
    /// This project's, not diffusers': add fixed 2-D sine position codes to the pixels at every
    /// attention layer (see `position_codes`), so attention knows where a pixel is. Written to
    /// `config.json` only when on; diffusers ignores the field, so a decoder trained with it
    /// decodes differently there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub attention_position_codes: bool,
}

impl Default for UNet2DConditionConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
}

/// `UNet2DModel`'s config: the unCLIP super-resolution U-Nets (Karlo's `super_res_first/` and
/// `super_res_last/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UNet2DConfig {
    #[serde(rename = "_class_name", default = "plain_name")]
    pub class_name: String,
    #[serde(default)]
    pub sample_size: Option<SampleSize>,
    #[serde(default = "three")]
    pub in_channels: usize,
    #[serde(default = "three")]
    pub out_channels: usize,
    #[serde(default)]
    pub center_input_sample: bool,
    #[serde(default = "positional")]
    pub time_embedding_type: String,
    #[serde(default)]
    pub time_embedding_dim: Option<usize>,
    #[serde(default)]
    pub freq_shift: f64,
    #[serde(default = "yes")]
    pub flip_sin_to_cos: bool,
    #[serde(default = "plain_down")]
    pub down_block_types: Vec<String>,
    #[serde(default = "plain_mid")]
    pub mid_block_type: Option<String>,
    #[serde(default = "plain_up")]
    pub up_block_types: Vec<String>,
    #[serde(default = "plain_channels")]
    pub block_out_channels: Vec<usize>,
    #[serde(default = "two")]
    pub layers_per_block: usize,
    #[serde(default = "one_f")]
    pub mid_block_scale_factor: f64,
    #[serde(default = "one")]
    pub downsample_padding: usize,
    #[serde(default = "conv")]
    pub downsample_type: String,
    #[serde(default = "conv")]
    pub upsample_type: String,
    /// Dropout inside the ResNet blocks. Only inference is exact; training here applies none.
    #[serde(default)]
    pub dropout: f64,
    #[serde(default = "silu")]
    pub act_fn: String,
    #[serde(default = "head_dim_plain")]
    pub attention_head_dim: Option<usize>,
    #[serde(default = "groups_plain")]
    pub norm_num_groups: usize,
    #[serde(default)]
    pub attn_norm_num_groups: Option<usize>,
    #[serde(default = "eps")]
    pub norm_eps: f64,
    #[serde(default = "default_str")]
    pub resnet_time_scale_shift: String,
    #[serde(default = "yes")]
    pub add_attention: bool,
    #[serde(default)]
    pub class_embed_type: Option<String>,
    #[serde(default)]
    pub num_class_embeds: Option<usize>,
    #[serde(default)]
    pub num_train_timesteps: Option<usize>,
}

impl Default for UNet2DConfig {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every field has a default")
    }
}

/// How the class labels enter the time embedding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassEmbedding {
    None,
    /// `class_embed_type: "identity"`: the labels (B, time_embed_dim) are added as they are
    /// (unCLIP §2.1: the projected CLIP image embedding joins the timestep embedding).
    Identity,
}

/// Everything both U-Nets resolve the same way; built by `validate`.
#[derive(Debug, Clone)]
pub(crate) struct Resolved {
    pub down: Vec<DownBlockKind>,
    pub up: Vec<UpBlockKind>,
    pub mid: Option<MidBlockKind>,
    pub layers_per_block: Vec<usize>,
    pub act: Activation,
    pub time_shift: TimeScaleShift,
    pub class_embedding: ClassEmbedding,
}

pub(crate) fn parse_activation(field: &str, name: &str) -> Result<Activation> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).map_err(|_| {
        Error::config(
            field,
            format!("activation `{name}` is not supported; allowed: silu, swish, gelu, relu"),
        )
    })
}

/// The sampled size must survive every downsampler: each side positive and divisible by
/// 2^(levels - 1). Checked at load so that the file is named, not a convolution mid-sampling.
fn check_sample_size(size: Option<&SampleSize>, levels: usize) -> Result<()> {
    let sides = match size {
        None => return Ok(()),
        Some(SampleSize::Square(side)) => vec![*side],
        Some(SampleSize::Rect(sides)) => sides.clone(),
    };
    let multiple = 1usize << levels.saturating_sub(1).min(16);
    if sides.is_empty() || sides.len() > 2 || sides.iter().any(|&s| s == 0 || s % multiple != 0) {
        return Err(Error::config(
            "sample_size",
            format!(
                "{sides:?}; allowed: one or two positive sides divisible by {multiple} (this \
                 U-Net has {levels} levels)"
            ),
        ));
    }
    Ok(())
}

fn check_common(
    block_out_channels: &[usize],
    down: usize,
    up: usize,
    groups: usize,
    time_embedding_type: &str,
) -> Result<()> {
    if block_out_channels.is_empty() {
        return Err(Error::config("block_out_channels", "must not be empty"));
    }
    if down != block_out_channels.len() || up != block_out_channels.len() {
        return Err(Error::config(
            "down_block_types",
            format!(
                "{down} down blocks and {up} up blocks for {} block_out_channels; all three must match",
                block_out_channels.len()
            ),
        ));
    }
    if groups == 0 {
        return Err(Error::config("norm_num_groups", "must be at least 1"));
    }
    if let Some(c) = block_out_channels.iter().find(|c| **c % groups != 0) {
        return Err(Error::config(
            "norm_num_groups",
            format!("{groups} groups do not divide block_out_channels entry {c}"),
        ));
    }
    if time_embedding_type != "positional" {
        return Err(Error::config(
            "time_embedding_type",
            format!("`{time_embedding_type}` is not supported; allowed: positional"),
        ));
    }
    Ok(())
}

fn class_embedding(
    kind: &Option<String>,
    num_class_embeds: Option<usize>,
) -> Result<ClassEmbedding> {
    match (kind.as_deref(), num_class_embeds) {
        (None, None) => Ok(ClassEmbedding::None),
        (Some("identity"), _) => Ok(ClassEmbedding::Identity),
        (None, Some(_)) => Err(Error::config(
            "num_class_embeds",
            "a learned class embedding table is not supported; allowed: null",
        )),
        (Some(other), _) => Err(Error::config(
            "class_embed_type",
            format!("`{other}` is not supported; allowed: null, identity"),
        )),
    }
}

fn reject_set<T: std::fmt::Debug>(field: &str, value: &Option<T>) -> Result<()> {
    match value {
        None => Ok(()),
        Some(v) => Err(Error::config(
            field,
            format!("{v:?} is not supported; allowed: null"),
        )),
    }
}

impl UNet2DConditionConfig {
    pub fn validate(&self) -> Result<()> {
        self.resolve().map(|_| ())
    }

    pub(crate) fn resolve(&self) -> Result<Resolved> {
        let n = self.block_out_channels.len();
        let groups = self.norm_num_groups.ok_or_else(|| {
            Error::config("norm_num_groups", "null is not supported; give a number")
        })?;
        check_common(
            &self.block_out_channels,
            self.down_block_types.len(),
            self.up_block_types.len(),
            groups,
            &self.time_embedding_type,
        )?;
        check_sample_size(self.sample_size.as_ref(), n)?;
        reject_set("num_attention_heads", &self.num_attention_heads)?;
        reject_set("encoder_hid_dim", &self.encoder_hid_dim)?;
        reject_set("encoder_hid_dim_type", &self.encoder_hid_dim_type)?;
        reject_set("addition_embed_type", &self.addition_embed_type)?;
        reject_set("time_cond_proj_dim", &self.time_cond_proj_dim)?;
        reject_set("cross_attention_norm", &self.cross_attention_norm)?;
        for (field, k) in [
            ("conv_in_kernel", self.conv_in_kernel),
            ("conv_out_kernel", self.conv_out_kernel),
        ] {
            if k % 2 == 0 {
                return Err(Error::config(field, format!("{k} must be odd")));
            }
        }
        let down = self
            .down_block_types
            .iter()
            .enumerate()
            .map(|(i, s)| DownBlockKind::parse(s, &format!("down_block_types[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let up = self
            .up_block_types
            .iter()
            .enumerate()
            .map(|(i, s)| UpBlockKind::parse(s, &format!("up_block_types[{i}]")))
            .collect::<Result<Vec<_>>>()?;
        let mid = match &self.mid_block_type {
            None => None,
            Some(s) => Some(MidBlockKind::parse(s, "mid_block_type")?),
        };
        let layers_per_block = self.layers_per_block.resolve(n, "layers_per_block")?;
        self.only_cross_attention
            .resolve(n, "only_cross_attention")?;
        self.cross_attention_dim.resolve(n, "cross_attention_dim")?;
        let head_dims = self.attention_head_dim.resolve(n, "attention_head_dim")?;
        // Channels each attention layer sees, with the head width diffusers gives it (the up
        // path reads attention_head_dim unreversed).
        let channels = &self.block_out_channels;
        let mut attention_layers = Vec::new();
        for i in 0..n {
            if down[i] == DownBlockKind::SimpleCrossAttn {
                attention_layers.push((channels[i], head_dims[i]));
            }
            if up[i] == UpBlockKind::SimpleCrossAttn {
                attention_layers.push((channels[n - 1 - i], head_dims[i]));
            }
        }
        if mid == Some(MidBlockKind::SimpleCrossAttn) {
            attention_layers.push((channels[n - 1], head_dims[n - 1]));
        }
        for (c, d) in attention_layers {
            if d == 0 || d > c {
                return Err(Error::config(
                    "attention_head_dim",
                    format!("{d} with {c} channels gives no attention head"),
                ));
            }
        }
        if let Some(act) = &self.time_embedding_act_fn {
            parse_activation("time_embedding_act_fn", act)?;
        }
        if let Some(act) = &self.timestep_post_act {
            parse_activation("timestep_post_act", act)?;
        }
        Ok(Resolved {
            down,
            up,
            mid,
            layers_per_block,
            act: parse_activation("act_fn", &self.act_fn)?,
            time_shift: TimeScaleShift::parse(&self.resnet_time_scale_shift)?,
            class_embedding: class_embedding(&self.class_embed_type, self.num_class_embeds)?,
        })
    }

    /// Width of the time embedding the blocks receive.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels.first().copied().unwrap_or(0) * 4)
    }
}

impl UNet2DConfig {
    pub fn validate(&self) -> Result<()> {
        self.resolve().map(|_| ())
    }

    pub(crate) fn resolve(&self) -> Result<Resolved> {
        let n = self.block_out_channels.len();
        check_common(
            &self.block_out_channels,
            self.down_block_types.len(),
            self.up_block_types.len(),
            self.norm_num_groups,
            &self.time_embedding_type,
        )?;
        check_sample_size(self.sample_size.as_ref(), n)?;
        let down = self
            .down_block_types
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let field = format!("down_block_types[{i}]");
                let kind = DownBlockKind::parse(s, &field)?;
                if kind == DownBlockKind::SimpleCrossAttn {
                    return Err(Error::config(
                        field,
                        "a cross-attention block needs UNet2DConditionModel; allowed here: ResnetDownsampleBlock2D, DownBlock2D",
                    ));
                }
                Ok(kind)
            })
            .collect::<Result<Vec<_>>>()?;
        let up = self
            .up_block_types
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let field = format!("up_block_types[{i}]");
                let kind = UpBlockKind::parse(s, &field)?;
                if kind == UpBlockKind::SimpleCrossAttn {
                    return Err(Error::config(
                        field,
                        "a cross-attention block needs UNet2DConditionModel; allowed here: ResnetUpsampleBlock2D, UpBlock2D",
                    ));
                }
                Ok(kind)
            })
            .collect::<Result<Vec<_>>>()?;
        // UNet2DModel builds a UNetMidBlock2D for any non-null mid_block_type.
        let mid = self.mid_block_type.as_ref().map(|_| MidBlockKind::Plain);
        if let (Some(_), true, Some(d)) = (&mid, self.add_attention, self.attention_head_dim) {
            let c = self.block_out_channels[n - 1];
            if d == 0 || d > c {
                return Err(Error::config(
                    "attention_head_dim",
                    format!("{d} with {c} mid-block channels gives no attention head"),
                ));
            }
        }
        Ok(Resolved {
            down,
            up,
            mid,
            layers_per_block: vec![self.layers_per_block; n],
            act: parse_activation("act_fn", &self.act_fn)?,
            time_shift: TimeScaleShift::parse(&self.resnet_time_scale_shift)?,
            class_embedding: class_embedding(&self.class_embed_type, self.num_class_embeds)?,
        })
    }

    /// Width of the time embedding the blocks receive.
    pub fn time_embed_dim(&self) -> usize {
        self.time_embedding_dim
            .unwrap_or(self.block_out_channels.first().copied().unwrap_or(0) * 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_mirror_diffusers_and_unsupported_blocks_are_named() {
        let cfg = UNet2DConditionConfig::default();
        assert_eq!(cfg.block_out_channels, [320, 640, 1280, 1280]);
        assert_eq!(cfg.cross_attention_dim, PerBlock::All(1280));
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("down_block_types[0]"), "{err}");
        assert!(err.contains("SimpleCrossAttnDownBlock2D"), "{err}");
        let plain = UNet2DConfig::default();
        assert_eq!(plain.block_out_channels, [224, 448, 672, 896]);
        assert!(plain.validate().is_err());
    }

    #[test]
    fn karlo_decoder_config_resolves() {
        let cfg: UNet2DConditionConfig = serde_json::from_value(serde_json::json!({
            "_class_name": "UNet2DConditionModel", "_diffusers_version": "0.12.0",
            "attention_head_dim": 64, "block_out_channels": [320, 640, 960, 1280],
            "class_embed_type": "identity", "cross_attention_dim": 1536,
            "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D",
                                  "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"],
            "in_channels": 3, "layers_per_block": 3,
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "out_channels": 6,
            "resnet_time_scale_shift": "scale_shift", "sample_size": 64,
            "up_block_types": ["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D",
                                "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"]
        }))
        .unwrap();
        let r = cfg.resolve().unwrap();
        assert_eq!(r.class_embedding, ClassEmbedding::Identity);
        assert_eq!(r.time_shift, TimeScaleShift::ScaleShift);
        assert_eq!(r.mid, Some(MidBlockKind::SimpleCrossAttn));
        assert_eq!(cfg.time_embed_dim(), 1280);
        let mut bad = cfg.clone();
        bad.resnet_time_scale_shift = "spatial".into();
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("resnet_time_scale_shift") && err.contains("scale_shift"),
            "{err}"
        );
        let mut bad = cfg;
        bad.layers_per_block = PerBlock::Each(vec![1, 2]);
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("layers_per_block"));
    }
}
