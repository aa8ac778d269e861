//! TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders",
//! <https://arxiv.org/abs/2406.04093>): keep each input's `k` largest pre-activations, so L0
//! is set directly and no sparsity penalty is needed. AuxK (α = 1/32) gives dead features a
//! gradient. Decoder rows are kept at unit norm (renormalised after each step; the paper
//! projects gradients instead). Saved as SAELens "topk" with `k`.

use candle_core::{DType, Device, Tensor};
use rand_chacha::ChaCha8Rng;

use super::common::{auxk_loss, sparse_decode, topk_indices, topk_relu, SaeParams};
use super::sparse::gather_pre_acts;
use super::{FeatureActs, LossContext, LossOutput, Sae, SaeConfig};
use crate::{Error, Result};

/// AuxK's weight in the loss (the paper's α).
pub const AUX_COEFFICIENT: f64 = 1.0 / 32.0;

/// A TopK SAE.
#[derive(Debug, Clone)]
pub struct TopKSae {
    cfg: SaeConfig,
    params: SaeParams,
    k: usize,
}

/// The `k` an SAE config must carry for TopK-style variants.
pub fn required_k(cfg: &SaeConfig) -> Result<usize> {
    match cfg.k {
        Some(k) if k > 0 && k <= cfg.d_sae => Ok(k),
        _ => Err(Error::Input(format!(
            "{:?} SAEs need k in 1..={} (got {:?})",
            cfg.architecture, cfg.d_sae, cfg.k
        ))),
    }
}

/// The shared TopK-style loss: reconstruction, plus AuxK on the dead features.
/// `sae_out` is `f`'s reconstruction, computed densely or sparsely by the caller; `pre`
/// chooses AuxK's features and `values_at` gives their differentiable pre-activations.
#[allow(clippy::too_many_arguments)]
pub(crate) fn topk_style_loss(
    params: &SaeParams,
    x: &Tensor,
    pre: &Tensor,
    values_at: &dyn Fn(&Tensor) -> Result<Tensor>,
    f: FeatureActs,
    sae_out: Tensor,
    d_in: usize,
    ctx: &LossContext,
) -> Result<LossOutput> {
    let mse = (&sae_out - x)?.sqr()?.sum(1)?.mean(0)?;
    let aux = (auxk_loss(
        pre,
        ctx.dead.as_ref(),
        &(x - &sae_out)?,
        params.w_dec.as_tensor(),
        d_in / 2,
        values_at,
    )? * AUX_COEFFICIENT)?;
    let total = (&mse + &aux)?;
    Ok(LossOutput {
        total,
        terms: vec![("mse", mse), ("auxk", aux)],
        feature_acts: f,
        sae_out,
    })
}

impl TopKSae {
    pub fn new(
        cfg: SaeConfig,
        rng: &mut ChaCha8Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let k = required_k(&cfg)?;
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, 1.0, rng, dtype, device)?;
        Ok(Self { cfg, params, k })
    }

    pub fn from_tensors(
        cfg: SaeConfig,
        get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        let k = required_k(&cfg)?;
        let params = SaeParams::load(get, cfg.d_in, cfg.d_sae, "b_enc")?;
        Ok(Self { cfg, params, k })
    }
}

impl Sae for TopKSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }
    fn params(&self) -> &SaeParams {
        &self.params
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        topk_relu(&self.params.pre_acts(x)?, self.k)
    }
    /// Sparse after the dense matmul that chooses the top `k`: the selected pre-activations
    /// are recomputed, and differentiated, only where selected ([`gather_pre_acts`]), and only
    /// the `k` selected decoder rows per input decode (see BENCHMARKS.md).
    fn loss(&self, x: &Tensor, ctx: &LossContext) -> Result<LossOutput> {
        let p = &self.params;
        // Every pre-activation, detached from the graph: it only chooses.
        let pre = p.pre_acts(x)?.detach();
        // The centred input, which carries b_dec's gradient into the selected values.
        let xc = x.broadcast_sub(p.b_dec.as_tensor())?;
        let values_at = |indices: &Tensor| {
            gather_pre_acts(&xc, p.w_enc.as_tensor(), p.b_enc.as_tensor(), indices)
        };
        let indices = topk_indices(&pre, self.k)?;
        let values = values_at(&indices)?.relu()?; // (b, k): select, then ReLU, as SAELens
        let sae_out = sparse_decode(
            &values,
            &indices,
            self.params.w_dec.as_tensor(),
            self.params.b_dec.as_tensor(),
        )?;
        let f = FeatureActs::Sparse {
            values: values.detach(),
            indices,
            d_sae: self.cfg.d_sae,
        };
        topk_style_loss(
            &self.params,
            x,
            &pre,
            &values_at,
            f,
            sae_out,
            self.cfg.d_in,
            ctx,
        )
    }
    fn after_step(&self) -> Result<()> {
        self.params.normalize_decoder()
    }
}
