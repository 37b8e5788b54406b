//! The shapes world's vocabulary (docs/shapes-world.md, "Vocabulary") and the one place where its
//! constants live: the RGB value of every color, the pixel size range of every size class, the
//! counting words and the relation phrases with the geometry each one means.
//!
//! Every other part (grammar, scene, render, the checker) reads these tables, so changing a
//! color or a size range here changes the whole world consistently.

use serde::{Deserialize, Serialize};

/// The background every scene is painted on.
pub const BACKGROUND: [u8; 3] = [255, 255, 255];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

impl Color {
    pub const ALL: [Color; 6] = [
        Color::Red,
        Color::Green,
        Color::Blue,
        Color::Yellow,
        Color::Purple,
        Color::Orange,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
        }
    }

    /// The fill value. Every pair of colors (and each color and the white background) is at
    /// least 100 apart in RGB Euclidean distance, so nearest-color segmentation is unambiguous
    /// even on noisy generated images.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Color::Red => [220, 20, 20],
            Color::Green => [20, 160, 40],
            Color::Blue => [20, 60, 230],
            Color::Yellow => [240, 230, 0],
            Color::Purple => [150, 30, 190],
            Color::Orange => [245, 130, 0],
        }
    }

    pub fn from_name(word: &str) -> Option<Color> {
        Color::ALL.into_iter().find(|c| c.name() == word)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    /// An isosceles triangle pointing up: apex at the top middle of its box, base the box's
    /// bottom edge.
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Circle, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }

    pub fn plural(self) -> &'static str {
        match self {
            Shape::Circle => "circles",
            Shape::Square => "squares",
            Shape::Triangle => "triangles",
        }
    }

    pub fn from_name(word: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.name() == word)
    }

    pub fn from_plural(word: &str) -> Option<Shape> {
        Shape::ALL.into_iter().find(|s| s.plural() == word)
    }
}

/// A size class. An object's size is the side of its (square) bounding box in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Size {
    Small,
    Large,
}

impl Size {
    pub const ALL: [Size; 2] = [Size::Small, Size::Large];

    pub fn name(self) -> &'static str {
        match self {
            Size::Small => "small",
            Size::Large => "large",
        }
    }

    pub fn from_name(word: &str) -> Option<Size> {
        Size::ALL.into_iter().find(|s| s.name() == word)
    }

    /// The inclusive range of box sides (pixels) drawn for this class. The gap between the
    /// classes (12 to 16) lets a measured size be classified with a tolerance either way.
    pub fn pixel_range(self) -> (u32, u32) {
        match self {
            Size::Small => (8, 12),
            Size::Large => (16, 24),
        }
    }
}

/// The object counts of the counting form ("one"/"a" is the single form).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Count {
    Two,
    Three,
    Four,
}

impl Count {
    pub const ALL: [Count; 3] = [Count::Two, Count::Three, Count::Four];

    pub fn get(self) -> usize {
        match self {
            Count::Two => 2,
            Count::Three => 3,
            Count::Four => 4,
        }
    }

    pub fn word(self) -> &'static str {
        match self {
            Count::Two => "two",
            Count::Three => "three",
            Count::Four => "four",
        }
    }

    pub fn from_word(word: &str) -> Option<Count> {
        Count::ALL.into_iter().find(|c| c.word() == word)
    }
}

/// How far apart two centroids must be for a relation to hold: at least `min_offset` pixels
/// along the relation's axis, and at most `max_across_ratio` times that offset along the other
/// axis (so "above" never looks like "to the left of").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RelationMargin {
    pub min_offset: f32,
    pub max_across_ratio: f32,
}

impl RelationMargin {
    /// The margin every generated scene satisfies.
    pub const SCENE: RelationMargin = RelationMargin {
        min_offset: 8.0,
        max_across_ratio: 0.5,
    };

    /// The margin the checker asks of generated images: looser than [`Self::SCENE`], so every
    /// rendered scene passes with room to spare, but still a clear offset along the relation's
    /// axis that dominates the other axis.
    pub const CHECK: RelationMargin = RelationMargin {
        min_offset: 4.0,
        max_across_ratio: 1.0,
    };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    pub const ALL: [Relation; 4] = [
        Relation::LeftOf,
        Relation::RightOf,
        Relation::Above,
        Relation::Below,
    ];

    pub fn phrase(self) -> &'static str {
        match self {
            Relation::LeftOf => "to the left of",
            Relation::RightOf => "to the right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// The relation that holds the other way round: above for below, left of for right of.
    pub fn opposite(self) -> Relation {
        match self {
            Relation::LeftOf => Relation::RightOf,
            Relation::RightOf => Relation::LeftOf,
            Relation::Above => Relation::Below,
            Relation::Below => Relation::Above,
        }
    }

    /// Whether "a <relation> b" holds for centroids `a` and `b` (image coordinates: x to the
    /// right, y down).
    pub fn holds(self, a: [f32; 2], b: [f32; 2], margin: RelationMargin) -> bool {
        let (dx, dy) = (b[0] - a[0], b[1] - a[1]);
        // `along` > 0 when the relation points the right way; `across` is the other axis.
        let (along, across) = match self {
            Relation::LeftOf => (dx, dy),
            Relation::RightOf => (-dx, dy),
            Relation::Above => (dy, dx),
            Relation::Below => (-dy, dx),
        };
        along >= margin.min_offset && across.abs() <= margin.max_across_ratio * along
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn distance(a: [u8; 3], b: [u8; 3]) -> f32 {
        a.iter()
            .zip(b)
            .map(|(&x, y)| (x as f32 - y as f32).powi(2))
            .sum::<f32>()
            .sqrt()
    }

    #[test]
    fn colors_are_well_separated_from_each_other_and_the_background() {
        let mut values: Vec<[u8; 3]> = Color::ALL.iter().map(|c| c.rgb()).collect();
        values.push(BACKGROUND);
        for (i, &a) in values.iter().enumerate() {
            for &b in &values[i + 1..] {
                assert!(distance(a, b) >= 100.0, "{a:?} and {b:?} are too close");
            }
        }
    }

    #[test]
    fn words_round_trip() {
        for c in Color::ALL {
            assert_eq!(Color::from_name(c.name()), Some(c));
        }
        for s in Shape::ALL {
            assert_eq!(Shape::from_name(s.name()), Some(s));
            assert_eq!(Shape::from_plural(s.plural()), Some(s));
            assert_eq!(Shape::from_name(s.plural()), None);
        }
        for n in Count::ALL {
            assert_eq!(Count::from_word(n.word()), Some(n));
        }
        assert_eq!(Color::from_name("Red"), None);
    }

    #[test]
    fn size_classes_do_not_overlap() {
        let (_, small_max) = Size::Small.pixel_range();
        let (large_min, _) = Size::Large.pixel_range();
        assert!(small_max < large_min);
    }

    #[test]
    fn relations_hold_only_with_a_clear_margin() {
        let m = RelationMargin::SCENE;
        let a = [20.0, 30.0];
        assert!(Relation::LeftOf.holds(a, [40.0, 33.0], m));
        assert!(!Relation::RightOf.holds(a, [40.0, 33.0], m));
        assert!(Relation::RightOf.holds([40.0, 33.0], a, m));
        // Too close along the axis.
        assert!(!Relation::LeftOf.holds(a, [27.0, 30.0], m));
        // The other axis dominates: this is "above", not "to the left of".
        assert!(!Relation::LeftOf.holds(a, [30.0, 50.0], m));
        assert!(Relation::Above.holds(a, [25.0, 50.0], m));
        assert!(Relation::Below.holds([25.0, 50.0], a, m));
        assert!(!Relation::Above.holds([25.0, 50.0], a, m));
    }
}
