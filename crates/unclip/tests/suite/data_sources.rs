//! Data sources end to end: tiny WebDataset shards with a corrupt image, a record without a
//! caption and a truncated shard are streamed with the bad records skipped and counted; the
//! order is fixed by (seed, epoch) whatever the thread count, and `skip` resumes exactly.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use unclip::data::shapes::{encode_png, write_shapes_dataset, Form};
use unclip::data::{captions, stream, DataSource, Sample, StreamOptions};

/// A fresh, empty folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("unclip-data-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The solid colour of good record `i`, so that pixels can be matched to captions.
fn colour(i: usize) -> [u8; 3] {
    [(i * 40) as u8, 255 - (i * 20) as u8, 7 * i as u8]
}

/// A non-square PNG (resize and crop both run) of one colour.
fn png(i: usize) -> Vec<u8> {
    encode_png(&image::RgbImage::from_pixel(
        24 + i as u32,
        20,
        image::Rgb(colour(i)),
    ))
    .unwrap()
}

fn add(builder: &mut tar::Builder<std::fs::File>, name: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    builder.append_data(&mut header, name, data).unwrap();
}

fn good(builder: &mut tar::Builder<std::fs::File>, i: usize) {
    add(builder, &format!("g{i}.png"), &png(i));
    add(
        builder,
        &format!("g{i}.txt"),
        format!("caption for g{i}").as_bytes(),
    );
    add(builder, &format!("g{i}.json"), b"{}");
}

/// `shard-000.tar`: g0 g1 g2, a corrupt PNG, g3, a record without caption, g4.
/// `shard-001.tar`: g5 .. g8, then g9 cut off inside its image. 9 good records, 3 bad.
fn write_fixture(dir: &Path) {
    let mut a = tar::Builder::new(std::fs::File::create(dir.join("shard-000.tar")).unwrap());
    for i in 0..3 {
        good(&mut a, i);
    }
    add(
        &mut a,
        "corrupt.png",
        b"\x89PNG\r\n\x1a\nthis is not a png body",
    );
    add(&mut a, "corrupt.txt", b"caption for a corrupt image");
    good(&mut a, 3);
    add(&mut a, "nocap.png", &png(0));
    good(&mut a, 4);
    a.finish().unwrap();

    let path = dir.join("shard-001.tar");
    let mut b = tar::Builder::new(std::fs::File::create(&path).unwrap());
    for i in 5..10 {
        good(&mut b, i);
    }
    b.finish().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let header = bytes.windows(6).position(|w| w == b"g9.png").unwrap();
    std::fs::write(&path, &bytes[..header + 512 + 40]).unwrap();
}

fn options(epoch: u64, skip: u64, workers: usize) -> StreamOptions {
    StreamOptions {
        image_size: 16,
        seed: 7,
        epoch,
        skip,
        shuffle_buffer: 4,
        workers,
    }
}

fn keys(samples: &[Sample]) -> Vec<&str> {
    samples.iter().map(|s| s.key.as_str()).collect()
}

#[test]
fn shards_yield_good_pairs_and_count_the_bad() {
    let dir = TempDir::new("shards");
    write_fixture(&dir.0);
    let pattern = format!("{}/shard-{{000..001}}.tar", dir.0.display());
    let source = DataSource::open(&pattern).unwrap();
    assert_eq!(source.describe().split(' ').next(), Some("2"));

    let mut pairs = stream(&source, &options(0, 0, 2)).unwrap();
    let samples: Vec<Sample> = pairs.by_ref().collect();
    assert_eq!(
        pairs.skipped(),
        3,
        "corrupt PNG, missing caption, truncated record"
    );
    assert_eq!(pairs.yielded(), 9);
    let mut seen: Vec<&str> = keys(&samples);
    seen.sort();
    assert_eq!(seen, ["g0", "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8"]);
    for s in &samples {
        let i: usize = s.key[1..].parse().unwrap();
        assert_eq!(s.caption, format!("caption for g{i}"));
        assert_eq!(s.pixels.len(), 16 * 16 * 3);
        assert!(
            s.pixels.chunks(3).all(|px| px == colour(i)),
            "{} keeps its own pixels",
            s.key
        );
    }

    // Dropping a stream part-way stops its threads (the test would hang otherwise).
    let first_two: Vec<Sample> = stream(&source, &options(0, 0, 3))
        .unwrap()
        .take(2)
        .collect();
    assert_eq!(first_two, samples[..2]);

    // A directory of shards is the same source.
    let by_dir = DataSource::open(dir.0.to_str().unwrap()).unwrap();
    assert!(matches!(&by_dir, DataSource::Shards(p) if p.len() == 2));
    // Captions without decoding: the corrupt image's caption is there, the captionless record is not.
    let all = captions(&source).unwrap();
    assert_eq!(all.len(), 10);
    assert!(all.contains(&"caption for a corrupt image".to_string()));
}

#[test]
fn order_depends_on_seed_and_epoch_only_and_skip_resumes_exactly() {
    let dir = TempDir::new("order");
    write_fixture(&dir.0);
    let source = DataSource::open(dir.0.to_str().unwrap()).unwrap();
    let run = |epoch, skip, workers| -> Vec<Sample> {
        stream(&source, &options(epoch, skip, workers))
            .unwrap()
            .collect()
    };

    let full = run(0, 0, 1);
    assert_eq!(full, run(0, 0, 3), "thread count changes nothing");
    assert_eq!(full, run(0, 0, 1), "same seed and epoch, same order");
    let other_epoch = run(1, 0, 2);
    assert_eq!(other_epoch.len(), full.len());
    assert_ne!(
        keys(&full),
        keys(&other_epoch),
        "each epoch has its own order"
    );
    for k in 0..=full.len() + 1 {
        let resumed = run(0, k as u64, 2);
        assert_eq!(resumed, full[k.min(full.len())..], "skip = {k}");
    }
}

#[test]
fn shapes_folders_stream_with_a_seeded_permutation() {
    let dir = TempDir::new("folder");
    write_shapes_dataset(&dir.0, 12, 5, &[Form::Single]).unwrap();
    let source = DataSource::open(dir.0.to_str().unwrap()).unwrap();
    let DataSource::Folder(folder) = &source else {
        panic!("{}", source.describe())
    };
    assert!(
        source.describe().contains("(12 pairs)"),
        "{}",
        source.describe()
    );

    let run = |epoch, skip| -> Vec<Sample> {
        let opts = StreamOptions {
            image_size: 32,
            seed: 1,
            epoch,
            skip,
            shuffle_buffer: 0,
            workers: 2,
        };
        stream(&source, &opts).unwrap().collect()
    };
    let epoch0 = run(0, 0);
    assert_eq!(epoch0.len(), 12);
    for s in &epoch0 {
        let item = folder
            .items
            .iter()
            .find(|i| i.image.ends_with(format!("{}.png", s.key)))
            .unwrap();
        assert_eq!(s.caption, item.caption);
        assert_eq!(s.pixels.len(), 32 * 32 * 3);
    }
    let in_file_order: Vec<String> = (0..12).map(|i| format!("000/{i:06}")).collect();
    assert_ne!(keys(&epoch0), in_file_order, "shuffled");
    assert_ne!(keys(&epoch0), keys(&run(1, 0)));
    assert_eq!(run(0, 5), epoch0[5..]);
    assert_eq!(captions(&source).unwrap().len(), 12);
}

#[test]
fn paths_without_pairs_are_clear_errors() {
    let dir = TempDir::new("empty");
    let err = |spec: &str| DataSource::open(spec).unwrap_err().to_string();
    let empty = err(dir.0.to_str().unwrap());
    assert!(
        empty.contains(dir.0.to_str().unwrap()) && empty.contains("expected"),
        "{empty}"
    );

    std::fs::write(dir.0.join("notes.md"), "not an image").unwrap();
    std::fs::write(dir.0.join("photo.png"), png(1)).unwrap(); // no caption
    let uncaptioned = err(dir.0.to_str().unwrap());
    assert!(
        uncaptioned.contains("1 of them without") && uncaptioned.contains(".tar"),
        "{uncaptioned}"
    );

    let missing = err(&format!("{}/nothing-{{00..02}}.tar", dir.0.display()));
    assert!(
        missing.contains("3 of the 3 shards") && missing.contains("nothing-00.tar"),
        "{missing}"
    );
    let nowhere = err("/no/such/unclip/data");
    assert!(nowhere.contains("does not exist"), "{nowhere}");
    let not_tar = err(dir.0.join("notes.md").to_str().unwrap());
    assert!(not_tar.contains("not a .tar shard"), "{not_tar}");
}

/// An npm-style tarball holding `files` under `package/`.
fn fake_package(path: &Path, files: &[(&str, Vec<u8>)]) {
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut builder = tar::Builder::new(gz);
    for (name, data) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, format!("package/{name}"), &data[..])
            .unwrap();
    }
    builder.into_inner().unwrap().finish().unwrap();
}

#[test]
fn packages_become_shards_with_both_styles_in_the_same_split() {
    let dir = TempDir::new("emoji");
    let dir = &dir.0;
    let png = encode_png(&image::RgbImage::new(4, 4)).unwrap();
    let emoji = serde_json::json!([
        {"name": "GRINNING FACE", "unified": "1F600", "image": "1f600.png", "short_names": ["grinning"],
         "category": "Smileys & Emotion", "subcategory": "face-smiling"},
        {"name": "WAVING HAND SIGN", "unified": "1F44B", "image": "1f44b.png", "short_names": ["wave"],
         "category": "People & Body", "subcategory": "hand-fingers-open",
         "skin_variations": {"1F3FD": {"unified": "1F44B-1F3FD", "image": "1f44b-1f3fd.png"}}},
        {"name": "NO IMAGE", "unified": "1F4A9", "image": "1f4a9.png",
         "category": "Smileys & Emotion", "subcategory": "face-costume"}
    ])
    .to_string();
    let labels = serde_json::json!([
        {"label": "grinning face", "hexcode": "1F600", "tags": ["face", "grin"]},
        {"label": "waving hand", "hexcode": "1F44B", "tags": ["hello", "wave"],
         "skins": [{"label": "waving hand: medium skin tone", "hexcode": "1F44B-1F3FD"}]}
    ])
    .to_string();
    let mut packages = Vec::new();
    for style in [
        unclip::data::emoji::EmojiStyle::Twitter,
        unclip::data::emoji::EmojiStyle::Google,
    ] {
        let mut files = vec![("emoji.json", emoji.clone().into_bytes())];
        let names: Vec<String> = ["1f600", "1f44b", "1f44b-1f3fd"]
            .iter()
            .map(|c| format!("img/{}/64/{c}.png", style.name()))
            .collect();
        files.extend(names.iter().map(|n| (n.as_str(), png.clone())));
        let tgz = dir.join(format!("{}.tgz", style.name()));
        fake_package(&tgz, &files);
        packages.push((style, tgz));
    }
    let base = dir.join("emojibase.tgz");
    fake_package(&base, &[("en/data.json", labels.into_bytes())]);
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("train-000009.tar"), b"stale").unwrap();
    let mut opts = unclip::data::emoji::EmojiOptions::new(&out);
    opts.val_fraction = 0.5;
    opts.shard_size = 2;
    let summary = unclip::data::emoji::build_from_packages(&opts, &packages, &base).unwrap();
    assert_eq!(summary.train + summary.val, 6);
    assert_eq!(summary.missing_images, 2);
    assert_eq!(
        summary.per_style,
        vec![
            (unclip::data::emoji::EmojiStyle::Twitter, 3),
            (unclip::data::emoji::EmojiStyle::Google, 3)
        ]
    );
    assert!(
        !out.join("train-000009.tar").exists(),
        "stale shard removed"
    );
    assert!(std::fs::read_to_string(out.join("ATTRIBUTION"))
        .unwrap()
        .contains("CC-BY 4.0"));

    let source = unclip::data::DataSource::Shards(
        summary
            .train_shards
            .iter()
            .chain(&summary.val_shards)
            .cloned()
            .collect(),
    );
    let mut split_of = HashMap::new();
    for shard in summary.train_shards.iter().chain(&summary.val_shards) {
        let _ = unclip::data::read_shard(
            shard,
            false,
            &mut |r| {
                let meta: serde_json::Value =
                    serde_json::from_str(r.json.as_deref().unwrap()).unwrap();
                let (base, split) = (meta["base"].to_string(), meta["split"].to_string());
                assert_eq!(
                    *split_of.entry(base).or_insert(split.clone()),
                    split,
                    "{}",
                    r.key
                );
                assert!(shard.to_string_lossy().contains(split.trim_matches('"')));
                std::ops::ControlFlow::Continue(())
            },
            &mut |s| panic!("{s:?}"),
        );
    }
    let captions = unclip::data::captions(&source).unwrap();
    assert!(captions.contains(&"waving hand: medium skin tone, a google-style emoji; hello, wave; people & body, hand fingers open".to_string()), "{captions:?}");
}

#[cfg(unix)]
#[test]
fn a_link_back_up_the_tree_lists_each_image_once() {
    let dir = TempDir::new("link-loop");
    let sub = dir.0.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    for (folder, name) in [(&dir.0, "a"), (&sub, "b")] {
        std::fs::write(folder.join(format!("{name}.png")), png(1)).unwrap();
        std::fs::write(folder.join(format!("{name}.txt")), "a caption").unwrap();
    }
    std::os::unix::fs::symlink("..", sub.join("loop")).unwrap();
    let folder = unclip::data::ImageFolder::scan(&dir.0).unwrap();
    let names: Vec<String> = folder
        .items
        .iter()
        .map(|i| i.image.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.png", "b.png"]);
}
