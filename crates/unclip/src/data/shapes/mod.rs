//! The shapes world (shared/SHAPES.md): a caption grammar whose every prompt the project can
//! render exactly, so compositional accuracy (counting, binding, relations) is measurable.
//!
//! [`palette`] holds the vocabulary and its constants, [`grammar`] the prompt forms,
//! [`geometry`] the pixels a shape covers, [`scene`] random layouts and their scene graphs,
//! [`render`] the rasteriser and [`writer`] the image-folder datasets. The checker that scores
//! generated images will sit beside them.

pub mod geometry;
pub mod grammar;
pub mod palette;
pub mod render;
pub mod scene;
pub mod writer;

pub use grammar::{ColoredShape, Form, Prompt};
pub use palette::{Color, Count, Relation, RelationMargin, Shape, Size};
pub use render::{encode_png, render};
pub use scene::{Scene, SceneObject, CANVAS};
pub use writer::{read_prompt_file, write_prompt_renders, write_shapes_dataset, ShapesSummary};
