//! Keeping judged images: `DIR/PPPP-K-pass.png` (or `-fail.png`) for image K of prompt P, and
//! at the end `DIR/verdicts.json` with the score and every image's file name and verdict, so
//! a folder can be browsed by outcome and read back by tools, and `DIR/sheet.png`: every image
//! framed green (pass) or red (fail), one prompt's images side by side, two prompts per row.

use super::checker::Verdict;
use super::score::ShapesScore;
use super::shapes_eval::JudgedImage;
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use crate::imageops::{contact_sheet, save_png};
use image::{Rgb, RgbImage};
use serde::Serialize;
use std::path::{Path, PathBuf};

/// The file, in the folder, that lists the verdicts.
pub const VERDICTS_FILE: &str = "verdicts.json";
/// The contact sheet of the framed images.
pub const SHEET_FILE: &str = "sheet.png";
const FRAME: u32 = 2;
const PASS_COLOR: Rgb<u8> = Rgb([40, 170, 60]);
const FAIL_COLOR: Rgb<u8> = Rgb([220, 40, 40]);

/// `image` inside a `FRAME`-pixel border of `color`.
fn framed(image: &RgbImage, color: Rgb<u8>) -> RgbImage {
    let (w, h) = image.dimensions();
    let mut out = RgbImage::from_pixel(w + 2 * FRAME, h + 2 * FRAME, color);
    image::imageops::replace(&mut out, image, FRAME as i64, FRAME as i64);
    out
}

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
    framed: Vec<RgbImage>,
    images_per_prompt: usize,
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
            framed: Vec::new(),
            images_per_prompt: 1,
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
        let color = if judged.verdict.pass {
            PASS_COLOR
        } else {
            FAIL_COLOR
        };
        self.framed.push(framed(&judged.image, color));
        self.images_per_prompt = self.images_per_prompt.max(judged.image_index + 1);
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
            cause: e,
        })?;
        write_atomic(&path, &bytes)?;
        if let Some(sheet) = contact_sheet(&self.framed, 2 * self.images_per_prompt, 2) {
            save_png(&sheet, &self.dir.join(SHEET_FILE))?;
        }
        Ok(path)
    }
}
