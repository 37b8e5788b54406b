//! Training loops, their optimizer, learning-rate schedule and parameter store.

mod clip;
mod conditioning;
mod decoder;
mod ema;
mod embedding_cache;
mod hard_negatives;
mod noise_loss;
mod optim;
mod params;
mod plot;
mod prior;
mod recipe_overrides;
mod recipes;
mod runner;
mod schedule;
mod state;
mod update_kernels;
mod upsampler;

pub use clip::{ClipRecipe, ClipStage};
pub use conditioning::FrozenClip;
pub use decoder::{DecoderRecipe, DecoderStage, DecoderTextEncoderRecipe, HighNoiseRecipe};
pub use ema::Ema;
pub use embedding_cache::{build_embedding_cache, EmbeddingCache};
pub use hard_negatives::HardNegatives;
pub use optim::{accumulate, clip_grad_norm, gradients, AdamW, AdamWConfig};
pub use params::ParamStore;
pub use prior::{PriorRecipe, PriorStage};
pub use recipe_overrides::RecipeOverride;
pub use recipes::{load_recipe, load_recipe_with, save_recipe, PRESETS};
pub use runner::{
    check_run_options, run_training, Batch, RunOptions, RunSummary, StepLog, TrainSettings,
    TrainStage,
};
pub use schedule::LrSchedule;
pub use upsampler::{UpsamplerRecipe, UpsamplerStage};
