//! An image folder with captions: every PNG, JPEG or WebP file below the root (recursively)
//! whose same-stem `.txt` file holds its caption.

use crate::error::{Error, Result};
use std::collections::HashSet;
use std::path::{Path, PathBuf};

pub const IMAGE_EXTENSIONS: [&str; 4] = ["png", "jpg", "jpeg", "webp"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptionedImage {
    pub image: PathBuf,
    pub caption: String,
}

#[derive(Debug, Clone)]
pub struct ImageFolder {
    pub root: PathBuf,
    pub items: Vec<CaptionedImage>,
    /// Images found without a caption file (or with an empty one).
    pub uncaptioned: usize,
}

fn is_image(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Lists the images under `dir`. Linked folders are followed, each real folder once: a link
/// back up the tree (`sub/loop -> ..`) would otherwise list the data set again at every level
/// until the path grows too long.
fn walk(dir: &Path, out: &mut Vec<PathBuf>, seen: &mut HashSet<PathBuf>) -> Result<()> {
    let real = dir.canonicalize().map_err(|e| Error::io(dir, e))?;
    if !seen.insert(real) {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out, seen)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

impl ImageFolder {
    /// Lists the captioned images under `root`, in a stable (sorted) order.
    pub fn scan(root: &Path) -> Result<Self> {
        if !root.is_dir() {
            return Err(Error::Data(format!(
                "{} is not a directory",
                root.display()
            )));
        }
        let mut images = Vec::new();
        walk(root, &mut images, &mut HashSet::new())?;
        let mut items = Vec::new();
        let mut uncaptioned = 0;
        for image in images {
            let caption_path = image.with_extension("txt");
            let caption = std::fs::read_to_string(&caption_path)
                .ok()
                .map(|c| c.trim().to_string());
            match caption {
                Some(caption) if !caption.is_empty() => {
                    items.push(CaptionedImage { image, caption })
                }
                _ => uncaptioned += 1,
            }
        }
        if items.is_empty() {
            return Err(Error::Data(format!(
                "{} holds no usable pairs: {} image files (png, jpg, jpeg, webp) were found, {uncaptioned} of them \
                 without a non-empty same-named .txt caption",
                root.display(),
                uncaptioned
            )));
        }
        Ok(Self {
            root: root.to_path_buf(),
            items,
            uncaptioned,
        })
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}
