//! The standard ReLU sparse autoencoder (Bricken et al. 2023, "Towards Monosemanticity"):
//! `f = ReLU((x − b_dec) W_enc + b_enc)`, `x̂ = f W_dec + b_dec`.
//!
//! Two sparsity penalties:
//! - [`SparsityPenalty::DecoderNorm`], Anthropic's April 2024 update
//!   (<https://transformer-circuits.pub/2024/april-update/index.html#training-saes>):
//!   `λ Σ_i f_i ‖W_dec,i‖`, decoder rows free to grow, initialised at norm 0.1 with
//!   `W_enc = W_decᵀ`. Scale-invariant, so no decoder normalisation is needed.
//! - [`SparsityPenalty::L1UnitDecoder`], the tutorial-style recipe: plain `λ Σ_i |f_i|` with
//!   decoder rows renormalised to unit norm after every step (otherwise the L1 term is
//!   cheated by shrinking `f` and growing `W_dec`).

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::common::{random_rows, row_norms};
use super::{LossContext, Sae, SaeConfig};
use crate::Result;

/// How the ReLU SAE's sparsity is penalised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SparsityPenalty {
    /// `λ Σ f_i ‖W_dec,i‖` (Anthropic, April 2024).
    #[default]
    DecoderNorm,
    /// `λ Σ |f_i|` with unit-norm decoder rows (the tutorial's plain L1).
    L1UnitDecoder,
}

/// A ReLU SAE.
#[derive(Debug, Clone)]
pub struct ReluSae {
    cfg: SaeConfig,
    w_enc: Var,
    b_enc: Var,
    w_dec: Var,
    b_dec: Var,
    penalty: SparsityPenalty,
}

impl ReluSae {
    /// A freshly initialised SAE: decoder rows in random directions (norm 0.1 for the
    /// decoder-norm penalty, 1 for the unit-decoder one), `W_enc = W_decᵀ`, zero biases.
    pub fn new(
        cfg: SaeConfig,
        penalty: SparsityPenalty,
        rng: &mut ChaCha8Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let norm = match penalty {
            SparsityPenalty::DecoderNorm => 0.1,
            SparsityPenalty::L1UnitDecoder => 1.0,
        };
        let w_dec = random_rows(cfg.d_sae, cfg.d_in, norm, rng, dtype, device)?;
        Ok(Self {
            w_enc: Var::from_tensor(&w_dec.t()?.contiguous()?)?,
            b_enc: Var::zeros(cfg.d_sae, dtype, device)?,
            w_dec: Var::from_tensor(&w_dec)?,
            b_dec: Var::zeros(cfg.d_in, dtype, device)?,
            cfg,
            penalty,
        })
    }

    /// An SAE from its tensors (`W_enc`, `b_enc`, `W_dec`, `b_dec`).
    pub fn from_tensors(
        cfg: SaeConfig,
        get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
        penalty: SparsityPenalty,
    ) -> Result<Self> {
        let (d_in, d_sae) = (cfg.d_in, cfg.d_sae);
        Ok(Self {
            w_enc: Var::from_tensor(&get("W_enc", &[d_in, d_sae])?)?,
            b_enc: Var::from_tensor(&get("b_enc", &[d_sae])?)?,
            w_dec: Var::from_tensor(&get("W_dec", &[d_sae, d_in])?)?,
            b_dec: Var::from_tensor(&get("b_dec", &[d_in])?)?,
            cfg,
            penalty,
        })
    }

    pub fn penalty(&self) -> SparsityPenalty {
        self.penalty
    }

    /// Pre-activations `(x − b_dec) W_enc + b_enc`.
    pub fn pre_acts(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.broadcast_sub(self.b_dec.as_tensor())?
            .matmul(self.w_enc.as_tensor())?
            .broadcast_add(self.b_enc.as_tensor())?)
    }
}

impl Sae for ReluSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }

    fn vars(&self) -> Vec<(&'static str, Var)> {
        vec![
            ("W_enc", self.w_enc.clone()),
            ("b_enc", self.b_enc.clone()),
            ("W_dec", self.w_dec.clone()),
            ("b_dec", self.b_dec.clone()),
        ]
    }

    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.pre_acts(x)?.relu()?)
    }

    fn w_dec(&self) -> &Var {
        &self.w_dec
    }

    fn b_dec(&self) -> &Var {
        &self.b_dec
    }

    fn aux_losses(
        &self,
        _x: &Tensor,
        f: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        // f ≥ 0, so Σ|f_i| = Σ f_i; weight by decoder norms as one matmul: (b, d_sae) · (d_sae, 1).
        let l1 = match self.penalty {
            SparsityPenalty::DecoderNorm => f
                .matmul(&row_norms(self.w_dec.as_tensor())?.unsqueeze(1)?)?
                .mean_all()?,
            SparsityPenalty::L1UnitDecoder => f.sum(1)?.mean(0)?,
        };
        Ok(vec![("l1", (l1 * ctx.sparsity_coefficient)?)])
    }

    fn after_step(&self) -> Result<()> {
        if self.penalty == SparsityPenalty::L1UnitDecoder {
            let w = self.w_dec.as_tensor();
            self.w_dec
                .set(&w.broadcast_div(&row_norms(w)?.unsqueeze(1)?)?)?;
        }
        Ok(())
    }
}
