//! `sae eval` and `sae inspect`: an SAE read against a model, by default the model and text
//! its cfg.json names.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Device};
use clap::Args;
use sae_lib::collect::{collect_to_store, CollectConfig, Provenance};
use sae_lib::data::{ActivationStore, CollectMode, DatasetSource};
use sae_lib::hooks::HookPoint;
use sae_lib::hub::HubOptions;
use sae_lib::model::{hub_id_of, load_model, load_tokenizer, Model, ModelSource};
use sae_lib::sae::{Sae, SaeMetadata};
use sae_lib::tokenizer::Tokenizer;

use super::{dataset, load, sae_folder, warn_all, DataArgs, ModelArgs};

/// An SAE and the model and text to read it against (by default those its cfg.json names).
#[derive(Args)]
pub struct SaeSources {
    /// SAE folder, written by `sae train`, SAELens, sparsify (one hookpoint's folder) or
    /// dictionary_learning: on disk, a Hugging Face Hub repository's folder as
    /// `org/name[@revision]/folder`, or SAELens' `release/sae_id` as `SAE.from_pretrained`
    /// takes them (`pythia-70m-deduped-mlp-sm/blocks.5.hook_mlp_out`).
    #[arg(long)]
    sae: PathBuf,
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    data: DataArgs,
}

impl SaeSources {
    /// Where the flags leave them out, takes the model and dataset the SAE's cfg.json names,
    /// when sae-lib can load them (of SAELens' TransformerLens names, Pythia's, such as
    /// `pythia-70m-deduped`, are read as EleutherAI's), and says so.
    fn default_to_own(&mut self, meta: &SaeMetadata) {
        let loadable = |name: &str| name.contains('/') || Path::new(name).exists();
        let mut own = Vec::new();
        if let (None, Some(id)) = (&self.model.model, hub_id_of(&meta.model_name)) {
            own.push(format!("model {id}"));
            self.model.model = Some(id);
        }
        if self.data.dataset.is_none() && loadable(&meta.dataset_path) {
            own.push(format!("dataset {}", meta.dataset_path));
            self.data.dataset = Some(meta.dataset_path.clone());
        }
        if !own.is_empty() {
            eprintln!(
                "note: using the SAE's own {} (its cfg.json; --model and --dataset choose others)",
                own.join(" and ")
            );
        }
        if self.model.model.is_none() && meta.model_name.is_empty() {
            eprintln!(
                "note: the SAE's folder does not name its model (a sparsify SAE away from its \
                 run's config.json); trying {} (--model chooses the one it was trained on)",
                self.model.model()
            );
        }
    }
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    src: SaeSources,
    /// Hook to splice at (default: the SAE's own hook_name).
    #[arg(long)]
    hook: Option<String>,
    /// Documents to evaluate on.
    #[arg(long, default_value_t = 100)]
    max_docs: usize,
    /// Skip this many documents first [default: on the text the SAE came from, the documents
    /// its activations were collected from (its cfg.json's `training_docs`); else 0].
    #[arg(long)]
    skip_docs: Option<usize>,
    /// Tokens kept per document [default: the SAE's context_size, else 128].
    #[arg(long)]
    max_len: Option<usize>,
    #[arg(long, default_value_t = 8)]
    batch_size: usize,
    /// Where to write the metrics.
    #[arg(long, default_value = "metrics.json")]
    out: PathBuf,
}

/// `--model` gives the tokens and the logit lens (and, without --acts, the activations); it
/// defaults to the store's model with --acts, else to the SAE's own, as `--dataset` does.
#[derive(Args)]
pub struct InspectArgs {
    #[command(flatten)]
    src: SaeSources,
    /// Activation store to find the top contexts in [default: every token of the first
    /// --max-docs documents of the SAE's own text, collected now at its hook].
    #[arg(long)]
    acts: Option<PathBuf>,
    /// Without --acts: documents to collect from.
    #[arg(long, default_value_t = 200)]
    max_docs: usize,
    /// The feature to show (its index, from 0).
    #[arg(long)]
    feature: usize,
    /// Contexts to show.
    #[arg(long, default_value_t = 10)]
    top: usize,
    /// Also write the contexts as HTML and the histogram as PNG with this path prefix.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Tokens kept per document: the flag, else the SAE's context size, else 128.
fn context(flag: Option<usize>, meta: &SaeMetadata) -> usize {
    match (flag, meta.context_size) {
        (Some(n), _) => n,
        (None, 0) => 128,
        (None, n) => n,
    }
}

/// The hook to read: the flag, else the SAE's own.
fn hook_of(flag: Option<&str>, meta: &SaeMetadata) -> Result<HookPoint> {
    match flag {
        Some(h) => Ok(h.parse()?),
        None => meta
            .hook_name
            .parse()
            .context("the SAE's cfg.json names no usable hook_name; pass --hook"),
    }
}

pub fn eval(mut args: EvalArgs) -> Result<()> {
    args.src.sae = sae_folder(&args.src.sae)?;
    let meta = sae_lib::sae::format::metadata(&args.src.sae)?;
    args.src.default_to_own(&meta);
    let max_len = context(args.max_len, &meta);
    let own_text = DatasetSource::parse(args.src.data.dataset()).name() == meta.dataset_path;
    let skip = match (args.skip_docs, meta.training_docs) {
        (Some(n), _) => n,
        (None, Some(n)) if own_text => {
            eprintln!(
                "note: evaluating on the documents of {} after the first {n}, which the SAE's \
                 activations came from (--skip-docs 0 starts at the first)",
                meta.dataset_path
            );
            n
        }
        (None, _) => {
            if own_text {
                eprintln!(
                    "note: the first documents of {} may be ones the SAE trained on (its \
                     cfg.json does not say how many); --skip-docs N evaluates on the documents \
                     after the first N",
                    meta.dataset_path
                );
            }
            0
        }
    };
    let (model, tokenizer, _) = load(&args.src.model)?;
    let sae = sae_lib::sae::format::load(&args.src.sae, model.device())?;
    let hook = hook_of(args.hook.as_deref(), &meta)?;
    let (data, opts) = dataset(&args.src.data);
    let sequences = data
        .documents(&opts, &HubOptions::from_env())?
        .skip(skip)
        .take(args.max_docs)
        .map(|d| tokenizer.encode(&d?, Some(max_len)))
        .collect::<sae_lib::Result<Vec<_>>>()?;
    if skip > 0 && sequences.iter().all(Vec::is_empty) {
        anyhow::bail!(
            "{} has no documents with text after the first {skip}, so nothing is left to \
             evaluate on: pass a smaller --skip-docs (0 evaluates on the documents the SAE may \
             have trained on) or another --dataset",
            args.src.data.dataset()
        );
    }
    let metrics = sae_lib::eval::splice_eval(
        &model,
        &sae,
        hook,
        &sequences,
        &tokenizer.special_ids()?,
        args.batch_size,
    )?;
    let warnings: Vec<String> = metrics.warning().into_iter().collect();
    let mut json = serde_json::to_value(&metrics)?;
    json["warnings"] = serde_json::json!(warnings);
    sae_lib::io::write_json(&args.out, &json)?;
    println!(
        "CE clean {:.4}, with SAE {:.4}, zero-ablated {:.4}: CE loss recovered {:.4}; KL {:.4} nats/token ({} tokens) -> {}",
        metrics.ce_loss_without_sae,
        metrics.ce_loss_with_sae,
        metrics.ce_loss_with_ablation,
        metrics.ce_loss_score,
        metrics.kl_div_with_sae,
        metrics.tokens,
        args.out.display()
    );
    if metrics.tokens_passed_through > 0 {
        println!(
            "{} tokens kept their own activation with the SAE spliced in: the tokenizer's \
             special tokens (a BOS), and those its training left out (exclude_first {}, \
             outlier_norm {:?} in its cfg.json)",
            metrics.tokens_passed_through, meta.filter.exclude_first, meta.filter.outlier_norm
        );
    }
    warn_all(&warnings);
    Ok(())
}

/// The activations `inspect` reads, with the tokenizer and (for the logit lens) the model.
struct Inspected {
    store: ActivationStore,
    tokenizer: Tokenizer,
    model: sae_lib::Result<Model>,
    /// Holds a store collected for this run; it is deleted when dropped.
    _collected: Option<tempfile::TempDir>,
}

/// A given store, with the model it names (or `--model`) for its tokens and the logit lens.
fn from_store(acts: &Path, args: &InspectArgs) -> Result<Inspected> {
    let store = ActivationStore::open(acts)?;
    let hub = HubOptions::from_env();
    let source = ModelSource::parse(
        args.src
            .model
            .model
            .as_deref()
            .unwrap_or(&store.meta().model),
    );
    let tokenizer = match &args.src.model.tokenizer {
        Some(p) => Tokenizer::from_file(p)?,
        None => load_tokenizer(&source, &hub)?,
    };
    // The logit lens needs the model's unembedding; it is skipped when the model cannot load.
    let model = load_model(&source, &Device::Cpu, DType::F32, &hub);
    Ok(Inspected {
        store,
        tokenizer,
        model,
        _collected: None,
    })
}

/// Every token of the first `--max-docs` documents, run through the model at the SAE's hook
/// into a temporary store.
fn collected(args: &mut InspectArgs, meta: &SaeMetadata) -> Result<Inspected> {
    args.src.default_to_own(meta);
    let (model, tokenizer, source) = load(&args.src.model)?;
    let (data, opts) = dataset(&args.src.data);
    let cfg = CollectConfig {
        hook: hook_of(None, meta)?,
        mode: CollectMode::All,
        max_len: context(None, meta),
        max_docs: Some(args.max_docs),
        // The tokens it was trained on: attention sinks would top every feature's list.
        filter: meta.filter,
        ..Default::default()
    };
    // Named, so that one left behind by a killed run is recognisable in the temp folder.
    let dir = tempfile::Builder::new()
        .prefix("sae-inspect-")
        .tempdir()
        .context("cannot make a folder for the activations")?;
    let provenance = Provenance {
        model: source.name(),
        revision: None,
        dataset: data.name(),
    };
    let docs = data.documents(&opts, &HubOptions::from_env())?;
    let m = collect_to_store(&model, &tokenizer, docs, &cfg, &provenance, dir.path())?;
    // The tokens its training left out are left out here too.
    let left_out = match (m.filter.exclude_first, m.outliers_dropped) {
        (false, 0) => String::new(),
        (first, n) => format!(
            ", leaving out {}{n} outlier tokens as its training did",
            if first { "each first token and " } else { "" }
        ),
    };
    eprintln!(
        "note: collected {} activations at {} from {} documents of {}{left_out} (--acts reads \
         a store instead)",
        m.rows,
        cfg.hook,
        m.docs,
        data.name()
    );
    Ok(Inspected {
        store: ActivationStore::open(dir.path())?,
        tokenizer,
        model: Ok(model),
        _collected: Some(dir),
    })
}

pub fn inspect(mut args: InspectArgs) -> Result<()> {
    use sae_lib::eval::inspect::{contexts_html, feature_activations, logit_lens, top_contexts};
    args.src.sae = sae_folder(&args.src.sae)?;
    let sae = sae_lib::sae::format::load(&args.src.sae, &Device::Cpu)?;
    // Before a collection that may take minutes.
    sae_lib::eval::score::check_features(&sae, &[args.feature])?;
    let Inspected {
        store,
        tokenizer,
        model,
        _collected,
    } = match args.acts.clone() {
        Some(acts) => from_store(&acts, &args)?,
        None => collected(&mut args, &sae.config().metadata)?,
    };
    let contexts = top_contexts(&store, &sae, &tokenizer, args.feature, args.top)?;
    println!("feature {}: top {} contexts", args.feature, contexts.len());
    for c in &contexts {
        let p = c.position as usize;
        let before = c.tokens[p.saturating_sub(12)..p].concat();
        let after = c.tokens[p + 1..(p + 6).min(c.tokens.len())].concat();
        println!(
            "  {:8.3}  {}[[{}]]{}",
            c.activation,
            before.replace('\n', " "),
            c.tokens[p],
            after.replace('\n', " ")
        );
    }
    let lens = model.and_then(|model| {
        let unembed = model.unembed()?.to_device(&Device::Cpu)?;
        logit_lens(&sae, &unembed, &tokenizer, args.feature, 10)
    });
    match lens {
        Ok((up, down)) => {
            let show = |scores: &[(String, f32)]| {
                scores
                    .iter()
                    .map(|(t, s)| format!("{t:?} {s:.2}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            println!("  promotes: {}", show(&up));
            println!("  suppresses: {}", show(&down));
        }
        Err(e) => println!("  (no logit lens: {e})"),
    }
    if let Some(prefix) = &args.out {
        let html = prefix.with_extension("html");
        sae_lib::io::write_bytes(&html, contexts_html(args.feature, &contexts, 24).as_bytes())?;
        let values = feature_activations(&store, &sae, args.feature)?;
        let png = prefix.with_extension("png");
        sae_lib::plot::Chart::ActivationHistogram {
            feature: args.feature,
            values,
        }
        .save_png(&png)?;
        println!("wrote {} and {}", html.display(), png.display());
    }
    Ok(())
}
