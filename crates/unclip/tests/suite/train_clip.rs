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
