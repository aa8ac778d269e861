//! The whole tutorial, headless: collect activations, train the SAE, evaluate it spliced into
//! the model, and write a report folder (the SAELens-format SAE, `metrics.json`, PNG charts,
//! top activating contexts, and an `index.html` that shows them).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, IndexOp};
use serde::Serialize;

use crate::collect::{collect_to_store, CollectConfig, Provenance};
use crate::data::{ActivationStore, CollectMode, DatasetOptions, DatasetSource};
use crate::eval::{inspect, metrics, splice_eval, SpliceMetrics};
use crate::hooks::HookPoint;
use crate::hub::HubOptions;
use crate::model::{load_model, load_tokenizer, Model, ModelSource};
use crate::plot::Chart;
use crate::sae::{format, Architecture, Sae, SaeConfig, SaeMetadata};
use crate::tokenizer::Tokenizer;
use crate::train::{MetricsRow, TrainConfig, Trainer};
use crate::{io, Result};

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
                ..Default::default()
            },
            architecture: Architecture::Relu,
            d_sae: 4096,
            k: None,
            train: TrainConfig::default(),
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

/// Runs the whole tutorial and writes the report into `cfg.out`.
pub fn run(cfg: &WalkthroughConfig) -> Result<WalkthroughReport> {
    io::create_dir(&cfg.out)?;
    let (model, tokenizer) = load(cfg)?;
    let hub = HubOptions::from_env();
    let data = DatasetSource::parse(&cfg.dataset);

    println!(
        "[1/4] collecting activations at {} ({:?} mode)",
        cfg.collect.hook, cfg.collect.mode
    );
    let acts_dir = cfg.out.join("activations");
    let provenance = Provenance {
        model: cfg.model.clone(),
        revision: None,
        dataset: data.name(),
    };
    let docs = data.documents(&cfg.dataset_options, &hub)?;
    let meta = collect_to_store(
        &model,
        &tokenizer,
        docs,
        &cfg.collect,
        &provenance,
        &acts_dir,
    )?;
    let store = ActivationStore::open(&acts_dir)?;

    println!(
        "[2/4] training a {:?} SAE with {} features on {} activations",
        cfg.architecture,
        cfg.d_sae,
        store.len()
    );
    let sae_cfg = SaeConfig {
        architecture: cfg.architecture,
        d_in: store.d(),
        d_sae: cfg.d_sae,
        k: cfg.k,
        prefixes: None,
        metadata: SaeMetadata {
            model_name: cfg.model.clone(),
            hook_name: cfg.collect.hook.to_string(),
            context_size: cfg.collect.max_len,
            prepend_bos: false,
            dataset_path: data.name(),
        },
    };
    let sae_dir = cfg.out.join("sae");
    let mut trainer = Trainer::new(sae_cfg, cfg.train.clone(), &store, &cfg.device)?;
    trainer.train(Some(&sae_dir), None)?;
    let sae = format::load(&sae_dir, &cfg.device)?;

    println!("[3/4] evaluating on {} held-out documents", cfg.eval_docs);
    let skip = cfg
        .collect
        .max_docs
        .unwrap_or(meta.docs + meta.skipped_empty);
    let held_out: Vec<Vec<u32>> = data
        .documents(&cfg.dataset_options, &hub)?
        .skip(skip)
        .take(cfg.eval_docs)
        .map(|d| tokenizer.encode(&d?, Some(cfg.collect.max_len)))
        .collect::<Result<_>>()?;
    // With no documents left after the training ones, evaluate on the first ones (and say so).
    let held_out = if held_out.iter().any(|s| s.len() >= 2) {
        held_out
    } else {
        println!("      no held-out documents remain; evaluating on training documents");
        data.documents(&cfg.dataset_options, &hub)?
            .take(cfg.eval_docs)
            .map(|d| tokenizer.encode(&d?, Some(cfg.collect.max_len)))
            .collect::<Result<_>>()?
    };
    let splice = splice_eval(&model, &sae, cfg.collect.hook, &held_out, 8)?;

    println!("[4/4] writing the report to {}", cfg.out.display());
    let x = store.to_tensor(&cfg.device)?;
    let f = sae.encode(&x)?;
    let x_hat = sae.decode(&f)?;
    let fvu = metrics::fvu(&x, &x_hat)?;
    let counts = metrics::firing_counts(&f)?;
    let density = metrics::log10_density(&counts, store.len() as f64);
    let l0_per_input = f.ne(0f32)?.to_dtype(DType::F32)?.sum(1)?.to_vec1::<f32>()?;
    // Inspect the most frequently firing features that are not dense.
    let mut by_freq: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0.0).collect();
    by_freq.sort_by(|&a, &b| counts[b].total_cmp(&counts[a]));
    let inspected: Vec<usize> = by_freq.into_iter().take(cfg.inspect_features).collect();
    let sample = x.dim(0)?.min(64);
    let mut charts = vec![
        (
            "training_curves".to_string(),
            Chart::TrainingCurves(trainer.metrics().to_vec()),
        ),
        (
            "feature_density".to_string(),
            Chart::FeatureDensity(density),
        ),
        (
            "l0_histogram".to_string(),
            Chart::L0Histogram(l0_per_input.clone()),
        ),
        (
            "reconstruction".to_string(),
            Chart::Reconstruction {
                x: x.i(0..sample)?.flatten_all()?.to_vec1()?,
                x_hat: x_hat.i(0..sample)?.flatten_all()?.to_vec1()?,
            },
        ),
    ];
    let mut contexts_html = String::new();
    for &feature in &inspected {
        let values = inspect::feature_activations(&store, &sae, feature)?;
        charts.push((
            format!("feature_{feature}_activations"),
            Chart::ActivationHistogram { feature, values },
        ));
        let contexts = inspect::top_contexts(&store, &sae, &tokenizer, feature, 5)?;
        contexts_html.push_str(&inspect::contexts_html(feature, &contexts, 24));
        contexts_html.push_str("<br>");
    }
    let mut chart_files = Vec::new();
    for (name, chart) in &charts {
        let file = format!("{name}.png");
        chart.save_png(&cfg.out.join(&file))?;
        chart_files.push(file);
    }
    let dead_fraction = counts.iter().filter(|&&c| c == 0.0).count() as f64 / counts.len() as f64;
    let report = WalkthroughReport {
        model: cfg.model.clone(),
        dataset: data.name(),
        hook: cfg.collect.hook,
        mode: cfg.collect.mode,
        rows: store.len(),
        d_in: store.d(),
        d_sae: cfg.d_sae,
        final_training: trainer.metrics().last().cloned(),
        explained_variance: 1.0 - fvu,
        fvu,
        l0: l0_per_input.iter().map(|&v| v as f64).sum::<f64>() / l0_per_input.len() as f64,
        dead_fraction,
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
    let images: String = r.charts.iter().map(|c| format!("<figure><img src=\"{c}\" alt=\"{c}\" style=\"max-width:100%\"><figcaption>{c}</figcaption></figure>")).collect();
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>SAE walkthrough: {model}</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;}}</style></head><body>\
         <h1>Sparse autoencoder on {model}, {hook}</h1><p>Dataset: {dataset}</p><table>{table}</table>\
         <h2>Charts</h2>{images}<h2>Top activating contexts</h2>{contexts}</body></html>",
        model = r.model,
        hook = r.hook,
        dataset = r.dataset,
    )
}

/// The report folder's files, for tests and callers.
pub fn report_files(out: &Path) -> Vec<PathBuf> {
    [
        "metrics.json",
        "index.html",
        "sae/cfg.json",
        "sae/sae_weights.safetensors",
    ]
    .iter()
    .map(|f| out.join(f))
    .collect()
}
