//! Contrastive training end to end: loss falls, the checkpoint reloads as a CLIPModel folder,
//! and the trained model tells the colors apart.

use crate::common::color_folder;
use candle_core::Device;
use unclip::pipeline::ClipEmbedder;
use unclip::train::{load_recipe, run_training, ClipRecipe, ClipStage, RunOptions};

#[test]
fn tiny_clip_learns_colors_and_saves_a_loadable_folder() {
    let data = color_folder("train-clip", 6);
    let out = data.join("model");
    let mut recipe: ClipRecipe = load_recipe("clip", "tiny", None).unwrap();
    recipe.train.batch_size = 12;
    recipe.train.learning_rate = 1e-3;
    recipe.vocab_size = 600;
    let stage = ClipStage::new(&recipe, &data.to_string_lossy(), None, 3, &Device::Cpu).unwrap();
    let opts = RunOptions {
        data: data.to_string_lossy().into_owned(),
        val_data: None,
        out: out.clone(),
        max_steps: 60,
        checkpoint_every: 25,
        keep_checkpoints: 2,
        validate_every: 20,
        seed: 3,
        resume: false,
        workers: 2,
        stop_at: None,
        init_from: None,
        recipe: None,
    };
    let mut losses = Vec::new();
    let summary = run_training(&stage, &recipe.train, &opts, &mut |r| losses.push(r.loss)).unwrap();
    assert_eq!(summary.steps, 60);
    // Batches of 12 hold 3 images per caption on average, so the loss cannot go below about
    // ln 3 = 1.10; it starts near ln 12 = 2.48.
    let first = losses[0];
    let late: f32 = losses[losses.len() - 10..].iter().sum::<f32>() / 10.0;
    assert!(first > 2.0, "an untrained model is near chance: {first}");
    assert!(
        late < 1.35,
        "loss should fall to near its floor of ln 3: first {first}, last ten {late}"
    );

    for name in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json",
        "preprocessor_config.json",
        "train_log.jsonl",
    ] {
        assert!(out.join(name).is_file(), "{name} written");
    }
    let embedder = ClipEmbedder::load(&out, &Device::Cpu).unwrap();
    let labels = [
        "a red picture",
        "a green picture",
        "a blue picture",
        "a yellow picture",
    ];
    let mut correct = 0;
    for (ci, _) in labels.iter().enumerate() {
        let probs = embedder
            .classify(&data.join(format!("{ci}_0.png")), &labels)
            .unwrap();
        let best = probs
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(i, _)| i)
            .unwrap();
        correct += (best == ci) as usize;
    }
    assert!(
        correct >= 3,
        "zero-shot accuracy {correct}/4 after training"
    );
    let logit_scale = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu)
        .unwrap()["logit_scale"]
        .to_scalar::<f32>()
        .unwrap();
    assert!(
        logit_scale <= 4.6052,
        "the temperature is clamped at ln 100: {logit_scale}"
    );
    std::fs::remove_dir_all(&data).unwrap();
}

/// NegCLIP-style training: each shapes caption adds a negative (objects exchanged, colors
/// exchanged, a count changed); the loss still falls, every parameter still learns, a caption
/// outside the grammar is named, and a pipeline folder's towers seed a fine-tuning run.
#[test]
fn shapes_hard_negatives_train_and_a_pipeline_seeds_fine_tuning() {
    use rand::SeedableRng;
    use unclip::clip::{load_clip_tensors, save_clip, ClipLayout};
    use unclip::data::shapes::{writer::write_shapes_dataset, Form};
    use unclip::train::{HardNegatives, TrainStage};

    let data = crate::common::scratch_dir("clip-negatives");
    write_shapes_dataset(&data, 48, 5, &Form::ALL).unwrap();
    let mut recipe: ClipRecipe = load_recipe("clip", "tiny", None).unwrap();
    recipe.train.batch_size = 8;
    recipe.train.learning_rate = 1e-3;
    recipe.vocab_size = 600;
    recipe.hard_negatives = HardNegatives::ShapesRounded;
    let stage = ClipStage::new(&recipe, &data.to_string_lossy(), None, 3, &Device::Cpu).unwrap();
    let out = data.join("model");
    let opts = RunOptions {
        data: data.to_string_lossy().into_owned(),
        val_data: None,
        out: out.clone(),
        max_steps: 40,
        checkpoint_every: 40,
        keep_checkpoints: 1,
        validate_every: 40,
        seed: 3,
        resume: false,
        workers: 1,
        stop_at: None,
        init_from: None,
        recipe: None,
    };
    let mut losses = Vec::new();
    run_training(&stage, &recipe.train, &opts, &mut |r| losses.push(r.loss)).unwrap();
    let first: f32 = losses[..5].iter().sum::<f32>() / 5.0;
    let late: f32 = losses[losses.len() - 5..].iter().sum::<f32>() / 5.0;
    assert!(
        late < first - 0.2,
        "loss should fall: first five {first}, last five {late}"
    );

    // The gradient of the loss with negatives reaches every parameter.
    let size = stage.image_size();
    let batch = unclip::train::Batch {
        pixels: candle_core::Tensor::rand(-1f32, 1.0, (4, 3, size, size), &Device::Cpu).unwrap(),
        captions: [
            "a red circle above a blue square",
            "a green triangle and a red square",
            "three yellow circles",
            "a small purple triangle",
        ]
        .map(String::from)
        .to_vec(),
        keys: vec![String::new(); 4],
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let loss = stage.loss(&batch, &mut rng).unwrap();
    let missing = crate::common::without_gradient(stage.params(), &loss);
    assert!(missing.is_empty(), "no gradient for {missing:?}");

    // A caption outside the grammar is named.
    let err = HardNegatives::Shapes
        .for_captions(&["a red picture".to_string()], &mut rng)
        .unwrap_err()
        .to_string();
    assert!(err.contains("a red picture"), "{err}");

    // A pipeline stores the towers apart (text_encoder/, image_encoder/, tokenizer/) and no
    // logit_scale: fine-tuning from one loads every tower weight.
    let pipeline = data.join("pipeline");
    let tensors = load_clip_tensors(&out, &Device::Cpu).unwrap();
    save_clip(
        &pipeline.join("text_encoder"),
        stage.config(),
        &tensors,
        ClipLayout::Text,
    )
    .unwrap();
    save_clip(
        &pipeline.join("image_encoder"),
        stage.config(),
        &tensors,
        ClipLayout::Vision,
    )
    .unwrap();
    let fresh = ClipStage::new(
        &recipe,
        &data.to_string_lossy(),
        Some(&out),
        9,
        &Device::Cpu,
    )
    .unwrap();
    fresh.init_from(&pipeline).unwrap();
    let trained: std::collections::HashMap<String, candle_core::Tensor> =
        tensors.into_iter().collect();
    for (name, var) in fresh.params().vars() {
        if name == "logit_scale" {
            continue;
        }
        let diff = crate::common::max_abs_diff(var.as_tensor(), &trained[&name]);
        assert!(diff == 0.0, "{name} not loaded from the pipeline: {diff}");
    }
    std::fs::remove_dir_all(&data).unwrap();
}
