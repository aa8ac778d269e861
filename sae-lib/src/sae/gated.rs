//! Gated SAE (Rajamanoharan et al. 2024, <https://arxiv.org/abs/2404.16014>): a gate decides
//! which features fire, a magnitude path how strongly, sharing `W_enc` through a per-feature
//! rescale `r_mag`:
//! `π_gate = (x − b_dec) W_enc + b_gate`, `π_mag = ((x − b_dec) W_enc) ⊙ exp(r_mag) + b_mag`,
//! `f = 1[π_gate > 0] ⊙ ReLU(π_mag)`. The L1 penalty falls on `ReLU(π_gate)`, and an auxiliary
//! loss reconstructs x from `ReLU(π_gate)` through a frozen copy of the decoder so the gate
//! learns to reconstruct. Decoder rows are kept at unit norm. Saved as SAELens "gated".

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::common::SaeParams;
use super::{LossContext, LossOutput, Sae, SaeConfig};
use crate::Result;

/// A Gated SAE; `params.b_enc` is the gate bias `b_gate`.
#[derive(Debug, Clone)]
pub struct GatedSae {
    cfg: SaeConfig,
    params: SaeParams,
    b_mag: Var,
    r_mag: Var,
}

impl GatedSae {
    pub fn new(
        cfg: SaeConfig,
        rng: &mut ChaCha8Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, 1.0, rng, dtype, device)?;
        let b_mag = Var::zeros(cfg.d_sae, dtype, device)?;
        let r_mag = Var::zeros(cfg.d_sae, dtype, device)?;
        Ok(Self {
            cfg,
            params,
            b_mag,
            r_mag,
        })
    }

    pub fn from_tensors(
        cfg: SaeConfig,
        get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>,
    ) -> Result<Self> {
        let params = SaeParams::load(get, cfg.d_in, cfg.d_sae, "b_gate")?;
        let b_mag = Var::from_tensor(&get("b_mag", &[cfg.d_sae])?)?;
        let r_mag = Var::from_tensor(&get("r_mag", &[cfg.d_sae])?)?;
        Ok(Self {
            cfg,
            params,
            b_mag,
            r_mag,
        })
    }

    /// `(π_gate, π_mag)`.
    fn paths(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = x
            .broadcast_sub(self.params.b_dec.as_tensor())?
            .matmul(self.params.w_enc.as_tensor())?;
        let gate = z.broadcast_add(self.params.b_enc.as_tensor())?;
        let mag = z
            .broadcast_mul(&self.r_mag.as_tensor().exp()?)?
            .broadcast_add(self.b_mag.as_tensor())?;
        Ok((gate, mag))
    }
}

impl Sae for GatedSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }
    fn params(&self) -> &SaeParams {
        &self.params
    }
    fn vars(&self) -> Vec<(&'static str, Var)> {
        vec![
            ("W_enc", self.params.w_enc.clone()),
            ("b_gate", self.params.b_enc.clone()),
            ("b_mag", self.b_mag.clone()),
            ("r_mag", self.r_mag.clone()),
            ("W_dec", self.params.w_dec.clone()),
            ("b_dec", self.params.b_dec.clone()),
        ]
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, mag) = self.paths(x)?;
        Ok((gate.gt(0f64)?.to_dtype(mag.dtype())? * mag.relu()?)?)
    }
    fn loss(&self, x: &Tensor, ctx: &LossContext) -> Result<LossOutput> {
        let (gate, mag) = self.paths(x)?;
        let f = (gate.gt(0f64)?.to_dtype(mag.dtype())? * mag.relu()?)?;
        let sae_out = self.decode(&f)?;
        let mse = (&sae_out - x)?.sqr()?.sum(1)?.mean(0)?;
        let gate_acts = gate.relu()?;
        let l1 = (gate_acts.sum(1)?.mean(0)? * ctx.sparsity_coefficient)?;
        let frozen = gate_acts
            .matmul(&self.params.w_dec.as_tensor().detach())?
            .broadcast_add(&self.params.b_dec.as_tensor().detach())?;
        let aux = (frozen - x)?.sqr()?.sum(1)?.mean(0)?;
        let total = ((&mse + &l1)? + &aux)?;
        Ok(LossOutput {
            total,
            terms: vec![("mse", mse), ("l1", l1), ("aux", aux)],
            feature_acts: super::FeatureActs::Dense(f),
            sae_out,
        })
    }
    fn after_step(&self) -> Result<()> {
        self.params.normalize_decoder()
    }
}
