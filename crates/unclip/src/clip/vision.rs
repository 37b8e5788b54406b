//! CLIP's vision tower (ViT): patch embedding, a class token, learned positions, a pre-encoder
//! layer norm, the Transformer, and the layer-normed class-token state as the pooled output.
//! Reference: transformers `modeling_clip.py` (CLIPVisionEmbeddings, CLIPVisionTransformer).

use super::config::ClipVisionConfig;
use super::encoder::{Encoder, EncoderSpec};
use crate::nn::{Conv2d, Conv2dConfig, LayerNorm};
use candle_core::{Module, Result, Tensor};
use candle_nn::{Init, VarBuilder};

#[derive(Debug, Clone)]
struct VisionEmbeddings {
    class_embedding: Tensor,
    patch_embedding: Conv2d,
    position_embedding: Tensor,
}

impl VisionEmbeddings {
    fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let init = Init::Randn {
            mean: 0.0,
            stdev: 0.02 * cfg.initializer_factor,
        };
        let class_embedding = vb.get_with_hints(h, "class_embedding", init)?;
        let conv = Conv2dConfig {
            stride: cfg.patch_size,
            padding: 0,
        };
        let patch_weight = vb.pp("patch_embedding").get_with_hints(
            (h, cfg.num_channels, cfg.patch_size, cfg.patch_size),
            "weight",
            init,
        )?;
        let position_embedding = vb.pp("position_embedding").get_with_hints(
            (cfg.num_patches() + 1, h),
            "weight",
            init,
        )?;
        Ok(Self {
            class_embedding,
            patch_embedding: Conv2d::new(patch_weight, None, conv),
            position_embedding,
        })
    }

    fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let b = pixel_values.dim(0)?;
        let patches = self.patch_embedding.forward(pixel_values)?; // (B, C, h, w)
        let patches = patches.flatten_from(2)?.transpose(1, 2)?; // (B, N, C)
        let c = patches.dim(2)?;
        let class = self
            .class_embedding
            .reshape((1, 1, c))?
            .broadcast_as((b, 1, c))?;
        let tokens = Tensor::cat(&[&class, &patches], 1)?; // (B, N + 1, C)
        tokens.broadcast_add(&self.position_embedding)
    }
}

#[derive(Debug, Clone)]
pub struct VisionOutput {
    /// (B, N + 1, C): the encoder output, before the post layer norm.
    pub last_hidden_state: Tensor,
    /// (B, C): post_layernorm(last_hidden_state[:, 0]).
    pub pooler_output: Tensor,
}

#[derive(Debug, Clone)]
pub struct ClipVisionTransformer {
    embeddings: VisionEmbeddings,
    pre_layrnorm: LayerNorm,
    encoder: Encoder,
    post_layernorm: LayerNorm,
    config: ClipVisionConfig,
}

impl ClipVisionTransformer {
    pub fn new(cfg: &ClipVisionConfig, vb: VarBuilder) -> Result<Self> {
        let spec = EncoderSpec {
            hidden: cfg.hidden_size,
            intermediate: cfg.intermediate_size,
            heads: cfg.num_attention_heads,
            layers: cfg.num_hidden_layers,
            act: cfg.hidden_act,
            eps: cfg.layer_norm_eps,
        };
        Ok(Self {
            embeddings: VisionEmbeddings::new(cfg, vb.pp("embeddings"))?,
            // The misspelling is transformers' key name.
            pre_layrnorm: LayerNorm::new(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("pre_layrnorm"),
            )?,
            encoder: Encoder::new(&spec, vb.pp("encoder"))?,
            post_layernorm: LayerNorm::new(
                cfg.hidden_size,
                cfg.layer_norm_eps,
                vb.pp("post_layernorm"),
            )?,
            config: cfg.clone(),
        })
    }

    pub fn config(&self) -> &ClipVisionConfig {
        &self.config
    }

    /// pixel_values: (B, channels, image_size, image_size), already normalised.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<VisionOutput> {
        let (_, c, h, w) = pixel_values.dims4()?;
        let cfg = &self.config;
        if c != cfg.num_channels || h != cfg.image_size || w != cfg.image_size {
            candle_core::bail!(
                "pixel values of shape {:?}; the vision tower takes (B, {}, {}, {})",
                pixel_values.dims(),
                cfg.num_channels,
                cfg.image_size,
                cfg.image_size
            );
        }
        let xs = self.embeddings.forward(pixel_values)?;
        let xs = self.pre_layrnorm.forward(&xs)?;
        let last_hidden_state = self.encoder.forward(&xs, None)?;
        let class_state = last_hidden_state.narrow(1, 0, 1)?.squeeze(1)?;
        let pooler_output = self.post_layernorm.forward(&class_state)?;
        Ok(VisionOutput {
            last_hidden_state,
            pooler_output,
        })
    }
}
