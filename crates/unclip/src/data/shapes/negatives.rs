//! Hard negative captions for contrastive training: a prompt whose words are nearly those of
//! the original but whose meaning differs, exactly where CLIP trained on plain batches is blind.
//! A CLIP trained on the shapes world without them ranks "a red circle above a blue square"
//! and "a blue square above a red circle" against a scene of either at chance (measured:
//! 0.48 on 100 held-out relation prompts), because nothing in a random batch asks it to tell
//! them apart (Yuksekgonul et al. 2023, "When and why vision-language models behave like
//! bags-of-words", whose NegCLIP adds such captions as extra negatives).

use super::grammar::{ColoredShape, Prompt};
use super::palette::{Color, Count, Shape};
use rand::Rng;
use serde::Serialize;

/// What a hard negative changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NegativeKind {
    /// One object's color or shape replaced.
    Attribute,
    /// The count changed.
    Count,
    /// Two objects' colors (or shapes) exchanged: the same words bound the other way.
    Binding,
    /// A relation's two objects exchanged: the same words in the other order.
    Order,
}

impl NegativeKind {
    pub const ALL: [NegativeKind; 4] = [
        NegativeKind::Attribute,
        NegativeKind::Count,
        NegativeKind::Binding,
        NegativeKind::Order,
    ];

    pub fn name(self) -> &'static str {
        match self {
            NegativeKind::Attribute => "attribute",
            NegativeKind::Count => "count",
            NegativeKind::Binding => "binding",
            NegativeKind::Order => "order",
        }
    }
}

impl Prompt {
    /// A prompt of the same form that no scene of `self` satisfies: a relation's two objects
    /// exchanged or their colors exchanged, a pair's colors (or shapes) exchanged, a count
    /// changed, a single shape's color or shape changed. When an exchange would not change the
    /// meaning (two objects of one color), one attribute is replaced instead.
    pub fn hard_negative(&self, rng: &mut impl Rng) -> Prompt {
        self.hard_negative_of_kind(rng).1
    }

    /// A hard negative, as [`Prompt::hard_negative`], with what it changed.
    pub fn hard_negative_of_kind(&self, rng: &mut impl Rng) -> (NegativeKind, Prompt) {
        match *self {
            Prompt::Single { size, color, shape } => {
                let negative = if rng.random_bool(0.5) {
                    Prompt::Single {
                        size,
                        color: other(rng, &Color::ALL, color),
                        shape,
                    }
                } else {
                    Prompt::Single {
                        size,
                        color,
                        shape: other(rng, &Shape::ALL, shape),
                    }
                };
                (NegativeKind::Attribute, negative)
            }
            Prompt::Counting { n, color, shape } => match rng.random_range(0..3) {
                0 => (
                    NegativeKind::Attribute,
                    Prompt::Counting {
                        n,
                        color: other(rng, &Color::ALL, color),
                        shape,
                    },
                ),
                1 => (
                    NegativeKind::Attribute,
                    Prompt::Counting {
                        n,
                        color,
                        shape: other(rng, &Shape::ALL, shape),
                    },
                ),
                _ => (
                    NegativeKind::Count,
                    Prompt::Counting {
                        n: other(rng, &Count::ALL, n),
                        color,
                        shape,
                    },
                ),
            },
            Prompt::Pair { a, b } => {
                let (kind, a, b) = swapped_attribute(rng, a, b);
                (kind, Prompt::Pair { a, b })
            }
            Prompt::Relation { a, relation, b } => {
                if a != b && rng.random_bool(0.5) {
                    let negative = Prompt::Relation {
                        a: b,
                        relation,
                        b: a,
                    };
                    (NegativeKind::Order, negative)
                } else {
                    let (kind, a, b) = swapped_attribute(rng, a, b);
                    (kind, Prompt::Relation { a, relation, b })
                }
            }
        }
    }
}

/// The two objects with their colors (or their shapes) exchanged, "a red circle and a blue
/// square" becoming "a blue circle and a red square"; that changes the meaning only when they
/// differ in both color and shape, so otherwise one object gets another color.
fn swapped_attribute(
    rng: &mut impl Rng,
    a: ColoredShape,
    b: ColoredShape,
) -> (NegativeKind, ColoredShape, ColoredShape) {
    if a.color != b.color && a.shape != b.shape {
        if rng.random_bool(0.5) {
            let a2 = ColoredShape {
                color: b.color,
                ..a
            };
            let b2 = ColoredShape {
                color: a.color,
                ..b
            };
            (NegativeKind::Binding, a2, b2)
        } else {
            let a2 = ColoredShape {
                shape: b.shape,
                ..a
            };
            let b2 = ColoredShape {
                shape: a.shape,
                ..b
            };
            (NegativeKind::Binding, a2, b2)
        }
    } else {
        let recolored = ColoredShape {
            color: other(rng, &Color::ALL, a.color),
            ..a
        };
        (NegativeKind::Attribute, recolored, b)
    }
}

/// A random item of `items` other than `not` (every vocabulary table has at least two).
fn other<T: Copy + PartialEq>(rng: &mut impl Rng, items: &[T], not: T) -> T {
    loop {
        let item = items[rng.random_range(0..items.len())];
        if item != not {
            return item;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shapes::Form;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn negatives_keep_the_form_and_change_the_meaning() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        for _ in 0..2000 {
            let prompt = Prompt::sample(&mut rng, &Form::ALL).unwrap();
            let negative = prompt.hard_negative(&mut rng);
            assert_eq!(negative.form(), prompt.form(), "{prompt} -> {negative}");
            let reparsed = Prompt::parse(&negative.to_string()).unwrap();
            assert_eq!(reparsed, negative);
            assert_ne!(negative, prompt);
            if let (Prompt::Pair { a, b }, Prompt::Pair { a: na, b: nb }) = (prompt, negative) {
                // A pair is unordered: its objects listed the other way round mean the same.
                assert!(!(na == b && nb == a), "{prompt} -> {negative}");
            }
        }
    }

    #[test]
    fn relations_get_their_objects_exchanged() {
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        let prompt = Prompt::parse("a red circle above a blue square").unwrap();
        let negatives: Vec<String> = (0..64)
            .map(|_| prompt.hard_negative(&mut rng).to_string())
            .collect();
        for expected in [
            "a blue square above a red circle",
            "a blue circle above a red square",
            "a red square above a blue circle",
        ] {
            assert!(negatives.iter().any(|n| n == expected), "{expected}");
        }
    }
}
