//! JumpReLU SAE (Rajamanoharan et al. 2024, <https://arxiv.org/abs/2407.14435>):
//! `f_i = pre_i · H(pre_i − θ_i)` with a learned threshold per feature, trained on
//! reconstruction + `λ · L0`. The step function has no useful gradient, so θ gets the paper's
//! straight-through pseudo-derivatives with a rectangle kernel `K(u) = 1[|u| ≤ ½]` of
//! bandwidth ε:
//! - `∂f_i/∂θ_i ≈ −(θ_i/ε) K((pre_i − θ_i)/ε)`,
//! - `∂H(pre_i − θ_i)/∂θ_i ≈ −(1/ε) K((pre_i − θ_i)/ε)`,
//!
//! written as `value + (g − g.detach())` terms so candle's autograd carries them. θ is learned
//! directly, not as `exp(log θ)`, which Adam barely moves (SAELens PR #718), and at
//! [`threshold_lr_scale`] times the learning rate. Saved as SAELens "jumprelu" with
//! `threshold`.
//!
//! Deviation from SAELens and the paper: θ's learning rate. Adam moves a parameter by about one
//! learning rate per step whatever its gradient, so at 4e-4 θ can rise by at most 0.4 in 1,000
//! steps, while our pre-activations are O(1) (inputs scaled to `E‖x − x̄‖ = √d_in`). At 1× on
//! SmolLM2 (BENCHMARKS.md) L0 stayed at 1,100 of 4,096 after 1,000 steps for λ 10 and λ 40
//! alike (SAELens' at 3,400-3,700): θ rose as fast as Adam let it, and λ changed nothing. At
//! 8× the same runs reach L0 68 (λ 3) and 47 (λ 10); at 24× 29 and 17, on the same held-out
//! FVU-against-L0 curve, but with short runs at the larger learning rates of small SAEs the
//! thresholds outran the features (39% dead at d_sae 256, lr 1.6e-3, 200 steps).
//!
//! θ's rate has a floor, [`THRESHOLD_MIN_LR`]: the default rate falls with width (1/√d_sae), and
//! at 16,384 features (lr 2e-4) 8× left θ as rate-bound as 1× had at 4,096: L0 289 at λ 3 and
//! 280 at λ 30, with held-out FVU behind SAELens'. With θ at 3.2e-3 (16× there) λ 3 reached
//! L0 127 with held-out FVU 3.5% under SAELens' at that L0, in 0.75× the time of 8×. θ's
//! scale is set by the inputs' (scaled to `√d_in`), not by the weights' rate, hence a floor in
//! θ's own units.
//!
//! θ's start, [`INIT_THRESHOLD`], is low so that every feature starts alive: from 0.5, short
//! runs at small widths lost every feature. On a small store read many times that is not
//! what generalises: at 16,384 features on 49,390 rows read 20 times, with every feature
//! alive ours fit its training rows 3.2× better than held-out ones and was 11% behind SAELens
//! at L0 260, whose sparse start (θ₀ 0.9 on raw activations) leaves a few hundred features
//! alive. Started at 0.5 ([`Init::init_threshold`], `--init-threshold`), a third of ours never
//! come alive and held-out FVU at L0 176 falls 16% (0.247 to 0.207), 0.81–0.98× SAELens' over
//! L0 124–308, yet 11% behind at its L0 470 (a nearly dense code of 535 features) from 0.65.
//! Started as SAELens' sparse runs start, from 0.7 (about its 0.9 in our units) with `b_dec`
//! at zero instead of the median (`--b-dec-init zeros`), 95% of ours stay dead and held-out
//! FVU is 0.78× SAELens' at L0 124 and 0.96× at L0 470 (BENCHMARKS.md). The default stays at
//! 0.1, which the width- and scale-sweep of defaults needs; `sae train` points at both options
//! when a JumpReLU run reads its store 10 times or more.
//!
//! Training is sparse past the encoder's dense matmul, as TopK's is: only pre-activations at
//! least `θ − ε` can carry a value or a gradient (the kernel is zero below `θ − ε/2`), and once
//! θ has risen they are a few dozen of `d_sae` per input. Those are gathered per input
//! (`candidates`), and the loss decodes and differentiates only them. While they are many
//! (early in training, θ still small) the step stays dense.

use candle_core::{Tensor, Var};

use super::common::SaeParams;
use super::sparse::{candidates, per_feature_at};
use super::step;
use super::{
    Encoding, FeatureActs, Init, LossContext, Sae, SaeConfig, Sparsity, TensorGetter, Variant,
    VariantDefaults,
};
use crate::Result;

/// Initial θ. Gemma Scope's 0.001 is for inputs of unit norm; ours are scaled to
/// `E‖x − x̄‖ = √d_in`, and Adam moves θ by a bounded step (lr × [`THRESHOLD_LR_SCALE`]), so
/// from 0.001 it would spend a short run getting to a useful threshold (BENCHMARKS.md).
pub const INIT_THRESHOLD: f64 = 0.1;
/// Kernel bandwidth ε. Inputs are scaled to `E‖x − x̄‖ = √d_in`, so pre-activations are O(1): a
/// window of ±0.025 around θ catches enough of them to give θ a usable gradient (at 0.001,
/// the L0 coefficient barely moved L0 in our tests).
pub const BANDWIDTH: f64 = 0.05;
/// The default L0 coefficient λ.
pub const DEFAULT_L0: f64 = 3.0;
/// θ's learning rate as a multiple of the run's (see the header), at least.
pub const THRESHOLD_LR_SCALE: f64 = 8.0;
/// The least step size θ learns at, whatever the run's rate: the multiple at 4e-4, the
/// default rate at 4,096 features (3.2e-3; see the header).
pub const THRESHOLD_MIN_LR: f64 = THRESHOLD_LR_SCALE * 4e-4;

/// θ's learning-rate multiple for a run at `lr`: [`THRESHOLD_LR_SCALE`], or more where that
/// would leave θ's rate under [`THRESHOLD_MIN_LR`].
pub fn threshold_lr_scale(lr: f64) -> f64 {
    THRESHOLD_LR_SCALE.max(THRESHOLD_MIN_LR / lr)
}

/// A JumpReLU SAE.
#[derive(Debug, Clone)]
pub struct JumpReluSae {
    cfg: SaeConfig,
    params: SaeParams,
    threshold: Var,
    bandwidth: f64,
    /// θ₀: where θ starts, and where a resampled feature's θ restarts.
    init_threshold: f64,
}

/// `K((pre − θ)/ε) / ε` as a constant: the rectangle kernel of the pseudo-derivatives.
fn kernel(pre: &Tensor, theta: &Tensor, eps: f64) -> Result<Tensor> {
    let u = (pre.broadcast_sub(theta)?.detach() / eps)?;
    Ok((u.abs()?.le(0.5)?.to_dtype(pre.dtype())? / eps)?)
}

/// Inference JumpReLU: `pre · H(pre − θ)` (ReLU'd, as SAELens does), per feature θ.
pub fn jumprelu(pre: &Tensor, theta: &Tensor) -> Result<Tensor> {
    let theta = &theta.to_dtype(pre.dtype())?;
    let h = pre.broadcast_gt(theta)?.to_dtype(pre.dtype())?;
    Ok((pre.relu()? * h)?)
}

/// JumpReLU activations with θ's pseudo-derivative: value `pre · H(pre − θ)`; gradient
/// `H` to `pre` and `−(θ/ε) K` to θ. One fused op for `(batch, d_sae)` f32 on the CPU
/// (`step.rs`).
pub fn jumprelu_ste(pre: &Tensor, theta: &Tensor, eps: f64) -> Result<Tensor> {
    if step::fused(pre, theta) {
        return step::jump_act(pre, theta, eps);
    }
    let theta = &theta.to_dtype(pre.dtype())?; // f32 θ meets bf16 pre-activations in mixed precision
    let h = pre.broadcast_gt(theta)?.to_dtype(pre.dtype())?;
    let c = kernel(pre, theta, eps)?.broadcast_mul(&theta.detach())?; // (θ/ε) K, constant
    let g = c.broadcast_mul(theta)?.neg()?; // d/dθ = −c
    Ok(((pre * h)? + (&g - g.detach())?)?)
}

/// Per-input L0 `Σ_i H(pre_i − θ_i)` with θ's pseudo-derivative `−(1/ε) K`, shape `(b,)`.
/// Counted in at least f32: bf16 holds integers exactly only up to 256. Fused as
/// [`jumprelu_ste`] is.
pub fn step_l0_ste(pre: &Tensor, theta: &Tensor, eps: f64) -> Result<Tensor> {
    if step::fused(pre, theta) {
        return step::step_count(pre, theta, eps);
    }
    let theta = &theta.to_dtype(pre.dtype())?;
    let h = pre.broadcast_gt(theta)?.to_dtype(pre.dtype())?;
    let g = kernel(pre, theta, eps)?.broadcast_mul(theta)?.neg()?;
    Ok(super::common::widen(&(h + (&g - g.detach())?)?)?.sum(1)?)
}

impl JumpReluSae {
    /// `(d_sae,)` learned thresholds θ: a feature fires where its pre-activation exceeds θ.
    pub fn threshold(&self) -> &Var {
        &self.threshold
    }
}

impl Variant for JumpReluSae {
    const NAME: &'static str = "jumprelu";
    const SAELENS: &'static str = "jumprelu";
    const SPARSITY: Sparsity = Sparsity::L0;

    fn defaults(d_sae: usize) -> VariantDefaults {
        VariantDefaults::shared(d_sae, DEFAULT_L0)
    }

    fn init(cfg: SaeConfig, init: &mut Init) -> Result<Self> {
        let init_threshold = init.init_threshold.unwrap_or(INIT_THRESHOLD);
        crate::train::trainer::positive("the initial threshold", init_threshold)?;
        let params = SaeParams::init(cfg.d_in, cfg.d_sae, 0.1, init)?;
        let threshold = Var::from_tensor(
            &(Tensor::ones(cfg.d_sae, init.dtype, init.device)? * init_threshold)?,
        )?;
        Ok(Self {
            cfg,
            params,
            threshold,
            bandwidth: BANDWIDTH,
            init_threshold,
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
            init_threshold: INIT_THRESHOLD,
        })
    }
}

impl Sae for JumpReluSae {
    fn config(&self) -> &SaeConfig {
        &self.cfg
    }
    fn config_mut(&mut self) -> &mut SaeConfig {
        &mut self.cfg
    }
    fn params(&self) -> &SaeParams {
        &self.params
    }
    fn extra_vars(&self) -> Vec<(&'static str, Var)> {
        vec![("threshold", self.threshold.clone())]
    }
    fn feature_vars(&self) -> Vec<(Var, f64)> {
        vec![(self.threshold.clone(), self.init_threshold)]
    }
    fn lr_scales(&self, lr: f64) -> Vec<(&'static str, f64)> {
        vec![("threshold", threshold_lr_scale(lr))]
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        jumprelu(&self.params.pre_acts(x)?, self.threshold.as_tensor())
    }
    fn encode_for_training(&self, x: &Tensor, _ctx: &LossContext) -> Result<Encoding> {
        let theta = self.threshold.as_tensor();
        let pre = self.params.pre_acts(x)?;
        let detached = pre.detach();
        // Only pre-activations at least θ − ε can carry a value or a gradient.
        let floor = (theta - self.bandwidth)?;
        let Some(indices) = candidates(&detached, &floor)? else {
            let f = jumprelu_ste(&pre, theta, self.bandwidth)?;
            return Ok(Encoding::dense(f, pre));
        };
        let pre_at = self.params.pre_acts_at(x, &detached, &indices)?;
        let values = jumprelu_ste(
            &pre_at,
            &per_feature_at(self.threshold.as_tensor(), &indices)?,
            self.bandwidth,
        )?;
        Encoding::sparse(values, indices, detached)
    }
    fn aux_losses(
        &self,
        _x: &Tensor,
        enc: &Encoding,
        _sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let l0 = match &enc.acts {
            // Features outside the candidates count 0 and have no gradient.
            FeatureActs::Sparse { indices, .. } => step_l0_ste(
                &enc.pre()?.gather(indices, 1)?,
                &per_feature_at(self.threshold.as_tensor(), indices)?,
                self.bandwidth,
            )?,
            FeatureActs::Dense(_) => {
                step_l0_ste(enc.pre()?, self.threshold.as_tensor(), self.bandwidth)?
            }
        };
        Ok(vec![("l0", (l0.mean(0)? * ctx.sparsity_coefficient)?)])
    }
    /// θ stays positive (a negative threshold would let every feature fire).
    fn after_step(&self) -> Result<()> {
        self.threshold
            .set(&self.threshold.as_tensor().clamp(1e-6, f64::MAX)?)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sae::{Architecture, SaeMetadata, SparsityPenalty};
    use candle_core::{DType, Device};
    use rand::SeedableRng;

    /// At the default rates θ learns at 8× up to 4,096 features and at 3.2e-3 a step beyond,
    /// where 8× would slow it with the width.
    #[test]
    fn theta_keeps_its_rate_at_wide_default_rates() {
        for d_sae in [256, 1024, 4096] {
            assert_eq!(
                threshold_lr_scale(crate::sae::default_lr(d_sae)),
                8.0,
                "{d_sae}"
            );
        }
        for d_sae in [16384, 65536] {
            let lr = crate::sae::default_lr(d_sae);
            let theta_lr = lr * threshold_lr_scale(lr);
            assert!(
                (theta_lr - THRESHOLD_MIN_LR).abs() < 1e-12,
                "{d_sae}: {theta_lr}"
            );
        }
    }

    /// θ starts at θ₀ (the default or the one given), and a resampled feature's θ restarts
    /// there; θ₀ must be positive.
    #[test]
    fn theta_starts_at_the_initial_threshold() {
        let dev = Device::Cpu;
        let cfg = SaeConfig::new(Architecture::JumpRelu, 8, 32, SaeMetadata::default());
        let build = |theta: Option<f64>| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
            JumpReluSae::init(
                cfg.clone(),
                &mut Init {
                    rng: &mut rng,
                    dtype: DType::F32,
                    device: &dev,
                    penalty: SparsityPenalty::DecoderNorm,
                    init_threshold: theta,
                },
            )
        };
        for (given, expected) in [(None, INIT_THRESHOLD), (Some(0.5), 0.5)] {
            let sae = build(given).unwrap();
            let theta = sae.threshold.as_tensor().to_vec1::<f32>().unwrap();
            assert!(theta.iter().all(|&t| t == expected as f32), "{theta:?}");
            assert_eq!(sae.feature_vars()[0].1, expected);
        }
        for bad in [0.0, -1.0, f64::NAN] {
            assert!(build(Some(bad)).is_err(), "{bad}");
        }
    }

    /// The sparse step (only the features within ε below θ or above) gives the dense step's
    /// loss and gradients, θ's pseudo-derivatives included.
    #[test]
    fn the_sparse_step_equals_the_dense_step() {
        let dev = Device::Cpu;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(5);
        let (b, d_in, d_sae) = (24, 16, 256);
        let cfg = SaeConfig::new(Architecture::JumpRelu, d_in, d_sae, SaeMetadata::default());
        let mut init = Init {
            rng: &mut rng,
            dtype: DType::F32,
            device: &dev,
            penalty: SparsityPenalty::DecoderNorm,
            init_threshold: None,
        };
        let sae = JumpReluSae::init(cfg, &mut init).unwrap();
        // Unit-norm encoder rows against inputs of norm about 4: pre-activations about N(0, 1).
        sae.params
            .w_enc_t
            .set(
                &crate::sae::common::random_rows(d_sae, d_in, 1.0, &mut rng, DType::F32, &dev)
                    .unwrap(),
            )
            .unwrap();
        // θ around 2: a few candidates per input, some inside the kernel's window.
        let theta: Vec<f32> = (0..d_sae)
            .map(|j| 1.8 + 0.4 * (j as f32 / d_sae as f32))
            .collect();
        sae.threshold
            .set(&Tensor::from_vec(theta, d_sae, &dev).unwrap())
            .unwrap();
        let x = Tensor::randn(0f32, 1., (b, d_in), &dev).unwrap();
        let pre = sae.params.pre_acts(&x).unwrap();
        let u = ((pre.broadcast_sub(sae.threshold.as_tensor()).unwrap()) / BANDWIDTH)
            .unwrap()
            .abs()
            .unwrap();
        let in_window = u.le(0.5).unwrap().to_dtype(DType::F32).unwrap();
        assert!(in_window.sum_all().unwrap().to_scalar::<f32>().unwrap() >= 3.0);

        crate::sae::common::assert_sparse_step_equals_dense_step(&sae, &x);
        // θ around 0.1 with b_dec off zero: most features fire and the step is dense, through
        // the centred matmul's backward.
        let low = Tensor::full(0.1f32, d_sae, &dev).unwrap();
        sae.threshold.set(&low).unwrap();
        let b_dec = Tensor::randn(0f32, 0.5, d_in, &dev).unwrap();
        sae.params.b_dec.set(&b_dec).unwrap();
        crate::sae::common::assert_kernels_match_stock_ops(&sae, &x, false);
    }
}
