//! Scoring a text-to-image pipeline on captioned data with the pipeline's own CLIP: the first
//! `limit` pairs of the source (in the data stream's seeded order) are read, one image is
//! generated per caption, and the generated and the real images are scored the same way, so
//! the real images give the ceiling each number can reach with this CLIP.
//!
//! - CLIP score and R-precision (clip_metrics.rs) of every image against its caption.
//! - Fréchet distance (frechet.rs) between L2-normalised CLIP image embeddings. The estimate
//!   depends on the number of samples, so both numbers use the same sizes: the pairs are split
//!   in halves A and B, and the generated images of A and the real images of A are each
//!   compared with the real images of B. The real number is the floor sampling noise alone
//!   reaches.
//!
//! Real images are resized (shortest side, PIL bicubic) and center-cropped to the pipeline's
//! output size before CLIP sees them, so both sets reach CLIP at the same resolution.

use super::clip_metrics::{clip_score, r_precision, RPrecision};
use super::frechet::frechet_distance_of;
use crate::clip::{l2_normalize, ClipImageProcessor, ClipModel};
use crate::data::{stream, DataSource, StreamOptions};
use crate::diffusion::NoiseSource;
use crate::error::{Error, Result};
use crate::imageops::to_rgb8;
use crate::pipeline::{GenerateOptions, UnclipPipeline};
use candle_core::Tensor;
use serde::Serialize;

#[derive(Debug, Clone)]
pub struct CaptionsEvalOptions {
    /// Pairs to evaluate (the first ones of the seeded stream).
    pub limit: usize,
    /// Seeds the data order, the generation noise and the R-precision distractors.
    pub seed: u64,
    /// Captions generated per pipeline call.
    pub batch: usize,
    /// Sampling settings; one image per caption.
    pub generate: GenerateOptions,
}

/// The three numbers for one set of images.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionScores {
    pub clip_score: f64,
    pub r_precision: RPrecision,
    /// `None` with fewer than 4 pairs (each half needs 2 for a covariance).
    pub frechet_distance: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaptionsReport {
    pub pairs: usize,
    pub generated: CaptionScores,
    /// The real images of the same captions: the ceiling (the floor for the distance).
    pub real: CaptionScores,
}

/// The pipeline's CLIP image tower with its preprocessing, or an error saying it is missing.
fn image_tower(pipeline: &UnclipPipeline) -> Result<(&ClipModel, &ClipImageProcessor)> {
    match (&pipeline.image_encoder, &pipeline.feature_extractor) {
        (Some(e), Some(p)) => Ok((e, p)),
        _ => Err(Error::InvalidInput(
            "the pipeline has no `image_encoder/` (with `feature_extractor/`): caption scores \
             need the model's CLIP image tower; `unclip assemble` writes it"
                .into(),
        )),
    }
}

/// Unit-length CLIP image embeddings of RGB8 images.
fn embed_images(
    pipeline: &UnclipPipeline,
    images: &[(Vec<u8>, usize, usize)],
) -> Result<Vec<Vec<f32>>> {
    let (encoder, processor) = image_tower(pipeline)?;
    let device = pipeline.device();
    let mut out = Vec::with_capacity(images.len());
    for chunk in images.chunks(32) {
        let mut rows = Vec::with_capacity(chunk.len());
        for (rgb, w, h) in chunk {
            let pixels = processor.preprocess_rgb8(rgb, *w, *h)?;
            let len = pixels.len();
            rows.push(Tensor::from_vec(pixels, len, device)?);
        }
        let side = encoder.vision_config()?.image_size;
        let batch = Tensor::stack(&rows, 0)?.reshape((chunk.len(), 3, side, side))?; // (B, 3, S, S)
        out.extend(l2_normalize(&encoder.image_features(&batch)?)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

/// Unit-length CLIP text embeddings.
fn embed_texts(pipeline: &UnclipPipeline, texts: &[String]) -> Result<Vec<Vec<f32>>> {
    let mut out = Vec::with_capacity(texts.len());
    for chunk in texts.chunks(64) {
        let batch = pipeline.tokenizer.encode_batch(chunk)?;
        let (ids, mask) = batch.to_tensors(pipeline.device())?;
        let features = pipeline.text_encoder.text_features(&ids, Some(&mask))?;
        out.extend(l2_normalize(&features)?.to_vec2::<f32>()?);
    }
    Ok(out)
}

fn scores(
    images: &[Vec<f32>],
    texts: &[Vec<f32>],
    captions: &[String],
    frechet_distance: Option<f64>,
    seed: u64,
) -> Result<CaptionScores> {
    Ok(CaptionScores {
        clip_score: clip_score(images, texts)?,
        r_precision: r_precision(images, texts, captions, seed)?,
        frechet_distance,
    })
}

/// Generates an image per caption of the first `opts.limit` pairs of `source` and scores the
/// generated and the real images. `progress(done, total)` follows the generation.
pub fn evaluate_captions(
    pipeline: &UnclipPipeline,
    source: &DataSource,
    opts: &CaptionsEvalOptions,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<CaptionsReport> {
    if opts.limit == 0 || opts.batch == 0 {
        return Err(Error::InvalidInput(format!(
            "limit {} and batch {}: both must be at least 1",
            opts.limit, opts.batch
        )));
    }
    image_tower(pipeline)?;
    let (height, width) = pipeline.output_size()?;
    let stream_opts = StreamOptions {
        image_size: height.max(width),
        seed: opts.seed,
        ..StreamOptions::default()
    };
    let samples: Vec<_> = stream(source, &stream_opts)?.take(opts.limit).collect();
    if samples.is_empty() {
        return Err(Error::Data(format!(
            "{} yielded no readable pairs",
            source.describe()
        )));
    }
    let n = samples.len();
    let captions: Vec<String> = samples.iter().map(|s| s.caption.clone()).collect();
    let side = stream_opts.image_size;
    let real: Vec<(Vec<u8>, usize, usize)> = samples
        .into_iter()
        .map(|s| (s.pixels, side, side))
        .collect();

    let generate = GenerateOptions {
        images_per_prompt: 1,
        ..opts.generate.clone()
    };
    let mut noise = NoiseSource::seeded(opts.seed);
    let mut generated = Vec::with_capacity(n);
    progress(0, n);
    for chunk in captions.chunks(opts.batch) {
        let images = pipeline.generate(chunk, &generate, &mut noise, &mut |_, _, _| {})?;
        for image in to_rgb8(&images)? {
            let (w, h) = image.dimensions();
            generated.push((image.into_raw(), w as usize, h as usize));
        }
        progress(generated.len(), n);
    }

    let texts = embed_texts(pipeline, &captions)?;
    let real = embed_images(pipeline, &real)?;
    let generated = embed_images(pipeline, &generated)?;
    // Half A of a set against the real half B (see the module comment).
    let half = n / 2;
    let reference = &real[half..];
    let against_reference = |set: &[Vec<f32>]| -> Result<Option<f64>> {
        if half < 2 {
            return Ok(None);
        }
        Ok(Some(frechet_distance_of(&set[..half], reference)?))
    };
    Ok(CaptionsReport {
        pairs: n,
        generated: scores(
            &generated,
            &texts,
            &captions,
            against_reference(&generated)?,
            opts.seed,
        )?,
        real: scores(
            &real,
            &texts,
            &captions,
            against_reference(&real)?,
            opts.seed,
        )?,
    })
}
