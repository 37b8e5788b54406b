//! Which pixels a shape covers: the single definition shared by the renderer (which paints
//! them), the scene sampler (which measures centroids from them) and the checker.
//!
//! A shape of side `s` lives in an `s`x`s` box and is sampled at pixel centers, `(x + 0.5,
//! y + 0.5)` in box coordinates. Every shape touches all four sides of its box, so the box is
//! also the tight bounding box of the painted pixels.

use super::palette::Shape;

/// Whether the pixel at column `x`, row `y` of a box of side `side` belongs to `shape`
/// (`x`, `y` < `side`).
pub fn covers(shape: Shape, side: u32, x: u32, y: u32) -> bool {
    if x >= side || y >= side {
        return false;
    }
    let s = side as f32;
    let (px, py) = (x as f32 + 0.5, y as f32 + 0.5);
    let c = s / 2.0;
    match shape {
        Shape::Square => true,
        // The disc inscribed in the box.
        Shape::Circle => (px - c).powi(2) + (py - c).powi(2) <= c * c,
        // Apex at the top middle, base along the bottom row: row `y` spans a half width of
        // (y + 1) / 2, so the top row holds one or two pixels and the bottom row is full.
        Shape::Triangle => (px - c).abs() <= (y as f32 + 1.0) / 2.0,
    }
}

/// The centroid of the covered pixel centers, relative to the box's top-left corner, in
/// pixels, rounded to 1/100 (the precision the scene graph stores).
pub fn centroid_offset(shape: Shape, side: u32) -> [f32; 2] {
    let (mut sx, mut sy, mut count) = (0.0f64, 0.0f64, 0u64);
    for y in 0..side {
        for x in 0..side {
            if covers(shape, side, x, y) {
                sx += x as f64 + 0.5;
                sy += y as f64 + 0.5;
                count += 1;
            }
        }
    }
    let count = count.max(1) as f64;
    [round_centi(sx / count), round_centi(sy / count)]
}

pub(crate) fn round_centi(v: f64) -> f32 {
    ((v * 100.0).round() / 100.0) as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_shape_touches_all_four_sides_of_its_box() {
        for shape in Shape::ALL {
            for side in 4..=32 {
                let mut rows = vec![false; side as usize];
                let mut cols = vec![false; side as usize];
                for y in 0..side {
                    for x in 0..side {
                        if covers(shape, side, x, y) {
                            rows[y as usize] = true;
                            cols[x as usize] = true;
                        }
                    }
                }
                assert!(rows[0] && rows[side as usize - 1], "{shape:?} {side}");
                assert!(cols[0] && cols[side as usize - 1], "{shape:?} {side}");
            }
        }
    }

    #[test]
    fn areas_tell_the_shapes_apart() {
        let side = 20;
        let area = |shape| {
            (0..side)
                .flat_map(|y| (0..side).map(move |x| (x, y)))
                .filter(|&(x, y)| covers(shape, side, x, y))
                .count() as f32
                / (side * side) as f32
        };
        assert_eq!(area(Shape::Square), 1.0);
        assert!((area(Shape::Circle) - std::f32::consts::FRAC_PI_4).abs() < 0.05);
        assert!((area(Shape::Triangle) - 0.5).abs() < 0.06);
    }

    #[test]
    fn triangle_points_up_and_others_are_centered() {
        let [cx, cy] = centroid_offset(Shape::Triangle, 18);
        assert_eq!(cx, 9.0);
        assert!(cy > 11.0 && cy < 13.0, "{cy}");
        assert_eq!(centroid_offset(Shape::Square, 9), [4.5, 4.5]);
        assert_eq!(centroid_offset(Shape::Circle, 10), [5.0, 5.0]);
    }
}
