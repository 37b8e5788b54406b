//! Every parameter of the prior and of the text projection receives a gradient.

use candle_core::{DType, Device, Tensor};
use unclip::models::{PriorConfig, PriorTransformer, TextProj, TextProjConfig};
use unclip::train::ParamStore;

#[test]
fn every_prior_parameter_receives_a_gradient() {
    let dev = Device::Cpu;
    let cfg: PriorConfig = serde_json::from_value(serde_json::json!({
        "num_attention_heads": 2, "attention_head_dim": 8, "num_layers": 2, "embedding_dim": 16,
        "num_embeddings": 6, "norm_in_type": "layer", "embedding_proj_norm_type": "layer"
    }))
    .unwrap();
    let params = ParamStore::new(1);
    let prior = PriorTransformer::new(&cfg, params.var_builder(&dev)).unwrap();
    let x = Tensor::randn(0f32, 1.0, (3, 16), &dev).unwrap();
    let t = Tensor::new(&[10f32, 500., 999.], &dev).unwrap();
    let text = Tensor::randn(0f32, 1.0, (3, 16), &dev).unwrap();
    let states = Tensor::randn(0f32, 1.0, (3, 6, 16), &dev).unwrap();
    let mask = Tensor::new(
        &[
            [1u32, 1, 0, 0, 0, 0],
            [1, 1, 1, 1, 1, 1],
            [1, 0, 0, 0, 0, 0],
        ],
        &dev,
    )
    .unwrap();
    let out = prior.forward(&x, &t, &text, &states, Some(&mask)).unwrap();
    let loss = prior
        .post_process_latents(&out)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let missing = crate::common::without_gradient(&params, &loss);
    assert!(params.len() > 20);
    // Positional rows of masked-out padding tokens still feed the unmasked later tokens through
    // the causal attention, so every parameter must be reached.
    assert!(
        missing.is_empty(),
        "prior parameters without gradient: {missing:?}"
    );
}

#[test]
fn every_text_proj_parameter_receives_a_gradient() {
    let dev = Device::Cpu;
    let cfg: TextProjConfig = serde_json::from_value(serde_json::json!({
        "clip_embeddings_dim": 16, "time_embed_dim": 24, "cross_attention_dim": 12
    }))
    .unwrap();
    let params = ParamStore::new(2);
    let proj = TextProj::new(&cfg, params.var_builder(&dev)).unwrap();
    let image = Tensor::randn(0f32, 1.0, (2, 16), &dev).unwrap();
    let image = Tensor::cat(&[&proj.null_image_embeddings(2).unwrap(), &image], 0).unwrap();
    let text = Tensor::randn(0f32, 1.0, (4, 16), &dev).unwrap();
    let states = Tensor::randn(0f32, 1.0, (4, 5, 16), &dev).unwrap();
    let out = proj.forward(&image, &text, &states).unwrap();
    let loss = (out.encoder_hidden_states.sqr().unwrap().mean_all().unwrap()
        + out
            .additive_time_embedding
            .to_dtype(DType::F32)
            .unwrap()
            .sqr()
            .unwrap()
            .mean_all()
            .unwrap())
    .unwrap();
    let missing = crate::common::without_gradient(&params, &loss);
    assert!(
        missing.is_empty(),
        "text_proj parameters without gradient: {missing:?}"
    );
}
