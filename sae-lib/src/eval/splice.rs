//! The model with the SAE spliced in: next-token cross-entropy with the hook's activation
//! replaced by the SAE's reconstruction, by zeros and by its mean, and the KL divergence of
//! each from the clean model. Names follow SAELens' `evals.py` so numbers compare directly.
//!
//! The special tokens that the tokenizer puts around each text ([`Tokenizer::special_ids`]: a
//! BOS first, for Gemma and Llama) keep their clean activation when the SAE is spliced in, and
//! the predictions made at them are left out of the means, as SAELens' evaluation does for
//! BOS, EOS and padding: a BOS carries an attention sink's activation, often hundreds of times
//! the norm of the rest, which an SAE reconstructs poorly and every later token attends to.
//! Tokens the SAE's activations left out (its [`TokenFilter`]: each document's first, outliers
//! by norm) also keep their clean activation, and their predictions still count. The
//! ablations replace every token, as SAELens' do, so the zero-ablation baseline is the same
//! whatever the SAE left out and CE loss recovered compares across SAEs.
//!
//! [`Tokenizer::special_ids`]: crate::tokenizer::Tokenizer::special_ids

use candle_core::{DType, Device, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::data::filter::{norm, TokenFilter};
use crate::hooks::{HookPoint, Hooks};
use crate::model::{Model, Padding, TokenBatch};
use crate::progress::Progress;
use crate::sae::Sae;
use crate::{Error, Result};

/// Splice metrics, averaged over the tokens predicted at ordinary (not special) tokens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpliceMetrics {
    /// Hook point the SAE was spliced in at.
    pub hook: HookPoint,
    /// Tokens whose next token was predicted, special tokens not counted.
    pub tokens: usize,
    /// Tokens left with their clean activation when the SAE is spliced in: the tokenizer's
    /// special tokens, and those its training activations left out (its `exclude_first` and
    /// `outlier_norm`).
    #[serde(default)]
    pub tokens_passed_through: usize,
    /// Mean next-token cross-entropy of the clean model, in nats.
    pub ce_loss_without_sae: f64,
    /// Mean next-token cross-entropy with the activation replaced by the SAE's
    /// reconstruction, in nats.
    pub ce_loss_with_sae: f64,
    /// Activation replaced by zeros.
    pub ce_loss_with_ablation: f64,
    /// Activation replaced by its mean over the evaluated tokens.
    pub ce_loss_with_mean_ablation: f64,
    /// CE loss recovered: `(CE_zero − CE_sae) / (CE_zero − CE_clean)`; 1 is perfect.
    pub ce_loss_score: f64,
    /// Mean per-token KL(clean ‖ spliced), in nats.
    pub kl_div_with_sae: f64,
    /// Mean per-token KL(clean ‖ zero-ablated), in nats.
    pub kl_div_with_ablation: f64,
    /// `(KL_zero − KL_sae) / KL_zero`.
    pub kl_div_score: f64,
}

impl SpliceMetrics {
    /// One message when the SAE is of no use inside the model: the loss with it spliced in is
    /// not finite, or no better than with the activation zeroed (CE loss recovered at or below
    /// 0). `None` otherwise, and when zeroing the activation does not raise the loss (nothing
    /// to recover, so the score says nothing).
    pub fn warning(&self) -> Option<String> {
        let something_to_recover = self.ce_loss_with_ablation > self.ce_loss_without_sae;
        let recovers = self.ce_loss_score.is_finite() && self.ce_loss_score > 0.0;
        let unusable = !self.ce_loss_with_sae.is_finite() || (something_to_recover && !recovers);
        unusable.then(|| {
            format!(
                "spliced into the model at {}, the SAE does no better than zeroing the \
                 activation: CE loss {:.4} with it against {:.4} zeroed and {:.4} clean (CE loss \
                 recovered {:.4}, {} tokens). Its reconstruction is unusable downstream: train \
                 it longer or at a lower sparsity, and check that the model, hook and dataset \
                 are the ones it was trained on",
                self.hook,
                self.ce_loss_with_sae,
                self.ce_loss_with_ablation,
                self.ce_loss_without_sae,
                self.ce_loss_score,
                self.tokens
            )
        })
    }

    /// The metrics as an HTML table, for notebooks, with the [`warning`](Self::warning) if any.
    pub fn summary(&self) -> crate::plot::Html {
        let rows = [
            ("tokens evaluated", self.tokens.to_string()),
            (
                "tokens passed through (left out of training)",
                self.tokens_passed_through.to_string(),
            ),
            (
                "CE loss, clean model",
                format!("{:.4} nats", self.ce_loss_without_sae),
            ),
            (
                "CE loss, SAE spliced in",
                format!("{:.4} nats", self.ce_loss_with_sae),
            ),
            (
                "CE loss, activation zeroed",
                format!("{:.4} nats", self.ce_loss_with_ablation),
            ),
            (
                "CE loss, activation mean-ablated",
                format!("{:.4} nats", self.ce_loss_with_mean_ablation),
            ),
            ("CE loss recovered", format!("{:.4}", self.ce_loss_score)),
            (
                "KL(clean ‖ spliced) per token",
                format!("{:.4} nats", self.kl_div_with_sae),
            ),
        ];
        let warning = self.warning().map(|w| ("warning", w));
        crate::plot::Html::table(
            &["metric", "value"],
            (rows.into_iter().chain(warning)).map(|(k, v)| vec![k.to_string(), v]),
        )
    }
}

/// Per-token next-token CE `(b, t-1)` and the mask of positions where both the token and the
/// next one are real.
pub(crate) fn next_token_ce(logits: &Tensor, batch: &TokenBatch) -> Result<(Tensor, Tensor)> {
    let (b, t) = batch.dims();
    let log_probs =
        candle_nn::ops::log_softmax(&logits.narrow(1, 0, t - 1)?, D::Minus1)?.contiguous()?;
    let targets = batch
        .input_ids
        .narrow(1, 1, t - 1)?
        .contiguous()?
        .unsqueeze(2)?;
    let ce = log_probs.gather(&targets, 2)?.squeeze(2)?.neg()?;
    let mask: Vec<f32> = batch
        .mask()
        .iter()
        .flat_map(|row| (0..t - 1).map(move |i| f32::from(row[i] == 1 && row[i + 1] == 1)))
        .collect();
    Ok((ce, Tensor::from_vec(mask, (b, t - 1), logits.device())?))
}

/// Per-token KL(p ‖ q) `(b, t-1)` from two logit tensors.
fn kl(clean: &Tensor, other: &Tensor) -> Result<Tensor> {
    let t = clean.dim(1)?;
    let lp = candle_nn::ops::log_softmax(&clean.narrow(1, 0, t - 1)?, D::Minus1)?;
    let lq = candle_nn::ops::log_softmax(&other.narrow(1, 0, t - 1)?, D::Minus1)?;
    Ok((lp.exp()? * (&lp - lq)?)?.sum(D::Minus1)?)
}

pub(crate) fn masked_sum(x: &Tensor, mask: &Tensor) -> Result<f64> {
    Ok((x * mask)?
        .to_dtype(DType::F64)?
        .sum_all()?
        .to_scalar::<f64>()?)
}

/// The real tokens of `batch` that are not `special`, as `(b, t)` 0/1 rows (`rows` are the
/// batch's sequences, one a row from its first position).
fn ordinary(rows: &[Vec<u32>], batch: &TokenBatch, special: &[u32]) -> Vec<Vec<u8>> {
    batch
        .mask()
        .iter()
        .zip(rows)
        .map(|(mask, ids)| {
            let is_special = |i: usize| ids.get(i).is_some_and(|id| special.contains(id));
            (0..mask.len())
                .map(|i| mask[i] & u8::from(!is_special(i)))
                .collect()
        })
        .collect()
}

/// Of the `ordinary` tokens, those the SAE covers, as `(b, t)` 0/1 rows, given the clean
/// activations `acts` `(b, t, d)` at its hook and the tokens its training left out. `None`
/// when that is every real token.
fn covered(
    filter: &TokenFilter,
    acts: &Tensor,
    batch: &TokenBatch,
    ordinary: &[Vec<u8>],
) -> Result<Option<Vec<Vec<u8>>>> {
    if !filter.is_active() && ordinary == batch.mask() {
        return Ok(None);
    }
    let mut mask = ordinary.to_vec();
    if filter.exclude_first {
        mask.iter_mut().for_each(|row| row[0] = 0);
    }
    if filter.outlier_norm.is_some() {
        let (_, t, d) = acts.dims3()?;
        let flat = acts.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let real: Vec<usize> = (0..mask.len() * t)
            .filter(|&i| mask[i / t][i % t] == 1)
            .collect();
        let norms: Vec<f32> = real
            .iter()
            .map(|&i| norm(&flat[i * d..(i + 1) * d]))
            .collect();
        for (&i, out) in real.iter().zip(filter.outliers(&[norms])) {
            if out {
                mask[i / t][i % t] = 0;
            }
        }
    }
    Ok(Some(mask))
}

/// `replaced` where `covered` is 1, `x` elsewhere (both `(b, t, d)`).
fn within(covered: Option<&Tensor>, replaced: Tensor, x: &Tensor) -> Result<Tensor> {
    match covered {
        None => Ok(replaced),
        Some(c) => Ok(c.broadcast_as(x.shape())?.where_cond(&replaced, x)?),
    }
}

/// The SAE's reconstruction of `x` `(b, t, d)`, keeping the shape.
pub fn reconstruct(sae: &dyn Sae, x: &Tensor) -> Result<Tensor> {
    let (b, t, d) = x.dims3()?;
    let flat = x.reshape((b * t, d))?.to_dtype(DType::F32)?;
    // Detached: the SAE's weights are variables, and a tracked activation would send the rest
    // of the forward down the stock-op path, which records a graph no one reads.
    Ok(sae
        .decode(&sae.encode(&flat)?)?
        .reshape((b, t, d))?
        .to_dtype(x.dtype())?
        .detach())
}

/// Evaluates `sae` spliced into `model` at `hook` over token sequences, `batch_size` at a time,
/// leaving the tokens whose id is in `special` alone (pass the tokenizer's
/// [`special_ids`](crate::tokenizer::Tokenizer::special_ids)).
pub fn splice_eval(
    model: &Model,
    sae: &dyn Sae,
    hook: HookPoint,
    sequences: &[Vec<u32>],
    special: &[u32],
    batch_size: usize,
) -> Result<SpliceMetrics> {
    hook.check(model.n_layers())?;
    let width = model.width(hook);
    if sae.config().d_in != width {
        return Err(Error::Input(format!(
            "the SAE's d_in is {} but {hook} has width {width}: this SAE was trained on another \
             model or hook",
            sae.config().d_in,
        )));
    }
    let seqs: Vec<Vec<u32>> = sequences.iter().filter(|s| s.len() >= 2).cloned().collect();
    if seqs.is_empty() {
        return Err(Error::Input(
            "splice evaluation needs at least one sequence of 2 or more tokens".into(),
        ));
    }
    let device = model.device();
    let chunks: Vec<&[Vec<u32>]> = seqs.chunks(batch_size.max(1)).collect();
    let batches: Vec<TokenBatch> = chunks
        .iter()
        .map(|c| TokenBatch::from_sequences(c, Padding::Right, 0, device))
        .collect::<Result<_>>()?;
    // Pass 1: the hook's mean activation over the ordinary tokens, for mean ablation, and
    // which tokens the SAE covers and which predictions count.
    let filter = sae.config().metadata.filter;
    let (mut sum, mut count, mut passed) = (
        Tensor::zeros(width, DType::F64, &Device::Cpu)?,
        0usize,
        0usize,
    );
    let (mut coverage, mut counted) = (Vec::new(), Vec::new());
    for (batch, ids) in batches.iter().zip(&chunks) {
        let mut hooks = Hooks::new().capture(hook).stop_at(hook);
        model.forward(batch, &mut hooks)?;
        let acts = hooks.take(hook)?.to_device(&Device::Cpu)?;
        let (b, t) = batch.dims();
        let as_tensor = |rows: &[Vec<u8>]| {
            let flat: Vec<u8> = rows.iter().flatten().copied().collect();
            Tensor::from_vec(flat, (b, t, 1), &Device::Cpu)
        };
        let ones = |rows: &[Vec<u8>]| rows.iter().flatten().map(|&m| m as usize).sum::<usize>();
        let real = ones(batch.mask());
        let ordinary = ordinary(ids, batch, special);
        let m = as_tensor(&ordinary)?;
        sum = (sum
            + acts
                .to_dtype(DType::F64)?
                .broadcast_mul(&m.to_dtype(DType::F64)?)?
                .sum((0, 1))?)?;
        count += ones(&ordinary);
        // A prediction counts where the token it is made at is ordinary.
        counted.push(
            m.squeeze(2)?
                .narrow(1, 0, t - 1)?
                .to_dtype(DType::F32)?
                .to_device(device)?,
        );
        coverage.push(match covered(&filter, &acts, batch, &ordinary)? {
            Some(rows) => {
                passed += real - ones(&rows);
                Some(as_tensor(&rows)?.to_device(device)?)
            }
            None => None,
        });
    }
    if count == 0 {
        return Err(Error::Input(
            "every token of the sequences is one of the tokenizer's special tokens (such as \
             BOS), so there is nothing to splice the SAE in at: evaluate on documents with text"
                .into(),
        ));
    }
    let mean = (sum / count as f64)?
        .to_dtype(model.dtype())?
        .to_device(device)?;

    let progress = Progress::new("splice eval", Some(batches.len() as u64), "batches");
    let (mut tokens, mut ce) = (0f64, [0f64; 4]);
    let mut kls = [0f64; 2];
    for ((batch, cover), counted) in batches.iter().zip(&coverage).zip(&counted) {
        let run = |hooks: &mut Hooks| -> Result<Tensor> {
            model
                .forward(batch, hooks)?
                .ok_or_else(|| Error::Input("the forward stopped early".into()))
        };
        let clean = run(&mut Hooks::new())?;
        let spliced = run(
            &mut Hooks::new().write(hook, |x| within(cover.as_ref(), reconstruct(sae, x)?, x))
        )?;
        let zero = run(&mut Hooks::new().write(hook, |x| Ok(x.zeros_like()?)))?;
        let mean_abl =
            run(&mut Hooks::new()
                .write(hook, |x| Ok(mean.broadcast_as(x.shape())?.contiguous()?)))?;
        let mut mask = None;
        for (i, logits) in [&clean, &spliced, &zero, &mean_abl].into_iter().enumerate() {
            let (loss, m) = next_token_ce(logits, batch)?;
            let m = (m * counted)?;
            ce[i] += masked_sum(&loss, &m)?;
            mask = Some(m);
        }
        let mask = mask.expect("four runs");
        kls[0] += masked_sum(&kl(&clean, &spliced)?, &mask)?;
        kls[1] += masked_sum(&kl(&clean, &zero)?, &mask)?;
        tokens += mask.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        progress.inc(1);
    }
    progress.finish();
    let [clean, with_sae, zero, mean_ablated] = ce.map(|c| c / tokens);
    let [kl_sae, kl_zero] = kls.map(|k| k / tokens);
    Ok(SpliceMetrics {
        hook,
        tokens: tokens as usize,
        tokens_passed_through: passed,
        ce_loss_without_sae: clean,
        ce_loss_with_sae: with_sae,
        ce_loss_with_ablation: zero,
        ce_loss_with_mean_ablation: mean_ablated,
        ce_loss_score: (zero - with_sae) / (zero - clean),
        kl_div_with_sae: kl_sae,
        kl_div_with_ablation: kl_zero,
        kl_div_score: (kl_zero - kl_sae) / kl_zero,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics(clean: f64, with_sae: f64, zeroed: f64) -> SpliceMetrics {
        SpliceMetrics {
            hook: HookPoint::mlp_out(5),
            tokens: 100,
            tokens_passed_through: 0,
            ce_loss_without_sae: clean,
            ce_loss_with_sae: with_sae,
            ce_loss_with_ablation: zeroed,
            ce_loss_with_mean_ablation: zeroed,
            ce_loss_score: (zeroed - with_sae) / (zeroed - clean),
            kl_div_with_sae: 0.1,
            kl_div_with_ablation: 1.0,
            kl_div_score: 0.9,
        }
    }

    #[test]
    fn an_sae_no_better_than_zeroing_the_activation_is_named() {
        assert_eq!(metrics(3.0, 3.2, 5.0).warning(), None);
        let worse = metrics(4.27, 13.18, 10.80).warning().unwrap();
        assert!(
            worse.contains("recovered -0.36") && worse.contains("blocks.5.hook_mlp_out"),
            "{worse}"
        );
        assert!(
            metrics(3.0, 5.0, 5.0).warning().is_some(),
            "recovered exactly 0"
        );
        assert!(metrics(3.0, f64::NAN, 5.0).warning().is_some());
        assert!(metrics(3.0, f64::INFINITY, 3.0).warning().is_some());
        // Zeroing does not raise the loss: nothing to recover, the score means nothing.
        assert_eq!(metrics(3.0, 3.5, 2.9).warning(), None);
    }
}
