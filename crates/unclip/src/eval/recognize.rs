//! Naming a blob's shape and size class by its geometry (shared/SHAPES.md, "The checker").
//!
//! Each shape of the world is drawn into a square box by one rule (`geometry::covers`), so a
//! blob is compared with the three ideal shapes laid into a square box of its measured side,
//! centered on its bounding box: the shape whose pixels overlap the blob's best (intersection
//! over union) wins, if the overlap reaches [`MIN_SHAPE_IOU`]. A rendered shape matches its own
//! template exactly (IoU 1); the closest wrong template of a clean shape scores π/4 ≈ 0.79 (a
//! disc against its square), so the rule separates the three with room for soft generated edges.

use super::segment::Blob;
use crate::data::shapes::geometry::covers;
use crate::data::shapes::palette::{Color, Shape, Size};
use serde::Serialize;
use std::collections::HashSet;

/// The least template overlap at which a blob counts as that shape; below it the blob is an
/// object of no known shape (it still counts as an object, so it fails counts and binding).
pub const MIN_SHAPE_IOU: f32 = 0.6;
/// Box sides below this are small, from it up large: the middle of the gap between the size
/// classes' pixel ranges (8-12 and 16-24).
pub const LARGE_FROM_SIDE: f32 = 14.0;

/// One object the checker found in an image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectedObject {
    pub color: Color,
    /// `None` when no shape's template overlaps the blob well enough.
    pub shape: Option<Shape>,
    pub size: Size,
    /// `[x0, y0, x1, y1]`, half-open, in the checked image's pixels.
    pub bbox: [u32; 4],
    pub centroid: [f32; 2],
    pub pixels: usize,
    /// The overlap with the winning shape's template.
    pub shape_iou: f32,
}

/// The shape, size class and measurements of `blob`.
pub fn recognize(blob: &Blob) -> DetectedObject {
    let [x0, y0, x1, y1] = blob.bbox;
    let (w, h) = (x1 - x0, y1 - y0);
    let side = ((w + h) as f32 / 2.0).round().max(1.0) as u32;
    // The template box, centered on the blob's box (they coincide when the blob is square).
    let start = |lo: u32, hi: u32| ((lo + hi) as f32 / 2.0 - side as f32 / 2.0).round() as i64;
    let (tx0, ty0) = (start(x0, x1), start(y0, y1));
    let blob_pixels: HashSet<(i64, i64)> = blob
        .pixels
        .iter()
        .map(|&(x, y)| (x as i64, y as i64))
        .collect();
    let (best, iou) = Shape::ALL
        .into_iter()
        .map(|shape| {
            let mut template = 0usize;
            let mut both = 0usize;
            for dy in 0..side {
                for dx in 0..side {
                    if covers(shape, side, dx, dy) {
                        template += 1;
                        if blob_pixels.contains(&(tx0 + dx as i64, ty0 + dy as i64)) {
                            both += 1;
                        }
                    }
                }
            }
            let union = template + blob_pixels.len() - both;
            (shape, both as f32 / union.max(1) as f32)
        })
        .max_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap_or((Shape::Square, 0.0));
    let size = if (side as f32) < LARGE_FROM_SIDE {
        Size::Small
    } else {
        Size::Large
    };
    DetectedObject {
        color: blob.color,
        shape: (iou >= MIN_SHAPE_IOU).then_some(best),
        size,
        bbox: blob.bbox,
        centroid: blob.centroid,
        pixels: blob.area(),
        shape_iou: iou,
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
                assert_eq!(o.shape_iou, 1.0);
                let want = if side <= 12 { Size::Small } else { Size::Large };
                if !(13..=15).contains(&side) {
                    assert_eq!(o.size, want, "side {side}");
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
