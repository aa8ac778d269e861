//! Is a trained SAE any use? A run can finish without error and still hand back nothing: every
//! feature dead, no sparsity, or no reconstruction. [`diagnose`] names each of these with what
//! to change; `train`, `walkthrough`, `sweep` and the notebooks show its messages, and
//! `metrics.json` and the report carry them.

use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

use crate::sae::{Architecture, Sparsity};
use crate::Result;

/// The numbers a diagnosis reads, measured on the SAE as trained.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Which variant.
    pub architecture: Architecture,
    /// Number of features.
    pub d_sae: usize,
    /// Mean active features per input.
    pub l0: f64,
    /// Fraction of variance unexplained.
    pub fvu: f64,
    /// Fraction of features that did not fire.
    pub dead_fraction: f64,
    /// The sparsity coefficient λ (penalty variants).
    pub sparsity_coefficient: f64,
    /// The learning rate it trained at.
    pub lr: f64,
}

/// At or above this dead fraction, "nearly every feature is dead".
pub const NEARLY_ALL_DEAD: f64 = 0.9;
/// At or above this FVU the SAE has learnt next to nothing.
pub const NO_RECONSTRUCTION_FVU: f64 = 0.99;
/// At or above this share of `d_sae` active per input, the SAE is not sparse.
pub const NOT_SPARSE: f64 = 0.5;

/// One message per problem with the run, each saying what to change; empty for a healthy run.
pub fn diagnose(s: &RunSummary) -> Vec<String> {
    let mut out = Vec::new();
    let penalty = s.architecture.sparsity() != Sparsity::K;
    if !(s.fvu.is_finite() && s.l0.is_finite()) {
        out.push(format!(
            "the SAE's outputs are not finite (FVU {}, L0 {}): lower the learning rate (now {:e})",
            s.fvu, s.l0, s.lr
        ));
        return out;
    }
    if s.l0 < 0.01 || s.dead_fraction >= 1.0 {
        let fix = if penalty {
            format!(
                "lower the sparsity coefficient (--l1, now {}), or raise the learning rate (now \
                 {:e}) or the steps",
                s.sparsity_coefficient, s.lr
            )
        } else {
            format!(
                "raise the learning rate (now {:e}) or the steps, and check the activations",
                s.lr
            )
        };
        out.push(format!(
            "every feature is dead (L0 {:.2}, {:.1}% dead): the SAE outputs only its bias. {fix}",
            s.l0,
            100.0 * s.dead_fraction
        ));
        return out;
    }
    if s.dead_fraction >= NEARLY_ALL_DEAD {
        let fix = if penalty {
            "lower the sparsity coefficient (--l1) or resample dead features \
             (--resample-dead-every)"
        } else {
            "lower k or the dictionary size, or train longer"
        };
        out.push(format!(
            "{:.1}% of the {} features are dead: {fix}",
            100.0 * s.dead_fraction,
            s.d_sae
        ));
    }
    if s.l0 >= NOT_SPARSE * s.d_sae as f64 {
        let fix = if penalty {
            // JumpReLU's threshold moves a bounded step (lr × its scale): short runs stay dense.
            format!(
                "raise the sparsity coefficient (--l1, now {}) or train longer (--steps)",
                s.sparsity_coefficient
            )
        } else {
            "lower k".into()
        };
        out.push(format!(
            "no sparsity: {:.1} of {} features are active per input: {fix}",
            s.l0, s.d_sae
        ));
    }
    if s.fvu >= NO_RECONSTRUCTION_FVU {
        out.push(format!(
            "FVU {:.3}: the SAE explains almost none of the variance; train longer (--steps) or \
             raise the learning rate (now {:e})",
            s.fvu, s.lr
        ));
    }
    out
}

/// How far from the mean, in median distances, a row counts as an outlier.
pub const OUTLIER_DISTANCE: f64 = 10.0;
/// At or above this share of the variance in the outlier rows, they dominate the loss.
pub const OUTLIER_VARIANCE: f64 = 0.5;
/// Rows a sample needs before its median says anything.
const OUTLIER_MIN_SAMPLE: usize = 200;

/// One message when a few rows of `sample` `(rows, d)` hold most of its variance: those
/// farther from the mean than [`OUTLIER_DISTANCE`] times the median row hold at least half of
/// `Σ‖x − x̄‖²`. Such rows (a document's first tokens, where many models park attention, with
/// norms a hundred times the rest) dominate the reconstruction loss and FVU, so a low FVU can
/// hide an SAE that is poor everywhere else. `None` for a sample of fewer than 200 rows.
pub fn diagnose_outliers(sample: &Tensor) -> Result<Option<String>> {
    let (n, _) = sample.dims2()?;
    if n < OUTLIER_MIN_SAMPLE {
        return Ok(None);
    }
    let x = sample.to_dtype(DType::F64)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(0)?)?;
    let sq: Vec<f64> = centred.sqr()?.sum(1)?.to_vec1()?;
    let mut sorted = sq.clone();
    sorted.sort_unstable_by(|a, b| a.total_cmp(b));
    let (median, max) = (sorted[n / 2], sorted[n - 1]);
    let far = median * OUTLIER_DISTANCE * OUTLIER_DISTANCE;
    let outliers: Vec<f64> = sq.into_iter().filter(|&s| s > far).collect();
    let share = outliers.iter().sum::<f64>() / sorted.iter().sum::<f64>();
    // NaN when every row is the mean: no outliers.
    if share.is_nan() || share < OUTLIER_VARIANCE {
        return Ok(None);
    }
    Ok(Some(format!(
        "{:.0}% of the activations' variance is in {} of {n} sampled rows ({:.1}%), each over \
         {OUTLIER_DISTANCE}x the median row's distance from the mean (up to {:.0}x): outlier \
         tokens, such as each document's first where many models park attention, dominate the \
         reconstruction loss and FVU, so a low FVU can hide an SAE that is poor on every other \
         token. Judge it by CE loss recovered (sae eval), and collect without them: \
         --drop-outliers leaves out tokens over 10x the median norm",
        100.0 * share,
        outliers.len(),
        100.0 * outliers.len() as f64 / n as f64,
        (max / median).sqrt()
    )))
}

/// One message when the SAE explains almost none of the held-out variance although it
/// reconstructs its training rows: it learnt those rows (read `passes` times each) rather than
/// features that carry over. `None` when it generalises, or fails on both (which [`diagnose`]
/// names).
pub fn diagnose_held_out(training_fvu: f64, held_out_fvu: f64, passes: f64) -> Option<String> {
    let fails = !held_out_fvu.is_finite() || held_out_fvu >= NO_RECONSTRUCTION_FVU;
    (fails && training_fvu < NO_RECONSTRUCTION_FVU).then(|| {
        format!(
            "held-out FVU {held_out_fvu:.3} against {training_fvu:.3} on the training rows: the \
             SAE memorised its rows (each read about {passes:.0} times) instead of learning \
             features that carry over; collect more rows (more documents, or --mode all for \
             every token), or train fewer steps or fewer features"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(l0: f64, fvu: f64, dead: f64) -> RunSummary {
        RunSummary {
            architecture: Architecture::Relu,
            d_sae: 384,
            l0,
            fvu,
            dead_fraction: dead,
            sparsity_coefficient: 5.0,
            lr: 5e-5,
        }
    }

    #[test]
    fn healthy_runs_pass_and_each_degenerate_case_is_named() {
        assert!(diagnose(&summary(20.0, 0.3, 0.05)).is_empty());
        let dead = diagnose(&summary(0.0, 1.0001, 1.0));
        assert_eq!(dead.len(), 1, "{dead:?}");
        assert!(dead[0].contains("every feature is dead") && dead[0].contains("--l1"));
        assert!(diagnose(&summary(2.0, 0.5, 0.95))[0].contains("95.0% of the 384"));
        assert!(diagnose(&summary(300.0, 0.01, 0.0))[0].contains("no sparsity"));
        assert!(diagnose(&summary(5.0, 0.995, 0.0))[0].contains("FVU 0.995"));
        assert!(diagnose(&summary(f64::NAN, f64::NAN, 0.0))[0].contains("not finite"));
    }

    #[test]
    fn memorised_rows_are_named_only_when_held_out_fails_alone() {
        let memorised = diagnose_held_out(0.02, 2.3, 7700.0).unwrap();
        assert!(memorised.contains("held-out FVU 2.300") && memorised.contains("7700 times"));
        assert!(diagnose_held_out(0.02, f64::NAN, 10.0).is_some());
        assert_eq!(diagnose_held_out(0.2, 0.35, 10.0), None);
        assert_eq!(diagnose_held_out(1.0, 1.0, 10.0), None, "diagnose names it");
    }

    /// Gaussian rows hold no outliers; ten rows of 1,000 scaled up 30 times (as a model's
    /// first tokens are) hold about 90% of the variance and are named; fewer than 200 rows say
    /// nothing.
    #[test]
    fn a_few_rows_holding_most_of_the_variance_are_named() {
        let dev = candle_core::Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (1000, 64), &dev).unwrap();
        assert_eq!(diagnose_outliers(&x).unwrap(), None);
        let scale: Vec<f32> = (0..1000)
            .map(|i| if i % 100 == 7 { 30.0 } else { 1.0 })
            .collect();
        let scale = Tensor::from_vec(scale, (1000, 1), &dev).unwrap();
        let spiked = x.broadcast_mul(&scale).unwrap();
        let message = diagnose_outliers(&spiked)
            .unwrap()
            .expect("ten outlier rows");
        // 10 · 900 against 10 · 900 + 990 in expectation: 90% of the variance.
        let share: f64 = message.split('%').next().unwrap().parse().unwrap();
        assert!((85.0..=95.0).contains(&share), "{message}");
        assert!(
            message.contains("variance is in 10 of 1000 sampled rows (1.0%)"),
            "{message}"
        );
        assert!(message.contains("--drop-outliers"), "{message}");
        assert_eq!(
            diagnose_outliers(&spiked.narrow(0, 0, 199).unwrap()).unwrap(),
            None
        );
    }
}
