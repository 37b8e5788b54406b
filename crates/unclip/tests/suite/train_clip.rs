//! Contrastive training end to end: loss falls, the checkpoint reloads as a CLIPModel folder,
//! and the trained model tells the colors apart.

use crate::common::color_folder;
use candle_core::Device;
use unclip::pipeline::ClipEmbedder;
use unclip::train::{train_clip, ClipRecipe, ClipTrainOptions};

#[test]
fn tiny_clip_learns_colors_and_saves_a_loadable_folder() {
    let data = color_folder("train-clip", 6);
    let out = data.join("model");
    let mut recipe = ClipRecipe::preset("tiny").unwrap();
    recipe.batch_size = 12;
    recipe.vocab_size = 600;
    let opts = ClipTrainOptions {
        data: data.clone(),
        out: out.clone(),
        recipe,
        max_steps: 60,
        checkpoint_every: 25,
        seed: 3,
        tokenizer: None,
    };
    let mut losses = Vec::new();
    let summary = train_clip(&opts, &mut |r| losses.push(r.loss)).unwrap();
    assert_eq!(summary.steps, 60);
    assert_eq!(summary.pairs, 24);
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
    std::fs::remove_dir_all(&data).unwrap();
}
