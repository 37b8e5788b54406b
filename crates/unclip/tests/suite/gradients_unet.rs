//! After one backward pass every parameter of both U-Nets has a nonzero gradient (the decoder
//! in Karlo's shape and in the variant blocks, and the upsampler with and without mid-block
//! attention).

use candle_core::{DType, Device, Tensor};
use unclip::models::unet::{
    UNet2DConditionConfig, UNet2DConditionModel, UNet2DConfig, UNet2DModel,
};
use unclip::train::ParamStore;

use crate::common::without_gradient;

/// A loss that weighs every output element differently, so nothing cancels.
fn weighted_sum(out: &Tensor, seed: u64) -> Tensor {
    let dev = out.device();
    let n = out.elem_count();
    let weights: Vec<f32> = (0..n)
        .map(|i| (((i as u64 * 2654435761 + seed) % 1000) as f32 / 500.0) - 1.0)
        .collect();
    let weights = Tensor::from_vec(weights, out.shape(), dev).unwrap();
    (out * weights).unwrap().sum_all().unwrap()
}

fn decoder_config(extra: serde_json::Value) -> UNet2DConditionConfig {
    let mut cfg = serde_json::json!({
        "attention_head_dim": 8, "block_out_channels": [16, 32],
        "class_embed_type": "identity", "cross_attention_dim": 12,
        "down_block_types": ["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        "in_channels": 3, "layers_per_block": 1,
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn", "norm_num_groups": 4,
        "out_channels": 6, "resnet_time_scale_shift": "scale_shift",
        "up_block_types": ["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"]
    });
    if let (Some(base), Some(extra)) = (cfg.as_object_mut(), extra.as_object()) {
        base.extend(extra.clone());
    }
    serde_json::from_value(cfg).unwrap()
}

fn check_decoder(cfg: &UNet2DConditionConfig) {
    let dev = Device::Cpu;
    let params = ParamStore::new(11);
    let model = UNet2DConditionModel::new(cfg, params.var_builder(&dev)).unwrap();
    let sample = Tensor::randn(0f32, 1.0, (2, 3, 8, 8), &dev).unwrap();
    let timestep = Tensor::new(&[10f32, 700.], &dev).unwrap();
    let context = Tensor::randn(0f32, 1.0, (2, 5, 12), &dev).unwrap();
    let labels = Tensor::randn(0f32, 1.0, (2, cfg.time_embed_dim()), &dev).unwrap();
    let mask = Tensor::new(&[[1u8, 1, 1, 0, 0], [1, 1, 1, 1, 1]], &dev).unwrap();
    let out = model
        .forward(&sample, &timestep, &context, Some(&labels), Some(&mask))
        .unwrap();
    assert_eq!(out.dims(), [2, 6, 8, 8]);
    let missing = without_gradient(&params, &weighted_sum(&out, 3));
    assert!(params.len() > 50, "only {} parameters", params.len());
    assert!(
        missing.is_empty(),
        "parameters without gradient: {missing:?}"
    );
}

#[test]
fn every_decoder_parameter_receives_a_gradient() {
    check_decoder(&decoder_config(serde_json::json!({})));
}

#[test]
fn position_codes_reach_the_attention_layers_and_every_parameter_still_gets_a_gradient() {
    let cfg = decoder_config(serde_json::json!({"attention_position_codes": true}));
    check_decoder(&cfg);
    // The same weights without the codes predict something else.
    let dev = Device::Cpu;
    let params = ParamStore::new(11);
    let with = UNet2DConditionModel::new(&cfg, params.var_builder(&dev)).unwrap();
    let plain_cfg = decoder_config(serde_json::json!({}));
    let without = UNet2DConditionModel::new(&plain_cfg, params.var_builder(&dev)).unwrap();
    let sample = Tensor::randn(0f32, 1.0, (1, 3, 8, 8), &dev).unwrap();
    let timestep = Tensor::new(&[900f32], &dev).unwrap();
    let context = Tensor::randn(0f32, 1.0, (1, 5, 12), &dev).unwrap();
    let labels = Tensor::randn(0f32, 1.0, (1, cfg.time_embed_dim()), &dev).unwrap();
    let run = |m: &UNet2DConditionModel| {
        m.forward(&sample, &timestep, &context, Some(&labels), None)
            .unwrap()
    };
    let diff = (run(&with) - run(&without))
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff > 1e-3, "position codes change nothing ({diff})");
    // Written to config.json only when on, so Karlo-shaped configs stay as diffusers writes them.
    let written = serde_json::to_value(&plain_cfg).unwrap();
    assert!(written.get("attention_position_codes").is_none());
    let written = serde_json::to_value(&cfg).unwrap();
    assert_eq!(written["attention_position_codes"], serde_json::json!(true));
}

#[test]
fn every_parameter_of_the_variant_blocks_receives_a_gradient() {
    // Plain conv resamplers, additive time conditioning, cross-attention only, a plain mid block.
    check_decoder(&decoder_config(serde_json::json!({
        "down_block_types": ["DownBlock2D", "SimpleCrossAttnDownBlock2D"],
        "up_block_types": ["SimpleCrossAttnUpBlock2D", "UpBlock2D"],
        "resnet_time_scale_shift": "default", "only_cross_attention": [false, true],
        "mid_block_type": "UNetMidBlock2D", "layers_per_block": [1, 2],
        "resnet_skip_time_act": true, "resnet_out_scale_factor": 2.0,
    })));
}

fn check_super_res(add_attention: bool) {
    let dev = Device::Cpu;
    let cfg: UNet2DConfig = serde_json::from_value(serde_json::json!({
        "add_attention": add_attention, "attention_head_dim": 8, "block_out_channels": [8, 16],
        "down_block_types": ["ResnetDownsampleBlock2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "ResnetUpsampleBlock2D"],
        "in_channels": 6, "out_channels": 3, "layers_per_block": 1, "norm_num_groups": 4,
        "resnet_time_scale_shift": "scale_shift"
    }))
    .unwrap();
    let params = ParamStore::new(5);
    let model = UNet2DModel::new(&cfg, params.var_builder(&dev)).unwrap();
    let sample = Tensor::randn(0f32, 1.0, (2, 6, 8, 8), &dev).unwrap();
    let timestep = Tensor::new(&[3f32, 900.], &dev)
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    let out = model.forward(&sample, &timestep, None).unwrap();
    assert_eq!(out.dims(), [2, 3, 8, 8]);
    let missing = without_gradient(&params, &weighted_sum(&out, 7));
    assert!(params.len() > 30, "only {} parameters", params.len());
    assert!(
        missing.is_empty(),
        "parameters without gradient: {missing:?}"
    );
}

#[test]
fn every_super_res_parameter_receives_a_gradient() {
    check_super_res(false);
    check_super_res(true);
}
