//! Which extra negative captions CLIP training adds to each batch (NegCLIP, Yuksekgonul et al.
//! 2023): one per caption, nearly its words but not its meaning, so that the image must prefer
//! its own caption over it. Without them a contrastive batch rarely holds two captions that
//! differ only in word order, and CLIP learns a bag of words: on the shapes world it ranked a
//! relation against its mirror image at chance.
//!
//! On the shapes world each negative caption also comes with a rendered scene of it, which joins
//! the batch as a pair of its own (NegCLIP's hard negative images): the scene of "a blue square
//! above a red circle" then competes with the scene of "a red circle above a blue square" for
//! each caption, so the image tower, not only the text tower, is asked to tell them apart.
//! Negative captions alone left relation order at chance (2,500 steps, 5 December 2026): the
//! text tower had nothing in the images to align an order feature with.
//!
//! `shapes-rounded` adds, for each caption naming a square or a triangle, the batch's own image
//! with its corners rounded (blurred, then every pixel snapped to the nearest palette color) as a
//! negative image that no caption owns: a CLIP that ranks a decoder's samples must prefer a
//! square with corners over a rounded one, which a CLIP trained on crisp renders never had to
//! tell apart (a small decoder's typical failure is a square drawn nearly round).

use crate::data::shapes::palette::{Color, BACKGROUND};
use crate::data::shapes::{render, Prompt, Scene};
use crate::error::{Error, Result};
use candle_core::Tensor;
use image::RgbImage;
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HardNegatives {
    /// Plain CLIP: the other captions of the batch are the only negatives.
    #[default]
    None,
    /// The shapes grammar's own negatives (`Prompt::hard_negative`): objects of a relation
    /// exchanged, colors of a pair exchanged, counts changed, each with a rendered scene of it.
    /// Every caption must be a shapes prompt.
    Shapes,
    /// Any captions: two different words exchanged, at random (NegCLIP's shuffles without its
    /// part-of-speech tagger). Captions of fewer than two different words get none.
    WordSwap,
    /// `Shapes`, plus each image whose caption names a square or a triangle with its corners
    /// rounded, as a negative image of its own caption.
    ShapesRounded,
}

/// What a batch gains: negative captions, and, when the mode can draw them, one image of each
/// (then every caption is paired with its image, `scenes[i]` showing `captions[i]`).
#[derive(Debug, Default)]
pub struct NegativeExamples {
    pub captions: Vec<String>,
    pub scenes: Vec<RgbImage>,
}

impl HardNegatives {
    /// The negatives for `captions`, in order (fewer than the captions with `WordSwap` when
    /// some cannot be changed, none with `None`).
    pub fn for_captions(self, captions: &[String], rng: &mut impl Rng) -> Result<NegativeExamples> {
        match self {
            HardNegatives::None => Ok(NegativeExamples::default()),
            HardNegatives::Shapes | HardNegatives::ShapesRounded => {
                let mut out = NegativeExamples::default();
                for caption in captions {
                    let prompt = Prompt::parse(caption).map_err(|e| {
                        Error::InvalidInput(format!(
                            "hard_negatives \"shapes\" needs shapes-world captions: {e}; use \
                             \"word-swap\" or \"none\" for other data"
                        ))
                    })?;
                    let negative = prompt.hard_negative(rng);
                    out.scenes.push(render(&Scene::sample(&negative, rng)?));
                    out.captions.push(negative.to_string());
                }
                Ok(out)
            }
            HardNegatives::WordSwap => Ok(NegativeExamples {
                captions: captions
                    .iter()
                    .filter_map(|caption| word_swap(caption, rng))
                    .collect(),
                scenes: Vec::new(),
            }),
        }
    }
}

/// Blur radius range (Gaussian sigma, in pixels of the image CLIP sees) of rounded negatives.
const ROUNDING_SIGMA: std::ops::Range<f32> = 0.8..1.8;

impl HardNegatives {
    /// For `ShapesRounded`: the images (B, 3, S, S) in [-1, 1] whose captions name a shape with
    /// corners, each with its corners rounded; None for the other modes or when no caption
    /// names one.
    pub fn rounded_images(
        self,
        pixels: &Tensor,
        captions: &[String],
        rng: &mut impl Rng,
    ) -> Result<Option<Tensor>> {
        if self != HardNegatives::ShapesRounded {
            return Ok(None);
        }
        let (b, c, h, w) = pixels.dims4()?;
        let values = pixels.flatten_all()?.to_vec1::<f32>()?;
        let mut out = Vec::new();
        let mut rounded = 0;
        for (i, caption) in captions.iter().enumerate().take(b) {
            if !(caption.contains("square") || caption.contains("triangle")) {
                continue;
            }
            let image = &values[i * c * h * w..(i + 1) * c * h * w];
            out.extend(round_corners(image, h, w, rng.random_range(ROUNDING_SIGMA)));
            rounded += 1;
        }
        if rounded == 0 {
            return Ok(None);
        }
        Ok(Some(Tensor::from_vec(
            out,
            (rounded, c, h, w),
            pixels.device(),
        )?))
    }
}

/// One (3, h, w) image in [-1, 1], Gaussian-blurred by `sigma` pixels and each pixel set to the
/// nearest palette color (the background or a shape's): shapes keep crisp edges and their
/// colors, but lose their corners.
fn round_corners(image: &[f32], h: usize, w: usize, sigma: f32) -> Vec<f32> {
    let radius = (2.5 * sigma).ceil() as isize;
    let kernel: Vec<f32> = (-radius..=radius)
        .map(|d| (-(d * d) as f32 / (2.0 * sigma * sigma)).exp())
        .collect();
    let total: f32 = kernel.iter().sum();
    let blur_1d = |src: &[f32], step_along: usize, len: usize, lines: usize, step_line: usize| {
        let mut dst = vec![0.0; src.len()];
        for line in 0..lines {
            for x in 0..len as isize {
                let mut acc = 0.0;
                for (k, weight) in kernel.iter().enumerate() {
                    let at = (x + k as isize - radius).clamp(0, len as isize - 1) as usize;
                    acc += weight * src[line * step_line + at * step_along];
                }
                dst[line * step_line + x as usize * step_along] = acc / total;
            }
        }
        dst
    };
    let mut blurred = Vec::with_capacity(image.len());
    for plane in image.chunks(h * w) {
        let rows = blur_1d(plane, 1, w, h, w);
        blurred.extend(blur_1d(&rows, w, h, w, 1));
    }
    let palette: Vec<[f32; 3]> = std::iter::once(BACKGROUND)
        .chain(Color::ALL.iter().map(|c| c.rgb()))
        .map(|rgb| rgb.map(|v| v as f32 / 127.5 - 1.0))
        .collect();
    let pixel = |values: &[f32], p: usize| [values[p], values[h * w + p], values[2 * h * w + p]];
    let nearest = |colors: &[[f32; 3]], value: [f32; 3]| -> [f32; 3] {
        let distance = |color: &[f32; 3]| -> f32 {
            color
                .iter()
                .zip(&value)
                .map(|(a, b)| (a - b) * (a - b))
                .sum()
        };
        colors
            .iter()
            .copied()
            .min_by(|a, b| distance(a).total_cmp(&distance(b)))
            .unwrap_or(value)
    };
    // Only the colors the image shows: a blurred red edge on white is nearest to orange.
    let mut present: Vec<[f32; 3]> = Vec::new();
    for p in 0..h * w {
        let color = nearest(&palette, pixel(image, p));
        if !present.contains(&color) {
            present.push(color);
        }
    }
    let mut out = vec![0.0; image.len()];
    for p in 0..h * w {
        let color = nearest(&present, pixel(&blurred, p));
        for (ch, value) in color.into_iter().enumerate() {
            out[ch * h * w + p] = value;
        }
    }
    out
}

/// `caption` with two different words exchanged, or None when it has fewer than two.
fn word_swap(caption: &str, rng: &mut impl Rng) -> Option<String> {
    let mut words: Vec<&str> = caption.split_whitespace().collect();
    let pairs: Vec<(usize, usize)> = (0..words.len())
        .flat_map(|i| (i + 1..words.len()).map(move |j| (i, j)))
        .filter(|&(i, j)| words[i] != words[j])
        .collect();
    if pairs.is_empty() {
        return None;
    }
    let (i, j) = pairs[rng.random_range(0..pairs.len())];
    words.swap(i, j);
    Some(words.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn each_mode_gives_its_negatives() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let captions = vec![
            "a red circle above a blue square".to_string(),
            "two green triangles".to_string(),
        ];
        let none = HardNegatives::None
            .for_captions(&captions, &mut rng)
            .unwrap();
        assert!(none.captions.is_empty() && none.scenes.is_empty());
        let shapes = HardNegatives::Shapes
            .for_captions(&captions, &mut rng)
            .unwrap();
        assert_eq!((shapes.captions.len(), shapes.scenes.len()), (2, 2));
        for ((negative, scene), caption) in
            shapes.captions.iter().zip(&shapes.scenes).zip(&captions)
        {
            assert_ne!(negative, caption);
            let prompt = Prompt::parse(negative).unwrap();
            // The scene shows the negative, as the checker judges it.
            assert!(crate::eval::check(&prompt, scene).pass, "{negative}");
        }
        let swapped = HardNegatives::WordSwap
            .for_captions(
                &["a cat on a mat".into(), "cat".into(), "a a".into()],
                &mut rng,
            )
            .unwrap();
        assert!(swapped.scenes.is_empty());
        let swapped = swapped.captions;
        assert_eq!(swapped.len(), 1);
        let mut words: Vec<&str> = swapped[0].split(' ').collect();
        assert_ne!(swapped[0], "a cat on a mat");
        words.sort();
        assert_eq!(words, ["a", "a", "cat", "mat", "on"]);
    }

    #[test]
    fn shapes_mode_names_a_caption_outside_the_grammar() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let err = HardNegatives::Shapes
            .for_captions(&["a photo of a dog".into()], &mut rng)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("a photo of a dog") && err.contains("word-swap"),
            "{err}"
        );
    }

    #[test]
    fn rounded_negatives_cut_the_corners_of_squares_and_keep_the_palette() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let as_chw = |text: &str, rng: &mut ChaCha8Rng| {
            let scene = Scene::sample(&Prompt::parse(text).unwrap(), rng).unwrap();
            let image = render(&scene);
            let (w, h) = (image.width() as usize, image.height() as usize);
            let mut chw = vec![0f32; 3 * h * w];
            for (i, p) in image.pixels().enumerate() {
                for c in 0..3 {
                    chw[c * h * w + i] = p[c] as f32 / 127.5 - 1.0;
                }
            }
            (chw, h, w)
        };
        // Of the shape's bounding box, how much it fills: 1 for a square, pi/4 for a circle.
        let fill_of_box = |chw: &[f32], h: usize, w: usize| {
            let inside: Vec<(usize, usize)> = (0..h * w)
                .filter(|&p| chw[p] < 0.99)
                .map(|p| (p / w, p % w))
                .collect();
            let rows = inside.iter().map(|p| p.0);
            let cols = inside.iter().map(|p| p.1);
            let height = rows.clone().max().unwrap() - rows.min().unwrap() + 1;
            let width = cols.clone().max().unwrap() - cols.min().unwrap() + 1;
            inside.len() as f32 / (height * width) as f32
        };
        for text in ["a large red square", "a large red circle"] {
            let (chw, h, w) = as_chw(text, &mut rng);
            let rounded = round_corners(&chw, h, w, 3.0);
            if text.ends_with("square") {
                let before = fill_of_box(&chw, h, w);
                let after = fill_of_box(&rounded, h, w);
                assert!(before > 0.99 && after < 0.98, "{text}: {before} -> {after}");
            }
            let red = Color::Red.rgb().map(|v| v as f32 / 127.5 - 1.0);
            let white = BACKGROUND.map(|v| v as f32 / 127.5 - 1.0);
            for p in 0..h * w {
                let px = [rounded[p], rounded[h * w + p], rounded[2 * h * w + p]];
                assert!(px == red || px == white, "{text}: pixel {p} is {px:?}");
            }
        }
        // Only the rounded mode adds them, and only for captions naming a shape with corners.
        let (chw, h, w) = as_chw("a large red square", &mut rng);
        let two = Tensor::from_vec(
            [chw.clone(), chw].concat(),
            (2, 3, h, w),
            &candle_core::Device::Cpu,
        )
        .unwrap();
        let captions = [
            "a large red square".to_string(),
            "a large red circle".to_string(),
        ];
        let rounded = HardNegatives::ShapesRounded
            .rounded_images(&two, &captions, &mut rng)
            .unwrap();
        assert_eq!(rounded.unwrap().dims(), [1, 3, h, w]);
        assert!(HardNegatives::Shapes
            .rounded_images(&two, &captions, &mut rng)
            .unwrap()
            .is_none());
        let circles = [
            "a large red circle".to_string(),
            "a blue circle".to_string(),
        ];
        assert!(HardNegatives::ShapesRounded
            .rounded_images(&two, &circles, &mut rng)
            .unwrap()
            .is_none());
    }
}
