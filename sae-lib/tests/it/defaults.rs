//! Defaults that work: every architecture, given nothing but the architecture, trains a working
//! SAE (0 < L0 well below d_sae, FVU clearly below 1) on the kinds of activations a user meets
//! first. A smaller copy of `examples/defaults_matrix.rs` (fewer steps and features): the
//! trainer's own learning rate, sparsity coefficient, k, initialisation and schedules.

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae_lib::collect::{collect_to_store, CollectConfig};
use sae_lib::data::{ActivationStore, CollectMode};
use sae_lib::hooks::HookPoint;
use sae_lib::model::{load_tokenizer, ModelSource};
use sae_lib::sae::common::normal_vec;
use sae_lib::sae::{Architecture, Sae, SaeConfig, SaeMetadata};
use sae_lib::train::{TrainConfig, Trainer};

use crate::common::*;

const D_SAE: usize = 256;
const STEPS: u64 = 200;

/// `n` rows of width `d` mixing 5 of `features` random directions each (isotropic Gaussian
/// when `features` is 0), plus a shared offset `mean` times the typical norm, scaled to mean
/// norm `norm`.
fn synthetic(d: usize, n: usize, features: usize, mean: f32, norm: f32, seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut x: Vec<f32> = if features == 0 {
        normal_vec(n * d, &mut rng)
    } else {
        let dirs = normal_vec(features * d, &mut rng);
        let mut x = vec![0f32; n * d];
        for r in 0..n {
            for _ in 0..5 {
                let f = rng.random_range(0..features);
                let a: f32 = rng.random_range(0.5..2.0);
                for j in 0..d {
                    x[r * d + j] += a * dirs[f * d + j];
                }
            }
        }
        x
    };
    let offset = normal_vec(d, &mut rng);
    let typical = (d as f32).sqrt() * if features == 0 { 1.0 } else { 2.5 };
    let offset_norm = offset.iter().map(|v| v * v).sum::<f32>().sqrt();
    for r in 0..n {
        for j in 0..d {
            x[r * d + j] += mean * typical * offset[j] / offset_norm;
        }
    }
    let t = Tensor::from_vec(x, (n, d), &Device::Cpu).unwrap();
    let avg = row_norms(&t)
        .mean_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    (t * (norm / avg) as f64).unwrap()
}

/// Every token of some WikiText-like text through the held-out Pythia-shaped fixture.
fn random_model_activations() -> Tensor {
    let source = ModelSource::Dir(fixture("pythia/safetensors"));
    let model =
        sae_lib::model::load_model(&source, &Device::Cpu, DType::F32, &offline_hub()).unwrap();
    let tok = load_tokenizer(&source, &offline_hub()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let words = [
        "the", "river", "of", "a", "king", "was", "built", "in", "1914", "and",
    ];
    let docs: Vec<sae_lib::Result<String>> = (0..30)
        .map(|_| {
            Ok((0..30)
                .map(|_| words[rng.random_range(0..words.len())])
                .collect::<Vec<_>>()
                .join(" "))
        })
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let cfg = CollectConfig {
        hook: HookPoint::resid_post(1),
        mode: CollectMode::All,
        max_len: 64,
        ..Default::default()
    };
    let provenance = sae_lib::collect::Provenance {
        model: "pythia fixture".into(),
        revision: None,
        dataset: "words".into(),
    };
    collect_to_store(&model, &tok, docs, &cfg, &provenance, dir.path()).unwrap();
    ActivationStore::open(dir.path())
        .unwrap()
        .to_tensor(&Device::Cpu)
        .unwrap()
}

/// Trains `arch` with its defaults (fewer steps and features) on `train`, and returns FVU, L0
/// and the dead fraction on `eval`.
fn train_with_defaults(arch: Architecture, train: &Tensor, eval: &Tensor) -> (f64, f64, f64) {
    let d = arch.defaults(D_SAE);
    let cfg = TrainConfig {
        steps: STEPS,
        checkpoint_every: None,
        ..TrainConfig::for_architecture(arch, D_SAE)
    };
    let sae_cfg = SaeConfig {
        k: d.k,
        ..SaeConfig::new(arch, train.dim(1).unwrap(), D_SAE, SaeMetadata::default())
    };
    let mut trainer = Trainer::new(sae_cfg, cfg, train, &Device::Cpu).unwrap();
    trainer.train(None, None).unwrap();
    let x = (eval * trainer.scale()).unwrap();
    let f = trainer.sae().encode(&x).unwrap();
    let x_hat = trainer.sae().decode(&f).unwrap();
    let counts = sae_lib::eval::metrics::firing_counts(&f).unwrap();
    (
        sae_lib::eval::metrics::fvu(&x, &x_hat).unwrap(),
        sae_lib::eval::metrics::l0(&f).unwrap(),
        counts.iter().filter(|&&c| c == 0.0).count() as f64 / D_SAE as f64,
    )
}

#[test]
fn every_architecture_trains_a_working_sae_with_its_defaults() {
    let model_acts = random_model_activations();
    let n = model_acts.dim(0).unwrap();
    let split = |x: Tensor, n_train: usize| {
        let n = x.dim(0).unwrap();
        (
            x.narrow(0, 0, n_train).unwrap(),
            x.narrow(0, n_train, n - n_train).unwrap(),
        )
    };
    let cases: Vec<(&str, (Tensor, Tensor))> = vec![
        // The tutorial's middle token of 40 prompts: scored on those 40 rows, as the
        // walkthrough reports them (40 rows teach nothing that generalises).
        ("40 rows", {
            let x = synthetic(128, 40, 512, 0.3, 1.0, 1);
            (x.clone(), x)
        }),
        ("random model, every token", split(model_acts, n * 4 / 5)),
        (
            "isotropic with a large mean",
            split(synthetic(96, 1000, 0, 3.0, 1.0, 2), 800),
        ),
        (
            "sparse, d_in 64, norm 0.1",
            split(synthetic(64, 1000, 256, 0.3, 0.1, 3), 800),
        ),
        (
            "sparse, d_in 2048, norm 100",
            split(synthetic(2048, 300, 128, 0.3, 100.0, 4), 240),
        ),
    ];
    let mut failures = Vec::new();
    for (name, (train, eval)) in &cases {
        for &arch in Architecture::ALL {
            let (fvu, l0, dead) = train_with_defaults(arch, train, eval);
            println!(
                "{name:32} {:10} FVU {fvu:.3}  L0 {l0:6.1}  dead {:.1}%",
                arch.name(),
                100.0 * dead
            );
            if !(fvu < 0.9 && l0 > 0.5 && l0 < D_SAE as f64 / 2.0) {
                failures.push(format!("{name}, {}: FVU {fvu:.3}, L0 {l0:.1}", arch.name()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "defaults that do not work: {failures:#?}"
    );
}
