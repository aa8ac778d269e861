//! Charts with plotters, one function per chart over plain data and any drawing area, so the
//! same code draws SVG for notebooks (inline through evcxr) and PNG for reports.
//! Every chart has a title, axis labels and units.

mod charts;
mod table;

use std::path::Path;
use std::sync::Once;

use plotters::coord::Shift;
use plotters::prelude::*;

pub use charts::*;
pub use table::{Table, Values};

use crate::{io, Error, Result};

/// A chart and its data.
#[derive(Debug, Clone)]
pub enum Chart {
    /// Loss, MSE, L0 and FVU against training step.
    TrainingCurves(Vec<crate::train::MetricsRow>),
    /// Histogram of log10 feature firing frequency; never-firing features counted apart.
    FeatureDensity(Vec<f32>),
    /// Histogram of the number of active features per input.
    L0Histogram(Vec<f32>),
    /// L0 against a quality metric, one labelled point per run.
    Pareto {
        /// One point per run.
        points: Vec<ParetoPoint>,
        /// What the y axis shows: FVU or CE loss recovered.
        metric: ParetoMetric,
    },
    /// x against x̂ for a sample of activation values.
    Reconstruction {
        /// Sampled activation values, in model units.
        x: Vec<f32>,
        /// The SAE's reconstruction of each, in the same order.
        x_hat: Vec<f32>,
    },
    /// Histogram of one feature's non-zero activations.
    ActivationHistogram {
        /// Index of the feature, for the title.
        feature: usize,
        /// The feature's activation on every input, zeros included; the non-zero ones are
        /// binned and the firing fraction goes into the title.
        values: Vec<f32>,
    },
    /// Any histogram, titled and labelled by the caller.
    Histogram {
        /// Chart title.
        title: String,
        /// Label of the x axis, with units.
        x_label: String,
        /// The values to bin.
        values: Vec<f32>,
    },
}

/// Registers the embedded DejaVu Sans for bitmap text (no system fonts needed).
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

pub(crate) fn plot_err<E: std::error::Error + Send + Sync>(e: DrawingAreaErrorKind<E>) -> Error {
    Error::Input(format!("drawing a chart failed: {e}"))
}

impl Chart {
    /// Default size in pixels.
    pub fn size(&self) -> (u32, u32) {
        match self {
            Chart::TrainingCurves(_) => (960, 640),
            _ => (720, 480),
        }
    }

    /// Draws onto any plotters area.
    pub fn draw<DB: DrawingBackend>(&self, area: &DrawingArea<DB, Shift>) -> Result<()>
    where
        DB::ErrorType: 'static,
    {
        register_font();
        area.fill(&WHITE).map_err(plot_err)?;
        match self {
            Chart::TrainingCurves(rows) => draw_training_curves(area, rows),
            Chart::FeatureDensity(log10) => draw_feature_density(area, log10),
            Chart::L0Histogram(l0) => draw_l0_histogram(area, l0),
            Chart::Pareto { points, metric } => draw_pareto(area, points, *metric),
            Chart::Reconstruction { x, x_hat } => draw_reconstruction(area, x, x_hat),
            Chart::ActivationHistogram { feature, values } => {
                draw_activation_histogram(area, *feature, values)
            }
            Chart::Histogram {
                title,
                x_label,
                values,
            } => draw_plain_histogram(area, title, x_label, values),
        }?;
        area.present().map_err(plot_err)
    }

    /// The chart as an SVG document.
    pub fn to_svg(&self) -> Result<String> {
        let mut svg = String::new();
        {
            let area = SVGBackend::with_string(&mut svg, self.size()).into_drawing_area();
            self.draw(&area)?;
        }
        Ok(svg)
    }

    /// Writes an SVG file, atomically.
    pub fn save_svg(&self, path: &Path) -> Result<()> {
        io::write_bytes(path, self.to_svg()?.as_bytes())
    }

    /// Writes a PNG file, atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        io::write_atomic(path, |tmp| {
            let area = BitMapBackend::new(tmp, self.size()).into_drawing_area();
            self.draw(&area)
        })
    }

    /// Shown inline by evcxr (the Rust Jupyter kernel) when a cell evaluates to a chart.
    pub fn evcxr_display(&self) {
        match self.to_svg() {
            Ok(svg) => println!("EVCXR_BEGIN_CONTENT image/svg+xml\n{svg}\nEVCXR_END_CONTENT"),
            Err(e) => println!("{e}"),
        }
    }
}

/// HTML shown inline by evcxr.
#[derive(Debug, Clone)]
pub struct Html(pub String);

impl Html {
    /// A table with a header row; cells are escaped.
    pub fn table(header: &[&str], rows: impl IntoIterator<Item = Vec<String>>) -> Self {
        let esc = |s: &str| {
            s.replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('>', "&gt;")
        };
        let cell =
            |tag: &str, s: &str| format!("<{tag} style=\"text-align:left\">{}</{tag}>", esc(s));
        let head: String = header.iter().map(|h| cell("th", h)).collect();
        let body: String = rows
            .into_iter()
            .map(|r| {
                format!(
                    "<tr>{}</tr>",
                    r.iter().map(|c| cell("td", c)).collect::<String>()
                )
            })
            .collect();
        Html(format!(
            "<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        ))
    }

    /// Shown inline by evcxr (the Rust Jupyter kernel) when a cell evaluates to HTML.
    pub fn evcxr_display(&self) {
        println!(
            "EVCXR_BEGIN_CONTENT text/html\n{}\nEVCXR_END_CONTENT",
            self.0
        );
    }
}
