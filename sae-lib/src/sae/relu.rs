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

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use super::common::{row_norms, SaeParams};
use super::{
    Encoding, Init, LossContext, Sae, SaeConfig, Sparsity, TensorGetter, Variant, VariantDefaults,
};
use crate::Result;

/// The default penalty coefficient λ.
pub const DEFAULT_L1: f64 = 2.0;

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
    params: SaeParams,
    penalty: SparsityPenalty,
}

impl ReluSae {
    pub fn penalty(&self) -> SparsityPenalty {
        self.penalty
    }
}

impl Variant for ReluSae {
    const NAME: &'static str = "relu";
    const ALIASES: &'static [&'static str] = &["standard"];
    const SAELENS: &'static str = "standard";
    const SPARSITY: Sparsity = Sparsity::L1;

    fn defaults(d_sae: usize) -> VariantDefaults {
        VariantDefaults {
            lr: super::default_lr(d_sae),
            sparsity_coefficient: DEFAULT_L1,
            k: None,
        }
    }

    /// Decoder rows at norm 0.1 for the decoder-norm penalty, 1 for the unit-decoder one.
    fn init(cfg: SaeConfig, init: &mut Init) -> Result<Self> {
        let norm = match init.penalty {
            SparsityPenalty::DecoderNorm => 0.1,
            SparsityPenalty::L1UnitDecoder => 1.0,
        };
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, norm, init)?;
        Ok(Self {
            cfg,
            params,
            penalty: init.penalty,
        })
    }

    /// Saved SAEs are read with the decoder-norm penalty (it only matters for training).
    fn from_tensors(cfg: SaeConfig, get: &mut TensorGetter) -> Result<Self> {
        let params = SaeParams::load(get, cfg.d_in, cfg.d_sae, "b_enc")?;
        Ok(Self {
            cfg,
            params,
            penalty: SparsityPenalty::DecoderNorm,
        })
    }
}

impl Sae for ReluSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }
    fn params(&self) -> &SaeParams {
        &self.params
    }

    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.params.pre_acts(x)?.relu()?)
    }

    fn encode_for_training(&self, x: &Tensor, _ctx: &LossContext) -> Result<Encoding> {
        let pre = self.params.pre_acts(x)?;
        Ok(Encoding::dense(pre.relu()?, pre))
    }

    fn aux_losses(
        &self,
        _x: &Tensor,
        enc: &Encoding,
        _sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let f = enc.acts.dense()?;
        // f ≥ 0, so Σ|f_i| = Σ f_i; weight by decoder norms as one matmul: (b, d_sae) · (d_sae, 1).
        let l1 = match self.penalty {
            SparsityPenalty::DecoderNorm => f
                .matmul(
                    &row_norms(self.params.w_dec.as_tensor())?
                        .to_dtype(f.dtype())?
                        .unsqueeze(1)?,
                )?
                .mean_all()?,
            SparsityPenalty::L1UnitDecoder => f.sum(1)?.mean(0)?,
        };
        Ok(vec![("l1", (l1 * ctx.sparsity_coefficient)?)])
    }

    fn after_step(&self) -> Result<()> {
        if self.penalty == SparsityPenalty::L1UnitDecoder {
            self.params.normalize_decoder()?;
        }
        Ok(())
    }
}
