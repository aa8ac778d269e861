//! Splice evaluation against transformers' numbers, and every chart as SVG and PNG.

use candle_core::{DType, Device, Tensor};
use sae_lib::data::TokenFilter;
use sae_lib::eval::splice_eval;
use sae_lib::hooks::{HookPoint, Hooks};
use sae_lib::model::{Padding, TokenBatch};
use sae_lib::plot::{Chart, ParetoMetric, ParetoPoint};
use sae_lib::sae::{AnySae, Architecture, Sae, SaeConfig, SaeMetadata};
use sae_lib::train::MetricsRow;

use crate::common::*;

/// A ReLU SAE with `W_enc = [I, −I]`, `W_dec = [I; −I]`: relu(x) − relu(−x) = x exactly.
fn identity_sae(d: usize) -> AnySae {
    let eye = Tensor::eye(d, DType::F32, &Device::Cpu).unwrap();
    let w_enc = Tensor::cat(&[&eye, &eye.neg().unwrap()], 1).unwrap();
    let w_dec = w_enc.t().unwrap().contiguous().unwrap();
    sae_from(d, 2 * d, w_enc, w_dec)
}

fn zero_sae(d: usize) -> AnySae {
    let w = Tensor::zeros((d, 4), DType::F32, &Device::Cpu).unwrap();
    sae_from(d, 4, w.clone(), w.t().unwrap().contiguous().unwrap())
}

fn sae_from(d_in: usize, d_sae: usize, w_enc: Tensor, w_dec: Tensor) -> AnySae {
    let cfg = SaeConfig::new(Architecture::Relu, d_in, d_sae, SaeMetadata::default());
    let mut get = |name: &str, shape: &[usize]| -> sae_lib::Result<Tensor> {
        Ok(match name {
            "W_enc" => w_enc.clone(),
            "W_dec" => w_dec.clone(),
            _ => Tensor::zeros(shape, DType::F32, &Device::Cpu)?,
        })
    };
    AnySae::from_tensors(cfg, &mut get).unwrap()
}

fn fixture_sequences(name: &str) -> Vec<Vec<u32>> {
    let exp = expected(name);
    exp["single.input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .to_vec2::<u32>()
        .unwrap()
}

#[test]
fn identity_sae_recovers_everything_and_zero_sae_nothing() {
    let model = load_fixture_model("gpt_neox_parallel");
    let seqs: Vec<Vec<u32>> = vec![(1..20).collect(), (30..41).collect(), vec![5, 6, 7]];
    let hook = HookPoint::mlp_out(1);
    let m = splice_eval(&model, &identity_sae(32), hook, &seqs, &[], 2).unwrap();
    assert!((m.ce_loss_score - 1.0).abs() < 1e-5, "{m:?}");
    assert!(
        m.kl_div_with_sae.abs() < 1e-6 && (m.kl_div_score - 1.0).abs() < 1e-5,
        "{m:?}"
    );
    assert_eq!(m.tokens, 18 + 10 + 2);
    assert_eq!(m.warning(), None);
    let m = splice_eval(&model, &zero_sae(32), hook, &seqs, &[], 2).unwrap();
    assert!(
        m.ce_loss_score.abs() < 1e-9 && m.kl_div_score.abs() < 1e-9,
        "{m:?}"
    );
    // No better than zeroing: named, unless zeroing does not raise this model's loss.
    let zeroing_hurts = m.ce_loss_with_ablation > m.ce_loss_without_sae;
    assert_eq!(m.warning().is_some(), zeroing_hurts, "{m:?}");
    assert!(m.kl_div_with_sae > 0.0);
}

#[test]
fn ce_and_kl_match_the_same_splice_in_transformers() {
    for name in ["gpt_neox_parallel", "gpt_neox_sequential"] {
        let model = load_fixture_model(name);
        let exp = expected(name);
        let scalar = |k: &str| exp[k].to_scalar::<f32>().unwrap() as f64;
        let m = splice_eval(
            &model,
            &zero_sae(32),
            HookPoint::mlp_out(1),
            &fixture_sequences(name),
            &[],
            1,
        )
        .unwrap();
        assert!(
            (m.ce_loss_without_sae - scalar("single.ce_loss")).abs() < 1e-4,
            "{name}: {m:?}"
        );
        assert!(
            (m.ce_loss_with_sae - scalar("zero_mlp1.ce_loss")).abs() < 1e-4,
            "{name}: {m:?}"
        );
        assert!(
            (m.kl_div_with_sae - scalar("zero_mlp1.kl")).abs() < 1e-4,
            "{name}: {m:?}"
        );
    }
}

/// Which (row, position) pairs to keep, from the clean activations `(b, t, d)`.
type Pick<'a> = &'a dyn Fn(&[Vec<Vec<f32>>]) -> Vec<Vec<bool>>;

/// Mean next-token CE of `seqs` (one batch) with `hook`'s activation zeroed except at the
/// (row, position) pairs `keep` picks from the clean activations, over the predictions made at
/// tokens not in `skip`, and how many pairs it kept.
fn ce_zeroed_except(
    model: &sae_lib::model::Model,
    hook: HookPoint,
    seqs: &[Vec<u32>],
    keep: impl Fn(&[Vec<Vec<f32>>]) -> Vec<Vec<bool>>,
    skip: &[u32],
) -> (f64, usize) {
    let batch = TokenBatch::from_sequences(seqs, Padding::Right, 0, &Device::Cpu).unwrap();
    let mut hooks = Hooks::new().capture(hook);
    model.forward(&batch, &mut hooks).unwrap();
    let clean: Vec<Vec<Vec<f32>>> = hooks.get(hook).unwrap().to_vec3().unwrap();
    let mut kept: Vec<Vec<bool>> = keep(&clean);
    for (row, seq) in kept.iter_mut().zip(seqs) {
        row.iter_mut().skip(seq.len()).for_each(|k| *k = false);
    }
    let passed = kept.iter().flatten().filter(|&&k| k).count();
    let mask: Vec<f32> = kept
        .iter()
        .flatten()
        .map(|&k| f32::from(u8::from(k)))
        .collect();
    let (b, t) = (kept.len(), kept[0].len());
    let mask = Tensor::from_vec(mask, (b, t, 1), &Device::Cpu).unwrap();
    let mut zeroed = Hooks::new().write(hook, move |x| Ok(x.broadcast_mul(&mask)?));
    let logits = model.forward(&batch, &mut zeroed).unwrap().unwrap();
    let lp: Vec<Vec<Vec<f32>>> = candle_nn::ops::log_softmax(&logits, 2)
        .unwrap()
        .to_vec3()
        .unwrap();
    let (mut sum, mut n) = (0f64, 0usize);
    for (row, seq) in seqs.iter().enumerate() {
        for i in (0..seq.len() - 1).filter(|&i| !skip.contains(&seq[i])) {
            sum -= lp[row][i][seq[i + 1] as usize] as f64;
            n += 1;
        }
    }
    (sum / n as f64, passed)
}

/// An SAE trained without some tokens leaves them as they are when spliced in: a zero SAE that
/// left out the first tokens (or the outliers by norm) gives the CE of zeroing every other
/// token, computed here directly. The ablations still replace every token, so the zero-ablation
/// baseline is the unfiltered one.
#[test]
fn tokens_left_out_of_training_keep_their_activation_in_the_splice() {
    let model = load_fixture_model("gpt_neox_parallel");
    let seqs: Vec<Vec<u32>> = vec![(1..20).collect(), (30..41).collect(), vec![5, 6, 7]];
    let hook = HookPoint::mlp_out(1);
    let ratio = 1.3;
    let outliers = |clean: &[Vec<Vec<f32>>]| -> Vec<Vec<bool>> {
        let norm = |v: &Vec<f32>| v.iter().map(|x| x * x).sum::<f32>().sqrt();
        let mut real: Vec<f32> = clean
            .iter()
            .zip(&seqs)
            .flat_map(|(row, seq)| row[..seq.len()].iter().map(norm))
            .collect();
        real.sort_by(f32::total_cmp);
        let median = real[real.len() / 2];
        clean
            .iter()
            .map(|row| row.iter().map(|v| norm(v) > ratio * median).collect())
            .collect()
    };
    let firsts = |clean: &[Vec<Vec<f32>>]| -> Vec<Vec<bool>> {
        clean
            .iter()
            .map(|row| (0..row.len()).map(|i| i == 0).collect())
            .collect()
    };
    let cases: [(TokenFilter, Pick<'_>); 2] = [
        (
            TokenFilter {
                exclude_first: true,
                outlier_norm: None,
            },
            &firsts,
        ),
        (
            TokenFilter {
                exclude_first: false,
                outlier_norm: Some(ratio),
            },
            &outliers,
        ),
    ];
    let unfiltered = splice_eval(&model, &zero_sae(32), hook, &seqs, &[], 3).unwrap();
    for (filter, keep) in cases {
        let (expected_ce, passed) = ce_zeroed_except(&model, hook, &seqs, keep, &[]);
        let real: usize = seqs.iter().map(Vec::len).sum();
        assert!(
            passed > 0 && passed < real,
            "{filter:?}: {passed} of {real}"
        );
        let mut sae = zero_sae(32);
        sae.config_mut().metadata.filter = filter;
        let m = splice_eval(&model, &sae, hook, &seqs, &[], 3).unwrap();
        assert_eq!(m.tokens_passed_through, passed, "{filter:?}");
        assert!(
            (m.ce_loss_with_sae - expected_ce).abs() < 1e-5,
            "{filter:?}: {} against {expected_ce}",
            m.ce_loss_with_sae
        );
        assert_eq!(m.ce_loss_with_ablation, unfiltered.ce_loss_with_ablation);
        assert_eq!(
            m.ce_loss_with_mean_ablation,
            unfiltered.ce_loss_with_mean_ablation
        );
        let mut identity = identity_sae(32);
        identity.config_mut().metadata.filter = filter;
        let m = splice_eval(&model, &identity, hook, &seqs, &[], 3).unwrap();
        assert!((m.ce_loss_score - 1.0).abs() < 1e-5, "{filter:?}: {m:?}");
    }
}

/// The special tokens the tokenizer adds (a BOS) keep their clean activation, and the
/// predictions made at them leave the means, as in SAELens' evaluation: a zero SAE gives the CE
/// of zeroing every other token over the other predictions, computed here directly.
#[test]
fn special_tokens_keep_their_activation_and_leave_the_means() {
    let model = load_fixture_model("gpt_neox_parallel");
    let bos = 3;
    let seqs: Vec<Vec<u32>> = vec![
        std::iter::once(bos).chain(10..20).collect(),
        vec![bos, 30, 31, bos, 33, 34],
        vec![bos, 7],
    ];
    let hook = HookPoint::mlp_out(1);
    let at_bos = |clean: &[Vec<Vec<f32>>]| -> Vec<Vec<bool>> {
        clean
            .iter()
            .zip(&seqs)
            .map(|(row, seq)| (0..row.len()).map(|i| seq.get(i) == Some(&bos)).collect())
            .collect()
    };
    let (expected_ce, passed) = ce_zeroed_except(&model, hook, &seqs, at_bos, &[bos]);
    let (clean_ce, _) = ce_zeroed_except(
        &model,
        hook,
        &seqs,
        |clean| clean.iter().map(|row| vec![true; row.len()]).collect(),
        &[bos],
    );
    let m = splice_eval(&model, &zero_sae(32), hook, &seqs, &[bos], 2).unwrap();
    assert_eq!(passed, 4);
    assert_eq!(m.tokens_passed_through, passed);
    assert_eq!(m.tokens, 9 + 3, "no prediction made at a BOS counts");
    assert!(
        (m.ce_loss_with_sae - expected_ce).abs() < 1e-5,
        "{m:?} against {expected_ce}"
    );
    assert!(
        (m.ce_loss_without_sae - clean_ce).abs() < 1e-5,
        "{m:?} against {clean_ce}"
    );
    // Without the BOS left alone, the zero SAE replaces it too: another loss.
    let all = splice_eval(&model, &zero_sae(32), hook, &seqs, &[], 2).unwrap();
    assert_eq!(all.tokens, 10 + 5 + 1);
    assert!(
        (all.ce_loss_with_sae - m.ce_loss_with_sae).abs() > 1e-3,
        "{all:?}"
    );
    let identity = splice_eval(&model, &identity_sae(32), hook, &seqs, &[bos], 2).unwrap();
    assert!((identity.ce_loss_score - 1.0).abs() < 1e-5, "{identity:?}");
    let err = splice_eval(&model, &zero_sae(32), hook, &[vec![bos, bos]], &[bos], 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("special tokens"), "{err}");
}

#[test]
fn an_sae_of_the_wrong_width_is_refused() {
    let model = load_fixture_model("gpt_neox_parallel");
    let err = splice_eval(
        &model,
        &zero_sae(8),
        HookPoint::mlp_out(1),
        &[vec![1, 2, 3]],
        &[],
        1,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("d_in is 8") && err.contains("width 32"),
        "{err}"
    );
}

/// PNG signature, an IHDR of the chart's size, and an IEND chunk at the end.
pub fn assert_valid_png(bytes: &[u8], size: Option<(u32, u32)>) {
    assert!(
        bytes.len() > 1000,
        "suspiciously small PNG ({} bytes)",
        bytes.len()
    );
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    assert_eq!(&bytes[12..16], b"IHDR");
    if let Some((w, h)) = size {
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), w);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), h);
    }
    assert_eq!(&bytes[bytes.len() - 8..bytes.len() - 4], b"IEND");
}

fn sample_charts() -> Vec<(&'static str, Chart)> {
    let rows: Vec<MetricsRow> = (1..=20)
        .map(|s| MetricsRow {
            step: s * 10,
            tokens: s * 40960,
            loss: 10.0 / s as f64,
            mse: 5.0 / s as f64,
            fvu: 0.5 / s as f64,
            explained_variance: 1.0 - 0.5 / s as f64,
            l0: 100.0 / s as f64,
            l1: 3.0,
            dead_frac: 0.0,
            dense_frac: 0.0,
            lr: 5e-5,
            sparsity_coefficient: 5.0,
        })
        .collect();
    let pareto = (0..3)
        .flat_map(|i| {
            (1..4).map(move |j| ParetoPoint {
                series: format!("arch{i}"),
                l0: 10.0 * j as f64,
                value: 0.3 / (j + i) as f64,
            })
        })
        .collect();
    vec![
        (
            "Feature density",
            Chart::FeatureDensity(
                (0..500)
                    .map(|i| {
                        if i % 50 == 0 {
                            -10.0
                        } else {
                            -4.0 + (i % 37) as f32 / 10.0
                        }
                    })
                    .collect(),
            ),
        ),
        ("SAE training curves", Chart::TrainingCurves(rows)),
        (
            "L0 per input",
            Chart::L0Histogram((0..300).map(|i| (i % 40) as f32).collect()),
        ),
        (
            "L0 against FVU",
            Chart::Pareto {
                points: pareto,
                metric: ParetoMetric::Fvu,
            },
        ),
        (
            "Reconstruction",
            Chart::Reconstruction {
                x: (0..200).map(|i| (i as f32 * 0.1).sin()).collect(),
                x_hat: (0..200).map(|i| (i as f32 * 0.1).sin() * 0.9).collect(),
            },
        ),
        (
            "Feature 3",
            Chart::ActivationHistogram {
                feature: 3,
                values: (0..300)
                    .map(|i| if i % 3 == 0 { (i % 17) as f32 } else { 0.0 })
                    .collect(),
            },
        ),
    ]
}

#[test]
fn every_chart_writes_well_formed_svg_and_png() {
    let dir = tempfile::tempdir().unwrap();
    for (i, (title, chart)) in sample_charts().into_iter().enumerate() {
        let svg = chart.to_svg().unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "chart {i}"
        );
        assert!(svg.contains(title), "chart {i} lacks its title {title:?}");
        let path = dir.path().join(format!("chart{i}.png"));
        chart.save_png(&path).unwrap();
        assert_valid_png(&std::fs::read(&path).unwrap(), Some(chart.size()));
        chart
            .save_svg(&dir.path().join(format!("chart{i}.svg")))
            .unwrap();
    }
    // Atomic writes leave no temporary files behind.
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with('.')));
    if let Ok(keep) = std::env::var("SAE_KEEP_CHARTS") {
        for (i, (_, chart)) in sample_charts().into_iter().enumerate() {
            chart
                .save_png(&std::path::Path::new(&keep).join(format!("chart{i}.png")))
                .unwrap();
        }
    }
}
