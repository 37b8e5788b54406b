//! Training loops, their optimizer, learning-rate schedule and parameter store.

mod clip;
mod optim;
mod params;
mod schedule;

pub use clip::{train_clip, ClipRecipe, ClipTrainOptions, StepReport, TrainSummary};
pub use optim::{clip_grad_norm, AdamW, AdamWConfig};
pub use params::ParamStore;
pub use schedule::LrSchedule;
