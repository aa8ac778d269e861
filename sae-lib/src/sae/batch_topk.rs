//! BatchTopK SAE (Bussmann, Leask & Nanda 2024, <https://arxiv.org/abs/2412.06410>): keep the
//! `k·B` largest activations across the whole batch, so L0 averages `k` but varies per input.
//! At inference a single threshold θ — a running average of the smallest activation kept in
//! training — replaces the batch, which makes the SAE a JumpReLU; it is saved as SAELens
//! "jumprelu" with `threshold` = θ for every feature, as SAELens itself saves BatchTopK.
//!
//! Decoder row norms are left free, as for TopK (`topk.rs`): renormalising them after each step
//! cost recovery of SAELens' synthetic ground truth (MCC 0.354 against 0.430, BENCHMARKS.md).
//! They start at norm 0.3 (TopK: 0.5; SAELens: 0.1). From unit norm, every feature stayed alive
//! on SmolLM2 and the dictionary overfit its 49,390 training rows: held-out FVU 0.3776 at L0
//! 39.5, where SAELens reached 0.3723 at L0 32.7. From 0.3 it reached 0.3493 at L0 35.5; from
//! 0.1, 0.3491 at L0 34.4 but 1.35× slower, as AuxK revived the features that died early; from
//! 0.5, 0.3570 at L0 36.6 (BENCHMARKS.md).

use candle_core::{DType, Tensor, Var};

use super::common::{topk_indices, SaeParams};
use super::topk::{auxk_term, required_k, topk_defaults};
use super::{
    Encoding, FeatureActs, Init, LossContext, Sae, SaeConfig, Sparsity, Variant, VariantDefaults,
};
use crate::Result;

/// Norm of the decoder rows at initialisation (see the header).
const INIT_DECODER_NORM: f64 = 0.3;

/// Weight of each new batch in θ's running average.
const THRESHOLD_MOMENTUM: f64 = 0.01;

/// A BatchTopK SAE.
#[derive(Debug, Clone)]
pub struct BatchTopKSae {
    pub(crate) cfg: SaeConfig,
    pub(crate) params: SaeParams,
    k: usize,
    /// θ per feature (all equal); updated by training, not by the optimiser.
    threshold: Var,
}

impl BatchTopKSae {
    /// The batch's `k·B` largest activations, sparse, and the pre-activations; updates θ.
    pub(crate) fn batch_topk(&self, x: &Tensor) -> Result<Encoding> {
        // Every pre-activation, detached: it only chooses.
        let pre = self.params.pre_acts(x)?.detach();
        let b = pre.dim(0)?;
        let sel = batch_select(&pre, self.k * b, CANDIDATES_PER_K * self.k)?;
        let values = (self.params.pre_acts_at(x, &pre, &sel.indices)?.relu()? * sel.mask)?;
        // θ follows the smallest kept activation (ignoring the degenerate all-zero case).
        if sel.theta > 0.0 {
            let theta = self.threshold.as_tensor();
            let updated = ((theta * (1.0 - THRESHOLD_MOMENTUM))?
                + f64::from(sel.theta) * THRESHOLD_MOMENTUM)?;
            self.threshold.set(&updated)?;
        }
        Ok(Encoding {
            acts: FeatureActs::Sparse {
                values,
                indices: sel.indices,
                d_sae: self.cfg.d_sae,
                flat_at_zero: false,
            },
            hidden_pre: Some(pre),
        })
    }

    /// AuxK over the batch's pre-activations.
    pub(crate) fn auxk(
        &self,
        x: &Tensor,
        enc: &Encoding,
        sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<(&'static str, Tensor)> {
        auxk_term(&self.params, x, enc.pre()?, sae_out, ctx)
    }
}

/// Candidates each input offers to the batch selection, per unit of `k`: an input rarely holds
/// more than twice its share of the batch's top activations, and when one does the selection
/// widens and repeats (see [`batch_select`]).
const CANDIDATES_PER_K: usize = 2;

/// A batch-level top-k selection in per-input form.
pub(crate) struct BatchSelection {
    /// `(b, width)`: each input's best features first; `width` is the most any input keeps.
    pub indices: Tensor,
    /// `(b, width)`: 1 where the feature is kept, 0 for the padding after an input's last.
    pub mask: Tensor,
    /// The smallest kept value (0 when fewer than `total` values were positive).
    pub theta: f32,
}

/// The `total` largest positive values of `pre` `(b, n)` across the whole batch (ties at the
/// smallest included), as per-input sparse indices. Each input offers its `cap` largest as
/// candidates. That is exact unless an input has every candidate kept, when it may hold more
/// beyond them; the selection then repeats with twice the candidates.
pub(crate) fn batch_select(pre: &Tensor, total: usize, cap: usize) -> Result<BatchSelection> {
    let (b, n) = pre.dims2()?;
    let mut cap = cap.clamp(1, n.max(1));
    loop {
        let idx = topk_indices(pre, cap)?;
        let vals = pre
            .gather(&idx, 1)?
            .to_dtype(DType::F32)?
            .to_vec2::<f32>()?;
        let mut positive: Vec<f32> = vals
            .iter()
            .flatten()
            .copied()
            .filter(|&v| v > 0.0)
            .collect();
        // θ: the `total`-th largest positive candidate, or the smallest when there are fewer.
        let theta = if total == 0 || positive.is_empty() {
            f32::INFINITY
        } else if positive.len() > total {
            *positive
                .select_nth_unstable_by(total - 1, |a, b| b.total_cmp(a))
                .1
        } else {
            positive.iter().copied().fold(f32::INFINITY, f32::min)
        };
        let kept = |v: f32| v > 0.0 && v >= theta;
        // Written so that a NaN candidate counts as possibly hiding kept values behind it.
        let below = |v: f32| v <= 0.0 || v < theta;
        if cap < n && vals.iter().any(|row| !row.iter().any(|&v| below(v))) {
            cap = (2 * cap).min(n);
            continue;
        }
        let idx = idx.to_vec2::<u32>()?;
        let mut rows: Vec<Vec<(f32, u32)>> = vals
            .iter()
            .zip(&idx)
            .map(|(v, i)| v.iter().copied().zip(i.iter().copied()).collect())
            .collect();
        for row in &mut rows {
            row.sort_by(|a, b| kept(b.0).cmp(&kept(a.0)).then(b.0.total_cmp(&a.0)));
        }
        let counts: Vec<usize> = rows
            .iter()
            .map(|r| r.iter().filter(|p| kept(p.0)).count())
            .collect();
        let width = counts.iter().copied().max().unwrap_or(0).max(1);
        let mut indices = Vec::with_capacity(b * width);
        let mut mask = Vec::with_capacity(b * width);
        for (row, &c) in rows.iter().zip(&counts) {
            indices.extend(row[..width].iter().map(|p| p.1));
            mask.extend((0..width).map(|j| f32::from(u8::from(j < c))));
        }
        let device = pre.device();
        return Ok(BatchSelection {
            indices: Tensor::from_vec(indices, (b, width), device)?,
            mask: Tensor::from_vec(mask, (b, width), device)?.to_dtype(pre.dtype())?,
            // Fewer positive values than `total` is the degenerate case θ must not learn from.
            theta: if positive.len() >= total && theta.is_finite() {
                theta
            } else {
                0.0
            },
        });
    }
}

impl Variant for BatchTopKSae {
    const NAME: &'static str = "batchtopk";
    const ALIASES: &'static [&'static str] = &["batch_topk"];
    const SAELENS: &'static str = "jumprelu";
    const LOADS: bool = false;
    const SPARSITY: Sparsity = Sparsity::K;

    fn defaults(d_sae: usize) -> VariantDefaults {
        topk_defaults(d_sae)
    }

    fn init(cfg: SaeConfig, init: &mut Init) -> Result<Self> {
        let k = required_k(&cfg)?;
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, INIT_DECODER_NORM, init)?;
        let threshold = Var::zeros(cfg.d_sae, init.dtype, init.device)?;
        Ok(Self {
            cfg,
            params,
            k,
            threshold,
        })
    }
}

impl Sae for BatchTopKSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }
    fn config_mut(&mut self) -> &mut SaeConfig {
        &mut self.cfg
    }
    fn params(&self) -> &SaeParams {
        &self.params
    }
    fn extra_vars(&self) -> Vec<(&'static str, Var)> {
        vec![("threshold", self.threshold.clone())]
    }
    /// Inference: the JumpReLU with the learned θ.
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        super::jumprelu::jumprelu(&self.params.pre_acts(x)?, self.threshold.as_tensor())
    }
    fn encode_for_training(&self, x: &Tensor, _ctx: &LossContext) -> Result<Encoding> {
        self.batch_topk(x)
    }
    fn aux_losses(
        &self,
        x: &Tensor,
        enc: &Encoding,
        sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(vec![self.auxk(x, enc, sae_out, ctx)?])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::common::normal_vec;
    use candle_core::Device;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    /// The selection as a dense mask: every value at least the `total`-th largest of the
    /// whole (rectified) batch, as the paper writes it.
    fn reference(pre: &[f32], total: usize) -> Vec<f32> {
        let mut all: Vec<f32> = pre.iter().map(|v| v.max(0.0)).collect();
        all.sort_by(|a, b| b.total_cmp(a));
        let kth = all[total - 1];
        pre.iter()
            .map(|&v| if v > 0.0 && v >= kth { v } else { 0.0 })
            .collect()
    }

    #[test]
    fn batch_select_keeps_the_batch_top_values_whatever_the_candidates() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (b, n) = (16, 40);
        let mut pre = normal_vec(b * n, &mut rng);
        // One input with most of the batch's large values, so a small cap must widen.
        for v in &mut pre[..n] {
            *v = v.abs() + 3.0;
        }
        // A tie at the boundary and a NaN, which is never kept.
        pre[n + 1] = pre[2 * n + 1];
        pre[3 * n] = f32::NAN;
        let t = Tensor::from_vec(pre.clone(), (b, n), &Device::Cpu).unwrap();
        for (total, cap) in [(64, 1), (64, 8), (64, 40), (5, 2), (600, 4)] {
            let sel = batch_select(&t, total, cap).unwrap();
            let mut got = vec![0f32; b * n];
            let idx = sel.indices.to_vec2::<u32>().unwrap();
            for (r, (idx, mask)) in idx
                .iter()
                .zip(sel.mask.to_vec2::<f32>().unwrap())
                .enumerate()
            {
                for (&j, m) in idx.iter().zip(mask) {
                    if m == 1.0 {
                        got[r * n + j as usize] = pre[r * n + j as usize];
                    }
                }
            }
            let want = reference(&pre, total);
            assert_eq!(got, want, "total {total}, cap {cap}");
            let kept = want.iter().filter(|&&v| v > 0.0).count();
            assert!(kept >= total.min(pre.iter().filter(|&&v| v > 0.0).count()));
        }
        // Nothing positive: nothing kept, θ not learnt from.
        let neg = Tensor::full(-1f32, (4, 6), &Device::Cpu).unwrap();
        let sel = batch_select(&neg, 8, 2).unwrap();
        assert_eq!(sel.mask.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
        assert_eq!(sel.theta, 0.0);
    }
}
