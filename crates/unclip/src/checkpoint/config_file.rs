//! Reading and writing `config.json`-style files. Absent fields take the serde defaults (which
//! mirror the reference library's); fields this project does not know are ignored with a log line,
//! because real checkpoints carry many (`transformers_version`, `torch_dtype`, ...).

use crate::error::{Error, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;

pub fn read_config<T: DeserializeOwned + Serialize>(path: &Path, what: &'static str) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let raw: serde_json::Value = serde_json::from_str(&text).map_err(|cause| Error::Json {
        path: path.to_path_buf(),
        what,
        cause,
    })?;
    let parsed: T = serde_json::from_value(raw.clone()).map_err(|cause| Error::Json {
        path: path.to_path_buf(),
        what,
        cause,
    })?;
    log_unknown_fields(path, &raw, &parsed);
    Ok(parsed)
}

fn log_unknown_fields<T: Serialize>(path: &Path, raw: &serde_json::Value, parsed: &T) {
    let (Some(raw), Ok(serde_json::Value::Object(known))) =
        (raw.as_object(), serde_json::to_value(parsed))
    else {
        return;
    };
    let unknown: Vec<&str> = raw
        .keys()
        .filter(|k| !known.contains_key(*k))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        tracing::debug!(path = %path.display(), ?unknown, "ignoring config fields this project does not use");
    }
}

pub fn write_config<T: Serialize>(path: &Path, config: &T) -> Result<()> {
    let mut text = serde_json::to_string_pretty(config).map_err(|cause| Error::Json {
        path: path.to_path_buf(),
        what: "config",
        cause,
    })?;
    text.push('\n');
    super::write_atomic(path, text.as_bytes())
}
