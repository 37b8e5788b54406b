//! The shapes world (docs/shapes-world.md): a caption grammar whose every prompt the project can
//! render exactly, so compositional accuracy (counting, binding, relations) is measurable.
//!
//! [`palette`] holds the vocabulary and its constants, [`grammar`] the prompt forms,
//! [`geometry`] the pixels a shape covers, [`scene`] random layouts and their scene graphs,
//! [`render`] the rasteriser, [`writer`] the image-folder datasets and [`holdout`] the prompts
//! training never shows. The checker that scores generated images is `crate::eval`.

pub mod geometry;
pub mod grammar;
pub mod holdout;
pub mod negatives;
pub mod palette;
pub mod render;
pub mod scene;
pub mod writer;

pub use grammar::{ColoredShape, Form, Prompt};
pub use holdout::Holdout;
pub use negatives::NegativeKind;
pub use palette::{Color, Count, Relation, RelationMargin, Shape, Size};
pub use render::{encode_png, render};
pub use scene::{Scene, SceneObject, CANVAS};
pub use writer::{
    read_prompt_file, write_prompt_renders, write_shapes_dataset, write_shapes_dataset_excluding,
    ShapesSummary,
};
