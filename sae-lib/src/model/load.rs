//! Finding and loading a model: from the Hub by repo id (`org/name[@revision]`), from a local
//! directory laid out as `save_pretrained` writes it (config.json, weights, tokenizer.json), or
//! from a llama.cpp `.gguf` file (weights and tokenizer in one).

use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;

use super::gemma2::{self, Gemma2};
use super::gguf::GgufFile;
use super::gpt_neox::{self, GptNeoX};
use super::llama::{self, Llama};
use super::weights::Weights;
use super::Model;
use crate::hub::{HubOptions, HubRepo, RepoKind};
use crate::tokenizer::Tokenizer;
use crate::{Error, Result};

/// The Hub id of a model that SAELens' cfg.json names as TransformerLens does, without its
/// organisation (`pythia-70m-deduped` is `EleutherAI/pythia-70m-deduped`, `gemma-2-2b`
/// is `google/gemma-2-2b`); a name that is already an id or a path is itself. `None` for
/// names of families sae-lib does not load.
pub fn hub_id_of(name: &str) -> Option<String> {
    if name.contains('/') || Path::new(name).exists() {
        Some(name.to_string())
    } else if name.starts_with("pythia-") {
        Some(format!("EleutherAI/{name}"))
    } else if name.starts_with("gemma-2-") {
        Some(format!("google/{name}"))
    } else {
        None
    }
}

/// Where a model comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hub repository, e.g. `EleutherAI/pythia-70m-deduped`.
    Hub(HubRepo),
    /// A local directory.
    Dir(PathBuf),
    /// A llama.cpp GGUF file.
    Gguf(PathBuf),
}

impl ModelSource {
    /// A name ending in `.gguf` is a GGUF file; a path that exists, or one that looks like a
    /// path (`/`, `.`, `~`), is a directory; anything else is a Hub repo id, optionally
    /// `@revision`.
    pub fn parse(spec: &str) -> Self {
        let path = Path::new(spec);
        if spec.ends_with(".gguf") {
            ModelSource::Gguf(path.to_path_buf())
        } else if path.exists() || spec.starts_with(['/', '.', '~']) {
            ModelSource::Dir(path.to_path_buf())
        } else {
            ModelSource::Hub(HubRepo::parse(spec, RepoKind::Model))
        }
    }

    /// A name for logs and metadata: the repo id, or the local path made absolute, so that an
    /// SAE or store that records it still finds its model from another working directory.
    pub fn name(&self) -> String {
        match self {
            ModelSource::Hub(r) => r.id.clone(),
            ModelSource::Dir(d) | ModelSource::Gguf(d) => crate::io::absolute(d),
        }
    }

    fn files(&self, hub: &HubOptions) -> Result<Vec<String>> {
        match self {
            ModelSource::Hub(repo) => repo.list_files(hub),
            ModelSource::Dir(dir) => {
                let entries = std::fs::read_dir(dir).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Error::MissingFile {
                            what: "model directory",
                            path: dir.clone(),
                            hint: "pass a directory holding config.json and model.safetensors, \
                                   or a Hub id such as EleutherAI/pythia-70m-deduped"
                                .into(),
                        }
                    } else {
                        Error::io("listing", dir, e)
                    }
                })?;
                Ok(entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect())
            }
            ModelSource::Gguf(path) => Ok(path
                .file_name()
                .map(|f| vec![f.to_string_lossy().into_owned()])
                .unwrap_or_default()),
        }
    }

    fn fetch(&self, file: &str, hub: &HubOptions) -> Result<PathBuf> {
        match self {
            ModelSource::Hub(repo) => repo.fetch(file, hub),
            ModelSource::Dir(dir) => Ok(dir.join(file)),
            ModelSource::Gguf(path) => Ok(path.with_file_name(file)),
        }
    }

    fn missing(&self, what: &'static str, hint: &str, hub: &HubOptions) -> Error {
        let (path, hint) = match self {
            ModelSource::Dir(d) | ModelSource::Gguf(d) => (d.clone(), hint.to_string()),
            // Offline, the cache may simply not hold it yet.
            ModelSource::Hub(r) if hub.offline => (
                PathBuf::from(&r.id),
                format!(
                    "HF_HUB_OFFLINE is set and the Hub cache ({}) holds no {what} for it: run \
                     once with the network, or {hint}",
                    hub.cache_dir.display()
                ),
            ),
            ModelSource::Hub(r) => (
                PathBuf::from(&r.id),
                format!("the Hub repository has none; {hint}"),
            ),
        };
        Error::MissingFile { what, path, hint }
    }
}

fn has(files: &[String], name: &str) -> bool {
    files.iter().any(|f| f == name)
}

/// Which weight files to read, in order of preference: `model.safetensors`, the shards named by
/// `model.safetensors.index.json`, then `pytorch_model.bin`. Only the tensors the model uses
/// are ever read from them ([`Weights`]).
fn weight_files(source: &ModelSource, files: &[String], hub: &HubOptions) -> Result<Vec<PathBuf>> {
    let has = |name: &str| has(files, name);
    if has("model.safetensors") {
        return Ok(vec![source.fetch("model.safetensors", hub)?]);
    }
    if has("model.safetensors.index.json") {
        let index_path = source.fetch("model.safetensors.index.json", hub)?;
        let text = std::fs::read_to_string(&index_path)
            .map_err(|e| Error::io("reading", &index_path, e))?;
        let index: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: index_path.clone(),
            source: e,
        })?;
        let mut shards: Vec<String> = index["weight_map"]
            .as_object()
            .map(|m| {
                m.values()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        return shards.iter().map(|s| source.fetch(s, hub)).collect();
    }
    if has("pytorch_model.bin") {
        return Ok(vec![source.fetch("pytorch_model.bin", hub)?]);
    }
    Err(source.missing(
        "model weights",
        "expected model.safetensors, model.safetensors.index.json or pytorch_model.bin",
        hub,
    ))
}

fn model_type(config_path: &Path) -> Result<String> {
    let text =
        std::fs::read_to_string(config_path).map_err(|e| Error::io("reading", config_path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: config_path.into(),
        message: format!("not valid JSON: {e}"),
    })?;
    Ok(value["model_type"].as_str().unwrap_or("").to_string())
}

/// Loads a model from `source` onto `device` in `dtype` (f32 by default elsewhere; f16/bf16
/// halve memory at some cost in parity).
pub fn load_model(
    source: &ModelSource,
    device: &Device,
    dtype: DType,
    hub: &HubOptions,
) -> Result<Model> {
    if let ModelSource::Gguf(path) = source {
        return GgufFile::open(path)?.load(device, dtype);
    }
    let files = source.files(hub)?;
    if !has(&files, "config.json") {
        return Err(source.missing(
            "config.json",
            "a model directory needs config.json and model.safetensors (or pytorch_model.bin), as \
             written by transformers' save_pretrained",
            hub,
        ));
    }
    let config_path = source.fetch("config.json", hub)?;
    let weights = weight_files(source, &files, hub)?;
    let model_type = model_type(&config_path)?;
    // Tensor errors name the tensor and its file already; say which checkpoint they are from.
    let wrap = |e: Error| match e {
        Error::Candle(e) => Error::Weights {
            path: weights[0].parent().unwrap_or(&weights[0]).to_path_buf(),
            message: e.to_string(),
        },
        other => other,
    };
    let vb = || -> Result<VarBuilder<'static>> {
        let backend: Box<dyn SimpleBackend> = Box::new(Weights::open(&weights)?);
        Ok(VarBuilder::from_backend(backend, dtype, device.clone()))
    };
    match model_type.as_str() {
        "gpt_neox" => {
            let cfg = gpt_neox::Config::from_file(&config_path)?;
            Ok(Model::GptNeoX(GptNeoX::load(vb()?, &cfg).map_err(wrap)?))
        }
        family if llama::Family::from_model_type(family).is_some() => {
            let cfg = llama::Config::from_file(&config_path)?;
            Ok(Model::Llama(Llama::load(vb()?, &cfg).map_err(wrap)?))
        }
        "gemma2" => {
            let cfg = gemma2::Config::from_file(&config_path)?;
            Ok(Model::Gemma2(Gemma2::load(vb()?, &cfg).map_err(wrap)?))
        }
        other => Err(Error::Config {
            path: config_path,
            message: format!(
                "model_type `{other}` is not supported (supported: gpt_neox, llama, mistral, \
                 qwen2, qwen3, gemma2)"
            ),
        }),
    }
}

/// Loads the model's `tokenizer.json`, or for a GGUF file the tokenizer in its metadata.
pub fn load_tokenizer(source: &ModelSource, hub: &HubOptions) -> Result<Tokenizer> {
    if let ModelSource::Gguf(path) = source {
        return GgufFile::open(path)?.tokenizer();
    }
    let files = source.files(hub)?;
    if !has(&files, "tokenizer.json") {
        return Err(source.missing(
            "tokenizer.json",
            "put the model's tokenizer.json beside its config.json (or pass --tokenizer)",
            hub,
        ));
    }
    Tokenizer::from_file(&source.fetch("tokenizer.json", hub)?)
}
