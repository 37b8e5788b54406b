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

use crate::data::shapes::{render, Prompt, Scene};
use crate::error::{Error, Result};
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
            HardNegatives::Shapes => {
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
}
