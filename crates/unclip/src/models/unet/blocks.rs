//! The U-Net's down, middle and up blocks: ResNet blocks, optionally each followed by an
//! attention layer, then a resampler. diffusers spreads these over one class per variant
//! (`ResnetDownsampleBlock2D`, `SimpleCrossAttnDownBlock2D`, `DownBlock2D`, and their mirrors);
//! here a block is one struct whose kind picks the attention and the resampler, and whose
//! fields keep diffusers' keys (`resnets.N`, `attentions.N`, `downsamplers.0`, `upsamplers.0`).
//! Reference: diffusers `models/unets/unet_2d_blocks.py`.

use super::attention::{Attention, AttentionSpec};
use super::resnet::{ConvDownsample, ConvUpsample, Resample, ResnetBlock2D, ResnetSpec};
use crate::error::{Error, Result as CrateResult};
use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

/// A diffusers block name without the optional `UNetRes` prefix diffusers also accepts.
fn strip(name: &str) -> &str {
    name.strip_prefix("UNetRes").unwrap_or(name)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownBlockKind {
    /// `ResnetDownsampleBlock2D`: ResNet blocks, downsampling by a ResNet block with `down`.
    ResnetDownsample,
    /// `SimpleCrossAttnDownBlock2D`: each ResNet block followed by added-K/V attention.
    SimpleCrossAttn,
    /// `DownBlock2D`: ResNet blocks, downsampling by a stride-2 conv.
    Plain,
}

impl DownBlockKind {
    pub fn parse(name: &str, field: &str) -> CrateResult<Self> {
        match strip(name) {
            "ResnetDownsampleBlock2D" => Ok(Self::ResnetDownsample),
            "SimpleCrossAttnDownBlock2D" => Ok(Self::SimpleCrossAttn),
            "DownBlock2D" => Ok(Self::Plain),
            other => Err(Error::config(
                field,
                format!(
                    "block `{other}` is not implemented; allowed: ResnetDownsampleBlock2D, SimpleCrossAttnDownBlock2D, DownBlock2D"
                ),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpBlockKind {
    /// `ResnetUpsampleBlock2D`.
    ResnetUpsample,
    /// `SimpleCrossAttnUpBlock2D`.
    SimpleCrossAttn,
    /// `UpBlock2D`: upsampling by nearest 2x and a conv.
    Plain,
}

impl UpBlockKind {
    pub fn parse(name: &str, field: &str) -> CrateResult<Self> {
        match strip(name) {
            "ResnetUpsampleBlock2D" => Ok(Self::ResnetUpsample),
            "SimpleCrossAttnUpBlock2D" => Ok(Self::SimpleCrossAttn),
            "UpBlock2D" => Ok(Self::Plain),
            other => Err(Error::config(
                field,
                format!(
                    "block `{other}` is not implemented; allowed: ResnetUpsampleBlock2D, SimpleCrossAttnUpBlock2D, UpBlock2D"
                ),
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MidBlockKind {
    /// `UNetMidBlock2DSimpleCrossAttn`: ResNet, then (added-K/V attention, ResNet).
    SimpleCrossAttn,
    /// `UNetMidBlock2D`: ResNet, then (optional self-attention, ResNet) per layer.
    Plain,
}

impl MidBlockKind {
    pub fn parse(name: &str, field: &str) -> CrateResult<Self> {
        match name {
            "UNetMidBlock2DSimpleCrossAttn" => Ok(Self::SimpleCrossAttn),
            "UNetMidBlock2D" => Ok(Self::Plain),
            other => Err(Error::config(
                field,
                format!(
                    "block `{other}` is not implemented; allowed: UNetMidBlock2DSimpleCrossAttn, UNetMidBlock2D, null"
                ),
            )),
        }
    }
}

/// The conditioning every block's forward receives.
#[derive(Debug, Clone, Copy)]
pub struct BlockInputs<'a> {
    /// Time (plus class) embedding (B, T).
    pub temb: &'a Tensor,
    /// Encoder states (B, S, E) for the cross-attention layers.
    pub encoder: Option<&'a Tensor>,
    /// Additive (B, S) mask over the encoder states.
    pub encoder_mask: Option<&'a Tensor>,
}

#[derive(Debug, Clone)]
enum Downsampler {
    Resnet(Box<ResnetBlock2D>),
    Conv(ConvDownsample),
}

#[derive(Debug, Clone)]
pub struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    downsampler: Option<Downsampler>,
}

/// Sizes of one down or up block.
#[derive(Debug, Clone, Copy)]
pub struct BlockSpec {
    pub in_channels: usize,
    pub out_channels: usize,
    pub num_layers: usize,
    /// Whether the block ends with a resampler (every block but the last, down or up).
    pub resample: bool,
    /// Attention of each layer (channels/heads filled in per block), for cross-attention kinds.
    pub attention: Option<AttentionSpec>,
}

impl DownBlock {
    pub fn new(
        kind: DownBlockKind,
        spec: &BlockSpec,
        resnet: &ResnetSpec,
        downsample_padding: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let mut resnets = Vec::with_capacity(spec.num_layers);
        let mut attentions = Vec::new();
        for i in 0..spec.num_layers {
            let cin = if i == 0 {
                spec.in_channels
            } else {
                spec.out_channels
            };
            let vb_r = vb.pp("resnets").pp(i);
            resnets.push(ResnetBlock2D::new(
                resnet,
                cin,
                spec.out_channels,
                Resample::None,
                vb_r,
            )?);
            if kind == DownBlockKind::SimpleCrossAttn {
                let attn = spec.attention.ok_or_else(|| {
                    candle_core::Error::Msg("cross-attention block built without attention".into())
                })?;
                attentions.push(Attention::new(&attn, vb.pp("attentions").pp(i))?);
            }
        }
        let downsampler = match (spec.resample, kind) {
            (false, _) => None,
            (true, DownBlockKind::Plain) => Some(Downsampler::Conv(ConvDownsample::new(
                spec.out_channels,
                downsample_padding,
                vb.pp("downsamplers").pp(0),
            )?)),
            (true, _) => Some(Downsampler::Resnet(Box::new(ResnetBlock2D::new(
                resnet,
                spec.out_channels,
                spec.out_channels,
                Resample::Down,
                vb.pp("downsamplers").pp(0),
            )?))),
        };
        Ok(Self {
            resnets,
            attentions,
            downsampler,
        })
    }

    /// Returns the block output and the skip states (each layer's output, then the downsampled
    /// one) that the up path consumes.
    pub fn forward(&self, xs: &Tensor, inputs: &BlockInputs) -> Result<(Tensor, Vec<Tensor>)> {
        let mut h = xs.clone();
        let mut skips = Vec::with_capacity(self.resnets.len() + 1);
        for (i, resnet) in self.resnets.iter().enumerate() {
            h = resnet.forward(&h, inputs.temb)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, inputs.encoder, inputs.encoder_mask)?;
            }
            skips.push(h.clone());
        }
        if let Some(down) = &self.downsampler {
            h = match down {
                Downsampler::Resnet(r) => r.forward(&h, inputs.temb)?,
                Downsampler::Conv(c) => c.forward(&h)?,
            };
            skips.push(h.clone());
        }
        Ok((h, skips))
    }
}

#[derive(Debug, Clone)]
pub struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Option<Attention>>,
}

impl MidBlock {
    /// `layers` (attention, ResNet) pairs after the first ResNet; `attention: None` leaves the
    /// attention out (`UNetMidBlock2D` with `add_attention: false`).
    pub fn new(
        channels: usize,
        layers: usize,
        attention: Option<&AttentionSpec>,
        resnet: &ResnetSpec,
        vb: VarBuilder,
    ) -> Result<Self> {
        let block = |i: usize| {
            ResnetBlock2D::new(
                resnet,
                channels,
                channels,
                Resample::None,
                vb.pp("resnets").pp(i),
            )
        };
        let mut resnets = vec![block(0)?];
        let mut attentions = Vec::with_capacity(layers);
        for i in 0..layers {
            attentions.push(match attention {
                Some(spec) => Some(Attention::new(spec, vb.pp("attentions").pp(i))?),
                None => None,
            });
            resnets.push(block(i + 1)?);
        }
        Ok(Self {
            resnets,
            attentions,
        })
    }

    pub fn forward(&self, xs: &Tensor, inputs: &BlockInputs) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(xs, inputs.temb)?;
        for (attn, resnet) in self.attentions.iter().zip(&self.resnets[1..]) {
            if let Some(attn) = attn {
                h = attn.forward(&h, inputs.encoder, inputs.encoder_mask)?;
            }
            h = resnet.forward(&h, inputs.temb)?;
        }
        Ok(h)
    }
}

#[derive(Debug, Clone)]
enum Upsampler {
    Resnet(Box<ResnetBlock2D>),
    Conv(ConvUpsample),
}

#[derive(Debug, Clone)]
pub struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Attention>,
    upsampler: Option<Upsampler>,
}

impl UpBlock {
    /// `prev_channels`: channels of the block below; `spec.in_channels`: channels of the skip
    /// states of the matching down block's input (consumed by the last layer).
    pub fn new(
        kind: UpBlockKind,
        spec: &BlockSpec,
        prev_channels: usize,
        resnet: &ResnetSpec,
        vb: VarBuilder,
    ) -> Result<Self> {
        let n = spec.num_layers;
        let mut resnets = Vec::with_capacity(n);
        let mut attentions = Vec::new();
        for i in 0..n {
            let skip = if i == n - 1 {
                spec.in_channels
            } else {
                spec.out_channels
            };
            let cin = if i == 0 {
                prev_channels
            } else {
                spec.out_channels
            };
            resnets.push(ResnetBlock2D::new(
                resnet,
                cin + skip,
                spec.out_channels,
                Resample::None,
                vb.pp("resnets").pp(i),
            )?);
            if kind == UpBlockKind::SimpleCrossAttn {
                let attn = spec.attention.ok_or_else(|| {
                    candle_core::Error::Msg("cross-attention block built without attention".into())
                })?;
                attentions.push(Attention::new(&attn, vb.pp("attentions").pp(i))?);
            }
        }
        let upsampler = match (spec.resample, kind) {
            (false, _) => None,
            (true, UpBlockKind::Plain) => Some(Upsampler::Conv(ConvUpsample::new(
                spec.out_channels,
                vb.pp("upsamplers").pp(0),
            )?)),
            (true, _) => Some(Upsampler::Resnet(Box::new(ResnetBlock2D::new(
                resnet,
                spec.out_channels,
                spec.out_channels,
                Resample::Up,
                vb.pp("upsamplers").pp(0),
            )?))),
        };
        Ok(Self {
            resnets,
            attentions,
            upsampler,
        })
    }

    /// How many skip states this block consumes.
    pub fn num_skips(&self) -> usize {
        self.resnets.len()
    }

    /// `skips`: this block's skip states in the order the down path produced them; the last is
    /// consumed first.
    pub fn forward(&self, xs: &Tensor, skips: &[Tensor], inputs: &BlockInputs) -> Result<Tensor> {
        if skips.len() != self.resnets.len() {
            candle_core::bail!(
                "up block needs {} skip states, got {}",
                self.resnets.len(),
                skips.len()
            );
        }
        let mut h = xs.clone();
        for (i, (resnet, skip)) in self.resnets.iter().zip(skips.iter().rev()).enumerate() {
            h = resnet.forward(&Tensor::cat(&[&h, skip], 1)?, inputs.temb)?;
            if let Some(attn) = self.attentions.get(i) {
                h = attn.forward(&h, inputs.encoder, inputs.encoder_mask)?;
            }
        }
        match &self.upsampler {
            Some(Upsampler::Resnet(r)) => r.forward(&h, inputs.temb),
            Some(Upsampler::Conv(c)) => c.forward(&h),
            None => Ok(h),
        }
    }
}

/// Checks a U-Net input (B, C, H, W) against the channels the first conv takes and the
/// `2^downsamplers` its sides must divide by; returns the batch size.
pub fn check_sample(sample: &Tensor, in_channels: usize, downsamplers: usize) -> Result<usize> {
    let (b, c, h, w) = sample.dims4()?;
    let factor = 1usize << downsamplers;
    if c != in_channels {
        candle_core::bail!("sample has {c} channels; this U-Net takes {in_channels}");
    }
    if h % factor != 0 || w % factor != 0 {
        candle_core::bail!(
            "sample is {h}x{w}; this U-Net needs sides divisible by {factor} (2^downsamplers)"
        );
    }
    Ok(b)
}

/// The U-Net's body, shared by both models: down blocks keeping every intermediate state for
/// the skip connections, the middle block, then up blocks consuming the skips from the end.
pub fn unet_body(
    xs: Tensor,
    down: &[DownBlock],
    mid: Option<&MidBlock>,
    up: &[UpBlock],
    inputs: &BlockInputs,
) -> Result<Tensor> {
    let mut xs = xs;
    let mut skips = vec![xs.clone()];
    for block in down {
        let (out, states) = block.forward(&xs, inputs)?;
        skips.extend(states);
        xs = out;
    }
    if let Some(mid) = mid {
        xs = mid.forward(&xs, inputs)?;
    }
    for block in up {
        let rest = skips.len().checked_sub(block.num_skips()).ok_or_else(|| {
            candle_core::Error::Msg("U-Net skip connections do not line up".into())
        })?;
        xs = block.forward(&xs, &skips[rest..], inputs)?;
        skips.truncate(rest);
    }
    Ok(xs)
}
