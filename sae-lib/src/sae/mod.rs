//! Sparse autoencoders: one file per variant behind the [`Sae`] trait, registered once in
//! `registry!` (which generates [`Architecture`] and [`AnySae`]; an exhaustive `match` catches
//! a forgotten variant).
//!
//! Every variant shares the decoder `x̂ = f W_dec + b_dec` and the SAELens tensor names
//! (`W_enc` `(d_in, d_sae)`, `b_enc`, `W_dec` `(d_sae, d_in)`, `b_dec`), which appear only at
//! the save/load boundary ([`mod@format`]).

pub mod batch_topk;
mod by_feature;
pub mod common;
pub mod dense;
pub mod dictionary_learning;
pub mod format;
pub mod gated;
pub mod gemma_scope;
pub mod grads;
pub mod jumprelu;
pub mod kernels;
pub mod matryoshka;
pub mod nested;
mod npz;
mod panels;
mod releases;
pub mod relu;
pub mod select;
pub mod source;
pub mod sparse;
pub mod sparsify;
pub mod step;
pub mod topk;

use candle_core::{Tensor, Var};

pub use common::SaeParams;
use serde::{Deserialize, Serialize};
pub use source::locate;

pub use batch_topk::BatchTopKSae;
pub use gated::GatedSae;
pub use jumprelu::JumpReluSae;
pub use matryoshka::MatryoshkaSae;
pub use relu::{ReluSae, SparsityPenalty};
pub use topk::TopKSae;

use crate::{Error, Result};

/// What sets a variant's sparsity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsity {
    /// `k` active features per input (on average, for the batch-level variants).
    K,
    /// A penalty on the activations' L1 norm, weighted by λ.
    L1,
    /// A penalty on the number of active features, weighted by λ.
    L0,
}

/// A variant's training defaults, chosen by a sweep (BENCHMARKS.md) for inputs the trainer
/// has normalised to `E‖x − x̄‖ = √d_in`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VariantDefaults {
    /// Adam's learning rate.
    pub lr: f64,
    /// The penalty coefficient λ (unused by `k`-sparsity variants).
    pub sparsity_coefficient: f64,
    /// Active features per input (`k`-sparsity variants).
    pub k: Option<usize>,
    /// Fraction of steps at the end over which the learning rate decays to 0.
    pub lr_decay_frac: f64,
    /// How `b_dec` starts.
    pub b_dec_init: crate::train::BDecInit,
}

impl VariantDefaults {
    /// The shared recipe at `d_sae` features with penalty coefficient `coefficient`: the
    /// width's rate ([`default_lr`]), the learning rate decaying to 0 over the last 20% of
    /// steps (Anthropic, April 2024) and `b_dec` at the inputs' geometric median.
    pub fn shared(d_sae: usize, coefficient: f64) -> Self {
        Self {
            lr: default_lr(d_sae),
            sparsity_coefficient: coefficient,
            k: None,
            lr_decay_frac: 0.2,
            b_dec_init: crate::train::BDecInit::GeometricMedian,
        }
    }
}

/// The default learning rate for a dictionary of `d_sae` features, for every architecture:
/// sparsify's `2e-4 / √(d_sae / 2¹⁴)` (Gao et al. 2024, §2.4: the best rate falls with width),
/// 4e-4 at 4,096 features. Anthropic's 5e-5 suits their runs of hundreds of thousands of
/// steps; in a default run of 2,000 it leaves the SAE barely trained (BENCHMARKS.md).
pub fn default_lr(d_sae: usize) -> f64 {
    2e-4 / (d_sae.max(1) as f64 / 16384.0).sqrt()
}

/// What building a fresh SAE needs.
pub struct Init<'a> {
    /// The seeded generator every random weight is drawn from, so a seed fixes the SAE.
    pub rng: &'a mut rand_chacha::ChaCha8Rng,
    /// Dtype of the trained parameters (f32 master weights under mixed precision).
    pub dtype: candle_core::DType,
    /// Where the parameters live.
    pub device: &'a candle_core::Device,
    /// The ReLU SAE's penalty (other variants ignore it).
    pub penalty: SparsityPenalty,
    /// JumpReLU's starting threshold θ₀ (default [`jumprelu::INIT_THRESHOLD`]; other
    /// variants ignore it).
    pub init_threshold: Option<f64>,
}

/// The name [`Sae::vars`] gives the encoder, held as `W_encᵀ` `(d_sae, d_in)`; saved files
/// carry SAELens' `W_enc` `(d_in, d_sae)`.
pub const W_ENC_T: &str = "W_enc_T";

/// Reads a saved tensor by its SAELens name, checking its shape.
pub type TensorGetter<'a> = dyn FnMut(&str, &[usize]) -> Result<Tensor> + 'a;

/// What each variant declares for the registry: its names, what sets its sparsity, its
/// defaults and how it is built. Adding a variant is its file plus one line in the
/// `registry!` list below.
pub trait Variant: Sae + Sized {
    /// The CLI name.
    const NAME: &'static str;
    /// Other accepted names (SAELens').
    const ALIASES: &'static [&'static str] = &[];
    /// The SAELens architecture it is saved as.
    const SAELENS: &'static str;
    /// Whether a saved SAELens `SAELENS` SAE loads as this variant (BatchTopK and Matryoshka
    /// are saved as, and load back as, JumpReLU).
    const LOADS: bool = true;
    /// What sets its sparsity: `k`, or an L1 or L0 penalty coefficient.
    const SPARSITY: Sparsity;

    /// Defaults for a dictionary of `d_sae` features.
    fn defaults(d_sae: usize) -> VariantDefaults;

    /// A freshly initialised SAE.
    fn init(cfg: SaeConfig, init: &mut Init) -> Result<Self>;

    /// An SAE from its saved tensors.
    fn from_tensors(_cfg: SaeConfig, _get: &mut TensorGetter) -> Result<Self> {
        Err(Error::Input(format!(
            "{} SAEs are saved as SAELens `{}` and load as that",
            Self::NAME,
            Self::SAELENS
        )))
    }
}

/// Generates [`Architecture`] and [`AnySae`] from one list of `Variant => type` lines.
macro_rules! registry {
    ($($arch:ident => $ty:ident,)*) => {
        /// Which SAE variant.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum Architecture {
            $(
                #[doc = concat!("[`", stringify!($ty), "`]'s architecture.")]
                $arch,
            )*
        }

        /// Any SAE variant.
        #[derive(Debug, Clone)]
        pub enum AnySae {
            $(
                #[doc = concat!("A [`", stringify!($ty), "`].")]
                $arch($ty),
            )*
        }

        impl Architecture {
            /// Every variant, for sweeps and property tests.
            pub const ALL: &'static [Architecture] = &[$(Self::$arch,)*];

            /// The CLI name.
            pub fn name(self) -> &'static str {
                match self { $(Self::$arch => <$ty as Variant>::NAME,)* }
            }

            /// The SAELens architecture it is saved as.
            pub fn saelens_name(self) -> &'static str {
                match self { $(Self::$arch => <$ty as Variant>::SAELENS,)* }
            }

            /// What sets its sparsity.
            pub fn sparsity(self) -> Sparsity {
                match self { $(Self::$arch => <$ty as Variant>::SPARSITY,)* }
            }

            /// Its training defaults for a dictionary of `d_sae` features.
            pub fn defaults(self, d_sae: usize) -> VariantDefaults {
                match self { $(Self::$arch => <$ty as Variant>::defaults(d_sae),)* }
            }

            /// Parses the CLI name (or SAELens' name).
            pub fn parse(name: &str) -> Result<Self> {
                $(
                    if name == <$ty as Variant>::NAME
                        || <$ty as Variant>::ALIASES.contains(&name)
                    {
                        return Ok(Self::$arch);
                    }
                )*
                let names: Vec<&str> = Self::ALL.iter().map(|a| a.name()).collect();
                Err(Error::Input(format!(
                    "unknown SAE architecture `{name}` (supported: {})",
                    names.join(", ")
                )))
            }

            /// The variant a saved SAELens `architecture` loads as.
            pub fn from_saelens(name: &str) -> Result<Self> {
                $(
                    if <$ty as Variant>::LOADS && name == <$ty as Variant>::SAELENS {
                        return Ok(Self::$arch);
                    }
                )*
                Err(Error::Input(format!(
                    "SAELens architecture `{name}` is not supported"
                )))
            }
        }

        impl AnySae {
            /// A freshly initialised SAE of `cfg.architecture`.
            pub fn init(cfg: SaeConfig, init: &mut Init) -> Result<Self> {
                Ok(match cfg.architecture {
                    $(Architecture::$arch => Self::$arch(<$ty as Variant>::init(cfg, init)?),)*
                })
            }

            /// An SAE of `cfg.architecture` from its saved tensors.
            pub fn from_tensors(cfg: SaeConfig, get: &mut TensorGetter) -> Result<Self> {
                Ok(match cfg.architecture {
                    $(Architecture::$arch => {
                        Self::$arch(<$ty as Variant>::from_tensors(cfg, get)?)
                    })*
                })
            }

            /// The variant itself.
            pub fn inner(&self) -> &dyn Sae {
                match self { $(Self::$arch(s) => s,)* }
            }

            /// The variant itself, mutably.
            pub fn inner_mut(&mut self) -> &mut dyn Sae {
                match self { $(Self::$arch(s) => s,)* }
            }
        }
    };
}

registry! {
    Relu => ReluSae,
    TopK => TopKSae,
    BatchTopK => BatchTopKSae,
    JumpRelu => JumpReluSae,
    Gated => GatedSae,
    Matryoshka => MatryoshkaSae,
}

impl Architecture {
    /// Whether sparsity is set by `k` rather than a penalty coefficient.
    pub fn uses_k(self) -> bool {
        self.sparsity() == Sparsity::K
    }
}

/// Where the SAE's inputs come from, recorded in SAELens' `metadata`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeMetadata {
    /// The model the activations came from: a Hub id, a local directory or a `.gguf` path.
    pub model_name: String,
    /// The hook point, in TransformerLens' naming (`blocks.5.hook_mlp_out`).
    pub hook_name: String,
    /// Tokens kept per document when the activations were collected.
    pub context_size: usize,
    /// Whether a BOS token was put before each document (sae-lib's collection does not).
    pub prepend_bos: bool,
    /// The text the activations came from: a Hub dataset id or a local path.
    pub dataset_path: String,
    /// How many of `dataset_path`'s documents, from its first, the activations were collected
    /// from (at most), so that an evaluation on the same text can start after them (`sae
    /// eval`). `None` where that was not recorded (SAELens' folders).
    pub training_docs: Option<usize>,
    /// Tokens left out of its training activations; spliced into the model, the SAE leaves
    /// them as they are.
    #[serde(default)]
    pub filter: crate::data::TokenFilter,
}

impl Default for SaeMetadata {
    fn default() -> Self {
        Self {
            model_name: crate::TUTORIAL_MODEL.into(),
            hook_name: "blocks.5.hook_mlp_out".into(),
            context_size: 128,
            prepend_bos: false,
            dataset_path: crate::TUTORIAL_DATASET.into(),
            training_docs: None,
            filter: Default::default(),
        }
    }
}

impl SaeMetadata {
    /// The provenance of activations read from a store.
    pub fn of_store(meta: &crate::data::StoreMeta) -> Self {
        Self {
            model_name: meta.model.clone(),
            hook_name: meta.hook.to_string(),
            context_size: meta.context_size,
            prepend_bos: false,
            dataset_path: meta.dataset.clone(),
            training_docs: Some(meta.docs_read()),
            filter: meta.filter,
        }
    }
}

/// Shape and provenance of an SAE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SaeConfig {
    /// Which variant.
    pub architecture: Architecture,
    /// Width of the activations it reads and reconstructs.
    pub d_in: usize,
    /// Number of features (dictionary size).
    pub d_sae: usize,
    /// Active features per input for TopK-style variants.
    #[serde(default)]
    pub k: Option<usize>,
    /// Matryoshka's nested dictionary sizes (default: d_sae/16, /8, /4, /2, d_sae).
    #[serde(default)]
    pub prefixes: Option<Vec<usize>>,
    /// Where its inputs come from.
    pub metadata: SaeMetadata,
}

/// Checks a dictionary's size and `k` (for `k`-sparsity variants) before any work starts.
pub fn validate_shape(arch: Architecture, d_sae: usize, k: Option<usize>) -> Result<()> {
    if d_sae == 0 {
        return Err(Error::Input("d_sae must be at least 1 (got 0)".into()));
    }
    match (arch.uses_k(), k) {
        (true, None) => Err(Error::Input(format!(
            "{} SAEs need k, the number of active features per input",
            arch.name()
        ))),
        (true, Some(0)) => Err(Error::Input("k must be at least 1 (got 0)".into())),
        (true, Some(k)) if k > d_sae => Err(Error::Input(format!(
            "k = {k} is more than d_sae = {d_sae}: an SAE cannot keep more active features \
             than it has"
        ))),
        (false, Some(_)) => Err(Error::Input(format!(
            "k applies to topk, batchtopk and matryoshka; {} sets its sparsity with a penalty \
             coefficient",
            arch.name()
        ))),
        _ => Ok(()),
    }
}

impl SaeConfig {
    /// Checks the shape: `d_in`, `d_sae` and `k` (see [`validate_shape`]).
    pub fn validate(&self) -> Result<()> {
        if self.d_in == 0 {
            return Err(Error::Input("d_in must be at least 1 (got 0)".into()));
        }
        validate_shape(self.architecture, self.d_sae, self.k)
    }

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
    /// `(d_sae,)` 1 for dead features (for AuxK), when any are tracked. On any device; AuxK
    /// reads it on the host, so the trainer keeps it there.
    pub dead: Option<Tensor>,
}

/// A loss and its named parts (all scalars), plus what the forward produced.
#[derive(Debug, Clone)]
pub struct LossOutput {
    /// The scalar that is differentiated: the sum of `terms`.
    pub total: Tensor,
    /// `("mse", ..)`, then each variant's own terms (`"l1"`, `"auxk"`, ...).
    pub terms: Vec<(&'static str, Tensor)>,
    /// The feature activations (detached).
    pub feature_acts: FeatureActs,
    /// `(batch, d_in)` reconstruction.
    pub sae_out: Tensor,
}

/// What a variant's training-time encoding produces.
#[derive(Debug, Clone)]
pub struct Encoding {
    /// The feature activations, differentiable.
    pub acts: FeatureActs,
    /// The pre-activations the variant's auxiliary losses read: `(batch, d_sae)`, or for
    /// Gated's sparse step the gate's at the selected features only, `(batch, k)`.
    pub hidden_pre: Option<Tensor>,
}

impl Encoding {
    /// Dense activations and the pre-activations they came from.
    pub fn dense(acts: Tensor, hidden_pre: Tensor) -> Self {
        Self {
            acts: FeatureActs::Dense(acts),
            hidden_pre: Some(hidden_pre),
        }
    }

    /// Each input's selected activations `values` at `indices`, both `(batch, k)`, among the
    /// `d_sae` columns of the pre-activations `hidden_pre` they came from.
    pub fn sparse(values: Tensor, indices: Tensor, hidden_pre: Tensor) -> Result<Self> {
        let d_sae = hidden_pre.dim(1)?;
        Ok(Self {
            acts: FeatureActs::Sparse {
                values,
                indices,
                d_sae,
                flat_at_zero: false,
            },
            hidden_pre: Some(hidden_pre),
        })
    }

    /// The same encoding, declaring that its zero activations pass no gradient back (a ReLU
    /// is flat below zero): the sparse decoder then skips their gradients, one dot product
    /// per padded candidate.
    pub fn flat_at_zero(mut self) -> Self {
        if let FeatureActs::Sparse { flat_at_zero, .. } = &mut self.acts {
            *flat_at_zero = true;
        }
        self
    }

    /// The hidden pre-activations.
    pub fn pre(&self) -> Result<&Tensor> {
        self.hidden_pre
            .as_ref()
            .ok_or_else(|| Error::Training("this SAE's encoding has no pre-activations".into()))
    }
}

/// A batch's feature activations. TopK keeps them sparse so neither its decoder nor the
/// trainer's statistics build the `(batch, d_sae)` matrix.
#[derive(Debug, Clone)]
pub enum FeatureActs {
    /// `(batch, d_sae)`.
    Dense(Tensor),
    /// Each input's selected features: `values` at `indices`, both `(batch, k)`, among `d_sae`.
    /// A zero value is a feature that was selected but did not fire; with `flat_at_zero` it
    /// also takes no gradient (JumpReLU's threshold learns from zeros just below it).
    Sparse {
        /// `(batch, k)` activations of the selected features.
        values: Tensor,
        /// `(batch, k)` `u32` feature indices.
        indices: Tensor,
        /// Number of features the indices range over.
        d_sae: usize,
        /// Whether zero values take no gradient (JumpReLU).
        flat_at_zero: bool,
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
                ..
            } => common::densify(values, indices, *d_sae),
        }
    }

    /// The reconstruction `f W_dec + b_dec`; sparse activations read only their `k` decoder
    /// rows per input.
    pub fn decode(&self, params: &SaeParams) -> Result<Tensor> {
        let acts = self.values();
        let w_dec = common::cast_as(&params.w_dec, acts)?;
        let b_dec = common::cast_as(&params.b_dec, acts)?;
        match self {
            Self::Dense(f) => kernels::add_row(&f.matmul(&w_dec)?, &b_dec),
            Self::Sparse {
                values,
                indices,
                flat_at_zero,
                ..
            } => common::sparse_decode(values, indices, &w_dec, &b_dec, *flat_at_zero),
        }
    }

    /// The same activations, out of the autograd graph.
    pub fn detach(&self) -> Self {
        match self {
            Self::Dense(f) => Self::Dense(f.detach()),
            Self::Sparse {
                values,
                indices,
                d_sae,
                flat_at_zero,
            } => Self::Sparse {
                values: values.detach(),
                indices: indices.clone(),
                d_sae: *d_sae,
                flat_at_zero: *flat_at_zero,
            },
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
                ..
            } => {
                let values = values.flatten_all()?.to_dtype(candle_core::DType::F32)?;
                let indices = indices.flatten_all()?;
                if !crate::ops::host_f32(&[&values]) {
                    // Counted where the activations are: a GPU sends back `d_sae` counts
                    // rather than `(batch, k)` values and indices, 1 MB a TopK step.
                    let fired = values.ne(0f32)?.to_dtype(candle_core::DType::F32)?;
                    let zeros = Tensor::zeros(*d_sae, candle_core::DType::F32, values.device())?;
                    return Ok(zeros.index_add(&indices, &fired, 0)?.to_vec1::<f32>()?);
                }
                // Whole counts per chunk in parallel, then added: exact, so in any order.
                use rayon::prelude::*;
                const CHUNK: usize = 1 << 16;
                let indices = indices.to_vec1::<u32>()?;
                let parts: Vec<Vec<u32>> = kernels::with_host(&values, "the values", |v| {
                    Ok((v.par_chunks(CHUNK).zip(indices.par_chunks(CHUNK)))
                        .map(|(v, j)| {
                            let mut counts = vec![0u32; *d_sae];
                            for (&v, &j) in v.iter().zip(j) {
                                counts[j as usize] += u32::from(v != 0.0);
                            }
                            counts
                        })
                        .collect())
                })?;
                let mut counts = vec![0u32; *d_sae];
                for part in parts {
                    counts.iter_mut().zip(part).for_each(|(c, p)| *c += p);
                }
                Ok(counts.into_iter().map(|c| c as f32).collect())
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

/// A sparse autoencoder. A variant states only what differs: its encoding (with the hidden
/// pre-activations its auxiliary losses read), its auxiliary losses, and what it does after an
/// optimiser step. Decoding, the reconstruction term and the total live here, once.
pub trait Sae {
    /// Its shape and provenance.
    fn config(&self) -> &SaeConfig;

    /// Its shape and provenance, to amend what it was trained on (a stream learns how far
    /// it read only as it trains).
    fn config_mut(&mut self) -> &mut SaeConfig;

    /// The encoder and decoder parameters every variant has.
    fn params(&self) -> &SaeParams;

    /// The name `params().b_enc` is saved under (`b_gate` for the Gated SAE).
    fn b_enc_name(&self) -> &'static str {
        "b_enc"
    }

    /// Tensors beyond the shared four, under their SAELens names (trained or not).
    fn extra_vars(&self) -> Vec<(&'static str, Var)> {
        vec![]
    }

    /// Per-feature `(d_sae,)` tensors beyond the shared four, each with the value a resampled
    /// feature restarts from.
    fn feature_vars(&self) -> Vec<(Var, f64)> {
        vec![]
    }

    /// Variables that learn at a multiple of the run's learning rate `lr`, by name (the others
    /// at 1×).
    fn lr_scales(&self, _lr: f64) -> Vec<(&'static str, f64)> {
        vec![]
    }

    /// Every tensor under its SAELens name (the encoder as [`W_ENC_T`], transposed): the shared
    /// four, then the variant's own.
    fn vars(&self) -> Vec<(&'static str, Var)> {
        let p = self.params();
        let mut v = vec![
            (W_ENC_T, p.w_enc_t.clone()),
            (self.b_enc_name(), p.b_enc.clone()),
            ("W_dec", p.w_dec.clone()),
            ("b_dec", p.b_dec.clone()),
        ];
        v.extend(self.extra_vars());
        v
    }

    /// The decoder `(d_sae, d_in)`.
    fn w_dec(&self) -> &Var {
        &self.params().w_dec
    }

    /// The decoder bias `(d_in,)`.
    fn b_dec(&self) -> &Var {
        &self.params().b_dec
    }

    /// Feature activations `(batch, d_sae)` of inputs `(batch, d_in)`, as at inference.
    fn encode(&self, x: &Tensor) -> Result<Tensor>;

    /// The training-time encoding (it may differ from inference: BatchTopK selects over the
    /// batch, JumpReLU carries pseudo-derivatives, TopK stays sparse).
    fn encode_for_training(&self, x: &Tensor, _ctx: &LossContext) -> Result<Encoding> {
        Ok(Encoding {
            acts: FeatureActs::Dense(self.encode(x)?),
            hidden_pre: None,
        })
    }

    /// Reconstruction `f W_dec + b_dec` of dense activations `(batch, d_sae)`.
    fn decode(&self, f: &Tensor) -> Result<Tensor> {
        FeatureActs::Dense(f.clone()).decode(self.params())
    }

    /// Loss terms beyond the reconstruction error (none by default).
    fn aux_losses(
        &self,
        _x: &Tensor,
        _enc: &Encoding,
        _sae_out: &Tensor,
        _ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        Ok(vec![])
    }

    /// Called after each optimiser step (e.g. to renormalise decoder rows).
    fn after_step(&self) -> Result<()> {
        Ok(())
    }

    /// Reconstruction error `‖x − x̂‖²` summed over `d_in`, averaged over the batch, plus the
    /// variant's own terms. The SAE computes in `x`'s dtype; the terms and their total are
    /// reduced in at least f32 (as autocast does), so bf16 training sums no long bf16 series.
    fn loss(&self, x: &Tensor, ctx: &LossContext) -> Result<LossOutput> {
        let enc = self.encode_for_training(x, ctx)?;
        let sae_out = enc.acts.decode(self.params())?;
        let mut terms = vec![("mse", common::squared_error(&sae_out, x)?)];
        for (name, t) in self.aux_losses(x, &enc, &sae_out, ctx)? {
            terms.push((name, common::widen(&t)?));
        }
        let mut total = terms[0].1.clone();
        for (_, t) in &terms[1..] {
            total = (total + t)?;
        }
        Ok(LossOutput {
            total,
            terms,
            feature_acts: enc.acts.detach(),
            sae_out,
        })
    }
}

impl Sae for AnySae {
    fn config(&self) -> &SaeConfig {
        self.inner().config()
    }
    fn config_mut(&mut self) -> &mut SaeConfig {
        self.inner_mut().config_mut()
    }
    fn params(&self) -> &SaeParams {
        self.inner().params()
    }
    fn b_enc_name(&self) -> &'static str {
        self.inner().b_enc_name()
    }
    fn extra_vars(&self) -> Vec<(&'static str, Var)> {
        self.inner().extra_vars()
    }
    fn feature_vars(&self) -> Vec<(Var, f64)> {
        self.inner().feature_vars()
    }
    fn lr_scales(&self, lr: f64) -> Vec<(&'static str, f64)> {
        self.inner().lr_scales(lr)
    }
    fn encode(&self, x: &Tensor) -> Result<Tensor> {
        self.inner().encode(x)
    }
    fn encode_for_training(&self, x: &Tensor, ctx: &LossContext) -> Result<Encoding> {
        self.inner().encode_for_training(x, ctx)
    }
    fn aux_losses(
        &self,
        x: &Tensor,
        enc: &Encoding,
        sae_out: &Tensor,
        ctx: &LossContext,
    ) -> Result<Vec<(&'static str, Tensor)>> {
        self.inner().aux_losses(x, enc, sae_out, ctx)
    }
    fn after_step(&self) -> Result<()> {
        self.inner().after_step()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// A sparse batch's counts on the host and on the stock path (a GPU's) against the count
    /// of its densified form; a feature may appear in several rows, and a selected zero does
    /// not count.
    #[test]
    fn sparse_firing_counts_match_the_dense_count() {
        let dev = Device::Cpu;
        let values = Tensor::new(
            &[[1.5f32, 0.0, 2.0], [0.5, 3.0, 0.0], [1.0, 0.0, 4.0]],
            &dev,
        );
        let indices = Tensor::new(&[[2u32, 0, 5], [5, 2, 1], [0, 3, 5]], &dev);
        let acts = FeatureActs::Sparse {
            values: values.unwrap(),
            indices: indices.unwrap(),
            d_sae: 7,
            flat_at_zero: false,
        };
        let want = crate::eval::metrics::firing_counts(&acts.dense().unwrap()).unwrap();
        assert_eq!(want, [1.0, 0.0, 2.0, 0.0, 0.0, 3.0, 0.0]);
        assert_eq!(acts.firing_counts().unwrap(), want);
        let stock = crate::ops::with_stock_ops(|| acts.firing_counts()).unwrap();
        assert_eq!(stock, want);
    }
}
