//! The U-Net's residual block, conditioned on the time embedding, and the plain resamplers.
//!
//! `ResnetBlock2D` follows the improved DDPM block (Nichol & Dhariwal 2021, §3 and appendix A,
//! "BigGAN-style" up/downsampling inside the residual block; adaptive group norm
//! `GroupNorm(h) · (1 + s) + b` with (s, b) from the time embedding when
//! `resnet_time_scale_shift` is `scale_shift`), which unCLIP's decoder and upsamplers use.
//! Reference: diffusers `models/resnet.py` (`ResnetBlock2D`), `downsampling.py` (`Downsample2D`),
//! `upsampling.py` (`Upsample2D`).

use crate::error::{Error, Result as CrateResult};
use crate::nn::{avg_pool_2x, upsample_nearest_2x, Activation, Conv2d, Conv2dConfig, GroupNorm};
use crate::nn::{linear, Linear};
use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// How the time embedding enters a ResNet block (`resnet_time_scale_shift`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeScaleShift {
    /// `default`: h = GroupNorm(h + proj(t)).
    Default,
    /// `scale_shift`: h = GroupNorm(h) · (1 + s) + b, with [s, b] = proj(t).
    ScaleShift,
}

impl TimeScaleShift {
    pub fn parse(name: &str) -> CrateResult<Self> {
        match name {
            "default" => Ok(Self::Default),
            "scale_shift" => Ok(Self::ScaleShift),
            other => Err(Error::config(
                "resnet_time_scale_shift",
                format!("`{other}` is not supported; allowed: default, scale_shift"),
            )),
        }
    }
}

/// What every ResNet block of one U-Net shares.
#[derive(Debug, Clone, Copy)]
pub struct ResnetSpec {
    pub temb_channels: usize,
    pub groups: usize,
    pub eps: f64,
    pub act: Activation,
    pub time_shift: TimeScaleShift,
    /// `resnet_skip_time_act`: feed the time embedding to the projection without the activation.
    pub skip_time_act: bool,
    /// The block's output is divided by this (`resnet_out_scale_factor`, `mid_block_scale_factor`).
    pub output_scale_factor: f64,
}

/// Resampling inside a ResNet block, applied to both branches after the first activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resample {
    None,
    /// Nearest-neighbour 2x (`up=True`).
    Up,
    /// 2x2 average pooling (`down=True`).
    Down,
}

/// `ResnetBlock2D`: keys `norm1`, `conv1`, `time_emb_proj`, `norm2`, `conv2`, `conv_shortcut`.
#[derive(Debug, Clone)]
pub struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Linear,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    spec: ResnetSpec,
    resample: Resample,
}

fn conv3x3(cin: usize, cout: usize, vb: VarBuilder) -> Result<Conv2d> {
    let cfg = Conv2dConfig {
        padding: 1,
        ..Default::default()
    };
    Conv2d::load(cin, cout, 3, cfg, vb)
}

impl ResnetBlock2D {
    pub fn new(
        spec: &ResnetSpec,
        in_channels: usize,
        out_channels: usize,
        resample: Resample,
        vb: VarBuilder,
    ) -> Result<Self> {
        let time_out = match spec.time_shift {
            TimeScaleShift::Default => out_channels,
            TimeScaleShift::ScaleShift => 2 * out_channels,
        };
        let conv_shortcut = if in_channels != out_channels {
            let cfg = Conv2dConfig::default();
            Some(Conv2d::load(
                in_channels,
                out_channels,
                1,
                cfg,
                vb.pp("conv_shortcut"),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: GroupNorm::new(spec.groups, in_channels, spec.eps, vb.pp("norm1"))?,
            conv1: conv3x3(in_channels, out_channels, vb.pp("conv1"))?,
            time_emb_proj: linear(spec.temb_channels, time_out, vb.pp("time_emb_proj"))?,
            norm2: GroupNorm::new(spec.groups, out_channels, spec.eps, vb.pp("norm2"))?,
            conv2: conv3x3(out_channels, out_channels, vb.pp("conv2"))?,
            conv_shortcut,
            spec: *spec,
            resample,
        })
    }

    fn resample(&self, xs: &Tensor) -> Result<Tensor> {
        match self.resample {
            Resample::None => Ok(xs.clone()),
            Resample::Up => upsample_nearest_2x(xs),
            Resample::Down => avg_pool_2x(xs),
        }
    }

    /// xs: (B, C_in, H, W), temb: (B, T) → (B, C_out, H', W').
    pub fn forward(&self, xs: &Tensor, temb: &Tensor) -> Result<Tensor> {
        let act = self.spec.act;
        let h = self.norm1.forward_act(xs, act)?; // norm then activation, fused for SiLU
        let (skip, h) = (self.resample(xs)?, self.resample(&h)?);
        let h = self.conv1.forward(&h)?;
        let temb = if self.spec.skip_time_act {
            temb.clone()
        } else {
            act.forward(temb)?
        };
        let temb = self.time_emb_proj.forward(&temb)?; // (B, T')
        let h = match self.spec.time_shift {
            TimeScaleShift::Default => {
                let temb = temb.unsqueeze(2)?.unsqueeze(3)?; // (B, C, 1, 1)
                self.norm2.forward_act(&h.broadcast_add(&temb)?, act)?
            }
            TimeScaleShift::ScaleShift => {
                let c = temb.dim(1)? / 2;
                let (scale, shift) = (temb.narrow(1, 0, c)?, temb.narrow(1, c, c)?); // (B, C)
                let fuse_silu = act == Activation::Silu;
                let h = self
                    .norm2
                    .forward_scale_shift(&h, &scale, &shift, fuse_silu)?;
                if fuse_silu {
                    h
                } else {
                    act.forward(&h)?
                }
            }
        };
        let h = self.conv2.forward(&h)?;
        let skip = match &self.conv_shortcut {
            Some(conv) => conv.forward(&skip)?,
            None => skip,
        };
        let out = (skip + h)?;
        if self.spec.output_scale_factor == 1.0 {
            Ok(out)
        } else {
            out / self.spec.output_scale_factor
        }
    }
}

/// `Downsample2D` with a convolution (`DownBlock2D`): a stride-2 3x3 conv, key `conv`. With
/// `padding = 0` the input is first padded by one on the right and bottom, as diffusers does.
#[derive(Debug, Clone)]
pub struct ConvDownsample {
    conv: Conv2d,
    padding: usize,
}

impl ConvDownsample {
    pub fn new(channels: usize, padding: usize, vb: VarBuilder) -> Result<Self> {
        let cfg = Conv2dConfig { padding, stride: 2 };
        Ok(Self {
            conv: Conv2d::load(channels, channels, 3, cfg, vb.pp("conv"))?,
            padding,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if self.padding == 0 {
            let padded = xs.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?;
            self.conv.forward(&padded)
        } else {
            self.conv.forward(xs)
        }
    }
}

/// `Upsample2D` with a convolution (`UpBlock2D`): nearest 2x, then a 3x3 conv, key `conv`.
#[derive(Debug, Clone)]
pub struct ConvUpsample {
    conv: Conv2d,
}

impl ConvUpsample {
    pub fn new(channels: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv: conv3x3(channels, channels, vb.pp("conv"))?,
        })
    }

    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest_2x(xs)?)
    }
}
