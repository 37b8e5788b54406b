//! Evaluation end to end: the shapes-world checker on rendered scenes (the ground truth must
//! score 1, a blank image 0, swapped colors must fail binding), held-out prompts kept out of
//! training data, and both pipeline evaluations on the tiny reference pipeline.

use crate::common::{oracle_dir, scratch_dir};
use candle_core::Device;
use image::{Rgb, RgbImage};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use unclip::data::shapes::palette::BACKGROUND;
use unclip::data::shapes::{
    render, write_shapes_dataset_excluding, Form, Holdout, Prompt, Scene, CANVAS,
};
use unclip::data::{DataSource, ImageFolder};
use unclip::eval::{
    check, check_text, evaluate_captions, evaluate_shapes, CaptionsEvalOptions, EvalStart,
    FailureKind, Placement, ShapesEvalOptions, ShapesScore,
};
use unclip::pipeline::{GenerateOptions, UnclipPipeline};

fn rendered(prompt: &Prompt, seed: u64) -> RgbImage {
    render(&Scene::sample(prompt, &mut ChaCha8Rng::seed_from_u64(seed)).unwrap())
}

fn parse(text: &str) -> Prompt {
    Prompt::parse(text).unwrap()
}

#[test]
fn rendered_ground_truth_scores_one_on_every_form() {
    use Placement::Right;
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut verdicts = Vec::new();
    for form in Form::ALL {
        for i in 0..150 {
            let prompt = Prompt::sample_form(&mut rng, form);
            let v = check(&prompt, &rendered(&prompt, i));
            assert!(v.pass, "{prompt}: {}", v.reason);
            assert_eq!(v.failure, None, "{prompt}");
            assert!(v.colors, "{prompt}");
            let two_objects = matches!(form, Form::Pair | Form::Relation);
            assert_eq!(v.binding, two_objects.then_some(true), "{prompt}");
            let relation = form == Form::Relation;
            assert_eq!(v.placement, relation.then_some(Right), "{prompt}");
            verdicts.push(v);
        }
    }
    let score = ShapesScore::from_verdicts(&verdicts);
    assert_eq!(score.per_form.len(), 4);
    for (form, f) in &score.per_form {
        assert_eq!(f.accuracy, 1.0, "{form}");
    }
    assert!(score.failures.is_empty(), "{:?}", score.failures);
    assert_eq!(
        (score.colors, score.binding, score.overall),
        (1.0, Some(1.0), 1.0)
    );
    let placement = score.placement.expect("relation images were scored");
    assert_eq!(
        (placement.images, placement.right, placement.accuracy),
        (150, 150, 1.0)
    );
}

#[test]
fn noisy_blurred_and_rescaled_renders_still_pass() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for i in 0..100 {
        let prompt = Prompt::sample(&mut rng, &Form::ALL).unwrap();
        let mut image = rendered(&prompt, i);
        for p in image.pixels_mut() {
            for c in p.0.iter_mut() {
                *c = (*c as i32 + rng.random_range(-20..=20)).clamp(0, 255) as u8;
            }
        }
        let v = check(&prompt, &image);
        assert!(v.pass, "noisy {prompt}: {}", v.reason);
        let big = image::imageops::resize(
            &rendered(&prompt, i),
            2 * CANVAS,
            2 * CANVAS,
            image::imageops::FilterType::Nearest,
        );
        let v = check(&prompt, &big);
        assert!(v.pass, "128 px {prompt}: {}", v.reason);
        // Soft edges, as a generated image has them.
        let soft = image::imageops::blur(&rendered(&prompt, i), 0.6);
        let v = check(&prompt, &soft);
        assert!(v.pass, "blurred {prompt}: {}", v.reason);
    }
}

#[test]
fn a_blank_image_scores_zero() {
    let blank = RgbImage::from_pixel(CANVAS, CANVAS, Rgb(BACKGROUND));
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let verdicts: Vec<_> = Form::ALL
        .iter()
        .flat_map(|&form| (0..10).map(move |_| form))
        .map(|form| check(&Prompt::sample_form(&mut rng, form), &blank))
        .collect();
    assert!(verdicts
        .iter()
        .all(|v| !v.pass && !v.colors && v.objects.is_empty()));
    assert!(
        verdicts[0].reason.contains("found 0"),
        "{}",
        verdicts[0].reason
    );
    let score = ShapesScore::from_verdicts(&verdicts);
    assert_eq!(
        (score.overall, score.colors, score.binding),
        (0.0, 0.0, Some(0.0))
    );
    // No objects to place: placement does not apply, rather than scoring 0.
    assert!(verdicts.iter().all(|v| v.placement.is_none()));
    assert_eq!(score.placement, None);
    // Every blank image failed for want of objects, counted under its form.
    for form in Form::ALL {
        assert_eq!(
            score.failures[&form].iter().collect::<Vec<_>>(),
            [(&FailureKind::TooFew, &10)],
            "{form}"
        );
    }
}

#[test]
fn swapped_colors_keep_the_colors_and_fail_binding() {
    for (asked, drawn) in [
        (
            "a red circle and a blue square",
            "a blue circle and a red square",
        ),
        (
            "a green triangle above an orange circle",
            "an orange triangle above a green circle",
        ),
    ] {
        for seed in 0..10 {
            let v = check(&parse(asked), &rendered(&parse(drawn), seed));
            assert!(!v.pass, "{asked} vs {drawn}");
            assert!(v.colors, "{asked} vs {drawn}");
            assert_eq!(v.binding, Some(false), "{asked} vs {drawn}");
            assert_eq!(v.failure, Some(FailureKind::Binding), "{asked} vs {drawn}");
        }
    }
}

#[test]
fn wrong_counts_sizes_shapes_and_relations_fail() {
    use FailureKind::*;
    let cases = [
        ("two red circles", "three red circles", TooMany),
        ("four blue squares", "three blue squares", TooFew),
        ("three yellow triangles", "three yellow circles", Shape),
        ("a large purple square", "a small purple square", Size),
        ("a red circle", "a blue circle", Color),
        ("a red circle", "a red circle and a blue square", TooMany),
        (
            "a red circle and a blue square",
            "a red circle and a green square",
            Color,
        ),
        (
            "a red circle and a blue square",
            "a red circle and a blue triangle",
            Shape,
        ),
        (
            "a red circle above a blue square",
            "a red circle below a blue square",
            Position,
        ),
        (
            "a red circle to the left of a blue square",
            "a red circle to the right of a blue square",
            Position,
        ),
    ];
    for (asked, drawn, kind) in cases {
        for seed in 0..5 {
            let v = check(&parse(asked), &rendered(&parse(drawn), seed));
            assert!(!v.pass, "{asked} passed on a render of {drawn}");
            assert!(!v.reason.is_empty());
            assert_eq!(v.failure, Some(kind), "{asked} on a render of {drawn}");
        }
    }
    // A relation with the right objects in the wrong place keeps colors and binding.
    let v = check(
        &parse("a red circle above a blue square"),
        &rendered(&parse("a red circle below a blue square"), 0),
    );
    assert!(v.colors && v.binding == Some(true) && !v.pass);
    assert!(v.reason.contains("is not above"), "{}", v.reason);
}

#[test]
fn a_relation_between_two_identical_objects_passes_either_way_round() {
    use Placement::Right;
    // Nothing tells the two red circles apart, so the checker must not depend on which one
    // its segmentation finds first.
    for relation in ["above", "below", "to the left of", "to the right of"] {
        let prompt = parse(&format!("a red circle {relation} a red circle"));
        for seed in 0..20 {
            let v = check(&prompt, &rendered(&prompt, seed));
            assert!(v.pass, "{prompt}, seed {seed}: {}", v.reason);
            assert_eq!(v.placement, Some(Right), "{prompt}, seed {seed}");
        }
    }
}

#[test]
fn placement_judges_where_the_objects_are_whatever_their_shapes() {
    use Placement::*;
    // (asked, drawn, placement): matched by color when the colors differ, by color and shape
    // when they are the same.
    let cases = [
        (
            "a red circle above a blue square",
            "a red triangle above a blue circle",
            Some(Right),
        ),
        (
            "a red circle above a blue square",
            "a red triangle below a blue circle",
            Some(Reversed),
        ),
        (
            "a green square to the left of a yellow circle",
            "a yellow circle to the left of a green square",
            Some(Reversed),
        ),
        (
            "a red circle above a red square",
            "a red circle below a red square",
            Some(Reversed),
        ),
        (
            "a red circle above a red square",
            "a red circle to the left of a red square",
            Some(Sideways),
        ),
        // Same color and a shape wrong: the two cannot be told apart.
        (
            "a red circle above a red square",
            "a red triangle above a red square",
            None,
        ),
        // A color missing: nothing to match.
        (
            "a red circle above a blue square",
            "a red circle above a green square",
            None,
        ),
        // Not a relation prompt.
        (
            "a red circle and a blue square",
            "a red circle and a blue square",
            None,
        ),
    ];
    let mut verdicts = Vec::new();
    for (asked, drawn, placement) in cases {
        for seed in 0..5 {
            let v = check(&parse(asked), &rendered(&parse(drawn), seed));
            assert_eq!(v.placement, placement, "{asked} on a render of {drawn}");
            verdicts.push(v);
        }
    }
    let score = ShapesScore::from_verdicts(&verdicts).placement.unwrap();
    assert_eq!(
        (score.images, score.right, score.reversed, score.sideways),
        (25, 5, 15, 5)
    );
    assert_eq!(score.accuracy, 0.2);
}

#[test]
fn a_failure_always_has_a_kind_and_a_reason() {
    // Each prompt checked against the render of another prompt: whatever the verdict, passing,
    // an empty reason and no failure kind go together.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut failed = 0;
    for i in 0..400 {
        let asked = Prompt::sample(&mut rng, &Form::ALL).unwrap();
        let drawn = Prompt::sample(&mut rng, &Form::ALL).unwrap();
        let v = check(&asked, &rendered(&drawn, i));
        assert_eq!(
            v.pass,
            v.reason.is_empty(),
            "{asked} on {drawn}: {}",
            v.reason
        );
        assert_eq!(
            v.pass,
            v.failure.is_none(),
            "{asked} on {drawn}: {:?}",
            v.failure
        );
        failed += usize::from(!v.pass);
    }
    assert!(failed > 300, "{failed}");
}

#[test]
fn a_prompt_outside_the_grammar_is_an_error_naming_it() {
    let blank = RgbImage::from_pixel(CANVAS, CANVAS, Rgb(BACKGROUND));
    let err = check_text("a red hexagon", &blank).unwrap_err().to_string();
    assert!(err.contains("\"a red hexagon\""), "{err}");
    assert!(err.contains("unknown shape `hexagon`"), "{err}");
    assert!(check_text("a red circle", &blank).is_ok());
}

#[test]
fn training_data_never_shows_a_held_out_prompt() {
    let dir = scratch_dir("eval-holdout");
    let holdout = Holdout::new(0.3).unwrap();
    write_shapes_dataset_excluding(&dir, 300, 1, &Form::ALL, &holdout).unwrap();
    let folder = ImageFolder::scan(&dir).unwrap();
    assert_eq!(folder.len(), 300);
    for item in &folder.items {
        assert!(
            !holdout.holds_out(&parse(&item.caption)),
            "{}",
            item.caption
        );
    }
    // Holding out every prompt of a form is refused rather than looping forever.
    let everything = Holdout::new(0.999_999).unwrap();
    let err = write_shapes_dataset_excluding(&dir.join("x"), 10, 1, &[Form::Single], &everything)
        .unwrap_err()
        .to_string();
    assert!(err.contains("every single prompt"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_committed_eval_prompts_are_held_out_and_cover_every_form() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes/eval-prompts.txt");
    let prompts = unclip::data::shapes::read_prompt_file(&path).unwrap();
    let holdout = Holdout::new(unclip::data::shapes::holdout::DEFAULT_HOLDOUT).unwrap();
    assert!(prompts.iter().all(|p| holdout.holds_out(p)));
    for form in Form::ALL {
        assert!(prompts.iter().any(|p| p.form() == form), "{form}");
    }
}

/// The tiny reference pipeline with the variation fixture's CLIP image tower added, as
/// `unclip assemble` lays out a trained model.
fn tiny_pipeline_with_image_tower(tag: &str) -> std::path::PathBuf {
    fn copy(src: &Path, dst: &Path) {
        std::fs::create_dir_all(dst).unwrap();
        for entry in std::fs::read_dir(src).unwrap() {
            let path = entry.unwrap().path();
            let target = dst.join(path.file_name().unwrap());
            if path.is_dir() {
                copy(&path, &target);
            } else {
                std::fs::copy(&path, &target).unwrap();
            }
        }
    }
    let dir = scratch_dir(tag);
    copy(&oracle_dir().join("unclip_tiny"), &dir);
    for part in ["image_encoder", "feature_extractor"] {
        copy(
            &oracle_dir().join("unclip_tiny_variation").join(part),
            &dir.join(part),
        );
    }
    dir
}

fn few_steps() -> GenerateOptions {
    GenerateOptions {
        prior_steps: 2,
        decoder_steps: 2,
        super_res_steps: 2,
        ..GenerateOptions::default()
    }
}

#[test]
fn shapes_evaluation_runs_on_the_tiny_pipeline_and_is_reproducible() {
    let pipeline = UnclipPipeline::load(&oracle_dir().join("unclip_tiny"), &Device::Cpu).unwrap();
    let prompts: Vec<Prompt> = [
        "a red circle",
        "two blue squares",
        "a red circle and a green triangle",
        "a yellow square above a purple circle",
    ]
    .map(parse)
    .to_vec();
    let opts = ShapesEvalOptions {
        images_per_prompt: 2,
        seed: 3,
        start: EvalStart::Prompt,
        generate: few_steps(),
    };
    let mut seen = Vec::new();
    let (score, verdicts) = evaluate_shapes(&pipeline, &prompts, &opts, &mut |j| {
        seen.push((j.prompt_index, j.image_index, j.image.dimensions()));
        Ok(())
    })
    .unwrap();
    assert_eq!(score.images, 8);
    assert_eq!(verdicts.len(), 8);
    assert_eq!(score.per_form.len(), 4);
    assert_eq!(
        seen[..3],
        [(0, 0, (32, 32)), (0, 1, (32, 32)), (1, 0, (32, 32))]
    );
    let (again, _) = evaluate_shapes(&pipeline, &prompts, &opts, &mut |_| Ok(())).unwrap();
    assert_eq!(again, score);
}

#[test]
fn shapes_evaluation_can_start_from_rendered_scenes() {
    let model = tiny_pipeline_with_image_tower("eval-shapes-start-model");
    let pipeline = UnclipPipeline::load(&model, &Device::Cpu).unwrap();
    let prompts: Vec<Prompt> = ["two blue squares", "a yellow square above a purple circle"]
        .map(parse)
        .to_vec();
    let run = |start| {
        let opts = ShapesEvalOptions {
            images_per_prompt: 2,
            seed: 1,
            start,
            generate: few_steps(),
        };
        let mut sizes = Vec::new();
        let (score, _) = evaluate_shapes(&pipeline, &prompts, &opts, &mut |j| {
            sizes.push(j.image.dimensions());
            Ok(())
        })
        .unwrap();
        (score, sizes)
    };
    // The checker's own ceiling: the rendered scenes pass.
    let (score, sizes) = run(EvalStart::Scene);
    assert_eq!(score.overall, 1.0);
    assert_eq!(sizes, vec![(64, 64); 4]);
    // The later stages run from the scenes and give the pipeline's output size.
    let output = pipeline.output_size().unwrap();
    for start in [EvalStart::DecoderSample, EvalStart::ImageEmbedding] {
        let (score, sizes) = run(start);
        assert_eq!(score.images, 4, "{start:?}");
        assert_eq!(
            sizes,
            vec![(output.1 as u32, output.0 as u32); 4],
            "{start:?}"
        );
    }
}

#[test]
fn caption_evaluation_scores_generated_and_real_images() {
    let model = tiny_pipeline_with_image_tower("eval-captions-model");
    let data = scratch_dir("eval-captions-data");
    write_shapes_dataset_excluding(&data, 10, 0, &Form::ALL, &Holdout::NONE).unwrap();
    let pipeline = UnclipPipeline::load(&model, &Device::Cpu).unwrap();
    let opts = CaptionsEvalOptions {
        limit: 8,
        seed: 0,
        batch: 4,
        generate: few_steps(),
    };
    let source = DataSource::open(data.to_str().unwrap()).unwrap();
    let mut calls = Vec::new();
    let report = evaluate_captions(&pipeline, &source, &opts, &mut |done, total| {
        calls.push((done, total))
    })
    .unwrap();
    assert_eq!(report.pairs, 8);
    assert_eq!(calls, [(0, 8), (4, 8), (8, 8)]);
    for s in [&report.generated, &report.real] {
        assert!((0.0..=100.0).contains(&s.clip_score), "{s:?}");
        assert!((0.0..=1.0).contains(&s.r_precision.score), "{s:?}");
        assert!(s.r_precision.candidates >= 2 && s.r_precision.candidates <= 8);
        assert!(s.frechet_distance.is_some_and(|d| d >= 0.0), "{s:?}");
    }
    // Without the image tower the scores cannot be computed, and the error says why.
    let no_tower = UnclipPipeline::load(&oracle_dir().join("unclip_tiny"), &Device::Cpu).unwrap();
    let err = evaluate_captions(&no_tower, &source, &opts, &mut |_, _| {})
        .unwrap_err()
        .to_string();
    assert!(err.contains("image_encoder"), "{err}");
    let _ = std::fs::remove_dir_all(&model);
    let _ = std::fs::remove_dir_all(&data);
}

/// The built-in shapes model, whose CLIP ranks image candidates.
fn shapes_model() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models/shapes")
}

/// (B, 3, 64, 64) in [-1, 1], as decoder samples reach the reranking.
fn as_samples(images: &[RgbImage]) -> candle_core::Tensor {
    let mut values = Vec::new();
    for image in images {
        for c in 0..3 {
            for p in image.pixels() {
                values.push(p[c] as f32 / 127.5 - 1.0);
            }
        }
    }
    candle_core::Tensor::from_vec(
        values,
        (images.len(), 3, CANVAS as usize, CANVAS as usize),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn reranking_picks_the_candidate_that_shows_the_prompt() {
    let pipeline = UnclipPipeline::load(&shapes_model(), &Device::Cpu).unwrap();
    let prompts = [
        "a red circle",
        "three blue squares",
        "a yellow triangle and a green square",
    ];
    let scenes: Vec<RgbImage> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| rendered(&parse(p), i as u64))
        .collect();
    let blank = RgbImage::from_pixel(CANVAS, CANVAS, Rgb(BACKGROUND));
    // Each prompt's group holds a blank canvas and the three scenes, its own at a different place.
    let mut candidates = Vec::new();
    for group in 0..prompts.len() {
        candidates.push(blank.clone());
        for offset in 0..prompts.len() {
            candidates.push(scenes[(group + offset) % prompts.len()].clone());
        }
    }
    let k = prompts.len() + 1;
    let picks = pipeline
        .closest_to_prompts(&as_samples(&candidates), &prompts, k)
        .unwrap();
    assert_eq!(picks, vec![1, k + 1, 2 * k + 1]);

    let err = pipeline
        .closest_to_prompts(&as_samples(&candidates), &prompts, 2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("12 images for 3 prompts"), "{err}");
}

#[test]
fn the_shapes_ranker_tells_a_pair_from_its_colors_on_the_wrong_shapes() {
    // Held-out pair prompts, each beside the same words with the two shapes exchanged: a
    // bag-of-words CLIP cannot tell them apart, the built-in model's `ranker/` must.
    let pipeline = UnclipPipeline::load(&shapes_model(), &Device::Cpu).unwrap();
    assert!(pipeline.ranker.is_some(), "models/shapes has a ranker/");
    let pairs = [
        (
            "a red triangle and a blue square",
            "a red square and a blue triangle",
        ),
        (
            "a red circle and a green triangle",
            "a red triangle and a green circle",
        ),
        (
            "a purple triangle and a yellow circle",
            "a purple circle and a yellow triangle",
        ),
        (
            "a blue triangle and an orange square",
            "a blue square and an orange triangle",
        ),
        (
            "a blue square and a green triangle",
            "a blue triangle and a green square",
        ),
        (
            "a yellow square and a purple triangle",
            "a yellow triangle and a purple square",
        ),
    ];
    let mut candidates = Vec::new();
    let mut expected = Vec::new();
    for (group, (prompt, swapped)) in pairs.iter().enumerate() {
        let (right, wrong) = (
            rendered(&parse(prompt), group as u64),
            rendered(&parse(swapped), group as u64),
        );
        // The right scene first in even groups, second in odd ones.
        if group % 2 == 0 {
            candidates.extend([right, wrong]);
            expected.push(2 * group);
        } else {
            candidates.extend([wrong, right]);
            expected.push(2 * group + 1);
        }
    }
    let prompts: Vec<&str> = pairs.iter().map(|(p, _)| *p).collect();
    let picks = pipeline
        .closest_to_prompts(&as_samples(&candidates), &prompts, 2)
        .unwrap();
    assert_eq!(picks, expected);
}
