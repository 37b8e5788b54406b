//! CLIP against transformers: fixtures from tools/oracle/make_clip_fixtures.py.

use crate::common::{assert_close, load_outputs, oracle_dir};
use candle_core::{DType, Device, Tensor};
use unclip::clip::{l2_normalize, ClipImageProcessor, ClipLayout, ClipModel};
use unclip::pipeline::ClipEmbedder;
use unclip::tokenizer::ClipTokenizer;

const TOL: f32 = 1e-4;

fn image_paths() -> Vec<std::path::PathBuf> {
    (0..3)
        .map(|i| oracle_dir().join(format!("images/image_{i}.png")))
        .collect()
}

fn check_model(name: &str) {
    let dev = Device::Cpu;
    let want = load_outputs(&format!("{name}_outputs.safetensors"));
    let dir = oracle_dir().join(name);
    let model = ClipModel::load(&dir, &dev).unwrap();
    assert_eq!(model.layout(), ClipLayout::Full);

    // Tokenizer: the model folder's own vocabulary gives the reference ids.
    let prompts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(oracle_dir().join(format!("{name}_prompts.json"))).unwrap(),
    )
    .unwrap();
    let texts: Vec<String> = prompts["prompts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let tokenizer = ClipTokenizer::load(&dir).unwrap();
    let (ids, mask) = tokenizer
        .encode_batch(&texts)
        .unwrap()
        .to_tensors(&dev)
        .unwrap();
    let want_ids = want["input_ids"].to_dtype(DType::U32).unwrap();
    assert_eq!(
        ids.to_vec2::<u32>().unwrap(),
        want_ids.to_vec2::<u32>().unwrap(),
        "{name}: input_ids"
    );
    assert_eq!(
        mask.to_vec2::<u32>().unwrap(),
        want["attention_mask"]
            .to_dtype(DType::U32)
            .unwrap()
            .to_vec2::<u32>()
            .unwrap()
    );

    // Text tower, every hidden state, with and without the padding mask.
    let states = model.text_hidden_states(&ids, None).unwrap();
    for (i, s) in states.iter().enumerate() {
        assert_close(
            &format!("{name} text_hidden_state_{i}"),
            s,
            &want[&format!("text_hidden_state_{i}")],
            TOL,
        );
    }
    let text = model.text_outputs(&ids, None).unwrap();
    assert_close(
        &format!("{name} text_last_hidden_state"),
        &text.last_hidden_state,
        &want["text_last_hidden_state"],
        TOL,
    );
    assert_close(
        &format!("{name} text_pooler_output"),
        &text.pooler_output,
        &want["text_pooler_output"],
        TOL,
    );
    let masked = model.text_outputs(&ids, Some(&mask)).unwrap();
    assert_close(
        &format!("{name} text_last_hidden_state_masked"),
        &masked.last_hidden_state,
        &want["text_last_hidden_state_masked"],
        TOL,
    );
    let text_features = model.text_features(&ids, None).unwrap();
    assert_close(
        &format!("{name} text_embeds"),
        &l2_normalize(&text_features).unwrap(),
        &want["text_embeds"],
        TOL,
    );

    // Preprocessing: PIL-exact resize, alpha over white, crop, normalise.
    let processor =
        ClipImageProcessor::load_or_default(&dir, model.vision_config().unwrap().image_size)
            .unwrap();
    let pixels = processor.preprocess_files(&image_paths(), &dev).unwrap();
    assert_close(
        &format!("{name} pixel_values"),
        &pixels,
        &want["pixel_values"],
        1e-6,
    );
    let grey = processor
        .preprocess_files(&[oracle_dir().join("images/image_3.png")], &dev)
        .unwrap();
    assert_close(
        &format!("{name} pixel_values_extra"),
        &grey,
        &want["pixel_values_extra"],
        1e-6,
    );

    // Vision tower on the reference pixels (isolates the model from preprocessing).
    let vision = model.vision_outputs(&want["pixel_values"]).unwrap();
    assert_close(
        &format!("{name} vision_last_hidden_state"),
        &vision.last_hidden_state,
        &want["vision_last_hidden_state"],
        TOL,
    );
    assert_close(
        &format!("{name} vision_pooler_output"),
        &vision.pooler_output,
        &want["vision_pooler_output"],
        TOL,
    );
    let image_features = model.image_features(&want["pixel_values"]).unwrap();
    assert_close(
        &format!("{name} image_embeds"),
        &l2_normalize(&image_features).unwrap(),
        &want["image_embeds"],
        TOL,
    );

    let (per_text, per_image) = model.logits(&text_features, &image_features).unwrap();
    assert_close(
        &format!("{name} logits_per_text"),
        &per_text,
        &want["logits_per_text"],
        TOL,
    );
    assert_close(
        &format!("{name} logits_per_image"),
        &per_image,
        &want["logits_per_image"],
        TOL,
    );

    // Contrastive loss on the matched batch.
    let loss_ids = want["loss_input_ids"].to_dtype(DType::U32).unwrap();
    let loss_text = model.text_features(&loss_ids, None).unwrap();
    let (loss_logits, _) = model.logits(&loss_text, &image_features).unwrap();
    assert_close(
        &format!("{name} loss_logits_per_text"),
        &loss_logits,
        &want["loss_logits_per_text"],
        TOL,
    );
    let loss = unclip::clip::contrastive_loss(&loss_logits)
        .unwrap()
        .reshape(1)
        .unwrap();
    assert_close(&format!("{name} loss"), &loss, &want["loss"], TOL);
}

#[test]
fn clip_tiny_matches_transformers() {
    check_model("clip_tiny");
}

#[test]
fn clip_tiny_legacy_argmax_pooling_and_exact_gelu_match_transformers() {
    check_model("clip_tiny_legacy");
}

#[test]
fn single_tower_layouts_load_and_match() {
    let dev = Device::Cpu;
    let want = load_outputs("clip_tiny_outputs.safetensors");
    let text = ClipModel::load(&oracle_dir().join("clip_tiny/text_with_projection"), &dev).unwrap();
    assert_eq!(text.layout(), ClipLayout::Text);
    assert!(!text.has_vision());
    let ids = want["input_ids"].to_dtype(DType::U32).unwrap();
    assert_close(
        "text_embeds_unnormalized",
        &text.text_features(&ids, None).unwrap(),
        &want["text_embeds_unnormalized"],
        TOL,
    );
    assert!(
        text.image_features(&want["pixel_values"]).is_err(),
        "a text-only model cannot embed images"
    );

    let vision =
        ClipModel::load(&oracle_dir().join("clip_tiny/vision_with_projection"), &dev).unwrap();
    assert_eq!(vision.layout(), ClipLayout::Vision);
    assert_close(
        "image_embeds_unnormalized",
        &vision.image_features(&want["pixel_values"]).unwrap(),
        &want["image_embeds_unnormalized"],
        TOL,
    );
}

#[test]
fn embedder_reproduces_normalised_embeddings_from_files() {
    let want = load_outputs("clip_tiny_outputs.safetensors");
    let embedder = ClipEmbedder::load(&oracle_dir().join("clip_tiny"), &Device::Cpu).unwrap();
    let texts = vec!["".to_string(), "a photo of a cat".to_string()];
    let out = embedder.embed(&texts, &image_paths()).unwrap();
    let got_text = Tensor::new(out.text_embeds, &Device::Cpu).unwrap();
    assert_close(
        "embed text",
        &got_text,
        &want["text_embeds"].narrow(0, 0, 2).unwrap(),
        TOL,
    );
    let got_image = Tensor::new(out.image_embeds, &Device::Cpu).unwrap();
    assert_close("embed image", &got_image, &want["image_embeds"], TOL);
}
