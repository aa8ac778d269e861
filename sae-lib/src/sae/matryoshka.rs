//! Matryoshka BatchTopK SAE — Part 2's featured variant (Bussmann et al. 2025,
//! <https://arxiv.org/abs/2503.17547>; Nabeshima 2024). The dictionary is read as nested
//! prefixes `m_1 < m_2 < … < d_sae`, and each prefix alone must reconstruct x:
//! `L = mean_j ‖x − (f[:, :m_j] W_dec[:m_j] + b_dec)‖² + α·AuxK`. Early features are pushed to
//! carry general, high-variance directions; later ones specialise, which counters feature
//! absorption and splitting as the dictionary grows. Activations are BatchTopK's, and it is
//! saved the same way (SAELens "jumprelu" with `threshold`).

use candle_core::{DType, Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use super::batch_topk::BatchTopKSae;
use super::common::{auxk_loss, SaeParams};
use super::topk::AUX_COEFFICIENT;
use super::{LossContext, LossOutput, Sae, SaeConfig};
use crate::Result;

/// Default nested sizes: `d_sae/16, d_sae/8, d_sae/4, d_sae/2, d_sae`.
pub fn default_prefixes(d_sae: usize) -> Vec<usize> {
    let mut p: Vec<usize> = [16, 8, 4, 2, 1]
        .iter()
        .map(|div| (d_sae / div).max(1))
        .collect();
    p.dedup();
    p
}

/// A Matryoshka BatchTopK SAE.
#[derive(Debug, Clone)]
pub struct MatryoshkaSae {
    inner: BatchTopKSae,
    prefixes: Vec<usize>,
}

impl MatryoshkaSae {
    pub fn new(
        cfg: SaeConfig,
        rng: &mut ChaCha8Rng,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let prefixes = cfg
            .prefixes
            .clone()
            .unwrap_or_else(|| default_prefixes(cfg.d_sae));
        Ok(Self {
            inner: BatchTopKSae::new(cfg, rng, dtype, device)?,
            prefixes,
        })
    }

    pub fn prefixes(&self) -> &[usize] {
        &self.prefixes
    }
}

impl Sae for MatryoshkaSae {
    fn config(&self) -> &SaeConfig {
        self.inner.config()
    }
    fn params(&self) -> &SaeParams {
        self.inner.params()
    }
    fn vars(&self) -> Vec<(&'static str, Var)> {
        self.inner.vars()
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.encode(x)
    }
    fn loss(&self, x: &Tensor, ctx: &LossContext) -> Result<LossOutput> {
        let (f, pre) = self.inner.batch_topk(x)?;
        let w_dec = self.inner.params.w_dec.as_tensor();
        let b_dec = self.inner.params.b_dec.as_tensor();
        // Accumulate the reconstruction prefix by prefix: each block adds its features' part.
        let mut partial = b_dec.unsqueeze(0)?.broadcast_as(x.shape())?.contiguous()?;
        let mut prefix_losses = Vec::with_capacity(self.prefixes.len());
        let mut start = 0;
        for &end in &self.prefixes {
            partial = (partial
                + f.narrow(1, start, end - start)?.matmul(&w_dec.narrow(
                    0,
                    start,
                    end - start,
                )?)?)?;
            prefix_losses.push((&partial - x)?.sqr()?.sum(1)?.mean(0)?);
            start = end;
        }
        let sae_out = partial;
        let mse = (Tensor::stack(&prefix_losses, 0)?.mean(0))?;
        let aux = (auxk_loss(
            &pre,
            ctx.dead.as_ref(),
            &(x - &sae_out)?,
            w_dec,
            self.config().d_in / 2,
            &|indices| Ok(pre.gather(indices, 1)?),
        )? * AUX_COEFFICIENT)?;
        let full = prefix_losses.last().expect("at least one prefix").clone();
        let total = (&mse + &aux)?;
        Ok(LossOutput {
            total,
            terms: vec![("mse", full), ("matryoshka_mse", mse), ("auxk", aux)],
            feature_acts: super::FeatureActs::Dense(f),
            sae_out,
        })
    }
    fn after_step(&self) -> Result<()> {
        self.inner.after_step()
    }
}
