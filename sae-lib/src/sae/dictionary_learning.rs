//! The on-disk format of dictionary_learning (Marks, Karvonen and Mueller's SAE library, which
//! made the SAEs of the Sparse Feature Circuits paper), read so that the SAEs it trains can be
//! evaluated, scored and inspected here.
//!
//! A finished run's folder holds `ae.pt` (`torch.save` of the dictionary's state dict) and
//! `config.json` (`trainer`: its `dict_class`, `activation_dim`, `dict_size`, `k`, `layer`,
//! `lm_name`, `submodule_name`; `buffer`: its `ctx_len`). Each class is one of ours with the
//! weights renamed, transposed from torch's `Linear` layout, or folded:
//! - `AutoEncoder`: ReLU, its `bias` subtracted before encoding and added after decoding
//!   (`b_dec`), its decoder rows scaled to unit norm as dictionary_learning's loader does;
//! - `GatedAutoEncoder`: Gated, as SAELens' (`gate_bias`, `mag_bias`, `r_mag`);
//! - `JumpReluAutoEncoder`: JumpReLU without `b_dec` subtracted before encoding, the same SAE
//!   as ours with `b_enc + b_dec·W_enc` as its encoder bias;
//! - `AutoEncoderTopK`: TopK (its `threshold` buffer is unused by its own `encode`);
//! - `BatchTopKSAE` and `MatryoshkaBatchTopKSAE`: at inference JumpReLU with one threshold
//!   for every feature, as SAELens saves its BatchTopK SAEs.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;

use super::common::unit_decoder;
use super::{AnySae, Architecture, SaeConfig, SaeMetadata};
use crate::hooks::HookPoint;
use crate::model::weights::Weights;
use crate::{io, Error, Result};

/// Whether `dir` is one of dictionary_learning's SAE folders.
pub fn is_dictionary_learning(dir: &Path) -> bool {
    dir.join("ae.pt").is_file()
}

fn config(dir: &Path) -> Result<Value> {
    let path = dir.join("config.json");
    if !path.is_file() {
        return Err(Error::MissingFile {
            what: "dictionary_learning config (config.json beside ae.pt)",
            path: dir.into(),
            hint: "dictionary_learning's trainSAE writes it with ae.pt; it names the dictionary \
                   class and its sizes"
                .into(),
        });
    }
    io::read_json(&path)
}

/// The hook a trainer's `layer` and `submodule_name` name, in TransformerLens' naming: the
/// submodule name itself when it is one (`blocks.5.hook_mlp_out`); for free text such as
/// `mlp_out_layer_5`, the layer's input, MLP or attention output when the name says so, else
/// its output, the residual stream, as SAELens reads these SAEs; empty without a layer.
fn hook_name(trainer: &Value) -> String {
    let submodule = trainer["submodule_name"].as_str().unwrap_or_default();
    if let Ok(hook) = submodule.parse::<HookPoint>() {
        return hook.to_string();
    }
    let Some(layer) = trainer["layer"].as_u64().map(|l| l as usize) else {
        return String::new();
    };
    let name = submodule.to_ascii_lowercase();
    let hook = if name.contains("resid_pre") {
        HookPoint::resid_pre(layer)
    } else if name.contains("mlp") {
        HookPoint::mlp_out(layer)
    } else if name.contains("attn") || name.contains("attention") {
        HookPoint::attn_out(layer)
    } else {
        HookPoint::resid_post(layer)
    };
    hook.to_string()
}

/// What the SAE in `dir` was trained on: the model (`lm_name`), the hook (from its
/// `submodule_name` and `layer`) and the context size from its `config.json`; it does not name
/// its dataset.
pub fn metadata(dir: &Path) -> Result<SaeMetadata> {
    let raw = config(dir)?;
    let trainer = &raw["trainer"];
    Ok(SaeMetadata {
        model_name: trainer["lm_name"].as_str().unwrap_or_default().to_string(),
        hook_name: hook_name(trainer),
        context_size: raw["buffer"]["ctx_len"].as_u64().unwrap_or(0) as usize,
        prepend_bos: false,
        dataset_path: String::new(),
        training_docs: None,
        filter: Default::default(),
    })
}

/// Loads the dictionary_learning SAE in `dir` as the variant of ours it is.
pub fn load(dir: &Path, device: &Device) -> Result<AnySae> {
    let raw = config(dir)?;
    let cfg_path = dir.join("config.json");
    let bad = |message: String| Error::Config {
        path: cfg_path.clone(),
        message,
    };
    let trainer = &raw["trainer"];
    let class = trainer["dict_class"].as_str().unwrap_or_default();
    let size = |k: &str| {
        trainer[k]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| bad(format!("missing `trainer.{k}`")))
    };
    let (d_in, d_sae) = (size("activation_dim")?, size("dict_size")?);
    let path = dir.join("ae.pt");
    let weights = Weights::open(std::slice::from_ref(&path))?;
    let get = |name: &str| -> Result<Tensor> {
        weights
            .load(name, DType::F32, device)
            .map_err(|e| Error::Weights {
                path: path.clone(),
                message: e.to_string(),
            })
    };
    // torch's Linear keeps `(out, in)`; SAELens' names are `(d_in, d_sae)` and `(d_sae, d_in)`.
    let linear = |name: &str| -> Result<Tensor> { Ok(get(name)?.t()?.contiguous()?) };
    let uniform = |t: Tensor| -> Result<Tensor> {
        // A threshold of −1 was never set; every positive pre-activation then passes.
        let theta = t.to_scalar::<f32>()?.max(0.0);
        Ok(Tensor::full(theta, d_sae, device)?)
    };
    type Named = Vec<(&'static str, Tensor)>;
    // Two layouts: torch Linear layers (`encoder`, `decoder`) or SAELens' own names.
    let linear_layout = |b_dec: &str| -> Result<Named> {
        Ok(vec![
            ("W_enc", linear("encoder.weight")?),
            ("b_enc", get("encoder.bias")?),
            ("W_dec", linear("decoder.weight")?),
            ("b_dec", get(b_dec)?),
        ])
    };
    let saelens_layout = || -> Result<Named> {
        ["W_enc", "b_enc", "W_dec", "b_dec"]
            .into_iter()
            .map(|n| Ok((n, get(n)?)))
            .collect()
    };
    let one_threshold = |mut named: Named| -> Result<Named> {
        named.push(("threshold", uniform(get("threshold")?)?));
        Ok(named)
    };
    let (architecture, k, named): (Architecture, Option<usize>, Named) = match class {
        "AutoEncoder" => {
            // Its loader rescales to unit-norm decoder rows (newer trainers leave them free),
            // so feature activations are read on that scale.
            let mut named = linear_layout("bias")?;
            let folded = unit_decoder(&named[0].1, &named[1].1, &named[2].1)?;
            for (slot, t) in named.iter_mut().zip(folded) {
                slot.1 = t;
            }
            (Architecture::Relu, None, named)
        }
        "GatedAutoEncoder" => (
            Architecture::Gated,
            None,
            vec![
                ("W_enc", linear("encoder.weight")?),
                ("b_gate", get("gate_bias")?),
                ("r_mag", get("r_mag")?),
                ("b_mag", get("mag_bias")?),
                ("W_dec", linear("decoder.weight")?),
                ("b_dec", get("decoder_bias")?),
            ],
        ),
        "JumpReluAutoEncoder" => {
            let mut named = saelens_layout()?;
            let centred = named[3].1.unsqueeze(0)?.matmul(&named[0].1)?.squeeze(0)?;
            named[1].1 = (&named[1].1 + centred)?;
            named.push(("threshold", get("threshold")?));
            (Architecture::JumpRelu, None, named)
        }
        "AutoEncoderTopK" => (
            Architecture::TopK,
            Some(size("k")?),
            linear_layout("b_dec")?,
        ),
        "BatchTopKSAE" => (
            Architecture::JumpRelu,
            None,
            one_threshold(linear_layout("b_dec")?)?,
        ),
        "MatryoshkaBatchTopKSAE" => (
            Architecture::JumpRelu,
            None,
            one_threshold(saelens_layout()?)?,
        ),
        other => {
            return Err(bad(format!(
                "dictionary_learning's `{other}` is not supported; AutoEncoder, \
                 GatedAutoEncoder, JumpReluAutoEncoder, AutoEncoderTopK, BatchTopKSAE and \
                 MatryoshkaBatchTopKSAE load"
            )))
        }
    };
    let cfg = SaeConfig {
        architecture,
        d_in,
        d_sae,
        k,
        prefixes: None,
        metadata: metadata(dir)?,
    };
    let tensors: HashMap<String, Tensor> =
        named.into_iter().map(|(n, t)| (n.to_string(), t)).collect();
    super::format::from_named(cfg, &tensors, &path, class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn submodule_names_map_to_transformer_lens_hooks() {
        for (layer, submodule, hook) in [
            (Some(3), "resid_post_layer_3", "blocks.3.hook_resid_post"),
            (Some(5), "mlp_out_layer_5", "blocks.5.hook_mlp_out"),
            (Some(2), "attn_out_layer_2", "blocks.2.hook_attn_out"),
            (Some(1), "", "blocks.1.hook_resid_post"),
            (Some(4), "resid_pre_layer_4", "blocks.4.hook_resid_pre"),
            (Some(15), "blocks.15.hook_mlp_out", "blocks.15.hook_mlp_out"),
            (None, "blocks.2.hook_resid_pre", "blocks.2.hook_resid_pre"),
            (None, "mlp_out_layer_5", ""),
        ] {
            let trainer = serde_json::json!({"layer": layer, "submodule_name": submodule});
            assert_eq!(hook_name(&trainer), hook, "{submodule}");
        }
    }
}
