//! What one feature means: its top activating contexts (from the activation store's document
//! references), the distribution of its activations, and the decoder logit lens.

use candle_core::{DType, Device, IndexOp, Tensor};

use crate::data::store::ActivationStore;
use crate::sae::Sae;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// A feature's activation on every row of `store`, in row order (one chunked pass).
pub fn feature_activations(
    store: &ActivationStore,
    sae: &dyn Sae,
    feature: usize,
) -> Result<Vec<f32>> {
    let device = sae.params().w_dec.device().clone();
    let mut acts = super::score::feature_activations(store, sae, &[feature], &device)?;
    Ok(acts.pop().unwrap_or_default())
}

/// One of a feature's top activating contexts.
#[derive(Debug, Clone, PartialEq)]
pub struct TopContext {
    /// Index of the document, as recorded in the activation store.
    pub doc_index: u32,
    /// Position of the activating token in its document.
    pub position: u32,
    /// The feature's activation at that token.
    pub activation: f32,
    /// The document's token texts.
    pub tokens: Vec<String>,
    /// The feature's activation at each token, where the store has a row for it.
    pub token_activations: Vec<Option<f32>>,
}

/// The `k` rows where `feature` is largest (at most one per document), with their documents.
pub fn top_contexts(
    store: &ActivationStore,
    sae: &dyn Sae,
    tokenizer: &Tokenizer,
    feature: usize,
    k: usize,
) -> Result<Vec<TopContext>> {
    let acts = feature_activations(store, sae, feature)?;
    top_contexts_of(store, &acts, tokenizer, k)
}

/// [`top_contexts`] from a feature's activations on every row of `store` (as
/// [`feature_activations`] returns them).
pub fn top_contexts_of(
    store: &ActivationStore,
    acts: &[f32],
    tokenizer: &Tokenizer,
    k: usize,
) -> Result<Vec<TopContext>> {
    if acts.len() != store.len() {
        return Err(Error::Input(format!(
            "{} activations for a store of {} rows",
            acts.len(),
            store.len()
        )));
    }
    let mut order: Vec<usize> = (0..acts.len()).filter(|&r| acts[r] > 0.0).collect();
    order.sort_by(|&a, &b| acts[b].total_cmp(&acts[a]));
    let mut seen_docs = Vec::new();
    let mut out = Vec::new();
    for row in order {
        let r = store.row_ref(row);
        if seen_docs.contains(&r.doc_index) {
            continue;
        }
        seen_docs.push(r.doc_index);
        let ids = store.document_tokens(r.doc_index)?;
        let mut token_activations = vec![None; ids.len()];
        // A document's rows are contiguous in the store: walk both ways from this row.
        let mut first = row;
        while first > 0 && store.row_ref(first - 1).doc_index == r.doc_index {
            first -= 1;
        }
        let mut i = first;
        while i < store.len() && store.row_ref(i).doc_index == r.doc_index {
            if let Some(slot) = token_activations.get_mut(store.row_ref(i).position as usize) {
                *slot = Some(acts[i]);
            }
            i += 1;
        }
        out.push(TopContext {
            doc_index: r.doc_index,
            position: r.position,
            activation: acts[row],
            tokens: ids.iter().map(|&t| tokenizer.token_text(t)).collect(),
            token_activations,
        });
        if out.len() == k {
            break;
        }
    }
    Ok(out)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('\n', "↵")
}

/// An HTML table of contexts, each token shaded by the feature's activation (darker = higher;
/// the activating token outlined), for notebooks and reports.
pub fn contexts_html(feature: usize, contexts: &[TopContext], window: usize) -> String {
    let max = contexts
        .iter()
        .map(|c| c.activation)
        .fold(f32::MIN_POSITIVE, f32::max);
    let mut html = format!(
        "<table style=\"border-collapse:collapse;font-family:monospace;font-size:13px\">\
         <caption style=\"text-align:left;font-weight:bold\">Feature {feature}: top activating contexts</caption>\
         <tr><th style=\"text-align:right;padding:2px 8px\">activation</th><th style=\"text-align:left\">context (doc:position)</th></tr>"
    );
    for c in contexts {
        let p = c.position as usize;
        let (start, end) = (
            p.saturating_sub(window),
            (p + window / 2 + 1).min(c.tokens.len()),
        );
        let mut cells = String::new();
        for i in start..end {
            let a = c.token_activations[i].unwrap_or(0.0).max(0.0) / max;
            let outline = if i == p {
                "outline:1px solid #333;"
            } else {
                ""
            };
            cells.push_str(&format!(
                "<span title=\"{:.3}\" style=\"background:rgba(255,90,0,{a:.2});{outline}white-space:pre\">{}</span>",
                c.token_activations[i].unwrap_or(0.0),
                escape(&c.tokens[i])
            ));
        }
        html.push_str(&format!(
            "<tr><td style=\"text-align:right;padding:2px 8px\">{:.3}</td><td>{cells} <small style=\"color:#888\">({}:{})</small></td></tr>",
            c.activation, c.doc_index, c.position
        ));
    }
    html.push_str("</table>");
    html
}

/// Tokens with their logit-lens scores, highest first.
pub type TokenScores = Vec<(String, f32)>;

/// The decoder logit lens: the tokens feature `feature`'s decoder direction most promotes and
/// most suppresses through the unembedding `(vocab, d_model)`, as `(token, score)` pairs. An
/// SAE whose features are not in the residual stream (one on `attn.hook_z`, before the output
/// projection) has no such lens: an error says so.
pub fn logit_lens(
    sae: &dyn Sae,
    unembed: &Tensor,
    tokenizer: &Tokenizer,
    feature: usize,
    k: usize,
) -> Result<(TokenScores, TokenScores)> {
    let w = sae
        .params()
        .w_dec
        .as_tensor()
        .i(feature)?
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?;
    let (width, d_model) = (w.dim(0)?, unembed.dim(1)?);
    if width != d_model {
        return Err(Error::Input(format!(
            "the decoder logit lens reads features in the residual stream ({d_model} wide); \
             this SAE's are {width} wide, at {}",
            sae.config().metadata.hook_name
        )));
    }
    let scores = unembed
        .to_dtype(DType::F32)?
        .to_device(&Device::Cpu)?
        .matmul(&w.unsqueeze(1)?)?
        .squeeze(1)?
        .to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let pick = |ids: &mut dyn Iterator<Item = &usize>| {
        ids.take(k)
            .map(|&i| (tokenizer.token_text(i as u32), scores[i]))
            .collect()
    };
    Ok((pick(&mut order.iter()), pick(&mut order.iter().rev())))
}
