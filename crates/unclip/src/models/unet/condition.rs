//! unCLIP's decoder: a text- and image-conditioned U-Net (Ramesh et al. 2022, §2.1, after GLIDE,
//! Nichol et al. 2021). The CLIP image embedding enters twice: projected and added to the
//! timestep embedding (`class_labels`, `class_embed_type: identity`), and as four extra tokens
//! in front of the caption's token states, which every attention layer reads through its
//! added K/V projections. With learned variance the output has 2 × 3 channels (ε, then the
//! variance interpolation v; Nichol & Dhariwal 2021, eq. 15).
//!
//! Reference: diffusers `models/unets/unet_2d_condition.py` (`UNet2DConditionModel`), restricted
//! to the blocks Karlo's decoder uses and driven by the same `config.json`.

use super::attention::AttentionSpec;
use super::blocks::{
    check_sample, unet_body, BlockInputs, BlockSpec, DownBlock, DownBlockKind, MidBlock,
    MidBlockKind, UpBlock, UpBlockKind,
};
use super::config::{parse_activation, ClassEmbedding, PerBlock, UNet2DConditionConfig};
use super::resnet::ResnetSpec;
use super::time::{batch_timesteps, with_class_labels, TimeEmbedding, TimeSpec};
use crate::checkpoint::{read_folder, save_folder};
use crate::error::Result as CrateResult;
use crate::nn::{Activation, Conv2d, Conv2dConfig, GroupNorm};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

/// Additive attention bias diffusers gives masked tokens (`(1 - mask) * -10000`).
pub const MASK_BIAS: f64 = -10_000.0;

pub const CLASS_NAME: &str = "UNet2DConditionModel";

#[derive(Debug, Clone)]
pub struct UNet2DConditionModel {
    conv_in: Conv2d,
    time_embedding: TimeEmbedding,
    time_embed_act: Option<Activation>,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_act: Activation,
    conv_out: Conv2d,
    class_embedding: ClassEmbedding,
    config: UNet2DConditionConfig,
}

fn config_error(e: crate::Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn conv_same(cin: usize, cout: usize, kernel: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: (kernel - 1) / 2,
        ..Default::default()
    };
    Conv2d::load(cin, cout, kernel, cfg, vb)
}

impl UNet2DConditionModel {
    pub fn new(cfg: &UNet2DConditionConfig, vb: VarBuilder) -> Result<Self> {
        let r = cfg.resolve().map_err(config_error)?;
        let channels = &cfg.block_out_channels;
        let n = channels.len();
        let groups = cfg.norm_num_groups.unwrap_or(32);
        let per_block = |e: CrateResult<Vec<usize>>| e.map_err(config_error);
        let cross_dims = per_block(cfg.cross_attention_dim.resolve(n, "cross_attention_dim"))?;
        let head_dims = per_block(cfg.attention_head_dim.resolve(n, "attention_head_dim"))?;
        let only_cross = cfg
            .only_cross_attention
            .resolve(n, "only_cross_attention")
            .map_err(config_error)?;
        let mid_only_cross = match (
            cfg.mid_block_only_cross_attention,
            &cfg.only_cross_attention,
        ) {
            (Some(flag), _) => flag,
            (None, PerBlock::All(flag)) => *flag,
            (None, PerBlock::Each(_)) => false,
        };

        let time_dim = cfg.time_embed_dim();
        let activation = |field: &str, name: &Option<String>| {
            name.as_deref()
                .map(|a| parse_activation(field, a))
                .transpose()
                .map_err(config_error)
        };
        let time = TimeSpec {
            features: channels[0],
            dim: time_dim,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            act: r.act,
            post_act: activation("timestep_post_act", &cfg.timestep_post_act)?,
        };
        let temb_channels = if cfg.class_embeddings_concat {
            2 * time_dim
        } else {
            time_dim
        };
        let resnet = ResnetSpec {
            temb_channels,
            groups,
            eps: cfg.norm_eps,
            act: r.act,
            time_shift: r.time_shift,
            skip_time_act: cfg.resnet_skip_time_act,
            output_scale_factor: cfg.resnet_out_scale_factor,
        };
        // DownBlock2D / UpBlock2D / UNetMidBlock2D take neither of the two resnet_* options.
        let plain_resnet = ResnetSpec {
            skip_time_act: false,
            output_scale_factor: 1.0,
            ..resnet
        };
        let cross_attention =
            |c: usize, head_dim: usize, cross_dim: usize, only: bool| AttentionSpec {
                channels: c,
                heads: c / head_dim,
                head_dim,
                added_kv_dim: Some(cross_dim),
                only_cross_attention: only,
                groups: Some(groups),
                eps: 1e-5,
                rescale_output_factor: 1.0,
                position_codes: cfg.attention_position_codes,
            };

        let mut down_blocks = Vec::with_capacity(n);
        for (i, kind) in r.down.iter().enumerate() {
            let (cin, cout) = (channels[i.saturating_sub(1)], channels[i]);
            let spec = BlockSpec {
                in_channels: cin,
                out_channels: cout,
                num_layers: r.layers_per_block[i],
                resample: i + 1 < n,
                attention: Some(cross_attention(
                    cout,
                    head_dims[i],
                    cross_dims[i],
                    only_cross[i],
                )),
            };
            let rs = if *kind == DownBlockKind::Plain {
                &plain_resnet
            } else {
                &resnet
            };
            down_blocks.push(DownBlock::new(
                *kind,
                &spec,
                rs,
                cfg.downsample_padding,
                vb.pp("down_blocks").pp(i),
            )?);
        }

        let last = channels[n - 1];
        let mid_resnet = ResnetSpec {
            output_scale_factor: cfg.mid_block_scale_factor,
            ..resnet
        };
        let mid_block = match r.mid {
            Some(MidBlockKind::SimpleCrossAttn) => Some(MidBlock::new(
                last,
                1,
                Some(&cross_attention(
                    last,
                    head_dims[n - 1],
                    cross_dims[n - 1],
                    mid_only_cross,
                )),
                &mid_resnet,
                vb.pp("mid_block"),
            )?),
            Some(MidBlockKind::Plain) => Some(MidBlock::new(
                last,
                0,
                None,
                &ResnetSpec {
                    skip_time_act: false,
                    ..mid_resnet
                },
                vb.pp("mid_block"),
            )?),
            None => None,
        };

        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        for (i, kind) in r.up.iter().enumerate() {
            let j = n - 1 - i; // the matching down block
            let prev = reversed[i.saturating_sub(1)];
            let cout = reversed[i];
            // diffusers indexes attention_head_dim without reversing it on the way up.
            let spec = BlockSpec {
                in_channels: reversed[(i + 1).min(n - 1)],
                out_channels: cout,
                num_layers: r.layers_per_block[j] + 1,
                resample: i + 1 < n,
                attention: Some(cross_attention(
                    cout,
                    head_dims[i],
                    cross_dims[j],
                    only_cross[j],
                )),
            };
            let rs = if *kind == UpBlockKind::Plain {
                &plain_resnet
            } else {
                &resnet
            };
            up_blocks.push(UpBlock::new(
                *kind,
                &spec,
                prev,
                rs,
                vb.pp("up_blocks").pp(i),
            )?);
        }

        Ok(Self {
            conv_in: conv_same(
                cfg.in_channels,
                channels[0],
                cfg.conv_in_kernel,
                vb.pp("conv_in"),
            )?,
            time_embedding: TimeEmbedding::new(&time, vb.pp("time_embedding"))?,
            time_embed_act: activation("time_embedding_act_fn", &cfg.time_embedding_act_fn)?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(
                groups,
                channels[0],
                cfg.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_act: r.act,
            conv_out: conv_same(
                channels[0],
                cfg.out_channels,
                cfg.conv_out_kernel,
                vb.pp("conv_out"),
            )?,
            class_embedding: r.class_embedding,
            config: cfg.clone(),
        })
    }

    /// Loads a diffusers `UNet2DConditionModel` folder (Karlo's `decoder/`).
    pub fn load(dir: &Path, device: &Device) -> CrateResult<Self> {
        let (cfg, weights) = read_folder::<UNet2DConditionConfig>(dir, CLASS_NAME, device)?;
        cfg.validate()
            .map_err(|e| e.in_file(dir.join("config.json")))?;
        let model = Self::new(&cfg, weights.var_builder(DType::F32, device))
            .map_err(|e| weights.explain(e))?;
        weights.report_unused();
        Ok(model)
    }

    /// Writes `tensors` (named as this model's parameters) and `cfg` as a diffusers folder that
    /// `UNet2DConditionModel.from_pretrained` reads.
    pub fn save(
        dir: &Path,
        cfg: &UNet2DConditionConfig,
        tensors: &[(String, Tensor)],
    ) -> CrateResult<()> {
        cfg.validate()?;
        save_folder(dir, cfg, tensors, |vb| Self::new(cfg, vb).map(|_| ()))
    }

    pub fn config(&self) -> &UNet2DConditionConfig {
        &self.config
    }

    /// Predicts the noise (and, with `out_channels` 6, the variance interpolation) of `sample`.
    ///
    /// - `sample`: (B, C_in, H, W), H and W divisible by 2^(blocks - 1)
    /// - `timestep`: (B,), (1,) or a scalar, f32
    /// - `encoder_hidden_states`: (B, S, cross_attention_dim)
    /// - `class_labels`: (B, time_embed_dim), required by `class_embed_type: identity`
    /// - `attention_mask`: (B, S), 1 = attend, 0 = padding
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
        class_labels: Option<&Tensor>,
        attention_mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let downsamplers = self.down_blocks.len().saturating_sub(1);
        let b = check_sample(sample, self.config.in_channels, downsamplers)?;
        let (eb, tokens, width) = encoder_hidden_states.dims3()?;
        if eb != b {
            candle_core::bail!("encoder_hidden_states have batch {eb}; the sample has {b}");
        }
        if let PerBlock::All(dim) = self.config.cross_attention_dim {
            if width != dim {
                candle_core::bail!(
                    "encoder_hidden_states are {width} wide; cross_attention_dim is {dim}"
                );
            }
        }
        if let Some(m) = attention_mask {
            if m.dims() != [b, tokens] {
                candle_core::bail!(
                    "attention_mask has shape {:?}; expected [{b}, {tokens}] (one per encoder token)",
                    m.dims()
                );
            }
        }
        // 1. Mask: (B, S) keep-mask → additive bias over the text keys.
        let mask = attention_mask
            .map(|m| (m.to_dtype(DType::F32)?.affine(-1.0, 1.0)? * MASK_BIAS)?.contiguous())
            .transpose()?;
        let sample = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };

        // 2. Time (+ image) embedding.
        let t = batch_timesteps(timestep, b)?;
        let emb = self.time_embedding.forward(&t)?;
        let emb = with_class_labels(
            emb,
            self.class_embedding,
            class_labels,
            self.config.class_embeddings_concat,
        )?;
        let emb = match self.time_embed_act {
            Some(act) => act.forward(&emb)?,
            None => emb,
        };
        let inputs = BlockInputs {
            temb: &emb,
            encoder: Some(encoder_hidden_states),
            encoder_mask: mask.as_ref(),
        };

        // 3-5. Down, middle, up (see `unet_body`).
        let xs = self.conv_in.forward(&sample)?;
        let xs = unet_body(
            xs,
            &self.down_blocks,
            self.mid_block.as_ref(),
            &self.up_blocks,
            &inputs,
        )?;
        // 6. Out.
        let xs = self.conv_norm_out.forward_act(&xs, self.conv_act)?;
        self.conv_out.forward(&xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_inputs_are_errors_that_name_them() {
        let cfg: UNet2DConditionConfig = serde_json::from_value(serde_json::json!({
            "attention_head_dim": 8, "block_out_channels": [8, 16], "class_embed_type": "identity",
            "cross_attention_dim": 4, "layers_per_block": 1, "norm_num_groups": 4,
            "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
            "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "in_channels": 3, "out_channels": 6,
            "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
            "resnet_time_scale_shift": "scale_shift"
        }))
        .unwrap();
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let model = UNet2DConditionModel::new(&cfg, vb).unwrap();
        let zeros = |shape: &[usize]| Tensor::zeros(shape, DType::F32, &dev).unwrap();
        let (x, t) = (zeros(&[2, 3, 8, 8]), Tensor::new(&[5f32], &dev).unwrap());
        let (ctx, labels, mask) = (zeros(&[2, 5, 4]), zeros(&[2, 32]), zeros(&[2, 5]));
        let out = model
            .forward(&x, &t, &ctx, Some(&labels), Some(&mask))
            .unwrap();
        assert_eq!(out.dims(), [2, 6, 8, 8]);
        let err = |r: Result<Tensor>| r.unwrap_err().to_string();
        let odd = zeros(&[2, 3, 7, 8]);
        let e = err(model.forward(&odd, &t, &ctx, Some(&labels), None));
        assert!(e.contains("7x8"), "{e}");
        let e = err(model.forward(&x, &t, &ctx, Some(&labels), Some(&zeros(&[2, 4]))));
        assert!(e.contains("attention_mask"), "{e}");
        let e = err(model.forward(&x, &t, &ctx, None, None));
        assert!(e.contains("class_labels"), "{e}");
        let e = err(model.forward(&x, &t, &zeros(&[2, 5, 6]), Some(&labels), None));
        assert!(e.contains("cross_attention_dim"), "{e}");
        let e = err(model.forward(&x, &zeros(&[3]), &ctx, Some(&labels), None));
        assert!(e.contains("timestep"), "{e}");
    }
}
