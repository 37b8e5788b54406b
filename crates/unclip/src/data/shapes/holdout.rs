//! Held-out prompts: a share of the grammar that training data never shows, so compositional
//! accuracy can be measured on prompts the model has not seen.
//!
//! Membership is a pure function of the prompt: a 64-bit FNV-1a hash of its *scene key* against
//! the fraction, with no list to keep in sync. The scene key names the set of scenes a prompt
//! describes, so prompts that describe the same scenes share a split: "a red circle and a blue
//! square" and "a blue square and a red circle" (pairs are unordered), and "a red circle to the
//! right of a blue square" and "a blue square to the left of a red circle" (each relation is
//! written as left-of or above). Otherwise a model could see one wording in training and be
//! scored on the other.
//!
//! The whole grammar is finite (1,638 prompts), so the held-out set can be listed in full.

use super::grammar::{ColoredShape, Form, Prompt};
use super::palette::{Color, Count, Relation, Shape, Size};
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The share of scene keys `unclip data shapes` holds out unless told otherwise; the committed
/// `models/shapes/eval-prompts.txt` was drawn with it.
pub const DEFAULT_HOLDOUT: f64 = 0.1;

/// Which prompts are held out from training.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Holdout {
    fraction: f64,
}

impl Holdout {
    /// Nothing held out.
    pub const NONE: Holdout = Holdout { fraction: 0.0 };

    /// Holds out about `fraction` of the scene keys; `fraction` in [0, 1).
    pub fn new(fraction: f64) -> Result<Holdout> {
        if !(0.0..1.0).contains(&fraction) {
            return Err(Error::InvalidInput(format!(
                "holdout fraction {fraction}; allowed: at least 0 and below 1"
            )));
        }
        Ok(Holdout { fraction })
    }

    pub fn fraction(&self) -> f64 {
        self.fraction
    }

    /// Whether training must never show `prompt`.
    pub fn holds_out(&self, prompt: &Prompt) -> bool {
        if self.fraction <= 0.0 {
            return false;
        }
        // The top 53 bits as a uniform number in [0, 1).
        let u = (fnv1a(scene_key(prompt).as_bytes()) >> 11) as f64 / (1u64 << 53) as f64;
        u < self.fraction
    }

    /// Every held-out prompt of the grammar, in canonical order.
    pub fn held_out_prompts(&self) -> Vec<Prompt> {
        all_prompts()
            .into_iter()
            .filter(|p| self.holds_out(p))
            .collect()
    }

    /// An evaluation list: up to `per_form` held-out prompts of each form (all of them when a
    /// form has fewer), drawn with `seed`, grouped by form.
    pub fn evaluation_prompts(&self, per_form: usize, seed: u64) -> Result<Vec<Prompt>> {
        let held = self.held_out_prompts();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut out = Vec::new();
        for form in Form::ALL {
            let mut of_form: Vec<Prompt> =
                held.iter().copied().filter(|p| p.form() == form).collect();
            of_form.shuffle(&mut rng);
            of_form.truncate(per_form);
            out.extend(of_form);
        }
        if out.is_empty() {
            return Err(Error::InvalidInput(format!(
                "holdout fraction {} holds out no prompts: raise it",
                self.fraction
            )));
        }
        Ok(out)
    }
}

/// The canonical text of the scenes `prompt` describes (see the module comment).
pub fn scene_key(prompt: &Prompt) -> String {
    match *prompt {
        Prompt::Pair { a, b } => {
            let (first, second) = if a <= b { (a, b) } else { (b, a) };
            Prompt::Pair {
                a: first,
                b: second,
            }
            .to_string()
        }
        Prompt::Relation { a, relation, b } => {
            let (a, relation, b) = match relation {
                Relation::RightOf => (b, Relation::LeftOf, a),
                Relation::Below => (b, Relation::Above, a),
                _ => (a, relation, b),
            };
            Prompt::Relation { a, relation, b }.to_string()
        }
        _ => prompt.to_string(),
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // FNV's low bits mix poorly for short, similar strings; finish with a 64-bit avalanche
    // (splitmix64's) so the top bits used above are uniform.
    hash ^= hash >> 30;
    hash = hash.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash ^= hash >> 27;
    hash = hash.wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^ (hash >> 31)
}

/// Every prompt of the grammar in canonical form (pairs and relations of two different
/// colored shapes, as the sampler draws them).
pub fn all_prompts() -> Vec<Prompt> {
    let mut out = Vec::new();
    let objects: Vec<ColoredShape> = Color::ALL
        .into_iter()
        .flat_map(|color| Shape::ALL.map(|shape| ColoredShape { color, shape }))
        .collect();
    for &ColoredShape { color, shape } in &objects {
        for size in [None, Some(Size::Small), Some(Size::Large)] {
            out.push(Prompt::Single { size, color, shape });
        }
        for n in Count::ALL {
            out.push(Prompt::Counting { n, color, shape });
        }
    }
    for &a in &objects {
        for &b in objects.iter().filter(|&&b| b != a) {
            out.push(Prompt::Pair { a, b });
            for relation in Relation::ALL {
                out.push(Prompt::Relation { a, relation, b });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_has_1638_distinct_prompts() {
        let all = all_prompts();
        assert_eq!(all.len(), 54 + 54 + 306 + 1224);
        let distinct: std::collections::BTreeSet<String> =
            all.iter().map(|p| p.to_string()).collect();
        assert_eq!(distinct.len(), all.len());
    }

    #[test]
    fn prompts_of_the_same_scenes_share_a_split() {
        let p = |s: &str| Prompt::parse(s).unwrap();
        assert_eq!(
            scene_key(&p("a red circle and a blue square")),
            scene_key(&p("a blue square and a red circle"))
        );
        assert_eq!(
            scene_key(&p("a red circle to the right of a blue square")),
            scene_key(&p("a blue square to the left of a red circle"))
        );
        assert_eq!(
            scene_key(&p("a red circle below a blue square")),
            scene_key(&p("a blue square above a red circle"))
        );
        assert_ne!(
            scene_key(&p("a red circle above a blue square")),
            scene_key(&p("a blue square above a red circle"))
        );
    }

    #[test]
    fn the_held_out_share_is_close_to_the_fraction_and_covers_every_form() {
        let holdout = Holdout::new(0.1).unwrap();
        let held = holdout.held_out_prompts();
        let share = held.len() as f64 / all_prompts().len() as f64;
        assert!((0.06..0.14).contains(&share), "{share}");
        for form in Form::ALL {
            assert!(held.iter().any(|p| p.form() == form), "{form}");
        }
        assert!(Holdout::NONE.held_out_prompts().is_empty());
        assert!(Holdout::new(1.0).is_err());
        assert!(Holdout::new(-0.1).is_err());
    }

    #[test]
    fn evaluation_prompts_are_held_out_and_deterministic() {
        let holdout = Holdout::new(0.1).unwrap();
        let a = holdout.evaluation_prompts(25, 0).unwrap();
        assert_eq!(a, holdout.evaluation_prompts(25, 0).unwrap());
        assert!(a.iter().all(|p| holdout.holds_out(p)));
        for form in Form::ALL {
            let n = a.iter().filter(|p| p.form() == form).count();
            assert!((1..=25).contains(&n), "{form}: {n}");
        }
    }
}
