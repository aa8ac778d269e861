//! `sae walkthrough`: the tutorial's stages (shared with the notebooks), then the evaluation
//! and a report folder: the SAELens-format SAE, `metrics.json`, PNG charts, top activating
//! contexts, and an `index.html` that shows them.

use sae_lib::data::{CollectMode, DatasetSource};
use sae_lib::eval::{inspect, metrics, splice_eval, SpliceMetrics};
use sae_lib::hooks::HookPoint;
use sae_lib::plot::Chart;
use sae_lib::train::{MetricsRow, RunSummary};
use sae_lib::walkthrough::{
    activations, held_out_activations, held_out_sequences, is_saved, load, train_sae, Stage,
    WalkthroughConfig,
};
use sae_lib::{io, Result};
use serde::Serialize;

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
    /// Over all stored (training) activations, with the saved SAE.
    pub explained_variance: f64,
    pub fvu: f64,
    pub l0: f64,
    pub dead_fraction: f64,
    /// On the activations of the held-out documents (collected as the training ones, never
    /// trained on); `None` when the dataset has too few documents left after the training
    /// ones.
    pub held_out: Option<sae_lib::eval::Score>,
    /// Whether the splice evaluation ran on held-out documents; when `false` none remained
    /// and it ran on training documents.
    pub splice_held_out: bool,
    pub splice: SpliceMetrics,
    pub inspected_features: Vec<usize>,
    pub charts: Vec<String>,
}

/// Runs the whole tutorial and writes the report into `cfg.out`.
pub fn run(cfg: &WalkthroughConfig) -> Result<WalkthroughReport> {
    io::create_dir(&cfg.out)?;
    let (model, tokenizer) = load(cfg)?;
    println!(
        "[1/4] collecting activations at {} ({:?} mode)",
        cfg.collect.hook, cfg.collect.mode
    );
    if is_saved(cfg, Stage::Activations) {
        println!(
            "      reusing the activations in {}",
            cfg.activations_dir().display()
        );
    }
    let store = activations(cfg, &model, &tokenizer)?;
    println!(
        "[2/4] training a {:?} SAE with {} features on {} activations",
        cfg.architecture,
        cfg.d_sae,
        store.len()
    );
    if is_saved(cfg, Stage::Sae) {
        println!(
            "      reusing the SAE trained earlier in {}",
            cfg.sae_dir().display()
        );
    }
    let (sae, training) = train_sae(cfg, &store)?;
    let held_out = held_out_sequences(cfg, &tokenizer)?;
    println!(
        "[3/4] evaluating on {} held-out documents",
        held_out.sequences.len()
    );
    if held_out.from_training {
        println!("      no held-out documents remain; evaluating on training documents");
    }
    let splice = splice_eval(
        &model,
        &sae,
        cfg.collect.hook,
        &held_out.sequences,
        &held_out.special,
        8,
    )?;
    let held_out_score = match held_out_activations(cfg, &model, &tokenizer)? {
        Some(rows) if rows.len() >= 2 => {
            Some(sae_lib::eval::score(&rows, &sae, &cfg.device, &mut |_| {})?)
        }
        _ => None,
    };
    let data = DatasetSource::parse(&cfg.dataset);

    println!("[4/4] writing the report to {}", cfg.out.display());
    let scored = sae_lib::eval::score(&store, &sae, &cfg.device, &mut |_| {})?;
    let density = metrics::log10_density(&scored.firing_counts, store.len() as f64);
    // Inspect the most frequently firing features that are not dense.
    let counts = &scored.firing_counts;
    let mut by_freq: Vec<usize> = (0..counts.len()).filter(|&i| counts[i] > 0.0).collect();
    by_freq.sort_by(|&a, &b| counts[b].total_cmp(&counts[a]));
    let inspected: Vec<usize> = by_freq.into_iter().take(cfg.inspect_features).collect();
    let (x, x_hat) = sae_lib::eval::score::sample_reconstruction(&store, &sae, 64, &cfg.device)?;
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
    let acts = sae_lib::eval::score::feature_activations(&store, &sae, &inspected, &cfg.device)?;
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
    // What the trainer found in the activations before its first step.
    let mut warnings: Vec<String> = sae_lib::walkthrough::outliers(cfg).into_iter().collect();
    warnings.extend(sae_lib::train::diagnose(&RunSummary {
        architecture: cfg.architecture,
        d_sae: cfg.d_sae,
        l0: scored.l0,
        fvu: scored.fvu,
        dead_fraction: scored.dead_fraction,
        sparsity_coefficient: cfg.train.sparsity_coefficient,
        lr: cfg.train.adam.lr,
    }));
    if let (Some(h), Some(last)) = (&held_out_score, training.last()) {
        let passes = last.passes(store.len());
        warnings.extend(sae_lib::train::diagnose_held_out(scored.fvu, h.fvu, passes));
    }
    warnings.extend(splice.warning());
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
        held_out: held_out_score,
        splice_held_out: !held_out.from_training,
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
            "FVU / explained variance, training rows",
            format!("{:.4} / {:.4}", r.fvu, r.explained_variance),
        ),
        ("L0, training rows", format!("{:.2}", r.l0)),
        (
            "FVU / explained variance / L0, held out",
            r.held_out
                .as_ref()
                .map_or("no held-out documents".into(), |h| {
                    format!(
                        "{:.4} / {:.4} / {:.2} ({} rows)",
                        h.fvu, h.explained_variance, h.l0, h.rows
                    )
                }),
        ),
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
        (
            "CE loss recovered",
            format!(
                "{:.4} (on {} documents)",
                s.ce_loss_score,
                if r.splice_held_out {
                    "held-out"
                } else {
                    "training"
                }
            ),
        ),
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
        format!("<p><small>{}</small></p>", sae_lib::eval::CE_ABOVE_ONE)
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
