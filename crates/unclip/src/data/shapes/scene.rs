//! Scenes: one random layout of a prompt (docs/shapes-world.md, "Scenes"), and its scene graph.
//!
//! A scene is drawn from the prompt with a caller-seeded RNG: each object's size class (when
//! the prompt does not name it), its side within the class, the order in which objects are
//! placed, and their positions. Boxes keep [`MARGIN`] pixels from the border and [`GAP`] pixels
//! from each other; relations hold with [`RelationMargin::SCENE`]. Sampling restarts a bounded
//! number of times and then fails with an error naming the prompt.
//!
//! The scene graph serialises as `{"prompt", "form", "width", "height", "objects": [{"color",
//! "shape", "size", "bbox": [x0, y0, x1, y1], "centroid": [x, y]}]}`. Boxes are half-open
//! (`x0 <= x < x1`) and tight (every shape touches its box's four sides); centroids are the mean
//! of the painted pixel centers (pixel `(x, y)` has center `(x + 0.5, y + 0.5)`). Objects are
//! listed in prompt order: for pair and relation prompts, `objects[0]` is `a`, `objects[1]` is
//! `b`.

use super::geometry::centroid_offset;
use super::grammar::{Form, Prompt};
use super::palette::{Color, Relation, RelationMargin, Shape, Size};
use crate::error::{Error, Result};
use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Canvas side in pixels.
pub const CANVAS: u32 = 64;
/// Minimum distance in pixels between any box and the canvas border.
pub const MARGIN: u32 = 2;
/// Minimum distance in pixels between two boxes (along x or along y).
pub const GAP: u32 = 3;
/// Scene restarts (new sizes, new order) before giving up.
const MAX_ATTEMPTS: usize = 1000;
/// Positions tried for one object within one attempt.
const MAX_POSITION_TRIES: usize = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SceneObject {
    pub color: Color,
    pub shape: Shape,
    pub size: Size,
    /// `[x0, y0, x1, y1]`, half-open, in pixels.
    pub bbox: [u32; 4],
    /// `[x, y]`, the mean of the painted pixel centers.
    pub centroid: [f32; 2],
}

impl SceneObject {
    fn new(color: Color, shape: Shape, size: Size, side: u32, x0: u32, y0: u32) -> Self {
        let [cx, cy] = centroid_offset(shape, side);
        SceneObject {
            color,
            shape,
            size,
            bbox: [x0, y0, x0 + side, y0 + side],
            centroid: [x0 as f32 + cx, y0 as f32 + cy],
        }
    }

    /// The box side (shapes are drawn in square boxes).
    pub fn side(&self) -> u32 {
        self.bbox[2].saturating_sub(self.bbox[0])
    }

    /// Whether the two boxes are at least `gap` pixels apart along x or along y.
    fn is_apart_from(&self, other: &SceneObject, gap: u32) -> bool {
        let [ax0, ay0, ax1, ay1] = self.bbox;
        let [bx0, by0, bx1, by1] = other.bbox;
        ax1 + gap <= bx0 || bx1 + gap <= ax0 || ay1 + gap <= by0 || by1 + gap <= ay0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub prompt: Prompt,
    pub form: Form,
    pub width: u32,
    pub height: u32,
    pub objects: Vec<SceneObject>,
}

/// What the prompt asks for, object by object, before any randomness.
struct Request {
    objects: Vec<(Color, Shape, Option<Size>)>,
    /// `objects[0] <relation> objects[1]`.
    relation: Option<Relation>,
}

impl Request {
    fn new(prompt: &Prompt) -> Request {
        match *prompt {
            Prompt::Single { size, color, shape } => Request {
                objects: vec![(color, shape, size)],
                relation: None,
            },
            Prompt::Counting { n, color, shape } => Request {
                objects: vec![(color, shape, None); n.get()],
                relation: None,
            },
            Prompt::Pair { a, b } => Request {
                objects: vec![(a.color, a.shape, None), (b.color, b.shape, None)],
                relation: None,
            },
            Prompt::Relation { a, relation, b } => Request {
                objects: vec![(a.color, a.shape, None), (b.color, b.shape, None)],
                relation: Some(relation),
            },
        }
    }
}

impl Scene {
    /// Draws a random layout of `prompt`.
    pub fn sample(prompt: &Prompt, rng: &mut impl Rng) -> Result<Scene> {
        let request = Request::new(prompt);
        for _ in 0..MAX_ATTEMPTS {
            if let Some(objects) = try_layout(&request, rng)? {
                return Ok(Scene {
                    prompt: *prompt,
                    form: prompt.form(),
                    width: CANVAS,
                    height: CANVAS,
                    objects,
                });
            }
        }
        Err(Error::Data(format!(
            "could not lay out {:?} on a {CANVAS}x{CANVAS} canvas in {MAX_ATTEMPTS} attempts \
             (margin {MARGIN}, gap {GAP})",
            prompt.to_string()
        )))
    }

    /// The scene graph as pretty JSON.
    pub fn to_json(&self) -> String {
        // A scene holds only strings, integers and finite floats, which always serialise.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// One attempt: sizes, placement order and positions. `Ok(None)` when some object found no
/// free position; `Err` only when an object cannot fit on the canvas at all.
fn try_layout(request: &Request, rng: &mut impl Rng) -> Result<Option<Vec<SceneObject>>> {
    let n = request.objects.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    let mut placed: Vec<Option<SceneObject>> = vec![None; n];
    for &i in &order {
        let (color, shape, size) = request.objects[i];
        let size = size.unwrap_or_else(|| Size::ALL[rng.random_range(0..Size::ALL.len())]);
        let (lo, hi) = size.pixel_range();
        let side = rng.random_range(lo..=hi);
        let max_start = (CANVAS - MARGIN)
            .checked_sub(side)
            .filter(|&m| m >= MARGIN)
            .ok_or_else(|| {
                Error::Data(format!(
                    "a {} object of side {side} does not fit a {CANVAS}x{CANVAS} canvas with margin {MARGIN}",
                    size.name()
                ))
            })?;
        let found = (0..MAX_POSITION_TRIES).find_map(|_| {
            let x0 = rng.random_range(MARGIN..=max_start);
            let y0 = rng.random_range(MARGIN..=max_start);
            let candidate = SceneObject::new(color, shape, size, side, x0, y0);
            let mut others = placed.iter().flatten();
            let free = others.all(|o| candidate.is_apart_from(o, GAP));
            (free && relation_allows(request, &placed, i, &candidate)).then_some(candidate)
        });
        match found {
            Some(object) => placed[i] = Some(object),
            None => return Ok(None),
        }
    }
    Ok(placed.into_iter().collect())
}

/// Whether placing `candidate` as object `i` keeps the prompt's relation (checked once both
/// related objects are placed).
fn relation_allows(
    request: &Request,
    placed: &[Option<SceneObject>],
    i: usize,
    candidate: &SceneObject,
) -> bool {
    let Some(relation) = request.relation else {
        return true;
    };
    let other = match i {
        0 => placed.get(1),
        1 => placed.first(),
        _ => return true,
    };
    match other.and_then(Option::as_ref) {
        None => true,
        Some(other) => {
            let (a, b) = if i == 0 {
                (candidate, other)
            } else {
                (other, candidate)
            };
            relation.holds(a.centroid, b.centroid, RelationMargin::SCENE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn scenes(form: Form, count: usize, seed: u64) -> Vec<Scene> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..count)
            .map(|_| {
                let prompt = Prompt::sample_form(&mut rng, form);
                Scene::sample(&prompt, &mut rng).unwrap()
            })
            .collect()
    }

    fn check_layout(scene: &Scene) {
        for (i, o) in scene.objects.iter().enumerate() {
            let [x0, y0, x1, y1] = o.bbox;
            assert!(x0 >= MARGIN && y0 >= MARGIN, "{scene:?}");
            assert!(x1 + MARGIN <= CANVAS && y1 + MARGIN <= CANVAS, "{scene:?}");
            let (lo, hi) = o.size.pixel_range();
            assert!((lo..=hi).contains(&o.side()), "{scene:?}");
            assert_eq!(y1 - y0, x1 - x0);
            for other in &scene.objects[i + 1..] {
                assert!(o.is_apart_from(other, GAP), "{scene:?}");
            }
        }
    }

    #[test]
    fn single_scenes_have_one_object_of_the_named_size() {
        for scene in scenes(Form::Single, 500, 1) {
            check_layout(&scene);
            let Prompt::Single { size, color, shape } = scene.prompt else {
                panic!("{scene:?}")
            };
            assert_eq!(scene.objects.len(), 1);
            let o = &scene.objects[0];
            assert_eq!((o.color, o.shape), (color, shape));
            if let Some(size) = size {
                assert_eq!(o.size, size);
            }
        }
    }

    #[test]
    fn counting_scenes_have_exactly_n_objects() {
        for scene in scenes(Form::Counting, 500, 2) {
            check_layout(&scene);
            let Prompt::Counting { n, color, shape } = scene.prompt else {
                panic!("{scene:?}")
            };
            assert_eq!(scene.objects.len(), n.get());
            assert!(scene
                .objects
                .iter()
                .all(|o| o.color == color && o.shape == shape));
        }
    }

    #[test]
    fn relation_scenes_satisfy_their_relation() {
        for scene in scenes(Form::Relation, 1000, 3) {
            check_layout(&scene);
            let Prompt::Relation { a, relation, b } = scene.prompt else {
                panic!("{scene:?}")
            };
            let [oa, ob] = &scene.objects[..] else {
                panic!("{scene:?}")
            };
            assert_eq!((oa.color, oa.shape), (a.color, a.shape));
            assert_eq!((ob.color, ob.shape), (b.color, b.shape));
            assert!(
                relation.holds(oa.centroid, ob.centroid, RelationMargin::SCENE),
                "{scene:?}"
            );
        }
    }

    #[test]
    fn pair_scenes_list_objects_in_prompt_order() {
        for scene in scenes(Form::Pair, 300, 4) {
            check_layout(&scene);
            let Prompt::Pair { a, b } = scene.prompt else {
                panic!("{scene:?}")
            };
            let got: Vec<_> = scene.objects.iter().map(|o| (o.color, o.shape)).collect();
            assert_eq!(got, vec![(a.color, a.shape), (b.color, b.shape)]);
        }
    }

    #[test]
    fn same_seed_same_scene_and_json_round_trips() {
        let a = scenes(Form::Relation, 20, 9);
        let b = scenes(Form::Relation, 20, 9);
        assert_eq!(a, b);
        let json = a[0].to_json();
        let back: Scene = serde_json::from_str(&json).unwrap();
        assert_eq!(back, a[0]);
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["form"], "relation");
        assert_eq!(value["width"], 64);
        assert!(value["objects"][0]["bbox"].is_array());
        assert!(value["objects"][0]["size"].is_string());
    }
}
