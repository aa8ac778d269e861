//! Shared test helpers: fixture paths, loading, and tensor comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use sae_lib::data::{CollectMode, StoreMeta, TokenFilter};
use sae_lib::hooks::HookPoint;
use sae_lib::hub::HubOptions;
use sae_lib::model::{load_model, Model, ModelSource};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// `../shared/data` beside the checkout, when present (CI has it; a fresh clone does not).
pub fn shared_data(rel: &str) -> Option<PathBuf> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        println!(
            "SKIP: {} is absent (../shared/data is only beside the CI checkout)",
            p.display()
        );
        None
    }
}

/// Hub options that can never reach the network.
pub fn offline_hub() -> HubOptions {
    HubOptions {
        cache_dir: std::env::temp_dir().join("sae-lib-test-empty-cache"),
        endpoint: Some("http://127.0.0.1:9".into()),
        offline: true,
        token: None,
    }
}

/// The fixture model `name` loaded with its config.json passed through `edit` first.
pub fn load_edited(
    name: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> sae_lib::Result<Model> {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixture(name)).unwrap().flatten() {
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    let path = dir.path().join("config.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&path, cfg.to_string()).unwrap();
    load_model(
        &ModelSource::Dir(dir.path().into()),
        &Device::Cpu,
        DType::F32,
        &offline_hub(),
    )
}

pub fn load_fixture_model(name: &str) -> Model {
    load_model(
        &ModelSource::Dir(fixture(name)),
        &Device::Cpu,
        DType::F32,
        &offline_hub(),
    )
    .unwrap()
}

pub fn expected(name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(name).join("expected.safetensors"), &Device::Cpu)
        .unwrap()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shape mismatch");
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Max |a - b| over the positions where `mask` (batch, seq) is 1; a and b are (batch, seq, ...).
pub fn masked_max_abs_diff(a: &Tensor, b: &Tensor, mask: &Tensor) -> f32 {
    let mask = mask.to_dtype(DType::F32).unwrap();
    let mut m = mask.clone();
    while m.rank() < a.rank() {
        m = m.unsqueeze(m.rank()).unwrap();
    }
    let diff = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap();
    diff.broadcast_mul(&m)
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// The Euclidean norm of each row of `t` `(n, d)`: `(n,)`.
pub fn row_norms(t: &Tensor) -> Tensor {
    t.sqr().unwrap().sum(1).unwrap().sqrt().unwrap()
}

/// A store's description before any row: `d`-wide rows, every token.
pub fn empty_meta(d: usize) -> StoreMeta {
    StoreMeta {
        model: "m".into(),
        revision: None,
        hook: HookPoint::mlp_out(0),
        context_size: 8,
        dataset: "d".into(),
        mode: CollectMode::All,
        rows: 0,
        d,
        dtype: String::new(),
        docs: 0,
        skipped_empty: 0,
        filter: TokenFilter::default(),
        outliers_dropped: 0,
        shards: vec![],
    }
}

/// Puts into the Hub cache `cache` (what `$HF_HOME/hub` holds) a snapshot of the model
/// repository `id` at `main`, laid out as the Hub client lays it out, holding the files of
/// each `(folder in the repository, folder on disk)` and each `(file in the repository, file
/// on disk)`.
pub fn cache_repo(cache: &Path, id: &str, folders: &[(&str, PathBuf)], files: &[(&str, PathBuf)]) {
    let sha = "0123456789abcdef0123456789abcdef01234567";
    let repo = cache.join(format!("models--{}", id.replace('/', "--")));
    let snapshot = repo.join("snapshots").join(sha);
    let mut all: Vec<(PathBuf, PathBuf)> = files
        .iter()
        .map(|(to, from)| (snapshot.join(to), from.clone()))
        .collect();
    for (to, from) in folders {
        for entry in std::fs::read_dir(from).unwrap().flatten() {
            all.push((snapshot.join(to).join(entry.file_name()), entry.path()));
        }
    }
    for (to, from) in all {
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(&from, &to).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), sha).unwrap();
}
