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

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::common::SaeParams;
use super::{LossContext, LossOutput, Sae, SaeConfig};
use crate::Result;

/// Initial θ (Gemma Scope's value).
pub const INIT_THRESHOLD: f64 = 0.001;
/// Kernel bandwidth ε. Inputs are scaled to `E‖x‖ = √d_in`, so pre-activations are O(1): a
/// window of ±0.025 around θ catches enough of them to give θ a usable gradient (at 0.001,
/// the L0 coefficient barely moved L0 in our tests).
pub const BANDWIDTH: f64 = 0.05;

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
    pub fn new(
        cfg: SaeConfig,
        rng: &mut ChaCha8Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, 0.1, rng, dtype, device)?;
        let threshold =
            Var::from_tensor(&(Tensor::ones(cfg.d_sae, dtype, device)? * INIT_THRESHOLD)?)?;
        Ok(Self {
            cfg,
            params,
            threshold,
            bandwidth: BANDWIDTH,
        })
    }

    pub fn from_tensors(
        cfg: SaeConfig,
        get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        let params = SaeParams::load(get, cfg.d_in, cfg.d_sae, "b_enc")?;
        let threshold = Var::from_tensor(&get("threshold", &[cfg.d_sae])?)?;
        Ok(Self {
            cfg,
            params,
            threshold,
            bandwidth: BANDWIDTH,
        })
    }

    pub fn threshold(&self) -> &Var {
        &self.threshold
    }
}

impl Sae for JumpReluSae {
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
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        jumprelu(&self.params.pre_acts(x)?, self.threshold.as_tensor())
    }
    fn loss(&self, x: &Tensor, ctx: &LossContext) -> Result<LossOutput> {
        let pre = self.params.pre_acts(x)?;
        let theta = self.threshold.as_tensor();
        let f = jumprelu_ste(&pre, theta, self.bandwidth)?;
        let sae_out = self.decode(&f)?;
        let mse = (&sae_out - x)?.sqr()?.sum(1)?.mean(0)?;
        let l0 = (step_l0_ste(&pre, theta, self.bandwidth)?.mean(0)? * ctx.sparsity_coefficient)?;
        let total = (&mse + &l0)?;
        Ok(LossOutput {
            total,
            terms: vec![("mse", mse), ("l0", l0)],
            feature_acts: super::FeatureActs::Dense(f.detach()),
            sae_out,
        })
    }
    /// θ stays positive (a negative threshold would let every feature fire).
    fn after_step(&self) -> Result<()> {
        self.threshold
            .set(&self.threshold.as_tensor().clamp(1e-6, f64::MAX)?)?;
        Ok(())
    }
}
