//! EleutherAI sparsify's on-disk format, read so that SAEs it trained (a run of its own, or
//! one published on the Hub such as `EleutherAI/sae-pythia-70m-deduped-32k`) can be
//! evaluated, scored and inspected here.
//!
//! A sparsify run folder holds `config.json` (the run: `model`, `dataset`, `ctx_len`) and one
//! folder per hookpoint, named after the module it read (`layers.5`, `layers.5.mlp`), each
//! with `cfg.json` (`k`, `num_latents` or `expansion_factor`, `d_in`, ...) and
//! `sae.safetensors` (`encoder.weight` `(d_sae, d_in)`, `encoder.bias`, `W_dec`
//! `(d_sae, d_in)`, `b_dec`). Its SAE is a TopK SAE: ReLU of the encoder applied to
//! `x − b_dec`, the `k` largest kept, decoded with `W_dec` plus `b_dec`, as ours.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::{AnySae, Architecture, SaeConfig, SaeMetadata};
use crate::hooks::HookPoint;
use crate::{io, Error, Result};

/// Whether `dir` is one of sparsify's SAE folders (and not a SAELens one).
pub fn is_sparsify(dir: &Path) -> bool {
    dir.join("sae.safetensors").is_file()
        && dir.join("cfg.json").is_file()
        && !dir.join("sae_weights.safetensors").exists()
}

/// Where `dir` is a sparsify run rather than one of its SAEs: a hint naming the SAE folders
/// inside it.
pub fn runs_within(dir: &Path) -> Option<String> {
    let mut saes: Vec<String> = std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| is_sparsify(&e.path()))
        .map(|e| e.path().display().to_string())
        .collect();
    saes.sort();
    (!saes.is_empty()).then(|| {
        format!(
            "this is a sparsify run with one SAE per hookpoint; pass one of its folders: {}",
            saes.join(", ")
        )
    })
}

/// The hook a sparsify hookpoint (a module name such as `layers.5.mlp`, maybe behind the
/// model's own prefix) reads, in TransformerLens' naming; the hookpoint itself when it is
/// none of a layer's output, its MLP or its attention.
fn hook_name(hookpoint: &str) -> String {
    let tail = hookpoint
        .find("layers.")
        .map_or(hookpoint, |i| &hookpoint[i + "layers.".len()..]);
    let (layer, module) = tail.split_once('.').unwrap_or((tail, ""));
    let hook = layer.parse().ok().and_then(|l| match module {
        "" => Some(HookPoint::resid_post(l)),
        "mlp" => Some(HookPoint::mlp_out(l)),
        "attention" | "self_attn" => Some(HookPoint::attn_out(l)),
        _ => None,
    });
    hook.map_or_else(|| hookpoint.to_string(), |h| h.to_string())
}

/// What the SAE in `dir` was trained on: its hook from the folder's name, the model, dataset
/// and context size from the run's `config.json` beside it (left empty without one).
pub fn metadata(dir: &Path) -> Result<SaeMetadata> {
    let run: Value = dir
        .parent()
        .map(|p| p.join("config.json"))
        .filter(|p| p.is_file())
        .map(|p| io::read_json(&p))
        .transpose()?
        .unwrap_or_default();
    let text = |k: &str| run[k].as_str().unwrap_or_default().to_string();
    // Absolute, so that `.` names its folder.
    let folder = std::path::PathBuf::from(io::absolute(dir));
    let name = folder.file_name().map(|n| n.to_string_lossy().to_string());
    Ok(SaeMetadata {
        model_name: text("model"),
        hook_name: hook_name(&name.unwrap_or_default()),
        context_size: run["ctx_len"].as_u64().unwrap_or(0) as usize,
        prepend_bos: false,
        dataset_path: text("dataset"),
        training_docs: None,
        filter: Default::default(),
    })
}

/// Loads the sparsify SAE in `dir` as a TopK SAE.
pub fn load(dir: &Path, device: &Device) -> Result<AnySae> {
    let cfg_path = dir.join("cfg.json");
    let raw: Value = io::read_json(&cfg_path)?;
    let bad = |message: String| Error::Config {
        path: cfg_path.clone(),
        message,
    };
    match raw["activation"].as_str().unwrap_or("topk") {
        "topk" => {}
        other => {
            return Err(bad(format!(
                "sparsify's `{other}` activation is not supported, only `topk`"
            )))
        }
    }
    for (flag, what) in [
        (
            "transcode",
            "a transcoder (it predicts a module's output from its input)",
        ),
        (
            "skip_connection",
            "an SAE with a linear skip connection (W_skip)",
        ),
    ] {
        if raw[flag] == Value::Bool(true) {
            return Err(bad(format!(
                "this is {what}, which sae-lib does not support; only plain TopK SAEs load"
            )));
        }
    }
    let size = |k: &str| raw[k].as_u64().map(|v| v as usize);
    let d_in = size("d_in").ok_or_else(|| bad("missing `d_in`".into()))?;
    let k = size("k").ok_or_else(|| bad("missing `k`".into()))?;
    let d_sae = match size("num_latents") {
        Some(n) if n > 0 => n,
        _ => d_in * size("expansion_factor").unwrap_or(32),
    };
    let weights_path = dir.join("sae.safetensors");
    let tensors =
        candle_core::safetensors::load(&weights_path, device).map_err(|e| Error::Weights {
            path: weights_path.clone(),
            message: format!("cannot read ({e}); the file may be truncated or corrupt"),
        })?;
    // SAELens' names: `W_enc` is `(d_in, d_sae)`, the transpose of torch's Linear weight.
    let renamed = tensors
        .into_iter()
        .map(|(name, t)| {
            Ok(match name.as_str() {
                "encoder.weight" => ("W_enc".to_string(), t.t()?.contiguous()?),
                "encoder.bias" => ("b_enc".to_string(), t),
                _ => (name, t),
            })
        })
        .collect::<Result<HashMap<String, Tensor>>>()?;
    let cfg = SaeConfig {
        architecture: Architecture::TopK,
        d_in,
        d_sae,
        k: Some(k),
        prefixes: None,
        metadata: metadata(dir)?,
    };
    super::format::from_named(cfg, &renamed, &weights_path, "topk (sparsify)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hookpoints_map_to_transformer_lens_hooks() {
        for (hookpoint, hook) in [
            ("layers.5", "blocks.5.hook_resid_post"),
            ("layers.5.mlp", "blocks.5.hook_mlp_out"),
            ("gpt_neox.layers.3.attention", "blocks.3.hook_attn_out"),
            ("model.layers.12.self_attn", "blocks.12.hook_attn_out"),
            ("layers.2.mlp.act", "layers.2.mlp.act"),
            ("embed_in", "embed_in"),
        ] {
            assert_eq!(hook_name(hookpoint), hook, "{hookpoint}");
        }
    }
}
