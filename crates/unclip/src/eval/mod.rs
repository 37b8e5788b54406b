//! Evaluation: how well a model follows its prompts.
//!
//! Exact compositional scores on the shapes world (docs/shapes-world.md): [`segment`] finds
//! colored blobs, [`recognize`] names their shapes and sizes, [`checker`] judges an image
//! against a prompt, [`score`] aggregates verdicts, [`verdict_folder`] keeps judged images. For captioned data of any kind, CLIP-based
//! scores: [`clip_metrics`] (CLIP score, R-precision) and [`frechet`] (Fréchet distance between
//! CLIP image features). [`shapes_eval`] and [`captions_eval`] run a pipeline and score it;
//! [`clip_shapes`] asks whether a CLIP tells shapes prompts from their hard negatives.

pub mod captions_eval;
pub mod checker;
pub mod clip_metrics;
pub mod clip_shapes;
pub mod frechet;
pub mod recognize;
pub mod score;
pub mod segment;
pub mod shapes_eval;
pub mod verdict_folder;

pub use captions_eval::{evaluate_captions, CaptionScores, CaptionsEvalOptions, CaptionsReport};
pub use checker::{
    check, check_text, detect, failure_kind, placement, FailureKind, Placement, Verdict,
};
pub use clip_metrics::{clip_score, r_precision, RPrecision};
pub use clip_shapes::{
    evaluate_clip_shapes, ClipFormScore, ClipShapesOptions, ClipShapesScore, WordSimilarity,
};
pub use frechet::{frechet_distance, frechet_distance_of, Gaussian};
pub use recognize::DetectedObject;
pub use score::{FormScore, PlacementScore, ShapesScore};
pub use shapes_eval::{evaluate_shapes, EvalStart, JudgedImage, ShapesEvalOptions};
pub use verdict_folder::{VerdictFolder, SHEET_FILE, VERDICTS_FILE};
