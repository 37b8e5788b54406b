//! The shapes-world checker (docs/shapes-world.md, "The checker"): scores one image against one
//! prompt, exactly, with no detector network.
//!
//! The image is segmented into blobs (segment.rs) and each blob named (recognize.rs); the
//! objects found are then compared with what the prompt asks for:
//! - single: exactly one object, of the named color and shape (and size class, if named);
//! - counting: exactly N objects, all of the named color and shape;
//! - pair: exactly the two named objects;
//! - relation: exactly the two named objects, their centroids in the named relation with
//!   [`RelationMargin::CHECK`].
//!
//! Extra objects fail every form: a model that paints a third shape has not drawn the prompt.
//! A failure is also named by its kind ([`FailureKind`]), so an evaluation can say how many
//! images failed on counts, colors, shapes, binding, size or position.
//! Beside the verdict, two partial scores: *colors* (the set of colors present is the set the
//! prompt names) and *binding* (for the two-object forms: each named color sits on its named
//! shape, so "a red circle and a blue square" drawn as a blue circle and a red square has the
//! right colors and the wrong binding).
//! Relation images get a third, *placement*: whenever the two objects can be told apart and
//! matched to the prompt's two (by color, or by color and shape when both share a color), are
//! they in the named relation, the opposite one, or neither (side by side on the other axis, or
//! too close), whatever their shapes? It separates a model that cannot place objects from one
//! that places them but draws a square as a circle. The four relations' cones cover the canvas,
//! so a model blind to placement scores about 1/4 right, 1/4 reversed and 1/2 sideways; one that
//! finds the axis but not the order, 1/2 right and 1/2 reversed.

use super::recognize::{recognize, DetectedObject};
use super::segment::segment;
use crate::data::shapes::grammar::{ColoredShape, Form, Prompt};
use crate::data::shapes::palette::{Color, Relation, RelationMargin, Shape};
use crate::data::shapes::scene::CANVAS;
use crate::error::Result;
use image::imageops::FilterType;
use image::RgbImage;
use serde::Serialize;
use std::collections::BTreeSet;

/// The checker's judgement of one image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub prompt: Prompt,
    pub form: Form,
    /// The image shows the prompt: every requirement of its form holds.
    pub pass: bool,
    /// The colors present are exactly the colors named.
    pub colors: bool,
    /// Pair and relation prompts: both named (color, shape) pairs are present and no other
    /// pairing is. `None` for single and counting prompts.
    pub binding: Option<bool>,
    /// Relation prompts whose two objects could be matched to the named ones (see the module
    /// comment): whether they are in the named relation. `None` otherwise.
    pub placement: Option<Placement>,
    /// Why the image fails, in words; empty when it passes.
    pub reason: String,
    /// What kind of failure; `None` when it passes.
    pub failure: Option<FailureKind>,
    pub objects: Vec<DetectedObject>,
}

/// Parses `prompt` with the shapes grammar and checks `image` against it. A prompt outside the
/// grammar is `Error::InvalidInput` naming it.
pub fn check_text(prompt: &str, image: &RgbImage) -> Result<Verdict> {
    Ok(check(&Prompt::parse(prompt)?, image))
}

/// Checks `image` against `prompt`. Images of another size are first resized to the world's
/// 64x64 canvas (the checker's sizes and margins are in canvas pixels) by nearest neighbour:
/// a smoothing filter would mix colors at every edge, the checker would drop those in-between
/// pixels, and small shapes would lose their corners (a small triangle turns into a disc).
pub fn check(prompt: &Prompt, image: &RgbImage) -> Verdict {
    let objects = detect(image);
    let named = named_objects(prompt);
    let colors_named: BTreeSet<Color> = named.iter().map(|o| o.color).collect();
    let colors_found: BTreeSet<Color> = objects.iter().map(|o| o.color).collect();
    let colors = colors_named == colors_found;
    let binding = match prompt.form() {
        Form::Pair | Form::Relation => {
            let named: BTreeSet<(Color, Option<Shape>)> =
                named.iter().map(|o| (o.color, Some(o.shape))).collect();
            let found: BTreeSet<(Color, Option<Shape>)> =
                objects.iter().map(|o| (o.color, o.shape)).collect();
            Some(named == found)
        }
        Form::Single | Form::Counting => None,
    };
    let placement = placement(prompt, &objects);
    let failure = failure_kind(prompt, &objects);
    let reason = failure
        .and_then(|_| failure_reason(prompt, &objects))
        .unwrap_or_default();
    Verdict {
        prompt: *prompt,
        form: prompt.form(),
        pass: failure.is_none(),
        colors,
        binding,
        placement,
        reason,
        failure,
        objects,
    }
}

/// Where a relation image put its two objects, against the relation its prompt names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Placement {
    /// In the named relation.
    Right,
    /// In the opposite relation ("below" for "above").
    Reversed,
    /// Neither: offset along the other axis, or too close to tell.
    Sideways,
}

/// For a relation prompt, where the two objects found stand, shapes aside: they are matched to
/// the named objects by color when the two colors differ, and by color and shape when they do
/// not. `None` for other forms, or when there are not exactly two objects or they cannot be
/// matched.
pub fn placement(prompt: &Prompt, objects: &[DetectedObject]) -> Option<Placement> {
    let Prompt::Relation { a, relation, b } = *prompt else {
        return None;
    };
    let [first, second] = objects else {
        return None;
    };
    let (oa, ob) = if a.color != b.color {
        match (first.color, second.color) {
            (x, y) if x == a.color && y == b.color => (first, second),
            (x, y) if x == b.color && y == a.color => (second, first),
            _ => return None,
        }
    } else {
        match_pair(objects, a, b)?
    };
    Some(if placed(a, relation, b, oa, ob) {
        Placement::Right
    } else if placed(a, relation.opposite(), b, oa, ob) {
        Placement::Reversed
    } else {
        Placement::Sideways
    })
}

/// Whether `oa` and `ob`, found for the named `a` and `b`, stand in `relation`. When the
/// prompt names the same object twice ("a red circle above a red circle") nothing tells the
/// two apart, so either way round will do.
fn placed(
    a: ColoredShape,
    relation: Relation,
    b: ColoredShape,
    oa: &DetectedObject,
    ob: &DetectedObject,
) -> bool {
    let holds = |x: &DetectedObject, y: &DetectedObject| {
        relation.holds(x.centroid, y.centroid, RelationMargin::CHECK)
    };
    holds(oa, ob) || (a == b && holds(ob, oa))
}

/// What an image that fails its prompt got wrong, the first that applies in this order: the
/// number of objects (nothing else can be matched up past a wrong count), their colors, their
/// shapes, which color sits on which shape, then the size class (single prompts) or the
/// placement (relation prompts). Each kind is judged on the whole set of objects, as multisets,
/// so "a red circle and a blue square" drawn as a blue circle and a red square is `Binding`,
/// not `Color` or `Shape`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    TooFew,
    TooMany,
    Color,
    Shape,
    Binding,
    Size,
    Position,
}

impl FailureKind {
    pub const ALL: [FailureKind; 7] = [
        FailureKind::TooFew,
        FailureKind::TooMany,
        FailureKind::Color,
        FailureKind::Shape,
        FailureKind::Binding,
        FailureKind::Size,
        FailureKind::Position,
    ];

    /// The name used in reports (and in JSON).
    pub fn name(self) -> &'static str {
        match self {
            FailureKind::TooFew => "too_few",
            FailureKind::TooMany => "too_many",
            FailureKind::Color => "color",
            FailureKind::Shape => "shape",
            FailureKind::Binding => "binding",
            FailureKind::Size => "size",
            FailureKind::Position => "position",
        }
    }
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

/// `None` when `objects` show `prompt`, otherwise the kind of failure (see [`FailureKind`]).
pub fn failure_kind(prompt: &Prompt, objects: &[DetectedObject]) -> Option<FailureKind> {
    let named = named_objects(prompt);
    if objects.len() < named.len() {
        return Some(FailureKind::TooFew);
    }
    if objects.len() > named.len() {
        return Some(FailureKind::TooMany);
    }
    let colors = |o: &[Color]| sorted(o.to_vec());
    let named_colors: Vec<Color> = named.iter().map(|o| o.color).collect();
    let found_colors: Vec<Color> = objects.iter().map(|o| o.color).collect();
    if colors(&named_colors) != colors(&found_colors) {
        return Some(FailureKind::Color);
    }
    let named_shapes = sorted(named.iter().map(|o| Some(o.shape)).collect());
    if named_shapes != sorted(objects.iter().map(|o| o.shape).collect()) {
        return Some(FailureKind::Shape);
    }
    let named_pairs = sorted(named.iter().map(|o| (o.color, Some(o.shape))).collect());
    if named_pairs != sorted(objects.iter().map(|o| (o.color, o.shape)).collect()) {
        return Some(FailureKind::Binding);
    }
    match *prompt {
        Prompt::Single { size, .. } if size.is_some_and(|s| s != objects[0].size) => {
            Some(FailureKind::Size)
        }
        Prompt::Relation { a, relation, b } => {
            let Some((oa, ob)) = match_pair(objects, a, b) else {
                return Some(FailureKind::Binding);
            };
            (!placed(a, relation, b, oa, ob)).then_some(FailureKind::Position)
        }
        _ => None,
    }
}

/// The objects in `image`, in scan order.
pub fn detect(image: &RgbImage) -> Vec<DetectedObject> {
    let resized;
    let image = if image.dimensions() == (CANVAS, CANVAS) {
        image
    } else {
        resized = image::imageops::resize(image, CANVAS, CANVAS, FilterType::Nearest);
        &resized
    };
    segment(image).iter().map(recognize).collect()
}

/// The (color, shape) of each object the prompt names, with repeats for counts.
fn named_objects(prompt: &Prompt) -> Vec<ColoredShape> {
    match *prompt {
        Prompt::Single { color, shape, .. } => vec![ColoredShape { color, shape }],
        Prompt::Counting { n, color, shape } => vec![ColoredShape { color, shape }; n.get()],
        Prompt::Pair { a, b } | Prompt::Relation { a, b, .. } => vec![a, b],
    }
}

fn describe(o: &DetectedObject) -> String {
    let shape = o.shape.map_or("blob of no known shape", |s| s.name());
    format!("a {} {} {shape}", o.size.name(), o.color.name())
}

fn is(o: &DetectedObject, want: ColoredShape) -> bool {
    o.color == want.color && o.shape == Some(want.shape)
}

/// `None` when `objects` show `prompt`, otherwise what is wrong, in words.
fn failure_reason(prompt: &Prompt, objects: &[DetectedObject]) -> Option<String> {
    let found = || {
        let all: Vec<String> = objects.iter().map(describe).collect();
        if all.is_empty() {
            "nothing".to_string()
        } else {
            all.join(", ")
        }
    };
    let named = named_objects(prompt);
    if objects.len() != named.len() {
        return Some(format!(
            "expected {} object(s), found {}: {}",
            named.len(),
            objects.len(),
            found()
        ));
    }
    match *prompt {
        Prompt::Single { size, color, shape } => {
            let o = &objects[0];
            if !is(o, ColoredShape { color, shape }) {
                return Some(format!("found {}", found()));
            }
            if size.is_some_and(|s| s != o.size) {
                return Some(format!("found {}, the wrong size", found()));
            }
            None
        }
        Prompt::Counting { color, shape, .. } => {
            let want = ColoredShape { color, shape };
            (!objects.iter().all(|o| is(o, want))).then(|| format!("found {}", found()))
        }
        Prompt::Pair { a, b } => match_pair(objects, a, b)
            .is_none()
            .then(|| format!("found {}", found())),
        Prompt::Relation { a, relation, b } => match match_pair(objects, a, b) {
            None => Some(format!("found {}", found())),
            Some((oa, ob)) => (!placed(a, relation, b, oa, ob)).then(|| {
                    format!(
                        "both objects are there, but {a} at ({:.1}, {:.1}) is not {} {b} at ({:.1}, {:.1})",
                        oa.centroid[0],
                        oa.centroid[1],
                        relation.phrase(),
                        ob.centroid[0],
                        ob.centroid[1]
                    )
                }),
        },
    }
}

/// The two objects as (a, b) when they are exactly `a` and `b` in some order.
fn match_pair(
    objects: &[DetectedObject],
    a: ColoredShape,
    b: ColoredShape,
) -> Option<(&DetectedObject, &DetectedObject)> {
    match objects {
        [first, second] if is(first, a) && is(second, b) => Some((first, second)),
        [first, second] if is(first, b) && is(second, a) => Some((second, first)),
        _ => None,
    }
}
