//! Command-line definitions; help text comes from the doc comments.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "unclip",
    version,
    about = "DALL-E 2 (unCLIP) in Rust: CLIP, prior, decoder, upsamplers"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Text to image with an unCLIP pipeline (prior, decoder, upsamplers).
    Generate(crate::generate::GenerateArgs),
    /// Variations of images (CLIP image embedding, decoded again).
    Vary(crate::generate::VaryArgs),
    /// Invert an image to the decoder's noise (DDIM) and report how well it reconstructs.
    Invert(crate::edit_cmd::InvertArgs),
    /// Frames between two images (slerp of their embeddings and inverted noises), a sheet, a GIF.
    Interpolate(crate::edit_cmd::InterpolateArgs),
    /// Move an image along the change between two captions (unCLIP text diffs).
    Textdiff(crate::edit_cmd::TextDiffArgs),
    /// Inpaint: repaint where the mask (or the image) is transparent, following a prompt.
    Edit(crate::edit_cmd::EditArgs),
    /// Embed texts and/or images with a CLIP model (transformers layout).
    Embed(EmbedArgs),
    /// Zero-shot classify an image against text labels.
    Classify(ClassifyArgs),
    /// Train a model.
    #[command(subcommand)]
    Train(TrainCommand),
    /// Train a CLIP BPE tokenizer on captions.
    Tokenizer(TokenizerArgs),
    /// Precompute CLIP embeddings of a dataset once, for `train prior --embeddings`.
    EmbedDataset(crate::train_cmd::EmbedDatasetArgs),
    /// Put trained parts together into one pipeline folder that generate and vary load.
    Assemble(crate::train_cmd::AssembleArgs),
    /// Re-save a CLIP folder in another transformers layout.
    Convert(ConvertArgs),
    /// Measure throughput (compare with tools/bench/*.py).
    #[command(subcommand)]
    Bench(crate::bench::BenchCommand),
    /// Build datasets.
    #[command(subcommand)]
    Data(crate::data_cmd::DataCommand),
    /// Measure how well a pipeline follows prompts (shapes-world checker, CLIP scores).
    #[command(subcommand)]
    Eval(crate::eval_cmd::EvalCommand),
    /// Serve the OpenAI Images API (generations, edits, variations) and a web page over HTTP.
    Serve(crate::serve_cmd::ServeArgs),
}

#[derive(Args)]
pub struct EmbedArgs {
    /// A CLIP model folder (config.json, model.safetensors, tokenizer files), or a pipeline
    /// folder or built-in model name (its text_encoder/ and image_encoder/).
    #[arg(long, value_parser = crate::builtin_models::model_path)]
    pub model: PathBuf,
    /// A text to embed (repeat for several).
    #[arg(long = "text")]
    pub texts: Vec<String>,
    /// An image file to embed (repeat for several).
    #[arg(long = "image")]
    pub images: Vec<PathBuf>,
    /// Print {"input_ids", "text_embeds", "image_embeds"} as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct ClassifyArgs {
    /// A CLIPModel folder (a pipeline, built-in models included, stores no logit_scale, so it
    /// cannot classify: compare cosine similarities with `unclip embed` instead).
    #[arg(long, value_parser = crate::builtin_models::model_path)]
    pub model: PathBuf,
    #[arg(long)]
    pub image: PathBuf,
    /// Candidate labels, e.g. --labels "a cat" "a dog".
    #[arg(long, num_args = 1.., required = true)]
    pub labels: Vec<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum TrainCommand {
    /// Contrastive CLIP training (text and image towers, learned temperature).
    Clip(TrainClipArgs),
    /// The diffusion prior: caption -> CLIP image embedding.
    Prior(crate::train_cmd::StageArgs),
    /// The decoder (and text projection): CLIP image embedding + caption -> image.
    Decoder(crate::train_cmd::StageArgs),
    /// A diffusion upsampler: low-resolution image -> high-resolution image.
    Upsampler(crate::train_cmd::StageArgs),
}

#[derive(Args)]
pub struct TrainClipArgs {
    #[command(flatten)]
    pub stage: crate::train_cmd::StageArgs,
    /// Use this tokenizer folder instead of training one on the captions (with --init-from,
    /// the default is the tokenizer of the model fine-tuned).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
}

#[derive(Args)]
pub struct TokenizerArgs {
    /// A text file with one caption per line, or a data set as training reads it (an image
    /// folder with .txt captions, a .tar shard, a folder or pattern of shards).
    #[arg(long)]
    pub captions: PathBuf,
    #[arg(long, default_value_t = 4096)]
    pub vocab_size: usize,
    #[arg(long, default_value_t = 77)]
    pub context_length: usize,
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct ConvertArgs {
    /// Source CLIP folder (any layout holding the towers you ask for), or a pipeline folder or
    /// built-in model's name (its text_encoder/ or image_encoder/, for --layout text or vision).
    #[arg(long, value_parser = crate::builtin_models::model_path)]
    pub model: PathBuf,
    /// full (CLIPModel), text (CLIPTextModelWithProjection) or vision (CLIPVisionModelWithProjection).
    #[arg(long, value_parser = ["full", "text", "vision"])]
    pub layout: String,
    #[arg(long)]
    pub out: PathBuf,
}
