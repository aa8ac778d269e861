//! BatchTopK SAE (Bussmann, Leask & Nanda 2024, <https://arxiv.org/abs/2412.06410>): keep the
//! `k·B` largest activations across the whole batch, so L0 averages `k` but varies per input.
//! At inference a single threshold θ — a running average of the smallest activation kept in
//! training — replaces the batch, which makes the SAE a JumpReLU; it is saved as SAELens
//! "jumprelu" with `threshold` = θ for every feature, as SAELens itself saves BatchTopK.

use candle_core::{DType, Tensor, Var};

use super::common::{kth_largest, SaeParams};
use super::topk::{auxk_term, required_k, topk_defaults};
use super::{Encoding, Init, LossContext, Sae, SaeConfig, Sparsity, Variant, VariantDefaults};
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

    /// AuxK over the batch's pre-activations.
    pub(crate) fn auxk(
        &self,
        x: &Tensor,
        enc: &Encoding,
        sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<(&'static str, Tensor)> {
        let pre = enc.pre()?;
        let values_at = |indices: &Tensor| Ok(pre.gather(indices, 1)?);
        auxk_term(&self.params, x, pre, sae_out, ctx, &values_at)
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
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, 1.0, init)?;
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
        let (f, pre) = self.batch_topk(x)?;
        Ok(Encoding::dense(f, pre))
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
    fn after_step(&self) -> Result<()> {
        self.params.normalize_decoder()
    }
}
