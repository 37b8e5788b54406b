//! Image operations the reference implementations perform with PIL or torch, reproduced exactly.

mod bicubic;
mod input;
mod output;
mod resample;

pub use bicubic::resize_bicubic_antialias;
pub use input::rgb_tensor;
pub use output::{contact_sheet, output_format, save_gif, save_image_tensor, save_png, to_rgb8};
pub use resample::{resize_rgb8, Filter};
