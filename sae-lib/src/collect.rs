//! Activation collection: the tutorial's loop, and the batched collector that streams into an
//! [`ActivationStore`](crate::data::store::ActivationStore).

use std::path::Path;

use candle_core::{DType, Device, IndexOp, Tensor};

use crate::data::filter::norm;
use crate::data::store::{CollectMode, StoreMeta, StoreWriter};
use crate::data::TokenFilter;
use crate::hooks::{HookPoint, Hooks};
use crate::model::{Model, Padding, TokenBatch};
use crate::progress::Progress;
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// Batches per pool of documents packed together (bounds the extra memory to a few batches).
const POOL_BATCHES: usize = 8;

/// First-fit decreasing: documents of the given lengths (indices into `lens`), longest first,
/// into rows of at most `capacity` tokens, or one document per row when `capacity` is `None`.
/// WikiText paragraphs range from a few tokens (headings) to hundreds, so padding each to its
/// batch's longest wasted most of the compute.
fn pack(lens: &[usize], capacity: Option<usize>) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(lens[i]));
    let Some(capacity) = capacity else {
        return order.into_iter().map(|i| vec![i]).collect();
    };
    let mut rows: Vec<(usize, Vec<usize>)> = Vec::new();
    for i in order {
        let len = lens[i];
        match rows.iter_mut().find(|(used, _)| used + len <= capacity) {
            Some((used, docs)) => {
                *used += len;
                docs.push(i);
            }
            None => rows.push((len, vec![i])),
        }
    }
    rows.into_iter().map(|(_, docs)| docs).collect()
}

/// The tokens of a non-empty document that the model must run for `mode`. The models are
/// causal: the middle token's activation depends only on the tokens up to it, so the second
/// half of each document is never run in `Middle` mode (half the work, the same activations).
pub(crate) fn forwarded(ids: &[u32], mode: CollectMode) -> &[u32] {
    match mode {
        CollectMode::Middle => &ids[..ids.len() / 2 + 1],
        CollectMode::All => ids,
    }
}

/// The tutorial's constants, and what the batched collector adds to them.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectConfig {
    /// Where to read activations (the tutorial: `blocks.5.hook_mlp_out`).
    pub hook: HookPoint,
    /// Which tokens of each document become rows: the middle one (the tutorial's) or all.
    pub mode: CollectMode,
    /// Tokens kept per document (the tutorial's `MAX_LEN_TRUNC = 128`).
    pub max_len: usize,
    /// Rows per forward pass: context windows of up to `max_len` tokens, each packing one or
    /// more whole documents (each sees only itself).
    pub batch_size: usize,
    /// Stop after this many documents (empty ones included).
    pub max_docs: Option<usize>,
    /// Tokens left out beyond the mode's choice: the first of each document, outliers.
    pub filter: TokenFilter,
    /// Which side of a row the padding goes on; padded positions never become rows.
    pub padding: Padding,
    /// Pack several short documents into each row; when false, each document has a row of its
    /// own (rows still batched by length).
    pub pack: bool,
    /// Rows per shard (a shard is closed at the next document boundary after this).
    pub shard_rows: usize,
    /// Storage dtype: f32 or bf16.
    pub dtype: DType,
}

impl Default for CollectConfig {
    fn default() -> Self {
        Self {
            hook: HookPoint::mlp_out(5),
            mode: CollectMode::Middle,
            max_len: 128,
            batch_size: 32,
            max_docs: None,
            filter: TokenFilter::default(),
            padding: Padding::Right,
            pack: true,
            shard_rows: 1 << 16,
            dtype: DType::F32,
        }
    }
}

impl CollectConfig {
    /// Checks every number before any work starts.
    pub fn validate(&self) -> Result<()> {
        let check = |what: &str, v: usize| {
            if v == 0 {
                Err(crate::Error::Input(format!(
                    "{what} must be at least 1 (got 0)"
                )))
            } else {
                Ok(())
            }
        };
        check("max length (tokens kept per document)", self.max_len)?;
        check("batch size", self.batch_size)?;
        check("shard rows", self.shard_rows)?;
        if let Some(n) = self.max_docs {
            check("max documents", n)?;
        }
        self.filter.validate()
    }
}

/// What the tutorial's loop returns.
#[derive(Debug, Clone)]
pub struct MiddleTokenActivations {
    /// `(n, d_model)` f32 on the CPU: one row per non-empty document.
    pub activations: Tensor,
    /// The dataset index of each row's document.
    pub doc_indices: Vec<usize>,
    /// Empty documents skipped (the tutorial would crash on them).
    pub skipped_empty: usize,
}

/// The tutorial's collection, faithfully: one document at a time, truncated to `max_len`
/// tokens, keeping the activation of the middle token (`len / 2`) at `hook`. The forward stops
/// at the hook instead of computing logits nobody uses, and runs only the tokens up to the
/// middle one: later tokens cannot change it.
pub fn tutorial_middle_tokens(
    model: &Model,
    tokenizer: &Tokenizer,
    docs: impl IntoIterator<Item = Result<String>>,
    hook: HookPoint,
    max_len: usize,
    max_docs: Option<usize>,
) -> Result<MiddleTokenActivations> {
    hook.check(model.n_layers())?;
    let progress = Progress::new("collect (middle token)", max_docs.map(|n| n as u64), "docs");
    let (mut rows, mut doc_indices, mut skipped_empty) = (Vec::new(), Vec::new(), 0);
    for (i, doc) in docs
        .into_iter()
        .take(max_docs.unwrap_or(usize::MAX))
        .enumerate()
    {
        let ids = tokenizer.encode(&doc?, Some(max_len))?;
        progress.inc(1);
        if ids.is_empty() {
            skipped_empty += 1;
            continue;
        }
        let prefix = forwarded(&ids, CollectMode::Middle);
        let batch = TokenBatch::from_sequences(
            &[prefix.to_vec()],
            Padding::Right,
            tokenizer.pad_id(),
            model.device(),
        )?;
        let mut hooks = Hooks::new().capture(hook).stop_at(hook);
        model.forward(&batch, &mut hooks)?;
        let acts = hooks.take(hook)?.i(0)?; // (prefix, d)
        rows.push(
            acts.i(ids.len() / 2)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?,
        );
        doc_indices.push(i);
    }
    progress.finish();
    if rows.is_empty() {
        return Err(Error::Input(format!(
            "no activations collected: the dataset gave no non-empty documents ({skipped_empty} empty)"
        )));
    }
    let activations = Tensor::stack(&rows, 0)?;
    check_finite(&activations, hook)?;
    Ok(MiddleTokenActivations {
        activations,
        doc_indices,
        skipped_empty,
    })
}

fn check_finite(t: &Tensor, hook: HookPoint) -> Result<()> {
    let bad = t
        .flatten_all()?
        .to_vec1::<f32>()?
        .iter()
        .filter(|v| !v.is_finite())
        .count();
    if bad > 0 {
        return Err(Error::Input(format!(
            "{bad} activations at {hook} are NaN or infinite: the model weights may be corrupt, or \
             half precision overflowed (try --dtype f32)"
        )));
    }
    Ok(())
}

/// Names written into the store's `meta.json`.
#[derive(Debug, Clone, Default)]
pub struct Provenance {
    /// Hub id, local directory or .gguf path of the model, as given.
    pub model: String,
    /// Hub revision of the model (branch, tag or commit sha); `None` for a local model.
    pub revision: Option<String>,
    /// Hub id (`@revision` unless `main`) or local path of the dataset.
    pub dataset: String,
}

/// Batched collection into an activation store in `out`: documents packed into `batch_size`
/// rows of up to `max_len` tokens per forward, padding excluded, memory bounded by a pool of a
/// few batches plus one shard. Rows are written in document order.
pub fn collect_to_store(
    model: &Model,
    tokenizer: &Tokenizer,
    docs: impl IntoIterator<Item = Result<String>>,
    cfg: &CollectConfig,
    provenance: &Provenance,
    out: &Path,
) -> Result<StoreMeta> {
    cfg.hook.check(model.n_layers())?;
    let meta = StoreMeta {
        model: provenance.model.clone(),
        revision: provenance.revision.clone(),
        hook: cfg.hook,
        context_size: cfg.max_len,
        dataset: provenance.dataset.clone(),
        mode: cfg.mode,
        rows: 0,
        d: model.width(cfg.hook),
        dtype: String::new(),
        docs: 0,
        skipped_empty: 0,
        filter: cfg.filter,
        outliers_dropped: 0,
        shards: Vec::new(),
    };
    let mut writer = StoreWriter::create(out, meta, cfg.shard_rows, cfg.dtype)?;
    let progress = Progress::new("collect", cfg.max_docs.map(|n| n as u64), "docs");
    let mut tokens_seen = 0usize;
    let mut docs = docs
        .into_iter()
        .take(cfg.max_docs.unwrap_or(usize::MAX))
        .enumerate()
        .peekable();
    while docs.peek().is_some() {
        let pool = read_pool(&mut docs, tokenizer, cfg)?;
        (0..pool.skipped_empty).for_each(|_| writer.skip_empty());
        let rows = run_pool(model, tokenizer, &pool.docs, &[cfg.hook], cfg)?;
        for ((doc_index, ids), row) in pool.docs.iter().zip(rows) {
            writer.add_document(*doc_index, ids, &row.positions, &row.values[0])?;
            writer.drop_outliers(row.outliers);
            tokens_seen += ids.len();
        }
        progress.inc((pool.docs.len() + pool.skipped_empty) as u64);
        progress.set_message(format!(
            "{} rows, {:.0} tokens/s",
            writer.rows(),
            tokens_seen as f64 / progress.elapsed().max(1e-9)
        ));
    }
    progress.finish();
    writer.finish()
}

/// Documents read for one round of packing: several batches' worth of tokens.
pub(crate) struct Pool {
    /// (dataset index, token ids) of each non-empty document.
    pub docs: Vec<(u32, Vec<u32>)>,
    /// Empty documents read on the way.
    pub skipped_empty: usize,
}

/// Reads and tokenises documents until the pool holds `POOL_BATCHES` batches' worth of tokens
/// or `docs` ends. Short documents then share rows instead of each padding one.
pub(crate) fn read_pool(
    docs: &mut impl Iterator<Item = (usize, Result<String>)>,
    tokenizer: &Tokenizer,
    cfg: &CollectConfig,
) -> Result<Pool> {
    let pool_tokens = cfg.batch_size.max(1) * cfg.max_len.max(1) * POOL_BATCHES;
    let mut pool = Pool {
        docs: Vec::new(),
        skipped_empty: 0,
    };
    let mut tokens = 0;
    for (i, doc) in docs.by_ref() {
        let ids = tokenizer.encode(&doc?, Some(cfg.max_len))?;
        if ids.is_empty() {
            pool.skipped_empty += 1;
        } else {
            tokens += ids.len();
            pool.docs.push((i as u32, ids));
        }
        if tokens >= pool_tokens {
            break;
        }
    }
    Ok(pool)
}

/// What one document of a pool gave.
pub(crate) struct DocRows {
    /// The token positions kept (per `cfg.mode`).
    pub positions: Vec<u32>,
    /// Per hook (in the order asked), `positions.len() × d` activations, row-major, `d` the
    /// hook's width.
    pub values: Vec<Vec<f32>>,
    /// Positions the mode kept that [`TokenFilter::outlier_norm`] left out.
    pub outliers: usize,
}

/// Runs a pool through the model, packed into `cfg.batch_size` rows per forward, and returns
/// each document's kept rows at every hook in `hooks`, in the pool's order. One forward serves
/// all hooks and stops at the deepest.
pub(crate) fn run_pool(
    model: &Model,
    tokenizer: &Tokenizer,
    pool: &[(u32, Vec<u32>)],
    hooks: &[HookPoint],
    cfg: &CollectConfig,
) -> Result<Vec<DocRows>> {
    let deepest = *hooks
        .iter()
        .max()
        .ok_or_else(|| Error::Input("no hook to collect at".into()))?;
    let mut rows: Vec<Option<DocRows>> = (0..pool.len()).map(|_| None).collect();
    let inputs: Vec<&[u32]> = pool
        .iter()
        .map(|(_, ids)| forwarded(ids, cfg.mode))
        .collect();
    let lens: Vec<usize> = inputs.iter().map(|ids| ids.len()).collect();
    let packed = pack(&lens, cfg.pack.then_some(cfg.max_len));
    for chunk in packed.chunks(cfg.batch_size.max(1)) {
        let seqs: Vec<Vec<&[u32]>> = chunk
            .iter()
            .map(|docs| docs.iter().map(|&i| inputs[i]).collect())
            .collect();
        let batch = TokenBatch::packed(&seqs, cfg.padding, tokenizer.pad_id(), model.device())?;
        let mut captured = hooks
            .iter()
            .fold(Hooks::new(), |h, &p| h.capture(p))
            .stop_at(deepest);
        model.forward(&batch, &mut captured)?;
        // Per hook, its activations flat and their width (`attn.hook_z`'s may differ).
        let mut flats = Vec::with_capacity(hooks.len());
        let mut t = 0;
        for &hook in hooks {
            let acts = captured
                .take(hook)?
                .to_dtype(DType::F32)?
                .to_device(&Device::Cpu)?; // (b, t, d)
            let (_, seq, d) = acts.dims3()?;
            t = seq;
            flats.push((acts.flatten_all()?.to_vec1::<f32>()?, d));
        }
        // Every kept (document, position) of the chunk with its place among the chunk's
        // tokens; the outlier filter needs them all, since its median is the chunk's.
        let mut kept: Vec<(usize, u32, usize)> = Vec::new();
        for (row, (docs, mask)) in chunk.iter().zip(batch.mask()).enumerate() {
            // Columns of the real tokens, in order (left padding shifts them); each packed
            // document takes the next `len` of them.
            let columns: Vec<usize> = (0..t).filter(|&c| mask[c] == 1).collect();
            let mut offset = 0;
            for &i in docs {
                let len = pool[i].1.len();
                let keep = match cfg.mode {
                    CollectMode::Middle => len / 2..len / 2 + 1,
                    CollectMode::All => usize::from(cfg.filter.exclude_first)..len,
                };
                for k in keep {
                    kept.push((i, k as u32, row * t + columns[offset + k]));
                }
                offset += lens[i];
                rows[i] = Some(DocRows {
                    positions: Vec::new(),
                    values: vec![Vec::new(); hooks.len()],
                    outliers: 0,
                });
            }
        }
        let outlier = match cfg.filter.outlier_norm {
            Some(_) => cfg.filter.outliers(
                &flats
                    .iter()
                    .map(|(flat, d)| {
                        kept.iter()
                            .map(|&(_, _, token)| norm(&flat[token * d..][..*d]))
                            .collect()
                    })
                    .collect::<Vec<_>>(),
            ),
            None => vec![false; kept.len()],
        };
        for (j, &(i, k, token)) in kept.iter().enumerate() {
            let doc = rows[i].as_mut().expect("set above");
            if outlier[j] {
                doc.outliers += 1;
                continue;
            }
            doc.positions.push(k);
            for (v, (flat, d)) in doc.values.iter_mut().zip(&flats) {
                v.extend_from_slice(&flat[token * d..][..*d]);
            }
        }
    }
    Ok(rows
        .into_iter()
        .map(|r| r.expect("every pooled document was run"))
        .collect())
}
