//! Pipelines compose models, tokenizers and processors; they hold no tensor math of their own.

mod assemble;
mod edits;
mod embed;
mod ranker;
mod sampling;
mod sampling_defaults;
mod unclip;

pub use assemble::{assemble, PipelineParts};
pub use edits::{
    keep_mask, read_rgba, reconstruction_error, slerp, Decoded, ReconstructionError,
    DEFAULT_INVERSION_REFINEMENTS,
};
pub use embed::{ClipEmbedder, Embeddings};
pub use ranker::{Ranker, RANKER};
pub use sampling::{sample_loop, Progress, Stage};
pub use sampling_defaults::{SamplingDefaults, SAMPLING_DEFAULTS_FILE};
pub use unclip::{GenerateOptions, UnclipPipeline, DECODER_TEXT_ENCODER};
