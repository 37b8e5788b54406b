//! After one backward pass every trainable tensor of every model has a nonzero gradient.
//! (candle's fused norms and softmax record no backward; this is the test that catches them.)

use candle_core::{DType, Device, Tensor};
use unclip::clip::{contrastive_loss, ClipConfig, ClipModel};
use unclip::train::ParamStore;

fn tiny_clip_config() -> ClipConfig {
    serde_json::from_value(serde_json::json!({
        "projection_dim": 8,
        "text_config": {"vocab_size": 50, "hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "max_position_embeddings": 8, "eos_token_id": 49},
        "vision_config": {"hidden_size": 16, "intermediate_size": 24, "num_hidden_layers": 2,
                          "num_attention_heads": 2, "image_size": 8, "patch_size": 4}
    }))
    .unwrap()
}

#[test]
fn every_clip_parameter_receives_a_gradient() {
    let dev = Device::Cpu;
    let cfg = tiny_clip_config();
    let params = ParamStore::new(7);
    let model = ClipModel::new(&cfg, params.var_builder(&dev)).unwrap();
    let ids = Tensor::new(
        &[
            [0u32, 5, 9, 49, 49, 49, 49, 49],
            [0, 7, 3, 11, 4, 49, 49, 49],
            [0, 2, 49, 49, 49, 49, 49, 49],
        ],
        &dev,
    )
    .unwrap();
    let mask = ids.ne(49u32).unwrap().to_dtype(DType::U32).unwrap();
    let pixels = Tensor::randn(0f32, 1.0, (3, 3, 8, 8), &dev).unwrap();
    let text = model.text_features(&ids, Some(&mask)).unwrap();
    let image = model.image_features(&pixels).unwrap();
    let (logits, _) = model.logits(&text, &image).unwrap();
    let loss = contrastive_loss(&logits).unwrap();
    let vars = params.vars();
    assert!(
        vars.len() > 30,
        "expected every CLIP parameter in the store, got {}",
        vars.len()
    );
    let missing = crate::common::without_gradient(&params, &loss);
    // The position embedding rows beyond the sequence length cannot get gradient; here the
    // sequence uses all 8 positions, so nothing is exempt.
    assert!(
        missing.is_empty(),
        "parameters without gradient: {missing:?}"
    );
}
