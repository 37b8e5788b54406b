//! Scoring a text-to-image pipeline on the shapes world: every prompt is generated
//! `images_per_prompt` times and each image judged by the checker.
//!
//! Prompt `i` draws its noise from its own seeded stream (`seed + i`), so its images do not
//! depend on which other prompts are in the list or in what order.
//!
//! To find which stage loses the accuracy, the images can also start from rendered scenes of
//! the prompt (`EvalStart`): the scenes themselves (the checker's own ceiling, 1.0), the scenes
//! shrunk to the decoder's resolution and passed through the upsamplers (what a perfect decoder
//! would score), or the scenes' CLIP image embeddings decoded with the prompt (the prior
//! bypassed).

use super::checker::{check, Verdict};
use super::score::ShapesScore;
use crate::data::shapes::grammar::Prompt;
use crate::data::shapes::{render, Scene};
use crate::diffusion::NoiseSource;
use crate::error::{Error, Result};
use crate::imageops::{resize_bicubic_antialias, rgb_tensor, to_rgb8};
use crate::pipeline::{GenerateOptions, UnclipPipeline};
use candle_core::Tensor;
use image::RgbImage;
use rand::SeedableRng;

/// Where the judged images come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EvalStart {
    /// The whole pipeline from the prompt: prior, decoder, upsamplers.
    #[default]
    Prompt,
    /// Rendered scenes of the prompt, CLIP-embedded and decoded with the prompt's text.
    ImageEmbedding,
    /// Rendered scenes resized to the decoder's resolution, through the upsamplers.
    DecoderSample,
    /// The rendered scenes themselves.
    Scene,
}

#[derive(Debug, Clone)]
pub struct ShapesEvalOptions {
    pub images_per_prompt: usize,
    pub seed: u64,
    pub start: EvalStart,
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
        let images = make_images(pipeline, prompt, opts, &generate, &mut noise)?;
        for (image_index, image) in images.into_iter().enumerate() {
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

fn make_images(
    pipeline: &UnclipPipeline,
    prompt: &Prompt,
    opts: &ShapesEvalOptions,
    generate: &GenerateOptions,
    noise: &mut NoiseSource,
) -> Result<Vec<RgbImage>> {
    let text = prompt.to_string();
    if opts.start == EvalStart::Prompt {
        let images = pipeline.generate(&[text], generate, noise, &mut |_, _, _| {})?;
        return to_rgb8(&images);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(opts.seed ^ hash_text(&text));
    let scenes = (0..opts.images_per_prompt)
        .map(|_| Ok(render(&Scene::sample(prompt, &mut rng)?)))
        .collect::<Result<Vec<_>>>()?;
    let one = GenerateOptions {
        images_per_prompt: 1,
        ..generate.clone()
    };
    match opts.start {
        EvalStart::Prompt | EvalStart::Scene => Ok(scenes),
        EvalStart::ImageEmbedding => {
            let embeddings = pipeline.image_embeddings_of(&scenes)?;
            let captions = vec![text; scenes.len()];
            let images = pipeline.decode_embeddings(
                &embeddings,
                &captions,
                &one,
                noise,
                &mut |_, _, _| {},
            )?;
            to_rgb8(&images)
        }
        EvalStart::DecoderSample => {
            let (_, h, w) = pipeline.decoder_shape()?;
            let batch = scenes
                .iter()
                .map(|scene| {
                    let t = rgb_tensor(scene, pipeline.device())?;
                    Ok(resize_bicubic_antialias(&t, h, w)?)
                })
                .collect::<Result<Vec<_>>>()?;
            let small = Tensor::cat(&batch, 0)?;
            let images =
                pipeline.upsample_decoder_samples(&small, &one, noise, &mut |_, _, _| {})?;
            to_rgb8(&images)
        }
    }
}

/// A stable per-prompt seed for its scenes (FNV-1a): independent of the prompt's place in the list.
fn hash_text(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}
