//! JumpReLU SAE (Rajamanoharan et al. 2024, <https://arxiv.org/abs/2407.14435>):
//! `f_i = pre_i · H(pre_i − θ_i)` with a learned threshold per feature, trained on
//! reconstruction + `λ · L0`. The step function has no useful gradient, so θ gets the paper's
//! straight-through pseudo-derivatives with a rectangle kernel `K(u) = 1[|u| ≤ ½]` of
//! bandwidth ε:
//! - `∂f_i/∂θ_i ≈ −(θ_i/ε) K((pre_i − θ_i)/ε)`,
//! - `∂H(pre_i − θ_i)/∂θ_i ≈ −(1/ε) K((pre_i − θ_i)/ε)`,
//!
//! written as `value + (g − g.detach())` terms so candle's autograd carries them. θ is learned
//! directly, not as `exp(log θ)`, which Adam barely moves (SAELens PR #718). Saved as SAELens
//! "jumprelu" with `threshold`.

use candle_core::{Tensor, Var};

use super::common::SaeParams;
use super::{
    Encoding, Init, LossContext, Sae, SaeConfig, Sparsity, TensorGetter, Variant, VariantDefaults,
};
use crate::Result;

/// Initial θ. Gemma Scope's 0.001 is for inputs of unit norm; ours are scaled to
/// `E‖x − x̄‖ = √d_in`, and Adam moves θ by about one learning rate per step, so from 0.001 it
/// could not reach a useful threshold within a default run (BENCHMARKS.md).
pub const INIT_THRESHOLD: f64 = 0.1;
/// Kernel bandwidth ε. Inputs are scaled to `E‖x − x̄‖ = √d_in`, so pre-activations are O(1): a
/// window of ±0.025 around θ catches enough of them to give θ a usable gradient (at 0.001,
/// the L0 coefficient barely moved L0 in our tests).
pub const BANDWIDTH: f64 = 0.05;
/// The default L0 coefficient λ.
pub const DEFAULT_L0: f64 = 3.0;

/// A JumpReLU SAE.
#[derive(Debug, Clone)]
pub struct JumpReluSae {
    cfg: SaeConfig,
    params: SaeParams,
    threshold: Var,
    bandwidth: f64,
}

/// `K((pre − θ)/ε) / ε` as a constant: the rectangle kernel of the pseudo-derivatives.
fn kernel(pre: &Tensor, theta: &Tensor, eps: f64) -> Result<Tensor> {
    let u = (pre.broadcast_sub(theta)?.detach() / eps)?;
    Ok((u.abs()?.le(0.5)?.to_dtype(pre.dtype())? / eps)?)
}

/// Inference JumpReLU: `pre · H(pre − θ)` (ReLU'd, as SAELens does), per feature θ.
pub fn jumprelu(pre: &Tensor, theta: &Tensor) -> Result<Tensor> {
    let h = pre.broadcast_gt(theta)?.to_dtype(pre.dtype())?;
    Ok((pre.relu()? * h)?)
}

/// JumpReLU activations with θ's pseudo-derivative: value `pre · H(pre − θ)`; gradient
/// `H` to `pre` and `−(θ/ε) K` to θ.
pub fn jumprelu_ste(pre: &Tensor, theta: &Tensor, eps: f64) -> Result<Tensor> {
    let h = pre.broadcast_gt(theta)?.to_dtype(pre.dtype())?;
    let c = kernel(pre, theta, eps)?.broadcast_mul(&theta.detach())?; // (θ/ε) K, constant
    let g = c.broadcast_mul(theta)?.neg()?; // d/dθ = −c
    Ok(((pre * h)? + (&g - g.detach())?)?)
}

/// Per-input L0 `Σ_i H(pre_i − θ_i)` with θ's pseudo-derivative `−(1/ε) K`, shape `(b,)`.
pub fn step_l0_ste(pre: &Tensor, theta: &Tensor, eps: f64) -> Result<Tensor> {
    let h = pre.broadcast_gt(theta)?.to_dtype(pre.dtype())?;
    let g = kernel(pre, theta, eps)?.broadcast_mul(theta)?.neg()?;
    Ok((h + (&g - g.detach())?)?.sum(1)?)
}

impl JumpReluSae {
    pub fn threshold(&self) -> &Var {
        &self.threshold
    }
}

impl Variant for JumpReluSae {
    const NAME: &'static str = "jumprelu";
    const SAELENS: &'static str = "jumprelu";
    const SPARSITY: Sparsity = Sparsity::L0;

    fn defaults(d_sae: usize) -> VariantDefaults {
        VariantDefaults {
            lr: super::default_lr(d_sae),
            sparsity_coefficient: DEFAULT_L0,
            k: None,
        }
    }

    fn init(cfg: SaeConfig, init: &mut Init) -> Result<Self> {
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, 0.1, init)?;
        let threshold = Var::from_tensor(
            &(Tensor::ones(cfg.d_sae, init.dtype, init.device)? * INIT_THRESHOLD)?,
        )?;
        Ok(Self {
            cfg,
            params,
            threshold,
            bandwidth: BANDWIDTH,
        })
    }

    fn from_tensors(cfg: SaeConfig, get: &mut TensorGetter) -> Result<Self> {
        let params = SaeParams::load(get, cfg.d_in, cfg.d_sae, "b_enc")?;
        let threshold = Var::from_tensor(&get("threshold", &[cfg.d_sae])?)?;
        Ok(Self {
            cfg,
            params,
            threshold,
            bandwidth: BANDWIDTH,
        })
    }
}

impl Sae for JumpReluSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }
    fn params(&self) -> &SaeParams {
        &self.params
    }
    fn extra_vars(&self) -> Vec<(&'static str, Var)> {
        vec![("threshold", self.threshold.clone())]
    }
    fn feature_vars(&self) -> Vec<(Var, f64)> {
        vec![(self.threshold.clone(), INIT_THRESHOLD)]
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        jumprelu(&self.params.pre_acts(x)?, self.threshold.as_tensor())
    }
    fn encode_for_training(&self, x: &Tensor, _ctx: &LossContext) -> Result<Encoding> {
        let pre = self.params.pre_acts(x)?;
        let f = jumprelu_ste(&pre, self.threshold.as_tensor(), self.bandwidth)?;
        Ok(Encoding::dense(f, pre))
    }
    fn aux_losses(
        &self,
        _x: &Tensor,
        enc: &Encoding,
        _sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let l0 = step_l0_ste(enc.pre()?, self.threshold.as_tensor(), self.bandwidth)?.mean(0)?;
        Ok(vec![("l0", (l0 * ctx.sparsity_coefficient)?)])
    }
    /// θ stays positive (a negative threshold would let every feature fire).
    fn after_step(&self) -> Result<()> {
        self.threshold
            .set(&self.threshold.as_tensor().clamp(1e-6, f64::MAX)?)?;
        Ok(())
    }
}
