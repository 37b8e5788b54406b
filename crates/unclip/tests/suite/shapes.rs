//! The shapes-world writers end to end: the folders they write are what `ImageFolder` reads,
//! each image agrees with its scene graph and caption, and a seed fixes every byte.

use std::path::{Path, PathBuf};
use unclip::data::shapes::{
    read_prompt_file, write_prompt_renders, write_shapes_dataset, Form, Prompt, Scene,
};
use unclip::data::ImageFolder;

/// A fresh, empty folder under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let path =
            std::env::temp_dir().join(format!("unclip-shapes-{name}-{}", std::process::id()));
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

/// Every file below `dir` (relative path, bytes), sorted.
fn files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path.strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&path).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn dataset_is_an_image_folder_whose_images_match_their_scene_graphs() {
    let dir = TempDir::new("dataset");
    let summary = write_shapes_dataset(&dir.0, 1200, 3, &Form::ALL).unwrap();
    assert_eq!(summary.images, 1200);
    assert_eq!(summary.per_form.values().sum::<usize>(), 1200);
    assert_eq!(summary.per_form.len(), 4);
    assert!(dir.0.join("001/001199.png").is_file());

    let folder = ImageFolder::scan(&dir.0).unwrap();
    assert_eq!(folder.len(), 1200);
    assert_eq!(folder.uncaptioned, 0);
    for item in folder.items.iter().step_by(7) {
        let json = std::fs::read_to_string(item.image.with_extension("json")).unwrap();
        let scene: Scene = serde_json::from_str(&json).unwrap();
        assert_eq!(scene.prompt.to_string(), item.caption);
        assert_eq!(Prompt::parse(&item.caption).unwrap(), scene.prompt);
        let image = image::open(&item.image).unwrap().to_rgb8();
        assert_eq!(image, unclip::data::shapes::render(&scene));
        for (x, y, pixel) in image.enumerate_pixels() {
            let inside = |o: &&unclip::data::shapes::SceneObject| {
                let [x0, y0, x1, y1] = o.bbox;
                (x0..x1).contains(&x) && (y0..y1).contains(&y) && pixel.0 == o.color.rgb()
            };
            assert!(
                pixel.0 == [255, 255, 255] || scene.objects.iter().any(|o| inside(&o)),
                "{}: pixel ({x}, {y}) = {:?} belongs to no object",
                item.image.display(),
                pixel.0
            );
        }
    }
}

#[test]
fn the_same_seed_writes_identical_bytes() {
    let (a, b, c) = (
        TempDir::new("seed-a"),
        TempDir::new("seed-b"),
        TempDir::new("seed-c"),
    );
    write_shapes_dataset(&a.0, 60, 42, &Form::ALL).unwrap();
    write_shapes_dataset(&b.0, 60, 42, &Form::ALL).unwrap();
    write_shapes_dataset(&c.0, 60, 43, &Form::ALL).unwrap();
    let summary_file = |f: &(PathBuf, Vec<u8>)| f.0 != Path::new("shapes_dataset.json");
    let fa: Vec<_> = files(&a.0).into_iter().filter(summary_file).collect();
    let fb: Vec<_> = files(&b.0).into_iter().filter(summary_file).collect();
    let fc: Vec<_> = files(&c.0).into_iter().filter(summary_file).collect();
    assert_eq!(fa.len(), 180);
    assert!(fa == fb, "same seed, different files");
    assert!(fa != fc, "different seeds, same files");
}

#[test]
fn only_the_requested_forms_are_written() {
    let dir = TempDir::new("forms");
    let summary = write_shapes_dataset(&dir.0, 50, 0, &[Form::Counting]).unwrap();
    assert_eq!(summary.per_form.get(&Form::Counting), Some(&50));
    for item in ImageFolder::scan(&dir.0).unwrap().items {
        let json = std::fs::read_to_string(item.image.with_extension("json")).unwrap();
        let scene: Scene = serde_json::from_str(&json).unwrap();
        let Prompt::Counting { n, .. } = scene.prompt else {
            panic!("{}", item.caption)
        };
        assert_eq!(scene.objects.len(), n.get());
    }
    let fresh = dir.0.join("fresh");
    assert!(write_shapes_dataset(&fresh, 5, 0, &[]).is_err());
    assert!(write_shapes_dataset(&fresh, 0, 0, &Form::ALL).is_err());
    // A folder that already holds items is refused rather than mixed into.
    let err = write_shapes_dataset(&dir.0, 5, 0, &Form::ALL).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
}

#[test]
fn prompt_files_render_k_images_per_prompt_and_reject_bad_lines() {
    let dir = TempDir::new("prompts");
    let file = dir.0.join("prompts.txt");
    std::fs::write(
        &file,
        "# evaluation set\na red circle above a blue square\n\nfour green triangles\r\n",
    )
    .unwrap();
    let prompts = read_prompt_file(&file).unwrap();
    assert_eq!(prompts.len(), 2);
    let out = dir.0.join("renders");
    let summary = write_prompt_renders(&out, &prompts, 3, 1).unwrap();
    assert_eq!(summary.images, 6);
    let folder = ImageFolder::scan(&out).unwrap();
    let captions: Vec<&str> = folder.items.iter().map(|i| i.caption.as_str()).collect();
    assert_eq!(
        captions,
        [
            "a red circle above a blue square",
            "a red circle above a blue square",
            "a red circle above a blue square",
            "four green triangles",
            "four green triangles",
            "four green triangles",
        ]
    );
    // Three different layouts of the same prompt.
    let images: Vec<Vec<u8>> = folder.items[..3]
        .iter()
        .map(|i| std::fs::read(&i.image).unwrap())
        .collect();
    assert!(images[0] != images[1] && images[1] != images[2]);

    std::fs::write(&file, "a red circle\na red hexagon\n").unwrap();
    let err = read_prompt_file(&file).unwrap_err().to_string();
    assert!(err.contains("prompts.txt:2"), "{err}");
    assert!(err.contains("hexagon"), "{err}");
}
