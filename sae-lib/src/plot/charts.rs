//! The chart functions: plain data in, a drawn area out.

use plotters::coord::Shift;
use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use super::plot_err;
use crate::train::MetricsRow;
use crate::Result;

const FONT: &str = "sans-serif";

/// One run on a Pareto chart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParetoPoint {
    /// Groups points into one line (e.g. the architecture).
    pub series: String,
    /// Mean active features per input.
    pub l0: f64,
    /// FVU or CE loss recovered.
    pub value: f64,
}

/// What a Pareto chart plots against L0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ParetoMetric {
    /// Fraction of variance unexplained (lower is better).
    Fvu,
    /// CE loss recovered (higher is better).
    CeLossScore,
}

/// `(lo, hi)` covering `values`, widened when flat or empty.
fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.05).max(1e-6 * hi.abs().max(1.0));
    (lo - pad, hi + pad)
}

fn histogram(values: &[f64], bins: usize) -> (f64, f64, Vec<u32>) {
    let (lo, hi) = range(values.iter().copied());
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for &v in values.iter().filter(|v| v.is_finite()) {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    (lo, hi, counts)
}

/// A histogram with a title and axis labels.
fn draw_histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    values: &[f64],
    title: &str,
    x_desc: &str,
    color: RGBColor,
) -> Result<()> {
    let (lo, hi, counts) = histogram(values, 50);
    let width = (hi - lo) / counts.len() as f64;
    let top = counts.iter().copied().max().unwrap_or(1).max(1) as f64 * 1.08;
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, 0.0..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("count")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style((FONT, 14))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x0 = lo + i as f64 * width;
            Rectangle::new([(x0, 0.0), (x0 + width * 0.95, c as f64)], color.filled())
        }))
        .map_err(plot_err)?;
    Ok(())
}

/// Training curves: loss, MSE, L0 and FVU against step, one panel each.
pub fn draw_training_curves<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    rows: &[MetricsRow],
) -> Result<()> {
    let area = area
        .titled("SAE training curves", (FONT, 26))
        .map_err(plot_err)?;
    let panels = area.split_evenly((2, 2));
    type Get = fn(&MetricsRow) -> f64;
    let series: [(&str, &str, Get, RGBColor); 4] = [
        ("Loss", "loss (MSE + sparsity)", |r| r.loss, BLUE),
        (
            "Reconstruction MSE",
            "MSE per input (activation units²)",
            |r| r.mse,
            RED,
        ),
        ("L0", "active features per input", |r| r.l0, GREEN),
        (
            "FVU",
            "fraction of variance unexplained",
            |r| r.fvu,
            MAGENTA,
        ),
    ];
    for (panel, (title, unit, get, color)) in panels.iter().zip(series) {
        let (x0, x1) = range(rows.iter().map(|r| r.step as f64));
        let (y0, y1) = range(rows.iter().map(get));
        let mut chart = ChartBuilder::on(panel)
            .caption(title, (FONT, 18))
            .margin(10)
            .x_label_area_size(38)
            .y_label_area_size(60)
            .build_cartesian_2d(x0..x1, y0..y1)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("training step")
            .y_desc(unit)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style((FONT, 12))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                rows.iter().map(|r| (r.step as f64, get(r))),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?;
    }
    Ok(())
}

/// Feature density: histogram of log10 firing frequency over features that fired; the dead
/// ones (SAELens writes them as −10) are counted in the title.
pub fn draw_feature_density<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    log10_density: &[f32],
) -> Result<()> {
    let alive: Vec<f64> = log10_density
        .iter()
        .filter(|&&v| v > -9.5)
        .map(|&v| v as f64)
        .collect();
    let dead = log10_density.len() - alive.len();
    let title = format!(
        "Feature density ({} features, {dead} dead)",
        log10_density.len()
    );
    draw_histogram(
        area,
        &alive,
        &title,
        "log10 firing frequency (fraction of inputs)",
        RGBColor(70, 130, 180),
    )
}

/// L0 histogram: how many features are active per input.
pub fn draw_l0_histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    l0_per_input: &[f32],
) -> Result<()> {
    let values: Vec<f64> = l0_per_input.iter().map(|&v| v as f64).collect();
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    draw_histogram(
        area,
        &values,
        &format!("L0 per input (mean {mean:.1})"),
        "active features per input (count)",
        RGBColor(60, 160, 90),
    )
}

/// A feature's activation histogram (non-zero activations only).
pub fn draw_activation_histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    feature: usize,
    values: &[f32],
) -> Result<()> {
    let nonzero: Vec<f64> = values
        .iter()
        .filter(|&&v| v != 0.0)
        .map(|&v| v as f64)
        .collect();
    let frac = nonzero.len() as f64 / values.len().max(1) as f64;
    let title = format!(
        "Feature {feature}: activations when firing ({:.2}% of inputs)",
        100.0 * frac
    );
    draw_histogram(
        area,
        &nonzero,
        &title,
        "feature activation (SAE units)",
        RGBColor(230, 120, 30),
    )
}

/// A histogram titled and labelled by the caller.
pub fn draw_plain_histogram<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_label: &str,
    values: &[f32],
) -> Result<()> {
    let values: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    draw_histogram(area, &values, title, x_label, RGBColor(70, 110, 190))
}

/// Pareto chart: L0 against FVU or CE loss recovered, one line per series.
pub fn draw_pareto<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    points: &[ParetoPoint],
    metric: ParetoMetric,
) -> Result<()> {
    let (y_desc, title) = match metric {
        ParetoMetric::Fvu => (
            "FVU (lower is better)",
            "Sparsity vs reconstruction: L0 against FVU",
        ),
        ParetoMetric::CeLossScore => (
            "CE loss recovered (higher is better)",
            "Sparsity vs faithfulness: L0 against CE loss recovered",
        ),
    };
    let (x0, x1) = range(points.iter().map(|p| p.l0));
    let (y0, y1) = range(points.iter().map(|p| p.value));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("L0 (active features per input)")
        .y_desc(y_desc)
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_err)?;
    let mut names: Vec<&str> = points.iter().map(|p| p.series.as_str()).collect();
    names.dedup();
    names.sort();
    names.dedup();
    for (i, name) in names.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.series == *name)
            .map(|p| (p.l0, p.value))
            .collect();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        chart
            .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(*name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled())))
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 14))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

/// Reconstruction quality: each sampled activation value against its reconstruction, with
/// the identity line.
pub fn draw_reconstruction<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    x: &[f32],
    x_hat: &[f32],
) -> Result<()> {
    let (lo, hi) = range(x.iter().chain(x_hat).map(|&v| v as f64));
    let mut chart = ChartBuilder::on(area)
        .caption("Reconstruction: x_hat against x", (FONT, 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(lo..hi, lo..hi)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("activation x (model units)")
        .y_desc("reconstruction x_hat (model units)")
        .label_style((FONT, 13))
        .draw()
        .map_err(plot_err)?;
    chart
        .draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.mix(0.5)))
        .map_err(plot_err)?;
    chart
        .draw_series(
            x.iter()
                .zip(x_hat)
                .map(|(&a, &b)| Circle::new((a as f64, b as f64), 2, BLUE.mix(0.35).filled())),
        )
        .map_err(plot_err)?;
    Ok(())
}
