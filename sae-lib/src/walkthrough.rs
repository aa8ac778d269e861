//! The whole tutorial, headless: collect activations, train the SAE, evaluate it spliced into
//! the model, and write a report folder (the SAELens-format SAE, `metrics.json`, PNG charts,
//! top activating contexts, and an `index.html` that shows them).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use serde::Serialize;

use crate::collect::{collect_to_store, CollectConfig, Provenance};
use crate::data::{ActivationStore, CollectMode, DatasetOptions, DatasetSource};
use crate::eval::{inspect, metrics, splice_eval, SpliceMetrics};
use crate::hooks::HookPoint;
use crate::hub::HubOptions;
use crate::model::{load_model, load_tokenizer, Model, ModelSource};
use crate::plot::Chart;
use crate::sae::{format, AnySae, Architecture, SaeConfig, SaeMetadata};
use crate::tokenizer::Tokenizer;
use crate::train::{MetricsRow, RunSummary, TrainConfig, Trainer};
use crate::{io, Error, Result};

/// Everything the walkthrough needs; `Default` is the tutorial.
#[derive(Debug, Clone)]
pub struct WalkthroughConfig {
    pub model: String,
    /// A tokenizer.json overriding the model's own.
    pub tokenizer: Option<PathBuf>,
    pub dataset: String,
    pub dataset_options: DatasetOptions,
    pub collect: CollectConfig,
    pub architecture: Architecture,
    pub d_sae: usize,
    /// Active features per input, for TopK-style architectures.
    pub k: Option<usize>,
    pub train: TrainConfig,
    /// Documents after the training ones, held out for the splice evaluation.
    pub eval_docs: usize,
    /// Features whose top contexts go into the report.
    pub inspect_features: usize,
    pub device: Device,
    pub model_dtype: DType,
    pub out: PathBuf,
}

impl Default for WalkthroughConfig {
    fn default() -> Self {
        Self {
            model: "EleutherAI/pythia-70m-deduped".into(),
            tokenizer: None,
            dataset: "NeelNanda/pile-10k".into(),
            dataset_options: DatasetOptions::default(),
            collect: CollectConfig {
                batch_size: 1,
                pack: false,
                ..Default::default()
            },
            architecture: Architecture::Relu,
            d_sae: 4096,
            k: None,
            train: TrainConfig::for_architecture(Architecture::Relu, 4096),
            eval_docs: 100,
            inspect_features: 4,
            device: Device::Cpu,
            model_dtype: DType::F32,
            out: PathBuf::from("walkthrough"),
        }
    }
}

/// `metrics.json`.
#[derive(Debug, Clone, Serialize)]
pub struct WalkthroughReport {
    /// What is wrong with the SAE, each with what to change (empty when it is healthy).
    pub warnings: Vec<String>,
    pub model: String,
    pub dataset: String,
    pub hook: HookPoint,
    pub mode: CollectMode,
    pub rows: usize,
    pub d_in: usize,
    pub d_sae: usize,
    pub final_training: Option<MetricsRow>,
    /// Over all stored activations, with the saved SAE.
    pub explained_variance: f64,
    pub fvu: f64,
    pub l0: f64,
    pub dead_fraction: f64,
    pub splice: SpliceMetrics,
    pub inspected_features: Vec<usize>,
    pub charts: Vec<String>,
}

/// Loads the model and tokenizer a walkthrough (or notebook) asks for.
pub fn load(cfg: &WalkthroughConfig) -> Result<(Model, Tokenizer)> {
    let hub = HubOptions::from_env();
    let source = ModelSource::parse(&cfg.model);
    let model = load_model(&source, &cfg.device, cfg.model_dtype, &hub)?;
    let tokenizer = match &cfg.tokenizer {
        Some(p) => Tokenizer::from_file(p)?,
        None => load_tokenizer(&source, &hub)?,
    };
    Ok((model, tokenizer))
}

impl WalkthroughConfig {
    /// The tutorial's defaults, overridden by environment variables, so notebooks and scripts
    /// can point at local files without editing code:
    ///
    /// | variable | field | default |
    /// |---|---|---|
    /// | `SAE_MODEL` | Hub id, model directory or `.gguf` file | `EleutherAI/pythia-70m-deduped` |
    /// | `SAE_TOKENIZER` | a tokenizer.json overriding the model's | the model's own |
    /// | `SAE_DATASET` | Hub id or local .parquet/.jsonl/.txt/dir | `NeelNanda/pile-10k` |
    /// | `SAE_HOOK` | hook point | `blocks.5.hook_mlp_out` |
    /// | `SAE_MODE` | `middle` (the tutorial's) or `all` tokens | `middle` |
    /// | `SAE_MAX_LEN` | tokens kept per document | 128 |
    /// | `SAE_MAX_DOCS` | training documents | all |
    /// | `SAE_EVAL_DOCS` | held-out documents for the splice evaluation | 100 |
    /// | `SAE_ARCH` | relu, topk, batchtopk, jumprelu, gated, matryoshka | relu |
    /// | `SAE_D_SAE`, `SAE_K` | dictionary size, active features (TopK family) | 4096, the architecture's |
    /// | `SAE_STEPS`, `SAE_BATCH_SIZE` | training steps and batch | 2000, 4096 |
    /// | `SAE_L1`, `SAE_LR`, `SAE_SEED` | sparsity coefficient, learning rate, seed | the architecture's, 0 |
    /// | `SAE_DEVICE` | auto, cpu, cuda[:N], metal[:N] | auto |
    /// | `SAE_OUT` | folder for activations, the SAE and the report | `walkthrough` |
    ///
    /// A value that does not parse is an error naming the variable.
    pub fn from_env() -> Result<Self> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// [`from_env`](Self::from_env) over any source of variables (empty values count as unset).
    pub fn from_vars(get: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let var = |name: &str| get(name).filter(|v| !v.trim().is_empty());
        fn parse<T: std::str::FromStr>(name: &str, value: String) -> Result<T> {
            value.trim().parse().map_err(|_| {
                Error::Input(format!("{name}={value} is not a valid value for {name}"))
            })
        }
        let mut cfg = Self::default();
        if let Some(v) = var("SAE_MODEL") {
            cfg.model = v;
        }
        cfg.tokenizer = var("SAE_TOKENIZER").map(PathBuf::from);
        if let Some(v) = var("SAE_DATASET") {
            cfg.dataset = v;
        }
        if let Some(v) = var("SAE_HOOK") {
            cfg.collect.hook = v.parse()?;
        }
        if let Some(v) = var("SAE_MODE") {
            cfg.collect.mode = match v.as_str() {
                "middle" => CollectMode::Middle,
                "all" => CollectMode::All,
                _ => return Err(Error::Input(format!("SAE_MODE={v}: use middle or all"))),
            };
            // Batch and pack the all-token collection; the middle-token one mirrors the
            // tutorial's loop, one prompt per forward.
            let all = cfg.collect.mode == CollectMode::All;
            cfg.collect.batch_size = if all { 32 } else { 1 };
            cfg.collect.pack = all;
        }
        if let Some(v) = var("SAE_MAX_LEN") {
            cfg.collect.max_len = parse("SAE_MAX_LEN", v)?;
        }
        if let Some(v) = var("SAE_MAX_DOCS") {
            cfg.collect.max_docs = Some(parse("SAE_MAX_DOCS", v)?);
        }
        if let Some(v) = var("SAE_EVAL_DOCS") {
            cfg.eval_docs = parse("SAE_EVAL_DOCS", v)?;
        }
        if let Some(v) = var("SAE_ARCH") {
            cfg.architecture = Architecture::parse(&v)?;
        }
        if let Some(v) = var("SAE_D_SAE") {
            cfg.d_sae = parse("SAE_D_SAE", v)?;
        }
        // The architecture's own defaults, before any explicit value.
        let defaults = cfg.architecture.defaults(cfg.d_sae);
        cfg.k = defaults.k;
        cfg.train.adam.lr = defaults.lr;
        cfg.train.sparsity_coefficient = defaults.sparsity_coefficient;
        if let Some(v) = var("SAE_K") {
            cfg.k = Some(parse("SAE_K", v)?);
        }
        if let Some(v) = var("SAE_STEPS") {
            cfg.train.steps = parse("SAE_STEPS", v)?;
        }
        if let Some(v) = var("SAE_BATCH_SIZE") {
            cfg.train.batch_size = parse("SAE_BATCH_SIZE", v)?;
        }
        if let Some(v) = var("SAE_L1") {
            cfg.train.sparsity_coefficient = parse("SAE_L1", v)?;
        }
        if let Some(v) = var("SAE_LR") {
            cfg.train.adam.lr = parse("SAE_LR", v)?;
        }
        if let Some(v) = var("SAE_SEED") {
            cfg.train.seed = parse("SAE_SEED", v)?;
        }
        cfg.device = crate::device::parse_device(var("SAE_DEVICE").as_deref().unwrap_or("auto"))?;
        if let Some(v) = var("SAE_OUT") {
            cfg.out = PathBuf::from(v);
        }
        Ok(cfg)
    }

    /// Checks every setting before any work starts.
    pub fn validate(&self) -> Result<()> {
        self.collect.validate()?;
        crate::sae::validate_shape(self.architecture, self.d_sae, self.k)?;
        self.train.validate(!self.architecture.uses_k())?;
        if self.eval_docs == 0 {
            return Err(Error::Input(
                "the evaluation needs at least 1 held-out document (got 0)".into(),
            ));
        }
        Ok(())
    }

    /// The settings as an HTML table, for notebooks.
    pub fn summary(&self) -> crate::plot::Html {
        let c = &self.collect;
        let rows = [
            ("model", self.model.clone()),
            ("dataset", self.dataset.clone()),
            ("hook", c.hook.to_string()),
            (
                "collection",
                format!("{:?}, {} tokens per document", c.mode, c.max_len),
            ),
            (
                "documents",
                c.max_docs.map_or("all".into(), |n| n.to_string()),
            ),
            (
                "SAE",
                format!(
                    "{} with {} features{}",
                    self.architecture.name(),
                    self.d_sae,
                    self.k.map_or(String::new(), |k| format!(", k = {k}"))
                ),
            ),
            (
                "training",
                format!(
                    "{} steps of {} inputs, λ = {}, lr = {}, seed {}",
                    self.train.steps,
                    self.train.batch_size,
                    self.train.sparsity_coefficient,
                    self.train.adam.lr,
                    self.train.seed
                ),
            ),
            ("device", format!("{:?}", self.device)),
            ("output folder", self.out.display().to_string()),
        ];
        crate::plot::Html::table(
            &["setting", "value"],
            rows.iter().map(|(k, v)| vec![k.to_string(), v.clone()]),
        )
    }

    /// The same settings for another architecture, with that architecture's own defaults
    /// (`k`, learning rate, sparsity coefficient); steps, batch and seed stay.
    pub fn with_architecture(&self, architecture: Architecture) -> Self {
        let d = architecture.defaults(self.d_sae);
        let mut cfg = Self {
            architecture,
            k: d.k,
            ..self.clone()
        };
        cfg.train.adam.lr = d.lr;
        cfg.train.sparsity_coefficient = d.sparsity_coefficient;
        cfg
    }

    /// The SAE this configuration trains, for activations of width `d_in`.
    pub fn sae_config(&self, d_in: usize) -> SaeConfig {
        SaeConfig {
            architecture: self.architecture,
            d_in,
            d_sae: self.d_sae,
            k: self.k,
            prefixes: None,
            metadata: SaeMetadata {
                model_name: self.model.clone(),
                hook_name: self.collect.hook.to_string(),
                context_size: self.collect.max_len,
                prepend_bos: false,
                dataset_path: DatasetSource::parse(&self.dataset).name(),
            },
        }
    }

    /// The documents of the configured dataset.
    pub fn documents(&self) -> Result<crate::data::dataset::Documents> {
        DatasetSource::parse(&self.dataset)
            .documents(&self.dataset_options, &HubOptions::from_env())
    }

    /// Where [`activations`] keeps its store.
    pub fn activations_dir(&self) -> PathBuf {
        self.out.join("activations")
    }

    /// Where [`train_sae`] keeps the SAE (SAELens format) and its training metrics: one folder
    /// per architecture, so Part 2's variants sit beside Part 1's ReLU SAE.
    pub fn sae_dir(&self) -> PathBuf {
        self.out.join(format!("sae-{}", self.architecture.name()))
    }
}

/// What a stage's output was made from: a stage reuses its saved output only when this matches,
/// so changing a setting and re-running a notebook cell recomputes what it must and no more.
fn stage_key(cfg: &WalkthroughConfig, stage: &str) -> serde_json::Value {
    let c = &cfg.collect;
    let collect = serde_json::json!({
        "model": cfg.model, "tokenizer": cfg.tokenizer, "dataset": cfg.dataset,
        "hook": c.hook.to_string(), "mode": c.mode, "max_len": c.max_len,
        "max_docs": c.max_docs, "exclude_first": c.exclude_first,
    });
    match stage {
        "activations" => collect,
        _ => serde_json::json!({
            "activations": collect, "architecture": cfg.architecture.name(),
            "d_sae": cfg.d_sae, "k": cfg.k, "train": cfg.train,
        }),
    }
}

fn saved_matches(dir: &Path, key: &serde_json::Value) -> bool {
    io::read_json::<serde_json::Value>(&dir.join("made_from.json")).is_ok_and(|saved| &saved == key)
}

/// Marks a stage's saved output stale before it is rewritten, so an interrupted run is never
/// mistaken for a finished one.
fn forget(dir: &Path) {
    let _ = std::fs::remove_file(dir.join("made_from.json"));
}

/// What in `cfg.out` a run of `cfg` would replace: finished stages made with other settings,
/// or a run of another command. `None` when the folder is new, holds only matching stages
/// (which are reused) or only interrupted ones.
pub fn conflicts(cfg: &WalkthroughConfig) -> Option<String> {
    let stale = |dir: &Path, stage: &str| {
        dir.join("made_from.json").is_file() && !saved_matches(dir, &stage_key(cfg, stage))
    };
    let mut what = Vec::new();
    if stale(&cfg.activations_dir(), "activations") {
        what.push(format!(
            "activations collected with other settings ({})",
            cfg.activations_dir().display()
        ));
    }
    if stale(&cfg.sae_dir(), "sae") {
        what.push(format!(
            "a {} SAE trained with other settings ({})",
            cfg.architecture.name(),
            cfg.sae_dir().display()
        ));
    }
    let top = crate::output::existing_run(&cfg.out);
    // A walkthrough's own report (metrics.json) is rewritten with its stages; anything else at
    // the top (a training run, a store, a sweep) belongs to another command.
    if top
        .as_ref()
        .is_some_and(|t| !t.starts_with("a walkthrough report"))
    {
        what.extend(top);
    }
    (!what.is_empty()).then(|| what.join(" and "))
}

/// Marks every stage of `cfg` stale, so the next run recomputes it (`--overwrite`).
pub fn forget_stages(cfg: &WalkthroughConfig) {
    forget(&cfg.activations_dir());
    forget(&cfg.sae_dir());
}

/// The activation store for `cfg`, collected into [`WalkthroughConfig::activations_dir`], or
/// reopened if an earlier run (or notebook) already collected it with the same settings.
pub fn activations(
    cfg: &WalkthroughConfig,
    model: &Model,
    tokenizer: &Tokenizer,
) -> Result<ActivationStore> {
    let dir = cfg.activations_dir();
    let key = stage_key(cfg, "activations");
    if saved_matches(&dir, &key) {
        if let Ok(store) = ActivationStore::open(&dir) {
            println!("reusing {} activations from {}", store.len(), dir.display());
            return Ok(store);
        }
    }
    forget(&dir);
    let provenance = Provenance {
        model: cfg.model.clone(),
        revision: None,
        dataset: DatasetSource::parse(&cfg.dataset).name(),
    };
    collect_to_store(
        model,
        tokenizer,
        cfg.documents()?,
        &cfg.collect,
        &provenance,
        &dir,
    )?;
    io::write_json(&dir.join("made_from.json"), &key)?;
    ActivationStore::open(&dir)
}

/// The trained SAE for `cfg` and its training metrics: trained on `store` and saved into
/// [`WalkthroughConfig::sae_dir`], or loaded if it was already trained with the same settings.
pub fn train_sae(
    cfg: &WalkthroughConfig,
    store: &ActivationStore,
) -> Result<(AnySae, Vec<MetricsRow>)> {
    let dir = cfg.sae_dir();
    let key = stage_key(cfg, "sae");
    let metrics_path = dir.join("training_metrics.json");
    if saved_matches(&dir, &key) {
        if let (Ok(sae), Ok(rows)) = (
            format::load(&dir, &cfg.device),
            io::read_json(&metrics_path),
        ) {
            println!("reusing the SAE trained earlier in {}", dir.display());
            return Ok((sae, rows));
        }
    }
    forget(&dir);
    let mut trainer = Trainer::new(
        cfg.sae_config(store.d()),
        cfg.train.clone(),
        store,
        &cfg.device,
    )?;
    trainer.train(Some(&dir), None)?;
    io::write_json(&metrics_path, &trainer.metrics())?;
    io::write_json(&dir.join("made_from.json"), &key)?;
    Ok((format::load(&dir, &cfg.device)?, trainer.metrics().to_vec()))
}

/// What is wrong with an SAE trained by [`train_sae`], from its last training metrics, each
/// with what to change (empty when it is healthy).
pub fn warnings(cfg: &WalkthroughConfig, training: &[MetricsRow]) -> Vec<String> {
    training.last().map_or_else(Vec::new, |last| {
        crate::train::diagnose(&RunSummary {
            architecture: cfg.architecture,
            d_sae: cfg.d_sae,
            l0: last.l0,
            fvu: last.fvu,
            dead_fraction: last.dead_frac,
            sparsity_coefficient: cfg.train.sparsity_coefficient,
            lr: cfg.train.adam.lr,
        })
    })
}

/// Token sequences of the documents after the training ones, for the splice evaluation
/// (the first documents when none remain, with a note saying so).
pub fn held_out_sequences(
    cfg: &WalkthroughConfig,
    store: &ActivationStore,
    tokenizer: &Tokenizer,
) -> Result<Vec<Vec<u32>>> {
    let meta = store.meta();
    let skip = cfg
        .collect
        .max_docs
        .unwrap_or(meta.docs + meta.skipped_empty);
    let take = |skip: usize| -> Result<Vec<Vec<u32>>> {
        cfg.documents()?
            .skip(skip)
            .take(cfg.eval_docs)
            .map(|d| tokenizer.encode(&d?, Some(cfg.collect.max_len)))
            .collect()
    };
    let held_out = take(skip)?;
    if held_out.iter().any(|s| s.len() >= 2) {
        return Ok(held_out);
    }
    println!("no held-out documents remain; evaluating on training documents");
    take(0)
}

/// Runs the whole tutorial and writes the report into `cfg.out`.
pub fn run(cfg: &WalkthroughConfig) -> Result<WalkthroughReport> {
    io::create_dir(&cfg.out)?;
    let (model, tokenizer) = load(cfg)?;
    println!(
        "[1/4] collecting activations at {} ({:?} mode)",
        cfg.collect.hook, cfg.collect.mode
    );
    let store = activations(cfg, &model, &tokenizer)?;
    println!(
        "[2/4] training a {:?} SAE with {} features on {} activations",
        cfg.architecture,
        cfg.d_sae,
        store.len()
    );
    let (sae, training) = train_sae(cfg, &store)?;
    println!("[3/4] evaluating on {} held-out documents", cfg.eval_docs);
    let held_out = held_out_sequences(cfg, &store, &tokenizer)?;
    let splice = splice_eval(&model, &sae, cfg.collect.hook, &held_out, 8)?;
    let data = DatasetSource::parse(&cfg.dataset);

    println!("[4/4] writing the report to {}", cfg.out.display());
    let scored = crate::eval::score(&store, &sae, &cfg.device, &mut |_| {})?;
    let density = metrics::log10_density(&scored.firing_counts, store.len() as f64);
    // Inspect the most frequently firing features that are not dense.
    let counts = &scored.firing_counts;
    let mut by_freq: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0.0).collect();
    by_freq.sort_by(|&a, &b| counts[b].total_cmp(&counts[a]));
    let inspected: Vec<usize> = by_freq.into_iter().take(cfg.inspect_features).collect();
    let (x, x_hat) = crate::eval::score::sample_reconstruction(&store, &sae, 64, &cfg.device)?;
    let mut charts = vec![
        (
            "training_curves".to_string(),
            Chart::TrainingCurves(training.clone()),
        ),
        (
            "feature_density".to_string(),
            Chart::FeatureDensity(density),
        ),
        (
            "l0_histogram".to_string(),
            Chart::L0Histogram(scored.l0_per_input.clone()),
        ),
        (
            "reconstruction".to_string(),
            Chart::Reconstruction { x, x_hat },
        ),
    ];
    let mut contexts_html = String::new();
    let acts = crate::eval::score::feature_activations(&store, &sae, &inspected, &cfg.device)?;
    for (&feature, values) in inspected.iter().zip(acts) {
        let contexts = inspect::top_contexts_of(&store, &values, &tokenizer, 5)?;
        contexts_html.push_str(&inspect::contexts_html(feature, &contexts, 24));
        contexts_html.push_str("<br>");
        charts.push((
            format!("feature_{feature}_activations"),
            Chart::ActivationHistogram { feature, values },
        ));
    }
    let mut chart_files = Vec::new();
    for (name, chart) in &charts {
        let file = format!("{name}.png");
        chart.save_png(&cfg.out.join(&file))?;
        chart_files.push(file);
    }
    let warnings = crate::train::diagnose(&RunSummary {
        architecture: cfg.architecture,
        d_sae: cfg.d_sae,
        l0: scored.l0,
        fvu: scored.fvu,
        dead_fraction: scored.dead_fraction,
        sparsity_coefficient: cfg.train.sparsity_coefficient,
        lr: cfg.train.adam.lr,
    });
    let report = WalkthroughReport {
        warnings,
        model: cfg.model.clone(),
        dataset: data.name(),
        hook: cfg.collect.hook,
        mode: cfg.collect.mode,
        rows: store.len(),
        d_in: store.d(),
        d_sae: cfg.d_sae,
        final_training: training.last().cloned(),
        explained_variance: scored.explained_variance,
        fvu: scored.fvu,
        l0: scored.l0,
        dead_fraction: scored.dead_fraction,
        splice,
        inspected_features: inspected,
        charts: chart_files,
    };
    io::write_json(&cfg.out.join("metrics.json"), &report)?;
    io::write_bytes(
        &cfg.out.join("index.html"),
        index_html(&report, &contexts_html).as_bytes(),
    )?;
    Ok(report)
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn index_html(r: &WalkthroughReport, contexts: &str) -> String {
    let s = &r.splice;
    let rows = [
        (
            "activations",
            format!("{} × {} ({:?} mode)", r.rows, r.d_in, r.mode),
        ),
        ("dictionary size", r.d_sae.to_string()),
        (
            "FVU / explained variance",
            format!("{:.4} / {:.4}", r.fvu, r.explained_variance),
        ),
        ("L0", format!("{:.2}", r.l0)),
        ("dead features", format!("{:.1}%", 100.0 * r.dead_fraction)),
        (
            "CE clean / spliced / zero-ablated / mean-ablated",
            format!(
                "{:.4} / {:.4} / {:.4} / {:.4} nats",
                s.ce_loss_without_sae,
                s.ce_loss_with_sae,
                s.ce_loss_with_ablation,
                s.ce_loss_with_mean_ablation
            ),
        ),
        ("CE loss recovered", format!("{:.4}", s.ce_loss_score)),
        (
            "KL(clean ‖ spliced) per token",
            format!("{:.4} nats", s.kl_div_with_sae),
        ),
    ];
    let table: String = rows
        .iter()
        .map(|(k, v)| {
            format!(
                "<tr><th style=\"text-align:left;padding-right:16px\">{k}</th><td>{v}</td></tr>"
            )
        })
        .collect();
    let ce_note = if s.ce_loss_score > 1.0 {
        format!("<p><small>{}</small></p>", crate::eval::CE_ABOVE_ONE)
    } else {
        String::new()
    };
    let warnings: String = if r.warnings.is_empty() {
        String::new()
    } else {
        let items: String = r
            .warnings
            .iter()
            .map(|w| format!("<li>{}</li>", html_escape(w)))
            .collect();
        format!(
            "<div style=\"border:2px solid #c00;background:#fee;padding:0.5em 1em\">\
             <strong>This SAE is degenerate:</strong><ul>{items}</ul></div>"
        )
    };
    let images: String = r.charts.iter().map(|c| format!("<figure><img src=\"{c}\" alt=\"{c}\" style=\"max-width:100%\"><figcaption>{c}</figcaption></figure>")).collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>SAE walkthrough: {model}</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;}}</style></head><body>\
         <h1>Sparse autoencoder on {model}, {hook}</h1>{warnings}<p>Dataset: {dataset}</p><table>{table}</table>{ce_note}\
         <h2>Charts</h2>{images}<h2>Top activating contexts</h2>{contexts}</body></html>",
        model = r.model,
        hook = r.hook,
        dataset = r.dataset,
    )
}

/// The report folder's files, for tests and callers.
pub fn report_files(cfg: &WalkthroughConfig) -> Vec<PathBuf> {
    let sae = cfg.sae_dir();
    vec![
        cfg.out.join("metrics.json"),
        cfg.out.join("index.html"),
        sae.join("cfg.json"),
        sae.join("sae_weights.safetensors"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<WalkthroughConfig> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        WalkthroughConfig::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn no_variables_give_the_tutorial() {
        let cfg = from(&[("SAE_DEVICE", "cpu")]).unwrap();
        assert_eq!(cfg.model, "EleutherAI/pythia-70m-deduped");
        assert_eq!(cfg.dataset, "NeelNanda/pile-10k");
        assert_eq!(cfg.collect.hook, HookPoint::mlp_out(5));
        assert_eq!(
            (cfg.collect.max_len, cfg.collect.mode),
            (128, CollectMode::Middle)
        );
        assert_eq!(
            cfg.train,
            TrainConfig::for_architecture(Architecture::Relu, 4096)
        );
    }

    #[test]
    fn variables_override_and_bad_values_name_the_variable() {
        let cfg = from(&[
            ("SAE_MODEL", "./m"),
            ("SAE_HOOK", "blocks.1.hook_mlp_out"),
            ("SAE_MODE", "all"),
            ("SAE_MAX_DOCS", "40"),
            ("SAE_ARCH", "topk"),
            ("SAE_K", "8"),
            ("SAE_STEPS", "150"),
            ("SAE_LR", "1e-3"),
            ("SAE_DEVICE", "cpu"),
            ("SAE_OUT", "/tmp/x"),
        ])
        .unwrap();
        assert_eq!(cfg.model, "./m");
        assert_eq!(cfg.collect.hook, HookPoint::mlp_out(1));
        assert_eq!(
            (cfg.collect.mode, cfg.collect.batch_size),
            (CollectMode::All, 32)
        );
        assert_eq!(cfg.collect.max_docs, Some(40));
        assert_eq!((cfg.architecture, cfg.k), (Architecture::TopK, Some(8)));
        assert_eq!((cfg.train.steps, cfg.train.adam.lr), (150, 1e-3));
        assert_eq!(cfg.sae_dir(), PathBuf::from("/tmp/x/sae-topk"));
        let err = from(&[("SAE_STEPS", "many")]).unwrap_err().to_string();
        assert!(err.contains("SAE_STEPS=many"), "{err}");
        let err = from(&[("SAE_MODE", "some")]).unwrap_err().to_string();
        assert!(err.contains("SAE_MODE"), "{err}");
    }
}
