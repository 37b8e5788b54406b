//! The caption grammar of the shapes world (docs/shapes-world.md, "Prompt forms"): a typed
//! [`Prompt`], its parser (the only gate through which text enters the world), its canonical
//! text, and a seeded sampler.
//!
//! The four forms, lower case and without a final period ("a" may be written "an"):
//! 1. single:   `a [size] <color> <shape>`
//! 2. counting: `<two|three|four> <color> <shape>s`
//! 3. pair:     `a <color> <shape> and a <color> <shape>`
//! 4. relation: `a <color> <shape> <relation> a <color> <shape>`
//!
//! "one" is the number word of the single form and is accepted in place of its first "a".

use super::palette::{Color, Count, Relation, Shape, Size};
use crate::error::{Error, Result};
use rand::seq::IndexedRandom;
use rand::Rng;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

const FORMS_HELP: &str = "the accepted forms are: 1. single `a [small|large] <color> <shape>`, \
     2. counting `<two|three|four> <color> <shape>s`, \
     3. pair `a <color> <shape> and a <color> <shape>`, \
     4. relation `a <color> <shape> <to the left of|to the right of|above|below> a <color> <shape>` \
     (lower case, no final period, `a` or `an`; colors: red, green, blue, yellow, purple, orange; \
     shapes: circle, square, triangle)";

/// The four prompt forms; the checker reports accuracy per form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Form {
    Single,
    Counting,
    Pair,
    Relation,
}

impl Form {
    pub const ALL: [Form; 4] = [Form::Single, Form::Counting, Form::Pair, Form::Relation];

    pub fn name(self) -> &'static str {
        match self {
            Form::Single => "single",
            Form::Counting => "counting",
            Form::Pair => "pair",
            Form::Relation => "relation",
        }
    }
}

impl fmt::Display for Form {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Form {
    type Err = Error;

    fn from_str(s: &str) -> Result<Form> {
        Form::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "unknown prompt form `{s}`: expected one of single, counting, pair, relation"
                ))
            })
    }
}

/// One colored shape as a prompt names it ("a red circle").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ColoredShape {
    pub color: Color,
    pub shape: Shape,
}

impl ColoredShape {
    fn sample(rng: &mut impl Rng) -> ColoredShape {
        ColoredShape {
            color: pick(rng, &Color::ALL),
            shape: pick(rng, &Shape::ALL),
        }
    }
}

impl fmt::Display for ColoredShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let color = self.color.name();
        write!(f, "{} {color} {}", article(color), self.shape.name())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Prompt {
    Single {
        size: Option<Size>,
        color: Color,
        shape: Shape,
    },
    Counting {
        n: Count,
        color: Color,
        shape: Shape,
    },
    Pair {
        a: ColoredShape,
        b: ColoredShape,
    },
    Relation {
        a: ColoredShape,
        relation: Relation,
        b: ColoredShape,
    },
}

impl Prompt {
    pub fn form(&self) -> Form {
        match self {
            Prompt::Single { .. } => Form::Single,
            Prompt::Counting { .. } => Form::Counting,
            Prompt::Pair { .. } => Form::Pair,
            Prompt::Relation { .. } => Form::Relation,
        }
    }

    /// Parses one of the four forms; anything else is `Error::InvalidInput` naming the prompt,
    /// what was wrong, and the forms.
    pub fn parse(text: &str) -> Result<Prompt> {
        parse_words(text).map_err(|reason| {
            let shown = excerpt(text);
            Error::InvalidInput(format!(
                "prompt {shown:?} is not in the shapes grammar ({reason}); {FORMS_HELP}"
            ))
        })
    }

    /// A random prompt of a form drawn uniformly from `forms`.
    pub fn sample(rng: &mut impl Rng, forms: &[Form]) -> Result<Prompt> {
        let form = forms.choose(rng).ok_or_else(|| {
            Error::InvalidInput("no prompt forms to sample from: name at least one".to_string())
        })?;
        Ok(Prompt::sample_form(rng, *form))
    }

    /// A random prompt of `form`. Single prompts name a size half of the time; the two shapes
    /// of a pair or relation always differ in color or shape, so the roles are identifiable.
    pub fn sample_form(rng: &mut impl Rng, form: Form) -> Prompt {
        match form {
            Form::Single => Prompt::Single {
                size: match rng.random_range(0..4) {
                    0 => Some(Size::Small),
                    1 => Some(Size::Large),
                    _ => None,
                },
                color: pick(rng, &Color::ALL),
                shape: pick(rng, &Shape::ALL),
            },
            Form::Counting => Prompt::Counting {
                n: pick(rng, &Count::ALL),
                color: pick(rng, &Color::ALL),
                shape: pick(rng, &Shape::ALL),
            },
            Form::Pair => {
                let (a, b) = distinct_pair(rng);
                Prompt::Pair { a, b }
            }
            Form::Relation => {
                let (a, b) = distinct_pair(rng);
                let relation = pick(rng, &Relation::ALL);
                Prompt::Relation { a, relation, b }
            }
        }
    }
}

fn pick<T: Copy>(rng: &mut impl Rng, items: &[T]) -> T {
    // `items` is always one of the non-empty vocabulary tables.
    items[rng.random_range(0..items.len())]
}

fn distinct_pair(rng: &mut impl Rng) -> (ColoredShape, ColoredShape) {
    let a = ColoredShape::sample(rng);
    loop {
        let b = ColoredShape::sample(rng);
        if b != a {
            return (a, b);
        }
    }
}

/// `text`, or its first 100 characters and "..." (a file without line breaks is one long
/// "prompt", which an error message should name, not print whole).
fn excerpt(text: &str) -> String {
    const SHOWN: usize = 100;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}... ({} characters)", &text[..end], text.chars().count()),
        None => text.to_string(),
    }
}

/// "an" before a vowel sound ("an orange circle"), "a" otherwise; both parse.
fn article(next_word: &str) -> &'static str {
    if next_word.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    }
}

impl fmt::Display for Prompt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Prompt::Single { size, color, shape } => {
                let adjectives = match size {
                    Some(size) => format!("{} {}", size.name(), color.name()),
                    None => color.name().to_string(),
                };
                write!(f, "{} {adjectives} {}", article(&adjectives), shape.name())
            }
            Prompt::Counting { n, color, shape } => {
                write!(f, "{} {} {}", n.word(), color.name(), shape.plural())
            }
            Prompt::Pair { a, b } => write!(f, "{a} and {b}"),
            Prompt::Relation { a, relation, b } => write!(f, "{a} {} {b}", relation.phrase()),
        }
    }
}

impl FromStr for Prompt {
    type Err = Error;

    fn from_str(s: &str) -> Result<Prompt> {
        Prompt::parse(s)
    }
}

/// A prompt is stored as its canonical text (scene graphs, prompt files).
impl Serialize for Prompt {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Prompt {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Prompt, D::Error> {
        let text = String::deserialize(deserializer)?;
        Prompt::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// A cursor over the words of a prompt; every method names what it expected when it fails.
struct Words<'a> {
    words: Vec<&'a str>,
    at: usize,
}

impl<'a> Words<'a> {
    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.at).copied()
    }

    fn next(&mut self, expected: &str) -> std::result::Result<&'a str, String> {
        let word = self
            .peek()
            .ok_or_else(|| format!("expected {expected} after the last word"))?;
        self.at += 1;
        Ok(word)
    }

    fn article(&mut self) -> std::result::Result<(), String> {
        match self.next("`a` or `an`")? {
            "a" | "an" => Ok(()),
            word => Err(format!("expected `a` or `an`, found `{word}`")),
        }
    }

    fn color(&mut self) -> std::result::Result<Color, String> {
        let word = self.next("a color")?;
        Color::from_name(word).ok_or_else(|| format!("unknown color `{word}`"))
    }

    fn shape(&mut self) -> std::result::Result<Shape, String> {
        let word = self.next("a shape")?;
        Shape::from_name(word).ok_or_else(|| format!("unknown shape `{word}`"))
    }

    fn colored_shape(&mut self) -> std::result::Result<ColoredShape, String> {
        self.article()?;
        Ok(ColoredShape {
            color: self.color()?,
            shape: self.shape()?,
        })
    }

    /// Consumes the relation phrase that starts here, if one does.
    fn relation(&mut self) -> Option<Relation> {
        let rest = self.words.get(self.at..)?;
        let (relation, len) = Relation::ALL.into_iter().find_map(|r| {
            let phrase: Vec<&str> = r.phrase().split(' ').collect();
            rest.starts_with(&phrase).then_some((r, phrase.len()))
        })?;
        self.at += len;
        Some(relation)
    }

    fn end(&self) -> std::result::Result<(), String> {
        match self.peek() {
            None => Ok(()),
            Some(word) => Err(format!("unexpected `{word}` after a complete prompt")),
        }
    }
}

fn parse_words(text: &str) -> std::result::Result<Prompt, String> {
    if text.is_empty() {
        return Err("it is empty".to_string());
    }
    if text.ends_with('.') {
        return Err("prompts have no final period".to_string());
    }
    if text.chars().any(|c| c.is_uppercase()) {
        return Err("prompts are lower case".to_string());
    }
    // Words are separated by exactly one space: no leading, trailing or repeated spaces.
    let mut words = Words {
        words: text.split(' ').collect(),
        at: 0,
    };
    if words.words.iter().any(|w| w.is_empty()) {
        return Err("words must be separated by single spaces".to_string());
    }
    let first = words.next("a prompt")?;
    if let Some(n) = Count::from_word(first) {
        let color = words.color()?;
        let word = words.next("a plural shape")?;
        let shape = Shape::from_plural(word)
            .ok_or_else(|| format!("expected a plural shape after `{first}`, found `{word}`"))?;
        words.end()?;
        return Ok(Prompt::Counting { n, color, shape });
    }
    if !matches!(first, "a" | "an" | "one") {
        return Err(format!(
            "a prompt starts with `a`, `an`, `one`, `two`, `three` or `four`, not `{first}`"
        ));
    }
    let size = words.peek().and_then(Size::from_name);
    if size.is_some() {
        words.at += 1;
    }
    let a = ColoredShape {
        color: words.color()?,
        shape: words.shape()?,
    };
    if words.peek().is_none() {
        return Ok(Prompt::Single {
            size,
            color: a.color,
            shape: a.shape,
        });
    }
    if first == "one" || size.is_some() {
        return Err(format!(
            "`{first}{}` starts a single prompt, which ends after the shape",
            size.map(|s| format!(" {}", s.name())).unwrap_or_default()
        ));
    }
    if words.peek() == Some("and") {
        words.at += 1;
        let b = words.colored_shape()?;
        words.end()?;
        return Ok(Prompt::Pair { a, b });
    }
    let relation = words.relation().ok_or_else(|| {
        let word = words.peek().unwrap_or_default();
        format!("expected `and` or a relation after `{a}`, found `{word}`")
    })?;
    let b = words.colored_shape()?;
    words.end()?;
    Ok(Prompt::Relation { a, relation, b })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn parses_each_form() {
        assert_eq!(
            Prompt::parse("a small red circle").unwrap(),
            Prompt::Single {
                size: Some(Size::Small),
                color: Color::Red,
                shape: Shape::Circle
            }
        );
        assert_eq!(
            Prompt::parse("three blue squares").unwrap(),
            Prompt::Counting {
                n: Count::Three,
                color: Color::Blue,
                shape: Shape::Square
            }
        );
        let red_circle = ColoredShape {
            color: Color::Red,
            shape: Shape::Circle,
        };
        let green_triangle = ColoredShape {
            color: Color::Green,
            shape: Shape::Triangle,
        };
        assert_eq!(
            Prompt::parse("a red circle and a green triangle").unwrap(),
            Prompt::Pair {
                a: red_circle,
                b: green_triangle
            }
        );
        assert_eq!(
            Prompt::parse("a red circle to the right of a green triangle").unwrap(),
            Prompt::Relation {
                a: red_circle,
                relation: Relation::RightOf,
                b: green_triangle
            }
        );
        let p = Prompt::parse("a yellow square above a purple circle").unwrap();
        assert_eq!(p.form(), Form::Relation);
    }

    #[test]
    fn a_an_and_one_are_interchangeable_in_the_single_form() {
        let canonical = Prompt::parse("an orange triangle").unwrap();
        assert_eq!(Prompt::parse("a orange triangle").unwrap(), canonical);
        assert_eq!(Prompt::parse("one orange triangle").unwrap(), canonical);
        assert_eq!(canonical.to_string(), "an orange triangle");
        assert_eq!(
            Prompt::parse("an red circle and a orange square")
                .unwrap()
                .to_string(),
            "a red circle and an orange square"
        );
    }

    #[test]
    fn display_parse_round_trips_for_sampled_prompts() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..2000 {
            let p = Prompt::sample(&mut rng, &Form::ALL).unwrap();
            let text = p.to_string();
            assert_eq!(Prompt::parse(&text).unwrap(), p, "{text}");
            assert_eq!(text, text.to_lowercase());
        }
    }

    #[test]
    fn rejects_text_outside_the_grammar() {
        for bad in [
            "",
            " ",
            "a red hexagon",
            "five red circles",
            "a red circle.",
            "A red circle",
            "a red  circle",
            " a red circle",
            "a red circles",
            "two red circle",
            "one red circles",
            "a circle",
            "a red",
            "a large red circle and a blue square",
            "a red circle and a large blue square",
            "one red circle above a blue square",
            "a red circle to the left a blue square",
            "a red circle near a blue square",
            "a red circle and a blue square and a green circle",
            "a red circle above two blue squares",
            "the red circle",
        ] {
            let err = Prompt::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
            assert!(err.contains("relation `a <color>"), "{err}");
        }
    }

    #[test]
    fn a_long_rejected_prompt_is_shown_in_part() {
        let long = "a red circle".repeat(500);
        let err = Prompt::parse(&long).unwrap_err().to_string();
        assert!(err.len() < 1200, "{} characters", err.len());
        assert!(err.contains("a red circlea red circle") && err.contains("(6000 characters)"));
    }

    #[test]
    fn samples_only_the_requested_forms() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let p = Prompt::sample(&mut rng, &[Form::Pair, Form::Counting]).unwrap();
            assert!(matches!(p.form(), Form::Pair | Form::Counting));
            if let Prompt::Pair { a, b } = p {
                assert_ne!(a, b);
            }
        }
        assert!(Prompt::sample(&mut rng, &[]).is_err());
    }

    #[test]
    fn forms_parse_from_their_names() {
        for f in Form::ALL {
            assert_eq!(f.name().parse::<Form>().unwrap(), f);
        }
        assert!("Single".parse::<Form>().is_err());
    }
}
