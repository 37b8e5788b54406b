//! Edits on the tiny pipelines: inversion reconstructs, interpolation keeps its endpoints,
//! inpainting keeps the known pixels and repaints the others, bad input is named.

use crate::common::{max_abs_diff, oracle_dir, scratch_dir};
use candle_core::{Device, Tensor};
use unclip::diffusion::{NoiseSource, Sampler};
use unclip::pipeline::{
    keep_mask, reconstruction_error, GenerateOptions, UnclipPipeline, DEFAULT_INVERSION_REFINEMENTS,
};

fn variation_pipeline() -> UnclipPipeline {
    UnclipPipeline::load(&oracle_dir().join("unclip_tiny_variation"), &Device::Cpu).unwrap()
}

/// A smooth 16×16 picture (the tiny decoder's size, so the target is the file itself).
fn picture(tag: &str, phase: f32) -> std::path::PathBuf {
    let img = image::RgbImage::from_fn(16, 16, |x, y| {
        let f =
            |k: f32| (127.5 + 100.0 * ((x as f32 * 0.4 + y as f32 * 0.3) * k + phase).sin()) as u8;
        image::Rgb([f(1.0), f(0.7), f(1.3)])
    });
    let path = scratch_dir(tag).join("picture.png");
    img.save(&path).unwrap();
    path
}

fn quiet() -> impl FnMut(unclip::pipeline::Stage, usize, usize) {
    |_, _, _| {}
}

#[test]
fn inversion_then_deterministic_ddim_reconstructs_the_image() {
    let pipeline = variation_pipeline();
    let image = picture("invert", 0.0);
    // Unguided: with guidance the random-weight fixture's ε̂ is too far from a function the
    // fixed-point iteration converges on (PSNR ~10 dB); unguided 5 steps × 10 refinements give
    // ~54 dB.
    let opts = GenerateOptions {
        decoder_steps: 5,
        super_res_steps: 2,
        decoder_guidance: 1.0,
        ..GenerateOptions::default()
    };
    let embeddings = pipeline.image_embeddings(&[&image]).unwrap();
    let targets = pipeline.decoder_targets(&[&image]).unwrap();
    let x_t = pipeline
        .invert(
            &targets,
            &embeddings,
            DEFAULT_INVERSION_REFINEMENTS,
            &opts,
            &mut quiet(),
        )
        .unwrap();
    let decoded = pipeline
        .decode_inverted(
            &x_t,
            &embeddings,
            0.0,
            &opts,
            &mut NoiseSource::seeded(0),
            &mut quiet(),
        )
        .unwrap();
    let err = reconstruction_error(&decoded.small, &targets).unwrap();
    eprintln!(
        "reconstruction: PSNR {:.1} dB, max |err| {:.2e}",
        err.psnr_db, err.max_abs
    );
    assert!(err.psnr_db > 45.0, "PSNR {:.1} dB", err.psnr_db);
    assert!(err.max_abs < 0.03, "max |err| {}", err.max_abs);
    assert_eq!(decoded.images.dims(), &[1, 32, 32, 3]);

    // eta > 0 decodes something else from the same x_T.
    let varied = pipeline
        .decode_inverted(
            &x_t,
            &embeddings,
            1.0,
            &opts,
            &mut NoiseSource::seeded(1),
            &mut quiet(),
        )
        .unwrap();
    assert!(max_abs_diff(&varied.small, &targets) > 0.05);
}

#[test]
fn interpolation_endpoints_are_the_inputs() {
    let pipeline = variation_pipeline();
    let dev = Device::Cpu;
    let z = Tensor::randn(0f32, 1.0, (2, 8), &dev).unwrap();
    let x = Tensor::randn(0f32, 1.0, (2, 3, 4, 4), &dev).unwrap();
    let (zs, xs) = pipeline.interpolation_inputs(&z, &x, 5).unwrap();
    assert_eq!(zs.dims(), &[5, 8]);
    assert_eq!(xs.dims(), &[5, 3, 4, 4]);
    assert_eq!(
        max_abs_diff(&zs.narrow(0, 0, 1).unwrap(), &z.narrow(0, 0, 1).unwrap()),
        0.0
    );
    assert_eq!(
        max_abs_diff(&zs.narrow(0, 4, 1).unwrap(), &z.narrow(0, 1, 1).unwrap()),
        0.0
    );
    assert_eq!(
        max_abs_diff(&xs.narrow(0, 0, 1).unwrap(), &x.narrow(0, 0, 1).unwrap()),
        0.0
    );
    assert_eq!(
        max_abs_diff(&xs.narrow(0, 4, 1).unwrap(), &x.narrow(0, 1, 1).unwrap()),
        0.0
    );
    // The middle frame lies between them, not on either.
    let mid = zs.narrow(0, 2, 1).unwrap();
    assert!(max_abs_diff(&mid, &z.narrow(0, 0, 1).unwrap()) > 1e-3);

    let err = pipeline
        .interpolation_inputs(&z, &x, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("allowed: 2..=64"), "{err}");
}

#[test]
fn text_diffs_start_at_the_image_and_refuse_out_of_range_theta() {
    let pipeline = variation_pipeline();
    let image = picture("textdiff", 1.0);
    let z = pipeline.image_embeddings(&[&image]).unwrap();
    let zs = pipeline
        .text_diff_embeddings(&z, "a photo", "a drawing", &[0.0, 0.5])
        .unwrap();
    assert!(max_abs_diff(&zs.narrow(0, 0, 1).unwrap(), &z) < 1e-5);
    let norm = |t: &Tensor| {
        t.sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .sqrt()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    };
    let moved = zs.narrow(0, 1, 1).unwrap();
    assert!(
        (norm(&moved) - norm(&z)).abs() < 1e-3 * norm(&z),
        "the norm is kept"
    );
    assert!(max_abs_diff(&moved, &z) > 1e-3);
    for bad in [-0.1, 1.5, f64::NAN] {
        let err = pipeline
            .text_diff_embeddings(&z, "a photo", "a drawing", &[bad])
            .unwrap_err()
            .to_string();
        assert!(err.contains("allowed: 0..=1"), "{err}");
    }
}

fn rgba(w: u32, h: u32, hole: impl Fn(u32, u32) -> bool) -> image::RgbaImage {
    image::RgbaImage::from_fn(w, h, |x, y| {
        let alpha = if hole(x, y) { 0 } else { 255 };
        image::Rgba([(x * 8) as u8, (y * 8) as u8, 128, alpha])
    })
}

#[test]
fn inpainting_keeps_the_known_pixels_and_repaints_the_hole() {
    let pipeline = UnclipPipeline::load(&oracle_dir().join("unclip_tiny"), &Device::Cpu).unwrap();
    let hole = |x: u32, y: u32| (8..24).contains(&x) && (8..24).contains(&y);
    let image = rgba(32, 32, hole);
    let keep = keep_mask(&image, None, &Device::Cpu).unwrap();
    let opts = GenerateOptions {
        prior_steps: 2,
        decoder_steps: 4,
        super_res_steps: 2,
        images_per_prompt: 2,
        sampler: Sampler::Ddpm,
        ..GenerateOptions::default()
    };
    let out = pipeline
        .inpaint(
            &image,
            &keep,
            "a red square",
            2,
            &opts,
            &mut NoiseSource::seeded(0),
            &mut quiet(),
        )
        .unwrap();
    assert_eq!(out.dims(), &[2, 32, 32, 3]);
    let rgb = unclip::imageops::to_rgb8(&out).unwrap();
    for result in &rgb {
        let mut changed = 0;
        for (x, y, p) in result.enumerate_pixels() {
            let want = image.get_pixel(x, y);
            if hole(x, y) {
                changed += usize::from(p.0[..3] != want.0[..3]);
            } else {
                assert_eq!(p.0[..3], want.0[..3], "kept pixel ({x}, {y}) changed");
            }
        }
        assert!(
            changed > 200,
            "only {changed} of 256 repainted pixels differ"
        );
    }
}

#[test]
fn inpainting_bad_masks_are_named() {
    let dev = Device::Cpu;
    let image = rgba(32, 32, |_, _| false);
    let err = keep_mask(&image, None, &dev).unwrap_err().to_string();
    assert!(err.contains("nothing to repaint"), "{err}");
    let mask = rgba(16, 32, |x, _| x < 4);
    let err = keep_mask(&image, Some(&mask), &dev)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("16x32") && err.contains("32x32") && err.contains("same size"),
        "{err}"
    );
    let opaque_mask = rgba(32, 32, |_, _| false);
    let err = keep_mask(&image, Some(&opaque_mask), &dev)
        .unwrap_err()
        .to_string();
    assert!(err.contains("the mask has no fully transparent"), "{err}");
}
