//! CLIPImageProcessor: the image a CLIP vision tower sees. Convert to RGB, resize the shortest
//! side with PIL's bicubic filter, center-crop, rescale to [0, 1], normalise with the config's
//! mean and std. Reference: transformers `image_processing_clip.py` and `image_transforms.py`.

use crate::checkpoint::read_config;
use crate::error::{Error, Result};
use crate::imageops::{resize_rgb8, Filter};
use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const PROCESSOR_FILE: &str = "preprocessor_config.json";

/// `size` / `crop_size` as configs write them: `224`, `{"shortest_edge": 224}` or
/// `{"height": 224, "width": 224}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SizeSpec {
    Square(usize),
    ShortestEdge { shortest_edge: usize },
    HeightWidth { height: usize, width: usize },
}

fn yes() -> bool {
    true
}
fn bicubic() -> u32 {
    3
}
fn default_size() -> SizeSpec {
    SizeSpec::ShortestEdge { shortest_edge: 224 }
}
fn default_crop() -> SizeSpec {
    SizeSpec::HeightWidth {
        height: 224,
        width: 224,
    }
}
fn rescale() -> f64 {
    1.0 / 255.0
}
fn openai_mean() -> [f32; 3] {
    [0.481_454_66, 0.457_827_5, 0.408_210_73]
}
fn openai_std() -> [f32; 3] {
    [0.268_629_54, 0.261_302_6, 0.275_777_1]
}
fn processor_type() -> String {
    "CLIPImageProcessor".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClipImageProcessor {
    #[serde(default = "yes")]
    pub do_resize: bool,
    #[serde(default = "default_size")]
    pub size: SizeSpec,
    #[serde(default = "bicubic")]
    pub resample: u32,
    #[serde(default = "yes")]
    pub do_center_crop: bool,
    #[serde(default = "default_crop")]
    pub crop_size: SizeSpec,
    #[serde(default = "yes")]
    pub do_rescale: bool,
    #[serde(default = "rescale")]
    pub rescale_factor: f64,
    #[serde(default = "yes")]
    pub do_normalize: bool,
    #[serde(default = "openai_mean")]
    pub image_mean: [f32; 3],
    #[serde(default = "openai_std")]
    pub image_std: [f32; 3],
    #[serde(default = "yes")]
    pub do_convert_rgb: bool,
    #[serde(default = "processor_type")]
    pub image_processor_type: String,
}

impl ClipImageProcessor {
    /// The processor for a vision tower of `image_size` pixels, with OpenAI's statistics.
    pub fn for_image_size(image_size: usize) -> Self {
        let mut p: Self = serde_json::from_str("{}").expect("every processor field has a default");
        p.size = SizeSpec::ShortestEdge {
            shortest_edge: image_size,
        };
        p.crop_size = SizeSpec::HeightWidth {
            height: image_size,
            width: image_size,
        };
        p
    }

    /// Reads `preprocessor_config.json` from a model folder, or falls back to the processor for
    /// `image_size` when the folder has none.
    pub fn load_or_default(dir: &Path, image_size: usize) -> Result<Self> {
        let path = dir.join(PROCESSOR_FILE);
        if path.is_file() {
            let p: Self = read_config(&path, "a CLIPImageProcessor config")?;
            p.validate()?;
            Ok(p)
        } else {
            Ok(Self::for_image_size(image_size))
        }
    }

    fn filter(&self) -> Result<Filter> {
        Filter::from_pil_code(self.resample).ok_or_else(|| {
            Error::config(
                "resample",
                format!(
                    "{} is not supported; allowed: 2 (bilinear), 3 (bicubic)",
                    self.resample
                ),
            )
        })
    }

    pub fn validate(&self) -> Result<()> {
        self.filter()?;
        if self.image_std.contains(&0.0) {
            return Err(Error::config("image_std", "must not contain 0"));
        }
        Ok(())
    }

    /// The (height, width) the resize step produces for an image of (height, width).
    fn resized_size(&self, height: usize, width: usize) -> (usize, usize) {
        match self.size {
            SizeSpec::HeightWidth { height, width } => (height, width),
            SizeSpec::Square(edge)
            | SizeSpec::ShortestEdge {
                shortest_edge: edge,
            } => {
                // transformers' get_resize_output_image_size(default_to_square=False).
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let new_long = (edge as f64 * long as f64 / short as f64) as usize;
                if width <= height {
                    (new_long, edge)
                } else {
                    (edge, new_long)
                }
            }
        }
    }

    fn crop_dims(&self) -> (usize, usize) {
        match self.crop_size {
            SizeSpec::HeightWidth { height, width } => (height, width),
            SizeSpec::Square(e) | SizeSpec::ShortestEdge { shortest_edge: e } => (e, e),
        }
    }

    /// The (channels=3, H, W) pixel values for one decoded image.
    pub fn preprocess_rgb8(&self, rgb: &[u8], width: usize, height: usize) -> Result<Vec<f32>> {
        if width == 0 || height == 0 || rgb.len() != width * height * 3 {
            return Err(Error::InvalidInput(format!(
                "image buffer of {} bytes does not hold {width}x{height} RGB pixels",
                rgb.len()
            )));
        }
        let (mut data, mut w, mut h) = (rgb.to_vec(), width, height);
        if self.do_resize {
            let (nh, nw) = self.resized_size(h, w);
            if nh == 0 || nw == 0 {
                return Err(Error::InvalidInput(format!(
                    "image of {width}x{height} is too thin to resize"
                )));
            }
            data = resize_rgb8(&data, w, h, nw, nh, self.filter()?);
            (w, h) = (nw, nh);
        }
        if self.do_center_crop {
            let (ch, cw) = self.crop_dims();
            data = center_crop(&data, w, h, cw, ch);
            (w, h) = (cw, ch);
        }
        let scale = if self.do_rescale {
            self.rescale_factor
        } else {
            1.0
        };
        let mut out = vec![0f32; 3 * h * w];
        for c in 0..3 {
            let (mean, std) = if self.do_normalize {
                (self.image_mean[c], self.image_std[c])
            } else {
                (0.0, 1.0)
            };
            for i in 0..h * w {
                let v = (data[i * 3 + c] as f64 * scale) as f32;
                out[c * h * w + i] = (v - mean) / std;
            }
        }
        Ok(out)
    }

    /// Decodes an image file (PNG, JPEG, WebP) into RGB as transformers' `convert_to_rgb` does.
    pub fn read_rgb8(path: &Path) -> Result<(Vec<u8>, usize, usize)> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        decode_rgb8(&bytes).map_err(|message| Error::Image {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Preprocesses image files into a (N, 3, H, W) batch.
    pub fn preprocess_files(&self, paths: &[impl AsRef<Path>], device: &Device) -> Result<Tensor> {
        let mut all = Vec::new();
        for path in paths {
            let (rgb, w, h) = Self::read_rgb8(path.as_ref())?;
            all.extend(self.preprocess_rgb8(&rgb, w, h)?);
        }
        self.batch(all, paths.len(), device)
    }

    /// Preprocesses in-memory images into a (N, 3, H, W) batch.
    pub fn preprocess_images(&self, images: &[image::RgbImage], device: &Device) -> Result<Tensor> {
        let mut all = Vec::new();
        for image in images {
            let (w, h) = (image.width() as usize, image.height() as usize);
            all.extend(self.preprocess_rgb8(image.as_raw(), w, h)?);
        }
        self.batch(all, images.len(), device)
    }

    fn batch(&self, pixels: Vec<f32>, n: usize, device: &Device) -> Result<Tensor> {
        let (ch, cw) = if self.do_center_crop {
            self.crop_dims()
        } else {
            return Err(Error::config(
                "do_center_crop",
                "batching needs center cropping to a fixed size",
            ));
        };
        Ok(Tensor::from_vec(pixels, (n, 3, ch, cw), device)?)
    }
}

/// Decodes image bytes, the format guessed from the content, within size limits.
pub fn decode_image(bytes: &[u8]) -> std::result::Result<image::DynamicImage, String> {
    let reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| e.to_string())?;
    let format = reader
        .format()
        .ok_or_else(|| "unrecognised image format (allowed: PNG, JPEG, WebP)".to_string())?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(16_384);
    limits.max_image_height = Some(16_384);
    limits.max_alloc = Some(512 * 1024 * 1024);
    let mut reader = reader;
    reader.limits(limits);
    reader.decode().map_err(|e| format!("{format:?}: {e}"))
}

/// The largest side a decoded picture is worked on at (see [`decode_rgb8`]).
pub const MAX_WORKING_SIDE: u32 = 4096;

/// Decodes image bytes to RGB. Transparent images are composited onto white, as transformers'
/// `convert_to_rgb` does.
///
/// Pictures over [`MAX_WORKING_SIDE`] a side are first shrunk to fit it (an integer box filter
/// on the decoded bytes): the processor resizes in f32, and at 16,000 px a side that alone
/// needs gigabytes, for a 224 px input. Smaller pictures are untouched, so parity holds.
pub fn decode_rgb8(bytes: &[u8]) -> std::result::Result<(Vec<u8>, usize, usize), String> {
    let mut img = decode_image(bytes)?;
    if img.width().max(img.height()) > MAX_WORKING_SIDE {
        img = img.thumbnail(MAX_WORKING_SIDE, MAX_WORKING_SIDE);
    }
    let (w, h) = (img.width() as usize, img.height() as usize);
    if img.color().has_alpha() {
        let rgba = img.to_rgba8().into_raw();
        Ok((composite_on_white(&rgba), w, h))
    } else {
        Ok((img.to_rgb8().into_raw(), w, h))
    }
}

/// PIL's `alpha_composite` of RGBA pixels over opaque white, with its fixed-point rounding
/// (Pillow `libImaging/AlphaComposite.c`), as transformers' `convert_to_rgb` does.
fn composite_on_white(rgba: &[u8]) -> Vec<u8> {
    const BITS: u32 = 7;
    let div255 = |a: u32| ((a >> 8) + a) >> 8;
    let mut out = Vec::with_capacity(rgba.len() / 4 * 3);
    for px in rgba.chunks_exact(4) {
        let alpha = px[3] as u32;
        if alpha == 0 {
            out.extend_from_slice(&[255, 255, 255]);
            continue;
        }
        let coef1 = alpha << BITS;
        let coef2 = (255 - alpha) << BITS;
        for &c in &px[..3] {
            let mixed = c as u32 * coef1 + 255 * coef2;
            out.push((div255(mixed + (0x80 << BITS)) >> BITS) as u8);
        }
    }
    out
}

/// transformers' center_crop: top = (H - h) // 2, left = (W - w) // 2, zero padding where the
/// crop is larger than the image.
fn center_crop(src: &[u8], width: usize, height: usize, crop_w: usize, crop_h: usize) -> Vec<u8> {
    let mut out = vec![0u8; crop_w * crop_h * 3];
    // Python's floor division, so that a crop larger than the image pads evenly.
    let top = (height as i64 - crop_h as i64).div_euclid(2);
    let left = (width as i64 - crop_w as i64).div_euclid(2);
    for y in 0..crop_h {
        let sy = y as i64 + top;
        if sy < 0 || sy >= height as i64 {
            continue;
        }
        for x in 0..crop_w {
            let sx = x as i64 + left;
            if sx < 0 || sx >= width as i64 {
                continue;
            }
            let (s, d) = (
                (sy as usize * width + sx as usize) * 3,
                (y * crop_w + x) * 3,
            );
            out[d..d + 3].copy_from_slice(&src[s..s + 3]);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_side_resize_matches_transformers_rounding() {
        let p = ClipImageProcessor::for_image_size(224);
        assert_eq!(p.resized_size(480, 640), (224, 298));
        assert_eq!(p.resized_size(640, 480), (298, 224));
        assert_eq!(p.resized_size(100, 100), (224, 224));
    }

    #[test]
    fn center_crop_takes_the_middle() {
        let src: Vec<u8> = (0..4 * 2).flat_map(|i| [i as u8; 3]).collect();
        let out = center_crop(&src, 4, 2, 2, 2);
        assert_eq!(
            out.iter().step_by(3).copied().collect::<Vec<_>>(),
            vec![1, 2, 5, 6]
        );
    }

    #[test]
    fn garbage_bytes_are_a_clear_error() {
        let err = decode_rgb8(b"definitely not an image").unwrap_err();
        assert!(err.contains("unrecognised image format"), "{err}");
        let png_header_only = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";
        assert!(decode_rgb8(png_header_only).is_err());
    }

    #[test]
    fn huge_pictures_are_shrunk_to_the_working_side_keeping_their_shape() {
        let encode = |w: u32, h: u32| {
            let mut bytes = Vec::new();
            image::GrayImage::from_pixel(w, h, image::Luma([90]))
                .write_to(
                    &mut std::io::Cursor::new(&mut bytes),
                    image::ImageFormat::Png,
                )
                .unwrap();
            bytes
        };
        let (rgb, w, h) = decode_rgb8(&encode(8192, 4100)).unwrap();
        assert_eq!((w, h), (4096, 2050));
        assert_eq!(rgb.len(), w * h * 3);
        assert!(rgb.iter().all(|&v| v == 90));
        let (_, w, h) = decode_rgb8(&encode(300, 4096)).unwrap();
        assert_eq!((w, h), (300, 4096), "at the limit: untouched");
    }
}
