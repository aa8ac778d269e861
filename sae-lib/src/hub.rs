//! Files from the Hugging Face Hub through `hf-hub`, with the cache rules researchers expect:
//! `HF_HOME` (or `HF_HUB_CACHE`) picks the cache, `HF_HUB_OFFLINE=1` never touches the network,
//! `HF_TOKEN` (or the token file `huggingface-cli login` writes) opens gated and private
//! repositories, and a file already in the cache is used without asking the Hub.
//!
//! hf-hub 0.5 reads `HF_HOME`, `HF_ENDPOINT` and the token file beside its cache, but not
//! `HF_HUB_CACHE`, `HF_TOKEN` or `HF_HUB_OFFLINE`, and its `info()` always goes online, so those
//! are read here and cache lookups are done directly on the standard layout:
//! `<cache>/<models|datasets>--<org>--<name>/{refs/<rev>, snapshots/<sha>/...}`. A snapshot
//! holds only the files fetched so far, so the Hub's file list is remembered beside it, per
//! commit (`.sae-lib-files/<sha>.json`), to answer later listings without the network.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::{Error, Result};

/// Where to look for Hub files and whether the network may be used.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The hub cache folder (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Hub URL (`$HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: Option<String>,
    /// Never use the network (`$HF_HUB_OFFLINE` set to 1/true/yes/on).
    pub offline: bool,
    /// The access token sent to the Hub, for gated and private repositories (`None`: ask
    /// without one).
    pub token: Option<String>,
}

impl HubOptions {
    /// Reads the variables Python's `huggingface_hub` reads, with its precedence: the cache is
    /// `$HF_HUB_CACHE`, else `$HF_HOME/hub`; the token is `$HF_TOKEN`, else the file at
    /// `$HF_TOKEN_PATH`, else `$HF_HOME/token` (where `huggingface-cli login` writes it).
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        let offline = var("HF_HUB_OFFLINE").is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        });
        // hf-hub's cache path is `$HF_HOME/hub`; the token file sits beside it.
        let home_cache = Cache::from_env().path().clone();
        let token_file = var("HF_TOKEN_PATH")
            .map(PathBuf::from)
            .or_else(|| home_cache.parent().map(|home| home.join("token")));
        let token = var("HF_TOKEN").or_else(|| {
            let text = std::fs::read_to_string(token_file?).ok()?;
            Some(text.trim().to_string()).filter(|t| !t.is_empty())
        });
        Self {
            cache_dir: var("HF_HUB_CACHE").map_or(home_cache, PathBuf::from),
            endpoint: var("HF_ENDPOINT"),
            offline,
            token: token.map(|t| t.trim().to_string()),
        }
    }
}

/// Whether a repository holds a model or a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepoKind {
    /// A model repository (`models--…` in the cache).
    Model,
    /// A dataset repository (`datasets--…` in the cache).
    Dataset,
    /// A model repository that holds SAEs, one folder each (`models--…` in the cache).
    Sae,
}

/// A Hub repository at a revision (branch, tag or commit sha).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubRepo {
    /// Repository id, `org/name`.
    pub id: String,
    /// Branch, tag or commit sha (`main` unless given after an `@`).
    pub revision: String,
    /// Model or dataset: picks the cache folder and the Hub API used.
    pub kind: RepoKind,
}

impl HubRepo {
    /// Parses `org/name` or `org/name@revision` (default revision `main`).
    pub fn parse(spec: &str, kind: RepoKind) -> Self {
        let (id, revision) = spec.split_once('@').unwrap_or((spec, "main"));
        Self {
            id: id.to_string(),
            revision: revision.to_string(),
            kind,
        }
    }

    fn kind_name(&self) -> &'static str {
        match self.kind {
            RepoKind::Model => "model",
            RepoKind::Dataset => "dataset",
            RepoKind::Sae => "SAE repository",
        }
    }

    /// This repository's folder in the cache.
    pub fn cache_folder(&self, opts: &HubOptions) -> PathBuf {
        let kind = match self.kind {
            RepoKind::Model | RepoKind::Sae => "models",
            RepoKind::Dataset => "datasets",
        };
        opts.cache_dir
            .join(format!("{kind}--{}", self.id.replace('/', "--")))
    }

    /// The snapshot folder of this revision in the cache, if the revision was ever fetched.
    pub fn cached_snapshot(&self, opts: &HubOptions) -> Option<PathBuf> {
        let folder = self.cache_folder(opts);
        let is_sha =
            self.revision.len() == 40 && self.revision.bytes().all(|b| b.is_ascii_hexdigit());
        let sha = if is_sha {
            self.revision.clone()
        } else {
            std::fs::read_to_string(folder.join("refs").join(&self.revision))
                .ok()?
                .trim()
                .to_string()
        };
        let snapshot = folder.join("snapshots").join(sha);
        snapshot.is_dir().then_some(snapshot)
    }

    /// The cached copy of `filename`, if there is one.
    pub fn cached(&self, filename: &str, opts: &HubOptions) -> Option<PathBuf> {
        let path = self.cached_snapshot(opts)?.join(filename);
        path.is_file().then_some(path)
    }

    /// `filename` from the cache, else downloaded (unless offline).
    pub fn fetch(&self, filename: &str, opts: &HubOptions) -> Result<PathBuf> {
        if let Some(path) = self.cached(filename, opts) {
            return Ok(path);
        }
        if opts.offline {
            return Err(self.unavailable(filename, opts, "HF_HUB_OFFLINE is set"));
        }
        let api = self.api(opts)?;
        api.repo(self.hf_repo())
            .download(filename)
            .map_err(|e| self.refused(filename, opts, &e))
    }

    /// The repository's file names. A cached snapshot holds only the files fetched so far, so
    /// the Hub's own list is asked for and remembered beside the cache, per commit; the cached
    /// commit's remembered list then answers without the network. Offline, or when the Hub
    /// cannot be reached, the files the snapshot holds are what there is.
    pub fn list_files(&self, opts: &HubOptions) -> Result<Vec<String>> {
        let snapshot = self.cached_snapshot(opts);
        if let Some(files) = snapshot.as_deref().and_then(|s| self.remembered(s, opts)) {
            return Ok(files);
        }
        match (self.list_files_online(opts), snapshot) {
            (Ok(files), _) => Ok(files),
            (Err(_), Some(snapshot)) => {
                let mut files = Vec::new();
                walk(&snapshot, &snapshot, &mut files);
                files.sort();
                Ok(files)
            }
            (Err(e), None) => Err(e),
        }
    }

    /// Where the Hub's file list at `commit` is remembered.
    fn listing_path(&self, commit: &str, opts: &HubOptions) -> PathBuf {
        self.cache_folder(opts)
            .join(".sae-lib-files")
            .join(format!("{commit}.json"))
    }

    fn remembered(&self, snapshot: &Path, opts: &HubOptions) -> Option<Vec<String>> {
        let commit = snapshot.file_name()?.to_str()?;
        let text = std::fs::read(self.listing_path(commit, opts)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// The repository's file names as the Hub lists them now, remembered for its commit (an
    /// error when offline).
    fn list_files_online(&self, opts: &HubOptions) -> Result<Vec<String>> {
        if opts.offline {
            return Err(self.unavailable("the file list", opts, "HF_HUB_OFFLINE is set"));
        }
        let info = self
            .api(opts)?
            .repo(self.hf_repo())
            .info()
            .map_err(|e| self.refused("the file list", opts, &e))?;
        let mut files: Vec<String> = info.siblings.into_iter().map(|s| s.rfilename).collect();
        files.sort();
        let path = self.listing_path(&info.sha, opts);
        // Best effort: a cache that cannot be written to is asked again next time.
        if path
            .parent()
            .is_some_and(|p| std::fs::create_dir_all(p).is_ok())
        {
            let _ = crate::io::write_json(&path, &files);
        }
        Ok(files)
    }

    fn hf_repo(&self) -> Repo {
        let kind = match self.kind {
            RepoKind::Model | RepoKind::Sae => RepoType::Model,
            RepoKind::Dataset => RepoType::Dataset,
        };
        Repo::with_revision(self.id.clone(), kind, self.revision.clone())
    }

    fn api(&self, opts: &HubOptions) -> Result<hf_hub::api::sync::Api> {
        // The token is set here: hf-hub would look for its file beside the cache, which is
        // wrong once `HF_HUB_CACHE` moves the cache away from `HF_HOME`.
        let mut builder = ApiBuilder::from_cache(Cache::new(opts.cache_dir.clone()))
            .with_token(opts.token.clone())
            .with_progress(std::io::stderr().is_terminal());
        if let Some(endpoint) = &opts.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        builder
            .build()
            .map_err(|e| Error::Hub(format!("cannot set up the Hugging Face Hub client: {e}")))
    }

    /// The error for a request the Hub answered with a refusal (401, 403, 404...), saying what
    /// to do about it; anything else (no network, a broken transfer) is [`Self::unavailable`].
    fn refused(&self, what: &str, opts: &HubOptions, e: &ApiError) -> Error {
        let Some(status) = status_of(e) else {
            return self.unavailable(what, opts, &e.to_string());
        };
        let endpoint = opts.endpoint.as_deref().unwrap_or("https://huggingface.co");
        let page = match self.kind {
            RepoKind::Dataset => format!("{endpoint}/datasets/{}", self.id),
            RepoKind::Model | RepoKind::Sae => format!("{endpoint}/{}", self.id),
        };
        let why = match status {
            401 if opts.token.is_none() => format!(
                "the Hub asks for a token (HTTP 401): the repository is gated or private, or \
                 does not exist. If it exists, accept its terms at {page} while logged in, then \
                 set HF_TOKEN to a read token (or run `huggingface-cli login`)"
            ),
            401 => "the Hub rejected the token from HF_TOKEN or the token file (HTTP 401): the \
                    token is invalid or expired, or the repository is private to others or does \
                    not exist. Check the name, or make a new read token at \
                    https://huggingface.co/settings/tokens"
                .to_string(),
            403 => format!(
                "the token has no access to this repository (HTTP 403): it is gated, so request \
                 access at {page} and wait for approval, or the token lacks read permission"
            ),
            404 => "the Hub has no such thing (HTTP 404): check the repository name, the \
                    revision after `@` and the file name"
                .to_string(),
            429 => "the Hub is limiting requests (HTTP 429): wait and try again, with a token \
                    (HF_TOKEN) for a higher limit"
                .to_string(),
            status => format!("the Hub answered HTTP {status}: try again later"),
        };
        Error::Hub(format!(
            "cannot get {what} of {} `{}` (revision {}): {why}.",
            self.kind_name(),
            self.id,
            self.revision
        ))
    }

    fn unavailable(&self, what: &str, opts: &HubOptions, why: &str) -> Error {
        let local = match self.kind {
            RepoKind::Model => "a local model directory (holding config.json, model.safetensors and tokenizer.json) with --model /path/to/dir",
            RepoKind::Dataset => "local text with --dataset /path/to/file.txt|.jsonl|.parquet or a directory of them",
            RepoKind::Sae => "the SAE's folder on disk with --sae /path/to/folder",
        };
        Error::Hub(format!(
            "cannot get {what} of {} `{}` (revision {}): {why}; no cached copy in {}. \
             If this machine cannot reach the Hugging Face Hub, pass {local}, or set HF_HOME to a \
             cache that holds it.",
            self.kind_name(),
            self.id,
            self.revision,
            opts.cache_dir.display()
        ))
    }
}

/// The HTTP status of a request the Hub refused, if that is what `e` is.
fn status_of(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::RequestError(e) => match **e {
            ureq::Error::StatusCode(status) => Some(status),
            _ => None,
        },
        ApiError::TooManyRetries(e) => status_of(e),
        _ => None,
    }
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(dir: &Path, offline: bool) -> HubOptions {
        HubOptions {
            cache_dir: dir.to_path_buf(),
            // A closed local port: connection refused at once, never the real Hub.
            endpoint: Some("http://127.0.0.1:9".into()),
            offline,
            token: None,
        }
    }

    #[test]
    fn reads_the_standard_cache_layout() {
        let dir = tempfile::tempdir().unwrap();
        let repo = HubRepo::parse("EleutherAI/pythia-70m-deduped", RepoKind::Model);
        let sha = "0123456789abcdef0123456789abcdef01234567";
        let folder = dir.path().join("models--EleutherAI--pythia-70m-deduped");
        std::fs::create_dir_all(folder.join("refs")).unwrap();
        std::fs::create_dir_all(folder.join("snapshots").join(sha).join("sub")).unwrap();
        std::fs::write(folder.join("refs/main"), sha).unwrap();
        std::fs::write(folder.join("snapshots").join(sha).join("config.json"), "{}").unwrap();
        std::fs::write(folder.join("snapshots").join(sha).join("sub/x.txt"), "").unwrap();
        let o = opts(dir.path(), true);
        let got = repo.fetch("config.json", &o).unwrap();
        assert!(got.ends_with(format!("snapshots/{sha}/config.json")));
        assert_eq!(
            repo.list_files(&o).unwrap(),
            vec!["config.json", "sub/x.txt"]
        );
        // A Hub that cannot be reached leaves the files the cache holds.
        assert_eq!(
            repo.list_files(&opts(dir.path(), false)).unwrap(),
            vec!["config.json", "sub/x.txt"]
        );
        // A pinned sha needs no ref file.
        let pinned = HubRepo::parse(
            &format!("EleutherAI/pythia-70m-deduped@{sha}"),
            RepoKind::Model,
        );
        assert!(pinned.fetch("config.json", &o).is_ok());
    }

    #[test]
    fn offline_without_cache_says_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        let repo = HubRepo::parse("EleutherAI/pythia-70m-deduped", RepoKind::Model);
        let msg = repo
            .fetch("config.json", &opts(dir.path(), true))
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("EleutherAI/pythia-70m-deduped") && msg.contains("HF_HUB_OFFLINE"),
            "{msg}"
        );
        assert!(msg.contains("--model /path/to/dir"), "{msg}");
    }

    #[test]
    fn unreachable_hub_is_one_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let repo = HubRepo::parse("NeelNanda/pile-10k", RepoKind::Dataset);
        let o = opts(dir.path(), false);
        let msg = repo.fetch("data.parquet", &o).unwrap_err().to_string();
        assert!(
            msg.contains("NeelNanda/pile-10k") && msg.contains("--dataset"),
            "{msg}"
        );
        let msg = repo.list_files(&o).unwrap_err().to_string();
        assert!(msg.contains("file list"), "{msg}");
    }
}
