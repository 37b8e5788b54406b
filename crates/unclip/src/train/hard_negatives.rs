//! Which extra negative captions CLIP training adds to each batch (NegCLIP, Yuksekgonul et al.
//! 2023): one per caption, nearly its words but not its meaning, so that the image must prefer
//! its own caption over it. Without them a contrastive batch rarely holds two captions that
//! differ only in word order, and CLIP learns a bag of words: on the shapes world it ranked a
//! relation against its mirror image at chance.

use crate::data::shapes::Prompt;
use crate::error::{Error, Result};
use rand::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HardNegatives {
    /// Plain CLIP: the other captions of the batch are the only negatives.
    #[default]
    None,
    /// The shapes grammar's own negatives (`Prompt::hard_negative`): objects of a relation
    /// exchanged, colors of a pair exchanged, counts changed. Every caption must be a shapes
    /// prompt.
    Shapes,
    /// Any captions: two different words exchanged, at random (NegCLIP's shuffles without its
    /// part-of-speech tagger). Captions of fewer than two different words get none.
    WordSwap,
}

impl HardNegatives {
    /// The negative captions for `captions`, in order (fewer than the captions with `WordSwap`
    /// when some cannot be changed, none with `None`).
    pub fn for_captions(self, captions: &[String], rng: &mut impl Rng) -> Result<Vec<String>> {
        match self {
            HardNegatives::None => Ok(Vec::new()),
            HardNegatives::Shapes => captions
                .iter()
                .map(|caption| {
                    let prompt = Prompt::parse(caption).map_err(|e| {
                        Error::InvalidInput(format!(
                            "hard_negatives \"shapes\" needs shapes-world captions: {e}; use \
                             \"word-swap\" or \"none\" for other data"
                        ))
                    })?;
                    Ok(prompt.hard_negative(rng).to_string())
                })
                .collect(),
            HardNegatives::WordSwap => Ok(captions
                .iter()
                .filter_map(|caption| word_swap(caption, rng))
                .collect()),
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
        assert!(HardNegatives::None
            .for_captions(&captions, &mut rng)
            .unwrap()
            .is_empty());
        let shapes = HardNegatives::Shapes
            .for_captions(&captions, &mut rng)
            .unwrap();
        assert_eq!(shapes.len(), 2);
        for (negative, caption) in shapes.iter().zip(&captions) {
            assert_ne!(negative, caption);
            Prompt::parse(negative).unwrap();
        }
        let swapped = HardNegatives::WordSwap
            .for_captions(
                &["a cat on a mat".into(), "cat".into(), "a a".into()],
                &mut rng,
            )
            .unwrap();
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
