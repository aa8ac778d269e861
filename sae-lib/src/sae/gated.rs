//! Gated SAE (Rajamanoharan et al. 2024, <https://arxiv.org/abs/2404.16014>): a gate decides
//! which features fire, a magnitude path how strongly, sharing `W_enc` through a per-feature
//! rescale `r_mag`:
//! `π_gate = (x − b_dec) W_enc + b_gate`, `π_mag = ((x − b_dec) W_enc) ⊙ exp(r_mag) + b_mag`,
//! `f = 1[π_gate > 0] ⊙ ReLU(π_mag)`. The L1 penalty falls on `ReLU(π_gate)`, and an auxiliary
//! loss reconstructs x from `ReLU(π_gate)` through a frozen copy of the decoder so the gate
//! learns to reconstruct. Decoder rows are kept at unit norm. Saved as SAELens "gated".
//!
//! `W_enc = W_decᵀ` starts at row norm 0.1 (SAELens' and Anthropic's April 2024 heuristic),
//! not 1: inputs are scaled to `E‖x − x̄‖ = √d_in`, so a unit-norm encoder starts with large
//! gate activations, and the L1 on them then kills most features. On SAELens' synthetic
//! ground truth (BENCHMARKS.md) this took the dead fraction from 69% to 48% and MCC at L0 ≈ 16
//! from 0.375 to 0.47. Decoder rows are back at unit norm after the first step.
//!
//! Training is sparse past the encoder's dense matmul once few gates open, as ReLU's is: a
//! feature whose gate is shut (`π_gate ≤ 0`) has `f = 0`, no L1 and no gate reconstruction,
//! and no gradient through any of them, so only the open gates are gathered per input
//! (`candidates`) and the loss reads and differentiates only their rows.

use super::dense::centred_matmul;
use super::kernels::add_row;
use candle_core::{Tensor, Var};

use super::common::{cast_as, sparse_decode, squared_error, SaeParams};
use super::sparse::{candidates, per_feature_at};
use super::{
    Encoding, FeatureActs, Init, LossContext, Sae, SaeConfig, Sparsity, TensorGetter, Variant,
    VariantDefaults,
};
use crate::Result;

/// The default L1 coefficient λ on the gate.
pub const DEFAULT_L1: f64 = 2.0;

/// Row norm of `W_enc = W_decᵀ` at initialisation.
const INIT_NORM: f64 = 0.1;

/// A Gated SAE; `params.b_enc` is the gate bias `b_gate`.
#[derive(Debug, Clone)]
pub struct GatedSae {
    cfg: SaeConfig,
    params: SaeParams,
    b_mag: Var,
    r_mag: Var,
}

impl Variant for GatedSae {
    const NAME: &'static str = "gated";
    const SAELENS: &'static str = "gated";
    const SPARSITY: Sparsity = Sparsity::L1;

    fn defaults(d_sae: usize) -> VariantDefaults {
        VariantDefaults::shared(d_sae, DEFAULT_L1)
    }

    fn init(cfg: SaeConfig, init: &mut Init) -> Result<Self> {
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, INIT_NORM, init)?;
        let b_mag = Var::zeros(cfg.d_sae, init.dtype, init.device)?;
        let r_mag = Var::zeros(cfg.d_sae, init.dtype, init.device)?;
        Ok(Self {
            cfg,
            params,
            b_mag,
            r_mag,
        })
    }

    fn from_tensors(cfg: SaeConfig, get: &mut TensorGetter) -> Result<Self> {
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
}

impl GatedSae {
    /// `(π_gate, π_mag)`.
    fn paths(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = self.shared(x)?;
        Ok((
            add_row(&z, &cast_as(&self.params.b_enc, x)?)?,
            self.mag(&z)?,
        ))
    }

    /// `(x − b_dec) W_enc`, which both paths read.
    fn shared(&self, x: &Tensor) -> Result<Tensor> {
        self.params.centred(x)
    }

    /// `π_mag` from the shared part, dense.
    fn mag(&self, z: &Tensor) -> Result<Tensor> {
        let scale = cast_as(&self.r_mag, z)?.exp()?;
        add_row(&z.broadcast_mul(&scale)?, &cast_as(&self.b_mag, z)?)
    }
}

impl Sae for GatedSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }
    fn config_mut(&mut self) -> &mut SaeConfig {
        &mut self.cfg
    }
    fn params(&self) -> &SaeParams {
        &self.params
    }
    fn b_enc_name(&self) -> &'static str {
        "b_gate"
    }
    fn extra_vars(&self) -> Vec<(&'static str, Var)> {
        vec![("b_mag", self.b_mag.clone()), ("r_mag", self.r_mag.clone())]
    }
    fn feature_vars(&self) -> Vec<(Var, f64)> {
        vec![(self.b_mag.clone(), 0.0), (self.r_mag.clone(), 0.0)]
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        let (gate, mag) = self.paths(x)?;
        Ok((gate.gt(0f64)?.to_dtype(mag.dtype())? * mag.relu()?)?)
    }
    /// Sparse over the open gates once few open (the header); dense while many do.
    fn encode_for_training(&self, x: &Tensor, _ctx: &LossContext) -> Result<Encoding> {
        let z = self.shared(x)?;
        let gate = add_row(&z, &cast_as(&self.params.b_enc, x)?)?;
        let detached = gate.detach();
        let floor = Tensor::zeros(self.cfg.d_sae, gate.dtype(), gate.device())?;
        let Some(indices) = candidates(&detached, &floor)? else {
            let mag = self.mag(&z)?;
            let f = (gate.gt(0f64)?.to_dtype(mag.dtype())? * mag.relu()?)?;
            return Ok(Encoding::dense(f, gate));
        };
        // π_mag at the open gates: their shared part is π_gate − b_gate.
        let gate_at = self.params.pre_acts_at(x, &detached, &indices)?;
        let b_gate = per_feature_at(&cast_as(&self.params.b_enc, x)?, &indices)?;
        let scale = per_feature_at(&cast_as(&self.r_mag, x)?.exp()?, &indices)?;
        let mag_at =
            ((&gate_at - b_gate)? * scale)? + per_feature_at(&cast_as(&self.b_mag, x)?, &indices)?;
        let open = gate_at.gt(0f64)?.to_dtype(gate_at.dtype())?;
        // The gate's pre-activations the auxiliary losses read are these same ones, so both
        // uses' gradients meet here and leave through one sparse backward.
        Ok(Encoding {
            acts: FeatureActs::Sparse {
                values: (open * mag_at?.relu()?)?,
                indices,
                d_sae: self.cfg.d_sae,
                flat_at_zero: true,
            },
            hidden_pre: Some(gate_at),
        })
    }
    /// The L1 penalty on the gate's activations, and the gate's own reconstruction through a
    /// frozen copy of the decoder.
    fn aux_losses(
        &self,
        x: &Tensor,
        enc: &Encoding,
        _sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let w_dec = cast_as(&self.params.w_dec, x)?.detach();
        let b_dec = cast_as(&self.params.b_dec, x)?.detach();
        // π_gate: every feature's when dense, the candidates' when sparse.
        let gate_acts = enc.pre()?.relu()?;
        let frozen = match &enc.acts {
            FeatureActs::Sparse { indices, .. } => {
                sparse_decode(&gate_acts, indices, &w_dec, &b_dec, true)?
            }
            // (W_dec's gradient, which a stock matmul would compute, is not read.)
            FeatureActs::Dense(_) => {
                centred_matmul(&gate_acts, None, &w_dec.t()?)?.broadcast_add(&b_dec)?
            }
        };
        let l1 = (gate_acts.sum(1)?.mean(0)? * ctx.sparsity_coefficient)?;
        let aux = squared_error(&frozen, x)?;
        Ok(vec![("l1", l1), ("aux", aux)])
    }
    fn after_step(&self) -> Result<()> {
        self.params.normalize_decoder()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::{Architecture, SaeMetadata, SparsityPenalty};
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    /// The sparse step (only the open gates, gathered) gives the dense step's loss terms and
    /// every gradient, the magnitude path's `r_mag` and `b_mag` included; so does the dense
    /// step on the CPU kernels' path.
    #[test]
    fn the_sparse_step_equals_the_dense_step() {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let (b, d_in, d_sae) = (24, 16, 256);
        let cfg = SaeConfig::new(Architecture::Gated, d_in, d_sae, SaeMetadata::default());
        let mut init = Init {
            rng: &mut rng,
            dtype: DType::F32,
            device: &dev,
            penalty: SparsityPenalty::DecoderNorm,
            init_threshold: None,
        };
        let sae = GatedSae::init(cfg, &mut init).unwrap();
        // Unit-norm encoder rows against inputs of norm about 4 and a gate bias of −1.5: a
        // few open gates per input. The magnitude path gets its own scale and bias.
        let w = super::super::common::random_rows(d_sae, d_in, 1.0, &mut rng, DType::F32, &dev);
        sae.params.w_enc_t.set(&w.unwrap()).unwrap();
        let per_feature = |a: f32, c: f32| {
            let v: Vec<f32> = (0..d_sae).map(|j| a + c * (j % 7) as f32).collect();
            Tensor::from_vec(v, d_sae, &dev).unwrap()
        };
        sae.params.b_enc.set(&per_feature(-1.5, 0.0)).unwrap();
        sae.r_mag.set(&per_feature(-0.3, 0.1)).unwrap();
        sae.b_mag.set(&per_feature(-0.2, 0.05)).unwrap();
        let x = Tensor::randn(0f32, 1., (b, d_in), &dev).unwrap();
        super::super::common::assert_sparse_step_equals_dense_step(&sae, &x);
        // Most gates open (b_gate +1.5, b_dec off zero): the dense step, through the centred
        // matmul and the frozen decoder's, against the stock ops'.
        sae.params.b_enc.set(&per_feature(1.5, 0.0)).unwrap();
        let b_dec = Tensor::randn(0f32, 0.5, d_in, &dev).unwrap();
        sae.params.b_dec.set(&b_dec).unwrap();
        super::super::common::assert_kernels_match_stock_ops(&sae, &x, false);
    }
}
