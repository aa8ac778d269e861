//! Sparse autoencoders: one file per variant behind the [`Sae`] trait, dispatched through
//! [`AnySae`] (an exhaustive `match` catches a forgotten variant).
//!
//! Every variant shares the decoder `x̂ = f W_dec + b_dec` and the SAELens tensor names
//! (`W_enc` `(d_in, d_sae)`, `b_enc`, `W_dec` `(d_sae, d_in)`, `b_dec`), which appear only at
//! the save/load boundary ([`format`]).

pub mod batch_topk;
pub mod common;
pub mod format;
pub mod gated;
pub mod jumprelu;
pub mod matryoshka;
pub mod relu;
pub mod sparse;
pub mod topk;

use candle_core::{Tensor, Var};

pub use common::SaeParams;
use serde::{Deserialize, Serialize};

pub use batch_topk::BatchTopKSae;
pub use gated::GatedSae;
pub use jumprelu::JumpReluSae;
pub use matryoshka::MatryoshkaSae;
pub use relu::{ReluSae, SparsityPenalty};
pub use topk::TopKSae;

use crate::Result;

/// Which SAE variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Architecture {
    /// ReLU + L1 (SAELens "standard").
    Relu,
    /// Per-input top-k (SAELens "topk").
    TopK,
    /// Batch-level top-k (saved as SAELens "jumprelu").
    BatchTopK,
    /// Learned per-feature thresholds with an L0 penalty (SAELens "jumprelu").
    JumpRelu,
    /// Separate gate and magnitude paths (SAELens "gated").
    Gated,
    /// Nested-prefix BatchTopK (saved as SAELens "jumprelu").
    Matryoshka,
}

impl Architecture {
    /// Every variant, for sweeps and property tests.
    pub const ALL: [Architecture; 6] = [
        Self::Relu,
        Self::TopK,
        Self::BatchTopK,
        Self::JumpRelu,
        Self::Gated,
        Self::Matryoshka,
    ];

    /// Parses the CLI / config name (ours or SAELens').
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "relu" | "standard" => Ok(Self::Relu),
            "topk" => Ok(Self::TopK),
            "batchtopk" | "batch_topk" => Ok(Self::BatchTopK),
            "jumprelu" => Ok(Self::JumpRelu),
            "gated" => Ok(Self::Gated),
            "matryoshka" => Ok(Self::Matryoshka),
            other => Err(crate::Error::Input(format!(
                "unknown SAE architecture `{other}` (supported: relu, topk, batchtopk, jumprelu, gated, matryoshka)"
            ))),
        }
    }

    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Relu => "relu",
            Self::TopK => "topk",
            Self::BatchTopK => "batchtopk",
            Self::JumpRelu => "jumprelu",
            Self::Gated => "gated",
            Self::Matryoshka => "matryoshka",
        }
    }

    /// Whether sparsity is set by `k` rather than a penalty coefficient.
    pub fn uses_k(self) -> bool {
        matches!(self, Self::TopK | Self::BatchTopK | Self::Matryoshka)
    }
}

/// Where the SAE's inputs come from, recorded in SAELens' `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeMetadata {
    pub model_name: String,
    pub hook_name: String,
    pub context_size: usize,
    pub prepend_bos: bool,
    pub dataset_path: String,
}

impl Default for SaeMetadata {
    fn default() -> Self {
        Self {
            model_name: "EleutherAI/pythia-70m-deduped".into(),
            hook_name: "blocks.5.hook_mlp_out".into(),
            context_size: 128,
            prepend_bos: false,
            dataset_path: "NeelNanda/pile-10k".into(),
        }
    }
}

/// Shape and provenance of an SAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeConfig {
    pub architecture: Architecture,
    pub d_in: usize,
    pub d_sae: usize,
    /// Active features per input for TopK-style variants.
    #[serde(default)]
    pub k: Option<usize>,
    /// Matryoshka's nested dictionary sizes (default: d_sae/16, /8, /4, /2, d_sae).
    #[serde(default)]
    pub prefixes: Option<Vec<usize>>,
    pub metadata: SaeMetadata,
}

impl SaeConfig {
    /// A config with no `k` and default prefixes.
    pub fn new(
        architecture: Architecture,
        d_in: usize,
        d_sae: usize,
        metadata: SaeMetadata,
    ) -> Self {
        Self {
            architecture,
            d_in,
            d_sae,
            k: None,
            prefixes: None,
            metadata,
        }
    }
}

/// What the trainer passes to a loss: the schedules' current values.
#[derive(Debug, Clone)]
pub struct LossContext {
    /// Sparsity coefficient after warm-up.
    pub sparsity_coefficient: f64,
    /// `(d_sae,)` 1 for dead features (for AuxK), when any are tracked.
    pub dead: Option<Tensor>,
}

/// A loss and its named parts (all scalars), plus what the forward produced.
#[derive(Debug, Clone)]
pub struct LossOutput {
    pub total: Tensor,
    /// `("mse", ..)`, then each variant's own terms (`"l1"`, `"aux"`, ...).
    pub terms: Vec<(&'static str, Tensor)>,
    /// The feature activations.
    pub feature_acts: FeatureActs,
    /// `(batch, d_in)` reconstruction.
    pub sae_out: Tensor,
}

/// A batch's feature activations, as a variant's loss computed them. TopK keeps them sparse so
/// the trainer's statistics never build the `(batch, d_sae)` matrix.
#[derive(Debug, Clone)]
pub enum FeatureActs {
    /// `(batch, d_sae)`.
    Dense(Tensor),
    /// Each input's selected features: `values` at `indices`, both `(batch, k)`, among `d_sae`.
    /// A zero value is a feature that was selected but did not fire.
    Sparse {
        values: Tensor,
        indices: Tensor,
        d_sae: usize,
    },
}

impl FeatureActs {
    /// `(batch, d_sae)`, densified when sparse.
    pub fn dense(&self) -> Result<Tensor> {
        match self {
            Self::Dense(f) => Ok(f.clone()),
            Self::Sparse {
                values,
                indices,
                d_sae,
            } => common::densify(values, indices, *d_sae),
        }
    }

    /// How many inputs each feature fired on, `(d_sae,)`.
    pub fn firing_counts(&self) -> Result<Vec<f32>> {
        match self {
            Self::Dense(f) => crate::eval::metrics::firing_counts(f),
            Self::Sparse {
                values,
                indices,
                d_sae,
            } => {
                let mut counts = vec![0f32; *d_sae];
                let values = values.flatten_all()?.to_dtype(candle_core::DType::F32)?;
                let indices = indices.flatten_all()?.to_vec1::<u32>()?;
                for (v, j) in values.to_vec1::<f32>()?.into_iter().zip(indices) {
                    counts[j as usize] += f32::from(v != 0.0);
                }
                Ok(counts)
            }
        }
    }

    /// Mean number of active features per input.
    pub fn l0(&self) -> Result<f64> {
        crate::eval::metrics::l0(self.values())
    }

    /// Mean L1 norm of the activations per input.
    pub fn l1(&self) -> Result<f64> {
        crate::eval::metrics::l1(self.values())
    }

    /// The stored activations: every one when dense, the selected ones when sparse. The
    /// per-input sums of L0 and L1 are the same over either.
    fn values(&self) -> &Tensor {
        match self {
            Self::Dense(f) => f,
            Self::Sparse { values, .. } => values,
        }
    }
}

/// A sparse autoencoder. Variants implement `encode` and their own loss terms; decode, forward
/// and the reconstruction loss are shared.
pub trait Sae {
    fn config(&self) -> &SaeConfig;

    /// The encoder and decoder parameters every variant has.
    fn params(&self) -> &SaeParams;

    /// Trainable parameters under their SAELens names (variants with more add theirs).
    fn vars(&self) -> Vec<(&'static str, Var)> {
        self.params().vars()
    }

    /// Feature activations `(batch, d_sae)` of inputs `(batch, d_in)`.
    fn encode(&self, x: &Tensor) -> Result<Tensor>;

    /// The decoder `(d_sae, d_in)`.
    fn w_dec(&self) -> &Var {
        &self.params().w_dec
    }

    /// The decoder bias `(d_in,)`.
    fn b_dec(&self) -> &Var {
        &self.params().b_dec
    }

    /// Reconstruction `f W_dec + b_dec`.
    fn decode(&self, f: &Tensor) -> Result<Tensor> {
        Ok(f.matmul(self.w_dec().as_tensor())?
            .broadcast_add(self.b_dec().as_tensor())?)
    }

    /// Loss terms beyond the reconstruction error (none by default).
    fn aux_losses(
        &self,
        _x: &Tensor,
        _f: &Tensor,
        _x_hat: &Tensor,
        _ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(vec![])
    }

    /// Called after each optimiser step (e.g. to renormalise decoder rows).
    fn after_step(&self) -> Result<()> {
        Ok(())
    }

    /// Reconstruction error `‖x − x̂‖²` summed over `d_in`, averaged over the batch, plus the
    /// variant's own terms.
    fn loss(&self, x: &Tensor, ctx: &LossContext) -> Result<LossOutput> {
        let feature_acts = self.encode(x)?;
        let sae_out = self.decode(&feature_acts)?;
        let mse = (&sae_out - x)?.sqr()?.sum(1)?.mean(0)?;
        let mut terms = vec![("mse", mse)];
        terms.extend(self.aux_losses(x, &feature_acts, &sae_out, ctx)?);
        let mut total = terms[0].1.clone();
        for (_, t) in &terms[1..] {
            total = (total + t)?;
        }
        Ok(LossOutput {
            total,
            terms,
            feature_acts: FeatureActs::Dense(feature_acts),
            sae_out,
        })
    }
}

/// Any SAE variant.
#[derive(Debug, Clone)]
pub enum AnySae {
    Relu(ReluSae),
    TopK(TopKSae),
    BatchTopK(BatchTopKSae),
    JumpRelu(JumpReluSae),
    Gated(GatedSae),
    Matryoshka(MatryoshkaSae),
}

macro_rules! dispatch {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            AnySae::Relu($s) => $body,
            AnySae::TopK($s) => $body,
            AnySae::BatchTopK($s) => $body,
            AnySae::JumpRelu($s) => $body,
            AnySae::Gated($s) => $body,
            AnySae::Matryoshka($s) => $body,
        }
    };
}

impl Sae for AnySae {
    fn config(&self) -> &SaeConfig {
        dispatch!(self, s => s.config())
    }
    fn vars(&self) -> Vec<(&'static str, Var)> {
        dispatch!(self, s => s.vars())
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        dispatch!(self, s => s.encode(x))
    }
    fn params(&self) -> &SaeParams {
        dispatch!(self, s => s.params())
    }
    fn decode(&self, f: &Tensor) -> Result<Tensor> {
        dispatch!(self, s => s.decode(f))
    }
    fn aux_losses(
        &self,
        x: &Tensor,
        f: &Tensor,
        x_hat: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        dispatch!(self, s => s.aux_losses(x, f, x_hat, ctx))
    }
    fn after_step(&self) -> Result<()> {
        dispatch!(self, s => s.after_step())
    }
    fn loss(&self, x: &Tensor, ctx: &LossContext) -> Result<LossOutput> {
        dispatch!(self, s => s.loss(x, ctx))
    }
}
