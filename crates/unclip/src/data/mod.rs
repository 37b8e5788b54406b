//! Training data: (image, caption) pairs.

mod folder;
pub mod shapes;

pub use folder::{CaptionedImage, ImageFolder, IMAGE_EXTENSIONS};
