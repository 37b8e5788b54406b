//! Pipelines compose models, tokenizers and processors; they hold no tensor math of their own.

mod embed;

pub use embed::{ClipEmbedder, Embeddings};
