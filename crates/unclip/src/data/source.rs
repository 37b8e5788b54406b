//! Where training pairs come from, named by one string on the command line: an image folder
//! with `.txt` captions, or WebDataset shards (one `.tar`, a brace pattern such as
//! `data/train-{000..009}.tar`, or a directory of `.tar` files). Trainers take a `DataSource`
//! and never care which it is.

use super::folder::ImageFolder;
use super::webdataset::read_shard;
use crate::error::{Error, Result};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// What `--data` accepts, for error messages.
const EXPECTED: &str = "expected a directory of images (png, jpg, jpeg, webp) with same-stem .txt \
                        captions, a WebDataset .tar shard, a directory of .tar shards, or a \
                        pattern such as data/train-{000..009}.tar";

/// Where (image, caption) pairs come from.
#[derive(Debug, Clone)]
pub enum DataSource {
    Folder(ImageFolder),
    Shards(Vec<PathBuf>),
}

impl DataSource {
    /// A directory of images with .txt captions -> Folder; a .tar file, a brace pattern like
    /// `data/train-{000..009}.tar`, or a directory containing *.tar files -> Shards.
    pub fn open(spec: &str) -> Result<Self> {
        if spec.contains('{') {
            let paths: Vec<PathBuf> = expand_braces(spec)?
                .into_iter()
                .map(PathBuf::from)
                .collect();
            let missing: Vec<&PathBuf> = paths.iter().filter(|p| !p.is_file()).collect();
            if let Some(first) = missing.first() {
                return Err(Error::Data(format!(
                    "{spec}: {} of the {} shards it names do not exist, the first is {}",
                    missing.len(),
                    paths.len(),
                    first.display()
                )));
            }
            return Ok(Self::Shards(paths));
        }
        let path = Path::new(spec);
        if path.is_file() {
            if is_tar(path) {
                return Ok(Self::Shards(vec![path.to_path_buf()]));
            }
            return Err(Error::Data(format!(
                "{spec} is a file but not a .tar shard ({EXPECTED})"
            )));
        }
        if !path.is_dir() {
            return Err(Error::Data(format!("{spec} does not exist ({EXPECTED})")));
        }
        let shards = tar_files_in(path)?;
        if !shards.is_empty() {
            return Ok(Self::Shards(shards));
        }
        match ImageFolder::scan(path) {
            Ok(folder) => Ok(Self::Folder(folder)),
            Err(Error::Data(message)) => Err(Error::Data(format!(
                "{message}, and no .tar shards ({EXPECTED})"
            ))),
            Err(other) => Err(other),
        }
    }

    /// One line for logs: "image folder /x (1200 pairs)" or "3 WebDataset shards (/d/a.tar ...)".
    pub fn describe(&self) -> String {
        match self {
            Self::Folder(folder) => {
                let mut s = format!(
                    "image folder {} ({} pairs",
                    folder.root.display(),
                    folder.len()
                );
                if folder.uncaptioned > 0 {
                    s.push_str(&format!(
                        "; {} images without a caption ignored",
                        folder.uncaptioned
                    ));
                }
                s + ")"
            }
            Self::Shards(paths) => match paths.as_slice() {
                [one] => format!("1 WebDataset shard ({})", one.display()),
                [first, .., last] => format!(
                    "{} WebDataset shards ({} ... {})",
                    paths.len(),
                    first.display(),
                    last.display()
                ),
                [] => "no WebDataset shards".to_string(),
            },
        }
    }
}

fn is_tar(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("tar"))
}

/// The `.tar` files directly inside `dir`, sorted by name.
fn tar_files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut shards: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && is_tar(p))
        .collect();
    shards.sort();
    Ok(shards)
}

/// Expands shell-style braces: `{000..009}` (zero padding kept: the width of the wider end
/// when either starts with 0), `{3..12}`, and lists `{train,val}`; several groups multiply.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>> {
    let bad = |why: &str| Error::Data(format!("cannot expand the pattern {pattern}: {why}"));
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(bad("a `}` without its `{`"));
        }
        return Ok(vec![pattern.to_string()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|i| open + i)
        .ok_or_else(|| bad("a `{` without its `}`"))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    if body.contains('{') {
        return Err(bad("nested braces are not supported"));
    }
    let choices: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let parse = |s: &str| {
            s.parse::<u64>()
                .map_err(|_| bad(&format!("`{s}` is not a non-negative integer")))
        };
        let (lo, hi) = (parse(a)?, parse(b)?);
        if lo > hi {
            return Err(bad(&format!("the range {{{body}}} runs backwards")));
        }
        if hi - lo >= 1_000_000 {
            return Err(bad(&format!("the range {{{body}}} is too long")));
        }
        let padded = (a.len() > 1 && a.starts_with('0')) || (b.len() > 1 && b.starts_with('0'));
        let width = if padded { a.len().max(b.len()) } else { 0 };
        (lo..=hi).map(|n| format!("{n:0width$}")).collect()
    } else if body.contains(',') {
        body.split(',').map(str::to_string).collect()
    } else {
        return Err(bad(&format!(
            "{{{body}}} is neither a range like {{000..009}} nor a list like {{a,b}}"
        )));
    };
    let rests = expand_braces(tail)?;
    let mut out = Vec::with_capacity(choices.len() * rests.len());
    for choice in &choices {
        for rest in &rests {
            out.push(format!("{head}{choice}{rest}"));
        }
    }
    Ok(out)
}

/// Reads every caption (for training a tokenizer) without decoding images. Shard records
/// without an image or a caption are left out, as the stream leaves them out; a record whose
/// image turns out to be undecodable still counts here.
pub fn captions(source: &DataSource) -> Result<Vec<String>> {
    match source {
        DataSource::Folder(folder) => Ok(folder.items.iter().map(|i| i.caption.clone()).collect()),
        DataSource::Shards(paths) => {
            let mut out = Vec::new();
            let mut skipped = 0usize;
            for path in paths {
                let _ = read_shard(
                    path,
                    false,
                    &mut |record| {
                        out.push(record.caption);
                        ControlFlow::Continue(())
                    },
                    &mut |skip| {
                        skipped += 1;
                        tracing::warn!(shard = %path.display(), key = %skip.key, reason = %skip.reason, "skipping record");
                    },
                );
            }
            if skipped > 0 {
                tracing::warn!(
                    skipped,
                    "records without a usable caption or image were skipped"
                );
            }
            if out.is_empty() {
                return Err(Error::Data(format!(
                    "{} hold no captioned records ({skipped} skipped)",
                    source.describe()
                )));
            }
            Ok(out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brace_ranges_keep_zero_padding() {
        assert_eq!(
            expand_braces("d/train-{000..002}.tar").unwrap(),
            ["d/train-000.tar", "d/train-001.tar", "d/train-002.tar"]
        );
        assert_eq!(expand_braces("{8..10}").unwrap(), ["8", "9", "10"]);
        assert_eq!(expand_braces("{08..10}").unwrap(), ["08", "09", "10"]);
        assert_eq!(
            expand_braces("{train,val}-{0..1}.tar").unwrap(),
            ["train-0.tar", "train-1.tar", "val-0.tar", "val-1.tar"]
        );
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        for bad in ["{3..1}", "{a..b}", "{1..2", "x}", "{one}", "{{1..2}}"] {
            assert!(expand_braces(bad).is_err(), "{bad}");
        }
    }
}
