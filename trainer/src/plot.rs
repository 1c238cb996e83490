//! Pictures a person would rather look at than read: one wedge's input, reconstruction and
//! difference (the paper's Figure 5), with one sequential and one diverging colour scale shared
//! by every plot of the workspace.

use std::path::Path;

use anyhow::{bail, Result};
use plotters::coord::CoordTranslate;
use plotters::prelude::*;

use crate::data::{AZIMUTH, LAYERS, Z_BINS};

/// Draw input, reconstruction and difference panels (the paper's Figure 5) of one wedge given
/// in log2(ADC+1), cropped layout (16, 192, 249), each summed over the 16 layers.
pub fn draw_reconstruction(out: &Path, title: &str, truth: &[f32], recon: &[f32]) -> Result<()> {
    let n = LAYERS * AZIMUTH * Z_BINS;
    if truth.len() != n || recon.len() != n {
        bail!(
            "draw_reconstruction: expected {n} values (16 x 192 x 249) per wedge, got {} and {}",
            truth.len(),
            recon.len()
        );
    }
    // (layer, azimuth, z) -> sum over layers, (azimuth, z).
    let plane = |v: &[f32]| -> Vec<f64> {
        let mut s = vec![0f64; AZIMUTH * Z_BINS];
        for l in 0..LAYERS {
            for (i, acc) in s.iter_mut().enumerate() {
                *acc += v[l * AZIMUTH * Z_BINS + i] as f64;
            }
        }
        s
    };
    let (pin, prec) = (plane(truth), plane(recon));
    let diff: Vec<f64> = prec.iter().zip(&pin).map(|(r, i)| r - i).collect();
    draw_panels(out, title, &pin, &prec, &diff)
}

/// The sequential colour scale of every picture (viridis anchors, perceptually even), t in [0, 1].
pub fn sequential(t: f64) -> RGBColor {
    const ANCHORS: [(u8, u8, u8); 5] = [
        (68, 1, 84),
        (59, 82, 139),
        (33, 145, 140),
        (94, 201, 98),
        (253, 231, 37),
    ];
    let t = t.clamp(0.0, 1.0) * (ANCHORS.len() - 1) as f64;
    let i = (t.floor() as usize).min(ANCHORS.len() - 2);
    let f = t - i as f64;
    let lerp = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (ANCHORS[i], ANCHORS[i + 1]);
    RGBColor(lerp(a.0, b.0), lerp(a.1, b.1), lerp(a.2, b.2))
}

/// The diverging colour scale of every difference panel: -1 blue, 0 white, +1 red.
pub fn diverging(t: f64) -> RGBColor {
    // -1 blue, 0 white, +1 red
    let t = t.clamp(-1.0, 1.0);
    let w = (255.0 * (1.0 - t.abs())).round() as u8;
    if t >= 0.0 {
        RGBColor(255, w, w)
    } else {
        RGBColor(w, w, 255)
    }
}

fn draw_panels(path: &Path, title: &str, input: &[f64], recon: &[f64], diff: &[f64]) -> Result<()> {
    let (pw, ph) = (AZIMUTH as u32 * 2 + 90, Z_BINS as u32 * 2 + 90);
    let root = BitMapBackend::new(path, (pw * 3, ph + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, body) = root.split_vertically(40);
    top.titled(title, ("sans-serif", 18))?;
    let areas = body.split_evenly((1, 3));
    let vmax = input
        .iter()
        .chain(recon)
        .copied()
        .fold(0.0, f64::max)
        .max(1e-9);
    let dmax = diff.iter().fold(0.0f64, |a, d| a.max(d.abs())).max(1e-9);
    let panels: [(&str, &[f64], bool); 3] = [
        ("input: sum over layers of log2(ADC+1)", input, false),
        ("reconstruction", recon, false),
        ("reconstruction - input (red +, blue -)", diff, true),
    ];
    for (area, (caption, values, signed)) in areas.iter().zip(panels) {
        plane_panel(area, caption, values, |v| {
            if signed {
                diverging(v / dmax)
            } else {
                sequential(v / vmax)
            }
        })?;
    }
    root.present()?;
    Ok(())
}

/// One (azimuth, z) plane as a panel: `values` azimuth-major (192 x 249), zeros left white,
/// every other voxel in `color(value)`.
pub fn plane_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    caption: &str,
    values: &[f64],
    color: impl Fn(f64) -> RGBColor,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(35)
        .y_label_area_size(40)
        .build_cartesian_2d(0..AZIMUTH as i32, 0..Z_BINS as i32)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("azimuth")
        .y_desc("z bin")
        .draw()?;
    chart.draw_series(
        values
            .iter()
            .enumerate()
            .filter(|(_, &v)| v != 0.0)
            .map(|(i, &v)| {
                let (a, z) = ((i / Z_BINS) as i32, (i % Z_BINS) as i32);
                Rectangle::new([(a, z), (a + 1, z + 1)], color(v).filled())
            }),
    )?;
    Ok(())
}

/// The colours every line chart gives its series, in order (cycled past the last).
pub const SERIES_COLORS: [RGBColor; 7] = [
    BLUE,
    RED,
    GREEN,
    MAGENTA,
    CYAN,
    BLACK,
    RGBColor(255, 140, 0),
];

/// A series' colour: the `k`-th of [`SERIES_COLORS`], cycled.
pub fn series_color(k: usize) -> RGBColor {
    SERIES_COLORS[k % SERIES_COLORS.len()]
}

/// One series of a line chart as every chart draws it: `solid` as a line with dots, labelled
/// `name` in the legend, and, where the series has a companion quantity (recall beside
/// precision, the worst wedge beside the mean), `dashed` as a dashed line with triangles.
pub fn solid_and_dashed<'a, DB: DrawingBackend + 'a, CT: CoordTranslate<From = (f64, f64)>>(
    chart: &mut ChartContext<'a, DB, CT>,
    name: &str,
    color: RGBColor,
    solid: &[(f64, f64)],
    dashed: &[(f64, f64)],
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart.draw_series(LineSeries::new(solid.to_vec(), color.stroke_width(2)))?;
    if !dashed.is_empty() {
        chart.draw_series(DashedLineSeries::new(
            dashed.to_vec(),
            6,
            4,
            color.stroke_width(2),
        ))?;
        chart.draw_series(
            dashed
                .iter()
                .map(|&p| TriangleMarker::new(p, 5, color.filled())),
        )?;
    }
    chart
        .draw_series(solid.iter().map(|&p| Circle::new(p, 4, color.filled())))?
        .label(name)
        .legend(move |(x, y)| Circle::new((x + 10, y), 4, color.filled()));
    Ok(())
}

/// The legend of every chart: a black border over a translucent white box at `position`.
pub fn legend<'a, DB: DrawingBackend + 'a, CT: CoordTranslate>(
    chart: &mut ChartContext<'a, DB, CT>,
    position: SeriesLabelPosition,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()?;
    Ok(())
}
