//! SAELens' on-disk format, so `sae_lens.SAE.load_from_disk(dir)` loads what we save and we
//! load what SAELens saves:
//! - `cfg.json`: architecture, `d_in`, `d_sae`, dtype, device, `apply_b_dec_to_input`,
//!   `normalize_activations`, and `metadata` (model, hook, context size, dataset, version,
//!   `training_docs`: how many of the dataset's first documents the activations came from,
//!   and `exclude_first` and `outlier_norm` where tokens were left out);
//! - `sae_weights.safetensors`: `W_enc` `(d_in, d_sae)`, `b_enc`, `W_dec` `(d_sae, d_in)`,
//!   `b_dec`, plus each variant's extras;
//! - `sparsity.safetensors`: `sparsity`, the log10 firing frequency of each feature.
//!
//! The trainer's input scaling is folded into the weights on save (`normalize_activations`
//! stays "none"): with `x_s = s·x`, `W_enc ← s·W_enc`, `W_dec ← W_dec / s`, `b_dec ← b_dec / s`
//! gives the same features on unscaled inputs and a reconstruction in the model's units.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::{AnySae, Architecture, Sae, SaeConfig, SaeMetadata};
use crate::data::TokenFilter;
use crate::{io, Error, Result};

/// The SAELens version whose format this writes.
pub const SAELENS_VERSION: &str = "6.54.12";

/// The `cfg.json` SAELens expects.
pub fn cfg_json(cfg: &SaeConfig) -> Value {
    let m = &cfg.metadata;
    let mut v = json!({
        "architecture": cfg.architecture.saelens_name(),
        "d_in": cfg.d_in,
        "d_sae": cfg.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": true,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "sae_lens_version": SAELENS_VERSION,
            "sae_lens_training_version": SAELENS_VERSION,
            "model_name": m.model_name,
            "hook_name": m.hook_name,
            "hook_head_index": null,
            "context_size": m.context_size,
            "prepend_bos": m.prepend_bos,
            "dataset_path": m.dataset_path,
            "model_from_pretrained_kwargs": {},
            "trained_with": format!("sae-lib {}", env!("CARGO_PKG_VERSION")),
            "training_architecture": cfg.architecture.name(),
        }
    });
    if let Some(n) = m.training_docs {
        v["metadata"]["training_docs"] = json!(n);
    }
    if m.filter.exclude_first {
        v["metadata"]["exclude_first"] = json!(true);
    }
    if let Some(r) = m.filter.outlier_norm {
        v["metadata"]["outlier_norm"] = json!(r);
    }
    if cfg.architecture == Architecture::TopK {
        v["k"] = json!(cfg.k);
        v["rescale_acts_by_decoder_norm"] = json!(false);
    }
    v
}

/// Saves `sae` (trained on inputs multiplied by `scale`) into `dir`, atomically file by file.
pub fn save(sae: &AnySae, scale: f64, log10_sparsity: Option<&[f32]>, dir: &Path) -> Result<()> {
    io::create_dir(dir)?;
    let mut tensors = HashMap::new();
    for (name, var) in sae.vars() {
        let t = var
            .as_tensor()
            .to_dtype(DType::F32)?
            .to_device(&Device::Cpu)?;
        let (name, t) = match name {
            super::W_ENC_T => ("W_enc", (t.t()?.contiguous()? * scale)?),
            "W_dec" | "b_dec" => (name, (t / scale)?),
            _ => (name, t),
        };
        tensors.insert(name.to_string(), t);
    }
    io::save_safetensors(&dir.join("sae_weights.safetensors"), &tensors)?;
    if let Some(s) = log10_sparsity {
        let mut map = HashMap::new();
        map.insert("sparsity".to_string(), Tensor::new(s, &Device::Cpu)?);
        io::save_safetensors(&dir.join("sparsity.safetensors"), &map)?;
    }
    io::write_json(&dir.join("cfg.json"), &cfg_json(sae.config()))
}

/// What an SAE folder says it was trained on (`cfg.json`'s `metadata`), without its weights;
/// fields it leaves out are empty.
pub fn metadata(dir: &Path) -> Result<SaeMetadata> {
    if super::sparsify::is_sparsify(dir) {
        return super::sparsify::metadata(dir);
    }
    if super::dictionary_learning::is_dictionary_learning(dir) {
        return super::dictionary_learning::metadata(dir);
    }
    if super::gemma_scope::is_gemma_scope(dir) {
        return super::gemma_scope::metadata(dir);
    }
    Ok(metadata_of(&read_cfg(dir)?.1))
}

fn read_cfg(dir: &Path) -> Result<(std::path::PathBuf, Value)> {
    let cfg_path = dir.join("cfg.json");
    if !cfg_path.is_file() {
        return Err(Error::MissingFile {
            what: "SAE config (cfg.json)",
            path: dir.into(),
            hint: super::sparsify::runs_within(dir).unwrap_or_else(|| {
                "pass a folder written by `sae train`, by SAELens' save_model, by sparsify or by \
                 dictionary_learning"
                    .into()
            }),
        });
    }
    let raw = upgraded(io::read_json(&cfg_path)?);
    Ok((cfg_path, raw))
}

/// A cfg.json in SAELens 6's layout. Versions before 6 (most SAEs published on the Hub)
/// wrote it flat: the model, hook and dataset beside the sizes, the hook as `hook_point` in
/// 3.x, TopK as `activation_fn_str: "topk"` with `activation_fn_kwargs.k`, and no
/// `apply_b_dec_to_input` or `prepend_bos` before they existed. SAELens 6 upgrades such a
/// file on load by these rules, defaults included; a file that names no version is one.
fn upgraded(mut raw: Value) -> Value {
    let version = raw["sae_lens_version"]
        .as_str()
        .or(raw["metadata"]["sae_lens_version"].as_str());
    let major = version.and_then(|v| v.split('.').next()?.parse::<u32>().ok());
    if major.is_some_and(|m| m >= 6) {
        return raw;
    }
    let Value::Object(map) = &mut raw else {
        return raw;
    };
    for (old, new) in [
        ("hook_point", "hook_name"),
        ("hook_point_head_index", "hook_head_index"),
        ("activation_fn_str", "activation_fn"),
    ] {
        if let Some(v) = map.remove(old) {
            map.insert(new.into(), v);
        }
    }
    for (key, default) in [
        ("prepend_bos", json!(true)),
        ("apply_b_dec_to_input", json!(true)),
        ("architecture", json!("standard")),
    ] {
        map.entry(key).or_insert(default);
    }
    let k = map
        .get("activation_fn_kwargs")
        .map(|kw| kw["k"].clone())
        .filter(|k| !k.is_null());
    if let (Some(k), Some("topk")) = (k, map.get("activation_fn").and_then(Value::as_str)) {
        map.insert("architecture".into(), json!("topk"));
        map.insert("k".into(), k);
    }
    let normalize = match map.get("normalize_activations") {
        Some(Value::Bool(true)) => json!("expected_average_only_in"),
        Some(Value::String(s)) => json!(s),
        _ => json!("none"),
    };
    map.insert("normalize_activations".into(), normalize);
    let metadata: serde_json::Map<String, Value> = [
        "model_name",
        "hook_name",
        "hook_head_index",
        "context_size",
        "prepend_bos",
        "dataset_path",
    ]
    .iter()
    .filter_map(|k| Some((k.to_string(), map.get(*k)?.clone())))
    .collect();
    map.insert("metadata".into(), Value::Object(metadata));
    raw
}

fn metadata_of(raw: &Value) -> SaeMetadata {
    let meta = &raw["metadata"];
    let text = |k: &str| meta[k].as_str().unwrap_or_default().to_string();
    SaeMetadata {
        model_name: text("model_name"),
        hook_name: text("hook_name"),
        context_size: meta["context_size"].as_u64().unwrap_or(0) as usize,
        prepend_bos: meta["prepend_bos"].as_bool().unwrap_or(false),
        dataset_path: text("dataset_path"),
        training_docs: meta["training_docs"].as_u64().map(|n| n as usize),
        filter: TokenFilter {
            exclude_first: meta["exclude_first"].as_bool().unwrap_or(false),
            outlier_norm: meta["outlier_norm"].as_f64().map(|r| r as f32),
        },
    }
}

/// Loads an SAE saved by [`save`], by SAELens, by sparsify ([`super::sparsify`]), by
/// dictionary_learning ([`super::dictionary_learning`]) or published by Gemma Scope
/// ([`super::gemma_scope`]).
pub fn load(dir: &Path, device: &Device) -> Result<AnySae> {
    if super::sparsify::is_sparsify(dir) {
        return super::sparsify::load(dir, device);
    }
    if super::dictionary_learning::is_dictionary_learning(dir) {
        return super::dictionary_learning::load(dir, device);
    }
    if super::gemma_scope::is_gemma_scope(dir) {
        return super::gemma_scope::load(dir, device);
    }
    let (cfg_path, raw) = read_cfg(dir)?;
    let bad = |message: String| Error::Config {
        path: cfg_path.clone(),
        message,
    };
    let arch = raw["architecture"].as_str().unwrap_or("standard");
    // Saved BatchTopK and Matryoshka SAEs are JumpReLUs at inference.
    let architecture = Architecture::from_saelens(arch).map_err(|e| bad(e.to_string()))?;
    let size = |k: &str| {
        raw[k]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("missing `{k}`")))
    };
    if raw["normalize_activations"]
        .as_str()
        .is_some_and(|n| n != "none")
    {
        return Err(bad(format!(
            "normalize_activations `{}` is not supported (only \"none\")",
            raw["normalize_activations"]
        )));
    }
    if raw["apply_b_dec_to_input"] == Value::Bool(false) {
        return Err(bad("apply_b_dec_to_input = false is not supported".into()));
    }
    // SAELens' TopK option to scale pre-activations by decoder norms (and divide them out
    // again before decoding) is the same SAE with the norms folded into the weights.
    let rescale = raw["rescale_acts_by_decoder_norm"] == Value::Bool(true);
    let cfg = SaeConfig {
        architecture,
        d_in: size("d_in")?,
        d_sae: size("d_sae")?,
        k: raw["k"].as_u64().map(|k| k as usize),
        prefixes: None,
        metadata: metadata_of(&raw),
    };
    let weights_path = dir.join("sae_weights.safetensors");
    let mut tensors =
        candle_core::safetensors::load(&weights_path, device).map_err(|e| Error::Weights {
            path: weights_path.clone(),
            message: format!("cannot read ({e}); the file may be truncated or corrupt"),
        })?;
    if rescale {
        if let (Some(w_enc), Some(b_enc), Some(w_dec)) = (
            tensors.get("W_enc"),
            tensors.get("b_enc"),
            tensors.get("W_dec"),
        ) {
            let folded = super::common::unit_decoder(w_enc, b_enc, w_dec)?;
            for (name, t) in ["W_enc", "b_enc", "W_dec"].into_iter().zip(folded) {
                tensors.insert(name.to_string(), t);
            }
        }
    }
    from_named(cfg, &tensors, &weights_path, arch)
}

/// The SAE `cfg` describes, built from `tensors` (read from `path`, SAELens' names and
/// shapes): each checked against the shape `cfg` implies, and none left over.
pub(super) fn from_named(
    cfg: SaeConfig,
    tensors: &HashMap<String, Tensor>,
    path: &Path,
    arch: &str,
) -> Result<AnySae> {
    let mut used = Vec::new();
    let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
        let t = tensors.get(name).ok_or_else(|| Error::Weights {
            path: path.to_path_buf(),
            message: format!("missing tensor `{name}` for a `{arch}` SAE"),
        })?;
        if t.dims() != shape {
            return Err(Error::Weights {
                path: path.to_path_buf(),
                message: format!(
                    "`{name}` has shape {:?}, its config implies {shape:?}",
                    t.dims()
                ),
            });
        }
        used.push(name.to_string());
        Ok(t.to_dtype(DType::F32)?)
    };
    let sae = AnySae::from_tensors(cfg, &mut get)?;
    if used.len() != tensors.len() {
        let mut unused: Vec<&String> = tensors.keys().filter(|k| !used.contains(k)).collect();
        unused.sort();
        return Err(Error::Weights {
            path: path.to_path_buf(),
            message: format!("unexpected tensors for a `{arch}` SAE: {unused:?}"),
        });
    }
    Ok(sae)
}
