//! PIL's separable, antialiased resampling (`Image.resize`, Pillow `libImaging/Resample.c`),
//! written here because CLIP's preprocessing and unCLIP's super-resolution conditioning are
//! defined by it: the `image` crate's filters differ by several grey levels from PIL's.
//!
//! Each output sample is a weighted sum over a window of input samples; when shrinking, the
//! filter is stretched by the scale factor (that is the antialiasing). 8-bit images use PIL's
//! fixed-point weights and rounding, so results match PIL exactly.

/// The interpolation kernel; numbers are PIL's `resample` codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// PIL `BILINEAR` (2): triangle, support 1.
    Bilinear,
    /// PIL `BICUBIC` (3): cubic convolution with a = -0.5, support 2.
    Bicubic,
}

impl Filter {
    /// From PIL's resample code (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).
    pub fn from_pil_code(code: u32) -> Option<Self> {
        match code {
            2 => Some(Self::Bilinear),
            3 => Some(Self::Bicubic),
            _ => None,
        }
    }

    fn support(self) -> f64 {
        match self {
            Self::Bilinear => 1.0,
            Self::Bicubic => 2.0,
        }
    }

    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    (((x - 5.0) * x + 8.0) * x - 4.0) * A
                } else {
                    0.0
                }
            }
        }
    }
}

/// For each output index: the first input index and the normalised weights of its window.
pub(crate) struct Taps {
    pub start: Vec<usize>,
    pub weights: Vec<Vec<f64>>,
}

/// Pillow's `precompute_coeffs` for resizing `in_size` samples to `out_size`.
pub(crate) fn taps(in_size: usize, out_size: usize, filter: Filter) -> Taps {
    let scale = in_size as f64 / out_size as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    let inv = 1.0 / filter_scale;
    let mut start = Vec::with_capacity(out_size);
    let mut weights = Vec::with_capacity(out_size);
    for out in 0..out_size {
        let center = (out as f64 + 0.5) * scale;
        // C's (int) cast truncates toward zero.
        let lo = ((center - support + 0.5) as i64).max(0) as usize;
        let hi = ((center + support + 0.5) as i64)
            .min(in_size as i64)
            .max(lo as i64) as usize;
        let mut w: Vec<f64> = (lo..hi)
            .map(|x| filter.weight((x as f64 - center + 0.5) * inv))
            .collect();
        let total: f64 = w.iter().sum();
        if total != 0.0 {
            w.iter_mut().for_each(|v| *v /= total);
        }
        start.push(lo);
        weights.push(w);
    }
    Taps { start, weights }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn fixed_point(weights: &[f64]) -> Vec<i32> {
    weights
        .iter()
        .map(|&w| {
            let scaled = w * (1u32 << PRECISION_BITS) as f64;
            (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
        })
        .collect()
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// One 8-bit pass along x (`horizontal`) or y, with PIL's rounding.
fn pass_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    out_len: usize,
    horizontal: bool,
    filter: Filter,
) -> Vec<u8> {
    let in_len = if horizontal { width } else { height };
    let t = taps(in_len, out_len, filter);
    let fixed: Vec<Vec<i32>> = t.weights.iter().map(|w| fixed_point(w)).collect();
    let (out_w, out_h) = if horizontal {
        (out_len, height)
    } else {
        (width, out_len)
    };
    let mut out = vec![0u8; out_w * out_h * 3];
    for y in 0..out_h {
        for x in 0..out_w {
            let (o, line) = if horizontal { (x, y) } else { (y, x) };
            for c in 0..3 {
                let mut acc: i64 = 1 << (PRECISION_BITS - 1);
                for (k, &w) in fixed[o].iter().enumerate() {
                    let i = t.start[o] + k;
                    let (sx, sy) = if horizontal { (i, line) } else { (line, i) };
                    acc += src[(sy * width + sx) * 3 + c] as i64 * w as i64;
                }
                out[(y * out_w + x) * 3 + c] = clip8(acc);
            }
        }
    }
    out
}

/// Resizes an interleaved RGB8 image exactly as PIL's `Image.resize((out_w, out_h), filter)`.
pub fn resize_rgb8(
    src: &[u8],
    width: usize,
    height: usize,
    out_w: usize,
    out_h: usize,
    filter: Filter,
) -> Vec<u8> {
    let mut data = src.to_vec();
    let mut w = width;
    if out_w != width {
        data = pass_rgb8(&data, w, height, out_w, true, filter);
        w = out_w;
    }
    if out_h != height {
        data = pass_rgb8(&data, w, height, out_h, false, filter);
    }
    data
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_sum_to_one_and_identity_is_kept() {
        for (i, o) in [(10, 3), (3, 10), (224, 224), (7, 7)] {
            let t = taps(i, o, Filter::Bicubic);
            for w in &t.weights {
                assert!((w.iter().sum::<f64>() - 1.0).abs() < 1e-12);
            }
        }
        let img: Vec<u8> = (0..5 * 4 * 3).map(|v| (v * 7 % 256) as u8).collect();
        assert_eq!(resize_rgb8(&img, 5, 4, 5, 4, Filter::Bicubic), img);
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = vec![200u8; 13 * 9 * 3];
        let out = resize_rgb8(&img, 13, 9, 6, 20, Filter::Bicubic);
        assert!(out.iter().all(|&v| v == 200));
    }

    #[test]
    fn fixed_point_result_matches_float_weights() {
        // The fixed-point path rounds like a float convolution to within the last grey level.
        let src: Vec<u8> = [0u8, 64, 128, 255]
            .iter()
            .flat_map(|&r| [r, 0, 0])
            .collect();
        let out = resize_rgb8(&src, 4, 1, 2, 1, Filter::Bicubic);
        let t = taps(4, 2, Filter::Bicubic);
        let expect = |o: usize| -> u8 {
            let v: f64 = t.weights[o]
                .iter()
                .enumerate()
                .map(|(k, w)| w * [0., 64., 128., 255.][t.start[o] + k])
                .sum();
            v.round().clamp(0., 255.) as u8
        };
        assert_eq!(out[0], expect(0));
        assert_eq!(out[3], expect(1));
    }
}
