//! The skeleton every decoder-only model here shares: embed the tokens, run the blocks (any
//! of which may stop at a hook), apply the final norm, unembed. Each model file supplies its
//! own blocks; this keeps the hook and padding plumbing in one place.

use candle_core::{DType, Module, Tensor};
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

/// The parts of a decoder-only language model around its blocks.
pub(crate) struct Decoder<'a, B: Block> {
    pub embed: &'a Embedding,
    /// What the embeddings are multiplied by (Gemma's `√d_model`); `None` for 1.
    pub embed_scale: Option<f64>,
    pub blocks: &'a [B],
    pub rotary: &'a Rotary,
    pub final_norm: &'a dyn Module,
    pub unembed: &'a Linear,
    /// Gemma 2's bound on the logits, `cap · tanh(logits / cap)`.
    pub logit_softcap: Option<f64>,
}

impl<B: Block> Decoder<'_, B> {
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
        for block in self.blocks {
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
}
