//! The one sampling loop every stage uses: from x_T, ask the denoiser for its (guided) output
//! at each planned timestep and let the scheduler step, drawing noise only when it needs it.

use crate::diffusion::{NoiseSource, Scheduler, SolverState};
use crate::error::Result;
use candle_core::Tensor;

/// Which stage a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    Prior,
    Decoder,
    SuperRes,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Stage::Prior => "prior",
            Stage::Decoder => "decoder",
            Stage::SuperRes => "super-res",
        }
    }
}

/// Progress callback: (stage, steps done, steps in the stage).
pub type Progress<'a> = dyn FnMut(Stage, usize, usize) + 'a;

/// Runs `scheduler` from `x_t`; `denoise(i, x, t)` returns the model output for step `i`.
pub fn sample_loop(
    scheduler: &Scheduler,
    x_t: Tensor,
    noise: &mut NoiseSource,
    stage: Stage,
    progress: &mut Progress,
    mut denoise: impl FnMut(usize, &Tensor, i64) -> Result<Tensor>,
) -> Result<Tensor> {
    let mut x = x_t;
    let mut state = SolverState::default();
    let total = scheduler.len();
    progress(stage, 0, total);
    for (i, &t) in scheduler.timesteps().iter().enumerate() {
        let output = denoise(i, &x, t)?;
        let z = if scheduler.needs_noise(i) {
            Some(noise.draw(x.dims(), x.device())?)
        } else {
            None
        };
        x = scheduler.step(i, &output, &x, z.as_ref(), &mut state)?;
        progress(stage, i + 1, total);
    }
    Ok(x)
}
