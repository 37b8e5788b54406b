//! The prior and the text projection against diffusers on recorded inputs (1e-4).

use crate::common::{assert_close, load_outputs, oracle_dir};
use candle_core::{DType, Device, Tensor};
use unclip::models::{PriorTransformer, TextProj};

const TOL: f32 = 1e-4;

fn timesteps(t: &Tensor, batch: usize) -> Tensor {
    let t = t.to_dtype(DType::F32).unwrap().flatten_all().unwrap();
    if t.dim(0).unwrap() == 1 {
        t.repeat(batch).unwrap()
    } else {
        t
    }
}

#[test]
fn prior_matches_diffusers_with_and_without_mask() {
    let t = load_outputs("unclip_components.safetensors");
    let prior =
        PriorTransformer::load(&oracle_dir().join("unclip_tiny/prior"), &Device::Cpu).unwrap();
    for case in ["pipe", "rand"] {
        let k = |n: &str| format!("prior.{case}.{n}");
        let b = t[&k("hidden_states")].dim(0).unwrap();
        let out = prior
            .forward(
                &t[&k("hidden_states")],
                &timesteps(&t[&k("timestep")], b),
                &t[&k("proj_embedding")],
                &t[&k("encoder_hidden_states")],
                Some(&t[&k("attention_mask")]),
            )
            .unwrap();
        assert_close(&k("output"), &out, &t[&k("output")], TOL);
    }
    let k = |n: &str| format!("prior.rand.{n}");
    let out = prior
        .forward(
            &t[&k("hidden_states")],
            &timesteps(&t["prior.rand_nomask.timestep"], 3),
            &t[&k("proj_embedding")],
            &t[&k("encoder_hidden_states")],
            None,
        )
        .unwrap();
    assert_close(
        "prior.rand_nomask.output",
        &out,
        &t["prior.rand_nomask.output"],
        TOL,
    );
    let post = prior
        .post_process_latents(&t["prior.post_process.input"])
        .unwrap();
    assert_close(
        "prior.post_process",
        &post,
        &t["prior.post_process.output"],
        TOL,
    );
}

#[test]
fn text_proj_matches_diffusers_with_and_without_guidance() {
    let t = load_outputs("unclip_components.safetensors");
    let proj = TextProj::load(&oracle_dir().join("unclip_tiny/text_proj"), &Device::Cpu).unwrap();
    for case in ["pipe", "rand_cfg", "rand_nocfg"] {
        let k = |n: &str| format!("text_proj.{case}.{n}");
        let prompts = &t[&k("in.prompt_embeds")];
        let mut image = t[&k("in.image_embeddings")].clone();
        if image.dim(0).unwrap() != prompts.dim(0).unwrap() {
            // Guided: the unconditional half takes the learned null embedding.
            let null = proj.null_image_embeddings(image.dim(0).unwrap()).unwrap();
            image = Tensor::cat(&[&null, &image], 0).unwrap();
        }
        let out = proj
            .forward(&image, prompts, &t[&k("in.text_encoder_hidden_states")])
            .unwrap();
        assert_close(
            &k("out.text_encoder_hidden_states"),
            &out.encoder_hidden_states,
            &t[&k("out.text_encoder_hidden_states")],
            TOL,
        );
        assert_close(
            &k("out.additive_clip_time_embeddings"),
            &out.additive_time_embedding,
            &t[&k("out.additive_clip_time_embeddings")],
            TOL,
        );
    }
}

#[test]
fn antialiased_bicubic_matches_torch_up_and_down() {
    let t = load_outputs("unclip_components.safetensors");
    for (input, output) in [
        ("bicubic.pipe.input", "bicubic.pipe.output"),
        ("bicubic.up_16_32.input", "bicubic.up_16_32.output"),
        ("bicubic.down_32_20.input", "bicubic.down_32_20.output"),
    ] {
        let want = &t[output];
        let (_, _, h, w) = want.dims4().unwrap();
        let got = unclip::imageops::resize_bicubic_antialias(&t[input], h, w).unwrap();
        assert_close(output, &got, want, 1e-5);
    }
    let cropped = t["bicubic.up_16_32.input"].narrow(3, 0, 12).unwrap();
    let got = unclip::imageops::resize_bicubic_antialias(&cropped, 27, 40).unwrap();
    assert_close(
        "bicubic.up_16x12_27x40",
        &got,
        &t["bicubic.up_16x12_27x40.output"],
        1e-5,
    );
}
