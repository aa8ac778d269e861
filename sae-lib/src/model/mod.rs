//! Hookable transformer language models, one file per architecture, behind the [`Model`] enum
//! that collection, training and evaluation use.

mod attention;
pub mod batch;
mod decoder;
pub mod gemma2;
pub mod gguf;
mod gguf_convert;
mod gguf_vocab;
pub mod gpt_neox;
mod hf_config;
pub mod layer_norm;
pub mod linear;
pub mod llama;
pub mod load;
pub mod rotary;
pub mod weights;

use candle_core::{DType, Device, Tensor};

use crate::sae::kernels::{simd, written_by};

pub use batch::{Padding, TokenBatch};
pub use gemma2::Gemma2;
pub use gpt_neox::GptNeoX;
pub use llama::Llama;
pub use load::{hub_id_of, load_model, load_tokenizer, ModelSource};

use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::Result;

/// The MLP nonlinearity, by its HF `hidden_act` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `gelu`: the exact, erf-based GELU.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    /// `relu`.
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

    /// Applies the nonlinearity elementwise.
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Self::Gelu if crate::ops::host_f32(&[x]) && x.is_contiguous() => {
                x.apply_op1_no_bwd(&ParallelGeluErf)?
            }
            Self::Gelu => x.gelu_erf()?,
            Self::GeluTanh => x.gelu()?,
            Self::Relu => x.relu()?,
            Self::Silu => x.silu()?,
        })
    }
}

/// The exact (erf) GELU, computed in parallel with a branch-free rational approximation of
/// erf (Eigen's `generic_fast_erf_float`, a few ulp from the true value). candle's
/// `gelu_erf` runs libm's `erff` on one thread, and on the MLP's `(tokens, 4·d)` activations
/// that was a fifth of Pythia's forward time; the parity tests bound the difference.
struct ParallelGeluErf;

/// erf(x) ≈ x·P(x²)/Q(x²) on [−4, 4] (erf is ±1 to f32 precision beyond).
#[inline(always)]
fn fast_erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for a in [
        2.770_681_4e-8,
        -2.101_024e-6,
        -5.692_506_4e-5,
        -7.349_906_3e-4,
        -2.954_600_3e-3,
        -1.609_603_3e-2,
    ] {
        p = p * x2 + a;
    }
    let mut q = -1.456_607_2e-5_f32;
    for b in [
        -2.133_740_6e-4,
        -1.682_827e-3,
        -7.373_329_2e-3,
        -1.426_474e-2,
    ] {
        q = q * x2 + b;
    }
    x * p / q
}

impl candle_core::CustomOp1 for ParallelGeluErf {
    fn name(&self) -> &'static str {
        "parallel-gelu-erf"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let (candle_core::CpuStorage::F32(data), Some((start, end))) =
            (storage, layout.contiguous_offsets())
        else {
            candle_core::bail!("parallel-gelu-erf needs a contiguous f32 tensor")
        };
        let x = &data[start..end];
        let fill = |out: &mut [std::mem::MaybeUninit<f32>]| {
            out.par_chunks_mut(4096)
                .zip(x.par_chunks(4096))
                .for_each(|(out, x)| {
                    simd(
                        #[inline(always)]
                        |_| {
                            for (o, &v) in out.iter_mut().zip(x) {
                                o.write(
                                    (fast_erf(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v,
                                );
                            }
                        },
                    )
                });
        };
        // SAFETY: the chunks of `out` pair with those of `x`, which is as long.
        let out = unsafe { written_by(x.len(), fill) };
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn fast_erf_is_within_a_few_ulp_of_erf() {
        let mut worst = 0f32;
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4;
            worst = worst.max((super::fast_erf(x) - candle_core::cpu::erf::erf_f32(x)).abs());
        }
        assert!(worst < 5e-7, "max |fast_erf - erf| = {worst}");
    }
}

/// A loaded language model of any supported architecture.
#[derive(Debug, Clone)]
pub enum Model {
    /// GPT-NeoX (the Pythia suite).
    GptNeoX(GptNeoX),
    /// Llama and the models that share its shape (SmolLM2, TinyLlama, ...), Mistral, Qwen2
    /// and Qwen3.
    Llama(Llama),
    /// Gemma 2 (Gemma Scope's model).
    Gemma2(Gemma2),
}

impl Model {
    /// Runs the model, consulting `hooks`; logits `(batch, seq, vocab)` in f32, or `None` when
    /// the hooks stopped the forward early.
    pub fn forward(&self, batch: &TokenBatch, hooks: &mut Hooks) -> Result<Option<Tensor>> {
        match self {
            Model::GptNeoX(m) => m.forward(batch, hooks),
            Model::Llama(m) => m.forward(batch, hooks),
            Model::Gemma2(m) => m.forward(batch, hooks),
        }
    }

    /// Number of transformer blocks.
    pub fn n_layers(&self) -> usize {
        match self {
            Model::GptNeoX(m) => m.config().num_hidden_layers,
            Model::Llama(m) => m.config().num_hidden_layers,
            Model::Gemma2(m) => m.config().num_hidden_layers,
        }
    }

    /// Width of the residual stream (the `d_in` of an SAE on any hook here but `attn.hook_z`).
    pub fn d_model(&self) -> usize {
        match self {
            Model::GptNeoX(m) => m.config().hidden_size,
            Model::Llama(m) => m.config().hidden_size,
            Model::Gemma2(m) => m.config().hidden_size,
        }
    }

    /// Width of the activations at `hook`: `d_model`, or at `attn.hook_z` the heads times
    /// their width.
    pub fn width(&self, hook: HookPoint) -> usize {
        if hook.kind != HookKind::Z {
            return self.d_model();
        }
        match self {
            Model::GptNeoX(m) => m.config().num_attention_heads * m.config().head_dim(),
            Model::Llama(m) => m.config().num_attention_heads * m.config().head_dim(),
            Model::Gemma2(m) => m.config().num_attention_heads * m.config().head_dim,
        }
    }

    /// Logits per position: the config's `vocab_size` (may exceed the tokenizer's).
    pub fn vocab_size(&self) -> usize {
        match self {
            Model::GptNeoX(m) => m.config().vocab_size,
            Model::Llama(m) => m.config().vocab_size,
            Model::Gemma2(m) => m.config().vocab_size,
        }
    }

    /// The unembedding `(vocab, d_model)`.
    pub fn unembed(&self) -> Result<Tensor> {
        match self {
            Model::GptNeoX(m) => m.unembed(),
            Model::Llama(m) => m.unembed(),
            Model::Gemma2(m) => m.unembed(),
        }
    }

    /// Device the weights are on.
    pub fn device(&self) -> &Device {
        match self {
            Model::GptNeoX(m) => m.device(),
            Model::Llama(m) => m.device(),
            Model::Gemma2(m) => m.device(),
        }
    }

    /// Dtype of the weights.
    pub fn dtype(&self) -> DType {
        match self {
            Model::GptNeoX(m) => m.dtype(),
            Model::Llama(m) => m.dtype(),
            Model::Gemma2(m) => m.dtype(),
        }
    }

    /// Architecture name as in HF's `model_type`.
    pub fn architecture(&self) -> &'static str {
        match self {
            Model::GptNeoX(_) => "gpt_neox",
            Model::Llama(m) => m.config().family.model_type(),
            Model::Gemma2(_) => "gemma2",
        }
    }
}
