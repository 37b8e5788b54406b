//! Writing shapes-world image folders that `data::ImageFolder` reads: for item `i`,
//! `SHARD/NNNNNN.png` with its caption in `NNNNNN.txt` and its scene graph in `NNNNNN.json`,
//! where `SHARD` is `i / 1000` in three digits (`000/000000.png`, ..., `001/001000.png`).
//!
//! Item `i` draws everything (its prompt, in dataset mode, and its scene) from its own ChaCha
//! stream, `ChaCha8Rng::seed_from_u64(seed)` on stream `i`, so the bytes written depend only on
//! the seed and the index, not on the number of threads. Each file is written atomically and
//! the PNG last, so an interrupted run never leaves an image without its caption.

use super::grammar::{Form, Prompt};
use super::holdout::{all_prompts, Holdout};
use super::render::{encode_png, render};
use super::scene::Scene;
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// Items per shard folder.
pub const SHARD_SIZE: usize = 1000;
/// The file, at the dataset root, that records how the dataset was made.
pub const SUMMARY_FILE: &str = "shapes_dataset.json";

/// What a writer produced; also saved as [`SUMMARY_FILE`] in the output folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShapesSummary {
    pub out: PathBuf,
    pub seed: u64,
    pub images: usize,
    pub per_form: BTreeMap<Form, usize>,
}

/// The path without extension of item `index` under `out`.
pub fn item_stem(out: &Path, index: usize) -> PathBuf {
    out.join(format!("{:03}", index / SHARD_SIZE))
        .join(format!("{index:06}"))
}

/// The RNG of item `index`: independent of every other item's.
pub fn item_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64);
    rng
}

/// Writes `n` images whose prompts are drawn with their form uniform over `forms`.
pub fn write_shapes_dataset(
    out: &Path,
    n: usize,
    seed: u64,
    forms: &[Form],
) -> Result<ShapesSummary> {
    write_shapes_dataset_excluding(out, n, seed, forms, &Holdout::NONE)
}

/// [`write_shapes_dataset`] with no prompt that `holdout` holds out: a held-out prompt drawn
/// is drawn again from the same item stream, so the bytes still depend only on the seed, the
/// index and the holdout.
pub fn write_shapes_dataset_excluding(
    out: &Path,
    n: usize,
    seed: u64,
    forms: &[Form],
    holdout: &Holdout,
) -> Result<ShapesSummary> {
    if forms.is_empty() {
        return Err(Error::InvalidInput(
            "no prompt forms given: name at least one of single, counting, pair, relation"
                .to_string(),
        ));
    }
    // Without a trainable prompt of some form, drawing again would never end.
    let all = all_prompts();
    if let Some(form) = forms
        .iter()
        .find(|&&f| all.iter().all(|p| p.form() != f || holdout.holds_out(p)))
    {
        return Err(Error::InvalidInput(format!(
            "holdout fraction {} holds out every {form} prompt: lower it",
            holdout.fraction()
        )));
    }
    write_items(out, n, seed, |_, rng| loop {
        let prompt = Prompt::sample(rng, forms)?;
        if !holdout.holds_out(&prompt) {
            return Ok(prompt);
        }
    })
}

/// Writes `per_prompt` images of each prompt, in order: items `j * per_prompt ..
/// (j + 1) * per_prompt` show `prompts[j]`. This is how evaluation prompt sets are rendered.
pub fn write_prompt_renders(
    out: &Path,
    prompts: &[Prompt],
    per_prompt: usize,
    seed: u64,
) -> Result<ShapesSummary> {
    if prompts.is_empty() {
        return Err(Error::InvalidInput("no prompts to render".to_string()));
    }
    let n = prompts.len().checked_mul(per_prompt).ok_or_else(|| {
        Error::InvalidInput(format!(
            "{} prompts x {per_prompt} images each is too many",
            prompts.len()
        ))
    })?;
    write_items(out, n, seed, |i, _| Ok(prompts[i / per_prompt]))
}

/// Reads a prompt file: one prompt per line; blank lines and lines starting with `#` are
/// skipped. A line outside the grammar is an error naming the file and line.
pub fn read_prompt_file(path: &Path) -> Result<Vec<Prompt>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut prompts = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let prompt = Prompt::parse(line)
            .map_err(|e| Error::InvalidInput(format!("{}:{}: {e}", path.display(), number + 1)))?;
        prompts.push(prompt);
    }
    if prompts.is_empty() {
        return Err(Error::InvalidInput(format!(
            "{} holds no prompts",
            path.display()
        )));
    }
    Ok(prompts)
}

/// Writes items `0..n` into the new or empty folder `out`, item `i` showing
/// `prompt_of(i, rng)`, on all available cores.
fn write_items<F>(out: &Path, n: usize, seed: u64, prompt_of: F) -> Result<ShapesSummary>
where
    F: Fn(usize, &mut ChaCha8Rng) -> Result<Prompt> + Sync,
{
    if n == 0 {
        return Err(Error::InvalidInput(
            "asked for 0 images: write at least one".to_string(),
        ));
    }
    prepare_empty_dir(out)?;
    let threads = std::thread::available_parallelism()
        .map_or(1, |t| t.get())
        .min(n)
        .max(1);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<BTreeMap<Form, usize>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (prompt_of, failed) = (&prompt_of, &failed);
                scope.spawn(move || {
                    let mut per_form = BTreeMap::new();
                    for i in (t..n).step_by(threads) {
                        if failed.load(Ordering::Relaxed) {
                            break;
                        }
                        let mut rng = item_rng(seed, i);
                        let written = prompt_of(i, &mut rng)
                            .and_then(|prompt| write_item(out, i, &prompt, &mut rng));
                        match written {
                            Ok(form) => *per_form.entry(form).or_insert(0) += 1,
                            Err(err) => {
                                failed.store(true, Ordering::Relaxed);
                                return Err(err);
                            }
                        }
                    }
                    Ok(per_form)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join().unwrap_or_else(|_| {
                    Err(Error::Data("a shapes writer thread panicked".to_string()))
                })
            })
            .collect()
    });
    let mut per_form = BTreeMap::new();
    for result in results {
        for (form, count) in result? {
            *per_form.entry(form).or_insert(0) += count;
        }
    }
    let summary = ShapesSummary {
        out: out.to_path_buf(),
        seed,
        images: n,
        per_form,
    };
    let json = serde_json::to_vec_pretty(&summary).map_err(|e| Error::Json {
        path: out.join(SUMMARY_FILE),
        what: "the shapes dataset summary",
        cause: e,
    })?;
    write_atomic(&out.join(SUMMARY_FILE), &json)?;
    tracing::info!(images = n, out = %out.display(), "wrote shapes dataset");
    Ok(summary)
}

/// Creates `out`, or accepts it if it exists and is empty: items of an earlier run left beside
/// new ones would silently mix two datasets.
fn prepare_empty_dir(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut entries = std::fs::read_dir(out).map_err(|e| Error::io(out, e))?;
    if entries.next().is_some() {
        return Err(Error::InvalidInput(format!(
            "{} is not empty: write a shapes dataset to a new or empty folder",
            out.display()
        )));
    }
    Ok(())
}

/// Draws, renders and writes item `index`: scene graph, caption, then image.
fn write_item(out: &Path, index: usize, prompt: &Prompt, rng: &mut ChaCha8Rng) -> Result<Form> {
    let scene =
        Scene::sample(prompt, rng).map_err(|e| Error::Data(format!("item {index}: {e}")))?;
    let png = encode_png(&render(&scene))?;
    let stem = item_stem(out, index);
    write_atomic(&stem.with_extension("json"), scene.to_json().as_bytes())?;
    write_atomic(&stem.with_extension("txt"), prompt.to_string().as_bytes())?;
    write_atomic(&stem.with_extension("png"), &png)?;
    Ok(scene.form)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_paths_are_sharded_by_thousands() {
        let out = Path::new("d");
        assert_eq!(item_stem(out, 0), Path::new("d/000/000000"));
        assert_eq!(item_stem(out, 1234), Path::new("d/001/001234"));
    }

    #[test]
    fn item_streams_differ() {
        use rand::Rng;
        let a: u64 = item_rng(1, 0).random();
        let b: u64 = item_rng(1, 1).random();
        let c: u64 = item_rng(1, 0).random();
        assert_ne!(a, b);
        assert_eq!(a, c);
    }
}
