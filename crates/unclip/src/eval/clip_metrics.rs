//! Text-image agreement measured with CLIP: CLIP score and R-precision.
//!
//! - CLIP score (Hessel et al. 2021, "CLIPScore"; scaled as torchmetrics' `CLIPScore` does):
//!   100 · max(cos(image, caption), 0), averaged over the images.
//! - R-precision (Xu et al. 2018, AttnGAN §4; the CLIP form used by Park et al. 2021 and the
//!   DALL-E 2 follow-ups): each image ranks its own caption against 99 other captions of the
//!   set by cosine similarity; the score is the share of images whose own caption ranks first
//!   (R = 1). Distractors are drawn with a seeded RNG from the captions whose text differs from
//!   the image's own (a duplicate caption is no wrong answer); with fewer than 99 such captions,
//!   all of them are used and [`RPrecision::candidates`] says so. A tie counts as a miss.
//!
//! Embeddings are rows of `f32`; both functions normalise them, so raw CLIP features do.

use crate::error::{Error, Result};
use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// Captions each image is ranked against besides its own (AttnGAN's 99).
pub const R_PRECISION_DISTRACTORS: usize = 99;

fn unit(v: &[f32]) -> Vec<f64> {
    let norm = v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    let norm = if norm > 0.0 { norm } else { 1.0 };
    v.iter().map(|&x| x as f64 / norm).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn check_rows(what: &str, rows: &[Vec<f32>], dim: usize) -> Result<()> {
    if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != dim) {
        return Err(Error::InvalidInput(format!(
            "{what} row {i} has {} values; every embedding must have {dim}",
            row.len()
        )));
    }
    Ok(())
}

/// The mean CLIP score of image `i` against caption `i`.
pub fn clip_score(images: &[Vec<f32>], captions: &[Vec<f32>]) -> Result<f64> {
    if images.len() != captions.len() || images.is_empty() {
        return Err(Error::InvalidInput(format!(
            "CLIP score needs one caption per image and at least one pair; got {} images and {} captions",
            images.len(),
            captions.len()
        )));
    }
    let dim = images[0].len();
    check_rows("image", images, dim)?;
    check_rows("caption", captions, dim)?;
    let total: f64 = images
        .iter()
        .zip(captions)
        .map(|(i, c)| 100.0 * dot(&unit(i), &unit(c)).max(0.0))
        .sum();
    Ok(total / images.len() as f64)
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RPrecision {
    /// Share of images whose own caption ranks first.
    pub score: f64,
    /// Captions each image was ranked against, its own included (at most 100).
    pub candidates: usize,
    pub images: usize,
}

/// R-precision of image `i` against caption `i`. `texts[i]` is caption `i`'s text (to keep
/// duplicates of an image's own caption out of its distractors); `seed` draws the distractors.
pub fn r_precision(
    images: &[Vec<f32>],
    captions: &[Vec<f32>],
    texts: &[String],
    seed: u64,
) -> Result<RPrecision> {
    if images.len() != captions.len() || texts.len() != captions.len() || images.is_empty() {
        return Err(Error::InvalidInput(format!(
            "R-precision needs one caption (embedding and text) per image; got {} images, {} caption embeddings, {} texts",
            images.len(),
            captions.len(),
            texts.len()
        )));
    }
    let dim = images[0].len();
    check_rows("image", images, dim)?;
    check_rows("caption", captions, dim)?;
    let images: Vec<Vec<f64>> = images.iter().map(|v| unit(v)).collect();
    let captions: Vec<Vec<f64>> = captions.iter().map(|v| unit(v)).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut hits, mut fewest) = (0usize, usize::MAX);
    for (i, image) in images.iter().enumerate() {
        let others: Vec<usize> = (0..captions.len())
            .filter(|&j| texts[j] != texts[i])
            .collect();
        let k = others.len().min(R_PRECISION_DISTRACTORS);
        let own = dot(image, &captions[i]);
        let beaten = sample(&mut rng, others.len(), k)
            .into_iter()
            .any(|j| dot(image, &captions[others[j]]) >= own);
        hits += usize::from(!beaten);
        fewest = fewest.min(k + 1);
    }
    Ok(RPrecision {
        score: hits as f64 / images.len() as f64,
        candidates: fewest,
        images: images.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn onehot(i: usize, n: usize) -> Vec<f32> {
        (0..n).map(|j| if j == i { 1.0 } else { 0.0 }).collect()
    }

    #[test]
    fn clip_score_is_100_cosine_clipped_at_zero() {
        let a = vec![vec![3.0, 0.0], vec![1.0, 1.0], vec![1.0, 0.0]];
        let b = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![-1.0, 0.0]];
        let s = clip_score(&a, &b).unwrap();
        let want = (100.0 + 100.0 / 2f64.sqrt() + 0.0) / 3.0;
        assert!((s - want).abs() < 1e-9, "{s} vs {want}");
        assert!(clip_score(&a, &b[..2]).is_err());
        assert!(clip_score(&[vec![1.0]], &[vec![1.0, 0.0]]).is_err());
    }

    #[test]
    fn r_precision_is_one_for_matching_and_zero_for_shifted_embeddings() {
        let n = 150;
        let texts: Vec<String> = (0..n).map(|i| format!("caption {i}")).collect();
        let e: Vec<Vec<f32>> = (0..n).map(|i| onehot(i, n)).collect();
        let r = r_precision(&e, &e, &texts, 0).unwrap();
        assert_eq!(r.score, 1.0);
        assert_eq!(r.candidates, 100);
        // Every image looks like the next caption: its own caption never wins.
        let shifted: Vec<Vec<f32>> = (0..n).map(|i| onehot((i + 1) % n, n)).collect();
        let r = r_precision(&shifted, &e, &texts, 0).unwrap();
        assert_eq!(r.score, 0.0);
    }

    #[test]
    fn duplicate_captions_are_not_distractors_and_small_sets_use_all_captions() {
        let texts: Vec<String> = ["a", "a", "b"].map(String::from).to_vec();
        let e = vec![vec![1.0, 0.0], vec![1.0, 0.0], vec![0.0, 1.0]];
        let r = r_precision(&e, &e, &texts, 3).unwrap();
        assert_eq!(r.score, 1.0);
        assert_eq!(r.candidates, 2);
    }
}
