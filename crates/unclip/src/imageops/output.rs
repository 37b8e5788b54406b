//! From the pipeline's float images to files: 8-bit quantisation as diffusers' `numpy_to_pil`
//! does it (round(x · 255)), contact sheets, and PNGs written atomically.

use crate::checkpoint::{save_safetensors, write_atomic};
use crate::error::{Error, Result};
use candle_core::{DType, Tensor};
use image::RgbImage;
use std::path::Path;

/// (N, H, W, 3) floats in [0, 1] to 8-bit images.
pub fn to_rgb8(images: &Tensor) -> Result<Vec<RgbImage>> {
    let (n, h, w, c) = images.dims4()?;
    if c != 3 {
        return Err(Error::InvalidInput(format!(
            "expected (N, H, W, 3) images, got {:?}",
            images.dims()
        )));
    }
    let bytes = (images.to_dtype(DType::F32)?.clamp(0.0, 1.0)? * 255.0)?
        .round()?
        .to_dtype(DType::U8)?
        .flatten_all()?
        .to_vec1::<u8>()?;
    Ok((0..n)
        .filter_map(|i| {
            RgbImage::from_raw(
                w as u32,
                h as u32,
                bytes[i * h * w * 3..(i + 1) * h * w * 3].to_vec(),
            )
        })
        .collect())
}

/// Images side by side in rows of `columns`, separated by `gap` white pixels.
pub fn contact_sheet(images: &[RgbImage], columns: usize, gap: u32) -> Option<RgbImage> {
    let first = images.first()?;
    let (w, h) = first.dimensions();
    let columns = columns.clamp(1, images.len()) as u32;
    let rows = (images.len() as u32).div_ceil(columns);
    let mut sheet = RgbImage::from_pixel(
        columns * w + (columns + 1) * gap,
        rows * h + (rows + 1) * gap,
        image::Rgb([255, 255, 255]),
    );
    for (i, img) in images.iter().enumerate() {
        let (col, row) = (i as u32 % columns, i as u32 / columns);
        image::imageops::replace(
            &mut sheet,
            img,
            (gap + col * (w + gap)) as i64,
            (gap + row * (h + gap)) as i64,
        );
    }
    Some(sheet)
}

/// The format an output image's name asks for; commands check it before any sampling.
pub fn output_format(path: &Path) -> Result<image::ImageFormat> {
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        None | Some("png") => Ok(image::ImageFormat::Png),
        Some("jpg" | "jpeg") => Ok(image::ImageFormat::Jpeg),
        Some("webp") => Ok(image::ImageFormat::WebP),
        Some(other) => Err(Error::InvalidInput(format!(
            "{}: cannot write a .{other} image; allowed: .png, .jpg, .jpeg, .webp",
            path.display()
        ))),
    }
}

/// Encodes and writes an image through a temporary file, in the format its extension names:
/// PNG (also for a name without an extension), JPEG (.jpg, .jpeg) or lossless WebP (.webp).
pub fn save_png(image: &RgbImage, path: &Path) -> Result<()> {
    let format = output_format(path)?;
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), format)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Writes the float images as tensor `image` [N, H, W, 3] f32 in [0, 1].
pub fn save_image_tensor(images: &Tensor, path: &Path) -> Result<()> {
    save_safetensors(&[("image".to_string(), images.to_dtype(DType::F32)?)], path)
}

/// Writes frames as a looping animated GIF, `delay_ms` per frame, through a temporary file.
pub fn save_gif(frames: &[RgbImage], delay_ms: u32, path: &Path) -> Result<()> {
    use image::codecs::gif::{GifEncoder, Repeat};
    let image_error = |e: image::ImageError| Error::Image {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut bytes = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut bytes);
        encoder.set_repeat(Repeat::Infinite).map_err(image_error)?;
        for frame in frames {
            let rgba = image::DynamicImage::ImageRgb8(frame.clone()).to_rgba8();
            let delay = image::Delay::from_numer_denom_ms(delay_ms, 1);
            encoder
                .encode_frame(image::Frame::from_parts(rgba, 0, 0, delay))
                .map_err(image_error)?;
        }
    }
    write_atomic(path, &bytes)
}
