//! Built-in training recipes (`models/presets/<stage>-<size>.json`) and recipe files: the same
//! JSON either way, with unknown fields refused by name.

use super::recipe_overrides::{apply_overrides, check_applied, RecipeOverride};
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;
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
pub fn load_recipe<T: Serialize + DeserializeOwned>(
    stage: &str,
    preset: &str,
    config: Option<&Path>,
) -> Result<T> {
    load_recipe_with(stage, preset, config, &[])
}

/// [`load_recipe`] with `--set FIELD=VALUE` overrides applied before the recipe is parsed, so
/// an overridden value is checked like one written in the file.
pub fn load_recipe_with<T: Serialize + DeserializeOwned>(
    stage: &str,
    preset: &str,
    config: Option<&Path>,
    overrides: &[RecipeOverride],
) -> Result<T> {
    let (text, origin) = match config {
        Some(path) => (
            std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?,
            path.display().to_string(),
        ),
        None => {
            let text = builtin(stage, preset).ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown preset `{preset}`; allowed: {}",
                    PRESETS.join(", ")
                ))
            })?;
            (text.to_string(), format!("preset {stage}-{preset}"))
        }
    };
    let json_error = |source: serde_json::Error| match config {
        Some(path) => Error::Json {
            path: path.to_path_buf(),
            what: "a training recipe",
            cause: source,
        },
        None => Error::config(origin.clone(), source.to_string()),
    };
    let mut value: serde_json::Value = serde_json::from_str(&text).map_err(json_error)?;
    apply_overrides(&mut value, overrides, stage)?;
    let recipe: T = serde_json::from_value(value.clone()).map_err(|e| {
        if overrides.is_empty() {
            json_error(e)
        } else {
            let set: Vec<String> = overrides.iter().map(RecipeOverride::field).collect();
            Error::config(
                format!("{origin} with --set {}", set.join(", ")),
                e.to_string(),
            )
        }
    })?;
    let parsed =
        serde_json::to_value(&recipe).map_err(|e| Error::config(origin.clone(), e.to_string()))?;
    check_applied(&parsed, overrides, stage)?;
    if let Some(field) = unread_field(&value, &parsed, "") {
        return Err(Error::config(
            origin,
            format!("the {stage} recipe has no field `{field}` (a misspelling?)"),
        ));
    }
    Ok(recipe)
}

fn is_empty_default(value: &Value) -> bool {
    match value {
        Value::Bool(b) => !b,
        Value::Array(items) => items.is_empty(),
        Value::Object(fields) => fields.is_empty(),
        _ => false,
    }
}

/// The first field of `given` (dotted path) that the parsed recipe does not hold: the sections
/// mirror diffusers/transformers configs, which read unknown keys without a word, so a
/// misspelt `num_layer` would otherwise train the default silently. Null values are skipped
/// (an unset optional field serialises as absent), as are false and empty ones (fields written
/// only when set) and diffusers' bookkeeping keys.
fn unread_field(given: &Value, parsed: &Value, prefix: &str) -> Option<String> {
    let (Value::Object(given), Value::Object(parsed)) = (given, parsed) else {
        return None;
    };
    for (name, value) in given {
        if value.is_null() || name.starts_with('_') {
            continue;
        }
        let path = format!("{prefix}{name}");
        match parsed.get(name) {
            // A field left out of the output when it holds its default (false, empty).
            None if is_empty_default(value) => {}
            None => return Some(path),
            Some(inner) => {
                if let Some(found) = unread_field(value, inner, &format!("{path}.")) {
                    return Some(found);
                }
            }
        }
    }
    None
}

/// Writes the recipe a run actually used (after --set, --lr, --batch-size) as `dir/recipe.json`,
/// so that `--config dir/recipe.json` repeats it.
pub fn save_recipe<T: Serialize>(dir: &Path, recipe: &T) -> Result<()> {
    let path = dir.join("recipe.json");
    let mut text =
        serde_json::to_string_pretty(recipe).map_err(|e| Error::config("recipe", e.to_string()))?;
    text.push('\n');
    write_atomic(&path, text.as_bytes())
}

/// A stage recipe's `scheduler` section, checked as the pipeline checks it at load, so a run
/// cannot train for hours into a schedule no pipeline will sample from.
pub(crate) fn check_scheduler(scheduler: &crate::diffusion::SchedulerConfig) -> Result<()> {
    scheduler.validate().map_err(|e| match e {
        Error::Config { field, message } => Error::Config {
            field: format!("scheduler.{field}"),
            message,
        },
        other => other,
    })
}

/// A probability field of a recipe (a dropout rate), in 0..=1.
pub(crate) fn check_probability(field: &str, value: f64) -> Result<()> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::config(field, format!("{value}; allowed: 0..=1")))
    }
}
