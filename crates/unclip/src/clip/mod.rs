//! CLIP (Radford et al. 2021): a text tower and an image tower trained so that matching captions
//! and images get close embeddings. unCLIP reads prompts with the text tower and embeds images
//! for variations with the image tower.

mod config;
mod encoder;
mod loss;
mod model;
mod processor;
mod text;
mod vision;

pub use config::{ClipConfig, ClipTextConfig, ClipVisionConfig, Pooling};
pub use loss::{contrastive_loss, contrastive_loss_with_negatives};
pub use model::{l2_normalize, load_clip_tensors, save_clip, ClipLayout, ClipModel, WEIGHTS_FILE};
pub(crate) use processor::decode_image;
pub use processor::{decode_rgb8, ClipImageProcessor, PROCESSOR_FILE};
pub use text::{ClipTextTransformer, TextOutput};
pub use vision::{ClipVisionTransformer, VisionOutput};
