//! Where an SAE comes from: a folder on disk, a folder of a Hugging Face Hub repository,
//! `org/name[@revision]/folder`, or SAELens' `release/sae_id`. SAELens' published SAEs are
//! such folders (`ctigges/pythia-70m-deduped__mlp-sm_processed/5-mlp-sm` is its
//! `pythia-70m-deduped-mlp-sm` release's `blocks.5.hook_mlp_out`), and so are sparsify's
//! (`EleutherAI/sae-pythia-70m-deduped-32k/layers.5`), dictionary_learning's (`ae.pt` with
//! its `config.json`) and Gemma Scope's
//! (`google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71`, `params.npz`). A Hub
//! folder's files are fetched into the Hub cache, or found there
//! (`HF_HUB_OFFLINE=1` included), and read from it as from disk.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use crate::hub::{HubOptions, HubRepo, RepoKind};
use crate::{Error, Result};

/// The weights file that marks an SAE folder, by format: SAELens' (and ours), sparsify's,
/// dictionary_learning's, Gemma Scope's.
const WEIGHTS: [&str; 4] = [
    "sae_weights.safetensors",
    "sae.safetensors",
    "ae.pt",
    "params.npz",
];

/// The folder the SAE `spec` names: `spec` itself when it exists on disk, else the Hub
/// repository folder it names (directly, or as SAELens' `release/sae_id`), its files fetched
/// into the cache. Only the files the SAE is read from are fetched: its weights and config,
/// SAELens' `sparsity.safetensors` and sparsify's run `config.json` one level up, where the
/// repository has them.
pub fn locate(spec: &str, hub: &HubOptions) -> Result<PathBuf> {
    if Path::new(spec).exists() {
        return Ok(spec.into());
    }
    let released = super::releases::hub_folder(spec).transpose()?;
    let spec = released.as_deref().unwrap_or(spec);
    let path = Path::new(spec);
    let not_found = |hint: String| Error::MissingFile {
        what: "SAE folder",
        path: path.into(),
        hint,
    };
    let parts: Vec<&str> = spec.split('/').collect();
    if spec.starts_with(['/', '.', '~']) || parts.len() < 2 || parts.iter().any(|p| p.is_empty()) {
        return Err(not_found(
            "pass a folder written by `sae train`, SAELens, sparsify or dictionary_learning, a \
             Hugging Face Hub repository's SAE folder as org/name/folder, or SAELens' \
             release/sae_id"
                .into(),
        ));
    }
    let repo = HubRepo::parse(&parts[..2].join("/"), RepoKind::Sae);
    let folder = parts[2..].join("/");
    let within = |name: &str| {
        if folder.is_empty() {
            name.to_string()
        } else {
            format!("{folder}/{name}")
        }
    };
    let weights_in = |files: &[String]| WEIGHTS.into_iter().find(|w| files.contains(&within(w)));
    let files = repo.list_files(hub)?;
    let Some(weights) = weights_in(&files) else {
        return Err(not_found(folders_hint(&repo, &folder, &files)));
    };
    let mut wanted = vec![within(weights)];
    if weights == WEIGHTS[0] {
        wanted.extend([within("cfg.json"), within("sparsity.safetensors")]);
    } else if weights == WEIGHTS[2] {
        wanted.push(within("config.json"));
    } else if weights == WEIGHTS[3] {
        // Gemma Scope's folders hold their weights alone.
    } else {
        wanted.push(within("cfg.json"));
        match folder.rsplit_once('/') {
            Some((parent, _)) => wanted.push(format!("{parent}/config.json")),
            None if !folder.is_empty() => wanted.push("config.json".into()),
            None => {}
        }
    }
    let mut dir = None;
    for file in wanted.iter().filter(|f| files.contains(f)) {
        let got = repo.fetch(file, hub)?;
        if dir.is_none() {
            dir = got.parent().map(Path::to_path_buf);
        }
    }
    dir.ok_or_else(|| Error::Hub(format!("`{spec}`: the Hub cache gave no folder")))
}

/// What to pass instead of `folder`: the SAE folders `files` hold.
fn folders_hint(repo: &HubRepo, folder: &str, files: &[String]) -> String {
    let folders: BTreeSet<&str> = files
        .iter()
        .filter_map(|f| {
            let (dir, name) = f.rsplit_once('/').unwrap_or(("", f));
            WEIGHTS.contains(&name).then_some(dir)
        })
        .collect();
    let at = if folder.is_empty() {
        "at its top level".to_string()
    } else {
        format!("in `{folder}`")
    };
    if folders.is_empty() {
        return format!(
            "the Hub repository {} holds no SAE {at}, nor anywhere else (no \
             sae_weights.safetensors, sae.safetensors, ae.pt or params.npz)",
            repo.id
        );
    }
    let shown: Vec<String> = folders
        .iter()
        .take(12)
        .map(|f| match *f {
            "" => repo.id.clone(),
            f => format!("{}/{f}", repo.id),
        })
        .collect();
    let more = folders.len().saturating_sub(shown.len());
    format!(
        "the Hub repository {} holds no SAE {at}; its SAE folders are {}{}",
        repo.id,
        shown.join(", "),
        if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        }
    )
}
