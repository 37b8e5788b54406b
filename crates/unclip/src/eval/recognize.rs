//! Naming a blob's shape and size class by its geometry (docs/shapes-world.md, "The checker").
//!
//! Two measurements tell the world's three shapes apart and survive the soft, slightly eroded
//! edges of generated images: the *top share* (the part of the blob's pixels in the upper half
//! of its bounding box: about 1/4 for the upward triangle, 1/2 for the disc and the square) and
//! the *fill* (pixels over bounding-box area: about 1/2, π/4 and 1). Each shape's ideal values
//! are measured from `geometry::covers` at the blob's own side, so pixelation of small shapes
//! is accounted for, and the nearest shape in (top share, fill) wins. (Matching whole templates
//! by overlap was tried first: a blurred small triangle loses its tip, its box shrinks, and the
//! disc template then overlaps it better.) A blob far from every shape, or much wider than
//! tall or the reverse, is an object of no known shape.

use super::segment::Blob;
use crate::data::shapes::geometry::covers;
use crate::data::shapes::palette::{Color, Shape, Size};
use serde::Serialize;

/// The largest distance in (top share, fill) at which a blob still counts as the nearest
/// shape. The ideal shapes are at least 0.14 apart (a disc and a square of side 9).
pub const MAX_SHAPE_DISTANCE: f32 = 0.25;
/// Blobs whose box is more than this much longer one way than the other are no shape: every
/// shape of the world fills a square box.
pub const MAX_ASPECT_RATIO: f32 = 1.5;
/// Box sides below this are small, from it up large: the middle of the gap between the size
/// classes' pixel ranges (8-12 and 16-24).
pub const LARGE_FROM_SIDE: f32 = 14.0;

/// One object the checker found in an image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectedObject {
    pub color: Color,
    /// `None` when the blob is like no shape of the world.
    pub shape: Option<Shape>,
    pub size: Size,
    /// `[x0, y0, x1, y1]`, half-open, in the checked image's pixels.
    pub bbox: [u32; 4],
    pub centroid: [f32; 2],
    pub pixels: usize,
    /// Share of the pixels in the upper half of the box.
    pub top_share: f32,
    /// Pixels over box area.
    pub fill: f32,
}

/// (top share, fill) of pixels `(x, y)` in the box `[x0, y0, x1, y1]`.
fn measure(pixels: impl Iterator<Item = (u32, u32)>, bbox: [u32; 4]) -> (f32, f32) {
    let [x0, y0, x1, y1] = bbox;
    let middle = (y0 + y1) as f32 / 2.0;
    let (mut count, mut top) = (0.0f32, 0.0f32);
    for (_, y) in pixels {
        count += 1.0;
        let center = y as f32 + 0.5;
        if center < middle {
            top += 1.0;
        } else if center == middle {
            top += 0.5;
        }
    }
    let area = ((x1 - x0) * (y1 - y0)).max(1) as f32;
    (top / count.max(1.0), count / area)
}

/// The ideal (top share, fill) of `shape` drawn at `side`.
fn ideal(shape: Shape, side: u32) -> (f32, f32) {
    let pixels = (0..side)
        .flat_map(|y| (0..side).map(move |x| (x, y)))
        .filter(|&(x, y)| covers(shape, side, x, y));
    measure(pixels, [0, 0, side, side])
}

/// The shape, size class and measurements of `blob`.
pub fn recognize(blob: &Blob) -> DetectedObject {
    let [x0, y0, x1, y1] = blob.bbox;
    let (w, h) = ((x1 - x0).max(1) as f32, (y1 - y0).max(1) as f32);
    let side = ((w + h) / 2.0).round().max(1.0) as u32;
    let (top_share, fill) = measure(blob.pixels.iter().copied(), blob.bbox);
    let nearest = Shape::ALL
        .into_iter()
        .map(|shape| {
            let (t, f) = ideal(shape, side);
            (shape, ((t - top_share).powi(2) + (f - fill).powi(2)).sqrt())
        })
        .min_by(|a, b| a.1.total_cmp(&b.1));
    let squarish = w.max(h) / w.min(h) <= MAX_ASPECT_RATIO;
    let shape = nearest
        .filter(|&(_, d)| squarish && d <= MAX_SHAPE_DISTANCE)
        .map(|(shape, _)| shape);
    let size = if (side as f32) < LARGE_FROM_SIDE {
        Size::Small
    } else {
        Size::Large
    };
    DetectedObject {
        color: blob.color,
        shape,
        size,
        bbox: blob.bbox,
        centroid: blob.centroid,
        pixels: blob.area(),
        top_share,
        fill,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drawn(shape: Shape, side: u32, x0: u32, y0: u32) -> Blob {
        let mut pixels = Vec::new();
        for dy in 0..side {
            for dx in 0..side {
                if covers(shape, side, dx, dy) {
                    pixels.push((x0 + dx, y0 + dy));
                }
            }
        }
        let n = pixels.len() as f32;
        let cx = pixels.iter().map(|p| p.0 as f32 + 0.5).sum::<f32>() / n;
        let cy = pixels.iter().map(|p| p.1 as f32 + 0.5).sum::<f32>() / n;
        Blob {
            color: Color::Red,
            pixels,
            bbox: [x0, y0, x0 + side, y0 + side],
            centroid: [cx, cy],
        }
    }

    #[test]
    fn every_rendered_shape_and_size_is_recognised_exactly() {
        for shape in Shape::ALL {
            for side in 8..=24 {
                let o = recognize(&drawn(shape, side, 5, 7));
                assert_eq!(o.shape, Some(shape), "{shape:?} side {side}: {o:?}");
                assert_eq!((o.top_share, o.fill), ideal(shape, side));
                let want = if side <= 12 { Size::Small } else { Size::Large };
                if !(13..=15).contains(&side) {
                    assert_eq!(o.size, want, "side {side}");
                }
            }
        }
    }

    #[test]
    fn the_ideal_shapes_are_far_apart_at_every_side() {
        for side in 8..=24 {
            for (i, &a) in Shape::ALL.iter().enumerate() {
                for &b in &Shape::ALL[i + 1..] {
                    let ((ta, fa), (tb, fb)) = (ideal(a, side), ideal(b, side));
                    let d = ((ta - tb).powi(2) + (fa - fb).powi(2)).sqrt();
                    assert!(d > 0.14, "{a:?} and {b:?} at side {side}: {d}");
                }
            }
        }
    }

    #[test]
    fn a_thin_bar_is_no_known_shape() {
        let pixels: Vec<(u32, u32)> = (0..20).flat_map(|x| [(x, 3), (x, 4)]).collect();
        let blob = Blob {
            color: Color::Blue,
            pixels,
            bbox: [0, 3, 20, 5],
            centroid: [10.0, 4.0],
        };
        assert_eq!(recognize(&blob).shape, None);
    }
}
