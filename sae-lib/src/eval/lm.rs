//! How well the language model itself predicts text: its next-token cross-entropy, against a
//! unigram baseline (each token predicted by its frequency alone, ignoring context). A model
//! whose loss is not far below the unigram's has not learned language, so its activations are
//! not worth an SAE; this is the check for checkpoints that cannot be compared to the Hub's.

use serde::{Deserialize, Serialize};

use super::splice::{masked_sum, next_token_ce};
use crate::hooks::Hooks;
use crate::model::{Model, Padding, TokenBatch};
use crate::progress::Progress;
use crate::{Error, Result};

/// Next-token losses in nats per predicted token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LmLoss {
    /// Predicted tokens (every token after the first of each sequence).
    pub tokens: usize,
    /// The model's mean next-token cross-entropy.
    pub ce_loss: f64,
    /// The unigram model's mean cross-entropy on the same tokens.
    pub unigram_ce_loss: f64,
}

/// Token frequencies with add-one smoothing, so unseen tokens keep a finite loss.
#[derive(Debug, Clone)]
pub struct Unigram {
    log_probs: Vec<f64>,
}

impl Unigram {
    /// Counts the tokens of `sequences` over a vocabulary of `vocab_size`.
    pub fn fit(sequences: &[Vec<u32>], vocab_size: usize) -> Self {
        let mut counts = vec![1f64; vocab_size];
        for &t in sequences.iter().flatten() {
            if let Some(c) = counts.get_mut(t as usize) {
                *c += 1.0;
            }
        }
        let total: f64 = counts.iter().sum();
        Self {
            log_probs: counts.iter().map(|c| (c / total).ln()).collect(),
        }
    }

    /// Mean negative log-likelihood of every token after the first of each sequence.
    pub fn ce_loss(&self, sequences: &[Vec<u32>]) -> f64 {
        let (sum, n) =
            sequences
                .iter()
                .flat_map(|s| s.iter().skip(1))
                .fold((0.0, 0usize), |(sum, n), &t| {
                    let lp = self
                        .log_probs
                        .get(t as usize)
                        .copied()
                        .unwrap_or(f64::NEG_INFINITY);
                    (sum - lp, n + 1)
                });
        sum / n.max(1) as f64
    }
}

/// The model's next-token loss on `sequences`, `batch_size` at a time, with the unigram
/// baseline fitted on `unigram_fit` (a different split of the same corpus).
pub fn lm_loss(
    model: &Model,
    sequences: &[Vec<u32>],
    unigram_fit: &[Vec<u32>],
    batch_size: usize,
) -> Result<LmLoss> {
    let seqs: Vec<Vec<u32>> = sequences.iter().filter(|s| s.len() >= 2).cloned().collect();
    if seqs.is_empty() {
        return Err(Error::Input(
            "the LM loss needs at least one sequence of 2 or more tokens".into(),
        ));
    }
    let progress = Progress::new("LM loss", Some(seqs.len() as u64), "sequences");
    let (mut sum, mut tokens) = (0f64, 0f64);
    for chunk in seqs.chunks(batch_size.max(1)) {
        let batch = TokenBatch::from_sequences(chunk, Padding::Right, 0, model.device())?;
        let logits = model
            .forward(&batch, &mut Hooks::new())?
            .ok_or_else(|| Error::Input("the forward stopped early".into()))?;
        let (ce, mask) = next_token_ce(&logits, &batch)?;
        sum += masked_sum(&ce, &mask)?;
        tokens += masked_sum(&mask.ones_like()?, &mask)?;
        progress.inc(chunk.len() as u64);
    }
    progress.finish();
    Ok(LmLoss {
        tokens: tokens as usize,
        ce_loss: sum / tokens,
        unigram_ce_loss: Unigram::fit(unigram_fit, model.vocab_size()).ce_loss(&seqs),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unigram_loss_is_the_entropy_of_the_counts() {
        // Fit on tokens {0: 3, 1: 1} (+1 smoothing over a vocab of 2 → p = 4/6, 2/6).
        let u = Unigram::fit(&[vec![0, 0, 0, 1]], 2);
        let loss = u.ce_loss(&[vec![9, 0, 1]]); // the first token is never predicted
        let want = -((4f64 / 6.).ln() + (2f64 / 6.).ln()) / 2.;
        assert!((loss - want).abs() < 1e-12, "{loss} vs {want}");
    }
}
