//! The loss curve as a PNG (plotters, bitmap backend only: no font stack is needed, so the
//! picture has no text; the numbers are in `train_log.jsonl`). Training loss in blue on a
//! log scale, validation loss in red, a light frame; the x axis is the step.

use crate::checkpoint::write_atomic;
use crate::error::{Error, Result};
use plotters::prelude::*;
use std::path::Path;

const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;

pub fn write_loss_curve(path: &Path, history: &[(usize, f32, Option<f32>)]) -> Result<()> {
    let points: Vec<(f64, f64)> = history
        .iter()
        .filter(|(_, l, _)| l.is_finite() && *l > 0.0)
        .map(|(s, l, _)| (*s as f64, (*l as f64).ln()))
        .collect();
    if points.len() < 2 {
        return Ok(());
    }
    let val: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|(s, _, v)| {
            v.filter(|x| x.is_finite() && *x > 0.0)
                .map(|v| (*s as f64, (v as f64).ln()))
        })
        .collect();
    let x_max = points.iter().map(|p| p.0).fold(1.0, f64::max);
    let all = points.iter().chain(&val).map(|p| p.1);
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), y| {
        (a.min(y), b.max(y))
    });
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let mut buffer = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    let draw = |buffer: &mut [u8]| -> std::result::Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::with_buffer(buffer, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .margin(12)
            .build_cartesian_2d(0.0..x_max, (lo - pad)..(hi + pad))?;
        chart.plotting_area().draw(&Rectangle::new(
            [(0.0, lo - pad), (x_max, hi + pad)],
            ShapeStyle::from(&RGBColor(200, 200, 200)).stroke_width(1),
        ))?;
        chart.draw_series(LineSeries::new(
            points.iter().copied(),
            ShapeStyle::from(&BLUE).stroke_width(2),
        ))?;
        if val.len() >= 2 {
            chart.draw_series(LineSeries::new(
                val.iter().copied(),
                ShapeStyle::from(&RED).stroke_width(2),
            ))?;
        }
        root.present()?;
        Ok(())
    };
    draw(&mut buffer).map_err(|e| Error::InvalidInput(format!("drawing the loss curve: {e}")))?;
    let image = image::RgbImage::from_raw(WIDTH, HEIGHT, buffer)
        .ok_or_else(|| Error::InvalidInput("loss curve buffer has the wrong size".into()))?;
    let mut png = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| Error::Image {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
    write_atomic(path, &png)
}
