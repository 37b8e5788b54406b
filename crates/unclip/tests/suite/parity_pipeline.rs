//! End to end against diffusers' UnCLIPPipeline / UnCLIPImageVariationPipeline: the recorded
//! noise tape replayed through the tiny Karlo-shaped pipelines reproduces the reference's
//! intermediate embeddings and final images.

use crate::common::{assert_close, load_outputs, oracle_dir};
use candle_core::Device;
use unclip::diffusion::NoiseSource;
use unclip::pipeline::{GenerateOptions, UnclipPipeline};

/// REFERENCE.md: "the whole chain at ~1e-3"; the issue asks for images within 2e-3.
const IMAGE_TOL: f32 = 2e-3;

fn case(name: &str) -> serde_json::Value {
    let all: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(oracle_dir().join("unclip_cases.json")).unwrap(),
    )
    .unwrap();
    all["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap()
        .clone()
}

fn options(c: &serde_json::Value) -> GenerateOptions {
    let num = |k: &str, d: f64| c[k].as_f64().unwrap_or(d);
    GenerateOptions {
        images_per_prompt: c["num_images_per_prompt"].as_u64().unwrap() as usize,
        prior_steps: num("prior_num_inference_steps", 25.0) as usize,
        decoder_steps: num("decoder_num_inference_steps", 25.0) as usize,
        super_res_steps: num("super_res_num_inference_steps", 7.0) as usize,
        prior_guidance: num("prior_guidance_scale", 4.0),
        decoder_guidance: num("decoder_guidance_scale", 8.0),
        ..GenerateOptions::default()
    }
}

fn check_text_case(name: &str) {
    let c = case(name);
    let file = oracle_dir().join(c["file"].as_str().unwrap());
    let want = load_outputs(c["file"].as_str().unwrap());
    let pipeline = UnclipPipeline::load(&oracle_dir().join("unclip_tiny"), &Device::Cpu).unwrap();
    let prompts: Vec<String> = match &c["prompt"] {
        serde_json::Value::String(s) => vec![s.clone()],
        v => v
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_str().unwrap().to_string())
            .collect(),
    };
    let mut noise = NoiseSource::tape(&file).unwrap();
    let images = pipeline
        .generate(&prompts, &options(&c), &mut noise, &mut |_, _, _| {})
        .unwrap();
    assert_eq!(
        noise.remaining(),
        0,
        "case {name}: the run used every recorded draw"
    );
    assert_close(
        &format!("case {name} images"),
        &images,
        &want["images"],
        IMAGE_TOL,
    );
}

#[test]
fn text_to_image_case_a_guided() {
    check_text_case("a");
}

#[test]
fn text_to_image_case_b_two_prompts_other_steps_and_guidance() {
    check_text_case("b");
}

#[test]
fn text_to_image_case_c_two_images_per_prompt_unguided() {
    check_text_case("c");
}

#[test]
fn image_variation_case() {
    let c = case("variation");
    let file = oracle_dir().join(c["file"].as_str().unwrap());
    let want = load_outputs(c["file"].as_str().unwrap());
    let pipeline =
        UnclipPipeline::load(&oracle_dir().join("unclip_tiny_variation"), &Device::Cpu).unwrap();
    let image = oracle_dir().join(c["image"].as_str().unwrap());
    let embeds = pipeline.image_embeddings(&[&image]).unwrap();
    assert_close(
        "image_encoder.image_embeds",
        &embeds,
        &want["image_encoder.call0.image_embeds"],
        1e-4,
    );
    let mut noise = NoiseSource::tape(&file).unwrap();
    let images = pipeline
        .vary(&[&image], &options(&c), &mut noise, &mut |_, _, _| {})
        .unwrap();
    assert_eq!(noise.remaining(), 0);
    // The decoder's first step (t = 999) divides by √ᾱ_999 ≈ 5e-5: wherever x̂_0 lands inside
    // the clip range, one f32 ulp of difference in the U-Net output becomes ~1e-3 there. The
    // reference itself moves one value of this case by 0.024 between 1 and 2 threads
    // (tools/oracle/README.md). So: at most 1 value in 1000 may exceed 2e-3, none 3e-2.
    let diff = (&images - &want["images"])
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    let over = diff.iter().filter(|d| **d > IMAGE_TOL).count();
    let worst = diff.iter().copied().fold(0f32, f32::max);
    assert!(
        over * 1000 <= diff.len(),
        "variation: {over} of {} values over {IMAGE_TOL}",
        diff.len()
    );
    assert!(worst <= 3e-2, "variation: max |diff| {worst}");
}

#[test]
fn a_text_pipeline_refuses_variations_and_names_the_component() {
    let pipeline = UnclipPipeline::load(&oracle_dir().join("unclip_tiny"), &Device::Cpu).unwrap();
    let err = pipeline
        .image_embeddings(&[oracle_dir().join("images/image_0.png")])
        .unwrap_err()
        .to_string();
    assert!(err.contains("image_encoder"), "{err}");
}

#[test]
fn reranking_image_candidates_needs_an_image_encoder_and_says_so() {
    let pipeline = UnclipPipeline::load(&oracle_dir().join("unclip_tiny"), &Device::Cpu).unwrap();
    let opts = GenerateOptions {
        image_candidates: 2,
        ..GenerateOptions::default()
    };
    let err = pipeline
        .generate(
            &["a cat"],
            &opts,
            &mut NoiseSource::seeded(0),
            &mut |_, _, _| {},
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("image_encoder") && err.contains("image_candidates"),
        "{err}"
    );

    let too_many = GenerateOptions {
        image_candidates: 17,
        ..GenerateOptions::default()
    };
    let err = pipeline
        .generate(
            &["a cat"],
            &too_many,
            &mut NoiseSource::seeded(0),
            &mut |_, _, _| {},
        )
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("image candidates = 17; allowed: 1..=16"),
        "{err}"
    );
}
