//! Manipulations of existing images (unCLIP §3, "basic edits"): DDIM inversion of the decoder
//! (Song et al. 2021 §4.3, run with the decoder's own guided ε̂), variations, interpolations and
//! text diffs decoded from the inverted noise, and inpainting that keeps the known region
//! consistent during sampling by replace-and-resample (Lugmayr et al. 2022, RePaint).

use super::sampling::{sample_loop, Progress, Stage};
use super::unclip::{to_images, GenerateOptions, UnclipPipeline};
use crate::clip::decode_image;
use crate::diffusion::{NoiseSource, Prediction, Sampler, Scheduler, SchedulerConfig, SolverState};
use crate::error::{Error, Result};
use crate::imageops::{resize_bicubic_antialias, rgb_tensor};
use candle_core::{DType, Device, Tensor};
use image::RgbaImage;
use std::path::Path;

/// Fixed-point refinements of each inversion step: each solves the sampler's step backwards
/// more exactly (the plain inversion uses ε̂ at the wrong point, which the first sampling
/// step's 1/√ᾱ_T amplifies).
pub const DEFAULT_INVERSION_REFINEMENTS: usize = 10;

/// Decoded samples: at the decoder's resolution and after the upsamplers.
pub struct Decoded {
    /// (B, C, h, w) in [-1, 1].
    pub small: Tensor,
    /// (B, H, W, 3) in [0, 1].
    pub images: Tensor,
}

/// How far a reconstruction is from its target, both in [0, 1] pixel units.
#[derive(Debug, Clone, Copy)]
pub struct ReconstructionError {
    pub psnr_db: f64,
    pub max_abs: f64,
}

/// Reads an image file with its alpha channel (opaque when it has none).
pub fn read_rgba(path: &Path) -> Result<RgbaImage> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let image = decode_image(&bytes).map_err(|message| Error::Image {
        path: path.to_path_buf(),
        message,
    })?;
    Ok(image.to_rgba8())
}

/// Resizes (B, C, H, W) unless it already has the size.
fn resized(x: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let (_, _, xh, xw) = x.dims4()?;
    if (xh, xw) == (h, w) {
        Ok(x.clone())
    } else {
        Ok(resize_bicubic_antialias(x, h, w)?)
    }
}

/// Spherical interpolation of each row of `a` and `b` (flattened): endpoints are exactly `a`
/// (t = 0) and `b` (t = 1); rows of different norms are interpolated along the great circle
/// scaled between them.
pub fn slerp(a: &Tensor, b: &Tensor, t: f64) -> Result<Tensor> {
    if a.dims() != b.dims() {
        return Err(Error::InvalidInput(format!(
            "slerp between shapes {:?} and {:?}; they must match",
            a.dims(),
            b.dims()
        )));
    }
    let shape = a.dims().to_vec();
    let rows = shape.first().copied().unwrap_or(1);
    let fa = a.to_dtype(DType::F32)?.reshape((rows, ()))?;
    let fb = b.to_dtype(DType::F32)?.reshape((rows, ()))?;
    let (va, vb) = (fa.to_vec2::<f32>()?, fb.to_vec2::<f32>()?);
    let mut ca = Vec::with_capacity(rows);
    let mut cb = Vec::with_capacity(rows);
    for (ra, rb) in va.iter().zip(&vb) {
        let dot: f64 = ra.iter().zip(rb).map(|(x, y)| *x as f64 * *y as f64).sum();
        let na: f64 = ra.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let nb: f64 = rb.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        let theta = (dot / (na * nb).max(1e-30)).clamp(-1.0, 1.0).acos();
        if theta.sin() < 1e-6 {
            // (Anti)parallel rows: the circle is not defined; a line is as good.
            ca.push((1.0 - t) as f32);
            cb.push(t as f32);
        } else {
            ca.push((((1.0 - t) * theta).sin() / theta.sin()) as f32);
            cb.push(((t * theta).sin() / theta.sin()) as f32);
        }
    }
    let ca = Tensor::from_vec(ca, (rows, 1), a.device())?;
    let cb = Tensor::from_vec(cb, (rows, 1), a.device())?;
    let out = (fa.broadcast_mul(&ca)? + fb.broadcast_mul(&cb)?)?;
    Ok(out.reshape(shape)?)
}

/// Rows scaled to unit length.
fn normalised(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?;
    Ok(x.broadcast_div(&(norm + 1e-12)?)?)
}

/// PSNR and max |error| of samples in [-1, 1] against their targets, in [0, 1] units.
pub fn reconstruction_error(got: &Tensor, want: &Tensor) -> Result<ReconstructionError> {
    let diff = ((got - want)? * 0.5)?.abs()?.flatten_all()?;
    let max_abs = diff.max(0)?.to_scalar::<f32>()? as f64;
    let mse = diff.sqr()?.mean_all()?.to_scalar::<f32>()? as f64;
    Ok(ReconstructionError {
        psnr_db: 10.0 * (1.0 / mse.max(1e-20)).log10(),
        max_abs,
    })
}

/// Where to repaint, from the mask's alpha (or the image's own when no mask is given, as
/// OpenAI's edits API reads it): (1, 1, H, W) with 1 where the pixel is kept (alpha > 0) and 0
/// where it is repainted (alpha = 0).
pub fn keep_mask(image: &RgbaImage, mask: Option<&RgbaImage>, device: &Device) -> Result<Tensor> {
    let source = match mask {
        Some(m) => {
            if m.dimensions() != image.dimensions() {
                return Err(Error::InvalidInput(format!(
                    "the mask is {}x{} but the image is {}x{}; they must be the same size",
                    m.width(),
                    m.height(),
                    image.width(),
                    image.height()
                )));
            }
            m
        }
        None => image,
    };
    let keep: Vec<f32> = source
        .pixels()
        .map(|p| if p[3] == 0 { 0.0 } else { 1.0 })
        .collect();
    if keep.iter().all(|&k| k == 1.0) {
        let what = if mask.is_some() {
            "the mask"
        } else {
            "the image (no mask given)"
        };
        return Err(Error::InvalidInput(format!(
            "{what} has no fully transparent pixels, so there is nothing to repaint; \
             allowed: a mask (or an image with alpha) whose alpha is 0 where to paint"
        )));
    }
    let (w, h) = (source.width() as usize, source.height() as usize);
    Ok(Tensor::from_vec(keep, (1, 1, h, w), device)?)
}

/// The keep mask at another resolution: a pixel is kept only where it is wholly known.
fn keep_mask_at(keep: &Tensor, h: usize, w: usize) -> Result<Tensor> {
    let m = resized(keep, h, w)?;
    Ok(m.ge(0.999)?.to_dtype(DType::F32)?)
}

/// x where repainted, `known` where kept.
fn blend(keep: &Tensor, known: &Tensor, x: &Tensor) -> Result<Tensor> {
    let repaint = (1.0 - keep)?;
    Ok(x.broadcast_mul(&repaint)?
        .broadcast_add(&known.broadcast_mul(keep)?)?)
}

/// RePaint: before each model call the known region is replaced by the image noised to the
/// current level, and each step is redone `resamples` times (re-noised from where it landed)
/// so that the generated region harmonises with the seam.
#[allow(clippy::too_many_arguments)]
fn repaint_loop(
    scheduler: &Scheduler,
    x_t: Tensor,
    known: &Tensor,
    keep: &Tensor,
    resamples: usize,
    noise: &mut NoiseSource,
    stage: Stage,
    progress: &mut Progress,
    mut denoise: impl FnMut(usize, &Tensor, i64) -> Result<Tensor>,
) -> Result<Tensor> {
    let schedule = scheduler.schedule();
    let mut x = x_t;
    let mut state = SolverState::default();
    let total = scheduler.len();
    progress(stage, 0, total);
    for (i, &t) in scheduler.timesteps().iter().enumerate() {
        let prev_t = scheduler.prev_timestep(i);
        for round in 0..resamples {
            let z = noise.draw(x.dims(), x.device())?;
            let a_t = schedule.alpha_bar(t) as f64;
            let known_t = ((known * a_t.sqrt())?.broadcast_add(&(z * (1.0 - a_t).sqrt())?))?;
            x = blend(keep, &known_t, &x)?;
            let output = denoise(i, &x, t)?;
            let z = if scheduler.needs_noise(i) {
                Some(noise.draw(x.dims(), x.device())?)
            } else {
                None
            };
            let stepped = scheduler.step(i, &output, &x, z.as_ref(), &mut state)?;
            if round + 1 == resamples || prev_t < 0 {
                x = stepped;
                break;
            }
            // Back to t: q(x_t | x_prev) = N(√(ᾱ_t/ᾱ_prev) x_prev, (1 - ᾱ_t/ᾱ_prev) I).
            let ratio = a_t / schedule.alpha_bar(prev_t) as f64;
            let z = noise.draw(x.dims(), x.device())?;
            x = ((stepped * ratio.sqrt())? + (z * (1.0 - ratio).sqrt())?)?;
        }
        progress(stage, i + 1, total);
    }
    blend(keep, known, &x)
}

impl UnclipPipeline {
    /// Image files as the decoder sees them: (B, C, h, w) in [-1, 1] at its resolution.
    pub fn decoder_targets(&self, images: &[impl AsRef<Path>]) -> Result<Tensor> {
        if images.is_empty() {
            return Err(Error::InvalidInput("no image given".into()));
        }
        let (_, h, w) = self.decoder_shape()?;
        let mut rows = Vec::with_capacity(images.len());
        for path in images {
            let rgba = read_rgba(path.as_ref())?;
            let x = rgb_tensor(&rgba, self.device())?;
            rows.push(resized(&x, h, w)?.clamp(-1.0, 1.0)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// The plan both inversion and decoding from inverted noise walk: DDIM's own "leading"
    /// spacing (t = k·⌊T/n⌋, so the top is T − ⌊T/n⌋, not T − 1). At T − 1 the cosine schedule's
    /// ᾱ ≈ 2.5e-9 makes the first step divide by √ᾱ ≈ 5e-5: any mismatch between the ε̂ the
    /// inversion used and the one sampling sees is amplified 20 000-fold. x̂_0 is not clipped:
    /// clipping maps many x_t to one x_{t-1}, which cannot be run backwards.
    fn inversion_scheduler(&self, eta: f64, steps: usize) -> Result<Scheduler> {
        if self.decoder_scheduler.prediction_type == Prediction::VPrediction {
            return Err(Error::config(
                "decoder_scheduler.prediction_type",
                "inversion runs decoders that predict epsilon or sample, not v_prediction",
            ));
        }
        let config = SchedulerConfig {
            clip_sample: false,
            ..self.decoder_scheduler.clone()
        };
        if !(0.0..=1.0).contains(&eta) {
            return Err(Error::InvalidInput(format!(
                "DDIM eta {eta} is out of range; allowed: 0..=1 (0 reproduces the image)"
            )));
        }
        let train = config.num_train_timesteps;
        if !(2..=train).contains(&steps) {
            return Err(Error::InvalidInput(format!(
                "{steps} inversion steps; allowed: 2..={train}"
            )));
        }
        let stride = (train / steps) as i64;
        let timesteps: Vec<i64> = (0..steps as i64).rev().map(|k| k * stride).collect();
        let prev = timesteps.iter().skip(1).copied().chain([-1]).collect();
        Scheduler::with_timesteps(&config, Sampler::Ddim { eta }, timesteps, prev)
    }

    /// Captions-free decoder conditioning (as variations use) for image embeddings (B, D).
    fn image_condition(
        &self,
        embeddings: &Tensor,
        opts: &GenerateOptions,
    ) -> Result<super::unclip::DecoderCondition> {
        let guided = opts.decoder_guidance > 1.0;
        let cond = self.encode_text(&vec![""; embeddings.dim(0)?], 1)?;
        let text = if guided {
            self.with_unconditional(cond)?
        } else {
            cond
        };
        self.decoder_condition(embeddings, &text, guided, opts.decoder_guidance)
    }

    /// DDIM inversion: the decoder's x_T (B, C, h, w) from which `opts.decoder_steps` steps of
    /// DDIM (eta = 0, same guidance, empty captions) land on `targets` (B, C, h, w in [-1, 1]),
    /// given the images' CLIP embeddings (B, D). Each step solves the sampler's step
    /// x_t = √ᾱ_t x̂_0(x_s) + √(1-ᾱ_t) ε̂(x_s) for the noisier x_s by fixed-point iteration
    /// x_s ← √(ᾱ_s/ᾱ_t) (x_t − √(1-ᾱ_t) ε̂(x_s)) + √(1-ᾱ_s) ε̂(x_s), from ε̂ at x_t.
    pub fn invert(
        &self,
        targets: &Tensor,
        embeddings: &Tensor,
        refinements: usize,
        opts: &GenerateOptions,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        opts.validate()?;
        if targets.dim(0)? != embeddings.dim(0)? {
            return Err(Error::InvalidInput(format!(
                "{} images for {} embeddings",
                targets.dim(0)?,
                embeddings.dim(0)?
            )));
        }
        if refinements > 20 {
            return Err(Error::InvalidInput(format!(
                "{refinements} inversion refinements; allowed: 0..=20"
            )));
        }
        let channels = targets.dim(1)?;
        let condition = self.image_condition(embeddings, opts)?;
        let scheduler = self.inversion_scheduler(0.0, opts.decoder_steps)?;
        let schedule = scheduler.schedule();
        let total = scheduler.len();
        progress(Stage::Decoder, 0, total);
        let mut x = targets.clone();
        for (done, i) in (0..total).rev().enumerate() {
            let s = scheduler.timesteps()[i];
            let t = scheduler.prev_timestep(i);
            let (a_s, a_t) = (schedule.alpha_bar(s) as f64, schedule.alpha_bar(t) as f64);
            let predicts_sample = self.decoder_scheduler.prediction_type == Prediction::Sample;
            let eps_at = |x: &Tensor| -> Result<Tensor> {
                let out = self
                    .decoder_output(&condition, x, s)?
                    .narrow(1, 0, channels)?;
                if predicts_sample {
                    // ε̂ = (x_s − √ᾱ_s x̂_0) / √(1−ᾱ_s), the sampler's own reading of x̂_0.
                    Ok(((x - (out * a_s.sqrt())?)? / (1.0 - a_s).max(1e-12).sqrt())?)
                } else {
                    Ok(out)
                }
            };
            let solve = |eps: &Tensor| -> Result<Tensor> {
                let x0 = ((&x - (eps * (1.0 - a_t).sqrt())?)? / a_t.sqrt())?;
                Ok(((x0 * a_s.sqrt())? + (eps * (1.0 - a_s).sqrt())?)?)
            };
            let mut next = solve(&eps_at(&x)?)?;
            for _ in 0..refinements {
                next = solve(&eps_at(&next)?)?;
            }
            x = next;
            progress(Stage::Decoder, done + 1, total);
        }
        Ok(x)
    }

    /// Decodes x_T (B, C, h, w) with image embeddings (B, D) by DDIM with `eta` on the inversion
    /// plan (eta = 0 reproduces the inverted image), then the upsamplers.
    pub fn decode_inverted(
        &self,
        x_t: &Tensor,
        embeddings: &Tensor,
        eta: f64,
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Decoded> {
        opts.validate()?;
        if x_t.dim(0)? != embeddings.dim(0)? {
            return Err(Error::InvalidInput(format!(
                "{} noises for {} embeddings",
                x_t.dim(0)?,
                embeddings.dim(0)?
            )));
        }
        let condition = self.image_condition(embeddings, opts)?;
        let scheduler = self.inversion_scheduler(eta, opts.decoder_steps)?;
        let small = sample_loop(
            &scheduler,
            x_t.clone(),
            noise,
            Stage::Decoder,
            progress,
            |_, x, t| self.decoder_output(&condition, x, t),
        )?
        .clamp(-1.0, 1.0)?;
        let images = to_images(&self.upsample(&small, opts, noise, progress)?)?;
        Ok(Decoded { small, images })
    }

    /// Variations as in the paper: each image inverted once, then decoded
    /// `opts.images_per_prompt` times with DDIM `eta` from its x_T.
    pub fn vary_inverted(
        &self,
        images: &[impl AsRef<Path>],
        eta: f64,
        refinements: usize,
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Decoded> {
        let embeddings = self.image_embeddings(images)?;
        let targets = self.decoder_targets(images)?;
        let x_t = self.invert(&targets, &embeddings, refinements, opts, progress)?;
        let n = opts.images_per_prompt;
        let rows: Vec<u32> = (0..images.len() as u32)
            .flat_map(|i| std::iter::repeat_n(i, n))
            .collect();
        let rows = Tensor::new(rows.as_slice(), self.device())?;
        self.decode_inverted(
            &x_t.index_select(&rows, 0)?,
            &embeddings.index_select(&rows, 0)?,
            eta,
            opts,
            noise,
            progress,
        )
    }

    /// Frames slerped from image `a` to image `b` (both the CLIP embeddings and the inverted
    /// noises, so the layout moves smoothly): `frames` rows of (embeddings, x_T), endpoints
    /// exactly the inputs'.
    pub fn interpolation_inputs(
        &self,
        embeddings: &Tensor,
        noises: &Tensor,
        frames: usize,
    ) -> Result<(Tensor, Tensor)> {
        if !(2..=64).contains(&frames) {
            return Err(Error::InvalidInput(format!(
                "{frames} frames; allowed: 2..=64 (the two endpoints included)"
            )));
        }
        if embeddings.dim(0)? != 2 || noises.dim(0)? != 2 {
            return Err(Error::InvalidInput(
                "interpolation takes exactly two images".into(),
            ));
        }
        let (za, zb) = (embeddings.narrow(0, 0, 1)?, embeddings.narrow(0, 1, 1)?);
        let (xa, xb) = (noises.narrow(0, 0, 1)?, noises.narrow(0, 1, 1)?);
        let mut zs = Vec::with_capacity(frames);
        let mut xs = Vec::with_capacity(frames);
        for k in 0..frames {
            let t = k as f64 / (frames - 1) as f64;
            zs.push(slerp(&za, &zb, t)?);
            xs.push(slerp(&xa, &xb, t)?);
        }
        Ok((Tensor::cat(&zs, 0)?, Tensor::cat(&xs, 0)?))
    }

    /// Text diffs (unCLIP §3.3): the image embedding z_i (1, D) moved towards the caption change
    /// d = normalise(z_t − z_t0) by z_θ = slerp(ẑ_i, d, θ) for each θ, one row each.
    pub fn text_diff_embeddings(
        &self,
        image_embedding: &Tensor,
        from: &str,
        to: &str,
        thetas: &[f64],
    ) -> Result<Tensor> {
        if let Some(bad) = thetas.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return Err(Error::InvalidInput(format!(
                "theta {bad} is out of range; allowed: 0..=1 (the fraction of the way from the image to the text diff)"
            )));
        }
        if from == to {
            return Err(Error::InvalidInput(
                "the two captions are the same, so their difference is zero; give two different captions".into(),
            ));
        }
        let text = self.encode_text(&[from, to], 1)?;
        let z_t0 = text.embeds.narrow(0, 0, 1)?;
        let z_t = text.embeds.narrow(0, 1, 1)?;
        let diff = normalised(&(z_t - z_t0)?)?;
        // The slerp runs between unit vectors and the result is rescaled to |z_i|: text and image
        // embeddings have different norms, and the decoder only saw image embeddings' norm, so
        // interpolating the raw vectors would shrink or stretch what it is given.
        let norm = image_embedding.sqr()?.sum_keepdim(1)?.sqrt()?;
        let unit = normalised(image_embedding)?;
        let mut rows = Vec::with_capacity(thetas.len());
        for &theta in thetas {
            rows.push(slerp(&unit, &diff, theta)?.broadcast_mul(&norm)?);
        }
        Ok(Tensor::cat(&rows, 0)?)
    }

    /// Inpainting: repaints where `keep` (1, 1, H, W) is 0 with what the prompt describes,
    /// keeping the rest of `image`; RePaint at the decoder's resolution and again in the
    /// upsampler at full resolution. (n, H', W', 3) in [0, 1] at the output size; the kept
    /// pixels are the image's (resized to the output size if it is not).
    #[allow(clippy::too_many_arguments)]
    pub fn inpaint(
        &self,
        image: &RgbaImage,
        keep: &Tensor,
        prompt: &str,
        resamples: usize,
        opts: &GenerateOptions,
        noise: &mut NoiseSource,
        progress: &mut Progress,
    ) -> Result<Tensor> {
        opts.validate()?;
        if !(1..=20).contains(&resamples) {
            return Err(Error::InvalidInput(format!(
                "{resamples} resamples per step; allowed: 1..=20 (1: replacement only)"
            )));
        }
        if resamples > 1 && opts.sampler == Sampler::DpmSolverPlusPlus {
            return Err(Error::InvalidInput(
                "resampling redoes steps, which a multistep solver cannot; allowed samplers: ddpm, ddim (or resamples = 1)".into(),
            ));
        }
        if prompt.trim().is_empty() {
            return Err(Error::InvalidInput(
                "the prompt is empty; describe what to paint".into(),
            ));
        }
        let pixels = rgb_tensor(image, self.device())?;
        let (_, _, ih, iw) = pixels.dims4()?;
        if keep.dims() != [1, 1, ih, iw] {
            return Err(Error::InvalidInput(format!(
                "the keep mask has shape {:?}; it must be [1, 1, {ih}, {iw}] like the image",
                keep.dims()
            )));
        }
        let n = opts.images_per_prompt;
        let guided = opts.prior_guidance > 1.0 || opts.decoder_guidance > 1.0;
        let cond = self.encode_text(&[prompt], n)?;
        let text = if guided {
            self.with_unconditional(cond)?
        } else {
            cond
        };
        let embeddings = self.sample_prior(&text, n, guided, opts, noise, progress)?;
        let condition =
            self.decoder_condition(&embeddings, &text, guided, opts.decoder_guidance)?;

        let (channels, h, w) = self.decoder_shape()?;
        let known = resized(&pixels, h, w)?.clamp(-1.0, 1.0)?;
        let keep_small = keep_mask_at(keep, h, w)?;
        let scheduler = Scheduler::new(&self.decoder_scheduler, opts.sampler, opts.decoder_steps)?;
        let x_t = noise.draw(&[n, channels, h, w], self.device())?;
        let small = repaint_loop(
            &scheduler,
            x_t,
            &known,
            &keep_small,
            resamples,
            noise,
            Stage::Decoder,
            progress,
            |_, x, t| self.decoder_output(&condition, x, t),
        )?
        .clamp(-1.0, 1.0)?;
        if self.super_res_first.is_none() {
            return to_images(&small);
        }
        let (sh, sw) = self.output_size()?;
        let known = resized(&pixels, sh, sw)?.clamp(-1.0, 1.0)?;
        let keep_full = keep_mask_at(keep, sh, sw)?;
        let scheduler = Scheduler::new(
            &self.super_res_scheduler,
            opts.sampler,
            opts.super_res_steps,
        )?;
        let upscaled = resize_bicubic_antialias(&small, sh, sw)?;
        let last_step = scheduler.len() - 1;
        let x_t = noise.draw(&[n, channels, sh, sw], self.device())?;
        let image = repaint_loop(
            &scheduler,
            x_t,
            &known,
            &keep_full,
            resamples,
            noise,
            Stage::SuperRes,
            progress,
            |i, x, t| self.super_res_output(i, last_step, x, t, &upscaled),
        )?;
        to_images(&image)
    }
}
