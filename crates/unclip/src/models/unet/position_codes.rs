//! Fixed 2-D sine position codes for the pixels an attention layer attends with (an option of
//! this project, not of diffusers: `attention_position_codes` in the U-Net config).
//!
//! Karlo's decoder attention is position-blind: a pixel's query and keys say what is there, not
//! where. Where an object goes is decided at the first sampling steps, from almost pure noise,
//! and a caption's "above" must then move content to the top half. Measured on the shapes
//! world: without these codes a decoder never learned placement from any conditioning; with
//! them (and training steps at high noise) it did. The codes are the Transformer's, in two
//! axes: the first half of the channels encode the row, the second half the column, in
//! sine/cosine pairs whose frequency rises by π per pair. They are computed, not learned, so a
//! checkpoint holds no new tensors and a layer works at any resolution.

use candle_core::{Device, Result, Tensor};
use std::f32::consts::PI;

/// Codes for an `height` × `width` grid of `channels`-wide pixels: (1, height·width, channels),
/// pixels in row-major order, to add to (B, HW, C) attention inputs.
pub fn sine_position_codes_2d(
    height: usize,
    width: usize,
    channels: usize,
    device: &Device,
) -> Result<Tensor> {
    let half = channels / 2;
    let mut codes = vec![0f32; height * width * channels];
    for pixel in 0..height * width {
        let row = (pixel / width) as f32 / height as f32;
        let column = (pixel % width) as f32 / width as f32;
        for channel in 0..channels {
            let (coordinate, k) = if channel < half {
                (row, channel)
            } else {
                (column, channel - half)
            };
            let angle = coordinate * PI * (1 + k / 2) as f32;
            codes[pixel * channels + channel] = if k % 2 == 0 { angle.sin() } else { angle.cos() };
        }
    }
    Tensor::from_vec(codes, (1, height * width, channels), device)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(t: &Tensor, pixel: usize) -> Vec<f32> {
        t.get(0).unwrap().get(pixel).unwrap().to_vec1().unwrap()
    }

    #[test]
    fn every_pixel_gets_its_own_code_and_rows_and_columns_use_separate_halves() {
        let (h, w, c) = (4, 6, 8);
        let codes = sine_position_codes_2d(h, w, c, &Device::Cpu).unwrap();
        assert_eq!(codes.dims(), &[1, h * w, c]);
        for a in 0..h * w {
            for b in a + 1..h * w {
                let diff: f32 = code(&codes, a)
                    .iter()
                    .zip(code(&codes, b))
                    .map(|(x, y)| (x - y).abs())
                    .sum();
                assert!(diff > 1e-3, "pixels {a} and {b} share a code");
            }
        }
        // Same row: the row half agrees; same column: the column half agrees.
        let (p, same_row, same_column) = (w + 1, w + 4, 3 * w + 1);
        assert_eq!(code(&codes, p)[..c / 2], code(&codes, same_row)[..c / 2]);
        assert_eq!(code(&codes, p)[c / 2..], code(&codes, same_column)[c / 2..]);
        // The top-left pixel: sin 0 = 0 and cos 0 = 1 in both halves.
        assert_eq!(
            code(&codes, 0),
            vec![0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0]
        );
    }
}
