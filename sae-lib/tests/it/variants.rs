//! Part 2: every SAE variant against the synthetic ground truth, the SAELens format (both
//! directions), JumpReLU's pseudo-derivatives, and the sweep.

use candle_core::{Device, IndexOp, Tensor, Var};
use sae_lib::sae::jumprelu::{jumprelu_ste, step_l0_ste};
use sae_lib::sae::{format, Architecture, Sae, SaeConfig, SaeMetadata};
use sae_lib::sweep::{pareto_chart, run_sweep, sweep_frame, SweepConfig};
use sae_lib::train::optim::AdamParams;
use sae_lib::train::{TrainConfig, Trainer};

use crate::common::*;
use crate::sae::{ground_truth, synthetic};

fn cfg(arch: Architecture, d_in: usize, d_sae: usize, k: Option<usize>) -> SaeConfig {
    SaeConfig {
        k,
        ..SaeConfig::new(arch, d_in, d_sae, SaeMetadata::default())
    }
}

fn gt_train(coefficient: f64, lr: f64) -> TrainConfig {
    TrainConfig {
        steps: 2000,
        batch_size: 1024,
        sparsity_coefficient: coefficient,
        adam: AdamParams {
            lr,
            ..Default::default()
        },
        log_every: 500,
        ..Default::default()
    }
}

/// k-sparse variants converge in half the steps the penalty-based ones need.
fn k_train() -> TrainConfig {
    TrainConfig {
        steps: 1000,
        ..gt_train(0.0, 2e-3)
    }
}

#[test]
fn topk_recovers_a_known_sparse_dictionary() {
    ground_truth(Architecture::TopK, Some(5), k_train());
}

#[test]
fn batch_topk_recovers_a_known_sparse_dictionary() {
    ground_truth(Architecture::BatchTopK, Some(5), k_train());
}

#[test]
fn matryoshka_recovers_a_known_sparse_dictionary() {
    ground_truth(Architecture::Matryoshka, Some(5), gt_train(0.0, 2e-3));
}

#[test]
fn jumprelu_recovers_a_known_sparse_dictionary() {
    ground_truth(Architecture::JumpRelu, None, gt_train(0.5, 2e-3));
}

#[test]
fn gated_recovers_a_known_sparse_dictionary() {
    ground_truth(Architecture::Gated, None, gt_train(3.0, 2e-3));
}

/// Asserts that `sae` encodes and decodes the fixture's `expected.safetensors` inputs as the
/// library that saved it did, within 1e-5.
pub(crate) fn encodes_as_expected(sae: &sae_lib::sae::AnySae, dir: &std::path::Path, what: &str) {
    let exp =
        candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let f = sae.encode(&exp["x"]).unwrap();
    assert!(
        max_abs_diff(&f, &exp["feature_acts"]) < 1e-5,
        "{what}: feature_acts differ"
    );
    assert!(
        max_abs_diff(&sae.decode(&f).unwrap(), &exp["sae_out"]) < 1e-5,
        "{what}: sae_out differs"
    );
}

#[test]
fn saelens_saved_saes_load_and_encode_as_saelens_does() {
    for arch in [
        "standard",
        "topk",
        "topk_rescale",
        "jumprelu",
        "gated",
        "batchtopk",
        "legacy_standard",
        "legacy_topk",
    ] {
        let dir = fixture(&format!("saelens/{arch}"));
        let sae = format::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{arch}: {e}"));
        encodes_as_expected(&sae, &dir, arch);
    }
}

/// A cfg.json written before SAELens 6 (flat, `hook_point`, TopK as an activation function)
/// is read as SAELens 6 reads it: the architecture, `k`, the hook and the defaults it did not
/// yet write; one asking for activation normalisation is refused.
#[test]
fn saelens_configs_from_before_version_6_are_upgraded_as_saelens_does() {
    let standard = format::load(&fixture("saelens/legacy_standard"), &Device::Cpu).unwrap();
    let topk = format::load(&fixture("saelens/legacy_topk"), &Device::Cpu).unwrap();
    assert_eq!(standard.config().architecture, Architecture::Relu);
    assert_eq!(
        (topk.config().architecture, topk.config().k),
        (Architecture::TopK, Some(4))
    );
    for sae in [&standard, &topk] {
        let m = &sae.config().metadata;
        assert_eq!(
            (m.hook_name.as_str(), m.model_name.as_str(), m.context_size),
            ("blocks.1.hook_mlp_out", "pythia-70m-deduped", 128)
        );
        assert!(m.prepend_bos, "SAELens' default before it was written");
        assert_eq!(m.dataset_path, "NeelNanda/pile-10k");
    }
    let err = load_error_edited(
        "saelens/legacy_standard",
        "sae_weights.safetensors",
        "cfg.json",
        |c| c["normalize_activations"] = true.into(),
    );
    assert!(err.contains("expected_average_only_in"), "{err}");
}

/// The error loading a copy of the fixture SAE folder `name` gives, its config file `config`
/// edited by `edit` (its weights file `weights` copied as it is).
fn load_error_edited(
    name: &str,
    weights: &str,
    config: &str,
    edit: impl FnOnce(&mut serde_json::Value),
) -> String {
    let (dir, tmp) = (fixture(name), tempfile::tempdir().unwrap());
    std::fs::copy(dir.join(weights), tmp.path().join(weights)).unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join(config)).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(tmp.path().join(config), cfg.to_string()).unwrap();
    format::load(tmp.path(), &Device::Cpu)
        .unwrap_err()
        .to_string()
}

/// `--sae org/name/folder` reads the SAE in that folder of a Hub repository (here from the
/// cache, offline), in SAELens', sparsify's or dictionary_learning's layout, as it reads the
/// same folder on disk; a repository folder that holds no SAE is an error that lists the ones
/// it holds.
#[test]
fn saes_load_from_a_hub_repository_folder() {
    let cache = tempfile::tempdir().unwrap();
    cache_repo(
        cache.path(),
        "org/saes",
        &[
            ("5-mlp-sm", fixture("saelens/legacy_standard")),
            ("run/layers.1.mlp", fixture("sparsify/run/layers.1.mlp")),
            ("dl/trainer_0", fixture("dictionary_learning/topk")),
        ],
        &[("run/config.json", fixture("sparsify/run/config.json"))],
    );
    let hub = sae_lib::hub::HubOptions {
        cache_dir: cache.path().to_path_buf(),
        endpoint: Some("http://127.0.0.1:9".into()),
        offline: true,
        token: None,
    };
    for (spec, local) in [
        ("org/saes/5-mlp-sm", "saelens/legacy_standard"),
        (
            "org/saes@main/run/layers.1.mlp",
            "sparsify/run/layers.1.mlp",
        ),
        ("org/saes/dl/trainer_0", "dictionary_learning/topk"),
    ] {
        let dir = sae_lib::sae::locate(spec, &hub).unwrap();
        assert!(dir.starts_with(cache.path()), "{spec}: {}", dir.display());
        let (got, want) = (
            format::load(&dir, &Device::Cpu).unwrap(),
            format::load(&fixture(local), &Device::Cpu).unwrap(),
        );
        assert_eq!(got.config(), want.config(), "{spec}");
        assert_eq!(
            format::metadata(&dir).unwrap(),
            format::metadata(&fixture(local)).unwrap(),
            "{spec}"
        );
        let x = Tensor::randn(0f32, 1., (3, want.config().d_in), &Device::Cpu).unwrap();
        assert_eq!(
            max_abs_diff(&got.encode(&x).unwrap(), &want.encode(&x).unwrap()),
            0.0
        );
    }
    // A local folder is itself, whatever the cache holds.
    let local = fixture("saelens/topk");
    assert_eq!(
        sae_lib::sae::locate(local.to_str().unwrap(), &hub).unwrap(),
        local
    );
    for (spec, says) in [
        (
            "org/saes",
            "org/saes/5-mlp-sm, org/saes/dl/trainer_0, org/saes/run/layers.1.mlp",
        ),
        ("org/saes/run", "holds no SAE in `run`"),
        ("org/other/5-mlp-sm", "HF_HUB_OFFLINE"),
        ("no-such-folder", "org/name/folder"),
    ] {
        let err = sae_lib::sae::locate(spec, &hub).unwrap_err().to_string();
        assert!(err.contains(says), "{spec}: {err}");
    }
}

/// Online, `--sae org/name/folder` lists the repository once and downloads only the files
/// that SAE is read from (its weights and config, SAELens' sparsity, sparsify's run
/// config.json one level up) into the Hub cache; asked again, it answers from the cache, and
/// a folder the cache does not hold yet is found through the remembered list, offline too.
#[test]
fn a_hub_sae_is_downloaded_file_by_file_into_the_cache() {
    use crate::mock_hub::{files_of, MockHub};
    let mut files = files_of(&fixture("saelens/batchtopk"), "5-mlp-sm/");
    files.extend(files_of(&fixture("sparsify/run"), "run/"));
    files.extend(files_of(&fixture("saelens/topk"), "other/"));
    let server = MockHub::serve("org/saes", files);
    let cache = tempfile::tempdir().unwrap();
    let hub = server.options(cache.path());
    let dir = sae_lib::sae::locate("org/saes/5-mlp-sm", &hub).unwrap();
    assert!(dir.starts_with(cache.path()), "{}", dir.display());
    let saelens = [
        "5-mlp-sm/sae_weights.safetensors",
        "5-mlp-sm/cfg.json",
        "5-mlp-sm/sparsity.safetensors",
    ];
    assert_eq!(server.downloaded(), saelens);
    let (got, want) = (
        format::load(&dir, &Device::Cpu).unwrap(),
        format::load(&fixture("saelens/batchtopk"), &Device::Cpu).unwrap(),
    );
    assert_eq!(got.config(), want.config());
    let x = Tensor::randn(0f32, 1., (3, 8), &Device::Cpu).unwrap();
    assert_eq!(
        max_abs_diff(&got.encode(&x).unwrap(), &want.encode(&x).unwrap()),
        0.0
    );
    assert_eq!(server.listings(), 1);

    assert_eq!(
        sae_lib::sae::locate("org/saes/5-mlp-sm", &hub).unwrap(),
        dir
    );
    assert_eq!(server.listings(), 1, "answered from the cache");
    assert_eq!(server.downloaded(), saelens);

    let dir = sae_lib::sae::locate("org/saes/run/layers.1.mlp", &hub).unwrap();
    assert_eq!(server.listings(), 1, "the list is remembered");
    assert_eq!(
        server.downloaded()[saelens.len()..],
        [
            "run/layers.1.mlp/sae.safetensors",
            "run/layers.1.mlp/cfg.json",
            "run/config.json"
        ]
    );
    assert_eq!(
        format::metadata(&dir).unwrap(),
        format::metadata(&fixture("sparsify/run/layers.1.mlp")).unwrap()
    );
    let offline = sae_lib::hub::HubOptions {
        offline: true,
        token: None,
        ..hub.clone()
    };
    let err = sae_lib::sae::locate("org/saes/missing", &offline)
        .unwrap_err()
        .to_string();
    assert!(err.contains("org/saes/other"), "{err}");
    let dir = sae_lib::sae::locate("org/saes/other", &hub).unwrap();
    assert_eq!(
        format::load(&dir, &Device::Cpu).unwrap().config().k,
        Some(4)
    );
    assert_eq!(server.listings(), 1);
}

/// SAEs saved by dictionary_learning's own trainers (`ae.pt` and `config.json`) load as the
/// variant of ours each class is and encode and decode as dictionary_learning does, with the
/// model, hook and context size its config.json gives; a class it does not know is one clear
/// error.
#[test]
fn dictionary_learning_saes_load_and_encode_as_dictionary_learning_does() {
    for (name, arch, k, hook) in [
        (
            "standard",
            Architecture::Relu,
            None,
            "blocks.1.hook_resid_post",
        ),
        ("gated", Architecture::Gated, None, "blocks.1.hook_mlp_out"),
        (
            "jumprelu",
            Architecture::JumpRelu,
            None,
            "blocks.1.hook_resid_post",
        ),
        ("topk", Architecture::TopK, Some(4), "blocks.1.hook_mlp_out"),
        (
            "batchtopk",
            Architecture::JumpRelu,
            None,
            "blocks.1.hook_attn_out",
        ),
        (
            "matryoshka",
            Architecture::JumpRelu,
            None,
            "blocks.0.hook_resid_post",
        ),
    ] {
        let dir = fixture(&format!("dictionary_learning/{name}"));
        let sae = format::load(&dir, &Device::Cpu).unwrap_or_else(|e| panic!("{name}: {e}"));
        let c = sae.config();
        assert_eq!(
            (c.architecture, c.d_in, c.d_sae, c.k),
            (arch, 8, 16, k),
            "{name}"
        );
        let m = format::metadata(&dir).unwrap();
        assert_eq!(m, c.metadata);
        assert_eq!(
            (m.model_name.as_str(), m.hook_name.as_str(), m.context_size),
            ("EleutherAI/pythia-70m-deduped", hook, 64),
            "{name}"
        );
        encodes_as_expected(&sae, &dir, name);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = fixture("dictionary_learning/standard");
    std::fs::copy(dir.join("ae.pt"), tmp.path().join("ae.pt")).unwrap();
    let err = format::load(tmp.path(), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(err.contains("config.json"), "{err}");
    let err = load_error_edited(
        "dictionary_learning/standard",
        "ae.pt",
        "config.json",
        |c| c["trainer"]["dict_class"] = "AutoEncoderNew".into(),
    );
    assert!(err.contains("`AutoEncoderNew` is not supported"), "{err}");
}

/// A run saved by sparsify's own code loads as a TopK SAE that encodes and decodes as
/// sparsify does, with its hook from the folder's name and its model, dataset and context
/// size from the run's config.json; what it cannot be (a transcoder, a skip connection,
/// groupmax, the run folder itself) is one clear error.
#[test]
fn sparsify_saved_saes_load_and_encode_as_sparsify_does() {
    let dir = fixture("sparsify/run/layers.1.mlp");
    let sae = format::load(&dir, &Device::Cpu).unwrap();
    encodes_as_expected(&sae, &dir, "sparsify");
    let c = sae.config();
    assert_eq!(
        (c.architecture, c.d_in, c.d_sae, c.k),
        (Architecture::TopK, 32, 64, Some(4))
    );
    let m = format::metadata(&dir).unwrap();
    assert_eq!(m, c.metadata);
    assert_eq!(m.hook_name, "blocks.1.hook_mlp_out");
    assert_eq!(
        (
            m.model_name.as_str(),
            m.dataset_path.as_str(),
            m.context_size
        ),
        ("EleutherAI/pythia-70m-deduped", "NeelNanda/pile-10k", 64)
    );

    let err = format::load(&fixture("sparsify/run"), &Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("sparsify run") && err.contains("layers.1.mlp"),
        "{err}"
    );
    for (key, value, says) in [
        ("transcode", "true", "transcoder"),
        ("skip_connection", "true", "skip connection"),
        ("activation", "\"groupmax\"", "groupmax"),
    ] {
        let err = load_error_edited(
            "sparsify/run/layers.1.mlp",
            "sae.safetensors",
            "cfg.json",
            |c| c[key] = serde_json::from_str(value).unwrap(),
        );
        assert!(err.contains(says), "{key}: {err}");
    }
}

#[test]
fn every_variant_round_trips_through_the_saelens_format() {
    let syn = synthetic(64, 16, 3.0, 2000, 9);
    for &arch in Architecture::ALL {
        let k = arch.uses_k().then_some(4);
        let train = TrainConfig {
            steps: 25,
            batch_size: 256,
            sparsity_coefficient: 1.0,
            log_every: 5,
            ..Default::default()
        };
        let mut trainer =
            Trainer::new(cfg(arch, 16, 48, k), train, &syn.data, &Device::Cpu).unwrap();
        trainer.train(None, None).unwrap();
        let dir = tempfile::tempdir().unwrap();
        trainer.save_checkpoint(dir.path()).unwrap();
        let loaded = format::load(dir.path(), &Device::Cpu).unwrap();
        let x = syn.data.i(0..200).unwrap();
        let trained = trainer
            .sae()
            .encode(&(&x * trainer.scale()).unwrap())
            .unwrap();
        let reloaded = loaded.encode(&x).unwrap();
        assert!(
            max_abs_diff(&trained, &reloaded) < 1e-4,
            "{arch:?}: encodings differ after save/load"
        );
        assert!(
            sae_lib::eval::metrics::l0(&reloaded).unwrap() > 0.0,
            "{arch:?}: nothing fires"
        );
        let cfg_json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("cfg.json")).unwrap())
                .unwrap();
        let expected = match arch {
            Architecture::Relu => "standard",
            Architecture::TopK => "topk",
            Architecture::Gated => "gated",
            _ => "jumprelu",
        };
        assert_eq!(cfg_json["architecture"], expected, "{arch:?}");
        if arch == Architecture::TopK {
            assert_eq!(cfg_json["k"], 4);
        }
    }
}

#[test]
fn jumprelu_pseudo_derivatives_follow_their_formulas() {
    let dev = Device::Cpu;
    let eps = 0.1;
    // Pre-activations around θ = 0.5: inside and outside the kernel's window |pre − θ| ≤ ε/2.
    let pre = Var::new(&[[0.47f64, 0.52, 0.9, 0.1, 0.549]], &dev).unwrap();
    let theta = Var::new(&[0.5f64, 0.5, 0.5, 0.5, 0.5], &dev).unwrap();
    let f = jumprelu_ste(pre.as_tensor(), theta.as_tensor(), eps).unwrap();
    // Values: pre · H(pre − θ).
    assert_eq!(
        f.to_vec2::<f64>().unwrap(),
        vec![vec![0.0, 0.52, 0.9, 0.0, 0.549]]
    );
    let grads = f.sum_all().unwrap().backward().unwrap();
    let d_theta = grads
        .get(theta.as_tensor())
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let d_pre = grads
        .get(pre.as_tensor())
        .unwrap()
        .to_vec2::<f64>()
        .unwrap();
    // ∂f/∂θ = −(θ/ε) K((pre − θ)/ε) with K the unit rectangle.
    let k = |p: f64| {
        if ((p - 0.5) / eps).abs() <= 0.5 {
            1.0
        } else {
            0.0
        }
    };
    for (i, p) in [0.47, 0.52, 0.9, 0.1, 0.549].into_iter().enumerate() {
        assert!(
            (d_theta[i] - (-(0.5 / eps) * k(p))).abs() < 1e-9,
            "∂f/∂θ[{i}] = {}",
            d_theta[i]
        );
        assert_eq!(d_pre[0][i], if p > 0.5 { 1.0 } else { 0.0 }, "∂f/∂pre[{i}]");
    }
    // L0: value Σ H, ∂/∂θ = −(1/ε) K, no gradient to pre.
    let l0 = step_l0_ste(pre.as_tensor(), theta.as_tensor(), eps).unwrap();
    assert_eq!(l0.to_vec1::<f64>().unwrap(), vec![3.0]);
    let grads = l0.sum_all().unwrap().backward().unwrap();
    let d_theta = grads
        .get(theta.as_tensor())
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    for (i, p) in [0.47, 0.52, 0.9, 0.1, 0.549].into_iter().enumerate() {
        assert!(
            (d_theta[i] - (-(1.0 / eps) * k(p))).abs() < 1e-9,
            "∂L0/∂θ[{i}] = {}",
            d_theta[i]
        );
    }
    assert!(grads.get(pre.as_tensor()).is_none_or(|g| g
        .abs()
        .unwrap()
        .sum_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
        == 0.0));
}

#[test]
fn a_larger_l0_coefficient_gives_a_lower_l0() {
    let syn = synthetic(128, 32, 4.0, 20_000, 11);
    let l0_at = |coefficient: f64| {
        let train = TrainConfig {
            steps: 600,
            batch_size: 512,
            sparsity_coefficient: coefficient,
            adam: AdamParams {
                lr: 2e-3,
                ..Default::default()
            },
            ..Default::default()
        };
        let mut trainer = Trainer::new(
            cfg(Architecture::JumpRelu, 32, 256, None),
            train,
            &syn.data,
            &Device::Cpu,
        )
        .unwrap();
        trainer.train(None, None).unwrap();
        let f = trainer
            .sae()
            .encode(&(&syn.data * trainer.scale()).unwrap())
            .unwrap();
        sae_lib::eval::metrics::l0(&f).unwrap()
    };
    let (low, high) = (l0_at(0.05), l0_at(1.0));
    println!("JumpReLU L0: {low:.2} at λ=0.05, {high:.2} at λ=1");
    assert!(
        high < 0.8 * low,
        "L0 {high} at the larger coefficient vs {low}"
    );
}

#[test]
fn a_sweep_gives_a_table_and_a_pareto_chart() {
    let syn = synthetic(64, 16, 3.0, 4000, 12);
    let cfg = SweepConfig {
        d_sae: 64,
        ks: Some(vec![2, 6]),
        l1_coefficients: Some(vec![0.5, 4.0]),
        l0_coefficients: Some(vec![0.1, 1.0]),
        lr: Some(2e-3),
        train: TrainConfig {
            steps: 60,
            batch_size: 256,
            adam: AdamParams {
                lr: 2e-3,
                ..Default::default()
            },
            ..Default::default()
        },
        eval_rows: 1000,
        ..Default::default()
    };
    let points = run_sweep(&syn.data, &cfg, None, &Device::Cpu).unwrap();
    assert_eq!(points.len(), 6 * 2);
    assert!(points.iter().all(|p| p.held_out));
    let df = sweep_frame(&points).unwrap();
    assert_eq!(df.shape(), (12, 6));
    for &arch in Architecture::ALL {
        let p: Vec<_> = points
            .iter()
            .filter(|p| p.architecture == arch.name())
            .collect();
        assert_eq!(p.len(), 2);
        assert!(p.iter().all(|p| p.fvu.is_finite() && p.l0 >= 0.0));
    }
    // More k, more active features.
    let topk: Vec<f64> = points
        .iter()
        .filter(|p| p.architecture == "topk")
        .map(|p| p.l0)
        .collect();
    assert!(topk[0] <= 2.0 + 1e-9 && topk[1] > topk[0]);
    let svg = pareto_chart(&points, sae_lib::plot::ParetoMetric::Fvu)
        .to_svg()
        .unwrap();
    assert!(svg.contains("L0 against FVU") && svg.contains("matryoshka"));
    let _ = Tensor::zeros(1, candle_core::DType::F32, &Device::Cpu);
}

/// The sweep measures on the source's last rows and trains on none of them: shifted far from
/// the rest, those rows are reconstructed worse than their own mean would be, while the same
/// sweep without the shift reconstructs them well.
#[test]
fn a_sweep_measures_on_rows_it_held_out() {
    let syn = synthetic(64, 16, 3.0, 4000, 12);
    let cfg = SweepConfig {
        architectures: vec![Architecture::TopK],
        d_sae: 64,
        ks: Some(vec![6]),
        lr: Some(2e-3),
        train: TrainConfig {
            steps: 60,
            batch_size: 256,
            ..Default::default()
        },
        eval_rows: 400,
        ..Default::default()
    };
    assert_eq!(sae_lib::sweep::held_out_rows(4000, 400), 400);
    assert_eq!(
        sae_lib::sweep::held_out_rows(4000, 1000),
        400,
        "a tenth at most"
    );
    assert_eq!(sae_lib::sweep::held_out_rows(15, 400), 0);
    let fvu = |data: &Tensor| {
        let p = run_sweep(data, &cfg, None, &Device::Cpu).unwrap();
        assert!(p[0].held_out);
        p[0].fvu
    };
    let plain = fvu(&syn.data);
    let shifted_tail = Tensor::cat(
        &[
            syn.data.i(..3600).unwrap(),
            (syn.data.i(3600..).unwrap() + 20.0).unwrap(),
        ],
        0,
    )
    .unwrap();
    let shifted = fvu(&shifted_tail);
    assert!(
        plain < 0.5 && shifted > 1.0,
        "FVU {plain} plain, {shifted} shifted"
    );
}

#[test]
fn sparse_decoding_equals_dense_decoding_with_the_same_gradients() {
    use sae_lib::sae::common::{densify, sparse_decode, topk_indices};
    let dev = Device::Cpu;
    let pre = Tensor::randn(0f32, 1.0, (6, 40), &dev).unwrap();
    let w_dec = Var::from_tensor(&Tensor::randn(0f32, 1.0, (40, 8), &dev).unwrap()).unwrap();
    let b_dec = Tensor::randn(0f32, 1.0, 8, &dev).unwrap();
    let indices = topk_indices(&pre, 5).unwrap();
    let values = pre.gather(&indices, 1).unwrap().relu().unwrap();
    // Exactly the top 5 per row.
    let dense = densify(&values, &indices, 40).unwrap();
    let reference = sae_lib::sae::common::topk_relu(&pre, 5).unwrap();
    assert_eq!(
        dense.to_vec2::<f32>().unwrap(),
        reference.to_vec2::<f32>().unwrap()
    );
    let sparse_out = sparse_decode(&values, &indices, w_dec.as_tensor(), &b_dec, false).unwrap();
    let dense_out = reference
        .matmul(w_dec.as_tensor())
        .unwrap()
        .broadcast_add(&b_dec)
        .unwrap();
    assert!(max_abs_diff(&sparse_out, &dense_out) < 1e-5);
    let g_sparse = sparse_out
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g_dense = dense_out
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let (a, b) = (
        g_sparse.get(w_dec.as_tensor()).unwrap(),
        g_dense.get(w_dec.as_tensor()).unwrap(),
    );
    assert!(max_abs_diff(a, b) < 1e-4, "W_dec gradients differ");
}
