//! A fair comparison of SAE variants: every architecture at the same dictionary size, over
//! several sparsity levels, on the same activations with the same seed and step budget,
//! measured the same way (L0 and FVU on the same held-out rows, the source's last; CE loss
//! recovered when a model is given).

use candle_core::Device;
use serde::{Deserialize, Serialize};

use crate::eval::{metrics, splice_eval};
use crate::hooks::HookPoint;
use crate::model::Model;
use crate::plot::{Chart, ParetoMetric, ParetoPoint, Table, Values};
use crate::sae::{Architecture, Sae, SaeConfig, SaeMetadata, Sparsity};
use crate::train::{ActivationSource, RowRange, TrainConfig, Trainer};
use crate::{Error, Result};

/// What to sweep.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// The variants to train.
    pub architectures: Vec<Architecture>,
    /// Features of every SAE.
    pub d_sae: usize,
    /// `k` values for TopK, BatchTopK and Matryoshka (default: half, once and twice the
    /// default `k`).
    pub ks: Option<Vec<usize>>,
    /// Penalty coefficients for ReLU and Gated (L1) runs (default: half, once and twice each
    /// architecture's default λ).
    pub l1_coefficients: Option<Vec<f64>>,
    /// Penalty coefficients for JumpReLU (L0) runs (default: as for L1).
    pub l0_coefficients: Option<Vec<f64>>,
    /// Learning rate for every run (default: each architecture's own).
    pub lr: Option<f64>,
    /// Shared by every run (steps, batch, seed); the learning rate, its decay and `b_dec`'s
    /// start are each architecture's own ([`Architecture::defaults`]).
    pub train: TrainConfig,
    /// Rows used to measure L0 and FVU: the source's last, held out of training (at most a
    /// tenth of it; see [`held_out_rows`]).
    pub eval_rows: usize,
    /// Provenance written into every SAE's config.
    pub metadata: SaeMetadata,
}

/// [`SweepConfig::eval_rows`]'s default: enough rows for FVU and the dead fraction to settle.
pub const DEFAULT_EVAL_ROWS: usize = 16_384;

impl Default for SweepConfig {
    fn default() -> Self {
        Self {
            architectures: Architecture::ALL.to_vec(),
            d_sae: 4096,
            ks: None,
            l1_coefficients: None,
            l0_coefficients: None,
            lr: None,
            train: TrainConfig::default(),
            eval_rows: DEFAULT_EVAL_ROWS,
            metadata: SaeMetadata::default(),
        }
    }
}

impl SweepConfig {
    /// The sparsity settings swept for `arch`: its `k` values, or its penalty coefficients.
    pub fn settings(&self, arch: Architecture) -> Vec<f64> {
        let defaults = arch.defaults(self.d_sae);
        let around = |v: f64| vec![v / 2.0, v, v * 2.0];
        match arch.sparsity() {
            Sparsity::K => match &self.ks {
                Some(ks) => ks.iter().map(|&k| k as f64).collect(),
                None => {
                    let mut ks: Vec<f64> = around(defaults.k.unwrap_or(32) as f64)
                        .into_iter()
                        .map(|k| k.round().clamp(1.0, self.d_sae as f64))
                        .collect();
                    ks.dedup();
                    ks
                }
            },
            Sparsity::L1 => self
                .l1_coefficients
                .clone()
                .unwrap_or_else(|| around(defaults.sparsity_coefficient)),
            Sparsity::L0 => self
                .l0_coefficients
                .clone()
                .unwrap_or_else(|| around(defaults.sparsity_coefficient)),
        }
    }

    /// Checks every setting of every run before the first one starts.
    pub fn validate(&self) -> Result<()> {
        if self.architectures.is_empty() {
            return Err(Error::Input("the sweep has no architectures".into()));
        }
        if let Some(lr) = self.lr {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(Error::Input(format!(
                    "the learning rate must be a finite number above 0 (got {lr})"
                )));
            }
        }
        for &arch in &self.architectures {
            let settings = self.settings(arch);
            if settings.is_empty() {
                return Err(Error::Input(format!(
                    "the sweep has no sparsity settings for {}",
                    arch.name()
                )));
            }
            for s in settings {
                if arch.uses_k() {
                    crate::sae::validate_shape(arch, self.d_sae, Some(s as usize))?;
                } else {
                    crate::sae::validate_shape(arch, self.d_sae, None)?;
                    if !(s.is_finite() && s > 0.0) {
                        return Err(Error::Input(format!(
                            "sparsity coefficients must be finite numbers above 0 (got {s} \
                             for {})",
                            arch.name()
                        )));
                    }
                }
            }
        }
        self.train.validate(false)
    }
}

/// One trained SAE of the sweep.
/// One trained SAE of a sweep and how it measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPoint {
    /// The variant's CLI name.
    pub architecture: String,
    /// `k`, or the penalty coefficient.
    pub sparsity_setting: f64,
    /// Mean active features per input.
    pub l0: f64,
    /// Fraction of variance unexplained.
    pub fvu: f64,
    /// Fraction of features that fired on none of the measured rows.
    pub dead_fraction: f64,
    /// CE loss recovered when spliced into the model, when a [`SweepEval`] was given.
    pub ce_loss_score: Option<f64>,
    /// Whether L0, FVU and the dead fraction were measured on rows no run trained on (`false`
    /// only for a source too small to spare any; see [`held_out_rows`]).
    #[serde(default)]
    pub held_out: bool,
    /// What is wrong with this SAE, each with what to change (empty when it is healthy).
    #[serde(default)]
    pub warnings: Vec<String>,
}

/// The model side of an optional CE evaluation: the model, the hook, held-out sequences.
pub struct SweepEval<'a> {
    /// The model the SAEs are spliced into.
    pub model: &'a Model,
    /// Where they are spliced.
    pub hook: HookPoint,
    /// Token ids of the documents to evaluate on, none of them trained on.
    pub sequences: &'a [Vec<u32>],
    /// The tokenizer's special token ids, left alone by the splice.
    pub special: &'a [u32],
}

/// How many of a source's `n` rows a sweep holds out to measure on: `eval_rows`, or a tenth
/// of the source when that is fewer, and none when that leaves fewer than 2 (the sweep then
/// measures on every row, as trained).
pub fn held_out_rows(n: usize, eval_rows: usize) -> usize {
    let held = eval_rows.min(n / 10);
    if held < 2 {
        0
    } else {
        held
    }
}

/// Trains every (architecture, sparsity) pair and measures it. The source's last rows (a
/// store's last documents) are held out of every run and measure all of them.
pub fn run_sweep(
    data: &dyn ActivationSource,
    cfg: &SweepConfig,
    eval: Option<&SweepEval>,
    device: &Device,
) -> Result<Vec<SweepPoint>> {
    cfg.validate()?;
    let n = data.len();
    let held = held_out_rows(n, cfg.eval_rows);
    // With no rows to spare, the SAEs are measured on the rows they trained on.
    let measured = RowRange::new(data, if held > 0 { n - held..n } else { 0..n })?;
    let rows: Vec<u32> = (0..measured.len() as u32).collect();
    let x = measured.gather(&rows, device)?;
    let training = RowRange::new(data, 0..n - held)?;
    let data: &dyn ActivationSource = &training;
    let mut points = Vec::new();
    for &arch in &cfg.architectures {
        let defaults = arch.defaults(cfg.d_sae);
        let settings = cfg.settings(arch);
        for setting in settings {
            let sae_cfg = SaeConfig {
                k: arch.uses_k().then_some(setting as usize),
                ..SaeConfig::new(arch, data.d(), cfg.d_sae, cfg.metadata.clone())
            };
            let mut train = cfg.train.clone();
            train.take_defaults(&defaults);
            train.sparsity_coefficient = setting;
            if let Some(lr) = cfg.lr {
                train.adam.lr = lr;
            }
            let mut trainer = Trainer::new(sae_cfg, train, data, device)?;
            trainer.train(None, None)?;
            // Measure in the SAE's own (scaled) space; FVU is scale-invariant and L0 unaffected.
            let scaled = (&x * trainer.scale())?;
            let f = trainer.sae().encode(&scaled)?;
            let x_hat = trainer.sae().decode(&f)?;
            let counts = metrics::firing_counts(&f)?;
            let splice = match eval {
                Some(e) => {
                    let dir = tempfile_dir()?;
                    trainer.save_checkpoint(&dir)?;
                    let sae = crate::sae::format::load(&dir, e.model.device())?;
                    let _ = std::fs::remove_dir_all(&dir);
                    Some(splice_eval(
                        e.model,
                        &sae,
                        e.hook,
                        e.sequences,
                        e.special,
                        8,
                    )?)
                }
                None => None,
            };
            let (l0, fvu) = (metrics::l0(&f)?, metrics::fvu(&scaled, &x_hat)?);
            let dead_fraction =
                counts.iter().filter(|&&c| c == 0.0).count() as f64 / counts.len() as f64;
            let mut warnings = crate::train::diagnose(&crate::train::RunSummary {
                architecture: arch,
                d_sae: cfg.d_sae,
                l0,
                fvu,
                dead_fraction,
                sparsity_coefficient: setting,
                lr: trainer.config().adam.lr,
            });
            warnings.extend(splice.as_ref().and_then(|s| s.warning()));
            points.push(SweepPoint {
                architecture: arch.name().into(),
                sparsity_setting: setting,
                l0,
                fvu,
                dead_fraction,
                ce_loss_score: splice.map(|s| s.ce_loss_score),
                held_out: held > 0,
                warnings,
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

/// The sweep as a table, one row per trained SAE.
pub fn sweep_table(points: &[SweepPoint]) -> Table {
    let float = |get: fn(&SweepPoint) -> f64| Values::Float(points.iter().map(get).collect());
    Table::default()
        .with(
            "architecture",
            Values::Text(points.iter().map(|p| p.architecture.clone()).collect()),
        )
        .with("sparsity_setting", float(|p| p.sparsity_setting))
        .with("l0", float(|p| p.l0))
        .with("fvu", float(|p| p.fvu))
        .with("dead_fraction", float(|p| p.dead_fraction))
        .with(
            "ce_loss_score",
            Values::MaybeFloat(points.iter().map(|p| p.ce_loss_score).collect()),
        )
}

/// The sweep as a polars table, one row per trained SAE.
#[cfg(feature = "polars")]
pub fn sweep_frame(points: &[SweepPoint]) -> Result<polars::prelude::DataFrame> {
    sweep_table(points).frame()
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
