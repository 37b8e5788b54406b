//! Hugging Face checkpoint folders, both ways: safetensors weights with errors that name the
//! tensor, configs with Hugging Face's defaults, and writes that never leave a half-written file.

mod atomic;
mod config_file;
mod diffusers_folder;
mod precision;
mod weights;

pub use atomic::{replace_dir, write_atomic, write_atomic_with};
pub use config_file::{read_config, write_config};
pub use diffusers_folder::{read_folder, save_folder, DIFFUSERS_CONFIG, DIFFUSERS_WEIGHTS};
pub use precision::{cast_folder_weights, parse_storage_dtype, CastSummary};
pub use weights::{find_weights_file, save_safetensors, Weights};
