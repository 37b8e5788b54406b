//! The `unclip` binary as a user runs it: real files, bad files, exit codes and messages.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/oracle/fixtures")
}

fn unclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args(args)
        .output()
        .expect("the binary runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unclip-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A copy of the tiny reference CLIP whose weights pass through `edit`.
fn model_with(tag: &str, edit: impl FnOnce(&mut HashMap<String, Tensor>)) -> PathBuf {
    let src = fixtures().join("clip_tiny");
    let dir = scratch(tag);
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
        }
    }
    let mut tensors =
        candle_core::safetensors::load(src.join("model.safetensors"), &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn embed_json_gives_normalised_embeddings_and_ids() {
    let model = fixtures().join("clip_tiny");
    let image = fixtures().join("images/image_0.png");
    let out = unclip(&[
        "embed",
        "--model",
        s(&model),
        "--text",
        "a photo of a cat",
        "--text",
        "",
        "--image",
        s(&image),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["input_ids"].as_array().unwrap().len(), 2);
    assert_eq!(v["input_ids"][0].as_array().unwrap().len(), 77);
    for key in ["text_embeds", "image_embeds"] {
        for row in v[key].as_array().unwrap() {
            let norm: f64 = row
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap().powi(2))
                .sum::<f64>()
                .sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{key} norm {norm}");
        }
    }
}

#[test]
fn classify_prints_a_probability_per_label() {
    let model = fixtures().join("clip_tiny");
    let image = fixtures().join("images/image_1.png");
    let out = unclip(&[
        "classify",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--labels",
        "a cat",
        "a dog",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let total: f64 = ["a cat", "a dog"]
        .iter()
        .map(|k| v[*k].as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-5);
}

#[test]
fn missing_model_folder_is_named() {
    let out = unclip(&["embed", "--model", "/no/such/model", "--text", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("/no/such/model"), "{}", stderr(&out));
}

#[test]
fn corrupt_weights_file_is_named() {
    let dir = model_with("corrupt", |_| {});
    std::fs::write(
        dir.join("model.safetensors"),
        b"\x10\x00\x00\x00\x00\x00\x00\x00garbage",
    )
    .unwrap();
    let out = unclip(&["embed", "--model", s(&dir), "--text", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("model.safetensors") && err.contains("safetensors"),
        "{err}"
    );
}

#[test]
fn wrong_tensor_shape_names_tensor_and_both_shapes() {
    let dir = model_with("shape", |t| {
        t.insert(
            "text_model.final_layer_norm.weight".into(),
            Tensor::ones(31, candle_core::DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let out = unclip(&["embed", "--model", s(&dir), "--text", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("text_model.final_layer_norm.weight"), "{err}");
    assert!(err.contains("expected shape [32], found [31]"), "{err}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = model_with("missing", |t| {
        t.remove("vision_model.post_layernorm.bias");
    });
    let out = unclip(&["embed", "--model", s(&dir), "--text", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("vision_model.post_layernorm.bias") && err.contains("missing"),
        "{err}"
    );
}

#[test]
fn non_images_and_truncated_images_are_clear_errors() {
    let model = fixtures().join("clip_tiny");
    let dir = scratch("images");
    let text = dir.join("notes.png");
    std::fs::write(&text, "this is text, not a picture").unwrap();
    let out = unclip(&["embed", "--model", s(&model), "--image", s(&text)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("notes.png") && stderr(&out).contains("cannot read image"),
        "{}",
        stderr(&out)
    );

    let png = std::fs::read(fixtures().join("images/image_0.png")).unwrap();
    let cut = dir.join("cut.png");
    std::fs::write(&cut, &png[..png.len() / 2]).unwrap();
    let out = unclip(&[
        "classify",
        "--model",
        s(&model),
        "--image",
        s(&cut),
        "--labels",
        "a",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cut.png"), "{}", stderr(&out));
}

#[test]
fn empty_label_list_and_empty_embed_are_refused() {
    let model = fixtures().join("clip_tiny");
    let image = fixtures().join("images/image_0.png");
    let out = unclip(&[
        "classify",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--labels",
    ]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--labels"), "{}", stderr(&out));
    let out = unclip(&["embed", "--model", s(&model)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("nothing to embed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn training_on_a_folder_without_pairs_says_why() {
    let dir = scratch("empty-data");
    image::RgbImage::new(8, 8)
        .save(dir.join("lonely.png"))
        .unwrap();
    let out = unclip(&[
        "train",
        "clip",
        "--data",
        s(&dir),
        "--out",
        s(&dir.join("out")),
        "--max-steps",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("no usable pairs") && err.contains("without a non-empty same-named .txt"),
        "{err}"
    );
}

#[test]
fn devices_are_checked_before_any_work() {
    let dir = scratch("device");
    let out_dir = dir.join("o");
    for (device, expected) in [
        ("gpu", "use one of cpu, cuda, cuda:N"),
        #[cfg(not(feature = "cuda"))]
        ("cuda", "--features cuda"),
    ] {
        for stage in ["clip", "decoder", "upsampler"] {
            let mut args = vec![
                "train",
                stage,
                "--data",
                s(&dir),
                "--out",
                s(&out_dir),
                "--device",
                device,
            ];
            if stage == "decoder" {
                args.extend(["--clip", s(&dir)]);
            }
            let out = unclip(&args);
            assert_eq!(out.status.code(), Some(1), "{stage} {device}");
            assert!(stderr(&out).contains(expected), "{stage}: {}", stderr(&out));
        }
        let prompts = fixtures().join("../../../models/shapes/eval-prompts.txt");
        for args in [
            vec!["generate", "a red circle", "--device", device],
            vec![
                "eval",
                "shapes",
                "--model",
                "shapes",
                "--prompts",
                s(&prompts),
                "--device",
                device,
            ],
        ] {
            let out = unclip(&args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            assert!(
                stderr(&out).contains(expected),
                "{args:?}: {}",
                stderr(&out)
            );
        }
    }
    assert!(!out_dir.exists(), "a refused run wrote its output folder");
}

/// `train prior` on shapes data against the tiny CLIP fixture, with no validation passes; `extra`
/// adds the flags a test is about.
fn tiny_prior_training(data: &Path, out: &Path, max_steps: &str, extra: &[&str]) -> Vec<String> {
    let clip = fixtures().join("clip_tiny_legacy");
    let base = [
        "train",
        "prior",
        "--data",
        s(data),
        "--clip",
        s(&clip),
        "--out",
        s(out),
        "--max-steps",
        max_steps,
        "--validate-every",
        "0",
    ];
    base.iter().chain(extra).map(|a| a.to_string()).collect()
}

#[test]
fn recipe_with_unknown_field_is_named() {
    let dir = scratch("recipe");
    let mut recipe: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("../../../models/presets/clip-tiny.json"))
            .unwrap(),
    )
    .unwrap();
    recipe["learning_rat"] = serde_json::json!(0.1);
    let path = dir.join("recipe.json");
    std::fs::write(&path, recipe.to_string()).unwrap();
    let out = unclip(&[
        "train",
        "clip",
        "--data",
        s(&dir),
        "--out",
        s(&dir.join("o")),
        "--config",
        s(&path),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("learning_rat"), "{}", stderr(&out));
}

#[test]
fn recipe_overrides_are_checked_and_the_recipe_used_is_saved() {
    let dir = scratch("recipe-set");
    // The U-Net section takes diffusers' config.json as it is, so a misspelt field there would be
    // dropped by the parser; --set must still name it.
    for (set, named) in [
        ("unet.sampel_size=64", "unet.sampel_size"),
        ("unett.sample_size=64", "unett"),
        ("min_snr_gamma=high", "min_snr_gamma"),
        ("min_snr_gamma", "FIELD=VALUE"),
        // A schedule no pipeline could sample from is refused before training, not at load.
        (
            "scheduler.num_train_timesteps=0",
            "scheduler.num_train_timesteps",
        ),
        ("scheduler.beta_schedule=linear", "scheduler.beta_schedule"),
        ("image_embedding_drop=5", "image_embedding_drop"),
        ("train.grad_clip=-1", "grad_clip"),
        ("train.batch_size=100000000000000", "batch_size"),
    ] {
        let out = unclip(&[
            "train",
            "decoder",
            "--data",
            s(&dir),
            "--out",
            s(&dir.join("refused")),
            "--clip",
            s(&fixtures().join("clip_tiny_legacy")),
            "--set",
            set,
        ]);
        assert_eq!(
            out.status.code(),
            Some(if set.contains('=') { 1 } else { 2 })
        );
        assert!(
            stderr(&out).contains(named),
            "--set {set}: {}",
            stderr(&out)
        );
    }
    assert!(
        !dir.join("refused").exists(),
        "a refused run wrote its output folder"
    );

    let data = dir.join("data");
    assert!(unclip(&["data", "shapes", "--n", "16", "--out", s(&data)])
        .status
        .success());
    let first = dir.join("first");
    let prior = |out: &Path, extra: &[&str]| {
        let args = tiny_prior_training(&data, out, "2", &[&["--batch-size", "4"], extra].concat());
        unclip(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let out = prior(&first, &["--set", "train.ema_decay=0.5", "--lr", "0.01"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let used: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(first.join("recipe.json")).unwrap()).unwrap();
    assert_eq!(used["train"]["ema_decay"], serde_json::json!(0.5));
    assert_eq!(used["train"]["learning_rate"], serde_json::json!(0.01));
    // A second run into the same folder without --resume would mix the two: refused, untouched.
    let before = std::fs::read(first.join("recipe.json")).unwrap();
    let out = prior(&first, &["--lr", "0.02"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--resume"), "{}", stderr(&out));
    assert_eq!(std::fs::read(first.join("recipe.json")).unwrap(), before);
    // A refused --resume (another architecture; nothing left to train) keeps the run's recipe.
    for (extra, named) in [
        (
            &["--resume", "--set", "prior.num_layers=3"][..],
            "parameters",
        ),
        (&["--resume"][..], "step 2 already"),
    ] {
        let out = prior(&first, extra);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(named), "{extra:?}: {}", stderr(&out));
        assert_eq!(std::fs::read(first.join("recipe.json")).unwrap(), before);
    }
    // A misspelt field inside a section of a recipe file is named, not trained as the default.
    let mut misspelt: serde_json::Value = serde_json::from_slice(&before).unwrap();
    misspelt["prior"]["num_layer"] = serde_json::json!(3);
    let misspelt_path = dir.join("misspelt.json");
    std::fs::write(&misspelt_path, misspelt.to_string()).unwrap();
    let out = prior(&dir.join("misspelt"), &["--config", s(&misspelt_path)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("prior.num_layer"), "{}", stderr(&out));
    let again = dir.join("again");
    let out = prior(&again, &["--config", s(&first.join("recipe.json"))]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        std::fs::read_to_string(again.join("recipe.json")).unwrap(),
        std::fs::read_to_string(first.join("recipe.json")).unwrap()
    );
}

#[test]
fn outputs_that_hold_the_users_files_are_not_replaced() {
    let dir = scratch("keep-user-files");
    // convert onto the folder it reads from.
    let clip = dir.join("clip");
    copy_dir(&fixtures().join("clip_tiny"), &clip);
    let tokenizer = std::fs::read(clip.join("tokenizer.json")).unwrap();
    let out = unclip(&[
        "convert",
        "--model",
        s(&clip),
        "--layout",
        "full",
        "--out",
        s(&clip),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("--model folder itself"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read(clip.join("tokenizer.json")).unwrap(),
        tokenizer
    );
    // assemble into a folder of other files, or onto a file.
    let notes = dir.join("notes");
    std::fs::create_dir_all(&notes).unwrap();
    std::fs::write(notes.join("notes.txt"), "mine").unwrap();
    let file = dir.join("ok.png");
    std::fs::write(&file, "mine").unwrap();
    let variation = fixtures().join("unclip_tiny_variation");
    let decoder = fixtures().join("unclip_tiny");
    for (target, named) in [(&notes, "not a pipeline folder"), (&file, "is a file")] {
        let out = unclip(&[
            "assemble",
            "--clip",
            s(&variation),
            "--decoder",
            s(&decoder),
            "--out",
            s(target),
        ]);
        assert_eq!(out.status.code(), Some(1));
        assert!(stderr(&out).contains(named), "{}", stderr(&out));
    }
    assert_eq!(std::fs::read(notes.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read(&file).unwrap(), b"mine");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        3,
        "nothing else left"
    );
    // Parts that load on their own but not together are refused, and nothing is written.
    let shapes = fixtures().join("../../../models/shapes");
    let mismatched = dir.join("mismatched");
    let out = unclip(&[
        "assemble",
        "--clip",
        s(&fixtures().join("clip_tiny")),
        "--prior",
        s(&shapes),
        "--decoder",
        s(&shapes),
        "--out",
        s(&mismatched),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("do not fit together"),
        "{}",
        stderr(&out)
    );
    assert!(!mismatched.exists());
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 3);
    // convert, tokenizer, data shapes and a new training run write whole folders: into one
    // holding other files, or onto a file, they are refused and nothing is touched.
    let captions = dir.join("captions.txt");
    std::fs::write(&captions, "a red circle\na blue square\n").unwrap();
    let clip_tiny = fixtures().join("clip_tiny");
    for target in [&notes, &captions] {
        let named = if target.is_file() {
            "is a file"
        } else {
            "not empty"
        };
        let commands: [Vec<&str>; 4] = [
            vec![
                "convert",
                "--model",
                s(&clip_tiny),
                "--layout",
                "text",
                "--out",
                s(target),
            ],
            vec![
                "tokenizer",
                "--captions",
                s(&captions),
                "--vocab-size",
                "600",
                "--out",
                s(target),
            ],
            vec!["data", "shapes", "--n", "4", "--out", s(target)],
            vec![
                "train",
                "prior",
                "--preset",
                "tiny",
                "--data",
                "/nonexistent",
                "--clip",
                s(&clip_tiny),
                "--out",
                s(target),
            ],
        ];
        for args in commands {
            let out = unclip(&args);
            assert_eq!(out.status.code(), Some(1), "{args:?}");
            let err = stderr(&out);
            assert!(
                err.contains(named) && err.contains("--out"),
                "{args:?}: {err}"
            );
        }
    }
    assert_eq!(std::fs::read(notes.join("notes.txt")).unwrap(), b"mine");
    assert_eq!(std::fs::read_dir(&notes).unwrap().count(), 1);
    std::fs::remove_file(&captions).unwrap();
    // An unquoted prompt is one prompt, not one per word.
    let image = dir.join("one.png");
    let out = unclip(&[
        "generate",
        "--model",
        s(&fixtures().join("unclip_tiny")),
        "a",
        "red",
        "circle",
        "--output",
        s(&image),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (w, h) = image::image_dimensions(&image).unwrap();
    assert_eq!(w, h, "one image, not a grid or several files");
    assert!(!dir.join("one-1.png").exists());
    std::fs::remove_file(&image).unwrap();
    // The output's extension picks the format; one it cannot write is refused before sampling.
    let jpeg = dir.join("one.jpg");
    let tiny = fixtures().join("unclip_tiny");
    let out = unclip(&["generate", "--model", s(&tiny), "x", "--output", s(&jpeg)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(&std::fs::read(&jpeg).unwrap()[..3], &[0xFF, 0xD8, 0xFF]);
    std::fs::remove_file(&jpeg).unwrap();
    let text = dir.join("one.txt");
    let out = unclip(&["generate", "--model", s(&tiny), "x", "--output", s(&text)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("allowed: .png, .jpg"),
        "{}",
        stderr(&out)
    );
    assert!(!text.exists());
    // A model that is neither a folder nor a built-in name.
    let out = unclip(&["generate", "--model", "emoj", "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("emoji, shapes"), "{}", stderr(&out));
}

#[test]
fn converted_layouts_reload_and_embed() {
    let model = fixtures().join("clip_tiny");
    let dir = scratch("convert");
    let text_dir = dir.join("text");
    let out = unclip(&[
        "convert",
        "--model",
        s(&model),
        "--layout",
        "text",
        "--out",
        s(&text_dir),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(text_dir.join("config.json")).unwrap())
            .unwrap();
    assert_eq!(config["architectures"][0], "CLIPTextModelWithProjection");
    let out = unclip(&[
        "embed",
        "--model",
        s(&text_dir),
        "--text",
        "a cat",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = unclip(&[
        "embed",
        "--model",
        s(&text_dir),
        "--image",
        s(&fixtures().join("images/image_0.png")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no vision tower"), "{}", stderr(&out));
    // A pipeline's text tower converts to a folder that embeds as the pipeline does; a full
    // CLIPModel needs the temperature no pipeline stores.
    let pipeline = fixtures().join("unclip_tiny_variation");
    let from_pipeline = dir.join("from-pipeline");
    let convert = |layout: &str, out: &Path| {
        unclip(&[
            "convert",
            "--model",
            s(&pipeline),
            "--layout",
            layout,
            "--out",
            s(out),
        ])
    };
    let out = convert("text", &from_pipeline);
    assert!(out.status.success(), "{}", stderr(&out));
    let embed = |model: &Path| {
        let out = unclip(&["embed", "--model", s(model), "--text", "a cat", "--json"]);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    assert_eq!(embed(&from_pipeline), embed(&pipeline));
    let out = convert("full", &dir.join("full-from-pipeline"));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("logit_scale"), "{}", stderr(&out));
    // A model stored in f16 (the built-in ones) is written in f16.
    let shapes_text = dir.join("shapes-text");
    let out = unclip(&[
        "convert",
        "--model",
        s(&fixtures().join("../../../models/shapes")),
        "--layout",
        "text",
        "--out",
        s(&shapes_text),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tensors =
        candle_core::safetensors::load(shapes_text.join("model.safetensors"), &Device::Cpu)
            .unwrap();
    assert!(tensors
        .values()
        .all(|t| t.dtype() == candle_core::DType::F16));
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let path = entry.unwrap().path();
        let target = dst.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

#[test]
fn generate_replays_a_reference_noise_tape_and_writes_pngs() {
    let dir = scratch("generate");
    let model = fixtures().join("unclip_tiny");
    let tape = fixtures().join("unclip_case_a.safetensors");
    let png = dir.join("a.png");
    let tensor = dir.join("a.safetensors");
    let out = unclip(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "a red circle",
        "--prior-steps",
        "4",
        "--decoder-steps",
        "4",
        "--super-res-steps",
        "3",
        "--noise-tape",
        s(&tape),
        "--save-tensor",
        s(&tensor),
        "--output",
        s(&png),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let img = image::open(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (32, 32));
    let got = candle_core::safetensors::load(&tensor, &Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(&tape, &Device::Cpu).unwrap();
    let diff = (&got["image"] - &want["images"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap();
    assert!(diff.to_scalar::<f32>().unwrap() < 2e-3);

    // Several images: numbered files, or one grid.
    let out = unclip(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "a cat",
        "--n",
        "2",
        "--prior-steps",
        "2",
        "--decoder-steps",
        "2",
        "--super-res-steps",
        "2",
        "--output",
        s(&dir.join("b.png")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("b-0.png").is_file() && dir.join("b-1.png").is_file());
    let out = unclip(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "a cat",
        "--n",
        "2",
        "--grid",
        "--prior-steps",
        "2",
        "--decoder-steps",
        "2",
        "--super-res-steps",
        "2",
        "--sampler",
        "dpm++",
        "--output",
        s(&dir.join("grid.png")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        image::open(dir.join("grid.png")).unwrap().width(),
        2 * 32 + 3 * 2
    );
}

#[test]
fn vary_writes_variations_of_an_image() {
    let dir = scratch("vary");
    let model = fixtures().join("unclip_tiny_variation");
    let image = fixtures().join("images/image_0.png");
    let out = unclip(&[
        "vary",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--n",
        "2",
        "--decoder-steps",
        "3",
        "--super-res-steps",
        "2",
        "--sampler",
        "ddim",
        "--output",
        s(&dir.join("v.png")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("v-0.png").is_file() && dir.join("v-1.png").is_file());
}

#[test]
fn pipeline_bad_inputs_are_named() {
    let model = fixtures().join("unclip_tiny");
    // One sampling step divides by zero in the reference: refused.
    let out = unclip(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "x",
        "--decoder-steps",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("allowed: 2..=1000"),
        "{}",
        stderr(&out)
    );
    // An eta the sampler would ignore is refused, naming the sampler that takes one.
    for sampler in ["ddpm", "dpm++"] {
        let out = unclip(&[
            "generate",
            "--model",
            s(&model),
            "--prompt",
            "x",
            "--sampler",
            sampler,
            "--eta",
            "0.5",
        ]);
        assert_eq!(out.status.code(), Some(1));
        let err = stderr(&out);
        assert!(
            err.contains("--eta") && err.contains("ddim") && err.contains(sampler),
            "{err}"
        );
    }
    let prompts = scratch("eta-prompts").join("prompts.txt");
    std::fs::write(&prompts, "a red circle\n").unwrap();
    let out = unclip(&[
        "eval",
        "shapes",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
        "--eta",
        "0.5",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--eta"), "{}", stderr(&out));
    // Variations need an image encoder.
    let out = unclip(&[
        "vary",
        "--model",
        s(&model),
        "--image",
        s(&fixtures().join("images/image_0.png")),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("image_encoder"), "{}", stderr(&out));
    // A missing component is named.
    let dir = scratch("no-prior-proj");
    copy_dir(&model, &dir);
    std::fs::remove_dir_all(dir.join("text_proj")).unwrap();
    let out = unclip(&["generate", "--model", s(&dir), "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("text_proj"), "{}", stderr(&out));
    // Components whose sizes disagree are named before any sampling.
    let dir = scratch("mismatch");
    copy_dir(&model, &dir);
    let cfg_path = dir.join("text_proj/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["cross_attention_dim"] = serde_json::json!(40);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    // A text_proj that is consistent in itself (cross-attention width 40 instead of 48).
    let weights = dir.join("text_proj/diffusion_pytorch_model.safetensors");
    let mut tensors = candle_core::safetensors::load(&weights, &Device::Cpu).unwrap();
    for t in tensors.values_mut() {
        let rows = t.dim(0).unwrap();
        if rows == 48 || rows == 4 * 48 {
            *t = t.narrow(0, 0, rows / 48 * 40).unwrap();
        }
    }
    candle_core::safetensors::save(&tensors, &weights).unwrap();
    let out = unclip(&["generate", "--model", s(&dir), "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("cross_attention_dim"),
        "{}",
        stderr(&out)
    );
    // A decoder whose size no downsampler chain can take: named with its file, at load.
    let dir = scratch("odd-sample-size");
    copy_dir(&model, &dir);
    let cfg_path = dir.join("decoder/config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["sample_size"] = serde_json::json!(17);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = unclip(&["generate", "--model", s(&dir), "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("decoder/config.json") && err.contains("sample_size"),
        "{err}"
    );
    // A schedule too short to plan is named with its file, at load.
    let dir = scratch("zero-train-steps");
    copy_dir(&model, &dir);
    let cfg_path = dir.join("decoder_scheduler/scheduler_config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    cfg["num_train_timesteps"] = serde_json::json!(0);
    std::fs::write(&cfg_path, cfg.to_string()).unwrap();
    let out = unclip(&["generate", "--model", s(&dir), "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("decoder_scheduler/scheduler_config.json")
            && err.contains("num_train_timesteps"),
        "{err}"
    );
    // An unreadable input image.
    let text = scratch("vary-bad").join("x.png");
    std::fs::write(&text, "not a png").unwrap();
    let out = unclip(&[
        "vary",
        "--model",
        s(&fixtures().join("unclip_tiny_variation")),
        "--image",
        s(&text),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("x.png"), "{}", stderr(&out));
}

#[test]
fn a_cause_is_printed_once() {
    // The library writes each cause into its message; printing the error chain must not repeat it.
    let dir = scratch("bad-sampling-once");
    copy_dir(&fixtures().join("unclip_tiny"), &dir);
    std::fs::write(dir.join("sampling.json"), r#"{"guidance": 3}"#).unwrap();
    let out = unclip(&["generate", "--model", s(&dir), "--prompt", "x"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("sampling.json"), "{err}");
    assert_eq!(err.matches("unknown field `guidance`").count(), 1, "{err}");
    // The same for a file that cannot be read at all.
    let missing = dir.join("no-such-prompts.txt");
    let out = unclip(&[
        "eval",
        "shapes",
        "--model",
        s(&dir),
        "--prompts",
        s(&missing),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("no-such-prompts.txt"), "{err}");
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

#[test]
fn training_killed_with_sigkill_resumes_to_the_uninterrupted_result() {
    let dir = scratch("kill-resume");
    let data = dir.join("data");
    assert!(unclip(&[
        "data",
        "shapes",
        "--n",
        "40",
        "--out",
        s(&data),
        "--seed",
        "3"
    ])
    .status
    .success());
    let train = |out: &Path, extra: &[&str]| -> Vec<String> {
        let flags = [
            "--checkpoint-every",
            "3",
            "--batch-size",
            "8",
            "--seed",
            "5",
        ];
        tiny_prior_training(&data, out, "12", &[&flags[..], extra].concat())
    };
    let straight = dir.join("straight");
    let out = Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args(train(&straight, &[]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let killed = dir.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args(train(&killed, &[]))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let first = killed.join("checkpoints/step-00000003/training_state.json");
    let started = std::time::Instant::now();
    while !first.is_file() && started.elapsed().as_secs() < 120 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(first.is_file(), "a checkpoint was written before the kill");
    let out = Command::new(env!("CARGO_BIN_EXE_unclip"))
        .args(train(&killed, &["--resume"]))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    let weights = |root: &Path| {
        candle_core::safetensors::load(
            root.join("prior/diffusion_pytorch_model.safetensors"),
            &Device::Cpu,
        )
        .unwrap()
    };
    let (a, b) = (weights(&straight), weights(&killed));
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        let diff = (t - &b[name])
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff == 0.0, "{name} differs by {diff}");
    }
    let log = std::fs::read_to_string(killed.join("train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 12);
}

#[test]
fn invert_reports_the_reconstruction_error_and_saves_the_noise() {
    let dir = scratch("invert");
    let model = fixtures().join("unclip_tiny_variation");
    let out = unclip(&[
        "invert",
        "--model",
        s(&model),
        "--image",
        s(&fixtures().join("images/image_0.png")),
        "--steps",
        "4",
        "--refine",
        "1",
        "--super-res-steps",
        "2",
        "--output",
        s(&dir.join("recon.png")),
        "--save-noise",
        s(&dir.join("noise.safetensors")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("PSNR") && stdout.contains("max |error|"),
        "{stdout}"
    );
    assert_eq!(image::open(dir.join("recon.png")).unwrap().width(), 32);
    let saved =
        candle_core::safetensors::load(dir.join("noise.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(saved["x_T"].dims(), &[1, 3, 16, 16]);
}

#[test]
fn vary_with_inversion_writes_variations() {
    let dir = scratch("vary-invert");
    let out = unclip(&[
        "vary",
        "--model",
        s(&fixtures().join("unclip_tiny_variation")),
        "--image",
        s(&fixtures().join("images/image_1.png")),
        "--invert",
        "--refine",
        "1",
        "--eta",
        "0.5",
        "--n",
        "2",
        "--decoder-steps",
        "3",
        "--super-res-steps",
        "2",
        "--output",
        s(&dir.join("v.png")),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(dir.join("v-0.png").is_file() && dir.join("v-1.png").is_file());
}

#[test]
fn interpolate_writes_frames_a_sheet_and_a_gif() {
    let dir = scratch("interpolate");
    let out_dir = dir.join("frames");
    let model = fixtures().join("unclip_tiny_variation");
    let (from, to) = (
        fixtures().join("images/image_0.png"),
        fixtures().join("images/image_1.png"),
    );
    let base = [
        "interpolate",
        "--model",
        s(&model),
        "--from",
        s(&from),
        "--to",
        s(&to),
        "--steps",
        "3",
        "--refine",
        "1",
        "--super-res-steps",
        "2",
        "--output",
        s(&out_dir),
    ];
    let out = unclip(&[&base[..], &["--frames", "3"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    for name in [
        "frame-000.png",
        "frame-002.png",
        "sheet.png",
        "interpolation.gif",
    ] {
        assert!(out_dir.join(name).is_file(), "{name} missing");
    }
    let gif = std::fs::read(out_dir.join("interpolation.gif")).unwrap();
    assert_eq!(&gif[..6], b"GIF89a");

    let out = unclip(&[&base[..], &["--frames", "1"]].concat());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("allowed: 2..=64"), "{}", stderr(&out));
}

#[test]
fn textdiff_writes_a_sheet_and_refuses_bad_theta() {
    let dir = scratch("textdiff");
    let model = fixtures().join("unclip_tiny_variation");
    let image = fixtures().join("images/image_2.png");
    let output = dir.join("diff.png");
    let base = [
        "textdiff",
        "--model",
        s(&model),
        "--image",
        s(&image),
        "--from",
        "a photo of a cat",
        "--to",
        "an anime drawing of a cat",
        "--steps",
        "3",
        "--refine",
        "1",
        "--super-res-steps",
        "2",
        "--frames",
        "2",
        "--output",
        s(&output),
    ];
    let out = unclip(&base);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(output.is_file() && dir.join("diff-1.png").is_file());

    let out = unclip(&[&base[..], &["--max-theta", "1.5"]].concat());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("--max-theta 1.5; allowed"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn edit_repaints_the_transparent_region_and_names_bad_masks() {
    let dir = scratch("edit");
    let model = fixtures().join("unclip_tiny");
    let hole = |x: u32, y: u32| (8..24).contains(&x) && (8..24).contains(&y);
    let image = image::RgbaImage::from_fn(32, 32, |x, y| {
        image::Rgba([
            (x * 8) as u8,
            (y * 8) as u8,
            100,
            if hole(x, y) { 0 } else { 255 },
        ])
    });
    let image_path = dir.join("in.png");
    image.save(&image_path).unwrap();
    let output = dir.join("out.png");
    let base = [
        "edit",
        "--model",
        s(&model),
        "--image",
        s(&image_path),
        "--prompt",
        "a red square",
        "--prior-steps",
        "2",
        "--decoder-steps",
        "3",
        "--super-res-steps",
        "2",
        "--resample",
        "2",
        "--output",
        s(&output),
    ];
    let out = unclip(&base);
    assert!(out.status.success(), "{}", stderr(&out));
    let result = image::open(&output).unwrap().to_rgb8();
    for (x, y, p) in result.enumerate_pixels() {
        if !hole(x, y) {
            assert_eq!(p.0[..3], image.get_pixel(x, y).0[..3], "({x}, {y})");
        }
    }

    let small_mask = dir.join("mask.png");
    image::RgbaImage::new(16, 16).save(&small_mask).unwrap();
    let out = unclip(&[&base[..], &["--mask", s(&small_mask)]].concat());
    assert!(!out.status.success());
    assert!(stderr(&out).contains("same size"), "{}", stderr(&out));

    let opaque = dir.join("opaque.png");
    image::RgbImage::new(32, 32).save(&opaque).unwrap();
    let out = unclip(&[&base[..], &["--mask", s(&opaque)]].concat());
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("nothing to repaint"),
        "{}",
        stderr(&out)
    );
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const FEW_STEPS: [&str; 6] = [
    "--prior-steps",
    "2",
    "--decoder-steps",
    "2",
    "--super-res-steps",
    "2",
];

#[test]
fn eval_shapes_runs_on_the_tiny_pipeline_and_reports_every_form() {
    let dir = scratch("eval-shapes");
    let prompts = dir.join("prompts.txt");
    std::fs::write(
        &prompts,
        "# one of each form\na red circle\nthree blue squares\n\
         a red circle and a green triangle\na yellow square above a purple circle\n",
    )
    .unwrap();
    let model = fixtures().join("unclip_tiny");
    let save = dir.join("saved");
    let mut args = vec![
        "eval",
        "shapes",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
        "--images-per-prompt",
        "2",
        "--save-dir",
        s(&save),
    ];
    args.extend(FEW_STEPS);
    let out = unclip(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "8 images",
        "single ",
        "counting ",
        "pair ",
        "relation ",
        "colors ",
        "binding ",
        "overall ",
    ] {
        assert!(text.contains(line), "no `{line}` in:\n{text}");
    }
    let pngs = std::fs::read_dir(&save)
        .unwrap()
        .filter(|e| {
            let name = e
                .as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .into_owned();
            name.ends_with("-pass.png") || name.ends_with("-fail.png")
        })
        .count();
    assert_eq!(pngs, 8);
    // sheet.png: the 8 images framed, 2 per prompt, 2 prompts per row.
    let sheet = image::open(save.join("sheet.png")).unwrap();
    let first = image::open(save.join("0000-0-fail.png"))
        .or_else(|_| image::open(save.join("0000-0-pass.png")))
        .unwrap();
    assert_eq!(sheet.width(), 4 * (first.width() + 4) + 5 * 2);
    assert_eq!(sheet.height(), 2 * (first.height() + 4) + 3 * 2);
    let verdicts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(save.join("verdicts.json")).unwrap()).unwrap();
    let images = verdicts["images"].as_array().unwrap();
    assert_eq!(images.len(), 8);
    assert_eq!(images[2]["prompt"], "three blue squares");
    // Each failed image names its kind of failure, and the report counts them by form.
    let failed = images.iter().filter(|i| i["pass"] == false).count();
    assert!(images
        .iter()
        .all(|i| (i["pass"] == true) == i["failure"].is_null()));
    assert_eq!(
        text.contains("failed images, by what was wrong:"),
        failed > 0,
        "{text}"
    );
    let file = images[2]["file"].as_str().unwrap();
    assert!(save.join(file).is_file(), "{file}");

    // --json: the same score, machine-readable; a non-empty --save-dir is refused.
    args.push("--json");
    let out = unclip(&args);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));
    let args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--save-dir" && *a != s(&save))
        .collect();
    let out = unclip(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let score: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(score, verdicts["score"]);
    for form in ["single", "counting", "pair", "relation"] {
        assert_eq!(score["per_form"][form]["images"], 2, "{form}");
    }
}

#[test]
fn eval_shapes_from_rendered_scenes_scores_one_and_reports_placement() {
    let dir = scratch("eval-shapes-scene");
    let prompts = dir.join("prompts.txt");
    std::fs::write(
        &prompts,
        "a red circle\na green square to the left of a blue triangle\n",
    )
    .unwrap();
    let model = fixtures().join("unclip_tiny");
    let args = [
        "eval",
        "shapes",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
        "--start",
        "scene",
    ];
    let out = unclip(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("overall   1.000"), "{text}");
    assert!(
        text.contains("placement 1.000  (4/4 relation images"),
        "{text}"
    );
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let out = unclip(&json_args);
    assert!(out.status.success(), "{}", stderr(&out));
    let score: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(score["placement"]["right"], 4);
    assert_eq!(score["placement"]["reversed"], 0);
    assert_eq!(score["placement"]["sideways"], 0);
}

#[test]
fn eval_shapes_names_a_prompt_outside_the_grammar() {
    let dir = scratch("eval-bad-prompt");
    let prompts = dir.join("prompts.txt");
    std::fs::write(&prompts, "a red circle\na red hexagon\n").unwrap();
    let model = fixtures().join("unclip_tiny");
    let out = unclip(&[
        "eval",
        "shapes",
        "--model",
        s(&model),
        "--prompts",
        s(&prompts),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains("prompts.txt:2"), "{err}");
    assert!(err.contains("\"a red hexagon\""), "{err}");
}

#[test]
fn eval_captions_scores_generated_and_real_images() {
    let dir = scratch("eval-captions");
    let model = dir.join("model");
    copy_dir(&fixtures().join("unclip_tiny"), &model);
    for part in ["image_encoder", "feature_extractor"] {
        copy_dir(
            &fixtures().join("unclip_tiny_variation").join(part),
            &model.join(part),
        );
    }
    let data = dir.join("data");
    let made = unclip(&["data", "shapes", "--n", "12", "--out", s(&data)]);
    assert!(made.status.success(), "{}", stderr(&made));
    let mut args = vec![
        "eval",
        "captions",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--limit",
        "6",
    ];
    args.extend(FEW_STEPS);
    let out = unclip(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for word in [
        "6 pairs",
        "CLIP score",
        "R-precision",
        "Fréchet",
        "generated",
        "real",
    ] {
        assert!(text.contains(word), "no `{word}` in:\n{text}");
    }
    args.push("--json");
    let out = unclip(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["pairs"], 6);
    for set in ["generated", "real"] {
        assert!(report[set]["clip_score"].is_number(), "{report}");
        assert!(report[set]["r_precision"]["score"].is_number(), "{report}");
        assert!(report[set]["frechet_distance"].is_number(), "{report}");
    }
}

#[test]
fn shapes_eval_prompts_are_never_drawn_for_training() {
    let dir = scratch("eval-holdout");
    let list = dir.join("eval.txt");
    let out = unclip(&[
        "data",
        "shapes-eval-prompts",
        "--out",
        s(&list),
        "--holdout",
        "0.3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let held: std::collections::HashSet<String> = std::fs::read_to_string(&list)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert!(held.len() > 20, "{}", held.len());
    let data = dir.join("data");
    let out = unclip(&[
        "data",
        "shapes",
        "--n",
        "400",
        "--out",
        s(&data),
        "--holdout",
        "0.3",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let captions = unclip::data::ImageFolder::scan(&data).unwrap();
    for item in &captions.items {
        assert!(!held.contains(&item.caption), "{}", item.caption);
    }
}

#[test]
fn generate_in_bf16_runs_where_the_cpu_has_it_and_says_why_not_elsewhere() {
    let dir = scratch("generate-bf16");
    let model = fixtures().join("unclip_tiny");
    let tape = fixtures().join("unclip_case_a.safetensors");
    let tensor = dir.join("a.safetensors");
    let out = unclip(&[
        "generate",
        "--model",
        s(&model),
        "--prompt",
        "a red circle",
        "--prior-steps",
        "4",
        "--decoder-steps",
        "4",
        "--super-res-steps",
        "3",
        "--noise-tape",
        s(&tape),
        "--save-tensor",
        s(&tensor),
        "--precision",
        "bf16",
        "--output",
        s(&dir.join("a.png")),
    ]);
    if !unclip::nn::bf16_supported() {
        assert!(!out.status.success());
        assert!(stderr(&out).contains("AVX-512 BF16"), "{}", stderr(&out));
        return;
    }
    assert!(out.status.success(), "{}", stderr(&out));
    // Same draws as the f32 reference: the images differ only by the products' rounding, which
    // the tiny model's random weights and ancestral steps amplify at a few pixels (measured: mean
    // 0.011, 1% of values off by more than 0.1), so the mean is what is bounded.
    let got = candle_core::safetensors::load(&tensor, &Device::Cpu).unwrap();
    let want = candle_core::safetensors::load(&tape, &Device::Cpu).unwrap();
    let diff = (&got["image"] - &want["images"])
        .unwrap()
        .abs()
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        diff < 0.03,
        "bf16 image differs from f32 by {diff} on average"
    );
}

#[test]
fn shapes_clip_eval_and_embed_read_a_pipeline_folder() {
    let prompts = fixtures().join("../../../models/shapes/eval-prompts.txt");
    let out = unclip(&[
        "eval",
        "shapes-clip",
        "--model",
        "shapes",
        "--prompts",
        s(&prompts),
        "--scenes-per-prompt",
        "2",
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let score: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for form in ["single", "counting", "pair", "relation"] {
        let accuracy = score["per_form"][form]["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&accuracy), "{form}: {accuracy}");
    }
    for kind in ["attribute", "count", "binding", "order"] {
        assert!(score["per_negative"][kind]["comparisons"].as_u64().unwrap() > 0);
    }
    // Any trained CLIP tells "a red circle" from "a blue circle".
    let attribute = score["per_negative"]["attribute"]["accuracy"]
        .as_f64()
        .unwrap();
    assert!(attribute > 0.9, "attribute negatives: {attribute}");
    // What the decoder reads of a changed word, for the 25 relation prompts: this CLIP keeps a
    // color change and all but erases a relation's (the README's numbers).
    let (relation, color) = (&score["relation_word"], &score["color_word"]);
    assert_eq!(relation["prompts"], 25);
    assert_eq!(color["prompts"], 25);
    for field in ["at_the_word", "after_the_word", "pooled"] {
        let (r, c) = (
            relation[field].as_f64().unwrap(),
            color[field].as_f64().unwrap(),
        );
        assert!((-1.0..=1.0 + 1e-6).contains(&r), "{field}: {r}");
        assert!(c < r, "{field}: color {c} is not below relation {r}");
    }

    let dir = scratch("shapes-clip");
    let bad = dir.join("prompts.txt");
    std::fs::write(&bad, "a red circle\na photo of a dog\n").unwrap();
    let out = unclip(&[
        "eval",
        "shapes-clip",
        "--model",
        "shapes",
        "--prompts",
        s(&bad),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("a photo of a dog"),
        "{}",
        stderr(&out)
    );

    // embed takes the pipeline's towers; classify says why it cannot.
    let image = fixtures().join("images/image_0.png");
    let out = unclip(&[
        "embed",
        "--model",
        "shapes",
        "--text",
        "a red circle",
        "--image",
        s(&image),
        "--json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let embedded: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(embedded["text_embeds"][0].as_array().unwrap().len(), 128);
    assert_eq!(embedded["image_embeds"][0].as_array().unwrap().len(), 128);
    let pipeline = fixtures().join("../../../models/shapes");
    let out = unclip(&[
        "classify",
        "--model",
        s(&pipeline),
        "--image",
        s(&image),
        "--labels",
        "a red circle",
        "a blue square",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("logit_scale"), "{}", stderr(&out));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn generate_reranks_image_candidates_with_the_models_clip() {
    let dir = scratch("image-candidates");
    let few_steps = [
        "--prior-steps",
        "2",
        "--decoder-steps",
        "2",
        "--super-res-steps",
        "2",
    ];
    let mut args = vec!["generate", "--model", "shapes", "a red circle", "--n", "2"];
    args.extend(few_steps);
    let output = dir.join("ranked.png");
    args.extend(["--image-candidates", "3", "--output", s(&output)]);
    let out = unclip(&args);
    assert!(out.status.success(), "{}", stderr(&out));
    for i in 0..2 {
        let image = image::open(dir.join(format!("ranked-{i}.png"))).unwrap();
        assert_eq!((image.width(), image.height()), (64, 64));
    }

    let mut args = vec!["generate", "--model", "shapes", "a red circle"];
    args.extend(few_steps);
    args.extend(["--image-candidates", "0", "--output", s(&output)]);
    let out = unclip(&args);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("image candidates = 0; allowed: 1..=16"),
        "{}",
        stderr(&out)
    );

    // A text pipeline without an image tower cannot rank and says what it lacks.
    let model = fixtures().join("unclip_tiny");
    let mut args = vec!["generate", "--model", s(&model), "a cat"];
    args.extend(few_steps);
    args.extend(["--image-candidates", "2", "--output", s(&output)]);
    let out = unclip(&args);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("image_encoder"), "{}", stderr(&out));
}
