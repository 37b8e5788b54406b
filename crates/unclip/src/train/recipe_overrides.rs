//! `--set FIELD=VALUE` on a training recipe: one field changed by its dotted path
//! (`min_snr_gamma=5`, `unet.sample_size=64`, `train.ema_decay=0.9995`), so that a variant of a
//! recipe needs no near-copy of its whole JSON file. The value is read as JSON (numbers, `true`,
//! `null`, `[32,64]`, `"text"`); anything that is not JSON is taken as a string.

use crate::error::{Error, Result};
use serde_json::Value;

/// One parsed `FIELD=VALUE`.
#[derive(Debug, Clone, PartialEq)]
pub struct RecipeOverride {
    pub path: Vec<String>,
    pub value: Value,
}

impl RecipeOverride {
    pub fn parse(text: &str) -> Result<Self> {
        let Some((field, value)) = text.split_once('=') else {
            return Err(Error::InvalidInput(format!(
                "--set `{text}`: expected FIELD=VALUE, e.g. min_snr_gamma=5 or unet.sample_size=64"
            )));
        };
        let path: Vec<String> = field.trim().split('.').map(str::to_string).collect();
        if path.iter().any(|p| p.is_empty()) {
            return Err(Error::InvalidInput(format!(
                "--set `{text}`: the field `{}` has an empty part; write it as dotted names, \
                 e.g. unet.sample_size",
                field.trim()
            )));
        }
        let value = value.trim();
        let value =
            serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_string()));
        Ok(Self { path, value })
    }

    pub fn field(&self) -> String {
        self.path.join(".")
    }
}

/// Sets each override in `recipe` (the recipe's JSON). The objects on the way must exist; the
/// last name may be new, since optional fields are often absent from a recipe file; whether it
/// is a real field is checked by [`check_applied`] once the recipe is parsed.
pub fn apply_overrides(
    recipe: &mut Value,
    overrides: &[RecipeOverride],
    stage: &str,
) -> Result<()> {
    for o in overrides {
        let (last, parents) = o
            .path
            .split_last()
            .ok_or_else(|| Error::InvalidInput("--set with no field".into()))?;
        let mut node = &mut *recipe;
        for (depth, name) in parents.iter().enumerate() {
            let here = o.path[..depth].join(".");
            let object = node
                .as_object_mut()
                .ok_or_else(|| not_object(stage, &here))?;
            if !object.contains_key(name) {
                return Err(Error::InvalidInput(format!(
                    "--set {}: the {stage} recipe has no `{}`; {} holds: {}",
                    o.field(),
                    o.path[..=depth].join("."),
                    if here.is_empty() { "it" } else { &here },
                    field_list(object)
                )));
            }
            node = &mut object[name.as_str()];
        }
        let parent = o.path[..o.path.len() - 1].join(".");
        node.as_object_mut()
            .ok_or_else(|| not_object(stage, &parent))?
            .insert(last.clone(), o.value.clone());
    }
    Ok(())
}

/// Fails on an override the parsed recipe did not keep: a misspelt field inside a section that
/// tolerates unknown fields (the U-Net config takes diffusers' config.json as it is) would
/// otherwise be dropped without a word.
pub fn check_applied(parsed: &Value, overrides: &[RecipeOverride], stage: &str) -> Result<()> {
    for o in overrides.iter().filter(|o| !o.value.is_null()) {
        let mut node = parsed;
        for name in &o.path {
            match node.get(name) {
                Some(next) => node = next,
                None => {
                    return Err(Error::InvalidInput(format!(
                        "--set {}: the {stage} recipe has no field `{}`",
                        o.field(),
                        o.field()
                    )))
                }
            }
        }
    }
    Ok(())
}

fn not_object(stage: &str, path: &str) -> Error {
    Error::InvalidInput(format!(
        "--set: `{path}` in the {stage} recipe is a value, not a section with fields"
    ))
}

fn field_list(object: &serde_json::Map<String, Value>) -> String {
    object.keys().cloned().collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set(recipe: &mut Value, text: &str) -> Result<()> {
        apply_overrides(recipe, &[RecipeOverride::parse(text)?], "decoder")
    }

    #[test]
    fn values_are_read_as_json_else_as_text() {
        let o = RecipeOverride::parse("unet.block_out_channels=[32, 64]").unwrap();
        assert_eq!(o.path, ["unet", "block_out_channels"]);
        assert_eq!(o.value, json!([32, 64]));
        assert_eq!(RecipeOverride::parse("a=5").unwrap().value, json!(5));
        assert_eq!(
            RecipeOverride::parse("scheduler.beta_schedule=linear")
                .unwrap()
                .value,
            json!("linear")
        );
        assert_eq!(RecipeOverride::parse("a=null").unwrap().value, Value::Null);
    }

    #[test]
    fn malformed_overrides_are_refused() {
        assert!(RecipeOverride::parse("min_snr_gamma").is_err());
        assert!(RecipeOverride::parse("unet..x=1").is_err());
        assert!(RecipeOverride::parse("=1").is_err());
    }

    #[test]
    fn nested_fields_are_set_and_absent_leaves_added() {
        let mut r = json!({"train": {"learning_rate": 0.1}, "unet": {"sample_size": 32}});
        set(&mut r, "unet.sample_size=64").unwrap();
        set(&mut r, "min_snr_gamma=5").unwrap();
        assert_eq!(r["unet"]["sample_size"], json!(64));
        assert_eq!(r["min_snr_gamma"], json!(5));
    }

    #[test]
    fn a_missing_section_is_named_with_what_exists() {
        let mut r = json!({"train": {"learning_rate": 0.1}, "unet": {"sample_size": 32}});
        let e = set(&mut r, "unett.sample_size=64").unwrap_err().to_string();
        assert!(e.contains("unett") && e.contains("train, unet"), "{e}");
        let e = set(&mut r, "unet.sample_size.x=1").unwrap_err().to_string();
        assert!(
            e.contains("unet.sample_size") && e.contains("not a section"),
            "{e}"
        );
    }

    #[test]
    fn an_override_the_parsed_recipe_dropped_is_an_error() {
        let overrides = [RecipeOverride::parse("unet.sampel_size=64").unwrap()];
        let parsed = json!({"unet": {"sample_size": 32}});
        let e = check_applied(&parsed, &overrides, "decoder")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unet.sampel_size"), "{e}");
        let kept = [RecipeOverride::parse("unet.sample_size=64").unwrap()];
        check_applied(&parsed, &kept, "decoder").unwrap();
    }
}
