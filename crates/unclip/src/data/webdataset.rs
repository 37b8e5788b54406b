//! WebDataset tar shards, the format img2dataset writes: each record is a run of adjacent tar
//! members sharing a key (the member path up to the first dot of its file name), such as
//! `000042.jpg`, `000042.txt` and an optional `000042.json`. Web-scale data arrives this way,
//! and a shard is one sequential read, so it streams well from disk.
//!
//! Reading never fails on bad data: a record without an image or a caption, or cut short by a
//! truncated shard, is reported to the caller as a skip with its reason, and reading goes on.
//! Writing goes through a temporary file per shard, renamed into place when complete.

use crate::checkpoint::write_atomic_with;
use crate::error::{Error, Result};
use std::io::{BufReader, BufWriter, Read};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

/// Member extensions that hold the record's image.
pub const SHARD_IMAGE_EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "webp"];

/// One complete record of a shard.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardRecord {
    pub key: String,
    pub caption: String,
    /// The encoded image; `None` when the caller asked not to load images.
    pub image: Option<Vec<u8>>,
    pub json: Option<String>,
}

/// A record that was dropped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedRecord {
    pub key: String,
    pub reason: String,
}

/// The members seen so far for one key.
#[derive(Default)]
struct Group {
    key: String,
    image: Option<Vec<u8>>,
    has_image: bool,
    caption: Option<String>,
    json: Option<String>,
    problem: Option<String>,
}

impl Group {
    fn finish(self) -> std::result::Result<ShardRecord, SkippedRecord> {
        let skip = |reason: String| SkippedRecord {
            key: self.key.clone(),
            reason,
        };
        if let Some(problem) = &self.problem {
            return Err(skip(problem.clone()));
        }
        if !self.has_image {
            return Err(skip("no image member (.jpg, .jpeg, .png or .webp)".into()));
        }
        match &self.caption {
            Some(c) if !c.trim().is_empty() => Ok(ShardRecord {
                caption: c.trim().to_string(),
                key: self.key,
                image: self.image,
                json: self.json,
            }),
            Some(_) => Err(skip("empty caption (.txt)".into())),
            None => Err(skip("no caption member (.txt)".into())),
        }
    }
}

/// Splits a member path into (key, lower-case extension): `a/b/000042.jpg` -> (`a/b/000042`,
/// `jpg`); `x.seg.png` -> (`x`, `seg.png`).
fn split_member(path: &str) -> Option<(String, String)> {
    let (dir, base) = match path.rfind('/') {
        Some(i) => (&path[..=i], &path[i + 1..]),
        None => ("", path),
    };
    let dot = base.find('.')?;
    if dot == 0 {
        return None; // hidden files such as `._000042.jpg` are not records
    }
    Some((
        format!("{dir}{}", &base[..dot]),
        base[dot + 1..].to_ascii_lowercase(),
    ))
}

/// Members larger than this are not read (a corrupt header can claim any size).
const MAX_MEMBER_BYTES: u64 = 256 << 20;

/// Reads one member's bytes, checking that the shard held all of them.
fn read_member(entry: &mut impl Read, size: u64) -> std::result::Result<Vec<u8>, String> {
    if size > MAX_MEMBER_BYTES {
        return Err(format!(
            "member of {size} bytes is over the {MAX_MEMBER_BYTES}-byte limit"
        ));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    entry
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read member: {e}"))?;
    if bytes.len() as u64 != size {
        return Err(format!(
            "member cut short ({} of {size} bytes): the shard is truncated",
            bytes.len()
        ));
    }
    Ok(bytes)
}

/// Reads the records of one shard in order. `on_record` gets each complete record and may stop
/// the read with `ControlFlow::Break`; `on_skip` gets each dropped record. A shard that cannot be
/// opened, or that is corrupt or truncated part-way, ends with a skip for the record it was in
/// (or for the unreadable rest of the shard) rather than an error.
pub fn read_shard(
    path: &Path,
    load_images: bool,
    on_record: &mut dyn FnMut(ShardRecord) -> ControlFlow<()>,
    on_skip: &mut dyn FnMut(SkippedRecord),
) -> ControlFlow<()> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            on_skip(SkippedRecord {
                key: "*".into(),
                reason: format!("cannot open shard: {e}"),
            });
            return ControlFlow::Continue(());
        }
    };
    let mut archive = tar::Archive::new(BufReader::new(file));
    let entries = match archive.entries() {
        Ok(entries) => entries,
        Err(e) => {
            on_skip(SkippedRecord {
                key: "*".into(),
                reason: format!("not a readable tar file: {e}"),
            });
            return ControlFlow::Continue(());
        }
    };
    let mut group: Option<Group> = None;
    let emit = |group: Group,
                on_record: &mut dyn FnMut(ShardRecord) -> ControlFlow<()>,
                on_skip: &mut dyn FnMut(SkippedRecord)| {
        match group.finish() {
            Ok(record) => on_record(record),
            Err(skipped) => {
                on_skip(skipped);
                ControlFlow::Continue(())
            }
        }
    };
    for entry in entries {
        let mut entry = match entry {
            Ok(entry) => entry,
            Err(e) => {
                let reason = format!("the shard is corrupt or truncated here: {e}");
                // The record being read when the shard broke off is dropped even if it looks
                // complete: members of it may be missing.
                let key = group.take().map_or_else(|| "*".to_string(), |g| g.key);
                on_skip(SkippedRecord { key, reason });
                return ControlFlow::Continue(());
            }
        };
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = match entry.path() {
            Ok(p) => p.to_string_lossy().replace('\\', "/"),
            Err(_) => continue,
        };
        let Some((key, ext)) = split_member(&name) else {
            continue;
        };
        if group.as_ref().is_some_and(|g| g.key != key) {
            if let Some(done) = group.take() {
                emit(done, on_record, on_skip)?;
            }
        }
        let g = group.get_or_insert_with(|| Group {
            key: key.clone(),
            ..Group::default()
        });
        let size = entry.size();
        let is_image = SHARD_IMAGE_EXTENSIONS.contains(&ext.as_str());
        if is_image && !g.has_image {
            g.has_image = true;
            if load_images {
                match read_member(&mut entry, size) {
                    Ok(bytes) => g.image = Some(bytes),
                    Err(e) => g.problem = Some(format!("{name}: {e}")),
                }
            }
        } else if ext == "txt" || ext == "json" {
            let text = read_member(&mut entry, size).and_then(|bytes| {
                String::from_utf8(bytes).map_err(|_| "not UTF-8 text".to_string())
            });
            match (text, ext.as_str()) {
                (Ok(t), "txt") => g.caption = Some(t),
                (Ok(t), _) => g.json = Some(t),
                (Err(e), _) => g.problem = Some(format!("{name}: {e}")),
            }
        }
    }
    match group {
        Some(g) => emit(g, on_record, on_skip),
        None => ControlFlow::Continue(()),
    }
}

/// The tar member extension for encoded image bytes, from their signature (PNG unless they
/// look like JPEG or WebP).
fn image_extension(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        "jpg"
    } else if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        "webp"
    } else {
        "png"
    }
}

fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key.split('/').any(|part| part.is_empty() || part == "..")
        || key
            .rsplit('/')
            .next()
            .is_some_and(|base| base.contains('.'));
    if bad {
        return Err(Error::InvalidInput(format!(
            "`{key}` cannot be a WebDataset key: keys are non-empty relative paths whose file name \
             has no dot"
        )));
    }
    Ok(())
}

fn append(builder: &mut tar::Builder<impl std::io::Write>, name: &str, data: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0); // fixed, so the same records give byte-identical shards
    header.set_entry_type(tar::EntryType::Regular);
    builder
        .append_data(&mut header, name, data)
        .map_err(|e| Error::Data(format!("cannot add {name} to a shard: {e}")))
}

/// Writes `(key, image bytes, caption, json)` records to `out_dir/prefix-000000.tar`,
/// `prefix-000001.tar`, ..., `shard_size` records per shard, each shard written to a temporary
/// name and renamed when complete. Returns the shard paths in order (none for no records).
pub fn write_shards(
    pairs: impl Iterator<Item = (String, Vec<u8>, String, Option<String>)>,
    out_dir: &Path,
    prefix: &str,
    shard_size: usize,
) -> Result<Vec<PathBuf>> {
    if shard_size == 0 {
        return Err(Error::InvalidInput(
            "the shard size must be at least 1 record".into(),
        ));
    }
    if prefix.is_empty() || prefix.contains(['/', '\\']) {
        return Err(Error::InvalidInput(format!(
            "`{prefix}` cannot be a shard prefix: it must be a non-empty file name"
        )));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut pairs = pairs.peekable();
    let mut shards = Vec::new();
    while pairs.peek().is_some() {
        let path = out_dir.join(format!("{prefix}-{:06}.tar", shards.len()));
        write_atomic_with(&path, |tmp| {
            let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
            let mut builder = tar::Builder::new(BufWriter::new(file));
            for (key, image, caption, json) in pairs.by_ref().take(shard_size) {
                check_key(&key)?;
                append(
                    &mut builder,
                    &format!("{key}.{}", image_extension(&image)),
                    &image,
                )?;
                append(&mut builder, &format!("{key}.txt"), caption.as_bytes())?;
                if let Some(json) = json {
                    append(&mut builder, &format!("{key}.json"), json.as_bytes())?;
                }
            }
            let writer = builder.into_inner().map_err(|e| Error::io(tmp, e))?;
            let file = writer
                .into_inner()
                .map_err(|e| Error::io(tmp, e.into_error()))?;
            file.sync_all().map_err(|e| Error::io(tmp, e))
        })?;
        shards.push(path);
    }
    Ok(shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(path: &Path, load: bool) -> (Vec<ShardRecord>, Vec<SkippedRecord>) {
        let (mut records, mut skipped) = (Vec::new(), Vec::new());
        let _ = read_shard(
            path,
            load,
            &mut |r| {
                records.push(r);
                ControlFlow::Continue(())
            },
            &mut |s| skipped.push(s),
        );
        (records, skipped)
    }

    #[test]
    fn member_names_split_at_the_first_dot_of_the_file_name() {
        assert_eq!(
            split_member("a.b/000042.seg.PNG"),
            Some(("a.b/000042".into(), "seg.png".into()))
        );
        assert_eq!(split_member("x.txt"), Some(("x".into(), "txt".into())));
        assert_eq!(split_member("._x.png"), None);
        assert_eq!(split_member("README"), None);
    }

    #[test]
    fn written_shards_read_back_and_truncation_skips_the_cut_record() {
        let dir = std::env::temp_dir().join(format!("unclip-wds-unit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let records: Vec<_> = (0..5)
            .map(|i| {
                let json = (i % 2 == 0).then(|| format!("{{\"i\":{i}}}"));
                (
                    format!("k{i}"),
                    vec![i as u8; 600],
                    format!("caption {i}"),
                    json,
                )
            })
            .collect();
        let shards = write_shards(records.clone().into_iter(), &dir, "part", 2).unwrap();
        assert_eq!(shards.len(), 3);
        assert!(shards[2].ends_with("part-000002.tar"));
        let (got, skipped) = read_all(&shards[0], true);
        assert!(skipped.is_empty());
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].key, "k1");
        assert_eq!(got[1].caption, "caption 1");
        assert_eq!(got[1].image.as_deref(), Some(&[1u8; 600][..]));
        assert_eq!(got[0].json.as_deref(), Some("{\"i\":0}"));
        assert_eq!(got[1].json, None);
        let (no_images, _) = read_all(&shards[0], false);
        assert_eq!(no_images[0].image, None);
        assert_eq!(no_images[0].caption, "caption 0");

        // Cut the first shard inside the second record's image member.
        let bytes = std::fs::read(&shards[0]).unwrap();
        let cut = dir.join("cut.tar");
        let pos = bytes
            .windows(6)
            .position(|w| w == b"k1.png")
            .expect("member header present");
        std::fs::write(&cut, &bytes[..pos + 512 + 100]).unwrap();
        let (got, skipped) = read_all(&cut, true);
        assert_eq!(got.len(), 1);
        assert_eq!(skipped.len(), 1);
        assert_eq!(skipped[0].key, "k1");
        assert!(skipped[0].reason.contains("truncated"), "{skipped:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_keys_and_sizes_are_refused() {
        let dir = std::env::temp_dir();
        let one = |key: &str| vec![(key.to_string(), vec![1u8], "c".to_string(), None)];
        for key in ["", "a.b", "../x", "/abs", "a//b"] {
            assert!(write_shards(one(key).into_iter(), &dir, "never", 1).is_err());
        }
        assert!(write_shards(one("a").into_iter(), &dir, "never", 0).is_err());
    }
}
