//! SAE training against a synthetic ground truth, gradients against finite differences,
//! the SAELens format, resumption and the NaN guard.

use candle_core::{DType, Device, IndexOp, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sae_lib::sae::common::normal_vec;
use sae_lib::sae::{
    format, AnySae, Architecture, Init, LossContext, ReluSae, Sae, SaeConfig, SaeMetadata,
    SparsityPenalty, Variant,
};
use sae_lib::train::{BDecInit, TrainConfig, Trainer};

use crate::common::*;

/// Samples from a known sparse dictionary: `n_features` unit vectors in `d` dimensions, each
/// active with probability `active / n_features`, magnitudes in [0.5, 1.5], plus small noise.
pub struct Synthetic {
    pub features: Tensor,
    pub data: Tensor,
    pub true_l0: f64,
}

pub fn synthetic(n_features: usize, d: usize, active: f64, n: usize, seed: u64) -> Synthetic {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let f = Tensor::from_vec(
        normal_vec(n_features * d, &mut rng),
        (n_features, d),
        &Device::Cpu,
    )
    .unwrap();
    let features = f
        .broadcast_div(&f.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
        .unwrap();
    let p = active / n_features as f64;
    let mut coeffs = vec![0f32; n * n_features];
    let mut nonzero = 0usize;
    for c in coeffs.iter_mut() {
        if rng.random::<f64>() < p {
            *c = rng.random_range(0.5..1.5);
            nonzero += 1;
        }
    }
    let coeffs = Tensor::from_vec(coeffs, (n, n_features), &Device::Cpu).unwrap();
    let noise = (Tensor::from_vec(normal_vec(n * d, &mut rng), (n, d), &Device::Cpu).unwrap()
        * 0.01)
        .unwrap();
    let data = (coeffs.matmul(&features).unwrap() + noise).unwrap();
    Synthetic {
        features,
        data,
        true_l0: nonzero as f64 / n as f64,
    }
}

/// For each true feature, the best cosine similarity with any decoder row.
pub fn max_cosines(features: &Tensor, w_dec: &Tensor) -> Vec<f32> {
    let unit = |t: &Tensor| {
        t.broadcast_div(&t.sqr().unwrap().sum_keepdim(1).unwrap().sqrt().unwrap())
            .unwrap()
    };
    unit(features)
        .matmul(&unit(w_dec).t().unwrap())
        .unwrap()
        .max(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
}

fn sae_cfg(arch: Architecture, d_in: usize, d_sae: usize) -> SaeConfig {
    SaeConfig::new(arch, d_in, d_sae, SaeMetadata::default())
}

/// Trains on the synthetic dictionary and asserts the ground-truth bar: ≥ 90% of true features
/// recovered at cosine ≥ 0.9, L0 within 2× of the truth. Returns (recovered fraction, mean max cosine, L0).
pub fn ground_truth(arch: Architecture, k: Option<usize>, cfg: TrainConfig) -> (f64, f64, f64) {
    let syn = synthetic(512, 128, 5.0, 60_000, 1);
    let sae = SaeConfig {
        k,
        ..sae_cfg(arch, 128, 1024)
    };
    let mut trainer = Trainer::new(sae, cfg, &syn.data, &Device::Cpu).unwrap();
    trainer.train(None, None).unwrap();
    let sae = trainer.sae();
    let cos = max_cosines(&syn.features, sae.w_dec().as_tensor());
    let recovered = cos.iter().filter(|&&c| c >= 0.9).count() as f64 / cos.len() as f64;
    let mean_cos = cos.iter().map(|&c| c as f64).sum::<f64>() / cos.len() as f64;
    let scaled = (&syn.data * trainer.scale()).unwrap();
    let l0 = sae_lib::eval::metrics::l0(&sae.encode(&scaled).unwrap()).unwrap();
    println!(
        "{arch:?}: recovered {:.1}% (mean max cos {mean_cos:.3}), L0 {l0:.2} vs true {:.2}",
        100.0 * recovered,
        syn.true_l0
    );
    assert!(
        recovered >= 0.9,
        "{arch:?}: only {:.1}% of features recovered",
        100.0 * recovered
    );
    assert!(
        l0 <= 2.0 * syn.true_l0 && l0 >= syn.true_l0 / 2.0,
        "{arch:?}: L0 {l0} vs true {}",
        syn.true_l0
    );
    (recovered, mean_cos, l0)
}

#[test]
fn relu_sae_recovers_a_known_sparse_dictionary() {
    ground_truth(
        Architecture::Relu,
        None,
        TrainConfig {
            steps: 2000,
            batch_size: 1024,
            sparsity_coefficient: 6.0,
            adam: sae_lib::train::optim::AdamParams {
                lr: 2e-3,
                ..Default::default()
            },
            log_every: 500,
            ..Default::default()
        },
    );
}

fn finite_difference_check(sae: &AnySae, x: &Tensor, ctx: &LossContext) {
    let loss = |sae: &AnySae| sae.loss(x, ctx).unwrap().total.to_scalar::<f64>().unwrap();
    let grads = sae.loss(x, ctx).unwrap().total.backward().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for (name, var) in sae.vars() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let flat_g = g.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        let original = var.as_tensor().copy().unwrap();
        let n = flat_g.len();
        for _ in 0..6 {
            let k = rng.random_range(0..n);
            let h = 1e-6;
            let bump = |delta: f64| {
                let mut v = original.flatten_all().unwrap().to_vec1::<f64>().unwrap();
                v[k] += delta;
                var.set(&Tensor::from_vec(v, original.shape(), &Device::Cpu).unwrap())
                    .unwrap();
            };
            bump(h);
            let up = loss(sae);
            bump(-h);
            let down = loss(sae);
            var.set(&original).unwrap();
            let numeric = (up - down) / (2.0 * h);
            let tol = 1e-6 + 1e-5 * numeric.abs().max(flat_g[k].abs());
            assert!(
                (numeric - flat_g[k]).abs() < tol,
                "{name}[{k}]: autograd {} vs finite difference {numeric}",
                flat_g[k]
            );
        }
    }
}

#[test]
fn relu_loss_gradients_match_finite_differences_in_f64() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    for penalty in [SparsityPenalty::DecoderNorm, SparsityPenalty::L1UnitDecoder] {
        let sae = ReluSae::init(
            sae_cfg(Architecture::Relu, 6, 10),
            &mut Init {
                rng: &mut rng,
                dtype: DType::F64,
                device: &Device::Cpu,
                penalty,
                init_threshold: None,
            },
        )
        .unwrap();
        // Non-zero biases so every parameter's gradient is exercised.
        for (name, var) in sae.vars() {
            if name.starts_with('b') {
                let n = var.as_tensor().elem_count();
                var.set(
                    &Tensor::from_vec(
                        normal_vec(n, &mut rng)
                            .iter()
                            .map(|v| *v as f64 * 0.1)
                            .collect(),
                        n,
                        &Device::Cpu,
                    )
                    .unwrap(),
                )
                .unwrap();
            }
        }
        let x = Tensor::from_vec(
            normal_vec(8 * 6, &mut rng)
                .iter()
                .map(|v| *v as f64)
                .collect(),
            (8, 6),
            &Device::Cpu,
        )
        .unwrap();
        finite_difference_check(
            &AnySae::Relu(sae),
            &x,
            &LossContext {
                sparsity_coefficient: 0.7,
                dead: None,
            },
        );
    }
}

#[test]
fn save_then_load_gives_identical_outputs_in_saelens_layout() {
    let syn = synthetic(64, 16, 3.0, 2000, 2);
    let cfg = TrainConfig {
        steps: 30,
        batch_size: 256,
        log_every: 10,
        ..Default::default()
    };
    let mut trainer = Trainer::new(
        sae_cfg(Architecture::Relu, 16, 48),
        cfg,
        &syn.data,
        &Device::Cpu,
    )
    .unwrap();
    trainer.train(None, None).unwrap();
    let dir = tempfile::tempdir().unwrap();
    trainer.save_checkpoint(dir.path()).unwrap();
    let loaded = format::load(dir.path(), &Device::Cpu).unwrap();
    // The saved SAE takes unscaled inputs: the scale is folded into its weights.
    let x = syn.data.i(0..100).unwrap();
    let scaled = (&x * trainer.scale()).unwrap();
    let f_trained = trainer.sae().encode(&scaled).unwrap();
    let f_loaded = loaded.encode(&x).unwrap();
    assert!(max_abs_diff(&f_trained, &f_loaded) < 1e-4);
    let recon_trained = (trainer.sae().decode(&f_trained).unwrap() / trainer.scale()).unwrap();
    assert!(max_abs_diff(&recon_trained, &loaded.decode(&f_loaded).unwrap()) < 1e-5);
    // Names, shapes and dtypes as SAELens writes them.
    let weights =
        candle_core::safetensors::load(dir.path().join("sae_weights.safetensors"), &Device::Cpu)
            .unwrap();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort();
    assert_eq!(names, ["W_dec", "W_enc", "b_dec", "b_enc"]);
    assert_eq!(weights["W_enc"].dims(), [16, 48]);
    assert_eq!(weights["W_dec"].dims(), [48, 16]);
    assert_eq!(weights["b_enc"].dims(), [48]);
    assert_eq!(weights["b_dec"].dims(), [16]);
    assert!(weights.values().all(|t| t.dtype() == DType::F32));
    let sparsity =
        candle_core::safetensors::load(dir.path().join("sparsity.safetensors"), &Device::Cpu)
            .unwrap();
    assert_eq!(sparsity["sparsity"].dims(), [48]);
    let cfg: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("cfg.json")).unwrap())
            .unwrap();
    for key in [
        "architecture",
        "d_in",
        "d_sae",
        "dtype",
        "device",
        "apply_b_dec_to_input",
        "normalize_activations",
        "metadata",
    ] {
        assert!(cfg.get(key).is_some(), "cfg.json lacks {key}");
    }
    assert_eq!(cfg["architecture"], "standard");
    assert_eq!(cfg["normalize_activations"], "none");
    for key in [
        "sae_lens_version",
        "model_name",
        "hook_name",
        "context_size",
        "prepend_bos",
        "dataset_path",
    ] {
        assert!(cfg["metadata"].get(key).is_some(), "metadata lacks {key}");
    }
    assert!(cfg["metadata"]["sae_lens_version"].as_str().unwrap() >= "6.0.0");
}

/// A seeded CPU run gives the same weights on one thread as on four: the kernels' parallel
/// sums keep a fixed order however the work is split (ReLU on its sparse step, with more
/// features than one block of the b_dec gradient's sums, and TopK with AuxK).
#[test]
fn a_seeded_run_is_the_same_on_one_thread_and_on_four() {
    let syn = synthetic(256, 32, 4.0, 4096, 7);
    for (arch, k) in [(Architecture::Relu, None), (Architecture::TopK, Some(8))] {
        let cfg = TrainConfig {
            steps: 200,
            batch_size: 256,
            log_every: 50,
            checkpoint_every: None,
            sparsity_coefficient: 10.0,
            sparsity_warmup_frac: 0.0,
            ..Default::default()
        };
        let sae = SaeConfig {
            k,
            ..sae_cfg(arch, 32, 700)
        };
        let weights = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| {
                let mut t =
                    Trainer::new(sae.clone(), cfg.clone(), &syn.data, &Device::Cpu).unwrap();
                t.train(None, None).unwrap();
                let l0 = t.metrics().last().unwrap().l0;
                let vars = t.sae().vars();
                let flat = |v: &candle_core::Var| {
                    v.as_tensor()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                };
                (vars.iter().map(|(_, v)| flat(v)).collect::<Vec<_>>(), l0)
            })
        };
        let ((one, l0), (four, _)) = (weights(1), weights(4));
        assert!(l0 < 700.0 / 4.0, "{arch:?}: L0 {l0}, the step stayed dense");
        assert!(
            one == four,
            "{arch:?}: the weights depend on the thread count"
        );
    }
}

#[test]
fn resuming_is_bit_identical_to_an_uninterrupted_run() {
    let syn = synthetic(64, 16, 3.0, 3000, 3);
    let cfg = TrainConfig {
        steps: 40,
        batch_size: 256,
        log_every: 5,
        checkpoint_every: None,
        resample_dead_every: Some(15),
        ..Default::default()
    };
    let sae = sae_cfg(Architecture::Relu, 16, 48);
    let mut whole = Trainer::new(sae.clone(), cfg.clone(), &syn.data, &Device::Cpu).unwrap();
    whole.train(None, None).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let mut first = Trainer::new(sae, cfg, &syn.data, &Device::Cpu).unwrap();
    for _ in 0..20 {
        first.train_step().unwrap();
    }
    first.save_checkpoint(dir.path()).unwrap();
    drop(first);
    let mut second = Trainer::resume(dir.path(), &syn.data, &Device::Cpu).unwrap();
    assert_eq!(second.step(), 20);
    second.train(None, None).unwrap();
    for ((name, a), (_, b)) in whole.sae().vars().iter().zip(second.sae().vars().iter()) {
        let (a, b) = (
            a.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            b.as_tensor()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
        );
        assert!(a == b, "{name} differs after resuming");
    }
    assert_eq!(whole.metrics(), second.metrics());
    // The metrics also come as a polars table, one row per logged step.
    let df = second.metrics_frame().unwrap();
    assert_eq!(df.height(), second.metrics().len());
    let fvu: Vec<f64> = df
        .column("fvu")
        .unwrap()
        .f64()
        .unwrap()
        .into_no_null_iter()
        .collect();
    assert_eq!(
        fvu,
        second.metrics().iter().map(|r| r.fvu).collect::<Vec<_>>()
    );
}

/// Serves clean rows for the first `clean_calls` gathers, then rows full of NaN.
struct PoisonAfter {
    data: Tensor,
    calls: std::cell::Cell<usize>,
    clean_calls: usize,
}

impl sae_lib::train::ActivationSource for PoisonAfter {
    fn len(&self) -> usize {
        self.data.dim(0).unwrap()
    }
    fn d(&self) -> usize {
        self.data.dim(1).unwrap()
    }
    fn gather(&self, rows: &[u32], device: &Device) -> sae_lib::Result<Tensor> {
        self.calls.set(self.calls.get() + 1);
        let x = sae_lib::train::ActivationSource::gather(&self.data, rows, device)?;
        if self.calls.get() > self.clean_calls {
            return Ok((x * f64::NAN)?);
        }
        Ok(x)
    }
}

#[test]
fn a_nan_loss_stops_training_and_keeps_the_last_good_checkpoint() {
    let syn = synthetic(32, 8, 2.0, 512, 4);
    // One gather for the initialisation sample, then one per step: step 7 sees NaN.
    let source = PoisonAfter {
        data: syn.data,
        calls: 0.into(),
        clean_calls: 1 + 7,
    };
    let cfg = TrainConfig {
        steps: 50,
        batch_size: 64,
        checkpoint_every: Some(3),
        log_every: 1,
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut trainer = Trainer::new(
        sae_cfg(Architecture::Relu, 8, 16),
        cfg,
        &source,
        &Device::Cpu,
    )
    .unwrap();
    let err = trainer
        .train(Some(dir.path()), None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("NaN") && err.contains("step 7") && err.contains("last good checkpoint"),
        "{err}"
    );
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("trainer.json")).unwrap())
            .unwrap();
    assert_eq!(
        state["step"].as_u64().unwrap(),
        6,
        "the checkpoint is the last one before the NaN"
    );
    let saved = format::load(dir.path(), &Device::Cpu).unwrap();
    for (name, var) in saved.vars() {
        let v = var
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(
            v.iter().all(|x| x.is_finite()),
            "{name} has non-finite values"
        );
    }
}

/// Resampling finds each variant's encoder bias by type, not by name (the Gated SAE calls its
/// `b_gate`): with features forced dead, every architecture gives them a fresh encoder and
/// decoder direction, a zero bias and its own per-feature tensors' initial values, and they
/// fire again.
#[test]
fn resampling_revives_features_forced_dead_in_every_architecture() {
    let syn = synthetic(32, 16, 3.0, 2048, 9);
    let forced: Vec<usize> = (0..6).collect();
    for &arch in Architecture::ALL {
        let d_sae = 32;
        let cfg = TrainConfig {
            steps: 12,
            batch_size: 256,
            log_every: 1,
            checkpoint_every: None,
            resample_dead_every: Some(4),
            dead_window: 256,
            ..TrainConfig::for_architecture(arch, d_sae)
        };
        let sae = SaeConfig {
            k: arch.defaults(d_sae).k,
            ..sae_cfg(arch, 16, d_sae)
        };
        let mut trainer = Trainer::new(sae, cfg, &syn.data, &Device::Cpu).unwrap();
        // Dead: no input reaches them (zero encoder column, bias far below any input).
        let p = trainer.sae().params().clone();
        let mask: Vec<f32> = (0..d_sae)
            .map(|f| if forced.contains(&f) { 0.0 } else { 1.0 })
            .collect();
        let mask = Tensor::from_vec(mask, d_sae, &Device::Cpu).unwrap();
        p.w_enc_t
            .set(
                &p.w_enc_t
                    .as_tensor()
                    .broadcast_mul(&mask.unsqueeze(1).unwrap())
                    .unwrap(),
            )
            .unwrap();
        let b = (p.b_enc.as_tensor() * &mask).unwrap();
        p.b_enc
            .set(&(b + ((1.0 - &mask).unwrap() * -1e4).unwrap()).unwrap())
            .unwrap();
        for _ in 0..4 {
            trainer.train_step().unwrap();
        }
        // Step 4 resampled them: nothing fired before.
        let fired = |t: &Trainer| -> Vec<f64> {
            let f = t.feature_frequencies();
            forced.iter().map(|&i| f[i]).collect()
        };
        assert!(
            fired(&trainer).iter().all(|&f| f == 0.0),
            "{arch:?} fired while dead"
        );
        let w_enc = p.w_enc_t.as_tensor().to_vec2::<f32>().unwrap();
        let b_enc = p.b_enc.as_tensor().to_vec1::<f32>().unwrap();
        for &f in &forced {
            assert!(
                w_enc[f].iter().any(|&v| v != 0.0),
                "{arch:?}: feature {f} not resampled"
            );
            assert_eq!(
                b_enc[f], 0.0,
                "{arch:?}: feature {f}'s encoder bias not reset"
            );
        }
        for (var, value) in trainer.sae().feature_vars() {
            let v = var.as_tensor().to_vec1::<f32>().unwrap();
            for &f in &forced {
                assert_eq!(
                    v[f], value as f32,
                    "{arch:?}: a per-feature tensor not reset"
                );
            }
        }
        for _ in 4..12 {
            trainer.train_step().unwrap();
        }
        let after = fired(&trainer);
        assert!(
            after.iter().filter(|&&f| f > 0.0).count() >= forced.len() / 2,
            "{arch:?}: resampled features stay silent: {after:?}"
        );
    }
}

/// 2,000 rows of 16 from 32 features, and a ReLU run on them of `steps` steps of 64 rows.
fn small_relu_run(steps: u64) -> (Synthetic, TrainConfig) {
    let cfg = TrainConfig {
        steps,
        batch_size: 64,
        ..TrainConfig::for_architecture(Architecture::Relu, 64)
    };
    (synthetic(32, 16, 3.0, 2000, 5), cfg)
}

/// ReLU's `b_dec` starts at zero on rows without a dominant shared offset, and at their
/// geometric median once an offset longer than their spread is added.
#[test]
fn relu_b_dec_starts_at_zero_unless_the_rows_share_a_large_offset() {
    let (syn, cfg) = small_relu_run(10);
    assert_eq!(cfg.b_dec_init, BDecInit::ZerosUnlessOffset);
    // b_dec in the rows' own units (the trainer holds it for the scaled inputs)
    let b_dec = |data: &Tensor| -> Vec<f32> {
        let sae = sae_cfg(Architecture::Relu, 16, 64);
        let t = Trainer::new(sae, cfg.clone(), data, &Device::Cpu).unwrap();
        let b = t.sae().params().b_dec.as_tensor();
        (b / t.scale()).unwrap().to_vec1().unwrap()
    };
    assert!(b_dec(&syn.data).iter().all(|&v| v == 0.0));

    let offset = Tensor::full(5f32, 16, &Device::Cpu).unwrap(); // norm 20, spread about 1.7
    let shifted = syn.data.broadcast_add(&offset).unwrap();
    let got = b_dec(&shifted);
    let dist = got.iter().map(|v| (v - 5.0).powi(2)).sum::<f32>().sqrt();
    assert!(dist < 1.0, "b_dec {got:?} is {dist} from the offset");
}

/// Rows where a few (each 40th, 30 times as far out) hold most of the variance are named in
/// the trainer's warnings from the start, and still after a resume from a checkpoint; the same
/// rows without the spikes are not.
#[test]
fn a_trainer_names_a_few_rows_that_hold_most_of_the_variance() {
    let (syn, cfg) = small_relu_run(4);
    let spikes: Vec<f32> = (0..2000)
        .map(|i| if i % 40 == 0 { 30.0 } else { 1.0 })
        .collect();
    let spikes = Tensor::from_vec(spikes, (2000, 1), &Device::Cpu).unwrap();
    let spiked = syn.data.broadcast_mul(&spikes).unwrap();
    let outliers = |t: &Trainer| -> usize {
        t.warnings()
            .iter()
            .filter(|w| w.contains("of the activations' variance is in"))
            .count()
    };
    let sae = sae_cfg(Architecture::Relu, 16, 64);
    let plain = Trainer::new(sae.clone(), cfg.clone(), &syn.data, &Device::Cpu).unwrap();
    assert_eq!(outliers(&plain), 0, "{:?}", plain.warnings());
    let mut t = Trainer::new(sae, cfg, &spiked, &Device::Cpu).unwrap();
    assert_eq!(outliers(&t), 1, "{:?}", t.warnings());
    let dir = tempfile::tempdir().unwrap();
    t.train_step().unwrap();
    t.save_checkpoint(dir.path()).unwrap();
    let resumed = Trainer::resume(dir.path(), &spiked, &Device::Cpu).unwrap();
    assert_eq!(outliers(&resumed), 1, "{:?}", resumed.warnings());
}
