//! Image operations the reference implementations perform with PIL or torch, reproduced exactly.

mod bicubic;
mod resample;

pub use bicubic::resize_bicubic_antialias;
pub use resample::{resize_rgb8, Filter};
