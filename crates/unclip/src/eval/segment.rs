//! Segmenting an image into colored blobs (docs/shapes-world.md, "The checker"): every pixel takes
//! the nearest palette color or the background, connected pixels of one color form a blob, and
//! small blobs are dropped.
//!
//! A pixel farther than [`MAX_COLOR_DISTANCE`] from every palette color belongs to nothing.
//! Generated images have soft edges: 30% or more of the way from red to white, a pixel is
//! nearer orange than red, so the nearest-color rule alone would draw an orange ring around
//! every red object. Those rim pixels are 100 or more from every palette color (the midpoint of
//! each color and white is at least 127 from everything), so a radius of 90 drops the blurred
//! rim while still accepting washed-out fills such as (230, 80, 80) for red (85 away).

use crate::data::shapes::palette::{Color, BACKGROUND};
use image::RgbImage;

/// Largest RGB Euclidean distance at which a pixel still counts as a palette color.
pub const MAX_COLOR_DISTANCE: f32 = 90.0;
/// Blobs with fewer pixels are noise. The smallest object a scene holds (a small triangle of
/// side 8) covers about 36 pixels.
pub const MIN_BLOB_PIXELS: usize = 16;

/// Connected pixels of one palette color (8-connectivity).
#[derive(Debug, Clone, PartialEq)]
pub struct Blob {
    pub color: Color,
    /// `(x, y)` of every pixel, in scan order.
    pub pixels: Vec<(u32, u32)>,
    /// `[x0, y0, x1, y1]`, half-open.
    pub bbox: [u32; 4],
    /// The mean of the pixel centers (`(x + 0.5, y + 0.5)`), as the scene graph measures it.
    pub centroid: [f32; 2],
}

impl Blob {
    pub fn area(&self) -> usize {
        self.pixels.len()
    }

    fn from_pixels(color: Color, pixels: Vec<(u32, u32)>) -> Blob {
        let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
        let (mut sx, mut sy) = (0.0f64, 0.0f64);
        for &(x, y) in &pixels {
            x0 = x0.min(x);
            y0 = y0.min(y);
            x1 = x1.max(x + 1);
            y1 = y1.max(y + 1);
            sx += x as f64 + 0.5;
            sy += y as f64 + 0.5;
        }
        let n = pixels.len().max(1) as f64;
        Blob {
            color,
            bbox: [x0, y0, x1, y1],
            centroid: [(sx / n) as f32, (sy / n) as f32],
            pixels,
        }
    }
}

/// The palette color a pixel shows, if any (`None` for background and unclear pixels).
pub fn classify_pixel(rgb: [u8; 3]) -> Option<Color> {
    let distance = |c: [u8; 3]| -> f32 {
        rgb.iter()
            .zip(c)
            .map(|(&a, b)| (a as f32 - b as f32).powi(2))
            .sum::<f32>()
            .sqrt()
    };
    let background = distance(BACKGROUND);
    let (color, d) = Color::ALL
        .into_iter()
        .map(|c| (c, distance(c.rgb())))
        .min_by(|a, b| a.1.total_cmp(&b.1))?;
    (d < background && d <= MAX_COLOR_DISTANCE).then_some(color)
}

/// The blobs of `image` with at least [`MIN_BLOB_PIXELS`] pixels, in scan order of their first
/// pixel.
pub fn segment(image: &RgbImage) -> Vec<Blob> {
    let (w, h) = image.dimensions();
    let labels: Vec<Option<Color>> = image.pixels().map(|p| classify_pixel(p.0)).collect();
    let index = |x: u32, y: u32| (y * w + x) as usize;
    let mut seen = vec![false; labels.len()];
    let mut blobs = Vec::new();
    for y in 0..h {
        for x in 0..w {
            let start = index(x, y);
            let Some(color) = labels[start] else { continue };
            if seen[start] {
                continue;
            }
            seen[start] = true;
            let mut pixels = Vec::new();
            let mut stack = vec![(x, y)];
            while let Some((px, py)) = stack.pop() {
                pixels.push((px, py));
                for (dx, dy) in NEIGHBOURS {
                    let (nx, ny) = (px as i64 + dx, py as i64 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i64 || ny >= h as i64 {
                        continue;
                    }
                    let (nx, ny) = (nx as u32, ny as u32);
                    let i = index(nx, ny);
                    if !seen[i] && labels[i] == Some(color) {
                        seen[i] = true;
                        stack.push((nx, ny));
                    }
                }
            }
            if pixels.len() >= MIN_BLOB_PIXELS {
                pixels.sort_by_key(|&(px, py)| (py, px));
                blobs.push(Blob::from_pixels(color, pixels));
            }
        }
    }
    blobs
}

const NEIGHBOURS: [(i64, i64); 8] = [
    (-1, -1),
    (0, -1),
    (1, -1),
    (-1, 0),
    (1, 0),
    (-1, 1),
    (0, 1),
    (1, 1),
];

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn palette_colors_and_their_noisy_versions_are_recognised() {
        for c in Color::ALL {
            assert_eq!(classify_pixel(c.rgb()), Some(c));
            let [r, g, b] = c.rgb();
            let noisy = [
                r.saturating_add(20),
                g.saturating_sub(20),
                b.saturating_add(15),
            ];
            assert_eq!(classify_pixel(noisy), Some(c), "{c:?}");
        }
        assert_eq!(classify_pixel(BACKGROUND), None);
        assert_eq!(classify_pixel([245, 250, 240]), None);
    }

    #[test]
    fn blurred_rims_take_their_own_color_or_none() {
        for c in Color::ALL {
            let [r, g, b] = c.rgb();
            let mid = |v: u8| ((v as u16 + 255) / 2) as u8;
            assert_eq!(classify_pixel([mid(r), mid(g), mid(b)]), None, "{c:?}");
            for step in 0..=20 {
                let t = step as f32 / 20.0;
                let blend = |v: u8| (v as f32 + t * (255.0 - v as f32)).round() as u8;
                let got = classify_pixel([blend(r), blend(g), blend(b)]);
                assert!(got.is_none() || got == Some(c), "{c:?} at {t}: {got:?}");
            }
        }
        assert_eq!(classify_pixel([230, 80, 80]), Some(Color::Red));
    }

    #[test]
    fn blobs_are_connected_same_colored_pixels_and_specks_are_dropped() {
        let mut image = RgbImage::from_pixel(20, 20, Rgb(BACKGROUND));
        for y in 2..7 {
            for x in 2..7 {
                image.put_pixel(x, y, Rgb(Color::Red.rgb()));
                image.put_pixel(x + 10, y + 10, Rgb(Color::Red.rgb()));
            }
        }
        // A speck of 3 blue pixels.
        for x in 15..18 {
            image.put_pixel(x, 2, Rgb(Color::Blue.rgb()));
        }
        let blobs = segment(&image);
        assert_eq!(blobs.len(), 2);
        assert_eq!(blobs[0].bbox, [2, 2, 7, 7]);
        assert_eq!(blobs[0].area(), 25);
        assert_eq!(blobs[0].centroid, [4.5, 4.5]);
        assert_eq!(blobs[1].bbox, [12, 12, 17, 17]);
    }
}
