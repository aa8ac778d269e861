//! The tutorial's stages, each saved under the configuration's output folder and reused when a
//! later run (or notebook cell) asks for the same thing with the same settings.

use std::path::Path;

use crate::collect::{collect_to_store, CollectConfig, Provenance};
use crate::data::{ActivationStore, DatasetSource};
use crate::hub::HubOptions;
use crate::model::{load_model, load_tokenizer, Model, ModelSource};
use crate::sae::{format, AnySae};
use crate::tokenizer::Tokenizer;
use crate::train::{MetricsRow, RunSummary, TrainReport, Trainer};
use crate::{io, Result};

use super::{DocSplit, WalkthroughConfig};

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

/// A stage whose output is saved under the configuration's output folder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// [`activations`], in [`WalkthroughConfig::activations_dir`].
    Activations,
    /// [`train_sae`], in [`WalkthroughConfig::sae_dir`].
    Sae,
    /// [`held_out_activations`], in [`WalkthroughConfig::held_out_dir`].
    HeldOut,
}

impl Stage {
    fn dir(self, cfg: &WalkthroughConfig) -> std::path::PathBuf {
        match self {
            Stage::Activations => cfg.activations_dir(),
            Stage::Sae => cfg.sae_dir(),
            Stage::HeldOut => cfg.held_out_dir(),
        }
    }
}

/// Whether `stage` was already run with `cfg`'s settings, so calling it loads the saved
/// output instead of recomputing it.
pub fn is_saved(cfg: &WalkthroughConfig, stage: Stage) -> bool {
    saved_matches(&stage.dir(cfg), &stage_key(cfg, stage))
}

/// What a stage's output was made from: a stage reuses its saved output only when this matches,
/// so changing a setting and re-running a notebook cell recomputes what it must and no more.
fn stage_key(cfg: &WalkthroughConfig, stage: Stage) -> serde_json::Value {
    let c = &cfg.collect;
    let collect = serde_json::json!({
        "model": cfg.model, "tokenizer": cfg.tokenizer, "dataset": cfg.dataset,
        "hook": c.hook.to_string(), "mode": c.mode, "max_len": c.max_len,
        "max_docs": c.max_docs, "exclude_first": c.filter.exclude_first,
        "outlier_norm": c.filter.outlier_norm,
        // With every document asked for, the held-out count decides where training stops.
        "held_out_last": c.max_docs.is_none().then_some(cfg.eval_docs),
    });
    match stage {
        Stage::Activations => collect,
        Stage::HeldOut => serde_json::json!({ "after": collect, "eval_docs": cfg.eval_docs }),
        Stage::Sae => serde_json::json!({
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

/// What in `cfg.out` a run of `cfg` would replace: finished stages made with other settings
/// (naming the settings that changed), or a run of another command. `None` when the folder is new, holds only matching stages
/// (which are reused) or only interrupted ones.
pub fn conflicts(cfg: &WalkthroughConfig) -> Option<String> {
    let mut changed = Vec::new();
    let mut stale = |stage: Stage| {
        let dir = stage.dir(cfg);
        let Ok(saved) = io::read_json::<serde_json::Value>(&dir.join("made_from.json")) else {
            return dir.join("made_from.json").is_file();
        };
        let key = stage_key(cfg, stage);
        setting_changes(&saved, &key, "", &mut changed);
        saved != key
    };
    let mut what = Vec::new();
    if stale(Stage::Activations) {
        what.push(format!(
            "activations collected with other settings ({})",
            cfg.activations_dir().display()
        ));
    }
    if stale(Stage::Sae) {
        what.push(format!(
            "a {} SAE trained with other settings ({})",
            cfg.architecture.name(),
            cfg.sae_dir().display()
        ));
    }
    if !what.is_empty() && !changed.is_empty() {
        let last = what.len() - 1;
        what[last] = format!("{} (changed: {})", what[last], changed.join(", "));
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

/// Appends to `out`, once each, the settings that differ between a stage's saved key and the
/// one a run would write, as `name A → B`, so a refusal says which flag moved the stage.
fn setting_changes(
    saved: &serde_json::Value,
    now: &serde_json::Value,
    name: &str,
    out: &mut Vec<String>,
) {
    use serde_json::Value;
    if let (Value::Object(a), Value::Object(b)) = (saved, now) {
        for key in a.keys().chain(b.keys().filter(|k| !a.contains_key(*k))) {
            let (was, is) = (
                a.get(key).unwrap_or(&Value::Null),
                b.get(key).unwrap_or(&Value::Null),
            );
            setting_changes(was, is, key, out);
        }
        return;
    }
    if saved == now {
        return;
    }
    let show = |v: &Value| match v {
        Value::Null => "none".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    // Folders made before the dataset's last documents were held out have no such key.
    let name = match name {
        "held_out_last" => "documents held out at the dataset's end (--eval-docs)",
        other => other,
    };
    let line = format!("{name} {} → {}", show(saved), show(now));
    if !out.contains(&line) {
        out.push(line);
    }
}

/// Marks every stage of `cfg` stale, so the next run recomputes it (`--overwrite`).
pub fn forget_stages(cfg: &WalkthroughConfig) {
    for stage in [Stage::Activations, Stage::Sae, Stage::HeldOut] {
        forget(&stage.dir(cfg));
    }
}

/// The activation store for `cfg`, collected from its training documents
/// ([`WalkthroughConfig::split`]) into [`WalkthroughConfig::activations_dir`], or reopened if
/// an earlier run (or notebook) already collected it with the same settings.
pub fn activations(
    cfg: &WalkthroughConfig,
    model: &Model,
    tokenizer: &Tokenizer,
) -> Result<ActivationStore> {
    collect_stage(cfg, Stage::Activations, model, tokenizer, || {
        Ok((0, cfg.split()?.training))
    })
}

/// The held-out documents' activations, collected as the training ones were into
/// [`WalkthroughConfig::held_out_dir`] (or reopened), for measuring the SAE on inputs it never
/// trained on. `None` when no document with tokens remains after the training ones. Its
/// document indices count from the first held-out document.
pub fn held_out_activations(
    cfg: &WalkthroughConfig,
    model: &Model,
    tokenizer: &Tokenizer,
) -> Result<Option<ActivationStore>> {
    let held = held_out_sequences(cfg, tokenizer)?;
    if held.from_training {
        return Ok(None);
    }
    let split = held.split;
    collect_stage(cfg, Stage::HeldOut, model, tokenizer, || {
        Ok((split.training, split.held_out))
    })
    .map(Some)
}

/// Collects the `(skip, take)` documents of `cfg`'s dataset that `docs` names into `stage`'s
/// folder, unless they are saved there already (`docs` is asked only then: it may count the
/// dataset).
fn collect_stage(
    cfg: &WalkthroughConfig,
    stage: Stage,
    model: &Model,
    tokenizer: &Tokenizer,
    docs: impl FnOnce() -> Result<(usize, usize)>,
) -> Result<ActivationStore> {
    let dir = stage.dir(cfg);
    let key = stage_key(cfg, stage);
    if saved_matches(&dir, &key) {
        if let Ok(store) = ActivationStore::open(&dir) {
            return Ok(store);
        }
    }
    forget(&dir);
    let (skip, take) = docs()?;
    let collect = CollectConfig {
        max_docs: Some(take),
        ..cfg.collect.clone()
    };
    let provenance = Provenance {
        model: ModelSource::parse(&cfg.model).name(),
        revision: None,
        dataset: DatasetSource::parse(&cfg.dataset).name(),
    };
    let documents = cfg.documents()?.skip(skip);
    collect_to_store(model, tokenizer, documents, &collect, &provenance, &dir)?;
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
    let key = stage_key(cfg, Stage::Sae);
    let metrics_path = dir.join("training_metrics.json");
    if saved_matches(&dir, &key) {
        if let (Ok(sae), Ok(rows)) = (
            format::load(&dir, &cfg.device),
            io::read_json(&metrics_path),
        ) {
            return Ok((sae, rows));
        }
    }
    forget(&dir);
    let mut sae_cfg = cfg.sae_config(store.d());
    sae_cfg.metadata.training_docs = Some(store.meta().docs_read());
    let mut trainer = Trainer::new(sae_cfg, cfg.train.clone(), store, &cfg.device)?;
    trainer.train(Some(&dir), None)?;
    io::write_json(&metrics_path, &trainer.metrics())?;
    io::write_json(&dir.join("made_from.json"), &key)?;
    Ok((format::load(&dir, &cfg.device)?, trainer.metrics().to_vec()))
}

/// What is wrong with an SAE trained by [`train_sae`], each with what to change (empty when it
/// is healthy): what the trainer found in the activations before its first step, and what its
/// last training metrics say.
pub fn warnings(cfg: &WalkthroughConfig, training: &[MetricsRow]) -> Vec<String> {
    let last = training.last().map(|last| {
        crate::train::diagnose(&RunSummary {
            architecture: cfg.architecture,
            d_sae: cfg.d_sae,
            l0: last.l0,
            fvu: last.fvu,
            dead_fraction: last.dead_frac,
            sparsity_coefficient: cfg.train.sparsity_coefficient,
            lr: cfg.train.adam.lr,
        })
    });
    outliers(cfg)
        .into_iter()
        .chain(last.into_iter().flatten())
        .collect()
}

/// What the trainer of [`train_sae`] found in the activations before its first step (a few
/// rows holding most of the variance, see [`crate::train::diagnose_outliers`]), as saved with
/// the SAE. `None` when it found nothing or the SAE is not trained yet.
pub fn outliers(cfg: &WalkthroughConfig) -> Option<String> {
    io::read_json::<TrainReport>(&cfg.sae_dir().join("metrics.json"))
        .ok()
        .and_then(|r| r.outliers)
}

/// Documents for the splice evaluation, tokenised.
#[derive(Debug, Clone)]
pub struct HeldOut {
    /// Each document's token ids, cut at the collection's `max_len`.
    pub sequences: Vec<Vec<u32>>,
    /// No documents remain after the training ones, so these are the first (training)
    /// documents: the evaluation is then not held out, and callers should say so.
    pub from_training: bool,
    /// The split the held-out documents were read from.
    pub split: DocSplit,
    /// The tokenizer's special token ids, which the splice evaluation leaves alone.
    pub special: Vec<u32>,
}

/// Token sequences of the held-out documents ([`WalkthroughConfig::split`]), for the splice
/// evaluation (the first documents when none remain; see [`HeldOut::from_training`]).
pub fn held_out_sequences(cfg: &WalkthroughConfig, tokenizer: &Tokenizer) -> Result<HeldOut> {
    let split = cfg.split()?;
    let take = |skip: usize, n: usize| -> Result<Vec<Vec<u32>>> {
        cfg.documents()?
            .skip(skip)
            .take(n)
            .map(|d| tokenizer.encode(&d?, Some(cfg.collect.max_len)))
            .collect()
    };
    let special = tokenizer.special_ids()?;
    let sequences = take(split.training, split.held_out)?;
    if sequences.iter().any(|s| s.len() >= 2) {
        return Ok(HeldOut {
            sequences,
            from_training: false,
            split,
            special,
        });
    }
    Ok(HeldOut {
        sequences: take(0, cfg.eval_docs)?,
        from_training: true,
        split,
        special,
    })
}
