//! Image operations the reference implementations perform with PIL, reproduced exactly.

mod resample;

pub use resample::{resize_rgb8, Filter};
