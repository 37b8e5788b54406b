//! The library's integration tests, built as one binary, grouped by topic.

mod common;
mod data_sources;
mod edits;
mod eval;
mod gradients;
mod gradients_prior;
mod gradients_unet;
mod parity_clip;
mod parity_pipeline;
mod parity_prior;
mod parity_schedulers;
mod parity_tokenizer;
mod parity_unet;
mod shapes;
mod train_clip;
mod train_stages;
