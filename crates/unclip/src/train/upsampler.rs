//! Training a diffusion upsampler (unCLIP §2.1, after GLIDE/ADM's super-resolution models):
//! a U-Net without text predicts the noise of a high-resolution image given the noisy image and
//! a degraded low-resolution copy upscaled back (Gaussian blur of random width and a little
//! Gaussian noise before the antialiased bicubic upscale the pipeline also uses), so that at
//! sampling time it repairs what the decoder's image lacks.

use super::conditioning::{normal, timesteps};
use super::noise_loss::{check_trainable, denoising_loss, denoising_target, SnrWeighting};
use super::params::ParamStore;
use super::recipes::check_scheduler;
use super::runner::{Batch, TrainSettings, TrainStage};
use crate::checkpoint::write_config;
use crate::diffusion::{NoiseSchedule, NoiseSource, Sampler, Scheduler, SchedulerConfig};
use crate::error::{Error, Result};
use crate::imageops::{contact_sheet, resize_bicubic_antialias, save_png, to_rgb8};
use crate::models::unet::{SampleSize, UNet2DConfig, UNet2DModel};
use crate::pipeline::{sample_loop, Stage};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpsamplerRecipe {
    pub train: TrainSettings,
    /// in_channels must be twice out_channels (noisy image + upscaled low-resolution image).
    pub unet: UNet2DConfig,
    pub scheduler: SchedulerConfig,
    /// The decoder's resolution, which the upsampler starts from.
    pub low_resolution: usize,
    /// Range of the blur's standard deviation, in low-resolution pixels.
    #[serde(default = "blur")]
    pub blur_sigma: [f64; 2],
    /// Largest standard deviation of the noise added to the low-resolution image ([-1, 1] scale).
    #[serde(default = "noise")]
    pub max_noise: f64,
    /// Min-SNR-γ loss weighting (γ = 5 in its paper); absent: the plain mean squared error.
    #[serde(default)]
    pub min_snr_gamma: Option<f64>,
}

fn blur() -> [f64; 2] {
    [0.4, 0.8]
}
fn noise() -> f64 {
    0.05
}

pub struct UpsamplerStage {
    params: ParamStore,
    unet: UNet2DModel,
    config: UNet2DConfig,
    scheduler: SchedulerConfig,
    schedule: NoiseSchedule,
    recipe: UpsamplerRecipe,
    image_size: usize,
    device: Device,
}

/// (n, n) Gaussian blur matrix with rows renormalised at the borders.
fn gaussian_matrix(n: usize, sigma: f64, device: &Device) -> Result<Tensor> {
    let mut m = vec![0f32; n * n];
    for i in 0..n {
        let row: Vec<f64> = (0..n)
            .map(|j| (-((i as f64 - j as f64).powi(2)) / (2.0 * sigma * sigma)).exp())
            .collect();
        let total: f64 = row.iter().sum();
        for (j, w) in row.iter().enumerate() {
            m[i * n + j] = (w / total) as f32;
        }
    }
    Ok(Tensor::from_vec(m, (n, n), device)?)
}

impl UpsamplerStage {
    pub fn new(recipe: &UpsamplerRecipe, seed: u64, device: &Device) -> Result<Self> {
        check_scheduler(&recipe.scheduler)?;
        if !(0.0..=1.0).contains(&recipe.max_noise) {
            return Err(Error::config(
                "max_noise",
                format!(
                    "{}; allowed: 0..=1 (a standard deviation on the [-1, 1] scale)",
                    recipe.max_noise
                ),
            ));
        }
        recipe.unet.validate()?;
        check_trainable(recipe.scheduler.prediction_type)?;
        if recipe.unet.in_channels != 2 * recipe.unet.out_channels {
            return Err(Error::config(
                "unet.in_channels",
                "must be twice out_channels (noisy image + upscaled image)",
            ));
        }
        let image_size = match &recipe.unet.sample_size {
            Some(SampleSize::Square(n)) => *n,
            _ => {
                return Err(Error::config(
                    "unet.sample_size",
                    "training needs a square sample_size",
                ))
            }
        };
        if recipe.low_resolution == 0 || recipe.low_resolution >= image_size {
            return Err(Error::config(
                "low_resolution",
                format!("must be in 1..{image_size} (below the upsampler's sample_size)"),
            ));
        }
        if !(recipe.blur_sigma[0] > 0.0 && recipe.blur_sigma[0] <= recipe.blur_sigma[1])
            || recipe.max_noise < 0.0
        {
            return Err(Error::config(
                "blur_sigma",
                "needs 0 < low <= high, and max_noise >= 0",
            ));
        }
        let params = ParamStore::new(seed);
        let unet = UNet2DModel::new(&recipe.unet, params.var_builder(device))?;
        Ok(Self {
            params,
            unet,
            config: recipe.unet.clone(),
            scheduler: recipe.scheduler.clone(),
            schedule: NoiseSchedule::cosine(recipe.scheduler.num_train_timesteps),
            recipe: recipe.clone(),
            image_size,
            device: device.clone(),
        })
    }

    /// The conditioning image: down to the decoder's size, optionally degraded, back up.
    fn condition(&self, hi: &Tensor, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        let low = self.recipe.low_resolution;
        let mut lo = resize_bicubic_antialias(hi, low, low)?;
        if let Some(rng) = rng {
            let [a, b] = self.recipe.blur_sigma;
            let sigma = rng.random_range(a..=b);
            let g = gaussian_matrix(low, sigma, hi.device())?;
            lo = g.broadcast_matmul(&lo.broadcast_matmul(&g.t()?)?)?;
            let level = rng.random_range(0.0..=self.recipe.max_noise);
            let dims = lo.dims().to_vec();
            lo = (lo + (normal(rng, &dims, hi.device())? * level)?)?;
        }
        Ok(resize_bicubic_antialias(
            &lo.clamp(-1.0, 1.0)?,
            self.image_size,
            self.image_size,
        )?)
    }
}

impl TrainStage for UpsamplerStage {
    fn name(&self) -> &'static str {
        "upsampler"
    }

    fn params(&self) -> &ParamStore {
        &self.params
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn image_size(&self) -> usize {
        self.image_size
    }

    fn loss(&self, batch: &Batch, rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let x0 = &batch.pixels;
        let b = x0.dim(0)?;
        let up = self.condition(x0, Some(rng))?;
        let ts = timesteps(rng, b, self.scheduler.num_train_timesteps);
        let noise = normal(rng, x0.dims(), x0.device())?;
        let x_t = self.schedule.q_sample(x0, &noise, &ts)?;
        let t = Tensor::new(
            ts.iter().map(|&t| t as f32).collect::<Vec<_>>().as_slice(),
            x0.device(),
        )?;
        let eps = self
            .unet
            .forward(&Tensor::cat(&[&x_t, &up], 1)?, &t, None)?;
        let prediction = self.scheduler.prediction_type;
        let target = denoising_target(prediction, x0, &noise)?;
        denoising_loss(
            &eps,
            &target,
            prediction,
            &self.schedule,
            &ts,
            SnrWeighting::from_recipe(self.recipe.min_snr_gamma, None)?,
        )
    }

    fn init_from(&self, dir: &Path) -> Result<()> {
        self.params.load_folder(
            "",
            &dir.join("super_res_first"),
            &["diffusion_pytorch_model.safetensors"],
            &[],
        )?;
        Ok(())
    }

    fn save_model(&self, dir: &Path, weights: &[(String, Tensor)]) -> Result<()> {
        // One network serves both of the pipeline's slots (Karlo trains two; the last step's
        // specialist is an optimisation this recipe does not make).
        UNet2DModel::save(&dir.join("super_res_first"), &self.config, weights)?;
        let mut last = self.config.clone();
        last.sample_size = None;
        UNet2DModel::save(&dir.join("super_res_last"), &last, weights)?;
        write_config(
            &dir.join("super_res_scheduler")
                .join("scheduler_config.json"),
            &self.scheduler,
        )
    }

    /// Rows of: bicubic upscale, the model's upscale (7 DDPM steps), the real image.
    fn preview(&self, path: &Path, weights: &[(String, Tensor)], batch: &Batch) -> Result<()> {
        let map: HashMap<String, Tensor> = weights.iter().cloned().collect();
        let unet = UNet2DModel::new(
            &self.config,
            VarBuilder::from_tensors(map, DType::F32, &self.device),
        )?;
        let n = batch.captions.len().min(6);
        let real = batch.pixels.narrow(0, 0, n)?;
        let up = self.condition(&real, None)?;
        let scheduler = Scheduler::new(&self.scheduler, Sampler::Ddpm, 7)?;
        let mut noise = NoiseSource::seeded(0);
        let x_t = noise.draw(real.dims(), real.device())?;
        let made = sample_loop(
            &scheduler,
            x_t,
            &mut noise,
            Stage::SuperRes,
            &mut |_, _, _| {},
            |_, x, t| {
                Ok(unet.forward(
                    &Tensor::cat(&[x, &up], 1)?,
                    &Tensor::full(t as f32, n, x.device())?,
                    None,
                )?)
            },
        )?;
        let to_images = |x: &Tensor| -> Result<Vec<image::RgbImage>> {
            to_rgb8(&((x.clamp(-1.0, 1.0)?.permute((0, 2, 3, 1))? + 1.0)? / 2.0)?)
        };
        let (a, b, c) = (to_images(&up)?, to_images(&made)?, to_images(&real)?);
        let mut images = Vec::new();
        for i in 0..n {
            images.extend([a[i].clone(), b[i].clone(), c[i].clone()]);
        }
        match contact_sheet(&images, 3, 2) {
            Some(sheet) => save_png(&sheet, path),
            None => Ok(()),
        }
    }
}
