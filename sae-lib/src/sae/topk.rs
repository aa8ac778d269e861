//! TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders",
//! <https://arxiv.org/abs/2406.04093>): keep each input's `k` largest pre-activations, so L0
//! is set directly and no sparsity penalty is needed. AuxK (α = 1/32) gives dead features a
//! gradient. Decoder row norms are left free (see below). Saved as SAELens "topk" with `k`.
//!
//! Where the recipe differs from sparsify's (measured against it in BENCHMARKS.md, where ours
//! reconstructs held-out activations at least as well at equal L0):
//! - `b_dec` starts at the geometric median of a sample (sparsify: the first batch's mean);
//! - inputs are scaled to `E‖x − x̄‖ = √d_in` (sparsify: raw), the scale folded back on save;
//! - decoder rows start at norm 0.5 (sparsify: 1; SAELens: 0.1), `W_enc = W_decᵀ`, and are then
//!   left free: no renormalisation and no removal of the gradient along each row (sparsify and
//!   the paper keep them at unit norm; SAELens trains the norms but selects by `pre·‖W_dec,i‖`).
//!   Keeping them at unit norm after each step cost held-out FVU on SmolLM2 (0.3625 against
//!   0.3598) and recovery of SAELens' synthetic ground truth (MCC 0.422 against 0.461). Starting
//!   at 0.5 instead of 1 took the same SmolLM2 run from 0.3598 to 0.3377 at the same speed; 0.3
//!   and 0.1 reached 0.333–0.334 but let features die early, and AuxK reviving them made the run
//!   1.2–1.6× slower (BENCHMARKS.md has all of these);
//! - no learning-rate warm-up, a linear decay over the last 20% of steps, and the global
//!   gradient norm clipped at 1 (sparsify: 1,000 warm-up steps, then a linear decay; no clip);
//! - a feature is dead for AuxK after a tenth of the run without firing, at most 10M inputs
//!   (sparsify: 10M tokens), so AuxK acts within short runs too.
//!
//! Training is sparse past the encoder's dense matmul: the selected pre-activations and their
//! decoder rows are read, and differentiated, only where selected (`sparse.rs`).

use candle_core::Tensor;

use super::common::{auxk_loss, cast_as, topk_indices, topk_relu, SaeParams};
use super::{
    Encoding, Init, LossContext, Sae, SaeConfig, Sparsity, TensorGetter, Variant, VariantDefaults,
};
use crate::{Error, Result};

/// Norm of the decoder rows at initialisation (see the header).
const INIT_DECODER_NORM: f64 = 0.5;

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
    super::validate_shape(cfg.architecture, cfg.d_sae, cfg.k)?;
    cfg.k
        .ok_or_else(|| Error::Input(format!("{} SAEs need k", cfg.architecture.name())))
}

/// The default `k` of the TopK family: 32 (Gao et al.'s and sparsify's usual choice), at most
/// an eighth of a small dictionary.
pub fn default_k(d_sae: usize) -> usize {
    32.min(d_sae / 8).max(1)
}

/// The TopK family's defaults.
pub(crate) fn topk_defaults(d_sae: usize) -> VariantDefaults {
    VariantDefaults {
        k: Some(default_k(d_sae)),
        ..VariantDefaults::shared(d_sae, 0.0)
    }
}

/// AuxK for any TopK-style variant: `pre` chooses the dead features' `d_in / 2` largest
/// pre-activations, taken differentiably from the encoder, and they must reconstruct the main
/// reconstruction's residual.
pub(crate) fn auxk_term(
    params: &SaeParams,
    x: &Tensor,
    pre: &Tensor,
    sae_out: &Tensor,
    ctx: &LossContext,
) -> Result<(&'static str, Tensor)> {
    let values_at = |indices: &Tensor| params.pre_acts_at(x, pre, indices);
    let aux = auxk_loss(
        pre,
        ctx.dead.as_ref(),
        &(x - sae_out)?,
        &cast_as(&params.w_dec, x)?,
        x.dim(1)? / 2,
        &values_at,
    )?;
    Ok(("auxk", (aux * AUX_COEFFICIENT)?))
}

impl Variant for TopKSae {
    const NAME: &'static str = "topk";
    const SAELENS: &'static str = "topk";
    const SPARSITY: Sparsity = Sparsity::K;

    fn defaults(d_sae: usize) -> VariantDefaults {
        topk_defaults(d_sae)
    }

    fn init(cfg: SaeConfig, init: &mut Init) -> Result<Self> {
        let k = required_k(&cfg)?;
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, INIT_DECODER_NORM, init)?;
        Ok(Self { cfg, params, k })
    }

    fn from_tensors(cfg: SaeConfig, get: &mut TensorGetter) -> Result<Self> {
        let k = required_k(&cfg)?;
        let params = SaeParams::load(get, cfg.d_in, cfg.d_sae, "b_enc")?;
        Ok(Self { cfg, params, k })
    }
}

impl Sae for TopKSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }
    fn config_mut(&mut self) -> &mut SaeConfig {
        &mut self.cfg
    }
    fn params(&self) -> &SaeParams {
        &self.params
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        topk_relu(&self.params.pre_acts(x)?, self.k)
    }
    /// Sparse after the dense matmul that chooses the top `k`: the selected pre-activations
    /// are recomputed, and differentiated, only where selected, and the shared loss decodes
    /// only the `k` selected decoder rows per input (see BENCHMARKS.md).
    fn encode_for_training(&self, x: &Tensor, _ctx: &LossContext) -> Result<Encoding> {
        // Every pre-activation, detached from the graph: it only chooses.
        let pre = self.params.pre_acts(x)?.detach();
        let indices = topk_indices(&pre, self.k)?;
        // Select, then ReLU, as SAELens does.
        let values = self.params.pre_acts_at(x, &pre, &indices)?.relu()?;
        Encoding::sparse(values, indices, pre)
    }
    fn aux_losses(
        &self,
        x: &Tensor,
        enc: &Encoding,
        sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(vec![auxk_term(&self.params, x, enc.pre()?, sae_out, ctx)?])
    }
}
