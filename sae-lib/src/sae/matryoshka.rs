//! Matryoshka BatchTopK SAE — Part 2's featured variant (Bussmann et al. 2025,
//! <https://arxiv.org/abs/2503.17547>; Nabeshima 2024). The dictionary is read as nested
//! prefixes `m_1 < m_2 < … < d_sae`, and each prefix alone must reconstruct x:
//! `L = Σ_j ‖x − (f[:, :m_j] W_dec[:m_j] + b_dec)‖² + α·AuxK`: the full dictionary's term is
//! the shared reconstruction loss, and the inner prefixes' terms are this variant's auxiliary
//! loss (as SAELens sums them). Early features are pushed to
//! carry general, high-variance directions; later ones specialise, which counters feature
//! absorption and splitting as the dictionary grows. Activations are BatchTopK's, and it is
//! saved the same way (SAELens "jumprelu" with `threshold`).

use candle_core::{Tensor, Var};

use super::batch_topk::BatchTopKSae;
use super::common::{cast_as, squared_error, SaeParams};
use super::nested::nested_decode;
use super::topk::topk_defaults;
use super::{
    Encoding, FeatureActs, Init, LossContext, Sae, SaeConfig, Sparsity, Variant, VariantDefaults,
};
use crate::{Error, Result};

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
    /// The nested dictionary sizes, ascending, the last being `d_sae`.
    pub fn prefixes(&self) -> &[usize] {
        &self.prefixes
    }

    /// `‖x − x̂_j‖²` (summed over `d_in`, averaged over the batch) for each inner prefix `j`:
    /// the reconstruction from the first `m_j` features only, accumulated block by block.
    pub fn prefix_losses(&self, x: &Tensor, f: &Tensor) -> Result<Vec<Tensor>> {
        let p = &self.inner.params;
        let w_dec = cast_as(&p.w_dec, f)?;
        let mut partial = cast_as(&p.b_dec, f)?
            .unsqueeze(0)?
            .broadcast_as(x.shape())?
            .contiguous()?;
        let mut losses = Vec::new();
        let mut start = 0;
        for &end in &self.prefixes[..self.prefixes.len() - 1] {
            let block = f.narrow(1, start, end - start)?;
            partial = (partial + block.matmul(&w_dec.narrow(0, start, end - start)?)?)?;
            losses.push(squared_error(&partial, x)?);
            start = end;
        }
        Ok(losses)
    }

    /// [`prefix_losses`](Self::prefix_losses) of sparse activations: each selected decoder
    /// row is read once for all prefixes (`nested.rs`).
    fn sparse_prefix_losses(
        &self,
        x: &Tensor,
        values: &Tensor,
        indices: &Tensor,
    ) -> Result<Vec<Tensor>> {
        let p = &self.inner.params;
        let inner = &self.prefixes[..self.prefixes.len() - 1];
        if inner.is_empty() {
            return Ok(Vec::new());
        }
        nested_decode(
            values,
            indices,
            &cast_as(&p.w_dec, values)?,
            &cast_as(&p.b_dec, values)?,
            inner,
        )?
        .iter()
        .map(|x_hat| squared_error(x_hat, x))
        .collect()
    }
}

impl Variant for MatryoshkaSae {
    const NAME: &'static str = "matryoshka";
    const SAELENS: &'static str = "jumprelu";
    const LOADS: bool = false;
    const SPARSITY: Sparsity = Sparsity::K;

    fn defaults(d_sae: usize) -> VariantDefaults {
        topk_defaults(d_sae)
    }

    fn init(cfg: SaeConfig, init: &mut Init) -> Result<Self> {
        let prefixes = cfg
            .prefixes
            .clone()
            .unwrap_or_else(|| default_prefixes(cfg.d_sae));
        if prefixes.is_empty()
            || prefixes.last() != Some(&cfg.d_sae)
            || prefixes.windows(2).any(|w| w[0] >= w[1])
            || prefixes[0] == 0
        {
            return Err(Error::Input(format!(
                "Matryoshka prefixes must increase from at least 1 to d_sae = {} (got {prefixes:?})",
                cfg.d_sae
            )));
        }
        Ok(Self {
            inner: BatchTopKSae::init(cfg, init)?,
            prefixes,
        })
    }
}

impl Sae for MatryoshkaSae {
    fn config(&self) -> &SaeConfig {
        self.inner.config()
    }
    fn config_mut(&mut self) -> &mut SaeConfig {
        self.inner.config_mut()
    }
    fn params(&self) -> &SaeParams {
        self.inner.params()
    }
    fn extra_vars(&self) -> Vec<(&'static str, Var)> {
        self.inner.extra_vars()
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.inner.encode(x)
    }
    fn encode_for_training(&self, x: &Tensor, ctx: &LossContext) -> Result<Encoding> {
        self.inner.encode_for_training(x, ctx)
    }
    fn aux_losses(
        &self,
        x: &Tensor,
        enc: &Encoding,
        sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        let inner = match &enc.acts {
            FeatureActs::Dense(f) => self.prefix_losses(x, f)?,
            FeatureActs::Sparse {
                values, indices, ..
            } => self.sparse_prefix_losses(x, values, indices)?,
        };
        let mut terms = Vec::new();
        if !inner.is_empty() {
            terms.push(("prefix_mse", Tensor::stack(&inner, 0)?.sum(0)?));
        }
        terms.push(self.inner.auxk(x, enc, sae_out, ctx)?);
        Ok(terms)
    }
    fn after_step(&self) -> Result<()> {
        self.inner.after_step()
    }
}
