//! From 8-bit images to the pipeline's float tensors.

use crate::error::Result;
use candle_core::{Device, Tensor};
use image::{ImageBuffer, Pixel};

/// The first three channels of an 8-bit image (RGB or RGBA) as (1, 3, H, W) in [-1, 1], the
/// range the decoder and upsamplers work in.
pub fn rgb_tensor<P: Pixel<Subpixel = u8>>(
    image: &ImageBuffer<P, Vec<u8>>,
    device: &Device,
) -> Result<Tensor> {
    let (w, h) = (image.width() as usize, image.height() as usize);
    let mut rgb = Vec::with_capacity(h * w * 3);
    for pixel in image.pixels() {
        rgb.extend(
            pixel
                .channels()
                .iter()
                .take(3)
                .map(|&v| v as f32 / 127.5 - 1.0),
        );
    }
    Ok(Tensor::from_vec(rgb, (1, h, w, 3), device)?
        .permute((0, 3, 1, 2))?
        .contiguous()?)
}
