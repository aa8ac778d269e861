//! Hookable transformer language models, one file per architecture, behind the [`Model`] enum
//! that collection, training and evaluation use.

pub mod batch;
pub mod gpt_neox;
pub mod load;
pub mod rotary;

use candle_core::{DType, Device, Tensor};

pub use batch::{Padding, TokenBatch};
pub use gpt_neox::GptNeoX;
pub use load::{load_model, load_tokenizer, ModelSource};

use crate::hooks::Hooks;
use crate::Result;

/// The MLP nonlinearity, by its HF `hidden_act` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
    /// `silu` / `swish`.
    Silu,
}

impl Activation {
    /// Maps HF's `hidden_act`; the error lists what is supported.
    pub fn from_hf_name(name: &str) -> std::result::Result<Self, String> {
        match name {
            "gelu" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" => Ok(Self::GeluTanh),
            "relu" => Ok(Self::Relu),
            "silu" | "swish" => Ok(Self::Silu),
            other => Err(format!(
                "hidden_act `{other}` is not supported (supported: gelu, gelu_new, \
                 gelu_pytorch_tanh, relu, silu)"
            )),
        }
    }

    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu => x.gelu_erf()?,
            Self::GeluTanh => x.gelu()?,
            Self::Relu => x.relu()?,
            Self::Silu => x.silu()?,
        })
    }
}

/// A loaded language model of any supported architecture.
#[derive(Debug, Clone)]
pub enum Model {
    GptNeoX(GptNeoX),
}

impl Model {
    /// Runs the model, consulting `hooks`; logits `(batch, seq, vocab)` in f32, or `None` when
    /// the hooks stopped the forward early.
    pub fn forward(&self, batch: &TokenBatch, hooks: &mut Hooks) -> Result<Option<Tensor>> {
        match self {
            Model::GptNeoX(m) => m.forward(batch, hooks),
        }
    }

    /// Number of transformer blocks.
    pub fn n_layers(&self) -> usize {
        match self {
            Model::GptNeoX(m) => m.config().num_hidden_layers,
        }
    }

    /// Width of the residual stream (the `d_in` of an SAE on any hook here).
    pub fn d_model(&self) -> usize {
        match self {
            Model::GptNeoX(m) => m.config().hidden_size,
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Model::GptNeoX(m) => m.config().vocab_size,
        }
    }

    /// The unembedding `(vocab, d_model)`.
    pub fn unembed(&self) -> &Tensor {
        match self {
            Model::GptNeoX(m) => m.unembed(),
        }
    }

    pub fn device(&self) -> &Device {
        match self {
            Model::GptNeoX(m) => m.device(),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            Model::GptNeoX(m) => m.dtype(),
        }
    }

    /// Architecture name as in HF's `model_type`.
    pub fn architecture(&self) -> &'static str {
        match self {
            Model::GptNeoX(_) => "gpt_neox",
        }
    }
}
