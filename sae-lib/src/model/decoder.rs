//! The skeleton every decoder-only model here shares: embed the tokens, run the blocks (any
//! of which may stop at a hook), apply the final norm, unembed. Each model file supplies its
//! own blocks; this keeps the hook and padding plumbing in one place.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Embedding;

use super::batch::TokenBatch;
use super::linear::Linear;
use super::rotary::{Rotary, RotaryAngles};
use crate::hooks::Hooks;
use crate::Result;

/// One transformer block.
pub(crate) trait Block {
    /// The block's output, or `None` when the hooks stopped the forward inside it.
    fn forward(
        &self,
        x: Tensor,
        rotary: &RotaryAngles,
        bias: &Tensor,
        hooks: &mut Hooks,
    ) -> Result<Option<Tensor>>;
}

/// A decoder-only language model: its embedding, blocks, final norm and unembedding, with
/// the two scalings Gemma adds (`None` elsewhere).
#[derive(Debug, Clone)]
pub(crate) struct Decoder<B, N> {
    pub embed: Embedding,
    /// What the embeddings are multiplied by (Gemma's `√d_model`).
    pub embed_scale: Option<f64>,
    pub blocks: Vec<B>,
    pub rotary: Rotary,
    pub final_norm: N,
    pub unembed: Linear,
    /// Gemma 2's bound on the logits, `cap · tanh(logits / cap)`.
    pub logit_softcap: Option<f64>,
}

impl<B: Block, N: Module> Decoder<B, N> {
    /// Logits `(batch, seq, vocab)` in f32, or `None` if the hooks stopped the forward early.
    pub fn forward(&self, batch: &TokenBatch, hooks: &mut Hooks) -> Result<Option<Tensor>> {
        hooks.check(self.blocks.len())?;
        let device = batch.input_ids.device();
        let mut x = self.embed.forward(&batch.input_ids)?; // (b, t, d)
        if let Some(scale) = self.embed_scale {
            x = (x * scale)?;
        }
        let rotary = self.rotary.angles(&batch.positions(), x.dtype(), device)?;
        let bias = batch.attention_bias(device)?;
        for block in &self.blocks {
            match block.forward(x, &rotary, &bias, hooks)? {
                Some(next) => x = next,
                None => return Ok(None),
            }
        }
        let x = self.final_norm.forward(&x)?;
        let logits = self.unembed.forward(&x)?.to_dtype(DType::F32)?;
        Ok(Some(match self.logit_softcap {
            Some(cap) => ((logits / cap)?.tanh()? * cap)?,
            None => logits,
        }))
    }

    /// The unembedding matrix `(vocab, d_model)`, for the decoder logit lens.
    pub fn unembedding(&self) -> Result<Tensor> {
        self.unembed.weight()
    }

    /// Device the weights are on.
    pub fn device(&self) -> &Device {
        self.embed.embeddings().device()
    }

    /// Dtype of the weights (that of the embedding).
    pub fn dtype(&self) -> DType {
        self.embed.embeddings().dtype()
    }
}

/// The methods every model exposes through its `decoder` field: `forward`, `unembed`,
/// `device` and `dtype`, written once.
macro_rules! decoder_api {
    () => {
        /// Runs the model on `batch`, consulting `hooks` at every hook point. Returns the
        /// logits `(batch, seq, vocab)` in f32, or `None` if the hooks stopped the forward
        /// early.
        pub fn forward(
            &self,
            batch: &$crate::model::TokenBatch,
            hooks: &mut $crate::hooks::Hooks,
        ) -> $crate::Result<Option<candle_core::Tensor>> {
            self.decoder.forward(batch, hooks)
        }

        /// The unembedding matrix `(vocab, d_model)`, for the decoder logit lens.
        pub fn unembed(&self) -> $crate::Result<candle_core::Tensor> {
            self.decoder.unembedding()
        }

        /// Device the weights are on.
        pub fn device(&self) -> &candle_core::Device {
            self.decoder.device()
        }

        /// Dtype of the weights (that of the embedding).
        pub fn dtype(&self) -> candle_core::DType {
            self.decoder.dtype()
        }
    };
}
pub(crate) use decoder_api;
