//! A fair comparison of SAE variants: every architecture at the same dictionary size, over
//! several sparsity levels, on the same activations with the same seed and step budget,
//! measured the same way (L0 and FVU on the same rows; CE loss recovered when a model is given).

use candle_core::Device;
use polars::prelude::{Column, DataFrame};
use serde::{Deserialize, Serialize};

use crate::eval::{metrics, splice_eval};
use crate::hooks::HookPoint;
use crate::model::Model;
use crate::plot::{Chart, ParetoMetric, ParetoPoint};
use crate::sae::{Architecture, Sae, SaeConfig, SaeMetadata};
use crate::train::{ActivationSource, TrainConfig, Trainer};
use crate::{Error, Result};

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    pub architectures: Vec<Architecture>,
    pub d_sae: usize,
    /// `k` values for TopK, BatchTopK and Matryoshka.
    pub ks: Vec<usize>,
    /// Penalty coefficients for ReLU and Gated (L1) runs.
    pub l1_coefficients: Vec<f64>,
    /// Penalty coefficients for JumpReLU (L0) runs.
    pub l0_coefficients: Vec<f64>,
    /// Shared by every run (steps, batch, learning rate, seed).
    pub train: TrainConfig,
    /// Rows used to measure L0 and FVU.
    pub eval_rows: usize,
    pub metadata: SaeMetadata,
}

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            architectures: Architecture::ALL.to_vec(),
            d_sae: 4096,
            ks: vec![16, 32, 64],
            l1_coefficients: vec![2.0, 5.0, 10.0],
            l0_coefficients: vec![0.5, 1.0, 3.0],
            train: TrainConfig::default(),
            eval_rows: 16384,
            metadata: SaeMetadata::default(),
        }
    }
}

/// One trained SAE of the sweep.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    pub architecture: String,
    /// `k`, or the penalty coefficient.
    pub sparsity_setting: f64,
    pub l0: f64,
    pub fvu: f64,
    pub dead_fraction: f64,
    pub ce_loss_score: Option<f64>,
}

/// The model side of an optional CE evaluation: the model, the hook, held-out sequences.
pub struct SweepEval<'a> {
    pub model: &'a Model,
    pub hook: HookPoint,
    pub sequences: &'a [Vec<u32>],
}

/// Trains every (architecture, sparsity) pair and measures it.
pub fn run_sweep(
    data: &dyn ActivationSource,
    cfg: &SweepConfig,
    eval: Option<&SweepEval>,
    device: &Device,
) -> Result<Vec<SweepPoint>> {
    if cfg.architectures.is_empty() {
        return Err(Error::Input("the sweep has no architectures".into()));
    }
    let rows: Vec<u32> = crate::data::store::permutation(data.len(), cfg.train.seed ^ 0x5eed, 0)
        .into_iter()
        .take(cfg.eval_rows)
        .collect();
    let x = data.gather(&rows, device)?;
    let mut points = Vec::new();
    for &arch in &cfg.architectures {
        let settings: Vec<f64> = match arch {
            a if a.uses_k() => cfg.ks.iter().map(|&k| k as f64).collect(),
            Architecture::JumpRelu => cfg.l0_coefficients.clone(),
            _ => cfg.l1_coefficients.clone(),
        };
        for setting in settings {
            println!("sweep: {} at {setting}", arch.name());
            let sae_cfg = SaeConfig {
                k: arch.uses_k().then_some(setting as usize),
                ..SaeConfig::new(arch, data.d(), cfg.d_sae, cfg.metadata.clone())
            };
            let train = TrainConfig {
                sparsity_coefficient: setting,
                ..cfg.train.clone()
            };
            let mut trainer = Trainer::new(sae_cfg, train, data, device)?;
            trainer.train(None, None)?;
            // Measure in the SAE's own (scaled) space; FVU is scale-invariant and L0 unaffected.
            let scaled = (&x * trainer.scale())?;
            let f = trainer.sae().encode(&scaled)?;
            let x_hat = trainer.sae().decode(&f)?;
            let counts = metrics::firing_counts(&f)?;
            let ce_loss_score = match eval {
                Some(e) => {
                    let dir = tempfile_dir()?;
                    trainer.save_checkpoint(&dir)?;
                    let sae = crate::sae::format::load(&dir, e.model.device())?;
                    let _ = std::fs::remove_dir_all(&dir);
                    Some(splice_eval(e.model, &sae, e.hook, e.sequences, 8)?.ce_loss_score)
                }
                None => None,
            };
            points.push(SweepPoint {
                architecture: arch.name().into(),
                sparsity_setting: setting,
                l0: metrics::l0(&f)?,
                fvu: metrics::fvu(&scaled, &x_hat)?,
                dead_fraction: counts.iter().filter(|&&c| c == 0.0).count() as f64
                    / counts.len() as f64,
                ce_loss_score,
            });
        }
    }
    Ok(points)
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "sae-sweep-{}-{}",
        std::process::id(),
        rand::random::<u64>()
    ));
    crate::io::create_dir(&dir)?;
    Ok(dir)
}

/// The sweep as a polars table, one row per trained SAE.
pub fn sweep_frame(points: &[SweepPoint]) -> Result<DataFrame> {
    let col = |name: &str, v: Vec<f64>| Column::new(name.into(), v);
    DataFrame::new(
        points.len(),
        vec![
            Column::new(
                "architecture".into(),
                points
                    .iter()
                    .map(|p| p.architecture.clone())
                    .collect::<Vec<_>>(),
            ),
            col(
                "sparsity_setting",
                points.iter().map(|p| p.sparsity_setting).collect(),
            ),
            col("l0", points.iter().map(|p| p.l0).collect()),
            col("fvu", points.iter().map(|p| p.fvu).collect()),
            col(
                "dead_fraction",
                points.iter().map(|p| p.dead_fraction).collect(),
            ),
            Column::new(
                "ce_loss_score".into(),
                points.iter().map(|p| p.ce_loss_score).collect::<Vec<_>>(),
            ),
        ],
    )
    .map_err(|e| Error::Input(format!("building the sweep table: {e}")))
}

/// The Pareto chart of a sweep: L0 against FVU, or against CE loss recovered.
pub fn pareto_chart(points: &[SweepPoint], metric: ParetoMetric) -> Chart {
    let points = points
        .iter()
        .filter_map(|p| {
            let value = match metric {
                ParetoMetric::Fvu => Some(p.fvu),
                ParetoMetric::CeLossScore => p.ce_loss_score,
            }?;
            Some(ParetoPoint {
                series: p.architecture.clone(),
                l0: p.l0,
                value,
            })
        })
        .collect();
    Chart::Pareto { points, metric }
}
