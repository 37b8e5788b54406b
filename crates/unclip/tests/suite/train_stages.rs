//! The prior, decoder and upsampler trainers on a small shapes dataset with tiny models: each
//! drives its loss down, a run stopped at a checkpoint and resumed reaches exactly the state of
//! an uninterrupted run, a checkpoint of another architecture is refused, and the trained parts
//! assemble into a pipeline that generates and varies images.

use crate::common::{max_abs_diff, oracle_dir, scratch_dir, without_gradient};
use candle_core::{Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use unclip::data::shapes::{write_shapes_dataset, Form};
use unclip::data::{stream, DataSource, StreamOptions};
use unclip::diffusion::NoiseSource;
use unclip::pipeline::{assemble, GenerateOptions, PipelineParts, UnclipPipeline};
use unclip::train::{
    run_training, Batch, DecoderRecipe, DecoderStage, DecoderTextEncoderRecipe, FrozenClip,
    HighNoiseRecipe, PriorRecipe, PriorStage, RunOptions, TrainStage, UpsamplerRecipe,
    UpsamplerStage,
};

/// A CLIP whose text width equals its projection (as unCLIP needs), from the oracle fixtures.
fn clip_dir() -> PathBuf {
    oracle_dir().join("clip_tiny_legacy")
}

fn clip() -> FrozenClip {
    FrozenClip::load(&clip_dir(), &Device::Cpu).unwrap()
}

fn dataset(tag: &str, n: usize) -> PathBuf {
    let dir = scratch_dir(tag).join("data");
    write_shapes_dataset(&dir, n, 7, &Form::ALL).unwrap();
    dir
}

fn train_json() -> serde_json::Value {
    serde_json::json!({"learning_rate": 2e-3, "warmup_steps": 0, "batch_size": 8, "grad_clip": 1.0, "ema_decay": 0.9})
}

fn prior_recipe() -> PriorRecipe {
    serde_json::from_value(serde_json::json!({
        "train": train_json(),
        "prior": {"num_attention_heads": 2, "attention_head_dim": 16, "num_layers": 1},
        "scheduler": {"variance_type": "fixed_small_log", "prediction_type": "sample", "clip_sample_range": 5.0}
    }))
    .unwrap()
}

fn decoder_recipe() -> DecoderRecipe {
    serde_json::from_value(serde_json::json!({
        "train": train_json(),
        "unet": {"sample_size": 16, "in_channels": 3, "out_channels": 6, "block_out_channels": [8, 16], "layers_per_block": 1,
                 "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
                 "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
                 "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "attention_head_dim": 8, "cross_attention_dim": 16,
                 "class_embed_type": "identity", "resnet_time_scale_shift": "scale_shift", "norm_num_groups": 4},
        "text_proj": {"clip_extra_context_tokens": 4, "clip_embeddings_dim": 0, "time_embed_dim": 0, "cross_attention_dim": 16},
        "scheduler": {"variance_type": "learned_range", "prediction_type": "epsilon"}
    }))
    .unwrap()
}

fn upsampler_recipe() -> UpsamplerRecipe {
    serde_json::from_value(serde_json::json!({
        "train": train_json(),
        "unet": {"sample_size": 32, "in_channels": 6, "out_channels": 3, "block_out_channels": [8, 16], "layers_per_block": 1,
                 "down_block_types": ["ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"],
                 "up_block_types": ["ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"], "add_attention": false,
                 "norm_num_groups": 4},
        "scheduler": {"variance_type": "fixed_small_log", "prediction_type": "epsilon"},
        "low_resolution": 16
    }))
    .unwrap()
}

fn options(data: &Path, out: &Path, steps: usize) -> RunOptions {
    RunOptions {
        data: data.to_string_lossy().into_owned(),
        val_data: None,
        out: out.to_path_buf(),
        max_steps: steps,
        checkpoint_every: steps,
        keep_checkpoints: 2,
        validate_every: 0,
        seed: 11,
        resume: false,
        workers: 2,
        stop_at: None,
        init_from: None,
        recipe: None,
    }
}

/// A fixed batch of 16 images at the stage's size.
fn fixed_batch(data: &Path, size: usize) -> Batch {
    let source = DataSource::open(&data.to_string_lossy()).unwrap();
    let opts = StreamOptions {
        image_size: size,
        seed: 99,
        epoch: 0,
        skip: 0,
        shuffle_buffer: 8,
        workers: 1,
    };
    let samples: Vec<_> = stream(&source, &opts).unwrap().take(16).collect();
    let pixels: Vec<u8> = samples.iter().flat_map(|s| s.pixels.clone()).collect();
    let t = Tensor::from_vec(pixels, (samples.len(), size, size, 3), &Device::Cpu).unwrap();
    let t = t
        .permute((0, 3, 1, 2))
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap();
    Batch {
        pixels: ((t / 127.5).unwrap() - 1.0).unwrap(),
        captions: samples.iter().map(|s| s.caption.clone()).collect(),
        keys: samples.into_iter().map(|s| s.key).collect(),
    }
}

/// The loss on a fixed batch with a fixed RNG, averaged over a few draws of t and noise.
fn fixed_loss(stage: &dyn TrainStage, batch: &Batch) -> f32 {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    (0..4)
        .map(|_| {
            stage
                .loss(batch, &mut rng)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        })
        .sum::<f32>()
        / 4.0
}

fn assert_learns(stage: &dyn TrainStage, data: &Path, out: &Path, steps: usize) {
    let batch = fixed_batch(data, stage.image_size());
    let before = fixed_loss(stage, &batch);
    let summary = run_training(
        stage,
        &serde_json::from_value(train_json()).unwrap(),
        &options(data, out, steps),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(summary.steps, steps);
    let after = fixed_loss(stage, &batch);
    assert!(
        after < 0.8 * before,
        "{}: loss on a fixed batch {before} -> {after}",
        stage.name()
    );
    for file in ["train_log.jsonl", "loss.png"] {
        assert!(out.join(file).is_file(), "{file} written");
    }
    assert!(out
        .join("checkpoints")
        .join(format!("step-{steps:08}"))
        .join("training_state.json")
        .is_file());
}

#[test]
fn prior_learns_and_resumes_exactly() {
    let data = dataset("train-prior", 48);
    let root = data.parent().unwrap().to_path_buf();
    let stage =
        PriorStage::new(&prior_recipe(), clip(), &data.to_string_lossy(), 11, None).unwrap();
    assert_learns(&stage, &data, &root.join("learn"), 40);
    assert!(
        root.join("learn/prior/config.json").is_file()
            && root
                .join("learn/prior_scheduler/scheduler_config.json")
                .is_file()
    );

    // Uninterrupted: 6 steps. Interrupted: 3 steps (checkpoint), then resume to 6.
    let settings = serde_json::from_value(train_json()).unwrap();
    let straight =
        PriorStage::new(&prior_recipe(), clip(), &data.to_string_lossy(), 11, None).unwrap();
    run_training(
        &straight,
        &settings,
        &options(&data, &root.join("straight"), 6),
        &mut |_| {},
    )
    .unwrap();
    let first =
        PriorStage::new(&prior_recipe(), clip(), &data.to_string_lossy(), 11, None).unwrap();
    let mut interrupted = options(&data, &root.join("resumed"), 6);
    interrupted.stop_at = Some(3);
    run_training(&first, &settings, &interrupted, &mut |_| {}).unwrap();
    let second =
        PriorStage::new(&prior_recipe(), clip(), &data.to_string_lossy(), 11, None).unwrap();
    let mut resume = options(&data, &root.join("resumed"), 6);
    resume.resume = true;
    let summary = run_training(&second, &settings, &resume, &mut |_| {}).unwrap();
    assert_eq!((summary.first_step, summary.steps), (3, 6));
    for ((name, a), (_, b)) in straight
        .params()
        .tensors()
        .iter()
        .zip(second.params().tensors())
    {
        let diff = (a - &b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff == 0.0, "{name} differs by {diff} after resuming");
    }
    let log = std::fs::read_to_string(root.join("resumed/train_log.jsonl")).unwrap();
    assert_eq!(log.lines().count(), 6, "the log holds each step once");

    // A checkpoint of another architecture is refused by name.
    let mut bigger = prior_recipe();
    bigger.prior.num_layers = 2;
    let other = PriorStage::new(&bigger, clip(), &data.to_string_lossy(), 11, None).unwrap();
    let mut again = options(&data, &root.join("resumed"), 8);
    again.resume = true;
    let err = run_training(&other, &settings, &again, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("different architecture"), "{err}");
}

#[test]
fn prior_trains_from_precomputed_embeddings_identically() {
    let data = dataset("train-prior-cache", 24);
    let root = data.parent().unwrap().to_path_buf();
    let source = DataSource::open(&data.to_string_lossy()).unwrap();
    let file = root.join("embeddings.safetensors");
    let n = unclip::train::build_embedding_cache(&clip(), &source, &file, &mut |_| {}).unwrap();
    assert_eq!(n, 24);
    let cache = unclip::train::EmbeddingCache::load(&file).unwrap();
    let with_cache = PriorStage::new(
        &prior_recipe(),
        clip(),
        &data.to_string_lossy(),
        4,
        Some(cache),
    )
    .unwrap();
    let without =
        PriorStage::new(&prior_recipe(), clip(), &data.to_string_lossy(), 4, None).unwrap();
    let batch = fixed_batch(&data, with_cache.image_size());
    let (a, b) = (
        fixed_loss(&with_cache, &batch),
        fixed_loss(&without, &batch),
    );
    assert!(
        (a - b).abs() < 1e-4 * b.abs().max(1.0),
        "cached {a} vs computed {b}"
    );
}

#[test]
fn decoder_with_learned_variance_learns() {
    let data = dataset("train-decoder", 48);
    let out = data.parent().unwrap().join("out");
    let stage = DecoderStage::new(&decoder_recipe(), clip(), 11).unwrap();
    assert_learns(&stage, &data, &out, 40);
    assert!(
        out.join("samples")
            .join(format!("step-{:08}.png", 40))
            .is_file(),
        "a preview grid is written"
    );
}

#[test]
fn a_decoder_with_its_own_text_encoder_trains_it_saves_it_and_reads_it_when_generating() {
    let data = dataset("train-decoder-own-text", 48);
    let root = data.parent().unwrap().to_path_buf();
    let mut recipe = decoder_recipe();
    recipe.text_encoder = Some(DecoderTextEncoderRecipe {
        num_hidden_layers: 1,
        num_attention_heads: 2,
        intermediate_size: 32,
    });
    let mut uneven = recipe.clone();
    if let Some(t) = uneven.text_encoder.as_mut() {
        t.num_attention_heads = 3;
    }
    let err = DecoderStage::new(&uneven, clip(), 11)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("text_encoder") && err.contains("3 heads"),
        "{err}"
    );
    // Half the image embeddings dropped, so the learned null one is used in the batch below.
    recipe.image_embedding_drop = 0.5;
    let stage = DecoderStage::new(&recipe, clip(), 11).unwrap();
    // Every parameter, the text encoder's included, gets a gradient from the decoder's loss.
    let batch = fixed_batch(&data, stage.image_size());
    let loss = stage
        .loss(&batch, &mut ChaCha8Rng::seed_from_u64(3))
        .unwrap();
    assert_eq!(
        without_gradient(stage.params(), &loss),
        Vec::<String>::new()
    );
    let names: Vec<String> = stage.params().vars().into_iter().map(|(n, _)| n).collect();
    assert!(names
        .iter()
        .any(|n| n.starts_with("decoder_text_encoder.text_model.encoder.layers.0.")));

    let out = root.join("out");
    assert_learns(&stage, &data, &out, 40);
    for file in ["config.json", "model.safetensors"] {
        assert!(
            out.join("decoder_text_encoder").join(file).is_file(),
            "{file}"
        );
    }

    // A decoder trained with its own text encoder cannot be fine-tuned without one.
    let plain = DecoderStage::new(&decoder_recipe(), clip(), 2).unwrap();
    let err = plain.init_from(&out).unwrap_err().to_string();
    assert!(err.contains("text_encoder"), "{err}");
    let again = DecoderStage::new(&recipe, clip(), 2).unwrap();
    again.init_from(&out).unwrap();

    // Assembled, the pipeline loads it and the decoder reads it.
    let pipeline_dir = root.join("pipeline");
    let parts = PipelineParts {
        clip: &clip_dir(),
        prior: None,
        decoder: &out,
        upsampler: None,
        sampling: None,
        ranker: None,
    };
    assemble(&parts, &pipeline_dir).unwrap();
    let mut pipeline = UnclipPipeline::load(&pipeline_dir, &Device::Cpu).unwrap();
    assert!(pipeline.decoder_text_encoder.is_some());
    assert!(pipeline.ranker.is_none());
    // A ranking CLIP goes in as `ranker/`: its weights, tokenizer and processor only.
    let ranked_dir = root.join("pipeline-ranked");
    assemble(
        &PipelineParts {
            ranker: Some(&clip_dir()),
            ..parts
        },
        &ranked_dir,
    )
    .unwrap();
    assert!(UnclipPipeline::load(&ranked_dir, &Device::Cpu)
        .unwrap()
        .ranker
        .is_some());
    assert!(ranked_dir.join("ranker/vocab.json").is_file());
    let index = std::fs::read_to_string(ranked_dir.join("model_index.json")).unwrap();
    assert!(!index.contains("ranker"), "{index}");
    // ... or is copied from a pipeline folder that has one, and refused from one that has not.
    let copied_dir = root.join("pipeline-ranker-copied");
    assemble(
        &PipelineParts {
            ranker: Some(&ranked_dir),
            ..parts
        },
        &copied_dir,
    )
    .unwrap();
    assert_eq!(
        std::fs::read(ranked_dir.join("ranker/model.safetensors")).unwrap(),
        std::fs::read(copied_dir.join("ranker/model.safetensors")).unwrap()
    );
    let err = assemble(
        &PipelineParts {
            ranker: Some(&pipeline_dir),
            ..parts
        },
        &root.join("never-ranked"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("`ranker/`"), "{err}");
    assert!(!root.join("never-ranked").exists());
    // A pipeline folder can stand for the CLIP: its CLIP parts are copied unchanged.
    let again_dir = root.join("pipeline-from-pipeline");
    let from_pipeline = PipelineParts {
        clip: &pipeline_dir,
        ..parts
    };
    assemble(&from_pipeline, &again_dir).unwrap();
    for file in [
        "text_encoder/model.safetensors",
        "image_encoder/model.safetensors",
        "tokenizer/vocab.json",
        "model_index.json",
    ] {
        assert_eq!(
            std::fs::read(pipeline_dir.join(file)).unwrap(),
            std::fs::read(again_dir.join(file)).unwrap(),
            "{file}"
        );
    }
    UnclipPipeline::load(&again_dir, &Device::Cpu).unwrap();
    let no_tokenizer = root.join("no-tokenizer");
    assemble(&from_pipeline, &no_tokenizer).unwrap();
    std::fs::remove_dir_all(no_tokenizer.join("tokenizer")).unwrap();
    let err = assemble(
        &PipelineParts {
            clip: &no_tokenizer,
            ..parts
        },
        &root.join("never"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("tokenizer"), "{err}");
    assert!(!root.join("never").exists());
    let embeddings = Tensor::randn(0f32, 1.0, (1, 32), &Device::Cpu).unwrap();
    let opts = GenerateOptions {
        decoder_steps: 2,
        ..GenerateOptions::default()
    };
    let decode = |pipeline: &UnclipPipeline| {
        pipeline
            .decode_embeddings(
                &embeddings,
                &["a red circle"],
                &opts,
                &mut NoiseSource::seeded(0),
                &mut |_, _, _| {},
            )
            .unwrap()
    };
    let own = decode(&pipeline);
    pipeline.decoder_text_encoder = None;
    let clips = decode(&pipeline);
    assert!(
        max_abs_diff(&own, &clips) > 1e-4,
        "the decoder's own text encoder changes nothing"
    );
}

#[test]
fn a_decoder_with_layout_options_and_a_min_snr_floor_learns_and_saves_them() {
    let data = dataset("train-decoder-positions", 48);
    let out = data.parent().unwrap().join("out");
    let mut recipe = decoder_recipe();
    for (bad, field) in [
        ((1000, 0.5), "high_noise.min_timestep"),
        ((800, 0.0), "high_noise.share"),
        ((800, 1.5), "high_noise.share"),
    ] {
        recipe.high_noise = Some(HighNoiseRecipe {
            min_timestep: bad.0,
            share: bad.1,
        });
        let err = DecoderStage::new(&recipe, clip(), 11)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains(field), "{err}");
    }
    recipe.high_noise = Some(HighNoiseRecipe {
        min_timestep: 800,
        share: 0.5,
    });
    recipe.min_snr_floor = Some(1.0);
    let err = DecoderStage::new(&recipe, clip(), 11)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("min_snr_floor"), "{err}");
    recipe.min_snr_gamma = Some(5.0);
    recipe.unet.attention_position_codes = true;
    recipe.image_embedding_drop = 0.5;
    let stage = DecoderStage::new(&recipe, clip(), 11).unwrap();
    let batch = fixed_batch(&data, stage.image_size());
    let loss = stage
        .loss(&batch, &mut ChaCha8Rng::seed_from_u64(3))
        .unwrap();
    assert_eq!(
        without_gradient(stage.params(), &loss),
        Vec::<String>::new()
    );
    assert_learns(&stage, &data, &out, 40);
    let config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("decoder").join("config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["attention_position_codes"], serde_json::json!(true));
    // Fine-tuning it without them is refused; a decoder without them may gain them.
    let without = DecoderStage::new(&decoder_recipe(), clip(), 2).unwrap();
    let err = without.init_from(&out).unwrap_err().to_string();
    assert!(err.contains("unet.attention_position_codes"), "{err}");
    DecoderStage::new(&recipe, clip(), 2)
        .unwrap()
        .init_from(&out)
        .unwrap();
}

#[test]
fn upsampler_learns() {
    let data = dataset("train-upsampler", 48);
    let out = data.parent().unwrap().join("out");
    let stage = UpsamplerStage::new(&upsampler_recipe(), 11, &Device::Cpu).unwrap();
    assert_learns(&stage, &data, &out, 40);
}

#[test]
fn trained_parts_assemble_into_a_pipeline_that_generates_and_varies() {
    let data = dataset("assemble", 24);
    let root = data.parent().unwrap().to_path_buf();
    let settings = serde_json::from_value(train_json()).unwrap();
    let prior = PriorStage::new(&prior_recipe(), clip(), &data.to_string_lossy(), 1, None).unwrap();
    run_training(
        &prior,
        &settings,
        &options(&data, &root.join("prior"), 2),
        &mut |_| {},
    )
    .unwrap();
    let decoder = DecoderStage::new(&decoder_recipe(), clip(), 1).unwrap();
    run_training(
        &decoder,
        &settings,
        &options(&data, &root.join("decoder"), 2),
        &mut |_| {},
    )
    .unwrap();
    let upsampler = UpsamplerStage::new(&upsampler_recipe(), 1, &Device::Cpu).unwrap();
    run_training(
        &upsampler,
        &settings,
        &options(&data, &root.join("upsampler"), 2),
        &mut |_| {},
    )
    .unwrap();
    let out = root.join("pipeline");
    let sampling = root.join("sampling.json");
    std::fs::write(&sampling, r#"{"decoder_guidance": 2.5}"#).unwrap();
    let parts = PipelineParts {
        clip: &clip_dir(),
        prior: Some(&root.join("prior")),
        decoder: &root.join("decoder"),
        upsampler: Some(&root.join("upsampler")),
        sampling: Some(&sampling),
        ranker: None,
    };
    assemble(&parts, &out).unwrap();
    let shipped = GenerateOptions::for_model(&out).unwrap();
    assert_eq!(shipped.decoder_guidance, 2.5);
    assert_eq!(
        shipped.prior_guidance,
        GenerateOptions::default().prior_guidance
    );
    // A sampling file that `generate` would refuse is refused before anything is written.
    let bad_sampling = root.join("bad-sampling.json");
    std::fs::write(&bad_sampling, r#"{"guidance": 3}"#).unwrap();
    let refused = root.join("refused");
    let err = assemble(
        &PipelineParts {
            sampling: Some(&bad_sampling),
            ranker: None,
            ..parts
        },
        &refused,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("guidance"), "{err}");
    assert!(!refused.exists());
    let pipeline = UnclipPipeline::load(&out, &Device::Cpu).unwrap();
    let opts = GenerateOptions {
        prior_steps: 2,
        decoder_steps: 2,
        super_res_steps: 2,
        ..GenerateOptions::default()
    };
    let images = pipeline
        .generate(
            &["a red circle"],
            &opts,
            &mut NoiseSource::seeded(0),
            &mut |_, _, _| {},
        )
        .unwrap();
    assert_eq!(images.dims(), &[1, 32, 32, 3]);
    let png = root.join("generated.png");
    unclip::imageops::save_png(&unclip::imageops::to_rgb8(&images).unwrap()[0], &png).unwrap();
    assert!(png.is_file());
    let image = data.join("000/000000.png");
    let varied = pipeline
        .vary(
            &[&image],
            &opts,
            &mut NoiseSource::seeded(1),
            &mut |_, _, _| {},
        )
        .unwrap();
    assert_eq!(varied.dims(), &[1, 32, 32, 3]);

    // The same pipeline stored as f16 is half the size and draws nearly the same image.
    // Unguided: guidance scales (4 and 8) multiply any difference between the two passes at
    // every step, which measures the guidance, not the storage.
    let unguided = GenerateOptions {
        prior_guidance: 1.0,
        decoder_guidance: 1.0,
        ..opts.clone()
    };
    let reference = pipeline
        .generate(
            &["a red circle"],
            &unguided,
            &mut NoiseSource::seeded(0),
            &mut |_, _, _| {},
        )
        .unwrap();
    let half = root.join("pipeline-f16");
    assemble(&parts, &half).unwrap();
    let cast = unclip::checkpoint::cast_folder_weights(&half, candle_core::DType::F16).unwrap();
    assert!(cast.files >= 6, "{cast:?}");
    assert!(cast.bytes_after * 10 < cast.bytes_before * 6, "{cast:?}");
    let half_pipeline = UnclipPipeline::load(&half, &Device::Cpu).unwrap();
    let half_images = half_pipeline
        .generate(
            &["a red circle"],
            &unguided,
            &mut NoiseSource::seeded(0),
            &mut |_, _, _| {},
        )
        .unwrap();
    // A barely trained tiny model saturates most pixels at 0 or 1, so a rare pixel near a
    // clipping edge may flip; the storage error itself shows in the mean and in how few move.
    let moved = (&half_images - &reference).unwrap().abs().unwrap();
    let mean_drift = moved.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let moved_fraction = moved
        .gt(0.02)
        .unwrap()
        .to_dtype(candle_core::DType::F32)
        .unwrap()
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    eprintln!("f16 storage: mean drift {mean_drift}, pixels moved > 0.02: {moved_fraction}");
    assert!(
        mean_drift < 0.01,
        "f16 storage moved pixels by {mean_drift} on average"
    );
    assert!(
        moved_fraction < 0.02,
        "f16 storage moved {moved_fraction} of the pixels"
    );
    assert!(unclip::checkpoint::parse_storage_dtype("f8").is_err());
}

/// The largest absolute difference between two sets of named tensors (same names, same order).
fn max_difference(a: &[(String, Tensor)], b: &[(String, Tensor)]) -> f32 {
    a.iter()
        .zip(b)
        .map(|((na, ta), (nb, tb))| {
            assert_eq!(na, nb);
            max_abs_diff(ta, tb)
        })
        .fold(0.0, f32::max)
}

#[test]
fn stages_fine_tune_from_trained_folders_and_refuse_other_architectures() {
    let data = dataset("init-from", 24);
    let root = data.parent().unwrap().to_path_buf();
    let settings = serde_json::from_value(train_json()).unwrap();
    let trained = DecoderStage::new(&decoder_recipe(), clip(), 1).unwrap();
    run_training(
        &trained,
        &settings,
        &options(&data, &root.join("decoder"), 4),
        &mut |_| {},
    )
    .unwrap();
    let upsampler = UpsamplerStage::new(&upsampler_recipe(), 1, &Device::Cpu).unwrap();
    run_training(
        &upsampler,
        &settings,
        &options(&data, &root.join("upsampler"), 2),
        &mut |_| {},
    )
    .unwrap();

    // Another seed draws other weights; init_from replaces them with the saved (EMA) ones.
    let fresh = DecoderStage::new(&decoder_recipe(), clip(), 2).unwrap();
    let saved = DecoderStage::new(&decoder_recipe(), clip(), 3).unwrap();
    saved.init_from(&root.join("decoder")).unwrap();
    assert!(max_difference(&fresh.params().tensors(), &saved.params().tensors()) > 0.0);
    fresh.init_from(&root.join("decoder")).unwrap();
    assert_eq!(
        max_difference(&fresh.params().tensors(), &saved.params().tensors()),
        0.0
    );
    // A pipeline folder holds the same subfolders, so a run can start from a whole model.
    let pipeline = root.join("pipeline");
    assemble(
        &PipelineParts {
            clip: &clip_dir(),
            prior: None,
            decoder: &root.join("decoder"),
            upsampler: Some(&root.join("upsampler")),
            sampling: None,
            ranker: None,
        },
        &pipeline,
    )
    .unwrap();
    let from_pipeline = DecoderStage::new(&decoder_recipe(), clip(), 4).unwrap();
    from_pipeline.init_from(&pipeline).unwrap();
    assert_eq!(
        max_difference(&from_pipeline.params().tensors(), &saved.params().tensors()),
        0.0
    );
    let up = UpsamplerStage::new(&upsampler_recipe(), 5, &Device::Cpu).unwrap();
    up.init_from(&pipeline).unwrap();

    // The fine-tuning run starts at step 0 from those weights and trains on.
    let mut opts = options(&data, &root.join("fine-tuned"), 2);
    opts.init_from = Some(pipeline.clone());
    let tuned = DecoderStage::new(&decoder_recipe(), clip(), 6).unwrap();
    let summary = run_training(&tuned, &settings, &opts, &mut |_| {}).unwrap();
    assert_eq!((summary.first_step, summary.steps), (0, 2));
    // Resuming and starting from weights are two different runs.
    opts.resume = true;
    let err = run_training(&tuned, &settings, &opts, &mut |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("--init-from") && err.contains("--resume"),
        "{err}"
    );

    // Another architecture is refused with the tensor's name.
    let mut wider = decoder_recipe();
    wider.unet.block_out_channels = vec![8, 24];
    let other = DecoderStage::new(&wider, clip(), 7).unwrap();
    let err = other
        .init_from(&root.join("decoder"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("shape") || err.contains("mismatch"), "{err}");
    // A folder without the stage's weights names what it looked for.
    let err = other.init_from(&data).unwrap_err().to_string();
    assert!(err.contains("decoder"), "{err}");
}
