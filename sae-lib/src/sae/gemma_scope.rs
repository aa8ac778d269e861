//! Gemma Scope (Lieberum et al. 2024, <https://arxiv.org/abs/2408.05147>): Google DeepMind's
//! JumpReLU SAEs on Gemma 2, published as `google/gemma-scope-{2b,9b,27b}-{pt,it}-{res,mlp,att}`
//! with one folder per SAE, `layer_{L}/width_{W}/average_l0_{N}/params.npz`.
//!
//! A folder holds only the weights (`W_enc` `(d_in, d_sae)`, `W_dec`, `b_enc`, `b_dec`,
//! `threshold`), so what an SAE reads comes from the repository's and the folder's names, as
//! SAELens reads them: the model (`gemma-2-2b`, `gemma-2-9b-it`), the hook (`res`: the layer's
//! output, `mlp`: its MLP's output after the closing norm, `att`: the heads' outputs before
//! their projection, `attn.hook_z`), and 1,024-token contexts of the Pile with a BOS token.
//! The encoder does not subtract `b_dec` first: it is the same SAE as ours with
//! `b_enc + b_dec·W_enc` as its encoder bias. The embedding SAEs read the unscaled embeddings,
//! a hook sae-lib does not have, and are refused.

use std::path::Path;

use candle_core::Device;

use super::{AnySae, Architecture, SaeConfig, SaeMetadata};
use crate::hooks::HookPoint;
use crate::{io, Error, Result};

/// Whether `dir` is one of Gemma Scope's SAE folders.
pub fn is_gemma_scope(dir: &Path) -> bool {
    dir.join("params.npz").is_file()
}

/// What the SAE in `dir` reads, from the names of the folders above it: the repository's
/// (`gemma-scope-2b-pt-res`, as a Hub cache names it `models--google--gemma-scope-2b-pt-res`,
/// or a copy of it) and the layer's (`layer_12`).
pub fn metadata(dir: &Path) -> Result<SaeMetadata> {
    let folder = std::path::PathBuf::from(io::absolute(dir));
    let names: Vec<String> = folder
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let unknown = |why: &str| Error::MissingFile {
        what: "Gemma Scope repository name above params.npz",
        path: dir.into(),
        hint: format!(
            "{why}; keep the SAE's folder as the repository lays it out, under a folder named \
             after it (gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71), as the Hub \
             cache does"
        ),
    };
    let repo = names
        .iter()
        .rev()
        .find_map(|n| n.split("gemma-scope-").nth(1))
        .ok_or_else(|| unknown("no folder above it names the repository"))?;
    // `2b-pt-res`: the model's size, pretrained or instruction-tuned, and the hook's site.
    let mut parts = repo.split('-');
    let (size, tuning, site) = (parts.next(), parts.next(), parts.next());
    let model = match (size, tuning) {
        (Some(size), Some("pt")) => format!("gemma-2-{size}"),
        (Some(size), Some("it")) => format!("gemma-2-{size}-it"),
        _ => return Err(unknown(&format!("`gemma-scope-{repo}` names no model"))),
    };
    if names.iter().any(|n| n == "embedding") {
        return Err(Error::Config {
            path: dir.join("params.npz"),
            message: "this Gemma Scope SAE reads the unscaled embeddings (TransformerLens' \
                      hook_embed), which sae-lib does not hook; its layers' SAEs load"
                .into(),
        });
    }
    let layer: usize = names
        .iter()
        .rev()
        .find_map(|n| n.strip_prefix("layer_")?.parse().ok())
        .ok_or_else(|| unknown("no folder above it is named layer_N"))?;
    let hook = match site {
        Some("res") => HookPoint::resid_post(layer),
        Some("mlp") => HookPoint::mlp_out(layer),
        Some("att") => HookPoint::z(layer),
        _ => return Err(unknown(&format!("`gemma-scope-{repo}` names no hook site"))),
    };
    Ok(SaeMetadata {
        model_name: model,
        hook_name: hook.to_string(),
        context_size: 1024,
        prepend_bos: true,
        dataset_path: "monology/pile-uncopyrighted".into(),
        training_docs: None,
        filter: Default::default(),
    })
}

/// Loads the Gemma Scope SAE in `dir` as a JumpReLU SAE.
pub fn load(dir: &Path, device: &Device) -> Result<AnySae> {
    let metadata = metadata(dir)?;
    let path = dir.join("params.npz");
    let mut arrays = super::npz::read(&path, device)?;
    let bad = |message: String| Error::Weights {
        path: path.clone(),
        message,
    };
    // A fine-tuning scale of ones is no scale at all (SAELens drops it too).
    if let Some(scale) = arrays.remove("scaling_factor") {
        if scale
            .flatten_all()?
            .to_vec1::<f32>()?
            .iter()
            .any(|&s| s != 1.0)
        {
            return Err(bad(
                "a `scaling_factor` other than ones is not supported".into()
            ));
        }
    }
    let dims = |name: &str| {
        arrays
            .get(name)
            .map(|t| t.dims().to_vec())
            .ok_or_else(|| bad(format!("missing `{name}`")))
    };
    let (d_in, d_sae) = match dims("W_enc")?[..] {
        [d_in, d_sae] => (d_in, d_sae),
        ref other => return Err(bad(format!("`W_enc` has shape {other:?}, not 2-D"))),
    };
    let (w_enc, b_enc, b_dec) = (&arrays["W_enc"], dims("b_enc")?, dims("b_dec")?);
    if b_enc != [d_sae] || b_dec != [d_in] {
        return Err(bad(format!(
            "`b_enc` {b_enc:?} and `b_dec` {b_dec:?} do not fit `W_enc` [{d_in}, {d_sae}]"
        )));
    }
    let centred = arrays["b_dec"].unsqueeze(0)?.matmul(w_enc)?.squeeze(0)?;
    let folded = (&arrays["b_enc"] + centred)?;
    arrays.insert("b_enc".into(), folded);
    let cfg = SaeConfig {
        architecture: Architecture::JumpRelu,
        d_in,
        d_sae,
        k: None,
        prefixes: None,
        metadata,
    };
    super::format::from_named(cfg, &arrays, &path, "jumprelu (Gemma Scope)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_repository_and_folder_names_say_what_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let at = |rel: &str| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(&p).unwrap();
            metadata(&p)
        };
        let meta =
            at("models--google--gemma-scope-9b-it-res/snapshots/abc/layer_20/width_16k/x").unwrap();
        assert_eq!(
            (meta.model_name.as_str(), meta.hook_name.as_str()),
            ("gemma-2-9b-it", "blocks.20.hook_resid_post")
        );
        let meta = at("gemma-scope-2b-pt-mlp/layer_3/width_65k/average_l0_7").unwrap();
        assert_eq!(
            (meta.model_name.as_str(), meta.hook_name.as_str()),
            ("gemma-2-2b", "blocks.3.hook_mlp_out")
        );
        let meta = at("gemma-scope-2b-pt-att/layer_3/width_16k/average_l0_7").unwrap();
        assert_eq!(meta.hook_name, "blocks.3.attn.hook_z");
        for (rel, says) in [
            ("gemma-scope-2b-pt-res/embedding/width_4k/a", "embeddings"),
            ("somewhere/layer_3/width_16k/a", "repository"),
            ("gemma-scope-2b-pt-res/width_16k/a", "layer_N"),
        ] {
            let msg = at(rel).unwrap_err().to_string();
            assert!(msg.contains(says), "{rel}: {msg}");
        }
    }
}
