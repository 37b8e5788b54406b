//! `unclip data emoji`: a small, real, freely licensed captioned image set that anyone can
//! rebuild from the npm registry: every emoji of emoji-datasource 16.0 at 64 px in
//! the Twemoji and Noto art styles, captioned from emojibase's English label and tags, the
//! emoji category and the art style, written as WebDataset shards with a held-out split.
//!
//! Skin-tone variations are included, with the tone in the caption (emojibase labels them,
//! e.g. "waving hand: medium skin tone"). The validation split is chosen by a hash of the
//! base emoji's code point sequence, so an emoji, all its skin tones and both its art styles
//! land in the same split and the validation set really is unseen.

use super::webdataset::write_shards;
use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use flate2::read::GzDecoder;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

pub const EMOJIBASE_PACKAGE: &str = "emojibase-data@17.0.0";
/// Tags kept per caption (after dropping those the label already says), to stay well inside
/// CLIP's 77 tokens.
const MAX_TAGS: usize = 6;
/// Fixed, so that shards are byte-identical from run to run.
const SHARD_ORDER_SEED: u64 = 0x0065_6d6f_6a69;

/// An emoji art style and the package that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EmojiStyle {
    Twitter,
    Google,
}

impl EmojiStyle {
    pub fn name(self) -> &'static str {
        match self {
            Self::Twitter => "twitter",
            Self::Google => "google",
        }
    }

    pub fn package(self) -> &'static str {
        match self {
            Self::Twitter => "emoji-datasource-twitter@16.0.0",
            Self::Google => "emoji-datasource-google@16.0.0",
        }
    }

    fn licence(self) -> &'static str {
        match self {
            Self::Twitter => "CC-BY-4.0",
            Self::Google => "Apache-2.0",
        }
    }
}

#[derive(Debug, Clone)]
pub struct EmojiOptions {
    pub out: PathBuf,
    /// Share of emoji held out for validation, in [0, 1).
    pub val_fraction: f64,
    pub styles: Vec<EmojiStyle>,
    pub shard_size: usize,
    /// The npm program to run.
    pub npm: String,
}

impl EmojiOptions {
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            val_fraction: 0.05,
            styles: vec![EmojiStyle::Twitter, EmojiStyle::Google],
            shard_size: 1000,
            npm: "npm".into(),
        }
    }

    fn validate(&self) -> Result<()> {
        if !(0.0..1.0).contains(&self.val_fraction) {
            return Err(Error::InvalidInput(format!(
                "--val-fraction {} is outside [0, 1)",
                self.val_fraction
            )));
        }
        let mut styles = self.styles.clone();
        styles.sort();
        styles.dedup();
        if styles.len() != self.styles.len() {
            return Err(Error::InvalidInput("an emoji style is named twice".into()));
        }
        if self.styles.is_empty() {
            return Err(Error::InvalidInput("no emoji style chosen".into()));
        }
        if self.shard_size == 0 {
            return Err(Error::InvalidInput(
                "--shard-size must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct EmojiSummary {
    pub out: PathBuf,
    pub train: usize,
    pub val: usize,
    /// Records per style (train + val).
    pub per_style: Vec<(EmojiStyle, usize)>,
    /// Emoji listed without an image in their style's package (left out).
    pub missing_images: usize,
    pub train_shards: Vec<PathBuf>,
    pub val_shards: Vec<PathBuf>,
    /// Total size of the shards written.
    pub bytes: u64,
}

/// `npm --version`, or an error that says npm is needed and missing.
pub fn npm_version(npm: &str) -> Result<String> {
    let output = Command::new(npm).arg("--version").output().map_err(|e| {
        Error::Data(format!(
            "`{npm} --version` could not run ({e}): the emoji packages are fetched with \
             `npm pack`, so install Node.js and npm (for example `apt-get install npm`) and try again"
        ))
    })?;
    if !output.status.success() {
        return Err(Error::Data(format!(
            "`{npm} --version` failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// Runs `npm pack SPEC` in `dir` and returns the tarball it wrote.
fn npm_pack(npm: &str, spec: &str, dir: &Path) -> Result<PathBuf> {
    tracing::info!(package = spec, "npm pack");
    let output = Command::new(npm)
        .arg("pack")
        .arg(spec)
        .current_dir(dir)
        .output()
        .map_err(|e| Error::Data(format!("`{npm} pack {spec}` could not run: {e}")))?;
    let (name, version) = spec.rsplit_once('@').unwrap_or((spec, ""));
    let tgz = dir.join(format!("{name}-{version}.tgz"));
    if !output.status.success() || !tgz.is_file() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let said = npm_error_lines(&stderr);
        return Err(Error::Data(format!(
            "`{npm} pack {spec}` failed ({}); is the npm registry reachable (see `{npm} config \
             get registry`)? npm said:\n{}",
            output.status, said
        )));
    }
    Ok(tgz)
}

/// The gist of npm's complaint: its first few `npm error` lines without the stack trace, or
/// the last lines of its output when it wrote none.
fn npm_error_lines(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter_map(|l| {
            l.strip_prefix("npm error")
                .or_else(|| l.strip_prefix("npm ERR!"))
        })
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("at "))
        .take(4)
        .collect();
    if !errors.is_empty() {
        return errors.join("\n");
    }
    let lines: Vec<&str> = stderr.lines().collect();
    lines[lines.len().saturating_sub(6)..].join("\n")
}

/// The members of an npm tarball (paths without the leading `package/`) that `keep` selects.
fn read_package(tgz: &Path, keep: impl Fn(&str) -> bool) -> Result<HashMap<String, Vec<u8>>> {
    let bad = |e: std::io::Error| {
        Error::Data(format!(
            "{}: not a readable npm package: {e}",
            tgz.display()
        ))
    };
    let file = std::fs::File::open(tgz).map_err(|e| Error::io(tgz, e))?;
    let mut archive = tar::Archive::new(GzDecoder::new(std::io::BufReader::new(file)));
    let mut out = HashMap::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let path = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let Some(rel) = path.strip_prefix("package/") else {
            continue;
        };
        if keep(rel) {
            let mut bytes = Vec::with_capacity(entry.size().min(64 << 20) as usize);
            entry.read_to_end(&mut bytes).map_err(bad)?;
            out.insert(rel.to_string(), bytes);
        }
    }
    Ok(out)
}

fn parse_json<T: for<'de> Deserialize<'de>>(
    files: &HashMap<String, Vec<u8>>,
    name: &str,
    tgz: &Path,
) -> Result<T> {
    let bytes = files
        .get(name)
        .ok_or_else(|| Error::Data(format!("{}: has no {name}", tgz.display())))?;
    serde_json::from_slice(bytes).map_err(|cause| Error::Json {
        path: tgz.join(name),
        what: "an emoji package index",
        cause,
    })
}

/// One entry of emoji-datasource's `emoji.json`.
#[derive(Debug, Deserialize)]
struct DatasourceEmoji {
    name: Option<String>,
    unified: String,
    image: String,
    #[serde(default)]
    short_names: Vec<String>,
    category: String,
    subcategory: String,
    #[serde(default)]
    skin_variations: BTreeMap<String, SkinVariation>,
}

#[derive(Debug, Deserialize)]
struct SkinVariation {
    unified: String,
    image: String,
}

/// One entry of emojibase's `en/data.json`.
#[derive(Debug, Deserialize)]
struct EmojibaseEntry {
    label: String,
    hexcode: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    skins: Vec<EmojibaseEntry>,
}

/// Hexcodes as both packages can agree on them: upper case, without variation selector 16.
fn normalise_hexcode(code: &str) -> String {
    code.to_ascii_uppercase().replace("-FE0F", "")
}

/// label and tags by normalised hexcode; a skin tone inherits its base emoji's tags.
fn label_index(entries: Vec<EmojibaseEntry>) -> HashMap<String, (String, Vec<String>)> {
    let mut index = HashMap::new();
    for entry in entries {
        for skin in entry.skins {
            index.insert(
                normalise_hexcode(&skin.hexcode),
                (skin.label, entry.tags.clone()),
            );
        }
        index.insert(normalise_hexcode(&entry.hexcode), (entry.label, entry.tags));
    }
    index
}

/// "grinning face, a twitter-style emoji; cheerful, cheery, happy, laugh, nice, smile;
/// smileys & emotion, face smiling": label, art style, up to [`MAX_TAGS`] tags the label does
/// not already say, category and subcategory.
pub fn emoji_caption(
    label: &str,
    tags: &[String],
    category: &str,
    subcategory: &str,
    style: &str,
) -> String {
    let words = |text: &str| -> Vec<String> {
        text.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let label_words = words(label);
    // A tag is redundant when the label already has each of its words, or a longer form of
    // it ("grin" beside "grinning").
    let redundant = |tag: &str| {
        let tag_words = words(tag);
        !tag_words.is_empty()
            && tag_words.iter().all(|t| {
                label_words
                    .iter()
                    .any(|l| l == t || (t.len() >= 3 && l.starts_with(t.as_str())))
            })
    };
    let tags: Vec<&str> = tags
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty() && !redundant(t))
        .take(MAX_TAGS)
        .collect();
    let mut caption = format!("{label}, a {style}-style emoji");
    if !tags.is_empty() {
        caption.push_str("; ");
        caption.push_str(&tags.join(", "));
    }
    caption.push_str(&format!(
        "; {}, {}",
        category.to_lowercase(),
        subcategory.replace('-', " ")
    ));
    caption
}

/// Whether the emoji with this (base) code sequence is held out: a fixed hash, the same on
/// every machine and Rust version (FNV-1a, then a SplitMix64 finaliser).
pub fn is_validation(base_unified: &str, fraction: f64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in normalise_hexcode(base_unified).bytes() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    ((h >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

/// (key, png, caption, json) for the shard writer.
type Record = (String, Vec<u8>, String, Option<String>);

struct Collected {
    train: Vec<Record>,
    val: Vec<Record>,
    per_style: Vec<(EmojiStyle, usize)>,
    missing_images: usize,
}

fn collect_records(
    opts: &EmojiOptions,
    packages: &[(EmojiStyle, PathBuf)],
    labels: &HashMap<String, (String, Vec<String>)>,
) -> Result<Collected> {
    let mut out = Collected {
        train: Vec::new(),
        val: Vec::new(),
        per_style: Vec::new(),
        missing_images: 0,
    };
    for &(style, ref tgz) in packages {
        let image_dir = format!("img/{}/64/", style.name());
        let mut files = read_package(tgz, |p| p == "emoji.json" || p.starts_with(&image_dir))?;
        let emoji: Vec<DatasourceEmoji> = parse_json(&files, "emoji.json", tgz)?;
        let mut count = 0;
        for e in &emoji {
            let fallback_label = e
                .name
                .clone()
                .or_else(|| e.short_names.first().map(|s| s.replace('_', " ")))
                .unwrap_or_else(|| e.unified.clone())
                .to_lowercase();
            let variants = std::iter::once((e.unified.as_str(), e.image.as_str(), None)).chain(
                e.skin_variations
                    .iter()
                    .map(|(tone, v)| (v.unified.as_str(), v.image.as_str(), Some(tone.as_str()))),
            );
            for (unified, image, tone) in variants {
                let Some(png) = files.remove(&format!("{image_dir}{image}")) else {
                    tracing::warn!(
                        style = style.name(),
                        unified,
                        "no 64 px image in the package; left out"
                    );
                    out.missing_images += 1;
                    continue;
                };
                let (label, tags) = match labels.get(&normalise_hexcode(unified)) {
                    Some((label, tags)) => (label.clone(), tags.clone()),
                    None => {
                        let label = match tone {
                            Some(t) => format!("{fallback_label}: skin tone {t}"),
                            None => fallback_label.clone(),
                        };
                        (label, Vec::new())
                    }
                };
                let caption =
                    emoji_caption(&label, &tags, &e.category, &e.subcategory, style.name());
                let val = is_validation(&e.unified, opts.val_fraction);
                let json = serde_json::json!({
                    "unified": unified, "base": e.unified, "skin_tone": tone,
                    "label": label, "tags": tags, "name": e.name, "short_names": e.short_names,
                    "category": e.category, "subcategory": e.subcategory,
                    "style": style.name(), "split": if val { "val" } else { "train" },
                    "source": style.package(), "image_license": style.licence(),
                    "labels_source": EMOJIBASE_PACKAGE,
                });
                let key = format!("{}_{}", style.name(), unified.to_ascii_lowercase());
                let record = (key, png, caption, Some(json.to_string()));
                if val {
                    out.val.push(record);
                } else {
                    out.train.push(record);
                }
                count += 1;
            }
        }
        out.per_style.push((style, count));
    }
    Ok(out)
}

const ATTRIBUTION: &str = "\
This dataset was built by `unclip data emoji` from these npm packages. The artwork keeps its
licence: keep this file with the data and credit the artists when you publish anything trained
on it.

- Twemoji artwork (records `twitter_*`, from emoji-datasource-twitter@16.0.0): Copyright
  Twitter, Inc (now X Corp.) and other contributors, licensed under CC-BY 4.0,
  https://creativecommons.org/licenses/by/4.0/ . Source: https://github.com/jdecked/twemoji
- Noto Emoji artwork (records `google_*`, from emoji-datasource-google@16.0.0): Copyright
  Google Inc., licensed under the Apache License 2.0, https://www.apache.org/licenses/LICENSE-2.0 .
  Source: https://github.com/googlefonts/noto-emoji
- Emoji names, categories and image packaging: emoji-data (emoji-datasource-*), Copyright (c)
  2013 Cal Henderson, MIT licence. https://github.com/iamcal/emoji-data
- Labels and tags used in the captions: emojibase-data@17.0.0, Copyright (c) 2017-2019 Miles
  Johnson, MIT licence. https://github.com/milesj/emojibase
";

/// Removes `prefix-NNNNNN.tar` files in `dir` that are not in `keep` (left by an earlier run
/// with more shards).
fn remove_stale_shards(dir: &Path, prefix: &str, keep: &[PathBuf]) -> Result<()> {
    for entry in std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .flatten()
    {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let numbered = name
            .strip_prefix(&format!("{prefix}-"))
            .and_then(|rest| rest.strip_suffix(".tar"))
            .is_some_and(|n| n.len() == 6 && n.bytes().all(|b| b.is_ascii_digit()));
        if numbered && !keep.contains(&path) {
            std::fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// The brace pattern naming `n` train shards in `out` (the folder also holds the val shards,
/// so the folder itself is not the training set).
pub fn train_pattern(out: &Path, n: usize) -> String {
    format!(
        "{}/train-{{000000..{:06}}}.tar",
        out.display(),
        n.saturating_sub(1)
    )
}

/// Builds the dataset from downloaded package tarballs: `packages` gives each style's
/// emoji-datasource tarball, `emojibase` the emojibase-data tarball.
pub fn build_from_packages(
    opts: &EmojiOptions,
    packages: &[(EmojiStyle, PathBuf)],
    emojibase: &Path,
) -> Result<EmojiSummary> {
    opts.validate()?;
    let base = read_package(emojibase, |p| p == "en/data.json")?;
    let labels = label_index(parse_json(&base, "en/data.json", emojibase)?);
    let mut records = collect_records(opts, packages, &labels)?;
    let mut rng = ChaCha8Rng::seed_from_u64(SHARD_ORDER_SEED);
    let mut write = |split: &str, mut rows: Vec<Record>| -> Result<Vec<PathBuf>> {
        // Mixed order, so that every shard holds every style and category.
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows.shuffle(&mut rng);
        let shards = write_shards(rows.into_iter(), &opts.out, split, opts.shard_size)?;
        remove_stale_shards(&opts.out, split, &shards)?;
        Ok(shards)
    };
    let (train, val) = (records.train.len(), records.val.len());
    let train_shards = write("train", std::mem::take(&mut records.train))?;
    let val_shards = write("val", std::mem::take(&mut records.val))?;
    let mut bytes = 0;
    for shard in train_shards.iter().chain(&val_shards) {
        bytes += std::fs::metadata(shard)
            .map_err(|e| Error::io(shard, e))?
            .len();
    }
    write_atomic(&opts.out.join("ATTRIBUTION"), ATTRIBUTION.as_bytes())?;
    let readme = format!(
        "Emoji captioned with their label, tags, category and art style ({}), 64x64 RGBA PNG, as \
         WebDataset shards: train-*.tar ({train} records) and val-*.tar ({val} records, {:.0}% of \
         emoji held out by a hash of the code point sequence). Built by `unclip data emoji`; \
         licences in ATTRIBUTION. Train with `--data {}`.\n",
        records
            .per_style
            .iter()
            .map(|(s, _)| s.name())
            .collect::<Vec<_>>()
            .join(" and "),
        opts.val_fraction * 100.0,
        train_pattern(&opts.out, train_shards.len()),
    );
    write_atomic(&opts.out.join("README.md"), readme.as_bytes())?;
    Ok(EmojiSummary {
        out: opts.out.clone(),
        train,
        val,
        per_style: records.per_style,
        missing_images: records.missing_images,
        train_shards,
        val_shards,
        bytes,
    })
}

/// Fetches the pinned packages with `npm pack` into a temporary folder under `opts.out`,
/// builds the dataset there, and removes the download.
pub fn build_emoji_dataset(opts: &EmojiOptions) -> Result<EmojiSummary> {
    opts.validate()?;
    let version = npm_version(&opts.npm)?;
    tracing::info!(npm = %version, "found npm");
    let download = opts
        .out
        .join(format!(".npm-download-{}", std::process::id()));
    std::fs::create_dir_all(&download).map_err(|e| Error::io(&download, e))?;
    let result = (|| {
        let mut packages = Vec::new();
        for &style in &opts.styles {
            packages.push((style, npm_pack(&opts.npm, style.package(), &download)?));
        }
        let emojibase = npm_pack(&opts.npm, EMOJIBASE_PACKAGE, &download)?;
        build_from_packages(opts, &packages, &emojibase)
    })();
    let _ = std::fs::remove_dir_all(&download);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("unclip-emoji-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn missing_npm_is_a_clear_error() {
        let err = npm_version("unclip-test-no-such-npm")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unclip-test-no-such-npm --version")
                && err.contains("install Node.js and npm"),
            "{err}"
        );
        let mut opts = EmojiOptions::new(temp_dir("nonpm"));
        opts.npm = "unclip-test-no-such-npm".into();
        let err = build_emoji_dataset(&opts).unwrap_err().to_string();
        assert!(err.contains("npm"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn a_failing_npm_pack_names_the_package_and_npms_complaint() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("npmfail");
        let npm = dir.join("fake-npm");
        let script = "#!/bin/sh\n[ \"$1\" = --version ] && echo 10.0.0 && exit 0\n\
                      echo 'npm warn noise' >&2\necho 'npm error code ECONNREFUSED' >&2\n\
                      echo 'npm error     at Foo (x.js:1:1)' >&2\nexit 1\n";
        std::fs::write(&npm, script).unwrap();
        std::fs::set_permissions(&npm, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = dir.join("out");
        let mut opts = EmojiOptions::new(&out);
        opts.npm = npm.to_string_lossy().into_owned();
        let err = build_emoji_dataset(&opts).unwrap_err().to_string();
        assert!(
            err.contains("pack emoji-datasource-twitter@16.0.0` failed")
                && err.contains("registry reachable")
                && err.ends_with("npm said:\ncode ECONNREFUSED"),
            "{err}"
        );
        let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
        assert!(left.is_empty(), "the download folder is removed");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn captions_say_label_style_tags_and_category() {
        let tags: Vec<String> = ["face", "grin", "happy", "+1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            emoji_caption(
                "grinning face",
                &tags,
                "Smileys & Emotion",
                "face-smiling",
                "twitter"
            ),
            "grinning face, a twitter-style emoji; happy, +1; smileys & emotion, face smiling"
        );
        assert_eq!(
            emoji_caption("flag: Japan", &[], "Flags", "country-flag", "google"),
            "flag: Japan, a google-style emoji; flags, country flag"
        );
    }

    #[test]
    fn the_split_is_stable_and_near_the_fraction() {
        let codes: Vec<String> = (0x1F300..0x1F300 + 4000)
            .map(|c| format!("{c:X}"))
            .collect();
        let held = codes.iter().filter(|c| is_validation(c, 0.05)).count();
        assert!((150..250).contains(&held), "{held} of 4000 held out at 5%");
        assert!(!codes.iter().any(|c| is_validation(c, 0.0)));
        assert_eq!(
            is_validation("1f600-fe0f", 0.3),
            is_validation("1F600", 0.3)
        );
    }
}
