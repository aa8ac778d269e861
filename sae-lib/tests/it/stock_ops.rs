//! The stock-op path a GPU runs, tested on the CPU against the hand-written CPU kernels
//! (`sae_lib::ops`): every variant's training, and a model's forward pass.

use candle_core::Device;
use sae_lib::ops::StockOps;
use sae_lib::sae::{Architecture, Sae, SaeConfig, SaeMetadata};
use sae_lib::train::{TrainConfig, Trainer};

use crate::sae::synthetic;

/// The SAE's tensors and the logged losses after a short run, on the chosen path.
fn train(arch: Architecture, stock: bool) -> (Vec<(&'static str, Vec<f32>)>, Vec<f64>) {
    let _stock = stock.then(StockOps::on);
    let syn = synthetic(96, 32, 4.0, 2048, 7);
    let k = arch.uses_k().then_some(6);
    let sae = SaeConfig {
        k,
        ..SaeConfig::new(arch, 32, 128, SaeMetadata::default())
    };
    let cfg = TrainConfig {
        steps: 30,
        batch_size: 128,
        log_every: 10,
        ..Default::default()
    };
    let mut trainer = Trainer::new(sae, cfg, &syn.data, &Device::Cpu).unwrap();
    trainer.train(None, None).unwrap();
    let tensors = trainer
        .sae()
        .vars()
        .into_iter()
        .map(|(name, v)| {
            (
                name,
                v.as_tensor().flatten_all().unwrap().to_vec1().unwrap(),
            )
        })
        .collect();
    let losses = trainer.metrics().iter().map(|m| m.loss).collect();
    (tensors, losses)
}

/// Largest difference relative to the tensor's largest magnitude.
fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    let scale = a.iter().fold(1e-12f32, |m, x| m.max(x.abs()));
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

/// Thirty Adam steps of every variant on both paths end at the same weights, up to the
/// rounding of sums taken in a different order (sparse gathers against dense matmuls).
#[test]
fn every_variant_trains_the_same_on_the_stock_path() {
    for &arch in Architecture::ALL {
        let (fast, fast_loss) = train(arch, false);
        let (stock, stock_loss) = train(arch, true);
        assert!(!fast_loss.is_empty());
        for (a, b) in fast_loss.iter().zip(&stock_loss) {
            assert!((a - b).abs() <= 1e-3 * a.abs(), "{arch:?}: loss {a} vs {b}");
        }
        for ((name, a), (_, b)) in fast.iter().zip(&stock) {
            let gap = relative_gap(a, b);
            assert!(gap < 1e-3, "{arch:?} {name}: relative gap {gap}");
        }
    }
}

/// A dictionary wider than one stock sort (`sae::select::SORT_WIDTH`), so the selection is
/// blocked: the run takes every step and TopK keeps `k` features per input.
#[test]
fn the_stock_path_keeps_k_features_per_input() {
    let _stock = StockOps::on();
    let syn = synthetic(96, 32, 4.0, 512, 3);
    let sae = SaeConfig {
        k: Some(6),
        ..SaeConfig::new(Architecture::TopK, 32, 3000, SaeMetadata::default())
    };
    let cfg = TrainConfig {
        steps: 5,
        batch_size: 128,
        ..Default::default()
    };
    let mut trainer = Trainer::new(sae, cfg, &syn.data, &Device::Cpu).unwrap();
    trainer.train(None, None).unwrap();
    let f = trainer.sae().encode(&syn.data).unwrap();
    let l0 = sae_lib::eval::metrics::l0(&f).unwrap();
    assert!(l0 > 5.0 && l0 <= 6.0, "L0 {l0}");
}

/// The models against transformers' outputs on the stock path: GPT-NeoX's exact GELU runs
/// through a hand-written parallel kernel on the CPU and candle's `gelu_erf` on a GPU, and a
/// GPU builds the padded batch's attention bias from tensor ops rather than a host loop (and
/// Gemma 2's windows and score caps on it).
#[test]
fn models_match_transformers_on_the_stock_path() {
    let _stock = StockOps::on();
    crate::model::check_parity("gpt_neox_parallel", "gpt_neox_parallel");
    crate::model::check_parity("llama_gqa", "llama_gqa");
    crate::model::check_parity("gemma2", "gemma2");
}
