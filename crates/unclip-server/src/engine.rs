//! The model behind the API: one unCLIP pipeline folder, called with whole batches of
//! prompts or images (one row per output image) so that concurrent requests share each
//! guided forward pass.

use candle_core::{Device, Tensor};
use image::{RgbImage, RgbaImage};
use std::path::Path;
use unclip::diffusion::NoiseSource;
use unclip::imageops::to_rgb8;
use unclip::pipeline::{keep_mask, GenerateOptions, UnclipPipeline};

/// A decoded input image (RGB, row-major).
#[derive(Debug, Clone)]
pub struct InputImage {
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

pub struct Engine {
    pipeline: UnclipPipeline,
    options: GenerateOptions,
    /// RePaint resamples per inpainting step.
    edit_resamples: usize,
    name: String,
    /// (width, height) of every output image.
    size: (usize, usize),
}

impl Engine {
    /// Loads `dir`; `options` sets the steps and guidance of every request (`images_per_prompt`
    /// is ignored: batches are built one row per image); edits redo each step `edit_resamples`
    /// times.
    pub fn load(
        dir: &Path,
        options: GenerateOptions,
        edit_resamples: usize,
    ) -> unclip::Result<Self> {
        let pipeline = UnclipPipeline::load(dir, &Device::Cpu)?;
        let (height, width) = pipeline.output_size()?;
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "unclip".into());
        Ok(Self {
            pipeline,
            options: GenerateOptions {
                images_per_prompt: 1,
                ..options
            },
            edit_resamples,
            name,
            size: (width, height),
        })
    }

    /// The model id that /v1/models lists (the folder's name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The one size this model produces, as OpenAI writes sizes ("256x256").
    pub fn size_label(&self) -> String {
        format!("{}x{}", self.size.0, self.size.1)
    }

    pub fn can_generate(&self) -> bool {
        self.pipeline.prior.is_some()
    }

    /// Inpainting paints from a prompt, so it needs the prior as text-to-image does.
    pub fn can_edit(&self) -> bool {
        self.can_generate()
    }

    pub fn can_vary(&self) -> bool {
        self.pipeline.image_encoder.is_some() && self.pipeline.feature_extractor.is_some()
    }

    /// One image per prompt (repeat a prompt for several images of it).
    pub fn generate(&self, prompts: &[&str], seed: u64) -> unclip::Result<Vec<RgbImage>> {
        let mut noise = NoiseSource::seeded(seed);
        let images =
            self.pipeline
                .generate(prompts, &self.options, &mut noise, &mut |_, _, _| {})?;
        to_rgb8(&images)
    }

    /// One variation per input row: `rows[i]` indexes `images` (so an image asked for n times
    /// is embedded once).
    pub fn vary(
        &self,
        images: &[&InputImage],
        rows: &[u32],
        seed: u64,
    ) -> unclip::Result<Vec<RgbImage>> {
        let (Some(encoder), Some(processor)) = (
            &self.pipeline.image_encoder,
            &self.pipeline.feature_extractor,
        ) else {
            return Err(unclip::Error::InvalidInput(
                "this model has no image_encoder/; it cannot make variations".into(),
            ));
        };
        let side = encoder.vision_config()?.image_size;
        let mut pixels = Vec::with_capacity(images.len() * 3 * side * side);
        for image in images {
            let one = processor.preprocess_rgb8(&image.rgb, image.width, image.height)?;
            if one.len() != 3 * side * side {
                return Err(unclip::Error::InvalidInput(format!(
                    "the feature extractor made {} values, not the 3x{side}x{side} the image encoder takes",
                    one.len()
                )));
            }
            pixels.extend(one);
        }
        let device = Device::Cpu;
        let pixels = Tensor::from_vec(pixels, (images.len(), 3, side, side), &device)?;
        let embeds = encoder.image_features(&pixels)?;
        let embeds = embeds.index_select(&Tensor::new(rows, &device)?, 0)?;
        let mut noise = NoiseSource::seeded(seed);
        let out =
            self.pipeline
                .vary_embeddings(&embeds, &self.options, &mut noise, &mut |_, _, _| {})?;
        to_rgb8(&out)
    }

    /// `n` inpaintings of `image`: repainted where the mask's alpha is 0 (the image's own alpha
    /// when there is no mask), kept elsewhere. One request per call: the known region differs
    /// from image to image, so edits are not merged with other requests.
    pub fn edit(
        &self,
        image: &RgbaImage,
        mask: Option<&RgbaImage>,
        prompt: &str,
        n: usize,
        seed: u64,
    ) -> unclip::Result<Vec<RgbImage>> {
        let keep = keep_mask(image, mask, &Device::Cpu)?;
        let options = GenerateOptions {
            images_per_prompt: n,
            ..self.options.clone()
        };
        let mut noise = NoiseSource::seeded(seed);
        let images = self.pipeline.inpaint(
            image,
            &keep,
            prompt,
            self.edit_resamples,
            &options,
            &mut noise,
            &mut |_, _, _| {},
        )?;
        to_rgb8(&images)
    }
}

/// PNG bytes of an image.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>, image::ImageError> {
    let mut bytes = Vec::new();
    image.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )?;
    Ok(bytes)
}
