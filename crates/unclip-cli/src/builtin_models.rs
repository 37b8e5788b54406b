//! The built-in models under the repository's `models/`: `--model` defaults to one of them, and
//! a bare name (`--model shapes`) picks one, unless a folder of that name exists where the
//! command runs (a path always wins). `UNCLIP_MODELS_DIR` points at another copy of `models/`.

use std::path::{Path, PathBuf};

/// The model `generate`, `vary` and `serve` use without `--model`.
pub const DEFAULT_MODEL: &str = "emoji";
/// Every built-in model's name.
pub const BUILTIN_MODELS: [&str; 2] = ["emoji", "shapes"];

fn models_dir() -> PathBuf {
    match std::env::var_os("UNCLIP_MODELS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models"),
    }
}

/// clap's parser for `--model`: a folder, or the name of a built-in model.
pub fn model_path(value: &str) -> Result<PathBuf, String> {
    let given = PathBuf::from(value);
    if given.exists() {
        return Ok(given);
    }
    if !BUILTIN_MODELS.contains(&value) {
        return Err(format!(
            "no such folder `{value}`; allowed: a model folder, or a built-in model: {}",
            BUILTIN_MODELS.join(", ")
        ));
    }
    let builtin = models_dir().join(value);
    if builtin.join("model_index.json").is_file() {
        Ok(builtin)
    } else {
        Err(format!(
            "the built-in model `{value}` is not at {} (this binary looks for the repository's \
             models/ folder; set UNCLIP_MODELS_DIR or pass a model folder)",
            builtin.display()
        ))
    }
}
