//! Built-in training recipes (`models/presets/<stage>-<size>.json`) and recipe files: the same
//! JSON either way, with unknown fields refused by name.

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use std::path::Path;

pub const PRESETS: [&str; 3] = ["tiny", "small", "medium"];

fn builtin(stage: &str, preset: &str) -> Option<&'static str> {
    Some(match (stage, preset) {
        ("clip", "tiny") => include_str!("../../../../models/presets/clip-tiny.json"),
        ("clip", "small") => include_str!("../../../../models/presets/clip-small.json"),
        ("clip", "medium") => include_str!("../../../../models/presets/clip-medium.json"),
        ("prior", "tiny") => include_str!("../../../../models/presets/prior-tiny.json"),
        ("prior", "small") => include_str!("../../../../models/presets/prior-small.json"),
        ("prior", "medium") => include_str!("../../../../models/presets/prior-medium.json"),
        ("decoder", "tiny") => include_str!("../../../../models/presets/decoder-tiny.json"),
        ("decoder", "small") => include_str!("../../../../models/presets/decoder-small.json"),
        ("decoder", "medium") => include_str!("../../../../models/presets/decoder-medium.json"),
        ("upsampler", "tiny") => include_str!("../../../../models/presets/upsampler-tiny.json"),
        ("upsampler", "small") => include_str!("../../../../models/presets/upsampler-small.json"),
        ("upsampler", "medium") => include_str!("../../../../models/presets/upsampler-medium.json"),
        _ => return None,
    })
}

/// The recipe of `stage` from `--config FILE`, else from `--preset NAME`.
pub fn load_recipe<T: DeserializeOwned>(
    stage: &str,
    preset: &str,
    config: Option<&Path>,
) -> Result<T> {
    match config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            serde_json::from_str(&text).map_err(|source| Error::Json {
                path: path.to_path_buf(),
                what: "a training recipe",
                source,
            })
        }
        None => {
            let text = builtin(stage, preset).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown preset `{preset}`; allowed: {}",
                    PRESETS.join(", ")
                ))
            })?;
            serde_json::from_str(text)
                .map_err(|e| Error::config(format!("preset {stage}-{preset}"), e.to_string()))
        }
    }
}
