//! Shared helpers: the fixture folder, tensor comparison, small datasets.

use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;

/// Fixtures made by `tools/oracle/` (transformers); `UNCLIP_ORACLE_DIR` points elsewhere.
pub fn oracle_dir() -> PathBuf {
    match std::env::var_os("UNCLIP_ORACLE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tools/oracle/fixtures"),
    }
}

pub fn load_outputs(name: &str) -> HashMap<String, Tensor> {
    let path = oracle_dir().join(name);
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()))
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(candle_core::DType::F32).unwrap();
    let b = b.to_dtype(candle_core::DType::F32).unwrap();
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[track_caller]
pub fn assert_close(name: &str, got: &Tensor, want: &Tensor, tol: f32) {
    let diff = max_abs_diff(got, want);
    assert!(diff <= tol, "{name}: max |diff| {diff:e} > {tol:e}");
}

pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("unclip-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A captioned folder of solid-color images with a shape-free caption each: enough signal for
/// contrastive training to separate colors.
pub fn color_folder(tag: &str, per_color: usize) -> PathBuf {
    let dir = scratch_dir(tag);
    let colors: [(&str, [u8; 3]); 4] = [
        ("red", [220, 30, 30]),
        ("green", [30, 200, 60]),
        ("blue", [30, 60, 220]),
        ("yellow", [230, 220, 40]),
    ];
    for (ci, (name, rgb)) in colors.iter().enumerate() {
        for k in 0..per_color {
            let img = image::RgbImage::from_fn(20 + k as u32, 24, |x, y| {
                let jitter = ((x * 7 + y * 13 + k as u32 * 31) % 23) as u8;
                image::Rgb([
                    rgb[0].saturating_add(jitter),
                    rgb[1].saturating_sub(jitter / 2),
                    rgb[2],
                ])
            });
            let stem = dir.join(format!("{ci}_{k}"));
            img.save(stem.with_extension("png")).unwrap();
            std::fs::write(stem.with_extension("txt"), format!("a {name} picture")).unwrap();
        }
    }
    dir
}

/// Names of the parameters whose gradient after `loss.backward()` is missing or all zero.
pub fn without_gradient(params: &unclip::train::ParamStore, loss: &Tensor) -> Vec<String> {
    let grads = loss.backward().unwrap();
    params
        .vars()
        .into_iter()
        .filter(|(_, v)| {
            let g = grads.get(v.as_tensor()).map(|g| {
                g.abs()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            });
            g.unwrap_or(0.0).partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater)
        })
        .map(|(n, _)| n)
        .collect()
}
