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
    pub blocks: &'a [B],
    pub rotary: &'a Rotary,
    pub final_norm: &'a dyn Module,
    pub unembed: &'a Linear,
}

impl<B: Block> Decoder<'_, B> {
    /// Logits `(batch, seq, vocab)` in f32, or `None` if the hooks stopped the forward early.
    pub fn forward(&self, batch: &TokenBatch, hooks: &mut Hooks) -> Result<Option<Tensor>> {
        hooks.check(self.blocks.len())?;
        let device = batch.input_ids.device();
        let mut x = self.embed.forward(&batch.input_ids)?; // (b, t, d)
        let rotary = self.rotary.angles(&batch.positions(), x.dtype(), device)?;
        let bias = batch.attention_bias(device)?;
        for block in self.blocks {
            match block.forward(x, &rotary, &bias, hooks)? {
                Some(next) => x = next,
                None => return Ok(None),
            }
        }
        let x = self.final_norm.forward(&x)?;
        Ok(Some(self.unembed.forward(&x)?.to_dtype(DType::F32)?))
    }
}
