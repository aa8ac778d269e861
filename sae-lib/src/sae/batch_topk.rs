//! BatchTopK SAE (Bussmann, Leask & Nanda 2024, <https://arxiv.org/abs/2412.06410>): keep the
//! `k·B` largest activations across the whole batch, so L0 averages `k` but varies per input.
//! At inference a single threshold θ — a running average of the smallest activation kept in
//! training — replaces the batch, which makes the SAE a JumpReLU; it is saved as SAELens
//! "jumprelu" with `threshold` = θ for every feature, as SAELens itself saves BatchTopK.

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::common::{kth_largest, SaeParams};
use super::topk::{required_k, topk_style_loss};
use super::{LossContext, LossOutput, Sae, SaeConfig};
use crate::Result;

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
    pub fn new(
        cfg: SaeConfig,
        rng: &mut ChaCha8Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let k = required_k(&cfg)?;
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, 1.0, rng, dtype, device)?;
        let threshold = Var::zeros(cfg.d_sae, dtype, device)?;
        Ok(Self {
            cfg,
            params,
            k,
            threshold,
        })
    }

    /// Batch-level top-k activations `(b, d_sae)` and the pre-activations; updates θ.
    pub(crate) fn batch_topk(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let pre = self.params.pre_acts(x)?;
        let acts = pre.relu()?;
        let (b, n) = acts.dims2()?;
        let kth = kth_largest(&acts.reshape((1, b * n))?, self.k * b)?.reshape(())?;
        let mask = acts.broadcast_ge(&kth)?.to_dtype(acts.dtype())?;
        let f = (acts * mask)?;
        // θ follows the smallest kept activation (ignoring the degenerate all-zero case).
        let smallest = kth.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        if smallest > 0.0 {
            let theta = self.threshold.as_tensor();
            let updated = ((theta * (1.0 - THRESHOLD_MOMENTUM))? + smallest * THRESHOLD_MOMENTUM)?;
            self.threshold.set(&updated)?;
        }
        Ok((f, pre))
    }
}

impl Sae for BatchTopKSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }
    fn params(&self) -> &SaeParams {
        &self.params
    }
    fn vars(&self) -> Vec<(&'static str, Var)> {
        let mut v = self.params.vars();
        v.push(("threshold", self.threshold.clone()));
        v
    }
    /// Inference: the JumpReLU with the learned θ.
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        super::jumprelu::jumprelu(&self.params.pre_acts(x)?, self.threshold.as_tensor())
    }
    fn loss(&self, x: &Tensor, ctx: &LossContext) -> Result<LossOutput> {
        let (f, pre) = self.batch_topk(x)?;
        let sae_out = self.decode(&f)?;
        let values_at = |indices: &Tensor| Ok(pre.gather(indices, 1)?);
        topk_style_loss(
            &self.params,
            x,
            &pre,
            &values_at,
            super::FeatureActs::Dense(f),
            sae_out,
            self.cfg.d_in,
            ctx,
        )
    }
    fn after_step(&self) -> Result<()> {
        self.params.normalize_decoder()
    }
}
