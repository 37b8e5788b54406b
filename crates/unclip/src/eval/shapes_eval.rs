//! Scoring a text-to-image pipeline on the shapes world: every prompt is generated
//! `images_per_prompt` times and each image judged by the checker.
//!
//! Prompt `i` draws its noise from its own seeded stream (`seed + i`), so its images do not
//! depend on which other prompts are in the list or in what order.

use super::checker::{check, Verdict};
use super::score::ShapesScore;
use crate::data::shapes::grammar::Prompt;
use crate::diffusion::NoiseSource;
use crate::error::{Error, Result};
use crate::imageops::to_rgb8;
use crate::pipeline::{GenerateOptions, UnclipPipeline};
use image::RgbImage;

#[derive(Debug, Clone)]
pub struct ShapesEvalOptions {
    pub images_per_prompt: usize,
    pub seed: u64,
    /// Sampling settings; its `images_per_prompt` is replaced by the field above.
    pub generate: GenerateOptions,
}

/// One generated image and its verdict, handed to the caller as soon as it is judged.
pub struct JudgedImage {
    pub prompt_index: usize,
    /// Which of the prompt's images this is (0-based).
    pub image_index: usize,
    pub image: RgbImage,
    pub verdict: Verdict,
}

/// Generates and judges every prompt's images; `on_image` sees each image (to save it or show
/// progress) and may stop the run with an error.
pub fn evaluate_shapes(
    pipeline: &UnclipPipeline,
    prompts: &[Prompt],
    opts: &ShapesEvalOptions,
    on_image: &mut dyn FnMut(&JudgedImage) -> Result<()>,
) -> Result<(ShapesScore, Vec<Verdict>)> {
    if prompts.is_empty() {
        return Err(Error::InvalidInput("no prompts to evaluate".into()));
    }
    let generate = GenerateOptions {
        images_per_prompt: opts.images_per_prompt,
        ..opts.generate.clone()
    };
    let mut verdicts = Vec::with_capacity(prompts.len() * opts.images_per_prompt);
    for (prompt_index, prompt) in prompts.iter().enumerate() {
        let mut noise = NoiseSource::seeded(opts.seed.wrapping_add(prompt_index as u64));
        let text = [prompt.to_string()];
        let images = pipeline.generate(&text, &generate, &mut noise, &mut |_, _, _| {})?;
        for (image_index, image) in to_rgb8(&images)?.into_iter().enumerate() {
            let judged = JudgedImage {
                prompt_index,
                image_index,
                verdict: check(prompt, &image),
                image,
            };
            on_image(&judged)?;
            verdicts.push(judged.verdict);
        }
    }
    Ok((ShapesScore::from_verdicts(&verdicts), verdicts))
}
