//! Diffusion: noise schedules, samplers, the noise source, and the guidance combine.

mod guidance;
mod noise;
mod schedule;
mod scheduler;
mod vlb;

pub use guidance::{classifier_free_guidance, split_learned_variance};
pub use noise::NoiseSource;
pub use schedule::{cosine_betas, NoiseSchedule};
pub use scheduler::{Prediction, Sampler, Scheduler, SchedulerConfig, SolverState, VarianceType};
pub use vlb::vlb_loss;
