//! unCLIP's diffusion upsamplers: an unconditioned-by-text U-Net that denoises a high-resolution
//! image given its low-resolution version, concatenated as extra input channels (Ramesh et al.
//! 2022, §2.1 and appendix C: 64→256 with ResNet blocks only, no attention). Karlo ships two:
//! `super_res_first` for every step but the last and `super_res_last` for the last.
//!
//! Reference: diffusers `models/unets/unet_2d.py` (`UNet2DModel`), restricted to ResNet-only
//! blocks (`ResnetDownsampleBlock2D`, `DownBlock2D` and their mirrors) and the plain mid block.

use super::attention::AttentionSpec;
use super::blocks::{
    check_sample, unet_body, BlockInputs, BlockSpec, DownBlock, MidBlock, UpBlock,
};
use super::config::{ClassEmbedding, UNet2DConfig};
use super::resnet::{ResnetSpec, TimeScaleShift};
use super::time::{batch_timesteps, with_class_labels, TimeEmbedding, TimeSpec};
use crate::checkpoint::{read_folder, save_folder};
use crate::error::Result as CrateResult;
use crate::nn::{Activation, Conv2d, Conv2dConfig, GroupNorm};
use candle_core::{DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;
use std::path::Path;

pub const CLASS_NAME: &str = "UNet2DModel";

#[derive(Debug, Clone)]
pub struct UNet2DModel {
    conv_in: Conv2d,
    time_embedding: TimeEmbedding,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    class_embedding: ClassEmbedding,
    config: UNet2DConfig,
}

fn conv3x3(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    Conv2d::load(cin, cout, 3, cfg, vb)
}

impl UNet2DModel {
    pub fn new(cfg: &UNet2DConfig, vb: VarBuilder) -> Result<Self> {
        let r = cfg
            .resolve()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let channels = &cfg.block_out_channels;
        let n = channels.len();
        let groups = cfg.norm_num_groups;
        let time_dim = cfg.time_embed_dim();
        let time = TimeSpec {
            features: channels[0],
            dim: time_dim,
            flip_sin_to_cos: cfg.flip_sin_to_cos,
            freq_shift: cfg.freq_shift,
            // UNet2DModel's TimestepEmbedding keeps its own default activation, not act_fn.
            act: Activation::Silu,
            post_act: None,
        };
        let resnet = ResnetSpec {
            temb_channels: time_dim,
            groups,
            eps: cfg.norm_eps,
            act: r.act,
            time_shift: r.time_shift,
            skip_time_act: false,
            output_scale_factor: 1.0,
        };

        let mut down_blocks = Vec::with_capacity(n);
        for (i, kind) in r.down.iter().enumerate() {
            let spec = BlockSpec {
                in_channels: channels[i.saturating_sub(1)],
                out_channels: channels[i],
                num_layers: r.layers_per_block[i],
                resample: i + 1 < n,
                attention: None,
            };
            down_blocks.push(DownBlock::new(
                *kind,
                &spec,
                &resnet,
                cfg.downsample_padding,
                vb.pp("down_blocks").pp(i),
            )?);
        }

        let last = channels[n - 1];
        let attention = cfg.add_attention.then(|| {
            let head_dim = cfg.attention_head_dim.unwrap_or(last);
            // attn_norm_num_groups, else the ResNet groups, but no norm with scale_shift.
            let groups = cfg.attn_norm_num_groups.or(match r.time_shift {
                TimeScaleShift::Default => Some(groups),
                TimeScaleShift::ScaleShift => None,
            });
            AttentionSpec {
                channels: last,
                heads: last / head_dim,
                head_dim,
                added_kv_dim: None,
                only_cross_attention: false,
                groups,
                eps: cfg.norm_eps,
                rescale_output_factor: cfg.mid_block_scale_factor,
                position_codes: false,
            }
        });
        let mid_resnet = ResnetSpec {
            output_scale_factor: cfg.mid_block_scale_factor,
            ..resnet
        };
        let mid_block = match r.mid {
            Some(_) => Some(MidBlock::new(
                last,
                1,
                attention.as_ref(),
                &mid_resnet,
                vb.pp("mid_block"),
            )?),
            None => None,
        };

        let reversed: Vec<usize> = channels.iter().rev().copied().collect();
        let mut up_blocks = Vec::with_capacity(n);
        for (i, kind) in r.up.iter().enumerate() {
            let spec = BlockSpec {
                in_channels: reversed[(i + 1).min(n - 1)],
                out_channels: reversed[i],
                num_layers: r.layers_per_block[n - 1 - i] + 1,
                resample: i + 1 < n,
                attention: None,
            };
            up_blocks.push(UpBlock::new(
                *kind,
                &spec,
                reversed[i.saturating_sub(1)],
                &resnet,
                vb.pp("up_blocks").pp(i),
            )?);
        }

        Ok(Self {
            conv_in: conv3x3(cfg.in_channels, channels[0], vb.pp("conv_in"))?,
            time_embedding: TimeEmbedding::new(&time, vb.pp("time_embedding"))?,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::new(
                groups,
                channels[0],
                cfg.norm_eps,
                vb.pp("conv_norm_out"),
            )?,
            conv_out: conv3x3(channels[0], cfg.out_channels, vb.pp("conv_out"))?,
            class_embedding: r.class_embedding,
            config: cfg.clone(),
        })
    }

    /// Loads a diffusers `UNet2DModel` folder (Karlo's `super_res_first/`, `super_res_last/`).
    pub fn load(dir: &Path, device: &Device) -> CrateResult<Self> {
        let (cfg, weights) = read_folder::<UNet2DConfig>(dir, CLASS_NAME, device)?;
        cfg.validate()
            .map_err(|e| e.in_file(dir.join("config.json")))?;
        let model = Self::new(&cfg, weights.var_builder(DType::F32, device))
            .map_err(|e| weights.explain(e))?;
        weights.report_unused();
        Ok(model)
    }

    /// Writes `tensors` and `cfg` as a diffusers folder that `UNet2DModel.from_pretrained` reads.
    pub fn save(dir: &Path, cfg: &UNet2DConfig, tensors: &[(String, Tensor)]) -> CrateResult<()> {
        cfg.validate()?;
        save_folder(dir, cfg, tensors, |vb| Self::new(cfg, vb).map(|_| ()))
    }

    pub fn config(&self) -> &UNet2DConfig {
        &self.config
    }

    /// Predicts the noise of `sample`.
    ///
    /// - `sample`: (B, C_in, H, W) (for unCLIP's upsamplers: the noisy image and the upscaled
    ///   low-resolution image, concatenated on channels), H and W divisible by 2^(blocks - 1)
    /// - `timestep`: (B,), (1,) or a scalar, f32
    /// - `class_labels`: (B, time_embed_dim), only with `class_embed_type: identity`
    pub fn forward(
        &self,
        sample: &Tensor,
        timestep: &Tensor,
        class_labels: Option<&Tensor>,
    ) -> Result<Tensor> {
        let downsamplers = self.down_blocks.len().saturating_sub(1);
        let b = check_sample(sample, self.config.in_channels, downsamplers)?;
        let sample = if self.config.center_input_sample {
            sample.affine(2.0, -1.0)?
        } else {
            sample.clone()
        };
        let t = batch_timesteps(timestep, b)?;
        let emb = self.time_embedding.forward(&t)?;
        let emb = with_class_labels(emb, self.class_embedding, class_labels, false)?;
        let inputs = BlockInputs {
            temb: &emb,
            encoder: None,
            encoder_mask: None,
        };

        let xs = self.conv_in.forward(&sample)?;
        let xs = unet_body(
            xs,
            &self.down_blocks,
            self.mid_block.as_ref(),
            &self.up_blocks,
            &inputs,
        )?;
        let xs = self.conv_norm_out.forward_silu(&xs)?;
        self.conv_out.forward(&xs)
    }
}
