//! Rasterising a scene: a white canvas with each object's covered pixels (geometry.rs) painted
//! in its palette color, with hard edges. Pure and deterministic, so one seed gives one image.

use super::geometry::covers;
use super::palette::BACKGROUND;
use super::scene::Scene;
use crate::error::{Error, Result};
use image::codecs::png::PngEncoder;
use image::{ImageEncoder, Rgb, RgbImage};

/// Paints `scene` on a `width`x`height` white canvas. Pixels of boxes that reach past the
/// canvas (possible only in a hand-edited scene graph) are clipped.
pub fn render(scene: &Scene) -> RgbImage {
    let mut image = RgbImage::from_pixel(scene.width, scene.height, Rgb(BACKGROUND));
    for object in &scene.objects {
        let [x0, y0, ..] = object.bbox;
        let side = object.side();
        let color = Rgb(object.color.rgb());
        // Only the part of the box that lies on the canvas.
        let rows = side.min(scene.height.saturating_sub(y0));
        let cols = side.min(scene.width.saturating_sub(x0));
        for dy in 0..rows {
            for dx in 0..cols {
                if covers(object.shape, side, dx, dy) {
                    image.put_pixel(x0 + dx, y0 + dy, color);
                }
            }
        }
    }
    image
}

/// The PNG file bytes of `image`.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    PngEncoder::new(&mut bytes)
        .write_image(
            image.as_raw(),
            image.width(),
            image.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::Data(format!("cannot encode a PNG: {e}")))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::super::grammar::{Form, Prompt};
    use super::super::palette::Color;
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn each_color_is_painted_only_inside_its_objects_boxes() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for _ in 0..400 {
            let prompt = Prompt::sample(&mut rng, &Form::ALL).unwrap();
            let scene = Scene::sample(&prompt, &mut rng).unwrap();
            let image = render(&scene);
            assert_eq!(image.dimensions(), (64, 64));
            for (x, y, pixel) in image.enumerate_pixels() {
                if pixel.0 == BACKGROUND {
                    continue;
                }
                let owner = scene.objects.iter().find(|o| {
                    let [x0, y0, x1, y1] = o.bbox;
                    (x0..x1).contains(&x) && (y0..y1).contains(&y)
                });
                let owner =
                    owner.unwrap_or_else(|| panic!("({x}, {y}) outside every box: {scene:?}"));
                assert_eq!(pixel.0, owner.color.rgb());
            }
            // Every object shows up, and its painted pixels reproduce the recorded centroid.
            for o in &scene.objects {
                let [x0, y0, x1, y1] = o.bbox;
                let (mut sx, mut sy, mut count) = (0.0f64, 0.0f64, 0.0f64);
                for y in y0..y1 {
                    for x in x0..x1 {
                        if image.get_pixel(x, y).0 == o.color.rgb() {
                            sx += x as f64 + 0.5;
                            sy += y as f64 + 0.5;
                            count += 1.0;
                        }
                    }
                }
                assert!(count > 0.0);
                assert!((sx / count - o.centroid[0] as f64).abs() < 0.01, "{o:?}");
                assert!((sy / count - o.centroid[1] as f64).abs() < 0.01, "{o:?}");
            }
        }
    }

    #[test]
    fn clips_boxes_past_the_canvas_instead_of_panicking() {
        let mut scene = Scene::sample(
            &Prompt::parse("a large red square").unwrap(),
            &mut ChaCha8Rng::seed_from_u64(0),
        )
        .unwrap();
        scene.objects[0].bbox = [60, 60, 80, 80];
        let image = render(&scene);
        assert_eq!(image.get_pixel(63, 63).0, Color::Red.rgb());
    }

    #[test]
    fn png_encoding_is_deterministic() {
        let prompt = Prompt::parse("a red circle above a blue triangle").unwrap();
        let draw = || {
            let scene = Scene::sample(&prompt, &mut ChaCha8Rng::seed_from_u64(11)).unwrap();
            encode_png(&render(&scene)).unwrap()
        };
        assert_eq!(draw(), draw());
    }
}
