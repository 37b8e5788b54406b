//! The rule for commands that write a whole folder of their own (`convert`, `tokenizer`,
//! `data`): the folder is new or empty, so nothing the user keeps there is overwritten.

use anyhow::{bail, Result};
use std::path::Path;

/// Refuses `path` (given as `flag`) if it is a file or a folder with anything in it.
pub fn require_new_or_empty(flag: &str, path: &Path) -> Result<()> {
    if path.is_file() {
        bail!(
            "{flag} {} is a file; allowed: a new or empty folder",
            path.display()
        );
    }
    if let Ok(mut entries) = std::fs::read_dir(path) {
        if let Some(entry) = entries.next() {
            let name = entry.map(|e| e.file_name().to_string_lossy().into_owned());
            bail!(
                "{flag} {} is not empty (it has `{}`); allowed: a new or empty folder, so \
                 nothing there is overwritten",
                path.display(),
                name.unwrap_or_default()
            );
        }
    }
    Ok(())
}
