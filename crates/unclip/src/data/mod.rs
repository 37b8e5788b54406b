//! Training data: (image, caption) pairs.

pub mod emoji;
mod folder;
pub mod shapes;
mod source;
mod stream;
mod webdataset;

pub use folder::{CaptionedImage, ImageFolder, IMAGE_EXTENSIONS};
pub use source::{captions, expand_braces, DataSource};
pub use stream::{stream, PairStream, Sample, StreamOptions};
pub use webdataset::{
    read_shard, write_shards, ShardRecord, SkippedRecord, SHARD_IMAGE_EXTENSIONS,
};
