//! Keeping judged images: `DIR/PPPP-K-pass.png` (or `-fail.png`) for image K of prompt P, and
//! at the end `DIR/verdicts.json` with the score and every image's file name and verdict, so
//! a folder can be browsed by outcome and read back by tools.

use super::checker::Verdict;
use super::score::ShapesScore;
use super::shapes_eval::JudgedImage;
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::imageops::save_png;
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The file, in the folder, that lists the verdicts.
pub const VERDICTS_FILE: &str = "verdicts.json";

#[derive(Serialize)]
struct SavedVerdict<'a> {
    file: String,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

#[derive(Serialize)]
struct VerdictsJson<'a> {
    score: &'a ShapesScore,
    images: Vec<SavedVerdict<'a>>,
}

pub struct VerdictFolder {
    dir: PathBuf,
    files: Vec<String>,
}

impl VerdictFolder {
    /// Creates `dir`, or accepts it if it exists and is empty (images of an earlier run beside
    /// new ones would mix two evaluations).
    pub fn create(dir: &Path) -> Result<VerdictFolder> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
        if entries.next().is_some() {
            return Err(Error::InvalidInput(format!(
                "{} is not empty: save evaluated images to a new or empty folder",
                dir.display()
            )));
        }
        Ok(VerdictFolder {
            dir: dir.to_path_buf(),
            files: Vec::new(),
        })
    }

    /// Writes one judged image.
    pub fn save(&mut self, judged: &JudgedImage) -> Result<()> {
        let outcome = if judged.verdict.pass { "pass" } else { "fail" };
        let file = format!(
            "{:04}-{}-{outcome}.png",
            judged.prompt_index, judged.image_index
        );
        save_png(&judged.image, &self.dir.join(&file))?;
        self.files.push(file);
        Ok(())
    }

    /// Writes `verdicts.json`; `verdicts` are those of the saved images, in the same order.
    pub fn finish(&self, score: &ShapesScore, verdicts: &[Verdict]) -> Result<PathBuf> {
        if verdicts.len() != self.files.len() {
            return Err(Error::InvalidInput(format!(
                "{} verdicts for {} saved images",
                verdicts.len(),
                self.files.len()
            )));
        }
        let json = VerdictsJson {
            score,
            images: self
                .files
                .iter()
                .zip(verdicts)
                .map(|(file, verdict)| SavedVerdict {
                    file: file.clone(),
                    verdict,
                })
                .collect(),
        };
        let path = self.dir.join(VERDICTS_FILE);
        let bytes = serde_json::to_vec_pretty(&json).map_err(|e| Error::Json {
            path: path.clone(),
            what: "the verdicts",
            source: e,
        })?;
        write_atomic(&path, &bytes)?;
        Ok(path)
    }
}
